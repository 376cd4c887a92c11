// gpu_kernels.cu: the memory-bound kernels of the CUDA backend (norms, activations, rope,
// embeddings, the chunked cross-entropy, bias gradients, the fused AdamW). Each is templated on
// the activation type T (float for the fp32 parity mode, bf16 otherwise); arithmetic is fp32.
// Rows are handled one warp each with 16-byte vector accesses where the width allows.
#include "gpu_internal.cuh"
#include <math.h>
#include <stdio.h>
#include <string.h>

// ---------------- error recording ----------------
static char g_err[512];
static bool g_has_err;

bool gpu_record(cudaError_t e, const char *what, const char *file, int line) {
    if (e == cudaSuccess) return true;
    if (!g_has_err) {
        snprintf(g_err, sizeof g_err, "CUDA error %s (%s) in %s at %s:%d", cudaGetErrorName(e), cudaGetErrorString(e), what, file, line);
        g_has_err = true;
    }
    return false;
}
bool gpu_record_blas(cublasStatus_t s, const char *what, const char *file, int line) {
    if (s == CUBLAS_STATUS_SUCCESS) return true;
    if (!g_has_err) {
        snprintf(g_err, sizeof g_err, "cuBLAS error %d (%s) in %s at %s:%d", (int)s, cublasLtGetStatusString(s), what, file, line);
        g_has_err = true;
    }
    return false;
}
bool gpu_failed(void) { return g_has_err; }
void gpu_clear_failure(void) { g_has_err = false; g_err[0] = 0; }
int gpu_report_failure(void) {
    if (!g_has_err) return 0;
    peft_fail("%s", g_err);
    return -1;
}

template <typename T> static inline bool aligned16(const T *p) { return ((uintptr_t)p & 15) == 0; }


// ---------------- conversion ----------------
template <typename T> __global__ void convert_kernel(T *dst, const float *src, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) dst[i] = from_f<T>(src[i]);
}
template <typename T> void k_convert_f32(T *dst, const float *src, long n, cudaStream_t s) {
    if (n <= 0) return;
    convert_kernel<T><<<(int)fminl(cdiv(n, 256), 65536L), 256, 0, s>>>(dst, src, n);
    KCHECK();
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
template <typename T> __global__ void fill_random_kernel(T *dst, long n, float std, uint64_t seed) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float v;
        if (std < 0) v = -std - 1.0f;
        else {
            uint64_t r = mix64(seed ^ mix64((uint64_t)i));
            float u1 = ((r >> 40) + 1.0f) * (1.0f / 16777217.0f), u2 = ((r >> 16) & 0xFFFFFF) * (1.0f / 16777216.0f);
            v = std * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
        }
        dst[i] = from_f<T>(v);
    }
}
template <typename T> void k_fill_random(T *dst, long n, float std, uint64_t seed, cudaStream_t s) {
    if (n <= 0) return;
    fill_random_kernel<T><<<(int)fminl(cdiv(n, 256), 132L * 32), 256, 0, s>>>(dst, n, std, seed);
    KCHECK();
}

// ---------------- embeddings ----------------
template <typename T, int VN>
__global__ void embed_fwd_kernel(T *out, const int *ids, const T *wte, const T *wpe, const int *pos, int N, int Tn, int C) {
    long total = (long)N * (C / VN);
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int n = (int)(i / (C / VN)), c = (int)(i % (C / VN)) * VN;
        float a[VN], b[VN];
        ldv<T, VN>(wte + (long)ids[n] * C + c, a);
        if (wpe) {
            ldv<T, VN>(wpe + (long)(pos ? pos[n] : n % Tn) * C + c, b);
#pragma unroll
            for (int k = 0; k < VN; k++) a[k] += b[k];
        }
        stv<T, VN>(out + (long)n * C + c, a);
    }
}
template <typename T>
void k_embed_fwd(T *out, const int *ids, const T *wte, const T *wpe, const int *pos, int N, int Tn, int C, cudaStream_t s) {
    constexpr int VN = 16 / sizeof(T);
    if (C % VN == 0) embed_fwd_kernel<T, VN><<<cdiv((long)N * C / VN, 256), 256, 0, s>>>(out, ids, wte, wpe, pos, N, Tn, C);
    else embed_fwd_kernel<T, 1><<<cdiv((long)N * C, 256), 256, 0, s>>>(out, ids, wte, wpe, pos, N, Tn, C);
    KCHECK();
}

// Row rows[n] of the table's gradient += row n of dres (wte by the token ids; wpe by packed positions).
__global__ void embed_bwd_rows_kernel(float *table_g, const float *dres, const int *rows, int N, int C) {
    long total = (long)N * C;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int n = (int)(i / C), c = (int)(i % C);
        atomicAdd(table_g + (long)rows[n] * C + c, dres[i]);
    }
}
__global__ void embed_bwd_wpe_kernel(float *wpe_g, const float *dres, int N, int Tn, int C) {
    long total = (long)Tn * C;
    int B = N / Tn;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int t = (int)(i / C), c = (int)(i % C);
        float acc = 0;
        for (int b = 0; b < B; b++) acc += dres[((long)b * Tn + t) * C + c];
        wpe_g[i] += acc;
    }
}
void k_embed_bwd(float *wte_g, float *wpe_g, const float *dres, const int *ids, const int *pos, int N, int Tn, int C, cudaStream_t s) {
    if (wte_g) embed_bwd_rows_kernel<<<cdiv((long)N * C, 256), 256, 0, s>>>(wte_g, dres, ids, N, C);
    if (wpe_g && pos) embed_bwd_rows_kernel<<<cdiv((long)N * C, 256), 256, 0, s>>>(wpe_g, dres, pos, N, C);
    else if (wpe_g) embed_bwd_wpe_kernel<<<cdiv((long)Tn * C, 256), 256, 0, s>>>(wpe_g, dres, N, Tn, C);
    KCHECK();
}

