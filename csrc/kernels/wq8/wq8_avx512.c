/*
 * wq8_avx512.c — W1A8 microkernels for x86-64 AVX-512: Q8_0 activations against packed ±1
 * weights, exact int8 block sums through in-register byte lookup tables (T-MAC's idea).
 *
 * ISA and flags: AVX-512 F+BW+VL+VPOPCNTDQ+VBMI+VNNI (the flags of every *_avx512.c file;
 *   the avx512 level requires VBMI and VNNI since this kernel).
 * Idea: split each activation q (int8) as q = 16 qh + ql with ql = q & 15 in [0, 15] and
 *   qh = q >> 4 (arithmetic) in [-8, 7]. For a nibble of 4 weight bits, the set-bit sums
 *   of ql (<= 60) and qh ([-32, 28]) fit a byte, so one VPERMT2B (a 128-byte table, 7-bit
 *   index) looks up 64 nibbles = 256 weight-activation products of one plane at once.
 * Layout (no re-tiling: the handle's panels): one aligned 64-byte load of word q of a panel
 *   holds 8 rows x 64 columns; its 32-bit lane 2r+h is block h (columns 32h..32h+31) of
 *   row r, byte i of that lane is columns 32h+8i..+7. The lookup index of a byte's low
 *   (high) nibble is nibble | i << 4 | h << 6, one VPTERNLOGD with a constant (after a
 *   VPSRLW for the high nibble); per word and activation row there are 4 tables (low/high
 *   nibble x ql/qh plane) of 128 bytes: entry [h][i][e] = sum over bits b set in e of the
 *   plane at column 32h + 8i (+4 for the high nibble) + b.
 * Sums: per byte, Pl = lo_ql + hi_ql <= 120 (u8) and Ph = lo_qh + hi_qh in [-64, 56] (s8);
 *   then VPDPBUSD twice folds the 4 bytes of a lane into the exact block sum
 *   S = 2 P - Q = nq + sum 2 Pl + sum 32 Ph (nq = -Q starts the accumulator), and
 *   VCVTDQ2PS + VFMADD231PS add d * S (with group scales fl(d * g) * S) into a float
 *   accumulator per (row, block parity); at the end the two parities of each row are added
 *   (VPERMPS). Rounding: fl(d * g), then one FMA per block, then one add.
 * Tile: MR <= 2 activation rows x NP <= 4 panels (32 weight rows). The M = 1 (decode)
 *   variant streams 4 panels side by side with software prefetch; the M = 2 variant
 *   computes each word's indices once for both rows.
 * Cost per word, 8 rows, one activation row: 4 VPERMT2B + 2 VPADDB + 2 VPDPBUSD + CVT +
 *   FMA (+ 3 index ops shared by the rows) for 512 products.
 * Float error: one FMA per block, then adds (the framework's bound, wq8.c).
 * Invariants: q holds kw*64 values (zero past k); panels are 64-byte aligned; panel rows
 *   past N are zero bits.
 */
#include "../isa_avx512.h"

#include <math.h>
#include <string.h>

#include "../kernel.h"

#define MR 2
#define NP 4
#define WORD_TABLE 512 /* bytes of table per word and activation row */
#define PREFETCH_WORDS 8 /* L1 prefetch distance within a panel (512 bytes) */

static int64_t table_len(int64_t kw) { return kw * WORD_TABLE; }

/* Tables of one activation row (see the header comment), built with masked VPERMB:
 * output byte 16 i + e of the (h, nibble-half) vector gathers column 32h + 8i + 4 half + b
 * of the plane for every b set in e. */
