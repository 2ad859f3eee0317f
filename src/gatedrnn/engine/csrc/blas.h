// Row-major GEMM on raw pointers: C (M, N) = alpha * op(A) op(B) + beta * C.
// Calls the Fortran BLAS that libtorch exports (MKL in the official x86 wheels) without the dispatcher,
// which costs microseconds per call and dominates small-batch steps. Falls back to a plain loop when no
// BLAS symbol is present (weak symbols resolve to null), so the engine still runs, only slower.
#pragma once

#include <algorithm>
#include <atomic>
#include <climits>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

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
// MKL's thread count for calls from this thread (0: back to the global setting); returns the previous one
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
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

// The first address at or after `data` aligned to 64 bytes (a buffer holds 64 / sizeof(T) values of padding for it):
// the kernels read their packed weights as whole registers, and a 64-byte load 16 bytes off a cache line reads two
// lines (the batch-1 step at H = 64: 0.45 against 0.70 us; benchmarks/micro/step_gemv.cpp, table in csrc/README.md).
template <typename T>
T* line_aligned(T* data) {
  const size_t off_line = reinterpret_cast<uintptr_t>(data) % 64;
  return data + (off_line == 0 ? 0 : (64 - off_line) / sizeof(T));
}

// Room for `count` values in `buffer` (grown when needed) from an address aligned to 64 bytes.
template <typename T>
T* aligned_room(std::vector<T>& buffer, size_t count) {
  constexpr size_t kPad = 64 / sizeof(T);
  if (buffer.size() < count + kPad) buffer.resize(count + kPad);
  return line_aligned(buffer.data());
}

// A buffer that grows without filling: std::vector zero-fills what it grows by, which for the packed weights of a
// step (4 MB at H = 512) was a memset as long as the packing itself at every call, 13% of an LSTM forward's
// samples at B = 64, T = 4 (the packing writes every value the kernels read).
template <typename T>
struct RawBuffer {
  std::unique_ptr<T[]> data;
  size_t capacity = 0;
  T* aligned_room(size_t count) {  // as aligned_room above
    constexpr size_t kPad = 64 / sizeof(T);
    if (capacity < count + kPad) data.reset(new T[count + kPad]), capacity = count + kPad;  // (default-initialised)
    return line_aligned(data.get());
  }
};

// Room for `count` values for packed weights: in `kept`, a buffer the calling thread keeps between calls (no page
// faults at every call), up to 32 MB; above, in `own`, freed with its owner (a thread keeps no more than that).
template <typename T>
T* packing_room(RawBuffer<T>& kept, RawBuffer<T>& own, size_t count) {
  return (count * sizeof(T) > (size_t(32) << 20) ? own : kept).aligned_room(count);
}

// A vector of x in every lane. Written x − 0, which is x for every x and folds to one broadcast; 0 + x is not x
// at x = −0, so `Vec{} + x` cost an add (on the FMA ports) before every broadcast.
template <typename Vec, typename T>
inline Vec splat(T x) {
  return x - Vec{};
}

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
      const Vec a = splat<Vec>(x[k + s]);
      const Vec* w = reinterpret_cast<const Vec*>(W + (int64_t)(k + s) * N + j0);
      for (int u = 0; u < NV; ++u) acc[s][u] += a * w[u];
    }
  for (; k < K; ++k) {
    const Vec a = splat<Vec>(x[k]);
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

// C (n, N) = X (n, K) Wᵀ + beta C at batch 1-2 for a weight W (N, K) used at every step (h W_hhᵀ), from W packed
// once per call into column panels of kWidth = 8 registers: panel p = W[p kWidth, (p + 1) kWidth) transposed, (K,
// kWidth) contiguous, zeros past N. A step reads the whole weight once per row, in order (the prefetchers follow
// one stream; the plain transpose (K, N) read 8 registers of each row, 4 N bytes apart), and every other step in
// the opposite panel order: a weight a little larger than L1 (W_hh at H = 64 is 64 KB, L1 32-48 KB) then starts
// each step on the panels the last step read most recently, still in L1 (batch 1, H = 64, aligned: 0.54 µs a step
// for the transpose, 0.45 µs for the panels; csrc/README.md).
// Each column sums k in order in one accumulator, so the panel order changes no result.
template <typename T>
struct SmallPanels {
  static constexpr int kLanes = kVecBytes / sizeof(T), kNV = 8, kWidth = kNV * kLanes;
  typedef T Vec __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));

  // the last panel is only as wide as the columns left, rounded up to whole registers (zeros past N)
  static int panel_width(int N, int n0) { return std::min(kWidth, (N - n0 + kLanes - 1) / kLanes * kLanes); }
  static size_t packed_size(int N, int K) { return (size_t)K * ((N + kLanes - 1) / kLanes * kLanes); }

  // out (packed_size) from W (N, K) row-major. Per panel, k outer: the kWidth rows read at one k share their
  // cache lines with the next k's (they stay in L1), and the writes are contiguous.
  static void pack(const T* __restrict__ w, int N, int K, T* __restrict__ out) {
    for (int n0 = 0; n0 < N; n0 += kWidth) {
      const int stride = panel_width(N, n0), width = std::min(stride, N - n0);
      T* __restrict__ panel = out + (size_t)n0 * K;
      for (int k = 0; k < K; ++k) {
        T* __restrict__ dst = panel + (size_t)k * stride;
        for (int j = 0; j < width; ++j) dst[j] = w[(size_t)(n0 + j) * K + k];
        for (int j = width; j < stride; ++j) dst[j] = T(0);
      }
    }
  }

  // reverse: the first row's panels last to first (see above; the results are the same either way)
  static void compute(int n, int N, int K, const T* X, int ldx, const T* packed, T beta, T* C, int ldc,
                      bool reverse) {
    const int panels = (N + kWidth - 1) / kWidth;
    for (int r = 0; r < n; ++r)
      for (int i = 0; i < panels; ++i) {  // a second row starts where the first ended
        const int n0 = (reverse != (r & 1) ? panels - 1 - i : i) * kWidth;
        panel<kNV>(N, K, X + (int64_t)r * ldx, packed + (size_t)n0 * K, beta, C + (int64_t)r * ldc, n0);
      }
  }

 private:
  // c[n0, n0 + width) (+)= x · the panel at n0, whose width is NV registers (or fewer: the last one)
  template <int NV>
  static void panel(int N, int K, const T* __restrict__ x, const T* __restrict__ packed, T beta, T* c, int n0) {
    if constexpr (NV > 1) {
      if (panel_width(N, n0) < NV * kLanes) return panel<NV - 1>(N, K, x, packed, beta, c, n0);
    }
    constexpr int kStride = NV * kLanes;
    Vec acc[NV] = {};
    for (int k = 0; k < K; ++k) {
      const Vec a = splat<Vec>(x[k]);
      const Vec* w = reinterpret_cast<const Vec*>(packed + (size_t)k * kStride);
      for (int u = 0; u < NV; ++u) acc[u] += a * w[u];
    }
    const int width = std::min(kStride, N - n0);
    if (width == kStride && beta == T(0)) {
      std::memcpy(c + n0, acc, sizeof(acc));
    } else {  // the last columns (only `width` exist in C), or C accumulated into
      T row[kStride];
      std::memcpy(row, acc, sizeof(row));
      for (int j = 0; j < width; ++j) c[n0 + j] = beta == T(0) ? row[j] : row[j] + beta * c[n0 + j];
    }
  }
};

