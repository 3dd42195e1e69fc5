/*
 * fuzz_packed.c — libFuzzer target for the C entry points that take raw, untrusted
 * packed arrays: takane_check_padding, takane_binary_matmul, takane_weights_create +
 * takane_binary_matmul_prepacked, takane_pack_f32 / takane_binary_matmul_f32 (raw float
 * bits: NaN, infinities, signed zeros, subnormals), takane_binary_linear_bits, the
 * W1A-float / W1A8 entry points with group scales and an activations mode
 * (takane_binary_weight_matmul_ex and _prepacked_ex: raw float bits in x and the group
 * scales, any group_size and mode; results within the documented bound of a plain model;
 * takane_weights_create_grouped: the same scales carried by the handle, the same bits,
 * and takane_weights_get_group_scales gives them back exactly),
 * the GGUF Q1_0 converters takane_q1_0_to_bits / takane_bits_to_q1_0 (raw block bytes and
 * raw float scales: infinities, NaN, fp16 overflow, subnormals, ties), and
 * takane_conv_weights_create + takane_binary_conv2d / _bits / _f32 + takane_binary_max_pool2d
 * (random geometry, padding values, groups; a plain per-tap model).
 *
 * The input decides the dimensions, the row strides (0 = every row is the same data,
 * or padded rows), the ISA (any supported one), the thread count, and the contents of
 * x and w, padding bits included. Every result is checked against a plain C model:
 *   - the status must be exactly what the model predicts (TAKANE_ERR_PADDING_BITS iff
 *     some row read has a 1 past k; TAKANE_ERR_NAN iff a float read is NaN);
 *   - on TAKANE_OK every int32 must equal k - 2 * popcount(x XOR w) and packed bits
 *     must equal the plain v >= t rule with zero padding;
 *   - output slack (the stride gap and a tail) must stay untouched.
 * A mismatch calls abort(), which libFuzzer reports as a crash with the input saved.
 * Built with -fsanitize=fuzzer,address,undefined (tests/fuzz/CMakeLists.txt), so any
 * out-of-bounds read or write, or undefined behaviour, is a crash too.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "takane/takane.h"

#define FUZZ_NAME "fuzz_packed"
#include "fuzz_input.h"

static int64_t words_for(int64_t k) { return (k + 63) / 64; }

static uint64_t pad_mask(int64_t k) { /* the padding bits of a row's last word */
    return k % 64 ? ~((UINT64_C(1) << (k % 64)) - 1) : 0;
}

static int rows_have_padding(const uint64_t *a, int64_t rows, int64_t k, int64_t stride) {
    if (k % 64 == 0) return 0;
    for (int64_t r = 0; r < rows; r++)
        if (a[r * stride + words_for(k) - 1] & pad_mask(k)) return 1;
    return 0;
}

static int32_t plain_dot(const uint64_t *a, const uint64_t *b, int64_t k) {
    int64_t pc = 0;
    for (int64_t q = 0; q < words_for(k); q++) pc += __builtin_popcountll(a[q] ^ b[q]);
    return (int32_t)(k - 2 * pc);
}

/* A row of `rows` strided rows, each `kw` words, filled from the fuzzer's bytes. */
static uint64_t *take_rows(cursor *c, int64_t rows, int64_t kw, int64_t stride, size_t *len) {
    size_t total = (size_t)((rows > 0 ? (rows - 1) * stride : 0) + kw);
    *len = total;
    uint64_t *a = (uint64_t *)malloc((total ? total : 1) * sizeof *a);
    CHECK(a);
    for (size_t i = 0; i < total; i++) a[i] = take(c, 8);
    return a;
}

#define SENTINEL_I32 INT32_C(0x5A5A5A5A)
#define SENTINEL_U64 UINT64_C(0xA5A5A5A5A5A5A5A5)

static void fuzz_matmul(cursor *c, int64_t m, int64_t n, int64_t k, int threads) {
    const int64_t kw = words_for(k);
    const int64_t xs = (take(c, 1) % 3 == 0 && m > 0) ? 0 : kw + (int64_t)(take(c, 1) % 2);
    const int64_t ws = (take(c, 1) % 3 == 0 && n > 0) ? 0 : kw + (int64_t)(take(c, 1) % 2);
    const int64_t ys = n + (int64_t)(take(c, 1) % 3);
    size_t xl, wl;
    uint64_t *x = take_rows(c, m, kw, xs, &xl);
    uint64_t *w = take_rows(c, n, kw, ws, &wl);
    if (!(take(c, 1) & 3)) { /* mostly clean padding, sometimes the fuzzer's garbage */
    } else {
        for (int64_t r = 0; r < m && kw; r++) x[r * xs + kw - 1] &= ~pad_mask(k);
        for (int64_t r = 0; r < n && kw; r++) w[r * ws + kw - 1] &= ~pad_mask(k);
    }
    const int dirty_x = m > 0 && n > 0 && rows_have_padding(x, m, k, xs);
    const int dirty_w = m > 0 && n > 0 && rows_have_padding(w, n, k, ws);
    const size_t yl = (size_t)(m * ys + 4);
    int32_t *y = (int32_t *)malloc(yl * sizeof *y);
    CHECK(y);

    /* takane_check_padding agrees with the model */
    CHECK(takane_check_padding(m, k, x, xs) ==
          (rows_have_padding(x, m, k, xs) ? TAKANE_ERR_PADDING_BITS : TAKANE_OK));

    /* canonical-rows path */
    for (size_t i = 0; i < yl; i++) y[i] = SENTINEL_I32;
    takane_status st = takane_binary_matmul(m, n, k, x, xs, w, ws, y, ys, threads);
    if (dirty_x || dirty_w) {
        CHECK(st == TAKANE_ERR_PADDING_BITS);
    } else {
        CHECK(st == TAKANE_OK);
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < ys; j++)
                CHECK(y[i * ys + j] == (j < n ? plain_dot(x + i * xs, w + j * ws, k) : SENTINEL_I32));
    }
    for (size_t i = (size_t)(m * ys); i < yl; i++) CHECK(y[i] == SENTINEL_I32);

    /* prepacked path: create validates w's padding whatever m is */
    takane_weights *h = NULL;
    st = takane_weights_create(n, k, w, ws, &h);
    if (n > 0 && rows_have_padding(w, n, k, ws)) {
        CHECK(st == TAKANE_ERR_PADDING_BITS && h == NULL);
    } else {
        CHECK(st == TAKANE_OK && h != NULL);
        int64_t hn = -1, hk = -1;
        CHECK(takane_weights_info(h, &hn, &hk, NULL) == TAKANE_OK && hn == n && hk == k);
        for (size_t i = 0; i < yl; i++) y[i] = SENTINEL_I32;
        st = takane_binary_matmul_prepacked(h, m, x, xs, y, ys, threads);
        if (dirty_x) {
            CHECK(st == TAKANE_ERR_PADDING_BITS);
        } else {
            CHECK(st == TAKANE_OK);
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < ys; j++)
                    CHECK(y[i * ys + j] ==
                          (j < n ? plain_dot(x + i * xs, w + j * ws, k) : SENTINEL_I32));
        }
        for (size_t i = (size_t)(m * ys); i < yl; i++) CHECK(y[i] == SENTINEL_I32);
        takane_weights_free(h);
    }

    /* binarized layer output: bits of d >= out_threshold (no scale/bias), canonical */
    if (!dirty_x && !dirty_w) {
        const int64_t nw = words_for(n), bs = nw + 1;
        const float ot = (float)(int8_t)take(c, 1);
        uint64_t *yb = (uint64_t *)malloc((size_t)(m * bs + 1) * sizeof *yb);
        CHECK(yb);
        for (int64_t i = 0; i < m * bs + 1; i++) yb[i] = SENTINEL_U64;
        st = takane_binary_linear_bits(m, n, k, x, xs, w, ws, NULL, NULL, NULL, &ot, 1, yb, bs,
                                       threads);
        CHECK(st == TAKANE_OK);
        for (int64_t i = 0; i < m && n > 0; i++) {
            for (int64_t q = 0; q < nw; q++) {
                uint64_t expect = 0;
                for (int64_t j = q * 64; j < n && j < q * 64 + 64; j++)
                    if ((float)plain_dot(x + i * xs, w + j * ws, k) >= ot)
                        expect |= UINT64_C(1) << (j % 64);
                CHECK(yb[i * bs + q] == expect);
            }
        }
        free(yb);
    }
    free(x), free(w), free(y);
}

