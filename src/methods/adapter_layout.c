// adapter_layout.c: which modules an adapter covers and how, beyond target_modules, as PEFT 0.21's
// configs say it: exclude_modules, layers_to_transform + layers_pattern (check_target_module_exists
// in peft/tuners/tuners_utils.py), LoRA's rank_pattern and alpha_pattern (get_pattern_key), and bias.
#include "adapter.h"
#include "lora_init.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const BIAS_NAMES[] = {"none", "all", "lora_only"};

// LoRA's options are read for LoRA and its variants (DoRA: a LoRA file with use_dora).
static bool lora_options(MethodId t) {
    const Method *m = method_get(t);
    return m && (m->id == METHOD_LORA || (m->variant_key && m->config_base == &lora_method));
}

const char *adapter_bias_name(BiasMode b) { return b >= 0 && b <= BIAS_LORA_ONLY ? BIAS_NAMES[b] : "?"; }

static pcre2_code *compile(const char *pattern, uint32_t options) {
    int err;
    PCRE2_SIZE off;
    return pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, options, &err, &off, NULL);
}

static int check_regex(const char *pattern, const char *what, const char *path) {
    pcre2_code *re = compile(pattern, 0);
    if (!re) return peft_fail("%s: %s \"%s\" is not a valid regular expression", path, what, pattern);
    pcre2_code_free(re);
    return 0;
}

// Each pattern is compiled once in the process, not once per module it is matched against (a config's
// patterns meet every module of the model, again for every adapter loaded): compiled code is read-only,
// so threads share it (a match data block is per match). Past CACHE_MAX patterns, one is compiled for
// the match and freed after it (owned).
enum { CACHE_MAX = 1024 };
typedef struct {
    char *pattern;
    uint32_t options;
    pcre2_code *code;
} CachedRegex;
static CachedRegex cache[CACHE_MAX];
static int n_cache;
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

static pcre2_code *compiled(const char *pattern, uint32_t options, bool *owned) {
    pthread_mutex_lock(&cache_lock);
    pcre2_code *code = NULL;
    int i = 0;
    while (i < n_cache && (cache[i].options != options || strcmp(cache[i].pattern, pattern))) i++;
    *owned = i == n_cache && n_cache == CACHE_MAX;
    if (i < n_cache) code = cache[i].code;
    else {
        code = compile(pattern, options);  // NULL (no valid pattern) is cached too
        if (!*owned) cache[n_cache++] = (CachedRegex){xstrdup(pattern), options, code};
    }
    pthread_mutex_unlock(&cache_lock);
    return code;
}

static void release(pcre2_code *code, bool owned) {
    if (owned) pcre2_code_free(code);
}

bool regex_full_match(const char *pattern, const char *s) {
    bool owned;
    pcre2_code *re = compiled(pattern, PCRE2_ANCHORED | PCRE2_ENDANCHORED, &owned);
    if (!re) return false;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    bool ok = pcre2_match(re, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL) >= 0;
    pcre2_match_data_free(md);
    release(re, owned);
    return ok;
}

// A list entry names a module exactly or is a suffix after a dot (PEFT's rule for target_modules and
// exclude_modules given as lists).
static bool name_or_suffix(const char *module, const char *entry) {
    size_t n = strlen(module), k = strlen(entry);
    return !strcmp(module, entry) || (n > k && module[n - k - 1] == '.' && !strcmp(module + n - k, entry));
}

bool adapter_module_excluded(const AdapterConfig *c, const char *module) {
    for (int i = 0; i < c->n_modules_to_save; i++) {  // PEFT: (^|.*\.)<entry>($|\..*) is a module to save, never adapted
        char *re = xasprintf("(.*\\.)?%s(\\..*)?", c->modules_to_save[i]);
        bool hit = regex_full_match(re, module);
        free(re);
        if (hit) return true;
    }
    if (c->exclude_regex) return regex_full_match(c->exclude_regex, module);
    for (int i = 0; i < c->n_exclude; i++)
        if (name_or_suffix(module, c->exclude[i])) return true;
    return false;
}

