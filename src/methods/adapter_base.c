// adapter_base.c: base parameters a LoRA adapter trains and saves beside its own tensors, as PEFT 0.21
// does for two options:
//   bias: "all" trains every base parameter whose name holds "bias", "lora_only" the adapted modules'
//     biases (LoraModel._mark_only_adapters_as_trainable); saved as "base_model.model.<module>.base_layer.bias"
//     for an adapted module, "base_model.model.<name>" for any other (get_peft_model_state_dict);
//   modules_to_save: every parameter of each module whose name ends with an entry (PEFT's _set_trainable)
//     trains as a full copy (ModulesToSaveWrapper), saved as "base_model.model.<module>.<param>".
// Loading such an adapter writes them over the base's, as PEFT's load does (they stay when the adapter
// is freed or merged, as in PEFT's unload and merge_and_unload, which keep the loaded biases and the
// trained copies).
//
// The set holds one Param per such tensor, named as saved, whose values are the model's own (not a
// copy: the forward reads the model's) and whose gradient the model's parameter accumulates into.
#include "adapter.h"
#include "safetensors.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

// PEFT's _set_trainable: a module is wrapped when its name ends with the entry (as strings), and
// every parameter inside it trains: whether some module above the parameter is one.
static bool in_module_to_save(const char *param, const char *entry) {
    char *module = xstrdup(param);
    bool hit = false;
    for (char *dot = strrchr(module, '.'); dot && !hit; dot = strrchr(module, '.')) {
        *dot = 0;
        hit = ends_with(module, entry);
    }
    free(module);
    return hit;
}

bool adapter_base_to_save(const AdapterConfig *c, const char *param) {
    for (int k = 0; k < c->n_modules_to_save; k++)
        if (in_module_to_save(param, c->modules_to_save[k])) return true;
    return false;
}

// The saved name of base parameter i when the set trains it, else NULL (malloc'd).
static char *trained_name(const AdapterSet *set, int i) {
    const Model *m = set->model;
    const AdapterConfig *c = &set->cfg;
    const Param *base = &m->params[i];
    if (adapter_base_to_save(c, base->name)) return xasprintf("base_model.model.%s", base->name);
    const Linear *lin = NULL;
    for (int k = 0; k < m->n_linears && !lin; k++)
        if (m->linears[k].bias == base) lin = &m->linears[k];
    const Adapter *a = lin ? set->by_linear[lin - m->linears] : NULL;
    if (c->bias == BIAS_NONE || (c->bias == BIAS_ALL ? !strstr(base->name, "bias") : !a)) return NULL;
    return a ? xasprintf("base_model.model.%s.base_layer.bias", lin->module) : xasprintf("base_model.model.%s", base->name);
}

int adapter_base_refuse_tied(const AdapterConfig *c, const char *wte_name) {
    for (int k = 0; k < c->n_modules_to_save; k++) {
        const char *e = c->modules_to_save[k];
        bool head = ends_with("lm_head", e), emb = ends_with(wte_name, e) || ends_with("transformer.wte", e) || ends_with("model.embed_tokens", e);
        if (head || emb)
            return peft_fail("modules_to_save \"%s\": the model ties its embedding and output head; PEFT would train a copy for one "
                             "of the two uses only: not implemented (untie the weights, or leave it out)", e);
    }
    return 0;
}

// modules_to_save entries PEFT would copy but that are no trainable parameter here: the tied output
// head (adapter_base_refuse_tied) and quantized linears.
static int check_modules_to_save(const AdapterSet *set) {
    const Model *m = set->model;
    const AdapterConfig *c = &set->cfg;
    if (m->lm_head == m->wte && adapter_base_refuse_tied(c, m->wte->name)) return -1;
    for (int k = 0; k < c->n_modules_to_save; k++) {
        const char *e = c->modules_to_save[k];
        for (int i = 0; i < m->n_linears; i++)
            if (m->linears[i].q && ends_with(m->linears[i].module, e))
                return peft_fail("modules_to_save \"%s\": %s is quantized; a trained full copy of it is not implemented", e, m->linears[i].module);
    }
    return 0;
}

