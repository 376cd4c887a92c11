// test_dora.c: DoRA (src/methods/dora.c). PEFT's formulas written out here in double on tiny models (the
// magnitude's start, the adapted linear's output); gradients against central differences of a loss
// that holds the weight norm at its unperturbed value, as PEFT's detach does; merge == the live
// adapter and unmerge restores the base; save/reload bit for bit under PEFT's names; the config's
// use_dora (and PEFT's refusals); the reference cases when generated (skipped by name until then).
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "check.h"
#include "gguf_export.h"
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0xD0BA;

// A DoRA adapter with random A, B (so the norm moves with them) and magnitudes near the start.
static Model *dora_model(const char *json, const char *targets, float dropout, bool rslora, uint64_t seed) {
    Model *m = test_model_from_json(json, seed);
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_DORA);
    c.r = 3;
    c.alpha = 6;
    c.dropout = dropout;
    c.use_rslora = rslora;
    adapter_config_set_targets(&c, targets);
    int rc = adapters_attach(m, &c, seed);
    adapter_config_free(&c);
    if (rc) { fprintf(stderr, "  attach: %s\n", peft_last_error()); model_free(m); return NULL; }
    AdapterSet *set = m->adapters;
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        for (long j = 0; j < a->A->numel; j++) a->A->w[j] = (float)(test_urand(&rng_state) - 0.5);
        for (long j = 0; j < a->B->numel; j++) a->B->w[j] = (float)(test_urand(&rng_state) - 0.5) * 0.6f;
        for (long j = 0; j < a->magnitude->numel; j++) a->magnitude->w[j] *= (float)(1 + 0.4 * (test_urand(&rng_state) - 0.5));
    }
    return m;
}

// PEFT's get_weight_norm in double: ||W + s B A|| over each output's row of the [out, in] weight.
static void ref_norm(const Adapter *a, double *norm) {
    const Linear *lin = a->lin;
    for (int o = 0; o < lin->out; o++) {
        double ss = 0;
        for (int i = 0; i < lin->in; i++) {
            double v = lin->weight->w[lin->fan_in_fan_out ? (long)i * lin->out + o : (long)o * lin->in + i];
            for (int k = 0; k < a->r; k++) v += (double)a->scaling * a->B->w[(long)o * a->r + k] * a->A->w[(long)k * lin->in + i];
            ss += v * v;
        }
        norm[o] = sqrt(ss);
    }
}

// The magnitude starts at the weight's row norms (B = 0), for Conv1D ([in, out]) and Linear alike.
TEST(dora_magnitude_starts_at_row_norms) {
    const char *jsons[] = {TINY_GPT2_JSON, TINY_LLAMA_JSON};
    for (int k = 0; k < 2; k++) {
        Model *m = test_model_from_json(jsons[k], 4);
        AdapterConfig c;
        adapter_config_defaults(&c, METHOD_DORA);
        adapter_config_set_targets(&c, "all-linear");
        CHECK(adapters_attach(m, &c, 1) == 0);
        adapter_config_free(&c);
        for (int i = 0; i < m->adapters->n; i++) {
            Adapter *a = &m->adapters->adapters[i];
            CHECK(a->magnitude && a->magnitude->ndim == 1 && a->magnitude->numel == a->lin->out);
            double *norm = xmalloc(sizeof(double) * a->lin->out);
            ref_norm(a, norm);  // B is 0 here
            for (int o = 0; o < a->lin->out; o++) CHECK_NEAR(a->magnitude->w[o], norm[o], 1e-5 * norm[o]);
            free(norm);
        }
        model_free(m);
    }
}

// One adapted linear against PEFT's forward written out: base + (g - 1) x W^T + g s x A^T B^T.
TEST(dora_linear_forward_is_peft_formula) {
    const char *jsons[] = {TINY_GPT2_JSON, TINY_LLAMA_JSON};
    for (int k = 0; k < 2; k++) {
        Model *m = dora_model(jsons[k], "all-linear", 0, k == 1, 5);
        CHECK(m);
        for (int li = 0; li < m->adapters->n; li++) {
            Adapter *a = &m->adapters->adapters[li];
            Linear *lin = a->lin;
            int N = 3, in = lin->in, out = lin->out;
            float *x = xmalloc(sizeof(float) * N * in), *y = xmalloc(sizeof(float) * N * out);
            for (int i = 0; i < N * in; i++) x[i] = (float)(test_urand(&rng_state) * 2 - 1);
            linear_forward(m, lin, x, y, N);
            double *norm = xmalloc(sizeof(double) * out);
            ref_norm(a, norm);
            double worst = 0;
            for (int n = 0; n < N; n++)
                for (int o = 0; o < out; o++) {
                    double base = 0, lora = 0;
                    for (int i = 0; i < in; i++)
                        base += (double)x[n * in + i] * lin->weight->w[lin->fan_in_fan_out ? (long)i * out + o : (long)o * in + i];
                    for (int r = 0; r < a->r; r++) {
                        double h = 0;
                        for (int i = 0; i < in; i++) h += (double)x[n * in + i] * a->A->w[(long)r * in + i];
                        lora += h * a->B->w[(long)o * a->r + r];
                    }
                    double g = a->magnitude->w[o] / norm[o], b = lin->bias ? lin->bias->w[o] : 0;
                    double want = base + b + (g - 1) * base + g * lora * a->scaling;
                    double d = fabs(y[n * out + o] - want) / (1e-5 * (1 + fabs(want)));
                    if (d > worst) worst = d;
                }
            free(norm);
            free(x);
            free(y);
            CHECK_MSG(worst <= 1, "%s: %g x the tolerance", lin->module, worst);
        }
        model_free(m);
    }
}

