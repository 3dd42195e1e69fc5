/*
 * conv.c — binary 2-D convolution and max pooling on packed NHWC activations: an implicit
 * GEMM on the W1A1 panel framework (matmul.c) with the layer epilogues of linear_<isa>.c.
 * Baseline ISA; the products run in each ISA's panel microkernel.
 *
 * How a convolution becomes a GEMM without an im2col of the whole input: the output
 * pixels are the GEMM's rows, each a row of the taps' channel bits in the handle's tap
 * order (below). Two ways to present those rows to the panel kernels:
 *   - z-stack (conv_rows_zstack; wide outputs, dilation_w 1, a column-major handle):
 *     per output row, the kh input rows it reads are copied once, stacked per input
 *     column; the row of output pixel ox is then the window of kw columns starting at
 *     column ox * stride_w, read in place at a uniform stride. Each input pixel is copied
 *     kh times per output row instead of kh * kw times per output pixel.
 *   - gather (gather_row; everything else): a task takes a block of <= BLOCK_ROWS output
 *     pixels and, per group, copies each pixel's receptive field into one L1-resident row,
 *     reading each tap through its computed address (an indirection per tap; taps
 *     outside the image read a padding pixel).
 * Then the block is multiplied against the group's weight panels, border pixels are
 * corrected, and the fused epilogue runs while the block's dot products are in cache.
 * Fused path (fused_block: one group, no residual, cout % 16 == 0, a kernel set with
 * panel_epi — avx512): the panel tile itself finishes the outputs from its popcount
 * registers (kernel.h, takane_panel_epi); a border pixel's correction is folded into its
 * row's base (k - the outside taps' tapcorr) instead of being subtracted from stored dot
 * products. At 3x3 x 64 channels K is 9 words per output, and storing the counts,
 * converting them to int32 and re-reading them for the epilogue cost about as much as
 * the products (measured: 56x56x64 175 -> 133 us, 56x56x32 92 -> 60 us, 1 thread).
 * Tap order: column-major in whole-word columns for one group with cin_g % 64 == 0 or
 * cin_g == 32 (two stacked pixels per word: a 3x3 row of 32 channels is 6 words, not
 * 9), else (ky, kx) densely packed (tap t at bit t * cin_g).
 *
 * 1x1, stride 1, no padding, one group: the input pixels ARE the rows; no gather at all
 * (binary_matmul on the pixel rows).
 *
 * Zero padding (pad_value 0) is exact in the integer domain: taps outside the image are
 * gathered as -1 (zero bits), so the GEMM yields dot_-1 = dot_0 + sum over those taps of
 * the -1 tap's contribution, sum_c -w[o, t, c] = cin_g - 2 * popcount(w[o, t]) =
 * tapcorr[t][o], precomputed per handle. Border pixels subtract it for their outside
 * taps (interior pixels have none), before the epilogue, so out_threshold and every
 * float step see the true dot product.
 *
 * Invariants: the entry points validated everything (api_conv.c); k <= TAKANE_MAX_K so
 * dots fit int32; gathered rows have zero padding bits (the handle's rows do too).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "conv.h"

/* Output pixels per gathered block: the gathered rows (<= 64 KiB) and their dot
 * products stay in L1/L2 while they meet every weight panel of the task. */
#define BLOCK_ROWS 64
#define BLOCK_BYTES (64 * 1024)
/* Below this many bit-MACs a call stays on the calling thread (as matmul.c). */
#define MIN_PARALLEL_BITMACS (1 << 23)
/* Output width from which the z-stack path (conv_rows_zstack) is used. */
#define ZSTACK_MIN_WO 8

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* OR nbits bits of src starting at bit soff into dst starting at bit doff. Reads only
 * words that hold some of those bits (never past the source pixel). */
void takane_bits_or(uint64_t *dst, int64_t doff, const uint64_t *src, int64_t soff,
                    int64_t nbits) {
    while (nbits > 0) {
        const int chunk = nbits < 64 ? (int)nbits : 64;
        const int64_t w0 = soff / 64;
        const int s = (int)(soff % 64);
        uint64_t v = src[w0] >> s;
        if (s && s + chunk > 64) v |= src[w0 + 1] << (64 - s);
        if (chunk < 64) v &= (UINT64_C(1) << chunk) - 1;
        const int64_t d0 = doff / 64;
        const int t = (int)(doff % 64);
        dst[d0] |= v << t;
        if (t && t + chunk > 64) dst[d0 + 1] |= v >> (64 - t);
        soff += chunk, doff += chunk, nbits -= chunk;
    }
}

/* ---- the convolution framework ---------------------------------------------------------- */

