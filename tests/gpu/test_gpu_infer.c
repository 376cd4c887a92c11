// test_gpu_infer.c: cached inference on the GPU (src/cuda/gpu_infer.cu) against the CPU's
// kv_forward, run by `make gpu-test`. Random GPT-2, Llama (GQA) and Mistral (sliding window)
// models; every call mixes rows of a LoRA, a VeRA and an AdaLoRA set and the base (prefills of
// different lengths, then decode steps, a slot copied as beam search does). fp32: logits to
// 1e-4 of their scale; bf16: cosine similarity >= 0.999. Then generate() (greedy and beam
// search) on the GPU in fp32 equals the CPU's tokens. The same on quantized bases (nf4 / fp4 / int8). Without
// a GPU: a loud SKIPPED line, exit 0.
#include "adapter.h"
#include "config.h"
#include "cuda/gpu.h"
#include "generate.h"
#include "model.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_pass, n_fail;

static void report(bool ok, const char *name, const char *detail) {
    printf("%-4s %-44s %s\n", ok ? "PASS" : "FAIL", name, detail);
    fflush(stdout);
    if (ok) n_pass++;
    else n_fail++;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double urand(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) * 0x1.0p-53;
}

// A detached set with every tensor random (a fresh LoRA's B is zero: it would test nothing).
static AdapterSet *random_set(Model *m, MethodId type, const char *targets, uint64_t seed) {
    AdapterConfig ac;
    adapter_config_defaults(&ac, type);
    if (type == METHOD_LORA) { ac.r = 8; ac.alpha = 16; }
    if (type == METHOD_VERA) ac.r = 32;
    if (type == METHOD_ADALORA) { ac.init_r = ac.r = 6; ac.target_r = 4; ac.total_step = 100; }
    ac.fan_in_fan_out = m->cfg.arch == ARCH_GPT2;
    adapter_config_set_targets(&ac, targets);
    AdapterSet *s = adapters_new_detached(m, &ac, seed);
    adapter_config_free(&ac);
    if (!s) return NULL;
    for (int i = 0; i < s->n; i++) {
        Adapter *a = &s->adapters[i];
        Param *ps[] = {a->B, a->E, a->lambda_b, a->lambda_d};
        for (size_t k = 0; k < sizeof ps / sizeof *ps; k++)
            if (ps[k])
                for (long j = 0; j < ps[k]->numel; j++) ps[k]->w[j] = (float)(urand() - 0.5) * 0.2f;
    }
    return s;
}

enum { SLOTS = 4, MAX_LEN = 96, STEPS = 6 };

// The same script of calls on whichever device m is on; logits of every call appended to out.
static long run_script(Model *m, AdapterSet **sets, float *out) {
    int V = m->cfg.vocab_size;
    KVCache *kv = kv_cache_new(m, SLOTS, MAX_LEN);
    if (!kv) return -1;
    uint64_t saved = rng;
    rng = 77;
    long n_out = 0;
    int prefill[SLOTS] = {7, 33, 3, 12};
    int32_t ids[64];
    AdapterSet *row_sets[64];
    KVRow rows[SLOTS];
    for (int step = 0; step <= STEPS; step++) {
        int N = 0;
        for (int s = 0; s < SLOTS; s++) {
            int n = step == 0 ? prefill[s] : 1;
            rows[s] = (KVRow){s, n};
            for (int j = 0; j < n; j++, N++) {
                ids[N] = (int32_t)(urand() * V);
                row_sets[N] = sets[s];
            }
        }
        if (step == 3) {  // beam search's move: slot 2 becomes a copy of slot 0 (and its adapter)
            kv_cache_copy(kv, 2, 0);
            for (int i = 0, at = 0; i < SLOTS; at += rows[i].n, i++)
                if (i == 2) { ids[at] = ids[0]; row_sets[at] = sets[0]; }
        }
        m->row_adapters = row_sets;
        bool all = step == 0;
        int rc = kv_forward(m, kv, rows, SLOTS, ids, out + n_out * V, all);
        m->row_adapters = NULL;
        if (rc) { kv_cache_free(kv); rng = saved; return -1; }
        n_out += all ? N : SLOTS;
    }
    kv_cache_free(kv);
    rng = saved;
    return n_out;
}

