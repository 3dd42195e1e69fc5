/*
 * ternary_scalar.c — portable ternary microkernels (any target; see ternary_kernel.h).
 * Plain C at baseline flags: each set bit of the plus / minus word adds / subtracts one
 * activation. Integer sums are exact (int32 per call, bounded by the chunk limit).
 */
#include "ternary_kernel.h"

static void dot_i8(const void *a, const uint64_t *panels, int64_t pstride, int np, int64_t b0,
                   int64_t b1, int32_t *out) {
    const int8_t *q = (const int8_t *)a; /* no table: the row itself */
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        for (int r = 0; r < TAKANE_PANEL_ROWS; r++) {
            int32_t acc = 0;
            for (int64_t b = b0; b < b1; b++) {
                const int64_t w = b / 2, sh = (b % 2) * 32;
                uint32_t plus = (uint32_t)(pan[(2 * w) * TAKANE_PANEL_ROWS + r] >> sh);
                uint32_t minus = (uint32_t)(pan[(2 * w + 1) * TAKANE_PANEL_ROWS + r] >> sh);
                const int8_t *qb = q + b * 32;
                while (plus) {
                    acc += qb[__builtin_ctz(plus)];
                    plus &= plus - 1;
                }
                while (minus) {
                    acc -= qb[__builtin_ctz(minus)];
                    minus &= minus - 1;
                }
            }
            out[t * TAKANE_PANEL_ROWS + r] = acc;
        }
    }
}

static void dot_f32(const float *xs, const uint64_t *panels, int64_t pstride, int np, int64_t q0,
                    int64_t q1, float *out) {
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        for (int r = 0; r < TAKANE_PANEL_ROWS; r++) {
            float acc = 0.0f;
            for (int64_t w = q0; w < q1; w++) {
                uint64_t plus = pan[(2 * w) * TAKANE_PANEL_ROWS + r];
                uint64_t minus = pan[(2 * w + 1) * TAKANE_PANEL_ROWS + r];
                const float *xw = xs + w * 64;
                while (plus) {
                    acc += xw[__builtin_ctzll(plus)];
                    plus &= plus - 1;
                }
                while (minus) {
                    acc -= xw[__builtin_ctzll(minus)];
                    minus &= minus - 1;
                }
            }
            out[t * TAKANE_PANEL_ROWS + r] = acc;
        }
    }
}

const takane_ternary_ukernel takane_ternary_ukernel_scalar = {NULL, NULL, dot_i8, dot_f32, NULL, NULL, NULL};
