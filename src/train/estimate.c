// estimate.c: parameter, file and memory estimates for PEFT methods (see estimate.h).
#include "estimate.h"
#include "lora_init.h"
#include "util.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX(a, b) ((a) > (b) ? (a) : (b))

const char *const est_preset_names[] = {"roberta-base", "roberta-large", "gpt2", "gpt2-medium", "gpt2-large",
                                        "gpt3-175b", "llama-2-7b", "llama-2-13b", "tinyllama-1.1b", NULL};

// ---- module lists ----

static void add_linear(EstModel *em, int *cap, const char *name, int in, int out, bool bias) {
    if (em->n_linears == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        em->linears = xrealloc(em->linears, sizeof(EstLinear) * (size_t)*cap);
    }
    EstLinear *l = &em->linears[em->n_linears++];
    l->name = xstrdup(name);
    l->in = in;
    l->out = out;
    l->bias = bias;
    l->saved = false;
}

static int64_t linear_params(const EstModel *em) {
    int64_t n = 0;
    for (int i = 0; i < em->n_linears; i++)
        n += (int64_t)em->linears[i].in * em->linears[i].out + (em->linears[i].bias ? em->linears[i].out : 0);
    return n;
}

void est_model_free(EstModel *em) {
    for (int i = 0; i < em->n_linears; i++) free(em->linears[i].name);
    free(em->linears);
    memset(em, 0, sizeof *em);
}

// Exactly the linears model.c's build_gpt2 / build_llama create, in the same order, and the
// parameter count model_count_params gives for the built model.
int est_model_from_config(EstModel *em, const ModelConfig *c, const char *name) {
    memset(em, 0, sizeof *em);
    em->cfg = *c;
    snprintf(em->name, sizeof em->name, "%s", name ? name : c->model_type);
    snprintf(em->description, sizeof em->description, "%s", config_arch_name(c));
    em->lm_head = true;
    em->max_context = c->n_positions;
    int cap = 0, C = c->n_embd, I = c->n_inner;
    int64_t V = c->vocab_size, L = c->n_layer;
    char buf[256];
    if (c->arch == ARCH_BERT) {  // model.c's build_bert: the encoder's linears, then the head's
        bool roberta = !strcmp(c->model_type, "roberta");
        const char *pre = roberta ? "roberta" : "bert";
        em->family = EST_ENCODER_ROBERTA;
        em->lm_head = false;
        static const char *const names[] = {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                                            "intermediate.dense", "output.dense"};
        for (int l = 0; l < c->n_layer; l++)
            for (int k = 0; k < 6; k++) {
                snprintf(buf, sizeof buf, "%s.encoder.layer.%d.%s", pre, l, names[k]);
                add_linear(em, &cap, buf, k == 5 ? I : C, k == 4 ? I : k == 5 ? C : C, true);
            }
        add_linear(em, &cap, roberta ? "classifier.dense" : "bert.pooler.dense", C, C, true);
        em->linears[em->n_linears - 1].saved = roberta;
        add_linear(em, &cap, roberta ? "classifier.out_proj" : "classifier", C, c->num_labels, true);
        em->linears[em->n_linears - 1].saved = true;
        // word, position and token-type embeddings, their LayerNorm, two LayerNorms per layer
        em->n_params = V * C + (int64_t)c->n_positions * C + (int64_t)c->type_vocab_size * C + 2 * C + L * 4 * C;
    } else if (c->arch == ARCH_GPT2) {
        em->family = EST_DECODER_GPT2;
        for (int l = 0; l < c->n_layer; l++) {
            snprintf(buf, sizeof buf, "transformer.h.%d.attn.c_attn", l); add_linear(em, &cap, buf, C, 3 * C, true);
            snprintf(buf, sizeof buf, "transformer.h.%d.attn.c_proj", l); add_linear(em, &cap, buf, C, C, true);
            snprintf(buf, sizeof buf, "transformer.h.%d.mlp.c_fc", l);    add_linear(em, &cap, buf, C, I, true);
            snprintf(buf, sizeof buf, "transformer.h.%d.mlp.c_proj", l);  add_linear(em, &cap, buf, I, C, true);
        }
        // wte, wpe, ln_1 and ln_2 (weight + bias) per layer, ln_f, and lm_head when untied
        em->n_params = V * C + (int64_t)c->n_positions * C + L * 4 * C + 2 * C + (c->tie_word_embeddings ? 0 : V * C);
    } else {
        em->family = EST_DECODER_LLAMA;
        int q = c->n_head * c->head_dim, kv = c->n_kv_head * c->head_dim;
        for (int l = 0; l < c->n_layer; l++) {
            snprintf(buf, sizeof buf, "model.layers.%d.self_attn.q_proj", l); add_linear(em, &cap, buf, C, q, c->qkv_bias);
            snprintf(buf, sizeof buf, "model.layers.%d.self_attn.k_proj", l); add_linear(em, &cap, buf, C, kv, c->qkv_bias);
            snprintf(buf, sizeof buf, "model.layers.%d.self_attn.v_proj", l); add_linear(em, &cap, buf, C, kv, c->qkv_bias);
            snprintf(buf, sizeof buf, "model.layers.%d.self_attn.o_proj", l); add_linear(em, &cap, buf, q, C, c->o_bias);
            snprintf(buf, sizeof buf, "model.layers.%d.mlp.gate_proj", l);   add_linear(em, &cap, buf, C, I, c->mlp_bias);
            snprintf(buf, sizeof buf, "model.layers.%d.mlp.up_proj", l);     add_linear(em, &cap, buf, C, I, c->mlp_bias);
            snprintf(buf, sizeof buf, "model.layers.%d.mlp.down_proj", l);   add_linear(em, &cap, buf, I, C, c->mlp_bias);
        }
        // embed_tokens, two RMSNorm weights per layer, the final norm, lm_head when untied
        em->n_params = V * C + L * 2 * C + C + (c->tie_word_embeddings ? 0 : V * C);
    }
    em->n_params += linear_params(em);
    return 0;
}

// RoBERTa (HF RobertaModel, what AutoModel loads: embeddings, encoder, pooler) and GPT-3 (described
// with the same per-layer module names, as the LoRA paper does: query, key, value, ...).
static void build_bert_style(EstModel *em, const char *prefix, bool pooler) {
    const ModelConfig *c = &em->cfg;
    int cap = 0, C = c->n_embd, I = c->n_inner;
    char buf[256];
    for (int l = 0; l < c->n_layer; l++) {
        snprintf(buf, sizeof buf, "%s.%d.attention.self.query", prefix, l);   add_linear(em, &cap, buf, C, C, true);
        snprintf(buf, sizeof buf, "%s.%d.attention.self.key", prefix, l);     add_linear(em, &cap, buf, C, C, true);
        snprintf(buf, sizeof buf, "%s.%d.attention.self.value", prefix, l);   add_linear(em, &cap, buf, C, C, true);
        snprintf(buf, sizeof buf, "%s.%d.attention.output.dense", prefix, l); add_linear(em, &cap, buf, C, C, true);
        snprintf(buf, sizeof buf, "%s.%d.intermediate.dense", prefix, l);     add_linear(em, &cap, buf, C, I, true);
        snprintf(buf, sizeof buf, "%s.%d.output.dense", prefix, l);           add_linear(em, &cap, buf, I, C, true);
    }
    if (pooler) add_linear(em, &cap, "pooler.dense", C, C, true);
}

