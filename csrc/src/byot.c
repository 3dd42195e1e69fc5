/*
 * byot.c — "bring your own threads": the entry points for runtimes that own their thread
 * pool (llama.cpp's ggml, ONNX Runtime, ...). Each runs on the calling thread only: no
 * pool, no allocation, no locks, no thread-local buffers (scratch comes from the caller).
 * Baseline ISA; compiled with -ffp-contract=off (the quantizer must round each float32
 * step exactly as llama.cpp's reference does).
 *
 *  - takane_quantize_q8_0: float rows -> llama.cpp block_q8_0 rows, bit-identical to
 *    quantize_row_q8_0_ref (its arithmetic written out: amax, d = amax / 127, id = 1 / d,
 *    roundf(x * id), d stored as fp16 round-to-nearest-even).
 *  - takane_weights_q1_0_size / takane_weights_from_q1_0: a prepacked handle built from
 *    Q1_0 rows, possibly inside caller memory (ggml's set_tensor repacks into the tensor's
 *    own buffer, so the runtime's buffer holds the only copy of the weights). Layout of the
 *    one block: [struct, padded to 64 bytes][panels][float32 block scales, panel-major].
 *  - takane_weights_create_grouped: the same kind of handle from canonical rows plus
 *    row-major float32 group scales (any group size the kernels take), so that callers
 *    with group scales (Python's PackedWeights) get the kernels' panel-major scale loads
 *    instead of a per-call transposition.
 *  - takane_matmul_q8_0_rows: output columns [r0, r1) against block_q8_0 activations.
 *    The activations are converted, TAKANE_BYOT_ROWS rows at a time, into the q8 kernels'
 *    own row format (int8 q, float fp16-rounded d, nq = -sum q per block: a cheap pass, M*K
 *    bytes) in the caller's scratch, then computed by takane_wq8_block, the same code the
 *    library's own threaded run uses — so both give the same bits for the same split.
 *  - takane_weights_dequantize_rows: rows of a handle back to float (GET_ROWS);
 *    takane_weights_get_bits / takane_weights_get_group_scales: its canonical rows and its
 *    row-major group scales back (a caller may then keep the handle only).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "layers.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Activation rows converted per pass of takane_matmul_q8_0_rows. The q8 kernels stream
 * every weight panel of the range once per mr rows anyway, so a larger chunk would not
 * save weight traffic; it only bounds the scratch. */
#define TAKANE_BYOT_ROWS 16
/* With a prefill GEMM (M >= its threshold) each chunk re-expands the weights of the range,
 * so prefill chunks are larger: the expansion is amortized over 64 rows. */
#define TAKANE_BYOT_GEMM_ROWS 64

/* Rows converted per pass for a call of m rows (the scratch query uses the same rule). */
static int64_t byot_rows(const takane_kernel_set *ks, int64_t m) {
    if (takane_wq8_uses_gemm(ks, m)) return min64(m, TAKANE_BYOT_GEMM_ROWS);
    return min64(m, TAKANE_BYOT_ROWS);
}
#define HEADER_BYTES ((int64_t)((sizeof(takane_weights) + 63) / 64 * 64))

/* ---- Q8_0 quantization ------------------------------------------------------------------ */

/* roundf for the finite products here (|v| <= 127 + a few ulps), without libm (the shared
 * library links none): truncate, then step away from zero when the exact remainder is at
 * least one half (v - trunc(v) is exact in float32 for |v| < 2^23). */
static inline int8_t round_q(float v) {
    int32_t t = (int32_t)v;
    const float f = v - (float)t;
    if (f >= 0.5f) t++;
    else if (f <= -0.5f) t--;
    return (int8_t)t;
}

