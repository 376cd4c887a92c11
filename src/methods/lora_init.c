// lora_init.c: see lora_init.h. PEFT 0.21's LoraLayer.update_layer creates lora_A = nn.Linear(in, r)
// and lora_B = nn.Linear(r, out) (each constructor draws Kaiming-uniform values from torch's global
// generator), then reset_lora_parameters / pissa_init / olora_init. The decompositions are LAPACK's,
// in double; PEFT's run in float32, so the values agree to float32 rounding (and singular vectors up
// to a sign per rank, which the product B A and the residual do not see).
#include "lora_init.h"
#include "check.h"
#include "linalg.h"
#include "model.h"
#include "safetensors.h"
#include "torch_rng.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The set's generator and, for PiSSA / OLoRA, every module's initial A0 and B0 (for the conversion).
typedef struct {
    TorchGen gen;
    float **A0, **B0;  // [set->n], NULL once the set was loaded from a file
} LoraState;

static const char *const REFUSED[][2] = {
    {"loftq", "LoftQ needs a quantized base and loftq_config"},
    {"eva", "EVA initialises from activations of a data pass (eva_config)"},
    {"corda", "CorDA initialises from covariance statistics of a data pass (corda_config)"},
    {"orthogonal", "PEFT's orthogonal initialisation"},
};

int lora_init_parse(AdapterConfig *c, const char *text, const char *where) {
    c->init_niter = 0;
    if (!strcmp(text, "true")) c->init = LORA_INIT_TRUE;
    else if (!strcmp(text, "false")) c->init = LORA_INIT_FALSE;
    else if (!strcasecmp(text, "gaussian")) c->init = LORA_INIT_GAUSSIAN;  // PEFT: init_lora_weights.lower()
    else if (!strcmp(text, "pissa")) c->init = LORA_INIT_PISSA;
    else if (!strcasecmp(text, "olora")) c->init = LORA_INIT_OLORA;
    else if (!strncmp(text, "pissa_niter_", 12)) {
        // PEFT: int(text.split("_niter_")[-1]); a negative count runs no power iteration in torch.
        char *end;
        long k = strtol(text + 12, &end, 10);
        if (end == text + 12 || *end || k < 0 || k > 1000)
            return peft_fail("%s: init_lora_weights \"%s\": the count after pissa_niter_ must be an integer in [0, 1000]", where, text);
        c->init = LORA_INIT_PISSA_NITER;
        c->init_niter = (int)k;
    } else {
        for (size_t i = 0; i < sizeof REFUSED / sizeof *REFUSED; i++)
            if (!strcasecmp(text, REFUSED[i][0]))
                return peft_fail("%s: init_lora_weights \"%s\" is not supported (%s)", where, text, REFUSED[i][1]);
        return peft_fail("%s: init_lora_weights \"%s\" is not one of true, false, gaussian, pissa, pissa_niter_K, olora", where, text);
    }
    return 0;
}

const char *lora_init_text(const AdapterConfig *c, char *buf, size_t cap) {
    static const char *const names[] = {"true", "false", "gaussian", "pissa", NULL, "olora"};
    if (c->init == LORA_INIT_PISSA_NITER) snprintf(buf, cap, "pissa_niter_%d", c->init_niter);
    else snprintf(buf, cap, "%s", names[c->init]);
    return buf;
}

void *lora_init_json(const AdapterConfig *c) {
    if (c->init == LORA_INIT_TRUE || c->init == LORA_INIT_FALSE) return cJSON_CreateBool(c->init == LORA_INIT_TRUE);
    char buf[32];
    return cJSON_CreateString(lora_init_text(c, buf, sizeof buf));
}

bool lora_init_changes_base(const AdapterConfig *c) {
    return c->init == LORA_INIT_PISSA || c->init == LORA_INIT_PISSA_NITER || c->init == LORA_INIT_OLORA;
}

