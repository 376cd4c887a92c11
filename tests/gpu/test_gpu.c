// test_gpu.c: the CUDA backend's checks, run by `make gpu-test` (part of `make test`).
//   test_gpu [FIXTURES_DIR]
// 1. The HF PEFT reference cases on the GPU: fp32 mode with the cases' own tolerances, bf16 mode
//    with both losses within 1e-2 relative and gradient cosine similarity >= 0.999; both modes with
//    the AdamW update within 1e-4 of the CPU's from the same gradient (see gpu_check.c).
// 2. Random models of shapes the tiny cases do not reach (head_dim 64 and 128: the flash-attention
//    kernels; T not a multiple of 64; GQA; Mistral's sliding window; Qwen2's qkv bias; --recompute),
//    GPU against the CPU path: fp32 to 1e-4 (logits, loss, every gradient), bf16 as above.
// 3. A quantized base (--only quant): the device's dequantized weights bit for bit, GPU against the CPU's
//    quantized model as in 2, train_run --device cuda --quantize against the CPU's run, and the
//    quantization reference cases (tests/fixtures/quant or PEFT_QUANT_FIXTURES) when they exist.
// 4. --recompute layer / mlp against no recompute (--only recompute): the same loss bit for bit, the same
//    gradients up to the attention backward's atomics, less memory (LoRA, dropout, quantized bases, AdaLoRA,
//    VeRA, DoRA, full fine-tuning).
// Without a GPU (or in a build without nvcc) it prints a loud SKIPPED line and exits 0.
#include "adapter.h"
#include "byte_tokenizer.h"
#include "check.h"
#include "config.h"
#include "classify.h"
#include "cuda/gpu.h"
#include "data.h"
#include "model.h"
#include "quant.h"
#include "safetensors.h"
#include "train.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_pass, n_fail, n_skip;

static void report(const char *status, const char *name, const char *detail) {
    printf("%-4s %-38s %s\n", status, name, detail);
    fflush(stdout);
    if (!strcmp(status, "PASS")) n_pass++;
    else if (!strcmp(status, "FAIL")) n_fail++;
    else n_skip++;
}

// optional: a case tools/reference_cases may not have generated yet (skipped by name when absent).
static void run_fixture(const char *root, const char *name, GpuPrecision prec, bool optional) {
    char dir[1024], label[1100], detail[1200];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    snprintf(label, sizeof label, "%s [%s]", dir, prec == GPU_BF16 ? "bf16" : "fp32");
    // No fixtures: skipped (counted); a fixtures folder without the case fails.
    if (!dir_exists(dir)) { report(dir_exists(root) && !optional ? "FAIL" : "SKIP", label, "case not found"); return; }
    CheckResult r;
    gpu_check_case(dir, prec, &r);
    if (r.status == CHECK_PASS && prec == GPU_BF16)
        snprintf(detail, sizeof detail, "1 - gradient cosine %.2e; %s", r.max_rel_err, r.detail);
    else if (r.status == CHECK_PASS) snprintf(detail, sizeof detail, "max rel err %.2e", r.max_rel_err);
    else snprintf(detail, sizeof detail, "%s", r.detail);
    report(r.status == CHECK_PASS ? "PASS" : r.status == CHECK_FAIL ? "FAIL" : "SKIP", label, detail);
}

// --only A,B,...: the checks whose names contain any of the comma-separated parts (all without --only).
static bool wanted(const char *name, const char *only) {
    if (!only) return true;
    for (const char *p = only;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        for (const char *s = name; n && *s; s++)
            if (!strncmp(s, p, n)) return true;
        if (!e) return false;
        p = e + 1;
    }
}

// ---------------- random models against the CPU ----------------
static uint64_t rng = 0x1234567;
static double urand(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) * 0x1.0p-53;
}

static double rel_diff(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-30); }

static double cosine(const float *a, const float *b, long n) {
    double ab = 0, aa = 0, bb = 0;
    for (long i = 0; i < n; i++) { ab += (double)a[i] * b[i]; aa += (double)a[i] * a[i]; bb += (double)b[i] * b[i]; }
    if (aa == 0 && bb == 0) return 1;
    return (aa == 0 || bb == 0) ? 0 : ab / sqrt(aa * bb);
}

typedef struct {
    const char *name, *config, *targets;  // targets NULL: full fine-tuning
    int B, T;
    bool recompute;
    MethodId type;
} RandCase;

// The CPU's logits (into logits [B*T, V]), then its loss and gradients (in the trainable Params).
static double cpu_reference(Model *m, const int32_t *ids, const int32_t *labels, int B, int T, float *logits) {
    model_forward(m, ids, NULL, B, T);
    memcpy(logits, m->act.logits, sizeof(float) * (size_t)B * T * m->cfg.vocab_size);
    model_zero_grad(m);
    double loss = model_forward(m, ids, labels, B, T);
    model_backward(m);
    return loss;
}

