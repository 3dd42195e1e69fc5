/*
 * api_layers.c — the layer entry points (binary_linear*, binary_weight_matmul): validate
 * every argument, answer empty problems, pick the kernel set, run the framework.
 * Same conventions as api.c: nothing aborts, prints or sets errno.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "layers.h"

/* The prepacked entry points pass their handle as pw with from_handle set: the handle and
 * m are checked first (NULL handle, negative m), then its n and k stand for the call's. */
static takane_status handle_dims(int from_handle, const takane_weights *pw, int64_t m,
                                 int64_t *n, int64_t *k) {
    if (!from_handle) return TAKANE_OK;
    TAKANE_TRY(takane_check_handle(pw, m));
    *n = pw->n, *k = pw->k;
    return TAKANE_OK;
}

/*
 * Everything the eight binary_linear entry points share (handle: see handle_dims). The
 * output y has rows of n floats, or of ceil(n/64) words when bits. On return with
 * TAKANE_OK, *empty says m == 0 or n == 0 (nothing to compute, nothing else was checked
 * beyond dims and strides).
 */
static takane_status check_linear(int from_handle, int64_t m, int64_t *n_io, int64_t *k_io,
                                  const void *x, int64_t x_row_stride, const takane_weights *pw,
                                  const uint64_t *w, int64_t w_row_stride,
                                  const float *scale, const float *bias, int bits, const void *y,
                                  int64_t y_row_stride, int32_t threads, int *empty) {
    TAKANE_TRY(handle_dims(from_handle, pw, m, n_io, k_io));
    const int64_t n = *n_io, k = *k_io;
    TAKANE_TRY(takane_check_product(m, n, k, threads, x_row_stride, w_row_stride, y_row_stride,
                                    bits ? takane_words_for(n) : n));
    *empty = m == 0 || n == 0;
    if (*empty) return TAKANE_OK;
    TAKANE_TRY(takane_check_operands(k, x, pw ? (const void *)pw : (const void *)w, y));
    /* a handle's padding was checked when it was created */
    if (!pw) TAKANE_TRY(takane_check_padding(n, k, w, w_row_stride));
    return takane_check_scale_bias(scale, bias, n);
}

