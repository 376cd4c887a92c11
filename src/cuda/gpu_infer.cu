// gpu_infer.cu: cached inference on the GPU, kv_forward's twin (generate.h): a KV cache of n_slots
// sequences in the activation type, and a forward over the new tokens of any set of slots, where
// every token row carries its own adapter set (NULL: the base). generate() and the server's
// scheduler run on it unchanged when the model has a GPU copy (Model.gpu, made with base_only).
//
// Adapters are applied per row, never merged into the GPU weights:
//   LoRA / AdaLoRA rows: a gathered low-rank product, two kernels per group of linears whatever the
//     number of distinct adapters: h = x A^T (each row with its own A), then y += h B^T (each row
//     its own B; the scaling, and AdaLoRA's E, are folded into B when the set is uploaded);
//   VeRA rows: the projection A is shared, so h = x A^T is one GEMM for every row; B is shared
//     too, so the expand kernel reads it once for several rows, applying each row's lambda_d (on
//     h) and lambda_b (on the output).
// A set's tensors are uploaded once, on first use, and cached by the set's uid.
extern "C" {
#include "adapter.h"
#include "kernels.h"
#include "model.h"
#include "util.h"
}
#include "gpu.h"
#include "gpu_internal.cuh"
#include "gpu_model.cuh"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <vector>

// One adapted linear of one set, on the device. LoRA / AdaLoRA: A [r, in] and B [out, r], B
// already holding the scaling (LoRA: s B; AdaLoRA: s B diag(E)). VeRA: only its lambdas (the
// projections are the GpuKV's, shared by every set with the same ones).
struct RowAd {
    const void *A, *B;
    const float *lambda_d, *lambda_b;
    int r;
    GpuKind kind;  // the set's method: AD_VERA, else a plain product (LoRA; AdaLoRA with E folded into B)
};

// The linears that share a group's input (gpu_model.cuh Group), with their output columns.
struct Members {
    int n, li[3], col_off[3], out[3];
};

struct DevSet {   // an uploaded adapter set
    uint64_t uid;
    long last_used;
    void *mem;    // RowAd[n_linears], then the tensors
    int proj;     // VeRA: index into GpuKV::projs; -1 otherwise
    int max_r;    // LoRA/AdaLoRA: the largest rank
};
struct DevProj {  // a VeRA projection pair, shared by every set with the same fingerprint
    uint64_t fingerprint;
    int r, max_in, max_out;
    void *A;      // [r, max_in] (activation type)
    void *BT;     // B [max_out, r] transposed, [r, max_out]: the expand kernel's reads are then coalesced
};

// A decode step's shape, all that a CUDA graph of it bakes in: the row data, positions included, is
// read from device memory, which the step's first copy fills from the pinned staging.
struct StepKey {
    int N, n_out;
    bool gather;       // out_rows given (else every row's logits)
    bool fresh;        // one token per slot (kv_attention_kernel appends the keys and values)
    GpuSampling s;
};
static bool same_key(const StepKey &a, const StepKey &b) {
    return a.N == b.N && a.n_out == b.n_out && a.gather == b.gather && a.fresh == b.fresh && a.s.temperature == b.s.temperature &&
           a.s.top_k == b.s.top_k && a.s.top_p == b.s.top_p && a.s.seed == b.s.seed;
}
struct StepGraph {
    StepKey key;
    cudaGraphExec_t exec;
    long last_used;    // GpuKV::calls
};
enum { MAX_STEP_GRAPHS = 64 };  // a server's steps come in many sizes; the least recently used goes

struct GpuKV {
    GpuModel *g;
    int n_slots, max_len, n_layer, KVW;
    void **K, **V;               // per layer [n_slots, max_len, KVW]
    void **KV_d;                 // on the device: K[0..L-1] then V[0..L-1] (for the slot-copy kernel)
    std::vector<int> copies;     // slot copies not yet done: (dst, src, len) triples (gpu_kv_copy)
    float *cos_tab, *sin_tab;    // rope [max_len, HD/2]
    std::vector<Members> mem;    // per layer: qkv, o, up, down
    std::vector<DevSet> sets;
    std::vector<DevProj> projs;
    long calls;
    // per-call buffers, sized for cap rows
    int cap;
    void *x, *xn, *qkv, *att, *fc, *act;
    float *mean, *rstd, *h, *cos_rows, *sin_rows, *logits;
    int h_cap;                   // floats per row of h
    int *ids_d, *pos_d, *slot_d, *voff_d, *outrows_d;
    const RowAd **rowad_d;
    void *host;                  // pinned staging of the per-row arrays
    float *logits_host;          // pinned staging of up to LOGITS_PINNED_ROWS rows of logits
    int32_t *next_d, *next_host; // gpu_kv_forward_next's tokens [cap] (device, pinned)
    // CUDA graphs of gpu_kv_forward_next's steps (made for the buffers above: dropped with them)
    std::vector<StepGraph> graphs;
    bool graphs_on;
    StepKey last_key;            // the previous call's shape (a graph is captured when it repeats)
    bool have_last;
    std::vector<char> seen;      // one_token_per_slot's marks
};
enum { LOGITS_PINNED_ROWS = 256 };


// ---------------- kernels ----------------
// Beam search's slot copies, batched: block (i, t) copies the first len[i] rows of slot src[i] into
// slot dst[i] of cache tensor t (the K and V of every layer), 16 bytes per thread where rows allow.
enum { COPIES_PER_LAUNCH = 128 };
struct SlotCopies {
    int n, dst[COPIES_PER_LAUNCH], src[COPIES_PER_LAUNCH], len[COPIES_PER_LAUNCH];
};
__global__ void slot_copy_kernel(void *const *tensors, SlotCopies c, size_t slot_bytes, size_t row_bytes) {
    int i = blockIdx.x;
    const char *src = (const char *)tensors[blockIdx.y] + c.src[i] * slot_bytes;
    char *dst = (char *)tensors[blockIdx.y] + c.dst[i] * slot_bytes;
    size_t n = c.len[i] * row_bytes;
    if (row_bytes % 16 == 0)  // then every slot starts 16-byte aligned
        for (size_t o = threadIdx.x * 16; o < n; o += blockDim.x * 16)
            *reinterpret_cast<uint4 *>(dst + o) = *reinterpret_cast<const uint4 *>(src + o);
    else
        for (size_t o = threadIdx.x; o < n; o += blockDim.x) dst[o] = src[o];
}

