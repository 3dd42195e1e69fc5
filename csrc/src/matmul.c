/*
 * matmul.c — the portable W1A1 framework: loops over register tiles, edges, and the
 * fused float-activation path. Baseline ISA; all SIMD lives in csrc/kernels/.
 *
 * Invariants: inputs were validated by api.c (m, n, k > 0 — api.c answers empty
 * problems itself — k <= TAKANE_MAX_K, padding bits zero, pointers non-NULL). popcount(a XOR w) <= k, so
 * k - 2*pc lies in [-k, k] and fits int32.
 */
#include <stdlib.h>

#include "internal.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

void takane_matmul_packed_run(const takane_kernel_set *ks, int64_t m, int64_t n, int64_t k,
                              const uint64_t *x, int64_t xs, const uint64_t *w, int64_t ws,
                              int32_t *y, int64_t ys) {
    const int64_t kw = takane_words_for(k);
    const int mr = ks->matmul->mr, nr = ks->matmul->nr;
    const uint64_t *xr[TAKANE_MAX_MR], *wr[TAKANE_MAX_NR];
    uint64_t pc[TAKANE_MAX_MR * TAKANE_MAX_NR];
    for (int64_t i0 = 0; i0 < m; i0 += mr) {
        const int64_t mi = min64(mr, m - i0);
        /* Edge tile: repeat the last valid row so the kernel always computes a full
         * tile; the extra results are computed and dropped, never stored. */
        for (int i = 0; i < mr; i++) xr[i] = x + (i0 + min64(i, mi - 1)) * xs;
        for (int64_t j0 = 0; j0 < n; j0 += nr) {
            const int64_t nj = min64(nr, n - j0);
            for (int j = 0; j < nr; j++) wr[j] = w + (j0 + min64(j, nj - 1)) * ws;
            ks->matmul->popcount_tile(xr, wr, kw, pc);
            for (int64_t i = 0; i < mi; i++) {
                int32_t *yrow = y + (i0 + i) * ys + j0;
                for (int64_t j = 0; j < nj; j++)
                    yrow[j] = (int32_t)(k - 2 * (int64_t)pc[i * nr + j]);
            }
        }
    }
}

/* Rows of activations packed per block in the fused path: bounds the scratch buffer
 * (block * ceil(k/64) words) independently of m. */
#define F32_BLOCK_ROWS 64

takane_status takane_matmul_f32_run(const takane_kernel_set *ks, int64_t m, int64_t n,
                                    int64_t k, const float *x, int64_t xs, const float *t,
                                    int per_channel, const uint64_t *w, int64_t ws, int32_t *y,
                                    int64_t ys) {
    const int64_t kw = takane_words_for(k);
    const int64_t block = min64(m, F32_BLOCK_ROWS);
    uint64_t *buf = (uint64_t *)malloc((size_t)(block * kw) * sizeof(uint64_t));
    if (!buf) return TAKANE_ERR_OUT_OF_MEMORY;
    for (int64_t r0 = 0; r0 < m; r0 += block) {
        const int64_t rows = min64(block, m - r0);
        for (int64_t r = 0; r < rows; r++) {
            if (ks->pack_row(x + (r0 + r) * xs, k, t, per_channel, buf + r * kw)) {
                free(buf);
                return TAKANE_ERR_NAN;
            }
        }
        takane_matmul_packed_run(ks, rows, n, k, buf, kw, w, ws, y + r0 * ys,
                                 ys);
    }
    free(buf);
    return TAKANE_OK;
}

/* ---- prepacked (panel) path ---------------------------------------------------------- */

/* Work below this many bit-MACs (m*n*k) stays on the calling thread: waking a worker
 * costs ~10-50 us, about what ~2^23 bit-MACs take on one core. */
#define MIN_PARALLEL_BITMACS (1 << 23)
/* Panels per L2 block: the block's weights (np * kw * 64 bytes) stay L2-resident while
 * every activation tile of the task streams past them. */
#define L2_BLOCK_BYTES (256 * 1024)
/* Activation rows packed per step of the fused float path: the packed block
 * (rows * kw words) stays in L1/L2 while it meets every weight panel of the task. */
