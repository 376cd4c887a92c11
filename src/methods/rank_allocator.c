// rank_allocator.c: AdaLoRA's rank allocator, step for step as HF PEFT 0.21's RankAllocator
// (tuners/adalora/layer.py) driven by AdaLoraModel.update_and_allocate (tuners/adalora/model.py):
//   sensitivity   ipt = |p * grad|                  for every entry of A, E and B
//   smoothing     avg_ipt = beta1 avg_ipt + (1 - beta1) ipt
//   uncertainty   avg_unc = beta2 avg_unc + (1 - beta2) |ipt - avg_ipt|
//   score         s = avg_ipt * avg_unc; triplet i: s(E_i) + mean_j s(A_ij) + mean_o s(B_oi)
//   budget        init_bgt (= sum of ranks) up to tinit, target_r * modules after total - tfinal,
//                 a cubic decay between; masks every deltaT steps (step % deltaT == 0)
//   mask          E_i = 0 for triplets whose score <= the (init_bgt - budget)-th smallest score.
// Scores are kept in double (the reference ran in float64).
// Also the gpt2-adalora-schedule reference check (several real training steps).
#include "adalora.h"
#include "adapter.h"
#include "check.h"
#include "cuda/gpu.h"
#include "optim.h"
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int adalora_budget_schedule(int init_bgt, int target_bgt, int tinit, int tfinal, int total_step, int deltaT, int step,
                            bool *mask_ind) {
    if (step <= tinit) { *mask_ind = false; return init_bgt; }  // initial warm-up
    if (step > total_step - tfinal) { *mask_ind = true; return target_bgt; }  // final fine-tuning
    // Python: mul_coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)   (float division)
    //         budget = int((init_bgt - target_bgt) * (mul_coeff ** 3) + target_bgt)
    double mul = 1.0 - (double)(step - tinit) / (double)(total_step - tfinal - tinit);
    double b = (double)(init_bgt - target_bgt) * pow(mul, 3.0) + (double)target_bgt;
    *mask_ind = deltaT > 0 && step % deltaT == 0;
    return (int)b;  // int() truncates toward zero, as C's conversion
}

void adalora_budget_bounds(const AdapterSet *set, int *init_bgt, int *target_bgt) {
    *init_bgt = 0;
    for (int i = 0; i < set->n; i++) *init_bgt += set->adapters[i].r;
    *target_bgt = set->cfg.target_r * set->n;
}

static Param *module_param(Adapter *a, int t) { return t == 0 ? a->A : t == 1 ? a->E : a->B; }

// Where the running scores live and E is masked: the host's (the CPU trainer: AdaLoraState's arrays,
// the Params' values) or the device's (the CUDA trainer: gpu_adalora_*, the masters there). Triplets
// are numbered over the modules in order, the ranks of each in order.
typedef struct {
    int (*update)(AdapterSet *set, void *dev);                       // PEFT's update_ipt
    int (*triplet_scores)(AdapterSet *set, void *dev, double *score);
    int (*zero_ranks)(AdapterSet *set, void *dev, const bool *kept);  // E_j = 0 where !kept
    bool (*has_scores)(AdapterSet *set, void *dev);
    void (*reset)(AdapterSet *set, void *dev);                       // PEFT's reset_ipt
} ScoreStore;

// ---- the host's scores ----

static int host_update(AdapterSet *set, void *dev) {
    (void)dev;
    AdaLoraState *st = set->method_state;
    double b1 = set->cfg.beta1, b2 = set->cfg.beta2;
    for (int i = 0; i < set->n; i++)
        for (int t = 0; t < 3; t++) {
            Param *p = module_param(&set->adapters[i], t);
            AdaLoraModuleState *ms = &st->mod[i];
            if (!ms->avg_ipt[t]) {
                ms->avg_ipt[t] = xcalloc(p->numel ? p->numel : 1, sizeof(double));
                ms->avg_unc[t] = xcalloc(p->numel ? p->numel : 1, sizeof(double));
            }
            double *ai = ms->avg_ipt[t], *au = ms->avg_unc[t];
            for (long k = 0; k < p->numel; k++) {
                double ipt = fabs((double)p->w[k] * p->grad[k]);
                ai[k] = b1 * ai[k] + (1 - b1) * ipt;
                au[k] = b2 * au[k] + (1 - b2) * fabs(ipt - ai[k]);
            }
        }
    return 0;
}