// Sum of one vector's lanes as a log-depth tree (a lane-by-lane loop is a chain of dependent adds, which at
// H <= 256 costs more than the FMAs): AVX-512's reduce for a 64-byte vector, else halving in place.
template <typename T, typename Vec>
inline T lane_sum(const Vec& v) {
#ifdef __AVX512F__
  if constexpr (sizeof(Vec) == 64) {
    if constexpr (sizeof(T) == 4) return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v));
    else return _mm512_reduce_add_pd(reinterpret_cast<__m512d>(v));
  }
#endif
  constexpr int n = sizeof(Vec) / sizeof(T);
  T lanes[n];
  std::memcpy(lanes, &v, sizeof(Vec));
  for (int width = n / 2; width >= 1; width /= 2)
    for (int i = 0; i < width; ++i) lanes[i] += lanes[i + width];
  return lanes[0];
}

// Vectors of one register (kVecBytes): 64-byte vectors on AVX2 or NEON become several registers per value, and
// GCC spilled them (gemv_rows at 2 MB of weights took 8x as long as the register-wide panels on a Zen 3).
template <typename T>
inline T dot_row(const T* __restrict__ w, const T* __restrict__ x, int K) {
  typedef T Vec __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));
  constexpr int kLanes = kVecBytes / sizeof(T);
  Vec acc0{}, acc1{};
  int k = 0;
  for (; k + 2 * kLanes <= K; k += 2 * kLanes) {
    acc0 += *reinterpret_cast<const Vec*>(w + k) * *reinterpret_cast<const Vec*>(x + k);
    acc1 += *reinterpret_cast<const Vec*>(w + k + kLanes) * *reinterpret_cast<const Vec*>(x + k + kLanes);
  }
  for (; k + kLanes <= K; k += kLanes)
    acc0 += *reinterpret_cast<const Vec*>(w + k) * *reinterpret_cast<const Vec*>(x + k);
  acc0 += acc1;
  T sum = lane_sum<T>(acc0);
  for (; k < K; ++k) sum += w[k] * x[k];
  return sum;
}

// Lane sums of kLanes vectors at once: out[r] = the sum of acc[r]'s lanes, as the lanes of one vector. Each level
// pairs the vectors and folds every row's lanes in half (low half + high half, through two shuffles of the pair),
// so kLanes rows cost 2 (kLanes - 1) shuffles and kLanes - 1 adds where one lane_sum each costs a log-depth tree
// per row; on a CPU whose 512-bit ops run as two 256-bit halves (Zen 4) the per-row trees took as long as the FMAs
// of a 64-wide row. Each row's sum is added in lane_sum's order (lane i + lane i + width, width halving), bit for bit.
template <int N, int S, bool kHigh>
constexpr int fold_index(int i) {  // lane i of the folded pair: rows of S lanes in each vector become rows of S / 2
  const int half = N / 2, j = i % half, row = j / (S / 2), pos = j % (S / 2);
  return (i < half ? 0 : N) + row * S + pos + (kHigh ? S / 2 : 0);
}

