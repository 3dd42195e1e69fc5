/*
 * wq8.c — the W1A8 framework (binary_weight_matmul with activations = Q8_0): 1-bit weights
 * against activations quantized per call exactly as llama.cpp's quantize_row_q8_0_ref.
 * Baseline ISA; all SIMD lives in csrc/kernels/wq8/. Compiled with -ffp-contract=off:
 * the quantizer must round each float32 step exactly as the reference does.
 *
 * Steps of takane_wq8_prepacked_run:
 *  1. On the calling thread, quantize every row of xs = x * in_scale into the caller's
 *     thread-local scratch: q (kw*64 int8, zero past k), the fp16-rounded block scales
 *     d (float, 2*kw, 0 for padding blocks) and nq = -sum q per block. NaN / inf are
 *     reported here, before any output is written.
 *  2. Tasks compute through takane_wq8_block (also the body of takane_matmul_q8_0_rows),
 *     which picks the regime by M:
 *     - decode / batched decode (M below the set's GEMM threshold, or a set without a
 *       GEMM): the rows' tables (the kernel's build_table, up to 16 rows / 256 KiB) in
 *       thread-local scratch, then every run of np panels once for all those rows, mr at a
 *       time — M = 1 streams every panel once, sequentially (np concurrent streams);
 *       tasks split the panels (takane_plan_grid), or the rows for a tall M;
 *     - prefill (M >= the threshold, issue 21): the GEMM of wq8_gemm.c — each strip of
 *       output rows expanded once per row block to int8, a register-tiled VPDPBUSD /
 *       VPMADDUBSW kernel over every row; tasks split the strips only.
 *     The two regimes sum in different orders (both within the bound below); within one,
 *     a row's result does not depend on the batch or the thread split.
 *  3. The kernel applies the group scales (sum_g g * group sum, see internal.h); the
 *     epilogue per output is y = fl(fl(v * scale) + bias).
 * Scratch lives in the per-thread buffers of takane_scratch_get (threads.c), which only
 * grow (freed at thread exit), so a decode loop allocates nothing after its first call.
 *
 * Float error: a block's d * S is one rounding (or an FMA), a group's blocks are summed
 * (<= its blocks - 1 adds), then one multiply by g and ngroups - 1 adds (or FMAs), scale,
 * bias: every
 * term passes through at most nb + 4 roundings (blocks per group + groups <= nb + 1),
 * which is the documented gamma(nb + 4) bound (takane.h).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"
#include "wq8_gemm.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- the threaded run ---------------------------------------------------------------- */

typedef struct q8_job {
    const takane_kernel_set *ks;
    const takane_weights *w;
    int64_t m;
    const int8_t *q;        /* m rows of kw*64 */
    const float *d;         /* m rows of 2*kw */
    const int32_t *nq;      /* m rows of 2*kw */
    const float *scale, *bias;
    const takane_gscales *gs;  /* &gsv or NULL */
    takane_gscales gsv;
    int64_t gw, ngroups;    /* words per group (kw without group scales), groups per row */
    float *y;
    int64_t ys;
    takane_grid grid;                  /* rows x units of unit_cols columns */
    int64_t unit_cols;                 /* np panels' rows (panel kernels), a GEMM strip */
    /* Panel path with every task covering all m rows (m <= table_rows): the rows' tables,
     * built once by the caller (row i at shared_tables + i * tlen), else NULL (each task
     * builds its own, SHARED_TABLES) */
    const char *shared_tables;
    int64_t tlen;
    int failed;                        /* atomic: first failing takane_status */
} q8_job;

/* Smallest M that takes the GEMM: the kernel set's measured crossover (gemm->min_m); env
 * TAKANE_Q8_GEMM_MIN_M overrides it (benchmarks and tests force either regime). */
static int64_t gemm_min_m(const takane_q8_gemm_ukernel *g) {
    const char *e = getenv("TAKANE_Q8_GEMM_MIN_M");
    if (e && *e) {
        char *end;
        const long v = strtol(e, &end, 10);
        if (*end == 0 && v >= 1) return v;
    }
    return g->min_m;
}

int takane_wq8_uses_gemm(const takane_kernel_set *ks, int64_t m) {
    const takane_q8_gemm_ukernel *g = ks->q8->gemm;
    return g && m >= 2 && m >= gemm_min_m(g) && (!g->usable || g->usable());
}

