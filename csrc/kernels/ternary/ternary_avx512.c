/*
 * ternary_avx512.c — ternary microkernels for x86-64 AVX-512 (see ternary_kernel.h).
 *
 * ISA and flags: the *_avx512.c flags (F+BW+VL+VPOPCNTDQ+VBMI+VNNI); this file uses BW
 *   byte tests, VPTERNLOGQ and VPOPCNTQ.
 * int8 (bit-serial over the activation bits): q in [-127, 127] (the kernel contract) is
 *   written in a zero-sum code, q = sum_{i<7} 2^i b_i - 127 b_7 (q < 0: b_7 = 1 and bits
 *   0..6 hold q + 127), so the coefficients (1, 2, ..., 64, -127) sum to 0. The row's table
 *   holds, per weight word w, the 8 bit planes B_i (a 64-column mask each, VPTESTMB). One
 *   64-byte load of a panel's plus words P (8 rows, one per 64-bit lane) and minus words M,
 *   then per plane
 *     X_i = (P & B_i) | (M & ~B_i)      (one VPTERNLOGQ; P and M are disjoint)
 *     popcount(X_i) = |P & B_i| - |M & B_i| + |M|
 *   so sum_c q_c t_c = sum_i coef_i * popcount(X_i) + |M| * sum_i coef_i, and the |M| term
 *   vanishes (with two's complement bits, coef_7 = -128, it was a ninth VPOPCNTQ + VPADDQ
 *   per word). Per word and 8 rows: 8 broadcasts (loads), 8 VPTERNLOGQ, 8 VPOPCNTQ, 8
 *   VPADDQ: the counts stay in 64-bit lanes (no overflow for any k), the coefficients are
 *   applied once per call (per group with group scales). Edge words of a block range (odd
 *   b0 / b1) mask P and M to the range's half.
 * Costs on Zen 4 (measured, 2048x2048 GEMV, 1 thread, 8192 panel-words): about 18 cycles
 *   per panel-word with the ninth popcount, i.e. VPOPCNTQ zmm at 1 per cycle plus
 *   VPTERNLOGQ / VPADDQ zmm at 2 per cycle on the same pipes (9 + 4 + 4.5 = 17.5): the
 *   popcounts bound the loop, not the loads (10 per word, 3 load ports).
 * f32: per word 4 loads of 16 floats; per row the 16-bit pieces of the plus / minus words
 *   mask an add into a plus and a minus accumulator (masked-off lanes keep their value:
 *   a NaN next to a zero weight is not added); out = sum(plus) - sum(minus).
 * Tile: one panel (8 rows) at a time, its word range streamed once; the table / xs come
 *   from L1/L2.
 */
#include "../isa_avx512.h"
#include "ternary_kernel.h"

#define R TAKANE_PANEL_ROWS

static int64_t table_len_i8(int64_t kw) { return kw * 8 * (int64_t)sizeof(uint64_t); }

/* table[w * 8 + i] = bit plane i of the 64 activations of word w in the zero-sum code
 * q = sum_{i<7} 2^i b_i - 127 b_7 (q < 0: b_7 = 1 and the low bits hold q + 127) */
static void build_i8(const int8_t *q, int64_t kw, void *table) {
    uint64_t *t = (uint64_t *)table;
    for (int64_t w = 0; w < kw; w++) {
        const __m512i qv = _mm512_load_si512((const void *)(q + w * 64));
        const __mmask64 neg = _mm512_test_epi8_mask(qv, _mm512_set1_epi8((char)0x80));
        const __m512i low = _mm512_mask_add_epi8(qv, neg, qv, _mm512_set1_epi8(127));
        for (int i = 0; i < 7; i++)
            t[w * 8 + i] = (uint64_t)_mm512_test_epi8_mask(low, _mm512_set1_epi8((char)(1 << i)));
        t[w * 8 + 7] = (uint64_t)neg;
    }
}

