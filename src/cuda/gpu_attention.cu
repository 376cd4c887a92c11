// gpu_attention.cu: causal softmax attention (GQA, optional sliding window) forward and backward.
//  - flash_fwd / flash_bwd: bf16 tensor-core kernels (mma.sync m16n8k16, FlashAttention-2 style)
//    for head_dim 64 and 128. Forward keeps only the log-sum-exp per row; backward recomputes the
//    probabilities, parallel over key blocks and query heads (the heads of a GQA group add into
//    the same dK/dV rows), dQ through fp32 atomics, then one kernel applies the inverse rope and converts.
//  - flash_fwd_wg / flash_bwd_wg: the same algorithms on Hopper's warpgroup MMA (wgmma) for head_dim
//    64, used when the build targets sm_90a (PEFT_WGMMA) and the GPU is an sm_90 one.
//  - attn_generic_*: one warp per query row, any head size and type: the fp32 parity path.
// qkv rows are [q (NH*HD) | k (NKV*HD) | v (NKV*HD)] with row stride S.
// Packing (AttnDims.pos): query t attends only to keys from first(t) = t - pos[t] on, its own example's.
// first is non-decreasing in t, so a query tile's first row bounds the keys any of its rows needs (key
// tiles wholly before it are skipped) and its last row says whether a key tile needs the mask. The flash
// kernels take it as the template flag PACK: without positions they are the code they were.
// Encoders (AttnDims.bidir): every query attends to every key of its row whose kmask entry is set; the
// flash kernels take it as the template flag ENC (mma.sync kernels only: the wgmma ones stay causal).
extern "C" {
#include "model.h"
}
#include "gpu.h"
#include "gpu_internal.cuh"
#include <algorithm>
#include <math.h>
#include <vector>

#define LOG2E 1.4426950408889634f


// first: the first key of q's example (PACK), ignored otherwise. km: the row's key mask (ENC; NULL: none).
template <bool PACK, bool ENC = false>
__device__ __forceinline__ bool masked(int key, int q, int Tn, int window, int first, const int *km = nullptr) {
    if constexpr (ENC) return key >= Tn || q >= Tn || (km && !km[key]);
    return key > q || key >= Tn || q >= Tn || (window > 0 && key < q - window + 1) || (PACK && key < first);
}
// Bidirectional attention: whether key j of row b is masked out (padding).
__device__ __forceinline__ bool key_off(const AttnDims &d, int b, int j) { return d.kmask && !d.kmask[(long)b * d.T + j]; }
// first(q) of row b (q < T).
__device__ __forceinline__ int example_start(const AttnDims &d, int b, int q) { return q - d.pos[(long)b * d.T + q]; }
// The first key of query t's softmax: the window's and (packed) its example's start.
__device__ __forceinline__ int first_key(const AttnDims &d, int b, int t) {
    if (d.bidir) return 0;
    int t0 = (d.window > 0 && t - d.window + 1 > 0) ? t - d.window + 1 : 0;
    return d.pos ? max(t0, example_start(d, b, t)) : t0;
}

// ============================ generic kernels ============================
// One warp per (b, h, t). Shared memory: per warp T floats of scores + HD floats of q + HD of dout.
template <typename T>
__global__ void attn_generic_fwd_kernel(T *out, float *lse, const T *qkv, AttnDims d) {
    extern __shared__ float sh[];
    int warps = blockDim.x / 32, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    long idx = (long)blockIdx.x * warps + w;
    if (idx >= (long)d.B * d.NH * d.T) return;
    int t = (int)(idx % d.T), h = (int)((idx / d.T) % d.NH), b = (int)(idx / ((long)d.T * d.NH));
    int kvh = h / (d.NH / d.NKV);
    float *sc = sh + (long)w * (d.T + d.HD), *qs = sc + d.T;
    const T *qrow = qkv + ((long)b * d.T + t) * d.S + h * d.HD;
    for (int i = lane; i < d.HD; i += 32) qs[i] = to_f<T>(qrow[i]);
    __syncwarp();
    int t0 = first_key(d, b, t), t1 = d.bidir ? d.T - 1 : t;
    float mx = -INFINITY;
    for (int j = t0 + lane; j <= t1; j += 32) {
        if (key_off(d, b, j)) {  // padding: probability 0
            sc[j] = -INFINITY;
            continue;
        }
        const T *kr = qkv + ((long)b * d.T + j) * d.S + d.QW + kvh * d.HD;
        float dot = 0;
        for (int i = 0; i < d.HD; i++) dot += qs[i] * to_f<T>(kr[i]);
        dot *= d.scale;
        sc[j] = dot;
        mx = fmaxf(mx, dot);
    }
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0;
    for (int j = t0 + lane; j <= t1; j += 32) {
        float e = expf(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    __syncwarp();
    float inv = 1.0f / sum;
    T *orow = out + ((long)b * d.T + t) * d.QW + h * d.HD;
    for (int i = lane; i < d.HD; i += 32) {
        float acc = 0;
        for (int j = t0; j <= t1; j++) acc += sc[j] * to_f<T>(qkv[((long)b * d.T + j) * d.S + d.QW + d.KVW + kvh * d.HD + i]);
        orow[i] = from_f<T>(acc * inv);
    }
    if (lane == 0) lse[((long)b * d.NH + h) * d.T + t] = mx + logf(sum);
}

template <typename T>
__global__ void attn_generic_bwd_kernel(float *dq_acc, float *dkv_acc, const T *dout, const T *out, const T *qkv, const float *lse,
                                        AttnDims d) {
    extern __shared__ float sh[];
    int warps = blockDim.x / 32, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    long idx = (long)blockIdx.x * warps + w;
    if (idx >= (long)d.B * d.NH * d.T) return;
    int t = (int)(idx % d.T), h = (int)((idx / d.T) % d.NH), b = (int)(idx / ((long)d.T * d.NH));
    int kvh = h / (d.NH / d.NKV);
    // D = sum_j p_j dp_j from the recomputed p and dp (equal to dout . out, without out's rounding).
    float *sc = sh + (long)w * (2 * d.T + 2 * d.HD), *dps = sc + d.T, *qs = dps + d.T, *dos = qs + d.HD;
    long n = (long)b * d.T + t;
    const T *qrow = qkv + n * d.S + h * d.HD;
    for (int i = lane; i < d.HD; i += 32) {
        qs[i] = to_f<T>(qrow[i]);
        dos[i] = to_f<T>(dout[n * d.QW + h * d.HD + i]);
    }
    __syncwarp();
    float L = lse[((long)b * d.NH + h) * d.T + t];
    int t0 = first_key(d, b, t), t1 = d.bidir ? d.T - 1 : t;
    int KVW = d.KVW;
    float Dv = 0;
    for (int j = t0 + lane; j <= t1; j += 32) {
        if (key_off(d, b, j)) {  // padding: p = 0, so no gradient through it
            sc[j] = dps[j] = 0;
            continue;
        }
        const T *kr = qkv + ((long)b * d.T + j) * d.S + d.QW + kvh * d.HD;
        const T *vr = kr + KVW;
        float dot = 0, dp = 0;
        for (int i = 0; i < d.HD; i++) {
            dot += qs[i] * to_f<T>(kr[i]);
            dp += dos[i] * to_f<T>(vr[i]);
        }
        float p = expf(dot * d.scale - L);
        sc[j] = p;
        dps[j] = dp;
        Dv += p * dp;
    }
    for (int o = 16; o > 0; o >>= 1) Dv += __shfl_xor_sync(0xffffffffu, Dv, o);
    for (int j = t0 + lane; j <= t1; j += 32) {
        if (key_off(d, b, j)) continue;  // sc[j] stays 0
        float p = sc[j];
        float ds = p * (dps[j] - Dv) * d.scale;
        sc[j] = ds;
        float *dk = dkv_acc + ((long)b * d.T + j) * 2 * KVW + kvh * d.HD, *dv = dk + KVW;
        for (int i = 0; i < d.HD; i++) {
            atomicAdd(dk + i, ds * qs[i]);
            atomicAdd(dv + i, p * dos[i]);
        }
    }
    __syncwarp();
    for (int i = lane; i < d.HD; i += 32) {
        float acc = 0;
        for (int j = t0; j <= t1; j++) acc += sc[j] * to_f<T>(qkv[((long)b * d.T + j) * d.S + d.QW + kvh * d.HD + i]);
        dq_acc[n * d.QW + h * d.HD + i] = acc;
    }
}

// ============================ flash kernels (bf16, HD = 64 or 128) ============================
// Tiles of 64 rows; shared-memory rows of HD + 8 elements (16 bytes of padding: conflict-free
// fragment loads), dS's of 64 + 8.
#define FA_B 64
#define FA_LDS (FA_B + 8)

__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// ldmatrix x4: lane l gives the address of row (l & 7) of 8x8 matrix l >> 3. Fragment layouts:
//  A of a row-major [m][k] tile (16 x 16 at m0, k0): row m0 + (mat & 1) * 8 + rr, column k0 + (mat >> 1) * 8;
//  B of two n-blocks of a [n][k] tile (n0..n0+15, k0..k0+15): row n0 + (mat >> 1) * 8 + rr, column k0 + (mat & 1) * 8
//  (r0, r1 for n0, r2, r3 for n0 + 8); .trans: the same from the transposed storage.
__device__ __forceinline__ void ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const bf16 *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const bf16 *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(a));
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid) {
    uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// 64 rows x HD columns of bf16 from rows row0.. of a [*, ld] matrix (rows >= Tn become zeros). 128 threads.
template <int HD> __device__ __forceinline__ void load_tile(bf16 *sm, const bf16 *g, long ld, int row0, int Tn, int tid) {
#pragma unroll
    for (int i = 0; i < HD / 16; i++) {
        int idx = tid + i * 128, r = idx / (HD / 8), ch = idx % (HD / 8);
        bool ok = row0 + r < Tn;
        const bf16 *src = g + (long)(ok ? row0 + r : 0) * ld + ch * 8;
        cp_async16(sm + r * (HD + 8) + ch * 8, src, ok);
    }
}

// ---- online softmax of the forward kernels (a warp's 16 query rows x one 64-key block) ----
// Fragments are flat: s[4j + e] is row g (e < 2) or g + 8 (e >= 2), key 8j + 2c + (e & 1); o[4j + e] the
// same rows, output column 8j + 2c + (e & 1).
__device__ __forceinline__ float ex2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
struct RowSoftmax {
    float m0, m1, l0, l1;  // running max (log2 units) and sum of rows g and g + 8
};
// Scales the scores to log2 units and masks them, updates the running max and sum, turns s into
// P = 2^(s - max) and rescales the output accumulators o (n of them) to the new max.
// first_a / first_b: the first keys of rows a and b's examples (PACK). km: the row's key mask (ENC).
template <bool PACK, bool ENC, int NO>
__device__ __forceinline__ void softmax_block(float (&s)[32], float (&o)[NO], RowSoftmax &st, float sl2, bool need_mask, int key0, int row_a,
                                              int row_b, int first_a, int first_b, int c, const AttnDims &d, const int *km = nullptr) {
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float v = s[4 * j + e] * sl2;
            if (need_mask && masked<PACK, ENC>(key0 + j * 8 + 2 * c + (e & 1), e < 2 ? row_a : row_b, d.T, d.window, e < 2 ? first_a : first_b, km))
                v = -INFINITY;
            s[4 * j + e] = v;
            if (e < 2) mx0 = fmaxf(mx0, v);
            else mx1 = fmaxf(mx1, v);
        }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    float mn0 = fmaxf(st.m0, mx0), mn1 = fmaxf(st.m1, mx1);
    float mu0 = mn0 == -INFINITY ? 0.0f : mn0, mu1 = mn1 == -INFINITY ? 0.0f : mn1;
    float al0 = ex2_ftz(st.m0 - mu0), al1 = ex2_ftz(st.m1 - mu1);
    float ls0 = 0, ls1 = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s[4 * j] = ex2_ftz(s[4 * j] - mu0);
        s[4 * j + 1] = ex2_ftz(s[4 * j + 1] - mu0);
        s[4 * j + 2] = ex2_ftz(s[4 * j + 2] - mu1);
        s[4 * j + 3] = ex2_ftz(s[4 * j + 3] - mu1);
        ls0 += s[4 * j] + s[4 * j + 1];
        ls1 += s[4 * j + 2] + s[4 * j + 3];
    }
    st.l0 = st.l0 * al0 + ls0;
    st.l1 = st.l1 * al1 + ls1;
    st.m0 = mn0;
    st.m1 = mn1;
