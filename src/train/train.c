// train.c: the training loop, checkpoints (resume), the JSONL log and loss curve, evaluation.
#include "train.h"
#include "cuda/gpu.h"
#include "adalora.h"
#include "lora_init.h"
#include "optim.h"
#include "safetensors.h"
#include "svg_plot.h"
#include "tokenizer.h"
#include "train_step.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

void train_request_stop(void) { stop_requested = 1; }

// ---------------------------------------------------------------------------------------------
// Configuration

void train_config_defaults(TrainConfig *c, MethodId method) {
    memset(c, 0, sizeof *c);
    c->method = method;
    adapter_config_defaults(&c->adapter, method);
    c->adalora_allocate = true;
    c->schedule = SCHED_LINEAR;
    c->beta1 = 0.9f;
    c->beta2 = 0.999f;
    c->eps = 1e-8f;
    c->max_grad_norm = 1.0f;
    c->epochs = 1;
    c->batch = 4;
    c->grad_accum = 1;
    c->seed = 42;
}

void train_config_free(TrainConfig *c) { adapter_config_free(&c->adapter); }

int lr_schedule_parse(const char *s, LrSchedule *out) {
    if (!strcasecmp(s, "linear")) *out = SCHED_LINEAR;
    else if (!strcasecmp(s, "cosine")) *out = SCHED_COSINE;
    else if (!strcasecmp(s, "constant")) *out = SCHED_CONSTANT;
    else return peft_fail("unknown learning-rate schedule \"%s\" (linear, cosine or constant)", s);
    return 0;
}

float train_default_lr(MethodId m) {
    const Method *d = method_get(m);
    return d ? d->default_lr : 0;
}

// HF's schedules (get_linear/cosine_schedule_with_warmup) after the warm-up; the warm-up itself
// starts at lr/warmup rather than HF's 0, so the first step is not wasted.
double train_lr_at(const TrainConfig *c, int step, int total) {
    // The float as its shortest decimal (2e-4, not 0.000199999995): the log then shows what was asked for.
    char buf[32];
    snprintf(buf, sizeof buf, "%.7g", c->lr > 0 ? c->lr : train_default_lr(c->method));
    double lr = strtod(buf, NULL);
    if (step < c->warmup_steps) return lr * (step + 1) / c->warmup_steps;
    if (c->schedule == SCHED_CONSTANT) return lr;
    double span = total - c->warmup_steps, progress = span > 0 ? (step - c->warmup_steps) / span : 0;
    if (c->schedule == SCHED_LINEAR) return lr * (1 - progress);
    return lr * 0.5 * (1 + cos(M_PI * progress));
}

// What a quantized base (--quantize, or a folder saved quantized) cannot do.
static int quant_refusals(const TrainConfig *c, QuantType q) {
    if (q && c->method == METHOD_FULL)
        return peft_fail("a %s-quantized base: full fine-tuning trains every weight, and a quantized base is frozen (train an adapter on it: lora, vera, adalora)",
                         quant_type_name(q));
    return 0;
}

static int check_config(const TrainConfig *c) {
    if (!c->model_dir || !c->data_path || !c->out_dir) return peft_fail("training needs a model, data and an output folder");
    const Method *method = method_get(c->method);
    if (!method) return -1;
    if (c->head_only) return peft_fail("--head-only trains a classifier's head: it is a --task classify option");
    if (c->cuda && method->peft_type && method->gpu == AD_NONE)
        return peft_fail("%s adapters with --device cuda are not implemented yet (the CPU path is)", method->title);
    if (c->batch < 1 || c->grad_accum < 1) return peft_fail("batch and gradient accumulation must be at least 1");
    if (c->max_steps < 0 || (c->max_steps == 0 && c->epochs < 1)) return peft_fail("give a positive number of steps or epochs");
    if (c->val_fraction < 0 || c->val_fraction >= 1) return peft_fail("the validation fraction must be in [0, 1) (got %g)", c->val_fraction);
    if (c->val_path && c->val_fraction > 0) return peft_fail("give a validation file or a validation fraction, not both");
    if (c->lr < 0 || c->weight_decay < 0 || c->max_grad_norm < 0 || c->warmup_steps < 0) return peft_fail("lr, weight decay, clipping and warm-up must not be negative");
    if (c->eval_every < 0 || c->save_every < 0 || c->stop_after < 0) return peft_fail("eval/save intervals must not be negative");
    if (c->recompute && !c->cuda) return peft_fail("--recompute is for --device cuda (the CPU path keeps its activations)");
    return quant_refusals(c, c->quantize);
}

// ---------------------------------------------------------------------------------------------
// The trainer's state

typedef struct { int n, cap; double *x, *y; } Series;

static void series_add(Series *s, double x, double y) {
    if (s->n == s->cap) { s->cap = 2 * s->cap + 64; s->x = xrealloc(s->x, sizeof(double) * s->cap); s->y = xrealloc(s->y, sizeof(double) * s->cap); }
    s->x[s->n] = x;
    s->y[s->n++] = y;
}

static void series_free(Series *s) { free(s->x); free(s->y); }

typedef struct {
    TrainConfig c;               // cfg with the defaults resolved (shallow: owns nothing)
    const TrainCallbacks *cb;
    TrainResult *res;
    Model *m;
    Tokenizer *tok;
    Dataset train, val;
    bool has_val;
    TrainStep st;                // the step: trainable tensors, AdamW, the device's backend
    GpuModel *g;                 // with --device cuda: the model on the GPU (trainables live there)
    int total_steps, micro_per_epoch;
    int *perm, perm_epoch;       // the shuffle of the epoch perm_epoch
    int32_t *ids, *labels;       // one micro-batch
    int32_t *pos;                // its positions, when packed
    FILE *log;
    Series loss_curve, val_curve;
    char *log_path, *svg_path, *ckpt_dir;
} Trainer;

