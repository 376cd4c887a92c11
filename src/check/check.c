// check.c: one reference case = same files in, same numbers out. For a model case:
// logits and loss, d loss / d p for every trainable tensor, one AdamW step, and the merged
// weights, each against what HF transformers + PEFT computed in float64.
#include "check.h"
#include "adapter.h"
#include "adalora.h"
#include "lora_combine.h"
#include "lora_init.h"
#include "model.h"
#include "optim.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

double rel_error(const float *a, const float *ref, long n) { return floored_error(NULL, a, ref, n, 0); }

double update_rel_error(const float *before, const float *after, const float *ref_after, long n) {
    return floored_error(before, after, ref_after, n, 0);
}

double floored_error(const float *before, const float *after, const float *ref_after, long n, double floor_rms) {
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        double d = (double)after[i] - ref_after[i], u = (double)ref_after[i] - (before ? before[i] : 0.0);
        num += d * d;
        den += u * u;
    }
    if (!isfinite(num)) return INFINITY;
    double floor_sq = floor_rms * floor_rms * (double)n;  // the norm of n elements of floor_rms each, squared
    if (den < floor_sq) den = floor_sq;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

void check_result_set(CheckResult *r, CheckStatus st, const char *fmt, ...) {
    r->status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail, sizeof r->detail, fmt, ap);
    va_end(ap);
}

typedef struct {
    const char *dir;
    CheckResult *res;
    QuantType quant;      // case.json's quantization: the base's linears quantized on load
    bool double_quant;
    double tol_logits, tol_grads, tol_step, tol_update, tol_merged;
    float lr, beta1, beta2, eps, wd;
    int B, T;
    int32_t *ids, *labels;
    // case.json's "task": "seq_cls" (an encoder's sequence classification, io: attention_mask, token_type_ids,
    // labels per row), else a causal LM
    bool classify;
    int32_t *mask, *types;
    float *targets;
    bool int_targets;
} Case;

// Records the worst error and fails the case past tol. Returns 0 when within.
static int within(Case *c, const char *what, const char *name, double e, double tol) {
    if (e > c->res->max_rel_err || isnan(e)) c->res->max_rel_err = e;
    if (!(e <= tol)) {
        check_result_set(c->res, CHECK_FAIL, "%s %s: relative error %.3g > %.1g", what, name, e, tol);
        return -1;
    }
    return 0;
}

// Compare one tensor with its reference (relative error).
static int compare(Case *c, const char *what, const char *name, const float *got, const float *ref, long n, double tol) {
    return within(c, what, name, rel_error(got, ref, n), tol);
}

float *check_load_reference(CheckResult *r, const char *what, const SafeTensors *st, const char *name, long n) {
    const StTensor *t = st_find(st, name);
    if (!t) { check_result_set(r, CHECK_FAIL, "%s: %s has no tensor %s", what, st->path, name); return NULL; }
    if (t->numel != n) { check_result_set(r, CHECK_FAIL, "%s %s: %lld values in the reference, %ld here", what, name, (long long)t->numel, n); return NULL; }
    float *ref = xmalloc(sizeof(float) * (n ? n : 1));
    if (st_to_f32(t, ref)) { check_result_set(r, CHECK_FAIL, "%s", peft_last_error()); free(ref); return NULL; }
    return ref;
}

static int compare_with_file(Case *c, const char *what, const SafeTensors *st, const char *name, const float *got, long n, double tol) {
    float *ref = check_load_reference(c->res, what, st, name, n);
    if (!ref) return -1;
    int rc = compare(c, what, name, got, ref, n, tol);
    free(ref);
    return rc;
}

