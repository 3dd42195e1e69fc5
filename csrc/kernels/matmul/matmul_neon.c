/*
 * matmul_neon.c — W1A1 popcount tiles for aarch64 Advanced SIMD (NEON): the canonical-rows
 * tile (popcount_tile) and the prepacked-panel tile (panel_tile).
 *
 * ISA and flags: Advanced SIMD is part of the armv8-a baseline, so this file needs no
 *   extra flags and no run-time check (dispatch.c reports neon on every aarch64 CPU).
 *   Only aarch64 builds compile it (CMakeLists.txt), never x86 ones.
 * Key instructions (both tiles): EOR (XOR), CNT (per-byte popcount, each byte count
 *   <= 8) and UADALP (pairwise widening add-accumulate, u8 -> u16): 3 vector
 *   instructions per 128-bit XOR-popcount-accumulate. On Cortex-A76 / Neoverse-N1
 *   class cores, per Arm's optimization guides, EOR and CNT issue on both vector pipes
 *   and UADALP on one (latency 4), so the loops are bound near 1.5 cycles per 128-bit
 *   XOR-popcount; Neoverse-V1 class cores issue UADALP on 2 of 4 pipes (~0.75 cycles).
 *   Not measured here: CI runs this file under qemu-user only. (UDOT-based accumulation
 *   would need armv8.2 +dotprod, which is not baseline.) Accumulating bytes with ADD
 *   and widening every 31 words, as the AVX2 panel tile does, costs the same 3
 *   instructions per 128 bits but twice the accumulator registers, so it is not used.
 *
 * popcount_tile (canonical rows, the unprepacked path):
 *   Tile: MR=4 activation rows x NR=4 weight rows, 128 bits (2 words) per step: 8 loads
 *   feed 16 XOR+popcounts, 16 independent accumulator chains hide UADALP's latency, and
 *   16 accumulators + 8 operands = 24 of the 32 vector registers, so the tile fits
 *   without spills. The 16 per-pair results each need one horizontal UADDLV at the end
 *   of a block.
 *   Edges: an odd last word is handled with 64-bit D-register loads (exactly 8 bytes
 *   per row), so there is no overread and no scalar popcount.
 *
 * panel_tile (prepacked panels, kernel.h): per word q, the panel's 8 row words are
 *   4 consecutive 128-bit loads (2 LDP, 2 rows per register); activation word x[i][q] is
 *   broadcast to both 64-bit lanes with LD1R (a load, no vector ALU op). EOR + CNT +
 *   UADALP leave each row's counts in the 4 u16 lanes of that row's own 64-bit lane, so
 *   no reduction across outputs is ever needed: at a flush, UADDLP (u16 pairs -> u32)
 *   and ADDP (u32 pairs, across two registers) turn 2 accumulators into the counts of 4
 *   consecutive rows, added into pc with one 128-bit load and store.
 *   Tile: mr activation rows x np panels with mr * np <= 3: panel_mr = 3 and
 *   panel_np = {-, 3, 1, 1}, so 1x3 (GEMV), 2x1 and 3x1 (GEMM), i.e. at most 12 u16x8
 *   accumulators (4 per row-panel pair). Why 12 and not 16: GCC 12's pre-RA scheduler
 *   hoists every load and EOR of a word ahead of its popcounts, so the temporaries of
 *   all EORs are live at once. At 12 accumulators the 3x1 word loop then uses 25 of the
 *   32 vector registers (12 accumulators, 4 panel words, 3 broadcasts, 6 more EOR/CNT
 *   temporaries; the other 6 reuse dead operands) and touches no stack, nor do 1x3 and
 *   2x1; every 16-accumulator shape tried (4x1, 2x2, 1x4) spilled and reloaded one
 *   accumulator per word (aarch64-linux-gnu-objdump -d of a -O3 build, the only stack
 *   accesses left are the d8-d15 saves in the prologue and epilogue, which AAPCS64
 *   requires). 8-12 independent UADALP chains are enough: at the
 *   issue rates above, ~3 (A76) to ~6 (V1) 128-bit steps are in flight per UADALP
 *   latency. Loads never bind either: 3x1 issues 2 LDP + 3 LD1R per 36 vector ALU
 *   instructions, 1x3 6 LDP + 1 LD1R per 36.
 *   Edges: none inside the tile: a panel word-group is always 8 full words (rows past N
 *   are zero, framework-owned), kw >= 1, and the framework calls with mr <= 3 and
 *   np <= panel_np[mr]; the switch covers exactly those shapes.
 *
 * Accumulator widths: a u16 lane gains at most 16 per step (two bytes of <= 8): per
 *   128-bit step in popcount_tile, per word in panel_tile. A block of BLOCK_STEPS = 2048
 *   steps therefore adds at most 32768 <= 65535 — no overflow — and is then flushed:
 *   popcount_tile adds a UADDLV sum into its 64-bit results; panel_tile adds each row's
 *   block count (<= 64 * 2048) into pc, whose u32 holds the final count (<= 64 * kw <=
 *   2^31 + 63 by the panel_tile contract).
 * Invariants relied on: row pointers are valid for kw words (popcount_tile: no
 *   alignment — LD1 accepts any address and loads go through uint8_t pointers;
 *   panel_tile reads activation words as whole uint64_t, as the API's uint64_t arrays
 *   allow, and LD1R would not fault on any address anyway); each panel holds kw * 8
 *   words; padding bits are zero in both operands, so XOR adds nothing past k.
 */
