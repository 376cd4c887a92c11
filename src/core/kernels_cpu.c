// kernels_cpu.c: fp32 reference kernels. GEMMs go to OpenBLAS; the rest are OpenMP loops
// written for clarity first (each mirrors the formula in its header comment).
#include "kernels.h"
#include "util.h"
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// Loops over fewer elements than this stay on one thread: a decode step's one row of a norm, an
// activation or a residual is done before a parallel region would have started its threads.
enum { PAR_MIN_ELEMS = 16384 };

// OpenBLAS 0.3.21 (Debian 12's) does not know recent CPU models (as VMs report them) and may choose
// kernels below what the CPU runs: on AVX-512 Xeons it falls back to its Prescott (SSE3) kernels (sgemm
// at 33 instead of 144 GFLOP/s on 2 threads). AVX2 kernels on an AVX-512 CPU cost too (training on the
// development AMD EPYC: 1.6x slower with OPENBLAS_CORETYPE=Haswell than with SkylakeX). When its choice
// is below the CPU's level and OPENBLAS_CORETYPE is not set, choose the kernels by the instruction set
// and re-run OpenBLAS's kernel dispatch (at load time: before any BLAS call). The dispatch functions
// exist only in DYNAMIC_ARCH builds (Debian's), hence weak.
extern void gotoblas_dynamic_init(void) __attribute__((weak));
extern void gotoblas_dynamic_quit(void) __attribute__((weak));

int blas_core_level(const char *core) {
    static const char *const avx512[] = {"SkylakeX", "Cooperlake", "SapphireRapids"}, *const avx2[] = {"Haswell", "Zen"};
    for (size_t i = 0; i < sizeof avx512 / sizeof *avx512; i++) if (!strcmp(core, avx512[i])) return 2;
    for (size_t i = 0; i < sizeof avx2 / sizeof *avx2; i++) if (!strcmp(core, avx2[i])) return 1;
    return 0;
}

int cpu_vector_level(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        return 2;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
}

__attribute__((constructor)) static void choose_blas_kernels(void) {
    if (!gotoblas_dynamic_init || !gotoblas_dynamic_quit || getenv("OPENBLAS_CORETYPE")) return;
    int level = cpu_vector_level();
    if (level == 0 || blas_core_level(openblas_get_corename()) >= level) return;
    setenv("OPENBLAS_CORETYPE", level == 2 ? "SkylakeX" : "Haswell", 0);  // (child processes inherit the choice)
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
}

