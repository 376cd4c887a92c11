// fuzz_chat.c: chat template rendering. The input is a chat template, a NUL byte, then JSONL chat
// data ({"messages": [{"role", "content"}, ...]} per line). A template that parses renders the
// first line's messages with every content in place and one span per assistant turn, inside the
// text and ending at its <|im_end|>; then the data is tokenized as training data
// (tokenizer_config.json's template): labels -100 or the token they label, n_loss_tokens their count.
#include "fuzz.h"
#include "data.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#define IM_END "<|im_end|>"

// The messages of a JSON object's "messages" whose role and content are strings (*n of them).
static ChatMessage *messages_of(const cJSON *line, int *n) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(line, "messages"), *it;
    ChatMessage *m = xcalloc(cJSON_GetArraySize(arr) + 1, sizeof *m);
    *n = 0;
    cJSON_ArrayForEach(it, arr) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role"), *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (cJSON_IsString(role) && cJSON_IsString(content)) m[(*n)++] = (ChatMessage){role->valuestring, content->valuestring};
    }
    return m;
}

static void check_render(const ChatTemplate *ct, const ChatMessage *m, int n, bool gen_prompt) {
    char *text;
    ChatSpan *spans;
    int n_spans;
    if (chat_template_render(ct, m, n, gen_prompt, &text, &spans, &n_spans)) return;
    size_t len = strlen(text), from = 0;
    int assistants = 0;
    for (int i = 0; i < n; i++) {
        const char *at = strstr(text + from, m[i].content);
        FUZZ_CHECK(at, "message %d's content is not in the text", i);
        from = at - text + strlen(m[i].content);
        assistants += !strcmp(m[i].role, "assistant");
    }
    FUZZ_CHECK(n_spans == assistants, "%d spans for %d assistant turns", n_spans, assistants);
    for (int s = 0; s < n_spans; s++) {
        FUZZ_CHECK(spans[s].start <= spans[s].end && spans[s].end <= len, "span %d [%zu, %zu) of %zu bytes", s, spans[s].start, spans[s].end, len);
        FUZZ_CHECK(spans[s].end - spans[s].start >= strlen(IM_END) && !memcmp(text + spans[s].end - strlen(IM_END), IM_END, strlen(IM_END)),
                   "span %d does not end at " IM_END, s);
    }
    free(text);
    free(spans);
}

static void check_dataset(const char *model_dir, const Tokenizer *tok, const char *template_text, const uint8_t *data, size_t n) {
    cJSON *tc = cJSON_CreateObject();
    cJSON_AddStringToObject(tc, "eos_token", "<|endoftext|>");
    cJSON_AddStringToObject(tc, "chat_template", template_text);
    char *tc_text = cJSON_Print(tc), *tc_path = path_join(model_dir, "tokenizer_config.json");
    FUZZ_CHECK(!write_file_atomic(tc_path, tc_text, strlen(tc_text)), "%s", peft_last_error());
    char *path = fuzz_write("chat-data", "data.jsonl", data, n);
    DataOptions opt = {.seq_len = 256, .no_cache = true};
    Dataset ds = {0};
    if (dataset_load(&ds, path, tok, model_dir, &opt) == 0) {
        long loss = 0;
        for (int s = 0; s < ds.n_seq; s++) {
            long a = ds.offset[s], z = ds.offset[s + 1];
            FUZZ_CHECK(z - a >= 1 && z - a <= opt.seq_len, "sequence %d has %ld tokens", s, z - a);
            for (long i = a; i < z; i++) {
                FUZZ_CHECK(ds.ids[i] >= 0 && ds.ids[i] < tokenizer_vocab_size(tok), "id %d", ds.ids[i]);
                FUZZ_CHECK(ds.labels[i] == -100 || ds.labels[i] == ds.ids[i], "label %d for id %d", ds.labels[i], ds.ids[i]);
                loss += i > a && ds.labels[i] != -100;  // the first position predicts nothing
            }
        }
        FUZZ_CHECK(loss == ds.n_loss_tokens, "%ld loss tokens counted as %ld", loss, ds.n_loss_tokens);
        dataset_free(&ds);
    }
    free(path);
    free(tc_path);
    free(tc_text);
    cJSON_Delete(tc);
}

int fuzz_chat(const uint8_t *data, size_t size) {
    static const char *model_dir;
    static Tokenizer *tok;
    if (!model_dir) {
        model_dir = fuzz_model_dir("chat", FUZZ_GPT2_CONFIG);
        FUZZ_CHECK((tok = tokenizer_load(model_dir)), "%s", peft_last_error());
    }
    const uint8_t *rest;
    size_t n;
    char *template_text = fuzz_split(data, size, &rest, &n);
    ChatTemplate ct;
    int ok = chat_template_parse(&ct, template_text, "fuzz-template") == 0;
    if (ok) {
        const uint8_t *nl = rest ? memchr(rest, '\n', n) : NULL;
        cJSON *first = rest ? cJSON_ParseWithLength((const char *)rest, nl ? (size_t)(nl - rest) : n) : NULL;
        int n_msgs;
        ChatMessage *m = messages_of(first, &n_msgs);
        check_render(&ct, m, n_msgs, false);
        check_render(&ct, m, n_msgs, true);
        free(m);
        cJSON_Delete(first);
        chat_template_free(&ct);
        if (rest) check_dataset(model_dir, tok, template_text, rest, n);
    }
    free(template_text);
    return ok;
}
