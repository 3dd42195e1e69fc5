/*
 * matmul_neon.c — W1A1 popcount tile for aarch64 Advanced SIMD (NEON).
 *
 * ISA and flags: Advanced SIMD is part of the armv8-a baseline, so this file needs no
 *   extra flags and no run-time check (dispatch.c reports neon on every aarch64 CPU).
 *   Only aarch64 builds compile it (CMakeLists.txt), never x86 ones.
 * Tile: MR=4 activation rows x NR=4 weight rows, 128 bits (2 words) per step: 8 loads
 *   feed 16 XOR+popcounts, 16 independent accumulator chains hide the accumulate
 *   latency, and 16 accumulators + 8 operands = 24 of the 32 vector registers, so the
 *   tile fits without spills.
 * Key instructions: EOR (XOR), CNT (per-byte popcount, each byte count <= 8) and UADALP
 *   (pairwise widening add-accumulate, u8 -> u16): 3 vector instructions per 128-bit
 *   XOR-popcount-accumulate. On Cortex-A76 / Neoverse-N1 class cores, per Arm's
 *   optimization guides, EOR and CNT issue on both vector pipes and UADALP on one, so
 *   the loop is bound near 1.5 cycles per 128-bit pair. Not measured here: CI runs this
 *   file under qemu-user only. (UDOT-based accumulation would need armv8.2 +dotprod,
 *   which is not baseline.)
 * Accumulator widths: a u16 lane gains at most 16 per step (two bytes of <= 8), so a
 *   block of BLOCK_STEPS = 2048 steps adds at most 32768 <= 65535 — no overflow; after
 *   each block UADDLV (u16x8 -> u32 sum, <= 8 * 32768) is added into the 64-bit result.
 * Edges: an odd last word is handled with 64-bit D-register loads (exactly 8 bytes per
 *   row), so there is no overread and no scalar popcount.
 * Invariants relied on: row pointers are valid for kw words (no alignment: LD1 accepts
 *   any address; loads go through uint8_t pointers); padding bits are zero in both
 *   operands, so XOR adds nothing past k.
 */
#include <arm_neon.h>

#include "../../src/internal.h"

#define MR 4
#define NR 4
#define BLOCK_STEPS 2048 /* 128-bit steps per u16 accumulation block, see above */

static inline uint8x16_t load_q(const uint64_t *p) { return vld1q_u8((const uint8_t *)p); }
static inline uint8x8_t load_d(const uint64_t *p) { return vld1_u8((const uint8_t *)p); }

static void popcount_tile(const uint64_t *const *x, const uint64_t *const *w, int64_t kw,
                          uint64_t *pc) {
    for (int t = 0; t < MR * NR; t++) pc[t] = 0;
    const int64_t steps = kw / 2; /* full 128-bit steps; an odd last word follows */
    for (int64_t s0 = 0; s0 < steps; s0 += BLOCK_STEPS) {
        const int64_t s1 = (steps - s0 < BLOCK_STEPS) ? steps : s0 + BLOCK_STEPS;
        uint16x8_t acc[MR][NR];
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] = vdupq_n_u16(0);
        for (int64_t s = s0; s < s1; s++) {
            uint8x16_t xa[MR], wb[NR];
            for (int i = 0; i < MR; i++) xa[i] = load_q(x[i] + 2 * s);
            for (int j = 0; j < NR; j++) wb[j] = load_q(w[j] + 2 * s);
            for (int i = 0; i < MR; i++)
                for (int j = 0; j < NR; j++)
                    acc[i][j] = vpadalq_u8(acc[i][j], vcntq_u8(veorq_u8(xa[i], wb[j])));
        }
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) pc[i * NR + j] += vaddlvq_u16(acc[i][j]);
    }
    if (kw & 1) {
        const int64_t q = kw - 1;
        uint8x8_t xa[MR], wb[NR];
        for (int i = 0; i < MR; i++) xa[i] = load_d(x[i] + q);
        for (int j = 0; j < NR; j++) wb[j] = load_d(w[j] + q);
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) /* one word: the byte sum is <= 64, fits u8 */
                pc[i * NR + j] += vaddv_u8(vcnt_u8(veor_u8(xa[i], wb[j])));
    }
}

const takane_matmul_ukernel takane_matmul_ukernel_neon = {MR, NR, popcount_tile};