// Every block linear of m quantized (q: QUANT_NONE leaves m as it is).
static Model *quantized(Model *m, QuantType q) {
    for (int i = 0; q && i < m->n_linears; i++)
        if (model_quantize_linear(m, &m->linears[i], q, true)) {
            model_free(m);
            return NULL;
        }
    return m;
}

static void test_kv_forward(const char *name, const char *config, const char *targets, QuantType q) {
    char label[128], detail[256];
    ModelConfig cfg;
    if (config_parse(&cfg, config, name)) { report(false, name, peft_last_error()); return; }
    Model *m = quantized(model_create_random(&cfg, 5), q);
    if (!m) { report(false, name, peft_last_error()); return; }
    AdapterSet *lora = random_set(m, METHOD_LORA, targets, 1), *vera = random_set(m, METHOD_VERA, targets, 2),
               *ada = random_set(m, METHOD_ADALORA, targets, 3);
    AdapterSet *sets[SLOTS] = {lora, vera, NULL, ada};
    size_t cap = (size_t)(64 * (STEPS + 2)) * cfg.vocab_size;
    float *ref = xmalloc(sizeof(float) * cap), *got = xmalloc(sizeof(float) * cap);
    long n_ref = run_script(m, sets, ref);
    for (int p = 0; p < 2; p++) {
        GpuPrecision prec = p ? GPU_BF16 : GPU_FP32;
        snprintf(label, sizeof label, "%s [%s]", name, p ? "bf16" : "fp32");
        if (n_ref < 0 || gpu_inference_attach(m, prec)) { report(false, label, peft_last_error()); continue; }
        long n_got = run_script(m, sets, got);
        gpu_inference_detach(m);
        if (n_got != n_ref) { report(false, label, n_got < 0 ? peft_last_error() : "row count differs"); continue; }
        long n = n_ref * cfg.vocab_size;
        double scale = 0, err = 0, ab = 0, aa = 0, bb = 0;
        for (long i = 0; i < n; i++) {
            scale = fmax(scale, fabs(ref[i]));
            err = fmax(err, fabs((double)got[i] - ref[i]));
            ab += (double)got[i] * ref[i]; aa += (double)got[i] * got[i]; bb += (double)ref[i] * ref[i];
        }
        double rel = err / scale, cosv = ab / sqrt(aa * bb);
        bool ok = p ? cosv >= 0.999 : rel <= 1e-4;
        snprintf(detail, sizeof detail, "%ld logit rows: max err %.2e of scale %.2f (rel %.1e), cosine %.7f", n_ref, err, scale, rel, cosv);
        report(ok, label, detail);
    }
    free(ref);
    free(got);
    adapter_set_free(lora);
    adapter_set_free(vera);
    adapter_set_free(ada);
    model_free(m);
}

