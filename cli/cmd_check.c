// peft check DIR...: one line per reference case, PASS / FAIL / SKIP; exit 1 on any FAIL.
// --device cuda runs the model cases on the GPU (fp32 parity mode, or --bf16).
#include "check.h"
#include "cli.h"
#include "cuda/gpu.h"
#include <stdio.h>
#include <string.h>

int cmd_check(int argc, char **argv) {
    const char *device = "cpu";
    bool bf16 = false;
    Option opts[] = {
        {"device", OPT_STRING, &device, "cpu (default) or cuda"},
        {"bf16", OPT_FLAG, &bf16, "with --device cuda: bf16 compute (loss within 1e-2, gradient cosine >= 0.999)"},
    };
    char *dirs[256];
    int n = 0;
    if (parse_options("check", argc, argv, opts, 2, dirs, 256, &n)) return 2;
    if (n == 0) { fprintf(stderr, "usage: peft check [--device cpu|cuda] DIR...\n"); return 2; }
    bool cuda = !strcmp(device, "cuda");
    if (!cuda && strcmp(device, "cpu")) { fprintf(stderr, "peft check: --device must be cpu or cuda\n"); return 2; }
    int failed = 0;
    for (int i = 0; i < n; i++) {
        CheckResult r;
        if (cuda) gpu_check_case(dirs[i], bf16 ? GPU_BF16 : GPU_FP32, &r);
        else check_case(dirs[i], &r);
        if (r.status == CHECK_PASS) printf("PASS %s %.2e\n", r.name, r.max_rel_err);
        else printf("%s %s %s\n", r.status == CHECK_FAIL ? "FAIL" : "SKIP", r.name, r.detail);
        fflush(stdout);
        failed += r.status == CHECK_FAIL;
    }
    return failed ? 1 : 0;
}
