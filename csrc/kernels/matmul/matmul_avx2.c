/*
 * matmul_avx2.c — W1A1 microkernels for x86-64 AVX2.
 *
 * ISA and flags: AVX2 + FMA + POPCNT (-mavx2 -mfma -mpopcnt), Haswell and later;
 *   only this file and the other *_avx2.c files get them.
 * Three pieces: the panel tiles (prepacked weights, the fast path; comments at
 *   PANEL_TILE and SPLIT_TILE below), the peak probe, and the canonical-rows tile for
 *   raw uint64 weights, described here.
 * Tile: MR=2 activation rows x NR=4 weight rows, 256 bits (4 words) per step: 6 loads
 *   feed 8 XOR+popcounts, and the 8 accumulators are independent chains.
 * Key instructions: AVX2 has no vector popcount, so bytes are counted with the nibble
 *   lookup (VPSHUFB on low and high nibbles, 2 shuffles + 2 ands + 1 shift + 1 add,
 *   port 5 bound on Intel at 1 shuffle/cycle), then VPSADBW sums the byte counts into
 *   the 4 64-bit lanes (1/cycle). Roughly 8 uops per 256-bit XOR-popcount.
 * Edges: the last 1..3 words of a row are read with VPMASKMOVQ (masked-off lanes read
 *   as 0 and are never touched in memory), so no scalar tail loop and no overread.
 * Invariants relied on: padding bits are zero in both operands (XOR adds nothing past
 *   k); each byte count is <= 8, so one VPSADBW per step cannot overflow.
 */
#include <immintrin.h>

#include "../kernel.h"

#define MR 2
#define NR 4

/* Per-byte popcount of v via the 16-entry nibble table. */
static inline __m256i popcount_bytes(__m256i v, __m256i lut, __m256i low4) {
    const __m256i lo = _mm256_and_si256(v, low4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

static inline uint64_t hsum_epi64(__m256i v) {
    const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return (uint64_t)_mm_cvtsi128_si64(s) + (uint64_t)_mm_extract_epi64(s, 1);
}

/* One step of the tile: accumulate popcount(xa[i] ^ wb[j]) into acc[i][j]. */
#define TILE_STEP(LOADX, LOADW)                                                            \
    do {                                                                                   \
        __m256i xa[MR], wb[NR];                                                            \
        for (int i = 0; i < MR; i++) xa[i] = LOADX(x[i] + q);                              \
        for (int j = 0; j < NR; j++) wb[j] = LOADW(w[j] + q);                              \
        for (int i = 0; i < MR; i++)                                                       \
            for (int j = 0; j < NR; j++)                                                   \
                acc[i][j] = _mm256_add_epi64(                                              \
                    acc[i][j],                                                             \
                    _mm256_sad_epu8(                                                       \
                        popcount_bytes(_mm256_xor_si256(xa[i], wb[j]), lut, low4), zero)); \
    } while (0)

static void popcount_tile(const uint64_t *const *x, const uint64_t *const *w, int64_t kw,
                          uint64_t *pc) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1,
                                         1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    __m256i acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = zero;
    int64_t q = 0;
#define LOADU(p) _mm256_loadu_si256((const __m256i *)(p))
    for (; q + 4 <= kw; q += 4) TILE_STEP(LOADU, LOADU);
    if (q < kw) {
        /* lanes < kw - q are loaded, the rest read as zero */
        const __m256i tail = _mm256_cmpgt_epi64(_mm256_set1_epi64x(kw - q),
                                                _mm256_setr_epi64x(0, 1, 2, 3));
#define LOADM(p) _mm256_maskload_epi64((const long long *)(p), tail)
        TILE_STEP(LOADM, LOADM);
#undef LOADM
    }
#undef LOADU
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) pc[i * NR + j] = hsum_epi64(acc[i][j]);
}