static int read_case(Case *c, const char *dir, cJSON **out) {
    char *path = path_join(dir, "case.json");
    char *text = read_file(path, NULL);
    free(path);
    if (!text) return -1;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) return peft_fail("%s/case.json: not valid JSON", dir);
    const cJSON *tol = cJSON_GetObjectItem(j, "tolerance"), *opt = cJSON_GetObjectItem(j, "optimizer");
    c->tol_logits = 1e-4; c->tol_grads = 1e-3; c->tol_step = 1e-3; c->tol_update = CHECK_UPDATE_TOL; c->tol_merged = 1e-5;
    if (tol) {
        const cJSON *v;
        if ((v = cJSON_GetObjectItem(tol, "logits_rel"))) c->tol_logits = v->valuedouble;
        if ((v = cJSON_GetObjectItem(tol, "grads_rel"))) c->tol_grads = v->valuedouble;
        if ((v = cJSON_GetObjectItem(tol, "step_rel"))) c->tol_step = v->valuedouble;
        if ((v = cJSON_GetObjectItem(tol, "update_rel"))) c->tol_update = v->valuedouble;
    }
    c->lr = 1e-3f; c->beta1 = 0.9f; c->beta2 = 0.999f; c->eps = 1e-8f; c->wd = 0.01f;
    if (opt) {
        const cJSON *v, *betas = cJSON_GetObjectItem(opt, "betas");
        if ((v = cJSON_GetObjectItem(opt, "lr"))) c->lr = (float)v->valuedouble;
        if ((v = cJSON_GetObjectItem(opt, "eps"))) c->eps = (float)v->valuedouble;
        if ((v = cJSON_GetObjectItem(opt, "weight_decay"))) c->wd = (float)v->valuedouble;
        if (cJSON_GetArraySize(betas) == 2) {
            c->beta1 = (float)cJSON_GetArrayItem(betas, 0)->valuedouble;
            c->beta2 = (float)cJSON_GetArrayItem(betas, 1)->valuedouble;
        }
    }
    *out = j;
    return 0;
}

// case.json's "quantization": {"type": "nf4" | "fp4" | "int8", "double_quant": bool, ...} (the quantization
// reference cases of tools/quant_reference); absent: none.
static int read_quantization(Case *c, const cJSON *j, const char *dir) {
    const cJSON *q = cJSON_GetObjectItem(j, "quantization");
    if (!q) return 0;
    const cJSON *type = cJSON_GetObjectItem(q, "type"), *dq = cJSON_GetObjectItem(q, "double_quant");
    if (!cJSON_IsString(type) || !cJSON_IsBool(dq)) return peft_fail("%s/case.json: quantization needs a string type and a boolean double_quant", dir);
    if (quant_type_parse(type->valuestring, &c->quant)) return peft_fail_context("%s/case.json: ", dir);
    c->double_quant = cJSON_IsTrue(dq);
    return 0;
}

static Model *load_case_model(const Case *c, const char *dir, bool with_adapter) {
    char *model_dir = path_join(dir, "model"), *adapter_dir = path_join(dir, "adapter");
    Model *m = model_load_quantized(model_dir, c->quant, c->double_quant);
    if (m && with_adapter && adapters_load(m, adapter_dir)) { model_free(m); m = NULL; }
    free(model_dir);
    free(adapter_dir);
    return m;
}

int check_read_ids(const SafeTensors *io, const char *name, int32_t **out, int *B, int *T) {
    const StTensor *t = st_find(io, name);
    if (!t || t->ndim != 2) return peft_fail("%s: no [B,T] tensor %s", io->path, name);
    *B = (int)t->shape[0];
    *T = (int)t->shape[1];
    int64_t *tmp = xmalloc(sizeof(int64_t) * t->numel);
    if (st_to_i64(t, tmp)) { free(tmp); return -1; }
    *out = xmalloc(sizeof(int32_t) * t->numel);
    for (long i = 0; i < t->numel; i++) (*out)[i] = (int32_t)tmp[i];
    free(tmp);
    return 0;
}

int check_read_classify_io(const SafeTensors *io, const ModelConfig *cfg, int B, int T, int32_t **mask, int32_t **types, float **targets,
                           bool *int_targets) {
    int b, t;
    if (check_read_ids(io, "attention_mask", mask, &b, &t)) return -1;
    if (b != B || t != T) return peft_fail("%s: attention_mask is [%d, %d], input_ids [%d, %d]", io->path, b, t, B, T);
    if (st_find(io, "token_type_ids") && check_read_ids(io, "token_type_ids", types, &b, &t)) return -1;
    if (*types && (b != B || t != T)) return peft_fail("%s: token_type_ids is [%d, %d], input_ids [%d, %d]", io->path, b, t, B, T);
    const StTensor *lt = st_find(io, "labels");
    if (!lt) return peft_fail("%s: no labels", io->path);
    *int_targets = lt->dtype == DT_I64 || lt->dtype == DT_I32;
    long want = model_problem_type(cfg, *int_targets) == PROBLEM_SINGLE_LABEL ? B : (long)B * cfg->num_labels;
    if (lt->numel != want) return peft_fail("%s: labels has %lld values, the model's problem type needs %ld", io->path, (long long)lt->numel, want);
    *targets = xmalloc(sizeof(float) * want);
    if (!*int_targets) return st_to_f32(lt, *targets);
    int64_t *tmp = xmalloc(sizeof(int64_t) * want);
    int rc = st_to_i64(lt, tmp);
    for (long i = 0; !rc && i < want; i++) (*targets)[i] = (float)tmp[i];
    free(tmp);
    return rc;
}

