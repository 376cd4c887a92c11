// mixed_bench: the cost of mixing adapters in one batch, without HTTP. One decode step
// (kv_forward of B rows, one token each, at context position P) of a random GPT-2, with every
// row on: the base; one LoRA adapter (all rows); K distinct LoRA adapters (row i on adapter
// i mod K); the same LoRA merged into the weights; and the same for VeRA (distinct VeRA adapters
// share their projections). Each configuration is timed REPS times, interleaved with the others,
// and the minimum kept (robust on a busy machine).
//   mixed_bench [--arch gpt2|llama] [--layers 4] [--hidden 768] [--heads H] [--kv-heads H] [--inner I]
//               [--vocab 257] [--batch 16] [--adapters K] [--pos 64] [--reps 30] [--lora-r 16] [--vera-r 256]
//               [--targets LIST] [--device cpu|cuda]
// --adapters K (default min(batch, 100)): row i uses adapter i mod K. --device cuda runs the step on
// the GPU (bf16), where the time includes copying the logits back, as the server does.
#include "adapter.h"
#include "config.h"
#include "cuda/gpu.h"
#include "generate.h"
#include "model.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int layers = 4, hidden = 768, heads = 0, kv_heads = 0, inner = 0, vocab = 257, batch = 16, n_adapters = 0, pos = 64, reps = 30,
           lora_r = 16, vera_r = 256;
static const char *arch = "gpt2", *targets = NULL, *device = "cpu";

static void perturb(AdapterSet *set, uint64_t seed) {
    for (int i = 0; i < set->n_params; i++)
        for (long j = 0; j < set->params[i]->numel; j++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            set->params[i]->w[j] += (float)((double)(seed >> 40) / (double)(1ull << 24) - 0.5) * 0.02f;
        }
}

// A detached set (attach: attached to m, then merged into its weights instead).
static AdapterSet *make_set(Model *m, MethodId type, uint64_t seed, bool attach_and_merge) {
    AdapterConfig c;
    adapter_config_defaults(&c, type);
    c.r = type == METHOD_VERA ? vera_r : lora_r;
    c.alpha = 2.0f * c.r;
    c.prng_key = 0;  // one key: the VeRA sets share projections
    adapter_config_set_targets(&c, targets);
    AdapterSet *s = NULL;
    if (attach_and_merge) s = adapters_attach(m, &c, seed) ? NULL : m->adapters;
    else s = adapters_new_detached(m, &c, seed);
    adapter_config_free(&c);
    if (!s) { fprintf(stderr, "mixed_bench: %s\n", peft_last_error()); exit(1); }
    perturb(s, seed);
    if (attach_and_merge) adapters_merge(m);
    return s;
}

