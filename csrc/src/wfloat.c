/*
 * wfloat.c — the W1A-float framework (binary_weight_matmul): 1-bit weights against real
 * activations. Baseline ISA; all SIMD lives in csrc/kernels/wfloat/.
 *
 * Loop: for each block of up to mr activation rows, scale them by in_scale into a
 * zero-padded buffer and let the kernel build its lookup table per row; then walk the
 * weight rows in panels of nr, one kernel call per panel (on an edge panel the last
 * valid row is repeated and its extra sums dropped), and finish each sum with
 * fl(fl(sum * scale) + bias). With m == 1 (decode) this is one table and one pass over
 * the weights: the kernels' MR=1 variant is the GEMV path. Compiled with
 * -ffp-contract=off so the epilogue rounds after each step, as documented.
 *
 * Prepacked path (takane_wfloat_prepacked_run, what Python uses): the same tables, but
 * the weights come from a takane_weights handle's panels through the kernel's
 * panel_packed (no transpose: a shuffle per 32-column chunk), K is blocked so a block's
 * tables stay in L1 while every panel passes (the block size depends on the set's mr
 * only, so a row's result never depends on its batch or the thread split), and the
 * rows x weight-groups grid is split over threads (takane_plan_grid). Sets without
 * panel_packed (scalar, NEON) get rows copied out of the panels for their `panel`.
 * Measured on a Zen 4 with AVX-512, (1,4096,4096), 1 thread: 229 -> 208 us against the
 * canonical path; the kernel is VPERMPS-throughput bound (a VPERMPS zmm costs about two
 * VPADDD; shifts and adds hide behind it), so K blocking itself was neutral there.
 * Decode (one row) with group scales pairs the 16-row tiles of a task (gemv_groups_pair,
 * where the set has it: one table load serves two tiles); an odd last tile goes alone
 * through panel_packed_groups, which gives it the same bits.
 *
 * Invariants: api_layers.c validated everything (m, n > 0, k <= TAKANE_MAX_K, weight
 * padding zero, in_scale/scale/bias finite). Scratch is O(mr * k) on the canonical path,
 * O(mr * (k + n)) per task on the prepacked one (the thread's task scratch, kept between
 * calls), plus O(m * k) call scratch for shared tables when m <= SHARED_TABLE_ROWS.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

takane_status takane_wfloat_run(const takane_kernel_set *ks, int64_t m, int64_t n, int64_t k,
                                const float *x, int64_t xs, const uint64_t *w, int64_t ws,
                                const float *in_scale, const float *scale, const float *bias,
                                float *y, int64_t ys) {
    const takane_wfloat_ukernel *uk = ks->wfloat;
    const int mr = uk->mr, nr = uk->nr;
    const int64_t kpad = takane_words_for(k) * 64;
    const int64_t tlen = uk->table_len(k);
    /* +1: never a zero-size allocation (k == 0 has empty tables) */
    float *xbuf = (float *)calloc((size_t)kpad + 1, sizeof(float)); /* zero past k, always */
    float *tables = (float *)malloc(((size_t)(mr * tlen) + 1) * sizeof(float));
    if (!xbuf || !tables) {
        free(xbuf);
        free(tables);
        return TAKANE_ERR_OUT_OF_MEMORY;
    }
    const float *tp[TAKANE_WFLOAT_MAX_MR];
    const uint64_t *wr[TAKANE_WFLOAT_MAX_NR];
    float sums[TAKANE_WFLOAT_MAX_MR * TAKANE_WFLOAT_MAX_NR];
    for (int64_t i0 = 0; i0 < m; i0 += mr) {
        const int mi = (int)min64(mr, m - i0);
        for (int i = 0; i < mi; i++) {
            tp[i] = tables + i * tlen;
            if (k == 0) continue; /* x and w may be NULL; every sum is 0 */
            const float *row = x + (i0 + i) * xs;
            if (in_scale)
                for (int64_t c = 0; c < k; c++) xbuf[c] = row[c] * in_scale[c];
            else
                memcpy(xbuf, row, (size_t)k * sizeof(float));
            uk->build_table(xbuf, k, tables + i * tlen);
        }
        for (int64_t j0 = 0; j0 < n; j0 += nr) {
            const int64_t nj = min64(nr, n - j0);
            for (int j = 0; j < nr; j++) wr[j] = k ? w + (j0 + min64(j, nj - 1)) * ws : NULL;
            uk->panel(tp, mi, wr, k, sums);
            for (int i = 0; i < mi; i++) {
                float *yrow = y + (i0 + i) * ys + j0;
                for (int64_t j = 0; j < nj; j++) {
                    float v = sums[i * nr + j];
                    if (scale) v = v * scale[j0 + j];
                    if (bias) v = v + bias[j0 + j];
                    yrow[j] = v;
                }
            }
        }
    }
    free(xbuf);
    free(tables);
    return TAKANE_OK;
}