/* Column mask of word w within the block range [b0, b1). */
static inline uint64_t colmask(int64_t w, int64_t b0, int64_t b1) {
    uint64_t m = ~UINT64_C(0);
    if (2 * w < b0) m &= UINT64_C(0xFFFFFFFF00000000);
    if (2 * w + 1 >= b1) m &= UINT64_C(0x00000000FFFFFFFF);
    return m;
}

/* sum_i coef_i * acc_i, exact in int64: sum_{i<7} acc_i << i - (acc_7 << 7) + acc_7, as a
 * tree (depth 4, not a chain of 9 adds: with groups this runs every few words, and the next
 * group's word loop overlaps it only as far as the reorder window allows). */
static inline __m512i planes_sum(const __m512i acc[8]) {
    const __m512i accm = acc[7];
    const __m512i s01 = _mm512_add_epi64(acc[0], _mm512_slli_epi64(acc[1], 1));
    const __m512i s23 = _mm512_add_epi64(acc[2], _mm512_slli_epi64(acc[3], 1));
    const __m512i s45 = _mm512_add_epi64(acc[4], _mm512_slli_epi64(acc[5], 1));
    const __m512i s67 = _mm512_sub_epi64(acc[6], _mm512_slli_epi64(acc[7], 1));
    const __m512i s03 = _mm512_add_epi64(s01, _mm512_slli_epi64(s23, 2));
    const __m512i s47 = _mm512_add_epi64(s45, _mm512_slli_epi64(s67, 2));
    return _mm512_add_epi64(_mm512_add_epi64(s03, accm), _mm512_slli_epi64(s47, 4));
}

static void dot_i8(const void *a, const uint64_t *panels, int64_t pstride, int np, int64_t b0,
                   int64_t b1, int32_t *out) {
    const uint64_t *tab = (const uint64_t *)a;
    const int64_t w0 = b0 / 2, w1 = (b1 + 1) / 2;
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        __m512i acc[8];
        for (int i = 0; i < 8; i++) acc[i] = _mm512_setzero_si512();
        for (int64_t w = w0; w < w1; w++) {
            __m512i p = _mm512_load_si512((const void *)(pan + 2 * w * R));
            __m512i m = _mm512_load_si512((const void *)(pan + (2 * w + 1) * R));
            const uint64_t cm = colmask(w, b0, b1);
            if (cm != ~UINT64_C(0)) {
                const __m512i cmv = _mm512_set1_epi64((long long)cm);
                p = _mm512_and_si512(p, cmv);
                m = _mm512_and_si512(m, cmv);
            }
            const uint64_t *bw = tab + w * 8;
            for (int i = 0; i < 8; i++) {
                const __m512i b = _mm512_set1_epi64((long long)bw[i]);
                acc[i] = _mm512_add_epi64(acc[i], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(p, m, b, 0xE4)));
            }
        }
        const __m512i sum = planes_sum(acc);
        long long lanes[8];
        _mm512_storeu_si512((void *)lanes, sum);
        for (int r = 0; r < R; r++) out[t * R + r] = (int32_t)lanes[r];
    }
}

/* The words [w0, w1) of one panel (whole words) against the table: the exact sums of its 8
 * rows as int32 (the caller bounds w1 - w0 so that they fit: see dot_i8_groups). */
static inline __m256i panel_words_i8(const uint64_t *tab, const uint64_t *pan, int64_t w0,
                                     int64_t w1) {
    __m512i acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm512_setzero_si512();
    for (int64_t w = w0; w < w1; w++) {
        const __m512i p = _mm512_load_si512((const void *)(pan + 2 * w * R));
        const __m512i m = _mm512_load_si512((const void *)(pan + (2 * w + 1) * R));
        const uint64_t *bw = tab + w * 8;
        for (int i = 0; i < 8; i++) {
            const __m512i b = _mm512_set1_epi64((long long)bw[i]);
            acc[i] = _mm512_add_epi64(acc[i], _mm512_popcnt_epi64(_mm512_ternarylogic_epi64(p, m, b, 0xE4)));
        }
    }
    const __m512i sum = planes_sum(acc);
    return _mm512_cvtepi64_epi32(sum); /* VPMOVQD: exact, |sum| < 2^31 */
}

