// tokenizer_files.c: finding and loading a model folder's tokenizer, GPT-2's vocab + merges files,
// and checking a tokenizer against reference cases.
#include "json_bytes.h"
#include "tokenizer_internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

Tokenizer *tokenizer_load_json(const char *path) {
    Tokenizer *t = tok_new(path);
    if (tok_read_json(t, path) < 0 || tok_finish(t) < 0) { tokenizer_free(t); return NULL; }
    return t;
}

// merges.txt / vocab.bpe: an optional "#version" line, then "left right" per line, best first.
static int read_merges_txt(Tokenizer *t, const char *path) {
    char *text = read_file(path, NULL);
    if (!text) return -1;
    int line_no = 0, rc = 0;
    for (char *line = text, *next; line && rc == 0; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        line_no++;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r') line[--len] = 0;
        if (len == 0 || strncmp(line, "#version", 8) == 0) continue;
        char *space = strchr(line, ' ');
        if (!space || strchr(space + 1, ' ')) rc = peft_fail("%s: line %d: \"%s\" is not two tokens separated by one space", path, line_no, line);
        else if (tok_add_merge(t, line, space - line, space + 1, strlen(space + 1)) < 0) rc = peft_fail_context("%s: line %d: ", path, line_no);
    }
    free(text);
    return rc;
}

// GPT-2 as HF's GPT2TokenizerFast sets it up: byte-level BPE with GPT-2's regex, no prefix space,
// <|endoftext|> the one special token and both bos and eos.
static int gpt2_pipeline(Tokenizer *t) {
    PreStep *p = &t->pre[t->n_pre++];
    memset(p, 0, sizeof *p);
    p->kind = PRE_BYTE_LEVEL;
    if (tok_pre_regex(p, t->source, TOK_GPT2_PATTERN, false)) return -1;
    t->byte_level = t->dec_byte_level = true;
    int eot = tok_find(t, "<|endoftext|>", 13);
    if (eot >= 0) {
        if (tok_add_added(t, "<|endoftext|>", eot, true, false, false) < 0) return -1;
        t->bos = t->eos = eot;
    }
    return 0;
}

