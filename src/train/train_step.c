// train_step.c: the training step (train_step.h) and its two backends.
#include "train_step.h"
#include "adapter.h"
#include "cuda/gpu.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>

// What differs between the devices. forward returns -1 only for a backend failure (with its
// error); the loss itself is checked by the step.
struct StepBackend {
    void (*zero_grad)(TrainStep *s);
    int (*forward)(TrainStep *s, const MicroBatch *mb, double *loss, double *lm_loss);
    int (*backward)(TrainStep *s);
    int (*scale_grads)(TrainStep *s, float k);
    double (*clip)(TrainStep *s, double max_norm);
    int (*optimizer_step)(TrainStep *s, float lr);
    // The method's update after the step; returns its budget or -1.
    int (*method_update)(TrainStep *s, const Method *method, int step);
    int (*sync)(TrainStep *s);
};

// ---- CPU ----

static void cpu_zero_grad(TrainStep *s) {
    s->m->training = true;
    model_zero_grad(s->m);
}

static int cpu_forward(TrainStep *s, const MicroBatch *mb, double *loss, double *lm_loss) {
    s->m->dropout_seed = mb->dropout_seed;
    s->m->positions = mb->positions;
    *loss = mb->classify ? model_classify(s->m, mb->classify) : model_forward(s->m, mb->ids, mb->labels, mb->B, mb->T);
    s->m->positions = NULL;  // (backward reads the forward's own copy; evaluation is unpacked)
    *lm_loss = s->m->act.lm_loss;
    return 0;
}

static int cpu_backward(TrainStep *s) {
    model_backward(s->m);
    return 0;
}

static int cpu_scale_grads(TrainStep *s, float k) {
    for (int i = 0; i < s->n_params; i++)
        for (long j = 0; j < s->params[i]->numel; j++) s->params[i]->grad[j] *= k;
    return 0;
}

static double cpu_clip(TrainStep *s, double max_norm) { return clip_grad_norm(s->params, s->n_params, max_norm); }

static int cpu_optimizer_step(TrainStep *s, float lr) {
    adamw_step(&s->opt, s->params, s->n_params, lr);
    return 0;
}

static int cpu_method_update(TrainStep *s, const Method *method, int step) {
    int masked;
    return method->after_step(s->m, step, &masked);
}

static int cpu_sync(TrainStep *s) { return 0; }

static const StepBackend CPU = {cpu_zero_grad, cpu_forward, cpu_backward, cpu_scale_grads, cpu_clip, cpu_optimizer_step,
                                cpu_method_update, cpu_sync};

// ---- CUDA: the micro-batches' gradients accumulate on the device, then the mean, clipping and
// AdamW there. Dropout masks come from the same seed as on the CPU, through the GPU's own hash of
// it (see gpu_set_dropout). ----

static void gpu_step_zero_grad(TrainStep *s) { gpu_zero_grad(s->g); }

static int gpu_step_forward(TrainStep *s, const MicroBatch *mb, double *loss, double *lm_loss) {
    gpu_set_dropout(s->g, true, mb->dropout_seed);
    s->m->positions = mb->positions;
    *loss = mb->classify ? gpu_classify(s->g, mb->classify, NULL) : gpu_forward(s->g, mb->ids, mb->labels, mb->B, mb->T);
    s->m->positions = NULL;
    gpu_set_dropout(s->g, false, 0);  // evaluation between steps never drops
    if (isnan(*loss) && peft_last_error()[0]) return -1;
    *lm_loss = gpu_lm_loss(s->g);
    return 0;
}

static int gpu_step_backward(TrainStep *s) { return gpu_backward(s->g); }
static int gpu_step_scale_grads(TrainStep *s, float k) { return gpu_scale_grads(s->g, k); }
static double gpu_step_clip(TrainStep *s, double max_norm) { return gpu_clip_grad_norm(s->g, max_norm); }

static int gpu_step_optimizer_step(TrainStep *s, float lr) {
    const AdamW *o = &s->opt;
    return gpu_adamw_step(s->g, lr, o->beta1, o->beta2, o->eps, o->weight_decay);
}

// The method's update with its state on the device (AdaLoRA: the scores stay there; only the
// triplet scores come to the host when a mask is due).
static int gpu_step_method_update(TrainStep *s, const Method *method, int step) {
    int masked;
    if (!method->after_step_gpu) return peft_fail("%s: no update after the step on the CUDA backend", method->title);
    return method->after_step_gpu(s->m, s->g, step, &masked);
}

static int gpu_step_sync(TrainStep *s) { return gpu_sync(s->g); }

static const StepBackend CUDA = {gpu_step_zero_grad, gpu_step_forward, gpu_step_backward, gpu_step_scale_grads, gpu_step_clip,
                                 gpu_step_optimizer_step, gpu_step_method_update, gpu_step_sync};

// ---- the step ----

void train_step_init(TrainStep *s, Model *m, struct GpuModel *g, float beta1, float beta2, float eps,
                     float weight_decay, float max_grad_norm, bool allocate) {
    *s = (TrainStep){.m = m, .g = g, .max_grad_norm = max_grad_norm, .allocate = allocate, .be = g ? &CUDA : &CPU};
    s->n_params = model_trainable(m, &s->params);
    adamw_init(&s->opt, s->params, s->n_params, 0, beta1, beta2, eps, weight_decay);
}

void train_step_free(TrainStep *s) {
    if (s->opt.n) adamw_free(&s->opt);
    *s = (TrainStep){0};
}

// The adapter's method when it has an update to run after each step, else NULL.
static const Method *updating_method(const TrainStep *s) {
    const AdapterSet *set = s->m->adapters;
    const Method *m = s->allocate && set && set->method_state ? method_get(set->cfg.type) : NULL;
    return m && m->after_step ? m : NULL;
}

int train_step_run(TrainStep *s, int step, int accum, double lr, MicroBatchFn next, void *user, StepResult *out) {
    const StepBackend *be = s->be;
    double loss_sum = 0, lm_sum = 0;
    long tokens = 0;
    be->zero_grad(s);
    for (int k = 0; k < accum; k++) {
        MicroBatch mb;
        double loss, lm_loss;
        if (next(user, k, &mb) || be->forward(s, &mb, &loss, &lm_loss)) return -1;
        if (!isfinite(loss)) return peft_fail("step %d: the loss is not finite (%g): try a lower learning rate", step + 1, loss);
        if (be->backward(s)) return -1;
        loss_sum += loss;
        lm_sum += lm_loss;
        tokens += mb.tokens;
    }
    if (accum > 1 && be->scale_grads(s, 1.0f / accum)) return -1;
    double norm = be->clip(s, s->max_grad_norm);
    if (be->optimizer_step(s, (float)lr)) return -1;
    int budget = -1;
    const Method *method = updating_method(s);
    if (method && (budget = be->method_update(s, method, step)) < 0) return -1;
    if (be->sync(s)) return -1;
    *out = (StepResult){.loss = loss_sum / accum, .lm_loss = lm_sum / accum, .grad_norm = norm, .tokens = tokens, .budget = budget};
    return 0;
}
