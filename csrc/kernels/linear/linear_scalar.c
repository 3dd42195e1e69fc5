/*
 * linear_scalar.c — W1A1 layer microkernels, portable: packing that also sums |x| (for
 * XNOR-Net's activation scale beta = mean |x|), and binary_linear's epilogues.
 *
 * ISA and flags: baseline only, plus -ffp-contract=off (every *linear* file): the epilogue
 *   value ((float)d * s) * beta + b must be rounded after each operation, exactly as the
 *   numpy reference computes it, so a multiply-add may never be fused.
 * Tile: one row at a time; the epilogues are O(n) per row against the O(n k / 64) matmul.
 * Key operations: one compare per packed bit; |x| summed in double (a K-term float32 sum
 *   would lose up to K/2^24 relative; in double the error stays far below float32's ulp).
 * Invariants: writes exactly ceil(k/64) (pack) or ceil(n/64) (bit epilogues) words, with
 *   padding bits 0; NaN is reported, never packed silently.
 */
#include "../kernel.h"
#include "../pack/pack_portable.h"

/* pack_scalar.c's packing, summing |x| in the same pass (pack/pack_portable.h). */
static int pack_row(const float *x, int64_t k, const float *t, int per_channel, uint64_t *out,
                    double *abs_sum) {
    return takane_pack_row_portable(x, k, t, per_channel, out, abs_sum);
}

static inline float value(int32_t d, const float *s, const float *beta, const float *b,
                          int64_t j) {
    float v = (float)d;
    if (s) v = v * s[j];
    if (beta) v = v * *beta;
    if (b) v = v + b[j];
    return v;
}

static void affine_row(const int32_t *d, int64_t n, const float *s, const float *beta,
                       const float *b, float *y) {
    for (int64_t j = 0; j < n; j++) y[j] = value(d[j], s, beta, b, j);
}

static void affine_bits_row(const int32_t *d, int64_t n, const float *s, const float *beta,
                            const float *b, const float *t, int t_per_col, uint64_t *out) {
    for (int64_t q = 0; q * 64 < n; q++) {
        const int nb = (n - q * 64) < 64 ? (int)(n - q * 64) : 64;
        uint64_t word = 0;
        for (int i = 0; i < nb; i++) {
            const int64_t j = q * 64 + i;
            word |= (uint64_t)(value(d[j], s, beta, b, j) >= t[t_per_col ? j : 0]) << i;
        }
        out[q] = word;
    }
}

static void int_bits_row(const int32_t *d, int64_t n, const int32_t *tint, const uint64_t *flip,
                         uint64_t *out) {
    for (int64_t q = 0; q * 64 < n; q++) {
        const int nb = (n - q * 64) < 64 ? (int)(n - q * 64) : 64;
        uint64_t word = 0;
        for (int i = 0; i < nb; i++) word |= (uint64_t)(d[q * 64 + i] > tint[q * 64 + i]) << i;
        out[q] = word ^ flip[q]; /* flip has zero padding bits, so the padding stays 0 */
    }
}

/* no fused conv epilogue (panel_epi NULL): the conv framework's general path */
const takane_linear_ukernel takane_linear_ukernel_scalar = {pack_row, affine_row,
                                                            affine_bits_row, int_bits_row, NULL, 0};