#pragma unroll
    for (int j = 0; j < NO / 4; j++) {
        o[4 * j] *= al0; o[4 * j + 1] *= al0;
        o[4 * j + 2] *= al1; o[4 * j + 3] *= al1;
    }
}
// The end of a forward block: out rows = o / l (bf16), lse = max + log l (natural units).
template <int HD>
__device__ __forceinline__ void store_rows(bf16 *out, float *lse, const float (&o)[HD / 2], RowSoftmax st, int row_a, int row_b, int b, int h,
                                           int c, const AttnDims &d) {
    st.l0 += __shfl_xor_sync(0xffffffffu, st.l0, 1);
    st.l0 += __shfl_xor_sync(0xffffffffu, st.l0, 2);
    st.l1 += __shfl_xor_sync(0xffffffffu, st.l1, 1);
    st.l1 += __shfl_xor_sync(0xffffffffu, st.l1, 2);
    float i0 = 1.0f / st.l0, i1 = 1.0f / st.l1;
    bf16 *ob = out + (long)b * d.T * d.QW + h * HD;
#pragma unroll
    for (int j = 0; j < HD / 8; j++) {
        int col = j * 8 + 2 * c;
        if (row_a < d.T) *reinterpret_cast<uint32_t *>(&ob[(long)row_a * d.QW + col]) = pack2(o[4 * j] * i0, o[4 * j + 1] * i0);
        if (row_b < d.T) *reinterpret_cast<uint32_t *>(&ob[(long)row_b * d.QW + col]) = pack2(o[4 * j + 2] * i1, o[4 * j + 3] * i1);
    }
    if (c == 0) {
        float *lb = lse + ((long)b * d.NH + h) * d.T;
        if (row_a < d.T) lb[row_a] = (st.m0 + log2f(st.l0)) / LOG2E;
        if (row_b < d.T) lb[row_b] = (st.m1 + log2f(st.l1)) / LOG2E;
    }
}

