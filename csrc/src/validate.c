/*
 * validate.c — the argument checks that loop over data (finite scales, thresholds, padding
 * bits). The small checks of dimensions, strides, threads, handles and group sizes are the
 * static inline validators of internal.h; every entry point uses both sets.
 */
#include <string.h>

#include "internal.h"

const float takane_zero_threshold = 0.0f;

takane_status takane_check_padding(int64_t rows, int64_t k, const uint64_t *bits,
                                   int64_t row_stride) {
    if (rows < 0 || k < 0) return TAKANE_ERR_NEGATIVE_DIMENSION;
    TAKANE_TRY(takane_check_stride(0, 0, row_stride));
    if (rows == 0 || k % 64 == 0) return TAKANE_OK; /* no padding bits exist */
    if (!bits) return TAKANE_ERR_NULL_POINTER;
    const int64_t last = takane_words_for(k) - 1;
    const uint64_t pad = ~takane_last_word_mask(k);
    uint64_t seen = 0;
    for (int64_t r = 0; r < rows; r++) seen |= bits[r * row_stride + last] & pad;
    return seen ? TAKANE_ERR_PADDING_BITS : TAKANE_OK;
}

/* Branch-free over chunks (the exponent bits all ones means inf or NaN), so the compiler
 * vectorizes it: group scales are N * K / G floats per call. */
takane_status takane_check_finite(const float *v, int64_t len) {
    if (!v) return TAKANE_OK;
    for (int64_t i = 0; i < len; i += 4096) {
        const int64_t end = len - i < 4096 ? len : i + 4096;
        uint32_t bad = 0;
        for (int64_t j = i; j < end; j++) {
            uint32_t u;
            memcpy(&u, v + j, sizeof u);
            bad |= (uint32_t)((u & 0x7F800000u) == 0x7F800000u);
        }
        if (bad) return TAKANE_ERR_NOT_FINITE;
    }
    return TAKANE_OK;
}

takane_status takane_check_threshold(const float *t, int64_t len, int64_t full, int may_be_null) {
    if (!t) return may_be_null ? TAKANE_OK : TAKANE_ERR_NULL_POINTER;
    if (len != 1 && len != full) return TAKANE_ERR_BAD_THRESHOLD_LEN;
    for (int64_t i = 0; i < len; i++)
        if (t[i] != t[i]) return TAKANE_ERR_NAN;
    return TAKANE_OK;
}
