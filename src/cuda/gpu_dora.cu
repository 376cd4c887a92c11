// gpu_dora.cu: DoRA's kernels (dora.c is the CPU's and says what PEFT computes). The training step
// (gpu_model.cu) runs a DoRA module as LoRA plus three passes, and keeps nothing per token beyond LoRA's:
//   before the forward, per module: norm[o] = ||W[o,:] + s (B A)[o,:]||, expanded so that no [out, in]
//     matrix is formed: ||W[o,:]||^2 + B[o,:] X[o,:]^T with X = s^2 B (A A^T) + 2 s W A^T [out, r]
//     (two thin GEMMs into an fp32 scratch, then one block per row);
//   after the module's GEMMs (y = x W^T + b + s h B^T, the LoRA order): y = resid + b + g (y - b), g = m / norm;
//   at the top of its backward: dm += sum_n dy (y - resid - b) / m (= dy e / norm: PEFT detaches the norm,
//     so e = (y - resid - b) / g is read back from the output the layer keeps anyway; the q and k columns
//     of Llama's qkv are kept after rope, which is undone on the fly), and dy *= g (the LoRA gradients and
//     the input gradient then follow dy g, the base path's included: dx = (dy g) W + dh A).
#include "gpu_internal.cuh"

// One block per output row o: sqrt(sum_i W[o, i]^2 + sum_k B[o, k] X[o, k]), W[o, i] at W[o * ldr + i * ldc].
template <typename T>
__global__ void dora_norm_kernel(float *norm, const T *W, long ldr, long ldc, const float *B, const float *X, int r, int in) {
    __shared__ float sh[256];
    int o = blockIdx.x;
    float acc = 0;
    for (int i = threadIdx.x; i < in; i += blockDim.x) {
        float v = to_f<T>(W[(long)o * ldr + (long)i * ldc]);
        acc += v * v;
    }
    for (int k = threadIdx.x; k < r; k += blockDim.x) acc += B[(long)o * r + k] * X[(long)o * r + k];
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) sh[threadIdx.x] += sh[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) norm[o] = sqrtf(fmaxf(sh[0], 0.0f));  // rounding may take an exact 0 below it
}
template <typename T>
void k_dora_norm(float *norm, const T *W, bool fifo, int ldw, const float *B, const float *X, int r, int out, int in, cudaStream_t s) {
    dora_norm_kernel<T><<<out, 256, 0, s>>>(norm, W, fifo ? 1 : ldw, fifo ? ldw : 1, B, X, r, in);
    KCHECK();
}

// One block per row n (no index division), its threads along the columns: y = resid + b + g (y - b).
template <typename T>
__global__ void dora_fwd_kernel(T *y, int ldy, const T *b, const T *resid, const float *norm, const float *m, int out) {
    long n = blockIdx.x;
    T *yr = y + n * ldy;
    const T *rr = resid ? resid + n * ldy : nullptr;
    for (int o = threadIdx.x; o < out; o += blockDim.x) {
        float g = m[o] / norm[o], bo = b ? to_f<T>(b[o]) : 0.0f;
        yr[o] = from_f<T>((rr ? to_f<T>(rr[o]) : 0.0f) + bo + g * (to_f<T>(yr[o]) - bo));
    }
}
template <typename T> void k_dora_fwd(T *y, int ldy, const T *b, const T *resid, const float *norm, const float *m, int N, int out, cudaStream_t s) {
    if (N <= 0) return;
    dora_fwd_kernel<T><<<N, out >= 256 ? 256 : 128, 0, s>>>(y, ldy, b, resid, norm, m, out);
    KCHECK();
}

// Blocks of 32 columns x 8 row lanes over a share of the rows (as the bias gradient's column sums).
// y and resid have row stride ldv; the module's column o is the group's col_off + o, rotated by rope
// when below rot_end (q and k: each head's pairs (j, j + HD/2), as k_rope_fwd; undone here).
template <typename T>
__global__ void dora_bwd_kernel(float *dm, T *dyg, const T *dy, int ldy, const T *y, const T *resid, int ldv, const T *b, const float *norm,
                                const float *m, DoraRope rp, int N, int out) {
    __shared__ float sh[8][33];
    int o = blockIdx.x * 32 + threadIdx.x;
    int rows_per = (N + gridDim.y - 1) / gridDim.y;
    int r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
    float acc = 0, inv_m = 0;
    if (o < out) {
        float mo = m[o], g = mo / norm[o], bo = b ? to_f<T>(b[o]) : 0.0f;
        inv_m = mo != 0.0f ? 1.0f / mo : 0.0f;  // gpu_model.cu refuses a zero magnitude: g 0 leaves no e in y
        int c = rp.col_off + o, half = rp.HD / 2, j = rp.HD ? c % rp.HD : 0;
        bool rot = c < rp.rot_end, lo = j < half;
        int jj = lo ? j : j - half, poff = lo ? half : -half;
        for (int n = r0 + threadIdx.y; n < r1; n += 8) {
            float d = to_f<T>(dy[(long)n * ldy + o]), v = to_f<T>(y[(long)n * ldv + o]);
            if (rot) {  // rope's inverse: x1 = v1 c + v2 s, x2 = v2 c - v1 s
                int t = rp.pos ? rp.pos[n] : n % rp.Tn;
                float cs = rp.cos_t[(long)t * half + jj], sn = rp.sin_t[(long)t * half + jj], p = to_f<T>(y[(long)n * ldv + o + poff]);
                v = lo ? v * cs + p * sn : v * cs - p * sn;
            }
            if (resid) v -= to_f<T>(resid[(long)n * ldv + o]);
            acc += d * (v - bo);
            dyg[(long)n * ldy + o] = from_f<T>(d * g);
        }
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && o < out) {
        for (int k = 1; k < 8; k++) acc += sh[k][threadIdx.x];
        atomicAdd(&dm[o], acc * inv_m);
    }
}
template <typename T>
void k_dora_bwd(float *dm, T *dyg, const T *dy, int ldy, const T *y, const T *resid, int ldv, const T *b, const float *norm, const float *m,
                DoraRope rp, int N, int out, cudaStream_t s) {
    if (N <= 0) return;
    dim3 grid(cdiv(out, 32), N >= 4096 ? 32 : (N >= 256 ? 8 : 1));
    dora_bwd_kernel<T><<<grid, dim3(32, 8), 0, s>>>(dm, dyg, dy, ldy, y, resid, ldv, b, norm, m, rp, N, out);
    KCHECK();
}

