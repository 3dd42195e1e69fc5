/*
 * alloc.c — the memory of weight handles: takane_panels_alloc / takane_panels_free.
 *
 * Why: a decode step streams every weight panel from DRAM once per token, and with 4 KiB
 * pages each 4 KiB of panels costs a TLB entry (and page walks once the STLB is full: a
 * 1B-class model is ~150 MB = ~37,000 pages). Backing every handle with 2 MiB transparent
 * huge pages measured 2-13% less time per decoded token than huge pages for the handles
 * of 2 MiB or more only (bench/huge_slabs_ab.py, docs/guide/llm.md). Most handles of
 * an LLM are below 2 MiB (a 2048 x 2048 matrix is 512 KB of signs) and others just above
 * (a fused gate/up pair, 2.9-3.5 MB), so a huge page per handle would waste up to 2 MiB
 * each, and a mapping per handle would leave each one's last partial 2 MiB in small pages
 * (30% of a 2.9 MB block); instead blocks are packed into shared huge-page slabs.
 *
 * Linux (the one place transparent huge pages exist and can be asked for):
 *   - a block below SLAB_BLOCK_MAX (16 MiB, after rounding to 64 bytes) is sub-allocated
 *     from a slab: an anonymous mapping, 2 MiB-aligned, a multiple of 2 MiB long and
 *     advised MADV_HUGEPAGE as a whole. A new slab is as large as all slabs mapped so far,
 *     at least 4 MiB and at most 64 MiB (few mappings for a big model, little address
 *     space for a small program), and at least the block. Blocks straddle 2 MiB
 *     boundaries freely: every page of a slab is a huge page alike.
 *   - a larger block gets its own mapping: 2 MiB-aligned, its whole 2 MiB pages advised
 *     MADV_HUGEPAGE, the tail (< 2 MiB, under 1/8 of the block) left in base pages, so no
 *     physical memory is wasted on it.
 *   Placement: each slab keeps its used extents (offset, length) sorted by offset; an
 *   allocation takes the first gap large enough, trying slabs in the order they were
 *   mapped (first fit). Free gaps are implicit (the space between used extents), so
 *   freeing is coalescing: removing the extent joins its neighbours' gaps. After a free,
 *   the whole 2 MiB pages of the joined gap that may be resident (below the slab's
 *   high-water mark `touched`) are given back to the OS (MADV_DONTNEED; the mapping stays,
 *   a later block there faults fresh pages in) when there are at least RELEASE_MIN_PAGES
 *   (2) of them: a block made and freed on every call (takane_binary_weight_matmul_ex's
 *   temporary handle, placed where the used part of a slab ends) then does not fault in
 *   and zero a fresh 2 MiB page on every call, while freeing a model gives its memory
 *   back. A slab
 *   with no used extent left is unmapped, except one: the spare, kept with its first
 *   2 MiB page resident (the rest released), so a process whose only handles are such
 *   temporaries does not map, fault and unmap a slab per call (0.7 -> 71 us for a 64 x
 *   256 call). The metadata lives outside the slabs (malloc), so a slab is all payload
 *   and none of our bookkeeping touches its pages.
 *
 * Invariants (under `lock`):
 *   - regions[0, nregions) are disjoint mappings; a slab's extents are sorted, disjoint,
 *     each inside [0, len), offsets and lengths multiples of 64 (so every block is 64-byte
 *     aligned, as one aligned 512-bit load per panel word-group needs), used_bytes is
 *     their sum; at most one slab has no extent (the spare; another empty one is
 *     unmapped at once), and only its first 2 MiB page may be resident.
 *   - a slab's pages at or past `touched` (a multiple of 2 MiB) are not resident: no
 *     extent reached them since they were mapped or last released.
 *   - in a free gap of a slab, fewer than RELEASE_MIN_PAGES whole 2 MiB pages are
 *     resident (checked on every free that forms or widens a gap; gaps never grow
 *     otherwise).
 *   - a pointer this file returned is either the start of exactly one extent or big
 *     block, or (no slabs: see below) a plain aligned_alloc block found in no region.
 *
 * Worst-case waste:
 *   - resident memory of a slab is at most the 2 MiB pages its used extents overlap plus
 *     one whole free page per gap: at most the used bytes plus 3 x 2 MiB per maximal run
 *     of adjacent used extents (a run's first and last page may be only partly used, and
 *     the gap after it may keep one page); plus the spare's one page. First fit packs
 *     blocks from the start of each slab, so for blocks allocated and never freed that is
 *     one partly used page at the end of the used part of each slab (a slab that had no
 *     room left for the next block ends in a gap smaller than that block, never touched so
 *     not resident).
 *   - address space: a slab's unused pages (never touched, not resident), and for a big
 *     block its length rounded up to the base page size.
 *   - time: allocation and free scan the regions and a slab's extents linearly. Handle
 *     creation is rare (once per weight matrix) and costs a pass over the weights anyway.
 *
 * Plain aligned_alloc (one block of its own, 64-byte aligned, 4 KiB pages) is used
 *   - when the library is built with AddressSanitizer (__SANITIZE_ADDRESS__ or
 *     __has_feature(address_sanitizer)): ASan then sees each block's bounds and reports a
 *     kernel reading past a handle's panels, which a slab would hide;
 *   - when the environment has TAKANE_HUGE_SLABS=0 (read at each allocation; allocations
 *     are rare): valgrind's memcheck (.ci/robust.sh) likewise, and an A/B of the effect;
 *   - off Linux (no transparent huge pages to ask for).
 * takane_panels_free tells the kinds apart by looking the pointer up in the regions, so
 * switching the environment variable between an allocation and its free is harmless.
 *
 * Thread safety: one mutex around every operation. fork(): the prepare handler takes the
 * lock, so the child never inherits it held by a thread that does not exist there; the
 * parent releases it, the child re-initialises it (it is then its only thread, as in
 * threads.c). The child keeps copy-on-write copies of the slabs at the same addresses and
 * the matching metadata, so it frees its inherited handles normally.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define TAKANE_ALLOC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TAKANE_ALLOC_ASAN 1
#endif
#endif

#if defined(__linux__) && !defined(TAKANE_ALLOC_ASAN)
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#if defined(MADV_HUGEPAGE) && defined(MADV_DONTNEED)
#define TAKANE_ALLOC_SLABS 1
#endif
#endif

#define BLOCK_ALIGN ((size_t)64)

static void *plain_alloc(size_t bytes) {
    /* C11: the size a multiple of the alignment (bytes > 0 here) */
    return aligned_alloc(BLOCK_ALIGN, bytes);
}

