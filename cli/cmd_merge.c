// peft merge --model DIR --adapter DIR --out DIR: W += delta for every adapted module, saved as an
// HF model folder that transformers loads like the base (zero added inference latency).
#include "adapter.h"
#include "cli.h"
#include "model.h"
#include "util.h"
#include <stdio.h>

int cmd_merge(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL, *out = NULL;
    Option opts[] = {
        {"model", OPT_STRING, &model_dir, "HF model folder"},
        {"adapter", OPT_STRING, &adapter_dir, "PEFT adapter folder"},
        {"out", OPT_STRING, &out, "folder for the merged model"},
    };
    if (parse_options("merge", argc, argv, opts, 3, NULL, 0, NULL)) return 2;
    if (!model_dir || !adapter_dir || !out) { fprintf(stderr, "peft merge: --model, --adapter and --out are required\n"); return 2; }
    Model *m = model_load(model_dir);
    if (!m || adapters_load(m, adapter_dir)) { model_free(m); return fail_with_library_error(); }
    adapters_merge(m);
    int rc = model_save(m, out);
    int n = m->adapters->n;
    model_free(m);
    if (rc) return fail_with_library_error();
    printf("merged %d modules into %s\n", n, out);
    return 0;
}
