// gguf_export.c: our models and adapters in llama.cpp's GGUF layout (llama-arch.cpp's names):
//   token_embd, position_embd (GPT-2), output_norm, output (when not tied to token_embd), rope_freqs
//   (Llama 3 rope), and per block blk.N.{attn_norm, attn_qkv | attn_q, attn_k, attn_v, attn_output,
//   ffn_norm, ffn_gate, ffn_up, ffn_down}.{weight,bias}; an adapter adds blk.N.<name>.weight.lora_a
//   [r, in] and .lora_b [out, r] (PyTorch's row-major shapes; GGUF lists them fastest dimension first).
// Two rearrangements, as llama.cpp's converter makes them: GPT-2's Conv1D weights [in, out] are
// transposed to [out, in]; and llama.cpp's "llama" architecture rotates adjacent pairs of each
// head's q and k where HF rotates the two halves, so the rows of q and k (weights, biases and an
// adapter's lora_b) are permuted per head: row 2i of a head is HF's row i, row 2i+1 is row i + head_dim/2.
#include "gguf_export.h"
#include "adapter.h"
#include "gguf_writer.h"
#include "lora_init.h"
#include "tokenizer.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

int gguf_out_type_parse(const char *s, GgufOutType *out) {
    static const char *const names[] = {"f32", "f16", "bf16", "q8_0"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) { *out = (GgufOutType)i; return 0; }
    return peft_fail("unknown GGUF type \"%s\" (f32, f16, bf16, q8_0)", s);
}

const char *gguf_arch(const ModelConfig *c) {
    if (!strcmp(c->model_type, "gpt2")) return "gpt2";
    if (!strcmp(c->model_type, "llama") || !strcmp(c->model_type, "mistral")) return "llama";
    if (!strcmp(c->model_type, "qwen2")) {
        if (c->head_dim * c->n_head == c->n_embd) return "qwen2";
        peft_fail("qwen2 with head_dim %d x %d heads != hidden size %d: llama.cpp's qwen2 architecture assumes they are equal", c->head_dim, c->n_head, c->n_embd);
        return NULL;
    }
    peft_fail("model_type \"%s\" has no GGUF export (gpt2, llama, mistral and qwen2 have)", c->model_type);
    return NULL;
}

int gguf_context_length(const ModelConfig *c) {
    return c->sliding_window > 0 && c->sliding_window < c->n_positions ? c->sliding_window : c->n_positions;
}

// llama.cpp's general.file_type (llama_ftype) for each output type.
static uint32_t file_type(GgufOutType t) {
    static const uint32_t ftype[] = {[GGUF_OUT_F32] = 0, [GGUF_OUT_F16] = 1, [GGUF_OUT_BF16] = 32, [GGUF_OUT_Q8_0] = 7};
    return ftype[t];
}

// As llama.cpp's converter decides: 1-D tensors, norms and position embeddings stay F32; Q8_0
// needs rows of a multiple of 32 values and falls back to F16.
static GgmlType tensor_type(GgufOutType out, const char *name, int n_dims, int64_t ne0) {
    size_t n = strlen(name);
    bool f32 = n_dims < 2 || (n >= 12 && !strcmp(name + n - 12, "_norm.weight")) || !strncmp(name, "position_embd.", 14);
    if (f32 || out == GGUF_OUT_F32) return GGML_F32;
    if (out == GGUF_OUT_F16) return GGML_F16;
    if (out == GGUF_OUT_BF16) return GGML_BF16;
    return ne0 % GGUF_Q8_0_BLOCK ? GGML_F16 : GGML_Q8_0;
}

typedef struct {
    GgufWriter *w;
    GgufOutType type;
} Out;

// A row-major [rows, cols] matrix (cols 0: a vector of rows values).
static void add(Out *o, const char *name, int64_t rows, int64_t cols, const float *data, bool owned) {
    int64_t ne[2] = {cols ? cols : rows, rows};
    int n_dims = cols ? 2 : 1;
    gguf_add_tensor(o->w, name, tensor_type(o->type, name, n_dims, ne[0]), n_dims, ne, data, owned);
}