// The layer index PEFT reads from a module name: re.match(r".*?\.[^.]*\.(\d+)\.") without
// layers_pattern, else the first pattern p with re.match(rf".*?\.{p}\.(\d+)\."); -1: none.
static long layer_index(const char *pattern, const char *module) {
    char *re_text = pattern ? xasprintf(".*?\\.%s\\.(\\d+)\\.", pattern) : xstrdup(".*?\\.[^.]*\\.(\\d+)\\.");
    bool owned;
    pcre2_code *re = compiled(re_text, 0, &owned);
    free(re_text);
    if (!re) return -1;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    long index = -1;
    if (pcre2_match(re, (PCRE2_SPTR)module, strlen(module), 0, PCRE2_ANCHORED, md, NULL) >= 2) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        char digits[24] = "";
        size_t len = ov[3] - ov[2];
        if (len < sizeof digits) {
            memcpy(digits, module + ov[2], len);
            index = strtol(digits, NULL, 10);
        }
    }
    pcre2_match_data_free(md);
    release(re, owned);
    return index;
}

bool adapter_module_in_layers(const AdapterConfig *c, const char *module) {
    if (!c->layers) return true;
    long index = -1;
    if (c->n_layers_pattern == 0) index = layer_index(NULL, module);
    for (int i = 0; i < c->n_layers_pattern && index < 0; i++) index = layer_index(c->layers_pattern[i], module);
    for (int i = 0; index >= 0 && i < c->n_layers; i++)
        if (c->layers[i] == index) return true;
    return false;
}

// PEFT's get_pattern_key: the first key K (in the file's order) whose "(.*\.)?(K)" matches the whole
// module name; NULL when none does.
static const PatternEntry *pattern_find(const PatternEntry *p, int n, const char *module) {
    for (int i = 0; i < n; i++) {
        char *re = xasprintf("(.*\\.)?(%s)", p[i].key);
        bool hit = regex_full_match(re, module);
        free(re);
        if (hit) return &p[i];
    }
    return NULL;
}

int adapter_module_rank(const AdapterConfig *c, const char *module) {
    const PatternEntry *e = pattern_find(c->lora_rank_pattern, c->n_lora_rank_pattern, module);
    return e ? (int)e->value : c->r;
}

float adapter_module_alpha(const AdapterConfig *c, const char *module) {
    const PatternEntry *e = pattern_find(c->alpha_pattern, c->n_alpha_pattern, module);
    return e ? (float)e->value : c->alpha;
}

// ---- adapter_config.json ----

// A list of strings or one string (a regex); *list NULL and *regex NULL for an absent key.
static int parse_names(const cJSON *v, const char *key, char ***list, int *n, char **regex, const char *path) {
    if (!v || cJSON_IsNull(v)) return 0;
    if (regex && cJSON_IsString(v)) {
        *regex = xstrdup(v->valuestring);
        return check_regex(*regex, key, path);
    }
    if (!cJSON_IsArray(v)) return peft_fail("%s: \"%s\" must be a list of strings%s", path, key, regex ? " or a string" : "");
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsString(e) || !e->valuestring[0]) return peft_fail("%s: \"%s\" must hold non-empty strings", path, key);
        *list = xrealloc(*list, sizeof(char *) * (*n + 1));
        (*list)[(*n)++] = xstrdup(e->valuestring);
    }
    return 0;
}

static int parse_layers(AdapterConfig *c, const cJSON *v, const char *path) {
    if (!v || cJSON_IsNull(v)) return 0;
    int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 1;
    if (!cJSON_IsArray(v) && !cJSON_IsNumber(v)) return peft_fail("%s: \"layers_to_transform\" must be an integer or a list of integers", path);
    if (n == 0) return 0;  // PEFT: an empty list transforms every layer
    c->layers = xcalloc(n, sizeof(int));
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, i) : v;
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 || e->valuedouble > 1e9)
            return peft_fail("%s: \"layers_to_transform\" must hold layer indices (non-negative integers)", path);
        c->layers[c->n_layers++] = (int)e->valuedouble;
    }
    return 0;
}

