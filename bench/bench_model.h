// bench_model.h: a Model for a config JSON with its weights left zero and untouched
// (model_create_zeros), for benchmarks whose GPU draws the weights itself (GpuOptions
// random_init_seed): model_create_random draws 1.1B normals on one CPU core, which takes a minute.
// Header-only, included by bench/gpu/bench_gpu.c and bench/memory_bench.c.
#pragma once
#include "config.h"
#include "model.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>

static Model *bench_model(const char *config_json) {
    ModelConfig cfg;
    if (config_parse(&cfg, config_json, "bench")) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
    return model_create_zeros(&cfg);
}
