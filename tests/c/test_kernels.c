/*
 * test_kernels.c — every supported SIMD kernel set against the scalar one, exactly.
 *
 * Runs through the public C API, pinning each kernel set with takane_isa_force():
 *   - shape grid: K in TEST_K, M and N at and around every register-tile edge (0
 *     included). takane_pack_f32 (per-channel, scalar and default thresholds) and both
 *     matmul entry points must give the same bits / int32 results on every SIMD set as
 *     on scalar, and scalar must equal a plain C computation of the ±1 dot products, so
 *     the baseline is anchored too. takane_isa_last_used() must name the forced set.
 *   - no overread / overwrite: rows that end exactly at an inaccessible guard page;
 *   - NaN in x at the head, middle, tail word and last element is reported, while
 *     infinities, signed zeros and x == t ties are not (and pack as the plain rule says);
 *   - a K of over a million bits, so the neon kernel crosses several u16 accumulation
 *     blocks, with every bit different (the worst case for accumulator overflow).
 *   - prepacked weights (takane_weights_create / _info / _free and both
 *     takane_binary_matmul_prepacked entry points) on scalar and every SIMD set, exact
 *     against the plain rule: M in the same grid and N at every panel (8 rows) and
 *     panel-count (1..4 + 1) edge, threads=1 and threads=2, an output row
 *     stride wider than n whose extra columns must stay untouched; guard pages on the
 *     weights read by create, on x, on the thresholds and on y; shapes big enough that
 *     threads=2 really splits rows and panels; over a million bits and exactly one u16
 *     block (2048 words) and one word more, all bits different.
 * On aarch64 neon must be supported and be the default pick: the test fails rather than
 * pass by comparing scalar with itself. Exit status 0 iff every check passed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "takane/takane.h"

static const int64_t TEST_K[] = {1, 63, 64, 65, 127, 128, 129, 511, 513, 4097};
/* Tiles are 2x4 (scalar, avx2) and 4x4 (neon, avx512), at most 8x8: cover each edge. */
static const int64_t TEST_MN[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17};
/* Prepacked N: panels of 8 weight rows, panel tiles of 1..4 panels (up to 32 columns):
 * every panel edge and every panel-count edge up to 4 panels + 1. (M uses TEST_MN: panel
 * tiles have 1..4 rows.) */
static const int64_t TEST_N_PANEL[] = {0, 1, 5, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33};
#define N_K (sizeof TEST_K / sizeof TEST_K[0])
#define N_MN (sizeof TEST_MN / sizeof TEST_MN[0])
#define N_N_PANEL (sizeof TEST_N_PANEL / sizeof TEST_N_PANEL[0])
#define BIG 17    /* largest TEST_MN */
#define WROWS 33  /* largest TEST_N_PANEL: weight rows made per K */

#include "check.h"

/* ---- deterministic inputs ------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t next_u64(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}
static float uniform(float lo, float hi) {
    return lo + (hi - lo) * (float)((double)(next_u64() >> 11) / 9007199254740992.0);
}

/* Mostly uniform values, with signed zeros, infinities and subnormals mixed in. */
static float special_or(float v) {
    switch (next_u64() % 32) {
    case 0: return 0.0f;
    case 1: return -0.0f;
    case 2: return INFINITY;
    case 3: return -INFINITY;
    case 4: return 1e-40f;  /* subnormal */
    case 5: return -1e-40f;
    default: return v;
    }
}
static void fill_x(float *x, int64_t n, const float *t, int64_t k) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = special_or(uniform(-2.0f, 2.0f));
        if (t && next_u64() % 16 == 0) x[i] = t[i % k]; /* ties: x == t packs as +1 */
    }
}

/* ---- the plain rule (DESIGN §2), written without any kernel ------------------------- */

static int64_t words_for(int64_t k) { return (k + 63) / 64; }

/* t: per-channel (t_len == k), one scalar (t_len == 1), or NULL (threshold 0). */
static void plain_pack(const float *x, int64_t k, const float *t, int64_t t_len, uint64_t *out) {
    for (int64_t q = 0; q < words_for(k); q++) out[q] = 0;
    for (int64_t c = 0; c < k; c++) {
        const float th = !t ? 0.0f : (t_len == 1 ? t[0] : t[c]);
        if (x[c] >= th) out[c / 64] |= UINT64_C(1) << (c % 64);
    }
}

static int bit(const uint64_t *row, int64_t c) { return (int)((row[c / 64] >> (c % 64)) & 1); }

/* ±1 dot product of two canonical rows, bit by bit. */
static int32_t plain_dot(const uint64_t *a, const uint64_t *b, int64_t k) {
    int64_t s = 0;
    for (int64_t c = 0; c < k; c++) s += (bit(a, c) == bit(b, c)) ? 1 : -1;
    return (int32_t)s;
}

/* ---- helpers ------------------------------------------------------------------------- */

static const char *name(takane_isa isa) { return takane_isa_name(isa); }

static void force(takane_isa isa) {
    takane_status st = takane_isa_force(isa);
    CHECK(st == TAKANE_OK, "takane_isa_force(%s): %s", name(isa), takane_status_string(st));
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* `bytes` of writable memory that end exactly where an inaccessible page begins: any
 * read or write past the end faults. Release with guarded_free. */
typedef struct guarded { void *base; size_t len; } guarded;
static void *guarded_alloc(size_t bytes, guarded *g) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t body = (bytes + page - 1) / page * page;
    g->len = body + page;
    g->base = mmap(NULL, g->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->base == MAP_FAILED || mprotect((char *)g->base + body, page, PROT_NONE) != 0) {
        fprintf(stderr, "mmap/mprotect failed\n");
        exit(2);
    }
    return (char *)g->base + body - bytes;
}
static void guarded_free(guarded *g) { munmap(g->base, g->len); }

/* ---- prepacked-weight helpers -------------------------------------------------------- */

#define CANARY 0x5a5a5a5a /* int32 written around outputs: a kernel must never touch it */

/* Create a handle for n rows and check what takane_weights_info reports about it. */
static takane_weights *make_weights(int64_t n, int64_t k, const uint64_t *w, int64_t ws) {
    takane_weights *h = NULL;
    takane_status st = takane_weights_create(n, k, w, ws, &h);
    CHECK(st == TAKANE_OK && h, "weights_create n=%lld k=%lld: %s", (long long)n, (long long)k,
          takane_status_string(st));
    if (!h) return NULL;
    int64_t hn = -1, hk = -1, bytes = -1;
    st = takane_weights_info(h, &hn, &hk, &bytes);
    /* panels of 8 rows, n rounded up, each row ceil(k/64) words */
    const int64_t want_bytes = (n + 7) / 8 * 8 * words_for(k) * 8;
    CHECK(st == TAKANE_OK && hn == n && hk == k && bytes == want_bytes,
          "weights_info n=%lld k=%lld: got n=%lld k=%lld nbytes=%lld (want %lld)", (long long)n,
          (long long)k, (long long)hn, (long long)hk, (long long)bytes, (long long)want_bytes);
    CHECK(takane_weights_info(h, NULL, NULL, NULL) == TAKANE_OK, "weights_info with NULL outs");
    return h;
}

/* One prepacked product of m rows into y (row stride ys >= n, prefilled with CANARY),
 * compared with ref (row stride ref_s) and the canary columns n..ys-1. fused: x is float
 * (t per channel, length k) instead of packed xb. */
