/*
 * internal.h — what the portable framework and the per-ISA kernel files share.
 *
 * A kernel set is one ISA's microkernels. The framework (matmul.c, pack.c) owns loops,
 * edges and validation; a microkernel computes one register tile and nothing else.
 * The registry (dispatch.c) lists the compiled kernel sets, best first.
 */
#ifndef TAKANE_INTERNAL_H
#define TAKANE_INTERNAL_H

#include <stdint.h>
#include <stddef.h>

#include "takane/takane.h"

/* Largest register tile any kernel set may declare (framework scratch is sized by it). */
#define TAKANE_MAX_MR 8
#define TAKANE_MAX_NR 8

/*
 * W1A1 microkernel: for i < mr, j < nr (the set's tile), computes
 *   pc[i * nr + j] = popcount(x[i][0..kw) XOR w[j][0..kw))
 * x[i] and w[j] are row pointers to kw packed words each (no alignment promised).
 * The framework passes exactly mr/nr row pointers; on an edge tile it repeats the
 * last valid row, so a kernel never sees a short tile. kw may be 0.
 */
typedef void (*takane_popcount_tile_fn)(const uint64_t *const *x, const uint64_t *const *w,
                                        int64_t kw, uint64_t *pc);

/*
 * Pack microkernel: one row of k floats -> ceil(k/64) canonical words at out
 * (padding bits 0). t points at one threshold (per_channel == 0) or k thresholds.
 * Returns nonzero iff some (x, t) pair is unordered (a NaN on either side).
 */
typedef int (*takane_pack_row_fn)(const float *x, int64_t k, const float *t, int per_channel,
                                  uint64_t *out);

/*
 * Panel layout (the kernels' private re-tiling of packed weights, built once per weight
 * matrix by takane_weights_create): rows are grouped in panels of TAKANE_PANEL_ROWS;
 * panel p holds word q of its row r at panel[q * TAKANE_PANEL_ROWS + r], so one 512-bit
 * (or two 256-bit) loads fetch word q of 8 rows, and an activation word broadcast
 * against it gives 8 outputs in 8 lanes — no horizontal reductions. Rows past N in the
 * last panel are zero (their results are computed and dropped).
 */
#define TAKANE_PANEL_ROWS 8
/* Largest panel_np a kernel may declare (the framework's count buffer is sized by it). */
#define TAKANE_MAX_PANEL_NP 64

/*
 * W1A1 panel microkernel: for i < mr, j < np * TAKANE_PANEL_ROWS,
 *   pc[i * ldc + j] = popcount(x[i][0..kw) XOR row j of panels[0..np))
 * where panel p starts at panels + p * pstride (words). Requires 1 <= mr <= panel_mr and
 * 1 <= np <= panel_np[mr]; kw >= 1. Counts are <= 64 * kw, and kw * 64 <= 2^31 + 63.
 */
typedef void (*takane_panel_tile_fn)(const uint64_t *const *x, int mr, const uint64_t *panels,
                                     int64_t pstride, int np, int64_t kw, uint32_t *pc,
                                     int ldc);

/* One op's microkernel as a matmul file exports it: the tile shapes and the functions.
 * panel_tile may be NULL: the framework then uses popcount_tile on canonical rows. */
typedef struct takane_matmul_ukernel {
    int mr, nr; /* popcount_tile's register tile, each <= TAKANE_MAX_MR / _NR */
    takane_popcount_tile_fn popcount_tile;
    takane_panel_tile_fn panel_tile;
    int panel_mr;                       /* largest mr panel_tile takes (<= TAKANE_MAX_MR) */
    int panel_np[TAKANE_MAX_MR + 1];    /* largest np panel_tile takes for each mr */
    /* Peak probe (may be NULL): a register-resident XOR + popcount loop of `iters`
     * rounds with enough independent chains to saturate the popcount units, the
     * same instruction sequence the kernels use; returns the bits it XOR-popcounted.
     * The result is kept live through *sink so the loop cannot be removed. */
    uint64_t (*probe)(uint64_t iters, uint64_t *sink);
    /* Decode GEMV (may be NULL: the framework then uses panel_tile with mr = 1). One
     * activation row x against np >= 1 consecutive panels starting at `panels` (panel t at
     * panels + t * kw * TAKANE_PANEL_ROWS: one contiguous stream, read once, front to back):
     *   pc[t * TAKANE_PANEL_ROWS + r] = popcount(x[0..kw) XOR row r of panel t).
     * kw >= 1; 1 <= np <= TAKANE_MAX_PANEL_NP. */
    void (*gemv)(const uint64_t *x, const uint64_t *panels, int np, int64_t kw, uint32_t *pc);
} takane_matmul_ukernel;

