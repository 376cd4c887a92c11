// model.c: building a Model from a config, loading HF weights into it, saving it back.
#include "model.h"
#include "adapter.h"
#include "kernels.h"
#include "safetensors.h"
#include "quant_files.h"
#include "gguf_writer.h"
#include <cjson/cJSON.h>
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static Param *add_param(Model *m, int cap, const char *name, int rows, int cols) {
    if (m->n_params >= cap) { fprintf(stderr, "peft: internal error: parameter table too small\n"); abort(); }
    Param *p = &m->params[m->n_params++];
    p->name = xstrdup(name);
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols ? cols : 1;
    p->numel = (long)rows * (cols ? cols : 1);
    return p;  // the weights are allocated once every shape is known (and, loading, checked)
}

// A linear module's weight in HF layout: Conv1D [in,out] for GPT-2, nn.Linear [out,in] otherwise.
static Linear *add_linear(Model *m, int cap, int *li, const char *module, int in, int out, bool bias) {
    Linear *lin = &m->linears[(*li)++];
    lin->module = xstrdup(module);
    lin->in = in;
    lin->out = out;
    lin->fan_in_fan_out = m->cfg.arch == ARCH_GPT2;
    char *name = xasprintf("%s.weight", module);
    lin->weight = lin->fan_in_fan_out ? add_param(m, cap, name, in, out) : add_param(m, cap, name, out, in);
    free(name);
    if (bias) {
        name = xasprintf("%s.bias", module);
        lin->bias = add_param(m, cap, name, out, 0);
        free(name);
    }
    return lin;
}

static void build_gpt2(Model *m, int cap) {
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, li = 0;
    char name[256];
    m->wte = add_param(m, cap, "transformer.wte.weight", c->vocab_size, C);
    m->wpe = add_param(m, cap, "transformer.wpe.weight", c->n_positions, C);
    for (int l = 0; l < c->n_layer; l++) {
        Block *b = &m->blocks[l];
#define P(field, suffix, rows) (snprintf(name, sizeof name, "transformer.h.%d." suffix, l), b->field = add_param(m, cap, name, rows, 0))
#define L(field, suffix, in, out) (snprintf(name, sizeof name, "transformer.h.%d." suffix, l), b->field = add_linear(m, cap, &li, name, in, out, true))
        P(norm1_w, "ln_1.weight", C);
        P(norm1_b, "ln_1.bias", C);
        L(qkv, "attn.c_attn", C, 3 * C);
        L(attn_out, "attn.c_proj", C, C);
        P(norm2_w, "ln_2.weight", C);
        P(norm2_b, "ln_2.bias", C);
        L(fc, "mlp.c_fc", C, c->n_inner);
        L(fc_out, "mlp.c_proj", c->n_inner, C);
#undef P
#undef L
    }
    m->norm_f_w = add_param(m, cap, "transformer.ln_f.weight", C, 0);
    m->norm_f_b = add_param(m, cap, "transformer.ln_f.bias", C, 0);
    m->lm_head = c->tie_word_embeddings ? m->wte : add_param(m, cap, "lm_head.weight", c->vocab_size, C);
    m->n_linears = li;
}

static void build_llama(Model *m, int cap) {
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, li = 0, q = c->n_head * c->head_dim, kv = c->n_kv_head * c->head_dim;
    char name[256];
    m->wte = add_param(m, cap, "model.embed_tokens.weight", c->vocab_size, C);
    for (int l = 0; l < c->n_layer; l++) {
        Block *b = &m->blocks[l];
#define P(field, suffix, rows) (snprintf(name, sizeof name, "model.layers.%d." suffix, l), b->field = add_param(m, cap, name, rows, 0))
#define L(field, suffix, in, out, bias) (snprintf(name, sizeof name, "model.layers.%d." suffix, l), b->field = add_linear(m, cap, &li, name, in, out, bias))
        P(norm1_w, "input_layernorm.weight", C);
        L(q, "self_attn.q_proj", C, q, c->qkv_bias);
        L(k, "self_attn.k_proj", C, kv, c->qkv_bias);
        L(v, "self_attn.v_proj", C, kv, c->qkv_bias);
        L(o, "self_attn.o_proj", q, C, c->o_bias);
        P(norm2_w, "post_attention_layernorm.weight", C);
        L(gate, "mlp.gate_proj", C, c->n_inner, c->mlp_bias);
        L(up, "mlp.up_proj", C, c->n_inner, c->mlp_bias);
        L(down, "mlp.down_proj", c->n_inner, C, c->mlp_bias);
#undef P
#undef L
    }
    m->norm_f_w = add_param(m, cap, "model.norm.weight", C, 0);
    m->lm_head = c->tie_word_embeddings ? m->wte : add_param(m, cap, "lm_head.weight", c->vocab_size, C);
    m->n_linears = li;
}