template <int S, typename Vec, int... I>
inline Vec fold_pair(const Vec& p, const Vec& q, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(p, q, fold_index<sizeof...(I), S, false>(I)...) +
         __builtin_shufflevector(p, q, fold_index<sizeof...(I), S, true>(I)...);
}

template <int S, int Count, typename Vec>
inline void fold_level(Vec* acc) {  // acc[0, Count) with rows of S lanes -> acc[0, Count / 2) with rows of S / 2
  constexpr int n = sizeof(Vec) / sizeof(acc[0][0]);
  for (int i = 0; i < Count / 2; ++i)
    acc[i] = fold_pair<S>(acc[2 * i], acc[2 * i + 1], std::make_integer_sequence<int, n>{});
  if constexpr (Count > 2) fold_level<S / 2, Count / 2>(acc);
}

// gemv_rows for kB of the batch's rows at once, rows [r0, r1) (a multiple of kLanes), K a multiple of kLanes, in
// blocks of kLanes / kB weight rows: each weight vector loaded serves the kB rows, one accumulator per weight row and
// batch row, summed over k in order and folded by gemv_rows' tree, so every sum equals gemv_rows' bit for bit (where
// gemv_rows has one accumulator a row, kAcc == 1).
template <typename T, int kB>
inline void gemv_rows_batched(int64_t r0, int64_t r1, int K, const T* __restrict__ W, const T* __restrict__ x,
                              T* __restrict__ y, bool descending, int64_t ldx, int64_t ldy) {
  typedef T Vec __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));
  constexpr int kLanes = kVecBytes / sizeof(T), kR = kLanes / kB;
  auto load = [](const T* p) { return *reinterpret_cast<const Vec*>(p); };
  const int64_t blocks = (r1 - r0) / kR;
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t r = descending ? r1 - kR * (i + 1) : r0 + kR * i;
    const T* w = W + r * K;
    Vec acc[kLanes] = {};  // acc[j kB + b]: weight row r + j, batch row b
    for (int k = 0; k < K; k += kLanes) {
      Vec xv[kB];
      for (int b = 0; b < kB; ++b) xv[b] = load(x + b * ldx + k);
      for (int j = 0; j < kR; ++j) {
        const Vec wv = load(w + j * K + k);
        for (int b = 0; b < kB; ++b) acc[j * kB + b] += wv * xv[b];
      }
    }
    fold_level<kLanes, kLanes>(acc);
    T sums[kLanes];
    std::memcpy(sums, &acc[0], sizeof(sums));
    for (int j = 0; j < kR; ++j)
      for (int b = 0; b < kB; ++b) y[b * ldy + r + j] = sums[j * kB + b];
  }
}

// y[b ldy + r] = W[r] · x[b ldx ...] for rows [r0, r1) of row-major W (rows, K) and the batch's rows b: the streaming
// GEMV at small batches, and a step weight's at batch 1-2 when it serves one or two steps (StepWeight: no packed
// copy); a block of weight rows is read from memory once and from L1 for the batch's other rows. One register's
// lanes of rows at a time (16 floats on AVX-512), an accumulator each (more where that makes fewer than 8 FMA
// chains), their sums reduced together (fold_level) and stored as one vector; the weights read in place; a BLAS
// call per gate block costs more in dispatch than this whole pass at H <= 256. No software prefetch: a block's
// kLanes rows are enough streams for the hardware prefetchers, and fetching the next block as well overflowed L1
// (csrc/README.md).
// descending visits the blocks from the last: a caller that alternates the order starts each pass on the rows the
// previous pass read last, still in cache. Each row's sum is the same either way, bit for bit: one loop body
// serves both orders (a second instantiation for the other order compiled the scalar tails differently).
template <typename T>
inline void gemv_rows(int64_t r0, int64_t r1, int K, const T* __restrict__ W, const T* __restrict__ x,
                      T* __restrict__ y, bool descending = false, int64_t batch = 1, int64_t ldx = 0,
                      int64_t ldy = 0) {
  typedef T Vec __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));
  constexpr int kLanes = kVecBytes / sizeof(T), kRows = kLanes;
  constexpr int kAcc = std::max(1, 8 / kRows);  // accumulators per row: at least 8 independent FMA chains
  auto load = [](const T* p) { return *reinterpret_cast<const Vec*>(p); };
  const int64_t blocks = (r1 - r0) / kRows, blocked = r0 + kRows * blocks;  // rows [blocked, r1) one at a time
  // Rows a multiple of 4 KB apart (K a multiple of 1024 floats or 512 doubles) put a block's kRows rows in the same
  // L1 sets, more than its ways: the block left L1 before the batch's next row read it (LSTM inference B = 8, T = 10,
  // I = 256, H = 1024 on the unit split ran at 0.69x torch.nn). There the batch goes 4 or 2 rows at a time through
  // blocks of fewer weight rows (gemv_rows_batched: the same sums, bit for bit), the last odd row through the loop
  // below.
  int64_t b_first = 0;
  if constexpr (kAcc == 1 && kLanes % 4 == 0) {
    if (batch >= 2 && (int64_t(K) * sizeof(T)) % 4096 == 0) {
      for (; b_first + 4 <= batch; b_first += 4)
        gemv_rows_batched<T, 4>(r0, blocked, K, W, x + b_first * ldx, y + b_first * ldy, descending, ldx, ldy);
      for (; b_first + 2 <= batch; b_first += 2)
        gemv_rows_batched<T, 2>(r0, blocked, K, W, x + b_first * ldx, y + b_first * ldy, descending, ldx, ldy);
    }
  }
  for (int64_t i = 0; i < blocks && b_first < batch; ++i) {
    const int64_t r = descending ? blocked - kRows * (i + 1) : r0 + kRows * i;
    const T* w = W + r * K;
    for (int64_t b = b_first; b < batch; ++b) {  // the block's rows stay in L1 for the batch's other rows
      const T* xb = x + b * ldx;
      Vec acc[kAcc][kRows] = {};
      int k = 0;
      for (; k + kAcc * kLanes <= K; k += kAcc * kLanes) {
        for (int a = 0; a < kAcc; ++a) {
          const Vec xv = load(xb + k + a * kLanes);
          for (int j = 0; j < kRows; ++j) acc[a][j] += load(w + j * K + k + a * kLanes) * xv;
        }
      }
      for (; k + kLanes <= K; k += kLanes) {
        const Vec xv = load(xb + k);
        for (int j = 0; j < kRows; ++j) acc[0][j] += load(w + j * K + k) * xv;
      }
      for (int a = 1; a < kAcc; ++a)
        for (int j = 0; j < kRows; ++j) acc[0][j] += acc[a][j];
      fold_level<kLanes, kRows>(acc[0]);
      T sums[kRows];
      std::memcpy(sums, &acc[0][0], sizeof(sums));
      for (; k < K; ++k)
        for (int j = 0; j < kRows; ++j) sums[j] += w[j * K + k] * xb[k];
      std::memcpy(y + b * ldy + r, sums, sizeof(sums));
    }
  }
  for (int64_t i = 0; i < r1 - blocked; ++i) {
    const int64_t r = descending ? r1 - 1 - i : blocked + i;
    for (int64_t b = 0; b < batch; ++b) y[b * ldy + r] = dot_row(W + r * K, x + b * ldx, K);
  }
}

