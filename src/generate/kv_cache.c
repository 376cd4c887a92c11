// kv_cache.c: the inference forward over a KV cache, for GPT-2 and the Llama family.
// The same blocks as transformer.c (and the same kernels, in the same order, so the logits
// agree with model_forward's to float rounding), but each token's keys and values are kept
// per slot, and a call only computes its new tokens. Rows of a call are independent slots
// with their own positions; their tokens are stacked into one [N, C] matrix so each linear
// layer is one GEMM (through linear_forward: live adapters apply).
// When the model has a GPU copy (Model.gpu), the keys and values live on the GPU and the forward
// runs there (cuda/gpu_infer.cu); this file then only keeps the slots' lengths and checks calls.
#include "adapter.h"
#include "cuda/gpu.h"
#include "generate.h"
#include "kernels.h"
#include "util.h"
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

struct KVCache {
    int n_layer, n_slots, max_len, kvw, head_dim;
    float *k, *v;            // [layer][slot][pos][kvw] (CPU)
    GpuKV *gpu;              // or on the GPU
    int *len;                // [slot]
    float *rope_cos, *rope_sin;  // [max_len, HD/2] (Llama family)
    // Work buffers, sized for cap tokens per call (grown on demand, never per call).
    int cap, cap_threads, cap_rows;
    float *x, *xn, *tmp, *q, *kn, *vn, *att_y, *fc, *up, *act, *mean, *rstd, *cos, *sin, *scores;
    int *tok_slot, *tok_pos, *stamp;
    int stamp_gen;
    float *greedy_logits;    // kv_forward_greedy's logits [greedy_rows, V]
    int greedy_rows;
};

KVCache *kv_cache_new(const Model *m, int n_slots, int max_len) {
    const ModelConfig *c = &m->cfg;
    if (n_slots <= 0 || max_len <= 0) { peft_fail("KV cache needs positive slots and length (got %d, %d)", n_slots, max_len); return NULL; }
    if (model_require_decoder(c, "generation")) return NULL;
    if (c->arch == ARCH_GPT2 && max_len > c->n_positions) {
        peft_fail("a sequence of %d tokens exceeds the model's n_positions %d", max_len, c->n_positions);
        return NULL;
    }
    if (c->n_kv_head <= 0 || c->n_head % c->n_kv_head || c->head_dim <= 0 || c->head_dim % 2) {
        peft_fail("KV cache: bad head shape (%d heads, %d kv heads, head_dim %d)", c->n_head, c->n_kv_head, c->head_dim);
        return NULL;
    }
    int kvw = c->n_kv_head * c->head_dim;
    double floats = 2.0 * c->n_layer * n_slots * (double)max_len * kvw;
    if (floats * sizeof(float) > 256.0 * (1 << 30)) {
        peft_fail("KV cache of %d slots x %d tokens would need %.0f GiB", n_slots, max_len, floats * sizeof(float) / (1 << 30));
        return NULL;
    }
    KVCache *kv = xcalloc(1, sizeof *kv);
    kv->n_layer = c->n_layer;
    kv->n_slots = n_slots;
    kv->max_len = max_len;
    kv->kvw = kvw;
    kv->head_dim = c->head_dim;
    kv->len = xcalloc(n_slots, sizeof(int));
    kv->stamp = xcalloc(n_slots, sizeof(int));
    if (m->gpu) {
        if (!(kv->gpu = gpu_kv_new(m->gpu, n_slots, max_len))) {
            kv_cache_free(kv);
            return NULL;
        }
        return kv;
    }
    size_t n = (size_t)c->n_layer * n_slots * max_len * kvw;
    kv->k = xmalloc(n * sizeof(float));  // only [0, len) of a slot is ever read
    kv->v = xmalloc(n * sizeof(float));
    if (c->arch != ARCH_GPT2) {
        kv->rope_cos = xmalloc(sizeof(float) * (size_t)max_len * (c->head_dim / 2));
        kv->rope_sin = xmalloc(sizeof(float) * (size_t)max_len * (c->head_dim / 2));
        rope_tables(kv->rope_cos, kv->rope_sin, max_len, c->head_dim, m->inv_freq);
    }
    return kv;
}

static void free_work(KVCache *kv) {
    float *bufs[] = {kv->x, kv->xn, kv->tmp, kv->q, kv->kn, kv->vn, kv->att_y, kv->fc, kv->up, kv->act, kv->mean, kv->rstd, kv->cos, kv->sin};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
}

