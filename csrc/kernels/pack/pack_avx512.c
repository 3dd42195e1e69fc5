/*
 * pack_avx512.c — activation packing for x86-64 AVX-512: one row of floats -> bits.
 *
 * ISA and flags: AVX-512 F+BW+VL+VPOPCNTDQ (the same flags as every *_avx512.c file).
 * Step: 16 floats per VCMPPS into a mask register (predicate GE_OQ: -0.0 >= 0 is true,
 *   NaN false): the mask IS 16 packed bits, so 4 steps make one word with no movemask.
 *   A second compare (UNORD_Q) collects NaNs on either side.
 * Edges: the last partial group is read with a zero-masked load and compared under the
 *   same mask, so padding bits are 0 and there is no overread.
 */
#include "../isa_avx512.h"

#include "../kernel.h"

int takane_pack_row_avx512(const float *x, int64_t k, const float *t, int per_channel,
                           uint64_t *out) {
    return takane_avx512_pack_row(x, k, t, per_channel, out, NULL); /* isa_avx512.h */
}