/*
 * Panel tile: activation word broadcast (VPBROADCASTQ from memory, a load-port uop)
 * against word q of 8 weight rows (two 256-bit loads); each 64-bit lane is one output,
 * so the result needs no horizontal reduction. Byte counts (<= 8 per byte per word)
 * accumulate with VPADDB for up to FLUSH = 31 words (31 * 8 = 248 < 256), then VPSADBW
 * turns each lane's 8 byte counts into that lane's 64-bit sum. Per 256-bit XOR-popcount:
 * VPXOR, 2 VPAND, VPSRLW, 2 VPSHUFB, 2 VPADDB = 8 ALU uops; the popcount work, not the
 * loads, bounds the loop, so the tile only needs enough independent accumulators:
 * (mr x np x 2 halves) = 8 of them in 16 ymm registers (+ np*2 panel loads, LUT, mask).
 */
#define FLUSH 31

/* A panel's 8 counts (two vectors of four 64-bit lane sums, each < 2^32) as 8 uint32:
 * keep the low dword of each lane, one 256-bit store. */
static inline void store_counts(const __m256i tot[2], uint32_t *dst) {
    const __m256i low_dwords = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m256i lo = _mm256_permutevar8x32_epi32(tot[0], low_dwords);
    const __m256i hi = _mm256_permutevar8x32_epi32(tot[1], low_dwords);
    _mm256_storeu_si256((__m256i *)dst, _mm256_blend_epi32(lo, hi, 0xf0));
}

#define PANEL_TILE(MRC, NPC)                                                               \
    static inline __attribute__((always_inline)) void panel_##MRC##x##NPC(const uint64_t *const *x, const uint64_t *panels,       \
                                    int64_t pstride, int64_t kw, uint32_t *pc, int ldc) {   \
        const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  \
                                             0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4); \
        const __m256i low4 = _mm256_set1_epi8(0x0f);                                        \
        __m256i tot[MRC][NPC][2];                                                           \
        for (int i = 0; i < MRC; i++)                                                       \
            for (int p = 0; p < NPC; p++) tot[i][p][0] = tot[i][p][1] = _mm256_setzero_si256(); \
        for (int64_t q0 = 0; q0 < kw; q0 += FLUSH) {                                        \
            const int64_t qe = q0 + FLUSH < kw ? q0 + FLUSH : kw;                           \
            __m256i acc[MRC][NPC][2];                                                       \
            for (int i = 0; i < MRC; i++)                                                   \
                for (int p = 0; p < NPC; p++)                                               \
                    acc[i][p][0] = acc[i][p][1] = _mm256_setzero_si256();                   \
            for (int64_t q = q0; q < qe; q++) {                                             \
                __m256i pw[NPC][2];                                                         \
                for (int p = 0; p < NPC; p++) {                                             \
                    const uint64_t *src = panels + p * pstride + q * TAKANE_PANEL_ROWS;    \
                    pw[p][0] = _mm256_loadu_si256((const __m256i *)src);                    \
                    pw[p][1] = _mm256_loadu_si256((const __m256i *)(src + 4));              \
                }                                                                           \
                for (int i = 0; i < MRC; i++) {                                             \
                    const __m256i xb = _mm256_set1_epi64x((long long)x[i][q]);              \
                    for (int p = 0; p < NPC; p++)                                           \
                        for (int h = 0; h < 2; h++)                                         \
                            acc[i][p][h] = _mm256_add_epi8(                                 \
                                acc[i][p][h],                                               \
                                popcount_bytes(_mm256_xor_si256(xb, pw[p][h]), lut, low4)); \
                }                                                                           \
            }                                                                               \
            for (int i = 0; i < MRC; i++)                                                   \
                for (int p = 0; p < NPC; p++)                                               \
                    for (int h = 0; h < 2; h++)                                             \
                        tot[i][p][h] = _mm256_add_epi64(                                    \
                            tot[i][p][h], _mm256_sad_epu8(acc[i][p][h], _mm256_setzero_si256())); \
        }                                                                                   \
        for (int i = 0; i < MRC; i++)                                                       \
            for (int p = 0; p < NPC; p++)                                                   \
                store_counts(tot[i][p], pc + i * ldc + p * TAKANE_PANEL_ROWS);              \
    }

