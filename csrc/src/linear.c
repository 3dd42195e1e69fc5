/*
 * linear.c — the W1A1 layer framework (binary_linear): blocks of rows are packed (float
 * activations, with beta = mean |x| summed in the same pass), multiplied by the W1A1
 * framework (takane_matmul_prepacked_run on a handle's panels, threaded; else
 * takane_matmul_packed_run on canonical rows) into a small int32 scratch, and finished
 * per row by the kernel set's fused epilogue (scale, beta, bias; float32 or binarized canonical output).
 * Baseline ISA; compiled with -ffp-contract=off like the epilogue kernels, so the float
 * expression ((float)d * s) * beta + b used to derive integer thresholds here is rounded
 * exactly as the kernels and the numpy reference round it.
 *
 * Invariants: api_layers.c validated everything (m, n > 0; k <= TAKANE_MAX_K; padding
 * zero; scale, bias and row_scale finite; out_threshold not NaN). Dot products lie in
 * [-k, k], so every integer threshold below lies in [-k-1, k] and fits int32.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* int32 dot products per block: at most this many (1 MiB), and at most 64 rows. */
#define SCRATCH_INTS (1 << 18)
#define MAX_BLOCK_ROWS 64
/* Binarized output without beta: from this many rows on, derive per-column integer
 * thresholds once and compare the dot products directly; below it, evaluating the float
 * value per element is cheaper. Both give the same bits by construction. Measured on an
 * AVX2 Zen 4: the thresholds cost ~13 ns per column (a division, two float evaluations),
 * the integer compare saves ~0.4 ns per element, so they pay off from ~32 rows. */
#define INT_PATH_MIN_ROWS 32

/* The epilogue value without beta, as the kernels compute it. |d| <= k <= INT32_MAX. */
static inline float value_no_beta(int64_t d, const float *s, const float *b, int64_t j) {
    float v = (float)(int32_t)d;
    if (s) v = v * s[j];
    if (b) v = v + b[j];
    return v;
}

/* q(d) = (value(d) >= t) XOR neg, non-decreasing in d over [-k, k] for the right neg. */
static inline int q_at(int64_t d, const float *s, const float *b, int64_t j, float t, int neg) {
    return (value_no_beta(d, s, b, j) >= t) != neg;
}

/* The exact answer by bisection: the largest T in [lo, hi) with q(T) false, given q(lo)
 * false (or lo = -k-1) and q(hi) true (or hi = k+1). */
static int64_t bisect(int64_t lo, int64_t hi, const float *s, const float *b, int64_t j, float t,
                      int neg) {
    while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (q_at(mid, s, b, j, t, neg)) hi = mid;
        else lo = mid;
    }
    return lo;
}

/*
 * Column j's integer threshold: the largest T in [-k-1, k] with q(T) false (T = -k-1
 * when q holds everywhere), so that for every dot product d in [-k, k]
 *   value(d) >= t  <=>  (d > T) XOR neg,   neg = (scale < 0).
 * value(d) is monotone in d (rounding, a fixed multiply and a fixed add all are), rising
 * for scale >= 0 and falling for scale < 0, so q is non-decreasing and T is unique.
 * The real-number crossing c = (t - b) / s gives a guess g (ceil(c), or floor(c) + 1
 * when neg); q is evaluated at g and g - 1 without branches (both results are needed
 * anyway and branching on them mispredicts), and only when they do not bracket the
 * switch — float rounding moved it — does the column fall back to bisection.
 */
static int32_t column_threshold(int64_t k, const float *s, const float *b, int64_t j, float t,
                                int neg) {
    const double sj = s ? (double)s[j] : 1.0, bj = b ? (double)b[j] : 0.0;
    if (sj == 0.0) /* value(d) = b (or +-0 + b): q is constant */
        return q_at(0, s, b, j, t, neg) ? (int32_t)(-k - 1) : (int32_t)k;
    double c = ((double)t - bj) / sj;
    c = c >= (double)(-k - 2) ? c : (double)(-k - 2); /* also catches NaN */
    c = c <= (double)(k + 2) ? c : (double)(k + 2);
    const int64_t tr = (int64_t)c; /* truncation; exact floor/ceil without libm */
    int64_t g = neg ? tr - (c < (double)tr) + 1 : tr + (c > (double)tr);
    g = g < -k ? -k : g > k + 1 ? k + 1 : g;
    /* q(k+1) counts as true and q(-k-1) as false: evaluate at clamped points, then fix */
    const int q_g = q_at(g <= k ? g : k, s, b, j, t, neg) | (g > k);
    const int q_gm = q_at(g - 1 >= -k ? g - 1 : -k, s, b, j, t, neg) & (g - 1 >= -k);
    if (q_g && !q_gm) return (int32_t)(g - 1); /* the guess brackets the switch */
    return (int32_t)(q_g ? bisect(-k - 1, g - 1, s, b, j, t, neg) : bisect(g, k + 1, s, b, j, t, neg));
}

/* One block of rows' epilogue state (the block's rows are 0.. in d and beta, r0.. in y). */
struct linear_epi {
    const takane_linear_ukernel *lk;
    const takane_linear_args *a;
    const int32_t *d;     /* the block's dot products, row stride n */
    int64_t r0;           /* the block's first row in the call */
    const float *beta;    /* the block's betas (activation_scale), or NULL */
    const int32_t *tint;  /* integer path: per-column thresholds and flip words */
    const uint64_t *flip;
    int int_path;
};

