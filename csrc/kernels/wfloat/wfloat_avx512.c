/*
 * wfloat_avx512.c — W1A-float microkernels for x86-64 AVX-512: sums of real activations
 * signed by packed ±1 weights, 16 weight rows at a time, through in-register tables.
 *
 * ISA and flags: AVX-512 F+BW+VL+VPOPCNTDQ (the flags of every *_avx512.c file).
 * Idea: the AVX2 kernel's lookup table, widened. The 16 lanes of a zmm register are 16
 *   weight rows; VPERMPS zmm (_mm512_permutexvar_ps) looks up a 16-float table with bits
 *   [3:0] of each lane, so a group is 4 columns and a 32-column chunk is exactly 8 groups:
 *   the index for group j is the rows' 32-bit chunk shifted right by 4j (higher bits are
 *   ignored by the instruction). Each table holds the 16 signed sums
 *   (s0 x0 + s1 x1) + (s2 x2 + s3 x3) of its group (s_b from bit b of the entry index).
 * Tile: MR <= 4 activation rows x NR=16 weight rows. Per chunk: 7 index ops (VPMADDWD,
 *   VPMULHUW: nibble_indices) shared by the MR rows, then per row 8 VPERMPS (table from
 *   memory) + 8 VADDPS as a tree: 64 row-weights
 *   per VPERMPS, against 24 for AVX2's 8-entry tables, and half the table bytes per
 *   column. On canonical rows, lane r's chunks come from two 8x8 32-bit transposes
 *   (rows 0-7, rows 8-15) joined with VINSERTI64X4; on prepacked panels, from two
 *   VPERMT2D per word (panel_packed, below).
 * Choice (measured on a Zen 4 with AVX-512, 1 thread, (1,4096,4096), min of 15 runs,
 *   alternating processes): this kernel 211-220 us on the prepacked path. A variant
 *   with 5-column groups through 32-entry VPERMT2PS tables (13 lookups per 64 columns
 *   instead of 16) was slower, 258-304 us: its second table load per lookup and the
 *   larger tables cost more than the saved lookups. Microbenchmarks here: VPERMPS zmm
 *   throughput is about half of VPADDD zmm, and a VPSRLD + VPERMPS + VADDPS triple costs
 *   the same as VPERMPS alone, so the kernel is VPERMPS-bound (~70% of that bound).
 * Session 7 (Zen 4, AVX-512, 1 thread; microbenchmarks of 8 independent chains, CPU time,
 *   load average 12-15 on 2 vCPUs): 8 VPERMPS+VADDPS 8 cycles; with 8 VPSRLD 16 cycles (the
 *   same pipe), with 8 VPMULHUW still 8; 8 VPERMPS with a memory table + VADDPS 11.5 cycles,
 *   8 loads + VADDPS 9. Hence nibble indices without VPSRLD, and for decode with group
 *   scales (the LLM case) gemv_groups_pair: two tiles per table load. Warm GEMV 4096x4096
 *   G = 128, Q1_0 handle: 201-204 -> 168-171 us; cold 128-layer stack: 302-307 -> 205-207
 *   us/layer (alternating processes, main against this kernel, load average 7-9).
 * Edges: the last 1..3 words of a row are read with a zero-masked VMOVDQU64 (no
 *   overread, zeros); activations are zero past k, so columns past k add ±0.
 * Float error: one float32 summation tree per output over the k signed activations, so
 *   the any-order bound of takane.h applies.
 * Invariants: xs holds ceil(k/64)*64 floats, zero past k; weight padding bits are zero.
 */
#include "../isa_avx512.h"

#include "../kernel.h"

#define MR 4
#define NR 16
#define GROUPS 8              /* lookups per 32-column chunk, 4 columns each */
#define CHUNK_FLOATS (GROUPS * 16)
/* gemv_groups_pair's software prefetches (session 8, the cold stack): the weights two
 * calls on into L2 (FAR_HINT: PREFETCHT1 fills L2 on Zen 4, not L1, so the far stream
 * neither evicts the 64 KiB table's lines from L1 nor holds L1 miss buffers for a DRAM
 * latency), and this call's own words NEAR_WORDS on from L2 into L1 (a backstop: T1
 * prefetches are reported to be dropped now and then on Zen 4). */