/*
 * W1A1 layer microkernels (csrc/kernels/linear/linear_<isa>.c), used by linear.c.
 * Epilogue value of column j: v_j = ((float)d[j] * s[j]) * beta + b[j], each step rounded
 * to float32 (these files are built with -ffp-contract=off); s == NULL, beta == NULL or
 * b == NULL drops that step. Bit outputs write ceil(n/64) words with zero padding bits.
 */
typedef struct takane_linear_ukernel {
    /* As takane_pack_row_fn; if abs_sum != NULL, also *abs_sum = sum |x[c]| over the row,
     * accumulated in double in the same pass. Returns nonzero iff a NaN was seen. */
    int (*pack_row)(const float *x, int64_t k, const float *t, int per_channel, uint64_t *out,
                    double *abs_sum);
    /* y[j] = v_j for j < n. */
    void (*affine_row)(const int32_t *d, int64_t n, const float *s, const float *beta,
                       const float *b, float *y);
    /* bit j of out = (v_j >= t[j]) if t_per_col else (v_j >= t[0]). */
    void (*affine_bits_row)(const int32_t *d, int64_t n, const float *s, const float *beta,
                            const float *b, const float *t, int t_per_col, uint64_t *out);
    /* bit j of out = (d[j] > tint[j]) XOR bit j of flip (flip: ceil(n/64) words). */
    void (*int_bits_row)(const int32_t *d, int64_t n, const int32_t *tint, const uint64_t *flip,
                         uint64_t *out);
} takane_linear_ukernel;

/* Largest W1A-float tile any kernel set may declare (framework scratch is sized by it). */
#define TAKANE_WFLOAT_MAX_MR 4
#define TAKANE_WFLOAT_MAX_NR 16

/*
 * W1A-float microkernels (csrc/kernels/wfloat/wfloat_<isa>.c), used by wfloat.c.
 * A kernel turns one activation row xs (in_scale already applied; ceil(k/64)*64 floats,
 * zero past k) into a kernel-specific table of table_len(k) floats, then a panel call
 * computes, for i < mr (1 <= mr <= the set's mr) and j < nr,
 *   sums[i * nr + j] = sum_c xs_i[c] * (bit c of w[j] ? +1 : -1)
 * in float32, any order (the documented error bound holds for every summation tree).
 * w holds exactly nr row pointers to ceil(k/64) canonical words each (the framework
 * repeats the last valid row on an edge panel); padding bits are zero.
 */
typedef struct takane_wfloat_ukernel {
    int mr, nr;
    int64_t (*table_len)(int64_t k);
    void (*build_table)(const float *xs, int64_t k, float *table);
    void (*panel)(const float *const *tables, int mr, const uint64_t *const *w, int64_t k,
                  float *sums);
    /* Prepacked variant (NULL if the set has none; the framework then copies rows out of
     * the panels for `panel`): the nr weight rows are those of nr / TAKANE_PANEL_ROWS
     * consecutive panels of a takane_weights handle, panel t at panels + t * pstride
     * words (pstride 0 repeats a panel: the framework's edge case), and only words
     * [q0, q1) of each row are used, against the matching part of each (whole-row) table.
     * Adds, for i < mr and j < nr, that part's sum to acc[i * nr + j] (one float32 add
     * per element per call). Requires nr % TAKANE_PANEL_ROWS == 0, 0 <= q0 < q1 <= kw. */
    void (*panel_packed)(const float *const *tables, int mr, const uint64_t *panels,
                         int64_t pstride, int64_t q0, int64_t q1, float *acc);
    /* panel_packed with group scales (NULL if the set has none: the framework then calls
     * panel_packed once per group): words [q0, q1) with q0 a multiple of gw cover whole
     * groups of gw words (the last may end at q1 = kw); for i < mr, j < nr,
     *   acc[i * nr + j] += sum_g gs[j * ldg + g] * (sum over group g's words)
     * (g the group index q / gw; one rounding per group product and add or FMA). Rows
     * j >= nrows must not read gs. Returns nonzero iff a scale read is NaN or infinite. */
    int (*panel_packed_groups)(const float *const *tables, int mr, const uint64_t *panels,
                               int64_t pstride, int64_t q0, int64_t q1, int64_t gw,
                               const float *gs, int64_t ldg, int64_t nrows, float *acc);
} takane_wfloat_ukernel;