static void build_table(const int8_t *q, int64_t kw, void *table) {
    uint8_t *t = (uint8_t *)table;
    /* base[b] byte j = 8 * (j / 16) + b; masks: bit j set iff bit b of (j % 16) is */
    __m512i base[4];
    for (int b = 0; b < 4; b++) {
        uint8_t v[64];
        for (int j = 0; j < 64; j++) v[j] = (uint8_t)(8 * (j / 16) + b);
        base[b] = _mm512_loadu_si512(v);
    }
    const __mmask64 bm[4] = {0xAAAAAAAAAAAAAAAAull, 0xCCCCCCCCCCCCCCCCull,
                             0xF0F0F0F0F0F0F0F0ull, 0xFF00FF00FF00FF00ull};
    const __m512i low4 = _mm512_set1_epi8(15), eight = _mm512_set1_epi8(8);
    for (int64_t w = 0; w < kw; w++) {
        const __m512i x = _mm512_loadu_si512((const void *)(q + w * 64));
        const __m512i ql = _mm512_and_si512(x, low4);
        /* qh = sign-extended high nibble: ((x >> 4) & 15) ^ 8) - 8 */
        const __m512i hn = _mm512_and_si512(_mm512_srli_epi16(x, 4), low4);
        const __m512i qh = _mm512_sub_epi8(_mm512_xor_si512(hn, eight), eight);
        uint8_t *tw = t + w * WORD_TABLE;
        for (int half = 0; half < 2; half++)
            for (int plane = 0; plane < 2; plane++) {
                const __m512i src = plane ? qh : ql;
                for (int h = 0; h < 2; h++) {
                    const __m512i off = _mm512_set1_epi8((char)(32 * h + 4 * half));
                    __m512i acc = _mm512_setzero_si512();
                    for (int b = 0; b < 4; b++)
                        acc = _mm512_add_epi8(acc, _mm512_maskz_permutexvar_epi8(
                                                       bm[b], _mm512_add_epi8(base[b], off), src));
                    /* table (half, plane) = 128 bytes: h = 0 then h = 1 */
                    _mm512_storeu_si512((void *)(tw + (half * 2 + plane) * 128 + h * 64), acc);
                }
            }
    }
}

/* The Q8_0 quantizer (internal.h), 32 columns per step: the same float32 operations as
 * the portable one — product with in_scale, |x|, max, amax / 127, 1 / d, x * id, then
 * round half away from zero as truncate-and-compare on the exact remainder. Built with
 * -ffp-contract=off, so x * id - trunc(x * id) is never fused. */
static takane_status quantize_row(const float *x, const float *in_scale, int64_t k, int64_t kw,
                                  int8_t *q, float *d, int32_t *nq) {
    const __m512 half = _mm512_set1_ps(0.5f), mhalf = _mm512_set1_ps(-0.5f);
    const __m512 fmax = _mm512_set1_ps(3.4028234663852886e38f);
    const __m512i one = _mm512_set1_epi32(1);
    const int64_t nb = 2 * kw;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t c0 = b * 32;
        const int64_t len = c0 >= k ? 0 : (k - c0 < 32 ? k - c0 : 32);
        const __mmask16 m0 = (__mmask16)(len >= 16 ? 0xFFFF : (1u << len) - 1);
        const __mmask16 m1 = (__mmask16)(len >= 32 ? 0xFFFF : len <= 16 ? 0 : (1u << (len - 16)) - 1);
        __m512 v0 = _mm512_maskz_loadu_ps(m0, x + c0), v1 = _mm512_maskz_loadu_ps(m1, x + c0 + 16);
        if (in_scale) {
            v0 = _mm512_mul_ps(v0, _mm512_maskz_loadu_ps(m0, in_scale + c0));
            v1 = _mm512_mul_ps(v1, _mm512_maskz_loadu_ps(m1, in_scale + c0 + 16));
        }
        const __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
        /* NaN or inf: not (|v| <= FLT_MAX) */
        if (_mm512_cmp_ps_mask(a0, fmax, _CMP_NLE_UQ) | _mm512_cmp_ps_mask(a1, fmax, _CMP_NLE_UQ)) {
            const __mmask16 n0 = _mm512_cmp_ps_mask(v0, v0, _CMP_UNORD_Q);
            const __mmask16 n1 = _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q);
            return (n0 | n1) ? TAKANE_ERR_NAN : TAKANE_ERR_NOT_FINITE;
        }
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
        const float dd = amax / 127.0f;
        d[b] = takane_round_fp16(dd);
        if (d[b] == INFINITY) return TAKANE_ERR_NOT_FINITE; /* the scale overflows fp16 */
        /* a scale that rounds to fp16 zero: the block contributes 0, q = 0 (see wq8.c) */
        const __m512 id = _mm512_set1_ps(d[b] != 0.0f ? 1.0f / dd : 0.0f);
        __m512i r[2];
        for (int h = 0; h < 2; h++) {
            const __m512 v = _mm512_mul_ps(h ? v1 : v0, id);
            /* truncate (|v| <= 127.00003: exact through int32 and back) */
            __m512i ti = _mm512_cvttps_epi32(v);
            const __m512 f = _mm512_sub_ps(v, _mm512_cvtepi32_ps(ti));
            ti = _mm512_mask_add_epi32(ti, _mm512_cmp_ps_mask(f, half, _CMP_GE_OQ), ti, one);
            ti = _mm512_mask_sub_epi32(ti, _mm512_cmp_ps_mask(f, mhalf, _CMP_LE_OQ), ti, one);
            r[h] = ti;
        }
        _mm_storeu_si128((__m128i *)(q + c0), _mm512_cvtepi32_epi8(r[0]));
        _mm_storeu_si128((__m128i *)(q + c0 + 16), _mm512_cvtepi32_epi8(r[1]));
        nq[b] = -_mm512_reduce_add_epi32(_mm512_add_epi32(r[0], r[1]));
    }
    return TAKANE_OK;
}

