/*
 * dispatch.c — which kernel set runs: the registry, CPU/OS detection, env override,
 * forcing. Compiled at the baseline ISA (no per-ISA flags), like every framework file.
 *
 * An ISA is usable when it was compiled in (TAKANE_HAVE_<ISA> from CMake) AND the CPU
 * reports the features AND the OS saves the registers (XCR0 via XGETBV) — ruy's rule.
 * Detection runs once under pthread_once; the active choice is one atomic int, so
 * concurrent compute calls and takane_isa_force() never race on a torn value.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "../kernels/ternary/ternary_kernel.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define TAKANE_X86 1
#include <cpuid.h>
#endif

/* Registry: every compiled kernel set, best first. Tests and benchmarks iterate the
 * same list through takane_isa_supported(). A set without its own layer kernels can use
 * the portable ones (&takane_linear_ukernel_scalar, &takane_wfloat_ukernel_scalar). */
#define KERNEL_SET(ISA, isa)                                                               \
    {TAKANE_ISA_##ISA, &takane_matmul_ukernel_##isa, takane_pack_row_##isa,                    \
     &takane_linear_ukernel_##isa, &takane_wfloat_ukernel_##isa, &takane_q8_ukernel_##isa,   \
     &takane_ternary_ukernel_##isa}
static const takane_kernel_set registry[] = {
#ifdef TAKANE_HAVE_AVX512
    KERNEL_SET(AVX512, avx512),
#endif
#ifdef TAKANE_HAVE_AVX2
    KERNEL_SET(AVX2, avx2),
#endif
#ifdef TAKANE_HAVE_NEON
    /* no NEON layer kernels yet: the portable ones, correct on any CPU */
    {TAKANE_ISA_NEON, &takane_matmul_ukernel_neon, takane_pack_row_neon,
     &takane_linear_ukernel_scalar, &takane_wfloat_ukernel_scalar, &takane_q8_ukernel_neon,
     &takane_ternary_ukernel_neon},
#endif
    KERNEL_SET(SCALAR, scalar),
};
#define REGISTRY_LEN ((int)(sizeof registry / sizeof registry[0]))

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static uint32_t supported_mask;    /* written once inside init_once */
static int best_index;             /* registry index of the best supported set */
static int active_index;           /* atomic: registry index compute calls use */
static int env_error;              /* atomic: 1 while env TAKANE_ISA is bad and not overridden */
static __thread int last_used = TAKANE_ISA_AUTO;

#ifdef TAKANE_X86
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    /* XGETBV with ECX=0, as raw bytes-free asm so this file needs no -mxsave. */
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static uint32_t detect_x86(void) {
    uint32_t mask = 1u << TAKANE_ISA_SCALAR;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return mask;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1,
              popcnt = (c >> 23) & 1;
    if (!osxsave || !avx) return mask;
    const uint64_t xcr0 = read_xcr0();
    const int ymm_state = (xcr0 & 0x6) == 0x6;     /* SSE + AVX state */
    const int zmm_state = (xcr0 & 0xe6) == 0xe6;   /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (__get_cpuid_max(0, 0) < 7) return mask;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1;
    const int avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    const int vpopcntdq = (c >> 14) & 1;
    /* VBMI (byte permutes) and VNNI (VPDPBUSD): the W1A8 kernel (wq8_avx512.c) */
    const int vbmi = (c >> 1) & 1, vnni = (c >> 11) & 1;
    if (ymm_state && avx2 && fma && popcnt) mask |= 1u << TAKANE_ISA_AVX2;
    if (ymm_state && zmm_state && avx2 && fma && popcnt && avx512f && avx512bw && avx512vl &&
        vpopcntdq && vbmi && vnni)
        mask |= 1u << TAKANE_ISA_AVX512;
    return mask;
}
#endif

static uint32_t detect(void) {
    uint32_t mask = 1u << TAKANE_ISA_SCALAR;
#ifdef TAKANE_X86
    mask = detect_x86();
#endif
#if defined(__aarch64__)
    mask |= 1u << TAKANE_ISA_NEON; /* Advanced SIMD is baseline on aarch64 */
#endif
#ifdef TAKANE_AVX512_EMULATION
    /* Test-only build: the avx512 kernels were compiled against SIMDe's portable
     * implementations of the intrinsics, so they run on any CPU. */
    mask |= 1u << TAKANE_ISA_AVX512;
#endif
    return mask;
}

static int index_of(takane_isa isa) {
    for (int i = 0; i < REGISTRY_LEN; i++)
        if (registry[i].isa == isa) return i;
    return -1;
}

static void init(void) {
    const uint32_t hw = detect();
    uint32_t usable = 0;
    best_index = REGISTRY_LEN - 1; /* scalar, always last */
    for (int i = REGISTRY_LEN - 1; i >= 0; i--) {
        if (hw & (1u << registry[i].isa)) {
            usable |= 1u << registry[i].isa;
            best_index = i; /* walking from worst to best: the last hit is the best */
        }
    }
    supported_mask = usable;
    int active = best_index, bad_env = 0;
    const char *env = getenv("TAKANE_ISA");
    if (env && env[0] && strcmp(env, "auto") != 0) {
        takane_isa want;
        int idx = -1;
        if (takane_isa_from_name(env, &want) == TAKANE_OK && (usable & (1u << want)))
            idx = index_of(want);
        if (idx >= 0) active = idx;
        else bad_env = 1;
    }
    __atomic_store_n(&active_index, active, __ATOMIC_RELEASE);
    __atomic_store_n(&env_error, bad_env, __ATOMIC_RELEASE);
}

static void ensure_init(void) { pthread_once(&init_once, init); }

uint32_t takane_isa_compiled(void) {
    uint32_t mask = 0;
    for (int i = 0; i < REGISTRY_LEN; i++) mask |= 1u << registry[i].isa;
    return mask;
}

uint32_t takane_isa_supported(void) {
    ensure_init();
    return supported_mask;
}

takane_isa takane_isa_active(void) {
    ensure_init();
    return registry[__atomic_load_n(&active_index, __ATOMIC_ACQUIRE)].isa;
}

takane_status takane_isa_force(takane_isa isa) {
    ensure_init();
    int idx;
    if (isa == TAKANE_ISA_AUTO) {
        idx = best_index;
    } else {
        if (takane_isa_name(isa) == NULL) return TAKANE_ERR_ISA_UNKNOWN;
        if (!(supported_mask & (1u << isa))) return TAKANE_ERR_ISA_UNSUPPORTED;
        idx = index_of(isa);
        if (idx < 0) return TAKANE_ERR_ISA_UNSUPPORTED;
    }
    __atomic_store_n(&active_index, idx, __ATOMIC_RELEASE);
    __atomic_store_n(&env_error, 0, __ATOMIC_RELEASE);
    return TAKANE_OK;
}

takane_isa takane_isa_last_used(void) { return (takane_isa)last_used; }

void takane_note_used(takane_isa isa) { last_used = isa; }

const char *takane_isa_name(takane_isa isa) {
    switch (isa) {
    case TAKANE_ISA_AUTO: return "auto";
    case TAKANE_ISA_SCALAR: return "scalar";
    case TAKANE_ISA_AVX2: return "avx2";
    case TAKANE_ISA_AVX512: return "avx512";
    case TAKANE_ISA_NEON: return "neon";
    }
    return NULL;
}

takane_status takane_isa_from_name(const char *name, takane_isa *isa_out) {
    static const takane_isa all[] = {TAKANE_ISA_SCALAR, TAKANE_ISA_AVX2, TAKANE_ISA_AVX512,
                                     TAKANE_ISA_NEON, TAKANE_ISA_AUTO};
    if (!name || !isa_out) return TAKANE_ERR_NULL_POINTER;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(name, takane_isa_name(all[i])) == 0) {
            *isa_out = all[i];
            return TAKANE_OK;
        }
    }
    return TAKANE_ERR_ISA_UNKNOWN;
}

