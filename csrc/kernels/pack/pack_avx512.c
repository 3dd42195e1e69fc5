/*
 * pack_avx512.c — activation packing for x86-64 AVX-512: one row of floats -> bits.
 *
 * ISA and flags: AVX-512 F+BW+VL+VPOPCNTDQ (the same flags as every *_avx512.c file).
 * Step: 16 floats per VCMPPS into a mask register (predicate GE_OQ: -0.0 >= 0 is true,
 *   NaN false): the mask IS 16 packed bits, so 4 steps make one word with no movemask.
 *   A second compare (UNORD_Q) collects NaNs on either side.
 * Edges: the last partial group is read with a zero-masked load and compared under the
 *   same mask, so padding bits are 0 and there is no overread.
 */
#include "../isa_avx512.h"

#include "../kernel.h"

int takane_pack_row_avx512(const float *x, int64_t k, const float *t, int per_channel,
                           uint64_t *out) {
    const __m512 t_all = _mm512_set1_ps(t[0]);
    __mmask16 nan = 0;
    const int64_t kw = takane_words_for(k);
    for (int64_t q = 0; q < kw; q++) {
        uint64_t word = 0;
        for (int g = 0; g < 4; g++) {
            const int64_t c = q * 64 + g * 16;
            if (c >= k) break;
            const __mmask16 valid =
                (c + 16 <= k) ? (__mmask16)0xffff : (__mmask16)((1u << (k - c)) - 1);
            const __m512 v = _mm512_maskz_loadu_ps(valid, x + c);
            const __m512 th = per_channel ? _mm512_maskz_loadu_ps(valid, t + c) : t_all;
            const __mmask16 ge = _mm512_mask_cmp_ps_mask(valid, v, th, _CMP_GE_OQ);
            nan |= _mm512_mask_cmp_ps_mask(valid, v, th, _CMP_UNORD_Q);
            word |= (uint64_t)ge << (g * 16);
        }
        out[q] = word;
    }
    return nan != 0;
}
