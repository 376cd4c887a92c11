// tokenizer_json.c: reads HF tokenizers' tokenizer.json into a Tokenizer. Only what BPE models of
// the GPT-2, Llama and Qwen families use is accepted; anything else is an error naming the field,
// so that a tokenizer we would get wrong is never used silently.
#include "tokenizer_internal.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cJSON *item(const cJSON *obj, const char *key) { return cJSON_GetObjectItemCaseSensitive(obj, key); }

static const char *str_item(const cJSON *obj, const char *key) {
    const cJSON *v = item(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool bool_item(const cJSON *obj, const char *key, bool fallback) {
    const cJSON *v = item(obj, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : fallback;
}

static bool is_null(const cJSON *v) { return !v || cJSON_IsNull(v); }

static bool int_value(const cJSON *v, int *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 2e9) return false;
    *out = (int)v->valuedouble;
    return true;
}

static int unsupported(const char *path, const char *field, const char *type) {
    return peft_fail("%s: %s.type \"%s\" is not supported", path, field, type ? type : "(missing)");
}

// ---- model ----

// field: what the object is called in messages ("model.vocab").
static int read_vocab(Tokenizer *t, const char *path, const char *field, const cJSON *vocab) {
    if (!cJSON_IsObject(vocab)) return peft_fail("%s: %s is missing or not an object", path, field);
    const cJSON *entry;
    cJSON_ArrayForEach(entry, vocab) {
        int id;
        if (!int_value(entry, &id)) return peft_fail("%s: %s[\"%s\"] is not an integer id", path, field, entry->string);
        if (tok_add_token(t, entry->string, strlen(entry->string), id) < 0) return peft_fail_context("%s: %s: ", path, field);
    }
    if (!vocab->child) return peft_fail("%s: %s is empty: every text would encode to nothing", path, field);
    return 0;
}

// A merge is "left right" (split at the one space) or, in newer files, ["left", "right"].
static int read_merge(Tokenizer *t, const cJSON *m) {
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *space = strchr(s, ' ');
        if (!space || strchr(space + 1, ' ')) return peft_fail("\"%s\" is not two tokens separated by one space", s);
        return tok_add_merge(t, s, space - s, space + 1, strlen(space + 1));
    }
    const cJSON *a = cJSON_GetArrayItem(m, 0), *b = cJSON_GetArrayItem(m, 1);
    if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) != 2 || !cJSON_IsString(a) || !cJSON_IsString(b))
        return peft_fail("not a string or a pair of strings");
    return tok_add_merge(t, a->valuestring, strlen(a->valuestring), b->valuestring, strlen(b->valuestring));
}

static int read_merges(Tokenizer *t, const char *path, const cJSON *merges) {
    if (!cJSON_IsArray(merges)) return peft_fail("%s: model.merges is missing or not an array", path);
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        if (read_merge(t, m) < 0) return peft_fail_context("%s: model.merges[%d]: ", path, i);
        i++;
    }
    return 0;
}

// BERT's WordPiece: vocab, unk_token (required: a word it cannot spell is that token), the
// continuing-subword prefix and the longest word in characters.
static int read_wordpiece(Tokenizer *t, const char *path, const cJSON *model) {
    t->wordpiece = true;
    const char *prefix = str_item(model, "continuing_subword_prefix"), *unk = str_item(model, "unk_token");
    if (!prefix) prefix = "##";
    if (strlen(prefix) >= sizeof t->wp_prefix) return peft_fail("%s: model.continuing_subword_prefix \"%s\" is too long", path, prefix);
    strcpy(t->wp_prefix, prefix);
    t->wp_max_chars = 100;
    const cJSON *max = item(model, "max_input_chars_per_word");
    if (max && (!int_value(max, &t->wp_max_chars) || t->wp_max_chars <= 0))
        return peft_fail("%s: model.max_input_chars_per_word must be a positive integer", path);
    if (read_vocab(t, path, "model.vocab", item(model, "vocab")) < 0) return -1;
    if (!unk || (t->unk_id = tok_find(t, unk, strlen(unk))) < 0)
        return peft_fail("%s: model.unk_token \"%s\" is missing from model.vocab", path, unk ? unk : "(none)");
    return 0;
}