// BERT / RoBERTa as transformers' *ForSequenceClassification names them: "bert." or "roberta." before
// the encoder; the head is RoBERTa's classifier.dense + classifier.out_proj, or BERT's pooler + classifier.
static void build_bert(Model *m, int cap) {
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, li = 0;
    bool roberta = !strcmp(c->model_type, "roberta");
    const char *pre = roberta ? "roberta" : "bert";
    char name[256];
#define E(suffix) (snprintf(name, sizeof name, "%s.embeddings." suffix, pre), name)
    m->wte = add_param(m, cap, E("word_embeddings.weight"), c->vocab_size, C);
    m->wpe = add_param(m, cap, E("position_embeddings.weight"), c->n_positions, C);
    m->wtt = add_param(m, cap, E("token_type_embeddings.weight"), c->type_vocab_size, C);
    m->emb_norm_w = add_param(m, cap, E("LayerNorm.weight"), C, 0);
    m->emb_norm_b = add_param(m, cap, E("LayerNorm.bias"), C, 0);
#undef E
    for (int l = 0; l < c->n_layer; l++) {
        Block *b = &m->blocks[l];
#define P(field, suffix, rows) (snprintf(name, sizeof name, "%s.encoder.layer.%d." suffix, pre, l), b->field = add_param(m, cap, name, rows, 0))
#define L(field, suffix, in, out) (snprintf(name, sizeof name, "%s.encoder.layer.%d." suffix, pre, l), b->field = add_linear(m, cap, &li, name, in, out, true))
        L(q, "attention.self.query", C, C);
        L(k, "attention.self.key", C, C);
        L(v, "attention.self.value", C, C);
        L(o, "attention.output.dense", C, C);
        P(norm1_w, "attention.output.LayerNorm.weight", C);
        P(norm1_b, "attention.output.LayerNorm.bias", C);
        L(fc, "intermediate.dense", C, c->n_inner);
        L(fc_out, "output.dense", c->n_inner, C);
        P(norm2_w, "output.LayerNorm.weight", C);
        P(norm2_b, "output.LayerNorm.bias", C);
#undef P
#undef L
    }
    m->head_dense = add_linear(m, cap, &li, roberta ? "classifier.dense" : "bert.pooler.dense", C, C, true);
    m->head_out = add_linear(m, cap, &li, roberta ? "classifier.out_proj" : "classifier", C, c->num_labels, true);
    m->n_linears = li;
}

