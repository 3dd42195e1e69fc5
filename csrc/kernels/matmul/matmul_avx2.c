/*
 * matmul_avx2.c — W1A1 popcount tile for x86-64 AVX2.
 *
 * ISA and flags: AVX2 + FMA + POPCNT (-mavx2 -mfma -mpopcnt), Haswell and later;
 *   only this file and the other *_avx2.c files get them.
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

#include "../../src/internal.h"

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

const takane_matmul_ukernel takane_matmul_ukernel_avx2 = {MR, NR, popcount_tile};
