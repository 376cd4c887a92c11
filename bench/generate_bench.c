// generate_bench.c: CPU decode speed at batch 1 through generate() (generate.h), the loop `peft
// generate` runs (its CLI adds only the tokenizer around it), on random models of two shapes:
// GPT-2 124M (768 x 12 layers, vocab 50257) and the Llama-60M shape of train_bench (512 x 8 layers,
// 8 heads / 4 kv heads, vocab 32000). Each shape's model is saved in bf16 (as HF checkpoints are) to
// a temporary folder and every configuration loads it from there, then takes model_keep_bf16 as
// `peft generate` does (PEFT_BF16_WEIGHTS=0: the fp32 weights). Per shape: the base model greedy and
// sampling, a LoRA adapter merged and live, LoRA on every linear, and VeRA, live. Decode tok/s = (new - 1) tokens over the time
// a generate() of `new` tokens takes beyond one of a single token (the prefill and the first token).
//
//   make build/generate_bench   (the Makefile's bench rule: every src folder on the include path)
//   OMP_NUM_THREADS=2 ./build/generate_bench [new_tokens=64] [rounds=5] [prompt_tokens=16] [only=substring]
//
// Each round times every configuration once (interleaved, so drift hits all alike); the table
// gives the median over rounds. Greedy: kv_forward_greedy's path; sampling: temperature 0.8,
// top-k 50, top-p 0.95 (gen_sample on the logits). eos is off, so every run makes `new` tokens.
#include "adapter.h"
#include "generate.h"
#include "util.h"
#include <dirent.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const char *name;
    const char *targets;  // NULL: no adapter
    MethodId type;
    int r;
    bool merged, sample;
} Setup;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double gen_seconds(Model *m, const int32_t *prompt, int plen, int n_new, bool sample, int32_t *out) {
    GenParams p;
    gen_params_default(&p);
    p.max_new_tokens = n_new;
    p.eos_id = GEN_EOS_NONE;
    if (sample) { p.temperature = 0.8f; p.top_k = 50; p.top_p = 0.95f; p.seed = 5; }
    GenResult res;
    double t0 = now_seconds();
    if (generate(m, NULL, &prompt, &plen, 1, &p, NULL, NULL, &res)) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
    double t = now_seconds() - t0;
    if (out) memcpy(out, res.ids, sizeof(int32_t) * res.n_ids);
    gen_result_free(&res);
    return t;
}

// The model of dir (a bf16 folder) with the setup's adapter, merged or live, then its bf16 weights kept.
static Model *make_model(const char *dir, const ModelConfig *c, const Setup *s) {
    Model *m = model_load(dir);
    if (!m) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
    if (!s->targets) { model_keep_bf16(m, true); return m; }
    AdapterConfig cfg;
    adapter_config_defaults(&cfg, s->type);
    cfg.r = s->r;
    cfg.alpha = 2.0f * s->r;
    adapter_config_set_targets(&cfg, s->targets);
    cfg.fan_in_fan_out = c->arch == ARCH_GPT2;
    if (adapters_attach(m, &cfg, 7)) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
    adapter_config_free(&cfg);
    // Non-zero B (LoRA starts with B = 0), so the adapter changes the output.
    GenRng r;
    gen_rng_seed(&r, 3);
    for (int i = 0; i < m->adapters->n_params; i++)
        for (long j = 0; j < m->adapters->params[i]->numel; j++) m->adapters->params[i]->w[j] = (float)(gen_rng_uniform(&r) - 0.5) * 0.02f;
    if (s->merged) adapters_merge(m);
    model_keep_bf16(m, true);
    return m;
}

// A random model of config c saved in bf16 into a new temporary folder (removed by remove_folder).
static char *bf16_folder(const ModelConfig *c) {
    char *dir = xstrdup("/tmp/generate_bench.XXXXXX");
    Model *m = model_create_random(c, 1);
    if (!mkdtemp(dir) || model_save_bf16(m, dir)) { fprintf(stderr, "%s: %s\n", dir, peft_last_error()); exit(1); }
    model_free(m);
    return dir;
}

static void remove_folder(char *dir) {
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *path = path_join(dir, e->d_name);
        unlink(path);
        free(path);
    }
    if (d) closedir(d);
    rmdir(dir);
    free(dir);
}

static ModelConfig gpt2_124m(void) {
    ModelConfig c = {.arch = ARCH_GPT2, .model_type = "gpt2", .vocab_size = 50257, .n_layer = 12, .n_embd = 768, .n_head = 12,
                     .n_kv_head = 12, .head_dim = 64, .n_inner = 3072, .n_positions = 1024, .norm_eps = 1e-5f,
                     .tie_word_embeddings = true, .qkv_bias = true, .o_bias = true, .mlp_bias = true,
                     .bos_token_id = 50256, .eos_token_id = 50256};
    return c;
}

static ModelConfig llama_60m(void) {
    ModelConfig c = {.arch = ARCH_LLAMA, .model_type = "llama", .vocab_size = 32000, .n_layer = 8, .n_embd = 512, .n_head = 8,
                     .n_kv_head = 4, .head_dim = 64, .n_inner = 1376, .n_positions = 1024, .norm_eps = 1e-6f, .rope_theta = 10000.0f,
                     .bos_token_id = 1, .eos_token_id = 2};
    return c;
}