static int read_model(Tokenizer *t, const char *path, const cJSON *model) {
    if (!cJSON_IsObject(model)) return peft_fail("%s: \"model\" is missing or not an object", path);
    const char *type = str_item(model, "type");
    if (type && strcmp(type, "WordPiece") == 0) return read_wordpiece(t, path, model);
    // Files from old versions of tokenizers leave out the type; a BPE model is told by its merges.
    if (type ? strcmp(type, "BPE") != 0 : !item(model, "merges")) return unsupported(path, "model", type);
    const char *prefix = str_item(model, "continuing_subword_prefix"), *suffix = str_item(model, "end_of_word_suffix");
    if (prefix && *prefix) return peft_fail("%s: model.continuing_subword_prefix \"%s\" is not supported", path, prefix);
    if (suffix && *suffix) return peft_fail("%s: model.end_of_word_suffix \"%s\" is not supported", path, suffix);
    const cJSON *dropout = item(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0) return peft_fail("%s: model.dropout is not supported (BPE dropout makes encoding random)", path);
    if (read_vocab(t, path, "model.vocab", item(model, "vocab")) < 0 || read_merges(t, path, item(model, "merges")) < 0) return -1;
    t->byte_fallback = bool_item(model, "byte_fallback", false);
    t->fuse_unk = bool_item(model, "fuse_unk", false);
    t->ignore_merges = bool_item(model, "ignore_merges", false);
    const char *unk = str_item(model, "unk_token");
    if (unk && (t->unk_id = tok_find(t, unk, strlen(unk))) < 0)
        return peft_fail("%s: model.unk_token \"%s\" is not in model.vocab", path, unk);
    return 0;
}

static int read_added_tokens(Tokenizer *t, const char *path, const cJSON *added) {
    if (is_null(added)) return 0;
    if (!cJSON_IsArray(added)) return peft_fail("%s: added_tokens is not an array", path);
    int i = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, added) {
        const char *content = str_item(a, "content");
        int id;
        if (!content || !int_value(item(a, "id"), &id)) return peft_fail("%s: added_tokens[%d] needs \"id\" and \"content\"", path, i);
        if (tok_add_added(t, content, id, bool_item(a, "special", false), bool_item(a, "lstrip", false), bool_item(a, "rstrip", false)) < 0)
            return peft_fail_context("%s: added_tokens[%d]: ", path, i);
        i++;
    }
    return 0;
}

// ---- normalizer ----

// Replace's pattern is {"String": "..."} or {"Regex": "..."}; only the first is supported.
static const char *string_pattern(const cJSON *node) { return str_item(item(node, "pattern"), "String"); }

static int add_norm(Tokenizer *t, const char *path, const char *field, NormKind kind, const char *from, const char *to) {
    if (t->n_norm == TOK_MAX_STEPS) return peft_fail("%s: %s: too many normalizer steps", path, field);
    t->norm[t->n_norm++] = (NormStep){kind, from ? xstrdup(from) : NULL, xstrdup(to)};
    return 0;
}

static int read_normalizer(Tokenizer *t, const char *path, const char *field, const cJSON *node) {
    if (is_null(node)) return 0;
    const char *type = str_item(node, "type");
    char sub[256];
    if (type && strcmp(type, "Sequence") == 0) {
        int i = 0;
        const cJSON *child;
        cJSON_ArrayForEach(child, item(node, "normalizers")) {
            snprintf(sub, sizeof sub, "%s.normalizers[%d]", field, i++);
            if (read_normalizer(t, path, sub, child) < 0) return -1;
        }
        return 0;
    }
    if (type && strcmp(type, "Prepend") == 0) {
        const char *prepend = str_item(node, "prepend");
        if (!prepend) return peft_fail("%s: %s.prepend is missing", path, field);
        return add_norm(t, path, field, NORM_PREPEND, NULL, prepend);
    }
    if (type && strcmp(type, "Replace") == 0) {
        const char *from = string_pattern(node), *to = str_item(node, "content");
        if (!from || !*from || !to) return peft_fail("%s: %s: only Replace with a non-empty {\"String\": ...} pattern and a content is supported", path, field);
        return add_norm(t, path, field, NORM_REPLACE, from, to);
    }
    // NFC leaves text that is already composed unchanged, which is nearly all text (and all ASCII).
    // Composing decomposed accents would need the Unicode tables, which we do not carry.
    if (type && strcmp(type, "NFC") == 0) return 0;
    if (type && strcmp(type, "BertNormalizer") == 0) {
        const cJSON *strip = item(node, "strip_accents");
        t->bert_clean_text = bool_item(node, "clean_text", true);
        t->bert_chinese = bool_item(node, "handle_chinese_chars", true);
        t->bert_lowercase = bool_item(node, "lowercase", true);
        t->bert_strip_accents = is_null(strip) ? t->bert_lowercase : bool_item(node, "strip_accents", false);
        return tok_bert_classes(t) < 0 ? -1 : add_norm(t, path, field, NORM_BERT, NULL, "");
    }
    return unsupported(path, field, type);
}

