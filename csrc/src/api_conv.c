/*
 * api_conv.c — the convolution and pooling entry points: the handle (build, free, info),
 * geometry checks, argument validation, kernel selection; then the framework (conv.c).
 * Baseline ISA. See conv.c for how a convolution becomes a GEMM and the handle's tap order.
 */
#include <stdlib.h>
#include <string.h>

#include "conv.h"

#define DIM_MAX TAKANE_CONV_DIM_MAX

static int popcount_bits(const uint64_t *src, int64_t words) {
    int n = 0;
    for (int64_t q = 0; q < words; q++) n += __builtin_popcountll(src[q]);
    return n;
}

void takane_conv_weights_free(takane_conv_weights *h) {
    if (!h) return;
    if (h->g)
        for (int64_t g = 0; g < h->groups; g++) takane_weights_free(h->g[g]);
    free(h->g);
    free(h->tapcorr);
    free(h);
}

takane_status takane_conv_weights_create(int64_t cout, int64_t kh, int64_t kw, int64_t cin,
                                         int64_t groups, const uint64_t *w,
                                         takane_conv_weights **out) {
    if (!out) return TAKANE_ERR_NULL_POINTER;
    *out = NULL;
    if (cout < 0 || kh < 0 || kw < 0 || cin < 0 || groups < 0)
        return TAKANE_ERR_NEGATIVE_DIMENSION;
    if (!cout || !kh || !kw || !cin || !groups || cout > DIM_MAX || kh > DIM_MAX ||
        kw > DIM_MAX || cin > DIM_MAX || cout % groups)
        return TAKANE_ERR_BAD_GEOMETRY;
    if ((double)kh * (double)kw * (double)cin > (double)TAKANE_MAX_K)
        return TAKANE_ERR_K_TOO_LARGE;
    if (!w) return TAKANE_ERR_NULL_POINTER;
    const int64_t cw = takane_words_for(cin), taps = kh * kw, k = taps * cin;
    const int64_t coutg = cout / groups;
    const int xmajor = groups == 1 && (cin % 64 == 0 || cin == 32);
    const int64_t colbits = xmajor ? 64 * ((kh * cin + 63) / 64) : 0;
    const int64_t rowk = xmajor ? kw * colbits : k, kwords = takane_words_for(rowk);
    if (rowk > TAKANE_MAX_K) return TAKANE_ERR_K_TOO_LARGE;
    if ((double)cout * (double)taps * (double)cw * 8.0 > (double)SIZE_MAX / 4)
        return TAKANE_ERR_OUT_OF_MEMORY;
    TAKANE_TRY(takane_check_padding(cout * taps, cin, w, cw));
    takane_status st;
    takane_conv_weights *h = (takane_conv_weights *)calloc(1, sizeof *h);
    uint64_t *rows = NULL;
    if (!h) return TAKANE_ERR_OUT_OF_MEMORY;
    h->cout = cout, h->kh = kh, h->kw = kw, h->cin_g = cin, h->groups = groups;
    h->coutg = coutg, h->taps = taps, h->k = k;
    h->xmajor = xmajor, h->colbits = colbits, h->rowk = rowk;
    h->g = (takane_weights **)calloc((size_t)groups, sizeof *h->g);
    h->tapcorr = (int32_t *)malloc((size_t)(taps * cout) * sizeof(int32_t));
    rows = (uint64_t *)malloc((size_t)(coutg * kwords) * sizeof(uint64_t));
    if (!h->g || !h->tapcorr || !rows) {
        st = TAKANE_ERR_OUT_OF_MEMORY;
        goto fail;
    }
    h->nbytes = (int64_t)sizeof *h + taps * cout * 4;
    for (int64_t g = 0; g < groups; g++) {
        memset(rows, 0, (size_t)(coutg * kwords) * sizeof(uint64_t));
        for (int64_t o = 0; o < coutg; o++) {
            const int64_t oc = g * coutg + o;
            for (int64_t t = 0; t < taps; t++) {
                const uint64_t *src = w + (oc * taps + t) * cw;
                /* t = ky * kw + kx */
                const int64_t pos = xmajor ? (t % kw) * colbits + (t / kw) * cin : t * cin;
                takane_bits_or(rows + o * kwords, pos, src, 0, cin);
                h->tapcorr[t * cout + oc] = (int32_t)(cin - 2 * (int64_t)popcount_bits(src, cw));
            }
        }
        if ((st = takane_weights_create(coutg, rowk, rows, kwords, &h->g[g])) != TAKANE_OK) goto fail;
        /* The products' k is the true bit count (the column layout's padding bits are
         * zero on both sides and count nothing): the framework's k - 2 * popcount is
         * then the dot product itself, while kw (rowk's words) stays the row length. */
        h->g[g]->k = k;
        h->nbytes += h->g[g]->npanels * kwords * TAKANE_PANEL_ROWS * 8;
    }
    free(rows);
    *out = h;
    return TAKANE_OK;
fail:
    free(rows);
    takane_conv_weights_free(h);
    return st;
}

