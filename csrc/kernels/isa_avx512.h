/*
 * isa_avx512.h — the one include for *_avx512.c files.
 *
 * Normal builds compile those files with -mavx512f -mavx512bw -mavx512vl
 * -mavx512vpopcntdq -mavx512vbmi -mavx512vnni and use the real intrinsics. The test-only CMake option
 * TAKANE_AVX512_EMULATION compiles the same source against SIMDe's portable
 * implementations of the same intrinsics (Debian libsimde-dev), so the kernels' logic —
 * tiles, masks, tails — is checked against the oracle on machines without AVX-512.
 * It checks the code we wrote, not the silicon; real-hardware runs still matter.
 */
#ifndef TAKANE_ISA_AVX512_H
#define TAKANE_ISA_AVX512_H
#ifdef TAKANE_AVX512_EMULATION
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <stdint.h>

/* Intrinsics SIMDe 0.7 (Debian 12) lacks, written from their documented semantics.
 * Masked loads read only the selected lanes, like the hardware (no fault, no overread). */
#ifndef __mmask8
#define __mmask8 simde__mmask8
#endif
#ifndef __mmask16
#define __mmask16 simde__mmask16
#endif
static inline __m512i takane_emu_maskz_loadu_epi64(__mmask8 k, const void *p) {
    int64_t lane[8] = {0};
    for (int i = 0; i < 8; i++)
        if (k & (1u << i)) lane[i] = ((const int64_t *)p)[i];
    return _mm512_loadu_si512(lane);
}
static inline __m512 takane_emu_maskz_loadu_ps(__mmask16 k, const float *p) {
    float lane[16] = {0};
    for (int i = 0; i < 16; i++)
        if (k & (1u << i)) lane[i] = p[i];
    return _mm512_loadu_ps(lane);
}
/* Lane-wise conversions: the N lanes of a stored, each converted by the C cast CAST (the
 * instruction's semantics, see below), the results loaded. */
#define TAKANE_EMU_MAP(NAME, RET, ARG, N, IN_T, STORE, OUT_T, LOAD, CAST)                  \
    static inline RET NAME(ARG a) {                                                        \
        IN_T in[N];                                                                        \
        OUT_T lane[N];                                                                     \
        STORE(in, a);                                                                      \
        for (int i = 0; i < N; i++) lane[i] = CAST in[i];                                  \
        return LOAD(lane);                                                                 \
    }
/* Reductions: the N lanes of v stored and folded from lane 0 up by OP(acc, lane). */
#define TAKANE_EMU_FOLD(NAME, T, ARG, N, STORE, OP)                                        \
    static inline T NAME(ARG v) {                                                          \
        T lane[N];                                                                         \
        STORE(lane, v);                                                                    \
        T acc = lane[0];                                                                   \
        for (int i = 1; i < N; i++) acc = OP(acc, lane[i]);                                \
        return acc;                                                                        \
    }
#define TAKANE_EMU_ADD(a, b) ((a) + (b))
#define TAKANE_EMU_MAX(a, b) ((b) > (a) ? (b) : (a))
#define TAKANE_EMU_LOADU_128(p) _mm_loadu_si128((const __m128i *)(p))
TAKANE_EMU_FOLD(takane_emu_reduce_add_epi64, int64_t, __m512i, 8, _mm512_storeu_si512, TAKANE_EMU_ADD)
/* Conversions used by the layer kernels (linear_avx512.c): float -> double is exact;
 * int32 -> float rounds to nearest even, as (float) does in C and the hardware does
 * under the default MXCSR rounding. */
TAKANE_EMU_MAP(takane_emu_cvtps_pd, __m512d, __m256, 8, float, _mm256_storeu_ps, double,
               _mm512_loadu_pd, (double))
TAKANE_EMU_MAP(takane_emu_cvtepi32_ps, __m512, __m512i, 16, int32_t, _mm512_storeu_si512, float,
               _mm512_loadu_ps, (float))
/* Used by the W1A8 kernel (wq8_avx512.c). VCVTTPS2DQ truncates toward zero and VPMOVDB
 * keeps the low byte of each lane; the kernel only feeds them values in int8 range. */
#ifndef __mmask64
#define __mmask64 simde__mmask64
#endif
TAKANE_EMU_FOLD(takane_emu_reduce_max_ps, float, __m512, 16, _mm512_storeu_ps, TAKANE_EMU_MAX)
TAKANE_EMU_FOLD(takane_emu_reduce_add_epi32, int32_t, __m512i, 16, _mm512_storeu_si512,
                TAKANE_EMU_ADD)
TAKANE_EMU_MAP(takane_emu_cvttps_epi32, __m512i, __m512, 16, float, _mm512_storeu_ps, int32_t,
               _mm512_loadu_si512, (int32_t))
TAKANE_EMU_MAP(takane_emu_cvtepi32_epi8, __m128i, __m512i, 16, int32_t, _mm512_storeu_si512,
               int8_t, TAKANE_EMU_LOADU_128, (int8_t)(uint8_t)(uint32_t))
#define _mm512_reduce_max_ps takane_emu_reduce_max_ps
#define _mm512_reduce_add_epi32 takane_emu_reduce_add_epi32
#define _mm512_cvttps_epi32 takane_emu_cvttps_epi32
#define _mm512_cvtepi32_epi8 takane_emu_cvtepi32_epi8
#define _mm512_cvtps_pd takane_emu_cvtps_pd
#define _mm512_cvtepi32_ps takane_emu_cvtepi32_ps
#define _mm512_maskz_loadu_epi64 takane_emu_maskz_loadu_epi64
#define _mm512_maskz_loadu_ps takane_emu_maskz_loadu_ps
#define _mm512_reduce_add_epi64 takane_emu_reduce_add_epi64
#define _mm512_mask_cmp_ps_mask(k, a, b, imm) ((__mmask16)((k) & _mm512_cmp_ps_mask((a), (b), (imm))))
#else
#include <immintrin.h>
#endif

