/*
 * test_alloc.c — the handle memory allocator (csrc/src/alloc.c): takane_panels_alloc /
 * takane_panels_free, white-box through the internal takane_alloc_stats hook.
 *
 * Checked: 64-byte alignment of every block, 2 MiB alignment of those with a mapping of
 * their own (>= 16 MiB) and of a fresh slab's first block, blocks packed in a slab; reuse
 * of freed space (first fit: a freed block's place is the next block's); many sizes in
 * random alloc/free order with every block filled with its own byte and verified before it
 * is freed (any overlap between live blocks shows); the stats (blocks and bytes live)
 * after every step; the whole 2 MiB pages of a freed gap released (they read zero again);
 * the spare slab serving a block made and freed again and again; concurrent threads; a fork() while another thread allocates (the child allocates and
 * frees too: a lock inherited held would hang it, caught by alarm()); TAKANE_HUGE_SLABS=0
 * giving plain blocks, and a block freed after the variable changed; and after all frees,
 * no big block and no slab left mapped but the spare, with at most one 2 MiB page resident. In a build without slabs (AddressSanitizer, not
 * Linux) the same calls run and the checks of the slab layout are left out, saying so.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../csrc/src/internal.h"

#define MIB ((size_t)1 << 20)
#define SLAB_BLOCK_MAX (16 * MIB) /* alloc.c: blocks this large or larger get a mapping each */

#include "check.h"

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* log-uniform sizes from 1 byte to ~3 MiB (slab blocks, some straddling 2 MiB pages), and
 * one in 64 from 14 to 20 MiB (around SLAB_BLOCK_MAX: slab blocks and big ones) */
static size_t random_size(uint64_t *s) {
    if (next(s) % 64 == 0) return 14 * MIB + (size_t)(next(s) % (6 * MIB));
    const int bits = (int)(next(s) % 22); /* 2^0 .. 2^21 */
    return 1 + (size_t)(next(s) % ((size_t)3 << bits >> 1));
}

static size_t rounded(size_t b) { return b == 0 ? 64 : (b + 63) / 64 * 64; }

typedef struct {
    unsigned char *p;
    size_t size;
    unsigned char tag;
} block;

static void fill(block *b) { memset(b->p, b->tag, b->size); }

/* every byte still its tag (only the first and last 4 KiB and a stride in between for the
 * big ones: the check is for overlaps, which touch a block's ends) */
static int intact(const block *b) {
    const size_t step = b->size > 65536 ? 4093 : 1;
    for (size_t i = 0; i < b->size; i += step)
        if (b->p[i] != b->tag) return 0;
    for (size_t i = b->size > 4096 ? b->size - 4096 : 0; i < b->size; i++)
        if (b->p[i] != b->tag) return 0;
    return 1;
}

static int slabs; /* blocks come from slabs: the build has them (takane_alloc_stats says
                   * so) and the environment does not turn them off */
static const char *env_at_start; /* TAKANE_HUGE_SLABS as the test found it */
static int dontneed_works; /* the platform honours MADV_DONTNEED (not every emulator does) */

static void stats_now(takane_alloc_stats_t *s) { takane_alloc_stats(s); }

/* Everything freed: no block, no big mapping, and of the slabs only the spare (at most
 * one, alloc.c keeps it for the next block) with at most its first 2 MiB page resident. */
static void check_empty(const char *when) {
    takane_alloc_stats_t s;
    stats_now(&s);
    CHECK(s.slab_blocks == 0 && s.slab_used_bytes == 0 && s.big_blocks == 0 && s.big_bytes == 0 &&
              s.slabs == s.spare_slabs && s.spare_slabs <= 1 && s.slab_touched_bytes <= (int64_t)(2 * MIB),
          "%s: still mapped: %lld slabs (%lld spare, %lld bytes, %lld blocks, %lld bytes below the "
          "high-water marks), %lld big blocks", when, (long long)s.slabs, (long long)s.spare_slabs,
          (long long)s.slab_bytes, (long long)s.slab_blocks, (long long)s.slab_touched_bytes,
          (long long)s.big_blocks);
}

/* The live set against the stats: every live block counted, bytes rounded to 64. */
static void check_stats(const block *live, int n) {
    if (!slabs) return;
    int64_t small = 0, small_bytes = 0, big = 0;
    for (int i = 0; i < n; i++) {
        if (rounded(live[i].size) < SLAB_BLOCK_MAX) small++, small_bytes += (int64_t)rounded(live[i].size);
        else big++;
    }
    takane_alloc_stats_t s;
    stats_now(&s);
    CHECK(s.slab_blocks == small && s.slab_used_bytes == small_bytes && s.big_blocks == big,
          "stats: %lld/%lld small blocks, %lld/%lld bytes, %lld/%lld big", (long long)s.slab_blocks,
          (long long)small, (long long)s.slab_used_bytes, (long long)small_bytes,
          (long long)s.big_blocks, (long long)big);
    CHECK(s.slab_bytes % (int64_t)(2 * MIB) == 0 && s.slab_used_bytes <= s.slab_bytes,
          "slab bytes %lld (used %lld) not whole 2 MiB pages", (long long)s.slab_bytes,
          (long long)s.slab_used_bytes);
}