// {"key": number, ...}; rank: positive integers.
static int parse_pattern(const cJSON *v, const char *key, bool rank, PatternEntry **out, int *n, const char *path) {
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsObject(v)) return peft_fail("%s: \"%s\" must be an object of module keys", path, key);
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        double x = e->valuedouble;
        if (!cJSON_IsNumber(e) || !isfinite((float)x) || (rank && (x != floor(x) || x < 1 || x > 1e9)))
            return peft_fail("%s: %s[\"%s\"] must be %s", path, key, e->string, rank ? "a positive integer rank" : "a finite number");
        if (!e->string[0]) return peft_fail("%s: %s has an empty key", path, key);
        *out = xrealloc(*out, sizeof(PatternEntry) * (*n + 1));
        (*out)[(*n)++] = (PatternEntry){xstrdup(e->string), x};
        char *re = xasprintf("(.*\\.)?(%s)", e->string);
        int rc = check_regex(re, key, path);
        free(re);
        if (rc) return rc;
    }
    return 0;
}

int adapter_layout_check(const AdapterConfig *c, const char *path) {
    bool str_targets = c->target_regex || c->all_linear;
    // LoraConfig.__post_init__'s (and VeraConfig's) refusals.
    if (str_targets && c->layers) return peft_fail("%s: layers_to_transform cannot be used when target_modules is a string (PEFT refuses it too)", path);
    if (str_targets && c->n_layers_pattern) return peft_fail("%s: layers_pattern cannot be used when target_modules is a string (PEFT refuses it too)", path);
    if (c->n_layers_pattern && !c->layers)
        return peft_fail("%s: layers_pattern is given without layers_to_transform (PEFT refuses it too)", path);
    char init[32];
    if (lora_init_changes_base(c) && (c->n_lora_rank_pattern || c->n_alpha_pattern))  // lora_init.c converts with one r and alpha
        return peft_fail("%s: init_lora_weights %s with rank_pattern or alpha_pattern is not implemented", path, lora_init_text(c, init, sizeof init));
    if (lora_init_changes_base(c) && method_get(c->type) && method_get(c->type)->variant_key)
        return peft_fail("%s: init_lora_weights %s with %s is not implemented", path, lora_init_text(c, init, sizeof init),
                         method_get(c->type)->variant_key);
    if (c->bias != BIAS_NONE && !lora_options(c->type))
        return peft_fail("%s: bias \"%s\" is implemented for LoRA only (%s saves no biases here)", path, adapter_bias_name(c->bias),
                         method_get(c->type) ? method_get(c->type)->title : "this method");
    return adapter_embed_check(c, path);
}