void matmul_ld(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int N, int K,
               bool transA, bool transB, float alpha, float beta) {
    if (M == 0 || N == 0) return;
    // One row (a decode step at batch 1): a matrix-vector product. sgemm packs all of op(B) on every
    // call, which makes M = 1 2-4x slower than sgemv, whose time is that of reading B once. C's row is
    // then alpha op(B)^T a + beta C: op(B)^T is B itself when transB (B [N,K]), else B^T (B [K,N]);
    // a's elements are lda apart when transA. (K = 0 stays with sgemm: sgemv would not scale C by beta.)
    if (M == 1 && K > 0) {
        cblas_sgemv(CblasRowMajor, transB ? CblasNoTrans : CblasTrans, transB ? N : K, transB ? K : N, alpha, B, ldb, A,
                    transA ? lda : 1, beta, C, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void matmul(float *C, const float *A, const float *B, int M, int N, int K, bool transA, bool transB, float alpha, float beta) {
    matmul_ld(C, N, A, transA ? M : K, B, transB ? K : N, M, N, K, transA, transB, alpha, beta);
}

// W [N,K]: outputs [n0, n1) of each of A's M rows, W's row n (bf16, then in L1) dotted with the row in
// one simd sum. Measured on weights streamed from memory (one core, AVX-512), this plain loop beat two
// or four partial sums, four rows at once, and weights read in pairs as 32-bit words.
SIMD_CLONES static void bf16_row_dots(float *C, const float *A, int M, const uint16_t *W, int N, int K, int n0, int n1) {
    for (int n = n0; n < n1; n++) {
        const uint16_t *w = W + (long)n * K;
        for (int i = 0; i < M; i++) {
            const float *a = A + (long)i * K;
            float s = 0;
#pragma omp simd reduction(+ : s)
            for (int k = 0; k < K; k++) s += bf16_to_f32(w[k]) * a[k];
            C[(long)i * N + n] = s;
        }
    }
}

// Up to BF16_GEMV_ROWS rows read W once, from bf16, BF16_CHUNK of its rows a task; more widen BF16_BLOCK
// rows of W at a time for sgemm.
enum { BF16_GEMV_ROWS = 8, BF16_CHUNK = 64, BF16_BLOCK = 256, BF16_PAR_MIN = 1 << 20 };

void matmul_bf16(float *C, const float *A, const uint16_t *W, int M, int N, int K) {
    if (M == 0 || N == 0) return;
    if (M <= BF16_GEMV_ROWS) {
#pragma omp parallel for schedule(static) if ((long)N * K >= BF16_PAR_MIN)
        for (int n0 = 0; n0 < N; n0 += BF16_CHUNK) bf16_row_dots(C, A, M, W, N, K, n0, N - n0 < BF16_CHUNK ? N : n0 + BF16_CHUNK);
        return;
    }
    float *blk = xmalloc(sizeof(float) * BF16_BLOCK * (size_t)(K ? K : 1));
    for (int n0 = 0; n0 < N; n0 += BF16_BLOCK) {
        int nb = N - n0 < BF16_BLOCK ? N - n0 : BF16_BLOCK;
        for (long j = 0; j < (long)nb * K; j++) blk[j] = bf16_to_f32(W[(long)n0 * K + j]);
        matmul_ld(C + n0, N, A, K, blk, K, M, nb, K, false, true, 1.0f, 0.0f);
    }
    free(blk);
}

// The norms' sums are double, in simd order (a serial double sum waits ~4 cycles an element).
SIMD_CLONES static void layernorm_row(float *o, float *mean, float *rstd, const float *x, const float *w, const float *b, int C, float eps) {
    double m = 0, v = 0;
#pragma omp simd reduction(+ : m)
    for (int c = 0; c < C; c++) m += x[c];
    m /= C;
#pragma omp simd reduction(+ : v)
    for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
    v /= C;
    float s = (float)(1.0 / sqrt(v + eps)), mf = (float)m;
#pragma omp simd
    for (int c = 0; c < C; c++) o[c] = ((x[c] - mf) * s) * w[c] + b[c];
    *mean = mf;
    *rstd = s;
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b, int N, int C, float eps) {
#pragma omp parallel for if ((long)N * C >= PAR_MIN_ELEMS)
    for (int i = 0; i < N; i++) layernorm_row(out + (long)i * C, mean + i, rstd + i, inp + (long)i * C, w, b, C, eps);
}

SIMD_CLONES static void layernorm_backward_row(float *dx, float *dw_local, float *db_local, const float *dy, const float *x, const float *w,
                                               float m, float s, int C) {
    double dnorm_mean = 0, dnorm_norm_mean = 0;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
    for (int c = 0; c < C; c++) {
        float norm = (x[c] - m) * s, dnorm = w[c] * dy[c];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean /= C;
    dnorm_norm_mean /= C;
#pragma omp simd
    for (int c = 0; c < C; c++) {
        float norm = (x[c] - m) * s, dnorm = w[c] * dy[c];
        dw_local[c] += norm * dy[c];
        db_local[c] += dy[c];
        dx[c] += (float)((dnorm - dnorm_mean - norm * dnorm_norm_mean) * s);
    }
}

// Per-thread partial sums for the weight gradients, reduced at the end, keep this deterministic
// for a fixed thread count.
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                        const float *mean, const float *rstd, int N, int C) {
#pragma omp parallel
    {
        float dw_local[C], db_local[C];
        memset(dw_local, 0, sizeof dw_local);
        memset(db_local, 0, sizeof db_local);
#pragma omp for
        for (int i = 0; i < N; i++)
            layernorm_backward_row(dinp + (long)i * C, dw_local, db_local, dout + (long)i * C, inp + (long)i * C, w, mean[i], rstd[i], C);
#pragma omp critical
        for (int c = 0; c < C; c++) {
            if (dw) dw[c] += dw_local[c];
            if (db) db[c] += db_local[c];
        }
    }
}

SIMD_CLONES static void rmsnorm_row(float *o, float *rstd, const float *x, const float *w, int C, float eps) {
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
    float s = (float)(1.0 / sqrt(ss / C + eps));
#pragma omp simd
    for (int c = 0; c < C; c++) o[c] = w[c] * (x[c] * s);
    *rstd = s;
}

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps) {
#pragma omp parallel for if ((long)N * C >= PAR_MIN_ELEMS)
    for (int i = 0; i < N; i++) rmsnorm_row(out + (long)i * C, rstd + i, inp + (long)i * C, w, C, eps);
}

SIMD_CLONES static void rmsnorm_backward_row(float *dx, float *dw_local, const float *dy, const float *x, const float *w, float s, int C) {
    double dot = 0;  // sum_c dy*w*x
#pragma omp simd reduction(+ : dot)
    for (int c = 0; c < C; c++) dot += (double)dy[c] * w[c] * x[c];
    float k = (float)(dot * s * s * s / C);
#pragma omp simd
    for (int c = 0; c < C; c++) {
        dw_local[c] += dy[c] * x[c] * s;
        dx[c] += dy[c] * w[c] * s - k * x[c];
    }
}

void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w, const float *rstd, int N, int C) {
#pragma omp parallel
    {
        float dw_local[C];
        memset(dw_local, 0, sizeof dw_local);
#pragma omp for
        for (int i = 0; i < N; i++) rmsnorm_backward_row(dinp + (long)i * C, dw_local, dout + (long)i * C, inp + (long)i * C, w, rstd[i], C);
#pragma omp critical
        for (int c = 0; c < C; c++) if (dw) dw[c] += dw_local[c];
    }
}

#define GELU_SCALE 0.7978845608028654f  // sqrt(2/pi)

// e^x for x <= 0 without a call or a branch, so that the element-wise loops (GELU, SwiGLU, the
// cross-entropy) vectorise; a call to glibc's expf keeps them scalar (GELU over 16M elements, one
// thread of the development Xeon: 107 ms with expf, 63 ms with this).
// x = k ln2 + r, |r| <= ln2/2; e^r by its degree-6 Taylor polynomial; 2^k through the exponent bits.
// Max relative error 2.5e-7 on [-87, 0]; below -87 (the clamp, done on the bit pattern: for x <= 0 a
// larger magnitude is a larger unsigned pattern) it returns ~1.6e-38.
static inline float exp_nonpos(float x) {
    uint32_t xb, lim = 0xC2AE0000u;  // -87.0f
    memcpy(&xb, &x, 4);
    xb = xb < lim ? xb : lim;
    memcpy(&x, &xb, 4);
    // k: the nearest integer (truncating a value <= 0). A positive pattern (+0, or a NaN or +inf from
    // a diverged input) takes k = 0, as converting NaN or inf to an int is undefined; r keeps the NaN.
    uint32_t kb = xb < 0x80000000u ? 0u : xb;
    float xk;
    memcpy(&xk, &kb, 4);
    int32_t k = (int32_t)(xk * 1.44269504f - 0.5f);
    float kf = (float)k;
    float r = (x - kf * 0.693145751953125f) - kf * 1.4286068e-06f;  // ln 2 in two parts: r stays exact
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-1f + r * (4.1666668e-2f + r * (8.3333338e-3f + r * 1.3888889e-3f)))));
    int32_t bits = (k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

// tanh through one exponential (max abs error 1.2e-7): glibc's tanhf goes through expm1f and costs
// several times more.
static inline float fast_tanh(float u) {
    float e = exp_nonpos(-2.0f * fabsf(u));
    return copysignf((1.0f - e) / (1.0f + e), u);
}

// The element-wise kernels run over blocks of this many elements (one call of a cloned function each).
enum { SIMD_BLOCK = 4096 };
static inline long block_end(long i, long n) { return n - i < SIMD_BLOCK ? n : i + SIMD_BLOCK; }

SIMD_CLONES static void gelu_forward_range(float *out, const float *inp, long i0, long i1) {
#pragma omp simd
    for (long i = i0; i < i1; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + fast_tanh(GELU_SCALE * (x + 0.044715f * x * x * x)));
    }
}

