// estimate.c: parameter, file and memory estimates for PEFT methods (see estimate.h).
#include "estimate.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    if (c->arch == ARCH_GPT2) {
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

const char *est_method_name(EstMethod m) {
    return m == EST_LORA ? "LoRA" : m == EST_VERA ? "VeRA" : m == EST_ADALORA ? "AdaLoRA" : "full fine-tuning";
}

int est_method_parse(const char *s, EstMethod *out) {
    if (!strcasecmp(s, "lora")) *out = EST_LORA;
    else if (!strcasecmp(s, "vera")) *out = EST_VERA;
    else if (!strcasecmp(s, "adalora")) *out = EST_ADALORA;
    else if (!strcasecmp(s, "full")) *out = EST_FULL;
    else return -1;
    return 0;
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
static int64_t adapter_file_bytes(const EstModel *em, const bool *adapted, EstMethod method, int r,
                                  bool with_projection, int max_in, int max_out) {
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
    for (int i = 0; i < em->n_linears; i++) {
        if (!adapted[i]) continue;
        const EstLinear *l = &em->linears[i];
        if (method == EST_LORA) {  // lora.c: A then B
            ADD(2, r, l->in, "base_model.model.%s.lora_A.weight", l->name);
            ADD(2, l->out, r, "base_model.model.%s.lora_B.weight", l->name);
        } else if (method == EST_VERA) {  // vera.c: lambda_b [out], lambda_d [r]
            ADD(1, l->out, 1, "base_model.model.%s.vera_lambda_b", l->name);
            ADD(1, r, 1, "base_model.model.%s.vera_lambda_d", l->name);
        } else {  // adalora.c: A, B, E [r,1]
            ADD(2, r, l->in, "base_model.model.%s.lora_A", l->name);
            ADD(2, l->out, r, "base_model.model.%s.lora_B", l->name);
            ADD(2, r, 1, "base_model.model.%s.lora_E", l->name);
        }
    }
    if (method == EST_VERA && with_projection) {
        ADD(2, r, max_in, "%s", "base_model.vera_A");
        ADD(2, max_out, r, "%s", "base_model.vera_B");
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

// transformer.c's ensure_activations, buffer by buffer, plus model_backward's dres and d_norm.
// RoBERTa and GPT-3 are counted as the GPT-2 path would keep them (packed qkv, layer norms).
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
    return 4 * (L * per_layer + global) + 2 * N * 4;  // floats, plus labels and ids (int32)
}

// bf16 activations kept for backward with flash attention (no [T,T] scores): the same per-layer
// tensors as the CPU path at 2 bytes, norm statistics and the attention log-sum-exp [B,NH,T] in
// fp32, and fp32 logits with their gradient [N,V] x 2.
int64_t est_gpu_activation_bytes(const EstModel *em, int B, int T) {
    const ModelConfig *c = &em->cfg;
    int64_t N = (int64_t)B * T, L = c->n_layer, C = c->n_embd, I = c->n_inner, V = c->vocab_size;
    int64_t HD = c->head_dim, QW = (int64_t)c->n_head * HD, KVW = (int64_t)c->n_kv_head * HD;
    bool llama = em->family == EST_DECODER_LLAMA;
    int64_t bf16_elems = 4 * N * C + N * (llama ? QW + 2 * KVW : 3 * C) + N * QW + (llama ? 3 : 2) * N * I;
    int64_t fp32_elems = (llama ? 2 : 4) * N      // norm statistics (RMSNorm: rstd; LayerNorm: mean, rstd)
                         + N * c->n_head;         // flash attention log-sum-exp
    int64_t per_layer = 2 * bf16_elems + 4 * fp32_elems;
    int64_t global = 2 * (2 * N * C) + 4 * 2 * N  // embeddings output, final norm (+ stats)
                     + (em->lm_head ? 4 * 2 * N * V : 0);
    return L * per_layer + global;
}

// Per adapted module, what the adapter keeps for backward (adapter_ensure_capacity): h [N,r],
// extra [N,r] for VeRA (lambda_d h) and AdaLoRA (h E), dropout(x) [N,in] when dropout > 0.
static int64_t adapter_activation_elems(const EstModel *em, const bool *adapted, EstMethod method, int r, float dropout, int64_t N) {
    int64_t n = 0;
    for (int i = 0; i < em->n_linears; i++) {
        if (!adapted[i]) continue;
        n += N * (r ? r : 1);
        if (method != EST_LORA) n += N * r;
        if (dropout > 0) n += N * em->linears[i].in;
    }
    return n;
}

static void mem_total(EstMemory *m) { m->total = m->weights + m->grads + m->optimizer + m->activations; }

int estimate_compute(Estimate *e, const EstModel *em, EstMethod method, const AdapterConfig *c, int batch, int context) {
    memset(e, 0, sizeof *e);
    if (batch <= 0 || context <= 0) return peft_fail("batch and context must be positive (got %d, %d)", batch, context);
    e->method = method;
    e->batch = batch;
    e->context = context;
    e->base_params = em->n_params;
    int r = method == EST_ADALORA ? c->init_r : c->r;
    e->r = r;
    e->target_r = c->target_r;
    if (method != EST_FULL && r <= 0) return peft_fail("the rank must be positive (got %d)", r);
    if (method == EST_ADALORA && (c->target_r < 0 || c->target_r > c->init_r))
        return peft_fail("AdaLoRA target_r %d must be in 0..init_r (%d)", c->target_r, c->init_r);
    bool *adapted = xcalloc(em->n_linears ? em->n_linears : 1, sizeof(bool));
    if (method != EST_FULL) {
        for (int i = 0; i < em->n_linears; i++)
            if ((adapted[i] = adapter_targets_module(c, em->linears[i].name))) e->n_adapted++;
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
        if (method == EST_LORA) e->trainable += (int64_t)r * (l->in + l->out);
        else if (method == EST_VERA) e->trainable += r + l->out;
        else if (method == EST_ADALORA) {
            e->trainable += (int64_t)r * (l->in + l->out + 1);
            e->adalora_final_params += (int64_t)c->target_r * (l->in + l->out + 1);
        }
        if (l->in > e->vera_max_in) e->vera_max_in = l->in;
        if (l->out > e->vera_max_out) e->vera_max_out = l->out;
    }
    if (method == EST_FULL) e->trainable = em->n_params;
    if (method == EST_VERA) e->vera_projection = (int64_t)r * e->vera_max_in + (int64_t)e->vera_max_out * r;
    else e->vera_max_in = e->vera_max_out = 0;
    if (method == EST_ADALORA) {
        e->adalora_budget_ranks = (int64_t)c->target_r * e->n_adapted;
        e->adalora_final_file_bytes = adapter_file_bytes(em, adapted, method, c->target_r, false, 0, 0);
    }
    if (method == EST_FULL) e->file_bytes = 4 * em->n_params;
    else if (method == EST_VERA) {
        e->file_bytes_with_projection = adapter_file_bytes(em, adapted, method, r, true, e->vera_max_in, e->vera_max_out);
        e->file_bytes_without_projection = adapter_file_bytes(em, adapted, method, r, false, 0, 0);
        e->file_bytes = c->save_projection ? e->file_bytes_with_projection : e->file_bytes_without_projection;
    } else e->file_bytes = adapter_file_bytes(em, adapted, method, r, false, 0, 0);

    // Memory. CPU: everything fp32, AdamW m and v fp32; AdaLoRA's allocator keeps two double
    // scores per trainable value. GPU: frozen weights bf16, trainables fp32 master + grad + AdamW.
    int64_t N = (int64_t)batch * context, P = em->n_params, Tr = e->trainable;
    int64_t cpu_act = est_cpu_activation_bytes(em, batch, context), gpu_act = est_gpu_activation_bytes(em, batch, context);
    e->cpu_full = (EstMemory){4 * P, 4 * P, 8 * P, cpu_act, 0};
    e->gpu_full = (EstMemory){4 * P, 4 * P, 8 * P, gpu_act, 0};
    if (method == EST_FULL) {
        e->cpu = e->cpu_full;
        e->gpu = e->gpu_full;
    } else {
        int64_t extra = adapter_activation_elems(em, adapted, method, r, c->dropout, N);
        e->cpu = (EstMemory){4 * (P + Tr + e->vera_projection), 4 * Tr, 8 * Tr + (method == EST_ADALORA ? 16 * Tr : 0), cpu_act + 4 * extra, 0};
        e->gpu = (EstMemory){2 * P + 4 * Tr + 2 * e->vera_projection, 4 * Tr, 8 * Tr + (method == EST_ADALORA ? 8 * Tr : 0), gpu_act + 2 * extra, 0};
    }
    mem_total(&e->cpu);
    mem_total(&e->gpu);
    mem_total(&e->cpu_full);
    mem_total(&e->gpu_full);
    free(adapted);
    return 0;
}
