/*
 * takane/takane.h — the only public header of libtakane_kernels.
 *
 * A CPU kernel library for 1-bit (±1) matrix products. Values are packed 64 to a
 * uint64 word in the canonical format:
 *   - polarity: bit 1 means +1, bit 0 means -1; a real v with threshold t becomes +1
 *     iff v >= t (so -0.0 >= 0 gives +1); NaN has no sign and is an error;
 *   - order: element k of a row is bit (k % 64) of word (k / 64), LSB first;
 *   - a row of K elements takes ceil(K / 64) words; padding bits (positions >= K in
 *     the last word) are always 0. Functions reading packed data reject non-zero
 *     padding with TAKANE_ERR_PADDING_BITS.
 * The product of two packed rows a, w is dot(a, w) = K - 2 * popcount(a XOR w).
 *
 * Conventions of every entry point:
 *   - Entry points that can fail return a takane_status; pure queries that cannot fail
 *     return their value. Nothing aborts, prints, or sets errno.
 *   - Dimensions are int64_t and must be >= 0; zero-size dimensions are valid no-ops.
 *     Pointers may be NULL only when the data they describe is empty, and must be
 *     aligned to their element type (4 bytes for float / int32_t, 8 for uint64_t), as C
 *     requires; the Python wrappers copy misaligned numpy views before calling.
 *   - Strides are in ELEMENTS of the pointed-to type (never bytes); the name says which
 *     dimension they step. An input row stride may be 0 (every row reads the same data);
 *     an output row stride must not make rows overlap.
 *   - All entry points are thread-safe; concurrent calls on shared inputs are allowed.
 *     CPU detection runs once, lazily, on first use.
 *   - `threads`: 0 means the default (env TAKANE_NUM_THREADS, else the CPUs available to
 *     the process); n >= 1 caps the worker threads at n. Negative is an error. Entry
 *     points documented as running on the calling thread validate it and then ignore it.
 *   - The thread pool: one per process, shared by every entry point that takes `threads`;
 *     workers are created lazily, up to the largest count asked for. A call splits its work
 *     into tasks and works on them itself; small calls stay on the calling thread. After a
 *     job, workers spin for about 0.2 ms (back-to-back calls then start in well under a
 *     microsecond), then nap in 0.1 ms steps for about 20 ms, then sleep on a condition
 *     variable: an idle pool costs no CPU. On Linux workers run as SCHED_BATCH (a woken
 *     worker never preempts the caller). The pool runs one call at a time: a concurrent
 *     call that finds it busy runs all its tasks on its own thread instead of waiting, so
 *     concurrent callers never deadlock or queue. When joined workers keep arriving late
 *     (an oversubscribed machine), calls run single-threaded for a short, growing backoff
 *     period. fork() waits until no call of the process is inside the pool; the child
 *     does not inherit the workers, and its first threaded call creates its own pool.
 *
 * ABI policy: takane_status and takane_isa values are pinned; new values are only ever
 * appended. TAKANE_ABI_VERSION changes when an existing prototype or meaning changes.
 */
#ifndef TAKANE_TAKANE_H
#define TAKANE_TAKANE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TAKANE_VERSION_MAJOR 0
#define TAKANE_VERSION_MINOR 2
#define TAKANE_VERSION_PATCH 0
#define TAKANE_VERSION_STRING "0.2.0"
/* Compare with takane_abi_version() at run time to catch a header/library mismatch. */
#define TAKANE_ABI_VERSION 1

/* Largest supported K (elements per row): dot products lie in [-K, K] and are
 * returned as int32, so K may not exceed INT32_MAX. */
#define TAKANE_MAX_K 2147483647

#if defined(TAKANE_BUILDING_LIBRARY) && defined(__GNUC__)
#define TAKANE_API __attribute__((visibility("default")))
#else
#define TAKANE_API
#endif

typedef enum takane_status {
    TAKANE_OK = 0,
    TAKANE_ERR_NULL_POINTER = 1,       /* a non-empty operand was passed as NULL */
    TAKANE_ERR_NEGATIVE_DIMENSION = 2, /* m, n, k or rows < 0 */
    TAKANE_ERR_K_TOO_LARGE = 3,        /* k > TAKANE_MAX_K */
    TAKANE_ERR_BAD_STRIDE = 4,         /* negative stride, or overlapping output rows */
    TAKANE_ERR_NAN = 5,                /* NaN in activations or thresholds */
    TAKANE_ERR_PADDING_BITS = 6,       /* packed input has non-zero bits past K */
    TAKANE_ERR_ISA_UNKNOWN = 7,        /* not a takane_isa value / name */
    TAKANE_ERR_ISA_UNSUPPORTED = 8,    /* ISA not compiled in, or not usable on this CPU/OS */
    TAKANE_ERR_ENV_ISA = 9,            /* env TAKANE_ISA names an unknown or unusable ISA;
                                          compute calls fail until takane_isa_force() */
    TAKANE_ERR_OUT_OF_MEMORY = 10,
    TAKANE_ERR_BAD_THRESHOLD_LEN = 11, /* threshold_len is neither 1 nor k */
    TAKANE_ERR_BAD_THREADS = 12,       /* threads < 0 */
    TAKANE_ERR_NOT_FINITE = 13,        /* a scale, bias or mean |x| is NaN or infinite */
    TAKANE_ERR_BAD_GROUP_SIZE = 14,    /* group_size not a positive multiple of 64, or k not
                                          a multiple of a block format's size (Q1_0: 128) */
    TAKANE_ERR_BAD_ACTIVATIONS = 15,   /* not a TAKANE_ACTIVATIONS_* mode */
    TAKANE_ERR_BAD_GEOMETRY = 16       /* convolution / pooling: a kernel size, stride,
                                          dilation, padding, pad value or group count is
                                          invalid, or the padded input is smaller than
                                          the (dilated) kernel */
} takane_status;

/* Activation modes of the 1-bit-weight LLM entry points: real float32 activations, or
 * activations quantized per block of 32 to int8 with an fp16 scale (llama.cpp's Q8_0). */
#define TAKANE_ACTIVATIONS_F32 0
#define TAKANE_ACTIVATIONS_Q8_0 1

typedef enum takane_isa {
    TAKANE_ISA_AUTO = -1, /* for takane_isa_force(): back to the best supported ISA */
    TAKANE_ISA_SCALAR = 0,
    TAKANE_ISA_AVX2 = 1,   /* x86-64 AVX2 (+FMA, POPCNT) */
    TAKANE_ISA_AVX512 = 2, /* x86-64 AVX-512 F+BW+VL+VPOPCNTDQ+VBMI+VNNI */
    TAKANE_ISA_NEON = 3    /* aarch64 Advanced SIMD */
} takane_isa;

/* ---- version ------------------------------------------------------------------ */

