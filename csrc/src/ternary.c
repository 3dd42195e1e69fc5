/*
 * ternary.c — ternary weights (issue 23): the handle (two bit planes re-tiled into panels,
 * layout in csrc/kernels/ternary/ternary_kernel.h), argument checks, the activation
 * quantizers' calls and the threaded framework of takane_ternary_matmul_prepacked.
 * Baseline ISA; all SIMD lives in csrc/kernels/ternary/. Compiled with -ffp-contract=off:
 * the int8_row quantizer must round each float32 step exactly as the reference does, and
 * the epilogue rounds once per step (the documented bounds count those roundings).
 *
 * Steps of one call:
 *  1. On the calling thread, every row of xs = x * in_scale is prepared once: float32 rows
 *     padded with zeros to kw * 64 (f32), or int8 q with one scale d per row (int8_row) or
 *     per 32-column block (q8_0, the kernel set's Q8_0 quantizer, the same bits as the
 *     1-bit W1A8 path). NaN / inf are reported here, before y is written.
 *  2. Tasks split the rows and runs of TAKANE_TERNARY_MAX_NP panels (takane_plan_grid); a
 *     task sweeps its runs once, every row of its chunk against each run while it is in cache.
 *  3. Per output: the kernel's sums per group (f32: float; int8: exact int32 chunks, summed
 *     in int64 without groups), then v = sum_g g * S_g, y = fl(fl(v * scale) + bias).
 * Rounding counts (the bounds in takane.h): f32: xs (1) + k - 1 adds in any tree (kernel
 * and group sums together) + g (1) + scale (1) <= k + 4 with the bias add counted apart;
 * q8_0: dh * S (1) + nb - 1 adds + g (1) + scale (1) <= nb + 4; int8_row: float(D) (1) + g
 * (1) + ng - 1 adds + d (1) + scale (1) <= ng + 4.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "../kernels/ternary/ternary_kernel.h"

struct takane_ternary_weights {
    int64_t n, k, kw, npanels;
    uint64_t *panels; /* npanels * 16 * kw words, 64-byte aligned; NULL if empty */
};

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

takane_status takane_ternary_weights_create(int64_t n, int64_t k, const uint64_t *sign,
                                            const uint64_t *nonzero, int64_t row_stride,
                                            takane_ternary_weights **out) {
    /* the checks of takane_weights_create (api.c), in its order, plus the second plane and
     * the row stride the two planes share (validate.c / internal.h) */
    if (!out) return TAKANE_ERR_NULL_POINTER;
    *out = NULL;
    TAKANE_TRY(takane_check_dims(n, 0, k));
    TAKANE_TRY(takane_check_in_strides(row_stride, 0));
    const int64_t kw = takane_words_for(k);
    if (n > 0 && kw > 0 && (!sign || !nonzero)) return TAKANE_ERR_NULL_POINTER;
    TAKANE_TRY(takane_check_stride(n, kw, row_stride));
    TAKANE_TRY(takane_check_padding(n, k, sign, row_stride));
    TAKANE_TRY(takane_check_padding(n, k, nonzero, row_stride));
    takane_ternary_weights *h = (takane_ternary_weights *)calloc(1, sizeof *h);
    if (!h) return TAKANE_ERR_OUT_OF_MEMORY;
    h->n = n, h->k = k, h->kw = kw;
    h->npanels = (n + TAKANE_PANEL_ROWS - 1) / TAKANE_PANEL_ROWS;
    if (h->npanels > 0 && kw > 0) {
        const double words = (double)h->npanels * (double)kw * 2 * TAKANE_PANEL_ROWS;
        if (words * 8.0 > (double)SIZE_MAX / 2) {
            free(h);
            return TAKANE_ERR_OUT_OF_MEMORY;
        }
        h->panels = (uint64_t *)takane_panels_alloc((size_t)words * 8);
        if (!h->panels) {
            free(h);
            return TAKANE_ERR_OUT_OF_MEMORY;
        }
        for (int64_t p = 0; p < h->npanels; p++) {
            uint64_t *panel = h->panels + p * kw * 2 * TAKANE_PANEL_ROWS;
            for (int r = 0; r < TAKANE_PANEL_ROWS; r++) {
                const int64_t row = p * TAKANE_PANEL_ROWS + r;
                for (int64_t q = 0; q < kw; q++) {
                    uint64_t s = 0, z = 0;
                    if (row < n) s = sign[row * row_stride + q], z = nonzero[row * row_stride + q];
                    panel[(2 * q) * TAKANE_PANEL_ROWS + r] = s & z;      /* +1 */
                    panel[(2 * q + 1) * TAKANE_PANEL_ROWS + r] = ~s & z; /* -1 */
                }
            }
        }
    }
    *out = h;
    return TAKANE_OK;
}

