/*
 * wq8_gemm_neon.c — the W1A8 prefill GEMM for aarch64 with the dot-product extension:
 * Q8_0 activations against ±1 weights expanded once per strip to signed bytes, a
 * register-tiled SDOT microkernel reusing them for every activation row (the framework is
 * wq8_gemm.c, as for x86).
 *
 * ISA and flags: armv8-a baseline file; the kernel functions are compiled for
 *   armv8.2-a+dotprod through a target attribute and only run when the CPU reports SDOT
 *   (usable(): takane_wq8_neon_dotprod(), which env TAKANE_NEON_DOTPROD=0 also turns off;
 *   without it the framework keeps the panel kernels for every M).
 * Sign handling: SDOT multiplies signed bytes by signed bytes, so the weights are expanded
 *   to +1 / -1 and 8 SDOT (32 columns) give the exact block sum S = sum q * sign(w)
 *   directly (|S| <= 32 * 128), no nq term.
 * Packed strip (pack): NR = 8 output columns (one panel) x all K. For every 4 columns of K
 *   (a k-step) 32 bytes: byte 4c + t = the sign of strip column c at K position 4 step + t
 *   (SDOT's int32 lane c of the first / second 16 bytes = column c / 4 + c). Built with a
 *   16-entry table (a nibble of 4 weight bits -> 4 bytes), once per strip and row block.
 *   Then the strip's group scales.
 * Tile: MR = 4 rows x NR = 8 columns: 8 int32x4 accumulators (one block), 8 float32x4
 *   group sums, 8 totals, 2 weight vectors and one 16-byte activation load per row and 4
 *   k-steps (SDOT's indexed form picks each 4-byte group: no broadcasts). Per k-step: 2
 *   weight loads and 8 SDOT (16 MACs each). Per block and vector: SCVTF + FMLA (d * S into
 *   the group's sum); per group one more FMLA (g times the group's sum into the total).
 * Float rounding: one FMA per block into the group sum, one FMA per group into the total
 *   (the framework's bound, wq8.c).
 * Invariants: q rows hold kw * 64 values (zero past k), d is 0 for padding blocks; packed
 *   is 64-byte aligned.
 */
#include <arm_neon.h>
#include <string.h>

#include "../kernel.h"

#define MR 4
#define NR 8
#define STEP_BYTES 32 /* packed bytes per k-step (4 columns of K x 8 output columns) */

static int64_t pack_len(int64_t kw, int64_t ngroups) {
    return kw * 16 * STEP_BYTES + ngroups * NR * (int64_t)sizeof(float);
}

static int pack(const uint64_t *pan, int64_t pstride, int np, int64_t kw, int64_t gw,
                const takane_gscales *gs, int64_t nrows, void *packed) {
    (void)pstride, (void)np; /* one panel per strip (np == 1) */
    uint32_t nib[16];        /* byte t = +1 if bit t of e is set, else -1 */
    for (int e = 0; e < 16; e++) {
        uint32_t v = 0;
        for (int t = 0; t < 4; t++) v |= (uint32_t)(e >> t & 1 ? 0x01 : 0xFF) << (8 * t);
        nib[e] = v;
    }
    uint32_t *out = (uint32_t *)packed;
    for (int64_t q = 0; q < kw; q++)
        for (int c = 0; c < NR; c++) {
            const uint64_t word = pan[q * TAKANE_PANEL_ROWS + c];
            uint32_t *o = out + q * 16 * NR + c;
            for (int s = 0; s < 16; s++) o[s * NR] = nib[(word >> (4 * s)) & 15];
        }
    if (!gs) return 0;
    float *gp = (float *)((uint8_t *)packed + kw * 16 * STEP_BYTES);
    const int64_t ng = (kw + gw - 1) / gw;
    int bad = 0;
    for (int64_t g = 0; g < ng; g++)
        for (int j = 0; j < NR; j++) {
            const float v = j < nrows ? takane_gs_at(gs, j, g) : 0.0f;
            bad |= !(v - v == 0.0f); /* NaN or infinite */
            gp[g * NR + j] = v;
        }
    return bad;
}

#define DOT_ATTR __attribute__((target("arch=armv8.2-a+dotprod")))

