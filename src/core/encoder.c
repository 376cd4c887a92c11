// encoder.c: BERT and RoBERTa (ARCH_BERT) on the CPU, forward and backward, with transformers'
// sequence classification heads and losses. Shapes as transformer.c's: B sequences of T tokens,
// N = B*T rows, C = hidden size, NH heads of HD; the head works on B rows.
// embeddings: LN(word[id] + type[tt] + position[p])   (RoBERTa: p counts from pad_token_id + 1 over
//             the non-padding ids, padding sits at pad_token_id; BERT: p = t)
// block (post-LayerNorm): r = LN1(x + o(attn(q x, k x, v x)));  LN2(r + out(gelu(fc r)))
//             attention is bidirectional, padding keys (mask 0) get probability 0
// head: out(tanh(dense(h[first token])))  -> logits [B, num_labels]
#include "adapter.h"
#include "kernels.h"
#include "model.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

// transformers' GELUActivation ("gelu"): x * Phi(x), in double per element.
static void gelu_erf_forward(float *out, const float *inp, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) out[i] = (float)(0.5 * inp[i] * (1.0 + erf(inp[i] * M_SQRT1_2)));
}

static void gelu_erf_backward(float *dinp, const float *inp, const float *dout, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        double x = inp[i];
        double g = 0.5 * (1.0 + erf(x * M_SQRT1_2)) + x * exp(-0.5 * x * x) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
        dinp[i] += (float)(g * dout[i]);
    }
}

static void act_forward(const Model *m, float *out, const float *inp, long n) {
    if (m->cfg.gelu_exact) gelu_erf_forward(out, inp, n);
    else gelu_forward(out, inp, n);
}

static void act_backward(const Model *m, float *dinp, const float *inp, const float *dout, long n) {
    if (m->cfg.gelu_exact) gelu_erf_backward(dinp, inp, dout, n);
    else gelu_backward(dinp, inp, dout, n);
}

// Bidirectional attention over each sequence's unmasked keys: q, k, v, out [N, C], att [B,NH,T,T].
static void masked_attention_forward(float *out, float *att, const float *q, const float *k, const float *v, const int32_t *mask,
                                     int B, int T, int NH, int HD) {
    int C = NH * HD;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *Q = q + (long)b * T * C + h * HD, *K = k + (long)b * T * C + h * HD, *V = v + (long)b * T * C + h * HD;
            const int32_t *keep = mask + (long)b * T;
            float *P = att + ((long)b * NH + h) * T * T, *O = out + (long)b * T * C + h * HD;
            matmul_ld(P, T, Q, C, K, C, T, T, HD, false, true, scale, 0.0f);
            for (int t = 0; t < T; t++) {
                float *p = P + (long)t * T, mx = -INFINITY;
                for (int j = 0; j < T; j++)
                    if (keep[j] && p[j] > mx) mx = p[j];
                double sum = 0;
                for (int j = 0; j < T; j++) sum += (p[j] = keep[j] ? expf(p[j] - mx) : 0.0f);
                for (int j = 0; j < T; j++) p[j] = (float)(p[j] / sum);
            }
            matmul_ld(O, C, P, T, V, C, T, HD, T, false, false, 1.0f, 0.0f);
        }
}

// dP = dO V^T, dV += P^T dO, dS = P (dP - rowsum(P dP)) scale, dQ += dS K, dK += dS^T Q (P is 0 on
// padding keys, so is dS).
static void masked_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *att, const float *q,
                                      const float *k, const float *v, int B, int T, int NH, int HD) {
    int C = NH * HD;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel
    {
        float *dS = xmalloc(sizeof(float) * T * T);
#pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++) {
                long off = (long)b * T * C + h * HD;
                const float *P = att + ((long)b * NH + h) * T * T;
                matmul_ld(dS, T, dout + off, C, v + off, C, T, T, HD, false, true, 1.0f, 0.0f);
                matmul_ld(dv + off, C, P, T, dout + off, C, T, HD, T, true, false, 1.0f, 1.0f);
                for (int t = 0; t < T; t++) {
                    const float *p = P + (long)t * T;
                    float *d = dS + (long)t * T, sum = 0;
                    for (int j = 0; j < T; j++) sum += p[j] * d[j];
                    for (int j = 0; j < T; j++) d[j] = p[j] * (d[j] - sum) * scale;
                }
                matmul_ld(dq + off, C, dS, T, k + off, C, T, HD, T, false, false, 1.0f, 1.0f);
                matmul_ld(dk + off, C, dS, T, q + off, C, T, HD, T, true, false, 1.0f, 1.0f);
            }
        free(dS);
    }
}

