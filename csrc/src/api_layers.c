/*
 * api_layers.c — the layer entry points (binary_linear*, binary_weight_matmul): validate
 * every argument, answer empty problems, pick the kernel set, run the framework.
 * Same conventions as api.c: nothing aborts, prints or sets errno.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "layers.h"

static takane_status check_dims(int64_t m, int64_t n, int64_t k, int32_t threads) {
    if (m < 0 || n < 0 || k < 0) return TAKANE_ERR_NEGATIVE_DIMENSION;
    if (k > TAKANE_MAX_K) return TAKANE_ERR_K_TOO_LARGE;
    if (threads < 0) return TAKANE_ERR_BAD_THREADS;
    return TAKANE_OK;
}

/* TAKANE_ERR_NOT_FINITE unless v is NULL or all of v[0..len) is finite. Branch-free
 * over chunks (the exponent bits all ones means inf or NaN), so the compiler vectorizes
 * it: group scales are N * K / G floats per call. */
takane_status takane_check_finite(const float *v, int64_t len) {
    if (!v) return TAKANE_OK;
    for (int64_t i = 0; i < len; i += 4096) {
        const int64_t end = len - i < 4096 ? len : i + 4096;
        uint32_t bad = 0;
        for (int64_t j = i; j < end; j++) {
            uint32_t u;
            memcpy(&u, v + j, sizeof u);
            bad |= (uint32_t)((u & 0x7F800000u) == 0x7F800000u);
        }
        if (bad) return TAKANE_ERR_NOT_FINITE;
    }
    return TAKANE_OK;
}

/* A threshold array of len 1 or `full`, without NaN (NULL allowed when may_be_null). */
takane_status takane_check_threshold(const float *t, int64_t len, int64_t full, int may_be_null) {
    if (!t) return may_be_null ? TAKANE_OK : TAKANE_ERR_NULL_POINTER;
    if (len != 1 && len != full) return TAKANE_ERR_BAD_THRESHOLD_LEN;
    for (int64_t i = 0; i < len; i++)
        if (t[i] != t[i]) return TAKANE_ERR_NAN;
    return TAKANE_OK;
}

/*
 * Everything the four binary_linear entry points share. y_words: output row length (n
 * floats or ceil(n/64) words). On return with TAKANE_OK, *empty says m == 0 or n == 0
 * (nothing to compute, nothing else was checked beyond dims and strides).
 */
static takane_status check_linear(int64_t m, int64_t n, int64_t k, const void *x,
                                  int64_t x_row_stride, const takane_weights *pw,
                                  const uint64_t *w, int64_t w_row_stride,
                                  const float *scale, const float *bias, const void *y,
                                  int64_t y_row_stride, int64_t y_len, int32_t threads,
                                  int *empty) {
    takane_status st = check_dims(m, n, k, threads);
    if (st != TAKANE_OK) return st;
    if (x_row_stride < 0 || w_row_stride < 0 || y_row_stride < 0 ||
        (m > 1 && n > 0 && y_row_stride < y_len))
        return TAKANE_ERR_BAD_STRIDE;
    *empty = m == 0 || n == 0;
    if (*empty) return TAKANE_OK;
    if (!y || (k > 0 && (!x || (!pw && !w)))) return TAKANE_ERR_NULL_POINTER;
    /* a handle's padding was checked when it was created */
    if (!pw && (st = takane_check_padding(n, k, w, w_row_stride)) != TAKANE_OK) return st;
    if ((st = takane_check_finite(scale, n)) != TAKANE_OK) return st;
    return takane_check_finite(bias, n);
}

