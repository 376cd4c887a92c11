// adapter_embed.c: the token embedding in a LoRA adapter, as PEFT 0.21 computes and saves it.
//   LoRA on the embedding (lora.Embedding, a target that names the input embedding): lora_embedding_A
//     [r, vocab] and lora_embedding_B [d, r]; token t's embedding gains scaling * B A[:, t], with no
//     dropout (PEFT's Embedding applies none). Merge: W += scaling (B A)^T. A starts at 0, B at N(0, 1).
//     A head tied to the embedding (GPT-2) keeps the base weight: PEFT does not tie the adapter, and its
//     merge adds the delta to the weight both share, so it changes the head too (done the same here).
//     With a target list holding "embed_tokens" (or a regex string containing it) PEFT also saves the
//     embedding's base weight, "<module>.base_layer.weight", and writes it over the base's on load.
//   trainable_token_indices (TrainableTokensLayer): these rows of the input embedding (a list), or of each
//     module a dict's key ends (the embedding, an untied lm_head), are replaced by trained values, saved as
//     "<module>.token_adapter.trainable_tokens_delta" [n, d] (the values, not a difference) and starting as
//     the base rows. A head tied to the embedding uses the same values (PEFT ties the head's token adapter
//     to the embedding's and saves it once). Merge writes them into the weight; unmerge the base rows back.
// Neither writes into the base while unmerged: the embedding lookup and the logits take the adapter's
// share (adapter_embed_inputs, adapter_embed_logits), and backward adds the gradients.
#include "adapter.h"
#include "lora_init.h"
#include "safetensors.h"
#include "torch_rng.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct EmbedAdapters EmbedAdapters;

typedef struct {
    char *module;        // the wrapped module ("model.embed_tokens", "lm_head")
    Param *weight;       // its weight (the embedding's, or an untied head's)
    bool input, head;    // the rows replace embedding rows (input) and / or logits' weights (head: also a tied embedding)
    int n;
    int32_t *indices;    // [n], as the config lists them
    int32_t *row_of;     // [vocab]: j with indices[j] == token, or -1
    Param *values;       // [n, d]: trainable_tokens_delta
    float *original;     // [n, d]: the base rows (unmerge)
} TokenRows;

struct EmbedAdapters {
    Param *A, *B;        // LoRA: lora_embedding_A [r, V], lora_embedding_B [C, r]; NULL: no LoRA on the embedding
    int r;
    float scaling;
    bool save_base;      // PEFT saves the embedding's base weight with the adapter
    char *base_key;      // its name there
    int n_tok;
    TokenRows tok[2];    // the embedding and an untied head, at most
    bool merged;
};

// ---- the config key ----

static bool lora_family(MethodId t) {
    const Method *m = method_get(t);
    return m && (m->id == METHOD_LORA || (m->variant_key && m->config_base == &lora_method));
}

static int parse_indices(const cJSON *v, TokenTarget *t, const char *path) {
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) == 0)
        return peft_fail("%s: trainable_token_indices%s%s%s must be a non-empty list of token indices", path, t->module ? "[\"" : "",
                         t->module ? t->module : "", t->module ? "\"]" : "");
    t->indices = xcalloc(cJSON_GetArraySize(v), sizeof(int32_t));
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        double x = e->valuedouble;
        if (!cJSON_IsNumber(e) || x != floor(x) || x < 0 || x > 2147483647.0)
            return peft_fail("%s: trainable_token_indices holds %s: token indices are non-negative integers", path, cJSON_IsNumber(e) ? "a fraction or negative number" : "a non-number");
        for (int k = 0; k < t->n; k++)  // PEFT's index_copy with a repeated index keeps either value
            if (t->indices[k] == (int32_t)x) return peft_fail("%s: trainable_token_indices lists token %d twice", path, (int)x);
        t->indices[t->n++] = (int32_t)x;
    }
    return 0;
}