void kv_cache_free(KVCache *kv) {
    if (!kv) return;
    free_work(kv);
    free(kv->tok_slot);
    free(kv->tok_pos);
    free(kv->greedy_logits);
    gpu_kv_free(kv->gpu);
    free(kv->scores);
    free(kv->k);
    free(kv->v);
    free(kv->len);
    free(kv->stamp);
    free(kv->rope_cos);
    free(kv->rope_sin);
    free(kv);
}

int kv_cache_slots(const KVCache *kv) { return kv->n_slots; }
int kv_cache_max_len(const KVCache *kv) { return kv->max_len; }
int kv_cache_len(const KVCache *kv, int slot) { return slot >= 0 && slot < kv->n_slots ? kv->len[slot] : 0; }
void kv_cache_reset(KVCache *kv, int slot) { if (slot >= 0 && slot < kv->n_slots) kv->len[slot] = 0; }

void kv_cache_truncate(KVCache *kv, int slot, int len) {
    if (slot >= 0 && slot < kv->n_slots && len >= 0 && len < kv->len[slot]) kv->len[slot] = len;
}

static inline float *slot_k(const KVCache *kv, int l, int slot) { return kv->k + ((size_t)l * kv->n_slots + slot) * kv->max_len * kv->kvw; }
static inline float *slot_v(const KVCache *kv, int l, int slot) { return kv->v + ((size_t)l * kv->n_slots + slot) * kv->max_len * kv->kvw; }

void kv_cache_copy(KVCache *kv, int dst, int src) {
    if (src >= 0 && src < kv->n_slots) kv_cache_copy_prefix(kv, dst, src, kv->len[src]);
}

void kv_cache_copy_prefix(KVCache *kv, int dst, int src, int len) {
    if (dst == src || dst < 0 || src < 0 || dst >= kv->n_slots || src >= kv->n_slots || len < 0 || len > kv->len[src]) return;
    if (kv->gpu) {
        gpu_kv_copy(kv->gpu, dst, src, len);  // queued, done before the next kv_forward (where a device failure shows)
        kv->len[dst] = len;
        return;
    }
    size_t n = (size_t)len * kv->kvw * sizeof(float);
    for (int l = 0; l < kv->n_layer; l++) {
        memcpy(slot_k(kv, l, dst), slot_k(kv, l, src), n);
        memcpy(slot_v(kv, l, dst), slot_v(kv, l, src), n);
    }
    kv->len[dst] = len;
}

// Each new token's slot and position, for N tokens.
static void ensure_rows(KVCache *kv, int N) {
    if (N <= kv->cap_rows) return;
    free(kv->tok_slot);
    free(kv->tok_pos);
    kv->tok_slot = xmalloc(sizeof(int) * N);
    kv->tok_pos = xmalloc(sizeof(int) * N);
    kv->cap_rows = N;
}

static void ensure_work(KVCache *kv, const ModelConfig *c, int N) {
    int threads = omp_get_max_threads();
    if (threads > kv->cap_threads) {
        free(kv->scores);
        kv->scores = xmalloc(sizeof(float) * (size_t)threads * kv->max_len);
        kv->cap_threads = threads;
    }
    if (N <= kv->cap) return;
    free_work(kv);
    int C = c->n_embd, I = c->n_inner, HD = c->head_dim, QW = c->n_head * HD;
    bool gpt2 = c->arch == ARCH_GPT2;
#define ROWS(w) xmalloc(sizeof(float) * (size_t)N * (size_t)(w))
    kv->x = ROWS(C);
    kv->xn = ROWS(C);
    kv->tmp = ROWS(C);
    kv->q = ROWS(gpt2 ? 3 * C : QW);
    kv->kn = gpt2 ? NULL : ROWS(kv->kvw);
    kv->vn = gpt2 ? NULL : ROWS(kv->kvw);
    kv->att_y = ROWS(QW);
    kv->fc = ROWS(I);
    kv->up = gpt2 ? NULL : ROWS(I);
    kv->act = ROWS(I);
    kv->mean = ROWS(1);
    kv->rstd = ROWS(1);
    kv->cos = gpt2 ? NULL : ROWS(HD / 2);
    kv->sin = gpt2 ? NULL : ROWS(HD / 2);
#undef ROWS
    kv->cap = N;
}

// Appends the new tokens' keys and values (rows of k/v with strides ks/vs) to their slots.
static void store_kv(KVCache *kv, int l, int N, const float *k, int ks, const float *v, int vs) {
    size_t bytes = sizeof(float) * kv->kvw;
#pragma omp parallel for if (N > 16)
    for (int i = 0; i < N; i++) {
        size_t off = (size_t)kv->tok_pos[i] * kv->kvw;
        memcpy(slot_k(kv, l, kv->tok_slot[i]) + off, k + (long)i * ks, bytes);
        memcpy(slot_v(kv, l, kv->tok_slot[i]) + off, v + (long)i * vs, bytes);
    }
}

