#include "adapter.h"
#include "kernels.h"
#include "safetensors.h"
#include "util.h"
#include <cblas.h>
#undef I
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

// ---- attaching ----

static int64_t dim_size(const Adapter *a, AdapterDim d) { return adapter_dim(d, a->r, a->lin->in, a->lin->out); }

static char *tensor_key(const Adapter *a, const AdapterTensor *t) {
    return xasprintf("base_model.model.%s.%s", a->lin->module, t->suffix);
}

// The module's tensors (zeros) and their gradients; an allocation that fails is an error.
static int create_tensors(Adapter *a) {
    AdapterSet *set = a->set;
    for (int k = 0; k < a->method->n_tensors; k++) {
        const AdapterTensor *t = &a->method->tensors[k];
        Param *p = xcalloc(1, sizeof *p);
        p->name = tensor_key(a, t);
        p->ndim = t->vector ? 1 : 2;
        p->shape[0] = dim_size(a, t->rows);
        p->shape[1] = dim_size(a, t->cols);
        p->numel = (long)(p->shape[0] * p->shape[1]);
        p->trainable = p->decay = true;
        set->params = xrealloc(set->params, sizeof(Param *) * (set->n_params + 1));
        set->params[set->n_params++] = p;  // owned by the set from here, so freed with it on failure
        *(Param **)((char *)a + t->field) = p;
        if (!(p->w = try_calloc(p->numel, sizeof(float), p->name)) || !(p->grad = try_calloc(p->numel, sizeof(float), p->name))) return -1;
    }
    return 0;
}

void adapter_ensure_capacity(Adapter *a, int N, long extra_per_row) {
    if (N <= a->cap_N) return;
    free(a->h);
    free(a->extra);
    free(a->x_drop);
    a->h = xcalloc((long)N * (a->r ? a->r : 1), sizeof(float));
    a->extra = extra_per_row ? xcalloc((long)N * extra_per_row, sizeof(float)) : NULL;
    a->x_drop = a->set->cfg.dropout > 0 ? xcalloc((long)N * a->lin->in, sizeof(float)) : NULL;
    a->cap_N = N;
}

static inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Dropout masks are a pure function of (seed, module, element): backward recomputes them.
static inline bool dropout_keep(uint64_t seed, long i, float p) {
    return (float)(splitmix64(seed ^ ((uint64_t)i * 0xD1B54A32D192ED03ull)) >> 40) * (1.0f / 16777216.0f) >= p;
}

static uint64_t adapter_dropout_seed(const Adapter *a) {
    return splitmix64(a->set->model->dropout_seed * 1000003u + (uint64_t)(a - a->set->adapters));
}

const float *adapter_dropout_input(Adapter *a, const float *x, int N, bool train) {
    float p = a->set->cfg.dropout;
    if (!train || p <= 0) return x;
    uint64_t seed = adapter_dropout_seed(a);
    float scale = 1.0f / (1.0f - p);
    long n = (long)N * a->lin->in;
#pragma omp parallel for
    for (long i = 0; i < n; i++) a->x_drop[i] = dropout_keep(seed, i, p) ? x[i] * scale : 0.0f;
    return a->x_drop;
}

static int find_rank_pattern(const AdapterConfig *c, const char *module) {
    for (int i = 0; i < c->n_rank_pattern; i++)
        if (!strcmp(c->rank_pattern[i].module, module)) return i;
    return -1;
}