static takane_status run_linear(takane_linear_args *a) {
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    TAKANE_TRY(takane_linear_run(ks, a));
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

/* Packed activations: validate x, row_scale and build the arguments. With a handle pw
 * (from_handle), n and k are the handle's and w is unused. */
static takane_status linear_packed(int from_handle, const takane_weights *pw, int64_t m,
                                   int64_t n, int64_t k,
                                   const uint64_t *x, int64_t x_row_stride, const uint64_t *w,
                                   int64_t w_row_stride,
                                   const float *scale, const float *bias, const float *row_scale,
                                   int bits, const float *out_t, int64_t out_t_len, float *y,
                                   uint64_t *yb, int64_t y_row_stride, int32_t threads) {
    int empty;
    const takane_status st = check_linear(from_handle, m, &n, &k, x, x_row_stride, pw, w,
                                          w_row_stride, scale, bias, bits,
                                          bits ? (const void *)yb : (const void *)y,
                                          y_row_stride, threads, &empty);
    if (st != TAKANE_OK || empty) return st;
    TAKANE_TRY(takane_check_padding(m, k, x, x_row_stride));
    TAKANE_TRY(takane_check_finite(row_scale, m));
    if (bits) TAKANE_TRY(takane_check_threshold(out_t, out_t_len, n, 0));
    takane_linear_args a = {0};
    a.m = m, a.n = n, a.k = k;
    a.xb = x, a.xbs = x_row_stride;
    a.t = takane_threshold_or_zero(NULL);
    a.row_scale = row_scale;
    a.w = w, a.ws = w_row_stride, a.pw = pw, a.threads = threads;
    a.scale = scale, a.bias = bias;
    a.out_t = bits ? out_t : NULL, a.out_t_per_col = takane_per_channel(out_t, out_t_len, n);
    a.y = y, a.yb = yb, a.ys = y_row_stride;
    return run_linear(&a);
}

/* Float activations: validate threshold and build the arguments (pw: as linear_packed). */
static takane_status linear_f32(int from_handle, const takane_weights *pw, int64_t m,
                                int64_t n, int64_t k,
                                const float *x,
                                int64_t x_row_stride, const float *threshold,
                                int64_t threshold_len, int32_t activation_scale,
                                const uint64_t *w, int64_t w_row_stride, const float *scale,
                                const float *bias, int bits, const float *out_t,
                                int64_t out_t_len, float *y, uint64_t *yb, int64_t y_row_stride,
                                int32_t threads) {
    int empty;
    const takane_status st = check_linear(from_handle, m, &n, &k, x, x_row_stride, pw, w,
                                          w_row_stride, scale, bias, bits,
                                          bits ? (const void *)yb : (const void *)y,
                                          y_row_stride, threads, &empty);
    if (st != TAKANE_OK) return st;
    TAKANE_TRY(takane_check_threshold(threshold, threshold_len, k, 1));
    if (empty) return TAKANE_OK;
    if (bits) TAKANE_TRY(takane_check_threshold(out_t, out_t_len, n, 0));
    takane_linear_args a = {0};
    a.m = m, a.n = n, a.k = k;
    a.float_x = 1;
    a.xf = x, a.xfs = x_row_stride;
    a.t = takane_threshold_or_zero(threshold);
    a.per_channel = takane_per_channel(threshold, threshold_len, k);
    a.activation_scale = activation_scale != 0;
    a.w = w, a.ws = w_row_stride, a.pw = pw, a.threads = threads;
    a.scale = scale, a.bias = bias;
    a.out_t = bits ? out_t : NULL, a.out_t_per_col = takane_per_channel(out_t, out_t_len, n);
    a.y = y, a.yb = yb, a.ys = y_row_stride;
    return run_linear(&a);
}

takane_status takane_binary_linear(int64_t m, int64_t n, int64_t k, const uint64_t *x,
                                   int64_t x_row_stride, const uint64_t *w, int64_t w_row_stride,
                                   const float *scale, const float *bias, const float *row_scale,
                                   float *y, int64_t y_row_stride, int32_t threads) {
    return linear_packed(0, NULL, m, n, k, x, x_row_stride, w, w_row_stride, scale, bias, row_scale, 0,
                         NULL, 0, y, NULL, y_row_stride, threads);
}

takane_status takane_binary_linear_f32(int64_t m, int64_t n, int64_t k, const float *x,
                                       int64_t x_row_stride, const float *threshold,
                                       int64_t threshold_len, int32_t activation_scale,
                                       const uint64_t *w, int64_t w_row_stride,
                                       const float *scale, const float *bias, float *y,
                                       int64_t y_row_stride, int32_t threads) {
    return linear_f32(0, NULL, m, n, k, x, x_row_stride, threshold, threshold_len, activation_scale, w,
                      w_row_stride, scale, bias, 0, NULL, 0, y, NULL, y_row_stride, threads);
}

takane_status takane_binary_linear_bits(int64_t m, int64_t n, int64_t k, const uint64_t *x,
                                        int64_t x_row_stride, const uint64_t *w,
                                        int64_t w_row_stride, const float *scale,
                                        const float *bias, const float *row_scale,
                                        const float *out_threshold, int64_t out_threshold_len,
                                        uint64_t *y, int64_t y_row_stride, int32_t threads) {
    return linear_packed(0, NULL, m, n, k, x, x_row_stride, w, w_row_stride, scale, bias, row_scale, 1,
                         out_threshold, out_threshold_len, NULL, y, y_row_stride, threads);
}

takane_status takane_binary_linear_f32_bits(int64_t m, int64_t n, int64_t k, const float *x,
                                            int64_t x_row_stride, const float *threshold,
                                            int64_t threshold_len, int32_t activation_scale,
                                            const uint64_t *w, int64_t w_row_stride,
                                            const float *scale, const float *bias,
                                            const float *out_threshold,
                                            int64_t out_threshold_len, uint64_t *y,
                                            int64_t y_row_stride, int32_t threads) {
    return linear_f32(0, NULL, m, n, k, x, x_row_stride, threshold, threshold_len, activation_scale, w,
                      w_row_stride, scale, bias, 1, out_threshold, out_threshold_len, NULL, y,
                      y_row_stride, threads);
}

takane_status takane_binary_weight_matmul(int64_t m, int64_t n, int64_t k, const float *x,
                                          int64_t x_row_stride, const uint64_t *w,
                                          int64_t w_row_stride, const float *in_scale,
                                          const float *scale, const float *bias, float *y,
                                          int64_t y_row_stride, int32_t threads) {
    TAKANE_TRY(takane_check_product(m, n, k, threads, x_row_stride, w_row_stride, y_row_stride,
                                    n));
    if (m == 0 || n == 0) return TAKANE_OK;
    TAKANE_TRY(takane_check_operands(k, x, w, y));
    TAKANE_TRY(takane_check_padding(n, k, w, w_row_stride));
    TAKANE_TRY(takane_check_finite(in_scale, k));
    TAKANE_TRY(takane_check_scale_bias(scale, bias, n));
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    TAKANE_TRY(takane_wfloat_run(ks, m, n, k, x, x_row_stride, w, w_row_stride, in_scale, scale,
                                 bias, y, y_row_stride));
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

/* ---- prepacked weights ---------------------------------------------------------------- */

takane_status takane_binary_linear_prepacked(const takane_weights *weights, int64_t m,
                                             const uint64_t *x, int64_t x_row_stride,
                                             const float *scale, const float *bias,
                                             const float *row_scale, float *y,
                                             int64_t y_row_stride, int32_t threads) {
    return linear_packed(1, weights, m, 0, 0, x, x_row_stride, NULL, 0, scale,
                         bias, row_scale, 0, NULL, 0, y, NULL, y_row_stride, threads);
}

takane_status takane_binary_linear_prepacked_f32(const takane_weights *weights, int64_t m,
                                                 const float *x, int64_t x_row_stride,
                                                 const float *threshold, int64_t threshold_len,
                                                 int32_t activation_scale, const float *scale,
                                                 const float *bias, float *y,
                                                 int64_t y_row_stride, int32_t threads) {
    return linear_f32(1, weights, m, 0, 0, x, x_row_stride, threshold,
                      threshold_len, activation_scale, NULL, 0, scale, bias, 0, NULL, 0, y,
                      NULL, y_row_stride, threads);
}

takane_status takane_binary_linear_prepacked_bits(const takane_weights *weights, int64_t m,
                                                  const uint64_t *x, int64_t x_row_stride,
                                                  const float *scale, const float *bias,
                                                  const float *row_scale,
                                                  const float *out_threshold,
                                                  int64_t out_threshold_len, uint64_t *y,
                                                  int64_t y_row_stride, int32_t threads) {
    return linear_packed(1, weights, m, 0, 0, x, x_row_stride, NULL, 0, scale,
                         bias, row_scale, 1, out_threshold, out_threshold_len, NULL, y,
                         y_row_stride, threads);
}

takane_status takane_binary_linear_prepacked_f32_bits(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *threshold, int64_t threshold_len, int32_t activation_scale, const float *scale,
    const float *bias, const float *out_threshold, int64_t out_threshold_len, uint64_t *y,
    int64_t y_row_stride, int32_t threads) {
    return linear_f32(1, weights, m, 0, 0, x, x_row_stride, threshold,
                      threshold_len, activation_scale, NULL, 0, scale, bias, 1, out_threshold,
                      out_threshold_len, NULL, y, y_row_stride, threads);
}

takane_status takane_binary_weight_matmul_prepacked(const takane_weights *weights, int64_t m,
                                                    const float *x, int64_t x_row_stride,
                                                    const float *in_scale, const float *scale,
                                                    const float *bias, float *y,
                                                    int64_t y_row_stride, int32_t threads) {
    TAKANE_TRY(takane_check_handle(weights, m));
    const int64_t n = weights->n, k = weights->k;
    TAKANE_TRY(takane_check_product(m, n, k, threads, x_row_stride, 0, y_row_stride, n));
    if (m == 0 || n == 0) return TAKANE_OK;
    TAKANE_TRY(takane_check_operands(k, x, weights, y));
    TAKANE_TRY(takane_check_finite(in_scale, k));
    TAKANE_TRY(takane_check_scale_bias(scale, bias, n));
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    /* a handle made from Q1_0 carries its block scales: part of the weights */
    TAKANE_TRY(takane_wfloat_prepacked_run(ks, weights, m, x, x_row_stride, in_scale, scale,
                                           weights->group_scale, weights->group_size, bias, y,
                                           y_row_stride, threads));
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

/* ---- group scales and Q8_0 activations (the *_ex entry points) ------------------------ */

/* Everything but the weights: dims, strides, NULLs, group size, finiteness, mode. */
static takane_status check_ex(int64_t m, int64_t n, int64_t k, const float *x,
                              int64_t x_row_stride, const float *in_scale, const float *scale,
                              const float *group_scale, int64_t group_size, const float *bias,
                              int32_t activations, const float *y, int64_t y_row_stride,
                              int32_t threads, int *empty) {
    TAKANE_TRY(takane_check_product(m, n, k, threads, x_row_stride, 0, y_row_stride, n));
    if (activations != TAKANE_ACTIVATIONS_F32 && activations != TAKANE_ACTIVATIONS_Q8_0)
        return TAKANE_ERR_BAD_ACTIVATIONS;
    TAKANE_TRY(takane_check_group_size(group_scale, group_size));
    *empty = m == 0 || n == 0;
    if (*empty) return TAKANE_OK;
    /* x only: the weights (canonical rows or a handle) are the callers' to check */
    TAKANE_TRY(takane_check_operands(k, x, x, y));
    TAKANE_TRY(takane_check_finite(in_scale, k));
    /* group scales are checked while they are read (wq8.c, wfloat.c): a separate pass
     * over N * K / G floats cost ~10% of a GEMV */
    return takane_check_scale_bias(scale, bias, n);
}

static takane_status run_ex(const takane_weights *w, int64_t m, const float *x,
                            int64_t x_row_stride, const float *in_scale, const float *scale,
                            const float *group_scale, int64_t group_size, const float *bias,
                            int32_t activations, float *y, int64_t y_row_stride,
                            int32_t threads) {
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    if (activations == TAKANE_ACTIVATIONS_Q8_0)
        TAKANE_TRY(takane_wq8_prepacked_run(ks, w, m, x, x_row_stride, in_scale, scale,
                                            group_scale, group_size, bias, y, y_row_stride,
                                            threads));
    else
        TAKANE_TRY(takane_wfloat_prepacked_run(ks, w, m, x, x_row_stride, in_scale, scale,
                                               group_scale, group_size, bias, y, y_row_stride,
                                               threads));
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

takane_status takane_binary_weight_matmul_ex(int64_t m, int64_t n, int64_t k, const float *x,
                                             int64_t x_row_stride, const uint64_t *w,
                                             int64_t w_row_stride, const float *in_scale,
                                             const float *scale, const float *group_scale,
                                             int64_t group_size, const float *bias,
                                             int32_t activations, float *y,
                                             int64_t y_row_stride, int32_t threads) {
    int empty;
    takane_status st = check_ex(m, n, k, x, x_row_stride, in_scale, scale, group_scale,
                                group_size, bias, activations, y, y_row_stride, threads, &empty);
    if (st != TAKANE_OK) return st;
    TAKANE_TRY(takane_check_in_strides(w_row_stride, 0));
    if (empty) return TAKANE_OK;
    if (k > 0 && !w) return TAKANE_ERR_NULL_POINTER;
    takane_weights *h;
    TAKANE_TRY(takane_weights_create(n, k, w, w_row_stride, &h));
    st = run_ex(h, m, x, x_row_stride, in_scale, scale, group_scale, group_size, bias,
                activations, y, y_row_stride, threads);
    takane_weights_free(h);
    return st;
}

takane_status takane_binary_weight_matmul_prepacked_ex(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *in_scale, const float *scale, const float *group_scale, int64_t group_size,
    const float *bias, int32_t activations, float *y, int64_t y_row_stride, int32_t threads) {
    TAKANE_TRY(takane_check_handle(weights, m));
    int empty;
    const takane_status st = check_ex(m, weights->n, weights->k, x, x_row_stride, in_scale,
                                      scale, group_scale, group_size, bias, activations, y,
                                      y_row_stride, threads, &empty);
    if (st != TAKANE_OK || empty) return st;
    if (weights->group_scale) { /* a handle made from Q1_0 carries its block scales */
        if (group_scale) return TAKANE_ERR_BAD_GROUP_SIZE;
        group_scale = weights->group_scale, group_size = weights->group_size;
    }
    return run_ex(weights, m, x, x_row_stride, in_scale, scale, group_scale, group_size, bias,
                  activations, y, y_row_stride, threads);
}
