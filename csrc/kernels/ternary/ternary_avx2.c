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
 * Group scales (dot_i8_groups): per panel and group, the 8 rows' int32 lanes reduced into
 *   one vector (VPHADDD tree), converted, times the 8 rows' scales, one FMA into 8 floats.
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

/* The exact sum of row r of a panel over the 32-column blocks [b0, b1) as 8 int32 lanes
 * (dot_i8 and dot_i8_groups share it: the same bits either way). */
static inline __m256i row_blocks_i8(const int8_t *q, const uint64_t *pan, int r, int64_t b0, int64_t b1,
                                    __m256i shuf, __m256i sel) {
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
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
    return acc;
}

/* byte i of a 32-bit block mask: byte i / 8 of the bits, tested against 1 << (i % 8) */
#define BLOCK_SHUF _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, \
                                    2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3)
#define BLOCK_SEL _mm256_set1_epi64x((long long)0x8040201008040201ULL)

static void dot_i8(const void *a, const uint64_t *panels, int64_t pstride, int np, int64_t b0,
                   int64_t b1, int32_t *out) {
    const int8_t *q = (const int8_t *)a; /* no table: the row itself */
    const __m256i shuf = BLOCK_SHUF, sel = BLOCK_SEL;
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        for (int r = 0; r < R; r++) out[t * R + r] = hsum_epi32(row_blocks_i8(q, pan, r, b0, b1, shuf, sel));
    }
}

/* Group scales in the kernel (TQ2_0's groups of 256 are 4 words: the framework's dot_i8
 * call per group paid a call, 8 scalar reductions and a scalar epilogue per 4 words). Per
 * panel and group: each row's int32 lanes as above, the 8 rows reduced into one vector by
 * a VPHADDD tree (lane j = row j, exact: |S| < 2^31 by the group bound), VCVTDQ2PS, the 8
 * rows' scales as one vector (one load from a panel-major array; 8 scalar loads from a
 * row-major one, only live rows read), a finiteness test and one FMA into 8 float lanes:
 * out = fma(float(S_g), g, out), as the AVX-512 set does (the contract allows one FMA). */
static int dot_i8_groups(const void *a, const uint64_t *panels, int64_t pstride, int np,
                         int64_t kw, int64_t gw, const takane_gscales *gs, int64_t nrows,
                         float *out) {
    const int8_t *q = (const int8_t *)a;
    const __m256i shuf = BLOCK_SHUF, sel = BLOCK_SEL;
    const int pm = takane_gs_panel_major(gs);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 fmax = _mm256_set1_ps(3.4028234663852886e38f);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int bad = 0;
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        const int64_t left = nrows - (int64_t)t * R;
        const int nlive = left >= R ? R : left <= 0 ? 0 : (int)left;
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(nlive), lanes);
        const float *gp = gs->p + t * gs->ps;
        __m256 tot = _mm256_setzero_ps();
        for (int64_t g = 0, w0 = 0; w0 < kw; g++, w0 += gw) {
            const int64_t w1 = w0 + gw < kw ? w0 + gw : kw;
            __m256i acc[R];
            for (int r = 0; r < R; r++) acc[r] = row_blocks_i8(q, pan, r, 2 * w0, 2 * w1, shuf, sel);
            const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]), _mm256_hadd_epi32(acc[2], acc[3]));
            const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[4], acc[5]), _mm256_hadd_epi32(acc[6], acc[7]));
            /* h0 = rows 0-3 of the low 128-bit halves | rows 0-3 of the high ones (h1: 4-7) */
            const __m256i sum = _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                                                 _mm256_permute2x128_si256(h0, h1, 0x31));
            const float *gq = gp + g * gs->cs;
            const int64_t rs = gs->rs;
            __m256 gv;
            if (pm) gv = _mm256_maskload_ps(gq, live);
            else {
                float l[R];
                for (int r = 0; r < R; r++) l[r] = r < nlive ? gq[r * rs] : 0.0f;
                gv = _mm256_loadu_ps(l);
            }
            /* dead lanes hold 0.0: only a live NaN / inf scale sets a bit */
            bad |= _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(gv, absmask), fmax, _CMP_NLE_UQ));
            tot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), gv, tot);
        }
        _mm256_storeu_ps(out + t * R, tot);
    }
    return bad != 0;
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

const takane_ternary_ukernel takane_ternary_ukernel_avx2 = {NULL, NULL, dot_i8, dot_f32,
                                                           dot_i8_groups, NULL, NULL};