takane_status takane_quantize_q8_0(int64_t rows, int64_t k, const float *x,
                                   int64_t x_row_stride, void *q, int64_t q_row_stride) {
    TAKANE_TRY(takane_check_dims(rows, 0, k));
    const int64_t nb = (k + TAKANE_Q8_0_BLOCK - 1) / TAKANE_Q8_0_BLOCK;
    TAKANE_TRY(takane_check_in_strides(x_row_stride, 0));
    TAKANE_TRY(takane_check_stride(rows, nb * TAKANE_Q8_0_BLOCK_BYTES, q_row_stride));
    if (rows == 0 || k == 0) return TAKANE_OK;
    if (!x || !q) return TAKANE_ERR_NULL_POINTER;
    takane_status st = TAKANE_OK;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * x_row_stride;
        uint8_t *qr = (uint8_t *)q + r * q_row_stride;
        for (int64_t b = 0; b < nb; b++) {
            const int64_t c0 = b * TAKANE_Q8_0_BLOCK;
            const int len = (int)min64(TAKANE_Q8_0_BLOCK, k - c0);
            uint8_t *blk = qr + b * TAKANE_Q8_0_BLOCK_BYTES;
            float amax = 0.0f;
            int nan = 0, inf = 0;
            for (int c = 0; c < len; c++) {
                const float a = fabsf(xr[c0 + c]);
                nan |= a != a;
                inf |= a == INFINITY;
                amax = a > amax ? a : amax; /* the reference's MAX(amax, |v|) */
            }
            const float d = amax / 127.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            int ok;
            const uint16_t h = takane_f32_to_fp16(nan ? NAN : d, &ok);
            blk[0] = (uint8_t)(h & 0xffu);
            blk[1] = (uint8_t)(h >> 8);
            int8_t *qs = (int8_t *)(blk + 2);
            if (nan || inf || id == INFINITY) {
                /* NaN / inf input (an error, reported below) or d < 2^-128, where the
                 * reference converts an infinite float to int8 (undefined); d rounds to
                 * fp16 0 in the latter case, so the block's value is 0 either way */
                memset(qs, 0, TAKANE_Q8_0_BLOCK);
                if (nan) st = TAKANE_ERR_NAN;
                else if (inf && st == TAKANE_OK) st = TAKANE_ERR_NOT_FINITE;
                continue;
            }
            for (int c = 0; c < len; c++) qs[c] = round_q(xr[c0 + c] * id);
            for (int c = len; c < TAKANE_Q8_0_BLOCK; c++) qs[c] = 0;
        }
    }
    return st;
}

/* ---- handles that carry group scales (from Q1_0 rows, or canonical rows + scales) ------- */

/* One block holds the whole handle: [struct, padded to 64 bytes][panels: npanels * kw * 8
 * words][scales: npanels * 8 * ng floats, panel-major (internal.h), padded to 64 bytes].
 * ng = group scales per row. The sizes are computed in double first so that a shape
 * whose bytes do not fit is out of memory, never a wrapped product. */
static takane_status grouped_layout(int64_t n, int64_t kw, int64_t ng, int64_t *panel_bytes,
                                    int64_t *total) {
    const int64_t npanels = (n + TAKANE_PANEL_ROWS - 1) / TAKANE_PANEL_ROWS;
    const double pb = (double)npanels * (double)kw * TAKANE_PANEL_ROWS * 8.0;
    /* the scales panel-major: whole panels of rows, those past n zero */
    const double sb = (double)npanels * TAKANE_PANEL_ROWS * (double)ng * 4.0;
    if (pb + sb + HEADER_BYTES + 64 > 9.0e18 || pb + sb + HEADER_BYTES + 64 > (double)SIZE_MAX / 2)
        return TAKANE_ERR_OUT_OF_MEMORY;
    *panel_bytes = (int64_t)pb;
    *total = HEADER_BYTES + (int64_t)pb + ((int64_t)sb + 63) / 64 * 64;
    return TAKANE_OK;
}

/* Lay the header out at base (mem != NULL: caller memory) and zero the scales, so that
 * rows past n read 0 (a kernel may load a whole panel's lanes). Returns the handle. */
