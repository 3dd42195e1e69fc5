/*
 * linear_avx512.c — W1A1 layer microkernels for x86-64 AVX-512: packing that also sums
 * |x| (beta = mean |x|), and binary_linear's epilogues.
 *
 * ISA and flags: AVX-512 F+BW+VL+VPOPCNTDQ (the flags of every *_avx512.c file) and
 *   -ffp-contract=off, so the epilogue's multiply and add are never fused (the value is
 *   rounded after each step, as the float32 numpy reference computes it).
 * Step: 16 lanes. Packing: VCMPPS into a mask register IS 16 packed bits; a second
 *   compare (UNORD_Q) catches NaN; |x| (VPANDD with 0x7fffffff) is widened by two
 *   VCVTPS2PD into two double accumulators. Float epilogue: VCVTDQ2PS, VMULPS (scale),
 *   VMULPS (beta), VADDPS (bias). Bit epilogues: VCMPPS GE_OQ into a mask, or on the
 *   integer path VPCMPGTD against per-column integer thresholds; 4 masks make a word.
 * Fused panel tile (panel_epi, the convolutions' small-K layers): the panel tile of
 *   matmul_avx512.c (broadcast activation word, VPXORQ + VPOPCNTQ + VPADDQ per 8 outputs,
 *   up to 4 rows x 4 panels = 16 zmm accumulators) whose counts go straight into the
 *   epilogue: per pair of panels and row, VPERMT2D (16 counts, 32-bit), VPADDD +
 *   VPSUBD from the row's base (the dot products), then the float steps as above and one
 *   16-float store, or one VCMPPS mask = 16 output bits (a 2-byte store). No count or
 *   dot product goes through memory.
 * Edges: packing reads its last partial group with a zero-masked load compared under the
 *   same mask (no overread, zeros add 0 to the sum). The epilogues finish the last
 *   n % 16 columns with scalar code computing the same float32 steps.
 * Invariants: exactly ceil(k/64) / ceil(n/64) words written, padding bits 0.
 */
#include "../isa_avx512.h"

#include "../kernel.h"

/* pack_avx512.c's packing, summing |x| in the same pass (isa_avx512.h). */
static int pack_row(const float *x, int64_t k, const float *t, int per_channel, uint64_t *out,
                    double *abs_sum) {
    return takane_avx512_pack_row(x, k, t, per_channel, out, abs_sum);
}

/* The epilogue value of 16 columns starting at j (see kernel.h). Always inlined: a
 * real call returning a zmm would change the ABI in the SIMDe-emulated test build. */
static inline __attribute__((always_inline)) __m512 value16(const int32_t *d, const float *s, const float *beta, const float *b,
                             int64_t j) {
    __m512 v = _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(d + j)));
    if (s) v = _mm512_mul_ps(v, _mm512_loadu_ps(s + j));
    if (beta) v = _mm512_mul_ps(v, _mm512_set1_ps(*beta));
    if (b) v = _mm512_add_ps(v, _mm512_loadu_ps(b + j));
    return v;
}

static inline float value1(int32_t d, const float *s, const float *beta, const float *b,
                           int64_t j) {
    float v = (float)d;
    if (s) v = v * s[j];
    if (beta) v = v * *beta;
    if (b) v = v + b[j];
    return v;
}

static void affine_row(const int32_t *d, int64_t n, const float *s, const float *beta,
                       const float *b, float *y) {
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) _mm512_storeu_ps(y + j, value16(d, s, beta, b, j));
    for (; j < n; j++) y[j] = value1(d[j], s, beta, b, j);
}

static void affine_bits_row(const int32_t *d, int64_t n, const float *s, const float *beta,
                            const float *b, const float *t, int t_per_col, uint64_t *out) {
    const __m512 t_all = _mm512_set1_ps(t[0]);
    for (int64_t q = 0; q * 64 < n; q++) {
        uint64_t word = 0;
        int64_t j = q * 64;
        const int64_t end = (n - j) < 64 ? n : j + 64;
        for (; j + 16 <= end; j += 16) {
            const __m512 th = t_per_col ? _mm512_loadu_ps(t + j) : t_all;
            const __mmask16 ge = _mm512_cmp_ps_mask(value16(d, s, beta, b, j), th, _CMP_GE_OQ);
            word |= (uint64_t)ge << (j - q * 64);
        }
        for (; j < end; j++)
            word |= (uint64_t)(value1(d[j], s, beta, b, j) >= t[t_per_col ? j : 0]) << (j - q * 64);
        out[q] = word;
    }
}

