/*
 * wq8_portable.h — the portable W1A8 microkernel body, included once by wq8_scalar.c
 * (baseline flags) with WQ8_NAME naming the exported kernel. Plain C; the compiler may
 * vectorize it for the including file's flags.
 *
 * Table: for each group of 4 columns (a nibble of a weight word), the 16 sums
 *   T[g][e] = sum_{b < 4, bit b of e set} q[4g + b]     (int16: |T| <= 4 * 128)
 * so the set-bit sum P of a 32-column block is 8 lookups, and S = 2 P + nq (nq = -sum q).
 * Tile: MR=1 activation row x NP=1 panel (8 weight rows); each nibble is one load + add.
 * Float: per block, acc += d * (float)S (one rounding each; exact S), summed per group.
 * Invariants: q holds kw*64 values (zero past k); panel rows past N are zero bits.
 */
#include <math.h>

#include "../kernel.h"

#define MR 1
#define NP 1

static int64_t table_len(int64_t kw) { return kw * 16 * 16 * (int64_t)sizeof(int16_t); }

static void build_table(const int8_t *q, int64_t kw, void *table) {
    int16_t *t = (int16_t *)table;
    for (int64_t g = 0; g < kw * 16; g++) {
        const int8_t *x = q + 4 * g;
        for (int e = 0; e < 16; e++)
            t[g * 16 + e] = (int16_t)(((e & 1) ? x[0] : 0) + ((e & 2) ? x[1] : 0) +
                                      ((e & 4) ? x[2] : 0) + ((e & 8) ? x[3] : 0));
    }
}

static int panels(const void *const *tables, const float *const *d, const int32_t *const *nq,
                  int mr, const uint64_t *pan, int64_t pstride, int np, int64_t kw, int64_t gw,
                  const takane_gscales *gs, int64_t nrows, float *out) {
    int bad = 0;
    (void)mr, (void)np, (void)pstride; /* MR = NP = 1 */
    const int16_t *t = (const int16_t *)tables[0];
    const float *dd = d[0];
    const int32_t *nqq = nq[0];
    for (int r = 0; r < TAKANE_PANEL_ROWS; r++) {
        const int64_t rr = r < nrows ? r : nrows - 1;
        float total = 0.0f;
        for (int64_t g0 = 0, grp = 0; g0 < kw; g0 += gw, grp++) {
            const int64_t g1 = g0 + gw < kw ? g0 + gw : kw;
            float acc = 0.0f; /* the group's sum, then scaled once: fewer roundings */
            for (int64_t q = g0; q < g1; q++) {
                const uint64_t word = pan[q * TAKANE_PANEL_ROWS + r];
                for (int h = 0; h < 2; h++) {
                    const uint32_t bits = (uint32_t)(word >> (32 * h));
                    const int16_t *tb = t + (q * 16 + 8 * h) * 16;
                    int32_t p = 0;
                    for (int c = 0; c < 8; c++) p += tb[c * 16 + ((bits >> (4 * c)) & 15)];
                    const int64_t b = 2 * q + h;
                    acc = acc + dd[b] * (float)(2 * p + nqq[b]);
                }
            }
            if (gs) { /* else there is one group */
                const float g = takane_gs_at(gs, rr, grp);
                bad |= !(fabsf(g) <= 3.4028234663852886e38f);
                acc = total + acc * g;
            }
            total = acc;
        }
        out[r] = total; /* i = 0, np = 1 */
    }
    return bad;
}

/* no int8 peak probe, no prefill GEMM: the panel kernel serves every M */
const takane_q8_ukernel WQ8_NAME = {MR,         NP,     takane_q8_quantize_row_portable,
                                    table_len,  build_table, panels, NULL, NULL};