// PEFT replaces "all-linear" by the names of the layers it matched before saving (a literal
// "all-linear" in a saved list would match nothing when PEFT loads it): do the same.
static void expand_all_linear(AdapterSet *set) {
    AdapterConfig *c = &set->cfg;
    bool all = false;
    for (int i = 0; i < c->n_targets; i++) all |= !strcmp(c->targets[i], "all-linear");
    if (!all) return;
    for (int i = 0; i < c->n_targets; i++) free(c->targets[i]);
    c->n_targets = 0;
    c->targets = xrealloc(c->targets, sizeof(char *) * set->n);
    for (int i = 0; i < set->n; i++) {
        const char *dot = strrchr(set->adapters[i].lin->module, '.');
        const char *leaf = dot ? dot + 1 : set->adapters[i].lin->module;
        bool seen = false;
        for (int k = 0; k < c->n_targets; k++) seen |= !strcmp(c->targets[k], leaf);
        if (!seen) c->targets[c->n_targets++] = xstrdup(leaf);
    }
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

static void set_fingerprint(AdapterSet *set) {
    if (set->cfg.type != METHOD_VERA || !set->vera_A) return;
    uint64_t h = 0xCBF29CE484222325ull;
    h = fnv1a(h, set->vera_A, sizeof(float) * (size_t)set->cfg.r * set->vera_max_in);
    h = fnv1a(h, set->vera_B, sizeof(float) * (size_t)set->vera_max_out * set->cfg.r);
    set->vera_fingerprint = h;
}

// An adapter set for m's matching linears, each with its rank, but no tensors yet (set_init makes
// them): a file's shapes can be checked against it before anything sized by the config is allocated.
// attach: also hook it into m->adapters (the training / single-adapter path); otherwise m is only read.
static AdapterSet *set_plan(Model *m, const AdapterConfig *cfg, bool attach) {
    if (attach && m->adapters) { peft_fail("the model already has an adapter"); return NULL; }
    bool seq_cls = !strcmp(cfg->task_type, "SEQ_CLS"), encoder = m->cfg.arch == ARCH_BERT;
    if (seq_cls != encoder && (seq_cls || cfg->task_type[0])) {
        peft_fail("task_type %s on %s is not supported (SEQ_CLS is for the encoders, BERT and RoBERTa; CAUSAL_LM for the decoders)",
                  cfg->task_type, m->cfg.model_type);
        return NULL;
    }
    const Method *method = method_get(cfg->type);
    if (!method) return NULL;
    if (!method->forward) { peft_fail("%s is not an adapter method", method->title); return NULL; }
    static atomic_uint_fast64_t next_uid = 1;
    AdapterSet *set = xcalloc(1, sizeof *set);
    set->uid = atomic_fetch_add(&next_uid, 1);
    set->cfg = *cfg;  // shallow: deep-copy the owned parts below
    set->cfg.targets = NULL;
    set->cfg.target_regex = NULL;
    set->cfg.n_targets = 0;
    set->cfg.base_model = cfg->base_model ? xstrdup(cfg->base_model) : NULL;
    adapter_layout_copy(&set->cfg, cfg);
    if (cfg->target_regex) set->cfg.target_regex = xstrdup(cfg->target_regex);
    for (int i = 0; i < cfg->n_targets; i++) {
        set->cfg.targets = xrealloc(set->cfg.targets, sizeof(char *) * (i + 1));
        set->cfg.targets[set->cfg.n_targets++] = xstrdup(cfg->targets[i]);
    }
    set->cfg.rank_pattern = cfg->n_rank_pattern ? xcalloc(cfg->n_rank_pattern, sizeof(RankPatternEntry)) : NULL;
    for (int i = 0; i < cfg->n_rank_pattern; i++) {  // a pattern's masks have init_r entries (adapter_config.c checks)
        set->cfg.rank_pattern[i] = cfg->rank_pattern[i];
        set->cfg.rank_pattern[i].mask = xcalloc(cfg->init_r ? cfg->init_r : 1, sizeof(bool));
        memcpy(set->cfg.rank_pattern[i].mask, cfg->rank_pattern[i].mask, sizeof(bool) * cfg->init_r);
    }
    set->model = m;
    if (attach) m->adapters = set;
    if (cfg->r <= 0) { adapter_set_free(set); peft_fail("adapter rank r must be positive (got %d)", cfg->r); return NULL; }
    if (adapter_layout_check(cfg, "adapter config") || adapter_layout_check_model(cfg, m)) { adapter_set_free(set); return NULL; }
    if (cfg->type == METHOD_ADALORA && cfg->target_r > cfg->init_r) { adapter_set_free(set); peft_fail("AdaLoRA target_r %d exceeds init_r %d", cfg->target_r, cfg->init_r); return NULL; }
    set->adapters = xcalloc(m->n_linears, sizeof(Adapter));
    set->by_linear = xcalloc(m->n_linears > 0 ? m->n_linears : 1, sizeof(Adapter *));
    for (int i = 0; i < m->n_linears; i++) {
        if (!adapter_targets_module(cfg, m->linears[i].module)) continue;
        Adapter *a = &set->adapters[set->n++];
        a->method = method;
        a->set = set;
        a->lin = &m->linears[i];
        a->r = adapter_module_rank(cfg, a->lin->module);
        set->by_linear[i] = a;
        int rp = find_rank_pattern(cfg, a->lin->module);
        if (rp >= 0) a->r = cfg->rank_pattern[rp].rank;
    }
    if (set->n == 0) {
        adapter_set_free(set);
        if (cfg->target_regex) peft_fail("target_modules \"%s\" matched no module of the model", cfg->target_regex);
        else peft_fail("target_modules [%s%s] matched no module of the model", cfg->n_targets ? cfg->targets[0] : "", cfg->n_targets > 1 ? ", ..." : "");
        return NULL;
    }
    expand_all_linear(set);
    return set;
}

// What the set's tensors, their gradients and VeRA's projections take, in bytes (in double: r may
// be anything up to 1e9 here).
static double set_bytes(const AdapterSet *set) {
    double n = 0;
    for (int i = 0; i < set->n; i++) {
        const Adapter *a = &set->adapters[i];
        for (int k = 0; k < a->method->n_tensors; k++)
            n += 2.0 * (double)dim_size(a, a->method->tensors[k].rows) * (double)dim_size(a, a->method->tensors[k].cols);
    }
    if (set->cfg.type == METHOD_VERA) {
        int max_in = 0, max_out = 0;
        for (int i = 0; i < set->n; i++) {
            if (set->adapters[i].lin->in > max_in) max_in = set->adapters[i].lin->in;
            if (set->adapters[i].lin->out > max_out) max_out = set->adapters[i].lin->out;
        }
        n += (double)set->cfg.r * (max_in + max_out);
    }
    return 4 * n;
}

// The method's shared state, every module's tensors and their initial values (from seed).
static int set_init(AdapterSet *set, uint64_t seed) {
    double bytes = set_bytes(set), memory = (double)physical_memory_bytes();
    if (memory > 0 && bytes > memory)
        return peft_fail("the adapter's tensors (r %d on %d modules) would take %.3g GB, more than this machine's memory (%.3g GB)",
                         set->cfg.r, set->n, bytes / 1e9, memory / 1e9);
    const Method *method = method_get(set->cfg.type);
    if (method->prepare && method->prepare(set)) return -1;
    uint64_t rng = seed;
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        if (set->model->adapters == set) a->lin->adapter = a;
        if (create_tensors(a) || method->init(set, a, &rng)) return -1;
    }
    set_fingerprint(set);
    if (adapter_embed_attach(set, seed)) return -1;
    return adapter_base_attach(set);
}