static int alloc_block(block *b, size_t size, unsigned char tag) {
    b->p = (unsigned char *)takane_panels_alloc(size);
    b->size = size, b->tag = tag;
    CHECK(b->p != NULL, "takane_panels_alloc(%zu) failed", size);
    if (!b->p) return 0;
    CHECK(((uintptr_t)b->p & 63) == 0, "block of %zu bytes at %p: not 64-byte aligned", size, (void *)b->p);
    if (slabs && rounded(size) >= SLAB_BLOCK_MAX)
        CHECK(((uintptr_t)b->p & (2 * MIB - 1)) == 0, "big block of %zu bytes at %p: not 2 MiB-aligned",
              size, (void *)b->p);
    fill(b);
    return 1;
}

static void free_block(block *b) {
    CHECK(intact(b), "block of %zu bytes (tag %d) overwritten: overlapping blocks?", b->size, b->tag);
    takane_panels_free(b->p);
    b->p = NULL;
}

/* Random alloc/free order over many sizes; the live set checked at every step. */
#define MAX_LIVE 96
static void test_random_order(uint64_t seed, int steps) {
    block live[MAX_LIVE];
    int n = 0;
    for (int step = 0; step < steps; step++) {
        const int do_alloc = n == 0 || (n < MAX_LIVE && next(&seed) % 100 < 55);
        if (do_alloc) {
            if (alloc_block(&live[n], random_size(&seed), (unsigned char)(1 + step % 251))) n++;
        } else {
            const int i = (int)(next(&seed) % (uint64_t)n);
            free_block(&live[i]);
            live[i] = live[--n];
        }
        if (step % 16 == 0) check_stats(live, n);
    }
    check_stats(live, n);
    while (n > 0) {
        const int i = (int)(next(&seed) % (uint64_t)n);
        free_block(&live[i]);
        live[i] = live[--n];
    }
    check_empty("after the random order");
}

/* The 64-byte rounding around small sizes, 2 MiB (a huge page), SLAB_BLOCK_MAX. */
static void test_sizes(void) {
    static const size_t sizes[] = {0, 1, 63, 64, 65, 127, 128, 4095, 4096, 4097, 65536, 1400832,
                                   2 * MIB - 65, 2 * MIB - 64, 2 * MIB - 1, 2 * MIB, 2 * MIB + 1,
                                   3 * MIB + 4096, 5 * MIB, 16 * MIB - 64, 16 * MIB, 16 * MIB + 1,
                                   20 * MIB + 4096};
    const int n = (int)(sizeof sizes / sizeof *sizes);
    block b[sizeof sizes / sizeof *sizes];
    for (int i = 0; i < n; i++) {
        /* size 0 is a valid (unique, 64-byte) block: fill() writes nothing into it */
        if (!alloc_block(&b[i], sizes[i], (unsigned char)(i + 1))) return;
    }
    check_stats(b, n);
    for (int i = 0; i < n; i++) free_block(&b[i]);
    check_empty("after the size boundaries");
}

/* First fit: a freed block's place is taken by the next block that fits there; a slab is
 * packed from its start; a freed gap's whole 2 MiB pages are released. */
