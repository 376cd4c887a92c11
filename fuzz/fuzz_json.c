// fuzz_json.c: the JSON readers config.json (config_parse) and adapter_config.json
// (adapter_config_parse). Any input must give either a valid config or an error naming the file.
#include "fuzz.h"
#include "adapter.h"
#include "config.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

int fuzz_json(const uint8_t *data, size_t size) {
    const uint8_t *rest;
    size_t rest_len;
    char *text = fuzz_split(data, size, &rest, &rest_len);
    ModelConfig mc;
    int model_ok = config_parse(&mc, text, "fuzz.json") == 0;
    FUZZ_CHECK(model_ok || strstr(peft_last_error(), "fuzz.json"), "the message does not name the file: %s", peft_last_error());
    AdapterConfig ac;
    int adapter_ok = adapter_config_parse(&ac, text, "fuzz.json") == 0;
    if (adapter_ok) {
        adapter_targets_module(&ac, "model.layers.0.self_attn.q_proj");
        adapter_targets_module(&ac, "transformer.h.0.attn.c_attn");
        adapter_config_free(&ac);
    } else FUZZ_CHECK(strstr(peft_last_error(), "fuzz.json"), "the message does not name the file: %s", peft_last_error());
    free(text);
    return model_ok || adapter_ok;
}