#if defined(TAKANE_ALLOC_SLABS)

#define HUGE_BYTES ((size_t)2 << 20)
#define SLAB_MIN_BYTES ((size_t)4 << 20)
#define SLAB_MAX_BYTES ((size_t)64 << 20)
#define SLAB_BLOCK_MAX ((size_t)16 << 20) /* blocks this large or larger: a mapping each */
#define RELEASE_MIN_PAGES 2 /* whole free 2 MiB pages in a gap worth a MADV_DONTNEED */

typedef struct {
    size_t off, len; /* bytes from the slab's base; multiples of 64 */
} extent;

typedef struct {
    char *base;
    size_t len;      /* mapped bytes: a multiple of 2 MiB (slab) or of the page size (big) */
    int slab;        /* 1: a slab of sub-allocated blocks; 0: one big block at base */
    extent *used;    /* slab: used extents, sorted by offset */
    size_t nused, capused, used_bytes;
    size_t touched;  /* slab: pages at or past this offset (a multiple of 2 MiB) are not resident */
} region;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static region *regions;
static size_t nregions, capregions;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_prepare(void) { pthread_mutex_lock(&lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&lock); }
static void atfork_child(void) { pthread_mutex_init(&lock, NULL); }
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* Every taker of the lock registers the fork handlers first (a free with slabs turned off
 * takes it too, to look the pointer up: a fork then must not copy it held). */
static void lock_allocator(void) {
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&lock);
}

static int slabs_enabled(void) {
    const char *env = getenv("TAKANE_HUGE_SLABS");
    return !(env && strcmp(env, "0") == 0);
}

static size_t page_bytes(void) {
    const long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (size_t)p : 4096;
}

/* A fresh anonymous mapping of len bytes (a multiple of the page size) starting on a
 * 2 MiB boundary, or NULL: map 2 MiB more than needed and unmap the unaligned head and the
 * rest of the tail (the kernel places a mapping on a page boundary only). */
