// transformer.c: forward and backward of the decoder, side by side, for GPT-2 and the Llama
// family. Shapes: B sequences of T tokens, N = B*T rows, C = hidden size, NH/NKV heads of HD.
// GPT-2 block:  x + attn(LN1 x) -> r;  r + mlp(LN2 r),  mlp = c_proj(gelu(c_fc))
// Llama block:  x + attn(RMS1 x) -> r; r + down(silu(gate) * up)(RMS2 r), rope on q and k
#include "adapter.h"
#include "kernels.h"
#include "model.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static float *alloc_rows(int N, long width) { return xcalloc((long)N * width, sizeof(float)); }

static float **alloc_layers(int L, int N, long width) {
    float **p = xcalloc(L, sizeof(float *));
    for (int l = 0; l < L; l++) p[l] = alloc_rows(N, width);
    return p;
}

static long widest_layer(const ModelConfig *c) {
    long w = 3L * c->n_embd;
    long qkv = (long)(c->n_head + 2 * c->n_kv_head) * c->head_dim;
    if (qkv > w) w = qkv;
    if (c->n_inner > w) w = c->n_inner;
    return w;
}

static void free_layers(float **p, int L) {
    if (!p) return;
    for (int l = 0; l < L; l++) free(p[l]);
    free(p);
}

void activations_free(Activations *a, int L) {
    float **per_layer[] = {a->res_mid, a->res_out, a->norm1, a->norm2, a->norm1_mean, a->norm1_rstd, a->norm2_mean,
                           a->norm2_rstd, a->q, a->k, a->v, a->att, a->attn_y, a->fc, a->fc_act, a->up};
    for (size_t i = 0; i < sizeof per_layer / sizeof *per_layer; i++) free_layers(per_layer[i], L);
    float *flat[] = {a->x0, a->final_norm, a->final_mean, a->final_rstd, a->logits, a->rope_cos, a->rope_sin,
                     a->scratch[0], a->scratch[1], a->scratch[2], a->scratch[3], a->scratch[4], a->head_in, a->head_pre,
                     a->head_act, a->targets};
    for (size_t i = 0; i < sizeof flat / sizeof *flat; i++) free(flat[i]);
    free(a->labels);
    free(a->ids);
    free(a->pos);
    free(a->mask);
    free(a->types);
    free(a->enc_pos);
    memset(a, 0, sizeof *a);
}

// (Re)allocate what forward keeps for backward when B*T or T grows.
void ensure_activations(Model *m, int B, int T) {
    Activations *a = &m->act;
    const ModelConfig *c = &m->cfg;
    int N = B * T, L = c->n_layer, C = c->n_embd;
    // Buffers are sized exactly (attention keeps [B,NH,T,T]): reuse them only for the same shape.
    if (a->att && N == a->cap_N && T == a->cap_T) { a->B = B; a->T = T; return; }
    activations_free(a, L);
    a->B = B;
    a->T = T;
    int HD = c->head_dim, QW = c->n_head * HD, KVW = c->n_kv_head * HD;
    bool gpt2 = c->arch == ARCH_GPT2, encoder = c->arch == ARCH_BERT;
    a->x0 = alloc_rows(N, C);
    a->res_mid = alloc_layers(L, N, C);
    a->res_out = alloc_layers(L, N, C);
    a->norm1 = alloc_layers(L, N, C);
    a->norm2 = alloc_layers(L, N, C);
    a->norm1_mean = alloc_layers(L, N, 1);
    a->norm1_rstd = alloc_layers(L, N, 1);
    a->norm2_mean = alloc_layers(L, N, 1);
    a->norm2_rstd = alloc_layers(L, N, 1);
    a->q = alloc_layers(L, N, gpt2 ? 3L * C : QW);
    if (!gpt2) { a->k = alloc_layers(L, N, KVW); a->v = alloc_layers(L, N, KVW); }
    if (!gpt2 && !encoder) a->up = alloc_layers(L, N, c->n_inner);
    a->att = alloc_layers(L, B, (long)c->n_head * T * T);
    a->attn_y = alloc_layers(L, N, QW);
    a->fc = alloc_layers(L, N, c->n_inner);
    a->fc_act = alloc_layers(L, N, c->n_inner);
    a->final_norm = alloc_rows(N, C);
    a->final_mean = alloc_rows(N, 1);
    a->final_rstd = alloc_rows(N, 1);
    a->logits = alloc_rows(N, encoder ? c->num_labels : c->vocab_size);  // an encoder's: [B, num_labels]
    a->labels = xcalloc(N, sizeof(int32_t));
    a->ids = xcalloc(N, sizeof(int32_t));
    a->pos = xcalloc(N, sizeof(int32_t));
    long wide = widest_layer(c);
    for (int i = 0; i < 5; i++) a->scratch[i] = alloc_rows(N, wide > C ? wide : C);
    if (encoder) {
        a->mask = xcalloc(N, sizeof(int32_t));
        a->types = xcalloc(N, sizeof(int32_t));
        a->enc_pos = xcalloc(N, sizeof(int32_t));
        a->head_in = alloc_rows(B, C);
        a->head_pre = alloc_rows(B, C);
        a->head_act = alloc_rows(B, C);
        a->targets = alloc_rows(B, c->num_labels);
    } else if (!gpt2) {
        a->rope_cos = alloc_rows(T, HD / 2);
        a->rope_sin = alloc_rows(T, HD / 2);
        rope_tables(a->rope_cos, a->rope_sin, T, HD, m->inv_freq);
    }
    a->cap_N = N;
    a->cap_T = T;
}

