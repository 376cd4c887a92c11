// saved_modules.c: PEFT's modules_to_save, as its SEQ_CLS task uses it (the classification head
// trains beside the adapter and is saved in adapter_model.safetensors). PEFT wraps each module whose
// name ends with an entry (ModulesToSaveWrapper): the original stays frozen, a deep copy trains, and
// get_peft_model_state_dict saves the copy's tensors as "base_model.model.<module>.<tensor>", i.e.
// "base_model.model." before the tensor's own name in the base model. Here a copy of each such
// tensor joins the set's trainable tensors under that key, and the linear computes with it.
#include "adapter.h"
#include "safetensors.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

typedef struct SavedModules {
    int n;
    Param **orig, **copy;        // the base tensor and its trained copy (owned by set->params)
    Linear **lin;                // the linear the tensor belongs to
    bool *bias;                  // the tensor is the linear's bias (else its weight)
    bool attached;               // the set is the model's: its linears compute with the copies, unless merged
    bool merged;                 // the base tensors hold the trained values (the copies the base's)
} SavedModules;

// PEFT (_set_trainable): a module is wrapped when its name ends with an entry, as strings.
bool saved_modules_covers(const AdapterConfig *c, const char *tensor) {
    size_t n = strlen(tensor);
    for (size_t end = 0; end < n; end++) {
        if (tensor[end] != '.') continue;  // the module names above the tensor: tensor[0..end)
        for (int i = 0; i < c->n_modules_to_save; i++) {
            size_t k = strlen(c->modules_to_save[i]);
            if (k <= end && !memcmp(tensor + end - k, c->modules_to_save[i], k)) return true;
        }
    }
    return false;
}

// PEFT (check_target_module_exists): an adapter never targets a module inside a module to save, one
// whose name has the entry as whole dot-separated parts ("(^|.*\.)entry($|\..*)").
bool saved_modules_excludes(const AdapterConfig *c, const char *module) {
    size_t n = strlen(module);
    for (int i = 0; i < c->n_modules_to_save; i++) {
        size_t k = strlen(c->modules_to_save[i]);
        for (const char *at = strstr(module, c->modules_to_save[i]); at; at = strstr(at + 1, c->modules_to_save[i])) {
            size_t start = (size_t)(at - module), end = start + k;
            if ((start == 0 || module[start - 1] == '.') && (end == n || module[end] == '.')) return true;
        }
    }
    return false;
}

static char *file_key(const char *tensor) { return xasprintf("base_model.model.%s", tensor); }

int saved_modules_check_file(const AdapterSet *set, const void *file, const char *path, bool *used) {
    const SafeTensors *st = file;
    const Model *m = set->model;
    for (int i = 0; i < m->n_params; i++) {
        const Param *p = &m->params[i];
        if (!saved_modules_covers(&set->cfg, p->name)) continue;
        char *key = file_key(p->name), got[160];
        const StTensor *t = st_find(st, key);
        int rc = 0;
        if (!t) rc = peft_fail("%s: missing tensor %s (modules_to_save)", path, key);
        else if (t->numel != p->numel || t->ndim != p->ndim || t->shape[0] != p->shape[0] || (p->ndim == 2 && t->shape[1] != p->shape[1]))
            rc = peft_fail("%s: tensor %s has shape [%s] but the base model's %s is [%s]", path, key, st_shape_text(t->ndim, t->shape, got, sizeof got),
                           p->name, st_shape_text(p->ndim, p->shape, got + 80, 80));
        else used[t - st->tensors] = true;
        free(key);
        if (rc) return rc;
    }
    return 0;
}

static void point_linears(SavedModules *s, bool copies) {
    for (int i = 0; i < s->n; i++) {
        Param *p = copies ? s->copy[i] : s->orig[i];
        if (s->bias[i]) s->lin[i]->bias = p;
        else s->lin[i]->weight = p;
    }
}

