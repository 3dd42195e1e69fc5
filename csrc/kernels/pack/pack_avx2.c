/*
 * pack_avx2.c — activation packing for x86-64 AVX2: one row of floats -> canonical bits.
 *
 * ISA and flags: AVX2 + FMA + POPCNT (-mavx2 -mfma -mpopcnt).
 * Step: 8 floats per VCMPPS (predicate GE_OQ: ordered, so -0.0 >= 0 is true and NaN is
 *   false) + VMOVMSKPS -> 8 bits; 8 steps make one word. A second VCMPPS (UNORD_Q)
 *   collects NaNs on either side. ~3 uops per 8 elements plus the loads.
 * Edges: the last partial group of a row is read with VMASKMOVPS (masked-off lanes read
 *   as 0.0 and never touch memory) and its bits are cut to the valid lanes, so padding
 *   bits are 0 and there is no overread.
 */
#include <immintrin.h>

#include "../../src/internal.h"

int takane_pack_row_avx2(const float *x, int64_t k, const float *t, int per_channel,
                         uint64_t *out) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 t_all = _mm256_set1_ps(t[0]);
    int nan = 0;
    const int64_t kw = takane_words_for(k);
    for (int64_t q = 0; q < kw; q++) {
        uint64_t word = 0;
        for (int g = 0; g < 8; g++) {
            const int64_t c = q * 64 + g * 8;
            if (c >= k) break;
            __m256 v, th;
            unsigned valid = 0xffu;
            if (c + 8 <= k) {
                v = _mm256_loadu_ps(x + c);
                th = per_channel ? _mm256_loadu_ps(t + c) : t_all;
            } else {
                const int n = (int)(k - c);
                const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
                v = _mm256_maskload_ps(x + c, m);
                th = per_channel ? _mm256_maskload_ps(t + c, m) : t_all;
                valid = (1u << n) - 1;
            }
            const unsigned ge = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, th, _CMP_GE_OQ));
            const unsigned un = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, th, _CMP_UNORD_Q));
            nan |= (un & valid) != 0;
            word |= (uint64_t)(ge & valid) << (g * 8);
        }
        out[q] = word;
    }
    return nan;
}
