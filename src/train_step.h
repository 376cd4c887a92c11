// train_step.h: one optimizer step of fine-tuning, the same twelve moves on the CPU and on the CUDA
// backend: zero the gradients; per micro-batch its dropout seed, forward, the loss check, backward;
// the mean gradient; clipping; AdamW; the method's update after the step (AdaLoRA's rank
// allocator, which reads the gradients); sync. The devices differ only in a small backend
// (StepBackend in train_step.c: CPU and CUDA), picked by whether the step has a GpuModel.
// peft train runs it (train.c), and so do the benchmarks (bench/gpu/bench_gpu.c,
// bench/memory_bench.c): what they time is what the product runs.
#pragma once
#include "model.h"
#include "optim.h"
#include <stdbool.h>
#include <stdint.h>

struct GpuModel;
typedef struct StepBackend StepBackend;

typedef struct {
    Model *m;
    struct GpuModel *g;          // the model on the CUDA backend, or NULL: the CPU
    Param **params;              // m's trainable tensors (model_trainable), in AdamW's order
    int n_params;
    AdamW opt;                   // the hyperparameters; the moments on the CPU (the GPU keeps its own)
    float max_grad_norm;         // 0: no clipping
    bool allocate;               // run the method's update after each step (AdaLoRA's allocator)
    const StepBackend *be;
} TrainStep;

// One micro-batch: ids and labels [B,T], its positions when packed (Model.positions, else NULL), its
// dropout seed, and the tokens it counts (padding excluded).
typedef struct {
    const int32_t *ids, *labels;
    const int32_t *positions;
    int B, T;
    uint64_t dropout_seed;
    long tokens;
    const ClassifyBatch *classify;  // an encoder's sequence classification batch (CPU only); ids/labels unused
} MicroBatch;
// Fills micro-batch k (0-based) of the step; returns -1 (peft_last_error) on failure.
typedef int (*MicroBatchFn)(void *user, int k, MicroBatch *mb);

typedef struct {
    double loss;                 // mean over the micro-batches (with a method's regulariser)
    double lm_loss;              // the same without it
    double grad_norm;            // before clipping
    long tokens;
    int budget;                  // AdaLoRA: the rank budget after the step; -1 otherwise
} StepResult;

// For m's trainable tensors (and g, m's copy on the GPU, when given): AdamW with these settings,
// its moments zeroed.
void train_step_init(TrainStep *s, Model *m, struct GpuModel *g, float beta1, float beta2, float eps,
                     float weight_decay, float max_grad_norm, bool allocate);
void train_step_free(TrainStep *s);
// Optimizer step `step` (0-based, the method's update counts by it) over `accum` micro-batches
// from next, at learning rate lr. Returns 0, or -1 + peft_last_error() (a loss that is not finite
// is one).
int train_step_run(TrainStep *s, int step, int accum, double lr, MicroBatchFn next, void *user, StepResult *out);