double check_rms(Param *const *params, int n, float *const *before, float *const *ref) {
    double sumsq = 0;
    long count = 0;
    for (int i = 0; i < n; i++)
        for (long j = 0; j < params[i]->numel; j++) {
            double u = (double)ref[i][j] - (before ? before[i][j] : 0.0);
            sumsq += u * u;
            count++;
        }
    return count ? sqrt(sumsq / count) : 0;
}

int check_floored(CheckResult *r, const char *what, Param *const *params, int n, float *const *before, float *const *got, float *const *ref,
                  double floor, double tol) {
    double rms = check_rms(params, n, before, ref);
    for (int i = 0; i < n; i++) {
        double e = floored_error(before ? before[i] : NULL, got[i], ref[i], params[i]->numel, floor * rms);
        if (e > r->max_rel_err || isnan(e)) r->max_rel_err = e;
        if (!(e <= tol)) {
            check_result_set(r, CHECK_FAIL, "%s %s: relative error %.3g > %.1g", what, params[i]->name, e, tol);
            return -1;
        }
    }
    return 0;
}

// The case's forward: logits (without labels) or the loss (with them). NAN on error.
static double case_forward(const Case *c, Model *m, bool with_labels) {
    if (!c->classify) return model_forward(m, c->ids, with_labels ? c->labels : NULL, c->B, c->T);
    ClassifyBatch b = {c->ids, c->mask, c->types, with_labels ? c->targets : NULL, c->int_targets, c->B, c->T};
    return model_classify(m, &b);
}

// How many logits the case's forward gives.
static long case_logits(const Case *c, const Model *m) {
    return c->classify ? (long)c->B * m->cfg.num_labels : (long)c->B * c->T * m->cfg.vocab_size;
}

static float scalar(const SafeTensors *st, const char *name) {
    const StTensor *t = st_find(st, name);
    float v = NAN;
    if (t && t->numel == 1) st_to_f32(t, &v);
    return v;
}

