// adapter_config.c: adapter_config.json as HF PEFT reads and writes it, and PEFT's rule for
// which modules an adapter targets.
#include "adapter.h"
#include "lora_init.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

// PEFT's defaults for each config class.
void adapter_config_defaults(AdapterConfig *c, MethodId type) {
    memset(c, 0, sizeof *c);
    c->type = type;
    const Method *m = method_get(type);
    c->r = m ? m->default_r : 8;
    c->alpha = 8;
    c->d_initial = 0.1f;
    c->save_projection = true;
    c->init_r = 12;
    c->target_r = 8;
    c->deltaT = 1;
    c->beta1 = c->beta2 = 0.85f;
    c->orth_reg_weight = 0.5f;
    snprintf(c->task_type, sizeof c->task_type, "CAUSAL_LM");
}

static void clear_targets(AdapterConfig *c) {
    for (int i = 0; i < c->n_targets; i++) free(c->targets[i]);
    free(c->targets);
    free(c->target_regex);
    c->targets = NULL;
    c->target_regex = NULL;
    c->n_targets = 0;
}

void adapter_config_free(AdapterConfig *c) {
    clear_targets(c);
    adapter_layout_free(c);
    free(c->base_model);
    for (int i = 0; i < c->n_rank_pattern; i++) free(c->rank_pattern[i].mask);
    free(c->rank_pattern);
    memset(c, 0, sizeof *c);
}

void adapter_config_set_targets(AdapterConfig *c, const char *spec) {
    clear_targets(c);
    c->all_linear = !strcasecmp(spec, "all-linear");  // PEFT's string form, a list of one entry here
    if (!strncmp(spec, "re:", 3)) { c->target_regex = xstrdup(spec + 3); return; }
    char *copy = xstrdup(spec), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        if (!*tok) continue;
        c->targets = xrealloc(c->targets, sizeof(char *) * (c->n_targets + 1));
        c->targets[c->n_targets++] = xstrdup(tok);
    }
    free(copy);
}

void adapter_config_default_targets(AdapterConfig *c, const ModelConfig *mc) {
    adapter_config_set_targets(c, mc->arch == ARCH_GPT2 ? "c_attn" : mc->arch == ARCH_BERT ? "query,value" : "q_proj,v_proj");
    if (mc->arch == ARCH_GPT2) c->fan_in_fan_out = true;
}

bool regex_full_match(const char *pattern, const char *s) {
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED | PCRE2_ENDANCHORED, &err, &off, NULL);
    if (!re) return false;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    bool ok = pcre2_match(re, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL) >= 0;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return ok;
}

bool adapter_targets_module(const AdapterConfig *c, const char *module) {
    if (adapter_module_excluded(c, module)) return false;
    if (c->all_linear) return true;
    if (c->target_regex) return regex_full_match(c->target_regex, module);
    size_t n = strlen(module);
    bool suffix = false;
    for (int i = 0; i < c->n_targets; i++) {
        const char *t = c->targets[i];
        if (!strcmp(t, "all-linear")) return true;
        size_t k = strlen(t);
        if (!strcmp(module, t)) return true;  // PEFT: an exact name is taken whatever layers_to_transform says
        suffix |= n > k && module[n - k - 1] == '.' && !strcmp(module + n - k, t);
    }
    return suffix && adapter_module_in_layers(c, module);
}

// ---- adapter_config.json ----

static const cJSON *jfield(const cJSON *o, const char *name) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    return (f && !cJSON_IsNull(f)) ? f : NULL;
}

static int jnum(const cJSON *o, const char *name, double *out, const char *path) {
    const cJSON *f = jfield(o, name);
    if (!f) return 0;
    if (!cJSON_IsNumber(f)) return peft_fail("%s: \"%s\" must be a number", path, name);
    *out = f->valuedouble;
    return 0;
}

static int jint(const cJSON *o, const char *name, int *out, const char *path) {
    double v = *out;
    if (jnum(o, name, &v, path)) return -1;
    if (v != floor(v) || fabs(v) > 1e9) return peft_fail("%s: \"%s\" must be an integer", path, name);
    *out = (int)v;
    return 0;
}