typedef struct conv_job {
    const takane_kernel_set *ks;
    const takane_conv_weights *w;
    takane_conv2d_geometry geo;
    int64_t ho, wo, m;      /* output size; m = batch * ho * wo rows */
    int64_t cw;             /* words per input pixel (all groups) */
    int64_t kwords;         /* words per gathered row */
    const uint64_t *x;      /* packed input (batch, in_h, in_w, cw) */
    const uint64_t *ones;   /* pad_value +1: a pixel of cw words, all channels +1 */
    int direct;             /* rows are the input pixels (1x1, stride 1, no padding, 1 group) */
    int aligned;            /* cin_g % 64 == 0: taps are whole words */
    int zstack;             /* rows are windows of a stacked copy of kh input rows */
    int fused;              /* the kernel set's panel_epi writes the outputs (fused_block) */
    const int32_t *kvec;    /* fused: cout ints, all k (the base of an interior pixel) */
    const float *scale, *bias, *residual, *out_t;
    int out_t_per_col;
    float *y;
    uint64_t *yb;
    int64_t block;                     /* rows per gathered block */
    takane_grid grid;                  /* rows x panels (one group), else rows x 1 */
    int failed;                        /* atomic: a takane_status */
} conv_job;

/* Gather the receptive field of output pixel (b, oy, ox) for group g into row (kwords
 * words). Returns nonzero iff some tap lies outside the image. */
static int gather_row(const conv_job *j, int64_t b, int64_t oy, int64_t ox, int64_t g,
                      uint64_t *row) {
    const takane_conv_weights *w = j->w;
    const takane_conv2d_geometry *geo = &j->geo;
    const int64_t iy0 = oy * geo->stride_h - geo->pad_top;
    const int64_t ix0 = ox * geo->stride_w - geo->pad_left;
    const int64_t H = geo->in_h, W = geo->in_w, cw = j->cw, cin = w->cin_g;
    const int64_t kh = w->kh, kw = w->kw, dh = geo->dilation_h, dw = geo->dilation_w;
    const uint64_t *img = j->x + b * H * W * cw;
    const int interior = iy0 >= 0 && iy0 + (kh - 1) * dh < H && ix0 >= 0 && ix0 + (kw - 1) * dw < W;
    if (interior && dw == 1 && j->aligned && w->groups == 1 && !w->xmajor) {
        /* the common case: each kernel row's taps are kw adjacent pixels, contiguous in
         * the input and in the gathered row: one copy of kw * cw words per kernel row */
        const int64_t len = kw * cw;
        uint64_t *dst = row;
        for (int64_t ky = 0; ky < kh; ky++, dst += len) {
            const uint64_t *src = img + ((iy0 + ky * dh) * W + ix0) * cw;
            for (int64_t q = 0; q < len; q++) dst[q] = src[q];
        }
        return 0;
    }
    if (interior && cin == 32 && w->xmajor) {
        /* 32 channels, column layout: tap (ky, kx) in half ky % 2 of word ky / 2 of
         * column kx (the padding half of each input word is zero; cw == 1) */
        const int64_t colw = w->colbits / 64;
        for (int64_t kx = 0; kx < kw; kx++) {
            uint64_t *col = row + kx * colw, acc = 0;
            for (int64_t ky = 0; ky < kh; ky++) {
                acc |= img[(iy0 + ky * dh) * W + ix0 + kx * dw] << (32 * (ky & 1));
                if (ky & 1) col[ky >> 1] = acc, acc = 0;
            }
            if (kh & 1) col[kh >> 1] = acc; /* colw == ceil(kh / 2) words, all written */
        }
        return 0;
    }
    int border = 0;
    if (j->aligned) {
        const int64_t cwg = cin / 64, woff = g * cwg;
        const uint64_t fill = geo->pad_value > 0 ? ~UINT64_C(0) : 0;
        for (int64_t ky = 0; ky < kh; ky++) {
            const int64_t iy = iy0 + ky * dh;
            const int row_in = iy >= 0 && iy < H;
            for (int64_t kx = 0; kx < kw; kx++) {
                uint64_t *dst = row + (w->xmajor ? kx * kh + ky : ky * kw + kx) * cwg;
                const int64_t ix = ix0 + kx * dw;
                if (row_in && ix >= 0 && ix < W) {
                    const uint64_t *src = img + (iy * W + ix) * cw + woff;
                    for (int64_t q = 0; q < cwg; q++) dst[q] = src[q];
                } else {
                    border = 1;
                    for (int64_t q = 0; q < cwg; q++) dst[q] = fill;
                }
            }
        }
        return border;
    }
    memset(row, 0, (size_t)j->kwords * sizeof(uint64_t));
    int64_t t = 0;
    for (int64_t ky = 0; ky < kh; ky++) {
        const int64_t iy = iy0 + ky * dh;
        const int row_in = iy >= 0 && iy < H;
        for (int64_t kx = 0; kx < kw; kx++, t++) {
            const int64_t ix = ix0 + kx * dw;
            const uint64_t *src;
            if (row_in && ix >= 0 && ix < W) {
                src = img + (iy * W + ix) * cw;
            } else {
                border = 1;
                if (!j->ones) continue; /* -1 (or 0, corrected later): zero bits */
                src = j->ones;
            }
            takane_bits_or(row, w->xmajor ? kx * w->colbits + ky * cin : t * cin, src, g * cin, cin);
        }
    }
    return border;
}

