#include "helpers.h"
#include "test.h"
#include "adapter.h"
#include "check.h"
#include "byte_tokenizer.h"
#include "config.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const TINY_GPT2_JSON =
    "{\"model_type\":\"gpt2\",\"vocab_size\":40,\"n_embd\":16,\"n_head\":2,\"n_layer\":2,\"n_positions\":16,"
    "\"layer_norm_epsilon\":1e-5}";
const char *const TINY_LLAMA_JSON =
    "{\"model_type\":\"llama\",\"vocab_size\":40,\"hidden_size\":16,\"intermediate_size\":24,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"num_hidden_layers\":2,\"max_position_embeddings\":16,\"rms_norm_eps\":1e-5,"
    "\"hidden_act\":\"silu\",\"tie_word_embeddings\":false}";

double test_urand(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (z >> 11) * 0x1.0p-53;
}

Model *test_model_from_json(const char *json, uint64_t seed) {
    ModelConfig mc;
    if (config_parse(&mc, json, "tiny")) return NULL;
    Model *m = model_create_random(&mc, seed);
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].ndim == 2)
            for (long j = 0; j < m->params[i].numel; j++) m->params[i].w[j] *= 10.0f;
    return m;
}

// A 2-layer GPT-2 (C = 32, vocab 257, 256 positions) with the byte tokenizer, made once.
const char *test_tiny_model(void) {
    static char dir[512];
    if (dir[0]) return dir;
    snprintf(dir, sizeof dir, "%s", test_tmpdir());
    static const char *json = "{\"model_type\":\"gpt2\",\"vocab_size\":257,\"n_embd\":32,\"n_head\":2,\"n_layer\":2,"
                              "\"n_positions\":256,\"layer_norm_epsilon\":1e-5,\"bos_token_id\":256,\"eos_token_id\":256}";
    ModelConfig cfg;
    if (config_parse(&cfg, json, "tiny") != 0) { fprintf(stderr, "tiny config: %s\n", peft_last_error()); abort(); }
    Model *m = model_create_random(&cfg, 7);
    // Tied embeddings of std 0.02 bound every logit by |ln_f(x)| |wte_i| ~ 0.6, which no adapter
    // can change: 10x larger ones let LoRA lower the loss the way it does on a real model.
    for (long i = 0; i < m->wte->numel; i++) m->wte->w[i] *= 10;
    if (model_save(m, dir) || byte_tokenizer_write(dir)) { fprintf(stderr, "tiny model: %s\n", peft_last_error()); abort(); }
    model_free(m);
    return dir;
}

void test_set_adapter_key(const char *dir, const char *key, const char *json_value) {
    char *path = path_join(dir, "adapter_config.json"), *text = read_file(path, NULL);
    cJSON *j = cJSON_Parse(text), *v = cJSON_Parse(json_value);
    if (!j || !v) { fprintf(stderr, "test_set_adapter_key: %s: bad JSON\n", path); abort(); }
    cJSON_DeleteItemFromObjectCaseSensitive(j, key);
    cJSON_AddItemToObject(j, key, v);
    char *out = cJSON_Print(j);
    write_file_atomic(path, out, strlen(out));
    free(out);
    cJSON_Delete(j);
    free(text);
    free(path);
}

void test_random_batch(int32_t *ids, int32_t *labels, int n, int V, uint64_t *state) {
    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t)(test_urand(state) * V);
        if (labels) labels[i] = ids[i];
    }
    if (labels) labels[0] = -100;
}

float *test_copy_logits(Model *m, long n) {
    float *a = xmalloc(sizeof(float) * n);
    memcpy(a, m->act.logits, sizeof(float) * n);
    return a;
}

double test_batch_loss(Model *m, void *batch) {
    const TestBatch *b = batch;
    return model_forward(m, b->ids, b->labels, b->B, b->T);
}

