// adapter_config.json parsing and PEFT's target-module rule.
#include "test.h"
#include "adapter.h"
#include "helpers.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static AdapterConfig targets(const char *spec) {
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_LORA);
    adapter_config_set_targets(&c, spec);
    return c;
}

TEST(target_matching_follows_peft) {
    AdapterConfig c = targets("c_attn,q_proj");
    CHECK(adapter_targets_module(&c, "transformer.h.0.attn.c_attn"));
    CHECK(adapter_targets_module(&c, "c_attn"));
    CHECK(!adapter_targets_module(&c, "transformer.h.0.attn.xc_attn"));   // suffix must follow a dot
    CHECK(!adapter_targets_module(&c, "transformer.h.0.attn.c_attn.x"));
    CHECK(adapter_targets_module(&c, "model.layers.3.self_attn.q_proj"));
    adapter_config_free(&c);
    c = targets("re:.*\\.(q|v)_proj");                                        // a string is a full-match regex
    CHECK(adapter_targets_module(&c, "model.layers.0.self_attn.v_proj"));
    CHECK(!adapter_targets_module(&c, "model.layers.0.self_attn.k_proj"));
    CHECK(!adapter_targets_module(&c, "model.layers.0.self_attn.v_proj.extra"));
    adapter_config_free(&c);
    c = targets("all-linear");
    CHECK(adapter_targets_module(&c, "model.layers.0.mlp.down_proj"));
    adapter_config_free(&c);
}

TEST(adapter_config_errors) {
    AdapterConfig c;
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":0,\"target_modules\":[\"q\"]}", "a.json") != 0);
    CHECK(strstr(peft_last_error(), "a.json") && strstr(peft_last_error(), "r must be positive"));
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"IA3\",\"target_modules\":[\"q\"]}", "a.json") != 0);
    CHECK(strstr(peft_last_error(), "IA3"));
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":4}", "a.json") != 0);
    CHECK(strstr(peft_last_error(), "target_modules"));
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q\"],\"use_dora\":\"yes\"}", "a.json") != 0);
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"VERA\",\"r\":4,\"target_modules\":[\"q\"],\"projection_prng_key\":1.5}", "a.json") != 0);
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"ADALORA\",\"init_r\":4,\"target_modules\":[\"q\"],\"rank_pattern\":{\"q.lora_E\":[true]}}", "a.json") != 0);
    CHECK(strstr(peft_last_error(), "init_r"));
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"VERA\",\"r\":8,\"target_modules\":[\"q\"],\"projection_prng_key\":-3}", "a.json") == 0);
    CHECK(c.prng_key == (uint64_t)-3);  // torch wraps negative seeds
    CHECK(!strcmp(c.task_type, ""));    // absent task_type reads as null, as PEFT's default
    adapter_config_free(&c);
}

// Every key PEFT 0.21 writes, with its default value (as in the reference cases' files).
#define PEFT_LORA_KEYS                                                                                                  \
    "\"alora_invocation_tokens\": null, \"alpha_pattern\": {}, \"arrow_config\": null, \"auto_mapping\": {\"base_model_class\": " \
    "\"GPT2LMHeadModel\"}, \"base_model_name_or_path\": null, \"bias\": \"none\", \"corda_config\": null, "                    \
    "\"ensure_weight_tying\": false, \"eva_config\": null, \"exclude_modules\": null, \"fan_in_fan_out\": true, "                 \
    "\"inference_mode\": true, \"init_lora_weights\": true, \"kasa_config\": null, \"layer_replication\": null, "                 \
    "\"layers_pattern\": null, \"layers_to_transform\": null, \"loftq_config\": {}, \"lora_alpha\": 8, \"lora_bias\": false, "     \
    "\"lora_dropout\": 0.0, \"lora_ga_config\": null, \"megatron_config\": null, \"megatron_core\": \"megatron.core\", "         \
    "\"modules_to_save\": null, \"monteclora_config\": null, \"peft_version\": \"0.21.0\", \"qalora_group_size\": 16, \"r\": 4, " \
    "\"revision\": null, \"target_modules\": [\"c_attn\"], \"target_parameters\": null, \"task_type\": null, "                  \
    "\"trainable_token_indices\": null, \"use_bdlora\": null, \"use_dora\": false, \"use_qalora\": false, \"use_rslora\": false, " \
    "\"velora_config\": null"
static const char *const FULL_CONFIGS[] = {
    "{\"peft_type\": \"LORA\", \"rank_pattern\": {}, " PEFT_LORA_KEYS "}",
    "{\"peft_type\": \"ADALORA\", \"beta1\": 0.85, \"beta2\": 0.85, \"deltaT\": 1, \"init_r\": 4, \"orth_reg_weight\": 0.5, "
    "\"rank_pattern\": null, \"target_r\": 2, \"tfinal\": 2, \"tinit\": 2, \"total_step\": 10, " PEFT_LORA_KEYS "}",
    "{\"peft_type\": \"VERA\", \"auto_mapping\": {}, \"base_model_name_or_path\": null, \"bias\": \"none\", \"d_initial\": 0.1, "
    "\"fan_in_fan_out\": true, \"inference_mode\": true, \"init_weights\": true, \"layers_pattern\": null, \"layers_to_transform\": null, "
    "\"modules_to_save\": null, \"peft_version\": \"0.21.0\", \"projection_prng_key\": 0, \"r\": 16, \"revision\": null, "
    "\"save_projection\": true, \"target_modules\": [\"c_attn\"], \"task_type\": null, \"vera_dropout\": 0.0}",
};