/* Group scales of rows r0..r0+7 (rows >= nrows repeat row nrows-1), groups grp..grp+7
 * (those >= ng read as 0), transposed into out[t * ostride + r] for t < 8. Returns a mask,
 * nonzero iff one of them is NaN or infinite. */
static inline __mmask8 load_scales8(const float *gs, int64_t ldg, int64_t r0, int64_t nrows,
                                    int64_t grp, int64_t ng, float *out, int64_t ostride) {
    const __mmask16 m = (__mmask16)(ng - grp >= 8 ? 0xFF : (1u << (ng - grp)) - 1);
    const __m512 fmax = _mm512_set1_ps(3.4028234663852886e38f);
    __m256i v[8];
    __mmask16 bad = 0;
    for (int r = 0; r < 8; r++) {
        const int64_t row = r0 + r < nrows ? r0 + r : nrows - 1;
        /* a 512-bit masked load: the same lanes, and SIMDe has no 256-bit one */
        const __m512 g = _mm512_maskz_loadu_ps(m, gs + row * ldg + grp);
        bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(g), fmax, _CMP_NLE_UQ);
        v[r] = _mm256_castps_si256(_mm512_castps512_ps256(g));
    }
    takane_transpose8x32(v);
    for (int t = 0; t < 8; t++) _mm256_storeu_si256((__m256i *)(out + t * ostride), v[t]);
    return (__mmask8)bad;
}

/* ROWS activation rows x PANS panels over all words, groups of gw words. With group
 * scales, lanes 2r and 2r+1 of a group's scale vector hold row r's scale, folded into the
 * block scales: acc += fl(d * g) * S. PM: a handle's own panel-major scales
 * (takane_gs_panel_major), one load per panel and group as they are stored; else a
 * caller's row-major ones, transposed 8 groups at a time into gblk. Both layouts sum in
 * the same order, so a Q1_0 handle and a PackedWeights with the same weights give the
 * same bits. (Summing each group alone and folding it with one FMA per group, instead of
 * a multiply per word, measured no faster here: Zen 4, 1 thread, warm 4096 x 4096,
 * G = 128 — the transposes, not the multiplies, were the cost.) */
