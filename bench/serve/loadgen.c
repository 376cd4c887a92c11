// loadgen: a load generator for `peft serve` on loopback. N client threads, each with its own
// keep-alive HTTP/1.1 connection, send R requests in all (POST /v1/completions, greedy, a fixed
// prompt of L tokens (the byte tokenizer: one per character) and exactly T new tokens with
// ignore_eos), request i naming adapter i mod K (or "base"). Reports requests/s, tokens/s
// (generated tokens, from the responses' usage) and the p50 / p99 latency, then from the server's
// /health before and after: its forward steps, tokens per step, the share of the time its
// scheduler spent in the model's forward, and its prefix cache hits.
// --system-tokens S: every prompt starts with the same S-token system part, then L tokens of its
// own (request i's starts with i), so that only the system part can be shared.
//   loadgen --port P [--clients N] [--requests R] [--prompt-tokens L] [--system-tokens S] [--max-tokens T]
//           [--prefix NAME --adapters K | --base] [--label TEXT]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port = 8000, clients = 16, requests = 96, prompt_tokens = 32, system_tokens = 0, max_tokens = 32, n_adapters = 0;
static const char *prefix = "adapter", *label = "";
static atomic_int next_req;
static double *latency;
static long *gen_tokens;
static atomic_int errors;
static char prompt[4096], system_part[4096];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int connect_local(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { close(fd); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int send_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        s += k;
        n -= (size_t)k;
    }
    return 0;
}

// One request on fd; returns the HTTP status (-1 on a broken connection); the body in buf.
static int roundtrip(int fd, const char *req, size_t req_len, char *buf, size_t cap) {
    if (send_all(fd, req, req_len)) return -1;
    size_t have = 0;
    char *body = NULL;
    long clen = -1;
    for (;;) {
        if (have + 1 >= cap) return -1;
        ssize_t k = recv(fd, buf + have, cap - have - 1, 0);
        if (k <= 0) return -1;
        have += (size_t)k;
        buf[have] = 0;
        if (!body && (body = strstr(buf, "\r\n\r\n"))) {
            body += 4;
            const char *cl = strcasestr(buf, "Content-Length:");
            if (!cl || cl > body) return -1;  // the server answers with a length
            clen = atol(cl + 15);
        }
        if (body && (long)(have - (size_t)(body - buf)) >= clen) break;
    }
    int status = strncmp(buf, "HTTP/1.", 7) ? -1 : atoi(buf + 9);
    memmove(buf, body, (size_t)clen);
    buf[clen] = 0;
    return status;
}

static void *client(void *arg) {
    (void)arg;
    char *buf = malloc(1 << 20), req[8192], body[6000];
    int fd = connect_local();
    for (;;) {
        int i = atomic_fetch_add(&next_req, 1);
        if (i >= requests) break;
        char model[128], text[4096 + 32];
        if (system_tokens) snprintf(text, sizeof text, "%s%d%s", system_part, i, prompt + snprintf(NULL, 0, "%d", i));
        else snprintf(text, sizeof text, "%s", prompt);
        if (n_adapters > 0) snprintf(model, sizeof model, "%s-%03d", prefix, i % n_adapters);
        else snprintf(model, sizeof model, "base");
        int bl = snprintf(body, sizeof body,
                          "{\"model\": \"%s\", \"prompt\": \"%s\", \"max_tokens\": %d, \"temperature\": 0, \"ignore_eos\": true}", model,
                          text, max_tokens);
        int rl = snprintf(req, sizeof req,
                          "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", bl,
                          body);
        double t0 = now();
        int ok = -1;
        for (int attempt = 0; attempt < 2 && ok < 0; attempt++) {
            if (fd < 0) fd = connect_local();
            if (fd >= 0) ok = roundtrip(fd, req, (size_t)rl, buf, 1 << 20);
            if (ok < 0 && fd >= 0) { close(fd); fd = -1; }
        }
        latency[i] = now() - t0;
        const char *u = ok == 200 ? strstr(buf, "\"completion_tokens\":") : NULL;
        if (!u) {
            atomic_fetch_add(&errors, 1);
            if (atomic_load(&errors) <= 3) fprintf(stderr, "loadgen: request %d failed: %.300s\n", i, ok >= 0 ? buf : "(connection)");
            continue;
        }
        gen_tokens[i] = atol(u + 20);
    }
    if (fd >= 0) close(fd);
    free(buf);
    return NULL;
}

