/*
 * ternary_scalar.c — portable ternary microkernels (any target; see ternary_kernel.h).
 * Plain C at baseline flags: each set bit of the plus / minus word adds / subtracts one
 * activation. Integer sums are exact (int32 per call, bounded by the chunk limit).
 */
#include "ternary_kernel.h"

/* The exact sum of row r of a panel over the 32-column blocks [b0, b1) (dot_i8 and
 * dot_i8_groups share it). */
static inline int32_t row_blocks_i8(const int8_t *q, const uint64_t *pan, int r, int64_t b0, int64_t b1) {
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
    return acc;
}

static void dot_i8(const void *a, const uint64_t *panels, int64_t pstride, int np, int64_t b0,
                   int64_t b1, int32_t *out) {
    const int8_t *q = (const int8_t *)a; /* no table: the row itself */
    for (int t = 0; t < np; t++)
        for (int r = 0; r < TAKANE_PANEL_ROWS; r++)
            out[t * TAKANE_PANEL_ROWS + r] = row_blocks_i8(q, panels + t * pstride, r, b0, b1);
}

/* Group scales in the kernel: per row, group by group, out += float(S_g) * g, the
 * framework's order (the compiler may fuse the multiply and the add where the target has
 * an FMA: the contract allows either). Rows j >= nrows read no scale. */
static int dot_i8_groups(const void *a, const uint64_t *panels, int64_t pstride, int np,
                         int64_t kw, int64_t gw, const takane_gscales *gs, int64_t nrows,
                         float *out) {
    const int8_t *q = (const int8_t *)a;
    int bad = 0;
    for (int t = 0; t < np; t++) {
        const uint64_t *pan = panels + t * pstride;
        for (int r = 0; r < TAKANE_PANEL_ROWS; r++) {
            const int64_t j = (int64_t)t * TAKANE_PANEL_ROWS + r;
            float tot = 0.0f;
            for (int64_t g = 0, w0 = 0; w0 < kw; g++, w0 += gw) {
                const int64_t w1 = w0 + gw < kw ? w0 + gw : kw;
                const float gv = j < nrows ? takane_gs_at(gs, j, g) : 0.0f;
                bad |= !(__builtin_fabsf(gv) <= 3.4028234663852886e38f);
                tot = tot + (float)row_blocks_i8(q, pan, r, 2 * w0, 2 * w1) * gv;
            }
            out[j] = tot;
        }
    }
    return bad;
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

const takane_ternary_ukernel takane_ternary_ukernel_scalar = {NULL, NULL, dot_i8, dot_f32,
                                                             dot_i8_groups, NULL, NULL};
