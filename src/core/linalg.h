// linalg.h: the two decompositions PEFT's LoRA initialisations and adapter arithmetic take from
// torch.linalg (svd, qr), here from LAPACK through Debian's liblapacke, in double precision.
// Matrices are row-major; k = min(m, n).
#pragma once

// Thin SVD A[m,n] = U[m,k] diag(S[k]) Vt[k,n], S descending (LAPACK's gesdd, as torch on the CPU).
// A is overwritten. Returns 0, or -1 (peft_last_error) when LAPACK does not converge.
int linalg_svd(int m, int n, double *A, double *U, double *S, double *Vt);

// Reduced QR A[m,n] = Q[m,k] R[k,n] by Householder reflections (geqrf + orgqr, as torch.linalg.qr):
// R upper triangular with LAPACK's signs. A is overwritten. Returns 0 or -1.
int linalg_qr(int m, int n, double *A, double *Q, double *R);