int adapter_embed_parse(AdapterConfig *c, const void *json, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive((const cJSON *)json, "trainable_token_indices");
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsArray(v) && !cJSON_IsObject(v))
        return peft_fail("%s: trainable_token_indices must be a list of token indices or an object {module: [indices]}", path);
    int n = cJSON_IsArray(v) ? 1 : cJSON_GetArraySize(v);
    if (n == 0) return peft_fail("%s: trainable_token_indices is an empty object", path);
    c->token_targets = xcalloc(n, sizeof(TokenTarget));
    if (cJSON_IsArray(v)) {
        c->n_token_targets = 1;
        return parse_indices(v, &c->token_targets[0], path);
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        TokenTarget *t = &c->token_targets[c->n_token_targets++];
        if (!e->string[0]) return peft_fail("%s: trainable_token_indices has an empty module name", path);
        t->module = xstrdup(e->string);
        if (parse_indices(e, t, path)) return -1;
    }
    return 0;
}

int adapter_embed_check(const AdapterConfig *c, const char *path) {
    if (!c->n_token_targets) return 0;
    if (!lora_family(c->type)) return peft_fail("%s: trainable_token_indices is implemented for LoRA only", path);
    for (int i = 0; i < c->n_token_targets; i++)  // PEFT: a module both trained in full and by rows is an error
        for (int k = 0; k < c->n_modules_to_save; k++)
            if (c->token_targets[i].module && !strcmp(c->token_targets[i].module, c->modules_to_save[k]))
                return peft_fail("%s: \"%s\" is both in modules_to_save and in trainable_token_indices (PEFT refuses it too)", path, c->modules_to_save[k]);
    return 0;
}

void adapter_embed_to_json(const AdapterConfig *c, void *json) {
    cJSON *j = json;
    cJSON_DeleteItemFromObjectCaseSensitive(j, "trainable_token_indices");
    if (!c->n_token_targets) return;
    cJSON *v = c->token_targets[0].module ? cJSON_CreateObject() : NULL;
    for (int i = 0; i < c->n_token_targets; i++) {
        const TokenTarget *t = &c->token_targets[i];
        cJSON *list = cJSON_CreateIntArray((const int *)t->indices, t->n);
        if (v) cJSON_AddItemToObject(v, t->module, list);
        else v = list;
    }
    cJSON_AddItemToObject(j, "trainable_token_indices", v);
}

void adapter_embed_describe(const AdapterConfig *c, char *buf, size_t cap) {
    size_t at = strlen(buf);
    for (int i = 0; i < c->n_token_targets && at < cap; i++) {
        const TokenTarget *t = &c->token_targets[i];
        at += (size_t)snprintf(buf + at, cap - at, "%s%s: %d token%s", i ? "; " : "trainable tokens ", t->module ? t->module : "the input embedding",
                               t->n, t->n == 1 ? "" : "s");
        for (int k = 0; k < t->n && k < 8 && at < cap; k++) at += (size_t)snprintf(buf + at, cap - at, "%s%d", k ? ", " : " (", t->indices[k]);
        if (at < cap) at += (size_t)snprintf(buf + at, cap - at, "%s)%s", t->n > 8 ? ", ..." : "", i == c->n_token_targets - 1 ? " (their rows trained, saved with the adapter)\n" : "");
    }
}

void adapter_embed_config_free(AdapterConfig *c) {
    for (int i = 0; i < c->n_token_targets; i++) {
        free(c->token_targets[i].module);
        free(c->token_targets[i].indices);
    }
    free(c->token_targets);
    c->token_targets = NULL;
    c->n_token_targets = 0;
}

void adapter_embed_config_copy(AdapterConfig *dst, const AdapterConfig *src) {
    dst->token_targets = src->n_token_targets ? xcalloc(src->n_token_targets, sizeof(TokenTarget)) : NULL;
    for (int i = 0; i < src->n_token_targets; i++) {
        const TokenTarget *t = &src->token_targets[i];
        dst->token_targets[i] = (TokenTarget){t->module ? xstrdup(t->module) : NULL, t->n, xmalloc(sizeof(int32_t) * t->n)};
        memcpy(dst->token_targets[i].indices, t->indices, sizeof(int32_t) * t->n);
    }
}

// ---- the modules ----

static char *module_of(const Param *p) {
    const char *dot = strrchr(p->name, '.');
    return xasprintf("%.*s", (int)(dot ? dot - p->name : 0), p->name);
}

char *adapter_embed_module(const Model *m) { return module_of(m->wte); }

