// gpu_embed.cu: the token embedding's adapters on the GPU (adapter_embed.c's forward and backward):
//   LoRA on the embedding (lora_embedding_A [r, V], lora_embedding_B [C, r]): token t's embedding gains
//     s B A[:, t], computed from the fp32 masters in fp32 (r is small: a gather, then r products per
//     element). Backward from the embedding's fp32 gradient dres [N, C]: dB += s dres^T hA (hA [N, r]:
//     A's gathered columns) and dh = s dres B, one GEMM each, then dh scattered into A's columns of the
//     batch's tokens (atomics, as the embedding's own gradient: summed in any order).
//   Trainable tokens: the trained rows are copied over the frozen weight's rows before each forward (the
//     embedding, an untied head, or the tied embedding for both, as PEFT ties them), so the lookup and the
//     classifier read them as the base's; the rows' gradient is the embedding's rows of dres (input) plus
//     d logits^T nf over the rows' columns (head: computed chunk by chunk in the forward, as the classifier's
//     backward is, into a pending buffer that the backward adds, like the head's own gradient). The frozen weight's own rows are
//     never read while the adapter is on the model (PEFT's TrainableTokensLayer replaces them outright).
extern "C" {
#include "adapter.h"
#include "util.h"
}
#include "gpu.h"
#include "gpu_internal.cuh"
#include "gpu_model.cuh"
#include <vector>

template <typename T> __global__ void embed_rows_copy_kernel(T *w, const T *values, const int *indices, int n, int C) {
    long total = (long)n * C;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int j = (int)(i / C), c = (int)(i % C);
        w[(long)indices[j] * C + c] = values[i];
    }
}

// hA[i, q] = A[q, ids[i]]
__global__ void embed_lora_gather_kernel(float *hA, const float *A, const int *ids, int N, int r, int V) {
    long total = (long)N * r;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int n = (int)(i / r), q = (int)(i % r);
        hA[i] = A[(long)q * V + ids[n]];
    }
}

// x[i, c] += s sum_q B[c, q] hA[i, q]
template <typename T> __global__ void embed_lora_add_kernel(T *x, const float *hA, const float *B, float s, int N, int C, int r) {
    long total = (long)N * C;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int n = (int)(i / C), c = (int)(i % C);
        const float *h = hA + (long)n * r, *b = B + (long)c * r;
        float acc = 0;
        for (int q = 0; q < r; q++) acc += b[q] * h[q];
        x[i] = from_f<T>(to_f<T>(x[i]) + s * acc);
    }
}

// A[q, ids[i]] += dh[i, q]
__global__ void embed_lora_scatter_kernel(float *Ag, const float *dh, const int *ids, int N, int r, int V) {
    long total = (long)N * r;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int n = (int)(i / r), q = (int)(i % r);
        atomicAdd(Ag + (long)q * V + ids[n], dh[i]);
    }
}

// values_g[row_of[ids[i]]] += dres[i] for the batch's tokens that have a trained row
__global__ void embed_rows_bwd_kernel(float *values_g, const int *row_of, const float *dres, const int *ids, int N, int C) {
    long total = (long)N * C;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int n = (int)(i / C), c = (int)(i % C), j = row_of[ids[n]];
        if (j >= 0) atomicAdd(values_g + (long)j * C + c, dres[i]);
    }
}

// pending[j, c] (+)= sum_k dlogits[k, indices[j]] nf[k, c]: one thread per (j, c), the rows in order.
template <typename T>
__global__ void embed_head_bwd_kernel(float *pending, const int *indices, const T *dlogits, int ld, const T *nf, int rows, int C, bool first) {
    int j = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int t = indices[j];
    float acc = 0;
    for (int k = 0; k < rows; k++) acc += to_f<T>(dlogits[(long)k * ld + t]) * to_f<T>(nf[(long)k * C + c]);
    pending[(long)j * C + c] = first ? acc : pending[(long)j * C + c] + acc;
}

static int grid(long n) { return (int)std::min<long>(cdiv(n, 256), 65535); }

