/*
 * layers.h — what the layer entry points (api_layers.c) and their frameworks (linear.c,
 * wfloat.c) share. Private: not installed, not part of the ABI.
 */
#ifndef TAKANE_LAYERS_H
#define TAKANE_LAYERS_H

#include "internal.h"

/* One validated binary_linear call (see takane.h for the meaning of each field). */
typedef struct takane_linear_args {
    int64_t m, n, k;
    int float_x;                     /* activations are floats (xf) rather than bits (xb) */
    const uint64_t *xb;              /* packed activations, row stride xbs words */
    int64_t xbs;
    const float *xf;                 /* float activations, row stride xfs floats */
    int64_t xfs;
    const float *t;                  /* binarization threshold(s) of xf, never NULL */
    int per_channel;                 /* t has k entries (else 1) */
    int activation_scale;            /* beta = mean |x| of each float row */
    const float *row_scale;          /* or beta given per row (packed x), or NULL */
    const uint64_t *w;               /* n packed weight rows, row stride ws words */
    int64_t ws;
    const takane_weights *pw;        /* or a prepacked handle (then w is unused) */
    int threads;                     /* as the entry point's threads (0 = default) */
    const float *scale, *bias;       /* n each, or NULL */
    const float *out_t;              /* binarized output threshold(s), or NULL: float out */
    int out_t_per_col;               /* out_t has n entries (else 1) */
    float *y;                        /* float output, row stride ys floats */
    uint64_t *yb;                    /* or bits output, row stride ys words */
    int64_t ys;
} takane_linear_args;

/* linear.c: run a validated call with m, n > 0. */
takane_status takane_linear_run(const takane_kernel_set *ks, const takane_linear_args *a);

/* wfloat.c: y = ((x * in_scale) @ sign(w).T) * scale + bias for a validated call with
 * m, n > 0 (in_scale, scale, bias may be NULL). */
takane_status takane_wfloat_run(const takane_kernel_set *ks, int64_t m, int64_t n, int64_t k,
                                const float *x, int64_t xs, const uint64_t *w, int64_t ws,
                                const float *in_scale, const float *scale, const float *bias,
                                float *y, int64_t ys);

/* wfloat.c: the same for a prepacked handle (m, n > 0), on up to `threads` threads
 * (0 = default), K-blocked so that the lookup tables stay in L1; with group scales
 * (group_scale (n, ceil(k / group_size)), group_size a positive multiple of 64; or NULL
 * and 0) each group's sum is multiplied by its scale before the groups are added. */
takane_status takane_wfloat_prepacked_run(const takane_kernel_set *ks, const takane_weights *w,
                                          int64_t m, const float *x, int64_t xs,
                                          const float *in_scale, const float *scale,
                                          const float *group_scale, int64_t group_size,
                                          const float *bias, float *y, int64_t ys,
                                          int threads);

/* wq8.c: the Q8_0-activation product for a prepacked handle (m, n > 0; validated
 * arguments as above), on up to `threads` threads. TAKANE_ERR_NAN / _NOT_FINITE for a
 * non-finite x * in_scale (checked before any output is written). */
takane_status takane_wq8_prepacked_run(const takane_kernel_set *ks, const takane_weights *w,
                                       int64_t m, const float *x, int64_t xs,
                                       const float *in_scale, const float *scale,
                                       const float *group_scale, int64_t group_size,
                                       const float *bias, float *y, int64_t ys, int threads);

/* wq8.c: bytes of one activation row's table in the q8 kernels' scratch (64-aligned). */
static inline int64_t takane_wq8_table_stride(const takane_q8_ukernel *uk, int64_t kw) {
    return (uk->table_len(kw) + 63) / 64 * 64;
}

/* wq8.c: on the calling thread, output columns [c0, c1) (0 <= c0 < c1 <= n) of m rows of
 * already-quantized activations (q: rows of kw * 64 int8, d and nq: rows of 2 * kw, as the
 * q8 ukernel's quantize_row writes them) against w, with group scales gs (ngroups per row
 * in either layout of takane_gscales, from row 0; gw words per group; NULL: gw = kw,
 * ngroups = 1), epilogue y = fl(fl(v * scale)
 * + bias) into y (row stride ys; columns outside [c0, c1) untouched). tables: scratch of
 * takane_wq8_block_scratch(ks, kw, m) bytes, 64-byte aligned. Regimes: M >= the GEMM's
 * threshold (and a set with a GEMM) -> the prefill GEMM (wq8_gemm.c); else the panel
 * kernels, each run of weight panels loaded once for up to 16 rows whose tables fit
 * 256 KiB (decode, batched decode). Returns nonzero iff a group scale read was NaN or
 * infinite. The threaded run and takane_matmul_q8_0_rows
 * (byot.c) both compute through it. */
/* wq8.c: takane_wq8_block_scratch: bytes of the `tables` scratch takane_wq8_block needs
 * for m rows (64-byte aligned memory); takane_wq8_uses_gemm: nonzero iff
 * takane_wq8_block(m rows) takes the prefill GEMM. */
int64_t takane_wq8_block_scratch(const takane_kernel_set *ks, int64_t kw, int64_t m);
int takane_wq8_uses_gemm(const takane_kernel_set *ks, int64_t m);

int takane_wq8_block(const takane_kernel_set *ks, const takane_weights *w, int64_t m,
                     const int8_t *q, const float *d, const int32_t *nq, const float *scale,
                     const takane_gscales *gs, int64_t gw, int64_t ngroups, const float *bias,
                     float *y, int64_t ys, int64_t c0, int64_t c1, void *tables);

#endif /* TAKANE_LAYERS_H */
