/*
 * linear_avx2.c — W1A1 layer microkernels for x86-64 AVX2: packing that also sums |x|
 * (beta = mean |x|), and binary_linear's epilogues.
 *
 * ISA and flags: AVX2 + FMA + POPCNT (-mavx2 -mfma -mpopcnt) and -ffp-contract=off, so
 *   the compiler never fuses the epilogue's multiply and add (the value must be rounded
 *   after each step, exactly as the float32 numpy reference computes it).
 * Step: 8 lanes. Packing: VCMPPS (GE_OQ) + VMOVMSKPS gives 8 bits, a second VCMPPS
 *   (UNORD_Q) catches NaN; |x| is VANDPS with 0x7fffffff, widened by two VCVTPS2PD into
 *   two double accumulators (a K-term float32 sum would lose up to K/2^24 relative).
 *   Float epilogue: VCVTDQ2PS, VMULPS (scale), VMULPS (beta), VADDPS (bias). Bit
 *   epilogues: the same value, VCMPPS GE_OQ + VMOVMSKPS; or, on the integer path,
 *   VPCMPGTD against per-column integer thresholds + VMOVMSKPS, then XOR with the flips.
 * Edges: packing reads its last partial group with VMASKMOVPS (no overread; masked-off
 *   lanes are 0.0, which adds 0 to the sum, and their bits are cut off). The epilogues
 *   finish the last n % 8 columns with scalar code computing the same float32 steps.
 * Invariants: exactly ceil(k/64) / ceil(n/64) words written, padding bits 0.
 */
#include "../isa_avx2.h"

/* pack_avx2.c's packing 8 lanes at a time, summing |x| in the same pass (isa_avx2.h). */
static int pack_row(const float *x, int64_t k, const float *t, int per_channel, uint64_t *out,
                    double *abs_sum) {
    return takane_avx2_pack_words(x, k, t, per_channel, out, 0, abs_sum);
}

/* The epilogue value of 8 columns starting at j (see kernel.h). */
static inline __m256 value8(const int32_t *d, const float *s, const float *beta, const float *b,
                            int64_t j) {
    __m256 v = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(d + j)));
    if (s) v = _mm256_mul_ps(v, _mm256_loadu_ps(s + j));
    if (beta) v = _mm256_mul_ps(v, _mm256_set1_ps(*beta));
    if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + j));
    return v;
}

static inline float value1(int32_t d, const float *s, const float *beta, const float *b,
                           int64_t j) {
    float v = (float)d;
    if (s) v = v * s[j];
    if (beta) v = v * *beta;
    if (b) v = v + b[j];
    return v;
}

static void affine_row(const int32_t *d, int64_t n, const float *s, const float *beta,
                       const float *b, float *y) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, value8(d, s, beta, b, j));
    for (; j < n; j++) y[j] = value1(d[j], s, beta, b, j);
}

static void affine_bits_row(const int32_t *d, int64_t n, const float *s, const float *beta,
                            const float *b, const float *t, int t_per_col, uint64_t *out) {
    const __m256 t_all = _mm256_set1_ps(t[0]);
    for (int64_t q = 0; q * 64 < n; q++) {
        uint64_t word = 0;
        int64_t j = q * 64;
        const int64_t end = (n - j) < 64 ? n : j + 64;
        for (; j + 8 <= end; j += 8) {
            const __m256 th = t_per_col ? _mm256_loadu_ps(t + j) : t_all;
            const unsigned ge = (unsigned)_mm256_movemask_ps(
                _mm256_cmp_ps(value8(d, s, beta, b, j), th, _CMP_GE_OQ));
            word |= (uint64_t)ge << (j - q * 64);
        }
        for (; j < end; j++)
            word |= (uint64_t)(value1(d[j], s, beta, b, j) >= t[t_per_col ? j : 0]) << (j - q * 64);
        out[q] = word;
    }
}

static void int_bits_row(const int32_t *d, int64_t n, const int32_t *tint, const uint64_t *flip,
                         uint64_t *out) {
    for (int64_t q = 0; q * 64 < n; q++) {
        uint64_t word = 0;
        int64_t j = q * 64;
        const int64_t end = (n - j) < 64 ? n : j + 64;
        for (; j + 8 <= end; j += 8) {
            const __m256i gt = _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i *)(d + j)),
                                                  _mm256_loadu_si256((const __m256i *)(tint + j)));
            word |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(gt)) << (j - q * 64);
        }
        for (; j < end; j++) word |= (uint64_t)(d[j] > tint[j]) << (j - q * 64);
        out[q] = word ^ flip[q]; /* flip has zero padding bits, so the padding stays 0 */
    }
}

/* no fused conv epilogue yet (panel_epi NULL): the conv framework's general path */
const takane_linear_ukernel takane_linear_ukernel_avx2 = {pack_row, affine_row, affine_bits_row,
                                                          int_bits_row, NULL, 0};