// Packed forward of the query tile from q0 (PACK): kb_start moves past key tiles wholly before its first
// row's example; the first keys of rows a and b; key tiles from before mask_below (the last row's first
// key) need the mask.
template <bool PACK>
__device__ __forceinline__ void pack_fwd_tile(const AttnDims &d, int b, int q0, int row_a, int row_b, int &kb_start, int &first_a, int &first_b,
                                              int &mask_below) {
    first_a = first_b = mask_below = 0;
    if constexpr (PACK) {
        kb_start = max(kb_start, example_start(d, b, q0) / FA_B);
        mask_below = example_start(d, b, min(q0 + FA_B, d.T) - 1);
        if (row_a < d.T) first_a = example_start(d, b, row_a);
        if (row_b < d.T) first_b = example_start(d, b, row_b);
    }
}
// Packed backward of the key tile from k0: the last query whose example starts at or before the tile's
// last key (first is non-decreasing: a binary search; that key's own row qualifies).
__device__ __forceinline__ int pack_last_query(const AttnDims &d, int b, int k0) {
    int k_last = min(k0 + FA_B, d.T) - 1, lo = k_last, hi = d.T - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (example_start(d, b, mid) <= k_last) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// grid (ceil(T/64), NH, B), 128 threads: 4 warps x 16 query rows; K/V tiles double-buffered.
// (A 128-row, 8-warp variant that skips wholly-masked tiles per warp measured slower on the H100:
// 12.0 against 7.9 ms per Llama-1.1B step.)
#define FF_SMEM(HD) (5 * FA_B * ((HD) + 8) * 2)
template <int HD, bool PACK, bool ENC>
__global__ void __launch_bounds__(128, HD == 64 ? 4 : 2) flash_fwd_kernel(bf16 *out, float *lse, const bf16 *qkv, AttnDims d) {
    constexpr int LD = HD + 8, TILE = FA_B * LD;
    extern __shared__ __align__(16) unsigned char ff_smem[];
    bf16 *sQ = (bf16 *)ff_smem, *sK = sQ + TILE, *sV = sK + 2 * TILE;  // K and V: two buffers each
    int qb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    int kvh = h / (d.NH / d.NKV);
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    int mat = lane >> 3, rr = lane & 7;
    const bf16 *base = qkv + (long)b * d.T * d.S;
    const bf16 *qg = base + h * HD, *kg = base + d.QW + kvh * HD, *vg = base + d.QW + d.KVW + kvh * HD;
    int q0 = qb * FA_B;
    int kb_start = d.window > 0 ? max(0, q0 - d.window + 1) / FA_B : 0, kb_end = ENC ? (d.T - 1) / FA_B : qb;
    const int *km = ENC && d.kmask ? d.kmask + (long)b * d.T : nullptr;
    int first_a, first_b, mask_below;
    pack_fwd_tile<PACK>(d, b, q0, q0 + warp * 16 + g, q0 + warp * 16 + g + 8, kb_start, first_a, first_b, mask_below);
    load_tile<HD>(sQ, qg, d.S, q0, d.T, tid);
    load_tile<HD>(sK, kg, d.S, kb_start * FA_B, d.T, tid);
    load_tile<HD>(sV, vg, d.S, kb_start * FA_B, d.T, tid);
    cp_commit();
    cp_wait<0>();
    __syncthreads();
    uint32_t qf[HD / 16][4];
    int r0 = warp * 16 + g;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        ldsm_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], &sQ[(warp * 16 + (mat & 1) * 8 + rr) * LD + kk * 16 + (mat >> 1) * 8]);
    }
    float o[HD / 2];
#pragma unroll
    for (int i = 0; i < HD / 2; i++) o[i] = 0;
    RowSoftmax st = {-INFINITY, -INFINITY, 0, 0};
    float sl2 = d.scale * LOG2E;
    int row_a = q0 + r0, row_b = row_a + 8;
    for (int kb = kb_start; kb <= kb_end; kb++) {
        int buf = (kb - kb_start) & 1;
        if (kb < kb_end) {
            load_tile<HD>(sK + (buf ^ 1) * TILE, kg, d.S, (kb + 1) * FA_B, d.T, tid);
            load_tile<HD>(sV + (buf ^ 1) * TILE, vg, d.S, (kb + 1) * FA_B, d.T, tid);
            cp_commit();
            cp_wait<1>();
        } else cp_wait<0>();
        __syncthreads();
        const bf16 *K = sK + buf * TILE, *V = sV + buf * TILE;
        float s[32];  // 16 query rows x 64 keys
#pragma unroll
        for (int i = 0; i < 32; i++) s[i] = 0;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4(b0, b1, b2, b3, &K[(j * 8 + (mat >> 1) * 8 + rr) * LD + kk * 16 + (mat & 1) * 8]);
                mma16816(s + 4 * j, qf[kk], b0, b1);
                mma16816(s + 4 * j + 4, qf[kk], b2, b3);
            }
        bool need_mask = ENC || kb * FA_B + FA_B - 1 > q0 || kb * FA_B + FA_B > d.T || d.window > 0 || (PACK && kb * FA_B < mask_below);
        softmax_block<PACK, ENC>(s, o, st, sl2, need_mask, kb * FA_B, row_a, row_b, first_a, first_b, c, d, km);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t a[4] = {pack2(s[8 * kk], s[8 * kk + 1]), pack2(s[8 * kk + 2], s[8 * kk + 3]), pack2(s[8 * kk + 4], s[8 * kk + 5]),
                             pack2(s[8 * kk + 6], s[8 * kk + 7])};
#pragma unroll
            for (int dt = 0; dt < HD / 16; dt++) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4_t(b0, b1, b2, b3, &V[(kk * 16 + (mat & 1) * 8 + rr) * LD + dt * 16 + (mat >> 1) * 8]);
                mma16816(o + 8 * dt, a, b0, b1);
                mma16816(o + 8 * dt + 4, a, b2, b3);
            }
        }
        __syncthreads();
    }
    store_rows<HD>(out, lse, o, st, row_a, row_b, b, h, c, d);
}

// D[b,h,t] = sum_d dout * out (one thread per (row, head)).
__global__ void attn_D_kernel(float *D, const bf16 *dout, const bf16 *out, AttnDims d) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= (long)d.B * d.T * d.NH) return;
    int h = (int)(i % d.NH);
    long n = i / d.NH;
    const uint4 *a = reinterpret_cast<const uint4 *>(dout + n * d.QW + h * d.HD);
    const uint4 *o = reinterpret_cast<const uint4 *>(out + n * d.QW + h * d.HD);
    float acc = 0;
    for (int k = 0; k < d.HD / 8; k++) {
        uint4 x = a[k], y = o[k];
        const bf16 *xe = reinterpret_cast<const bf16 *>(&x), *ye = reinterpret_cast<const bf16 *>(&y);
#pragma unroll
        for (int e = 0; e < 8; e++) acc += __bfloat162float(xe[e]) * __bfloat162float(ye[e]);
    }
    int b = (int)(n / d.T), t = (int)(n % d.T);
    D[((long)b * d.NH + h) * d.T + t] = acc;
}

