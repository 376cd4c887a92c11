// bench_model.h: a Model structure for a config with its weights left unset (zero pages the
// process never touches), for benchmarks whose GPU draws the weights itself (GpuOptions
// random_init_seed): model_create_random draws 1.1B normals on one CPU core, which takes a minute.
// Header-only, included by bench/gpu/bench_gpu.c and bench/memory_bench.c.
#pragma once
#include "config.h"
#include "model.h"
#include "util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static Param *bench_add_param(Model *m, const char *name, int rows, int cols) {
    Param *p = &m->params[m->n_params++];
    p->name = xstrdup(name);
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols ? cols : 1;
    p->numel = (long)rows * (cols ? cols : 1);
    p->w = xcalloc(p->numel, sizeof(float));  // untouched pages: costs no memory
    return p;
}

static Linear *bench_add_linear(Model *m, const char *module, int in, int out, bool bias) {
    Linear *lin = &m->linears[m->n_linears++];
    char name[256];
    lin->module = xstrdup(module);
    lin->in = in;
    lin->out = out;
    lin->fan_in_fan_out = m->cfg.arch == ARCH_GPT2;
    snprintf(name, sizeof name, "%s.weight", module);
    lin->weight = lin->fan_in_fan_out ? bench_add_param(m, name, in, out) : bench_add_param(m, name, out, in);
    if (bias) { snprintf(name, sizeof name, "%s.bias", module); lin->bias = bench_add_param(m, name, out, 0); }
    return lin;
}

// The modules model.c builds for the config (GPT-2, or the Llama layout without biases), in its order.
static Model *bench_model_from_config(const ModelConfig *cfg) {
    Model *m = xcalloc(1, sizeof *m);
    m->cfg = *cfg;
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, L = c->n_layer;
    m->params = xcalloc(4 + L * 20, sizeof(Param));
    m->blocks = xcalloc(L, sizeof(Block));
    m->linears = xcalloc(L * 7, sizeof(Linear));
    char n[256];
    if (c->arch == ARCH_GPT2) {
        m->wte = bench_add_param(m, "transformer.wte.weight", c->vocab_size, C);
        m->wpe = bench_add_param(m, "transformer.wpe.weight", c->n_positions, C);
        for (int l = 0; l < L; l++) {
            Block *b = &m->blocks[l];
#define P(f, s, r) (snprintf(n, sizeof n, "transformer.h.%d." s, l), b->f = bench_add_param(m, n, r, 0))
#define LN(f, s, i, o) (snprintf(n, sizeof n, "transformer.h.%d." s, l), b->f = bench_add_linear(m, n, i, o, true))
            P(norm1_w, "ln_1.weight", C); P(norm1_b, "ln_1.bias", C);
            LN(qkv, "attn.c_attn", C, 3 * C); LN(attn_out, "attn.c_proj", C, C);
            P(norm2_w, "ln_2.weight", C); P(norm2_b, "ln_2.bias", C);
            LN(fc, "mlp.c_fc", C, c->n_inner); LN(fc_out, "mlp.c_proj", c->n_inner, C);
#undef P
#undef LN
        }
        m->norm_f_w = bench_add_param(m, "transformer.ln_f.weight", C, 0);
        m->norm_f_b = bench_add_param(m, "transformer.ln_f.bias", C, 0);
        m->lm_head = m->wte;
    } else {
        int q = c->n_head * c->head_dim, kv = c->n_kv_head * c->head_dim;
        m->wte = bench_add_param(m, "model.embed_tokens.weight", c->vocab_size, C);
        for (int l = 0; l < L; l++) {
            Block *b = &m->blocks[l];
#define P(f, s, r) (snprintf(n, sizeof n, "model.layers.%d." s, l), b->f = bench_add_param(m, n, r, 0))
#define LN(f, s, i, o) (snprintf(n, sizeof n, "model.layers.%d." s, l), b->f = bench_add_linear(m, n, i, o, false))
            P(norm1_w, "input_layernorm.weight", C);
            LN(q, "self_attn.q_proj", C, q); LN(k, "self_attn.k_proj", C, kv); LN(v, "self_attn.v_proj", C, kv);
            LN(o, "self_attn.o_proj", q, C);
            P(norm2_w, "post_attention_layernorm.weight", C);
            LN(gate, "mlp.gate_proj", C, c->n_inner); LN(up, "mlp.up_proj", C, c->n_inner); LN(down, "mlp.down_proj", c->n_inner, C);
#undef P
#undef LN
        }
        m->norm_f_w = bench_add_param(m, "model.norm.weight", C, 0);
        m->lm_head = c->tie_word_embeddings ? m->wte : bench_add_param(m, "lm_head.weight", c->vocab_size, C);
        m->inv_freq = xcalloc(c->head_dim / 2, sizeof(float));
        for (int i = 0; i < c->head_dim / 2; i++) m->inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
    }
    return m;
}

static Model *bench_model(const char *config_json) {
    ModelConfig cfg;
    if (config_parse(&cfg, config_json, "bench")) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
    return bench_model_from_config(&cfg);
}
