// http_api.c: the HTTP side of `peft serve` (libmicrohttpd: HTTP_THREADS threads on epoll).
//   GET  /health                      {"status": "ok", ...}: no API key needed
//   GET  /v1/models, /v1/models/NAME  "base" and every registered adapter
//   POST /v1/completions              OpenAI's text completions ("model" names an adapter or "base")
//   POST /v1/chat/completions         OpenAI's chat completions (the model's chat template; it stops at
//                                     the template's end-of-turn token: chat_template_stop_id)
//   GET  /v1/adapters                 the adapters, loaded or not
//   POST /v1/adapters                 {"name", "path"}: register and load one while serving (admin)
//   DELETE /v1/adapters/NAME          unregister it (freed when its running requests end) (admin)
// "stream": true answers with server-sent events ("data: {chunk}\n\n" ... "data: [DONE]\n\n").
// A request hands its generation to the scheduler, and its connection is suspended while it waits
// for text: no thread waits for it ("waiting without a thread" below). Work that may block (an
// adapter's load, a wait for a free adapter slot) runs on a job thread of its own. A client that
// goes away cancels its request at the next step. Slow clients: an idle timeout, a per-address and
// a total connection limit (docs/serve.md, Security).
// Every error is {"error": {"message", "type", "param", "code"}} with a 4xx (the client's
// mistake) or 5xx status, and touches nothing but its own request.
// Keys and adapter paths: authorize() and adapter_folder() (docs/serve.md, Security).
#include "data.h"
#include "gen_text.h"
#include "json_bytes.h"
#include "serve.h"
#include "util.h"
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
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
#include <sys/eventfd.h>
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
    int eot;                  // the template's end-of-turn token id, -1 when none
    char chat_error[512];     // why there is no template
    char *adapters_root;      // --adapters, resolved (realpath; "" for "/"); NULL when none
    bool loopback;            // listening on 127.0.0.0/8: no other machine can connect
    // Waiting connections and jobs (mu).
    pthread_mutex_t mu;
    pthread_cond_t jobs_cv;   // a job ended
    struct Conn *waiting;     // suspended by conn_wait; only the waker resumes them
    int jobs;                 // job threads running
    bool closing;             // no more jobs
    bool waker_stop;          // the waker resumes everything and ends; nothing waits any more
    int wake_fd;              // eventfd: the waker has work (news, or a socket to watch)
    pthread_t waker;
    pthread_mutex_t log_mu;   // libmicrohttpd's messages, at most one a second (mhd_log)
    double log_t;
    long log_dropped;
};

typedef enum { KIND_COMPLETION, KIND_CHAT } Kind;

// Request parameters (parsing below).
typedef struct {
    int status;               // 0 = fine
    char msg[600];
    char param[64];           // the field at fault ("" = none)
} Err;

typedef struct {
    const char *model;        // points into the JSON
    bool stream, include_usage;
    GenParams p;
    char *stops[4];
    int n_stop;
    int32_t *prompt;
    int plen;
} Params;

typedef struct Conn Conn;
// What a connection does when MHD calls it again: after its body, and after each resume.
typedef enum MHD_Result (*Step)(Conn *cn, const char *method, const char *url);

struct Conn {
    HttpServer *h;
    struct MHD_Connection *c;
    MHD_socket fd;
    char *body;
    size_t len, cap;
    bool too_large;
    double t0;
    Step step;                // NULL until dispatched
    // Waiting (h->mu).
    bool suspended;           // by conn_wait, until the waker resumes it
    bool news;                // its request changed, or its job ended, since it last looked
    bool gone;                // the client closed its end while it waited
    bool job_running;
    Conn *prev_wait, *next_wait;
    // What a job leaves (read once it ended): an error, or an added adapter.
    int fail_status;
    char fail_msg[600];
    const char *fail_param;
    char *job_name, *job_path;
    cJSON *job_json;
    // A generation: its parameters until it starts, then its request.
    Params q;
    ServeRequest *req;
    Kind kind;
    char id[48], model[96];
    long created;
    bool stream, include_usage, sent_role, finished;
    char *text;               // not streamed: the text so far
    size_t text_len, text_cap;
    char *pending;            // SSE bytes not yet handed to MHD
    size_t pending_len, pending_off, pending_cap;
};

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
    case 403: return "permission_error";
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

// ---- parsing ----

