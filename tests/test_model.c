// Model tests: finite-difference gradients for every architecture variant (GPT-2, Llama with
// GQA, Mistral's sliding window, Qwen2's q/k/v biases) and method (full, LoRA), variants
// checked against the plain Llama path, and the errors bad configs and weights must give.
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "model.h"
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static ModelConfig tiny_config(const char *type) {
    ModelConfig c = {0};
    snprintf(c.model_type, sizeof c.model_type, "%s", type);
    c.arch = strcmp(type, "gpt2") ? ARCH_LLAMA : ARCH_GPT2;
    c.vocab_size = 23; c.n_layer = 2; c.n_embd = 16; c.n_head = 4; c.head_dim = 4;
    c.n_kv_head = c.arch == ARCH_GPT2 ? 4 : 2;
    c.n_inner = c.arch == ARCH_GPT2 ? 64 : 24;
    c.n_positions = 32; c.norm_eps = 1e-5f; c.rope_theta = 10000.0f;
    c.tie_word_embeddings = c.arch == ARCH_GPT2;
    c.qkv_bias = c.arch == ARCH_GPT2 || !strcmp(type, "qwen2");
    c.o_bias = c.mlp_bias = c.arch == ARCH_GPT2;
    if (!strcmp(type, "mistral")) c.sliding_window = 3;
    return c;
}

// Larger-than-default random values so every path carries signal, including biases and norms.
static void randomize(Model *m, uint64_t seed, float scale) {
    srand((unsigned)seed);
    for (int i = 0; i < m->n_params; i++)
        for (long j = 0; j < m->params[i].numel; j++) {
            float u = (float)rand() / RAND_MAX - 0.5f;
            bool norm_w = m->params[i].ndim == 1 && (strstr(m->params[i].name, "norm") || strstr(m->params[i].name, "ln_")) && strstr(m->params[i].name, "weight");
            m->params[i].w[j] = norm_w ? 1.0f + 0.2f * u : scale * u;
        }
}

static void batch(int B, int T, int V, int32_t *ids, int32_t *labels) {
    for (int i = 0; i < B * T; i++) { ids[i] = (i * 7 + 3) % V; labels[i] = (i % 5 == 1) ? -100 : ids[i]; }
}

// Every trainable tensor's gradient against central differences of the loss (test_gradcheck).
static int gradcheck(Model *m, int B, int T) {
    int32_t ids[64], labels[64];
    batch(B, T, m->cfg.vocab_size, ids, labels);
    model_zero_grad(m);
    model_forward(m, ids, labels, B, T);
    model_backward(m);
    TestBatch b = {ids, labels, B, T};
    return test_gradcheck(m, test_batch_loss, &b, 1e-3, 1e-2, 1e-4);
}

static Model *tiny_model(const char *type, uint64_t seed) {
    ModelConfig c = tiny_config(type);
    Model *m = model_create_random(&c, seed);
    randomize(m, seed, 0.6f);
    return m;
}

static void attach_lora(Model *m, const char *targets) {
    AdapterConfig ac;
    adapter_config_defaults(&ac, METHOD_LORA);
    ac.r = 3;
    ac.alpha = 6;
    adapter_config_set_targets(&ac, targets);
    adapters_attach(m, &ac, 1);
    adapter_config_free(&ac);
    for (int i = 0; i < m->adapters->n_params; i++)  // B starts at zero: make it nonzero so A gets gradient
        for (long j = 0; j < m->adapters->params[i]->numel; j++) m->adapters->params[i]->w[j] = 0.3f * ((float)rand() / RAND_MAX - 0.5f);
}

TEST(gradcheck_full_all_architectures) {
    const char *types[] = {"gpt2", "llama", "mistral", "qwen2"};
    for (int i = 0; i < 4; i++) {
        Model *m = tiny_model(types[i], 10 + i);
        model_train_all(m);
        int ok = gradcheck(m, 2, 7);
        model_free(m);
        CHECK_MSG(ok, "%s full fine-tuning", types[i]);
    }
}