static int host_triplet_scores(AdapterSet *set, void *dev, double *score) {
    (void)dev;
    const AdaLoraState *st = set->method_state;
    for (int i = 0, off = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        int r = a->r, in = a->lin->in, out = a->lin->out;
        const AdaLoraModuleState *ms = &st->mod[i];
        for (int j = 0; j < r; j++) {
            double sA = 0, sB = 0, sE = 0;
            if (ms->avg_ipt[0]) {
                for (int k = 0; k < in; k++) sA += ms->avg_ipt[0][(long)j * in + k] * ms->avg_unc[0][(long)j * in + k];
                for (int o = 0; o < out; o++) sB += ms->avg_ipt[2][(long)o * r + j] * ms->avg_unc[2][(long)o * r + j];
                sE = ms->avg_ipt[1][j] * ms->avg_unc[1][j];
            }
            score[off + j] = sE + (sA / in + sB / out);
        }
        off += r;
    }
    return 0;
}

static int host_zero_ranks(AdapterSet *set, void *dev, const bool *kept) {
    (void)dev;
    for (int i = 0, off = 0; i < set->n; off += set->adapters[i].r, i++)
        for (int j = 0; j < set->adapters[i].r; j++)
            if (!kept[off + j]) set->adapters[i].E->w[j] = 0.0f;
    return 0;
}

static bool host_has_scores(AdapterSet *set, void *dev) {
    (void)dev;
    const AdaLoraState *st = set->method_state;
    return !set->n || st->mod[0].avg_ipt[0];
}

static void host_reset(AdapterSet *set, void *dev) {
    (void)dev;
    adalora_free_scores(set->method_state);
}

static const ScoreStore HOST = {host_update, host_triplet_scores, host_zero_ranks, host_has_scores, host_reset};

// ---- the device's scores ----

static GpuAdaModule *device_modules(AdapterSet *set) {
    GpuAdaModule *mods = xcalloc(set->n ? set->n : 1, sizeof *mods);
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        mods[i] = (GpuAdaModule){a->A, a->E, a->B, a->r, a->lin->in, a->lin->out};
    }
    return mods;
}

static int device_update(AdapterSet *set, void *dev) { return gpu_adalora_update_scores(dev, set->cfg.beta1, set->cfg.beta2); }

static int device_triplet_scores(AdapterSet *set, void *dev, double *score) {
    GpuAdaModule *mods = device_modules(set);
    int rc = gpu_adalora_triplet_scores(dev, mods, set->n, score);
    free(mods);
    return rc;
}

static int device_zero_ranks(AdapterSet *set, void *dev, const bool *kept) {
    GpuAdaModule *mods = device_modules(set);
    int rc = gpu_adalora_zero_ranks(dev, mods, set->n, kept);
    free(mods);
    return rc;
}

static bool device_has_scores(AdapterSet *set, void *dev) { return !set->n || gpu_adalora_has_scores(dev); }
static void device_reset(AdapterSet *set, void *dev) { (void)set; gpu_adalora_reset_scores(dev); }

static const ScoreStore DEVICE = {device_update, device_triplet_scores, device_zero_ranks, device_has_scores, device_reset};

// ---- the allocator ----

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