int adapter_layout_parse(AdapterConfig *c, const void *json, const char *path) {
    const cJSON *j = json, *b = cJSON_GetObjectItemCaseSensitive(j, "bias");
    if (b && !cJSON_IsNull(b)) {
        int k = 0;
        while (k <= BIAS_LORA_ONLY && !(cJSON_IsString(b) && !strcmp(b->valuestring, BIAS_NAMES[k]))) k++;
        if (k > BIAS_LORA_ONLY) return peft_fail("%s: \"bias\" must be \"none\", \"all\" or \"lora_only\"", path);
        c->bias = (BiasMode)k;
    }
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(j, "layers_pattern");
    if (cJSON_IsString(lp) && lp->valuestring[0]) {  // one pattern, or a list of them
        c->layers_pattern = xcalloc(1, sizeof(char *));
        c->layers_pattern[c->n_layers_pattern++] = xstrdup(lp->valuestring);
    } else if (!cJSON_IsString(lp) && parse_names(lp, "layers_pattern", &c->layers_pattern, &c->n_layers_pattern, NULL, path)) return -1;
    for (int i = 0; i < c->n_layers_pattern; i++)
        if (check_regex(c->layers_pattern[i], "layers_pattern", path)) return -1;
    if (parse_names(cJSON_GetObjectItemCaseSensitive(j, "exclude_modules"), "exclude_modules", &c->exclude, &c->n_exclude, &c->exclude_regex, path) ||
        parse_layers(c, cJSON_GetObjectItemCaseSensitive(j, "layers_to_transform"), path) ||
        parse_names(cJSON_GetObjectItemCaseSensitive(j, "modules_to_save"), "modules_to_save", &c->modules_to_save, &c->n_modules_to_save, NULL, path))
        return -1;
    for (int i = 0; i < c->n_modules_to_save; i++)
        if (check_regex(c->modules_to_save[i], "modules_to_save", path)) return -1;
    if (lora_options(c->type) &&
        (parse_pattern(cJSON_GetObjectItemCaseSensitive(j, "rank_pattern"), "rank_pattern", true, &c->lora_rank_pattern, &c->n_lora_rank_pattern, path) ||
         parse_pattern(cJSON_GetObjectItemCaseSensitive(j, "alpha_pattern"), "alpha_pattern", false, &c->alpha_pattern, &c->n_alpha_pattern, path)))
        return -1;
    if (adapter_embed_parse(c, j, path)) return -1;
    return adapter_layout_check(c, path);
}

static void free_list(char **list, int n) {
    for (int i = 0; i < n; i++) free(list[i]);
    free(list);
}

static void free_pattern(PatternEntry *p, int n) {
    for (int i = 0; i < n; i++) free(p[i].key);
    free(p);
}

void adapter_layout_free(AdapterConfig *c) {
    free_list(c->exclude, c->n_exclude);
    free(c->exclude_regex);
    free(c->layers);
    free_list(c->layers_pattern, c->n_layers_pattern);
    free_list(c->modules_to_save, c->n_modules_to_save);
    free_pattern(c->lora_rank_pattern, c->n_lora_rank_pattern);
    free_pattern(c->alpha_pattern, c->n_alpha_pattern);
    adapter_embed_config_free(c);
    c->exclude = c->layers_pattern = c->modules_to_save = NULL;
    c->exclude_regex = NULL;
    c->layers = NULL;
    c->lora_rank_pattern = c->alpha_pattern = NULL;
    c->n_exclude = c->n_layers = c->n_layers_pattern = c->n_lora_rank_pattern = c->n_alpha_pattern = c->n_modules_to_save = 0;
}

static char **copy_list(char *const *list, int n) {
    char **out = n ? xcalloc(n, sizeof(char *)) : NULL;
    for (int i = 0; i < n; i++) out[i] = xstrdup(list[i]);
    return out;
}

static PatternEntry *copy_pattern(const PatternEntry *p, int n) {
    PatternEntry *out = n ? xcalloc(n, sizeof *out) : NULL;
    for (int i = 0; i < n; i++) out[i] = (PatternEntry){xstrdup(p[i].key), p[i].value};
    return out;
}

void adapter_layout_copy(AdapterConfig *dst, const AdapterConfig *src) {
    dst->exclude = copy_list(src->exclude, src->n_exclude);
    dst->exclude_regex = src->exclude_regex ? xstrdup(src->exclude_regex) : NULL;
    dst->layers = src->n_layers ? xmalloc(sizeof(int) * src->n_layers) : NULL;
    if (src->n_layers) memcpy(dst->layers, src->layers, sizeof(int) * src->n_layers);
    dst->layers_pattern = copy_list(src->layers_pattern, src->n_layers_pattern);
    dst->modules_to_save = copy_list(src->modules_to_save, src->n_modules_to_save);
    dst->lora_rank_pattern = copy_pattern(src->lora_rank_pattern, src->n_lora_rank_pattern);
    dst->alpha_pattern = copy_pattern(src->alpha_pattern, src->n_alpha_pattern);
    adapter_embed_config_copy(dst, src);
}

