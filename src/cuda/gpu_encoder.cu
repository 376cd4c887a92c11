// gpu_encoder.cu: the kernels only the encoders (BERT, RoBERTa) use; gpu_model.cu's encoder section runs
// them: the embeddings' sum, the exact (erf) GELU, the head's tanh, and the sum that joins a post-LayerNorm
// block's skip to its branch in the backward.
#include "gpu_internal.cuh"
#include <math.h>

static int map_grid(long n) { return (int)fminl(cdiv(n, 256), 1L << 20); }

// x0[n] = (wte[ids[n]] + wtt[types[n]]) + wpe[pos[n]], in encoder.c's order.
template <typename T> __global__ void enc_embed_kernel(T *x0, const int *ids, const int *types, const int *pos, const T *wte, const T *wtt,
                                                       const T *wpe, int N, int C) {
    long total = (long)N * C;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        long n = i / C, c = i % C;
        float v = to_f<T>(wte[(long)ids[n] * C + c]) + to_f<T>(wtt[(long)types[n] * C + c]);
        x0[i] = from_f<T>(v + to_f<T>(wpe[(long)pos[n] * C + c]));
    }
}
template <typename T>
void k_enc_embed(T *x0, const int *ids, const int *types, const int *pos, const T *wte, const T *wtt, const T *wpe, int N, int C, cudaStream_t s) {
    enc_embed_kernel<T><<<map_grid((long)N * C), 256, 0, s>>>(x0, ids, types, pos, wte, wtt, wpe, N, C);
    KCHECK();
}

// Elementwise: out[i] = op(x[i]), or out[i] = op(x[i], y[i]) (a backward: y is dout).
template <typename T, typename Op> __global__ void map1_kernel(T *out, const T *x, long n, Op op) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] = from_f<T>(op(to_f<T>(x[i])));
}
template <typename T, typename Op> __global__ void map2_kernel(T *out, const T *x, const T *y, long n, Op op) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = from_f<T>(op(to_f<T>(x[i]), to_f<T>(y[i])));
}

// transformers' GELUActivation: x Phi(x), in double per element as encoder.c.
struct GeluErf {
    __device__ float operator()(float x) const { return (float)(0.5 * x * (1.0 + erf(x * M_SQRT1_2))); }
};
struct GeluErfGrad {
    __device__ float operator()(float x, float dy) const {
        double v = x, g = 0.5 * (1.0 + erf(v * M_SQRT1_2)) + v * exp(-0.5 * v * v) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
        return (float)(g * dy);
    }
};
// The head's tanh; its backward from the output y: dx = dy (1 - y^2).
struct Tanh {
    __device__ float operator()(float x) const { return tanhf(x); }
};
struct TanhGrad {
    __device__ float operator()(float y, float dy) const { return dy * (1.0f - y * y); }
};
template <typename T, typename Op> static void map1(T *out, const T *x, long n, Op op, cudaStream_t s) {
    map1_kernel<T><<<map_grid(n), 256, 0, s>>>(out, x, n, op);
    KCHECK();
}
template <typename T, typename Op> static void map2(T *out, const T *x, const T *y, long n, Op op, cudaStream_t s) {
    map2_kernel<T><<<map_grid(n), 256, 0, s>>>(out, x, y, n, op);
    KCHECK();
}
template <typename T> void k_gelu_erf_fwd(T *out, const T *x, long n, cudaStream_t s) { map1(out, x, n, GeluErf(), s); }
template <typename T> void k_gelu_erf_bwd(T *dx, const T *x, const T *dout, long n, cudaStream_t s) { map2(dx, x, dout, n, GeluErfGrad(), s); }
template <typename T> void k_tanh_fwd(T *out, const T *x, long n, cudaStream_t s) { map1(out, x, n, Tanh(), s); }
template <typename T> void k_tanh_bwd(T *dx, const T *y, const T *dy, long n, cudaStream_t s) { map2(dx, y, dy, n, TanhGrad(), s); }

// out = a + b (a fp32, b and out the activation type).
template <typename T> __global__ void enc_sum_kernel(T *out, const float *a, const T *b, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] = from_f<T>(a[i] + to_f<T>(b[i]));
}
template <typename T> void k_enc_sum(T *out, const float *a, const T *b, long n, cudaStream_t s) {
    enc_sum_kernel<T><<<map_grid(n), 256, 0, s>>>(out, a, b, n);
    KCHECK();
}

#define INST(T)                                                                                                                           \
    template void k_enc_embed<T>(T *, const int *, const int *, const int *, const T *, const T *, const T *, int, int, cudaStream_t);   \
    template void k_gelu_erf_fwd<T>(T *, const T *, long, cudaStream_t);                                                                 \
    template void k_gelu_erf_bwd<T>(T *, const T *, const T *, long, cudaStream_t);                                                      \
    template void k_tanh_fwd<T>(T *, const T *, long, cudaStream_t);                                                                     \
    template void k_tanh_bwd<T>(T *, const T *, const T *, long, cudaStream_t);                                                          \
    template void k_enc_sum<T>(T *, const float *, const T *, long, cudaStream_t);
INST(float)
INST(bf16)