static void run_prepacked(const takane_weights *h, takane_isa isa, int fused, int threads,
                          int64_t m, int64_t n, int64_t k, const float *x, int64_t xs,
                          const float *t, const uint64_t *xb, int64_t xbs, int32_t *y,
                          int64_t ys, const int32_t *ref, int64_t ref_s, const char *what) {
    for (int64_t e = 0; e < m * ys; e++) y[e] = CANARY;
    force(isa);
    takane_status st =
        fused ? takane_binary_matmul_prepacked_f32(h, m, x, xs, t, k, y, ys, threads)
              : takane_binary_matmul_prepacked(h, m, xb, xbs, y, ys, threads);
    CHECK(st == TAKANE_OK, "%s %s prepacked m=%lld n=%lld k=%lld fused=%d threads=%d: %s", what,
          name(isa), (long long)m, (long long)n, (long long)k, fused, threads,
          takane_status_string(st));
    if (m && n)
        CHECK(takane_isa_last_used() == isa, "%s prepacked: %s did not run (ran %s)", what,
              name(isa), name(takane_isa_last_used()));
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < ys; j++) {
            const int32_t want = j < n ? ref[i * ref_s + j] : CANARY;
            if (y[i * ys + j] != want && bad++ == 0) first = i * ys + j;
        }
    CHECK(bad == 0,
          "%s %s prepacked m=%lld n=%lld k=%lld fused=%d threads=%d: %lld wrong, first (%lld,%lld) "
          "= %d, want %d",
          what, name(isa), (long long)m, (long long)n, (long long)k, fused, threads, (long long)bad,
          (long long)(first < 0 ? 0 : first / ys), (long long)(first < 0 ? 0 : first % ys),
          first < 0 ? 0 : y[first],
          first < 0 ? 0 : (first % ys < n ? ref[first / ys * ref_s + first % ys] : CANARY));
}

/* The shape grid on the prepacked path: M in TEST_MN x N in TEST_N_PANEL, both entry
 * points, threads 1 and 2,
 * on every set in `all` (scalar included), exact against the plain rule `ref`. */
static void check_prepacked_grid(int64_t k, const float *x, const float *t, const uint64_t *xb,
                                 const uint64_t *wb, const int32_t *ref, const takane_isa *all,
                                 int n_all) {
    const int64_t kw = words_for(k), ys = WROWS + 3; /* 3+ canary columns on every row */
    int32_t *y = xmalloc(sizeof(int32_t) * (size_t)(BIG * ys));
    for (size_t b = 0; b < N_N_PANEL; b++) {
        const int64_t n = TEST_N_PANEL[b];
        takane_weights *h = make_weights(n, k, wb, kw);
        if (!h) continue;
        for (size_t a = 0; a < N_MN; a++) {
            const int64_t m = TEST_MN[a];
            for (int s = 0; s < n_all; s++)
                for (int fused = 0; fused < 2; fused++)
                    for (int threads = 1; threads <= 2; threads++)
                        run_prepacked(h, all[s], fused, threads, m, n, k, x, k, t, xb, kw, y,
                                      ys, ref, WROWS, "grid");
        }
        takane_weights_free(h);
    }
    free(y);
}

/* ---- the checks ---------------------------------------------------------------------- */

/* The shape grid at one K: every set in isas[] against scalar, scalar against plain. */
static void check_grid(int64_t k, const takane_isa *isas, int n_isas) {
    const int64_t kw = words_for(k);
    float *t = xmalloc(sizeof(float) * (size_t)k);
    float *x = xmalloc(sizeof(float) * (size_t)(BIG * k));
    float *w = xmalloc(sizeof(float) * (size_t)(WROWS * k));
    for (int64_t c = 0; c < k; c++) t[c] = special_or(uniform(-0.5f, 0.5f));
    fill_x(x, BIG * k, t, k);
    fill_x(w, WROWS * k, NULL, k);
    uint64_t *xb = xmalloc(sizeof(uint64_t) * (size_t)(BIG * kw)); /* per-channel t */
    uint64_t *xb1 = xmalloc(sizeof(uint64_t) * (size_t)(BIG * kw)); /* scalar t[0] */
    uint64_t *wb = xmalloc(sizeof(uint64_t) * (size_t)(WROWS * kw)); /* default 0 */
    for (int r = 0; r < BIG; r++) {
        plain_pack(x + r * k, k, t, k, xb + r * kw);
        plain_pack(x + r * k, k, t, 1, xb1 + r * kw);
    }
    for (int r = 0; r < WROWS; r++) plain_pack(w + r * k, k, NULL, 0, wb + r * kw);
    int32_t *ref = xmalloc(sizeof(int32_t) * BIG * WROWS); /* row stride WROWS */
    for (int i = 0; i < BIG; i++)
        for (int j = 0; j < WROWS; j++) ref[i * WROWS + j] = plain_dot(xb + i * kw, wb + j * kw, k);

    /* Packing: all BIG rows, three threshold forms. Scalar against plain, SIMD against scalar. */
    uint64_t *scalar_bits[3], *bits = xmalloc(sizeof(uint64_t) * (size_t)(BIG * kw));
    const float *src[3] = {x, x, w};
    const float *thr[3] = {t, t, NULL};
    const int64_t thr_len[3] = {k, 1, 0};
    const uint64_t *plain_bits[3] = {xb, xb1, wb};
    force(TAKANE_ISA_SCALAR);
    for (int f = 0; f < 3; f++) {
        scalar_bits[f] = xmalloc(sizeof(uint64_t) * (size_t)(BIG * kw));
        takane_status st = takane_pack_f32(BIG, k, src[f], k, thr[f], thr_len[f], scalar_bits[f], kw);
        CHECK(st == TAKANE_OK && takane_isa_last_used() == TAKANE_ISA_SCALAR, "scalar pack k=%lld", (long long)k);
        CHECK(memcmp(scalar_bits[f], plain_bits[f], sizeof(uint64_t) * (size_t)(BIG * kw)) == 0,
              "scalar pack differs from the plain rule: k=%lld threshold form %d", (long long)k, f);
    }
    for (int s = 0; s < n_isas; s++) {
        force(isas[s]);
        for (int f = 0; f < 3; f++) {
            memset(bits, 0xa5, sizeof(uint64_t) * (size_t)(BIG * kw)); /* padding must be written */
            takane_status st = takane_pack_f32(BIG, k, src[f], k, thr[f], thr_len[f], bits, kw);
            CHECK(st == TAKANE_OK && takane_isa_last_used() == isas[s], "%s pack k=%lld: %s",
                  name(isas[s]), (long long)k, takane_status_string(st));
            CHECK(memcmp(bits, scalar_bits[f], sizeof(uint64_t) * (size_t)(BIG * kw)) == 0,
                  "%s pack differs from scalar: k=%lld threshold form %d", name(isas[s]), (long long)k, f);
        }
    }

    /* Both matmul entry points at every (M, N). */
    int32_t *ys = xmalloc(sizeof(int32_t) * BIG * BIG), *yi = xmalloc(sizeof(int32_t) * BIG * BIG);
    for (size_t a = 0; a < N_MN; a++) {
        for (size_t b = 0; b < N_MN; b++) {
            const int64_t m = TEST_MN[a], n = TEST_MN[b];
            for (int fused = 0; fused < 2; fused++) {
                takane_status st;
                force(TAKANE_ISA_SCALAR);
                st = fused ? takane_binary_matmul_f32(m, n, k, x, k, t, k, wb, kw, ys, n, 1)
                           : takane_binary_matmul(m, n, k, xb, kw, wb, kw, ys, n, 1);
                CHECK(st == TAKANE_OK, "scalar matmul m=%lld n=%lld k=%lld: %s", (long long)m,
                      (long long)n, (long long)k, takane_status_string(st));
                if (m && n) CHECK(takane_isa_last_used() == TAKANE_ISA_SCALAR, "scalar did not run");
                for (int64_t i = 0; i < m; i++)
                    for (int64_t j = 0; j < n; j++)
                        CHECK(ys[i * n + j] == ref[i * WROWS + j],
                              "scalar != plain at (%lld,%lld): m=%lld n=%lld k=%lld fused=%d: %d vs %d",
                              (long long)i, (long long)j, (long long)m, (long long)n, (long long)k,
                              fused, ys[i * n + j], ref[i * WROWS + j]);
                for (int s = 0; s < n_isas; s++) {
                    force(isas[s]);
                    memset(yi, 0x5a, sizeof(int32_t) * BIG * BIG);
                    st = fused ? takane_binary_matmul_f32(m, n, k, x, k, t, k, wb, kw, yi, n, 1)
                               : takane_binary_matmul(m, n, k, xb, kw, wb, kw, yi, n, 1);
                    CHECK(st == TAKANE_OK, "%s matmul: %s", name(isas[s]), takane_status_string(st));
                    if (m && n)
                        CHECK(takane_isa_last_used() == isas[s], "%s did not run (ran %s)",
                              name(isas[s]), name(takane_isa_last_used()));
                    CHECK(memcmp(yi, ys, sizeof(int32_t) * (size_t)(m * n)) == 0,
                          "%s matmul differs from scalar: m=%lld n=%lld k=%lld fused=%d",
                          name(isas[s]), (long long)m, (long long)n, (long long)k, fused);
                }
            }
        }
    }
    /* The same grid through prepacked weights, scalar included. */
    takane_isa all[4] = {TAKANE_ISA_SCALAR};
    for (int s = 0; s < n_isas; s++) all[s + 1] = isas[s];
    check_prepacked_grid(k, x, t, xb, wb, ref, all, n_isas + 1);

    for (int f = 0; f < 3; f++) free(scalar_bits[f]);
    free(bits), free(ys), free(yi), free(ref), free(xb), free(xb1), free(wb);
    free(x), free(w), free(t);
}