// ---- pre-tokenizer ----

static PreStep *add_pre(Tokenizer *t, const char *path, const char *field, PreKind kind) {
    if (t->n_pre == TOK_MAX_STEPS) { peft_fail("%s: %s: too many pre-tokenizer steps", path, field); return NULL; }
    PreStep *p = &t->pre[t->n_pre++];
    memset(p, 0, sizeof *p);
    p->kind = kind;
    return p;
}

static int read_split(Tokenizer *t, const char *path, const char *field, const cJSON *node) {
    const char *behavior = str_item(node, "behavior");
    const cJSON *pattern = item(node, "pattern");
    const char *regex = str_item(pattern, "Regex"), *literal = str_item(pattern, "String");
    if (!behavior || strcmp(behavior, "Isolated") != 0)
        return peft_fail("%s: %s.behavior \"%s\" is not supported (only Isolated)", path, field, behavior ? behavior : "(missing)");
    if (bool_item(node, "invert", false)) return peft_fail("%s: %s.invert true is not supported", path, field);
    if (!regex && !literal) return peft_fail("%s: %s.pattern needs \"Regex\" or \"String\"", path, field);
    PreStep *p = add_pre(t, path, field, PRE_SPLIT);
    if (!p || tok_pre_regex(p, path, regex ? regex : literal, !regex)) return -1;
    return 0;
}

static int read_byte_level(Tokenizer *t, const char *path, const char *field, const cJSON *node) {
    PreStep *p = add_pre(t, path, field, PRE_BYTE_LEVEL);
    if (!p) return -1;
    p->add_prefix_space = bool_item(node, "add_prefix_space", true);
    if (bool_item(node, "use_regex", true) && tok_pre_regex(p, path, TOK_GPT2_PATTERN, false)) return -1;
    t->byte_level = true;
    return 0;
}

