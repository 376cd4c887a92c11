#include "optim.h"
#include "kernels.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

void adamw_init(AdamW *opt, Param **params, int n, float lr, float beta1, float beta2, float eps, float weight_decay) {
    memset(opt, 0, sizeof *opt);
    opt->lr = lr;
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    opt->weight_decay = weight_decay;
    opt->n = n;
    opt->numel = xcalloc(n, sizeof(long));
    opt->m = xcalloc(n, sizeof(float *));
    opt->v = xcalloc(n, sizeof(float *));
    for (int i = 0; i < n; i++) {
        opt->numel[i] = params[i]->numel;
        opt->m[i] = xcalloc(params[i]->numel, sizeof(float));
        opt->v[i] = xcalloc(params[i]->numel, sizeof(float));
    }
}

void adamw_free(AdamW *opt) {
    for (int i = 0; i < opt->n; i++) { free(opt->m[i]); free(opt->v[i]); }
    free(opt->m);
    free(opt->v);
    free(opt->numel);
    memset(opt, 0, sizeof *opt);
}

// torch's single-tensor AdamW: p *= 1 - lr*wd; m,v updated; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
// One pass over elements [i0, i1) of a tensor (vectorised: sqrtf and the division are exact in any width).
SIMD_CLONES static void adamw_range(float *w, float *m, float *v, const float *g, long i0, long i1, float decay, float b1, float b2,
                                    float step_size, float bc2_sqrt, float eps) {
#pragma omp simd
    for (long i = i0; i < i1; i++) {
        w[i] *= decay;
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        w[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
    }
}

void adamw_step(AdamW *opt, Param **params, int n, float lr) {
    opt->step++;
    double bc1 = 1.0 - pow(opt->beta1, opt->step), bc2 = 1.0 - pow(opt->beta2, opt->step);
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float b1 = opt->beta1, b2 = opt->beta2, eps = opt->eps;
    for (int t = 0; t < n; t++) {
        Param *p = params[t];
        float *w = p->w, *g = p->grad, *m = opt->m[t], *v = opt->v[t];
        float decay = p->decay ? 1.0f - lr * opt->weight_decay : 1.0f;
        enum { BLOCK = 16384 };
        long numel = p->numel;
#pragma omp parallel for if (numel > 65536)
        for (long i = 0; i < numel; i += BLOCK)
            adamw_range(w, m, v, g, i, numel - i < BLOCK ? numel : i + BLOCK, decay, b1, b2, step_size, bc2_sqrt, eps);
    }
}

SIMD_CLONES static double sum_squares(const float *g, long n) {
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (long i = 0; i < n; i++) ss += (double)g[i] * g[i];
    return ss;
}

// The squared norm by blocks of a fixed size, their sums added in order: in parallel, with the same
// bits at any thread count (it was one thread's double sum over every gradient, each step).
double clip_grad_norm(Param **params, int n, double max_norm) {
    enum { BLOCK = 16384 };
    double ss = 0;
    for (int t = 0; t < n; t++) {
        const float *g = params[t]->grad;
        long numel = params[t]->numel, nb = (numel + BLOCK - 1) / BLOCK;
        double *part = xmalloc(sizeof(double) * (nb ? nb : 1));
#pragma omp parallel for if (nb > 4)
        for (long b = 0; b < nb; b++) part[b] = sum_squares(g + b * BLOCK, numel - b * BLOCK < BLOCK ? numel - b * BLOCK : BLOCK);
        for (long b = 0; b < nb; b++) ss += part[b];
        free(part);
    }
    double norm = sqrt(ss);
    if (max_norm > 0 && norm > max_norm) {
        float k = (float)(max_norm / (norm + 1e-6));
        for (int t = 0; t < n; t++) {
            float *g = params[t]->grad;
            long numel = params[t]->numel;
#pragma omp parallel for simd if (numel > 65536)
            for (long i = 0; i < numel; i++) g[i] *= k;
        }
    }
    return norm;
}
