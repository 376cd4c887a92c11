// PEFT's layout options (adapter_layout.c, adapter_base.c): exclude_modules, layers_to_transform +
// layers_pattern, "all-linear" as a string, LoRA's rank_pattern / alpha_pattern with PEFT's key rule,
// the bias option; and PEFT's refusals of combinations.
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "check.h"
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// A LoRA adapter_config.json with these extra keys (a JSON fragment, may be empty).
static int parse_lora(AdapterConfig *c, const char *targets, const char *extra) {
    char *text = xasprintf("{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":%s%s%s}", targets, *extra ? "," : "", extra);
    int rc = adapter_config_parse(c, text, "cfg.json");
    free(text);
    return rc;
}

static const char *Q0 = "model.layers.0.self_attn.q_proj", *Q1 = "model.layers.1.self_attn.q_proj",
                  *V0 = "model.layers.0.self_attn.v_proj", *V1 = "model.layers.1.self_attn.v_proj";

TEST(layout_exclude_and_layers_follow_peft) {
    AdapterConfig c;
    CHECK(parse_lora(&c, "[\"q_proj\",\"v_proj\"]", "\"exclude_modules\":[\"layers.1.self_attn.q_proj\"]") == 0);
    CHECK(adapter_targets_module(&c, Q0) && !adapter_targets_module(&c, Q1) && adapter_targets_module(&c, V1));
    adapter_config_free(&c);
    CHECK(parse_lora(&c, "\"re:x\"", "") == 0);  // a string target stays a regex
    adapter_config_free(&c);
    CHECK(parse_lora(&c, "\".*_proj\"", "\"exclude_modules\":\".*\\\\.1\\\\..*\"") == 0);  // exclude regex: full match
    CHECK(adapter_targets_module(&c, Q0) && !adapter_targets_module(&c, Q1) && !adapter_targets_module(&c, V1));
    adapter_config_free(&c);
    // layers_to_transform as an int; a name given in full is taken whatever the layers say (PEFT's exact-match branch)
    CHECK(parse_lora(&c, "[\"model.layers.0.self_attn.q_proj\",\"v_proj\"]", "\"layers_to_transform\":1") == 0);
    CHECK(adapter_targets_module(&c, Q0) && !adapter_targets_module(&c, V0) && adapter_targets_module(&c, V1));
    adapter_config_free(&c);
    CHECK(parse_lora(&c, "[\"c_attn\"]", "\"layers_to_transform\":[0],\"layers_pattern\":\"h\"") == 0);
    CHECK(adapter_targets_module(&c, "transformer.h.0.attn.c_attn") && !adapter_targets_module(&c, "transformer.h.1.attn.c_attn"));
    adapter_config_free(&c);
    CHECK(parse_lora(&c, "[\"q_proj\"]", "\"layers_to_transform\":[0,1],\"layers_pattern\":[\"blocks\"]") == 0);
    CHECK(!adapter_targets_module(&c, Q0));  // no "blocks.<n>." in the name: no layer index, not adapted
    adapter_config_free(&c);
    CHECK(parse_lora(&c, "[\"q_proj\"]", "\"layers_to_transform\":[],\"layers_pattern\":null") == 0);  // empty: every layer
    CHECK(adapter_targets_module(&c, Q1));
    adapter_config_free(&c);
}

