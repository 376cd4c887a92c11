// bf16_weights.c: bf16 copies of the weights that are exactly bf16, for CPU inference (model_keep_bf16 in
// model.h): the conversions both ways and the output head's product over them.
#include "kernels.h"
#include "model.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

static inline uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static bool exactly_bf16(const float *w, long n) {
    for (long i = 0; i < n; i++)
        if (f32_bits(w[i]) & 0xFFFF) return false;
    return true;
}

// A frozen weight [rows, cols] whose values are all bf16 gets its bf16 copy (transposed when t), its
// fp32 freed when drop. True when p has one.
static bool keep_bf16(Param *p, bool t, bool drop) {
    if (p->w16) return true;
    if (!p->w || p->trainable || !exactly_bf16(p->w, p->numel)) return false;
    long rows = p->ndim == 2 ? p->shape[0] : 1, cols = p->numel / rows;
    p->w16 = xmalloc(sizeof(uint16_t) * p->numel);
    p->w16_t = t;
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < cols; c++) p->w16[t ? c * rows + r : r * cols + c] = (uint16_t)(f32_bits(p->w[r * cols + c]) >> 16);
    if (drop) {
        free(p->w);
        p->w = NULL;
    }
    return true;
}

int model_keep_bf16(Model *m, bool drop_fp32) {
    const char *env = getenv("PEFT_BF16_WEIGHTS");
    if ((env && !strcmp(env, "0")) || m->gpu || m->training) return 0;
    int n = 0;
    for (int i = 0; i < m->n_linears; i++) {
        Linear *lin = &m->linears[i];
        if (!lin->q) n += keep_bf16(lin->weight, lin->fan_in_fan_out, drop_fp32);
    }
    if (m->lm_head) n += keep_bf16(m->lm_head, false, drop_fp32 && m->lm_head != m->wte);
    return n;
}

void param_release_bf16(Param *p) {
    if (!p->w16) return;
    if (!p->w) {
        long rows = p->ndim == 2 ? p->shape[0] : 1, cols = p->numel / rows;
        p->w = xmalloc(sizeof(float) * p->numel);
        for (long r = 0; r < rows; r++)
            for (long c = 0; c < cols; c++) p->w[r * cols + c] = bf16_to_f32(p->w16[p->w16_t ? c * rows + r : r * cols + c]);
    }
    free(p->w16);
    p->w16 = NULL;
}

void param_rows(const Param *p, long row0, long n, float *out) {
    long width = p->ndim == 2 ? p->shape[1] : p->numel, count = n * width, first = row0 * width;
    if (p->w) memcpy(out, p->w + first, sizeof(float) * count);
    else
        for (long i = 0; i < count; i++) out[i] = bf16_to_f32(p->w16[first + i]);
}

void model_head_forward(Model *m, const float *x, float *logits, int M) {
    int V = m->cfg.vocab_size, C = m->cfg.n_embd;
    const Param *h = m->lm_head;
    if (h->w16) { matmul_bf16(logits, x, h->w16, M, V, C); return; }
    // Two rows: one matrix-vector product each (matmul's one-row path) also beats sgemm, which packs
    // the whole [V, C] head for every call.
    if (M == 2)
        for (int r = 0; r < M; r++) matmul(logits + (long)r * V, x + (long)r * C, h->w, 1, V, C, false, true, 1.0f, 0.0f);
    else matmul(logits, x, h->w, M, V, C, false, true, 1.0f, 0.0f);
}
