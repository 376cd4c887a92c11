// cblas_fallback.c: plain OpenMP cblas_sgemm / cblas_sgemv (row-major and column-major), linked
// only into the self-contained GPU test and bench binaries that tests/gpu/portable.sh builds for
// machines without OpenBLAS (the device machine). Enough for the CPU reference of small models.
#include <stddef.h>

enum { RowMajor = 101, ColMajor = 102, NoTrans = 111, Trans = 112 };

static inline float at(const float *X, int ld, int r, int c, int trans) { return trans ? X[(size_t)c * ld + r] : X[(size_t)r * ld + c]; }

void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc) {
    if (order == ColMajor) {  // C^T = op(B)^T op(A)^T in row-major terms
        cblas_sgemm(RowMajor, tb, ta, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
        return;
    }
    int tA = ta == Trans, tB = tb == Trans;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < N; j++) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
        for (int k = 0; k < K; k++) {
            float a = alpha * at(A, lda, i, k, tA);
            if (a == 0.0f) continue;
            if (!tB) {
                const float *b = B + (size_t)k * ldb;
                for (int j = 0; j < N; j++) c[j] += a * b[j];
            } else
                for (int j = 0; j < N; j++) c[j] += a * B[(size_t)j * ldb + k];
        }
    }
}

void cblas_sgemv(int order, int ta, int M, int N, float alpha, const float *A, int lda, const float *x, int incx, float beta, float *y,
                 int incy) {
    int t = (order == RowMajor) == (ta == Trans);  // element (r, c) of op(A) is A[c*lda + r] when t
    int rows = ta == Trans ? N : M, cols = ta == Trans ? M : N;
    if (order == ColMajor) { rows = ta == Trans ? N : M; cols = ta == Trans ? M : N; }
#pragma omp parallel for schedule(static)
    for (int i = 0; i < rows; i++) {
        double s = 0;
        for (int j = 0; j < cols; j++) s += (double)(t ? A[(size_t)j * lda + i] : A[(size_t)i * lda + j]) * x[(size_t)j * incx];
        y[(size_t)i * incy] = (float)(alpha * s + (beta == 0.0f ? 0.0f : beta * y[(size_t)i * incy]));
    }
}

// OpenBLAS's own calls the library makes (threads, the kernel check): nothing to set here.
void openblas_set_num_threads(int n) { (void)n; }
char *openblas_get_corename(void) { return "fallback"; }
