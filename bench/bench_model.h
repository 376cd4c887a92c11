// bench_model.h: a Model for a config JSON with its weights left zero and untouched
// (model_create_zeros), for benchmarks whose GPU draws the weights itself (GpuOptions
// random_init_seed): model_create_random draws 1.1B normals on one CPU core, which takes a minute.
// Also the training step's micro-batch of random tokens (labels = inputs, as the HF script), for
// benchmarks that time or measure the step peft train runs (train_step.h).
// Header-only, included by bench/gpu/bench_gpu.c and bench/memory_bench.c.
#pragma once
#include "config.h"
#include "model.h"
#include "train_step.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>

static Model *bench_model(const char *config_json) {
    ModelConfig cfg;
    if (config_parse(&cfg, config_json, "bench")) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
    return model_create_zeros(&cfg);
}

// ids [B*T] drawn by token(V) at every micro-batch.
typedef struct {
    int32_t *ids;
    int B, T, V;
    int32_t (*token)(int V);
} RandomBatch;

static int bench_random_batch(void *user, int k, MicroBatch *mb) {
    RandomBatch *r = user;
    for (int i = 0; i < r->B * r->T; i++) r->ids[i] = r->token(r->V);
    *mb = (MicroBatch){.ids = r->ids, .labels = r->ids, .B = r->B, .T = r->T, .tokens = (long)r->B * r->T};
    return 0;
}
