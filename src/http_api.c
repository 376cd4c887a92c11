// http_api.c: the HTTP side of `peft serve` (libmicrohttpd, one thread per connection).
//   GET  /health                      {"status": "ok", ...}: no API key needed
//   GET  /v1/models, /v1/models/NAME  "base" and every registered adapter
//   POST /v1/completions              OpenAI's text completions ("model" names an adapter or "base")
//   POST /v1/chat/completions         OpenAI's chat completions (the model's ChatML template)
//   GET  /v1/adapters                 the adapters, loaded or not
//   POST /v1/adapters                 {"name", "path"}: register and load one while serving
//   DELETE /v1/adapters/NAME          unregister it (freed when its running requests end)
// "stream": true answers with server-sent events ("data: {chunk}\n\n" ... "data: [DONE]\n\n").
// A connection thread hands its request to the scheduler and waits for text; while it waits it
// watches the socket, so a client that goes away cancels its request at the next step.
// Every error is {"error": {"message", "type", "param", "code"}} with a 4xx (the client's
// mistake) or 5xx status, and touches nothing but its own request.
#include "data.h"
#include "serve.h"
#include "util.h"
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct HttpServer {
    HttpContext ctx;
    struct MHD_Daemon *d;
    atomic_long next_id;
    atomic_bool stopping;
    atomic_int live;          // requests handed to the scheduler whose connection is still open
    MHD_socket listen_fd;     // after MHD_quiesce_daemon: ours to close
    ChatTemplate chat;
    bool has_chat;
    int im_end;               // <|im_end|> token id (ChatML), -1 when none
    char chat_error[512];     // why there is no template
};

typedef enum { KIND_COMPLETION, KIND_CHAT } Kind;

typedef struct {
    HttpServer *h;
    struct MHD_Connection *c;
    char *body;
    size_t len, cap;
    bool too_large;
    double t0;
    // a running generation
    ServeRequest *req;
    Kind kind;
    char id[48], model[96];
    long created;
    bool include_usage, sent_role, finished;
    char *pending;            // SSE bytes not yet handed to MHD
    size_t pending_len, pending_off, pending_cap;
} Conn;

// ---- responses ----

static void access_log(Conn *cn, const char *method, const char *url, int status) {
    if (cn->h->ctx.o->quiet) return;
    fprintf(stderr, "peft serve: %s %s %d %.0f ms\n", method, url, status, (now_seconds() - cn->t0) * 1000);
}

static enum MHD_Result send_text(struct MHD_Connection *c, int status, const char *type, const char *text) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (status == 405) MHD_add_response_header(r, "Allow", "GET, POST, DELETE");
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result send_json(Conn *cn, int status, cJSON *j, const char *method, const char *url) {
    char *text = cJSON_PrintUnformatted(j);
    size_t n = strlen(text);
    text = xrealloc(text, n + 2);
    text[n] = '\n';
    text[n + 1] = 0;
    enum MHD_Result ok = send_text(cn->c, status, "application/json", text);
    free(text);
    cJSON_Delete(j);
    access_log(cn, method, url, status);
    return ok;
}

static const char *error_type(int status) {
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 408: return "timeout_error";
    case 409: return "conflict_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static cJSON *error_json(int status, const char *message, const char *param) {
    cJSON *j = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(j, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", error_type(status));
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (status == 404 && param && !strcmp(param, "model")) cJSON_AddStringToObject(e, "code", "model_not_found");
    else cJSON_AddNumberToObject(e, "code", status);
    return j;
}

static enum MHD_Result send_error(Conn *cn, int status, const char *message, const char *param, const char *method, const char *url) {
    return send_json(cn, status, error_json(status, message, param), method, url);
}

// ---- request parameters ----

typedef struct {
    int status;               // 0 = fine
    char msg[600];
    const char *param;
} Err;

static int err(Err *e, int status, const char *param, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int err(Err *e, int status, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = status;
    e->param = param;
    return -1;
}

typedef struct {
    const char *model;        // points into the JSON
    bool stream, include_usage;
    GenParams p;
    char *stops[4];
    int n_stop;
    int32_t *prompt;
    int plen;
} Params;

static void params_free(Params *q) {
    for (int i = 0; i < q->n_stop; i++) free(q->stops[i]);
    free(q->prompt);
}

static bool is_int(const cJSON *x) { return cJSON_IsNumber(x) && isfinite(x->valuedouble) && x->valuedouble == floor(x->valuedouble); }

// A number field in [lo, hi] (integer when integral); absent keeps *out.
static int num_field(const cJSON *j, const char *name, double lo, double hi, bool integral, double *out, Err *e) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, name);
    if (!x || cJSON_IsNull(x)) return 0;
    if (!cJSON_IsNumber(x) || (integral && !is_int(x)))
        return err(e, 400, name, "%s must be %s", name, integral ? "an integer" : "a number");
    if (!(x->valuedouble >= lo && x->valuedouble <= hi))
        return err(e, 400, name, "%s must be between %g and %g (got %g)", name, lo, hi, x->valuedouble);
    *out = x->valuedouble;
    return 0;
}

