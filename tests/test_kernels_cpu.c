// test_kernels_cpu.c: the CPU kernels' own accuracy (the reference cases and gradient checks cover
// their use in models) and the BLAS kernels they run on.
#include "kernels.h"
#include "test.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// OpenBLAS 0.3.21 falls back to SSE3 (Prescott) or AVX2 kernels on CPUs it does not know; kernels_cpu.c
// then chooses kernels by the instruction set, unless the user named a core type (a weaker one than the
// CPU allows can only be the user's: then nothing to check).
TEST(blas_kernels_use_the_cpus_vector_units) {
    const char *forced = getenv("OPENBLAS_CORETYPE");
    int level = cpu_vector_level();
    if (forced && blas_core_level(forced) < level) return;
    const char *core = openblas_get_corename();
    CHECK_MSG(blas_core_level(core) >= level, "OpenBLAS runs its %s kernels on a CPU of vector level %d", core, level);
}

// The activations use a polynomial exponential so that their loops vectorise: within a few fp32 ulps
// of the formulas in double precision over -100..100.
TEST(gelu_and_swiglu_match_their_formulas) {
    enum { N = 4001 };
    static float x[N], up[N], out[N];
    for (int i = 0; i < N; i++) {
        x[i] = (i - N / 2) * 0.05f;  // -100 .. 100
        up[i] = 1.0f + 0.001f * i;
    }
    gelu_forward(out, x, N);
    for (int i = 0; i < N; i++) {
        double v = x[i], ref = 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
        CHECK_MSG(fabs(out[i] - ref) <= 4e-7 * fmax(fabs(ref), 1.0), "gelu(%g) = %.9g, expected %.9g", v, out[i], ref);
    }
    swiglu_forward(out, x, up, N);
    for (int i = 0; i < N; i++) {
        double v = x[i], ref = v / (1.0 + exp(-v)) * up[i];
        // (below e^-87 the exponential stops falling: silu(-100) comes out -1.6e-36, not -3.7e-42)
        CHECK_MSG(fabs(out[i] - ref) <= 4e-7 * fabs(ref) + 1e-35, "swiglu(%g) = %.9g, expected %.9g", v, out[i], ref);
    }
}

// Loss and gradient of one row against double precision.
TEST(cross_entropy_matches_double_precision) {
    enum { T = 2, V = 1000 };
    static float logits[T * V];
    int32_t labels[T] = {0, 7};
    for (int j = 0; j < T * V; j++) logits[j] = 30.0f * sinf(0.37f * j);
    double m = -INFINITY, s = 0;
    for (int j = 0; j < V; j++) m = fmax(m, logits[j]);
    for (int j = 0; j < V; j++) s += exp(logits[j] - m);
    double logz = m + log(s), ref_loss = logz - logits[7];
    double ref_g3 = exp(logits[3] - logz), ref_g7 = exp(logits[7] - logz) - 1.0;
    int count = 0;
    double loss = cross_entropy_shifted(logits, labels, 1, T, V, true, &count);
    CHECK(count == 1);
    CHECK_NEAR(loss, ref_loss, 1e-6 * fabs(ref_loss));
    CHECK_NEAR(logits[3], ref_g3, 1e-5 * fabs(ref_g3));  // fp32 softmax: the argument carries ~1 ulp of logz
    CHECK_NEAR(logits[7], ref_g7, 1e-6);
}

// matmul_bf16 against matmul on the same weights widened to fp32: equal to fp32 rounding (the sums go in
// another order), for row counts on both sides of its matrix-vector / blocked-sgemm switch and N beyond
// one block of rows.
TEST(matmul_bf16_matches_fp32_matmul) {
    enum { N = 300, KMAX = 130 };
    static const int Ms[] = {1, 2, 8, 9, 20}, Ks[] = {64, 130, 7};
    static float A[20 * KMAX], W[N * KMAX], C[20 * N], Cr[20 * N];
    static uint16_t W16[N * KMAX];
    for (int i = 0; i < 20 * KMAX; i++) A[i] = sinf(0.7f * i);
    for (int i = 0; i < N * KMAX; i++) {
        W16[i] = (uint16_t)(0x3C00 + (i * 2654435761u >> 20) % 0x100) ^ (i % 3 ? 0 : 0x8000);  // |w| in [2^-7, 2^-5)
        W[i] = bf16_to_f32(W16[i]);
    }
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++) {
            int M = Ms[mi], K = Ks[ki];
            matmul_bf16(C, A, W16, M, N, K);
            matmul(Cr, A, W, M, N, K, false, true, 1.0f, 0.0f);
            double worst = 0;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double mag = 0;  // sum |a w|: the scale of the summation's rounding
                    for (int k = 0; k < K; k++) mag += fabs(A[i * K + k] * W[j * K + k]);
                    double d = fabs(C[i * N + j] - Cr[i * N + j]) / (mag + 1e-30);
                    if (d > worst) worst = d;
                }
            CHECK_MSG(worst <= 1e-5, "M %d K %d: relative difference %g", M, K, worst);
        }
}

// matmul's one-row path (a matrix-vector product) against its rows in a batched call (sgemm), for
// every transposition, leading dimensions wider than the matrices, and alpha / beta: equal to fp32
// rounding (the summation order may differ). Each product is also checked against double precision.
TEST(matmul_one_row_matches_batched_rows) {
    enum { M = 3, N = 37, K = 29, LD = 41 };
    static float A[LD * LD], B[LD * LD], C0[M * LD], Cb[M * LD], C1[LD];
    for (int i = 0; i < LD * LD; i++) { A[i] = sinf(0.7f * i); B[i] = cosf(0.3f * i + 1.0f); }
    for (int tA = 0; tA < 2; tA++)
        for (int tB = 0; tB < 2; tB++) {
            for (int i = 0; i < M * LD; i++) C0[i] = 0.25f * sinf(0.11f * i);
            memcpy(Cb, C0, sizeof Cb);
            matmul_ld(Cb, LD, A, LD, B, LD, M, N, K, tA, tB, 1.5f, 0.5f);
            for (int row = 0; row < M; row++) {
                // Row `row` of op(A) alone: it starts at A + row*LD (stored [M,K]) or A + row (stored [K,M]).
                memcpy(C1, C0 + row * LD, sizeof(float) * N);
                matmul_ld(C1, N, A + (tA ? row : row * LD), LD, B, LD, 1, N, K, tA, tB, 1.5f, 0.5f);
                for (int j = 0; j < N; j++) {
                    double ref = 0.5 * C0[row * LD + j];
                    for (int k = 0; k < K; k++)
                        ref += 1.5 * (tA ? A[k * LD + row] : A[row * LD + k]) * (tB ? B[j * LD + k] : B[k * LD + j]);
                    CHECK_MSG(fabs(C1[j] - Cb[row * LD + j]) <= 1e-5 * (1 + fabs(ref)) && fabs(C1[j] - ref) <= 1e-5 * (1 + fabs(ref)),
                              "transA %d transB %d row %d col %d: one row %g, batched %g, double %g", tA, tB, row, j, C1[j],
                              Cb[row * LD + j], ref);
                }
            }
        }
}
