// adalora.c: AdaLoRA (Zhang et al. 2023) as HF PEFT 0.21 implements it (SVDLinear).
//   lora_A [r,in] and lora_B [out,r] ~ N(0, 0.02), lora_E [r,1] = 0;
//   y += (dropout(x) (A * E)^T) B^T * lora_alpha / (ranknum + 1e-5),
//   ranknum = init_r. An adapter loaded with a rank_pattern keeps only the kept ranks, but PEFT
//   (resize_modules_by_rank_pattern) copies the old ranknum back, so the scale stays alpha/init_r.
//   lora_alpha <= 0 means scaling = r (PEFT's update_layer).
//   Orthogonal regulariser (AdaLoraModel.forward): orth_reg_weight * mean over every lora_A and
//   lora_B (empty ones of rank-0 modules count, with norm 0) of ||P - I||_F, P = A A^T, B^T B.
//   PEFT only adds it when the adapter has a task_type: with "task_type": null, PeftModel.forward
//   calls the transformers model directly and AdaLoraModel.forward never runs (so the reference
//   cases, whose configs have task_type null, have loss == lm_loss and no regulariser gradient).
//   Files: PEFT keys "base_model.model.<module>.lora_A" / ".lora_E" / ".lora_B" (no ".weight");
//   with a rank_pattern, tensors are saved sliced to the kept ranks and the pattern is written
//   as {"<module>.lora_E": [bool x init_r]} (get_peft_model_state_dict).
// The rank allocator is in rank_allocator.c.
#include "adalora.h"
#include "adapter.h"
#include "kernels.h"
#include "safetensors.h"
#include "torch_rng.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

RankPatternEntry *adalora_pattern_entry(AdapterSet *set, const char *module) {
    for (int i = 0; i < set->cfg.n_rank_pattern; i++)
        if (!strcmp(set->cfg.rank_pattern[i].module, module)) return &set->cfg.rank_pattern[i];
    return NULL;
}

void adalora_kept_ranks(AdapterSet *set, int i, bool *kept) {
    Adapter *a = &set->adapters[i];
    const RankPatternEntry *e = adalora_pattern_entry(set, a->lin->module);
    const AdaLoraState *st = set->method_state;
    for (int j = 0; j < a->r; j++) kept[j] = !e || e->mask[st->mod[i].orig_idx[j]];
}

void adalora_free_scores(AdaLoraState *st) {
    for (int i = 0; i < st->n; i++)
        for (int t = 0; t < 3; t++) {
            free(st->mod[i].avg_ipt[t]);
            free(st->mod[i].avg_unc[t]);
            st->mod[i].avg_ipt[t] = st->mod[i].avg_unc[t] = NULL;
        }
}

static void adalora_free_state(AdapterSet *set) {
    AdaLoraState *st = set->method_state;
    if (!st) return;
    adalora_free_scores(st);
    for (int i = 0; i < st->n; i++) free(st->mod[i].orig_idx);
    free(st->mod);
    free(st);
    set->method_state = NULL;
}

