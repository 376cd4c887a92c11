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

// Every key PEFT 0.21 writes for LoraConfig, VeraConfig and AdaLoraConfig (AdaLoRA's: LoRA's and
// its own), and what this program does with it. PEFT drops a key its config class does not have
// with a warning (a config from a newer PEFT); here such a key is refused by name, since it may
// change what the adapter computes.
typedef enum {
    KEY_USED,     // read and implemented
    KEY_INERT,    // changes nothing the adapter computes: metadata, or read only along with a refused key
    KEY_DEFAULT,  // not implemented: refused unless it holds PEFT's default
} KeyUse;
enum { FOR_LORA = 1 << PEFT_LORA, FOR_VERA = 1 << PEFT_VERA, FOR_ADALORA = 1 << PEFT_ADALORA,
       FOR_LORAS = FOR_LORA | FOR_ADALORA, FOR_ALL = FOR_LORAS | FOR_VERA };
typedef struct {
    const char *key;
    unsigned methods;
    KeyUse use;
    const char *accepted;  // a JSON array of the values allowed; NULL: any (KEY_DEFAULT: null, false, "", {} or [])
    const char *what;      // KEY_DEFAULT: what a value would do (said when refusing it)
} ConfigKey;

static const ConfigKey CONFIG_KEYS[] = {
    {"peft_type", FOR_ALL, KEY_USED, NULL, NULL},
    {"target_modules", FOR_ALL, KEY_USED, NULL, NULL},
    {"task_type", FOR_ALL, KEY_USED, "[null, \"CAUSAL_LM\"]", "another task type puts a classification or seq2seq head on the model"},
    {"r", FOR_LORA | FOR_VERA, KEY_USED, NULL, NULL},
    {"r", FOR_ADALORA, KEY_INERT, NULL, NULL},  // AdaLoRA's rank is init_r; PEFT ignores r too
    {"fan_in_fan_out", FOR_ALL, KEY_USED, NULL, NULL},  // as PEFT: the layer type decides (GPT-2's Conv1D: true)
    {"lora_alpha", FOR_LORAS, KEY_USED, NULL, NULL},
    {"lora_dropout", FOR_LORAS, KEY_USED, NULL, NULL},
    {"use_rslora", FOR_LORA, KEY_USED, NULL, NULL},
    {"use_rslora", FOR_ADALORA, KEY_DEFAULT, NULL, "PEFT's AdaLoRA ignores it"},
    {"init_lora_weights", FOR_LORAS, KEY_INERT, "[true, false, \"gaussian\"]", "it changes the base weights or is not implemented"},
    {"rank_pattern", FOR_ADALORA, KEY_USED, NULL, NULL},
    {"rank_pattern", FOR_LORA, KEY_DEFAULT, NULL, "per-module ranks"},
    {"init_r", FOR_ADALORA, KEY_USED, NULL, NULL},
    {"target_r", FOR_ADALORA, KEY_USED, NULL, NULL},
    {"tinit", FOR_ADALORA, KEY_USED, NULL, NULL},
    {"tfinal", FOR_ADALORA, KEY_USED, NULL, NULL},
    {"deltaT", FOR_ADALORA, KEY_USED, NULL, NULL},
    {"beta1", FOR_ADALORA, KEY_USED, NULL, NULL},
    {"beta2", FOR_ADALORA, KEY_USED, NULL, NULL},
    {"orth_reg_weight", FOR_ADALORA, KEY_USED, NULL, NULL},
    {"total_step", FOR_ADALORA, KEY_USED, NULL, NULL},
    {"vera_dropout", FOR_VERA, KEY_USED, NULL, NULL},
    {"d_initial", FOR_VERA, KEY_USED, NULL, NULL},
    {"projection_prng_key", FOR_VERA, KEY_USED, NULL, NULL},
    {"save_projection", FOR_VERA, KEY_USED, NULL, NULL},
    {"init_weights", FOR_VERA, KEY_INERT, "[true, false]", "not a VeRA initialisation"},
    {"auto_mapping", FOR_ALL, KEY_INERT, NULL, NULL},
    {"base_model_name_or_path", FOR_ALL, KEY_INERT, NULL, NULL},
    {"revision", FOR_ALL, KEY_INERT, NULL, NULL},
    {"peft_version", FOR_ALL, KEY_INERT, NULL, NULL},
    {"inference_mode", FOR_ALL, KEY_INERT, NULL, NULL},
    {"megatron_core", FOR_LORAS, KEY_INERT, NULL, NULL},      // read only with megatron_config
    {"qalora_group_size", FOR_LORAS, KEY_INERT, NULL, NULL},  // read only with use_qalora
    {"bias", FOR_ALL, KEY_DEFAULT, "[\"none\"]", "it trains and saves the base model's biases"},
    {"modules_to_save", FOR_ALL, KEY_DEFAULT, NULL, "whole modules trained and saved beside the adapter"},
    {"layers_to_transform", FOR_ALL, KEY_DEFAULT, NULL, "only some layers adapted"},
    {"layers_pattern", FOR_ALL, KEY_DEFAULT, NULL, "the layers layers_to_transform counts"},
    {"exclude_modules", FOR_LORAS, KEY_DEFAULT, NULL, "modules left out of target_modules"},
    {"alpha_pattern", FOR_LORAS, KEY_DEFAULT, NULL, "per-module lora_alpha"},
    {"use_dora", FOR_LORAS, KEY_DEFAULT, NULL, "DoRA's magnitude vectors"},
    {"lora_bias", FOR_LORAS, KEY_DEFAULT, NULL, "a bias on lora_B"},
    {"use_qalora", FOR_LORAS, KEY_DEFAULT, NULL, "QALoRA's pooled inputs"},
    {"use_bdlora", FOR_LORAS, KEY_DEFAULT, NULL, "block-diagonal LoRA"},
    {"layer_replication", FOR_LORAS, KEY_DEFAULT, NULL, "repeated layers of the base model"},
    {"target_parameters", FOR_LORAS, KEY_DEFAULT, NULL, "LoRA on parameters rather than modules"},
    {"trainable_token_indices", FOR_LORAS, KEY_DEFAULT, NULL, "trained rows of the embedding"},
    {"ensure_weight_tying", FOR_LORAS, KEY_DEFAULT, NULL, "tied copies of saved modules"},
    {"alora_invocation_tokens", FOR_LORAS, KEY_DEFAULT, NULL, "activated LoRA (applied after these tokens only)"},
    {"megatron_config", FOR_LORAS, KEY_DEFAULT, NULL, "Megatron's parallel layers"},
    {"loftq_config", FOR_LORAS, KEY_DEFAULT, NULL, "LoftQ's quantised base"},
    {"eva_config", FOR_LORAS, KEY_DEFAULT, NULL, "EVA initialisation"},
    {"corda_config", FOR_LORAS, KEY_DEFAULT, NULL, "CorDA initialisation"},
    {"lora_ga_config", FOR_LORAS, KEY_DEFAULT, NULL, "LoRA-GA initialisation"},
    {"kasa_config", FOR_LORAS, KEY_DEFAULT, NULL, "KaSA"},
    {"velora_config", FOR_LORAS, KEY_DEFAULT, NULL, "VeLoRA"},
    {"monteclora_config", FOR_LORAS, KEY_DEFAULT, NULL, "MonteCLoRA"},
    {"arrow_config", FOR_LORAS, KEY_DEFAULT, NULL, "Arrow routing between adapters"},
};

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