void gelu_forward(float *out, const float *inp, long n) {
#pragma omp parallel for if (n >= PAR_MIN_ELEMS)
    for (long i = 0; i < n; i += SIMD_BLOCK) gelu_forward_range(out, inp, i, block_end(i, n));
}

SIMD_CLONES static void gelu_backward_range(float *dinp, const float *inp, const float *dout, long i0, long i1) {
#pragma omp simd
    for (long i = i0; i < i1; i++) {
        float x = inp[i];
        float t = fast_tanh(GELU_SCALE * (x + 0.044715f * x * x * x));
        float sech2 = 1.0f - t * t;
        float grad = 0.5f * (1.0f + t) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += grad * dout[i];
    }
}

void gelu_backward(float *dinp, const float *inp, const float *dout, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i += SIMD_BLOCK) gelu_backward_range(dinp, inp, dout, i, block_end(i, n));
}

// The logistic function without a branch (so that SwiGLU's loops vectorise): from e = e^-|g|, 1/(1+e)
// for g >= 0 and e/(1+e) below, chosen by g's sign bit; neither overflows.
static inline float sigmoid(float g) {
    float e = exp_nonpos(-fabsf(g)), pos = 1.0f / (1.0f + e), neg = e * pos;
    uint32_t gb, pb, nb;
    memcpy(&gb, &g, 4);
    memcpy(&pb, &pos, 4);
    memcpy(&nb, &neg, 4);
    uint32_t m = (uint32_t)((int32_t)gb >> 31), rb = (pb & ~m) | (nb & m);
    float r;
    memcpy(&r, &rb, 4);
    return r;
}

