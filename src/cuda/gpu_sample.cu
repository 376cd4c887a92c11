// gpu_sample.cu: each row's next token chosen on the device (gpu_kv_forward_next), so that a decode
// step sends token ids to the host instead of [rows, V] fp32 logits. One block per row. Greedy is the
// argmax (first maximum, as gen_argmax). Sampling follows gen_sample's warpers without a sort:
// top-k's threshold (the k-th largest score) and top-p's last kept token are found by radix selection
// over the scores' order-preserving bit patterns (8 bits a pass, four passes), weighted by counts for
// top-k and by probability mass for top-p; the draw then walks the kept tokens in id order.
extern "C" {
#include "util.h"
}
#include "gpu.h"
#include "gpu_internal.cuh"
#include <limits.h>
#include <math.h>

enum { SEL_THREADS = 1024, SEL_WARPS = SEL_THREADS / 32 };

// Order-preserving map of a float to an unsigned key (larger float, larger key), and back.
__device__ __forceinline__ uint32_t key_of(float v) {
    uint32_t b = __float_as_uint(v);
    return b & 0x80000000u ? ~b : b | 0x80000000u;
}
__device__ __forceinline__ float val_of(uint32_t k) { return __uint_as_float(k & 0x80000000u ? k & 0x7fffffffu : ~k); }

// Block-wide sum / maximum (SEL_THREADS threads); every thread gets the result.
__device__ float sel_sum(float v, float *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // red may still be read by the previous reduction
    if (lane == 0) red[w] = v;
    __syncthreads();
    return warp_sum(red[lane]);
}
__device__ float sel_max(float v, float *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    return warp_max(red[lane]);
}
// Exclusive prefix sum of v over the threads in order; *total gets the sum of all.
__device__ float sel_scan(float v, float *red, float *total) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        float t = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += t;
    }
    __syncthreads();
    if (lane == 31) red[w] = inc;
    __syncthreads();
    float before = 0, all = 0;
    for (int i = 0; i < SEL_WARPS; i++) {
        float r = red[i];
        if (i < w) before += r;
        all += r;
    }
    *total = all;
    return before + inc - v;
}

// The key at which the weights of the keys in descending order first add up to want (weight(i, &key)
// gives token i's key and weight; tokens of weight 0 are left out). *above: the weight of the larger
// keys (below want). When rounding leaves want out of reach, the smallest key of positive weight.
// Each warp has its own histogram (hist: [SEL_WARPS][256]), and the tokens of one step of a warp that
// share a digit (most tokens, in the first pass) are summed across the warp first: no atomics, and the
// sums are made in a fixed order (a run's draws repeat exactly).
template <typename F> __device__ uint32_t radix_select(F weight, int V, float want, float *hist, float *above) {
    __shared__ uint32_t sh_prefix;
    __shared__ float sh_above;
    uint32_t prefix = 0, mask = 0;
    float acc_above = 0;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    float *mine = hist + w * 256;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < SEL_WARPS * 256; d += blockDim.x) hist[d] = 0;
        __syncthreads();
        for (int i0 = 0; i0 < V; i0 += blockDim.x) {  // whole warps step together (the shuffles below)
            int i = i0 + threadIdx.x;
            uint32_t k = 0;
            float wt = i < V ? weight(i, &k) : 0.0f;
            bool in = wt > 0 && (k & mask) == prefix;
            int digit = in ? (int)((k >> shift) & 255) : -1;
            unsigned peers = __match_any_sync(0xffffffffu, digit);
            float sum = 0;
            for (int j = 0; j < 32; j++) {
                float o = __shfl_sync(0xffffffffu, wt, j);
                if (peers >> j & 1) sum += o;
            }
            if (in && lane == __ffs(peers) - 1) mine[digit] += sum;  // one lane per digit in this warp
            __syncwarp();
        }
        __syncthreads();
        if (threadIdx.x < 256) {  // the warps' histograms into the first
            float t = 0;
            for (int i = 0; i < SEL_WARPS; i++) t += hist[i * 256 + threadIdx.x];
            hist[threadIdx.x] = t;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float acc = acc_above;
            int d = 255, last = -1;
            for (; d >= 0; d--)
                if (hist[d] > 0) {
                    if (acc + hist[d] >= want) break;
                    acc += hist[d];
                    last = d;
                }
            if (d < 0) {  // out of reach: the last non-empty digit
                d = last < 0 ? 0 : last;
                if (last >= 0) acc -= hist[last];
            }
            sh_prefix = prefix | (uint32_t)d << shift;
            sh_above = acc;
        }
        __syncthreads();
        prefix = sh_prefix;
        acc_above = sh_above;
        mask |= 255u << shift;
        __syncthreads();  // sh_prefix is rewritten in the next pass
    }
    *above = acc_above;
    return prefix;
}

// First maximum of each row (NaN counts as -inf); rows [n, V].
__global__ void __launch_bounds__(SEL_THREADS) argmax_kernel(int32_t *next, const float *logits, int V) {
    __shared__ float rv[SEL_WARPS];
    __shared__ int ri[SEL_WARPS];
    const float *x = logits + (size_t)blockIdx.x * V;
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = x[i];
        if (v != v) v = -INFINITY;
        if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) { rv[w] = bv; ri[w] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < SEL_WARPS; i++)
            if (rv[i] > bv || (rv[i] == bv && ri[i] < bi)) { bv = rv[i]; bi = ri[i]; }
        next[blockIdx.x] = bi < V ? bi : 0;
    }
}