static int is_nan(float v) { return v != v; }


/* A fused float-activation product's status and result: TAKANE_ERR_NAN iff a NaN met a
 * non-empty product, else every y equals the plain dot of the packed rows. */
static void check_fused(takane_status st, int has_nan, int64_t m, int64_t n, int64_t k,
                        const uint64_t *bits, int64_t bs, const uint64_t *w, int64_t ws,
                        const int32_t *y) {
    if (m > 0 && n > 0 && k > 0 && has_nan) {
        CHECK(st == TAKANE_ERR_NAN);
        return;
    }
    CHECK(st == TAKANE_OK);
    if (k > 0)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                CHECK(y[i * n + j] == plain_dot(bits + i * bs, w + j * ws, k));
}

static void fuzz_floats(cursor *c, int64_t m, int64_t n, int64_t k, int threads) {
    const int64_t kw = words_for(k);
    const int64_t xs = (take(c, 1) % 3 == 0 && m > 0) ? 0 : k + (int64_t)(take(c, 1) % 5);
    const int mode = (int)(take(c, 1) % 3); /* 0: NULL threshold, 1: scalar, 2: per channel */
    const int64_t tl = mode == 0 ? 0 : mode == 1 ? 1 : k;
    const size_t xl = (size_t)((m > 0 ? (m - 1) * xs : 0) + k);
    float *x = (float *)malloc((xl ? xl : 1) * sizeof *x);
    float *t = (float *)malloc((size_t)(tl ? tl : 1) * sizeof *t);
    CHECK(x && t);
    /* raw float bits, but mostly small integers so ties with thresholds are common */
    for (size_t i = 0; i < xl; i++) {
        uint32_t b = (uint32_t)take(c, 1);
        if (b & 0x80) {
            uint32_t raw = (uint32_t)take(c, 4);
            memcpy(&x[i], &raw, 4);
        } else {
            x[i] = (float)((int)(b & 0x7) - 4);
        }
    }
    for (int64_t i = 0; i < tl; i++) t[i] = (float)((int)(take(c, 1) % 9) - 4);
    int has_nan = 0;
    for (int64_t r = 0; r < m; r++)
        for (int64_t q = 0; q < k; q++) has_nan |= is_nan(x[r * xs + q]);
    const float *tp = mode ? t : NULL;
    const int64_t bs = kw + 1;
    uint64_t *bits = (uint64_t *)malloc((size_t)(m * bs + 1) * sizeof *bits);
    CHECK(bits);
    for (int64_t i = 0; i < m * bs + 1; i++) bits[i] = SENTINEL_U64;
    takane_status st = takane_pack_f32(m, k, x, xs, tp, tl, bits, bs);
    if (has_nan && k > 0) {
        CHECK(st == TAKANE_ERR_NAN);
    } else {
        CHECK(st == TAKANE_OK);
        for (int64_t r = 0; r < m && k > 0; r++) {
            for (int64_t q = 0; q < kw; q++) {
                uint64_t expect = 0;
                for (int64_t e = q * 64; e < k && e < q * 64 + 64; e++) {
                    const float th = mode == 0 ? 0.0f : mode == 1 ? t[0] : t[e];
                    if (x[r * xs + e] >= th) expect |= UINT64_C(1) << (e % 64);
                }
                CHECK(bits[r * bs + q] == expect);
            }
            CHECK(bits[r * bs + kw] == SENTINEL_U64);
        }
    }
    CHECK(bits[m * bs] == SENTINEL_U64);

    /* the fused path agrees with pack + plain dot against clean weights */
    const int64_t ws = kw;
    uint64_t *w = (uint64_t *)malloc((size_t)(n * ws + 1) * sizeof *w);
    int32_t *y = (int32_t *)malloc((size_t)(m * n + 1) * sizeof *y);
    CHECK(w && y);
    for (int64_t i = 0; i < n * ws; i++) w[i] = take(c, 8);
    for (int64_t j = 0; j < n && kw; j++) w[j * ws + kw - 1] &= ~pad_mask(k);
    st = takane_binary_matmul_f32(m, n, k, x, xs, tp, tl, w, ws, y, n, threads);
    check_fused(st, has_nan, m, n, k, bits, bs, w, ws, y);
    takane_weights *h = NULL;
    CHECK(takane_weights_create(n, k, w, ws, &h) == TAKANE_OK);
    st = takane_binary_matmul_prepacked_f32(h, m, x, xs, tp, tl, y, n, threads);
    check_fused(st, has_nan, m, n, k, bits, bs, w, ws, y);
    takane_weights_free(h);
    free(x), free(t), free(bits), free(w), free(y);
}