#define PACK_BLOCK_BYTES (64 * 1024)
/* Target weight bytes per task when the weights are split across tasks. */
#define WEIGHT_TASK_BYTES (64 * 1024)
/* Packed activation words kept on the stack (2 KiB): one row of K <= 16384, the decode
 * case, needs no allocation. */
#define STACK_WORDS 256
/* Panels per 64 output columns: the epilogue's unit (a binarized output word). */
#define EPI_PANELS (64 / TAKANE_PANEL_ROWS)

typedef struct gemm_job {
    const takane_kernel_set *ks;
    const takane_weights *w;
    int64_t m;
    const uint64_t *x; /* packed activations, or NULL for the float path */
    int64_t xs;        /* row stride of x, or of xf on the float path (elements) */
    const float *xf; /* float activations (float path) */
    const float *t;
    int per_channel;
    int32_t *y;
    int64_t ys;
    takane_epilogue_fn epi; /* or NULL */
    void *epi_ctx;
    takane_grid grid; /* rows x panels */
    int failed;                        /* atomic: a takane_status != OK, first one wins */
} gemm_job;

/* Tasks of at most this many rows take the kernel's gemv_m path (when it has one): the
 * weights then stream once per gemv_m_max rows instead of once per panel_mr rows. Larger
 * tasks (prefill) keep the panel tile, which reuses each loaded line across 4 panels. */
#define GEMV_M_ROWS 16

/* y[i0 + i][p * PANEL_ROWS + j] = k - 2 * count, for the mr rows and np panels' columns
 * (clipped at n) of a count buffer with row stride ldc. */
static inline void store_counts(const gemm_job *job, const uint32_t *pc, int ldc, int64_t i0,
                                int mr, int64_t p, int np) {
    const int64_t c0 = p * TAKANE_PANEL_ROWS, k = job->w->k;
    const int64_t cols = min64((int64_t)np * TAKANE_PANEL_ROWS, job->w->n - c0);
    for (int i = 0; i < mr; i++) {
        int32_t *yrow = job->y + (i0 + i) * job->ys + c0;
        for (int64_t j = 0; j < cols; j++) yrow[j] = (int32_t)(k - 2 * (int64_t)pc[i * ldc + j]);
    }
}