// generate() with a live attached adapter: greedy and beam search, the GPU (fp32) against the CPU.
static void test_generate(const char *name, const char *config, const char *targets, QuantType q) {
    char label[128], detail[256];
    ModelConfig cfg;
    if (config_parse(&cfg, config, name)) { report(false, name, peft_last_error()); return; }
    Model *m = quantized(model_create_random(&cfg, 9), q);
    if (!m) { report(false, name, peft_last_error()); return; }
    AdapterConfig ac;
    adapter_config_defaults(&ac, METHOD_LORA);
    ac.r = 4;
    ac.fan_in_fan_out = cfg.arch == ARCH_GPT2;
    adapter_config_set_targets(&ac, targets);
    adapters_attach(m, &ac, 3);
    adapter_config_free(&ac);
    for (int i = 0; i < m->adapters->n; i++)
        for (long j = 0; j < m->adapters->adapters[i].B->numel; j++) m->adapters->adapters[i].B->w[j] = (float)(urand() - 0.5) * 0.2f;
    int32_t p0[] = {1, 2, 3, 4, 5}, p1[] = {9, 8}, p2[] = {100, 200, 300, 400, 500, 600, 700};
    const int32_t *prompts[] = {p0, p1, p2};
    int lens[] = {5, 2, 7};
    for (int beams = 1; beams <= 3; beams += 2) {
        GenParams gp;
        gen_params_default(&gp);
        gp.max_new_tokens = 12;
        gp.eos_id = GEN_EOS_NONE;
        gp.num_beams = beams;
        GenResult cpu[3] = {0}, gpu[3] = {0};
        snprintf(label, sizeof label, "%s generate %s", name, beams > 1 ? "beam 3" : "greedy");
        int rc = generate(m, NULL, prompts, lens, 3, &gp, NULL, NULL, cpu);
        if (!rc) rc = gpu_inference_attach(m, GPU_FP32);
        if (!rc) rc = generate(m, NULL, prompts, lens, 3, &gp, NULL, NULL, gpu);
        gpu_inference_detach(m);
        int same = 0, total = 0;
        for (int i = 0; i < 3 && !rc; i++)
            for (int j = 0; j < cpu[i].n_ids; j++, total++) same += j < gpu[i].n_ids && cpu[i].ids[j] == gpu[i].ids[j];
        snprintf(detail, sizeof detail, "%s%d of %d tokens equal", rc ? peft_last_error() : "", same, total);
        report(!rc && same == total && total > 0, label, detail);
        for (int i = 0; i < 3; i++) { gen_result_free(&cpu[i]); gen_result_free(&gpu[i]); }
    }
    model_free(m);
}

// ---- tokens chosen on the device (gpu_kv_forward_next), CUDA graphs of the decode step ----

// The host's kept set and probabilities of gen_sample's warpers for one row (doubles): prob[V] (0: dropped).
static void expected_probs(const float *x, int V, const GpuSampling *s, double *prob) {
    float *val = xmalloc(sizeof(float) * V);
    int *idx = xmalloc(sizeof(int) * V);
    for (int i = 0; i < V; i++) { val[i] = x[i] * (1.0f / s->temperature); idx[i] = i; }
    for (int i = 1; i < V; i++)  // descending, ties by id (insertion sort: V is small here)
        for (int j = i; j > 0 && (val[idx[j - 1]] < val[idx[j]] || (val[idx[j - 1]] == val[idx[j]] && idx[j - 1] > idx[j])); j--) {
            int t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t;
        }
    int n = V;
    if (s->top_k > 0 && s->top_k < V) {
        float kth = val[idx[s->top_k - 1]];
        while (n > 0 && val[idx[n - 1]] < kth) n--;
    }
    double maxv = val[idx[0]], total = 0;
    for (int j = 0; j < n; j++) total += exp(val[idx[j]] - maxv);
    if (s->top_p < 1.0f) {
        double before = 0;
        int keep = 0;
        while (keep < n && (keep == 0 || before < s->top_p * total)) before += exp(val[idx[keep++]] - maxv);
        n = keep;
    }
    memset(prob, 0, sizeof(double) * V);
    double kept = 0;
    for (int j = 0; j < n; j++) kept += (prob[idx[j]] = exp(val[idx[j]] - maxv));
    for (int i = 0; i < V; i++) prob[i] /= kept;
    free(val);
    free(idx);
}