/* float32(fp16(f)) for f >= 0, round to nearest even (the plainest spelling: scale to an
 * integer multiple of the fp16 quantum, round in double, scale back). */
static float plain_fp16(float f) {
    if (f >= 65520.0f) return INFINITY;
    int e;
    frexp(f, &e);                      /* f = m * 2^e, m in [0.5, 1) */
    const int qe = e - 11 < -24 ? -24 : e - 11; /* quantum 2^qe: 10 bits below the leading one */
    return (float)(nearbyint(ldexp(f, -qe)) * ldexp(1.0, qe));
}

/* One W1A8 result against the model: |y - exact| <= gam * mag (the documented bound), with
 * what IEEE float32 does outside its normal range (takane.h, DESIGN §9: "barring
 * overflow/underflow"), modelled rather than excluded:
 *  - overflow: once the terms' magnitudes (times the bound's slack) reach FLT_MAX, a
 *    partial sum or product may round to +-inf, and inf - inf is NaN: then y may be any
 *    infinity or NaN (a finite y must still be within the bound);
 *  - underflow: a product d * g (or its FMA with the block sum S) below 2^-126 loses its
 *    relative accuracy; each rounding then errs by at most 2^-150 absolutely (half the
 *    smallest subnormal), scaled by the |S| it is multiplied with. ssum = sum_b (|S_b| + 1);
 *    the adds and the nb + 4 roundings of the bound get one such unit each.
 * A NaN / infinity without overflow, or a finite y outside the bound, is a failure. */
static int wq8_result_ok(float y, double exact, double mag, double ssum, double gam, int64_t nb) {
    const double flt_max = 3.4028234663852886e38;
    if (isnan(y) || isinf(y)) return mag * (1 + gam) >= flt_max;
    const double tiny = ldexp(1.0, -150) * (2 * ssum + (double)nb + 4);
    return fabs((double)y - exact) <= gam * mag + tiny;
}