int saved_modules_init(AdapterSet *set) {
    if (!set->cfg.n_modules_to_save) return 0;
    Model *m = set->model;
    SavedModules *s = xcalloc(1, sizeof *s);
    set->saved = s;
    for (int i = 0; i < m->n_params; i++) {
        Param *p = &m->params[i];
        if (!saved_modules_covers(&set->cfg, p->name)) continue;
        Linear *lin = NULL;
        for (int k = 0; k < m->n_linears && !lin; k++)
            if (m->linears[k].weight == p || m->linears[k].bias == p) lin = &m->linears[k];
        if (!lin) return peft_fail("modules_to_save: %s is not a linear layer's weight or bias (only linear layers are implemented)", p->name);
        if (set->by_linear[lin - m->linears])  // (saved_modules_excludes keeps PEFT's entries apart; this one differs)
            return peft_fail("modules_to_save: %s is also a target of the adapter", lin->module);
        if (lin->q) return peft_fail("modules_to_save: %s is quantized (a trained copy of a quantized layer is not implemented)", lin->module);
        Param *c = xcalloc(1, sizeof *c);
        *c = (Param){.name = file_key(p->name), .ndim = p->ndim, .shape = {p->shape[0], p->shape[1]}, .numel = p->numel,
                     .trainable = true, .decay = true};
        set->params = xrealloc(set->params, sizeof(Param *) * (set->n_params + 1));
        set->params[set->n_params++] = c;  // owned by the set from here
        if (!(c->w = try_calloc(p->numel, sizeof(float), c->name)) || !(c->grad = try_calloc(p->numel, sizeof(float), c->name))) return -1;
        memcpy(c->w, p->w, sizeof(float) * p->numel);
        s->orig = xrealloc(s->orig, sizeof(Param *) * (s->n + 1));
        s->copy = xrealloc(s->copy, sizeof(Param *) * (s->n + 1));
        s->lin = xrealloc(s->lin, sizeof(Linear *) * (s->n + 1));
        s->bias = xrealloc(s->bias, sizeof(bool) * (s->n + 1));
        s->orig[s->n] = p;
        s->copy[s->n] = c;
        s->lin[s->n] = lin;
        s->bias[s->n++] = lin->bias == p;
    }
    if (!s->n) {
        char *list = xstrdup("");
        for (int i = 0; i < set->cfg.n_modules_to_save; i++) {
            char *next = xasprintf("%s%s%s", list, i ? ", " : "", set->cfg.modules_to_save[i]);
            free(list);
            list = next;
        }
        int rc = peft_fail("modules_to_save [%s] matched no module of the model", list);
        free(list);
        return rc;
    }
    s->attached = m->adapters == set;
    if (s->attached) point_linears(s, true);
    return 0;
}

void saved_modules_save(const AdapterSet *set, void *writer) {
    const SavedModules *s = set->saved;
    for (int i = 0; s && i < s->n; i++) st_writer_add_f32(writer, s->copy[i]->name, s->copy[i]->ndim, s->copy[i]->shape, s->copy[i]->w);
}

// The values trade places (pointers, exactly reversible): merged, the base tensors hold the trained
// values and the linears compute with them; unmerged, as before.
void saved_modules_merge(AdapterSet *set, bool merge) {
    SavedModules *s = set->saved;
    if (!s || !s->attached || s->merged == merge) return;
    for (int i = 0; i < s->n; i++) {
        float *w = s->orig[i]->w;
        s->orig[i]->w = s->copy[i]->w;
        s->copy[i]->w = w;
    }
    point_linears(s, !merge);
    s->merged = merge;
}

void saved_modules_free(AdapterSet *set) {
    SavedModules *s = set->saved;
    if (!s) return;
    saved_modules_merge(set, false);
    if (s->attached) point_linears(s, false);
    free(s->orig);
    free(s->copy);
    free(s->lin);
    free(s->bias);
    free(s);
    set->saved = NULL;
}