// prepend_scheme "always" / "first" / "never"; files older than tokenizers 0.19 say add_prefix_space.
static int read_prepend_scheme(const char *path, const char *field, const cJSON *node, PrependScheme *out) {
    const char *scheme = str_item(node, "prepend_scheme");
    if (!scheme) { *out = bool_item(node, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER; return 0; }
    if (strcmp(scheme, "always") == 0) *out = PREPEND_ALWAYS;
    else if (strcmp(scheme, "first") == 0) *out = PREPEND_FIRST;
    else if (strcmp(scheme, "never") == 0) *out = PREPEND_NEVER;
    else return peft_fail("%s: %s.prepend_scheme \"%s\" is not supported", path, field, scheme);
    return 0;
}

static int read_metaspace(Tokenizer *t, const char *path, const char *field, const cJSON *node) {
    const char *replacement = str_item(node, "replacement");
    if (!replacement) replacement = "\xE2\x96\x81"; // "▁"
    PreStep *p = add_pre(t, path, field, PRE_METASPACE);
    if (!p) return -1;
    if (strlen(replacement) == 0 || strlen(replacement) >= sizeof p->replacement)
        return peft_fail("%s: %s.replacement must be one character", path, field);
    strcpy(p->replacement, replacement);
    p->split = bool_item(node, "split", true);
    return read_prepend_scheme(path, field, node, &p->prepend);
}

static int read_pre_tokenizer(Tokenizer *t, const char *path, const char *field, const cJSON *node) {
    if (is_null(node)) return 0;
    const char *type = str_item(node, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        char sub[256];
        int i = 0;
        const cJSON *child;
        cJSON_ArrayForEach(child, item(node, "pretokenizers")) {
            snprintf(sub, sizeof sub, "%s.pretokenizers[%d]", field, i++);
            if (read_pre_tokenizer(t, path, sub, child) < 0) return -1;
        }
        return 0;
    }
    if (type && strcmp(type, "Split") == 0) return read_split(t, path, field, node);
    if (type && strcmp(type, "ByteLevel") == 0) return read_byte_level(t, path, field, node);
    if (type && strcmp(type, "Metaspace") == 0) return read_metaspace(t, path, field, node);
    if (type && strcmp(type, "BertPreTokenizer") == 0) return tok_bert_classes(t) < 0 || !add_pre(t, path, field, PRE_BERT) ? -1 : 0;
    return unsupported(path, field, type);
}

// ---- decoder ----

static int add_dec_replace(Tokenizer *t, const char *path, const char *field, const char *from, const char *to) {
    if (t->n_dec_replace == TOK_MAX_STEPS) return peft_fail("%s: %s: too many decoder steps", path, field);
    t->dec_replace[t->n_dec_replace++] = (NormStep){NORM_REPLACE, xstrdup(from), xstrdup(to)};
    return 0;
}

static int read_strip(Tokenizer *t, const char *path, const char *field, const cJSON *node, bool after_fuse) {
    const char *content = str_item(node, "content");
    int start = 0, stop = 0;
    if (!content || strcmp(content, " ") != 0 || !int_value(item(node, "start"), &start) || !int_value(item(node, "stop"), &stop) || stop != 0 || start < 0)
        return peft_fail("%s: %s: only Strip of leading spaces (content \" \", stop 0) is supported", path, field);
    if (!after_fuse) return peft_fail("%s: %s: Strip is supported only after Fuse", path, field);
    t->dec_strip_start = start;
    return 0;
}

// The Metaspace decoder turns the stand-in back into spaces and drops the space it prepended.
static int read_metaspace_decoder(Tokenizer *t, const char *path, const char *field, const cJSON *node) {
    const char *replacement = str_item(node, "replacement");
    PrependScheme scheme;
    if (read_prepend_scheme(path, field, node, &scheme) < 0) return -1;
    if (scheme != PREPEND_NEVER) t->dec_strip_start = 1;
    return add_dec_replace(t, path, field, replacement && *replacement ? replacement : "\xE2\x96\x81", " ");
}

static int read_decoder(Tokenizer *t, const char *path, const char *field, const cJSON *node, bool *after_fuse) {
    if (is_null(node)) return peft_fail("%s: %s is missing: a decoder is needed to turn ids back into text", path, field);
    const char *type = str_item(node, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        char sub[256];
        int i = 0;
        const cJSON *child;
        cJSON_ArrayForEach(child, item(node, "decoders")) {
            snprintf(sub, sizeof sub, "%s.decoders[%d]", field, i++);
            if (read_decoder(t, path, sub, child, after_fuse) < 0) return -1;
        }
        return 0;
    }
    if (type && strcmp(type, "ByteLevel") == 0) { t->dec_byte_level = true; return 0; }
    if (type && strcmp(type, "ByteFallback") == 0) { t->dec_byte_fallback = true; return 0; }
    if (type && strcmp(type, "Fuse") == 0) { *after_fuse = true; return 0; }
    if (type && strcmp(type, "Strip") == 0) return read_strip(t, path, field, node, *after_fuse);
    if (type && strcmp(type, "Metaspace") == 0) return read_metaspace_decoder(t, path, field, node);
    if (type && strcmp(type, "WordPiece") == 0) {  // "##x" glued to the token before, other tokens after a space
        const char *prefix = str_item(node, "prefix");
        if (!t->wordpiece) return peft_fail("%s: %s.type \"WordPiece\" decodes a WordPiece model only", path, field);
        if (prefix && strcmp(prefix, t->wp_prefix)) return peft_fail("%s: %s.prefix \"%s\" differs from the model's \"%s\"", path, field, prefix, t->wp_prefix);
        t->dec_wordpiece = true;
        t->dec_cleanup = bool_item(node, "cleanup", true);
        t->dec_strip_start = 1;
        return 0;
    }
    if (type && strcmp(type, "Replace") == 0) {
        const char *from = string_pattern(node), *to = str_item(node, "content");
        if (!from || !*from || !to) return peft_fail("%s: %s: only Replace with a non-empty {\"String\": ...} pattern and a content is supported", path, field);
        return add_dec_replace(t, path, field, from, to);
    }
    return unsupported(path, field, type);
}

// ---- post-processor: only whether a bos token is put in front ----

static void read_template(Tokenizer *t, const cJSON *node) {
    const cJSON *first = cJSON_GetArrayItem(item(node, "single"), 0);
    const char *name = str_item(item(first, "SpecialToken"), "id");
    if (!name) return;
    const cJSON *ids = item(item(item(node, "special_tokens"), name), "ids");
    int id;
    if (!int_value(cJSON_GetArrayItem(ids, 0), &id)) id = tok_find(t, name, strlen(name));
    if (id < 0) return;
    t->bos = id;
    t->add_bos = true;
}

static void read_post_processor(Tokenizer *t, const cJSON *node) {
    const char *type = str_item(node, "type");
    if (!type) return;
    if (strcmp(type, "TemplateProcessing") == 0) read_template(t, node);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *child;
        cJSON_ArrayForEach(child, item(node, "processors")) read_post_processor(t, child);
    }
}

