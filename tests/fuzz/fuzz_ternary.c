/*
 * fuzz_ternary.c — libFuzzer target for the ternary entry points (issue 23):
 * takane_ternary_weights_create (raw planes: padding bits, sign bits on zero weights), its
 * inverse takane_ternary_weights_get_planes (a row range with a stride gap) and
 * takane_ternary_matmul_prepacked (raw float bits in x, in_scale, scale, group scales and
 * bias; any mode, group_size, stride, ISA and thread count).
 *
 * Every call is checked against a plain C model:
 *   - the status must be exactly what the model predicts (bad mode / group size, padding,
 *     a non-finite in_scale / scale / bias / group scale, NaN or inf activations for the
 *     quantized modes);
 *   - q8_0 and int8_row: the plain quantizer (llama.cpp's Q8_0; BitNet's per-row absmax)
 *     and exact integer sums, y within the documented bound (takane.h) plus the IEEE
 *     underflow / overflow allowance of fuzz_packed.c;
 *   - f32 with finite inputs: y within gamma(k + 4) of the exact sum;
 *   - output slack (the stride gap and a tail) untouched; on an activation error y is
 *     untouched.
 * A mismatch calls abort(). Built with -fsanitize=fuzzer,address,undefined.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "takane/takane.h"

#define FUZZ_NAME "fuzz_ternary"
#include "fuzz_input.h"

/* A float from the input: mostly small values with ties after scaling, sometimes raw bits. */
static float take_float(cursor *c, float lo_scale) {
    const uint32_t b = (uint32_t)take(c, 1);
    if (b == 0xff) {
        uint32_t raw = (uint32_t)take(c, 4);
        float f;
        memcpy(&f, &raw, 4);
        return f;
    }
    return (float)((int)(b & 0x7f) - 64) * lo_scale;
}

static float plain_fp16(float f) { /* as fuzz_packed.c: the fp16 value of f >= 0 */
    if (f >= 65520.0f) return INFINITY;
    int e;
    frexp(f, &e);
    const int qe = e - 11 < -24 ? -24 : e - 11;
    return (float)(nearbyint(ldexp(f, -qe)) * ldexp(1.0, qe));
}

/* `mag`: the magnitude the bound scales with; `imag`: the largest magnitude any intermediate
 * the kernels form may reach. The kernels associate the scale products differently from the
 * exact sum (the int8_row and q8_0 epilogues form sum_g g * D_g before multiplying by the
 * activation scale, and the per-tensor / column scale comes last), so an intermediate can
 * overflow float32 although the exact result is finite: takane.h's bound holds "barring
 * overflow", which covers those intermediates. Modelled, not excluded: a non-finite y is
 * accepted only when mag or imag (times the bound's slack) reaches FLT_MAX. */
/* amp >= 1: how much the factors applied after a rounding (a group scale, then the column
 * scale) can magnify its absolute error. Underflow errors are absolute (half the subnormal
 * spacing, 2^-150, per rounding), so one made in a group sum or a product with the group
 * scale reaches y multiplied by |g| and |scale| (found by this target: k = 1, a subnormal
 * x * t * g = 1.5e-40 times a column scale of ~16 ended 8 half-spacings from the exact
 * value, over the unscaled allowance of 5). */
