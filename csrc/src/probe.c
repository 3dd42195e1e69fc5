/*
 * probe.c — measured machine limits: the streaming DRAM read bandwidth
 * (takane_probe_dram_bandwidth). Baseline ISA (SSE2 loads: 32 bytes a cycle at two loads
 * a cycle, far above any DRAM, so the probe is bound by memory, not by its loads).
 *
 * Why C threads: a numpy reduction split over Python threads under-reads at 2 threads
 * (issue 21: 22.6-29 GB/s against the 30.5 GB/s of a C loop), so "% of DRAM" figures
 * computed from it flatter the kernels. Here every thread reads its contiguous part with
 * 8 independent accumulators (the hardware prefetchers keep a sequential stream's lines in
 * flight), the threads are created first and spin until a start flag, and a pass takes
 * as long as its slowest thread (wall time from the flag). One thread is timed in its own
 * CPU time instead (memory stalls count; time the scheduler gives to other processes on a
 * shared machine does not), the clock the benchmarks use for one-thread kernels.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define MAX_PROBE_THREADS 256

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The calling thread's CPU time (memory stalls count, time the scheduler gives to other
 * processes does not: shared machines), or wall time where there is no thread clock. */
static double thread_seconds(void) {
    struct timespec ts;
#ifdef CLOCK_THREAD_CPUTIME_ID
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct probe_part {
    const unsigned char *p;
    size_t bytes;
    int *go; /* atomic: 0 wait, 1 read, 2 quit (a thread could not be created) */
    double t_end; /* wall clock at the end of the part (several threads) */
    uint64_t sink;
} probe_part;

/* Sum of the part as 64-bit words: one 64-byte line per step, four independent chains.
 *
 * Why explicit 16-byte loads: the loop must be bound by memory, never by its own
 * instructions. An earlier version memcpy'd each line into a uint64_t[8] and summed it in
 * C; gcc -O3 at the baseline ISA compiled that into a copy through the stack and eight
 * scalar reloads per line (~30 instructions with store-to-load forwarding), which capped
 * one thread at 19-22 GB/s on a Zen 4 whose one-thread streaming read is 27-30 GB/s
 * (measured side by side on one huge-page buffer): every one-thread "% of DRAM" was
 * inflated by ~1.3x (a kernel at "103% of DRAM"). Now a line costs four loads and four adds
 * (SSE2 or NEON: the baseline of both targets), ~2 cycles against a line's ~8-10 cycles of
 * DRAM time on one core. */
#if defined(__SSE2__)
#include <emmintrin.h>
static uint64_t read_part(const unsigned char *p, size_t bytes) {
    __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 64 <= bytes; i += 64) {
        a0 = _mm_add_epi64(a0, _mm_loadu_si128((const __m128i *)(p + i)));
        a1 = _mm_add_epi64(a1, _mm_loadu_si128((const __m128i *)(p + i + 16)));
        a2 = _mm_add_epi64(a2, _mm_loadu_si128((const __m128i *)(p + i + 32)));
        a3 = _mm_add_epi64(a3, _mm_loadu_si128((const __m128i *)(p + i + 48)));
    }
    uint64_t lanes[2];
    _mm_storeu_si128((__m128i *)lanes,
                     _mm_add_epi64(_mm_add_epi64(a0, a1), _mm_add_epi64(a2, a3)));
    uint64_t sum = lanes[0] + lanes[1];
    for (; i < bytes; i++) sum += p[i];
    return sum;
}
#elif defined(__ARM_NEON) || defined(__aarch64__)
#include <arm_neon.h>
static uint64_t read_part(const unsigned char *p, size_t bytes) {
    uint64x2_t a0 = vdupq_n_u64(0), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 64 <= bytes; i += 64) {
        a0 = vaddq_u64(a0, vreinterpretq_u64_u8(vld1q_u8(p + i)));
        a1 = vaddq_u64(a1, vreinterpretq_u64_u8(vld1q_u8(p + i + 16)));
        a2 = vaddq_u64(a2, vreinterpretq_u64_u8(vld1q_u8(p + i + 32)));
        a3 = vaddq_u64(a3, vreinterpretq_u64_u8(vld1q_u8(p + i + 48)));
    }
    const uint64x2_t a = vaddq_u64(vaddq_u64(a0, a1), vaddq_u64(a2, a3));
    uint64_t sum = vgetq_lane_u64(a, 0) + vgetq_lane_u64(a, 1);
    for (; i < bytes; i++) sum += p[i];
    return sum;
}
#else
/* Portable: one 8-byte memcpy per word (a plain load), no line-sized local copy. */
static uint64_t read_part(const unsigned char *p, size_t bytes) {
    uint64_t a[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 64 <= bytes; i += 64)
        for (int j = 0; j < 8; j++) {
            uint64_t v;
            memcpy(&v, p + i + 8 * j, 8);
            a[j & 3] += v;
        }
    uint64_t sum = a[0] + a[1] + a[2] + a[3];
    for (; i < bytes; i++) sum += p[i];
    return sum;
}
#endif