// logits, loss, gradients and one AdamW step on the model (+ adapter) as given.
static int check_training_step(Case *c, Model *m, const SafeTensors *io) {
    CheckResult *r = c->res;
    int B, T;
    if (check_read_ids(io, "input_ids", &c->ids, &B, &T) || (!c->classify && check_read_ids(io, "labels", &c->labels, &c->B, &c->T))) {
        check_result_set(r, CHECK_FAIL, "%s", peft_last_error());
        return -1;
    }
    c->B = B; c->T = T;
    if (c->classify && check_read_classify_io(io, &m->cfg, c->B, c->T, &c->mask, &c->types, &c->targets, &c->int_targets)) { check_result_set(r, CHECK_FAIL, "%s", peft_last_error()); return -1; }
    if (isnan(case_forward(c, m, false))) { check_result_set(r, CHECK_FAIL, "%s", peft_last_error()); return -1; }
    if (compare_with_file(c, "logits", io, "logits", m->act.logits, case_logits(c, m), c->tol_logits)) return -1;
    double loss = case_forward(c, m, true);
    const char *task_loss = c->classify ? "cls_loss" : "lm_loss";  // the loss without a regulariser
    float ref_loss = scalar(io, "loss"), ref_lm = scalar(io, task_loss);
    float got_loss = (float)loss, got_lm = (float)m->act.lm_loss;
    if (compare(c, "loss", task_loss, &got_lm, &ref_lm, 1, c->tol_logits) || compare(c, "loss", "loss", &got_loss, &ref_loss, 1, c->tol_logits)) return -1;

    model_zero_grad(m);
    model_backward(m);
    Param **params;
    int n = model_trainable(m, &params);
    char *grads_path = path_join(c->dir, "grads.safetensors"), *step_path = path_join(c->dir, "step.safetensors");
    SafeTensors grads = {0}, step = {0};
    float **before = NULL, **refs = NULL, **got = NULL;  // the trainable tensors before the step, the reference gradients, ours
    int rc = -1;
    if (st_open(&grads, grads_path) || st_open(&step, step_path)) { check_result_set(r, CHECK_FAIL, "%s", peft_last_error()); goto out; }
    if (grads.n != n) { check_result_set(r, CHECK_FAIL, "gradients: the reference has %d trainable tensors, we have %d", grads.n, n); goto out; }
    // The AdamW step is taken from the reference gradient (ours is held to tol_grads here): Adam's first
    // step, lr g / (|g| + eps), turns the rounding of an element whose gradient is near 0 (~1e-8) into a
    // visibly different update (1.8e-4 of gpt2-full's from our own gradient). From the same gradient the
    // update (after - before) agrees to fp32 rounding, which is what lets CHECK_UPDATE_TOL be tight.
    before = xcalloc(n, sizeof(float *));
    refs = xcalloc(n, sizeof(float *));
    got = xcalloc(n, sizeof(float *));
    for (int i = 0; i < n; i++) {
        if (!(refs[i] = check_load_reference(r, "gradient", &grads, params[i]->name, params[i]->numel))) goto out;
        got[i] = params[i]->grad;
    }
    if (check_floored(r, "gradient", params, n, NULL, got, refs, CHECK_GRAD_FLOOR, c->tol_grads)) goto out;
    for (int i = 0; i < n; i++) {
        Param *p = params[i];
        memcpy(p->grad, refs[i], sizeof(float) * p->numel);
        before[i] = xmalloc(sizeof(float) * p->numel);
        memcpy(before[i], p->w, sizeof(float) * p->numel);
    }
    AdamW opt;
    adamw_init(&opt, params, n, c->lr, c->beta1, c->beta2, c->eps, c->wd);
    adamw_step(&opt, params, n, c->lr);
    adamw_free(&opt);
    for (int i = 0; i < n; i++) {  // refs: the weights after the step now
        free(refs[i]);
        if (!(refs[i] = check_load_reference(r, "AdamW step", &step, params[i]->name, params[i]->numel))) goto out;
        got[i] = params[i]->w;
    }
    for (int i = 0; i < n; i++)
        if (compare(c, "AdamW step", params[i]->name, params[i]->w, refs[i], params[i]->numel, c->tol_step)) goto out;
    if (check_floored(r, "AdamW update", params, n, before, got, refs, CHECK_UPDATE_FLOOR, c->tol_update)) goto out;
    rc = 0;
out:
    for (int i = 0; before && i < n; i++) free(before[i]);
    for (int i = 0; refs && i < n; i++) free(refs[i]);
    free(before);
    free(refs);
    free(got);
    st_close(&grads);
    st_close(&step);
    free(grads_path);
    free(step_path);
    return rc;
}

// Merge the adapter as saved and compare every adapted weight; unmerge must restore the base.
static int check_merge(Case *c, const char *dir) {
    Model *m = load_case_model(c, dir, true);
    if (!m) { check_result_set(c->res, CHECK_FAIL, "%s", peft_last_error()); return -1; }
    AdapterSet *set = m->adapters;
    float **before = xcalloc(set->n, sizeof(float *));
    for (int i = 0; i < set->n; i++) {
        Param *w = set->adapters[i].lin->weight;
        before[i] = xmalloc(sizeof(float) * w->numel);
        memcpy(before[i], w->w, sizeof(float) * w->numel);
    }
    char *path = path_join(dir, "merged.safetensors");
    SafeTensors merged = {0};
    int rc = st_open(&merged, path);
    if (rc) check_result_set(c->res, CHECK_FAIL, "%s", peft_last_error());
    Param *emb[2];  // the embedding and an untied head an embedding adapter changes (adapter_embed.c)
    int n_emb = adapter_embed_weights(set, emb);
    float *emb_before[2];
    for (int i = 0; i < n_emb; i++) {
        emb_before[i] = xmalloc(sizeof(float) * emb[i]->numel);
        memcpy(emb_before[i], emb[i]->w, sizeof(float) * emb[i]->numel);
    }
    adapters_merge(m);
    for (int i = 0; !rc && i < set->n; i++) {
        Param *w = set->adapters[i].lin->weight;
        rc = compare_with_file(c, "merged weight", &merged, w->name, w->w, w->numel, c->tol_merged);
    }
    for (int i = 0; !rc && i < m->n_params; i++)  // modules_to_save: merged, the base holds the trained copies
        if (adapter_base_to_save(&set->cfg, m->params[i].name))
            rc = compare_with_file(c, "merged module to save", &merged, m->params[i].name, m->params[i].w, m->params[i].numel, c->tol_merged);
    for (int i = 0; !rc && i < n_emb; i++) rc = compare_with_file(c, "merged weight", &merged, emb[i]->name, emb[i]->w, emb[i]->numel, c->tol_merged);
    adapters_unmerge(m);
    for (int i = 0; !rc && i < set->n; i++) {
        Param *w = set->adapters[i].lin->weight;
        rc = compare(c, "unmerged weight", w->name, w->w, before[i], w->numel, 1e-6);
    }
    for (int i = 0; !rc && i < n_emb; i++) rc = compare(c, "unmerged weight", emb[i]->name, emb[i]->w, emb_before[i], emb[i]->numel, 1e-6);
    for (int i = 0; i < set->n; i++) free(before[i]);
    for (int i = 0; i < n_emb; i++) free(emb_before[i]);
    free(before);
    st_close(&merged);
    free(path);
    model_free(m);
    return rc;
}