/* Largest W1A8 tile any kernel set may declare (framework scratch is sized by it). */
#define TAKANE_Q8_MAX_MR 4
#define TAKANE_Q8_MAX_NP 4

/*
 * W1A8 (Q8_0 activations) microkernels (csrc/kernels/wq8/wq8_<isa>.c), used by wq8.c.
 * quantize_row: one row of k floats x (times in_scale[c] if in_scale != NULL, each product
 *   rounded to float32) into Q8_0 exactly as llama.cpp's quantize_row_q8_0_ref (see
 *   takane.h): q (kw*64 int8, zero past k), and per 32-column block b < 2*kw: d[b] = the
 *   block scale rounded to fp16, as float (0 for blocks past k), nq[b] = -sum_{c in b} q[c].
 *   Returns TAKANE_ERR_NAN / TAKANE_ERR_NOT_FINITE for a NaN / infinite product or a block
 *   scale that rounds to an infinite fp16 (then the outputs are unspecified). Every set's
 *   quantizer gives the same bits (tested).
 * build_table: q of one row into a kernel-specific table of table_len(kw) bytes (the
 *   framework aligns it to 64 bytes).
 * panels: for i < mr activation rows and the rows j < np * TAKANE_PANEL_ROWS of np
 *   consecutive panels (panel t at panels + t * pstride words), over the groups g of gw
 *   words (words [g*gw, min(kw, (g+1)*gw)); gw = kw without group scales):
 *     out[i * NP * TAKANE_PANEL_ROWS + j] = sum_g gs[j * ldg + g] * sum_{blocks b in g} d[b] * S_b
 *     S_b = sum_{c in b} q[c] * sign(row j)[c] = 2 * sum_{c in b, bit c set} q[c] + nq[b]
 *   with NP the set's np, S_b exact (int32), gs the group scales of the run's first row
 *   (NULL: every factor is 1), and the float sum in any order with at most two roundings
 *   per product (fl(fl(d * g) * S) or fl(d * S) * g) and one per add or FMA. Rows
 *   j >= nrows (past N) must not read gs (their results are dropped). Returns nonzero iff
 *   a group scale it read is NaN or infinite. Requires 1 <= mr <= the set's mr,
 *   1 <= np <= the set's np, kw >= 1, 1 <= nrows.
 */
/*
 * W1A8 prefill GEMM microkernels (csrc/kernels/wq8/wq8_gemm_<isa>.c; BLIS structure, the
 * framework in wq8_gemm.c). The weights of one strip of nr output columns (nr /
 * TAKANE_PANEL_ROWS consecutive panels) are expanded once into a kernel-specific packed
 * buffer (e.g. int8 bytes, with the strip's group scales), which the tile then reuses for
 * every activation row:
 * pack: panels of the strip (panel t at panels + t * pstride words; only np <= nr / 8 of
 *   them exist, the missing ones are zero rows), kw words each, group scales gs (row j at
 *   gs + j * ldg, groups of gw words; NULL: none) for rows j < nrows (rows past nrows read
 *   no scale) into packed (pack_len(kw, ngroups) bytes, 64-byte aligned). Returns nonzero
 *   iff a group scale it read is NaN or infinite.
 * tile: for i < mr (1 <= mr <= the set's mr) activation rows (q[i]: kw * 64 int8, zero
 *   past k; d[i], nq[i]: 2 * kw block scales and negated block sums, as the q8 ukernel
 *   takes them) and j < nr,
 *     out[i * ldo + j] = sum_g g[j][g] * sum_{b in g} d[i][b] * S_ib_j    (has_gs)
 *                      = sum_b d[i][b] * S_ib_j                             (!has_gs)
 *   S exact (int32), the float sum in any order with at most two roundings per product
 *   (fl(fl(d * g) * S)) and one per add or FMA (the framework's bound, wq8.c).
 */