static void run_random(const RandCase *rc, GpuPrecision prec) {
    char label[128], detail[512];
    snprintf(label, sizeof label, "%s [%s]", rc->name, prec == GPU_BF16 ? "bf16" : "fp32");
    ModelConfig cfg;
    if (config_parse(&cfg, rc->config, rc->name)) { report("FAIL", label, peft_last_error()); return; }
    Model *m = model_create_random(&cfg, 42);
    if (rc->targets) {
        AdapterConfig ac;
        adapter_config_defaults(&ac, rc->type);
        if (rc->type == METHOD_LORA || rc->type == METHOD_DORA) { ac.r = 8; ac.alpha = 16; }
        if (rc->type == METHOD_VERA) ac.r = 32;
        if (rc->type == METHOD_ADALORA) { ac.init_r = ac.r = 6; ac.target_r = 4; ac.total_step = 100; ac.orth_reg_weight = 0; }
        ac.fan_in_fan_out = cfg.arch == ARCH_GPT2;
        adapter_config_set_targets(&ac, rc->targets);
        int e = adapters_attach(m, &ac, 7);
        adapter_config_free(&ac);
        if (e) { report("FAIL", label, peft_last_error()); model_free(m); return; }
        // LoRA's B, VeRA's lambda_b and AdaLoRA's E start at zero, which would zero other gradients: give them values.
        for (int i = 0; i < m->adapters->n_params; i++) {
            Param *p = m->adapters->params[i];
            bool zero = true;
            for (long j = 0; j < p->numel && zero; j++) zero = p->w[j] == 0;
            if (zero)
                for (long j = 0; j < p->numel; j++) p->w[j] = (float)((urand() - 0.5) * 0.2);
        }
    } else model_train_all(m);
    int B = rc->B, T = rc->T, N = B * T, V = cfg.vocab_size;
    int32_t *ids = xmalloc(sizeof(int32_t) * N), *labels = xmalloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) {
        ids[i] = (int32_t)(urand() * V);
        labels[i] = (i % T) < 3 ? -100 : ids[i];  // a masked prompt
    }
    float *ref_logits = xmalloc(sizeof(float) * (size_t)N * V), *logits = xmalloc(sizeof(float) * (size_t)N * V);
    double ref_loss = cpu_reference(m, ids, labels, B, T, ref_logits);
    Param **params;
    int n = model_trainable(m, &params);
    float **ref_grads = xcalloc(n, sizeof(float *));
    for (int i = 0; i < n; i++) {
        ref_grads[i] = xmalloc(sizeof(float) * params[i]->numel);
        memcpy(ref_grads[i], params[i]->grad, sizeof(float) * params[i]->numel);
    }
    float **start_w = xcalloc(n, sizeof(float *));
    for (int i = 0; i < n; i++) {
        start_w[i] = xmalloc(sizeof(float) * params[i]->numel);
        memcpy(start_w[i], params[i]->w, sizeof(float) * params[i]->numel);
    }
    GpuOptions opt = {.precision = prec, .recompute = rc->recompute};
    GpuModel *g = gpu_model_create(m, &opt);
    const char *status = "PASS";
    if (!g) { status = "FAIL"; snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
    if (isnan(gpu_forward(g, ids, NULL, B, T)) || gpu_get_logits(g, logits)) { status = "FAIL"; snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
    double e_logits = rel_error(logits, ref_logits, (long)N * V);
    gpu_zero_grad(g);
    double loss = gpu_forward(g, ids, labels, B, T);
    if (isnan(loss) || gpu_backward(g) || gpu_download_trainables(g, true)) { status = "FAIL"; snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
    double e_loss = fabs(loss - ref_loss) / fabs(ref_loss), worst_e = 0, worst_cos = 1;
    const char *worst_name = "";
    for (int i = 0; i < n; i++) {
        double e = rel_error(params[i]->grad, ref_grads[i], params[i]->numel), cs = cosine(params[i]->grad, ref_grads[i], params[i]->numel);
        if (e > worst_e || isnan(e)) { worst_e = e; if (prec == GPU_FP32) worst_name = params[i]->name; }
        if (cs < worst_cos || isnan(cs)) { worst_cos = cs; if (prec == GPU_BF16) worst_name = params[i]->name; }
    }
    bool ok = prec == GPU_FP32 ? (e_logits <= 1e-4 && e_loss <= 1e-5 && worst_e <= 1e-4) : (e_loss <= 1e-2 && worst_cos >= 0.999 && e_logits <= 5e-2);
    // gpu_train_step (lazy gradient zeroing, the head's gradient accumulated in place) must give the
    // same weights as zero_grad + forward + backward + AdamW on a second copy from the same start.
    double e_step = 0;
    if (rc->type == METHOD_DORA) {  // refused there (see gpu_train_step); the trainer's step is the separate calls checked above
        GpuModel *g2 = gpu_model_create(m, &opt);
        if (!g2 || !isnan(gpu_train_step(g2, ids, labels, B, T, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.0)) || !strstr(peft_last_error(), "DoRA")) ok = false;
        gpu_model_free(g2);
    } else {
        float **w1 = xcalloc(n, sizeof(float *));
        if (gpu_adamw_step(g, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f) || gpu_download_trainables(g, false)) ok = false;
        for (int i = 0; i < n; i++) {
            w1[i] = xmalloc(sizeof(float) * params[i]->numel);
            memcpy(w1[i], params[i]->w, sizeof(float) * params[i]->numel);
            memcpy(params[i]->w, start_w[i], sizeof(float) * params[i]->numel);
        }
        GpuModel *g2 = gpu_model_create(m, &opt);
        if (!g2 || isnan(gpu_train_step(g2, ids, labels, B, T, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.0)) || gpu_download_trainables(g2, false)) {
            ok = false;
            e_step = INFINITY;
        } else
            for (int i = 0; i < n; i++) {
                double e = rel_error(params[i]->w, w1[i], params[i]->numel);
                if (e > e_step || isnan(e)) e_step = e;
            }
        // Same math; GEMM algorithms may differ (beta 0 vs 1), and in bf16 the attention backward's fp32 atomics sum in
        // another order, which AdamW's first step (+-lr wherever a near-zero gradient flips sign) shows: 2.2e-4 once in bf16.
        if (!(e_step <= (prec == GPU_FP32 ? 1e-4 : 1e-3))) ok = false;
        gpu_model_free(g2);
        for (int i = 0; i < n; i++) free(w1[i]);
        free(w1);
    }
    status = ok ? "PASS" : "FAIL";
    snprintf(detail, sizeof detail, "logits %.1e loss %.1e grads: max rel %.1e, min cos %.6f (%s), %d tensors; step %.1e", e_logits, e_loss,
             worst_e, worst_cos, worst_name, n, e_step);
out:
    report(status, label, detail);
    gpu_model_free(g);
    for (int i = 0; i < n; i++) { free(ref_grads[i]); free(start_w[i]); }
    free(ref_grads);
    free(start_w);
    free(ref_logits);
    free(logits);
    free(ids);
    free(labels);
    model_free(m);
}

#define GPT2_CFG "{\"model_type\":\"gpt2\",\"vocab_size\":1000,\"n_embd\":128,\"n_layer\":2,\"n_head\":2,\"n_positions\":256}"
#define LLAMA_CFG "{\"model_type\":\"llama\",\"vocab_size\":1000,\"hidden_size\":256,\"intermediate_size\":384,\"num_hidden_layers\":2," \
                  "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"max_position_embeddings\":512,\"rms_norm_eps\":1e-5}"
#define MISTRAL_CFG "{\"model_type\":\"mistral\",\"vocab_size\":1000,\"hidden_size\":256,\"intermediate_size\":384,\"num_hidden_layers\":2," \
                    "\"num_attention_heads\":4,\"num_key_value_heads\":1,\"max_position_embeddings\":512,\"sliding_window\":50}"
// head_dim 128 (Llama-2-7B's, Mistral-7B's), with GQA and a sliding window
#define LLAMA128_CFG "{\"model_type\":\"llama\",\"vocab_size\":1000,\"hidden_size\":256,\"intermediate_size\":384,\"num_hidden_layers\":2," \
                     "\"num_attention_heads\":2,\"num_key_value_heads\":1,\"max_position_embeddings\":512,\"rms_norm_eps\":1e-5}"
#define MISTRAL128_CFG "{\"model_type\":\"mistral\",\"vocab_size\":1000,\"hidden_size\":256,\"intermediate_size\":384,\"num_hidden_layers\":2," \
                       "\"num_attention_heads\":2,\"num_key_value_heads\":1,\"max_position_embeddings\":512,\"sliding_window\":50}"
#define QWEN2_CFG "{\"model_type\":\"qwen2\",\"vocab_size\":1000,\"hidden_size\":128,\"intermediate_size\":256,\"num_hidden_layers\":2," \
                  "\"num_attention_heads\":2,\"num_key_value_heads\":2,\"max_position_embeddings\":512}"
#define GPT2_ALL "c_attn,c_proj,c_fc"
#define LLAMA_ALL "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"

// ---------------- AdaLoRA's orthogonal regulariser, adapter dropout ----------------
// A random model with an adapter on targets (the zero-initialised B / lambda_b / E given values when fill).
static Model *adapted_model(const char *config, const char *targets, MethodId type, float dropout, bool fill) {
    ModelConfig cfg;
    if (config_parse(&cfg, config, "random")) return NULL;
    Model *m = model_create_random(&cfg, 42);
    AdapterConfig ac;
    adapter_config_defaults(&ac, type);
    if (type == METHOD_LORA) { ac.r = 8; ac.alpha = 16; }
    if (type == METHOD_ADALORA) { ac.init_r = ac.r = 6; ac.target_r = 4; ac.total_step = 100; }  // orth_reg_weight 0.5, task_type CAUSAL_LM
    ac.dropout = dropout;
    ac.fan_in_fan_out = cfg.arch == ARCH_GPT2;
    adapter_config_set_targets(&ac, targets);
    int e = adapters_attach(m, &ac, 7);
    adapter_config_free(&ac);
    if (e) { model_free(m); return NULL; }
    for (int i = 0; fill && i < m->adapters->n_params; i++) {
        Param *p = m->adapters->params[i];
        bool zero = true;
        for (long j = 0; j < p->numel && zero; j++) zero = p->w[j] == 0;
        if (zero)
            for (long j = 0; j < p->numel; j++) p->w[j] = (float)((urand() - 0.5) * 0.2);
    }
    return m;
}

static void random_batch(int32_t *ids, int32_t *labels, int B, int T, int V) {
    for (int i = 0; i < B * T; i++) {
        ids[i] = (int32_t)(urand() * V);
        labels[i] = (i % T) < 3 ? -100 : ids[i];
    }
}

// Copies of the trainable tensors' gradients (or weights).
static float **copy_tensors(Param **params, int n, bool grads) {
    float **out = xcalloc(n, sizeof(float *));
    for (int i = 0; i < n; i++) {
        out[i] = xmalloc(sizeof(float) * params[i]->numel);
        memcpy(out[i], grads ? params[i]->grad : params[i]->w, sizeof(float) * params[i]->numel);
    }
    return out;
}
static void free_tensors_copy(float **t, int n) {
    for (int i = 0; t && i < n; i++) free(t[i]);
    free(t);
}

// One GPU forward (with labels) + backward from zeroed gradients; the gradients land in params[i]->grad.
static double gpu_loss_and_grads(GpuModel *g, const int32_t *ids, const int32_t *labels, int B, int T, double *lm) {
    gpu_zero_grad(g);
    double loss = gpu_forward(g, ids, labels, B, T);
    if (lm) *lm = gpu_lm_loss(g);
    if (isnan(loss) || gpu_backward(g) || gpu_download_trainables(g, true)) return NAN;
    return loss;
}

// AdaLoRA with orth_reg_weight 0.5 and task_type CAUSAL_LM (the trainer's adapters): the loss (with the
// regulariser), the regulariser's value and every gradient against the CPU; in fp32 also the regulariser's
// own gradient (the difference to a model with the weight set to 0) against adalora.c's.
static void run_orth(const char *name, const char *config, const char *targets, int B, int T, GpuPrecision prec) {
    char label[128], detail[512] = "";
    snprintf(label, sizeof label, "%s [%s]", name, prec == GPU_BF16 ? "bf16" : "fp32");
    Model *m = adapted_model(config, targets, METHOD_ADALORA, 0, true);
    if (!m) { report("FAIL", label, peft_last_error()); return; }
    // A and B of std 0.1 instead of 0.02: A A^T and B^T B then differ from 0 enough to give P - I structure.
    for (int i = 0; i < m->adapters->n; i++) {
        Adapter *a = &m->adapters->adapters[i];
        for (long j = 0; j < a->A->numel; j++) a->A->w[j] *= 5;
        for (long j = 0; j < a->B->numel; j++) a->B->w[j] *= 5;
    }
    int N = B * T, V = m->cfg.vocab_size;
    int32_t *ids = xmalloc(sizeof(int32_t) * N), *labels = xmalloc(sizeof(int32_t) * N);
    random_batch(ids, labels, B, T, V);
    Param **params;
    int n = model_trainable(m, &params);
    model_zero_grad(m);
    double ref_reg = adapters_regularizer(m, true);
    float **reg_grads = copy_tensors(params, n, true);
    model_zero_grad(m);
    double ref_loss = model_forward(m, ids, labels, B, T);
    model_backward(m);
    float **ref_grads = copy_tensors(params, n, true);
    GpuOptions opt = {.precision = prec};
    GpuModel *g = gpu_model_create(m, &opt), *g0 = NULL;
    float **grads = NULL;
    const char *status = "FAIL";
    double lm = NAN, loss = g ? gpu_loss_and_grads(g, ids, labels, B, T, &lm) : NAN;
    if (isnan(loss)) { snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
    grads = copy_tensors(params, n, true);
    double e_loss = fabs(loss - ref_loss) / fabs(ref_loss), e_reg = fabs((loss - lm) - ref_reg) / ref_reg, worst_e = 0, worst_cos = 1;
    for (int i = 0; i < n; i++) {
        double e = rel_error(grads[i], ref_grads[i], params[i]->numel), cs = cosine(grads[i], ref_grads[i], params[i]->numel);
        if (e > worst_e || isnan(e)) worst_e = e;
        if (cs < worst_cos || isnan(cs)) worst_cos = cs;
    }
    bool ok = ref_reg > 0 && (prec == GPU_FP32 ? e_loss <= 1e-5 && worst_e <= 1e-4 : e_loss <= 1e-2 && worst_cos >= 0.995) && e_reg <= 1e-5;
    double e_own = 0;
    if (prec == GPU_FP32) {  // the regulariser's own gradient: with the weight minus without it
        float w = m->adapters->cfg.orth_reg_weight;
        m->adapters->cfg.orth_reg_weight = 0;
        g0 = gpu_model_create(m, &opt);
        m->adapters->cfg.orth_reg_weight = w;
        double lm0 = NAN, loss0 = g0 ? gpu_loss_and_grads(g0, ids, labels, B, T, &lm0) : NAN;
        if (isnan(loss0) || loss0 != lm0 || fabs(lm0 - lm) > 1e-6 * fabs(lm)) ok = false, e_own = INFINITY;
        for (int i = 0; i < n && isfinite(e_own); i++) {
            float *d = xmalloc(sizeof(float) * params[i]->numel);
            for (long j = 0; j < params[i]->numel; j++) d[j] = grads[i][j] - params[i]->grad[j];
            double e = rel_error(d, reg_grads[i], params[i]->numel);
            if (e > e_own || isnan(e)) e_own = e;
            free(d);
        }
        if (!(e_own <= 1e-3)) ok = false;
    }
    status = ok ? "PASS" : "FAIL";
    snprintf(detail, sizeof detail, "regulariser %.4f (rel err %.1e), loss %.1e, grads: max rel %.1e, min cos %.6f; its own gradient %.1e%s",
             loss - lm, e_reg, e_loss, worst_e, worst_cos, e_own, prec == GPU_FP32 ? "" : " (fp32 only)");
out:
    report(status, label, detail);
    gpu_model_free(g);
    gpu_model_free(g0);
    free_tensors_copy(reg_grads, n);
    free_tensors_copy(ref_grads, n);
    free_tensors_copy(grads, n);
    free(ids);
    free(labels);
    model_free(m);
}

// Adapter dropout on the GPU (fp32 unless noted), LoRA with p = 0.3:
//  - off (the default: evaluation) the logits are the CPU's without dropout; on, they change, the same
//    seed gives the same ones and another seed other ones;
//  - the gradient is the derivative of the loss with that seed's masks: central differences along the
//    gradient (all tensors, then the first module's A and B, which see the masked input gradient of
//    every later adapter) match its norm;
//  - bf16 with the same seed (the same masks; the unfused input-gradient path) matches fp32;
//  - p = 0 with dropout on gives exactly the logits of dropout off.
static void run_dropout(const char *name, const char *config, const char *targets, int B, int T) {
    char label[128], detail[768] = "";
    snprintf(label, sizeof label, "%s [fp32+bf16]", name);
    const float p = 0.3f;
    Model *m = adapted_model(config, targets, METHOD_LORA, p, true);
    if (!m) { report("FAIL", label, peft_last_error()); return; }
    int N = B * T, V = m->cfg.vocab_size;
    int32_t *ids = xmalloc(sizeof(int32_t) * N), *labels = xmalloc(sizeof(int32_t) * N);
    random_batch(ids, labels, B, T, V);
    float *ref = xmalloc(sizeof(float) * (size_t)N * V), *l_off = xmalloc(sizeof(float) * (size_t)N * V),
          *l1 = xmalloc(sizeof(float) * (size_t)N * V), *l1b = xmalloc(sizeof(float) * (size_t)N * V),
          *l2 = xmalloc(sizeof(float) * (size_t)N * V);
    m->training = false;
    model_forward(m, ids, NULL, B, T);
    memcpy(ref, m->act.logits, sizeof(float) * (size_t)N * V);
    Param **params;
    int n = model_trainable(m, &params);
    float **w0 = copy_tensors(params, n, false), **grads = NULL, **grads16 = NULL;
    GpuOptions opt = {.precision = GPU_FP32};
    GpuModel *g = gpu_model_create(m, &opt), *g16 = NULL, *gz = NULL;
    const char *status = "FAIL";
    long nl = (long)N * V;
    if (!g) { snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
#define FWD(buf) (isnan(gpu_forward(g, ids, NULL, B, T)) || gpu_get_logits(g, buf))
    bool ok = true;
    if (FWD(l_off)) goto fail;
    gpu_set_dropout(g, true, 11);
    if (FWD(l1) || FWD(l1b)) goto fail;
    gpu_set_dropout(g, true, 12);
    if (FWD(l2)) goto fail;
    gpu_set_dropout(g, false, 0);
#undef FWD
    double e_off = rel_error(l_off, ref, nl), d_on = rel_error(l1, l_off, nl), d_seed = rel_error(l2, l1, nl);
    bool same_seed = !memcmp(l1, l1b, sizeof(float) * nl);
    ok = e_off <= 1e-4 && d_on > 1e-3 && d_seed > 1e-3 && same_seed;
    // Central differences of the loss (same seed, so the same masks) along the normalised gradient.
    gpu_set_dropout(g, true, 11);
    if (isnan(gpu_loss_and_grads(g, ids, labels, B, T, NULL))) goto fail;
    grads = copy_tensors(params, n, true);
    double worst_fd = 0;
    char fd_detail[256] = "";
    int fd_len = 0;
    for (int set = 0; set < 3; set++) {  // 0: every tensor; 1, 2: the first module's A, B (params 0 and 1)
        int lo = set ? set - 1 : 0, hi = set ? set : n;
        double norm2 = 0;
        for (int i = lo; i < hi; i++)
            for (long j = 0; j < params[i]->numel; j++) norm2 += (double)grads[i][j] * grads[i][j];
        double norm = sqrt(norm2), eps = 3e-3, Lpm[2];  // on the CPU this gives 1e-4 (fp32 rounding, curvature)
        if (norm < 1e-4) { fd_len += snprintf(fd_detail + fd_len, sizeof fd_detail - fd_len, " [%d] |g| %.1e: skipped", set, norm); continue; }
        for (int s = 0; s < 2; s++) {
            double k = (s ? -eps : eps) / norm;
            for (int i = lo; i < hi; i++)
                for (long j = 0; j < params[i]->numel; j++) params[i]->w[j] = (float)(w0[i][j] + k * grads[i][j]);
            Lpm[s] = gpu_upload_trainables(g) ? NAN : gpu_forward(g, ids, labels, B, T);
            for (int i = lo; i < hi; i++) memcpy(params[i]->w, w0[i], sizeof(float) * params[i]->numel);
        }
        double fd = (Lpm[0] - Lpm[1]) / (2 * eps), e = fabs(fd - norm) / norm;
        if (e > worst_fd || isnan(e)) worst_fd = e;
        fd_len += snprintf(fd_detail + fd_len, sizeof fd_detail - fd_len, " [%d] |g| %.3e fd %.3e", set, norm, fd);
    }
    if (gpu_upload_trainables(g)) goto fail;
    if (!(worst_fd <= 1e-2)) ok = false;
    // bf16, same seed: the same masks.
    opt.precision = GPU_BF16;
    g16 = gpu_model_create(m, &opt);
    if (!g16) goto fail;
    gpu_set_dropout(g16, true, 11);
    if (isnan(gpu_loss_and_grads(g16, ids, labels, B, T, NULL))) goto fail;
    grads16 = copy_tensors(params, n, true);
    double worst_cos = 1;
    for (int i = 0; i < n; i++) {
        double cs = cosine(grads16[i], grads[i], params[i]->numel);
        if (cs < worst_cos || isnan(cs)) worst_cos = cs;
    }
    if (!(worst_cos >= 0.99)) ok = false;
    // p = 0: dropout on changes nothing.
    m->adapters->cfg.dropout = 0;
    opt.precision = GPU_FP32;
    gz = gpu_model_create(m, &opt);
    m->adapters->cfg.dropout = p;
    bool p0_same = false;
    if (gz && !isnan(gpu_forward(gz, ids, NULL, B, T)) && !gpu_get_logits(gz, l1)) {
        gpu_set_dropout(gz, true, 11);
        p0_same = !isnan(gpu_forward(gz, ids, NULL, B, T)) && !gpu_get_logits(gz, l2) && !memcmp(l1, l2, sizeof(float) * nl) &&
                  rel_error(l1, l_off, nl) <= 1e-6;  // another model (other buffers): not necessarily the same bits
    }
    if (!p0_same) ok = false;
    status = ok ? "PASS" : "FAIL";
    snprintf(detail, sizeof detail, "off vs CPU %.1e; on: changes logits %.1e, same seed %s, other seed %.1e; p=0 %s; bf16 min cos %.5f; "
             "central differences max rel err %.1e:%s", e_off, d_on, same_seed ? "identical" : "DIFFERENT", d_seed,
             p0_same ? "identical" : "DIFFERENT", worst_cos, worst_fd, fd_detail);
    goto out;
fail:
    snprintf(detail, sizeof detail, "%s", peft_last_error());
out:
    report(status, label, detail);
    gpu_model_free(g);
    gpu_model_free(g16);
    gpu_model_free(gz);
    free_tensors_copy(w0, n);
    free_tensors_copy(grads, n);
    free_tensors_copy(grads16, n);
    free(ref); free(l_off); free(l1); free(l1b); free(l2);
    free(ids);
    free(labels);
    model_free(m);
}

// Dropout's scaling: with LoRA's B at its initial 0 the forward does not depend on the mask and
// dB = s dy^T (drop(x) A^T) is linear in drop(x), so its mean over seeds must approach dB without
// dropout (E[drop(x)] = x: kept elements scaled by 1/(1-p)). Without the scaling the ratio would be 1-p.
static void run_dropout_scaling(const char *name, const char *config, const char *targets, int B, int T, float p) {
    char label[128], detail[512] = "";
    snprintf(label, sizeof label, "%s [fp32]", name);
    Model *m = adapted_model(config, targets, METHOD_LORA, p, false);
    if (!m) { report("FAIL", label, peft_last_error()); return; }
    int N = B * T, V = m->cfg.vocab_size, K = 64;
    int32_t *ids = xmalloc(sizeof(int32_t) * N), *labels = xmalloc(sizeof(int32_t) * N);
    random_batch(ids, labels, B, T, V);
    Param **params;
    int n = model_trainable(m, &params);
    GpuOptions opt = {.precision = GPU_FP32};
    GpuModel *g = gpu_model_create(m, &opt);
    float **ref = NULL, **mean = xcalloc(n, sizeof(float *));
    for (int i = 0; i < n; i++) mean[i] = xcalloc(params[i]->numel, sizeof(float));
    const char *status = "FAIL";
    if (!g || isnan(gpu_loss_and_grads(g, ids, labels, B, T, NULL))) { snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
    ref = copy_tensors(params, n, true);
    double min_one = 1, max_one = 0;  // the projection of single draws, for the report
    for (int k = 0; k < K; k++) {
        gpu_set_dropout(g, true, 1000 + k);
        if (isnan(gpu_loss_and_grads(g, ids, labels, B, T, NULL))) { snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
        double ab = 0, bb = 0;
        for (int i = 0; i < n; i++)
            for (long j = 0; j < params[i]->numel; j++) {
                mean[i][j] += params[i]->grad[j] / K;
                ab += (double)params[i]->grad[j] * ref[i][j];
                bb += (double)ref[i][j] * ref[i][j];
            }
        double one = bb > 0 ? ab / bb : 0;
        if (one < min_one) min_one = one;
        if (one > max_one) max_one = one;
    }
    double ab = 0, bb = 0, aa = 0;
    for (int i = 0; i < n; i++)
        for (long j = 0; j < params[i]->numel; j++) {
            ab += (double)mean[i][j] * ref[i][j];
            bb += (double)ref[i][j] * ref[i][j];
            aa += (double)mean[i][j] * mean[i][j];
        }
    double proj = bb > 0 ? ab / bb : 0, cs = aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
    bool ok = bb > 0 && fabs(proj - 1) <= 0.05 && cs >= 0.95 && max_one - min_one > 1e-3;  // the CPU's dropout: 1.00 +- 0.003, 0.993
    status = ok ? "PASS" : "FAIL";
    snprintf(detail, sizeof detail, "p %.2f, mean of %d draws of dB / dB without dropout: projection %.4f (1 - p would be unscaled), "
             "cosine %.4f; single draws %.3f..%.3f", p, K, proj, cs, min_one, max_one);
out:
    report(status, label, detail);
    gpu_model_free(g);
    free_tensors_copy(ref, n);
    free_tensors_copy(mean, n);
    free(ids);
    free(labels);
    model_free(m);
}

// ---------------- the trainer on the GPU (train_run --device cuda) ----------------
// A tiny GPT-2 (byte tokenizer, 2 layers, C = 32) and E2E-like text rows in a scratch folder.
// ---------------- packing (Model.positions) ----------------
// DoRA on the GPU: with lora_dropout or a zero magnitude, refused by name (the CPU path runs it); cached
// inference refuses its rows by name (merged, it runs as plain weights).
static void run_dora_refusals(void) {
    Model *m = adapted_model(LLAMA_CFG, "q_proj,v_proj", METHOD_DORA, 0.1f, true);
    GpuOptions opt = {.precision = GPU_FP32};
    GpuModel *g = m ? gpu_model_create(m, &opt) : NULL;
    bool ok = m && !g && strstr(peft_last_error(), "DoRA with lora_dropout");
    char detail[512];
    snprintf(detail, sizeof detail, "training with dropout: %s", g ? "accepted" : peft_last_error());
    gpu_model_free(g);
    model_free(m);
    report(ok ? "PASS" : "FAIL", "dora refusals (dropout)", detail);
    // The backward reads a module's direction back from its output y = b + (m / norm) e: a zero magnitude leaves none.
    m = adapted_model(LLAMA_CFG, "q_proj,v_proj", METHOD_DORA, 0, true);
    if (m) m->adapters->adapters[1].magnitude->w[3] = 0.0f;
    g = m ? gpu_model_create(m, &opt) : NULL;
    ok = m && !g && strstr(peft_last_error(), "magnitude is 0 in row 3");
    snprintf(detail, sizeof detail, "a zero magnitude: %s", g ? "accepted" : peft_last_error());
    gpu_model_free(g);
    model_free(m);
    report(ok ? "PASS" : "FAIL", "dora refusals (zero magnitude)", detail);
    m = adapted_model(LLAMA_CFG, "q_proj,v_proj", METHOD_DORA, 0, true);
    GpuKV *kv = NULL;
    int rc = m ? gpu_inference_attach(m, GPU_FP32) : -1;
    if (!rc) kv = gpu_kv_new(m->gpu, 1, 16);
    int32_t ids[4] = {1, 2, 3, 4};
    int slot[4] = {0, 0, 0, 0}, pos[4] = {0, 1, 2, 3};
    AdapterSet *rows[4];
    for (int i = 0; i < 4; i++) rows[i] = m ? m->adapters : NULL;
    float *logits = m ? xmalloc(sizeof(float) * m->cfg.vocab_size) : NULL;
    int out_row = 3;
    rc = kv ? gpu_kv_forward(kv, 4, ids, slot, pos, rows, &out_row, 1, logits) : -1;
    ok = kv && rc != 0 && strstr(peft_last_error(), "DoRA adapters are not applied per row");
    snprintf(detail, sizeof detail, "per-row inference: %s", rc ? peft_last_error() : "accepted");
    free(logits);
    gpu_kv_free(kv);
    if (m) gpu_inference_detach(m);
    model_free(m);
    report(ok ? "PASS" : "FAIL", "dora refusals (per-row inference)", detail);
}

// Examples of these lengths (1 to 150 tokens: within one 64-row tile and across several) packed into
// sequences of up to PACK_SEQ tokens: 3 of 239, 222 and 170, where whole key tiles lie before a query
// tile's examples (skipped) and tiles hold several examples (masked).
static const int pack_lens[] = {5, 70, 1, 130, 33, 64, 9, 100, 47, 2, 150, 20};
enum { PACK_SEQ = 300 };

static void pack_examples(Dataset *ds, int V) {
    int n = sizeof pack_lens / sizeof *pack_lens;
    memset(ds, 0, sizeof *ds);
    ds->offset = xcalloc(n + 1, sizeof(long));
    for (int i = 0; i < n; i++) {
        ds->offset[i + 1] = ds->offset[i] + pack_lens[i];
        if (pack_lens[i] > ds->max_len) ds->max_len = pack_lens[i];
    }
    long total = ds->offset[n];
    ds->ids = xmalloc(sizeof(int32_t) * total);
    ds->labels = xmalloc(sizeof(int32_t) * total);
    for (int i = 0; i < n; i++)
        for (long k = ds->offset[i]; k < ds->offset[i + 1]; k++) {
            ds->ids[k] = (int32_t)(urand() * V);
            ds->labels[k] = k - ds->offset[i] < pack_lens[i] / 3 ? -100 : ds->ids[k];  // a prompt without a loss
        }
    ds->n_seq = ds->n_examples = n;
}

// All of ds's sequences as one batch (with their positions when packed and with_pos).
typedef struct { int32_t *ids, *labels, *pos; int B, T; long count; } PackBatch;
static PackBatch pack_batch(const Dataset *ds, bool with_pos) {
    PackBatch b = {.B = ds->n_seq};
    int *idx = xmalloc(sizeof(int) * ds->n_seq);
    for (int i = 0; i < ds->n_seq; i++) idx[i] = i;
    size_t n = (size_t)ds->n_seq * ds->max_len;
    b.ids = xmalloc(sizeof(int32_t) * n);
    b.labels = xmalloc(sizeof(int32_t) * n);
    b.T = dataset_batch(ds, idx, ds->n_seq, b.ids, b.labels);
    if (with_pos && ds->pos) {
        b.pos = xmalloc(sizeof(int32_t) * n);
        dataset_batch_positions(ds, idx, ds->n_seq, b.T, b.pos);
    }
    b.count = count_loss_tokens(b.labels, b.B, b.T);
    free(idx);
    return b;
}
static void pack_batch_free(PackBatch *b) {
    free(b->ids);
    free(b->labels);
    free(b->pos);
}

// The loss sum (loss times its token count) of batch b with m's positions set to its own, on the GPU
// (g) or the CPU (g NULL); the gradients in a copy.
static double pack_loss_sum(Model *m, GpuModel *g, const PackBatch *b, Param **params, int n, float ***grads) {
    m->positions = b->pos;
    double loss;
    if (g) loss = gpu_loss_and_grads(g, b->ids, b->labels, b->B, b->T, NULL);
    else {
        model_zero_grad(m);
        loss = model_forward(m, b->ids, b->labels, b->B, b->T);
        model_backward(m);
    }
    m->positions = NULL;
    *grads = copy_tensors(params, n, true);
    return loss * b->count;
}

// The packed loss sum and every gradient on the GPU equal the unpacked ones on the GPU and the packed
// ones on the CPU (fp32: 1e-5 / 1e-4 relative; bf16: 1e-2 and cosine 0.999, the random cases' bounds).
// In fp32, the same rows without their positions give gradients 1e-2 or more off (the check sees the masks).
static void run_pack(const char *name, const char *config, const char *targets, int window, GpuPrecision prec) {
    char label[128], detail[512] = "";
    snprintf(label, sizeof label, "%s [%s]", name, prec == GPU_BF16 ? "bf16" : "fp32");
    Model *m;
    if (targets) m = adapted_model(config, targets, METHOD_LORA, 0, true);
    else {
        ModelConfig cfg;
        m = config_parse(&cfg, config, "random") ? NULL : model_create_random(&cfg, 42);
        if (m) model_train_all(m);
    }
    if (!m) { report("FAIL", label, peft_last_error()); return; }
    m->cfg.sliding_window = window;
    Dataset ds, packed;
    pack_examples(&ds, m->cfg.vocab_size);
    dataset_pack(&ds, PACK_SEQ, &packed);
    PackBatch ub = pack_batch(&ds, false), pb = pack_batch(&packed, true), plain = pack_batch(&packed, false);
    Param **params;
    int n = model_trainable(m, &params);
    float **g_cpu = NULL, **g_unpacked = NULL, **g_packed = NULL, **g_plain = NULL;
    double s_cpu = pack_loss_sum(m, NULL, &pb, params, n, &g_cpu);
    GpuOptions opt = {.precision = prec};
    GpuModel *g = gpu_model_create(m, &opt);
    const char *status = "FAIL";
    if (!g) { snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
    double s_unpacked = pack_loss_sum(m, g, &ub, params, n, &g_unpacked), s_packed = pack_loss_sum(m, g, &pb, params, n, &g_packed);
    double s_plain = pack_loss_sum(m, g, &plain, params, n, &g_plain);
    if (isnan(s_unpacked) || isnan(s_packed) || isnan(s_plain)) { snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
    double e_unpacked = rel_diff(s_packed, s_unpacked), e_cpu = rel_diff(s_packed, s_cpu), e_plain = 0;
    double worst_e = 0, worst_cos = 1;
    const char *worst_name = "";
    for (int i = 0; i < n; i++) {
        e_plain = fmax(e_plain, rel_error(g_plain[i], g_unpacked[i], params[i]->numel));
        for (int r = 0; r < 2; r++) {
            const float *ref = r ? g_cpu[i] : g_unpacked[i];
            double e = rel_error(g_packed[i], ref, params[i]->numel), cs = cosine(g_packed[i], ref, params[i]->numel);
            if (e > worst_e || isnan(e)) { worst_e = e; if (prec == GPU_FP32) worst_name = params[i]->name; }
            if (cs < worst_cos || isnan(cs)) { worst_cos = cs; if (prec == GPU_BF16) worst_name = params[i]->name; }
        }
    }
    bool same = prec == GPU_FP32 ? e_unpacked <= 1e-5 && e_cpu <= 1e-5 && worst_e <= 1e-4 : e_unpacked <= 1e-2 && e_cpu <= 1e-2 && worst_cos >= 0.999;
    bool ok = same && ub.count == pb.count && packed.n_seq == 3 && (prec == GPU_BF16 || e_plain > 1e-2);
    status = ok ? "PASS" : "FAIL";
    snprintf(detail, sizeof detail, "%d examples in %d rows of %d; loss sum vs unpacked %.1e, vs CPU %.1e; grads: max rel %.1e, "
             "min cos %.6f (%s), %d tensors; without positions %.1e", ds.n_seq, packed.n_seq, pb.T, e_unpacked, e_cpu, worst_e, worst_cos,
             worst_name, n, e_plain);
out:
    report(status, label, detail);
    gpu_model_free(g);
    free_tensors_copy(g_cpu, n);
    free_tensors_copy(g_unpacked, n);
    free_tensors_copy(g_packed, n);
    free_tensors_copy(g_plain, n);
    pack_batch_free(&ub);
    pack_batch_free(&pb);
    pack_batch_free(&plain);
    dataset_free(&ds);
    dataset_free(&packed);
    model_free(m);
}

static char tr_root[256], *tr_model, *tr_train, *tr_val;

static void write_rows(const char *path, int first, int n) {
    static const char *names[] = {"Alimentum", "Aromi", "The Eagle", "Zizzi", "Cotto", "Loch Fyne", "Strada"};
    static const char *foods[] = {"Italian", "Chinese", "French", "English", "Indian"};
    static const char *areas[] = {"city centre", "riverside"};
    static const char *prices[] = {"cheap", "moderately priced", "expensive"};
    FILE *f = fopen(path, "w");
    if (!f) return;
    for (int i = first; i < first + n; i++)
        fprintf(f, "{\"text\": \"%s is a %s %s restaurant in the %s. It serves %s food near %s.\"}\n", names[i % 7], prices[(i / 7) % 3],
                foods[(i / 3) % 5], areas[(i / 5) % 2], foods[(i / 2) % 5], names[(i + 3) % 7]);
    fclose(f);
}

static bool trainer_fixture(void) {
    if (tr_model) return true;
    snprintf(tr_root, sizeof tr_root, "/tmp/peft-gpu-test-XXXXXX");
    if (!mkdtemp(tr_root)) return false;
    tr_model = path_join(tr_root, "model");
    tr_train = path_join(tr_root, "train.jsonl");
    tr_val = path_join(tr_root, "val.jsonl");
    const char *json = "{\"model_type\":\"gpt2\",\"vocab_size\":257,\"n_embd\":32,\"n_head\":2,\"n_layer\":2,"
                       "\"n_positions\":256,\"layer_norm_epsilon\":1e-5,\"bos_token_id\":256,\"eos_token_id\":256}";
    ModelConfig cfg;
    if (config_parse(&cfg, json, "tiny") || make_dir(tr_model)) return false;
    Model *m = model_create_random(&cfg, 7);
    for (long i = 0; i < m->wte->numel; i++) m->wte->w[i] *= 10;  // as tests/helpers.c: lets LoRA lower the loss
    int rc = model_save(m, tr_model) || byte_tokenizer_write(tr_model);
    model_free(m);
    write_rows(tr_train, 0, 160);
    write_rows(tr_val, 500, 40);
    return rc == 0 && file_exists(tr_train) && file_exists(tr_val);
}

static void trainer_cleanup(void) {
    if (!tr_model) return;
    char *cmd = xasprintf("rm -rf '%s'", tr_root);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tr_root);
    free(cmd);
    free(tr_model);
    free(tr_train);
    free(tr_val);
}

typedef struct {
    int n;
    double loss[64], lm[64], norm[64];
    int budget[64];
} Rec;

static void rec_step(void *user, const TrainStepInfo *s) {
    Rec *r = user;
    if (r->n >= 64) return;
    r->loss[r->n] = s->loss;
    r->lm[r->n] = s->lm_loss;
    r->norm[r->n] = s->grad_norm;
    r->budget[r->n++] = s->budget;
}

static int train(TrainConfig *c, Rec *r, TrainResult *res) {
    memset(r, 0, sizeof *r);
    TrainCallbacks cb = {.on_step = rec_step, .user = r};
    return train_run(c, &cb, res);
}

static TrainConfig trainer_config(MethodId method, const char *out) {
    TrainConfig c;
    train_config_defaults(&c, method);
    c.model_dir = tr_model;
    c.data_path = tr_train;
    c.out_dir = out;
    c.overwrite = true;  // the cases reuse their folders
    c.data.seq_len = 128;
    c.data.no_cache = true;
    c.batch = 2;
    c.seed = 3;
    c.threads = 2;
    c.lr = 5e-3f;
    c.warmup_steps = 1;
    c.adapter.alpha = 16;
    if (method == METHOD_ADALORA) { c.adapter.init_r = 4; c.adapter.target_r = 2; }
    if (method != METHOD_FULL) adapter_config_set_targets(&c.adapter, "c_attn,c_proj,c_fc");
    return c;
}

// The largest rel_error between same-named tensors of two safetensors files (INFINITY when they differ in names).
static double compare_tensor_files(const char *a, const char *b) {
    SafeTensors x = {0}, y = {0};
    double worst = INFINITY;
    if (!st_open(&x, a) && !st_open(&y, b) && x.n == y.n) {
        worst = 0;
        for (int i = 0; i < x.n && isfinite(worst); i++) {
            const StTensor *tx = &x.tensors[i], *ty = st_find(&y, tx->name);
            if (!ty || ty->numel != tx->numel) { worst = INFINITY; break; }
            float *u = xmalloc(sizeof(float) * (tx->numel + 1)), *v = xmalloc(sizeof(float) * (tx->numel + 1));
            double e = st_to_f32(tx, u) || st_to_f32(ty, v) ? INFINITY : rel_error(u, v, tx->numel);
            if (e > worst || isnan(e)) worst = e;
            free(u);
            free(v);
        }
    }
    st_close(&x);
    st_close(&y);
    return worst;
}


// Two runs' largest relative differences step by step (loss, the loss without a regulariser, gradient norm; into
// e_loss, e_lm, e_norm) and between the adapters they saved in out_a and out_b (returned).
static double run_diffs(const Rec *a, const Rec *b, const char *out_a, const char *out_b, double *e_loss, double *e_lm, double *e_norm) {
    *e_loss = *e_lm = *e_norm = 0;
    for (int i = 0; i < a->n && i < b->n; i++) {
        *e_loss = fmax(*e_loss, rel_diff(b->loss[i], a->loss[i]));
        *e_lm = fmax(*e_lm, rel_diff(b->lm[i], a->lm[i]));
        *e_norm = fmax(*e_norm, rel_diff(b->norm[i], a->norm[i]));
    }
    char *fa = path_join(out_a, "adapter_model.safetensors"), *fb = path_join(out_b, "adapter_model.safetensors");
    double e_w = compare_tensor_files(fb, fa);
    free(fa);
    free(fb);
    return e_w;
}

// Gradient accumulation (3 micro-batches per step) through train_run: the GPU in fp32 against the CPU,
// step by step (loss, causal-LM loss, gradient norm, AdaLoRA's budget) and in the saved adapter. AdaLoRA
// runs with its regulariser, and with allocate its rank allocator too (scores on the device, masks from
// step 2 of 6 on: the same ranks kept unless two triplets' scores nearly tie). With pack, --pack into
// sequences of 256 tokens (two or more of the data's rows in each). extra: ACCUM_BASE: LoRA also trains every bias
// (bias "all") and the final norm (modules_to_save ln_f), saved in the adapter; ACCUM_EMBED_LORA: LoRA on the tied wte too
// (lora_embedding_A / B); ACCUM_TOKENS: trainable_token_indices on the tied wte (the input and the head), tokens seen and not.
enum { ACCUM_NONE, ACCUM_BASE, ACCUM_EMBED_LORA, ACCUM_TOKENS };
static void run_trainer_accum(const char *name, MethodId method, bool pack, bool allocate, int extra) {
    char label[128], detail[512] = "";
    snprintf(label, sizeof label, "%s [fp32]", name);
    if (!trainer_fixture()) { report("FAIL", label, "cannot write the tiny model and data"); return; }
    char *out_cpu = path_join(tr_root, "accum-cpu"), *out_gpu = path_join(tr_root, "accum-gpu");
    TrainConfig c = trainer_config(method, out_cpu);
    c.grad_accum = 3;
    c.max_steps = allocate ? 6 : 4;
    c.adalora_allocate = allocate;
    if (allocate) { c.adapter.tinit = 1; c.adapter.tfinal = 2; }
    c.pack = pack;
    if (pack) c.data.seq_len = 256;
    if (extra == ACCUM_EMBED_LORA) adapter_config_set_targets(&c.adapter, "wte,c_attn,c_proj,c_fc");
    if (extra == ACCUM_TOKENS) {  // 'e', 'a' and ' ' in every row, 256 (eos) at their ends, 7 never
        static const int32_t rows[] = {101, 7, 97, 32, 256};
        c.adapter.token_targets = xcalloc(1, sizeof(TokenTarget));
        c.adapter.token_targets[0] = (TokenTarget){NULL, 5, xmalloc(sizeof rows)};
        memcpy(c.adapter.token_targets[0].indices, rows, sizeof rows);
        c.adapter.n_token_targets = 1;
    }
    if (extra == ACCUM_BASE) {
        c.adapter.bias = BIAS_ALL;
        c.adapter.modules_to_save = xmalloc(sizeof(char *));
        c.adapter.modules_to_save[0] = xstrdup("ln_f");
        c.adapter.n_modules_to_save = 1;
    }
    Rec a, b;
    TrainResult ra, rb;
    const char *status = "FAIL";
    if (train(&c, &a, &ra)) { snprintf(detail, sizeof detail, "CPU: %s", peft_last_error()); goto out; }
    c.out_dir = out_gpu;
    c.cuda = c.fp32 = true;
    if (train(&c, &b, &rb)) { snprintf(detail, sizeof detail, "GPU: %s", peft_last_error()); goto out; }
    double e_loss, e_lm, e_norm, reg = a.loss[a.n - 1] - a.lm[a.n - 1], e_w = run_diffs(&a, &b, out_cpu, out_gpu, &e_loss, &e_lm, &e_norm);
    bool budgets = true;
    for (int i = 0; i < a.n && i < b.n; i++) budgets &= a.budget[i] == b.budget[i];
    bool ok = a.n == c.max_steps && b.n == c.max_steps && e_loss <= 1e-5 && e_lm <= 1e-5 && e_norm <= 1e-4 && e_w <= 1e-4 && budgets &&
              (method != METHOD_ADALORA || reg > 0);
    status = ok ? "PASS" : "FAIL";
    snprintf(detail, sizeof detail, "%d steps x 3 micro-batches: loss %.1e, lm loss %.1e, grad norm %.1e, adapter %.1e (max rel; "
             "regulariser %.4f; budgets %s, last %d)", b.n, e_loss, e_lm, e_norm, e_w, reg, budgets ? "equal" : "DIFFER", b.n ? b.budget[b.n - 1] : -1);
out:
    report(status, label, detail);
    train_config_free(&c);
    free(out_cpu);
    free(out_gpu);
}

// peft train --task classify --device cuda (--fp32) against the CPU: a random RoBERTa (byte-level tokenizer, texts of
// different lengths, so padded batches), 4 steps of 2 micro-batches of 4, the step's losses and gradient norms to 1e-5 /
// 1e-4 and the saved adapter to 1e-4: the head trains as modules_to_save beside the adapter (AdaLoRA on every linear of
// the blocks). (Full fine-tuning is the reference cases' bert-full / roberta-full: trained, the key bias's gradient is
// rounding on both sides, which AdamW's first steps turn into +-lr.)
static void run_trainer_classify(const char *name, MethodId method) {
    char label[128], detail[512] = "";
    snprintf(label, sizeof label, "%s [fp32]", name);
    if (!trainer_fixture()) { report("FAIL", label, "cannot write the tiny model and data"); return; }
    char *model = path_join(tr_root, "roberta"), *data = path_join(tr_root, "classify.jsonl");
    char *out_cpu = path_join(tr_root, "classify-cpu"), *out_gpu = path_join(tr_root, "classify-gpu");
    const char *json = "{\"model_type\": \"roberta\", \"vocab_size\": 257, \"hidden_size\": 32, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, \"intermediate_size\": 64, \"max_position_embeddings\": 130, \"type_vocab_size\": 1, "
                       "\"layer_norm_eps\": 1e-5, \"pad_token_id\": 1, \"bos_token_id\": 0, \"eos_token_id\": 2, \"hidden_act\": \"gelu\", "
                       "\"num_labels\": 3, \"hidden_dropout_prob\": 0, \"attention_probs_dropout_prob\": 0}";
    ModelConfig cfg;
    Model *m = NULL;
    FILE *f = NULL;
    TrainConfig c;
    train_config_defaults(&c, method);
    const char *status = "FAIL";
    if (config_parse(&cfg, json, "random") || make_dir(model) || !(m = model_create_random(&cfg, 11)) || model_save(m, model) ||
        byte_tokenizer_write(model) || !(f = fopen(data, "w"))) {
        snprintf(detail, sizeof detail, "cannot write the tiny RoBERTa: %s", peft_last_error());
        goto out;
    }
    for (int i = 0; i < 40; i++)
        fprintf(f, "{\"text\": \"%.*s\", \"label\": %d}\n", 4 + (i * 7) % 30, "the cheap Italian place in the city centre serves food", i % 3);
    fclose(f);
    c.model_dir = model;
    c.data_path = data;
    c.out_dir = out_cpu;
    c.overwrite = true;
    c.batch = 4;
    c.grad_accum = 2;
    c.max_steps = 4;
    c.seed = 5;
    c.threads = 2;
    c.lr = 5e-3f;
    c.adalora_allocate = false;  // (the allocator on the GPU: "train grad-accum adalora allocator")
    if (method == METHOD_ADALORA) {
        c.adapter.init_r = 4;
        c.adapter.target_r = 2;
        adapter_config_set_targets(&c.adapter, "query,key,value,attention.output.dense,intermediate.dense,output.dense");
    }
    ClassifyColumns cols = {0};
    Rec a, b;
    TrainResult ra, rb;
    TrainCallbacks cba = {.on_step = rec_step, .user = &a}, cbb = {.on_step = rec_step, .user = &b};
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    if (classify_train(&c, &cols, &cba, &ra)) { snprintf(detail, sizeof detail, "CPU: %s", peft_last_error()); goto out; }
    c.out_dir = out_gpu;
    c.cuda = c.fp32 = true;
    if (classify_train(&c, &cols, &cbb, &rb)) { snprintf(detail, sizeof detail, "GPU: %s", peft_last_error()); goto out; }
    double e_loss, e_lm, e_norm, e_w = run_diffs(&a, &b, out_cpu, out_gpu, &e_loss, &e_lm, &e_norm);
    bool ok = a.n == c.max_steps && b.n == c.max_steps && e_loss <= 1e-5 && e_lm <= 1e-5 && e_norm <= 1e-4 && e_w <= 1e-4;
    status = ok ? "PASS" : "FAIL";
    snprintf(detail, sizeof detail, "%d steps x 2 micro-batches: loss %.1e, grad norm %.1e, saved %.1e (max rel; loss %.4f -> %.4f)", b.n, e_loss,
             e_norm, e_w, b.n ? b.loss[0] : NAN, b.n ? b.loss[b.n - 1] : NAN);
out:
    report(status, label, detail);
    c.model_dir = c.data_path = c.out_dir = NULL;
    train_config_free(&c);
    model_free(m);
    free(model);
    free(data);
    free(out_cpu);
    free(out_gpu);
}

// Checkpoints on the GPU: a run stopped after `stop` steps and resumed gives the uninterrupted run's
// losses (bit for bit unless the attention backward's fp32 atomics summed in another order; tol is
// the relative difference allowed) and adapter. With accumulation and dropout; AdaLoRA with its
// allocator (scores and rank pattern in the checkpoint).
static void run_trainer_resume(const char *name, MethodId method, GpuPrecision prec, int steps, int stop, double tol) {
    char label[128], detail[512] = "";
    snprintf(label, sizeof label, "%s [%s]", name, prec == GPU_BF16 ? "bf16" : "fp32");
    if (!trainer_fixture()) { report("FAIL", label, "cannot write the tiny model and data"); return; }
    const char *pn = prec == GPU_BF16 ? "bf16" : "fp32";
    char *out_a = xasprintf("%s/resume-%s-%d-a", tr_root, pn, (int)method), *out_b = xasprintf("%s/resume-%s-%d-b", tr_root, pn, (int)method);
    TrainConfig c = trainer_config(method, out_a);
    if (method == METHOD_ADALORA) { c.adapter.tinit = 2; c.adapter.tfinal = 3; }  // the allocator masks ranks mid-run
    c.max_steps = steps;
    c.grad_accum = 2;
    c.schedule = SCHED_COSINE;
    c.warmup_steps = 2;
    c.adapter.dropout = 0.1f;
    c.cuda = true;
    c.fp32 = prec == GPU_FP32;
    Rec a, b1, b2;
    TrainResult ra, rb;
    const char *status = "FAIL";
    if (train(&c, &a, &ra)) { snprintf(detail, sizeof detail, "straight: %s", peft_last_error()); goto out; }
    c.out_dir = out_b;
    c.stop_after = stop;
    if (train(&c, &b1, &rb) || !rb.stopped || b1.n != stop) { snprintf(detail, sizeof detail, "stopped: %s", peft_last_error()); goto out; }
    c.stop_after = 0;
    c.resume = true;
    if (train(&c, &b2, &rb) || rb.first_step != stop || b2.n != steps - stop) { snprintf(detail, sizeof detail, "resumed: %s", peft_last_error()); goto out; }
    double e_loss = 0;
    int n_exact = 0;
    bool budgets = true;
    for (int i = 0; i < steps; i++) {
        double got = i < stop ? b1.loss[i] : b2.loss[i - stop];
        int budget = i < stop ? b1.budget[i] : b2.budget[i - stop];
        e_loss = fmax(e_loss, rel_diff(got, a.loss[i]));
        n_exact += got == a.loss[i];
        budgets &= budget == a.budget[i];
    }
    char *fa = path_join(out_a, "adapter_model.safetensors"), *fb = path_join(out_b, "adapter_model.safetensors");
    double e_w = compare_tensor_files(fb, fa);
    free(fa);
    free(fb);
    bool ok = a.n == steps && e_loss <= tol && e_w <= 10 * tol && budgets;
    status = ok ? "PASS" : "FAIL";
    snprintf(detail, sizeof detail, "%d steps, stopped at %d: %d of %d losses identical, max rel diff %.1e; adapter %.1e; budgets %s",
             steps, stop, n_exact, steps, e_loss, e_w, budgets ? "equal" : "DIFFER");
out:
    report(status, label, detail);
    train_config_free(&c);
    free(out_a);
    free(out_b);
}

// Training with adapter dropout on the GPU: finite losses and a validation loss that goes down.
static void run_trainer_dropout(const char *name, GpuPrecision prec) {
    char label[128], detail[512] = "";
    snprintf(label, sizeof label, "%s [%s]", name, prec == GPU_BF16 ? "bf16" : "fp32");
    if (!trainer_fixture()) { report("FAIL", label, "cannot write the tiny model and data"); return; }
    char *out = path_join(tr_root, prec == GPU_BF16 ? "dropout-bf16" : "dropout-fp32");
    TrainConfig c = trainer_config(METHOD_LORA, out);
    c.val_path = tr_val;
    c.batch = 8;
    c.max_steps = 30;
    c.lr = 1e-2f;
    c.adapter.dropout = 0.1f;
    c.cuda = true;
    c.fp32 = prec == GPU_FP32;
    Rec r;
    TrainResult res;
    const char *status = "FAIL";
    if (train(&c, &r, &res)) snprintf(detail, sizeof detail, "%s", peft_last_error());
    else {
        bool finite = r.n == 30;
        for (int i = 0; i < r.n; i++) finite &= isfinite(r.loss[i]) && isfinite(r.norm[i]);
        bool ok = finite && isfinite(res.last_val_loss) && res.last_val_loss < res.first_val_loss - 0.5;
        status = ok ? "PASS" : "FAIL";
        snprintf(detail, sizeof detail, "p 0.1, %d steps: validation loss %.4f -> %.4f, training loss %.4f -> %.4f%s", r.n,
                 res.first_val_loss, res.last_val_loss, r.n ? r.loss[0] : NAN, r.n ? r.loss[r.n - 1] : NAN, finite ? "" : " (NOT FINITE)");
    }
    report(status, label, detail);
    train_config_free(&c);
    free(out);
}

// ---------------- a quantized base (--quantize) ----------------
// Every block linear of m quantized as --quantize does (od: the dequantization's out_dtype, as a loaded
// folder's quant_state may say).
static Model *quantize_all(Model *m, QuantType t, bool nested, QuantOut od) {
    for (int i = 0; m && i < m->n_linears; i++) {
        if (model_quantize_linear(m, &m->linears[i], t, nested)) { model_free(m); return NULL; }
        m->linears[i].q->out_dtype = t == QUANT_INT8 ? QUANT_OUT_F32 : od;
    }
    return m;
}

// bf16's rounding of x (to nearest, ties to even), widened back.
static float bf16_round(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    b = (b + 0x7fff + ((b >> 16) & 1)) & 0xffff0000u;
    memcpy(&x, &b, 4);
    return x;
}

typedef struct {
    const char *name, *config, *targets;
    MethodId type;
    QuantType quant;
    bool nested, recompute;
    QuantOut od;
    int B, T;
} QuantCase;

// The device's dequantized weights (fp32: the CPU's bit for bit; bf16: the CPU's rounded to bf16, bit for
// bit), then logits, loss and every adapter gradient against the CPU's quantized model (the bounds of
// the random cases above), and a training step.
static void run_quant(const QuantCase *qc, GpuPrecision prec) {
    char label[160], detail[512] = "";
    snprintf(label, sizeof label, "%s [%s]", qc->name, prec == GPU_BF16 ? "bf16" : "fp32");
    Model *m = quantize_all(adapted_model(qc->config, qc->targets, qc->type, 0, true), qc->quant, qc->nested, qc->od);
    if (!m) { report("FAIL", label, peft_last_error()); return; }
    int B = qc->B, T = qc->T, N = B * T, V = m->cfg.vocab_size;
    int32_t *ids = xmalloc(sizeof(int32_t) * N), *labels = xmalloc(sizeof(int32_t) * N);
    random_batch(ids, labels, B, T, V);
    float *ref_logits = xmalloc(sizeof(float) * (size_t)N * V), *logits = xmalloc(sizeof(float) * (size_t)N * V);
    double ref_loss = cpu_reference(m, ids, labels, B, T, ref_logits);
    Param **params;
    int n = model_trainable(m, &params);
    float **ref_grads = copy_tensors(params, n, true);
    GpuOptions opt = {.precision = prec, .recompute = qc->recompute};
    GpuModel *g = gpu_model_create(m, &opt);
    const char *status = "FAIL";
    long w_diff = 0, w_total = 0;
    if (!g) { snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
    for (int i = 0; i < m->n_linears; i++) {
        Linear *lin = &m->linears[i];
        long nw = (long)lin->in * lin->out;
        float *cpu = xmalloc(sizeof(float) * nw), *dev = xmalloc(sizeof(float) * nw);
        qweight_dequantize(lin->q, cpu);
        if (gpu_dequantized_weight(g, lin, dev)) w_diff = -1;
        for (long j = 0; j < nw && w_diff >= 0; j++) {
            float want = prec == GPU_BF16 ? bf16_round(cpu[j]) : cpu[j];
            w_diff += memcmp(&want, &dev[j], 4) != 0;
        }
        w_total += nw;
        free(cpu);
        free(dev);
        if (w_diff < 0) break;
    }
    if (w_diff < 0) { snprintf(detail, sizeof detail, "dequantized weights: %s", peft_last_error()); goto out; }
    if (isnan(gpu_forward(g, ids, NULL, B, T)) || gpu_get_logits(g, logits)) { snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
    double e_logits = rel_error(logits, ref_logits, (long)N * V);
    double loss = gpu_loss_and_grads(g, ids, labels, B, T, NULL);
    if (isnan(loss)) { snprintf(detail, sizeof detail, "%s", peft_last_error()); goto out; }
    double e_loss = fabs(loss - ref_loss) / fabs(ref_loss), worst_e = 0, worst_cos = 1;
    for (int i = 0; i < n; i++) {
        double e = rel_error(params[i]->grad, ref_grads[i], params[i]->numel), cs = cosine(params[i]->grad, ref_grads[i], params[i]->numel);
        if (e > worst_e || isnan(e)) worst_e = e;
        if (cs < worst_cos || isnan(cs)) worst_cos = cs;
    }
    double step = gpu_train_step(g, ids, labels, B, T, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0);
    bool ok = w_diff == 0 && isfinite(step) &&
              (prec == GPU_FP32 ? (e_logits <= 1e-4 && e_loss <= 1e-5 && worst_e <= 1e-4) : (e_loss <= 1e-2 && worst_cos >= 0.999 && e_logits <= 5e-2));
    status = ok ? "PASS" : "FAIL";
    snprintf(detail, sizeof detail, "weights: %ld of %ld differ; logits %.1e loss %.1e grads: max rel %.1e, min cos %.6f, %d tensors; step loss %.4f",
             w_diff, w_total, e_logits, e_loss, worst_e, worst_cos, n, step);
out:
    report(status, label, detail);
    gpu_model_free(g);
    free_tensors_copy(ref_grads, n);
    free(ref_logits);
    free(logits);
    free(ids);
    free(labels);
    model_free(m);
}

// --recompute layer (and mlp) against no recompute, on one model and batch: four GPU models in turn (none, none
// again, layer, mlp) with the same dropout seed, each GEMM shape on the same cuBLASLt algorithm (PEFT_GPU_NO_TUNE).
// The forwards run the same kernels on the same inputs, so the losses should be equal bit for bit, and the
// gradients too except where the attention backward's fp32 atomics sum in another order; what is required: the
// recomputing runs within 10 times the spread of the two runs without recompute, or of 1e-6 (fp32) / 1e-3 (bf16)
// in the loss and 1e-5 / 1e-2 in the gradients, relative; the detail says what was bit-identical. Then one
// training step (AdamW, clipping) from the same start: the weights within the bounds of run_random's step check;
// and the training's peak (after creation) with layer below none's.
typedef struct {
    const char *name, *config, *targets;  // targets NULL: full fine-tuning
    MethodId type;
    QuantType quant;
    float dropout;
    int B, T;
} RecomputeCase;

static void run_recompute(const RecomputeCase *rc, GpuPrecision prec) {
    char label[160], detail[640] = "";
    snprintf(label, sizeof label, "%s [%s]", rc->name, prec == GPU_BF16 ? "bf16" : "fp32");
    Model *m;
    if (rc->targets) m = adapted_model(rc->config, rc->targets, rc->type, rc->dropout, true);
    else {
        ModelConfig cfg;
        m = config_parse(&cfg, rc->config, "random") ? NULL : model_create_random(&cfg, 42);
        if (m) model_train_all(m);
    }
    if (m && rc->quant) m = quantize_all(m, rc->quant, true, QUANT_OUT_F32);
    if (!m) { report("FAIL", label, peft_last_error()); return; }
    int B = rc->B, T = rc->T, N = B * T;
    int32_t *ids = xmalloc(sizeof(int32_t) * N), *labels = xmalloc(sizeof(int32_t) * N);
    random_batch(ids, labels, B, T, m->cfg.vocab_size);
    Param **params;
    int n = model_trainable(m, &params);
    float **w0 = copy_tensors(params, n, false), **grads[4] = {NULL}, **stepped[4] = {NULL};
    static const int modes[4] = {GPU_RECOMPUTE_NONE, GPU_RECOMPUTE_NONE, GPU_RECOMPUTE_LAYER, GPU_RECOMPUTE_MLP};
    double loss[4], step_loss[4];
    size_t peak[4];
    bool dora = rc->type == METHOD_DORA;  // gpu_train_step refuses DoRA (see there): no step
    const char *status = "FAIL";
    setenv("PEFT_GPU_NO_TUNE", "1", 1);
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < n; i++) memcpy(params[i]->w, w0[i], sizeof(float) * params[i]->numel);
        GpuOptions opt = {.precision = prec, .recompute = modes[k]};
        GpuModel *g = gpu_model_create(m, &opt);
        gpu_reset_peak();  // the training's peak (the upload's staging buffer can exceed a tiny model's)
        if (g && rc->dropout > 0) gpu_set_dropout(g, true, 5);
        loss[k] = g ? gpu_loss_and_grads(g, ids, labels, B, T, NULL) : NAN;
        if (!isnan(loss[k])) grads[k] = copy_tensors(params, n, true);
        step_loss[k] = g && !isnan(loss[k]) && !dora ? gpu_train_step(g, ids, labels, B, T, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0) : 0;
        if (!isnan(step_loss[k]) && !dora && g && !gpu_download_trainables(g, false)) stepped[k] = copy_tensors(params, n, false);
        peak[k] = gpu_peak_bytes();
        gpu_model_free(g);
        if (!grads[k] || (!dora && !stepped[k])) { snprintf(detail, sizeof detail, "recompute mode %d: %s", modes[k], peft_last_error()); goto out; }
    }
    {
        double spread = 0, worst[4] = {0}, worst_step[4] = {0};
        int same[4] = {0};
        for (int i = 0; i < n; i++) {
            long ni = params[i]->numel;
            spread = fmax(spread, rel_error(grads[1][i], grads[0][i], ni));
            for (int k = 1; k < 4; k++) {
                double e = rel_error(grads[k][i], grads[0][i], ni);
                if (e > worst[k] || isnan(e)) worst[k] = e;
                same[k] += !memcmp(grads[k][i], grads[0][i], sizeof(float) * ni);
                double es = dora ? 0 : rel_error(stepped[k][i], stepped[0][i], ni);
                if (es > worst_step[k] || isnan(es)) worst_step[k] = es;
            }
        }
        bool fp32 = prec == GPU_FP32;
        double bound = fmax(10 * spread, fp32 ? 1e-5 : 1e-2), step_tol = fp32 ? 1e-4 : 1e-3;
        double loss_bound = fmax(10 * rel_diff(loss[1], loss[0]), fp32 ? 1e-6 : 1e-3);
        bool ok = peak[2] < peak[0];
        for (int k = 2; k < 4; k++)
            ok = ok && rel_diff(loss[k], loss[0]) <= loss_bound && worst[k] <= bound && worst_step[k] <= step_tol &&
                 (dora || rel_diff(step_loss[k], step_loss[0]) <= loss_bound);
        status = ok ? "PASS" : "FAIL";
        snprintf(detail, sizeof detail,
                 "loss %.6f (bit-identical: rerun %d, layer %d, mlp %d); grads bit-identical rerun %d, layer %d, mlp %d of %d, max rel "
                 "layer %.1e, mlp %.1e, rerun spread %.1e; step layer %.1e mlp %.1e; peak none %.2f layer %.2f mlp %.2f MiB",
                 loss[0], !memcmp(&loss[1], &loss[0], sizeof(double)), !memcmp(&loss[2], &loss[0], sizeof(double)),
                 !memcmp(&loss[3], &loss[0], sizeof(double)), same[1], same[2], same[3], n, worst[2], worst[3], spread, worst_step[2],
                 worst_step[3], peak[0] / 1048576.0, peak[2] / 1048576.0, peak[3] / 1048576.0);
    }
out:
    unsetenv("PEFT_GPU_NO_TUNE");
    report(status, label, detail);
    for (int k = 0; k < 4; k++) { free_tensors_copy(grads[k], n); free_tensors_copy(stepped[k], n); }
    free_tensors_copy(w0, n);
    free(ids);
    free(labels);
    model_free(m);
}

// A quantized weight is frozen: full fine-tuning of a quantized model is refused by gpu_model_create.
static void run_quant_refuses_full(void) {
    ModelConfig cfg;
    if (config_parse(&cfg, LLAMA_CFG, "random")) { report("FAIL", "quant refuses full fine-tuning", peft_last_error()); return; }
    Model *m = quantize_all(model_create_random(&cfg, 42), QUANT_NF4, true, QUANT_OUT_F32);
    if (!m) { report("FAIL", "quant refuses full fine-tuning", peft_last_error()); return; }
    model_train_all(m);
    GpuOptions opt = {.precision = GPU_BF16};
    GpuModel *g = gpu_model_create(m, &opt);
    bool ok = !g && strstr(peft_last_error(), "quantized") && strstr(peft_last_error(), "frozen");
    report(ok ? "PASS" : "FAIL", "quant refuses full fine-tuning", g ? "the GPU model was built" : peft_last_error());
    gpu_model_free(g);
    model_free(m);
}

// What the encoders (BERT, RoBERTa) do not run on the GPU is refused by name: here --recompute.
static void run_encoder_refused(void) {
    ModelConfig cfg;
    const char *json = "{\"model_type\": \"roberta\", \"vocab_size\": 30, \"hidden_size\": 16, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, \"intermediate_size\": 24, \"max_position_embeddings\": 20, \"type_vocab_size\": 1, "
                       "\"layer_norm_eps\": 1e-5, \"pad_token_id\": 1, \"hidden_act\": \"gelu\", \"num_labels\": 2}";
    if (config_parse(&cfg, json, "random")) { report("FAIL", "encoder refused", peft_last_error()); return; }
    Model *m = model_create_random(&cfg, 42);
    GpuOptions opt = {.precision = GPU_FP32, .recompute = GPU_RECOMPUTE_MLP};
    GpuModel *g = gpu_model_create(m, &opt);
    bool ok = !g && strstr(peft_last_error(), "roberta is an encoder") && strstr(peft_last_error(), "--recompute");
    report(ok ? "PASS" : "FAIL", "encoder refused", g ? "the GPU model was built" : peft_last_error());
    gpu_model_free(g);
    model_free(m);
}

// ---------------- the encoders' attention: bidirectional, with a key padding mask ----------------
// float64 reference of gpu_attention_bidir: per row b, head h (GQA: KV head h / (NH / NKV)) and query t, softmax of
// scale q k_j over the keys j with mask[b, j] set, times v; then the backward from dout (accumulated into dqkv).
static void attn_bidir_ref(int B, int T, int NH, int NKV, int HD, const int32_t *mask, const float *qkv, const float *dout, float *out,
                           float *dqkv) {
    int S = (NH + 2 * NKV) * HD, QW = NH * HD, KVW = NKV * HD;
    double scale = 1.0 / sqrt((double)HD);
    double *p = xmalloc(sizeof(double) * T), *dp = xmalloc(sizeof(double) * T), *acc = xcalloc((size_t)B * T * S, sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                int kvh = h / (NH / NKV);
                long n = (long)b * T + t;
                const float *q = qkv + n * S + h * HD, *dq = dout + n * QW + h * HD;
                double mx = -INFINITY, sum = 0, D = 0;
                for (int j = 0; j < T; j++) {
                    p[j] = -INFINITY;
                    if (!mask[(long)b * T + j]) continue;
                    const float *k = qkv + ((long)b * T + j) * S + QW + kvh * HD;
                    double dot = 0;
                    for (int i = 0; i < HD; i++) dot += (double)q[i] * k[i];
                    p[j] = dot * scale;
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < T; j++) sum += (p[j] = exp(p[j] - mx));
                for (int j = 0; j < T; j++) {
                    p[j] /= sum;
                    const float *v = qkv + ((long)b * T + j) * S + QW + KVW + kvh * HD;
                    dp[j] = 0;
                    for (int i = 0; i < HD; i++) dp[j] += (double)dq[i] * v[i];
                    D += p[j] * dp[j];
                }
                for (int i = 0; i < HD; i++) {
                    double o = 0;
                    for (int j = 0; j < T; j++) o += p[j] * qkv[((long)b * T + j) * S + QW + KVW + kvh * HD + i];
                    out[n * QW + h * HD + i] = (float)o;
                }
                for (int j = 0; j < T; j++) {
                    if (p[j] == 0) continue;
                    double ds = p[j] * (dp[j] - D) * scale;
                    long kj = ((long)b * T + j) * S + QW + kvh * HD;
                    for (int i = 0; i < HD; i++) {
                        acc[n * S + h * HD + i] += ds * qkv[kj + i];
                        acc[kj + i] += ds * q[i];
                        acc[kj + KVW + i] += p[j] * dq[i];
                    }
                }
            }
    for (long i = 0; i < (long)B * T * S; i++) dqkv[i] = (float)acc[i];
    free(p);
    free(dp);
    free(acc);
}

// gpu_attention_bidir against attn_bidir_ref: row 0 all real tokens, row 1 right padding, row 2 left padding with holes;
// the output and dq, dk, dv within tol (fp32 1e-4; bf16 2e-2, its inputs rounded to bf16 for both), and the padding
// keys' dk, dv exactly 0 (probability 0: no gradient reaches them).
static void run_attn_bidir(const char *name, int B, int T, int NH, int NKV, int HD, GpuPrecision prec) {
    char label[128], detail[256];
    snprintf(label, sizeof label, "%s [%s]", name, prec == GPU_BF16 ? "bf16" : "fp32");
    int S = (NH + 2 * NKV) * HD, QW = NH * HD;
    long N = (long)B * T;
    float *qkv = xmalloc(sizeof(float) * N * S), *dout = xmalloc(sizeof(float) * N * QW);
    float *out = xmalloc(sizeof(float) * N * QW), *dqkv = xmalloc(sizeof(float) * N * S);
    float *ref_out = xmalloc(sizeof(float) * N * QW), *ref_dqkv = xmalloc(sizeof(float) * N * S);
    int32_t *mask = xmalloc(sizeof(int32_t) * N);
    for (long i = 0; i < N * S; i++) qkv[i] = (float)(4 * urand() - 2);  // scores up to ~|q||k|/sqrt(HD): peaked rows too
    for (long i = 0; i < N * QW; i++) dout[i] = (float)(2 * urand() - 1);
    if (prec == GPU_BF16) {
        for (long i = 0; i < N * S; i++) qkv[i] = bf16_round(qkv[i]);
        for (long i = 0; i < N * QW; i++) dout[i] = bf16_round(dout[i]);
    }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            mask[(long)b * T + t] = b % 3 == 0 ? 1 : b % 3 == 1 ? t < T * 2 / 5 : t >= T / 3 && t % 7 != 3;
    const char *status = "FAIL";
    if (gpu_attention_bidir(B, T, NH, NKV, HD, mask, prec, qkv, dout, out, dqkv)) {
        snprintf(detail, sizeof detail, "%s", peft_last_error());
    } else {
        attn_bidir_ref(B, T, NH, NKV, HD, mask, qkv, dout, ref_out, ref_dqkv);
        double e_out = rel_error(out, ref_out, N * QW), e_d = rel_error(dqkv, ref_dqkv, N * S), pad = 0;
        for (long n = 0; n < N; n++)
            for (int i = QW; i < S && !mask[n]; i++) pad = fmax(pad, fabs(dqkv[n * S + i]));
        double tol = prec == GPU_BF16 ? 2e-2 : 1e-4;
        status = e_out <= tol && e_d <= tol && pad == 0 ? "PASS" : "FAIL";
        snprintf(detail, sizeof detail, "out %.1e, dqkv %.1e (rel; bound %.0e), padding keys' |dk|,|dv| max %.1e", e_out, e_d, tol, pad);
    }
    report(status, label, detail);
    free(qkv);
    free(dout);
    free(out);
    free(dqkv);
    free(ref_out);
    free(ref_dqkv);
    free(mask);
}

// train_run --device cuda --quantize on the tiny GPT-2 (LoRA on every linear): each step's loss
// against the CPU's quantized run (fp32: 1e-5 relative, bf16: 5e-2), and the saved adapters (fp32).
static void run_trainer_quant(const char *name, QuantType t, bool nested, GpuPrecision prec) {
    char label[128], detail[512] = "";
    snprintf(label, sizeof label, "%s [%s]", name, prec == GPU_BF16 ? "bf16" : "fp32");
    if (!trainer_fixture()) { report("FAIL", label, "cannot write the tiny model and data"); return; }
    char *out_cpu = xasprintf("%s/quant-cpu-%d", tr_root, (int)t), *out_gpu = xasprintf("%s/quant-gpu-%d-%d", tr_root, (int)t, (int)prec);
    TrainConfig c = trainer_config(METHOD_LORA, out_cpu);
    c.max_steps = 8;
    c.quantize = t;
    c.double_quant = nested;
    Rec a, b;
    TrainResult ra, rb;
    const char *status = "FAIL";
    if (train(&c, &a, &ra)) { snprintf(detail, sizeof detail, "CPU: %s", peft_last_error()); goto out; }
    c.out_dir = out_gpu;
    c.cuda = true;
    c.fp32 = prec == GPU_FP32;
    if (train(&c, &b, &rb)) { snprintf(detail, sizeof detail, "GPU: %s", peft_last_error()); goto out; }
    double e_loss = 0;
    for (int i = 0; i < a.n && i < b.n; i++) e_loss = fmax(e_loss, rel_diff(b.loss[i], a.loss[i]));
    char *fa = path_join(out_cpu, "adapter_model.safetensors"), *fb = path_join(out_gpu, "adapter_model.safetensors");
    double e_w = compare_tensor_files(fb, fa);
    free(fa);
    free(fb);
    double tol = prec == GPU_FP32 ? 1e-5 : 5e-2;  // bf16: 8 steps of bf16 compute apart
    bool ok = a.n == 8 && b.n == 8 && e_loss <= tol && (prec == GPU_BF16 || e_w <= 1e-3);
    status = ok ? "PASS" : "FAIL";
    snprintf(detail, sizeof detail, "%d steps: loss %.4f -> %.4f (CPU %.4f -> %.4f), max rel diff %.1e; adapter %.1e", b.n, b.loss[0],
             b.loss[b.n - 1], a.loss[0], a.loss[a.n - 1], e_loss, e_w);
out:
    report(status, label, detail);
    train_config_free(&c);
    free(out_cpu);
    free(out_gpu);
}

int main(int argc, char **argv) {
    char why[512];
    if (!gpu_available(why, sizeof why)) {
        printf("\n*** SKIPPED: %s: GPU tests (reference cases on the GPU, kernel checks) not run ***\n\n", why);
        return 0;
    }
    gpu_describe(why, sizeof why);
    printf("GPU: %s\n", why);
    // test_gpu [FIXTURES_DIR...] [--only NAME[,NAME...]]: the reference cases of each folder, then the other checks.
    const char *roots[8] = {"tests/fixtures/hf-peft"}, *only = NULL;
    int n_roots = 0;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--only") && a + 1 < argc) only = argv[++a];
        else if (n_roots < 8) roots[n_roots++] = argv[a];
    }
    if (!n_roots) n_roots = 1;
    static const char *cases[] = {"gpt2-lora", "gpt2-full", "llama-lora", "llama-full", "gpt2-vera", "gpt2-adalora", "llama-vera", "llama-adalora"};
    static const char *dora_cases[] = {"gpt2-lora-dora", "llama-lora-dora", "llama-lora-dora-qv-rslora"};  // the repository's own
    // bias and modules_to_save (issue 18; the repository's own): base weights trained beside LoRA, some of them in a fused
    // group whose other members stay frozen (Qwen2's q/k/v with lora_only on q, v; layer 1's q_proj as a module to save).
    static const char *base_cases[] = {"gpt2-lora-bias-all", "gpt2-lora-bias-lora-only", "llama-lora-bias-all", "qwen2-lora-bias-all-layers",
                                       "qwen2-lora-bias-lora-only", "llama-lora-modules-to-save", "qwen2-lora-modules-to-save-linear"};
    // The encoders' sequence classification (issue 23; task seq_cls): the head trained as modules_to_save, the three losses.
    static const char *enc_cases[] = {"bert-lora", "bert-full", "bert-vera", "bert-adalora", "bert-lora-multilabel",
                                      "roberta-lora", "roberta-full", "roberta-adalora", "roberta-lora-regression"};
    // LoRA on the token embedding, trainable_token_indices (issue 18; the repository's own): GPT-2's tied head, Llama's untied one
    // (the dict case trains rows of both).
    static const char *embed_cases[] = {"gpt2-lora-embedding", "llama-lora-embedding", "gpt2-lora-trainable-tokens", "llama-lora-trainable-tokens",
                                        "llama-lora-trainable-tokens-dict"};
    for (int r = 0; r < n_roots; r++) {
        if (!dir_exists(roots[r])) printf("\n*** SKIPPED: %s not found: HF PEFT reference cases not run on the GPU ***\n\n", roots[r]);
        for (int p = 0; p < 2; p++) {
            for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
                if (wanted(cases[i], only)) run_fixture(roots[r], cases[i], p ? GPU_BF16 : GPU_FP32, false);
            for (size_t i = 0; r == 0 && i < sizeof dora_cases / sizeof *dora_cases; i++)
                if (wanted(dora_cases[i], only)) run_fixture(roots[r], dora_cases[i], p ? GPU_BF16 : GPU_FP32, true);
            for (size_t i = 0; r == 0 && i < sizeof base_cases / sizeof *base_cases; i++)
                if (wanted(base_cases[i], only)) run_fixture(roots[r], base_cases[i], p ? GPU_BF16 : GPU_FP32, false);
            for (size_t i = 0; r == 0 && i < sizeof enc_cases / sizeof *enc_cases; i++)
                if (wanted(enc_cases[i], only)) run_fixture(roots[r], enc_cases[i], p ? GPU_BF16 : GPU_FP32, false);
            for (size_t i = 0; r == 0 && i < sizeof embed_cases / sizeof *embed_cases; i++)
                if (wanted(embed_cases[i], only)) run_fixture(roots[r], embed_cases[i], p ? GPU_BF16 : GPU_FP32, false);
        }
    }
    static const RandCase rcs[] = {
        {"rand-gpt2-lora-all T100", GPT2_CFG, GPT2_ALL, 2, 100, false, METHOD_LORA},
        {"rand-gpt2-full T128", GPT2_CFG, NULL, 2, 128, false, METHOD_LORA},
        {"rand-gpt2-lora recompute T70", GPT2_CFG, "c_attn", 3, 70, true, METHOD_LORA},
        {"rand-llama-lora-all GQA T100", LLAMA_CFG, LLAMA_ALL, 2, 100, false, METHOD_LORA},
        {"rand-llama-full GQA T64", LLAMA_CFG, NULL, 2, 64, false, METHOD_LORA},
        {"rand-mistral-lora window50 T200", MISTRAL_CFG, "q_proj,v_proj", 1, 200, false, METHOD_LORA},
        {"rand-qwen2-lora qkv-bias T90", QWEN2_CFG, "q_proj,k_proj,v_proj,o_proj", 2, 90, true, METHOD_LORA},
        {"rand-gpt2-vera-all T100", GPT2_CFG, GPT2_ALL, 2, 100, false, METHOD_VERA},
        {"rand-llama-vera-all T80", LLAMA_CFG, LLAMA_ALL, 2, 80, false, METHOD_VERA},
        {"rand-gpt2-adalora-all T100", GPT2_CFG, GPT2_ALL, 2, 100, false, METHOD_ADALORA},
        {"rand-llama-adalora-all T80", LLAMA_CFG, LLAMA_ALL, 2, 80, true, METHOD_ADALORA},
        {"rand-llama-lora-all T600", LLAMA_CFG, LLAMA_ALL, 1, 600, false, METHOD_LORA},
        {"rand-mistral-vera window50 T520", MISTRAL_CFG, LLAMA_ALL, 1, 520, false, METHOD_VERA},
        {"rand-llama-lora-all hd128 T200", LLAMA128_CFG, LLAMA_ALL, 2, 200, false, METHOD_LORA},
        {"rand-mistral-full hd128 window50 T150", MISTRAL128_CFG, NULL, 1, 150, false, METHOD_LORA},
        {"rand-gpt2-dora-all T100", GPT2_CFG, GPT2_ALL, 2, 100, false, METHOD_DORA},
        {"rand-llama-dora-all GQA T80", LLAMA_CFG, LLAMA_ALL, 2, 80, false, METHOD_DORA},
        {"rand-llama-dora q,v,up recompute T64", LLAMA_CFG, "q_proj,v_proj,up_proj", 2, 64, true, METHOD_DORA},
    };
    for (int p = 0; p < 2; p++)
        for (size_t i = 0; i < sizeof rcs / sizeof *rcs; i++)
            if (wanted(rcs[i].name, only)) run_random(&rcs[i], p ? GPU_BF16 : GPU_FP32);
    // AdaLoRA's orthogonal regulariser, adapter dropout (random models, the GPU against the CPU and itself).
    static const struct { const char *name, *config, *targets; int B, T; } orth[] = {
        {"orth-reg gpt2-adalora-all T64", GPT2_CFG, GPT2_ALL, 2, 64},
        {"orth-reg llama-adalora-all T48", LLAMA_CFG, LLAMA_ALL, 2, 48},
    }, drop[] = {
        {"dropout gpt2-lora-all T64", GPT2_CFG, GPT2_ALL, 2, 64},
        {"dropout llama-lora-all T48", LLAMA_CFG, LLAMA_ALL, 2, 48},
    };
    for (int p = 0; p < 2; p++)
        for (size_t i = 0; i < sizeof orth / sizeof *orth; i++)
            if (wanted(orth[i].name, only)) run_orth(orth[i].name, orth[i].config, orth[i].targets, orth[i].B, orth[i].T, p ? GPU_BF16 : GPU_FP32);
    for (size_t i = 0; i < sizeof drop / sizeof *drop; i++)
        if (wanted(drop[i].name, only)) run_dropout(drop[i].name, drop[i].config, drop[i].targets, drop[i].B, drop[i].T);
    // Packing: GPT-2 (wpe, every gradient), Llama (rope, GQA), a sliding window, head_dim 128.
    static const struct { const char *name, *config, *targets; int window; } packs[] = {
        {"pack gpt2-full", GPT2_CFG, NULL, 0},
        {"pack llama-lora-all GQA", LLAMA_CFG, LLAMA_ALL, 0},
        {"pack mistral-full window50", MISTRAL_CFG, NULL, 50},
        {"pack llama-lora-all hd128 window100", LLAMA128_CFG, LLAMA_ALL, 100},
    };
    for (int p = 0; p < 2; p++)
        for (size_t i = 0; i < sizeof packs / sizeof *packs; i++)
            if (wanted(packs[i].name, only)) run_pack(packs[i].name, packs[i].config, packs[i].targets, packs[i].window, p ? GPU_BF16 : GPU_FP32);
#define WANT(name) (wanted(name, only))
    if (WANT("dora refusals")) run_dora_refusals();
    if (WANT("dropout-scaling gpt2-lora-all T64")) run_dropout_scaling("dropout-scaling gpt2-lora-all T64", GPT2_CFG, GPT2_ALL, 2, 64, 0.5f);
    // The trainer (train_run --device cuda) on a tiny GPT-2: accumulation against the CPU, resume, dropout.
    if (WANT("train grad-accum lora")) run_trainer_accum("train grad-accum lora", METHOD_LORA, false, false, false);
    if (WANT("train grad-accum adalora+orth-reg")) run_trainer_accum("train grad-accum adalora+orth-reg", METHOD_ADALORA, false, false, false);
    if (WANT("train grad-accum adalora allocator")) run_trainer_accum("train grad-accum adalora allocator", METHOD_ADALORA, false, true, false);
    if (WANT("train pack grad-accum lora")) run_trainer_accum("train pack grad-accum lora", METHOD_LORA, true, false, false);
    if (WANT("train grad-accum lora bias+modules-to-save"))
        run_trainer_accum("train grad-accum lora bias+modules-to-save", METHOD_LORA, false, false, ACCUM_BASE);
    if (WANT("train grad-accum lora-embedding tied"))
        run_trainer_accum("train grad-accum lora-embedding tied", METHOD_LORA, false, false, ACCUM_EMBED_LORA);
    if (WANT("train grad-accum trainable-tokens tied"))
        run_trainer_accum("train grad-accum trainable-tokens tied", METHOD_LORA, false, false, ACCUM_TOKENS);
    if (WANT("train resume lora accum+dropout")) {
        run_trainer_resume("train resume lora accum+dropout", METHOD_LORA, GPU_FP32, 6, 2, 1e-6);
        run_trainer_resume("train resume lora accum+dropout", METHOD_LORA, GPU_BF16, 6, 2, 1e-4);
    }
    if (WANT("train resume adalora allocator")) run_trainer_resume("train resume adalora allocator", METHOD_ADALORA, GPU_FP32, 10, 4, 1e-6);
    if (WANT("train lora dropout")) {
        run_trainer_dropout("train lora dropout", GPU_FP32);
        run_trainer_dropout("train lora dropout", GPU_BF16);
    }
    // A quantized base: nf4 / fp4 / int8, double quantization on and off, GPT-2 and Llama, LoRA / VeRA / AdaLoRA.
    static const QuantCase quants[] = {
        {"quant gpt2-lora-all nf4", GPT2_CFG, GPT2_ALL, METHOD_LORA, QUANT_NF4, true, false, QUANT_OUT_F32, 2, 100},
        {"quant gpt2-lora-all nf4-nodq", GPT2_CFG, GPT2_ALL, METHOD_LORA, QUANT_NF4, false, false, QUANT_OUT_F32, 2, 64},
        {"quant gpt2-lora-all fp4", GPT2_CFG, GPT2_ALL, METHOD_LORA, QUANT_FP4, true, false, QUANT_OUT_F32, 2, 64},
        {"quant gpt2-lora-all int8", GPT2_CFG, GPT2_ALL, METHOD_LORA, QUANT_INT8, false, false, QUANT_OUT_F32, 2, 64},
        {"quant gpt2-adalora-all nf4", GPT2_CFG, GPT2_ALL, METHOD_ADALORA, QUANT_NF4, true, false, QUANT_OUT_F32, 2, 64},
        {"quant llama-lora-all nf4", LLAMA_CFG, LLAMA_ALL, METHOD_LORA, QUANT_NF4, true, false, QUANT_OUT_F32, 2, 100},
        {"quant llama-lora-all fp4-nodq", LLAMA_CFG, LLAMA_ALL, METHOD_LORA, QUANT_FP4, false, false, QUANT_OUT_F32, 2, 64},
        {"quant llama-lora-all int8", LLAMA_CFG, LLAMA_ALL, METHOD_LORA, QUANT_INT8, false, false, QUANT_OUT_F32, 2, 64},
        {"quant llama-lora-qv nf4 out-bf16", LLAMA_CFG, "q_proj,v_proj", METHOD_LORA, QUANT_NF4, true, false, QUANT_OUT_BF16, 2, 64},
        {"quant llama-lora-all fp4 out-f16 recompute", LLAMA_CFG, LLAMA_ALL, METHOD_LORA, QUANT_FP4, true, true, QUANT_OUT_F16, 2, 64},
        {"quant llama-vera-all nf4", LLAMA_CFG, LLAMA_ALL, METHOD_VERA, QUANT_NF4, true, false, QUANT_OUT_F32, 2, 64},
        {"quant llama-adalora-all int8", LLAMA_CFG, LLAMA_ALL, METHOD_ADALORA, QUANT_INT8, false, false, QUANT_OUT_F32, 2, 64},
    };
    for (int p = 0; p < 2; p++)
        for (size_t i = 0; i < sizeof quants / sizeof *quants; i++)
            if (WANT(quants[i].name)) run_quant(&quants[i], p ? GPU_BF16 : GPU_FP32);
    if (WANT("quant refuses full fine-tuning")) run_quant_refuses_full();
    // --recompute layer / mlp against none: LoRA (with dropout), a quantized base, AdaLoRA (its regulariser on), VeRA,
    // DoRA, full fine-tuning, GPT-2 and Llama.
    static const RecomputeCase rcomp[] = {
        {"recompute gpt2-lora-all", GPT2_CFG, GPT2_ALL, METHOD_LORA, QUANT_NONE, 0, 2, 100},
        {"recompute llama-lora-all dropout", LLAMA_CFG, LLAMA_ALL, METHOD_LORA, QUANT_NONE, 0.2f, 2, 64},
        {"recompute llama-lora-qv,down", LLAMA_CFG, "q_proj,v_proj,down_proj", METHOD_LORA, QUANT_NONE, 0, 2, 80},
        {"recompute llama-lora-all nf4", LLAMA_CFG, LLAMA_ALL, METHOD_LORA, QUANT_NF4, 0, 2, 64},
        {"recompute gpt2-lora-all nf4 dropout", GPT2_CFG, GPT2_ALL, METHOD_LORA, QUANT_NF4, 0.2f, 2, 64},
        {"recompute llama-adalora-all", LLAMA_CFG, LLAMA_ALL, METHOD_ADALORA, QUANT_NONE, 0, 2, 64},
        {"recompute llama-adalora-all int8", LLAMA_CFG, LLAMA_ALL, METHOD_ADALORA, QUANT_INT8, 0, 2, 64},
        {"recompute llama-vera-all", LLAMA_CFG, LLAMA_ALL, METHOD_VERA, QUANT_NONE, 0, 2, 64},
        {"recompute gpt2-vera-all fp4", GPT2_CFG, GPT2_ALL, METHOD_VERA, QUANT_FP4, 0, 2, 64},
        {"recompute llama-dora-all", LLAMA_CFG, LLAMA_ALL, METHOD_DORA, QUANT_NONE, 0, 2, 64},
        {"recompute llama-full", LLAMA_CFG, NULL, METHOD_LORA, QUANT_NONE, 0, 2, 64},
    };
    for (int p = 0; p < 2; p++)
        for (size_t i = 0; i < sizeof rcomp / sizeof *rcomp; i++)
            if (WANT(rcomp[i].name)) run_recompute(&rcomp[i], p ? GPU_BF16 : GPU_FP32);
    // The quantization reference cases (tools/quant_reference/make_cases.py: float64 on the dequantized base), when made.
    const char *qroot = getenv("PEFT_QUANT_FIXTURES") ? getenv("PEFT_QUANT_FIXTURES") : "tests/fixtures/quant";
    static const char *qcases[] = {"gpt2-lora-nf4", "gpt2-lora-nf4-nodq", "gpt2-lora-fp4", "gpt2-lora-fp4-nodq", "gpt2-lora-int8",
                                   "llama-lora-nf4", "llama-lora-nf4-nodq", "llama-lora-fp4", "llama-lora-fp4-nodq", "llama-lora-int8"};
    if (WANT("quant reference") && !dir_exists(qroot))
        printf("\n*** SKIPPED: %s not found: the quantization reference cases not run on the GPU ***\n\n", qroot);
    for (int p = 0; p < 2 && WANT("quant reference") && dir_exists(qroot); p++)
        for (size_t i = 0; i < sizeof qcases / sizeof *qcases; i++) run_fixture(qroot, qcases[i], p ? GPU_BF16 : GPU_FP32, false);
    if (WANT("quant train nf4")) {
        run_trainer_quant("quant train nf4", QUANT_NF4, true, GPU_FP32);
        run_trainer_quant("quant train nf4", QUANT_NF4, true, GPU_BF16);
    }
    if (WANT("quant train int8")) run_trainer_quant("quant train int8", QUANT_INT8, false, GPU_FP32);
    if (WANT("encoder refused")) run_encoder_refused();
    if (WANT("train classify lora")) run_trainer_classify("train classify lora", METHOD_LORA);
    if (WANT("train classify adalora")) run_trainer_classify("train classify adalora", METHOD_ADALORA);
    // The encoders' attention (bidirectional, key padding mask): the flash kernels (head_dim 64, 128; bf16), the generic ones
    // (fp32, and head_dim 16 as the tiny reference encoders have), GQA, T not a multiple of 64.
    static const struct { const char *name; int B, T, NH, NKV, HD; } attns[] = {
        {"attn-bidir hd64 GQA T150", 3, 150, 4, 2, 64},
        {"attn-bidir hd128 T100", 3, 100, 2, 2, 128},
        {"attn-bidir hd16 T40", 3, 40, 4, 4, 16},
        {"attn-bidir hd64 T64", 2, 64, 2, 2, 64},
    };
    for (int p = 0; p < 2; p++)
        for (size_t i = 0; i < sizeof attns / sizeof *attns; i++)
            if (WANT(attns[i].name)) run_attn_bidir(attns[i].name, attns[i].B, attns[i].T, attns[i].NH, attns[i].NKV, attns[i].HD, p ? GPU_BF16 : GPU_FP32);
#undef WANT
    trainer_cleanup();
    printf("%d passed, %d failed, %d skipped; peak GPU memory %.1f MiB\n", n_pass, n_fail, n_skip, gpu_peak_bytes() / 1048576.0);
    return n_fail ? 1 : 0;
}