SIMD_CLONES static void swiglu_forward_range(float *out, const float *gate, const float *up, long i0, long i1) {
#pragma omp simd
    for (long i = i0; i < i1; i++) {
        float g = gate[i];
        out[i] = g * sigmoid(g) * up[i];
    }
}

void swiglu_forward(float *out, const float *gate, const float *up, long n) {
#pragma omp parallel for if (n >= PAR_MIN_ELEMS)
    for (long i = 0; i < n; i += SIMD_BLOCK) swiglu_forward_range(out, gate, up, i, block_end(i, n));
}

SIMD_CLONES static void swiglu_backward_range(float *dgate, float *dup, const float *gate, const float *up, const float *dout, long i0, long i1) {
#pragma omp simd
    for (long i = i0; i < i1; i++) {
        float g = gate[i], sig = sigmoid(g);
        dup[i] += dout[i] * g * sig;
        dgate[i] += dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
    }
}

void swiglu_backward(float *dgate, float *dup, const float *gate, const float *up, const float *dout, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i += SIMD_BLOCK) swiglu_backward_range(dgate, dup, gate, up, dout, i, block_end(i, n));
}

void rope_tables(float *cos_t, float *sin_t, int T, int HD, const float *inv_freq) {
    int half = HD / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float angle = (float)t * inv_freq[i];  // fp32 product, as transformers computes it
            cos_t[t * half + i] = cosf(angle);
            sin_t[t * half + i] = sinf(angle);
        }
}

// sign = +1 rotates forward; the backward pass is the rotation by -angle.
static void rope_apply(float *x, const float *cos_t, const float *sin_t, int B, int T, int nheads, int HD, const int32_t *pos, float sign) {
    int half = HD / 2;
#pragma omp parallel for collapse(2) if ((long)B * T * nheads * HD >= PAR_MIN_ELEMS)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < nheads; h++) {
                float *v = x + ((long)(b * T + t) * nheads + h) * HD;
                int p = pos ? pos[b * T + t] : t;
                for (int i = 0; i < half; i++) {
                    float c = cos_t[p * half + i], s = sign * sin_t[p * half + i];
                    float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * c - x2 * s;
                    v[i + half] = x2 * c + x1 * s;
                }
            }
}

void rope_forward(float *x, const float *cos_t, const float *sin_t, int B, int T, int nheads, int HD, const int32_t *pos) {
    rope_apply(x, cos_t, sin_t, B, T, nheads, HD, pos, 1.0f);
}

void rope_backward(float *dx, const float *cos_t, const float *sin_t, int B, int T, int nheads, int HD, const int32_t *pos) {
    rope_apply(dx, cos_t, sin_t, B, T, nheads, HD, pos, -1.0f);
}

static inline int window_start(int t, int window) { return (window > 0 && t - window + 1 > 0) ? t - window + 1 : 0; }

