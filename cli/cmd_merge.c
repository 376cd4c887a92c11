// peft merge --model DIR --adapter DIR --out DIR: W += delta for every adapted module, saved as an
// HF model folder that transformers loads like the base (zero added inference latency). A base saved
// quantized by bitsandbytes is dequantized first (the merged weights are saved in fp32, which holds the
// dequantized values exactly); --quantize quantizes the merged model again and says how far that moves
// the logits from the unquantized merge.
#include "adapter.h"
#include "check.h"
#include "cli.h"
#include "model.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Logits of a fixed probe sequence (ids spread over the vocabulary), malloc'd; *n their count.
static float *probe_logits(Model *m, long *n) {
    int T = m->cfg.n_positions < 64 ? m->cfg.n_positions : 64;
    int32_t *ids = xmalloc(sizeof(int32_t) * T);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(((long)t * 7919 + 13) % m->cfg.vocab_size);
    float *out = NULL;
    *n = (long)T * m->cfg.vocab_size;
    if (!isnan(model_forward(m, ids, NULL, 1, T))) {
        out = xmalloc(sizeof(float) * *n);
        memcpy(out, m->act.logits, sizeof(float) * *n);
    }
    free(ids);
    return out;
}

int cmd_merge(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL, *out = NULL, *quantize = NULL;
    bool no_double_quant = false;
    Option opts[8] = {
        {"model", OPT_STRING, &model_dir, "HF model folder (may be one bitsandbytes quantized)"},
        {"adapter", OPT_STRING, &adapter_dir, "PEFT adapter folder"},
        {"out", OPT_STRING, &out, "folder for the merged model"},
    };
    int n_opts = 3 + quant_options(opts + 3, &quantize, &no_double_quant), qt;
    bool nested;
    if (parse_options("merge", argc, argv, opts, n_opts, NULL, 0, NULL)) return 2;
    if (!model_dir || !adapter_dir || !out) { fprintf(stderr, "peft merge: --model, --adapter and --out are required\n"); return 2; }
    if (quant_resolve("merge", quantize, no_double_quant, &qt, &nested)) return 2;
    Model *m = model_load(model_dir);
    if (!m || adapters_load(m, adapter_dir)) { model_free(m); return fail_with_library_error(); }
    if (m->quant) {
        printf("dequantized the %s base%s before merging\n", quant_type_name(m->quant), m->double_quant ? " (double quantization)" : "");
        model_dequantize(m);
    }
    adapters_merge(m);
    int rc = 0;
    if (qt) {
        long n = 0;
        float *merged = probe_logits(m, &n), *requant = NULL;
        for (int i = 0; !rc && i < m->n_linears; i++) rc = model_quantize_linear(m, &m->linears[i], qt, nested);
        if (!rc && merged && (requant = probe_logits(m, &n)))
            printf("re-quantized to %s%s: the logits of a %ld-token probe move by %.3g (relative) from the unquantized merge\n",
                   quant_type_name(qt), nested ? " with double quantization" : "", n / m->cfg.vocab_size, rel_error(requant, merged, n));
        free(merged);
        free(requant);
    }
    if (!rc) rc = model_save(m, out);
    int n = m->adapters->n;
    model_free(m);
    if (rc) return fail_with_library_error();
    printf("merged %d modules into %s\n", n, out);
    return 0;
}