// ---------------- LayerNorm / RMSNorm: one warp per row ----------------
template <typename T, int VN>
__global__ void norm_fwd_kernel(T *out, float *mean_out, float *rstd_out, const T *x, const T *w, const T *b, int N, int C,
                                float eps, bool layernorm, bool have_stats) {
    int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    for (int row = blockIdx.x * warps + threadIdx.x / 32; row < N; row += gridDim.x * warps) {
        const T *xr = x + (long)row * C;
        float mean = 0, rstd;
        if (have_stats) {
            if (layernorm) mean = mean_out[row];
            rstd = rstd_out[row];
        } else {
            float f[VN];
            if (layernorm) {
                float s = 0;
                for (int c = lane * VN; c < C; c += 32 * VN) {
                    ldv<T, VN>(xr + c, f);
#pragma unroll
                    for (int k = 0; k < VN; k++) s += f[k];
                }
                mean = warp_sum(s) / C;
            }
            float v = 0;
            for (int c = lane * VN; c < C; c += 32 * VN) {
                ldv<T, VN>(xr + c, f);
#pragma unroll
                for (int k = 0; k < VN; k++) { float d = f[k] - mean; v += d * d; }
            }
            rstd = rsqrtf(warp_sum(v) / C + eps);
            if (lane == 0) {
                if (layernorm) mean_out[row] = mean;
                rstd_out[row] = rstd;
            }
        }
        if (!out) continue;
        for (int c = lane * VN; c < C; c += 32 * VN) {
            float f[VN], wf[VN], bf[VN];
            ldv<T, VN>(xr + c, f);
            ldv<T, VN>(w + c, wf);
            if (b) ldv<T, VN>(b + c, bf);
#pragma unroll
            for (int k = 0; k < VN; k++) f[k] = (f[k] - mean) * rstd * wf[k] + (b ? bf[k] : 0.0f);
            stv<T, VN>(out + (long)row * C + c, f);
        }
    }
}
template <typename T>
void k_norm_fwd(T *out, float *mean, float *rstd, const T *x, const T *w, const T *b, int N, int C, float eps, bool layernorm,
                bool have_stats, cudaStream_t s) {
    constexpr int VN = 16 / sizeof(T);
    int grid = cdiv(N, 8);
    if (C % VN == 0) norm_fwd_kernel<T, VN><<<grid, 256, 0, s>>>(out, mean, rstd, x, w, b, N, C, eps, layernorm, have_stats);
    else norm_fwd_kernel<T, 1><<<grid, 256, 0, s>>>(out, mean, rstd, x, w, b, N, C, eps, layernorm, have_stats);
    KCHECK();
}

// Weight gradients go through a shared-memory accumulator per block, then one atomicAdd per column.
template <typename T, int VN>
__global__ void norm_bwd_kernel(float *dres, T *dres_t, float *dw, float *db, const T *dout, const T *x, const T *w,
                                const float *mean_in, const float *rstd_in, int N, int C, bool layernorm, int ldt) {
    extern __shared__ float sh[];
    float *sdw = sh, *sdb = sh + C;
    bool wgrad = dw || db;  // a LayerNorm's bias may train without its weight (PEFT's bias "all")
    if (wgrad) {
        for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) sh[c] = 0;
        __syncthreads();
    }
    int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    for (int row = blockIdx.x * warps + threadIdx.x / 32; row < N; row += gridDim.x * warps) {
        const T *xr = x + (long)row * C, *dyr = dout + (long)row * C;
        float mean = layernorm ? mean_in[row] : 0.0f, rstd = rstd_in[row];
        float s1 = 0, s2 = 0;  // LN: sum dnorm, sum dnorm*norm. RMS: sum dy*w*x
        for (int c = lane * VN; c < C; c += 32 * VN) {
            float xf[VN], dy[VN], wf[VN];
            ldv<T, VN>(xr + c, xf);
            ldv<T, VN>(dyr + c, dy);
            ldv<T, VN>(w + c, wf);
#pragma unroll
            for (int k = 0; k < VN; k++) {
                if (layernorm) {
                    float nrm = (xf[k] - mean) * rstd, dn = wf[k] * dy[k];
                    s1 += dn;
                    s2 += dn * nrm;
                } else s1 += dy[k] * wf[k] * xf[k];
            }
        }
        s1 = warp_sum(s1);
        s2 = warp_sum(s2);
        float m1 = s1 / C, m2 = s2 / C, kr = s1 * rstd * rstd * rstd / C;
        for (int c = lane * VN; c < C; c += 32 * VN) {
            float xf[VN], dy[VN], wf[VN], dr[VN];
            ldv<T, VN>(xr + c, xf);
            ldv<T, VN>(dyr + c, dy);
            ldv<T, VN>(w + c, wf);
            float *drow = dres + (long)row * C + c;
            ld_f32<VN>(drow, dr);
#pragma unroll
            for (int k = 0; k < VN; k++) {
                if (layernorm) {
                    float nrm = (xf[k] - mean) * rstd, dn = wf[k] * dy[k];
                    dr[k] += (dn - m1 - nrm * m2) * rstd;
                    if (wgrad) {
                        atomicAdd(&sdw[c + k], nrm * dy[k]);
                        if (db) atomicAdd(&sdb[c + k], dy[k]);
                    }
                } else {
                    dr[k] += dy[k] * wf[k] * rstd - kr * xf[k];
                    if (wgrad) atomicAdd(&sdw[c + k], dy[k] * xf[k] * rstd);
                }
            }
            st_f32<VN>(drow, dr);
            if (dres_t) stv<T, VN>(dres_t + (long)row * ldt + c, dr);
        }
    }
    if (wgrad) {
        __syncthreads();
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            if (dw) atomicAdd(&dw[c], sdw[c]);
            if (db) atomicAdd(&db[c], sdb[c]);
        }
    }
}
// With weight gradients and C <= IT * 32 * VN: each lane keeps its columns' partial dw/db in
// registers over all its rows, and only the warp totals go through shared memory.
template <typename T, int VN, int IT, bool LN>
__global__ void norm_bwd_reg_kernel(float *dres, T *dres_t, float *dw, float *db, const T *dout, const T *x, const T *w,
                                    const float *mean_in, const float *rstd_in, int N, int C, bool layernorm, int ldt) {
    extern __shared__ float sh[];
    float *sdw = sh, *sdb = sh + C;
    for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) sh[c] = 0;
    __syncthreads();
    float aw[IT][VN], ab[LN ? IT : 1][VN];
#pragma unroll
    for (int it = 0; it < IT; it++)