// The device sampler on one row of logits drawn R times (R positions): every token in the host's
// kept set, the draws' total variation from the host's probabilities within 1.5 times its expected
// value for R fair draws (plus 0.005); greedy (temperature 0, top_k 1) is gen_argmax.
static void test_sampler(const char *name, float spread, float step, GpuSampling s) {
    enum { V = 1000, R = 16384 };
    char detail[256];
    float *x = xmalloc(sizeof(float) * (size_t)R * V);
    int *pos = xmalloc(sizeof(int) * R);
    int32_t *got = xmalloc(sizeof(int32_t) * R);
    double *prob = xmalloc(sizeof(double) * V), *freq = xcalloc(V, sizeof(double));
    uint64_t saved = rng;
    rng = 1234;
    for (int i = 0; i < V; i++) {  // roughly normal scores, rounded to `step` when set (ties)
        float v = (float)((urand() + urand() + urand() - 1.5) * spread);
        x[i] = step > 0 ? roundf(v / step) * step : v;
    }
    rng = saved;
    for (int r = 0; r < R; r++) {
        memcpy(x + (size_t)r * V, x, sizeof(float) * V);
        pos[r] = 17 + r;
    }
    int rc = gpu_sample_logits(x, R, V, pos, &s, got);
    bool greedy = !(s.temperature > 0) || s.top_k == 1;
    int outside = 0;
    double tv = 0, tv_fair = 0;
    if (!rc) {
        if (greedy) {
            int want = gen_argmax(x, V);
            for (int r = 0; r < R; r++) outside += got[r] != want;
        } else {
            expected_probs(x, V, &s, prob);
            for (int r = 0; r < R; r++) {
                if (got[r] < 0 || got[r] >= V || prob[got[r]] == 0) { outside++; continue; }
                freq[got[r]] += 1.0 / R;
            }
            for (int i = 0; i < V; i++) {
                tv += 0.5 * fabs(freq[i] - prob[i]);
                tv_fair += 0.5 * sqrt(2 * prob[i] * (1 - prob[i]) / (M_PI * R));  // E|freq - prob| of a fair sampler
            }
        }
    }
    snprintf(detail, sizeof detail, "%s%d of %d draws outside the host's choice, total variation %.4f (fair: %.4f)", rc ? peft_last_error() : "",
             outside, R, tv, tv_fair);
    report(!rc && outside == 0 && tv <= 1.5 * tv_fair + 0.005, name, detail);
    free(x); free(pos); free(got); free(prob); free(freq);
}

// Greedy decoding on the GPU: kv_forward_greedy (argmax on the device, CUDA graphs from the second decode
// step) gives the argmax of kv_forward's logits (the host path) at every step, fp32 and bf16.
static void test_device_argmax(const char *name, const char *config) {
    char label[128], detail[256];
    ModelConfig cfg;
    if (config_parse(&cfg, config, name)) { report(false, name, peft_last_error()); return; }
    Model *m = model_create_random(&cfg, 11);
    if (!m) { report(false, name, peft_last_error()); return; }
    int V = cfg.vocab_size;
    for (int p = 0; p < 2; p++) {
        snprintf(label, sizeof label, "%s [%s]", name, p ? "bf16" : "fp32");
        if (gpu_inference_attach(m, p ? GPU_BF16 : GPU_FP32)) { report(false, label, peft_last_error()); continue; }
        KVCache *a = kv_cache_new(m, SLOTS, MAX_LEN), *b = kv_cache_new(m, SLOTS, MAX_LEN);
        float *logits = xmalloc(sizeof(float) * (size_t)64 * V);
        int32_t ids[64], next[SLOTS];
        KVRow rows[SLOTS];
        int prefill[SLOTS] = {5, 9, 2, 13}, N = 0, same = 0, total = 0, rc = a && b ? 0 : -1;
        for (int s = 0; s < SLOTS; s++) {
            rows[s] = (KVRow){s, prefill[s]};
            for (int j = 0; j < prefill[s]; j++) ids[N++] = (int32_t)((s * 37 + j * 11) % V);
        }
        for (int step = 0; step < 12 && !rc; step++) {
            if ((rc = kv_forward(m, a, rows, SLOTS, ids, logits, false)) || (rc = kv_forward_greedy(m, b, rows, SLOTS, ids, next))) break;
            for (int s = 0; s < SLOTS; s++, total++) {
                int want = gen_argmax(logits + (size_t)s * V, V);
                same += next[s] == want;
                ids[s] = want;  // both caches go on with the host's token
                rows[s] = (KVRow){s, 1};
            }
        }
        snprintf(detail, sizeof detail, "%s%d of %d tokens equal", rc ? peft_last_error() : "", same, total);
        report(!rc && same == total && total > 0, label, detail);
        free(logits);
        kv_cache_free(a);
        kv_cache_free(b);
        gpu_inference_detach(m);
    }
    model_free(m);
}

