// bench_gpu.c: training throughput, peak GPU memory and MFU of the CUDA backend (bf16) on the
// shapes of the issue: GPT-2 124M at 8x1024 and a TinyLlama-1.1B-shaped Llama at 4x2048, for full
// fine-tuning, LoRA (q,v r8 / all linears r16), DoRA (Llama, all linears r16: the bar is 1.3x LoRA's
// step), VeRA (all, r256) and AdaLoRA (all).
//   bench_gpu [--quick] [--large] [--steps N] [--warm N] [--only SUBSTR] [--recompute mlp|layer] [--out FILE.jsonl] [--version]
// --large: instead, LoRA (q,v r8) on Llama-2-7B and -13B shapes at 1x2048, the issue's "largest Llama
// that LoRA-trains at 1x2048 in 80 GB" (the peak shows whether it fits); and QLoRA (issue 19): LoRA r64
// on every linear over an nf4 base (codes and absmax drawn on the device), next to the same LoRA on the
// bf16 base of the 7B shape, and on the 13B and Llama-2-70B shapes (80 layers, 8192, 28672, GQA 8). The
// issue's bars: 7B <= 10 GiB, 13B <= 16 GiB; 70B on one 80 GB GPU. Those need --recompute layer; peft
// estimate at 1x2048 without / with it: 7B 14.42 / 7.99 GiB, 13B 23.52 / 13.41, 70B 89.62 / 55.39 (70B: 41.5
// GiB of weights, the nf4 codes and fp32 absmax with bf16 embeddings and LoRA r64's masters and copies,
// 9.3 of LoRA's gradients and AdamW moments, and 80 blocks' activations, 38 GiB kept, 3.8 recomputed):
//   bench_gpu --large --recompute layer --only r64
// --recompute mlp|layer: what the backward recomputes (gpu.h's GpuRecompute); peft estimate counts it.
// Random weights drawn on the device, random tokens (labels = inputs, as the HF script), AdamW
// over the trainable tensors. tok/s is B*T over the median step (forward, backward, AdamW, one
// host sync). MFU = model FLOPs per step (counted from the shapes: linears and the head forward
// and input-gradient, weight gradients only for trained weights, adapters, causal attention
// fwd + 2x bwd) over the step time, as a fraction of the bf16 GEMM rate measured here. Each row
// also has `peft estimate`'s GPU training memory for it (estimate_compute) next to the measured peak.
#include "../bench_model.h"
#include "adapter.h"
#include "config.h"
#include "cuda/gpu.h"
#include "estimate.h"
#include "model.h"
#include "util.h"
#include "train_step.h"
#include "version.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void untrain_all(Model *m) {
    for (int i = 0; i < m->n_params; i++) {
        m->params[i].trainable = m->params[i].decay = false;
        free(m->params[i].grad);
        m->params[i].grad = NULL;
    }
}

static double model_flops(const Model *m, bool full, int B, int T) {
    const ModelConfig *c = &m->cfg;
    double N = (double)B * T, f = 0;
    for (int i = 0; i < m->n_linears; i++) {
        const Linear *lin = &m->linears[i];
        double base = 2.0 * N * lin->in * lin->out;
        f += base * (full ? 3 : 2);
        if (lin->adapter) f += 6.0 * N * lin->adapter->r * (lin->in + lin->out);
    }
    f += 2.0 * N * c->n_embd * c->vocab_size * (full ? 3 : 2);
    f += 3.0 * 2.0 * B * (double)T * T * c->n_head * c->head_dim * c->n_layer;  // causal: half of 4 B T^2 NH HD, fwd + 2x bwd
    return f;
}