// x[n] = wte[id] (+ wpe[pos]); rope rows: cos/sin of each token's position.
template <typename T>
__global__ void embed_pos_kernel(T *x, const int *ids, const int *pos, const T *wte, const T *wpe, int C, const float *cos_tab,
                                 const float *sin_tab, float *cos_rows, float *sin_rows, int half) {
    int n = blockIdx.x, p = pos[n];
    const T *e = wte + (size_t)ids[n] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = to_f<T>(e[c]);
        if (wpe) v += to_f<T>(wpe[(size_t)p * C + c]);
        x[(size_t)n * C + c] = from_f<T>(v);
    }
    if (cos_rows)
        for (int j = threadIdx.x; j < half; j += blockDim.x) {
            cos_rows[(size_t)n * half + j] = cos_tab[(size_t)p * half + j];
            sin_rows[(size_t)n * half + j] = sin_tab[(size_t)p * half + j];
        }
}

// The new keys and values (after rope) into their slots at their positions.
template <typename T>
__global__ void kv_append_kernel(T *K, T *V, const T *qkv, int S, int QW, int KVW, const int *slot, const int *pos, int N, int max_len) {
    long total = (long)N * KVW;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int n = (int)(i / KVW), c = (int)(i % KVW);
        size_t dst = ((size_t)slot[n] * max_len + pos[n]) * KVW + c;
        K[dst] = qkv[(size_t)n * S + QW + c];
        V[dst] = qkv[(size_t)n * S + QW + KVW + c];
    }
}

// Block-wide reduction (ATT_THREADS threads); every thread gets the result.
enum { ATT_THREADS = 128, ATT_WARPS = ATT_THREADS / 32, ATT_CHUNK = 512, HD_MAX = 256 };
__device__ float block_reduce(float v, bool is_max, float *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();  // red may still be read by the previous reduction
    if (lane == 0) red[w] = v;
    __syncthreads();
    float r = red[0];
    for (int i = 1; i < ATT_WARPS; i++) r = is_max ? fmaxf(r, red[i]) : r + red[i];
    return r;
}

// Causal attention of each new token (row n, head h) over its slot's keys t0..pos, with an online
// softmax over chunks of ATT_CHUNK keys: a warp per key for the scores, a thread per dimension for
// the values. fresh (one new token per slot: a decode step): the token's own key and value are read
// from qkv, and the first head of each KV group writes them into the cache (kv_append_kernel's work,
// a launch fewer per layer); the group's other heads read only older positions from the cache.
template <typename T>
__global__ void __launch_bounds__(ATT_THREADS) kv_attention_kernel(T *out, const T *qkv, int S, T *K, T *V, const int *slot, const int *pos,
                                                                   int NH, int NKV, int HD, int KVW, int QW, int max_len, int window,
                                                                   float scale, bool fresh) {
    __shared__ float q[HD_MAX], s[ATT_CHUNK], red[ATT_WARPS];
    int n = blockIdx.x, h = blockIdx.y, kvh = h / (NH / NKV), p = pos[n];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int t0 = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    T *Kb = K + (size_t)slot[n] * max_len * KVW + (size_t)kvh * HD;
    T *Vb = V + (size_t)slot[n] * max_len * KVW + (size_t)kvh * HD;
    const T *kn = qkv + (size_t)n * S + QW + (size_t)kvh * HD, *vn = kn + KVW;  // the token's own key and value
    if (fresh && h % (NH / NKV) == 0)
        for (int d = threadIdx.x; d < HD; d += ATT_THREADS) {
            Kb[(size_t)p * KVW + d] = kn[d];
            Vb[(size_t)p * KVW + d] = vn[d];
        }
    for (int d = threadIdx.x; d < HD; d += ATT_THREADS) q[d] = to_f<T>(qkv[(size_t)n * S + (size_t)h * HD + d]);
    __syncthreads();
    float acc[HD_MAX / ATT_THREADS] = {0}, m_run = -INFINITY, l_run = 0;
    for (int c0 = t0; c0 <= p; c0 += ATT_CHUNK) {
        int cn = min(ATT_CHUNK, p + 1 - c0);
        for (int j = w; j < cn; j += ATT_WARPS) {
            const T *kt = fresh && c0 + j == p ? kn : Kb + (size_t)(c0 + j) * KVW;
            float dot = 0;
            for (int d = lane; d < HD; d += 32) dot += q[d] * to_f<T>(kt[d]);
            dot = warp_sum(dot);
            if (lane == 0) s[j] = dot * scale;
        }
        __syncthreads();
        float mx = -INFINITY;
        for (int j = threadIdx.x; j < cn; j += ATT_THREADS) mx = fmaxf(mx, s[j]);
        float m_new = fmaxf(m_run, block_reduce(mx, true, red));
        float sum = 0;
        for (int j = threadIdx.x; j < cn; j += ATT_THREADS) {
            float e = __expf(s[j] - m_new);
            s[j] = e;
            sum += e;
        }
        float f = __expf(m_run - m_new);  // 0 on the first chunk (m_run = -inf)
        l_run = l_run * f + block_reduce(sum, false, red);
        m_run = m_new;
        __syncthreads();  // s holds the probabilities
#pragma unroll
        for (int i = 0; i < HD_MAX / ATT_THREADS; i++) {
            int d = threadIdx.x + i * ATT_THREADS;
            if (d >= HD) break;
            float a = acc[i] * f;
            for (int j = 0; j < cn; j++) a += s[j] * to_f<T>((fresh && c0 + j == p ? vn : Vb + (size_t)(c0 + j) * KVW)[d]);
            acc[i] = a;
        }
        __syncthreads();  // before the next chunk overwrites s
    }
    float inv = 1.0f / l_run;
#pragma unroll
    for (int i = 0; i < HD_MAX / ATT_THREADS; i++) {
        int d = threadIdx.x + i * ATT_THREADS;
        if (d < HD) out[(size_t)n * NH * HD + (size_t)h * HD + d] = from_f<T>(acc[i] * inv);
    }
}

// Row n's dot products with its own A: h[n, m*rmax + k] = x[n] . A_m[k] for each LoRA/AdaLoRA
// member m of the group (a warp per rank k).
template <typename T>
__global__ void row_shrink_kernel(float *h, int ldh, const T *x, int in, const RowAd *const *rowad, Members mb, int rmax, int rchunks) {
    int n = blockIdx.x, m = blockIdx.y / rchunks, k = (blockIdx.y % rchunks) * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const RowAd *base = rowad[n];
    if (!base) return;
    const RowAd *e = base + mb.li[m];
    if (e->kind == AD_VERA || k >= e->r) return;
    const T *xr = x + (size_t)n * in, *a = (const T *)e->A + (size_t)k * in;
    float dot = 0;
    constexpr int VN = 16 / sizeof(T);
    if (in % VN == 0) {
        for (int i = lane * VN; i < in; i += 32 * VN) {
            float xv[VN], av[VN];
            ldv<T, VN>(xr + i, xv);
            ldv<T, VN>(a + i, av);
#pragma unroll
            for (int v = 0; v < VN; v++) dot += xv[v] * av[v];
        }
    } else
        for (int i = lane; i < in; i += 32) dot += to_f<T>(xr[i]) * to_f<T>(a[i]);
    dot = warp_sum(dot);
    if (lane == 0) h[(size_t)n * ldh + m * rmax + k] = dot;
}

