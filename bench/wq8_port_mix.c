/*
 * wq8_port_mix.c — what bounds the AVX-512 W1A8 decode kernel (csrc/kernels/wq8/wq8_avx512.c)
 * on this core: zmm throughputs of single instructions and pairs, and a loop with the M = 1
 * panel kernel's exact vector mix per panel-word (4 panels per word), registers only or with
 * the table and weight loads. Not part of the build; x86-64 with AVX-512 VBMI+VNNI:
 *
 *   gcc -O3 -mavx512f -mavx512bw -mavx512vl -mavx512vbmi -mavx512vnni -mfma \
 *       bench/wq8_port_mix.c -o /tmp/mix && /tmp/mix
 *
 * -DIDX=1: the index ops as VPTERNLOGD (as the kernel does them); 3: VPANDD + VPADDB
 * (GCC folds an AND + OR pair back into VPTERNLOGD, an ADD it does not); 0: none.
 * -DLOADS=1: tables and weight words loaded from L1 each word. -DNPAN=n: panels per word.
 * Cycles assume 3.65 GHz (thread CPU time; a loaded host shares the core's sibling).
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#ifndef IDX
#define IDX 1
#endif
#ifndef LOADS
#define LOADS 0
#endif
#ifndef NPAN
#define NPAN 4
#endif
#define GHZ 3.65
#define OPAQUE(x) __asm__ volatile("" : "+v"(x))

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* 8 instructions per iteration on independent destinations, sources zmm30/zmm31 */
#define I(op, x) op " %%zmm30, %%zmm31, %%zmm" #x "\n"
#define PAIR(a, b) I(a, 0) I(b, 1) I(a, 2) I(b, 3) I(a, 4) I(b, 5) I(a, 6) I(b, 7)
static void run(const char *name, void (*f)(long)) {
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        f(10000000);
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    printf("%-26s %.2f per cycle\n", name, 8e7 / (best * GHZ * 1e9));
}
static __attribute__((aligned(64))) unsigned char lbuf[64];
#define LOOP(fn, body)                                                                     \
    static void fn(long n) {                                                               \
        __asm__ volatile("vpxord %%zmm30,%%zmm30,%%zmm30\n vpxord %%zmm31,%%zmm31,%%zmm31\n" \
                         "1:\n" body "dec %0\n jnz 1b\n"                                   \
                         : "+r"(n)                                                   \
                         : "r"(lbuf)                                               \
                         : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",         \
                           "xmm6", "xmm7", "xmm30", "xmm31");                               \
    }
LOOP(perm, PAIR("vpermt2b", "vpermt2b"))
LOOP(shufb, PAIR("vpshufb", "vpshufb"))
LOOP(tern, PAIR("vpternlogd $0xEA,", "vpternlogd $0xEA,"))
LOOP(perm_add, PAIR("vpermt2b", "vpaddb"))
LOOP(perm_tern, PAIR("vpermt2b", "vpternlogd $0xEA,"))
LOOP(perm_and, PAIR("vpermt2b", "vpandd"))
LOOP(perm_dp, PAIR("vpermt2b", "vpdpbusd"))
LOOP(perm_fma, PAIR("vpermt2b", "vfmadd231ps"))
LOOP(shufb_dp, PAIR("vpshufb", "vpdpbusd"))
LOOP(tern_dp, PAIR("vpternlogd $0xEA,", "vpdpbusd"))
/* VPERMT2B on ymm (a 64-byte table), alone and 2 : 1 beside VPDPBUSD on zmm */
#define Y(x) "vpermt2b %%ymm30, %%ymm31, %%ymm" #x "\n"
LOOP(perm_ymm, Y(0) Y(1) Y(2) Y(3) Y(4) Y(5) Y(6) Y(7))
LOOP(perm_ymm_dp, Y(0) Y(1) I("vpdpbusd", 2) Y(3) Y(4) I("vpdpbusd", 5) Y(6) Y(7))
/* register moves and L1 loads (zmm6/zmm7 as destinations, of the 8 ops) */
#define MOV(x) "vmovdqa64 %%zmm30, %%zmm" #x "\n"
#define LD(x) "vmovdqa64 (%1), %%zmm" #x "\n"
LOOP(moves, MOV(0) MOV(1) MOV(2) MOV(3) MOV(4) MOV(5) MOV(6) MOV(7))
LOOP(loads, LD(0) LD(1) LD(2) LD(3) LD(4) LD(5) LD(6) LD(7))
LOOP(perm_dp_loads, I("vpermt2b", 0) I("vpdpbusd", 1) I("vpermt2b", 2) I("vpdpbusd", 3)
                        LD(6) I("vpermt2b", 4) I("vpdpbusd", 5) LD(7))

static __attribute__((aligned(64))) unsigned char wbuf[NPAN][64 * 64], tbuf[64 * 512];

int main(void) {
    run("vpermt2b", perm);
    run("vpshufb", shufb);
    run("vpternlogd", tern);
    run("vpermt2b + vpaddb", perm_add);
    run("vpermt2b + vpternlogd", perm_tern);
    run("vpermt2b + vpandd", perm_and);
    run("vpermt2b + vpdpbusd", perm_dp);
    run("vpermt2b + vfmadd231ps", perm_fma);
    run("vpshufb + vpdpbusd", shufb_dp);
    run("vpternlogd + vpdpbusd", tern_dp);
    run("vpermt2b ymm", perm_ymm);
    run("vpermt2b ymm 2 : vpdpbusd 1", perm_ymm_dp);
    run("zmm register moves", moves);
    run("zmm loads (L1)", loads);
    run("3 vpermt2b + 3 vpdpbusd + 2 loads", perm_dp_loads);

    __m512i w[NPAN], t[8];
    __m512 acc[NPAN], gz[NPAN];
    for (int p = 0; p < NPAN; p++) {
        w[p] = _mm512_set1_epi32(p * 77 + 1);
        acc[p] = _mm512_setzero_ps();
        gz[p] = _mm512_set1_ps(1.0f + p);
    }
    for (int i = 0; i < 8; i++) t[i] = _mm512_set1_epi8((char)i);
    const __m512i low4 = _mm512_set1_epi8(15), pos = _mm512_set1_epi8(0x30);
    const __m512i two = _mm512_set1_epi8(2), c32 = _mm512_set1_epi8(32), nqv = _mm512_set1_epi32(3);
    const __m512 dv = _mm512_set1_ps(0.5f);
    const long n = 20000000;
    double best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        for (long q = 0; q < n; q++) {
            if (LOADS) {
                for (int i = 0; i < 8; i++) t[i] = _mm512_load_si512(tbuf + (q & 63) * 512 + 64 * i);
                for (int p = 0; p < NPAN; p++) w[p] = _mm512_load_si512(wbuf[p] + (q & 63) * 64);
            }
            __m512i il[NPAN], ih[NPAN];
            for (int p = 0; p < NPAN; p++) {
                OPAQUE(w[p]);
                const __m512i hi = _mm512_srli_epi16(w[p], 4);
                if (IDX == 1) {
                    il[p] = _mm512_ternarylogic_epi32(w[p], low4, pos, 0xEA);
                    ih[p] = _mm512_ternarylogic_epi32(hi, low4, pos, 0xEA);
                } else if (IDX == 3) {
                    il[p] = _mm512_add_epi8(_mm512_and_si512(w[p], low4), pos);
                    ih[p] = _mm512_add_epi8(_mm512_and_si512(hi, low4), pos);
                } else {
                    il[p] = ih[p] = w[p];
                }
            }
            for (int p = 0; p < NPAN; p++) {
                const __m512i pl = _mm512_add_epi8(_mm512_permutex2var_epi8(t[0], il[p], t[1]),
                                                   _mm512_permutex2var_epi8(t[4], ih[p], t[5]));
                const __m512i ph = _mm512_add_epi8(_mm512_permutex2var_epi8(t[2], il[p], t[3]),
                                                   _mm512_permutex2var_epi8(t[6], ih[p], t[7]));
                __m512i s = _mm512_dpbusd_epi32(nqv, pl, two);
                s = _mm512_dpbusd_epi32(s, c32, ph);
                acc[p] = _mm512_fmadd_ps(_mm512_mul_ps(dv, gz[p]), _mm512_cvtepi32_ps(s), acc[p]);
            }
        }
        const double dt = now() - t0;
        if (dt < best) best = dt;
    }
    float sink = 0;
    for (int p = 0; p < NPAN; p++) sink += _mm512_reduce_add_ps(acc[p]);
    printf("kernel mix IDX=%d LOADS=%d NPAN=%d: %.2f cycles per panel-word (%g)\n", IDX, LOADS,
           NPAN, best / n / NPAN * GHZ * 1e9, sink);
    return 0;
}