// Fields we accept only with their neutral value (so OpenAI clients that send defaults work).
static int neutral_only(const cJSON *j, Err *e) {
    static const char *zero[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, zero[i]);
        if (x && !cJSON_IsNull(x) && !(cJSON_IsNumber(x) && x->valuedouble == 0))
            return err(e, 400, zero[i], "%s is not supported (only 0)", zero[i]);
    }
    static const char *one[] = {"n", "best_of"};
    for (int i = 0; i < 2; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, one[i]);
        if (x && !cJSON_IsNull(x) && !(cJSON_IsNumber(x) && x->valuedouble == 1))
            return err(e, 400, one[i], "%s must be 1 (one choice per request)", one[i]);
    }
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, "logprobs");
    if (x && !cJSON_IsNull(x) && !cJSON_IsFalse(x) && !(cJSON_IsNumber(x) && x->valuedouble == 0))
        return err(e, 400, "logprobs", "logprobs are not supported");
    x = cJSON_GetObjectItemCaseSensitive(j, "echo");
    if (x && !cJSON_IsNull(x) && !cJSON_IsFalse(x)) return err(e, 400, "echo", "echo is not supported");
    x = cJSON_GetObjectItemCaseSensitive(j, "suffix");
    if (x && !cJSON_IsNull(x)) return err(e, 400, "suffix", "suffix is not supported");
    return 0;
}

// The sampling fields both endpoints share.
static int parse_sampling(HttpServer *h, const cJSON *j, Kind kind, Params *q, Err *e) {
    const HttpContext *ctx = &h->ctx;
    q->p = ctx->defaults;
    q->p.temperature = 1.0f;  // OpenAI's default
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (x && !cJSON_IsNull(x) && !cJSON_IsString(x)) return err(e, 400, "model", "model must be a string");
    q->model = cJSON_IsString(x) ? x->valuestring : "base";
    if (!q->model[0]) return err(e, 400, "model", "model must not be empty");
    x = cJSON_GetObjectItemCaseSensitive(j, "stream");
    if (x && !cJSON_IsNull(x) && !cJSON_IsBool(x)) return err(e, 400, "stream", "stream must be true or false");
    q->stream = cJSON_IsTrue(x);
    x = cJSON_GetObjectItemCaseSensitive(j, "stream_options");
    if (x && !cJSON_IsNull(x)) {
        if (!cJSON_IsObject(x)) return err(e, 400, "stream_options", "stream_options must be an object");
        q->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(x, "include_usage"));
    }
    if (neutral_only(j, e)) return -1;
    int max_allowed = ctx->o->max_tokens;
    double v = kind == KIND_CHAT ? max_allowed : (max_allowed < 16 ? max_allowed : 16);
    const char *mt = kind == KIND_CHAT && cJSON_GetObjectItemCaseSensitive(j, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if (num_field(j, mt, 0, max_allowed, true, &v, e)) return -1;
    q->p.max_new_tokens = (int)v;
    v = q->p.temperature;
    if (num_field(j, "temperature", 0, 2, false, &v, e)) return -1;
    q->p.temperature = (float)v;
    v = q->p.top_p;
    if (num_field(j, "top_p", 1e-9, 1, false, &v, e)) return -1;
    q->p.top_p = (float)v;
    v = 0;
    if (num_field(j, "top_k", 0, ctx->m->cfg.vocab_size, true, &v, e)) return -1;
    q->p.top_k = (int)v;
    v = 1;
    if (num_field(j, "repetition_penalty", 0.01, 100, false, &v, e)) return -1;
    q->p.repetition_penalty = (float)v;
    v = 0;
    if (num_field(j, "seed", -9007199254740991.0, 9007199254740991.0, true, &v, e)) return -1;
    q->p.seed = (uint64_t)(int64_t)v;
    x = cJSON_GetObjectItemCaseSensitive(j, "ignore_eos");  // vLLM's extension: exactly max_tokens tokens
    if (x && !cJSON_IsNull(x) && !cJSON_IsBool(x)) return err(e, 400, "ignore_eos", "ignore_eos must be true or false");
    if (cJSON_IsTrue(x)) {
        q->p.eos_id = GEN_EOS_NONE;
        q->p.n_extra_eos = 0;
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "stop");
    if (x && !cJSON_IsNull(x)) {
        const cJSON *one = x, *it;
        if (cJSON_IsArray(x)) {
            if (cJSON_GetArraySize(x) > 4) return err(e, 400, "stop", "stop takes at most 4 strings");
            cJSON_ArrayForEach(it, x) {
                if (!cJSON_IsString(it) || !it->valuestring[0] || strlen(it->valuestring) > 256)
                    return err(e, 400, "stop", "each stop string must be a non-empty string of at most 256 bytes");
                q->stops[q->n_stop++] = xstrdup(it->valuestring);
            }
        } else if (cJSON_IsString(one) && one->valuestring[0] && strlen(one->valuestring) <= 256) q->stops[q->n_stop++] = xstrdup(one->valuestring);
        else return err(e, 400, "stop", "stop must be a non-empty string (at most 256 bytes) or a list of up to 4");
    }
    q->p.stop = (const char *const *)q->stops;
    q->p.n_stop = q->n_stop;
    return 0;
}

