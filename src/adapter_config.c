// adapter_config.c: adapter_config.json as HF PEFT reads and writes it, and PEFT's rule for
// which modules an adapter targets.
#include "adapter.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *peft_type_name(PeftType t) {
    return t == PEFT_LORA ? "LORA" : t == PEFT_VERA ? "VERA" : "ADALORA";
}

int peft_type_parse(const char *s, PeftType *out) {
    if (!strcasecmp(s, "LORA")) *out = PEFT_LORA;
    else if (!strcasecmp(s, "VERA")) *out = PEFT_VERA;
    else if (!strcasecmp(s, "ADALORA")) *out = PEFT_ADALORA;
    else return -1;
    return 0;
}

// PEFT's defaults for each config class.
void adapter_config_defaults(AdapterConfig *c, PeftType type) {
    memset(c, 0, sizeof *c);
    c->type = type;
    c->r = type == PEFT_VERA ? 256 : 8;
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
    free(c->base_model);
    for (int i = 0; i < c->n_rank_pattern; i++) free(c->rank_pattern[i].mask);
    free(c->rank_pattern);
    memset(c, 0, sizeof *c);
}

void adapter_config_set_targets(AdapterConfig *c, const char *spec) {
    clear_targets(c);
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
    adapter_config_set_targets(c, mc->arch == ARCH_GPT2 ? "c_attn" : "q_proj,v_proj");
    if (mc->arch == ARCH_GPT2) c->fan_in_fan_out = true;
}

static bool regex_full_match(const char *pattern, const char *s) {
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
    if (c->target_regex) return regex_full_match(c->target_regex, module);
    size_t n = strlen(module);
    for (int i = 0; i < c->n_targets; i++) {
        const char *t = c->targets[i];
        if (!strcmp(t, "all-linear")) return true;
        size_t k = strlen(t);
        if (!strcmp(module, t)) return true;
        if (n > k && module[n - k - 1] == '.' && !strcmp(module + n - k, t)) return true;
    }
    return false;
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

static int jfloat(const cJSON *o, const char *name, float *out, const char *path) {
    double v = *out;
    if (jnum(o, name, &v, path)) return -1;
    *out = (float)v;
    return 0;
}

static void jbool(const cJSON *o, const char *name, bool *out) {
    const cJSON *f = jfield(o, name);
    if (f && cJSON_IsBool(f)) *out = cJSON_IsTrue(f);
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

static int parse_adapter_config(AdapterConfig *c, const cJSON *j, const char *path) {
    const cJSON *pt = jfield(j, "peft_type");
    if (!pt || !cJSON_IsString(pt)) return peft_fail("%s: missing \"peft_type\"", path);
    PeftType type;
    if (peft_type_parse(pt->valuestring, &type))
        return peft_fail("%s: unknown peft_type \"%s\" (LORA, VERA, ADALORA are supported)", path, pt->valuestring);
    adapter_config_defaults(c, type);
    double key = 0;  // projection_prng_key: an integer seed; torch wraps negative ones to uint64
    if (jint(j, "r", &c->r, path) || jfloat(j, "lora_alpha", &c->alpha, path) ||
        jfloat(j, type == PEFT_VERA ? "vera_dropout" : "lora_dropout", &c->dropout, path) ||
        jfloat(j, "d_initial", &c->d_initial, path) || jnum(j, "projection_prng_key", &key, path) ||
        jint(j, "init_r", &c->init_r, path) || jint(j, "target_r", &c->target_r, path) || jint(j, "tinit", &c->tinit, path) ||
        jint(j, "tfinal", &c->tfinal, path) || jint(j, "deltaT", &c->deltaT, path) || jint(j, "total_step", &c->total_step, path) ||
        jfloat(j, "beta1", &c->beta1, path) || jfloat(j, "beta2", &c->beta2, path) ||
        jfloat(j, "orth_reg_weight", &c->orth_reg_weight, path))
        return -1;
    if (key != floor(key) || fabs(key) > 9007199254740992.0) return peft_fail("%s: projection_prng_key must be an integer below 2^53", path);
    c->prng_key = (uint64_t)(int64_t)key;
    jbool(j, "use_rslora", &c->use_rslora);
    jbool(j, "fan_in_fan_out", &c->fan_in_fan_out);
    jbool(j, "save_projection", &c->save_projection);
    const cJSON *tt = jfield(j, "task_type");
    snprintf(c->task_type, sizeof c->task_type, "%s", tt && cJSON_IsString(tt) ? tt->valuestring : "");
    const cJSON *bm = jfield(j, "base_model_name_or_path");
    if (bm && cJSON_IsString(bm)) c->base_model = xstrdup(bm->valuestring);
    const cJSON *t = jfield(j, "target_modules");
    if (t && cJSON_IsString(t)) c->target_regex = xstrdup(t->valuestring);
    else if (t && cJSON_IsArray(t)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, t) {
            if (!cJSON_IsString(e)) return peft_fail("%s: target_modules must hold strings", path);
            c->targets = xrealloc(c->targets, sizeof(char *) * (c->n_targets + 1));
            c->targets[c->n_targets++] = xstrdup(e->valuestring);
        }
    } else return peft_fail("%s: missing \"target_modules\"", path);
    const cJSON *dora = jfield(j, "use_dora");
    if (dora && cJSON_IsTrue(dora)) return peft_fail("%s: use_dora is not supported", path);
    const cJSON *bias = jfield(j, "bias");
    if (bias && cJSON_IsString(bias) && strcmp(bias->valuestring, "none")) return peft_fail("%s: bias \"%s\" is not supported (\"none\" is)", path, bias->valuestring);
    const cJSON *ap = jfield(j, "alpha_pattern");
    if (ap && cJSON_GetArraySize(ap) > 0) return peft_fail("%s: alpha_pattern is not supported", path);
    const cJSON *rp = jfield(j, "rank_pattern");
    if (type != PEFT_ADALORA && rp && cJSON_GetArraySize(rp) > 0) return peft_fail("%s: rank_pattern is only supported for AdaLoRA", path);
    if (type == PEFT_ADALORA && parse_rank_pattern(c, rp, path)) return -1;
    if (type == PEFT_ADALORA) c->r = c->init_r;
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
    cJSON_AddStringToObject(j, "peft_type", peft_type_name(c->type));
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
    if (c->type == PEFT_VERA) {
        cJSON_AddNumberToObject(j, "vera_dropout", c->dropout);
        cJSON_AddNumberToObject(j, "d_initial", c->d_initial);
        cJSON_AddNumberToObject(j, "projection_prng_key", (double)c->prng_key);
        cJSON_AddBoolToObject(j, "save_projection", c->save_projection);
        cJSON_AddBoolToObject(j, "init_weights", true);
    } else {
        cJSON_AddNumberToObject(j, "lora_alpha", c->alpha);
        cJSON_AddNumberToObject(j, "lora_dropout", c->dropout);
        cJSON_AddBoolToObject(j, "use_rslora", c->use_rslora);
        cJSON_AddBoolToObject(j, "init_lora_weights", true);
        cJSON_AddItemToObject(j, "alpha_pattern", cJSON_CreateObject());
    }
    if (c->type == PEFT_LORA) cJSON_AddItemToObject(j, "rank_pattern", cJSON_CreateObject());
    if (c->type == PEFT_ADALORA) {
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