/* Group scales in the kernel (TQ2_0-style groups of 256 are 4 words: calling dot_i8 per
 * group paid the setup, the reduction and a scalar epilogue per 4 words). Per panel and
 * group: the word loop above, one VPMOVQD + VCVTDQ2PS, the 8 rows' scales as one vector
 * (a masked load when the handle's scales are panel-major, else one VGATHERDPS over the
 * row-major rows), a finiteness test on them and a multiply-add into 8 float lanes. */
static int dot_i8_groups(const void *a, const uint64_t *panels, int64_t pstride, int np,
                         int64_t kw, int64_t gw, const takane_gscales *gs, int64_t nrows,
                         float *out) {
    /* 256-bit AVX / AVX2 forms for the epilogue (VMASKMOVPS, VGATHERDPS with a vector
     * mask, VCMPPS + VMOVMSKPS): the SIMDe emulation build has those, not the AVX-512VL
     * mask-register forms. */
    const uint64_t *tab = (const uint64_t *)a;
    const int pm = takane_gs_panel_major(gs);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i idx = _mm256_mullo_epi32(lanes, _mm256_set1_epi32((int)gs->rs));
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 fmax = _mm256_set1_ps(3.4028234663852886e38f);
    int bad = 0;
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        const int64_t left = nrows - (int64_t)t * R;
        const int nlive = left >= R ? R : left <= 0 ? 0 : (int)left;
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(nlive), lanes); /* all-ones lanes */
        const float *gp = gs->p + t * gs->ps;
        __m256 tot = _mm256_setzero_ps();
        for (int64_t g = 0, w0 = 0; w0 < kw; g++, w0 += gw) {
            const int64_t w1 = w0 + gw < kw ? w0 + gw : kw;
            const __m256 s = _mm256_cvtepi32_ps(panel_words_i8(tab, pan, w0, w1));
            /* the 8 rows' scales: one vector from a panel-major array; from a row-major one
             * 8 scalar loads when all rows are live (measured faster than VGATHERDPS here,
             * 47 vs 49 us for 2048x2048, groups of 256), else a masked gather */
            const float *gq = gp + g * gs->cs;
            const int64_t rs = gs->rs;
            __m256 gv;
            if (pm) gv = _mm256_maskload_ps(gq, live);
            else if (nlive == R)
                gv = _mm256_setr_ps(gq[0], gq[rs], gq[2 * rs], gq[3 * rs], gq[4 * rs], gq[5 * rs],
                                    gq[6 * rs], gq[7 * rs]);
            else
                gv = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), gq, idx, _mm256_castsi256_ps(live), 4);
            /* dead lanes hold 0.0: only a live NaN / inf scale sets a bit */
            bad |= _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(gv, absmask), fmax, _CMP_NLE_UQ));
            /* one FMA, written out (not left to contraction): the prefill GEMM
             * (ternary_gemm_avx512.c) rounds the same way, bit for bit */
            tot = _mm256_fmadd_ps(s, gv, tot);
        }
        _mm256_storeu_ps(out + t * R, tot);
    }
    return bad != 0;
}

/* Sum of 16 lanes (any order is within the bound; no _mm512_reduce_add_ps: the SIMDe
 * emulation build lacks it). */
static inline float hsum_ps(__m512 v) {
    float l[16];
    _mm512_storeu_ps(l, v);
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += l[i];
    return s;
}

