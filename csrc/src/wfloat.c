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
 * Invariants: api_layers.c validated everything (m, n > 0, k <= TAKANE_MAX_K, weight
 * padding zero, in_scale/scale/bias finite). Scratch is O(mr * k), independent of m, n.
 */
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