// The positions of the last forward's tokens: packed (act.pos), or NULL for 0..T-1 in every row.
static const int32_t *positions(const Model *m) { return m->act.packed ? m->act.pos : NULL; }

static AttnShape attn_shape(const Model *m) {
    const ModelConfig *c = &m->cfg;
    AttnShape s = {m->act.B, m->act.T, c->n_head, c->n_kv_head, c->head_dim, c->sliding_window, 1.0f / sqrtf((float)c->head_dim), positions(m)};
    return s;
}

static void gpt2_block_forward(Model *m, int l, const float *x, int N) {
    Activations *a = &m->act;
    Block *b = &m->blocks[l];
    int C = m->cfg.n_embd, I = m->cfg.n_inner;
    float *tmp = a->scratch[0];
    layernorm_forward(a->norm1[l], a->norm1_mean[l], a->norm1_rstd[l], x, b->norm1_w->w, b->norm1_b->w, N, C, m->cfg.norm_eps);
    linear_forward(m, b->qkv, a->norm1[l], a->q[l], N);
    attention_forward(a->attn_y[l], a->att[l], a->q[l], 3 * C, a->q[l] + C, 3 * C, a->q[l] + 2 * C, 3 * C, attn_shape(m));
    linear_forward(m, b->attn_out, a->attn_y[l], tmp, N);
    memcpy(a->res_mid[l], x, sizeof(float) * N * C);
    add_inplace(a->res_mid[l], tmp, (long)N * C);
    layernorm_forward(a->norm2[l], a->norm2_mean[l], a->norm2_rstd[l], a->res_mid[l], b->norm2_w->w, b->norm2_b->w, N, C, m->cfg.norm_eps);
    linear_forward(m, b->fc, a->norm2[l], a->fc[l], N);
    gelu_forward(a->fc_act[l], a->fc[l], (long)N * I);
    linear_forward(m, b->fc_out, a->fc_act[l], tmp, N);
    memcpy(a->res_out[l], a->res_mid[l], sizeof(float) * N * C);
    add_inplace(a->res_out[l], tmp, (long)N * C);
}