/* The library's TAKANE_ABI_VERSION. */
TAKANE_API unsigned takane_abi_version(void);
/* The library's TAKANE_VERSION_STRING, plus build notes, e.g. "0.2.0". Static storage. */
TAKANE_API const char *takane_version_string(void);
/* A static, human-readable description of a status ("unknown status" if out of range). */
TAKANE_API const char *takane_status_string(takane_status status);

/* ---- instruction sets ----------------------------------------------------------- */

/* Bit (1u << isa) is set for every kernel set compiled into this library. */
TAKANE_API uint32_t takane_isa_compiled(void);
/* Bit (1u << isa) is set for every compiled kernel set this CPU and OS can run
 * (CPUID feature bits and XCR0 register state via XGETBV). Scalar is always set. */
TAKANE_API uint32_t takane_isa_supported(void);
/* The ISA compute calls dispatch to now: the forced one, else env TAKANE_ISA if valid,
 * else the best supported. */
TAKANE_API takane_isa takane_isa_active(void);
/* Force every later compute call (process-wide) to use `isa`; TAKANE_ISA_AUTO undoes it.
 * TAKANE_ERR_ISA_UNKNOWN / TAKANE_ERR_ISA_UNSUPPORTED leave the state unchanged. */
TAKANE_API takane_status takane_isa_force(takane_isa isa);
/* The ISA the calling thread's most recent successful compute call ran on, or
 * TAKANE_ISA_AUTO if it made none. For tests and diagnostics. */
TAKANE_API takane_isa takane_isa_last_used(void);
/* "scalar", "avx2", "avx512", "neon" ("auto" for TAKANE_ISA_AUTO), or NULL. Static storage. */
TAKANE_API const char *takane_isa_name(takane_isa isa);
/* Inverse of takane_isa_name (exact, lower case). TAKANE_ERR_ISA_UNKNOWN if no match. */
TAKANE_API takane_status takane_isa_from_name(const char *name, takane_isa *isa_out);

/* ---- packing ---------------------------------------------------------------------- */

/* Binarize `rows` rows of k floats: bit = x[r][c] >= threshold, packed canonically into
 * bits[r * bits_row_stride + 0 .. ceil(k/64)-1] (padding bits written as 0).
 * threshold: NULL (all thresholds 0), threshold_len == 1 (one scalar), or
 * threshold_len == k (per channel c). x_row_stride in floats, bits_row_stride in words
 * (>= ceil(k/64) when rows > 1). A NaN in x or threshold gives TAKANE_ERR_NAN (the
 * contents of bits are then unspecified). */
TAKANE_API takane_status takane_pack_f32(int64_t rows, int64_t k,
                                         const float *x, int64_t x_row_stride,
                                         const float *threshold, int64_t threshold_len,
                                         uint64_t *bits, int64_t bits_row_stride);

/* TAKANE_OK if every row of a packed (rows, ceil(k/64)) array has zero padding bits,
 * else TAKANE_ERR_PADDING_BITS. */
TAKANE_API takane_status takane_check_padding(int64_t rows, int64_t k,
                                              const uint64_t *bits, int64_t row_stride);

/* ---- W1A1 matmul -------------------------------------------------------------------- */

/* y[i][j] = dot(x_i, w_j) = k - 2 * popcount(x_i XOR w_j), exact, for i < m, j < n.
 * x: m packed rows of ceil(k/64) words, row stride x_row_stride (words);
 * w: n packed rows (the nn.Linear (N, K) layout), row stride w_row_stride (words);
 * y: int32, row stride y_row_stride (elements, >= n when m > 1).
 * k == 0 writes zeros. Non-zero padding in x or w gives TAKANE_ERR_PADDING_BITS.
 * threads: validated, then ignored: this entry point and takane_binary_matmul_f32 run on
 * the calling thread (the _prepacked variants below are the threaded fast path). */
TAKANE_API takane_status takane_binary_matmul(int64_t m, int64_t n, int64_t k,
                                              const uint64_t *x, int64_t x_row_stride,
                                              const uint64_t *w, int64_t w_row_stride,
                                              int32_t *y, int64_t y_row_stride,
                                              int32_t threads);

/* As takane_binary_matmul, with real activations binarized on the fly exactly as
 * takane_pack_f32 does (x: m rows of k floats, row stride x_row_stride floats). */
TAKANE_API takane_status takane_binary_matmul_f32(int64_t m, int64_t n, int64_t k,
                                                  const float *x, int64_t x_row_stride,
                                                  const float *threshold, int64_t threshold_len,
                                                  const uint64_t *w, int64_t w_row_stride,
                                                  int32_t *y, int64_t y_row_stride,
                                                  int32_t threads);

/* The thread count a call with threads == 0 may use: env TAKANE_NUM_THREADS (read once,
 * on first use) if it is a number >= 1, else the CPUs this process may run on. */
TAKANE_API int32_t takane_default_threads(void);

/* ---- peak probe ------------------------------------------------------------------------ */

/* Measure this CPU's XOR+popcount throughput on `isa` (TAKANE_ISA_AUTO: the active one)
 * on the calling thread for about `seconds` (clamped to [0.001, 10]): the higher of a
 * register-resident loop of the instruction sequence its kernels use and its panel
 * microkernel on L1-resident operands. *bitmacs_per_second receives the rate in bit-MACs
 * per second (one bit XOR-popcounted = one bit-MAC): the ceiling a product on that ISA
 * can approach on one core; benchmarks report efficiency against it. */
TAKANE_API takane_status takane_probe_peak(takane_isa isa, double seconds,
                                           double *bitmacs_per_second);

/* ---- prepacked weights ---------------------------------------------------------------- */

/* An immutable copy of a packed (n, k) weight matrix, re-tiled into the kernels' private
 * layout once, so that every later product streams it at full speed. Thread-safe to
 * share between concurrent calls. Costs about the same memory as the canonical bits. */
typedef struct takane_weights takane_weights;

/* Re-tile canonical weights w (n rows of ceil(k/64) words, row stride w_row_stride words)
 * into a new handle at *out. Non-zero padding gives TAKANE_ERR_PADDING_BITS. n == 0 or
 * k == 0 is valid. Free with takane_weights_free. */
TAKANE_API takane_status takane_weights_create(int64_t n, int64_t k, const uint64_t *w,
                                               int64_t w_row_stride, takane_weights **out);
/* Release a handle (NULL is a no-op). The caller must ensure no call still uses it. */
TAKANE_API void takane_weights_free(takane_weights *weights);
/* The handle's n, k and the bytes it holds (any out pointer may be NULL). */
TAKANE_API takane_status takane_weights_info(const takane_weights *weights, int64_t *n,
                                             int64_t *k, int64_t *nbytes);

