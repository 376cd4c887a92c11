// gpu_dora.cu: DoRA's kernels (dora.c is the CPU's and says what PEFT computes). The training step
// (gpu_model.cu) runs a DoRA module as LoRA plus three passes:
//   before the forward, per module: norm[o] = ||W[o,:] + s (B A)[o,:]|| from the fp32 masters of A, B
//     (s B A into an fp32 scratch [out, in] shared by every module, then one block per row);
//   after the module's base GEMM (bias, no residual) and its LoRA product e = s h B^T:
//     y = resid + y + (g - 1) (y - b) + g e, e += y - b   (g = m / norm; e kept for backward);
//   at the top of its backward: dm += sum_n dy e / norm, dy *= g (the LoRA gradients and the input
//     gradient then follow dy g, the base path's (g - 1) dy W included: dx = (dy g) W + dh A).
#include "gpu_internal.cuh"

// One block per output row o: the row's sum of squares of W + S, W[o, i] at W[o * ldr + i * ldc].
template <typename T>
__global__ void dora_norm_kernel(float *norm, const T *W, long ldr, long ldc, const float *S, int in) {
    __shared__ float sh[256];
    int o = blockIdx.x;
    float acc = 0;
    for (int i = threadIdx.x; i < in; i += blockDim.x) {
        float v = to_f<T>(W[(long)o * ldr + (long)i * ldc]) + S[(long)o * in + i];
        acc += v * v;
    }
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) sh[threadIdx.x] += sh[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) norm[o] = sqrtf(sh[0]);
}
template <typename T> void k_dora_norm(float *norm, const T *W, bool fifo, int ldw, const float *S, int out, int in, cudaStream_t s) {
    dora_norm_kernel<T><<<out, 256, 0, s>>>(norm, W, fifo ? 1 : ldw, fifo ? ldw : 1, S, in);
    KCHECK();
}

// One block per row n (no index division), its threads along the columns.
template <typename T>
__global__ void dora_fwd_kernel(T *y, int ldy, T *e, const T *b, const T *resid, const float *norm, const float *m, int out) {
    long n = blockIdx.x;
    T *yr = y + n * ldy, *er = e + n * out;
    const T *rr = resid ? resid + n * ldy : nullptr;
    for (int o = threadIdx.x; o < out; o += blockDim.x) {
        float g = m[o] / norm[o], yv = to_f<T>(yr[o]), base = yv - (b ? to_f<T>(b[o]) : 0.0f), lora = to_f<T>(er[o]);
        yr[o] = from_f<T>((rr ? to_f<T>(rr[o]) : 0.0f) + yv + (g - 1.0f) * base + g * lora);
        er[o] = from_f<T>(base + lora);
    }
}
template <typename T>
void k_dora_fwd(T *y, int ldy, T *e, const T *b, const T *resid, const float *norm, const float *m, int N, int out, cudaStream_t s) {
    if (N <= 0) return;
    dora_fwd_kernel<T><<<N, out >= 256 ? 256 : 128, 0, s>>>(y, ldy, e, b, resid, norm, m, out);
    KCHECK();
}

// Blocks of 32 columns x 8 row lanes over a share of the rows (as the bias gradient's column sums).
template <typename T>
__global__ void dora_bwd_kernel(float *dm, T *dyg, const T *dy, int ldy, const T *e, const float *norm, const float *m, int N, int out) {
    __shared__ float sh[8][33];
    int o = blockIdx.x * 32 + threadIdx.x;
    int rows_per = (N + gridDim.y - 1) / gridDim.y;
    int r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
    float acc = 0;
    if (o < out) {
        float g = m[o] / norm[o];
        for (int n = r0 + threadIdx.y; n < r1; n += 8) {
            float d = to_f<T>(dy[(long)n * ldy + o]);
            acc += d * to_f<T>(e[(long)n * out + o]);
            dyg[(long)n * ldy + o] = from_f<T>(d * g);
        }
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && o < out) {
        for (int k = 1; k < 8; k++) acc += sh[k][threadIdx.x];
        atomicAdd(&dm[o], acc / norm[o]);
    }
}
template <typename T>
void k_dora_bwd(float *dm, T *dyg, const T *dy, int ldy, const T *e, const float *norm, const float *m, int N, int out, cudaStream_t s) {
    dim3 grid(cdiv(out, 32), N >= 4096 ? 32 : (N >= 256 ? 8 : 1));
    dora_bwd_kernel<T><<<grid, dim3(32, 8), 0, s>>>(dm, dyg, dy, ldy, e, norm, m, N, out);
    KCHECK();
}

#define INST(T)                                                                                                              \
    template void k_dora_norm<T>(float *, const T *, bool, int, const float *, int, int, cudaStream_t);                       \
    template void k_dora_fwd<T>(T *, int, T *, const T *, const T *, const float *, const float *, int, int, cudaStream_t);   \
    template void k_dora_bwd<T>(float *, T *, const T *, int, const T *, const float *, const float *, int, int, cudaStream_t);
INST(float)
INST(bf16)