/* takane_binary_weight_matmul_ex and _prepacked_ex against a plain model. */
static void fuzz_wq8(cursor *c, int64_t m, int64_t n, int64_t k, int threads) {
    const int64_t kw = words_for(k), xs = k + (int64_t)(take(c, 1) % 3);
    const uint64_t sel = take(c, 1);
    const int32_t mode = sel % 8 == 7 ? (int32_t)(take(c, 1)) - 128 : (int32_t)(sel % 2);
    static const int64_t sizes[] = {0, 64, 128, 192, 4096, 96, -64};
    const int64_t gsize = sizes[take(c, 1) % 7];
    const int with_gs = gsize != 0 && !(sel & 0x10);
    const int64_t ng = gsize > 0 ? (k + gsize - 1) / gsize : 1;
    const size_t xl = (size_t)((m > 0 ? (m - 1) * xs : 0) + k);
    float *x = (float *)malloc((xl ? xl : 1) * sizeof *x);
    float *g = (float *)malloc((size_t)(n * ng + 1) * sizeof *g);
    uint64_t *w = (uint64_t *)malloc((size_t)(n * kw + 1) * sizeof *w);
    float *y = (float *)malloc((size_t)(m * n + 1) * sizeof *y);
    CHECK(x && g && w && y);
    for (size_t i = 0; i < xl; i++) {
        const uint32_t b = (uint32_t)take(c, 1);
        if (b & 0x80) {
            uint32_t raw = (uint32_t)take(c, 4);
            memcpy(&x[i], &raw, 4);
        } else {
            x[i] = (float)((int)(b & 0x3f) - 32) * 0.5f; /* ties at .5 after scaling */
        }
    }
    for (int64_t i = 0; i < n * ng; i++) {
        const uint32_t b = (uint32_t)take(c, 1);
        if (b == 0xff) {
            uint32_t raw = (uint32_t)take(c, 4);
            memcpy(&g[i], &raw, 4);
        } else {
            g[i] = (float)(b % 7 + 1) * 0.25f;
        }
    }
    int padding = 0;
    for (int64_t i = 0; i < n * kw; i++) w[i] = take(c, 8);
    for (int64_t j = 0; j < n && kw; j++)
        if (!(sel & 0x20)) w[j * kw + kw - 1] &= ~pad_mask(k);
        else padding |= (w[j * kw + kw - 1] & pad_mask(k)) != 0;
    /* the model's status */
    const int empty = m == 0 || n == 0;
    takane_status want = TAKANE_OK;
    int x_nan = 0, x_inf = 0, g_bad = 0;
    if (mode != TAKANE_ACTIVATIONS_F32 && mode != TAKANE_ACTIVATIONS_Q8_0) want = TAKANE_ERR_BAD_ACTIVATIONS;
    else if (with_gs ? (gsize <= 0 || gsize % 64) : gsize != 0) want = TAKANE_ERR_BAD_GROUP_SIZE;
    if (want == TAKANE_OK && !empty && k > 0) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t b = 0; b * 32 < k; b++) {
                float amax = 0.0f;
                for (int64_t e = b * 32; e < k && e < b * 32 + 32; e++) {
                    const float v = x[i * xs + e];
                    x_nan |= v != v;
                    x_inf |= isinf(v);
                    if (fabsf(v) > amax) amax = fabsf(v);
                }
                x_inf |= !x_nan && !isinf(amax) && plain_fp16(amax / 127.0f) == INFINITY;
            }
        for (int64_t i = 0; with_gs && i < n * ng; i++) g_bad |= !isfinite(g[i]);
    }
    /* prepacked 2: a handle carrying the scales (takane_weights_create_grouped), called
     * with none; its results must be prepacked 1's (per-call scales) bit for bit */
    float *y1 = (float *)malloc((size_t)(m * n + 1) * sizeof *y1);
    CHECK(y1);
    takane_status st1 = TAKANE_OK;
    for (int prepacked = 0; prepacked < (with_gs ? 3 : 2); prepacked++) {
        for (int64_t i = 0; i < m * n + 1; i++) y[i] = -7.0f;
        takane_status st;
        if (prepacked == 2) {
            int any_bad = 0;
            for (int64_t i = 0; n > 0 && k > 0 && gsize > 0 && i < n * ng; i++) any_bad |= !isfinite(g[i]);
            const takane_status want_h = gsize <= 0 || gsize % 64 ? TAKANE_ERR_BAD_GROUP_SIZE
                                         : any_bad                ? TAKANE_ERR_NOT_FINITE
                                                                  : TAKANE_OK;
            takane_weights *h = (takane_weights *)&h;
            const takane_status sh = takane_weights_create_grouped(n, k, w, kw, g, ng, gsize, &h);
            CHECK(sh == want_h);
            if (sh != TAKANE_OK) {
                CHECK(h == NULL);
                continue;
            }
            /* the carried scales come back row-major, bit for bit (NULL-free: a handle
             * carries scales exactly when it has rows and columns) */
            if (n > 0 && k > 0) {
                float *gb = (float *)malloc((size_t)(n * ng) * sizeof *gb);
                CHECK(gb);
                CHECK(takane_weights_get_group_scales(h, 0, n, gb, ng) == TAKANE_OK);
                CHECK(memcmp(gb, g, (size_t)(n * ng) * sizeof *gb) == 0);
                free(gb);
            } else {
                float dummy;
                CHECK(takane_weights_get_group_scales(h, 0, n, &dummy, ng) == TAKANE_ERR_BAD_GROUP_SIZE);
            }
            st = takane_binary_weight_matmul_prepacked_ex(h, m, x, xs, NULL, NULL, NULL, 0, NULL, mode, y,
                                                          n, threads);
            CHECK(y[m * n] == -7.0f);
            CHECK(st == st1);
            if (st == TAKANE_OK && !empty)
                CHECK(memcmp(y, y1, (size_t)(m * n) * sizeof *y) == 0);
            /* a call's own scales with a handle that carries them: refused (y1 is free now) */
            if (st == TAKANE_OK && !empty && k > 0)
                CHECK(takane_binary_weight_matmul_prepacked_ex(h, m, x, xs, NULL, NULL, g, gsize, NULL, mode,
                                                               y1, n, threads) == TAKANE_ERR_BAD_GROUP_SIZE);
            takane_weights_free(h);
            continue;
        }
        if (prepacked) {
            takane_weights *h = NULL;
            for (int64_t j = 0; j < n && kw; j++) w[j * kw + kw - 1] &= ~pad_mask(k);
            CHECK(takane_weights_create(n, k, w, kw, &h) == TAKANE_OK);
            st = takane_binary_weight_matmul_prepacked_ex(h, m, x, xs, NULL, NULL, with_gs ? g : NULL,
                                                          gsize, NULL, mode, y, n, threads);
            takane_weights_free(h);
            padding = 0;
            st1 = st;
            memcpy(y1, y, (size_t)(m * n + 1) * sizeof *y);
        } else {
            st = takane_binary_weight_matmul_ex(m, n, k, x, xs, w, kw, NULL, NULL, with_gs ? g : NULL,
                                                gsize, NULL, mode, y, n, threads);
        }
        CHECK(y[m * n] == -7.0f); /* nothing past the output */
        if (want != TAKANE_OK) {
            CHECK(st == want);
            continue;
        }
        if (empty) {
            CHECK(st == TAKANE_OK);
            continue;
        }
        if (padding) {
            CHECK(st == TAKANE_ERR_PADDING_BITS);
            continue;
        }
        if (mode == TAKANE_ACTIVATIONS_Q8_0 && (x_nan || x_inf)) {
            /* NaN -> _NAN, inf or an fp16-overflowing scale -> _NOT_FINITE; with both in
             * x, whichever block comes first */
            if (!x_inf) CHECK(st == TAKANE_ERR_NAN);
            else if (!x_nan) CHECK(st == TAKANE_ERR_NOT_FINITE);
            else CHECK(st == TAKANE_ERR_NAN || st == TAKANE_ERR_NOT_FINITE);
            for (int64_t i = 0; i < m * n; i++) CHECK(y[i] == -7.0f); /* untouched */
            continue;
        }
        if (g_bad) {
            CHECK(st == TAKANE_ERR_NOT_FINITE);
            continue;
        }
        CHECK(st == TAKANE_OK);
        if (mode != TAKANE_ACTIVATIONS_Q8_0 || k == 0) continue; /* the float path: tests */
        /* Q8_0: the plain quantizer and exact block sums, then the bound */
        const double u = ldexp(1.0, -24);
        const int64_t nb = (k + 31) / 32;
        const double gam = (nb + 4) * u / (1 - (nb + 4) * u);
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double exact = 0, mag = 0, ssum = 0;
                for (int64_t b = 0; b < nb; b++) {
                    float amax = 0.0f;
                    for (int64_t e = b * 32; e < k && e < b * 32 + 32; e++)
                        if (fabsf(x[i * xs + e]) > amax) amax = fabsf(x[i * xs + e]);
                    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
                    int64_t s = 0;
                    /* a scale that rounds to fp16 zero: the block contributes nothing */
                    for (int64_t e = b * 32; plain_fp16(d) != 0.0f && e < k && e < b * 32 + 32; e++) {
                        const float v = x[i * xs + e] * id;
                        const double r = v < 0 ? -floor(-(double)v + 0.5) : floor((double)v + 0.5);
                        const int bit = (int)((w[j * kw + e / 64] >> (e % 64)) & 1);
                        s += bit ? (int64_t)r : -(int64_t)r;
                    }
                    const double term = (double)plain_fp16(d) * (with_gs ? g[j * ng + b * 32 / gsize] : 1.0) * (double)s;
                    exact += term;
                    mag += fabs(term);
                    ssum += fabs((double)s) + 1;
                }
                CHECK(wq8_result_ok(y[i * n + j], exact, mag, ssum, gam, nb));
            }
    }
    free(x), free(g), free(w), free(y), free(y1);
}

/* ---- GGUF Q1_0 ------------------------------------------------------------------------- */

/* fp16 bits -> value, by the definition (double arithmetic, exact). */
static double plain_f16(uint16_t h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
    return (h & 0x8000) ? -v : v;
}