void takane_ternary_weights_free(takane_ternary_weights *weights) {
    if (!weights) return;
    takane_panels_free(weights->panels);
    free(weights);
}

takane_status takane_ternary_weights_get_planes(const takane_ternary_weights *w, int64_t r0,
                                                int64_t r1, uint64_t *sign, uint64_t *nonzero,
                                                int64_t row_stride) {
    /* the checks of takane_weights_get_bits (byot.c), in its order */
    if (!w) return TAKANE_ERR_NULL_POINTER;
    if (r0 < 0 || r1 < 0) return TAKANE_ERR_NEGATIVE_DIMENSION;
    if (r0 > r1 || r1 > w->n) return TAKANE_ERR_BAD_STRIDE;
    const int64_t kw = w->kw;
    TAKANE_TRY(takane_check_stride(r1 - r0, kw, row_stride));
    if (r0 == r1 || kw == 0) return TAKANE_OK;
    if (!sign || !nonzero) return TAKANE_ERR_NULL_POINTER;
    /* the inverse of create's split: plus = s & z, minus = ~s & z, never both set, so
     * nonzero = plus | minus and sign = plus (canonical: a zero weight has sign 0) */
    for (int64_t r = r0; r < r1; r++) {
        const uint64_t *panel = w->panels + (r / TAKANE_PANEL_ROWS) * kw * 2 * TAKANE_PANEL_ROWS;
        const int lane = (int)(r % TAKANE_PANEL_ROWS);
        uint64_t *s = sign + (r - r0) * row_stride, *z = nonzero + (r - r0) * row_stride;
        for (int64_t q = 0; q < kw; q++) {
            const uint64_t plus = panel[(2 * q) * TAKANE_PANEL_ROWS + lane];
            const uint64_t minus = panel[(2 * q + 1) * TAKANE_PANEL_ROWS + lane];
            s[q] = plus;
            z[q] = plus | minus;
        }
    }
    return TAKANE_OK;
}

/* ---- BitNet b1.58 per-row int8 quantizer ---------------------------------------------- */

/* round half to even for |v| < 2^22 (default rounding mode): adding and removing 1.5 * 2^23
 * leaves an integer. Compilers do not reassociate float arithmetic without -ffast-math; where
 * floats are evaluated in a wider format (x87, FLT_EVAL_METHOD != 0) a volatile float forces
 * the rounding of the sum to float32. */
static inline int32_t rne(float v) {
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    const float t = v + 12582912.0f;
#else
    volatile float t = v + 12582912.0f;
#endif
    return (int32_t)(t - 12582912.0f);
}

/* One row xs = x * in_scale into q (kw * 64 int8, zero past k) and *d (see takane.h). */
static takane_status quantize_int8_row(const float *x, const float *in_scale, int64_t k,
                                       int64_t kw, float *tmp, int8_t *q, float *d) {
    float amax = 0.0f;
    int bad = 0;
    for (int64_t c = 0; c < k; c++) {
        const float v = in_scale ? x[c] * in_scale[c] : x[c];
        tmp[c] = v;
        const float a = fabsf(v);
        bad |= !(a <= 3.4028234663852886e38f);
        amax = a > amax ? a : amax;
    }
    if (bad) {
        for (int64_t c = 0; c < k; c++)
            if (tmp[c] != tmp[c]) return TAKANE_ERR_NAN;
        return TAKANE_ERR_NOT_FINITE;
    }
    const float a = amax > 1e-5f ? amax : 1e-5f;
    const float inv = 127.0f / a;
    for (int64_t c = 0; c < k; c++) {
        int32_t v = rne(tmp[c] * inv); /* |tmp| <= a: |v| <= 127, the clamp never binds */
        v = v < -128 ? -128 : v > 127 ? 127 : v;
        q[c] = (int8_t)v;
    }
    memset(q + k, 0, (size_t)(kw * 64 - k));
    *d = a / 127.0f;
    return TAKANE_OK;
}