static void test_reuse(void) {
    block a[4];
    for (int i = 0; i < 4; i++)
        if (!alloc_block(&a[i], MIB, (unsigned char)(10 + i))) return;
    if (slabs) {
        CHECK(((uintptr_t)a[0].p & (2 * MIB - 1)) == 0, "a fresh slab's first block is not 2 MiB-aligned");
        for (int i = 1; i < 4; i++)
            CHECK(a[i].p == a[0].p + i * MIB, "block %d at +%td, not packed at +%zu", i,
                  a[i].p - a[0].p, i * MIB);
    }
    unsigned char *const old1 = a[1].p;
    free_block(&a[1]);
    block c;
    if (!alloc_block(&c, MIB - 4096, 20)) return;
    if (slabs) CHECK(c.p == old1, "the freed place was not reused: %p, not %p", (void *)c.p, (void *)old1);
    free_block(&c);
    for (int i = 0; i < 4; i++)
        if (i != 1) free_block(&a[i]);
    /* a gap of 3 whole 2 MiB pages (>= RELEASE_MIN_PAGES) with a block still live after it:
     * they go back to the OS and read zero again (white-box: our own mapping, still mapped
     * since `tail` is live). The only slab now is the spare: `plug` fills it, so `big`
     * starts a new slab (of at least 8 MiB) and `tail` follows it there. */
    takane_alloc_stats_t st;
    stats_now(&st);
    block plug, big, tail;
    const size_t plug_bytes = slabs ? (size_t)st.slab_bytes : 64;
    if (slabs) CHECK(st.slabs == 1 && st.spare_slabs == 1, "%lld slabs, %lld spare: not just the spare",
                     (long long)st.slabs, (long long)st.spare_slabs);
    if (!alloc_block(&plug, plug_bytes, 23) || !alloc_block(&big, 7 * MIB, 21) || !alloc_block(&tail, 64, 22))
        return;
    if (slabs) CHECK(tail.p == big.p + 7 * MIB, "a block after 7 MiB at +%td, not packed", tail.p - big.p);
    unsigned char *const page = big.p;
    free_block(&plug); /* its slab becomes the spare */
    free_block(&big);
    if (slabs && dontneed_works) {
        size_t nonzero = 0;
        for (size_t i = 0; i < 6 * MIB; i += 512) nonzero += page[i] != 0;
        CHECK(nonzero == 0, "3 freed whole 2 MiB pages were not released (%zu of 12288 probes nonzero)", nonzero);
    }
    free_block(&tail); /* its slab is unmapped: there is a spare already */
    check_empty("after the reuse test");
}

/* A block made and freed again and again (a per-call temporary handle) while nothing else
 * is live: the spare slab serves it every time, at the same place, no page released. */
static void test_spare(void) {
    block first;
    if (!alloc_block(&first, 512 * 1024, 51)) return;
    unsigned char *const where = first.p;
    takane_alloc_stats_t s0, s;
    stats_now(&s0);
    free_block(&first);
    for (int i = 0; i < 200; i++) {
        block b;
        if (!alloc_block(&b, 512 * 1024 - 64 * (size_t)(i % 7), (unsigned char)(52 + i % 100))) return;
        if (slabs) CHECK(b.p == where, "round %d: the temporary moved (%p, not %p)", i, (void *)b.p, (void *)where);
        free_block(&b);
    }
    stats_now(&s);
    if (slabs)
        CHECK(s.slabs == s0.slabs && s.slabs == 1 && s.spare_slabs == 1, "slabs %lld (spare %lld), before %lld",
              (long long)s.slabs, (long long)s.spare_slabs, (long long)s0.slabs);
    check_empty("after the spare test");
}

/* TAKANE_HUGE_SLABS=0: plain blocks, never in a slab; blocks freed after the variable
 * changed either way go where they came from. */
static void test_env_switch(void) {
    block on, off;
    if (!alloc_block(&on, 100000, 31)) return;
    setenv("TAKANE_HUGE_SLABS", "0", 1);
    if (!alloc_block(&off, 100000, 32)) return;
    takane_alloc_stats_t s;
    stats_now(&s);
    if (slabs) CHECK(s.slab_blocks == 1, "TAKANE_HUGE_SLABS=0: %lld slab blocks, not 1", (long long)s.slab_blocks);
    free_block(&on); /* a slab block, freed with slabs off */
    if (env_at_start) setenv("TAKANE_HUGE_SLABS", env_at_start, 1);
    else unsetenv("TAKANE_HUGE_SLABS");
    free_block(&off); /* a plain block, freed with slabs on */
    check_empty("after the TAKANE_HUGE_SLABS switch");
}

/* Threads allocating and freeing at once, each with its own live set and tags. */
typedef struct {
    uint64_t seed;
    int steps;
    long fails;
} worker_arg;

static void *worker(void *argp) {
    worker_arg *a = (worker_arg *)argp;
    block live[24];
    int n = 0;
    for (int step = 0; step < a->steps; step++) {
        if (n == 0 || (n < 24 && next(&a->seed) % 2)) {
            block *b = &live[n];
            b->size = random_size(&a->seed), b->tag = (unsigned char)(next(&a->seed) | 1);
            b->p = (unsigned char *)takane_panels_alloc(b->size);
            if (!b->p || ((uintptr_t)b->p & 63)) {
                a->fails++;
                if (b->p) takane_panels_free(b->p);
                continue;
            }
            fill(b);
            n++;
        } else {
            const int i = (int)(next(&a->seed) % (uint64_t)n);
            if (!intact(&live[i])) a->fails++;
            takane_panels_free(live[i].p);
            live[i] = live[--n];
        }
    }
    while (n > 0) {
        if (!intact(&live[--n])) a->fails++;
        takane_panels_free(live[n].p);
    }
    return NULL;
}

