#ifndef _GNU_SOURCE  // the Makefile defines it too
#define _GNU_SOURCE
#endif
#include "test.h"
#include "../src/util.h"
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

const char *fixtures_dir(void) {
    static const char *candidates[] = {"../shared/fixtures/hf-peft", "shared/fixtures/hf-peft", NULL};
    const char *env = getenv("PEFT_FIXTURES");
    if (env) return dir_exists(env) ? env : NULL;
    for (int i = 0; candidates[i]; i++)
        if (dir_exists(candidates[i])) return candidates[i];
    return NULL;
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
    if (!fixtures_dir()) fprintf(stderr, "\n*** SKIPPED: ../shared/fixtures/hf-peft not found: reference-case tests do not run ***\n\n");
    int passed = 0, failed = 0;
    for (int i = 0; i < n_tests; i++) {
        if (argc > 1 && !strstr(tests[i].name, argv[1])) continue;
        int f = 0;
        peft_clear_error();
        double t0 = now_seconds();
        tests[i].fn(&f);
        printf("%s %s (%.2fs)\n", f ? "FAIL" : "ok  ", tests[i].name, now_seconds() - t0);
        fflush(stdout);
        if (f) failed++; else passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