#pragma unroll
        for (int k = 0; k < VN; k++) {
            aw[it][k] = 0;
            if constexpr (LN) ab[it][k] = 0;
        }
    int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    for (int row = blockIdx.x * warps + threadIdx.x / 32; row < N; row += gridDim.x * warps) {
        const T *xr = x + (long)row * C, *dyr = dout + (long)row * C;
        float mean = LN ? mean_in[row] : 0.0f, rstd = rstd_in[row];
        constexpr bool CACHE = IT <= 4;  // keep the row in registers between the two passes (else reload: L1)
        float xf[CACHE ? IT : 1][VN], dy[CACHE ? IT : 1][VN];
        float s1 = 0, s2 = 0;
#pragma unroll
        for (int it = 0; it < IT; it++) {
            int c = (lane + it * 32) * VN;
            if (c >= C) continue;
            float wf[VN];
            const int ci = CACHE ? it : 0;
            ldv<T, VN>(xr + c, xf[ci]);
            ldv<T, VN>(dyr + c, dy[ci]);
            ldv<T, VN>(w + c, wf);
#pragma unroll
            for (int k = 0; k < VN; k++) {
                if constexpr (LN) {
                    float nrm = (xf[ci][k] - mean) * rstd, dn = wf[k] * dy[ci][k];
                    s1 += dn;
                    s2 += dn * nrm;
                } else s1 += dy[ci][k] * wf[k] * xf[ci][k];
            }
        }
        s1 = warp_sum(s1);
        s2 = warp_sum(s2);
        float m1 = s1 / C, m2 = s2 / C, kr = s1 * rstd * rstd * rstd / C;
#pragma unroll
        for (int it = 0; it < IT; it++) {
            int c = (lane + it * 32) * VN;
            if (c >= C) continue;
            float wf[VN], dr[VN];
            const int ci = CACHE ? it : 0;
            if (!CACHE) {
                ldv<T, VN>(xr + c, xf[ci]);
                ldv<T, VN>(dyr + c, dy[ci]);
            }
            ldv<T, VN>(w + c, wf);
            float *drow = dres + (long)row * C + c;
#pragma unroll
            for (int k = 0; k < VN; k++) dr[k] = drow[k];
#pragma unroll
            for (int k = 0; k < VN; k++) {
                if constexpr (LN) {
                    float nrm = (xf[ci][k] - mean) * rstd, dn = wf[k] * dy[ci][k];
                    dr[k] += (dn - m1 - nrm * m2) * rstd;
                    aw[it][k] += nrm * dy[ci][k];
                    if constexpr (LN) ab[it][k] += dy[ci][k];
                } else {
                    dr[k] += dy[ci][k] * wf[k] * rstd - kr * xf[ci][k];
                    aw[it][k] += dy[ci][k] * xf[ci][k] * rstd;
                }
            }
#pragma unroll
            for (int k = 0; k < VN; k++) drow[k] = dr[k];
            if (dres_t) stv<T, VN>(dres_t + (long)row * ldt + c, dr);
        }
    }
#pragma unroll
    for (int it = 0; it < IT; it++) {
        int c = (lane + it * 32) * VN;
        if (c >= C) continue;
#pragma unroll
        for (int k = 0; k < VN; k++) {
            atomicAdd(&sdw[c + k], aw[it][k]);
            if constexpr (LN)
                if (db) atomicAdd(&sdb[c + k], ab[it][k]);
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        if (dw) atomicAdd(&dw[c], sdw[c]);
        if (db) atomicAdd(&db[c], sdb[c]);
    }
}

template <typename T, int VN, int IT, bool LN>
static void launch_norm_bwd_reg_(float *dres, T *dres_t, float *dw, float *db, const T *dout, const T *x, const T *w, const float *mean,
                                const float *rstd, int N, int C, bool layernorm, cudaStream_t s, int ldt) {
    size_t smem = 2 * (size_t)C * sizeof(float);
    static bool attr;
    if (!attr) {
        cudaFuncSetAttribute(norm_bwd_reg_kernel<T, VN, IT, LN>, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024);
        attr = true;
    }
    int grid = cdiv(N, 8) < 264 ? cdiv(N, 8) : 264;
    norm_bwd_reg_kernel<T, VN, IT, LN><<<grid, 256, smem, s>>>(dres, dres_t, dw, db, dout, x, w, mean, rstd, N, C, layernorm, ldt);
    KCHECK();
}

template <typename T, int VN, int IT>
static void launch_norm_bwd_reg(float *dres, T *dres_t, float *dw, float *db, const T *dout, const T *x, const T *w, const float *mean,
                                const float *rstd, int N, int C, bool layernorm, cudaStream_t s, int ldt) {
    if (layernorm) launch_norm_bwd_reg_<T, VN, IT, true>(dres, dres_t, dw, db, dout, x, w, mean, rstd, N, C, layernorm, s, ldt);
    else launch_norm_bwd_reg_<T, VN, IT, false>(dres, dres_t, dw, db, dout, x, w, mean, rstd, N, C, layernorm, s, ldt);
}

template <typename T>
void k_norm_bwd(float *dres, T *dres_t, float *dw, float *db, const T *dout, const T *x, const T *w, const float *mean,
                const float *rstd, int N, int C, bool layernorm, cudaStream_t s, int ldt) {
    constexpr int VN = 16 / sizeof(T);
    if ((dw || db) && C % VN == 0 && C <= 8 * 32 * VN && ldt % VN == 0) {
        int it = (C / VN + 31) / 32;
        if (it <= 2) launch_norm_bwd_reg<T, VN, 2>(dres, dres_t, dw, db, dout, x, w, mean, rstd, N, C, layernorm, s, ldt);
        else if (it <= 4) launch_norm_bwd_reg<T, VN, 4>(dres, dres_t, dw, db, dout, x, w, mean, rstd, N, C, layernorm, s, ldt);
        else launch_norm_bwd_reg<T, VN, 8>(dres, dres_t, dw, db, dout, x, w, mean, rstd, N, C, layernorm, s, ldt);
        return;
    }
    size_t smem = dw || db ? 2 * (size_t)C * sizeof(float) : 0;
    // With weight gradients, fewer blocks (each flushes C atomics); otherwise one warp per row.
    int grid = dw || db ? 264 : cdiv(N, 8);
    if (grid > cdiv(N, 8)) grid = cdiv(N, 8);
    static bool attr_set[2][2];
    bool vec = C % VN == 0 && (C % 4 == 0);
    if (!attr_set[sizeof(T) == 4][vec]) {
        if (vec) cudaFuncSetAttribute(norm_bwd_kernel<T, VN>, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024);
        else cudaFuncSetAttribute(norm_bwd_kernel<T, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024);
        attr_set[sizeof(T) == 4][vec] = true;
    }
    if (vec && ldt % VN == 0) norm_bwd_kernel<T, VN><<<grid, 256, smem, s>>>(dres, dres_t, dw, db, dout, x, w, mean, rstd, N, C, layernorm, ldt);
    else norm_bwd_kernel<T, 1><<<grid, 256, smem, s>>>(dres, dres_t, dw, db, dout, x, w, mean, rstd, N, C, layernorm, ldt);
    KCHECK();
}