TEST(layout_refuses_what_peft_refuses) {
    AdapterConfig c;
    CHECK(parse_lora(&c, "\".*q_proj\"", "\"layers_to_transform\":[0]") != 0);
    CHECK(strstr(peft_last_error(), "cfg.json") && strstr(peft_last_error(), "layers_to_transform cannot be used when target_modules is a string"));
    CHECK(parse_lora(&c, "\"all-linear\"", "\"layers_to_transform\":0") != 0);
    CHECK(parse_lora(&c, "\".*q_proj\"", "\"layers_pattern\":\"layers\"") != 0);
    CHECK(strstr(peft_last_error(), "layers_pattern cannot be used when target_modules is a string"));
    CHECK(parse_lora(&c, "[\"q_proj\"]", "\"layers_pattern\":\"layers\"") != 0);
    CHECK(strstr(peft_last_error(), "without layers_to_transform"));
    CHECK(parse_lora(&c, "[\"q_proj\"]", "\"bias\":\"some\"") != 0);
    CHECK(strstr(peft_last_error(), "\"bias\""));
    CHECK(parse_lora(&c, "[\"q_proj\"]", "\"rank_pattern\":{\"q_proj\":0}") != 0);
    CHECK(strstr(peft_last_error(), "rank_pattern[\"q_proj\"]"));
    CHECK(parse_lora(&c, "[\"q_proj\"]", "\"alpha_pattern\":{\"q_proj\":\"x\"}") != 0);
    CHECK(parse_lora(&c, "[\"q_proj\"]", "\"exclude_modules\":\"(\"") != 0);
    CHECK(strstr(peft_last_error(), "not a valid regular expression"));
    CHECK(parse_lora(&c, "[\"q_proj\"]", "\"layers_to_transform\":[-1]") != 0);
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"ADALORA\",\"target_modules\":[\"q\"],\"bias\":\"all\"}", "a.json") != 0);
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"ADALORA\",\"target_modules\":[\"q\"],\"alpha_pattern\":{\"q\":2}}", "a.json") != 0);
}

// PEFT's get_pattern_key: the first key K whose "(.*\.)?(K)" matches the whole name.
TEST(layout_rank_and_alpha_patterns_follow_get_pattern_key) {
    AdapterConfig c;
    CHECK(parse_lora(&c, "[\"q_proj\",\"v_proj\"]",
                     "\"rank_pattern\":{\"v_proj\":5,\"model.layers.1.self_attn.v_proj\":7,\"layers\\\\.1\\\\..*q_proj\":2},"
                     "\"alpha_pattern\":{\"layers.0.self_attn.q_proj\":16,\"roj\":1}") == 0);
    CHECK(adapter_module_rank(&c, Q0) == 4 && adapter_module_rank(&c, Q1) == 2);
    CHECK(adapter_module_rank(&c, V0) == 5 && adapter_module_rank(&c, V1) == 5);  // the first key that matches wins
    CHECK(adapter_module_alpha(&c, Q0) == 16 && adapter_module_alpha(&c, Q1) == 8);  // "roj" is no whole part of a name
    adapter_config_free(&c);
}

TEST(all_linear_string_in_adapter_config_targets_every_linear) {
    // PEFT writes target_modules "all-linear" (any case) as a string; it is no regex.
    AdapterConfig c;
    CHECK(parse_lora(&c, "\"ALL-linear\"", "\"exclude_modules\":[\"down_proj\"]") == 0);
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 3);
    int rc = adapters_attach(m, &c, 1);
    adapter_config_free(&c);
    CHECK_MSG(rc == 0, "%s", peft_last_error());
    CHECK(m->adapters->n == 12);  // 7 linears a layer, 2 layers, less the down projections
    model_free(m);
}

static void randomize_params(AdapterSet *set, uint64_t seed) {
    uint64_t s = seed;
    for (int i = 0; i < set->n_params; i++)
        for (long j = 0; j < set->params[i]->numel; j++) set->params[i]->w[j] = (float)(0.4 * (test_urand(&s) - 0.5));
}

static char *tmp_dir(const char *tag) {
    char *d = xasprintf("/tmp/peft-layout-%s-%d", tag, (int)getpid());
    return d;
}

static void rm_dir(const char *d) {
    char *cmd = xasprintf("rm -rf '%s'", d);
    if (system(cmd)) {}
    free(cmd);
}

static float *logits(Model *m, long *n) {
    int32_t ids[12];
    uint64_t s = 9;
    test_random_batch(ids, NULL, 12, m->cfg.vocab_size, &s);
    model_forward(m, ids, NULL, 2, 6);
    *n = 12L * m->cfg.vocab_size;
    return test_copy_logits(m, *n);
}

