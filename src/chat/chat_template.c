// chat_template.c: a model's chat template (a Jinja program, run by jinja.c) and what training and
// serving need from it besides the text: where the assistant turns are (the loss goes there) and
// what ends a turn (generation stops there).
//
// Where the loss goes. transformers marks assistant tokens only for templates that wrap them in
// {% generation %}, which few models' templates do; TRL's assistant-only loss needs them. We locate
// each assistant message's content in the rendered text instead:
//   1. render messages[0..i) with add_generation_prompt: when the whole rendering starts with that
//      text, assistant message i starts after it (this skips the turn's header, so that short
//      content cannot match inside a role name);
//   2. otherwise (templates that rewrite earlier turns when later ones follow, e.g. Mistral's system
//      prompt inside the last user turn) it starts after the previous assistant span and after the
//      content of the message before it, where that content is found;
//   3. from there, the content as written, else as trimmed (Llama-3 and Gemma trim it, Llama-2
//      strips it), is searched for. The span runs over it and over the end-of-turn text that
//      follows (after whitespace, as Llama-2's " </s>"), so that the model learns to stop. An empty
//      content trains the end of turn alone.
// A template that changes an assistant content in any other way (rewrites it, or writes tool calls in
// its own syntax) cannot be located: the data is refused with the message's number.
//
// What ends a turn. A probe conversation (a user turn, an assistant turn) is rendered; after the
// assistant content and any whitespace, the template's eos_token, or a special-token-like marker
// (<|eot_id|>, <|im_end|>, <end_of_turn>, <|end|>, </s>: "<" then up to 40 characters without
// spaces or "<" then ">"), is the end of turn. Templates that write nothing there have none ("").
#include "data.h"
#include "jinja_internal.h"
#include "json_bytes.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

// ChatML, for models without a template of their own (transformers' former default).
static const char CHATML[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

void chat_template_free(ChatTemplate *ct) {
    free(ct->source);
    jinja_free(ct->tmpl);
    cJSON_Delete(ct->vars);
    free(ct->end_of_turn);
    memset(ct, 0, sizeof *ct);
}

static const cJSON *var(const ChatTemplate *ct, const char *name) { return cJSON_GetObjectItemCaseSensitive(ct->vars, name); }

int chat_template_render(const ChatTemplate *ct, const cJSON *messages, const cJSON *tools, bool add_generation_prompt, char **text, size_t *len) {
    // The call's own variables; messages and tools are borrowed (references).
    cJSON *call = cJSON_CreateObject();
    cJSON_AddItemToObject(call, "messages", cJSON_CreateArrayReference(messages ? messages->child : NULL));
    cJSON_AddItemToObject(call, "tools", tools ? cJSON_CreateArrayReference(tools->child) : cJSON_CreateNull());
    cJSON_AddNullToObject(call, "documents");
    cJSON_AddBoolToObject(call, "add_generation_prompt", add_generation_prompt);
    const cJSON *vars[] = {ct->vars, call};
    int rc = jinja_render(ct->tmpl, vars, 2, text, len);
    cJSON_Delete(call);
    return rc;
}

static cJSON *message(const char *role, const char *content) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToObject(m, "role", json_bytes_string(role, strlen(role)));
    cJSON_AddItemToObject(m, "content", json_bytes_string(content, strlen(content)));
    return m;
}

static JStr string_of(const cJSON *x) {
    size_t n;
    const char *s = cJSON_IsString(x) ? json_bytes(x, &n) : NULL;
    return s ? (JStr){s, n} : (JStr){NULL, 0};
}

static const char *find(const char *text, size_t len, size_t from, JStr w) {
    if (from > len) return NULL;
    if (w.n == 0) return text + from;
    return memmem(text + from, len - from, w.p, w.n);
}

static size_t skip_space(const char *text, size_t len, size_t at) {
    JStr rest = js_trim((JStr){text + at, len - at}, true, false);
    return (size_t)(rest.p - text);
}

// A special-token-like marker at text[at..]: "<", up to 40 bytes without space or "<", ">".
static size_t marker_len(const char *text, size_t len, size_t at) {
    if (at >= len || text[at] != '<') return 0;
    for (size_t i = at + 1; i < len && i - at <= 41; i++) {
        if (text[i] == '>') return i > at + 1 ? i - at + 1 : 0;
        if (text[i] == '<' || text[i] == ' ' || text[i] == '\n' || text[i] == '\t') return 0;
    }
    return 0;
}