static AdapterSet *set_create(Model *m, const AdapterConfig *cfg, uint64_t seed, bool attach) {
    AdapterSet *set = set_plan(m, cfg, attach);
    if (set && set_init(set, seed)) { adapter_set_free(set); return NULL; }
    return set;
}

int adapters_attach(Model *m, const AdapterConfig *cfg, uint64_t seed) {
    return set_create(m, cfg, seed, true) ? 0 : -1;
}

// Frees a set; when it is m's attached one, detaches it first.
void adapter_set_free(AdapterSet *set) {
    if (!set) return;
    if (set->model && set->model->adapters == set) set->model->adapters = NULL;
    if (set->adapters && set->n && set->adapters[0].method->free_state) set->adapters[0].method->free_state(set);
    for (int i = 0; i < set->n; i++) {
        Adapter *a = &set->adapters[i];
        if (a->lin && a->lin->adapter == a) a->lin->adapter = NULL;
        free(a->h);
        free(a->extra);
        free(a->x_drop);
    }
    adapter_base_release(set);
    adapter_embed_free(set);
    for (int i = 0; i < set->n_params; i++) {
        free(set->params[i]->name);
        free(set->params[i]->w);
        free(set->params[i]->grad);
        free(set->params[i]);
    }
    free(set->params);
    free(set->adapters);
    free(set->by_linear);
    free(set->vera_A);
    free(set->vera_B);
    adapter_config_free(&set->cfg);
    free(set);
}

