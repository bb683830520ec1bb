/*
 * harness.h - the project's tiny test harness (header only).
 *
 *     TEST(name) { ASSERT_EQ(1 + 1, 2); }
 *     int main(int argc, char **argv) { return harness_main(argc, argv); }
 *
 * Tests register themselves through a constructor; harness_main() runs them
 * in order (or only those whose name contains --filter TEXT), prints one line
 * per failure with file, line and both values, and closes with the line
 * "N passed, N failed". --seed N sets harness_seed (default: time-derived,
 * always printed so a failing run can be replayed).
 */
#ifndef QUORUMFS_TESTS_HARNESS_H
#define QUORUMFS_TESTS_HARNESS_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HARNESS_TESTS_MAX 1024

struct harness_test {
    const char *name;
    void (*fn)(void);
};

static struct harness_test harness_tests[HARNESS_TESTS_MAX];
static int harness_n_tests;
static int harness_cur_failed;
static uint64_t harness_seed;

static inline void harness_register(const char *name, void (*fn)(void)) {
    if (harness_n_tests >= HARNESS_TESTS_MAX) {
        fprintf(stderr, "harness: too many tests\n");
        abort();
    }
    harness_tests[harness_n_tests].name = name;
    harness_tests[harness_n_tests].fn = fn;
    harness_n_tests++;
}

#define TEST(name)                                                                                 \
    static void test_##name(void);                                                                 \
    __attribute__((constructor)) static void harness_reg_##name(void) {                            \
        harness_register(#name, test_##name);                                                      \
    }                                                                                              \
    static void test_##name(void)

#define HARNESS_FAIL_(...)                                                                         \
    do {                                                                                           \
        fprintf(stderr, "  FAIL %s:%d: ", __FILE__, __LINE__);                                     \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        harness_cur_failed = 1;                                                                    \
        return;                                                                                    \
    } while (0)

/* Failing assertions print and return from the current test function. */
#define ASSERT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) HARNESS_FAIL_("ASSERT(%s)", #cond);                                           \
    } while (0)

#define ASSERT_INT_OP_(a, op, b)                                                                   \
    do {                                                                                           \
        long long harness_a_ = (long long)(a), harness_b_ = (long long)(b);                        \
        if (!(harness_a_ op harness_b_))                                                           \
            HARNESS_FAIL_("%s %s %s (%lld vs %lld)", #a, #op, #b, harness_a_, harness_b_);         \
    } while (0)

#define ASSERT_EQ(a, b) ASSERT_INT_OP_(a, ==, b)
#define ASSERT_NE(a, b) ASSERT_INT_OP_(a, !=, b)
#define ASSERT_LT(a, b) ASSERT_INT_OP_(a, <, b)
#define ASSERT_LE(a, b) ASSERT_INT_OP_(a, <=, b)
#define ASSERT_GT(a, b) ASSERT_INT_OP_(a, >, b)
#define ASSERT_GE(a, b) ASSERT_INT_OP_(a, >=, b)

#define ASSERT_U64_EQ(a, b)                                                                        \
    do {                                                                                           \
        uint64_t harness_a_ = (uint64_t)(a), harness_b_ = (uint64_t)(b);                           \
        if (harness_a_ != harness_b_)                                                              \
            HARNESS_FAIL_("%s == %s (%" PRIu64 " vs %" PRIu64 ")", #a, #b, harness_a_,             \
                          harness_b_);                                                             \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                                        \
    do {                                                                                           \
        const char *harness_a_ = (a), *harness_b_ = (b);                                           \
        if (harness_a_ == NULL || harness_b_ == NULL || strcmp(harness_a_, harness_b_) != 0)       \
            HARNESS_FAIL_("%s == %s (\"%s\" vs \"%s\")", #a, #b,                                   \
                          harness_a_ ? harness_a_ : "(null)", harness_b_ ? harness_b_ : "(null)"); \
    } while (0)

#define ASSERT_MEM_EQ(a, b, n)                                                                     \
    do {                                                                                           \
        if (memcmp((a), (b), (n)) != 0) HARNESS_FAIL_("memcmp(%s, %s, %s) != 0", #a, #b, #n);      \
    } while (0)

/* Runs the registered tests; returns the process exit code. */
static inline int harness_main(int argc, char **argv) {
    const char *filter = NULL;
    harness_seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            harness_seed = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
            filter = argv[++i];
    }
    printf("seed %" PRIu64 "\n", harness_seed);
    int passed = 0, failed = 0;
    for (int i = 0; i < harness_n_tests; i++) {
        if (filter && !strstr(harness_tests[i].name, filter)) continue;
        harness_cur_failed = 0;
        harness_tests[i].fn();
        if (harness_cur_failed) {
            printf("FAIL %s\n", harness_tests[i].name);
            failed++;
        } else {
            printf("ok   %s\n", harness_tests[i].name);
            passed++;
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif /* QUORUMFS_TESTS_HARNESS_H */