/* Activation rows whose tables are built at a time by the panel path: each run of weight
 * panels is loaded once and used for all of them (batched decode: M sequences share one
 * weight stream), so a bigger chunk saves weight traffic — as long as the chunk's tables
 * stay in L2 (each run reads all of them): at most TABLE_ROWS rows and TABLE_BYTES of
 * tables (AVX-512, K = 4096: 8 rows of 32 KiB; K = 12288: 2 rows), at least mr rows. */
#define TABLE_ROWS 16
#define TABLE_BYTES ((int64_t)256 << 10)

static int64_t table_rows(const takane_q8_ukernel *uk, int64_t kw) {
    int64_t rows = TABLE_BYTES / takane_wq8_table_stride(uk, kw);
    if (rows > TABLE_ROWS) rows = TABLE_ROWS;
    rows = rows / uk->mr * uk->mr;
    return rows < uk->mr ? uk->mr : rows;
}

int64_t takane_wq8_block_scratch(const takane_kernel_set *ks, int64_t kw, int64_t m) {
    const takane_q8_ukernel *uk = ks->q8;
    const int64_t rows = table_rows(uk, kw);
    int64_t bytes = (m < rows ? m : rows) * takane_wq8_table_stride(uk, kw);
    if (uk->mr > m) bytes = uk->mr * takane_wq8_table_stride(uk, kw);
    if (takane_wq8_uses_gemm(ks, m)) { /* groups: at most one per word */
        const int64_t g = takane_wq8_gemm_scratch(uk->gemm, kw, kw);
        if (g > bytes) bytes = g;
    }
    return bytes;
}

/* One pass of the panel kernels over the columns [c0, c1) for mc rows whose tables are
 * built (tp[i], with dp[i] / qp[i] the row's block scales and negated block sums; mc <=
 * TABLE_ROWS): every run of np panels loaded once for all mc rows, mr at a time; y points
 * at the first row's outputs. Returns nonzero iff a group scale read was NaN or infinite. */
static int panel_pass(const takane_q8_ukernel *uk, const takane_weights *w, int64_t mc,
                      const void *const *tp, const float *const *dp, const int32_t *const *qp,
                      const float *scale, const takane_gscales *gs, int64_t gw, const float *bias,
                      float *y, int64_t ys, int64_t c0, int64_t c1) {
    const int mr = uk->mr, np = uk->np;
    const int64_t kw = w->kw, pstride = kw * TAKANE_PANEL_ROWS;
    const int64_t prows = (int64_t)np * TAKANE_PANEL_ROWS;
    float out[TAKANE_Q8_MAX_MR * TAKANE_Q8_MAX_NP * TAKANE_PANEL_ROWS];
    /* panels [p_begin, p_end) hold the columns; runs of np panels start at p_begin */
    const int64_t p_begin = c0 / TAKANE_PANEL_ROWS;
    const int64_t p_end = (c1 + TAKANE_PANEL_ROWS - 1) / TAKANE_PANEL_ROWS;
    for (int64_t p0 = p_begin; p0 < p_end; p0 += np) {
        const int npi = (int)min64(np, p_end - p0);
        const int64_t j0 = p0 * TAKANE_PANEL_ROWS;
        const int64_t nj = min64((int64_t)npi * TAKANE_PANEL_ROWS, w->n - j0);
        /* only columns [c0, c1) are written: neighbours may belong to another thread */
        const int64_t ja = j0 < c0 ? c0 - j0 : 0;
        const int64_t jb = min64(nj, c1 - j0);
        const takane_gscales gsj = gs ? takane_gs_from(gs, j0) : (takane_gscales){0};
        for (int64_t i0 = 0; i0 < mc; i0 += mr) {
            const int mi = (int)min64(mr, mc - i0);
            if (uk->panels(tp + i0, dp + i0, qp + i0, mi, w->panels + p0 * pstride, pstride, npi,
                           kw, gw, gs ? &gsj : NULL, nj, out))
                return 1;
            for (int i = 0; i < mi; i++) {
                float *yrow = y + (i0 + i) * ys + j0;
                const float *oi = out + i * prows;
                for (int64_t j = ja; j < jb; j++) {
                    float v = oi[j];
                    if (scale) v = v * scale[j0 + j];
                    if (bias) v = v + bias[j0 + j];
                    yrow[j] = v;
                }
            }
        }
    }
    return 0;
}

