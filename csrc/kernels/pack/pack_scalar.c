/*
 * pack_scalar.c — portable activation packing: one row of floats -> canonical bits.
 *
 * ISA and flags: baseline only. One compare per element; bit b of word q is
 * x[64q+b] >= t (IEEE ordered compare: -0.0 >= 0 is true, NaN compares false and is
 * reported separately). Invariant: writes exactly ceil(k/64) words, padding bits 0.
 */
#include "../kernel.h"
#include "pack_portable.h"

int takane_pack_row_scalar(const float *x, int64_t k, const float *t, int per_channel, uint64_t *out) {
    return takane_pack_row_portable(x, k, t, per_channel, out, NULL); /* pack_portable.h */
}