// generate() on the GPU with CUDA graphs and without (PEFT_GPU_GRAPHS=0): the same tokens, greedy and
// sampled (temperature, top-k, top-p on the device); a sampled run repeats itself for its seed, and
// another seed gives other tokens. q: a quantized base (its dequantization kernels in the graph).
static void test_graphs(const char *name, const char *config, QuantType q) {
    char label[128], detail[256];
    ModelConfig cfg;
    if (config_parse(&cfg, config, name)) { report(false, name, peft_last_error()); return; }
    Model *m = quantized(model_create_random(&cfg, 13), q);
    if (!m) { report(false, name, peft_last_error()); return; }
    int32_t p0[] = {1, 2, 3, 4, 5}, p1[] = {9, 8}, p2[] = {100, 200, 300, 400, 500, 600, 700};
    const int32_t *prompts[] = {p0, p1, p2};
    int lens[] = {5, 2, 7};
    for (int prec = 0; prec < 2; prec++)
        for (int sample = 0; sample < 2; sample++) {
            GenParams gp;
            gen_params_default(&gp);
            gp.max_new_tokens = 20;
            gp.eos_id = GEN_EOS_NONE;
            if (sample) { gp.temperature = 1.5f; gp.top_k = 40; gp.top_p = 0.95f; gp.seed = 7; }
            snprintf(label, sizeof label, "%s graphs %s [%s]", name, sample ? "sampled" : "greedy", prec ? "bf16" : "fp32");
            GenResult r[4][3] = {{{0}}};
            int rc = gpu_inference_attach(m, prec ? GPU_BF16 : GPU_FP32);
            for (int run = 0; run < 4 && !rc; run++) {  // graphs, no graphs, graphs again, another seed
                setenv("PEFT_GPU_GRAPHS", run == 1 ? "0" : "1", 1);
                GenParams q = gp;
                if (run == 3) q.seed = 8;
                rc = generate(m, NULL, prompts, lens, 3, &q, NULL, NULL, r[run]);
            }
            unsetenv("PEFT_GPU_GRAPHS");
            gpu_inference_detach(m);
            int same = 0, again = 0, other = 0, total = 0, bad = 0;
            for (int i = 0; i < 3 && !rc; i++)
                for (int j = 0; j < r[0][i].n_ids; j++, total++) {
                    same += j < r[1][i].n_ids && r[0][i].ids[j] == r[1][i].ids[j];
                    again += j < r[2][i].n_ids && r[0][i].ids[j] == r[2][i].ids[j];
                    other += j < r[3][i].n_ids && r[0][i].ids[j] == r[3][i].ids[j];
                    bad += r[0][i].ids[j] < 0 || r[0][i].ids[j] >= cfg.vocab_size;
                }
            snprintf(detail, sizeof detail, "%s%d of %d tokens equal without graphs, %d on a rerun, %d with another seed", rc ? peft_last_error() : "",
                     same, total, again, other);
            bool ok = !rc && total == 60 && same == total && again == total && !bad && (sample ? other < total : other == total);
            report(ok, label, detail);
            for (int k = 0; k < 4; k++)
                for (int i = 0; i < 3; i++) gen_result_free(&r[k][i]);
        }
    model_free(m);
}