int takane_wq8_block(const takane_kernel_set *ks, const takane_weights *w, int64_t m,
                     const int8_t *q, const float *d, const int32_t *nq, const float *scale,
                     const takane_gscales *gs, int64_t gw, int64_t ngroups, const float *bias,
                     float *y, int64_t ys, int64_t c0, int64_t c1, void *tables) {
    const takane_q8_ukernel *uk = ks->q8;
    /* prefill: the GEMM (weights expanded once per strip, reused by every row) */
    if (takane_wq8_uses_gemm(ks, m))
        return takane_wq8_gemm_cols(uk->gemm, w, m, q, d, nq, c0, c1, scale, gs, gw, ngroups,
                                    bias, y, ys, tables) != TAKANE_OK;
    const int64_t kw = w->kw;
    const int64_t tlen = takane_wq8_table_stride(uk, kw);
    char *buf = (char *)tables;
    const void *tp[TABLE_ROWS];
    const float *dp[TABLE_ROWS];
    const int32_t *qp[TABLE_ROWS];
    const int64_t chunk = table_rows(uk, kw);
    /* decode and batched decode: the tables of up to `chunk` rows, then every run of
     * panels once, for all those rows in tiles of mr (the run stays in L1/L2 between
     * tiles: M rows cost one weight stream, not M / mr) */
    for (int64_t c = 0; c < m; c += chunk) {
        const int64_t mc = min64(chunk, m - c);
        for (int64_t i = 0; i < mc; i++) {
            uk->build_table(q + (c + i) * kw * 64, kw, buf + i * tlen);
            tp[i] = buf + i * tlen;
            dp[i] = d + (c + i) * 2 * kw;
            qp[i] = nq + (c + i) * 2 * kw;
        }
        if (panel_pass(uk, w, mc, tp, dp, qp, scale, gs, gw, bias, y + c * ys, ys, c0, c1))
            return 1;
    }
    return 0;
}

static void q8_task(void *ctx, int64_t task) {
    q8_job *job = (q8_job *)ctx;
    const takane_weights *w = job->w;
    const int64_t kw = w->kw;
    const int64_t unit = job->unit_cols;
    takane_task_range r;
    if (!takane_grid_task(&job->grid, task, job->m, (w->n + unit - 1) / unit, &r)) return;
    const int64_t i_begin = r.i0, i_end = r.i1;
    const int64_t c_begin = r.b0 * unit, c_end = min64(w->n, r.b1 * unit);
    if (job->shared_tables) { /* i_begin = 0, i_end = m <= TABLE_ROWS */
        const void *tp[TABLE_ROWS];
        const float *dp[TABLE_ROWS];
        const int32_t *qp[TABLE_ROWS];
        for (int64_t i = 0; i < job->m; i++) {
            tp[i] = job->shared_tables + i * job->tlen;
            dp[i] = job->d + i * 2 * kw;
            qp[i] = job->nq + i * 2 * kw;
        }
        if (panel_pass(job->ks->q8, w, job->m, tp, dp, qp, job->scale, job->gs, job->gw,
                       job->bias, job->y, job->ys, c_begin, c_end))
            __atomic_store_n(&job->failed, TAKANE_ERR_NOT_FINITE, __ATOMIC_RELAXED);
        return;
    }
    void *buf = takane_scratch_get(TAKANE_SCRATCH_TASK,
                                   (size_t)takane_wq8_block_scratch(job->ks, kw, i_end - i_begin));
    if (!buf) {
        __atomic_store_n(&job->failed, TAKANE_ERR_OUT_OF_MEMORY, __ATOMIC_RELAXED);
        return;
    }
    if (takane_wq8_block(job->ks, w, i_end - i_begin, job->q + i_begin * kw * 64,
                         job->d + i_begin * 2 * kw, job->nq + i_begin * 2 * kw, job->scale,
                         job->gs, job->gw, job->ngroups, job->bias, job->y + i_begin * job->ys,
                         job->ys, c_begin, c_end, buf))
        __atomic_store_n(&job->failed, TAKANE_ERR_NOT_FINITE, __ATOMIC_RELAXED);
}

/* Below this many MACs the call stays on the calling thread (waking a worker costs more). */
#define MIN_PARALLEL_MACS (1 << 20)
/* SHARED_TABLES: decode split over threads used to build every row's table once per task
 * (8 tasks per call on two threads), where the table is the same for every task; the
 * caller now builds them once. */

