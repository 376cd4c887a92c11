// gpu_internal.cuh: what the CUDA sources share: types, error recording, vector loads, and the
// launchers of gpu_kernels.cu / gpu_attention.cu / gpu_gemm.cu (templated on the activation
// type T: float in the fp32 parity mode, bf16 otherwise).
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// ---- errors: the first failure is recorded (with file:line) and reported at the API boundary ----
extern "C" int peft_fail(const char *fmt, ...);
bool gpu_record(cudaError_t e, const char *what, const char *file, int line);
bool gpu_record_blas(cublasStatus_t s, const char *what, const char *file, int line);
bool gpu_failed(void);          // an error has been recorded since the last gpu_clear_failure
void gpu_clear_failure(void);
int gpu_report_failure(void);   // peft_fail with the recorded message; returns -1 (0 when none)
#define CU(x) gpu_record((x), #x, __FILE__, __LINE__)
#define BLAS(x) gpu_record_blas((x), #x, __FILE__, __LINE__)
#define KCHECK() gpu_record(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
// Device allocations go through these, so gpu_peak_bytes() counts every byte we hold (NULL + recorded error on failure).
void *gpu_malloc(size_t n, const char *what);
void gpu_free(void *p);

// ---- conversions and 16-byte vectors ----
template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<bf16>(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }

// Blocks for n items at b per block.
static inline int cdiv(long a, long b) { return (int)((a + b - 1) / b); }

// Sum / maximum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// VN elements of T: 16 bytes (VN = 16/sizeof(T)) or a single element (VN = 1); stores also 8 bytes.
template <typename T, int VN> __device__ __forceinline__ void ldv(const T *p, float *f) {
    if constexpr (VN * sizeof(T) == 16) {
        uint4 u = *reinterpret_cast<const uint4 *>(p);
        const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
        for (int i = 0; i < VN; i++) f[i] = to_f<T>(e[i]);
    } else {
#pragma unroll
        for (int i = 0; i < VN; i++) f[i] = to_f<T>(p[i]);
    }
}
template <typename T, int VN> __device__ __forceinline__ void stv(T *p, const float *f) {
    if constexpr (VN * sizeof(T) == 16) {
        uint4 u;
        T *e = reinterpret_cast<T *>(&u);
#pragma unroll
        for (int i = 0; i < VN; i++) e[i] = from_f<T>(f[i]);
        *reinterpret_cast<uint4 *>(p) = u;
    } else if constexpr (VN * sizeof(T) == 8) {
        uint2 u;
        T *e = reinterpret_cast<T *>(&u);
#pragma unroll
        for (int i = 0; i < VN; i++) e[i] = from_f<T>(f[i]);
        *reinterpret_cast<uint2 *>(p) = u;
    } else {
#pragma unroll
        for (int i = 0; i < VN; i++) p[i] = from_f<T>(f[i]);
    }
}
// VN floats (16-byte aligned when VN is a multiple of 4: float4 accesses).
template <int VN> __device__ __forceinline__ void ld_f32(const float *p, float *f) {
    if constexpr (VN % 4 == 0) {
#pragma unroll
        for (int i = 0; i < VN; i += 4) *reinterpret_cast<float4 *>(f + i) = *reinterpret_cast<const float4 *>(p + i);
    } else {
#pragma unroll
        for (int i = 0; i < VN; i++) f[i] = p[i];
    }
}
template <int VN> __device__ __forceinline__ void st_f32(float *p, const float *f) {
    if constexpr (VN % 4 == 0) {
#pragma unroll
        for (int i = 0; i < VN; i += 4) *reinterpret_cast<float4 *>(p + i) = *reinterpret_cast<const float4 *>(f + i);
    } else {
#pragma unroll
        for (int i = 0; i < VN; i++) p[i] = f[i];
    }
}