// Text -> ids as generate_text does it: bos first when the tokenizer adds one or the text is empty.
static int encode_prompt(HttpServer *h, const char *text, size_t len, Params *q, Err *e) {
    const Tokenizer *tok = h->ctx.tok;
    int32_t *enc = NULL;
    int k = 0;
    if (tokenizer_encode(tok, text, len, &enc, &k)) return err(e, 400, "prompt", "the prompt does not encode: %s", peft_last_error());
    int bos = tokenizer_bos(tok) >= 0 ? tokenizer_bos(tok) : h->ctx.m->cfg.bos_token_id;
    bool lead = tokenizer_add_bos(tok) || k == 0;
    q->prompt = xmalloc(sizeof(int32_t) * (k + 1));
    if (lead) q->prompt[0] = bos;
    memcpy(q->prompt + lead, enc, sizeof(int32_t) * k);
    q->plen = k + lead;
    free(enc);
    return 0;
}

static int parse_completion(HttpServer *h, const cJSON *j, Params *q, Err *e) {
    if (parse_sampling(h, j, KIND_COMPLETION, q, e)) return -1;
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    if (!x) return err(e, 400, "prompt", "prompt is required");
    if (cJSON_IsArray(x) && cJSON_GetArraySize(x) == 1 && (cJSON_IsString(x->child) || cJSON_IsArray(x->child))) x = x->child;
    if (cJSON_IsString(x)) return encode_prompt(h, x->valuestring, strlen(x->valuestring), q, e);
    if (cJSON_IsArray(x) && cJSON_GetArraySize(x) > 0) {  // token ids
        int n = cJSON_GetArraySize(x), V = h->ctx.m->cfg.vocab_size, i = 0;
        if (n > h->ctx.max_len) return err(e, 400, "prompt", "the prompt has %d tokens; the context is %d", n, h->ctx.max_len);
        q->prompt = xmalloc(sizeof(int32_t) * n);
        const cJSON *it;
        cJSON_ArrayForEach(it, x) {
            if (!is_int(it) || it->valuedouble < 0 || it->valuedouble >= V)
                return err(e, 400, "prompt", "prompt token ids must be integers in [0, %d)", V);
            q->prompt[i++] = (int32_t)it->valuedouble;
        }
        q->plen = n;
        return 0;
    }
    if (cJSON_IsArray(x)) return err(e, 400, "prompt", "prompt must not be empty (use \"\" for the bos token alone)");
    return err(e, 400, "prompt", "prompt must be a string, a list of one string, or a list of token ids (one prompt per request)");
}

// A message's content: a string, or a list of {"type": "text", "text": ...} parts.
static char *message_content(const cJSON *c, Err *e) {
    if (cJSON_IsString(c)) return xstrdup(c->valuestring);
    if (!cJSON_IsArray(c)) { err(e, 400, "messages", "a message's content must be a string or a list of text parts"); return NULL; }
    size_t len = 0;
    char *s = xstrdup("");
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type"), *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text)) {
            free(s);
            err(e, 400, "messages", "only text content parts are supported");
            return NULL;
        }
        size_t k = strlen(text->valuestring);
        s = xrealloc(s, len + k + 1);
        memcpy(s + len, text->valuestring, k + 1);
        len += k;
    }
    return s;
}