static int err(Err *e, int status, const char *param, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int err(Err *e, int status, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = status;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    return -1;
}

static void params_free(Params *q) {
    for (int i = 0; i < q->n_stop; i++) free(q->stops[i]);
    free(q->prompt);
    memset(q, 0, sizeof *q);
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
// with_bos: a bos first when the tokenizer adds one (a chat template writes its own).
static int encode_prompt(HttpServer *h, const char *text, size_t len, bool with_bos, Params *q, Err *e) {
    const Tokenizer *tok = h->ctx.tok;
    int32_t *enc = NULL;
    int k = 0;
    if (tokenizer_encode(tok, text, len, &enc, &k)) return err(e, 400, "prompt", "the prompt does not encode: %s", peft_last_error());
    int bos = tokenizer_bos(tok) >= 0 ? tokenizer_bos(tok) : h->ctx.m->cfg.bos_token_id;
    bool lead = (with_bos && tokenizer_add_bos(tok)) || k == 0;
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
    if (cJSON_IsString(x)) {
        size_t n;
        const char *text = json_bytes(x, &n);
        return encode_prompt(h, text, n, true, q, e);
    }
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
    cJSON *m = cJSON_CreateArray();  // {"role", "content"} for the template
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
        cJSON *msg = cJSON_CreateObject();
        cJSON_AddItemToObject(msg, "role", json_bytes_string(role->valuestring, strlen(role->valuestring)));
        cJSON_AddItemToObject(msg, "content", json_bytes_string(contents[i], strlen(contents[i])));
        cJSON_AddItemToArray(m, msg);
        i++;
    }
    if (!rc) {
        char *text = NULL;
        size_t len = 0;
        if (h->has_chat) {
            if (chat_template_render(&h->chat, m, NULL, true, &text, &len)) rc = err(e, 400, "messages", "%s", peft_last_error());
            if (h->eot >= 0 && q->p.eos_id != GEN_EOS_NONE && q->p.n_extra_eos < 8) q->p.extra_eos[q->p.n_extra_eos++] = h->eot;
        } else {
            // A model without a chat template of its own: the contents, one per line (so a
            // one-message chat equals a completion of its content).
            text = xstrdup("");
            for (int k = 0; k < n; k++) {
                size_t c = strlen(contents[k]);
                text = xrealloc(text, len + c + 2);
                if (k) text[len++] = '\n';
                memcpy(text + len, contents[k], c + 1);
                len += c;
            }
        }
        if (!rc) rc = encode_prompt(h, text, len, !h->has_chat, q, e);
        free(text);
    }
    for (int k = 0; k < n; k++) free(contents[k]);
    free(contents);
    cJSON_Delete(m);
    return rc;
}

// The name of the first field whose string holds a NUL byte, `allowed` aside; NULL when none.
// Names, roles, contents and stop strings are C strings from here on: a NUL would cut them short.
static const char *nul_field(const cJSON *x, const cJSON *allowed, const char *field) {
    if (x == allowed) return NULL;
    if (x->string) field = x->string;
    size_t n;
    if (cJSON_IsString(x)) return json_bytes(x, &n), n != strlen(x->valuestring) ? field : NULL;
    for (const cJSON *c = x->child; c; c = c->next) {
        const char *f = nul_field(c, allowed, field);
        if (f) return f;
    }
    return NULL;
}

// A body that must be a JSON object whose strings hold no NUL byte but in its member `bytes` (NULL:
// none may). *j is the caller's to delete, also on error.
static int body_object(const char *body, size_t len, const char *bytes, cJSON **j, Err *e) {
    *j = json_parse_bytes(body ? body : "", len);
    if (!*j || !cJSON_IsObject(*j)) return err(e, 400, NULL, "%s", *j ? "the body is not a JSON object" : peft_last_error());
    const char *f = nul_field(*j, bytes ? cJSON_GetObjectItemCaseSensitive(*j, bytes) : NULL, NULL);
    if (f) return err(e, 400, f, "%s holds a NUL byte (\\u0000): only a completion's prompt may", f);
    return 0;
}

// A completion or chat-completion body into q (q->model points into *j, which the caller deletes).
static int parse_generation(HttpServer *h, Kind kind, const char *body, size_t len, cJSON **j, Params *q, Err *e) {
    if (body_object(body, len, kind == KIND_COMPLETION ? "prompt" : NULL, j, e)) return -1;
    return kind == KIND_CHAT ? parse_chat(h, *j, q, e) : parse_completion(h, *j, q, e);
}

// ---- waiting without a thread ----
// A connection whose answer is not ready is suspended (conn_wait): MHD leaves it alone and no
// thread waits for it. News for it (its request's on-change hook, its job's end) marks it, and one
// waker thread resumes the marked ones; meanwhile the waker watches their sockets, and resumes a
// connection whose client went away so that its request is cancelled. Suspending and resuming
// happen under h->mu, so a connection is never resumed before it is suspended.

static void wake(HttpServer *h) {
    uint64_t one = 1;
    if (write(h->wake_fd, &one, sizeof one) < 0) return;  // the counter is full: the waker is awake anyway
}

// News for cn: its request's text or state changed (any thread).
static void conn_news(void *arg) {
    Conn *cn = arg;
    HttpServer *h = cn->h;
    pthread_mutex_lock(&h->mu);
    bool had = cn->news;  // then the waker was told already
    cn->news = true;
    if (cn->suspended && !had) wake(h);
    pthread_mutex_unlock(&h->mu);
}

// Suspends cn until it has news: 1 suspended (return to MHD), 0 news came meanwhile (look again
// now), -1 the server is closing and nothing waits any more.
static int conn_wait(Conn *cn) {
    HttpServer *h = cn->h;
    pthread_mutex_lock(&h->mu);
    int rc = h->waker_stop ? -1 : cn->news ? 0 : 1;
    cn->news = false;
    if (rc == 1) {
        cn->suspended = true;
        cn->prev_wait = NULL;
        cn->next_wait = h->waiting;
        if (h->waiting) h->waiting->prev_wait = cn;
        h->waiting = cn;
        MHD_suspend_connection(cn->c);
        wake(h);  // to watch its socket
    }
    pthread_mutex_unlock(&h->mu);
    return rc;
}

static void *waker_main(void *arg) {
    HttpServer *h = arg;
    int cap = 16;
    struct pollfd *fds = xmalloc(sizeof *fds * cap);
    Conn **who = xmalloc(sizeof *who * cap);
    pthread_mutex_lock(&h->mu);
    for (;;) {
        int n = 1;  // fds[0]: wake_fd
        for (Conn *cn = h->waiting, *next; cn; cn = next) {
            next = cn->next_wait;
            if (cn->news || h->waker_stop) {
                if (cn->prev_wait) cn->prev_wait->next_wait = next;
                else h->waiting = next;
                if (next) next->prev_wait = cn->prev_wait;
                cn->suspended = false;
                MHD_resume_connection(cn->c);
                continue;
            }
            if (cn->gone) continue;  // its request is being cancelled: it waits for the news of that
            if (n == cap) {
                fds = xrealloc(fds, sizeof *fds * (cap *= 2));
                who = xrealloc(who, sizeof *who * cap);
            }
            fds[n] = (struct pollfd){.fd = cn->fd, .events = POLLRDHUP};
            who[n++] = cn;
        }
        if (h->waker_stop) break;
        pthread_mutex_unlock(&h->mu);
        fds[0] = (struct pollfd){.fd = h->wake_fd, .events = POLLIN};
        poll(fds, (nfds_t)n, -1);
        uint64_t count;
        if ((fds[0].revents & POLLIN) && read(h->wake_fd, &count, sizeof count) < 0) count = 0;
        pthread_mutex_lock(&h->mu);
        // Still suspended (only this thread resumes them): the client went away.
        for (int i = 1; i < n; i++)
            if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) who[i]->gone = who[i]->news = true;
    }
    pthread_mutex_unlock(&h->mu);
    free(fds);
    free(who);
    return NULL;
}

