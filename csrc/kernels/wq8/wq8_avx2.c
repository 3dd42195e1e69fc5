/*
 * wq8_avx2.c — W1A8 microkernels for x86-64 AVX2: Q8_0 activations against packed ±1
 * weights, exact int8 block sums by bit planes and popcounts.
 *
 * ISA and flags: AVX2 + FMA + POPCNT (the flags of every *_avx2.c file).
 * Idea: in two's complement q = -128 b7 + sum_{p<7} 2^p b_p (b_p the bit planes), so the
 *   set-bit sum of a block is P = sum_p c_p * popcount(plane_p AND w) with c_p = 2^p
 *   (c_7 = -128). The "table" of an activation row is its 8 bit planes, one uint64 per
 *   word and plane (built with VPMOVMSKB). Per plane: VPAND with the broadcast plane,
 *   a nibble-LUT popcount per byte (VPSHUFB, as the W1A1 AVX2 kernel), VPMADDUBSW by c_p
 *   into int16 pairs (|partial sums| <= 16 * 128: exact), VPADDW; after the 8 planes
 *   VPMADDWD by 1 gives P per 32-bit lane, and a lane of the panel layout is exactly one
 *   (row, 32-column block): no reductions. S = 2 P + nq, then VCVTDQ2PS + FMA with d.
 * Tile: MR=1 activation row x NP=1 panel (8 rows: two ymm per word).
 * Float: per block acc = fma(d, S, acc) per (row, block parity); per group the two
 *   parities are added, times the group scale, added to the row's total.
 * Invariants: q holds kw*64 values (zero past k); panel rows past N are zero bits.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../kernel.h"

#define MR 1
#define NP 1

static int64_t table_len(int64_t kw) { return kw * 8 * (int64_t)sizeof(uint64_t); }

/* Plane p of word w at table[w * 8 + p]: bit c = bit p of q[64 w + c]. */
static void build_table(const int8_t *q, int64_t kw, void *table) {
    uint64_t *t = (uint64_t *)table;
    for (int64_t w = 0; w < kw; w++) {
        const __m256i lo = _mm256_loadu_si256((const __m256i *)(q + w * 64));
        const __m256i hi = _mm256_loadu_si256((const __m256i *)(q + w * 64 + 32));
        for (int p = 0; p < 8; p++) {
            /* a 16-bit shift by 7 - p puts bit p of every byte at its bit 7 (bits from the
             * byte below only reach positions < 7 - p) */
            const __m128i s = _mm_cvtsi32_si128(7 - p);
            const uint32_t a = (uint32_t)_mm256_movemask_epi8(_mm256_sll_epi16(lo, s));
            const uint32_t b = (uint32_t)_mm256_movemask_epi8(_mm256_sll_epi16(hi, s));
            t[w * 8 + p] = (uint64_t)a | (uint64_t)b << 32;
        }
    }
}

/* Per-byte popcounts (0..8) of x. */
static inline __m256i popcount_bytes(__m256i x, __m256i lut, __m256i low4) {
    const __m256i lo = _mm256_and_si256(x, low4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

static int panels(const void *const *tables, const float *const *d, const int32_t *const *nq,
                  int mr, const uint64_t *pan, int64_t pstride, int np, int64_t kw, int64_t gw,
                  const takane_gscales *gs, int64_t nrows, float *out) {
    (void)mr, (void)np, (void)pstride; /* MR = NP = 1 */
    const uint64_t *planes = (const uint64_t *)tables[0];
    const float *dd = d[0];
    const int32_t *nqq = nq[0];
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low4 = _mm256_set1_epi8(15), ones16 = _mm256_set1_epi16(1);
    __m256i coef[8];
    for (int p = 0; p < 8; p++) coef[p] = _mm256_set1_epi8((char)(p == 7 ? -128 : 1 << p));
    float total[TAKANE_PANEL_ROWS] = {0};
    int bad = 0;
    for (int64_t g0 = 0, grp = 0; g0 < kw; g0 += gw, grp++) {
        const int64_t g1 = g0 + gw < kw ? g0 + gw : kw;
        __m256 acc_a = _mm256_setzero_ps(), acc_b = _mm256_setzero_ps(); /* rows 0-3, 4-7 */
        for (int64_t q = g0; q < g1; q++) {
            const __m256i wa = _mm256_loadu_si256((const __m256i *)(pan + q * TAKANE_PANEL_ROWS));
            const __m256i wb = _mm256_loadu_si256((const __m256i *)(pan + q * TAKANE_PANEL_ROWS + 4));
            __m256i pa = _mm256_setzero_si256(), pb = _mm256_setzero_si256();
            for (int p = 0; p < 8; p++) {
                const __m256i plane = _mm256_set1_epi64x((long long)planes[q * 8 + p]);
                const __m256i ca = popcount_bytes(_mm256_and_si256(wa, plane), lut, low4);
                const __m256i cb = popcount_bytes(_mm256_and_si256(wb, plane), lut, low4);
                pa = _mm256_add_epi16(pa, _mm256_maddubs_epi16(ca, coef[p]));
                pb = _mm256_add_epi16(pb, _mm256_maddubs_epi16(cb, coef[p]));
            }
            int64_t nq2, d2;
            memcpy(&nq2, nqq + 2 * q, 8);
            memcpy(&d2, dd + 2 * q, 8);
            const __m256i nqv = _mm256_set1_epi64x((long long)nq2);
            const __m256 dv = _mm256_castsi256_ps(_mm256_set1_epi64x((long long)d2));
            /* S = 2 P + nq per (row, block) lane */
            const __m256i sa = _mm256_add_epi32(_mm256_slli_epi32(_mm256_madd_epi16(pa, ones16), 1), nqv);
            const __m256i sb = _mm256_add_epi32(_mm256_slli_epi32(_mm256_madd_epi16(pb, ones16), 1), nqv);
            acc_a = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(sa), acc_a);
            acc_b = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(sb), acc_b);
        }
        float f[16];
        _mm256_storeu_ps(f, acc_a);
        _mm256_storeu_ps(f + 8, acc_b);
        for (int r = 0; r < TAKANE_PANEL_ROWS; r++) {
            float v = f[2 * r] + f[2 * r + 1];
            if (gs) { /* else there is one group */
                const float g = takane_gs_at(gs, r < nrows ? r : nrows - 1, grp);
                bad |= !(fabsf(g) <= 3.4028234663852886e38f);
                v = total[r] + v * g;
            }
            total[r] = v;
        }
    }
    memcpy(out, total, sizeof total);
    return bad;
}

/* wq8_gemm_avx2.c: the prefill GEMM and the int8 peak probe */
extern const takane_q8_gemm_ukernel takane_q8_gemm_ukernel_avx2;
uint64_t takane_q8_probe_int8_avx2(uint64_t iters, int32_t *sink);

const takane_q8_ukernel takane_q8_ukernel_avx2 = {MR,
                                                  NP,
                                                  takane_q8_quantize_row_portable,
                                                  table_len,
                                                  build_table,
                                                  panels,
                                                  takane_q8_probe_int8_avx2,
                                                  &takane_q8_gemm_ukernel_avx2};