// ---- the file ----

static int check_pipeline(const Tokenizer *t, const char *path) {
    // ByteLevel re-spells bytes as characters; steps after it would see that spelling, not the text.
    for (int i = 0; i + 1 < t->n_pre; i++)
        if (t->pre[i].kind == PRE_BYTE_LEVEL) return peft_fail("%s: pre_tokenizer: ByteLevel must be the last step", path);
    return 0;
}

static int read_all(Tokenizer *t, const char *path, const cJSON *root) {
    bool after_fuse = false;
    if (read_model(t, path, item(root, "model")) < 0) return -1;
    if (read_added_tokens(t, path, item(root, "added_tokens")) < 0) return -1;
    if (read_normalizer(t, path, "normalizer", item(root, "normalizer")) < 0) return -1;
    if (read_pre_tokenizer(t, path, "pre_tokenizer", item(root, "pre_tokenizer")) < 0) return -1;
    if (check_pipeline(t, path) < 0) return -1;
    if (read_decoder(t, path, "decoder", item(root, "decoder"), &after_fuse) < 0) return -1;
    read_post_processor(t, item(root, "post_processor"));
    return 0;
}

static cJSON *parse_file(const char *path) {
    size_t len;
    char *text = read_file(path, &len);
    if (!text) return NULL;
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long offset = at && at >= text && at <= text + len ? (long)(at - text) : -1;
        free(text);
        peft_fail("%s: invalid JSON (near byte %ld)", path, offset);
        return NULL;
    }
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        peft_fail("%s: not a JSON object", path);
        return NULL;
    }
    return root;
}

int tok_read_json(Tokenizer *t, const char *path) {
    cJSON *root = parse_file(path);
    if (!root) return -1;
    int rc = read_all(t, path, root);
    cJSON_Delete(root);
    return rc;
}

int tok_read_vocab_json(Tokenizer *t, const char *path) {
    cJSON *root = parse_file(path);
    if (!root) return -1;
    int rc = read_vocab(t, path, "vocabulary", root);
    cJSON_Delete(root);
    return rc;
}

// ---- bos / eos from the model folder's config files ----

// A special token is named by its text, either plainly or as {"content": ...} (AddedToken).
static void set_named_token(const Tokenizer *t, const cJSON *v, int32_t *id) {
    const char *name = cJSON_IsString(v) ? v->valuestring : str_item(v, "content");
    int found = name ? tok_find(t, name, strlen(name)) : -1;
    if (found >= 0) *id = found;
}

// An id is a number or, for several eos tokens, a list whose first one we take.
static void set_token_id(const Tokenizer *t, const cJSON *v, int32_t *id) {
    int value;
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    if (int_value(v, &value) && value >= 0 && value < t->n_ids) *id = value;
}

int tok_read_configs(Tokenizer *t, const char *config_json, const char *tokenizer_config_json) {
    if (config_json) {
        cJSON *root = parse_file(config_json);
        if (!root) return -1;
        set_token_id(t, item(root, "bos_token_id"), &t->bos);
        set_token_id(t, item(root, "eos_token_id"), &t->eos);
        cJSON_Delete(root);
    }
    if (tokenizer_config_json) { // more specific than config.json, so read last
        cJSON *root = parse_file(tokenizer_config_json);
        if (!root) return -1;
        set_named_token(t, item(root, "bos_token"), &t->bos);
        set_named_token(t, item(root, "eos_token"), &t->eos);
        t->add_bos = bool_item(root, "add_bos_token", t->add_bos);
        cJSON_Delete(root);
    }
    return 0;
}