#define DEFINE_TILE(ROWS, PANS, PM)                                                         \
    static int tile_##ROWS##_##PANS##_##PM(const void *const *tables, const float *const *d, \
                                           const int32_t *const *nq, const uint64_t *pan,   \
                                           int64_t pstride, int64_t kw, int64_t gw,         \
                                           const takane_gscales *gs, int64_t nrows,         \
                                           float *out) {                                    \
        const uint64_t *next = pan + PANS * pstride;                                        \
        /* the scales' pointer and strides in locals (NULL: no groups) */                   \
        const float *const gsp = gs ? gs->p : NULL;                                         \
        const int64_t gps = gs ? gs->ps : 0, grs = gs ? gs->rs : 0;                         \
        /* the next run's group scales (contiguous in either layout), one line per word     \
         * into L2 */                                                                       \
        const char *gnext = gsp ? (const char *)(gsp + PANS * gps) : NULL;                  \
        const int64_t gbytes = PANS * gps * (int64_t)sizeof(float);                         \
        uint8_t pv[64];                                                                     \
        for (int j = 0; j < 64; j++) pv[j] = (uint8_t)((((j >> 2) & 1) << 6) | ((j & 3) << 4)); \
        const __m512i pos = _mm512_loadu_si512(pv);                                         \
        const __m512i low4 = _mm512_set1_epi8(15);                                          \
        const __m512i two = _mm512_set1_epi8(2), c32 = _mm512_set1_epi8(32);                \
        /* lane 2r+h of a group's scale vector = row r's scale */                           \
        const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7); \
        const __m512 fmax = _mm512_set1_ps(3.4028234663852886e38f);                         \
        __m512 acc[ROWS][PANS];                                                             \
        for (int i = 0; i < ROWS; i++)                                                      \
            for (int p = 0; p < PANS; p++) acc[i][p] = _mm512_setzero_ps();                 \
        /* row-major: the scales of 8 groups at a time, transposed: gblk[group % 8][p][row] */ \
        float gblk[8][PANS][8];                                                             \
        __mmask16 bad = 0;                                                                  \
        __m512 gz[PANS]; /* the current group's scales */                                   \
        for (int p = 0; p < PANS; p++) gz[p] = _mm512_set1_ps(1.0f);                        \
        /* one loop over all words, a group's scales loaded when its first word comes (a    \
         * loop per group — 2 words for G = 128 — measured ~4% slower in decode) */         \
        for (int64_t q = 0, grp = 0, gleft = 0; q < kw; q++, gleft--) {                     \
            if (gsp && gleft == 0) {                                                        \
                if (!PM && grp % 8 == 0)                                                    \
                    for (int p = 0; p < PANS; p++)                                          \
                        bad |= load_scales8(gsp, grs, p * 8, nrows, grp, (kw + gw - 1) / gw, \
                                            &gblk[0][p][0], PANS * 8);                      \
                for (int p = 0; p < PANS; p++) {                                            \
                    /* panel-major: rows past N hold 0, every lane may be read */           \
                    gz[p] = _mm512_permutexvar_ps(dup, _mm512_maskz_loadu_ps(               \
                        0xFF, PM ? gsp + p * gps + grp * TAKANE_PANEL_ROWS                  \
                                 : &gblk[grp % 8][p][0]));                                  \
                    if (PM) bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(gz[p]), fmax, _CMP_NLE_UQ); \
                }                                                                           \
                grp++, gleft = gw;                                                          \
            }                                                                               \
            if (gnext && q * 64 < gbytes) _mm_prefetch(gnext + q * 64, _MM_HINT_T1);        \
            __m512i il[PANS], ih[PANS];                                                     \
            for (int p = 0; p < PANS; p++) {                                                \
                const uint64_t *wp = pan + p * pstride + q * TAKANE_PANEL_ROWS;             \
                _mm_prefetch((const char *)(wp + PREFETCH_WORDS * TAKANE_PANEL_ROWS),       \
                             _MM_HINT_T0);                                                  \
                /* the next run (contiguous after this one) into L2, at the rate this       \
                 * run is consumed: one run ahead, 64 bytes per panel and word */           \
                _mm_prefetch((const char *)(next + (q * PANS + p) * TAKANE_PANEL_ROWS),     \
                             _MM_HINT_T1);                                                  \
                const __m512i w = _mm512_load_si512((const void *)wp);                      \
                /* (w & 15) | pos */                                                        \
                il[p] = _mm512_ternarylogic_epi32(w, low4, pos, 0xEA);                      \
                ih[p] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 4), low4, pos, 0xEA); \
            }                                                                               \
            for (int i = 0; i < ROWS; i++) {                                                \
                const uint8_t *t = (const uint8_t *)tables[i] + q * WORD_TABLE;             \
                const __m512i lla = _mm512_load_si512((const void *)t);                     \
                const __m512i llb = _mm512_load_si512((const void *)(t + 64));              \
                const __m512i lha = _mm512_load_si512((const void *)(t + 128));             \
                const __m512i lhb = _mm512_load_si512((const void *)(t + 192));             \
                const __m512i hla = _mm512_load_si512((const void *)(t + 256));             \
                const __m512i hlb = _mm512_load_si512((const void *)(t + 320));             \
                const __m512i hha = _mm512_load_si512((const void *)(t + 384));             \
                const __m512i hhb = _mm512_load_si512((const void *)(t + 448));             \
                int64_t nq2, d2;                                                            \
                memcpy(&nq2, nq[i] + 2 * q, 8);                                             \
                memcpy(&d2, d[i] + 2 * q, 8);                                               \
                const __m512i nqv = _mm512_set1_epi64(nq2);                                 \
                const __m512 dv = _mm512_castsi512_ps(_mm512_set1_epi64(d2));               \
                for (int p = 0; p < PANS; p++) {                                            \
                    const __m512i pl =                                                      \
                        _mm512_add_epi8(_mm512_permutex2var_epi8(lla, il[p], llb),          \
                                        _mm512_permutex2var_epi8(hla, ih[p], hlb));         \
                    const __m512i ph =                                                      \
                        _mm512_add_epi8(_mm512_permutex2var_epi8(lha, il[p], lhb),          \
                                        _mm512_permutex2var_epi8(hha, ih[p], hhb));         \
                    __m512i s = _mm512_dpbusd_epi32(nqv, pl, two);                          \
                    s = _mm512_dpbusd_epi32(s, c32, ph);                                    \
                    const __m512 dg = gsp ? _mm512_mul_ps(dv, gz[p]) : dv;                  \
                    acc[i][p] = _mm512_fmadd_ps(dg, _mm512_cvtepi32_ps(s), acc[i][p]);      \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        /* lanes 2r and 2r+1 (the two block parities) of row r */                           \
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8,    \
                                               10, 12, 14);                                 \
        const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));                   \
        for (int i = 0; i < ROWS; i++)                                                      \
            for (int p = 0; p < PANS; p++) {                                                \
                const __m512 sum = _mm512_add_ps(_mm512_permutexvar_ps(even, acc[i][p]),    \
                                                 _mm512_permutexvar_ps(odd, acc[i][p]));    \
                _mm256_storeu_ps(out + (i * NP + p) * TAKANE_PANEL_ROWS,                    \
                                 _mm512_castps512_ps256(sum));                              \
            }                                                                               \
        return bad != 0;                                                                    \
    }
