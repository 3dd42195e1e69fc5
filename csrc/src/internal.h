/*
 * internal.h — what the portable framework and the per-ISA kernel files share.
 *
 * A kernel set is one ISA's microkernels. The framework (matmul.c, pack.c) owns loops,
 * edges and validation; a microkernel computes one register tile and nothing else.
 * The registry (dispatch.c) lists the compiled kernel sets, best first. The microkernels'
 * contract (their types, tiles and invariants) is csrc/kernels/kernel.h, which kernel
 * files include instead of this header.
 */
#ifndef TAKANE_INTERNAL_H
#define TAKANE_INTERNAL_H

#include <stdint.h>
#include <stddef.h>

#include "takane/takane.h"

#include "../kernels/kernel.h"

/* A kernel set is one ISA's microkernels for every op, assembled in dispatch.c. */
typedef struct takane_kernel_set {
    takane_isa isa;
    const takane_matmul_ukernel *matmul;
    takane_pack_row_fn pack_row;
    const takane_linear_ukernel *linear;
    const takane_wfloat_ukernel *wfloat;
    const takane_q8_ukernel *q8;
    const struct takane_ternary_ukernel *ternary; /* csrc/kernels/ternary/ternary_kernel.h */
} takane_kernel_set;

/* Exported by csrc/kernels/<op>/<op>_<isa>.c, for the ISAs compiled for this target. */
#define TAKANE_DECLARE_ISA_KERNELS(isa)                                                    \
    extern const takane_matmul_ukernel takane_matmul_ukernel_##isa;                        \
    int takane_pack_row_##isa(const float *x, int64_t k, const float *t, int per_channel,  \
                              uint64_t *out);
TAKANE_DECLARE_ISA_KERNELS(scalar)
TAKANE_DECLARE_ISA_KERNELS(avx2)
TAKANE_DECLARE_ISA_KERNELS(avx512)
TAKANE_DECLARE_ISA_KERNELS(neon)

/* The prepacked weight handle: panels of TAKANE_PANEL_ROWS rows, see above. */
struct takane_weights {
    int64_t n, k, kw;  /* kw = ceil(k / 64); conv.c's private handles may have a larger kw
                          (rows with whole zero padding words; k counts the real bits) */
    int64_t npanels;   /* ceil(n / TAKANE_PANEL_ROWS) */
    uint64_t *panels;  /* npanels * kw * TAKANE_PANEL_ROWS words, 64-byte aligned; NULL if empty */
    /* Group scales carried by the handle (takane_weights_from_q1_0), or NULL and 0:
     * ng = k / group_size per row, stored panel-major in the lane order the kernels read
     * (kernel.h, takane_gscales): panel p, group g, row r of the panel at
     * group_scale[(p * ng + g) * TAKANE_PANEL_ROWS + r]; rows past n hold 0. The W1A-float
     * and W1A8 entry points use them when the call passes none (byot.c, api_layers.c),
     * passing this pointer on as their group_scale (takane_gscales_for). */
    float *group_scale;
    int64_t group_size;
    /* Where the memory came from, for takane_weights_free: TAKANE_STORAGE_* */
    int storage;
};
#define TAKANE_STORAGE_SEPARATE 0 /* struct and panels allocated apart (weights_create) */
#define TAKANE_STORAGE_BLOCK 1    /* one block from takane_panels_alloc: struct first */
#define TAKANE_STORAGE_CALLER 2   /* inside caller memory: never freed by the library */

/* Group scales per row a handle carries: ceil(k / group_size) = ceil(kw / (group_size / 64))
 * (group_size a multiple of 64; the last group may be partial); 0 without them. */
static inline int64_t takane_handle_ngroups(const takane_weights *w) {
    if (!w->group_scale) return 0;
    const int64_t gw = w->group_size / 64;
    return (w->kw + gw - 1) / gw;
}

/* api.c: re-tile rows [0, h->n) of canonical bits (h->kw words each, row stride
 * w_row_stride words) into h->panels (allocated, npanels * kw * 8 words); rows past n of
 * the last panel become 0. The one copy of the panel layout's fill, for every handle
 * built from canonical rows. */