static int parse_chat(HttpServer *h, const cJSON *j, Params *q, Err *e) {
    if (parse_sampling(h, j, KIND_CHAT, q, e)) return -1;
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) return err(e, 400, "messages", "messages must be a non-empty list");
    int n = cJSON_GetArraySize(msgs), i = 0;
    ChatMessage *m = xcalloc(n, sizeof *m);
    char **contents = xcalloc(n, sizeof(char *));
    int rc = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        if (!cJSON_IsObject(it) || !cJSON_IsString(role) ||
            (strcmp(role->valuestring, "system") && strcmp(role->valuestring, "user") && strcmp(role->valuestring, "assistant"))) {
            rc = err(e, 400, "messages", "each message needs a role of \"system\", \"user\" or \"assistant\"");
            break;
        }
        if (!(contents[i] = message_content(cJSON_GetObjectItemCaseSensitive(it, "content"), e))) { rc = -1; break; }
        m[i].role = role->valuestring;
        m[i].content = contents[i];
        i++;
    }
    if (!rc) {
        char *text = NULL;
        if (h->has_chat) {
            ChatSpan *spans = NULL;
            int n_spans = 0;
            if (chat_template_render(&h->chat, m, n, true, &text, &spans, &n_spans)) rc = err(e, 400, "messages", "%s", peft_last_error());
            free(spans);
            if (h->im_end >= 0 && q->p.eos_id != GEN_EOS_NONE && q->p.n_extra_eos < 8) q->p.extra_eos[q->p.n_extra_eos++] = h->im_end;
        } else {
            // No ChatML template: the contents, one per line (so a one-message chat equals a
            // completion of its content).
            size_t len = 0;
            text = xstrdup("");
            for (int k = 0; k < n; k++) {
                size_t c = strlen(m[k].content);
                text = xrealloc(text, len + c + 2);
                if (k) text[len++] = '\n';
                memcpy(text + len, m[k].content, c + 1);
                len += c;
            }
        }
        if (!rc) rc = encode_prompt(h, text, strlen(text), q, e);
        free(text);
    }
    for (int k = 0; k < n; k++) free(contents[k]);
    free(contents);
    free(m);
    return rc;
}

// A completion or chat-completion body into q (q->model points into *j, which the caller deletes).
static int parse_generation(HttpServer *h, Kind kind, const char *body, size_t len, cJSON **j, Params *q, Err *e) {
    *j = cJSON_ParseWithLength(body ? body : "", len);
    if (!*j || !cJSON_IsObject(*j)) return err(e, 400, NULL, "the body is not a JSON object");
    return kind == KIND_CHAT ? parse_chat(h, *j, q, e) : parse_completion(h, *j, q, e);
}

// POST /v1/adapters' {"name", "path"} (with_path) or DELETE /v1/adapters' {"name"}: *name and
// *path (NULL when absent or null) point into *j, which the caller deletes.
static int parse_adapter_body(const char *body, size_t len, bool with_path, cJSON **j, const char **name, const char **path, Err *e) {
    *j = cJSON_ParseWithLength(body ? body : "", len);
    *path = NULL;
    if (with_path && (!*j || !cJSON_IsObject(*j))) return err(e, 400, NULL, "the body is not a JSON object");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(*j, "name"), *p = cJSON_GetObjectItemCaseSensitive(*j, "path");
    if (!cJSON_IsString(n))
        return with_path ? err(e, 400, "name", "name (a string) is required") : err(e, 400, "name", "name the adapter: DELETE /v1/adapters/NAME");
    *name = n->valuestring;
    if (!with_path) return 0;
    if (p && !cJSON_IsNull(p) && !cJSON_IsString(p)) return err(e, 400, "path", "path must be a string");
    *path = cJSON_IsString(p) ? p->valuestring : NULL;
    return 0;
}

int http_parse_body(const HttpContext *ctx, const ChatTemplate *chat, HttpBody kind, const char *body, size_t len, int32_t **prompt, int *plen) {
    HttpServer h = {.ctx = *ctx, .im_end = -1};
    if (chat) {
        h.chat = *chat;
        h.has_chat = true;
        h.im_end = tokenizer_token_id(ctx->tok, "<|im_end|>");
    }
    Err e = {0};
    cJSON *j = NULL;
    int rc;
    if (kind == HTTP_BODY_ADD_ADAPTER || kind == HTTP_BODY_REMOVE_ADAPTER) {
        const char *name, *path;
        rc = parse_adapter_body(body, len, kind == HTTP_BODY_ADD_ADAPTER, &j, &name, &path, &e);
    } else {
        Params q = {0};
        rc = parse_generation(&h, kind == HTTP_BODY_CHAT ? KIND_CHAT : KIND_COMPLETION, body, len, &j, &q, &e);
        if (!rc) {
            *prompt = q.prompt;
            *plen = q.plen;
            q.prompt = NULL;
        }
        params_free(&q);
    }
    cJSON_Delete(j);
    if (!rc) return 0;
    peft_fail("%s", e.msg);
    return e.status;
}

// ---- generation ----

static const char *finish_reason(ServeFinish f) { return f == SERVE_FINISH_LENGTH ? "length" : "stop"; }

// True when the peer closed its end (or the socket failed).
static bool client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    struct pollfd pfd = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static cJSON *usage_json(const ServeStatus *st) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", st->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", st->n_gen);
    cJSON_AddNumberToObject(u, "total_tokens", st->n_prompt + st->n_gen);
    return u;
}

