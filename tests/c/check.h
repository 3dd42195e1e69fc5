/*
 * check.h — the C tests' one assertion: CHECK(cond, printf-style message) counts a check
 * and, when cond is false, a failure, printing the first CHECK_PRINT_MAX failures with
 * their place (a broken kernel fails thousands of checks; the first ones say why). Each
 * test's main prints the counts and returns failures != 0. The counters are plain longs:
 * CHECK belongs on the test's main thread (worker threads report back to it).
 */
#ifndef TAKANE_TEST_CHECK_H
#define TAKANE_TEST_CHECK_H

#include <stdio.h>

#define CHECK_PRINT_MAX 25

static long checks, failures;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            if (failures++ < CHECK_PRINT_MAX) {                                            \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                       \
                fprintf(stderr, __VA_ARGS__);                                              \
                fputc('\n', stderr);                                                       \
            }                                                                              \
        }                                                                                  \
    } while (0)

#endif /* TAKANE_TEST_CHECK_H */