void takane_fill_panels(takane_weights *h, const uint64_t *w, int64_t w_row_stride);

/* The group scales of a W1A-float / W1A8 run as the kernels address them (kernel.h):
 * group_scale == w->group_scale is the handle's own array (panel-major), anything else a
 * caller's row-major array of ng per row; NULL gives p = NULL (no groups). */
static inline takane_gscales takane_gscales_for(const takane_weights *w,
                                                const float *group_scale, int64_t ng) {
    takane_gscales g;
    g.p = group_scale;
    if (group_scale && group_scale == w->group_scale)
        g.ps = ng * TAKANE_PANEL_ROWS, g.rs = 1, g.cs = TAKANE_PANEL_ROWS;
    else
        g.ps = ng * TAKANE_PANEL_ROWS, g.rs = ng, g.cs = 1;
    return g;
}

/* q1_0.c: fp16 bits -> float32, exact (infinities and NaN kept). */
float takane_fp16_to_f32(uint16_t h);
/* q1_0.c: float32 -> fp16 bits, round to nearest even with gradual underflow; *ok = 0 for
 * NaN, infinities and |f| >= 65520 (the returned bits are then NaN or a signed infinity). */
uint16_t takane_f32_to_fp16(float f, int *ok);

/* alloc.c: memory for a handle's panels (or a whole handle block), 64-byte aligned; on
 * Linux in transparent huge pages: blocks below 16 MiB share 2 MiB-aligned slabs, larger
 * ones get a 2 MiB-aligned mapping of their own (alloc.c says when plain aligned_alloc is
 * used instead). NULL when out of memory. Released ONLY by takane_panels_free (never
 * free()), which accepts NULL. Thread-safe. */
void *takane_panels_alloc(size_t bytes);
void takane_panels_free(void *p);

/* alloc.c, for tests/c/test_alloc.c: what the slab allocator holds now. slabs_built = 0
 * when this build has no slabs (AddressSanitizer, not Linux): everything else is 0 too. */
typedef struct {
    int64_t slabs, slab_bytes;           /* slab mappings and their mapped bytes */
    int64_t spare_slabs;                 /* of them with no block (the kept spare: 0 or 1) */
    int64_t slab_touched_bytes;          /* sum of the slabs' high-water marks (alloc.c) */
    int64_t slab_blocks, slab_used_bytes; /* blocks live in slabs, their (rounded) bytes */
    int64_t big_blocks, big_bytes;       /* blocks of 16 MiB or more, their mapped bytes */
    int slabs_built;
} takane_alloc_stats_t;
void takane_alloc_stats(takane_alloc_stats_t *s);

/* The layer kernels (binary_linear, W1A-float) of each ISA. */
#define TAKANE_DECLARE_LAYER_KERNELS(isa)                                                  \
    extern const takane_linear_ukernel takane_linear_ukernel_##isa;                        \
    extern const takane_wfloat_ukernel takane_wfloat_ukernel_##isa;                        \
    extern const takane_q8_ukernel takane_q8_ukernel_##isa;
TAKANE_DECLARE_LAYER_KERNELS(scalar)
TAKANE_DECLARE_LAYER_KERNELS(avx2)
TAKANE_DECLARE_LAYER_KERNELS(avx512)
extern const takane_q8_ukernel takane_q8_ukernel_neon;

/* ---- argument validation -------------------------------------------------------------
 * The checks every entry point (api.c, api_layers.c, api_conv.c, byot.c, q1_0.c) makes,
 * written once. Each returns the status takane.h documents for its argument; an entry
 * point calls them in a fixed order (dimensions, threads, strides, modes, then -- unless
 * the problem is empty -- pointers, padding and values), so which argument yields which
 * status is decided by that order, not by the helpers. TAKANE_TRY returns the first error. */
#define TAKANE_TRY(expr)                                                                   \
    do {                                                                                   \
        const takane_status takane_try_st_ = (expr);                                       \
        if (takane_try_st_ != TAKANE_OK) return takane_try_st_;                            \
    } while (0)