// The central difference (f(w0 + eps d) - f(w0 - eps d)) / 2 eps of f along d; p ends at w0.
static double central_difference(Model *m, Param *p, const float *w0, const float *d, double eps, TestLossFn f, void *ctx) {
    double l[2];
    for (int side = 0; side < 2; side++) {
        float step = (float)(side ? -eps : eps);
        for (long k = 0; k < p->numel; k++) p->w[k] = w0[k] + step * d[k];
        l[side] = f(m, ctx);
    }
    memcpy(p->w, w0, sizeof(float) * p->numel);
    return (l[0] - l[1]) / (2 * eps);
}

int test_gradcheck(Model *m, TestLossFn f, void *ctx, double eps, double rtol, double atol) {
    Param **params;
    int n = model_trainable(m, &params);
    uint64_t rng = 0x9E3779B9;  // the same directions every run
    int ok = 1;
    for (int i = 0; i < n; i++) {
        Param *p = params[i];
        if (p->numel == 0) continue;
        float *w0 = xmalloc(sizeof(float) * p->numel), *d = xmalloc(sizeof(float) * p->numel);
        memcpy(w0, p->w, sizeof(float) * p->numel);
        double an[TEST_GRAD_DIRS], fd[TEST_GRAD_DIRS], err = 0, size = 0;
        for (int k = 0; k < TEST_GRAD_DIRS; k++) {
            an[k] = 0;
            for (long j = 0; j < p->numel; j++) {
                d[j] = (float)(2 * test_urand(&rng) - 1);
                an[k] += (double)p->grad[j] * d[j];
            }
            fd[k] = central_difference(m, p, w0, d, eps, f, ctx);
            err += (an[k] - fd[k]) * (an[k] - fd[k]);
            size += fd[k] * fd[k];
        }
        if (!(sqrt(err) <= rtol * sqrt(size) + atol * sqrt(TEST_GRAD_DIRS))) {
            fprintf(stderr, "  %s: %d random directions: analytic", p->name, TEST_GRAD_DIRS);
            for (int k = 0; k < TEST_GRAD_DIRS; k++) fprintf(stderr, " %.6g", an[k]);
            fprintf(stderr, ", central differences");
            for (int k = 0; k < TEST_GRAD_DIRS; k++) fprintf(stderr, " %.6g", fd[k]);
            fprintf(stderr, "\n");
            ok = 0;
        }
        // The largest entry alone: one entry moves the loss numel times less than a whole direction
        // does, so a 10x longer step keeps its difference above the fp32 loss's rounding.
        long imax = 0;
        for (long j = 0; j < p->numel; j++) {
            if (fabsf(p->grad[j]) > fabsf(p->grad[imax])) imax = j;
            d[j] = 0;
        }
        d[imax] = 1;
        double e = central_difference(m, p, w0, d, 10 * eps, f, ctx);
        if (!(fabs(e - p->grad[imax]) <= rtol * fabs(e) + atol)) {
            fprintf(stderr, "  %s[%ld]: analytic %.6g, central difference %.6g\n", p->name, imax, p->grad[imax], e);
            ok = 0;
        }
        free(w0);
        free(d);
    }
    return ok;
}

int test_reference_cases(int *failed, const char *const *cases, int n, char *missing, size_t cap) {
    int ran = 0;
    missing[0] = 0;
    for (int i = 0; i < n; i++) {
        char *dir = path_join(fixtures_dir(), cases[i]);
        bool there = dir_exists(dir);
        CheckResult r;
        if (there) check_case(dir, &r);
        free(dir);
        if (!there) {
            snprintf(missing + strlen(missing), cap - strlen(missing), " %s", cases[i]);
            continue;
        }
        ran++;
        printf("  %s %s (max rel err %.3g) %s\n", r.status == CHECK_PASS ? "PASS" : "FAIL", r.name, r.max_rel_err, r.detail);
        if (r.status != CHECK_PASS) {
            fprintf(stderr, "  %s: %s\n", cases[i], r.detail);
            *failed = TEST_FAILED;
        }
    }
    return ran;
}