/* Rows [rb, re) x columns [c0, c1) of the block (takane_epilogue_fn): c0 is a multiple
 * of 64 and c1 one or n, so the bit outputs write whole words of their own. */
static void linear_epilogue(void *ctx, int64_t rb, int64_t re, int64_t c0, int64_t c1) {
    const struct linear_epi *e = (const struct linear_epi *)ctx;
    const takane_linear_args *a = e->a;
    const takane_linear_ukernel *lk = e->lk;
    const int64_t n = a->n, cols = c1 - c0, w0 = c0 / 64;
    const float *s = a->scale ? a->scale + c0 : NULL, *b = a->bias ? a->bias + c0 : NULL;
    for (int64_t r = rb; r < re; r++) {
        const float *br = a->activation_scale ? e->beta + r
                          : a->row_scale      ? a->row_scale + e->r0 + r
                                              : NULL;
        const int32_t *dr = e->d + r * n + c0;
        const int64_t row = e->r0 + r;
        if (!a->out_t)
            lk->affine_row(dr, cols, s, br, b, a->y + row * a->ys + c0);
        else if (e->int_path)
            lk->int_bits_row(dr, cols, e->tint + c0, e->flip + w0, a->yb + row * a->ys + w0);
        else
            lk->affine_bits_row(dr, cols, s, br, b, a->out_t_per_col ? a->out_t + c0 : a->out_t,
                                a->out_t_per_col, a->yb + row * a->ys + w0);
    }
}

takane_status takane_linear_run(const takane_kernel_set *ks, const takane_linear_args *a) {
    const takane_linear_ukernel *lk = ks->linear;
    const int64_t m = a->m, n = a->n, k = a->k, kw = takane_words_for(k);
    int64_t block = SCRATCH_INTS / n;
    block = block < 1 ? 1 : block > MAX_BLOCK_ROWS ? MAX_BLOCK_ROWS : block;
    block = min64(block, m);
    const int float_x = a->float_x;
    const int use_beta = a->activation_scale || a->row_scale != NULL;
    const int int_path = a->out_t != NULL && !use_beta && m >= INT_PATH_MIN_ROWS;
    takane_status st = TAKANE_OK;

    int32_t *d = (int32_t *)malloc((size_t)(block * n) * sizeof(int32_t));
    uint64_t *xbuf = float_x && kw ? (uint64_t *)malloc((size_t)(block * kw) * sizeof(uint64_t)) : NULL;
    float *beta = a->activation_scale ? (float *)malloc((size_t)block * sizeof(float)) : NULL;
    int32_t *tint = int_path ? (int32_t *)malloc((size_t)n * sizeof(int32_t)) : NULL;
    uint64_t *flip = int_path ? (uint64_t *)calloc((size_t)takane_words_for(n), sizeof(uint64_t)) : NULL;
    if (!d || (float_x && kw && !xbuf) || (a->activation_scale && !beta) ||
        (int_path && (!tint || !flip))) {
        st = TAKANE_ERR_OUT_OF_MEMORY;
        goto done;
    }
    if (int_path) {
        for (int64_t j = 0; j < n; j++) {
            const int neg = a->scale != NULL && a->scale[j] < 0.0f;
            tint[j] = column_threshold(k, a->scale, a->bias, j, a->out_t[a->out_t_per_col ? j : 0], neg);
            flip[j / 64] |= (uint64_t)neg << (j % 64);
        }
    }
    for (int64_t r0 = 0; r0 < m; r0 += block) {
        const int64_t rows = min64(block, m - r0);
        const uint64_t *xr = float_x ? xbuf : a->xb ? a->xb + r0 * a->xbs : NULL;
        const int64_t xrs = float_x ? kw : a->xbs;
        if (float_x && k > 0) {
            for (int64_t r = 0; r < rows; r++) {
                double abs_sum = 0.0;
                const float *row = a->xf + (r0 + r) * a->xfs;
                /* without beta, the pack kernel proper (measured 30% faster than the
                 * linear kernel's summing variant on (3136, 64, 576)) */
                if (a->activation_scale
                        ? lk->pack_row(row, k, a->t, a->per_channel, xbuf + r * kw, &abs_sum)
                        : ks->pack_row(row, k, a->t, a->per_channel, xbuf + r * kw)) {
                    st = TAKANE_ERR_NAN;
                    goto done;
                }
                if (a->activation_scale) {
                    beta[r] = (float)(abs_sum / (double)k);
                    if (!isfinite(beta[r])) {
                        st = TAKANE_ERR_NOT_FINITE;
                        goto done;
                    }
                }
            }
        }
        if (float_x && k == 0 && a->activation_scale) /* mean of no values: 0 */
            for (int64_t r = 0; r < rows; r++) beta[r] = 0.0f;
        struct linear_epi e = {lk, a, d, r0, beta, tint, flip, int_path};
        if (k == 0) {
            memset(d, 0, (size_t)(rows * n) * sizeof(int32_t));
            linear_epilogue(&e, 0, rows, 0, n);
        } else if (a->pw) { /* the epilogue runs inside, per cached block, threaded */
            st = takane_matmul_prepacked_run_epi(ks, a->pw, rows, xr, xrs, NULL, NULL, 0, d, n,
                                                 a->threads, linear_epilogue, &e);
            if (st != TAKANE_OK) goto done;
        } else {
            takane_matmul_packed_run(ks, rows, n, k, xr, xrs, a->w, a->ws, d, n);
            linear_epilogue(&e, 0, rows, 0, n);
        }
    }
done:
    free(d);
    free(xbuf);
    free(beta);
    free(tint);
    free(flip);
    return st;
}