// Ends the waker, which resumes every waiting connection on its way out; nothing waits after.
static void stop_waker(HttpServer *h) {
    pthread_mutex_lock(&h->mu);
    h->waker_stop = true;
    wake(h);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->waker, NULL);
}

// Whether cn still waits for its job (suspended: return MHD_YES to MHD). Once it ended, its
// results in cn are this thread's to read (h->mu orders them).
static bool awaits_job(Conn *cn) {
    for (;;) {
        pthread_mutex_lock(&cn->h->mu);
        bool running = cn->job_running;
        pthread_mutex_unlock(&cn->h->mu);
        if (!running) return false;
        if (conn_wait(cn) > 0) return true;  // (never -1 while a job runs: the waker outlives the jobs)
    }
}

// Runs fn(cn) on a thread of its own (work that may block: an adapter's load, a wait for a free
// adapter slot); cn waits meanwhile, then goes on with `then`. At most --max-requests +
// --max-queue jobs at once.
static enum MHD_Result run_job(Conn *cn, void *(*fn)(void *), Step then, const char *method, const char *url) {
    HttpServer *h = cn->h;
    pthread_mutex_lock(&h->mu);
    bool closing = h->closing, full = h->jobs >= h->ctx.o->max_requests + h->ctx.o->max_queue;
    if (!closing && !full) {
        h->jobs++;
        cn->job_running = true;
    }
    pthread_mutex_unlock(&h->mu);
    if (closing) return send_error(cn, 503, "the server is shutting down", NULL, method, url);
    if (full) return send_error(cn, 429, "too many requests are waiting for adapters; try again later", NULL, method, url);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int rc = pthread_create(&t, &attr, fn, cn);
    pthread_attr_destroy(&attr);
    if (rc) {
        pthread_mutex_lock(&h->mu);
        h->jobs--;
        cn->job_running = false;
        pthread_mutex_unlock(&h->mu);
        return send_error(cn, 503, "the server cannot start a thread for this request now", NULL, method, url);
    }
    cn->step = then;
    return then(cn, method, url);
}

