/*
 * kernel.h — the microkernel contract: what a per-ISA kernel file (csrc/kernels/<op>/
 * <op>_<isa>.c) may rely on and must provide. Kernel files include this header only
 * (plus their ISA's intrinsics header); the frameworks in csrc/src/ include it through
 * internal.h. Nothing here knows about threads, handles, validation or the C ABI's
 * entry points: a microkernel computes one register tile (or one row's table) and
 * nothing else (BLIS's split).
 */
#ifndef TAKANE_KERNEL_H
#define TAKANE_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#include "takane/takane.h"

/* Largest register tile any kernel set may declare (framework scratch is sized by it). */
#define TAKANE_MAX_MR 8
#define TAKANE_MAX_NR 8

/*
 * W1A1 microkernel: for i < mr, j < nr (the set's tile), computes
 *   pc[i * nr + j] = popcount(x[i][0..kw) XOR w[j][0..kw))
 * x[i] and w[j] are row pointers to kw packed words each (no alignment promised).
 * The framework passes exactly mr/nr row pointers; on an edge tile it repeats the
 * last valid row, so a kernel never sees a short tile. kw may be 0.
 */
typedef void (*takane_popcount_tile_fn)(const uint64_t *const *x, const uint64_t *const *w,
                                        int64_t kw, uint64_t *pc);

/*
 * Pack microkernel: one row of k floats -> ceil(k/64) canonical words at out
 * (padding bits 0). t points at one threshold (per_channel == 0) or k thresholds.
 * Returns nonzero iff some (x, t) pair is unordered (a NaN on either side).
 */
typedef int (*takane_pack_row_fn)(const float *x, int64_t k, const float *t, int per_channel,
                                  uint64_t *out);

/*
 * Panel layout (the kernels' private re-tiling of packed weights, built once per weight
 * matrix by takane_weights_create): rows are grouped in panels of TAKANE_PANEL_ROWS;
 * panel p holds word q of its row r at panel[q * TAKANE_PANEL_ROWS + r], so one 512-bit
 * (or two 256-bit) loads fetch word q of 8 rows, and an activation word broadcast
 * against it gives 8 outputs in 8 lanes — no horizontal reductions. Rows past N in the
 * last panel are zero (their results are computed and dropped).
 */
#define TAKANE_PANEL_ROWS 8
/*
 * Group scales as every kernel and framework reads them: the scale of row r (counted from
 * the first row a call covers, which is a multiple of TAKANE_PANEL_ROWS) and group g is
 *   p[(r / 8) * ps + (r % 8) * rs + g * cs]                              (takane_gs_at)
 * Two layouts exist: a caller's row-major array (ng per row, row stride ldg: ps = 8 ldg,
 * rs = ldg, cs = 1) and a handle's own, panel-major in the panels' lane order (for each
 * panel, group g's 8 rows contiguous: ps = 8 ng, rs = 1, cs = 8), which a kernel may load
 * as one vector per panel and group with no transposition (takane_gs_panel_major). Rows
 * past N of a panel-major array hold 0. A NULL takane_gscales pointer means no groups.
 */
typedef struct takane_gscales {
    const float *p;
    int64_t ps, rs, cs;
} takane_gscales;
static inline float takane_gs_at(const takane_gscales *g, int64_t r, int64_t grp) {
    return g->p[(r / TAKANE_PANEL_ROWS) * g->ps + (r % TAKANE_PANEL_ROWS) * g->rs + grp * g->cs];
}
/* The same scales seen from row r0 (a multiple of TAKANE_PANEL_ROWS) on. */
static inline takane_gscales takane_gs_from(const takane_gscales *g, int64_t r0) {
    takane_gscales s = *g;
    s.p += (r0 / TAKANE_PANEL_ROWS) * g->ps;
    return s;
}
static inline int takane_gs_panel_major(const takane_gscales *g) {
    return g->rs == 1 && g->cs == TAKANE_PANEL_ROWS;
}

/* Largest panel_np a kernel may declare (the framework's count buffer is sized by it). */
#define TAKANE_MAX_PANEL_NP 64