DEFINE_TILE(1, 1, 0)
DEFINE_TILE(1, 2, 0)
DEFINE_TILE(1, 3, 0)
DEFINE_TILE(1, 4, 0)
DEFINE_TILE(2, 1, 0)
DEFINE_TILE(2, 2, 0)
DEFINE_TILE(2, 3, 0)
DEFINE_TILE(2, 4, 0)
DEFINE_TILE(1, 1, 1)
DEFINE_TILE(1, 2, 1)
DEFINE_TILE(1, 3, 1)
DEFINE_TILE(1, 4, 1)
DEFINE_TILE(2, 1, 1)
DEFINE_TILE(2, 2, 1)
DEFINE_TILE(2, 3, 1)
DEFINE_TILE(2, 4, 1)

static int panels(const void *const *tables, const float *const *d, const int32_t *const *nq,
                  int mr, const uint64_t *pan, int64_t pstride, int np, int64_t kw, int64_t gw,
                  const takane_gscales *gs, int64_t nrows, float *out) {
    typedef int (*tile_fn)(const void *const *, const float *const *, const int32_t *const *,
                           const uint64_t *, int64_t, int64_t, int64_t,
                           const takane_gscales *, int64_t, float *);
    static const tile_fn tiles[2][MR][NP] = {
        {{tile_1_1_0, tile_1_2_0, tile_1_3_0, tile_1_4_0},
         {tile_2_1_0, tile_2_2_0, tile_2_3_0, tile_2_4_0}},
        {{tile_1_1_1, tile_1_2_1, tile_1_3_1, tile_1_4_1},
         {tile_2_1_1, tile_2_2_1, tile_2_3_1, tile_2_4_1}}};
    const int pm = gs && takane_gs_panel_major(gs);
    return tiles[pm][mr - 1][np - 1](tables, d, nq, pan, pstride, kw, gw, gs, nrows, out);
}

/* wq8_gemm_avx512.c: the prefill GEMM and the int8 peak probe */
extern const takane_q8_gemm_ukernel takane_q8_gemm_ukernel_avx512;
uint64_t takane_q8_probe_int8_avx512(uint64_t iters, int32_t *sink);

const takane_q8_ukernel takane_q8_ukernel_avx512 = {MR,
                                                    NP,
                                                    quantize_row,
                                                    table_len,
                                                    build_table,
                                                    panels,
                                                    takane_q8_probe_int8_avx512,
                                                    &takane_q8_gemm_ukernel_avx512};