static void *probe_thread(void *arg) {
    probe_part *part = (probe_part *)arg;
    int g;
    while ((g = __atomic_load_n(part->go, __ATOMIC_ACQUIRE)) == 0) {
    }
    if (g == 2) return NULL;
    part->sink = read_part(part->p, part->bytes);
    part->t_end = now_seconds();
    return NULL;
}

takane_status takane_probe_dram_bandwidth(const void *buf, int64_t bytes, int32_t threads,
                                          int32_t repeat, double *bytes_per_second) {
    if (!buf || !bytes_per_second) return TAKANE_ERR_NULL_POINTER;
    if (bytes < 0) return TAKANE_ERR_NEGATIVE_DIMENSION;
    if (threads < 1 || threads > MAX_PROBE_THREADS || repeat < 1) return TAKANE_ERR_BAD_THREADS;
    if (bytes < 64 * (int64_t)threads) return TAKANE_ERR_BAD_STRIDE;
    probe_part parts[MAX_PROBE_THREADS];
    pthread_t tids[MAX_PROBE_THREADS];
    /* parts of whole 64-byte lines: the line split between two threads is read once */
    const int64_t lines = bytes / 64, per = lines / threads;
    double best = 0;
    volatile uint64_t sink = 0;
    for (int32_t r = 0; r < repeat; r++) {
        int go = 0, created = 0;
        for (int32_t t = 0; t < threads; t++) {
            const int64_t l0 = t * per, l1 = t == threads - 1 ? lines : l0 + per;
            parts[t].p = (const unsigned char *)buf + l0 * 64;
            parts[t].bytes = (size_t)((l1 - l0) * 64);
            parts[t].go = &go;
            parts[t].sink = 0;
        }
        for (int32_t t = 1; t < threads; t++, created++)
            if (pthread_create(&tids[t], NULL, probe_thread, &parts[t])) break;
        if (created < threads - 1) {
            __atomic_store_n(&go, 2, __ATOMIC_RELEASE);
            for (int i = 1; i <= created; i++) pthread_join(tids[i], NULL);
            return TAKANE_ERR_OUT_OF_MEMORY;
        }
        const double w0 = now_seconds(), c0 = thread_seconds();
        __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
        parts[0].sink = read_part(parts[0].p, parts[0].bytes);
        const double c1 = thread_seconds();
        double t_end = now_seconds();
        for (int32_t t = 1; t < threads; t++) {
            pthread_join(tids[t], NULL);
            if (parts[t].t_end > t_end) t_end = parts[t].t_end;
        }
        /* one thread: its CPU time; several: wall time from the start flag to the last
         * thread's end (CPU times would count time-shared parts as concurrent) */
        const double dt = threads == 1 ? c1 - c0 : t_end - w0;
        for (int32_t t = 0; t < threads; t++) sink += parts[t].sink;
        if (dt > 0 && (double)(lines * 64) / dt > best) best = (double)(lines * 64) / dt;
    }
    (void)sink;
    *bytes_per_second = best;
    return TAKANE_OK;
}
