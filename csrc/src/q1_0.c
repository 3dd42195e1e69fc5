/*
 * q1_0.c — llama.cpp's GGUF Q1_0 block format (tensor type 41) to and from the canonical
 * bits plus one float32 scale per 128 weights (a PackedWeights with group_size 128).
 *
 * A Q1_0 row of k weights (k % 128 == 0) is k/128 blocks of 18 bytes:
 *   bytes 0..1   d, an IEEE binary16 (fp16), little-endian;
 *   bytes 2..17  the signs: weight j of the block is bit (j % 8) of byte (j / 8);
 *                bit 1 = +d, bit 0 = -d  (ggml's dequantize_row_q1_0).
 * Bytes 2..17 read as two little-endian uint64 are exactly the block's two canonical
 * words (element c at bit c % 64 of word c / 64, bit 1 = +1), so the conversion is a byte
 * copy plus the fp16 <-> float32 conversion of d; there is no padding (128 % 64 == 0).
 *
 * Byte order: the copies go through memcpy of little-endian bytes into uint64_t, which is
 * the canonical word only on a little-endian host; every target this library builds for
 * (x86-64, aarch64 Linux) is little-endian, and a static check below says so.
 *
 * The fp16 conversions are written out in integer arithmetic (no F16C / FP16 instructions:
 * this file is compiled for the baseline ISA and must give the same bits everywhere):
 *   fp16 -> float32 is exact;
 *   float32 -> fp16 rounds to nearest, ties to even (IEEE 754 convertFormat, as numpy's
 *   astype(float16), F16C's VCVTPS2PH with imm 0 and ggml's GGML_FP32_TO_FP16 do), with
 *   gradual underflow to fp16 subnormals.
 */
#include <stdint.h>
#include <string.h>

#include "internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "q1_0.c copies little-endian bytes into uint64_t words: little-endian hosts only"
#endif

enum { Q1_0_BLOCK = 128, Q1_0_BYTES = 18 };

/* fp16 bits -> float32, exact; infinities and NaN map to float32 infinities and NaN. */
float takane_fp16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t x;
    if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else if (e == 0) {
        /* zero or subnormal: m * 2^-24, exact in float32 (m < 2^10) */
        float v = (float)m * 0x1p-24f;
        memcpy(&x, &v, 4);
        x |= sign;
    } else {
        x = sign | ((e + (127 - 15)) << 23) | (m << 13); /* rebias the exponent */
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* float32 -> fp16 bits, round to nearest even. *ok = 0 if f is NaN or infinite or its
 * magnitude rounds past the largest fp16 (65504): |f| >= 65520 (the midpoint to the next
 * power of two, 65536, which ties to the even exponent 16 = infinity). */
uint16_t takane_f32_to_fp16(float f, int *ok) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x477ff000u) { /* 65520.0f, infinities and NaN */
        *ok = 0;
        return (uint16_t)(ax > 0x7f800000u ? 0x7e00u : sign | 0x7c00u);
    }
    *ok = 1;
    if (ax >= 0x38800000u) { /* 2^-14, the smallest normal fp16: drop 13 mantissa bits */
        const uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u); /* ties to even */
        return (uint16_t)(sign | ((r - ((uint32_t)(127 - 15) << 23)) >> 13));
    }
    /* fp16 subnormal range: the result is q * 2^-24 with q = round(|f| / 2^-24) <= 0x400
     * (0x400 encodes the smallest normal, so a round-up across the boundary is right). */
    const uint32_t e = ax >> 23;
    if (e < 102) return sign; /* |f| < 2^-25: rounds to (signed) zero */
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u; /* |f| = m * 2^(e - 150) */
    const uint32_t shift = 126 - e;                   /* 14 .. 24 */
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

/* Shared argument checks. Input rows may share memory (stride 0); output rows are written
 * one after another, so an output row stride below the row's length is an error. On
 * TAKANE_OK, *empty says there is nothing to convert (then q and bits were not checked). */