// ---------------- activations ----------------
#define GELU_K 0.7978845608028654f
template <typename T, int VN> __global__ void gelu_fwd_kernel(T *out, const T *x, long n) {
    for (long i = (blockIdx.x * (long)blockDim.x + threadIdx.x) * VN; i < n; i += (long)gridDim.x * blockDim.x * VN) {
        float f[VN];
        ldv<T, VN>(x + i, f);
#pragma unroll
        for (int k = 0; k < VN; k++) {
            float v = f[k];
            f[k] = 0.5f * v * (1.0f + tanhf(GELU_K * (v + 0.044715f * v * v * v)));
        }
        stv<T, VN>(out + i, f);
    }
}
template <typename T, int VN> __global__ void gelu_bwd_kernel(T *dx, const T *x, const T *dout, long n) {
    for (long i = (blockIdx.x * (long)blockDim.x + threadIdx.x) * VN; i < n; i += (long)gridDim.x * blockDim.x * VN) {
        float f[VN], d[VN];
        ldv<T, VN>(x + i, f);
        ldv<T, VN>(dout + i, d);
#pragma unroll
        for (int k = 0; k < VN; k++) {
            float v = f[k], u = GELU_K * (v + 0.044715f * v * v * v), t = tanhf(u);
            float grad = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * 0.044715f * v * v);
            f[k] = grad * d[k];
        }
        stv<T, VN>(dx + i, f);
    }
}
template <typename T> void k_gelu_fwd(T *out, const T *x, long n, cudaStream_t s) {
    constexpr int VN = 16 / sizeof(T);
    if (n % VN == 0) gelu_fwd_kernel<T, VN><<<(int)fminl(cdiv(n / VN, 256), 1L << 20), 256, 0, s>>>(out, x, n);
    else gelu_fwd_kernel<T, 1><<<(int)fminl(cdiv(n, 256), 1L << 20), 256, 0, s>>>(out, x, n);
    KCHECK();
}
template <typename T> void k_gelu_bwd(T *dx, const T *x, const T *dout, long n, cudaStream_t s) {
    constexpr int VN = 16 / sizeof(T);
    if (n % VN == 0) gelu_bwd_kernel<T, VN><<<(int)fminl(cdiv(n / VN, 256), 1L << 20), 256, 0, s>>>(dx, x, dout, n);
    else gelu_bwd_kernel<T, 1><<<(int)fminl(cdiv(n, 256), 1L << 20), 256, 0, s>>>(dx, x, dout, n);
    KCHECK();
}

// gu rows are [gate (I) | up (I)].
template <typename T, int VN> __global__ void swiglu_fwd_kernel(T *out, const T *gu, int N, int I) {
    long total = (long)N * I;
    for (long i = (blockIdx.x * (long)blockDim.x + threadIdx.x) * VN; i < total; i += (long)gridDim.x * blockDim.x * VN) {
        long n = i / I, c = i % I;
        float g[VN], u[VN];
        ldv<T, VN>(gu + n * 2 * I + c, g);
        ldv<T, VN>(gu + n * 2 * I + I + c, u);
#pragma unroll
        for (int k = 0; k < VN; k++) g[k] = g[k] / (1.0f + __expf(-g[k])) * u[k];
        stv<T, VN>(out + i, g);
    }
}
template <typename T, int VN> __global__ void swiglu_bwd_kernel(T *dgu, const T *gu, const T *dout, int N, int I, int ldo) {
    long total = (long)N * I;
    for (long i = (blockIdx.x * (long)blockDim.x + threadIdx.x) * VN; i < total; i += (long)gridDim.x * blockDim.x * VN) {
        long n = i / I, c = i % I;
        float g[VN], u[VN], d[VN], dg[VN], du[VN];
        ldv<T, VN>(gu + n * 2 * I + c, g);
        ldv<T, VN>(gu + n * 2 * I + I + c, u);
        ldv<T, VN>(dout + i, d);
#pragma unroll
        for (int k = 0; k < VN; k++) {
            float sig = 1.0f / (1.0f + __expf(-g[k]));
            du[k] = d[k] * g[k] * sig;
            dg[k] = d[k] * u[k] * sig * (1.0f + g[k] * (1.0f - sig));
        }
        stv<T, VN>(dgu + n * ldo + c, dg);
        stv<T, VN>(dgu + n * ldo + I + c, du);
    }
}
template <typename T> void k_swiglu_fwd(T *out, const T *gu, int N, int I, cudaStream_t s) {
    constexpr int VN = 16 / sizeof(T);
    long n = (long)N * I;
    if (I % VN == 0) swiglu_fwd_kernel<T, VN><<<(int)fminl(cdiv(n / VN, 256), 1L << 20), 256, 0, s>>>(out, gu, N, I);
    else swiglu_fwd_kernel<T, 1><<<(int)fminl(cdiv(n, 256), 1L << 20), 256, 0, s>>>(out, gu, N, I);
    KCHECK();
}
template <typename T> void k_swiglu_bwd(T *dgu, const T *gu, const T *dout, int N, int I, cudaStream_t s, int ldo) {
    constexpr int VN = 16 / sizeof(T);
    long n = (long)N * I;
    if (I % VN == 0 && ldo % VN == 0) swiglu_bwd_kernel<T, VN><<<(int)fminl(cdiv(n / VN, 256), 1L << 20), 256, 0, s>>>(dgu, gu, dout, N, I, ldo);
    else swiglu_bwd_kernel<T, 1><<<(int)fminl(cdiv(n, 256), 1L << 20), 256, 0, s>>>(dgu, gu, dout, N, I, ldo);
    KCHECK();
}