// The server's /health counters: steps, tokens, forward_seconds, prefix_hits (zeros when it fails).
static void health(double v[4]) {
    static const char *keys[4] = {"\"steps\":", "\"tokens\":", "\"forward_seconds\":", "\"prefix_hits\":"};
    static const char req[] = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    char *buf = malloc(1 << 16);
    int fd = connect_local();
    bool ok = fd >= 0 && roundtrip(fd, req, sizeof req - 1, buf, 1 << 16) == 200;
    for (int k = 0; k < 4; k++) {
        const char *at = ok ? strstr(buf, keys[k]) : NULL;
        v[k] = at ? atof(at + strlen(keys[k])) : 0;
    }
    if (fd >= 0) close(fd);
    free(buf);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--port")) port = atoi(v), i++;
        else if (!strcmp(a, "--clients")) clients = atoi(v), i++;
        else if (!strcmp(a, "--requests")) requests = atoi(v), i++;
        else if (!strcmp(a, "--prompt-tokens")) prompt_tokens = atoi(v), i++;
        else if (!strcmp(a, "--max-tokens")) max_tokens = atoi(v), i++;
        else if (!strcmp(a, "--system-tokens")) system_tokens = atoi(v), i++;
        else if (!strcmp(a, "--adapters")) n_adapters = atoi(v), i++;
        else if (!strcmp(a, "--prefix")) prefix = v, i++;
        else if (!strcmp(a, "--label")) label = v, i++;
        else if (!strcmp(a, "--base")) n_adapters = 0;
        else { fprintf(stderr, "loadgen: unknown option %s\n", a); return 2; }
    }
    if (clients < 1 || requests < 1 || prompt_tokens < 8 || prompt_tokens >= (int)sizeof prompt || system_tokens < 0 ||
        system_tokens >= (int)sizeof system_part || max_tokens < 1) {
        fprintf(stderr, "loadgen: bad sizes\n");
        return 2;
    }
    static const char words[] = "the quick brown fox jumps over the lazy dog ";
    for (int i = 0; i < prompt_tokens; i++) prompt[i] = words[i % (sizeof words - 1)];
    prompt[prompt_tokens] = 0;
    static const char sys[] = "you are a helpful assistant. answer in one short line. ";
    for (int i = 0; i < system_tokens; i++) system_part[i] = sys[i % (sizeof sys - 1)];
    system_part[system_tokens] = 0;
    double h0[4], h1[4];
    health(h0);
    latency = calloc(requests, sizeof(double));
    gen_tokens = calloc(requests, sizeof(long));
    pthread_t *th = malloc(sizeof(pthread_t) * clients);
    double t0 = now();
    for (int i = 0; i < clients; i++) pthread_create(&th[i], NULL, client, NULL);
    for (int i = 0; i < clients; i++) pthread_join(th[i], NULL);
    double dt = now() - t0;
    health(h1);
    double steps = h1[0] - h0[0];
    long toks = 0;
    for (int i = 0; i < requests; i++) toks += gen_tokens[i];
    qsort(latency, requests, sizeof(double), cmp_double);
    double p50 = latency[(requests - 1) / 2], p99 = latency[(int)((requests - 1) * 0.99 + 0.5)];
    int ok = requests - atomic_load(&errors);
    printf("%-22s K=%-3d clients=%-3d requests=%d (%d ok)  %.2f req/s  %.0f tok/s  p50 %.3f s  p99 %.3f s  (%.1f s)  steps %.0f/s  %.1f tokens/step  "
           "forward %.0f%%  prefix hits %.0f\n",
           label, n_adapters, clients, requests, ok, ok / dt, toks / dt, p50, p99, dt, steps / dt, steps > 0 ? (h1[1] - h0[1]) / steps : 0,
           100 * (h1[2] - h0[2]) / dt, h1[3] - h0[3]);
    return atomic_load(&errors) ? 1 : 0;
}
