// common.c: what the fuzz targets share (fuzz.h).
#include "fuzz.h"
#include "byte_tokenizer.h"
#include "config.h"
#include "model.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const FUZZ_GPT2_CONFIG =
    "{\"model_type\":\"gpt2\",\"vocab_size\":257,\"n_embd\":16,\"n_head\":2,\"n_layer\":2,\"n_positions\":32,"
    "\"layer_norm_epsilon\":1e-5,\"bos_token_id\":256,\"eos_token_id\":256}";
const char *const FUZZ_LLAMA_CONFIG =
    "{\"model_type\":\"llama\",\"vocab_size\":257,\"hidden_size\":16,\"intermediate_size\":24,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"num_hidden_layers\":2,\"max_position_embeddings\":32,\"rms_norm_eps\":1e-5,"
    "\"hidden_act\":\"silu\",\"tie_word_embeddings\":false,\"bos_token_id\":256,\"eos_token_id\":256}";
const char *const FUZZ_ROBERTA_CONFIG =
    "{\"model_type\":\"roberta\",\"vocab_size\":257,\"hidden_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
    "\"intermediate_size\":24,\"max_position_embeddings\":40,\"type_vocab_size\":1,\"layer_norm_eps\":1e-5,"
    "\"pad_token_id\":1,\"bos_token_id\":256,\"eos_token_id\":256,\"hidden_act\":\"gelu\",\"num_labels\":3,"
    "\"id2label\":{\"0\":\"neg\",\"1\":\"neu\",\"2\":\"pos\"}}";

// fuzz_model's configs: the tiny models above, a Qwen2, and three saved quantized by bitsandbytes.
#define TINY_LLAMA_KEYS \
    "\"vocab_size\":257,\"hidden_size\":16,\"intermediate_size\":24,\"num_attention_heads\":4,\"num_key_value_heads\":2," \
    "\"num_hidden_layers\":2,\"max_position_embeddings\":32,\"rms_norm_eps\":1e-5,\"hidden_act\":\"silu\",\"bos_token_id\":256,\"eos_token_id\":256"
#define BNB(four, eight, type, nested) \
    ",\"quantization_config\":{\"quant_method\":\"bitsandbytes\",\"load_in_4bit\":" four ",\"load_in_8bit\":" eight \
    ",\"bnb_4bit_quant_type\":\"" type "\",\"bnb_4bit_use_double_quant\":" nested "}}"
const char *fuzz_model_config(int kind) {
    switch (kind) {
    case 0: return FUZZ_GPT2_CONFIG;
    case 1: return FUZZ_LLAMA_CONFIG;
    case 2: return "{\"model_type\":\"qwen2\",\"tie_word_embeddings\":true," TINY_LLAMA_KEYS "}";
    case 3: return FUZZ_ROBERTA_CONFIG;
    case 4: return "{\"model_type\":\"llama\",\"tie_word_embeddings\":false," TINY_LLAMA_KEYS BNB("true", "false", "nf4", "true");
    case 5: return "{\"model_type\":\"gpt2\",\"vocab_size\":257,\"n_embd\":16,\"n_head\":2,\"n_layer\":2,\"n_positions\":32,"
                   "\"layer_norm_epsilon\":1e-5,\"bos_token_id\":256,\"eos_token_id\":256" BNB("true", "false", "fp4", "false");
    default: return "{\"model_type\":\"llama\",\"tie_word_embeddings\":false," TINY_LLAMA_KEYS BNB("false", "true", "fp4", "false");
    }
}


// Qwen2's template: ChatML with a default system turn.
static const char *const CHATML_TEMPLATE =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s:%d: fuzz property broken: %s: ", file, line, cond);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

char *fuzz_split(const uint8_t *data, size_t size, const uint8_t **rest, size_t *rest_len) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t head = nul ? (size_t)(nul - data) : size;
    char *s = xmalloc(head + 1);
    memcpy(s, data, head);
    s[head] = 0;
    *rest = nul ? nul + 1 : NULL;
    *rest_len = nul ? size - head - 1 : 0;
    return s;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int remove_tree(const char *dir) { return dir_exists(dir) ? nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) : 0; }