// Rotary inverse frequencies, with transformers' linear and llama3 rope scaling.
static void build_inv_freq(Model *m) {
    const ModelConfig *c = &m->cfg;
    int half = c->head_dim / 2;
    m->inv_freq = xcalloc(half, sizeof(float));
    for (int i = 0; i < half; i++) {
        // transformers: 1 / theta ** (arange(0, dim, 2).float() / dim), in fp32
        float f = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
        if (c->rope_type == ROPE_LINEAR) f /= c->rope_factor;
        else if (c->rope_type == ROPE_LLAMA3) {
            double low_wavelen = c->rope_original_max_pos / c->rope_low_freq_factor;
            double high_wavelen = c->rope_original_max_pos / c->rope_high_freq_factor;
            double wavelen = 2 * M_PI / f;
            if (wavelen > low_wavelen) f = f / c->rope_factor;
            else if (wavelen >= high_wavelen) {
                double smooth = (c->rope_original_max_pos / wavelen - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (float)((1 - smooth) * f / c->rope_factor + smooth * f);
            }
        }
        m->inv_freq[i] = f;
    }
}

// The model's tensors with their names and shapes, no weights yet. config_validate's limits keep
// every count and width here within an int.
static Model *model_build(const ModelConfig *cfg) {
    Model *m = xcalloc(1, sizeof *m);
    m->cfg = *cfg;
    int cap = 12 + cfg->n_layer * 20;
    m->params = xcalloc(cap, sizeof(Param));
    m->blocks = xcalloc(cfg->n_layer, sizeof(Block));
    m->linears = xcalloc(cfg->n_layer * 7 + 2, sizeof(Linear));
    if (cfg->arch == ARCH_GPT2) build_gpt2(m, cap);
    else if (cfg->arch == ARCH_BERT) build_bert(m, cap);
    else { build_llama(m, cap); build_inv_freq(m); }
    return m;
}

Model *model_create_zeros(const ModelConfig *cfg) {
    Model *m = model_build(cfg);
    for (int i = 0; i < m->n_params; i++) m->params[i].w = xcalloc(m->params[i].numel, sizeof(float));
    return m;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

Model *model_create_random(const ModelConfig *cfg, uint64_t seed) {
    Model *m = model_create_zeros(cfg);
    uint64_t s = seed;
    for (int i = 0; i < m->n_params; i++) {
        Param *p = &m->params[i];
        bool is_norm = strstr(p->name, "ln_") || strstr(p->name, "norm") || strstr(p->name, "LayerNorm");
        if (p->ndim == 1) { for (long j = 0; j < p->numel; j++) p->w[j] = is_norm && strstr(p->name, "weight") ? 1.0f : 0.0f; continue; }
        // Box-Muller, std 0.02, two draws per pair of values. rng_next's state advances by a constant per draw,
        // so pair k's draws are the stream's draws 2k+1 and 2k+2 from here: the pairs run in parallel (a 7B
        // model's 3.4e9 pairs) with the values of the sequential loop.
        long pairs = (p->numel + 1) / 2;
#pragma omp parallel for schedule(static) if (pairs > 65536)
        for (long k = 0; k < pairs; k++) {
            uint64_t sk = s + (uint64_t)(2 * k) * 0x9E3779B97F4A7C15ull;
            double u1 = ((rng_next(&sk) >> 11) + 1.0) * 0x1.0p-53, u2 = (rng_next(&sk) >> 11) * 0x1.0p-53;
            double r = sqrt(-2 * log(u1)) * 0.02;
            p->w[2 * k] = (float)(r * cos(2 * M_PI * u2));
            if (2 * k + 1 < p->numel) p->w[2 * k + 1] = (float)(r * sin(2 * M_PI * u2));
        }
        s += (uint64_t)(2 * pairs) * 0x9E3779B97F4A7C15ull;
    }
    return m;
}

// The file's tensor for p, when its shape is the one config.json implies.
static const StTensor *find_weight(const Param *p, const StModel *st, const char *dir, bool gpt2, const char **file) {
    const StTensor *t = st_model_find(st, p->name, file);
    // The original GPT-2 checkpoints name tensors without the "transformer." prefix.
    if (!t && gpt2 && !strncmp(p->name, "transformer.", 12)) t = st_model_find(st, p->name + 12, file);
    // Old BERT checkpoints call a LayerNorm's weight and bias gamma and beta (transformers renames them).
    size_t n = strlen(p->name);
    bool ln_w = n > 16 && !strcmp(p->name + n - 16, "LayerNorm.weight"), ln_b = n > 14 && !strcmp(p->name + n - 14, "LayerNorm.bias");
    if (!t && (ln_w || ln_b)) {
        char *old = xasprintf("%.*s%s", (int)(n - (ln_w ? 6 : 4)), p->name, ln_w ? "gamma" : "beta");
        t = st_model_find(st, old, file);
        free(old);
    }
    if (!t) { peft_fail("%s: the weights have no tensor %s", dir, p->name); return NULL; }
    bool ok = t->numel == p->numel && ((p->ndim == 1 && t->ndim == 1) || (p->ndim == 2 && t->ndim == 2 && t->shape[0] == p->shape[0] && t->shape[1] == p->shape[1]));
    if (ok) return t;
    char got[160], want[64];
    peft_fail("%s: tensor %s has shape [%s] but config.json implies [%s]", *file, p->name, st_shape_text(t->ndim, t->shape, got, sizeof got),
              st_shape_text(p->ndim, p->shape, want, sizeof want));
    return NULL;
}

static int read_weight(Param *p, const StTensor *t, const char *file) {
    if (!(p->w = try_calloc(p->numel, sizeof(float), p->name))) return -1;
    return st_to_f32_finite(t, p->w, file);
}

int model_quantize_linear(Model *m, Linear *lin, QuantType t, bool nested) {
    float *w = lin->weight->w, *rows = w;
    if (lin->fan_in_fan_out) {  // Conv1D [in, out] -> [out, in]
        rows = xmalloc(sizeof(float) * (size_t)lin->in * lin->out);
        for (long i = 0; i < lin->in; i++)
            for (long o = 0; o < lin->out; o++) rows[o * lin->in + i] = w[i * lin->out + o];
    }
    QWeight *q = xcalloc(1, sizeof *q);
    int rc = qweight_quantize(q, t, nested, NULL, rows, lin->out, lin->in, lin->weight->name);
    if (rows != w) free(rows);
    if (rc) { free(q); return -1; }
    lin->q = q;
    free(lin->weight->w);
    lin->weight->w = NULL;
    m->quant = t;
    m->double_quant = nested && t != QUANT_INT8;
    return 0;
}

void model_dequantize(Model *m) {
    for (int i = 0; i < m->n_linears; i++) {
        Linear *lin = &m->linears[i];
        if (!lin->q) continue;
        long in = lin->in, out = lin->out;
        float *rows = xmalloc(sizeof(float) * (size_t)(in * out));
        qweight_dequantize(lin->q, rows);
        if (lin->fan_in_fan_out) {  // [out, in] -> Conv1D [in, out]
            lin->weight->w = xmalloc(sizeof(float) * (size_t)(in * out));
            for (long o = 0; o < out; o++)
                for (long k = 0; k < in; k++) lin->weight->w[k * out + o] = rows[o * in + k];
            free(rows);
        } else lin->weight->w = rows;
        qweight_free(lin->q);
        free(lin->q);
        lin->q = NULL;
    }
    m->quant = QUANT_NONE;
    m->double_quant = false;
}

const float *model_linear_weight(Model *m, Linear *lin, bool *fan_in_fan_out) {
    const Param *p = lin->weight;
    if (!lin->q && p->w) { *fan_in_fan_out = lin->fan_in_fan_out; return p->w; }
    size_t n = (size_t)lin->in * lin->out;
    if (n > m->deq_cap) {
        free(m->deq_buf);
        m->deq_buf = xmalloc(sizeof(float) * n);
        m->deq_cap = n;
    }
    if (lin->q) qweight_dequantize(lin->q, m->deq_buf);
    else linear_weight_rows(lin, 0, lin->out, m->deq_buf);  // bf16 only: widened
    *fan_in_fan_out = false;
    return m->deq_buf;
}

void linear_weight_rows(const Linear *lin, int o0, int n, float *out) {
    const Param *p = lin->weight;
    long in = lin->in;
    if (lin->q) qweight_dequantize_rows(lin->q, o0, n, out);
    else if (!p->w)  // bf16 only, [out, in]
        for (long i = 0; i < n * in; i++) out[i] = bf16_to_f32(p->w16[o0 * in + i]);
    else if (!lin->fan_in_fan_out) memcpy(out, p->w + o0 * in, sizeof(float) * n * in);
    else
        for (int k = 0; k < n; k++)  // Conv1D [in, out]: column o0 + k
            for (long i = 0; i < in; i++) out[k * in + i] = p->w[i * lin->out + o0 + k];
}

// The quantization config.json's quantization_config says the folder's linears are saved in.
static int folder_quantization(const char *dir, QuantType *t) {
    char *path = path_join(dir, "config.json"), *text = read_file(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    bool nested;
    int rc = text ? quant_config_read(j, t, &nested, path) : -1;
    cJSON_Delete(j);
    free(text);
    free(path);
    return rc;
}

// An encoder checkpoint saved without a classification head (e.g. roberta-base, a masked-LM one):
// the head from params[first] on is new, as transformers makes it: weights N(0, 0.02), biases 0
// (the values differ from torch's draws; a note says so). RoBERTa's pooler-less head is new whole;
// BERT's pooler is the checkpoint's when it has one.
static int init_new_head(Model *m, int first, const char *dir) {
    uint64_t s = 0x5EED;
    for (int i = first; i < m->n_params; i++) {
        Param *p = &m->params[i];
        if (!(p->w = try_calloc(p->numel, sizeof(float), p->name))) return -1;
        for (long j = 0; p->ndim == 2 && j < p->numel; j++) {
            double u1 = ((rng_next(&s) >> 11) + 1.0) * 0x1.0p-53, u2 = (rng_next(&s) >> 11) * 0x1.0p-53;
            p->w[j] = (float)(sqrt(-2 * log(u1)) * cos(2 * M_PI * u2) * 0.02);
        }
    }
    fprintf(stderr, "peft: note: %s has no %s: the classification head (%d labels) starts from random weights, as transformers would start it\n",
            dir, m->head_out->weight->name, m->cfg.num_labels);
    return 0;
}

// Every tensor is found and its shape checked before any weight is allocated: the sizes come from
// the file, not from what config.json claims. A quantized linear's fp32 weight lives only until it
// is quantized.
Model *model_load_quantized(const char *dir, QuantType t, bool nested) {
    if (!dir_exists(dir)) { peft_fail("%s: not a directory", dir); return NULL; }
    char *cfg_path = path_join(dir, "config.json");
    ModelConfig cfg;
    int rc = config_load(&cfg, cfg_path);
    free(cfg_path);
    QuantType saved;  // a folder bitsandbytes quantized (config.json's quantization_config)
    if (rc || folder_quantization(dir, &saved)) return NULL;
    if (saved && t && t != saved) {
        peft_fail("%s: the model is saved quantized as %s; --quantize %s would quantize it again", dir, quant_type_name(saved), quant_type_name(t));
        return NULL;
    }
    StModel st;
    if (st_model_open(&st, dir)) return NULL;
    Model *m = model_build(&cfg);
    m->dir = xstrdup(dir);
    const StTensor **src = xcalloc(m->n_params, sizeof *src);
    const char **file = xcalloc(m->n_params, sizeof *file);
    Linear **lin_of = xcalloc(m->n_params, sizeof *lin_of);
    for (int i = 0; i < m->n_linears; i++) lin_of[m->linears[i].weight - m->params] = &m->linears[i];
    int head = 0;  // an encoder without its classification head (a pretrained checkpoint): the head's first param
    if (cfg.arch == ARCH_BERT && !st_model_find(&st, m->head_out->weight->name, &file[0]))
        head = (int)((st_model_find(&st, m->head_dense->weight->name, &file[0]) ? m->head_out : m->head_dense)->weight - m->params);
    for (int i = 0; i < m->n_params && !rc; i++)
        if (!(saved && lin_of[i]) && !(head && i >= head) && !(src[i] = find_weight(&m->params[i], &st, dir, cfg.arch == ARCH_GPT2, &file[i]))) rc = -1;
    if (head && !rc) rc = init_new_head(m, head, dir);
    for (int i = 0; i < m->n_params && !rc; i++) {
        Linear *lin = lin_of[i];
        if (head && i >= head) continue;
        if (saved && lin) {
            lin->q = xcalloc(1, sizeof(QWeight));
            rc = quant_read_linear(lin->q, &st, lin->module, saved, lin->out, lin->in, dir);
            if (rc) { free(lin->q); lin->q = NULL; }
            m->quant = saved;
            m->double_quant = !rc && lin->q->nested;
            continue;
        }
        rc = read_weight(&m->params[i], src[i], file[i]);
        if (!rc && t != QUANT_NONE && lin) rc = model_quantize_linear(m, lin, t, nested);
    }
    st_model_close(&st);
    free(src);
    free(file);
    free(lin_of);
    if (rc) { model_free(m); return NULL; }
    return m;
}

Model *model_load(const char *dir) { return model_load_quantized(dir, QUANT_NONE, false); }

void model_free(Model *m) {
    if (!m) return;
    adapters_free(m);
    activations_free(&m->act, m->cfg.n_layer);
    for (int i = 0; i < m->n_params; i++) {
        free(m->params[i].name);
        free(m->params[i].w);
        free(m->params[i].w16);
        free(m->params[i].grad);
    }
    for (int i = 0; i < m->n_linears; i++) {
        free(m->linears[i].module);
        if (m->linears[i].q) qweight_free(m->linears[i].q);
        free(m->linears[i].q);
    }
    free(m->deq_buf);
    free(m->params);
    free(m->linears);
    free(m->blocks);
    free(m->inv_freq);
    free(m->dir);
    free(m);
}

Param *model_find_param(Model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (!strcmp(m->params[i].name, name)) return &m->params[i];
    return NULL;
}

Linear *model_find_linear(Model *m, const char *module) {
    for (int i = 0; i < m->n_linears; i++)
        if (!strcmp(m->linears[i].module, module)) return &m->linears[i];
    return NULL;
}

void model_train_all(Model *m) {
    for (int i = 0; i < m->n_params; i++) {
        Param *p = &m->params[i];
        p->trainable = p->decay = true;
        if (!p->grad) p->grad = xcalloc(p->numel, sizeof(float));
    }
}

int model_trainable(Model *m, Param ***out) {
    if (m->adapters) { *out = m->adapters->params; return m->adapters->n_params; }
    static _Thread_local Param **list;
    static _Thread_local int cap;
    int n = 0;
    for (int i = 0; i < m->n_params; i++) n += m->params[i].trainable;
    if (n > cap) { list = xrealloc(list, sizeof(Param *) * n); cap = n; }
    n = 0;
    for (int i = 0; i < m->n_params; i++) if (m->params[i].trainable) list[n++] = &m->params[i];
    *out = list;
    return n;
}

long model_count_params(const Model *m, bool trainable_only) {
    long n = 0;
    for (int i = 0; i < m->n_params; i++)
        if (!trainable_only || m->params[i].trainable) n += m->params[i].numel;
    if (m->adapters)
        for (int i = 0; i < m->adapters->n_params; i++) n += m->adapters->params[i]->numel;
    return n;
}

// In parallel blocks: one thread's memset of GPT-2's 124M gradients (0.5 GB) is a serial stretch of each step.
void model_zero_grad(Model *m) {
    enum { BLOCK = 1 << 16 };
    Param **list;
    int n = model_trainable(m, &list);
    for (int i = 0; i < n; i++) {
        float *g = list[i]->grad;
        long numel = list[i]->numel;
#pragma omp parallel for if (numel > 4 * BLOCK)
        for (long j = 0; j < numel; j += BLOCK) memset(g + j, 0, sizeof(float) * (numel - j < BLOCK ? numel - j : BLOCK));
    }
}

static bool file_exists_in(const char *dir, const char *name) {
    char *p = path_join(dir, name);
    bool ok = file_exists(p);
    free(p);
    return ok;
}

// config.json of a model whose source or self is quantized, or saved in bf16: the source's (or
// config_to_json's) with quantization_config set to the model's (or removed: a dequantized merge) and,
// in bf16, the dtype transformers writes ("dtype") and the key transformers before 4.56 reads ("torch_dtype").
static char *rewritten_config(Model *m, bool bf16) {
    char *path = m->dir ? path_join(m->dir, "config.json") : NULL;
    char *text = path && file_exists(path) ? read_file(path, NULL) : config_to_json(&m->cfg);
    free(path);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!j) return NULL;
    cJSON_DeleteItemFromObject(j, "quantization_config");
    if (m->quant) cJSON_AddItemToObject(j, "quantization_config", quant_config_json(m->quant, m->double_quant));
    for (int k = 0; bf16 && k < 2; k++) {
        const char *key = k ? "torch_dtype" : "dtype";
        cJSON_DeleteItemFromObject(j, key);
        cJSON_AddStringToObject(j, key, "bfloat16");
    }
    text = cJSON_Print(j);
    cJSON_Delete(j);
    return text;
}

void model_round_bf16(Model *m) {
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].w) quant_round(QUANT_OUT_BF16, m->params[i].w, m->params[i].numel);
}