static cJSON *chunk_head(Conn *cn) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", cn->id);
    cJSON_AddStringToObject(j, "object", cn->kind == KIND_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(j, "created", (double)cn->created);
    cJSON_AddStringToObject(j, "model", cn->model);
    return j;
}

// One SSE choice chunk: text (may be NULL) and finish reason (NULL while running).
static cJSON *choice_chunk(Conn *cn, const char *text, const char *reason, bool role) {
    cJSON *j = chunk_head(cn), *choices = cJSON_AddArrayToObject(j, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (cn->kind == KIND_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (text) cJSON_AddStringToObject(d, "content", text);
    } else {
        cJSON_AddStringToObject(c, "text", text ? text : "");
        cJSON_AddNullToObject(c, "logprobs");
    }
    if (reason) cJSON_AddStringToObject(c, "finish_reason", reason);
    else cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    return j;
}

static void pending_add(Conn *cn, const char *s, size_t n) {
    if (cn->pending_off == cn->pending_len) cn->pending_off = cn->pending_len = 0;
    if (cn->pending_len + n + 1 > cn->pending_cap) {
        cn->pending_cap = (cn->pending_len + n + 1) * 2;
        cn->pending = xrealloc(cn->pending, cn->pending_cap);
    }
    memcpy(cn->pending + cn->pending_len, s, n);
    cn->pending_len += n;
}

static void pending_event(Conn *cn, cJSON *j) {
    char *text = cJSON_PrintUnformatted(j);
    pending_add(cn, "data: ", 6);
    pending_add(cn, text, strlen(text));
    pending_add(cn, "\n\n", 2);
    free(text);
    cJSON_Delete(j);
}

// MHD asks for more of the event stream: hand over what is pending, else wait for the
// scheduler's next text (watching the socket meanwhile).
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    Conn *cn = cls;
    for (;;) {
        if (cn->pending_off < cn->pending_len) {
            size_t n = cn->pending_len - cn->pending_off;
            if (n > max) n = max;
            memcpy(buf, cn->pending + cn->pending_off, n);
            cn->pending_off += n;
            return (ssize_t)n;
        }
        if (cn->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        if (cn->kind == KIND_CHAT && !cn->sent_role) {
            cn->sent_role = true;
            pending_event(cn, choice_chunk(cn, "", NULL, true));
            continue;
        }
        if (client_gone(cn->c)) {
            serve_request_cancel(cn->req);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        size_t len;
        ServeStatus st;
        char *text = serve_request_poll(cn->req, 0.05, &len, &st);
        if (len) pending_event(cn, choice_chunk(cn, text, NULL, false));
        free(text);
        if (st.finish == SERVE_RUNNING) continue;
        if (st.finish == SERVE_FINISH_CANCELLED && !st.status) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (st.finish == SERVE_FINISH_LENGTH || st.finish == SERVE_FINISH_EOS || st.finish == SERVE_FINISH_STOP) {
            pending_event(cn, choice_chunk(cn, cn->kind == KIND_CHAT ? NULL : "", finish_reason(st.finish), false));
            if (cn->include_usage) {
                cJSON *j = chunk_head(cn);
                cJSON_AddArrayToObject(j, "choices");
                cJSON_AddItemToObject(j, "usage", usage_json(&st));
                pending_event(cn, j);
            }
        } else {
            int status = st.status ? st.status : 500;
            pending_event(cn, error_json(status, st.error[0] ? st.error : "the request failed", NULL));
        }
        pending_add(cn, "data: [DONE]\n\n", 14);
        cn->finished = true;
    }
}

static enum MHD_Result run_generation(Conn *cn, Kind kind, const char *method, const char *url) {
    HttpServer *h = cn->h;
    Err e = {0};
    Params q = {0};
    cJSON *j = NULL;
    if (parse_generation(h, kind, cn->body, cn->len, &j, &q, &e)) {
        params_free(&q);
        cJSON_Delete(j);
        return send_error(cn, e.status, e.msg, e.param, method, url);
    }
    snprintf(cn->model, sizeof cn->model, "%s", q.model);
    cJSON_Delete(j);  // q.model is not used after this
    AdapterSet *set = NULL;
    PoolEntry *entry = NULL;
    int status = 0;
    if (strcmp(cn->model, "base")) {
        // When every adapter slot is held by running requests, wait (within the request's
        // timeout) for one to be released rather than fail.
        double t = h->ctx.o->timeout_s;
        entry = adapter_pool_acquire(h->ctx.pool, cn->model, &set, &status, t > 0 ? t - (now_seconds() - cn->t0) : 1e9);
        if (!entry) {
            params_free(&q);
            return send_error(cn, status, peft_last_error(), status == 404 ? "model" : NULL, method, url);
        }
    }
    ServeRequest *r = serve_request_new(q.prompt, q.plen, &q.p, set, h->ctx.pool, entry, h->ctx.o->timeout_s);
    bool stream = q.stream;
    cn->include_usage = q.include_usage;
    params_free(&q);
    if (atomic_load(&h->stopping)) {
        serve_request_unref(r);
        return send_error(cn, 503, "the server is shutting down", NULL, method, url);
    }
    if (scheduler_submit(h->ctx.sched, r, &status)) {
        serve_request_unref(r);
        return send_error(cn, status, peft_last_error(), status == 400 ? "prompt" : NULL, method, url);
    }
    cn->req = r;
    atomic_fetch_add(&h->live, 1);
    cn->kind = kind;
    cn->created = (long)time(NULL);
    snprintf(cn->id, sizeof cn->id, "%s-%ld", kind == KIND_CHAT ? "chatcmpl" : "cmpl", atomic_fetch_add(&h->next_id, 1));
    if (stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, cn, NULL);
        if (!resp) return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        enum MHD_Result ok = MHD_queue_response(cn->c, 200, resp);
        MHD_destroy_response(resp);
        access_log(cn, method, url, 200);
        return ok;
    }
    // Not streamed: wait for the whole text (watching for the client going away).
    char *all = xstrdup("");
    size_t all_len = 0;
    ServeStatus st;
    for (;;) {
        size_t len;
        char *text = serve_request_poll(r, 0.05, &len, &st);
        if (len) {
            all = xrealloc(all, all_len + len + 1);
            memcpy(all + all_len, text, len + 1);
            all_len += len;
        }
        free(text);
        if (st.finish != SERVE_RUNNING) break;
        if (client_gone(cn->c)) serve_request_cancel(r);
    }
    if (st.finish == SERVE_FINISH_CANCELLED && !st.status) {
        free(all);
        access_log(cn, method, url, 499);
        return MHD_NO;  // nobody to answer
    }
    if (st.finish != SERVE_FINISH_LENGTH && st.finish != SERVE_FINISH_EOS && st.finish != SERVE_FINISH_STOP) {
        free(all);
        return send_error(cn, st.status ? st.status : 500, st.error[0] ? st.error : "the request failed", NULL, method, url);
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "id", cn->id);
    cJSON_AddStringToObject(out, "object", kind == KIND_CHAT ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(out, "created", (double)cn->created);
    cJSON_AddStringToObject(out, "model", cn->model);
    cJSON *choices = cJSON_AddArrayToObject(out, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (kind == KIND_CHAT) {
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", all);
    } else {
        cJSON_AddStringToObject(c, "text", all);
        cJSON_AddNullToObject(c, "logprobs");
    }
    cJSON_AddStringToObject(c, "finish_reason", finish_reason(st.finish));
    cJSON_AddItemToArray(choices, c);
    cJSON_AddItemToObject(out, "usage", usage_json(&st));
    free(all);
    return send_json(cn, 200, out, method, url);
}

// ---- models and adapters ----

static cJSON *base_json(HttpServer *h) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", "base");
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddNumberToObject(o, "created", 0);
    cJSON_AddStringToObject(o, "owned_by", "peft");
    cJSON_AddStringToObject(o, "path", h->ctx.model_dir);
    return o;
}

static cJSON *models_json(HttpServer *h) {
    cJSON *j = cJSON_CreateObject(), *data = adapter_pool_list_json(h->ctx.pool);
    cJSON_InsertItemInArray(data, 0, base_json(h));
    cJSON_AddStringToObject(j, "object", "list");
    cJSON_AddItemToObject(j, "data", data);
    return j;
}

static cJSON *find_model(HttpServer *h, const char *name) {
    if (!strcmp(name, "base")) return base_json(h);
    cJSON *list = adapter_pool_list_json(h->ctx.pool), *it, *found = NULL;
    cJSON_ArrayForEach(it, list) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (cJSON_IsString(id) && !strcmp(id->valuestring, name)) { found = cJSON_Duplicate(it, true); break; }
    }
    cJSON_Delete(list);
    return found;
}

static enum MHD_Result add_adapter(Conn *cn, const char *method, const char *url) {
    HttpServer *h = cn->h;
    cJSON *j;
    const char *name, *path;
    Err e = {0};
    if (parse_adapter_body(cn->body, cn->len, true, &j, &name, &path, &e)) { cJSON_Delete(j); return send_error(cn, e.status, e.msg, e.param, method, url); }
    if (!path && !h->ctx.o->adapters_dir) {
        cJSON_Delete(j);
        return send_error(cn, 400, "path is required (the server has no --adapters folder)", "path", method, url);
    }
    char *dir = path ? xstrdup(path) : path_join(h->ctx.o->adapters_dir, name);
    int status;
    int rc = adapter_pool_add(h->ctx.pool, name, dir, &status);
    free(dir);
    if (rc) {
        enum MHD_Result ok = send_error(cn, status, peft_last_error(), status == 409 || status == 400 ? "name" : NULL, method, url);
        cJSON_Delete(j);
        return ok;
    }
    cJSON *m = find_model(h, name);
    cJSON_Delete(j);
    if (!m) return send_error(cn, 409, "the adapter was removed while it loaded", NULL, method, url);
    return send_json(cn, 201, m, method, url);
}

static enum MHD_Result remove_adapter(Conn *cn, const char *name, const char *method, const char *url) {
    cJSON *j = NULL;
    if (!name || !name[0]) {  // DELETE /v1/adapters with {"name": ...}
        const char *path;
        Err e = {0};
        if (parse_adapter_body(cn->body, cn->len, false, &j, &name, &path, &e)) { cJSON_Delete(j); return send_error(cn, e.status, e.msg, e.param, method, url); }
    }
    if (!strcmp(name, "base")) { cJSON_Delete(j); return send_error(cn, 400, "the base model cannot be removed", "name", method, url); }
    int status;
    if (adapter_pool_remove(cn->h->ctx.pool, name, &status)) {
        enum MHD_Result ok = send_error(cn, status, peft_last_error(), "name", method, url);
        cJSON_Delete(j);
        return ok;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "id", name);
    cJSON_AddStringToObject(out, "object", "model");
    cJSON_AddBoolToObject(out, "deleted", true);
    cJSON_Delete(j);
    return send_json(cn, 200, out, method, url);
}

static enum MHD_Result health(Conn *cn, const char *method, const char *url) {
    HttpServer *h = cn->h;
    SchedulerStats s;
    PoolStats p;
    scheduler_stats(h->ctx.sched, &s);
    adapter_pool_stats(h->ctx.pool, &p);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", atomic_load(&h->stopping) ? "stopping" : "ok");
    cJSON_AddNumberToObject(j, "active", s.active);
    cJSON_AddNumberToObject(j, "queued", s.queued);
    cJSON_AddNumberToObject(j, "max_requests", s.max_requests);
    cJSON_AddNumberToObject(j, "completed", (double)s.completed);
    cJSON_AddNumberToObject(j, "cancelled", (double)s.cancelled);
    cJSON_AddNumberToObject(j, "timed_out", (double)s.timed_out);
    cJSON_AddNumberToObject(j, "steps", (double)s.steps);
    cJSON_AddNumberToObject(j, "tokens", (double)s.tokens);
    cJSON_AddNumberToObject(j, "adapters_registered", p.registered);
    cJSON_AddNumberToObject(j, "adapters_loaded", p.loaded);
    cJSON_AddNumberToObject(j, "adapter_loads", (double)p.loads);
    cJSON_AddNumberToObject(j, "adapter_evictions", (double)p.evictions);
    return send_json(cn, 200, j, method, url);
}

// ---- dispatch ----

static bool key_ok(HttpServer *h, struct MHD_Connection *c) {
    const char *key = h->ctx.o->api_key;
    if (!key || !key[0]) return true;
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7)) return false;
    auth += 7;
    while (*auth == ' ') auth++;
    size_t n = strlen(key), m = strlen(auth);
    unsigned diff = (unsigned)(n ^ m);
    for (size_t i = 0; i < m; i++) diff |= (unsigned char)auth[i] ^ (unsigned char)key[i % n];  // constant time
    return diff == 0;
}