/* ---- prepacked (panel) path ---------------------------------------------------------- */

/* Table bytes kept L1-resident per K block: every weight panel of the block looks its
 * activation groups up in the same tables, so they must not be evicted by the panels
 * streaming past (a whole 4096-column table is 64 KiB per row on AVX-512). */
#define TABLE_BLOCK_BYTES (16 * 1024)
/* Below this many float MACs (m*n*k) the call stays on the calling thread: waking a
 * worker costs ~10-50 us, about what 2^20 table MACs take on one core. */
#define MIN_PARALLEL_MACS (1 << 20)
/* Rows whose tables the caller builds once for all tasks when the weights are split (each
 * task used to build them itself: for one 4096-column row ~3 us, 8 tasks per call on two
 * threads -> ~12 us of each thread's ~90 us). 8 rows of K = 4096 are 512 KiB of scratch. */
#define SHARED_TABLE_ROWS 8

typedef struct wf_job {
    const takane_kernel_set *ks;
    const takane_weights *w;
    int64_t m;
    const float *x;
    int64_t xs;
    const float *in_scale, *scale, *bias;
    const takane_gscales *gs;          /* group scales (ngk per row, either layout) or NULL */
    int64_t gw, ngk;                   /* words per group, groups per row */
    float *y;
    int64_t ys;
    takane_grid grid;                  /* rows x groups of nr weight rows */
    /* The tables of every row, built once by the caller (row i at shared_tables + i * tlen),
     * or NULL: each task builds its rows' tables itself (SHARED_TABLE_ROWS) */
    const float *shared_tables;
    int failed;                        /* atomic: a takane_status != OK, first one wins */
} wf_job;

/* Row `row`'s table: xs = x * in_scale (each product rounded to float32) into xbuf (kpad
 * floats whose tail past k is zero and stays zero), then the kernel's table. The one
 * place a table is built, so a row's table is the same bits whoever builds it. */
static void build_row_table(const wf_job *job, int64_t row, float *xbuf, float *table) {
    const int64_t k = job->w->k;
    const float *x = job->x + row * job->xs;
    if (job->in_scale)
        for (int64_t c = 0; c < k; c++) xbuf[c] = x[c] * job->in_scale[c];
    else
        memcpy(xbuf, x, (size_t)k * sizeof(float));
    job->ks->wfloat->build_table(xbuf, k, table);
}

/* Rows j0 .. j0+nr-1 of the handle, copied out of the panels into canonical rows
 * (rows past n repeat row n-1, as the canonical framework does). */
static void unpanel(const takane_weights *w, int64_t j0, int nr, uint64_t *rows,
                    const uint64_t **ptrs) {
    const int64_t kw = w->kw;
    for (int j = 0; j < nr; j++) {
        if (kw == 0) { /* k == 0: no panels (NULL), kernels read nothing */
            ptrs[j] = NULL;
            continue;
        }
        const int64_t row = min64(j0 + j, w->n - 1);
        const uint64_t *src = w->panels + (row / TAKANE_PANEL_ROWS) * kw * TAKANE_PANEL_ROWS +
                              row % TAKANE_PANEL_ROWS;
        for (int64_t q = 0; q < kw; q++) rows[j * kw + q] = src[q * TAKANE_PANEL_ROWS];
        ptrs[j] = rows + j * kw;
    }
}

/* acc[i * nr + j] += tmp[i * nr + j] * group_scale[row j0 + j][grp] for the rows < n.
 * The group scales are checked here, as they are read (TAKANE_ERR_NOT_FINITE). */