// A full config of one method with one key set to another value (JSON text).
static char *with_key(int method, const char *key, const char *value) {
    cJSON *j = cJSON_Parse(FULL_CONFIGS[method]);
    cJSON_DeleteItemFromObjectCaseSensitive(j, key);
    cJSON_AddItemToObject(j, key, cJSON_Parse(value));
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return text;
}

// Every key of adapter_config.json is implemented or refused by name: PEFT's defaults load, a
// value that would change the math (or is not a finite float) and a key PEFT does not write are refused.
TEST(adapter_config_keys_are_implemented_or_refused) {
    AdapterConfig c;
    for (int m = 0; m < 3; m++) {
        CHECK_MSG(adapter_config_parse(&c, FULL_CONFIGS[m], "a.json") == 0, "%s", peft_last_error());
        adapter_config_free(&c);
    }
    enum { LORA, ADALORA, VERA };
    static const struct { int method; const char *key, *value; } refused[] = {
        {LORA, "modules_to_save", "\"lm_head\""}, {LORA, "layers_to_transform", "[-1]"}, {LORA, "layers_pattern", "\"h\""},
        {LORA, "alpha_pattern", "[16]"}, {LORA, "rank_pattern", "{\"c_attn\": 2.5}"}, {LORA, "bias", "true"},
        {LORA, "bias", "\"some\""}, {LORA, "bias", "null"}, {LORA, "use_dora", "1"}, {LORA, "lora_bias", "true"},
        {LORA, "exclude_modules", "3"}, {LORA, "init_lora_weights", "\"loftq\""}, {LORA, "task_type", "\"TOKEN_CLS\""},
        {LORA, "trainable_token_indices", "[1, 1]"}, {LORA, "trainable_token_indices", "{\"wte\": -1}"}, {ADALORA, "trainable_token_indices", "[1]"},
        {LORA, "layer_replication", "[[0, 1]]"}, {LORA, "loftq_config", "{\"loftq_bits\": 4}"},
        {LORA, "lora_alpha", "1e39"}, {LORA, "lora_dropout", "1e39"}, {LORA, "use_rslora", "\"yes\""}, {LORA, "fan_in_fan_out", "1"},
        {LORA, "some_new_option", "true"}, {LORA, "d_initial", "0.1"},
        {ADALORA, "use_rslora", "true"}, {ADALORA, "use_dora", "true"}, {ADALORA, "beta1", "1e39"}, {ADALORA, "modules_to_save", "[1]"},
        {ADALORA, "alpha_pattern", "{\"c_attn\": 16}"}, {ADALORA, "bias", "\"all\""},
        {LORA, "init_lora_weights", "\"eva\""}, {LORA, "init_lora_weights", "\"corda\""}, {LORA, "init_lora_weights", "\"orthogonal\""},
        {LORA, "init_lora_weights", "\"pissa_niter_x\""}, {LORA, "init_lora_weights", "\"pissa_niter_\""}, {LORA, "init_lora_weights", "\"kaiming\""},
        {LORA, "init_lora_weights", "1"}, {ADALORA, "init_lora_weights", "\"pissa\""},
        {ADALORA, "loftq_config", "{\"loftq_bits\": 4}"}, {VERA, "projection_prng_key", "1.5"}, {VERA, "save_projection", "\"yes\""},
        {VERA, "lora_alpha", "8"}, {VERA, "d_initial", "1e39"}, {VERA, "modules_to_save", "{}"},
        {VERA, "layers_to_transform", "\"x\""}, {VERA, "bias", "\"lora_only\""}, {VERA, "init_weights", "\"x\""}, {VERA, "use_dora", "false"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        char *text = with_key(refused[i].method, refused[i].key, refused[i].value);
        peft_clear_error();
        int rc = adapter_config_parse(&c, text, "a.json");
        CHECK_MSG(rc != 0 && strstr(peft_last_error(), "a.json") && strstr(peft_last_error(), refused[i].key), "%s: %s",
                  text, rc ? peft_last_error() : "accepted");
        free(text);
    }
    // Values PEFT 0.21 accepts that are implemented (LoRA's initialisations) or inert (AdaLoRA's and VeRA's
    // init flags: the tensors come from the file).
    static const struct { int method; const char *key, *value; } accepted[] = {
        {LORA, "init_lora_weights", "false"}, {LORA, "init_lora_weights", "\"gaussian\""}, {LORA, "init_lora_weights", "\"pissa\""},
        {LORA, "init_lora_weights", "\"pissa_niter_3\""}, {LORA, "init_lora_weights", "\"olora\""},
        {ADALORA, "init_lora_weights", "false"}, {ADALORA, "init_lora_weights", "\"gaussian\""}, {VERA, "init_weights", "false"},
    };
    for (size_t i = 0; i < sizeof accepted / sizeof *accepted; i++) {
        char *text = with_key(accepted[i].method, accepted[i].key, accepted[i].value);
        CHECK_MSG(adapter_config_parse(&c, text, "a.json") == 0, "%s: %s", text, peft_last_error());
        adapter_config_free(&c);
        free(text);
    }
    // Inert keys hold anything; "r" is inert for AdaLoRA (init_r is its rank).
    char *text = with_key(ADALORA, "r", "64");
    CHECK(adapter_config_parse(&c, text, "a.json") == 0 && c.r == 4);
    adapter_config_free(&c);
    free(text);
    text = with_key(LORA, "revision", "\"v2\"");
    CHECK(adapter_config_parse(&c, text, "a.json") == 0);
    adapter_config_free(&c);
    free(text);
}

// The method table: each row is its own method, found by its name and peft_type; an id that is not
// an adapter method is refused where an adapter is made (it once ran as AdaLoRA).
TEST(method_table) {
    for (int i = 0; i < METHOD_COUNT; i++) {
        const Method *m = method_get((MethodId)i);
        CHECK(m && m->id == (MethodId)i && m->name && m->title && m->default_lr > 0);
        MethodId id;
        CHECK(method_parse(m->name, &id) == 0 && id == m->id);
        // A variant (DoRA) has its base's peft_type, which names the base.
        CHECK(!m->peft_type || (method_from_peft_type(m->peft_type, &id) == 0 && id == (m->variant_key ? m->config_base->id : m->id)));
        CHECK(!m->peft_type == !m->forward);  // adapter methods, and only they, have ops
        for (int j = 0; j < i; j++) CHECK(strcmp(method_get((MethodId)j)->name, m->name));
    }
    MethodId id;
    CHECK(method_parse("boft", &id) != 0 && strstr(peft_last_error(), "\"boft\"") && strstr(peft_last_error(), "lora, vera, adalora, full or dora"));
    CHECK(method_from_peft_type("DORA", &id) != 0);
    CHECK(method_get(METHOD_COUNT) == NULL && strstr(peft_last_error(), "no method"));

    Model *m = test_model_from_json(TINY_GPT2_JSON, 1);
    const MethodId bad[] = {METHOD_FULL, METHOD_COUNT, (MethodId)-1};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        AdapterConfig c;
        adapter_config_defaults(&c, METHOD_LORA);
        c.type = bad[i];
        adapter_config_set_targets(&c, "c_attn");
        peft_clear_error();
        CHECK_MSG(adapters_attach(m, &c, 1) != 0 && !m->adapters && *peft_last_error(), "type %d attached", (int)bad[i]);
        adapter_config_free(&c);
    }
    model_free(m);
}

