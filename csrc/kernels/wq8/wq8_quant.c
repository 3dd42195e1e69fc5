/*
 * wq8_quant.c — the portable Q8_0 activation quantizer (llama.cpp's quantize_row_q8_0_ref in
 * float32 arithmetic) and the fp16 rounding of block scales: the quantize_row of the scalar,
 * AVX2 and NEON sets, and the rounding every set's quantizer shares so that the block scales
 * agree bit for bit across ISAs. Plain C at the baseline ISA, compiled with
 * -ffp-contract=off: every float32 step is rounded exactly as the reference rounds it.
 * (Kernel code: it lived in the framework file wq8.c until the kernels got their own
 * contract header; the frameworks only call it through the kernel set.)
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../kernel.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- quantization (llama.cpp quantize_row_q8_0_ref, float32 arithmetic) ------------- */

/* float32(fp16(f)) for f >= 0, round to nearest even, subnormals kept, >= 65520 -> inf. */
float takane_round_fp16(float f) {
    if (!(f < 65520.0f)) return INFINITY;
    if (f < 0x1p-14f) {
        /* subnormal half: a multiple of 2^-24; f * 2^24 < 2^10 is exact, and adding and
         * removing 2^23 rounds it to an integer, nearest even (default rounding mode) */
        volatile float t = f * 0x1p24f + 0x1p23f;
        return (t - 0x1p23f) * 0x1p-24f;
    }
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x0FFFu + ((u >> 13) & 1u); /* round the 23-bit mantissa to 10 bits, ties to even */
    u &= ~0x1FFFu;
    memcpy(&f, &u, 4);
    return f;
}

/* roundf for |v| < 2^22: truncate, then step away from zero when the (exact) remainder is
 * at least one half. Avoids the v + 0.5 trap (0.49999997f + 0.5f rounds up to 1). */
static inline int32_t round_away(float v) {
    int32_t t = (int32_t)v;
    const float f = v - (float)t;
    if (f >= 0.5f) t++;
    else if (f <= -0.5f) t--;
    return t;
}

/* One row: xs = x * in_scale (float32), quantized block by block. Returns TAKANE_ERR_NAN
 * or TAKANE_ERR_NOT_FINITE for a NaN / infinite xs. */
takane_status takane_q8_quantize_row_portable(const float *x, const float *in_scale, int64_t k,
                                              int64_t kw, int8_t *q, float *d, int32_t *nq) {
    float xs[32];
    const int64_t nb = 2 * kw;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t c0 = b * 32;
        const int len = c0 >= k ? 0 : (int)min64(32, k - c0);
        float amax = 0.0f;
        int bad = 0;
        for (int c = 0; c < len; c++) {
            const float v = in_scale ? x[c0 + c] * in_scale[c0 + c] : x[c0 + c];
            xs[c] = v;
            const float a = fabsf(v);
            bad |= !(a <= 3.4028234663852886e38f); /* NaN or inf */
            amax = a > amax ? a : amax;
        }
        if (bad) {
            for (int c = 0; c < len; c++)
                if (xs[c] != xs[c]) return TAKANE_ERR_NAN;
            return TAKANE_ERR_NOT_FINITE;
        }
        const float dd = amax / 127.0f;
        const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        d[b] = takane_round_fp16(dd);
        if (d[b] == INFINITY) return TAKANE_ERR_NOT_FINITE; /* amax > 127 * 65504 + ... */
        /* a scale that rounds to fp16 zero (d <= 2^-25) zeroes the block's contribution
         * whatever q is: q is stored as 0 (as the reference reports it), which also keeps
         * x * id finite (1/d overflows below 2^-128) */
        const int live = d[b] != 0.0f;
        int32_t sum = 0;
        for (int c = 0; c < 32; c++) {
            const int32_t v = live && c < len ? round_away(xs[c] * id) : 0;
            q[c0 + c] = (int8_t)v;
            sum += v;
        }
        nq[b] = -sum;
    }
    return TAKANE_OK;
}