static LoraState *state(AdapterSet *set, uint64_t seed) {
    LoraState *s = set->method_state;
    if (s) return s;
    s = set->method_state = xcalloc(1, sizeof *s);
    torch_gen_seed(&s->gen, seed);  // torch.manual_seed(seed)
    if (lora_init_changes_base(&set->cfg)) {
        s->A0 = xcalloc(set->n, sizeof(float *));
        s->B0 = xcalloc(set->n, sizeof(float *));
    }
    return s;
}

static void drop_initial(LoraState *s, int n) {
    for (int i = 0; s->A0 && i < n; i++) {
        free(s->A0[i]);
        free(s->B0[i]);
    }
    free(s->A0);
    free(s->B0);
    s->A0 = s->B0 = NULL;
}

void lora_init_free_state(AdapterSet *set) {
    LoraState *s = set->method_state;
    if (!s) return;
    drop_initial(s, set->n);
    free(s);
    set->method_state = NULL;
}

TorchGen *lora_init_generator(AdapterSet *set) {
    LoraState *s = set->method_state;
    return s ? &s->gen : NULL;
}

int lora_init_after_load(AdapterSet *set, const void *file, const char *path) {
    if (set->method_state) drop_initial(set->method_state, set->n);
    return 0;
}

// The module's weight as [out, in] in double (transposed from GPT-2's Conv1D [in, out] when transpose).
static double *weight_out_in(const Linear *lin, bool transpose) {
    int in = lin->in, out = lin->out;
    double *W = xmalloc(sizeof(double) * in * out);
    const float *w = lin->weight->w;
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) W[(long)o * in + i] = transpose ? w[(long)i * out + o] : w[(long)o * in + i];
    return W;
}

// Row-major C[m,n] = A[m,k] B[k,n] in double (small matrices).
static void dgemm_nn(int m, int n, int k, const double *A, const double *B, double *C) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int l = 0; l < k; l++) s += A[(long)i * k + l] * B[(long)l * n + j];
            C[(long)i * n + j] = s;
        }
}

static double *transposed(const double *A, int m, int n) {
    double *T = xmalloc(sizeof(double) * m * n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) T[(long)j * m + i] = A[(long)i * n + j];
    return T;
}

// Q of the reduced QR of X[m,q] (torch.linalg.qr(X).Q), replacing X.
static int qr_q(double *X, int m, int q) {
    double *Q = xmalloc(sizeof(double) * m * q), *R = xmalloc(sizeof(double) * q * q);
    int rc = linalg_qr(m, q, X, Q, R);
    if (!rc) memcpy(X, Q, sizeof(double) * m * q);
    free(Q);
    free(R);
    return rc;
}

// torch.svd_lowrank(W[m,n], q, niter) (Halko et al.'s algorithm 5.1 as torch._lowrank writes it): a
// tall matrix (W itself, or W^T when m < n), a Gaussian test matrix R [cols, q] from randn on the
// generator, niter power iterations with a QR after each product, then the SVD of Q^T A. Returns
// U [m,q], S [q], V [n,q] of W.
static int svd_lowrank(TorchGen *g, const double *W, int m, int n, int q, int niter, double *U, double *S, double *V) {
    bool wide = m < n;
    int M = wide ? n : m, N = wide ? m : n;  // A = W or W^T, [M, N] with M >= N
    double *A = wide ? transposed(W, m, n) : xmalloc(sizeof(double) * m * n);
    if (!wide) memcpy(A, W, sizeof(double) * m * n);
    double *At = transposed(A, M, N);
    float *Rf = xmalloc(sizeof(float) * N * q);
    torch_normal_(g, Rf, (size_t)N * q, 0.0, 1.0);  // torch.randn(N, q): float32, the default dtype
    double *R = xmalloc(sizeof(double) * N * q), *X = xmalloc(sizeof(double) * M * q), *Y = xmalloc(sizeof(double) * N * q);
    for (long i = 0; i < (long)N * q; i++) R[i] = Rf[i];
    dgemm_nn(M, q, N, A, R, X);  // X = A R
    int rc = qr_q(X, M, q);
    for (int it = 0; !rc && it < niter; it++) {
        dgemm_nn(N, q, M, At, X, Y);  // A^T Q
        if ((rc = qr_q(Y, N, q))) break;
        dgemm_nn(M, q, N, A, Y, X);   // A Q
        rc = qr_q(X, M, q);
    }
    if (!rc) {
        double *Qt = transposed(X, M, q), *Bm = xmalloc(sizeof(double) * q * N);
        dgemm_nn(q, N, M, Qt, A, Bm);  // B = Q^T A [q, N]
        double *Ub = xmalloc(sizeof(double) * q * q), *Vt = xmalloc(sizeof(double) * q * N);
        rc = linalg_svd(q, N, Bm, Ub, S, Vt);
        if (!rc) {
            double *UA = xmalloc(sizeof(double) * M * q), *VA = transposed(Vt, q, N);  // [M,q], [N,q]
            dgemm_nn(M, q, q, X, Ub, UA);
            // Of W: swap back when A was W^T.
            memcpy(U, wide ? VA : UA, sizeof(double) * m * q);
            memcpy(V, wide ? UA : VA, sizeof(double) * n * q);
            free(UA);
            free(VA);
        }
        free(Qt);
        free(Bm);
        free(Ub);
        free(Vt);
    }
    free(A);
    free(At);
    free(Rf);
    free(R);
    free(X);
    free(Y);
    return rc;
}

