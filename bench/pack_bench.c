// pack_bench: CPU training throughput on short examples, with and without packing (peft train
// --pack). Instruction-tuning-like data: N examples of 24 to 160 tokens (uniform) on a random 60M
// Llama (the shape of train_bench) with LoRA r 8 on q, v; every example is trained once, in the same
// shuffled order:
//   unpacked: micro-batches of 8 examples, each right-padded to its longest;
//   packed:   dataset_pack into sequences of 512 tokens, micro-batches of 2 of them.
// The figure is real (non-padding) tokens per second over the pass (forward, backward and AdamW).
//   OMP_NUM_THREADS=2 build/pack_bench [examples (192)]
#include "adapter.h"
#include "data.h"
#include "model.h"
#include "optim.h"
#include "util.h"
#include "version.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ModelConfig llama_60m(void) {
    ModelConfig c = {.arch = ARCH_LLAMA, .model_type = "llama", .vocab_size = 32000, .n_layer = 8, .n_embd = 512, .n_head = 8,
                     .n_kv_head = 4, .head_dim = 64, .n_inner = 1376, .n_positions = 1024, .norm_eps = 1e-6f, .rope_theta = 10000.0f};
    return c;
}

static void make_examples(Dataset *ds, int n, int V) {
    memset(ds, 0, sizeof *ds);
    ds->offset = xcalloc(n + 1, sizeof(long));
    ds->ids = xmalloc(sizeof(int32_t) * n * 160);
    ds->labels = xmalloc(sizeof(int32_t) * n * 160);
    uint64_t s = 1;
    for (int i = 0; i < n; i++) {
        int len = 24 + (int)(seed_mix(s, 2 * i) % 137);
        long a = ds->offset[i];
        for (int j = 0; j < len; j++) {
            ds->ids[a + j] = (int32_t)(seed_mix(s, 1000003 * i + j) % (uint64_t)V);
            ds->labels[a + j] = j >= len / 2 ? ds->ids[a + j] : -100;  // a prompt, then its completion
        }
        ds->offset[i + 1] = a + len;
        if (len > ds->max_len) ds->max_len = len;
    }
    ds->n_seq = ds->n_examples = n;
}

typedef struct { double seconds; long tokens, padded; int batches; } Pass;

// One pass over ds in batches of `batch` sequences (the order of perm).
static Pass train_pass(Model *m, AdamW *opt, Param **ps, int n_params, const Dataset *ds, int batch, const int *perm) {
    int32_t *ids = xmalloc(sizeof(int32_t) * batch * ds->max_len), *labels = xmalloc(sizeof(int32_t) * batch * ds->max_len);
    int32_t *pos = xmalloc(sizeof(int32_t) * batch * ds->max_len);
    Pass p = {0};
    double t0 = now_seconds();
    for (int start = 0; start < ds->n_seq; start += batch) {
        int n = ds->n_seq - start < batch ? ds->n_seq - start : batch;
        int T = dataset_batch(ds, perm + start, n, ids, labels);
        if (ds->pos) dataset_batch_positions(ds, perm + start, n, T, pos);
        m->positions = ds->pos ? pos : NULL;
        model_zero_grad(m);
        model_forward(m, ids, labels, n, T);
        m->positions = NULL;
        model_backward(m);
        adamw_step(opt, ps, n_params, 1e-4f);
        for (int i = 0; i < n; i++) p.tokens += ds->offset[perm[start + i] + 1] - ds->offset[perm[start + i]];
        p.padded += (long)n * T;
        p.batches++;
    }
    p.seconds = now_seconds() - t0;
    free(ids);
    free(labels);
    free(pos);
    return p;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 192;
    ModelConfig cfg = llama_60m();
    Model *m = model_create_random(&cfg, 1);
    AdapterConfig ac;
    adapter_config_defaults(&ac, PEFT_LORA);
    ac.r = 8;
    ac.alpha = 16;
    adapter_config_set_targets(&ac, "q_proj,v_proj");
    if (adapters_attach(m, &ac, 0)) { fprintf(stderr, "%s\n", peft_last_error()); return 1; }
    adapter_config_free(&ac);
    Param **ps;
    int n_params = model_trainable(m, &ps);
    AdamW opt;
    adamw_init(&opt, ps, n_params, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f);
    Dataset ds, packed;
    make_examples(&ds, n, cfg.vocab_size);
    int *perm = xmalloc(sizeof(int) * n), *order = xmalloc(sizeof(int) * n);
    shuffle_indices(perm, n, 7);
    // Packed in the same shuffled order as the unpacked pass, then taken in sequence order.
    Dataset shuffled = ds;
    shuffled.offset = xmalloc(sizeof(long) * (n + 1));
    shuffled.ids = xmalloc(sizeof(int32_t) * ds.offset[n]);
    shuffled.labels = xmalloc(sizeof(int32_t) * ds.offset[n]);
    shuffled.offset[0] = 0;
    for (int i = 0; i < n; i++) {
        long a = ds.offset[perm[i]], len = ds.offset[perm[i] + 1] - a, o = shuffled.offset[i];
        memcpy(shuffled.ids + o, ds.ids + a, sizeof(int32_t) * len);
        memcpy(shuffled.labels + o, ds.labels + a, sizeof(int32_t) * len);
        shuffled.offset[i + 1] = o + len;
    }
    dataset_pack(&shuffled, 512, &packed);
    for (int i = 0; i < packed.n_seq; i++) order[i] = i;
    train_pass(m, &opt, ps, n_params, &ds, 8, perm);  // warm-up (allocations, OpenBLAS threads)
    Pass u = train_pass(m, &opt, ps, n_params, &ds, 8, perm), p = train_pass(m, &opt, ps, n_params, &packed, 2, order);
    printf("pack_bench (peft %s): %d examples of 24-160 tokens, Llama 60M shape, LoRA r 8 q,v, CPU\n", peft_version, n);
    printf("| | micro-batches | tokens | computed (with padding) | s | tokens/s |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
    printf("| unpacked, 8 examples a batch | %d | %ld | %ld | %.2f | %.0f |\n", u.batches, u.tokens, u.padded, u.seconds, u.tokens / u.seconds);
    printf("| packed into 512, 2 a batch | %d | %ld | %ld | %.2f | %.0f |\n", p.batches, p.tokens, p.padded, p.seconds, p.tokens / p.seconds);
    printf("packed / unpacked tokens/s: %.2fx\n", (p.tokens / p.seconds) / (u.tokens / u.seconds));
    dataset_free(&ds);
    dataset_free(&shuffled);
    dataset_free(&packed);
    free(perm);
    free(order);
    adamw_free(&opt);
    model_free(m);
    return 0;
}