// ---- GEMM (gpu_gemm.cu): row-major D[M,N] = alpha op(A) op(B) + beta C (+ bias[N]) ----
enum GDtype { G_F32 = 0, G_BF16 = 1 };
template <typename T> constexpr GDtype gdtype() { return sizeof(T) == 4 ? G_F32 : G_BF16; }
struct GemmCtx;
GemmCtx *gemm_ctx_new(cudaStream_t stream);
void gemm_ctx_free(GemmCtx *c);
// op(A) is [M,K]: A stored [M,K] (lda >= K), or [K,M] when transA. op(B) is [K,N]: B stored [K,N], or [N,K] when transB.
// C may equal D (in place); beta == 0 ignores C. bias (type td, length N) may be NULL.
void gemm(GemmCtx *c, bool transA, bool transB, int M, int N, int K, float alpha, const void *A, int lda, GDtype ta,
          const void *B, int ldb, GDtype tb, float beta, const void *C, void *D, int ldd, GDtype td, const void *bias);

// ---- kernels (gpu_kernels.cu) ----
template <typename T> void k_convert_f32(T *dst, const float *src, long n, cudaStream_t s);
// Benchmarks: normal(0, std) from a counter-based hash (seed, index), or a constant when std < 0 (value -std - 1).
template <typename T> void k_fill_random(T *dst, long n, float std, uint64_t seed, cudaStream_t s);
// pos [N] (packing: each token's position in its example) or NULL: row n's position is n % Tn.
template <typename T> void k_embed_fwd(T *out, const int *ids, const T *wte, const T *wpe, const int *pos, int N, int Tn, int C, cudaStream_t s);
void k_embed_bwd(float *wte_g, float *wpe_g, const float *dres, const int *ids, const int *pos, int N, int Tn, int C, cudaStream_t s);
// LayerNorm (b != NULL or mean != NULL) or RMSNorm (mean == NULL). stats_only=false: also writes out.
// With have_stats, reuses mean/rstd (recompute in backward) instead of computing them.
template <typename T> void k_norm_fwd(T *out, float *mean, float *rstd, const T *x, const T *w, const T *b, int N, int C,
                                     float eps, bool layernorm, bool have_stats, cudaStream_t s);
// dres[N,C] (fp32) += d norm input; dres_t (may be NULL) = T(dres); dw/db (may be NULL) += weight grads.
// dres_t rows have stride ldt (>= C).
template <typename T> void k_norm_bwd(float *dres, T *dres_t, float *dw, float *db, const T *dout, const T *x, const T *w,
                                     const float *mean, const float *rstd, int N, int C, bool layernorm, cudaStream_t s, int ldt);
template <typename T> void k_gelu_fwd(T *out, const T *x, long n, cudaStream_t s);
template <typename T> void k_gelu_bwd(T *dx, const T *x, const T *dout, long n, cudaStream_t s);
template <typename T> void k_swiglu_fwd(T *out, const T *gu, int N, int I, cudaStream_t s);
// dgu rows have stride ldo (>= 2I).
template <typename T> void k_swiglu_bwd(T *dgu, const T *gu, const T *dout, int N, int I, cudaStream_t s, int ldo);
// rotate_half rope, in place on the q and k columns of qkv rows [N, S] (q: NH heads from col 0, k: NKV heads from col QW);
// row n takes table row pos[n] (packing), or n % Tn when pos is NULL.
template <typename T> void k_rope_fwd(T *qkv, const float *cos_t, const float *sin_t, const int *pos, int N, int Tn, int NH, int NKV,
                                     int HD, int S, int QW, cudaStream_t s);
// dqkv[:, :QW] = rope^-1(dq_acc); when dkv_acc: dqkv[:, QW:] = (rope^-1 on k)(dkv_acc). cos_t NULL: no rope.
// dqkv rows have stride ldo (>= S); pos as k_rope_fwd's.
template <typename T> void k_attn_finalize(T *dqkv, const float *dq_acc, const float *dkv_acc, const float *cos_t,
                                          const float *sin_t, const int *pos, int N, int Tn, int NH, int NKV, int HD, int S, int QW,
                                          cudaStream_t s, int ldo);
// Cross-entropy over rows of logits [rows, ld]: loss_rows[i] = logZ - x[target]; with grad, the row
// becomes (softmax - onehot) * inv_count. target < 0: loss 0 and a zero row.
template <typename T> void k_cross_entropy(T *logits, int ld, const int *targets, float *loss_rows, int rows, int V,
                                          float inv_count, bool grad, cudaStream_t s);