// PiSSA: W [out,in] = U S V^T; A = sqrt(S_r / s) V_r^T, B = U_r sqrt(S_r / s).
static int pissa(Adapter *a, TorchGen *g, const double *W, double *A, double *B) {
    int in = a->lin->in, out = a->lin->out, r = a->r, k = out < in ? out : in;
    double *U = xmalloc(sizeof(double) * out * k), *S = xmalloc(sizeof(double) * k), *V = xmalloc(sizeof(double) * in * k);
    int rc;
    if (a->set->cfg.init == LORA_INIT_PISSA) {
        double *Wc = xmalloc(sizeof(double) * out * in), *Vt = xmalloc(sizeof(double) * k * in);
        memcpy(Wc, W, sizeof(double) * out * in);
        rc = linalg_svd(out, in, Wc, U, S, Vt);
        // Keep the first r columns of U and rows of V^T as [out,r] and [r,in].
        for (int o = 0; !rc && o < out; o++) memmove(U + (long)o * r, U + (long)o * k, sizeof(double) * r);
        memcpy(V, Vt, sizeof(double) * r * in);  // V holds V_r^T here
        free(Wc);
        free(Vt);
    } else {
        double *Vq = xmalloc(sizeof(double) * in * r);
        rc = svd_lowrank(g, W, out, in, r, a->set->cfg.init_niter, U, S, Vq);
        if (!rc) {
            double *t = transposed(Vq, in, r);
            memcpy(V, t, sizeof(double) * r * in);
            free(t);
        }
        free(Vq);
    }
    for (int j = 0; !rc && j < r; j++) {
        double sq = sqrt(S[j] / a->scaling);
        for (int i = 0; i < in; i++) A[(long)j * in + i] = sq * V[(long)j * in + i];
        for (int o = 0; o < out; o++) B[(long)o * r + j] = U[(long)o * r + j] * sq;
    }
    free(U);
    free(S);
    free(V);
    return rc;
}

// OLoRA: W [out,in] = Q R; A = R[:r], B = Q[:, :r].
static int olora(Adapter *a, const double *W, double *A, double *B) {
    int in = a->lin->in, out = a->lin->out, r = a->r, k = out < in ? out : in;
    double *Wc = xmalloc(sizeof(double) * out * in), *Q = xmalloc(sizeof(double) * out * k), *R = xmalloc(sizeof(double) * k * in);
    memcpy(Wc, W, sizeof(double) * out * in);
    int rc = linalg_qr(out, in, Wc, Q, R);
    for (int o = 0; !rc && o < out; o++) memcpy(B + (long)o * r, Q + (long)o * k, sizeof(double) * r);
    if (!rc) memcpy(A, R, sizeof(double) * r * in);
    free(Wc);
    free(Q);
    free(R);
    return rc;
}