#define FAR_HINT _MM_HINT_T1
#define FAR_CALLS 2
#define NEAR_WORDS 8

static int64_t table_len(int64_t k) { return takane_words_for(k) * 2 * CHUNK_FLOATS; }

static inline __m512 flip_sign(__m512 v, __m512i mask) {
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), mask));
}

/* Table of one activation row: chunk c, group j, entry e at table[(c*GROUPS + j)*16 + e]. */
static void build_table(const float *xs, int64_t k, float *table) {
    const int s = (int)0x80000000; /* lane e flips column b's sign when bit b of e is 0 */
    const __m512i flip0 = _mm512_setr_epi32(s, 0, s, 0, s, 0, s, 0, s, 0, s, 0, s, 0, s, 0);
    const __m512i flip1 = _mm512_setr_epi32(s, s, 0, 0, s, s, 0, 0, s, s, 0, 0, s, s, 0, 0);
    const __m512i flip2 = _mm512_setr_epi32(s, s, s, s, 0, 0, 0, 0, s, s, s, s, 0, 0, 0, 0);
    const __m512i flip3 = _mm512_setr_epi32(s, s, s, s, s, s, s, s, 0, 0, 0, 0, 0, 0, 0, 0);
    const int64_t groups = takane_words_for(k) * 16;
    for (int64_t g = 0; g < groups; g++) {
        const float *x = xs + 4 * g;
        const __m512 a = flip_sign(_mm512_set1_ps(x[0]), flip0);
        const __m512 b = flip_sign(_mm512_set1_ps(x[1]), flip1);
        const __m512 c = flip_sign(_mm512_set1_ps(x[2]), flip2);
        const __m512 d = flip_sign(_mm512_set1_ps(x[3]), flip3);
        _mm512_storeu_ps(table + g * 16, _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
    }
}

/* Chunks q in [0, 8) of the 4-word block at word w0 for 16 rows: lane r of out[q] holds
 * bits 32q..32q+31 of row r (words past kw read as 0). */
static inline void load_block(const uint64_t *const *w, int64_t w0, int64_t kw, __m512i out[8]) {
    __m256i lo[8], hi[8];
    if (w0 + 4 <= kw) {
        for (int j = 0; j < 8; j++) {
            lo[j] = _mm256_loadu_si256((const __m256i *)(w[j] + w0));
            hi[j] = _mm256_loadu_si256((const __m256i *)(w[8 + j] + w0));
        }
    } else {
        /* zero-masked 512-bit loads of the 1..3 remaining words (fault-suppressed, and
         * in the SIMDe build the shim reads only the selected lanes) */
        const __mmask8 m = (__mmask8)((1u << (kw - w0)) - 1);
        for (int j = 0; j < 8; j++) {
            lo[j] = _mm512_castsi512_si256(_mm512_maskz_loadu_epi64(m, w[j] + w0));
            hi[j] = _mm512_castsi512_si256(_mm512_maskz_loadu_epi64(m, w[8 + j] + w0));
        }
    }
    takane_transpose8x32(lo);
    takane_transpose8x32(hi);
    for (int q = 0; q < 8; q++) out[q] = _mm512_inserti64x4(_mm512_castsi256_si512(lo[q]), hi[q], 1);
}

/* Word-wise right shift by s (1 <= s <= 12) off the shift pipe: VPMULHUW by 2^(16-s).
 * Unsigned on purpose: GCC 12 rewrote the signed VPMULHW by a power of two into VPSRAW
 * (1.25x slower GEMV, measured), and hiding the multiplier from it in an empty asm cost
 * as much. SIMDe 0.7 has no _mm512_mulhi_epu16: the emulated build shifts. */
static inline __m512i word_shift_right(__m512i v, int s) {
#ifdef TAKANE_AVX512_EMULATION
    return _mm512_srli_epi16(v, (unsigned)s);
#else
    return _mm512_mulhi_epu16(v, _mm512_set1_epi16((short)(1 << (16 - s))));
#endif
}

/* The 8 lookup indices of one 32-column chunk r (lane = weight row): bits [3:0] of lane r
 * of idx[j] are bits 4j..4j+3 of r (VPERMPS ignores the higher bits). Shifts are not used:
 * on Zen 4, VPSRLD zmm issues to the same pipe as VPERMPS zmm (8 VPERMPS + 8 VPSRLD take
 * 16 cycles, measured), so 7 shifts per 8 lookups nearly halved the lookup rate, while
 * VPMULHUW / VPMADDWD issue to another (8 VPERMPS+VADDPS alone and with 8 VPMULHUW: the
 * same 8 cycles, measured with independent chains, 1 thread). VPMULHUW by 2^(16-s) is a
 * right shift by s of each 16-bit word (nibbles 1-3 of the low word), VPMADDWD with word
 * factors (0, 1) brings the high word down (sign-extended: bits [15:0] unchanged). */
static inline void nibble_indices(__m512i r, __m512i idx[GROUPS]) {
#ifdef TAKANE_AVX512_EMULATION /* SIMDe 0.7's _mm512_madd_epi16 is a 4-argument macro */
    const __m512i h = _mm512_srli_epi32(r, 16); /* the same bits [15:0] */
#else
    const __m512i hi_word = _mm512_set1_epi32(1 << 16); /* words (lo, hi) = (0, 1) */
    const __m512i h = _mm512_madd_epi16(r, hi_word); /* low 16 bits: bits 16-31 of r */
#endif
    idx[0] = r;
    idx[1] = word_shift_right(r, 4);
    idx[2] = word_shift_right(r, 8);
    idx[3] = word_shift_right(r, 12);
    idx[4] = h;
    idx[5] = word_shift_right(h, 4);
    idx[6] = word_shift_right(h, 8);
    idx[7] = word_shift_right(h, 12);
}

#define LOOKUP(j) _mm512_permutexvar_ps(idx[j], _mm512_loadu_ps(t + 16 * (j)))

/* The 16 row sums of one chunk for one activation row's table t (chunk-relative). */
static inline __m512 chunk_sum(const float *t, const __m512i idx[GROUPS]) {
    const __m512 s0 = _mm512_add_ps(LOOKUP(0), LOOKUP(1));
    const __m512 s1 = _mm512_add_ps(LOOKUP(2), LOOKUP(3));
    const __m512 s2 = _mm512_add_ps(LOOKUP(4), LOOKUP(5));
    const __m512 s3 = _mm512_add_ps(LOOKUP(6), LOOKUP(7));
    return _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
}

#define DEFINE_PANEL(ROWS)                                                                 \
    static void panel_##ROWS(const float *const *tables, const uint64_t *const *w,         \
                             int64_t k, float *sums) {                                     \
        const int64_t kw = takane_words_for(k), chunks = 2 * kw;                           \
        __m512 acc[ROWS];                                                                  \
        for (int i = 0; i < ROWS; i++) acc[i] = _mm512_setzero_ps();                       \
        for (int64_t w0 = 0; w0 < kw; w0 += 4) {                                           \
            __m512i r[8];                                                                  \
            load_block(w, w0, kw, r);                                                      \
            const int64_t c0 = 2 * w0;                                                     \
            const int nq = chunks - c0 < 8 ? (int)(chunks - c0) : 8;                       \
            for (int q = 0; q < nq; q++) {                                                 \
                __m512i idx[GROUPS];                                                       \
                nibble_indices(r[q], idx);                                                 \
                for (int i = 0; i < ROWS; i++)                                             \
                    acc[i] = _mm512_add_ps(                                                \
                        acc[i], chunk_sum(tables[i] + (c0 + q) * CHUNK_FLOATS, idx));      \
            }                                                                              \
        }                                                                                  \
        for (int i = 0; i < ROWS; i++) _mm512_storeu_ps(sums + i * NR, acc[i]);            \
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
 * Prepacked panels: one aligned 512-bit load of word q of an 8-row panel holds, in its
 * 32-bit lanes 2r and 2r+1, chunks 2q and 2q+1 of row r. Two VPERMT2D over the loads of
 * the two panels gather chunk 2q (and 2q+1) of all 16 rows, lane j = row j: 1 shuffle
 * per chunk instead of the transpose's ~9 on canonical rows, and no edge masking (a
 * panel holds all kw words of its rows, rows past N are zero).
 */