PANEL_TILE(1, 1)
PANEL_TILE(1, 2)
PANEL_TILE(1, 4)
PANEL_TILE(2, 1)
PANEL_TILE(2, 2)
PANEL_TILE(3, 1)
PANEL_TILE(4, 1)

/*
 * Split-nibble tile, for mr >= 2. XOR commutes with the nibble split:
 *   (a ^ b) & 0x0f = (a & 0x0f) ^ (b & 0x0f),  ((a ^ b) >> 4) & 0x0f = likewise,
 * so the AND / shift / AND work moves from every (row, panel) pair to each operand once:
 * the activation words arrive pre-split (xs[i][0][q] low nibbles, xs[i][1][q] high, made
 * once per call), a panel word-group is split once per load, and a pair costs VPXOR x2,
 * VPSHUFB x2, VPADDB x2 = 6 ALU uops instead of 8. Accumulators as in PANEL_TILE.
 */
#define SPLIT_TILE(MRC, NPC)                                                               \
    static inline __attribute__((always_inline)) void split_##MRC##x##NPC(                 \
        const uint64_t *xs, int64_t xs_stride, const uint64_t *panels, int64_t pstride,     \
        int64_t kw, uint32_t *pc, int ldc) {                                                \
        const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  \
                                             0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4); \
        const __m256i low4 = _mm256_set1_epi8(0x0f);                                        \
        __m256i tot[MRC][NPC][2];                                                           \
        for (int i = 0; i < MRC; i++)                                                       \
            for (int p = 0; p < NPC; p++) tot[i][p][0] = tot[i][p][1] = _mm256_setzero_si256(); \
        for (int64_t q0 = 0; q0 < kw; q0 += FLUSH) {                                        \
            const int64_t qe = q0 + FLUSH < kw ? q0 + FLUSH : kw;                           \
            __m256i acc[MRC][NPC][2];                                                       \
            for (int i = 0; i < MRC; i++)                                                   \
                for (int p = 0; p < NPC; p++)                                               \
                    acc[i][p][0] = acc[i][p][1] = _mm256_setzero_si256();                   \
            for (int64_t q = q0; q < qe; q++) {                                             \
                __m256i plo[NPC][2], phi[NPC][2];                                           \
                for (int p = 0; p < NPC; p++)                                               \
                    for (int h = 0; h < 2; h++) {                                           \
                        const __m256i v = _mm256_loadu_si256(                               \
                            (const __m256i *)(panels + p * pstride + q * TAKANE_PANEL_ROWS + 4 * h)); \
                        plo[p][h] = _mm256_and_si256(v, low4);                              \
                        phi[p][h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);        \
                    }                                                                       \
                for (int i = 0; i < MRC; i++) {                                             \
                    const __m256i xl = _mm256_set1_epi64x((long long)xs[i * xs_stride + q]); \
                    const __m256i xh = _mm256_set1_epi64x((long long)xs[i * xs_stride + kw + q]); \
                    for (int p = 0; p < NPC; p++)                                           \
                        for (int h = 0; h < 2; h++) {                                       \
                            const __m256i cl = _mm256_shuffle_epi8(lut, _mm256_xor_si256(xl, plo[p][h])); \
                            const __m256i ch = _mm256_shuffle_epi8(lut, _mm256_xor_si256(xh, phi[p][h])); \
                            acc[i][p][h] = _mm256_add_epi8(acc[i][p][h], _mm256_add_epi8(cl, ch)); \
                        }                                                                   \
                }                                                                           \
            }                                                                               \
            for (int i = 0; i < MRC; i++)                                                   \
                for (int p = 0; p < NPC; p++)                                               \
                    for (int h = 0; h < 2; h++)                                             \
                        tot[i][p][h] = _mm256_add_epi64(                                    \
                            tot[i][p][h], _mm256_sad_epu8(acc[i][p][h], _mm256_setzero_si256())); \
        }                                                                                   \
        for (int i = 0; i < MRC; i++)                                                       \
            for (int p = 0; p < NPC; p++)                                                   \
                store_counts(tot[i][p], pc + i * ldc + p * TAKANE_PANEL_ROWS);              \
    }