// The draw's uniform number in [0, 1): splitmix64 of (seed, position).
__device__ __forceinline__ double draw_uniform(uint64_t seed, int pos) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (uint64_t)((int64_t)pos + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

// One row per block: temperature, top-k, top-p, draw (gen_sample's order). pos[rows ? rows[r] : r] is
// the position the draw hashes.
__global__ void __launch_bounds__(SEL_THREADS) sample_kernel(int32_t *next, const float *logits, int V, const int *pos, const int *rows,
                                                             GpuSampling s) {
    __shared__ float hist[SEL_WARPS * 256], red[SEL_WARPS];
    __shared__ int pick, last_kept;
    const float *x = logits + (size_t)blockIdx.x * V;
    float inv_t = 1.0f / s.temperature;
    auto val = [&](int i) {
        float v = x[i] * inv_t;  // HF: scores / temperature (gen_sample: times 1 / temperature)
        return v != v ? -INFINITY : v;
    };
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, val(i));
    mx = sel_max(mx, red);
    // top-k: keys below the k-th largest are dropped (ties with it kept)
    uint32_t kmin = 0;
    float unused;
    if (s.top_k > 0 && s.top_k < V)
        kmin = radix_select([&](int i, uint32_t *k) { *k = key_of(val(i)); return 1.0f; }, V, (float)s.top_k, hist, &unused);
    auto prob = [&](int i, uint32_t *k) {
        float v = val(i);
        *k = key_of(v);
        return *k >= kmin ? expf(v - mx) : 0.0f;
    };
    // top-p: in descending order a token is kept while the mass before it is below top_p * total. The last
    // kept token's key pkey: larger keys are kept; of the tokens at pkey (ties, equal probability), the first
    // ties_kept in id order.
    bool topp = s.top_p < 1.0f;
    uint32_t pkey = 0;
    float ties_before = 0;
    int ties_kept = INT_MAX;
    int seg = (V + blockDim.x - 1) / blockDim.x, b0 = min(V, (int)threadIdx.x * seg), b1 = min(V, b0 + seg);  // this thread's tokens
    if (topp) {
        float total = 0;
        uint32_t k;
        for (int i = threadIdx.x; i < V; i += blockDim.x) total += prob(i, &k);
        total = sel_sum(total, red);
        float above, P = s.top_p * total;
        pkey = radix_select(prob, V, P, hist, &above);
        float eL = expf(val_of(pkey) - mx), need = eL > 0 ? (P - above) / eL : INFINITY;
        ties_kept = need < 1e9f ? max(1, (int)ceilf(need)) : INT_MAX;
        float cnt = 0, all;
        for (int i = b0; i < b1; i++) cnt += key_of(val(i)) == pkey;
        ties_before = sel_scan(cnt, red, &all);
    }
    // The kept tokens' mass, by segments in id order, and the draw.
    auto kept = [&](int i, int *tie, float *p) {
        uint32_t k;
        *p = prob(i, &k);
        if (!topp) return *p > 0;
        if (k == pkey) return (*tie)++ < ties_kept && *p > 0;
        return k > pkey && *p > 0;
    };
    float mine = 0, p;
    int tie = (int)ties_before, last = -1;
    for (int i = b0; i < b1; i++)
        if (kept(i, &tie, &p)) { mine += p; last = i; }
    if (threadIdx.x == 0) { pick = INT_MAX; last_kept = -1; }
    float total_kept, before = sel_scan(mine, red, &total_kept);  // (its barriers order the writes above)
    if (last >= 0) atomicMax(&last_kept, last);
    float u = (float)(draw_uniform(s.seed, pos[rows ? rows[blockIdx.x] : blockIdx.x]) * total_kept);
    if (mine > 0 && before <= u && u < before + mine) {
        float acc = before;
        int got = last;
        tie = (int)ties_before;
        for (int i = b0; i < b1; i++)
            if (kept(i, &tie, &p)) {
                acc += p;
                if (u < acc) { got = i; break; }
            }
        atomicMin(&pick, got);
    }
    __syncthreads();
    if (threadIdx.x == 0) next[blockIdx.x] = pick != INT_MAX ? pick : last_kept >= 0 ? last_kept : 0;
}

bool gpu_sampling_greedy(const GpuSampling *s) { return !(s->temperature > 0) || s->top_k == 1; }

void k_select_tokens(int32_t *next, const float *logits, int n_rows, int V, const int *pos, const int *rows, const GpuSampling *s,
                     cudaStream_t st) {
    if (gpu_sampling_greedy(s)) argmax_kernel<<<n_rows, SEL_THREADS, 0, st>>>(next, logits, V);
    else sample_kernel<<<n_rows, SEL_THREADS, 0, st>>>(next, logits, V, pos, rows, *s);
    KCHECK();
}

extern "C" int gpu_sample_logits(const float *logits, int n_rows, int V, const int *pos, const GpuSampling *s, int32_t *next) {
    gpu_clear_failure();
    if (n_rows <= 0 || V <= 0) return peft_fail("gpu_sample_logits: no rows");
    float *dl = (float *)gpu_malloc(sizeof(float) * (size_t)n_rows * V, "sampler test logits");
    int *dp = (int *)gpu_malloc(sizeof(int) * (size_t)n_rows * 2, "sampler test rows");
    if (dl && dp) {
        CU(cudaMemcpy(dl, logits, sizeof(float) * (size_t)n_rows * V, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(dp, pos, sizeof(int) * (size_t)n_rows, cudaMemcpyHostToDevice));
        if (!gpu_failed()) k_select_tokens((int32_t *)(dp + n_rows), dl, n_rows, V, dp, nullptr, s, 0);
        CU(cudaMemcpy(next, dp + n_rows, sizeof(int32_t) * (size_t)n_rows, cudaMemcpyDeviceToHost));
    }
    gpu_free(dl);
    gpu_free(dp);
    return gpu_report_failure();
}
