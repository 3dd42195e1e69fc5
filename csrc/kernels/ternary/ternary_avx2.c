/*
 * ternary_avx2.c — ternary microkernels for x86-64 AVX2 (see ternary_kernel.h).
 *
 * ISA and flags: AVX2 + FMA + POPCNT (the *_avx2.c flags).
 * int8: per 32-column block and row, the plus / minus bits become byte masks (broadcast,
 *   VPSHUFB byte i <- bit byte i / 8, AND with 1 << (i % 8), compare), s = minus - plus is
 *   +1 / -1 / 0 per byte, VPSIGNB(q, s) = q * t, VPMADDUBSW(1...1, .) adds byte pairs into
 *   int16 (|.| <= 254) and VPMADDWD(., 1...1) pairs into int32 lanes: a lane gains at most
 *   4 * 127 per block, a call covers at most 2^16 blocks: <= 3.4e7, no overflow.
 * f32: per 8 columns and plane, VPSLLVD moves column bit i of a broadcast 32-bit half-word
 *   to the sign of lane i and VBLENDVPS picks x there (+0.0 elsewhere: a NaN next to a zero
 *   weight is not added) into a plus / minus accumulator; out = sum(plus) - sum(minus).
 * Tile: one panel (8 rows) at a time.
 */
#include <immintrin.h>

#include "ternary_kernel.h"

#define R TAKANE_PANEL_ROWS

static inline __m256i byte_mask(uint32_t bits, __m256i shuf, __m256i sel) {
    const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(b, sel), sel);
}

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static void dot_i8(const void *a, const uint64_t *panels, int64_t pstride, int np, int64_t b0,
                   int64_t b1, int32_t *out) {
    const int8_t *q = (const int8_t *)a; /* no table: the row itself */
    /* byte i of a 32-bit block mask: byte i / 8 of the bits, tested against 1 << (i % 8) */
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                          2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        for (int r = 0; r < R; r++) {
            __m256i acc = _mm256_setzero_si256();
            for (int64_t b = b0; b < b1; b++) {
                const int64_t w = b / 2, sh = (b % 2) * 32;
                const uint32_t plus = (uint32_t)(pan[2 * w * R + r] >> sh);
                const uint32_t minus = (uint32_t)(pan[(2 * w + 1) * R + r] >> sh);
                if (!(plus | minus)) continue;
                const __m256i s = _mm256_sub_epi8(byte_mask(minus, shuf, sel), byte_mask(plus, shuf, sel));
                const __m256i v = _mm256_sign_epi8(_mm256_load_si256((const __m256i *)(q + b * 32)), s);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16));
            }
            out[t * R + r] = hsum_epi32(acc);
        }
    }
}

static void dot_f32(const float *xs, const uint64_t *panels, int64_t pstride, int np, int64_t q0,
                    int64_t q1, float *out) {
    /* lane i of chunk c (columns 8c + i of a 32-bit half): shift bit 8c + i to bit 31 */
    const __m256i sh0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256i step = _mm256_set1_epi32(8);
    const __m256 zero = _mm256_setzero_ps();
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        for (int r = 0; r < R; r++) {
            __m256 accp = zero, accn = zero;
            for (int64_t w = q0; w < q1; w++) {
                const uint64_t p = pan[2 * w * R + r], n = pan[(2 * w + 1) * R + r];
                if (!(p | n)) continue;
                for (int h = 0; h < 2; h++) {
                    const __m256i bp = _mm256_set1_epi32((int)(uint32_t)(p >> (32 * h)));
                    const __m256i bn = _mm256_set1_epi32((int)(uint32_t)(n >> (32 * h)));
                    __m256i shv = sh0;
                    for (int c = 0; c < 4; c++) {
                        const __m256 x = _mm256_load_ps(xs + w * 64 + 32 * h + 8 * c);
                        const __m256 mp = _mm256_castsi256_ps(_mm256_sllv_epi32(bp, shv));
                        const __m256 mn = _mm256_castsi256_ps(_mm256_sllv_epi32(bn, shv));
                        accp = _mm256_add_ps(accp, _mm256_blendv_ps(zero, x, mp));
                        accn = _mm256_add_ps(accn, _mm256_blendv_ps(zero, x, mn));
                        shv = _mm256_sub_epi32(shv, step);
                    }
                }
            }
            out[t * R + r] = hsum_ps(accp) - hsum_ps(accn);
        }
    }
}

const takane_ternary_ukernel takane_ternary_ukernel_avx2 = {NULL, NULL, dot_i8, dot_f32, NULL, NULL, NULL};
