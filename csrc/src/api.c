/*
 * api.c — the public entry points: validate every argument, answer empty problems,
 * pick the kernel set, run the framework. Nothing here aborts, prints or sets errno.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"


unsigned takane_abi_version(void) { return TAKANE_ABI_VERSION; }

const char *takane_version_string(void) {
#ifdef TAKANE_AVX512_EMULATION
    return TAKANE_VERSION_STRING " (test build: avx512 kernels emulated with SIMDe)";
#else
    return TAKANE_VERSION_STRING;
#endif
}

const char *takane_status_string(takane_status status) {
    switch (status) {
    case TAKANE_OK: return "ok";
    case TAKANE_ERR_NULL_POINTER: return "a non-empty operand is a NULL pointer";
    case TAKANE_ERR_NEGATIVE_DIMENSION: return "a dimension is negative";
    case TAKANE_ERR_K_TOO_LARGE: return "k exceeds TAKANE_MAX_K (2147483647)";
    case TAKANE_ERR_BAD_STRIDE: return "a stride is negative or makes output rows overlap";
    case TAKANE_ERR_NAN: return "NaN in activations or thresholds (NaN has no sign)";
    case TAKANE_ERR_PADDING_BITS: return "packed input has non-zero padding bits past k";
    case TAKANE_ERR_ISA_UNKNOWN: return "unknown ISA";
    case TAKANE_ERR_ISA_UNSUPPORTED: return "ISA not compiled in or not supported by this CPU/OS";
    case TAKANE_ERR_ENV_ISA:
        return "environment variable TAKANE_ISA names an unknown or unsupported ISA";
    case TAKANE_ERR_OUT_OF_MEMORY: return "out of memory";
    case TAKANE_ERR_BAD_THRESHOLD_LEN: return "threshold_len must be 1 or k";
    case TAKANE_ERR_BAD_THREADS: return "threads must be >= 0";
    case TAKANE_ERR_NOT_FINITE: return "a scale, bias or mean |x| activation scale is NaN or infinite";
    case TAKANE_ERR_BAD_GROUP_SIZE:
        return "group_size must be a positive multiple of 64 (and k a multiple of the format's block)";
    case TAKANE_ERR_BAD_ACTIVATIONS: return "unknown activations mode (TAKANE_ACTIVATIONS_*)";
    case TAKANE_ERR_BAD_GEOMETRY:
        return "invalid convolution/pooling geometry (kernel, stride, dilation, padding, pad "
               "value or groups), or the padded input is smaller than the kernel";
    }
    return "unknown status";
}

takane_status takane_pack_f32(int64_t rows, int64_t k, const float *x, int64_t x_row_stride,
                              const float *threshold, int64_t threshold_len, uint64_t *bits,
                              int64_t bits_row_stride) {
    TAKANE_TRY(takane_check_dims(rows, 0, k));
    TAKANE_TRY(takane_check_in_strides(x_row_stride, 0));
    TAKANE_TRY(takane_check_stride(rows, takane_words_for(k), bits_row_stride));
    TAKANE_TRY(takane_check_threshold(threshold, threshold_len, k, 1));
    if (rows == 0 || k == 0) return TAKANE_OK;
    if (!x || !bits) return TAKANE_ERR_NULL_POINTER;
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    const float *t = takane_threshold_or_zero(threshold);
    const int per_channel = takane_per_channel(threshold, threshold_len, k);
    for (int64_t r = 0; r < rows; r++)
        if (ks->pack_row(x + r * x_row_stride, k, t, per_channel, bits + r * bits_row_stride))
            return TAKANE_ERR_NAN;
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

/* Common validation of the two matmul entry points, up to (not including) x itself. */
static takane_status check_matmul(int64_t m, int64_t n, int64_t k, const void *x,
                                  int64_t x_row_stride, const uint64_t *w, int64_t w_row_stride,
                                  const int32_t *y, int64_t y_row_stride, int32_t threads) {
    TAKANE_TRY(takane_check_product(m, n, k, threads, x_row_stride, w_row_stride, y_row_stride, n));
    if (m == 0 || n == 0) return TAKANE_OK;
    TAKANE_TRY(takane_check_operands(k, x, w, y));
    return takane_check_padding(n, k, w, w_row_stride);
}