SPLIT_TILE(2, 1)
SPLIT_TILE(3, 1)
SPLIT_TILE(4, 1)

/* Activation rows split once per call: up to 4 rows x (low, high) x SPLIT_MAX_KW words
 * on the stack (32 KiB); longer rows use the plain tiles. */
#define SPLIT_MAX_KW 512

/* One call covers np panels (up to panel_np = 64, a whole slice of an L2 block): the
 * loop over fixed-shape tiles lives here, with the tiles inlined, so a call's fixed
 * cost is paid once per 64 panels and not once per 4x8 outputs. Per mr the widest
 * tile that fits 8 accumulators: 1x4, 2x2, 3x1, 4x1. */
static void panel_tile(const uint64_t *const *x, int mr, const uint64_t *panels, int64_t pstride,
                       int np, int64_t kw, uint32_t *pc, int ldc) {
    int p = 0;
    if (mr >= 2 && kw <= SPLIT_MAX_KW) {
        uint64_t xs[4 * 2 * SPLIT_MAX_KW];
        const __m256i low4 = _mm256_set1_epi8(0x0f);
        for (int i = 0; i < mr; i++) {
            uint64_t *lo = xs + i * 2 * kw, *hi = lo + kw;
            int64_t q = 0;
            for (; q + 4 <= kw; q += 4) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(x[i] + q));
                _mm256_storeu_si256((__m256i *)(lo + q), _mm256_and_si256(v, low4));
                _mm256_storeu_si256((__m256i *)(hi + q), _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
            }
            for (; q < kw; q++) { /* the last 1..3 words of a row */
                lo[q] = x[i][q] & 0x0f0f0f0f0f0f0f0full;
                hi[q] = (x[i][q] >> 4) & 0x0f0f0f0f0f0f0f0full;
            }
        }
#define SSTEP(MRC)                                                                         \
    split_##MRC##x1(xs, 2 * kw, panels + p * pstride, pstride, kw, pc + p * TAKANE_PANEL_ROWS, ldc); \
    p += 1
        switch (mr) {
        case 2: while (p < np) { SSTEP(2); } break;
        case 3: while (p < np) { SSTEP(3); } break;
        default: while (p < np) { SSTEP(4); } break;
        }
#undef SSTEP
        return;
    }
#define STEP(MRC, NPC)                                                                     \
    panel_##MRC##x##NPC(x, panels + p * pstride, pstride, kw, pc + p * TAKANE_PANEL_ROWS, ldc); \
    p += NPC
    switch (mr) {
    case 1:
        while (p + 4 <= np) { STEP(1, 4); }
        while (p + 2 <= np) { STEP(1, 2); }
        while (p < np) { STEP(1, 1); }
        break;
    case 2:
        while (p + 2 <= np) { STEP(2, 2); }
        while (p < np) { STEP(2, 1); }
        break;
    case 3:
        while (p < np) { STEP(3, 1); }
        break;
    default:
        while (p < np) { STEP(4, 1); }
        break;
    }
#undef STEP
}

/*
 * Decode GEMV: one activation row against consecutive panels streaming from DRAM, read
 * front to back as one stream (see the AVX-512 file, also for why there is no software
 * prefetch), one 64-byte line (word q of the panel's 8 rows: two 256-bit loads) per step
 * against the broadcast activation word, byte counts in two VPADDB accumulators flushed
 * through VPSADBW every FLUSH words. About 16 ALU uops per line: ~4-5 cycles, under a
 * line's DRAM time at one core's bandwidth.
 */