// PiSSA / OLoRA: A, B from the base weight, which becomes W - s B A (from the float32 A and B).
static int decompose(Adapter *a, LoraState *s) {
    Linear *lin = a->lin;
    const AdapterConfig *c = &a->set->cfg;
    int in = lin->in, out = lin->out, r = a->r, k = out < in ? out : in;
    const char *name = c->init == LORA_INIT_OLORA ? "OLoRA" : "PiSSA";
    if (a->set->model->adapters != a->set)
        return peft_fail("%s: init_lora_weights %s changes the base weights, so an adapter served beside others on one base cannot use it "
                         "(save it converted to plain LoRA: peft train does)", lin->module, name);
    if (lin->q) return peft_fail("%s: %s on a quantized base is not implemented (PEFT decomposes the dequantized weight)", lin->module, name);
    // PEFT's olora_init decomposes the weight as stored: Conv1D's [in, out] gives lora_A and lora_B shapes its forward cannot use.
    if (c->init == LORA_INIT_OLORA && lin->fan_in_fan_out)
        return peft_fail("%s: OLoRA on a Conv1D layer (fan_in_fan_out, GPT-2) is refused: PEFT 0.21's olora_init decomposes the "
                         "stored [in, out] weight, and the lora_A / lora_B it makes do not fit the layer", lin->module);
    if (r > k) return peft_fail("%s: %s needs r <= min(in, out) = %d (r is %d)", lin->module, name, k, r);
    param_release_bf16(lin->weight);  // W changes below: no longer bf16
    double *W = weight_out_in(lin, lin->fan_in_fan_out);
    double *A = xmalloc(sizeof(double) * r * in), *B = xmalloc(sizeof(double) * out * r);
    int rc = c->init == LORA_INIT_OLORA ? olora(a, W, A, B) : pissa(a, &s->gen, W, A, B);
    if (!rc) {
        long idx = a - a->set->adapters;
        for (long i = 0; i < (long)r * in; i++) a->A->w[i] = (float)A[i];
        for (long i = 0; i < (long)out * r; i++) a->B->w[i] = (float)B[i];
        s->A0[idx] = xmalloc(sizeof(float) * r * in);
        s->B0[idx] = xmalloc(sizeof(float) * out * r);
        memcpy(s->A0[idx], a->A->w, sizeof(float) * r * in);
        memcpy(s->B0[idx], a->B->w, sizeof(float) * out * r);
        float *w = lin->weight->w;
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++) {
                double d = 0;
                for (int j = 0; j < r; j++) d += (double)a->B->w[(long)o * r + j] * a->A->w[(long)j * in + i];
                long wi = lin->fan_in_fan_out ? (long)i * out + o : (long)o * in + i;
                w[wi] = (float)((double)w[wi] - a->scaling * d);
            }
    }
    free(W);
    free(A);
    free(B);
    return rc;
}

int lora_init_module(AdapterSet *set, Adapter *a, uint64_t seed) {
    LoraState *s = state(set, seed);
    int in = a->lin->in, out = a->lin->out, r = a->r;
    // nn.Linear(in, r) and nn.Linear(r, out): reset_parameters() draws kaiming_uniform_(a=sqrt(5)).
    torch_kaiming_uniform_(&s->gen, a->A->w, a->A->numel, sqrt(5.0), in);
    torch_kaiming_uniform_(&s->gen, a->B->w, a->B->numel, sqrt(5.0), r);
    switch (set->cfg.init) {
    case LORA_INIT_FALSE: return 0;  // PEFT leaves both as drawn
    case LORA_INIT_TRUE: torch_kaiming_uniform_(&s->gen, a->A->w, a->A->numel, sqrt(5.0), in); break;
    case LORA_INIT_GAUSSIAN: torch_normal_(&s->gen, a->A->w, a->A->numel, 0.0, 1.0 / r); break;
    default: return decompose(a, s);
    }
    memset(a->B->w, 0, sizeof(float) * a->B->numel);
    (void)out;
    return 0;
}

