// dora.c: DoRA (Liu et al. 2024, weight-decomposed low-rank adaptation) as HF PEFT 0.21 implements it
// (tuners/lora/dora.py, variants.py): LoRA's A and B plus a magnitude m [out] per module, the weight
//   W' = m / ||W + s B A|| * (W + s B A),
// the norm taken over each output's row of the [out, in] weight (PEFT's get_weight_norm:
// linalg.norm(dim=1) after transposing GPT-2's Conv1D), m starting at that norm (B = 0 then: the
// weight's own row norms). The forward detaches the norm (the paper's section 4.3; PEFT's .detach()):
// it gets no gradient. With g = m / ||W + s B A|| per output and x' = dropout(x), PEFT adds
//   (g - 1) * (x' W^T) + g * s * (x' A^T) B^T
// to the base result x W^T + b; without dropout it takes x' W^T from that result (minus b).
// A file is LoRA's (peft_type LORA) with use_dora true and each module's lora_magnitude_vector.
#include "adapter.h"
#include "kernels.h"
#include "util.h"
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float *norm;        // [out] ||W + s B A|| as the last forward computed it (backward's)
    float *A, *B;       // the A and B it came from: inference reuses the norm while they are unchanged
    bool valid;
    float *merge_norm;  // [out] the norm at merge: unmerge divides by it (PEFT caches it the same way)
} DoraState;

enum { NORM_ROWS = 64 };  // rows of W + s B A materialised at a time

// norm[o] = ||W[o,:] + s (B A)[o,:]|| (lora false: ||W[o,:]||), NORM_ROWS rows at a time. A quantized
// base is dequantized here, block by block, into this scratch: nothing of the model is written (a
// detached set is made while another thread may run the model).
static void weight_norm(const Adapter *a, float *norm, bool lora) {
    const Linear *lin = a->lin;
    int in = lin->in, out = lin->out, r = a->r;
    const float *W = lin->q ? NULL : lin->weight->w;  // NULL: quantized or bf16 only (model_keep_bf16)
    float *blk = xmalloc(sizeof(float) * NORM_ROWS * in), *deq = W ? NULL : xmalloc(sizeof(float) * NORM_ROWS * in);
    for (int o0 = 0; o0 < out; o0 += NORM_ROWS) {
        int n = out - o0 < NORM_ROWS ? out - o0 : NORM_ROWS;
        if (lora) matmul(blk, a->B->w + (long)o0 * r, a->A->w, n, in, r, false, false, a->scaling, 0.0f);  // s B[o0:] A
        else memset(blk, 0, sizeof(float) * n * in);
        if (deq) linear_weight_rows(lin, o0, n, deq);
#pragma omp parallel for if ((long)n * in > 65536)
        for (int k = 0; k < n; k++) {
            double ss = 0;
            for (int i = 0; i < in; i++) {
                float w = deq ? deq[(long)k * in + i] : lin->fan_in_fan_out ? W[(long)i * out + o0 + k] : W[(long)(o0 + k) * in + i];
                float v = w + blk[(long)k * in + i];
                ss += (double)v * v;
            }
            norm[o0 + k] = (float)sqrt(ss);
        }
    }
    free(blk);
    free(deq);
}

// The norm the forward divides by: computed afresh when training (A and B change every step), else
// reused while A and B are what it was computed from (generation calls the forward once a token).
static const float *current_norm(Adapter *a, bool train) {
    DoraState *st = a->state;
    size_t nA = sizeof(float) * a->A->numel, nB = sizeof(float) * a->B->numel;
    if (train || !st->valid || memcmp(st->A, a->A->w, nA) || memcmp(st->B, a->B->w, nB)) {
        weight_norm(a, st->norm, true);
        memcpy(st->A, a->A->w, nA);
        memcpy(st->B, a->B->w, nB);
        st->valid = true;
    }
    return st->norm;
}

static int dora_init(AdapterSet *set, Adapter *a, uint64_t *rng) {
    if (lora_method.init(set, a, rng)) return -1;  // A Kaiming-uniform, B zeros, the scaling
    DoraState *st = xcalloc(1, sizeof *st);
    a->state = st;
    st->norm = xcalloc(a->lin->out, sizeof(float));
    st->merge_norm = xcalloc(a->lin->out, sizeof(float));
    st->A = xmalloc(sizeof(float) * (a->A->numel ? a->A->numel : 1));
    st->B = xmalloc(sizeof(float) * (a->B->numel ? a->B->numel : 1));
    weight_norm(a, a->magnitude->w, false);  // PEFT: m = ||W + s B A|| with B = 0
    return 0;
}

static void dora_free_state(AdapterSet *set) {
    for (int i = 0; i < set->n; i++) {
        DoraState *st = set->adapters[i].state;
        if (!st) continue;
        free(st->norm);
        free(st->merge_norm);
        free(st->A);
        free(st->B);
        free(st);
        set->adapters[i].state = NULL;
    }
    lora_method.free_state(set);  // LoRA's init keeps its generator in the set's state (lora_init.c)
}

