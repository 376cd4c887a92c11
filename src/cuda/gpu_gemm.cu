// gpu_gemm.cu: row-major GEMMs through cuBLASLt (fp32 accumulation; bf16 or fp32 operands,
// bf16 or fp32 output, optional bias epilogue). Plans (descriptors, layouts, and the fastest of the
// heuristic's first algorithms, timed on the first call) are cached by shape, types and pointer
// alignment, so a training step does no heuristic queries or timing after its first.
#include "gpu_internal.cuh"
#include <stdlib.h>
#include <string.h>

struct GemmKey {
    int ta, tb, m, n, k, lda, ldb, ldd, dta, dtb, dtd, bias, align_a, align_b, align_c, align_d, beta0;
};
struct GemmPlan {
    GemmKey key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
};
struct GemmCtx {
    cublasLtHandle_t lt;
    cudaStream_t stream;
    void *ws;
    size_t ws_size;
    GemmPlan *plans;
    int n_plans, cap_plans;
};

GemmCtx *gemm_ctx_new(cudaStream_t stream) {
    GemmCtx *c = (GemmCtx *)calloc(1, sizeof(GemmCtx));
    c->stream = stream;
    c->ws_size = 32u << 20;
    if (!BLAS(cublasLtCreate(&c->lt)) || !(c->ws = gpu_malloc(c->ws_size, "the cuBLASLt workspace"))) {
        free(c);
        return nullptr;
    }
    return c;
}

void gemm_ctx_free(GemmCtx *c) {
    if (!c) return;
    for (int i = 0; i < c->n_plans; i++) {
        cublasLtMatmulDescDestroy(c->plans[i].op);
        cublasLtMatrixLayoutDestroy(c->plans[i].la);
        cublasLtMatrixLayoutDestroy(c->plans[i].lb);
        cublasLtMatrixLayoutDestroy(c->plans[i].lc);
    }
    free(c->plans);
    gpu_free(c->ws);
    cublasLtDestroy(c->lt);
    free(c);
}