int model_require_decoder(const ModelConfig *c, const char *what) {
    if (c->arch != ARCH_BERT) return 0;
    return peft_fail("%s is an encoder: %s needs a decoder (an encoder classifies sequences: peft train --task classify, "
                     "peft eval --task classify, peft predict)", c->model_type, what);
}

ProblemType model_problem_type(const ModelConfig *c, bool int_targets) {
    if (c->problem_type != PROBLEM_AUTO) return c->problem_type;
    if (c->num_labels == 1) return PROBLEM_REGRESSION;
    return int_targets ? PROBLEM_SINGLE_LABEL : PROBLEM_MULTI_LABEL;
}

// transformers' losses on logits [B, NL], in double; dlogits (when given) gets d loss / d logits.
// Single label: cross-entropy, mean over the labels >= 0 (-100 is ignored); multi-label: BCE with
// logits, mean over all B*NL; regression: MSE, mean over all B*NL.
static double head_loss(float *logits, float *dlogits, const float *y, ProblemType pt, int B, int NL) {
    double loss = 0;
    if (pt == PROBLEM_SINGLE_LABEL) {
        int n = 0;
        for (int b = 0; b < B; b++) n += y[b] >= 0;
        for (int b = 0; b < B; b++) {
            const float *z = logits + (long)b * NL;
            double mx = z[0], s = 0;
            for (int j = 1; j < NL; j++) mx = fmax(mx, z[j]);
            for (int j = 0; j < NL; j++) s += exp(z[j] - mx);
            double lse = mx + log(s);
            int label = (int)y[b];
            if (y[b] >= 0) loss += lse - z[label];
            for (int j = 0; dlogits && j < NL; j++)
                dlogits[(long)b * NL + j] = y[b] < 0 ? 0.0f : (float)((exp(z[j] - lse) - (j == label)) / n);
        }
        return n ? loss / n : NAN;  // torch: the mean over no labels is NaN
    }
    long n = (long)B * NL;
    for (long i = 0; i < n; i++) {
        double z = logits[i], t = y[i], d;
        if (pt == PROBLEM_REGRESSION) { loss += (z - t) * (z - t); d = 2 * (z - t); }
        else {  // log(1 + e^z) - t z, stably; its derivative sigmoid(z) - t
            loss += fmax(z, 0) - t * z + log1p(exp(-fabs(z)));
            d = 1 / (1 + exp(-z)) - t;
        }
        if (dlogits) dlogits[i] = (float)(d / n);
    }
    return loss / n;
}

// The labels are what the problem type needs: a class index (or < 0) for single label; 0..1 for multi-label.
static int check_targets(const ClassifyBatch *bt, ProblemType pt, int NL) {
    long n = pt == PROBLEM_SINGLE_LABEL ? bt->B : (long)bt->B * NL;
    for (long i = 0; i < n; i++) {
        float y = bt->targets[i];
        if (!isfinite(y)) return peft_fail("label %ld is not a finite number", i);
        if (pt == PROBLEM_SINGLE_LABEL && y >= 0 && (y != floorf(y) || y >= NL))
            return peft_fail("label %g of sequence %ld is not a class index below num_labels %d", y, i, NL);
        if (pt == PROBLEM_MULTI_LABEL && !(y >= 0 && y <= 1)) return peft_fail("multi-label target %g (sequence %ld) is outside [0, 1]", y, i / NL);
    }
    return 0;
}