static uint64_t rs = 88172645463325252ull;
static int32_t rnd_token(int V) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (int32_t)((uint32_t)(rs >> 11) % (uint32_t)V);
}
static int cmp_double(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

typedef struct {
    const char *family, *method;  // the row's names in the table (method: its method and targets)
    MethodId id;
    QuantType quant;              // a quantized base (QLoRA): drawn quantized on the device (random codes and scales)
} Row;

int main(int argc, char **argv) {
    int steps = 12, warm = 3;
    bool quick = false, large = false;
    int recompute = GPU_RECOMPUTE_NONE;
    const char *only = NULL, *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = true;
        else if (!strcmp(argv[i], "--large")) large = true;
        else if (!strcmp(argv[i], "--recompute") && i + 1 < argc && !strcmp(argv[i + 1], "mlp")) recompute = GPU_RECOMPUTE_MLP, i++;
        else if (!strcmp(argv[i], "--recompute") && i + 1 < argc && !strcmp(argv[i + 1], "layer")) recompute = GPU_RECOMPUTE_LAYER, i++;
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warm") && i + 1 < argc) warm = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
        else if (!strcmp(argv[i], "--version")) { printf("bench_gpu %s\n", peft_version); return 0; }
        else { fprintf(stderr, "usage: bench_gpu [--quick] [--large] [--steps N] [--warm N] [--only SUBSTR] [--recompute mlp|layer] [--out FILE.jsonl]\n"); return 2; }
    }
    char why[512];
    if (!gpu_available(why, sizeof why)) { printf("*** SKIPPED: %s: GPU benchmark not run ***\n", why); return 0; }
    gpu_describe(why, sizeof why);
    double peak_tflops = gpu_bf16_gemm_tflops(8192);
    printf("# GPU: %s; measured bf16 GEMM (8192^3, cuBLASLt): %.0f TFLOP/s\n", why, peak_tflops);
    FILE *out = out_path ? fopen(out_path, "w") : NULL;
    static const char *gpt2_cfg = "{\"model_type\":\"gpt2\",\"vocab_size\":50257,\"n_positions\":1024,\"n_embd\":768,\"n_layer\":12,\"n_head\":12}";
    static const char *llama_cfg = "{\"model_type\":\"llama\",\"vocab_size\":32000,\"hidden_size\":2048,\"intermediate_size\":5632,"
                                   "\"num_hidden_layers\":22,\"num_attention_heads\":32,\"num_key_value_heads\":4,\"max_position_embeddings\":2048}";
    static const char *llama7_cfg = "{\"model_type\":\"llama\",\"vocab_size\":32000,\"hidden_size\":4096,\"intermediate_size\":11008,"
                                    "\"num_hidden_layers\":32,\"num_attention_heads\":32,\"num_key_value_heads\":32,\"max_position_embeddings\":4096}";
    static const char *llama13_cfg = "{\"model_type\":\"llama\",\"vocab_size\":32000,\"hidden_size\":5120,\"intermediate_size\":13824,"
                                     "\"num_hidden_layers\":40,\"num_attention_heads\":40,\"num_key_value_heads\":40,\"max_position_embeddings\":4096}";
    static const char *llama70_cfg = "{\"model_type\":\"llama\",\"vocab_size\":32000,\"hidden_size\":8192,\"intermediate_size\":28672,"
                                     "\"num_hidden_layers\":80,\"num_attention_heads\":64,\"num_key_value_heads\":8,\"max_position_embeddings\":4096}";
    // QLoRA (the 7B instruction tuning): LoRA r64 on every linear over an nf4 base, next to the same LoRA on the bf16 base.
    static const Row large_rows[] = {{"llama-7b", "lora-qv", METHOD_LORA, QUANT_NONE},
                                     {"llama-7b", "lora-all-r64", METHOD_LORA, QUANT_NONE},
                                     {"llama-7b", "qlora-all-r64-nf4", METHOD_LORA, QUANT_NF4},
                                     {"llama-13b", "lora-qv", METHOD_LORA, QUANT_NONE},
                                     {"llama-13b", "qlora-all-r64-nf4", METHOD_LORA, QUANT_NF4},
                                     {"llama-70b", "qlora-all-r64-nf4", METHOD_LORA, QUANT_NF4}};
    static const Row rows[] = {{"gpt2-124m", "full", METHOD_FULL, QUANT_NONE},         {"gpt2-124m", "lora-qv", METHOD_LORA, QUANT_NONE},
                               {"gpt2-124m", "lora-all", METHOD_LORA, QUANT_NONE},     {"gpt2-124m", "vera-all", METHOD_VERA, QUANT_NONE},
                               {"gpt2-124m", "adalora-all", METHOD_ADALORA, QUANT_NONE}, {"llama-1.1b", "lora-qv", METHOD_LORA, QUANT_NONE},
                               {"llama-1.1b", "lora-all", METHOD_LORA, QUANT_NONE},    {"llama-1.1b", "dora-all", METHOD_DORA, QUANT_NONE},
                               {"llama-1.1b", "vera-all", METHOD_VERA, QUANT_NONE},
                               {"llama-1.1b", "adalora-all", METHOD_ADALORA, QUANT_NONE}, {"llama-1.1b", "full", METHOD_FULL, QUANT_NONE}};
    Model *m = NULL;
    const char *cur_family = "";
    size_t n_rows = large ? sizeof large_rows / sizeof *large_rows : sizeof rows / sizeof *rows;
    for (size_t ri = 0; ri < n_rows; ri++) {
        const Row *r = large ? &large_rows[ri] : &rows[ri];
        bool gpt2 = !strcmp(r->family, "gpt2-124m");
        if (quick && !gpt2) continue;
        char label[64];
        snprintf(label, sizeof label, "%s %s", r->family, r->method);
        if (only && !strstr(label, only)) continue;
        if (strcmp(cur_family, r->family)) {
            model_free(m);
            m = bench_model(gpt2 ? gpt2_cfg : !strcmp(r->family, "llama-7b") ? llama7_cfg : !strcmp(r->family, "llama-13b") ? llama13_cfg
                            : !strcmp(r->family, "llama-70b") ? llama70_cfg : llama_cfg);
            cur_family = r->family;
        }
        int B = gpt2 ? 8 : large ? 1 : 4, T = gpt2 ? 1024 : 2048, N = B * T;
        bool full = r->id == METHOD_FULL;
        int64_t est_bytes = -1;  // peft estimate's GPU total for this row
        EstModel em;
        if (est_model_from_config(&em, &m->cfg, r->family)) em.n_linears = -1;
        if (full) {
            model_train_all(m);
            AdapterConfig ac;
            adapter_config_defaults(&ac, METHOD_LORA);
            Estimate e;
            if (em.n_linears >= 0 && !estimate_compute(&e, &em, METHOD_FULL, &ac, B, T)) {
                estimate_recompute(&e, &em, &ac, recompute);
                est_bytes = e.gpu.total;
            }
            adapter_config_free(&ac);
        } else {
            AdapterConfig ac;
            MethodId type = r->id;
            adapter_config_defaults(&ac, type);
            const char *all = gpt2 ? "c_attn,c_proj,c_fc" : "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
            if (!strcmp(r->method, "lora-qv")) { ac.r = 8; ac.alpha = 16; adapter_config_set_targets(&ac, gpt2 ? "c_attn" : "q_proj,v_proj"); }
            else if (!strcmp(r->method, "lora-all") || !strcmp(r->method, "dora-all")) { ac.r = 16; ac.alpha = 32; adapter_config_set_targets(&ac, all); }
            else if (strstr(r->method, "lora-all-r64")) { ac.r = 64; ac.alpha = 16; adapter_config_set_targets(&ac, all); }  // the QLoRA paper's
            else if (type == METHOD_VERA) { ac.r = 256; adapter_config_set_targets(&ac, all); }
            else {
                // As the HF script: init_r 12, target_r 8; no task_type there, so no orthogonal regulariser either.
                ac.init_r = ac.r = 12; ac.target_r = 8; ac.total_step = 10000; ac.deltaT = 10; ac.orth_reg_weight = 0;
                adapter_config_set_targets(&ac, all);
            }
            ac.fan_in_fan_out = gpt2;
            Estimate est;
            if (em.n_linears >= 0 && !estimate_compute(&est, &em, type, &ac, B, T)) {
                if (r->quant) estimate_quantize(&est, &em, &ac, r->quant, true);
                estimate_recompute(&est, &em, &ac, recompute);
                est_bytes = est.gpu.total;
            }
            int e = adapters_attach(m, &ac, 1);
            adapter_config_free(&ac);
            if (e) { printf("%-24s error: %s\n", label, peft_last_error()); est_model_free(&em); continue; }
            // DoRA's magnitudes start at the weights' row norms, which are the host's zeros here (the device draws
            // the weights): 1 instead, near the drawn rows' norms (0.02 sqrt(in)), so the layers keep their output.
            for (int i = 0; type == METHOD_DORA && i < m->adapters->n; i++) {
                Param *mag = m->adapters->adapters[i].magnitude;
                for (long j = 0; j < mag->numel; j++) mag->w[j] = 1.0f;
            }
        }
        if (em.n_linears >= 0) est_model_free(&em);
        gpu_reset_peak();
        GpuOptions opt = {.precision = GPU_BF16, .recompute = recompute, .random_init_seed = 1, .random_quant = r->quant};
        GpuModel *g = gpu_model_create(m, &opt);
        double med = NAN, loss = NAN, flops = model_flops(m, full, B, T);
        long trainable = 0;
        Param **tp;
        int nt = model_trainable(m, &tp);
        for (int i = 0; i < nt; i++) trainable += tp[i]->numel;
        if (!g) printf("%-24s not run: %s\n", label, peft_last_error());
        else {
            RandomBatch rb = {xmalloc(sizeof(int32_t) * N), B, T, m->cfg.vocab_size, rnd_token};
            double *times = xcalloc(steps, sizeof(double));
            // peft train's step (AdaLoRA's allocator included), without clipping as the HF script.
            TrainStep st;
            train_step_init(&st, m, g, 0.9f, 0.999f, 1e-8f, 0.01f, 0.0f, true);
            for (int s = 0; s < warm + steps; s++) {
                StepResult res;
                double t0 = now_seconds();
                loss = train_step_run(&st, s, 1, 1e-4, bench_random_batch, &rb, &res) ? NAN : res.loss;
                double dt = now_seconds() - t0;
                if (isnan(loss)) { printf("%-24s failed: %s\n", label, peft_last_error()); break; }
                if (s >= warm) times[s - warm] = dt;
            }
            if (!isnan(loss)) {
                qsort(times, steps, sizeof(double), cmp_double);
                med = times[steps / 2];
            }
            train_step_free(&st);
            free(rb.ids);
            free(times);
        }
        double peak_gib = gpu_peak_bytes() / 1073741824.0;
        char prof[2048];
        if (g && !gpu_profile_report(g, prof, sizeof prof)) printf("# %s: %s\n", label, prof);
        gpu_model_free(g);
        if (!isnan(med)) {
            double tok_s = N / med, mfu = peak_tflops > 0 ? flops / med / (peak_tflops * 1e12) : 0;
            char line[512];
            snprintf(line, sizeof line,
                     "{\"family\": \"%s\", \"method\": \"%s\", \"B\": %d, \"T\": %d, \"trainable\": %ld, \"step_ms\": %.2f, \"tok_s\": %.0f, "
                     "\"peak_GiB\": %.3f, \"est_GiB\": %.3f, \"tflop_per_step\": %.2f, \"mfu\": %.3f, \"gemm_peak_tflops\": %.0f, \"recompute\": \"%s\", "
                     "\"loss\": %.4f, \"quant\": \"%s\"}",
                     r->family, r->method, B, T, trainable, med * 1e3, tok_s, peak_gib, est_bytes >= 0 ? est_bytes / 1073741824.0 : -1.0,
                     flops / 1e12, mfu, peak_tflops, recompute == GPU_RECOMPUTE_LAYER ? "layer" : recompute ? "mlp" : "none", loss, quant_type_name(r->quant));
            printf("%s\n", line);
            if (out) { fprintf(out, "%s\n", line); fflush(out); }
        } else if (out) {
            fprintf(out, "{\"family\": \"%s\", \"method\": \"%s\", \"B\": %d, \"T\": %d, \"error\": \"%s\"}\n", r->family, r->method, B, T,
                    g ? "failed" : "not supported on the GPU yet");
            fflush(out);
        }
        fflush(stdout);
        if (full) untrain_all(m);
        else adapters_free(m);
    }
    model_free(m);
    if (out) fclose(out);
    return 0;
}