// extra [N,out] keeps x' W^T + s x' A^T B^T, the direction's output that m's gradient needs.
static void dora_forward(Adapter *a, const float *x, float *y, int N, bool train) {
    int in = a->lin->in, out = a->lin->out, r = a->r;
    adapter_ensure_capacity(a, N, out);
    const float *xin = adapter_dropout_input(a, x, N, train);
    const float *norm = current_norm(a, train), *m = a->magnitude->w, *b = a->lin->bias ? a->lin->bias->w : NULL;
    float *e = a->extra, *base = NULL;
    matmul(a->h, xin, a->A->w, N, r, in, false, true, 1.0f, 0.0f);       // h = x' A^T       [N,r]
    matmul(e, a->h, a->B->w, N, out, r, false, true, a->scaling, 0.0f);  // e = s h B^T      [N,out]
    if (xin != x) {  // dropout: x' W^T (else the base result less its bias)
        bool fan;
        const float *W = model_linear_weight(a->set->model, a->lin, &fan);
        base = xmalloc(sizeof(float) * (size_t)N * out);
        matmul(base, xin, W, N, out, in, false, !fan, 1.0f, 0.0f);
    }
#pragma omp parallel for if ((long)N * out > 65536)
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            long i = (long)n * out + o;
            float g = m[o] / norm[o], bo = base ? base[i] : y[i] - (b ? b[o] : 0.0f);
            y[i] += (g - 1.0f) * bo + g * e[i];
            e[i] += bo;
        }
    free(base);
}

// g is a constant to the gradient (the norm is detached): dm = sum_n dy e / norm, and A, B and x see
// dy g through the LoRA product, x also (g - 1) dy through x' W^T.
static void dora_backward(Adapter *a, const float *x, const float *dy, float *dx, int N) {
    int in = a->lin->in, out = a->lin->out, r = a->r;
    const DoraState *st = a->state;
    const float *m = a->magnitude->w, *e = a->extra;
    float *dyg = xmalloc(sizeof(float) * (size_t)N * out), *dh = xmalloc(sizeof(float) * (size_t)N * r);
#pragma omp parallel for if ((long)N * out > 65536)
    for (int o = 0; o < out; o++) {
        double s = 0;
        float g = m[o] / st->norm[o];
        for (int n = 0; n < N; n++) {
            long i = (long)n * out + o;
            s += (double)dy[i] * e[i];
            dyg[i] = dy[i] * g;
        }
        a->magnitude->grad[o] += (float)(s / st->norm[o]);
    }
    matmul(a->B->grad, dyg, a->h, out, r, N, true, false, a->scaling, 1.0f);  // dB += s (dy g)^T h  [out,r]
    matmul(dh, dyg, a->B->w, N, r, out, false, false, a->scaling, 0.0f);      // dh = s (dy g) B     [N,r]
    matmul(a->A->grad, dh, x, r, in, N, true, false, 1.0f, 1.0f);             // dA += dh^T x'       [r,in]
    if (dx) {
        matmul(dx, dh, a->A->w, N, in, r, false, false, 1.0f, 1.0f);          // dx += dh A
        for (long i = 0; i < (long)N * out; i++) dyg[i] -= dy[i];             // (g - 1) dy
        bool fan;
        const float *W = model_linear_weight(a->set->model, a->lin, &fan);
        matmul(dx, dyg, W, N, in, out, false, fan, 1.0f, 1.0f);               // dx += (g - 1) dy W
    }
    free(dyg);
    free(dh);
}

// Merging: delta = g (W + s B A) - W with the norm of W + s B A (kept); unmerging (W is the merged
// W'): delta = W' - (W' / g - s B A) with the norm kept at merge, as PEFT's unmerge divides by it.
static void dora_delta(const Adapter *a, float *delta) {
    const Linear *lin = a->lin;
    DoraState *st = a->state;
    int in = lin->in, out = lin->out;
    if (!a->merged) weight_norm(a, st->merge_norm, true);
    matmul(delta, a->B->w, a->A->w, out, in, a->r, false, false, a->scaling, 0.0f);  // s B A
    const float *W = lin->weight->w, *m = a->magnitude->w;  // merge never touches a quantized base
#pragma omp parallel for if ((long)out * in > 65536)
    for (int o = 0; o < out; o++) {
        float g = m[o] / st->merge_norm[o];
        for (int i = 0; i < in; i++) {
            float w = W[lin->fan_in_fan_out ? (long)i * out + o : (long)o * in + i], *d = &delta[(long)o * in + i];
            *d = a->merged ? w - (w / g - *d) : g * (w + *d) - w;
        }
    }
}

// DoRA is LoRA's config class with use_dora: its keys are LoRA's.
const Method dora_method = {
    .id = METHOD_DORA,
    .name = "dora",
    .title = "DoRA",
    .peft_type = "LORA",  // LoRA's: PEFT writes DoRA as a LoRA with use_dora (layout: not a method)
    .default_r = 8,
    .default_lr = 2e-4f,
    .config_base = &lora_method,
    .variant_key = "use_dora",
    .gpu = AD_DORA,
    .n_tensors = 3,
    .tensors = {{"lora_A.weight", DIM_RANK, DIM_IN, false, offsetof(Adapter, A)},
                {"lora_B.weight", DIM_OUT, DIM_RANK, false, offsetof(Adapter, B)},
                {"lora_magnitude_vector", DIM_OUT, DIM_ONE, true, offsetof(Adapter, magnitude)}},
    .init = dora_init,
    .forward = dora_forward,
    .backward = dora_backward,
    .delta = dora_delta,
    .free_state = dora_free_state,
    .rows_by_forward = true,
};