#define DEFINE_PANEL_PACKED(ROWS)                                                          \
    static void panel_packed_##ROWS(const float *const *tables, const uint64_t *p0,        \
                                    const uint64_t *p1, int64_t pstride, int64_t q0,       \
                                    int64_t q1, float *acc_out) {                          \
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22,  \
                                               24, 26, 28, 30);                            \
        const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));                  \
        __m512 acc[ROWS];                                                                  \
        for (int i = 0; i < ROWS; i++) acc[i] = _mm512_setzero_ps();                       \
        for (int64_t q = q0; q < q1; q++) {                                                \
            /* the same words of the next panel pair: the framework's next call (GEMV    \
             * from DRAM: one call ahead hides the latency the strided order exposes) */  \
            _mm_prefetch((const char *)(p0 + 2 * pstride + q * TAKANE_PANEL_ROWS), _MM_HINT_T0); \
            _mm_prefetch((const char *)(p1 + 2 * pstride + q * TAKANE_PANEL_ROWS), _MM_HINT_T0); \
            const __m512i a = _mm512_load_si512((const void *)(p0 + q * TAKANE_PANEL_ROWS)); \
            const __m512i b = _mm512_load_si512((const void *)(p1 + q * TAKANE_PANEL_ROWS)); \
            for (int h = 0; h < 2; h++) {                                                  \
                const __m512i r = _mm512_permutex2var_epi32(a, h ? odd : even, b);         \
                __m512i idx[GROUPS];                                                       \
                nibble_indices(r, idx);                                                    \
                for (int i = 0; i < ROWS; i++)                                             \
                    acc[i] = _mm512_add_ps(                                                \
                        acc[i], chunk_sum(tables[i] + (2 * q + h) * CHUNK_FLOATS, idx));   \
            }                                                                              \
        }                                                                                  \
        for (int i = 0; i < ROWS; i++)                                                     \
            _mm512_storeu_ps(acc_out + i * NR,                                             \
                             _mm512_add_ps(_mm512_loadu_ps(acc_out + i * NR), acc[i]));    \
    }