// Causal attention of each new token over its slot's cached keys 0..pos (the window's last
// `window` of them when set): attention_forward's formula, equal to its results within fp32 rounding
// (it takes its exponentials from a polynomial and sums in SIMD order, so that its rows vectorise).
static void cached_attention(KVCache *kv, const ModelConfig *c, int l, int N, float *out, const float *q, int qs) {
    int NH = c->n_head, HD = c->head_dim, group = c->n_head / c->n_kv_head, kvw = kv->kvw, window = c->sliding_window;
    float scale = 1.0f / sqrtf((float)HD);
    long work = 0;  // multiply-adds, to keep a short decode step on one thread
    for (int i = 0; i < N; i++) work += 2L * (kv->tok_pos[i] + 1) * NH * HD;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (work > 32768)
    for (int i = 0; i < N; i++)
        for (int h = 0; h < NH; h++) {
            int kvh = h / group, pos = kv->tok_pos[i];
            const float *K = slot_k(kv, l, kv->tok_slot[i]) + kvh * HD, *V = slot_v(kv, l, kv->tok_slot[i]) + kvh * HD;
            const float *qt = q + (long)i * qs + h * HD;
            float *a = kv->scores + (size_t)omp_get_thread_num() * kv->max_len;
            int t0 = (window > 0 && pos - window + 1 > 0) ? pos - window + 1 : 0;
            float maxv = -INFINITY;
            for (int t2 = t0; t2 <= pos; t2++) {
                const float *kt = K + (size_t)t2 * kvw;
                float dot = 0;
                for (int d = 0; d < HD; d++) dot += qt[d] * kt[d];
                a[t2] = dot * scale;
                if (a[t2] > maxv) maxv = a[t2];
            }
            float sum = 0;
            for (int t2 = t0; t2 <= pos; t2++) { a[t2] = expf(a[t2] - maxv); sum += a[t2]; }
            float inv = 1.0f / sum;
            float *o = out + (long)i * (NH * HD) + h * HD;
            for (int d = 0; d < HD; d++) o[d] = 0;
            for (int t2 = t0; t2 <= pos; t2++) {
                float p = a[t2] * inv;
                const float *vt = V + (size_t)t2 * kvw;
                for (int d = 0; d < HD; d++) o[d] += p * vt[d];
            }
        }
}

static void gpt2_block(Model *m, KVCache *kv, int l, int N) {
    Block *b = &m->blocks[l];
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, I = c->n_inner;
    layernorm_forward(kv->xn, kv->mean, kv->rstd, kv->x, b->norm1_w->w, b->norm1_b->w, N, C, c->norm_eps);
    linear_forward(m, b->qkv, kv->xn, kv->q, N);
    store_kv(kv, l, N, kv->q + C, 3 * C, kv->q + 2 * C, 3 * C);
    cached_attention(kv, c, l, N, kv->att_y, kv->q, 3 * C);
    linear_forward(m, b->attn_out, kv->att_y, kv->tmp, N);
    add_inplace(kv->x, kv->tmp, (long)N * C);
    layernorm_forward(kv->xn, kv->mean, kv->rstd, kv->x, b->norm2_w->w, b->norm2_b->w, N, C, c->norm_eps);
    linear_forward(m, b->fc, kv->xn, kv->fc, N);
    gelu_forward(kv->act, kv->fc, (long)N * I);
    linear_forward(m, b->fc_out, kv->act, kv->tmp, N);
    add_inplace(kv->x, kv->tmp, (long)N * C);
}

static void llama_block(Model *m, KVCache *kv, int l, int N) {
    Block *b = &m->blocks[l];
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, I = c->n_inner, HD = c->head_dim, QW = c->n_head * HD;
    rmsnorm_forward(kv->xn, kv->rstd, kv->x, b->norm1_w->w, N, C, c->norm_eps);
    linear_forward(m, b->q, kv->xn, kv->q, N);
    linear_forward(m, b->k, kv->xn, kv->kn, N);
    linear_forward(m, b->v, kv->xn, kv->vn, N);
    // The rope tables hold one row per token (its own position): a [1, N] batch for rope_forward.
    rope_forward(kv->q, kv->cos, kv->sin, 1, N, c->n_head, HD, NULL);
    rope_forward(kv->kn, kv->cos, kv->sin, 1, N, c->n_kv_head, HD, NULL);
    store_kv(kv, l, N, kv->kn, kv->kvw, kv->vn, kv->kvw);
    cached_attention(kv, c, l, N, kv->att_y, kv->q, QW);
    linear_forward(m, b->o, kv->att_y, kv->tmp, N);
    add_inplace(kv->x, kv->tmp, (long)N * C);
    rmsnorm_forward(kv->xn, kv->rstd, kv->x, b->norm2_w->w, N, C, c->norm_eps);
    linear_forward(m, b->gate, kv->xn, kv->fc, N);
    linear_forward(m, b->up, kv->xn, kv->up, N);
    swiglu_forward(kv->act, kv->fc, kv->up, (long)N * I);
    linear_forward(m, b->down, kv->act, kv->tmp, N);
    add_inplace(kv->x, kv->tmp, (long)N * C);
}

