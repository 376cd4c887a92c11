// fuzz_chat.c: chat templates as training data sees them. The input is a chat template, a NUL byte,
// then JSONL chat data ({"messages": [{"role", "content"}, ...]} per line). A template that parses
// renders the first line's messages (with and without the generation prompt); their assistant spans
// lie inside the text, in order, each starting with the message's content (as given or trimmed) or
// with the end of turn; then the data is tokenized as training data (tokenizer_config.json's
// template): labels -100 or the token they label, n_loss_tokens their count.
#include "fuzz.h"
#include "data.h"
#include "jinja_internal.h"
#include "json_bytes.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static void check_render(const ChatTemplate *ct, const cJSON *msgs, bool gen_prompt) {
    char *text;
    size_t len;
    if (chat_template_render(ct, msgs, NULL, gen_prompt, &text, &len)) return;
    ChatSpan *spans;
    int n_spans;
    if (!gen_prompt && !chat_template_spans(ct, msgs, NULL, text, len, &spans, &n_spans)) {
        size_t last = 0;
        for (int s = 0; s < n_spans; s++) {
            FUZZ_CHECK(spans[s].start >= last && spans[s].start <= spans[s].end && spans[s].end <= len, "span %d [%zu, %zu) of %zu bytes",
                       s, spans[s].start, spans[s].end, len);
            last = spans[s].end;
        }
        int assistants = 0, k = 0;
        for (const cJSON *m = msgs->child; m; m = m->next) {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role"), *c = cJSON_GetObjectItemCaseSensitive(m, "content");
            size_t n;
            const char *r = cJSON_IsString(role) ? json_bytes(role, &n) : NULL;
            if (!r || n != 9 || memcmp(r, "assistant", 9)) continue;  // by length: a role may hold NUL bytes
            assistants++;
            JStr content = cJSON_IsString(c) ? (JStr){json_bytes(c, &n), n} : (JStr){"", 0}, t = js_trim(content, true, true);
            if (t.n == 0) continue;  // an empty turn: its end of turn alone, or nothing
            FUZZ_CHECK(k < n_spans, "no span for assistant message %d", assistants - 1);
            const ChatSpan *sp = &spans[k++];
            bool whole = sp->end - sp->start >= content.n && !memcmp(text + sp->start, content.p, content.n);
            bool trimmed = sp->end - sp->start >= t.n && !memcmp(text + sp->start, t.p, t.n);
            FUZZ_CHECK(whole || trimmed, "span %d does not start with its content", k - 1);
        }
        FUZZ_CHECK(n_spans <= assistants, "%d spans for %d assistant turns", n_spans, assistants);
        free(spans);
    }
    free(text);
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
        fuzz_check_dataset(&ds, tok, opt.seq_len);
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
    cJSON *tokens = cJSON_Parse("{\"eos_token\": \"<|endoftext|>\"}");
    int ok = chat_template_parse(&ct, template_text, strlen(template_text), "fuzz-template", tokens) == 0;
    if (ok) {
        const uint8_t *nl = rest ? memchr(rest, '\n', n) : NULL;
        cJSON *first = rest ? json_parse_bytes((const char *)rest, nl ? (size_t)(nl - rest) : n) : NULL;
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(first, "messages");
        if (cJSON_IsArray(msgs)) {
            check_render(&ct, msgs, false);
            check_render(&ct, msgs, true);
        }
        cJSON_Delete(first);
        chat_template_free(&ct);
        if (rest) check_dataset(model_dir, tok, template_text, rest, n);
    }
    cJSON_Delete(tokens);
    free(template_text);
    return ok;
}