static cJSON *pattern_json(const PatternEntry *p, int n) {
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; i < n; i++) cJSON_AddNumberToObject(o, p[i].key, p[i].value);
    return o;
}

// The keys as PEFT writes them (null where unset), over what adapter_config_to_json_object put there.
void adapter_layout_to_json(const AdapterConfig *c, void *json) {
    cJSON *j = json;
    cJSON_DeleteItemFromObjectCaseSensitive(j, "bias");
    cJSON_AddStringToObject(j, "bias", adapter_bias_name(c->bias));
    cJSON *ex = c->exclude_regex ? cJSON_CreateString(c->exclude_regex)
              : c->n_exclude   ? cJSON_CreateStringArray((const char *const *)c->exclude, c->n_exclude)
                               : cJSON_CreateNull();
    cJSON *layers = c->layers ? cJSON_CreateIntArray(c->layers, c->n_layers) : cJSON_CreateNull();
    cJSON *lp = c->n_layers_pattern == 1 ? cJSON_CreateString(c->layers_pattern[0])
              : c->n_layers_pattern    ? cJSON_CreateStringArray((const char *const *)c->layers_pattern, c->n_layers_pattern)
                                       : cJSON_CreateNull();
    if (c->type != METHOD_VERA) cJSON_AddItemToObject(j, "exclude_modules", ex);
    else cJSON_Delete(ex);
    cJSON_AddItemToObject(j, "layers_to_transform", layers);
    cJSON_AddItemToObject(j, "layers_pattern", lp);
    cJSON_DeleteItemFromObjectCaseSensitive(j, "modules_to_save");
    cJSON_AddItemToObject(j, "modules_to_save", c->n_modules_to_save ? cJSON_CreateStringArray((const char *const *)c->modules_to_save, c->n_modules_to_save)
                                                                      : cJSON_CreateNull());
    adapter_embed_to_json(c, j);
    if (!lora_options(c->type)) return;
    cJSON_DeleteItemFromObjectCaseSensitive(j, "rank_pattern");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "alpha_pattern");
    cJSON_AddItemToObject(j, "rank_pattern", pattern_json(c->lora_rank_pattern, c->n_lora_rank_pattern));
    cJSON_AddItemToObject(j, "alpha_pattern", pattern_json(c->alpha_pattern, c->n_alpha_pattern));
}

// peft train / estimate --lora-options FILE: these keys alone, as adapter_config.json spells them.
int adapter_layout_read_file(AdapterConfig *c, const char *path) {
    static const char *const KEYS[] = {"exclude_modules", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "bias", "modules_to_save",
                                       "trainable_token_indices"};
    char *text = read_file(path, NULL);
    if (!text) return -1;
    cJSON *j = cJSON_Parse(text);
    free(text);
    int rc = (!j || !cJSON_IsObject(j)) ? peft_fail("%s: not a JSON object", path) : 0;
    const cJSON *v;
    if (!rc) cJSON_ArrayForEach(v, j) {
        size_t k = 0;
        while (k < sizeof KEYS / sizeof *KEYS && strcmp(KEYS[k], v->string)) k++;
        if (k == sizeof KEYS / sizeof *KEYS) {
            rc = peft_fail("%s: \"%s\" is not an option this file sets (exclude_modules, layers_to_transform, layers_pattern, "
                           "rank_pattern, alpha_pattern, bias, modules_to_save, trainable_token_indices)", path, v->string);
            break;
        }
        if (!lora_options(c->type) && strcmp(v->string, "exclude_modules") && strcmp(v->string, "layers_to_transform") &&
            strcmp(v->string, "layers_pattern") && !(cJSON_IsString(v) && !strcmp(v->valuestring, "none"))) {
            rc = peft_fail("%s: \"%s\" is a LoRA option", path, v->string);
            break;
        }
    }
    if (!rc) {
        adapter_layout_free(c);
        rc = adapter_layout_parse(c, j, path);
    }
    cJSON_Delete(j);
    return rc;
}

