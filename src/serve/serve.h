// serve.h: `peft serve`: one base model, many adapters, one HTTP server (OpenAI-style API),
// with continuous batching: requests join and leave the running batch at token granularity and
// one batch mixes requests for different adapters and the base (m->row_adapters, adapter.h).
//
//   adapter_pool.c  named adapter folders, loaded detached on demand, least recently used evicted
//   scheduler.c     one thread owns the model and the KV cache and runs the batching loop
//   http_api.c      libmicrohttpd handlers: JSON requests, responses, server-sent events
//   serve.c         the whole server: options, start, stop
#pragma once
#include "adapter.h"
#include "data.h"
#include "generate.h"
#include "model.h"
#include "tokenizer.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// ---- the adapter pool (adapter_pool.c) ----
// Adapters are registered by name (a folder each) and loaded when a request first needs one.
// At most max_loaded are in memory; loading another frees the least recently used one that no
// running request holds. Thread-safe.

typedef struct AdapterPool AdapterPool;
typedef struct PoolEntry PoolEntry;

AdapterPool *adapter_pool_new(Model *m, int max_loaded);
void adapter_pool_free(AdapterPool *p);
// Registers every subfolder of dir that holds an adapter_config.json, under the subfolder's
// name, and loads the first max_loaded of them (so broken ones are reported at start).
// Folders that fail are reported in *warnings (malloc'd text, NULL when none) and skipped.
int adapter_pool_scan(AdapterPool *p, const char *dir, char **warnings);
// Registers name -> path and loads it now. Errors: *status 400 (bad name, the folder does not
// load or fit the model), 409 (name taken, or removed while it loaded: then nothing of it stays),
// 429 (every slot held by running requests).
int adapter_pool_add(AdapterPool *p, const char *name, const char *path, int *status);
// Unregisters name; its memory goes when the last request using it ends. *status 404 when unknown.
int adapter_pool_remove(AdapterPool *p, const char *name, int *status);
// The loaded set for name, held until adapter_pool_release (loading it, and evicting, as needed;
// when every slot is held by running requests, waiting up to wait_s seconds for one).
// NULL + *status: 404 unknown name, 429 every slot still in use, 500 the folder no longer loads.
PoolEntry *adapter_pool_acquire(AdapterPool *p, const char *name, AdapterSet **set, int *status, double wait_s);
void adapter_pool_release(AdapterPool *p, PoolEntry *e);
// Which load of its adapter a held entry's set is (> 0; 0 for NULL): a set freed and loaded again,
// or another loaded at the same address, has another serial.
uint64_t adapter_pool_entry_serial(const PoolEntry *e);
// Ends every wait for room at once (503) and refuses later ones: the server is stopping.
void adapter_pool_stop(AdapterPool *p);
bool adapter_pool_has(AdapterPool *p, const char *name);
// A cJSON array of {"id", "object": "model", "owned_by", "peft_type", "loaded", "in_use"} (no paths: clients
// need not know the server's folders).
void *adapter_pool_list_json(AdapterPool *p);
typedef struct { int registered, loaded, in_use; long loads, evictions; } PoolStats;
void adapter_pool_stats(AdapterPool *p, PoolStats *s);

// ---- requests and the scheduler (scheduler.c) ----

typedef enum {
    SERVE_RUNNING,
    SERVE_FINISH_LENGTH,   // max_tokens reached
    SERVE_FINISH_EOS,      // the model ended its text
    SERVE_FINISH_STOP,     // a stop string (the text ends before it)
    SERVE_FINISH_TIMEOUT,  // the request's deadline passed (text so far kept)
    SERVE_FINISH_CANCELLED,
    SERVE_FINISH_ERROR,
} ServeFinish;

typedef struct ServeRequest ServeRequest;

// A generation request: prompt token ids (copied), sampling parameters (copied with their stop
// strings; num_beams must be 1), the adapter set to apply (NULL = the base) and the pool entry
// that holds it (released when the request is freed; may be NULL), and a timeout (0 = none).
// The caller holds one reference.
ServeRequest *serve_request_new(const int32_t *prompt, int plen, const GenParams *p, AdapterSet *set,
                                AdapterPool *pool, PoolEntry *entry, double timeout_s);
void serve_request_unref(ServeRequest *r);
// Asks the scheduler to drop the request at its next step (a client that went away).
void serve_request_cancel(ServeRequest *r);
// Calls fn(user) after each change of the request's text or state (on the scheduler's thread, with
// the request's lock held: fn must not call into the request). fn NULL stops it: once this returns,
// the previous fn is not running and will not run again.
void serve_request_on_change(ServeRequest *r, void (*fn)(void *user), void *user);
// The same, told of the end only: a reader that wants the whole text is not woken for every token.
void serve_request_on_end(ServeRequest *r, void (*fn)(void *user), void *user);

typedef struct {
    ServeFinish finish;      // SERVE_RUNNING until done
    int n_prompt, n_gen;     // tokens
    int status;              // SERVE_FINISH_ERROR: an HTTP status for it
    char error[512];
} ServeStatus;
// Waits up to wait_s for new text or the end. Returns the text added since the last call
// (malloc'd, possibly empty; *len its length) and the request's state.
char *serve_request_poll(ServeRequest *r, double wait_s, size_t *len, ServeStatus *st);
// The generated token ids so far (a copy; tests).
int serve_request_tokens(ServeRequest *r, int32_t **ids);