int lora_init_save(AdapterSet *set, void *writer, void *config_json) {
    StWriter *w = writer;
    LoraState *s = set->method_state;
    if (!s || !s->A0) {  // (adapters_save writes the base parameters the set trains, the last n_base)
        for (int i = 0; i < set->n_params - set->n_base; i++) {
            const Param *p = set->params[i];
            st_writer_add_f32(w, p->name, p->ndim, p->shape, p->w);
        }
        return 0;
    }
    for (int i = 0; i < set->n; i++) {
        const Adapter *a = &set->adapters[i];
        int in = a->lin->in, out = a->lin->out, r = a->r;
        float *A = xmalloc(sizeof(float) * 2 * r * in), *B = xmalloc(sizeof(float) * out * 2 * r);
        memcpy(A, a->A->w, sizeof(float) * r * in);
        memcpy(A + (long)r * in, s->A0[i], sizeof(float) * r * in);
        for (int o = 0; o < out; o++)
            for (int j = 0; j < r; j++) {
                B[(long)o * 2 * r + j] = a->B->w[(long)o * r + j];
                B[(long)o * 2 * r + r + j] = -s->B0[i][(long)o * r + j];
            }
        int64_t sa[2] = {2 * r, in}, sb[2] = {out, 2 * r};
        st_writer_add_f32(w, a->A->name, 2, sa, A);
        st_writer_add_f32(w, a->B->name, 2, sb, B);
        free(A);
        free(B);
    }
    cJSON *j = config_json;
    double alpha = set->cfg.alpha * (set->cfg.use_rslora ? sqrt(2.0) : 2.0);
    cJSON_ReplaceItemInObject(j, "r", cJSON_CreateNumber(2.0 * set->cfg.r));
    cJSON_ReplaceItemInObject(j, "lora_alpha", cJSON_CreateNumber(alpha));
    cJSON_ReplaceItemInObject(j, "init_lora_weights", cJSON_CreateTrue());
    return 0;
}

// ---- the init reference cases ----

typedef struct {
    double worst;
    char *msg;
    size_t cap;
} CaseCheck;

static int case_within(CaseCheck *k, const char *what, const char *name, double e, double tol) {
    if (e > k->worst || isnan(e)) k->worst = e;
    if (e <= tol) return 0;
    snprintf(k->msg, k->cap, "%s %s: relative error %.3g > %.1g", what, name, e, tol);
    return -1;
}

static float *case_tensor(CaseCheck *k, const SafeTensors *st, const char *name, long n) {
    const StTensor *t = st_find(st, name);
    float *v = t && t->numel == n ? xmalloc(sizeof(float) * (n ? n : 1)) : NULL;
    if (!v || st_to_f32(t, v)) {
        snprintf(k->msg, k->cap, "%s: no tensor %s of %ld values", st->path, name, n);
        free(v);
        return NULL;
    }
    return v;
}

// A [r,in] and B [out,r] against the reference; a decomposition's factors may differ by a sign per rank
// (singular vectors, QR columns), which flips row j of A and column j of B together.
static int compare_factors(CaseCheck *k, const Adapter *a, const float *refA, const float *refB, bool up_to_sign, double tol) {
    int in = a->lin->in, out = a->lin->out, r = a->r;
    float *A = xmalloc(sizeof(float) * r * in), *B = xmalloc(sizeof(float) * out * r);
    memcpy(A, a->A->w, sizeof(float) * r * in);
    memcpy(B, a->B->w, sizeof(float) * out * r);
    for (int j = 0; up_to_sign && j < r; j++) {
        double d = 0;
        for (int i = 0; i < in; i++) d += (double)A[(long)j * in + i] * refA[(long)j * in + i];
        if (d >= 0) continue;
        for (int i = 0; i < in; i++) A[(long)j * in + i] = -A[(long)j * in + i];
        for (int o = 0; o < out; o++) B[(long)o * r + j] = -B[(long)o * r + j];
    }
    int rc = case_within(k, "initial", a->A->name, rel_error(A, refA, (long)r * in), tol);
    if (!rc) rc = case_within(k, "initial", a->B->name, rel_error(B, refB, (long)out * r), tol);
    free(A);
    free(B);
    return rc;
}

