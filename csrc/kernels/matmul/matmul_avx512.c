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

#include "../kernel.h"

#define MR 4
#define NR 4
#define GEMV_M_MAX 8 /* rows of gemv_m: 8 accumulators + the weight line + broadcasts */

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

/* Panel tile: the XOR + popcount loop of isa_avx512.h (takane_avx512_panel_counts), then
 * the counts stored. */
#define PANEL_TILE(MRC, NPC)                                                               \
    static inline __attribute__((always_inline)) void panel_##MRC##x##NPC(                  \
        const uint64_t *const *x, const uint64_t *panels, int64_t pstride, int64_t kw,      \
        uint32_t *pc, int ldc) {                                                            \
        __m512i acc[MRC * NPC];                                                             \
        takane_avx512_panel_counts(x, MRC, panels, pstride, NPC, kw, acc);                  \
        /* counts < 2^32: VPMOVQD narrows each lane to its low dword, 8 outputs stored */  \
        for (int i = 0; i < MRC; i++)                                                       \
            for (int p = 0; p < NPC; p++)                                                   \
                _mm256_storeu_si256((__m256i *)(pc + i * ldc + p * TAKANE_PANEL_ROWS),      \
                                    _mm512_cvtepi64_epi32(acc[i * NPC + p]));               \
    }

#define PANEL_TILES_FOR_MR(MRC) PANEL_TILE(MRC, 1) PANEL_TILE(MRC, 2) PANEL_TILE(MRC, 4)
PANEL_TILES_FOR_MR(1)
PANEL_TILES_FOR_MR(2)
PANEL_TILES_FOR_MR(3)
PANEL_TILES_FOR_MR(4)

/* One call covers np panels (up to panel_np = 64): the loop over 4-panel tiles lives
 * here with the tiles inlined, so the call's fixed cost is paid once per slice. */
static void panel_tile(const uint64_t *const *x, int mr, const uint64_t *panels, int64_t pstride,
                       int np, int64_t kw, uint32_t *pc, int ldc) {
    int p = 0;
#define STEP(MRC, NPC)                                                                     \
    panel_##MRC##x##NPC(x, panels + p * pstride, pstride, kw, pc + p * TAKANE_PANEL_ROWS, ldc); \
    p += NPC
#define ROWS(MRC)                                                                          \
    while (p + 4 <= np) { STEP(MRC, 4); }                                                  \
    while (p + 2 <= np) { STEP(MRC, 2); }                                                  \
    while (p < np) { STEP(MRC, 1); }
    TAKANE_AVX512_SWITCH_MR(mr, ROWS)
#undef ROWS
#undef STEP
}

/*
 * Decode GEMV: one activation row against consecutive panels, the weights streaming from
 * DRAM. The panels are one contiguous block of memory, so the loop reads it front to back
 * as a single stream (the 4-panel tile reads 4 streams kw * 64 bytes apart), one 64-byte
 * line per step: VPXORQ with the broadcast activation word, VPOPCNTQ, VPADDQ into one of
 * two accumulators (alternating, so the add chain is not the limit). ~2 cycles per line
 * against ~8 for a line's DRAM time at one core's bandwidth: the loop waits on memory, and
 * the hardware prefetchers see one sequential stream. Software prefetching (PREFETCHT0 /
 * PREFETCHNTA, 256 B to 16 KiB ahead) was measured on Zen 4 and was as fast at best and
 * up to 1.5x slower, so there is none (README "1-bit LLM decode").
 */
static void gemv(const uint64_t *x, const uint64_t *panels, int np, int64_t kw, uint32_t *pc) {
    for (int t = 0; t < np; t++) {
        const uint64_t *panel = panels + (int64_t)t * kw * TAKANE_PANEL_ROWS;
        __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
        int64_t q = 0;
        for (; q + 2 <= kw; q += 2) {
            const __m512i w0 = _mm512_loadu_si512((const void *)(panel + q * TAKANE_PANEL_ROWS));
            const __m512i w1 =
                _mm512_loadu_si512((const void *)(panel + (q + 1) * TAKANE_PANEL_ROWS));
            acc0 = _mm512_add_epi64(acc0, _mm512_popcnt_epi64(_mm512_xor_si512(
                                              _mm512_set1_epi64((long long)x[q]), w0)));
            acc1 = _mm512_add_epi64(acc1, _mm512_popcnt_epi64(_mm512_xor_si512(
                                              _mm512_set1_epi64((long long)x[q + 1]), w1)));
        }
        if (q < kw) {
            const __m512i w0 = _mm512_loadu_si512((const void *)(panel + q * TAKANE_PANEL_ROWS));
            acc0 = _mm512_add_epi64(acc0, _mm512_popcnt_epi64(_mm512_xor_si512(
                                              _mm512_set1_epi64((long long)x[q]), w0)));
        }
        /* counts < 2^32: VPMOVQD keeps each lane's low dword, 8 outputs stored */
        _mm256_storeu_si256((__m256i *)(pc + t * TAKANE_PANEL_ROWS),
                            _mm512_cvtepi64_epi32(_mm512_add_epi64(acc0, acc1)));
    }
}