/* pad_value 0: remove the contribution the GEMM counted for the taps of output pixel r
 * outside the image (as -1 activations), columns [c0, c1) of d (one pixel's row). */
static void correct_row(const conv_job *j, int64_t r, int32_t *d, int64_t c0, int64_t c1) {
    const takane_conv_weights *w = j->w;
    const takane_conv2d_geometry *geo = &j->geo;
    const int64_t rem = r % (j->ho * j->wo);
    const int64_t iy0 = (rem / j->wo) * geo->stride_h - geo->pad_top;
    const int64_t ix0 = (rem % j->wo) * geo->stride_w - geo->pad_left;
    int64_t t = 0;
    for (int64_t ky = 0; ky < w->kh; ky++) {
        const int64_t iy = iy0 + ky * geo->dilation_h;
        const int row_in = iy >= 0 && iy < geo->in_h;
        for (int64_t kx = 0; kx < w->kw; kx++, t++) {
            const int64_t ix = ix0 + kx * geo->dilation_w;
            if (row_in && ix >= 0 && ix < geo->in_w) continue;
            const int32_t *corr = w->tapcorr + t * w->cout;
            for (int64_t o = c0; o < c1; o++) d[o] -= corr[o];
        }
    }
}

/* The fused epilogue of output pixel r, columns [c0, c1) (c0 % 64 == 0 for bits). */
static void epilogue_row(const conv_job *j, int64_t r, const int32_t *d, int64_t c0, int64_t c1,
                         float *tmp) {
    const takane_linear_ukernel *lk = j->ks->linear;
    const int64_t cout = j->w->cout, cols = c1 - c0;
    const float *s = j->scale ? j->scale + c0 : NULL, *b = j->bias ? j->bias + c0 : NULL;
    const float *res = j->residual ? j->residual + r * cout + c0 : NULL;
    if (!j->out_t) {
        float *y = j->y + r * cout + c0;
        lk->affine_row(d + c0, cols, s, NULL, b, y);
        if (res)
            for (int64_t o = 0; o < cols; o++) y[o] = y[o] + res[o];
        return;
    }
    uint64_t *yb = j->yb + r * takane_words_for(cout) + c0 / 64;
    const float *t = j->out_t_per_col ? j->out_t + c0 : j->out_t;
    if (!res) {
        lk->affine_bits_row(d + c0, cols, s, NULL, b, t, j->out_t_per_col, yb);
        return;
    }
    lk->affine_row(d + c0, cols, s, NULL, b, tmp);
    for (int64_t q = 0; q * 64 < cols; q++) {
        uint64_t word = 0;
        for (int64_t o = q * 64; o < cols && o < q * 64 + 64; o++) {
            const float v = tmp[o] + res[o];
            word |= (uint64_t)(v >= t[j->out_t_per_col ? o : 0]) << (o % 64);
        }
        yb[q] = word;
    }
}

/* Panels per L2 block on the fused path: the block's weights stay L2-resident while every
 * row of the block streams past them (as matmul.c's gemm_block). */
#define L2_BLOCK_BYTES (256 * 1024)

/* Border pixels' bases on the fused path, per task, by the pattern of outside taps
 * (pad_value 0, taps <= 64): a layer has few patterns (3x3, padding 1: 4 edges and 4
 * corners), so each base row (k - the correction) is computed once per task instead of
 * once per border pixel (~40 ns each at 64 channels; a 56x56 image has 220). */
#define BASE_CACHE 16
typedef struct base_cache {
    int n;
    uint64_t mask[BASE_CACHE];
    int32_t *rows; /* BASE_CACHE rows of cout ints (columns [c0, c1) of the task used) */
} base_cache;

/* Bit t set iff tap t of output pixel r lies outside the image (taps <= 64). */
static uint64_t outside_taps(const conv_job *j, int64_t r) {
    const takane_conv2d_geometry *geo = &j->geo;
    const int64_t rem = r % (j->ho * j->wo);
    const int64_t iy0 = (rem / j->wo) * geo->stride_h - geo->pad_top;
    const int64_t ix0 = (rem % j->wo) * geo->stride_w - geo->pad_left;
    uint64_t m = 0;
    int t = 0;
    for (int64_t ky = 0; ky < j->w->kh; ky++) {
        const int64_t iy = iy0 + ky * geo->dilation_h;
        const int row_in = iy >= 0 && iy < geo->in_h;
        for (int64_t kx = 0; kx < j->w->kw; kx++, t++) {
            const int64_t ix = ix0 + kx * geo->dilation_w;
            m |= (uint64_t)!(row_in && ix >= 0 && ix < geo->in_w) << t;
        }
    }
    return m;
}