static takane_status run_linear(takane_linear_args *a) {
    const takane_kernel_set *ks;
    takane_status st = takane_select_kernels(&ks);
    if (st != TAKANE_OK) return st;
    if ((st = takane_linear_run(ks, a)) != TAKANE_OK) return st;
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

static const float zero_threshold = 0.0f;

/* Packed activations: validate x, row_scale and build the arguments. With a handle pw,
 * n and k are the handle's and w is unused. */
static takane_status linear_packed(const takane_weights *pw, int64_t m, int64_t n, int64_t k,
                                   const uint64_t *x, int64_t x_row_stride, const uint64_t *w,
                                   int64_t w_row_stride,
                                   const float *scale, const float *bias, const float *row_scale,
                                   int bits, const float *out_t, int64_t out_t_len, float *y,
                                   uint64_t *yb, int64_t y_row_stride, int32_t threads) {
    const int64_t y_len = bits ? takane_words_for(n) : n;
    int empty;
    takane_status st = check_linear(m, n, k, x, x_row_stride, pw, w, w_row_stride, scale, bias,
                                    bits ? (const void *)yb : (const void *)y, y_row_stride,
                                    y_len, threads, &empty);
    if (st != TAKANE_OK || empty) return st;
    if ((st = takane_check_padding(m, k, x, x_row_stride)) != TAKANE_OK) return st;
    if ((st = takane_check_finite(row_scale, m)) != TAKANE_OK) return st;
    if (bits && (st = takane_check_threshold(out_t, out_t_len, n, 0)) != TAKANE_OK) return st;
    takane_linear_args a = {0};
    a.m = m, a.n = n, a.k = k;
    a.xb = x, a.xbs = x_row_stride;
    a.t = &zero_threshold;
    a.row_scale = row_scale;
    a.w = w, a.ws = w_row_stride, a.pw = pw, a.threads = threads;
    a.scale = scale, a.bias = bias;
    a.out_t = bits ? out_t : NULL, a.out_t_per_col = out_t_len == n && n != 1;
    a.y = y, a.yb = yb, a.ys = y_row_stride;
    return run_linear(&a);
}

/* Float activations: validate threshold and build the arguments (pw: as linear_packed). */
static takane_status linear_f32(const takane_weights *pw, int64_t m, int64_t n, int64_t k,
                                const float *x,
                                int64_t x_row_stride, const float *threshold,
                                int64_t threshold_len, int32_t activation_scale,
                                const uint64_t *w, int64_t w_row_stride, const float *scale,
                                const float *bias, int bits, const float *out_t,
                                int64_t out_t_len, float *y, uint64_t *yb, int64_t y_row_stride,
                                int32_t threads) {
    const int64_t y_len = bits ? takane_words_for(n) : n;
    int empty;
    takane_status st = check_linear(m, n, k, x, x_row_stride, pw, w, w_row_stride, scale, bias,
                                    bits ? (const void *)yb : (const void *)y, y_row_stride,
                                    y_len, threads, &empty);
    if (st != TAKANE_OK) return st;
    if ((st = takane_check_threshold(threshold, threshold_len, k, 1)) != TAKANE_OK) return st;
    if (empty) return TAKANE_OK;
    if (bits && (st = takane_check_threshold(out_t, out_t_len, n, 0)) != TAKANE_OK) return st;
    takane_linear_args a = {0};
    a.m = m, a.n = n, a.k = k;
    a.float_x = 1;
    a.xf = x, a.xfs = x_row_stride;
    a.t = threshold ? threshold : &zero_threshold;
    a.per_channel = threshold && threshold_len == k && k != 1;
    a.activation_scale = activation_scale != 0;
    a.w = w, a.ws = w_row_stride, a.pw = pw, a.threads = threads;
    a.scale = scale, a.bias = bias;
    a.out_t = bits ? out_t : NULL, a.out_t_per_col = out_t_len == n && n != 1;
    a.y = y, a.yb = yb, a.ys = y_row_stride;
    return run_linear(&a);
}

takane_status takane_binary_linear(int64_t m, int64_t n, int64_t k, const uint64_t *x,
                                   int64_t x_row_stride, const uint64_t *w, int64_t w_row_stride,
                                   const float *scale, const float *bias, const float *row_scale,
                                   float *y, int64_t y_row_stride, int32_t threads) {
    return linear_packed(NULL, m, n, k, x, x_row_stride, w, w_row_stride, scale, bias, row_scale, 0,
                         NULL, 0, y, NULL, y_row_stride, threads);
}

takane_status takane_binary_linear_f32(int64_t m, int64_t n, int64_t k, const float *x,
                                       int64_t x_row_stride, const float *threshold,
                                       int64_t threshold_len, int32_t activation_scale,
                                       const uint64_t *w, int64_t w_row_stride,
                                       const float *scale, const float *bias, float *y,
                                       int64_t y_row_stride, int32_t threads) {
    return linear_f32(NULL, m, n, k, x, x_row_stride, threshold, threshold_len, activation_scale, w,
                      w_row_stride, scale, bias, 0, NULL, 0, y, NULL, y_row_stride, threads);
}

takane_status takane_binary_linear_bits(int64_t m, int64_t n, int64_t k, const uint64_t *x,
                                        int64_t x_row_stride, const uint64_t *w,
                                        int64_t w_row_stride, const float *scale,
                                        const float *bias, const float *row_scale,
                                        const float *out_threshold, int64_t out_threshold_len,
                                        uint64_t *y, int64_t y_row_stride, int32_t threads) {
    return linear_packed(NULL, m, n, k, x, x_row_stride, w, w_row_stride, scale, bias, row_scale, 1,
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
    return linear_f32(NULL, m, n, k, x, x_row_stride, threshold, threshold_len, activation_scale, w,
                      w_row_stride, scale, bias, 1, out_threshold, out_threshold_len, NULL, y,
                      y_row_stride, threads);
}

takane_status takane_binary_weight_matmul(int64_t m, int64_t n, int64_t k, const float *x,
                                          int64_t x_row_stride, const uint64_t *w,
                                          int64_t w_row_stride, const float *in_scale,
                                          const float *scale, const float *bias, float *y,
                                          int64_t y_row_stride, int32_t threads) {
    takane_status st = check_dims(m, n, k, threads);
    if (st != TAKANE_OK) return st;
    if (x_row_stride < 0 || w_row_stride < 0 || y_row_stride < 0 ||
        (m > 1 && n > 0 && y_row_stride < n))
        return TAKANE_ERR_BAD_STRIDE;
    if (m == 0 || n == 0) return TAKANE_OK;
    if (!y || (k > 0 && (!x || !w))) return TAKANE_ERR_NULL_POINTER;
    if ((st = takane_check_padding(n, k, w, w_row_stride)) != TAKANE_OK) return st;
    if ((st = takane_check_finite(in_scale, k)) != TAKANE_OK) return st;
    if ((st = takane_check_finite(scale, n)) != TAKANE_OK) return st;
    if ((st = takane_check_finite(bias, n)) != TAKANE_OK) return st;
    const takane_kernel_set *ks;
    if ((st = takane_select_kernels(&ks)) != TAKANE_OK) return st;
    st = takane_wfloat_run(ks, m, n, k, x, x_row_stride, w, w_row_stride, in_scale, scale, bias,
                           y, y_row_stride);
    if (st != TAKANE_OK) return st;
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

/* ---- prepacked weights ---------------------------------------------------------------- */

/* NULL handle / negative m: the errors the handle-less entry points give for them. */
static takane_status check_handle(const takane_weights *w, int64_t m) {
    if (!w) return TAKANE_ERR_NULL_POINTER;
    return m < 0 ? TAKANE_ERR_NEGATIVE_DIMENSION : TAKANE_OK;
}

takane_status takane_binary_linear_prepacked(const takane_weights *weights, int64_t m,
                                             const uint64_t *x, int64_t x_row_stride,
                                             const float *scale, const float *bias,
                                             const float *row_scale, float *y,
                                             int64_t y_row_stride, int32_t threads) {
    takane_status st = check_handle(weights, m);
    if (st != TAKANE_OK) return st;
    return linear_packed(weights, m, weights->n, weights->k, x, x_row_stride, NULL, 0, scale,
                         bias, row_scale, 0, NULL, 0, y, NULL, y_row_stride, threads);
}

takane_status takane_binary_linear_prepacked_f32(const takane_weights *weights, int64_t m,
                                                 const float *x, int64_t x_row_stride,
                                                 const float *threshold, int64_t threshold_len,
                                                 int32_t activation_scale, const float *scale,
                                                 const float *bias, float *y,
                                                 int64_t y_row_stride, int32_t threads) {
    takane_status st = check_handle(weights, m);
    if (st != TAKANE_OK) return st;
    return linear_f32(weights, m, weights->n, weights->k, x, x_row_stride, threshold,
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
    takane_status st = check_handle(weights, m);
    if (st != TAKANE_OK) return st;
    return linear_packed(weights, m, weights->n, weights->k, x, x_row_stride, NULL, 0, scale,
                         bias, row_scale, 1, out_threshold, out_threshold_len, NULL, y,
                         y_row_stride, threads);
}

takane_status takane_binary_linear_prepacked_f32_bits(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *threshold, int64_t threshold_len, int32_t activation_scale, const float *scale,
    const float *bias, const float *out_threshold, int64_t out_threshold_len, uint64_t *y,
    int64_t y_row_stride, int32_t threads) {
    takane_status st = check_handle(weights, m);
    if (st != TAKANE_OK) return st;
    return linear_f32(weights, m, weights->n, weights->k, x, x_row_stride, threshold,
                      threshold_len, activation_scale, NULL, 0, scale, bias, 1, out_threshold,
                      out_threshold_len, NULL, y, y_row_stride, threads);
}

takane_status takane_binary_weight_matmul_prepacked(const takane_weights *weights, int64_t m,
                                                    const float *x, int64_t x_row_stride,
                                                    const float *in_scale, const float *scale,
                                                    const float *bias, float *y,
                                                    int64_t y_row_stride, int32_t threads) {
    takane_status st = check_handle(weights, m);
    if (st != TAKANE_OK) return st;
    const int64_t n = weights->n, k = weights->k;
    if ((st = check_dims(m, n, k, threads)) != TAKANE_OK) return st;
    if (x_row_stride < 0 || y_row_stride < 0 || (m > 1 && n > 0 && y_row_stride < n))
        return TAKANE_ERR_BAD_STRIDE;
    if (m == 0 || n == 0) return TAKANE_OK;
    if (!y || (k > 0 && !x)) return TAKANE_ERR_NULL_POINTER;
    if ((st = takane_check_finite(in_scale, k)) != TAKANE_OK) return st;
    if ((st = takane_check_finite(scale, n)) != TAKANE_OK) return st;
    if ((st = takane_check_finite(bias, n)) != TAKANE_OK) return st;
    const takane_kernel_set *ks;
    if ((st = takane_select_kernels(&ks)) != TAKANE_OK) return st;
    /* a handle made from Q1_0 carries its block scales: part of the weights */
    st = takane_wfloat_prepacked_run(ks, weights, m, x, x_row_stride, in_scale, scale,
                                     weights->group_scale, weights->group_size, bias, y,
                                     y_row_stride, threads);
    if (st != TAKANE_OK) return st;
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
    takane_status st = check_dims(m, n, k, threads);
    if (st != TAKANE_OK) return st;
    if (x_row_stride < 0 || y_row_stride < 0 || (m > 1 && n > 0 && y_row_stride < n))
        return TAKANE_ERR_BAD_STRIDE;
    if (activations != TAKANE_ACTIVATIONS_F32 && activations != TAKANE_ACTIVATIONS_Q8_0)
        return TAKANE_ERR_BAD_ACTIVATIONS;
    if (group_scale ? (group_size <= 0 || group_size % 64 != 0) : group_size != 0)
        return TAKANE_ERR_BAD_GROUP_SIZE;
    *empty = m == 0 || n == 0;
    if (*empty) return TAKANE_OK;
    if (!y || (k > 0 && !x)) return TAKANE_ERR_NULL_POINTER;
    if ((st = takane_check_finite(in_scale, k)) != TAKANE_OK) return st;
    if ((st = takane_check_finite(scale, n)) != TAKANE_OK) return st;
    /* group scales are checked while they are read (wq8.c, wfloat.c): a separate pass
     * over N * K / G floats cost ~10% of a GEMV */
    return takane_check_finite(bias, n);
}

static takane_status run_ex(const takane_weights *w, int64_t m, const float *x,
                            int64_t x_row_stride, const float *in_scale, const float *scale,
                            const float *group_scale, int64_t group_size, const float *bias,
                            int32_t activations, float *y, int64_t y_row_stride,
                            int32_t threads) {
    const takane_kernel_set *ks;
    takane_status st = takane_select_kernels(&ks);
    if (st != TAKANE_OK) return st;
    if (activations == TAKANE_ACTIVATIONS_Q8_0)
        st = takane_wq8_prepacked_run(ks, w, m, x, x_row_stride, in_scale, scale, group_scale,
                                      group_size, bias, y, y_row_stride, threads);
    else
        st = takane_wfloat_prepacked_run(ks, w, m, x, x_row_stride, in_scale, scale,
                                         group_scale, group_size, bias, y, y_row_stride,
                                         threads);
    if (st != TAKANE_OK) return st;
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
    if (w_row_stride < 0) return TAKANE_ERR_BAD_STRIDE;
    if (empty) return TAKANE_OK;
    if (k > 0 && !w) return TAKANE_ERR_NULL_POINTER;
    takane_weights *h;
    if ((st = takane_weights_create(n, k, w, w_row_stride, &h)) != TAKANE_OK) return st;
    st = run_ex(h, m, x, x_row_stride, in_scale, scale, group_scale, group_size, bias,
                activations, y, y_row_stride, threads);
    takane_weights_free(h);
    return st;
}

takane_status takane_binary_weight_matmul_prepacked_ex(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *in_scale, const float *scale, const float *group_scale, int64_t group_size,
    const float *bias, int32_t activations, float *y, int64_t y_row_stride, int32_t threads) {
    takane_status st = check_handle(weights, m);
    if (st != TAKANE_OK) return st;
    int empty;
    st = check_ex(m, weights->n, weights->k, x, x_row_stride, in_scale, scale, group_scale,
                  group_size, bias, activations, y, y_row_stride, threads, &empty);
    if (st != TAKANE_OK || empty) return st;
    if (weights->group_scale) { /* a handle made from Q1_0 carries its block scales */
        if (group_scale) return TAKANE_ERR_BAD_GROUP_SIZE;
        group_scale = weights->group_scale, group_size = weights->group_size;
    }
    return run_ex(weights, m, x, x_row_stride, in_scale, scale, group_scale, group_size, bias,
                  activations, y, y_row_stride, threads);
}