// The engine's own GEMM for a weight used at every step: C (rows, N) = X (rows, K) W + beta C, W packed once per
// call into column panels of kPanel = kNR registers' width, panel p = W[:, p kPanel, (p + 1) kPanel) as
// (K, kPanel) contiguous (zeros past N), so the micro-kernel reads it in order. A tile of kMR rows x kNR
// registers keeps kMR * kNR accumulators in registers (24 of AVX-512's and NEON's 32, 12 of AVX2's 16) and
// per k loads kNR panel vectors and kMR broadcasts of X. The recurrent GEMM at batch 3-16 is this size; MKL
// picks slower code on non-Intel CPUs, so StepWeight measures both (GemmChoice below).
template <typename T>
struct PanelGemm {
  static constexpr int kLanes = kVecBytes / sizeof(T);
#if defined(__AVX512F__) || defined(__aarch64__)
  static constexpr int kMR = 8, kNR = 3;
#else
  static constexpr int kMR = 6, kNR = 2;
#endif
  static constexpr int kPanel = kNR * kLanes;
  typedef T Vec __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));

  static size_t packed_size(int N, int K) { return (size_t)((N + kPanel - 1) / kPanel) * K * kPanel; }

  // out (packed_size) from W (N, K) when w_transposed (C = X Wᵀ), else W (K, N); only panels [p0, p1) when given
  // (threads pack disjoint panels)
  static void pack(const T* w, bool w_transposed, int N, int K, T* out, int p0 = 0, int p1 = INT_MAX) {
    for (int n0 = p0 * kPanel; n0 < N && n0 < (int64_t)p1 * kPanel; n0 += kPanel) {
      T* panel = out + (size_t)(n0 / kPanel) * K * kPanel;
      const int width = std::min(kPanel, N - n0);
      if (w_transposed) {  // a row of W is a column of the panel (read in order; the panel's writes stay in cache)
        for (int j = 0; j < width; ++j) {
          const T* src = w + (size_t)(n0 + j) * K;
          for (int k = 0; k < K; ++k) panel[(size_t)k * kPanel + j] = src[k];
        }
      } else {
        for (int k = 0; k < K; ++k) std::copy_n(w + (size_t)k * N + n0, width, panel + (size_t)k * kPanel);
      }
      if (width < kPanel)
        for (int k = 0; k < K; ++k) std::fill_n(panel + (size_t)k * kPanel + width, kPanel - width, T(0));
    }
  }

  // kTN (compute_tn): X is stored transposed, X[r, k] at X[k ldx + r], and the panel is read in place from a
  // row-major W, its row k at panel + k ldp; otherwise the panel is packed (rows of kPanel).
  template <int MR, bool kTN = false>
  static void tile(int K, const T* __restrict__ X, int ldx, const T* __restrict__ panel, T beta, T* C, int ldc,
                   int width, int ldp = kPanel) {
    // Every loop over the accumulators is unrolled, so that they live in registers from the first FMA to the
    // store: a loop GCC leaves rolled indexes them, which puts them all in memory (a memset to start and a copy
    // through the stack to end each tile).
    Vec acc[MR][kNR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int u = 0; u < kNR; ++u) acc[r][u] = Vec{};
    for (int k = 0; k < K; ++k) {
      const Vec* b = reinterpret_cast<const Vec*>(panel + (size_t)k * (kTN ? ldp : kPanel));
      Vec bk[kNR];
#pragma GCC unroll 4
      for (int u = 0; u < kNR; ++u) bk[u] = b[u];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const Vec a = splat<Vec>(kTN ? X[(size_t)k * ldx + r] : X[(size_t)r * ldx + k]);
#pragma GCC unroll 4
        for (int u = 0; u < kNR; ++u) acc[r][u] += a * bk[u];
      }
    }
    if (width == kPanel) {
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
        for (int u = 0; u < kNR; ++u) {
          Vec* out = reinterpret_cast<Vec*>(C + (size_t)r * ldc + u * kLanes);
          *out = beta == T(0) ? acc[r][u] : acc[r][u] + beta * *out;
        }
      return;
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {  // the last panel: only its first `width` columns exist in C
      T* c = C + (size_t)r * ldc;
      T row[kPanel];
#pragma GCC unroll 4
      for (int u = 0; u < kNR; ++u) std::memcpy(row + u * kLanes, &acc[r][u], sizeof(Vec));
      for (int j = 0; j < width; ++j) c[j] = beta == T(0) ? row[j] : row[j] + beta * c[j];
    }
  }

  // C (rows, N) = X (rows, K) W + beta C, W from `pack`. K in blocks of kKC (later blocks add to C, beta 1): a
  // panel's block of 16 KB (kKC x kPanel; AVX2, NEON), and at least 256 steps of k, so that a tile's loads and
  // stores of C are few against its FMAs. With AVX-512's 3-register panels 16 KB was 80 steps, and on a Zen 4
  // (one core) blocks of 256 or more ran 1.07-1.13x faster than 80 (csrc/README.md): the block (48 KB) streams
  // from L2 at a few bytes a cycle, which the prefetcher sustains.
  // The 1-2 rows left after the kMR-row tiles run two panels at a time (`pair`), up to the last even panel.
  static void compute(int rows, int N, int K, const T* X, int ldx, const T* packed, T beta, T* C, int ldc) {
    constexpr int kKC = std::max<int>(256, 16384 / (kPanel * sizeof(T)) / 8 * 8);
    const int full = rows / kMR * kMR, rest = rows - full;
    const int paired = rest <= 2 ? N / (2 * kPanel) * (2 * kPanel) : 0;  // columns whose leftover rows run in pairs
    for (int n0 = 0; n0 < N; n0 += kPanel) {
      const int width = std::min(kPanel, N - n0);
      for (int k0 = 0; k0 < K; k0 += kKC) {
        const int kc = std::min(kKC, K - k0);
        const T* panel = packed + (size_t)(n0 / kPanel) * K * kPanel + (size_t)k0 * kPanel;
        const T b = k0 == 0 ? beta : T(1);
        for (int r = 0; r < full; r += kMR)
          tile<kMR>(kc, X + (size_t)r * ldx + k0, ldx, panel, b, C + (size_t)r * ldc + n0, ldc, width);
        if (rest == 0) continue;
        const T* x_rest = X + (size_t)full * ldx + k0;
        T* c_rest = C + (size_t)full * ldc + n0;
        if (n0 >= paired) {
          remainder(rest, kc, x_rest, ldx, panel, b, c_rest, ldc, width);
        } else if (n0 / kPanel % 2 == 1) {  // this panel and the one before it, which skipped its leftover rows
          if (rest == 1) pair<1>(kc, x_rest, ldx, panel - (size_t)K * kPanel, panel, b, c_rest - kPanel, ldc);
          else pair<2>(kc, x_rest, ldx, panel - (size_t)K * kPanel, panel, b, c_rest - kPanel, ldc);
        }
      }
    }
  }

  // Rows 1-2 of two full panels at once (p1 the panel after p0, C at p0's first column): a row keeps 2 kNR
  // accumulators instead of kNR, and a tile of 2 rows on one panel (4 accumulators on AVX2) has too few
  // independent FMA chains to hide the FMA latency. In L1 on the AMD EPYC (AVX2; GF/s on one core): 2 rows
  // 49 -> 76, 1 row 29 -> 49, against 100 for the 6-row tile; at B = 16 a thread's 8 rows of a step run as 6 + 2,
  // where the 2 took 36% of the GEMM's samples in `perf`. Each column sums over k in the same order and K blocks,
  // so the result is the same bit for bit. Both panels' K blocks are read here (2 x 16 KB on AVX2, an L1's worth),
  // once each: the rows left over are the last to read a panel block.
  template <int MR>
  static void pair(int K, const T* __restrict__ X, int ldx, const T* __restrict__ p0, const T* __restrict__ p1,
                   T beta, T* C, int ldc) {
    Vec acc[MR][2 * kNR];
#pragma GCC unroll 2
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int u = 0; u < 2 * kNR; ++u) acc[r][u] = Vec{};
    for (int k = 0; k < K; ++k) {
      const Vec* b0 = reinterpret_cast<const Vec*>(p0 + (size_t)k * kPanel);
      const Vec* b1 = reinterpret_cast<const Vec*>(p1 + (size_t)k * kPanel);
      Vec bk[2 * kNR];
#pragma GCC unroll 4
      for (int u = 0; u < kNR; ++u) bk[u] = b0[u], bk[kNR + u] = b1[u];
#pragma GCC unroll 2
      for (int r = 0; r < MR; ++r) {
        const Vec a = splat<Vec>(X[(size_t)r * ldx + k]);
#pragma GCC unroll 8
        for (int u = 0; u < 2 * kNR; ++u) acc[r][u] += a * bk[u];
      }
    }
