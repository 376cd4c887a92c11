// chat_template.c: rendering chat messages with a model's chat template. HF templates are Jinja
// programs; rather than run Jinja we recognise the ChatML family (Qwen, SmolLM, many fine-tunes):
//   [<|im_start|>system\n{default}<|im_end|>\n]  <|im_start|>{role}\n{content}<|im_end|>\n ...
// and refuse other templates with a clear error, so a conversation is never rendered differently
// from how the model was trained to see it.
#include "data.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#define IM_START "<|im_start|>"
#define IM_END "<|im_end|>"

void chat_template_free(ChatTemplate *ct) {
    free(ct->source);
    free(ct->default_system);
    memset(ct, 0, sizeof *ct);
}

// Decode a Jinja string literal's escapes (\n, \t, \', \", \\) in s[0..n).
static char *unescape(const char *s, size_t n) {
    char *out = xmalloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 == n) { *o++ = s[i]; continue; }
        char c = s[++i];
        *o++ = c == 'n' ? '\n' : c == 't' ? '\t' : c;
    }
    *o = 0;
    return out;
}

// Qwen2-style templates write a fixed system turn when the conversation has none:
//   {% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are ...<|im_end|>\n' }}
// It is the first "<|im_start|>system\n" followed by literal text (no quote, no expression) up to <|im_end|>.
static char *find_default_system(const char *t) {
    static const char *heads[] = {IM_START "system\\n", IM_START "system\n"};
    for (const char *p = t; (p = strstr(p, IM_START "system")); p++) {
        for (int h = 0; h < 2; h++) {
            size_t hl = strlen(heads[h]);
            if (strncmp(p, heads[h], hl)) continue;
            const char *body = p + hl, *end = strstr(body, IM_END);
            if (!end || end == body) continue;
            size_t n = end - body;
            if (memchr(body, '\'', n) || memchr(body, '"', n) || memchr(body, '{', n) || memchr(body, '}', n)) continue;
            return unescape(body, n);
        }
    }
    return NULL;
}

static bool mentions(const char *t, const char *a, const char *b, const char *c) {
    return strstr(t, a) || strstr(t, b) || strstr(t, c);
}

int chat_template_parse(ChatTemplate *ct, const char *t, const char *source) {
    memset(ct, 0, sizeof *ct);
    bool chatml = strstr(t, IM_START) && strstr(t, IM_END) &&
                  mentions(t, "message['role']", "message[\"role\"]", "message.role") &&
                  mentions(t, "message['content']", "message[\"content\"]", "message.content");
    if (!chatml)
        return peft_fail("%s: the chat template is not a ChatML template (<|im_start|>role\\n...<|im_end|>); only ChatML "
                         "templates can be rendered: give the data as prompt/completion pairs instead", source);
    // Reasoning templates (Qwen3's <think> handling) change assistant turns in ways plain ChatML does not.
    if (strstr(t, "<think>") || strstr(t, "reasoning_content"))
        return peft_fail("%s: the chat template treats <think> reasoning specially, which is not supported: give the data "
                         "as prompt/completion pairs instead", source);
    ct->source = xstrdup(source);
    // Only a template that writes the system turn conditionally has a default one.
    if (strstr(t, "!= 'system'") || strstr(t, "!= \"system\"")) ct->default_system = find_default_system(t);
    return 0;
}

// tokenizer_config.json's "chat_template": a string, or a list of {"name", "template"} (use "default").
static const char *template_text(const cJSON *root) {
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (cJSON_IsString(ct)) return ct->valuestring;
    if (!cJSON_IsArray(ct)) return NULL;
    const cJSON *e;
    cJSON_ArrayForEach(e, ct) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name"), *tt = cJSON_GetObjectItemCaseSensitive(e, "template");
        if (cJSON_IsString(name) && !strcmp(name->valuestring, "default") && cJSON_IsString(tt)) return tt->valuestring;
    }
    return NULL;
}

int chat_template_load(ChatTemplate *ct, const char *model_dir) {
    memset(ct, 0, sizeof *ct);
    char *path = path_join(model_dir, "tokenizer_config.json");
    if (!file_exists(path)) {
        peft_fail("%s: not found: chat messages need the model's chat template", path);
        free(path);
        return -1;
    }
    char *text = read_file(path, NULL);
    bool readable = text != NULL;
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    int rc;
    const char *t = root ? template_text(root) : NULL;
    if (!readable) rc = -1;
    else if (!root) rc = peft_fail("%s: invalid JSON", path);
    else if (!t) rc = peft_fail("%s: has no \"chat_template\": chat messages cannot be rendered for this model (use prompt/completion pairs)", path);
    else rc = chat_template_parse(ct, t, path);
    cJSON_Delete(root);
    free(path);
    return rc;
}

typedef struct { char *s; size_t n, cap; } Str;

static void put(Str *b, const char *s) {
    size_t k = strlen(s);
    if (b->n + k + 1 > b->cap) { b->cap = 2 * (b->n + k + 1); b->s = xrealloc(b->s, b->cap); }
    memcpy(b->s + b->n, s, k + 1);
    b->n += k;
}

static bool known_role(const char *r) { return !strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant"); }

int chat_template_render(const ChatTemplate *ct, const ChatMessage *msgs, int n, bool add_generation_prompt,
                         char **text, ChatSpan **spans, int *n_spans) {
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !known_role(msgs[i].role))
            return peft_fail("message %d has role \"%s\" (system, user and assistant are supported)", i, msgs[i].role ? msgs[i].role : "(none)");
    Str b = {0};
    put(&b, "");
    *spans = NULL;
    *n_spans = 0;
    if (ct->default_system && (n == 0 || strcmp(msgs[0].role, "system"))) {
        put(&b, IM_START "system\n");
        put(&b, ct->default_system);
        put(&b, IM_END "\n");
    }
    for (int i = 0; i < n; i++) {
        put(&b, IM_START);
        put(&b, msgs[i].role);
        put(&b, "\n");
        size_t start = b.n;
        put(&b, msgs[i].content ? msgs[i].content : "");
        put(&b, IM_END);
        if (!strcmp(msgs[i].role, "assistant")) {
            *spans = xrealloc(*spans, sizeof(ChatSpan) * (*n_spans + 1));
            (*spans)[(*n_spans)++] = (ChatSpan){start, b.n};
        }
        put(&b, "\n");
    }
    if (add_generation_prompt) put(&b, IM_START "assistant\n");
    *text = b.s;
    return 0;
}
