// adapter_bias.c: PEFT's bias option for LoRA. "all" trains every base parameter whose name holds
// "bias", "lora_only" the biases of the adapted modules (LoraModel._mark_only_adapters_as_trainable);
// they are saved beside the adapter under their PEFT names (get_peft_model_state_dict:
// "base_model.model.<module>.base_layer.bias" for an adapted module, "base_model.model.<name>" for
// any other), and loading such an adapter writes them over the base's, as PEFT's load_state_dict does
// (they stay when the adapter is freed or merged, as in PEFT's unload and merge_and_unload).
//
// The set holds one Param per trained bias, named as saved, whose values are the model's own bias
// (not a copy: the forward reads the model's) and whose gradient the model's bias accumulates into.
#include "adapter.h"
#include "safetensors.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

// The saved name of base parameter i when the set trains it, else NULL (malloc'd).
static char *trained_name(const AdapterSet *set, int i) {
    const Model *m = set->model;
    const Param *base = &m->params[i];
    const Linear *lin = NULL;
    for (int k = 0; k < m->n_linears && !lin; k++)
        if (m->linears[k].bias == base) lin = &m->linears[k];
    const Adapter *a = lin ? set->by_linear[lin - m->linears] : NULL;
    if (set->cfg.bias == BIAS_NONE || (set->cfg.bias == BIAS_ALL ? !strstr(base->name, "bias") : !a)) return NULL;
    return a ? xasprintf("base_model.model.%s.base_layer.bias", lin->module) : xasprintf("base_model.model.%s", base->name);
}

int adapter_bias_attach(AdapterSet *set) {
    if (set->cfg.bias == BIAS_NONE) return 0;
    Model *m = set->model;
    if (m->adapters != set)
        return peft_fail("bias \"%s\": the adapter replaces the base model's biases, so it is loaded onto the model alone "
                         "(not beside other adapters)", adapter_bias_name(set->cfg.bias));
    for (int i = 0; i < m->n_params; i++) {
        char *name = trained_name(set, i);
        if (!name) continue;
        Param *base = &m->params[i];
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
        set->bias_base = xrealloc(set->bias_base, sizeof(Param *) * (set->n_bias + 1));
        set->bias_base[set->n_bias++] = base;
        if (!(p->grad = base->grad = try_calloc(p->numel, sizeof(float), p->name))) return -1;
    }
    return 0;  // none at all (Llama's linears and norms have no bias): PEFT trains none either
}

int adapter_bias_check_file(const AdapterSet *set, const void *file, const char *path, bool *used) {
    const SafeTensors *st = file;
    for (int i = 0; i < set->model->n_params; i++) {
        char *name = trained_name(set, i);
        if (!name) continue;
        const StTensor *t = st_find(st, name);
        long n = set->model->params[i].numel;
        int rc = !t ? peft_fail("%s: missing tensor %s (bias \"%s\" trains it)", path, name, adapter_bias_name(set->cfg.bias))
               : t->numel != n ? peft_fail("%s: tensor %s has %lld values, the base model's bias %ld", path, name, (long long)t->numel, n)
                               : 0;
        if (t) used[t - st->tensors] = true;
        free(name);
        if (rc) return rc;
    }
    return 0;
}

void adapter_bias_release(AdapterSet *set) {
    for (int i = 0; i < set->n_bias; i++) {
        Param *p = set->params[set->n_params - set->n_bias + i];
        free(p->grad);
        p->grad = set->bias_base[i]->grad = NULL;
        p->w = NULL;  // the model's
    }
    free(set->bias_base);
    set->bias_base = NULL;
    set->n_bias = 0;
}