/* Fused path (one group, no residual, cout % 16 == 0, a kernel set with panel_epi): rows
 * [0, n) of x (row stride xs) are output pixels r0.. against panels [p_begin, p_end); the
 * kernel's epilogue writes y / yb directly, no int32 dot products in memory. A border
 * pixel (border != NULL and border[i]; pad_value 0) gets its padding correction folded
 * into its base row (k - the outside taps' tapcorr, in bscr: n * cout ints); the others
 * share kvec. */
static void fused_block(const conv_job *j, int64_t r0, int64_t n, const uint64_t *x, int64_t xs,
                        int64_t p_begin, int64_t p_end, const unsigned char *border,
                        int32_t *bscr, base_cache *cache) {
    const takane_weights *hw = j->w->g[0];
    const takane_linear_ukernel *lk = j->ks->linear;
    const int64_t cout = j->w->cout, kw = hw->kw, pstride = kw * TAKANE_PANEL_ROWS;
    const int64_t c0 = p_begin * TAKANE_PANEL_ROWS, c1 = min64(cout, p_end * TAKANE_PANEL_ROWS);
    const int64_t words = takane_words_for(cout);
    const int32_t *rowbase[BLOCK_ROWS];
    for (int64_t i = 0; i < n; i++) {
        rowbase[i] = j->kvec;
        if (border && border[i]) {
            uint64_t m = 0;
            int hit = -1;
            if (cache) { /* taps <= 64 */
                m = outside_taps(j, r0 + i);
                for (int q = 0; q < cache->n; q++)
                    if (cache->mask[q] == m) hit = q;
            }
            if (hit < 0) {
                int32_t *b = bscr + i * cout;
                if (cache && cache->n < BASE_CACHE) {
                    hit = cache->n++;
                    cache->mask[hit] = m;
                    b = cache->rows + hit * cout;
                }
                for (int64_t o = c0; o < c1; o++) b[o] = (int32_t)hw->k;
                correct_row(j, r0 + i, b, c0, c1);
                rowbase[i] = b;
            } else {
                rowbase[i] = cache->rows + hit * cout;
            }
        }
        /* bits: the padding bits of the last word (cout % 64 != 0) are the task's that
         * owns the last column; zero the word first, the kernel then writes the bytes of
         * its own columns (one store: a memset call per pixel cost 10-20% at 32 channels) */
        if (j->out_t && c1 == cout && cout % 64) j->yb[(r0 + i) * words + words - 1] = 0;
    }
    int64_t ncp = L2_BLOCK_BYTES / (kw * TAKANE_PANEL_ROWS * 8);
    ncp = ncp < 2 ? 2 : ncp / 2 * 2; /* even: the kernel takes pairs of panels */
    const int mr_max = lk->panel_epi_mr;
    const uint64_t *xr[TAKANE_MAX_MR];
    const int32_t *base[TAKANE_MAX_MR];
    float *y[TAKANE_MAX_MR];
    uint8_t *yb[TAKANE_MAX_MR];
    takane_panel_epi e = {base, NULL, NULL, j->out_t, j->out_t_per_col, y, yb};
    for (int64_t jb = p_begin; jb < p_end; jb += ncp) {
        const int64_t je = min64(p_end, jb + ncp), cb = jb * TAKANE_PANEL_ROWS;
        e.scale = j->scale ? j->scale + cb : NULL;
        e.bias = j->bias ? j->bias + cb : NULL;
        e.t = j->out_t && j->out_t_per_col ? j->out_t + cb : j->out_t;
        for (int64_t i0 = 0; i0 < n; i0 += mr_max) {
            const int mr = (int)min64(mr_max, n - i0);
            for (int i = 0; i < mr; i++) {
                const int64_t r = r0 + i0 + i;
                xr[i] = x + (i0 + i) * xs;
                base[i] = rowbase[i0 + i] + cb;
                if (j->out_t) yb[i] = (uint8_t *)(j->yb + r * words) + cb / 8;
                else y[i] = j->y + r * cout + cb;
            }
            lk->panel_epi(xr, mr, hw->panels + jb * pstride, pstride, (int)(je - jb), kw, &e);
        }
    }
}

/* Z-stack path (xmajor handle, dilation_w 1, wide outputs): for output row (b, oy), z
 * holds padded input columns p in [p0, p1) (input column p - pad_left), each as the kh
 * input pixels of rows oy * stride_h - pad_top + ky * dilation_h stacked (kh * cw words;
 * pad_value's fill outside the image). The gathered row of output pixel ox is then the
 * kw consecutive columns from ox * stride_w: a window of z, in the handle's (kx, ky)
 * order, at the uniform stride stride_w * kh * cw. Building z copies each input pixel
 * kh times per output row (3 words per output pixel at 64 channels, stride 1) instead
 * of kh * kw times, and the GEMM reads the windows in place. */
