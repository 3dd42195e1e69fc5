/*
 * pack_avx2.c — activation packing for x86-64 AVX2: one row of floats -> canonical bits.
 *
 * ISA and flags: AVX2 + FMA + POPCNT (-mavx2 -mfma -mpopcnt).
 * Full words: 32 floats per step — 4 VCMPPS (predicate GE_OQ: ordered, so -0.0 >= 0 is
 *   true and NaN false) give 4 x 8 lane masks, VPACKSSDW x2 + VPACKSSWB narrow them to
 *   32 bytes, one VPERMD undoes the packs' 128-bit-lane interleave, and one VPMOVMSKB
 *   yields 32 bits: ~8 uops per 32 floats where a VMOVMSKPS per 8 would take ~16. A
 *   second compare (UNORD_Q) per 8 floats is OR-ed into one vector, tested once per row,
 *   to catch NaN on either side.
 * Partial last word: 8 floats per VCMPPS + VMOVMSKPS, the last group masked.
 * Edges: the last partial group of a row is read with VMASKMOVPS (masked-off lanes read
 *   as 0.0 and never touch memory) and its bits are cut to the valid lanes, so padding
 *   bits are 0 and there is no overread.
 */
#include "../isa_avx2.h"

int takane_pack_row_avx2(const float *x, int64_t k, const float *t, int per_channel,
                         uint64_t *out) {
    const __m256 t_all = _mm256_set1_ps(t[0]);
    int nan = 0;
    /* dword order after the two packs: [a0lo a1lo a2lo a3lo a0hi a1hi a2hi a3hi] */
    const __m256i unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256 unord = _mm256_setzero_ps();
    const int64_t full = k / 64; /* words with all 64 elements present */
    for (int64_t q = 0; q < full; q++) {
        uint64_t word = 0;
        for (int half = 0; half < 2; half++) {
            const int64_t c = q * 64 + half * 32;
            __m256i ge[4];
            for (int j = 0; j < 4; j++) {
                const __m256 v = _mm256_loadu_ps(x + c + 8 * j);
                const __m256 th = per_channel ? _mm256_loadu_ps(t + c + 8 * j) : t_all;
                ge[j] = _mm256_castps_si256(_mm256_cmp_ps(v, th, _CMP_GE_OQ));
                unord = _mm256_or_ps(unord, _mm256_cmp_ps(v, th, _CMP_UNORD_Q));
            }
            const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(ge[0], ge[1]),
                                                 _mm256_packs_epi32(ge[2], ge[3]));
            const uint32_t bits =
                (uint32_t)_mm256_movemask_epi8(_mm256_permutevar8x32_epi32(b, unshuffle));
            word |= (uint64_t)bits << (half * 32);
        }
        out[q] = word;
    }
    nan |= _mm256_movemask_ps(unord) != 0;
    /* the partial last word, 8 lanes at a time (isa_avx2.h) */
    return nan | takane_avx2_pack_words(x, k, t, per_channel, out, full, NULL);
}