// One line per option in force, for peft info: "exclude_modules [a, b]" and so on; "" when none.
void adapter_layout_describe(const AdapterConfig *c, char *buf, size_t cap) {
    size_t at = 0;
    buf[0] = 0;
#define PUT(...) (at += (size_t)snprintf(buf + at, at < cap ? cap - at : 0, __VA_ARGS__), at = at < cap ? at : cap)
    if (c->exclude_regex) PUT("exclude       regex %s\n", c->exclude_regex);
    for (int i = 0; i < c->n_exclude; i++) PUT("%s%s%s", i ? ", " : "exclude       ", c->exclude[i], i == c->n_exclude - 1 ? "\n" : "");
    for (int i = 0; i < c->n_layers; i++) PUT("%s%d%s", i ? ", " : "layers        ", c->layers[i], i == c->n_layers - 1 ? "" : "");
    if (c->n_layers) {
        PUT(" (layers_to_transform");
        for (int i = 0; i < c->n_layers_pattern; i++) PUT("%s%s", i ? ", " : "; layers_pattern ", c->layers_pattern[i]);
        PUT(")\n");
    }
    for (int i = 0; i < c->n_lora_rank_pattern; i++)
        PUT("%s%s: %g%s", i ? ", " : "rank_pattern  ", c->lora_rank_pattern[i].key, c->lora_rank_pattern[i].value, i == c->n_lora_rank_pattern - 1 ? "\n" : "");
    for (int i = 0; i < c->n_alpha_pattern; i++)
        PUT("%s%s: %g%s", i ? ", " : "alpha_pattern ", c->alpha_pattern[i].key, c->alpha_pattern[i].value, i == c->n_alpha_pattern - 1 ? "\n" : "");
    for (int i = 0; i < c->n_modules_to_save; i++)
        PUT("%s%s%s", i ? ", " : "modules_to_save ", c->modules_to_save[i], i == c->n_modules_to_save - 1 ? " (trained in full, saved with the adapter)\n" : "");
    if (c->bias != BIAS_NONE) PUT("bias          %s (the base's biases train and are saved with the adapter)\n", adapter_bias_name(c->bias));
#undef PUT
    adapter_embed_describe(c, buf, cap);
}

// Modules PEFT's LoRA would wrap that are no Linear here: the embeddings (PEFT's lora.Embedding,
// lora_embedding_A / lora_embedding_B: implemented for LoRA's token embedding, adapter_embed.c) and the
// output head (tied or not, transformers has an lm_head module). A target that matches one that is not
// implemented is refused rather than left out.
int adapter_layout_check_model(const AdapterConfig *c, const Model *m) {
    if (c->all_linear) return 0;  // linears only, the head not among them (PEFT's _maybe_include_all_linear_layers)
    const Param *emb[] = {m->wte, m->wpe};
    for (int i = 0; i < 3; i++) {
        if (i == 0 && adapter_embed_targeted(c, m)) continue;
        char *module = i < 2 ? (emb[i] ? xstrdup(emb[i]->name) : NULL) : xstrdup("lm_head");
        if (!module) continue;
        char *dot = i < 2 ? strrchr(module, '.') : NULL;
        if (dot) *dot = 0;  // "transformer.wte.weight" -> "transformer.wte"
        bool hit = adapter_targets_module(c, module);
        int rc = hit ? peft_fail("target_modules matches %s, %s: %s there (PEFT's %s) is not implemented%s", module,
                                 i == 0 ? "the token embedding" : i == 1 ? "the position embedding" : "the output head",
                                 method_get(c->type) ? method_get(c->type)->title : "an adapter",
                                 i < 2 ? "lora_embedding_A / lora_embedding_B" : "lora.Linear on lm_head", i == 0 ? " (LoRA's is)" : "")
                     : 0;
        free(module);
        if (rc) return rc;
    }
    return 0;
}
