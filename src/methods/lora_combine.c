// lora_combine.c: see lora_combine.h. Per adapted module of the new set, in the model's order (PEFT's
// named_modules order):
//   cat:    A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1, B_2, ...]
//   *svd:   D = combine(s_k B_k A_k with weights w_k); D = U S V^T; B = U_r S_r, A = V_r^T
//           (the deltas hold s_k, so the weights do not, as in PEFT 0.21; before huggingface/peft#3111 they were w_k s_k)
//   others: A = combine(A_k with weights sign(w_k s_k) sqrt|w_k s_k|), B = combine(B_k with sqrt|w_k s_k|)
// where combine is merge_utils' task_arithmetic (linear), magnitude_prune, ties, dare_linear or dare_ties.
#include "lora_combine.h"
#include "check.h"
#include "linalg.h"
#include "lora_init.h"
#include "model.h"
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const TYPE_NAMES[] = {"linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune",
                                         "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"};
enum { N_TYPES = sizeof TYPE_NAMES / sizeof *TYPE_NAMES };

int combine_type_parse(const char *name, CombineType *out) {
    for (int i = 0; i < N_TYPES; i++)
        if (!strcmp(name, TYPE_NAMES[i])) { *out = (CombineType)i; return 0; }
    return peft_fail("unknown combination type \"%s\" (linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune, "
                     "ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd)", name);
}

const char *combine_type_name(CombineType t) { return (int)t >= 0 && (int)t < N_TYPES ? TYPE_NAMES[t] : "?"; }

static bool is_svd(CombineType t) { return t == COMBINE_SVD || t >= COMBINE_TIES_SVD; }
static bool needs_density(CombineType t) { return t != COMBINE_LINEAR && t != COMBINE_CAT && t != COMBINE_SVD; }
static bool elects_sign(CombineType t) { return t == COMBINE_TIES || t == COMBINE_DARE_TIES || t == COMBINE_TIES_SVD || t == COMBINE_DARE_TIES_SVD; }
static bool random_prune(CombineType t) { return t == COMBINE_DARE_LINEAR || t == COMBINE_DARE_TIES || t == COMBINE_DARE_LINEAR_SVD || t == COMBINE_DARE_TIES_SVD; }