/* Inputs and outputs that end exactly at a guard page: an overread or overwrite faults. */
static void check_guard_pages(int64_t k, takane_isa isa) {
    enum { M = 5, N = 5 }; /* crosses the 4-row tile edge */
    const int64_t kw = words_for(k);
    guarded gx, gt, gbits, gxb, gwb, gy;
    float *x = guarded_alloc(sizeof(float) * (size_t)(M * k), &gx);
    float *t = guarded_alloc(sizeof(float) * (size_t)k, &gt);
    uint64_t *bits = guarded_alloc(sizeof(uint64_t) * (size_t)(M * kw), &gbits);
    uint64_t *xb = guarded_alloc(sizeof(uint64_t) * (size_t)(M * kw), &gxb);
    uint64_t *wb = guarded_alloc(sizeof(uint64_t) * (size_t)(N * kw), &gwb);
    int32_t *y = guarded_alloc(sizeof(int32_t) * M * N, &gy);
    fill_x(x, M * k, NULL, k);
    for (int64_t c = 0; c < k; c++) t[c] = uniform(-0.5f, 0.5f);
    for (int r = 0; r < M; r++) plain_pack(x + r * k, k, t, k, xb + r * kw);
    float *wf = xmalloc(sizeof(float) * (size_t)k);
    for (int r = 0; r < N; r++) {
        fill_x(wf, k, NULL, k);
        plain_pack(wf, k, NULL, 0, wb + r * kw);
    }
    force(isa);
    takane_status st = takane_pack_f32(M, k, x, k, t, k, bits, kw);
    CHECK(st == TAKANE_OK && memcmp(bits, xb, sizeof(uint64_t) * (size_t)(M * kw)) == 0,
          "%s guarded pack k=%lld", name(isa), (long long)k);
    st = takane_binary_matmul(M, N, k, xb, kw, wb, kw, y, N, 1);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            CHECK(st == TAKANE_OK && y[i * N + j] == plain_dot(xb + i * kw, wb + j * kw, k),
                  "%s guarded matmul k=%lld (%d,%d)", name(isa), (long long)k, i, j);
    memset(y, 0, sizeof(int32_t) * M * N);
    st = takane_binary_matmul_f32(M, N, k, x, k, t, k, wb, kw, y, N, 1);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            CHECK(st == TAKANE_OK && y[i * N + j] == plain_dot(xb + i * kw, wb + j * kw, k),
                  "%s guarded fused matmul k=%lld (%d,%d)", name(isa), (long long)k, i, j);
    CHECK(takane_isa_last_used() == isa, "%s did not run", name(isa));
    /* Prepacked: create reads the weights up to their guard page; x, the thresholds and
     * y (no spare columns: row stride N) end at theirs. M = 5 crosses every panel_mr. */
    int32_t ref[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) ref[i * N + j] = plain_dot(xb + i * kw, wb + j * kw, k);
    takane_weights *h = make_weights(N, k, wb, kw);
    for (int fused = 0; h && fused < 2; fused++)
        for (int threads = 1; threads <= 2; threads++)
            run_prepacked(h, isa, fused, threads, M, N, k, x, k, t, xb, kw, y, N, ref, N,
                          "guarded");
    takane_weights_free(h);
    free(wf);
    guarded_free(&gx), guarded_free(&gt), guarded_free(&gbits);
    guarded_free(&gxb), guarded_free(&gwb), guarded_free(&gy);
}

/* NaN anywhere in x is reported by packing and by the fused matmul; a clean row is not. */
static void check_nan(int64_t k, takane_isa isa) {
    const int64_t kw = words_for(k);
    float *x = xmalloc(sizeof(float) * (size_t)k), *t = xmalloc(sizeof(float) * (size_t)k);
    uint64_t *bits = xmalloc(sizeof(uint64_t) * (size_t)kw), *wb = xmalloc(sizeof(uint64_t) * (size_t)kw);
    uint64_t *expect = xmalloc(sizeof(uint64_t) * (size_t)kw);
    memset(wb, 0, sizeof(uint64_t) * (size_t)kw);
    int32_t y;
    for (int64_t c = 0; c < k; c++) t[c] = -INFINITY; /* ordered: -inf >= -inf, no NaN */
    const int64_t where[] = {-1, 0, k / 2, (k / 64) * 64, k - 1}; /* -1: no NaN at all */
    force(isa);
    for (size_t p = 0; p < sizeof where / sizeof where[0]; p++) {
        if (where[p] >= k) continue; /* (k/64)*64 == k: no partial tail word */
        for (int64_t c = 0; c < k; c++) x[c] = (c % 3 == 0) ? -INFINITY : -0.0f;
        if (where[p] >= 0) x[where[p]] = NAN;
        const takane_status want = where[p] >= 0 ? TAKANE_ERR_NAN : TAKANE_OK;
        for (int form = 0; form < 3; form++) {
            const float *th = form == 2 ? NULL : t;
            const int64_t tl = form == 0 ? k : 1;
            takane_status st = takane_pack_f32(1, k, x, k, th, tl, bits, kw);
            CHECK(st == want, "%s pack NaN at %lld k=%lld form %d: %s", name(isa),
                  (long long)where[p], (long long)k, form, takane_status_string(st));
            if (want == TAKANE_OK) { /* infinities and -0.0 pack by the plain rule */
                plain_pack(x, k, th, tl, expect);
                CHECK(memcmp(bits, expect, sizeof(uint64_t) * (size_t)kw) == 0,
                      "%s pack of infinities/-0.0 k=%lld form %d", name(isa), (long long)k, form);
            }
            st = takane_binary_matmul_f32(1, 1, k, x, k, th, tl, wb, kw, &y, 1, 1);
            CHECK(st == want, "%s fused matmul NaN at %lld k=%lld form %d: %s", name(isa),
                  (long long)where[p], (long long)k, form, takane_status_string(st));
        }
    }
    free(x), free(t), free(bits), free(wb), free(expect);
}