static enum MHD_Result dispatch(Conn *cn, const char *url, const char *method) {
    HttpServer *h = cn->h;
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST"), del = !strcmp(method, "DELETE");
    if (!strcmp(url, "/health")) return get ? health(cn, method, url) : send_error(cn, 405, "use GET /health", NULL, method, url);
    if (strncmp(url, "/v1/", 4)) return send_error(cn, 404, "no such route (see /v1/models, /v1/completions, /v1/chat/completions, /v1/adapters)", NULL, method, url);
    if (!key_ok(h, cn->c)) return send_error(cn, 401, "a valid API key is required: Authorization: Bearer KEY", NULL, method, url);
    if (cn->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "the body is larger than this server's limit of %zu bytes", h->ctx.o->max_body);
        return send_error(cn, 413, msg, NULL, method, url);
    }
    if (!strcmp(url, "/v1/completions") || !strcmp(url, "/v1/chat/completions")) {
        if (!post) return send_error(cn, 405, "use POST", NULL, method, url);
        return run_generation(cn, url[4] == 'c' && url[5] == 'h' ? KIND_CHAT : KIND_COMPLETION, method, url);
    }
    if (!strcmp(url, "/v1/models") || !strcmp(url, "/v1/adapters")) {
        if (get) return send_json(cn, 200, models_json(h), method, url);
        if (!strcmp(url, "/v1/adapters") && post) return add_adapter(cn, method, url);
        if (!strcmp(url, "/v1/adapters") && del) return remove_adapter(cn, NULL, method, url);
        return send_error(cn, 405, "use GET (or POST / DELETE on /v1/adapters)", NULL, method, url);
    }
    const char *name = !strncmp(url, "/v1/models/", 11) ? url + 11 : !strncmp(url, "/v1/adapters/", 13) ? url + 13 : NULL;
    if (name && name[0] && !strchr(name, '/')) {
        if (get) {
            cJSON *m = find_model(h, name);
            return m ? send_json(cn, 200, m, method, url) : send_error(cn, 404, "no such model or adapter", "model", method, url);
        }
        if (del) return remove_adapter(cn, name, method, url);
        return send_error(cn, 405, "use GET or DELETE", NULL, method, url);
    }
    return send_error(cn, 404, "no such route", NULL, method, url);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size, void **con_cls) {
    (void)version;
    HttpServer *h = cls;
    Conn *cn = *con_cls;
    if (!cn) {  // the headers are in: the first call
        cn = xcalloc(1, sizeof *cn);
        cn->h = h;
        cn->c = c;
        cn->t0 = now_seconds();
        *con_cls = cn;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtod(cl, NULL) > (double)h->ctx.o->max_body) {
            // Refuse at once: MHD then skips the body and closes the connection.
            cn->too_large = true;
            if (!strncmp(url, "/v1/", 4) && !key_ok(h, c)) return send_error(cn, 401, "a valid API key is required: Authorization: Bearer KEY", NULL, method, url);
            char msg[128];
            snprintf(msg, sizeof msg, "the body is larger than this server's limit of %zu bytes", h->ctx.o->max_body);
            return send_error(cn, 413, msg, NULL, method, url);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (cn->too_large || cn->len + n > h->ctx.o->max_body) {
            cn->too_large = true;
            free(cn->body);
            cn->body = NULL;
            cn->len = cn->cap = 0;
            return MHD_YES;  // read and drop the rest; answer 413 at the end
        }
        if (cn->len + n + 1 > cn->cap) {
            cn->cap = (cn->len + n + 1) * 2;
            cn->body = xrealloc(cn->body, cn->cap);
        }
        memcpy(cn->body + cn->len, upload_data, n);
        cn->len += n;
        cn->body[cn->len] = 0;
        return MHD_YES;
    }
    if (atomic_load(&h->stopping)) return send_error(cn, 503, "the server is shutting down", NULL, method, url);
    return dispatch(cn, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)c;
    Conn *cn = *con_cls;
    if (!cn) return;
    if (cn->req) {
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) serve_request_cancel(cn->req);  // the client went away
        serve_request_unref(cn->req);
        atomic_fetch_sub(&cn->h->live, 1);
    }
    free(cn->body);
    free(cn->pending);
    free(cn);
    *con_cls = NULL;
}

