/*
 * pack_scalar.c — portable activation packing: one row of floats -> canonical bits.
 *
 * ISA and flags: baseline only. One compare per element; bit b of word q is
 * x[64q+b] >= t (IEEE ordered compare: -0.0 >= 0 is true, NaN compares false and is
 * reported separately). Invariant: writes exactly ceil(k/64) words, padding bits 0.
 */
#include "../kernel.h"

/* Pack one row: 64 compares per word, bit b of word q is x[64q+b] >= t. */
int takane_pack_row_scalar(const float *x, int64_t k, const float *t, int per_channel, uint64_t *out) {
    int nan = 0;
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
        }
        out[q] = word; /* bits >= nb stay 0: canonical padding */
    }
    return nan;
}

