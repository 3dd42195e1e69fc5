/*
 * matmul_scalar.c — portable W1A1 popcount tile, and the reference point for the SIMD sets.
 *
 * ISA and flags: none beyond the target's baseline (runs on any x86-64, aarch64, ...).
 * Tile: MR=2 activation rows x NR=4 weight rows: each loaded word is used 2 or 4 times,
 *   and 8 independent accumulators keep the integer pipes busy.
 * Key operation: popcount via SWAR (3 shift/mask/add steps + 1 multiply, ~12 ops/word).
 *   __builtin_popcountll would become a libgcc call (__popcountdi2) without -mpopcnt,
 *   and -mpopcnt would make this file unusable on pre-Nehalem CPUs.
 * Invariants relied on: row pointers are valid for kw words; padding bits are zero in
 *   both operands, so XOR adds nothing past k.
 */
#include "../kernel.h"

#define MR 2
#define NR 4

static inline uint64_t popcount64(uint64_t v) {
    v = v - ((v >> 1) & UINT64_C(0x5555555555555555));
    v = (v & UINT64_C(0x3333333333333333)) + ((v >> 2) & UINT64_C(0x3333333333333333));
    v = (v + (v >> 4)) & UINT64_C(0x0f0f0f0f0f0f0f0f);
    return (v * UINT64_C(0x0101010101010101)) >> 56;
}

static void popcount_tile(const uint64_t *const *x, const uint64_t *const *w, int64_t kw,
                          uint64_t *pc) {
    uint64_t acc[MR][NR] = {{0}};
    for (int64_t q = 0; q < kw; q++) {
        for (int i = 0; i < MR; i++) {
            const uint64_t a = x[i][q];
            for (int j = 0; j < NR; j++) acc[i][j] += popcount64(a ^ w[j][q]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) pc[i * NR + j] = acc[i][j];
}

/* Panel tile: mr rows x 8 panel rows at a time, words in panel order. */
static void panel_tile(const uint64_t *const *x, int mr, const uint64_t *panels, int64_t pstride,
                       int np, int64_t kw, uint32_t *pc, int ldc) {
    for (int p = 0; p < np; p++) {
        const uint64_t *panel = panels + p * pstride;
        for (int i = 0; i < mr; i++) {
            uint64_t acc[TAKANE_PANEL_ROWS] = {0};
            for (int64_t q = 0; q < kw; q++) {
                const uint64_t a = x[i][q];
                for (int r = 0; r < TAKANE_PANEL_ROWS; r++)
                    acc[r] += popcount64(a ^ panel[q * TAKANE_PANEL_ROWS + r]);
            }
            for (int r = 0; r < TAKANE_PANEL_ROWS; r++)
                pc[i * ldc + p * TAKANE_PANEL_ROWS + r] = (uint32_t)acc[r];
        }
    }
}

/* Peak probe: 4 independent chains of ADD (in XOR's place) + SWAR popcount + ADD. */
static uint64_t probe(uint64_t iters, uint64_t *sink) {
    uint64_t v[4], acc[4] = {0};
    const uint64_t key = *sink | 1;
    for (int c = 0; c < 4; c++) v[c] = 0x9e3779b97f4a7c15ull * (uint64_t)(c + 1);
    for (uint64_t it = 0; it < iters; it++)
        for (int c = 0; c < 4; c++) {
            v[c] += key; /* a new value every round: no folding */
            acc[c] += popcount64(v[c]);
        }
    *sink = acc[0] + acc[1] + acc[2] + acc[3];
    return iters * 4 * 64;
}

const takane_matmul_ukernel takane_matmul_ukernel_scalar = {
    MR, NR, popcount_tile, panel_tile, 2, {0, 64, 64}, probe, NULL, NULL, 0,
};