/* Rows [i_begin, i_end) x panels [p_begin, p_end); x points at packed row i_begin. */
static void gemm_block(const gemm_job *job, const uint64_t *x, int64_t xs, int64_t i_begin,
                       int64_t i_end, int64_t p_begin, int64_t p_end) {
    const takane_weights *w = job->w;
    const takane_matmul_ukernel *uk = job->ks->matmul;
    const int64_t kw = w->kw, pstride = kw * TAKANE_PANEL_ROWS, n = w->n, k = w->k;
    int64_t ncp = L2_BLOCK_BYTES / (kw * TAKANE_PANEL_ROWS * 8);
    if (ncp < 1) ncp = 1;
    /* With an epilogue, blocks cover whole 64-column words (p_begin is aligned too) */
    if (job->epi) ncp = ncp < EPI_PANELS ? EPI_PANELS : ncp / EPI_PANELS * EPI_PANELS;
    const uint64_t *xr[TAKANE_MAX_MR];
    enum { LDC = TAKANE_MAX_PANEL_NP * TAKANE_PANEL_ROWS };
    uint32_t pc[TAKANE_MAX_MR * LDC];
    const int64_t rows = i_end - i_begin;
    const int gemv = rows == 1 && uk->gemv != NULL;
    /* Small batch: rows split into near-equal chunks of <= gemv_m_max, each chunk one
     * pass over the block's panels as a single stream (the first from DRAM, the others
     * from L2) */
    const int gemv_m = rows >= 2 && rows <= GEMV_M_ROWS && uk->gemv_m != NULL;
    int64_t gm_chunk = rows;
    if (gemv_m) {
        const int64_t nchunks = (rows + uk->gemv_m_max - 1) / uk->gemv_m_max;
        gm_chunk = (rows + nchunks - 1) / nchunks;
    }
    for (int64_t jb = p_begin; jb < p_end; jb += ncp) {
        const int64_t je = min64(p_end, jb + ncp);
        if (gemv_m) {
            for (int64_t i0 = i_begin; i0 < i_end; i0 += gm_chunk) {
                const int mr = (int)min64(gm_chunk, i_end - i0);
                for (int i = 0; i < mr; i++) xr[i] = x + (i0 - i_begin + i) * xs;
                for (int64_t p = jb; p < je;) {
                    const int np = (int)min64(TAKANE_MAX_PANEL_NP, je - p);
                    uk->gemv_m(xr, mr, w->panels + p * pstride, np, kw, pc, LDC);
                    store_counts(job, pc, LDC, i0, mr, p, np);
                    p += np;
                }
            }
            if (job->epi)
                job->epi(job->epi_ctx, i_begin, i_end, jb * TAKANE_PANEL_ROWS,
                         min64(n, je * TAKANE_PANEL_ROWS));
            continue;
        }
        if (gemv) { /* decode: one row, the block's panels as one sequential stream */
            for (int64_t p = jb; p < je;) {
                const int np = (int)min64(TAKANE_MAX_PANEL_NP, je - p);
                uk->gemv(x, w->panels + p * pstride, np, kw, pc);
                const int64_t c0 = p * TAKANE_PANEL_ROWS;
                const int64_t cols = min64((int64_t)np * TAKANE_PANEL_ROWS, n - c0);
                int32_t *yrow = job->y + i_begin * job->ys + c0;
                for (int64_t j = 0; j < cols; j++) yrow[j] = (int32_t)(k - 2 * (int64_t)pc[j]);
                p += np;
            }
            if (job->epi)
                job->epi(job->epi_ctx, i_begin, i_end, jb * TAKANE_PANEL_ROWS,
                         min64(n, je * TAKANE_PANEL_ROWS));
            continue;
        }
        for (int64_t i0 = i_begin; i0 < i_end; i0 += uk->panel_mr) {
            const int mr = (int)min64(uk->panel_mr, i_end - i0);
            for (int i = 0; i < mr; i++) xr[i] = x + (i0 - i_begin + i) * xs;
            for (int64_t p = jb; p < je;) {
                const int np = (int)min64(uk->panel_np[mr], je - p);
                uk->panel_tile(xr, mr, w->panels + p * pstride, pstride, np, kw, pc, LDC);
                store_counts(job, pc, LDC, i0, mr, p, np);
                p += np;
            }
        }
        /* The block's columns are final for every row of the task: finish them while
         * they are still in cache, on this thread. */
        if (job->epi)
            job->epi(job->epi_ctx, i_begin, i_end, jb * TAKANE_PANEL_ROWS,
                     min64(n, je * TAKANE_PANEL_ROWS));
    }
}

void takane_matmul_prepacked_block(const takane_kernel_set *ks, const takane_weights *w,
                                   int64_t m, const uint64_t *x, int64_t xs, int64_t p_begin,
                                   int64_t p_end, int32_t *y, int64_t ys) {
    gemm_job job = {ks, w, m, x, xs, NULL, NULL, 0, y, ys, NULL, NULL, {0, 0, 0, 0}, TAKANE_OK};
    gemm_block(&job, x, xs, 0, m, p_begin, p_end);
}

