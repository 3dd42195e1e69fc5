/*
 * ternary_neon.c — ternary microkernels for aarch64 Advanced SIMD (see ternary_kernel.h).
 *
 * ISA and flags: armv8-a baseline (no dot-product extension needed).
 * int8: per 16 columns and row, the plus / minus bits become byte masks (VTST against
 *   1 << (i % 8) of the byte holding column i), v = q where +1, -q where -1, 0 elsewhere
 *   (BSL; q in [-127, 127], so -q never wraps); SADDLP widens byte pairs to int16
 *   (|.| <= 254) and SADALP adds them into int32 lanes: a lane gains at most 4 * 127 per
 *   32 columns, a call covers at most 2^16 blocks: <= 3.4e7, no overflow.
 * f32: per 4 columns and plane, VTST of the broadcast nibble selects x (BSL with +0.0
 *   elsewhere: a NaN next to a zero weight is not added) into a plus / minus accumulator;
 *   out = sum(plus) - sum(minus).
 * Tile: one panel (8 rows) at a time, one row at a time.
 */
#include <arm_neon.h>

#include "ternary_kernel.h"

#define R TAKANE_PANEL_ROWS

/* The exact sum of row r of a panel over the 32-column blocks [b0, b1) as 4 int32 lanes
 * (dot_i8 and dot_i8_groups share it). */
static inline int32x4_t row_blocks_i8(const int8_t *q, const uint64_t *pan, int r, int64_t b0, int64_t b1,
                                      uint8x16_t sel) {
    const int8x16_t zero = vdupq_n_s8(0);
    int32x4_t acc = vdupq_n_s32(0);
    for (int64_t b = b0; b < b1; b++) {
        const int64_t w = b / 2, sh = (b % 2) * 32;
        const uint32_t plus = (uint32_t)(pan[2 * w * R + r] >> sh);
        const uint32_t minus = (uint32_t)(pan[(2 * w + 1) * R + r] >> sh);
        if (!(plus | minus)) continue;
        for (int h = 0; h < 2; h++) {
            const uint16_t p16 = (uint16_t)(plus >> (16 * h)), m16 = (uint16_t)(minus >> (16 * h));
            const uint8x16_t pb = vcombine_u8(vdup_n_u8((uint8_t)p16), vdup_n_u8((uint8_t)(p16 >> 8)));
            const uint8x16_t mb = vcombine_u8(vdup_n_u8((uint8_t)m16), vdup_n_u8((uint8_t)(m16 >> 8)));
            const int8x16_t qv = vld1q_s8(q + b * 32 + 16 * h);
            int8x16_t v = vbslq_s8(vtstq_u8(mb, sel), vnegq_s8(qv), zero);
            v = vbslq_s8(vtstq_u8(pb, sel), qv, v);
            acc = vpadalq_s16(acc, vpaddlq_s8(v));
        }
    }
    return acc;
}

static const uint8_t sel_bytes[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};

static void dot_i8(const void *a, const uint64_t *panels, int64_t pstride, int np, int64_t b0,
                   int64_t b1, int32_t *out) {
    const int8_t *q = (const int8_t *)a; /* no table: the row itself */
    const uint8x16_t sel = vld1q_u8(sel_bytes);
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        for (int r = 0; r < R; r++) out[t * R + r] = vaddvq_s32(row_blocks_i8(q, pan, r, b0, b1, sel));
    }
}

/* Group scales in the kernel: per panel and group, the 8 rows' exact sums (ADDV each) as
 * two float vectors, the live rows' scales (dead rows 0.0, never read), a finiteness test
 * and one FMA (VFMA) into 8 float lanes: out = fma(float(S_g), g, out), as the x86 SIMD
 * sets do (the contract allows one FMA). */
static int dot_i8_groups(const void *a, const uint64_t *panels, int64_t pstride, int np,
                         int64_t kw, int64_t gw, const takane_gscales *gs, int64_t nrows,
                         float *out) {
    const int8_t *q = (const int8_t *)a;
    const uint8x16_t sel = vld1q_u8(sel_bytes);
    const float32x4_t fmax = vdupq_n_f32(3.4028234663852886e38f);
    uint32x4_t bad = vdupq_n_u32(0);
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        const int64_t left = nrows - (int64_t)t * R;
        const int nlive = left >= R ? R : left <= 0 ? 0 : (int)left;
        float32x4_t lo = vdupq_n_f32(0.0f), hi = lo;
        for (int64_t g = 0, w0 = 0; w0 < kw; g++, w0 += gw) {
            const int64_t w1 = w0 + gw < kw ? w0 + gw : kw;
            int32_t s[R];
            float gl[R];
            for (int r = 0; r < R; r++) {
                s[r] = vaddvq_s32(row_blocks_i8(q, pan, r, 2 * w0, 2 * w1, sel));
                gl[r] = r < nlive ? takane_gs_at(gs, (int64_t)t * R + r, g) : 0.0f;
            }
            const float32x4_t glo = vld1q_f32(gl), ghi = vld1q_f32(gl + 4);
            /* |g| <= FLT_MAX is false for NaN and inf */
            bad = vorrq_u32(bad, vmvnq_u32(vandq_u32(vcaleq_f32(glo, fmax), vcaleq_f32(ghi, fmax))));
            lo = vfmaq_f32(lo, vcvtq_f32_s32(vld1q_s32(s)), glo);
            hi = vfmaq_f32(hi, vcvtq_f32_s32(vld1q_s32(s + 4)), ghi);
        }
        vst1q_f32(out + t * R, lo);
        vst1q_f32(out + t * R + 4, hi);
    }
    return vmaxvq_u32(bad) != 0;
}

static void dot_f32(const float *xs, const uint64_t *panels, int64_t pstride, int np, int64_t q0,
                    int64_t q1, float *out) {
    static const uint32_t sel_words[4] = {1, 2, 4, 8};
    const uint32x4_t sel = vld1q_u32(sel_words);
    const float32x4_t zero = vdupq_n_f32(0.0f);
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        for (int r = 0; r < R; r++) {
            float32x4_t accp = zero, accn = zero;
            for (int64_t w = q0; w < q1; w++) {
                const uint64_t p = pan[2 * w * R + r], n = pan[(2 * w + 1) * R + r];
                if (!(p | n)) continue;
                for (int c = 0; c < 16; c++) {
                    const float32x4_t x = vld1q_f32(xs + w * 64 + 4 * c);
                    const uint32x4_t mp = vtstq_u32(vdupq_n_u32((uint32_t)(p >> (4 * c)) & 15u), sel);
                    const uint32x4_t mn = vtstq_u32(vdupq_n_u32((uint32_t)(n >> (4 * c)) & 15u), sel);
                    accp = vaddq_f32(accp, vbslq_f32(mp, x, zero));
                    accn = vaddq_f32(accn, vbslq_f32(mn, x, zero));
                }
            }
            out[t * R + r] = vaddvq_f32(accp) - vaddvq_f32(accn);
        }
    }
}

const takane_ternary_ukernel takane_ternary_ukernel_neon = {NULL, NULL, dot_i8, dot_f32,
                                                           dot_i8_groups, NULL, NULL};