/* a, b, k >= 0 (else NEGATIVE_DIMENSION), then k <= TAKANE_MAX_K (else K_TOO_LARGE). */
static inline takane_status takane_check_dims(int64_t a, int64_t b, int64_t k) {
    if (a < 0 || b < 0 || k < 0) return TAKANE_ERR_NEGATIVE_DIMENSION;
    return k > TAKANE_MAX_K ? TAKANE_ERR_K_TOO_LARGE : TAKANE_OK;
}
static inline takane_status takane_check_threads(int32_t threads) {
    return threads < 0 ? TAKANE_ERR_BAD_THREADS : TAKANE_OK;
}
/* BAD_STRIDE unless stride >= 0 and, for more than one row, rows of len elements at that
 * stride do not overlap (outputs, and inputs in a fixed row format such as Q1_0 / Q8_0).
 * rows = 0 checks the sign only (an input row stride may be 0). */
static inline takane_status takane_check_stride(int64_t rows, int64_t len, int64_t stride) {
    return stride < 0 || (rows > 1 && stride < len) ? TAKANE_ERR_BAD_STRIDE : TAKANE_OK;
}
/* Input row strides (read-only rows may share memory: 0 is allowed): >= 0. */
static inline takane_status takane_check_in_strides(int64_t a, int64_t b) {
    return a < 0 || b < 0 ? TAKANE_ERR_BAD_STRIDE : TAKANE_OK;
}
/* The front of every (m, n, k) product: dimensions, threads, the input strides xs and ws
 * (>= 0) and the output's (m rows of y_len elements). */
static inline takane_status takane_check_product(int64_t m, int64_t n, int64_t k,
                                                 int32_t threads, int64_t xs, int64_t ws,
                                                 int64_t ys, int64_t y_len) {
    TAKANE_TRY(takane_check_dims(m, n, k));
    TAKANE_TRY(takane_check_threads(threads));
    TAKANE_TRY(takane_check_in_strides(xs, ws));
    return takane_check_stride(m, y_len, ys);
}
/* A non-empty product's operands: y always, x and the weights w (canonical rows or a
 * handle) when k > 0. */
static inline takane_status takane_check_operands(int64_t k, const void *x, const void *w,
                                                  const void *y) {
    return !y || (k > 0 && (!x || !w)) ? TAKANE_ERR_NULL_POINTER : TAKANE_OK;
}
/* A handle and the activation rows of a call on it: NULL handle, then negative m (the
 * errors the handle-less entry points give for the same arguments). */
static inline takane_status takane_check_handle(const takane_weights *w, int64_t m) {
    if (!w) return TAKANE_ERR_NULL_POINTER;
    return m < 0 ? TAKANE_ERR_NEGATIVE_DIMENSION : TAKANE_OK;
}
/* Weight rows [r0, r1) of a handle (byot.c): NULL handle, negative bounds, then a range
 * that is reversed or past n (BAD_STRIDE, as takane.h documents). */
static inline takane_status takane_check_row_range(const takane_weights *w, int64_t r0,
                                                   int64_t r1) {
    if (!w) return TAKANE_ERR_NULL_POINTER;
    if (r0 < 0 || r1 < 0) return TAKANE_ERR_NEGATIVE_DIMENSION;
    return r0 > r1 || r1 > w->n ? TAKANE_ERR_BAD_STRIDE : TAKANE_OK;
}
/* Group scales: with them a positive multiple of 64, without them 0. */
static inline takane_status takane_check_group_size(const float *group_scale,
                                                    int64_t group_size) {
    return (group_scale ? group_size <= 0 || group_size % 64 != 0 : group_size != 0)
               ? TAKANE_ERR_BAD_GROUP_SIZE
               : TAKANE_OK;
}
/* validate.c: NOT_FINITE unless v is NULL or all of v[0..len) is finite. */
takane_status takane_check_finite(const float *v, int64_t len);
/* validate.c: a threshold array of len 1 or `full` (else BAD_THRESHOLD_LEN) without NaN
 * (else NAN); NULL is allowed when may_be_null (else NULL_POINTER). */
