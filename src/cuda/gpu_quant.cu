// gpu_quant.cu: a quantized frozen base (--quantize nf4 | fp4 | int8) on the GPU. The linears of the
// blocks stay quantized on the device: 4-bit codes two a byte as quant.c stores them (the first value
// in the high nibble) with one fp32 absmax per block, int8 codes with one fp32 SCB per row. Double
// quantization is undone on the host (qweight_absmax: the same fp32 values the CPU dequantizes with),
// so the device holds 4 bytes per block of 64 for the statistics either way.
//
// Before each GEMM that reads a quantized group's weight (forward, and the backward's input gradient)
// the group is dequantized into one scratch of the activation type shared by all groups ([out, in],
// the largest group's size, plus the fused input gradient's spare rows): code value times scale in
// fp32 with quant.c's operations (quant_nf4_value / quant_fp4_value; int8: q * SCB * (1/127)), the
// QWeight's out_dtype rounding, then the activation type. In the fp32 mode the weights the GEMMs see
// are the CPU's dequantized weights bit for bit.
extern "C" {
#include "model.h"
#include "quant.h"
#include "util.h"
}
#include "gpu_model.cuh"
#include <cuda_fp16.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>

// The 16 values of a 4-bit type at absmax 1 (quant.c's own functions, so the table is theirs): FP4's
// (magnitude * absmax) * sign equals (sign * magnitude) * absmax exactly (IEEE rounding is symmetric).
struct QTable {
    float v[16];
};

static QTable table_4bit(QuantType t) {
    QTable tab;
    for (int c = 0; c < 16; c++) tab.v[c] = t == QUANT_NF4 ? quant_nf4_value((uint8_t)c, 1.0f) : quant_fp4_value((uint8_t)c, 1.0f);
    return tab;
}

// bitsandbytes dequantizes into the weight's dtype (QWeight.out_dtype): the fp32 value rounded to it.
__device__ __forceinline__ float round_out(float x, int od) {
    if (od == QUANT_OUT_BF16) return __bfloat162float(__float2bfloat16_rn(x));
    if (od == QUANT_OUT_F16) return __half2float(__float2half_rn(x));
    return x;
}

enum { DQ_PER_THREAD = 16, DQ_THREADS = 256 };

// 16 consecutive values per thread. VEC: the 16 lie in one block (block % 16 == 0), their 8 code bytes
// are 8-byte aligned and out 16-byte aligned, so they load and store as vectors (the last thread's
// partial run goes element by element).
template <typename T, bool VEC>
__global__ void dequant_4bit_kernel(T *out, const uint8_t *codes, const float *absmax, long n, int block, QTable tab, int od) {
    __shared__ float v[16];
    if (threadIdx.x < 16) v[threadIdx.x] = tab.v[threadIdx.x];
    __syncthreads();
    long e0 = (blockIdx.x * (long)blockDim.x + threadIdx.x) * DQ_PER_THREAD;
    if (e0 >= n) return;
    if (VEC && e0 + DQ_PER_THREAD <= n) {
        uint2 u = *reinterpret_cast<const uint2 *>(codes + e0 / 2);
        const uint8_t *b = reinterpret_cast<const uint8_t *>(&u);
        float m = absmax[e0 / block], f[DQ_PER_THREAD];
#pragma unroll
        for (int i = 0; i < DQ_PER_THREAD / 2; i++) {
            f[2 * i] = round_out(__fmul_rn(v[b[i] >> 4], m), od);
            f[2 * i + 1] = round_out(__fmul_rn(v[b[i] & 15], m), od);
        }
        constexpr int VN = 16 / sizeof(T);
#pragma unroll
        for (int k = 0; k < DQ_PER_THREAD; k += VN) stv<T, VN>(out + e0 + k, f + k);
        return;
    }
    for (long e = e0; e < n && e < e0 + DQ_PER_THREAD; e++) {
        uint8_t byte = codes[e / 2], code = e % 2 ? byte & 15 : byte >> 4;
        out[e] = from_f<T>(round_out(__fmul_rn(v[code], absmax[e / block]), od));
    }
}

// int8_vectorwise_dequant: (q * SCB[row]) * (1/127 in fp32), two fp32 products as quant.c.
// One value per thread.
template <typename T> __global__ void dequant_int8_kernel(T *out, const int8_t *q, const float *scb, long n, int cols) {
    const float inv127 = 7.874015718698502e-3f;
    long e = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (e < n) out[e] = from_f<T>(__fmul_rn(__fmul_rn((float)q[e], scb[e / cols]), inv127));
}