bool adapter_embed_targeted(const AdapterConfig *c, const Model *m) {
    if (c->type != METHOD_LORA || c->all_linear) return false;  // all-linear: linears only (PEFT's rule)
    char *module = adapter_embed_module(m);
    bool hit = adapter_targets_module(c, module);
    free(module);
    return hit;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

// PEFT's save_embedding_layers "auto": an "embed_tokens" or "lm_head" entry of the target list (a substring
// of a regex string) saves the wrapped embedding's base weight.
static bool saves_base(const AdapterConfig *c) {
    static const char *const NAMES[] = {"embed_tokens", "lm_head"};
    for (int k = 0; k < 2; k++) {
        if (c->target_regex && strstr(c->target_regex, NAMES[k])) return true;
        for (int i = 0; i < c->n_targets; i++)
            if (!strcmp(c->targets[i], NAMES[k])) return true;
    }
    return false;
}

static Param *new_param(AdapterSet *set, char *name, int64_t rows, int64_t cols) {
    Param *p = xcalloc(1, sizeof *p);
    p->name = name;
    p->ndim = 2;
    p->shape[0] = rows;
    p->shape[1] = cols;
    p->numel = (long)(rows * cols);
    p->trainable = p->decay = true;
    set->params = xrealloc(set->params, sizeof(Param *) * (set->n_params + 1));
    set->params[set->n_params++] = p;  // owned by the set from here
    if (!(p->w = try_calloc(p->numel, sizeof(float), p->name)) || !(p->grad = try_calloc(p->numel, sizeof(float), p->name))) return NULL;
    return p;
}

static int attach_lora(AdapterSet *set, EmbedAdapters *e, uint64_t seed) {
    const Model *m = set->model;
    const AdapterConfig *c = &set->cfg;
    int64_t V = m->cfg.vocab_size, C = m->cfg.n_embd;
    char *module = adapter_embed_module(m);
    e->r = adapter_module_rank(c, module);
    float alpha = adapter_module_alpha(c, module);
    e->scaling = c->use_rslora ? alpha / sqrtf((float)e->r) : alpha / (float)e->r;
    double bytes = 8.0 * e->r * (double)(V + C), memory = (double)physical_memory_bytes();
    int rc = memory > 0 && bytes > memory ? peft_fail("LoRA on %s at r %d would take %.3g GB", module, e->r, bytes / 1e9) : 0;
    if (!rc && (!(e->A = new_param(set, xasprintf("base_model.model.%s.lora_embedding_A", module), e->r, V)) ||
                !(e->B = new_param(set, xasprintf("base_model.model.%s.lora_embedding_B", module), C, e->r))))
        rc = -1;
    if (!rc) {  // PEFT's reset_lora_parameters: A zeros, B nn.init.normal_
        TorchGen g;
        torch_gen_seed(&g, seed);
        torch_normal_(&g, e->B->w, (size_t)e->B->numel, 0.0, 1.0);
        e->save_base = saves_base(c);
        e->base_key = xasprintf("base_model.model.%s.base_layer.weight", module);
    }
    free(module);
    return rc;
}

// The modules a trainable_token_indices entry names: the list form the input embedding; a key every module
// whose name ends with it (PEFT's _set_trainable), of which the embedding and an untied head are implemented.
static int token_modules(const Model *m, const TokenTarget *t, const Param **out, int *n) {
    char *emb = adapter_embed_module(m);
    *n = 0;
    int rc = 0;
    if (!t->module || ends_with(emb, t->module)) out[(*n)++] = m->wte;
    if (t->module && ends_with("lm_head", t->module)) {
        if (m->lm_head == m->wte)
            rc = peft_fail("trainable_token_indices[\"%s\"]: the model ties lm_head to %s; rows of the tied head named on their own "
                           "are not implemented (list the embedding: PEFT ties the head's rows to it)", t->module, emb);
        else out[(*n)++] = m->lm_head;
    }
    for (int i = 0; t->module && i < m->n_linears && !rc; i++)
        if (ends_with(m->linears[i].module, t->module))
            rc = peft_fail("trainable_token_indices[\"%s\"] matches %s: trained rows of a module other than the embedding and the "
                           "output head are not implemented", t->module, m->linears[i].module);
    if (!rc && m->wpe && t->module) {
        char *wpe = module_of(m->wpe);
        if (ends_with(wpe, t->module)) rc = peft_fail("trainable_token_indices[\"%s\"] matches the position embedding %s: not implemented", t->module, wpe);
        free(wpe);
    }
    if (!rc && *n == 0) rc = peft_fail("trainable_token_indices[\"%s\"] names no module of the model (PEFT refuses it too)", t->module);
    free(emb);
    return rc;
}

// PEFT's refusals (and what is not implemented) for rows of this weight.
static int check_token_weight(const AdapterSet *set, const EmbedAdapters *e, const TokenTarget *t, const Param *weight, const char *module) {
    const AdapterConfig *c = &set->cfg;
    for (int k = 0; k < e->n_tok; k++)
        if (e->tok[k].weight == weight) return peft_fail("trainable_token_indices names %s twice", module);
    for (int k = 0; k < c->n_modules_to_save; k++)
        if (ends_with(module, c->modules_to_save[k]))
            return peft_fail("trainable_token_indices: %s is also in modules_to_save (trained in full): PEFT refuses both", module);
    if (e->A && weight == set->model->wte) return peft_fail("trainable_token_indices with LoRA on the same embedding (%s) is not implemented", module);
    for (int k = 0; k < t->n; k++)
        if (t->indices[k] >= weight->shape[0]) return peft_fail("trainable_token_indices: token %d is outside %s's %lld rows", t->indices[k], weight->name, (long long)weight->shape[0]);
    return 0;
}

static int attach_tokens(AdapterSet *set, EmbedAdapters *e, const TokenTarget *t) {
    const Model *m = set->model;
    int V = m->cfg.vocab_size, C = m->cfg.n_embd;
    const Param *weights[2];
    int n;
    if (token_modules(m, t, weights, &n)) return -1;
    for (int w = 0; w < n; w++) {
        char *module = module_of(weights[w]);
        if (check_token_weight(set, e, t, weights[w], module)) { free(module); return -1; }
        TokenRows *r = &e->tok[e->n_tok++];
        r->module = module;
        r->weight = (Param *)weights[w];
        r->input = weights[w] == m->wte;
        r->head = weights[w] == m->lm_head;
        r->n = t->n;
        r->indices = xmalloc(sizeof(int32_t) * t->n);
        memcpy(r->indices, t->indices, sizeof(int32_t) * t->n);
        r->row_of = xmalloc(sizeof(int32_t) * V);
        for (int v = 0; v < V; v++) r->row_of[v] = -1;
        for (int k = 0; k < t->n; k++) r->row_of[t->indices[k]] = k;
        if (!(r->values = new_param(set, xasprintf("base_model.model.%s.token_adapter.trainable_tokens_delta", module), t->n, C))) return -1;
        r->original = xmalloc(sizeof(float) * t->n * C);
        for (int k = 0; k < t->n; k++) param_rows(r->weight, t->indices[k], 1, r->original + (long)k * C);
        memcpy(r->values->w, r->original, sizeof(float) * t->n * C);  // PEFT's init_weights: the base rows
    }
    return 0;
}

int adapter_embed_attach(AdapterSet *set, uint64_t seed) {
    Model *m = set->model;
    bool lora = adapter_embed_targeted(&set->cfg, m);
    if (!lora && !set->cfg.n_token_targets) return 0;
    if (m->adapters != set)
        return peft_fail("the adapter changes the token embedding (%s), so it is applied to the model alone: not beside other adapters "
                         "(serving several, adapter arithmetic)", lora ? "LoRA on it" : "trainable_token_indices");
    if (lora && lora_init_changes_base(&set->cfg))
        return peft_fail("init_lora_weights %s with LoRA on the embedding is not implemented (PEFT's PiSSA / OLoRA are for linears)",
                         set->cfg.init == LORA_INIT_OLORA ? "olora" : "pissa");
    EmbedAdapters *e = set->embed = xcalloc(1, sizeof *e);
    if (lora && attach_lora(set, e, seed)) return -1;
    for (int i = 0; i < set->cfg.n_token_targets; i++)
        if (attach_tokens(set, e, &set->cfg.token_targets[i])) return -1;
    return 0;
}

// Appends the tensor unless a module's two entries named it already (refused when the adapter is made).
static int add_tensor(EmbedTensor *out, int n, char *name, int64_t rows, int64_t cols, bool trained) {
    for (int k = 0; k < n; k++)
        if (!strcmp(out[k].name, name)) { free(name); return n; }
    out[n] = (EmbedTensor){name, rows, cols, trained};
    return n + 1;
}

int adapter_embed_plan(const AdapterConfig *c, const char *emb, bool tied, int64_t V, int64_t C, EmbedTensor *out) {
    int n = 0;
    bool lora = c->type == METHOD_LORA && !c->all_linear && adapter_targets_module(c, emb);
    if (lora) {
        int r = adapter_module_rank(c, emb);
        n = add_tensor(out, n, xasprintf("base_model.model.%s.lora_embedding_A", emb), r, V, true);
        n = add_tensor(out, n, xasprintf("base_model.model.%s.lora_embedding_B", emb), C, r, true);
    }
    for (int i = 0; i < c->n_token_targets; i++) {
        const TokenTarget *t = &c->token_targets[i];
        bool on_emb = !t->module || ends_with(emb, t->module), on_head = t->module && ends_with("lm_head", t->module) && !tied;
        if (!on_emb && !on_head) {
            for (int k = 0; k < n; k++) free(out[k].name);
            return peft_fail("trainable_token_indices[\"%s\"] names neither the embedding %s nor an untied lm_head", t->module, emb);
        }
        if (on_emb) n = add_tensor(out, n, xasprintf("base_model.model.%s.token_adapter.trainable_tokens_delta", emb), t->n, C, true);
        if (on_head) n = add_tensor(out, n, xstrdup("base_model.model.lm_head.token_adapter.trainable_tokens_delta"), t->n, C, true);
    }
    if (lora && saves_base(c)) n = add_tensor(out, n, xasprintf("base_model.model.%s.base_layer.weight", emb), V, C, false);
    return n;
}

static int check_tensor(const SafeTensors *st, const EmbedTensor *e, const char *path, bool *used) {
    const StTensor *t = st_find(st, e->name);
    int64_t shape[2] = {e->rows, e->cols};
    char got[160], want[64];
    if (!t && e->trained) return peft_fail("%s: missing tensor %s", path, e->name);
    if (t && (t->ndim != 2 || t->shape[0] != e->rows || t->shape[1] != e->cols))
        return peft_fail("%s: tensor %s has shape [%s] but the base model and adapter_config.json need [%s]", path, e->name,
                         st_shape_text(t->ndim, t->shape, got, sizeof got), st_shape_text(2, shape, want, sizeof want));
    if (t) used[t - st->tensors] = true;
    return 0;
}

// Before anything is allocated (the set is planned, not initialised): the tensors the config gives the
// embedding, named and shaped from the config and the model (the base weight PEFT saves is optional).
int adapter_embed_check_file(const AdapterSet *set, const void *file, const char *path, bool *used) {
    const Model *m = set->model;
    for (int i = 0; i < set->cfg.n_token_targets; i++) {  // the modules a key names: refused here by name
        const Param *weights[2];
        int n;
        if (token_modules(m, &set->cfg.token_targets[i], weights, &n)) return -1;
    }
    EmbedTensor t[EMBED_TENSORS_MAX];
    char *emb = adapter_embed_module(m);
    int n = adapter_embed_plan(&set->cfg, emb, m->lm_head == m->wte, m->cfg.vocab_size, m->cfg.n_embd, t), rc = n < 0 ? -1 : 0;
    for (int i = 0; i < n; i++) {
        if (!rc) rc = check_tensor(file, &t[i], path, used);
        free(t[i].name);
    }
    free(emb);
    return rc;
}

int adapter_embed_after_load(AdapterSet *set, const void *file, const char *path) {
    const EmbedAdapters *e = set->embed;
    const StTensor *t = e && e->A ? st_find(file, e->base_key) : NULL;
    return t ? st_to_f32_finite(t, set->model->wte->w, path) : 0;  // PEFT loads it over the base's
}

int adapter_embed_save(const AdapterSet *set, void *writer) {
    const EmbedAdapters *e = set->embed;
    if (e && e->save_base) st_writer_add_f32(writer, e->base_key, 2, set->model->wte->shape, set->model->wte->w);
    return 0;
}

void adapter_embed_free(AdapterSet *set) {
    EmbedAdapters *e = set->embed;
    if (!e) return;
    for (int k = 0; k < e->n_tok; k++) {
        free(e->tok[k].module);
        free(e->tok[k].indices);
        free(e->tok[k].row_of);
        free(e->tok[k].original);
    }
    free(e->base_key);
    free(e);
    set->embed = NULL;
}

// ---- forward, backward, merge ----

static const EmbedAdapters *live(const Model *m) {
    const EmbedAdapters *e = m->adapters && !m->row_adapters ? m->adapters->embed : NULL;
    return e && !e->merged ? e : NULL;
}

void adapter_embed_inputs(const Model *m, const int32_t *ids, int N, float *x) {
    const EmbedAdapters *e = live(m);
    if (!e) return;
    int C = m->cfg.n_embd, V = m->cfg.vocab_size, r = e->r;
#pragma omp parallel for if (N > 16)
    for (int i = 0; i < N; i++) {
        float *xi = x + (long)i * C;
        for (int k = 0; k < e->n_tok; k++) {
            const TokenRows *t = &e->tok[k];
            int j = t->input ? t->row_of[ids[i]] : -1;
            if (j < 0) continue;
            const float *v = t->values->w + (long)j * C, *w = t->weight->w + (long)ids[i] * C;
            for (int c = 0; c < C; c++) xi[c] += v[c] - w[c];  // the base row out, the trained one in
        }
        if (!e->A) continue;
        for (int c = 0; c < C; c++) {  // scaling * B A[:, id]
            double s = 0;
            for (int q = 0; q < r; q++) s += (double)e->B->w[(long)c * r + q] * e->A->w[(long)q * V + ids[i]];
            xi[c] += e->scaling * (float)s;
        }
    }
}

static float dot(const float *a, const float *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return (float)s;
}

// logits[n, t] = xn[n] . values[j] for each trained row j (token t) of a head.
static void head_logits(const TokenRows *t, const float *xn, int N, int C, int V, float *logits) {
#pragma omp parallel for if (N > 16)
    for (int n = 0; n < N; n++)
        for (int j = 0; j < t->n; j++) logits[(long)n * V + t->indices[j]] = dot(xn + (long)n * C, t->values->w + (long)j * C, C);
}

void adapter_embed_logits(const Model *m, const float *xn, int N, float *logits) {
    const EmbedAdapters *e = live(m);
    for (int k = 0; e && k < e->n_tok; k++)
        if (e->tok[k].head) head_logits(&e->tok[k], xn, N, m->cfg.n_embd, m->cfg.vocab_size, logits);
}

void adapter_embed_backward_head(Model *m, const float *dlogits, const float *xn, int N, float *d_norm) {
    const EmbedAdapters *e = live(m);
    if (!e) return;
    int C = m->cfg.n_embd, V = m->cfg.vocab_size;
    for (int k = 0; k < e->n_tok; k++) {
        const TokenRows *t = &e->tok[k];
        if (!t->head) continue;
        for (int j = 0; j < t->n; j++) {
            const float *v = t->values->w + (long)j * C, *w = t->weight->w + (long)t->indices[j] * C;
            float *g = t->values->grad + (long)j * C;
            for (int n = 0; n < N; n++) {
                float d = dlogits[(long)n * V + t->indices[j]];
                for (int c = 0; c < C; c++) {
                    g[c] += d * xn[(long)n * C + c];
                    d_norm[(long)n * C + c] += d * (v[c] - w[c]);  // the head's row was the trained one
                }
            }
        }
    }
}

void adapter_embed_backward_inputs(Model *m, const int32_t *ids, const float *dres, int N) {
    const EmbedAdapters *e = live(m);
    if (!e) return;
    int C = m->cfg.n_embd, V = m->cfg.vocab_size, r = e->r;
    for (int k = 0; k < e->n_tok; k++) {
        const TokenRows *t = &e->tok[k];
        for (int i = 0; t->input && i < N; i++) {
            int j = t->row_of[ids[i]];
            if (j < 0) continue;
            for (int c = 0; c < C; c++) t->values->grad[(long)j * C + c] += dres[(long)i * C + c];
        }
    }
    for (int i = 0; e->A && i < N; i++) {
        const float *d = dres + (long)i * C;
        for (int q = 0; q < r; q++) {
            float a = e->A->w[(long)q * V + ids[i]];
            double g = 0;
            for (int c = 0; c < C; c++) {
                g += (double)e->B->w[(long)c * r + q] * d[c];
                e->B->grad[(long)c * r + q] += e->scaling * d[c] * a;
            }
            e->A->grad[(long)q * V + ids[i]] += e->scaling * (float)g;
        }
    }
}

void adapter_embed_merge(AdapterSet *set, bool merge) {
    EmbedAdapters *e = set->embed;
    if (!e || e->merged == merge) return;
    const Model *m = set->model;
    int C = m->cfg.n_embd, V = m->cfg.vocab_size, r = e->r;
    float sign = merge ? 1.0f : -1.0f;
    if (e->A) param_release_bf16(m->wte);  // the rows change: no longer bf16
    for (int k = 0; k < e->n_tok; k++) param_release_bf16(e->tok[k].weight);
    for (int v = 0; e->A && v < V; v++)  // W[v, c] += scaling (B A)[c, v]
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int q = 0; q < r; q++) s += (double)e->B->w[(long)c * r + q] * e->A->w[(long)q * V + v];
            m->wte->w[(long)v * C + c] += sign * e->scaling * (float)s;
        }
    for (int k = 0; k < e->n_tok; k++) {
        const TokenRows *t = &e->tok[k];
        for (int j = 0; j < t->n; j++)
            memcpy(t->weight->w + (long)t->indices[j] * C, (merge ? t->values->w : t->original) + (long)j * C, sizeof(float) * C);
    }
    e->merged = merge;
}