#include <arm_neon.h>

#include "../kernel.h"

#define MR 4
#define NR 4
#define BLOCK_STEPS 2048 /* steps per u16 accumulation block, see above */

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

/*
 * One fixed panel tile: MRC activation rows x NPC panels (see the top of the file).
 * acc[i][p][h] holds rows 2h and 2h+1 of panel p against activation row i, as 4 u16
 * lanes per row. pc is zeroed first and every block adds into it, so nothing but the
 * u16 accumulators is live across the word loop (a "first block stores" branch made
 * GCC keep the accumulators in a stack array between blocks).
 * xq: each row walks its own pointer, hidden from the optimizer by an empty asm after
 * each step. Otherwise GCC merges the rows into one base + shared index, and as LD1R
 * has no register-offset form, every broadcast becomes LDR + DUP: one extra vector
 * instruction per row and word, on the busy vector pipes instead of the load pipes.
 */
#define PANEL_TILE(MRC, NPC)                                                               \
    static void panel_##MRC##x##NPC(const uint64_t *const *x, const uint64_t *panels,       \
                                    int64_t pstride, int64_t kw, uint32_t *pc, int ldc) {   \
        for (int i = 0; i < MRC; i++)                                                       \
            for (int j = 0; j < NPC * TAKANE_PANEL_ROWS; j++) pc[i * ldc + j] = 0;          \
        const uint64_t *xq[MRC];                                                            \
        for (int i = 0; i < MRC; i++) xq[i] = x[i];                                         \
        for (int64_t q0 = 0; q0 < kw; q0 += BLOCK_STEPS) {                                  \
            const int64_t qe = kw - q0 < BLOCK_STEPS ? kw : q0 + BLOCK_STEPS;               \
            uint16x8_t acc[MRC][NPC][4];                                                    \
            for (int i = 0; i < MRC; i++)                                                   \
                for (int p = 0; p < NPC; p++)                                               \
                    for (int h = 0; h < 4; h++) acc[i][p][h] = vdupq_n_u16(0);              \
            for (int64_t q = q0; q < qe; q++) {                                             \
                uint8x16_t pw[NPC][4];                                                      \
                for (int p = 0; p < NPC; p++) {                                             \
                    const uint64_t *src = panels + p * pstride + q * TAKANE_PANEL_ROWS;    \
                    for (int h = 0; h < 4; h++)                                             \
                        pw[p][h] = vreinterpretq_u8_u64(vld1q_u64(src + 2 * h));            \
                }                                                                           \
                for (int i = 0; i < MRC; i++) {                                             \
                    const uint8x16_t xb = vreinterpretq_u8_u64(vld1q_dup_u64(xq[i]));       \
                    xq[i]++;                                                                \
                    __asm__("" : "+r"(xq[i]));                                              \
                    for (int p = 0; p < NPC; p++)                                           \
                        for (int h = 0; h < 4; h++)                                         \
                            acc[i][p][h] = vpadalq_u8(acc[i][p][h],                         \
                                                      vcntq_u8(veorq_u8(xb, pw[p][h])));    \
                }                                                                           \
            }                                                                               \
            for (int i = 0; i < MRC; i++)                                                   \
                for (int p = 0; p < NPC; p++)                                               \
                    for (int g = 0; g < 2; g++) { /* rows 4g .. 4g+3 of panel p */          \
                        uint32_t *dst = pc + i * ldc + p * TAKANE_PANEL_ROWS + 4 * g;       \
                        const uint32x4_t s = vpaddq_u32(vpaddlq_u16(acc[i][p][2 * g]),      \
                                                        vpaddlq_u16(acc[i][p][2 * g + 1])); \
                        vst1q_u32(dst, vaddq_u32(vld1q_u32(dst), s));                       \
                    }                                                                       \
        }                                                                                   \
    }