template <typename T> void gpu_quant_dequant(GpuModel *g, const Group *G) {
    T *out = (T *)G->w;
    for (int i = 0; i < G->n_q; i++) {
        const GpuQWeight *q = &G->q[i];
        long n = (long)q->rows * q->cols;
        if (n == 0) continue;
        int blocks = cdiv(cdiv(n, DQ_PER_THREAD), DQ_THREADS);
        if (q->type == QUANT_INT8)
            dequant_int8_kernel<T><<<cdiv(n, DQ_THREADS), DQ_THREADS, 0, g->st>>>(out, (const int8_t *)q->codes, q->scale, n, q->cols);
        else {
            QTable tab = table_4bit(q->type);
            bool vec = q->block % DQ_PER_THREAD == 0 && (uintptr_t)out % 16 == 0 && (uintptr_t)q->codes % 8 == 0;
            if (vec) dequant_4bit_kernel<T, true><<<blocks, DQ_THREADS, 0, g->st>>>(out, q->codes, q->scale, n, q->block, tab, q->out_dtype);
            else dequant_4bit_kernel<T, false><<<blocks, DQ_THREADS, 0, g->st>>>(out, q->codes, q->scale, n, q->block, tab, q->out_dtype);
        }
        KCHECK();
        out += n;  // the next member's rows follow
    }
}
template void gpu_quant_dequant<float>(GpuModel *, const Group *);
template void gpu_quant_dequant<bf16>(GpuModel *, const Group *);

// ---------------- placement and upload ----------------
static bool is_4bit(QuantType t) { return t == QUANT_NF4 || t == QUANT_FP4; }
// The type, block and sizes of lin's device copy: its QWeight's, or random_quant's with blocks of 64.
static QuantType lin_type(const GpuModel *g, const Linear *lin) { return lin->q ? lin->q->type : g->opt.random_quant; }
static int lin_block(const Linear *lin) { return lin->q && lin->q->type != QUANT_INT8 ? lin->q->block : QUANT_BLOCK; }
static size_t code_bytes(QuantType t, const Linear *lin) {
    size_t n = (size_t)lin->in * lin->out;
    return is_4bit(t) ? (n + 1) / 2 : n;
}
static size_t scale_count(QuantType t, const Linear *lin) {
    size_t n = (size_t)lin->in * lin->out, b = (size_t)lin_block(lin);
    return is_4bit(t) ? (n + b - 1) / b : (size_t)lin->out;
}

int gpu_quant_check(GpuModel *g) {
    Model *m = g->m;
    for (int i = 0; i < m->n_linears; i++) {
        Linear *lin = &m->linears[i];
        if (!gpu_quant_linear(g, lin)) continue;
        if (lin->weight->trainable) return peft_fail("CUDA backend: %s is quantized (%s): its weight is frozen and cannot be trained", lin->module,
                                                     quant_type_name(lin_type(g, lin)));
        if (lin_type(g, lin) == QUANT_NONE || lin_block(lin) <= 0)
            return peft_fail("CUDA backend: %s: internal error: no quantization to upload", lin->module);
    }
    return 0;
}

int gpu_quant_upload(GpuModel *g) {
    Model *m = g->m;
    size_t nc = 0, ns = 0;
    g->qoff = (size_t *)xcalloc(2 * (size_t)m->n_linears, sizeof(size_t));
    for (int i = 0; i < m->n_linears; i++) {
        Linear *lin = &m->linears[i];
        if (!gpu_quant_linear(g, lin)) continue;
        QuantType t = lin_type(g, lin);
        g->qoff[2 * i] = nc;
        g->qoff[2 * i + 1] = ns;
        nc += (code_bytes(t, lin) + 255) / 256 * 256;  // 256-byte aligned: the 4-bit kernel's vector loads
        ns += (scale_count(t, lin) + 63) / 64 * 64;
    }
    if (!nc) return 0;
    g->qcodes = (uint8_t *)gpu_malloc(nc, "the quantized weights' codes");
    g->qscales = (float *)gpu_malloc(sizeof(float) * ns, "the quantized weights' scales");
    if (!g->qcodes || !g->qscales) return gpu_report_failure();
    float *host_scale = nullptr;
    size_t host_cap = 0;
    for (int i = 0; i < m->n_linears && !gpu_failed(); i++) {
        Linear *lin = &m->linears[i];
        if (!gpu_quant_linear(g, lin)) continue;
        QuantType t = lin_type(g, lin);
        uint8_t *codes = g->qcodes + g->qoff[2 * i];
        float *scale = g->qscales + g->qoff[2 * i + 1];
        size_t cb = code_bytes(t, lin), sc = scale_count(t, lin);
        if (!lin->q) {
            // Benchmarks: any byte is a valid code (two 4-bit codes or one int8), so the codes are the
            // bytes of random floats (the allocation is 256-byte padded); the scales a constant 0.03
            // (weights of |w| <= 0.03, a trained model's scale).
            uint64_t seed = g->opt.random_init_seed * 0x9E3779B97F4A7C15ull + 0x51ED270B27422ull * (uint64_t)(i + 1);
            k_fill_random<float>((float *)codes, (long)((cb + 3) / 4), 1.0f, seed, g->st);
            k_fill_random<float>(scale, (long)sc, -1.03f, 0, g->st);
            continue;
        }
        CU(cudaMemcpy(codes, lin->q->data, cb, cudaMemcpyHostToDevice));
        if (t == QUANT_INT8) {
            CU(cudaMemcpy(scale, lin->q->scb, sizeof(float) * sc, cudaMemcpyHostToDevice));
            continue;
        }
        if (sc > host_cap) {
            free(host_scale);
            host_scale = (float *)xmalloc(sizeof(float) * sc);
            host_cap = sc;
        }
        qweight_absmax(lin->q, host_scale);  // nested: dequantized, + offset, as quant.c's dequantization
        CU(cudaMemcpy(scale, host_scale, sizeof(float) * sc, cudaMemcpyHostToDevice));
    }
    free(host_scale);
    CU(cudaStreamSynchronize(g->st));
    return gpu_failed() ? gpu_report_failure() : 0;
}