int adalora_check_options(const AdapterConfig *c, bool need_total_step) {
    if (c->init_r <= 0) return peft_fail("AdaLoRA: init_r must be positive (got %d)", c->init_r);
    if (c->target_r < 0) return peft_fail("AdaLoRA: target_r must not be negative (got %d)", c->target_r);
    if (c->target_r > c->init_r) return peft_fail("AdaLoRA: target_r %d exceeds init_r %d", c->target_r, c->init_r);
    if (c->tinit < 0 || c->tfinal < 0) return peft_fail("AdaLoRA: tinit and tfinal must not be negative (got %d, %d)", c->tinit, c->tfinal);
    if (c->total_step < 0) return peft_fail("AdaLoRA: total_step must be positive (got %d)", c->total_step);
    if (c->total_step == 0) {
        if (need_total_step)
            return peft_fail("AdaLoRA: the rank allocator needs total_step (the number of training steps); none is set");
        return 0;
    }
    if (c->tinit >= c->total_step - c->tfinal)
        return peft_fail("AdaLoRA: the schedule leaves no budgeting phase: tinit (%d) must be below total_step - tfinal "
                         "(%d - %d = %d); decrease tinit/tfinal or increase total_step",
                         c->tinit, c->total_step, c->tfinal, c->total_step - c->tfinal);
    if (need_total_step) {
        if (c->deltaT < 1) return peft_fail("AdaLoRA: deltaT must be at least 1 (got %d)", c->deltaT);
        if (!(c->beta1 > 0 && c->beta1 < 1) || !(c->beta2 > 0 && c->beta2 < 1))
            return peft_fail("AdaLoRA: beta1 and beta2 must be in (0, 1) (got %g, %g)", c->beta1, c->beta2);
    }
    return 0;
}

static int adalora_prepare(AdapterSet *set) {
    if (adalora_check_options(&set->cfg, false)) return -1;
    if (set->cfg.dropout < 0 || set->cfg.dropout >= 1) return peft_fail("AdaLoRA: lora_dropout must be in [0, 1) (got %g)", set->cfg.dropout);
    for (int i = 0; i < set->cfg.n_rank_pattern; i++) {
        const RankPatternEntry *e = &set->cfg.rank_pattern[i];
        bool found = false;
        for (int k = 0; k < set->n && !found; k++) found = !strcmp(set->adapters[k].lin->module, e->module);
        if (!found) return peft_fail("AdaLoRA: rank_pattern names \"%s\", which is not an adapted module", e->module);
    }
    AdaLoraState *st = xcalloc(1, sizeof *st);
    st->n = set->n;
    st->mod = xcalloc(set->n, sizeof *st->mod);
    set->method_state = st;
    return 0;
}

static int adalora_init(AdapterSet *set, Adapter *a, uint64_t *rng) {
    const AdapterConfig *c = &set->cfg;
    AdaLoraState *st = set->method_state;
    int r = a->r, idx = (int)(a - set->adapters);
    if (r < 0 || r > c->init_r) return peft_fail("AdaLoRA: module %s has rank %d, outside 0..init_r (%d)", a->lin->module, r, c->init_r);
    // Which original ranks this module's ranks are: the kept ones of its rank_pattern, else all.
    int *orig = xcalloc(r ? r : 1, sizeof(int));
    const RankPatternEntry *e = adalora_pattern_entry(set, a->lin->module);
    for (int k = 0, j = 0; k < c->init_r && j < r; k++)
        if (!e || e->mask[k]) orig[j++] = k;
    st->mod[idx].orig_idx = orig;
    double ranknum = c->init_r;
    a->scaling = (float)((c->alpha > 0 ? c->alpha : (double)r) / (ranknum + 1e-5));
    // PEFT's reset_lora_parameters: E zeros, then A and B ~ N(0, 0.02) in that order.
    TorchGen g;
    torch_gen_seed(&g, (*rng)++);
    torch_normal_(&g, a->A->w, a->A->numel, 0.0, 0.02);
    torch_normal_(&g, a->B->w, a->B->numel, 0.0, 0.02);
    return 0;
}

// Keeps h = x A^T [N,r] (a->h) and he = h * E [N,r] (a->extra) for backward.
static void adalora_forward(Adapter *a, const float *x, float *y, int N, bool train) {
    int in = a->lin->in, out = a->lin->out, r = a->r;
    adapter_ensure_capacity(a, N, r);
    const float *xin = adapter_dropout_input(a, x, N, train);
    matmul(a->h, xin, a->A->w, N, r, in, false, true, 1.0f, 0.0f);  // h = x A^T
    const float *E = a->E->w;
    float *he = a->extra;
#pragma omp parallel for if ((long)N * r > 65536)
    for (int n = 0; n < N; n++)
        for (int k = 0; k < r; k++) he[(long)n * r + k] = a->h[(long)n * r + k] * E[k];
    matmul(y, he, a->B->w, N, out, r, false, true, a->scaling, 1.0f);  // y += s he B^T
}