takane_status takane_select_kernels(const takane_kernel_set **out) {
    ensure_init();
    if (__atomic_load_n(&env_error, __ATOMIC_ACQUIRE)) return TAKANE_ERR_ENV_ISA;
    *out = &registry[__atomic_load_n(&active_index, __ATOMIC_ACQUIRE)];
    return TAKANE_OK;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The calling thread's CPU time: a register-resident loop's rate is then not diluted by
 * time the scheduler gave to other processes (shared machines); wall time where the
 * platform has no thread clock. */
static double thread_seconds(void) {
#ifdef CLOCK_THREAD_CPUTIME_ID
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
    return now_seconds();
}

/* The arguments of a peak probe: its result pointer (NULL: an error), the budget clamped to
 * [0.001, 10] seconds (NaN: 0.001), and the registry index it measures (TAKANE_ISA_AUTO:
 * the active set), or the error for an unknown or unsupported ISA. */
static takane_status probe_set(takane_isa isa, const double *result, double *seconds, int *idx) {
    if (!result) return TAKANE_ERR_NULL_POINTER;
    if (!(*seconds >= 0.001)) *seconds = 0.001; /* also catches NaN */
    if (*seconds > 10) *seconds = 10;
    ensure_init();
    if (isa == TAKANE_ISA_AUTO) {
        *idx = __atomic_load_n(&active_index, __ATOMIC_ACQUIRE);
        return TAKANE_OK;
    }
    if (takane_isa_name(isa) == NULL) return TAKANE_ERR_ISA_UNKNOWN;
    if (!(supported_mask & (1u << isa)) || (*idx = index_of(isa)) < 0)
        return TAKANE_ERR_ISA_UNSUPPORTED;
    return TAKANE_OK;
}

/* The measuring loop of the peak probes: run(ctx, rounds) does `rounds` rounds and returns
 * the work they did; the round count doubles until one run lasts >= min_run seconds on
 * `clock`, and the best rate of the repeated runs (the least disturbed on a shared
 * machine) is returned once `budget` seconds of wall time have passed. */
typedef double (*probe_run_fn)(void *ctx, uint64_t rounds);
static double best_rate(probe_run_fn run, void *ctx, uint64_t rounds, double min_run,
                        double budget, double (*clock)(void)) {
    double best = 0;
    const double t_start = now_seconds();
    for (;;) {
        const double t0 = clock();
        const double work = run(ctx, rounds);
        const double dt = clock() - t0;
        if (dt > 0 && dt >= min_run) {
            if (work / dt > best) best = work / dt;
        } else if (rounds < (UINT64_C(1) << 40)) {
            rounds *= 2;
        }
        if (now_seconds() - t_start >= budget && best > 0) return best;
    }
}

typedef struct peak_probe {
    const takane_matmul_ukernel *uk;
    uint64_t sink;
    const uint64_t *const *xr; /* the panel tile's operands */
    const uint64_t *panels;
    uint32_t *pc;
    int mr, np;
} peak_probe;

static double run_probe(void *ctx, uint64_t rounds) {
    peak_probe *p = (peak_probe *)ctx;
    return (double)p->uk->probe(rounds, &p->sink);
}

enum { PROBE_KW = 32, PROBE_NPMAX = 4 };
static double run_panel(void *ctx, uint64_t calls) {
    peak_probe *p = (peak_probe *)ctx;
    for (uint64_t c = 0; c < calls; c++)
        p->uk->panel_tile(p->xr, p->mr, p->panels, PROBE_KW * TAKANE_PANEL_ROWS, p->np,
                          PROBE_KW, p->pc, PROBE_NPMAX * TAKANE_PANEL_ROWS);
    return (double)p->mr * p->np * TAKANE_PANEL_ROWS * PROBE_KW * 64 * (double)calls;
}

takane_status takane_probe_peak(takane_isa isa, double seconds, double *bitmacs_per_second) {
    int idx;
    TAKANE_TRY(probe_set(isa, bitmacs_per_second, &seconds, &idx));
    const takane_matmul_ukernel *uk = registry[idx].matmul;
    if (!uk->probe && !uk->panel_tile) return TAKANE_ERR_ISA_UNSUPPORTED;
    /* Two ceilings, the higher wins: the register-resident loop of the kernels'
     * instruction sequence, and the panel microkernel itself on L1-resident operands
     * (its loads and broadcasts included: out-of-order cores can overlap them so well
     * that the kernel beats a register loop that is bound by its own dependency chains).
     * Each grows its round count until one run lasts >= 1/10 of the budget and keeps
     * the best rate of repeated runs (the least disturbed on a shared machine). */
    double best = 0;
    peak_probe pp = {uk, 0, NULL, NULL, NULL, 0, 0};
    if (uk->probe) best = best_rate(run_probe, &pp, 1024, seconds / 10, seconds / 2, now_seconds);
    if (uk->panel_tile) {
        /* kw = 32 words x mr rows of activations, np panels of 8 rows: a few KiB */
        uint64_t xbuf[TAKANE_MAX_MR][PROBE_KW], panels[PROBE_NPMAX * PROBE_KW * TAKANE_PANEL_ROWS];
        uint32_t pc[TAKANE_MAX_MR * PROBE_NPMAX * TAKANE_PANEL_ROWS];
        const uint64_t *xr[TAKANE_MAX_MR];
        const int mr = uk->panel_mr;
        const int np = uk->panel_np[mr] < PROBE_NPMAX ? uk->panel_np[mr] : PROBE_NPMAX;
        uint64_t v = 0x9e3779b97f4a7c15ull;
        for (int i = 0; i < mr; i++) {
            for (int q = 0; q < PROBE_KW; q++) xbuf[i][q] = (v = v * 6364136223846793005ull + 1442695040888963407ull);
            xr[i] = xbuf[i];
        }
        for (int j = 0; j < PROBE_NPMAX * PROBE_KW * TAKANE_PANEL_ROWS; j++)
            panels[j] = (v = v * 6364136223846793005ull + 1442695040888963407ull);
        pp.xr = xr, pp.panels = panels, pp.pc = pc, pp.mr = mr, pp.np = np;
        const double rate = best_rate(run_panel, &pp, 64, seconds / 10, seconds / 2, now_seconds);
        if (rate > best) best = rate;
    }
    *bitmacs_per_second = best;
    return TAKANE_OK;
}

/* ---- which code each op of a kernel set runs ------------------------------------------- */

/* "op=isa" pairs for one registry entry: a set may borrow another ISA's kernels for an op
 * (the NEON set uses the portable layer and W1A-float kernels), and this says so. */
static char kernel_names[REGISTRY_LEN][128];
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

static const char *owner(const void *k, const void *scalar_k, takane_isa isa) {
    return k == scalar_k && isa != TAKANE_ISA_SCALAR ? "scalar" : takane_isa_name(isa);
}

static void init_names(void) {
    for (int i = 0; i < REGISTRY_LEN; i++) {
        const takane_kernel_set *ks = &registry[i];
        const char *q8 = owner(ks->q8, &takane_q8_ukernel_scalar, ks->isa);
        const char *q8_variant = "";
#ifdef TAKANE_HAVE_NEON
        if (ks->isa == TAKANE_ISA_NEON) q8_variant = takane_wq8_neon_dotprod() ? "+sdot" : "";
#endif
        /* plain concatenation: snprintf would be the only libc formatting in the library */
        const char *parts[] = {"matmul=", owner(ks->matmul, &takane_matmul_ukernel_scalar, ks->isa),
                               " pack=", owner((const void *)ks->pack_row,
                                               (const void *)takane_pack_row_scalar, ks->isa),
                               " linear=", owner(ks->linear, &takane_linear_ukernel_scalar, ks->isa),
                               " wfloat=", owner(ks->wfloat, &takane_wfloat_ukernel_scalar, ks->isa),
                               " q8_0=", q8, q8_variant,
                               " ternary=", owner(ks->ternary, &takane_ternary_ukernel_scalar, ks->isa)};
        size_t n = 0;
        for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++)
            for (const char *c = parts[p]; *c && n + 1 < sizeof kernel_names[i]; c++)
                kernel_names[i][n++] = *c;
        kernel_names[i][n] = 0;
    }
}

const char *takane_isa_kernels(takane_isa isa) {
    const int i = index_of(isa);
    if (i < 0) return NULL;
    pthread_once(&names_once, init_names);
    return kernel_names[i];
}

typedef struct int8_probe {
    const takane_q8_ukernel *uk;
    int32_t sink;
} int8_probe;
static double run_int8(void *ctx, uint64_t rounds) {
    int8_probe *p = (int8_probe *)ctx;
    return (double)p->uk->probe_int8(rounds, &p->sink);
}

takane_status takane_probe_peak_int8(takane_isa isa, double seconds, double *macs_per_second) {
    int idx;
    TAKANE_TRY(probe_set(isa, macs_per_second, &seconds, &idx));
    const takane_q8_ukernel *uk = registry[idx].q8;
    if (!uk->probe_int8) return TAKANE_ERR_ISA_UNSUPPORTED;
    /* as takane_probe_peak, on the thread's CPU time */
    int8_probe ip = {uk, 0};
    *macs_per_second = best_rate(run_int8, &ip, 1024, seconds / 10, seconds, thread_seconds);
    return TAKANE_OK;
}