static void message(Trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void message(Trainer *t, const char *fmt, ...) {
    if (!t->cb || !t->cb->on_message) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    t->cb->on_message(t->cb->user, buf);
}

// ---------------------------------------------------------------------------------------------
// Setup

static void describe_data(Trainer *t, const char *what, const char *path, const Dataset *ds) {
    message(t, "%s: %s: %d sequences from %d record%s (%ld tokens with a loss, the longest sequence %d)%s", what, path, ds->n_seq,
            ds->n_examples, ds->n_examples == 1 ? "" : "s", ds->n_loss_tokens, ds->max_len, ds->from_cache ? "; read from the cache" : "");
    if (ds->n_truncated)
        message(t, "%s: %d of %d examples were longer than the sequence length %d and were truncated", what, ds->n_truncated,
                ds->n_examples, t->c.data.seq_len);
    if (ds->n_dropped) message(t, "%s: %d examples had no tokens to learn from after truncation and were skipped", what, ds->n_dropped);
    if (ds->cache_warning) message(t, "%s: %s", what, ds->cache_warning);
}

static int check_vocab(const Dataset *ds, int vocab, const char *path) {
    for (long i = 0; i < ds->offset[ds->n_seq]; i++)
        if (ds->ids[i] < 0 || ds->ids[i] >= vocab)
            return peft_fail("%s: token id %d is outside the model's vocabulary (%d ids): the tokenizer does not match the model",
                             path, ds->ids[i], vocab);
    return 0;
}

static int load_data(Trainer *t) {
    Dataset all;
    if (dataset_load(&all, t->c.data_path, t->tok, t->c.model_dir, &t->c.data)) return -1;
    describe_data(t, "data", t->c.data_path, &all);
    int rc = 0;
    if (t->c.val_fraction > 0) {
        rc = dataset_split(&all, t->c.val_fraction, t->c.seed, &t->train, &t->val);
        dataset_free(&all);
        if (rc) return -1;
        t->has_val = true;
        message(t, "validation: %d sequences held out (%.3g of the data)", t->val.n_seq, t->c.val_fraction);
    } else t->train = all;
    if (t->c.val_path) {
        if (dataset_load(&t->val, t->c.val_path, t->tok, t->c.model_dir, &t->c.data)) return -1;
        describe_data(t, "validation", t->c.val_path, &t->val);
        t->has_val = true;
    }
    if (check_vocab(&t->train, t->m->cfg.vocab_size, t->c.data_path)) return -1;
    if (t->has_val && check_vocab(&t->val, t->m->cfg.vocab_size, t->c.val_path ? t->c.val_path : t->c.data_path)) return -1;
    return 0;
}

// --pack: the training examples laid into sequences of up to seq_len tokens (validation data is
// evaluated unpacked: the same per-token loss).
static int pack_data(Trainer *t) {
    if (!t->c.pack) return 0;
    Dataset packed;
    long tokens = t->train.offset[t->train.n_seq];
    dataset_pack(&t->train, t->c.data.seq_len, &packed);
    message(t, "packing: %d examples in %d sequences of up to %d tokens (%.1f%% of a batch's tokens were padding before, %.1f%% after)",
            t->train.n_seq, packed.n_seq, t->c.data.seq_len, 100.0 * (1 - (double)tokens / ((double)t->train.n_seq * t->train.max_len)),
            100.0 * (1 - (double)tokens / ((double)packed.n_seq * packed.max_len)));
    dataset_free(&t->train);
    t->train = packed;
    return 0;
}

static int attach_method(Trainer *t) {
    const Method *method = method_get(t->c.method);
    if (!method) return -1;
    if (!method->peft_type) {
        model_train_all(t->m);
        // HF Trainer's parameter groups: no weight decay on biases and norm weights (the 1-D tensors).
        for (int i = 0; i < t->m->n_params; i++) t->m->params[i].decay = t->m->params[i].ndim == 2;
        return 0;
    }
    // A copy that shares the caller's allocations; only default targets are allocated here.
    AdapterConfig a = t->c.adapter;
    bool own_targets = a.n_targets == 0 && !a.target_regex;
    if (own_targets) adapter_config_default_targets(&a, &t->m->cfg);
    a.type = method->id;
    a.fan_in_fan_out = t->m->cfg.arch == ARCH_GPT2;  // GPT-2's Conv1D layers store W transposed (PEFT sets it too)
    if (a.type == METHOD_VERA) a.save_projection = false;  // regenerated from projection_prng_key on load
    if (a.type == METHOD_ADALORA) {
        a.r = a.init_r;
        if (a.total_step == 0) a.total_step = t->total_steps;
    }
    int rc = a.type == METHOD_ADALORA && t->c.adalora_allocate ? adalora_check_options(&a, true) : 0;
    if (!rc) rc = adapters_attach(t->m, &a, t->c.seed);
    if (own_targets) {
        for (int i = 0; i < a.n_targets; i++) free(a.targets[i]);
        free(a.targets);
    }
    if (rc) return -1;
    AdapterConfig *saved = &t->m->adapters->cfg;  // what adapters_save writes
    free(saved->base_model);
    saved->base_model = xstrdup(t->c.model_dir);
    return 0;
}

// 512 tokens, or fewer when the model has fewer positions: long enough for most fine-tuning
// examples, short enough for attention's T^2 memory on a CPU.
static int default_seq_len(const Model *m) {
    int max_pos = m->cfg.n_positions > 0 ? m->cfg.n_positions : 512;
    return max_pos < 512 ? max_pos : 512;
}

// The model, tokenizer, data, adapter and optimizer; t->c gets its defaults resolved.
// The GPU keeps the trainables, their gradients and the AdamW moments on the device (checkpoints
// download them into the host structures the CPU path uses, and resuming uploads them).
static int setup_gpu(Trainer *t) {
    GpuOptions opt = {.precision = t->c.fp32 ? GPU_FP32 : GPU_BF16, .recompute = t->c.recompute};
    if (!(t->g = gpu_model_create(t->m, &opt))) return -1;
    char dev[256];
    gpu_describe(dev, sizeof dev);
    message(t, "device: %s (%s)", dev, t->c.fp32 ? "fp32" : "bf16 compute, fp32 master weights");
    return 0;
}

// What a run writes to out_dir: the log and the curve under their partial names until the adapter
// (or model) is saved, then under their own.
static const char *LOG = "train_log.jsonl", *LOG_PARTIAL = "train_log.partial.jsonl", *SVG = "loss.svg", *SVG_PARTIAL = "loss.partial.svg";

// A folder holding another run's outputs is replaced only when asked to (a resumed run continues its own).
static int check_out_dir(const TrainConfig *c) {
    if (c->resume || c->overwrite) return 0;
    const char *outputs[] = {"adapter_model.safetensors", "adapter_config.json", "model.safetensors", LOG, LOG_PARTIAL, "checkpoint"};
    for (size_t i = 0; i < sizeof outputs / sizeof *outputs; i++) {
        char *p = path_join(c->out_dir, outputs[i]);
        bool there = file_exists(p) || dir_exists(p);
        free(p);
        if (there)
            return peft_fail("%s holds another run's %s: pass --overwrite to replace that run's outputs, or --resume to continue from its checkpoint",
                             c->out_dir, outputs[i]);
    }
    return 0;
}

static int setup(Trainer *t, const TrainConfig *cfg) {
    t->c = *cfg;
    if (check_config(&t->c) || check_out_dir(&t->c)) return -1;
    if (t->c.threads > 0) omp_set_num_threads(t->c.threads);
    if (make_dir(t->c.out_dir)) return -1;
    if (!(t->m = model_load_quantized(t->c.model_dir, t->c.quantize, t->c.double_quant)) || !(t->tok = tokenizer_load(t->c.model_dir))) return -1;
    if (model_require_decoder(&t->m->cfg, "causal-LM training")) return -1;
    if (quant_refusals(&t->c, t->m->quant)) return -1;
    if (t->m->quant)
        message(t, "base quantized %s%s: %ld linears, dequantized one at a time for each GEMM", quant_type_name(t->m->quant),
                t->m->double_quant ? " with double quantization" : "", (long)t->m->n_linears);
    if (t->m->cfg.dropout > 0 && !t->c.no_base_dropout)
        return peft_fail("%s/config.json: %s %g: the base model's dropout is not implemented, so training would not be what "
                         "transformers does; pass --no-base-dropout to train without it", t->c.model_dir, t->m->cfg.dropout_key, t->m->cfg.dropout);
    if (t->m->cfg.dropout > 0)
        message(t, "training without the base model's dropout (--no-base-dropout; config.json: %s %g)", t->m->cfg.dropout_key, t->m->cfg.dropout);
    if (t->c.data.seq_len == 0) t->c.data.seq_len = default_seq_len(t->m);
    if (t->m->cfg.arch == ARCH_GPT2 && t->c.data.seq_len > t->m->cfg.n_positions)
        return peft_fail("sequence length %d exceeds the model's %d positions", t->c.data.seq_len, t->m->cfg.n_positions);
    if (!t->c.data.cache_dir) t->c.data.cache_dir = t->c.out_dir;
    if (load_data(t) || pack_data(t)) return -1;
    t->micro_per_epoch = (t->train.n_seq + t->c.batch - 1) / t->c.batch;
    long total = t->c.max_steps > 0 ? t->c.max_steps : ((long)t->c.epochs * t->micro_per_epoch + t->c.grad_accum - 1) / t->c.grad_accum;
    if (total > 1000000000L) return peft_fail("too many steps (%ld)", total);
    t->total_steps = (int)total;
    if (attach_method(t)) return -1;
    if (t->c.cuda && setup_gpu(t)) return -1;
    train_step_init(&t->st, t->m, t->g, t->c.beta1, t->c.beta2, t->c.eps, t->c.weight_decay, t->c.max_grad_norm, t->c.adalora_allocate);
    t->perm = xmalloc(sizeof(int) * t->train.n_seq);
    t->perm_epoch = -1;
    t->ids = xmalloc(sizeof(int32_t) * t->c.batch * t->train.max_len);
    t->labels = xmalloc(sizeof(int32_t) * t->c.batch * t->train.max_len);
    if (t->train.pos) t->pos = xmalloc(sizeof(int32_t) * t->c.batch * t->train.max_len);
    t->log_path = path_join(t->c.out_dir, LOG_PARTIAL);
    t->svg_path = path_join(t->c.out_dir, SVG_PARTIAL);
    t->ckpt_dir = path_join(t->c.out_dir, "checkpoint");
    long trainable = model_count_params(t->m, true), all = model_count_params(t->m, false);
    message(t, "%s: %ld trainable parameters (%.3g%% of %ld); %d steps of %d x %d sequences; lr %.3g",
            method_name(t->c.method), trainable, 100.0 * trainable / all, all, t->total_steps, t->c.grad_accum,
            t->c.batch, t->c.lr > 0 ? t->c.lr : train_default_lr(t->c.method));
    return 0;
}

static void teardown(Trainer *t) {
    if (t->log) fclose(t->log);
    gpu_model_free(t->g);
    train_step_free(&t->st);
    model_free(t->m);
    tokenizer_free(t->tok);
    dataset_free(&t->train);
    dataset_free(&t->val);
    free(t->perm);
    free(t->ids);
    free(t->labels);
    free(t->pos);
    series_free(&t->loss_curve);
    series_free(&t->val_curve);
    free(t->log_path);
    free(t->svg_path);
    free(t->ckpt_dir);
}

// ---------------------------------------------------------------------------------------------
// The log (train_log.jsonl) and the loss curve (loss.svg)

static void log_record(Trainer *t, cJSON *j) {
    char *line = cJSON_PrintUnformatted(j);
    fprintf(t->log, "%s\n", line);
    fflush(t->log);
    free(line);
    cJSON_Delete(j);
}

// The ranks the allocator keeps for adapter i: its rank-pattern entry once a mask was applied.
static int kept_ranks(AdapterSet *set, int i) {
    const RankPatternEntry *e = adalora_pattern_entry(set, set->adapters[i].lin->module);
    return e ? e->rank : set->adapters[i].r;
}

static void log_step(Trainer *t, const TrainStepInfo *s) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", s->step);
    cJSON_AddNumberToObject(j, "epoch", s->epoch);
    cJSON_AddNumberToObject(j, "loss", s->loss);
    if (s->lm_loss != s->loss) cJSON_AddNumberToObject(j, "lm_loss", s->lm_loss);  // AdaLoRA: without the regulariser
    cJSON_AddNumberToObject(j, "lr", s->lr);
    cJSON_AddNumberToObject(j, "grad_norm", s->grad_norm);
    cJSON_AddNumberToObject(j, "tokens", (double)s->tokens);
    cJSON_AddNumberToObject(j, "tokens_per_s", s->tokens_per_s);
    cJSON_AddNumberToObject(j, "elapsed_s", s->elapsed_s);
    if (t->g) cJSON_AddNumberToObject(j, "gpu_peak_bytes", (double)gpu_peak_bytes());  // every byte the CUDA backend allocated, at its high-water mark
    if (s->budget >= 0) {  // AdaLoRA: the budget and what each module keeps of it
        cJSON_AddNumberToObject(j, "budget", s->budget);
        cJSON *ranks = cJSON_AddObjectToObject(j, "ranks");
        for (int i = 0; i < t->m->adapters->n; i++)
            cJSON_AddNumberToObject(ranks, t->m->adapters->adapters[i].lin->module, kept_ranks(t->m->adapters, i));
    }
    log_record(t, j);
    series_add(&t->loss_curve, s->step, s->lm_loss);  // comparable with the validation loss
}

