#include "helpers.h"
#include "test.h"
#include "byte_tokenizer.h"
#include "config.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>

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
