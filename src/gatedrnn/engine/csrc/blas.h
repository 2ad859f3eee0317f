// Row-major GEMM on raw pointers: C (M, N) = alpha * op(A) op(B) + beta * C.
// Calls the Fortran BLAS that libtorch exports (MKL in the official x86 wheels) without the dispatcher,
// which costs microseconds per call and dominates small-batch steps. Falls back to a plain loop when no
// BLAS symbol is present (weak symbols resolve to null), so the engine still runs, only slower.
#pragma once

#include <cstdint>

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

namespace gatedrnn {

inline bool has_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

template <typename T>
void gemm_loop(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta,
               T* C, int ldc) {
  for (int m = 0; m < M; ++m) {
    T* c = C + (int64_t)m * ldc;
    for (int n = 0; n < N; ++n) c[n] = beta == T(0) ? T(0) : beta * c[n];
    for (int k = 0; k < K; ++k) {
      const T a = alpha * (ta ? A[(int64_t)k * lda + m] : A[(int64_t)m * lda + k]);
      if (!tb) {
        const T* b = B + (int64_t)k * ldb;
        for (int n = 0; n < N; ++n) c[n] += a * b[n];
      } else {
        for (int n = 0; n < N; ++n) c[n] += a * B[(int64_t)n * ldb + k];
      }
    }
  }
}

// op(A) is (M, K): A (M, K) with lda, or A (K, M) when ta. op(B) is (K, N): B (K, N) with ldb, or B (N, K) when tb.
template <typename T>
void gemm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta, T* C,
          int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // BLAS leaves C untouched when K = 0 only if beta = 1; make it explicit
    gemm_loop<T>(ta, tb, M, N, 0, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Row-major C = op(A) op(B)  <=>  column-major C^T = op(B)^T op(A)^T: swap operands, same flags.
  const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
  if constexpr (sizeof(T) == 4) {
    if (sgemm_) return sgemm_(&opb, &opa, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
  } else {
    if (dgemm_) return dgemm_(&opb, &opa, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
  }
  gemm_loop<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace gatedrnn
