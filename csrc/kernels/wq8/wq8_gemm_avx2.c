/*
 * wq8_gemm_avx2.c — the W1A8 prefill GEMM for x86-64 AVX2: Q8_0 activations against ±1
 * weights expanded once per strip to bytes, a register-tiled VPMADDUBSW microkernel reusing
 * them for every activation row (the framework is wq8_gemm.c, as for AVX-512).
 *
 * ISA and flags: AVX2 + FMA (the flags of every *_avx2.c file).
 * Sign handling: VPMADDUBSW multiplies unsigned bytes by signed bytes and adds adjacent
 *   pairs into int16 (saturating). The weights are the unsigned side, expanded to 2 (bit
 *   set) or 0, the activations q (|q| <= 127) the signed side: a pair is at most
 *   2 * 2 * 127 = 508, never saturated, and the 8 k-steps of a 32-column block add up in
 *   int16 to at most 8 * 508 = 4064 (exact). One VPMADDWD by 1 per block folds the int16
 *   pairs into the int32 lane of its column: 2 P; adding nq = -sum q gives the exact block
 *   sum S = 2 P - Q.
 * Packed strip (pack): NR = 8 output columns (one panel) x all K. For every 4 columns of K
 *   (a k-step) one 32-byte vector: byte 4c + t = weight of strip column c at K position
 *   4 step + t (so VPMADDWD's dword lane c holds column c). Built with a 16-entry table
 *   (a nibble of 4 weight bits -> 4 bytes), ~4 scalar instructions per 4 weights, paid once
 *   per strip and row block, amortized over all its rows. Then the strip's group scales.
 * Tile: MR = 4 rows x NR = 8 columns: 4 int16 accumulators (one block), 4 float group
 *   accumulators, the weight vector and a broadcast (11 of 16 ymm). Per k-step: 1 weight
 *   load, 4 activation dword broadcasts, 4 VPMADDUBSW + 4 VPADDW (32 MACs each). Per block
 *   and row: VPMADDWD, VPADDD (nq), VCVTDQ2PS, VFMADD231PS; per group one VFMADD231PS (g).
 * Float rounding: one FMA per block into the group sum, one FMA per group into the total
 *   (the framework's bound, wq8.c).
 * Invariants: q rows hold kw * 64 values (zero past k), |q| <= 127, d is 0 for padding
 *   blocks; panels are 64-byte aligned, rows past N zero bits; packed is 64-byte aligned.
 */
#include <immintrin.h>
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
    uint32_t nib[16];        /* byte t = 2 if bit t of e is set */
    for (int e = 0; e < 16; e++) {
        uint32_t v = 0;
        for (int t = 0; t < 4; t++)
            if (e >> t & 1) v |= UINT32_C(2) << (8 * t);
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

#define DEFINE_TILE(ROWS, GS)                                                              \
    static void tile_##ROWS##_##GS(const int8_t *const *q, const float *const *d,          \
                                   const int32_t *const *nq, const uint8_t *pw,            \
                                   const float *gp, int64_t kw, int64_t gw, float *out,    \
                                   int64_t ldo) {                                          \
        const __m256i ones = _mm256_set1_epi16(1);                                         \
        __m256 tot[ROWS];                                                                  \
        for (int i = 0; i < ROWS; i++) tot[i] = _mm256_setzero_ps();                       \
        const int64_t nb = 2 * kw, bpg = GS ? 2 * gw : nb;                                 \
        for (int64_t b0 = 0, g = 0; b0 < nb; b0 += bpg, g++) {                             \
            const int64_t b1 = b0 + bpg < nb ? b0 + bpg : nb;                              \
            __m256 grp[ROWS];                                                              \
            for (int i = 0; i < ROWS; i++) grp[i] = _mm256_setzero_ps();                   \
            for (int64_t b = b0; b < b1; b++) {                                            \
                __m256i acc[ROWS];                                                         \
                for (int i = 0; i < ROWS; i++) acc[i] = _mm256_setzero_si256();            \
                const uint8_t *wb = pw + b * 8 * STEP_BYTES;                               \
                for (int s = 0; s < 8; s++) {                                              \
                    const __m256i w = _mm256_load_si256((const __m256i *)(wb + s * STEP_BYTES)); \
                    for (int i = 0; i < ROWS; i++) {                                       \
                        int32_t a4;                                                        \
                        memcpy(&a4, q[i] + b * 32 + 4 * s, 4);                             \
                        acc[i] = _mm256_add_epi16(                                         \
                            acc[i], _mm256_maddubs_epi16(w, _mm256_set1_epi32(a4)));       \
                    }                                                                      \
                }                                                                          \
                for (int i = 0; i < ROWS; i++) {                                           \
                    const __m256i s32 = _mm256_add_epi32(_mm256_madd_epi16(acc[i], ones),  \
                                                         _mm256_set1_epi32(nq[i][b]));     \
                    grp[i] = _mm256_fmadd_ps(_mm256_set1_ps(d[i][b]), _mm256_cvtepi32_ps(s32), \
                                             grp[i]);                                      \
                }                                                                          \
            }                                                                              \
            if (GS) {                                                                      \
                const __m256 gv = _mm256_loadu_ps(gp + g * NR);                            \
                for (int i = 0; i < ROWS; i++) tot[i] = _mm256_fmadd_ps(gv, grp[i], tot[i]); \
            } else {                                                                       \
                for (int i = 0; i < ROWS; i++) tot[i] = grp[i];                            \
            }                                                                              \
        }                                                                                  \
        for (int i = 0; i < ROWS; i++) _mm256_storeu_ps(out + i * ldo, tot[i]);            \
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

/* Smallest M for the GEMM: on AVX2 the panel kernel (8 bit planes x popcounts) is far
 * slower per MAC than VPMADDUBSW, so the GEMM pays off early (set from a measurement on
 * the avx2 kernels of a Zen 4: see wq8.c). */
const takane_q8_gemm_ukernel takane_q8_gemm_ukernel_avx2 = {MR, NR, pack_len, pack, tile, 4, NULL};

/* The int8 peak of this GEMM's instruction pair: 12 independent VPMADDUBSW + VPADDW
 * chains on register operands; 32 MACs per VPMADDUBSW. */
uint64_t takane_q8_probe_int8_avx2(uint64_t iters, int32_t *sink) {
    enum { CHAINS = 12 };
    __m256i acc[CHAINS];
    for (int r = 0; r < CHAINS; r++) acc[r] = _mm256_set1_epi16((short)r);
    __m256i a = _mm256_set1_epi8(1), b = _mm256_set1_epi8(3);
    for (uint64_t it = 0; it < iters; it++) {
        __asm__ volatile("" : "+x"(a), "+x"(b)); /* not loop-invariant for the compiler */
        for (int r = 0; r < CHAINS; r++) acc[r] = _mm256_add_epi16(acc[r], _mm256_maddubs_epi16(a, b));
    }
    __m256i s = acc[0];
    for (int r = 1; r < CHAINS; r++) s = _mm256_add_epi16(s, acc[r]);
    int16_t lane[16];
    _mm256_storeu_si256((__m256i *)lane, s);
    *sink += lane[0] + lane[15];
    return iters * CHAINS * 32;
}