static void gemv(const uint64_t *x, const uint64_t *panels, int np, int64_t kw, uint32_t *pc) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1,
                                         1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    for (int t = 0; t < np; t++) {
        const uint64_t *panel = panels + (int64_t)t * kw * TAKANE_PANEL_ROWS;
        __m256i tot[2] = {zero, zero};
        for (int64_t q0 = 0; q0 < kw; q0 += FLUSH) {
            const int64_t qe = q0 + FLUSH < kw ? q0 + FLUSH : kw;
            __m256i a0 = zero, a1 = zero;
            for (int64_t q = q0; q < qe; q++) {
                const __m256i xb = _mm256_set1_epi64x((long long)x[q]);
                const uint64_t *src = panel + q * TAKANE_PANEL_ROWS;
                a0 = _mm256_add_epi8(a0, popcount_bytes(_mm256_xor_si256(
                                             xb, _mm256_loadu_si256((const __m256i *)src)),
                                                         lut, low4));
                a1 = _mm256_add_epi8(a1, popcount_bytes(_mm256_xor_si256(
                                             xb, _mm256_loadu_si256((const __m256i *)(src + 4))),
                                                         lut, low4));
            }
            tot[0] = _mm256_add_epi64(tot[0], _mm256_sad_epu8(a0, zero));
            tot[1] = _mm256_add_epi64(tot[1], _mm256_sad_epu8(a1, zero));
        }
        store_counts(tot, pc + t * TAKANE_PANEL_ROWS);
    }
}

/* Peak probe: the split-nibble pair sequence (the best the kernels run) with operands in
 * registers: per 256 bits two VPADDQ (in the two VPXORs' place: an XOR with a constant
 * would repeat every 2 rounds and could be folded), two VPSHUFB, two VPADDB. CHAINS
 * independent chains x 3 registers + LUT + key fit the 16 ymm registers with no spills
 * (8 chains would spill and measure the stack, not the ALUs); flushed with VPSADBW
 * every 31 rounds. */
static uint64_t probe(uint64_t iters, uint64_t *sink) {
    enum { CHAINS = 4 };
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1,
                                         1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    __m256i vl[CHAINS], vh[CHAINS], tot = _mm256_setzero_si256();
    for (int c = 0; c < CHAINS; c++) {
        vl[c] = _mm256_set1_epi64x((long long)(0x0e0d070b0f03090aull * (c + 1)));
        vh[c] = _mm256_set1_epi64x((long long)(0x0306090c0f020508ull * (c + 1)));
    }
    const __m256i key = _mm256_set1_epi64x((long long)(*sink | 1));
    for (uint64_t it = 0; it < iters; it += FLUSH) {
        __m256i acc[CHAINS];
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_setzero_si256();
        for (int r = 0; r < FLUSH; r++) {
            for (int c = 0; c < CHAINS; c++) {
                vl[c] = _mm256_add_epi64(vl[c], key);
                vh[c] = _mm256_add_epi64(vh[c], key);
                acc[c] = _mm256_add_epi8(acc[c], _mm256_add_epi8(_mm256_shuffle_epi8(lut, vl[c]),
                                                                 _mm256_shuffle_epi8(lut, vh[c])));
            }
        }
        for (int c = 0; c < CHAINS; c++)
            tot = _mm256_add_epi64(tot, _mm256_sad_epu8(acc[c], _mm256_setzero_si256()));
    }
    *sink = hsum_epi64(tot);
    return ((iters + FLUSH - 1) / FLUSH) * FLUSH * CHAINS * 256;
}

const takane_matmul_ukernel takane_matmul_ukernel_avx2 = {
    MR, NR, popcount_tile, panel_tile, 4, {0, 64, 64, 64, 64}, probe, gemv, NULL, 0,
};