void adapters_free(Model *m) {
    adapter_set_free(m->adapters);
    m->adapters = NULL;
}

bool adapters_same_vera_projection(const AdapterSet *a, const AdapterSet *b) {
    if (a == b) return true;
    if (a->cfg.type != METHOD_VERA || b->cfg.type != METHOD_VERA || !a->vera_A || !b->vera_A) return false;
    if (a->cfg.r != b->cfg.r || a->vera_max_in != b->vera_max_in || a->vera_max_out != b->vera_max_out) return false;
    if (a->vera_fingerprint != b->vera_fingerprint) return false;
    return !memcmp(a->vera_A, b->vera_A, sizeof(float) * (size_t)a->cfg.r * a->vera_max_in) &&
           !memcmp(a->vera_B, b->vera_B, sizeof(float) * (size_t)a->vera_max_out * a->cfg.r);
}

// Every tensor the set's modules need is in the file with its shape, and the file holds nothing
// else (except what the method owns): checked before any tensor is allocated, so the file, not
// adapter_config.json's r, bounds what loading allocates. used[i]: file tensor i is a module's.
static int check_file(const AdapterSet *set, const SafeTensors *st, const char *path) {
    bool *used = xcalloc(st->n ? st->n : 1, sizeof(bool));
    int rc = 0;
    for (int i = 0; i < set->n && !rc; i++) {
        const Adapter *a = &set->adapters[i];
        for (int k = 0; k < a->method->n_tensors && !rc; k++) {
            const AdapterTensor *spec = &a->method->tensors[k];
            char *name = tensor_key(a, spec), got[160], want[64];
            const StTensor *t = st_find(st, name);
            int64_t rows = dim_size(a, spec->rows), cols = dim_size(a, spec->cols), shape[2] = {rows, cols};
            // A [n, 1] tensor may be stored 1-D and a vector as [n, 1].
            bool ok = t && t->numel == rows * cols &&
                      (t->ndim == 1 ? cols == 1 : t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols);
            if (!t) rc = peft_fail("%s: missing tensor %s", path, name);
            else if (!ok)
                rc = peft_fail("%s: tensor %s has shape [%s] but the base model and adapter_config.json (r %d) need [%s]", path, name,
                               st_shape_text(t->ndim, t->shape, got, sizeof got), a->r, st_shape_text(spec->vector ? 1 : 2, shape, want, sizeof want));
            else used[t - st->tensors] = true;
            free(name);
        }
    }
    if (!rc) rc = adapter_base_check_file(set, st, path, used);
    if (!rc) rc = adapter_embed_check_file(set, st, path, used);
    const Method *method = method_get(set->cfg.type);
    for (int i = 0; i < st->n && !rc; i++)
        if (!used[i] && !(method->owns_tensor && method->owns_tensor(set, st->tensors[i].name)))
            rc = peft_fail("%s: tensor %s is not used by this %s adapter (target_modules matches %d modules of the model): "
                           "a tensor nothing uses is refused, not ignored", path, st->tensors[i].name, method->peft_type, set->n);
    free(used);
    return rc;
}