DEFINE_PANEL_PACKED(1)
DEFINE_PANEL_PACKED(2)
DEFINE_PANEL_PACKED(3)
DEFINE_PANEL_PACKED(4)

/* Row-major group scales g0..g0+7 (those >= ldg read as 0) of 16 rows (rows >= nrows
 * repeat row nrows-1; ldg = groups per row = the row stride) into gv[t], lane r = row r:
 * two 8x8 transposes. */
static inline void load_scales16(const float *gs, int64_t ldg, int64_t nrows, int64_t g0,
                                 __m512 gv[8]) {
    const __mmask8 m = (__mmask8)(ldg - g0 >= 8 ? 0xFF : (1u << (ldg - g0)) - 1);
    __m256i lo[8], hi[8];
    for (int r = 0; r < 8; r++) {
        const int64_t r0 = r < nrows ? r : nrows - 1, r1 = r + 8 < nrows ? r + 8 : nrows - 1;
        lo[r] = _mm256_castps_si256(
            _mm512_castps512_ps256(_mm512_maskz_loadu_ps((__mmask16)m, gs + r0 * ldg + g0)));
        hi[r] = _mm256_castps_si256(
            _mm512_castps512_ps256(_mm512_maskz_loadu_ps((__mmask16)m, gs + r1 * ldg + g0)));
    }
    takane_transpose8x32(lo);
    takane_transpose8x32(hi);
    for (int t = 0; t < 8; t++)
        gv[t] = _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(lo[t]), hi[t], 1));
}