static char scratch[256];

static void remove_scratch(void) {
    if (remove_tree(scratch)) fprintf(stderr, "warning: could not remove %s\n", scratch);
}

const char *fuzz_dir(void) {
    if (scratch[0]) return scratch;
    // In memory when it can be: every file written is synced (write_file_atomic), on a disk a slow wait.
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !tmp[0]) tmp = dir_exists("/dev/shm") ? "/dev/shm" : "/tmp";
    snprintf(scratch, sizeof scratch, "%s/peft-fuzz-XXXXXX", tmp);
    if (!mkdtemp(scratch)) { perror(scratch); abort(); }
    atexit(remove_scratch);
    return scratch;
}

char *fuzz_write(const char *sub, const char *name, const void *data, size_t len) {
    char *dir = path_join(fuzz_dir(), sub), *path = path_join(dir, name);
    FUZZ_CHECK(!make_dir(dir) && !write_file_atomic(path, data, len), "%s", peft_last_error());
    free(dir);
    return path;
}

int fuzz_join_files(const char *first, const char *second, uint8_t **data, size_t *size) {
    size_t na = 0, nb = 0;
    char *a = read_file(first, &na), *b = a ? read_file(second, &nb) : NULL;
    if (b) {
        *size = na + 1 + nb;
        *data = xmalloc(*size);
        memcpy(*data, a, na + 1);  // with its NUL
        memcpy(*data + na + 1, b, nb);
    }
    free(a);
    free(b);
    return b ? 0 : -1;
}

char *fuzz_clear(const char *sub) {
    char *dir = path_join(fuzz_dir(), sub);
    FUZZ_CHECK(remove_tree(dir) == 0, "cannot remove %s", dir);
    return dir;
}

char *fuzz_model_dir(const char *name, const char *config_json) {
    char *dir = path_join(fuzz_dir(), name), *tc_path = path_join(dir, "tokenizer_config.json");
    ModelConfig mc;
    Model *m = NULL;
    FUZZ_CHECK(!config_parse(&mc, config_json, name) && (m = model_create_random(&mc, 1)) && !model_save(m, dir) && !byte_tokenizer_write(dir),
               "%s", peft_last_error());
    model_free(m);
    char *text = read_file(tc_path, NULL);
    cJSON *tc = text ? cJSON_Parse(text) : NULL;
    FUZZ_CHECK(tc, "%s", peft_last_error());
    cJSON_AddStringToObject(tc, "chat_template", CHATML_TEMPLATE);
    free(text);
    text = cJSON_Print(tc);
    FUZZ_CHECK(!write_file_atomic(tc_path, text, strlen(text)), "%s", peft_last_error());
    free(text);
    cJSON_Delete(tc);
    free(tc_path);
    return dir;
}

void fuzz_check_dataset(const Dataset *ds, const Tokenizer *tok, int seq_len) {
    long loss = 0;
    for (int s = 0; s < ds->n_seq; s++) {
        long a = ds->offset[s], z = ds->offset[s + 1];
        FUZZ_CHECK(z - a >= 1 && z - a <= seq_len && z - a <= ds->max_len, "sequence %d has %ld tokens (seq_len %d)", s, z - a, seq_len);
        for (long i = a; i < z; i++) {
            FUZZ_CHECK(ds->ids[i] >= 0 && ds->ids[i] < tokenizer_vocab_size(tok), "id %d", ds->ids[i]);
            FUZZ_CHECK(ds->labels[i] == -100 || ds->labels[i] == ds->ids[i], "label %d for id %d", ds->labels[i], ds->ids[i]);
            loss += i > a && ds->labels[i] != -100;  // the first position predicts nothing
        }
    }
    FUZZ_CHECK(loss == ds->n_loss_tokens, "%ld loss tokens counted as %ld", loss, ds->n_loss_tokens);
}