// The GPU half of kv_forward (rows already checked, positions set). Each token's adapter set:
// the server's per-row sets, else the model's attached adapter when it is live (not merged).
// With next: each row's token chosen on the device (sp's sampling; NULL: greedy), no logits.
static int gpu_rows_forward(Model *m, KVCache *kv, const KVRow *rows, int n_rows, int N, const int32_t *ids, float *logits, bool all_logits,
                            const GenParams *sp, int32_t *next) {
    AdapterSet **sets = m->row_adapters, **all = NULL;
    if (!sets && m->adapters && m->adapters->n && !m->adapters->adapters[0].merged) {
        all = xmalloc(sizeof(AdapterSet *) * N);
        for (int i = 0; i < N; i++) all[i] = m->adapters;
        sets = all;
    }
    int *last = NULL;
    if (!all_logits && N > n_rows) {  // (one token per row: every row's logits, no gather)
        last = xmalloc(sizeof(int) * n_rows);
        for (int r = 0, end = 0; r < n_rows; r++) last[r] = (end += rows[r].n) - 1;
    }
    int n_out = all_logits ? N : n_rows, rc;
    if (next) {
        GpuSampling s = {0};
        if (sp) s = (GpuSampling){sp->temperature, sp->top_k, sp->top_p, sp->seed};
        rc = gpu_kv_forward_next(kv->gpu, N, ids, kv->tok_slot, kv->tok_pos, sets, last, n_out, &s, next);
    } else rc = gpu_kv_forward(kv->gpu, N, ids, kv->tok_slot, kv->tok_pos, sets, last, n_out, logits);
    if (!rc)
        for (int r = 0; r < n_rows; r++) kv->len[rows[r].slot] += rows[r].n;
    free(last);
    free(all);
    return rc;
}

// The CPU half of kv_forward (rows already checked, positions set).
static int cpu_rows_forward(Model *m, KVCache *kv, const KVRow *rows, int n_rows, int N, const int32_t *ids, float *logits, bool all_logits) {
    const ModelConfig *c = &m->cfg;
    int C = c->n_embd, half = c->head_dim / 2;
    ensure_work(kv, c, N);
#pragma omp parallel for if (N > 16)
    for (int i = 0; i < N; i++) {
        float *x = kv->x + (long)i * C;
        const float *e = m->wte->w + (long)ids[i] * C;
        if (m->wpe) {
            const float *p = m->wpe->w + (long)kv->tok_pos[i] * C;
            for (int k = 0; k < C; k++) x[k] = e[k] + p[k];
        } else memcpy(x, e, sizeof(float) * C);
        if (kv->cos) {
            memcpy(kv->cos + (long)i * half, kv->rope_cos + (long)kv->tok_pos[i] * half, sizeof(float) * half);
            memcpy(kv->sin + (long)i * half, kv->rope_sin + (long)kv->tok_pos[i] * half, sizeof(float) * half);
        }
    }
    adapter_embed_inputs(m, ids, N, kv->x);
    bool training = m->training;
    m->training = false;  // no adapter dropout at inference
    for (int l = 0; l < c->n_layer; l++) {
        if (c->arch == ARCH_GPT2) gpt2_block(m, kv, l, N);
        else llama_block(m, kv, l, N);
    }
    m->training = training;
    for (int r = 0; r < n_rows; r++) kv->len[rows[r].slot] += rows[r].n;
    // The head: every token, or the last one of each row (gathered into tmp).
    const float *h = kv->x;
    int M = N;
    if (!all_logits) {
        M = n_rows;
        for (int r = 0, end = 0; r < n_rows; r++) {
            end += rows[r].n;
            if (kv->tmp + (long)r * C != kv->x + (long)(end - 1) * C) memcpy(kv->tmp + (long)r * C, kv->x + (long)(end - 1) * C, sizeof(float) * C);
        }
        h = kv->tmp;
    }
    if (c->arch == ARCH_GPT2) layernorm_forward(kv->xn, kv->mean, kv->rstd, h, m->norm_f_w->w, m->norm_f_b->w, M, C, c->norm_eps);
    else rmsnorm_forward(kv->xn, kv->rstd, h, m->norm_f_w->w, M, C, c->norm_eps);
    model_head_forward(m, kv->xn, logits, M);
    adapter_embed_logits(m, kv->xn, M, logits);
    return 0;
}