static char *map_huge_aligned(size_t len) {
    const size_t span = len + HUGE_BYTES;
    if (span < len) return NULL;
    char *p = (char *)mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    char *a = (char *)(((uintptr_t)p + HUGE_BYTES - 1) & ~(uintptr_t)(HUGE_BYTES - 1));
    const size_t head = (size_t)(a - p), tail = span - head - len;
    if (head) munmap(p, head);
    if (tail) munmap(a + len, tail);
    /* whole 2 MiB pages only; the advice fails where THP is compiled out or disabled,
     * and the memory then simply stays in base pages */
    if (len >= HUGE_BYTES) (void)madvise(a, len / HUGE_BYTES * HUGE_BYTES, MADV_HUGEPAGE);
    return a;
}

/* Room for one more region (and, for a slab, its first extent) before anything is mapped,
 * so a metadata failure never leaks a mapping. */
static int reserve_region(void) {
    if (nregions < capregions) return 1;
    const size_t cap = capregions ? 2 * capregions : 16;
    region *r = (region *)realloc(regions, cap * sizeof *r);
    if (!r) return 0;
    regions = r, capregions = cap;
    return 1;
}

static int reserve_extent(region *r) {
    if (r->nused < r->capused) return 1;
    const size_t cap = r->capused ? 2 * r->capused : 8;
    extent *e = (extent *)realloc(r->used, cap * sizeof *e);
    if (!e) return 0;
    r->used = e, r->capused = cap;
    return 1;
}

static size_t round_up_huge(size_t b) { return (b + HUGE_BYTES - 1) / HUGE_BYTES * HUGE_BYTES; }

static void insert_extent(region *r, size_t at, size_t off, size_t len) {
    memmove(r->used + at + 1, r->used + at, (r->nused - at) * sizeof *r->used);
    r->used[at].off = off, r->used[at].len = len;
    r->nused++, r->used_bytes += len;
    if (round_up_huge(off + len) > r->touched) r->touched = round_up_huge(off + len);
}

/* Give the slab's pages [a, b) (multiples of 2 MiB) back to the OS, as far as they may
 * be resident (below `touched`); `touched` drops to a when the range reaches it. */
static void release_pages(region *r, size_t a, size_t b) {
    if (b > r->touched) b = r->touched;
    if (a >= b) return;
    (void)madvise(r->base + a, b - a, MADV_DONTNEED);
    if (b == r->touched) r->touched = a;
}

/* First fit inside one slab: the block's offset, or SIZE_MAX if no gap holds `bytes`;
 * *at = the index its extent takes. */
static size_t slab_fit(const region *r, size_t bytes, size_t *at) {
    if (r->len - r->used_bytes < bytes) return SIZE_MAX;
    size_t end = 0; /* end of the previous extent */
    for (size_t i = 0; i < r->nused; i++) {
        if (r->used[i].off - end >= bytes) return *at = i, end;
        end = r->used[i].off + r->used[i].len;
    }
    return r->len - end >= bytes ? (*at = r->nused, end) : SIZE_MAX;
}

static void *slab_alloc(size_t bytes) {
    size_t at, off;
    size_t mapped = 0;
    for (size_t i = 0; i < nregions; i++) {
        region *r = &regions[i];
        if (!r->slab) continue;
        mapped += r->len;
        if ((off = slab_fit(r, bytes, &at)) == SIZE_MAX) continue;
        if (!reserve_extent(r)) return NULL;
        insert_extent(r, at, off, bytes);
        return r->base + off;
    }
    /* a new slab, as large as the slabs so far: few slabs for a big model */
    size_t len = mapped < SLAB_MIN_BYTES ? SLAB_MIN_BYTES : mapped > SLAB_MAX_BYTES ? SLAB_MAX_BYTES : mapped;
    len = len / HUGE_BYTES * HUGE_BYTES;
    if (len < bytes) len = round_up_huge(bytes); /* < SLAB_BLOCK_MAX */
    if (!reserve_region()) return NULL;
    region nr = {0};
    nr.slab = 1, nr.len = len;
    if (!reserve_extent(&nr)) return NULL;
    if (!(nr.base = map_huge_aligned(len))) {
        free(nr.used);
        return NULL;
    }
    insert_extent(&nr, 0, 0, bytes);
    regions[nregions++] = nr;
    return nr.base;
}

static void *big_alloc(size_t bytes) {
    const size_t pg = page_bytes();
    const size_t len = (bytes + pg - 1) / pg * pg;
    if (len < bytes || !reserve_region()) return NULL;
    region nr = {0};
    nr.len = len;
    if (!(nr.base = map_huge_aligned(len))) return NULL;
    regions[nregions++] = nr;
    return nr.base;
}