static void llama_block_forward(Model *m, int l, const float *x, int N) {
    Activations *a = &m->act;
    Block *b = &m->blocks[l];
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, I = c->n_inner, HD = c->head_dim, QW = c->n_head * HD, KVW = c->n_kv_head * HD;
    float *tmp = a->scratch[0];
    rmsnorm_forward(a->norm1[l], a->norm1_rstd[l], x, b->norm1_w->w, N, C, c->norm_eps);
    linear_forward(m, b->q, a->norm1[l], a->q[l], N);
    linear_forward(m, b->k, a->norm1[l], a->k[l], N);
    linear_forward(m, b->v, a->norm1[l], a->v[l], N);
    rope_forward(a->q[l], a->rope_cos, a->rope_sin, a->B, a->T, c->n_head, HD, positions(m));
    rope_forward(a->k[l], a->rope_cos, a->rope_sin, a->B, a->T, c->n_kv_head, HD, positions(m));
    attention_forward(a->attn_y[l], a->att[l], a->q[l], QW, a->k[l], KVW, a->v[l], KVW, attn_shape(m));
    linear_forward(m, b->o, a->attn_y[l], tmp, N);
    memcpy(a->res_mid[l], x, sizeof(float) * N * C);
    add_inplace(a->res_mid[l], tmp, (long)N * C);
    rmsnorm_forward(a->norm2[l], a->norm2_rstd[l], a->res_mid[l], b->norm2_w->w, N, C, c->norm_eps);
    linear_forward(m, b->gate, a->norm2[l], a->fc[l], N);
    linear_forward(m, b->up, a->norm2[l], a->up[l], N);
    swiglu_forward(a->fc_act[l], a->fc[l], a->up[l], (long)N * I);
    linear_forward(m, b->down, a->fc_act[l], tmp, N);
    memcpy(a->res_out[l], a->res_mid[l], sizeof(float) * N * C);
    add_inplace(a->res_out[l], tmp, (long)N * C);
}

double model_forward(Model *m, const int32_t *ids, const int32_t *labels, int B, int T) {
    const ModelConfig *c = &m->cfg;
    if (c->arch == ARCH_BERT) { peft_fail("%s is an encoder: it classifies sequences (model_classify), it has no language-model head", c->model_type); return NAN; }
    if (B <= 0 || T <= 0) { peft_fail("batch shape must be positive (B=%d, T=%d)", B, T); return NAN; }
    if (c->arch == ARCH_GPT2 && T > c->n_positions) { peft_fail("sequence length %d exceeds the model's n_positions %d", T, c->n_positions); return NAN; }
    int N = B * T, C = c->n_embd, V = c->vocab_size;
    for (int i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= V) { peft_fail("token id %d at position %d is outside the vocabulary (size %d)", ids[i], i, V); return NAN; }
    // Packed rows: a token's position counts from its example's start, which lies in its row.
    for (int i = 0; m->positions && i < N; i++)
        if (m->positions[i] < 0 || m->positions[i] > i % T) { peft_fail("position %d of token %d (row position %d) is outside its row", m->positions[i], i, i % T); return NAN; }
    ensure_activations(m, B, T);
    Activations *a = &m->act;
    memcpy(a->ids, ids, sizeof(int32_t) * N);
    a->packed = m->positions != NULL;
    if (a->packed) memcpy(a->pos, m->positions, sizeof(int32_t) * N);
    const int32_t *pos = positions(m);
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        float *x = a->x0 + (long)i * C;
        memcpy(x, m->wte->w + (long)ids[i] * C, sizeof(float) * C);
        if (m->wpe) add_inplace(x, m->wpe->w + (long)(pos ? pos[i] : i % T) * C, C);
    }
    adapter_embed_inputs(m, ids, N, a->x0);
    const float *x = a->x0;
    for (int l = 0; l < c->n_layer; l++) {
        if (c->arch == ARCH_GPT2) gpt2_block_forward(m, l, x, N);
        else llama_block_forward(m, l, x, N);
        x = a->res_out[l];
    }
    if (c->arch == ARCH_GPT2) layernorm_forward(a->final_norm, a->final_mean, a->final_rstd, x, m->norm_f_w->w, m->norm_f_b->w, N, C, c->norm_eps);
    else rmsnorm_forward(a->final_norm, a->final_rstd, x, m->norm_f_w->w, N, C, c->norm_eps);
    model_head_forward(m, a->final_norm, a->logits, N);
    adapter_embed_logits(m, a->final_norm, N, a->logits);
    if (!labels) return 0.0;
    memcpy(a->labels, labels, sizeof(int32_t) * N);
    a->lm_loss = cross_entropy_shifted(a->logits, labels, B, T, V, true, NULL);
    return a->lm_loss + adapters_regularizer(m, false);
}