// grid (ceil(T/64) key blocks, NH, B), 128 threads: each warp owns 16 keys of dK and dV for one
// query head; the query blocks are double-buffered (cp.async), dQ goes out through float2 atomics
// per query block, dK and dV through float2 atomics once at the end into dkv_acc (the heads of a
// GQA group add into the same rows); k_attn_finalize applies the inverse rope and converts.
// The dQ atomics cost about a fifth of the kernel's time (Llama-1.1B, H200: 6 of 27 ms per step
// without them); a 128-key, 8-warp block that halves them measured no faster (one block per SM).
#define FB_SMEM(HD) ((6 * FA_B * ((HD) + 8) + FA_B * FA_LDS) * 2 + 4 * FA_B * 4)
#define PACK_SMEM (2 * FA_B * 4)  // packed: two blocks of the query rows' first keys
// K and V stay in shared memory and their fragments are re-read each iteration: fewer registers,
// three blocks (12 warps) per SM at HD 64; at 128, where dK and dV alone take 128 registers, 255
// registers and 112 KiB of shared memory a block leave room for two.
template <int HD, bool PACK, bool ENC>
__global__ void __launch_bounds__(128, HD == 64 ? 3 : 2)
    flash_bwd_kernel(float *dkv_acc, float *dq_acc, const bf16 *dout, const bf16 *qkv, const float *lse, const float *Dbuf, AttnDims d) {
    constexpr int LD = HD + 8, TILE = FA_B * LD;
    extern __shared__ __align__(16) unsigned char fb_smem[];
    bf16 *sK = (bf16 *)fb_smem, *sV = sK + TILE, *sdS = sV + TILE;  // [64][LD]; dS [64 keys][FA_LDS]: queries
    bf16 *sQb = sdS + FA_B * FA_LDS, *sdOb = sQb + 2 * TILE;         // two buffers of [64][LD] each
    float *sLb = (float *)(sdOb + 2 * TILE), *sDb = sLb + 2 * FA_B;
    int *sFb = (int *)(sDb + 2 * FA_B);  // PACK: the first keys of the query rows, two buffers
    int kb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    int kvh = h / (d.NH / d.NKV);
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    int mat = lane >> 3, rr = lane & 7;
    const bf16 *base = qkv + (long)b * d.T * d.S;
    const bf16 *qg = base + h * HD, *dog = dout + (long)b * d.T * d.QW + h * HD;
    const float *lrow = lse + ((long)b * d.NH + h) * d.T, *Drow = Dbuf + ((long)b * d.NH + h) * d.T;
    int k0 = kb * FA_B;
    int qb_start = ENC ? 0 : kb, qb_end = (d.T - 1) / FA_B;  // ENC: every query block sees this key block
    const int *km = ENC && d.kmask ? d.kmask + (long)b * d.T : nullptr;
    if (d.window > 0) qb_end = min(qb_end, (k0 + FA_B - 1 + d.window - 1) / FA_B);
    if constexpr (PACK) qb_end = min(qb_end, pack_last_query(d, b, k0) / FA_B);
    auto load_q = [&](int qb, int buf) {
        load_tile<HD>(sQb + buf * TILE, qg, d.S, qb * FA_B, d.T, tid);
        load_tile<HD>(sdOb + buf * TILE, dog, d.QW, qb * FA_B, d.T, tid);
    };
    // lse (threads 0..63, times log2 e for exp2) and D (64..127) of a query block: fetched into a
    // register one block ahead, stored to shared memory at the end of the iteration (rows >= T as zeros).
    auto fetch_ld = [&](int qb) -> float {
        int q = qb * FA_B + (tid & 63);
        return q < d.T ? (tid < 64 ? lrow[q] * LOG2E : Drow[q]) : 0.0f;
    };
    auto store_ld = [&](int buf, float v) { (tid < 64 ? sLb : sDb)[buf * FA_B + (tid & 63)] = v; };
    // PACK: the first keys of a query block's rows, fetched and stored by threads 0..63 alongside.
    auto fetch_first = [&](int qb) -> int {
        int q = qb * FA_B + (tid & 63);
        return PACK && tid < 64 && q < d.T ? example_start(d, b, q) : 0;
    };
    auto store_first = [&](int buf, int v) {
        if (PACK && tid < 64) sFb[buf * FA_B + tid] = v;
    };
    load_tile<HD>(sK, base + d.QW + kvh * HD, d.S, k0, d.T, tid);
    load_tile<HD>(sV, base + d.QW + d.KVW + kvh * HD, d.S, k0, d.T, tid);
    load_q(qb_start, 0);
    cp_commit();
    store_ld(0, fetch_ld(qb_start));
    store_first(0, fetch_first(qb_start));
    cp_wait<0>();
    __syncthreads();
    int r0 = warp * 16 + g;
    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[j][e] = dv[j][e] = 0;
    float sl2 = d.scale * LOG2E;
    int key_a = k0 + r0, key_b = key_a + 8;
    for (int qb = qb_start; qb <= qb_end; qb++) {
        int buf = (qb - qb_start) & 1;
        float next_ld = 0.0f;
        int next_first = 0;
        if (qb < qb_end) {
            load_q(qb + 1, buf ^ 1);
            cp_commit();
            next_ld = fetch_ld(qb + 1);
            next_first = fetch_first(qb + 1);
            cp_wait<1>();
        } else cp_wait<0>();
        __syncthreads();
        const bf16 *sQ = sQb + buf * TILE, *sdO = sdOb + buf * TILE;
        const float *sL = sLb + buf * FA_B, *sD = sDb + buf * FA_B;
        int q0 = qb * FA_B;
        float st[8][4], dp[8][4];  // [16 keys x 64 queries]: S^T, then P^T; dP^T, then dS^T
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) st[j][e] = dp[j][e] = 0;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t kf[4], vf[4];
            int aoff = (warp * 16 + (mat & 1) * 8 + rr) * LD + kk * 16 + (mat >> 1) * 8;
            ldsm_x4(kf[0], kf[1], kf[2], kf[3], &sK[aoff]);
            ldsm_x4(vf[0], vf[1], vf[2], vf[3], &sV[aoff]);
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                int boff = (j * 8 + (mat >> 1) * 8 + rr) * LD + kk * 16 + (mat & 1) * 8;
                uint32_t b0, b1, b2, b3;
                ldsm_x4(b0, b1, b2, b3, &sQ[boff]);
                mma16816(st[j], kf, b0, b1);
                mma16816(st[j + 1], kf, b2, b3);
                ldsm_x4(b0, b1, b2, b3, &sdO[boff]);
                mma16816(dp[j], vf, b0, b1);
                mma16816(dp[j + 1], vf, b2, b3);
            }
        }
        const int *sF = sFb + buf * FA_B;
        bool need_mask = ENC || qb == kb || q0 + FA_B > d.T || d.window > 0 || (PACK && sF[min(FA_B, d.T - q0) - 1] > k0);
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int ql = j * 8 + 2 * c + (e & 1);
                int key = e < 2 ? key_a : key_b;
                float p = exp2f(st[j][e] * sl2 - sL[ql]);
                if (need_mask && masked<PACK, ENC>(key, q0 + ql, d.T, d.window, PACK ? sF[ql] : 0, km)) p = 0.0f;
                st[j][e] = p;
                dp[j][e] = p * (dp[j][e] - sD[ql]);
            }
        // dV += P^T dO, dK += dS^T Q
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t ap[4] = {pack2(st[2 * kk][0], st[2 * kk][1]), pack2(st[2 * kk][2], st[2 * kk][3]),
                              pack2(st[2 * kk + 1][0], st[2 * kk + 1][1]), pack2(st[2 * kk + 1][2], st[2 * kk + 1][3])};
            uint32_t as[4] = {pack2(dp[2 * kk][0], dp[2 * kk][1]), pack2(dp[2 * kk][2], dp[2 * kk][3]),
                              pack2(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), pack2(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
            for (int dt = 0; dt < HD / 16; dt++) {
                int off = (kk * 16 + (mat & 1) * 8 + rr) * LD + dt * 16 + (mat >> 1) * 8;
                uint32_t b0, b1, b2, b3;
                ldsm_x4_t(b0, b1, b2, b3, &sdO[off]);
                mma16816(dv[2 * dt], ap, b0, b1);
                mma16816(dv[2 * dt + 1], ap, b2, b3);
                ldsm_x4_t(b0, b1, b2, b3, &sQ[off]);
                mma16816(dk[2 * dt], as, b0, b1);
                mma16816(dk[2 * dt + 1], as, b2, b3);
            }
        }
        // dS to shared memory as [key][query] (the fragments' own layout: packed pairs, no bank
        // conflicts), then dQ[64 x 64] = dS K with dS read transposed: warp w takes queries 16w..16w+15.
#pragma unroll
        for (int j = 0; j < 8; j++) {
            *reinterpret_cast<uint32_t *>(&sdS[r0 * FA_LDS + j * 8 + 2 * c]) = pack2(dp[j][0], dp[j][1]);
            *reinterpret_cast<uint32_t *>(&sdS[(r0 + 8) * FA_LDS + j * 8 + 2 * c]) = pack2(dp[j][2], dp[j][3]);
        }
        __syncthreads();
        float dq[HD / 8][4];
#pragma unroll
        for (int j = 0; j < HD / 8; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t a[4];
            ldsm_x4_t(a[0], a[1], a[2], a[3], &sdS[(kk * 16 + (mat >> 1) * 8 + rr) * FA_LDS + warp * 16 + (mat & 1) * 8]);
#pragma unroll
            for (int dt = 0; dt < HD / 16; dt++) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4_t(b0, b1, b2, b3, &sK[(kk * 16 + (mat & 1) * 8 + rr) * LD + dt * 16 + (mat >> 1) * 8]);
                mma16816(dq[2 * dt], a, b0, b1);
                mma16816(dq[2 * dt + 1], a, b2, b3);
            }
        }
        int qa = q0 + r0, qbb = qa + 8;
        float *dqa = dq_acc + ((long)b * d.T + qa) * d.QW + h * HD, *dqb = dqa + 8L * d.QW;
#pragma unroll
        for (int j = 0; j < HD / 8; j++) {
            int col = j * 8 + 2 * c;
            if (qa < d.T) atomicAdd(reinterpret_cast<float2 *>(dqa + col), make_float2(dq[j][0] * d.scale, dq[j][1] * d.scale));
            if (qbb < d.T) atomicAdd(reinterpret_cast<float2 *>(dqb + col), make_float2(dq[j][2] * d.scale, dq[j][3] * d.scale));
        }
        if (qb < qb_end) {
            store_ld(buf ^ 1, next_ld);
            store_first(buf ^ 1, next_first);
        }
        __syncthreads();
    }
    // dK (scaled) and dV into the fp32 accumulators of this KV head.
    float *dka = dkv_acc + ((long)b * d.T + key_a) * 2 * d.KVW + kvh * HD, *dkb = dka + 8L * 2 * d.KVW;