/* Over a million bits with every bit different: the largest popcounts a row can have,
 * past several of the neon kernels' 2048-step u16 blocks; both kw parities; and exactly
 * one block of the panel kernel (2048 words). N = 11 spans two weight panels. The
 * prepacked path runs on scalar and every SIMD set against the (anchored) scalar rows. */
static void check_large_k(const takane_isa *isas, int n_isas) {
    enum { M = 5, N = 11 };
    const int64_t ks[] = {INT64_C(2048) * 64, (INT64_C(1) << 20) + 1, (INT64_C(1) << 20) + 65};
    takane_isa all[4] = {TAKANE_ISA_SCALAR};
    for (int s = 0; s < n_isas; s++) all[s + 1] = isas[s];
    for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++) {
        const int64_t k = ks[a], kw = words_for(k);
        uint64_t *xb = xmalloc(sizeof(uint64_t) * (size_t)(M * kw));
        uint64_t *wb = xmalloc(sizeof(uint64_t) * (size_t)(N * kw));
        int32_t ys[M * N], yi[M * N], yp[M * (N + 1)];
        for (int pattern = 0; pattern < 2; pattern++) {
            /* pattern 0: x all +1, w all -1 -> every product is -k; 1: random bits */
            for (int64_t q = 0; q < M * kw; q++) xb[q] = pattern ? next_u64() : ~UINT64_C(0);
            for (int64_t q = 0; q < N * kw; q++) wb[q] = pattern ? next_u64() : 0;
            const uint64_t pad = (k % 64) ? (UINT64_C(1) << (k % 64)) - 1 : ~UINT64_C(0);
            for (int r = 0; r < M; r++) xb[r * kw + kw - 1] &= pad;
            for (int r = 0; r < N; r++) wb[r * kw + kw - 1] &= pad;
            force(TAKANE_ISA_SCALAR);
            CHECK(takane_binary_matmul(M, N, k, xb, kw, wb, kw, ys, N, 1) == TAKANE_OK, "scalar large k");
            if (pattern == 0)
                for (int e = 0; e < M * N; e++) CHECK(ys[e] == -k, "scalar all-different k=%lld", (long long)k);
            else
                for (int i = 0; i < M; i++) /* spot-check scalar against the plain rule */
                    CHECK(ys[i * N + i % N] == plain_dot(xb + i * kw, wb + (i % N) * kw, k),
                          "scalar large k=%lld row %d", (long long)k, i);
            for (int s = 0; s < n_isas; s++) {
                force(isas[s]);
                CHECK(takane_binary_matmul(M, N, k, xb, kw, wb, kw, yi, N, 1) == TAKANE_OK &&
                          takane_isa_last_used() == isas[s],
                      "%s large k", name(isas[s]));
                CHECK(memcmp(yi, ys, sizeof ys) == 0, "%s large k=%lld pattern %d differs from scalar",
                      name(isas[s]), (long long)k, pattern);
            }
            takane_weights *h = make_weights(N, k, wb, kw);
            for (int s = 0; h && s < n_isas + 1; s++)
                for (int threads = 1; threads <= 2; threads++)
                    run_prepacked(h, all[s], 0, threads, M, N, k, NULL, 0, NULL, xb, kw, yp,
                                  N + 1, ys, N, "large k");
            takane_weights_free(h);
        }
        free(xb), free(wb);
    }
}

/* Shapes with m*n*k above the library's serial cutoff (2^23 bit-MACs), so threads=2
 * really runs two threads: many rows (the rows are split; 67 rows cross every panel_mr)
 * and few rows (the panels are split; 203 rows = 25 panels + 3). Row strides wider than
 * the rows, with garbage in the gaps, for x (packed and float), the weights and y. */
static void check_prepacked_threads(const takane_isa *all, int n_all) {
    const int64_t shapes[][3] = {{67, 75, 2049}, {5, 203, 8300}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int64_t m = shapes[c][0], n = shapes[c][1], k = shapes[c][2], kw = words_for(k);
        const int64_t xs = k + 1, xbs = kw + 2, ws = kw + 1, ys = n + 1;
        float *x = xmalloc(sizeof(float) * (size_t)(m * xs));
        float *t = xmalloc(sizeof(float) * (size_t)k), *wf = xmalloc(sizeof(float) * (size_t)k);
        uint64_t *xb = xmalloc(sizeof(uint64_t) * (size_t)(m * xbs));
        uint64_t *wb = xmalloc(sizeof(uint64_t) * (size_t)(n * ws));
        int32_t *ref = xmalloc(sizeof(int32_t) * (size_t)(m * n));
        int32_t *y = xmalloc(sizeof(int32_t) * (size_t)(m * ys));
        for (int64_t c2 = 0; c2 < k; c2++) t[c2] = uniform(-0.5f, 0.5f);
        for (int64_t e = 0; e < m * xs; e++) x[e] = uniform(-2.0f, 2.0f); /* gaps included */
        for (int64_t e = 0; e < m * xbs; e++) xb[e] = next_u64();           /* the gaps stay */
        for (int64_t e = 0; e < n * ws; e++) wb[e] = next_u64();
        for (int64_t i = 0; i < m; i++) plain_pack(x + i * xs, k, t, k, xb + i * xbs);
        for (int64_t j = 0; j < n; j++) {
            fill_x(wf, k, NULL, k);
            plain_pack(wf, k, NULL, 0, wb + j * ws);
        }
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                ref[i * n + j] = plain_dot(xb + i * xbs, wb + j * ws, k);
        takane_weights *h = make_weights(n, k, wb, ws);
        for (int s = 0; h && s < n_all; s++)
            for (int fused = 0; fused < 2; fused++)
                for (int threads = 1; threads <= 2; threads++)
                    run_prepacked(h, all[s], fused, threads, m, n, k, x, xs, t, xb, xbs, y, ys,
                                  ref, n, "threads");
        takane_weights_free(h);
        free(x), free(t), free(wf), free(xb), free(wb), free(ref), free(y);
    }
}

/* The handle's edges: bad padding and NULLs are refused, k == 0 gives zeros, n == 0
 * and m == 0 are no-ops, and padding in x is refused on every set. */
