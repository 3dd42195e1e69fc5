/*
 * matmul_avx512.c — W1A1 popcount tile for x86-64 AVX-512 with VPOPCNTDQ.
 *
 * ISA and flags: AVX-512 F+BW+VL+VPOPCNTDQ (-mavx512f -mavx512bw -mavx512vl
 *   -mavx512vpopcntdq; Ice Lake, Zen 4 and later); only the *_avx512.c files get them.
 * Tile: MR=4 activation rows x NR=4 weight rows, 512 bits (8 words) per step: 8 loads
 *   feed 16 XOR+VPOPCNTQ+VPADDQ, 16 independent zmm accumulators hide VPOPCNTQ's
 *   3-cycle latency, and 16 + 8 zmm registers fit in the 32 available without spills.
 * Key instructions: VPXORQ (1 uop), VPOPCNTQ (1 uop, p5 on Ice Lake: 1/cycle),
 *   VPADDQ (1 uop). About 3 uops per 512-bit XOR-popcount, popcount-port bound.
 * Edges: the last 1..7 words of a row are read with a masked VMOVDQU64 (masked-off lanes
 *   read as 0, no fault, no overread), so no scalar tail loop.
 * Invariants relied on: padding bits are zero in both operands (XOR adds nothing past k).
 */
#include "../isa_avx512.h"

#include "../../src/internal.h"

#define MR 4
#define NR 4

#define TILE_STEP(LOAD)                                                                    \
    do {                                                                                   \
        __m512i xa[MR], wb[NR];                                                            \
        for (int i = 0; i < MR; i++) xa[i] = LOAD(x[i] + q);                               \
        for (int j = 0; j < NR; j++) wb[j] = LOAD(w[j] + q);                               \
        for (int i = 0; i < MR; i++)                                                       \
            for (int j = 0; j < NR; j++)                                                   \
                acc[i][j] = _mm512_add_epi64(                                              \
                    acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(xa[i], wb[j])));       \
    } while (0)

static void popcount_tile(const uint64_t *const *x, const uint64_t *const *w, int64_t kw,
                          uint64_t *pc) {
    __m512i acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_si512();
    int64_t q = 0;
#define LOADU(p) _mm512_loadu_si512((const void *)(p))
    for (; q + 8 <= kw; q += 8) TILE_STEP(LOADU);
    if (q < kw) {
        const __mmask8 tail = (__mmask8)((1u << (kw - q)) - 1); /* lanes < kw - q */
#define LOADM(p) _mm512_maskz_loadu_epi64(tail, (const void *)(p))
        TILE_STEP(LOADM);
#undef LOADM
    }
#undef LOADU
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) pc[i * NR + j] = (uint64_t)_mm512_reduce_add_epi64(acc[i][j]);
}

const takane_matmul_ukernel takane_matmul_ukernel_avx512 = {MR, NR, popcount_tile};