// adapter_config.json + adapter_model.safetensors into a new set (attached or not). Every size is
// checked against the file before it is allocated, and an allocation that fails is an error.
static AdapterSet *load_set(Model *m, const char *dir, bool attach) {
    char *cfg_path = path_join(dir, "adapter_config.json");
    char *st_path = path_join(dir, "adapter_model.safetensors");
    AdapterConfig cfg;
    SafeTensors st = {0};
    AdapterSet *set = NULL, *result = NULL;
    if (adapter_config_load(&cfg, cfg_path)) goto out_paths;
    set = set_plan(m, &cfg, attach);
    adapter_config_free(&cfg);
    if (!set) { peft_fail_context("%s: ", cfg_path); goto out_paths; }
    if (st_open(&st, st_path) || check_file(set, &st, st_path)) goto fail;
    if (set_init(set, 0)) { peft_fail_context("%s: ", cfg_path); goto fail; }  // (what the config asks for: modules_to_save, r)
    for (int i = 0; i < set->n_params; i++) {
        Param *p = set->params[i];
        if (st_to_f32_finite(st_find(&st, p->name), p->w, st_path)) goto fail;
    }
    const Method *method = set->adapters[0].method;
    if (method->after_load && method->after_load(set, &st, st_path)) goto fail;
    if (adapter_embed_after_load(set, &st, st_path)) goto fail;
    set_fingerprint(set);
    result = set;
    goto out;
fail:
    adapter_set_free(set);
out:
    st_close(&st);
out_paths:
    free(cfg_path);
    free(st_path);
    return result;
}

int adapters_load(Model *m, const char *dir) { return load_set(m, dir, true) ? 0 : -1; }

AdapterSet *adapters_load_detached(Model *m, const char *dir) { return load_set(m, dir, false); }

AdapterSet *adapters_new_detached(Model *m, const AdapterConfig *c, uint64_t seed) {
    return set_create(m, c, seed, false);
}

int adapters_save(Model *m, const char *dir) {
    AdapterSet *set = m->adapters;
    if (!set) return peft_fail("no adapter to save");
    if (make_dir(dir)) return -1;
    StWriter *w = st_writer_new();
    cJSON *j = adapter_config_to_json_object(&set->cfg);
    const Method *method = set->adapters[0].method;
    int rc = 0;
    if (method->save) {
        rc = method->save(set, w, j);
        adapter_base_save(set, w);
    } else
        for (int i = 0; i < set->n_params; i++) {
            Param *p = set->params[i];
            st_writer_add_f32(w, p->name, p->ndim, p->shape, p->w);
        }
    if (!rc) rc = adapter_embed_save(set, w);
    char *st_path = path_join(dir, "adapter_model.safetensors");
    char *cfg_path = path_join(dir, "adapter_config.json");
    char *text = cJSON_Print(j);
    if (!rc) rc = st_writer_save(w, st_path);
    if (!rc) rc = write_file_atomic(cfg_path, text, strlen(text));
    free(text);
    free(st_path);
    free(cfg_path);
    cJSON_Delete(j);
    st_writer_free(w);
    return rc;
}

// ---- merge ----

static void apply_delta(Adapter *a, float sign) {
    Linear *lin = a->lin;
    float *delta = xmalloc(sizeof(float) * lin->in * lin->out);
    param_release_bf16(lin->weight);  // W changes: no longer bf16
    a->method->delta(a, delta);
    float *W = lin->weight->w;
    for (int o = 0; o < lin->out; o++)
        for (int i = 0; i < lin->in; i++) {
            long wi = lin->fan_in_fan_out ? (long)i * lin->out + o : (long)o * lin->in + i;
            W[wi] += sign * delta[(long)o * lin->in + i];
        }
    free(delta);
}

void adapters_merge(Model *m) {
    AdapterSet *set = m->adapters;
    for (int i = 0; set && i < set->n; i++)
        if (!set->adapters[i].merged && !set->adapters[i].lin->q) { apply_delta(&set->adapters[i], 1.0f); set->adapters[i].merged = true; }
    if (set) adapter_embed_merge(set, true);
}

void adapters_unmerge(Model *m) {
    AdapterSet *set = m->adapters;
    for (int i = 0; set && i < set->n; i++)
        if (set->adapters[i].merged) { apply_delta(&set->adapters[i], -1.0f); set->adapters[i].merged = false; }
    if (set) adapter_embed_merge(set, false);
}