static takane_weights *grouped_init(char *base, int64_t n, int64_t k, int64_t kw, int64_t ng,
                                    int64_t group_size, int64_t panel_bytes, int caller_memory) {
    takane_weights *h = (takane_weights *)base;
    memset(h, 0, sizeof *h);
    h->n = n, h->k = k, h->kw = kw;
    h->npanels = (n + TAKANE_PANEL_ROWS - 1) / TAKANE_PANEL_ROWS;
    h->panels = panel_bytes > 0 ? (uint64_t *)(base + HEADER_BYTES) : NULL;
    h->group_scale = n > 0 && ng > 0 ? (float *)(base + HEADER_BYTES + panel_bytes) : NULL;
    h->group_size = h->group_scale ? group_size : 0;
    h->storage = caller_memory ? TAKANE_STORAGE_CALLER : TAKANE_STORAGE_BLOCK;
    if (h->group_scale)
        memset(h->group_scale, 0, (size_t)(h->npanels * TAKANE_PANEL_ROWS * ng) * sizeof(float));
    return h;
}

/* Where the scale of group 0 of `row` lives in a handle's panel-major scales; group g is
 * at [g * TAKANE_PANEL_ROWS] from there (internal.h). */
static inline float *grouped_slot(const takane_weights *h, int64_t row, int64_t ng) {
    return h->group_scale + (row / TAKANE_PANEL_ROWS) * ng * TAKANE_PANEL_ROWS +
           row % TAKANE_PANEL_ROWS;
}

static takane_status q1_0_layout(int64_t n, int64_t k, int64_t *panel_bytes, int64_t *total) {
    TAKANE_TRY(takane_check_dims(n, 0, k));
    if (k % TAKANE_Q1_0_BLOCK != 0) return TAKANE_ERR_BAD_GROUP_SIZE;
    return grouped_layout(n, k / 64, k / TAKANE_Q1_0_BLOCK, panel_bytes, total);
}

takane_status takane_weights_q1_0_size(int64_t n, int64_t k, int64_t *bytes) {
    if (!bytes) return TAKANE_ERR_NULL_POINTER;
    int64_t pb;
    return q1_0_layout(n, k, &pb, bytes);
}

takane_status takane_weights_from_q1_0(int64_t n, int64_t k, const void *q, int64_t q_row_stride,
                                       void *mem, int64_t mem_bytes, takane_weights **out) {
    if (!out) return TAKANE_ERR_NULL_POINTER;
    *out = NULL;
    int64_t pb, total;
    TAKANE_TRY(q1_0_layout(n, k, &pb, &total));
    const int64_t nb = k / TAKANE_Q1_0_BLOCK;
    /* q is read in its fixed row format: rows must not overlap */
    TAKANE_TRY(takane_check_stride(n, nb * TAKANE_Q1_0_BLOCK_BYTES, q_row_stride));
    if (n > 0 && nb > 0 && !q) return TAKANE_ERR_NULL_POINTER;
    if (mem && (((uintptr_t)mem & 63) != 0 || mem_bytes < total)) return TAKANE_ERR_BAD_STRIDE;
    /* validate every d first: an error leaves the destination untouched */
    for (int64_t r = 0; r < n; r++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = (const uint8_t *)q + r * q_row_stride + b * TAKANE_Q1_0_BLOCK_BYTES;
            if (((blk[0] | (blk[1] << 8)) & 0x7c00) == 0x7c00) return TAKANE_ERR_NOT_FINITE;
        }
    char *base = (char *)mem;
    if (!base) {
        base = (char *)takane_panels_alloc((size_t)total);
        if (!base) return TAKANE_ERR_OUT_OF_MEMORY;
    }
    takane_weights *h = grouped_init(base, n, k, k / 64, nb, TAKANE_Q1_0_BLOCK, pb, mem != NULL);
    const int64_t kw = h->kw;
    /* panel p, word w, row r <- block w / 2 of row p * 8 + r, its (w % 2)-th 8 bytes;
     * rows past n are zero (the kernels compute and drop them) */
    for (int64_t p = 0; p < h->npanels; p++) {
        uint64_t *panel = h->panels + p * kw * TAKANE_PANEL_ROWS;
        for (int r = 0; r < TAKANE_PANEL_ROWS; r++) {
            const int64_t row = p * TAKANE_PANEL_ROWS + r;
            const uint8_t *src = row < n ? (const uint8_t *)q + row * q_row_stride : NULL;
            float *g = src ? grouped_slot(h, row, nb) : NULL; /* block b at g[b * 8] */
            for (int64_t b = 0; b < nb; b++) {
                uint64_t wd[2] = {0, 0};
                if (src) {
                    const uint8_t *blk = src + b * TAKANE_Q1_0_BLOCK_BYTES;
                    memcpy(wd, blk + 2, 16); /* little-endian: the canonical words */
                    const uint16_t d = (uint16_t)(blk[0] | (blk[1] << 8));
                    g[b * TAKANE_PANEL_ROWS] = takane_fp16_to_f32(d);
                }
                panel[(2 * b) * TAKANE_PANEL_ROWS + r] = wd[0];
                panel[(2 * b + 1) * TAKANE_PANEL_ROWS + r] = wd[1];
            }
        }
    }
    *out = h;
    return TAKANE_OK;
}