/* The scales of group grp of one 16-row tile, lane r = row r (panel-major: one 256-bit
 * load per panel; row-major: transposed 8 groups at a time into gv, refreshed when `fresh`
 * or at a multiple of 8). Rows past N of a panel-major array hold 0; a missing second panel
 * (nrows <= 8) is not read. */
static inline __m512 tile_scales(const takane_gscales *gs, int pm, int64_t nrows, int64_t grp,
                                 int fresh, __m512 gv[8]) {
    if (pm) {
        const __m256 lo = _mm256_loadu_ps(gs->p + grp * TAKANE_PANEL_ROWS);
        const __m256 hi = nrows > TAKANE_PANEL_ROWS
                              ? _mm256_loadu_ps(gs->p + gs->ps + grp * TAKANE_PANEL_ROWS)
                              : _mm256_setzero_ps();
        return _mm512_castsi512_ps(_mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_castps_si256(lo)), _mm256_castps_si256(hi), 1));
    }
    if (fresh || grp % 8 == 0) load_scales16(gs->p, gs->rs, nrows, grp - grp % 8, gv);
    return gv[grp % 8];
}

/* panel_packed with group scales: each group's 16 row sums are formed alone, then
 * multiplied by the 16 rows' scales (loaded and transposed 8 groups at a time) and added
 * with one FMA. */
#define DEFINE_PANEL_GROUPS(ROWS)                                                          \
    static int panel_groups_##ROWS(const float *const *tables, const uint64_t *p0,         \
                                   const uint64_t *p1, int64_t pstride, int64_t q0,        \
                                   int64_t q1, int64_t gw, const takane_gscales *gs,       \
                                   int64_t nrows, float *acc_out) {                        \
        /* a handle's own scales (panel-major): one 256-bit load per panel and group; a   \
         * caller's row-major ones (row stride = groups per row): transposed 8 at a time */ \
        const int pm = takane_gs_panel_major(gs);                                          \
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22,  \
                                               24, 26, 28, 30);                            \
        const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));                  \
        __m512 gv[8]; /* scales of 8 consecutive groups, lane r = row r */                \
        const __m512 fmax = _mm512_set1_ps(3.4028234663852886e38f);                        \
        __mmask16 bad = 0;                                                                 \
        __m512 total[ROWS];                                                                \
        for (int i = 0; i < ROWS; i++) total[i] = _mm512_loadu_ps(acc_out + i * NR);       \
        for (int64_t a = q0; a < q1; a += gw) {                                            \
            const int64_t b = a + gw < q1 ? a + gw : q1;                                   \
            __m512 acc[ROWS];                                                              \
            for (int i = 0; i < ROWS; i++) acc[i] = _mm512_setzero_ps();                   \
            for (int64_t q = a; q < b; q++) {                                              \
                _mm_prefetch((const char *)(p0 + 2 * pstride + q * TAKANE_PANEL_ROWS), _MM_HINT_T0); \
                _mm_prefetch((const char *)(p1 + 2 * pstride + q * TAKANE_PANEL_ROWS), _MM_HINT_T0); \
                const __m512i wa = _mm512_load_si512((const void *)(p0 + q * TAKANE_PANEL_ROWS)); \
                const __m512i wb = _mm512_load_si512((const void *)(p1 + q * TAKANE_PANEL_ROWS)); \
                for (int h = 0; h < 2; h++) {                                              \
                    const __m512i r = _mm512_permutex2var_epi32(wa, h ? odd : even, wb);   \
                    __m512i idx[GROUPS];                                                   \
                    nibble_indices(r, idx);                                                \
                    for (int i = 0; i < ROWS; i++)                                         \
                        acc[i] = _mm512_add_ps(                                            \
                            acc[i], chunk_sum(tables[i] + (2 * q + h) * CHUNK_FLOATS, idx)); \
                }                                                                          \
            }                                                                              \
            const int64_t grp = a / gw;                                                    \
            const __m512 g = tile_scales(gs, pm, nrows, grp, a == q0, gv);                \
            bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(g), fmax, _CMP_NLE_UQ);                \
            for (int i = 0; i < ROWS; i++) total[i] = _mm512_fmadd_ps(acc[i], g, total[i]); \
        }                                                                                  \
        for (int i = 0; i < ROWS; i++) _mm512_storeu_ps(acc_out + i * NR, total[i]);       \
        return bad != 0;                                                                   \
    }