double adapters_regularizer(Model *m, bool want_grad) {
    AdapterSet *set = m->adapters;
    if (!set || !set->adapters[0].method->regularizer) return 0;
    return set->last_regularizer = set->adapters[0].method->regularizer(set, want_grad);
}

// ---- the adapted linear ----

// ---- mixed rows: every token row with its own adapter set (m->row_adapters) ----

typedef struct {
    Adapter *a;          // LoRA / AdaLoRA: the module of one set; VeRA: of the family's first set
    bool vera;
    int n, first;        // rows, and where their indices start in the row list
} RowGroup;

static const float *gather_rows(const float *x, int width, const int *rows, int n, float **buf) {
    bool contiguous = true;
    for (int i = 1; i < n && contiguous; i++) contiguous = rows[i] == rows[0] + i;
    if (contiguous) return x + (long)rows[0] * width;
    *buf = xmalloc(sizeof(float) * (size_t)n * width);
    for (int i = 0; i < n; i++) memcpy(*buf + (long)i * width, x + (long)rows[i] * width, sizeof(float) * width);
    return *buf;
}

static bool rows_contiguous(const int *rows, int n) {
    for (int i = 1; i < n; i++) if (rows[i] != rows[0] + i) return false;
    return true;
}

// y_row += s * B (E *) A x_row for one row (LoRA, AdaLoRA): two matrix-vector products.
static void lowrank_row(const Adapter *a, const float *x, float *y, float *h) {
    int in = a->lin->in, out = a->lin->out, r = a->r;
    cblas_sgemv(CblasRowMajor, CblasNoTrans, r, in, 1.0f, a->A->w, in, x, 1, 0.0f, h, 1);
    if (a->E) for (int k = 0; k < r; k++) h[k] *= a->E->w[k];
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out, r, a->scaling, a->B->w, r, h, 1, 1.0f, y, 1);
}

// The rows of one LoRA / AdaLoRA module: h = X A^T, (h *= E), Y += s h B^T.
static void lowrank_rows(const Adapter *a, const float *x, float *y, const int *rows, int n) {
    int in = a->lin->in, out = a->lin->out, r = a->r;
    float *xbuf = NULL, *h = xmalloc(sizeof(float) * (size_t)n * r);
    const float *X = gather_rows(x, in, rows, n, &xbuf);
    matmul(h, X, a->A->w, n, r, in, false, true, 1.0f, 0.0f);
    if (a->E)
        for (int i = 0; i < n; i++)
            for (int k = 0; k < r; k++) h[(long)i * r + k] *= a->E->w[k];
    if (rows_contiguous(rows, n)) matmul(y + (long)rows[0] * out, h, a->B->w, n, out, r, false, true, a->scaling, 1.0f);
    else {
        float *Y = xmalloc(sizeof(float) * (size_t)n * out);
        matmul(Y, h, a->B->w, n, out, r, false, true, a->scaling, 0.0f);
        for (int i = 0; i < n; i++) add_inplace(y + (long)rows[i] * out, Y + (long)i * out, out);
        free(Y);
    }
    free(xbuf);
    free(h);
}