static void check_prepacked_edges(const takane_isa *all, int n_all) {
    const int64_t k = 65, kw = 2;
    uint64_t w[2 * 2] = {1, 1, 2, UINT64_C(1) << 1}; /* row 1's last word: bit 65 is padding */
    takane_weights *h = (takane_weights *)&h;       /* must be reset to NULL on failure */
    CHECK(takane_weights_create(2, k, w, kw, &h) == TAKANE_ERR_PADDING_BITS && h == NULL,
          "weights_create accepted padding bits");
    CHECK(takane_weights_create(2, k, w, kw, NULL) == TAKANE_ERR_NULL_POINTER,
          "weights_create with out == NULL");
    CHECK(takane_weights_info(NULL, NULL, NULL, NULL) == TAKANE_ERR_NULL_POINTER,
          "weights_info(NULL)");
    takane_weights_free(NULL); /* a no-op */
    w[3] = 1;                  /* padding clear now */
    h = make_weights(2, k, w, kw);
    uint64_t xb[2] = {3, UINT64_C(1) << 2}; /* bit 66: padding */
    int32_t y[2] = {CANARY, CANARY};
    for (int s = 0; h && s < n_all; s++) {
        force(all[s]);
        CHECK(takane_binary_matmul_prepacked(h, 1, xb, kw, y, 2, 1) == TAKANE_ERR_PADDING_BITS,
              "%s prepacked accepted padding in x", name(all[s]));
        CHECK(takane_binary_matmul_prepacked(h, 0, NULL, kw, NULL, 2, 1) == TAKANE_OK,
              "%s prepacked m=0", name(all[s]));
        CHECK(y[0] == CANARY && y[1] == CANARY, "%s prepacked wrote on error", name(all[s]));
    }
    takane_weights_free(h);
    /* n == 0: a valid empty handle; k == 0: every dot product is 0. */
    h = make_weights(0, k, NULL, kw);
    CHECK(!h || takane_binary_matmul_prepacked(h, 1, xb, kw, y, 0, 1) == TAKANE_OK, "n=0 handle");
    takane_weights_free(h);
    h = make_weights(2, 0, NULL, 0);
    const float xf[1] = {0.0f};
    for (int s = 0; h && s < n_all; s++) {
        force(all[s]);
        y[0] = y[1] = CANARY;
        CHECK(takane_binary_matmul_prepacked(h, 1, xb, 0, y, 2, 1) == TAKANE_OK && y[0] == 0 &&
                  y[1] == 0,
              "%s prepacked k=0", name(all[s]));
        y[0] = y[1] = CANARY;
        CHECK(takane_binary_matmul_prepacked_f32(h, 1, xf, 0, NULL, 0, y, 2, 1) == TAKANE_OK &&
                  y[0] == 0 && y[1] == 0,
              "%s prepacked_f32 k=0", name(all[s]));
    }
    takane_weights_free(h);
}

/* W1A8 (takane_binary_weight_matmul_prepacked_ex, Q8_0 activations) on every ISA against a
 * plain model, on inputs where every float step is exact: each 32-column block has
 * max |x| = 127 * 2^-3 (so d = 2^-3, an fp16 value, and x * (1/d) is exact), the other
 * values are halves (ties: away from zero), near-halves and integers times 2^-3, and the
 * group scales are powers of two. Then y = sum_b d * g * S_b exactly, so every ISA must
 * give the model's value bit for bit (a single q off by one would show). grouped: 0 none,
 * 1 the caller's row-major scales (G = 64), 2 a handle from Q1_0 carrying its own (G = 128,
 * stored panel-major; n = 37 leaves padding rows in the last panel). */
static void check_wq8_exact(const takane_isa *all, int n_all) {
    static const int64_t ks[] = {1, 31, 32, 33, 64, 65, 100, 200, 256, 513, 640};
    /* m = 3: the panel kernels; m = 21: the prefill GEMM where a set has one (its
     * threshold is <= 16), 5 row tiles of 4 and an edge row */
    for (size_t a = 0; a < 2 * (sizeof ks / sizeof ks[0]); a++) {
        const int64_t k = ks[a / 2], kw = words_for(k), m = a % 2 ? 21 : 3, n = 37;
        for (int grouped = 0; grouped < 3; grouped++) {
            if (grouped == 2 && k % 128 != 0) continue;
            const int64_t gsize = grouped ? 64 * grouped : 0, ng = grouped ? (k + gsize - 1) / gsize : 0;
            float *x = xmalloc((size_t)(m * k) * sizeof *x);
            float *g = xmalloc((size_t)(n * ng + 1) * sizeof *g);
            uint64_t *w = xmalloc((size_t)(n * kw) * sizeof *w);
            float *y = xmalloc((size_t)(m * n) * sizeof *y);
            double *model = xmalloc((size_t)(m * n) * sizeof *model);
            static const float frac[4] = {0.5f, -0.5f, 0.49999997f, 0.0f};
            for (int64_t i = 0; i < m * k; i++) {
                const int64_t c = i % k;
                float v = (float)((int)(next_u64() % 253) - 126) + frac[next_u64() % 4];
                if (v > 126.5f) v = 126.5f;
                if (v < -126.5f) v = -126.5f;
                if (c % 32 == 0) v = (next_u64() & 1) ? 127.0f : -127.0f;
                x[i] = v * 0.125f;
            }
            for (int64_t i = 0; i < n * ng; i++) g[i] = (float)(1 << (next_u64() % 3)) * 0.5f;
            for (int64_t i = 0; i < n * kw; i++) w[i] = next_u64();
            for (int64_t j = 0; j < n && kw; j++) w[j * kw + kw - 1] &= k % 64 ? (UINT64_C(1) << (k % 64)) - 1 : ~UINT64_C(0);
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) {
                    double acc = 0;
                    for (int64_t b = 0; b * 32 < k; b++) {
                        int64_t s = 0;
                        for (int64_t c = b * 32; c < k && c < b * 32 + 32; c++) {
                            const double v = x[i * k + c] * 8.0; /* exact */
                            const int64_t q = (int64_t)(v < 0 ? -floor(-v + 0.5) : floor(v + 0.5));
                            s += bit(w + j * kw, c) ? q : -q;
                        }
                        acc += 0.125 * (grouped ? g[j * ng + b * 32 / gsize] : 1.0) * (double)s;
                    }
                    model[i * n + j] = acc;
                }
            takane_weights *h = NULL;
            if (grouped == 2) { /* Q1_0 rows: fp16 d (0.5, 1 or 2: exact), then the words */
                const int64_t nb = k / 128;
                uint8_t *q1 = xmalloc((size_t)(n * nb * 18));
                for (int64_t j = 0; j < n; j++)
                    for (int64_t b = 0; b < nb; b++) {
                        uint8_t *blk = q1 + (j * nb + b) * 18;
                        const float gv = g[j * ng + b];
                        const uint16_t hb = gv == 0.5f ? 0x3800 : gv == 1.0f ? 0x3C00 : 0x4000;
                        blk[0] = (uint8_t)hb, blk[1] = (uint8_t)(hb >> 8);
                        memcpy(blk + 2, w + j * kw + 2 * b, 16); /* little-endian words */
                    }
                CHECK(takane_weights_from_q1_0(n, k, q1, nb * 18, NULL, 0, &h) == TAKANE_OK,
                      "wq8 from_q1_0 k=%ld", (long)k);
                free(q1);
            } else {
                h = make_weights(n, k, w, kw);
            }
            for (int s = 0; s < n_all; s++) {
                force(all[s]);
                const takane_status st = takane_binary_weight_matmul_prepacked_ex(
                    h, m, x, k, NULL, NULL, grouped == 1 ? g : NULL, grouped == 1 ? gsize : 0, NULL,
                    TAKANE_ACTIVATIONS_Q8_0, y, n, 2);
                CHECK(st == TAKANE_OK, "wq8 %s k=%ld m=%ld: %s", name(all[s]), (long)k,
                      (long)m, takane_status_string(st));
                CHECK(takane_isa_last_used() == all[s], "wq8 ran %s, not %s",
                      name(takane_isa_last_used()), name(all[s]));
                int bad = 0;
                for (int64_t i = 0; i < m * n; i++) bad += (double)y[i] != model[i];
                CHECK(bad == 0, "wq8 %s k=%ld m=%ld grouped=%d: %d outputs differ from the exact model",
                      name(all[s]), (long)k, (long)m, grouped, bad);
            }
            takane_weights_free(h);
            free(x), free(g), free(w), free(y), free(model);
        }
    }
}