takane_status takane_weights_create_grouped(int64_t n, int64_t k, const uint64_t *w,
                                            int64_t w_row_stride, const float *group_scale,
                                            int64_t group_scale_row_stride, int64_t group_size,
                                            takane_weights **out) {
    if (!out) return TAKANE_ERR_NULL_POINTER;
    *out = NULL;
    TAKANE_TRY(takane_check_dims(n, 0, k));
    /* group scales are required here, so a group_size is too (takane_check_group_size
     * would call a NULL group_scale with group_size 0 valid) */
    if (group_size <= 0 || group_size % 64 != 0) return TAKANE_ERR_BAD_GROUP_SIZE;
    const int64_t kw = takane_words_for(k), gw = group_size / 64, ng = (kw + gw - 1) / gw;
    TAKANE_TRY(takane_check_in_strides(w_row_stride, 0));
    /* the scales are read in their own row format: rows must not overlap */
    TAKANE_TRY(takane_check_stride(n, ng, group_scale_row_stride));
    if (n > 0 && kw > 0 && (!w || !group_scale)) return TAKANE_ERR_NULL_POINTER;
    TAKANE_TRY(takane_check_padding(n, k, w, w_row_stride));
    /* every scale finite, checked before anything is allocated (the kernels then never
     * meet a NaN or infinite carried scale; a call's own row-major ones are checked as
     * they are read) */
    for (int64_t r = 0; r < n; r++)
        TAKANE_TRY(takane_check_finite(group_scale + r * group_scale_row_stride, ng));
    int64_t pb, total;
    TAKANE_TRY(grouped_layout(n, kw, ng, &pb, &total));
    char *base = (char *)takane_panels_alloc((size_t)total);
    if (!base) return TAKANE_ERR_OUT_OF_MEMORY;
    takane_weights *h = grouped_init(base, n, k, kw, ng, group_size, pb, 0);
    if (h->panels) takane_fill_panels(h, w, w_row_stride);
    if (h->group_scale)
        for (int64_t r = 0; r < n; r++) {
            float *g = grouped_slot(h, r, ng);
            for (int64_t j = 0; j < ng; j++)
                g[j * TAKANE_PANEL_ROWS] = group_scale[r * group_scale_row_stride + j];
        }
    *out = h;
    return TAKANE_OK;
}

/* ---- the row-range W1A8 product ---------------------------------------------------------- */

/* Scratch layout for a chunk of c rows: q (c * kw * 64 int8), d (c * 2kw float), nq
 * (c * 2kw int32), then the kernel's tables (mr rows), each part 64-byte aligned. */
static int64_t scratch_bytes_for(const takane_kernel_set *ks, int64_t kw, int64_t rows) {
    const int64_t act = rows * kw * 64 + 2 * ((rows * kw * 2 * 4 + 63) / 64 * 64);
    return 64 + (act + 63) / 64 * 64 + takane_wq8_block_scratch(ks, kw, rows);
}

int64_t takane_matmul_q8_0_scratch_size(const takane_weights *weights, int64_t m) {
    const takane_kernel_set *ks;
    if (!weights || m <= 0 || weights->kw == 0 || takane_select_kernels(&ks) != TAKANE_OK)
        return 0;
    return scratch_bytes_for(ks, weights->kw, byot_rows(ks, m));
}