// Each token's position: RoBERTa's create_position_ids_from_input_ids (padding ids stay at pad_token_id,
// the others count on from it), BERT's 0..T-1.
static int positions_of(const Model *m, const int32_t *ids, int32_t *pos, int B, int T) {
    const ModelConfig *c = &m->cfg;
    bool roberta = !strcmp(c->model_type, "roberta");
    for (int b = 0; b < B; b++) {
        int count = 0;
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            if (roberta) pos[i] = ids[i] == c->pad_token_id ? c->pad_token_id : c->pad_token_id + ++count;
            else pos[i] = t;
            if (pos[i] >= c->n_positions)
                return peft_fail("sequence %d is longer than the model's %d positions (max_position_embeddings %d%s)", b,
                                 roberta ? c->n_positions - c->pad_token_id - 1 : c->n_positions, c->n_positions,
                                 roberta ? ", less RoBERTa's padding offset" : "");
        }
    }
    return 0;
}

static int check_batch(const Model *m, const ClassifyBatch *bt) {
    const ModelConfig *c = &m->cfg;
    if (bt->B <= 0 || bt->T <= 0) return peft_fail("batch shape must be positive (B=%d, T=%d)", bt->B, bt->T);
    for (long i = 0; i < (long)bt->B * bt->T; i++) {
        if (bt->ids[i] < 0 || bt->ids[i] >= c->vocab_size)
            return peft_fail("token id %d at position %ld is outside the vocabulary (size %d)", bt->ids[i], i, c->vocab_size);
        if (bt->types && (bt->types[i] < 0 || bt->types[i] >= c->type_vocab_size))
            return peft_fail("token type %d at position %ld is outside type_vocab_size %d", bt->types[i], i, c->type_vocab_size);
        if (bt->mask && bt->mask[i] != 0 && bt->mask[i] != 1) return peft_fail("attention mask value %d at position %ld is not 0 or 1", bt->mask[i], i);
    }
    for (int b = 0; bt->mask && b < bt->B; b++) {
        int any = 0;
        for (int t = 0; t < bt->T; t++) any |= bt->mask[(long)b * bt->T + t];
        if (!any) return peft_fail("sequence %d has no token in its attention mask", b);
    }
    return 0;
}

int encoder_check_batch(const Model *m, const ClassifyBatch *bt, int32_t *pos) {
    if (check_batch(m, bt)) return -1;
    if (bt->targets && check_targets(bt, model_problem_type(&m->cfg, bt->int_targets), m->cfg.num_labels)) return -1;
    return positions_of(m, bt->ids, pos, bt->B, bt->T);
}

double encoder_head_loss(const float *logits, float *dlogits, const float *targets, ProblemType pt, int B, int NL) {
    return head_loss((float *)logits, dlogits, targets, pt, B, NL);
}

static void block_forward(Model *m, int l, const float *x, int N) {
    Activations *a = &m->act;
    Block *b = &m->blocks[l];
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, I = c->n_inner;
    float *tmp = a->scratch[0];
    linear_forward(m, b->q, x, a->q[l], N);
    linear_forward(m, b->k, x, a->k[l], N);
    linear_forward(m, b->v, x, a->v[l], N);
    masked_attention_forward(a->attn_y[l], a->att[l], a->q[l], a->k[l], a->v[l], a->mask, a->B, a->T, c->n_head, c->head_dim);
    linear_forward(m, b->o, a->attn_y[l], tmp, N);
    memcpy(a->res_mid[l], tmp, sizeof(float) * N * C);
    add_inplace(a->res_mid[l], x, (long)N * C);
    layernorm_forward(a->norm1[l], a->norm1_mean[l], a->norm1_rstd[l], a->res_mid[l], b->norm1_w->w, b->norm1_b->w, N, C, c->norm_eps);
    linear_forward(m, b->fc, a->norm1[l], a->fc[l], N);
    act_forward(m, a->fc_act[l], a->fc[l], (long)N * I);
    linear_forward(m, b->fc_out, a->fc_act[l], tmp, N);
    memcpy(a->res_out[l], tmp, sizeof(float) * N * C);
    add_inplace(a->res_out[l], a->norm1[l], (long)N * C);
    layernorm_forward(a->norm2[l], a->norm2_mean[l], a->norm2_rstd[l], a->res_out[l], b->norm2_w->w, b->norm2_b->w, N, C, c->norm_eps);
}