#define GPT2_CFG "{\"model_type\":\"gpt2\",\"vocab_size\":1000,\"n_embd\":128,\"n_layer\":2,\"n_head\":2,\"n_positions\":256}"
#define LLAMA_CFG "{\"model_type\":\"llama\",\"vocab_size\":1000,\"hidden_size\":256,\"intermediate_size\":384,\"num_hidden_layers\":2," \
                  "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"max_position_embeddings\":512,\"rms_norm_eps\":1e-5}"
#define MISTRAL_CFG "{\"model_type\":\"mistral\",\"vocab_size\":1000,\"hidden_size\":256,\"intermediate_size\":384,\"num_hidden_layers\":2," \
                    "\"num_attention_heads\":4,\"num_key_value_heads\":1,\"max_position_embeddings\":512,\"sliding_window\":20}"

int main(void) {
    char why[512];
    if (!gpu_available(why, sizeof why)) {
        printf("\n*** SKIPPED: %s: GPU inference tests not run ***\n\n", why);
        return 0;
    }
    test_kv_forward("infer gpt2 lora+vera+adalora all", GPT2_CFG, "c_attn,c_proj,c_fc", QUANT_NONE);
    test_kv_forward("infer gpt2 c_attn only", GPT2_CFG, "c_attn", QUANT_NONE);
    test_kv_forward("infer llama GQA all-linear", LLAMA_CFG, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", QUANT_NONE);
    test_kv_forward("infer llama q,v", LLAMA_CFG, "q_proj,v_proj", QUANT_NONE);
    test_kv_forward("infer mistral window 20 all-linear", MISTRAL_CFG, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", QUANT_NONE);
    test_generate("gpt2", GPT2_CFG, "c_attn", QUANT_NONE);
    test_generate("llama", LLAMA_CFG, "q_proj,v_proj", QUANT_NONE);
    // A quantized base (--quantize): the upload and the dequantization scratch shared with training.
    test_kv_forward("infer quant nf4 gpt2 lora+vera+adalora all", GPT2_CFG, "c_attn,c_proj,c_fc", QUANT_NF4);
    test_kv_forward("infer quant int8 llama GQA all-linear", LLAMA_CFG, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", QUANT_INT8);
    test_generate("quant fp4 gpt2", GPT2_CFG, "c_attn", QUANT_FP4);
    test_generate("quant nf4 llama", LLAMA_CFG, "q_proj,v_proj", QUANT_NF4);
    // Tokens chosen on the device, CUDA graphs of the decode step.
    test_sampler("sample greedy (temperature 0)", 3.0f, 0, (GpuSampling){0, 0, 1.0f, 1});
    test_sampler("sample top_k 1", 3.0f, 0, (GpuSampling){0.7f, 1, 1.0f, 1});
    test_sampler("sample temperature 0.8", 3.0f, 0, (GpuSampling){0.8f, 0, 1.0f, 2});
    test_sampler("sample top_k 50", 3.0f, 0, (GpuSampling){0.8f, 50, 1.0f, 3});
    test_sampler("sample top_p 0.9", 3.0f, 0, (GpuSampling){0.8f, 0, 0.9f, 4});
    test_sampler("sample top_k 50 top_p 0.9 temperature 1.3", 3.0f, 0, (GpuSampling){1.3f, 50, 0.9f, 5});
    test_sampler("sample ties: top_k 20 top_p 0.5", 3.0f, 0.5f, (GpuSampling){1.0f, 20, 0.5f, 6});
    test_sampler("sample ties: top_p 0.3", 4.0f, 1.0f, (GpuSampling){1.0f, 0, 0.3f, 7});
    test_device_argmax("device argmax = host argmax gpt2", GPT2_CFG);
    test_device_argmax("device argmax = host argmax llama", LLAMA_CFG);
    test_graphs("gpt2", GPT2_CFG, QUANT_NONE);
    test_graphs("llama", LLAMA_CFG, QUANT_NONE);
    test_graphs("quant nf4 llama", LLAMA_CFG, QUANT_NF4);
    printf("%d passed, %d failed, 0 skipped\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