static void build_zstack(const conv_job *j, int64_t b, int64_t oy, int64_t p0, int64_t p1,
                         uint64_t *z) {
    const takane_conv2d_geometry *geo = &j->geo;
    const int64_t kh = j->w->kh, cw = j->cw, col = j->w->colbits / 64, H = geo->in_h, W = geo->in_w;
    const uint64_t fill = geo->pad_value > 0 ? ~UINT64_C(0) : 0;
    const uint64_t *img = j->x + b * H * W * cw;
    /* Columns [pa, pb) of [p0, p1) lie inside the image; the rest are padding. The
     * loops below have no per-pixel bounds checks (this copy is ~10% of a 56x56x64
     * layer's time when it branches per word). */
    int64_t pa = p0 > geo->pad_left ? p0 : geo->pad_left;
    int64_t pb = p1 < geo->pad_left + W ? p1 : geo->pad_left + W;
    pa = pa < p1 ? pa : p1;
    pb = pb > pa ? pb : pa; /* p0 <= pa <= pb <= p1 */
    if (!j->aligned) { /* 32 channels (cw == 1): two stacked pixels per word */
        const uint64_t fill32 = fill & 0xffffffffu, zero = 0;
        for (int64_t m = 0; m < col; m++) { /* word m of a column: rows ky = 2m, 2m + 1 */
            /* each half reads row pointer + p * stride: stride 1 for an image row (the
             * pointer offset so that column p is image column p - pad_left), stride 0
             * on a one-word fill for a padding row or the missing half of an odd kh */
            const uint64_t *rows[2];
            int64_t st[2];
            for (int h = 0; h < 2; h++) {
                const int64_t ky = 2 * m + h;
                const int64_t iy = oy * geo->stride_h - geo->pad_top + ky * geo->dilation_h;
                if (ky >= kh) rows[h] = &zero, st[h] = 0;
                else if (iy < 0 || iy >= H) rows[h] = &fill32, st[h] = 0;
                else rows[h] = img + iy * W - geo->pad_left, st[h] = 1;
            }
            const uint64_t edge = fill32 | (2 * m + 1 < kh ? fill32 << 32 : 0);
            uint64_t *dst = z + m;
            for (int64_t p = p0; p < pa; p++) dst[(p - p0) * col] = edge;
            for (int64_t p = pa; p < pb; p++)
                dst[(p - p0) * col] = rows[0][p * st[0]] | rows[1][p * st[1]] << 32;
            for (int64_t p = pb; p < p1; p++) dst[(p - p0) * col] = edge;
        }
        return;
    }
    for (int64_t ky = 0; ky < kh; ky++) {
        const int64_t iy = oy * geo->stride_h - geo->pad_top + ky * geo->dilation_h;
        uint64_t *dst = z + ky * cw;
        if (iy < 0 || iy >= H) { /* a padding row */
            for (int64_t p = p0; p < p1; p++)
                for (int64_t q = 0; q < cw; q++) dst[(p - p0) * col + q] = fill;
            continue;
        }
        const uint64_t *src = img + (iy * W - geo->pad_left) * cw; /* column p at src + p * cw */
        for (int64_t p = p0; p < pa; p++)
            for (int64_t q = 0; q < cw; q++) dst[(p - p0) * col + q] = fill;
        if (cw == 1) { /* 64 channels: one word per pixel */
            for (int64_t p = pa; p < pb; p++) dst[(p - p0) * col] = src[p];
        } else {
            for (int64_t p = pa; p < pb; p++)
                for (int64_t q = 0; q < cw; q++) dst[(p - p0) * col + q] = src[p * cw + q];
        }
        for (int64_t p = pb; p < p1; p++)
            for (int64_t q = 0; q < cw; q++) dst[(p - p0) * col + q] = fill;
    }
}

/* Rows [i_begin, i_end) of the task on the z-stack path, output row by output row (at
 * most j->block pixels per GEMM call). */