HttpServer *http_server_start(const HttpContext *ctx, int *port_out) {
    HttpServer *h = xcalloc(1, sizeof *h);
    h->ctx = *ctx;
    atomic_init(&h->next_id, 1);
    atomic_init(&h->stopping, false);
    atomic_init(&h->live, 0);
    h->listen_fd = MHD_INVALID_SOCKET;
    h->im_end = -1;
    if (ctx->tok && !chat_template_load(&h->chat, ctx->model_dir)) {
        h->has_chat = true;
        h->im_end = tokenizer_token_id(ctx->tok, "<|im_end|>");
    } else snprintf(h->chat_error, sizeof h->chat_error, "%s", peft_last_error());
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)ctx->o->port);
    if (inet_pton(AF_INET, ctx->o->host, &addr.sin_addr) != 1) {
        free(h);
        peft_fail("--host %s is not an IPv4 address", ctx->o->host);
        return NULL;
    }
    unsigned limit = (unsigned)(ctx->o->max_requests + ctx->o->max_queue + 32);
    h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                            on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_END);
    if (!h->d) {
        if (h->has_chat) chat_template_free(&h->chat);
        free(h);
        peft_fail("cannot listen on %s:%d (in use, or not an address of this machine?)", ctx->o->host, ctx->o->port);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    *port_out = info ? info->port : ctx->o->port;
    return h;
}

void http_server_begin_stop(HttpServer *h) {
    if (!h) return;
    atomic_store(&h->stopping, true);
    h->listen_fd = MHD_quiesce_daemon(h->d);  // no new connections
}

void http_server_stop(HttpServer *h) {
    if (!h) return;
    atomic_store(&h->stopping, true);
    // The scheduler has ended every request: give their connections a moment to send their last
    // event (or error) before the sockets close.
    for (int i = 0; i < 200 && atomic_load(&h->live) > 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(h->d);
    if (h->listen_fd != MHD_INVALID_SOCKET) close(h->listen_fd);
    if (h->has_chat) chat_template_free(&h->chat);
    free(h);
}
