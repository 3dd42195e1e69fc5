/*
 * wq8_gemm.c — the W1A8 prefill GEMM framework (BLIS structure): for a range of output
 * columns, strip by strip (the kernel's nr columns = nr / 8 panels), the strip's weights are
 * expanded once into the caller's scratch by the kernel's pack (int8 bytes + the strip's
 * group scales: ~kw * 2 KiB for nr = 32, L2-resident), then every activation row tile of mr
 * rows runs the kernel's tile over all of K against it, and the epilogue (scale, bias)
 * writes the strip's columns that fall in the range. Calling thread only; no allocation.
 * Baseline ISA, -ffp-contract=off (the epilogue rounds as the reference does).
 *
 * Cost model: a strip is packed once per row block of up to 96 rows and read mr-row tile
 * after tile from L2, so the expansion (~3 instructions per 64 weights on AVX-512) is
 * amortized over up to 96 / mr tiles, and the row block's activations stay in L2 while the
 * strips pass. Measured (Zen 4, 1 thread, 4096x4096 G = 128): 69-73% of the VPDPBUSD peak
 * at M = 64..512, 1.14-1.16x the panel kernels. Rows past a range's ends (a range not
 * aligned to the strip) are computed and dropped.
 *
 * Float error: the kernel's (one FMA per block into the group's sum, one FMA per group by
 * its scale), then scale and bias: within the framework bound of wq8.c (gamma(nb + 4)).
 */
#include <stdint.h>
#include <string.h>

#include "wq8_gemm.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Activation rows per row block (96 rows of K = 4096: 384 KiB, half of a 1 MiB L2). */
#define GEMM_MC 96

int64_t takane_wq8_gemm_scratch(const takane_q8_gemm_ukernel *g, int64_t kw, int64_t ngroups) {
    return (g->pack_len(kw, ngroups) + 63) / 64 * 64 +
           (int64_t)g->mr * g->nr * (int64_t)sizeof(float) + 64;
}

takane_status takane_wq8_gemm_cols(const takane_q8_gemm_ukernel *g, const takane_weights *w,
                                   int64_t m, const int8_t *q, const float *d,
                                   const int32_t *nq, int64_t c0, int64_t c1,
                                   const float *scale, const takane_gscales *gs, int64_t gw,
                                   int64_t ng, const float *bias, float *y, int64_t ys,
                                   void *scratch) {
    const int64_t n = w->n, kw = w->kw, pstride = kw * TAKANE_PANEL_ROWS;
    const int mr = g->mr, nr = g->nr, npp = nr / TAKANE_PANEL_ROWS;
    uint8_t *packed = (uint8_t *)(((uintptr_t)scratch + 63) / 64 * 64);
    float *out = (float *)(packed + (g->pack_len(kw, ng) + 63) / 64 * 64);
    const int8_t *qp[TAKANE_Q8_GEMM_MAX_MR];
    const float *dp[TAKANE_Q8_GEMM_MAX_MR];
    const int32_t *np_[TAKANE_Q8_GEMM_MAX_MR];
    /* row blocks of GEMM_MC: their activations (GEMM_MC * kw * 64 bytes) stay in L2 while
     * every strip passes; each strip is expanded once per row block */
    for (int64_t r0 = 0; r0 < m; r0 += GEMM_MC) {
    const int64_t r1 = min64(m, r0 + GEMM_MC);
    for (int64_t sp = c0 / TAKANE_PANEL_ROWS; sp * TAKANE_PANEL_ROWS < c1; sp += npp) {
        const int np = (int)min64(npp, w->npanels - sp);
        const int64_t j0 = sp * TAKANE_PANEL_ROWS, nrows = min64(nr, n - j0);
        const takane_gscales gsj = gs ? takane_gs_from(gs, j0) : (takane_gscales){0};
        if (g->pack(w->panels + sp * pstride, pstride, np, kw, gw, gs ? &gsj : NULL, nrows,
                    packed))
            return TAKANE_ERR_NOT_FINITE;
        const int64_t ja = max64(c0, j0), jb = min64(c1, j0 + nrows);
        for (int64_t i0 = r0; i0 < r1; i0 += mr) {
            const int mi = (int)min64(mr, r1 - i0);
            for (int i = 0; i < mi; i++) {
                qp[i] = q + (i0 + i) * kw * 64;
                dp[i] = d + (i0 + i) * 2 * kw;
                np_[i] = nq + (i0 + i) * 2 * kw;
            }
            g->tile(qp, dp, np_, mi, packed, kw, gw, gs != NULL, out, nr);
            for (int i = 0; i < mi; i++) {
                float *yrow = y + (i0 + i) * ys;
                const float *oi = out + i * nr - j0;
                for (int64_t j = ja; j < jb; j++) {
                    float v = oi[j];
                    if (scale) v = v * scale[j];
                    if (bias) v = v + bias[j];
                    yrow[j] = v;
                }
            }
        }
    }
    }
    return TAKANE_OK;
}