// The last block's output (the embeddings' LayerNorm without blocks).
static const float *last_hidden(const Model *m) { return m->cfg.n_layer ? m->act.norm2[m->cfg.n_layer - 1] : m->act.final_norm; }

double model_classify(Model *m, const ClassifyBatch *bt) {
    const ModelConfig *c = &m->cfg;
    if (c->arch != ARCH_BERT) { peft_fail("%s is not an encoder: sequence classification needs BERT or RoBERTa", c->model_type); return NAN; }
    if (check_batch(m, bt)) return NAN;
    ProblemType pt = model_problem_type(c, bt->int_targets);
    if (bt->targets && check_targets(bt, pt, c->num_labels)) return NAN;
    int B = bt->B, T = bt->T, N = B * T, C = c->n_embd, NL = c->num_labels;
    ensure_activations(m, B, T);
    Activations *a = &m->act;
    if (positions_of(m, bt->ids, a->enc_pos, B, T)) return NAN;
    memcpy(a->ids, bt->ids, sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) {
        a->mask[i] = bt->mask ? bt->mask[i] : 1;
        a->types[i] = bt->types ? bt->types[i] : 0;
    }
    a->packed = false;
#pragma omp parallel for
    for (int i = 0; i < N; i++) {  // (word + type) + position, as transformers adds them
        float *x = a->x0 + (long)i * C;
        memcpy(x, m->wte->w + (long)a->ids[i] * C, sizeof(float) * C);
        add_inplace(x, m->wtt->w + (long)a->types[i] * C, C);
        add_inplace(x, m->wpe->w + (long)a->enc_pos[i] * C, C);
    }
    layernorm_forward(a->final_norm, a->final_mean, a->final_rstd, a->x0, m->emb_norm_w->w, m->emb_norm_b->w, N, C, c->norm_eps);
    for (int l = 0; l < c->n_layer; l++) block_forward(m, l, l ? a->norm2[l - 1] : a->final_norm, N);
    const float *h = last_hidden(m);
    for (int b = 0; b < B; b++) memcpy(a->head_in + (long)b * C, h + (long)b * T * C, sizeof(float) * C);
    linear_forward(m, m->head_dense, a->head_in, a->head_pre, B);
    for (long i = 0; i < (long)B * C; i++) a->head_act[i] = tanhf(a->head_pre[i]);
    linear_forward(m, m->head_out, a->head_act, a->logits, B);
    if (!bt->targets) return 0.0;
    a->problem = pt;
    memcpy(a->targets, bt->targets, sizeof(float) * (pt == PROBLEM_SINGLE_LABEL ? B : (long)B * NL));
    a->lm_loss = head_loss(a->logits, NULL, a->targets, pt, B, NL);
    return a->lm_loss + adapters_regularizer(m, false);
}

// dres: d loss / d (the block's output) in, d loss / d (its input x) out.
static void block_backward(Model *m, int l, const float *x, float *dres, int N) {
    Activations *a = &m->act;
    Block *b = &m->blocks[l];
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, I = c->n_inner;
    float **s = a->scratch;
    long NC = (long)N * C, NI = (long)N * I;
    // out = LN2(r2), r2 = fc_out(gelu(fc(n1))) + n1
    memset(s[0], 0, sizeof(float) * NC);
    layernorm_backward(s[0], b->norm2_w->grad, b->norm2_b->grad, dres, a->res_out[l], b->norm2_w->w, a->norm2_mean[l], a->norm2_rstd[l], N, C);
    memcpy(dres, s[0], sizeof(float) * NC);  // the skip: d n1 so far
    memset(s[1], 0, sizeof(float) * NI);
    linear_backward(m, b->fc_out, a->fc_act[l], s[0], s[1], N);
    memset(s[2], 0, sizeof(float) * NI);
    act_backward(m, s[2], a->fc[l], s[1], NI);
    linear_backward(m, b->fc, a->norm1[l], s[2], dres, N);
    // n1 = LN1(r1), r1 = o(attn(x)) + x
    memset(s[0], 0, sizeof(float) * NC);
    layernorm_backward(s[0], b->norm1_w->grad, b->norm1_b->grad, dres, a->res_mid[l], b->norm1_w->w, a->norm1_mean[l], a->norm1_rstd[l], N, C);
    memcpy(dres, s[0], sizeof(float) * NC);  // the skip: d x so far
    memset(s[1], 0, sizeof(float) * NC);
    linear_backward(m, b->o, a->attn_y[l], s[0], s[1], N);
    for (int i = 2; i < 5; i++) memset(s[i], 0, sizeof(float) * NC);
    masked_attention_backward(s[2], s[3], s[4], s[1], a->att[l], a->q[l], a->k[l], a->v[l], a->B, a->T, c->n_head, c->head_dim);
    linear_backward(m, b->q, x, s[2], dres, N);
    linear_backward(m, b->k, x, s[3], dres, N);
    linear_backward(m, b->v, x, s[4], dres, N);
}