// The finite-difference loss holds every module's norm at its unperturbed value, as PEFT's detach
// does for the gradient: m is scaled by norm(now) / norm0, so m / norm(now) is m / norm0.
typedef struct {
    TestBatch b;
    double **norm0;
} DetachedLoss;

static double detached_loss(Model *m, void *ctx) {
    DetachedLoss *d = ctx;
    AdapterSet *set = m->adapters;
    float **saved = xcalloc(set->n, sizeof(float *));
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        double *now = xmalloc(sizeof(double) * a->lin->out);
        ref_norm(a, now);
        saved[i] = xmalloc(sizeof(float) * a->lin->out);
        memcpy(saved[i], a->magnitude->w, sizeof(float) * a->lin->out);
        for (int o = 0; o < a->lin->out; o++) a->magnitude->w[o] = (float)(a->magnitude->w[o] * now[o] / d->norm0[i][o]);
        free(now);
    }
    double loss = test_batch_loss(m, &d->b);
    for (int i = 0; i < set->n; i++) {
        memcpy(set->adapters[i].magnitude->w, saved[i], sizeof(float) * set->adapters[i].lin->out);
        free(saved[i]);
    }
    free(saved);
    return loss;
}

enum { B = 2, T = 6 };

// The gradients of a random batch (ids, labels [B*T]), which b then holds.
static void batch_gradients(Model *m, int32_t *ids, int32_t *labels, TestBatch *b) {
    test_random_batch(ids, labels, B * T, m->cfg.vocab_size, &rng_state);
    *b = (TestBatch){ids, labels, B, T};
    model_zero_grad(m);
    model_forward(m, ids, labels, B, T);
    model_backward(m);
}

static int gradcheck(const char *json, const char *targets, float dropout, bool rslora) {
    Model *m = dora_model(json, targets, dropout, rslora, 7);
    if (!m) return 0;
    m->training = dropout > 0;
    m->dropout_seed = 3;
    int32_t ids[B * T], labels[B * T];
    DetachedLoss d = {.norm0 = xcalloc(m->adapters->n, sizeof(double *))};
    batch_gradients(m, ids, labels, &d.b);
    for (int i = 0; i < m->adapters->n; i++) {
        d.norm0[i] = xmalloc(sizeof(double) * m->adapters->adapters[i].lin->out);
        ref_norm(&m->adapters->adapters[i], d.norm0[i]);
    }
    int ok = test_gradcheck(m, detached_loss, &d, 1e-3, 1e-2, 1e-4);
    for (int i = 0; i < m->adapters->n; i++) free(d.norm0[i]);
    free(d.norm0);
    model_free(m);
    return ok;
}

TEST(dora_gradcheck_gpt2_conv1d) { CHECK(gradcheck(TINY_GPT2_JSON, "c_attn,c_proj,c_fc", 0, false)); }
TEST(dora_gradcheck_llama_all_linear_rslora) { CHECK(gradcheck(TINY_LLAMA_JSON, "all-linear", 0, true)); }
TEST(dora_gradcheck_dropout) {  // dropout: x' W^T computed from the dropped input, not taken from the base result
    CHECK(gradcheck(TINY_LLAMA_JSON, "q_proj,v_proj,down_proj", 0.25f, false));
    CHECK(gradcheck(TINY_GPT2_JSON, "c_attn,c_fc", 0.25f, false));
}

// Without the detach the norm's own derivative would show: the analytic gradient of A must differ
// from the plain loss's finite differences (so the gradcheck above tests the detach, not nothing).
TEST(dora_norm_is_detached) {
    Model *m = dora_model(TINY_LLAMA_JSON, "q_proj", 0, false, 9);
    CHECK(m);
    int32_t ids[B * T], labels[B * T];
    TestBatch b;
    batch_gradients(m, ids, labels, &b);
    Adapter *a = &m->adapters->adapters[0];
    double eps = 1e-3, worst = 0;
    for (long j = 0; j < a->A->numel; j++) {
        float w = a->A->w[j];
        a->A->w[j] = w + (float)eps;
        double lp = test_batch_loss(m, &b);
        a->A->w[j] = w - (float)eps;
        double lm = test_batch_loss(m, &b);
        a->A->w[j] = w;
        double fd = (lp - lm) / (2 * eps), d = fabs(fd - a->A->grad[j]);
        if (d > worst) worst = d;
    }
    model_free(m);
    CHECK_MSG(worst > 1e-3, "the full derivative equals the detached gradient (worst difference %g)", worst);
}