TEST(layout_patterns_attach_save_reload_and_merge) {
    AdapterConfig c;
    CHECK(parse_lora(&c, "[\"q_proj\",\"v_proj\",\"down_proj\"]",
                     "\"rank_pattern\":{\"v_proj\":2},\"alpha_pattern\":{\"q_proj\":3},\"exclude_modules\":[\"layers.0.mlp.down_proj\"],"
                     "\"layers_to_transform\":[1],\"layers_pattern\":\"layers\",\"use_rslora\":true") == 0);
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 4);
    CHECK(adapters_attach(m, &c, 1) == 0);
    adapter_config_free(&c);
    AdapterSet *set = m->adapters;
    CHECK(set->n == 3);  // layer 1's q, v and down
    for (int i = 0; i < set->n; i++) {
        const Adapter *a = &set->adapters[i];
        bool v = strstr(a->lin->module, "v_proj") != NULL, q = strstr(a->lin->module, "q_proj") != NULL;
        CHECK(strstr(a->lin->module, "layers.1."));
        CHECK(a->r == (v ? 2 : 4) && a->A->shape[0] == a->r && a->B->shape[1] == a->r);
        CHECK_NEAR(a->scaling, (q ? 3.0 : 8.0) / sqrt(a->r), 1e-6);
    }
    randomize_params(set, 5);
    long n;
    float *live = logits(m, &n);
    char *dir = tmp_dir("patterns");
    CHECK(adapters_save(m, dir) == 0);
    char *cfg_path = path_join(dir, "adapter_config.json"), *text = read_file(cfg_path, NULL);
    cJSON *j = cJSON_Parse(text);
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "rank_pattern"), "v_proj")->valueint == 2);
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "alpha_pattern"), "q_proj")->valuedouble == 3);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(j, "layers_to_transform")) == 1);
    CHECK(!strcmp(cJSON_GetObjectItem(j, "layers_pattern")->valuestring, "layers"));
    CHECK(!strcmp(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "exclude_modules"), 0)->valuestring, "layers.0.mlp.down_proj"));
    cJSON_Delete(j);
    free(text);
    free(cfg_path);
    Model *m2 = test_model_from_json(TINY_LLAMA_JSON, 4);
    CHECK_MSG(adapters_load(m2, dir) == 0, "%s", peft_last_error());
    float *reloaded = logits(m2, &n);
    CHECK(!memcmp(live, reloaded, sizeof(float) * n));  // bit for bit
    adapters_merge(m);
    float *merged = logits(m, &n);
    double worst = 0;
    for (long i = 0; i < n; i++) worst = fmax(worst, fabs(merged[i] - live[i]));
    CHECK_MSG(worst < 1e-4, "merged logits differ by %g", worst);
    rm_dir(dir);
    free(dir);
    free(live);
    free(reloaded);
    free(merged);
    model_free(m);
    model_free(m2);
}

static double loss_fn(Model *m, void *ctx) { return test_batch_loss(m, ctx); }

// The trainable tensors' gradients against differences of the loss on a random batch.
static int gradcheck(Model *m, uint64_t seed) {
    int32_t ids[12], labels[12];
    uint64_t s = seed;
    test_random_batch(ids, labels, 12, m->cfg.vocab_size, &s);
    TestBatch b = {ids, labels, 2, 6};
    model_zero_grad(m);
    model_forward(m, ids, labels, 2, 6);
    model_backward(m);
    return test_gradcheck(m, loss_fn, &b, 1e-3, 1e-2, 1e-4);
}

