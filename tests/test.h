// test.h: a tiny test harness. TEST(name) registers a test; CHECK fails it with file:line; SKIP
// says why it cannot run here. tests/main.c runs them all (or those whose name contains argv[1]) and
// ends with the line "N passed, N failed, N skipped" (a skipped test never counts as passed).
#pragma once
#include <math.h>
#include <stdio.h>

// What a test leaves in *failed_ (CHECK and SKIP set it and return).
enum { TEST_PASSED = 0, TEST_FAILED = 1, TEST_SKIPPED = 2 };
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
            *failed_ = TEST_FAILED;                                             \
            return;                                                             \
        }                                                                       \
    } while (0)

#define CHECK_MSG(cond, ...)                                                    \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "  %s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
            *failed_ = TEST_FAILED;                                             \
            return;                                                             \
        }                                                                       \
    } while (0)

// The test cannot run here (printf-style reason): it ends, counted as skipped. test_skip only marks
// it, for helpers that return a value.
void test_skip(int *failed, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define SKIP(...)                                                               \
    do {                                                                        \
        test_skip(failed_, __VA_ARGS__);                                        \
        return;                                                                 \
    } while (0)
#define NO_FIXTURES "no reference fixtures (tests/fixtures/hf-peft, or PEFT_FIXTURES)"
#define SKIP_NO_FIXTURES() SKIP(NO_FIXTURES)
#define NO_SHARED_FIXTURES "no shared reference fixtures (../shared/fixtures/hf-peft, or PEFT_SHARED_FIXTURES)"

#define CHECK_NEAR(a, b, tol)                                                   \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%g vs %g (tol %g)", (double)(a), (double)(b), (double)(tol))

// Path of the reference cases (PEFT_FIXTURES, else the repository's tests/fixtures/hf-peft), or NULL when
// absent (tests then SKIP_NO_FIXTURES; a folder that exists but lacks a case makes them fail).
const char *fixtures_dir(void);
// The shared cases beside the checkout (PEFT_SHARED_FIXTURES, else ../shared/fixtures/hf-peft), or NULL:
// only they hold GPT-2's real tokenizer (tokenizer-gpt2), which the repository does not copy.
const char *shared_fixtures_dir(void);
// The quantization reference cases (PEFT_QUANT_FIXTURES, else tests/fixtures/quant; tools/quant_reference
// makes them), or NULL: their tests then skip.
const char *quant_fixtures_dir(void);
#define NO_QUANT_FIXTURES "no quantization reference cases (tests/fixtures/quant or PEFT_QUANT_FIXTURES): make them with tools/quant_reference/make_cases.py"
// A fresh empty temporary directory for this test (removed at exit).
const char *test_tmpdir(void);