/* The fp16 value nearest to a finite float (ties to even), or 0 in *ok if it overflows. */
static double plain_round_f16(float g, int *ok) {
    const double a = fabs((double)g);
    int e;
    frexp(a, &e); /* a = f * 2^e, f in [0.5, 1) */
    if (a == 0) e = -13;
    if (e - 1 < -14) e = -13; /* subnormals share the exponent of the smallest normal */
    const double ulp = ldexp(1.0, e - 1 - 10);
    const double r = nearbyint(a / ulp) * ulp; /* a / ulp is exact; default mode: ties to even */
    *ok = r <= 65504.0;
    return g < 0 || (g == 0 && signbit(g)) ? -r : r;
}

static void fuzz_q1_0(cursor *c, int64_t n, int64_t k) {
    const int64_t nb = k / 128, rb = nb * 18;
    const int64_t qs = (take(c, 1) % 3 == 0 && n > 0) ? 0 : rb + (int64_t)(take(c, 1) % 3);
    const size_t ql = (size_t)((n > 0 ? (n - 1) * qs : 0) + rb);
    uint8_t *q = (uint8_t *)malloc(ql ? ql : 1);
    CHECK(q);
    for (size_t i = 0; i < ql; i++) q[i] = (uint8_t)take(c, 1);
    int bad_d = 0;
    for (int64_t r = 0; r < n; r++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *blk = q + r * qs + b * 18;
            if (take(c, 1) & 1) blk[1] &= 0xBF; /* mostly finite: clear an exponent bit */
        }
    for (int64_t r = 0; r < n; r++) /* after the edits: rows may share bytes (stride 0) */
        for (int64_t b = 0; b < nb; b++) bad_d |= (q[r * qs + b * 18 + 1] & 0x7C) == 0x7C;
    const int64_t bs = nb * 2 + 1, gs = nb + 1;
    uint64_t *bits = (uint64_t *)malloc((size_t)(n * bs + 1) * sizeof *bits);
    float *g = (float *)malloc((size_t)(n * gs + 1) * sizeof *g);
    CHECK(bits && g);
    for (int64_t i = 0; i < n * bs + 1; i++) bits[i] = SENTINEL_U64;
    for (int64_t i = 0; i < n * gs + 1; i++) g[i] = -7.0f;
    takane_status st = takane_q1_0_to_bits(n, k, q, qs, bits, bs, g, gs);
    if (k % 128) {
        CHECK(st == TAKANE_ERR_BAD_GROUP_SIZE);
    } else if (bad_d && n > 0) {
        CHECK(st == TAKANE_ERR_NOT_FINITE);
        for (int64_t i = 0; i < n * bs + 1; i++) CHECK(bits[i] == SENTINEL_U64);
    } else {
        CHECK(st == TAKANE_OK);
        for (int64_t r = 0; r < n; r++) {
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = q + r * qs + b * 18;
                for (int j = 0; j < 128; j++) /* ggml: bit (qs[j/8] >> j%8) & 1 is weight j */
                    CHECK(((bits[r * bs + 2 * b + j / 64] >> (j % 64)) & 1) ==
                          (uint64_t)((blk[2 + j / 8] >> (j % 8)) & 1));
                CHECK((double)g[r * gs + b] == plain_f16((uint16_t)(blk[0] | blk[1] << 8)));
            }
            CHECK(bits[r * bs + 2 * nb] == SENTINEL_U64 && g[r * gs + nb] == -7.0f);
        }
    }
    /* export: raw float scales (mostly in fp16 range) back to blocks */
    if (k % 128 == 0) {
        int overflow = 0;
        for (int64_t r = 0; r < n; r++)
            for (int64_t b = 0; b < nb; b++) {
                float v;
                uint32_t raw = (uint32_t)take(c, 4);
                if (raw & 1) raw = (raw & 0x8FFFFFFFu) | 0x30000000u; /* exponent near fp16's */
                memcpy(&v, &raw, 4);
                g[r * gs + b] = v;
                int ok;
                if (v != v || isinf(v)) ok = 0;
                else (void)plain_round_f16(v, &ok);
                overflow |= !ok;
            }
        for (int64_t r = 0; r < n; r++) /* clean bits: the import above may have failed */
            for (int64_t q2 = 0; q2 < nb * 2; q2++) bits[r * bs + q2] = take(c, 8);
        const int64_t os = rb + 1;
        uint8_t *out = (uint8_t *)malloc((size_t)(n * os + 1));
        CHECK(out);
        memset(out, 0xEE, (size_t)(n * os + 1));
        st = takane_bits_to_q1_0(n, k, bits, bs, g, gs, out, os);
        if (overflow && n > 0 && nb > 0) {
            CHECK(st == TAKANE_ERR_NOT_FINITE);
            for (int64_t i = 0; i < n * os + 1; i++) CHECK(out[i] == 0xEE);
        } else {
            CHECK(st == TAKANE_OK);
            for (int64_t r = 0; r < n; r++) {
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *blk = out + r * os + b * 18;
                    int ok;
                    const double want = plain_round_f16(g[r * gs + b], &ok);
                    const uint16_t h = (uint16_t)(blk[0] | blk[1] << 8);
                    CHECK(plain_f16(h) == want && signbit(plain_f16(h)) == signbit(want));
                    CHECK(memcmp(blk + 2, bits + r * bs + 2 * b, 16) == 0);
                }
                CHECK(out[r * os + rb] == 0xEE);
            }
        }
        free(out);
    }
    free(q), free(bits), free(g);
}

/* bit c of a packed pixel (channels canonical) as +-1 */
static int sgn(const uint64_t *px, int64_t c) { return (px[c / 64] >> (c % 64)) & 1 ? 1 : -1; }