static void log_eval(Trainer *t, const EvalInfo *e) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", e->step);
    cJSON_AddNumberToObject(j, "eval_loss", e->loss);
    cJSON_AddNumberToObject(j, "eval_ppl", e->ppl);
    cJSON_AddNumberToObject(j, "eval_tokens", (double)e->n_tokens);
    log_record(t, j);
    series_add(&t->val_curve, e->step, e->loss);
}

// A long run's per-step losses are noisy: over 50 steps, the curve gets a moving average on top.
static void write_plot(Trainer *t) {
    const Series *raw = &t->loss_curve;
    int n = raw->n, w = n / 25 > 1 ? n / 25 : 1;
    double *avg = xmalloc(sizeof(double) * (n ? n : 1)), sum = 0;
    for (int i = 0; i < n; i++) {
        sum += raw->y[i] - (i >= w ? raw->y[i - w] : 0);
        avg[i] = sum / (i + 1 < w ? i + 1 : w);
    }
    PlotSeries s[3];
    int n_series = 0;
    s[n_series++] = (PlotSeries){"training loss", n >= 50 ? "#9ecae1" : "#1f77b4", n, raw->x, raw->y, false};
    if (n >= 50) s[n_series++] = (PlotSeries){"training loss (moving average)", "#08519c", n, raw->x, avg, false};
    if (t->val_curve.n) s[n_series++] = (PlotSeries){"validation loss", "#ff7f0e", t->val_curve.n, t->val_curve.x, t->val_curve.y, true};
    char title[256];
    snprintf(title, sizeof title, "%s fine-tuning", method_name(t->c.method));
    if (svg_plot_write(t->svg_path, title, "step", "loss", s, n_series)) {
        message(t, "warning: %s", peft_last_error());
        peft_clear_error();
    }
    free(avg);
}