// The logits of model/ with the adapter folder adapter_dir against io's.
static int logits_with(CaseCheck *k, const char *dir, const char *adapter_dir, const char *what, const int32_t *ids, int Bn, int T,
                       const float *ref, double tol) {
    char *model_dir = path_join(dir, "model");
    Model *m = model_load(model_dir);
    free(model_dir);
    int rc = -1;
    if (!m || adapters_load(m, adapter_dir)) snprintf(k->msg, k->cap, "%s: %s", what, peft_last_error());
    else if (!isnan(model_forward(m, ids, NULL, Bn, T)))
        rc = case_within(k, what, "logits", rel_error(m->act.logits, ref, (long)Bn * T * m->cfg.vocab_size), tol);
    model_free(m);
    return rc;
}

// The adapter file's ("trained") tensors on m's set, which keeps its initial A0 and B0.
static int load_trained(CaseCheck *k, AdapterSet *set, const char *dir) {
    char *path = path_join(dir, "adapter/adapter_model.safetensors");
    SafeTensors st = {0};
    int rc = st_open(&st, path) ? -1 : 0;
    if (rc) snprintf(k->msg, k->cap, "%s", peft_last_error());
    for (int i = 0; !rc && i < set->n_params; i++) {
        float *v = case_tensor(k, &st, set->params[i]->name, set->params[i]->numel);
        if (!v) rc = -1;
        else memcpy(set->params[i]->w, v, sizeof(float) * set->params[i]->numel);
        free(v);
    }
    st_close(&st);
    free(path);
    return rc;
}

// The adapter as trained, three ways. adapter/ loaded on model/ as PEFT's reference run loads it (the
// decomposition again, from the generator at load_seed, peft.c's loader's 0) against io's logits; then the
// tensors on this run's residual (from init_seed), which the converted adapters (ours saved now, PEFT's
// converted/) must give on the original base. pissa_niter_K's residual depends on the generator's draws, so
// the two residuals differ there, and each is compared with the logits of its own draws.
static int check_conversion(CaseCheck *k, const char *dir, Model *m) {
    char *io_path = path_join(dir, "io.safetensors"), *conv = path_join(dir, "converted"), *adapter = path_join(dir, "adapter");
    char *tmp = xasprintf("/tmp/peft-check-converted-%d", (int)getpid());
    SafeTensors io = {0};
    int32_t *ids = NULL;
    float *ref = NULL, *trained = NULL;
    long n = 0;
    int Bn = 0, T = 0, rc = st_open(&io, io_path) || check_read_ids(&io, "input_ids", &ids, &Bn, &T) ? -1 : 0;
    if (rc) snprintf(k->msg, k->cap, "%s", peft_last_error());
    if (!rc && !(ref = case_tensor(k, &io, "logits", n = (long)Bn * T * m->cfg.vocab_size))) rc = -1;
    if (!rc) rc = logits_with(k, dir, adapter, "adapter/ loaded on model/ (decomposed from the load_seed generator)", ids, Bn, T, ref, 1e-4);
    if (!rc) rc = load_trained(k, m->adapters, dir);
    if (!rc && isnan(model_forward(m, ids, NULL, Bn, T))) { snprintf(k->msg, k->cap, "forward: %s", peft_last_error()); rc = -1; }
    if (!rc) memcpy(trained = xmalloc(sizeof(float) * n), m->act.logits, sizeof(float) * n);
    if (!rc && adapters_save(m, tmp)) { snprintf(k->msg, k->cap, "saving converted: %s", peft_last_error()); rc = -1; }
    if (!rc) rc = logits_with(k, dir, tmp, "our converted adapter on the original base, against the adapter on our init_seed residual", ids, Bn, T, trained, 1e-4);
    if (!rc) rc = logits_with(k, dir, conv, "PEFT's converted adapter on the original base, against the adapter on our init_seed residual", ids, Bn, T, trained, 1e-4);
    // The two converted configs agree on rank and alpha (PEFT's r * 2, lora_alpha * 2 or * sqrt 2).
    AdapterConfig ours, theirs;
    char *ours_path = path_join(tmp, "adapter_config.json"), *theirs_path = path_join(conv, "adapter_config.json");
    if (!rc && !adapter_config_load(&ours, ours_path)) {
        if (!adapter_config_load(&theirs, theirs_path)) {
            if (ours.r != theirs.r || fabsf(ours.alpha - theirs.alpha) > 1e-5f * theirs.alpha || ours.init != theirs.init) {
                snprintf(k->msg, k->cap, "converted config: r %d, lora_alpha %g here; PEFT's r %d, lora_alpha %g", ours.r, ours.alpha, theirs.r, theirs.alpha);
                rc = -1;
            }
            adapter_config_free(&theirs);
        } else rc = -1;
        adapter_config_free(&ours);
    } else if (!rc) rc = -1;
    if (rc && !k->msg[0]) snprintf(k->msg, k->cap, "%s", peft_last_error());
    char *cmd = xasprintf("rm -rf '%s'", tmp);
    if (system(cmd) != 0) rc = -1;
    free(cmd);
    free(ours_path);
    free(theirs_path);
    st_close(&io);
    free(ids);
    free(ref);
    free(trained);
    free(io_path);
    free(conv);
    free(adapter);
    free(tmp);
    return rc;
}