/* As takane_binary_matmul with the weights of a handle: y (m, n) int32. */
TAKANE_API takane_status takane_binary_matmul_prepacked(const takane_weights *weights, int64_t m,
                                                        const uint64_t *x, int64_t x_row_stride,
                                                        int32_t *y, int64_t y_row_stride,
                                                        int32_t threads);
/* As takane_binary_matmul_f32 with the weights of a handle: activations (m, k) float32
 * are binarized (threshold NULL / scalar / per channel) and packed block by block inside
 * the call, feeding the kernels directly. */
TAKANE_API takane_status takane_binary_matmul_prepacked_f32(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *threshold, int64_t threshold_len, int32_t *y, int64_t y_row_stride,
    int32_t threads);
/* ---- W1A1 layer: scales, bias, binarized output ------------------------------------ */

/* With d[i][j] = dot(x_i, w_j) as takane_binary_matmul computes it, these write the float32
 *   y[i][j] = ((float)d[i][j] * scale[j]) * beta[i] + bias[j]
 * evaluated in exactly that order, each operation rounded to float32 (no fused
 * multiply-add), so any numpy code doing the same float32 operations gets the same bits.
 * A NULL scale, beta or bias drops its operation (it is not replaced by 1 or 0).
 *   scale: n per-output-row scales (XNOR-Net's alpha), or NULL;
 *   bias: n values, or NULL;
 *   beta: takane_binary_linear*: row_scale, m values (row stride 1), or NULL;
 *         takane_binary_linear_f32*: if activation_scale != 0, beta[i] = mean |x_i| over
 *         the row's k floats, summed in double in the same pass that packs the row and
 *         rounded once to float32 (k == 0 gives 0); else no beta.
 * scale, bias and beta must be finite (else TAKANE_ERR_NOT_FINITE, also when an infinite
 * activation makes mean |x| infinite). Activations are binarized as in takane_pack_f32.
 * threads: validated; these canonical-row entry points run on the calling thread (the
 * _prepacked variants below are the threaded fast path). */
TAKANE_API takane_status takane_binary_linear(int64_t m, int64_t n, int64_t k,
                                              const uint64_t *x, int64_t x_row_stride,
                                              const uint64_t *w, int64_t w_row_stride,
                                              const float *scale, const float *bias,
                                              const float *row_scale,
                                              float *y, int64_t y_row_stride,
                                              int32_t threads);
TAKANE_API takane_status takane_binary_linear_f32(int64_t m, int64_t n, int64_t k,
                                                  const float *x, int64_t x_row_stride,
                                                  const float *threshold, int64_t threshold_len,
                                                  int32_t activation_scale,
                                                  const uint64_t *w, int64_t w_row_stride,
                                                  const float *scale, const float *bias,
                                                  float *y, int64_t y_row_stride,
                                                  int32_t threads);

/* As above, but the output is binarized for the next binary layer: bit j of row i is
 * y[i][j] >= out_threshold[j] (out_threshold_len == n) or >= out_threshold[0] (len 1),
 * with y[i][j] the float32 value defined above, written canonically (ceil(n/64) words per
 * row, padding bits 0, y_row_stride in words). Without beta the comparison runs on the
 * integer dot products against per-column integer thresholds derived from that same float
 * expression (a negative scale flips it), so the bits never depend on the path taken.
 * A NaN out_threshold gives TAKANE_ERR_NAN; a length other than 1 or n gives
 * TAKANE_ERR_BAD_THRESHOLD_LEN. */
TAKANE_API takane_status takane_binary_linear_bits(int64_t m, int64_t n, int64_t k,
                                                   const uint64_t *x, int64_t x_row_stride,
                                                   const uint64_t *w, int64_t w_row_stride,
                                                   const float *scale, const float *bias,
                                                   const float *row_scale,
                                                   const float *out_threshold,
                                                   int64_t out_threshold_len,
                                                   uint64_t *y, int64_t y_row_stride,
                                                   int32_t threads);
TAKANE_API takane_status takane_binary_linear_f32_bits(int64_t m, int64_t n, int64_t k,
                                                       const float *x, int64_t x_row_stride,
                                                       const float *threshold,
                                                       int64_t threshold_len,
                                                       int32_t activation_scale,
                                                       const uint64_t *w, int64_t w_row_stride,
                                                       const float *scale, const float *bias,
                                                       const float *out_threshold,
                                                       int64_t out_threshold_len,
                                                       uint64_t *y, int64_t y_row_stride,
                                                       int32_t threads);

/* As the four entry points above, with the weights (and n, k) of a prepacked handle:
 * the same values and bits, from the panel kernels, on up to `threads` threads (the
 * products and the epilogue, fused per cache block; float activations are packed on
 * the calling thread, 64 rows at a time). */
TAKANE_API takane_status takane_binary_linear_prepacked(
    const takane_weights *weights, int64_t m, const uint64_t *x, int64_t x_row_stride,
    const float *scale, const float *bias, const float *row_scale, float *y,
    int64_t y_row_stride, int32_t threads);
TAKANE_API takane_status takane_binary_linear_prepacked_f32(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *threshold, int64_t threshold_len, int32_t activation_scale,
    const float *scale, const float *bias, float *y, int64_t y_row_stride, int32_t threads);
TAKANE_API takane_status takane_binary_linear_prepacked_bits(
    const takane_weights *weights, int64_t m, const uint64_t *x, int64_t x_row_stride,
    const float *scale, const float *bias, const float *row_scale,
    const float *out_threshold, int64_t out_threshold_len, uint64_t *y,
    int64_t y_row_stride, int32_t threads);
TAKANE_API takane_status takane_binary_linear_prepacked_f32_bits(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *threshold, int64_t threshold_len, int32_t activation_scale,
    const float *scale, const float *bias, const float *out_threshold,
    int64_t out_threshold_len, uint64_t *y, int64_t y_row_stride, int32_t threads);

/* ---- W1A-float: 1-bit weights, real activations (OneBit-style) ------------------------ */

/* y[i][j] = (sum_c (x[i][c] * in_scale[c]) * sign(w_j)[c]) * scale[j] + bias[j]
 * with sign(w_j)[c] = +1 for bit 1, -1 for bit 0; x: m rows of k floats (row stride
 * x_row_stride floats); w: n packed rows; y: float32 (row stride y_row_stride floats).
 * in_scale (k), scale (n) and bias (n) may each be NULL (the step is skipped) and must be
 * finite (else TAKANE_ERR_NOT_FINITE). Activations follow IEEE arithmetic (NaN and
 * infinities propagate). Accumulation is float32 in a kernel-specific order; for every
 * kernel, barring overflow and underflow,
 *   |y - exact| <= gamma(k + 2) * |scale[j]| * sum_c |x[i][c] * in_scale[c]| + u * |bias[j]|
 * where u = 2^-24, gamma(n) = n u / (1 - n u), and "exact" is the real-number value of
 * the formula on these float32 inputs. Non-zero padding in w gives TAKANE_ERR_PADDING_BITS.
 * threads: validated; this canonical-row entry point runs on the calling thread
 * (takane_binary_weight_matmul_prepacked below is the threaded fast path). */
