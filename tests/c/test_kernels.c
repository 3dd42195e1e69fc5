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
#define N_K (sizeof TEST_K / sizeof TEST_K[0])
#define N_MN (sizeof TEST_MN / sizeof TEST_MN[0])
#define BIG 17 /* largest TEST_MN */

static long checks, failures;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            if (failures++ < 25) {                                                         \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                       \
                fprintf(stderr, __VA_ARGS__);                                              \
                fputc('\n', stderr);                                                       \
            }                                                                              \
        }                                                                                  \
    } while (0)

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

/* ---- the checks ---------------------------------------------------------------------- */

/* The shape grid at one K: every set in isas[] against scalar, scalar against plain. */
static void check_grid(int64_t k, const takane_isa *isas, int n_isas) {
    const int64_t kw = words_for(k);
    float *t = xmalloc(sizeof(float) * (size_t)k);
    float *x = xmalloc(sizeof(float) * (size_t)(BIG * k));
    float *w = xmalloc(sizeof(float) * (size_t)(BIG * k));
    for (int64_t c = 0; c < k; c++) t[c] = special_or(uniform(-0.5f, 0.5f));
    fill_x(x, BIG * k, t, k);
    fill_x(w, BIG * k, NULL, k);
    uint64_t *xb = xmalloc(sizeof(uint64_t) * (size_t)(BIG * kw)); /* per-channel t */
    uint64_t *xb1 = xmalloc(sizeof(uint64_t) * (size_t)(BIG * kw)); /* scalar t[0] */
    uint64_t *wb = xmalloc(sizeof(uint64_t) * (size_t)(BIG * kw)); /* default 0 */
    for (int r = 0; r < BIG; r++) {
        plain_pack(x + r * k, k, t, k, xb + r * kw);
        plain_pack(x + r * k, k, t, 1, xb1 + r * kw);
        plain_pack(w + r * k, k, NULL, 0, wb + r * kw);
    }
    int32_t *ref = xmalloc(sizeof(int32_t) * BIG * BIG);
    for (int i = 0; i < BIG; i++)
        for (int j = 0; j < BIG; j++) ref[i * BIG + j] = plain_dot(xb + i * kw, wb + j * kw, k);

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
                        CHECK(ys[i * n + j] == ref[i * BIG + j],
                              "scalar != plain at (%lld,%lld): m=%lld n=%lld k=%lld fused=%d: %d vs %d",
                              (long long)i, (long long)j, (long long)m, (long long)n, (long long)k,
                              fused, ys[i * n + j], ref[i * BIG + j]);
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
 * past several of the neon kernel's 2048-step u16 blocks; both kw parities. */
static void check_large_k(const takane_isa *isas, int n_isas) {
    enum { M = 5, N = 6 };
    const int64_t ks[] = {(INT64_C(1) << 20) + 1, (INT64_C(1) << 20) + 65};
    for (size_t a = 0; a < 2; a++) {
        const int64_t k = ks[a], kw = words_for(k);
        uint64_t *xb = xmalloc(sizeof(uint64_t) * (size_t)(M * kw));
        uint64_t *wb = xmalloc(sizeof(uint64_t) * (size_t)(N * kw));
        int32_t ys[M * N], yi[M * N];
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
        }
        free(xb), free(wb);
    }
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
    force(TAKANE_ISA_AUTO);

    printf("%ld checks, %ld failed\n", checks, failures);
    return failures ? 1 : 0;
}