// Row t of scores S [T,T] -> causal (and windowed) softmax probabilities over keys from `first`
// on (the start of t's example when packed), zeros elsewhere.
// (The exponentials are exp_nonpos's, as the cross-entropy's, so that the row vectorises.)
SIMD_CLONES static void causal_softmax_row(float *a, int t, int T, int window, int first) {
    int t0 = window_start(t, window);
    if (first > t0) t0 = first;
    float maxv = -INFINITY;
#pragma omp simd reduction(max : maxv)
    for (int t2 = t0; t2 <= t; t2++) maxv = a[t2] > maxv ? a[t2] : maxv;
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int t2 = t0; t2 <= t; t2++) {
        a[t2] = exp_nonpos(a[t2] - maxv);
        sum += a[t2];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int t2 = 0; t2 < T; t2++) a[t2] = (t2 >= t0 && t2 <= t) ? a[t2] * inv : 0.0f;
}

// Row t of dS from dP (in d) and P: P (dP - rowsum(P dP)) scale, zero above the diagonal up to n.
SIMD_CLONES static void softmax_backward_row(float *d, const float *p, int t, int n, float scale) {
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int t2 = 0; t2 <= t; t2++) sum += p[t2] * d[t2];
#pragma omp simd
    for (int t2 = 0; t2 < n; t2++) d[t2] = t2 <= t ? p[t2] * (d[t2] - sum) * scale : 0.0f;
}

// Queries go in blocks of this many rows: block [r0, r1) sees only keys 0..r1-1, so the products skip
// the square's masked upper blocks (T = 256: 10 of 16 blocks computed).
enum { ATT_ROWS = 64 };

// Per (sequence, head): S = scale Q K^T, P = softmax(S) kept in att, O = P V. Each head is a few
// GEMMs by blocks of query rows (ATT_ROWS); OpenBLAS runs them single-threaded inside this parallel
// loop. A block's masked keys below its last row are computed and discarded: BLAS on the block is
// still far faster than masked loops.
void attention_forward(float *out, float *att, const float *q, int qs, const float *k, int ks, const float *v, int vs, AttnShape s) {
    int B = s.B, T = s.T, NH = s.NH, HD = s.HD, group = s.NH / s.NKV, os = NH * HD;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            int kvh = h / group;
            const float *Q = q + (long)b * T * qs + h * HD, *K = k + (long)b * T * ks + kvh * HD, *V = v + (long)b * T * vs + kvh * HD;
            float *P = att + ((long)b * NH + h) * T * T, *O = out + (long)b * T * os + h * HD;
            for (int r0 = 0; r0 < T; r0 += ATT_ROWS) {
                int r1 = T - r0 < ATT_ROWS ? T : r0 + ATT_ROWS;
                matmul_ld(P + (long)r0 * T, T, Q + (long)r0 * qs, qs, K, ks, r1 - r0, r1, HD, false, true, s.scale, 0.0f);
                for (int t = r0; t < r1; t++) causal_softmax_row(P + (long)t * T, t, T, s.window, s.pos ? t - s.pos[b * T + t] : 0);
                matmul_ld(O + (long)r0 * os, os, P + (long)r0 * T, T, V, vs, r1 - r0, HD, r1, false, false, 1.0f, 0.0f);
            }
        }
}