// The end-of-turn text (see the top of the file).
static void derive_end_of_turn(ChatTemplate *ct) {
    static const char *probe = "PEFT_PROBE_ASSISTANT_7f3a";
    cJSON *msgs = cJSON_CreateArray();
    cJSON_AddItemToArray(msgs, message("user", "PEFT_PROBE_USER_7f3a"));
    cJSON_AddItemToArray(msgs, message("assistant", probe));
    char *text = NULL;
    size_t len = 0;
    ct->end_of_turn = xstrdup("");
    ct->eot_len = 0;
    if (!chat_template_render(ct, msgs, NULL, false, &text, &len)) {
        const char *at = find(text, len, 0, (JStr){probe, strlen(probe)});
        if (at) {
            size_t p = skip_space(text, len, (size_t)(at - text) + strlen(probe));
            JStr eos = string_of(var(ct, "eos_token"));
            size_t n = eos.n && len - p >= eos.n && !memcmp(text + p, eos.p, eos.n) ? eos.n : marker_len(text, len, p);
            if (n) {
                free(ct->end_of_turn);
                ct->end_of_turn = xmalloc(n + 1);
                memcpy(ct->end_of_turn, text + p, n);
                ct->end_of_turn[n] = 0;
                ct->eot_len = n;
            }
        }
        free(text);
    }
    peft_clear_error();
    cJSON_Delete(msgs);
}

int chat_template_parse(ChatTemplate *ct, const char *text, size_t len, const char *source, const cJSON *special_tokens) {
    memset(ct, 0, sizeof *ct);
    if (!(ct->tmpl = jinja_parse(text, len, source))) return -1;
    ct->source = xstrdup(source);
    ct->vars = cJSON_CreateObject();
    for (const cJSON *t = special_tokens ? special_tokens->child : NULL; t; t = t->next)
        if (cJSON_IsString(t)) cJSON_AddItemToObject(ct->vars, t->string, json_bytes_string(t->valuestring, strlen(t->valuestring)));
    derive_end_of_turn(ct);
    return 0;
}

// ---- loading a model's template ----

// tokenizer_config.json's "chat_template": a string, or a list of {"name", "template"} (the one
// named "default"). 0 with *out (NULL when there is none), or -1.
static int template_item(const cJSON *root, const char *path, const cJSON **out) {
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    *out = cJSON_IsString(ct) ? ct : NULL;
    if (!ct || cJSON_IsNull(ct) || cJSON_IsString(ct)) return 0;
    if (!cJSON_IsArray(ct)) return peft_fail("%s: \"chat_template\" must be a string or a list of {\"name\", \"template\"}", path);
    const cJSON *e;
    cJSON_ArrayForEach(e, ct) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name"), *tt = cJSON_GetObjectItemCaseSensitive(e, "template");
        if (!cJSON_IsString(name) || !cJSON_IsString(tt)) return peft_fail("%s: each \"chat_template\" entry needs a string \"name\" and \"template\"", path);
        if (!strcmp(name->valuestring, "default")) { *out = tt; return 0; }
    }
    return peft_fail("%s: \"chat_template\" lists named templates but none named \"default\"", path);
}

// The special tokens transformers passes to the template (bos_token, eos_token, ...): strings, or
// {"content": ...} (AddedToken) in tokenizer_config.json, else in special_tokens_map.json.
static void add_special_tokens(cJSON *vars, const cJSON *root) {
    static const char *keys[] = {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"};
    for (size_t i = 0; root && i < sizeof keys / sizeof *keys; i++) {
        if (cJSON_GetObjectItemCaseSensitive(vars, keys[i])) continue;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
        if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(v)) cJSON_AddStringToObject(vars, keys[i], v->valuestring);
    }
}

static cJSON *read_json(const char *path, bool *failed) {
    *failed = false;
    if (!file_exists(path)) return NULL;
    size_t len;
    char *text = read_file(path, &len);
    cJSON *j = text ? json_parse_bytes(text, len) : NULL;
    free(text);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        *failed = true;
        peft_fail("%s: invalid JSON (an object expected)", path);
        return NULL;
    }
    return j;
}

int chat_template_load(ChatTemplate *ct, const char *model_dir) {
    memset(ct, 0, sizeof *ct);
    char *config_path = path_join(model_dir, "tokenizer_config.json"), *map_path = path_join(model_dir, "special_tokens_map.json");
    char *jinja_path = path_join(model_dir, "chat_template.jinja");
    bool bad_config, bad_map;
    cJSON *config = read_json(config_path, &bad_config), *map = bad_config ? NULL : read_json(map_path, &bad_map);
    int rc = -1;
    if (bad_config || (!config && bad_map)) goto out;
    cJSON *vars = cJSON_CreateObject();
    add_special_tokens(vars, config);
    add_special_tokens(vars, map);
    if (file_exists(jinja_path)) {  // transformers reads it before tokenizer_config.json's
        size_t len;
        char *text = read_file(jinja_path, &len);
        rc = text ? chat_template_parse(ct, text, len, jinja_path, vars) : -1;
        free(text);
    } else {
        const cJSON *item = NULL;
        if (config && template_item(config, config_path, &item)) rc = -1;
        else if (item) {
            size_t len;
            const char *text = json_bytes(item, &len);
            rc = chat_template_parse(ct, text, len, config_path, vars);
        } else {
            char *source = xasprintf("ChatML (%s has no chat template)", model_dir);
            rc = chat_template_parse(ct, CHATML, sizeof CHATML - 1, source, vars);
            free(source);
            ct->is_default = true;
        }
    }
    cJSON_Delete(vars);
out:
    cJSON_Delete(config);
    cJSON_Delete(map);
    free(config_path);
    free(map_path);
    free(jinja_path);
    return rc;
}