// ---------------- rope ----------------
template <typename T>
__global__ void rope_fwd_kernel(T *qkv, const float *cos_t, const float *sin_t, const int *pos, int N, int Tn, int NH, int NKV, int HD, int S,
                                int QW) {
    int half = HD / 2, heads = NH + NKV;
    long total = (long)N * heads * half;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int j = (int)(i % half);
        long r = i / half;
        int h = (int)(r % heads);
        long n = r / heads;
        int t = pos ? pos[n] : (int)(n % Tn);
        T *v = qkv + n * S + (h < NH ? h * HD : QW + (h - NH) * HD);
        float c = cos_t[t * half + j], s = sin_t[t * half + j];
        float x1 = to_f<T>(v[j]), x2 = to_f<T>(v[j + half]);
        v[j] = from_f<T>(x1 * c - x2 * s);
        v[j + half] = from_f<T>(x2 * c + x1 * s);
    }
}
// VN pairs per thread with 16-byte accesses (half a head a multiple of VN).
template <typename T, int VN>
__global__ void rope_fwd_vec_kernel(T *qkv, const float *cos_t, const float *sin_t, const int *pos, int N, int Tn, int NH, int NKV, int HD,
                                    int S, int QW) {
    int half = HD / 2, heads = NH + NKV, per = half / VN;
    long total = (long)N * heads * per;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int j = (int)(i % per) * VN;
        long r = i / per;
        int h = (int)(r % heads);
        long n = r / heads;
        int t = pos ? pos[n] : (int)(n % Tn);
        T *v = qkv + n * S + (h < NH ? h * HD : QW + (h - NH) * HD);
        float x1[VN], x2[VN], y1[VN], y2[VN];
        ldv<T, VN>(v + j, x1);
        ldv<T, VN>(v + j + half, x2);
        const float *cp = cos_t + (long)t * half + j, *sp = sin_t + (long)t * half + j;
#pragma unroll
        for (int k = 0; k < VN; k++) {
            float c = cp[k], sn = sp[k];
            y1[k] = x1[k] * c - x2[k] * sn;
            y2[k] = x2[k] * c + x1[k] * sn;
        }
        stv<T, VN>(v + j, y1);
        stv<T, VN>(v + j + half, y2);
    }
}
template <typename T>
void k_rope_fwd(T *qkv, const float *cos_t, const float *sin_t, const int *pos, int N, int Tn, int NH, int NKV, int HD, int S, int QW,
                cudaStream_t s) {
    constexpr int VN = 16 / sizeof(T);
    if ((HD / 2) % VN == 0 && S % VN == 0 && QW % VN == 0) {
        long total = (long)N * (NH + NKV) * (HD / 2 / VN);
        rope_fwd_vec_kernel<T, VN><<<(int)fminl(cdiv(total, 256), 1L << 20), 256, 0, s>>>(qkv, cos_t, sin_t, pos, N, Tn, NH, NKV, HD, S, QW);
    } else {
        long total = (long)N * (NH + NKV) * (HD / 2);
        rope_fwd_kernel<T><<<(int)fminl(cdiv(total, 256), 1L << 20), 256, 0, s>>>(qkv, cos_t, sin_t, pos, N, Tn, NH, NKV, HD, S, QW);
    }
    KCHECK();
}

// One thread per (row, pair): q part always, k and v only when dkv_acc is given.
template <typename T>
__global__ void attn_finalize_kernel(T *dqkv, const float *dq_acc, const float *dkv_acc, const float *cos_t, const float *sin_t,
                                     const int *pos, int N, int Tn, int NH, int NKV, int HD, int S, int QW, int ldo) {
    int half = HD / 2, KVW = NKV * HD;
    int heads = dkv_acc ? NH + 2 * NKV : NH;
    long total = (long)N * heads * half;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int j = (int)(i % half);
        long r = i / half;
        int h = (int)(r % heads);
        long n = r / heads;
        int t = pos ? pos[n] : (int)(n % Tn);
        const float *src;
        T *dst;
        bool rot = cos_t != nullptr;
        if (h < NH) { src = dq_acc + n * QW + h * HD; dst = dqkv + n * ldo + h * HD; }
        else if (h < NH + NKV) { src = dkv_acc + n * 2 * KVW + (h - NH) * HD; dst = dqkv + n * ldo + QW + (h - NH) * HD; }
        else { src = dkv_acc + n * 2 * KVW + KVW + (h - NH - NKV) * HD; dst = dqkv + n * ldo + QW + KVW + (h - NH - NKV) * HD; rot = false; }
        float x1 = src[j], x2 = src[j + half];
        if (rot) {
            float c = cos_t[t * half + j], s = sin_t[t * half + j];
            float y1 = x1 * c + x2 * s, y2 = x2 * c - x1 * s;
            x1 = y1;
            x2 = y2;
        }
        dst[j] = from_f<T>(x1);
        dst[j + half] = from_f<T>(x2);
    }
}
template <typename T>
void k_attn_finalize(T *dqkv, const float *dq_acc, const float *dkv_acc, const float *cos_t, const float *sin_t, const int *pos, int N,
                     int Tn, int NH, int NKV, int HD, int S, int QW, cudaStream_t s, int ldo) {
    long total = (long)N * (dkv_acc ? NH + 2 * NKV : NH) * (HD / 2);
    attn_finalize_kernel<T><<<(int)fminl(cdiv(total, 256), 1L << 20), 256, 0, s>>>(dqkv, dq_acc, dkv_acc, cos_t, sin_t, pos, N, Tn,
                                                                                   NH, NKV, HD, S, QW, ldo);
    KCHECK();
}