#pragma GCC unroll 2
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int u = 0; u < 2 * kNR; ++u) {
        Vec* out = reinterpret_cast<Vec*>(C + (size_t)r * ldc + u * kLanes);
        *out = beta == T(0) ? acc[r][u] : acc[r][u] + beta * *out;
      }
  }

  // Panels [p0, p1) of C (M, N) = Xᵀ W + beta C, for X (K, M) and W (K, N), both row-major and read in place
  // (ldx, ldw): the weight gradients Σ_k x_kᵀ w_k over all steps and rows, with W the gate gradients (N = G H, the
  // wide side, so few columns of a panel are padding). A tile's kMR broadcasts at step k are neighbouring values
  // of X's row k (one cache line); its panel is W's row k from column p kPanel on, 64-byte aligned when W and
  // ldw are. The last panel, when narrower than kPanel, is read from `tail` (K, kPanel; zeros past N), as whole
  // registers may not be read past W's end. Per K block each panel block serves every tile of rows while in cache.
  // K = 0 leaves C as it was: the caller scales it.
  // Rows [r0, r1) of C only when given (r0 a multiple of kMR): threads split C's rows or its panels.
  static void compute_tn(int p0, int p1, int M, int N, int K, const T* X, int ldx, const T* W, int ldw,
                         const T* tail, T beta, T* C, int ldc, int r0 = 0, int r1 = INT_MAX) {
    r1 = std::min(r1, M);
    constexpr int kKC = std::max<int>(256, 16384 / (kPanel * sizeof(T)) / 8 * 8);
    for (int k0 = 0; k0 < K; k0 += kKC) {
      const int kc = std::min(kKC, K - k0);
      const T b = k0 == 0 ? beta : T(1);
      for (int p = p0; p < p1; ++p) {
        const int n0 = p * kPanel, width = std::min(kPanel, N - n0);
        const bool narrow = width < kPanel;
        const T* panel = narrow ? tail + (size_t)k0 * kPanel : W + (size_t)k0 * ldw + n0;
        const int ldp = narrow ? kPanel : ldw;
        for (int r = r0; r < r1; r += kMR) {
          const int rows = std::min(kMR, r1 - r);
          const T* x = X + (size_t)k0 * ldx + r;
          T* c = C + (size_t)r * ldc + n0;
          if (rows == kMR) tile<kMR, true>(kc, x, ldx, panel, b, c, ldc, width, ldp);
          else remainder<kMR - 1, true>(rows, kc, x, ldx, panel, b, c, ldc, width, ldp);
        }
      }
    }
  }

 private:
  template <int MR = kMR - 1, bool kTN = false>
  static void remainder(int rows, int K, const T* X, int ldx, const T* panel, T beta, T* C, int ldc, int width,
                        int ldp = kPanel) {
    if constexpr (MR >= 1) {
      if (rows == MR) return tile<MR, kTN>(K, X, ldx, panel, beta, C, ldc, width, ldp);
      remainder<MR - 1, kTN>(rows, K, X, ldx, panel, beta, C, ldc, width, ldp);
    }
  }
};