// ---- where the assistant turns are ----

static bool has_prefix(const char *text, size_t len, const char *p, size_t n) { return n <= len && !memcmp(text, p, n); }

// Where message i's search starts when the rendering of messages[0..i) with a generation prompt is
// a prefix of the whole (1. above); SIZE_MAX when it is not.
static size_t generation_prompt_end(const ChatTemplate *ct, const cJSON *messages, const cJSON *tools, int i, const char *text, size_t len) {
    cJSON *head = cJSON_CreateArray();
    int k = 0;
    for (const cJSON *m = messages->child; m && k < i; m = m->next, k++) cJSON_AddItemToArray(head, cJSON_CreateObjectReference(m->child));
    char *p = NULL;
    size_t n = 0, end = (size_t)-1;
    if (!chat_template_render(ct, head, tools, true, &p, &n) && has_prefix(text, len, p, n)) end = n;
    free(p);
    cJSON_Delete(head);
    peft_clear_error();
    return end;
}

int chat_template_spans(const ChatTemplate *ct, const cJSON *messages, const cJSON *tools, const char *text, size_t len, ChatSpan **spans,
                        int *n_spans) {
    *spans = NULL;
    *n_spans = 0;
    size_t cursor = 0;
    JStr before = {NULL, 0};  // the content of the last message that is not a system or assistant one
    int i = 0;
    for (const cJSON *m = messages->child; m; m = m->next, i++) {
        JStr role = string_of(cJSON_GetObjectItemCaseSensitive(m, "role")), content = string_of(cJSON_GetObjectItemCaseSensitive(m, "content"));
        if (!role.p || !jstr_eq(role, "assistant")) {
            if (content.p && !(role.p && jstr_eq(role, "system"))) before = content;
            continue;
        }
        size_t from = generation_prompt_end(ct, messages, tools, i, text, len);
        if (from == (size_t)-1) {
            from = cursor;
            const char *at = before.p && before.n ? find(text, len, from, before) : NULL;
            if (at) from = (size_t)(at - text) + before.n;
        } else if (from < cursor) from = cursor;
        before = (JStr){NULL, 0};
        if (!content.p) content = (JStr){"", 0};
        JStr trimmed = js_trim(content, true, true);
        const char *at = find(text, len, from, content);
        size_t n = content.n;
        if (!at && trimmed.n != content.n) { at = find(text, len, from, trimmed); n = trimmed.n; }
        if (trimmed.n == 0) {  // an empty turn: its end of turn alone
            at = ct->eot_len ? find(text, len, from, (JStr){ct->end_of_turn, ct->eot_len}) : NULL;
            n = 0;
            if (!at) continue;
        }
        if (!at) {
            free(*spans);
            *spans = NULL;
            *n_spans = 0;
            return peft_fail("messages[%d]: %s writes this assistant message's content changed (neither as given nor trimmed is "
                             "in the rendered text), so its loss cannot be placed: train with --train-on-prompt, or use a template "
                             "that writes assistant contents as they are", i, ct->source);
        }
        size_t start = (size_t)(at - text), end = start + n;
        size_t e = skip_space(text, len, end);
        if (ct->eot_len && len - e >= ct->eot_len && !memcmp(text + e, ct->end_of_turn, ct->eot_len)) end = e + ct->eot_len;
        *spans = xrealloc(*spans, sizeof(ChatSpan) * (size_t)(*n_spans + 1));
        (*spans)[(*n_spans)++] = (ChatSpan){start, end};
        cursor = end;
    }
    return 0;
}

int chat_template_stop_id(const ChatTemplate *ct, const Tokenizer *tok) {
    int32_t *ids = NULL;
    int n = 0, id = -1;
    if (ct->eot_len && !tokenizer_encode(tok, ct->end_of_turn, ct->eot_len, &ids, &n) && n == 1) id = ids[0];
    free(ids);
    peft_clear_error();
    return id;
}