takane_status takane_conv_weights_info(const takane_conv_weights *h, int64_t *out_channels,
                                       int64_t *in_channels, int64_t *kernel_h,
                                       int64_t *kernel_w, int64_t *groups, int64_t *nbytes) {
    if (!h) return TAKANE_ERR_NULL_POINTER;
    if (out_channels) *out_channels = h->cout;
    if (in_channels) *in_channels = h->cin_g * h->groups;
    if (kernel_h) *kernel_h = h->kh;
    if (kernel_w) *kernel_w = h->kw;
    if (groups) *groups = h->groups;
    if (nbytes) *nbytes = h->nbytes;
    return TAKANE_OK;
}

/* Validate a geometry against a kernel and compute the output size. */
static takane_status check_geometry(const takane_conv2d_geometry *g, int64_t kh, int64_t kw,
                                    int64_t *ho, int64_t *wo) {
    if (!g) return TAKANE_ERR_NULL_POINTER;
    if (g->batch < 0 || g->in_h < 0 || g->in_w < 0) return TAKANE_ERR_NEGATIVE_DIMENSION;
    if (g->batch > DIM_MAX || g->in_h < 1 || g->in_h > DIM_MAX || g->in_w < 1 ||
        g->in_w > DIM_MAX)
        return TAKANE_ERR_BAD_GEOMETRY;
    const int64_t v[] = {g->stride_h, g->stride_w, g->dilation_h, g->dilation_w};
    for (int i = 0; i < 4; i++)
        if (v[i] < 1 || v[i] > DIM_MAX) return TAKANE_ERR_BAD_GEOMETRY;
    const int64_t p[] = {g->pad_top, g->pad_bottom, g->pad_left, g->pad_right};
    for (int i = 0; i < 4; i++)
        if (p[i] < 0 || p[i] > DIM_MAX) return TAKANE_ERR_BAD_GEOMETRY;
    if (g->pad_value < -1 || g->pad_value > 1) return TAKANE_ERR_BAD_GEOMETRY;
    /* all terms <= 2^31: no overflow */
    const int64_t eh = g->dilation_h * (kh - 1) + 1, ew = g->dilation_w * (kw - 1) + 1;
    const int64_t ph = g->in_h + g->pad_top + g->pad_bottom;
    const int64_t pw = g->in_w + g->pad_left + g->pad_right;
    if (ph < eh || pw < ew) return TAKANE_ERR_BAD_GEOMETRY;
    *ho = (ph - eh) / g->stride_h + 1;
    *wo = (pw - ew) / g->stride_w + 1;
    return TAKANE_OK;
}

takane_status takane_conv2d_output_size(const takane_conv_weights *w,
                                        const takane_conv2d_geometry *g, int64_t *out_h,
                                        int64_t *out_w) {
    if (!w || !out_h || !out_w) return TAKANE_ERR_NULL_POINTER;
    return check_geometry(g, w->kh, w->kw, out_h, out_w);
}

/* Every conv entry point: validate (float_input: x is xf, else xb; bits: the output is yb,
 * else y), then the framework (conv.c) on the selected kernel set. */