typedef struct takane_q8_gemm_ukernel {
    int mr, nr;
    int64_t (*pack_len)(int64_t kw, int64_t ngroups);
    int (*pack)(const uint64_t *panels, int64_t pstride, int np, int64_t kw, int64_t gw,
                const float *gs, int64_t ldg, int64_t nrows, void *packed);
    void (*tile)(const int8_t *const *q, const float *const *d, const int32_t *const *nq,
                 int mr, const void *packed, int64_t kw, int64_t gw, int has_gs, float *out,
                 int64_t ldo);
    /* Smallest M (>= 2) for which the GEMM beats the set's panel kernels (measured). */
    int min_m;
} takane_q8_gemm_ukernel;

typedef struct takane_q8_ukernel {
    int mr, np;
    takane_status (*quantize_row)(const float *x, const float *in_scale, int64_t k,
                                  int64_t kw, int8_t *q, float *d, int32_t *nq);
    int64_t (*table_len)(int64_t kw);
    void (*build_table)(const int8_t *q, int64_t kw, void *table);
    int (*panels)(const void *const *tables, const float *const *d, const int32_t *const *nq,
                  int mr, const uint64_t *panels, int64_t pstride, int np, int64_t kw,
                  int64_t gw, const float *gs, int64_t ldg, int64_t nrows, float *out);
    /* Peak probe (may be NULL): a register-resident loop of the int8 multiply-accumulate
     * instruction the GEMM uses, `iters` rounds; returns the MACs done (kept live through
     * *sink). */
    uint64_t (*probe_int8)(uint64_t iters, int32_t *sink);
    /* The prefill GEMM (may be NULL: the panels kernel serves every M). */
    const takane_q8_gemm_ukernel *gemm;
} takane_q8_ukernel;

/* wq8.c: the portable Q8_0 quantizer (the quantize_row of the scalar set). */
takane_status takane_q8_quantize_row_portable(const float *x, const float *in_scale, int64_t k,
                                              int64_t kw, int8_t *q, float *d, int32_t *nq);
/* wq8.c: float32(fp16(f)) for f >= 0: round to nearest even, subnormals kept, f >= 65520
 * (and NaN) -> +inf. Shared by every quantizer so the block scales agree bit for bit. */
float takane_round_fp16(float f);

/* A kernel set is one ISA's microkernels for every op, assembled in dispatch.c. */
typedef struct takane_kernel_set {
    takane_isa isa;
    const takane_matmul_ukernel *matmul;
    takane_pack_row_fn pack_row;
    const takane_linear_ukernel *linear;
    const takane_wfloat_ukernel *wfloat;
    const takane_q8_ukernel *q8;
} takane_kernel_set;

/* Exported by csrc/kernels/<op>/<op>_<isa>.c, for the ISAs compiled for this target. */
#define TAKANE_DECLARE_ISA_KERNELS(isa)                                                    \
    extern const takane_matmul_ukernel takane_matmul_ukernel_##isa;                        \
    int takane_pack_row_##isa(const float *x, int64_t k, const float *t, int per_channel,  \
                              uint64_t *out);
TAKANE_DECLARE_ISA_KERNELS(scalar)
TAKANE_DECLARE_ISA_KERNELS(avx2)
TAKANE_DECLARE_ISA_KERNELS(avx512)
TAKANE_DECLARE_ISA_KERNELS(neon)