// Without rotary embeddings (GPT-2) a key bias adds the same q.b to every score of a query,
// which softmax ignores: its gradient is exactly zero (HF's float64 reference has ~1e-18).
// fp32 summation leaves ~1e-9 of noise, which Adam's normalised step would turn into
// full-size updates, so it is set to zero. (With rope, q.R(t2)b varies by key: not zero.)
static void zero_key_bias_grad(float *grad, int n) { memset(grad, 0, sizeof(float) * n); }

static void gpt2_block_backward(Model *m, int l, const float *x, float *dres, int N) {
    Activations *a = &m->act;
    Block *b = &m->blocks[l];
    int C = m->cfg.n_embd, I = m->cfg.n_inner;
    float *d_act = a->scratch[0], *d_fc = a->scratch[1], *d_norm = a->scratch[2], *d_qkv = a->scratch[3], *d_y = a->scratch[4];
    // MLP: dres is d(res_out) = d(res_mid) through the skip connection, plus the MLP path.
    memset(d_act, 0, sizeof(float) * N * I);
    linear_backward(m, b->fc_out, a->fc_act[l], dres, d_act, N);
    memset(d_fc, 0, sizeof(float) * N * I);
    gelu_backward(d_fc, a->fc[l], d_act, (long)N * I);
    memset(d_norm, 0, sizeof(float) * N * C);
    linear_backward(m, b->fc, a->norm2[l], d_fc, d_norm, N);
    layernorm_backward(dres, b->norm2_w->grad, b->norm2_b->grad, d_norm, a->res_mid[l], b->norm2_w->w, a->norm2_mean[l], a->norm2_rstd[l], N, C);
    // Attention: dres is now d(res_mid).
    memset(d_y, 0, sizeof(float) * N * C);
    linear_backward(m, b->attn_out, a->attn_y[l], dres, d_y, N);
    memset(d_qkv, 0, sizeof(float) * N * 3 * C);
    attention_backward(d_qkv, d_qkv + C, d_qkv + 2 * C, d_y, a->att[l], a->q[l], 3 * C, a->q[l] + C, 3 * C, a->q[l] + 2 * C, 3 * C, attn_shape(m));
    memset(d_norm, 0, sizeof(float) * N * C);
    linear_backward(m, b->qkv, a->norm1[l], d_qkv, d_norm, N);
    if (b->qkv->bias->grad) zero_key_bias_grad(b->qkv->bias->grad + C, C);
    layernorm_backward(dres, b->norm1_w->grad, b->norm1_b->grad, d_norm, x, b->norm1_w->w, a->norm1_mean[l], a->norm1_rstd[l], N, C);
}

