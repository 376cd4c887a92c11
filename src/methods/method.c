// method.c: the table of methods (method.h), and full fine-tuning's descriptor: every weight
// trains, so it has no adapter tensors, ops or config keys.
#include "method.h"
#include "util.h"
#include <stdio.h>
#include <string.h>
#include <strings.h>

// Common starting point for full fine-tuning: HF's 5e-5.
const Method full_method = {
    .id = METHOD_FULL,
    .name = "full",
    .title = "full fine-tuning",
    .default_r = 8,  // unused; the estimator's adapter options start from LoRA's shape
    .default_lr = 5e-5f,
};

static const Method *const METHODS[METHOD_COUNT] = {
    [METHOD_LORA] = &lora_method,
    [METHOD_VERA] = &vera_method,
    [METHOD_ADALORA] = &adalora_method,
    [METHOD_FULL] = &full_method,
    [METHOD_DORA] = &dora_method,
};

const Method *method_get(MethodId id) {
    if ((unsigned)id >= METHOD_COUNT) { peft_fail("no method with id %d", (int)id); return NULL; }
    return METHODS[id];
}

int method_parse(const char *name, MethodId *out) {
    for (int i = 0; i < METHOD_COUNT; i++)
        if (!strcasecmp(name, METHODS[i]->name)) { *out = (MethodId)i; return 0; }
    char list[128];
    return peft_fail("unknown method \"%s\" (%s)", name, method_names(list, sizeof list, ", ", " or ", LIST_NAMES));
}

int method_from_peft_type(const char *peft_type, MethodId *out) {
    for (int i = 0; i < METHOD_COUNT; i++)
        if (METHODS[i]->peft_type && !METHODS[i]->variant_key && !strcasecmp(peft_type, METHODS[i]->peft_type)) { *out = (MethodId)i; return 0; }
    return -1;
}

int64_t adapter_dim(AdapterDim d, int64_t r, int64_t in, int64_t out) {
    return d == DIM_RANK ? r : d == DIM_IN ? in : d == DIM_OUT ? out : 1;
}

int64_t method_module_params(const Method *m, int64_t r, int64_t in, int64_t out) {
    int64_t n = 0;
    for (int k = 0; k < m->n_tensors; k++) n += adapter_dim(m->tensors[k].rows, r, in, out) * adapter_dim(m->tensors[k].cols, r, in, out);
    return n;
}

const char *method_name(MethodId id) { return (unsigned)id < METHOD_COUNT ? METHODS[id]->name : "?"; }

const char *method_names(char *buf, size_t cap, const char *sep, const char *last, MethodList what) {
    int n = 0, k = 0;
    // Listed: every method by name; the adapter methods by title; by peft_type, those that are not a variant.
#define LISTED(m) (what == LIST_NAMES || ((m)->peft_type && (what == LIST_TITLES || !(m)->variant_key)))
    for (int i = 0; i < METHOD_COUNT; i++) n += LISTED(METHODS[i]);
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < METHOD_COUNT; i++) {
        const Method *m = METHODS[i];
        if (!LISTED(m)) continue;
        const char *item = what == LIST_NAMES ? m->name : what == LIST_TITLES ? m->title : m->peft_type;
        int w = snprintf(buf + len, cap - len, "%s%s", k == 0 ? "" : k == n - 1 ? last : sep, item);
        if (w < 0 || (size_t)w >= cap - len) break;
        len += (size_t)w;
        k++;
    }
    return buf;
#undef LISTED
}
