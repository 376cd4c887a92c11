// kernels.h: the numeric building blocks of the CPU path (fp32, OpenMP, OpenBLAS).
// Shapes: N rows (= B*T tokens) of width C; attention over B sequences of T tokens with
// NH query heads and NKV key/value heads of size HD. Backward functions ACCUMULATE (+=)
// into their gradient outputs, so shared inputs (residuals, tied weights) just work.
#pragma once
#include <stdbool.h>
#include <stdint.h>

// The element-wise loops (activations, norms, softmax, cross-entropy, AdamW) are compiled for
// AVX-512 and AVX2 beside the build's baseline (x86-64-v2: 4 floats a vector) and the loader picks
// the CPU's (an ifunc). Vector width changes no element-wise result (and -std=c11 contracts no FMA);
// only a simd reduction's order follows it.
#if defined(__x86_64__) && defined(__GNUC__)
#define SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SIMD_CLONES
#endif

// C[M,N] = alpha * op(A) op(B) + beta * C, row-major. op(A) is [M,K]: A is stored [M,K],
// or [K,M] when transA. op(B) is [K,N]: B is stored [K,N], or [N,K] when transB.
void matmul(float *C, const float *A, const float *B, int M, int N, int K, bool transA, bool transB, float alpha, float beta);
// The same with explicit leading dimensions (for column slices such as VeRA's A[:, :in]).
void matmul_ld(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int N, int K,
               bool transA, bool transB, float alpha, float beta);

// bf16 weights for inference (model_keep_bf16): a bf16 value's bits are the upper half of its fp32's, so
// widening is exact and a product with a bf16 weight equals the fp32 weight's up to summation order.
static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}
// C[M,N] = A[M,K] W^T with W [N,K] (nn.Linear's layout) in bf16, products and sums in fp32. A few rows
// (decode steps): W read once, from bf16; more rows: blocks of W widened to fp32 for sgemm.
void matmul_bf16(float *C, const float *A, const uint16_t *W, int M, int N, int K);

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b, int N, int C, float eps);
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                        const float *mean, const float *rstd, int N, int C);
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps);
void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w, const float *rstd, int N, int C);

void gelu_forward(float *out, const float *inp, long n);                 // GPT-2's tanh approximation
void gelu_backward(float *dinp, const float *inp, const float *dout, long n);
void swiglu_forward(float *out, const float *gate, const float *up, long n);  // silu(gate) * up
void swiglu_backward(float *dgate, float *dup, const float *gate, const float *up, const float *dout, long n);

// Rotary embeddings in the rotate_half layout, applied in place to x [B*T, nheads*HD].
// cos/sin are [T, HD/2] tables (see rope_tables). pos [B*T] gives each token's position (packed
// sequences restart at 0 in every example); NULL: t in every row.
void rope_tables(float *cos_t, float *sin_t, int T, int HD, const float *inv_freq);
void rope_forward(float *x, const float *cos_t, const float *sin_t, int B, int T, int nheads, int HD, const int32_t *pos);
void rope_backward(float *dx, const float *cos_t, const float *sin_t, int B, int T, int nheads, int HD, const int32_t *pos);

// Causal softmax attention. q/k/v rows have strides qs/ks/vs floats (GPT-2 packs them in one
// [N, 3C] buffer). att [B, NH, T, T] keeps the probabilities for backward. window > 0 limits
// each query to the last `window` keys (Mistral's sliding window). pos [B*T] (packing; NULL:
// none): each token's position in its example, so that a query at t attends only to keys from
// t - pos[t] on, its own example's.
typedef struct { int B, T, NH, NKV, HD, window; float scale; const int32_t *pos; } AttnShape;
void attention_forward(float *out, float *att, const float *q, int qs, const float *k, int ks, const float *v, int vs, AttnShape s);
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *att,
                        const float *q, int qs, const float *k, int ks, const float *v, int vs, AttnShape s);

// The instruction-set level of an OpenBLAS kernel family (openblas_get_corename()) and of this CPU:
// 2 = AVX-512 (F, BW, VL, DQ), 1 = AVX2 + FMA, 0 = older. At load time peft.c raises OpenBLAS's choice
// to the CPU's level unless OPENBLAS_CORETYPE is set (OpenBLAS 0.3.21 misjudges recent CPUs).
int blas_core_level(const char *core);
int cpu_vector_level(void);

// log(sum_j e^x_j) over x [n], stably (the row's maximum taken out first).
double row_logsumexp(const float *x, int n);

// Causal-LM cross-entropy as transformers computes it: position t predicts labels[t+1],
// labels of -100 are ignored, the loss is the mean over kept positions. Writes dlogits
// (d mean loss / d logits) in place of the logits when want_grad. Returns the loss and
// the number of kept positions in *count.
double cross_entropy_shifted(float *logits, const int32_t *labels, int B, int T, int V, bool want_grad, int *count);

void add_inplace(float *a, const float *b, long n);
void add_bias(float *y, const float *bias, int N, int C);
void bias_backward(float *dbias, const float *dy, int N, int C);