// docs/lora-config.md's table holds every key of LoRA's config, each with the code's status
// (implemented / inert / refused) and accepted values, and no other key.
TEST(docs_lora_config_table_matches_code) {
    char *doc = read_file("docs/lora-config.md", NULL);
    CHECK_MSG(doc, "%s", peft_last_error());
    const char *names[128];
    int n = adapter_config_key_names(METHOD_LORA, names, 128), rows = 0;
    bool *seen = calloc((size_t)n, sizeof(bool));
    static const char *const STATUS[] = {[KEY_USED] = "implemented", [KEY_INERT] = "inert", [KEY_DEFAULT] = "refused"};
    for (char *line = strtok(doc, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "| `", 3)) continue;
        char key[64] = "", status[32] = "", accepted[160] = "";
        CHECK_MSG(sscanf(line, "| `%63[^`]` | %31[a-z] | %159[^|]|", key, status, accepted) >= 2, "bad row: %s", line);
        const ConfigKey *k = adapter_config_key(METHOD_LORA, key);
        CHECK_MSG(k, "%s: not a key of LoRA's config in the code", key);
        CHECK_MSG(!strcmp(status, STATUS[k->use]), "%s: the doc says %s, the code %s", key, status, STATUS[k->use]);
        for (char *e = accepted + strlen(accepted); e > accepted && e[-1] == ' '; ) *--e = 0;
        char *list = xasprintf("[%s]", accepted);
        cJSON *doc_values = cJSON_Parse(list), *code_values = k->accepted ? cJSON_Parse(k->accepted) : cJSON_CreateArray();
        bool same = doc_values && cJSON_Compare(doc_values, code_values, true);
        cJSON_Delete(doc_values);
        cJSON_Delete(code_values);
        free(list);
        CHECK_MSG(same, "%s: the doc accepts [%s], the code %s", key, accepted, k->accepted ? k->accepted : "[]");
        for (int i = 0; i < n; i++)
            if (!strcmp(names[i], key)) { CHECK_MSG(!seen[i], "%s: two rows", key); seen[i] = true; }
        rows++;
    }
    for (int i = 0; i < n; i++) CHECK_MSG(seen[i], "%s: a key of LoRA's config in the code, not in docs/lora-config.md", names[i]);
    CHECK(rows == n);
    free(seen);
    free(doc);
}