static void fuzz_conv(cursor *c, int threads) {
    const int64_t kh = 1 + (int64_t)(take(c, 1) % 4), kw = 1 + (int64_t)(take(c, 1) % 4);
    const int64_t groups = 1 + (int64_t)(take(c, 1) % 3);
    static const int64_t cins[] = {1, 7, 31, 32, 33, 63, 64, 65, 128};
    const int64_t cin_g = cins[take(c, 1) % 9], cin = cin_g * groups;
    const int64_t cout = groups * (1 + (int64_t)(take(c, 1) % 10));
    takane_conv2d_geometry g;
    g.batch = (int64_t)(take(c, 1) % 3);
    g.in_h = (int64_t)(take(c, 1) % 7) - 1; /* -1 and 0 are errors */
    g.in_w = (int64_t)(take(c, 1) % 7);
    if (take(c, 1) % 4 == 0) g.in_w += 14; /* output rows of >= 8 pixels: the z-stack path */
    g.stride_h = (int64_t)(take(c, 1) % 3), g.stride_w = 1 + (int64_t)(take(c, 1) % 2);
    g.dilation_h = 1 + (int64_t)(take(c, 1) % 2), g.dilation_w = 1 + (int64_t)(take(c, 1) % 2);
    g.pad_top = (int64_t)(take(c, 1) % 3), g.pad_bottom = (int64_t)(take(c, 1) % 3);
    g.pad_left = (int64_t)(take(c, 1) % 3), g.pad_right = (int64_t)(take(c, 1) % 3);
    g.pad_value = (int32_t)(take(c, 1) % 4) - 1; /* 2 is an error */
    const int64_t cw = words_for(cin), cwg = words_for(cin_g), taps = kh * kw;
    /* weights: clean padding mostly */
    const size_t wl = (size_t)(cout * taps * cwg);
    uint64_t *w = (uint64_t *)malloc(wl * sizeof *w);
    CHECK(w);
    const int clean = (take(c, 1) & 3) != 0;
    for (size_t i = 0; i < wl; i++) w[i] = take(c, 8);
    if (clean)
        for (int64_t r = 0; r < cout * taps; r++) w[r * cwg + cwg - 1] &= ~pad_mask(cin_g);
    const int dirty_w = rows_have_padding(w, cout * taps, cin_g, cwg);
    takane_conv_weights *h = NULL;
    takane_status st = takane_conv_weights_create(cout, kh, kw, cin_g, groups, w, &h);
    if (dirty_w) {
        CHECK(st == TAKANE_ERR_PADDING_BITS && h == NULL);
        free(w);
        return;
    }
    CHECK(st == TAKANE_OK && h != NULL);
    int64_t info[6];
    CHECK(takane_conv_weights_info(h, &info[0], &info[1], &info[2], &info[3], &info[4], &info[5]) ==
          TAKANE_OK);
    CHECK(info[0] == cout && info[1] == cin && info[2] == kh && info[3] == kw && info[4] == groups);
    /* the model's view of the geometry */
    int valid = g.in_h >= 1 && g.in_w >= 1 && g.stride_h >= 1 && g.pad_value <= 1;
    int64_t ho = 0, wo = 0;
    if (valid) {
        const int64_t ph = g.in_h + g.pad_top + g.pad_bottom - g.dilation_h * (kh - 1) - 1;
        const int64_t pw = g.in_w + g.pad_left + g.pad_right - g.dilation_w * (kw - 1) - 1;
        valid = ph >= 0 && pw >= 0;
        if (valid) ho = ph / g.stride_h + 1, wo = pw / g.stride_w + 1;
    }
    int64_t mh = -1, mw = -1;
    st = takane_conv2d_output_size(h, &g, &mh, &mw);
    if (!valid) {
        CHECK(st == (g.in_h < 0 ? TAKANE_ERR_NEGATIVE_DIMENSION : TAKANE_ERR_BAD_GEOMETRY));
        float y0;
        CHECK(takane_binary_conv2d(h, &g, w, NULL, NULL, NULL, &y0, threads) == st);
        takane_conv_weights_free(h);
        free(w);
        return;
    }
    CHECK(st == TAKANE_OK && mh == ho && mw == wo);
    const int64_t npix = g.batch * g.in_h * g.in_w, nout = g.batch * ho * wo;
    uint64_t *x = (uint64_t *)malloc((size_t)(npix * cw + 1) * sizeof *x);
    CHECK(x);
    for (int64_t i = 0; i < npix * cw; i++) x[i] = take(c, 8);
    if (take(c, 1) & 3)
        for (int64_t p = 0; p < npix; p++) x[p * cw + cw - 1] &= ~pad_mask(cin);
    const int dirty_x = rows_have_padding(x, npix, cin, cw);
    /* the model: int dots */
    int32_t *d = (int32_t *)malloc((size_t)(nout * cout + 1) * sizeof *d);
    float *y = (float *)malloc((size_t)(nout * cout + 4) * sizeof *y);
    CHECK(d && y);
    const int64_t coutg = cout / groups;
    for (int64_t b = 0; b < g.batch; b++)
        for (int64_t oy = 0; oy < ho; oy++)
            for (int64_t ox = 0; ox < wo; ox++)
                for (int64_t o = 0; o < cout; o++) {
                    const int64_t gi = o / coutg;
                    int64_t s = 0;
                    for (int64_t ky = 0; ky < kh; ky++)
                        for (int64_t kx = 0; kx < kw; kx++) {
                            const int64_t iy = oy * g.stride_h - g.pad_top + ky * g.dilation_h;
                            const int64_t ix = ox * g.stride_w - g.pad_left + kx * g.dilation_w;
                            const uint64_t *wp = w + (o * taps + ky * kw + kx) * cwg;
                            const int in = iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w;
                            const uint64_t *px = in ? x + ((b * g.in_h + iy) * g.in_w + ix) * cw : NULL;
                            for (int64_t ch = 0; ch < cin_g; ch++)
                                s += (int64_t)(in ? sgn(px, gi * cin_g + ch) : g.pad_value) * sgn(wp, ch);
                        }
                    d[((b * ho + oy) * wo + ox) * cout + o] = (int32_t)s;
                }
    for (int64_t i = 0; i < nout * cout + 4; i++) y[i] = -1234.5f;
    st = takane_binary_conv2d(h, &g, x, NULL, NULL, NULL, y, threads);
    if (g.batch == 0) {
        CHECK(st == TAKANE_OK);
    } else if (dirty_x) {
        CHECK(st == TAKANE_ERR_PADDING_BITS);
    } else {
        CHECK(st == TAKANE_OK);
        for (int64_t i = 0; i < nout * cout; i++) CHECK(y[i] == (float)d[i]);
    }
    for (int64_t i = nout * cout; i < nout * cout + 4; i++) CHECK(y[i] == -1234.5f);
    if (!dirty_x && g.batch > 0) {
        /* bits of dot >= ot */
        const int64_t ow = words_for(cout);
        const float ot = (float)(int8_t)take(c, 1) / 4.0f;
        uint64_t *yb = (uint64_t *)malloc((size_t)(nout * ow + 1) * sizeof *yb);
        CHECK(yb);
        yb[nout * ow] = SENTINEL_U64;
        CHECK(takane_binary_conv2d_bits(h, &g, x, NULL, NULL, NULL, &ot, 1, yb, threads) == TAKANE_OK);
        for (int64_t p = 0; p < nout; p++)
            for (int64_t q = 0; q < ow; q++) {
                uint64_t expect = 0;
                for (int64_t o = q * 64; o < cout && o < q * 64 + 64; o++)
                    if ((float)d[p * cout + o] >= ot) expect |= UINT64_C(1) << (o % 64);
                CHECK(yb[p * ow + q] == expect);
            }
        CHECK(yb[nout * ow] == SENTINEL_U64);
        /* float input: +-1.0f per channel (NaN once in a while) */
        float *xf = (float *)malloc((size_t)(npix * cin + 1) * sizeof *xf);
        CHECK(xf);
        for (int64_t p = 0; p < npix; p++)
            for (int64_t ch = 0; ch < cin; ch++) xf[p * cin + ch] = (float)sgn(x + p * cw, ch);
        const int nan = (take(c, 1) % 8) == 0 && npix > 0;
        if (nan) xf[(int64_t)(take(c, 2) % (uint64_t)(npix * cin))] = NAN;
        st = takane_binary_conv2d_f32(h, &g, xf, NULL, 0, NULL, NULL, NULL, y, threads);
        if (nan) {
            CHECK(st == TAKANE_ERR_NAN);
        } else {
            CHECK(st == TAKANE_OK);
            for (int64_t i = 0; i < nout * cout; i++) CHECK(y[i] == (float)d[i]);
        }
        free(xf);
        free(yb);
        /* max pooling over the same input (kernel kh x kw, pads clipped to half of it) */
        takane_conv2d_geometry pg = g;
        pg.dilation_h = pg.dilation_w = 1, pg.pad_value = 0;
        if (pg.pad_top > kh / 2) pg.pad_top = kh / 2;
        if (pg.pad_bottom > kh / 2) pg.pad_bottom = kh / 2;
        if (pg.pad_left > kw / 2) pg.pad_left = kw / 2;
        if (pg.pad_right > kw / 2) pg.pad_right = kw / 2;
        const int64_t pph = pg.in_h + pg.pad_top + pg.pad_bottom - kh;
        const int64_t ppw = pg.in_w + pg.pad_left + pg.pad_right - kw;
        if (pph >= 0 && ppw >= 0) {
            const int64_t pho = pph / pg.stride_h + 1, pwo = ppw / pg.stride_w + 1;
            uint64_t *py = (uint64_t *)malloc((size_t)(g.batch * pho * pwo * cw + 1) * sizeof *py);
            CHECK(py);
            py[g.batch * pho * pwo * cw] = SENTINEL_U64;
            CHECK(takane_binary_max_pool2d(&pg, cin, kh, kw, x, py, threads) == TAKANE_OK);
            for (int64_t b = 0; b < g.batch; b++)
                for (int64_t oy = 0; oy < pho; oy++)
                    for (int64_t ox = 0; ox < pwo; ox++)
                        for (int64_t q = 0; q < cw; q++) {
                            uint64_t expect = 0;
                            for (int64_t ky = 0; ky < kh; ky++)
                                for (int64_t kx = 0; kx < kw; kx++) {
                                    const int64_t iy = oy * pg.stride_h - pg.pad_top + ky;
                                    const int64_t ix = ox * pg.stride_w - pg.pad_left + kx;
                                    if (iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w)
                                        expect |= x[((b * g.in_h + iy) * g.in_w + ix) * cw + q];
                                }
                            CHECK(py[((b * pho + oy) * pwo + ox) * cw + q] == expect);
                        }
            CHECK(py[g.batch * pho * pwo * cw] == SENTINEL_U64);
            free(py);
        }
    }
    free(d), free(y), free(x), free(w);
    takane_conv_weights_free(h);
}

