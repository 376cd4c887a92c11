#include "byte_tokenizer.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest move to U+0100 and up.
static int byte_codepoint(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
    return 256 + n;
}

static void utf8(int cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; out[1] = 0; }
    else { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); out[2] = 0; }
}

static int write_json(const char *dir, const char *name, cJSON *j) {
    char *text = cJSON_Print(j), *path = path_join(dir, name);
    int rc = write_file_atomic(path, text, strlen(text));
    free(text);
    free(path);
    cJSON_Delete(j);
    return rc;
}

int byte_tokenizer_write(const char *dir) {
    cJSON *tok = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    cJSON_AddStringToObject(tok, "version", "1.0");
    cJSON *added = cJSON_AddArrayToObject(tok, "added_tokens"), *eos = cJSON_CreateObject();
    cJSON_AddNumberToObject(eos, "id", BYTE_TOKENIZER_EOS);
    cJSON_AddStringToObject(eos, "content", "<|endoftext|>");
    cJSON_AddBoolToObject(eos, "single_word", false);
    cJSON_AddBoolToObject(eos, "lstrip", false);
    cJSON_AddBoolToObject(eos, "rstrip", false);
    cJSON_AddBoolToObject(eos, "normalized", true);
    cJSON_AddBoolToObject(eos, "special", true);
    cJSON_AddItemToArray(added, eos);
    cJSON_AddNullToObject(tok, "normalizer");
    cJSON *pre = cJSON_AddObjectToObject(tok, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", false);
    cJSON_AddBoolToObject(pre, "trim_offsets", true);
    cJSON_AddBoolToObject(pre, "use_regex", true);
    cJSON_AddNullToObject(tok, "post_processor");
    cJSON *dec = cJSON_AddObjectToObject(tok, "decoder");
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON_AddBoolToObject(dec, "add_prefix_space", true);
    cJSON_AddBoolToObject(dec, "trim_offsets", true);
    cJSON_AddBoolToObject(dec, "use_regex", true);
    cJSON *model = cJSON_AddObjectToObject(tok, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddBoolToObject(model, "fuse_unk", false);
    cJSON_AddBoolToObject(model, "byte_fallback", false);
    for (int b = 0; b < 256; b++) {
        char s[4];
        utf8(byte_codepoint(b), s);
        cJSON_AddNumberToObject(vocab, s, b);
    }
    cJSON_AddNumberToObject(vocab, "<|endoftext|>", BYTE_TOKENIZER_EOS);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddArrayToObject(model, "merges");
    if (write_json(dir, "tokenizer.json", tok)) return -1;
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "tokenizer_class", "GPT2TokenizerFast");
    cJSON_AddStringToObject(cfg, "bos_token", "<|endoftext|>");
    cJSON_AddStringToObject(cfg, "eos_token", "<|endoftext|>");
    cJSON_AddStringToObject(cfg, "unk_token", "<|endoftext|>");
    cJSON_AddBoolToObject(cfg, "add_bos_token", false);
    return write_json(dir, "tokenizer_config.json", cfg);
}