// Store kept[] of adapter i (over its current ranks) as its rank_pattern entry (over init_r).
static void set_pattern(AdapterSet *set, int i, const bool *kept) {
    AdapterConfig *c = &set->cfg;
    Adapter *a = &set->adapters[i];
    const AdaLoraState *st = set->method_state;
    RankPatternEntry *e = adalora_pattern_entry(set, a->lin->module);
    if (!e) {
        c->rank_pattern = xrealloc(c->rank_pattern, sizeof(RankPatternEntry) * (c->n_rank_pattern + 1));
        e = &c->rank_pattern[c->n_rank_pattern++];
        memset(e, 0, sizeof *e);
        snprintf(e->module, sizeof e->module, "%s", a->lin->module);
        e->mask = xcalloc(c->init_r ? c->init_r : 1, sizeof(bool));
    }
    memset(e->mask, 0, sizeof(bool) * c->init_r);
    e->rank = 0;
    for (int j = 0; j < a->r; j++)
        if (kept[j]) { e->mask[st->mod[i].orig_idx[j]] = true; e->rank++; }
}

static int total_ranks(const AdapterSet *set) {
    int total = 0;
    for (int i = 0; i < set->n; i++) total += set->adapters[i].r;
    return total;
}

// PEFT's mask_to_budget: E_i = 0 where the triplet score <= the k-th smallest, k = init_bgt - budget.
static int mask_to_budget(AdapterSet *set, AdaLoraState *st, int budget, const ScoreStore *ss, void *dev) {
    int total = total_ranks(set), rc = -1;
    double *score = xcalloc(total ? total : 1, sizeof(double)), *sorted = xcalloc(total ? total : 1, sizeof(double));
    bool *kept = xcalloc(total ? total : 1, sizeof(bool));
    if (ss->triplet_scores(set, dev, score)) goto out;
    memcpy(sorted, score, sizeof(double) * total);
    qsort(sorted, total, sizeof(double), cmp_double);
    int k = st->init_bgt - budget;
    if (k > total) k = total;
    // torch.kthvalue needs k >= 1; a budget at or above init_bgt masks nothing here.
    double threshold = k >= 1 ? sorted[k - 1] : -INFINITY;
    for (int t = 0; t < total; t++) kept[t] = !(score[t] <= threshold);
    for (int i = 0, off = 0; i < set->n; off += set->adapters[i].r, i++) set_pattern(set, i, kept + off);
    rc = ss->zero_ranks(set, dev, kept);
out:
    free(score);
    free(sorted);
    free(kept);
    return rc;
}

// PEFT's mask_using_rank_pattern with the adapter's current rank pattern.
static int mask_using_pattern(AdapterSet *set, const ScoreStore *ss, void *dev) {
    if (set->cfg.n_rank_pattern == 0)
        return peft_fail("AdaLoRA: no rank pattern to apply after step total_step - tfinal (%d): the final allocation at that "
                         "step has not run", set->cfg.total_step - set->cfg.tfinal);
    int total = total_ranks(set);
    bool *kept = xcalloc(total ? total : 1, sizeof(bool));
    for (int i = 0, off = 0; i < set->n; off += set->adapters[i].r, i++) {
        if (!adalora_pattern_entry(set, set->adapters[i].lin->module)) {
            free(kept);
            return peft_fail("AdaLoRA: the rank pattern has no entry for module %s", set->adapters[i].lin->module);
        }
        adalora_kept_ranks(set, i, kept + off);
    }
    int rc = ss->zero_ranks(set, dev, kept);
    free(kept);
    return rc;
}

