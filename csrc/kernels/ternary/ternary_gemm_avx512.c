/*
 * ternary_gemm_avx512.c — the ternary prefill GEMM for x86-64 AVX-512 VNNI (issue 23):
 * int8_row activations (M >= min_m rows) against ternary weights expanded once per strip to
 * bytes, a register-tiled VPDPBUSD microkernel reusing them for every activation row (BLIS,
 * like wq8_gemm_avx512.c; the framework in csrc/src/ternary.c owns the loops and edges).
 *
 * ISA and flags: AVX-512 F+BW+VL+VNNI (the flags of every *_avx512.c file); SIMDe-clean
 *   (the intrinsics wq8_gemm_avx512.c already uses, which the emulation build has).
 * Exact sums: VPDPBUSD multiplies unsigned by signed bytes. A weight t in {-1, 0, +1} is
 *   packed as the unsigned byte u = t + 1 in {0, 1, 2} and the signed activation q on the
 *   other side; the int32 accumulator starts at nq = -sum q over the group, so after the
 *   group it holds sum (t + 1) q - sum q = sum t q exactly. No int32 overflow: the
 *   framework calls this only when a group (or all of K without groups) spans at most
 *   TAKANE_TERNARY_CHUNK_BLOCKS 32-column blocks (2^21 columns), where every partial sum of
 *   (t + 1) q is <= 2 * 127 * 2^21 < 2^31 in magnitude (VPDPBUSD adds 4 products of at most
 *   254 each, no intermediate saturation) and |nq| <= 127 * 2^21.
 * Float: bit-identical to the panel path of this ISA (ternary_avx512.c, dot_i8_groups):
 *   without group scales out = float(S); with them, in group order from 0,
 *   out = fma(float(S_g), g, out) — the same one rounding per group, the same order.
 * Packed strip (pack): NR = 48 output columns (6 panels) x all K. For every 4 columns of K
 *   (a "k-step") three 64-byte vectors, columns 0-15, 16-31, 32-47 of the strip; byte 4c + t
 *   of a vector is u of strip column c at K position 4 step + t (VPDPBUSD's dword lane c
 *   takes 4 consecutive K of one output column). Built per panel word with two VPERMT2B
 *   (plus and minus plane: byte k/8 of 16 rows, each repeated 4x) and, per nibble, two
 *   VPTESTMB + two masked moves: ~3.5 instructions per 64 weights, paid once per strip and
 *   row block, amortized over up to 96 activation rows. Then the strip's group scales, NR
 *   floats per group (rows past nrows: 0, their scales never read).
 * Tile: MR = 4 rows x NR = 48 columns: 12 int32 accumulators, 12 float totals, 3 weight
 *   vectors and one broadcast (28 of 32 registers). Per k-step: 3 weight loads, 4 dword
 *   broadcasts, 12 VPDPBUSD (64 MACs each): 0.58 loads per VPDPBUSD. Per group and
 *   accumulator one VCVTDQ2PS + VFMADD231PS, and one VPBROADCASTD of nq per row.
 * Invariants: q rows hold kw * 64 values (zero past k, 64-byte aligned rows); panels are
 *   64-byte aligned, rows past N all-zero planes (u = 1, t = 0); packed is 64-byte aligned.
 */
#include "../isa_avx512.h"

#include <string.h>

#include "ternary_kernel.h"

#define MR 4
#define NR 48
#define NV (NR / 16)         /* 16-column vectors per strip */
#define STEP_BYTES (NV * 64) /* packed bytes per k-step (4 columns of K) */

static int64_t pack_len(int64_t kw, int64_t ngroups) {
    return kw * 16 * STEP_BYTES + ngroups * NR * (int64_t)sizeof(float);
}