takane_status takane_wq8_prepacked_run(const takane_kernel_set *ks, const takane_weights *w,
                                       int64_t m, const float *x, int64_t xs,
                                       const float *in_scale, const float *scale,
                                       const float *group_scale, int64_t group_size,
                                       const float *bias, float *y, int64_t ys, int threads) {
    const takane_q8_ukernel *uk = ks->q8;
    const int64_t n = w->n, k = w->k, kw = w->kw;
    if (k == 0) { /* every sum is empty: y = 0 * scale + bias, as the float path gives */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                float v = 0.0f;
                if (scale) v = v * scale[j];
                if (bias) v = v + bias[j];
                y[i * ys + j] = v;
            }
        return TAKANE_OK;
    }
    /* quantized rows: q, then d, then nq (each row kw * 64 bytes + 2 * kw * 8 bytes), then
     * (shared, below) the tables, 64-byte aligned; a size that does not fit is out of
     * memory, never a wrapped product — checked first: the task grid below computes with m
     * too (m = 2^62 overflowed it) */
    const int64_t tlen = takane_wq8_table_stride(uk, kw);
    if ((uint64_t)m > (uint64_t)(SIZE_MAX / 4) / ((uint64_t)kw * 80 + (uint64_t)tlen)) return TAKANE_ERR_OUT_OF_MEMORY;
    const int64_t nruns = (w->npanels + uk->np - 1) / uk->np;
    const int nthreads = takane_plan_threads(threads, (double)m * (double)n * (double)k,
                                             (double)MIN_PARALLEL_MACS);
    const int gemm = takane_wq8_uses_gemm(ks, m);
    const takane_grid grid = takane_plan_grid(nthreads, m, uk->mr, nruns, 1);
    /* the panel path with the weights split over several tasks, each covering every row:
     * the rows' tables are built once here instead of once per task (SHARED_TABLES) */
    const int shared = !gemm && nthreads > 1 && grid.m_chunk >= m && grid.ntasks > 1 &&
                       m <= table_rows(uk, kw);
    const size_t qbytes = (size_t)m * (size_t)kw * 64;
    const size_t dbytes = (size_t)m * (size_t)kw * 2 * sizeof(float);
    const size_t tables_at = (qbytes + 2 * dbytes + 63) / 64 * 64;
    char *buf = (char *)takane_scratch_get(TAKANE_SCRATCH_CALL,
                                           tables_at + (shared ? (size_t)(m * tlen) : 0));
    if (!buf) return TAKANE_ERR_OUT_OF_MEMORY;
    int8_t *q = (int8_t *)buf;
    float *d = (float *)(buf + qbytes);
    int32_t *nq = (int32_t *)(buf + qbytes + dbytes);
    for (int64_t i = 0; i < m; i++) {
        takane_status st = uk->quantize_row(x + i * xs, in_scale, k, kw, q + i * kw * 64,
                                            d + i * 2 * kw, nq + i * 2 * kw);
        if (st != TAKANE_OK) return st;
    }
    q8_job job;
    memset(&job, 0, sizeof job);
    job.ks = ks, job.w = w, job.m = m, job.q = q, job.d = d, job.nq = nq;
    job.scale = scale, job.bias = bias, job.y = y, job.ys = ys;
    job.gw = group_scale ? group_size / 64 : kw;
    job.ngroups = (kw + job.gw - 1) / job.gw;
    job.gsv = takane_gscales_for(w, group_scale, job.ngroups);
    job.gs = group_scale ? &job.gsv : NULL;
    job.failed = TAKANE_OK;
    if (gemm) {
        /* the GEMM: split the weights only (each task expands its strips once and sweeps
         * every row against them); whole strips are the tasks' unit */
        const int64_t nstrips = (n + uk->gemm->nr - 1) / uk->gemm->nr;
        const takane_grid sgrid = takane_plan_grid(nthreads, 1, 1, nstrips, 1);
        job.grid = sgrid, job.grid.m_chunk = m;
        job.unit_cols = uk->gemm->nr;
        takane_parallel_run(nthreads, sgrid.p_tasks, q8_task, &job);
        return (takane_status)job.failed;
    }
    if (shared) {
        char *tables = buf + tables_at;
        for (int64_t i = 0; i < m; i++) uk->build_table(q + i * kw * 64, kw, tables + i * tlen);
        job.shared_tables = tables, job.tlen = tlen;
    }
    job.grid = grid;
    job.unit_cols = (int64_t)uk->np * TAKANE_PANEL_ROWS;
    takane_parallel_run(nthreads, grid.ntasks, q8_task, &job);
    return (takane_status)job.failed;
}