// LoRA / AdaLoRA rows: y[n, col] += sum_k B[o, k] h[n, m * rmax + k] for the member m owning
// column col (o = col - its offset), each row with its own B.
enum { EXPAND_THREADS = 256 };
template <typename T>
__global__ void __launch_bounds__(EXPAND_THREADS) row_expand_kernel(T *y, int ldy, const float *h, int ldh, const RowAd *const *rowad,
                                                                    Members mb, int rmax, int out_total) {
    extern __shared__ float cbuf[];  // [mb.n][rmax]
    int n = blockIdx.x, col0 = blockIdx.y * EXPAND_THREADS;
    const RowAd *base = rowad[n];
    if (!base) return;
    for (int m = 0; m < mb.n; m++) {
        if (mb.col_off[m] >= col0 + EXPAND_THREADS || mb.col_off[m] + mb.out[m] <= col0) continue;
        const RowAd *e = base + mb.li[m];
        if (e->kind == AD_VERA) continue;
        const float *hr = h + (size_t)n * ldh + m * rmax;
        for (int k = threadIdx.x; k < e->r; k += EXPAND_THREADS) cbuf[m * rmax + k] = hr[k];
    }
    __syncthreads();
    int col = col0 + threadIdx.x;
    if (col >= out_total) return;
    int m = 0;
    while (m + 1 < mb.n && col >= mb.col_off[m + 1]) m++;
    int o = col - mb.col_off[m];
    if (o < 0 || o >= mb.out[m]) return;
    const RowAd *e = base + mb.li[m];
    if (!e->r || e->kind == AD_VERA) return;
    const T *b = (const T *)e->B + (size_t)o * e->r;
    const float *c = cbuf + m * rmax;
    float acc = 0;
    constexpr int VN = 16 / sizeof(T);
    int k = 0;
    if (e->r % VN == 0)
        for (; k + VN <= e->r; k += VN) {
            float bv[VN];
            ldv<T, VN>(b + k, bv);
#pragma unroll
            for (int v = 0; v < VN; v++) acc += bv[v] * c[k + v];
        }
    for (; k < e->r; k++) acc += to_f<T>(b[k]) * c[k];
    T *yp = y + (size_t)n * ldy + col;
    *yp = from_f<T>(to_f<T>(*yp) + acc);
}

// VeRA rows of one projection (voff[n] == want): y[n, col] += lambda_b[o] sum_k B[o, k] lambda_d[k]
// h[n, want + k]. The rows share B: a block takes up to VERA_ROWS rows and VERA_COLS columns,
// reads each B value once for all its rows from B transposed (consecutive threads, consecutive
// addresses), and splits k over VERA_KSPLIT groups of threads (short loops: latency, not
// bandwidth, bounds this kernel), whose partial sums meet in shared memory.
enum { VERA_ROWS = 8, VERA_COLS = 64, VERA_KSPLIT = 4, VERA_THREADS = VERA_COLS * VERA_KSPLIT };
template <typename T>
__global__ void __launch_bounds__(VERA_THREADS) vera_expand_kernel(T *y, int ldy, const float *h, int ldh, const RowAd *const *rowad,
                                                                   const int *voff, int want, Members mb, const T *BT, int ldbt, int r,
                                                                   int rows_per_block, int N, int out_total) {
    extern __shared__ float cbuf[];  // [rows_per_block][mb.n][r]
    __shared__ float part[VERA_KSPLIT][VERA_ROWS][VERA_COLS];
    int n0 = blockIdx.x * rows_per_block, col0 = blockIdx.y * VERA_COLS;
    for (int i = 0; i < rows_per_block; i++)
        for (int m = 0; m < mb.n; m++) {
            int n = n0 + i;
            float *c = cbuf + ((size_t)i * mb.n + m) * r;
            const RowAd *e = n < N && rowad[n] && voff[n] == want ? rowad[n] + mb.li[m] : nullptr;
            bool on = e && e->kind == AD_VERA && e->r == r && mb.col_off[m] < col0 + VERA_COLS && mb.col_off[m] + mb.out[m] > col0;
            for (int k = threadIdx.x; k < r; k += VERA_THREADS) c[k] = on ? h[(size_t)n * ldh + want + k] * e->lambda_d[k] : 0.0f;
        }
    __syncthreads();
    int cl = threadIdx.x % VERA_COLS, ks = threadIdx.x / VERA_COLS, col = col0 + cl, m = 0;
    while (m + 1 < mb.n && col >= mb.col_off[m + 1]) m++;
    int o = col - mb.col_off[m];
    bool valid = col < out_total && o >= 0 && o < mb.out[m];
    float acc[VERA_ROWS] = {0};
    if (valid) {
        const float *c = cbuf + (size_t)m * r;
        size_t cstride = (size_t)mb.n * r;
#pragma unroll 4
        for (int k = ks; k < r; k += VERA_KSPLIT) {
            float b = to_f<T>(BT[(size_t)k * ldbt + o]);
#pragma unroll
            for (int i = 0; i < VERA_ROWS; i++)
                if (i < rows_per_block) acc[i] += b * c[i * cstride + k];
        }
    }
#pragma unroll
    for (int i = 0; i < VERA_ROWS; i++) part[ks][i][cl] = acc[i];
    __syncthreads();
    if (ks || !valid) return;
    for (int i = 0; i < rows_per_block && n0 + i < N; i++) {
        int n = n0 + i;
        if (!rowad[n] || voff[n] != want) continue;
        const RowAd *e = rowad[n] + mb.li[m];
        if (!e->kind == AD_VERA || e->r != r) continue;
        float sum = 0;
        for (int q = 0; q < VERA_KSPLIT; q++) sum += part[q][i][cl];
        T *yp = y + (size_t)n * ldy + col;
        *yp = from_f<T>(to_f<T>(*yp) + e->lambda_b[o] * sum);
    }
}

template <typename T> __global__ void gather_rows_kernel(T *dst, const T *src, const int *rows, int C) {
    int i = blockIdx.x;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dst[(size_t)i * C + c] = src[(size_t)rows[i] * C + c];
}

// ---------------- the cache ----------------
static void drop_graphs(GpuKV *kv) {
    for (StepGraph &sg : kv->graphs) cudaGraphExecDestroy(sg.exec);
    kv->graphs.clear();
    kv->have_last = false;
}

