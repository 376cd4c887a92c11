// adapter_config.json parsing and PEFT's target-module rule.
#include "test.h"
#include "adapter.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

static AdapterConfig targets(const char *spec) {
    AdapterConfig c;
    adapter_config_defaults(&c, PEFT_LORA);
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
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q\"],\"use_dora\":true}", "a.json") != 0);
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"VERA\",\"r\":4,\"target_modules\":[\"q\"],\"projection_prng_key\":1.5}", "a.json") != 0);
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"ADALORA\",\"init_r\":4,\"target_modules\":[\"q\"],\"rank_pattern\":{\"q.lora_E\":[true]}}", "a.json") != 0);
    CHECK(strstr(peft_last_error(), "init_r"));
    CHECK(adapter_config_parse(&c, "{\"peft_type\":\"VERA\",\"r\":8,\"target_modules\":[\"q\"],\"projection_prng_key\":-3}", "a.json") == 0);
    CHECK(c.prng_key == (uint64_t)-3);  // torch wraps negative seeds
    CHECK(!strcmp(c.task_type, ""));    // absent task_type reads as null, as PEFT's default
    adapter_config_free(&c);
}
