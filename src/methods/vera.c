// vera.c: VeRA (Kopiczko et al. 2024) as HF PEFT 0.21 implements it.
//   One pair of frozen random projections shared by every adapted module:
//     vera_A [r, max_in], vera_B [max_out, r]   (max over the adapted modules' in/out features),
//   drawn by torch's CPU generator seeded with projection_prng_key (kaiming-uniform, gain sqrt 2).
//   Each module uses the slices A_sl = A[:, :in] and B_sl = B[:out, :] and trains two vectors:
//     y += lambda_b * ((lambda_d * (dropout(x) A_sl^T)) B_sl^T),   lambda_b [out] = 0, lambda_d [r] = d_initial.
//   No alpha, no scaling. The merged delta is diag(lambda_b) B_sl diag(lambda_d) A_sl.
//
// Files: PEFT keys "base_model.model.<module>.vera_lambda_b" / ".vera_lambda_d" (no ".weight"), plus
// "base_model.vera_A" / "base_model.vera_B" only when save_projection is true. When it is false
// PEFT keeps the projections as non-persistent buffers and regenerates them from the key; our
// generator is bit-exact with torch's, so that is lossless here too.
#include "adapter.h"
#include "kernels.h"
#include "safetensors.h"
#include "torch_rng.h"
#include "util.h"
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const KEY_A = "base_model.vera_A", *const KEY_B = "base_model.vera_B";

// PEFT's _find_dim: the largest in and out features over the adapted modules.
static int vera_prepare(AdapterSet *set) {
    const AdapterConfig *c = &set->cfg;
    if (c->r <= 0) return peft_fail("VeRA: r must be positive (got %d)", c->r);
    if (!isfinite(c->d_initial)) return peft_fail("VeRA: d_initial must be finite (got %g)", c->d_initial);
    if (c->dropout < 0 || c->dropout >= 1) return peft_fail("VeRA: vera_dropout must be in [0, 1) (got %g)", c->dropout);
    int max_in = 0, max_out = 0;
    for (int i = 0; i < set->n; i++) {
        const Linear *lin = set->adapters[i].lin;
        if (lin->in > max_in) max_in = lin->in;
        if (lin->out > max_out) max_out = lin->out;
    }
    if (max_in <= 0 || max_out <= 0) return peft_fail("VeRA: no adapted module with positive in/out features");
    set->vera_max_in = max_in;
    set->vera_max_out = max_out;
    free(set->vera_A);
    free(set->vera_B);
    set->vera_A = try_calloc((size_t)c->r * max_in, sizeof(float), "VeRA's projection vera_A");
    set->vera_B = set->vera_A ? try_calloc((size_t)max_out * c->r, sizeof(float), "VeRA's projection vera_B") : NULL;
    if (!set->vera_B) return -1;
    vera_projections(c->prng_key, c->r, max_in, max_out, set->vera_A, set->vera_B);
    return 0;
}

// PEFT's VeraLayer.update_layer + reset_vera_parameters: lambda_b zeros, lambda_d = d_initial.
static int vera_init(AdapterSet *set, Adapter *a, uint64_t *rng) {
    (void)rng;  // VeRA's init is deterministic: the randomness is all in the shared projections
    int out = a->lin->out, r = a->r;
    if (a->lin->in > set->vera_max_in || out > set->vera_max_out)
        return peft_fail("VeRA: module %s [%d -> %d] is larger than the shared projections [%d -> %d]", a->lin->module,
                         a->lin->in, out, set->vera_max_in, set->vera_max_out);
    a->scaling = 1.0f;
    for (int k = 0; k < r; k++) a->lambda_d->w[k] = set->cfg.d_initial;
    return 0;
}

// Bs[o,k] = lambda_b[o] * B[o,k] (* lambda_d[k] when with_d): the module's B slice with its scales folded in.
static float *scaled_B(const Adapter *a, bool with_d) {
    int out = a->lin->out, r = a->r;
    const float *B = a->set->vera_B, *lb = a->lambda_b->w, *ld = a->lambda_d->w;
    float *Bs = xmalloc(sizeof(float) * (size_t)out * r);
    for (int o = 0; o < out; o++)
        for (int k = 0; k < r; k++) Bs[(long)o * r + k] = lb[o] * B[(long)o * r + k] * (with_d ? ld[k] : 1.0f);
    return Bs;
}

// A module's diag(lambda_b) B_sl, kept between calls (a->state): rebuilding it on every call cost live
// generation a third of its time per token. It is rebuilt when lambda_b or the projections changed (an
// optimizer step, a load, a caller writing the tensors), which the copy of lambda_b it was made from and
// the projections' fingerprint tell; comparing them reads [out] floats, the rebuild [out, r].
typedef struct {
    float *Bs;         // [out, r]
    float *lambda_b;   // [out]: the lambda_b Bs was made from
    uint64_t fingerprint;
} VeraState;