#define DEFINE_TILE(ROWS, GS)                                                              \
    DOT_ATTR static void tile_##ROWS##_##GS(const int8_t *const *q, const float *const *d, \
                                            const uint8_t *pw, const float *gp, int64_t kw, \
                                            int64_t gw, float *out, int64_t ldo) {         \
        float32x4_t tot[ROWS][2];                                                          \
        for (int i = 0; i < ROWS; i++) tot[i][0] = tot[i][1] = vdupq_n_f32(0.0f);          \
        const int64_t nb = 2 * kw, bpg = GS ? 2 * gw : nb;                                 \
        for (int64_t b0 = 0, g = 0; b0 < nb; b0 += bpg, g++) {                             \
            const int64_t b1 = b0 + bpg < nb ? b0 + bpg : nb;                              \
            float32x4_t grp[ROWS][2];                                                      \
            for (int i = 0; i < ROWS; i++) grp[i][0] = grp[i][1] = vdupq_n_f32(0.0f);      \
            for (int64_t b = b0; b < b1; b++) {                                            \
                int32x4_t acc[ROWS][2];                                                    \
                for (int i = 0; i < ROWS; i++) acc[i][0] = acc[i][1] = vdupq_n_s32(0);     \
                const int8_t *wb = (const int8_t *)(pw + b * 8 * STEP_BYTES);              \
                for (int s4 = 0; s4 < 2; s4++) { /* 4 k-steps per activation load */       \
                    int8x16_t a[ROWS];                                                     \
                    for (int i = 0; i < ROWS; i++) a[i] = vld1q_s8(q[i] + b * 32 + 16 * s4); \
                    const int8_t *ws = wb + s4 * 4 * STEP_BYTES;                           \
                    _Pragma("GCC unroll 4") for (int s = 0; s < 4; s++) {                  \
                        const int8x16_t w0 = vld1q_s8(ws + s * STEP_BYTES);                \
                        const int8x16_t w1 = vld1q_s8(ws + s * STEP_BYTES + 16);           \
                        for (int i = 0; i < ROWS; i++) {                                   \
                            switch (s) { /* the lane index must be a constant */           \
                            case 0:                                                        \
                                acc[i][0] = vdotq_laneq_s32(acc[i][0], w0, a[i], 0);       \
                                acc[i][1] = vdotq_laneq_s32(acc[i][1], w1, a[i], 0);       \
                                break;                                                     \
                            case 1:                                                        \
                                acc[i][0] = vdotq_laneq_s32(acc[i][0], w0, a[i], 1);       \
                                acc[i][1] = vdotq_laneq_s32(acc[i][1], w1, a[i], 1);       \
                                break;                                                     \
                            case 2:                                                        \
                                acc[i][0] = vdotq_laneq_s32(acc[i][0], w0, a[i], 2);       \
                                acc[i][1] = vdotq_laneq_s32(acc[i][1], w1, a[i], 2);       \
                                break;                                                     \
                            default:                                                       \
                                acc[i][0] = vdotq_laneq_s32(acc[i][0], w0, a[i], 3);       \
                                acc[i][1] = vdotq_laneq_s32(acc[i][1], w1, a[i], 3);       \
                                break;                                                     \
                            }                                                              \
                        }                                                                  \
                    }                                                                      \
                }                                                                          \
                for (int i = 0; i < ROWS; i++) {                                           \
                    const float32x4_t dv = vdupq_n_f32(d[i][b]);                           \
                    grp[i][0] = vfmaq_f32(grp[i][0], dv, vcvtq_f32_s32(acc[i][0]));        \
                    grp[i][1] = vfmaq_f32(grp[i][1], dv, vcvtq_f32_s32(acc[i][1]));        \
                }                                                                          \
            }                                                                              \
            if (GS) {                                                                      \
                const float32x4_t g0v = vld1q_f32(gp + g * NR), g1v = vld1q_f32(gp + g * NR + 4); \
                for (int i = 0; i < ROWS; i++) {                                           \
                    tot[i][0] = vfmaq_f32(tot[i][0], g0v, grp[i][0]);                      \
                    tot[i][1] = vfmaq_f32(tot[i][1], g1v, grp[i][1]);                      \
                }                                                                          \
            } else {                                                                       \
                for (int i = 0; i < ROWS; i++) tot[i][0] = grp[i][0], tot[i][1] = grp[i][1]; \
            }                                                                              \
        }                                                                                  \
        for (int i = 0; i < ROWS; i++) {                                                   \
            vst1q_f32(out + i * ldo, tot[i][0]);                                           \
            vst1q_f32(out + i * ldo + 4, tot[i][1]);                                       \
        }                                                                                  \
    }
DEFINE_TILE(1, 0)
DEFINE_TILE(2, 0)
DEFINE_TILE(3, 0)
DEFINE_TILE(4, 0)
DEFINE_TILE(1, 1)
DEFINE_TILE(2, 1)
DEFINE_TILE(3, 1)
DEFINE_TILE(4, 1)

static void tile(const int8_t *const *q, const float *const *d, const int32_t *const *nq, int mr,
                 const void *packed, int64_t kw, int64_t gw, int has_gs, float *out, int64_t ldo) {
    (void)nq; /* the ±1 weights give S directly */
    typedef void (*tile_fn)(const int8_t *const *, const float *const *, const uint8_t *,
                            const float *, int64_t, int64_t, float *, int64_t);
    static const tile_fn tiles[2][MR] = {{tile_1_0, tile_2_0, tile_3_0, tile_4_0},
                                         {tile_1_1, tile_2_1, tile_3_1, tile_4_1}};
    const uint8_t *pw = (const uint8_t *)packed;
    tiles[has_gs != 0][mr - 1](q, d, pw, (const float *)(pw + kw * 16 * STEP_BYTES), kw, gw, out,
                               ldo);
}

/* Smallest M for the GEMM: a guess (not measured on aarch64 hardware): the SDOT panel
 * kernel does 4 SDOT per 64 weights and row plus mask building, this one 4 SDOT per 64
 * weights and row with the masks built once per strip. */
const takane_q8_gemm_ukernel takane_q8_gemm_ukernel_neon = {MR, NR, pack_len, pack, tile, 8,
                                                            takane_wq8_neon_dotprod};