static void free_call_buffers(GpuKV *kv) {
    drop_graphs(kv);  // they name these buffers
    void *bufs[] = {kv->x, kv->xn, kv->qkv, kv->att, kv->fc, kv->act, kv->mean, kv->h, kv->cos_rows, kv->logits, kv->ids_d};
    for (void *p : bufs) gpu_free(p);
    kv->x = kv->xn = kv->qkv = kv->att = kv->fc = kv->act = nullptr;
    kv->mean = kv->rstd = kv->h = kv->cos_rows = kv->sin_rows = kv->logits = nullptr;
    kv->ids_d = nullptr;
    gpu_free(kv->next_d);
    kv->next_d = nullptr;
    if (kv->next_host) cudaFreeHost(kv->next_host);
    kv->next_host = nullptr;
    if (kv->host) cudaFreeHost(kv->host);
    if (kv->logits_host) cudaFreeHost(kv->logits_host);
    kv->host = nullptr;
    kv->logits_host = nullptr;
    kv->cap = 0;
}

// Per-call buffers for N rows with h_floats floats of adapter activations per row.
static int ensure_call_buffers(GpuKV *kv, int N, int h_floats) {
    if (N <= kv->cap && h_floats <= kv->h_cap) return 0;
    GpuModel *g = kv->g;
    int cap = std::max(N, kv->cap), hc = std::max(h_floats, kv->h_cap);
    free_call_buffers(kv);
    size_t es = g->es, half = (size_t)g->HD / 2;
    kv->x = gpu_malloc((size_t)cap * g->C * es, "inference activations");
    kv->xn = gpu_malloc((size_t)cap * g->C * es, "inference activations");
    kv->qkv = gpu_malloc((size_t)cap * g->S * es, "inference activations");
    kv->att = gpu_malloc((size_t)cap * g->QW * es, "inference activations");
    kv->fc = gpu_malloc((size_t)cap * g->upw * es, "inference activations");
    kv->act = gpu_malloc((size_t)cap * g->actw * es, "inference activations");
    kv->mean = (float *)gpu_malloc(sizeof(float) * (size_t)cap * 2, "inference activations");
    kv->rstd = kv->mean ? kv->mean + cap : nullptr;
    kv->h = (float *)gpu_malloc(sizeof(float) * (size_t)cap * std::max(hc, 1), "adapter activations");
    kv->cos_rows = (float *)gpu_malloc(sizeof(float) * (size_t)cap * half * 2, "rope rows");
    kv->sin_rows = kv->cos_rows ? kv->cos_rows + (size_t)cap * half : nullptr;
    kv->logits = (float *)gpu_malloc(sizeof(float) * (size_t)cap * g->V, "logits");
    // ids, pos, slot, voff, outrows (ints) and rowad (pointers), one allocation
    size_t ints = (size_t)cap * 5, bytes = ints * sizeof(int) + (size_t)cap * sizeof(void *) + 16;
    kv->ids_d = (int *)gpu_malloc(bytes, "inference row data");
    if (kv->ids_d) {
        kv->pos_d = kv->ids_d + cap;
        kv->slot_d = kv->pos_d + cap;
        kv->voff_d = kv->slot_d + cap;
        kv->outrows_d = kv->voff_d + cap;
        kv->rowad_d = (const RowAd **)(((uintptr_t)(kv->outrows_d + cap) + 15) & ~(uintptr_t)15);
    }
    kv->next_d = (int32_t *)gpu_malloc(sizeof(int32_t) * (size_t)cap, "inference tokens");
    CU(cudaMallocHost(&kv->host, bytes));
    CU(cudaMallocHost((void **)&kv->next_host, sizeof(int32_t) * (size_t)cap));
    CU(cudaMallocHost((void **)&kv->logits_host, sizeof(float) * (size_t)std::min(cap, (int)LOGITS_PINNED_ROWS) * g->V));
    if (gpu_failed()) {
        free_call_buffers(kv);
        return gpu_report_failure();
    }
    kv->cap = cap;
    kv->h_cap = hc;
    return 0;
}

