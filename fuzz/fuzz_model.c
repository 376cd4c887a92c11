// fuzz_model.c: model folders as model_load reads them. The input is one byte that picks a tiny
// config.json (fuzz_model_config), then the folder's model.safetensors: the weights of a GPT-2, a
// Llama, a Qwen2 (q/k/v biases), a RoBERTa classifier, or a Llama / GPT-2 saved quantized by
// bitsandbytes (NF4 with double quantization, FP4, int8: config.json's quantization_config and the
// packed tensors with their statistics). What loads runs a forward (classification for the encoder);
// a refusal names the folder or its file.
#include "fuzz.h"
#include "model.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

enum { T = 4 };

int fuzz_model(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int kind = data[0] % FUZZ_MODEL_CONFIGS;
    char *dir = fuzz_clear("model"), *config = path_join(dir, "config.json");
    const char *text = fuzz_model_config(kind);
    free(fuzz_write("model", "config.json", text, strlen(text)));
    free(fuzz_write("model", "model.safetensors", data + 1, size - 1));
    Model *m = model_load(dir);
    FUZZ_CHECK(m || strstr(peft_last_error(), dir), "the message does not name the folder: %s", peft_last_error());
    if (m) {
        static const int32_t ids[T] = {256, 7, 200, 1};
        if (model_require_decoder(&m->cfg, "fuzz")) {
            ClassifyBatch b = {.ids = ids, .B = 1, .T = T};
            model_classify(m, &b);
        } else model_forward(m, ids, NULL, 1, T);
        model_free(m);
    }
    free(config);
    free(dir);
    return m != NULL;
}
