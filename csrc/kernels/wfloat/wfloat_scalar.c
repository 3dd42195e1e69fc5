/*
 * wfloat_scalar.c — portable W1A-float microkernels: sums of real activations signed by
 * packed ±1 weights, through a lookup table over groups of 4 activations (T-MAC's idea).
 *
 * ISA and flags: baseline only (runs on any target).
 * Table: for each group of 4 activations x0..x3 (columns 4g..4g+3), the 16 signed sums
 *   T[g][e] = (s0 x0 + s1 x1) + (s2 x2 + s3 x3), s_b = +1 if bit b of e is set else -1,
 *   so one 4-bit nibble of a weight row selects its whole contribution: one load and one
 *   add per 4 weights instead of 4 sign selects and 4 adds. Groups run to a whole number
 *   of 64-bit words (the activations are zero past k, so padding groups add zeros).
 * Tile: MR=2 activation rows x NR=4 weight rows: 8 independent float accumulators; each
 *   weight nibble extracted once serves both activation rows.
 * Cost: per 4 weights and activation row, 1 shift + 1 and + 1 load + 1 add. The table
 *   is 16 floats per 4 activations (16 bytes per activation: 64 KiB for k = 4096).
 * Float error: every output is one float32 summation tree over the k signed
 *   activations (3 rounded adds inside a table entry, then the accumulator), so the
 *   bound gamma(k-1) * sum |x| of any summation order applies (takane.h).
 * Invariants: xs holds ceil(k/64)*64 floats, zero past k; weight padding bits are zero.
 */
#include "../kernel.h"

#define MR 2
#define NR 4

static int64_t table_len(int64_t k) { return takane_words_for(k) * 16 * 16; }

static void build_table(const float *xs, int64_t k, float *table) {
    const int64_t groups = takane_words_for(k) * 16;
    for (int64_t g = 0; g < groups; g++) {
        const float *x = xs + 4 * g;
        /* lo[e & 3]: signs of x0 (bit 0) and x1 (bit 1); hi[e >> 2]: x2 and x3 */
        const float lo[4] = {(-x[0]) + (-x[1]), x[0] + (-x[1]), (-x[0]) + x[1], x[0] + x[1]};
        const float hi[4] = {(-x[2]) + (-x[3]), x[2] + (-x[3]), (-x[2]) + x[3], x[2] + x[3]};
        float *t = table + g * 16;
        for (int e = 0; e < 16; e++) t[e] = lo[e & 3] + hi[e >> 2];
    }
}

/* One tile with a compile-time number of activation rows. */
#define DEFINE_PANEL(ROWS)                                                                 \
    static void panel_##ROWS(const float *const *tables, const uint64_t *const *w,         \
                             int64_t kw, float *sums) {                                    \
        float acc[ROWS][NR] = {{0}};                                                       \
        for (int64_t q = 0; q < kw; q++) {                                                 \
            uint64_t wq[NR];                                                               \
            for (int j = 0; j < NR; j++) wq[j] = w[j][q];                                  \
            for (int p = 0; p < 16; p++) {                                                 \
                for (int i = 0; i < ROWS; i++) {                                           \
                    const float *t = tables[i] + (q * 16 + p) * 16;                        \
                    for (int j = 0; j < NR; j++) acc[i][j] += t[(wq[j] >> (4 * p)) & 15];  \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        for (int i = 0; i < ROWS; i++)                                                     \
            for (int j = 0; j < NR; j++) sums[i * NR + j] = acc[i][j];                     \
    }
DEFINE_PANEL(1)
DEFINE_PANEL(2)

static void panel(const float *const *tables, int mr, const uint64_t *const *w, int64_t k,
                  float *sums) {
    if (mr == 1) panel_1(tables, w, takane_words_for(k), sums);
    else panel_2(tables, w, takane_words_for(k), sums);
}

const takane_wfloat_ukernel takane_wfloat_ukernel_scalar = {MR, NR, table_len, build_table,
                                                            panel, NULL, NULL, NULL};