/* takane_weights_create_grouped: a handle carrying row-major group scales must give the
 * same bits as a plain handle with the same scales passed per call (the kernels read the
 * panel-major copy in the same summation order), for W1A-float and W1A8, the threaded and
 * the row-range entry points, on every ISA: k at and off word and group edges (a partial
 * last group), n with a padded last panel, several group sizes. Also its errors, and the
 * handle's other uses (bits back, dequantized rows, byte count). */
static void check_grouped_handle(const takane_isa *all, int n_all) {
    static const int64_t ks[] = {1, 63, 64, 65, 200, 256, 513, 640, 1100};
    static const int64_t ns[] = {1, 7, 8, 9, 37};
    static const int64_t gsizes[] = {64, 128, 192, 256};
    for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
            for (size_t c = 0; c < sizeof gsizes / sizeof gsizes[0]; c++) {
                const int64_t k = ks[a], n = ns[b], gsize = gsizes[c], kw = words_for(k);
                const int64_t ng = (k + gsize - 1) / gsize, m = (a + b) % 2 ? 21 : 3;
                float *x = xmalloc((size_t)(m * k) * sizeof *x);
                float *g = xmalloc((size_t)(n * ng) * sizeof *g);
                uint64_t *w = xmalloc((size_t)(n * kw) * sizeof *w);
                float *y0 = xmalloc((size_t)(m * n) * sizeof *y0);
                float *y1 = xmalloc((size_t)(m * n) * sizeof *y1);
                float *dq = xmalloc((size_t)(n * k) * sizeof *dq);
                uint64_t *back = xmalloc((size_t)(n * kw) * sizeof *back);
                for (int64_t i = 0; i < m * k; i++) x[i] = uniform(-3.0f, 3.0f);
                for (int64_t i = 0; i < n * ng; i++) g[i] = uniform(-2.0f, 2.0f);
                for (int64_t i = 0; i < n * kw; i++) w[i] = next_u64();
                for (int64_t j = 0; j < n; j++)
                    if (k % 64) w[j * kw + kw - 1] &= (UINT64_C(1) << (k % 64)) - 1;
                takane_weights *plain = make_weights(n, k, w, kw), *h = NULL;
                takane_status st = takane_weights_create_grouped(n, k, w, kw, g, ng, gsize, &h);
                CHECK(st == TAKANE_OK && h, "create_grouped n=%ld k=%ld G=%ld: %s", (long)n, (long)k,
                      (long)gsize, takane_status_string(st));
                if (!h) goto done;
                int64_t nbytes = 0;
                takane_weights_info(h, NULL, NULL, &nbytes);
                CHECK(nbytes == ((n + 7) / 8) * 8 * (kw * 8 + ng * 4), "create_grouped info bytes %ld",
                      (long)nbytes);
                CHECK(takane_weights_get_bits(h, 0, n, back, kw) == TAKANE_OK &&
                          memcmp(back, w, (size_t)(n * kw) * 8) == 0,
                      "create_grouped get_bits n=%ld k=%ld", (long)n, (long)k);
                CHECK(takane_weights_dequantize_rows(h, 0, n, dq, k) == TAKANE_OK, "dequantize_rows");
                int bad = 0;
                for (int64_t j = 0; j < n; j++)
                    for (int64_t cc = 0; cc < k; cc++) {
                        const float v = g[j * ng + cc / gsize];
                        bad += dq[j * k + cc] != (bit(w + j * kw, cc) ? v : -v);
                    }
                CHECK(bad == 0, "create_grouped dequantize_rows n=%ld k=%ld: %d differ", (long)n,
                      (long)k, bad);
                /* a call's own scales with a handle that carries them: refused */
                CHECK(takane_binary_weight_matmul_prepacked_ex(h, m, x, k, NULL, NULL, g, gsize, NULL,
                                                               TAKANE_ACTIVATIONS_F32, y1, n, 1) ==
                          TAKANE_ERR_BAD_GROUP_SIZE,
                      "create_grouped: per-call scales accepted");
                for (int s = 0; s < n_all; s++) {
                    force(all[s]);
                    for (int act = 0; act < 2; act++) {
                        const int32_t mode = act ? TAKANE_ACTIVATIONS_Q8_0 : TAKANE_ACTIVATIONS_F32;
                        memset(y0, 0, (size_t)(m * n) * sizeof *y0);
                        memset(y1, 0xff, (size_t)(m * n) * sizeof *y1);
                        st = takane_binary_weight_matmul_prepacked_ex(plain, m, x, k, NULL, NULL, g, gsize,
                                                                      NULL, mode, y0, n, 2);
                        CHECK(st == TAKANE_OK, "per-call %s: %s", name(all[s]), takane_status_string(st));
                        st = takane_binary_weight_matmul_prepacked_ex(h, m, x, k, NULL, NULL, NULL, 0, NULL,
                                                                      mode, y1, n, 2);
                        CHECK(st == TAKANE_OK, "carried %s: %s", name(all[s]), takane_status_string(st));
                        CHECK(takane_isa_last_used() == all[s], "grouped ran %s, not %s",
                              name(takane_isa_last_used()), name(all[s]));
                        CHECK(memcmp(y0, y1, (size_t)(m * n) * sizeof *y0) == 0,
                              "grouped %s act=%d n=%ld k=%ld G=%ld m=%ld: carried scales differ from "
                              "per-call ones", name(all[s]), act, (long)n, (long)k, (long)gsize, (long)m);
                    }
                    /* the row-range W1A8 entry point, in two ranges (the second from a
                     * panel edge, or mid-panel when n < 8) */
                    const int64_t nb = (k + 31) / 32, r0 = n > 8 ? 8 : n / 2;
                    uint8_t *q = xmalloc((size_t)(m * nb * 34));
                    CHECK(takane_quantize_q8_0(m, k, x, k, q, nb * 34) == TAKANE_OK, "quantize");
                    const int64_t sb = takane_matmul_q8_0_scratch_size(h, m);
                    void *scr = xmalloc((size_t)sb + 64);
                    memset(y0, 0, (size_t)(m * n) * sizeof *y0);
                    memset(y1, 0xff, (size_t)(m * n) * sizeof *y1);
                    for (int part = 0; part < 2; part++) {
                        const int64_t lo = part ? r0 : 0, hi = part ? n : r0;
                        st = takane_matmul_q8_0_rows(plain, lo, hi, m, q, nb * 34, NULL, g, gsize, NULL,
                                                     y0, n, scr, sb + 64);
                        CHECK(st == TAKANE_OK, "rows per-call: %s", takane_status_string(st));
                        st = takane_matmul_q8_0_rows(h, lo, hi, m, q, nb * 34, NULL, NULL, 0, NULL, y1, n,
                                                     scr, sb + 64);
                        CHECK(st == TAKANE_OK, "rows carried: %s", takane_status_string(st));
                    }
                    CHECK(memcmp(y0, y1, (size_t)(m * n) * sizeof *y0) == 0,
                          "q8_0_rows %s n=%ld k=%ld G=%ld: carried scales differ", name(all[s]), (long)n,
                          (long)k, (long)gsize);
                    free(q), free(scr);
                }
                takane_weights_free(h);
            done:
                takane_weights_free(plain);
                free(x), free(g), free(w), free(y0), free(y1), free(dq), free(back);
            }
    /* argument checks: each error returns its status and no handle */
    uint64_t w[4] = {1, 2, 3, 4};
    float g[4] = {1, 2, 3, 4};
    takane_weights *h = (takane_weights *)&h;
#define GROUPED_ERR(expect, ...)                                                               \
    do {                                                                                       \
        h = (takane_weights *)&h;                                                              \
        const takane_status st_ = takane_weights_create_grouped(__VA_ARGS__, &h);              \
        CHECK(st_ == (expect) && h == NULL, "create_grouped(%s): %s", #__VA_ARGS__,             \
              takane_status_string(st_));                                                      \
    } while (0)
    GROUPED_ERR(TAKANE_ERR_NEGATIVE_DIMENSION, -1, 64, w, 1, g, 1, 64);
    GROUPED_ERR(TAKANE_ERR_NEGATIVE_DIMENSION, 2, -1, w, 1, g, 1, 64);
    GROUPED_ERR(TAKANE_ERR_K_TOO_LARGE, 1, (int64_t)TAKANE_MAX_K + 1, w, 1, g, 1, 64);
    GROUPED_ERR(TAKANE_ERR_BAD_GROUP_SIZE, 2, 128, w, 2, g, 2, 0);
    GROUPED_ERR(TAKANE_ERR_BAD_GROUP_SIZE, 2, 128, w, 2, g, 2, 32);
    GROUPED_ERR(TAKANE_ERR_BAD_GROUP_SIZE, 2, 128, w, 2, g, 2, -64);
    GROUPED_ERR(TAKANE_ERR_BAD_STRIDE, 2, 128, w, -2, g, 2, 64);
    GROUPED_ERR(TAKANE_ERR_BAD_STRIDE, 2, 128, w, 2, g, -2, 64);
    GROUPED_ERR(TAKANE_ERR_BAD_STRIDE, 2, 128, w, 2, g, 1, 64);
    GROUPED_ERR(TAKANE_ERR_NULL_POINTER, 2, 128, NULL, 2, g, 2, 64);
    GROUPED_ERR(TAKANE_ERR_NULL_POINTER, 2, 128, w, 2, NULL, 2, 64);
    const uint64_t wpad[4] = {1, 2, 3, UINT64_C(1) << 40}; /* row 1: bit 104 set, k = 100 */
    GROUPED_ERR(TAKANE_ERR_PADDING_BITS, 2, 100, wpad, 2, g, 2, 64);
    g[3] = NAN;
    GROUPED_ERR(TAKANE_ERR_NOT_FINITE, 2, 128, w, 2, g, 2, 64);
    g[3] = -INFINITY;
    GROUPED_ERR(TAKANE_ERR_NOT_FINITE, 2, 128, w, 2, g, 2, 64);
#undef GROUPED_ERR
    CHECK(takane_weights_create_grouped(2, 128, w, 2, g, 2, 64, NULL) == TAKANE_ERR_NULL_POINTER,
          "create_grouped out NULL");
    /* empty shapes: a handle without scales */
    CHECK(takane_weights_create_grouped(0, 128, NULL, 0, NULL, 0, 64, &h) == TAKANE_OK && h, "n = 0");
    takane_weights_free(h);
    CHECK(takane_weights_create_grouped(3, 0, NULL, 0, NULL, 0, 64, &h) == TAKANE_OK && h, "k = 0");
    takane_weights_free(h);
}

