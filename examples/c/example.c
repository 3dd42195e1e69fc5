/*
 * takane_kernels from C: pack weights and activations, run the W1A1 matmul and a binary
 * 3x3 convolution (zero padding), and check both against naive loops over the ±1 values;
 * then the W1A8 layer (Q8_0 activations, group scales) against the float product; then
 * export the packed weights with one scale per 128 weights as llama.cpp's GGUF Q1_0 blocks
 * and import them back. Exit status 0 when everything matches.
 *
 * With CMake: see CMakeLists.txt next to this file. With pkg-config, in one line:
 *   cc example.c $(PKG_CONFIG_PATH=$(python -m takane_kernels --pkgconfig-dir) \
 *       pkg-config --cflags --libs takane_kernels) -o takane_example
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <takane/takane.h>

enum { M = 5, N = 37, K = 200, KW = (K + 63) / 64 };

/* A small deterministic generator, so every run checks the same data. */
static float next_value(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((int64_t)(*state >> 40) - (1 << 23)) / (float)(1 << 23); /* [-1, 1) */
}

static int check(takane_status status, const char *what) {
    if (status != TAKANE_OK) {
        fprintf(stderr, "%s failed: %s\n", what, takane_status_string(status));
        return 1;
    }
    return 0;
}

int main(void) {
    /* 1. The header this program was compiled with must match the library it runs on. */
    if (takane_abi_version() != TAKANE_ABI_VERSION) {
        fprintf(stderr, "ABI mismatch: header %d, library %u\n", TAKANE_ABI_VERSION,
                takane_abi_version());
        return 1;
    }

    static float w[N][K], x[M][K], threshold[K];
    uint64_t state = 2026;
    for (int j = 0; j < N; j++)
        for (int c = 0; c < K; c++) w[j][c] = next_value(&state);
    for (int i = 0; i < M; i++)
        for (int c = 0; c < K; c++) x[i][c] = next_value(&state);
    for (int c = 0; c < K; c++) threshold[c] = 0.25f * next_value(&state); /* per channel */

    /* 2. Pack: weights at threshold 0 (bit = w >= 0), activations at per-channel
     *    thresholds. Row strides are in elements: floats for x, uint64 words for bits. */
    static uint64_t wbits[N][KW], xbits[M][KW];
    if (check(takane_pack_f32(N, K, &w[0][0], K, NULL, 0, &wbits[0][0], KW), "pack weights") ||
        check(takane_pack_f32(M, K, &x[0][0], K, threshold, K, &xbits[0][0], KW),
              "pack activations"))
        return 1;

    /* 3. The W1A1 product on packed operands, and the fused form that binarizes float
     *    activations inside the call; threads = 0 uses the library's default. */
    static int32_t y[M][N], y_f32[M][N];
    if (check(takane_binary_matmul(M, N, K, &xbits[0][0], KW, &wbits[0][0], KW, &y[0][0], N, 0),
              "takane_binary_matmul") ||
        check(takane_binary_matmul_f32(M, N, K, &x[0][0], K, threshold, K, &wbits[0][0], KW,
                                       &y_f32[0][0], N, 0),
              "takane_binary_matmul_f32"))
        return 1;

    /* 4. The naive reference: sum over c of sign(x[i][c] - t[c]) * sign(w[j][c]). */
    int mismatches = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            int32_t d = 0;
            for (int c = 0; c < K; c++)
                d += (x[i][c] >= threshold[c] ? 1 : -1) * (w[j][c] >= 0.0f ? 1 : -1);
            mismatches += (y[i][j] != d) + (y_f32[i][j] != d);
        }

    /* 5. W1A8, the 1-bit LLM layer: the same weights against the float activations
     *    quantized inside the call to llama.cpp's Q8_0 (int8 per block of 32, fp16 block
     *    scale), with a group scale per 64 weights. Q8_0 rounds each activation by up to
     *    half a step (max |x| of its block / 254), so compare with that tolerance. */
    enum { G = 64, NG = (K + G - 1) / G };
    static float gscale[N][NG], y8[M][N];
    for (int j = 0; j < N; j++)
        for (int g = 0; g < NG; g++) gscale[j][g] = 0.5f;
    if (check(takane_binary_weight_matmul_ex(M, N, K, &x[0][0], K, &wbits[0][0], KW, NULL, NULL,
                                             &gscale[0][0], G, NULL, TAKANE_ACTIVATIONS_Q8_0,
                                             &y8[0][0], N, 0),
              "takane_binary_weight_matmul_ex"))
        return 1;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double exact = 0, tol = 1e-4;
            for (int c = 0; c < K; c++) {
                exact += 0.5 * x[i][c] * (w[j][c] >= 0.0f ? 1 : -1);
                tol += 0.5 * (1.0 / 254 + 1.0 / 1024); /* |x| <= 1: half a step, fp16 scale */
            }
            mismatches += !(y8[i][j] - exact <= tol && exact - y8[i][j] <= tol);
        }

    /* 6. A binary 3x3 convolution, NHWC: a 6x6 image of CI channels packed per pixel,
     *    OHWI weights packed per tap, zero padding (out-of-image taps count 0). */
    enum { IMG = 6, CI = 70, CO = 9, CIW = (CI + 63) / 64 };
    static float img[IMG * IMG][CI], cw[CO * 9][CI], cy[IMG * IMG][CO];
    static uint64_t img_bits[IMG * IMG][CIW], cw_bits[CO * 9][CIW];
    for (int p = 0; p < IMG * IMG; p++)
        for (int c = 0; c < CI; c++) img[p][c] = next_value(&state);
    for (int r = 0; r < CO * 9; r++)
        for (int c = 0; c < CI; c++) cw[r][c] = next_value(&state);
    takane_conv_weights *conv = NULL;
    takane_conv2d_geometry geo = {1, IMG, IMG, 1, 1, 1, 1, 1, 1, 1, 1, 0};
    if (check(takane_pack_f32(IMG * IMG, CI, &img[0][0], CI, NULL, 0, &img_bits[0][0], CIW), "pack image") ||
        check(takane_pack_f32(CO * 9, CI, &cw[0][0], CI, NULL, 0, &cw_bits[0][0], CIW), "pack filters") ||
        check(takane_conv_weights_create(CO, 3, 3, CI, 1, &cw_bits[0][0], &conv), "conv weights") ||
        check(takane_binary_conv2d(conv, &geo, &img_bits[0][0], NULL, NULL, NULL, &cy[0][0], 0),
              "takane_binary_conv2d"))
        return 1;
    takane_conv_weights_free(conv);
    for (int oy = 0; oy < IMG; oy++)
        for (int ox = 0; ox < IMG; ox++)
            for (int o = 0; o < CO; o++) {
                int32_t d = 0;
                for (int t = 0; t < 9; t++) {
                    const int iy = oy - 1 + t / 3, ix = ox - 1 + t % 3;
                    if (iy < 0 || iy >= IMG || ix < 0 || ix >= IMG) continue; /* zero padding */
                    for (int c = 0; c < CI; c++)
                        d += (img[iy * IMG + ix][c] >= 0.0f ? 1 : -1) * (cw[o * 9 + t][c] >= 0.0f ? 1 : -1);
                }
                mismatches += cy[oy * IMG + ox][o] != (float)d;
            }

    /* 7. Errors are statuses, never crashes: a negative dimension is reported. */
    if (takane_binary_matmul(-1, N, K, NULL, KW, NULL, KW, NULL, N, 0) !=
        TAKANE_ERR_NEGATIVE_DIMENSION) {
        fprintf(stderr, "expected TAKANE_ERR_NEGATIVE_DIMENSION\n");
        return 1;
    }

    const char *isa = takane_isa_name(takane_isa_last_used());

    /* 8. GGUF Q1_0 (llama.cpp's 1-bit format): the first 128 columns of each weight row as
     *    one Q1_0 block (fp16 scale d + the 16 bytes of sign bits), with d = mean |w| of
     *    the block; and back. The bits come back unchanged, d as the fp16 nearest to it. */
    enum { QK = 128, QBYTES = 18 };
    static float qscale[N], qback[N];
    static uint8_t q1_0[N][QBYTES];
    static uint64_t qbits[N][QK / 64];
    for (int j = 0; j < N; j++) {
        float sum = 0.0f;
        for (int c = 0; c < QK; c++) sum += w[j][c] < 0 ? -w[j][c] : w[j][c];
        qscale[j] = sum / QK;
    }
    if (check(takane_bits_to_q1_0(N, QK, &wbits[0][0], KW, qscale, 1, &q1_0[0][0], QBYTES),
              "takane_bits_to_q1_0") ||
        check(takane_q1_0_to_bits(N, QK, &q1_0[0][0], QBYTES, &qbits[0][0], QK / 64, qback, 1),
              "takane_q1_0_to_bits"))
        return 1;
    int q_mismatches = 0;
    for (int j = 0; j < N; j++) {
        const float err = qback[j] > qscale[j] ? qback[j] - qscale[j] : qscale[j] - qback[j];
        q_mismatches += qbits[j][0] != wbits[j][0] || qbits[j][1] != wbits[j][1] ||
                        err > qscale[j] / 2048.0f; /* fp16 keeps 11 significant bits */
    }
    /* K = 200 is not a whole number of Q1_0 blocks: reported, nothing written */
    if (takane_bits_to_q1_0(N, K, &wbits[0][0], KW, NULL, 0, &q1_0[0][0], QBYTES) !=
        TAKANE_ERR_BAD_GROUP_SIZE) {
        fprintf(stderr, "expected TAKANE_ERR_BAD_GROUP_SIZE\n");
        return 1;
    }

    printf("takane_kernels %s (ABI %u), ISA %s: %dx%dx%d W1A1 matmul, W1A8 and conv %s; "
           "Q1_0 round trip %s\n",
           takane_version_string(), takane_abi_version(), isa, M, N, K,
           mismatches ? "MISMATCH" : "match their naive loops", q_mismatches ? "MISMATCH" : "exact");
    return mismatches || q_mismatches ? 1 : 0;
}