static void llama_block_backward(Model *m, int l, const float *x, float *dres, int N) {
    Activations *a = &m->act;
    Block *b = &m->blocks[l];
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, I = c->n_inner, HD = c->head_dim, QW = c->n_head * HD, KVW = c->n_kv_head * HD;
    float *d_act = a->scratch[0], *d_gate = a->scratch[1], *d_up = a->scratch[2], *d_norm = a->scratch[3], *d_y = a->scratch[4];
    memset(d_act, 0, sizeof(float) * N * I);
    linear_backward(m, b->down, a->fc_act[l], dres, d_act, N);
    memset(d_gate, 0, sizeof(float) * N * I);
    memset(d_up, 0, sizeof(float) * N * I);
    swiglu_backward(d_gate, d_up, a->fc[l], a->up[l], d_act, (long)N * I);
    memset(d_norm, 0, sizeof(float) * N * C);
    linear_backward(m, b->gate, a->norm2[l], d_gate, d_norm, N);
    linear_backward(m, b->up, a->norm2[l], d_up, d_norm, N);
    rmsnorm_backward(dres, b->norm2_w->grad, d_norm, a->res_mid[l], b->norm2_w->w, a->norm2_rstd[l], N, C);
    // Attention (scratch 0..2 are free again: reuse them for dq, dk, dv).
    float *dq = a->scratch[0], *dk = a->scratch[1], *dv = a->scratch[2];
    memset(d_y, 0, sizeof(float) * N * QW);
    linear_backward(m, b->o, a->attn_y[l], dres, d_y, N);
    memset(dq, 0, sizeof(float) * N * QW);
    memset(dk, 0, sizeof(float) * N * KVW);
    memset(dv, 0, sizeof(float) * N * KVW);
    attention_backward(dq, dk, dv, d_y, a->att[l], a->q[l], QW, a->k[l], KVW, a->v[l], KVW, attn_shape(m));
    rope_backward(dq, a->rope_cos, a->rope_sin, a->B, a->T, c->n_head, HD, positions(m));
    rope_backward(dk, a->rope_cos, a->rope_sin, a->B, a->T, c->n_kv_head, HD, positions(m));
    memset(d_norm, 0, sizeof(float) * N * C);
    linear_backward(m, b->q, a->norm1[l], dq, d_norm, N);
    linear_backward(m, b->k, a->norm1[l], dk, d_norm, N);
    linear_backward(m, b->v, a->norm1[l], dv, d_norm, N);
    rmsnorm_backward(dres, b->norm1_w->grad, d_norm, x, b->norm1_w->w, a->norm1_rstd[l], N, C);
}

void model_backward(Model *m) {
    Activations *a = &m->act;
    const ModelConfig *c = &m->cfg;
    if (c->arch == ARCH_BERT) { encoder_backward(m); return; }
    int N = a->B * a->T, C = c->n_embd, V = c->vocab_size, L = c->n_layer;
    float *dres = xcalloc((long)N * C, sizeof(float)), *d_norm = xcalloc((long)N * C, sizeof(float));
    // Classifier: logits = final_norm lm_head^T; a->logits holds d loss / d logits.
    matmul(d_norm, a->logits, m->lm_head->w, N, C, V, false, false, 1.0f, 0.0f);
    if (m->lm_head->grad) matmul(m->lm_head->grad, a->logits, a->final_norm, V, C, N, true, false, 1.0f, 1.0f);
    adapter_embed_backward_head(m, a->logits, a->final_norm, N, d_norm);
    const float *x_last = L ? a->res_out[L - 1] : a->x0;
    if (c->arch == ARCH_GPT2) layernorm_backward(dres, m->norm_f_w->grad, m->norm_f_b->grad, d_norm, x_last, m->norm_f_w->w, a->final_mean, a->final_rstd, N, C);
    else rmsnorm_backward(dres, m->norm_f_w->grad, d_norm, x_last, m->norm_f_w->w, a->final_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        const float *x = l ? a->res_out[l - 1] : a->x0;
        if (c->arch == ARCH_GPT2) gpt2_block_backward(m, l, x, dres, N);
        else llama_block_backward(m, l, x, dres, N);
    }
    // Embeddings: rows of the same token add into one gradient row, so split the work by column
    // (blocks of columns, so that each row's part is read whole; every element's sum keeps its order).
    enum { COLS = 32 };
    if (m->wte->grad) {
#pragma omp parallel for
        for (int c0 = 0; c0 < C; c0 += COLS)
            for (int i = 0; i < N; i++)
                for (int col = c0; col < c0 + COLS && col < C; col++) m->wte->grad[(long)a->ids[i] * C + col] += dres[(long)i * C + col];
    }
    adapter_embed_backward_inputs(m, a->ids, dres, N);
    if (m->wpe && m->wpe->grad) {
        const int32_t *pos = positions(m);
#pragma omp parallel for
        for (int c0 = 0; c0 < C; c0 += COLS)
            for (int i = 0; i < N; i++)
                for (int col = c0; col < c0 + COLS && col < C; col++) m->wpe->grad[(long)(pos ? pos[i] : i % a->T) * C + col] += dres[(long)i * C + col];
    }
    adapters_regularizer(m, true);
    free(d_norm);
    free(dres);
}
