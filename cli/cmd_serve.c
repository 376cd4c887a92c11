// peft serve --model DIR --adapters DIR [--port N] ...: an OpenAI-compatible HTTP server for one
// base model and many adapters, batching requests for different adapters together (src/serve/serve.h).
#include "cli.h"
#include "peft.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// A key from the command line, which ps shows to every user of the machine: warned about, copied
// (malloc'd) and blanked in argv. Otherwise the environment variable's (copied too), or NULL.
static char *take_key(const char *given, int argc, char **argv, const char *option, const char *env) {
    if (!given) {
        const char *v = getenv(env);
        return v && v[0] ? xstrdup(v) : NULL;
    }
    fprintf(stderr, "peft serve: warning: --%s on the command line is visible to every user of this machine (ps); set %s instead\n", option, env);
    char *key = xstrdup(given);
    for (int i = 1; i < argc; i++)
        if (argv[i] == given) memset(argv[i], 'x', strlen(argv[i]));
    return key;
}

int cmd_serve(int argc, char **argv) {
    ServeOptions o;
    serve_options_default(&o);
    const char *device = "cpu";
    float timeout = (float)o.timeout_s;
    int max_body_kib = (int)(o.max_body >> 10);
    const char *api_key = NULL, *admin_key = NULL, *quantize = NULL;
    bool no_double_quant = false;
    Option opts[32] = {
        {"model", OPT_STRING, &o.model_dir, "base model folder (Hugging Face layout, with its tokenizer)"},
        {"adapters", OPT_STRING, &o.adapters_dir, "folder of PEFT adapter folders; each subfolder's name is an adapter's name"},
        {"host", OPT_STRING, &o.host, "address to listen on (default 127.0.0.1: this machine only)"},
        {"port", OPT_INT, &o.port, "port (default 8000; 0 = any free port, printed)"},
        {"max-requests", OPT_INT, &o.max_requests, "requests generated together; more wait (default 8)"},
        {"max-queue", OPT_INT, &o.max_queue, "requests that may wait for a slot; more get 429 (default 64)"},
        {"max-tokens", OPT_INT, &o.max_tokens, "largest max_tokens a request may ask for (default 256)"},
        {"max-adapters", OPT_INT, &o.max_adapters, "adapters kept in memory; the least recently used unused one goes (default 64)"},
        {"prefix-cache", OPT_INT, &o.prefix_cache, "prompts kept so that requests sharing their start (same adapter) skip computing it (default 4; 0 = off)"},
        {"context", OPT_INT, &o.context, "tokens per request, prompt + output (default: the model's positions, at most 2048)"},
        {"timeout", OPT_FLOAT, &timeout, "seconds a request may take, waiting included (default 300; 0 = none)"},
        {"max-body", OPT_INT, &max_body_kib, "largest request body in KiB (default 1024)"},
        {"max-connections", OPT_INT, &o.max_connections, "connections open at once; more are closed as they come (default 512)"},
        {"max-connections-per-ip", OPT_INT, &o.max_connections_per_ip, "connections from one client address (default 32; 0 = no limit)"},
        {"idle-timeout", OPT_INT, &o.idle_timeout, "seconds a connection may send nothing, headers and body included, before it is closed (default 15)"},
        {"api-key", OPT_STRING, &api_key, "require Authorization: Bearer KEY on /v1 routes (better: the PEFT_API_KEY variable; ps shows arguments)"},
        {"admin-key", OPT_STRING, &admin_key, "the key for adapter management, POST / DELETE /v1/adapters (better: PEFT_ADMIN_KEY)"},
        {"allow-any-adapter-path", OPT_FLAG, &o.allow_any_adapter_path, "POST /v1/adapters may load any folder (default: only inside --adapters)"},
        {"threads", OPT_INT, &o.threads, "CPU threads (default: OMP_NUM_THREADS or all cores)"},
        {"device", OPT_STRING, &device, "cpu (default) or cuda"},
        {"fp32", OPT_FLAG, &o.fp32, "fp32 weights: with --device cuda, and activations (default bf16); on the CPU, no bf16 copy of weights that are exactly bf16"},
        {"quiet", OPT_FLAG, &o.quiet, "no access log on stderr"},
    };
    int n_opts = 0;
    while (opts[n_opts].name) n_opts++;
    n_opts += quant_options(opts + n_opts, &quantize, &no_double_quant);
    if (parse_options("serve", argc, argv, opts, n_opts, NULL, 0, NULL)) return 2;
    if (quant_resolve("serve", quantize, no_double_quant, &o.quantize, &o.double_quant)) return 2;
    if (!o.model_dir) { fprintf(stderr, "peft serve: --model DIR is required\n"); return 2; }
    if (strcmp(device, "cpu") && strcmp(device, "cuda")) { fprintf(stderr, "peft serve: --device must be cpu or cuda (got %s)\n", device); return 2; }
    o.cuda = !strcmp(device, "cuda");
    if (o.max_requests < 1 || o.max_tokens < 1 || o.max_adapters < 1 || o.max_queue < 0 || timeout < 0 || o.port < 0 || o.port > 65535 ||
        o.threads < 0 || o.context < 0 || o.prefix_cache < 0 || max_body_kib < 1 || o.max_connections < HTTP_THREADS || o.max_connections_per_ip < 0 || o.idle_timeout < 1) {
        fprintf(stderr, "peft serve: --max-requests, --max-tokens, --max-adapters, --max-body, --idle-timeout must be >= 1; --max-queue, --timeout, "
                        "--threads, --context, --prefix-cache, --max-connections-per-ip >= 0; --max-connections >= %d; --port 0..65535\n", HTTP_THREADS);
        return 2;
    }
    if (o.adapters_dir && !dir_exists(o.adapters_dir)) { fprintf(stderr, "peft serve: --adapters %s is not a folder\n", o.adapters_dir); return 2; }
    if ((api_key && !api_key[0]) || (admin_key && !admin_key[0])) { fprintf(stderr, "peft serve: --api-key and --admin-key must not be empty\n"); return 2; }
    char *user = take_key(api_key, argc, argv, "api-key", "PEFT_API_KEY"), *admin = take_key(admin_key, argc, argv, "admin-key", "PEFT_ADMIN_KEY");
    o.api_key = user;
    o.admin_key = admin;
    int rc = 0;
    if (user && admin && !strcmp(user, admin)) {
        fprintf(stderr, "peft serve: the admin key must differ from the API key (whoever holds the API key could manage adapters)\n");
        rc = 2;
    }
    o.timeout_s = timeout;
    o.max_body = (size_t)max_body_kib << 10;
    if (!rc && serve_run(&o)) rc = fail_with_library_error();
    free(user);
    free(admin);
    return rc;
}