template <typename T> void k_bias_grad(float *db, const T *dy, int N, int width, int ld, cudaStream_t s);
template <typename T> void k_colsum_mul(float *out, const T *a, const T *b, int N, int width, int lda, cudaStream_t s);
// DoRA (gpu_dora.cu): norm[o] = sqrt(||W[o,:]||^2 + B[o,:] X[o,:]^T) (W [out, in], or [in, out] when fifo, row
// stride ldw; B, X fp32 [out, r]); the forward's rescale of a module's columns of y (in place); the backward's
// magnitude gradient from the kept output y (rope undone on its q, k columns) and dyg = dy g (dyg may be dy).
struct DoraRope {
    const float *cos_t, *sin_t;  // NULL: no column is rotated (rot_end 0)
    const int *pos;              // packed positions, or NULL for n % Tn
    int Tn, HD, col_off, rot_end;  // the module's first column in the group; the group's rotated columns [0, rot_end)
};
template <typename T>
void k_dora_norm(float *norm, const T *W, bool fifo, int ldw, const float *B, const float *X, int r, int out, int in, cudaStream_t s);
template <typename T> void k_dora_fwd(T *y, int ldy, const T *b, const T *resid, const float *norm, const float *m, int N, int out, cudaStream_t s);
template <typename T>
void k_dora_bwd(float *dm, T *dyg, const T *dy, int ldy, const T *y, const T *resid, int ldv, const T *b, const float *norm, const float *m,
                DoraRope rp, int N, int out, cudaStream_t s);
// Llama's MLP with DoRA on gate and up: k_swiglu_bwd and both modules' k_dora_bwd in one pass (gu's gate columns
// [0, I), up's [I, 2I); b NULL or the group's bias [2I]).
template <typename T>
void k_dora_swiglu_bwd(float *dm_g, float *dm_u, T *dgu, int ldo, const T *gu, const T *dout, const T *b, const float *norm_g, const float *m_g,
                       const float *norm_u, const float *m_u, int N, int I, cudaStream_t s);
// Adapters: Beff[o,k] = s * rowv[o] * B[o*ldb + k] * colv[k] (rowv/colv may be NULL = 1), as T.
template <typename T> void k_build_beff(T *beff, const float *B, int ldb, const float *rowv, const float *colv, float s, int out, int r,
                                       cudaStream_t st);
// From G = dy^T h [out, r] (fp32): drow[o] += s sum_k G B colv; dcol[k] += s sum_o G B rowv; dB[o,k] += s G colv[k].
// Any of drow/dcol/dB may be NULL.
void k_adapter_grads(float *drow, float *dcol, float *dB, const float *G, const float *B, int ldb, const float *rowv, const float *colv,
                     float s, int out, int r, cudaStream_t st);
void k_adalora_scores(float *avg_ipt, float *avg_unc, const float *p, const float *g, long n, float b1, float b2, cudaStream_t s);
// AdaLoRA's triplet j of a module, as offsets into the trainables' layout: A's row j (in values), E_j,
// and B's column j (out values, stride r).
struct AdaTriplet {
    long a, e, b;
    int in, out, r;
};
// score[t] = s(E_j) + mean s(A_j.) + mean s(B_.j) for each of the n triplets (s = avg_ipt * avg_unc).
void k_adalora_triplet_scores(const float *avg_ipt, const float *avg_unc, const AdaTriplet *trip, int n, double *score, cudaStream_t s);
// E_j = 0 in the masters (and the bf16 copies when work) for every triplet with kept[t] == 0.
void k_adalora_zero_ranks(float *master, bf16 *work, const AdaTriplet *trip, const unsigned char *kept, int n, cudaStream_t s);
void k_adamw(float *p, const float *g, float *m, float *v, bf16 *work, long n, float decay_mul, float b1, float b2,
             float eps, float step_size, float bc2_sqrt, cudaStream_t s);
