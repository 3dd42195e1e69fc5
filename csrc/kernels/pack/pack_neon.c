/*
 * pack_neon.c — activation packing for aarch64 Advanced SIMD: one row of floats -> bits.
 *
 * ISA and flags: armv8-a baseline Advanced SIMD, no extra flags (see matmul_neon.c).
 * Step: one 64-bit word from 64 floats. FCMGE per 4 floats (ordered: -0.0 >= 0 is true,
 *   NaN false) gives all-ones/zero u32 lanes; two XTN narrowings turn 16 of them into
 *   16 bytes of 0xff/0x00, an AND keeps weight 1 << (e % 8) in byte e, and three
 *   levels of ADDP (pairwise add) sum every 8 consecutive bytes: byte b of the result
 *   is then bits 8b..8b+7 of the word, in little-endian lane order = canonical order.
 *   The weights in one 8-byte group are distinct powers of two, so the sums never carry.
 * NaN: a second compare FCMGT (t > x) is ORed with FCMGE; both are false exactly when
 *   the pair is unordered (a NaN on either side). Those ORs are ANDed into one mask per
 *   row, checked once at the end with UMINV.
 * Edges: the last, partial word (k % 64 != 0) is copied into a 64-float stack buffer
 *   padded with 0.0 (thresholds too), packed the same way and cut with the last-word
 *   mask: padding bits are 0, nothing past x[k-1] / t[k-1] is read, and the 0.0 padding
 *   is ordered, so it cannot raise a false NaN.
 */
#include <arm_neon.h>
#include <string.h>

#include "../kernel.h"

/* Pack 64 floats at x against t (per channel) or t_all; AND the ordered mask into *ordered. */
static inline uint64_t pack_word(const float *x, const float *t, int per_channel,
                                 float32x4_t t_all, uint32x4_t *ordered) {
    static const uint8_t weight_bytes[16] = {1, 2, 4, 8, 16, 32, 64, 128,
                                             1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t weights = vld1q_u8(weight_bytes);
    uint32x4_t ord = *ordered;
    uint8x16_t bytes[4]; /* bytes[g][e]: element 16g + e, weighted */
    for (int g = 0; g < 4; g++) {
        uint16x4_t half[4];
        for (int v4 = 0; v4 < 4; v4++) {
            const int c = g * 16 + v4 * 4;
            const float32x4_t v = vld1q_f32(x + c);
            const float32x4_t th = per_channel ? vld1q_f32(t + c) : t_all;
            const uint32x4_t ge = vcgeq_f32(v, th);
            ord = vandq_u32(ord, vorrq_u32(ge, vcgtq_f32(th, v)));
            half[v4] = vmovn_u32(ge);
        }
        const uint8x8_t lo = vmovn_u16(vcombine_u16(half[0], half[1]));
        const uint8x8_t hi = vmovn_u16(vcombine_u16(half[2], half[3]));
        bytes[g] = vandq_u8(vcombine_u8(lo, hi), weights);
    }
    /* 64 weighted bytes -> 32 pair sums -> 16 quad sums -> 8 octet sums (the word). */
    const uint8x16_t quads = vpaddq_u8(vpaddq_u8(bytes[0], bytes[1]), vpaddq_u8(bytes[2], bytes[3]));
    const uint8x16_t octets = vpaddq_u8(quads, quads);
    *ordered = ord;
    return vgetq_lane_u64(vreinterpretq_u64_u8(octets), 0);
}

int takane_pack_row_neon(const float *x, int64_t k, const float *t, int per_channel,
                         uint64_t *out) {
    const float32x4_t t_all = vdupq_n_f32(t[0]);
    uint32x4_t ordered = vdupq_n_u32(~0u);
    const int64_t full = k / 64;
    for (int64_t q = 0; q < full; q++)
        out[q] = pack_word(x + q * 64, per_channel ? t + q * 64 : t, per_channel, t_all, &ordered);
    const int rem = (int)(k % 64);
    if (rem) {
        float xb[64] = {0}, tb[64] = {0};
        memcpy(xb, x + full * 64, (size_t)rem * sizeof(float));
        if (per_channel) memcpy(tb, t + full * 64, (size_t)rem * sizeof(float));
        out[full] = pack_word(xb, tb, per_channel, t_all, &ordered) & takane_last_word_mask(k);
    }
    return vminvq_u32(ordered) == 0;
}
