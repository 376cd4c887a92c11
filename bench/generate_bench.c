// generate_bench.c: decode speed (tokens/s at batch 1) of a GPT-2-small-shaped random model
// (n_embd 768, 12 layers, 12 heads, vocab 50257): the base model, a LoRA adapter merged into
// the weights, and the same adapter applied live (unmerged). The zero-latency claim is that
// merged costs nothing and live costs little (under 10% at r=8 on c_attn).
//
//   make build/generate_bench   (the Makefile's bench rule: every src folder on the include path)
//   OMP_NUM_THREADS=2 ./build/generate_bench [new_tokens=128] [rounds=5] [prompt_tokens=32]
//
// Each round times every configuration once (interleaved, so drift hits all alike); the table
// gives the median over rounds. Greedy decoding, one token per step after a prefill.
#include "adapter.h"
#include "generate.h"
#include "util.h"
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    const char *targets;  // NULL: no adapter
    MethodId type;
    int r;
    bool merged;
} Setup;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

// Prefill `plen` tokens, then decode n_new greedily; returns decode tokens/s (prefill time in *prefill_s).
static double run(Model *m, KVCache *kv, const int32_t *prompt, int plen, int n_new, double *prefill_s, int32_t *out) {
    int V = m->cfg.vocab_size;
    static float *logits;
    if (!logits) logits = xmalloc(sizeof(float) * V);
    kv_cache_reset(kv, 0);
    KVRow row = {0, plen};
    double t0 = now_seconds();
    if (kv_forward(m, kv, &row, 1, prompt, logits, false)) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
    double t1 = now_seconds();
    int32_t id = argmax(logits, V);
    row.n = 1;
    for (int i = 0; i < n_new; i++) {
        out[i] = id;
        if (kv_forward(m, kv, &row, 1, &id, logits, false)) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
        id = argmax(logits, V);
    }
    double t2 = now_seconds();
    *prefill_s = t1 - t0;
    return n_new / (t2 - t1);
}

static Model *make_model(const ModelConfig *c, const Setup *s) {
    Model *m = model_create_random(c, 1);
    if (!s->targets) return m;
    AdapterConfig cfg;
    adapter_config_defaults(&cfg, s->type);
    cfg.r = s->r;
    cfg.alpha = 2.0f * s->r;
    adapter_config_set_targets(&cfg, s->targets);
    cfg.fan_in_fan_out = true;
    if (adapters_attach(m, &cfg, 7)) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
    adapter_config_free(&cfg);
    // Non-zero B (LoRA starts with B = 0), so the adapter changes the output.
    GenRng r;
    gen_rng_seed(&r, 3);
    for (int i = 0; i < m->adapters->n_params; i++)
        for (long j = 0; j < m->adapters->params[i]->numel; j++) m->adapters->params[i]->w[j] = (float)(gen_rng_uniform(&r) - 0.5) * 0.02f;
    if (s->merged) adapters_merge(m);
    return m;
}

int main(int argc, char **argv) {
    int n_new = argc > 1 ? atoi(argv[1]) : 128, rounds = argc > 2 ? atoi(argv[2]) : 5, plen = argc > 3 ? atoi(argv[3]) : 32;
    ModelConfig c = {0};
    c.arch = ARCH_GPT2;
    strcpy(c.model_type, "gpt2");
    c.vocab_size = 50257;
    c.n_layer = 12;
    c.n_embd = 768;
    c.n_head = c.n_kv_head = 12;
    c.head_dim = 64;
    c.n_inner = 3072;
    c.n_positions = 1024;
    c.norm_eps = 1e-5f;
    c.tie_word_embeddings = true;
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    c.bos_token_id = c.eos_token_id = 50256;
    Setup setups[] = {
        {"base", NULL, METHOD_LORA, 0, false},
        {"LoRA r=8 c_attn, merged", "c_attn", METHOD_LORA, 8, true},
        {"LoRA r=8 c_attn, live", "c_attn", METHOD_LORA, 8, false},
        {"LoRA r=8 all linear, live", "c_attn,c_proj,c_fc", METHOD_LORA, 8, false},
        {"VeRA r=256 c_attn, live", "c_attn", METHOD_VERA, 256, false},
    };
    enum { NS = sizeof setups / sizeof *setups };
    Model *models[NS];
    for (int s = 0; s < NS; s++) models[s] = make_model(&c, &setups[s]);
    KVCache *kv = kv_cache_new(models[0], 1, plen + n_new + 1);
    int32_t *prompt = xmalloc(sizeof(int32_t) * plen), *out = xmalloc(sizeof(int32_t) * n_new), *out_live = xmalloc(sizeof(int32_t) * n_new);
    GenRng r;
    gen_rng_seed(&r, 1);
    for (int i = 0; i < plen; i++) prompt[i] = (int32_t)(gen_rng_uniform(&r) * c.vocab_size);
    double tps[NS][64], pre[NS][64];
    if (rounds > 64) rounds = 64;
    double dummy;
    for (int s = 0; s < NS; s++) run(models[s], kv, prompt, plen, 8, &dummy, out);  // warm up
    for (int k = 0; k < rounds; k++)
        for (int s = 0; s < NS; s++) tps[s][k] = run(models[s], kv, prompt, plen, n_new, &pre[s][k], s == 2 ? out_live : out);
    // Merged and live must agree (greedy path of the same adapter).
    run(models[1], kv, prompt, plen, n_new, &dummy, out);
    int agree = 0;
    while (agree < n_new && out[agree] == out_live[agree]) agree++;
    printf("GPT-2-small-shaped random model (768 x 12 layers, vocab 50257), batch 1, %d prompt + %d new tokens, "
           "%d OpenMP threads, median of %d rounds\n\n",
           plen, n_new, omp_get_max_threads(), rounds);
    printf("| %-28s | %12s | %10s | %12s |\n", "configuration", "decode tok/s", "vs base", "prefill ms");
    printf("|------------------------------|--------------|------------|--------------|\n");
    double base = 0;
    for (int s = 0; s < NS; s++) {
        qsort(tps[s], rounds, sizeof(double), cmp_double);
        qsort(pre[s], rounds, sizeof(double), cmp_double);
        double med = tps[s][rounds / 2];
        if (s == 0) base = med;
        printf("| %-28s | %12.2f | %+9.1f%% | %12.1f |\n", setups[s].name, med, 100.0 * (base / med - 1.0), 1e3 * pre[s][rounds / 2]);
    }
    printf("\n(vs base: extra time per token.) Greedy tokens of merged vs live agree for %d of %d steps.\n", agree, n_new);
    for (int s = 0; s < NS; s++) model_free(models[s]);
    kv_cache_free(kv);
    free(prompt);
    free(out);
    free(out_live);
    return 0;
}
