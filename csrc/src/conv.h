/*
 * conv.h — what the convolution entry points (api_conv.c) and their framework (conv.c)
 * share: the handle's layout and one validated call. Private: not installed.
 */
#ifndef TAKANE_CONV_H
#define TAKANE_CONV_H

#include "internal.h"

#define TAKANE_CONV_DIM_MAX INT64_C(2147483647) /* every size and count of a call */

struct takane_conv_weights {
    int64_t cout, kh, kw, cin_g, groups, coutg, taps, k; /* k = taps * cin_g */
    /* Tap order of the gathered rows and the weight rows: (ky, kx) densely packed (tap t
     * at bit t * cin_g), or, when xmajor (one group and cin_g % 64 == 0 or cin_g == 32),
     * column-major: column kx holds its kh taps densely (tap (ky, kx) at bit
     * kx * colbits + ky * cin_g) padded to whole words (colbits = 64 * ceil(kh * cin_g
     * / 64); the padding bits are zero in weights and activations alike, so they add
     * nothing to any popcount). Then, for dilation_w 1, the row of output pixel (oy, ox)
     * is one contiguous window of a copy of kh input rows stacked per column (see
     * conv_rows_zstack). At 32 channels a 3x3 row is 6 words (3 columns of 2) instead of
     * 5: 20% more XOR-popcounts, but no per-pixel gather. */
    int xmajor;
    int64_t colbits; /* xmajor: bits per column (a multiple of 64) */
    int64_t rowk;    /* bits per weight / gathered row: kw * colbits if xmajor, else k */
    takane_weights **g;                                  /* one (coutg, k) handle per group */
    int32_t *tapcorr; /* [t * cout + o] = cin_g - 2 * popcount(w[o, tap t]) */
    int64_t nbytes;
};

/* One validated convolution call (batch >= 1): exactly one of xb / xf and of y / yb. */
typedef struct takane_conv_args {
    const takane_conv_weights *w;
    takane_conv2d_geometry geo;
    int64_t ho, wo;            /* output size */
    const uint64_t *xb;        /* packed NHWC input, or NULL: float input xf */
    const float *xf;           /* float NHWC input binarized against t */
    const float *t;            /* never NULL with xf: one threshold, or cin (t_per_channel) */
    int t_per_channel;
    const float *scale, *bias, *residual; /* cout each (residual: like y), or NULL */
    float *y;                  /* float output, or NULL: bits output yb against out_t */
    uint64_t *yb;
    const float *out_t;        /* one threshold, or cout (out_t_per_col) */
    int out_t_per_col;
    int threads;               /* as the entry point's (0 = default) */
} takane_conv_args;

/* conv.c: the framework for a validated call. TAKANE_ERR_NAN (float input) or
 * TAKANE_ERR_OUT_OF_MEMORY. */
takane_status takane_conv_run(const takane_kernel_set *ks, const takane_conv_args *a);
/* conv.c: max pooling of a validated call (batch, channels >= 1). */
void takane_pool_run(const takane_conv2d_geometry *geo, int64_t kernel_h, int64_t kernel_w,
                     int64_t cw, int64_t ho, int64_t wo, const uint64_t *x, uint64_t *y,
                     int threads);
/* conv.c: OR nbits bits of src starting at bit soff into dst starting at bit doff. */
void takane_bits_or(uint64_t *dst, int64_t doff, const uint64_t *src, int64_t soff,
                    int64_t nbits);

#endif /* TAKANE_CONV_H */