/* llama.cpp's quantize_row_q8_0_ref, written out plainly (roundf of the float32 product). */
static void plain_q8_0_block(const float *x, int len, uint8_t *blk) {
    float amax = 0.0f;
    for (int c = 0; c < len; c++) amax = fabsf(x[c]) > amax ? fabsf(x[c]) : amax;
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    int ok;
    const double dh = plain_round_f16(d, &ok);
    uint16_t h = 0x7C00; /* overflow: fp16 infinity */
    if (ok) { /* the fp16 bits of dh (>= 0) */
        int e;
        frexp(dh, &e);
        if (dh == 0) h = 0;
        else if (e - 1 < -14) h = (uint16_t)ldexp(dh, 24);
        else h = (uint16_t)(((e - 1 + 15) << 10) | ((uint16_t)ldexp(dh, 11 - e) & 1023));
    }
    blk[0] = (uint8_t)(h & 255), blk[1] = (uint8_t)(h >> 8);
    for (int c = 0; c < 32; c++) {
        const float v = c < len ? x[c] * id : 0.0f;
        blk[2 + c] = (uint8_t)(int8_t)(isinf(v) || v != v ? 0 : roundf(v));
    }
}

/* The bring-your-own-threads entry points: quantizer bit-identical to the plain reference
 * above; a Q1_0 handle in caller memory; column ranges computed with caller scratch equal
 * to the library's own threaded product on the same handle (same kernels). */