// kv_forward, or (next non-NULL) kv_forward_greedy / kv_forward_sample: each row's argmax (sp NULL)
// or draw to next. On the CPU the logits go to the cache's own buffer; on the GPU they stay there.
static int cached_forward(Model *m, KVCache *kv, const KVRow *rows, int n_rows, const int32_t *ids, float *logits, bool all_logits,
                          const GenParams *sp, int32_t *next) {
    const ModelConfig *c = &m->cfg;
    int V = c->vocab_size;
    if (n_rows <= 0) return peft_fail("kv_forward: no rows");
    if (kv->kvw != c->n_kv_head * c->head_dim || kv->n_layer != c->n_layer) return peft_fail("kv_forward: the cache was made for another model");
    // Validate everything before touching any slot.
    if (++kv->stamp_gen == 0) { memset(kv->stamp, 0, sizeof(int) * kv->n_slots); kv->stamp_gen = 1; }
    long total = 0;
    for (int r = 0; r < n_rows; r++) {
        int s = rows[r].slot, n = rows[r].n;
        if (s < 0 || s >= kv->n_slots) return peft_fail("kv_forward: slot %d is outside the cache (%d slots)", s, kv->n_slots);
        if (kv->stamp[s] == kv->stamp_gen) return peft_fail("kv_forward: slot %d appears twice in one call", s);
        kv->stamp[s] = kv->stamp_gen;
        if (n <= 0) return peft_fail("kv_forward: row %d has no tokens", r);
        if (kv->len[s] + n > kv->max_len)
            return peft_fail("slot %d: %d + %d tokens exceed the cache length %d", s, kv->len[s], n, kv->max_len);
        total += n;
    }
    if (total > (1 << 24)) return peft_fail("kv_forward: too many tokens in one call (%ld)", total);
    int N = (int)total;
    for (int i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= V) return peft_fail("token id %d is outside the vocabulary (size %d)", ids[i], V);
    ensure_rows(kv, N);
    for (int r = 0, i = 0; r < n_rows; r++)
        for (int j = 0; j < rows[r].n; j++, i++) {
            kv->tok_slot[i] = rows[r].slot;
            kv->tok_pos[i] = kv->len[rows[r].slot] + j;
        }
    if (next && kv->gpu) return gpu_rows_forward(m, kv, rows, n_rows, N, ids, NULL, false, sp, next);
    if (next) {
        if (n_rows > kv->greedy_rows) {
            free(kv->greedy_logits);
            kv->greedy_logits = xmalloc(sizeof(float) * (size_t)n_rows * V);
            kv->greedy_rows = n_rows;
        }
        logits = kv->greedy_logits;
        all_logits = false;
    }
    int rc = kv->gpu ? gpu_rows_forward(m, kv, rows, n_rows, N, ids, logits, all_logits, NULL, NULL)
                     : cpu_rows_forward(m, kv, rows, n_rows, N, ids, logits, all_logits);
    if (!rc && next)
#pragma omp parallel for if (n_rows > 4)
        for (int r = 0; r < n_rows; r++) next[r] = gen_argmax(logits + (long)r * V, V);
    return rc;
}

int kv_forward(Model *m, KVCache *kv, const KVRow *rows, int n_rows, const int32_t *ids, float *logits, bool all_logits) {
    return cached_forward(m, kv, rows, n_rows, ids, logits, all_logits, NULL, NULL);
}

int kv_forward_greedy(Model *m, KVCache *kv, const KVRow *rows, int n_rows, const int32_t *ids, int32_t *next) {
    return cached_forward(m, kv, rows, n_rows, ids, NULL, false, NULL, next);
}

bool kv_samples_on_device(const KVCache *kv, const GenParams *p) { return kv->gpu && p->repetition_penalty == 1.0f; }

int kv_forward_sample(Model *m, KVCache *kv, const KVRow *rows, int n_rows, const int32_t *ids, const GenParams *p, int32_t *next) {
    if (!kv_samples_on_device(kv, p)) return peft_fail("kv_forward_sample: sampling on the device needs a GPU cache and no repetition penalty");
    return cached_forward(m, kv, rows, n_rows, ids, NULL, false, p, next);
}