static void add_group(wf_job *job, const float *tmp, int mi, int nr, int64_t j0,
                      int64_t grp, float *acc) {
    const int64_t nj = min64(nr, job->w->n - j0);
    for (int64_t j = 0; j < nj; j++) {
        const float g = takane_gs_at(job->gs, j0 + j, grp);
        if (!isfinite(g)) __atomic_store_n(&job->failed, TAKANE_ERR_NOT_FINITE, __ATOMIC_RELAXED);
        for (int i = 0; i < mi; i++) acc[i * nr + j] = acc[i * nr + j] + tmp[i * nr + j] * g;
    }
}

static void wf_task(void *ctx, int64_t task) {
    wf_job *job = (wf_job *)ctx;
    const takane_wfloat_ukernel *uk = job->ks->wfloat;
    const takane_weights *w = job->w;
    const int mr = uk->mr, nr = uk->nr;
    const int64_t n = w->n, k = w->k, kw = w->kw, kpad = kw * 64;
    takane_task_range r;
    if (!takane_grid_task(&job->grid, task, job->m, (n + nr - 1) / nr, &r)) return;
    const int64_t i_begin = r.i0, i_end = r.i1, g_begin = r.b0, g_end = r.b1;
    const int64_t tlen = uk->table_len(k), gcount = g_end - g_begin;
    const int packed = uk->panel_packed != NULL;
    const int shared = job->shared_tables != NULL;
    /* The task's buffers, in this thread's task scratch (kept between calls: a decode loop
     * allocates nothing per call; a per-call malloc of the ~136 KiB here cost 30-40 us a
     * call in a C program whose glibc heap shrank and regrew around it): xbuf (kpad
     * floats, zero past k), the tables of mr rows (unless shared), acc (group g's mr x nr
     * sums at acc + (g - g_begin) * mr * nr), rows (canonical copies, sets without
     * panel_packed); each part 64-byte aligned. */
    const size_t xbytes = shared ? 0 : ((size_t)kpad * sizeof(float) + 63) / 64 * 64;
    const size_t tbytes = shared ? 0 : ((size_t)(mr * tlen) * sizeof(float) + 63) / 64 * 64;
    const size_t abytes = ((size_t)(gcount * mr * nr) * sizeof(float) + 63) / 64 * 64;
    const size_t rbytes = packed ? 0 : (size_t)(nr * kw) * sizeof(uint64_t);
    char *scratch = (char *)takane_scratch_get(TAKANE_SCRATCH_TASK, xbytes + tbytes + abytes + rbytes);
    if (!scratch) {
        __atomic_store_n(&job->failed, TAKANE_ERR_OUT_OF_MEMORY, __ATOMIC_RELAXED);
        return;
    }
    float *xbuf = shared ? NULL : (float *)scratch;
    float *tables = shared ? NULL : (float *)(scratch + xbytes);
    float *acc = (float *)(scratch + xbytes + tbytes);
    uint64_t *rows = packed ? NULL : (uint64_t *)(scratch + xbytes + tbytes + abytes);
    if (xbuf) memset(xbuf + k, 0, (size_t)(kpad - k) * sizeof(float)); /* zero past k */
    const float *tp[TAKANE_WFLOAT_MAX_MR];
    const uint64_t *wr[TAKANE_WFLOAT_MAX_NR];
    float tmp[TAKANE_WFLOAT_MAX_MR * TAKANE_WFLOAT_MAX_NR]; /* one scale group's sums */
    const int64_t pstride = kw * TAKANE_PANEL_ROWS, ppg = nr / TAKANE_PANEL_ROWS;
    for (int64_t i0 = i_begin; i0 < i_end; i0 += mr) {
        const int mi = (int)min64(mr, i_end - i0);
        for (int i = 0; i < mi; i++) {
            if (shared) {
                tp[i] = job->shared_tables + (i0 + i) * tlen;
                continue;
            }
            tp[i] = tables + i * tlen;
            if (k == 0) continue; /* x may be NULL; empty tables, every sum is 0 */
            build_row_table(job, i0 + i, xbuf, tables + i * tlen);
        }
        if (packed) {
            /* K blocks outermost: a block's tables stay in L1 while all panels pass. The
             * block size depends on the set's mr only, never on mi or the thread split,
             * so a row's summation order (and result) is the same in any batch. */
            const int64_t word_bytes = uk->table_len(64) * (int64_t)sizeof(float) * mr;
            const int64_t kc = word_bytes >= TABLE_BLOCK_BYTES ? 1 : TABLE_BLOCK_BYTES / word_bytes;
            memset(acc, 0, (size_t)(gcount * mr * nr) * sizeof(float));
            if (!job->gs) {
                for (int64_t q0 = 0; q0 < kw; q0 += kc) {
                    const int64_t q1 = min64(kw, q0 + kc);
                    for (int64_t g = g_begin; g < g_end; g++) {
                        const int64_t p = g * ppg;
                        /* the last group may lack its second panel: repeat the first */
                        const int64_t ps = p + 1 < w->npanels ? pstride : 0;
                        uk->panel_packed(tp, mi, w->panels + p * pstride, ps, q0, q1,
                                         acc + (g - g_begin) * mr * nr);
                    }
                }
            } else {
                /* With group scales the whole of K per call: measured on a Zen 4 with
                 * G = 128, 1 thread, 4096x4096, against K blocks of whole groups: warm
                 * GEMV 340 -> 270 us, M = 64 16.5 -> 14 ms, cold GEMV 550 -> 415 us (one
                 * table per row stays in L2; the panels stream instead of being visited
                 * 1 KB at a time). Without group kernels (panel_packed per group) the
                 * groups are formed alone in tmp: acc = fl(acc + fl(tmp * g)). */
                const int64_t gw = job->gw, kcb = uk->panel_packed_groups ? kw : (kc >= gw ? kc / gw * gw : gw);
                /* decode: tiles in pairs that share their table loads (gemv_groups_pair:
                 * each tile's result is the one panel_packed_groups gives it alone) */
                const int pairs = mi == 1 && uk->gemv_groups_pair && uk->panel_packed_groups;
                for (int64_t q0 = 0; q0 < kw; q0 += kcb) {
                    const int64_t q1 = min64(kw, q0 + kcb);
                    for (int64_t g = g_begin; g < g_end; g++) {
                        const int64_t p = g * ppg;
                        const int64_t ps = p + 1 < w->npanels ? pstride : 0;
                        if (pairs && g + 1 < g_end) {
                            const int64_t p2 = p + ppg;
                            const uint64_t *pan[2] = {w->panels + p * pstride, w->panels + p2 * pstride};
                            const int64_t pstr[2] = {ps, p2 + 1 < w->npanels ? pstride : 0};
                            const takane_gscales gsj[2] = {takane_gs_from(job->gs, g * nr),
                                                           takane_gs_from(job->gs, (g + 1) * nr)};
                            const int64_t nrows[2] = {min64(nr, n - g * nr), min64(nr, n - (g + 1) * nr)};
                            float *const out[2] = {acc + (g - g_begin) * mr * nr, acc + (g + 1 - g_begin) * mr * nr};
                            if (uk->gemv_groups_pair(tp[0], pan, pstr, q0, q1, gw, gsj, nrows, out))
                                __atomic_store_n(&job->failed, TAKANE_ERR_NOT_FINITE, __ATOMIC_RELAXED);
                            g++;
                            continue;
                        }
                        if (uk->panel_packed_groups) { /* the groups inside the kernel */
                            const int64_t j0 = g * nr;
                            const takane_gscales gsj = takane_gs_from(job->gs, j0);
                            if (uk->panel_packed_groups(tp, mi, w->panels + p * pstride, ps, q0,
                                                        q1, gw, &gsj, min64(nr, n - j0),
                                                        acc + (g - g_begin) * mr * nr))
                                __atomic_store_n(&job->failed, TAKANE_ERR_NOT_FINITE,
                                                 __ATOMIC_RELAXED);
                            continue;
                        }
                        for (int64_t a = q0; a < q1; a += gw) {
                            memset(tmp, 0, sizeof tmp);
                            uk->panel_packed(tp, mi, w->panels + p * pstride, ps, a,
                                             min64(q1, a + gw), tmp);
                            add_group(job, tmp, mi, nr, g * nr, a / gw,
                                      acc + (g - g_begin) * mr * nr);
                        }
                    }
                }
            }
        } else {
            for (int64_t g = g_begin; g < g_end; g++) {
                unpanel(w, g * nr, nr, rows, wr);
                if (!job->gs) {
                    uk->panel(tp, mi, wr, k, acc + (g - g_begin) * mr * nr);
                    continue;
                }
                /* one kernel call per scale group, on the group's words of each row and
                 * the matching part of each table (tables are table_len(64) per word) */
                const int64_t gw = job->gw, tword = uk->table_len(64);
                float *ag = acc + (g - g_begin) * mr * nr;
                memset(ag, 0, (size_t)(mr * nr) * sizeof(float));
                for (int64_t a = 0; a < kw; a += gw) {
                    const int64_t b = min64(kw, a + gw);
                    const float *tg[TAKANE_WFLOAT_MAX_MR];
                    const uint64_t *wg[TAKANE_WFLOAT_MAX_NR];
                    for (int i = 0; i < mi; i++) tg[i] = tp[i] + a * tword;
                    for (int j = 0; j < nr; j++) wg[j] = wr[j] + a;
                    uk->panel(tg, mi, wg, (b - a) * 64, tmp);
                    add_group(job, tmp, mi, nr, g * nr, a / gw, ag);
                }
            }
        }
        for (int i = 0; i < mi; i++) {
            float *yrow = job->y + (i0 + i) * job->ys;
            for (int64_t g = g_begin; g < g_end; g++) {
                const float *sums = acc + (g - g_begin) * mr * nr + i * nr;
                const int64_t j0 = g * nr, nj = min64(nr, n - j0);
                for (int64_t j = 0; j < nj; j++) {
                    float v = sums[j];
                    if (job->scale) v = v * job->scale[j0 + j];
                    if (job->bias) v = v + job->bias[j0 + j];
                    yrow[j0 + j] = v;
                }
            }
        }
    }
}