static void add_param(Out *o, const char *name, const Param *p) { add(o, name, p->shape[0], p->ndim == 2 ? p->shape[1] : 0, p->w, false); }

// Rows of n_head heads of x [rows, cols] from HF's rotate-half order to llama.cpp's pairs (malloc'd).
static float *permute_heads(const float *x, int rows, int cols, int n_head) {
    float *y = xmalloc(sizeof(float) * (size_t)rows * (cols ? cols : 1));
    int hd = rows / n_head, width = cols ? cols : 1;
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < hd / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(y + (size_t)(h * hd + 2 * i + j) * width, x + (size_t)(h * hd + j * hd / 2 + i) * width, sizeof(float) * width);
    return y;
}

// Where each linear and norm of a block goes: offsetof(Block, field) and the GGUF name.
static const struct { size_t field; const char *name; } LINEARS[] = {
    {offsetof(Block, qkv), "attn_qkv"}, {offsetof(Block, attn_out), "attn_output"}, {offsetof(Block, fc), "ffn_up"},
    {offsetof(Block, fc_out), "ffn_down"}, {offsetof(Block, q), "attn_q"}, {offsetof(Block, k), "attn_k"},
    {offsetof(Block, v), "attn_v"}, {offsetof(Block, o), "attn_output"}, {offsetof(Block, gate), "ffn_gate"},
    {offsetof(Block, up), "ffn_up"}, {offsetof(Block, down), "ffn_down"},
};
static const struct { size_t weight, bias; const char *name; } NORMS[] = {
    {offsetof(Block, norm1_w), offsetof(Block, norm1_b), "attn_norm"},
    {offsetof(Block, norm2_w), offsetof(Block, norm2_b), "ffn_norm"},
};

static Linear *block_linear(const Block *b, size_t field) { return *(Linear *const *)((const char *)b + field); }
static Param *block_param(const Block *b, size_t field) { return *(Param *const *)((const char *)b + field); }

// The GGUF base name of lin ("blk.3.attn_qkv"), and by how many heads llama.cpp's llama
// architecture needs its rows permuted (0: not q or k). -1 when lin is not one of m's.
static int linear_place(const Model *m, const char *arch, const Linear *lin, char *name, size_t cap, int *heads) {
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (size_t i = 0; i < sizeof LINEARS / sizeof *LINEARS; i++) {
            const Block *b = &m->blocks[l];
            if (block_linear(b, LINEARS[i].field) != lin) continue;
            snprintf(name, cap, "blk.%d.%s", l, LINEARS[i].name);
            bool rope = !strcmp(arch, "llama");
            *heads = rope && lin == b->q ? m->cfg.n_head : rope && lin == b->k ? m->cfg.n_kv_head : 0;
            return 0;
        }
    return peft_fail("internal error: module %s is in no block", lin->module);
}

static void add_linear(Out *o, const Model *m, const char *arch, const Linear *lin) {
    char base[64], name[80];
    int heads;
    linear_place(m, arch, lin, base, sizeof base, &heads);
    const Param *w = lin->weight;
    float *rows = NULL;
    if (lin->fan_in_fan_out) {  // Conv1D [in, out] -> [out, in]
        rows = xmalloc(sizeof(float) * (size_t)lin->in * lin->out);
        for (int i = 0; i < lin->in; i++)
            for (int j = 0; j < lin->out; j++) rows[(size_t)j * lin->in + i] = w->w[(size_t)i * lin->out + j];
    }
    if (heads) {
        float *p = permute_heads(rows ? rows : w->w, lin->out, lin->in, heads);
        free(rows);
        rows = p;
    }
    snprintf(name, sizeof name, "%s.weight", base);
    add(o, name, lin->out, lin->in, rows ? rows : w->w, rows != NULL);
    if (!lin->bias) return;
    snprintf(name, sizeof name, "%s.bias", base);
    if (heads) add(o, name, lin->out, 0, permute_heads(lin->bias->w, lin->out, 0, heads), true);
    else add_param(o, name, lin->bias);
}