typedef struct Scheduler Scheduler;
typedef struct {
    int max_requests;   // requests decoded together (KV cache slots)
    int max_len;        // tokens per request, prompt + output (<= the model's positions for GPT-2)
    int max_queue;      // requests waiting for a slot; beyond that a submit is refused (429)
    int threads;        // OpenMP threads of the scheduler thread (0 = default)
    int prefix_slots;   // prompts kept for the prefix cache (extra KV slots; 0 = no cache)
} SchedulerOptions;

// Starts the scheduler thread. tok may be NULL (no text, no stop strings).
Scheduler *scheduler_new(Model *m, const Tokenizer *tok, const SchedulerOptions *o);
// Stops the thread; running and waiting requests end with SERVE_FINISH_CANCELLED and later
// submits are refused (503). scheduler_free stops it too, then frees it.
void scheduler_stop(Scheduler *s);
void scheduler_free(Scheduler *s);
// Queues a request (the scheduler takes its own reference). Errors: *status 400 (prompt too long
// for max_len, bad parameters), 429 (queue full), 503 (stopping).
int scheduler_submit(Scheduler *s, ServeRequest *r, int *status);
// prefix_hits: requests that started from a cached prompt; prefix_tokens: prompt tokens they did not
// compute; forward_s: seconds in the model's forward (the rest of the scheduler's time is host work).
typedef struct {
    int active, queued, max_requests;
    long steps, tokens, completed, cancelled, timed_out, prefix_hits, prefix_tokens;
    double forward_s;
} SchedulerStats;
void scheduler_stats(Scheduler *s, SchedulerStats *st);

// ---- the server (serve.c, http_api.c) ----

typedef struct {
    const char *model_dir, *adapters_dir;
    const char *host;        // "127.0.0.1"
    int port;                // 0 = any free port (printed)
    int max_requests;        // 8
    int max_tokens;          // 256: largest max_tokens a request may ask for
    int max_adapters;        // 64 in memory at once
    int max_queue;           // 64 waiting
    double timeout_s;        // 300: a request's deadline (0 = none)
    const char *api_key;     // NULL = none; else "Authorization: Bearer KEY" (this or admin_key) on every /v1 route
    const char *admin_key;   // NULL = none; the key of adapter management (POST / DELETE /v1/adapters)
    bool allow_any_adapter_path;  // POST /v1/adapters may name folders outside adapters_dir
    int threads;             // 0 = default
    int context;             // tokens per request (prompt + output); 0 = min(model positions, 2048)
    int prefix_cache;        // 4: prompts kept for the prefix cache (SchedulerOptions.prefix_slots)
    size_t max_body;         // 1 MiB
    int max_connections;     // 512 open at once; more are closed as they come (>= HTTP_THREADS)
    int max_connections_per_ip;  // 32 from one client address; 0 = no limit
    int idle_timeout;        // 15: seconds a connection may send nothing (headers, body, between requests)
    bool quiet;              // no access log
    bool cuda;               // the model runs on the GPU (bf16, or fp32 with fp32)
    bool fp32;               // on the CPU: no bf16 copies of the weights that are exactly bf16 (model_keep_bf16)
    int quantize;            // a QuantType: the base's linears quantized on load (0: none)
    bool double_quant;
} ServeOptions;

void serve_options_default(ServeOptions *o);
// Runs the server until SIGINT or SIGTERM (or serve_request_stop). Prints
// "listening on http://HOST:PORT" to stdout once it accepts connections.
int serve_run(const ServeOptions *o);
void serve_request_stop(void);

// http_api.c: the HTTP layer over a loaded model, pool and scheduler. HTTP_THREADS threads serve
// every connection (epoll): a connection waiting for its generation holds no thread.
enum { HTTP_THREADS = 4 };
typedef struct HttpServer HttpServer;
typedef struct {
    Model *m;
    const Tokenizer *tok;
    Scheduler *sched;
    AdapterPool *pool;
    const ServeOptions *o;
    const char *model_dir;
    GenParams defaults;      // eos from generation_config.json
    int max_len;
} HttpContext;
// Listens on ctx->o->host:port (port 0: any free one, written to *port_out).
HttpServer *http_server_start(const HttpContext *ctx, int *port_out);
// New requests get 503 from now on (the scheduler is about to stop).
void http_server_begin_stop(HttpServer *h);
// Closes every connection (after their requests ended) and frees h.
void http_server_stop(HttpServer *h);
// A request body checked as its route checks it, without a server (fuzz/fuzz_http.c): for a
// completion or chat completion (chat: the model's template, NULL for none) the prompt's ids
// (*prompt, malloc'd, and *plen); for the adapter routes only the checks. Returns 0, or the
// HTTP status of the error (4xx) with peft_last_error() set to its message.
typedef enum { HTTP_BODY_COMPLETION, HTTP_BODY_CHAT, HTTP_BODY_ADD_ADAPTER, HTTP_BODY_REMOVE_ADAPTER } HttpBody;
int http_parse_body(const HttpContext *ctx, const ChatTemplate *chat, HttpBody kind, const char *body, size_t len, int32_t **prompt, int *plen);