static int pack(const uint64_t *pan, int64_t pstride, int np, int64_t kw, int64_t gw,
                const takane_gscales *gs, int64_t nrows, void *packed) {
    uint8_t *out = (uint8_t *)packed;
    /* idx[j]: byte 4c + t = byte j of strip row c within the 128 bytes of two panels' words */
    __m512i idx[8];
    for (int j = 0; j < 8; j++) {
        uint8_t v[64];
        for (int c = 0; c < 16; c++)
            for (int t = 0; t < 4; t++) v[4 * c + t] = (uint8_t)(8 * c + j);
        idx[j] = _mm512_loadu_si512(v);
    }
    /* tm[h]: byte 4c + t = bit 4h + t (the low / high nibble of the byte) */
    __m512i tm[2];
    for (int h = 0; h < 2; h++) {
        uint8_t v[64];
        for (int b = 0; b < 64; b++) v[b] = (uint8_t)(1u << (4 * h + b % 4));
        tm[h] = _mm512_loadu_si512(v);
    }
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi8(1),
                  two = _mm512_set1_epi8(2);
    const int64_t wstride = 2 * TAKANE_PANEL_ROWS; /* words per panel word-group */
    for (int64_t q = 0; q < kw; q++) {
        uint8_t *oq = out + q * 16 * STEP_BYTES;
        for (int v = 0; v < NV; v++) {
            /* the 8 plus words (t = +1) then the 8 minus words (t = -1) of each panel */
            const uint64_t *pa = pan + (2 * v) * pstride + q * wstride;
            const uint64_t *pb = pan + (2 * v + 1) * pstride + q * wstride;
            const int ha = 2 * v < np, hb = 2 * v + 1 < np;
            const __m512i ap = ha ? _mm512_load_si512((const void *)pa) : zero;
            const __m512i am = ha ? _mm512_load_si512((const void *)(pa + TAKANE_PANEL_ROWS)) : zero;
            const __m512i bp = hb ? _mm512_load_si512((const void *)pb) : zero;
            const __m512i bm = hb ? _mm512_load_si512((const void *)(pb + TAKANE_PANEL_ROWS)) : zero;
            for (int j = 0; j < 8; j++) {
                const __m512i p = _mm512_permutex2var_epi8(ap, idx[j], bp);
                const __m512i m = _mm512_permutex2var_epi8(am, idx[j], bm);
                for (int h = 0; h < 2; h++) {
                    /* u = 2 where plus, 0 where minus (never both), else 1 */
                    __m512i u = _mm512_mask_mov_epi8(one, _mm512_test_epi8_mask(p, tm[h]), two);
                    u = _mm512_mask_mov_epi8(u, _mm512_test_epi8_mask(m, tm[h]), zero);
                    _mm512_store_si512((void *)(oq + (2 * j + h) * STEP_BYTES + v * 64), u);
                }
            }
        }
    }
    if (!gs) return 0;
    float *gp = (float *)(out + kw * 16 * STEP_BYTES);
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

#define DEFINE_TILE(ROWS, GS)                                                              \
    static void tile_##ROWS##_##GS(const int8_t *const *q, const int32_t *const *nq,       \
                                   const uint8_t *pw, const float *gp, int64_t kw,         \
                                   int64_t gw, float *out, int64_t ldo) {                  \
        __m512 tot[ROWS][NV];                                                              \
        for (int i = 0; i < ROWS; i++)                                                     \
            for (int v = 0; v < NV; v++) tot[i][v] = _mm512_setzero_ps();                  \
        const int64_t ns = 16 * kw, spg = GS ? 16 * gw : ns; /* k-steps: all, per group */ \
        for (int64_t s0 = 0, g = 0; s0 < ns; s0 += spg, g++) {                             \
            const int64_t s1 = s0 + spg < ns ? s0 + spg : ns;                              \
            __m512i acc[ROWS][NV];                                                         \
            for (int i = 0; i < ROWS; i++) {                                               \
                const __m512i n = _mm512_set1_epi32(nq[i][g]);                             \
                for (int v = 0; v < NV; v++) acc[i][v] = n;                                \
            }                                                                              \
            for (int64_t s = s0; s < s1; s++) {                                            \
                __m512i wv[NV];                                                            \
                for (int v = 0; v < NV; v++)                                               \
                    wv[v] = _mm512_load_si512((const void *)(pw + s * STEP_BYTES + 64 * v)); \
                for (int i = 0; i < ROWS; i++) {                                           \
                    int32_t a4;                                                            \
                    memcpy(&a4, q[i] + 4 * s, 4);                                          \
                    const __m512i av = _mm512_set1_epi32(a4);                              \
                    for (int v = 0; v < NV; v++)                                           \
                        acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], wv[v], av);             \
                }                                                                          \
            }                                                                              \
            for (int v = 0; v < NV; v++) {                                                 \
                const __m512 gv = GS ? _mm512_loadu_ps(gp + g * NR + 16 * v) : _mm512_setzero_ps(); \
                for (int i = 0; i < ROWS; i++) {                                           \
                    const __m512 sf = _mm512_cvtepi32_ps(acc[i][v]);                       \
                    tot[i][v] = GS ? _mm512_fmadd_ps(sf, gv, tot[i][v]) : sf;              \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        for (int i = 0; i < ROWS; i++)                                                     \
            for (int v = 0; v < NV; v++) _mm512_storeu_ps(out + i * ldo + 16 * v, tot[i][v]); \
    }
DEFINE_TILE(1, 0)
DEFINE_TILE(2, 0)
DEFINE_TILE(3, 0)
DEFINE_TILE(4, 0)
DEFINE_TILE(1, 1)
DEFINE_TILE(2, 1)
DEFINE_TILE(3, 1)
DEFINE_TILE(4, 1)

static void tile(const int8_t *const *q, const int32_t *const *nq, int mr, const void *packed,
                 int64_t kw, int64_t gw, int has_gs, float *out, int64_t ldo) {
    typedef void (*tile_fn)(const int8_t *const *, const int32_t *const *, const uint8_t *,
                            const float *, int64_t, int64_t, float *, int64_t);
    static const tile_fn tiles[2][MR] = {{tile_1_0, tile_2_0, tile_3_0, tile_4_0},
                                         {tile_1_1, tile_2_1, tile_3_1, tile_4_1}};
    const uint8_t *pw = (const uint8_t *)packed;
    tiles[has_gs != 0][mr - 1](q, nq, pw, (const float *)(pw + kw * 16 * STEP_BYTES), kw, gw,
                               out, ldo);
}

/* Smallest M for the GEMM, measured on Zen 4 (2560x2560 and 6912x2560, with and without
 * groups of 256, 1 thread, CPU time, GEMM forced from M = 2 vs the panel kernels): M = 4
 * 0.95-1.15x (a tie), M = 8 1.26-1.46x, M = 12..24 1.4-1.9x. */
const takane_ternary_gemm_ukernel takane_ternary_gemm_ukernel_avx512 = {MR, NR, 8, pack_len, pack,
                                                                        tile};