takane_status takane_check_threshold(const float *t, int64_t len, int64_t full, int may_be_null);
/* An epilogue's per-output scale and bias (n each, NULL: none): finite. */
static inline takane_status takane_check_scale_bias(const float *scale, const float *bias,
                                                    int64_t n) {
    TAKANE_TRY(takane_check_finite(scale, n));
    return takane_check_finite(bias, n);
}
/* The thresholds a validated call binarizes against: t, or one threshold 0 for NULL, and
 * whether t holds one per channel (len == full != 1). */
extern const float takane_zero_threshold;
static inline const float *takane_threshold_or_zero(const float *t) {
    return t ? t : &takane_zero_threshold;
}
static inline int takane_per_channel(const float *t, int64_t len, int64_t full) {
    return t && len == full && full != 1;
}

/* dispatch.c: the kernel set compute calls use now, or an error (env TAKANE_ISA). */
takane_status takane_select_kernels(const takane_kernel_set **out);
/* dispatch.c: remember which ISA the calling thread's compute call ran on. */
void takane_note_used(takane_isa isa);

/* threads.c: run fn(ctx, t) for every t in [0, ntasks) on up to nthreads threads, the
 * caller included; returns when all are done. Tasks must be independent. */
typedef void (*takane_task_fn)(void *ctx, int64_t task);
void takane_parallel_run(int nthreads, int64_t ntasks, takane_task_fn fn, void *ctx);

/* threads.c: per-thread scratch that only grows and is kept for the thread's later calls
 * (freed when the thread exits), so a decode loop allocates nothing after its first call.
 * A 64-byte aligned buffer of at least `bytes`, or NULL (out of memory). Two slots: CALL
 * for what the calling thread holds across takane_parallel_run (e.g. quantized rows),
 * TASK for a task's own buffers (a task body must not hold it across another call that
 * uses TASK). A new request for a slot invalidates that slot's previous buffer. */
enum { TAKANE_SCRATCH_CALL = 0, TAKANE_SCRATCH_TASK = 1 };
void *takane_scratch_get(int slot, size_t bytes);

/* matmul.c: the W1A1 frameworks (validated calls with m, n, k > 0; see matmul.c).
 * Canonical rows, single-threaded: */
void takane_matmul_packed_run(const takane_kernel_set *ks, int64_t m, int64_t n, int64_t k,
                              const uint64_t *x, int64_t xs, const uint64_t *w, int64_t ws,
                              int32_t *y, int64_t ys);
takane_status takane_matmul_f32_run(const takane_kernel_set *ks, int64_t m, int64_t n,
                                    int64_t k, const float *x, int64_t xs, const float *t,
                                    int per_channel, const uint64_t *w, int64_t ws, int32_t *y,
                                    int64_t ys);
/* A prepacked handle, threaded: packed x (xf NULL) or float x binarized against t. */
takane_status takane_matmul_prepacked_run(const takane_kernel_set *ks, const takane_weights *w,
                                          int64_t m, const uint64_t *x, int64_t xs,
                                          const float *xf, const float *t, int per_channel,
                                          int32_t *y, int64_t ys, int threads);
/* The same with an epilogue: epi(ctx, r0, r1, c0, c1) is called, on the thread that
 * computed them, once rows [r0, r1) x columns [c0, c1) of y are final; every (row,
 * column) is covered by exactly one call, c0 is a multiple of 64 and c1 is one or n, so
 * calls never share a 64-column word. Calls run concurrently (on disjoint blocks). */
typedef void (*takane_epilogue_fn)(void *ctx, int64_t r0, int64_t r1, int64_t c0, int64_t c1);
takane_status takane_matmul_prepacked_run_epi(const takane_kernel_set *ks,
                                              const takane_weights *w, int64_t m,
                                              const uint64_t *x, int64_t xs, const float *xf,
                                              const float *t, int per_channel, int32_t *y,
                                              int64_t ys, int threads, takane_epilogue_fn epi,
                                              void *epi_ctx);

/* One block on the calling thread: rows [0, m) of packed x (row stride xs words) times
 * panels [p_begin, p_end) of w; y[i * ys + j] = k - 2 * popcount for the columns j of
 * those panels (j < w->n). No epilogue, no threads: the caller (conv.c) owns both. */