takane_status takane_matmul_q8_0_rows(const takane_weights *w, int64_t r0, int64_t r1, int64_t m,
                                      const void *q, int64_t q_row_stride, const float *scale,
                                      const float *group_scale, int64_t group_size,
                                      const float *bias, float *y, int64_t y_row_stride,
                                      void *scratch, int64_t scratch_bytes) {
    TAKANE_TRY(takane_check_handle(w, m));
    TAKANE_TRY(takane_check_row_range(w, r0, r1));
    const int64_t k = w->k, kw = w->kw, nb = (k + 31) / 32;
    TAKANE_TRY(takane_check_stride(m, nb * TAKANE_Q8_0_BLOCK_BYTES, q_row_stride));
    TAKANE_TRY(takane_check_stride(m, w->n, y_row_stride));
    TAKANE_TRY(takane_check_group_size(group_scale, group_size));
    if (w->group_scale) {
        if (group_scale) return TAKANE_ERR_BAD_GROUP_SIZE; /* the handle carries its own */
        group_scale = w->group_scale, group_size = w->group_size;
    }
    const takane_kernel_set *ks;
    TAKANE_TRY(takane_select_kernels(&ks));
    if (m == 0 || r0 == r1) return TAKANE_OK;
    if (!y || (k > 0 && !q)) return TAKANE_ERR_NULL_POINTER;
    if (k == 0) { /* empty sums: y = 0 * scale + bias, as the other entry points give */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = r0; j < r1; j++) {
                float v = 0.0f;
                if (scale) v = v * scale[j];
                if (bias) v = v + bias[j];
                y[i * y_row_stride + j] = v;
            }
        takane_note_used(ks->isa);
        return TAKANE_OK;
    }
    const int64_t chunk = byot_rows(ks, m);
    if (!scratch || scratch_bytes < scratch_bytes_for(ks, kw, chunk)) return TAKANE_ERR_OUT_OF_MEMORY;
    char *base = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    int8_t *qq = (int8_t *)base;
    float *dd = (float *)(base + chunk * kw * 64);
    int32_t *nq = (int32_t *)((char *)dd + (chunk * kw * 2 * 4 + 63) / 64 * 64);
    char *tables = (char *)nq + (chunk * kw * 2 * 4 + 63) / 64 * 64;
    tables = (char *)(((uintptr_t)tables + 63) & ~(uintptr_t)63);
    const int64_t gw = group_scale ? group_size / 64 : kw;
    const int64_t ngroups = (kw + gw - 1) / gw;
    const takane_gscales gsv = takane_gscales_for(w, group_scale, ngroups);
    /* balanced chunks of at most `chunk` rows: with the GEMM (m >= its threshold) every
     * chunk keeps more than 32 rows, so no tail chunk falls back to the panel kernels and
     * each row gets the same bits as in the library's threaded run of the same m */
    const int64_t nchunks = (m + chunk - 1) / chunk, per = m / nchunks, rem = m % nchunks;
    for (int64_t ci = 0; ci < nchunks; ci++) {
        const int64_t i0 = ci * per + min64(ci, rem), mi = per + (ci < rem);
        for (int64_t i = 0; i < mi; i++) {
            const uint8_t *src = (const uint8_t *)q + (i0 + i) * q_row_stride;
            int8_t *qi = qq + i * kw * 64;
            float *di = dd + i * 2 * kw;
            int32_t *ni = nq + i * 2 * kw;
            for (int64_t b = 0; b < 2 * kw; b++) {
                if (b >= nb) { /* the zero block that pads a row to whole words */
                    memset(qi + b * 32, 0, 32);
                    di[b] = 0.0f, ni[b] = 0;
                    continue;
                }
                const uint8_t *blk = src + b * TAKANE_Q8_0_BLOCK_BYTES;
                memcpy(qi + b * 32, blk + 2, 32);
                int32_t sum = 0;
                for (int c = 0; c < 32; c++) sum += qi[b * 32 + c];
                di[b] = takane_fp16_to_f32((uint16_t)(blk[0] | (blk[1] << 8)));
                ni[b] = -sum;
            }
        }
        if (takane_wq8_block(ks, w, mi, qq, dd, nq, scale, group_scale ? &gsv : NULL, gw, ngroups,
                             bias,
                             y + i0 * y_row_stride, y_row_stride, r0, r1, tables))
            return TAKANE_ERR_NOT_FINITE;
    }
    takane_note_used(ks->isa);
    return TAKANE_OK;
}