#pragma unroll
    for (int j = 0; j < HD / 8; j++) {
        int col = j * 8 + 2 * c;
        if (key_a < d.T) {
            atomicAdd(reinterpret_cast<float2 *>(dka + col), make_float2(dk[j][0] * d.scale, dk[j][1] * d.scale));
            atomicAdd(reinterpret_cast<float2 *>(dka + d.KVW + col), make_float2(dv[j][0], dv[j][1]));
        }
        if (key_b < d.T) {
            atomicAdd(reinterpret_cast<float2 *>(dkb + col), make_float2(dk[j][2] * d.scale, dk[j][3] * d.scale));
            atomicAdd(reinterpret_cast<float2 *>(dkb + d.KVW + col), make_float2(dv[j][2], dv[j][3]));
        }
    }
}

// ============================ sm_90a: warpgroup MMA backward (HD 64) ============================
// The same algorithm as flash_bwd_kernel<64> (one 64-key block per CTA, 4 warps = one warpgroup,
// query blocks double-buffered), with the five products on wgmma: the tensor cores read K, V, Q, dO
// and dS straight from shared memory (once per warpgroup instead of once per warp through ldmatrix,
// which bound the mma.sync kernel: ~80% L1 throughput, 28% tensor). P^T and dS^T feed dV and dK
// from registers. Tiles are 64 rows x 128 bytes in the 128-byte swizzle layout; each tile is read
// K-major (S^T = K Q^T, dP^T = V dO^T) or MN-major (dV += P^T dO, dK += dS^T Q, dQ = dS K). dQ goes
// through shared memory into dq_acc by bulk reduce-adds (the TMA unit: whole 256-byte rows, not
// per-thread atomics). H200, Llama-1.1B: 28 -> ~19.5 ms of attention backward per step.
#define WG_TILE 4096  // elements of one 64 x 64 bf16 tile (8 KiB)
// K, V, dS, two Q and two dO tiles; two lse and two D rows; the dQ staging rows [64][68] fp32; 1024 for alignment.
#define FBW_SMEM (7 * WG_TILE * 2 + 4 * FA_B * 4 + FA_B * 68 * 4 + 1024)

// Byte offset of the 16-byte chunk k8 of row r in a 128-byte-swizzled tile.
__device__ __forceinline__ uint32_t sw128(int r, int k8) { return (uint32_t)(r * 128 + ((k8 ^ (r & 7)) << 4)); }
// Shared-memory matrix descriptor of a 128-byte-swizzled tile: rows of 128 bytes, 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t wg_desc(const void *smem) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    return (uint64_t)((a & 0x3FFFF) >> 4) | (1ull << 16) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}
// 64 rows x 64 columns of bf16 from rows row0.. of a [*, ld] matrix into a swizzled tile (rows >= Tn: zeros).
// Thread t copies 16-byte chunk t % 8 of rows t / 8 + 16 i: one address computation a tile (rows 16 apart
// share their swizzle, so their offsets are 2048 bytes apart), the row checks only in a partial tile.
__device__ __forceinline__ void load_tile_sw(bf16 *sm, const bf16 *g, long ld, int row0, int Tn, int tid) {
    int r = tid >> 3, ch = tid & 7;
    char *dst = (char *)sm + sw128(r, ch);
    const bf16 *src = g + (long)(row0 + r) * ld + ch * 8;
    if (row0 + 64 <= Tn) {
#pragma unroll
        for (int i = 0; i < 4; i++) cp_async16(dst + i * 2048, src + i * 16 * ld, true);
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            bool ok = row0 + r + 16 * i < Tn;
            cp_async16(dst + i * 2048, ok ? src + i * 16 * ld : g, ok);
        }
    }
}
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
#else  // wgmma needs sm_90a: other targets never launch these kernels
__device__ __forceinline__ void wg_fence() {}
__device__ __forceinline__ void wg_commit() {}
__device__ __forceinline__ void wg_wait0() {}
#endif
__device__ __forceinline__ void proxy_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving reads or writes of registers across an asynchronous wgmma.
template <int N> __device__ __forceinline__ void reg_fence(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void reg_fence(uint32_t (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i])::"memory");
}

#define WG_D32                                                                                                                        \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, " \
    "%27, %28, %29, %30, %31}"
#define WG_D32_OUT(d)                                                                                                                 \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]),        \
        "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),         \
        "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),         \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
// d[64 x 64] (+)= A B over k = 16: A and B from shared memory; TA / TB: MN-major (transposed) operand.
template <int TA, int TB> __device__ __forceinline__ void wg_ss(float (&d)[32], uint64_t da, uint64_t db, int acc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32 ", %32, %33, p, 1, 1, %35, %36;\n}\n"
                 : WG_D32_OUT(d)
                 : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
#else
    __trap();
#endif
}
// The same with A [64 x 16] from registers (the mma.m16n8k16 A fragment of each warp's 16 rows).
template <int TB> __device__ __forceinline__ void wg_rs(float (&d)[32], const uint32_t *a, uint64_t db, int acc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32 ", {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                 : WG_D32_OUT(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
#else
    __trap();
#endif
}