static void gemm_task(void *ctx, int64_t task) {
    gemm_job *job = (gemm_job *)ctx;
    takane_task_range r;
    if (!takane_grid_task(&job->grid, task, job->m, job->w->npanels, &r)) return;
    const int64_t i_begin = r.i0, i_end = r.i1, p_begin = r.b0, p_end = r.b1;
    if (job->x) {
        gemm_block(job, job->x + i_begin * job->xs, job->xs, i_begin, i_end, p_begin, p_end);
        return;
    }
    /* Fused float path: binarize + pack a block of rows, multiply it, next block. */
    const int64_t kw = job->w->kw, k = job->w->k;
    int64_t rows = PACK_BLOCK_BYTES / (kw * 8);
    rows = rows < 1 ? 1 : rows > 64 ? 64 : rows;
    rows = min64(rows, i_end - i_begin);
    /* A decode-sized block (one row of K <= 64 * STACK_WORDS) packs into a stack buffer:
     * no allocation on the GEMV path; larger blocks are worth a malloc. */
    uint64_t stack_buf[STACK_WORDS];
    uint64_t *buf = rows * kw <= STACK_WORDS
                        ? stack_buf
                        : (uint64_t *)malloc((size_t)(rows * kw) * sizeof(uint64_t));
    if (!buf) {
        __atomic_store_n(&job->failed, TAKANE_ERR_OUT_OF_MEMORY, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t r0 = i_begin; r0 < i_end; r0 += rows) {
        const int64_t r1 = min64(i_end, r0 + rows);
        for (int64_t r = r0; r < r1; r++) {
            if (job->ks->pack_row(job->xf + r * job->xs, k, job->t, job->per_channel,
                                  buf + (r - r0) * kw)) {
                __atomic_store_n(&job->failed, TAKANE_ERR_NAN, __ATOMIC_RELAXED);
                if (buf != stack_buf) free(buf);
                return;
            }
        }
        gemm_block(job, buf, kw, r0, r1, p_begin, p_end);
    }
    if (buf != stack_buf) free(buf);
}

takane_status takane_matmul_prepacked_run(const takane_kernel_set *ks, const takane_weights *w,
                                          int64_t m, const uint64_t *x, int64_t xs,
                                          const float *xf, const float *t, int per_channel,
                                          int32_t *y, int64_t ys, int threads) {
    return takane_matmul_prepacked_run_epi(ks, w, m, x, xs, xf, t, per_channel, y, ys, threads,
                                           NULL, NULL);
}

takane_status takane_matmul_prepacked_run_epi(const takane_kernel_set *ks,
                                              const takane_weights *w, int64_t m,
                                              const uint64_t *x, int64_t xs, const float *xf,
                                              const float *t, int per_channel, int32_t *y,
                                              int64_t ys, int threads, takane_epilogue_fn epi,
                                              void *epi_ctx) {
    const int nthreads = takane_plan_threads(threads, (double)m * (double)w->n * (double)w->k,
                                             (double)MIN_PARALLEL_BITMACS);
    /* with an epilogue, tasks own whole 64-column words of its output */
    const takane_grid grid = takane_plan_grid(nthreads, m, ks->matmul->panel_mr, w->npanels,
                                              epi ? EPI_PANELS : 1);
    gemm_job job = {ks, w, m, x, xs, xf, t, per_channel, y, ys, epi, epi_ctx, grid, TAKANE_OK};
    if (grid.m_chunk == m && grid.p_tasks > 1) {
        /* Weights split over tasks (few rows, decode): tasks of ~WEIGHT_TASK_BYTES, taken
         * dynamically, so a worker that joins late still takes a share and the caller's
         * wait at the end is at most one small task. */
        const int64_t align = epi ? EPI_PANELS : 1;
        int64_t pc = WEIGHT_TASK_BYTES / (w->kw * TAKANE_PANEL_ROWS * 8);
        pc = (pc + align - 1) / align * align;
        if (pc < align) pc = align;
        if (pc < job.grid.p_chunk) {
            job.grid.p_chunk = pc;
            job.grid.p_tasks = (w->npanels + pc - 1) / pc;
            job.grid.ntasks = job.grid.p_tasks;
        }
    }
    uint64_t *packed = NULL, stack_buf[STACK_WORDS];
    if (!x && job.grid.p_tasks > 1) {
        /* Weights are split across tasks and every task needs all (few) rows: pack them
         * once here rather than once per task. m < 4 * nthreads * mr rows: small. */
        const int64_t kw = w->kw;
        packed = m * kw <= STACK_WORDS ? stack_buf
                                       : (uint64_t *)malloc((size_t)(m * kw) * sizeof(uint64_t));
        if (!packed) return TAKANE_ERR_OUT_OF_MEMORY;
        for (int64_t r = 0; r < m; r++) {
            if (ks->pack_row(xf + r * xs, w->k, t, per_channel, packed + r * kw)) {
                if (packed != stack_buf) free(packed);
                return TAKANE_ERR_NAN;
            }
        }
        job.x = packed, job.xs = kw;
    }
    takane_parallel_run(nthreads, job.grid.ntasks, gemm_task, &job);
    if (packed != stack_buf) free(packed);
    return (takane_status)job.failed;
}