static void conv_rows_zstack(const conv_job *j, int64_t i_begin, int64_t i_end,
                             int64_t p_begin, int64_t p_end, int64_t c0, int64_t c1,
                             uint64_t *z, int32_t *d, float *tmp, base_cache *cache) {
    const takane_conv_weights *w = j->w;
    const takane_conv2d_geometry *geo = &j->geo;
    const int64_t hw = j->ho * j->wo, col = w->colbits / 64, sw = geo->stride_w;
    for (int64_t r = i_begin; r < i_end;) {
        const int64_t b = r / hw, oy = (r % hw) / j->wo, ox0 = r % j->wo;
        const int64_t n = min64(min64(j->wo - ox0, i_end - r), j->block);
        const int64_t p0 = ox0 * sw, p1 = (ox0 + n - 1) * sw + w->kw;
        build_zstack(j, b, oy, p0, p1, z);
        const int64_t iy0 = oy * geo->stride_h - geo->pad_top;
        const int rows_in = iy0 >= 0 && iy0 + (w->kh - 1) * geo->dilation_h < geo->in_h;
        if (j->fused) {
            unsigned char border[BLOCK_ROWS];
            int any = 0;
            for (int64_t i = 0; i < n; i++) {
                const int64_t ix0 = (ox0 + i) * sw - geo->pad_left;
                border[i] = !(rows_in && ix0 >= 0 && ix0 + w->kw - 1 < geo->in_w);
                any |= border[i];
            }
            fused_block(j, r, n, z, sw * col, p_begin, p_end,
                        geo->pad_value == 0 && any ? border : NULL, d, cache);
            r += n;
            continue;
        }
        takane_matmul_prepacked_block(j->ks, w->g[0], n, z, sw * col, p_begin, p_end, d, w->cout);
        for (int64_t i = 0; i < n; i++) {
            int32_t *dr = d + i * w->cout;
            const int64_t ix0 = (ox0 + i) * sw - geo->pad_left;
            const int interior = rows_in && ix0 >= 0 && ix0 + w->kw - 1 < geo->in_w;
            if (geo->pad_value == 0 && !interior) correct_row(j, r + i, dr, c0, c1);
            epilogue_row(j, r + i, dr, c0, c1, tmp);
        }
        r += n;
    }
}

static void conv_task(void *ctx, int64_t task) {
    conv_job *j = (conv_job *)ctx;
    const takane_conv_weights *w = j->w;
    takane_task_range r;
    if (!takane_grid_task(&j->grid, task, j->m, w->groups == 1 ? w->g[0]->npanels : 1, &r))
        return;
    const int64_t i_begin = r.i0, i_end = r.i1;
    int64_t p_begin = 0, p_end = 0, c0 = 0, c1 = w->cout;
    if (w->groups == 1) { /* columns may be split between tasks (one group only) */
        p_begin = r.b0, p_end = r.b1;
        c0 = p_begin * TAKANE_PANEL_ROWS, c1 = min64(w->cout, p_end * TAKANE_PANEL_ROWS);
    }
    const int64_t block = j->block;
    /* the z-stack path's buffer: (block - 1) * stride_w + kw columns of kh * cw words */
    const size_t zwords = (size_t)(((block - 1) * j->geo.stride_w + w->kw) * (w->colbits / 64));
    uint64_t *buf = j->direct ? NULL
                              : (uint64_t *)malloc((j->zstack ? zwords : (size_t)(block * j->kwords)) * 8);
    int32_t *d = (int32_t *)malloc((size_t)(block * w->cout) * sizeof(int32_t));
    float *tmp = (j->out_t && j->residual) ? (float *)malloc((size_t)w->cout * sizeof(float)) : NULL;
    base_cache bc = {0, {0}, NULL}, *cache = NULL;
    if (j->fused && j->geo.pad_value == 0 && w->taps <= 64) {
        bc.rows = (int32_t *)malloc((size_t)(BASE_CACHE * w->cout) * sizeof(int32_t));
        cache = bc.rows ? &bc : NULL; /* without it: one base per border pixel, as exact */
    }
    if ((!j->direct && !buf) || !d || (j->out_t && j->residual && !tmp)) {
        __atomic_store_n(&j->failed, TAKANE_ERR_OUT_OF_MEMORY, __ATOMIC_RELAXED);
        goto done;
    }
    if (j->zstack) {
        conv_rows_zstack(j, i_begin, i_end, p_begin, p_end, c0, c1, buf, d, tmp, cache);
        goto done;
    }
    unsigned char border[BLOCK_ROWS];
    for (int64_t r0 = i_begin; r0 < i_end; r0 += block) {
        const int64_t rows = min64(block, i_end - r0);
        memset(border, 0, sizeof border);
        for (int64_t g = 0; g < w->groups; g++) {
            const takane_weights *hw = w->g[g];
            const uint64_t *xr = j->x + r0 * j->cw;
            int64_t xs = j->cw;
            if (!j->direct) {
                /* (b, oy, ox) of row r0, then stepped: no divisions per row */
                const int64_t plane = j->ho * j->wo;
                int64_t b = r0 / plane, oy = (r0 % plane) / j->wo, ox = r0 % j->wo;
                for (int64_t r = 0; r < rows; r++) {
                    border[r] |= (unsigned char)gather_row(j, b, oy, ox, g, buf + r * j->kwords);
                    if (++ox == j->wo) {
                        ox = 0;
                        if (++oy == j->ho) oy = 0, b++;
                    }
                }
                xr = buf, xs = j->kwords;
            }
            if (j->fused) { /* one group: the block's outputs are final after this */
                fused_block(j, r0, rows, xr, xs, p_begin, p_end,
                            j->geo.pad_value == 0 ? border : NULL, d, cache);
                break;
            }
            const int64_t pb = w->groups == 1 ? p_begin : 0;
            const int64_t pe = w->groups == 1 ? p_end : hw->npanels;
            takane_matmul_prepacked_block(j->ks, hw, rows, xr, xs, pb, pe, d + g * w->coutg,
                                          w->cout);
        }
        for (int64_t r = 0; !j->fused && r < rows; r++) {
            int32_t *dr = d + r * w->cout;
            if (j->geo.pad_value == 0 && border[r]) correct_row(j, r0 + r, dr, c0, c1);
            epilogue_row(j, r0 + r, dr, c0, c1, tmp);
        }
    }
done:
    free(buf);
    free(d);
    free(tmp);
    free(bc.rows);
}