/* k == 0: every dot product of empty rows is 0. */
static void fill_zero(int64_t m, int64_t n, int32_t *y, int64_t ys) {
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) y[i * ys + j] = 0;
}

takane_status takane_binary_matmul(int64_t m, int64_t n, int64_t k, const uint64_t *x,
                                   int64_t x_row_stride, const uint64_t *w,
                                   int64_t w_row_stride, int32_t *y, int64_t y_row_stride,
                                   int32_t threads) {
    TAKANE_TRY(check_matmul(m, n, k, x, x_row_stride, w, w_row_stride, y, y_row_stride,
                            threads));
    if (m == 0 || n == 0) return TAKANE_OK;
    TAKANE_TRY(takane_check_padding(m, k, x, x_row_stride));
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    if (k == 0) fill_zero(m, n, y, y_row_stride);
    else takane_matmul_packed_run(ks, m, n, k, x, x_row_stride, w, w_row_stride, y,
                                  y_row_stride);
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

takane_status takane_binary_matmul_f32(int64_t m, int64_t n, int64_t k, const float *x,
                                       int64_t x_row_stride, const float *threshold,
                                       int64_t threshold_len, const uint64_t *w,
                                       int64_t w_row_stride, int32_t *y, int64_t y_row_stride,
                                       int32_t threads) {
    TAKANE_TRY(check_matmul(m, n, k, x, x_row_stride, w, w_row_stride, y, y_row_stride,
                            threads));
    TAKANE_TRY(takane_check_threshold(threshold, threshold_len, k, 1));
    if (m == 0 || n == 0) return TAKANE_OK;
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    if (k == 0)
        fill_zero(m, n, y, y_row_stride);
    else
        TAKANE_TRY(takane_matmul_f32_run(ks, m, n, k, x, x_row_stride,
                                         takane_threshold_or_zero(threshold),
                                         takane_per_channel(threshold, threshold_len, k), w,
                                         w_row_stride, y, y_row_stride));
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

/* ---- prepacked weights ---------------------------------------------------------------- */

void takane_fill_panels(takane_weights *h, const uint64_t *w, int64_t w_row_stride) {
    const int64_t n = h->n, kw = h->kw;
    /* panel p, word q, row r <- w[(p*8 + r) * stride + q]; rows >= n are zero */
    for (int64_t p = 0; p < h->npanels; p++) {
        uint64_t *panel = h->panels + p * kw * TAKANE_PANEL_ROWS;
        for (int r = 0; r < TAKANE_PANEL_ROWS; r++) {
            const int64_t row = p * TAKANE_PANEL_ROWS + r;
            const uint64_t *src = row < n ? w + row * w_row_stride : NULL;
            for (int64_t q = 0; q < kw; q++)
                panel[q * TAKANE_PANEL_ROWS + r] = src ? src[q] : 0;
        }
    }
}

takane_status takane_weights_create(int64_t n, int64_t k, const uint64_t *w,
                                    int64_t w_row_stride, takane_weights **out) {
    if (!out) return TAKANE_ERR_NULL_POINTER;
    *out = NULL;
    TAKANE_TRY(takane_check_dims(n, 0, k));
    const int64_t kw = takane_words_for(k);
    TAKANE_TRY(takane_check_in_strides(w_row_stride, 0));
    if (n > 0 && kw > 0 && !w) return TAKANE_ERR_NULL_POINTER;
    TAKANE_TRY(takane_check_padding(n, k, w, w_row_stride));
    takane_weights *h = (takane_weights *)calloc(1, sizeof *h);
    if (!h) return TAKANE_ERR_OUT_OF_MEMORY;
    h->n = n, h->k = k, h->kw = kw;
    h->npanels = (n + TAKANE_PANEL_ROWS - 1) / TAKANE_PANEL_ROWS;
    if (h->npanels > 0 && kw > 0) {
        const double words = (double)h->npanels * (double)kw * TAKANE_PANEL_ROWS;
        if (words * 8.0 > (double)SIZE_MAX / 2) {
            free(h);
            return TAKANE_ERR_OUT_OF_MEMORY;
        }
        /* 64-byte aligned so each panel word-group is one aligned 512-bit load */
        h->panels = (uint64_t *)takane_panels_alloc((size_t)words * 8);
        if (!h->panels) {
            free(h);
            return TAKANE_ERR_OUT_OF_MEMORY;
        }
        takane_fill_panels(h, w, w_row_stride);
    }
    *out = h;
    return TAKANE_OK;
}

void takane_weights_free(takane_weights *weights) {
    if (!weights) return;
    if (weights->storage == TAKANE_STORAGE_CALLER) return; /* the caller owns the memory */
    if (weights->storage == TAKANE_STORAGE_SEPARATE) {
        takane_panels_free(weights->panels);
        free(weights); /* calloc'd apart */
    } else {
        takane_panels_free(weights); /* TAKANE_STORAGE_BLOCK: struct, panels and scales */
    }
}

takane_status takane_weights_info(const takane_weights *weights, int64_t *n, int64_t *k,
                                  int64_t *nbytes) {
    if (!weights) return TAKANE_ERR_NULL_POINTER;
    if (n) *n = weights->n;
    if (k) *k = weights->k;
    if (nbytes)
        *nbytes = weights->npanels * weights->kw * TAKANE_PANEL_ROWS * 8 +
                  (weights->group_scale ? weights->npanels * TAKANE_PANEL_ROWS *
                                              takane_handle_ngroups(weights) * 4 : 0);
    return TAKANE_OK;
}

/* Shared front half of the two prepacked entry points. */
static takane_status check_prepacked(const takane_weights *w, int64_t m, const void *x,
                                     int64_t x_row_stride, const int32_t *y,
                                     int64_t y_row_stride, int32_t threads) {
    TAKANE_TRY(takane_check_handle(w, m));
    TAKANE_TRY(takane_check_product(m, w->n, w->k, threads, x_row_stride, 0, y_row_stride,
                                    w->n));
    if (m == 0 || w->n == 0) return TAKANE_OK;
    return takane_check_operands(w->k, x, w, y);
}

/* The product of a validated non-empty prepacked call: packed x, or float x (x NULL)
 * binarized against t. */
static takane_status run_prepacked(const takane_weights *w, int64_t m, const uint64_t *x,
                                   const float *xf, int64_t xs, const float *t,
                                   int per_channel, int32_t *y, int64_t ys, int32_t threads) {
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    if (w->k == 0)
        fill_zero(m, w->n, y, ys);
    else if (ks->matmul->panel_tile)
        TAKANE_TRY(takane_matmul_prepacked_run(ks, w, m, x, xs, xf, t, per_channel, y, ys,
                                               threads));
    else
        return TAKANE_ERR_ISA_UNSUPPORTED; /* every registered set has a panel kernel */
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

takane_status takane_binary_matmul_prepacked(const takane_weights *weights, int64_t m,
                                             const uint64_t *x, int64_t x_row_stride, int32_t *y,
                                             int64_t y_row_stride, int32_t threads) {
    TAKANE_TRY(check_prepacked(weights, m, x, x_row_stride, y, y_row_stride, threads));
    if (m == 0 || weights->n == 0) return TAKANE_OK;
    TAKANE_TRY(takane_check_padding(m, weights->k, x, x_row_stride));
    return run_prepacked(weights, m, x, NULL, x_row_stride, NULL, 0, y, y_row_stride, threads);
}

takane_status takane_binary_matmul_prepacked_f32(const takane_weights *weights, int64_t m,
                                                 const float *x, int64_t x_row_stride,
                                                 const float *threshold, int64_t threshold_len,
                                                 int32_t *y, int64_t y_row_stride,
                                                 int32_t threads) {
    TAKANE_TRY(check_prepacked(weights, m, x, x_row_stride, y, y_row_stride, threads));
    TAKANE_TRY(takane_check_threshold(threshold, threshold_len, weights->k, 1));
    if (m == 0 || weights->n == 0) return TAKANE_OK;
    return run_prepacked(weights, m, NULL, x, x_row_stride, takane_threshold_or_zero(threshold),
                         takane_per_channel(threshold, threshold_len, weights->k), y,
                         y_row_stride, threads);
}