static takane_status check_q1_0(int64_t n, int64_t k, const void *q, int64_t q_row_stride,
                                const uint64_t *bits, int64_t bits_row_stride,
                                const float *group_scale, int64_t gs_row_stride, int q_is_output,
                                int *empty) {
    TAKANE_TRY(takane_check_dims(n, 0, k));
    if (k % Q1_0_BLOCK != 0) return TAKANE_ERR_BAD_GROUP_SIZE;
    TAKANE_TRY(takane_check_in_strides(q_row_stride, bits_row_stride));
    TAKANE_TRY(takane_check_in_strides(gs_row_stride, 0));
    const int64_t nb = k / Q1_0_BLOCK;
    if (q_is_output) {
        TAKANE_TRY(takane_check_stride(n, nb * Q1_0_BYTES, q_row_stride));
    } else {
        TAKANE_TRY(takane_check_stride(n, nb * 2, bits_row_stride));
        if (group_scale) TAKANE_TRY(takane_check_stride(n, nb, gs_row_stride));
    }
    *empty = n == 0 || k == 0;
    return *empty || (q && bits) ? TAKANE_OK : TAKANE_ERR_NULL_POINTER;
}

takane_status takane_q1_0_to_bits(int64_t n, int64_t k, const uint8_t *q, int64_t q_row_stride,
                                  uint64_t *bits, int64_t bits_row_stride, float *group_scale,
                                  int64_t group_scale_row_stride) {
    int empty;
    TAKANE_TRY(check_q1_0(n, k, q, q_row_stride, bits, bits_row_stride, group_scale,
                          group_scale_row_stride, 0, &empty));
    if (empty) return TAKANE_OK;
    const int64_t nb = k / Q1_0_BLOCK;
    /* validate every d first, so that an error leaves the outputs untouched */
    for (int64_t r = 0; r < n; r++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = q + r * q_row_stride + b * Q1_0_BYTES;
            const uint16_t h = (uint16_t)(blk[0] | (blk[1] << 8));
            if ((h & 0x7c00u) == 0x7c00u) return TAKANE_ERR_NOT_FINITE;
        }
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *row = q + r * q_row_stride;
        uint64_t *brow = bits + r * bits_row_stride;
        float *grow = group_scale ? group_scale + r * group_scale_row_stride : NULL;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * Q1_0_BYTES;
            memcpy(brow + 2 * b, blk + 2, 16);
            if (grow) grow[b] = takane_fp16_to_f32((uint16_t)(blk[0] | (blk[1] << 8)));
        }
    }
    return TAKANE_OK;
}

takane_status takane_bits_to_q1_0(int64_t n, int64_t k, const uint64_t *bits,
                                  int64_t bits_row_stride, const float *group_scale,
                                  int64_t group_scale_row_stride, uint8_t *q,
                                  int64_t q_row_stride) {
    int empty;
    TAKANE_TRY(check_q1_0(n, k, q, q_row_stride, bits, bits_row_stride, group_scale,
                          group_scale_row_stride, 1, &empty));
    if (empty) return TAKANE_OK;
    const int64_t nb = k / Q1_0_BLOCK;
    int ok = 1;
    if (group_scale) /* validate first: an error leaves q untouched */
        for (int64_t r = 0; r < n && ok; r++)
            for (int64_t b = 0; b < nb && ok; b++)
                (void)takane_f32_to_fp16(group_scale[r * group_scale_row_stride + b], &ok);
    if (!ok) return TAKANE_ERR_NOT_FINITE;
    for (int64_t r = 0; r < n; r++) {
        const uint64_t *brow = bits + r * bits_row_stride;
        uint8_t *row = q + r * q_row_stride;
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *blk = row + b * Q1_0_BYTES;
            const uint16_t h = group_scale
                                   ? takane_f32_to_fp16(group_scale[r * group_scale_row_stride + b], &ok)
                                   : (uint16_t)0x3c00u; /* 1.0 */
            blk[0] = (uint8_t)(h & 0xffu);
            blk[1] = (uint8_t)(h >> 8);
            memcpy(blk + 2, brow + 2 * b, 16);
        }
    }
    return TAKANE_OK;
}