TAKANE_API takane_status takane_binary_weight_matmul(int64_t m, int64_t n, int64_t k,
                                                     const float *x, int64_t x_row_stride,
                                                     const uint64_t *w, int64_t w_row_stride,
                                                     const float *in_scale, const float *scale,
                                                     const float *bias,
                                                     float *y, int64_t y_row_stride,
                                                     int32_t threads);

/* As takane_binary_weight_matmul with the weights (and n, k) of a prepacked handle, on
 * up to `threads` threads; same error bound (the summation order differs: K is blocked
 * so that the lookup tables stay in L1). The fast path for repeated products. */
TAKANE_API takane_status takane_binary_weight_matmul_prepacked(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *in_scale, const float *scale, const float *bias, float *y,
    int64_t y_row_stride, int32_t threads);

/* ---- 1-bit LLM layers: group scales and Q8_0 activations ----------------------------- */

/* The W1A-float product with group scales and a choice of activation format:
 *   y[i][j] = scale[j] * sum_c xs[i][c] * sign(w_j)[c] * group_scale[j][c / group_size]
 *             + bias[j],     xs[i][c] = x[i][c] * in_scale[c] (rounded to float32).
 * group_scale: NULL (no groups; then group_size must be 0) or n rows of
 * ceil(k / group_size) floats, row stride ceil(k / group_size), with group_size a positive
 * multiple of 64 (else TAKANE_ERR_BAD_GROUP_SIZE). in_scale, scale, group_scale and bias may
 * each be NULL (factor 1 / no bias) and must be finite (else TAKANE_ERR_NOT_FINITE; group
 * scales are checked as the kernels read them, so then y may be partly written).
 * activations (else TAKANE_ERR_BAD_ACTIVATIONS):
 *   TAKANE_ACTIVATIONS_F32: as takane_binary_weight_matmul; float32 accumulation in a
 *     kernel-specific order, |y - exact| <= gamma(k + 4) * |scale[j]| *
 *     sum_c |xs[i][c] * group_scale[j][c / G]| + gamma(2) * |bias[j]|.
 *     NaN and infinities in x propagate (IEEE).
 *   TAKANE_ACTIVATIONS_Q8_0: each row xs[i] is quantized in blocks of 32 (the last block
 *     zero-padded) exactly as llama.cpp's quantize_row_q8_0_ref: amax = max |xs| of the
 *     block, d = amax / 127 (float32), q[c] = roundf(xs[c] * (d ? 1/d : 0)) (float32
 *     product, ties away from zero), and the block scale used afterwards is dh = d rounded
 *     to float16 (round to nearest even, subnormals kept). Then
 *       y[i][j] = scale[j] * sum_b dh_b * group_scale[j][32 b / G] * S_b + bias[j],
 *       S_b = sum_{c in block b} q[c] * sign(w_j)[c]   (exact integers),
 *     accumulated in float32 in a kernel-specific order: |y - exact| <= gamma(nb + 4) *
 *     |scale[j]| * sum_b |dh_b * group_scale[j][32 b / G] * S_b| + gamma(2) * |bias[j]|,
 *     nb = ceil(k / 32). A NaN in x gives TAKANE_ERR_NAN; an infinite xs (an infinite
 *     x, or x * in_scale overflowing) or a block scale beyond fp16 (dh rounds to inf:
 *     max |xs| of a block > 127 * 65504, about 8.3e6) gives TAKANE_ERR_NOT_FINITE — llama.cpp
 *     would compute with an infinite scale. The activations are quantized before any
 *     output is written, so y is untouched on these errors.
 * u = 2^-24, gamma(n) = n u / (1 - n u); "exact" is the real-number value of the formula
 * on these float32 inputs (for Q8_0: on q and dh). Non-zero padding in w gives
 * TAKANE_ERR_PADDING_BITS. This canonical-row entry point packs the rows into a temporary
 * prepacked handle (allocated per call) and runs takane_binary_weight_matmul_prepacked_ex
 * on up to `threads` threads. */
TAKANE_API takane_status takane_binary_weight_matmul_ex(
    int64_t m, int64_t n, int64_t k, const float *x, int64_t x_row_stride, const uint64_t *w,
    int64_t w_row_stride, const float *in_scale, const float *scale, const float *group_scale,
    int64_t group_size, const float *bias, int32_t activations, float *y, int64_t y_row_stride,
    int32_t threads);

/* As takane_binary_weight_matmul_ex with the weights (and n, k) of a prepacked handle, on
 * up to `threads` threads; same values, bounds and errors. The fast path: M = 1 (decode)
 * streams the weights once, M > 1 (prefill) reuses each weight word across several rows;
 * no allocation per call once a thread has served a call of the same size. */
TAKANE_API takane_status takane_binary_weight_matmul_prepacked_ex(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *in_scale, const float *scale, const float *group_scale, int64_t group_size,
    const float *bias, int32_t activations, float *y, int64_t y_row_stride, int32_t threads);

/* ---- GGUF Q1_0 import / export -------------------------------------------------------- */

/* llama.cpp's Q1_0 (GGUF tensor type 41) holds a row of k weights (k a multiple of 128) as
 * k/128 blocks of 18 bytes: d, an IEEE fp16 stored little-endian, then 16 bytes of signs:
 * weight j of the block is bit (j % 8) of byte (j / 8), bit 1 = +d, bit 0 = -d. Those 16
 * bytes are the block's two canonical words (little-endian), so both directions copy the
 * bits unchanged and convert only d. The scale of weight c of row r is
 * group_scale[r * group_scale_row_stride + c / 128] (group size 128).
 * Strides: q_row_stride in bytes, bits_row_stride in words, group_scale_row_stride in
 * floats; output strides must be >= the row length when n > 1 (k/128*18 bytes, k/64 words,
 * k/128 floats). Errors, checked before anything is written: k % 128 != 0 gives
 * TAKANE_ERR_BAD_GROUP_SIZE; k > TAKANE_MAX_K gives TAKANE_ERR_K_TOO_LARGE. */

/* Q1_0 rows -> canonical bits (n rows of k/64 words) and float32 group scales (n rows of
 * k/128; the exact value of each d). group_scale may be NULL (the scales are not wanted).
 * A d that is fp16 infinity or NaN gives TAKANE_ERR_NOT_FINITE. */
TAKANE_API takane_status takane_q1_0_to_bits(int64_t n, int64_t k, const uint8_t *q,
                                             int64_t q_row_stride, uint64_t *bits,
                                             int64_t bits_row_stride, float *group_scale,
                                             int64_t group_scale_row_stride);
