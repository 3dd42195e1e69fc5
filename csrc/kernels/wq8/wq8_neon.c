/*
 * wq8_neon.c — W1A8 microkernels for aarch64 Advanced SIMD: Q8_0 activations against packed
 * ±1 weights, exact int8 block sums; SDOT (the dot-product extension) where the CPU has it,
 * detected at run time (getauxval HWCAP_ASIMDDP), plain NEON otherwise.
 *
 * ISA and flags: armv8-a baseline (NEON). The SDOT variant is compiled for +dotprod
 *   through a target attribute/pragma (no -march flag for the file) and only called when
 *   the CPU reports the extension.
 * Idea: weight bits as byte masks. TBL replicates each weight byte over 8 lanes and CMTST
 *   against {1, 2, 4, ..., 128} turns the 16 bits of 16 columns into 16 bytes 0xFF / 0x00.
 *   Against the 16 activations q: SDOT(q, mask) = -sum_{bit set} q = -P in 4 int32 lanes
 *   (4 SDOT per 64 columns), or without SDOT, AND + SADDLP (pairwise widening add) into
 *   int16. Per 32-column block, one across-vector add gives P and S = 2 P + nq exactly.
 * Tile: MR=1 activation row x NP=1 panel (8 weight rows, one row at a time).
 * Float: per block acc = fl(acc + fl(d * S)) in the group, then times the group scale.
 * Invariants: q holds kw*64 values (zero past k); panel rows past N are zero bits.
 */
#include <arm_neon.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#include "../kernel.h"

#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif

#define MR 1
#define NP 1

static int64_t table_len(int64_t kw) { return kw * 64; }

/* The "table" is q itself: the masks are built from the weights. */
static void build_table(const int8_t *q, int64_t kw, void *table) {
    memcpy(table, q, (size_t)(kw * 64));
}

/* Byte masks of columns 16h..16h+15 of a word held in wt (the word's 8 bytes, twice). */
static inline int8x16_t column_mask(uint8x16_t wt, int h) {
    static const uint8_t sel[4][16] = {
        {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
        {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
        {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},
        {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7}};
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t rep = vqtbl1q_u8(wt, vld1q_u8(sel[h]));
    return vreinterpretq_s8_u8(vtstq_u8(rep, vld1q_u8(bit)));
}

/* P (sum of q over the set bits) of block b (columns 32b..32b+31) of a word, plain NEON:
 * AND, then widening pairwise adds (|partial sums| <= 32 * 128: int16 is exact). */
static inline int32_t block_sum_plain(uint8x16_t wt, const int8_t *q, int b) {
    const int8x16_t m0 = column_mask(wt, 2 * b), m1 = column_mask(wt, 2 * b + 1);
    const int8x16_t q0 = vld1q_s8(q + 32 * b), q1 = vld1q_s8(q + 32 * b + 16);
    return vaddvq_s16(vaddq_s16(vpaddlq_s8(vandq_s8(q0, m0)), vpaddlq_s8(vandq_s8(q1, m1))));
}

/* The same with SDOT: the masks are -1 where set, so the dot is -P. */
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
static inline int32_t block_sum_dot(uint8x16_t wt, const int8_t *q, int b) {
    const int8x16_t m0 = column_mask(wt, 2 * b), m1 = column_mask(wt, 2 * b + 1);
    const int8x16_t q0 = vld1q_s8(q + 32 * b), q1 = vld1q_s8(q + 32 * b + 16);
    return -vaddvq_s32(vdotq_s32(vdotq_s32(vdupq_n_s32(0), q0, m0), q1, m1));
}
#pragma GCC pop_options

/* One panel for one activation row, with BLOCK_SUM computing P; ATTR: the function's
 * target (the SDOT variant is compiled for +dotprod and only called when detected). */
#define DEFINE_PANELS(NAME, ATTR, BLOCK_SUM)                                               \
    ATTR static int NAME(const int8_t *q, const float *dd, const int32_t *nqq,              \
                         const uint64_t *pan, int64_t kw, int64_t gw,                     \
                         const takane_gscales *gs, int64_t nrows, float *out) {            \
        int bad = 0;                                                                       \
        for (int r = 0; r < TAKANE_PANEL_ROWS; r++) {                                      \
            const int64_t rr = r < nrows ? r : nrows - 1;                                  \
            float total = 0.0f;                                                            \
            for (int64_t g0 = 0, grp = 0; g0 < kw; g0 += gw, grp++) {                      \
                const int64_t g1 = g0 + gw < kw ? g0 + gw : kw;                            \
                float acc = 0.0f;                                                          \
                for (int64_t w = g0; w < g1; w++) {                                        \
                    const uint8x8_t w8 = vcreate_u8(pan[w * TAKANE_PANEL_ROWS + r]);       \
                    const uint8x16_t wt = vcombine_u8(w8, w8);                             \
                    for (int h = 0; h < 2; h++) {                                          \
                        const int32_t p = BLOCK_SUM(wt, q + w * 64, h);                    \
                        acc = acc + dd[2 * w + h] * (float)(2 * p + nqq[2 * w + h]);       \
                    }                                                                      \
                }                                                                          \
                if (gs) { /* else there is one group */                                    \
                    const float g = takane_gs_at(gs, rr, grp);                             \
                    bad |= !(fabsf(g) <= 3.4028234663852886e38f);                          \
                    acc = total + acc * g;                                                 \
                }                                                                          \
                total = acc;                                                               \
            }                                                                              \
            out[r] = total;                                                                \
        }                                                                                  \
        return bad;                                                                        \
    }
DEFINE_PANELS(panel_plain, , block_sum_plain)
DEFINE_PANELS(panel_dot, __attribute__((target("arch=armv8.2-a+dotprod"))), block_sum_dot)

/* SDOT when the CPU has it, unless env TAKANE_NEON_DOTPROD=0 (read once) turns it off: the
 * tests run the plain NEON path on any CPU that way, and takane_isa_kernels() reports
 * which variant runs ("neon+sdot" / "neon"). */
static int have_dotprod(void) {
    static int cached = -1; /* benign race: every thread computes the same value */
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *env = getenv("TAKANE_NEON_DOTPROD");
        v = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0 && !(env && env[0] == '0' && !env[1]);
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

int takane_wq8_neon_dotprod(void) { return have_dotprod(); }

static int panels(const void *const *tables, const float *const *d, const int32_t *const *nq,
                  int mr, const uint64_t *pan, int64_t pstride, int np, int64_t kw, int64_t gw,
                  const takane_gscales *gs, int64_t nrows, float *out) {
    (void)mr, (void)np, (void)pstride; /* MR = NP = 1 */
    const int8_t *q = (const int8_t *)tables[0];
    if (have_dotprod()) return panel_dot(q, d[0], nq[0], pan, kw, gw, gs, nrows, out);
    return panel_plain(q, d[0], nq[0], pan, kw, gw, gs, nrows, out);
}

/* wq8_gemm_neon.c: the prefill GEMM (SDOT CPUs only) */
extern const takane_q8_gemm_ukernel takane_q8_gemm_ukernel_neon;

const takane_q8_ukernel takane_q8_ukernel_neon = {MR,
                                                  NP,
                                                  takane_q8_quantize_row_portable,
                                                  table_len,
                                                  build_table,
                                                  panels,
                                                  NULL,
                                                  &takane_q8_gemm_ukernel_neon};