// VeRA rows of sets that share one pair of projections: H = X A_sl^T once, per-row lambda_d,
// U = Hd B_sl^T once, per-row lambda_b: y += lambda_b * U.
static void vera_rows(const Adapter *a0, AdapterSet *const *row_sets, int li, const float *x, float *y, const int *rows, int n) {
    const AdapterSet *set = a0->set;
    int in = a0->lin->in, out = a0->lin->out, r = a0->r;
    float *xbuf = NULL, *H = xmalloc(sizeof(float) * (size_t)n * r), *U = xmalloc(sizeof(float) * (size_t)n * out);
    const float *X = gather_rows(x, in, rows, n, &xbuf);
    matmul_ld(H, r, X, in, set->vera_A, set->vera_max_in, n, r, in, false, true, 1.0f, 0.0f);
    for (int i = 0; i < n; i++) {
        const float *ld = row_sets[rows[i]]->by_linear[li]->lambda_d->w;
        for (int k = 0; k < r; k++) H[(long)i * r + k] *= ld[k];
    }
    matmul_ld(U, out, H, r, set->vera_B, r, n, out, r, false, true, 1.0f, 0.0f);
#pragma omp parallel for if ((long)n * out > 65536)
    for (int i = 0; i < n; i++) {
        const float *lb = row_sets[rows[i]]->by_linear[li]->lambda_b->w, *u = U + (long)i * out;
        float *yr = y + (long)rows[i] * out;
        for (int o = 0; o < out; o++) yr[o] += lb[o] * u[o];
    }
    free(xbuf);
    free(H);
    free(U);
}

// The rows of a module whose method applies through its forward (rows_by_forward): gathered, run, put back.
static void forward_rows(Adapter *a, const float *x, float *y, const int *rows, int n) {
    int out = a->lin->out;
    float *xbuf = NULL, *ybuf = NULL;
    const float *X = gather_rows(x, a->lin->in, rows, n, &xbuf);
    if (!rows_contiguous(rows, n)) {
        ybuf = xmalloc(sizeof(float) * (size_t)n * out);
        for (int i = 0; i < n; i++) memcpy(ybuf + (long)i * out, y + (long)rows[i] * out, sizeof(float) * out);
    }
    a->method->forward(a, X, ybuf ? ybuf : y + (long)rows[0] * out, n, false);
    if (ybuf) for (int i = 0; i < n; i++) memcpy(y + (long)rows[i] * out, ybuf + (long)i * out, sizeof(float) * out);
    free(xbuf);
    free(ybuf);
}

// The hot-path test: equal shapes and fingerprints (adapters_same_vera_projection also compares the bytes).
static bool same_projection_fast(const AdapterSet *a, const AdapterSet *b) {
    return a == b || (a->vera_A && b->vera_A && a->cfg.r == b->cfg.r && a->vera_max_in == b->vera_max_in &&
                      a->vera_max_out == b->vera_max_out && a->vera_fingerprint == b->vera_fingerprint);
}

static void mixed_rows_forward(Model *m, Linear *lin, const float *x, float *y, int N) {
    AdapterSet *const *sets = m->row_adapters;
    int li = (int)(lin - m->linears);
    int *gid = xmalloc(sizeof(int) * (size_t)N);
    RowGroup *groups = NULL;
    int n_groups = 0, last = -1;
    for (int n = 0; n < N; n++) {
        gid[n] = -1;
        const AdapterSet *s = sets[n];
        Adapter *a = s && s->by_linear ? s->by_linear[li] : NULL;
        if (!a || a->r <= 0 || a->merged) continue;
        bool vera = s->cfg.type == METHOD_VERA;
        int g = -1;
        if (last >= 0 && (vera ? groups[last].vera && same_projection_fast(groups[last].a->set, s) : groups[last].a == a)) g = last;
        for (int k = 0; k < n_groups && g < 0; k++)
            if (vera ? groups[k].vera && same_projection_fast(groups[k].a->set, s) : groups[k].a == a) g = k;
        if (g < 0) {
            groups = xrealloc(groups, sizeof(RowGroup) * (n_groups + 1));
            groups[n_groups] = (RowGroup){a, vera, 0, 0};
            g = n_groups++;
        }
        groups[g].n++;
        gid[n] = last = g;
    }
    if (n_groups == 0) { free(gid); free(groups); return; }
    int *rows = xmalloc(sizeof(int) * (size_t)N), *fill = xcalloc(n_groups, sizeof(int));
    for (int g = 0, at = 0; g < n_groups; g++) { groups[g].first = at; at += groups[g].n; }
    for (int n = 0; n < N; n++)
        if (gid[n] >= 0) rows[groups[gid[n]].first + fill[gid[n]]++] = n;
    // LoRA / AdaLoRA: an adapter's rows as one pair of GEMMs when it has several (a prefill, or
    // many requests of one adapter); its rows as matrix-vector products when it has few (decode
    // steps of requests for many adapters), those rows in parallel (each writes its own row of y).
    enum { MIN_GEMM_ROWS = 4 };
    int *singles = xmalloc(sizeof(int) * (size_t)N), n_single = 0, max_r = 1;  // positions in rows[] done one by one
    for (int g = 0; g < n_groups; g++) {
        RowGroup *G = &groups[g];
        if (G->vera) vera_rows(G->a, sets, li, x, y, rows + G->first, G->n);
        else if (G->a->method->rows_by_forward) forward_rows(G->a, x, y, rows + G->first, G->n);
        else if (G->n >= MIN_GEMM_ROWS) lowrank_rows(G->a, x, y, rows + G->first, G->n);
        else {
            for (int i = 0; i < G->n; i++) singles[n_single++] = G->first + i;
            if (G->a->r > max_r) max_r = G->a->r;
        }
    }
    if (n_single) {
        float *h = xmalloc(sizeof(float) * (size_t)n_single * max_r);
#pragma omp parallel for schedule(dynamic, 1) if (n_single > 1)
        for (int k = 0; k < n_single; k++) {
            int row = rows[singles[k]];
            const Adapter *a = groups[gid[row]].a;
            lowrank_row(a, x + (long)row * lin->in, y + (long)row * lin->out, h + (long)k * max_r);
        }
        free(h);
    }
    free(singles);
    free(rows);
    free(fill);
    free(gid);
    free(groups);
}