// A fresh run starts the log; a resumed one keeps the records up to its checkpoint's step (later
// ones are about to be redone) and reloads them into the curves.
static int open_log(Trainer *t, int first_step) {
    if (first_step == 0) {
        if (!(t->log = fopen(t->log_path, "w"))) return peft_fail("%s: cannot write", t->log_path);
        return 0;
    }
    size_t len = 0;
    char *text = file_exists(t->log_path) ? read_file(t->log_path, &len) : xstrdup("");
    if (!text) return -1;
    char *kept = xcalloc(len + 2, 1), *k = kept, *save = NULL;  // + a newline the last line may lack
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(j, "step"), *loss = cJSON_GetObjectItemCaseSensitive(j, "lm_loss"),
                    *eval = cJSON_GetObjectItemCaseSensitive(j, "eval_loss");
        if (!loss) loss = cJSON_GetObjectItemCaseSensitive(j, "loss");
        if (cJSON_IsNumber(step) && step->valuedouble <= first_step) {
            k += sprintf(k, "%s\n", line);
            if (cJSON_IsNumber(loss)) series_add(&t->loss_curve, step->valuedouble, loss->valuedouble);
            if (cJSON_IsNumber(eval)) series_add(&t->val_curve, step->valuedouble, eval->valuedouble);
        }
        cJSON_Delete(j);
    }
    int rc = write_file_atomic(t->log_path, kept, k - kept);
    free(text);
    free(kept);
    if (!rc && !(t->log = fopen(t->log_path, "a"))) rc = peft_fail("%s: cannot write", t->log_path);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: checkpoint/state.safetensors (trainable tensors, AdamW moments, AdaLoRA's
// allocator) and checkpoint/state.json (the step and the settings that must not change).

static const char *CKPT_TENSORS = "state.safetensors", *CKPT_STATE = "state.json";

// The adapter's method when it keeps training state in checkpoints (AdaLoRA's allocator), else NULL.
static const Method *stateful_method(const Trainer *t) {
    const AdapterSet *set = t->m->adapters;
    const Method *m = set && set->method_state ? method_get(set->cfg.type) : NULL;
    return m && m->save_state ? m : NULL;
}


static cJSON *checkpoint_state(const Trainer *t, int step) {
    cJSON *j = cJSON_CreateObject();
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)t->c.seed);
    cJSON_AddNumberToObject(j, "step", step);
    cJSON_AddNumberToObject(j, "adam_step", t->st.opt.step);
    cJSON_AddNumberToObject(j, "micro_batch", (double)step * t->c.grad_accum);  // the data position
    // What the run's randomness and data order derive from: it must not change on resume.
    cJSON_AddStringToObject(j, "method", method_name(t->c.method));
    cJSON_AddStringToObject(j, "seed", seed);
    cJSON_AddNumberToObject(j, "total_steps", t->total_steps);
    cJSON_AddNumberToObject(j, "batch", t->c.batch);
    cJSON_AddNumberToObject(j, "grad_accum", t->c.grad_accum);
    cJSON_AddNumberToObject(j, "seq_len", t->c.data.seq_len);
    cJSON_AddNumberToObject(j, "train_sequences", t->train.n_seq);
    if (t->c.pack) cJSON_AddTrueToObject(j, "pack");
    const AdapterSet *set = t->m->adapters;
    char init[32];  // PiSSA / OLoRA: the base the tensors were trained on (written only when not the default)
    if (set && set->cfg.type == METHOD_LORA && set->cfg.init != LORA_INIT_TRUE)
        cJSON_AddStringToObject(j, "init_lora_weights", lora_init_text(&set->cfg, init, sizeof init));
    cJSON_AddNumberToObject(j, "trainable_tensors", t->st.n_params);
    return j;
}