// A float field, finite once in float (lora_alpha 1e39 would be inf and every output NaN).
static int jfloat(const cJSON *o, const char *name, float *out, const char *path) {
    double v = *out;
    if (jnum(o, name, &v, path)) return -1;
    if (!isfinite((float)v)) return peft_fail("%s: \"%s\" %g is not a finite float", path, name, v);
    *out = (float)v;
    return 0;
}

static int jbool(const cJSON *o, const char *name, bool *out, const char *path) {
    const cJSON *f = jfield(o, name);
    if (f && !cJSON_IsBool(f)) return peft_fail("%s: \"%s\" must be true or false", path, name);
    if (f) *out = cJSON_IsTrue(f);
    return 0;
}

// The keys every method's config class has in PEFT 0.21 (PeftConfig's, and those LoraConfig,
// VeraConfig and AdaLoraConfig all declare); each method's own are in its descriptor (method.h).
static const ConfigKey COMMON_KEYS[] = {
    {"peft_type", KEY_USED, NULL, NULL},
    {"target_modules", KEY_USED, NULL, NULL},
    {"task_type", KEY_USED, "[null, \"CAUSAL_LM\", \"SEQ_CLS\"]", "another task type puts another head on the model"},
    {"fan_in_fan_out", KEY_USED, NULL, NULL},  // as PEFT: the layer type decides (GPT-2's Conv1D: true)
    {"auto_mapping", KEY_INERT, NULL, NULL},
    {"base_model_name_or_path", KEY_INERT, NULL, NULL},
    {"revision", KEY_INERT, NULL, NULL},
    {"peft_version", KEY_INERT, NULL, NULL},
    {"inference_mode", KEY_INERT, NULL, NULL},
    {"bias", KEY_DEFAULT, "[\"none\"]", "it trains and saves the base model's biases"},
    {"modules_to_save", KEY_USED, NULL, NULL},  // adapter_base.c
    {"layers_to_transform", KEY_USED, NULL, NULL},  // adapter_layout.c
    {"layers_pattern", KEY_USED, NULL, NULL},
};

static const ConfigKey *find_key(const ConfigKey *keys, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(keys[i].key, name)) return &keys[i];
    return NULL;
}

// The method's own entry for a key, else its base config's, else the common one.
static const ConfigKey *method_key(const Method *m, const char *name) {
    for (; m; m = m->config_base) {
        const ConfigKey *k = find_key(m->keys, m->n_keys, name);
        if (k) return k;
    }
    return find_key(COMMON_KEYS, sizeof COMMON_KEYS / sizeof *COMMON_KEYS, name);
}

const ConfigKey *adapter_config_key(MethodId type, const char *name) {
    const Method *m = method_get(type);
    return m ? method_key(m, name) : NULL;
}

int adapter_config_key_names(MethodId type, const char **names, int cap) {
    int n = 0;
    const int n_common = sizeof COMMON_KEYS / sizeof *COMMON_KEYS;
    for (const Method *m = method_get(type); m; m = m->config_base)
        for (int i = 0; i <= m->n_keys; i++) {
            const char *k = i < m->n_keys ? m->keys[i].key : NULL;
            bool seen = !k;
            for (int j = 0; j < n && !seen; j++) seen = !strcmp(names[j], k);
            if (!seen && n < cap) names[n++] = k;
        }
    for (int i = 0; i < n_common; i++) {
        bool seen = false;
        for (int j = 0; j < n && !seen; j++) seen = !strcmp(names[j], COMMON_KEYS[i].key);
        if (!seen && n < cap) names[n++] = COMMON_KEYS[i].key;
    }
    return n;
}

static bool is_empty_value(const cJSON *v) {
    return cJSON_IsNull(v) || cJSON_IsFalse(v) || (cJSON_IsString(v) && !v->valuestring[0]) ||
           ((cJSON_IsArray(v) || cJSON_IsObject(v)) && !v->child);
}

