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

static void dot_i8(const void *a, const uint64_t *panels, int64_t pstride, int np, int64_t b0,
                   int64_t b1, int32_t *out) {
    const int8_t *q = (const int8_t *)a; /* no table: the row itself */
    static const uint8_t sel_bytes[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t sel = vld1q_u8(sel_bytes);
    const int8x16_t zero = vdupq_n_s8(0);
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        for (int r = 0; r < R; r++) {
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
            out[t * R + r] = vaddvq_s32(acc);
        }
    }
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

const takane_ternary_ukernel takane_ternary_ukernel_neon = {NULL, NULL, dot_i8, dot_f32, NULL, NULL, NULL};