// Whether anything below the head trains: adapters or a base weight. Training the head alone (peft
// train --head-only, linear probing) ends the backward at the head.
static bool body_trains(const Model *m) {
    if (m->adapters) return true;
    const Param *head[] = {m->head_dense->weight, m->head_dense->bias, m->head_out->weight, m->head_out->bias};
    for (int i = 0; i < m->n_params; i++) {
        bool in_head = false;
        for (size_t k = 0; k < sizeof head / sizeof *head; k++) in_head |= &m->params[i] == head[k];
        if (m->params[i].grad && !in_head) return true;
    }
    return false;
}

void encoder_backward(Model *m) {
    Activations *a = &m->act;
    const ModelConfig *c = &m->cfg;
    int B = a->B, T = a->T, N = B * T, C = c->n_embd, NL = c->num_labels;
    float *dlogits = xcalloc((long)B * NL, sizeof(float)), *d_act = xcalloc((long)B * C, sizeof(float));
    float *d_pre = xcalloc((long)B * C, sizeof(float)), *d_in = xcalloc((long)B * C, sizeof(float));
    float *dres = xcalloc((long)N * C, sizeof(float));
    head_loss(a->logits, dlogits, a->targets, (ProblemType)a->problem, B, NL);
    linear_backward(m, m->head_out, a->head_act, dlogits, d_act, B);
    for (long i = 0; i < (long)B * C; i++) d_pre[i] = d_act[i] * (1.0f - a->head_act[i] * a->head_act[i]);
    linear_backward(m, m->head_dense, a->head_in, d_pre, d_in, B);
    if (body_trains(m)) {
        for (int b = 0; b < B; b++) memcpy(dres + (long)b * T * C, d_in + (long)b * C, sizeof(float) * C);
        for (int l = c->n_layer - 1; l >= 0; l--) block_backward(m, l, l ? a->norm2[l - 1] : a->final_norm, dres, N);
        float *dx0 = a->scratch[0];
        memset(dx0, 0, sizeof(float) * N * C);
        layernorm_backward(dx0, m->emb_norm_w->grad, m->emb_norm_b->grad, dres, a->x0, m->emb_norm_w->w, a->final_mean, a->final_rstd, N, C);
        // Rows of the same token (position, type) add into one gradient row: split the work by column.
        struct { Param *p; const int32_t *row; } tables[] = {{m->wte, a->ids}, {m->wpe, a->enc_pos}, {m->wtt, a->types}};
        for (size_t k = 0; k < sizeof tables / sizeof *tables; k++) {
            float *g = tables[k].p->grad;
            const int32_t *row = tables[k].row;
            if (!g) continue;
#pragma omp parallel for
            for (int col = 0; col < C; col++)
                for (int i = 0; i < N; i++) g[(long)row[i] * C + col] += dx0[(long)i * C + col];
        }
    }
    adapters_regularizer(m, true);
    free(dlogits);
    free(d_act);
    free(d_pre);
    free(d_in);
    free(dres);
}