static bool is_accepted(const ConfigKey *k, const cJSON *v) {
    if (!k->accepted) return k->use != KEY_DEFAULT || is_empty_value(v);
    cJSON *list = cJSON_Parse(k->accepted);
    bool ok = false;
    const cJSON *a;
    cJSON_ArrayForEach(a, list) ok |= cJSON_Compare(a, v, true);
    cJSON_Delete(list);
    return ok;
}

// Every key of the file is one of this method's, with a value it accepts.
static int check_keys(const cJSON *j, const Method *m, const char *path) {
    const cJSON *v;
    cJSON_ArrayForEach(v, j) {
        const ConfigKey *k = method_key(m, v->string);
        if (!k)
            return peft_fail("%s: unknown key \"%s\": PEFT 0.21's %s config has no such key, and a key that may change "
                             "what the adapter computes is refused rather than ignored", path, v->string, m->peft_type);
        if (is_accepted(k, v)) continue;
        char *text = cJSON_PrintUnformatted(v);
        int rc = peft_fail("%s: \"%s\": %.80s is not supported (%s)%s%s", path, v->string, text, k->what ? k->what : "",
                           k->accepted ? "; supported: " : "", k->accepted ? k->accepted : "");
        free(text);
        return rc;
    }
    return 0;
}

// AdaLoRA's rank_pattern: {"<module>.lora_E.default" or "<module>": [bool, ...]}.
static int parse_rank_pattern(AdapterConfig *c, const cJSON *rp, const char *path) {
    if (!rp) return 0;
    if (!cJSON_IsObject(rp)) return peft_fail("%s: rank_pattern must be an object", path);
    const cJSON *e;
    cJSON_ArrayForEach(e, rp) {
        if (!cJSON_IsArray(e)) return peft_fail("%s: rank_pattern[\"%s\"] must be a list of booleans", path, e->string);
        c->rank_pattern = xrealloc(c->rank_pattern, sizeof(RankPatternEntry) * (c->n_rank_pattern + 1));
        RankPatternEntry *r = &c->rank_pattern[c->n_rank_pattern++];
        memset(r, 0, sizeof *r);
        snprintf(r->module, sizeof r->module, "%s", e->string);
        char *suffix = strstr(r->module, ".lora_E");
        if (suffix) *suffix = 0;
        int n = cJSON_GetArraySize(e);
        if (n != c->init_r) return peft_fail("%s: rank_pattern[\"%s\"] has %d entries but init_r is %d", path, e->string, n, c->init_r);
        r->mask = xcalloc(n ? n : 1, sizeof(bool));
        for (int i = 0; i < n; i++) {
            const cJSON *b = cJSON_GetArrayItem(e, i);
            if (!cJSON_IsBool(b) && !cJSON_IsNumber(b)) return peft_fail("%s: rank_pattern[\"%s\"] must hold booleans", path, e->string);
            r->mask[i] = cJSON_IsTrue(b) || (cJSON_IsNumber(b) && b->valuedouble != 0);
            r->rank += r->mask[i];
        }
    }
    return 0;
}

void adapter_config_add_module_to_save(AdapterConfig *c, const char *name) {
    for (int i = 0; i < c->n_modules_to_save; i++)
        if (!strcmp(c->modules_to_save[i], name)) return;
    c->modules_to_save = xrealloc(c->modules_to_save, sizeof(char *) * (c->n_modules_to_save + 1));
    c->modules_to_save[c->n_modules_to_save++] = xstrdup(name);
}

// PeftModelForSequenceClassification adds its heads' names, "classifier" and "score", to a SEQ_CLS
// adapter's modules_to_save (the file PEFT saves already has them).
static void add_task_modules(AdapterConfig *c) {
    if (strcmp(c->task_type, "SEQ_CLS")) return;
    adapter_config_add_module_to_save(c, "classifier");
    adapter_config_add_module_to_save(c, "score");
}

// A variant of the file's method whose key is true (LoRA with use_dora: DoRA) is the adapter's method.
static int find_variant(const cJSON *j, MethodId *type, const char *path) {
    const Method *base = method_get(*type);
    for (int i = 0; i < METHOD_COUNT; i++) {
        const Method *v = method_get((MethodId)i);
        bool on = false;
        if (!v->variant_key || v->config_base != base) continue;
        if (jbool(j, v->variant_key, &on, path)) return -1;
        if (on) *type = v->id;
    }
    return 0;
}

