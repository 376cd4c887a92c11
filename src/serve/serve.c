// serve.c: `peft serve` put together: the base model and tokenizer, the adapter pool, the
// scheduler thread and the HTTP server; runs until SIGINT / SIGTERM, then lets running
// requests end (they are cancelled) and frees everything.
#include "serve.h"
#include "cuda/gpu.h"
#include "util.h"
#include <cblas.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_bool stop_requested;

void serve_request_stop(void) { atomic_store(&stop_requested, true); }

void serve_options_default(ServeOptions *o) {
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8000;
    o->max_requests = 8;
    o->max_tokens = 256;
    o->max_adapters = 64;
    o->max_queue = 64;
    o->timeout_s = 300;
    o->max_body = 1 << 20;
    o->max_connections = 512;
    o->max_connections_per_ip = 32;
    o->idle_timeout = 15;
    o->prefix_cache = 4;
}


int serve_run(const ServeOptions *o) {
    if (o->max_requests < 1 || o->max_tokens < 1 || o->max_adapters < 1 || o->max_queue < 0 || o->timeout_s < 0 || o->port < 0 ||
        o->port > 65535 || o->max_body < 64 || o->max_connections < HTTP_THREADS || o->max_connections_per_ip < 0 || o->idle_timeout < 1 || o->prefix_cache < 0)
        return peft_fail("serve: --max-requests, --max-tokens, --max-adapters and --idle-timeout must be >= 1, --max-queue, --timeout, "
                         "--prefix-cache and --max-connections-per-ip >= 0, --max-connections >= %d, --port 0..65535", HTTP_THREADS);
    // Every thread started from here on leaves SIGINT / SIGTERM to this one.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (o->threads > 0) {
        omp_set_num_threads(o->threads);
        openblas_set_num_threads(o->threads);
    }
    int rc = -1;
    double t_stop = 0;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    AdapterPool *pool = NULL;
    Scheduler *sched = NULL;
    HttpServer *http = NULL;
    if (!(m = model_load_quantized(o->model_dir, o->quantize, o->double_quant)) || model_require_decoder(&m->cfg, "peft serve")) goto out;
    if (!(tok = tokenizer_load(o->model_dir))) goto out;
    if (o->cuda && gpu_inference_attach(m, o->fp32 ? GPU_FP32 : GPU_BF16)) goto out;
    if (!o->cuda && !o->fp32) model_keep_bf16(m, true);  // weights exactly bf16 read in bf16: half the bytes a token
    const ModelConfig *c = &m->cfg;
    int max_len = o->context > 0 ? o->context : c->n_positions < 2048 ? c->n_positions : 2048;
    if (c->arch == ARCH_GPT2 && max_len > c->n_positions) {
        peft_fail("--context %d exceeds the model's n_positions %d", max_len, c->n_positions);
        goto out;
    }
    if (max_len < 2) { peft_fail("--context must be at least 2"); goto out; }
    pool = adapter_pool_new(m, o->max_adapters);
    if (o->adapters_dir) {
        char *warnings = NULL;
        if (adapter_pool_scan(pool, o->adapters_dir, &warnings)) goto out;
        if (warnings) fprintf(stderr, "peft serve: %s", warnings);
        free(warnings);
    }
    SchedulerOptions so = {.max_requests = o->max_requests, .max_len = max_len, .max_queue = o->max_queue, .threads = o->threads,
                         .prefix_slots = o->prefix_cache};
    if (!(sched = scheduler_new(m, tok, &so))) goto out;
    HttpContext ctx = {.m = m, .tok = tok, .sched = sched, .pool = pool, .o = o, .model_dir = o->model_dir, .max_len = max_len};
    gen_params_default(&ctx.defaults);
    gen_params_read_eos(o->model_dir, &ctx.defaults);
    int port = 0;
    if (!(http = http_server_start(&ctx, &port))) goto out;
    PoolStats ps;
    adapter_pool_stats(pool, &ps);
    double kv_bytes = 2.0 * c->n_layer * (o->max_requests + o->prefix_cache) * (double)max_len * c->n_kv_head * c->head_dim * sizeof(float);
    fprintf(stderr, "peft serve: %s (%d layers, hidden %d), %d adapters (%d loaded), %d concurrent requests x %d tokens, %d cached prompts (KV cache %.0f MiB)\n",
            o->model_dir, c->n_layer, c->n_embd, ps.registered, ps.loaded, o->max_requests, max_len, o->prefix_cache, kv_bytes / (1 << 20));
    printf("listening on http://%s:%d\n", o->host, port);
    fflush(stdout);
    while (!atomic_load(&stop_requested)) {
        struct timespec ts = {0, 200 * 1000 * 1000};
        int sig = sigtimedwait(&sigs, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) break;
    }
    fprintf(stderr, "peft serve: stopping\n");
    t_stop = now_seconds();
    rc = 0;
out:
    http_server_begin_stop(http);
    adapter_pool_stop(pool);  // requests waiting for an adapter slot give up
    scheduler_stop(sched);    // running requests end (cancelled); their connections answer and close
    http_server_stop(http);   // waits for the connection threads
    scheduler_free(sched);
    adapter_pool_free(pool);
    tokenizer_free(tok);
    if (m) gpu_inference_detach(m);
    model_free(m);
    if (rc == 0) fprintf(stderr, "peft serve: stopped in %.2f s\n", now_seconds() - t_stop);
    atomic_store(&stop_requested, false);
    return rc;
}
