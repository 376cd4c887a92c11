// test.h: a tiny test harness. TEST(name) registers a test; CHECK fails it with file:line.
// tests/main.c runs them all (or those whose name contains argv[1]) and ends with
// the line "N passed, N failed".
#pragma once
#include <math.h>
#include <stdio.h>

typedef void (*test_fn)(int *failed);
void test_register(const char *name, test_fn fn);

#define TEST(name)                                                              \
    static void test_##name(int *failed_);                                      \
    __attribute__((constructor)) static void register_##name(void) {            \
        test_register(#name, test_##name);                                      \
    }                                                                           \
    static void test_##name(int *failed_)

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            *failed_ = 1;                                                       \
            return;                                                             \
        }                                                                       \
    } while (0)

#define CHECK_MSG(cond, ...)                                                    \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "  %s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
            *failed_ = 1;                                                       \
            return;                                                             \
        }                                                                       \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                   \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%g vs %g (tol %g)", (double)(a), (double)(b), (double)(tol))

// Path of the shared reference fixtures (../shared/fixtures/hf-peft), or NULL when absent.
const char *fixtures_dir(void);
// A fresh empty temporary directory for this test (removed at exit).
const char *test_tmpdir(void);
