/*
 * wq8_gemm_avx512.c — the W1A8 prefill GEMM for x86-64 AVX-512 VNNI: Q8_0 activations
 * (M >= a few rows) against ±1 weights expanded once per strip to bytes, a register-tiled
 * VPDPBUSD microkernel reusing them for every activation row (BLIS: the framework,
 * wq8_gemm.c, owns the loops and edges; this file packs one strip and computes one tile).
 *
 * ISA and flags: AVX-512 F+BW+VL+VNNI (the flags of every *_avx512.c file); SIMDe-clean
 *   (only intrinsics SIMDe implements: the TAKANE_AVX512_EMULATION build runs this file).
 * Sign handling without an offset: VPDPBUSD multiplies unsigned bytes by signed bytes. The
 *   weights are the unsigned side, expanded to 2 (bit set) or 0 (bit clear), the signed
 *   activations q the other; starting the int32 accumulator at nq = -sum q of the block,
 *   8 VPDPBUSD (32 columns) leave exactly S = 2 P - Q = sum q * sign(w) — the block sum,
 *   exact (|S| <= 32 * 127), no correction term.
 * Packed strip (pack): NR = 48 output columns (6 panels) x all K. For every 4 columns of K
 *   (a "k-step") three 64-byte vectors, columns 0-15, 16-31, 32-47 of the strip; byte 4c + t of
 *   a vector is the weight of strip column c at K position 4 step + t (VPDPBUSD's dword
 *   lane c takes 4 consecutive K of one output column). Built per panel word with one
 *   VPERMT2B (byte k/8 of 16 rows, each repeated 4x) and two VPTESTMB + masked moves
 *   (the nibble for k-step 2j and 2j+1): ~3 instructions per 64 weights, paid once per
 *   strip and amortized over all M rows. Then the strip's group scales, NR floats per group
 *   (rows past N: 0, their scales are never read).
 * Tile: MR = 4 rows x NR = 48 columns: 12 int32 accumulators (one block), 12 float group
 *   accumulators, 3 weight vectors (the 12 row totals live in memory: touched once per
 *   group). Per k-step: 3 weight loads, 4 activation dword broadcasts, 12 VPDPBUSD (64 MACs
 *   each): 0.58 loads per VPDPBUSD (a 32-column tile: 0.75, measured 3-5% slower). Per
 *   32-column block and accumulator: 8 VPDPBUSD, then VCVTDQ2PS + VFMADD231PS (d * S into
 *   the group's sum); per group one more VFMADD231PS (g * group sum into the total). The
 *   exact block sum has to leave the integer domain once per block (each block has its own
 *   d), so ~1/4 of an extra op per VPDPBUSD is the price of exact Q8_0 semantics: ~78% of
 *   the VPDPBUSD rate is the ceiling of this structure (a 6-row tile folding g into d per
 *   block, fl(d * g) * S, costs 3/8: measured no faster).
 * Float rounding: one FMA per block into the group sum, one FMA per group into the total
 *   (the framework's bound, wq8.c: at most two roundings per product, one per add).
 * Invariants: q rows hold kw * 64 values (zero past k), d is 0 for padding blocks;
 *   panels are 64-byte aligned, rows past N zero bits; packed is 64-byte aligned.
 */
#include "../isa_avx512.h"

#include <string.h>

