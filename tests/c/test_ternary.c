/*
 * test_ternary.c — the ternary entry points from C (issue 23): argument errors of
 * takane_ternary_weights_create / takane_ternary_matmul_prepacked, and every supported ISA
 * against a plain model at panel-edge shapes: int8_row with integer activations of max
 * |x| 127 (q = x, d = 1, so y is the exact integer sum) and f32 on small integers (exact).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "takane/takane.h"

#include "check.h"

static uint64_t state = 0x2545F4914F6CDD1Du;
static uint64_t next(void) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return state;
}

static void errors(void) {
    takane_ternary_weights *h = (takane_ternary_weights *)&state; /* must be reset to NULL */
    uint64_t s[2] = {1, 0}, z[2] = {1, 0};
    CHECK(takane_ternary_weights_create(1, 64, s, z, 1, NULL) == TAKANE_ERR_NULL_POINTER, "out NULL");
    CHECK(takane_ternary_weights_create(1, 64, NULL, z, 1, &h) == TAKANE_ERR_NULL_POINTER && !h, "sign NULL");
    CHECK(takane_ternary_weights_create(-1, 64, s, z, 1, &h) == TAKANE_ERR_NEGATIVE_DIMENSION, "n < 0");
    CHECK(takane_ternary_weights_create(2, 64, s, z, 0, &h) == TAKANE_ERR_BAD_STRIDE, "stride < kw");
    z[0] = UINT64_C(1) << 10;
    CHECK(takane_ternary_weights_create(1, 10, s, z, 1, &h) == TAKANE_ERR_PADDING_BITS, "padding");
    z[0] = 1;
    CHECK(takane_ternary_weights_create(1, 10, s, z, 1, &h) == TAKANE_OK && h, "create");
    float x[10] = {0}, y[2] = {0}, bad[1] = {1.0f / 0.0f};
    CHECK(takane_ternary_matmul_prepacked(NULL, 1, x, 10, NULL, NULL, NULL, 0, NULL, 0, y, 1, 1) ==
              TAKANE_ERR_NULL_POINTER, "handle NULL");
    CHECK(takane_ternary_matmul_prepacked(h, 1, x, 10, NULL, NULL, NULL, 0, NULL, 3, y, 1, 1) ==
              TAKANE_ERR_BAD_ACTIVATIONS, "mode");
    CHECK(takane_ternary_matmul_prepacked(h, 1, x, 10, NULL, NULL, x, 32, NULL, 0, y, 1, 1) ==
              TAKANE_ERR_BAD_GROUP_SIZE, "group size");
    CHECK(takane_ternary_matmul_prepacked(h, 1, NULL, 10, NULL, NULL, NULL, 0, NULL, 0, y, 1, 1) ==
              TAKANE_ERR_NULL_POINTER, "x NULL");
    CHECK(takane_ternary_matmul_prepacked(h, 1, x, 10, NULL, bad, NULL, 0, NULL, 0, y, 1, 1) ==
              TAKANE_ERR_NOT_FINITE, "scale inf");
    CHECK(takane_ternary_matmul_prepacked(h, 1, x, 10, NULL, NULL, NULL, 0, NULL, 0, y, 1, -1) ==
              TAKANE_ERR_BAD_THREADS, "threads");
    CHECK(takane_ternary_matmul_prepacked(h, 0, NULL, 10, NULL, NULL, NULL, 0, NULL, 2, NULL, 1, 1) == TAKANE_OK,
          "m = 0");
    x[3] = 0.0f / 0.0f;
    CHECK(takane_ternary_matmul_prepacked(h, 1, x, 10, NULL, NULL, NULL, 0, NULL, 2, y, 1, 1) == TAKANE_ERR_NAN,
          "NaN int8_row");
    takane_ternary_weights_free(h);
    takane_ternary_weights_free(NULL);
}