DEFINE_PANEL_GROUPS(1)
DEFINE_PANEL_GROUPS(2)
DEFINE_PANEL_GROUPS(3)
DEFINE_PANEL_GROUPS(4)

/* chunk_sum with the chunk's 8 group tables already in registers (the same tree, so the
 * same result). */
static inline __m512 chunk_sum_reg(const __m512 t[GROUPS], const __m512i idx[GROUPS]) {
#define LOOKUP_REG(j) _mm512_permutexvar_ps(idx[j], t[j])
    const __m512 s0 = _mm512_add_ps(LOOKUP_REG(0), LOOKUP_REG(1));
    const __m512 s1 = _mm512_add_ps(LOOKUP_REG(2), LOOKUP_REG(3));
    const __m512 s2 = _mm512_add_ps(LOOKUP_REG(4), LOOKUP_REG(5));
    const __m512 s3 = _mm512_add_ps(LOOKUP_REG(6), LOOKUP_REG(7));
#undef LOOKUP_REG
    return _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
}

/*
 * Decode (one activation row) with group scales over two 16-row tiles at once: each of a
 * chunk's 8 group tables is loaded once and looked up by both tiles' indices. Why: the
 * single-tile kernel issues one table load per VPERMPS (16 per word), and on a Zen 4 a
 * VPERMPS with a memory operand costs more than either a load or a VPERMPS alone (8 of
 * them with VADDPS: 11.5 cycles against 8 from a register and 9 for load + VADDPS,
 * measured, independent chains, 1 thread); sharing the load halves the table traffic per
 * weight (the tables are 16 bytes per column, 64 KiB for K = 4096, so they stream from L2
 * once per call per tile). Each tile's sums are formed exactly as panel_groups_1 forms
 * them (same tree, same order, one FMA per group), so the result is bit-identical.
 * Tile t: panels pan[t] and pan[t] + pstr[t], scales gs[t], nrows[t] rows, acc_out[t].
 */