void adapter_embed_describe_set(const AdapterSet *set, char *buf, size_t cap) {
    const EmbedAdapters *e = set->embed;
    buf[0] = 0;
    if (!e || !e->A) return;
    char *module = adapter_embed_module(set->model);
    snprintf(buf, cap, "embedding     LoRA on %s r=%d scaling=%g (lora_embedding_A [%d, %lld], lora_embedding_B [%lld, %d]%s)\n", module, e->r,
             e->scaling, e->r, (long long)e->A->shape[1], (long long)e->B->shape[0], e->r, e->save_base ? "; its base weight saved too, as PEFT does" : "");
    free(module);
}

bool adapter_embed_merge_changes_head(const AdapterSet *set) {
    return set && set->embed && set->embed->A && set->model->lm_head == set->model->wte;
}

const char *adapter_embed_what(const AdapterSet *set) {
    const EmbedAdapters *e = set ? set->embed : NULL;
    return !e ? NULL : e->A ? "LoRA on the token embedding (lora_embedding_A / lora_embedding_B)" : "trainable_token_indices (trained embedding rows)";
}

int adapter_embed_weights(const AdapterSet *set, Param **out) {
    const EmbedAdapters *e = set->embed;
    int n = 0;
    if (e && e->A) out[n++] = set->model->wte;
    for (int k = 0; e && k < e->n_tok; k++)
        if (n == 0 || out[0] != e->tok[k].weight) out[n++] = e->tok[k].weight;
    return n;
}

bool adapter_embed_view(const AdapterSet *set, EmbedView *v) {
    const EmbedAdapters *e = set ? set->embed : NULL;
    memset(v, 0, sizeof *v);
    if (!e) return false;
    v->A = e->A;
    v->B = e->B;
    v->r = e->r;
    v->scaling = e->scaling;
    v->merged = e->merged;
    v->n_rows = e->n_tok;
    for (int k = 0; k < e->n_tok; k++) {
        const TokenRows *t = &e->tok[k];
        v->rows[k].weight = t->weight;
        v->rows[k].values = t->values;
        v->rows[k].indices = t->indices;
        v->rows[k].n = t->n;
        v->rows[k].input = t->input;
        v->rows[k].head = t->head;
    }
    return true;
}