static void exact(takane_isa isa) {
    static const int64_t ns[] = {1, 7, 8, 9, 63, 64, 65, 130};
    static const int64_t ks[] = {1, 31, 32, 33, 64, 65, 200, 1000};
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (size_t b = 0; b < sizeof ks / sizeof ks[0]; b++) {
            const int64_t n = ns[a], k = ks[b], kw = (k + 63) / 64, m = 3;
            int8_t *t = malloc((size_t)(n * k));
            uint64_t *s = calloc((size_t)(n * kw), 8), *z = calloc((size_t)(n * kw), 8);
            float *x = malloc((size_t)(m * k) * 4), *y = malloc((size_t)(m * n) * 4);
            for (int64_t i = 0; i < n * k; i++) {
                const int r = (int)(next() % 3) - 1, row = (int)(i / k), c = (int)(i % k);
                t[i] = (int8_t)r;
                if (r) z[row * kw + c / 64] |= UINT64_C(1) << (c % 64);
                if (r > 0) s[row * kw + c / 64] |= UINT64_C(1) << (c % 64);
            }
            for (int64_t i = 0; i < m * k; i++) x[i] = (float)((int)(next() % 255) - 127);
            for (int64_t i = 0; i < m; i++) x[i * k] = 127.0f; /* max |x| = 127: q = x, d = 1 */
            takane_ternary_weights *h = NULL;
            CHECK(takane_ternary_weights_create(n, k, s, z, kw, &h) == TAKANE_OK, "create");
            for (int mode = 0; mode <= 2; mode += 2) {
                CHECK(takane_ternary_matmul_prepacked(h, m, x, k, NULL, NULL, NULL, 0, NULL, mode, y, n, 2) ==
                          TAKANE_OK, "run");
                CHECK(takane_isa_last_used() == isa, "ran %s", takane_isa_name(takane_isa_last_used()));
                for (int64_t i = 0; i < m; i++)
                    for (int64_t j = 0; j < n; j++) {
                        long want = 0;
                        for (int64_t c = 0; c < k; c++) want += (long)x[i * k + c] * t[j * k + c];
                        CHECK(y[i * n + j] == (float)want, "%s mode %d n=%lld k=%lld: y[%lld][%lld] = %g, want %ld",
                              takane_isa_name(isa), mode, (long long)n, (long long)k, (long long)i, (long long)j,
                              (double)y[i * n + j], want);
                    }
            }
            /* int8_row with group scales of 1 (groups of 64: the kernel's grouped path where a
             * set has one): the same exact sums; one infinite scale of the last live row ->
             * TAKANE_ERR_NOT_FINITE */
            float *gsc = malloc((size_t)(n * kw) * 4), *y2 = malloc((size_t)(m * n) * 4);
            for (int64_t i = 0; i < n * kw; i++) gsc[i] = 1.0f;
            CHECK(takane_ternary_matmul_prepacked(h, m, x, k, NULL, NULL, gsc, 64, NULL, 2, y2, n, 2) ==
                      TAKANE_OK, "grouped run");
            CHECK(memcmp(y, y2, (size_t)(m * n) * 4) == 0, "%s grouped n=%lld k=%lld differs",
                  takane_isa_name(isa), (long long)n, (long long)k);
            gsc[n * kw - 1] = 1.0f / 0.0f;
            CHECK(takane_ternary_matmul_prepacked(h, m, x, k, NULL, NULL, gsc, 64, NULL, 2, y2, n, 1) ==
                      TAKANE_ERR_NOT_FINITE, "%s grouped inf n=%lld k=%lld", takane_isa_name(isa),
                  (long long)n, (long long)k);
            free(gsc), free(y2);
            takane_ternary_weights_free(h);
            free(t), free(s), free(z), free(x), free(y);
        }
}

/* takane_ternary_weights_get_planes: the canonical planes back, bit for bit, at panel-edge
 * shapes, into a padded stride (the padding untouched), sub-ranges; and its statuses. */