static void adalora_backward(Adapter *a, const float *x, const float *dy, float *dx, int N) {
    int in = a->lin->in, out = a->lin->out, r = a->r;
    const float *E = a->E->w, *h = a->h, *he = a->extra;
    float *dh = xmalloc(sizeof(float) * (size_t)N * r);
    matmul(a->B->grad, dy, he, out, r, N, true, false, a->scaling, 1.0f);  // dB += s dy^T he  [out,r]
    matmul(dh, dy, a->B->w, N, r, out, false, false, a->scaling, 0.0f);    // dhe = s dy B     [N,r]
    double *gE = xcalloc(r, sizeof(double));
    for (int n = 0; n < N; n++)
        for (int k = 0; k < r; k++) gE[k] += (double)dh[(long)n * r + k] * h[(long)n * r + k];
    for (int k = 0; k < r; k++) a->E->grad[k] += (float)gE[k];
    free(gE);
#pragma omp parallel for if ((long)N * r > 65536)
    for (int n = 0; n < N; n++)
        for (int k = 0; k < r; k++) dh[(long)n * r + k] *= E[k];          // dh = dhe * E
    matmul(a->A->grad, dh, x, r, in, N, true, false, 1.0f, 1.0f);         // dA += dh^T x     [r,in]
    if (dx) matmul(dx, dh, a->A->w, N, in, r, false, false, 1.0f, 1.0f);  // dx += dh A       [N,in]
    free(dh);
}

// delta[out,in] = s B (A * E), PEFT's get_delta_weight (before the fan_in_fan_out transpose).
static void adalora_delta(const Adapter *a, float *delta) {
    int in = a->lin->in, out = a->lin->out, r = a->r;
    if (r == 0) { memset(delta, 0, sizeof(float) * (size_t)out * in); return; }
    float *AE = xmalloc(sizeof(float) * (size_t)r * in);
    for (int k = 0; k < r; k++)
        for (int i = 0; i < in; i++) AE[(long)k * in + i] = a->A->w[(long)k * in + i] * a->E->w[k];
    matmul(delta, a->B->w, AE, out, in, r, false, false, a->scaling, 0.0f);
    free(AE);
}

// s B (A * E) with E's factors in B's columns; ranks whose E is 0 (pruned) add nothing and are left out.
static void adalora_lowrank(const Adapter *a, float **A, float **B, int *r, float *scale) {
    int in = a->lin->in, out = a->lin->out, kept = 0;
    const float *E = a->E->w;
    for (int k = 0; k < a->r; k++) kept += E[k] != 0;
    *r = kept;
    *scale = a->scaling;
    *A = kept ? xmalloc(sizeof(float) * (size_t)kept * in) : NULL;
    *B = kept ? xmalloc(sizeof(float) * (size_t)out * kept) : NULL;
    for (int k = 0, j = 0; k < a->r; k++) {
        if (E[k] == 0) continue;
        memcpy(*A + (size_t)j * in, a->A->w + (size_t)k * in, sizeof(float) * in);
        for (int o = 0; o < out; o++) (*B)[(size_t)o * kept + j] = a->B->w[(size_t)o * a->r + k] * E[k];
        j++;
    }
}