// A job's end, its results in cn: cn is resumed. The job touches neither cn nor h afterwards.
static void job_end(Conn *cn) {
    HttpServer *h = cn->h;
    pthread_mutex_lock(&h->mu);
    cn->job_running = false;
    cn->news = true;
    if (cn->suspended) wake(h);
    h->jobs--;
    pthread_cond_broadcast(&h->jobs_cv);
    pthread_mutex_unlock(&h->mu);
}

static void job_fail(Conn *cn, int status, const char *msg, const char *param) {
    cn->fail_status = status;
    snprintf(cn->fail_msg, sizeof cn->fail_msg, "%s", msg);
    cn->fail_param = param;
}

// POST /v1/adapters' {"name", "path"} (with_path) or DELETE /v1/adapters' {"name"}: *name and
// *path (NULL when absent or null) point into *j, which the caller deletes.
static int parse_adapter_body(const char *body, size_t len, bool with_path, cJSON **j, const char **name, const char **path, Err *e) {
    *path = NULL;
    bool parsed = body_object(body, len, NULL, j, e) == 0;
    if (!parsed && with_path) return -1;
    const cJSON *n = parsed ? cJSON_GetObjectItemCaseSensitive(*j, "name") : NULL, *p = cJSON_GetObjectItemCaseSensitive(*j, "path");
    if (!cJSON_IsString(n))
        return with_path ? err(e, 400, "name", "name (a string) is required") : err(e, 400, "name", "name the adapter: DELETE /v1/adapters/NAME");
    *name = n->valuestring;
    if (!with_path) return 0;
    if (p && !cJSON_IsNull(p) && !cJSON_IsString(p)) return err(e, 400, "path", "path must be a string");
    *path = cJSON_IsString(p) ? p->valuestring : NULL;
    return 0;
}

