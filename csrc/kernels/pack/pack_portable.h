/*
 * pack_portable.h — the portable row binarizer, shared by pack_scalar.c (takane_pack_row_
 * scalar: abs_sum NULL, the sum folds away) and linear_scalar.c (the layer's pack_row,
 * which also sums |x| for beta = mean |x|). Plain C, baseline flags.
 *
 * One compare per element: bit b of word q is x[64q+b] >= t (IEEE ordered compare: -0.0
 * >= 0 is true, NaN compares false and is reported separately). |x| is summed in double
 * (a K-term float32 sum would lose up to K/2^24 relative). Writes exactly ceil(k/64)
 * words, padding bits 0. Returns nonzero iff x or t held a NaN.
 */
#ifndef TAKANE_PACK_PORTABLE_H
#define TAKANE_PACK_PORTABLE_H

#include "../kernel.h"

static inline int takane_pack_row_portable(const float *x, int64_t k, const float *t,
                                           int per_channel, uint64_t *out, double *abs_sum) {
    int nan = 0;
    double sum = 0.0;
    const int64_t kw = takane_words_for(k);
    for (int64_t q = 0; q < kw; q++) {
        const int64_t base = q * 64;
        const int nb = (k - base) < 64 ? (int)(k - base) : 64;
        uint64_t word = 0;
        for (int b = 0; b < nb; b++) {
            const float v = x[base + b];
            const float th = per_channel ? t[base + b] : t[0];
            word |= (uint64_t)(v >= th) << b;
            nan |= (v != v) | (th != th);
            if (abs_sum) sum += (double)(v < 0 ? -v : v);
        }
        out[q] = word; /* bits >= nb stay 0: canonical padding */
    }
    if (abs_sum) *abs_sum = sum;
    return nan;
}

#endif /* TAKANE_PACK_PORTABLE_H */