void k_sumsq(float *partials, int n_partials, const float *x, long n, cudaStream_t s);
void k_scale(float *x, float k, long n, cudaStream_t s);
void k_add(float *x, const float *y, long n, cudaStream_t s);
// Adapter dropout (inverted, as torch's nn.Dropout): element i of [n] is kept when the 24-bit uniform
// hash u(seed, i) >= p, and then scaled by 1/(1-p); the mask is a pure function of (seed, i), so
// backward regenerates it. add = false: out = drop(x); add = true: out += drop(x) (masked input gradients).
template <typename T> void k_dropout(T *out, const T *x, long n, float p, uint64_t seed, bool add, cudaStream_t s);
// AdaLoRA's orthogonal regulariser: term t has D_t = M M^T or M^T M, [r[t], r[t]] fp32 at D + off[t].
// Per term (one block each): D_t -= I; ss[t] = ||D_t||_F^2 (double); D_t *= coef2 / sqrt(ss[t]) (0 when ss[t] == 0),
// which is d ||D_t||_F / d D_t times coef2 / 2, ready for the gradient GEMMs.
void k_orth_finalize(float *D, const long *off, const int *r, double *ss, int n_terms, double coef2, cudaStream_t s);

// ---- encoders (gpu_encoder.cu) ----
// x0 [N, C] = (wte[ids] + wtt[types]) + wpe[pos] (the embeddings' sum before their LayerNorm).
template <typename T>
void k_enc_embed(T *x0, const int *ids, const int *types, const int *pos, const T *wte, const T *wtt, const T *wpe, int N, int C, cudaStream_t s);
// The exact GELU (hidden_act "gelu"): out = x Phi(x); dx = GELU'(x) dout (written).
template <typename T> void k_gelu_erf_fwd(T *out, const T *x, long n, cudaStream_t s);
template <typename T> void k_gelu_erf_bwd(T *dx, const T *x, const T *dout, long n, cudaStream_t s);
// The head's tanh, and its backward from the output y: dx = dy (1 - y^2) (written).
template <typename T> void k_tanh_fwd(T *out, const T *x, long n, cudaStream_t s);
template <typename T> void k_tanh_bwd(T *dx, const T *y, const T *dy, long n, cudaStream_t s);
// out = a (fp32) + b.
template <typename T> void k_enc_sum(T *out, const float *a, const T *b, long n, cudaStream_t s);

// ---- attention (gpu_attention.cu) ----
struct AttnDims {
    int B, T, NH, NKV, HD, S, QW, KVW, window;
    float scale;
    int ldd;         // row stride of dqkv (>= S)
    const int *pos;  // packing: [B*T] each token's position in its example (0 at its first token, then +1
                     // each; validated by the caller), so that query t attends only to keys t - pos[t] .. t;
                     // NULL: one sequence per row
    // Encoders: bidirectional attention (every query sees every key of its row) over the keys whose kmask
    // [B*T] entry is non-zero (NULL: all); no window, no packing, and every row has a key (attn_check).
    bool bidir;
    const int *kmask;
};
// Refuses dimensions the kernels do not run (bidirectional attention with a window or packing; a bidirectional
// row without any key is the caller's to refuse, on the host). 0 or -1 with peft_last_error() set.
int attn_check(const AttnDims &d);
// out [N, QW], lse [B, NH, T] (natural log). qkv rows [N, S]: q | k | v.
template <typename T> void attn_forward(T *out, float *lse, const T *qkv, AttnDims d, cudaStream_t s);
// dqkv [N, S] (written), using dq_acc [N, QW] and dkv_acc [N, 2 KVW] fp32 scratch, Dbuf [B*NH*T].
template <typename T> void attn_backward(T *dqkv, float *dq_acc, float *dkv_acc, float *Dbuf, const T *dout, const T *out,
                                        const T *qkv, const float *lse, const float *cos_t, const float *sin_t, AttnDims d,
                                        cudaStream_t s);

// ---- the next token on the device (gpu_sample.cu) ----
struct GpuSampling;
bool gpu_sampling_greedy(const GpuSampling *s);  // temperature <= 0 or top_k == 1: the argmax
// next[r] for each of n_rows rows of fp32 logits [n_rows, V] (gpu.h GpuSampling); the draw of row r hashes
// pos[rows ? rows[r] : r] (device arrays).
void k_select_tokens(int32_t *next, const float *logits, int n_rows, int V, const int *pos, const int *rows, const GpuSampling *s,
                     cudaStream_t st);
