// memory_bench: `peft estimate`'s training-memory estimate against the memory training really
// holds, on the CPU and on the GPU, for GPT-2- and Llama-shaped models (random weights, built in
// memory), full fine-tuning, LoRA, VeRA and AdaLoRA, at a few batch x context sizes.
//   OMP_NUM_THREADS=2 build/memory_bench [--cpu] [--gpu] [--steps N] [--only SUBSTR] [--out FILE.jsonl]
// (neither --cpu nor --gpu: both). The estimate comes from estimate_compute, the code behind
// `peft estimate`, with the options `peft estimate` would be given for the run.
//
// Every configuration runs in a fresh process (this program re-executed), so no run inherits
// another's heap, threads or device allocations. What is measured:
//   CPU: the growth of the process's peak resident set (VmHWM at the end minus VmRSS before the
//        model is built): the model's fp32 weights, adapters, gradients, AdamW state, AdaLoRA's
//        allocator scores, activations and every temporary of `steps` training steps (zero_grad,
//        forward, backward, clip_grad_norm, AdamW, AdaLoRA's update_and_allocate): peft train's own
//        step (train_step.h); plus what the runtime adds (OpenBLAS's GEMM buffers, thread stacks, malloc's
//        arenas). The weights are built in memory (model_create_random): `peft train` copies a
//        safetensors file into the same fp32 buffers and unmaps it before training. Also shown: the
//        heap high-water mark (bytes malloc handed out and not yet freed, counted by the
//        malloc/free wrappers below), which is what the estimate models buffer by buffer.
//   GPU: gpu_peak_bytes(), the high-water mark of every byte the CUDA backend cudaMalloc'd in the
//        process (weights, optimizer state, activations, cuBLASLt workspace, the upload's staging
//        buffer), over gpu_model_create and `steps` of peft train's step on the GPU (AdaLoRA's
//        allocator included, on the host as peft train runs it), the weights drawn on the device. Without a GPU the GPU rows
//        print SKIPPED.
#include "adapter.h"
#include "bench_model.h"
#include "config.h"
#include "cuda/gpu.h"
#include "estimate.h"
#include "model.h"
#include "util.h"
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

// ---- heap high-water mark: malloc and friends, counted (glibc's documented replacement hooks) ----
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);
static _Atomic long long heap_live, heap_peak;

static void heap_add(long long n) {
    long long now = atomic_fetch_add(&heap_live, n) + n, peak = atomic_load(&heap_peak);
    while (now > peak && !atomic_compare_exchange_weak(&heap_peak, &peak, now)) {}
}
void *malloc(size_t n) {
    void *p = __libc_malloc(n);
    if (p) heap_add((long long)malloc_usable_size(p));
    return p;
}
void *calloc(size_t n, size_t k) {
    void *p = __libc_calloc(n, k);
    if (p) heap_add((long long)malloc_usable_size(p));
    return p;
}
void *realloc(void *old, size_t n) {
    long long before = old ? (long long)malloc_usable_size(old) : 0;
    void *p = __libc_realloc(old, n);
    if (p) heap_add((long long)malloc_usable_size(p) - before);
    else if (n == 0 && old) heap_add(-before);  // realloc(p, 0) freed it
    return p;
}
void free(void *p) {
    if (!p) return;
    heap_add(-(long long)malloc_usable_size(p));
    __libc_free(p);
}
void *memalign(size_t align, size_t n) {
    void *p = __libc_memalign(align, n);
    if (p) heap_add((long long)malloc_usable_size(p));
    return p;
}
void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }
int posix_memalign(void **out, size_t align, size_t n) {
    void *p = memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
void *valloc(size_t n) { return memalign((size_t)sysconf(_SC_PAGESIZE), n); }
void *pvalloc(size_t n) {
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return memalign(pg, (n + pg - 1) / pg * pg);
}

// VmRSS / VmHWM of this process, bytes.
static long long proc_status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') { v = atoll(line + kl + 1); break; }
    fclose(f);
    return v * 1024;
}

// ---- configurations ----

typedef struct {
    const char *name;    // e.g. "gpt2-30m"
    const char *json;    // config.json
    const char *all;     // every linear module (the "all" targets)
    const char *dflt;    // PEFT's default targets
} Family;