/* ---- rows back to float ------------------------------------------------------------------- */

takane_status takane_weights_dequantize_rows(const takane_weights *w, int64_t r0, int64_t r1,
                                             float *y, int64_t y_row_stride) {
    TAKANE_TRY(takane_check_row_range(w, r0, r1));
    TAKANE_TRY(takane_check_stride(r1 - r0, w->k, y_row_stride));
    if (r0 == r1 || w->k == 0) return TAKANE_OK;
    if (!y) return TAKANE_ERR_NULL_POINTER;
    const int64_t kw = w->kw, ng = takane_handle_ngroups(w);
    for (int64_t r = r0; r < r1; r++) {
        const uint64_t *panel = w->panels + (r / TAKANE_PANEL_ROWS) * kw * TAKANE_PANEL_ROWS;
        const int lane = (int)(r % TAKANE_PANEL_ROWS);
        /* the handle's scales are panel-major: row r's group g at g[g * 8] (internal.h) */
        const float *g = w->group_scale ? w->group_scale +
                                              (r / TAKANE_PANEL_ROWS) * ng * TAKANE_PANEL_ROWS + lane
                                        : NULL;
        float *yr = y + (r - r0) * y_row_stride;
        for (int64_t c = 0; c < w->k; c++) {
            const uint64_t word = panel[(c / 64) * TAKANE_PANEL_ROWS + lane];
            const float s = g ? g[(c / w->group_size) * TAKANE_PANEL_ROWS] : 1.0f;
            yr[c] = (word >> (c % 64)) & 1 ? s : -s;
        }
    }
    return TAKANE_OK;
}

takane_status takane_weights_get_bits(const takane_weights *w, int64_t r0, int64_t r1,
                                      uint64_t *bits, int64_t bits_row_stride) {
    TAKANE_TRY(takane_check_row_range(w, r0, r1));
    const int64_t kw = w->kw;
    TAKANE_TRY(takane_check_stride(r1 - r0, kw, bits_row_stride));
    if (r0 == r1 || kw == 0) return TAKANE_OK;
    if (!bits) return TAKANE_ERR_NULL_POINTER;
    for (int64_t r = r0; r < r1; r++) {
        const uint64_t *panel = w->panels + (r / TAKANE_PANEL_ROWS) * kw * TAKANE_PANEL_ROWS;
        const int lane = (int)(r % TAKANE_PANEL_ROWS);
        uint64_t *out = bits + (r - r0) * bits_row_stride;
        for (int64_t q = 0; q < kw; q++) out[q] = panel[q * TAKANE_PANEL_ROWS + lane];
    }
    return TAKANE_OK;
}

takane_status takane_weights_get_group_scales(const takane_weights *w, int64_t r0, int64_t r1,
                                              float *group_scale, int64_t group_scale_row_stride) {
    TAKANE_TRY(takane_check_row_range(w, r0, r1));
    if (!w->group_scale) return TAKANE_ERR_BAD_GROUP_SIZE;
    const int64_t ng = takane_handle_ngroups(w); /* > 0: a handle with scales has n, k > 0 */
    TAKANE_TRY(takane_check_stride(r1 - r0, ng, group_scale_row_stride));
    if (r0 == r1) return TAKANE_OK;
    if (!group_scale) return TAKANE_ERR_NULL_POINTER;
    /* the inverse of create_grouped's scatter: group j of row r at grouped_slot(r)[j * 8] */
    for (int64_t r = r0; r < r1; r++) {
        const float *g = grouped_slot(w, r, ng);
        float *out = group_scale + (r - r0) * group_scale_row_stride;
        for (int64_t j = 0; j < ng; j++) out[j] = g[j * TAKANE_PANEL_ROWS];
    }
    return TAKANE_OK;
}