static void planes(void) {
    static const int64_t shapes[][2] = {{1, 1}, {7, 64}, {8, 65}, {9, 130}, {17, 200}, {3, 0}, {0, 64}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const int64_t n = shapes[i][0], k = shapes[i][1], kw = (k + 63) / 64, st = kw + 1;
        uint64_t *s = calloc((size_t)(n * kw + 1), 8), *z = calloc((size_t)(n * kw + 1), 8);
        uint64_t *bs = malloc((size_t)(n * st + 1) * 8), *bz = malloc((size_t)(n * st + 1) * 8);
        for (int64_t j = 0; j < n * kw; j++) {
            const int64_t c = (j % kw) * 64;
            uint64_t live = k - c >= 64 ? ~UINT64_C(0) : (UINT64_C(1) << (k - c)) - 1;
            z[j] = next() & live, s[j] = next() & z[j];
        }
        takane_ternary_weights *h = NULL;
        CHECK(takane_ternary_weights_create(n, k, s, z, kw, &h) == TAKANE_OK, "planes create n=%ld k=%ld",
              (long)n, (long)k);
        for (int64_t j = 0; j < n * st + 1; j++) bs[j] = bz[j] = UINT64_C(0xABCD);
        CHECK(takane_ternary_weights_get_planes(h, 0, n, bs, bz, st) == TAKANE_OK, "get_planes n=%ld k=%ld",
              (long)n, (long)k);
        int same = 1;
        for (int64_t r = 0; r < n; r++)
            for (int64_t q = 0; q < st; q++) {
                const uint64_t ws = q < kw ? s[r * kw + q] : UINT64_C(0xABCD);
                const uint64_t wz = q < kw ? z[r * kw + q] : UINT64_C(0xABCD);
                same &= bs[r * st + q] == ws && bz[r * st + q] == wz;
            }
        CHECK(same, "get_planes bits n=%ld k=%ld", (long)n, (long)k);
        if (n > 2 && kw > 0) { /* rows [1, n - 1) only */
            CHECK(takane_ternary_weights_get_planes(h, 1, n - 1, bs, bz, kw) == TAKANE_OK, "sub-range");
            CHECK(!memcmp(bs, s + kw, (size_t)((n - 2) * kw) * 8) && !memcmp(bz, z + kw, (size_t)((n - 2) * kw) * 8),
                  "sub-range bits n=%ld k=%ld", (long)n, (long)k);
        }
        free(s), free(z), free(bs), free(bz);
        takane_ternary_weights_free(h);
    }
    uint64_t s[4] = {1, 0, 0, 0}, z[4] = {1, 0, 0, 0}, o[4], p[4];
    takane_ternary_weights *h = NULL;
    CHECK(takane_ternary_weights_create(2, 64, s, z, 1, &h) == TAKANE_OK, "create");
    CHECK(takane_ternary_weights_get_planes(NULL, 0, 1, o, p, 1) == TAKANE_ERR_NULL_POINTER, "NULL handle");
    CHECK(takane_ternary_weights_get_planes(h, -1, 1, o, p, 1) == TAKANE_ERR_NEGATIVE_DIMENSION, "r0 < 0");
    CHECK(takane_ternary_weights_get_planes(h, 1, 0, o, p, 1) == TAKANE_ERR_BAD_STRIDE, "r0 > r1");
    CHECK(takane_ternary_weights_get_planes(h, 0, 3, o, p, 1) == TAKANE_ERR_BAD_STRIDE, "r1 > n");
    CHECK(takane_ternary_weights_get_planes(h, 0, 2, o, p, 0) == TAKANE_ERR_BAD_STRIDE, "stride < kw");
    CHECK(takane_ternary_weights_get_planes(h, 0, 2, o, NULL, 1) == TAKANE_ERR_NULL_POINTER, "nonzero NULL");
    CHECK(takane_ternary_weights_get_planes(h, 1, 1, NULL, NULL, 1) == TAKANE_OK, "empty range");
    takane_ternary_weights_free(h);
}

int main(void) {
    errors();
    planes();
    const uint32_t supported = takane_isa_supported();
    for (int isa = 0; isa < 8; isa++) {
        if (!(supported & (1u << isa))) continue;
        if (takane_isa_force((takane_isa)isa) != TAKANE_OK) return 2;
        exact((takane_isa)isa);
    }
    printf("test_ternary: %ld checks, %ld failures\n", checks, failures);
    return failures != 0;
}