/*
 * Small-batch decode (M = 2..8 rows): gemv's single sequential weight stream, each 64-byte
 * weight line loaded once and XOR-popcounted against all mr rows' broadcast words (mr
 * accumulators, one per row; the x words come from L1). The panel tile instead walks an
 * L2 block once per 4 rows, reading 4 streams kw * 64 bytes apart: with cold weights the
 * first pass waits on DRAM and the second pass's compute is not overlapped with it, so
 * M = 8 took ~2x the M = 1 time. Here the popcounts (mr per line, ~8 cycles at mr = 8) run
 * under the line's DRAM time (~10 cycles at one core's bandwidth on Zen 4).
 */
static inline __attribute__((always_inline)) void gemv_rows(const uint64_t *const *x, int mr,
                                                            const uint64_t *panels, int np,
                                                            int64_t kw, uint32_t *pc, int ldc) {
    for (int t = 0; t < np; t++) {
        const uint64_t *panel = panels + (int64_t)t * kw * TAKANE_PANEL_ROWS;
        __m512i acc[GEMV_M_MAX];
        for (int i = 0; i < mr; i++) acc[i] = _mm512_setzero_si512();
        for (int64_t q = 0; q < kw; q++) {
            const __m512i w = _mm512_loadu_si512((const void *)(panel + q * TAKANE_PANEL_ROWS));
            for (int i = 0; i < mr; i++)
                acc[i] = _mm512_add_epi64(acc[i], _mm512_popcnt_epi64(_mm512_xor_si512(
                                                      _mm512_set1_epi64((long long)x[i][q]), w)));
        }
        /* counts < 2^32: VPMOVQD keeps each lane's low dword, 8 outputs stored */
        for (int i = 0; i < mr; i++)
            _mm256_storeu_si256((__m256i *)(pc + i * ldc + t * TAKANE_PANEL_ROWS),
                                _mm512_cvtepi64_epi32(acc[i]));
    }
}

/* One instance per row count, so the row loops unroll and acc[] stays in registers. */
static void gemv_m(const uint64_t *const *x, int mr, const uint64_t *panels, int np, int64_t kw,
                   uint32_t *pc, int ldc) {
    switch (mr) {
#define CASE(MRC)                                                                          \
    case MRC: gemv_rows(x, MRC, panels, np, kw, pc, ldc); break;
        CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) default: CASE(8)
#undef CASE
    }
}

/* Peak probe: 12 independent chains of VPADDQ (in VPXORQ's place) + VPOPCNTQ + VPADDQ;
 * registers only. */
static uint64_t probe(uint64_t iters, uint64_t *sink) {
    enum { CHAINS = 12 };
    __m512i v[CHAINS], acc[CHAINS];
    const __m512i key = _mm512_set1_epi64((long long)*sink | 1);
    for (int c = 0; c < CHAINS; c++) {
        v[c] = _mm512_set1_epi64((long long)(0x9e3779b97f4a7c15ull * (c + 1)));
        acc[c] = _mm512_setzero_si512();
    }
    for (uint64_t it = 0; it < iters; it++)
        for (int c = 0; c < CHAINS; c++) {
            v[c] = _mm512_add_epi64(v[c], key); /* a new value every round: no folding */
            acc[c] = _mm512_add_epi64(acc[c], _mm512_popcnt_epi64(v[c]));
        }
    uint64_t total = 0;
    for (int c = 0; c < CHAINS; c++) total += (uint64_t)_mm512_reduce_add_epi64(acc[c]);
    *sink = total;
    return iters * CHAINS * 512;
}

const takane_matmul_ukernel takane_matmul_ukernel_avx512 = {
    MR, NR, popcount_tile, panel_tile, 4, {0, 64, 64, 64, 64}, probe, gemv, gemv_m, GEMV_M_MAX,
};
