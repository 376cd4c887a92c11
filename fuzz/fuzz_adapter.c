// fuzz_adapter.c: building an adapter from adapter_config.json and adapter_model.safetensors
// against a model: the input is the config, a NUL byte, then the safetensors file. Each of a tiny
// GPT-2 and a tiny Llama loads it detached (as peft serve does; then a forward with it on some token
// rows) and attached (as peft generate does; a forward, merge and unmerge). A refusal names the
// folder; what loads must run.
#include "fuzz.h"
#include "adapter.h"
#include "config.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

enum { T = 4 };

static Model *tiny(const char *config_json) {
    ModelConfig mc;
    Model *m = NULL;
    FUZZ_CHECK(!config_parse(&mc, config_json, "tiny") && (m = model_create_random(&mc, 1)), "%s", peft_last_error());
    return m;
}

static int load(const char *config_json, const char *dir) {
    static const int32_t ids[T] = {1, 200, 7, 256};
    Model *m = tiny(config_json);
    AdapterSet *set = adapters_load_detached(m, dir);
    FUZZ_CHECK(set || strstr(peft_last_error(), dir), "the message does not name the folder: %s", peft_last_error());
    if (set) {
        AdapterSet *rows[T] = {set, NULL, set, set};
        m->row_adapters = rows;
        model_forward(m, ids, NULL, 1, T);
        m->row_adapters = NULL;
        adapter_set_free(set);
    }
    int attached = adapters_load(m, dir) == 0;
    if (attached) {
        model_forward(m, ids, NULL, 1, T);
        adapters_merge(m);
        adapters_unmerge(m);
        adapters_free(m);
    }
    model_free(m);
    FUZZ_CHECK(!set == !attached, "the detached load %s but the attached one %s", set ? "succeeded" : "failed", attached ? "succeeded" : "failed");
    return attached;
}

int fuzz_adapter(const uint8_t *data, size_t size) {
    const uint8_t *rest;
    size_t n;
    char *config = fuzz_split(data, size, &rest, &n);
    free(fuzz_write("adapter", "adapter_config.json", config, strlen(config)));
    char *st = fuzz_write("adapter", "adapter_model.safetensors", rest ? rest : (const uint8_t *)"", n);
    free(config);
    free(st);
    char *dir = path_join(fuzz_dir(), "adapter");
    int ok = load(FUZZ_GPT2_CONFIG, dir) | load(FUZZ_LLAMA_CONFIG, dir);
    free(dir);
    return ok;
}
