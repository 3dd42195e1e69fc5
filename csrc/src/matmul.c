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