// Which GEMM a StepWeight of a given shape runs (op 0), or a GEMM after the backward's loop (op 1: sequence_gemm in
// scan_kernel.h; rows = M): BLAS (MKL's packed sgemm for float, dgemm for double) or PanelGemm, decided by timing
// both on the operands at hand at their first use in the process (GATEDRNN_GEMM=auto, the default), or forced
// (GATEDRNN_GEMM=blas | own). Every decision and its timings are kept for gemm_choices().
struct GemmDecision {
  int dtype_bytes, N, K, rows;
  bool transposed;  // a step weight: W (N, K); a whole-sequence GEMM (op > 0): A is read transposed
  int op;           // 0: a step weight (StepWeight); 1: C = op(A) B after the backward's loop (sequence_gemm)
  double blas_us, own_us;  // best of the timed runs; -1 when not measured (forced, or too large to time)
  bool own;
};

class GemmChoice {
 public:
  static GemmChoice& instance() {
    static GemmChoice* choice = new GemmChoice();  // never destroyed: decisions may be read at exit
    return *choice;
  }
  // "auto", "blas" or "own", from GATEDRNN_GEMM (read at each StepWeight: tests and users switch it at run time)
  static std::string requested() {
    const char* value = std::getenv("GATEDRNN_GEMM");
    std::string mode = value == nullptr || *value == 0 ? "auto" : value;
    for (char& ch : mode) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (mode != "auto" && mode != "blas" && mode != "own")
      throw std::invalid_argument("GATEDRNN_GEMM should be auto, blas or own, got '" + std::string(value) + "'");
    return mode;
  }
  bool find(const GemmDecision& key, GemmDecision& out) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const GemmDecision& d : decisions_)
      if (same(d, key)) return out = d, true;
    return false;
  }
  void add(const GemmDecision& decision) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const GemmDecision& d : decisions_)
      if (same(d, decision)) return;
    decisions_.push_back(decision);
  }
  std::vector<GemmDecision> all() {
    std::lock_guard<std::mutex> lock(mutex_);
    return decisions_;
  }
  // StepWeights that ran BLAS / PanelGemm since the library was loaded (forced or chosen)
  std::atomic<int64_t> blas_weights{0}, own_weights{0};

 private:
  static bool same(const GemmDecision& a, const GemmDecision& b) {
    return a.dtype_bytes == b.dtype_bytes && a.N == b.N && a.K == b.K && a.rows == b.rows &&
           a.transposed == b.transposed && a.op == b.op;
  }
  std::mutex mutex_;
  std::vector<GemmDecision> decisions_;
};