static void set_shape(ModelConfig *c, const char *type, int layers, int hidden, int heads, int inner, int vocab, int positions) {
    memset(c, 0, sizeof *c);
    c->arch = ARCH_GPT2;  // layer-norm, packed-qkv-sized, learned-position shapes
    snprintf(c->model_type, sizeof c->model_type, "%s", type);
    c->n_layer = layers;
    c->n_embd = hidden;
    c->n_head = c->n_kv_head = heads;
    c->head_dim = hidden / heads;
    c->n_inner = inner;
    c->vocab_size = vocab;
    c->n_positions = positions;
    c->norm_eps = 1e-5f;
    c->qkv_bias = c->o_bias = c->mlp_bias = true;
}

static int preset_roberta(EstModel *em, const char *name, int layers, int hidden, int heads, int inner) {
    em->family = EST_ENCODER_ROBERTA;
    set_shape(&em->cfg, "roberta", layers, hidden, heads, inner, 50265, 514);
    snprintf(em->name, sizeof em->name, "%s", name);
    snprintf(em->description, sizeof em->description, "RobertaModel (HF AutoModel: embeddings, encoder, pooler; no task head)");
    em->lm_head = false;
    em->max_context = 512;  // 514 positions, offset by padding_idx + 1
    build_bert_style(em, "encoder.layer", true);
    int64_t C = hidden, V = 50265, P = 514;
    // word + position + token-type (1 type) embeddings and their LayerNorm; 2 LayerNorms per layer
    em->n_params = V * C + P * C + C + 2 * C + (int64_t)layers * 4 * C + linear_params(em);
    return 0;
}

static int preset_gpt3(EstModel *em) {
    em->family = EST_DECODER_GPT3;
    set_shape(&em->cfg, "gpt3", 96, 12288, 96, 4 * 12288, 50257, 2048);
    em->cfg.tie_word_embeddings = true;
    snprintf(em->name, sizeof em->name, "gpt3-175b");
    snprintf(em->description, sizeof em->description,
             "GPT-3 175B (96 layers, d 12288; modules named as RoBERTa's: query, key, value, ...; tied embeddings)");
    em->lm_head = true;
    em->max_context = 2048;
    build_bert_style(em, "decoder.layer", false);
    int64_t C = 12288, V = 50257, P = 2048;
    em->n_params = V * C + P * C + 96 * 4 * C + 2 * C + linear_params(em);
    return 0;
}

// HF config.json values of the published checkpoints (only the fields that matter here).
static const struct { const char *name, *json; } hf_presets[] = {
    {"gpt2", "{\"model_type\":\"gpt2\",\"n_embd\":768,\"n_head\":12,\"n_layer\":12,\"n_positions\":1024,\"vocab_size\":50257}"},
    {"gpt2-medium", "{\"model_type\":\"gpt2\",\"n_embd\":1024,\"n_head\":16,\"n_layer\":24,\"n_positions\":1024,\"vocab_size\":50257}"},
    {"gpt2-large", "{\"model_type\":\"gpt2\",\"n_embd\":1280,\"n_head\":20,\"n_layer\":36,\"n_positions\":1024,\"vocab_size\":50257}"},
    {"llama-2-7b", "{\"model_type\":\"llama\",\"hidden_size\":4096,\"intermediate_size\":11008,\"num_attention_heads\":32,"
                   "\"num_hidden_layers\":32,\"num_key_value_heads\":32,\"vocab_size\":32000,\"max_position_embeddings\":4096,"
                   "\"rms_norm_eps\":1e-05,\"tie_word_embeddings\":false}"},
    {"llama-2-13b", "{\"model_type\":\"llama\",\"hidden_size\":5120,\"intermediate_size\":13824,\"num_attention_heads\":40,"
                    "\"num_hidden_layers\":40,\"num_key_value_heads\":40,\"vocab_size\":32000,\"max_position_embeddings\":4096,"
                    "\"rms_norm_eps\":1e-05,\"tie_word_embeddings\":false}"},
    {"tinyllama-1.1b", "{\"model_type\":\"llama\",\"hidden_size\":2048,\"intermediate_size\":5632,\"num_attention_heads\":32,"
                       "\"num_hidden_layers\":22,\"num_key_value_heads\":4,\"vocab_size\":32000,\"max_position_embeddings\":2048,"
                       "\"rms_norm_eps\":1e-05,\"tie_word_embeddings\":false}"},
};