static const float *lambda_b_scaled_B(Adapter *a) {
    int out = a->lin->out;
    VeraState *st = a->state;
    size_t lb_bytes = sizeof(float) * out;
    if (st && st->fingerprint == a->set->vera_fingerprint && !memcmp(st->lambda_b, a->lambda_b->w, lb_bytes)) return st->Bs;
    if (!st) {
        st = a->state = xcalloc(1, sizeof *st);
        st->lambda_b = xmalloc(lb_bytes);
    } else free(st->Bs);
    st->Bs = scaled_B(a, false);
    memcpy(st->lambda_b, a->lambda_b->w, lb_bytes);
    st->fingerprint = a->set->vera_fingerprint;
    return st->Bs;
}

static void vera_free_state(AdapterSet *set) {
    for (int i = 0; i < set->n; i++) {
        VeraState *st = set->adapters[i].state;
        if (!st) continue;
        free(st->Bs);
        free(st->lambda_b);
        free(st);
        set->adapters[i].state = NULL;
    }
}

// Keeps h = x A_sl^T [N,r] (a->h) and hd = lambda_d * h [N,r] (a->extra) for backward; both are
// only N*r. The un-scaled output u = hd B_sl^T [N,out] is never stored: the one place backward
// needs it, d lambda_b[o] = sum_n dy[n,o] u[n,o], equals sum_k B[o,k] (dy^T hd)[o,k], an [out,r]
// product. Keeping u would cost N*out floats per adapted module (every linear with all-linear
// targets, i.e. about as much as the base activations); the [out,r] route costs one N*out*r GEMM,
// the same as the adapter's own forward, small next to the base layer's N*in*out.
static void vera_forward(Adapter *a, const float *x, float *y, int N, bool train) {
    const AdapterSet *set = a->set;
    int in = a->lin->in, out = a->lin->out, r = a->r;
    adapter_ensure_capacity(a, N, r);
    const float *xin = adapter_dropout_input(a, x, N, train);
    matmul_ld(a->h, r, xin, in, set->vera_A, set->vera_max_in, N, r, in, false, true, 1.0f, 0.0f);  // h = x A_sl^T
    const float *ld = a->lambda_d->w;
    float *hd = a->extra;
#pragma omp parallel for if ((long)N * r > 65536)
    for (int n = 0; n < N; n++)
        for (int k = 0; k < r; k++) hd[(long)n * r + k] = a->h[(long)n * r + k] * ld[k];
    // y += lambda_b * (hd B_sl^T) = hd (diag(lambda_b) B_sl)^T
    matmul(y, hd, lambda_b_scaled_B(a), N, out, r, false, true, 1.0f, 1.0f);
}

static void vera_backward(Adapter *a, const float *x, const float *dy, float *dx, int N) {
    (void)x;  // everything needed from x is in h
    const AdapterSet *set = a->set;
    int in = a->lin->in, out = a->lin->out, r = a->r;
    const float *B = set->vera_B, *ld = a->lambda_d->w, *h = a->h, *hd = a->extra;
    // d lambda_b[o] += sum_k B[o,k] G[o,k], G = dy^T hd  [out,r]
    float *G = xmalloc(sizeof(float) * (size_t)out * r);
    matmul(G, dy, hd, out, r, N, true, false, 1.0f, 0.0f);
    float *glb = a->lambda_b->grad;
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int k = 0; k < r; k++) s += (double)G[(long)o * r + k] * B[(long)o * r + k];
        glb[o] += (float)s;
    }
    free(G);
    // dhd = (dy * lambda_b) B_sl = dy (diag(lambda_b) B_sl)  [N,r]
    float *dh = xmalloc(sizeof(float) * (size_t)N * r);
    matmul(dh, dy, lambda_b_scaled_B(a), N, r, out, false, false, 1.0f, 0.0f);
    // d lambda_d[k] += sum_n dhd[n,k] h[n,k]; then dh = dhd * lambda_d
    double *gld = xcalloc(r, sizeof(double));
    for (int n = 0; n < N; n++)
        for (int k = 0; k < r; k++) gld[k] += (double)dh[(long)n * r + k] * h[(long)n * r + k];
    for (int k = 0; k < r; k++) a->lambda_d->grad[k] += (float)gld[k];
    free(gld);
    if (dx) {
#pragma omp parallel for if ((long)N * r > 65536)
        for (int n = 0; n < N; n++)
            for (int k = 0; k < r; k++) dh[(long)n * r + k] *= ld[k];
        matmul_ld(dx, in, dh, r, set->vera_A, set->vera_max_in, N, in, r, false, false, 1.0f, 1.0f);  // dx += dh A_sl
    }
    free(dh);
}

// delta[out,in] = (lambda_b * B_sl) @ (lambda_d * A_sl), PEFT's get_delta_weight.
static void vera_delta(const Adapter *a, float *delta) {
    const AdapterSet *set = a->set;
    float *Bs = scaled_B(a, true);
    matmul_ld(delta, a->lin->in, Bs, a->r, set->vera_A, set->vera_max_in, a->lin->out, a->lin->in, a->r, false, false, 1.0f, 0.0f);
    free(Bs);
}