// ||P - I||_F for P = M M^T (rows: A [r,in]) or M^T M (cols: B [out,r]); with grad, adds
// coef * d/dM = coef * 2 (P - I) M  (resp. 2 M (P - I)) / ||P - I|| to g.
static double orth_term(const float *M, float *g, int r, int other, bool is_A, double coef) {
    if (r == 0) return 0;
    float *D = xmalloc(sizeof(float) * (size_t)r * r);
    if (is_A) matmul(D, M, M, r, r, other, false, true, 1.0f, 0.0f);  // A A^T
    else matmul(D, M, M, r, r, other, true, false, 1.0f, 0.0f);       // B^T B
    double ss = 0;
    for (int i = 0; i < r; i++) {
        D[(long)i * r + i] -= 1.0f;
        for (int j = 0; j < r; j++) ss += (double)D[(long)i * r + j] * D[(long)i * r + j];
    }
    double f = sqrt(ss);
    // torch's norm backward gives 0 at a zero norm.
    if (g && f > 0) {
        float k = (float)(2.0 * coef / f);
        if (is_A) matmul(g, D, M, r, other, r, false, false, k, 1.0f);  // dA += k D A   [r,in]
        else matmul(g, M, D, other, r, r, false, false, k, 1.0f);       // dB += k B D   [out,r]
    }
    free(D);
    return f;
}

// The loaded adapter_config.json may say "task_type": null. PEFT then wraps the model in a plain
// PeftModel whose forward calls the transformers model directly, skipping AdaLoraModel.forward and
// with it the regulariser (the reference cases are such adapters: their loss equals lm_loss).
// Adapters we create are CAUSAL_LM (PeftModelForCausalLM): regulariser on.
static double adalora_regularizer(AdapterSet *set, bool want_grad) {
    double w = set->cfg.orth_reg_weight;
    if (w == 0 || set->n == 0 || !set->cfg.task_type[0]) return 0;
    int num = 2 * set->n;  // every lora_A and lora_B, empty ones included (PEFT counts them)
    double coef = w / num, sum = 0;
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        sum += orth_term(a->A->w, want_grad ? a->A->grad : NULL, a->r, a->lin->in, true, coef);
        sum += orth_term(a->B->w, want_grad ? a->B->grad : NULL, a->r, a->lin->out, false, coef);
    }
    return w * sum / num;
}

// PEFT's get_peft_model_state_dict for AdaLoRA: tensors sliced to the kept ranks of the rank
// pattern (when they are not sliced already) and the pattern in the config, keyed "<module>.lora_E".
static int adalora_save(AdapterSet *set, void *writer, void *config_json) {
    StWriter *w = writer;
    cJSON *j = config_json;
    const AdapterConfig *c = &set->cfg;
    cJSON_DeleteItemFromObjectCaseSensitive(j, "rank_pattern");
    if (c->n_rank_pattern) {
        cJSON *rp = cJSON_CreateObject();
        for (int i = 0; i < c->n_rank_pattern; i++) {
            cJSON *list = cJSON_CreateArray();
            for (int k = 0; k < c->init_r; k++) cJSON_AddItemToArray(list, cJSON_CreateBool(c->rank_pattern[i].mask[k]));
            char *key = xasprintf("%s.lora_E", c->rank_pattern[i].module);
            cJSON_AddItemToObject(rp, key, list);
            free(key);
        }
        cJSON_AddItemToObject(j, "rank_pattern", rp);
    } else cJSON_AddNullToObject(j, "rank_pattern");
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        int r = a->r, in = a->lin->in, out = a->lin->out, nk = 0;
        bool *kept = xcalloc(r ? r : 1, sizeof(bool));
        adalora_kept_ranks(set, i, kept);
        for (int k = 0; k < r; k++) nk += kept[k];
        if (nk == r) {
            st_writer_add_f32(w, a->A->name, 2, a->A->shape, a->A->w);
            st_writer_add_f32(w, a->B->name, 2, a->B->shape, a->B->w);
            st_writer_add_f32(w, a->E->name, 2, a->E->shape, a->E->w);
            free(kept);
            continue;
        }
        float *A = xmalloc(sizeof(float) * ((size_t)nk * in + 1)), *B = xmalloc(sizeof(float) * ((size_t)out * nk + 1)),
              *E = xmalloc(sizeof(float) * ((size_t)nk + 1));
        for (int k = 0, s = 0; k < r; k++) {
            if (!kept[k]) continue;
            memcpy(A + (long)s * in, a->A->w + (long)k * in, sizeof(float) * in);
            E[s] = a->E->w[k];
            for (int o = 0; o < out; o++) B[(long)o * nk + s] = a->B->w[(long)o * r + k];
            s++;
        }
        int64_t sa[2] = {nk, in}, sb[2] = {out, nk}, se[2] = {nk, 1};
        st_writer_add_f32(w, a->A->name, 2, sa, A);
        st_writer_add_f32(w, a->B->name, 2, sb, B);
        st_writer_add_f32(w, a->E->name, 2, se, E);
        free(A);
        free(B);
        free(E);
        free(kept);
    }
    return 0;
}