int est_model_preset(EstModel *em, const char *preset) {
    memset(em, 0, sizeof *em);
    if (!strcasecmp(preset, "roberta-base")) return preset_roberta(em, "roberta-base", 12, 768, 12, 3072);
    if (!strcasecmp(preset, "roberta-large")) return preset_roberta(em, "roberta-large", 24, 1024, 16, 4096);
    if (!strcasecmp(preset, "gpt3-175b")) return preset_gpt3(em);
    for (size_t i = 0; i < sizeof hf_presets / sizeof *hf_presets; i++) {
        if (strcasecmp(preset, hf_presets[i].name)) continue;
        ModelConfig cfg;
        if (config_parse(&cfg, hf_presets[i].json, hf_presets[i].name)) return -1;
        return est_model_from_config(em, &cfg, hf_presets[i].name);
    }
    char list[512] = "";
    for (int i = 0; est_preset_names[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", est_preset_names[i]);
    return peft_fail("unknown model preset \"%s\" (presets: %s; or give a config.json or a model folder)", preset, list);
}

int est_model_load(EstModel *em, const char *spec) {
    memset(em, 0, sizeof *em);
    if (dir_exists(spec)) {
        char *path = path_join(spec, "config.json");
        ModelConfig cfg;
        int rc = config_load(&cfg, path);
        free(path);
        return rc ? -1 : est_model_from_config(em, &cfg, spec);
    }
    if (file_exists(spec)) {
        ModelConfig cfg;
        return config_load(&cfg, spec) ? -1 : est_model_from_config(em, &cfg, spec);
    }
    return est_model_preset(em, spec);
}

// ---- safetensors size ----

// Length of s as cJSON prints it inside quotes (its escapes).
static int64_t json_escaped_len(const char *s) {
    int64_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\' || *p == '\b' || *p == '\f' || *p == '\n' || *p == '\r' || *p == '\t') n += 2;
        else if (*p < 32) n += 6;
        else n += 1;
    }
    return n;
}

int64_t est_safetensors_bytes(const EstTensor *t, int n) {
    int64_t hlen = (int64_t)strlen("{\"__metadata__\":{\"format\":\"pt\"}"), off = 0;
    for (int i = 0; i < n; i++) {
        int64_t numel = t[i].ndim == 1 ? t[i].shape[0] : t[i].shape[0] * t[i].shape[1];
        int64_t bytes = numel * 4;
        char shape[64];
        if (t[i].ndim == 1) snprintf(shape, sizeof shape, "%lld", (long long)t[i].shape[0]);
        else snprintf(shape, sizeof shape, "%lld,%lld", (long long)t[i].shape[0], (long long)t[i].shape[1]);
        // ,"<name>":{"dtype":"F32","shape":[...],"data_offsets":[a,b]}
        hlen += 1 + 2 + json_escaped_len(t[i].name) + 1;
        hlen += snprintf(NULL, 0, "{\"dtype\":\"F32\",\"shape\":[%s],\"data_offsets\":[%lld,%lld]}", shape, (long long)off,
                         (long long)(off + bytes));
        off += bytes;
    }
    hlen += 1;  // closing brace
    int64_t padded = (hlen + 7) & ~(int64_t)7;
    return 8 + padded + off;
}

// The tensors adapters_save writes for the adapted modules, in its order, each module at rank r.
// The base biases LoRA's bias option trains, in the order the model holds them (GPT-2: each layer's
// ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj, then ln_f; the Llama family: its linears' biases):
// their saved names (adapter_base.c) into names[] when given (malloc'd), their values returned.
static int64_t bias_tensors(const EstModel *em, const bool *adapted, BiasMode mode, char ***names, int64_t **sizes, int *n) {
    bool gpt2 = em->family == EST_DECODER_GPT2;
    int64_t total = 0, C = em->cfg.n_embd;
    int per_layer = gpt2 ? 4 : 0;  // GPT-2's linears per layer
    for (int i = 0; i <= em->n_linears && mode != BIAS_NONE; i++) {
        const char *name = NULL;
        int64_t size = 0;
        char norm[96];
        bool last = i == em->n_linears;
        if (gpt2 && mode == BIAS_ALL && (last || i % per_layer == 0 || i % per_layer == 2)) {  // ln_f, ln_1, ln_2 first
            if (last) snprintf(norm, sizeof norm, "transformer.ln_f.bias");
            else snprintf(norm, sizeof norm, "transformer.h.%d.ln_%d.bias", i / per_layer, i % per_layer == 0 ? 1 : 2);
            if (names) (*names)[*n] = xasprintf("base_model.model.%s", norm);
            if (sizes) (*sizes)[*n] = C;
            (*n)++;
            total += C;
        }
        if (last) break;
        const EstLinear *l = &em->linears[i];
        if (!l->bias || (mode == BIAS_LORA_ONLY && !adapted[i])) continue;
        name = l->name;
        size = l->out;
        if (names) (*names)[*n] = xasprintf(adapted[i] ? "base_model.model.%s.base_layer.bias" : "base_model.model.%s.bias", name);
        if (sizes) (*sizes)[*n] = size;
        (*n)++;
        total += size;
    }
    return total;
}

// ---- base parameters an adapter trains (adapter_base.c: bias, modules_to_save) ----

// A base parameter of a GPT-2 / Llama-family decoder as model.c names and stores it; lin: the linear whose
// weight or bias it is, else -1.
typedef struct {
    char name[192];
    int ndim;
    int64_t shape[2];
    int lin;
} BaseParam;

static bool est_decoder(const EstModel *em) { return em->family == EST_DECODER_GPT2 || em->family == EST_DECODER_LLAMA; }

// Every base parameter of a decoder in model.c's order (build_gpt2, build_llama); the count.
static int decoder_params(const EstModel *em, BaseParam **out) {
    const ModelConfig *c = &em->cfg;
    bool gpt2 = em->family == EST_DECODER_GPT2;
    int per = gpt2 ? 4 : 7, n = 0, cap = 16 + c->n_layer * 24;
    int64_t C = c->n_embd, V = c->vocab_size;
    BaseParam *p = xcalloc(cap, sizeof *p);
#define PUT(nd, s0, s1, li, ...) (snprintf(p[n].name, sizeof p[n].name, __VA_ARGS__), p[n].ndim = nd, p[n].shape[0] = s0, p[n].shape[1] = s1, p[n++].lin = li)
    PUT(2, V, C, -1, "%s", gpt2 ? "transformer.wte.weight" : "model.embed_tokens.weight");
    if (gpt2) PUT(2, c->n_positions, C, -1, "transformer.wpe.weight");
    for (int l = 0; l < c->n_layer; l++) {
        if (gpt2) { PUT(1, C, 0, -1, "transformer.h.%d.ln_1.weight", l); PUT(1, C, 0, -1, "transformer.h.%d.ln_1.bias", l); }
        else PUT(1, C, 0, -1, "model.layers.%d.input_layernorm.weight", l);
        for (int k = 0; k < per; k++) {
            int i = l * per + k;
            const EstLinear *li = &em->linears[i];
            if (gpt2) PUT(2, li->in, li->out, i, "%s.weight", li->name);  // Conv1D: [in, out]
            else PUT(2, li->out, li->in, i, "%s.weight", li->name);
            if (li->bias) PUT(1, li->out, 0, i, "%s.bias", li->name);
            if (gpt2 && k == 1) { PUT(1, C, 0, -1, "transformer.h.%d.ln_2.weight", l); PUT(1, C, 0, -1, "transformer.h.%d.ln_2.bias", l); }
            if (!gpt2 && k == 3) PUT(1, C, 0, -1, "model.layers.%d.post_attention_layernorm.weight", l);
        }
    }
    if (gpt2) { PUT(1, C, 0, -1, "transformer.ln_f.weight"); PUT(1, C, 0, -1, "transformer.ln_f.bias"); }
    else PUT(1, C, 0, -1, "model.norm.weight");
    if (!c->tie_word_embeddings) PUT(2, V, C, -1, "lm_head.weight");
#undef PUT
    *out = p;
    return n;
}

// The name adapters_save gives p when the adapter trains it (adapter_base.c's trained_name), else NULL (malloc'd).
static char *base_saved_name(const EstModel *em, const bool *adapted, const AdapterConfig *c, const BaseParam *p) {
    if (adapter_base_to_save(c, p->name)) return xasprintf("base_model.model.%s", p->name);
    bool bias = p->lin >= 0 && strstr(p->name + strlen(em->linears[p->lin].name), "bias"), own = bias && adapted[p->lin];
    if (c->bias == BIAS_NONE || (c->bias == BIAS_ALL ? !strstr(p->name, "bias") : !own)) return NULL;
    return own ? xasprintf("base_model.model.%s.base_layer.bias", em->linears[p->lin].name) : xasprintf("base_model.model.%s", p->name);
}

// A decoder's base parameters the adapter trains (bias, modules_to_save), in the order adapters_save writes
// them (the model's), into t / names when given (names malloc'd); their values returned. Refused as
// adapter_base.c refuses: a module to save on a tied embedding / head, entries that name no parameter.
static int64_t base_trained(const EstModel *em, const bool *adapted, const AdapterConfig *c, EstTensor *t, char **names, int *n) {
    if (c->n_modules_to_save && em->cfg.tie_word_embeddings &&
        adapter_base_refuse_tied(c, em->family == EST_DECODER_GPT2 ? "transformer.wte.weight" : "model.embed_tokens.weight"))
        return -1;
    BaseParam *p;
    int np = decoder_params(em, &p);
    int64_t total = 0;
    bool saved_any = false;
    *n = 0;
    for (int i = 0; i < np; i++) {
        char *name = base_saved_name(em, adapted, c, &p[i]);
        if (!name) continue;
        saved_any = saved_any || adapter_base_to_save(c, p[i].name);
        total += p[i].ndim == 1 ? p[i].shape[0] : p[i].shape[0] * p[i].shape[1];
        if (t) {
            names[*n] = name;
            t[*n] = (EstTensor){name, p[i].ndim, {p[i].shape[0], p[i].shape[1]}};
        } else free(name);
        (*n)++;
    }
    free(p);
    if (c->n_modules_to_save && !saved_any) {
        char list[512] = "";
        for (int k = 0; k < c->n_modules_to_save; k++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "", c->modules_to_save[k]);
        return peft_fail("modules_to_save [%s] names no module of %s with parameters", list, em->name);
    }
    return total;
}

// base: the options whose trained base parameters a decoder's file holds (bias, modules_to_save), or NULL.
static int64_t adapter_file_bytes(const EstModel *em, const bool *adapted, MethodId method, int r, const AdapterConfig *lora,
                                  bool with_projection, int max_in, int max_out, const EmbedTensor *emb, int n_emb, const AdapterConfig *base) {
    int n = 0, cap = 0;
    EstTensor *t = NULL;
    char **names = NULL;
#define ADD(nd, s0, s1, fmt, ...)                                                         \
    do {                                                                                  \
        if (n == cap) {                                                                   \
            cap = cap ? 2 * cap : 64;                                                     \
            t = xrealloc(t, sizeof *t * (size_t)cap);                                     \
            names = xrealloc(names, sizeof *names * (size_t)cap);                         \
        }                                                                                 \
        names[n] = xasprintf(fmt, __VA_ARGS__);                                           \
        t[n] = (EstTensor){names[n], nd, {s0, s1}};                                       \
        n++;                                                                              \
    } while (0)
    const Method *m = method_get(method);
    for (int i = 0; i < em->n_linears; i++) {
        if (!adapted[i]) continue;
        const EstLinear *l = &em->linears[i];
        int mr = lora ? adapter_module_rank(lora, l->name) : r;  // LoRA's rank_pattern
        for (int k = 0; k < m->n_tensors; k++) {  // the method's tensors, in the order adapters_save writes them
            const AdapterTensor *d = &m->tensors[k];
            ADD(d->vector ? 1 : 2, adapter_dim(d->rows, mr, l->in, l->out), adapter_dim(d->cols, mr, l->in, l->out),
                "base_model.model.%s.%s", l->name, d->suffix);
        }
    }
    for (int i = 0; i < n_emb; i++)  // then the embedding's (adapter_embed.c)
        if (emb[i].trained) ADD(2, emb[i].rows, emb[i].cols, "%s", emb[i].name);
    if (base && est_decoder(em)) {  // then the trained base parameters (adapter_base.c appends them)
        int nb = 0;
        if (base_trained(em, adapted, base, NULL, NULL, &nb) > 0) {
            EstTensor *bt = xcalloc(nb, sizeof *bt);
            char **bn = xcalloc(nb, sizeof *bn);
            base_trained(em, adapted, base, bt, bn, &nb);
            for (int i = 0; i < nb; i++) {
                ADD(bt[i].ndim, bt[i].shape[0], bt[i].shape[1], "%s", bn[i]);
                free(bn[i]);
            }
            free(bt);
            free(bn);
        }
    } else if (lora && lora->bias != BIAS_NONE) {  // then the trained biases (adapter_base.c appends them)
        int nb = 0;
        bias_tensors(em, adapted, lora->bias, NULL, NULL, &nb);
        char **bn = xcalloc(nb ? nb : 1, sizeof(char *));
        int64_t *bs = xcalloc(nb ? nb : 1, sizeof(int64_t));
        nb = 0;
        bias_tensors(em, adapted, lora->bias, &bn, &bs, &nb);
        for (int i = 0; i < nb; i++) {
            ADD(1, bs[i], 0, "%s", bn[i]);
            free(bn[i]);
        }
        free(bn);
        free(bs);
    }
    for (int i = 0; i < n_emb; i++)  // the embedding's base weight PEFT saves, last (adapters_save)
        if (!emb[i].trained) ADD(2, emb[i].rows, emb[i].cols, "%s", emb[i].name);
    if (method == METHOD_VERA && with_projection) {
        ADD(2, r, max_in, "%s", "base_model.vera_A");
        ADD(2, max_out, r, "%s", "base_model.vera_B");
    }
    for (int i = 0; i < em->n_linears; i++)  // modules_to_save: the head's copies, after what the method writes
        if (em->linears[i].saved) {
            ADD(2, em->linears[i].out, em->linears[i].in, "base_model.model.%s.weight", em->linears[i].name);
            ADD(1, em->linears[i].out, 0, "base_model.model.%s.bias", em->linears[i].name);
        }
#undef ADD
    int64_t bytes = est_safetensors_bytes(t, n);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    free(t);
    return bytes;
}

// ---- activations ----

static int64_t widest_layer(const ModelConfig *c) {
    int64_t w = 3LL * c->n_embd, qkv = (int64_t)(c->n_head + 2 * c->n_kv_head) * c->head_dim;
    if (qkv > w) w = qkv;
    if (c->n_inner > w) w = c->n_inner;
    return w;
}

// transformer.c's ensure_activations, buffer by buffer, plus model_backward's dres and d_norm (an
// encoder's: encoder_backward's dres and the head's rows). GPT-3 is counted as the GPT-2 path would keep it.
int64_t est_cpu_activation_bytes(const EstModel *em, int B, int T) {
    const ModelConfig *c = &em->cfg;
    int64_t N = (int64_t)B * T, L = c->n_layer, C = c->n_embd, I = c->n_inner, V = c->vocab_size;
    int64_t HD = c->head_dim, QW = (int64_t)c->n_head * HD, KVW = (int64_t)c->n_kv_head * HD;
    bool llama = em->family == EST_DECODER_LLAMA;
    int64_t per_layer = 4 * N * C              // res_mid, res_out, norm1, norm2
                        + 4 * N                // norm1/2 mean and rstd
                        + N * (llama ? QW : 3 * C)  // q (GPT-2: packed qkv)
                        + (llama ? 2 * N * KVW + N * I : 0)  // k, v, up
                        + (int64_t)B * c->n_head * T * T  // att
                        + N * QW               // attn_y
                        + 2 * N * I;           // fc, fc_act
    int64_t wide = widest_layer(c);
    if (C > wide) wide = C;
    int64_t global = N * C              // x0
                     + N * C + 2 * N     // final_norm, final_mean, final_rstd
                     + (em->lm_head ? N * V : 0)  // logits
                     + 5 * N * wide      // scratch[5]
                     + (llama ? 2 * (int64_t)T * (HD / 2) : 0)  // rope tables
                     + 2 * N * C;        // model_backward: dres, d_norm
    if (em->family == EST_ENCODER_ROBERTA) {  // encoder.c: logits [N rows, num_labels] (B used), the head's rows
        int64_t NL = c->num_labels > 0 ? c->num_labels : 2;
        global += N * NL + 3LL * B * C + B * NL  // head_in, head_pre, head_act, targets
                  - N * C + 3LL * B * C + B * NL;  // encoder_backward: dres (no d_norm), d_in, d_pre, d_act, dlogits
        return 4 * (L * per_layer + global) + 6 * N * 4;  // + ids, labels, positions, mask, token types, RoBERTa's positions
    }
    return 4 * (L * per_layer + global) + 2 * N * 4;  // floats, plus labels and ids (int32)
}

// ---- the CUDA backend (src/cuda/gpu_model.cu, bf16 mode, training) ----
//
// Every byte the backend cudaMallocs (what gpu_peak_bytes counts), modelled allocation by
// allocation after gpu_model_create, ensure_acts and gemm_ctx_new:
//   parameters: two arenas (each tensor's offset rounded up to 64 elements, as plan() places them):
//     frozen weights bf16, with the classifier's rows padded to a multiple of 64 and, for the
//     Llama layout with adapters, round8(R) spare weight rows per adapted group (the fused input
//     gradient); trainable tensors fp32 master + grad + AdamW m + v + a bf16 working copy (18 B);
//   VeRA's shared A (bf16) and B (fp32); AdaLoRA/VeRA's effective B per module (bf16) and one fp32
//   adapter-gradient scratch; full fine-tuning: the classifier's fp32 gradient staging;
//   AdaLoRA: two fp32 sensitivity scores per trainable value (gpu_adalora_update_scores);
//   activations (ensure_acts), per layer: the residual stream, the residual after attention,
//   q|k|v after rope, the attention output, the MLP pre-activation, the MLP activation when the
//   down projection is trained or adapted, norm statistics and the attention log-sum-exp (fp32),
//   h [N,R] per adapted group; once: the backward's dy/dx buffers (with adapter dropout one more
//   [N, widest adapter input], and no fused input gradient), fp32 dq/dkv accumulators and
//   residual gradient, the final norm, ids/targets, the rope tables, and one classifier chunk of
//   logits (at most 128 MiB: never [N,V]);
//   the cuBLASLt workspace (32 MiB) and a 4 KiB reduction buffer;
//   while gpu_model_create uploads the weights, a 64 MiB staging buffer (VeRA: then an fp32 copy
//   of A): the peak is the larger of that moment and a training step.

typedef struct {
    bool llama;                    // the Llama layout (grouped q|k|v and gate|up, fused input gradients)
    int per_layer;                 // linears per layer in em->linears
    int64_t N, T, C, L, V, ldV, NH, NKV, HD, QW, KVW, S, I, upw;
} GpuShape;

static GpuShape gpu_shape(const EstModel *em, int B, int T) {
    const ModelConfig *c = &em->cfg;
    GpuShape s;
    s.llama = em->family == EST_DECODER_LLAMA;
    s.per_layer = s.llama ? 7 : em->family == EST_DECODER_GPT2 ? 4 : 6;
    s.N = (int64_t)B * T;
    s.T = T;
    s.C = c->n_embd;
    s.L = c->n_layer;
    s.V = c->vocab_size;
    s.ldV = (s.V + 63) / 64 * 64;
    s.NH = c->n_head;
    s.NKV = c->n_kv_head;
    s.HD = c->head_dim;
    s.QW = s.NH * s.HD;
    s.KVW = s.NKV * s.HD;
    s.S = s.QW + 2 * s.KVW;
    s.I = c->n_inner;
    s.upw = s.llama ? 2 * s.I : s.I;
    return s;
}

// The group (fused GEMM) of linear k of a layer: Llama {q,k,v} {o} {gate,up} {down}; otherwise one each.
static int gpu_group_of(const GpuShape *s, int k) {
    static const int llama_groups[7] = {0, 0, 0, 1, 2, 2, 3};
    return s->llama ? llama_groups[k] : k;
}

static int64_t round8(int64_t x) { return (x + 7) / 8 * 8; }
static void arena_add(int64_t *n, int64_t numel, bool contiguous) {
    if (!contiguous) *n = (*n + 63) & ~(int64_t)63;
    *n += numel;
}

// The per-group adapter rank R of layer l, group g (LoRA/AdaLoRA: the members' ranks summed; VeRA:
// one shared h of rank r), or 0 without an adapted member.
static int64_t gpu_group_rank(const EstModel *em, const GpuShape *s, const bool *adapted, MethodId method, int r, int l, int g) {
    if (!adapted) return 0;
    int64_t R = 0;
    for (int k = 0; k < s->per_layer; k++) {
        int i = l * s->per_layer + k;
        if (i >= em->n_linears || gpu_group_of(s, k) != g || !adapted[i]) continue;
        R = method == METHOD_VERA ? r : R + r;
    }
    return R;
}

// Whether the CUDA backend trains base parameter `name` (plan(): full fine-tuning, or a decoder's bias /
// modules_to_save, lc; lin: the linear whose weight or bias it is, else -1).
static bool gpu_trains(const EstModel *em, const bool *adapted, const AdapterConfig *lc, int lin, const char *fmt, ...) {
    if (!adapted) return true;
    if (!lc || !est_decoder(em) || (lc->bias == BIAS_NONE && !lc->n_modules_to_save)) return false;
    BaseParam p = {.lin = lin};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p.name, sizeof p.name, fmt, ap);
    va_end(ap);
    char *saved = base_saved_name(em, adapted, lc, &p);
    free(saved);
    return saved != NULL;
}