template <bool PACK>
__global__ void __launch_bounds__(128, 3)
    flash_bwd_wg_kernel(float *dkv_acc, float *dq_acc, const bf16 *dout, const bf16 *qkv, const float *lse, const float *Dbuf, AttnDims d) {
    constexpr int HD = 64;
    extern __shared__ unsigned char fbw_raw[];
    bf16 *sK = (bf16 *)(((uintptr_t)fbw_raw + 1023) & ~(uintptr_t)1023);  // the swizzle needs 1024-byte aligned tiles
    bf16 *sV = sK + WG_TILE, *sdS = sV + WG_TILE, *sQb = sdS + WG_TILE, *sdOb = sQb + 2 * WG_TILE;  // dS^T: [64 keys][64 queries]
    float *sLb = (float *)(sdOb + 2 * WG_TILE), *sDb = sLb + 2 * FA_B, *sdQ = sDb + 2 * FA_B;  // dQ: [64][68] fp32
    // PACK: the first keys of the query rows, two buffers, in the padding columns 64 and 65 of sdQ's rows
    // (which the dQ rows' reduce-adds never read): more shared memory would cost the third block per SM.
    auto sF_at = [&](int buf, int q) -> int & { return ((int *)sdQ)[q * 68 + 64 + buf]; };
    int kb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    int kvh = h / (d.NH / d.NKV);
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const bf16 *base = qkv + (long)b * d.T * d.S;
    const bf16 *qg = base + h * HD, *dog = dout + (long)b * d.T * d.QW + h * HD;
    const float *lrow = lse + ((long)b * d.NH + h) * d.T, *Drow = Dbuf + ((long)b * d.NH + h) * d.T;
    int k0 = kb * FA_B;
    int qb_end = (d.T - 1) / FA_B;
    if (d.window > 0) qb_end = min(qb_end, (k0 + FA_B - 1 + d.window - 1) / FA_B);
    if constexpr (PACK) qb_end = min(qb_end, pack_last_query(d, b, k0) / FA_B);
    auto load_q = [&](int qb, int buf) {
        load_tile_sw(sQb + buf * WG_TILE, qg, d.S, qb * FA_B, d.T, tid);
        load_tile_sw(sdOb + buf * WG_TILE, dog, d.QW, qb * FA_B, d.T, tid);
    };
    auto fetch_ld = [&](int qb) -> float {
        int q = qb * FA_B + (tid & 63);
        return q < d.T ? (tid < 64 ? lrow[q] * LOG2E : Drow[q]) : 0.0f;
    };
    auto store_ld = [&](int buf, float v) { (tid < 64 ? sLb : sDb)[buf * FA_B + (tid & 63)] = v; };
    // PACK: the first keys of a query block's rows, fetched and stored by threads 0..63 alongside.
    auto fetch_first = [&](int qb) -> int {
        int q = qb * FA_B + (tid & 63);
        return PACK && tid < 64 && q < d.T ? example_start(d, b, q) : 0;
    };
    auto store_first = [&](int buf, int v) {
        if (PACK && tid < 64) sF_at(buf, tid) = v;
    };
    load_tile_sw(sK, base + d.QW + kvh * HD, d.S, k0, d.T, tid);
    load_tile_sw(sV, base + d.QW + d.KVW + kvh * HD, d.S, k0, d.T, tid);
    load_q(kb, 0);
    cp_commit();
    store_ld(0, fetch_ld(kb));
    store_first(0, fetch_first(kb));
    int r0 = warp * 16 + g;
    float dk[32], dv[32];
#pragma unroll
    for (int i = 0; i < 32; i++) dk[i] = dv[i] = 0;
    const uint64_t descK = wg_desc(sK), descV = wg_desc(sV), descS = wg_desc(sdS);
    char *sdS_b = (char *)sdS;
    float sl2 = d.scale * LOG2E;
    int key_a = k0 + r0, key_b = key_a + 8;
    for (int qb = kb; qb <= qb_end; qb++) {
        int buf = (qb - kb) & 1;
        float next_ld = 0.0f;
        int next_first = 0;
        if (qb < qb_end) {
            load_q(qb + 1, buf ^ 1);
            cp_commit();
            next_ld = fetch_ld(qb + 1);
            next_first = fetch_first(qb + 1);
            cp_wait<1>();
        } else cp_wait<0>();
        proxy_fence();  // the cp.async writes, visible to the tensor cores' (async proxy) reads
        __syncthreads();
        const float *sL = sLb + buf * FA_B, *sD = sDb + buf * FA_B;
        const uint64_t descQ = wg_desc(sQb + buf * WG_TILE), descO = wg_desc(sdOb + buf * WG_TILE);
        int q0 = qb * FA_B;
        // S^T = K Q^T and dP^T = V dO^T [64 keys x 64 queries]: k = head dim, 32 bytes a step within the swizzle row.
        float st[32], dp[32];
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wg_ss<0, 0>(st, descK + 2 * kk, descQ + 2 * kk, kk);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wg_ss<0, 0>(dp, descV + 2 * kk, descO + 2 * kk, kk);
        wg_commit();
        wg_wait0();
        reg_fence(st);
        reg_fence(dp);
        bool need_mask = qb == kb || q0 + FA_B > d.T || d.window > 0 || (PACK && sF_at(buf, min(FA_B, d.T - q0) - 1) > k0);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float2 L = *reinterpret_cast<const float2 *>(&sL[j * 8 + 2 * c]), Dv = *reinterpret_cast<const float2 *>(&sD[j * 8 + 2 * c]);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int ql = j * 8 + 2 * c + (e & 1);
                float p = ex2_ftz(st[4 * j + e] * sl2 - (e & 1 ? L.y : L.x));
                if (need_mask && masked<PACK>(e < 2 ? key_a : key_b, q0 + ql, d.T, d.window, PACK ? sF_at(buf, ql) : 0)) p = 0.0f;
                st[4 * j + e] = p;
                dp[4 * j + e] = p * (dp[4 * j + e] - (e & 1 ? Dv.y : Dv.x));
            }
        }
        // P^T and dS^T as A fragments (k = queries, 16 a step); dS^T also to shared memory ([key][query],
        // swizzled) for dQ. Then dV += P^T dO, dK += dS^T Q: dO and Q MN-major (k = query rows, 2048 bytes a step).
        uint32_t ap[16], as[16];
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                ap[4 * kk + i] = pack2(st[8 * kk + 2 * i], st[8 * kk + 2 * i + 1]);
                as[4 * kk + i] = pack2(dp[8 * kk + 2 * i], dp[8 * kk + 2 * i + 1]);
            }
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            *reinterpret_cast<uint32_t *>(sdS_b + sw128(r0, 2 * kk) + 4 * c) = as[4 * kk];
            *reinterpret_cast<uint32_t *>(sdS_b + sw128(r0 + 8, 2 * kk) + 4 * c) = as[4 * kk + 1];
            *reinterpret_cast<uint32_t *>(sdS_b + sw128(r0, 2 * kk + 1) + 4 * c) = as[4 * kk + 2];
            *reinterpret_cast<uint32_t *>(sdS_b + sw128(r0 + 8, 2 * kk + 1) + 4 * c) = as[4 * kk + 3];
        }
        proxy_fence();
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            wg_rs<1>(dv, ap + 4 * kk, descO + 128 * kk, 1);
            wg_rs<1>(dk, as + 4 * kk, descQ + 128 * kk, 1);
        }
        wg_commit();
        __syncthreads();  // every warp's dS rows are in shared memory
        // dV and dK done before dQ starts: the A fragments die here, which keeps the kernel within 168
        // registers (3 blocks per SM) without spilling.
        wg_wait0();
        reg_fence(dk);
        reg_fence(dv);
        reg_fence(ap);
        reg_fence(as);
        // dQ [64 queries x 64] = dS K: dS^T read as an MN-major A, K as an MN-major B (k = keys, 2048 bytes a step).
        float dq[32];
#pragma unroll
        for (int i = 0; i < 32; i++) dq[i] = 0;
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wg_ss<1, 1>(dq, descS + 128 * kk, descK + 128 * kk, kk);
        wg_commit();
        wg_wait0();
        reg_fence(dq);
        // dQ to shared memory, then each row (256 bytes) reduce-added into dq_acc by the TMA unit. Each warp
        // stages and sends its own 16 rows (lanes 0-15), so only the warp synchronises.
        if (lane < 16) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");  // the last reduces have read them
        __syncwarp();
#pragma unroll
        for (int j = 0; j < 8; j++) {
            int col = j * 8 + 2 * c;
            *reinterpret_cast<float2 *>(&sdQ[r0 * 68 + col]) = make_float2(dq[4 * j] * d.scale, dq[4 * j + 1] * d.scale);
            *reinterpret_cast<float2 *>(&sdQ[(r0 + 8) * 68 + col]) = make_float2(dq[4 * j + 2] * d.scale, dq[4 * j + 3] * d.scale);
        }
        proxy_fence();
        __syncwarp();
        int qrow = q0 + warp * 16 + lane;
        if (lane < 16 && qrow < d.T) {
            float *dst = dq_acc + ((long)b * d.T + qrow) * d.QW + h * HD;
            uint32_t src = (uint32_t)__cvta_generic_to_shared(&sdQ[(warp * 16 + lane) * 68]);
            asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], 256;\n" ::"l"(dst), "r"(src) : "memory");
            asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
        }
        if (qb < qb_end) {
            store_ld(buf ^ 1, next_ld);
            store_first(buf ^ 1, next_first);
        }
        __syncthreads();
    }
    if (lane < 16) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    float *dka = dkv_acc + ((long)b * d.T + key_a) * 2 * d.KVW + kvh * HD, *dkb = dka + 8L * 2 * d.KVW;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        int col = j * 8 + 2 * c;
        if (key_a < d.T) {
            atomicAdd(reinterpret_cast<float2 *>(dka + col), make_float2(dk[4 * j] * d.scale, dk[4 * j + 1] * d.scale));
            atomicAdd(reinterpret_cast<float2 *>(dka + d.KVW + col), make_float2(dv[4 * j], dv[4 * j + 1]));
        }
        if (key_b < d.T) {
            atomicAdd(reinterpret_cast<float2 *>(dkb + col), make_float2(dk[4 * j + 2] * d.scale, dk[4 * j + 3] * d.scale));
            atomicAdd(reinterpret_cast<float2 *>(dkb + d.KVW + col), make_float2(dv[4 * j + 2], dv[4 * j + 3]));
        }
    }
}