/* Canonical bits and float32 group scales -> Q1_0 rows; d = the group scale rounded to
 * fp16 (to nearest, ties to even, subnormals kept). group_scale NULL writes d = 1.0. A NaN
 * or infinite scale, or one whose magnitude rounds past the largest fp16 (|g| >= 65520),
 * gives TAKANE_ERR_NOT_FINITE. */
TAKANE_API takane_status takane_bits_to_q1_0(int64_t n, int64_t k, const uint64_t *bits,
                                             int64_t bits_row_stride, const float *group_scale,
                                             int64_t group_scale_row_stride, uint8_t *q,
                                             int64_t q_row_stride);
/* ---- binary convolution (NHWC, binary CNNs) ------------------------------------------- */

/*
 * Layout: NHWC with channels packed per pixel. A packed activation tensor of C channels is
 * uint64 (N, H, W, ceil(C/64)), contiguous, each pixel's channels in the canonical format
 * (padding bits 0). Float activations are float32 (N, H, W, C), contiguous.
 *
 * Weights are the OHWI tensor (out_channels, kernel_h, kernel_w, in_channels / groups):
 * canonical bits uint64 (out_channels, kernel_h, kernel_w, ceil(in_channels_per_group/64)),
 * contiguous. A handle re-tiles them once: per group, each output channel's taps become
 * one row of bits (kernel columns of stacked taps for one group of 32 or a multiple of
 * 64 channels — two taps per word at 32 — else the taps concatenated densely), which
 * meets the W1A1 panel kernels like a binary_matmul row.
 */
typedef struct takane_conv_weights takane_conv_weights;

/* Build a handle from canonical OHWI bits (above). out_channels, kernel_h, kernel_w,
 * in_channels (per group) and groups must be >= 1 (negative: TAKANE_ERR_NEGATIVE_DIMENSION,
 * zero or out_channels % groups != 0 or a size above 2^31 - 1: TAKANE_ERR_BAD_GEOMETRY);
 * kernel_h * kernel_w * in_channels <= TAKANE_MAX_K (else TAKANE_ERR_K_TOO_LARGE).
 * Non-zero padding bits give TAKANE_ERR_PADDING_BITS. Free with takane_conv_weights_free. */
TAKANE_API takane_status takane_conv_weights_create(int64_t out_channels, int64_t kernel_h,
                                                    int64_t kernel_w, int64_t in_channels,
                                                    int64_t groups, const uint64_t *w,
                                                    takane_conv_weights **out);
/* Release a handle (NULL is a no-op). The caller must ensure no call still uses it. */
TAKANE_API void takane_conv_weights_free(takane_conv_weights *weights);
/* The handle's out_channels, in_channels (total: per group * groups), kernel_h, kernel_w,
 * groups and the bytes it holds (any out pointer may be NULL). */
TAKANE_API takane_status takane_conv_weights_info(const takane_conv_weights *weights,
                                                  int64_t *out_channels, int64_t *in_channels,
                                                  int64_t *kernel_h, int64_t *kernel_w,
                                                  int64_t *groups, int64_t *nbytes);

/* The geometry of one convolution or pooling call. */
typedef struct takane_conv2d_geometry {
    int64_t batch, in_h, in_w;      /* input N (>= 0), H and W (>= 1, <= 2^31 - 1) */
    int64_t stride_h, stride_w;     /* >= 1 */
    int64_t dilation_h, dilation_w; /* >= 1 (pooling: must be 1) */
    int64_t pad_top, pad_bottom, pad_left, pad_right; /* >= 0 */
    int32_t pad_value; /* convolution: a tap outside the image is 0 (contributes nothing:
                          true zero padding), +1 or -1 (a +-1 activation); pooling: 0 */
} takane_conv2d_geometry;

/* Output size: out_h = (in_h + pad_top + pad_bottom - dilation_h * (kernel_h - 1) - 1)
 * / stride_h + 1, out_w likewise. TAKANE_ERR_BAD_GEOMETRY for an invalid geometry or a
 * padded input smaller than the dilated kernel. */
TAKANE_API takane_status takane_conv2d_output_size(const takane_conv_weights *weights,
                                                   const takane_conv2d_geometry *geometry,
                                                   int64_t *out_h, int64_t *out_w);

/*
 * Binary 2-D convolution (cross-correlation, as PyTorch's conv2d): for output pixel
 * (b, oy, ox) and output channel o of group g = o / (out_channels / groups),
 *   dot = sum over taps (ky, kx) whose input pixel (iy, ix) = (oy * stride_h - pad_top
 *         + ky * dilation_h, ox * stride_w - pad_left + kx * dilation_w) is in the image,
 *         of sum_c x[b, iy, ix, g * cin_g + c] * w[o, ky, kx, c]     (+-1 values)
 *         plus, for taps outside the image, the same with x = pad_value (0: nothing).
 * Exact in int32. Then the float32 output is
 *   y[b, oy, ox, o] = ((float)dot * scale[o] + bias[o]) + residual[b, oy, ox, o]
 * each operation rounded to float32 (no FMA); a NULL scale, bias or residual drops its
 * step. scale and bias must be finite (else TAKANE_ERR_NOT_FINITE). x: packed NHWC of the
 * handle's in_channels (padding bits checked), y: float32 (N, out_h, out_w, out_channels),
 * residual likewise (it must not overlap y).
 * batch == 0 is a no-op. Threads: up to `threads` (0 = default).
 */
TAKANE_API takane_status takane_binary_conv2d(const takane_conv_weights *weights,
                                              const takane_conv2d_geometry *geometry,
                                              const uint64_t *x, const float *scale,
                                              const float *bias, const float *residual,
                                              float *y, int32_t threads);
/* As takane_binary_conv2d, the output binarized for the next binary layer: bit o of pixel
 * (b, oy, ox) = (y[b, oy, ox, o] >= out_threshold[o or 0]) with y the float32 value above,
 * packed NHWC (N, out_h, out_w, ceil(out_channels/64)) words. out_threshold_len is 1 or
 * out_channels (else TAKANE_ERR_BAD_THRESHOLD_LEN); NaN gives TAKANE_ERR_NAN. */
TAKANE_API takane_status takane_binary_conv2d_bits(const takane_conv_weights *weights,
                                                   const takane_conv2d_geometry *geometry,
                                                   const uint64_t *x, const float *scale,
                                                   const float *bias, const float *residual,
                                                   const float *out_threshold,
                                                   int64_t out_threshold_len, uint64_t *y,
                                                   int32_t threads);
/* As the two above with float32 NHWC activations binarized inside the call exactly as
 * takane_pack_f32 does (threshold NULL, len 1, or len in_channels: per channel). */
TAKANE_API takane_status takane_binary_conv2d_f32(const takane_conv_weights *weights,
                                                  const takane_conv2d_geometry *geometry,
                                                  const float *x, const float *threshold,
                                                  int64_t threshold_len, const float *scale,
                                                  const float *bias, const float *residual,
                                                  float *y, int32_t threads);