// bias "all" on GPT-2: every bias trains (gradients against differences), is saved under PEFT's names
// and replaces the base's on load; "lora_only": only the adapted modules'.
TEST(bias_option_trains_saves_and_loads_peft_biases) {
    AdapterConfig c;
    CHECK(parse_lora(&c, "[\"c_attn\"]", "\"bias\":\"all\",\"fan_in_fan_out\":true") == 0);
    Model *m = test_model_from_json(TINY_GPT2_JSON, 6);
    CHECK(adapters_attach(m, &c, 1) == 0);
    adapter_config_free(&c);
    AdapterSet *set = m->adapters;
    CHECK(set->n_base == 13);  // ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj per layer, and ln_f
    randomize_params(set, 7);  // the biases too: they are the model's own
    CHECK(model_find_param(m, "transformer.h.1.ln_2.bias")->w[0] == set->params[set->n_params - 13 + 9]->w[0]);
    CHECK(gradcheck(m, 3));
    long n;
    float *live = logits(m, &n);
    char *dir = tmp_dir("bias");
    CHECK(adapters_save(m, dir) == 0);
    char *st_path = path_join(dir, "adapter_model.safetensors");
    SafeTensors st = {0};
    CHECK(st_open(&st, st_path) == 0);
    CHECK(st.n == 2 * 2 + 13);
    CHECK(st_find(&st, "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias"));
    CHECK(st_find(&st, "base_model.model.transformer.h.1.mlp.c_proj.bias"));
    CHECK(st_find(&st, "base_model.model.transformer.ln_f.bias"));
    st_close(&st);
    free(st_path);
    Model *m2 = test_model_from_json(TINY_GPT2_JSON, 6);
    CHECK_MSG(adapters_load(m2, dir) == 0, "%s", peft_last_error());
    float *reloaded = logits(m2, &n);
    CHECK(!memcmp(live, reloaded, sizeof(float) * n));
    CHECK(!adapters_load_detached(m, dir) && strstr(peft_last_error(), "loaded onto the model alone"));
    adapters_free(m2);  // the loaded biases stay, as after PEFT's unload()
    free(reloaded);
    reloaded = logits(m2, &n);
    CHECK(memcmp(live, reloaded, sizeof(float) * n));
    CHECK(model_find_param(m2, "transformer.ln_f.bias")->w[0] == model_find_param(m, "transformer.ln_f.bias")->w[0]);
    CHECK(!model_find_param(m2, "transformer.ln_f.bias")->grad);
    rm_dir(dir);
    free(live);
    free(reloaded);
    model_free(m);
    model_free(m2);

    CHECK(parse_lora(&c, "[\"c_attn\"]", "\"bias\":\"lora_only\",\"fan_in_fan_out\":true") == 0);
    m = test_model_from_json(TINY_GPT2_JSON, 6);
    CHECK(adapters_attach(m, &c, 1) == 0);
    adapter_config_free(&c);
    CHECK(m->adapters->n_base == 2 && m->adapters->n_params == 2 * 2 + 2);
    CHECK(!strcmp(m->adapters->params[5]->name, "base_model.model.transformer.h.1.attn.c_attn.base_layer.bias"));
    CHECK(adapters_save(m, dir) == 0);
    test_set_adapter_key(dir, "bias", "\"none\"");  // the bias tensors are then no one's
    Model *m3 = test_model_from_json(TINY_GPT2_JSON, 6);
    CHECK(adapters_load(m3, dir) != 0 && strstr(peft_last_error(), "base_layer.bias"));
    model_free(m3);
    rm_dir(dir);
    free(dir);
    model_free(m);
}

// The reference cases of these options (tools/reference_cases/cases.py, made on the GPU machine):
// each one present must pass; the run is skipped, naming them, while some are not generated yet.
TEST(layout_reference_cases) {
    static const char *const cases[] = {
        "mistral-lora", "qwen2-lora", "gpt2-lora-all-linear", "llama-lora-all-linear-exclude", "llama-lora-regex",
        "qwen2-lora-exclude-regex", "mistral-lora-exclude", "gpt2-lora-layers", "llama-lora-layers-int", "llama-lora-patterns",
        "gpt2-lora-patterns-rslora", "qwen2-lora-patterns-layers", "gpt2-lora-bias-all", "llama-lora-bias-all",
        "qwen2-lora-bias-all-layers", "llama-lora-modules-to-save", "qwen2-lora-modules-to-save-linear", "gpt2-lora-bias-lora-only", "qwen2-lora-bias-lora-only",
    };
    if (!fixtures_dir()) SKIP_NO_FIXTURES();
    char missing[1024];
    test_reference_cases(failed_, cases, (int)(sizeof cases / sizeof *cases), missing, sizeof missing);
    if (*failed_) return;
    if (missing[0]) SKIP("reference cases not generated yet (tools/reference_cases):%s", missing);
}