static takane_status conv_call(const takane_conv_weights *w, const takane_conv2d_geometry *geo,
                               int float_input, const uint64_t *xb, const float *xf,
                               const float *t, int64_t t_len, const float *scale,
                               const float *bias, const float *residual, const float *out_t,
                               int64_t out_t_len, int bits, float *y, uint64_t *yb,
                               int32_t threads) {
    if (!w) return TAKANE_ERR_NULL_POINTER;
    int64_t ho, wo;
    TAKANE_TRY(check_geometry(geo, w->kh, w->kw, &ho, &wo));
    TAKANE_TRY(takane_check_threads(threads));
    const int64_t cin = w->cin_g * w->groups, cw = takane_words_for(cin), cout = w->cout;
    if (float_input) TAKANE_TRY(takane_check_threshold(t, t_len, cin, 1));
    if (geo->batch == 0) return TAKANE_OK;
    const int64_t npix = geo->batch * geo->in_h * geo->in_w; /* each <= 2^31: may overflow */
    if ((double)geo->batch * (double)geo->in_h * (double)geo->in_w * (double)cin > 9.0e18 ||
        (double)geo->batch * (double)ho * (double)wo * (double)cout > 9.0e18)
        return TAKANE_ERR_BAD_GEOMETRY; /* no buffer of that many elements can exist */
    if ((float_input ? !xf : !xb) || (bits ? !yb : !y)) return TAKANE_ERR_NULL_POINTER;
    if (bits) TAKANE_TRY(takane_check_threshold(out_t, out_t_len, cout, 0));
    TAKANE_TRY(takane_check_scale_bias(scale, bias, cout));
    if (!float_input) TAKANE_TRY(takane_check_padding(npix, cin, xb, cw));
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    takane_conv_args a;
    memset(&a, 0, sizeof a);
    a.w = w, a.geo = *geo, a.ho = ho, a.wo = wo;
    if (float_input) {
        a.xf = xf;
        a.t = takane_threshold_or_zero(t);
        a.t_per_channel = takane_per_channel(t, t_len, cin);
    } else {
        a.xb = xb;
    }
    a.scale = scale, a.bias = bias, a.residual = residual;
    if (bits) {
        a.yb = yb, a.out_t = out_t, a.out_t_per_col = takane_per_channel(out_t, out_t_len, cout);
    } else {
        a.y = y;
    }
    a.threads = threads;
    TAKANE_TRY(takane_conv_run(ks, &a));
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

takane_status takane_binary_conv2d(const takane_conv_weights *w, const takane_conv2d_geometry *g,
                                   const uint64_t *x, const float *scale, const float *bias,
                                   const float *residual, float *y, int32_t threads) {
    return conv_call(w, g, 0, x, NULL, NULL, 0, scale, bias, residual, NULL, 0, 0, y, NULL,
                     threads);
}

takane_status takane_binary_conv2d_bits(const takane_conv_weights *w,
                                        const takane_conv2d_geometry *g, const uint64_t *x,
                                        const float *scale, const float *bias,
                                        const float *residual, const float *out_threshold,
                                        int64_t out_threshold_len, uint64_t *y,
                                        int32_t threads) {
    return conv_call(w, g, 0, x, NULL, NULL, 0, scale, bias, residual, out_threshold,
                     out_threshold_len, 1, NULL, y, threads);
}

takane_status takane_binary_conv2d_f32(const takane_conv_weights *w,
                                       const takane_conv2d_geometry *g, const float *x,
                                       const float *threshold, int64_t threshold_len,
                                       const float *scale, const float *bias,
                                       const float *residual, float *y, int32_t threads) {
    return conv_call(w, g, 1, NULL, x, threshold, threshold_len, scale, bias, residual, NULL,
                     0, 0, y, NULL, threads);
}

takane_status takane_binary_conv2d_f32_bits(const takane_conv_weights *w,
                                            const takane_conv2d_geometry *g, const float *x,
                                            const float *threshold, int64_t threshold_len,
                                            const float *scale, const float *bias,
                                            const float *residual, const float *out_threshold,
                                            int64_t out_threshold_len, uint64_t *y,
                                            int32_t threads) {
    return conv_call(w, g, 1, NULL, x, threshold, threshold_len, scale, bias, residual,
                     out_threshold, out_threshold_len, 1, NULL, y, threads);
}

takane_status takane_binary_max_pool2d(const takane_conv2d_geometry *geo, int64_t channels,
                                       int64_t kernel_h, int64_t kernel_w, const uint64_t *x,
                                       uint64_t *y, int32_t threads) {
    if (!geo) return TAKANE_ERR_NULL_POINTER;
    if (channels < 0 || kernel_h < 0 || kernel_w < 0) return TAKANE_ERR_NEGATIVE_DIMENSION;
    if (channels > DIM_MAX || kernel_h < 1 || kernel_h > DIM_MAX || kernel_w < 1 ||
        kernel_w > DIM_MAX)
        return TAKANE_ERR_BAD_GEOMETRY;
    int64_t ho, wo;
    TAKANE_TRY(check_geometry(geo, kernel_h, kernel_w, &ho, &wo));
    if (geo->dilation_h != 1 || geo->dilation_w != 1 || geo->pad_value != 0 ||
        geo->pad_top > kernel_h / 2 || geo->pad_bottom > kernel_h / 2 ||
        geo->pad_left > kernel_w / 2 || geo->pad_right > kernel_w / 2)
        return TAKANE_ERR_BAD_GEOMETRY;
    TAKANE_TRY(takane_check_threads(threads));
    if (geo->batch == 0 || channels == 0) return TAKANE_OK;
    const int64_t cw = takane_words_for(channels);
    if ((double)geo->batch * (double)geo->in_h * (double)geo->in_w * (double)cw > 1.0e18 ||
        (double)geo->batch * (double)ho * (double)wo * (double)cw > 1.0e18)
        return TAKANE_ERR_BAD_GEOMETRY;
    if (!x || !y) return TAKANE_ERR_NULL_POINTER;
    TAKANE_TRY(takane_check_padding(geo->batch * geo->in_h * geo->in_w, channels, x, cw));
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    takane_pool_run(geo, kernel_h, kernel_w, cw, ho, wo, x, y, threads);
    /* portable code (the OR loop is memory-bound and auto-vectorized), run under the
     * active kernel set */
    takane_note_used(ks->isa);
    return TAKANE_OK;
}