static const Family FAMILIES[] = {
    {"gpt2-18m", "{\"model_type\":\"gpt2\",\"vocab_size\":50257,\"n_positions\":512,\"n_embd\":256,\"n_layer\":6,\"n_head\":4}",
     "c_attn,c_proj,c_fc", "c_attn"},
    {"llama-21m", "{\"model_type\":\"llama\",\"vocab_size\":32000,\"hidden_size\":256,\"intermediate_size\":688,\"num_hidden_layers\":6,"
                  "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"max_position_embeddings\":1024}",
     "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "q_proj,v_proj"},
    // the GPU benchmark's shapes (bench/gpu/bench_gpu.c)
    {"gpt2-124m", "{\"model_type\":\"gpt2\",\"vocab_size\":50257,\"n_positions\":1024,\"n_embd\":768,\"n_layer\":12,\"n_head\":12}",
     "c_attn,c_proj,c_fc", "c_attn"},
    {"llama-1.1b", "{\"model_type\":\"llama\",\"vocab_size\":32000,\"hidden_size\":2048,\"intermediate_size\":5632,\"num_hidden_layers\":22,"
                   "\"num_attention_heads\":32,\"num_key_value_heads\":4,\"max_position_embeddings\":2048}",
     "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "q_proj,v_proj"},
};

typedef struct {
    MethodId id;
    bool all;            // every linear adapted (else PEFT's default targets)
    int r;               // LoRA/VeRA r; AdaLoRA init_r (target_r 8)
} BenchMethod;

static const BenchMethod METHODS[] = {{METHOD_FULL, false, 0}, {METHOD_LORA, false, 8}, {METHOD_LORA, true, 16}, {METHOD_VERA, true, 256}, {METHOD_ADALORA, true, 12}};

typedef struct {
    int family, method, B, T;
    bool cpu, gpu;
} Row;

// The small shapes run on both devices at two sizes; the real shapes on the GPU only.
static int make_rows(Row *rows) {
    int n = 0;
    static const int sizes[2][2] = {{2, 128}, {4, 256}};
    for (int f = 0; f < 2; f++)
        for (int s = 0; s < 2; s++)
            for (int mi = 0; mi < 5; mi++) {
                if (METHODS[mi].id == METHOD_LORA && METHODS[mi].all) continue;  // the small rows: full, LoRA, VeRA, AdaLoRA
                rows[n++] = (Row){f, mi, sizes[s][0], sizes[s][1], true, true};
            }
    for (int f = 2; f < 4; f++)
        for (int mi = 0; mi < 5; mi++) rows[n++] = (Row){f, mi, f == 2 ? 8 : 4, f == 2 ? 1024 : 2048, false, true};
    return n;
}

static void row_label(const Row *r, char *buf, size_t len) {
    const BenchMethod *m = &METHODS[r->method];
    snprintf(buf, len, "%s %s%s %dx%d", FAMILIES[r->family].name, method_name(m->id), m->id == METHOD_LORA && m->all ? "-all" : "", r->B, r->T);
}

// The adapter options of a row, as `peft estimate --method M --r R --targets T` and the trainer set them.
static void row_adapter_config(const Row *row, const ModelConfig *mc, bool gpu, AdapterConfig *ac) {
    const BenchMethod *m = &METHODS[row->method];
    const Family *f = &FAMILIES[row->family];
    MethodId em = m->id;
    adapter_config_defaults(ac, em);
    if (em == METHOD_ADALORA) {
        ac->init_r = ac->r = m->r;
        ac->target_r = 8;
        ac->total_step = 1000;  // the allocator's budgeting phase covers the measured steps
        if (gpu) ac->orth_reg_weight = 0;  // the GPU path has no regulariser (as bench_gpu)
    } else if (em != METHOD_FULL) {
        ac->r = m->r;
        ac->alpha = 2.0f * m->r;
    }
    adapter_config_set_targets(ac, m->all ? f->all : f->dflt);
    ac->fan_in_fan_out = mc->arch == ARCH_GPT2;
}

static int64_t row_estimate(const Row *row, bool gpu, Estimate *e) {
    ModelConfig mc;
    if (config_parse(&mc, FAMILIES[row->family].json, FAMILIES[row->family].name)) return -1;
    EstModel em;
    if (est_model_from_config(&em, &mc, FAMILIES[row->family].name)) return -1;
    AdapterConfig ac;
    row_adapter_config(row, &mc, gpu, &ac);
    int rc = estimate_compute(e, &em, METHODS[row->method].id, &ac, row->B, row->T);
    adapter_config_free(&ac);
    est_model_free(&em);
    return rc ? -1 : gpu ? e->gpu.total : e->cpu.total;
}

static uint64_t rng_state = 88172645463325252ull;
static int32_t rnd_token(int V) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (int32_t)((rng_state >> 11) % (uint64_t)V);
}

// ---- one configuration, in a child process: prints "RESULT measured heap seconds" ----

// `steps` of peft train's step (train_step.h) on random tokens, on the CPU or on g: AdamW, clipping
// at 1, AdaLoRA's update_and_allocate.
static int run_steps(Model *m, GpuModel *g, const Row *row, int steps) {
    TrainStep st;
    train_step_init(&st, m, g, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, true);
    RandomBatch rb = {xmalloc(sizeof(int32_t) * row->B * row->T), row->B, row->T, m->cfg.vocab_size, rnd_token};
    int rc = 0;
    for (int s = 0; s < steps && !rc; s++) {
        StepResult res;
        if ((rc = train_step_run(&st, s, 1, 1e-4, bench_random_batch, &rb, &res))) fprintf(stderr, "%s\n", peft_last_error());
    }
    train_step_free(&st);
    free(rb.ids);
    return rc;
}

static int child_cpu(const Row *row, int steps) {
    long long rss0 = proc_status_kb("VmRSS"), heap0 = atomic_load(&heap_live);
    atomic_store(&heap_peak, heap0);
    double t0 = now_seconds();
    ModelConfig mc;
    if (config_parse(&mc, FAMILIES[row->family].json, "bench")) { fprintf(stderr, "%s\n", peft_last_error()); return 1; }
    Model *m = model_create_random(&mc, 1);
    bool full = METHODS[row->method].id == METHOD_FULL;
    if (full) {
        model_train_all(m);
        for (int i = 0; i < m->n_params; i++) m->params[i].decay = m->params[i].ndim == 2;
    } else {
        AdapterConfig ac;
        row_adapter_config(row, &mc, false, &ac);
        if (adapters_attach(m, &ac, 42)) { fprintf(stderr, "%s\n", peft_last_error()); return 1; }
        adapter_config_free(&ac);
    }
    if (run_steps(m, NULL, row, steps)) return 1;
    long long hwm = proc_status_kb("VmHWM");
    printf("RESULT %lld %lld %.2f\n", hwm - rss0, atomic_load(&heap_peak) - heap0, now_seconds() - t0);
    return 0;
}

static int child_gpu(const Row *row, int steps) {
    double t0 = now_seconds();
    Model *m = bench_model(FAMILIES[row->family].json);
    bool full = METHODS[row->method].id == METHOD_FULL;
    if (full) model_train_all(m);
    else {
        AdapterConfig ac;
        row_adapter_config(row, &m->cfg, true, &ac);
        if (adapters_attach(m, &ac, 42)) { fprintf(stderr, "%s\n", peft_last_error()); return 1; }
        adapter_config_free(&ac);
    }
    gpu_reset_peak();
    GpuOptions opt = {.precision = GPU_BF16, .random_init_seed = 1};
    GpuModel *g = gpu_model_create(m, &opt);
    if (!g) { fprintf(stderr, "%s\n", peft_last_error()); return 1; }
    if (run_steps(m, g, row, steps)) return 1;
    printf("RESULT %lld 0 %.2f\n", (long long)gpu_peak_bytes(), now_seconds() - t0);
    gpu_model_free(g);
    return 0;
}

// Run row `i` on `dev` in a fresh process (this program again); 0 with the measurements, or -1.
static int run_child(const char *self, int i, const char *dev, int steps, long long *measured, long long *heap, double *secs) {
    int fd[2];
    if (pipe(fd)) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        char idx[16], st[16];
        snprintf(idx, sizeof idx, "%d", i);
        snprintf(st, sizeof st, "%d", steps);
        execl(self, self, "--child", idx, dev, st, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    char buf[512] = "";
    size_t len = 0;
    ssize_t k;
    while (len + 1 < sizeof buf && (k = read(fd[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)k;
    buf[len] = 0;
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const char *r = strstr(buf, "RESULT ");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !r) return -1;
    return sscanf(r, "RESULT %lld %lld %lf", measured, heap, secs) == 3 ? 0 : -1;
}

static const char *mib(long long b, char *buf) {
    snprintf(buf, 32, "%.1f MiB", b / 1048576.0);
    return buf;
}

int main(int argc, char **argv) {
    Row rows[64];
    int n_rows = make_rows(rows);
    if (argc == 5 && !strcmp(argv[1], "--child")) {
        int i = atoi(argv[2]), steps = atoi(argv[4]);
        if (i < 0 || i >= n_rows) return 2;
        return !strcmp(argv[3], "cpu") ? child_cpu(&rows[i], steps) : child_gpu(&rows[i], steps);
    }
    bool want_cpu = false, want_gpu = false;
    int steps = 2;
    const char *only = NULL, *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cpu")) want_cpu = true;
        else if (!strcmp(argv[i], "--gpu")) want_gpu = true;
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
        else { fprintf(stderr, "usage: memory_bench [--cpu] [--gpu] [--steps N] [--only SUBSTR] [--out FILE.jsonl]\n"); return 2; }
    }
    if (!want_cpu && !want_gpu) want_cpu = want_gpu = true;
    if (steps < 1) steps = 1;
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) { fprintf(stderr, "memory_bench: cannot find its own executable\n"); return 1; }
    self[sl] = 0;
    char why[512] = "", dev[512] = "";
    bool have_gpu = want_gpu && gpu_available(why, sizeof why);
    if (have_gpu) gpu_describe(dev, sizeof dev);
    else if (want_gpu) printf("*** SKIPPED: %s: the GPU rows were not measured ***\n", why);
    FILE *out = out_path ? fopen(out_path, "w") : NULL;
    printf("# peft estimate vs measured peak training memory; %d training steps per configuration, each in a fresh process\n", steps);
    if (want_cpu)
        printf("# CPU: %d OpenMP threads; measured = growth of peak RSS (VmHWM) over the run; heap = malloc high-water mark\n",
               omp_get_max_threads());
    if (have_gpu) printf("# GPU: %s; measured = gpu_peak_bytes (every byte the CUDA backend cudaMalloc'd), bf16\n", dev);
    printf("\n| configuration | device | estimated | measured peak | estimated / measured | within 15%% | heap peak | est. / heap |\n");
    printf("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |\n");
    fflush(stdout);
    int n_ok = 0, n_bad = 0, n_skip = 0;
    double worst = 0;
    for (int dv = 0; dv < 2; dv++) {
        bool gpu = dv == 1;
        if (gpu ? !want_gpu : !want_cpu) continue;
        for (int i = 0; i < n_rows; i++) {
            const Row *r = &rows[i];
            if (gpu ? !r->gpu : !r->cpu) continue;
            char label[128], a[32], b[32], c[32];
            row_label(r, label, sizeof label);
            if (only && !strstr(label, only)) continue;
            Estimate e;
            int64_t est = row_estimate(r, gpu, &e);
            if (est < 0) { printf("| %s | %s | estimate failed: %s |\n", label, gpu ? "GPU" : "CPU", peft_last_error()); n_bad++; continue; }
            if (gpu && !have_gpu) {
                printf("| %s | GPU | %s | SKIPPED (no GPU) | - | - | - | - |\n", label, mib(est, a));
                n_skip++;
                continue;
            }
            long long measured = 0, heap = 0;
            double secs = 0;
            if (run_child(self, i, gpu ? "gpu" : "cpu", steps, &measured, &heap, &secs) || measured <= 0) {
                printf("| %s | %s | %s | FAILED (see stderr) | - | no | - | - |\n", label, gpu ? "GPU" : "CPU", mib(est, a));
                n_bad++;
                continue;
            }
            double ratio = (double)est / (double)measured, dev_from_1 = fabs(ratio - 1);
            bool ok = dev_from_1 <= 0.15;
            if (dev_from_1 > worst) worst = dev_from_1;
            ok ? n_ok++ : n_bad++;
            char heap_s[32] = "-", heap_r[32] = "-";
            if (!gpu) {
                mib(heap, heap_s);
                snprintf(heap_r, sizeof heap_r, "%.3f", (double)est / (double)heap);
            }
            printf("| %s | %s | %s | %s | %.3f | %s | %s | %s |\n", label, gpu ? "GPU" : "CPU", mib(est, b), mib(measured, c), ratio,
                   ok ? "yes" : "**no**", heap_s, heap_r);
            fflush(stdout);
            if (out) {
                const EstMemory *em = gpu ? &e.gpu : &e.cpu;
                fprintf(out,
                        "{\"config\": \"%s\", \"device\": \"%s\", \"estimated\": %lld, \"measured\": %lld, \"ratio\": %.4f, \"heap_peak\": %lld, "
                        "\"est_weights\": %lld, \"est_grads\": %lld, \"est_optimizer\": %lld, \"est_activations\": %lld, \"est_workspace\": %lld, "
                        "\"seconds\": %.2f}\n",
                        label, gpu ? "gpu" : "cpu", (long long)est, measured, ratio, heap, (long long)em->weights, (long long)em->grads,
                        (long long)em->optimizer, (long long)em->activations, (long long)em->workspace, secs);
                fflush(out);
            }
        }
    }
    printf("\n%d within 15%%, %d not (or failed), %d skipped; largest deviation %.1f%%\n", n_ok, n_bad, n_skip, 100 * worst);
    if (want_gpu && !have_gpu) printf("*** SKIPPED: %s: the GPU rows were not measured ***\n", why);
    if (out) fclose(out);
    return n_bad ? 1 : 0;
}