// ---------------- cross-entropy, one block per row ----------------
template <typename T>
__global__ void __launch_bounds__(512) ce_kernel(T *logits, int ld, const int *targets, float *loss_rows, int V, float inv_count, bool grad) {
    int row = blockIdx.x;
    T *x = logits + (long)row * ld;
    int tgt = targets[row];
    __shared__ float sm[32], ss[32];
    if (tgt < 0) {
        if (grad)
            for (int j = threadIdx.x; j < V; j += blockDim.x) x[j] = from_f<T>(0.0f);
        if (threadIdx.x == 0) loss_rows[row] = 0;
        return;
    }
    constexpr int VN = 16 / sizeof(T);
    bool vec = (ld % VN) == 0;  // rows start 16-byte aligned: 16-byte loads for the whole vectors
    int Vv = vec ? V / VN * VN : 0;
    float m = -INFINITY, s = 0;
    for (int j = threadIdx.x * VN; j < Vv; j += blockDim.x * VN) {
        float f[VN], mx = -INFINITY;
        ldv<T, VN>(x + j, f);
#pragma unroll
        for (int k = 0; k < VN; k++) mx = fmaxf(mx, f[k]);
        if (mx > m) { s *= __expf(m - mx); m = mx; }
#pragma unroll
        for (int k = 0; k < VN; k++) s += __expf(f[k] - m);
    }
    for (int j = Vv + threadIdx.x; j < V; j += blockDim.x) {
        float v = to_f<T>(x[j]);
        if (v > m) { s = s * __expf(m - v) + 1.0f; m = v; }
        else s += __expf(v - m);
    }
    // combine (m, s) over the warp, then the block
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        float mn = fmaxf(m, m2);
        s = (m == -INFINITY ? 0.0f : s * __expf(m - mn)) + (m2 == -INFINITY ? 0.0f : s2 * __expf(m2 - mn));
        m = mn;
    }
    int w = threadIdx.x / 32, nw = blockDim.x / 32;
    if (threadIdx.x % 32 == 0) { sm[w] = m; ss[w] = s; }
    __syncthreads();
    if (threadIdx.x < 32) {
        m = threadIdx.x < nw ? sm[threadIdx.x] : -INFINITY;
        s = threadIdx.x < nw ? ss[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
            float mn = fmaxf(m, m2);
            s = (m == -INFINITY ? 0.0f : s * __expf(m - mn)) + (m2 == -INFINITY ? 0.0f : s2 * __expf(m2 - mn));
            m = mn;
        }
        if (threadIdx.x == 0) { sm[0] = m; ss[0] = s; }
    }
    __syncthreads();
    float logz = sm[0] + logf(ss[0]);
    float xt = to_f<T>(x[tgt]);
    __syncthreads();  // every thread has read x[tgt] before it is overwritten
    if (threadIdx.x == 0) loss_rows[row] = logz - xt;
    if (grad) {
        for (int j = threadIdx.x * VN; j < Vv; j += blockDim.x * VN) {
            float f[VN];
            ldv<T, VN>(x + j, f);
#pragma unroll
            for (int k = 0; k < VN; k++) f[k] = (__expf(f[k] - logz) - (j + k == tgt ? 1.0f : 0.0f)) * inv_count;
            stv<T, VN>(x + j, f);
        }
        for (int j = Vv + threadIdx.x; j < V; j += blockDim.x) {
            float p = __expf(to_f<T>(x[j]) - logz);
            x[j] = from_f<T>((p - (j == tgt ? 1.0f : 0.0f)) * inv_count);
        }
    }
}
template <typename T>
void k_cross_entropy(T *logits, int ld, const int *targets, float *loss_rows, int rows, int V, float inv_count, bool grad, cudaStream_t s) {
    if (rows <= 0) return;
    ce_kernel<T><<<rows, V >= 4096 ? 512 : 128, 0, s>>>(logits, ld, targets, loss_rows, V, inv_count, grad);
    KCHECK();
}

// ---------------- column sums: bias gradients, sum_n a*b ----------------
template <typename T> __global__ void colsum_kernel(float *out, const T *a, const T *b, int N, int width, int ld) {
    __shared__ float sh[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int rows_per = (N + gridDim.y - 1) / gridDim.y;
    int r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
    float acc = 0;
    if (c < width)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            float v = to_f<T>(a[(long)r * ld + c]);
            if (b) v *= to_f<T>(b[(long)r * ld + c]);
            acc += v;
        }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < width) {
        for (int k = 1; k < 8; k++) acc += sh[k][threadIdx.x];
        atomicAdd(&out[c], acc);
    }
}
template <typename T> void k_bias_grad(float *db, const T *dy, int N, int width, int ld, cudaStream_t s) {
    dim3 grid(cdiv(width, 32), N >= 4096 ? 32 : (N >= 256 ? 8 : 1));
    colsum_kernel<T><<<grid, dim3(32, 8), 0, s>>>(db, dy, (const T *)nullptr, N, width, ld);
    KCHECK();
}
template <typename T> void k_colsum_mul(float *out, const T *a, const T *b, int N, int width, int ld, cudaStream_t s) {
    dim3 grid(cdiv(width, 32), N >= 4096 ? 32 : (N >= 256 ? 8 : 1));
    colsum_kernel<T><<<grid, dim3(32, 8), 0, s>>>(out, a, b, N, width, ld);
    KCHECK();
}

// ---------------- adapters (AdaLoRA, VeRA) ----------------
template <typename T>
__global__ void build_beff_kernel(T *beff, const float *B, int ldb, const float *rowv, const float *colv, float s, int out, int r) {
    long n = (long)out * r;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        int o = (int)(i / r), k = (int)(i % r);
        float v = s * B[(long)o * ldb + k];
        if (rowv) v *= rowv[o];
        if (colv) v *= colv[k];
        beff[i] = from_f<T>(v);
    }
}
template <typename T>
void k_build_beff(T *beff, const float *B, int ldb, const float *rowv, const float *colv, float s, int out, int r, cudaStream_t st) {
    build_beff_kernel<T><<<cdiv((long)out * r, 256), 256, 0, st>>>(beff, B, ldb, rowv, colv, s, out, r);
    KCHECK();
}
// One thread per row o: drow and dB.
__global__ void adapter_rowgrad_kernel(float *drow, float *dB, const float *G, const float *B, int ldb, const float *colv, float s, int out, int r) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out) return;
    float acc = 0;
    for (int k = 0; k < r; k++) {
        float gk = G[(long)o * r + k] * (colv ? colv[k] : 1.0f);
        if (drow) acc += gk * B[(long)o * ldb + k];
        if (dB) dB[(long)o * r + k] += s * gk;
    }
    if (drow) drow[o] += s * acc;
}
// Blocks over chunks of 64 rows, one thread per column k: dcol.
__global__ void adapter_colgrad_kernel(float *dcol, const float *G, const float *B, int ldb, const float *rowv, float s, int out, int r) {
    int k = threadIdx.x, o0 = blockIdx.x * 64;
    if (k >= r) return;
    float acc = 0;
    for (int o = o0; o < min(out, o0 + 64); o++) acc += G[(long)o * r + k] * B[(long)o * ldb + k] * (rowv ? rowv[o] : 1.0f);
    atomicAdd(&dcol[k], s * acc);
}
void k_adapter_grads(float *drow, float *dcol, float *dB, const float *G, const float *B, int ldb, const float *rowv, const float *colv,
                     float s, int out, int r, cudaStream_t st) {
    if (drow || dB) adapter_rowgrad_kernel<<<cdiv(out, 128), 128, 0, st>>>(drow, dB, G, B, ldb, colv, s, out, r);
    if (dcol) adapter_colgrad_kernel<<<cdiv(out, 64), r <= 1024 ? r : 1024, 0, st>>>(dcol, G, B, ldb, rowv, s, out, r);
    KCHECK();
}