/* fp16 bits (finite) to float, exactly: the value a Q1_0 block's d means. */
static float half_value(uint16_t hb) {
    const int e = (hb >> 10) & 31, mant = hb & 1023;
    const float v = e == 0 ? ldexpf((float)mant, -24) : ldexpf((float)(mant | 1024), e - 25);
    return hb >> 15 ? -v : v;
}

/* takane_weights_get_group_scales: the row-major scales back, bit for bit, from handles
 * built by takane_weights_create_grouped (group sizes, partial last groups, padded last
 * panels) and by takane_weights_from_q1_0 (fp16 block scales widened: subnormal, -0, the
 * largest finite), for the whole range and sub-ranges at and across panel edges with a
 * padded stride (the padding untouched); and its statuses, in get_bits' order. */
static void check_group_scales_accessor(void) {
    static const int64_t ks[] = {1, 64, 65, 200, 512, 1100};
    static const int64_t ns[] = {1, 7, 8, 9, 37};
    static const int64_t gsizes[] = {64, 128, 192, 256};
    for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
            for (size_t c = 0; c < sizeof gsizes / sizeof gsizes[0]; c++) {
                const int64_t k = ks[a], n = ns[b], gsize = gsizes[c], kw = words_for(k);
                const int64_t ng = (k + gsize - 1) / gsize, gs = ng + 3; /* padded stride */
                float *g = xmalloc((size_t)(n * ng) * sizeof *g);
                float *back = xmalloc((size_t)(n * gs) * sizeof *back);
                uint64_t *w = xmalloc((size_t)(n * kw) * sizeof *w);
                for (int64_t i = 0; i < n * ng; i++) g[i] = uniform(-2.0f, 2.0f);
                if (n * ng > 2) g[1] = -0.0f, g[2] = 1e-42f; /* sign of zero, a subnormal */
                for (int64_t i = 0; i < n * kw; i++) w[i] = next_u64();
                for (int64_t j = 0; j < n; j++)
                    if (k % 64) w[j * kw + kw - 1] &= (UINT64_C(1) << (k % 64)) - 1;
                takane_weights *h = NULL;
                CHECK(takane_weights_create_grouped(n, k, w, kw, g, ng, gsize, &h) == TAKANE_OK && h,
                      "get_group_scales: create_grouped n=%ld k=%ld", (long)n, (long)k);
                if (!h) goto next;
                /* ranges: all rows; [0, min(8, n)); [n/2, n) (mid-panel start); one row */
                const int64_t lo[] = {0, 0, n / 2, n - 1}, hi[] = {n, n < 8 ? n : 8, n, n};
                for (int r = 0; r < 4; r++) {
                    for (int64_t i = 0; i < n * gs; i++) back[i] = 99.0f;
                    const takane_status st =
                        takane_weights_get_group_scales(h, lo[r], hi[r], back, gs);
                    CHECK(st == TAKANE_OK, "get_group_scales [%ld, %ld): %s", (long)lo[r],
                          (long)hi[r], takane_status_string(st));
                    int bad = 0;
                    for (int64_t j = lo[r]; j < hi[r]; j++) {
                        bad += memcmp(back + (j - lo[r]) * gs, g + j * ng, (size_t)ng * sizeof *g) != 0;
                        for (int64_t q = ng; q < gs; q++) bad += back[(j - lo[r]) * gs + q] != 99.0f;
                    }
                    for (int64_t i = (hi[r] - lo[r]) * gs; i < n * gs; i++) bad += back[i] != 99.0f;
                    CHECK(bad == 0, "get_group_scales n=%ld k=%ld G=%ld [%ld, %ld): %d rows differ",
                          (long)n, (long)k, (long)gsize, (long)lo[r], (long)hi[r], bad);
                }
                /* one row: any stride, even 0 */
                CHECK(takane_weights_get_group_scales(h, n - 1, n, back, 0) == TAKANE_OK &&
                          memcmp(back, g + (n - 1) * ng, (size_t)ng * sizeof *g) == 0,
                      "get_group_scales one row, stride 0");
                takane_weights_free(h);
            next:
                free(g), free(back), free(w);
            }
    /* Q1_0 handles: the fp16 block scales widened to float32 */
    static const uint16_t halves[] = {0x3C00, 0xBC00, 0x3555, 0x7BFF, 0xFBFF, 0x0001, 0x8000,
                                      0x0000, 0x03FF, 0x0400, 0x4000, 0xB800};
    const int64_t nh = (int64_t)(sizeof halves / sizeof halves[0]);
    for (int64_t n = 1; n <= 17; n += 8)
        for (int64_t nb = 1; nb <= 3; nb++) {
            const int64_t k = nb * 128;
            uint8_t *q1 = xmalloc((size_t)(n * nb * 18));
            float *want = xmalloc((size_t)(n * nb) * sizeof *want);
            float *back = xmalloc((size_t)(n * nb) * sizeof *back);
            for (int64_t i = 0; i < n * nb; i++) {
                const uint16_t hb = halves[(i * 5 + nb) % nh];
                uint8_t *blk = q1 + i * 18;
                blk[0] = (uint8_t)hb, blk[1] = (uint8_t)(hb >> 8);
                for (int j = 2; j < 18; j++) blk[j] = (uint8_t)next_u64();
                want[i] = half_value(hb);
            }
            takane_weights *h = NULL;
            CHECK(takane_weights_from_q1_0(n, k, q1, nb * 18, NULL, 0, &h) == TAKANE_OK && h,
                  "get_group_scales: from_q1_0");
            if (h) {
                CHECK(takane_weights_get_group_scales(h, 0, n, back, nb) == TAKANE_OK &&
                          memcmp(back, want, (size_t)(n * nb) * sizeof *want) == 0,
                      "get_group_scales of a Q1_0 handle n=%ld nb=%ld", (long)n, (long)nb);
                takane_weights_free(h);
            }
            free(q1), free(want), free(back);
        }
    /* statuses, in get_bits' order */
    uint64_t w[6] = {1, 2, 3, 4, 5, 6};
    float g[6] = {1, 2, 3, 4, 5, 6}, out[8];
    takane_weights *h = NULL, *plain = make_weights(3, 128, w, 2), *empty = NULL;
    CHECK(takane_weights_create_grouped(3, 128, w, 2, g, 2, 64, &h) == TAKANE_OK, "grouped 3x128");
    CHECK(takane_weights_create_grouped(0, 128, NULL, 0, NULL, 0, 64, &empty) == TAKANE_OK, "n = 0");
    CHECK(takane_weights_get_group_scales(NULL, 0, 1, out, 2) == TAKANE_ERR_NULL_POINTER, "NULL handle");
    CHECK(takane_weights_get_group_scales(h, -1, 1, out, 2) == TAKANE_ERR_NEGATIVE_DIMENSION, "r0 < 0");
    CHECK(takane_weights_get_group_scales(h, 0, -1, out, 2) == TAKANE_ERR_NEGATIVE_DIMENSION, "r1 < 0");
    CHECK(takane_weights_get_group_scales(h, 2, 1, out, 2) == TAKANE_ERR_BAD_STRIDE, "r0 > r1");
    CHECK(takane_weights_get_group_scales(h, 0, 4, out, 2) == TAKANE_ERR_BAD_STRIDE, "r1 > n");
    CHECK(takane_weights_get_group_scales(h, 0, 2, out, -2) == TAKANE_ERR_BAD_STRIDE, "stride < 0");
    CHECK(takane_weights_get_group_scales(h, 0, 2, out, 1) == TAKANE_ERR_BAD_STRIDE, "overlapping rows");
    CHECK(takane_weights_get_group_scales(h, 0, 2, NULL, 2) == TAKANE_ERR_NULL_POINTER, "NULL out");
    CHECK(takane_weights_get_group_scales(h, 1, 1, NULL, 2) == TAKANE_OK, "empty range, NULL out");
    CHECK(takane_weights_get_group_scales(plain, 0, 1, out, 2) == TAKANE_ERR_BAD_GROUP_SIZE,
          "a handle without scales");
    CHECK(takane_weights_get_group_scales(plain, 0, 4, out, 2) == TAKANE_ERR_BAD_STRIDE,
          "range before scales");
    CHECK(takane_weights_get_group_scales(empty, 0, 0, out, 2) == TAKANE_ERR_BAD_GROUP_SIZE,
          "an empty handle carries no scales");
    CHECK(takane_weights_get_group_scales(h, 1, 3, out, 2) == TAKANE_OK &&
              memcmp(out, g + 2, 4 * sizeof *g) == 0,
          "rows 1..3");
    takane_weights_free(h), takane_weights_free(plain), takane_weights_free(empty);
}