// What a checkpoint folder may hold: its two files, and the ".tmp.<pid>" file an atomic write of
// either leaves when its process is killed.
static bool is_checkpoint_file(const char *name) {
    const char *files[] = {CKPT_TENSORS, CKPT_STATE};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(files[i]);
        if (!strncmp(name, files[i], n) && (!name[n] || !strncmp(name + n, ".tmp.", 5))) return true;
    }
    return false;
}

// Removes a checkpoint folder (absent: nothing to do). A file peft does not write there is not
// deleted but named in the error.
static int remove_checkpoint_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : peft_fail("%s: cannot open: %s", dir, strerror(errno));
    int rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = path_join(dir, e->d_name);
        if (!is_checkpoint_file(e->d_name)) rc = peft_fail("%s: not a checkpoint file: move it away (checkpoint folders are replaced at every save)", p);
        else if (unlink(p)) rc = peft_fail("%s: cannot remove: %s", p, strerror(errno));
        free(p);
    }
    closedir(d);
    if (!rc && rmdir(dir)) rc = peft_fail("%s: cannot remove: %s", dir, strerror(errno));
    return rc;
}

// Whatever step of save_checkpoint a killed process stopped at, leaves checkpoint/ complete (its
// state.json, written last, present) or absent, and no checkpoint.new/ or checkpoint.old/. Cut off
// between its two renames, a save leaves the last complete checkpoint in checkpoint.old/: it goes
// back into place.
static int recover_checkpoints(const Trainer *t) {
    char *tmp = xasprintf("%s.new", t->ckpt_dir), *old = xasprintf("%s.old", t->ckpt_dir);
    char *state = path_join(t->ckpt_dir, CKPT_STATE), *old_state = path_join(old, CKPT_STATE);
    int rc = remove_checkpoint_dir(tmp);
    if (!rc && !file_exists(state) && file_exists(old_state)) {
        rc = remove_checkpoint_dir(t->ckpt_dir);
        if (!rc && rename(old, t->ckpt_dir)) rc = peft_fail("%s: cannot move the checkpoint back into place: %s", old, strerror(errno));
    }
    if (!rc) rc = remove_checkpoint_dir(old);
    free(tmp);
    free(old);
    free(state);
    free(old_state);
    return rc;
}

// The last optimizer step has no forward after it whose loss would show an overflow: what is
// saved (a checkpoint, the final weights) is checked instead.
static int check_trainables_finite(const Trainer *t, int step) {
    for (int i = 0; i < t->st.n_params; i++) {
        const Param *p = t->st.params[i];
        for (long j = 0; j < p->numel; j++)
            if (!isfinite(p->w[j]))
                return peft_fail("step %d: %s is not finite after the update (%g at index %ld): try a lower learning rate", step, p->name, p->w[j], j);
    }
    return 0;
}