TAKANE_API takane_status takane_binary_conv2d_f32_bits(
    const takane_conv_weights *weights, const takane_conv2d_geometry *geometry,
    const float *x, const float *threshold, int64_t threshold_len, const float *scale,
    const float *bias, const float *residual, const float *out_threshold,
    int64_t out_threshold_len, uint64_t *y, int32_t threads);

/* Binary max pooling on packed NHWC bits (N, H, W, ceil(channels/64)): the max of +-1
 * values over a window is a bitwise OR; taps in the padding are ignored. Output packed
 * NHWC (N, out_h, out_w, ceil(channels/64)), out_h as takane_conv2d_output_size with this
 * kernel. Requires dilation 1, pad_value 0 and each padding <= half the kernel (so every
 * window holds an image pixel), else TAKANE_ERR_BAD_GEOMETRY. */
TAKANE_API takane_status takane_binary_max_pool2d(const takane_conv2d_geometry *geometry,
                                                  int64_t channels, int64_t kernel_h,
                                                  int64_t kernel_w, const uint64_t *x,
                                                  uint64_t *y, int32_t threads);

/* ---- bring your own threads: entry points for runtimes with their own pool -------------- */

/*
 * Runtimes such as llama.cpp's ggml, ONNX Runtime or a game engine own their threads and call
 * a kernel from every worker with its share of the work. The entry points below run on the
 * calling thread only: no pool, no allocation, no locks, no thread-local state; scratch, where
 * needed, comes from the caller (size query first). They are safe to call concurrently on the
 * same handle and activations (each caller with its own scratch and output range).
 * A typical step of one matrix product on nth threads, thread ith:
 *   1. takane_quantize_q8_0 on rows [ith * m / nth, (ith + 1) * m / nth) of the activations
 *      into a shared buffer; barrier;
 *   2. takane_matmul_q8_0_rows on output columns [r0, r1) = the thread's share of the
 *      weight rows (multiples of TAKANE_ROW_ALIGN are fastest) with its own scratch.
 * The ISA is the one compute calls use (takane_isa_active()).
 */

/* llama.cpp's block_q8_0 (34 bytes: an IEEE fp16 d stored little-endian, then 32 int8 q;
 * value c of the block is d * q[c]) and block_q1_0 (18 bytes: fp16 d, then 16 bytes of
 * signs, weight j = bit j % 8 of byte j / 8, bit 1 = +d, bit 0 = -d). */
#define TAKANE_Q8_0_BLOCK 32
#define TAKANE_Q8_0_BLOCK_BYTES 34
#define TAKANE_Q1_0_BLOCK 128
#define TAKANE_Q1_0_BLOCK_BYTES 18
/* Output-row ranges that start at a multiple of this are computed without edge work. */
#define TAKANE_ROW_ALIGN 8

/* Quantize `rows` rows of k floats (x, row stride x_row_stride floats) to Q8_0 rows of
 * ceil(k / 32) blocks each (q, row stride q_row_stride BYTES, >= ceil(k/32) * 34 when
 * rows > 1), bit-identical to llama.cpp's quantize_row_q8_0_ref for every finite input:
 * per block, amax = max |x|, d = amax / 127 (float32), id = d != 0 ? 1 / d : 0,
 * q[c] = roundf(x[c] * id) (ties away from zero), stored d = fp16(d) (round to nearest
 * even). A partial last block (k % 32 != 0; ggml itself requires k % 32 == 0) is quantized
 * as if zero-padded. Where the reference is undefined (id infinite, d < 2^-128: it then
 * converts an infinite float to int8) q is 0 (d rounds to fp16 0 there, so the block's
 * value is 0 either way). Every block is always written; a NaN or infinity in x gives
 * TAKANE_ERR_NAN or TAKANE_ERR_NOT_FINITE after writing (that block: q = 0 and d the fp16
 * of the computed scale, so a product with it is NaN or infinite, as in llama.cpp).
 * No scratch. Calling thread only. */
TAKANE_API takane_status takane_quantize_q8_0(int64_t rows, int64_t k, const float *x,
                                              int64_t x_row_stride, void *q,
                                              int64_t q_row_stride);

/* Bytes a handle made from Q1_0 rows takes (header, panels and float32 block scales, the
 * scales stored in the kernels' panel order for rows padded to a multiple of 8; about
 * 1.11x the Q1_0 bytes). k % 128 != 0 gives TAKANE_ERR_BAD_GROUP_SIZE. */
TAKANE_API takane_status takane_weights_q1_0_size(int64_t n, int64_t k, int64_t *bytes);

/* Build a prepacked handle from n rows of k weights in Q1_0 (q, row stride q_row_stride
 * bytes, >= k/128 * 18 when n > 1): the signs are re-tiled into the kernels' panels and the
 * block scales d kept as float32 group scales (group size 128), carried by the handle.
 * mem: NULL (the library allocates; free with takane_weights_free) or caller memory of at
 * least takane_weights_q1_0_size() bytes, 64-byte aligned (else TAKANE_ERR_BAD_STRIDE),
 * which then holds the whole handle: *out == mem, nothing else is allocated, and
 * takane_weights_free() on it releases nothing (the caller owns the memory; the handle is
 * valid while the memory is and must not be moved). q may not overlap mem. A d that is
 * fp16 infinity or NaN gives TAKANE_ERR_NOT_FINITE. Calling thread only.
 * Every entry point taking a takane_weights accepts such a handle. The W1A-float and W1A8
 * ones (takane_binary_weight_matmul_prepacked[_ex], takane_matmul_q8_0_rows) apply its
 * group scales as part of the weights (effective weight = sign * d), and the call's own
 * group_scale must then be NULL (else TAKANE_ERR_BAD_GROUP_SIZE); the W1A1 ones use the
 * signs only, as they do for any handle. */
TAKANE_API takane_status takane_weights_from_q1_0(int64_t n, int64_t k, const void *q,
                                                  int64_t q_row_stride, void *mem,
                                                  int64_t mem_bytes, takane_weights **out);

/* Scratch bytes takane_matmul_q8_0_rows needs for m activation rows against this handle
 * (0 for m == 0). Depends only on the handle's shape, m and the active ISA. */
TAKANE_API int64_t takane_matmul_q8_0_scratch_size(const takane_weights *weights, int64_t m);