// Forward on wgmma (HD 64): flash_fwd_kernel<64>'s algorithm, S = Q K^T from shared memory
// (both K-major), O += P V with P from registers and V MN-major.
#define FFW_SMEM (5 * WG_TILE * 2 + 1024)
template <bool PACK> __global__ void __launch_bounds__(128, 4) flash_fwd_wg_kernel(bf16 *out, float *lse, const bf16 *qkv, AttnDims d) {
    constexpr int HD = 64;
    extern __shared__ unsigned char ffw_raw[];
    bf16 *sQ = (bf16 *)(((uintptr_t)ffw_raw + 1023) & ~(uintptr_t)1023), *sK = sQ + WG_TILE, *sV = sK + 2 * WG_TILE;  // K, V: two buffers
    int qb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    int kvh = h / (d.NH / d.NKV);
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const bf16 *base = qkv + (long)b * d.T * d.S;
    const bf16 *qg = base + h * HD, *kg = base + d.QW + kvh * HD, *vg = base + d.QW + d.KVW + kvh * HD;
    int q0 = qb * FA_B;
    int kb_start = d.window > 0 ? max(0, q0 - d.window + 1) / FA_B : 0, kb_end = qb;
    int first_a, first_b, mask_below;
    pack_fwd_tile<PACK>(d, b, q0, q0 + warp * 16 + g, q0 + warp * 16 + g + 8, kb_start, first_a, first_b, mask_below);
    load_tile_sw(sQ, qg, d.S, q0, d.T, tid);
    load_tile_sw(sK, kg, d.S, kb_start * FA_B, d.T, tid);
    load_tile_sw(sV, vg, d.S, kb_start * FA_B, d.T, tid);
    cp_commit();
    const uint64_t descQ = wg_desc(sQ);
    float o[32];
#pragma unroll
    for (int i = 0; i < 32; i++) o[i] = 0;
    RowSoftmax st = {-INFINITY, -INFINITY, 0, 0};
    float sl2 = d.scale * LOG2E;
    int row_a = q0 + warp * 16 + g, row_b = row_a + 8;
    for (int kb = kb_start; kb <= kb_end; kb++) {
        int buf = (kb - kb_start) & 1;
        if (kb < kb_end) {
            load_tile_sw(sK + (buf ^ 1) * WG_TILE, kg, d.S, (kb + 1) * FA_B, d.T, tid);
            load_tile_sw(sV + (buf ^ 1) * WG_TILE, vg, d.S, (kb + 1) * FA_B, d.T, tid);
            cp_commit();
            cp_wait<1>();
        } else cp_wait<0>();
        proxy_fence();
        __syncthreads();
        const uint64_t descK = wg_desc(sK + buf * WG_TILE), descV = wg_desc(sV + buf * WG_TILE);
        float s[32];  // 64 queries x 64 keys
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wg_ss<0, 0>(s, descQ + 2 * kk, descK + 2 * kk, kk);
        wg_commit();
        wg_wait0();
        reg_fence(s);
        bool need_mask = kb * FA_B + FA_B - 1 > q0 || kb * FA_B + FA_B > d.T || d.window > 0 || (PACK && kb * FA_B < mask_below);
        softmax_block<PACK, false>(s, o, st, sl2, need_mask, kb * FA_B, row_a, row_b, first_a, first_b, c, d);
        uint32_t ap[16];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            ap[2 * j] = pack2(s[4 * j], s[4 * j + 1]);
            ap[2 * j + 1] = pack2(s[4 * j + 2], s[4 * j + 3]);
        }
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wg_rs<1>(o, ap + 4 * kk, descV + 128 * kk, 1);
        wg_commit();
        wg_wait0();
        reg_fence(o);
        reg_fence(ap);
        __syncthreads();
    }
    store_rows<64>(out, lse, o, st, row_a, row_b, b, h, c, d);
}

// ============================ launchers ============================
// The bf16 tensor-core kernels serve head_dim 64 and 128 with 16-byte aligned rows; everything else
// takes the generic ones.
template <typename T> static bool attn_uses_flash(const AttnDims &d) {
    return sizeof(T) == 2 && (d.HD == 64 || d.HD == 128) && d.S % 8 == 0 && d.QW % 8 == 0 && d.KVW % 8 == 0 && d.NH % d.NKV == 0;
}
// A kernel's dynamic shared memory limit, raised once.
// The wgmma kernels: built for sm_90a (their instructions exist nowhere else) and running on an sm_90 GPU.
static bool use_wgmma() {
#ifdef PEFT_WGMMA
    static int major = -1;
    if (major < 0) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) major = 0;
    }
    return major == 9;
#else
    return false;
#endif
}
static void allow_smem(const void *kernel, int bytes) {
    static std::vector<const void *> done;
    if (std::find(done.begin(), done.end(), kernel) != done.end()) return;
    CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    done.push_back(kernel);
}
// ENC (bidirectional): the mma.sync kernels at every head size (the wgmma ones are causal only).
template <int HD, bool PACK, bool ENC = false>
static void flash_forward_as(bf16 *out, float *lse, const bf16 *qkv, const AttnDims &d, cudaStream_t s) {
    if (HD == 64 && use_wgmma() && !ENC) {
        allow_smem((const void *)flash_fwd_wg_kernel<PACK>, FFW_SMEM);
        flash_fwd_wg_kernel<PACK><<<dim3(cdiv(d.T, FA_B), d.NH, d.B), 128, FFW_SMEM, s>>>(out, lse, qkv, d);
    } else {
        allow_smem((const void *)flash_fwd_kernel<HD, PACK, ENC>, FF_SMEM(HD));
        flash_fwd_kernel<HD, PACK, ENC><<<dim3(cdiv(d.T, FA_B), d.NH, d.B), 128, FF_SMEM(HD), s>>>(out, lse, qkv, d);
    }
    KCHECK();
}
template <int HD> static void flash_forward(bf16 *out, float *lse, const bf16 *qkv, const AttnDims &d, cudaStream_t s) {
    if (d.bidir) flash_forward_as<HD, false, true>(out, lse, qkv, d, s);  // attn_check: no packing
    else if (d.pos) flash_forward_as<HD, true>(out, lse, qkv, d, s);
    else flash_forward_as<HD, false>(out, lse, qkv, d, s);
}
template <int HD, bool PACK, bool ENC = false>
static void flash_backward_as(float *dkv_acc, float *dq_acc, const bf16 *dout, const bf16 *qkv, const float *lse, const float *Dbuf,
                              const AttnDims &d, cudaStream_t s) {
    if (HD == 64 && use_wgmma() && !ENC) {
        allow_smem((const void *)flash_bwd_wg_kernel<PACK>, FBW_SMEM);
        flash_bwd_wg_kernel<PACK><<<dim3(cdiv(d.T, FA_B), d.NH, d.B), 128, FBW_SMEM, s>>>(dkv_acc, dq_acc, dout, qkv, lse, Dbuf, d);
    } else {
        int smem = FB_SMEM(HD) + (PACK ? PACK_SMEM : 0);
        allow_smem((const void *)flash_bwd_kernel<HD, PACK, ENC>, smem);
        flash_bwd_kernel<HD, PACK, ENC><<<dim3(cdiv(d.T, FA_B), d.NH, d.B), 128, smem, s>>>(dkv_acc, dq_acc, dout, qkv, lse, Dbuf, d);
    }
    KCHECK();
}
template <int HD>
static void flash_backward(float *dkv_acc, float *dq_acc, const bf16 *dout, const bf16 *qkv, const float *lse, const float *Dbuf,
                           const AttnDims &d, cudaStream_t s) {
    if (d.bidir) flash_backward_as<HD, false, true>(dkv_acc, dq_acc, dout, qkv, lse, Dbuf, d, s);
    else if (d.pos) flash_backward_as<HD, true>(dkv_acc, dq_acc, dout, qkv, lse, Dbuf, d, s);
    else flash_backward_as<HD, false>(dkv_acc, dq_acc, dout, qkv, lse, Dbuf, d, s);
}

int attn_check(const AttnDims &d) {
    if (d.bidir && d.window > 0) return peft_fail("CUDA backend: bidirectional attention with a sliding window is not implemented");
    if (d.bidir && d.pos) return peft_fail("CUDA backend: bidirectional attention over packed rows is not implemented");
    if (!d.bidir && d.kmask) return peft_fail("CUDA backend: internal error: a key mask with causal attention");
    return 0;
}

static size_t generic_smem(const AttnDims &d, int warps, int extra) { return (size_t)warps * (d.T + extra * d.HD) * sizeof(float); }