// ---------------- adapter dropout ----------------
template <typename T> __global__ void dropout_kernel(T *out, const T *x, long n, float p, float scale, uint64_t seed, bool add) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float u = (float)(mix64(seed ^ ((uint64_t)i * 0xD1B54A32D192ED03ull)) >> 40) * (1.0f / 16777216.0f);
        float v = u >= p ? to_f<T>(x[i]) * scale : 0.0f;
        if (add) v += to_f<T>(out[i]);
        out[i] = from_f<T>(v);
    }
}
template <typename T> void k_dropout(T *out, const T *x, long n, float p, uint64_t seed, bool add, cudaStream_t s) {
    if (n <= 0) return;
    dropout_kernel<T><<<(int)fminl(cdiv(n, 256), 132L * 16), 256, 0, s>>>(out, x, n, p, 1.0f / (1.0f - p), seed, add);
    KCHECK();
}

// ---------------- AdaLoRA's orthogonal regulariser ----------------
// One block per term; the same thread touches the same elements in both passes.
__global__ void orth_finalize_kernel(float *D, const long *off, const int *rr, double *ss, double coef2) {
    __shared__ double sh[32];
    __shared__ float k_sh;
    int t = blockIdx.x, r = rr[t];
    float *Dt = D + off[t];
    long n = (long)r * r;
    double acc = 0;
    for (long i = threadIdx.x; i < n; i += blockDim.x) {
        float v = Dt[i];
        if (i / r == i % r) v -= 1.0f;
        Dt[i] = v;
        acc += (double)v * v;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        acc = threadIdx.x < blockDim.x / 32 ? sh[threadIdx.x] : 0.0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (threadIdx.x == 0) {
            ss[t] = acc;
            k_sh = acc > 0 ? (float)(coef2 / sqrt(acc)) : 0.0f;  // torch's norm backward gives 0 at a zero norm
        }
    }
    __syncthreads();
    float k = k_sh;
    for (long i = threadIdx.x; i < n; i += blockDim.x) Dt[i] *= k;
}
void k_orth_finalize(float *D, const long *off, const int *r, double *ss, int n_terms, double coef2, cudaStream_t s) {
    if (n_terms <= 0) return;
    orth_finalize_kernel<<<n_terms, 256, 0, s>>>(D, off, r, ss, coef2);
    KCHECK();
}

__global__ void adalora_scores_kernel(float *ai, float *au, const float *p, const float *g, long n, float b1, float b2) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float ipt = fabsf(p[i] * g[i]);
        float a = b1 * ai[i] + (1.0f - b1) * ipt;
        ai[i] = a;
        au[i] = b2 * au[i] + (1.0f - b2) * fabsf(ipt - a);
    }
}
void k_adalora_scores(float *avg_ipt, float *avg_unc, const float *p, const float *g, long n, float b1, float b2, cudaStream_t s) {
    if (n <= 0) return;
    adalora_scores_kernel<<<(int)fminl(cdiv(n, 256), 132L * 16), 256, 0, s>>>(avg_ipt, avg_unc, p, g, n, b1, b2);
    KCHECK();
}

// A double sum over the block (blockDim.x a multiple of 32, at most 1024), valid in thread 0.
static __device__ double block_sum_f64(double acc) {
    __shared__ double sh[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    __syncthreads();  // sh may still be read by a previous call
    if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = acc;
    __syncthreads();
    acc = threadIdx.x < blockDim.x / 32 ? sh[threadIdx.x] : 0.0;
    if (threadIdx.x < 32)
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    return acc;
}
// One block per triplet: score = s(E_j) + mean_k s(A_jk) + mean_o s(B_oj), s = avg_ipt * avg_unc
// (rank_allocator.c's mask_to_budget, summed in double as there).
__global__ void adalora_triplet_kernel(const float *ai, const float *au, const AdaTriplet *trip, double *score) {
    const AdaTriplet t = trip[blockIdx.x];
    double sa = 0, sb = 0;
    for (int k = threadIdx.x; k < t.in; k += blockDim.x) sa += (double)ai[t.a + k] * au[t.a + k];
    for (int o = threadIdx.x; o < t.out; o += blockDim.x) sb += (double)ai[t.b + (long)o * t.r] * au[t.b + (long)o * t.r];
    sa = block_sum_f64(sa);
    sb = block_sum_f64(sb);
    if (threadIdx.x == 0) score[blockIdx.x] = (double)ai[t.e] * au[t.e] + (sa / t.in + sb / t.out);
}
void k_adalora_triplet_scores(const float *avg_ipt, const float *avg_unc, const AdaTriplet *trip, int n, double *score, cudaStream_t s) {
    if (n <= 0) return;
    adalora_triplet_kernel<<<n, 256, 0, s>>>(avg_ipt, avg_unc, trip, score);
    KCHECK();
}
__global__ void adalora_zero_kernel(float *master, bf16 *work, const AdaTriplet *trip, const unsigned char *kept, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || kept[i]) return;
    master[trip[i].e] = 0.0f;
    if (work) work[trip[i].e] = __float2bfloat16(0.0f);
}
void k_adalora_zero_ranks(float *master, bf16 *work, const AdaTriplet *trip, const unsigned char *kept, int n, cudaStream_t s) {
    if (n <= 0) return;
    adalora_zero_kernel<<<(n + 255) / 256, 256, 0, s>>>(master, work, trip, kept, n);
    KCHECK();
}

