// linalg.c: see linalg.h. Thin wrappers over LAPACKE, row-major.
#include "linalg.h"
#include "util.h"
#include <lapacke.h>
#include <stdlib.h>
#include <string.h>

int linalg_svd(int m, int n, double *A, double *U, double *S, double *Vt) {
    int k = m < n ? m : n;
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, A, n, S, U, k, Vt, n);
    if (info) return peft_fail("LAPACK dgesdd on a %dx%d matrix failed (info %d)", m, n, (int)info);
    return 0;
}

int linalg_qr(int m, int n, double *A, double *Q, double *R) {
    int k = m < n ? m : n;
    double *tau = xmalloc(sizeof(double) * (k ? k : 1));
    lapack_int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, m, n, A, n, tau);
    if (!info) {
        // R: the upper triangle of A's first k rows; Q: orgqr on A's first k columns.
        for (int i = 0; i < k; i++)
            for (int j = 0; j < n; j++) R[(size_t)i * n + j] = j >= i ? A[(size_t)i * n + j] : 0.0;
        for (int i = 0; i < m; i++) memcpy(Q + (size_t)i * k, A + (size_t)i * n, sizeof(double) * k);
        info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, m, k, k, Q, k, tau);
    }
    free(tau);
    if (info) return peft_fail("LAPACK QR of a %dx%d matrix failed (info %d)", m, n, (int)info);
    return 0;
}