static int write_checkpoint_files(Trainer *t, const char *dir, int step) {
    const Method *sm = stateful_method(t);
    // On the GPU the master weights, the AdamW moments and step count (and a method's state) live on the device.
    if (t->g && (gpu_download_trainables(t->g, false) ||
                 gpu_download_optimizer(t->g, t->st.params, t->st.n_params, t->st.opt.m, t->st.opt.v, &t->st.opt.step) ||
                 (sm && sm->sync_state_gpu && sm->sync_state_gpu(t->m->adapters, t->g, true))))
        return -1;
    if (check_trainables_finite(t, step)) return -1;
    if (make_dir(dir)) return -1;
    StWriter *w = st_writer_new();
    char name[600];
    for (int i = 0; i < t->st.n_params; i++) {
        Param *p = t->st.params[i];
        const char *kind[] = {"param", "adam_m", "adam_v"};
        const float *data[] = {p->w, t->st.opt.m[i], t->st.opt.v[i]};
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "%s/%s", kind[k], p->name);
            st_writer_add_f32(w, name, p->ndim, p->shape, data[k]);
        }
    }
    if (sm) sm->save_state(t->m->adapters, w);
    char *tensors = path_join(dir, CKPT_TENSORS), *state = path_join(dir, CKPT_STATE);
    int rc = st_writer_save(w, tensors);
    st_writer_free(w);
    cJSON *j = checkpoint_state(t, step);
    char *text = cJSON_Print(j);
    if (!rc) rc = write_file_atomic(state, text, strlen(text));  // last: its presence marks a complete checkpoint
    free(text);
    cJSON_Delete(j);
    free(tensors);
    free(state);
    return rc;
}

// Written to checkpoint.new, then swapped in, so an interruption never leaves no valid checkpoint
// (recover_checkpoints tidies up after one).
static int save_checkpoint(Trainer *t, int step) {
    char *tmp = xasprintf("%s.new", t->ckpt_dir), *old = xasprintf("%s.old", t->ckpt_dir);
    int rc = recover_checkpoints(t);
    if (!rc) rc = write_checkpoint_files(t, tmp, step);
    if (!rc && dir_exists(t->ckpt_dir) && rename(t->ckpt_dir, old)) rc = peft_fail("%s: cannot replace the old checkpoint: %s", t->ckpt_dir, strerror(errno));
    if (!rc && rename(tmp, t->ckpt_dir)) rc = peft_fail("%s: cannot rename the new checkpoint into place: %s", tmp, strerror(errno));
    if (!rc) rc = remove_checkpoint_dir(old);
    if (!rc) message(t, "checkpoint saved at step %d: %s", step, t->ckpt_dir);
    free(tmp);
    free(old);
    return rc;
}

static int state_int(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : -1;
}

// The checkpoint must come from the same run: same method, seed, batch shape and data.
static int check_same_run(const Trainer *t, const cJSON *saved, const char *path) {
    cJSON *now = checkpoint_state(t, 0);
    static const char *keys[] = {"method", "seed", "total_steps", "batch", "grad_accum", "seq_len", "train_sequences", "trainable_tensors", "pack", "init_lora_weights"};
    int rc = 0;
    for (size_t i = 0; !rc && i < sizeof keys / sizeof *keys; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(saved, keys[i]), *b = cJSON_GetObjectItemCaseSensitive(now, keys[i]);
        if (!a && !b) continue;  // ("pack" and "init_lora_weights" are written only when not the default)
        if (!a || !cJSON_Compare(a, b, true)) {
            char *sa = a ? cJSON_PrintUnformatted(a) : xstrdup("(missing)"), *sb = b ? cJSON_PrintUnformatted(b) : xstrdup("(none)");
            rc = peft_fail("%s: the checkpoint has %s %s but this run has %s: resume with the same settings and data", path, keys[i], sa, sb);
            free(sa);
            free(sb);
        }
    }
    cJSON_Delete(now);
    return rc;
}

static int load_tensor(const SafeTensors *st, const char *kind, const Param *p, float *dst, const char *path) {
    char name[600];
    snprintf(name, sizeof name, "%s/%s", kind, p->name);
    const StTensor *t = st_find(st, name);
    if (!t || t->numel != p->numel) return peft_fail("%s: missing or mis-shaped tensor %s", path, name);
    return st_to_f32_finite(t, dst, path);
}