// Save the adapter the way we write it, load it back, and require identical logits.
static int check_save_roundtrip(Case *c, Model *m) {
    char *tmp = xasprintf("/tmp/peft-check-%d", (int)getpid());
    int rc = adapters_save(m, tmp);
    if (rc) { check_result_set(c->res, CHECK_FAIL, "saving the adapter: %s", peft_last_error()); free(tmp); return -1; }
    char *model_dir = path_join(c->dir, "model");
    Model *m2 = model_load_quantized(model_dir, c->quant, c->double_quant);
    free(model_dir);
    if (!m2 || adapters_load(m2, tmp)) { check_result_set(c->res, CHECK_FAIL, "reloading the saved adapter: %s", peft_last_error()); rc = -1; }
    if (!rc) {
        long n = case_logits(c, m);
        case_forward(c, m, false);
        float *a = xmalloc(sizeof(float) * n);
        memcpy(a, m->act.logits, sizeof(float) * n);
        case_forward(c, m2, false);
        rc = compare(c, "saved and reloaded adapter", "logits", m2->act.logits, a, n, 1e-6);
        free(a);
    }
    model_free(m2);
    char *cmd = xasprintf("rm -rf '%s'", tmp);
    if (system(cmd) != 0) rc = -1;
    free(cmd);
    free(tmp);
    return rc;
}

// A quantized case: every quantized weight, dequantized, bit for bit as the reference's ([out, in]).
static int check_dequantized(Case *c, Model *m) {
    char *path = path_join(c->dir, "dequant.safetensors");
    SafeTensors st = {0};
    int rc = st_open(&st, path);
    free(path);
    if (rc) { check_result_set(c->res, CHECK_FAIL, "%s", peft_last_error()); return -1; }
    for (int i = 0; !rc && i < m->n_linears; i++) {
        Linear *lin = &m->linears[i];
        long n = (long)lin->in * lin->out;
        float *ref = check_load_reference(c->res, "dequantized weight", &st, lin->weight->name, n);
        bool fan;
        const float *got = ref ? model_linear_weight(m, lin, &fan) : NULL;
        long at = 0;
        while (got && at < n && !memcmp(&got[at], &ref[at], sizeof(float))) at++;
        if (!ref) rc = -1;
        else if (at < n) {
            check_result_set(c->res, CHECK_FAIL, "dequantized weight %s differs from the reference at %ld: %.9g vs %.9g", lin->weight->name, at, got[at], ref[at]);
            rc = -1;
        }
        free(ref);
    }
    st_close(&st);
    return rc;
}

static void check_model_case(const char *dir, MethodId method, Case *c) {
    bool full = method == METHOD_FULL;
    Model *m = load_case_model(c, dir, !full);
    if (!m) { check_result_set(c->res, CHECK_FAIL, "%s", peft_last_error()); return; }
    if (full) model_train_all(m);
    char *io_path = path_join(dir, "io.safetensors");
    SafeTensors io = {0};
    // A quantized base: its dequantized weights, the step, the saved adapter (merging into it is peft merge's).
    if (st_open(&io, io_path)) check_result_set(c->res, CHECK_FAIL, "%s", peft_last_error());
    else if (c->quant) { if (!check_dequantized(c, m) && !check_training_step(c, m, &io)) check_save_roundtrip(c, m); }
    else if (!check_training_step(c, m, &io) && !full && !check_merge(c, dir)) check_save_roundtrip(c, m);
    st_close(&io);
    free(io_path);
    model_free(m);
}