// Llama 3's rope: per frequency the factor llama.cpp divides it by (rope_freqs.weight).
static float *llama3_rope_factors(const ModelConfig *c) {
    int half = c->head_dim / 2;
    float *f = xmalloc(sizeof(float) * half);
    double low_wavelen = c->rope_original_max_pos / c->rope_low_freq_factor, high_wavelen = c->rope_original_max_pos / c->rope_high_freq_factor;
    for (int i = 0; i < half; i++) {
        double wavelen = 2 * M_PI / (1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim));
        double smooth = (c->rope_original_max_pos / wavelen - c->rope_low_freq_factor) / (c->rope_high_freq_factor - c->rope_low_freq_factor);
        f[i] = wavelen < high_wavelen ? 1.0f : wavelen > low_wavelen ? c->rope_factor : (float)(1 / ((1 - smooth) / c->rope_factor + smooth));
    }
    return f;
}

static void add_model_tensors(Out *o, const Model *m, const char *arch) {
    const ModelConfig *c = &m->cfg;
    char name[80];
    add_param(o, "token_embd.weight", m->wte);
    if (m->wpe) add_param(o, "position_embd.weight", m->wpe);
    for (int l = 0; l < c->n_layer; l++) {
        const Block *b = &m->blocks[l];
        for (size_t i = 0; i < sizeof NORMS / sizeof *NORMS; i++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, NORMS[i].name);
            add_param(o, name, block_param(b, NORMS[i].weight));
            if (!block_param(b, NORMS[i].bias)) continue;
            snprintf(name, sizeof name, "blk.%d.%s.bias", l, NORMS[i].name);
            add_param(o, name, block_param(b, NORMS[i].bias));
        }
        for (size_t i = 0; i < sizeof LINEARS / sizeof *LINEARS; i++)
            if (block_linear(b, LINEARS[i].field)) add_linear(o, m, arch, block_linear(b, LINEARS[i].field));
    }
    add_param(o, "output_norm.weight", m->norm_f_w);
    if (m->norm_f_b) add_param(o, "output_norm.bias", m->norm_f_b);
    if (!c->tie_word_embeddings) add_param(o, "output.weight", m->lm_head);
    if (c->rope_type == ROPE_LLAMA3) add(o, "rope_freqs.weight", c->head_dim / 2, 0, llama3_rope_factors(c), true);
}

// The file name without folders and extension, for general.name.
static char *base_name(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t start = n;
    while (start > 0 && path[start - 1] != '/') start--;
    return xasprintf("%.*s", (int)(n - start), path + start);
}

static void put_general(GgufWriter *w, const char *arch, const char *kind, const char *source, GgufOutType type) {
    char *name = base_name(source);
    gguf_put_cstr(w, "general.architecture", arch);
    gguf_put_cstr(w, "general.type", kind);
    gguf_put_cstr(w, "general.name", name);
    gguf_put_u32(w, "general.quantization_version", 2);  // ggml's GGML_QNT_VERSION
    gguf_put_u32(w, "general.file_type", file_type(type));
    free(name);
}

static void put_key(GgufWriter *w, const char *arch, const char *key, GgufType type, const void *v) {
    char *full = xasprintf("%s.%s", arch, key);
    gguf_put(w, full, type, v);
    free(full);
}
static void put_u32(GgufWriter *w, const char *arch, const char *key, uint32_t v) { put_key(w, arch, key, GGUF_U32, &v); }
static void put_f32(GgufWriter *w, const char *arch, const char *key, float v) { put_key(w, arch, key, GGUF_F32, &v); }