int gpu_quant_bind(GpuModel *g, Group *G, Linear **lins, int n) {
    int nq = 0;
    for (int i = 0; i < n; i++) nq += gpu_quant_linear(g, lins[i]);
    if (nq == 0) return 0;
    if (nq != n) return peft_fail("CUDA backend: %s: the linears of one fused group must all be quantized or none", lins[0]->module);
    Model *m = g->m;
    for (int i = 0; i < n; i++) {
        Linear *lin = lins[i];
        long li = lin - m->linears;
        QuantType t = lin_type(g, lin);
        G->q[i] = GpuQWeight{t, lin->q ? lin->q->out_dtype : QUANT_OUT_F32, lin->out, lin->in, lin_block(lin),
                             g->qcodes + g->qoff[2 * li], g->qscales + g->qoff[2 * li + 1]};
    }
    return n;
}

int gpu_quant_scratch(GpuModel *g) {
    size_t need = 0;
    for (int l = 0; l < g->cfg.n_layer; l++) {
        Group *gs[4] = {&g->L[l].qkv, &g->L[l].o, &g->L[l].up, &g->L[l].down};
        for (Group *G : gs) {
            if (!G->n_q) continue;
            // The fused input gradient (gpu_model_create: fuse_dx, adapters, nn.Linear layout, frozen) puts A
            // in round8(R) rows after the weight's.
            int spare = g->fuse_dx && G->n_ad ? round8(G->R) : 0;
            need = std::max(need, (size_t)(G->out + spare) * G->in);
        }
    }
    if (!need) return 0;
    g->deq = gpu_malloc(need * g->es, "the dequantization scratch");
    if (!g->deq) return gpu_report_failure();
    CU(cudaMemset(g->deq, 0, need * g->es));  // spare rows past R are read (times zero columns): keep them finite
    for (int l = 0; l < g->cfg.n_layer; l++) {
        Group *gs[4] = {&g->L[l].qkv, &g->L[l].o, &g->L[l].up, &g->L[l].down};
        for (Group *G : gs)
            if (G->n_q) G->w = g->deq;
    }
    return gpu_report_failure();
}

extern "C" int gpu_dequantized_weight(GpuModel *g, const Linear *lin, float *out) {
    gpu_clear_failure();
    Group *G = nullptr;
    int row = 0;
    for (int l = 0; l < g->cfg.n_layer && !G; l++) {
        Linear *groups[4][3];
        block_groups(g, &g->m->blocks[l], groups);
        Group *gs[4] = {&g->L[l].qkv, &g->L[l].o, &g->L[l].up, &g->L[l].down};
        for (int gi = 0; gi < 4 && !G; gi++) {
            row = 0;
            for (int k = 0; k < 3 && groups[gi][k]; row += groups[gi][k]->out, k++)
                if (groups[gi][k] == lin) { G = gs[gi]; break; }
        }
    }
    if (!G || !G->n_q) return peft_fail("CUDA backend: %s is not quantized on the device", lin->module);
    size_t n = (size_t)lin->out * lin->in, off = (size_t)row * lin->in;
    if (g->is_bf16) {
        gpu_quant_dequant<bf16>(g, G);
        std::vector<bf16> h(n);
        CU(cudaMemcpyAsync(h.data(), (const bf16 *)G->w + off, 2 * n, cudaMemcpyDeviceToHost, g->st));
        CU(cudaStreamSynchronize(g->st));
        for (size_t i = 0; i < n; i++) out[i] = __bfloat162float(h[i]);
    } else {
        gpu_quant_dequant<float>(g, G);
        CU(cudaMemcpyAsync(out, (const float *)G->w + off, 4 * n, cudaMemcpyDeviceToHost, g->st));
        CU(cudaStreamSynchronize(g->st));
    }
    return gpu_report_failure();
}

void gpu_quant_free(GpuModel *g) {
    gpu_free(g->qcodes);
    gpu_free(g->qscales);
    gpu_free(g->deq);
    free(g->qoff);
    g->qcodes = nullptr;
    g->qscales = nullptr;
    g->deq = nullptr;
    g->qoff = nullptr;
}