// One decode step of `batch` rows with these per-row sets (NULL: m->row_adapters unset).
static double step_time(Model *m, KVCache *kv, AdapterSet **row_sets) {
    KVRow rows[1024];
    int32_t ids[1024];
    float *logits = xmalloc(sizeof(float) * (size_t)batch * m->cfg.vocab_size);
    for (int i = 0; i < batch; i++) {
        kv_cache_truncate(kv, i, pos);
        rows[i] = (KVRow){i, 1};
        ids[i] = (i * 7 + 3) % m->cfg.vocab_size;
    }
    m->row_adapters = row_sets;
    double t0 = now_seconds();
    if (kv_forward(m, kv, rows, batch, ids, logits, false)) { fprintf(stderr, "mixed_bench: %s\n", peft_last_error()); exit(1); }
    double dt = now_seconds() - t0;
    m->row_adapters = NULL;
    free(logits);
    return dt;
}

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--arch")) arch = argv[i + 1];
        else if (!strcmp(argv[i], "--targets")) targets = argv[i + 1];
        else if (!strcmp(argv[i], "--device")) device = argv[i + 1];
        else if (!strcmp(argv[i], "--heads")) heads = v;
        else if (!strcmp(argv[i], "--kv-heads")) kv_heads = v;
        else if (!strcmp(argv[i], "--inner")) inner = v;
        else if (!strcmp(argv[i], "--vocab")) vocab = v;
        else if (!strcmp(argv[i], "--adapters")) n_adapters = v;
        else if (!strcmp(argv[i], "--layers")) layers = v;
        else if (!strcmp(argv[i], "--hidden")) hidden = v;
        else if (!strcmp(argv[i], "--batch")) batch = v;
        else if (!strcmp(argv[i], "--pos")) pos = v;
        else if (!strcmp(argv[i], "--reps")) reps = v;
        else if (!strcmp(argv[i], "--lora-r")) lora_r = v;
        else if (!strcmp(argv[i], "--vera-r")) vera_r = v;
        else { fprintf(stderr, "mixed_bench: unknown option %s\n", argv[i]); return 2; }
    }
    if (batch < 1 || batch > 1024) { fprintf(stderr, "mixed_bench: --batch 1..1024\n"); return 2; }
    bool gpt2 = !strcmp(arch, "gpt2"), cuda = !strcmp(device, "cuda");
    if (!heads) heads = hidden / 64 > 0 ? hidden / 64 : 1;
    if (!kv_heads) kv_heads = heads;
    if (!inner) inner = gpt2 ? 4 * hidden : hidden * 8 / 3;
    if (!targets) targets = gpt2 ? "c_attn,c_proj,c_fc" : "q_proj,v_proj";
    char json[512];
    if (gpt2)
        snprintf(json, sizeof json,
                 "{\"model_type\":\"gpt2\",\"vocab_size\":%d,\"n_embd\":%d,\"n_head\":%d,\"n_layer\":%d,\"n_inner\":%d,\"n_positions\":%d,"
                 "\"layer_norm_epsilon\":1e-5}",
                 vocab, hidden, heads, layers, inner, pos + 8);
    else
        snprintf(json, sizeof json,
                 "{\"model_type\":\"llama\",\"vocab_size\":%d,\"hidden_size\":%d,\"num_attention_heads\":%d,\"num_key_value_heads\":%d,"
                 "\"num_hidden_layers\":%d,\"intermediate_size\":%d,\"max_position_embeddings\":%d}",
                 vocab, hidden, heads, kv_heads, layers, inner, pos + 8);
    ModelConfig cfg;
    if (config_parse(&cfg, json, "bench")) { fprintf(stderr, "mixed_bench: %s\n", peft_last_error()); return 1; }
    Model *m = model_create_random(&cfg, 1);
    if (cuda && gpu_inference_attach(m, GPU_BF16)) { fprintf(stderr, "mixed_bench: %s\n", peft_last_error()); return 1; }
    KVCache *kv = kv_cache_new(m, batch, pos + 8);
    // Fill every slot's first pos positions once (the values do not matter for timing).
    {
        KVRow *rows = xmalloc(sizeof(KVRow) * batch);
        int32_t *ids = xcalloc((size_t)batch * pos, sizeof(int32_t));
        float *lg = xmalloc(sizeof(float) * (size_t)batch * cfg.vocab_size);
        for (int i = 0; i < batch; i++) rows[i] = (KVRow){i, pos};
        kv_forward(m, kv, rows, batch, ids, lg, false);
        free(rows);
        free(ids);
        free(lg);
    }
    enum { K_MAX = 1024 };
    AdapterSet *lora[K_MAX], *vera[K_MAX];
    int K = n_adapters > 0 ? n_adapters : batch < 100 ? batch : 100;
    if (K > K_MAX) { fprintf(stderr, "mixed_bench: --adapters 1..%d\n", K_MAX); return 2; }
    for (int k = 0; k < K; k++) lora[k] = make_set(m, METHOD_LORA, 100 + k, false);
    for (int k = 0; k < K; k++) vera[k] = make_set(m, METHOD_VERA, 300 + k, false);
    AdapterSet **one_lora = xmalloc(sizeof(AdapterSet *) * batch), **many_lora = xmalloc(sizeof(AdapterSet *) * batch);
    AdapterSet **one_vera = xmalloc(sizeof(AdapterSet *) * batch), **many_vera = xmalloc(sizeof(AdapterSet *) * batch);
    for (int i = 0; i < batch; i++) {
        one_lora[i] = lora[0];
        many_lora[i] = lora[i % K];
        one_vera[i] = vera[0];
        many_vera[i] = vera[i % K];
    }
    enum { C_BASE, C_LORA1, C_LORAK, C_LORAM, C_VERA1, C_VERAK, C_VERAM, NC };
    const char *names[NC] = {"base", "LoRA, 1 adapter", "LoRA, K distinct", "LoRA merged", "VeRA, 1 adapter", "VeRA, K distinct", "VeRA merged"};
    double best[NC];
    for (int c = 0; c < NC; c++) best[c] = 1e30;
    // The merged runs: copies of the base with lora[0] (vera[0]) merged into the weights.
    Model *ml = model_create_random(&cfg, 1), *mv = model_create_random(&cfg, 1);
    make_set(ml, METHOD_LORA, 100, true);
    make_set(mv, METHOD_VERA, 300, true);
    if (cuda && (gpu_inference_attach(ml, GPU_BF16) || gpu_inference_attach(mv, GPU_BF16))) {
        fprintf(stderr, "mixed_bench: %s\n", peft_last_error());
        return 1;
    }
    KVCache *kvl = kv_cache_new(ml, batch, pos + 8), *kvv = kv_cache_new(mv, batch, pos + 8);
    {
        KVRow *rows = xmalloc(sizeof(KVRow) * batch);
        int32_t *ids = xcalloc((size_t)batch * pos, sizeof(int32_t));
        float *lg = xmalloc(sizeof(float) * (size_t)batch * cfg.vocab_size);
        for (int i = 0; i < batch; i++) rows[i] = (KVRow){i, pos};
        kv_forward(ml, kvl, rows, batch, ids, lg, false);
        kv_forward(mv, kvv, rows, batch, ids, lg, false);
        free(rows);
        free(ids);
        free(lg);
    }
    for (int rep = 0; rep < reps; rep++) {
        double t;
        for (int i = 0; i < batch; i++) {  // the K adapters in turn: each step takes the next `batch` of them
            many_lora[i] = lora[(rep * batch + i) % K];
            many_vera[i] = vera[(rep * batch + i) % K];
        }
        if ((t = step_time(m, kv, NULL)) < best[C_BASE]) best[C_BASE] = t;
        if ((t = step_time(m, kv, one_lora)) < best[C_LORA1]) best[C_LORA1] = t;
        if ((t = step_time(m, kv, many_lora)) < best[C_LORAK]) best[C_LORAK] = t;
        if ((t = step_time(ml, kvl, NULL)) < best[C_LORAM]) best[C_LORAM] = t;
        if ((t = step_time(m, kv, one_vera)) < best[C_VERA1]) best[C_VERA1] = t;
        if ((t = step_time(m, kv, many_vera)) < best[C_VERAK]) best[C_VERAK] = t;
        if ((t = step_time(mv, kvv, NULL)) < best[C_VERAM]) best[C_VERAM] = t;
    }
    char dev[256] = "CPU";
    if (cuda) gpu_describe(dev, sizeof dev);
    printf("decode step on %s: %s %d layers, hidden %d, %d rows at position %d; LoRA r%d, VeRA r%d on %s; K = %d; best of %d\n", dev,
           gpt2 ? "GPT-2" : "Llama", layers, hidden, batch, pos, lora_r, vera_r, targets, K, reps);
    printf("| rows on | ms per step | tokens/s | vs base |\n| --- | ---: | ---: | ---: |\n");
    for (int c = 0; c < NC; c++)
        printf("| %s | %.3f | %.0f | %.2fx |\n", names[c], best[c] * 1e3, batch / best[c], best[C_BASE] / best[c]);
    return 0;
}
