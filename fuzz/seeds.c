// seeds.c: the fuzz seeds our own code makes (`make fuzz-seeds` writes them into fuzz/corpus):
// the byte-level tokenizer with a text (tokenizer/valid_byte_level.bin), adapters of the tiny
// models (adapter/valid_*.bin), checkpoints of fuzz_checkpoint's run (checkpoint/valid_*.bin) and
// the weights of fuzz_model's tiny models as model_save writes them (model/valid_*.bin).
// tests/test_fuzz.c checks that the targets still accept every valid_* seed.
#include "fuzz.h"
#include "adapter.h"
#include "config.h"
#include "model.h"
#include "quant.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_seed(const char *corpus, const char *target, const char *name, uint8_t *data, size_t size) {
    char *dir = path_join(corpus, target), *file = xasprintf("valid_%s.bin", name), *path = path_join(dir, file);
    int rc = make_dir(dir) || write_file_atomic(path, data, size);
    if (!rc) printf("%s: %zu bytes\n", path, size);
    free(data);
    free(dir);
    free(file);
    free(path);
    return rc;
}

typedef struct {
    const char *name;
    bool llama;               // the tiny Llama, else the tiny GPT-2
    const char *targets;
    MethodId type;
    int r;
    bool rslora;
} AdapterSeed;

// An adapter made and saved as peft train saves it, joined into one input.
static int adapter_seed(const AdapterSeed *s, uint8_t **data, size_t *size) {
    ModelConfig mc;
    Model *m = NULL;
    AdapterConfig c;
    adapter_config_defaults(&c, s->type);
    c.r = c.init_r = s->r;
    c.target_r = s->r / 2;
    c.use_rslora = s->rslora;
    adapter_config_set_targets(&c, s->targets);
    char *dir = fuzz_clear("seed-adapter"), *cfg = path_join(dir, "adapter_config.json"), *st = path_join(dir, "adapter_model.safetensors");
    int rc = config_parse(&mc, s->llama ? FUZZ_LLAMA_CONFIG : FUZZ_GPT2_CONFIG, s->name) || !(m = model_create_random(&mc, 1)) || adapters_attach(m, &c, 7) ||
             adapters_save(m, dir) || fuzz_join_files(cfg, st, data, size);
    model_free(m);
    adapter_config_free(&c);
    free(dir);
    free(cfg);
    free(st);
    return rc ? -1 : 0;
}

// fuzz_model's input for config kind: the byte, then model.safetensors of a random model of that config
// (quantized as `peft quantize` does it for the bitsandbytes kinds).
static int model_seed(int kind, QuantType t, bool nested, uint8_t **data, size_t *size) {
    ModelConfig mc;
    Model *m = NULL, *q = NULL;
    char *plain = fuzz_clear("seed-model"), *saved = fuzz_clear("seed-model-q"), *st = path_join(t ? saved : plain, "model.safetensors");
    size_t n = 0;
    uint8_t *bytes = NULL;
    int rc = config_parse(&mc, fuzz_model_config(kind), "seed") || !(m = model_create_random(&mc, 1)) || model_save(m, plain) ||
             (t && (!(q = model_load_quantized(plain, t, nested)) || model_save(q, saved))) || !(bytes = (uint8_t *)read_file(st, &n));
    if (!rc) {
        *data = xmalloc(n + 1);
        (*data)[0] = (uint8_t)kind;
        memcpy(*data + 1, bytes, n);
        *size = n + 1;
    }
    free(bytes);
    model_free(m);
    model_free(q);
    free(plain);
    free(saved);
    free(st);
    return rc ? -1 : 0;
}

int main(int argc, char **argv) {
    const char *corpus = argc > 1 ? argv[1] : "fuzz/corpus";
    uint8_t *data;
    size_t size;
    static const char sample[] = "Hello world! It's 2024: caf\xC3\xA9 \xE2\x96\x81 <|endoftext|>";
    char *model = fuzz_model_dir("seed-tokenizer", FUZZ_GPT2_CONFIG), *tok = path_join(model, "tokenizer.json");
    char *text = fuzz_write("seed-tokenizer", "text.txt", sample, strlen(sample));
    int rc = fuzz_join_files(tok, text, &data, &size) || write_seed(corpus, "tokenizer", "byte_level", data, size);
    free(model);
    free(tok);
    free(text);
    static const AdapterSeed adapters[] = {
        {"lora_gpt2", false, "c_attn", METHOD_LORA, 2, false},
        {"lora_llama_all_linear", true, "all-linear", METHOD_LORA, 2, true},
        {"vera_gpt2", false, "c_attn,c_fc", METHOD_VERA, 4, false},
        {"adalora_llama", true, "q_proj,v_proj", METHOD_ADALORA, 4, false},
    };
    for (size_t i = 0; !rc && i < sizeof adapters / sizeof *adapters; i++)
        rc = adapter_seed(&adapters[i], &data, &size) || write_seed(corpus, "adapter", adapters[i].name, data, size);
    static const char *methods[] = {"lora", "vera", "adalora"};
    for (int i = 0; !rc && i < 3; i++) rc = fuzz_checkpoint_seed(methods[i], &data, &size) || write_seed(corpus, "checkpoint", methods[i], data, size);
    static const struct { const char *name; QuantType t; bool nested; } models[FUZZ_MODEL_CONFIGS] = {
        {"gpt2", QUANT_NONE, false}, {"llama", QUANT_NONE, false}, {"qwen2", QUANT_NONE, false}, {"roberta", QUANT_NONE, false},
        {"llama_nf4_double_quant", QUANT_NF4, true}, {"gpt2_fp4", QUANT_FP4, false}, {"llama_int8", QUANT_INT8, false}};
    for (int k = 0; !rc && k < FUZZ_MODEL_CONFIGS; k++)
        rc = model_seed(k, models[k].t, models[k].nested, &data, &size) || write_seed(corpus, "model", models[k].name, data, size);
    if (rc) fprintf(stderr, "fuzz seeds: %s\n", peft_last_error());
    return rc ? 1 : 0;
}
