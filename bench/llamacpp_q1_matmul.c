/*
 * llamacpp_q1_matmul.c — our timing program for llama.cpp's peer: ggml's CPU backend running
 * the Q1_0 matmuls of an LLM's linear layers, the way llama.cpp runs them in a model
 * (a ggml graph of GGML_OP_MUL_MAT nodes; Q1_0 weights x f32 activations, which ggml
 * quantizes to Q8_0 inside each matmul and feeds to ggml_vec_dot_q1_0_q8_0). Built against
 * ggml's static libraries by bench/build_llamacpp.sh; not part of takane_kernels.
 *
 *   takane-ggml-q1-matmul -t THREADS -m M -r REPS -l LAYERS N1xK1 N2xK2 ...
 *
 * builds LAYERS copies of the listed matrices (each its own weights, random sign bits, block
 * scales 2^-6), one graph with one matmul per matrix (the linear layers of one token for M = 1,
 * of an M-token prefill otherwise; the weights together exceed the caches, so they stream from
 * DRAM as in a real model), computes it once to warm up, then REPS times, and prints one JSON
 * object: the seconds of each run, their median, and the weight bytes. It also checks row 0 of
 * the first matmul against a double-precision dot of the dequantized weights and the
 * Q8_0-quantized input it recomputes (relative error < 1e-3), so the timed work is real.
 * With -e, it instead times one matmul per run after reading a 256 MB buffer (caches evicted:
 * DESIGN §8's cold protocol for a single call).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml.h"
#include "ggml-cpu.h"

#define MAX_MATS 4096

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t next_u64(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static void usage(void) {
    fprintf(stderr, "usage: takane-ggml-q1-matmul [-t THREADS] [-m M] [-r REPS] [-l LAYERS] [-e] NxK ...\n");
    exit(2);
}

int main(int argc, char **argv) {
    int threads = 1, m = 1, reps = 10, layers = 1, evict = 0, nmats = 0;
    int64_t ns[MAX_MATS], ks[MAX_MATS];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-m") && i + 1 < argc) m = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-l") && i + 1 < argc) layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-e")) evict = 1;
        else if (nmats < MAX_MATS && sscanf(argv[i], "%ldx%ld", (long *)&ns[nmats], (long *)&ks[nmats]) == 2) nmats++;
        else usage();
    }
    if (nmats == 0 || threads < 1 || m < 1 || reps < 1 || layers < 1) usage();
    const int64_t qk = ggml_blck_size(GGML_TYPE_Q1_0);
    size_t weight_bytes = 0, act_bytes = 0;
    for (int j = 0; j < nmats; j++) {
        if (ks[j] % qk != 0 || ns[j] < 1) {
            fprintf(stderr, "K must be a multiple of %ld\n", (long)qk);
            return 2;
        }
        weight_bytes += ggml_row_size(GGML_TYPE_Q1_0, ks[j]) * (size_t)ns[j];
        act_bytes += ((size_t)ks[j] + (size_t)ns[j]) * (size_t)m * sizeof(float);
    }
    weight_bytes *= (size_t)layers;
    act_bytes *= (size_t)layers;
    const int total = nmats * layers;
    const size_t overhead = (size_t)(3 * total + 16) * ggml_tensor_overhead() + ggml_graph_overhead_custom((size_t)total * 2 + 16, false);
    struct ggml_init_params params = {weight_bytes + act_bytes + overhead + (64u << 20), NULL, false};
    struct ggml_context *ctx = ggml_init(params);
    if (!ctx) {
        fprintf(stderr, "ggml_init failed\n");
        return 1;
    }
    struct ggml_cgraph *gf = ggml_new_graph_custom(ctx, (size_t)total * 2 + 16, false);
    struct ggml_tensor *w0 = NULL, *x0 = NULL, *y0 = NULL;
    struct ggml_tensor **ys = (struct ggml_tensor **)calloc((size_t)total, sizeof *ys);
    const ggml_fp16_t d16 = ggml_fp32_to_fp16(1.0f / 64.0f);
    for (int l = 0; l < layers; l++) {
        for (int j = 0; j < nmats; j++) {
            struct ggml_tensor *w = ggml_new_tensor_2d(ctx, GGML_TYPE_Q1_0, ks[j], ns[j]);
            struct ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ks[j], m);
            /* Q1_0 block: fp16 d, then qk/8 bytes of sign bits (DESIGN §9) */
            uint8_t *wb = (uint8_t *)w->data;
            const size_t bsz = ggml_type_size(GGML_TYPE_Q1_0), nblocks = ggml_nbytes(w) / bsz;
            for (size_t b = 0; b < nblocks; b++) {
                memcpy(wb + b * bsz, &d16, sizeof d16);
                for (size_t q = sizeof d16; q < bsz; q++) wb[b * bsz + q] = (uint8_t)next_u64();
            }
            float *xf = (float *)x->data;
            for (int64_t i = 0; i < ks[j] * m; i++) xf[i] = (float)((double)(next_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
            struct ggml_tensor *y = ggml_mul_mat(ctx, w, x);
            ggml_build_forward_expand(gf, y);
            ys[l * nmats + j] = y;
            if (!w0) w0 = w, x0 = x, y0 = y;
        }
    }
    struct ggml_cplan plan = ggml_graph_plan(gf, threads, NULL);
    uint8_t *work = (uint8_t *)malloc(plan.work_size ? plan.work_size : 1);
    plan.work_data = work;

    /* the single-matmul graph for -e */
    struct ggml_cgraph *g1 = ggml_new_graph_custom(ctx, 16, false);
    ggml_build_forward_expand(g1, y0);
    struct ggml_cplan plan1 = ggml_graph_plan(g1, threads, NULL);
    uint8_t *work1 = (uint8_t *)malloc(plan1.work_size ? plan1.work_size : 1);
    plan1.work_data = work1;
    const size_t evict_bytes = (size_t)256 << 20;
    uint64_t *evict_buf = evict ? (uint64_t *)malloc(evict_bytes) : NULL;
    if (evict_buf) memset(evict_buf, 1, evict_bytes);
    volatile uint64_t sink = 0;

    if (ggml_graph_compute(gf, &plan) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "ggml_graph_compute failed\n");
        return 1;
    }
    /* check row 0 of the first matmul: its Q8_0 input recomputed here (blocks of 32, d =
     * amax/127 rounded to fp16, q = round(x/d)), dotted with the dequantized weights */
    {
        const int64_t k = ks[0];
        const uint8_t *wb = (const uint8_t *)w0->data;
        const size_t bsz = ggml_type_size(GGML_TYPE_Q1_0);
        const float *xf = (const float *)x0->data;
        double dot = 0, mag = 0;
        for (int64_t b = 0; b < k / 32; b++) {
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(xf[b * 32 + i]));
            const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
            const double dq = ggml_fp16_to_fp32(ggml_fp32_to_fp16(d));
            for (int i = 0; i < 32; i++) {
                const int64_t c = b * 32 + i;
                const uint8_t *blk = wb + (size_t)(c / qk) * bsz;
                const double wd = ggml_fp16_to_fp32(*(const ggml_fp16_t *)blk);
                const int bit = (blk[sizeof(ggml_fp16_t) + (c % qk) / 8] >> (c % 8)) & 1;
                const double term = (bit ? wd : -wd) * dq * (double)roundf(xf[c] * id);
                dot += term, mag += fabs(term);
            }
        }
        const double got = ((const float *)y0->data)[0];
        if (!(fabs(got - dot) <= 1e-3 * mag + 1e-6)) {
            fprintf(stderr, "check failed: ggml %.9g, expected %.9g\n", got, dot);
            return 1;
        }
    }
    double *times = (double *)malloc((size_t)reps * sizeof(double));
    for (int r = 0; r < reps; r++) {
        if (evict_buf) {
            uint64_t s = 0;
            for (size_t i = 0; i < evict_bytes / 8; i += 8) s += evict_buf[i];
            sink += s;
        }
        const double t0 = now_s();
        const enum ggml_status st = evict ? ggml_graph_compute(g1, &plan1) : ggml_graph_compute(gf, &plan);
        times[r] = now_s() - t0;
        if (st != GGML_STATUS_SUCCESS) return 1;
    }
    printf("{\"threads\": %d, \"m\": %d, \"layers\": %d, \"matrices\": %d, \"evict\": %d, "
           "\"weight_bytes\": %zu, \"times_s\": [",
           threads, m, layers, total, evict, evict ? ggml_nbytes(w0) : weight_bytes);
    for (int r = 0; r < reps; r++) printf("%s%.9f", r ? ", " : "", times[r]);
    qsort(times, (size_t)reps, sizeof(double), cmp_double);
    printf("], \"median_s\": %.9f}\n", times[reps / 2]);
    free(times), free(work), free(work1), free(evict_buf), free(ys);
    ggml_free(ctx);
    return (int)(sink & 0); /* keep the eviction reads */
}