static int result_ok(float y, double exact, double mag, double imag, double terms, double gam,
                     double amp) {
    const double flt_max = 3.4028234663852886e38;
    if (isnan(y) || isinf(y)) return (mag > imag ? mag : imag) * (1 + gam) >= flt_max;
    const double tiny = ldexp(1.0, -150) * (2 * terms + 8) * amp;
    return fabs((double)y - exact) <= gam * mag + tiny;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cursor cc = {data, size}, *c = &cc;
    const uint32_t supported = takane_isa_supported();
    int isas[8], nisa = 0;
    for (int i = 0; i < 8; i++)
        if (supported & (1u << i)) isas[nisa++] = i;
    const int isa = isas[take(c, 1) % (uint64_t)nisa];
    CHECK(takane_isa_force((takane_isa)isa) == TAKANE_OK);
    const int64_t m = (int64_t)(take(c, 1) % 6);
    const int64_t n = (int64_t)(take(c, 1) % 40);
    const uint64_t kb = take(c, 2);
    int64_t k = (int64_t)((kb >> 2) % 6) * 64 + (int64_t)(kb % 3) - 1;
    if (kb & 0x8000) k = (int64_t)(kb % 1100);
    if (k < 0) k = 0;
    const int threads = (int)(take(c, 1) % 4);
    const int64_t kw = (k + 63) / 64, xs = k + (int64_t)(take(c, 1) % 3);
    const uint64_t sel = take(c, 2);
    const int32_t mode = sel % 16 == 15 ? (int32_t)take(c, 1) - 128 : (int32_t)(sel % 3);
    static const int64_t sizes[] = {0, 64, 128, 192, 4096, 96, -64};
    const int64_t gsize = sizes[take(c, 1) % 7];
    const int with_gs = gsize != 0 && !(sel & 0x10);
    const int64_t ng = gsize > 0 ? (k + gsize - 1) / gsize : 1;
    const int with_in = (sel & 0x20) != 0, with_scale = (sel & 0x40) != 0, with_bias = (sel & 0x80) != 0;
    const size_t xl = (size_t)((m > 0 ? (m - 1) * xs : 0) + k);
    float *x = (float *)malloc((xl ? xl : 1) * sizeof *x);
    float *g = (float *)malloc((size_t)(n * ng + 1) * sizeof *g);
    float *ins = (float *)malloc((size_t)(k + 1) * sizeof *ins);
    float *sc = (float *)malloc((size_t)(n + 1) * sizeof *sc);
    float *bias = (float *)malloc((size_t)(n + 1) * sizeof *bias);
    uint64_t *sign = (uint64_t *)malloc((size_t)(n * kw + 1) * 8);
    uint64_t *nz = (uint64_t *)malloc((size_t)(n * kw + 1) * 8);
    const int64_t ys = n + (int64_t)(sel >> 8 & 1);
    float *y = (float *)malloc((size_t)(m * ys + 1) * sizeof *y);
    CHECK(x && g && ins && sc && bias && sign && nz && y);
    for (size_t i = 0; i < xl; i++) x[i] = take_float(c, 0.5f);
    for (int64_t i = 0; i < n * ng; i++) g[i] = take_float(c, 0.125f);
    for (int64_t i = 0; i < k; i++) ins[i] = take_float(c, 0.0625f);
    for (int64_t i = 0; i < n; i++) sc[i] = take_float(c, 0.25f), bias[i] = take_float(c, 0.5f);
    int padding = 0;
    const uint64_t pad = k % 64 ? ~((UINT64_C(1) << (k % 64)) - 1) : 0;
    for (int64_t i = 0; i < n * kw; i++) sign[i] = take(c, 8), nz[i] = take(c, 8);
    for (int64_t j = 0; j < n && kw; j++) {
        if (!(sel & 0x200)) sign[j * kw + kw - 1] &= ~pad, nz[j * kw + kw - 1] &= ~pad;
        padding |= ((sign[j * kw + kw - 1] | nz[j * kw + kw - 1]) & pad) != 0;
    }
    takane_ternary_weights *h = NULL;
    const takane_status cst = takane_ternary_weights_create(n, k, sign, nz, kw, &h);
    if (padding) {
        CHECK(cst == TAKANE_ERR_PADDING_BITS && h == NULL);
        goto done;
    }
    CHECK(cst == TAKANE_OK && h != NULL);
    {
        /* takane_ternary_weights_get_planes: rows [r0, r1) with a stride gap give back the
         * canonical planes (sign only where nonzero: a zero weight's sign bit is dropped) */
        const int64_t r0 = n ? (int64_t)(sel >> 10 & 7) % (n + 1) : 0, r1 = n;
        const int64_t rs = kw + (int64_t)(sel >> 13 & 1);
        const size_t words = (size_t)((r1 - r0) * rs + 1);
        uint64_t *gs_ = (uint64_t *)malloc(words * sizeof *gs_), *gz = (uint64_t *)malloc(words * sizeof *gz);
        CHECK(gs_ && gz);
        memset(gs_, 0xA5, words * sizeof *gs_), memset(gz, 0xA5, words * sizeof *gz);
        CHECK(takane_ternary_weights_get_planes(h, r0, r1, gs_, gz, rs) == TAKANE_OK);
        for (int64_t r = r0; r < r1; r++)
            for (int64_t q = 0; q < rs; q++) {
                const uint64_t *a = gs_ + (r - r0) * rs + q, *b = gz + (r - r0) * rs + q;
                if (q < kw) CHECK(*a == (sign[r * kw + q] & nz[r * kw + q]) && *b == nz[r * kw + q]);
                else CHECK(*a == UINT64_C(0xA5A5A5A5A5A5A5A5) && *b == UINT64_C(0xA5A5A5A5A5A5A5A5));
            }
        free(gs_), free(gz);
    }
    const float *pin = with_in ? ins : NULL, *psc = with_scale ? sc : NULL, *pb = with_bias ? bias : NULL;
    /* the model's status, in the order the entry point checks */
    takane_status want = TAKANE_OK;
    const int empty = m == 0 || n == 0;
    if (mode < 0 || mode > 2) want = TAKANE_ERR_BAD_ACTIVATIONS;
    else if (with_gs ? (gsize <= 0 || gsize % 64) : gsize != 0) want = TAKANE_ERR_BAD_GROUP_SIZE;
    else if (!empty) {
        for (int64_t i = 0; pin && i < k; i++) want |= !isfinite(pin[i]) ? TAKANE_ERR_NOT_FINITE : 0;
        for (int64_t i = 0; psc && i < n; i++) want |= !isfinite(psc[i]) ? TAKANE_ERR_NOT_FINITE : 0;
        for (int64_t i = 0; pb && i < n; i++) want |= !isfinite(pb[i]) ? TAKANE_ERR_NOT_FINITE : 0;
    }
    int x_nan = 0, x_inf = 0, g_bad = 0, blk_inf = 0;
    if (want == TAKANE_OK && !empty && k > 0) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t b = 0; b * 32 < k; b++) {
                float amax = 0.0f;
                for (int64_t e = b * 32; e < k && e < b * 32 + 32; e++) {
                    const float v = pin ? x[i * xs + e] * pin[e] : x[i * xs + e];
                    x_nan |= v != v;
                    x_inf |= isinf(v);
                    if (fabsf(v) > amax) amax = fabsf(v);
                }
                blk_inf |= !isinf(amax) && amax == amax && plain_fp16(amax / 127.0f) == INFINITY;
            }
        for (int64_t i = 0; with_gs && i < n * ng; i++) g_bad |= !isfinite(g[i]);
    }
    for (int64_t i = 0; i < m * ys + 1; i++) y[i] = -7.0f;
    const takane_status st = takane_ternary_matmul_prepacked(h, m, x, xs, pin, psc, with_gs ? g : NULL, gsize,
                                                             pb, mode, y, ys, threads);
    CHECK(y[m * ys] == -7.0f);
    for (int64_t i = 0; i < m && ys > n; i++) CHECK(y[i * ys + n] == -7.0f); /* the stride gap */
    if (want != TAKANE_OK || empty) {
        CHECK(st == want);
        goto done;
    }
    if (mode != TAKANE_ACTIVATIONS_F32 && (x_nan || x_inf || (mode == TAKANE_ACTIVATIONS_Q8_0 && blk_inf))) {
        CHECK(st == TAKANE_ERR_NAN || st == TAKANE_ERR_NOT_FINITE);
        if (!x_inf && !blk_inf) CHECK(st == TAKANE_ERR_NAN);
        if (!x_nan) CHECK(st == TAKANE_ERR_NOT_FINITE);
        for (int64_t i = 0; i < m * ys; i++) CHECK(y[i] == -7.0f);
        goto done;
    }
    if (g_bad && k > 0) {
        CHECK(st == TAKANE_ERR_NOT_FINITE);
        goto done;
    }
    CHECK(st == TAKANE_OK);
    if (mode == TAKANE_ACTIVATIONS_F32 && (x_nan || x_inf)) goto done; /* IEEE propagation: tests */
    const double u = ldexp(1.0, -24);
    for (int64_t i = 0; i < m; i++) {
        /* the row's activations as the kernels read them */
        const float *xi = x + i * xs;
        float amax = 0.0f;
        for (int64_t e = 0; e < k; e++) {
            const float v = pin ? xi[e] * pin[e] : xi[e];
            if (fabsf(v) > amax) amax = fabsf(v);
        }
        const float a = amax > 1e-5f ? amax : 1e-5f, inv = 127.0f / a, drow = a / 127.0f;
        for (int64_t j = 0; j < n; j++) {
            double exact = 0, mag = 0, terms = 0, imag = 0, gsum = 0, gmax = 1;
            int64_t nt;
            for (int64_t grp = 0; grp < (k ? ng : 0); grp++) {
                const int64_t c0 = with_gs ? grp * gsize : 0, c1 = with_gs && c0 + gsize < k ? c0 + gsize : k;
                const double gv = with_gs ? g[j * ng + grp] : 1.0;
                if (fabs(gv) > gmax) gmax = fabs(gv);
                for (int64_t b0 = c0; b0 < c1; b0 = mode == TAKANE_ACTIVATIONS_Q8_0 ? b0 + 32 : c1) {
                    const int64_t b1 = mode == TAKANE_ACTIVATIONS_Q8_0 && b0 + 32 < c1 ? b0 + 32 : c1;
                    float bamax = 0.0f;
                    for (int64_t e = b0; e < b1; e++) {
                        const float v = pin ? xi[e] * pin[e] : xi[e];
                        if (fabsf(v) > bamax) bamax = fabsf(v);
                    }
                    const float d = bamax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
                    double fsum = 0, fmag = 0;
                    int64_t s = 0;
                    for (int64_t e = b0; e < b1; e++) {
                        const int t = (int)((nz[j * kw + e / 64] >> (e % 64)) & 1) *
                                      (((sign[j * kw + e / 64] >> (e % 64)) & 1) ? 1 : -1);
                        const float v = pin ? xi[e] * pin[e] : xi[e];
                        if (mode == TAKANE_ACTIVATIONS_F32) {
                            fsum += (double)v * t, fmag += fabs((double)v * t);
                        } else if (mode == TAKANE_ACTIVATIONS_INT8_ROW) {
                            const double r = nearbyint((double)(v * inv)); /* ties to even */
                            s += t * (int64_t)r;
                        } else if (plain_fp16(d) != 0.0f) {
                            const float p = v * id;
                            const double r = p < 0 ? -floor(-(double)p + 0.5) : floor((double)p + 0.5);
                            s += t * (int64_t)r;
                        }
                    }
                    double term;
                    if (mode == TAKANE_ACTIVATIONS_F32) term = fsum * gv, mag += fmag * fabs(gv);
                    else if (mode == TAKANE_ACTIVATIONS_INT8_ROW) term = (double)drow * gv * (double)s, mag += fabs(term);
                    else term = (double)plain_fp16(d) * gv * (double)s, mag += fabs(term);
                    exact += term;
                    terms += 1 + fabs((double)s);
                    /* intermediates without the activation scale: g * D and their running sum */
                    if (mode != TAKANE_ACTIVATIONS_F32) gsum += fabs(gv * (double)s);
                    else gsum += fmag * fabs(gv);
                }
            }
            nt = mode == TAKANE_ACTIVATIONS_F32 ? k : mode == TAKANE_ACTIVATIONS_Q8_0 ? (k + 31) / 32 : ng;
            const double gam = (nt + 4) * u / (1 - (nt + 4) * u);
            const double s = psc ? (double)psc[j] : 1.0;
            imag = gsum > mag ? gsum : mag; /* before the per-tensor / column scale */
            exact *= s, mag *= fabs(s);
            double bound_mag = mag;
            if (pb) {
                exact += pb[j];
                bound_mag += fabs((double)pb[j]); /* gamma(2) |bias| <= gam |bias| */
            }
            const double amp = gmax * (fabs(s) > 1 ? fabs(s) : 1);
            CHECK(result_ok(y[i * ys + j], exact, bound_mag, imag, terms, gam, amp));
        }
    }
done:
    takane_ternary_weights_free(h);
    CHECK(takane_isa_active() == (takane_isa)isa);
    free(x), free(g), free(ins), free(sc), free(bias), free(sign), free(nz), free(y);
    return 0;
}