static void dot_f32(const float *xs, const uint64_t *panels, int64_t pstride, int np, int64_t q0,
                    int64_t q1, float *out) {
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        __m512 accp[R], accn[R];
        for (int r = 0; r < R; r++) accp[r] = accn[r] = _mm512_setzero_ps();
        for (int64_t w = q0; w < q1; w++) {
            const float *xw = xs + w * 64;
            const __m512 x0 = _mm512_load_ps(xw), x1 = _mm512_load_ps(xw + 16);
            const __m512 x2 = _mm512_load_ps(xw + 32), x3 = _mm512_load_ps(xw + 48);
            const uint64_t *pw = pan + 2 * w * R;
            for (int r = 0; r < R; r++) {
                const uint64_t p = pw[r], n = pw[R + r];
                accp[r] = _mm512_mask_add_ps(accp[r], (__mmask16)p, accp[r], x0);
                accn[r] = _mm512_mask_add_ps(accn[r], (__mmask16)n, accn[r], x0);
                accp[r] = _mm512_mask_add_ps(accp[r], (__mmask16)(p >> 16), accp[r], x1);
                accn[r] = _mm512_mask_add_ps(accn[r], (__mmask16)(n >> 16), accn[r], x1);
                accp[r] = _mm512_mask_add_ps(accp[r], (__mmask16)(p >> 32), accp[r], x2);
                accn[r] = _mm512_mask_add_ps(accn[r], (__mmask16)(n >> 32), accn[r], x2);
                accp[r] = _mm512_mask_add_ps(accp[r], (__mmask16)(p >> 48), accp[r], x3);
                accn[r] = _mm512_mask_add_ps(accn[r], (__mmask16)(n >> 48), accn[r], x3);
            }
        }
        for (int r = 0; r < R; r++) out[t * R + r] = hsum_ps(_mm512_sub_ps(accp[r], accn[r]));
    }
}

/* The int8_row quantizer, 16 columns a step (the scalar loop in ternary.c cost about 2 us of
 * a 40 us 2048x2048 GEMV: the float max reduction does not auto-vectorize). Bit-identical to
 * it: max is exact in any order, each product rounds once (separate multiply intrinsics,
 * nothing to contract), and VRNDSCALEPS to nearest even then VCVTTPS2DQ is rne(). */
/* Round each lane to nearest even (|v| <= 127). SIMDe's VRNDSCALEPS calls libm's roundevenf,
 * which the plain C test binaries do not link: the emulation build adds and removes
 * 1.5 * 2^23 per lane instead (the product comes from memory, so nothing fuses with it). */
static inline __m512 round_even(__m512 v) {
#ifdef TAKANE_AVX512_EMULATION
    float l[16];
    _mm512_storeu_ps(l, v);
    for (int i = 0; i < 16; i++) l[i] = (l[i] + 12582912.0f) - 12582912.0f;
    return _mm512_loadu_ps(l);
#else
    return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#endif
}

static int quantize_i8_row(const float *x, const float *in_scale, int64_t k, int64_t kw,
                           int8_t *q, float *d) {
    const __m512 fmax = _mm512_set1_ps(3.4028234663852886e38f);
    __m512 amax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t c = 0; c < k; c += 16) {
        const __mmask16 live = k - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k - c)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(live, x + c);
        if (in_scale) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(live, in_scale + c));
        const __m512 a = _mm512_abs_ps(v); /* F (VPANDD), not DQ's VANDPS */
        bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);
        amax = _mm512_max_ps(amax, a);
    }
    if (bad) return 1;
    float lanes[16], a = 0.0f;
    _mm512_storeu_ps(lanes, amax);
    for (int i = 0; i < 16; i++) a = lanes[i] > a ? lanes[i] : a;
    a = a > 1e-5f ? a : 1e-5f;
    const __m512 inv = _mm512_set1_ps(127.0f / a);
    for (int64_t c = 0; c < kw * 64; c += 16) {
        const __mmask16 live = c >= k ? (__mmask16)0 : k - c >= 16 ? (__mmask16)0xFFFF
                                                               : (__mmask16)((1u << (k - c)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(live, x + c);
        if (in_scale) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(live, in_scale + c));
        const __m512 r = round_even(_mm512_mul_ps(v, inv));
        /* |v| <= a: |r| <= 127, no clamp needed; lanes past k are 0 */
        _mm_storeu_si128((__m128i *)(void *)(q + c), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(r)));
    }
    *d = a / 127.0f;
    return 0;
}

const takane_ternary_ukernel takane_ternary_ukernel_avx512 = {table_len_i8, build_i8, dot_i8, dot_f32,
                                                             dot_i8_groups, quantize_i8_row,
                                                             &takane_ternary_gemm_ukernel_avx512};
