// libFuzzer target for the JSON readers: config.json (config_parse) and adapter_config.json
// (adapter_config_parse). Any input must give either a valid config or an error naming the file.
#include "adapter.h"
#include "config.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    char *text = xmalloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    ModelConfig mc;
    if (config_parse(&mc, text, "fuzz.json") != 0 && !strstr(peft_last_error(), "fuzz.json")) abort();
    AdapterConfig ac;
    if (adapter_config_parse(&ac, text, "fuzz.json") == 0) {
        for (int i = 0; i < ac.n_targets; i++) adapter_targets_module(&ac, "model.layers.0.self_attn.q_proj");
        if (ac.target_regex) adapter_targets_module(&ac, "transformer.h.0.attn.c_attn");
        adapter_config_free(&ac);
    } else if (!strstr(peft_last_error(), "fuzz.json")) abort();
    free(text);
    return 0;
}