// diag(lambda_b) B_sl diag(lambda_d) times A_sl: VeRA is a LoRA of rank r whose A is the shared slice.
static void vera_lowrank(const Adapter *a, float **A, float **B, int *r, float *scale) {
    int in = a->lin->in;
    *r = a->r;
    *scale = 1.0f;
    *A = xmalloc(sizeof(float) * (size_t)a->r * in);
    for (int k = 0; k < a->r; k++) memcpy(*A + (size_t)k * in, a->set->vera_A + (size_t)k * a->set->vera_max_in, sizeof(float) * in);
    *B = scaled_B(a, true);
}

static int vera_save(AdapterSet *set, void *writer, void *config_json) {
    (void)config_json;  // adapter_config_to_json_object already writes save_projection and the key
    StWriter *w = writer;
    for (int i = 0; i < set->n; i++) {  // the modules' tensors (adapters_save adds modules_to_save's)
        const Adapter *a = &set->adapters[i];
        for (int k = 0; k < a->method->n_tensors; k++) {
            const Param *p = *(Param *const *)((const char *)a + a->method->tensors[k].field);
            st_writer_add_f32(w, p->name, p->ndim, p->shape, p->w);
        }
    }
    if (set->cfg.save_projection) {
        int64_t sa[2] = {set->cfg.r, set->vera_max_in}, sb[2] = {set->vera_max_out, set->cfg.r};
        st_writer_add_f32(w, KEY_A, 2, sa, set->vera_A);
        st_writer_add_f32(w, KEY_B, 2, sb, set->vera_B);
    }
    return 0;
}

static int load_projection(const SafeTensors *st, const char *path, const char *key, int rows, int cols, float *dst) {
    const StTensor *t = st_find(st, key);
    if (!t) return peft_fail("%s: save_projection is true but the file has no %s (PEFT refuses such a file too)", path, key);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        char got[160];
        return peft_fail("%s: tensor %s has shape [%s] but r and the adapted modules need [%d, %d]", path, key,
                         st_shape_text(t->ndim, t->shape, got, sizeof got), rows, cols);
    }
    return st_to_f32_finite(t, dst, path);  // on failure the set is freed: nothing half-loaded stays
}

// PEFT (set_peft_model_state_dict): with save_projection the stored projections are required and
// loaded over the generated ones (they are persistent buffers); without it the projections come
// from projection_prng_key alone (PEFT ignores stored copies; adapter.c refuses them as unused).
// Our generator reproduces torch's bits, so for files PEFT wrote the two agree exactly (tested).
static int vera_after_load(AdapterSet *set, const void *file, const char *path) {
    const SafeTensors *st = file;
    if (!set->cfg.save_projection) return 0;
    int r = set->cfg.r;
    if (load_projection(st, path, KEY_A, r, set->vera_max_in, set->vera_A)) return -1;
    return load_projection(st, path, KEY_B, set->vera_max_out, r, set->vera_B);
}

// The stored projections are the file's only tensors that are no module's, and only with
// save_projection (without it PEFT ignores them: refused here instead, as any unused tensor).
static bool vera_owns_tensor(const AdapterSet *set, const char *name) {
    return set->cfg.save_projection && (!strcmp(name, KEY_A) || !strcmp(name, KEY_B));
}

static const ConfigKey VERA_KEYS[] = {
    {"r", KEY_USED, NULL, NULL},
    {"vera_dropout", KEY_USED, NULL, NULL},
    {"d_initial", KEY_USED, NULL, NULL},
    {"projection_prng_key", KEY_USED, NULL, NULL},
    {"save_projection", KEY_USED, NULL, NULL},
    {"init_weights", KEY_INERT, "[true, false]", "not a VeRA initialisation"},
};

// The trainable vectors need a much larger learning rate than LoRA (the paper uses 1e-2 and up).
const Method vera_method = {
    .id = METHOD_VERA,
    .name = "vera",
    .title = "VeRA",
    .peft_type = "VERA",
    .default_r = 256,
    .default_lr = 1e-2f,
    .n_keys = sizeof VERA_KEYS / sizeof *VERA_KEYS,
    .keys = VERA_KEYS,
    .gpu = AD_VERA,
    .n_tensors = 2,  // registered b before d, as in PEFT's state dict
    .tensors = {{"vera_lambda_b", DIM_OUT, DIM_ONE, true, offsetof(Adapter, lambda_b)},
                {"vera_lambda_d", DIM_RANK, DIM_ONE, true, offsetof(Adapter, lambda_d)}},
    .prepare = vera_prepare,
    .init = vera_init,
    .forward = vera_forward,
    .backward = vera_backward,
    .delta = vera_delta,
    .lowrank = vera_lowrank,
    .save = vera_save,
    .after_load = vera_after_load,
    .owns_tensor = vera_owns_tensor,
    .free_state = vera_free_state,
};