/* ---- the threaded run ------------------------------------------------------------------ */

typedef struct tern_job {
    const takane_ternary_ukernel *uk;
    const takane_ternary_weights *w;
    int64_t m;
    int32_t mode;
    const float *xs;  /* f32: m rows of kw * 64 */
    const char *a;    /* int8: m rows of the kernel's table (or q itself), astride bytes apart */
    int64_t astride;
    const float *d;   /* int8_row: m scales; q8_0: m rows of 2 * kw */
    int64_t dstride;
    const float *scale, *gs, *bias;
    int64_t gw, ngroups; /* words per group (kw without group scales), groups per row */
    float *y;
    int64_t ys;
    int64_t m_chunk, p_chunk, p_tasks;
    const takane_ternary_gemm_ukernel *gemm; /* int8_row prefill GEMM, or NULL: panels */
    const int32_t *nqg;                      /* GEMM: m rows of ngroups negated group sums */
    int failed; /* atomic */
} tern_job;

#define NP TAKANE_TERNARY_MAX_NP
#define OUTS (NP * TAKANE_PANEL_ROWS)

/* v[j] = sum_g g[j][g] * S_g for row i against the np panels at pan (rows j0 + j, j < nrows
 * valid: only those read group scales). Returns nonzero iff a group scale read is not finite. */
static int row_run(const tern_job *job, int64_t i, const uint64_t *pan, int np, int64_t j0,
                   int64_t nrows, float *v) {
    const takane_ternary_ukernel *uk = job->uk;
    const int64_t kw = job->w->kw, pstride = kw * 2 * TAKANE_PANEL_ROWS;
    const int64_t gw = job->gw, ng = job->ngroups;
    const float *gs = job->gs;
    const int outs = np * TAKANE_PANEL_ROWS;
    int bad = 0;
    if (job->mode == TAKANE_ACTIVATIONS_INT8_ROW && !gs) {
        /* one exact sum per output: int32 chunks added in int64 */
        int64_t acc[OUTS];
        int32_t part[OUTS];
        const void *q = job->a + i * job->astride;
        for (int j = 0; j < outs; j++) acc[j] = 0;
        for (int64_t b = 0; b < 2 * kw; b += TAKANE_TERNARY_CHUNK_BLOCKS) {
            uk->dot_i8(q, pan, pstride, np, b, min64(2 * kw, b + TAKANE_TERNARY_CHUNK_BLOCKS), part);
            for (int j = 0; j < outs; j++) acc[j] += part[j];
        }
        for (int j = 0; j < outs; j++) v[j] = (float)acc[j];
        return 0;
    }
    if (job->mode == TAKANE_ACTIVATIONS_INT8_ROW && uk->dot_i8_groups &&
        2 * gw <= TAKANE_TERNARY_CHUNK_BLOCKS) { /* group scales in the kernel */
        const takane_gscales g = {gs + j0 * ng, TAKANE_PANEL_ROWS * ng, ng, 1};
        return uk->dot_i8_groups(job->a + i * job->astride, pan, pstride, np, kw, gw, &g, nrows, v);
    }
    float tot[OUTS], grp[OUTS];
    for (int j = 0; j < outs; j++) tot[j] = 0.0f;
    for (int64_t g = 0; g < ng; g++) {
        const int64_t q0 = g * gw, q1 = min64(kw, q0 + gw);
        if (job->mode == TAKANE_ACTIVATIONS_F32) {
            uk->dot_f32(job->xs + i * kw * 64, pan, pstride, np, q0, q1, grp);
        } else if (job->mode == TAKANE_ACTIVATIONS_INT8_ROW) {
            /* a group is at most kw words: chunk it like the ungrouped sum */
            int32_t part[OUTS];
            int64_t acc[OUTS];
            for (int j = 0; j < outs; j++) acc[j] = 0;
            for (int64_t b = 2 * q0; b < 2 * q1; b += TAKANE_TERNARY_CHUNK_BLOCKS) {
                uk->dot_i8(job->a + i * job->astride, pan, pstride, np, b,
                           min64(2 * q1, b + TAKANE_TERNARY_CHUNK_BLOCKS), part);
                for (int j = 0; j < outs; j++) acc[j] += part[j];
            }
            for (int j = 0; j < outs; j++) grp[j] = (float)acc[j];
        } else { /* q8_0: one exact block sum at a time, times its scale */
            int32_t part[OUTS];
            const float *d = job->d + i * job->dstride;
            for (int j = 0; j < outs; j++) grp[j] = 0.0f;
            for (int64_t b = 2 * q0; b < 2 * q1; b++) {
                if (d[b] == 0.0f) continue; /* padding block, or a block of zeros */
                uk->dot_i8(job->a + i * job->astride, pan, pstride, np, b, b + 1, part);
                for (int j = 0; j < outs; j++) grp[j] = grp[j] + d[b] * (float)part[j];
            }
        }
        if (gs) {
            for (int j = 0; j < outs; j++) {
                const float gv = j < nrows ? gs[(j0 + j) * ng + g] : 0.0f;
                bad |= !(fabsf(gv) <= 3.4028234663852886e38f);
                tot[j] = tot[j] + grp[j] * gv;
            }
        } else {
            for (int j = 0; j < outs; j++) tot[j] = grp[j]; /* one group */
        }
    }
    for (int j = 0; j < outs; j++) v[j] = tot[j];
    return bad;
}