// C (n, N) = X (n, K) op(W) + beta C for a weight W reused at every step: W (N, K) when w_transposed
// (C = X Wᵀ, the nn.Linear layout), else W (K, N). With MKL (float) W is packed once into MKL's internal
// layout and re-packed only when the row count n changes (n shrinks along a PackedSequence).
template <typename T>
class StepWeight {
 public:
  // scratch_slot: which of the thread's reusable packing buffers this weight takes (one per StepWeight alive
  // at once in a thread: 0 for W_hh, 1 for W_hr, 2 for W_ih), so a call at batch 1 neither allocates nor
  // page-faults.
  // calls: how many `compute` calls the weight serves (the steps); at batch 1-2 a weight of one call (a decoding
  // loop's one-step forward) is read in place by row dot products, not packed first (the packing cost more
  // than the step's GEMV); above, a weight of a few calls is read in place by BLAS (below).
  StepWeight(const T* w, bool w_transposed, int N, int K, int max_rows, int scratch_slot = 0,
             int64_t calls = INT64_MAX)
      : w_(w), trans_(w_transposed), slot_(std::clamp(scratch_slot, 0, 2)), N_(N), K_(K) {
    small_ = w != nullptr && max_rows <= kSmallRows && N >= 16 && K > 0;
    in_place_ = small_ && trans_ && calls <= 1;
    use_pack_ = w != nullptr && !small_ && sizeof(T) == 4 && sgemm_pack_get_size_ && sgemm_pack_ && sgemm_compute_ && N > 0 && K > 0;
    if (w != nullptr && !small_ && N > 0 && K > 0) mode_ = GemmChoice::requested();
    // A weight of a few calls is read in place by BLAS at each (no packed copy, no timing), unless GATEDRNN_GEMM
    // forces PanelGemm: the backward's dG W_hh at T = 1-4 (T = 8 below batch 9) spent longer packing W_hh than using
    // it (GRU training, B = 32, T = 1, H = 1024: 17.8 -> 16.4 ms; B = 16, T = 2, H = 512: 5.7 -> 4.3 ms; B = 8,
    // T = 4, H = 256: 1.90 -> 1.33 ms; at B = 16, T = 8, H = 512 packing stayed faster, 9.8 against 10.5 ms).
    if (!mode_.empty() && mode_ != "own" && (calls <= 4 || (calls <= 8 && max_rows <= 8)))
      mode_.clear(), use_pack_ = false;
    if (small_ && trans_ && !in_place_) {  // the small kernel reads W in column panels: packed once per call
      static thread_local std::vector<T> scratch[3];
      const size_t count = SmallPanels<T>::packed_size(N, K);
      // a weight above 16 MB gets its own buffer, freed with this object: the thread keeps no more than 3 x 16 MB
      std::vector<T>& buffer = count * sizeof(T) > (size_t(16) << 20) ? own_ : scratch[std::clamp(scratch_slot, 0, 2)];
      small_panels_ = aligned_room(buffer, count);
      SmallPanels<T>::pack(w, N, K, small_panels_);
    }
  }
  StepWeight(const StepWeight&) = delete;
  StepWeight& operator=(const StepWeight&) = delete;
  ~StepWeight() { std::free(packed_); }

  // Make `compute` ready for row blocks of a step with n active rows (re-packs when n changes), each call of
  // `compute` taking about rows_per_call of them (n when 0; fewer when a step's rows are split over threads): the
  // size at which BLAS and PanelGemm are timed against each other at the first use of this shape. Serial.
  // single_thread: the calls run inside a parallel region although one call takes every row (BLAS is then timed
  // on one thread, as for a split step).
  void prepare(int n, int rows_per_call = 0, bool single_thread = false) {
    if (mode_.empty() || n <= 0) return;  // no weight, or the small kernel (batch 1-2)
    if (!decided_)
      decide(rows_per_call > 0 ? rows_per_call : n, single_thread || (rows_per_call > 0 && rows_per_call < n));
    if (panels_ != nullptr) return;
    prepare_blas(n);
  }

  // Whether `compute` runs PanelGemm, on the calling thread alone (a caller splits rows over threads itself),
  // rather than BLAS (which threads a call made outside a parallel region). Known after `prepare`.
  bool runs_panels() const { return panels_ != nullptr; }

