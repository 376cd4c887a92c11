// peft check DIR...: one line per reference case, PASS / FAIL / SKIP; exit 1 on any FAIL.
#include "check.h"
#include "cli.h"
#include <stdio.h>

int cmd_check(int argc, char **argv) {
    char *dirs[256];
    int n = 0;
    if (parse_options("check", argc, argv, NULL, 0, dirs, 256, &n)) return 2;
    if (n == 0) { fprintf(stderr, "usage: peft check DIR...\n"); return 2; }
    int failed = 0;
    for (int i = 0; i < n; i++) {
        CheckResult r;
        check_case(dirs[i], &r);
        if (r.status == CHECK_PASS) printf("PASS %s %.2e\n", r.name, r.max_rel_err);
        else printf("%s %s %s\n", r.status == CHECK_FAIL ? "FAIL" : "SKIP", r.name, r.detail);
        fflush(stdout);
        failed += r.status == CHECK_FAIL;
    }
    return failed ? 1 : 0;
}