// adapted == NULL: full fine-tuning (every base weight trainable, no adapter set). lc: the adapter's options
// (bias and modules_to_save train base parameters), or NULL.
static void gpu_memory(EstMemory *out, const EstModel *em, const bool *adapted, const AdapterConfig *lc, MethodId method, int r, float dropout,
                       int B, int T) {
    GpuShape s = gpu_shape(em, B, T);
    const ModelConfig *c = &em->cfg;
    bool full = adapted == NULL, drop = !full && dropout > 0, fuse = s.llama && !full && !drop;
    int64_t N = s.N, C = s.C, head_pad = (s.ldV - s.V) * C;
    // Parameter arenas, in plan()'s order: a tensor the run trains (or a fused group's frozen member riding
    // with a trained one) in the trainable arena, the others frozen.
    int64_t base = 0, train = 0;
#define ARENA(tr) ((tr) ? &train : &base)
#define TRAINS(lin, ...) gpu_trains(em, adapted, lc, lin, __VA_ARGS__)
    const char *wte = s.llama ? "model.embed_tokens.weight" : "transformer.wte.weight";
    arena_add(ARENA(TRAINS(-1, "%s", wte)), s.V * C + (em->lm_head && c->tie_word_embeddings ? head_pad : 0), false);
    if (!s.llama) arena_add(ARENA(TRAINS(-1, "transformer.wpe.weight")), (int64_t)c->n_positions * C, false);
    int64_t ld_dqkv = s.S, ld_dfc = s.upw, ld_dres = C, Rmax = 0;
    for (int l = 0; l < s.L; l++) {
        int64_t R[7] = {0};
        for (int g = 0; g < 7; g++) {
            R[g] = gpu_group_rank(em, &s, adapted, method, r, l, g);
            if (R[g] > Rmax) Rmax = R[g];
        }
        int i0 = l * s.per_layer;
        const EstLinear *li = &em->linears[(size_t)i0];
#define W(k) TRAINS(i0 + (k), "%s.weight", li[k].name)
#define BI(k) (li[k].bias && TRAINS(i0 + (k), "%s.bias", li[k].name))
        if (s.llama) {
            bool wr = W(0) || W(1) || W(2), br = BI(0) || BI(1) || BI(2), gr = W(4) || W(5), ubr = BI(4) || BI(5);
            arena_add(ARENA(TRAINS(-1, "model.layers.%d.input_layernorm.weight", l)), C, false);
            arena_add(ARENA(wr), (int64_t)li[0].in * li[0].out, false);
            arena_add(ARENA(wr), (int64_t)li[1].in * li[1].out, true);
            arena_add(ARENA(wr), (int64_t)li[2].in * li[2].out + (fuse && R[0] ? round8(R[0]) * C : 0), true);
            if (li[0].bias) { arena_add(ARENA(br), li[0].out, false); arena_add(ARENA(br), li[1].out, true); arena_add(ARENA(br), li[2].out, true); }
            arena_add(ARENA(W(3)), (int64_t)li[3].in * li[3].out + (fuse && R[1] ? round8(R[1]) * s.QW : 0), false);
            if (li[3].bias) arena_add(ARENA(BI(3)), C, false);
            arena_add(ARENA(TRAINS(-1, "model.layers.%d.post_attention_layernorm.weight", l)), C, false);
            arena_add(ARENA(gr), (int64_t)li[4].in * li[4].out, false);
            arena_add(ARENA(gr), (int64_t)li[5].in * li[5].out + (fuse && R[2] ? round8(R[2]) * C : 0), true);
            if (li[4].bias) { arena_add(ARENA(ubr), li[4].out, false); arena_add(ARENA(ubr), li[5].out, true); }
            arena_add(ARENA(W(6)), (int64_t)li[6].in * li[6].out + (fuse && R[3] ? round8(R[3]) * s.I : 0), false);
            if (li[6].bias) arena_add(ARENA(BI(6)), C, false);
            if (fuse) {  // padded strides of the dy buffers (ceil8 of out + round8(R))
                if (R[0]) ld_dqkv = MAX(ld_dqkv, round8(s.S + round8(R[0])));
                if (R[2]) ld_dfc = MAX(ld_dfc, round8(s.upw + round8(R[2])));
                if (R[1]) ld_dres = MAX(ld_dres, round8(C + round8(R[1])));
                if (R[3]) ld_dres = MAX(ld_dres, round8(C + round8(R[3])));
            }
        } else {  // GPT-2 (other presets are counted as the GPT-2 path would place them)
            arena_add(ARENA(TRAINS(-1, "transformer.h.%d.ln_1.weight", l)), C, false);
            arena_add(ARENA(TRAINS(-1, "transformer.h.%d.ln_1.bias", l)), C, false);
            for (int k = 0; k < s.per_layer; k++) {
                arena_add(ARENA(W(k)), (int64_t)li[k].in * li[k].out, false);
                if (li[k].bias) arena_add(ARENA(BI(k)), li[k].out, false);
                if (k == 1) {
                    arena_add(ARENA(TRAINS(-1, "transformer.h.%d.ln_2.weight", l)), C, false);
                    arena_add(ARENA(TRAINS(-1, "transformer.h.%d.ln_2.bias", l)), C, false);
                }
            }
        }
#undef W
#undef BI
    }
    for (int i = (int)(s.L * s.per_layer); i < em->n_linears; i++) {  // RoBERTa's pooler
        arena_add(ARENA(full), (int64_t)em->linears[i].in * em->linears[i].out, false);
        if (em->linears[i].bias) arena_add(ARENA(full), em->linears[i].out, false);
    }
    arena_add(ARENA(TRAINS(-1, s.llama ? "model.norm.weight" : "transformer.ln_f.weight")), C, false);
    if (!s.llama) arena_add(ARENA(TRAINS(-1, "transformer.ln_f.bias")), C, false);  // final norm (+ bias)
    bool head_trains = em->lm_head && (c->tie_word_embeddings ? TRAINS(-1, "%s", wte) : TRAINS(-1, "lm_head.weight"));
    if (em->lm_head && !c->tie_word_embeddings) arena_add(ARENA(head_trains), s.V * C + head_pad, false);
#undef ARENA
#undef TRAINS
    // Adapter tensors, group by group: the A matrices of a group adjacent, then B, E, lambda_d, lambda_b per member.
    int64_t beff = 0, g_cap = 0, vera_a = 0, vera_b = 0, dora_fixed = 0, dora_S = 0;
    int vmax_in = 0, vmax_out = 0;
    for (int l = 0; !full && l < s.L; l++)
        for (int g = 0; g < s.per_layer; g++) {
            bool first = true;
            for (int k = 0; k < s.per_layer; k++) {
                int i = l * s.per_layer + k;
                if (gpu_group_of(&s, k) != g || !adapted[i] || method == METHOD_VERA) continue;
                arena_add(&train, (int64_t)r * em->linears[i].in, !first);
                first = false;
            }
            for (int k = 0; k < s.per_layer; k++) {
                int i = l * s.per_layer + k;
                if (gpu_group_of(&s, k) != g || !adapted[i]) continue;
                const EstLinear *lin = &em->linears[i];
                if (method == METHOD_VERA) {
                    arena_add(&train, r, false);         // lambda_d
                    arena_add(&train, lin->out, false);  // lambda_b
                } else {
                    arena_add(&train, (int64_t)lin->out * r, false);     // B
                    if (method == METHOD_ADALORA) arena_add(&train, r, false);  // E
                    if (method == METHOD_DORA) {  // the magnitude; its norm and the norm's scratch A A^T, X [out, r]
                        arena_add(&train, lin->out, false);
                        dora_fixed += 4 * lin->out;
                        dora_S = MAX(dora_S, 4 * (((int64_t)r * r + 63) / 64 * 64 + (int64_t)lin->out * r));
                    }
                }
                if (method != METHOD_LORA && method != METHOD_DORA) {
                    beff += 2LL * lin->out * r;
                    g_cap = MAX(g_cap, (int64_t)lin->out * r);
                }
                vmax_in = MAX(vmax_in, lin->in);
                vmax_out = MAX(vmax_out, lin->out);
            }
        }
    base = (base + 63) & ~(int64_t)63;
    train = (train + 63) & ~(int64_t)63;
    if (method == METHOD_VERA && !full) {
        vera_a = 2LL * r * vmax_in;
        vera_b = 4LL * vmax_out * r;
    }
    // Activations (ensure_acts), bf16 unless noted.
    bool down_kept = full;
    for (int i = 0; !full && i < s.L * s.per_layer && i < em->n_linears; i++)
        if (adapted[i] && i % s.per_layer == s.per_layer - 1) down_kept = true;
    int64_t per_layer = 2 * N * C              // residual after attention
                        + 2 * N * s.S          // q|k|v
                        + 2 * N * s.QW         // attention output
                        + 2 * N * s.upw        // MLP pre-activation(s)
                        + 4 * N * (4 + s.NH);  // norm statistics, log-sum-exp (fp32)
    int64_t acts = s.L * per_layer + (s.L + 1) * 2 * N * C + (down_kept ? s.L * 2 * N * s.I : 0);
    for (int l = 0; l < s.L; l++)
        for (int g = 0; g < s.per_layer; g++) acts += 2 * N * gpu_group_rank(em, &s, adapted, method, r, l, g);
    int64_t chunk = em->lm_head ? ((128LL << 20) / (s.ldV * 2)) / 64 * 64 : 0;
    if (em->lm_head && chunk < 64) chunk = 64;
    if (chunk > N) chunk = N;
    acts += 2 * N * C              // normalised input
            + 2 * 2 * N * s.I      // MLP activation, its gradient
            + 2 * N * ld_dfc       // d pre-activation
            + 2 * N * C            // d normalised input
            + 2 * N * s.QW         // d attention output
            + 2 * N * ld_dqkv      // d q|k|v
            + 4 * N * (s.QW + 2 * s.KVW + s.NH)  // fp32 dq, dk|dv accumulators, flash backward's D
            + 4 * N * C + 2 * N * ld_dres         // residual gradient fp32 + its bf16 copy
            + 2 * N * Rmax                        // dh
            + (drop && Rmax ? 2 * N * MAX(MAX(C, s.QW), s.I) : 0)  // adapter dropout: drop(x), then its gradient
            + 2 * N * C + 4 * 4 * N + 4 * 2 * N   // final norm, its statistics and the loss rows, ids and targets
            + 2 * chunk * s.ldV                   // one classifier chunk
            + (s.llama ? 4 * s.T * s.HD : 0);     // rope cos, sin [T, HD/2] fp32
    int64_t fixed = (32LL << 20) + 4 * 1024;      // cuBLASLt workspace, reduction partials
    int64_t head_pending = head_trains ? 4 * s.ldV * C : 0;  // the classifier's gradient, staged (gpu_model.cu)
    int64_t scores = method == METHOD_ADALORA && !full ? 8 * train : 0;
    out->weights = 2 * base + 6 * train + vera_a + vera_b + beff;  // frozen bf16; trainables fp32 master + bf16 working copy
    out->grads = 4 * train + head_pending;
    out->optimizer = 8 * train + scores;
    out->activations = acts + dora_fixed;
    out->workspace = fixed + 4 * g_cap + dora_S;
    int64_t training = out->weights + out->grads + out->optimizer + out->activations + out->workspace;
    int64_t creation = fixed + 2 * base + 18 * train + MAX(64LL << 20, vera_a + vera_b + 2 * vera_a);
    if (creation > training) out->workspace += creation - training;  // the upload's staging buffer sets the peak
}