#include "../kernel.h"

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
    /* idx[j]: byte 4c + t = byte j of strip row c within the 128 bytes of two panel words */
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
    const __m512i two = _mm512_set1_epi8(2), zero = _mm512_setzero_si512();
    for (int64_t q = 0; q < kw; q++) {
        uint8_t *oq = out + q * 16 * STEP_BYTES;
        for (int v = 0; v < NV; v++) {
            const __m512i a = 2 * v < np
                ? _mm512_load_si512((const void *)(pan + (2 * v) * pstride + q * TAKANE_PANEL_ROWS))
                : zero;
            const __m512i b = 2 * v + 1 < np
                ? _mm512_load_si512((const void *)(pan + (2 * v + 1) * pstride + q * TAKANE_PANEL_ROWS))
                : zero;
            for (int j = 0; j < 8; j++) {
                const __m512i p = _mm512_permutex2var_epi8(a, idx[j], b);
                for (int h = 0; h < 2; h++)
                    _mm512_store_si512((void *)(oq + (2 * j + h) * STEP_BYTES + v * 64),
                                       _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(p, tm[h]), two));
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
    static void tile_##ROWS##_##GS(const int8_t *const *q, const float *const *d,          \
                                   const int32_t *const *nq, const uint8_t *pw,            \
                                   const float *gp, int64_t kw, int64_t gw, float *out,    \
                                   int64_t ldo) {                                          \
        __m512 tot[ROWS][NV];                                                              \
        for (int i = 0; i < ROWS; i++)                                                     \
            for (int v = 0; v < NV; v++) tot[i][v] = _mm512_setzero_ps();                  \
        const int64_t nb = 2 * kw, bpg = GS ? 2 * gw : nb;                                 \
        for (int64_t b0 = 0, g = 0; b0 < nb; b0 += bpg, g++) {                             \
            const int64_t b1 = b0 + bpg < nb ? b0 + bpg : nb;                              \
            /* the group's sum of d * S (one FMA per block), scaled by g once per group */ \
            __m512 grp[ROWS][NV];                                                          \
            for (int i = 0; i < ROWS; i++)                                                 \
                for (int v = 0; v < NV; v++) grp[i][v] = _mm512_setzero_ps();              \
            for (int64_t b = b0; b < b1; b++) {                                            \
                __m512i acc[ROWS][NV];                                                     \
                for (int i = 0; i < ROWS; i++) {                                           \
                    const __m512i n = _mm512_set1_epi32(nq[i][b]);                         \
                    for (int v = 0; v < NV; v++) acc[i][v] = n;                            \
                }                                                                          \
                const uint8_t *wb = pw + b * 8 * STEP_BYTES;                               \
                for (int s = 0; s < 8; s++) {                                              \
                    __m512i wv[NV];                                                        \
                    for (int v = 0; v < NV; v++)                                           \
                        wv[v] = _mm512_load_si512((const void *)(wb + s * STEP_BYTES + 64 * v)); \
                    for (int i = 0; i < ROWS; i++) {                                       \
                        int32_t a4;                                                        \
                        memcpy(&a4, q[i] + b * 32 + 4 * s, 4);                             \
                        const __m512i av = _mm512_set1_epi32(a4);                          \
                        for (int v = 0; v < NV; v++)                                       \
                            acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], wv[v], av);         \
                    }                                                                      \
                }                                                                          \
                for (int i = 0; i < ROWS; i++) {                                           \
                    const __m512 dv = _mm512_set1_ps(d[i][b]);                             \
                    for (int v = 0; v < NV; v++)                                           \
                        grp[i][v] = _mm512_fmadd_ps(dv, _mm512_cvtepi32_ps(acc[i][v]),     \
                                                    grp[i][v]);                            \
                }                                                                          \
            }                                                                              \
            for (int v = 0; v < NV; v++) {                                                 \
                const __m512 gv = GS ? _mm512_loadu_ps(gp + g * NR + 16 * v) : _mm512_setzero_ps(); \
                for (int i = 0; i < ROWS; i++)                                             \
                    tot[i][v] = GS ? _mm512_fmadd_ps(gv, grp[i][v], tot[i][v]) : grp[i][v]; \
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

static void tile(const int8_t *const *q, const float *const *d, const int32_t *const *nq, int mr,
                 const void *packed, int64_t kw, int64_t gw, int has_gs, float *out, int64_t ldo) {
    typedef void (*tile_fn)(const int8_t *const *, const float *const *, const int32_t *const *,
                            const uint8_t *, const float *, int64_t, int64_t, float *, int64_t);
    static const tile_fn tiles[2][MR] = {{tile_1_0, tile_2_0, tile_3_0, tile_4_0},
                                         {tile_1_1, tile_2_1, tile_3_1, tile_4_1}};
    const uint8_t *pw = (const uint8_t *)packed;
    tiles[has_gs != 0][mr - 1](q, d, nq, pw, (const float *)(pw + kw * 16 * STEP_BYTES), kw, gw,
                               out, ldo);
}

/* Smallest M for the GEMM, measured on Zen 4 (4096x4096, G = 128, 1 thread, CPU time):
 * the panel kernels win at M = 8 (1.16x) and 12 (1.05x), the GEMM from M = 16 (1.04x at
 * 16, 1.14-1.16x at 64..512). */
const takane_q8_gemm_ukernel takane_q8_gemm_ukernel_avx512 = {MR, NR, pack_len, pack, tile, 16,
                                                              NULL};

/* The int8 peak: 16 independent VPDPBUSD chains (latency 4-5 cycles x up to 2 per cycle
 * needs >= 10) on register operands; 64 MACs each. */
uint64_t takane_q8_probe_int8_avx512(uint64_t iters, int32_t *sink) {
    enum { CHAINS = 16 };
    __m512i acc[CHAINS];
    for (int r = 0; r < CHAINS; r++) acc[r] = _mm512_set1_epi32(r);
    __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(3);
    for (uint64_t it = 0; it < iters; it++) {
#ifndef TAKANE_AVX512_EMULATION
        __asm__ volatile("" : "+v"(a), "+v"(b)); /* not loop-invariant for the compiler */
#endif
        for (int r = 0; r < CHAINS; r++) acc[r] = _mm512_dpbusd_epi32(acc[r], a, b);
    }
    __m512i s = acc[0];
    for (int r = 1; r < CHAINS; r++) s = _mm512_add_epi32(s, acc[r]);
    int32_t lane[16];
    _mm512_storeu_si512(lane, s);
    *sink += lane[0] + lane[15];
    return iters * CHAINS * 64;
}
