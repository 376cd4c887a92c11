#ifndef _GNU_SOURCE  // the Makefile defines it too
#define _GNU_SOURCE
#endif
#include "test.h"
#include "util.h"
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_TESTS = 1024 };
static struct { const char *name; test_fn fn; } tests[MAX_TESTS];
static int n_tests;
static char tmp_root[256];

void test_register(const char *name, test_fn fn) {
    if (n_tests < MAX_TESTS) { tests[n_tests].name = name; tests[n_tests].fn = fn; n_tests++; }
}

static const char *existing_dir(const char *env_name, const char *fallback) {
    const char *env = getenv(env_name);
    const char *dir = env ? env : fallback;
    return dir_exists(dir) ? dir : NULL;
}

const char *fixtures_dir(void) { return existing_dir("PEFT_FIXTURES", "tests/fixtures/hf-peft"); }
const char *shared_fixtures_dir(void) { return existing_dir("PEFT_SHARED_FIXTURES", "../shared/fixtures/hf-peft"); }
const char *quant_fixtures_dir(void) { return existing_dir("PEFT_QUANT_FIXTURES", "tests/fixtures/quant"); }

void test_skip(int *failed, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "  skipped: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    *failed = TEST_SKIPPED;
}

const char *test_tmpdir(void) {
    static char dir[512];
    static int counter;
    snprintf(dir, sizeof dir, "%s/t%d", tmp_root, counter++);
    make_dir(dir);
    return dir;
}

static void remove_tmp_root(void) {
    char *cmd = xasprintf("rm -rf '%s'", tmp_root);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmp_root);
    free(cmd);
}

int main(int argc, char **argv) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/peft-test-%d", (int)getpid());
    make_dir(tmp_root);
    atexit(remove_tmp_root);
    if (!fixtures_dir())
        fprintf(stderr, "\n*** SKIPPED: %s not found: reference-case tests do not run ***\n\n",
                getenv("PEFT_FIXTURES") ? getenv("PEFT_FIXTURES") : "tests/fixtures/hf-peft");
    if (!shared_fixtures_dir())
        fprintf(stderr, "\n*** SKIPPED: %s not found: GPT-2's real tokenizer is not tested ***\n\n",
                getenv("PEFT_SHARED_FIXTURES") ? getenv("PEFT_SHARED_FIXTURES") : "../shared/fixtures/hf-peft");
    int passed = 0, failed = 0, skipped = 0;
    char skipped_names[4096] = "";
    for (int i = 0; i < n_tests; i++) {
        if (argc > 1 && !strstr(tests[i].name, argv[1])) continue;
        int f = TEST_PASSED;
        peft_clear_error();
        double t0 = now_seconds();
        tests[i].fn(&f);
        printf("%s %s (%.2fs)\n", f == TEST_FAILED ? "FAIL" : f == TEST_SKIPPED ? "skip" : "ok  ", tests[i].name, now_seconds() - t0);
        fflush(stdout);
        if (f == TEST_FAILED) failed++;
        else if (f == TEST_SKIPPED) {
            size_t len = strlen(skipped_names);
            snprintf(skipped_names + len, sizeof skipped_names - len, "%s%s", skipped++ ? ", " : "", tests[i].name);
        } else passed++;
    }
    if (skipped) printf("\n*** SKIPPED %d unit tests: %s ***\n\n", skipped, skipped_names);
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
