// peft merge --model DIR --adapter DIR --out DIR: W += delta for every adapted module, saved as an
// HF model folder that transformers loads like the base (zero added inference latency). A base saved
// quantized by bitsandbytes is dequantized first and the merge saved in bf16 by default, computed as
// PEFT's dequantize-then-merge in bf16 (--dtype fp32: the dequantized values exactly, plus the delta);
// --quantize quantizes the merged model again and says how far that moves the logits from the
// unquantized merge. An unquantized base keeps fp32 unless --dtype bf16.
// peft merge --model DIR --adapters A:0.7,B:0.3 --combination TYPE [--density D] ... --out DIR: PEFT's
// add_weighted_adapter of several LoRA adapters (lora_combine.c), saved as one adapter folder, or with
// --into-model merged into the base as above.
#include "peft.h"
#include "cli.h"
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

// "DIR:WEIGHT,DIR:WEIGHT,..." (a missing weight is 1): each adapter loaded beside the others on m, then
// combined into m's adapter.
static int combine_adapters(Model *m, const char *list, const CombineOptions *o) {
    char *copy = xstrdup(list), *save = NULL;
    AdapterSet **sets = NULL;
    double *weights = NULL;
    int n = 0, rc = 0;
    for (char *item = strtok_r(copy, ",", &save); item && !rc; item = strtok_r(NULL, ",", &save)) {
        char *colon = strrchr(item, ':'), *end = NULL;
        double w = 1.0;
        if (colon) {
            w = strtod(colon + 1, &end);
            if (end == colon + 1 || *end || !isfinite(w)) { rc = peft_fail("--adapters: \"%s\": the weight after ':' is not a number", item); break; }
            *colon = 0;
        }
        sets = xrealloc(sets, sizeof *sets * (n + 1));
        weights = xrealloc(weights, sizeof *weights * (n + 1));
        weights[n] = w;
        if (!(sets[n] = adapters_load_detached(m, item))) { rc = -1; break; }
        n++;
    }
    if (!rc && n == 0) rc = peft_fail("--adapters: no adapter folders given");
    if (!rc) rc = lora_combine(m, sets, weights, n, o);
    for (int k = 0; k < n; k++) adapter_set_free(sets[k]);
    free(sets);
    free(weights);
    free(copy);
    return rc;
}

int cmd_merge(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL, *out = NULL, *quantize = NULL, *adapters = NULL;
    const char *combination = "svd", *sign = "total", *dtype = NULL;
    float density = NAN;
    int svd_rank = 0, seed = 0;
    bool no_double_quant = false, into_model = false;
    Option opts[16] = {
        {"model", OPT_STRING, &model_dir, "HF model folder (may be one bitsandbytes quantized)"},
        {"adapter", OPT_STRING, &adapter_dir, "PEFT adapter folder"},
        {"out", OPT_STRING, &out, "folder for the merged model (with --adapters: for the combined adapter)"},
        {"adapters", OPT_STRING, &adapters, "LoRA adapter folders and weights to combine, as PEFT's add_weighted_adapter: DIR:W,DIR:W,..."},
        {"combination", OPT_STRING, &combination, "linear, cat, svd (default), ties, dare_linear, dare_ties, magnitude_prune, or ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd"},
        {"density", OPT_FLOAT, &density, "ties, dare_*, magnitude_prune: the fraction of each tensor kept"},
        {"majority-sign", OPT_STRING, &sign, "ties, dare_ties: total (default) or frequency"},
        {"svd-rank", OPT_INT, &svd_rank, "svd types: the combined rank (default: the largest input rank)"},
        {"seed", OPT_INT, &seed, "torch.manual_seed before combining (DARE's random masks; default 0)"},
        {"into-model", OPT_FLAG, &into_model, "with --adapters: merge the combined adapter into the model (--out: a model folder)"},
        {"dtype", OPT_STRING, &dtype, "fp32 or bf16: the merged model's weights (default: bf16 for a base saved quantized, as PEFT's "
                                      "dequantize-then-merge in bf16; fp32 for any other base, as it is held)"},
    };
    int n_opts = 11 + quant_options(opts + 11, &quantize, &no_double_quant), qt;
    bool nested;
    if (parse_options("merge", argc, argv, opts, n_opts, NULL, 0, NULL)) return 2;
    if (!model_dir || !out || !adapter_dir == !adapters) {
        fprintf(stderr, "peft merge: --model, --out and one of --adapter or --adapters are required\n");
        return 2;
    }
    CombineOptions co = {.density = density, .svd_rank = svd_rank, .seed = (uint64_t)(uint32_t)seed};
    if (adapters && (combine_type_parse(combination, &co.type) ||
                     (strcmp(sign, "total") && strcmp(sign, "frequency") && peft_fail("--majority-sign must be total or frequency, not \"%s\"", sign)) ||
                     (svd_rank < 0 && peft_fail("--svd-rank must be positive"))))
        return fail_with_library_error();
    co.sign_frequency = !strcmp(sign, "frequency");
    if (quant_resolve("merge", quantize, no_double_quant, &qt, &nested)) return 2;
    if (adapters && !into_model && qt) { fprintf(stderr, "peft merge: --quantize quantizes a merged model: it needs --into-model with --adapters\n"); return 2; }
    if (dtype && strcmp(dtype, "fp32") && strcmp(dtype, "bf16")) { fprintf(stderr, "peft merge: --dtype must be fp32 or bf16, not \"%s\"\n", dtype); return 2; }
    if (dtype && (qt || (adapters && !into_model))) {
        fprintf(stderr, "peft merge: --dtype is a merged model's dtype: %s\n",
                qt ? "with --quantize its linears are quantized (the other weights stay fp32)" : "it needs --into-model with --adapters");
        return 2;
    }
    Model *m = model_load(model_dir);
    if (!m || (adapters ? combine_adapters(m, adapters, &co) : adapters_load(m, adapter_dir))) { model_free(m); return fail_with_library_error(); }
    if (adapters && !into_model) {
        int rc = adapters_save(m, out);
        if (!rc) printf("combined the adapters (%s) into %s: rank %d on %d modules\n", combine_type_name(co.type), out, m->adapters->cfg.r, m->adapters->n);
        model_free(m);
        return rc ? fail_with_library_error() : 0;
    }
    bool bf16 = dtype ? !strcmp(dtype, "bf16") : m->quant && !qt;
    if (m->quant) {
        printf("dequantized the %s base%s before merging\n", quant_type_name(m->quant), m->double_quant ? " (double quantization)" : "");
        model_dequantize(m);
    }
    // PEFT merging into a base loaded in bf16: the bf16 weight plus the fp32 delta, rounded to bf16 again.
    if (bf16) model_round_bf16(m);
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
    if (!rc) rc = bf16 ? model_save_bf16(m, out) : model_save(m, out);
    int n = m->adapters->n;
    model_free(m);
    if (rc) return fail_with_library_error();
    printf("merged %d modules into %s (%s)\n", n, out, qt ? quant_type_name(qt) : bf16 ? "bf16" : "fp32");
    return 0;
}