/* The prepacked weight handle: panels of TAKANE_PANEL_ROWS rows, see above. */
struct takane_weights {
    int64_t n, k, kw;  /* kw = ceil(k / 64); conv.c's private handles may have a larger kw
                          (rows with whole zero padding words; k counts the real bits) */
    int64_t npanels;   /* ceil(n / TAKANE_PANEL_ROWS) */
    uint64_t *panels;  /* npanels * kw * TAKANE_PANEL_ROWS words, 64-byte aligned; NULL if empty */
    /* Group scales carried by the handle (takane_weights_from_q1_0): n rows of
     * k / group_size floats (row stride k / group_size), or NULL and 0. The W1A-float and
     * W1A8 entry points use them when the call passes none (byot.c, api_layers.c). */
    float *group_scale;
    int64_t group_size;
    /* Where the memory came from, for takane_weights_free: TAKANE_STORAGE_* */
    int storage;
};
#define TAKANE_STORAGE_SEPARATE 0 /* struct and panels allocated apart (weights_create) */
#define TAKANE_STORAGE_BLOCK 1    /* one block from takane_panels_alloc: struct first */
#define TAKANE_STORAGE_CALLER 2   /* inside caller memory: never freed by the library */

/* q1_0.c: fp16 bits -> float32, exact (infinities and NaN kept). */
float takane_fp16_to_f32(uint16_t h);
/* q1_0.c: float32 -> fp16 bits, round to nearest even with gradual underflow; *ok = 0 for
 * NaN, infinities and |f| >= 65520 (the returned bits are then NaN or a signed infinity). */
uint16_t takane_f32_to_fp16(float f, int *ok);

/* matmul.c: memory for a handle's panels (free() releases it): 64-byte aligned; large
 * blocks are also 2 MiB-aligned and advised as huge pages on Linux. */
void *takane_panels_alloc(size_t bytes);

/* The layer kernels (binary_linear, W1A-float) of each ISA. */
#define TAKANE_DECLARE_LAYER_KERNELS(isa)                                                  \
    extern const takane_linear_ukernel takane_linear_ukernel_##isa;                        \
    extern const takane_wfloat_ukernel takane_wfloat_ukernel_##isa;                        \
    extern const takane_q8_ukernel takane_q8_ukernel_##isa;
TAKANE_DECLARE_LAYER_KERNELS(scalar)
TAKANE_DECLARE_LAYER_KERNELS(avx2)
TAKANE_DECLARE_LAYER_KERNELS(avx512)
extern const takane_q8_ukernel takane_q8_ukernel_neon;

/* api_layers.c: argument checks shared by the layer and convolution entry points.
 * TAKANE_ERR_NOT_FINITE unless v is NULL or all of v[0..len) is finite. */
takane_status takane_check_finite(const float *v, int64_t len);
/* A threshold array of len 1 or `full` without NaN (NULL allowed when may_be_null). */
takane_status takane_check_threshold(const float *t, int64_t len, int64_t full, int may_be_null);

/* dispatch.c: the kernel set compute calls use now, or an error (env TAKANE_ISA). */
takane_status takane_select_kernels(const takane_kernel_set **out);
/* dispatch.c: remember which ISA the calling thread's compute call ran on. */
void takane_note_used(takane_isa isa);

/* threads.c: run fn(ctx, t) for every t in [0, ntasks) on up to nthreads threads, the
 * caller included; returns when all are done. Tasks must be independent. */
typedef void (*takane_task_fn)(void *ctx, int64_t task);
void takane_parallel_run(int nthreads, int64_t ntasks, takane_task_fn fn, void *ctx);

/* matmul.c: the W1A1 frameworks (validated calls with m, n, k > 0; see matmul.c).
 * Canonical rows, single-threaded: */
void takane_matmul_packed_run(const takane_kernel_set *ks, int64_t m, int64_t n, int64_t k,
                              const uint64_t *x, int64_t xs, const uint64_t *w, int64_t ws,
                              int32_t *y, int64_t ys);
takane_status takane_matmul_f32_run(const takane_kernel_set *ks, int64_t m, int64_t n,
                                    int64_t k, const float *x, int64_t xs, const float *t,
                                    int per_channel, const uint64_t *w, int64_t ws, int32_t *y,
                                    int64_t ys);