/* Float input: binarize + pack every input pixel once (a packed copy 1/32 the size of
 * the floats), pixels [p0, p1) per task. */
typedef struct pack_job {
    const takane_kernel_set *ks;
    const float *x;
    int64_t c, cw, npix, chunk;
    const float *t;
    int per_channel;
    uint64_t *out;
    int failed;
} pack_job;

static void pack_task(void *ctx, int64_t task) {
    pack_job *p = (pack_job *)ctx;
    const int64_t p0 = task * p->chunk, p1 = min64(p->npix, p0 + p->chunk);
    for (int64_t i = p0; i < p1; i++) {
        if (p->ks->pack_row(p->x + i * p->c, p->c, p->t, p->per_channel, p->out + i * p->cw)) {
            __atomic_store_n(&p->failed, TAKANE_ERR_NAN, __ATOMIC_RELAXED);
            return;
        }
    }
}

/* The convolution framework for a validated call (api_conv.c checked every argument; the
 * batch is non-empty): pack float input, run the tasks. */
takane_status takane_conv_run(const takane_kernel_set *ks, const takane_conv_args *a) {
    const takane_conv_weights *w = a->w;
    const takane_conv2d_geometry *geo = &a->geo;
    const int64_t ho = a->ho, wo = a->wo, cout = w->cout;
    const int64_t cin = w->cin_g * w->groups, cw = takane_words_for(cin);
    const int64_t npix = geo->batch * geo->in_h * geo->in_w;
    const float *scale = a->scale, *bias = a->bias, *residual = a->residual, *out_t = a->out_t;
    const uint64_t *xb = a->xb;
    const float *xf = a->xf;
    float *y = a->y;
    uint64_t *yb = a->yb;
    const int bits = yb != NULL;

    conv_job j;
    memset(&j, 0, sizeof j);
    j.ks = ks, j.w = w, j.geo = *geo, j.ho = ho, j.wo = wo, j.m = geo->batch * ho * wo;
    j.cw = cw, j.kwords = takane_words_for(w->rowk);
    j.aligned = w->cin_g % 64 == 0;
    j.direct = w->kh == 1 && w->kw == 1 && geo->stride_h == 1 && geo->stride_w == 1 &&
               !geo->pad_top && !geo->pad_bottom && !geo->pad_left && !geo->pad_right &&
               w->groups == 1;
    /* Z-stack from 8 output columns on: narrower rows would split the GEMM into calls of
     * a few pixels (partial register tiles at every row end). Measured (AVX-512, 1
     * thread, best of repeated runs): 14x14x256 112 us with the z-stack, 116 us with the
     * column-major gather; 7x7x512 the same either way. */
    j.zstack = !j.direct && w->xmajor && geo->dilation_w == 1 && wo >= ZSTACK_MIN_WO;
    j.scale = scale, j.bias = bias, j.residual = residual;
    j.out_t = bits ? out_t : NULL, j.out_t_per_col = a->out_t_per_col;
    j.y = y, j.yb = yb;
    /* The fused kernel works on pairs of 8-column panels, all columns valid; residuals
     * (added after the float steps) and groups keep the int32 path. */
    j.fused = ks->linear->panel_epi != NULL && w->groups == 1 && !residual && cout % 16 == 0;
    int64_t block = BLOCK_BYTES / (j.kwords * 8);
    j.block = block < 8 ? 8 : block > BLOCK_ROWS ? BLOCK_ROWS : block;

    uint64_t *packed = NULL, *ones = NULL;
    if (geo->pad_value > 0 && !j.aligned) {
        ones = (uint64_t *)malloc((size_t)cw * sizeof(uint64_t));
        if (!ones) return TAKANE_ERR_OUT_OF_MEMORY;
        for (int64_t q = 0; q < cw; q++) ones[q] = ~UINT64_C(0);
        ones[cw - 1] = takane_last_word_mask(cin);
        j.ones = ones;
    }
    int32_t *kvec = NULL;
    if (j.fused) {
        if (!(kvec = (int32_t *)malloc((size_t)cout * sizeof(int32_t)))) {
            free(ones);
            return TAKANE_ERR_OUT_OF_MEMORY;
        }
        for (int64_t o = 0; o < cout; o++) kvec[o] = (int32_t)w->g[0]->k;
        j.kvec = kvec;
    }
    const int nthreads = takane_plan_threads(a->threads, (double)j.m * (double)cout * (double)w->k,
                                             (double)MIN_PARALLEL_BITMACS);
    if (xf) {
        if ((double)npix * (double)cw * 8.0 > (double)SIZE_MAX / 4 ||
            !(packed = (uint64_t *)malloc((size_t)(npix * cw) * sizeof(uint64_t)))) {
            free(ones);
            free(kvec);
            return TAKANE_ERR_OUT_OF_MEMORY;
        }
        pack_job pj = {ks, xf, cin, cw, npix, 0, a->t, a->t_per_channel, packed, TAKANE_OK};
        pj.chunk = takane_plan_chunk(nthreads, npix);
        takane_parallel_run(nthreads, (npix + pj.chunk - 1) / pj.chunk, pack_task, &pj);
        if (pj.failed != TAKANE_OK) {
            free(packed);
            free(ones);
            free(kvec);
            return (takane_status)pj.failed;
        }
        j.x = packed;
    } else {
        j.x = xb;
    }
    /* Tasks: rows, and (one group only) column blocks of whole 64-column words when the
     * rows are too few to keep every thread busy. */
    const int64_t nblocks = w->groups == 1 ? w->g[0]->npanels : 1;
    const takane_grid grid = takane_plan_grid(nthreads, j.m, ks->matmul->panel_mr, nblocks,
                                              64 / TAKANE_PANEL_ROWS);
    j.grid = grid;
    j.failed = TAKANE_OK;
    takane_parallel_run(nthreads, grid.ntasks, conv_task, &j);
    free(packed);
    free(ones);
    free(kvec);
    if (j.failed != TAKANE_OK) return (takane_status)j.failed;
    return TAKANE_OK;
}