static void fuzz_byot(cursor *c, int64_t m, int64_t n, int64_t k) {
    k = (k / 128 + 1) * 128;
    const int64_t nb8 = k / 32, rb = nb8 * 34, nb1 = k / 128;
    float *x = (float *)malloc((size_t)(m * k + 1) * sizeof *x);
    uint8_t *qa = (uint8_t *)malloc((size_t)(m * rb + 1)), *pq = (uint8_t *)malloc(40);
    uint8_t *q1 = (uint8_t *)malloc((size_t)(n * nb1 * 18 + 1));
    CHECK(x && qa && pq && q1);
    int finite = 1;
    for (int64_t i = 0; i < m * k; i++) {
        uint32_t raw = (uint32_t)take(c, 2) << 16 | 0x3F00u; /* wide exponents, some tiny */
        if (take(c, 1) % 8 == 0) raw &= 0x807FFFFFu;           /* zeros and subnormals */
        if ((raw >> 23 & 255) == 255 && take(c, 1) % 32) raw &= ~0x00800000u; /* inf/NaN rare */
        memcpy(&x[i], &raw, 4);
        finite &= isfinite(x[i]) != 0;
    }
    takane_status st = takane_quantize_q8_0(m, k, x, k, qa, rb);
    if (finite) CHECK(st == TAKANE_OK);
    else CHECK(st == TAKANE_ERR_NAN || st == TAKANE_ERR_NOT_FINITE);
    for (int64_t i = 0; i < m && finite; i++)
        for (int64_t b = 0; b < nb8; b++) {
            plain_q8_0_block(x + i * k + b * 32, 32, pq);
            CHECK(memcmp(pq, qa + i * rb + b * 34, 34) == 0);
        }
    for (int64_t i = 0; i < n * nb1 * 18; i++) q1[i] = (uint8_t)take(c, 1);
    for (int64_t b = 0; b < n * nb1; b++) q1[b * 18 + 1] &= 0x3B; /* finite, modest d */
    int64_t bytes;
    CHECK(takane_weights_q1_0_size(n, k, &bytes) == TAKANE_OK);
    void *mem = aligned_alloc(64, (size_t)(bytes + 63) / 64 * 64);
    takane_weights *h;
    CHECK(mem && takane_weights_from_q1_0(n, k, q1, nb1 * 18, mem, bytes, &h) == TAKANE_OK);
    CHECK((void *)h == mem);
    if (finite && m > 0 && n > 0) {
        float *y = (float *)malloc((size_t)(m * n) * sizeof *y), *y2 = (float *)malloc((size_t)(m * n) * sizeof *y);
        CHECK(y && y2);
        for (int64_t i = 0; i < m * n; i++) y[i] = NAN;
        const int64_t cut = (int64_t)(take(c, 1) % (uint64_t)(n + 1));
        const int64_t sb = takane_matmul_q8_0_scratch_size(h, m);
        char *scratch = (char *)malloc((size_t)sb);
        CHECK(scratch);
        CHECK(takane_matmul_q8_0_rows(h, cut, n, m, qa, rb, NULL, NULL, 0, NULL, y, n, scratch, sb) == TAKANE_OK);
        CHECK(takane_matmul_q8_0_rows(h, 0, cut, m, qa, rb, NULL, NULL, 0, NULL, y, n, scratch, sb) == TAKANE_OK);
        st = takane_binary_weight_matmul_prepacked_ex(h, m, x, k, NULL, NULL, NULL, 0, NULL,
                                                      TAKANE_ACTIVATIONS_Q8_0, y2, n, 1);
        if (st == TAKANE_OK) /* (a block scale past fp16 is an error there, inf here) */
            for (int64_t i = 0; i < m * n; i++) CHECK(y[i] == y2[i] || (y[i] != y[i] && y2[i] != y2[i]));
        /* the handle keeps its scales panel-major; the same weights as canonical rows with
         * the caller's row-major scales must give the same bits (same summation order) */
        const int64_t kw = k / 64;
        uint64_t *bits = (uint64_t *)malloc((size_t)(n * kw) * 8);
        float *g = (float *)malloc((size_t)(n * nb1) * sizeof *g), *y3 = (float *)malloc((size_t)(m * n) * sizeof *y3);
        CHECK(bits && g && y3);
        for (int64_t r = 0; r < n; r++)
            for (int64_t b = 0; b < nb1; b++) {
                const uint8_t *blk = q1 + (r * nb1 + b) * 18;
                g[r * nb1 + b] = (float)plain_f16((uint16_t)(blk[0] | blk[1] << 8));
                memcpy(bits + r * kw + 2 * b, blk + 2, 16);
            }
        takane_weights *hc;
        CHECK(takane_weights_create(n, k, bits, kw, &hc) == TAKANE_OK);
        const takane_status st3 = takane_binary_weight_matmul_prepacked_ex(
            hc, m, x, k, NULL, NULL, g, 128, NULL, TAKANE_ACTIVATIONS_Q8_0, y3, n, 1);
        CHECK(st3 == st);
        if (st == TAKANE_OK)
            for (int64_t i = 0; i < m * n; i++) CHECK(memcmp(&y2[i], &y3[i], 4) == 0 || (y2[i] != y2[i] && y3[i] != y3[i]));
        takane_weights_free(hc);
        free(bits), free(g), free(y3);
        free(y), free(y2), free(scratch);
    }
    takane_weights_free(h); /* caller memory: releases nothing */
    free(mem), free(x), free(qa), free(pq), free(q1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cursor c = {data, size};
    const uint32_t supported = takane_isa_supported();
    int isas[8], nisa = 0;
    for (int i = 0; i < 8; i++)
        if (supported & (1u << i)) isas[nisa++] = i;
    const int isa = isas[take(&c, 1) % (uint64_t)nisa];
    CHECK(takane_isa_force((takane_isa)isa) == TAKANE_OK);
    const int op = (int)(take(&c, 1) % 6);
    const int64_t m = (int64_t)(take(&c, 1) % 19);
    const int64_t n = (int64_t)(take(&c, 1) % 40);
    const uint64_t kb = take(&c, 2);
    /* K near word edges most of the time, anything up to 1100 otherwise */
    int64_t k = (int64_t)((kb >> 2) % 6) * 64 + (int64_t)(kb % 3) - 1; /* 64a - 1 .. 64a + 1 */
    if (kb & 0x8000) k = (int64_t)(kb % 1100);
    if (k < 0) k = 0;
    const int threads = (int)(take(&c, 1) % 4); /* 0 = default, 1..3 */
    if (op == 0) fuzz_matmul(&c, m, n, k, threads);
    else if (op == 1) fuzz_floats(&c, m, n, k, threads);
    else if (op == 2) fuzz_wq8(&c, m, n, k, threads);
    else if (op == 3) fuzz_q1_0(&c, n, (kb & 0x4000) ? k : (int64_t)(kb % 6) * 128); /* mostly whole blocks */
    else if (op == 4) fuzz_conv(&c, threads);
    else fuzz_byot(&c, m, n, k % 600);
    CHECK(takane_isa_active() == (takane_isa)isa);
    return 0;
}