static void test_threads(void) {
    enum { T = 4 };
    pthread_t t[T];
    worker_arg a[T];
    for (int i = 0; i < T; i++) {
        a[i].seed = 0x9E3779B97F4A7C15u * (uint64_t)(i + 1), a[i].steps = 1500, a[i].fails = 0;
        CHECK(pthread_create(&t[i], NULL, worker, &a[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < T; i++) {
        pthread_join(t[i], NULL);
        CHECK(a[i].fails == 0, "thread %d: %ld failed allocations or overwritten blocks", i, a[i].fails);
    }
    check_empty("after the threads");
}

/* fork() while another thread allocates: the child must be able to allocate and free (a
 * lock inherited held would hang it: alarm() turns that into a failure) and to free a
 * block inherited from the parent. */
static volatile int stop_churn;
static void *churn(void *unused) {
    (void)unused;
    uint64_t s = 12345;
    while (!__atomic_load_n(&stop_churn, __ATOMIC_RELAXED)) {
        void *p = takane_panels_alloc(random_size(&s));
        if (p) memset(p, 7, 64);
        takane_panels_free(p);
    }
    return NULL;
}

static void test_fork(void) {
    block inherited;
    if (!alloc_block(&inherited, 300000, 41)) return;
    /* TAKANE_TEST_FORK_NO_THREAD (tests/c/CMakeLists.txt, cross builds): no churn thread */
    const int with_thread = getenv("TAKANE_TEST_FORK_NO_THREAD") == NULL;
    pthread_t t;
    stop_churn = 0;
    if (with_thread) CHECK(pthread_create(&t, NULL, churn, NULL) == 0, "pthread_create");
    else printf("test_alloc: TAKANE_TEST_FORK_NO_THREAD: fork from a single-threaded process\n");
    for (int round = 0; round < 40; round++) {
        const pid_t pid = fork();
        if (pid == 0) {
            alarm(20);
            int ok = intact(&inherited);
            takane_panels_free(inherited.p);
            uint64_t s = (uint64_t)round + 1;
            for (int i = 0; i < 20; i++) {
                void *p = takane_panels_alloc(random_size(&s));
                ok &= p != NULL;
                takane_panels_free(p);
            }
            takane_alloc_stats_t st;
            takane_alloc_stats(&st);
            /* the churn thread's block live at the fork, if any, stays (its owner does not
             * exist here); nothing else */
            ok &= st.slab_blocks + st.big_blocks <= 1;
            _exit(ok ? 0 : 3);
        }
        CHECK(pid > 0, "fork failed");
        if (pid <= 0) break;
        int status = 0;
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "forked child %d: %s %d (3: blocks wrong, SIGALRM: hung on the allocator lock)", round,
              WIFEXITED(status) ? "exit" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    }
    __atomic_store_n(&stop_churn, 1, __ATOMIC_RELAXED);
    if (with_thread) pthread_join(t, NULL);
    free_block(&inherited);
    check_empty("after the fork test");
}

/* Whether MADV_DONTNEED empties a private anonymous page here (qemu-user may ignore it). */
static int probe_dontneed(void) {
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *p = (unsigned char *)mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 0;
    p[0] = 1;
    const int ok = madvise(p, pg, MADV_DONTNEED) == 0 && ((volatile unsigned char *)p)[0] == 0;
    munmap(p, pg);
    return ok;
}

int main(void) {
    takane_alloc_stats_t s;
    takane_alloc_stats(&s);
    env_at_start = getenv("TAKANE_HUGE_SLABS");
    if (env_at_start) env_at_start = strdup(env_at_start); /* setenv may reuse the storage */
    const int env_off = env_at_start && strcmp(env_at_start, "0") == 0;
    slabs = s.slabs_built && !env_off;
    dontneed_works = probe_dontneed();
    if (!slabs)
        printf("test_alloc: %s: plain blocks; the slab layout checks are left out\n",
               env_off ? "TAKANE_HUGE_SLABS=0" : "this build has no slabs (AddressSanitizer or not Linux)");
    else if (!dontneed_works)
        printf("test_alloc: MADV_DONTNEED is not honoured here (an emulator?): the page release check is left out\n");
    check_empty("at start");
    test_reuse();
    test_sizes();
    test_spare();
    test_env_switch();
    test_random_order(0x2545F4914F6CDD1Du, 4000);
    test_random_order(42, 4000);
    test_threads();
    test_fork();
    printf("test_alloc: %ld checks, %ld failures (slabs %s)\n", checks, failures, slabs ? "on" : "off");
    return failures ? 1 : 0;
}