/* ---- max pooling ---------------------------------------------------------------------- */

typedef struct pool_job {
    takane_conv2d_geometry geo;
    int64_t kh, kw, cw, ho, wo, chunk; /* chunk: output rows (b, oy) per task */
    const uint64_t *x;
    uint64_t *y;
} pool_job;

static void pool_task(void *ctx, int64_t task) {
    const pool_job *p = (const pool_job *)ctx;
    const takane_conv2d_geometry *g = &p->geo;
    const int64_t r_end = min64(g->batch * p->ho, (task + 1) * p->chunk), cw = p->cw;
    for (int64_t r = task * p->chunk; r < r_end; r++) {
        const int64_t b = r / p->ho, oy = r % p->ho;
        const int64_t iy0 = oy * g->stride_h - g->pad_top;
        const int64_t y0 = iy0 < 0 ? 0 : iy0, y1 = min64(g->in_h, iy0 + p->kh);
        for (int64_t ox = 0; ox < p->wo; ox++) {
            const int64_t ix0 = ox * g->stride_w - g->pad_left;
            const int64_t x0 = ix0 < 0 ? 0 : ix0, x1 = min64(g->in_w, ix0 + p->kw);
            uint64_t *out = p->y + (r * p->wo + ox) * cw;
            for (int64_t q = 0; q < cw; q++) out[q] = 0;
            /* padding <= kernel / 2: the window holds >= 1 image pixel (y0 < y1, x0 < x1) */
            for (int64_t iy = y0; iy < y1; iy++)
                for (int64_t ix = x0; ix < x1; ix++) {
                    const uint64_t *src = p->x + ((b * g->in_h + iy) * g->in_w + ix) * cw;
                    for (int64_t q = 0; q < cw; q++) out[q] |= src[q];
                }
        }
    }
}

void takane_pool_run(const takane_conv2d_geometry *geo, int64_t kernel_h, int64_t kernel_w,
                     int64_t cw, int64_t ho, int64_t wo, const uint64_t *x, uint64_t *y,
                     int threads) {
    const int64_t rows = geo->batch * ho;
    const int nthreads = takane_plan_threads(
        threads, (double)rows * (double)wo * (double)cw * (double)(kernel_h * kernel_w), 262144.0);
    pool_job p = {*geo, kernel_h, kernel_w, cw, ho, wo, 0, x, y};
    p.chunk = takane_plan_chunk(nthreads, rows);
    takane_parallel_run(nthreads, (rows + p.chunk - 1) / p.chunk, pool_task, &p);
}