static int alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 1 && (a % al)) al >>= 1;
    return al;
}
static cudaDataType_t cuda_type(int t) { return t == G_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// The fastest of the heuristic's first candidates, timed on the call's own operands (a plan is made
// once per shape, in the first step). Only when rerunning is harmless: D not also the accumulated C.
static const int TUNE_CANDIDATES = 8;
static int pick_fastest(GemmCtx *c, GemmPlan *p, const cublasLtMatmulHeuristicResult_t *res, int found, const void *A, const void *B,
                        const void *C, void *D, float alpha, float beta) {
    cudaEvent_t e0, e1;
    if (cudaEventCreate(&e0) != cudaSuccess) return 0;
    if (cudaEventCreate(&e1) != cudaSuccess) { cudaEventDestroy(e0); return 0; }
    int best = 0;
    float best_ms = 1e30f;
    for (int i = 0; i < found; i++) {
        bool ok = cublasLtMatmul(c->lt, p->op, &alpha, B, p->la, A, p->lb, &beta, C, p->lc, D, p->lc, &res[i].algo, c->ws, c->ws_size,
                                 c->stream) == CUBLAS_STATUS_SUCCESS;  // warm-up
        cudaEventRecord(e0, c->stream);
        for (int rep = 0; ok && rep < 2; rep++)
            ok = cublasLtMatmul(c->lt, p->op, &alpha, B, p->la, A, p->lb, &beta, C, p->lc, D, p->lc, &res[i].algo, c->ws, c->ws_size,
                                c->stream) == CUBLAS_STATUS_SUCCESS;
        cudaEventRecord(e1, c->stream);
        float ms = 0;
        if (ok && cudaEventSynchronize(e1) == cudaSuccess && cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess && ms < best_ms) {
            best_ms = ms;
            best = i;
        }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGetLastError();  // a candidate that failed to launch is skipped, not reported
    return best;
}

static GemmPlan *make_plan(GemmCtx *c, const GemmKey *k, const void *A, const void *B, const void *C, void *D, float alpha, float beta,
                           const void *bias) {
    GemmPlan p;
    memset(&p, 0, sizeof p);
    p.key = *k;
    // Column-major view: D^T[n_rows = N, n_cols = M] = op(B)^T op(A)^T.
    int m = k->n, n = k->m, kk = k->k;
    cublasOperation_t opa = k->tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = k->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (!BLAS(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F))) return nullptr;
    BLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    BLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (k->bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        BLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        cudaDataType_t bt = cuda_type(k->dtd);
        BLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
        BLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));  // for the timing runs
    }
    // A' = B (stored [K,N] row-major = [N,K] col-major when !tb), B' = A.
    if (opa == CUBLAS_OP_N) BLAS(cublasLtMatrixLayoutCreate(&p.la, cuda_type(k->dtb), m, kk, k->ldb));
    else BLAS(cublasLtMatrixLayoutCreate(&p.la, cuda_type(k->dtb), kk, m, k->ldb));
    if (opb == CUBLAS_OP_N) BLAS(cublasLtMatrixLayoutCreate(&p.lb, cuda_type(k->dta), kk, n, k->lda));
    else BLAS(cublasLtMatrixLayoutCreate(&p.lb, cuda_type(k->dta), n, kk, k->lda));
    BLAS(cublasLtMatrixLayoutCreate(&p.lc, cuda_type(k->dtd), m, n, k->ldd));
    if (gpu_failed()) return nullptr;

    cublasLtMatmulPreference_t pref;
    BLAS(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = c->ws_size;
    BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    uint32_t al_a = k->align_b, al_b = k->align_a, al_c = k->align_c, al_d = k->align_d;  // A' is our B
    BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
    BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
    BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c));
    BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d));
    cublasLtMatmulHeuristicResult_t res[TUNE_CANDIDATES];
    int found = 0;
    // PEFT_GPU_NO_TUNE (tests): the heuristic's first algorithm, the same for every GPU model of a shape, where the
    // timed choice may differ from model to model and with it the rounding.
    bool tune = (beta == 0.0f || C != D) && !getenv("PEFT_GPU_NO_TUNE");
    BLAS(cublasLtMatmulAlgoGetHeuristic(c->lt, p.op, p.la, p.lb, p.lc, p.lc, pref, tune ? TUNE_CANDIDATES : 1, res, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    if (gpu_failed()) return nullptr;
    if (!found) {
        BLAS(CUBLAS_STATUS_NOT_SUPPORTED);
        return nullptr;
    }
    p.algo = res[found > 1 ? pick_fastest(c, &p, res, found, A, B, C, D, alpha, beta) : 0].algo;
    if (c->n_plans == c->cap_plans) {
        c->cap_plans = c->cap_plans ? 2 * c->cap_plans : 64;
        c->plans = (GemmPlan *)realloc(c->plans, sizeof(GemmPlan) * c->cap_plans);
    }
    c->plans[c->n_plans] = p;
    return &c->plans[c->n_plans++];
}

void gemm(GemmCtx *c, bool transA, bool transB, int M, int N, int K, float alpha, const void *A, int lda, GDtype ta, const void *B,
          int ldb, GDtype tb, float beta, const void *C, void *D, int ldd, GDtype td, const void *bias) {
    if (M <= 0 || N <= 0 || gpu_failed()) return;
    if (K <= 0) {  // nothing to multiply: D = beta C
        if (beta == 0.0f) CU(cudaMemset2DAsync(D, (size_t)ldd * (td == G_BF16 ? 2 : 4), 0, (size_t)N * (td == G_BF16 ? 2 : 4), M, c->stream));
        return;
    }
    if (beta == 0.0f) C = D;
    GemmKey k;
    memset(&k, 0, sizeof k);
    k.ta = transA; k.tb = transB; k.m = M; k.n = N; k.k = K;
    k.lda = lda; k.ldb = ldb; k.ldd = ldd;
    k.dta = ta; k.dtb = tb; k.dtd = td;
    k.bias = bias != nullptr;
    k.align_a = alignment(A); k.align_b = alignment(B); k.align_c = alignment(C); k.align_d = alignment(D);
    k.beta0 = beta == 0.0f;
    GemmPlan *p = nullptr;
    for (int i = c->n_plans - 1; i >= 0; i--)
        if (!memcmp(&c->plans[i].key, &k, sizeof k)) { p = &c->plans[i]; break; }
    if (!p && !(p = make_plan(c, &k, A, B, C, D, alpha, beta, bias))) return;
    if (bias) BLAS(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    BLAS(cublasLtMatmul(c->lt, p->op, &alpha, B, p->la, A, p->lb, &beta, C, p->lc, D, p->lc, &p->algo, c->ws, c->ws_size, c->stream));
}