void takane_matmul_prepacked_block(const takane_kernel_set *ks, const takane_weights *w,
                                   int64_t m, const uint64_t *x, int64_t xs, int64_t p_begin,
                                   int64_t p_end, int32_t *y, int64_t ys);

/* The task grid of the threaded frameworks: rows in chunks of m_chunk (a multiple of the
 * row tile mr), weight blocks (panels or panel groups) in chunks of p_chunk (a multiple
 * of p_align); task t covers row chunk t / p_tasks and block chunk t % p_tasks. With
 * nthreads > 1 it aims at TAKANE_TASKS_PER_THREAD tasks per thread, so that a late
 * worker costs little imbalance: enough row tiles -> split rows only (every task sweeps
 * all weights, each row is prepared once); few rows (GEMV-like) -> split the weights,
 * each task streams its share once. Splitting a small N into one panel per task was
 * measured 2x slower than one thread on (3136, 64, 576) (each call then covered one
 * panel and re-prepared its rows). */
#define TAKANE_TASKS_PER_THREAD 4
typedef struct takane_grid {
    int64_t m_chunk, p_chunk, p_tasks, ntasks;
} takane_grid;

/* The threads of a framework call: `threads` (>= 1), or the default for 0; and 1 when the
 * call's work (in the framework's own unit) is below min_work: waking a worker costs
 * ~10-50 us, so small calls stay on the calling thread. */
static inline int takane_plan_threads(int threads, double work, double min_work) {
    const int n = threads > 0 ? threads : takane_default_threads();
    return work < min_work ? 1 : n;
}

/* One-dimensional split (packing, pooling): items per task for `count` items, aiming at
 * TAKANE_TASKS_PER_THREAD tasks per thread; tasks = ceil(count / chunk). */
static inline int64_t takane_plan_chunk(int nthreads, int64_t count) {
    const int64_t want = nthreads > 1 ? (int64_t)nthreads * TAKANE_TASKS_PER_THREAD : 1;
    return (count + want - 1) / want;
}

static inline takane_grid takane_plan_grid(int nthreads, int64_t m, int mr, int64_t nblocks,
                                           int64_t p_align) {
    takane_grid g;
    const int64_t mtiles = (m + mr - 1) / mr;
    const int64_t want = nthreads > 1 ? (int64_t)nthreads * TAKANE_TASKS_PER_THREAD : 1;
    if (want == 1) {
        g.m_chunk = m, g.p_chunk = nblocks;
    } else if (mtiles >= want) {
        g.m_chunk = (mtiles + want - 1) / want * mr, g.p_chunk = nblocks;
    } else {
        g.m_chunk = m, g.p_chunk = (nblocks + want - 1) / want;
        g.p_chunk = (g.p_chunk + p_align - 1) / p_align * p_align;
    }
    if (g.p_chunk < 1) g.p_chunk = 1;
    if (g.m_chunk < 1) g.m_chunk = 1;
    g.p_tasks = (nblocks + g.p_chunk - 1) / g.p_chunk;
    g.ntasks = ((m + g.m_chunk - 1) / g.m_chunk) * g.p_tasks;
    return g;
}

/* Task `task` of grid g over m rows and nblocks blocks: rows [i0, i1) and blocks [b0, b1)
 * (the last chunks clipped). Returns 0 when the task has no rows or no blocks. */
typedef struct takane_task_range {
    int64_t i0, i1, b0, b1;
} takane_task_range;
static inline int takane_grid_task(const takane_grid *g, int64_t task, int64_t m,
                                   int64_t nblocks, takane_task_range *r) {
    r->i0 = (task / g->p_tasks) * g->m_chunk;
    r->i1 = r->i0 + g->m_chunk < m ? r->i0 + g->m_chunk : m;
    r->b0 = (task % g->p_tasks) * g->p_chunk;
    r->b1 = r->b0 + g->p_chunk < nblocks ? r->b0 + g->p_chunk : nblocks;
    return r->i0 < r->i1 && r->b0 < r->b1;
}

#endif /* TAKANE_INTERNAL_H */