// Llama's MLP with DoRA on both gate and up: SwiGLU's backward (k_swiglu_bwd's arithmetic) and k_dora_bwd of the
// two modules in one pass over gu = [gate | up] (rows 2I, the rescaled outputs as kept) and dout [N, I]:
// dgu = [dgate g_gate | dup g_up] (row stride ldo), dm += sum_n d (y - b) / m per column.
template <typename T>
__global__ void dora_swiglu_bwd_kernel(float *dm_g, float *dm_u, T *dgu, int ldo, const T *gu, const T *dout, const T *b, const float *norm_g,
                                       const float *m_g, const float *norm_u, const float *m_u, int N, int I) {
    __shared__ float sh[2][8][33];
    int j = blockIdx.x * 32 + threadIdx.x;
    int rows_per = (N + gridDim.y - 1) / gridDim.y;
    int r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
    float ag = 0, au = 0;
    if (j < I) {
        float sg = m_g[j] / norm_g[j], su = m_u[j] / norm_u[j], bg = b ? to_f<T>(b[j]) : 0.0f, bu = b ? to_f<T>(b[I + j]) : 0.0f;
        for (int n = r0 + threadIdx.y; n < r1; n += 8) {
            float gv = to_f<T>(gu[(long)n * 2 * I + j]), uv = to_f<T>(gu[(long)n * 2 * I + I + j]), d = to_f<T>(dout[(long)n * I + j]);
            float sig = 1.0f / (1.0f + __expf(-gv));
            float du = d * gv * sig, dg = d * uv * sig * (1.0f + gv * (1.0f - sig));
            ag += dg * (gv - bg);
            au += du * (uv - bu);
            dgu[(long)n * ldo + j] = from_f<T>(dg * sg);
            dgu[(long)n * ldo + I + j] = from_f<T>(du * su);
        }
    }
    sh[0][threadIdx.y][threadIdx.x] = ag;
    sh[1][threadIdx.y][threadIdx.x] = au;
    __syncthreads();
    if (threadIdx.y == 0 && j < I) {
        for (int k = 1; k < 8; k++) { ag += sh[0][k][threadIdx.x]; au += sh[1][k][threadIdx.x]; }
        float mg = m_g[j], mu = m_u[j];  // a zero magnitude is refused (gpu_model.cu), as in k_dora_bwd
        atomicAdd(&dm_g[j], mg != 0.0f ? ag / mg : 0.0f);
        atomicAdd(&dm_u[j], mu != 0.0f ? au / mu : 0.0f);
    }
}
template <typename T>
void k_dora_swiglu_bwd(float *dm_g, float *dm_u, T *dgu, int ldo, const T *gu, const T *dout, const T *b, const float *norm_g, const float *m_g,
                       const float *norm_u, const float *m_u, int N, int I, cudaStream_t s) {
    if (N <= 0) return;
    dim3 grid(cdiv(I, 32), N >= 4096 ? 32 : (N >= 256 ? 8 : 1));
    dora_swiglu_bwd_kernel<T><<<grid, dim3(32, 8), 0, s>>>(dm_g, dm_u, dgu, ldo, gu, dout, b, norm_g, m_g, norm_u, m_u, N, I);
    KCHECK();
}

#define INST(T)                                                                                                                     \
    template void k_dora_norm<T>(float *, const T *, bool, int, const float *, const float *, int, int, int, cudaStream_t);          \
    template void k_dora_fwd<T>(T *, int, const T *, const T *, const float *, const float *, int, int, cudaStream_t);               \
    template void k_dora_bwd<T>(float *, T *, const T *, int, const T *, const T *, int, const T *, const float *, const float *, \
                                DoraRope, int, int, cudaStream_t);                                                              \
    template void k_dora_swiglu_bwd<T>(float *, float *, T *, int, const T *, const T *, const T *, const float *, const float *,     \
                                       const float *, const float *, int, int, cudaStream_t);
INST(float)
INST(bf16)