/* Activation rows per GEMM row block (96 rows of K = 6912: 648 KiB of q in L2 while the
 * strips pass; each strip is expanded once per row block), as wq8_gemm.c. */
#define GEMM_MC 96

/* The int8_row prefill GEMM on rows [i0, i1) and output columns [c0, c1) (BLIS, as
 * wq8_gemm.c): strip by strip (nr columns), the strip is expanded once per row block into
 * task-local scratch, then every tile of mr rows runs over all of K against it; columns of
 * a strip outside [c0, c1) are computed and dropped. The epilogue is tern_task's. */
static void gemm_task(tern_job *job, int64_t i0, int64_t i1, int64_t c0, int64_t c1) {
    const takane_ternary_gemm_ukernel *g = job->gemm;
    const takane_ternary_weights *w = job->w;
    const int64_t kw = w->kw, n = w->n, pstride = kw * 2 * TAKANE_PANEL_ROWS, ng = job->ngroups;
    const int mr = g->mr, nr = g->nr, npp = nr / TAKANE_PANEL_ROWS;
    const size_t plen = (size_t)(g->pack_len(kw, job->gs ? ng : 1) + 63) / 64 * 64;
    /* aligned_alloc's size a multiple of the alignment (C11) */
    char *scratch = (char *)aligned_alloc(64, plen + ((size_t)mr * (size_t)nr * sizeof(float) + 63) / 64 * 64);
    if (!scratch) {
        __atomic_store_n(&job->failed, TAKANE_ERR_OUT_OF_MEMORY, __ATOMIC_RELAXED);
        return;
    }
    float *out = (float *)(scratch + plen);
    const int8_t *qp[16];
    const int32_t *nqp[16];
    int bad = 0;
    for (int64_t r0 = i0; r0 < i1; r0 += GEMM_MC) {
        const int64_t r1 = min64(i1, r0 + GEMM_MC);
        for (int64_t sp = c0 / TAKANE_PANEL_ROWS; sp * TAKANE_PANEL_ROWS < c1; sp += npp) {
            const int np = (int)min64(npp, w->npanels - sp);
            const int64_t j0 = sp * TAKANE_PANEL_ROWS, nrows = min64(nr, n - j0);
            const takane_gscales gsj = {job->gs ? job->gs + j0 * ng : NULL, TAKANE_PANEL_ROWS * ng, ng, 1};
            bad |= g->pack(w->panels + sp * pstride, pstride, np, kw, job->gw, job->gs ? &gsj : NULL,
                           nrows, scratch);
            const int64_t ja = c0 > j0 ? c0 : j0, jb = min64(c1, j0 + nrows);
            for (int64_t t0 = r0; t0 < r1; t0 += mr) {
                const int mi = (int)min64(mr, r1 - t0);
                for (int i = 0; i < mi; i++) {
                    qp[i] = (const int8_t *)job->a + (t0 + i) * job->astride;
                    nqp[i] = job->nqg + (t0 + i) * ng;
                }
                g->tile(qp, nqp, mi, scratch, kw, job->gw, job->gs != NULL, out, nr);
                for (int i = 0; i < mi; i++) {
                    const float d = job->d[t0 + i];
                    float *yrow = job->y + (t0 + i) * job->ys;
                    const float *oi = out + i * nr - j0;
                    for (int64_t j = ja; j < jb; j++) {
                        float t = oi[j] * d;
                        if (job->scale) t = t * job->scale[j];
                        if (job->bias) t = t + job->bias[j];
                        yrow[j] = t;
                    }
                }
            }
        }
    }
    free(scratch);
    if (bad) __atomic_store_n(&job->failed, TAKANE_ERR_NOT_FINITE, __ATOMIC_RELAXED);
}