static int load_checkpoint_files(Trainer *t, const char *dir, int *step) {
    char *state_path = path_join(dir, CKPT_STATE), *tensor_path = path_join(dir, CKPT_TENSORS);
    char *text = read_file(state_path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    SafeTensors st = {0};
    int rc = -1;
    if (!j) { if (text) peft_fail("%s: invalid JSON", state_path); goto out; }
    if (check_same_run(t, j, state_path)) goto out;
    *step = state_int(j, "step");
    t->st.opt.step = state_int(j, "adam_step");
    if (*step < 0 || *step > t->total_steps || t->st.opt.step < 0) { peft_fail("%s: bad step", state_path); goto out; }
    if (st_open(&st, tensor_path)) goto out;
    for (int i = 0; i < t->st.n_params; i++) {
        Param *p = t->st.params[i];
        if (load_tensor(&st, "param", p, p->w, tensor_path) || load_tensor(&st, "adam_m", p, t->st.opt.m[i], tensor_path) ||
            load_tensor(&st, "adam_v", p, t->st.opt.v[i], tensor_path))
            goto out;
    }
    if (stateful_method(t) && stateful_method(t)->load_state(t->m->adapters, &st, tensor_path)) goto out;
    if (t->g && (gpu_upload_trainables(t->g) || gpu_upload_optimizer(t->g, t->st.params, t->st.n_params, t->st.opt.m, t->st.opt.v, t->st.opt.step)))
        goto out;
    if (t->g && stateful_method(t) && stateful_method(t)->sync_state_gpu && stateful_method(t)->sync_state_gpu(t->m->adapters, t->g, false))
        goto out;
    rc = 0;
out:
    st_close(&st);
    cJSON_Delete(j);
    free(text);
    free(state_path);
    free(tensor_path);
    return rc;
}

// A fresh run starts without the checkpoints of a run it replaces.
static int remove_checkpoints(const Trainer *t) {
    return recover_checkpoints(t) ? -1 : remove_checkpoint_dir(t->ckpt_dir);
}

// The latest complete checkpoint, after tidying up what an interrupted save left.
static int resume(Trainer *t, int *step) {
    if (recover_checkpoints(t)) return -1;
    char *state = path_join(t->ckpt_dir, CKPT_STATE);
    int rc = -1;
    if (!file_exists(state)) peft_fail("%s: no checkpoint to resume from", t->ckpt_dir);
    else if (!(rc = load_checkpoint_files(t, t->ckpt_dir, step))) message(t, "resuming from %s at step %d of %d", t->ckpt_dir, *step, t->total_steps);
    free(state);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// The loop

// Micro-batch k of the run: epoch k / per_epoch of a fresh seeded shuffle; the last batch of an
// epoch may be smaller. Everything is a function of k, so a resumed run sees the same batches.
static const int *micro_batch(Trainer *t, long k, int *n) {
    int epoch = (int)(k / t->micro_per_epoch), pos = (int)(k % t->micro_per_epoch);
    if (epoch != t->perm_epoch) {
        shuffle_indices(t->perm, t->train.n_seq, seed_mix(t->c.seed, (uint64_t)epoch));
        t->perm_epoch = epoch;
    }
    int start = pos * t->c.batch;
    *n = t->train.n_seq - start < t->c.batch ? t->train.n_seq - start : t->c.batch;
    return t->perm + start;
}

// Micro-batch k into t->ids / t->labels, and its positions into t->pos when packed (the next forward's
// Model.positions); returns its length T.
static int load_micro_batch(Trainer *t, long k, const int **idx, int *n) {
    *idx = micro_batch(t, k, n);
    int T = dataset_batch(&t->train, *idx, *n, t->ids, t->labels);
    if (t->pos) dataset_batch_positions(&t->train, *idx, *n, T, t->pos);
    return T;
}

static long batch_tokens(const Dataset *ds, const int *idx, int n) {
    long s = 0;
    for (int i = 0; i < n; i++) s += ds->offset[idx[i] + 1] - ds->offset[idx[i]];
    return s;
}

// Micro-batch k of the step being run: its place in the epoch's shuffle and its dropout seed.
typedef struct { Trainer *t; int step; } StepData;

static int next_micro_batch(void *user, int k, MicroBatch *mb) {
    const StepData *d = user;
    Trainer *t = d->t;
    long micro = (long)d->step * t->c.grad_accum + k;
    int n;
    const int *idx;
    int T = load_micro_batch(t, micro, &idx, &n);
    *mb = (MicroBatch){.ids = t->ids, .labels = t->labels, .positions = t->pos, .B = n, .T = T,
                       .dropout_seed = seed_mix(t->c.seed ^ 0xD50Full, (uint64_t)micro), .tokens = batch_tokens(&t->train, idx, n)};
    return 0;
}

// One optimizer step (0-based `step`) on the run's device (train_step.h).
static int train_step(Trainer *t, int step, TrainStepInfo *info) {
    double t0 = now_seconds(), lr = train_lr_at(&t->c, step, t->total_steps);
    StepData d = {t, step};
    StepResult r;
    if (train_step_run(&t->st, step, t->c.grad_accum, lr, next_micro_batch, &d, &r)) return -1;
    double dt = now_seconds() - t0;
    *info = (TrainStepInfo){.step = step + 1, .total_steps = t->total_steps, .epoch = (double)(step + 1) * t->c.grad_accum / t->micro_per_epoch,
                            .loss = r.loss, .lm_loss = r.lm_loss, .lr = lr, .grad_norm = r.grad_norm, .tokens = r.tokens,
                            .tokens_per_s = dt > 0 ? r.tokens / dt : 0, .budget = r.budget};
    return 0;
}

typedef double (*BatchLossFn)(void *ctx, const int32_t *ids, const int32_t *labels, int B, int T);
static int evaluate_with(BatchLossFn batch_loss, void *ctx, const Dataset *ds, int batch, EvalInfo *out);

static double gpu_batch_loss(void *g, const int32_t *ids, const int32_t *labels, int B, int T) {
    double loss = gpu_forward(g, ids, labels, B, T);
    return isnan(loss) ? loss : gpu_lm_loss(g);
}

static int run_eval(Trainer *t, int step) {
    EvalInfo e;
    int batch = t->c.eval_batch > 0 ? t->c.eval_batch : t->c.batch;
    if (t->g ? evaluate_with(gpu_batch_loss, t->g, &t->val, batch, &e) : evaluate_dataset(t->m, &t->val, batch, &e)) return -1;
    e.step = step;
    log_eval(t, &e);
    if (isnan(t->res->first_val_loss)) t->res->first_val_loss = e.loss;
    t->res->last_val_loss = e.loss;
    if (t->cb && t->cb->on_eval) t->cb->on_eval(t->cb->user, &e);
    write_plot(t);
    return 0;
}

// The adapter (or model), then the log and the curve under their own names: a save that fails
// leaves the previous run's three as they were.
static int save_final(Trainer *t) {
    if (t->g && gpu_download_trainables(t->g, false)) return -1;
    if (check_trainables_finite(t, t->total_steps)) return -1;
    int rc = t->m->adapters ? adapters_save(t->m, t->c.out_dir) : model_save(t->m, t->c.out_dir);
    if (rc) return -1;
    message(t, "saved the %s to %s", t->m->adapters ? "adapter" : "model", t->c.out_dir);
    fclose(t->log);
    t->log = NULL;
    const char *from[] = {t->log_path, t->svg_path}, *to[] = {LOG, SVG};
    for (int i = 0; i < 2 && !rc; i++) {
        char *dst = path_join(t->c.out_dir, to[i]);
        if (file_exists(from[i]) && rename(from[i], dst)) rc = peft_fail("%s: cannot rename to %s: %s", from[i], dst, strerror(errno));
        free(dst);
    }
    return rc;
}

static int train_loop(Trainer *t, int first_step) {
    double t_start = now_seconds();
    if (t->has_val && first_step == 0 && run_eval(t, 0)) return -1;
    for (int step = first_step; step < t->total_steps; step++) {
        TrainStepInfo info;
        if (train_step(t, step, &info)) return -1;
        info.elapsed_s = now_seconds() - t_start;
        log_step(t, &info);
        t->res->steps_done = info.step;
        t->res->last_loss = info.loss;
        if (t->cb && t->cb->on_step) t->cb->on_step(t->cb->user, &info);
        bool last = info.step == t->total_steps;
        if (t->has_val && (last || (t->c.eval_every && info.step % t->c.eval_every == 0)) && run_eval(t, info.step)) return -1;
        if (last) break;
        bool stop = stop_requested || (t->c.stop_after && info.step >= t->c.stop_after);
        if (stop || (t->c.save_every && info.step % t->c.save_every == 0)) {
            if (save_checkpoint(t, info.step)) return -1;
            write_plot(t);
        }
        if (stop) { t->res->stopped = true; return 0; }
    }
    write_plot(t);
    return save_final(t);
}

int train_run(const TrainConfig *cfg, const TrainCallbacks *cb, TrainResult *res) {
    Trainer t = {.cb = cb, .res = res};
    *res = (TrainResult){.last_loss = NAN, .first_val_loss = NAN, .last_val_loss = NAN};
    stop_requested = 0;
    int threads_before = omp_get_max_threads();  // cfg->threads is for this run only
    int first_step = 0, rc = setup(&t, cfg);
    if (!rc) rc = cfg->resume ? resume(&t, &first_step) : remove_checkpoints(&t);
    if (!rc) rc = open_log(&t, first_step);
    if (!rc) {
        res->first_step = res->steps_done = first_step;
        res->total_steps = t.total_steps;
        res->n_train = t.train.n_seq;
        res->n_val = t.has_val ? t.val.n_seq : 0;
        if (cb && cb->on_start) cb->on_start(cb->user, first_step, t.total_steps);
        rc = train_loop(&t, first_step);
    }
    teardown(&t);
    omp_set_num_threads(threads_before);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Evaluation

// The mean causal-LM loss (without regularisers) of one batch, on whichever device.
static double cpu_batch_loss(void *model, const int32_t *ids, const int32_t *labels, int B, int T) {
    Model *m = model;
    double loss = model_forward(m, ids, labels, B, T);
    return isnan(loss) ? loss : m->act.lm_loss;
}

int evaluate_dataset(Model *m, const Dataset *ds, int batch, EvalInfo *out) {
    bool was_training = m->training;
    m->training = false;
    int rc = evaluate_with(cpu_batch_loss, m, ds, batch, out);
    m->training = was_training;
    return rc;
}

static int evaluate_with(BatchLossFn batch_loss, void *ctx, const Dataset *ds, int batch, EvalInfo *out) {
    if (batch < 1) batch = 1;
    int *idx = xmalloc(sizeof(int) * batch);
    int32_t *ids = xmalloc(sizeof(int32_t) * batch * ds->max_len), *labels = xmalloc(sizeof(int32_t) * batch * ds->max_len);
    double sum = 0;
    long count = 0;
    int rc = 0;
    for (int s = 0; s < ds->n_seq && !rc; s += batch) {
        int n = ds->n_seq - s < batch ? ds->n_seq - s : batch;
        for (int i = 0; i < n; i++) idx[i] = s + i;
        int T = dataset_batch(ds, idx, n, ids, labels);
        double loss = batch_loss(ctx, ids, labels, n, T);
        if (isnan(loss)) { rc = -1; break; }
        long k = count_loss_tokens(labels, n, T);
        sum += loss * k;
        count += k;
    }
    free(idx);
    free(ids);
    free(labels);
    if (rc) return -1;
    if (count == 0) return peft_fail("evaluation: the data has no tokens to score");
    *out = (EvalInfo){.loss = sum / count, .ppl = exp(sum / count), .n_tokens = count};
    return 0;
}

int eval_run(const EvalConfig *cfg, EvalInfo *out, void (*on_message)(void *, const char *), void *user) {
    int threads_before = omp_get_max_threads();
    if (cfg->threads > 0) omp_set_num_threads(cfg->threads);
    Model *m = model_load_quantized(cfg->model_dir, cfg->quantize, cfg->double_quant);
    Tokenizer *tok = m && !model_require_decoder(&m->cfg, "the causal-LM loss") ? tokenizer_load(cfg->model_dir) : NULL;
    int rc = tok ? 0 : -1;
    if (!rc && cfg->adapter_dir) rc = adapters_load(m, cfg->adapter_dir);
    DataOptions opt = cfg->data;
    if (m && opt.seq_len == 0) opt.seq_len = default_seq_len(m);
    Dataset ds = {0};
    if (!rc) rc = dataset_load(&ds, cfg->data_path, tok, cfg->model_dir, &opt);
    if (!rc) rc = check_vocab(&ds, m->cfg.vocab_size, cfg->data_path);
    if (!rc && on_message) {
        char buf[1024];
        snprintf(buf, sizeof buf, "%s: %d sequences (%d examples, %d truncated to %d tokens)%s", cfg->data_path, ds.n_seq,
                 ds.n_examples, ds.n_truncated, opt.seq_len, ds.from_cache ? ", from the cache" : "");
        on_message(user, buf);
        if (ds.cache_warning) on_message(user, ds.cache_warning);
    }
    if (!rc) rc = evaluate_dataset(m, &ds, cfg->batch > 0 ? cfg->batch : 8, out);
    dataset_free(&ds);
    tokenizer_free(tok);
    model_free(m);
    omp_set_num_threads(threads_before);
    return rc;
}