/* Output columns [r0, r1) (weight rows; 0 <= r0 <= r1 <= n) of the W1A8 product of a
 * handle and m rows of already-quantized Q8_0 activations (q: m rows of ceil(k/32)
 * block_q8_0, row stride q_row_stride bytes):
 *   y[i * y_row_stride + j] = scale[j] * sum_b dh_b * g[j][32 b / G] * S_b + bias[j]
 * for i < m, r0 <= j < r1, with the values, exact integer block sums and float bound of
 * takane_binary_weight_matmul_ex with TAKANE_ACTIVATIONS_Q8_0 (dh_b = the block's stored
 * fp16 d; g = the handle's Q1_0 block scales or group_scale/group_size as there, or 1;
 * scale, bias NULL: factor 1 / no bias). Columns outside [r0, r1) are not touched, so
 * threads may write disjoint ranges of one y. scratch: takane_matmul_q8_0_scratch_size()
 * bytes (64-byte aligned is best), not shared with a concurrent call; too small gives
 * TAKANE_ERR_OUT_OF_MEMORY. Any batch m >= 0 (decode 1, batched decode, prefill). Calling
 * thread only: no pool, no allocation, no locks. A NaN or infinite group scale gives
 * TAKANE_ERR_NOT_FINITE (y partly written). */
TAKANE_API takane_status takane_matmul_q8_0_rows(const takane_weights *weights, int64_t r0,
                                                 int64_t r1, int64_t m, const void *q,
                                                 int64_t q_row_stride, const float *scale,
                                                 const float *group_scale, int64_t group_size,
                                                 const float *bias, float *y,
                                                 int64_t y_row_stride, void *scratch,
                                                 int64_t scratch_bytes);

/* Dequantize weight rows [r0, r1) of a handle to float32: y[(r - r0) * y_row_stride + c] =
 * sign(w_r)[c] * g[r][c / G] (the handle's Q1_0 block scales; 1 for a handle without
 * them), c < k. For embedding lookups (ggml's GET_ROWS) of a matrix that lives only in a
 * handle. Calling thread only. */
TAKANE_API takane_status takane_weights_dequantize_rows(const takane_weights *weights,
                                                        int64_t r0, int64_t r1, float *y,
                                                        int64_t y_row_stride);

/* Canonical bits of weight rows [r0, r1) of a handle (the inverse of takane_weights_create
 * and the sign part of takane_weights_from_q1_0): row r - r0 at bits + (r - r0) *
 * bits_row_stride, ceil(k/64) words, padding bits 0. Lets a caller keep only the handle
 * (one resident copy of the weights) and rebuild the canonical rows when it needs them
 * (saving, exporting). Calling thread only. */
TAKANE_API takane_status takane_weights_get_bits(const takane_weights *weights, int64_t r0,
                                                 int64_t r1, uint64_t *bits,
                                                 int64_t bits_row_stride);

/* ---- which code runs, per op -------------------------------------------------------------- */

/* For a compiled ISA (else NULL): which kernels each op of its kernel set runs, as
 * space-separated "op=isa" pairs, e.g. "matmul=neon pack=neon linear=scalar wfloat=scalar
 * q8_0=neon+sdot" — a set may use the portable kernels of an op it has none of its own for,
 * and a sub-variant chosen at run time is named after a '+'. Ops: matmul (W1A1 products),
 * pack (binarization), linear (W1A1 layer epilogues), wfloat (W1A-float), q8_0 (W1A8),
 * ternary (ternary weights, takane_ternary_matmul_prepacked).
 * Static storage. On aarch64, env TAKANE_NEON_DOTPROD=0 (read once) keeps the W1A8 kernel
 * off SDOT even where the CPU has it. */
TAKANE_API const char *takane_isa_kernels(takane_isa isa);

/* ---- measured machine limits (issue 21) ------------------------------------------------ */

/* Streaming read bandwidth of main memory: `threads` (>= 1) threads each read their own
 * contiguous part of buf (bytes bytes, >= 64 per thread; for a DRAM figure >= 256 MB, at
 * least 4x the last-level cache) front to back with vector loads, started together; the
 * time is the slowest thread's (wall time; with threads == 1 the thread's CPU time, so
 * that time given to other processes does not count). The best of `repeat` (>= 1) passes, in bytes per second,
 * goes to *bytes_per_second. buf is only read (fault its pages in before, e.g. by writing
 * it once). The threads are created for the call (not the library's pool). */
TAKANE_API takane_status takane_probe_dram_bandwidth(const void *buf, int64_t bytes,
                                                     int32_t threads, int32_t repeat,
                                                     double *bytes_per_second);

/* Measure the int8 multiply-accumulate peak of `isa` (TAKANE_ISA_AUTO: the active one) on
 * the calling thread for about `seconds` (clamped to [0.001, 10]): a register-resident
 * loop of the instruction the W1A8 GEMM uses (AVX-512 VNNI VPDPBUSD; AVX2 VPMADDUBSW +
 * VPMADDWD), enough independent chains to fill the pipes, best of repeated runs, each
 * timed in the calling thread's CPU time (time given to other processes does not count).
 * *macs_per_second receives int8 MACs per second. TAKANE_ERR_ISA_UNSUPPORTED for a set
 * without an int8 probe. */
TAKANE_API takane_status takane_probe_peak_int8(takane_isa isa, double seconds,
                                                double *macs_per_second);

/* ---- ternary weights (issue 23): {-1, 0, +1} as two bit planes ---------------------------- */

/* Activation mode of the ternary entry point (with TAKANE_ACTIVATIONS_F32 / _Q8_0): BitNet
 * b1.58's per-row ("per token") absmax int8. Per row of xs, in float32:
 *   a = max(max_c |xs[c]|, 1e-5f), q[c] = clamp(rne(xs[c] * (127 / a)), -128, 127) (the
 *   quotient and the product each rounded to float32, rne = round half to even), d = a / 127
 *   (rounded to float32); then y[i][j] = scale[j] * d * sum_g g[j][g] * D_g + bias[j] with
 *   D_g = sum_{c in group g} q[c] * t_j[c] exact integers (any k). */
#define TAKANE_ACTIVATIONS_INT8_ROW 2

/* A ternary weight matrix (n rows of k values in {-1, 0, +1}), re-tiled for the kernels. */
typedef struct takane_ternary_weights takane_ternary_weights;

/* Create from two canonical bit planes of n rows, ceil(k/64) words each, row stride
 * row_stride words (>= ceil(k/64) when n > 1, else TAKANE_ERR_BAD_STRIDE): value
 * t[r][c] = nonzero bit ? (sign bit ? +1 : -1) : 0 (bit c % 64 of
 * word c / 64; a sign bit whose nonzero bit is clear is not read). Non-zero padding bits past
 * k in either plane give TAKANE_ERR_PADDING_BITS. k == 0 and n == 0 are valid. Free with
 * takane_ternary_weights_free (NULL is a no-op). */
TAKANE_API takane_status takane_ternary_weights_create(int64_t n, int64_t k,
                                                       const uint64_t *sign,
                                                       const uint64_t *nonzero,
                                                       int64_t row_stride,
                                                       takane_ternary_weights **out);
TAKANE_API void takane_ternary_weights_free(takane_ternary_weights *weights);