static float *logits_of(Model *m, const int32_t *ids, int B, int T) {
    model_forward(m, ids, NULL, B, T);
    return test_copy_logits(m, (long)B * T * m->cfg.vocab_size);
}

static double rel_diff(const float *a, const float *b, long n) {
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) { num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]); den += (double)b[i] * b[i]; }
    return sqrt(num / (den > 0 ? den : 1));
}

// Merged weights give the live adapter's logits; unmerge restores the base (PEFT's cached norm).
TEST(dora_merge_equals_live_and_unmerge_restores) {
    const char *jsons[] = {TINY_GPT2_JSON, TINY_LLAMA_JSON};
    for (int k = 0; k < 2; k++) {
        Model *m = dora_model(jsons[k], "all-linear", 0.1f, false, 11), *base = test_model_from_json(jsons[k], 11);
        CHECK(m && base);
        int32_t ids[B * T];
        test_random_batch(ids, NULL, B * T, m->cfg.vocab_size, &rng_state);
        long n = (long)B * T * m->cfg.vocab_size;
        float *live = logits_of(m, ids, B, T);
        adapters_merge(m);
        float *merged = logits_of(m, ids, B, T);
        double d = rel_diff(merged, live, n);
        CHECK_MSG(d < 1e-5, "merged vs live logits: relative difference %g", d);
        adapters_unmerge(m);
        for (int i = 0; i < m->n_linears; i++) {
            const Param *w = m->linears[i].weight, *w0 = base->linears[i].weight;
            CHECK_MSG(rel_diff(w->w, w0->w, w->numel) < 1e-6, "%s not restored", w->name);
        }
        float *again = logits_of(m, ids, B, T);
        CHECK(rel_diff(again, live, n) < 1e-6);
        model_free(base);
        free(live);
        free(merged);
        free(again);
        model_free(m);
    }
}

// Saved under PEFT's names (lora_magnitude_vector, 1-D [out]) with use_dora in a LoRA config;
// reloaded bit for bit, the same logits.
TEST(dora_save_reload_bit_for_bit) {
    Model *m = dora_model(TINY_GPT2_JSON, "c_attn,c_fc", 0, true, 13);
    CHECK(m);
    const char *dir = test_tmpdir();
    CHECK_MSG(adapters_save(m, dir) == 0, "%s", peft_last_error());
    char *cfg_path = path_join(dir, "adapter_config.json"), *st_path = path_join(dir, "adapter_model.safetensors");
    char *text = read_file(cfg_path, NULL);
    cJSON *j = cJSON_Parse(text);
    CHECK(j && cJSON_IsTrue(cJSON_GetObjectItem(j, "use_dora")) && cJSON_IsTrue(cJSON_GetObjectItem(j, "use_rslora")));
    const cJSON *pt = cJSON_GetObjectItem(j, "peft_type");
    CHECK(cJSON_IsString(pt) && !strcmp(pt->valuestring, lora_method.peft_type));
    cJSON_Delete(j);
    free(text);
    SafeTensors st = {0};
    CHECK(st_open(&st, st_path) == 0);
    const StTensor *t = st_find(&st, "base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector");
    CHECK(t && t->ndim == 1 && t->shape[0] == m->linears[0].out);
    CHECK(st.n == 3 * m->adapters->n);
    st_close(&st);
    Model *m2 = test_model_from_json(TINY_GPT2_JSON, 13);
    CHECK_MSG(adapters_load(m2, dir) == 0, "%s", peft_last_error());
    CHECK(m2->adapters->cfg.type == METHOD_DORA && m2->adapters->cfg.use_rslora);
    CHECK(m2->adapters->n_params == m->adapters->n_params);
    for (int i = 0; i < m->adapters->n_params; i++) {
        Param *a = m->adapters->params[i], *b = m2->adapters->params[i];
        CHECK(!strcmp(a->name, b->name) && a->numel == b->numel && !memcmp(a->w, b->w, sizeof(float) * a->numel));
    }
    int32_t ids[B * T];
    test_random_batch(ids, NULL, B * T, m->cfg.vocab_size, &rng_state);
    float *l1 = logits_of(m, ids, B, T), *l2 = logits_of(m2, ids, B, T);
    CHECK(!memcmp(l1, l2, sizeof(float) * B * T * m->cfg.vocab_size));
    free(l1);
    free(l2);
    free(cfg_path);
    free(st_path);
    model_free(m);
    model_free(m2);
}

