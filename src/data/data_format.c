// data_format.c: the record formats of instruction-tuning data, each turned into what data.c
// tokenizes: a prompt and a completion, or chat messages for the model's template.
//   text               {"text"}
//   prompt-completion  {"prompt", "completion"}
//   messages           {"messages": [{"role", "content"}, ...], "tools"?}: roles system, user,
//                      assistant, tool; an assistant message may carry "tool_calls" (content null)
//   sharegpt           {"conversations": [{"from", "value"}, ...], "system"?, "tools"?}: from human /
//                      user, gpt / assistant, system, tool
//   alpaca             {"instruction", "input"?, "output", "system"?}: Stanford Alpaca's prompt
//                      (PROMPT_DICT, with or without an input), the output after it
//   alpaca-chat        the same as a user turn (instruction, a blank line, the input) and an
//                      assistant turn (the output), rendered with the model's chat template
// Without --format each record's format is told by its fields; a record with the fields of two
// formats is refused (ambiguous), as is one with none. Other fields are the user's own (ids,
// sources) and are not read.
#include "data_internal.h"
#include "json_bytes.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Stanford Alpaca's PROMPT_DICT (train.py), verbatim: prompt_input and prompt_no_input.
static const char ALPACA_INPUT_HEAD[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n";
static const char ALPACA_NO_INPUT_HEAD[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n";
static const char ALPACA_INPUT[] = "\n\n### Input:\n", ALPACA_RESPONSE[] = "\n\n### Response:";

static const char *const FORMAT_NAMES[] = {"auto", "text", "prompt-completion", "messages", "sharegpt", "alpaca", "alpaca-chat"};

int data_format_parse(const char *s, DataFormat *out) {
    for (int i = 0; i < (int)(sizeof FORMAT_NAMES / sizeof *FORMAT_NAMES); i++)
        if (!strcmp(s, FORMAT_NAMES[i])) { *out = (DataFormat)i; return 0; }
    return peft_fail("unknown data format \"%s\" (auto, text, prompt-completion, messages, sharegpt, alpaca or alpaca-chat)", s);
}

const char *data_format_name(DataFormat f) { return FORMAT_NAMES[f]; }

void data_record_free(DataRecord *r) {
    free(r->prompt);
    if (r->owns_messages) cJSON_Delete(r->messages);
    memset(r, 0, sizeof *r);
}

static const cJSON *field(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

// A string field's bytes; absent or not a string: NULL (and an error when required).
static const char *string_field(const cJSON *o, const char *key, size_t *n, bool required, const char *where, int *rc) {
    const cJSON *v = field(o, key);
    if (cJSON_IsString(v)) return json_bytes(v, n);
    if (v && !cJSON_IsNull(v)) *rc = peft_fail("%s: \"%s\" must be a string", where, key);
    else if (required) *rc = peft_fail("%s: \"%s\" is missing", where, key);
    *n = 0;
    return NULL;
}

static cJSON *new_message(const char *role, const char *content, size_t n) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToObject(m, "role", json_bytes_string(role, strlen(role)));
    cJSON_AddItemToObject(m, "content", json_bytes_string(content, n));
    return m;
}

// The format a record's fields say, or an error for none or several.
static int detect(const cJSON *o, const char *where, DataFormat *f) {
    static const struct { const char *key; DataFormat f; } keys[] = {
        {"messages", DATA_MESSAGES}, {"conversations", DATA_SHAREGPT}, {"instruction", DATA_ALPACA},
        {"prompt", DATA_PROMPT_COMPLETION}, {"completion", DATA_PROMPT_COMPLETION}, {"text", DATA_TEXT}};
    char found[256] = "";
    int n = 0;
    *f = DATA_AUTO;
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        if (!field(o, keys[i].key)) continue;
        size_t len = strlen(found);
        snprintf(found + len, sizeof found - len, "%s\"%s\"", len ? ", " : "", keys[i].key);
        if (*f != keys[i].f) n++;
        *f = keys[i].f;
    }
    if (n == 1) return 0;
    if (n == 0)
        return peft_fail("%s: no known fields: expected {\"text\"}, {\"prompt\", \"completion\"}, {\"messages\"}, "
                         "{\"conversations\"} (ShareGPT) or {\"instruction\", \"output\"} (Alpaca)", where);
    return peft_fail("%s: ambiguous record: it has the fields of several formats (%s): choose one with --format", where, found);
}

static bool known_role(const char *r) { return !strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant") || !strcmp(r, "tool"); }

static int read_messages(const cJSON *o, const char *where, DataRecord *r) {
    const cJSON *arr = field(o, "messages");
    if (!cJSON_IsArray(arr)) return peft_fail("%s: \"messages\" must be a list of {\"role\", \"content\"}", where);
    if (!arr->child) return peft_fail("%s: \"messages\" is empty", where);
    int i = 0;
    for (const cJSON *m = arr->child; m; m = m->next, i++) {
        const cJSON *role = field(m, "role"), *content = field(m, "content");
        if (!cJSON_IsObject(m)) return peft_fail("%s: messages[%d] must be an object {\"role\", \"content\"}", where, i);
        if (!cJSON_IsString(role)) return peft_fail("%s: messages[%d].role must be a string", where, i);
        if (!known_role(role->valuestring))
            return peft_fail("%s: messages[%d].role is \"%s\": system, user, assistant and tool are known", where, i, role->valuestring);
        bool calls = !strcmp(role->valuestring, "assistant") && field(m, "tool_calls");
        if (!cJSON_IsString(content) && !(calls && (!content || cJSON_IsNull(content))))
            return peft_fail("%s: messages[%d].content must be a string%s", where, i, calls ? " or null" : "");
    }
    r->messages = (cJSON *)arr;
    return 0;
}

static int read_sharegpt(const cJSON *o, const char *where, DataRecord *r) {
    static const char *roles[][2] = {{"human", "user"}, {"user", "user"}, {"gpt", "assistant"}, {"assistant", "assistant"},
                                     {"system", "system"}, {"tool", "tool"}};
    const cJSON *arr = field(o, "conversations");
    if (!cJSON_IsArray(arr)) return peft_fail("%s: \"conversations\" must be a list of {\"from\", \"value\"}", where);
    if (!arr->child) return peft_fail("%s: \"conversations\" is empty", where);
    int rc = 0;
    size_t n;
    const char *system = string_field(o, "system", &n, false, where, &rc);
    if (rc) return -1;
    r->messages = cJSON_CreateArray();
    r->owns_messages = true;
    if (system) cJSON_AddItemToArray(r->messages, new_message("system", system, n));
    int i = 0;
    for (const cJSON *m = arr->child; m; m = m->next, i++) {
        const cJSON *from = field(m, "from"), *value = field(m, "value");
        if (!cJSON_IsObject(m) || !cJSON_IsString(from) || !cJSON_IsString(value))
            return peft_fail("%s: conversations[%d] needs string \"from\" and \"value\"", where, i);
        const char *role = NULL;
        for (size_t k = 0; k < sizeof roles / sizeof *roles; k++) if (!strcmp(from->valuestring, roles[k][0])) role = roles[k][1];
        if (!role)
            return peft_fail("%s: conversations[%d].from is \"%s\": human, gpt, system, tool, user and assistant are known", where, i, from->valuestring);
        const char *v = json_bytes(value, &n);
        cJSON_AddItemToArray(r->messages, new_message(role, v, n));
    }
    return 0;
}

static int read_alpaca(const cJSON *o, const char *where, bool chat, DataRecord *r) {
    int rc = 0;
    size_t ni, nin, no, ns;
    const char *instruction = string_field(o, "instruction", &ni, true, where, &rc);
    const char *input = rc ? NULL : string_field(o, "input", &nin, false, where, &rc);
    const char *output = rc ? NULL : string_field(o, "output", &no, true, where, &rc);
    const char *system = rc ? NULL : string_field(o, "system", &ns, false, where, &rc);
    if (rc) return -1;
    if (!input) nin = 0;
    if (!chat) {
        if (system) return peft_fail("%s: \"system\" is used only with the chat template (--format alpaca-chat)", where);
        const char *head = nin ? ALPACA_INPUT_HEAD : ALPACA_NO_INPUT_HEAD;
        const char *parts[] = {head, instruction, nin ? ALPACA_INPUT : "", input, ALPACA_RESPONSE};
        size_t lens[] = {strlen(head), ni, nin ? strlen(ALPACA_INPUT) : 0, nin, strlen(ALPACA_RESPONSE)};
        r->prompt = xmalloc(lens[0] + lens[1] + lens[2] + lens[3] + lens[4] + 1);
        for (int k = 0; k < 5; k++) {
            if (lens[k]) memcpy(r->prompt + r->prompt_len, parts[k], lens[k]);
            r->prompt_len += lens[k];
        }
        r->completion = output;
        r->completion_len = no;
        return 0;
    }
    r->messages = cJSON_CreateArray();
    r->owns_messages = true;
    if (system) cJSON_AddItemToArray(r->messages, new_message("system", system, ns));
    char *user = xmalloc(ni + nin + 3);
    memcpy(user, instruction, ni);
    size_t nu = ni;
    if (nin) { memcpy(user + nu, "\n\n", 2); memcpy(user + nu + 2, input, nin); nu += 2 + nin; }
    cJSON_AddItemToArray(r->messages, new_message("user", user, nu));
    cJSON_AddItemToArray(r->messages, new_message("assistant", output, no));
    free(user);
    return 0;
}

int data_record(const cJSON *o, DataFormat format, const char *where, DataRecord *r) {
    memset(r, 0, sizeof *r);
    if (!cJSON_IsObject(o)) return peft_fail("%s: expected a JSON object", where);
    DataFormat f = format;
    if (f == DATA_AUTO && detect(o, where, &f)) return -1;
    r->format = f;
    int rc = 0;
    size_t n;
    const cJSON *tools = field(o, "tools");
    if (tools && !cJSON_IsNull(tools) && f != DATA_TEXT && f != DATA_PROMPT_COMPLETION && f != DATA_ALPACA) {
        if (!cJSON_IsArray(tools)) return peft_fail("%s: \"tools\" must be a list", where);
        r->tools = tools;
    }
    switch (f) {
    case DATA_TEXT:
        r->completion = string_field(o, "text", &r->completion_len, true, where, &rc);
        return rc;
    case DATA_PROMPT_COMPLETION: {
        const char *p = string_field(o, "prompt", &n, true, where, &rc);
        if (!rc) r->completion = string_field(o, "completion", &r->completion_len, true, where, &rc);
        if (rc) return -1;
        r->prompt = xmalloc(n + 1);
        memcpy(r->prompt, p, n);
        r->prompt_len = n;
        return 0;
    }
    case DATA_MESSAGES: rc = read_messages(o, where, r); break;
    case DATA_SHAREGPT: rc = read_sharegpt(o, where, r); break;
    case DATA_ALPACA: case DATA_ALPACA_CHAT: rc = read_alpaca(o, where, f == DATA_ALPACA_CHAT, r); break;
    default: rc = peft_fail("%s: no format", where);
    }
    if (rc) data_record_free(r);
    return rc;
}

// ---- JSON arrays: one record per element, with its line ----

// The end of the JSON value starting at text[i] (a bracket or brace matched, strings skipped), or len.
static size_t value_end(const char *text, size_t len, size_t i) {
    int depth = 0;
    bool in_string = false;
    for (; i < len; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = false;
            continue;
        }
        if (c == '"') in_string = true;
        else if (c == '[' || c == '{') depth++;
        else if (c == ']' || c == '}') { if (--depth <= 0) return depth < 0 ? i : i + 1; }
        else if (depth == 0 && c == ',') return i;
    }
    return len;
}

static bool json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

int json_array_each(const char *path, const char *text, size_t len, JsonElementFn fn, void *ctx) {
    size_t i = 0;
    int line = 1;
    while (i < len && json_space(text[i])) line += text[i++] == '\n';
    if (i == len || text[i] != '[') return peft_fail("%s:%d: expected a JSON array of records", path, line);
    i++;
    for (int k = 0;; k++) {
        while (i < len && json_space(text[i])) line += text[i++] == '\n';
        if (i < len && text[i] == ']' && k == 0) { i++; break; }
        if (i >= len) return peft_fail("%s:%d: the JSON array is not closed", path, line);
        size_t end = value_end(text, len, i);
        int rc = fn(ctx, text + i, end - i, line, k);
        if (rc) return rc;
        for (; i < end; i++) line += text[i] == '\n';
        while (i < len && json_space(text[i])) line += text[i++] == '\n';
        if (i < len && text[i] == ',') { i++; continue; }
        if (i < len && text[i] == ']') { i++; break; }
        return peft_fail("%s:%d: expected ',' or ']' after record %d of the JSON array", path, line, k);
    }
    while (i < len && json_space(text[i])) line += text[i++] == '\n';
    if (i < len) return peft_fail("%s:%d: text after the JSON array", path, line);
    return 0;
}
