// Row-major GEMM on raw pointers: C (M, N) = alpha * op(A) op(B) + beta * C.
// Calls the Fortran BLAS that libtorch exports (MKL in the official x86 wheels) without the dispatcher,
// which costs microseconds per call and dominates small-batch steps. Falls back to a plain loop when no
// BLAS symbol is present (weak symbols resolve to null), so the engine still runs, only slower.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
void sgemv_(const char*, const int*, const int*, const float*, const float*, const int*, const float*, const int*,
            const float*, float*, const int*) __attribute__((weak));
void dgemv_(const char*, const int*, const int*, const double*, const double*, const int*, const double*,
            const int*, const double*, double*, const int*) __attribute__((weak));
// MKL's packed GEMM: the weight is laid out once per sequence instead of at every step's call.
size_t sgemm_pack_get_size_(const char*, const int*, const int*, const int*) __attribute__((weak));
void sgemm_pack_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
                 float*) __attribute__((weak));
void sgemm_compute_(const char*, const char*, const int*, const int*, const int*, const float*, const int*,
                    const float*, const int*, const float*, float*, const int*) __attribute__((weak));
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
  if (M == 1) {  // one row: a GEMV, which reads B in place (GEMM would first copy all of B)
    // B's memory read column-major is (K, N) when tb (c = Bᵀ a, 'T'), else (N, K) (c = B a, 'N');
    // a has stride lda when ta
    const char op = tb ? 'T' : 'N';
    const int rows = tb ? K : N, cols = tb ? N : K, inc_a = ta ? lda : 1, one = 1;
    if constexpr (sizeof(T) == 4) {
      if (sgemv_) return sgemv_(&op, &rows, &cols, &alpha, B, &ldb, A, &inc_a, &beta, C, &one);
    } else {
      if (dgemv_) return dgemv_(&op, &rows, &cols, &alpha, B, &ldb, A, &inc_a, &beta, C, &one);
    }
  }
  const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
  if constexpr (sizeof(T) == 4) {
    if (sgemm_) return sgemm_(&opb, &opa, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
  } else {
    if (dgemm_) return dgemm_(&opb, &opa, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
  }
  gemm_loop<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// The register width the small kernels block for: a vector of kVecBytes is one register of the target ISA, so
// their 8 accumulators stay in registers (AVX2 has 16 of 32 bytes: 64-byte vectors there were 16 registers of
// accumulators and spilled; NEON and SSE2 have 16-byte registers).
#if defined(__AVX512F__)
inline constexpr int kVecBytes = 64;
#elif defined(__AVX__)
inline constexpr int kVecBytes = 32;
#else
inline constexpr int kVecBytes = 16;
#endif

// One row c[j0, j0 + NV vectors) = x (K) W (K, N) + beta c, with NV * KU independent accumulators (KU
// interleaved slices of k) so that FMA latency is hidden even when few columns remain.
template <typename T, int NV, int KU>
inline void row_block(int N, int K, const T* x, const T* W, T beta, T* c, int j0) {
  constexpr int kLanes = kVecBytes / sizeof(T);  // one register (GCC vector extension: portable C++)
  typedef T Vec __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));
  Vec acc[KU][NV] = {};
  int k = 0;
  for (; k + KU <= K; k += KU)
    for (int s = 0; s < KU; ++s) {
      const Vec a = Vec{} + x[k + s];
      const Vec* w = reinterpret_cast<const Vec*>(W + (int64_t)(k + s) * N + j0);
      for (int u = 0; u < NV; ++u) acc[s][u] += a * w[u];
    }
  for (; k < K; ++k) {
    const Vec a = Vec{} + x[k];
    const Vec* w = reinterpret_cast<const Vec*>(W + (int64_t)k * N + j0);
    for (int u = 0; u < NV; ++u) acc[0][u] += a * w[u];
  }
  for (int u = 0; u < NV; ++u) {
    Vec sum = acc[0][u];
    for (int s = 1; s < KU; ++s) sum += acc[s][u];
    Vec* out = reinterpret_cast<Vec*>(c + j0 + u * kLanes);
    *out = beta == T(0) ? sum : sum + beta * *out;
  }
}

// C (n, N) = X (n, K) W + beta C for one or two rows and W (K, N) row-major: register-blocked, each weight
// loaded once per row. At batch 1-2 this beats a BLAS call (dispatch, and GEMV's reductions).
template <typename T>
void small_rows_kn(int n, int N, int K, const T* X, int ldx, const T* W, T beta, T* C, int ldc) {
  constexpr int kLanes = kVecBytes / sizeof(T);
  for (int r = 0; r < n; ++r) {
    const T* x = X + (int64_t)r * ldx;
    T* c = C + (int64_t)r * ldc;
    int j0 = 0;
    for (; j0 + 8 * kLanes <= N; j0 += 8 * kLanes) row_block<T, 8, 1>(N, K, x, W, beta, c, j0);
    if (j0 + 4 * kLanes <= N) row_block<T, 4, 2>(N, K, x, W, beta, c, j0), j0 += 4 * kLanes;
    if (j0 + 2 * kLanes <= N) row_block<T, 2, 4>(N, K, x, W, beta, c, j0), j0 += 2 * kLanes;
    if (j0 + kLanes <= N) row_block<T, 1, 8>(N, K, x, W, beta, c, j0), j0 += kLanes;
    for (; j0 < N; ++j0) {
      T acc = 0;
      for (int k = 0; k < K; ++k) acc += x[k] * W[(int64_t)k * N + j0];
      c[j0] = beta == T(0) ? acc : acc + beta * c[j0];
    }
  }
}