static int update_and_allocate(Model *m, int step, int *mask_applied, const ScoreStore *ss, void *dev) {
    *mask_applied = 0;
    AdapterSet *set = m->adapters;
    if (!set || set->cfg.type != METHOD_ADALORA || !set->method_state) return peft_fail("AdaLoRA rank allocation: the model has no AdaLoRA adapter");
    if (adalora_check_options(&set->cfg, true)) return -1;
    if (step < 0) return peft_fail("AdaLoRA rank allocation: negative step %d", step);
    AdaLoraState *st = set->method_state;
    const AdapterConfig *c = &set->cfg;
    if (!st->allocator_ready) {
        adalora_budget_bounds(set, &st->init_bgt, &st->target_bgt);
        st->allocator_ready = true;
    }
    bool mask_ind;
    int budget = adalora_budget_schedule(st->init_bgt, st->target_bgt, c->tinit, c->tfinal, c->total_step, c->deltaT, step, &mask_ind);
    int final_step = c->total_step - c->tfinal;
    if (step < final_step) {
        if (ss->update(set, dev) || (mask_ind && mask_to_budget(set, st, budget, ss, dev))) return -1;
    } else if (step == final_step) {
        // PEFT would fail on the missing scores (KeyError); all-zero scores would mask everything.
        if (!ss->has_scores(set, dev))
            return peft_fail("AdaLoRA: no sensitivity scores for the final allocation at step %d: update_and_allocate "
                             "must run every step from the start of training", step);
        if (mask_to_budget(set, st, budget, ss, dev)) return -1;  // force_mask: the final pattern
        ss->reset(set, dev);
    } else if (mask_using_pattern(set, ss, dev)) return -1;
    *mask_applied = mask_ind;
    return budget;
}

int adalora_update_and_allocate(Model *m, int step, int *mask_applied) { return update_and_allocate(m, step, mask_applied, &HOST, NULL); }

int adalora_update_and_allocate_gpu(Model *m, struct GpuModel *g, int step, int *mask_applied) {
    return update_and_allocate(m, step, mask_applied, &DEVICE, g);
}

int adalora_copy_scores_gpu(AdapterSet *set, struct GpuModel *g, bool down) {
    AdaLoraState *st = set->method_state;
    if (down && !gpu_adalora_has_scores(g)) {  // none yet, or reset after the final allocation
        adalora_free_scores(st);
        return 0;
    }
    if (!down && (!set->n || !st->mod[0].avg_ipt[0])) {
        gpu_adalora_reset_scores(g);
        return 0;
    }
    for (int i = 0; i < set->n; i++)
        for (int t = 0; t < 3; t++) {
            Param *p = module_param(&set->adapters[i], t);
            AdaLoraModuleState *ms = &st->mod[i];
            if (down && !ms->avg_ipt[t]) {
                ms->avg_ipt[t] = xcalloc(p->numel ? p->numel : 1, sizeof(double));
                ms->avg_unc[t] = xcalloc(p->numel ? p->numel : 1, sizeof(double));
            }
            if (!ms->avg_ipt[t]) return peft_fail("AdaLoRA: no scores for %s", p->name);
            if (gpu_adalora_copy_scores(g, p, ms->avg_ipt[t], ms->avg_unc[t], down)) return -1;
        }
    return 0;
}

// ---- the schedule reference case ----