int adapter_base_attach(AdapterSet *set) {
    if (set->cfg.bias == BIAS_NONE && set->cfg.n_modules_to_save == 0) return 0;
    Model *m = set->model;
    if (check_modules_to_save(set)) return -1;
    for (int i = 0; i < m->n_params; i++) {
        char *name = trained_name(set, i);
        if (!name) continue;
        Param *base = &m->params[i];
        if (m->adapters != set) {  // a detached set (serving several adapters on one base)
            free(name);
            return peft_fail("%s: the adapter replaces the base's %s, so it is loaded onto the model alone (not beside other adapters)",
                             set->cfg.n_modules_to_save ? "modules_to_save" : "bias", base->name);
        }
        if (base->grad) { free(name); return peft_fail("%s already has a gradient: something else trains it", base->name); }
        Param *p = xcalloc(1, sizeof *p);
        p->name = name;
        p->ndim = base->ndim;
        memcpy(p->shape, base->shape, sizeof p->shape);
        p->numel = base->numel;
        p->w = base->w;
        p->trainable = p->decay = true;
        set->params = xrealloc(set->params, sizeof(Param *) * (set->n_params + 1));
        set->params[set->n_params++] = p;
        set->base_of = xrealloc(set->base_of, sizeof(Param *) * (set->n_base + 1));
        set->base_of[set->n_base++] = base;
        if (!(p->grad = base->grad = try_calloc(p->numel, sizeof(float), p->name))) return -1;
    }
    bool found = false;  // PEFT (_set_trainable): an error when no entry names a module (SEQ_CLS's "score" is not RoBERTa's)
    for (int i = 0; i < set->n_base && !found; i++) found = adapter_base_to_save(&set->cfg, set->base_of[i]->name);
    if (set->cfg.n_modules_to_save && !found) {
        char list[512] = "";
        for (int k = 0; k < set->cfg.n_modules_to_save; k++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "", set->cfg.modules_to_save[k]);
        return peft_fail("modules_to_save [%s] names no module of the model with parameters", list);
    }
    return 0;  // bias with no bias at all (Llama's linears and norms have none): PEFT trains none either
}

int adapter_base_check_file(const AdapterSet *set, const void *file, const char *path, bool *used) {
    const SafeTensors *st = file;
    if ((set->cfg.bias != BIAS_NONE || set->cfg.n_modules_to_save) && check_modules_to_save(set)) return -1;
    for (int i = 0; i < set->model->n_params; i++) {
        char *name = trained_name(set, i);
        if (!name) continue;
        const StTensor *t = st_find(st, name);
        long n = set->model->params[i].numel;
        int rc = !t ? peft_fail("%s: missing tensor %s (%s trains it)", path, name, set->cfg.n_modules_to_save ? "modules_to_save or bias" : "bias")
               : t->numel != n ? peft_fail("%s: tensor %s has %lld values, the base model's %ld", path, name, (long long)t->numel, n)
                               : 0;
        if (t) used[t - st->tensors] = true;
        free(name);
        if (rc) return rc;
    }
    return 0;
}

void adapter_base_release(AdapterSet *set) {
    for (int i = 0; i < set->n_base; i++) {
        Param *p = set->params[set->n_params - set->n_base + i];
        free(p->grad);
        p->grad = set->base_of[i]->grad = NULL;
        p->w = NULL;  // the model's
    }
    free(set->base_of);
    set->base_of = NULL;
    set->n_base = 0;
}

void adapter_base_save(const AdapterSet *set, void *writer) {
    for (int i = set->n_params - set->n_base; i < set->n_params; i++) {
        const Param *p = set->params[i];
        st_writer_add_f32(writer, p->name, p->ndim, p->shape, p->w);
    }
}
