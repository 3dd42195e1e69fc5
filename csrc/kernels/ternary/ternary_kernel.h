/*
 * ternary_kernel.h — the ternary-weight microkernel contract (issue 23), next to kernel.h
 * (kernel files include this, which includes kernel.h).
 *
 * Handle layout (csrc/src/ternary.c builds it): rows grouped in panels of
 * TAKANE_PANEL_ROWS = 8; panel p holds, for each word q of its rows, first the "plus" words
 * of its 8 rows, then the "minus" words:
 *   panel[(2 q) * 8 + r]     = plus plane of row r, word q   (t = +1: sign & nonzero)
 *   panel[(2 q + 1) * 8 + r] = minus plane of row r, word q  (t = -1: nonzero & ~sign)
 * so one weight word-group (16 words, 128 bytes) of a panel is contiguous and a GEMV streams
 * the handle front to back. Rows past n in the last panel are zero (t = 0). Panel stride:
 * 16 * kw words. Plus and minus are never both set.
 */
#ifndef TAKANE_TERNARY_KERNEL_H
#define TAKANE_TERNARY_KERNEL_H

#include "../kernel.h"

/* Largest number of panels one microkernel call takes. */
#define TAKANE_TERNARY_MAX_NP 8
/* Largest number of 32-column blocks of one int8 call: |sum| <= 127 * 32 * blocks must stay
 * below 2^31 in every int32 accumulator (here <= 2^21 columns: 2.7e8). */
#define TAKANE_TERNARY_CHUNK_BLOCKS ((int64_t)1 << 16)

/* The int8_row prefill GEMM (BLIS structure, csrc/kernels/ternary/ternary_gemm_<isa>.c; the
 * loops in csrc/src/ternary.c). The weights of one strip of nr output columns (nr / 8
 * consecutive panels) are expanded once into a kernel-specific packed buffer, which the tile
 * reuses for every activation row:
 * pack: panels of the strip (panel t at panels + t * pstride words; only np <= nr / 8 exist,
 *   the missing ones are zero rows), kw words each, group scales gs (row j, group g at
 *   takane_gs_at(gs, j, g), groups of gw words; NULL: none) for rows j < nrows (rows past
 *   nrows read no scale) into packed (pack_len(kw, ngroups) bytes, 64-byte aligned).
 *   Returns nonzero iff a group scale it read is NaN or infinite.
 * tile: for i < mr (1 <= mr <= the kernel's mr) activation rows (q[i]: kw * 64 int8, zero
 *   past k, 64-byte aligned; nq[i][g] = -(sum of q[i] over group g's 64 gw columns), one
 *   entry without groups) and j < nr, with S_g the exact sum over group g of q * t
 *   (2 * gw <= TAKANE_TERNARY_CHUNK_BLOCKS; without groups gw = kw and the same bound):
 *     out[i * ldo + j] = float(S_0)                                   (!has_gs)
 *     out[i * ldo + j] = the panel path's sum over g of float(S_g) * g[j][g], rounded
 *                        exactly as this ISA's dot_i8_groups rounds it  (has_gs)
 *   so the GEMM and the panel kernels give the same bits. */
typedef struct takane_ternary_gemm_ukernel {
    int mr, nr;
    int64_t min_m; /* smallest M for which the GEMM beats the panel kernels (measured) */
    int64_t (*pack_len)(int64_t kw, int64_t ngroups);
    int (*pack)(const uint64_t *panels, int64_t pstride, int np, int64_t kw, int64_t gw,
                const takane_gscales *gs, int64_t nrows, void *packed);
    void (*tile)(const int8_t *const *q, const int32_t *const *nq, int mr, const void *packed,
                 int64_t kw, int64_t gw, int has_gs, float *out, int64_t ldo);
} takane_ternary_gemm_ukernel;

typedef struct takane_ternary_ukernel {
    /* int8 activations: q holds kw * 64 int8 (zero past k, values in [-127, 127], 64-byte
     * aligned). Optionally the set turns each activation row into a table once per call:
     * table_len_i8(kw) bytes (64-byte aligned) built by build_i8(q, kw, table); both NULL:
     * the table is q itself. dot_i8 reads the row's table `a`: for np (1 <= np <=
     * TAKANE_TERNARY_MAX_NP) consecutive panels starting at `panels` (panel t at panels +
     * t * pstride words) and the 32-column blocks [b0, b1) (0 <= b0 < b1 <= 2 * kw,
     * b1 - b0 <= TAKANE_TERNARY_CHUNK_BLOCKS):
     *   out[t * 8 + r] = sum_{c in blocks} q[c] * t_{row r of panel t}[c]   (exact, int32) */
    int64_t (*table_len_i8)(int64_t kw);
    void (*build_i8)(const int8_t *q, int64_t kw, void *table);
    void (*dot_i8)(const void *a, const uint64_t *panels, int64_t pstride, int np,
                   int64_t b0, int64_t b1, int32_t *out);
    /* float activations: xs holds kw * 64 floats (zero past k, 64-byte aligned); words
     * [q0, q1) (0 <= q0 < q1 <= kw):
     *   out[t * 8 + r] = sum_{c in words} xs[c] * t[c]   in float32, any order, terms with
     *   t = 0 not added (a NaN or inf there does not propagate). */
    void (*dot_f32)(const float *xs, const uint64_t *panels, int64_t pstride, int np,
                    int64_t q0, int64_t q1, float *out);
    /* int8 activations with group scales, all kw words in one call (NULL if the set has
     * none: the framework then calls dot_i8 once per group). Groups of gw words
     * (2 * gw <= TAKANE_TERNARY_CHUNK_BLOCKS, so a group's sum is exact in int32; the last
     * group may end at kw); for t < np, r < 8, j = t * 8 + r, in group order g = 0, 1, ...:
     *   out[j] = fl(out[j] + fl(float(S_g) * takane_gs_at(gs, j, g)))   (or one FMA)
     * from out[j] = 0, S_g the exact sum over group g's words as dot_i8 gives it. Rows
     * j >= nrows read no scale (their output is dropped). Returns nonzero iff a group
     * scale it read is NaN or infinite. */
    int (*dot_i8_groups)(const void *a, const uint64_t *panels, int64_t pstride, int np,
                         int64_t kw, int64_t gw, const takane_gscales *gs, int64_t nrows,
                         float *out);
    /* BitNet's per-row int8 quantizer (NULL: the framework's portable loop): xs = x * in_scale
     * (in_scale NULL: x) for the k floats of x, then exactly as takane.h defines
     * TAKANE_ACTIVATIONS_INT8_ROW (each float32 step rounded once, round half to even): q
     * (kw * 64 bytes, zero past k) and *d. Returns nonzero iff some xs is NaN or infinite
     * (q and *d then unspecified; the framework names the error). */
    int (*quantize_i8_row)(const float *x, const float *in_scale, int64_t k, int64_t kw, int8_t *q,
                           float *d);
    /* The int8_row prefill GEMM (NULL: the panel kernels serve every M). */
    const takane_ternary_gemm_ukernel *gemm;
} takane_ternary_ukernel;

extern const takane_ternary_ukernel takane_ternary_ukernel_scalar;
extern const takane_ternary_ukernel takane_ternary_ukernel_avx2;
extern const takane_ternary_ukernel takane_ternary_ukernel_avx512;
extern const takane_ternary_ukernel takane_ternary_ukernel_neon;
extern const takane_ternary_gemm_ukernel takane_ternary_gemm_ukernel_avx512;

#endif /* TAKANE_TERNARY_KERNEL_H */
