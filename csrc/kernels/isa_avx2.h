/*
 * isa_avx2.h — shared inline pieces of the *_avx2.c kernel files (compiled with -mavx2
 * -mfma -mpopcnt), with their intrinsics and the kernel contract.
 */
#ifndef TAKANE_ISA_AVX2_H
#define TAKANE_ISA_AVX2_H

#include <immintrin.h>

#include "kernel.h"
#include "transpose8.h"

/*
 * Words [q_begin, ceil(k/64)) of one row of k floats binarized against t (one threshold,
 * or k per_channel), 8 lanes per VCMPPS (GE_OQ: -0.0 >= 0 true, NaN false) + VMOVMSKPS; a
 * second compare (UNORD_Q) catches NaN. Returns nonzero iff those elements of x or t held a
 * NaN. With abs_sum non-NULL, *abs_sum = sum |x| over them in double (VANDPS 0x7fffffff,
 * two VCVTPS2PD into two accumulators). The last partial group is read with VMASKMOVPS
 * (masked-off lanes are 0.0 and never touch memory) and its bits cut to the valid lanes:
 * padding bits 0, no overread. pack_avx2.c uses it for a row's partial last word (its full
 * words take a faster 32-lane path), linear_avx2.c for whole rows with the sum.
 */
static inline __attribute__((always_inline)) int takane_avx2_pack_words(
    const float *x, int64_t k, const float *t, int per_channel, uint64_t *out, int64_t q_begin,
    double *abs_sum) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 t_all = _mm256_set1_ps(t[0]);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256d sum0 = _mm256_setzero_pd(), sum1 = _mm256_setzero_pd();
    int nan = 0;
    const int64_t kw = takane_words_for(k);
    for (int64_t q = q_begin; q < kw; q++) {
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
            if (abs_sum) {
                const __m256 a = _mm256_and_ps(v, abs_mask);
                sum0 = _mm256_add_pd(sum0, _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
                sum1 = _mm256_add_pd(sum1, _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
            }
        }
        out[q] = word;
    }
    if (abs_sum) {
        const __m256d s = _mm256_add_pd(sum0, sum1);
        const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
        *abs_sum = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    }
    return nan;
}

#endif /* TAKANE_ISA_AVX2_H */