static void remove_region(size_t i) {
    munmap(regions[i].base, regions[i].len);
    free(regions[i].used);
    /* keep the mapping order: first fit prefers the oldest slabs */
    memmove(regions + i, regions + i + 1, (nregions - i - 1) * sizeof *regions);
    nregions--;
}

/* Free the extent at index e of slab i; give the whole 2 MiB pages of the gap it joins
 * back to the OS if there are enough of them; an empty slab becomes the spare or is
 * unmapped. */
static void slab_free(size_t i, size_t e) {
    region *r = &regions[i];
    r->used_bytes -= r->used[e].len;
    memmove(r->used + e, r->used + e + 1, (r->nused - e - 1) * sizeof *r->used);
    r->nused--;
    if (r->nused == 0) {
        for (size_t j = 0; j < nregions; j++)
            if (j != i && regions[j].slab && regions[j].nused == 0) { /* a spare exists */
                remove_region(i);
                return;
            }
        release_pages(r, HUGE_BYTES, r->len); /* the spare keeps its first page */
        return;
    }
    const size_t lo = e > 0 ? r->used[e - 1].off + r->used[e - 1].len : 0;
    const size_t hi = e < r->nused ? r->used[e].off : r->len;
    const size_t a = round_up_huge(lo), b0 = hi / HUGE_BYTES * HUGE_BYTES;
    const size_t b = b0 < r->touched ? b0 : r->touched;
    if (a < b && b - a >= RELEASE_MIN_PAGES * HUGE_BYTES) release_pages(r, a, b);
}

void *takane_panels_alloc(size_t bytes) {
    bytes = bytes == 0 ? BLOCK_ALIGN : (bytes + BLOCK_ALIGN - 1) / BLOCK_ALIGN * BLOCK_ALIGN;
    if (bytes == 0) return NULL; /* the rounding wrapped: no such block exists */
    if (!slabs_enabled()) return plain_alloc(bytes);
    lock_allocator();
    void *p = bytes < SLAB_BLOCK_MAX ? slab_alloc(bytes) : big_alloc(bytes);
    pthread_mutex_unlock(&lock);
    return p;
}

void takane_panels_free(void *p) {
    if (!p) return;
    const char *c = (const char *)p;
    lock_allocator();
    for (size_t i = 0; i < nregions; i++) {
        region *r = &regions[i];
        if (c < r->base || c >= r->base + r->len) continue;
        if (!r->slab) {
            remove_region(i);
        } else {
            /* binary search: the extent starting at p */
            const size_t off = (size_t)(c - r->base);
            size_t lo = 0, hi = r->nused;
            while (lo < hi) {
                const size_t mid = lo + (hi - lo) / 2;
                if (r->used[mid].off < off) lo = mid + 1;
                else hi = mid;
            }
            /* anything else is a double free or a pointer this file never returned */
            if (lo == r->nused || r->used[lo].off != off) abort();
            slab_free(i, lo);
        }
        pthread_mutex_unlock(&lock);
        return;
    }
    pthread_mutex_unlock(&lock);
    free(p); /* a plain block (TAKANE_HUGE_SLABS=0 when it was allocated) */
}

void takane_alloc_stats(takane_alloc_stats_t *s) {
    memset(s, 0, sizeof *s);
    lock_allocator();
    for (size_t i = 0; i < nregions; i++) {
        const region *r = &regions[i];
        if (r->slab) {
            s->slabs++, s->slab_bytes += (int64_t)r->len;
            s->spare_slabs += r->nused == 0;
            s->slab_touched_bytes += (int64_t)r->touched;
            s->slab_blocks += (int64_t)r->nused, s->slab_used_bytes += (int64_t)r->used_bytes;
        } else {
            s->big_blocks++, s->big_bytes += (int64_t)r->len;
        }
    }
    pthread_mutex_unlock(&lock);
    s->slabs_built = 1;
}

#else /* no slabs: AddressSanitizer build, or no Linux transparent huge pages */

void *takane_panels_alloc(size_t bytes) {
    bytes = bytes == 0 ? BLOCK_ALIGN : (bytes + BLOCK_ALIGN - 1) / BLOCK_ALIGN * BLOCK_ALIGN;
    if (bytes == 0) return NULL;
    return plain_alloc(bytes);
}

void takane_panels_free(void *p) { free(p); }

void takane_alloc_stats(takane_alloc_stats_t *s) { memset(s, 0, sizeof *s); }

#endif