/* A prepacked handle, threaded: packed x (xf NULL) or float x binarized against t. */
takane_status takane_matmul_prepacked_run(const takane_kernel_set *ks, const takane_weights *w,
                                          int64_t m, const uint64_t *x, int64_t xs,
                                          const float *xf, const float *t, int per_channel,
                                          int32_t *y, int64_t ys, int threads);
/* The same with an epilogue: epi(ctx, r0, r1, c0, c1) is called, on the thread that
 * computed them, once rows [r0, r1) x columns [c0, c1) of y are final; every (row,
 * column) is covered by exactly one call, c0 is a multiple of 64 and c1 is one or n, so
 * calls never share a 64-column word. Calls run concurrently (on disjoint blocks). */
typedef void (*takane_epilogue_fn)(void *ctx, int64_t r0, int64_t r1, int64_t c0, int64_t c1);
takane_status takane_matmul_prepacked_run_epi(const takane_kernel_set *ks,
                                              const takane_weights *w, int64_t m,
                                              const uint64_t *x, int64_t xs, const float *xf,
                                              const float *t, int per_channel, int32_t *y,
                                              int64_t ys, int threads, takane_epilogue_fn epi,
                                              void *epi_ctx);

/* One block on the calling thread: rows [0, m) of packed x (row stride xs words) times
 * panels [p_begin, p_end) of w; y[i * ys + j] = k - 2 * popcount for the columns j of
 * those panels (j < w->n). No epilogue, no threads: the caller (conv.c) owns both. */
void takane_matmul_prepacked_block(const takane_kernel_set *ks, const takane_weights *w,
                                   int64_t m, const uint64_t *x, int64_t xs, int64_t p_begin,
                                   int64_t p_end, int32_t *y, int64_t ys);

/* The task grid of the threaded frameworks: rows in chunks of m_chunk (a multiple of the
 * row tile mr), weight blocks (panels or panel groups) in chunks of p_chunk (a multiple
 * of p_align); task t covers row chunk t / p_tasks and block chunk t % p_tasks. With
 * nthreads > 1 it aims at TAKANE_TASKS_PER_THREAD tasks per thread, so that a late
 * worker costs little imbalance: enough row tiles -> split rows only (every task sweeps
 * all weights, each row is prepared once); few rows (GEMV-like) -> split the weights,
 * each task streams its share once. Splitting a small N into one panel per task was
 * measured 2x slower than one thread on (3136, 64, 576) (each call then covered one
 * panel and re-prepared its rows). */
#define TAKANE_TASKS_PER_THREAD 4
typedef struct takane_grid {
    int64_t m_chunk, p_chunk, p_tasks, ntasks;
} takane_grid;

static inline takane_grid takane_plan_grid(int nthreads, int64_t m, int mr, int64_t nblocks,
                                           int64_t p_align) {
    takane_grid g;
    const int64_t mtiles = (m + mr - 1) / mr;
    const int64_t want = nthreads > 1 ? (int64_t)nthreads * TAKANE_TASKS_PER_THREAD : 1;
    if (want == 1) {
        g.m_chunk = m, g.p_chunk = nblocks;
    } else if (mtiles >= want) {
        g.m_chunk = (mtiles + want - 1) / want * mr, g.p_chunk = nblocks;
    } else {
        g.m_chunk = m, g.p_chunk = (nblocks + want - 1) / want;
        g.p_chunk = (g.p_chunk + p_align - 1) / p_align * p_align;
    }
    if (g.p_chunk < 1) g.p_chunk = 1;
    if (g.m_chunk < 1) g.m_chunk = 1;
    g.p_tasks = (nblocks + g.p_chunk - 1) / g.p_chunk;
    g.ntasks = ((m + g.m_chunk - 1) / g.m_chunk) * g.p_tasks;
    return g;
}

static inline int64_t takane_words_for(int64_t k) { return (k + 63) / 64; }

/* Mask of the valid bits in the last word of a k-element row (all ones if k % 64 == 0). */
static inline uint64_t takane_last_word_mask(int64_t k) {
    int r = (int)(k % 64);
    return r ? ((UINT64_C(1) << r) - 1) : ~UINT64_C(0);
}

#endif /* TAKANE_INTERNAL_H */