#include "kernel.h"
#include "transpose8.h"

/*
 * The W1A1 panel tile's XOR + popcount loop, shared by matmul_avx512.c (panel_tile: the
 * counts are stored) and linear_avx512.c (panel_epi: the counts go straight into the
 * fused epilogue). For mr activation rows x np panels (each <= 4):
 *   acc[i * np + p] = 64-bit lane r: popcount(x[i][0..kw) XOR row r of panel p)
 * One activation word is broadcast (VPBROADCASTQ, folded into VPXORQ's {1to8} memory
 * operand where the compiler can) against word q of the panel's 8 weight rows (one
 * 512-bit load); each lane is one output, so no horizontal reduction. Per 512-bit
 * XOR-popcount: VPXORQ + VPOPCNTQ + VPADDQ, 3 uops, VPOPCNTQ-port bound. Up to 4 x 4 = 16
 * independent accumulators cover VPOPCNTQ's 3-cycle latency; np panel loads serve mr
 * broadcasts, so loads never bind. Call with constant mr and np: it is always inlined,
 * its loops unroll and acc lives in registers (measured: the same speed as the loop
 * written out in each kernel).
 */
/*
 * One row of k floats binarized against t (one threshold, or k per_channel) into
 * ceil(k/64) canonical words, padding bits 0; returns nonzero iff x or t held a NaN. With
 * abs_sum non-NULL, *abs_sum = sum |x| in double (for beta = mean |x|), in the same pass.
 * Shared by pack_avx512.c (abs_sum NULL: the sum folds away) and linear_avx512.c.
 * 16 lanes per step: VCMPPS into a mask register IS 16 packed bits, so 4 steps make one
 * word with no movemask; a second compare (UNORD_Q) collects NaNs on either side; |x|
 * (VPANDD 0x7fffffff) is widened by two VCVTPS2PD into two double accumulators. The last
 * partial group is read with a zero-masked load compared under the same mask (padding
 * bits 0, no overread, zeros add 0 to the sum).
 */
static inline __attribute__((always_inline)) int takane_avx512_pack_row(
    const float *x, int64_t k, const float *t, int per_channel, uint64_t *out, double *abs_sum) {
    const __m512 t_all = _mm512_set1_ps(t[0]);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
    __m512d sum0 = _mm512_setzero_pd(), sum1 = _mm512_setzero_pd();
    __mmask16 nan = 0;
    const int64_t kw = takane_words_for(k);
    for (int64_t q = 0; q < kw; q++) {
        uint64_t word = 0;
        for (int g = 0; g < 4; g++) {
            const int64_t c = q * 64 + g * 16;
            if (c >= k) break;
            const __mmask16 valid =
                (c + 16 <= k) ? (__mmask16)0xffff : (__mmask16)((1u << (k - c)) - 1);
            const __m512 v = _mm512_maskz_loadu_ps(valid, x + c);
            const __m512 th = per_channel ? _mm512_maskz_loadu_ps(valid, t + c) : t_all;
            const __mmask16 ge = _mm512_mask_cmp_ps_mask(valid, v, th, _CMP_GE_OQ);
            nan |= _mm512_mask_cmp_ps_mask(valid, v, th, _CMP_UNORD_Q);
            word |= (uint64_t)ge << (g * 16);
            if (abs_sum) {
                const __m512d a = _mm512_castps_pd(
                    _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask)));
                sum0 = _mm512_add_pd(sum0, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_castpd512_pd256(a))));
                sum1 = _mm512_add_pd(sum1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(a, 1))));
            }
        }
        out[q] = word;
    }
    if (abs_sum) {
        const __m512d s = _mm512_add_pd(sum0, sum1);
        const __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(s), _mm512_extractf64x4_pd(s, 1));
        const __m128d h2 = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
        *abs_sum = _mm_cvtsd_f64(_mm_add_sd(h2, _mm_unpackhi_pd(h2, h2)));
    }
    return nan != 0;
}

/* The panel kernels' dispatch on the tile's row count: ROWS(c), a macro of the calling
 * kernel, with the constant c = mr for mr in 1..3, else 4 (tiles are specialized per row
 * count so that their accumulators stay in registers). */
#define TAKANE_AVX512_SWITCH_MR(mr, ROWS)                                                  \
    switch (mr) {                                                                          \
    case 1: ROWS(1) break;                                                                 \
    case 2: ROWS(2) break;                                                                 \
    case 3: ROWS(3) break;                                                                 \
    default: ROWS(4) break;                                                                \
    }

static inline __attribute__((always_inline)) void takane_avx512_panel_counts(
    const uint64_t *const *x, int mr, const uint64_t *panels, int64_t pstride, int np,
    int64_t kw, __m512i *acc) {
    for (int i = 0; i < mr * np; i++) acc[i] = _mm512_setzero_si512();
    for (int64_t q = 0; q < kw; q++) {
        __m512i pw[4];
        for (int p = 0; p < np; p++)
            pw[p] = _mm512_loadu_si512((const void *)(panels + p * pstride + q * TAKANE_PANEL_ROWS));
        for (int i = 0; i < mr; i++) {
            const __m512i xb = _mm512_set1_epi64((long long)x[i][q]);
            for (int p = 0; p < np; p++)
                acc[i * np + p] =
                    _mm512_add_epi64(acc[i * np + p], _mm512_popcnt_epi64(_mm512_xor_si512(xb, pw[p])));
        }
    }
}
#endif