/*
 * W1A1 panel microkernel: for i < mr, j < np * TAKANE_PANEL_ROWS,
 *   pc[i * ldc + j] = popcount(x[i][0..kw) XOR row j of panels[0..np))
 * where panel p starts at panels + p * pstride (words). Requires 1 <= mr <= panel_mr and
 * 1 <= np <= panel_np[mr]; kw >= 1. Counts are <= 64 * kw, and kw * 64 <= 2^31 + 63.
 */
typedef void (*takane_panel_tile_fn)(const uint64_t *const *x, int mr, const uint64_t *panels,
                                     int64_t pstride, int np, int64_t kw, uint32_t *pc,
                                     int ldc);

/* One op's microkernel as a matmul file exports it: the tile shapes and the functions.
 * panel_tile may be NULL: the framework then uses popcount_tile on canonical rows. */
typedef struct takane_matmul_ukernel {
    int mr, nr; /* popcount_tile's register tile, each <= TAKANE_MAX_MR / _NR */
    takane_popcount_tile_fn popcount_tile;
    takane_panel_tile_fn panel_tile;
    int panel_mr;                       /* largest mr panel_tile takes (<= TAKANE_MAX_MR) */
    int panel_np[TAKANE_MAX_MR + 1];    /* largest np panel_tile takes for each mr */
    /* Peak probe (may be NULL): a register-resident XOR + popcount loop of `iters`
     * rounds with enough independent chains to saturate the popcount units, the
     * same instruction sequence the kernels use; returns the bits it XOR-popcounted.
     * The result is kept live through *sink so the loop cannot be removed. */
    uint64_t (*probe)(uint64_t iters, uint64_t *sink);
    /* Decode GEMV (may be NULL: the framework then uses panel_tile with mr = 1). One
     * activation row x against np >= 1 consecutive panels starting at `panels` (panel t at
     * panels + t * kw * TAKANE_PANEL_ROWS: one contiguous stream, read once, front to back):
     *   pc[t * TAKANE_PANEL_ROWS + r] = popcount(x[0..kw) XOR row r of panel t).
     * kw >= 1; 1 <= np <= TAKANE_MAX_PANEL_NP. */
    void (*gemv)(const uint64_t *x, const uint64_t *panels, int np, int64_t kw, uint32_t *pc);
    /* Small-batch decode GEMM (may be NULL, with gemv_m_max = 0: the framework then uses
     * panel_tile). mr activation rows x[0..mr) against np consecutive panels read as one
     * stream, front to back, every weight line loaded once for all mr rows:
     *   pc[i * ldc + t * TAKANE_PANEL_ROWS + r] = popcount(x[i][0..kw) XOR row r of panel t).
     * 2 <= mr <= gemv_m_max <= TAKANE_MAX_MR; kw >= 1; 1 <= np <= TAKANE_MAX_PANEL_NP. */
    void (*gemv_m)(const uint64_t *const *x, int mr, const uint64_t *panels, int np, int64_t kw,
                   uint32_t *pc, int ldc);
    int gemv_m_max;
} takane_matmul_ukernel;

/*
 * Epilogue of a fused panel tile (takane_linear_ukernel.panel_epi), columns counted from
 * the call's first column c (panel 0 of the call, c % 8 == 0):
 *   d_ij = base[i][j] - 2 * popcount(x[i] XOR row j)   (the dot product; base = k, or
 *          k minus a border pixel's padding correction: the caller folds it in)
 *   v_ij = ((float)d_ij * scale[j]) + bias[j]          (each step rounded to float32;
 *          scale / bias NULL drops the step)
 * then y[i][j] = v_ij (t == NULL), or bit j % 8 of byte yb[i][j / 8] = (v_ij >= t[j or 0])
 * (bytes of the call's panels, little-endian within the output word, so byte p holds
 * columns 8p..8p+7). np is even and every column is valid (the framework uses the fused
 * path only when its column count is a multiple of 16), so a kernel may work on pairs of
 * panels (16 columns) without masks.
 */
typedef struct takane_panel_epi {
    const int32_t *const *base; /* mr row pointers */
    const float *scale, *bias;  /* per column, or NULL */
    const float *t;             /* bits out: one threshold, or per column (t_per_col) */
    int t_per_col;
    float *const *y;            /* float out: mr row pointers (t == NULL) */
    uint8_t *const *yb;         /* bits out: mr row pointers to the call's first byte */
} takane_panel_epi;

