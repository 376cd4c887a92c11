// peft check DIR...: one line per reference case, PASS / FAIL / SKIP, then "N passed, N failed,
// N skipped"; exit 1 on any FAIL, and on any SKIP unless --allow-skip (a folder that is no case, a
// case the GPU does not run, no GPU: a check that did not happen is not a pass).
// --device cuda runs the model cases on the GPU (fp32 parity mode, or --bf16).
#include "peft.h"
#include "cli.h"
#include <stdio.h>
#include <string.h>

int cmd_check(int argc, char **argv) {
    const char *device = "cpu";
    bool bf16 = false, allow_skip = false;
    Option opts[] = {
        {"device", OPT_STRING, &device, "cpu (default) or cuda"},
        {"bf16", OPT_FLAG, &bf16, "with --device cuda: bf16 compute (loss within 1e-2, gradient cosine >= 0.999)"},
        {"allow-skip", OPT_FLAG, &allow_skip, "exit 0 when cases are skipped (by default a SKIP fails the run)"},
    };
    char *dirs[256];
    int n = 0;
    if (parse_options("check", argc, argv, opts, 3, dirs, 256, &n)) return 2;
    if (n == 0) { fprintf(stderr, "usage: peft check [--device cpu|cuda] [--allow-skip] DIR...\n"); return 2; }
    bool cuda = !strcmp(device, "cuda");
    if (!cuda && strcmp(device, "cpu")) { fprintf(stderr, "peft check: --device must be cpu or cuda\n"); return 2; }
    int count[3] = {0};  // by CheckStatus
    for (int i = 0; i < n; i++) {
        CheckResult r;
        if (cuda) gpu_check_case(dirs[i], bf16 ? GPU_BF16 : GPU_FP32, &r);
        else check_case(dirs[i], &r);
        if (r.status == CHECK_PASS) printf("PASS %s %.2e\n", r.name, r.max_rel_err);
        else printf("%s %s %s\n", r.status == CHECK_FAIL ? "FAIL" : "SKIP", r.name, r.detail);
        fflush(stdout);
        count[r.status]++;
    }
    printf("%d passed, %d failed, %d skipped\n", count[CHECK_PASS], count[CHECK_FAIL], count[CHECK_SKIP]);
    if (count[CHECK_SKIP] && !allow_skip && !count[CHECK_FAIL])
        fprintf(stderr, "peft check: %d case%s skipped (--allow-skip to accept that)\n", count[CHECK_SKIP], count[CHECK_SKIP] > 1 ? "s" : "");
    return count[CHECK_FAIL] || (count[CHECK_SKIP] && !allow_skip) ? 1 : 0;
}
