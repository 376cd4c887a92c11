// optim.h: AdamW exactly as torch.optim.AdamW (decoupled weight decay, bias correction).
#pragma once
#include "model.h"

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    int step;          // steps taken so far
    int n;
    long *numel;
    float **m, **v;    // first and second moments, one per trainable tensor
} AdamW;

void adamw_init(AdamW *opt, Param **params, int n, float lr, float beta1, float beta2, float eps, float weight_decay);
void adamw_free(AdamW *opt);
// One step over params (the same list, in the same order, as at init) at learning rate lr.
void adamw_step(AdamW *opt, Param **params, int n, float lr);
// Clip the global L2 norm of all gradients to max_norm (as torch.nn.utils.clip_grad_norm_); returns the norm before.
double clip_grad_norm(Param **params, int n, double max_norm);