static int parse_adapter_config(AdapterConfig *c, const cJSON *j, const char *path) {
    const cJSON *pt = jfield(j, "peft_type");
    if (!pt || !cJSON_IsString(pt)) return peft_fail("%s: missing \"peft_type\"", path);
    MethodId type;
    char types[128];
    if (method_from_peft_type(pt->valuestring, &type))
        return peft_fail("%s: unknown peft_type \"%s\" (%s are supported)", path, pt->valuestring,
                         method_names(types, sizeof types, ", ", ", ", LIST_PEFT_TYPES));
    adapter_config_defaults(c, type);
    if (check_keys(j, method_get(type), path) || find_variant(j, &c->type, path)) return -1;
    MethodId file_type = type;  // LORA for DoRA too: LoRA's keys are read for its variants
    type = c->type;
    double key = 0;  // projection_prng_key: an integer seed; torch wraps negative ones to uint64
    if (jint(j, "r", &c->r, path) || jfloat(j, "lora_alpha", &c->alpha, path) ||
        jfloat(j, type == METHOD_VERA ? "vera_dropout" : "lora_dropout", &c->dropout, path) ||
        jfloat(j, "d_initial", &c->d_initial, path) || jnum(j, "projection_prng_key", &key, path) ||
        jint(j, "init_r", &c->init_r, path) || jint(j, "target_r", &c->target_r, path) || jint(j, "tinit", &c->tinit, path) ||
        jint(j, "tfinal", &c->tfinal, path) || jint(j, "deltaT", &c->deltaT, path) || jint(j, "total_step", &c->total_step, path) ||
        jfloat(j, "beta1", &c->beta1, path) || jfloat(j, "beta2", &c->beta2, path) ||
        jfloat(j, "orth_reg_weight", &c->orth_reg_weight, path))
        return -1;
    if (key != floor(key) || fabs(key) > 9007199254740992.0) return peft_fail("%s: projection_prng_key must be an integer below 2^53", path);
    c->prng_key = (uint64_t)(int64_t)key;
    if (jbool(j, "use_rslora", &c->use_rslora, path) || jbool(j, "fan_in_fan_out", &c->fan_in_fan_out, path) ||
        jbool(j, "save_projection", &c->save_projection, path))
        return -1;
    const cJSON *init = jfield(j, "init_lora_weights");
    if (file_type == METHOD_LORA && init) {
        if (!cJSON_IsBool(init) && !cJSON_IsString(init)) return peft_fail("%s: \"init_lora_weights\" must be true, false or a string", path);
        if (lora_init_parse(c, cJSON_IsString(init) ? init->valuestring : cJSON_IsTrue(init) ? "true" : "false", path)) return -1;
    }
    const cJSON *tt = jfield(j, "task_type");
    snprintf(c->task_type, sizeof c->task_type, "%s", tt && cJSON_IsString(tt) ? tt->valuestring : "");
    const cJSON *bm = jfield(j, "base_model_name_or_path");
    if (bm && cJSON_IsString(bm)) c->base_model = xstrdup(bm->valuestring);
    const cJSON *t = jfield(j, "target_modules");
    if (t && cJSON_IsString(t) && !strcasecmp(t->valuestring, "all-linear")) adapter_config_set_targets(c, "all-linear");
    else if (t && cJSON_IsString(t)) c->target_regex = xstrdup(t->valuestring);
    else if (t && cJSON_IsArray(t)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, t) {
            if (!cJSON_IsString(e)) return peft_fail("%s: target_modules must hold strings", path);
            c->targets = xrealloc(c->targets, sizeof(char *) * (c->n_targets + 1));
            c->targets[c->n_targets++] = xstrdup(e->valuestring);
        }
    } else return peft_fail("%s: missing \"target_modules\"", path);
    if (adapter_layout_parse(c, j, path)) return -1;
    add_task_modules(c);
    if (type == METHOD_ADALORA && parse_rank_pattern(c, jfield(j, "rank_pattern"), path)) return -1;
    if (type == METHOD_ADALORA) c->r = c->init_r;
    if (c->r <= 0) return peft_fail("%s: r must be positive (got %d)", path, c->r);
    if (c->dropout < 0 || c->dropout >= 1) return peft_fail("%s: dropout must be in [0, 1)", path);
    return 0;
}