static void int_bits_row(const int32_t *d, int64_t n, const int32_t *tint, const uint64_t *flip,
                         uint64_t *out) {
    for (int64_t q = 0; q * 64 < n; q++) {
        uint64_t word = 0;
        int64_t j = q * 64;
        const int64_t end = (n - j) < 64 ? n : j + 64;
        for (; j + 16 <= end; j += 16) {
            const __mmask16 gt = _mm512_cmpgt_epi32_mask(_mm512_loadu_si512((const void *)(d + j)),
                                                         _mm512_loadu_si512((const void *)(tint + j)));
            word |= (uint64_t)gt << (j - q * 64);
        }
        for (; j < end; j++) word |= (uint64_t)(d[j] > tint[j]) << (j - q * 64);
        out[q] = word ^ flip[q]; /* flip has zero padding bits, so the padding stays 0 */
    }
}

/* The epilogue of panels (p, p + 1) of a fused tile: 16 columns from the call's column c. */
static inline __attribute__((always_inline)) void epi_pair(__m512i lo, __m512i hi,
                                                           const int32_t *base, int64_t c,
                                                           const takane_panel_epi *e, int i) {
    /* counts < 2^32 (kw * 64 <= 2^31 + 63): one VPERMT2D gathers the low dword of each
     * 64-bit lane of lo (columns 0-7) and hi (8-15) */
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i pc = _mm512_permutex2var_epi32(lo, even, hi);
    const __m512i d = _mm512_sub_epi32(_mm512_loadu_si512((const void *)(base + c)),
                                       _mm512_add_epi32(pc, pc));
    __m512 v = _mm512_cvtepi32_ps(d);
    if (e->scale) v = _mm512_mul_ps(v, _mm512_loadu_ps(e->scale + c));
    if (e->bias) v = _mm512_add_ps(v, _mm512_loadu_ps(e->bias + c));
    if (e->t) {
        const __m512 th = e->t_per_col ? _mm512_loadu_ps(e->t + c) : _mm512_set1_ps(e->t[0]);
        const uint16_t bits = (uint16_t)_mm512_cmp_ps_mask(v, th, _CMP_GE_OQ);
        __builtin_memcpy(e->yb[i] + c / 8, &bits, 2); /* bytes c/8, c/8+1: little-endian */
    } else {
        _mm512_storeu_ps(e->y[i] + c, v);
    }
}

/* MRC rows x NPC (2 or 4) panels from the call's column c: the panel tile's XOR +
 * popcount loop (isa_avx512.h, shared with matmul_avx512.c), then epi_pair on the
 * accumulators. */
#define EPI_TILE(MRC, NPC)                                                                 \
    static inline __attribute__((always_inline)) void epi_##MRC##x##NPC(                    \
        const uint64_t *const *x, const uint64_t *panels, int64_t pstride, int64_t kw,      \
        const takane_panel_epi *e, int64_t c) {                                             \
        __m512i acc[MRC * NPC];                                                             \
        takane_avx512_panel_counts(x, MRC, panels, pstride, NPC, kw, acc);                  \
        /* unrolled: the accumulators stay in registers (a runtime index spills them) */      \
        _Pragma("GCC unroll 4") for (int i = 0; i < MRC; i++)                               \
            _Pragma("GCC unroll 4") for (int p = 0; p < NPC; p += 2)                        \
                epi_pair(acc[i * NPC + p], acc[i * NPC + p + 1], e->base[i],                \
                         c + p * TAKANE_PANEL_ROWS, e, i);                                  \
    }
EPI_TILE(1, 2) EPI_TILE(1, 4)
EPI_TILE(2, 2) EPI_TILE(2, 4)
EPI_TILE(3, 2) EPI_TILE(3, 4)
EPI_TILE(4, 2) EPI_TILE(4, 4)

__attribute__((aligned(64))) static void panel_epi(const uint64_t *const *x, int mr, const uint64_t *panels, int64_t pstride,
                      int np, int64_t kw, const takane_panel_epi *e) {
    int p = 0;
#define STEP(MRC, NPC)                                                                     \
    epi_##MRC##x##NPC(x, panels + p * pstride, pstride, kw, e, (int64_t)p * TAKANE_PANEL_ROWS); \
    p += NPC
#define ROWS(MRC)                                                                          \
    while (p + 4 <= np) { STEP(MRC, 4); }                                                  \
    while (p < np) { STEP(MRC, 2); } /* np is even */
    TAKANE_AVX512_SWITCH_MR(mr, ROWS)
#undef ROWS
#undef STEP
}

const takane_linear_ukernel takane_linear_ukernel_avx512 = {
    pack_row, affine_row, affine_bits_row, int_bits_row, panel_epi, 4,
};
