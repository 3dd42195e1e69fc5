/*
 * fuzz_input.h — what the C libFuzzer targets share: CHECK (abort on a mismatch, which
 * libFuzzer reports as a crash with the input saved) and a cursor over the fuzzer's bytes.
 * Define FUZZ_NAME (the target's name, a string) before including it.
 */
#ifndef TAKANE_FUZZ_INPUT_H
#define TAKANE_FUZZ_INPUT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, FUZZ_NAME ": check failed at line %d: %s\n", __LINE__, #cond); \
            abort();                                                                   \
        }                                                                              \
    } while (0)

/* A cursor over the fuzzer's bytes: reads past the end yield zeros. */
typedef struct {
    const uint8_t *p;
    size_t n;
} cursor;

/* The next `bytes` (<= 8) bytes, little-endian. */
static inline uint64_t take(cursor *c, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) {
        uint64_t b = 0;
        if (c->n) b = *c->p++, c->n--;
        v |= b << (8 * i);
    }
    return v;
}

#endif /* TAKANE_FUZZ_INPUT_H */