int gpu_embed_upload(GpuModel *g, const EmbedView *v) {
    GpuEmbed *e = g->emb;
    for (int k = 0; k < e->n_rows; k++) {
        GpuEmbedRows *t = &e->rows[k];
        if (t->n > 65535) return peft_fail("CUDA backend: %d trainable tokens of one module: more than 65535 is not implemented on the GPU", t->n);
        t->indices = (int *)gpu_malloc(sizeof(int) * t->n, "trainable tokens' indices");
        t->row_of = (int *)gpu_malloc(sizeof(int) * g->V, "trainable tokens' indices");
        if (t->head) t->pending = (float *)gpu_malloc(sizeof(float) * (size_t)t->n * g->C, "trainable tokens' head gradient");
        if (!t->indices || !t->row_of || (t->head && !t->pending)) return gpu_report_failure();
        std::vector<int> row_of(g->V, -1);
        for (int j = 0; j < t->n; j++) {
            int id = v->rows[k].indices[j];
            if (id < 0 || id >= g->V) return peft_fail("CUDA backend: trainable token %d is outside the vocabulary (%d)", id, g->V);
            row_of[id] = j;
        }
        CU(cudaMemcpy(t->indices, v->rows[k].indices, sizeof(int) * t->n, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(t->row_of, row_of.data(), sizeof(int) * g->V, cudaMemcpyHostToDevice));
    }
    return gpu_report_failure();
}

void gpu_embed_free(GpuModel *g) {
    GpuEmbed *e = g->emb;
    if (!e) return;
    for (int k = 0; k < e->n_rows; k++) {
        gpu_free(e->rows[k].indices);
        gpu_free(e->rows[k].row_of);
        gpu_free(e->rows[k].pending);
    }
    gpu_free(e->hA);
    free(e);
    g->emb = nullptr;
}

template <typename T> void gpu_embed_rows(GpuModel *g) {
    const GpuEmbed *e = g->emb;
    for (int k = 0; e && k < e->n_rows; k++) {
        const GpuEmbedRows *t = &e->rows[k];
        embed_rows_copy_kernel<T><<<grid((long)t->n * g->C), 256, 0, g->st>>>((T *)t->weight, (const T *)t->values, t->indices, t->n, g->C);
        KCHECK();
    }
}

template <typename T> void gpu_embed_fwd(GpuModel *g, T *x, int N) {
    GpuEmbed *e = g->emb;
    if (!e || !e->A) return;
    if (N > e->cap) {  // hA and dh, [N, r] each (cudaFree waits for the kernels that used the old ones)
        gpu_free(e->hA);
        e->hA = (float *)gpu_malloc(sizeof(float) * 2 * (size_t)N * e->r, "LoRA on the embedding");
        e->dh = e->hA ? e->hA + (size_t)N * e->r : nullptr;
        e->cap = e->hA ? N : 0;
        if (!e->hA) return;  // recorded: the forward reports it
    }
    embed_lora_gather_kernel<<<grid((long)N * e->r), 256, 0, g->st>>>(e->hA, e->A, g->ids_d, N, e->r, g->V);
    KCHECK();
    embed_lora_add_kernel<T><<<grid((long)N * g->C), 256, 0, g->st>>>(x, e->hA, e->B, e->scaling, N, g->C, e->r);
    KCHECK();
}

template <typename T> void gpu_embed_head_bwd(GpuModel *g, const T *dlogits, int ld, const T *nf, int rows, bool first) {
    const GpuEmbed *e = g->emb;
    for (int k = 0; e && k < e->n_rows; k++) {
        const GpuEmbedRows *t = &e->rows[k];
        if (!t->head) continue;
        embed_head_bwd_kernel<T><<<dim3(cdiv(g->C, 128), t->n), 128, 0, g->st>>>(t->pending, t->indices, dlogits, ld, nf, rows, g->C, first);
        KCHECK();
    }
}

int gpu_embed_bwd(GpuModel *g, int N) {
    const GpuEmbed *e = g->emb;
    if (!e) return 0;
    int C = g->C;
    for (int k = 0; k < e->n_rows; k++) {
        const GpuEmbedRows *t = &e->rows[k];
        if (t->head) k_add(t->values_g, t->pending, (long)t->n * C, g->st);
        if (!t->input) continue;
        embed_rows_bwd_kernel<<<grid((long)N * C), 256, 0, g->st>>>(t->values_g, t->row_of, g->dres, g->ids_d, N, C);
        KCHECK();
    }
    if (!e->A) return 0;
    if (N > e->cap) return peft_fail("CUDA backend: internal error: LoRA on the embedding's backward without its forward");
    // dB [C, r] += s dres^T hA; dh [N, r] = s dres B; then dh into A's columns
    gemm(g->gc, true, false, C, e->r, N, e->scaling, g->dres, C, G_F32, e->hA, e->r, G_F32, 1.0f, e->Bg, e->Bg, e->r, G_F32, nullptr);
    gemm(g->gc, false, false, N, e->r, C, e->scaling, g->dres, C, G_F32, e->B, e->r, G_F32, 0.0f, nullptr, e->dh, e->r, G_F32, nullptr);
    embed_lora_scatter_kernel<<<grid((long)N * e->r), 256, 0, g->st>>>(e->Ag, e->dh, g->ids_d, N, e->r, g->V);
    KCHECK();
    return 0;
}

#define EMBED_INSTANTIATE(T)                                                  \
    template void gpu_embed_rows<T>(GpuModel *);                              \
    template void gpu_embed_fwd<T>(GpuModel *, T *, int);                     \
    template void gpu_embed_head_bwd<T>(GpuModel *, const T *, int, const T *, int, bool);
EMBED_INSTANTIATE(float)
EMBED_INSTANTIATE(bf16)