// C (n, N) = X (n, K) op(W) + beta C for a weight W reused at every step: W (N, K) when w_transposed
// (C = X Wᵀ, the nn.Linear layout), else W (K, N). With MKL (float) W is packed once into MKL's internal
// layout and re-packed only when the row count n changes (n shrinks along a PackedSequence).
template <typename T>
class StepWeight {
 public:
  // scratch_slot: which of the thread's reusable transpose buffers this weight takes (one per StepWeight alive
  // at once in a thread: 0 for W_hh, 1 for W_hr, 2 for W_ih), so a call at batch 1 neither allocates nor
  // page-faults.
  StepWeight(const T* w, bool w_transposed, int N, int K, int max_rows, int scratch_slot = 0)
      : w_(w), trans_(w_transposed), N_(N), K_(K) {
    small_ = w != nullptr && max_rows <= kSmallRows && N >= 16 && K > 0;
    use_pack_ = w != nullptr && !small_ && sizeof(T) == 4 && sgemm_pack_get_size_ && sgemm_pack_ && sgemm_compute_ && N > 0 && K > 0;
    if (small_ && trans_) {  // the small kernel reads W as (K, N): transpose once per call
      static thread_local std::vector<T> scratch[3];
      const size_t count = (size_t)N * K;
      // a weight above 16 MB gets its own buffer, freed with this object: the thread keeps no more than 3 x 16 MB
      std::vector<T>& buffer = count * sizeof(T) > (size_t(16) << 20) ? own_ : scratch[std::clamp(scratch_slot, 0, 2)];
      if (buffer.size() < count) buffer.resize(count);
      w_kn_ = buffer.data();
      transpose(w, w_kn_, N, K);
    }
  }
  StepWeight(const StepWeight&) = delete;
  StepWeight& operator=(const StepWeight&) = delete;
  ~StepWeight() { std::free(packed_); }

  // Make `compute` ready for row blocks of a step with n active rows (re-packs when n changes). Serial.
  void prepare(int n) {
    if constexpr (sizeof(T) == 4) {
      if (use_pack_ && n > 0 && n != packed_n_) {
        const char id = 'A', op = trans_ ? 'T' : 'N';
        const float one = 1.0f;
        const int ldw = trans_ ? K_ : N_;
        const size_t bytes = sgemm_pack_get_size_(&id, &N_, &n, &K_);
        if (bytes > capacity_) {
          std::free(packed_);
          capacity_ = (bytes + 63) / 64 * 64;
          packed_ = static_cast<float*>(std::aligned_alloc(64, capacity_));
        }
        sgemm_pack_(&id, &op, &N_, &n, &K_, &one, reinterpret_cast<const float*>(w_), &ldw, packed_);
        packed_n_ = n;
      }
    }
  }

  // rows <= the n of the last `prepare`; safe to call from several threads on disjoint rows.
  void compute(int rows, const T* X, int ldx, T beta, T* C, int ldc) const {
    if (rows <= 0) return;
    if (small_) return small_rows_kn<T>(rows, N_, K_, X, ldx, trans_ ? w_kn_ : w_, beta, C, ldc);
    const int ldw = trans_ ? K_ : N_;
    if constexpr (sizeof(T) == 4) {
      if (use_pack_) {
        // column-major: Cᵀ (N, rows) = op(W_cm) (N, K) · Xᵀ (K, rows); W is MKL's packed "A" matrix
        const char packed = 'P', no = 'N';
        sgemm_compute_(&packed, &no, &N_, &rows, &K_, packed_, &ldw, reinterpret_cast<const float*>(X), &ldx,
                       reinterpret_cast<const float*>(&beta), reinterpret_cast<float*>(C), &ldc);
        return;
      }
    }
    gemm<T>(false, trans_, rows, N_, K_, T(1), X, ldx, w_, ldw, beta, C, ldc);
  }

  void apply(int n, const T* X, int ldx, T beta, T* C, int ldc) {
    prepare(n);
    compute(n, X, ldx, beta, C, ldc);
  }

 private:
  // dst (K, N) = src (N, K)ᵀ. Blocks of 16 rows of src: each k writes 16 contiguous values read from 16 rows
  // that stay in L1 while k advances (the writes were strided before: ~4 ns per element at H = 256).
  static void transpose(const T* __restrict__ src, T* __restrict__ dst, int N, int K) {
    constexpr int kRows = 16;
    int r0 = 0;
    for (; r0 + kRows <= N; r0 += kRows)
      for (int k = 0; k < K; ++k) {
        T* __restrict__ out = dst + (size_t)k * N + r0;
        for (int i = 0; i < kRows; ++i) out[i] = src[(size_t)(r0 + i) * K + k];
      }
    for (; r0 < N; ++r0)
      for (int k = 0; k < K; ++k) dst[(size_t)k * N + r0] = src[(size_t)r0 * K + k];
  }

  static constexpr int kSmallRows = 2;
  const T* w_;
  T* w_kn_ = nullptr;
  std::vector<T> own_;
  bool trans_, use_pack_ = false, small_ = false;
  int N_, K_, packed_n_ = -1;
  float* packed_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace gatedrnn