// AdaLoraConfig's keys beyond (or unlike) LoraConfig's, which it extends.
static const ConfigKey ADALORA_KEYS[] = {
    {"r", KEY_INERT, NULL, NULL},  // AdaLoRA's rank is init_r; PEFT ignores r too
    {"use_rslora", KEY_DEFAULT, NULL, "PEFT's AdaLoRA ignores it"},
    {"use_dora", KEY_DEFAULT, NULL, "AdaLoRA does not support DoRA: PEFT's AdaLoraConfig refuses it"},
    // AdaLoraLayer.reset_lora_parameters: any true value gives its own init (E zeros, A and B normal).
    {"init_lora_weights", KEY_INERT, "[true, false, \"gaussian\"]", "not an AdaLoRA initialisation"},
    {"rank_pattern", KEY_USED, NULL, NULL},
    {"alpha_pattern", KEY_DEFAULT, NULL, "per-module lora_alpha (PEFT's AdaLoRA does not read it)"},
    {"bias", KEY_DEFAULT, "[\"none\"]", "it trains and saves the base model's biases (implemented for LoRA)"},
    {"init_r", KEY_USED, NULL, NULL},
    {"target_r", KEY_USED, NULL, NULL},
    {"tinit", KEY_USED, NULL, NULL},
    {"tfinal", KEY_USED, NULL, NULL},
    {"deltaT", KEY_USED, NULL, NULL},
    {"beta1", KEY_USED, NULL, NULL},
    {"beta2", KEY_USED, NULL, NULL},
    {"orth_reg_weight", KEY_USED, NULL, NULL},
    {"total_step", KEY_USED, NULL, NULL},
};

// The paper's learning rate, 5e-4.
const Method adalora_method = {
    .id = METHOD_ADALORA,
    .name = "adalora",
    .title = "AdaLoRA",
    .peft_type = "ADALORA",
    .default_r = 8,
    .default_lr = 5e-4f,
    .config_base = &lora_method,
    .n_keys = sizeof ADALORA_KEYS / sizeof *ADALORA_KEYS,
    .keys = ADALORA_KEYS,
    .gpu = AD_ADALORA,
    .n_tensors = 3,
    .tensors = {{"lora_A", DIM_RANK, DIM_IN, false, offsetof(Adapter, A)},
                {"lora_B", DIM_OUT, DIM_RANK, false, offsetof(Adapter, B)},
                {"lora_E", DIM_RANK, DIM_ONE, false, offsetof(Adapter, E)}},
    .prepare = adalora_prepare,
    .init = adalora_init,
    .forward = adalora_forward,
    .backward = adalora_backward,
    .delta = adalora_delta,
    .lowrank = adalora_lowrank,
    .regularizer = adalora_regularizer,
    .save = adalora_save,
    .free_state = adalora_free_state,
    .after_step = adalora_update_and_allocate,
    .after_step_gpu = adalora_update_and_allocate_gpu,
    .sync_state_gpu = adalora_copy_scores_gpu,
    .save_state = adalora_save_state,
    .load_state = adalora_load_state,
};
