/*
 * ternary_avx512.c — ternary microkernels for x86-64 AVX-512 (see ternary_kernel.h).
 *
 * ISA and flags: the *_avx512.c flags (F+BW+VL+VPOPCNTDQ+VBMI+VNNI); this file uses BW
 *   byte masks and VNNI VPDPBUSD.
 * int8: per weight word (64 columns) one 64-byte load of q and its negation; per row the
 *   plus and minus words become byte masks: v = q where +1, -q where -1, 0 elsewhere
 *   (q in [-127, 127], so -q never wraps), and VPDPBUSD(acc, 1...1, v) adds the 4-byte
 *   groups into 16 int32 lanes. A lane gains at most 4 * 127 per word; a call covers at
 *   most TAKANE_TERNARY_CHUNK_BLOCKS / 2 = 2^15 words: <= 1.7e7, no overflow. Edge words of
 *   a block range (odd b0 / b1) take a half-word column mask.
 * f32: per word 4 loads of 16 floats; per row the 16-bit pieces of the plus / minus words
 *   mask an add into a plus and a minus accumulator (masked-off lanes keep their value:
 *   a NaN next to a zero weight is not added); out = sum(plus) - sum(minus).
 * Tile: one panel (8 rows) at a time, its word range streamed once; q / xs come from L1.
 */
#include "../isa_avx512.h"
#include "ternary_kernel.h"

#define R TAKANE_PANEL_ROWS

/* Column mask of word w within the block range [b0, b1). */
static inline uint64_t colmask(int64_t w, int64_t b0, int64_t b1) {
    uint64_t m = ~UINT64_C(0);
    if (2 * w < b0) m &= UINT64_C(0xFFFFFFFF00000000);
    if (2 * w + 1 >= b1) m &= UINT64_C(0x00000000FFFFFFFF);
    return m;
}

static void dot_i8(const int8_t *q, const uint64_t *panels, int64_t pstride, int np, int64_t b0,
                   int64_t b1, int32_t *out) {
    const __m512i ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
    const int64_t w0 = b0 / 2, w1 = (b1 + 1) / 2;
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        __m512i acc[R];
        for (int r = 0; r < R; r++) acc[r] = zero;
        for (int64_t w = w0; w < w1; w++) {
            const uint64_t cm = colmask(w, b0, b1);
            const __m512i qv = _mm512_load_si512((const void *)(q + w * 64));
            const __m512i qn = _mm512_sub_epi8(zero, qv);
            const uint64_t *pw = pan + 2 * w * R;
            for (int r = 0; r < R; r++) {
                const __mmask64 plus = _cvtu64_mask64(pw[r] & cm);
                const __mmask64 minus = _cvtu64_mask64(pw[R + r] & cm);
                __m512i v = _mm512_maskz_mov_epi8(plus, qv);
                v = _mm512_mask_mov_epi8(v, minus, qn);
                acc[r] = _mm512_dpbusd_epi32(acc[r], ones, v);
            }
        }
        for (int r = 0; r < R; r++) out[t * R + r] = _mm512_reduce_add_epi32(acc[r]);
    }
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
        for (int r = 0; r < R; r++)
            out[t * R + r] = _mm512_reduce_add_ps(accp[r]) - _mm512_reduce_add_ps(accn[r]);
    }
}

const takane_ternary_ukernel takane_ternary_ukernel_avx512 = {dot_i8, dot_f32};