int adapter_config_parse(AdapterConfig *c, const char *text, const char *path) {
    cJSON *j = cJSON_Parse(text);
    memset(c, 0, sizeof *c);
    int rc = (!j || !cJSON_IsObject(j)) ? peft_fail("%s: not a JSON object", path) : parse_adapter_config(c, j, path);
    cJSON_Delete(j);
    if (rc) adapter_config_free(c);
    return rc;
}

int adapter_config_load(AdapterConfig *c, const char *path) {
    char *text = read_file(path, NULL);
    if (!text) return -1;
    int rc = adapter_config_parse(c, text, path);
    free(text);
    return rc;
}

void *adapter_config_to_json_object(const AdapterConfig *c) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "peft_type", method_get(c->type)->peft_type);
    if (c->task_type[0]) cJSON_AddStringToObject(j, "task_type", c->task_type);
    else cJSON_AddNullToObject(j, "task_type");
    if (c->base_model) cJSON_AddStringToObject(j, "base_model_name_or_path", c->base_model);
    else cJSON_AddNullToObject(j, "base_model_name_or_path");
    cJSON_AddNumberToObject(j, "r", c->r);
    if (c->target_regex) cJSON_AddStringToObject(j, "target_modules", c->target_regex);
    else cJSON_AddItemToObject(j, "target_modules", cJSON_CreateStringArray((const char *const *)c->targets, c->n_targets));
    cJSON_AddBoolToObject(j, "fan_in_fan_out", c->fan_in_fan_out);
    cJSON_AddStringToObject(j, "bias", "none");
    cJSON_AddBoolToObject(j, "inference_mode", true);
    cJSON_AddNullToObject(j, "modules_to_save");
    if (c->type == METHOD_VERA) {
        cJSON_AddNumberToObject(j, "vera_dropout", c->dropout);
        cJSON_AddNumberToObject(j, "d_initial", c->d_initial);
        cJSON_AddNumberToObject(j, "projection_prng_key", (double)c->prng_key);
        cJSON_AddBoolToObject(j, "save_projection", c->save_projection);
        cJSON_AddBoolToObject(j, "init_weights", true);
    } else {
        cJSON_AddNumberToObject(j, "lora_alpha", c->alpha);
        cJSON_AddNumberToObject(j, "lora_dropout", c->dropout);
        cJSON_AddBoolToObject(j, "use_rslora", c->use_rslora);
        cJSON_AddItemToObject(j, "init_lora_weights", lora_init_json(c));
        cJSON_AddItemToObject(j, "alpha_pattern", cJSON_CreateObject());
    }
    const Method *m = method_get(c->type), *file_method = m->variant_key ? m->config_base : m;  // DoRA's file is LoRA's
    if (file_method->id == METHOD_LORA) cJSON_AddItemToObject(j, "rank_pattern", cJSON_CreateObject());
    if (m->variant_key) cJSON_AddBoolToObject(j, m->variant_key, true);
    adapter_layout_to_json(c, j);
    if (c->type == METHOD_ADALORA) {
        cJSON_AddNumberToObject(j, "init_r", c->init_r);
        cJSON_AddNumberToObject(j, "target_r", c->target_r);
        cJSON_AddNumberToObject(j, "tinit", c->tinit);
        cJSON_AddNumberToObject(j, "tfinal", c->tfinal);
        cJSON_AddNumberToObject(j, "deltaT", c->deltaT);
        cJSON_AddNumberToObject(j, "beta1", c->beta1);
        cJSON_AddNumberToObject(j, "beta2", c->beta2);
        cJSON_AddNumberToObject(j, "orth_reg_weight", c->orth_reg_weight);
        if (c->total_step) cJSON_AddNumberToObject(j, "total_step", c->total_step);
        else cJSON_AddNullToObject(j, "total_step");
    }
    return j;
}