static void tern_task(void *ctx, int64_t task) {
    tern_job *job = (tern_job *)ctx;
    const takane_ternary_weights *w = job->w;
    const int64_t pstride = w->kw * 2 * TAKANE_PANEL_ROWS;
    const int64_t i_begin = (task / job->p_tasks) * job->m_chunk;
    const int64_t i_end = min64(job->m, i_begin + job->m_chunk);
    const int64_t r_begin = (task % job->p_tasks) * job->p_chunk;
    const int64_t nruns = (w->npanels + NP - 1) / NP;
    const int64_t r_end = min64(nruns, r_begin + job->p_chunk);
    if (job->gemm) {
        if (r_begin < r_end)
            gemm_task(job, i_begin, i_end, r_begin * OUTS, min64(w->n, r_end * OUTS));
        return;
    }
    float v[OUTS];
    int bad = 0;
    for (int64_t run = r_begin; run < r_end; run++) {
        const int64_t p0 = run * NP;
        const int np = (int)min64(NP, w->npanels - p0);
        const int64_t j0 = p0 * TAKANE_PANEL_ROWS;
        const int64_t nj = min64((int64_t)np * TAKANE_PANEL_ROWS, w->n - j0);
        for (int64_t i = i_begin; i < i_end; i++) {
            bad |= row_run(job, i, w->panels + p0 * pstride, np, j0, nj, v);
            float d = 1.0f;
            if (job->mode == TAKANE_ACTIVATIONS_INT8_ROW) d = job->d[i];
            float *yrow = job->y + i * job->ys + j0;
            for (int64_t j = 0; j < nj; j++) {
                float t = v[j];
                if (job->mode == TAKANE_ACTIVATIONS_INT8_ROW) t = t * d;
                if (job->scale) t = t * job->scale[j0 + j];
                if (job->bias) t = t + job->bias[j0 + j];
                yrow[j] = t;
            }
        }
    }
    if (bad) __atomic_store_n(&job->failed, TAKANE_ERR_NOT_FINITE, __ATOMIC_RELAXED);
}

/* Below this many MACs the call stays on the calling thread. */
#define MIN_PARALLEL_MACS (1 << 20)