/*
 * W1A1 layer microkernels (csrc/kernels/linear/linear_<isa>.c), used by linear.c.
 * Epilogue value of column j: v_j = ((float)d[j] * s[j]) * beta + b[j], each step rounded
 * to float32 (these files are built with -ffp-contract=off); s == NULL, beta == NULL or
 * b == NULL drops that step. Bit outputs write ceil(n/64) words with zero padding bits.
 */
typedef struct takane_linear_ukernel {
    /* As takane_pack_row_fn; if abs_sum != NULL, also *abs_sum = sum |x[c]| over the row,
     * accumulated in double in the same pass. Returns nonzero iff a NaN was seen. */
    int (*pack_row)(const float *x, int64_t k, const float *t, int per_channel, uint64_t *out,
                    double *abs_sum);
    /* y[j] = v_j for j < n. */
    void (*affine_row)(const int32_t *d, int64_t n, const float *s, const float *beta,
                       const float *b, float *y);
    /* bit j of out = (v_j >= t[j]) if t_per_col else (v_j >= t[0]). */
    void (*affine_bits_row)(const int32_t *d, int64_t n, const float *s, const float *beta,
                            const float *b, const float *t, int t_per_col, uint64_t *out);
    /* bit j of out = (d[j] > tint[j]) XOR bit j of flip (flip: ceil(n/64) words). */
    void (*int_bits_row)(const int32_t *d, int64_t n, const int32_t *tint, const uint64_t *flip,
                         uint64_t *out);
    /* May be NULL (the framework then runs the matmul set's panel_tile, converts the counts
     * to int32 dot products and calls the row epilogues above). The panel tile fused with
     * the layer epilogue (takane_panel_epi): for i < mr rows x[i] and the np * 8 rows of np
     * consecutive panels (panel p at panels + p * pstride), the counts never leave the
     * registers. For layers whose K is a few words (3x3 convolutions of 32-64 channels),
     * where storing, converting and re-reading the counts costs as much as the products.
     * Requires 1 <= mr <= panel_epi_mr, np >= 2 even, kw >= 1. */
    void (*panel_epi)(const uint64_t *const *x, int mr, const uint64_t *panels, int64_t pstride,
                      int np, int64_t kw, const takane_panel_epi *e);
    int panel_epi_mr;
} takane_linear_ukernel;

/* Largest W1A-float tile any kernel set may declare (framework scratch is sized by it). */
#define TAKANE_WFLOAT_MAX_MR 4
#define TAKANE_WFLOAT_MAX_NR 16

/*
 * W1A-float microkernels (csrc/kernels/wfloat/wfloat_<isa>.c), used by wfloat.c.
 * A kernel turns one activation row xs (in_scale already applied; ceil(k/64)*64 floats,
 * zero past k) into a kernel-specific table of table_len(k) floats, then a panel call
 * computes, for i < mr (1 <= mr <= the set's mr) and j < nr,
 *   sums[i * nr + j] = sum_c xs_i[c] * (bit c of w[j] ? +1 : -1)
 * in float32, any order (the documented error bound holds for every summation tree).
 * w holds exactly nr row pointers to ceil(k/64) canonical words each (the framework
 * repeats the last valid row on an edge panel); padding bits are zero.
 */