// A case made with init_lora_weights (init.safetensors): PEFT's initial values too (lora_init.c).
static void check_initialisation(const char *dir, const cJSON *j, CheckResult *res) {
    char *path = path_join(dir, "init.safetensors");
    bool has = file_exists(path);
    free(path);
    if (!has || res->status != CHECK_PASS) return;
    char msg[1024];
    double err = 0;
    if (lora_init_check_case(dir, j, &err, msg, sizeof msg)) check_result_set(res, CHECK_FAIL, "%s", msg);
    if (err > res->max_rel_err) res->max_rel_err = err;
}

void check_case(const char *dir_in, CheckResult *res) {
    memset(res, 0, sizeof *res);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", dir_in);
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') dir[--len] = 0;
    const char *base = strrchr(dir, '/');
    snprintf(res->name, sizeof res->name, "%s", base ? base + 1 : dir);
    res->status = CHECK_PASS;
    if (!dir_exists(dir)) { check_result_set(res, CHECK_FAIL, "%s: no such folder", dir); return; }

    char *cases = path_join(dir, "cases.jsonl"), *case_json = path_join(dir, "case.json");
    bool tokenizer_case = file_exists(cases), model_case = file_exists(case_json);
    free(cases);
    free(case_json);
    if (tokenizer_case) {
        int n = 0;
        char first[512] = "";
        int failures = tokenizer_check_cases(dir, &n, first, sizeof first);
        if (failures < 0) check_result_set(res, CHECK_FAIL, "%s", peft_last_error());
        else if (failures > 0) check_result_set(res, CHECK_FAIL, "%d of %d tokenizer cases differ; first: %s", failures, n, first);
        return;
    }
    if (!model_case) { check_result_set(res, CHECK_SKIP, "%s: not a reference case (no case.json or cases.jsonl)", dir); return; }
    Case c = {.dir = dir, .res = res};
    cJSON *j = NULL;
    if (read_case(&c, dir, &j)) { check_result_set(res, CHECK_FAIL, "%s", peft_last_error()); return; }
    if (read_quantization(&c, j, dir)) { check_result_set(res, CHECK_FAIL, "%s", peft_last_error()); cJSON_Delete(j); return; }
    const cJSON *method = cJSON_GetObjectItem(j, "method"), *task = cJSON_GetObjectItem(j, "task");
    const char *mname = cJSON_IsString(method) ? method->valuestring : "";
    if (task && !(cJSON_IsString(task) && (!strcmp(task->valuestring, "seq_cls") || !strcmp(task->valuestring, "causal_lm")))) {
        check_result_set(res, CHECK_FAIL, "%s/case.json: task must be \"causal_lm\" or \"seq_cls\"", dir);
        cJSON_Delete(j);
        return;
    }
    c.classify = task && !strcmp(task->valuestring, "seq_cls");
    MethodId id;
    char names[128];
    if (!strcmp(mname, "adalora-schedule")) {
        char msg[1024] = "";
        double err = 0;
        if (adalora_check_schedule(dir, j, &err, msg, sizeof msg)) check_result_set(res, CHECK_FAIL, "%s", msg);
        res->max_rel_err = err;
    } else if (!strcmp(mname, "lora-arithmetic")) {
        char msg[1024] = "";
        double err = 0;
        if (lora_combine_check_case(dir, j, &err, msg, sizeof msg)) check_result_set(res, CHECK_FAIL, "%s", msg);
        res->max_rel_err = err;
    } else if (!method_parse(mname, &id)) {
        check_model_case(dir, id, &c);
        check_initialisation(dir, j, res);
    } else check_result_set(res, CHECK_FAIL, "%s/case.json: unknown method \"%s\" (%s, adalora-schedule, lora-arithmetic)", dir, mname,
                          method_names(names, sizeof names, ", ", ", ", LIST_NAMES));
    free(c.ids);
    free(c.labels);
    free(c.mask);
    free(c.types);
    free(c.targets);
    cJSON_Delete(j);
}