takane_status takane_ternary_matmul_prepacked(
    const takane_ternary_weights *w, int64_t m, const float *x, int64_t x_row_stride,
    const float *in_scale, const float *scale, const float *group_scale, int64_t group_size,
    const float *bias, int32_t activations, float *y, int64_t y_row_stride, int32_t threads) {
    /* the shared validators (internal.h), in the order of the 1-bit handle entry points */
    if (!w) return TAKANE_ERR_NULL_POINTER;
    if (m < 0) return TAKANE_ERR_NEGATIVE_DIMENSION;
    TAKANE_TRY(takane_check_threads(threads));
    const int64_t n = w->n, k = w->k, kw = w->kw;
    TAKANE_TRY(takane_check_in_strides(x_row_stride, 0));
    TAKANE_TRY(takane_check_stride(m, n, y_row_stride));
    if (activations != TAKANE_ACTIVATIONS_F32 && activations != TAKANE_ACTIVATIONS_Q8_0 &&
        activations != TAKANE_ACTIVATIONS_INT8_ROW)
        return TAKANE_ERR_BAD_ACTIVATIONS;
    TAKANE_TRY(takane_check_group_size(group_scale, group_size));
    if (m == 0 || n == 0) return TAKANE_OK;
    TAKANE_TRY(takane_check_operands(k, x, w, y));
    TAKANE_TRY(takane_check_finite(in_scale, k));
    TAKANE_TRY(takane_check_scale_bias(scale, bias, n));
    takane_status st;
    const takane_kernel_set *ks;
    if ((st = takane_select_kernels(&ks)) != TAKANE_OK) return st;
    if (k == 0) { /* every sum is empty: y = 0 * scale + bias */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                float v = 0.0f;
                if (scale) v = v * scale[j];
                if (bias) v = v + bias[j];
                y[i * y_row_stride + j] = v;
            }
        takane_note_used(ks->isa);
        return TAKANE_OK;
    }
    /* prepared rows: f32 rows of kw * 64 floats, or q (kw * 64 bytes) + scales + the int8_row
     * quantizer's float row; sizes that do not fit are out of memory, never a wrapped product */
    if ((uint64_t)m > (uint64_t)(SIZE_MAX / 4) / ((uint64_t)kw * 64 * 8)) return TAKANE_ERR_OUT_OF_MEMORY;
    const size_t row_bytes = (size_t)kw * 64;
    size_t bytes;
    if (activations == TAKANE_ACTIVATIONS_F32) bytes = (size_t)m * row_bytes * sizeof(float);
    else bytes = (size_t)m * row_bytes + (size_t)m * (size_t)kw * 2 * (sizeof(float) + sizeof(int32_t)) +
                 row_bytes * sizeof(float) + 64;
    /* the kernel's per-row tables (64-byte aligned rows), after the quantized rows */
    const takane_ternary_ukernel *uk = ks->ternary;
    /* the prefill GEMM: int8_row, M at the kernel's crossover, and every group (all of K
     * without groups) within one exact int32 chunk; otherwise the panel kernels, which read
     * per-row tables the GEMM does not need (so none are allocated for it) */
    const int64_t gw = group_scale ? group_size / 64 : kw;
    const takane_ternary_gemm_ukernel *gm =
        uk->gemm && activations == TAKANE_ACTIVATIONS_INT8_ROW && m >= uk->gemm->min_m &&
                2 * gw <= TAKANE_TERNARY_CHUNK_BLOCKS
            ? uk->gemm
            : NULL;
    const int64_t tlen = activations != TAKANE_ACTIVATIONS_F32 && uk->table_len_i8 && !gm
                             ? (uk->table_len_i8(kw) + 63) / 64 * 64 : 0;
    if (tlen && (uint64_t)m > (uint64_t)(SIZE_MAX / 4 - bytes) / (uint64_t)tlen) return TAKANE_ERR_OUT_OF_MEMORY;
    const size_t tab_off = (bytes + 63) / 64 * 64;
    if (tlen) bytes = tab_off + (size_t)m * (size_t)tlen;
    char *buf = (char *)aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!buf) return TAKANE_ERR_OUT_OF_MEMORY;
    tern_job job;
    memset(&job, 0, sizeof job);
    job.uk = uk, job.w = w, job.m = m, job.mode = activations;
    job.scale = scale, job.gs = group_scale, job.bias = bias, job.y = y, job.ys = y_row_stride;
    job.gw = gw;
    job.ngroups = (kw + job.gw - 1) / job.gw;
    job.failed = TAKANE_OK;
    st = TAKANE_OK;
    if (activations == TAKANE_ACTIVATIONS_F32) {
        float *xs = (float *)buf;
        for (int64_t i = 0; i < m; i++) {
            float *row = xs + i * kw * 64;
            const float *xi = x + i * x_row_stride;
            for (int64_t c = 0; c < k; c++) row[c] = in_scale ? xi[c] * in_scale[c] : xi[c];
            for (int64_t c = k; c < kw * 64; c++) row[c] = 0.0f;
        }
        job.xs = xs;
    } else {
        int8_t *q = (int8_t *)buf;
        float *d = (float *)(buf + (size_t)m * row_bytes);
        int32_t *nq = (int32_t *)(d + (size_t)m * kw * 2);
        float *tmp = (float *)(nq + (size_t)m * kw * 2);
        for (int64_t i = 0; i < m && st == TAKANE_OK; i++) {
            if (activations == TAKANE_ACTIVATIONS_INT8_ROW && uk->quantize_i8_row) {
                if (uk->quantize_i8_row(x + i * x_row_stride, in_scale, k, kw, q + i * row_bytes, d + i))
                    /* the portable loop names the error (NaN before inf) */
                    st = quantize_int8_row(x + i * x_row_stride, in_scale, k, kw, tmp, q + i * row_bytes, d + i);
            } else if (activations == TAKANE_ACTIVATIONS_INT8_ROW)
                st = quantize_int8_row(x + i * x_row_stride, in_scale, k, kw, tmp, q + i * row_bytes, d + i);
            else
                st = ks->q8->quantize_row(x + i * x_row_stride, in_scale, k, kw, q + i * row_bytes,
                                          d + i * 2 * kw, nq + i * 2 * kw);
        }
        job.a = (const char *)q, job.astride = (int64_t)row_bytes, job.d = d;
        if (gm && st == TAKANE_OK) { /* the prefill GEMM (chosen above) */
            /* nq reuses the Q8_0 path's block-sum array (m * 2 kw int32 >= m * ngroups) */
            for (int64_t i = 0; i < m; i++) {
                const int8_t *qi = q + i * row_bytes;
                for (int64_t g = 0; g < job.ngroups; g++) {
                    const int64_t e = min64(kw, (g + 1) * job.gw) * 64;
                    int32_t sum = 0;
                    for (int64_t c = g * job.gw * 64; c < e; c++) sum += qi[c];
                    nq[i * job.ngroups + g] = -sum;
                }
            }
            job.gemm = gm, job.nqg = nq;
        }
        if (tlen && st == TAKANE_OK) {
            for (int64_t i = 0; i < m; i++) uk->build_i8(q + i * row_bytes, kw, buf + tab_off + i * tlen);
            job.a = buf + tab_off, job.astride = tlen;
        }
        job.dstride = activations == TAKANE_ACTIVATIONS_INT8_ROW ? 1 : 2 * kw;
    }
    if (st == TAKANE_OK) {
        const int64_t nruns = (w->npanels + NP - 1) / NP;
        int nthreads = threads > 0 ? threads : takane_default_threads();
        if ((double)m * (double)n * (double)k < (double)MIN_PARALLEL_MACS) nthreads = 1;
        const takane_grid grid = takane_plan_grid(nthreads, m, 1, nruns, 1);
        job.m_chunk = grid.m_chunk, job.p_chunk = grid.p_chunk, job.p_tasks = grid.p_tasks;
        takane_parallel_run(nthreads, grid.ntasks, tern_task, &job);
        st = (takane_status)job.failed;
    }
    free(buf);
    if (st == TAKANE_OK) takane_note_used(ks->isa);
    return st;
}
