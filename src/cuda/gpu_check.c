// gpu_check.c: an HF PEFT reference case run on the GPU (the layout check.c reads: model/,
// adapter/, case.json, io/grads/step.safetensors). fp32 mode holds the case's own tolerances for
// logits, loss, gradients and one AdamW step. bf16 mode (the bf16 criteria) holds the loss
// to 1e-2 relative and the gradient (all trainable tensors as one vector) to cosine similarity
// >= 0.999, each tensor's own cosine to >= 0.99, the logits to 5e-2, and reports the rest: on the
// tiny reference models a few small tensors whose gradient is a sum with cancellation (a key
// projection's LoRA B, AdaLoRA's E) land between 0.998 and 0.999 with bf16 weights.
#include "adapter.h"
#include "gpu.h"
#include "model.h"
#include "safetensors.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    CheckResult *res;
    double tol_logits, tol_grads, tol_step;
    float lr, beta1, beta2, eps, wd;
    bool bf16;
    double min_cos, ab, aa, bb;  // worst tensor cosine; sums for the global one
    char min_name[256];
} GCase;

static double cosine(const float *a, const float *b, long n) {
    double ab = 0, aa = 0, bb = 0;
    for (long i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    if (aa == 0 && bb == 0) return 1.0;
    if (aa == 0 || bb == 0 || !isfinite(ab)) return 0.0;
    return ab / sqrt(aa * bb);
}

// Loads the reference tensor `name` from st and compares it with got. mode 0: relative error
// <= tol; mode 1: cosine similarity >= tol; mode 2: relative error, recorded but never failing.
static int compare_ref(GCase *c, const char *what, const SafeTensors *st, const char *name, const float *got, long n, double tol, int mode) {
    float *ref = check_load_reference(c->res, what, st, name, n);
    if (!ref) return -1;
    int rc = 0;
    if (mode == 1) {
        double cs = cosine(got, ref, n);
        if (cs < c->min_cos) { c->min_cos = cs; snprintf(c->min_name, sizeof c->min_name, "%s", name); }
        for (long i = 0; i < n; i++) { c->ab += (double)got[i] * ref[i]; c->aa += (double)got[i] * got[i]; c->bb += (double)ref[i] * ref[i]; }
        if (!(cs >= tol)) { check_result_set(c->res, CHECK_FAIL, "%s %s: cosine similarity %.6f < %.3f", what, name, cs, tol); rc = -1; }
    } else {
        double e = rel_error(got, ref, n);
        if (mode == 0 && (e > c->res->max_rel_err || isnan(e))) c->res->max_rel_err = e;
        if (mode == 0 && !(e <= tol)) { check_result_set(c->res, CHECK_FAIL, "%s %s: relative error %.3g > %.1g", what, name, e, tol); rc = -1; }
    }
    free(ref);
    return rc;
}

static double num(const cJSON *o, const char *key, double dflt) {
    const cJSON *v = o ? cJSON_GetObjectItem(o, key) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static void run_case(GCase *c, const char *dir, bool full) {
    CheckResult *r = c->res;
    char *model_dir = path_join(dir, "model"), *adapter_dir = path_join(dir, "adapter");
    char *io_path = path_join(dir, "io.safetensors"), *grads_path = path_join(dir, "grads.safetensors");
    char *step_path = path_join(dir, "step.safetensors");
    SafeTensors io = {0}, grads = {0}, step = {0};
    int32_t *ids = NULL, *labels = NULL;
    GpuModel *g = NULL;
    float *logits = NULL;
    Model *m = model_load(model_dir);
    if (!m || (!full && adapters_load(m, adapter_dir))) { check_result_set(r, CHECK_FAIL, "%s", peft_last_error()); goto out; }
    if (full) model_train_all(m);
    int B, T, B2, T2;
    if (st_open(&io, io_path) || st_open(&grads, grads_path) || st_open(&step, step_path) || check_read_ids(&io, "input_ids", &ids, &B, &T) ||
        check_read_ids(&io, "labels", &labels, &B2, &T2)) {
        check_result_set(r, CHECK_FAIL, "%s", peft_last_error());
        goto out;
    }
    GpuOptions opt = {.precision = c->bf16 ? GPU_BF16 : GPU_FP32};
    g = gpu_model_create(m, &opt);
    if (!g) { check_result_set(r, CHECK_FAIL, "%s", peft_last_error()); goto out; }
    // logits
    long nl = (long)B * T * m->cfg.vocab_size;
    logits = xmalloc(sizeof(float) * nl);
    if (isnan(gpu_forward(g, ids, NULL, B, T)) || gpu_get_logits(g, logits)) { check_result_set(r, CHECK_FAIL, "%s", peft_last_error()); goto out; }
    if (compare_ref(c, "logits", &io, "logits", logits, nl, c->bf16 ? 5e-2 : c->tol_logits, 0)) goto out;
    // loss
    double loss = gpu_forward(g, ids, labels, B, T);
    if (isnan(loss)) { check_result_set(r, CHECK_FAIL, "%s", peft_last_error()); goto out; }
    float got = (float)loss;
    if (compare_ref(c, "loss", &io, "lm_loss", &got, 1, c->bf16 ? 1e-2 : c->tol_logits, 0)) goto out;
    // gradients
    gpu_zero_grad(g);
    if (gpu_backward(g) || gpu_download_trainables(g, true)) { check_result_set(r, CHECK_FAIL, "%s", peft_last_error()); goto out; }
    Param **params;
    int n = model_trainable(m, &params);
    if (grads.n != n) { check_result_set(r, CHECK_FAIL, "gradients: the reference has %d trainable tensors, we have %d", grads.n, n); goto out; }
    for (int i = 0; i < n; i++)
        if (compare_ref(c, "gradient", &grads, params[i]->name, params[i]->grad, params[i]->numel, c->bf16 ? 0.99 : c->tol_grads, c->bf16 ? 1 : 0))
            goto out;
    if (c->bf16) {
        double cs = (c->aa == 0 && c->bb == 0) ? 1.0 : (c->aa == 0 || c->bb == 0) ? 0.0 : c->ab / sqrt(c->aa * c->bb);
        if (!(cs >= 0.999)) { check_result_set(r, CHECK_FAIL, "gradients: cosine similarity %.6f < 0.999 (all %d tensors as one vector)", cs, n); goto out; }
        c->ab = cs;  // kept for the report
    }
    // one AdamW step
    if (gpu_adamw_step(g, c->lr, c->beta1, c->beta2, c->eps, c->wd) || gpu_download_trainables(g, false)) {
        check_result_set(r, CHECK_FAIL, "%s", peft_last_error());
        goto out;
    }
    for (int i = 0; i < n; i++)
        if (compare_ref(c, "AdamW step", &step, params[i]->name, params[i]->w, params[i]->numel, c->tol_step, c->bf16 ? 2 : 0)) goto out;
out:
    gpu_model_free(g);
    model_free(m);
    st_close(&io);
    st_close(&grads);
    st_close(&step);
    free(ids);
    free(labels);
    free(logits);
    free(model_dir);
    free(adapter_dir);
    free(io_path);
    free(grads_path);
    free(step_path);
}

void gpu_check_case(const char *dir_in, GpuPrecision precision, CheckResult *res) {
    memset(res, 0, sizeof *res);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", dir_in);
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') dir[--len] = 0;
    const char *base = strrchr(dir, '/');
    snprintf(res->name, sizeof res->name, "%.127s", base ? base + 1 : dir);
    res->status = CHECK_PASS;
    char why[256];
    if (!gpu_available(why, sizeof why)) { check_result_set(res, CHECK_SKIP, "no GPU: %s", why); return; }
    char *path = path_join(dir, "case.json");
    char *text = file_exists(path) ? read_file(path, NULL) : NULL;
    free(path);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!j) { check_result_set(res, CHECK_SKIP, "not a model reference case (no readable case.json)"); return; }
    const cJSON *method = cJSON_GetObjectItem(j, "method"), *tol = cJSON_GetObjectItem(j, "tolerance"), *opt = cJSON_GetObjectItem(j, "optimizer");
    const char *mname = cJSON_IsString(method) ? method->valuestring : "";
    GCase c = {.res = res, .bf16 = precision == GPU_BF16, .min_cos = 1.0};
    c.tol_logits = num(tol, "logits_rel", 1e-4);
    c.tol_grads = num(tol, "grads_rel", 1e-3);
    c.tol_step = num(tol, "step_rel", 1e-3);
    c.lr = (float)num(opt, "lr", 1e-3);
    c.eps = (float)num(opt, "eps", 1e-8);
    c.wd = (float)num(opt, "weight_decay", 0.01);
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    const cJSON *betas = opt ? cJSON_GetObjectItem(opt, "betas") : NULL;
    if (cJSON_GetArraySize(betas) == 2) {
        c.beta1 = (float)cJSON_GetArrayItem(betas, 0)->valuedouble;
        c.beta2 = (float)cJSON_GetArrayItem(betas, 1)->valuedouble;
    }
    if (!strcmp(mname, "lora") || !strcmp(mname, "full") || !strcmp(mname, "vera") || !strcmp(mname, "adalora")) {
        run_case(&c, dir, !strcmp(mname, "full"));
        if (c.bf16 && res->status == CHECK_PASS) {  // bf16: report 1 - cosine (all gradients) and the worst tensor
            res->max_rel_err = 1.0 - c.ab;
            snprintf(res->detail, sizeof res->detail, "worst tensor cosine %.6f (%s)", c.min_cos, c.min_name);
        }
    } else check_result_set(res, CHECK_SKIP, "method \"%s\" is not on the GPU yet", mname);
    cJSON_Delete(j);
}