static void put_hparams(GgufWriter *w, const ModelConfig *c, const char *arch) {
    put_u32(w, arch, "context_length", (uint32_t)gguf_context_length(c));
    put_u32(w, arch, "embedding_length", (uint32_t)c->n_embd);
    put_u32(w, arch, "feed_forward_length", (uint32_t)c->n_inner);
    put_u32(w, arch, "block_count", (uint32_t)c->n_layer);
    put_u32(w, arch, "attention.head_count", (uint32_t)c->n_head);
    if (c->arch == ARCH_GPT2) {
        put_f32(w, arch, "attention.layer_norm_epsilon", c->norm_eps);
        return;
    }
    put_u32(w, arch, "attention.head_count_kv", (uint32_t)c->n_kv_head);
    put_u32(w, arch, "attention.key_length", (uint32_t)c->head_dim);
    put_u32(w, arch, "attention.value_length", (uint32_t)c->head_dim);
    put_f32(w, arch, "attention.layer_norm_rms_epsilon", c->norm_eps);
    put_u32(w, arch, "rope.dimension_count", (uint32_t)c->head_dim);
    put_f32(w, arch, "rope.freq_base", c->rope_theta);
    put_u32(w, arch, "vocab_size", (uint32_t)c->vocab_size);
    if (c->rope_type == ROPE_LINEAR) {
        char *key = xasprintf("%s.rope.scaling.type", arch);
        gguf_put_cstr(w, key, "linear");
        free(key);
        put_f32(w, arch, "rope.scaling.factor", c->rope_factor);
    }
}

// A special token named in tokenizer_config.json, as text or {"content": text}: its id, or -1.
static int named_token(const Tokenizer *tok, const cJSON *v) {
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? tokenizer_token_id(tok, v->valuestring) : -1;
}

// tokenizer_config.json's chat_template: a string, or named templates whose "default" is the main one.
static int put_templates(GgufWriter *w, const cJSON *tmpl, const char *path) {
    if (!tmpl || cJSON_IsNull(tmpl)) return 0;
    if (cJSON_IsString(tmpl)) { gguf_put_cstr(w, "tokenizer.chat_template", tmpl->valuestring); return 0; }
    if (!cJSON_IsArray(tmpl)) return peft_fail("%s: chat_template must be a string or a list of named templates", path);
    const cJSON *t;
    cJSON_ArrayForEach(t, tmpl) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(t, "name"), *body = cJSON_GetObjectItemCaseSensitive(t, "template");
        if (!cJSON_IsString(name) || !cJSON_IsString(body)) return peft_fail("%s: chat_template entries need a \"name\" and a \"template\"", path);
        char *key = strcmp(name->valuestring, "default") ? xasprintf("tokenizer.chat_template.%s", name->valuestring) : xstrdup("tokenizer.chat_template");
        gguf_put_cstr(w, key, body->valuestring);
        free(key);
    }
    return 0;
}

// The chat template (chat_template.jinja, else tokenizer_config.json's) and the padding token, as
// the model folder's HF files give them.
static int put_tokenizer_config(GgufWriter *w, const Tokenizer *tok, const char *dir) {
    char *jinja = path_join(dir, "chat_template.jinja"), *path = path_join(dir, "tokenizer_config.json"), *text = NULL;
    size_t len = 0;
    cJSON *cfg = NULL;
    int rc = 0;
    if (file_exists(path)) {
        if (!(text = read_file(path, &len))) rc = -1;
        else if (!(cfg = cJSON_ParseWithLength(text, len)) || !cJSON_IsObject(cfg)) rc = peft_fail("%s: not a JSON object", path);
        free(text);
    }
    if (!rc && file_exists(jinja)) {
        if ((text = read_file(jinja, &len))) gguf_put_str(w, "tokenizer.chat_template", text, len);
        else rc = -1;
        free(text);
    } else if (!rc) rc = put_templates(w, cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), path);
    int pad = named_token(tok, cJSON_GetObjectItemCaseSensitive(cfg, "pad_token"));
    if (!rc && pad >= 0) gguf_put_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)pad);
    cJSON_Delete(cfg);
    free(jinja);
    free(path);
    return rc;
}

int gguf_export_model(const Model *m, GgufOutType type, const char *path) {
    const ModelConfig *c = &m->cfg;
    const char *arch = gguf_arch(c);
    if (!arch) return peft_fail_context("%s: ", m->dir ? m->dir : "the model");
    if (!m->dir) return peft_fail("%s: the model has no folder to take its tokenizer from", path);
    for (int i = 0; m->adapters && i < m->adapters->n; i++)
        if (!m->adapters->adapters[i].merged) return peft_fail("%s: the adapter is not merged into the weights (merge it, or export the adapter)", path);
    Tokenizer *tok = tokenizer_load(m->dir);
    if (!tok) return -1;
    Out o = {gguf_writer_new(GGUF_DEFAULT_ALIGNMENT), type};
    put_general(o.w, arch, "model", m->dir, type);
    put_hparams(o.w, c, arch);
    int rc = tokenizer_to_gguf(tok, c->vocab_size, o.w);
    if (!rc) rc = put_tokenizer_config(o.w, tok, m->dir);
    if (!rc) {
        add_model_tensors(&o, m, arch);
        rc = gguf_writer_save(o.w, path);
    }
    tokenizer_free(tok);
    gguf_writer_free(o.w);
    return rc;
}

