// train.h: fine-tuning (LoRA, VeRA, AdaLoRA, or all weights) and evaluation.
//
// train_run loads the model and data, trains with AdamW (warm-up, linear or cosine decay,
// gradient accumulation and clipping), evaluates the validation data every N steps, saves
// checkpoints every N steps, and writes to out_dir:
//   adapter_config.json + adapter_model.safetensors   (a PEFT adapter folder; full: an HF model folder)
//   train_log.jsonl                                    (one JSON object per step and per evaluation)
//   loss.svg                                           (the loss curve)
//   checkpoint/                                        (the latest checkpoint, for resume)
// The log and the curve are train_log.partial.jsonl and loss.partial.svg while the run goes on (and
// after it stops early): they take their names once the adapter is saved, so that a folder's log,
// curve and adapter always come from one run.
//
// Determinism: for a fixed seed and thread count a run is reproducible bit for bit, and a run
// resumed from a checkpoint continues exactly as the uninterrupted run would have. All the
// randomness is derived from the seed and the position in the run (adapter init from the seed,
// the epoch's shuffle from (seed, epoch), dropout masks from (seed, micro-batch)), so the step
// number is the RNG state. AdaLoRA's allocator scores are checkpointed too. With cuda the same holds,
// except that the attention backward's fp32 atomic additions may sum in another order (differences
// of an ulp), and that dropout masks come from the GPU's own hash of the (seed, micro-batch) seed.
#pragma once
#include "adapter.h"
#include "data.h"
#include <stdbool.h>
#include <stdint.h>

typedef enum { SCHED_LINEAR, SCHED_COSINE, SCHED_CONSTANT } LrSchedule;

typedef struct {
    const char *model_dir;
    const char *data_path;
    const char *val_path;        // validation data file or folder, or
    float val_fraction;          // a held-out fraction of data_path's sequences (0: no validation)
    const char *out_dir;
    DataOptions data;            // seq_len 0: min(512, the model's positions); cache_dir NULL: out_dir

    MethodId method;
    AdapterConfig adapter;       // the method's options; type is set from method; targets empty:
                                 // PEFT's default for the architecture. total_step 0: the run's steps
    bool adalora_allocate;       // AdaLoRA: update_and_allocate after each optimizer step (default on)

    float lr;                    // 0: the method's default (see train_default_lr)
    LrSchedule schedule;
    int warmup_steps;            // linear warm-up from 0 over these steps
    float weight_decay, beta1, beta2, eps;
    float max_grad_norm;         // 0: no clipping
    int epochs;                  // used when max_steps is 0
    int max_steps;
    int batch;                   // sequences per micro-batch
    bool pack;                   // several examples per sequence (dataset_pack), attention kept inside each
                                 // example (CPU and CUDA)
    int grad_accum;              // micro-batches per optimizer step
    uint64_t seed;
    int threads;                 // 0: OpenMP's default
    int eval_every;              // evaluate every N steps (0: at the start and the end only)
    int eval_batch;              // 0: batch
    int save_every;              // checkpoint every N steps (0: only when stopped early)
    bool resume;                 // continue from out_dir/checkpoint
    bool overwrite;              // replace another run's outputs in out_dir (otherwise such a folder is refused)
    bool no_base_dropout;        // train although config.json asks for base-model dropout, which is not implemented
    bool head_only;              // --task classify with full: the SEQ_CLS head alone trains (linear probing), the base frozen
    int stop_after;              // stop (saving a checkpoint) once this many steps are done; 0: off.
                                 // Tests use it to interrupt a run at a known step.
    bool cuda;                   // train on the GPU (src/cuda): bf16 compute unless fp32
    bool fp32;                   // with cuda: the fp32 parity mode
    int recompute;               // with cuda: what backward recomputes to save memory (gpu.h's GpuRecompute: 0 none, 1 mlp, 2 layer)
    QuantType quantize;          // the frozen base's linears quantized (QUANT_NONE: fp32)
    bool double_quant;           // with 4-bit: the block statistics quantized to 8 bits
} TrainConfig;

// Defaults as HF Trainer / PEFT: AdamW (0.9, 0.999, 1e-8), no weight decay, clip 1.0, linear
// decay, 1 epoch, batch 4, seed 42; the adapter options are PEFT's for the method.
void train_config_defaults(TrainConfig *c, MethodId method);
void train_config_free(TrainConfig *c);  // the adapter options' allocations
int lr_schedule_parse(const char *s, LrSchedule *out);
// The method's default learning rate (its descriptor's); 0 for an id that is not a method.
float train_default_lr(MethodId m);
// The learning rate of optimizer step `step` (0-based) of `total`.
double train_lr_at(const TrainConfig *c, int step, int total);

typedef struct {
    int step, total_steps;       // step: optimizer steps done (1-based)
    double epoch;                // epochs done, fractional
    double loss;                 // mean over the step's micro-batches (with AdaLoRA's regulariser)
    double lm_loss;              // the same without a regulariser (the causal-LM loss)
    double lr, grad_norm;        // grad_norm: before clipping
    long tokens;                 // tokens the step processed (padding excluded)
    double tokens_per_s, elapsed_s;
    int budget;                  // AdaLoRA: the rank budget after this step; -1 otherwise
} TrainStepInfo;

typedef struct {
    int step;
    double loss, ppl;
    long n_tokens;               // tokens the loss is averaged over
} EvalInfo;

// All optional. Called from train_run's thread.
typedef struct {
    void (*on_start)(void *user, int first_step, int total_steps);
    void (*on_step)(void *user, const TrainStepInfo *s);
    void (*on_eval)(void *user, const EvalInfo *e);
    void (*on_message)(void *user, const char *text);  // data statistics, checkpoints, warnings
    void *user;
} TrainCallbacks;

typedef struct {
    int first_step;              // 0, or the checkpoint's step when resumed
    int steps_done;              // the step reached
    int total_steps;
    bool stopped;                // stopped early (stop_after or train_request_stop): a checkpoint was saved
    double last_loss;            // NAN before any step
    double first_val_loss, last_val_loss;  // this call's first and last evaluation (NAN without validation data)
    int n_train, n_val;          // sequences
} TrainResult;

// Returns 0 (also when stopped early, see res->stopped), or -1 + peft_last_error().
int train_run(const TrainConfig *cfg, const TrainCallbacks *cb, TrainResult *res);
// Ask a running train_run to save a checkpoint and return after the current step. Safe to call
// from a signal handler.
void train_request_stop(void);

// ---- evaluation ----

// Loss over every loss token of ds (token-weighted, the causal-LM loss without any adapter
// regulariser) and its perplexity. Batches of `batch` sequences; the model is put in eval mode.
int evaluate_dataset(Model *m, const Dataset *ds, int batch, EvalInfo *out);

typedef struct {
    const char *model_dir;
    const char *adapter_dir;     // NULL: the base model
    const char *data_path;
    DataOptions data;            // seq_len 0: min(512, the model's positions)
    int batch;                   // 0: 8
    int threads;
    QuantType quantize;          // the base's linears quantized (QUANT_NONE: fp32)
    bool double_quant;
} EvalConfig;

// Load the model (and adapter) and evaluate data_path. on_message (may be NULL) gets the data
// statistics.
int eval_run(const EvalConfig *cfg, EvalInfo *out, void (*on_message)(void *user, const char *text), void *user);