/* y[i][j] = scale[j] * sum_c xs[i][c] * t_j[c] * group_scale[j][c / group_size] + bias[j],
 * xs = x * in_scale (float32), for the weights of a ternary handle; arguments, NULL rules
 * and errors as takane_binary_weight_matmul_prepacked_ex. activations:
 *   TAKANE_ACTIVATIONS_F32: float32 accumulation in a kernel-specific order,
 *     |y - exact| <= gamma(k + 4) * |scale[j]| * sum_c |xs[i][c] * t_j[c] * g| + gamma(2) |bias[j]|;
 *     NaN and infinities in x propagate where t is nonzero.
 *   TAKANE_ACTIVATIONS_Q8_0: xs quantized as for the 1-bit entry point (llama.cpp Q8_0),
 *     S_b = sum_{c in block b} q[c] * t_j[c] exact; |y - exact| <= gamma(nb + 4) *
 *     |scale[j]| * sum_b |dh_b * g * S_b| + gamma(2) |bias[j]|.
 *   TAKANE_ACTIVATIONS_INT8_ROW: as defined above; |y - exact| <= gamma(ng + 4) * |scale[j]|
 *     * d * sum_g |g * D_g| + gamma(2) |bias[j]|, ng = ceil(k / group_size) (1 without
 *     group scales). NaN in xs gives TAKANE_ERR_NAN, an infinite xs TAKANE_ERR_NOT_FINITE,
 *     before y is written.
 * The bounds hold barring overflow and underflow, of y and of the intermediates: the q8_0
 * and int8_row epilogues form sum_g g * S (D_g) before the activation scale, and scale[j]
 * comes last, so y may be infinite or NaN where |g * S| summed over the groups, or the
 * sum before scale[j], exceeds FLT_MAX although the exact y is finite
 * (tests/fuzz/ternary_regressions/ hold such inputs).
 * Runs on up to `threads` threads. */
TAKANE_API takane_status takane_ternary_matmul_prepacked(
    const takane_ternary_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *in_scale, const float *scale, const float *group_scale, int64_t group_size,
    const float *bias, int32_t activations, float *y, int64_t y_row_stride, int32_t threads);

/* ---- handles that carry group scales --------------------------------------------------- */

/* Build a prepacked handle from n canonical rows of k weights (w, row stride w_row_stride
 * words, as takane_weights_create) plus float32 group scales: row-major, n rows of
 * ceil(k / group_size) (row stride group_scale_row_stride floats, >= that count when
 * n > 1), group_size > 0 a multiple of 64 (else TAKANE_ERR_BAD_GROUP_SIZE; the last group
 * of a row may be partial). The handle carries the scales as a handle from
 * takane_weights_from_q1_0 does (stored in the kernels' panel order, so no call transposes
 * them), and is used the same way: the W1A-float and W1A8 entry points
 * (takane_binary_weight_matmul_prepacked[_ex], takane_matmul_q8_0_rows) apply them as part
 * of the weights, with results bit-identical to passing the same group_scale/group_size
 * per call with a handle from takane_weights_create; the call's own group_scale must then
 * be NULL (else TAKANE_ERR_BAD_GROUP_SIZE); the W1A1 ones use the signs only;
 * takane_weights_dequantize_rows applies them; takane_weights_get_bits returns w's rows;
 * takane_weights_info's bytes include them. Errors, nothing allocated: a NaN or infinite
 * scale TAKANE_ERR_NOT_FINITE, bits set past k TAKANE_ERR_PADDING_BITS, negative
 * strides TAKANE_ERR_BAD_STRIDE, w or group_scale NULL with n > 0 and k > 0
 * TAKANE_ERR_NULL_POINTER. n == 0 or k == 0 give a handle without scales. Free with
 * takane_weights_free. Calling thread only. */
TAKANE_API takane_status takane_weights_create_grouped(int64_t n, int64_t k, const uint64_t *w,
                                                       int64_t w_row_stride,
                                                       const float *group_scale,
                                                       int64_t group_scale_row_stride,
                                                       int64_t group_size, takane_weights **out);

/* The float32 group scales a handle carries, for weight rows [r0, r1): row r - r0 at
 * group_scale + (r - r0) * group_scale_row_stride, ceil(k / group_size) floats, row-major
 * (group_size the handle's: the one given to takane_weights_create_grouped, 128 for a
 * handle from takane_weights_from_q1_0, whose fp16 block scales come back widened to
 * float32). Exactly the values the kernels apply, bit for bit. The counterpart of
 * takane_weights_get_bits for the scales: lets a caller keep only the handle and rebuild
 * its row-major scales when it needs them. Statuses as takane_weights_get_bits (weights
 * NULL TAKANE_ERR_NULL_POINTER; r0 or r1 negative TAKANE_ERR_NEGATIVE_DIMENSION; r0 > r1
 * or r1 > n TAKANE_ERR_BAD_STRIDE; a negative stride, or one below ceil(k / group_size)
 * for more than one row, TAKANE_ERR_BAD_STRIDE; group_scale NULL for a non-empty range
 * TAKANE_ERR_NULL_POINTER), checked in that order, plus TAKANE_ERR_BAD_GROUP_SIZE after
 * the range check for a handle that carries no scales (from takane_weights_create, or one
 * with n == 0 or k == 0). Calling thread only. */
TAKANE_API takane_status takane_weights_get_group_scales(const takane_weights *weights,
                                                         int64_t r0, int64_t r1,
                                                         float *group_scale,
                                                         int64_t group_scale_row_stride);

/* Canonical planes of ternary weight rows [r0, r1) of a ternary handle (the inverse of
 * takane_ternary_weights_create): row r - r0 at sign + (r - r0) * row_stride and nonzero +
 * (r - r0) * row_stride, ceil(k/64) words each, padding bits 0, sign set only where
 * nonzero is (the canonical planes, exactly as given to create). Lets a caller keep only
 * the handle (one resident copy of the weights) and rebuild the planes when it needs them
 * (saving, exporting). Statuses, checked in this order: weights NULL
 * TAKANE_ERR_NULL_POINTER; r0 or r1 negative TAKANE_ERR_NEGATIVE_DIMENSION; r0 > r1 or
 * r1 > n TAKANE_ERR_BAD_STRIDE; a negative row_stride, or one below ceil(k/64) for more
 * than one row, TAKANE_ERR_BAD_STRIDE; sign or nonzero NULL for a non-empty range (and
 * k > 0) TAKANE_ERR_NULL_POINTER. Calling thread only. */
TAKANE_API takane_status takane_ternary_weights_get_planes(const takane_ternary_weights *weights,
                                                           int64_t r0, int64_t r1, uint64_t *sign,
                                                           uint64_t *nonzero, int64_t row_stride);

#ifdef __cplusplus
}
#endif

#endif /* TAKANE_TAKANE_H */
