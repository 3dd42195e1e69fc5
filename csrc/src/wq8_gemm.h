/*
 * wq8_gemm.h — the W1A8 prefill GEMM framework (wq8_gemm.c), used by the W1A8 run (wq8.c)
 * and the bring-your-own-threads row-range entry point. Private.
 */
#ifndef TAKANE_WQ8_GEMM_H
#define TAKANE_WQ8_GEMM_H

#include "internal.h"

/* Largest mr a GEMM kernel may declare (the framework's row-pointer arrays). */
#define TAKANE_Q8_GEMM_MAX_MR 16

/* Scratch bytes takane_wq8_gemm_cols needs (any alignment: it aligns to 64 inside). */
int64_t takane_wq8_gemm_scratch(const takane_q8_gemm_ukernel *g, int64_t kw, int64_t ngroups);

/* Rows [0, m) of quantized activations (q: m rows of kw * 64 int8; d, nq: m rows of 2 * kw)
 * times output columns [c0, c1) of w (0 <= c0 < c1 <= n), with group scales gs (ng per
 * row, groups of gw words, a takane_gscales from row 0; NULL: none, then gw = kw,
 * ng = 1), then y = fl(fl(v * scale) + bias) into y[i * ys + j] for c0 <= j < c1 only. TAKANE_ERR_NOT_FINITE if a group scale
 * read is NaN or infinite (y partly written). */
takane_status takane_wq8_gemm_cols(const takane_q8_gemm_ukernel *g, const takane_weights *w,
                                   int64_t m, const int8_t *q, const float *d,
                                   const int32_t *nq, int64_t c0, int64_t c1,
                                   const float *scale, const takane_gscales *gs, int64_t gw,
                                   int64_t ng, const float *bias, float *y, int64_t ys,
                                   void *scratch);

#endif /* TAKANE_WQ8_GEMM_H */
