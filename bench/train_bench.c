// train_bench: CPU training throughput, full fine-tuning vs LoRA, on random-weight models of
// real shapes (the same shapes as ../shared/bench/hf_peft_cpu_bench.py): GPT-2 124M and a 60M
// Llama, B x T = 4 x 256, AdamW. Median step time over timed steps after warm-up.
//   OMP_NUM_THREADS=2 build/train_bench [steps] [--json]
// With reference figures (HF PEFT on the same machine, tok/s) in PEFT_REF_<ROW>=N it prints ratios.
#include "adapter.h"
#include "model.h"
#include "optim.h"
#include "util.h"
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

static ModelConfig gpt2_124m(void) {
    ModelConfig c = {.arch = ARCH_GPT2, .model_type = "gpt2", .vocab_size = 50257, .n_layer = 12, .n_embd = 768, .n_head = 12,
                     .n_kv_head = 12, .head_dim = 64, .n_inner = 3072, .n_positions = 1024, .norm_eps = 1e-5f,
                     .tie_word_embeddings = true, .qkv_bias = true, .o_bias = true, .mlp_bias = true};
    return c;
}

static ModelConfig llama_60m(void) {
    ModelConfig c = {.arch = ARCH_LLAMA, .model_type = "llama", .vocab_size = 32000, .n_layer = 8, .n_embd = 512, .n_head = 8,
                     .n_kv_head = 4, .head_dim = 64, .n_inner = 1376, .n_positions = 1024, .norm_eps = 1e-6f, .rope_theta = 10000.0f};
    return c;
}

static int cmp_double(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

typedef struct { const char *family, *method; double step_s, tok_s; long trainable; double peak_gb; } Row;

// PEFT_BENCH_ONLY=gpt2-124m/lora runs one row (for profiling).
static bool wanted(const char *family, const char *method) {
    const char *only = getenv("PEFT_BENCH_ONLY");
    if (!only) return true;
    char name[64];
    snprintf(name, sizeof name, "%s/%s", family, method);
    return !strcmp(only, name);
}

static Row run(const char *family, const char *method, ModelConfig cfg, const char *targets, int steps) {
    if (!wanted(family, method)) return (Row){family, method, 0, 0, 0, 0};
    int B = 4, T = 256, warm = 2;
    Model *m = model_create_random(&cfg, 1);
    if (!strcmp(method, "full")) model_train_all(m);
    else {
        AdapterConfig ac;
        adapter_config_defaults(&ac, METHOD_LORA);
        ac.r = 8; ac.alpha = 16; ac.fan_in_fan_out = cfg.arch == ARCH_GPT2;
        adapter_config_set_targets(&ac, targets);
        if (adapters_attach(m, &ac, 0)) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
        adapter_config_free(&ac);
    }
    Param **ps;
    int n = model_trainable(m, &ps);
    AdamW opt;
    adamw_init(&opt, ps, n, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f);
    int32_t *ids = xmalloc(sizeof(int32_t) * B * T);
    double times[64];
    uint64_t s = 1;
    for (int step = 0; step < warm + steps; step++) {
        for (int i = 0; i < B * T; i++) { s = s * 6364136223846793005ull + 1442695040888963407ull; ids[i] = (int32_t)((s >> 33) % cfg.vocab_size); }
        double t0 = now_seconds();
        model_zero_grad(m);
        model_forward(m, ids, ids, B, T);
        model_backward(m);
        adamw_step(&opt, ps, n, 1e-4f);
        if (step >= warm) times[step - warm] = now_seconds() - t0;
    }
    qsort(times, steps, sizeof(double), cmp_double);
    Row r = {family, method, times[steps / 2], B * T / times[steps / 2], model_count_params(m, true), peak_rss_bytes() / 1e9};
    adamw_free(&opt);
    free(ids);
    model_free(m);
    return r;
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 5;
    if (steps < 1 || steps > 64) steps = 5;
    Row rows[4];
    rows[0] = run("gpt2-124m", "full", gpt2_124m(), NULL, steps);
    rows[1] = run("gpt2-124m", "lora", gpt2_124m(), "c_attn", steps);
    rows[2] = run("llama-60m", "full", llama_60m(), NULL, steps);
    rows[3] = run("llama-60m", "lora", llama_60m(), "q_proj,v_proj", steps);
    printf("\npeft.c CPU training, fp32, B x T = 4 x 256, %d threads, median of %d steps\n", omp_get_max_threads(), steps);
    printf("%-10s %-5s %11s %9s %9s %12s %10s\n", "model", "method", "trainable", "step s", "tok/s", "peak RSS GB", "vs HF PEFT");
    for (int i = 0; i < 4; i++) {
        if (!rows[i].step_s) continue;
        char env[64], ratio[32] = "-";
        snprintf(env, sizeof env, "PEFT_REF_%s_%s", i < 2 ? "GPT2" : "LLAMA", strcmp(rows[i].method, "full") ? "LORA" : "FULL");
        if (getenv(env)) snprintf(ratio, sizeof ratio, "%.2fx", rows[i].tok_s / atof(getenv(env)));
        printf("%-10s %-5s %11ld %9.3f %9.1f %12.2f %10s\n", rows[i].family, rows[i].method, rows[i].trainable, rows[i].step_s,
               rows[i].tok_s, rows[i].peak_gb, ratio);
    }
    return 0;
}