int64_t est_gpu_activation_bytes(const EstModel *em, int B, int T) {
    EstMemory m;
    gpu_memory(&m, em, NULL, NULL, METHOD_FULL, 0, 0, B, T);
    return m.activations;
}

// Per adapted module, what the adapter keeps for backward (adapter_ensure_capacity): h [N,r],
// extra [N,r] for VeRA (lambda_d h) and AdaLoRA (h E), [N,out] for DoRA, dropout(x) [N,in] when dropout > 0.
static int64_t adapter_activation_elems(const EstModel *em, const bool *adapted, MethodId method, int r, float dropout, int64_t N) {
    int64_t n = 0;
    for (int i = 0; i < em->n_linears; i++) {
        if (!adapted[i]) continue;
        n += N * (r ? r : 1);
        if (method == METHOD_DORA) n += N * em->linears[i].out;  // DoRA: x W^T + s x A^T B^T
        else if (method != METHOD_LORA) n += N * r;
        if (dropout > 0) n += N * em->linears[i].in;
    }
    return n;
}

// The embedding tensors of the config (adapter_embed.c's plan) for a GPT-2 or Llama-family model.
static int embed_tensors(const EstModel *em, const AdapterConfig *c, EmbedTensor *out) {
    const char *emb = em->family == EST_DECODER_GPT2 ? "transformer.wte" : em->family == EST_DECODER_LLAMA ? "model.embed_tokens" : NULL;
    if (!emb) {
        bool any = c->n_token_targets > 0;
        for (int i = 0; i < c->n_targets && !any; i++) any = strstr(c->targets[i], "embed") || strstr(c->targets[i], "wte");
        return any ? peft_fail("%s: peft estimate counts embedding adapters (LoRA on the embedding, trainable_token_indices) on GPT-2 and "
                               "Llama-family models only", em->name)
                   : 0;
    }
    return adapter_embed_plan(c, emb, em->cfg.tie_word_embeddings, em->cfg.vocab_size, em->cfg.n_embd, out);
}

