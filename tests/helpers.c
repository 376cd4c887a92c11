#include "helpers.h"
#include "test.h"
#include "adapter.h"
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

// One central difference of f with step eps: along sign(g) of the whole tensor (j < 0), or at entry j.
static double central_difference(Model *m, Param *p, const float *w0, long j, double eps, TestLossFn f, void *ctx) {
    double l[2];
    for (int side = 0; side < 2; side++) {
        float step = (float)(side ? -eps : eps);
        if (j >= 0) p->w[j] = w0[j] + step;
        else
            for (long k = 0; k < p->numel; k++) p->w[k] = w0[k] + step * (p->grad[k] >= 0 ? 1.0f : -1.0f);
        l[side] = f(m, ctx);
        memcpy(p->w, w0, sizeof(float) * p->numel);
    }
    return (l[0] - l[1]) / (2 * eps);
}

int test_gradcheck_adapters(Model *m, TestLossFn f, void *ctx, double eps, double rtol, double atol, bool zero_ok) {
    AdapterSet *set = m->adapters;
    int ok = 1;
    for (int i = 0; i < set->n_params && ok; i++) {
        Param *p = set->params[i];
        if (p->numel == 0) continue;
        float *w0 = xmalloc(sizeof(float) * p->numel);
        memcpy(w0, p->w, sizeof(float) * p->numel);
        double gv = 0;  // the derivative along sign(g)
        long imax = 0;
        for (long j = 0; j < p->numel; j++) {
            gv += fabs(p->grad[j]);
            if (fabs(p->grad[j]) > fabs(p->grad[imax])) imax = j;
        }
        double fd = central_difference(m, p, w0, -1, eps, f, ctx);
        if (gv == 0 && zero_ok) {  // a tensor the function does not depend on
            if (!(fabs(fd) <= atol)) { fprintf(stderr, "  %s: zero gradient but central difference %.6g\n", p->name, fd); ok = 0; }
            free(w0);
            continue;
        }
        if (!(fabs(fd - gv) <= rtol * fabs(gv) + atol) || gv == 0) {
            fprintf(stderr, "  %s: sign(g) direction: analytic %.6g, central difference %.6g\n", p->name, gv, fd);
            ok = 0;
        }
        // One entry moves the loss numel times less than the whole tensor does: a 10x longer step keeps
        // that difference above the fp32 loss's rounding (at eps, it is the larger error).
        fd = central_difference(m, p, w0, imax, 10 * eps, f, ctx);
        if (!(fabs(fd - p->grad[imax]) <= rtol * fabs(fd) + atol)) {
            fprintf(stderr, "  %s[%ld]: analytic %.6g, central difference %.6g\n", p->name, imax, p->grad[imax], fd);
            ok = 0;
        }
        free(w0);
    }
    return ok;
}
