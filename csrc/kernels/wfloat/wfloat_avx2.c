/*
 * wfloat_avx2.c — W1A-float microkernels for x86-64 AVX2: sums of real activations signed
 * by packed ±1 weights, 8 weight rows at a time, through in-register lookup tables.
 *
 * ISA and flags: AVX2 + FMA + POPCNT (-mavx2 -mfma -mpopcnt).
 * Idea (T-MAC's lookup table, with float entries): the lanes of a ymm register are 8
 *   weight rows. Split each 32-column chunk into 10 groups of 3 columns + 1 group of 2;
 *   for each group, a table of 8 floats holds every signed sum s0 x0 + s1 x1 + s2 x2.
 *   VPERMPS(table, idx) then looks up 8 rows at once, using bits [2:0] of each 32-bit
 *   lane as the index, so for group j the index vector is just the 8 rows' 32-bit chunk
 *   shifted right by 3j (VPERMPS ignores the higher bits; no mask needed).
 * Tile: MR <= 4 activation rows (one table each) x NR=8 weight rows. Per chunk: 10
 *   VPSRLD shared by the MR rows, then per row 11 VPERMPS (table from memory) + 11 VADDPS
 *   summed as a tree (short dependency chains). The chunks of 8 rows are gathered by
 *   loading 4 words (8 chunks) of each row and transposing the 8x8 32-bit matrix
 *   (8 VPUNPCK*DQ + 8 VPUNPCK*QDQ + 8 VPERM2I128 per 8 chunks).
 * Why this kernel (measured on an AVX2 Zen 4, 1 thread, (1,4096,4096)): per 8 weights,
 *   a VPSLLVD + VBLENDVPS sign select + VADDPS over k-lanes took 1.56 ms; decoding
 *   weights to ±1.0 and FMA took 5.5 ms; this table kernel 0.38 ms (it spends ~1/24
 *   VPERMPS per row-weight). Re-tiling the weights ahead of time to skip the transpose
 *   gained under 3%, so canonical rows are read directly.
 * Edges: the last 1..3 words of a row are read with VPMASKMOVQ (no overread, masked-off
 *   words read as 0); activations are zero past k, so columns past k add ±0.
 * Float error: one float32 summation tree per output over the k signed activations (2
 *   rounded adds inside a table entry, then the tree), so the any-order bound of
 *   takane.h applies.
 * Invariants: xs holds ceil(k/64)*64 floats, zero past k; weight padding bits are zero.
 */
#include "../isa_avx2.h"

#define MR 4
#define NR 8
#define GROUPS 11             /* lookups per 32-column chunk: 10 of 3 columns, 1 of 2 */
#define CHUNK_FLOATS (GROUPS * 8)

static int64_t table_len(int64_t k) { return takane_words_for(k) * 2 * CHUNK_FLOATS; }

/* Table of one activation row: for chunk c, group j, entry e (bit b of e = sign of the
 * group's column b), at table[(c * GROUPS + j) * 8 + e]. */
static void build_table(const float *xs, int64_t k, float *table) {
    /* sign-flip masks: lane e flips column b's sign when bit b of e is 0 */
    const __m256 flip0 = _mm256_castsi256_ps(_mm256_setr_epi32(
        (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0));
    const __m256 flip1 = _mm256_castsi256_ps(_mm256_setr_epi32(
        (int)0x80000000, (int)0x80000000, 0, 0, (int)0x80000000, (int)0x80000000, 0, 0));
    const __m256 flip2 = _mm256_castsi256_ps(_mm256_setr_epi32(
        (int)0x80000000, (int)0x80000000, (int)0x80000000, (int)0x80000000, 0, 0, 0, 0));
    const int64_t chunks = takane_words_for(k) * 2;
    for (int64_t c = 0; c < chunks; c++) {
        const float *x = xs + 32 * c;
        float *t = table + c * CHUNK_FLOATS;
        for (int j = 0; j < 10; j++) {
            const __m256 a = _mm256_xor_ps(_mm256_broadcast_ss(x + 3 * j), flip0);
            const __m256 b = _mm256_xor_ps(_mm256_broadcast_ss(x + 3 * j + 1), flip1);
            const __m256 d = _mm256_xor_ps(_mm256_broadcast_ss(x + 3 * j + 2), flip2);
            _mm256_storeu_ps(t + 8 * j, _mm256_add_ps(_mm256_add_ps(a, b), d));
        }
        /* columns 30, 31: the index (chunk >> 30) is < 4, entries 4..7 repeat 0..3 */
        const __m256 a = _mm256_xor_ps(_mm256_broadcast_ss(x + 30), flip0);
        const __m256 b = _mm256_xor_ps(_mm256_broadcast_ss(x + 31), flip1);
        _mm256_storeu_ps(t + 80, _mm256_add_ps(a, b));
    }
}

/* Chunk q of the 8 rows: lane r = bits 32q..32q+31 of row r, for q in [0, 8) of the
 * 4-word block starting at word w0 (words past kw read as 0). */
static inline void load_block(const uint64_t *const *w, int64_t w0, int64_t kw, __m256i r[8]) {
    if (w0 + 4 <= kw) {
        for (int j = 0; j < NR; j++) r[j] = _mm256_loadu_si256((const __m256i *)(w[j] + w0));
    } else {
        const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(kw - w0),
                                             _mm256_setr_epi64x(0, 1, 2, 3));
        for (int j = 0; j < NR; j++)
            r[j] = _mm256_maskload_epi64((const long long *)(w[j] + w0), m);
    }
    takane_transpose8x32(r);
}