int main(void) {
    const uint32_t supported = takane_isa_supported();
    /* The SIMD sets to compare with scalar, best first. */
    const takane_isa simd[] = {TAKANE_ISA_AVX512, TAKANE_ISA_AVX2, TAKANE_ISA_NEON};
    takane_isa isas[3];
    int n_isas = 0;
    for (size_t i = 0; i < sizeof simd / sizeof simd[0]; i++)
        if (supported & (1u << simd[i])) isas[n_isas++] = simd[i];
    CHECK(supported & (1u << TAKANE_ISA_SCALAR), "scalar not supported");
#if defined(__aarch64__)
    CHECK(supported & (1u << TAKANE_ISA_NEON), "neon is baseline on aarch64 but not supported");
    if (!getenv("TAKANE_ISA"))
        CHECK(takane_isa_active() == TAKANE_ISA_NEON, "default pick on aarch64 is %s, not neon",
              name(takane_isa_active()));
#endif
    printf("takane %s: comparing against scalar:", takane_version_string());
    for (int s = 0; s < n_isas; s++) printf(" %s", name(isas[s]));
    printf("%s\n", n_isas ? "" : " (none: this CPU runs scalar only; scalar vs plain C only)");

    for (size_t a = 0; a < N_K; a++) check_grid(TEST_K[a], isas, n_isas);
    for (size_t a = 0; a < N_K; a++) {
        check_guard_pages(TEST_K[a], TAKANE_ISA_SCALAR);
        check_nan(TEST_K[a], TAKANE_ISA_SCALAR);
        for (int s = 0; s < n_isas; s++) {
            check_guard_pages(TEST_K[a], isas[s]);
            check_nan(TEST_K[a], isas[s]);
        }
    }
    check_large_k(isas, n_isas);
    takane_isa all[4] = {TAKANE_ISA_SCALAR};
    for (int s = 0; s < n_isas; s++) all[s + 1] = isas[s];
    check_prepacked_threads(all, n_isas + 1);
    check_prepacked_edges(all, n_isas + 1);
    check_wq8_exact(all, n_isas + 1);
    check_grouped_handle(all, n_isas + 1);
    check_group_scales_accessor();
    force(TAKANE_ISA_AUTO);

    printf("%ld checks, %ld failed\n", checks, failures);
    return failures ? 1 : 0;
}