  // rows <= the n of the last `prepare`; safe to call from several threads on disjoint rows.
  void compute(int rows, const T* X, int ldx, T beta, T* C, int ldc) const {
    if (rows <= 0) return;
    if (in_place_) {
      for (int r = 0; r < rows; ++r) {
        T* c = C + (int64_t)r * ldc;
        if (beta == T(0)) {
          gemv_rows<T>(0, N_, K_, w_, X + (int64_t)r * ldx, c);
        } else {
          std::vector<T> product(N_);
          gemv_rows<T>(0, N_, K_, w_, X + (int64_t)r * ldx, product.data());
          for (int j = 0; j < N_; ++j) c[j] = product[j] + beta * c[j];
        }
      }
      return;
    }
    if (small_panels_) {
      const bool reverse = small_calls_.fetch_add(1, std::memory_order_relaxed) & 1;  // alternate the order by call
      return SmallPanels<T>::compute(rows, N_, K_, X, ldx, small_panels_, beta, C, ldc, reverse);
    }
    if (small_) return small_rows_kn<T>(rows, N_, K_, X, ldx, w_, beta, C, ldc);
    if (panels_ != nullptr) return PanelGemm<T>::compute(rows, N_, K_, X, ldx, panels_, beta, C, ldc);
    compute_blas(rows, X, ldx, beta, C, ldc);
  }

 private:
  // BLAS or PanelGemm for calls of `rows` rows: as GATEDRNN_GEMM says, else the faster of the two on this weight
  // (timed once per shape and process, on constant inputs; kept in GemmChoice).
  void decide(int rows, bool split) {
    decided_ = true;
    const bool own = prefers_panels(rows, split);
    if (own) pack_panels();
    else panels_ = nullptr;  // (the timing packed it)
    (own ? GemmChoice::instance().own_weights : GemmChoice::instance().blas_weights).fetch_add(1);
  }

  // Whether calls of `rows` rows run PanelGemm: GATEDRNN_GEMM if forced, else a known or a new measurement.
  // split: the calls run on a thread's share of the rows, each thread calling at once, so BLAS is timed on one
  // thread as it then runs (inside a parallel region MKL does not thread); otherwise BLAS threads as it would.
  bool prefers_panels(int rows, bool split) {
    if (mode_ != "auto") return mode_ == "own";
    GemmDecision decision{static_cast<int>(sizeof(T)), N_, K_, rows, trans_, 0, -1.0, -1.0, false};
    GemmDecision known;
    if (GemmChoice::instance().find(decision, known)) return known.own;
    // Timed for the step GEMMs (a step's rows, or a thread's share) and the chunks of x W_ihᵀ (a thread's share of
    // up to kTimedRows rows); above, BLAS's large-GEMM kernels run without asking (nor the timing's scratch).
    if (rows <= kTimedRows) {
      std::vector<T> X(static_cast<size_t>(rows) * K_, T(0.5)), C(static_cast<size_t>(rows) * N_);
      const int mkl_threads = split && MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : -1;
      prepare_blas(rows);
      pack_panels();
      auto blas = [&] { compute_blas(rows, X.data(), K_, T(0), C.data(), N_); };
      auto own = [&] { PanelGemm<T>::compute(rows, N_, K_, X.data(), K_, panels_, T(0), C.data(), N_); };
      auto elapsed_us = [](auto&& run) {
        const auto start = std::chrono::steady_clock::now();
        run();
        return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
      };
      blas(), own(), blas(), own();  // warm: caches, MKL's first-call setup
      // interleaved, best of each: a burst of load on a shared machine hits both alike (fewer rounds for the
      // large shapes, whose single calls take milliseconds)
      decision.blas_us = decision.own_us = 1e300;
      for (int i = 0, rounds = rows <= 64 ? 15 : 7; i < rounds; ++i) {
        decision.blas_us = std::min(decision.blas_us, elapsed_us(blas));
        decision.own_us = std::min(decision.own_us, elapsed_us(own));
      }
      decision.own = decision.own_us < decision.blas_us;
      if (mkl_threads >= 0) MKL_Set_Num_Threads_Local(mkl_threads);
    }
    GemmChoice::instance().add(decision);
    return decision.own;
  }

  void pack_panels() {
    if (panels_ != nullptr) return;
    static thread_local RawBuffer<T> scratch[3];  // per slot, as SmallPanels' buffers
    panels_ = packing_room(scratch[slot_], own_panels_, PanelGemm<T>::packed_size(N_, K_));
    PanelGemm<T>::pack(w_, trans_, N_, K_, panels_);
  }

  void prepare_blas(int n) {
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

  void compute_blas(int rows, const T* X, int ldx, T beta, T* C, int ldc) const {
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

  static constexpr int kSmallRows = 2, kTimedRows = 512;
  const T* w_;
  T* small_panels_ = nullptr;            // SmallPanels of W (batch 1-2, W (N, K)), else null
  // its parity orders the panels; atomic, as `compute` may be called from several threads (on disjoint rows)
  mutable std::atomic<unsigned> small_calls_{0};
  std::vector<T> own_;
  bool trans_, use_pack_ = false, small_ = false, in_place_ = false, decided_ = false;
  std::string mode_;  // GATEDRNN_GEMM for a weight on BLAS or PanelGemm; empty: the small kernel, or BLAS in place
  RawBuffer<T> own_panels_;
  int slot_;  // the scratch slot (constructor's scratch_slot)
  // PanelGemm's packed W (64-byte aligned), in the thread's scratch of slot_ or own_panels_: set once `decide` chose
  // PanelGemm (or while timing it)
  T* panels_ = nullptr;
  int N_, K_, packed_n_ = -1;
  float* packed_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace gatedrnn