// merge_utils.magnitude_based_pruning: keep the int(density * n) entries of largest magnitude (torch.topk;
// among equal magnitudes the lower index is kept here).
typedef struct { float mag; long i; } Ranked;
static int by_magnitude(const void *pa, const void *pb) {
    const Ranked *a = pa, *b = pb;
    if (a->mag != b->mag) return a->mag > b->mag ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

static void prune_magnitude(float *t, long n, double density) {
    long k = (long)(density * (double)n);
    Ranked *r = xmalloc(sizeof(Ranked) * (n ? n : 1));
    for (long i = 0; i < n; i++) r[i] = (Ranked){fabsf(t[i]), i};
    qsort(r, n, sizeof *r, by_magnitude);
    for (long j = k; j < n; j++) t[r[j].i] = 0.0f;
    free(r);
}

// merge_utils.random_pruning with rescale: t * bernoulli(density) / density, the mask drawn as torch's CPU
// bernoulli_(p) draws it (one float uniform per element, kept when below p).
static void prune_random(float *t, long n, double density, TorchGen *g) {
    float p = (float)density;
    for (long i = 0; i < n; i++) {
        float keep = torch_uniform_f32(g, 0.0f, 1.0f) < p ? 1.0f : 0.0f;
        t[i] = t[i] * keep / p;
    }
}

// One of merge_utils' combinations of n task tensors (each numel, pruned in place) into out.
static void combine_tensors(CombineType type, float **t, const float *w, int n, long numel, double density, bool frequency,
                            TorchGen *g, float *out) {
    if (needs_density(type) && density < 1)  // prune(): density >= 1 keeps everything
        for (int k = 0; k < n; k++) {
            if (random_prune(type)) prune_random(t[k], numel, density, g);
            else prune_magnitude(t[k], numel, density);
        }
    for (long i = 0; i < numel; i++) {
        if (!elects_sign(type)) {
            float s = 0;
            for (int k = 0; k < n; k++) s += t[k][i] * w[k];
            out[i] = s;
            continue;
        }
        // calculate_majority_sign_mask on the (pruned, unweighted) tensors, then disjoint_merge of the weighted.
        float total = 0;
        for (int k = 0; k < n; k++) total += frequency ? (float)((t[k][i] > 0) - (t[k][i] < 0)) : t[k][i];
        int majority = total >= 0 ? 1 : -1;
        float s = 0, count = 0;
        for (int k = 0; k < n; k++)
            if ((t[k][i] > 0) - (t[k][i] < 0) == majority) {
                s += t[k][i] * w[k];
                count += 1;
            }
        out[i] = s / (count < 1 ? 1 : count);
    }
}

// target_modules of the new adapter: the union of lists, or "(re1)|(re2)" of strings (PEFT refuses a mix).
static int union_targets(AdapterConfig *c, AdapterSet *const *sets, int n) {
    bool regex = sets[0]->cfg.target_regex != NULL;
    for (int k = 1; k < n; k++)
        if ((sets[k]->cfg.target_regex != NULL) != regex)
            return peft_fail("all adapters' target_modules must be lists, or all strings: PEFT does not combine a mix");
    c->targets = NULL;
    c->n_targets = 0;
    c->target_regex = NULL;
    if (regex) {
        size_t len = 1;
        for (int k = 0; k < n; k++) len += strlen(sets[k]->cfg.target_regex) + 3;
        c->target_regex = xcalloc(len, 1);
        for (int k = 0; k < n; k++) {
            if (k) strcat(c->target_regex, "|");
            strcat(c->target_regex, "(");
            strcat(c->target_regex, sets[k]->cfg.target_regex);
            strcat(c->target_regex, ")");
        }
        return 0;
    }
    for (int k = 0; k < n; k++)
        for (int i = 0; i < sets[k]->cfg.n_targets; i++) {
            const char *t = sets[k]->cfg.targets[i];
            bool seen = false;
            for (int j = 0; j < c->n_targets && !seen; j++) seen = !strcmp(c->targets[j], t);
            if (seen) continue;
            c->targets = xrealloc(c->targets, sizeof(char *) * (c->n_targets + 1));
            c->targets[c->n_targets++] = xstrdup(t);
        }
    return 0;
}

static int max_rank(const AdapterSet *s) {
    int r = s->cfg.r;
    for (int i = 0; i < s->n; i++)
        if (s->adapters[i].r > r) r = s->adapters[i].r;
    return r;
}

// The new rank for the type, or -1 (PEFT's errors).
static int new_rank(AdapterSet *const *sets, int n, const CombineOptions *o) {
    int sum = 0, mx = 0;
    for (int k = 0; k < n; k++) {
        int r = max_rank(sets[k]);
        sum += r;
        if (r > mx) mx = r;
        if (!is_svd(o->type) && o->type != COMBINE_CAT && r != max_rank(sets[0]))
            return peft_fail("%s needs adapters of one rank (PEFT: all adapters must have the same r value); they have %d and %d",
                             combine_type_name(o->type), max_rank(sets[0]), r);
    }
    if (o->type == COMBINE_CAT) return sum;
    if (is_svd(o->type)) return o->svd_rank ? o->svd_rank : mx;
    return mx;
}

// One module of the SVD types: D [out,in] from the inputs' deltas, then its top new_r singular triplets.
static int combine_svd(Adapter *a, Adapter **in, const double *wk, int n, const CombineOptions *o, TorchGen *g) {
    int rows = a->lin->out, cols = a->lin->in, r = a->r, k = rows < cols ? rows : cols;
    if (r > k) return peft_fail("%s: svd_rank %d exceeds min(in, out) = %d (PEFT's SVD merge fails there too)", a->lin->module, r, k);
    long numel = (long)rows * cols;
    float **t = xcalloc(n, sizeof(float *)), *w = xmalloc(sizeof(float) * n), *D = xmalloc(sizeof(float) * numel);
    for (int j = 0; j < n; j++) {
        t[j] = xmalloc(sizeof(float) * numel);
        in[j]->method->delta(in[j], t[j]);  // get_delta_weight: s B A
        w[j] = (float)wk[j];
    }
    CombineType base = o->type == COMBINE_SVD ? COMBINE_LINEAR : o->type == COMBINE_TIES_SVD ? COMBINE_TIES
                     : o->type == COMBINE_DARE_LINEAR_SVD ? COMBINE_DARE_LINEAR : o->type == COMBINE_DARE_TIES_SVD ? COMBINE_DARE_TIES
                     : COMBINE_MAGNITUDE_PRUNE;
    combine_tensors(base, t, w, n, numel, o->density, o->sign_frequency, g, D);
    double *Dd = xmalloc(sizeof(double) * numel), *U = xmalloc(sizeof(double) * rows * k), *S = xmalloc(sizeof(double) * k),
           *Vt = xmalloc(sizeof(double) * k * cols);
    for (long i = 0; i < numel; i++) Dd[i] = D[i];
    int rc = linalg_svd(rows, cols, Dd, U, S, Vt);
    for (int j = 0; !rc && j < r; j++) {
        for (int c = 0; c < cols; c++) a->A->w[(long)j * cols + c] = (float)Vt[(long)j * cols + c];
        for (int q = 0; q < rows; q++) a->B->w[(long)q * r + j] = (float)(U[(long)q * k + j] * S[j]);
    }
    for (int j = 0; j < n; j++) free(t[j]);
    free(t);
    free(w);
    free(D);
    free(Dd);
    free(U);
    free(S);
    free(Vt);
    return rc;
}

static void combine_module(Adapter *a, Adapter **in, const double *wk, int n, const CombineOptions *o, TorchGen *g) {
    int cols = a->lin->in, rows = a->lin->out, r = a->r;
    if (o->type == COMBINE_CAT) {
        int at = 0;
        for (int j = 0; j < n; j++) {
            int rj = in[j]->r;
            float f = (float)wk[j], s = in[j]->scaling;
            for (long i = 0; i < (long)rj * cols; i++) a->A->w[(long)at * cols + i] = in[j]->A->w[i] * f * s;
            for (int q = 0; q < rows; q++)
                for (int c = 0; c < rj; c++) a->B->w[(long)q * r + at + c] = in[j]->B->w[(long)q * rj + c];
            at += rj;
        }
        return;
    }
    // The A side carries the sign: sqrt|w s| on both, times sign(w s) on A.
    float *wa = xmalloc(sizeof(float) * n), *wb = xmalloc(sizeof(float) * n);
    float **ta = xcalloc(n, sizeof(float *)), **tb = xcalloc(n, sizeof(float *));
    for (int j = 0; j < n; j++) {
        double ws = wk[j] * in[j]->scaling;
        wb[j] = (float)sqrt(fabs(ws));
        wa[j] = ws >= 0 ? wb[j] : -wb[j];
        ta[j] = xmalloc(sizeof(float) * in[j]->A->numel);
        tb[j] = xmalloc(sizeof(float) * in[j]->B->numel);
        memcpy(ta[j], in[j]->A->w, sizeof(float) * in[j]->A->numel);
        memcpy(tb[j], in[j]->B->w, sizeof(float) * in[j]->B->numel);
    }
    combine_tensors(o->type, ta, wa, n, a->A->numel, o->density, o->sign_frequency, g, a->A->w);
    combine_tensors(o->type, tb, wb, n, a->B->numel, o->density, o->sign_frequency, g, a->B->w);
    for (int j = 0; j < n; j++) {
        free(ta[j]);
        free(tb[j]);
    }
    free(ta);
    free(tb);
    free(wa);
    free(wb);
}

int lora_combine(Model *m, AdapterSet *const *sets, const double *weights, int n, const CombineOptions *opt) {
    if (n < 1) return peft_fail("no adapters to combine");
    CombineOptions o = *opt;
    if (n == 1) o.type = COMBINE_LINEAR;  // PEFT: one adapter can only be merged linearly
    for (int k = 0; k < n; k++) {
        if (sets[k]->cfg.type != METHOD_LORA)
            return peft_fail("adapter %d is %s: add_weighted_adapter combines LoRA adapters", k + 1, method_get(sets[k]->cfg.type)->title);
        char init[32];
        if (lora_init_changes_base(&sets[k]->cfg))
            return peft_fail("adapter %d says init_lora_weights %s: convert it to plain LoRA first (peft train saves it so)", k + 1,
                             lora_init_text(&sets[k]->cfg, init, sizeof init));
        if (!isfinite(weights[k])) return peft_fail("adapter %d: weight %g is not finite", k + 1, weights[k]);
    }
    if (needs_density(o.type) && isnan(o.density))
        return peft_fail("combination %s needs a density (the fraction of values kept, in [0, 1])", combine_type_name(o.type));
    if (needs_density(o.type) && o.density < 0) return peft_fail("density %g: it must be >= 0 (PEFT's prune refuses it)", o.density);
    int r = new_rank(sets, n, &o);
    if (r < 0) return -1;
    if (r < 1) return peft_fail("svd_rank must be positive");
    AdapterConfig c = sets[0]->cfg;  // PEFT: replace(config of the first adapter, r, lora_alpha, target_modules, patterns)
    c.base_model = NULL;
    c.n_rank_pattern = 0;
    c.rank_pattern = NULL;
    if (union_targets(&c, sets, n)) return -1;
    c.r = r;
    c.alpha = (float)r;
    // The factors hold every input's scaling (rsLoRA's alpha / sqrt r included): the new one's is 1. PEFT inherited
    // the first adapter's use_rslora (then sqrt(r)) until huggingface/peft#3449 reset it.
    c.use_rslora = false;
    c.base_model = sets[0]->cfg.base_model;  // copied by the set
    int rc = adapters_attach(m, &c, o.seed);  // the new modules' own draws, from torch.manual_seed(seed)
    c.base_model = NULL;
    for (int i = 0; i < c.n_targets; i++) free(c.targets[i]);
    free(c.targets);
    free(c.target_regex);
    if (rc) return -1;
    AdapterSet *out = m->adapters;
    TorchGen *g = lora_init_generator(out);
    Adapter **in = xcalloc(n, sizeof(Adapter *));
    double *wk = xmalloc(sizeof(double) * n);
    for (int i = 0; !rc && i < out->n; i++) {
        Adapter *a = &out->adapters[i];
        long li = a->lin - m->linears;
        int valid = 0;
        for (int k = 0; k < n; k++)
            if (sets[k]->by_linear[li]) {
                in[valid] = sets[k]->by_linear[li];
                wk[valid++] = weights[k];
            }
        if (!valid) { rc = peft_fail("%s: no input adapter has this module", a->lin->module); break; }
        memset(a->A->w, 0, sizeof(float) * a->A->numel);
        memset(a->B->w, 0, sizeof(float) * a->B->numel);
        if (is_svd(o.type)) rc = combine_svd(a, in, wk, valid, &o, g);
        else combine_module(a, in, wk, valid, &o, g);
    }
    free(in);
    free(wk);
    if (rc) adapters_free(m);
    return rc;
}

// ---- the lora-arithmetic reference cases ----

static int fail_msg(char *msg, size_t cap, const char *what) {
    snprintf(msg, cap, "%s%s%s", what, what[0] ? ": " : "", peft_last_error());
    return -1;
}

// case.json's "combine": combination_type, weights, density, majority_sign_method, svd_rank, seed.
static int read_combine(const cJSON *c, CombineOptions *o, double w[2], char *msg, size_t cap) {
    const cJSON *type = cJSON_GetObjectItem(c, "combination_type"), *weights = cJSON_GetObjectItem(c, "weights");
    const cJSON *density = cJSON_GetObjectItem(c, "density"), *sign = cJSON_GetObjectItem(c, "majority_sign_method");
    const cJSON *rank = cJSON_GetObjectItem(c, "svd_rank"), *seed = cJSON_GetObjectItem(c, "seed");
    if (!cJSON_IsString(type) || cJSON_GetArraySize(weights) != 2 || !cJSON_IsNumber(seed)) {
        snprintf(msg, cap, "case.json: combine needs combination_type, two weights and seed");
        return -1;
    }
    if (combine_type_parse(type->valuestring, &o->type)) return fail_msg(msg, cap, "case.json");
    for (int k = 0; k < 2; k++) w[k] = cJSON_GetArrayItem(weights, k)->valuedouble;
    o->density = cJSON_IsNumber(density) ? density->valuedouble : NAN;
    o->sign_frequency = cJSON_IsString(sign) && !strcmp(sign->valuestring, "frequency");
    o->svd_rank = cJSON_IsNumber(rank) ? (int)rank->valuedouble : 0;
    o->seed = (uint64_t)seed->valuedouble;
    return 0;
}

static bool same_targets(const AdapterConfig *a, const AdapterConfig *b) {
    if (a->target_regex || b->target_regex) return a->target_regex && b->target_regex && !strcmp(a->target_regex, b->target_regex);
    if (a->n_targets != b->n_targets) return false;
    for (int i = 0; i < a->n_targets; i++) {
        bool found = false;
        for (int j = 0; j < b->n_targets && !found; j++) found = !strcmp(a->targets[i], b->targets[j]);
        if (!found) return false;
    }
    return true;
}

// Module i's s B A of set (for the SVD types, whose factors are unique only up to signs and rotations).
static float *module_delta(const Adapter *a) {
    float *d = xmalloc(sizeof(float) * a->lin->in * a->lin->out);
    a->method->delta(a, d);
    return d;
}

int lora_combine_check_case(const char *dir, const void *case_json, double *max_err, char *msg, size_t cap) {
    CombineOptions o;
    double w[2];
    *max_err = 0;
    msg[0] = 0;
    if (read_combine(cJSON_GetObjectItem(case_json, "combine"), &o, w, msg, cap)) return -1;
    char *model_dir = path_join(dir, "model"), *a_dir = path_join(dir, "adapter"), *b_dir = path_join(dir, "adapter2");
    char *c_dir = path_join(dir, "combined"), *io_path = path_join(dir, "io.safetensors");
    Model *m = model_load(model_dir), *ref = model_load(model_dir);
    AdapterSet *sets[2] = {NULL, NULL};
    SafeTensors io = {0};
    int32_t *ids = NULL;
    float *want = NULL;
    int rc = -1, Bn = 0, T = 0;
    if (!m || !ref || !(sets[0] = adapters_load_detached(m, a_dir)) || !(sets[1] = adapters_load_detached(m, b_dir)))
        fail_msg(msg, cap, "loading the case");
    else if (lora_combine(m, sets, w, 2, &o)) fail_msg(msg, cap, "combining");
    else if (adapters_load(ref, c_dir)) fail_msg(msg, cap, "PEFT's combined adapter");
    else rc = 0;
    AdapterSet *ours = !rc ? m->adapters : NULL, *theirs = !rc ? ref->adapters : NULL;
    if (!rc && (ours->cfg.r != theirs->cfg.r || ours->cfg.alpha != theirs->cfg.alpha || ours->cfg.use_rslora != theirs->cfg.use_rslora ||
                ours->n != theirs->n || !same_targets(&ours->cfg, &theirs->cfg))) {
        snprintf(msg, cap, "combined config: r %d, lora_alpha %g, use_rslora %d, %d modules here; PEFT's r %d, lora_alpha %g, use_rslora %d, "
                 "%d modules (or other target_modules)", ours->cfg.r, ours->cfg.alpha, ours->cfg.use_rslora, ours->n, theirs->cfg.r,
                 theirs->cfg.alpha, theirs->cfg.use_rslora, theirs->n);
        rc = -1;
    }
    for (int i = 0; !rc && i < ours->n; i++) {
        const Adapter *a = &ours->adapters[i], *b = &theirs->adapters[i];
        // The SVD types' factors are unique only up to sign: their products s B A are compared.
        if (is_svd(o.type)) {
            float *da = module_delta(a), *db = module_delta(b);
            double e = rel_error(da, db, (long)a->lin->in * a->lin->out);
            free(da);
            free(db);
            if (e > *max_err) *max_err = e;
            if (e > 1e-4) { snprintf(msg, cap, "combined delta %s: relative error %.3g > 1e-4", a->lin->module, e); rc = -1; }
            continue;
        }
        for (int t = 0; t < 2 && !rc; t++) {
            const Param *p = t ? a->B : a->A, *q = t ? b->B : b->A;
            double e = rel_error(p->w, q->w, p->numel);
            if (e > *max_err || isnan(e)) *max_err = e;
            if (!(e <= 1e-5)) { snprintf(msg, cap, "combined %s: relative error %.3g > 1e-5", p->name, e); rc = -1; }
        }
    }
    if (!rc && (st_open(&io, io_path) || check_read_ids(&io, "input_ids", &ids, &Bn, &T))) rc = fail_msg(msg, cap, "");
    if (!rc && !(want = check_load_reference(&(CheckResult){0}, "logits", &io, "logits", (long)Bn * T * m->cfg.vocab_size))) {
        snprintf(msg, cap, "%s: no logits [%d, %d, %d]", io_path, Bn, T, m->cfg.vocab_size);
        rc = -1;
    }
    if (!rc && isnan(model_forward(m, ids, NULL, Bn, T))) rc = fail_msg(msg, cap, "forward");
    if (!rc) {
        double e = rel_error(m->act.logits, want, (long)Bn * T * m->cfg.vocab_size);
        if (e > *max_err) *max_err = e;
        if (!(e <= 1e-4)) { snprintf(msg, cap, "logits of the combined adapter: relative error %.3g > 1e-4", e); rc = -1; }
    }
    adapter_set_free(sets[0]);
    adapter_set_free(sets[1]);
    st_close(&io);
    free(ids);
    free(want);
    model_free(m);
    model_free(ref);
    free(model_dir);
    free(a_dir);
    free(b_dir);
    free(c_dir);
    free(io_path);
    return rc;
}