// Times the setups of one shape; prints its table rows. Returns 0 when merged and live LoRA agree.
static void bench_shape(const char *shape, ModelConfig c, const Setup *setups, int ns, int n_new, int rounds, int plen, const char *only) {
    Model *models[16];
    bool on[16];
    int n_on = 0;
    for (int s = 0; s < ns; s++) {
        char full[128];
        snprintf(full, sizeof full, "%s %s", shape, setups[s].name);
        n_on += on[s] = !only || strstr(full, only);
    }
    if (!n_on) return;
    char *dir = bf16_folder(&c);
    for (int s = 0; s < ns; s++) models[s] = on[s] ? make_model(dir, &c, &setups[s]) : NULL;
    remove_folder(dir);
    int32_t *prompt = xmalloc(sizeof(int32_t) * plen);
    GenRng r;
    gen_rng_seed(&r, 1);
    for (int i = 0; i < plen; i++) prompt[i] = (int32_t)(gen_rng_uniform(&r) * c.vocab_size);
    double tps[16][64];
    for (int s = 0; s < ns; s++) if (on[s]) gen_seconds(models[s], prompt, plen, 4, setups[s].sample, NULL);  // warm up
    for (int k = 0; k < rounds; k++)
        for (int s = 0; s < ns; s++) {
            if (!on[s]) continue;
            double t1 = gen_seconds(models[s], prompt, plen, 1, setups[s].sample, NULL);
            double tn = gen_seconds(models[s], prompt, plen, n_new, setups[s].sample, NULL);
            tps[s][k] = (n_new - 1) / (tn - t1);
        }
    double base = 0;
    for (int s = 0; s < ns; s++) {
        if (!on[s]) continue;
        qsort(tps[s], rounds, sizeof(double), cmp_double);
        double med = tps[s][rounds / 2];
        if (s == 0) base = med;
        char vs[32] = "";
        if (base > 0) snprintf(vs, sizeof vs, "%+.1f%%", 100.0 * (base / med - 1.0));
        printf("| %-10s | %-28s | %12.2f | %10s |\n", shape, setups[s].name, med, vs);
    }
    // Merged and live LoRA: the same greedy tokens (rows 1 and 2 of every shape's list).
    if (on[1] && on[2]) {
        int32_t *a = xmalloc(sizeof(int32_t) * n_new), *b = xmalloc(sizeof(int32_t) * n_new);
        gen_seconds(models[1], prompt, plen, n_new, false, a);
        gen_seconds(models[2], prompt, plen, n_new, false, b);
        int agree = 0;
        while (agree < n_new && a[agree] == b[agree]) agree++;
        printf("| %-10s | merged vs live greedy tokens agree for %d of %d |  |  |\n", shape, agree, n_new);
        free(a);
        free(b);
    }
    for (int s = 0; s < ns; s++) model_free(models[s]);
    free(prompt);
}

int main(int argc, char **argv) {
    int n_new = argc > 1 ? atoi(argv[1]) : 64, rounds = argc > 2 ? atoi(argv[2]) : 5, plen = argc > 3 ? atoi(argv[3]) : 16;
    const char *only = argc > 4 ? argv[4] : NULL;
    if (rounds > 64) rounds = 64;
    if (rounds < 1 || n_new < 2 || plen < 1) { fprintf(stderr, "usage: generate_bench [new_tokens>=2] [rounds>=1] [prompt_tokens>=1] [only]\n"); return 2; }
    printf("batch 1, %d prompt + %d new tokens, %d OpenMP threads, median of %d rounds (vs base: extra time per token)\n\n",
           plen, n_new, omp_get_max_threads(), rounds);
    printf("| shape      | configuration                | decode tok/s |    vs base |\n");
    printf("|------------|------------------------------|--------------|------------|\n");
    const Setup gpt2[] = {
        {"base, greedy", NULL, METHOD_LORA, 0, false, false},
        {"LoRA r=8 c_attn, merged", "c_attn", METHOD_LORA, 8, true, false},
        {"LoRA r=8 c_attn, live", "c_attn", METHOD_LORA, 8, false, false},
        {"LoRA r=8 all linear, live", "c_attn,c_proj,c_fc", METHOD_LORA, 8, false, false},
        {"VeRA r=256 c_attn, live", "c_attn", METHOD_VERA, 256, false, false},
        {"base, sampling", NULL, METHOD_LORA, 0, false, true},
    };
    const Setup llama[] = {
        {"base, greedy", NULL, METHOD_LORA, 0, false, false},
        {"LoRA r=8 q,v, merged", "q_proj,v_proj", METHOD_LORA, 8, true, false},
        {"LoRA r=8 q,v, live", "q_proj,v_proj", METHOD_LORA, 8, false, false},
        {"LoRA r=8 all linear, live", "all-linear", METHOD_LORA, 8, false, false},
        {"VeRA r=256 q,v, live", "q_proj,v_proj", METHOD_VERA, 256, false, false},
        {"base, sampling", NULL, METHOD_LORA, 0, false, true},
    };
    bench_shape("gpt2-124m", gpt2_124m(), gpt2, sizeof gpt2 / sizeof *gpt2, n_new, rounds, plen, only);
    bench_shape("llama-60m", llama_60m(), llama, sizeof llama / sizeof *llama, n_new, rounds, plen, only);
    return 0;
}