// Inference reuses the norm while A and B are unchanged and recomputes it when they change.
TEST(dora_inference_norm_follows_the_tensors) {
    Model *m = dora_model(TINY_LLAMA_JSON, "q_proj,o_proj", 0, false, 15);
    CHECK(m);
    int32_t ids[B * T];
    test_random_batch(ids, NULL, B * T, m->cfg.vocab_size, &rng_state);
    long n = (long)B * T * m->cfg.vocab_size;
    float *l1 = logits_of(m, ids, B, T);
    Adapter *a = &m->adapters->adapters[0];
    for (long j = 0; j < a->B->numel; j++) a->B->w[j] *= 1.5f;
    float *l2 = logits_of(m, ids, B, T);
    adapters_merge(m);  // merge computes the norm afresh: the live forward must have too
    float *l3 = logits_of(m, ids, B, T);
    CHECK(rel_diff(l2, l1, n) > 1e-4);
    CHECK_MSG(rel_diff(l3, l2, n) < 1e-5, "%g", rel_diff(l3, l2, n));
    free(l1);
    free(l2);
    free(l3);
    model_free(m);
}

// use_dora in a LoRA file is DoRA; PEFT's refusals (AdaLoRA) are ours; LORA still names LoRA.
TEST(dora_config_use_dora) {
    AdapterConfig c;
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q\"],\"use_dora\":true}", "a.json") == 0);
    CHECK(c.type == METHOD_DORA);
    adapter_config_free(&c);
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q\"],\"use_dora\":false}", "a.json") == 0);
    CHECK(c.type == METHOD_LORA);
    adapter_config_free(&c);
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q\"],\"use_dora\":1}", "a.json") != 0);
    CHECK(strstr(peft_last_error(), "use_dora"));
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"ADALORA\",\"init_r\":4,\"target_modules\":[\"q\"],\"use_dora\":true}", "a.json") != 0);
    CHECK(strstr(peft_last_error(), "use_dora") && strstr(peft_last_error(), "AdaLoRA does not support DoRA"));
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q\"],\"use_dora\":true,\"lora_bias\":true}", "a.json") != 0);
    // LoRA's init_lora_weights is read for DoRA too: one that would decompose the base is refused by name.
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q\"],\"use_dora\":true,\"init_lora_weights\":\"pissa\"}", "a.json") != 0);
    CHECK(strstr(peft_last_error(), "pissa") && strstr(peft_last_error(), "use_dora"));
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q\"],\"use_dora\":true,\"init_lora_weights\":\"kaiming\"}", "a.json") != 0);
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q\"],\"use_dora\":true,\"init_lora_weights\":\"gaussian\"}", "a.json") == 0);
    adapter_config_free(&c);
    MethodId id;
    CHECK(method_from_peft_type(lora_method.peft_type, &id) == 0 && id == METHOD_LORA);
    CHECK(method_parse("dora", &id) == 0 && id == METHOD_DORA);
}

// llama.cpp's LoRA cannot hold DoRA: export refuses by name rather than drop the magnitudes.
TEST(dora_gguf_export_refused) {
    Model *m = dora_model(TINY_LLAMA_JSON, "q_proj", 0, false, 17);
    CHECK(m);
    char *path = path_join(test_tmpdir(), "a.gguf");
    CHECK(gguf_export_adapter(m, "x", GGUF_OUT_F32, path) != 0);
    CHECK_MSG(strstr(peft_last_error(), "DoRA") && strstr(peft_last_error(), "--merge"), "%s", peft_last_error());
    free(path);
    model_free(m);
}

// The generated reference cases (tools/reference_cases): skipped by name until they exist.
TEST(dora_reference_cases) {
    const char *cases[] = {"gpt2-lora-dora", "llama-lora-dora", "llama-lora-dora-qv-rslora"};
    const char *root = fixtures_dir();
    int ran = 0;
    for (int i = 0; i < 3; i++) {
        char *dir = root ? path_join(root, cases[i]) : NULL;
        if (!dir || !dir_exists(dir)) { printf("  SKIP %s: not generated yet (tools/reference_cases)\n", cases[i]); free(dir); continue; }
        CheckResult r;
        check_case(dir, &r);
        free(dir);
        printf("  %s %s (max rel err %.3g) %s\n", r.status == CHECK_PASS ? "PASS" : "FAIL", r.name, r.max_rel_err, r.detail);
        CHECK_MSG(r.status == CHECK_PASS, "%s: %s", cases[i], r.detail);
        ran++;
    }
    if (!ran) SKIP("gpt2-lora-dora, llama-lora-dora, llama-lora-dora-qv-rslora not generated yet");
}