int http_parse_body(const HttpContext *ctx, const ChatTemplate *chat, HttpBody kind, const char *body, size_t len, int32_t **prompt, int *plen) {
    HttpServer h = {.ctx = *ctx, .eot = -1};
    if (chat && !chat->is_default) {
        h.chat = *chat;
        h.has_chat = true;
        h.eot = chat_template_stop_id(chat, ctx->tok);
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

// One SSE choice chunk: text[0..len) (may be NULL) and finish reason (NULL while running).
static cJSON *choice_chunk(Conn *cn, const char *text, size_t len, const char *reason, bool role) {
    cJSON *j = chunk_head(cn), *choices = cJSON_AddArrayToObject(j, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (cn->kind == KIND_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (text) cJSON_AddItemToObject(d, "content", json_bytes_item(text, len));
    } else {
        cJSON_AddItemToObject(c, "text", json_bytes_item(text ? text : "", len));
        cJSON_AddNullToObject(c, "logprobs");
    }
    if (reason) cJSON_AddStringToObject(c, "finish_reason", reason);
    else cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    return j;
}

static void pending_add(Conn *cn, const char *s, size_t n) {
    if (cn->pending_off == cn->pending_len) cn->pending_off = cn->pending_len = 0;
    bytes_append(&cn->pending, &cn->pending_len, &cn->pending_cap, s, n);
}

static void pending_event(Conn *cn, cJSON *j) {
    char *text = cJSON_PrintUnformatted(j);
    pending_add(cn, "data: ", 6);
    pending_add(cn, text, strlen(text));
    pending_add(cn, "\n\n", 2);
    free(text);
    cJSON_Delete(j);
}

// MHD asks for more of the event stream: hand over what is pending, else the scheduler's new
// text; with none yet, the connection waits for it (suspended).
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
            pending_event(cn, choice_chunk(cn, "", 0, NULL, true));
            continue;
        }
        if (cn->gone) {
            serve_request_cancel(cn->req);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        size_t len;
        ServeStatus st;
        char *text = serve_request_poll(cn->req, 0, &len, &st);
        if (len) pending_event(cn, choice_chunk(cn, text, len, NULL, false));
        free(text);
        if (st.finish == SERVE_RUNNING) {
            if (len) continue;
            int w = conn_wait(cn);
            if (w > 0) return 0;  // MHD asks again once resumed
            if (w < 0) {
                serve_request_cancel(cn->req);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            continue;
        }
        if (st.finish == SERVE_FINISH_CANCELLED && !st.status) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (st.finish == SERVE_FINISH_LENGTH || st.finish == SERVE_FINISH_EOS || st.finish == SERVE_FINISH_STOP) {
            pending_event(cn, choice_chunk(cn, cn->kind == KIND_CHAT ? NULL : "", 0, finish_reason(st.finish), false));
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

// Hands cn's generation (cn->q) to the scheduler with the adapter set acquired (NULL: the base);
// a failure goes to cn->fail_*. On the connection's thread for the base, on a job's for an adapter.
static void start_generation(Conn *cn, AdapterSet *set, PoolEntry *entry) {
    HttpServer *h = cn->h;
    ServeRequest *r = serve_request_new(cn->q.prompt, cn->q.plen, &cn->q.p, set, h->ctx.pool, entry, h->ctx.o->timeout_s);
    params_free(&cn->q);
    if (cn->stream) serve_request_on_change(r, conn_news, cn);
    else serve_request_on_end(r, conn_news, cn);  // answer_text wants the whole text: one wake-up, not one per token
    int status = 503, rc = atomic_load(&h->stopping) ? peft_fail("the server is shutting down") : scheduler_submit(h->ctx.sched, r, &status);
    if (rc) {
        job_fail(cn, status, peft_last_error(), status == 400 ? "prompt" : NULL);
        serve_request_on_change(r, NULL, NULL);
        serve_request_unref(r);
        return;
    }
    cn->req = r;
    atomic_fetch_add(&h->live, 1);
    cn->created = (long)time(NULL);
    snprintf(cn->id, sizeof cn->id, "%s-%ld", cn->kind == KIND_CHAT ? "chatcmpl" : "cmpl", atomic_fetch_add(&h->next_id, 1));
}

// The job of a generation for an adapter: acquire its set, waiting (within the request's timeout)
// for a slot when every one is held by running requests, then start.
static void *acquire_job(void *arg) {
    Conn *cn = arg;
    HttpServer *h = cn->h;
    double t = h->ctx.o->timeout_s;
    AdapterSet *set = NULL;
    int status = 0;
    PoolEntry *entry = adapter_pool_acquire(h->ctx.pool, cn->model, &set, &status, t > 0 ? t - (now_seconds() - cn->t0) : 1e9);
    if (entry) start_generation(cn, set, entry);
    else if (status != 500) job_fail(cn, status, peft_last_error(), status == 404 ? "model" : NULL);
    else {
        fprintf(stderr, "peft serve: %s\n", peft_last_error());  // names server files: the log's, not the client's
        char msg[200];
        snprintf(msg, sizeof msg, "adapter \"%s\" no longer loads (the server's log says why)", cn->model);
        job_fail(cn, 500, msg, NULL);
    }
    job_end(cn);
    return NULL;
}

// The whole text of a generation that is not streamed (the connection waits between its pieces).
static enum MHD_Result answer_text(Conn *cn, const char *method, const char *url) {
    ServeStatus st;
    for (;;) {
        size_t len;
        char *text = serve_request_poll(cn->req, 0, &len, &st);
        bytes_append(&cn->text, &cn->text_len, &cn->text_cap, text, len);
        free(text);
        if (st.finish != SERVE_RUNNING) break;
        if (cn->gone) serve_request_cancel(cn->req);
        int w = conn_wait(cn);
        if (w > 0) return MHD_YES;
        if (w < 0) {
            serve_request_cancel(cn->req);
            return send_error(cn, 503, "the server is shutting down", NULL, method, url);
        }
    }
    if (st.finish == SERVE_FINISH_CANCELLED && !st.status) {
        access_log(cn, method, url, 499);
        return MHD_NO;  // nobody to answer
    }
    if (st.finish != SERVE_FINISH_LENGTH && st.finish != SERVE_FINISH_EOS && st.finish != SERVE_FINISH_STOP)
        return send_error(cn, st.status ? st.status : 500, st.error[0] ? st.error : "the request failed", NULL, method, url);
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "id", cn->id);
    cJSON_AddStringToObject(out, "object", cn->kind == KIND_CHAT ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(out, "created", (double)cn->created);
    cJSON_AddStringToObject(out, "model", cn->model);
    cJSON *choices = cJSON_AddArrayToObject(out, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    const char *text = cn->text ? cn->text : "";
    if (cn->kind == KIND_CHAT) {
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddItemToObject(msg, "content", json_bytes_item(text, cn->text_len));
    } else {
        cJSON_AddItemToObject(c, "text", json_bytes_item(text, cn->text_len));
        cJSON_AddNullToObject(c, "logprobs");
    }
    cJSON_AddStringToObject(c, "finish_reason", finish_reason(st.finish));
    cJSON_AddItemToArray(choices, c);
    cJSON_AddItemToObject(out, "usage", usage_json(&st));
    return send_json(cn, 200, out, method, url);
}

// A generation once it may have started: its error, its event stream, or its text.
static enum MHD_Result generation_step(Conn *cn, const char *method, const char *url) {
    if (awaits_job(cn)) return MHD_YES;
    if (cn->fail_status) return send_error(cn, cn->fail_status, cn->fail_msg, cn->fail_param, method, url);
    if (!cn->stream) return answer_text(cn, method, url);
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, cn, NULL);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    enum MHD_Result ok = MHD_queue_response(cn->c, 200, resp);
    MHD_destroy_response(resp);
    access_log(cn, method, url, 200);
    return ok;
}

static enum MHD_Result run_generation(Conn *cn, Kind kind, const char *method, const char *url) {
    HttpServer *h = cn->h;
    Err e = {0};
    cJSON *j = NULL;
    if (parse_generation(h, kind, cn->body, cn->len, &j, &cn->q, &e)) {
        cJSON_Delete(j);
        return send_error(cn, e.status, e.msg, e.param[0] ? e.param : NULL, method, url);
    }
    snprintf(cn->model, sizeof cn->model, "%s", cn->q.model);
    cJSON_Delete(j);  // q.model is not used after this
    cn->kind = kind;
    cn->stream = cn->q.stream;
    cn->include_usage = cn->q.include_usage;
    if (strcmp(cn->model, "base")) return run_job(cn, acquire_job, generation_step, method, url);
    start_generation(cn, NULL, NULL);
    cn->step = generation_step;
    return generation_step(cn, method, url);
}

// ---- models and adapters ----

static cJSON *base_json(HttpServer *h) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", "base");
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddNumberToObject(o, "created", 0);
    cJSON_AddStringToObject(o, "owned_by", "peft");
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

// The folder POST /v1/adapters loads: path, else --adapters/NAME (malloc'd). Unless the operator
// allows any path, it must resolve (symlinks and ".." followed) to a folder inside --adapters, and
// it is loaded by its resolved name. NULL when refused, whatever the reason: the answer must not
// tell a client which folders exist outside.
static char *adapter_folder(HttpServer *h, const char *name, const char *path) {
    const ServeOptions *o = h->ctx.o;
    if (o->allow_any_adapter_path && path) return xstrdup(path);
    if (!o->adapters_dir) return NULL;
    char *want = path ? xstrdup(path) : path_join(o->adapters_dir, name);
    if (o->allow_any_adapter_path) return want;
    char *real = realpath(want, NULL);
    free(want);
    size_t n = strlen(h->adapters_root);
    if (real && !strncmp(real, h->adapters_root, n) && real[n] == '/' && real[n + 1] && dir_exists(real)) return real;
    free(real);
    return NULL;
}

// The job of POST /v1/adapters: the folder resolved and loaded (both may be slow).
static void *add_job(void *arg) {
    Conn *cn = arg;
    HttpServer *h = cn->h;
    char *dir = adapter_folder(h, cn->job_name, cn->job_path);
    int status;
    if (!dir)
        job_fail(cn, 400, h->adapters_root ? "path must name an adapter folder inside the server's adapters folder"
                          : h->ctx.o->allow_any_adapter_path ? "path is required (the server has no --adapters folder)"
                                                             : "this server loads adapters only from its --adapters folder, and it has none", "path");
    else if (adapter_pool_add(h->ctx.pool, cn->job_name, dir, &status))
        job_fail(cn, status, peft_last_error(), status == 409 || status == 400 ? "name" : NULL);
    else if (!(cn->job_json = find_model(h, cn->job_name))) job_fail(cn, 409, "the adapter was removed while it loaded", NULL);
    free(dir);
    job_end(cn);
    return NULL;
}

static enum MHD_Result add_step(Conn *cn, const char *method, const char *url) {
    if (awaits_job(cn)) return MHD_YES;
    if (cn->fail_status) return send_error(cn, cn->fail_status, cn->fail_msg, cn->fail_param, method, url);
    cJSON *m = cn->job_json;
    cn->job_json = NULL;
    return send_json(cn, 201, m, method, url);
}

static enum MHD_Result add_adapter(Conn *cn, const char *method, const char *url) {
    Err e;
    cJSON *j;
    const char *name, *path;
    if (parse_adapter_body(cn->body, cn->len, true, &j, &name, &path, &e)) {
        cJSON_Delete(j);
        return send_error(cn, e.status, e.msg, e.param[0] ? e.param : NULL, method, url);
    }
    cn->job_name = xstrdup(name);
    cn->job_path = path ? xstrdup(path) : NULL;
    cJSON_Delete(j);
    return run_job(cn, add_job, add_step, method, url);
}

static enum MHD_Result remove_adapter(Conn *cn, const char *name, const char *method, const char *url) {
    cJSON *j = NULL;
    if (!name || !name[0]) {  // DELETE /v1/adapters with {"name": ...}
        const char *path;
        Err e;
        if (parse_adapter_body(cn->body, cn->len, false, &j, &name, &path, &e)) {
            cJSON_Delete(j);
            return send_error(cn, e.status, e.msg, e.param[0] ? e.param : NULL, method, url);
        }
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
    cJSON_AddNumberToObject(j, "forward_seconds", s.forward_s);
    cJSON_AddNumberToObject(j, "prefix_hits", (double)s.prefix_hits);
    cJSON_AddNumberToObject(j, "prefix_tokens", (double)s.prefix_tokens);
    cJSON_AddNumberToObject(j, "adapters_registered", p.registered);
    cJSON_AddNumberToObject(j, "adapters_loaded", p.loaded);
    cJSON_AddNumberToObject(j, "adapter_loads", (double)p.loads);
    cJSON_AddNumberToObject(j, "adapter_evictions", (double)p.evictions);
    return send_json(cn, 200, j, method, url);
}

// ---- dispatch ----

// Whether the request's "Authorization: Bearer KEY" names key (NULL: no key is set).
static bool bearer_is(struct MHD_Connection *c, const char *key) {
    if (!key) return false;
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7)) return false;
    auth += 7;
    while (*auth == ' ') auth++;
    size_t n = strlen(key), m = strlen(auth);
    unsigned diff = (unsigned)(n ^ m);
    for (size_t i = 0; i < m; i++) diff |= (unsigned char)auth[i] ^ (unsigned char)key[i % n];  // constant time
    return diff == 0;
}

// Who may do what (docs/serve.md, Security). Every /v1 route: the API key or the admin key when
// an API key is set, else anyone. Adapter management (manage) besides: the admin key when one is
// set; nobody when only an API key is set (its holders must not change what others are served);
// with no key at all, anyone while the server listens on loopback only. 0, else 401 / 403 and why.
static int authorize(HttpServer *h, struct MHD_Connection *c, bool manage, const char **why) {
    const ServeOptions *o = h->ctx.o;
    bool user = bearer_is(c, o->api_key), admin = bearer_is(c, o->admin_key);
    if (o->api_key && !user && !admin) {
        *why = "a valid API key is required: Authorization: Bearer KEY";
        return 401;
    }
    if (!manage || admin) return 0;
    if (o->admin_key) {
        *why = user ? "adapter management needs the admin key, not the API key" : "adapter management needs the admin key: Authorization: Bearer KEY";
        return user ? 403 : 401;
    }
    if (o->api_key || !h->loopback) {
        *why = o->api_key ? "adapter management is off: this server has an API key but no admin key"
                          : "adapter management is off: this server can be reached from other machines and has no admin key";
        return 403;
    }
    return 0;
}

static enum MHD_Result dispatch(Conn *cn, const char *url, const char *method) {
    HttpServer *h = cn->h;
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST"), del = !strcmp(method, "DELETE");
    if (!strcmp(url, "/health")) return get ? health(cn, method, url) : send_error(cn, 405, "use GET /health", NULL, method, url);
    if (strncmp(url, "/v1/", 4)) return send_error(cn, 404, "no such route (see /v1/models, /v1/completions, /v1/chat/completions, /v1/adapters)", NULL, method, url);
    const char *why;
    int denied = authorize(h, cn->c, del || (post && !strcmp(url, "/v1/adapters")), &why);
    if (denied) return send_error(cn, denied, why, NULL, method, url);
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
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        cn->fd = ci ? ci->connect_fd : MHD_INVALID_SOCKET;
        cn->t0 = now_seconds();
        *con_cls = cn;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtod(cl, NULL) > (double)h->ctx.o->max_body) {
            // Refuse at once: MHD then skips the body and closes the connection.
            cn->too_large = true;
            const char *why;
            if (!strncmp(url, "/v1/", 4) && authorize(h, c, false, &why)) return send_error(cn, 401, why, NULL, method, url);
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
    if (cn->step) return cn->step(cn, method, url);  // resumed
    if (atomic_load(&h->stopping)) return send_error(cn, 503, "the server is shutting down", NULL, method, url);
    return dispatch(cn, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)c;
    Conn *cn = *con_cls;
    if (!cn) return;
    if (cn->req) {
        serve_request_on_change(cn->req, NULL, NULL);  // no news for cn from now on
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) serve_request_cancel(cn->req);  // the client went away
        serve_request_unref(cn->req);
        atomic_fetch_sub(&cn->h->live, 1);
    }
    params_free(&cn->q);
    cJSON_Delete(cn->job_json);
    free(cn->job_name);
    free(cn->job_path);
    free(cn->text);
    free(cn->body);
    free(cn->pending);
    free(cn);
    *con_cls = NULL;
}

static void log_dropped(HttpServer *h) {
    if (h->log_dropped) fprintf(stderr, "peft serve: (%ld more messages of the HTTP library since the last)\n", h->log_dropped);
    h->log_dropped = 0;
}

// libmicrohttpd's error log, at most one line a second: under attack it would write one for every
// connection turned away.
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    HttpServer *h = cls;
    pthread_mutex_lock(&h->log_mu);
    double now = now_seconds();
    if (now - h->log_t >= 1) {
        log_dropped(h);
        fputs("peft serve: ", stderr);
        vfprintf(stderr, fmt, ap);  // (its messages end with a newline)
        h->log_t = now;
    } else h->log_dropped++;
    pthread_mutex_unlock(&h->log_mu);
}

static void server_free(HttpServer *h) {
    chat_template_free(&h->chat);
    if (h->wake_fd >= 0) close(h->wake_fd);
    pthread_mutex_destroy(&h->mu);
    pthread_mutex_destroy(&h->log_mu);
    pthread_cond_destroy(&h->jobs_cv);
    free(h->adapters_root);
    free(h);
}

HttpServer *http_server_start(const HttpContext *ctx, int *port_out) {
    const ServeOptions *o = ctx->o;
    HttpServer *h = xcalloc(1, sizeof *h);
    h->ctx = *ctx;
    atomic_init(&h->next_id, 1);
    atomic_init(&h->stopping, false);
    atomic_init(&h->live, 0);
    h->listen_fd = MHD_INVALID_SOCKET;
    h->eot = -1;
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->log_mu, NULL);
    pthread_cond_init(&h->jobs_cv, NULL);
    h->log_t = -1e9;
    h->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)o->port);
    if (inet_pton(AF_INET, o->host, &addr.sin_addr) != 1) {
        server_free(h);
        peft_fail("--host %s is not an IPv4 address", o->host);
        return NULL;
    }
    h->loopback = (ntohl(addr.sin_addr.s_addr) >> 24) == 127;
    if (!h->loopback && !o->api_key)
        fprintf(stderr, "peft serve: warning: listening on %s without an API key: anyone who can reach it may generate (set PEFT_API_KEY)\n", o->host);
    if (o->adapters_dir) {
        if (!(h->adapters_root = realpath(o->adapters_dir, NULL))) {
            int e = errno;
            server_free(h);
            peft_fail("--adapters %s: cannot resolve: %s", o->adapters_dir, strerror(e));
            return NULL;
        }
        if (!strcmp(h->adapters_root, "/")) h->adapters_root[0] = 0;  // so that root + "/" prefixes what is inside
    }
    if (ctx->tok && !chat_template_load(&h->chat, ctx->model_dir)) {
        h->has_chat = !h->chat.is_default;
        h->eot = chat_template_stop_id(&h->chat, ctx->tok);
    } else snprintf(h->chat_error, sizeof h->chat_error, "%s", peft_last_error());
    if (h->wake_fd < 0 || pthread_create(&h->waker, NULL, waker_main, h)) {
        server_free(h);
        peft_fail("cannot start the server's waker thread");
        return NULL;
    }
    // Slow clients (slowloris): a connection that sends nothing for --idle-timeout seconds is
    // closed, one address may hold --max-connections-per-ip, and all of them --max-connections;
    // HTTP_THREADS threads serve them all (epoll), so that many idle connections cost no thread.
    h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                            on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)HTTP_THREADS, MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)o->max_connections_per_ip,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->idle_timeout, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536,
                            MHD_OPTION_END);
    if (!h->d) {
        stop_waker(h);
        server_free(h);
        peft_fail("cannot listen on %s:%d (in use, or not an address of this machine?)", o->host, o->port);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    *port_out = info ? info->port : o->port;
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
    pthread_mutex_lock(&h->mu);
    h->closing = true;  // no new jobs; the running ones end (the pool and the scheduler are stopping)
    while (h->jobs > 0) pthread_cond_wait(&h->jobs_cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
    // The scheduler has ended every request: give their connections a moment to send their last
    // event (or error) before the sockets close.
    for (int i = 0; i < 200 && atomic_load(&h->live) > 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    stop_waker(h);  // MHD_stop_daemon wants no connection suspended
    MHD_stop_daemon(h->d);
    if (h->listen_fd != MHD_INVALID_SOCKET) close(h->listen_fd);
    log_dropped(h);
    server_free(h);
}