static int gemv_groups_pair(const float *table, const uint64_t *const pan[2],
                            const int64_t pstr[2], int64_t q0, int64_t q1, int64_t gw,
                            const takane_gscales gs[2], const int64_t nrows[2],
                            float *const acc_out[2]) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512 fmax = _mm512_set1_ps(3.4028234663852886e38f);
    const int pm0 = takane_gs_panel_major(&gs[0]), pm1 = takane_gs_panel_major(&gs[1]);
    const uint64_t *a0 = pan[0], *b0 = pan[0] + pstr[0], *a1 = pan[1], *b1 = pan[1] + pstr[1];
    /* the first panel FAR_CALLS calls on (a call reads 4 panels; prefetch never faults
     * past the end) */
    const int64_t ahead = FAR_CALLS * 4 * pstr[0];
    __m512 gv0[8], gv1[8];
    __mmask16 bad = 0;
    __m512 total0 = _mm512_loadu_ps(acc_out[0]), total1 = _mm512_loadu_ps(acc_out[1]);
    for (int64_t a = q0; a < q1; a += gw) {
        const int64_t b = a + gw < q1 ? a + gw : q1;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (int64_t q = a; q < b; q++) {
            const int64_t o = q * TAKANE_PANEL_ROWS;
            _mm_prefetch((const char *)(a0 + ahead + o), FAR_HINT);
            _mm_prefetch((const char *)(a0 + ahead + pstr[0] + o), FAR_HINT);
            _mm_prefetch((const char *)(a0 + ahead + 2 * pstr[0] + o), FAR_HINT);
            _mm_prefetch((const char *)(a0 + ahead + 3 * pstr[0] + o), FAR_HINT);
            /* this call's own words NEAR_WORDS on, from L2 into L1 (past a panel's last
             * word: the next panel's first words, read soon after or never; no fault) */
            const int64_t on = o + NEAR_WORDS * TAKANE_PANEL_ROWS;
            _mm_prefetch((const char *)(a0 + on), _MM_HINT_T0);
            _mm_prefetch((const char *)(b0 + on), _MM_HINT_T0);
            _mm_prefetch((const char *)(a1 + on), _MM_HINT_T0);
            _mm_prefetch((const char *)(b1 + on), _MM_HINT_T0);
            const __m512i wa0 = _mm512_load_si512((const void *)(a0 + o));
            const __m512i wb0 = _mm512_load_si512((const void *)(b0 + o));
            const __m512i wa1 = _mm512_load_si512((const void *)(a1 + o));
            const __m512i wb1 = _mm512_load_si512((const void *)(b1 + o));
            for (int h = 0; h < 2; h++) {
                const float *tc = table + (2 * q + h) * CHUNK_FLOATS;
                __m512 t[GROUPS];
                for (int j = 0; j < GROUPS; j++) t[j] = _mm512_loadu_ps(tc + 16 * j);
                __m512i idx[GROUPS];
                nibble_indices(_mm512_permutex2var_epi32(wa0, h ? odd : even, wb0), idx);
                acc0 = _mm512_add_ps(acc0, chunk_sum_reg(t, idx));
                nibble_indices(_mm512_permutex2var_epi32(wa1, h ? odd : even, wb1), idx);
                acc1 = _mm512_add_ps(acc1, chunk_sum_reg(t, idx));
            }
        }
        const int64_t grp = a / gw;
        if (pm0) /* the next call's scales into L2 (4 panels on; panel-major: a 32-byte
                  * run per panel and group, 1 KiB apart, too short for the hardware
                  * prefetcher) */
            for (int u = 4; u < 8; u++)
                _mm_prefetch((const char *)(gs[0].p + u * gs[0].ps + grp * TAKANE_PANEL_ROWS),
                             FAR_HINT);
        const __m512 g0 = tile_scales(&gs[0], pm0, nrows[0], grp, a == q0, gv0);
        const __m512 g1 = tile_scales(&gs[1], pm1, nrows[1], grp, a == q0, gv1);
        bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(g0), fmax, _CMP_NLE_UQ);
        bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(g1), fmax, _CMP_NLE_UQ);
        total0 = _mm512_fmadd_ps(acc0, g0, total0);
        total1 = _mm512_fmadd_ps(acc1, g1, total1);
    }
    _mm512_storeu_ps(acc_out[0], total0);
    _mm512_storeu_ps(acc_out[1], total1);
    return bad != 0;
}

static int panel_packed_groups(const float *const *tables, int mr, const uint64_t *panels,
                               int64_t pstride, int64_t q0, int64_t q1, int64_t gw,
                               const takane_gscales *gs, int64_t nrows, float *acc) {
    const uint64_t *p1 = panels + pstride;
    switch (mr) {
    case 1: return panel_groups_1(tables, panels, p1, pstride, q0, q1, gw, gs, nrows, acc);
    case 2: return panel_groups_2(tables, panels, p1, pstride, q0, q1, gw, gs, nrows, acc);
    case 3: return panel_groups_3(tables, panels, p1, pstride, q0, q1, gw, gs, nrows, acc);
    default: return panel_groups_4(tables, panels, p1, pstride, q0, q1, gw, gs, nrows, acc);
    }
}

static void panel_packed(const float *const *tables, int mr, const uint64_t *panels,
                         int64_t pstride, int64_t q0, int64_t q1, float *acc) {
    const uint64_t *p1 = panels + pstride;
    switch (mr) {
    case 1: panel_packed_1(tables, panels, p1, pstride, q0, q1, acc); break;
    case 2: panel_packed_2(tables, panels, p1, pstride, q0, q1, acc); break;
    case 3: panel_packed_3(tables, panels, p1, pstride, q0, q1, acc); break;
    default: panel_packed_4(tables, panels, p1, pstride, q0, q1, acc); break;
    }
}

const takane_wfloat_ukernel takane_wfloat_ukernel_avx512 = {
    MR, NR, table_len, build_table, panel, panel_packed, panel_packed_groups,
    gemv_groups_pair};