template <typename T> void attn_forward(T *out, float *lse, const T *qkv, AttnDims d, cudaStream_t s) {
    if constexpr (sizeof(T) == 2) {
        if (attn_uses_flash<T>(d)) {
            if (d.HD == 64) flash_forward<64>((bf16 *)out, lse, (const bf16 *)qkv, d, s);
            else flash_forward<128>((bf16 *)out, lse, (const bf16 *)qkv, d, s);
            return;
        }
    }
    int warps = 4;
    size_t smem = generic_smem(d, warps, 1);
    if (smem > 48 * 1024) CU(cudaFuncSetAttribute(attn_generic_fwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    attn_generic_fwd_kernel<T><<<cdiv((long)d.B * d.NH * d.T, warps), warps * 32, smem, s>>>(out, lse, qkv, d);
    KCHECK();
}

template <typename T>
void attn_backward(T *dqkv, float *dq_acc, float *dkv_acc, float *Dbuf, const T *dout, const T *out, const T *qkv, const float *lse,
                   const float *cos_t, const float *sin_t, AttnDims d, cudaStream_t s) {
    long N = (long)d.B * d.T;
    CU(cudaMemsetAsync(dq_acc, 0, sizeof(float) * N * d.QW, s));
    if constexpr (sizeof(T) == 2) {
        if (attn_uses_flash<T>(d)) {
            CU(cudaMemsetAsync(dkv_acc, 0, sizeof(float) * N * 2 * d.KVW, s));
            attn_D_kernel<<<cdiv(N * d.NH, 256), 256, 0, s>>>(Dbuf, (const bf16 *)dout, (const bf16 *)out, d);
            if (d.HD == 64) flash_backward<64>(dkv_acc, dq_acc, (const bf16 *)dout, (const bf16 *)qkv, lse, Dbuf, d, s);
            else flash_backward<128>(dkv_acc, dq_acc, (const bf16 *)dout, (const bf16 *)qkv, lse, Dbuf, d, s);
            k_attn_finalize<T>(dqkv, dq_acc, dkv_acc, cos_t, sin_t, d.pos, (int)N, d.T, d.NH, d.NKV, d.HD, d.S, d.QW, s, d.ldd);
            return;
        }
    }
    CU(cudaMemsetAsync(dkv_acc, 0, sizeof(float) * N * 2 * d.KVW, s));
    int warps = 4;
    size_t smem = generic_smem(d, warps, 2) + (size_t)warps * d.T * sizeof(float);
    if (smem > 48 * 1024) CU(cudaFuncSetAttribute(attn_generic_bwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    attn_generic_bwd_kernel<T><<<cdiv(N * d.NH, warps), warps * 32, smem, s>>>(dq_acc, dkv_acc, dout, out, qkv, lse, d);
    KCHECK();
    k_attn_finalize<T>(dqkv, dq_acc, dkv_acc, cos_t, sin_t, d.pos, (int)N, d.T, d.NH, d.NKV, d.HD, d.S, d.QW, s, d.ldd);
}

template void attn_forward<float>(float *, float *, const float *, AttnDims, cudaStream_t);
template void attn_forward<bf16>(bf16 *, float *, const bf16 *, AttnDims, cudaStream_t);
template void attn_backward<float>(float *, float *, float *, float *, const float *, const float *, const float *, const float *,
                                   const float *, const float *, AttnDims, cudaStream_t);
template void attn_backward<bf16>(bf16 *, float *, float *, float *, const bf16 *, const bf16 *, const bf16 *, const float *,
                                  const float *, const float *, AttnDims, cudaStream_t);

// ============================ test hook (gpu.h) ============================
template <typename T> static T host_from_f(float x) {
    if constexpr (sizeof(T) == 2) return __float2bfloat16(x);
    else return x;
}
template <typename T> static float host_to_f(T x) {
    if constexpr (sizeof(T) == 2) return __bfloat162float(x);
    else return x;
}
template <typename T> static T *upload_as(const float *x, long n, const char *what) {
    std::vector<T> h(n);
    for (long i = 0; i < n; i++) h[i] = host_from_f<T>(x[i]);
    T *d = (T *)gpu_malloc(sizeof(T) * n, what);
    if (d) CU(cudaMemcpy(d, h.data(), sizeof(T) * n, cudaMemcpyHostToDevice));
    return d;
}
template <typename T> static void download_as(float *x, const T *d, long n) {
    std::vector<T> h(n);
    if (!CU(cudaMemcpy(h.data(), d, sizeof(T) * n, cudaMemcpyDeviceToHost))) return;
    for (long i = 0; i < n; i++) x[i] = host_to_f<T>(h[i]);
}
template <typename T>
static int attention_bidir_as(int B, int Tn, int NH, int NKV, int HD, const int32_t *mask, const float *qkv, const float *dout, float *out,
                              float *dqkv) {
    int S = (NH + 2 * NKV) * HD, QW = NH * HD, KVW = NKV * HD;
    long N = (long)B * Tn;
    AttnDims d = {B, Tn, NH, NKV, HD, S, QW, KVW, 0, 1.0f / sqrtf((float)HD), S, nullptr, true, nullptr};
    if (attn_check(d)) return -1;
    cudaStream_t st = nullptr;
    T *qkv_d = upload_as<T>(qkv, N * S, "attention test"), *out_d = (T *)gpu_malloc(sizeof(T) * N * QW, "attention test");
    T *dout_d = dout ? upload_as<T>(dout, N * QW, "attention test") : nullptr;
    T *dqkv_d = dout ? (T *)gpu_malloc(sizeof(T) * N * S, "attention test") : nullptr;
    float *lse = (float *)gpu_malloc(sizeof(float) * N * NH, "attention test");
    float *dq_acc = dout ? (float *)gpu_malloc(sizeof(float) * N * QW, "attention test") : nullptr;
    float *dkv_acc = dout ? (float *)gpu_malloc(sizeof(float) * N * 2 * KVW, "attention test") : nullptr;
    float *Dbuf = dout ? (float *)gpu_malloc(sizeof(float) * N * NH, "attention test") : nullptr;
    int *km = mask ? (int *)gpu_malloc(sizeof(int) * N, "attention test") : nullptr;
    if (km) CU(cudaMemcpy(km, mask, sizeof(int) * N, cudaMemcpyHostToDevice));
    d.kmask = km;
    if (!gpu_failed() && CU(cudaStreamCreate(&st))) {
        attn_forward<T>(out_d, lse, qkv_d, d, st);
        if (dout) attn_backward<T>(dqkv_d, dq_acc, dkv_acc, Dbuf, dout_d, out_d, qkv_d, lse, nullptr, nullptr, d, st);
        if (CU(cudaStreamSynchronize(st))) {
            download_as<T>(out, out_d, N * QW);
            if (dout) download_as<T>(dqkv, dqkv_d, N * S);
        }
    }
    if (st) cudaStreamDestroy(st);
    void *bufs[] = {qkv_d, out_d, dout_d, dqkv_d, lse, dq_acc, dkv_acc, Dbuf, km};
    for (void *p : bufs) gpu_free(p);
    return gpu_report_failure();
}

extern "C" int gpu_attention_bidir(int B, int Tn, int NH, int NKV, int HD, const int32_t *mask, GpuPrecision prec, const float *qkv,
                                   const float *dout, float *out, float *dqkv) {
    gpu_clear_failure();
    if (B <= 0 || Tn <= 0 || NH <= 0 || NKV <= 0 || HD <= 0 || NH % NKV)
        return peft_fail("attention test: bad shape B=%d T=%d NH=%d NKV=%d HD=%d", B, Tn, NH, NKV, HD);
    for (int b = 0; mask && b < B; b++) {
        bool any = false;
        for (int t = 0; t < Tn; t++) any |= mask[(long)b * Tn + t] != 0;
        if (!any) return peft_fail("attention test: row %d has no key in its mask", b);
    }
    return prec == GPU_BF16 ? attention_bidir_as<bf16>(B, Tn, NH, NKV, HD, mask, qkv, dout, out, dqkv)
                            : attention_bidir_as<float>(B, Tn, NH, NKV, HD, mask, qkv, dout, out, dqkv);
}