// ---------------- optimizer ----------------
struct AdamArgs {
    float decay_mul, b1, b2, eps, step_size, bc2_sqrt;
};
__device__ __forceinline__ float adamw_one(float w, float gi, float &mi, float &vi, const AdamArgs &a) {
    w *= a.decay_mul;
    mi = a.b1 * mi + (1.0f - a.b1) * gi;
    vi = a.b2 * vi + (1.0f - a.b2) * gi * gi;
    return w - a.step_size * mi / (sqrtf(vi) / a.bc2_sqrt + a.eps);
}
// VN elements per thread and iteration (VN = 4: float4 accesses, 16-byte aligned arrays; ~30 bytes of
// traffic per parameter, so the vector loads matter: 1.1B parameters in ~9.7 ms with scalar ones on the H200).
template <int VN>
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, bf16 *work, long n, AdamArgs a) {
    for (long i = (blockIdx.x * (long)blockDim.x + threadIdx.x) * VN; i < n; i += (long)gridDim.x * blockDim.x * VN) {
        float w[VN], gi[VN], mi[VN], vi[VN];
        ld_f32<VN>(p + i, w);
        ld_f32<VN>(g + i, gi);
        ld_f32<VN>(m + i, mi);
        ld_f32<VN>(v + i, vi);
#pragma unroll
        for (int k = 0; k < VN; k++) w[k] = adamw_one(w[k], gi[k], mi[k], vi[k], a);
        st_f32<VN>(m + i, mi);
        st_f32<VN>(v + i, vi);
        st_f32<VN>(p + i, w);
        if (work) stv<bf16, VN>(work + i, w);
    }
}
void k_adamw(float *p, const float *g, float *m, float *v, bf16 *work, long n, float decay_mul, float b1, float b2, float eps,
             float step_size, float bc2_sqrt, cudaStream_t s) {
    if (n <= 0) return;
    AdamArgs a = {decay_mul, b1, b2, eps, step_size, bc2_sqrt};
    bool vec = !((uintptr_t)p % 16 || (uintptr_t)g % 16 || (uintptr_t)m % 16 || (uintptr_t)v % 16 || (uintptr_t)work % 8);
    long nv = vec ? n / 4 * 4 : 0;
    if (nv) adamw_kernel<4><<<(int)fminl(cdiv(nv / 4, 256), 132L * 16), 256, 0, s>>>(p, g, m, v, work, nv, a);
    if (n > nv)
        adamw_kernel<1><<<(int)fminl(cdiv(n - nv, 256), 132L * 16), 256, 0, s>>>(p + nv, g + nv, m + nv, v + nv, work ? work + nv : nullptr,
                                                                                 n - nv, a);
    KCHECK();
}

__global__ void sumsq_kernel(float *partials, const float *x, long n) {
    float acc = 0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) acc += x[i] * x[i];
    acc = warp_sum(acc);
    __shared__ float sh[32];
    if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        acc = threadIdx.x < blockDim.x / 32 ? sh[threadIdx.x] : 0.0f;
        acc = warp_sum(acc);
        if (threadIdx.x == 0) partials[blockIdx.x] = acc;
    }
}
void k_sumsq(float *partials, int n_partials, const float *x, long n, cudaStream_t s) {
    sumsq_kernel<<<n_partials, 256, 0, s>>>(partials, x, n);
    KCHECK();
}
__global__ void scale_kernel(float *x, float k, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) x[i] *= k;
}
void k_scale(float *x, float k, long n, cudaStream_t s) {
    if (n <= 0) return;
    scale_kernel<<<(int)fminl(cdiv(n, 256), 132L * 16), 256, 0, s>>>(x, k, n);
    KCHECK();
}
__global__ void add_kernel(float *x, const float *y, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) x[i] += y[i];
}
void k_add(float *x, const float *y, long n, cudaStream_t s) {
    if (n <= 0) return;
    add_kernel<<<(int)fminl(cdiv(n, 256), 132L * 16), 256, 0, s>>>(x, y, n);
    KCHECK();
}

// ---------------- instantiations ----------------
#define INST(T)                                                                                                               \
    template void k_convert_f32<T>(T *, const float *, long, cudaStream_t);                                                  \
    template void k_dropout<T>(T *, const T *, long, float, uint64_t, bool, cudaStream_t);                                   \
    template void k_build_beff<T>(T *, const float *, int, const float *, const float *, float, int, int, cudaStream_t);   \
    template void k_fill_random<T>(T *, long, float, uint64_t, cudaStream_t);                                                \
    template void k_embed_fwd<T>(T *, const int *, const T *, const T *, const int *, int, int, int, cudaStream_t);           \
    template void k_norm_fwd<T>(T *, float *, float *, const T *, const T *, const T *, int, int, float, bool, bool, cudaStream_t); \
    template void k_norm_bwd<T>(float *, T *, float *, float *, const T *, const T *, const T *, const float *, const float *, int, \
                                int, bool, cudaStream_t, int);                                                                     \
    template void k_gelu_fwd<T>(T *, const T *, long, cudaStream_t);                                                          \
    template void k_gelu_bwd<T>(T *, const T *, const T *, long, cudaStream_t);                                               \
    template void k_swiglu_fwd<T>(T *, const T *, int, int, cudaStream_t);                                                    \
    template void k_swiglu_bwd<T>(T *, const T *, const T *, int, int, cudaStream_t, int);                                         \
    template void k_rope_fwd<T>(T *, const float *, const float *, const int *, int, int, int, int, int, int, int, cudaStream_t); \
    template void k_attn_finalize<T>(T *, const float *, const float *, const float *, const float *, const int *, int, int, int, int, \
                                     int, int, int, cudaStream_t, int);                                                            \
    template void k_cross_entropy<T>(T *, int, const int *, float *, int, int, float, bool, cudaStream_t);                    \
    template void k_bias_grad<T>(float *, const T *, int, int, int, cudaStream_t);                                            \
    template void k_colsum_mul<T>(float *, const T *, const T *, int, int, int, cudaStream_t);
INST(float)
INST(bf16)