int lora_init_check_case(const char *dir, const void *case_json, double *max_err, char *msg, size_t cap) {
    CaseCheck k = {.msg = msg, .cap = cap};
    msg[0] = 0;
    const cJSON *seed = cJSON_GetObjectItem(case_json, "init_seed"), *load_seed = cJSON_GetObjectItem(case_json, "load_seed");
    char *model_dir = path_join(dir, "model"), *cfg_path = path_join(dir, "adapter/adapter_config.json"), *init_path = path_join(dir, "init.safetensors");
    char *conv = path_join(dir, "converted");
    AdapterConfig cfg;
    SafeTensors st = {0};
    Model *m = NULL;
    int rc = -1;
    if (!cJSON_IsNumber(seed)) snprintf(msg, cap, "%s/case.json: no init_seed", dir);
    else if (load_seed && !(cJSON_IsNumber(load_seed) && load_seed->valuedouble == 0))
        snprintf(msg, cap, "%s/case.json: load_seed must be 0, the generator seed peft.c's loader decomposes with", dir);
    else if (adapter_config_load(&cfg, cfg_path)) snprintf(msg, cap, "%s", peft_last_error());
    else {
        if (!(m = model_load(model_dir)) || adapters_attach(m, &cfg, (uint64_t)seed->valuedouble) || st_open(&st, init_path))
            snprintf(msg, cap, "%s", peft_last_error());
        else rc = 0;
        adapter_config_free(&cfg);
    }
    bool decomposed = m && m->adapters && lora_init_changes_base(&m->adapters->cfg);
    for (int i = 0; !rc && i < m->adapters->n; i++) {
        const Adapter *a = &m->adapters->adapters[i];
        Param *w = a->lin->weight;
        float *refA = case_tensor(&k, &st, a->A->name, a->A->numel), *refB = refA ? case_tensor(&k, &st, a->B->name, a->B->numel) : NULL;
        float *refW = refB ? case_tensor(&k, &st, w->name, w->numel) : NULL;
        rc = !refW ? -1 : compare_factors(&k, a, refA, refB, decomposed, decomposed ? 1e-4 : 1e-6);
        if (!rc) rc = case_within(&k, "base weight after the initialisation", w->name, rel_error(w->w, refW, w->numel), decomposed ? 1e-4 : 0);
        free(refA);
        free(refB);
        free(refW);
    }
    if (!rc && decomposed && dir_exists(conv)) rc = check_conversion(&k, dir, m);
    st_close(&st);
    model_free(m);
    free(model_dir);
    free(cfg_path);
    free(init_path);
    free(conv);
    *max_err = k.worst;
    return rc;
}