typedef struct takane_wfloat_ukernel {
    int mr, nr;
    int64_t (*table_len)(int64_t k);
    void (*build_table)(const float *xs, int64_t k, float *table);
    void (*panel)(const float *const *tables, int mr, const uint64_t *const *w, int64_t k,
                  float *sums);
    /* Prepacked variant (NULL if the set has none; the framework then copies rows out of
     * the panels for `panel`): the nr weight rows are those of nr / TAKANE_PANEL_ROWS
     * consecutive panels of a takane_weights handle, panel t at panels + t * pstride
     * words (pstride 0 repeats a panel: the framework's edge case), and only words
     * [q0, q1) of each row are used, against the matching part of each (whole-row) table.
     * Adds, for i < mr and j < nr, that part's sum to acc[i * nr + j] (one float32 add
     * per element per call). Requires nr % TAKANE_PANEL_ROWS == 0, 0 <= q0 < q1 <= kw. */
    void (*panel_packed)(const float *const *tables, int mr, const uint64_t *panels,
                         int64_t pstride, int64_t q0, int64_t q1, float *acc);
    /* panel_packed with group scales (NULL if the set has none: the framework then calls
     * panel_packed once per group): words [q0, q1) with q0 a multiple of gw cover whole
     * groups of gw words (the last may end at q1 = kw); for i < mr, j < nr,
     *   acc[i * nr + j] += sum_g takane_gs_at(gs, j, g) * (sum over group g's words)
     * (g the group index q / gw; one rounding per group product and add or FMA). Rows
     * j >= nrows must not read a row-major gs (a panel-major one holds 0 there and may be
     * read). Returns nonzero iff a scale read is NaN or infinite. */
    int (*panel_packed_groups)(const float *const *tables, int mr, const uint64_t *panels,
                               int64_t pstride, int64_t q0, int64_t q1, int64_t gw,
                               const takane_gscales *gs, int64_t nrows, float *acc);
    /* Optional (NULL if the set has none), for mr == 1 (decode): panel_packed_groups over
     * two tiles of nr rows at once, tile t at pan[t] with panel stride pstr[t], scales
     * gs[t] (the tile's first row at row 0), nrows[t] rows, sums added to acc[t][j]; each
     * tile's result bit-identical to a panel_packed_groups call of its own (a kernel may
     * share table loads between the tiles, never change a tile's summation order).
     * Returns nonzero iff a scale read is NaN or infinite. */
    int (*gemv_groups_pair)(const float *table, const uint64_t *const pan[2],
                            const int64_t pstr[2], int64_t q0, int64_t q1, int64_t gw,
                            const takane_gscales gs[2], const int64_t nrows[2],
                            float *const acc[2]);
} takane_wfloat_ukernel;

/* Largest W1A8 tile any kernel set may declare (framework scratch is sized by it). */
#define TAKANE_Q8_MAX_MR 4
#define TAKANE_Q8_MAX_NP 4

/*
 * W1A8 (Q8_0 activations) microkernels (csrc/kernels/wq8/wq8_<isa>.c), used by wq8.c.
 * quantize_row: one row of k floats x (times in_scale[c] if in_scale != NULL, each product
 *   rounded to float32) into Q8_0 exactly as llama.cpp's quantize_row_q8_0_ref (see
 *   takane.h): q (kw*64 int8, zero past k), and per 32-column block b < 2*kw: d[b] = the
 *   block scale rounded to fp16, as float (0 for blocks past k), nq[b] = -sum_{c in b} q[c].
 *   Returns TAKANE_ERR_NAN / TAKANE_ERR_NOT_FINITE for a NaN / infinite product or a block
 *   scale that rounds to an infinite fp16 (then the outputs are unspecified). Every set's
 *   quantizer gives the same bits (tested).
 * build_table: q of one row into a kernel-specific table of table_len(kw) bytes (the
 *   framework aligns it to 64 bytes).
 * panels: for i < mr activation rows and the rows j < np * TAKANE_PANEL_ROWS of np
 *   consecutive panels (panel t at panels + t * pstride words), over the groups g of gw
 *   words (words [g*gw, min(kw, (g+1)*gw)); gw = kw without group scales):
 *     out[i * NP * TAKANE_PANEL_ROWS + j] = sum_g gs(j, g) * sum_{blocks b in g} d[b] * S_b
 *     S_b = sum_{c in b} q[c] * sign(row j)[c] = 2 * sum_{c in b, bit c set} q[c] + nq[b]
 *   with NP the set's np, S_b exact (int32), gs(j, g) = takane_gs_at(gs, j, g) the group
 *   scales seen from the run's first row (gs NULL: every factor is 1), and the float sum
 *   in any order with at most two roundings per product (fl(fl(d * g) * S) or
 *   fl(d * S) * g) and one per add or FMA. Rows j >= nrows (past N) must not read a
 *   row-major gs (a panel-major one holds 0 there and may be read; their results are
 *   dropped). Returns nonzero iff a group scale it read is NaN or infinite. Requires
 *   1 <= mr <= the set's mr, 1 <= np <= the set's np, kw >= 1, 1 <= nrows.
 */
