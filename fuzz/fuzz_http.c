// fuzz_http.c: request bodies through peft serve's parameter checks (http_parse_body), without a
// server. The input is a request line, "POST /v1/completions", "POST /v1/chat/completions",
// "POST /v1/adapters" or "DELETE /v1/adapters", a newline, then the body. A body is accepted
// with a prompt of valid ids or refused with a 4xx status and a message; chat bodies are checked
// with the model's ChatML template and without one (the server's two ways).
#include "fuzz.h"
#include "data.h"
#include "serve.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

typedef struct {
    Model *m;
    Tokenizer *tok;
    ChatTemplate chat;
    ServeOptions o;
    HttpContext ctx;
} Server;

static const Server *server(void) {
    static Server s;
    if (s.m) return &s;
    const char *dir = fuzz_model_dir("http", FUZZ_GPT2_CONFIG);
    s.m = model_load(dir);
    s.tok = s.m ? tokenizer_load(dir) : NULL;
    FUZZ_CHECK(s.tok && !chat_template_load(&s.chat, dir), "%s", peft_last_error());
    serve_options_default(&s.o);
    s.ctx = (HttpContext){.m = s.m, .tok = s.tok, .o = &s.o, .model_dir = dir, .max_len = s.m->cfg.n_positions};
    gen_params_default(&s.ctx.defaults);
    gen_params_read_eos(dir, &s.ctx.defaults);
    return &s;
}

static int check(const Server *s, const ChatTemplate *chat, HttpBody kind, const char *body, size_t len) {
    int32_t *prompt = NULL;
    int plen = 0;
    int status = http_parse_body(&s->ctx, chat, kind, body, len, &prompt, &plen);
    if (status) {
        FUZZ_CHECK(status >= 400 && status < 500, "status %d: %s", status, peft_last_error());
        FUZZ_CHECK(peft_last_error()[0], "status %d without a message", status);
        return 0;
    }
    if (kind == HTTP_BODY_COMPLETION || kind == HTTP_BODY_CHAT) {
        FUZZ_CHECK(plen >= 1, "an accepted prompt of %d tokens", plen);
        for (int i = 0; i < plen; i++)
            FUZZ_CHECK(prompt[i] >= 0 && prompt[i] < s->m->cfg.vocab_size, "prompt id %d at %d", prompt[i], i);
    }
    free(prompt);
    return 1;
}

int fuzz_http(const uint8_t *data, size_t size) {
    static const struct { const char *line; HttpBody kind; } routes[] = {
        {"POST /v1/completions\n", HTTP_BODY_COMPLETION},
        {"POST /v1/chat/completions\n", HTTP_BODY_CHAT},
        {"POST /v1/adapters\n", HTTP_BODY_ADD_ADAPTER},
        {"DELETE /v1/adapters\n", HTTP_BODY_REMOVE_ADAPTER},
    };
    const Server *s = server();
    for (size_t r = 0; r < sizeof routes / sizeof *routes; r++) {
        size_t n = strlen(routes[r].line);
        if (size < n || memcmp(data, routes[r].line, n)) continue;
        // An exact-size copy of the body: ASan sees a read past its end.
        size_t len = size - n;
        char *body = xmalloc(len ? len : 1);
        memcpy(body, data + n, len);
        int ok = check(s, &s->chat, routes[r].kind, body, len);
        if (routes[r].kind == HTTP_BODY_CHAT) ok |= check(s, NULL, routes[r].kind, body, len);
        free(body);
        return ok;
    }
    return 0;
}