#define LOOKUP(j) _mm256_permutevar8x32_ps(_mm256_loadu_ps(t + 8 * (j)), idx[j])

/* The 8 row sums of one chunk for one activation row's table t (chunk-relative). */
static inline __m256 chunk_sum(const float *t, const __m256i idx[GROUPS]) {
    const __m256 s0 = _mm256_add_ps(LOOKUP(0), LOOKUP(1));
    const __m256 s1 = _mm256_add_ps(LOOKUP(2), LOOKUP(3));
    const __m256 s2 = _mm256_add_ps(LOOKUP(4), LOOKUP(5));
    const __m256 s3 = _mm256_add_ps(LOOKUP(6), LOOKUP(7));
    const __m256 s4 = _mm256_add_ps(LOOKUP(8), LOOKUP(9));
    return _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)),
                         _mm256_add_ps(s4, LOOKUP(10)));
}

#define DEFINE_PANEL(ROWS)                                                                 \
    static void panel_##ROWS(const float *const *tables, const uint64_t *const *w,         \
                             int64_t k, float *sums) {                                     \
        const int64_t kw = takane_words_for(k), chunks = 2 * kw;                           \
        __m256 acc[ROWS];                                                                  \
        for (int i = 0; i < ROWS; i++) acc[i] = _mm256_setzero_ps();                       \
        for (int64_t w0 = 0; w0 < kw; w0 += 4) {                                           \
            __m256i r[8];                                                                  \
            load_block(w, w0, kw, r);                                                      \
            const int64_t c0 = 2 * w0;                                                     \
            const int nq = chunks - c0 < 8 ? (int)(chunks - c0) : 8;                       \
            for (int q = 0; q < nq; q++) {                                                 \
                __m256i idx[GROUPS];                                                       \
                idx[0] = r[q];                                                             \
                idx[1] = _mm256_srli_epi32(r[q], 3);                                       \
                idx[2] = _mm256_srli_epi32(r[q], 6);                                       \
                idx[3] = _mm256_srli_epi32(r[q], 9);                                       \
                idx[4] = _mm256_srli_epi32(r[q], 12);                                      \
                idx[5] = _mm256_srli_epi32(r[q], 15);                                      \
                idx[6] = _mm256_srli_epi32(r[q], 18);                                      \
                idx[7] = _mm256_srli_epi32(r[q], 21);                                      \
                idx[8] = _mm256_srli_epi32(r[q], 24);                                      \
                idx[9] = _mm256_srli_epi32(r[q], 27);                                      \
                idx[10] = _mm256_srli_epi32(r[q], 30);                                     \
                for (int i = 0; i < ROWS; i++)                                             \
                    acc[i] = _mm256_add_ps(                                                \
                        acc[i], chunk_sum(tables[i] + (c0 + q) * CHUNK_FLOATS, idx));      \
            }                                                                              \
        }                                                                                  \
        for (int i = 0; i < ROWS; i++) _mm256_storeu_ps(sums + i * NR, acc[i]);            \
    }
DEFINE_PANEL(1)
DEFINE_PANEL(2)
DEFINE_PANEL(3)
DEFINE_PANEL(4)