Tokenizer *tokenizer_load_gpt2_files(const char *vocab_json, const char *merges_txt) {
    Tokenizer *t = tok_new(vocab_json);
    if (tok_read_vocab_json(t, vocab_json) < 0 || read_merges_txt(t, merges_txt) < 0 || gpt2_pipeline(t) < 0 || tok_finish(t) < 0) {
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

// Path of dir/name when that file exists, else NULL (malloc'd).
static char *existing(const char *dir, const char *name) {
    char *path = path_join(dir, name);
    if (file_exists(path)) return path;
    free(path);
    return NULL;
}

// GPT-2's two-file layouts: HF's, and OpenAI's original names.
static const char *const GPT2_PAIRS[][2] = {{"vocab.json", "merges.txt"}, {"encoder.json", "vocab.bpe"}};

static bool present(const char *dir, const char *name) {
    char *path = existing(dir, name);
    bool found = path != NULL;
    free(path);
    return found;
}

bool tokenizer_files_exist(const char *dir) {
    bool found = present(dir, "tokenizer.json");
    for (int i = 0; i < 2; i++) found |= present(dir, GPT2_PAIRS[i][0]) && present(dir, GPT2_PAIRS[i][1]);
    return found;
}

static Tokenizer *load_tokenizer_files(const char *dir) {
    char *json = existing(dir, "tokenizer.json");
    if (json) { Tokenizer *t = tokenizer_load_json(json); free(json); return t; }
    for (int i = 0; i < 2; i++) {
        char *vocab = existing(dir, GPT2_PAIRS[i][0]), *merges = existing(dir, GPT2_PAIRS[i][1]);
        Tokenizer *t = vocab && merges ? tokenizer_load_gpt2_files(vocab, merges) : NULL;
        bool found = vocab && merges;
        free(vocab);
        free(merges);
        if (found) return t;
    }
    peft_fail("%s: no tokenizer files (looked for tokenizer.json, vocab.json + merges.txt, encoder.json + vocab.bpe)", dir);
    return NULL;
}

Tokenizer *tokenizer_load(const char *dir) {
    if (!dir_exists(dir)) { peft_fail("%s: not a directory", dir); return NULL; }
    Tokenizer *t = load_tokenizer_files(dir);
    if (!t) return NULL;
    char *config = existing(dir, "config.json"), *tokenizer_config = existing(dir, "tokenizer_config.json");
    int rc = tok_read_configs(t, config, tokenizer_config);
    free(config);
    free(tokenizer_config);
    if (rc < 0) { tokenizer_free(t); return NULL; }
    return t;
}

// ---- reference cases ----

// Compare one case (text: len bytes); returns false with a description in msg.
static bool check_case(const Tokenizer *t, const char *text, size_t len, const cJSON *want, char *msg, size_t cap) {
    int32_t *ids;
    int n;
    if (tokenizer_encode(t, text, len, &ids, &n) < 0) { snprintf(msg, cap, "encode failed: %s", peft_last_error()); return false; }
    bool ok = n == cJSON_GetArraySize(want);
    int i = 0;
    for (; ok && i < n; i++) ok = cJSON_GetArrayItem(want, i)->valuedouble == ids[i];
    if (!ok) {
        int at = i ? i - 1 : 0;
        const cJSON *w = cJSON_GetArrayItem(want, at);
        snprintf(msg, cap, "got %d ids, want %d; first difference at %d: got %d, want %g", n, cJSON_GetArraySize(want), at,
                 at < n ? (int)ids[at] : -1, w ? w->valuedouble : -1.0);
    }
    size_t back_len;
    char *back = ok ? tokenizer_decode(t, ids, n, &back_len) : NULL;
    if (back && (back_len != len || memcmp(back, text, len))) { snprintf(msg, cap, "decodes to \"%.80s\"", back); ok = false; }
    free(back);
    free(ids);
    return ok;
}

// Runs the cases of one cases.jsonl text; returns the number that fail.
static int check_lines(const Tokenizer *t, char *text, const char *path, int *n_cases, char *first_failure, size_t cap) {
    int failures = 0, line_no = 0;
    for (char *line = text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        line_no++;
        if (strspn(line, " \t\r") == strlen(line)) continue;
        (*n_cases)++;
        char msg[512];
        cJSON *c = json_parse_bytes(line, strlen(line));
        const cJSON *txt = cJSON_GetObjectItemCaseSensitive(c, "text"), *ids = cJSON_GetObjectItemCaseSensitive(c, "ids");
        bool ok = cJSON_IsString(txt) && cJSON_IsArray(ids);
        if (!ok) snprintf(msg, sizeof msg, "not a {\"text\", \"ids\"} object");
        else {
            size_t len;
            const char *s = json_bytes(txt, &len);
            ok = check_case(t, s, len, ids, msg, sizeof msg);
        }
        if (!ok && failures++ == 0 && cap)
            snprintf(first_failure, cap, "%s: line %d (\"%.60s\"): %s", path, line_no, cJSON_IsString(txt) ? txt->valuestring : "", msg);
        cJSON_Delete(c);
    }
    return failures;
}

int tokenizer_check_cases(const char *dir, int *n_cases, char *first_failure, size_t cap) {
    *n_cases = 0;
    if (cap) first_failure[0] = 0;
    char *path = path_join(dir, "cases.jsonl");
    Tokenizer *t = tokenizer_load(dir);
    char *text = t ? read_file(path, NULL) : NULL;
    int failures = -1;
    if (text) failures = check_lines(t, text, path, n_cases, first_failure, cap);
    else if (cap) snprintf(first_failure, cap, "%s", peft_last_error());
    free(text);
    free(path);
    tokenizer_free(t);
    return failures;
}