TEST(gradcheck_lora_all_architectures) {
    const char *types[] = {"gpt2", "llama", "mistral", "qwen2"};
    for (int i = 0; i < 4; i++) {
        Model *m = tiny_model(types[i], 20 + i);
        attach_lora(m, i == 0 ? "c_attn,c_proj,c_fc" : "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
        CHECK(m->adapters && m->adapters->n == (i == 0 ? 8 : 14));
        int ok = gradcheck(m, 2, 7);
        model_free(m);
        CHECK_MSG(ok, "%s LoRA", types[i]);
    }
}

TEST(gradcheck_lora_rslora_and_dropout_off_at_eval) {
    Model *m = tiny_model("llama", 5);
    AdapterConfig ac;
    adapter_config_defaults(&ac, METHOD_LORA);
    ac.r = 4; ac.alpha = 8; ac.use_rslora = true;
    adapter_config_set_targets(&ac, "re:.*\\.(q|v)_proj");
    CHECK(adapters_attach(m, &ac, 3) == 0);
    adapter_config_free(&ac);
    CHECK(m->adapters->n == 4);
    CHECK_NEAR(m->adapters->adapters[0].scaling, 8.0 / 2.0, 1e-6);
    for (int i = 0; i < m->adapters->n_params; i++)
        for (long j = 0; j < m->adapters->params[i]->numel; j++) m->adapters->params[i]->w[j] = 0.3f * ((float)rand() / RAND_MAX - 0.5f);
    int ok = gradcheck(m, 2, 6);
    model_free(m);
    CHECK(ok);
}

static void copy_weights(Model *dst, const Model *src) {
    for (int i = 0; i < src->n_params; i++) {
        Param *p = model_find_param(dst, src->params[i].name);
        if (p) memcpy(p->w, src->params[i].w, sizeof(float) * p->numel);
    }
}

static double logits_diff(Model *a, Model *b, int B, int T) {
    int32_t ids[64], labels[64];
    batch(B, T, a->cfg.vocab_size, ids, labels);
    model_forward(a, ids, NULL, B, T);
    model_forward(b, ids, NULL, B, T);
    long n = (long)B * T * a->cfg.vocab_size;
    double worst = 0;
    for (long i = 0; i < n; i++) worst = fmax(worst, fabs(a->act.logits[i] - b->act.logits[i]));
    return worst;
}

TEST(mistral_window_covering_the_sequence_equals_llama) {
    Model *llama = tiny_model("llama", 7);
    ModelConfig c = tiny_config("mistral");
    c.sliding_window = 8;
    Model *mistral = model_create_random(&c, 1);
    copy_weights(mistral, llama);
    CHECK(logits_diff(llama, mistral, 2, 8) == 0.0);
    // A window shorter than the sequence must change later positions but not the first `window`.
    mistral->cfg.sliding_window = 3;
    int32_t ids[16], labels[16];
    batch(2, 8, c.vocab_size, ids, labels);
    model_forward(llama, ids, NULL, 2, 8);
    float *ref = xmalloc(sizeof(float) * 16 * c.vocab_size);
    memcpy(ref, llama->act.logits, sizeof(float) * 16 * c.vocab_size);
    model_forward(mistral, ids, NULL, 2, 8);
    double early = 0, late = 0;
    for (int t = 0; t < 8; t++)
        for (int v = 0; v < c.vocab_size; v++) {
            double d = fabs(ref[t * c.vocab_size + v] - mistral->act.logits[t * c.vocab_size + v]);
            if (t < 3) early = fmax(early, d); else late = fmax(late, d);
        }
    free(ref);
    model_free(llama);
    model_free(mistral);
    CHECK(early == 0.0);
    CHECK(late > 1e-4);
}

TEST(qwen2_with_zero_biases_equals_llama) {
    Model *llama = tiny_model("llama", 8);
    ModelConfig c = tiny_config("qwen2");
    Model *qwen = model_create_random(&c, 2);
    copy_weights(qwen, llama);
    for (int l = 0; l < c.n_layer; l++) {
        Block *b = &qwen->blocks[l];
        memset(b->q->bias->w, 0, sizeof(float) * b->q->out);
        memset(b->k->bias->w, 0, sizeof(float) * b->k->out);
        memset(b->v->bias->w, 0, sizeof(float) * b->v->out);
    }
    CHECK(logits_diff(llama, qwen, 2, 6) == 0.0);
    qwen->blocks[0].v->bias->w[0] = 0.5f;
    CHECK(logits_diff(llama, qwen, 2, 6) > 1e-5);
    model_free(llama);
    model_free(qwen);
}

TEST(gpt2_key_bias_gradient_is_exactly_zero) {
    Model *m = tiny_model("gpt2", 9);
    model_train_all(m);
    int32_t ids[14], labels[14];
    batch(2, 7, m->cfg.vocab_size, ids, labels);
    model_zero_grad(m);
    model_forward(m, ids, labels, 2, 7);
    model_backward(m);
    int C = m->cfg.n_embd;
    const float *g = m->blocks[0].qkv->bias->grad;  // [q | k | v]
    for (int i = C; i < 2 * C; i++) CHECK(g[i] == 0.0f);
    double vsum = 0;
    for (int i = 2 * C; i < 3 * C; i++) vsum += fabs(g[i]);
    model_free(m);
    CHECK(vsum > 0);
}

static int parse(const char *json) {
    ModelConfig c;
    return config_parse(&c, json, "config.json");
}

TEST(config_errors_name_the_field) {
    CHECK(parse("{\"model_type\":\"llama\",\"hidden_size\":32,\"num_attention_heads\":4,\"num_key_value_heads\":3,\"num_hidden_layers\":1,\"intermediate_size\":8,\"vocab_size\":10}") != 0);
    CHECK(strstr(peft_last_error(), "num_key_value_heads"));
    CHECK(parse("{\"model_type\":\"gpt2\",\"n_embd\":30,\"n_head\":4,\"n_layer\":1,\"vocab_size\":10}") != 0);
    CHECK(strstr(peft_last_error(), "not divisible by the number of heads"));
    CHECK(parse("{\"model_type\":\"llama\",\"hidden_size\":32,\"num_attention_heads\":4,\"num_hidden_layers\":1,\"intermediate_size\":8,\"vocab_size\":10,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":2}}") != 0);
    CHECK(strstr(peft_last_error(), "rope_scaling") && strstr(peft_last_error(), "yarn"));
    CHECK(parse("{\"model_type\":\"t5\"}") != 0);
    CHECK(strstr(peft_last_error(), "model_type") && strstr(peft_last_error(), "t5"));
    CHECK(parse("{\"model_type\":\"gpt2\",\"n_head\":4,\"n_layer\":1,\"vocab_size\":10}") != 0);
    CHECK(strstr(peft_last_error(), "n_embd"));
    CHECK(parse("[1,2]") != 0);
    CHECK(parse("{\"model_type\":\"llama\",\"hidden_size\":32,\"num_attention_heads\":4,\"num_hidden_layers\":1,\"intermediate_size\":8,\"vocab_size\":10,\"rope_parameters\":{\"rope_type\":\"llama3\",\"factor\":8,\"rope_theta\":500000}}") == 0);
}

// config.json with one field replaced: "key": value (the key must be in the text).
static char *with_field(const char *json, const char *key, const char *value) {
    char *quoted = xasprintf("\"%s\":", key);
    const char *at = strstr(json, quoted), *end = at + strlen(quoted);
    while (*end && *end != ',' && *end != '}') end++;
    char *out = xasprintf("%.*s%s%s%s", (int)(at - json), json, quoted, value, end);
    free(quoted);
    return out;
}

// Absurd sizes are refused by name before anything is allocated (n_layer 1e9 used to overflow
// model.c's tensor count and abort).
TEST(config_refuses_absurd_sizes) {
    static const char *gpt2 = "{\"model_type\":\"gpt2\",\"n_embd\":32,\"n_head\":4,\"n_layer\":2,\"n_inner\":64,\"n_positions\":16,\"vocab_size\":10}";
    static const char *llama = "{\"model_type\":\"llama\",\"hidden_size\":32,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
                               "\"num_hidden_layers\":2,\"intermediate_size\":8,\"max_position_embeddings\":16,\"head_dim\":8,\"vocab_size\":10}";
    static const struct { const char *json, *key, *value, *name; } cases[] = {
        {NULL, "n_layer", "1000000000", "n_layer"}, {NULL, "n_embd", "1000000000", "n_embd"},
        {NULL, "n_head", "1000000000", "n_head"}, {NULL, "n_inner", "1000000000", "n_inner"},
        {NULL, "n_positions", "1000000000", "n_positions"}, {NULL, "vocab_size", "1000000000", "vocab_size"},
        {NULL, "n_layer", "-3", "n_layer"},
        {"", "num_hidden_layers", "1000000000", "num_hidden_layers"}, {"", "hidden_size", "1000000000", "hidden_size"},
        {"", "intermediate_size", "1000000000", "intermediate_size"}, {"", "max_position_embeddings", "1000000000", "max_position_embeddings"},
        {"", "vocab_size", "1000000000", "vocab_size"}, {"", "head_dim", "1000000000", "head_dim"},
        {"", "num_attention_heads", "1000000000", "num_attention_heads"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *json = with_field(cases[i].json ? llama : gpt2, cases[i].key, cases[i].value);
        ModelConfig c;
        int rc = config_parse(&c, json, "config.json");
        free(json);
        CHECK_MSG(rc != 0 && strstr(peft_last_error(), "config.json") && strstr(peft_last_error(), cases[i].name),
                  "%s %s: %s", cases[i].key, cases[i].value, rc ? peft_last_error() : "accepted");
    }
    // Within every limit but far larger than its weights: refused from the file's shapes, before
    // 2^44 floats are allocated.
    const char *dir = test_tmpdir();
    Model *m = tiny_model("gpt2", 3);
    CHECK(model_save(m, dir) == 0);
    model_free(m);
    char *cfg = path_join(dir, "config.json");
    const char *huge = "{\"model_type\":\"gpt2\",\"n_embd\":1048576,\"n_head\":4,\"n_layer\":2,\"n_inner\":64,\"n_positions\":16,\"vocab_size\":16777216}";
    CHECK(write_file_atomic(cfg, huge, strlen(huge)) == 0);
    free(cfg);
    CHECK(model_load(dir) == NULL);
    CHECK_MSG(strstr(peft_last_error(), "transformer.wte.weight") && strstr(peft_last_error(), "[16777216, 1048576]"), "%s", peft_last_error());
}

// config.json keys that change what transformers computes are implemented or refused by name;
// metadata is accepted.
TEST(config_keys_that_change_the_math_are_refused) {
    static const char *gpt2 = "{\"model_type\":\"gpt2\",\"n_embd\":32,\"n_head\":4,\"n_layer\":2,\"n_positions\":16,\"vocab_size\":10}";
    static const char *llama = "{\"model_type\":\"llama\",\"hidden_size\":32,\"num_attention_heads\":4,\"num_hidden_layers\":2,"
                               "\"intermediate_size\":8,\"vocab_size\":10}";
    static const char *qwen2 = "{\"model_type\":\"qwen2\",\"hidden_size\":32,\"num_attention_heads\":4,\"num_hidden_layers\":2,"
                               "\"intermediate_size\":8,\"vocab_size\":10,\"use_sliding_window\":true,\"sliding_window\":4}";
    static const char *mistral = "{\"model_type\":\"mistral\",\"hidden_size\":32,\"num_attention_heads\":4,\"num_hidden_layers\":2,"
                                 "\"intermediate_size\":8,\"vocab_size\":10,\"sliding_window\":4}";
    const struct { const char *base, *key, *value; } refused[] = {
        {gpt2, "scale_attn_by_inverse_layer_idx", "true"}, {gpt2, "reorder_and_upcast_attn", "true"}, {gpt2, "scale_attn_weights", "false"},
        {gpt2, "tie_word_embeddings", "1"}, {gpt2, "hidden_size", "64"}, {gpt2, "num_hidden_layers", "3"},
        {gpt2, "activation_function", "\"relu\""}, {gpt2, "layer_norm_epsilon", "1e39"}, {gpt2, "resid_pdrop", "2"},
        {llama, "rope_scaling", "{\"rope_type\":\"dynamic\",\"factor\":2}"}, {llama, "rope_scaling", "{\"rope_type\":\"linear\",\"factor\":2,\"beta_fast\":32}"},
        {llama, "partial_rotary_factor", "0.5"}, {llama, "rope_theta", "-1"}, {llama, "hidden_act", "\"gelu\""},
        {llama, "attention_bias", "\"yes\""}, {llama, "mlp_bias", "1"}, {llama, "tie_word_embeddings", "\"true\""},
        {llama, "sliding_window", "4"}, {llama, "layer_types", "[\"sliding_attention\",\"sliding_attention\"]"},
        {qwen2, "max_window_layers", "1"}, {qwen2, "layer_types", "[\"full_attention\",\"sliding_attention\"]"},
        {mistral, "layer_types", "[\"full_attention\",\"full_attention\"]"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        cJSON *j = cJSON_Parse(refused[i].base);
        cJSON_DeleteItemFromObjectCaseSensitive(j, refused[i].key);
        cJSON_AddItemToObject(j, refused[i].key, cJSON_Parse(refused[i].value));
        char *text = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        ModelConfig c;
        int rc = config_parse(&c, text, "config.json");
        CHECK_MSG(rc != 0 && strstr(peft_last_error(), "config.json") &&
                  (strstr(peft_last_error(), refused[i].key) || !strcmp(refused[i].key, "max_window_layers")),
                  "%s: %s", text, rc ? peft_last_error() : "accepted");
        free(text);
    }
    // Qwen2's window on every layer (max_window_layers 0) or on none (2 of 2 layers before it) is supported.
    ModelConfig c;
    const char *q_all = "{\"model_type\":\"qwen2\",\"hidden_size\":32,\"num_attention_heads\":4,\"num_hidden_layers\":2,"
                        "\"intermediate_size\":8,\"vocab_size\":10,\"use_sliding_window\":true,\"sliding_window\":4,\"max_window_layers\":0}";
    CHECK(config_parse(&c, q_all, "c") == 0 && c.sliding_window == 4);
    char *q_none = with_field(q_all, "max_window_layers", "2");
    CHECK(config_parse(&c, q_none, "c") == 0 && c.sliding_window == 0);
    free(q_none);
    CHECK(config_parse(&c, qwen2, "c") == 0 && c.sliding_window == 0);  // max_window_layers defaults to 28
    char *q_types = with_field(q_all, "max_window_layers", "5,\"layer_types\":[\"sliding_attention\",\"sliding_attention\"]");
    CHECK(config_parse(&c, q_types, "c") == 0 && c.sliding_window == 4);  // layer_types decides over max_window_layers
    free(q_types);
    CHECK(config_parse(&c, mistral, "c") == 0 && c.sliding_window == 4);
    // Metadata, and dropout (kept for peft train to refuse).
    const char *meta = "{\"model_type\":\"gpt2\",\"n_embd\":32,\"n_head\":4,\"n_layer\":2,\"n_positions\":16,\"vocab_size\":10,"
                       "\"architectures\":[\"GPT2LMHeadModel\"],\"transformers_version\":\"5.17.0\",\"torch_dtype\":\"float16\",\"use_cache\":true,"
                       "\"initializer_range\":0.02,\"pad_token_id\":null,\"_name_or_path\":\"gpt2\",\"summary_type\":\"cls_index\","
                       "\"n_ctx\":1024,\"attn_implementation\":\"eager\",\"resid_pdrop\":0.1,\"attn_pdrop\":0.05}";
    CHECK_MSG(config_parse(&c, meta, "c") == 0, "%s", peft_last_error());
    CHECK(fabsf(c.dropout - 0.1f) < 1e-7f && !strcmp(c.dropout_key, "resid_pdrop"));
}

TEST(llama3_rope_scaling_frequencies) {
    ModelConfig c;
    CHECK(config_parse(&c, "{\"model_type\":\"llama\",\"hidden_size\":512,\"num_attention_heads\":4,\"num_hidden_layers\":1,\"intermediate_size\":8,\"vocab_size\":10,"
                           "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":8192},\"rope_theta\":500000}", "c") == 0);
    Model *m = model_create_random(&c, 1);
    // High frequencies unchanged, the lowest divided by the factor.
    CHECK_NEAR(m->inv_freq[0], 1.0, 1e-6);
    double base_last = 1.0 / pow(500000.0, (double)(2 * 63) / 128);
    CHECK_NEAR(m->inv_freq[63], base_last / 8, base_last * 1e-4);
    model_free(m);
}


TEST(model_save_load_roundtrip_and_bad_weights) {
    const char *dir = test_tmpdir();
    Model *m = tiny_model("llama", 11);
    CHECK(model_save(m, dir) == 0);
    Model *m2 = model_load(dir);
    CHECK_MSG(m2 != NULL, "%s", peft_last_error());
    CHECK(logits_diff(m, m2, 1, 5) == 0.0);
    model_free(m2);
    // A weight whose shape disagrees with config.json: the error names the tensor.
    m->params[3].shape[0] += 1;
    m->params[3].numel += m->params[3].shape[1];
    m->params[3].w = xrealloc(m->params[3].w, sizeof(float) * m->params[3].numel);
    const char *bad = test_tmpdir();
    CHECK(model_save(m, bad) == 0);
    CHECK(model_load(bad) == NULL);
    CHECK_MSG(strstr(peft_last_error(), m->params[3].name) != NULL, "%s", peft_last_error());
    model_free(m);
    // A NaN weight.
    m = tiny_model("gpt2", 12);
    m->params[5].w[2] = NAN;
    const char *nan_dir = test_tmpdir();
    CHECK(model_save(m, nan_dir) == 0);
    CHECK(model_load(nan_dir) == NULL);
    CHECK_MSG(strstr(peft_last_error(), "non-finite") && strstr(peft_last_error(), m->params[5].name), "%s", peft_last_error());
    model_free(m);
}
