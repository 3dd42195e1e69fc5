/*
 * ternary_avx512.c — ternary microkernels for x86-64 AVX-512 (see ternary_kernel.h).
 *
 * ISA and flags: the *_avx512.c flags (F+BW+VL+VPOPCNTDQ+VBMI+VNNI); this file uses BW
 *   byte tests, VPTERNLOGQ and VPOPCNTQ.
 * int8 (bit-serial over the activation bits): q = -128 b7 + sum_{i<7} 2^i b_i (two's
 *   complement bits b_i of each activation). The row's table holds, per weight word w, the
 *   8 bit planes B_i (a 64-column mask each, VPTESTMB). One 64-byte load of a panel's plus
 *   words P (8 rows, one per 64-bit lane) and minus words M, then per plane
 *     X_i = (P & B_i) | (M & ~B_i)      (one VPTERNLOGQ; P and M are disjoint)
 *     popcount(X_i) = |P & B_i| - |M & B_i| + |M|
 *   so sum_c q_c t_c = sum_i coef_i * popcount(X_i) + |M| (coef = 1, 2, ..., 64, -128;
 *   sum coef = -1). Per word and 8 rows: 8 broadcasts (loads), 8 VPTERNLOGQ, 8 VPOPCNTQ, 8
 *   adds, plus |M|: the counts stay in 64-bit lanes (no overflow for any k), the
 *   coefficients are applied once per call. Edge words of a block range (odd b0 / b1) mask
 *   P and M to the range's half.
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

/* table[w * 8 + i] = bit plane i of the 64 activations of word w */
static void build_i8(const int8_t *q, int64_t kw, void *table) {
    uint64_t *t = (uint64_t *)table;
    for (int64_t w = 0; w < kw; w++) {
        const __m512i qv = _mm512_load_si512((const void *)(q + w * 64));
        for (int i = 0; i < 8; i++)
            t[w * 8 + i] = (uint64_t)_mm512_test_epi8_mask(qv, _mm512_set1_epi8((char)(1 << i)));
    }
}

/* Column mask of word w within the block range [b0, b1). */
static inline uint64_t colmask(int64_t w, int64_t b0, int64_t b1) {
    uint64_t m = ~UINT64_C(0);
    if (2 * w < b0) m &= UINT64_C(0xFFFFFFFF00000000);
    if (2 * w + 1 >= b1) m &= UINT64_C(0x00000000FFFFFFFF);
    return m;
}

static void dot_i8(const void *a, const uint64_t *panels, int64_t pstride, int np, int64_t b0,
                   int64_t b1, int32_t *out) {
    const uint64_t *tab = (const uint64_t *)a;
    const int64_t w0 = b0 / 2, w1 = (b1 + 1) / 2;
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        __m512i acc[8], accm = _mm512_setzero_si512();
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
            accm = _mm512_add_epi64(accm, _mm512_popcnt_epi64(m));
        }
        /* coef_i * acc_i, exact in int64: sum = sum_{i<7} acc_i << i - 128 acc_7 + |M| */
        __m512i sum = accm;
        for (int i = 0; i < 7; i++) sum = _mm512_add_epi64(sum, _mm512_slli_epi64(acc[i], (unsigned)i));
        sum = _mm512_sub_epi64(sum, _mm512_slli_epi64(acc[7], 7));
        long long lanes[8];
        _mm512_storeu_si512((void *)lanes, sum);
        for (int r = 0; r < R; r++) out[t * R + r] = (int32_t)lanes[r];
    }
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

const takane_ternary_ukernel takane_ternary_ukernel_avx512 = {table_len_i8, build_i8, dot_i8, dot_f32};