static double jnum_or(const cJSON *o, const char *name, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static double rel1(double got, double ref) { return fabs(got - ref) / (fabs(ref) > 0 ? fabs(ref) : 1.0); }

int adalora_check_schedule(const char *dir, const void *case_json, double *max_err, char *msg, size_t cap) {
    const cJSON *j = case_json;
    *max_err = 0;
    int rc = -1;
    Model *m = NULL;
    SafeTensors batches = {0}, final = {0};
    int64_t *ids64 = NULL;
    int32_t *ids = NULL;
    AdamW opt = {0};
    bool have_opt = false;
    char *model_dir = path_join(dir, "model"), *adapter_dir = path_join(dir, "adapter");
    char *batches_path = path_join(dir, "batches.safetensors"), *final_path = path_join(dir, "final.safetensors");

    const cJSON *budgets = cJSON_GetObjectItemCaseSensitive(j, "budget_per_step");
    const cJSON *losses = cJSON_GetObjectItemCaseSensitive(j, "loss_per_step");
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(j, "rank_pattern");
    const cJSON *optj = cJSON_GetObjectItemCaseSensitive(j, "optimizer");
    int steps = (int)jnum_or(j, "steps", -1);
    if (steps < 0 || !cJSON_IsArray(budgets) || !cJSON_IsArray(losses) || cJSON_GetArraySize(budgets) < steps ||
        cJSON_GetArraySize(losses) < steps || !cJSON_IsObject(pattern)) {
        snprintf(msg, cap, "%s/case.json: needs steps, budget_per_step, loss_per_step and rank_pattern", dir);
        goto out;
    }
    float lr = (float)jnum_or(optj, "lr", 1e-3), eps = (float)jnum_or(optj, "eps", 1e-8), wd = (float)jnum_or(optj, "weight_decay", 0.01);
    float beta1 = 0.9f, beta2 = 0.999f;
    const cJSON *betas = cJSON_GetObjectItemCaseSensitive(optj, "betas");
    if (cJSON_GetArraySize(betas) == 2) {
        beta1 = (float)cJSON_GetArrayItem(betas, 0)->valuedouble;
        beta2 = (float)cJSON_GetArrayItem(betas, 1)->valuedouble;
    }

    if (!(m = model_load(model_dir)) || adapters_load(m, adapter_dir)) { snprintf(msg, cap, "%s", peft_last_error()); goto out; }
    AdapterSet *set = m->adapters;
    if (set->cfg.type != METHOD_ADALORA) { snprintf(msg, cap, "%s: not an AdaLoRA adapter", adapter_dir); goto out; }
    if (st_open(&batches, batches_path) || st_open(&final, final_path)) { snprintf(msg, cap, "%s", peft_last_error()); goto out; }
    const StTensor *bt = st_find(&batches, "batches");
    if (!bt || bt->ndim != 3 || bt->shape[0] < steps) { snprintf(msg, cap, "%s: no [steps,B,T] tensor \"batches\"", batches_path); goto out; }
    int B = (int)bt->shape[1], T = (int)bt->shape[2];
    ids64 = xmalloc(sizeof(int64_t) * bt->numel);
    if (st_to_i64(bt, ids64)) { snprintf(msg, cap, "%s", peft_last_error()); goto out; }
    ids = xmalloc(sizeof(int32_t) * bt->numel);
    for (long i = 0; i < bt->numel; i++) ids[i] = (int32_t)ids64[i];

    Param **params;
    int np = model_trainable(m, &params);
    adamw_init(&opt, params, np, lr, beta1, beta2, eps, wd);
    have_opt = true;
    m->training = true;
    model_zero_grad(m);
    for (int s = 0; s < steps; s++) {
        const int32_t *batch = ids + (long)s * B * T;
        double loss = model_forward(m, batch, batch, B, T);
        if (isnan(loss)) { snprintf(msg, cap, "step %d: %s", s, peft_last_error()); goto out; }
        double ref_loss = cJSON_GetArrayItem(losses, s)->valuedouble, e = rel1(loss, ref_loss);
        if (e > *max_err) *max_err = e;
        if (!(e <= 1e-4)) { snprintf(msg, cap, "step %d: loss %.8g, reference %.8g (relative error %.3g > 1e-4)", s, loss, ref_loss, e); goto out; }
        model_backward(m);
        adamw_step(&opt, params, np, lr);
        int mask_applied;
        int budget = adalora_update_and_allocate(m, s, &mask_applied);
        if (budget < 0) { snprintf(msg, cap, "step %d: %s", s, peft_last_error()); goto out; }
        const cJSON *ref = cJSON_GetArrayItem(budgets, s);
        int ref_budget = (int)cJSON_GetArrayItem(ref, 0)->valuedouble;
        bool ref_mask = cJSON_IsTrue(cJSON_GetArrayItem(ref, 1));
        if (budget != ref_budget || (bool)mask_applied != ref_mask) {
            snprintf(msg, cap, "step %d: budget %d, mask %s; reference %d, %s", s, budget, mask_applied ? "true" : "false",
                     ref_budget, ref_mask ? "true" : "false");
            goto out;
        }
        model_zero_grad(m);
    }
    int init_bgt = (int)jnum_or(j, "init_bgt", -1), target_bgt = (int)jnum_or(j, "target_bgt", -1);
    const AdaLoraState *st = set->method_state;
    if ((init_bgt >= 0 && init_bgt != st->init_bgt) || (target_bgt >= 0 && target_bgt != st->target_bgt)) {
        snprintf(msg, cap, "init_bgt/target_bgt %d/%d, reference %d/%d", st->init_bgt, st->target_bgt, init_bgt, target_bgt);
        goto out;
    }
    // The final rank pattern: keys "<module>.lora_E.default".
    int n_ref = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, pattern) {
        n_ref++;
        char module[256];
        snprintf(module, sizeof module, "%s", e->string);
        char *suffix = strstr(module, ".lora_E");
        if (suffix) *suffix = 0;
        const RankPatternEntry *got = adalora_pattern_entry(set, module);
        if (!got) { snprintf(msg, cap, "rank pattern: no entry for %s", module); goto out; }
        int n = cJSON_GetArraySize(e);
        bool same = n == set->cfg.init_r;
        for (int k = 0; same && k < n; k++) same = got->mask[k] == cJSON_IsTrue(cJSON_GetArrayItem(e, k));
        if (!same) {
            char g[128] = "", *p = g;
            for (int k = 0; k < set->cfg.init_r && p < g + sizeof g - 8; k++) p += sprintf(p, "%s%d", k ? "," : "", got->mask[k]);
            snprintf(msg, cap, "rank pattern of %s differs from the reference (ours: [%s])", module, g);
            goto out;
        }
    }
    if (n_ref != set->cfg.n_rank_pattern) {
        snprintf(msg, cap, "rank pattern: %d modules here, %d in the reference", set->cfg.n_rank_pattern, n_ref);
        goto out;
    }
    for (int i = 0; i < np; i++) {
        const StTensor *t = st_find(&final, params[i]->name);
        if (!t || t->numel != params[i]->numel) { snprintf(msg, cap, "%s: no tensor %s of %ld values", final_path, params[i]->name, params[i]->numel); goto out; }
        float *ref = xmalloc(sizeof(float) * (t->numel ? t->numel : 1));
        if (st_to_f32(t, ref)) { free(ref); snprintf(msg, cap, "%s", peft_last_error()); goto out; }
        double err = rel_error(params[i]->w, ref, t->numel);
        free(ref);
        if (err > *max_err || isnan(err)) *max_err = err;
        if (!(err <= 1e-3)) { snprintf(msg, cap, "final %s: relative error %.3g > 1e-3", params[i]->name, err); goto out; }
    }
    rc = 0;
out:
    if (have_opt) adamw_free(&opt);
    free(ids64);
    free(ids);
    st_close(&batches);
    st_close(&final);
    model_free(m);
    free(model_dir);
    free(adapter_dir);
    free(batches_path);
    free(final_path);
    return rc;
}