/*
 * W1A8 prefill GEMM microkernels (csrc/kernels/wq8/wq8_gemm_<isa>.c; BLIS structure, the
 * framework in wq8_gemm.c). The weights of one strip of nr output columns (nr /
 * TAKANE_PANEL_ROWS consecutive panels) are expanded once into a kernel-specific packed
 * buffer (e.g. int8 bytes, with the strip's group scales), which the tile then reuses for
 * every activation row:
 * pack: panels of the strip (panel t at panels + t * pstride words; only np <= nr / 8 of
 *   them exist, the missing ones are zero rows), kw words each, group scales gs (row j,
 *   group g at takane_gs_at(gs, j, g), groups of gw words; NULL: none) for rows
 *   j < nrows (rows past nrows read no scale) into packed (pack_len(kw, ngroups) bytes,
 *   64-byte aligned). Returns nonzero iff a group scale it read is NaN or infinite.
 * tile: for i < mr (1 <= mr <= the set's mr) activation rows (q[i]: kw * 64 int8, zero
 *   past k; d[i], nq[i]: 2 * kw block scales and negated block sums, as the q8 ukernel
 *   takes them) and j < nr,
 *     out[i * ldo + j] = sum_g g[j][g] * sum_{b in g} d[i][b] * S_ib_j    (has_gs)
 *                      = sum_b d[i][b] * S_ib_j                             (!has_gs)
 *   S exact (int32), the float sum in any order with at most two roundings per product
 *   (fl(fl(d * g) * S)) and one per add or FMA (the framework's bound, wq8.c).
 */
typedef struct takane_q8_gemm_ukernel {
    int mr, nr;
    int64_t (*pack_len)(int64_t kw, int64_t ngroups);
    int (*pack)(const uint64_t *panels, int64_t pstride, int np, int64_t kw, int64_t gw,
                const takane_gscales *gs, int64_t nrows, void *packed);
    void (*tile)(const int8_t *const *q, const float *const *d, const int32_t *const *nq,
                 int mr, const void *packed, int64_t kw, int64_t gw, int has_gs, float *out,
                 int64_t ldo);
    /* Smallest M (>= 2) for which the GEMM beats the set's panel kernels (measured). */
    int min_m;
    /* NULL, or nonzero iff the GEMM may run on this CPU (a run-time feature: SDOT). */
    int (*usable)(void);
} takane_q8_gemm_ukernel;

typedef struct takane_q8_ukernel {
    int mr, np;
    takane_status (*quantize_row)(const float *x, const float *in_scale, int64_t k,
                                  int64_t kw, int8_t *q, float *d, int32_t *nq);
    int64_t (*table_len)(int64_t kw);
    void (*build_table)(const int8_t *q, int64_t kw, void *table);
    int (*panels)(const void *const *tables, const float *const *d, const int32_t *const *nq,
                  int mr, const uint64_t *panels, int64_t pstride, int np, int64_t kw,
                  int64_t gw, const takane_gscales *gs, int64_t nrows, float *out);
    /* Peak probe (may be NULL): a register-resident loop of the int8 multiply-accumulate
     * instruction the GEMM uses, `iters` rounds; returns the MACs done (kept live through
     * *sink). */
    uint64_t (*probe_int8)(uint64_t iters, int32_t *sink);
    /* The prefill GEMM (may be NULL: the panels kernel serves every M). */
    const takane_q8_gemm_ukernel *gemm;
} takane_q8_ukernel;

/* wq8/wq8_quant.c: the portable Q8_0 quantizer (the quantize_row of the scalar set). */
takane_status takane_q8_quantize_row_portable(const float *x, const float *in_scale, int64_t k,
                                              int64_t kw, int8_t *q, float *d, int32_t *nq);
/* wq8/wq8_quant.c: float32(fp16(f)) for f >= 0: round to nearest even, subnormals kept, f >= 65520
 * (and NaN) -> +inf. Shared by every quantizer so the block scales agree bit for bit. */
float takane_round_fp16(float f);

static inline int64_t takane_words_for(int64_t k) { return (k + 63) / 64; }

/* Mask of the valid bits in the last word of a k-element row (all ones if k % 64 == 0). */
static inline uint64_t takane_last_word_mask(int64_t k) {
    int r = (int)(k % 64);
    return r ? ((UINT64_C(1) << r) - 1) : ~UINT64_C(0);
}

/* wq8/wq8_neon.c: nonzero when the NEON W1A8 kernel uses SDOT (CPU feature, and env
 * TAKANE_NEON_DOTPROD is not "0"). */
int takane_wq8_neon_dotprod(void);

#endif /* TAKANE_KERNEL_H */