static void panel(const float *const *tables, int mr, const uint64_t *const *w, int64_t k,
                  float *sums) {
    switch (mr) {
    case 1: panel_1(tables, w, k, sums); break; /* the GEMV path: decode, M = 1 */
    case 2: panel_2(tables, w, k, sums); break;
    case 3: panel_3(tables, w, k, sums); break;
    default: panel_4(tables, w, k, sums); break;
    }
}

/*
 * Prepacked panels (NR = 8 = one panel): the two 256-bit loads of word q hold, in 32-bit
 * lanes, chunks 2q and 2q+1 of rows 0-3 and of rows 4-7; one VSHUFPS each (imm 0x88,
 * 0xDD) gathers chunk 2q (2q+1) of all 8 rows, in lane order rows 0,1,4,5 | 2,3,6,7.
 * The row order is the same for every chunk, so the accumulators are put back in row
 * order once per call (VPERMQ swapping the middle 64-bit pairs), not per chunk.
 */
static inline __m256i chunk_of(__m256i a, __m256i b, int odd) {
    const __m256 fa = _mm256_castsi256_ps(a), fb = _mm256_castsi256_ps(b);
    return _mm256_castps_si256(odd ? _mm256_shuffle_ps(fa, fb, 0xDD) : _mm256_shuffle_ps(fa, fb, 0x88));
}

#define DEFINE_PANEL_PACKED(ROWS)                                                          \
    static void panel_packed_##ROWS(const float *const *tables, const uint64_t *p,         \
                                    int64_t q0, int64_t q1, float *acc_out) {              \
        __m256 acc[ROWS];                                                                  \
        for (int i = 0; i < ROWS; i++) acc[i] = _mm256_setzero_ps();                       \
        for (int64_t q = q0; q < q1; q++) {                                                \
            const __m256i a = _mm256_load_si256((const __m256i *)(p + q * TAKANE_PANEL_ROWS)); \
            const __m256i b =                                                              \
                _mm256_load_si256((const __m256i *)(p + q * TAKANE_PANEL_ROWS + 4));       \
            for (int h = 0; h < 2; h++) {                                                  \
                const __m256i r = chunk_of(a, b, h);                                       \
                __m256i idx[GROUPS];                                                       \
                idx[0] = r;                                                                \
                idx[1] = _mm256_srli_epi32(r, 3);                                          \
                idx[2] = _mm256_srli_epi32(r, 6);                                          \
                idx[3] = _mm256_srli_epi32(r, 9);                                          \
                idx[4] = _mm256_srli_epi32(r, 12);                                         \
                idx[5] = _mm256_srli_epi32(r, 15);                                         \
                idx[6] = _mm256_srli_epi32(r, 18);                                         \
                idx[7] = _mm256_srli_epi32(r, 21);                                         \
                idx[8] = _mm256_srli_epi32(r, 24);                                         \
                idx[9] = _mm256_srli_epi32(r, 27);                                         \
                idx[10] = _mm256_srli_epi32(r, 30);                                        \
                for (int i = 0; i < ROWS; i++)                                             \
                    acc[i] = _mm256_add_ps(                                                \
                        acc[i], chunk_sum(tables[i] + (2 * q + h) * CHUNK_FLOATS, idx));   \
            }                                                                              \
        }                                                                                  \
        for (int i = 0; i < ROWS; i++) {                                                   \
            const __m256 rows = _mm256_castpd_ps(                                          \
                _mm256_permute4x64_pd(_mm256_castps_pd(acc[i]), 0xD8));                    \
            _mm256_storeu_ps(acc_out + i * NR,                                             \
                             _mm256_add_ps(_mm256_loadu_ps(acc_out + i * NR), rows));      \
        }                                                                                  \
    }
DEFINE_PANEL_PACKED(1)
DEFINE_PANEL_PACKED(2)
DEFINE_PANEL_PACKED(3)
DEFINE_PANEL_PACKED(4)

static void panel_packed(const float *const *tables, int mr, const uint64_t *panels,
                         int64_t pstride, int64_t q0, int64_t q1, float *acc) {
    (void)pstride; /* NR is one panel */
    switch (mr) {
    case 1: panel_packed_1(tables, panels, q0, q1, acc); break;
    case 2: panel_packed_2(tables, panels, q0, q1, acc); break;
    case 3: panel_packed_3(tables, panels, q0, q1, acc); break;
    default: panel_packed_4(tables, panels, q0, q1, acc); break;
    }
}

const takane_wfloat_ukernel takane_wfloat_ukernel_avx2 = {MR, NR, table_len, build_table,
                                                          panel, panel_packed, NULL, NULL};