// Per (sequence, kv head), so the query heads that share K and V add into dK, dV in one thread:
// dP = dO V^T, dV += P^T dO, dS = P (dP - rowsum(P dP)) scale, dQ += dS K, dK += dS^T Q, by the
// forward's blocks of query rows (a block's rows reach keys 0..r1-1 only).
// (P is zero outside each query's keys, window and example alike: the masks need no code here.)
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *att,
                        const float *q, int qs, const float *k, int ks, const float *v, int vs, AttnShape s) {
    int B = s.B, T = s.T, NH = s.NH, HD = s.HD, group = s.NH / s.NKV, os = NH * HD;
#pragma omp parallel
    {
        float *dS = malloc(sizeof(float) * T * T);
#pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int kvh = 0; kvh < s.NKV; kvh++) {
                const float *K = k + (long)b * T * ks + kvh * HD, *V = v + (long)b * T * vs + kvh * HD;
                float *dK = dk + (long)b * T * ks + kvh * HD, *dV = dv + (long)b * T * vs + kvh * HD;
                for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                    const float *Q = q + (long)b * T * qs + h * HD, *dO = dout + (long)b * T * os + h * HD;
                    const float *P = att + ((long)b * NH + h) * T * T;
                    float *dQ = dq + (long)b * T * qs + h * HD;
                    for (int r0 = 0; r0 < T; r0 += ATT_ROWS) {
                        int r1 = T - r0 < ATT_ROWS ? T : r0 + ATT_ROWS, n = r1 - r0;
                        const float *Pb = P + (long)r0 * T, *dOb = dO + (long)r0 * os;
                        float *dSb = dS + (long)r0 * T;
                        matmul_ld(dSb, T, dOb, os, V, vs, n, r1, HD, false, true, 1.0f, 0.0f);  // dP
                        matmul_ld(dV, vs, Pb, T, dOb, os, r1, HD, n, true, false, 1.0f, 1.0f);
                        for (int t = r0; t < r1; t++) softmax_backward_row(dS + (long)t * T, P + (long)t * T, t, r1, s.scale);
                        matmul_ld(dQ + (long)r0 * qs, qs, dSb, T, K, ks, n, HD, r1, false, false, 1.0f, 1.0f);
                        matmul_ld(dK, ks, dSb, T, Q + (long)r0 * qs, qs, r1, HD, n, true, false, 1.0f, 1.0f);
                    }
                }
            }
        free(dS);
    }
}

// fp32 exponentials (as torch's fp32 softmax), summed in double: a double exp per logit cost ~6% of a
// GPT-2 training step (50257 logits a row, twice).
SIMD_CLONES static double logsumexp_row(const float *x, int n) {
    float maxv = -INFINITY;
#pragma omp simd reduction(max : maxv)
    for (int j = 0; j < n; j++) maxv = x[j] > maxv ? x[j] : maxv;
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) sum += exp_nonpos(x[j] - maxv);
    return maxv + log(sum);
}

// Exported without clones: clang's multiversioned functions must be declared so in every unit that calls them.
double row_logsumexp(const float *x, int n) { return logsumexp_row(x, n); }

// row = e^(row - logz) k: the softmax of a row whose log-sum-exp is logz, scaled.
SIMD_CLONES static void softmax_scaled(float *row, int n, float logz, float k) {
#pragma omp simd
    for (int j = 0; j < n; j++) row[j] = exp_nonpos(row[j] - logz) * k;
}

double cross_entropy_shifted(float *logits, const int32_t *labels, int B, int T, int V, bool want_grad, int *count_out) {
    int count = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t + 1 < T; t++) count += labels[b * T + t + 1] != -100;
    double loss = 0;
#pragma omp parallel for reduction(+ : loss)
    for (int i = 0; i < B * T; i++) {
        int t = i % T;
        float *row = logits + (long)i * V;
        int target = (t + 1 < T) ? labels[i + 1] : -100;
        if (target == -100 || count == 0) {
            if (want_grad) memset(row, 0, sizeof(float) * V);
            continue;
        }
        double logz = logsumexp_row(row, V);
        loss += logz - row[target];
        if (want_grad) {
            float inv_count = 1.0f / count;
            softmax_scaled(row, V, (float)logz, inv_count);
            row[target] -= inv_count;
        }
    }
    if (count_out) *count_out = count;
    return count ? loss / count : 0.0;
}

void add_inplace(float *a, const float *b, long n) {
#pragma omp parallel for if (n >= PAR_MIN_ELEMS)
    for (long i = 0; i < n; i++) a[i] += b[i];
}

void add_bias(float *y, const float *bias, int N, int C) {
#pragma omp parallel for if ((long)N * C >= PAR_MIN_ELEMS)
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) y[(long)i * C + c] += bias[c];
}

// Columns in blocks, rows in order within each: every column's sum keeps its order (the same bits
// at any thread count), and a row's block is read whole rather than one float a cache line.
void bias_backward(float *dbias, const float *dy, int N, int C) {
    enum { COLS = 64 };
#pragma omp parallel for
    for (int c0 = 0; c0 < C; c0 += COLS) {
        int n = C - c0 < COLS ? C - c0 : COLS;
        double s[COLS] = {0};
        for (int i = 0; i < N; i++) {
            const float *row = dy + (long)i * C + c0;
#pragma omp simd
            for (int c = 0; c < n; c++) s[c] += row[c];
        }
        for (int c = 0; c < n; c++) dbias[c0 + c] += (float)s[c];
    }
}