// ---- checkpoint state (the trainer's checkpoints) ----

// The scores are float64; safetensors has no such dtype here, so they go as raw bytes.
static void put_f64(StWriter *w, const char *name, const double *x, long n) {
    int64_t shape[1] = {n * (int64_t)sizeof(double)};
    st_writer_add(w, name, DT_U8, 1, shape, x);
}

static double *get_f64(const SafeTensors *st, const char *name, long n) {
    const StTensor *t = st_find(st, name);
    if (!t || t->dtype != DT_U8 || t->nbytes != (size_t)n * sizeof(double)) return NULL;
    double *x = xmalloc(sizeof(double) * (n ? n : 1));
    memcpy(x, t->data, t->nbytes);
    return x;
}

void adalora_save_state(AdapterSet *set, void *writer) {
    StWriter *w = writer;
    AdaLoraState *st = set->method_state;
    char name[512];
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        Param *p[3] = {a->A, a->E, a->B};
        for (int k = 0; k < 3 && st->mod[i].avg_ipt[k]; k++) {
            snprintf(name, sizeof name, "adalora/ipt/%d/%s", k, a->lin->module);
            put_f64(w, name, st->mod[i].avg_ipt[k], p[k]->numel);
            snprintf(name, sizeof name, "adalora/unc/%d/%s", k, a->lin->module);
            put_f64(w, name, st->mod[i].avg_unc[k], p[k]->numel);
        }
    }
    for (int i = 0; i < set->cfg.n_rank_pattern; i++) {
        RankPatternEntry *e = &set->cfg.rank_pattern[i];
        snprintf(name, sizeof name, "adalora/pattern/%s", e->module);
        int64_t shape[1] = {set->cfg.init_r};
        st_writer_add(w, name, DT_BOOL, 1, shape, e->mask);
    }
    int32_t bgt[3] = {st->init_bgt, st->target_bgt, st->allocator_ready};
    int64_t shape[1] = {3};
    st_writer_add(w, "adalora/budget", DT_I32, 1, shape, bgt);
}