PANEL_TILE(1, 1)
PANEL_TILE(1, 2)
PANEL_TILE(1, 3)
PANEL_TILE(2, 1)
PANEL_TILE(3, 1)

static void panel_tile(const uint64_t *const *x, int mr, const uint64_t *panels, int64_t pstride,
                       int np, int64_t kw, uint32_t *pc, int ldc) {
    switch (mr * 8 + np) {
    case 1 * 8 + 1: panel_1x1(x, panels, pstride, kw, pc, ldc); break;
    case 1 * 8 + 2: panel_1x2(x, panels, pstride, kw, pc, ldc); break;
    case 1 * 8 + 3: panel_1x3(x, panels, pstride, kw, pc, ldc); break;
    case 2 * 8 + 1: panel_2x1(x, panels, pstride, kw, pc, ldc); break;
    case 3 * 8 + 1: panel_3x1(x, panels, pstride, kw, pc, ldc); break;
    }
}

/* panel_np[mr]: mr * np <= 3, i.e. at most 12 accumulators (see the top of the file). */
/* Peak probe: 8 independent chains of ADD (in EOR's place: an EOR with a constant would
 * repeat every 2 rounds and could be folded) + CNT + UADALP, the kernels' sequence, in
 * registers only (8 x 2 + 1 of the 32 vector registers). u16 lanes gain at most 16 per
 * round, so they are drained every PROBE_BLOCK = 2048 rounds (32768 < 65536). */
#define PROBE_BLOCK 2048
static uint64_t probe(uint64_t iters, uint64_t *sink) {
    enum { CHAINS = 8 };
    uint8x16_t v[CHAINS];
    uint16x8_t acc[CHAINS];
    const uint8x16_t key = vdupq_n_u8((uint8_t)(*sink | 1));
    for (int c = 0; c < CHAINS; c++) v[c] = vdupq_n_u8((uint8_t)(37 * c + 11));
    uint64_t total = 0, rounds = 0;
    for (uint64_t it = 0; it < iters; it += PROBE_BLOCK) {
        for (int c = 0; c < CHAINS; c++) acc[c] = vdupq_n_u16(0);
        for (int r = 0; r < PROBE_BLOCK; r++)
            for (int c = 0; c < CHAINS; c++) {
                v[c] = vaddq_u8(v[c], key);
                acc[c] = vpadalq_u8(acc[c], vcntq_u8(v[c]));
            }
        for (int c = 0; c < CHAINS; c++) total += vaddlvq_u16(acc[c]);
        rounds += PROBE_BLOCK;
    }
    *sink = total;
    return rounds * CHAINS * 128;
}

const takane_matmul_ukernel takane_matmul_ukernel_neon = {
    MR, NR, popcount_tile, panel_tile, 3, {0, 3, 1, 1}, probe, NULL, NULL, 0,
};
