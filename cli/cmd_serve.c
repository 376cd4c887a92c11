// peft serve --model DIR --adapters DIR [--port N] ...: an OpenAI-compatible HTTP server for one
// base model and many adapters, batching requests for different adapters together (src/serve.h).
#include "cli.h"
#include "serve.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_serve(int argc, char **argv) {
    ServeOptions o;
    serve_options_default(&o);
    const char *device = "cpu";
    float timeout = (float)o.timeout_s;
    int max_body_kib = (int)(o.max_body >> 10);
    Option opts[] = {
        {"model", OPT_STRING, &o.model_dir, "base model folder (Hugging Face layout, with its tokenizer)"},
        {"adapters", OPT_STRING, &o.adapters_dir, "folder of PEFT adapter folders; each subfolder's name is an adapter's name"},
        {"host", OPT_STRING, &o.host, "address to listen on (default 127.0.0.1: this machine only)"},
        {"port", OPT_INT, &o.port, "port (default 8000; 0 = any free port, printed)"},
        {"max-requests", OPT_INT, &o.max_requests, "requests generated together; more wait (default 8)"},
        {"max-queue", OPT_INT, &o.max_queue, "requests that may wait for a slot; more get 429 (default 64)"},
        {"max-tokens", OPT_INT, &o.max_tokens, "largest max_tokens a request may ask for (default 256)"},
        {"max-adapters", OPT_INT, &o.max_adapters, "adapters kept in memory; the least recently used unused one goes (default 64)"},
        {"context", OPT_INT, &o.context, "tokens per request, prompt + output (default: the model's positions, at most 2048)"},
        {"timeout", OPT_FLOAT, &timeout, "seconds a request may take, waiting included (default 300; 0 = none)"},
        {"max-body", OPT_INT, &max_body_kib, "largest request body in KiB (default 1024)"},
        {"api-key", OPT_STRING, &o.api_key, "require Authorization: Bearer KEY on /v1 routes (or set PEFT_API_KEY)"},
        {"threads", OPT_INT, &o.threads, "CPU threads (default: OMP_NUM_THREADS or all cores)"},
        {"device", OPT_STRING, &device, "cpu (default) or cuda"},
        {"fp32", OPT_FLAG, &o.fp32, "with --device cuda: fp32 weights and activations (default bf16)"},
        {"quiet", OPT_FLAG, &o.quiet, "no access log on stderr"},
    };
    if (parse_options("serve", argc, argv, opts, sizeof opts / sizeof *opts, NULL, 0, NULL)) return 2;
    if (!o.model_dir) { fprintf(stderr, "peft serve: --model DIR is required\n"); return 2; }
    if (strcmp(device, "cpu") && strcmp(device, "cuda")) { fprintf(stderr, "peft serve: --device must be cpu or cuda (got %s)\n", device); return 2; }
    o.cuda = !strcmp(device, "cuda");
    if (o.max_requests < 1 || o.max_tokens < 1 || o.max_adapters < 1 || o.max_queue < 0 || timeout < 0 || o.port < 0 || o.port > 65535 ||
        o.threads < 0 || o.context < 0 || max_body_kib < 1) {
        fprintf(stderr, "peft serve: --max-requests, --max-tokens, --max-adapters, --max-body must be >= 1; --max-queue, --timeout, "
                        "--threads, --context >= 0; --port 0..65535\n");
        return 2;
    }
    if (o.adapters_dir && !dir_exists(o.adapters_dir)) { fprintf(stderr, "peft serve: --adapters %s is not a folder\n", o.adapters_dir); return 2; }
    if (!o.api_key) {
        const char *env = getenv("PEFT_API_KEY");
        if (env && env[0]) o.api_key = env;
    }
    o.timeout_s = timeout;
    o.max_body = (size_t)max_body_kib << 10;
    if (serve_run(&o)) return fail_with_library_error();
    return 0;
}