// p's values in bf16 (to nearest, ties to even) into the writer; a finite value beyond bf16's range is refused.
static int add_bf16(StWriter *w, const Param *p) {
    uint16_t *h = try_calloc(p->numel ? p->numel : 1, sizeof(uint16_t), p->name);
    int rc = h ? 0 : -1;
    for (long i = 0; h && !rc && i < p->numel; i++) {
        h[i] = gguf_f32_to_bf16(p->w[i]);
        if ((h[i] & 0x7fff) == 0x7f80 && isfinite(p->w[i]))  // rounded to infinity
            rc = peft_fail("tensor %s: value %g (element %ld) is beyond bf16's range", p->name, p->w[i], i);
    }
    if (!rc) st_writer_add(w, p->name, DT_BF16, p->ndim, p->shape, h);
    free(h);
    return rc;
}

// Copies the folder's config.json (and tokenizer files) and writes every base weight in fp32 (or bf16), a
// quantized linear as transformers saves a bitsandbytes one (config.json then gets quantization_config).
static int save_folder(Model *m, const char *dir, bool bf16) {
    if (bf16 && m->quant) return peft_fail("%s: a model with quantized linears is not saved in bf16 (dequantize it first)", dir);
    if (make_dir(dir)) return -1;
    StWriter *w = st_writer_new();
    int rc = 0;
    for (int i = 0; i < m->n_params && !rc; i++) {
        Param *p = &m->params[i];
        if (p->w && bf16) rc = add_bf16(w, p);
        else if (p->w) st_writer_add_f32(w, p->name, p->ndim, p->shape, p->w);
    }
    for (int i = 0; i < m->n_linears; i++)  // a quantized linear: the tensors transformers saves for it
        if (m->linears[i].q) quant_write_linear(w, m->linears[i].module, m->linears[i].q);
    char *path = path_join(dir, "model.safetensors");
    if (!rc) rc = st_writer_save(w, path);
    free(path);
    st_writer_free(w);
    static const char *copied[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                   "vocab.json", "merges.txt", "special_tokens_map.json", NULL};
    QuantType source = QUANT_NONE;
    if (!rc && m->dir && file_exists_in(m->dir, "config.json")) rc = folder_quantization(m->dir, &source);
    bool rewrite = m->quant || source || bf16;  // config.json rewritten: quantization_config, dtype
    if (!rc && (rewrite || !(m->dir && file_exists_in(m->dir, "config.json")))) {
        char *text = rewrite ? rewritten_config(m, bf16) : config_to_json(&m->cfg), *cfg_path = path_join(dir, "config.json");
        rc = text ? write_file_atomic(cfg_path, text, strlen(text)) : peft_fail("%s: config.json is not JSON", m->dir);
        free(text);
        free(cfg_path);
    }
    for (int i = 0; !rc && m->dir && copied[i]; i++) {
        if (rewrite && !strcmp(copied[i], "config.json")) continue;
        char *src = path_join(m->dir, copied[i]), *dst = path_join(dir, copied[i]);
        if (file_exists(src)) rc = copy_file(src, dst);
        free(src);
        free(dst);
    }
    return rc;
}

int model_save(Model *m, const char *dir) { return save_folder(m, dir, false); }
int model_save_bf16(Model *m, const char *dir) { return save_folder(m, dir, true); }