takane_status takane_wfloat_prepacked_run(const takane_kernel_set *ks, const takane_weights *w,
                                          int64_t m, const float *x, int64_t xs,
                                          const float *in_scale, const float *scale,
                                          const float *group_scale, int64_t group_size,
                                          const float *bias, float *y, int64_t ys,
                                          int threads) {
    const takane_wfloat_ukernel *uk = ks->wfloat;
    const int mr = uk->mr, nr = uk->nr;
    const int64_t gw = group_scale ? group_size / 64 : 1;
    const int64_t ngk = (w->kw + gw - 1) / gw;
    const takane_gscales gsv = takane_gscales_for(w, group_scale, ngk);
    const takane_gscales *gs = group_scale && w->kw > 0 ? &gsv : NULL;
    const int64_t ngroups = (w->n + nr - 1) / nr;
    const int nthreads = takane_plan_threads(threads, (double)m * (double)w->n * (double)w->k,
                                             (double)MIN_PARALLEL_MACS);
    /* when the weights are split (few rows, every task covering all of them), the rows'
     * tables are built once below and shared; otherwise each task builds its own rows' */
    const takane_grid grid = takane_plan_grid(nthreads, m, mr, ngroups, 1);
    wf_job job = {ks, w, m, x, xs, in_scale, scale, bias, gs, gw, ngk, y, ys, grid, NULL, TAKANE_OK};
    if (nthreads > 1 && grid.m_chunk >= m && grid.ntasks > 1 && m <= SHARED_TABLE_ROWS && w->k > 0) {
        /* every task covers every row: build the rows' tables once here, not once per task */
        const int64_t tlen = uk->table_len(w->k), kpad = w->kw * 64;
        const size_t tbytes = (size_t)(m * tlen) * sizeof(float);
        float *buf = (float *)takane_scratch_get(TAKANE_SCRATCH_CALL, tbytes + (size_t)kpad * sizeof(float));
        if (!buf) return TAKANE_ERR_OUT_OF_MEMORY;
        float *xbuf = buf + m * tlen; /* 64-byte aligned: tlen is whole 64-column words */
        memset(xbuf + w->k, 0, (size_t)(kpad - w->k) * sizeof(float));
        for (int64_t i = 0; i < m; i++) build_row_table(&job, i, xbuf, buf + i * tlen);
        job.shared_tables = buf;
    }
    takane_parallel_run(nthreads, grid.ntasks, wf_task, &job);
    return (takane_status)job.failed;
}