int gguf_export_adapter(const Model *m, const char *adapter_dir, GgufOutType type, const char *path) {
    const AdapterSet *set = m->adapters;
    if (!set) return peft_fail("%s: no adapter is loaded", path);
    if (set->n_base)  // llama.cpp's LoRA holds low-rank pairs only
        return peft_fail("%s: the adapter also trains base weights (%s, e.g. %s), which a GGUF LoRA cannot hold: export the model with "
                         "the adapter merged (--merge) instead", path, set->cfg.n_modules_to_save ? "modules_to_save" : "bias",
                         set->base_of[0]->name);
    if (adapter_embed_what(set))
        return peft_fail("%s: the adapter has %s, which this GGUF LoRA export does not write: export the model with the adapter merged "
                         "(--merge) instead", path, adapter_embed_what(set));
    char init[32];
    if (lora_init_changes_base(&set->cfg))  // its delta is relative to the residual it decomposed on load
        return peft_fail("%s: adapter_config.json says init_lora_weights %s: the adapter applies to the residual base PEFT decomposes on "
                         "load, not to the original one a llama.cpp LoRA is used with: export with --merge, or save it converted "
                         "(peft train does)", path, lora_init_text(&set->cfg, init, sizeof init));
    const char *arch = gguf_arch(&m->cfg);
    if (!arch) return peft_fail_context("%s: ", m->dir ? m->dir : "the model");
    // llama.cpp scales each module by alpha / r' (r' read from lora_b); a plain LoRA's own alpha
    // makes that its scale exactly, and VeRA, which has none, gets r (scale 1).
    float alpha = set->cfg.type == METHOD_VERA ? (float)set->cfg.r : set->cfg.alpha > 0 ? set->cfg.alpha : 0;
    Out o = {gguf_writer_new(GGUF_DEFAULT_ALIGNMENT), type};
    put_general(o.w, arch, "adapter", adapter_dir, type);
    gguf_put_cstr(o.w, "adapter.type", "lora");  // llama.cpp's adapter type (layout: not a method)
    gguf_put_f32(o.w, "adapter.lora.alpha", alpha);
    int rc = 0;
    for (int i = 0; i < set->n && !rc; i++) {
        const Adapter *a = &set->adapters[i];
        if (a->merged) { rc = peft_fail("%s: the adapter is merged into the weights: export the model instead", path); break; }
        if (!a->method->lowrank) {
            rc = peft_fail("%s: a %s adapter is not a low-rank product llama.cpp's LoRA can load: export the model with the adapter merged (--merge)", path, a->method->title);
            break;
        }
        float *A, *B, scale;
        int r, heads;
        char base[64], name[80];
        a->method->lowrank(a, &A, &B, &r, &scale);
        if (!r) continue;
        if ((rc = linear_place(m, arch, a->lin, base, sizeof base, &heads))) { free(A); free(B); break; }
        int in = a->lin->in, out = a->lin->out;
        double fold = scale / (alpha ? alpha / (float)r : 1.0f);
        if ((float)fold != 1.0f)
            for (size_t k = 0; k < (size_t)out * r; k++) B[k] = (float)(B[k] * fold);
        if (heads) {
            float *p = permute_heads(B, out, r, heads);
            free(B);
            B = p;
        }
        snprintf(name, sizeof name, "%s.weight.lora_a", base);
        add(&o, name, r, in, A, true);
        snprintf(name, sizeof name, "%s.weight.lora_b", base);
        add(&o, name, out, r, B, true);
    }
    if (!rc) rc = gguf_writer_save(o.w, path);
    gguf_writer_free(o.w);
    return rc;
}