int adalora_load_state(AdapterSet *set, const void *file, const char *path) {
    const SafeTensors *f = file;
    AdaLoraState *st = set->method_state;
    const StTensor *b = st_find(f, "adalora/budget");
    if (!b || b->dtype != DT_I32 || b->numel != 3) return peft_fail("%s: no AdaLoRA allocator state", path);
    int32_t bgt[3];
    memcpy(bgt, b->data, sizeof bgt);  // the file's bytes may be unaligned
    int init_bgt, target_bgt;
    adalora_budget_bounds(set, &init_bgt, &target_bgt);
    if ((bgt[2] != 0 && bgt[2] != 1) || (bgt[2] && (bgt[0] != init_bgt || bgt[1] != target_bgt)))
        return peft_fail("%s: the AdaLoRA budget (%d, %d, ready %d) is not this run's (%d, %d)", path, bgt[0], bgt[1], bgt[2], init_bgt, target_bgt);
    st->init_bgt = bgt[0];
    st->target_bgt = bgt[1];
    st->allocator_ready = bgt[2];
    adalora_free_scores(st);
    char name[512];
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        Param *p[3] = {a->A, a->E, a->B};
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "adalora/ipt/%d/%s", k, a->lin->module);
            st->mod[i].avg_ipt[k] = get_f64(f, name, p[k]->numel);
            snprintf(name, sizeof name, "adalora/unc/%d/%s", k, a->lin->module);
            st->mod[i].avg_unc[k] = get_f64(f, name, p[k]->numel);
            if (!st->mod[i].avg_ipt[k] != !st->mod[i].avg_unc[k]) return peft_fail("%s: incomplete AdaLoRA scores for %s", path, a->lin->module);
        }
    }
    for (int i = 0; i < f->n; i++) {
        const StTensor *t = &f->tensors[i];
        if (strncmp(t->name, "adalora/pattern/", 16)) continue;
        if (t->numel != set->cfg.init_r || t->dtype != DT_BOOL) return peft_fail("%s: bad AdaLoRA rank pattern %s", path, t->name);
        RankPatternEntry *e = adalora_pattern_entry(set, t->name + 16);
        if (!e) {
            AdapterConfig *c = &set->cfg;
            c->rank_pattern = xrealloc(c->rank_pattern, sizeof(RankPatternEntry) * (c->n_rank_pattern + 1));
            e = &c->rank_pattern[c->n_rank_pattern++];
            memset(e, 0, sizeof *e);
            snprintf(e->module, sizeof e->module, "%s", t->name + 16);
            e->mask = xcalloc(c->init_r, sizeof(bool));
        }
        memcpy(e->mask, t->data, sizeof(bool) * set->cfg.init_r);
        e->rank = 0;
        for (int j = 0; j < set->cfg.init_r; j++) e->rank += e->mask[j];
    }
    return 0;
}