extern "C" GpuKV *gpu_kv_new(GpuModel *g, int n_slots, int max_len) {
    gpu_clear_failure();
    if (g->HD > HD_MAX) {
        peft_fail("CUDA inference: head_dim %d exceeds %d", g->HD, (int)HD_MAX);
        return nullptr;
    }
    GpuKV *kv = new GpuKV();
    kv->g = g;
    kv->n_slots = n_slots;
    kv->max_len = max_len;
    kv->n_layer = g->cfg.n_layer;
    const char *graphs = getenv("PEFT_GPU_GRAPHS");
    kv->graphs_on = !(graphs && !strcmp(graphs, "0"));
    kv->KVW = g->KVW;
    kv->K = (void **)calloc(kv->n_layer, sizeof(void *));
    kv->V = (void **)calloc(kv->n_layer, sizeof(void *));
    size_t per = (size_t)n_slots * max_len * g->KVW * g->es;
    for (int l = 0; l < kv->n_layer && !gpu_failed(); l++) {
        kv->K[l] = gpu_malloc(per, "the KV cache");
        kv->V[l] = gpu_malloc(per, "the KV cache");
    }
    kv->KV_d = (void **)gpu_malloc(sizeof(void *) * 2 * kv->n_layer, "the KV cache");
    if (!gpu_failed()) {
        CU(cudaMemcpy(kv->KV_d, kv->K, sizeof(void *) * kv->n_layer, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(kv->KV_d + kv->n_layer, kv->V, sizeof(void *) * kv->n_layer, cudaMemcpyHostToDevice));
    }
    if (!g->gpt2 && !gpu_failed()) {
        int half = g->HD / 2;
        float *hc = (float *)xmalloc(sizeof(float) * (size_t)max_len * half * 2);
        rope_tables(hc, hc + (size_t)max_len * half, max_len, g->HD, g->m->inv_freq);
        kv->cos_tab = (float *)gpu_malloc(sizeof(float) * (size_t)max_len * half * 2, "rope tables");
        if (kv->cos_tab) {
            kv->sin_tab = kv->cos_tab + (size_t)max_len * half;
            CU(cudaMemcpy(kv->cos_tab, hc, sizeof(float) * (size_t)max_len * half * 2, cudaMemcpyHostToDevice));
        }
        free(hc);
    }
    // Group members in the GPU model's column order (gpu_model.cu bind_group).
    Model *m = g->m;
    kv->mem.resize((size_t)4 * kv->n_layer);
    for (int l = 0; l < kv->n_layer; l++) {
        Linear *groups[4][3];
        block_groups(g, &m->blocks[l], groups);
        for (int gi = 0; gi < 4; gi++) {
            Members *mb = &kv->mem[l * 4 + gi];
            mb->n = 0;
            for (int k = 0, off = 0; k < 3 && groups[gi][k]; k++) {
                mb->li[mb->n] = (int)(groups[gi][k] - m->linears);
                mb->col_off[mb->n] = off;
                mb->out[mb->n++] = groups[gi][k]->out;
                off += groups[gi][k]->out;
            }
        }
    }
    if (gpu_failed()) {
        gpu_report_failure();
        gpu_kv_free(kv);
        return nullptr;
    }
    return kv;
}

static void drop_set(DevSet &s) { gpu_free(s.mem); }

extern "C" void gpu_kv_free(GpuKV *kv) {
    if (!kv) return;
    cudaStreamSynchronize(kv->g->st);
    for (int l = 0; l < kv->n_layer; l++) {
        gpu_free(kv->K[l]);
        gpu_free(kv->V[l]);
    }
    free(kv->K);
    free(kv->V);
    gpu_free(kv->KV_d);
    gpu_free(kv->cos_tab);
    free_call_buffers(kv);
    for (DevSet &s : kv->sets) drop_set(s);
    for (DevProj &p : kv->projs) {
        gpu_free(p.A);
        gpu_free(p.BT);
    }
    delete kv;
}

// The queued slot copies, in launches of up to COPIES_PER_LAUNCH (the queue never holds a copy
// that reads a slot an earlier one writes, so their order inside a launch does not matter).
static void flush_copies(GpuKV *kv) {
    GpuModel *g = kv->g;
    size_t row_bytes = (size_t)kv->KVW * g->es, slot_bytes = kv->max_len * row_bytes;
    for (size_t at = 0; at < kv->copies.size(); at += 3 * COPIES_PER_LAUNCH) {
        SlotCopies c;
        c.n = (int)std::min((size_t)COPIES_PER_LAUNCH, (kv->copies.size() - at) / 3);
        for (int i = 0; i < c.n; i++) {
            c.dst[i] = kv->copies[at + 3 * i];
            c.src[i] = kv->copies[at + 3 * i + 1];
            c.len[i] = kv->copies[at + 3 * i + 2];
        }
        slot_copy_kernel<<<dim3(c.n, 2 * kv->n_layer), 256, 0, g->st>>>(kv->KV_d, c, slot_bytes, row_bytes);
        KCHECK();
    }
    kv->copies.clear();
}

// Queued (one kernel for a whole beam-search step's copies instead of two memcpys per layer and
// copy): done before the next forward, or now when this copy would read or overwrite a slot that
// a queued one writes or reads.
extern "C" int gpu_kv_copy(GpuKV *kv, int dst, int src, int len) {
    gpu_clear_failure();
    if (len <= 0) return 0;
    for (size_t i = 0; i < kv->copies.size(); i += 3)
        if (kv->copies[i] == src || kv->copies[i] == dst || kv->copies[i + 1] == dst) {
            flush_copies(kv);
            break;
        }
    kv->copies.insert(kv->copies.end(), {dst, src, len});
    return gpu_report_failure();
}

// ---------------- adapter sets on the device ----------------
// fp32 host values into the activation type, appended to a host image of the upload.
static size_t put_tensor(std::vector<char> &img, bool bf, const float *v, size_t n, float scale = 1.0f, const float *colv = nullptr,
                         int cols = 0) {
    size_t off = (img.size() + 15) & ~(size_t)15, es = bf ? 2 : 4;
    img.resize(off + n * es);
    for (size_t i = 0; i < n; i++) {
        float x = v[i] * scale * (colv ? colv[i % cols] : 1.0f);
        if (bf) {
            bf16 b = __float2bfloat16(x);
            memcpy(&img[off + i * 2], &b, 2);
        } else memcpy(&img[off + i * 4], &x, 4);
    }
    return off;
}

static int find_proj(GpuKV *kv, const AdapterSet *set) {
    for (size_t i = 0; i < kv->projs.size(); i++) {
        const DevProj &p = kv->projs[i];
        if (p.fingerprint == set->vera_fingerprint && p.r == set->cfg.r && p.max_in == set->vera_max_in && p.max_out == set->vera_max_out)
            return (int)i;
    }
    GpuModel *g = kv->g;
    DevProj p = {set->vera_fingerprint, set->cfg.r, set->vera_max_in, set->vera_max_out, nullptr, nullptr};
    std::vector<char> ia, ibt;
    std::vector<float> bt((size_t)p.r * p.max_out);
    for (int o = 0; o < p.max_out; o++)
        for (int k = 0; k < p.r; k++) bt[(size_t)k * p.max_out + o] = set->vera_B[(size_t)o * p.r + k];
    put_tensor(ia, g->is_bf16, set->vera_A, (size_t)p.r * p.max_in);
    put_tensor(ibt, g->is_bf16, bt.data(), bt.size());
    p.A = gpu_malloc(ia.size(), "VeRA's projections");
    p.BT = gpu_malloc(ibt.size(), "VeRA's projections");
    if (!p.A || !p.BT) {
        gpu_free(p.A);
        gpu_free(p.BT);
        return -1;
    }
    CU(cudaMemcpy(p.A, ia.data(), ia.size(), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(p.BT, ibt.data(), ibt.size(), cudaMemcpyHostToDevice));
    kv->projs.push_back(p);
    return (int)kv->projs.size() - 1;
}

enum { MAX_CACHED_SETS = 512 };

// The device copy of set (uploaded on first use); NULL + error on failure.
static DevSet *device_set(GpuKV *kv, const AdapterSet *set) {
    for (DevSet &s : kv->sets)
        if (s.uid == set->uid) {
            s.last_used = kv->calls;
            return &s;
        }
    GpuModel *g = kv->g;
    Model *m = g->m;
    if (kv->sets.size() >= MAX_CACHED_SETS) {  // forget the least recently used set not in this call
        auto lru = std::min_element(kv->sets.begin(), kv->sets.end(), [](const DevSet &a, const DevSet &b) { return a.last_used < b.last_used; });
        if (lru->last_used < kv->calls) {
            CU(cudaStreamSynchronize(g->st));
            drop_set(*lru);
            kv->sets.erase(lru);
        }
    }
    DevSet ds = {set->uid, kv->calls, nullptr, -1, 0};
    GpuKind kind = set_kind(set);
    if (!gpu_infer_supports(kind)) {
        peft_fail("CUDA backend: %s adapters are not applied per row on the GPU (merged into the weights they run: peft generate "
                  "merges unless --no-merge; the CPU serves them)", method_get(set->cfg.type) ? method_get(set->cfg.type)->title : "these");
        return nullptr;
    }
    bool vera = kind == AD_VERA;
    if (vera && (ds.proj = find_proj(kv, set)) < 0) return nullptr;
    std::vector<RowAd> ents(m->n_linears);
    // Each entry's two tensors in the image: LoRA / AdaLoRA A and B, VeRA lambda_d and lambda_b.
    std::vector<size_t> off1(m->n_linears), off2(m->n_linears);
    std::vector<char> img(sizeof(RowAd) * m->n_linears);
    for (int li = 0; li < m->n_linears; li++) {
        const Adapter *a = set->by_linear[li];
        RowAd &e = ents[li];
        memset(&e, 0, sizeof e);
        if (!a || a->r <= 0) continue;
        const Linear *lin = &m->linears[li];
        e.r = a->r;
        e.kind = kind;
        if (vera) {
            off1[li] = put_tensor(img, false, a->lambda_d->w, (size_t)a->r);
            off2[li] = put_tensor(img, false, a->lambda_b->w, (size_t)lin->out);
        } else {
            off1[li] = put_tensor(img, g->is_bf16, a->A->w, (size_t)a->r * lin->in);
            off2[li] = put_tensor(img, g->is_bf16, a->B->w, (size_t)lin->out * a->r, a->scaling, a->E ? a->E->w : nullptr, a->r);
            ds.max_r = std::max(ds.max_r, a->r);
        }
    }
    ds.mem = gpu_malloc(img.size(), "an adapter's tensors");
    if (!ds.mem) return nullptr;
    char *base = (char *)ds.mem;
    for (int li = 0; li < m->n_linears; li++) {
        RowAd &e = ents[li];
        if (!e.r) continue;
        if (e.kind == AD_VERA) {
            e.lambda_d = (const float *)(base + off1[li]);
            e.lambda_b = (const float *)(base + off2[li]);
        } else {
            e.A = base + off1[li];
            e.B = base + off2[li];
        }
    }
    memcpy(img.data(), ents.data(), sizeof(RowAd) * m->n_linears);
    CU(cudaMemcpy(ds.mem, img.data(), img.size(), cudaMemcpyHostToDevice));
    if (gpu_failed()) {
        gpu_free(ds.mem);
        return nullptr;
    }
    kv->sets.push_back(ds);
    return &kv->sets.back();
}

// ---------------- the forward ----------------
// What this call's rows need from the adapters.
struct CallAdapters {
    bool any;
    int rmax;                 // LoRA/AdaLoRA rank slots per member in h (rounded up to 8)
    int vbase, vr;            // VeRA: h columns from vbase, vr per projection in this call
    std::vector<int> projs;   // VeRA projections used by this call's rows
    std::vector<char> lora_li, vera_li;  // [n_linears]: some row has a LoRA/AdaLoRA (VeRA) adapter there
};

template <typename T> static void linear_group(GpuKV *kv, const Group *G, const Members *mb, const T *x, T *y, int ldy, bool resid, int N,
                                               const CallAdapters &ca) {
    GpuModel *g = kv->g;
    constexpr GDtype TT = gdtype<T>();
    gpu_quant_dequant<T>(g, G);  // a quantized base: this group's weights into the scratch (G->w)
    gemm(g->gc, false, !G->fifo, N, G->out, G->in, 1.0f, x, G->in, TT, G->w, G->fifo ? G->out : G->in, TT, resid ? 1.0f : 0.0f,
         resid ? y : nullptr, y, ldy, TT, G->b);
    if (!ca.any) return;
    bool lora = false, vera = false;
    for (int i = 0; i < mb->n; i++) {
        lora |= ca.lora_li[mb->li[i]] != 0;
        vera |= ca.vera_li[mb->li[i]] != 0;
    }
    if (!lora && !vera) return;
    int ldh = kv->h_cap;
    if (lora) {
        int rchunks = cdiv(ca.rmax, 4);
        row_shrink_kernel<T><<<dim3(N, mb->n * rchunks), 128, 0, g->st>>>(kv->h, ldh, x, G->in, kv->rowad_d, *mb, ca.rmax, rchunks);
        KCHECK();
    }
    if (vera)  // the rows share A: x A^T as one GEMM per projection, for every row (only VeRA rows' are read)
        for (size_t p = 0; p < ca.projs.size(); p++) {
            const DevProj &pr = kv->projs[ca.projs[p]];
            gemm(g->gc, false, true, N, pr.r, G->in, 1.0f, x, G->in, TT, pr.A, pr.max_in, TT, 0.0f, nullptr, kv->h + ca.vbase + p * ca.vr,
                 ldh, G_F32, nullptr);
        }
    if (lora) {
        size_t shm = sizeof(float) * (size_t)mb->n * ca.rmax;
        row_expand_kernel<T><<<dim3(N, cdiv(G->out, EXPAND_THREADS)), EXPAND_THREADS, shm, g->st>>>(y, ldy, kv->h, ldh, kv->rowad_d, *mb,
                                                                                                        ca.rmax, G->out);
        KCHECK();
    }
    if (vera)
        for (size_t p = 0; p < ca.projs.size(); p++) {
            const DevProj &pr = kv->projs[ca.projs[p]];
            int rows = (int)std::max<size_t>(1, std::min<size_t>(VERA_ROWS, (40u << 10) / (sizeof(float) * mb->n * pr.r)));
            size_t shm = sizeof(float) * (size_t)rows * mb->n * pr.r;
            vera_expand_kernel<T><<<dim3(cdiv(N, rows), cdiv(G->out, VERA_COLS)), VERA_THREADS, shm, g->st>>>(
                y, ldy, kv->h, ldh, kv->rowad_d, kv->voff_d, ca.vbase + (int)p * ca.vr, *mb, (const T *)pr.BT, pr.max_out, pr.r, rows, N, G->out);
            KCHECK();
        }
}

template <typename T> static void layer_infer(GpuKV *kv, int l, int N, const CallAdapters &ca, bool fresh) {
    GpuModel *g = kv->g;
    Layer *Ly = &g->L[l];
    const Members *mb = &kv->mem[l * 4];
    int C = g->C;
    float eps = g->cfg.norm_eps;
    T *x = (T *)kv->x, *xn = (T *)kv->xn, *qkv = (T *)kv->qkv, *att = (T *)kv->att;
    k_norm_fwd<T>(xn, g->gpt2 ? kv->mean : nullptr, kv->rstd, x, (T *)Ly->n1w, (T *)Ly->n1b, N, C, eps, g->gpt2, false, g->st);
    linear_group<T>(kv, &Ly->qkv, &mb[0], xn, qkv, g->S, false, N, ca);
    if (!g->gpt2) k_rope_fwd<T>(qkv, kv->cos_rows, kv->sin_rows, nullptr, N, N, g->NH, g->NKV, g->HD, g->S, g->QW, g->st);
    if (!fresh) {  // (fresh: the attention kernel appends them)
        long total = (long)N * g->KVW;
        kv_append_kernel<T><<<std::min(cdiv(total, 256), 65535), 256, 0, g->st>>>((T *)kv->K[l], (T *)kv->V[l], qkv, g->S, g->QW, g->KVW,
                                                                                     kv->slot_d, kv->pos_d, N, kv->max_len);
        KCHECK();
    }
    kv_attention_kernel<T><<<dim3(N, g->NH), ATT_THREADS, 0, g->st>>>(att, qkv, g->S, (T *)kv->K[l], (T *)kv->V[l], kv->slot_d, kv->pos_d,
                                                                      g->NH, g->NKV, g->HD, g->KVW, g->QW, kv->max_len, g->cfg.sliding_window,
                                                                      1.0f / sqrtf((float)g->HD), fresh);
    KCHECK();
    linear_group<T>(kv, &Ly->o, &mb[1], att, x, C, true, N, ca);  // x += attention out
    k_norm_fwd<T>(xn, g->gpt2 ? kv->mean : nullptr, kv->rstd, x, (T *)Ly->n2w, (T *)Ly->n2b, N, C, eps, g->gpt2, false, g->st);
    linear_group<T>(kv, &Ly->up, &mb[2], xn, (T *)kv->fc, g->upw, false, N, ca);
    if (g->gpt2) k_gelu_fwd<T>((T *)kv->act, (T *)kv->fc, (long)N * g->actw, g->st);
    else k_swiglu_fwd<T>((T *)kv->act, (T *)kv->fc, N, g->I, g->st);
    linear_group<T>(kv, &Ly->down, &mb[3], (T *)kv->act, x, C, true, N, ca);  // x += MLP out
}

// Whether the N tokens are in N different slots (a decode step), kv->seen's marks cleared after.
static bool one_token_per_slot(GpuKV *kv, int N, const int *slot) {
    if (N > kv->n_slots) return false;
    kv->seen.assign(kv->n_slots, 0);
    bool one = true;
    for (int n = 0; n < N && one; n++) {
        if (slot[n] < 0 || slot[n] >= kv->n_slots || kv->seen[slot[n]]) one = false;
        else kv->seen[slot[n]] = 1;
    }
    return one;
}

// One step on the device, from the staged row data (kv->host) to the chosen tokens (kv->next_host,
// sel) or the logits (kv->logits_host, or logits itself when they are too many for it): what a
// step's CUDA graph holds. Nothing in it reads the host but the staged rows.
template <typename T> static void enqueue_step(GpuKV *kv, const StepKey &k, bool sel, const CallAdapters &ca, float *logits) {
    GpuModel *g = kv->g;
    constexpr GDtype TT = gdtype<T>();
    int N = k.N, n_out = k.n_out;
    size_t rowad_off = (char *)kv->rowad_d - (char *)kv->ids_d;
    CU(cudaMemcpyAsync(kv->ids_d, kv->host, rowad_off + sizeof(void *) * N, cudaMemcpyHostToDevice, g->st));
    int half = g->HD / 2;
    embed_pos_kernel<T><<<N, 256, 0, g->st>>>((T *)kv->x, kv->ids_d, kv->pos_d, (const T *)g->wte, (const T *)g->wpe, g->C, kv->cos_tab,
                                              kv->sin_tab, g->gpt2 ? nullptr : kv->cos_rows, kv->sin_rows, half);
    KCHECK();
    for (int l = 0; l < kv->n_layer; l++) layer_infer<T>(kv, l, N, ca, k.fresh);
    // The head over the rows whose logits are wanted.
    const T *hx = (const T *)kv->x;
    if (k.gather) {
        gather_rows_kernel<T><<<n_out, 256, 0, g->st>>>((T *)kv->att, (const T *)kv->x, kv->outrows_d, g->C);  // att is free now
        KCHECK();
        hx = (const T *)kv->att;
    }
    k_norm_fwd<T>((T *)kv->xn, g->gpt2 ? kv->mean : nullptr, kv->rstd, hx, (T *)g->nfw, (T *)g->nfb, n_out, g->C, g->cfg.norm_eps, g->gpt2,
                  false, g->st);
    gemm(g->gc, false, true, n_out, g->V, g->C, 1.0f, kv->xn, g->C, TT, g->head, g->C, TT, 0.0f, nullptr, kv->logits, g->V, G_F32, nullptr);
    if (sel) {  // only the tokens come back
        k_select_tokens(kv->next_d, kv->logits, n_out, g->V, kv->pos_d, k.gather ? kv->outrows_d : nullptr, &k.s, g->st);
        CU(cudaMemcpyAsync(kv->next_host, kv->next_d, sizeof(int32_t) * n_out, cudaMemcpyDeviceToHost, g->st));
        return;
    }
    // Through pinned memory when it fits (a copy into pageable memory is several times slower).
    size_t lbytes = sizeof(float) * (size_t)n_out * g->V;
    CU(cudaMemcpyAsync(n_out <= LOGITS_PINNED_ROWS ? kv->logits_host : logits, kv->logits, lbytes, cudaMemcpyDeviceToHost, g->st));
}

// The graph of this step's shape: found, or captured when the previous call had the same shape (a
// shape's first call runs as launched kernels, which also makes its GEMM plans: planning times
// candidates, which a capture cannot). NULL: run it launched. A capture that fails (a call the
// driver cannot capture) turns graphs off for this cache; the step then runs as before.
template <typename T> static StepGraph *step_graph(GpuKV *kv, const StepKey &k, const CallAdapters &ca) {
    for (StepGraph &sg : kv->graphs)
        if (same_key(sg.key, k)) {
            sg.last_used = kv->calls;
            return &sg;
        }
    bool repeated = kv->have_last && same_key(kv->last_key, k);
    kv->last_key = k;
    kv->have_last = true;
    if (!repeated) return nullptr;
    if (kv->graphs.size() >= MAX_STEP_GRAPHS) {
        auto lru = std::min_element(kv->graphs.begin(), kv->graphs.end(),
                                    [](const StepGraph &a, const StepGraph &b) { return a.last_used < b.last_used; });
        cudaGraphExecDestroy(lru->exec);
        kv->graphs.erase(lru);
    }
    GpuModel *g = kv->g;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    bool ok = cudaStreamBeginCapture(g->st, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
    if (ok) {
        enqueue_step<T>(kv, k, true, ca, nullptr);
        ok = cudaStreamEndCapture(g->st, &graph) == cudaSuccess && !gpu_failed();
    }
    if (ok) ok = cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
    if (graph) cudaGraphDestroy(graph);
    if (!ok) {
        if (exec) cudaGraphExecDestroy(exec);
        const char *why = gpu_failed() ? (gpu_report_failure(), peft_last_error()) : cudaGetErrorString(cudaGetLastError());
        fprintf(stderr, "peft: CUDA graph capture of a decode step failed (%s); this cache runs its steps as launched kernels\n", why);
        cudaGetLastError();  // the capture's error, not the step's (nothing ran)
        gpu_clear_failure();
        kv->graphs_on = false;
        return nullptr;
    }
    kv->graphs.push_back({k, exec, kv->calls});
    return &kv->graphs.back();
}

template <typename T>
static int forward_infer(GpuKV *kv, int N, const int32_t *ids, const int *slot, const int *pos, AdapterSet *const *row_sets,
                         const int *out_rows, int n_out, float *logits, const GpuSampling *sel, int32_t *next) {
    GpuModel *g = kv->g;
    Model *m = g->m;
    kv->calls++;
    // The adapters of this call: upload new sets, and note what each linear needs.
    CallAdapters ca = {};
    ca.lora_li.assign(m->n_linears, 0);
    ca.vera_li.assign(m->n_linears, 0);
    std::vector<const RowAd *> rowad(N, nullptr);
    std::vector<int> voff(N, 0), proj_of(N, -1);
    const AdapterSet *last = nullptr;
    DevSet *ds = nullptr;
    for (int n = 0; n < N; n++) {
        const AdapterSet *set = row_sets ? row_sets[n] : nullptr;
        if (!set) continue;
        if (set != last) {  // rows of one request come together
            if (!(ds = device_set(kv, set))) return gpu_failed() ? gpu_report_failure() : -1;  // -1: device_set's peft_fail
            last = set;
            for (int li = 0; li < m->n_linears; li++)
                if (set->by_linear[li] && set->by_linear[li]->r > 0) (ds->proj >= 0 ? ca.vera_li : ca.lora_li)[li] = 1;
            if (ds->proj >= 0 && std::find(ca.projs.begin(), ca.projs.end(), ds->proj) == ca.projs.end()) ca.projs.push_back(ds->proj);
            ca.rmax = std::max(ca.rmax, ds->max_r);
        }
        ca.any = true;
        rowad[n] = (const RowAd *)ds->mem;
        proj_of[n] = ds->proj;
    }
    ca.rmax = (ca.rmax + 7) / 8 * 8;
    for (int p : ca.projs) {
        ca.vr = std::max(ca.vr, (kv->projs[p].r + 7) / 8 * 8);
        if (sizeof(float) * 3 * kv->projs[p].r > (40u << 10))  // vera_expand_kernel's shared memory
            return peft_fail("CUDA inference: VeRA rank %d is above the GPU path's limit (3413)", kv->projs[p].r);
    }
    ca.vbase = 3 * ca.rmax;
    for (int n = 0; n < N; n++)
        if (proj_of[n] >= 0) voff[n] = ca.vbase + (int)(std::find(ca.projs.begin(), ca.projs.end(), proj_of[n]) - ca.projs.begin()) * ca.vr;
    if (ensure_call_buffers(kv, N, ca.vbase + (int)ca.projs.size() * ca.vr)) return -1;
    // Row data: one pinned staging buffer, one copy (made by the step itself: a graph replays it).
    char *hb = (char *)kv->host;
    size_t ib = sizeof(int) * (size_t)N;
    int cap = kv->cap;
    memcpy(hb, ids, ib);
    memcpy(hb + sizeof(int) * cap, pos, ib);
    memcpy(hb + sizeof(int) * 2 * cap, slot, ib);
    memcpy(hb + sizeof(int) * 3 * cap, voff.data(), ib);
    if (out_rows) memcpy(hb + sizeof(int) * 4 * cap, out_rows, sizeof(int) * n_out);
    memcpy(hb + ((char *)kv->rowad_d - (char *)kv->ids_d), rowad.data(), sizeof(void *) * N);
    // Decode steps of one shape without adapters: a CUDA graph of the whole step.
    StepKey key = {N, n_out, out_rows != nullptr, one_token_per_slot(kv, N, slot), sel ? *sel : GpuSampling{}};
    StepGraph *sg = sel && !ca.any && kv->graphs_on ? step_graph<T>(kv, key, ca) : nullptr;
    if (sg) CU(cudaGraphLaunch(sg->exec, g->st));
    else enqueue_step<T>(kv, key, sel != nullptr, ca, logits);
    CU(cudaStreamSynchronize(g->st));
    if (gpu_failed()) return gpu_report_failure();
    if (sel) memcpy(next, kv->next_host, sizeof(int32_t) * n_out);
    else if (n_out <= LOGITS_PINNED_ROWS) memcpy(logits, kv->logits_host, sizeof(float) * (size_t)n_out * g->V);
    return 0;
}

extern "C" int gpu_kv_forward(GpuKV *kv, int N, const int32_t *ids, const int *slot, const int *pos, AdapterSet *const *row_sets,
                              const int *out_rows, int n_out, float *logits) {
    gpu_clear_failure();
    if (N <= 0 || n_out <= 0) return peft_fail("gpu_kv_forward: no rows");
    if (!out_rows && n_out != N) return peft_fail("gpu_kv_forward: all logits means n_out == N");
    flush_copies(kv);
    if (gpu_failed()) return gpu_report_failure();
    return kv->g->is_bf16 ? forward_infer<bf16>(kv, N, ids, slot, pos, row_sets, out_rows, n_out, logits, nullptr, nullptr)
                          : forward_infer<float>(kv, N, ids, slot, pos, row_sets, out_rows, n_out, logits, nullptr, nullptr);
}

extern "C" int gpu_kv_forward_next(GpuKV *kv, int N, const int32_t *ids, const int *slot, const int *pos, AdapterSet *const *row_sets,
                                   const int *out_rows, int n_out, const GpuSampling *s, int32_t *next) {
    gpu_clear_failure();
    if (N <= 0 || n_out <= 0) return peft_fail("gpu_kv_forward_next: no rows");
    if (!out_rows && n_out != N) return peft_fail("gpu_kv_forward_next: all rows means n_out == N");
    if (!s || !next) return peft_fail("gpu_kv_forward_next: no sampling parameters or output");
    if (!gpu_sampling_greedy(s) && !(s->top_k >= 0 && s->top_p > 0 && s->top_p <= 1))
        return peft_fail("gpu_kv_forward_next: top_k %d / top_p %g out of range", s->top_k, s->top_p);
    flush_copies(kv);
    if (gpu_failed()) return gpu_report_failure();
    return kv->g->is_bf16 ? forward_infer<bf16>(kv, N, ids, slot, pos, row_sets, out_rows, n_out, nullptr, s, next)
                          : forward_infer<float>(kv, N, ids, slot, pos, row_sets, out_rows, n_out, nullptr, s, next);
}

extern "C" int gpu_inference_attach(Model *m, GpuPrecision precision) {
    if (m->gpu) return 0;
    GpuOptions o = {};
    o.precision = precision;
    o.base_only = true;
    m->gpu = gpu_model_create(m, &o);
    return m->gpu ? 0 : -1;
}

extern "C" void gpu_inference_detach(Model *m) {
    gpu_model_free(m->gpu);
    m->gpu = nullptr;
}