// PEFT wraps an embedding or lm_head a target names (lora.Embedding, lora.Linear): LoRA on the token
// embedding is implemented (test_embed.c); the head and the position embedding are not, so refused, never
// left out while the other targets are adapted.
TEST(layout_refuses_targets_on_embeddings_and_head) {
    static const struct { const char *json, *targets, *module; } cases[] = {
        {NULL, "[\"q_proj\",\"lm_head\"]", "lm_head"}, {NULL, "\".*(q_proj|lm_head)\"", "lm_head"},
        {"gpt2", "[\"c_attn\",\"transformer.wpe\"]", "transformer.wpe"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        AdapterConfig c;
        CHECK(parse_lora(&c, cases[i].targets, cases[i].json ? "\"fan_in_fan_out\":true" : "") == 0);
        Model *m = test_model_from_json(cases[i].json ? TINY_GPT2_JSON : TINY_LLAMA_JSON, 1);
        int rc = adapters_attach(m, &c, 1);
        adapter_config_free(&c);
        model_free(m);
        CHECK_MSG(rc != 0 && strstr(peft_last_error(), cases[i].module), "%s: %s", cases[i].targets, rc ? peft_last_error() : "attached");
    }
}

// modules_to_save: each module whose name ends with an entry trains in full (a gradient against
// differences), is saved as PEFT names it and written over the base's on load; it is never adapted.
TEST(modules_to_save_train_save_and_load) {
    AdapterConfig c;
    CHECK(parse_lora(&c, "[\"q_proj\",\"v_proj\"]", "\"modules_to_save\":[\"lm_head\",\"embed_tokens\",\"layers.1.self_attn.q_proj\"]") == 0);
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 8);
    CHECK_MSG(adapters_attach(m, &c, 1) == 0, "%s", peft_last_error());
    adapter_config_free(&c);
    AdapterSet *set = m->adapters;
    CHECK(set->n == 3 && set->n_base == 3);  // layer 1's q_proj is a module to save, not adapted
    const char *names[] = {"base_model.model.model.embed_tokens.weight", "base_model.model.model.layers.1.self_attn.q_proj.weight",
                           "base_model.model.lm_head.weight"};
    for (int i = 0; i < 3; i++) CHECK_MSG(!strcmp(set->params[set->n_params - 3 + i]->name, names[i]), "%s", set->params[set->n_params - 3 + i]->name);
    randomize_params(set, 11);
    CHECK(gradcheck(m, 4));
    long n;
    float *live = logits(m, &n);
    char *dir = tmp_dir("mts");
    CHECK(adapters_save(m, dir) == 0);
    Model *m2 = test_model_from_json(TINY_LLAMA_JSON, 8);
    CHECK_MSG(adapters_load(m2, dir) == 0, "%s", peft_last_error());
    float *reloaded = logits(m2, &n);
    CHECK(!memcmp(live, reloaded, sizeof(float) * n));
    model_free(m2);
    rm_dir(dir);
    free(dir);
    free(live);
    free(reloaded);
    model_free(m);
    // The tied embedding / head (PEFT would train a copy for one of its two uses) and a name no module has.
    const char *refused[][2] = {{"[\"wte\"]", "ties"}, {"[\"lm_head\"]", "ties"}, {"[\"nothing\"]", "names no module"}};
    for (int i = 0; i < 3; i++) {
        char *extra = xasprintf("\"fan_in_fan_out\":true,\"modules_to_save\":%s", refused[i][0]);
        CHECK(parse_lora(&c, "[\"c_attn\"]", extra) == 0);
        free(extra);
        m = test_model_from_json(TINY_GPT2_JSON, 8);
        int rc = adapters_attach(m, &c, 1);
        adapter_config_free(&c);
        model_free(m);
        CHECK_MSG(rc != 0 && strstr(peft_last_error(), refused[i][1]), "%s: %s", refused[i][0], rc ? peft_last_error() : "attached");
    }
}