// Every key of the file is in CONFIG_KEYS for this method, with a value it accepts.
static int check_keys(const cJSON *j, PeftType type, const char *path) {
    const cJSON *v;
    cJSON_ArrayForEach(v, j) {
        const ConfigKey *k = NULL;
        for (size_t i = 0; i < sizeof CONFIG_KEYS / sizeof *CONFIG_KEYS && !k; i++)
            if (!strcmp(CONFIG_KEYS[i].key, v->string) && (CONFIG_KEYS[i].methods & (1u << type))) k = &CONFIG_KEYS[i];
        if (!k)
            return peft_fail("%s: unknown key \"%s\": PEFT 0.21's %s config has no such key, and a key that may change "
                             "what the adapter computes is refused rather than ignored", path, v->string, peft_type_name(type));
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

static int parse_adapter_config(AdapterConfig *c, const cJSON *j, const char *path) {
    const cJSON *pt = jfield(j, "peft_type");
    if (!pt || !cJSON_IsString(pt)) return peft_fail("%s: missing \"peft_type\"", path);
    PeftType type;
    if (peft_type_parse(pt->valuestring, &type))
        return peft_fail("%s: unknown peft_type \"%s\" (LORA, VERA, ADALORA are supported)", path, pt->valuestring);
    adapter_config_defaults(c, type);
    if (check_keys(j, type, path)) return -1;
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
    if (jbool(j, "use_rslora", &c->use_rslora, path) || jbool(j, "fan_in_fan_out", &c->fan_in_fan_out, path) ||
        jbool(j, "save_projection", &c->save_projection, path))
        return -1;
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
    if (type == PEFT_ADALORA && parse_rank_pattern(c, jfield(j, "rank_pattern"), path)) return -1;
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