void linear_forward(Model *m, Linear *lin, const float *x, float *y, int N) {
    if (lin->weight->w16) matmul_bf16(y, x, lin->weight->w16, N, lin->out, lin->in);  // [out, in]
    else {
        bool fan;
        const float *W = model_linear_weight(m, lin, &fan);
        matmul(y, x, W, N, lin->out, lin->in, false, !fan, 1.0f, 0.0f);
    }
    if (lin->bias) add_bias(y, lin->bias->w, N, lin->out);
    if (m->row_adapters) { mixed_rows_forward(m, lin, x, y, N); return; }
    Adapter *a = lin->adapter;
    if (a && !a->merged && a->r > 0) a->method->forward(a, x, y, N, m->training);
}

void linear_backward(Model *m, Linear *lin, const float *x, const float *dy, float *dx, int N) {
    Param *W = lin->weight;
    if (dx) {
        bool fan;
        const float *Wb = model_linear_weight(m, lin, &fan);
        matmul(dx, dy, Wb, N, lin->in, lin->out, false, fan, 1.0f, 1.0f);
    }
    if (W->grad) {
        if (lin->fan_in_fan_out) matmul(W->grad, x, dy, lin->in, lin->out, N, true, false, 1.0f, 1.0f);   // [in,out] += x^T dy
        else matmul(W->grad, dy, x, lin->out, lin->in, N, true, false, 1.0f, 1.0f);                       // [out,in] += dy^T x
    }
    if (lin->bias && lin->bias->grad) bias_backward(lin->bias->grad, dy, N, lin->out);
    Adapter *a = lin->adapter;
    if (!a || a->merged || a->r == 0) return;
    float p = a->set->cfg.dropout;
    if (!(m->training && p > 0)) { a->method->backward(a, x, dy, dx, N); return; }
    // Backward through dropout: the adapter sees dropout(x); route its input gradient through the same mask.
    long n = (long)N * lin->in;
    float *dxd = dx ? xcalloc(n, sizeof(float)) : NULL;
    a->method->backward(a, a->x_drop, dy, dxd, N);
    if (dx) {
        uint64_t seed = adapter_dropout_seed(a);
        float scale = 1.0f / (1.0f - p);
#pragma omp parallel for
        for (long i = 0; i < n; i++) if (dropout_keep(seed, i, p)) dx[i] += dxd[i] * scale;
    }
    free(dxd);
}