static void mem_total(EstMemory *m) { m->total = m->weights + m->grads + m->optimizer + m->activations + m->workspace; }

int estimate_compute(Estimate *e, const EstModel *em, MethodId method, const AdapterConfig *c, int batch, int context) {
    memset(e, 0, sizeof *e);
    const Method *desc = method_get(method);
    if (!desc) return -1;
    if (batch <= 0 || context <= 0) return peft_fail("batch and context must be positive (got %d, %d)", batch, context);
    e->method = method;
    e->batch = batch;
    e->context = context;
    e->base_params = em->n_params;
    int r = method == METHOD_ADALORA ? c->init_r : c->r;
    e->r = r;
    e->target_r = c->target_r;
    if (method != METHOD_FULL && r <= 0) return peft_fail("the rank must be positive (got %d)", r);
    for (int k = 0; method != METHOD_FULL && !est_decoder(em) && k < c->n_modules_to_save; k++) {  // an encoder's head: EstLinear.saved
        const char *entry = c->modules_to_save[k];
        if (em->family != EST_ENCODER_ROBERTA || (strcmp(entry, "classifier") && strcmp(entry, "score")))
            return peft_fail("modules_to_save \"%s\": peft estimate counts modules trained in full beside the adapter on GPT-2 and "
                             "Llama-family models (and an encoder's classification head)", entry);
    }
    if (method == METHOD_ADALORA && (c->target_r < 0 || c->target_r > c->init_r))
        return peft_fail("AdaLoRA target_r %d must be in 0..init_r (%d)", c->target_r, c->init_r);
    bool *adapted = xcalloc(em->n_linears ? em->n_linears : 1, sizeof(bool));
    if (method != METHOD_FULL) {
        for (int i = 0; i < em->n_linears; i++)
            if ((adapted[i] = !em->linears[i].saved && adapter_targets_module(c, em->linears[i].name))) e->n_adapted++;
        if (e->n_adapted == 0) {
            free(adapted);
            if (c->target_regex) return peft_fail("target_modules \"%s\" matched no module of %s", c->target_regex, em->name);
            char list[256] = "";
            for (int i = 0; i < c->n_targets; i++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", c->targets[i]);
            return peft_fail("target_modules [%s] matched no module of %s (its modules are named like %s)", list, em->name,
                             em->n_linears ? em->linears[0].name : "?");
        }
    } else e->n_adapted = em->n_linears;

    for (int i = 0; i < em->n_linears; i++) {
        if (!adapted[i]) continue;
        const EstLinear *l = &em->linears[i];
        e->trainable += method_module_params(desc, c->n_lora_rank_pattern ? adapter_module_rank(c, l->name) : r, l->in, l->out);  // LoRA's (and DoRA's) rank_pattern
        if (method == METHOD_ADALORA) e->adalora_final_params += method_module_params(desc, c->target_r, l->in, l->out);
        if (l->in > e->vera_max_in) e->vera_max_in = l->in;
        if (l->out > e->vera_max_out) e->vera_max_out = l->out;
    }
    // Base parameters trained in place (adapter_base.c: the model's own tensors): a decoder's bias and
    // modules_to_save, an encoder's head (modules_to_save) and LoRA's biases.
    int64_t in_place = 0;
    if (method != METHOD_FULL && est_decoder(em)) {
        int nb = 0;
        if ((in_place = base_trained(em, adapted, c, NULL, NULL, &nb)) < 0) {
            free(adapted);
            return -1;
        }
    } else if (method != METHOD_FULL) {
        int nb = 0;
        for (int i = 0; i < em->n_linears; i++)
            if (em->linears[i].saved) in_place += (int64_t)em->linears[i].in * em->linears[i].out + em->linears[i].out;
        if (method == METHOD_LORA) e->trainable += bias_tensors(em, adapted, c->bias, NULL, NULL, &nb);  // bias "all" / "lora_only"
    }
    e->trainable += in_place;
    EmbedTensor emb[EMBED_TENSORS_MAX];  // LoRA on the token embedding, trainable_token_indices
    int n_emb = method == METHOD_FULL ? 0 : embed_tensors(em, c, emb);
    if (n_emb < 0) {
        free(adapted);
        return -1;
    }
    for (int i = 0; i < n_emb; i++) e->trainable += emb[i].trained ? emb[i].rows * emb[i].cols : 0;
    if (method == METHOD_FULL) e->trainable = em->n_params;
    if (method == METHOD_VERA) e->vera_projection = (int64_t)r * e->vera_max_in + (int64_t)e->vera_max_out * r;
    else e->vera_max_in = e->vera_max_out = 0;
    if (method == METHOD_ADALORA) {
        e->adalora_budget_ranks = (int64_t)c->target_r * e->n_adapted;
        e->adalora_final_file_bytes = adapter_file_bytes(em, adapted, method, c->target_r, NULL, false, 0, 0, NULL, 0, c);
    }
    if (method == METHOD_FULL) e->file_bytes = 4 * em->n_params;
    else if (method == METHOD_VERA) {
        e->file_bytes_with_projection = adapter_file_bytes(em, adapted, method, r, NULL, true, e->vera_max_in, e->vera_max_out, NULL, 0, c);
        e->file_bytes_without_projection = adapter_file_bytes(em, adapted, method, r, NULL, false, 0, 0, NULL, 0, c);
        e->file_bytes = c->save_projection ? e->file_bytes_with_projection : e->file_bytes_without_projection;
    } else  // PiSSA / OLoRA: saved converted to rank 2r (lora_init.c)
        e->file_bytes = adapter_file_bytes(em, adapted, method, lora_init_changes_base(c) ? 2 * r : r, c->n_lora_rank_pattern ? c : NULL, false, 0, 0,
                                           emb, n_emb, c);

    // Memory. CPU: everything fp32, AdamW m and v fp32; AdaLoRA's allocator keeps two double
    // scores per trainable value. GPU: what the CUDA backend allocates (gpu_memory).
    int64_t N = (int64_t)batch * context, P = em->n_params, Tr = e->trainable;
    int64_t cpu_act = est_cpu_activation_bytes(em, batch, context);
    e->cpu_full = (EstMemory){.weights = 4 * P, .grads = 4 * P, .optimizer = 8 * P, .activations = cpu_act};
    gpu_memory(&e->gpu_full, em, NULL, NULL, METHOD_FULL, 0, 0, batch, context);
    if (method == METHOD_FULL) {
        e->cpu = e->cpu_full;
        e->gpu = e->gpu_full;
    } else {
        int64_t extra = adapter_activation_elems(em, adapted, method, r, c->dropout, N);
        // The largest short-lived buffers of one adapted module's backward: dh [N,r]; with dropout the
        // input gradient through the mask [N,in]. VeRA keeps each module's scaled B [out,r] (vera.c).
        int64_t temp = 0, vera_scaled_B = 0;
        for (int i = 0; i < em->n_linears; i++)
            if (adapted[i]) {
                temp = MAX(temp, N * r + (c->dropout > 0 ? N * em->linears[i].in : 0));
                if (method == METHOD_VERA) vera_scaled_B += (int64_t)em->linears[i].out * r;
            }
        e->cpu = (EstMemory){.weights = 4 * (P + Tr - in_place + e->vera_projection + vera_scaled_B), .grads = 4 * Tr,
                             .optimizer = 8 * Tr + (method == METHOD_ADALORA ? 16 * Tr : 0), .activations = cpu_act + 4 * extra,
                             .workspace = 4 * temp};
        gpu_memory(&e->gpu, em, adapted, c, method, r, c->dropout, batch, context);
    }
    mem_total(&e->cpu);
    mem_total(&e->gpu);
    mem_total(&e->cpu_full);
    mem_total(&e->gpu_full);
    free(adapted);
    for (int i = 0; i < n_emb; i++) free(emb[i].name);
    return 0;
}

// The GPU column's part of estimate_quantize: the groups of every layer as gpu_memory places them.
static void gpu_quantized(EstMemory *m, const EstModel *em, const bool *adapted, MethodId method, int r, float dropout, int B, int T,
                          QuantType t) {
    GpuShape s = gpu_shape(em, B, T);
    bool fuse = s.llama && !(dropout > 0), four = t != QUANT_INT8;
    int64_t removed = 0, device = 0, scratch = 0;
    for (int l = 0; l < s.L; l++)
        for (int g = 0; g < s.per_layer; g++) {
            int64_t R = gpu_group_rank(em, &s, adapted, method, r, l, g), spare = fuse && R ? round8(R) : 0, out = 0, in = 0;
            for (int k = 0; k < s.per_layer; k++) {
                int i = l * s.per_layer + k;
                if (i >= em->n_linears || gpu_group_of(&s, k) != g) continue;
                const EstLinear *lin = &em->linears[i];
                int64_t n = (int64_t)lin->in * lin->out, scales = four ? (n + QUANT_BLOCK - 1) / QUANT_BLOCK : lin->out;
                device += ((four ? (n + 1) / 2 : n) + 255) / 256 * 256 + 4 * ((scales + 63) / 64 * 64);
                removed += 2 * n;
                out += lin->out;
                in = lin->in;
            }
            if (!out) continue;
            removed += 2 * spare * in;
            scratch = MAX(scratch, 2 * (out + spare) * in);
        }
    m->weights += device - removed;
    m->workspace += scratch;
    mem_total(m);
}

// The change --recompute (1 mlp, 2 layer) makes to gpu_memory's activations (adapted NULL: full fine-tuning):
// ensure_acts' allocations with and without it.
static int64_t gpu_recompute_delta(const EstModel *em, const bool *adapted, MethodId method, int r, int B, int T, int mode) {
    GpuShape s = gpu_shape(em, B, T);
    int64_t N = s.N, C = s.C;
    bool down_kept = !adapted;
    for (int i = 0; adapted && i < s.L * s.per_layer && i < em->n_linears; i++)
        if (adapted[i] && i % s.per_layer == s.per_layer - 1) down_kept = true;
    int64_t mlp = s.L * (2 * N * s.upw + (down_kept ? 2 * N * s.I : 0));  // every layer's pre-activation and activation
    if (mode == 1) return 2 * N * s.upw - mlp;                            // one pre-activation scratch instead
    if (mode != 2) return 0;
    int64_t per_layer = 2 * N * C + 2 * N * s.S + 2 * N * s.QW + 2 * N * s.upw + 4 * N * (4 + s.NH);
    int64_t delta = -(s.L - 1) * per_layer - (down_kept ? s.L * 2 * N * s.I : 0);
    for (int g = 0; g < s.per_layer; g++) {  // h: each place's largest instead of every layer's
        int64_t R_max = 0;
        for (int l = 0; l < s.L; l++) {
            int64_t R = gpu_group_rank(em, &s, adapted, method, r, l, g);
            delta -= 2 * N * R;
            R_max = MAX(R_max, R);
        }
        delta += 2 * N * R_max;
    }
    return delta;
}

void estimate_recompute(Estimate *e, const EstModel *em, const AdapterConfig *c, int mode) {
    bool *adapted = NULL;
    if (e->method != METHOD_FULL) {
        adapted = xcalloc(em->n_linears ? em->n_linears : 1, sizeof(bool));
        for (int i = 0; i < em->n_linears; i++) adapted[i] = adapter_targets_module(c, em->linears[i].name);
    }
    e->gpu.activations += gpu_recompute_delta(em, adapted, e->method, e->r, e->batch, e->context, mode);
    e->gpu_full.activations += gpu_recompute_delta(em, NULL, METHOD_FULL, 0, e->batch, e->context, mode);
    mem_total(&e->gpu);
    mem_total(&e->gpu_full);
    free(adapted);
}

int estimate_quantize(Estimate *e, const EstModel *em, const AdapterConfig *c, QuantType t, bool nested) {
    for (int i = 0; e->method != METHOD_FULL && i < em->n_linears; i++) {  // as adapter_base.c refuses it
        char *w = xasprintf("%s.weight", em->linears[i].name);
        bool saved = adapter_base_to_save(c, w);
        free(w);
        if (saved) return peft_fail("modules_to_save: %s is quantized; a trained full copy of it is not implemented", em->linears[i].name);
    }
    int64_t fp32 = 0, q = 0, widest = 0;
    for (int i = 0; i < em->n_linears; i++) {
        const EstLinear *l = &em->linears[i];
        int64_t n = (int64_t)l->in * l->out;
        fp32 += 4 * n;
        q += (int64_t)quant_bytes(t, nested, l->out, l->in);
        widest = MAX(widest, n);
    }
    e->quant = t;
    e->double_quant = nested;
    e->quant_bytes = q;
    e->quant_fp32_bytes = fp32;
    e->cpu.weights += q - fp32;
    e->cpu.workspace += 4 * widest;
    mem_total(&e->cpu);
    bool *adapted = xcalloc(em->n_linears ? em->n_linears : 1, sizeof(bool));
    for (int i = 0; i < em->n_linears; i++) adapted[i] = adapter_targets_module(c, em->linears[i].name);
    gpu_quantized(&e->gpu, em, adapted, e->method, e->r, c->dropout, e->batch, e->context, t);
    free(adapted);
    return 0;
}
