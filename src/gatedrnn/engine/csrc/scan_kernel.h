// The time loop shared by every cell (see cells.h for what a cell declares), forward and BPTT backward.
//
// Shapes: T steps, B batch, I input, H hidden, P = size of h (proj_size or H), GH = kGates * H.
// Forward: x_proj = x W_ihᵀ + biases for all steps as one GEMM, then per step one GEMM (h W_hhᵀ), one
// pointwise pass per row (Cell::forward), and for a projected LSTM one GEMM (m W_hrᵀ).
// Backward: per step one pointwise pass (Cell::backward) and dh_prev = dG W_hh; then dW_ih, dW_hh, dW_hr,
// the biases and dx as single GEMMs over all steps.
// Packing (batch_sizes): at step t rows [0, n_t) are active; the others keep their state, output 0 and
// get zero gradients. In reverse a row starts from state0 at its own last step.
// Noise (drawn in Python, so torch.manual_seed reproduces it; gatedrnn/engine/noise.py):
//   zoneout (T, B, P [+ H]): per step and unit, the weight d of the previous state (Krueger et al. 2017):
//     h_t = d_h ⊙ h_{t−1} + (1 − d_h) ⊙ h̃_t, c_t = d_c ⊙ c_{t−1} + (1 − d_c) ⊙ c̃_t (0/1 training, p at eval);
//     h̃ (cells that read h_next in backward) and c̃ are saved after the cell's extra blocks.
//   cand_mask (T, B, H): candidate dropout (Semeniuta et al. 2016), per step, passed to the cell (kCandidate).
//   rec_mask (B, P): one mask per sequence on the h that W_hh reads (variational dropout, Gal & Ghahramani
//     2016): rec = (h ⊙ m) W_hhᵀ, so dh_prev = (dG W_hh) ⊙ m and dW_hh = Σ dGᵀ (h_prev ⊙ m).
// Cell state: rows of c0, c_n, the saved c and dc are state_blocks<Cell>() * H wide (CH; H but for the sLSTM's
// [c | n | m]); zoneout is refused for cells with more than one state block (engine.cpp).
// A cell that reads its state in the GEMM (kRecState, FGR): W_hh is (GH, RW) with RW = P + (CH − H), the GEMM
// reads the row [h (⊙ rec_mask) | state blocks 1..] (the previous gates a′), and backward splits dG W_hh into
// dh_prev (first P) and dL/da′, which it adds to the previous step's dc blocks 1.. (the cell leaves 0 there);
// dW_hh = Σ dGᵀ [h_prev (⊙ m) | a_prev].
// Extra parameters (aux, kAux * H) reach the cell's forward and backward; their gradient is accumulated per
// thread and summed over threads at the end.
// Biases: db_ih = Σ dgate_x and db_hh = Σ dgate_h over steps and rows, except for a cell that adds them after
// its own transform of the GEMM results (kOwnsBiasGrad: LayerNorm), where the cell accumulates them into its
// daux accumulator, after the kAux blocks (db_ih then db_hh, G*H each), and they are read from there.
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "blas.h"
#include "cells.h"

namespace gatedrnn {

struct ScanForwardOut {
  at::Tensor y, h_n, c_n;       // (T, B, P), (B, P), (B, H) or undefined
  at::Tensor gates, c, extra;   // saved: (T, B, GH), (T, B, H), (T, B, kExtra*H), undefined when not kept
};

struct ScanBackwardOut {
  at::Tensor dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, daux;
};

// Freed sequence-long buffers kept for the next call (a training loop allocates the same sizes at every step):
// glibc maps allocations above 32 MB fresh each time and returns them at free, and the first-touch page faults
// (~2-3 µs per 4 KB page on a VM) made the 52 MB of a LayerNorm LSTM's saved rows cost more than its arithmetic
// (B=64, T=100, H=256). Bounded: at most kMaxBlocks blocks and kMaxBytes in all; a block serves a request of at
// least half its size. Never destroyed (a tensor may be freed after static destructors ran, at exit).
class BlockCache {
 public:
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache;
    return *cache;
  }

  // (data, capacity) of a block of at least `bytes`, reused or newly allocated (nullptr when out of memory)
  std::pair<void*, size_t> take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      size_t best = blocks_.size();
      for (size_t k = 0; k < blocks_.size(); ++k)
        if (blocks_[k].second >= bytes && blocks_[k].second / 2 <= bytes &&
            (best == blocks_.size() || blocks_[k].second < blocks_[best].second))
          best = k;
      if (best < blocks_.size()) {
        const auto block = blocks_[best];
        blocks_.erase(blocks_.begin() + best);
        held_ -= block.second;
        return block;
      }
    }
    const size_t capacity = (bytes + kAlign - 1) / kAlign * kAlign;
    return {std::aligned_alloc(kAlign, capacity), capacity};
  }

  void give_back(void* data, size_t capacity) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (blocks_.size() < kMaxBlocks && held_ + capacity <= kMaxBytes) {
        blocks_.emplace_back(data, capacity);
        held_ += capacity;
        return;
      }
    }
    std::free(data);
  }

 private:
  static constexpr size_t kAlign = 64, kMaxBlocks = 8, kMaxBytes = size_t(256) << 20;
  std::mutex mutex_;
  std::vector<std::pair<void*, size_t>> blocks_;
  size_t held_ = 0;
};

// Tensors the kernels make, without the dispatcher (at::detail::empty_cpu): a forward at batch 1 made ~20 (buffers,
// states, the folded biases, stacked states), and each at::empty / zeros / clone through the dispatcher cost
// ~1-2 µs on the AMD EPYC (Zen 3), ~15% of an inference call at B = 1, T = 100 there. The engine's tensors are
// CPU tensors.
inline at::Tensor cpu_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::detail::empty_cpu(sizes, c10::typeMetaToScalarType(opts.dtype()), false, std::nullopt);
}
inline at::Tensor cpu_zeros(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = cpu_empty(sizes, opts);
  if (t.numel() > 0) std::memset(t.data_ptr(), 0, t.nbytes());
  return t;
}
inline at::Tensor cpu_clone(const at::Tensor& t) {  // a contiguous copy
  if (!t.is_contiguous()) return t.clone(at::MemoryFormat::Contiguous);
  at::Tensor copy = cpu_empty(t.sizes(), t.options());
  if (t.numel() > 0) std::memcpy(copy.data_ptr(), t.data_ptr(), t.nbytes());
  return copy;
}

// A sequence-long buffer (the saved gates, c and extra blocks; backward's gate gradients): from BlockCache above
// 4 MB, else torch's allocator; zeroed when asked (packed input).
inline at::Tensor sequence_buffer(at::IntArrayRef shape, const at::TensorOptions& opts, bool zero) {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  const size_t bytes = static_cast<size_t>(count) * opts.dtype().itemsize();
  if (bytes < (size_t(4) << 20)) return zero ? cpu_zeros(shape, opts) : cpu_empty(shape, opts);
  const auto [data, capacity] = BlockCache::instance().take(bytes);
  if (data == nullptr) return zero ? cpu_zeros(shape, opts) : cpu_empty(shape, opts);
  if (zero) std::memset(data, 0, bytes);
  const size_t held = capacity;
  return at::from_blob(data, shape, [held](void* p) { BlockCache::instance().give_back(p, held); }, opts);
}

// C (M, N) = op(A) B + beta C for the whole-sequence GEMMs after the backward's loop: the weight gradients
// (a_transposed: A (K, M) holds the gate gradients of every step and row, so C = Σ over them) and dx (A (M, K)).
// B (K, N); all contiguous. Runs BLAS or PanelGemm, whichever measured faster for this shape in this process
// (GATEDRNN_GEMM forces one; GemmChoice keeps the decision, as op 1). PanelGemm, threads splitting C's columns:
// for Aᵀ B it computes Cᵀ = Bᵀ A with A's rows read in place as panels (A is the wide side, G H columns, so
// few of a panel's columns are padding), then transposes; for A B it packs B and splits C's rows.
// runs (a_transposed only): the (first row, rows) ranges of the K rows that can be nonzero (a packed batch's active
// rows of each step); both GEMMs skip the rest, which are zeros in A (BLAS by a call per run). None: all K rows.
using RowRuns = std::vector<std::pair<int64_t, int64_t>>;

template <typename T>
void sequence_gemm(bool a_transposed, int M, int N, int K, const T* A, const T* B, T beta, T* C,
                   const RowRuns* runs = nullptr) {
  using Gemm = PanelGemm<T>;
  constexpr int kPanel = Gemm::kPanel;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // an empty sum: C = beta C
    if (beta != T(1))
      for (int64_t k = 0; k < (int64_t)M * N; ++k) C[k] = beta == T(0) ? T(0) : beta * C[k];
    return;
  }
  const int lda = a_transposed ? M : K;
  // scratch kept by the thread for the next call: fresh pages cost ~2-3 µs each to fault in on a VM, as much as
  // the GEMM's arithmetic on ~100 of them
  static thread_local std::vector<T> buffer, product;
  // the runs within the first k rows (all k rows without runs)
  auto clip = [&](int k) {
    RowRuns clipped;
    if (runs == nullptr) return RowRuns{{0, k}};
    for (const auto& [first, rows] : *runs)
      if (first < k && rows > 0) clipped.emplace_back(first, std::min<int64_t>(rows, k - first));
    return clipped;
  };
  auto own = [&](int k, T b, T* c) {  // over the first k steps of the sum
    const int threads = std::max(1, at::get_num_threads());
    if (!a_transposed) {
      T* packed = aligned_room(buffer, Gemm::packed_size(N, k));
      at::parallel_for(0, (N + kPanel - 1) / kPanel, 1, [&](int64_t p0, int64_t p1) {
        Gemm::pack(B, false, N, k, packed, static_cast<int>(p0), static_cast<int>(p1));
      });
      at::parallel_for(0, (M + Gemm::kMR - 1) / Gemm::kMR, 1, [&](int64_t t0, int64_t t1) {
        const int m0 = static_cast<int>(t0) * Gemm::kMR, m1 = std::min<int>(M, static_cast<int>(t1) * Gemm::kMR);
        Gemm::compute(m1 - m0, N, k, A + (size_t)m0 * lda, lda, packed, b, c + (size_t)m0 * N, N);
      });
      return;
    }
    const RowRuns clipped = clip(k);
    const int full = M / kPanel * kPanel, panels = (M + kPanel - 1) / kPanel;
    T* tail = nullptr;
    if (full < M) {  // A's last columns, zero-padded to a panel
      tail = aligned_room(buffer, static_cast<size_t>(k) * kPanel);
      for (const auto& [first, rows] : clipped)
        for (int64_t r = first; r < first + rows; ++r) {
          T* dst = tail + r * kPanel;
          std::copy_n(A + r * lda + full, M - full, dst);
          std::fill(dst + (M - full), dst + kPanel, T(0));
        }
    }
    T* transposed = aligned_room(product, static_cast<size_t>(N) * M);  // Cᵀ (N, M)
    if (clipped.empty()) std::fill(transposed, transposed + static_cast<size_t>(N) * M, T(0));
    // Cᵀ's panels [p0, p1) and rows [r0, r1), summed run by run
    auto over_runs = [&](int p0, int p1, int r0, int r1) {
      for (size_t i = 0; i < clipped.size(); ++i) {
        const auto [first, rows] = clipped[i];
        Gemm::compute_tn(p0, p1, N, M, static_cast<int>(rows), B + first * N, N, A + first * lda, lda,
                         tail ? tail + first * kPanel : nullptr, i == 0 ? T(0) : T(1), transposed, M, r0, r1);
      }
    };
    // Threads split Cᵀ's panels, or its rows where those divide more evenly (11 panels over 2 threads wait 9% for
    // the sixth; 8 row tiles do not); rows each read all of A
    const int tiles = (N + Gemm::kMR - 1) / Gemm::kMR;
    auto uneven = [&](int items) { return static_cast<double>((items + threads - 1) / threads) * threads / items; };
    if (uneven(panels) <= uneven(tiles)) {
      at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
        over_runs(static_cast<int>(p0), static_cast<int>(p1), 0, N);
      });
    } else {
      at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
        over_runs(0, panels, static_cast<int>(t0) * Gemm::kMR, static_cast<int>(t1) * Gemm::kMR);
      });
    }
    constexpr int64_t kBlock = 32;  // in blocks, so that each line read and written serves a block of values
    at::parallel_for(0, (M + kBlock - 1) / kBlock, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t m0 = i0 * kBlock; m0 < std::min<int64_t>(M, i1 * kBlock); m0 += kBlock)
        for (int64_t n0 = 0; n0 < N; n0 += kBlock)
          for (int64_t m = m0; m < std::min<int64_t>(M, m0 + kBlock); ++m)
            for (int64_t n = n0; n < std::min<int64_t>(N, n0 + kBlock); ++n)
              c[m * N + n] = b == T(0) ? transposed[n * M + m] : transposed[n * M + m] + b * c[m * N + n];
    });
  };
  auto blas = [&](int k, T b, T* c) {
    if (!a_transposed || runs == nullptr) return gemm<T>(a_transposed, false, M, N, k, T(1), A, lda, B, N, b, c, N);
    const RowRuns clipped = clip(k);  // a call per run, the later ones adding to C
    if (clipped.empty()) return gemm<T>(true, false, M, N, 0, T(1), A, lda, B, N, b, c, N);
    for (size_t i = 0; i < clipped.size(); ++i) {
      const auto [first, rows] = clipped[i];
      gemm<T>(true, false, M, N, static_cast<int>(rows), T(1), A + first * lda, lda, B + first * N, N,
              i == 0 ? b : T(1), c, N);
    }
  };
  const std::string mode = GemmChoice::requested();
  bool use_own = mode == "own";
  if (mode == "auto") {
    GemmDecision decision{static_cast<int>(sizeof(T)), N, K, M, a_transposed, 1, -1.0, -1.0, false};
    GemmDecision known;
    if (GemmChoice::instance().find(decision, known)) {
      use_own = known.own;
    } else {
      // timed on the first kTimedK steps of the sum (each implementation's time grows with K alike), into scratch
      constexpr int kTimedK = 512;
      const int k = std::min(K, kTimedK);
      std::vector<T> scratch(static_cast<size_t>(M) * N);
      auto elapsed_us = [&](auto&& run) {
        const auto start = std::chrono::steady_clock::now();
        run(k, T(0), scratch.data());
        return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
      };
      elapsed_us(blas), elapsed_us(own);  // warm: caches, MKL's first-call setup
      decision.blas_us = decision.own_us = 1e300;
      for (int i = 0, rounds = (int64_t)M * N * k > (int64_t(1) << 24) ? 3 : 7; i < rounds; ++i) {
        decision.blas_us = std::min(decision.blas_us, elapsed_us(blas));
        decision.own_us = std::min(decision.own_us, elapsed_us(own));
      }
      decision.own = use_own = decision.own_us < decision.blas_us;
      GemmChoice::instance().add(decision);
    }
  }
  if (use_own) own(K, beta, C);
  else blas(K, beta, C);
  for (std::vector<T>* kept : {&buffer, &product})  // a thread keeps at most 32 MB of them between calls
    if (kept->size() * sizeof(T) > (size_t(32) << 20)) std::vector<T>().swap(*kept);
}

// op(A) B as a new (M, N) tensor (sequence_gemm); a (K, M) when a_transposed, else (M, K); b (K, N)
template <typename T>
at::Tensor sequence_product(const at::Tensor& a, bool a_transposed, const at::Tensor& b,
                            const RowRuns* runs = nullptr) {
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const int64_t M = a_transposed ? ac.size(1) : ac.size(0), K = bc.size(0), N = bc.size(1);
  at::Tensor out = cpu_empty({M, N}, ac.options());
  sequence_gemm<T>(a_transposed, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), ac.data_ptr<T>(),
                   bc.data_ptr<T>(), T(0), out.data_ptr<T>(), runs);
  return out;
}

// The column sums (N,) of a contiguous (M, N) tensor: the bias gradients. A short call's (at most 256 rows, where
// summing in order loses no more than at::sum's cascade) in one loop here: at::sum's dispatch and reduction setup
// cost ~10 µs a call, as much as an RNN's whole pointwise backward at T = 1.
template <typename T>
at::Tensor column_sums(const at::Tensor& a) {
  TORCH_INTERNAL_ASSERT(a.dim() == 2 && a.is_contiguous());
  const int64_t M = a.size(0), N = a.size(1);
  if (M > 256 || M * N > (int64_t(1) << 16)) return a.sum(0);
  at::Tensor out = cpu_zeros({N}, a.options());
  T* __restrict__ sum = out.data_ptr<T>();
  const T* p = a.data_ptr<T>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) sum[n] += p[m * N + n];
  return out;
}

// Whether every value of a contiguous tensor is zero (all_zero) or finite (all_finite).
template <typename T>
bool all_zero(const at::Tensor& t) {
  const T* p = t.data_ptr<T>();
  return std::all_of(p, p + t.numel(), [](T v) { return v == T(0); });
}
template <typename T>
bool all_finite(const at::Tensor& t) {  // v · 0 is NaN exactly where v is NaN or infinite: one vectorised sum of them
  typedef T Vec __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));
  constexpr int64_t kLanes = kVecBytes / sizeof(T);
  const T* p = t.data_ptr<T>();
  const int64_t n = t.numel();
  Vec sum{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) sum += *reinterpret_cast<const Vec*>(p + i) * T(0);
  T total = T(0);
  for (; i < n; ++i) total += p[i] * T(0);
  for (int64_t lane = 0; lane < kLanes; ++lane) total += sum[lane];
  return total == T(0);
}

// A packed batch's active rows as runs of the (steps * B) rows of steps [first, first + steps) (consecutive steps
// with every row active make one run); `active(t)` is step t's active row count
template <typename Active>
RowRuns active_runs(int64_t first, int64_t steps, int64_t B, Active&& active) {
  RowRuns runs;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t start = s * B, rows = active(first + s);
    if (rows <= 0) continue;
    if (!runs.empty() && runs.back().first + runs.back().second == start) runs.back().second += rows;
    else runs.emplace_back(start, rows);
  }
  return runs;
}

// Width of a row of the saved `extra` buffer: the cell's blocks, then c̃ (H) and h̃ (P) under zoneout.
template <typename Cell>
inline int64_t extra_width(int64_t H, int64_t P, bool zoneout) {
  return Cell::kExtra * H + (zoneout ? (Cell::kHasC ? H : 0) + (Cell::kReadsHNext ? P : 0) : 0);
}

// Whether a step of n rows is split over threads: it has enough work (row_work: multiply-adds per row).
inline bool splits_rows(int64_t n, int64_t row_work) {
  return at::get_num_threads() > 1 && n >= 8 && n * row_work >= (int64_t(1) << 19);
}

// Rows one GEMM call of a step takes: n, or a thread's share when for_row_blocks splits the step.
inline int rows_per_call(int64_t n, int64_t row_work) {
  const int64_t threads = at::get_num_threads();
  return static_cast<int>(splits_rows(n, row_work) ? (n + threads - 1) / threads : n);
}

// Whether a sequence that is not packed runs with its rows split over threads in one parallel region for all its
// steps (forward and backward): every step would be split by for_row_blocks, and no region encloses this one.
inline bool row_region(bool packed, int64_t B, int64_t row_work) {
  return !packed && splits_rows(B, row_work) && !at::in_parallel_region();
}

// Runs body(b0, b1) over the active rows [0, n) of one step, split over threads when splits_rows; inside a
// split, BLAS calls run single-threaded on their block.
template <typename F>
inline void for_row_blocks(int64_t n, int64_t row_work, const F& body) {
  const int threads = at::get_num_threads();
  if (splits_rows(n, row_work)) {
    at::parallel_for(0, n, (n + threads - 1) / threads, body);
  } else {
    body(0, n);
  }
}

// A spinning thread's hint to the core (x86 pause, ARM yield): the sibling hyper-thread runs, the loop draws less.
inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Waits until every thread of a parallel region has arrived (sense-reversing; each thread keeps its own sense).
// Spins, pausing, then yields: a step at batch 1 takes about a microsecond, less than a futex wake-up.
class SpinBarrier {
 public:
  void set_threads(int threads) { threads_ = threads; }
  void wait(int& sense) {
    sense ^= 1;
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      released_.store(sense, std::memory_order_release);
      return;
    }
    for (int spins = 0; released_.load(std::memory_order_acquire) != sense; ++spins) {
      if (spins < (1 << 12)) spin_pause();
      else std::this_thread::yield();  // a thread descheduled on an oversubscribed machine: give way
    }
  }

 private:
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> released_{0};
  int threads_ = 1;
};

// Whether a forward splits its hidden units over threads (scan_forward_units) rather than running by rows.
// At batch < 8 the row split does not apply and one core would read all of W_hh at every step: an LSTM's W_hh
// (4H² floats) leaves L1 from H = 64 on (64 KB), and the step is then bound by reading it from L2. Split by units,
// each core reads only its own rows of W_hh (its gates' rows for its units), the pointwise pass needs no other
// core's values, and the cores meet once per step (the next step's GEMM reads all of h). Cells whose pass reads
// whole rows (LayerNorm's statistics), extra parameters, a projection, masks on h or the state in the GEMM, packed
// input and zoneout keep the row loop.
// Batch 8 too once W_hh holds >= 2^17 weights (past half a Zen 4 core's L2, all of a Zen 3's): split by rows, two
// cores each read all of W_hh at every step for 4 rows. Same process, interleaved, the Zen 4 VM, rows -> units, ms:
// LSTM B = 8, I = 128, T = 100, H = 384 inference 8.68 -> 7.35; T = 20, I = 256, H = 512 training 13.9 -> 12.3;
// H = 192 training 10.4 -> 9.8; and from a short call's BLAS step on W_hh in place (steps_in_place), T = 10, H = 512
// inference 3.33 -> 2.07. Smaller W_hh stays on rows (H = 128: training 6.8 against 7.4, inference 2.1 against
// 2.6), as do 9 rows and more (B = 9 tied, 10-24 rows 0-20% slower), and W_hh of >= 2^21 weights over 17-31 steps,
// where the unit split reads W_hh in place and the rows read it packed (LSTM B = 8, T = 30, H = 1024: 23.4 against
// 29.0-29.5 ms; at T = 10 10.0 against 17.1-18.8 in place, at T = 64 31-34 against 41-49 on rows).
template <typename Cell>
inline bool splits_units(int64_t T_, int64_t B, int64_t H, int64_t P, bool plain) {
  if (!plain || Cell::kAux != 0 || state_blocks<Cell>() != 1 || reads_state<Cell>() || P != H) return false;
  if (B < 1 || B > 8 || at::in_parallel_region()) return false;
  const int64_t weights = int64_t(Cell::kGates) * H * P;
  if (B == 8 && (weights < (int64_t(1) << 17) || (weights >= (int64_t(1) << 21) && T_ > 16 && T_ < 32)))
    return false;  // see the comment above
  const int threads = at::get_num_threads();  // the region's team: each thread gets >= 64 units (at fewer, the
  return threads >= 2 && threads * 64 <= H;   // per-step meeting cost more than it saved)
}

// How the last forward on this process ran its steps (for tests and reports): kSerial (one thread, or BLAS's threads
// inside each GEMM), kRowsPerStep (rows split over threads at every step: packed input), kRowRegion (rows split
// in one region for the whole sequence; kRowRegionOwnRows: so, each thread projecting its own rows, no backward),
// kUnitRegion (hidden units split, scan_forward_units), kProjectAhead (one
// thread runs the steps, the others compute x W_ihᵀ ahead of it: `projects_ahead`), kInPlaceSteps (BLAS reads W_hh
// in place at every step: `steps_in_place`).
enum ForwardSplit : int {
  kSerial = 0, kRowsPerStep = 1, kRowRegion = 2, kUnitRegion = 3, kProjectAhead = 4, kInPlaceSteps = 5,
  kRowRegionOwnRows = 6
};

// Whether a forward runs each step's h W_hhᵀ as one BLAS call on W_hh in place, for all rows (BLAS threads it,
// splitting W's columns, so each core reads its share), then the pass split by rows: a single step, or a short
// sequence (T * B <= 128), at batch >= 3 where the unit split does not apply (the caller asks splits_units first: it
// serves those sizes itself, reading each thread's share of W_hh).
// Packing W_hh (PanelGemm's panels or MKL's packed format) reads and writes all of it once per call, which so few
// rows do not repay, and split by rows each core reads all of W_hh at every step (measured: csrc/README.md, "Short
// sequences"). Batch 1-2 reads W in place already (StepWeight's row dot products for a single step).
// GATEDRNN_GEMM=own keeps PanelGemm, which needs the panels. A projection, masks on h, packed input and the cells
// that read their state in the GEMM keep the general loop.
template <typename Cell>
inline bool steps_in_place(bool packed, bool proj, bool masked, int64_t T_, int64_t B) {
  if (packed || proj || masked || reads_state<Cell>() || T_ < 1 || B < 3 || (T_ > 1 && T_ * B > 128)) return false;
  return GemmChoice::requested() != "own";
}
inline std::atomic<int> last_forward_split{kSerial};

// Whether a forward runs its steps on one thread while the others compute x W_ihᵀ ahead of it, block by block: a
// sequence of few rows (batch < 8) that no other split serves, with another thread to spare. There the input
// projection, about half of a step's multiply-adds at I = H, otherwise runs before the steps on both threads (a
// GEMM of T * B rows), then the recurrence on one; overlapped, the recurrence starts at once and the projection
// leaves its path (LSTM, B = 1, T = 100, I = H = 64 on a Zen 3: 177 -> 148 µs). Needs every step's rows of
// x W_ihᵀ at once in the gates buffer (a backward keeps them anyway; without one, a single chunk).
inline int64_t ahead_block(int64_t B) { return std::max<int64_t>(1, 8 / std::max<int64_t>(B, 1)); }  // ~8 rows

inline bool projects_ahead(bool packed, int64_t T_, int64_t B, int64_t chunk, bool keep, bool split) {
  return !packed && !split && B >= 1 && B < 8 && T_ >= 2 * ahead_block(B) && (keep || chunk >= T_) &&
         at::get_num_threads() > 1 && !at::in_parallel_region();
}

// Whether scan_forward_units packs a thread's rows of W_hh (input: of W_ih) into PanelGemm's panels, once per call,
// rather than reading them in place (gemv_rows; W_ih by gemv_rows up to 16 rows a chunk, else BLAS per chunk and
// gate block): over at least 32 steps, at batch >= 3, where the panels' register tiles (8 rows x 3 registers; 6 x 2
// on AVX2) do more per weight read than a row's dot products, and for W_hh at batch 1-2 too when the thread's share
// is >= 3 MB, where the packed copy streams from L3 faster than 16 rows read side by side. Shorter sequences do not
// repay the copy. Same process, interleaved, the Zen 4 VM, no-grad forward, in place -> packed (torch.nn): LSTM
// B = 7, T = 100, H = 512 19.2 -> 16.1 ms (18.7); B = 3, T = 100, H = 512 10.4 -> 9.2 (9.3); B = 2, T = 50,
// H = 768 9.2 -> 7.9 (10.7); GRU B = 1, T = 50, H = 1024 8.9 -> 7.9 (20.4). Kept in place: B = 1, T = 200, H = 512
// (LSTM 8.5 against 8.9 packed).
inline bool units_pack_panels(int64_t T_, int64_t B, size_t share_bytes, bool input) {
  if (T_ < 32) return false;
  return B >= 3 || (!input && share_bytes >= (size_t(3) << 20));
}

// scan_forward when splits_units: one parallel region for the whole sequence. Thread k owns hidden
// units [j0, j1) (whole cache lines): it computes x W_ihᵀ and h W_hhᵀ for its units' rows of every gate
// block (W_hh's rows read in place by gemv_rows, each block for every row of the batch, every other step in the
// opposite order; over 32 steps or more packed into PanelGemm's panels: units_pack_panels, csrc/README.md "Short
// sequences"), runs the cell's pass on them
// (pointers offset to j0; the cells index units relative to them) and writes its part of y_t; step t + 1 reads h
// from y_t, so one barrier per step separates writing y_t from reading it, and no buffer is reused while read.
template <typename Cell, typename T>
void scan_forward_units(int64_t T_, int64_t B, int64_t I, int64_t H, const T* x_p, const T* w_ih_p,
                        const T* w_hh_p, const T* bias_p, const T* rec_bias_p, const T* h0_p, T* c_p, T* y_p,
                        T* gates_p, T* c_hist_p, T* extra_p, int64_t EW, const T* cand_p, bool reverse, bool keep,
                        int64_t chunk) {
  constexpr int G = Cell::kGates;
  const int64_t GH = G * H, P = H, EH = Cell::kExtra * H;
  constexpr int64_t kAlign = 64 / sizeof(T);  // whole cache lines per thread (no false sharing of y_t and c)
  SpinBarrier barrier;
  // No num_threads clause: a team size other than the pool's makes GOMP rebuild its pool (torch avoids it too).
#pragma omp parallel
  {
    const int team = omp_get_num_threads(), k = omp_get_thread_num();
    at::internal::ThreadIdGuard thread_id(k);
#pragma omp single
    barrier.set_threads(team);  // (the end of `single` is a barrier: every thread sees the count)
    const int64_t per = (H / kAlign + team - 1) / team * kAlign;
    const int64_t j0 = std::min<int64_t>(H, k * per), j1 = k == team - 1 ? H : std::min<int64_t>(H, j0 + per);
    const int units = static_cast<int>(j1 - j0);
    int sense = 0;
    static thread_local std::vector<T> rec;  // kept per thread: no allocation or page faults at every call
    rec.resize(std::max<size_t>(rec.size(), static_cast<size_t>(B) * GH));  // h W_hhᵀ, this thread's columns
    // A long sequence packs the thread's rows of W_hh (and at batch >= 3 of W_ih) into PanelGemm's panels, per gate
    // block, once per call (units_pack_panels); otherwise they are read in place (packing_room: buffers the thread
    // keeps up to 32 MB; larger ones are freed at the call's end).
    static thread_local RawBuffer<T> kept_hh, kept_ih;
    RawBuffer<T> own_hh, own_ih;
    const size_t hh_block = PanelGemm<T>::packed_size(units, static_cast<int>(P));
    const size_t ih_block = PanelGemm<T>::packed_size(units, static_cast<int>(I));
    T* hh_panels = units > 0 && units_pack_panels(T_, B, G * hh_block * sizeof(T), false)
                       ? packing_room(kept_hh, own_hh, G * hh_block) : nullptr;
    T* ih_panels = units > 0 && units_pack_panels(T_, B, G * ih_block * sizeof(T), true)
                       ? packing_room(kept_ih, own_ih, G * ih_block) : nullptr;
    for (int g = 0; g < G && hh_panels; ++g)
      PanelGemm<T>::pack(w_hh_p + (g * H + j0) * P, true, units, static_cast<int>(P), hh_panels + g * hh_block);
    for (int g = 0; g < G && ih_panels; ++g)
      PanelGemm<T>::pack(w_ih_p + (g * H + j0) * I, true, units, static_cast<int>(I), ih_panels + g * ih_block);
    int64_t chunk_start = -1;
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = reverse ? T_ - 1 - s : s;
      if (chunk_start < 0 || t < chunk_start || t >= chunk_start + chunk) {  // this thread's columns of x W_ihᵀ
        chunk_start = t / chunk * chunk;
        const int64_t steps = std::min(chunk, T_ - chunk_start);
        T* dest = gates_p + (keep ? chunk_start * B * GH : 0);
        for (int g = 0; g < G && ih_panels; ++g)
          PanelGemm<T>::compute(static_cast<int>(steps * B), units, static_cast<int>(I), x_p + chunk_start * B * I,
                                static_cast<int>(I), ih_panels + g * ih_block, T(0), dest + g * H + j0,
                                static_cast<int>(GH));
        // up to 16 rows (a step or a few), the thread's rows of W_ih are read once for all of them, in place; more
        // rows go to BLAS (LSTM B = 1, T = 1, H = 1024: 612 -> 405 µs; 64 rows at H = 768 were 10-15% slower)
        const bool ih_rows = !ih_panels && steps * B <= 16;
        for (int g = 0; g < G && units > 0 && ih_rows; ++g)
          gemv_rows<T>(g * H + j0, g * H + j1, static_cast<int>(I), w_ih_p, x_p + chunk_start * B * I, dest, false,
                       steps * B, I, GH);
        for (int g = 0; g < G && units > 0 && !ih_panels && !ih_rows; ++g)
          gemm<T>(false, true, static_cast<int>(steps * B), units, static_cast<int>(I), T(1),
                  x_p + chunk_start * B * I, static_cast<int>(I), w_ih_p + (g * H + j0) * I, static_cast<int>(I),
                  T(0), dest + g * H + j0, static_cast<int>(GH));
      }
      if (units > 0) {
        const T* h_in = s == 0 ? h0_p : y_p + (reverse ? t + 1 : t - 1) * B * P;
        T* gates_t = gates_p + (keep ? t : t - chunk_start) * B * GH;
        T* y_t = y_p + t * B * P;
        for (int i = 0; i < G; ++i) {  // every other step in reverse order (gate blocks; gemv_rows: rows too)
          const int g = s & 1 ? G - 1 - i : i;
          if (hh_panels) {
            PanelGemm<T>::compute(static_cast<int>(B), units, static_cast<int>(P), h_in, static_cast<int>(P),
                                  hh_panels + g * hh_block, T(0), rec.data() + g * H + j0, static_cast<int>(GH));
            continue;
          }
          gemv_rows<T>(g * H + j0, g * H + j1, static_cast<int>(P), w_hh_p, h_in, rec.data(), s & 1, B, P, GH);
        }
        for (int64_t b = 0; b < B; ++b) {
          RowForward<T> row{gates_t + b * GH + j0, rec.data() + b * GH + j0, bias_p + j0, rec_bias_p + j0,
                            h_in + b * P + j0, c_p ? c_p + b * H + j0 : nullptr, y_t + b * P + j0,
                            extra_p && EH ? extra_p + (t * B + b) * EW + j0 : nullptr, keep, nullptr,
                            cand_p ? cand_p + (t * B + b) * H + j0 : nullptr};
          Cell::forward(H, units, row);
          if (c_hist_p) std::memcpy(c_hist_p + (t * B + b) * H + j0, c_p + b * H + j0, sizeof(T) * units);
        }
      }
      if (team > 1) barrier.wait(sense);
    }
  }
}

template <typename Cell, typename T>
ScanForwardOut scan_forward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
                            const at::Tensor& w_hr, const std::vector<int64_t>& batch_sizes, bool reverse,
                            bool keep, const at::Tensor& aux, const at::Tensor& zoneout, const at::Tensor& rec_mask,
                            const at::Tensor& cand_mask) {
  const int64_t T_ = x.size(0), B = x.size(1), I = x.size(2);
  constexpr bool kReadsState = reads_state<Cell>();
  // RW: the width of the row the recurrent GEMM reads, [h | state blocks 1..] for kRecState, else h (P)
  const int64_t GH = w_hh.size(0), H = GH / Cell::kGates, RW = w_hh.size(1), P = RW - rec_state_blocks<Cell>() * H;
  const bool proj = w_hr.defined(), packed = !batch_sizes.empty();
  const auto opts = x.options();

  // Input projection of every step as one GEMM; the biases are added in the pointwise pass (one pass
  // over the (T, B, GH) buffer fewer than addmm), b_hh's recurrent-side blocks (GRU's b_hn) kept apart.
  // x W_ihᵀ is computed in chunks of `chunk` steps just before they run, so each chunk is still in cache
  // when the pointwise pass reads it; without a backward only one chunk is allocated. A short sequence
  // (steps_in_place) is one chunk: its few rows would not repay reading W_ih once more per chunk.
  // The unit split (below) comes first: it takes short calls at batch 3-8 from steps_in_place and batch 8 over
  // large weights from the row region, and its chunks of x W_ihᵀ are sized for all B rows, not a thread's share.
  const bool units = T_ > 0 && splits_units<Cell>(T_, B, H, P, !packed && !proj && !zoneout.defined() &&
                                                                  !rec_mask.defined());
  const bool in_place = !units && steps_in_place<Cell>(packed, proj, rec_mask.defined(), T_, B);
  const int64_t row_work = GH * (P + 8);  // a row's multiply-adds in a step, for the thread splits
  // Rows split over threads in one parallel region for the whole sequence (below), B >= 8 and up to ~16M
  // multiply-adds a step. Without a backward each thread then projects its own rows (`own_rows`), in chunks of
  // ~128 KB of its share of x and x W_ihᵀ (1 MB chunks shared by the threads filled a Zen 3 core's 512 KB L2).
  const bool whole_region =
      !in_place && !units && row_region(packed, B, row_work) && B * row_work < (int64_t(1) << 24);
  const bool own_rows = whole_region && !keep;
  const int64_t share = (B + at::get_num_threads() - 1) / at::get_num_threads();
  const int64_t chunk =
      in_place ? T_
      : own_rows ? std::clamp<int64_t>((int64_t(128) << 10) / int64_t(sizeof(T) * share * (GH + I)), 1, T_)
                 : std::clamp<int64_t>((int64_t(1) << 18) / std::max<int64_t>(1, B * GH), 1, T_);
  const at::Tensor gates = keep ? sequence_buffer({T_ * B, GH}, opts, false)
                                : cpu_empty({chunk * B, GH}, opts);  // (T*B or chunk*B, GH)
  const int64_t folded = GH - Cell::kRecBias * H;
  // b_ih + b_hh folded (zeros without biases; b_ih, b_hh contiguous, the layer's dtype: scan_op)
  at::Tensor bias = cpu_zeros({GH}, opts), rec_bias = cpu_zeros({std::max<int64_t>(1, Cell::kRecBias * H)}, opts);
  if (b_ih.defined()) {
    const T* b_i = b_ih.data_ptr<T>();
    const T* b_h = b_hh.data_ptr<T>();
    T* folded_p = bias.data_ptr<T>();
    for (int64_t k = 0; k < GH; ++k) folded_p[k] = k < folded ? b_i[k] + b_h[k] : b_i[k];
    std::copy_n(b_h + folded, Cell::kRecBias * H, rec_bias.data_ptr<T>());
  }
  at::Tensor y = packed ? cpu_zeros({T_, B, P}, opts) : cpu_empty({T_, B, P}, opts);
  at::Tensor h = cpu_clone(h0);
  at::Tensor c = Cell::kHasC ? cpu_clone(c0) : at::Tensor();
  const int64_t CH = state_blocks<Cell>() * H;  // width of a row of the cell-state buffer (sLSTM: [c | n | m])
  at::Tensor c_hist, extra;
  if (keep && Cell::kHasC) c_hist = sequence_buffer({T_, B, CH}, opts, packed);
  const bool zo = zoneout.defined();
  const int64_t EW = extra_width<Cell>(H, P, zo), ZW = P + (Cell::kHasC ? H : 0);
  if (keep && EW) extra = sequence_buffer({T_, B, EW}, opts, false);
  at::Tensor rec = cpu_empty({B, GH}, opts);
  // scratch: h ⊙ rec_mask (B, P), and c_{t-1} under zoneout (B, H)
  at::Tensor h_masked = rec_mask.defined() ? cpu_empty({B, P}, opts) : at::Tensor();
  at::Tensor c_prev = zo && Cell::kHasC ? cpu_empty({B, H}, opts) : at::Tensor();
  const T* aux_p = aux.defined() ? aux.data_ptr<T>() : nullptr;
  const T* zo_p = zo ? zoneout.data_ptr<T>() : nullptr;
  const T* rm_p = rec_mask.defined() ? rec_mask.data_ptr<T>() : nullptr;
  const T* cand_p = cand_mask.defined() ? cand_mask.data_ptr<T>() : nullptr;
  T* hm_p = rec_mask.defined() ? h_masked.data_ptr<T>() : nullptr;
  at::Tensor h_read = kReadsState ? cpu_empty({B, RW}, opts) : at::Tensor();  // [h (⊙ m) | a′] rows, kRecState
  T* hr_p = kReadsState ? h_read.data_ptr<T>() : nullptr;
  T* cprev_p = c_prev.defined() ? c_prev.data_ptr<T>() : nullptr;
  at::Tensor m = proj ? cpu_empty({B, H}, opts) : at::Tensor();

  T* gates_p = gates.data_ptr<T>();
  T* y_p = y.data_ptr<T>();
  T* h_p = h.data_ptr<T>();
  T* c_p = Cell::kHasC ? c.data_ptr<T>() : nullptr;
  T* c_hist_p = c_hist.defined() ? c_hist.data_ptr<T>() : nullptr;
  T* extra_p = extra.defined() ? extra.data_ptr<T>() : nullptr;
  T* rec_p = rec.data_ptr<T>();
  T* m_p = proj ? m.data_ptr<T>() : nullptr;
  auto outputs = [&] {
    ScanForwardOut out;
    out.y = y;
    out.h_n = h;
    out.c_n = c;
    if (keep) {
      out.gates = gates.view({T_, B, GH});
      out.c = c_hist;
      out.extra = extra;
    }
    return out;
  };
  if (units) {
    last_forward_split.store(kUnitRegion, std::memory_order_relaxed);
    scan_forward_units<Cell, T>(T_, B, I, H, x.data_ptr<T>(), w_ih.data_ptr<T>(), w_hh.data_ptr<T>(),
                                bias.data_ptr<T>(), rec_bias.data_ptr<T>(), h0.data_ptr<T>(), c_p, y_p, gates_p,
                                c_hist_p, extra_p, EW, cand_p, reverse, keep, chunk);
    std::memcpy(h_p, y_p + (reverse ? 0 : T_ - 1) * B * P, sizeof(T) * B * P);
    return outputs();
  }
  // A forward without hx starts from h0 = 0, whose product with W_hh is zero: the first step skips that GEMM, at
  // T = 1 half of the forward's multiply-adds. Not where W_hh holds a NaN or an infinity (the GEMM gives NaN · 0 =
  // NaN, as torch.nn does), checked only after h0 was found zero; and only from batch 8, where the GEMM does at
  // least 8 multiply-adds per weight that the check reads once (the unit split, which takes batch 8 over large
  // weights, returned above).
  const int64_t t_first = reverse ? T_ - 1 : 0;
  const bool zero_first = !kReadsState && B >= 8 && T_ > 0 && all_zero<T>(h0.contiguous()) && all_finite<T>(w_hh);
  StepWeight<T> w_hh_step(w_hh.data_ptr<T>(), true, GH, RW, B, 0, T_ - zero_first);     // h W_hhᵀ ([h | a′] W_hhᵀ)
  StepWeight<T> w_hr_step(proj ? w_hr.data_ptr<T>() : nullptr, true, P, H, B, 1, T_);  // m W_hrᵀ
  const T* bias_p = bias.data_ptr<T>();
  const T* rec_bias_p = rec_bias.data_ptr<T>();
  const int64_t EH = Cell::kExtra * H;

  const T* x_p = x.data_ptr<T>();
  // Packed once for every chunk; a single chunk is one plain GEMM (no pack buffer).
  StepWeight<T> w_ih_chunk(chunk < T_ ? w_ih.data_ptr<T>() : nullptr, true, GH, I, chunk * B, 2);
  const T* w_ih_p = w_ih.data_ptr<T>();
  // One step for rows [b0, b1): everything in a step is row-local (rows need only their own h, c and x_proj).
  // gates_rows: row b0's x W_ihᵀ, the rows after it GH apart.
  auto step_rows = [&](int64_t t, T* gates_rows, int64_t b0, int64_t b1) {
    T* y_t = y_p + t * B * P;
    T* h_out = proj ? m_p : y_t;
    const int64_t h_out_ld = proj ? H : P;
    const int r = static_cast<int>(b1 - b0);
    const T* h_rec = h_p;
    if constexpr (kReadsState) {  // the row [h (⊙ m) | state blocks 1..] (FGR: [h | i′ | f′ | o′])
      for (int64_t b = b0; b < b1; ++b) {
        T* row = hr_p + b * RW;
        for (int64_t j = 0; j < P; ++j) row[j] = rm_p ? h_p[b * P + j] * rm_p[b * P + j] : h_p[b * P + j];
        std::memcpy(row + P, c_p + b * CH + H, sizeof(T) * (CH - H));
      }
      h_rec = hr_p;
    } else if (rm_p) {
      for (int64_t k = b0 * P; k < b1 * P; ++k) hm_p[k] = h_p[k] * rm_p[k];
      h_rec = hm_p;
    }
    if (zero_first && t == t_first) std::fill(rec_p + b0 * GH, rec_p + b1 * GH, T(0));  // h0 W_hhᵀ = 0
    else if (!in_place) w_hh_step.compute(r, h_rec + b0 * RW, RW, T(0), rec_p + b0 * GH, GH);  // (r, GH) = h W_hhᵀ
    if (cprev_p) std::memcpy(cprev_p + b0 * H, c_p + b0 * H, sizeof(T) * r * H);
    for (int64_t b = b0; b < b1; ++b) {
      RowForward<T> row{gates_rows + (b - b0) * GH, rec_p + b * GH, bias_p, rec_bias_p, h_p + b * P,
                        c_p ? c_p + b * CH : nullptr, h_out + b * h_out_ld,
                        extra_p && EH ? extra_p + (t * B + b) * EW : nullptr, keep, aux_p,
                        cand_p ? cand_p + (t * B + b) * H : nullptr};
      Cell::forward(H, H, row);
    }
    if (proj) w_hr_step.compute(r, m_p + b0 * H, H, T(0), y_t + b0 * P, P);  // (r, P) = m W_hrᵀ
    if (zo_p) {  // zoneout: mix the new state with the previous one, unit by unit
      for (int64_t b = b0; b < b1; ++b) {
        const T* d = zo_p + (t * B + b) * ZW;
        T* saved = extra_p ? extra_p + (t * B + b) * EW + EH : nullptr;  // c̃ (H), then h̃ (P)
        T* y_row = y_t + b * P;
        const T* h_row = h_p + b * P;
        if constexpr (Cell::kHasC) {
          T* c_row = c_p + b * H;
          const T* cp_row = cprev_p + b * H;
          const T* dc = d + P;
          if (saved) std::memcpy(saved, c_row, sizeof(T) * H), saved += H;
          for (int64_t j = 0; j < H; ++j) c_row[j] = dc[j] * cp_row[j] + (T(1) - dc[j]) * c_row[j];
        }
        if (saved && Cell::kReadsHNext) std::memcpy(saved, y_row, sizeof(T) * P);
        for (int64_t j = 0; j < P; ++j) y_row[j] = d[j] * h_row[j] + (T(1) - d[j]) * y_row[j];
      }
    }
    std::memcpy(h_p + b0 * P, y_t + b0 * P, sizeof(T) * r * P);
    if (c_hist_p) std::memcpy(c_hist_p + (t * B + b0) * CH, c_p + b0 * CH, sizeof(T) * r * CH);
  };
  // x W_ihᵀ for steps [first, first + steps) into dest, rows [r0, r1) of the chunk's (steps * B, GH).
  // With several chunks, W_ih is packed once (w_ih_chunk, prepared before any call) rather than by BLAS at each.
  auto project_rows = [&](int64_t first, T* dest, int64_t r0, int64_t r1) {
    if (chunk < T_) return w_ih_chunk.compute(static_cast<int>(r1 - r0), x_p + (first * B + r0) * I,
                                              static_cast<int>(I), T(0), dest + r0 * GH, static_cast<int>(GH));
    gemm<T>(false, true, static_cast<int>(r1 - r0), static_cast<int>(GH), static_cast<int>(I), T(1),
            x_p + (first * B + r0) * I, static_cast<int>(I), w_ih_p, static_cast<int>(I), T(0), dest + r0 * GH,
            static_cast<int>(GH));
  };

  if (whole_region) {
    // Rows split over threads for the whole sequence in one parallel region: a row's steps need no other row,
    // so the threads meet at most around each chunk of x W_ihᵀ, not at every step.
    // Above ~16M multiply-adds a step (B = 64, H >= 256) a region per step costs nothing in comparison, and
    // BLAS's own threading of each chunk's x W_ihᵀ measured faster than two halves (B = 64, H = 512: ~5 %).
    last_forward_split.store(own_rows ? kRowRegionOwnRows : kRowRegion, std::memory_order_relaxed);
    const int call_rows = rows_per_call(B, row_work);
    w_hh_step.prepare(static_cast<int>(B), call_rows);
    if (proj) w_hr_step.prepare(static_cast<int>(B), call_rows);
    const int64_t threads = at::get_num_threads();
    const int64_t ih_rows_per_call = own_rows ? chunk * share : (chunk * B + threads - 1) / threads;
    w_ih_chunk.prepare(static_cast<int>(chunk * B), static_cast<int>(ih_rows_per_call));
    const at::Tensor x_rows = own_rows ? cpu_empty({chunk * B, I}, opts) : at::Tensor();  // (chunk*B, I)
    T* x_rows_p = own_rows ? x_rows.data_ptr<T>() : nullptr;
#pragma omp parallel
    {
      const int team = omp_get_num_threads(), k = omp_get_thread_num();
      at::internal::ThreadIdGuard thread_id(k);
      const int64_t b0 = B * k / team, b1 = B * (k + 1) / team, r = b1 - b0;
      if (own_rows) {
        // Each thread projects its own rows, `chunk` steps at a time, into its share of `gates` (rows
        // [chunk * b0, chunk * b1)) from its rows of x gathered into `x_rows`: no barrier, the rows stay in
        // this core's cache.
        T* own = gates_p + chunk * b0 * GH;
        T* xs = x_rows_p + chunk * b0 * I;
        int64_t first = -1;  // first step of the chunk in `own`
        for (int64_t s = 0; s < T_; ++s) {
          const int64_t t = reverse ? T_ - 1 - s : s;
          if (first < 0 || t < first || t >= first + chunk) {
            first = t / chunk * chunk;
            const int64_t steps = std::min(chunk, T_ - first);
            for (int64_t u = 0; u < steps; ++u)
              std::memcpy(xs + u * r * I, x_p + ((first + u) * B + b0) * I, sizeof(T) * r * I);
            const int rows = static_cast<int>(steps * r);
            if (chunk < T_) w_ih_chunk.compute(rows, xs, static_cast<int>(I), T(0), own, static_cast<int>(GH));
            else gemm<T>(false, true, rows, static_cast<int>(GH), static_cast<int>(I), T(1), xs, static_cast<int>(I),
                         w_ih_p, static_cast<int>(I), T(0), own, static_cast<int>(GH));
          }
          step_rows(t, own + (t - first) * r * GH, b0, b1);
        }
      } else {  // with a backward the threads compute each chunk of x W_ihᵀ together, in the saved layout
        int64_t chunk_start = -1;
        for (int64_t s = 0; s < T_; ++s) {
          const int64_t t = reverse ? T_ - 1 - s : s;
          if (chunk_start < 0 || t < chunk_start || t >= chunk_start + chunk) {
            chunk_start = t / chunk * chunk;
            const int64_t rows = std::min(chunk, T_ - chunk_start) * B;
#pragma omp barrier
            project_rows(chunk_start, gates_p + chunk_start * B * GH, rows * k / team, rows * (k + 1) / team);
#pragma omp barrier
          }
          step_rows(t, gates_p + (t * B + b0) * GH, b0, b1);
        }
      }
    }
  } else if (!in_place && projects_ahead(packed, T_, B, chunk, keep, splits_rows(B, row_work))) {
    last_forward_split.store(kProjectAhead, std::memory_order_relaxed);
    // (inside the region below BLAS runs on one thread: its GEMMs are timed so)
    w_hh_step.prepare(static_cast<int>(B), static_cast<int>(B), true);
    if (proj) w_hr_step.prepare(static_cast<int>(B), static_cast<int>(B), true);
    // Block b (steps [b * block, ...)): 0 free, 1 taken, 2 done. The helpers take blocks in the steps' order; the
    // stepping thread computes a block that no helper has started itself (the first, or all of them with a team
    // of one), so it never waits for a block nobody computes; it waits only for one a helper is computing (which
    // a busy machine may deschedule for a time slice). The whole team enters the region, as in every region of the
    // engine (a team size other than the pool's makes GOMP rebuild its pool); past two threads the extra helpers
    // find the blocks taken and wait at the region's end.
    const int64_t block = ahead_block(B), blocks = (T_ + block - 1) / block;
    std::vector<std::atomic<int>> state(blocks);
    // A block's <= 8 rows read W_ih's rows in place (gemv_rows: each row once, against every row of the block from
    // L1), on any thread alike, so the result does not depend on which thread computed which block. A BLAS call
    // per block (MKL on the Zen 4: ~5 µs for 8 x 192 x 64, mostly its copies and the scaling of C) made the helper
    // slower than the steps it fed (GRU, B = 1, T = 100, H = 64: 64 µs of blocks against 57 of steps), so the steps
    // waited for it. Same process, interleaved, no-grad forward, T = 100, BLAS -> rows in place: GRU B = 1, H = 64
    // 97.8 -> 81.2 µs, B = 4 293 -> 188 µs; LSTM B = 3, H = 64 316 -> 221 µs; RNN B = 1 52.5 -> 33.0 µs.
    auto project_block = [&](int64_t b) {
      const int64_t first = b * block, steps = std::min(block, T_ - first);
      gemv_rows<T>(0, GH, static_cast<int>(I), w_ih_p, x_p + first * B * I, gates_p + first * B * GH, false,
                   steps * B, I, GH);
      state[b].store(2, std::memory_order_release);
    };
    auto take = [&](int64_t b) {
      int free = 0;
      return state[b].compare_exchange_strong(free, 1, std::memory_order_acq_rel);
    };
#pragma omp parallel
    {
      const int k = omp_get_thread_num();
      at::internal::ThreadIdGuard thread_id(k);
      if (k == 0) {  // the calling thread (its StepWeights' buffers are its own): the steps
        for (int64_t s = 0; s < T_; ++s) {
          const int64_t t = reverse ? T_ - 1 - s : s, b = t / block;
          if (state[b].load(std::memory_order_acquire) != 2) {
            if (take(b)) project_block(b);
            for (int spins = 0; state[b].load(std::memory_order_acquire) != 2; ++spins)
              if (spins < (1 << 12)) spin_pause();
              else std::this_thread::yield();
          }
          step_rows(t, gates_p + t * B * GH, 0, B);
        }
      } else {
        for (int64_t i = 0; i < blocks; ++i) {
          const int64_t b = reverse ? blocks - 1 - i : i;
          if (take(b)) project_block(b);
        }
      }
    }
  } else {
    last_forward_split.store(in_place ? kInPlaceSteps : splits_rows(B, row_work) ? kRowsPerStep : kSerial,
                             std::memory_order_relaxed);
    const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
    int64_t chunk_start = -1;  // first step of the chunk held in `gates`
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = reverse ? T_ - 1 - s : s;
      const int64_t n = packed ? batch_sizes[t] : B;
      if (chunk_start < 0 || t < chunk_start || t >= chunk_start + chunk) {
        chunk_start = t / chunk * chunk;
        const int64_t steps = std::min(chunk, T_ - chunk_start);
        // (nothing to prepare for a single chunk); BLAS threads each chunk itself, PanelGemm is split here
        const int64_t rows = steps * B, share = (rows + threads - 1) / threads;
        T* dest = gates_p + (keep ? chunk_start * B * GH : 0);
        w_ih_chunk.prepare(static_cast<int>(rows), static_cast<int>(threads > 1 && rows >= 16 ? share : rows));
        auto project = [&](int64_t r0, int64_t r1) {  // rows [r0, r1) of the chunk
          const int64_t part = (r1 - r0 + threads - 1) / threads;
          if (w_ih_chunk.runs_panels() && threads > 1 && r1 - r0 >= 16)
            at::parallel_for(r0, r1, part, [&](int64_t a, int64_t b) { project_rows(chunk_start, dest, a, b); });
          else
            project_rows(chunk_start, dest, r0, r1);
        };
        if (!packed) {
          project(0, rows);
        } else {  // only each step's active rows (the step pass reads no other; a kept trace zeroes the rest)
          const RowRuns runs = active_runs(chunk_start, steps, B, [&](int64_t u) { return batch_sizes[u]; });
          for (const auto& [first, count] : runs)
            project(first, first + count);
        }
      }
      T* gates_t = gates_p + (keep ? t : t - chunk_start) * B * GH;
      const int call_rows = rows_per_call(n, row_work);
      if (!in_place)
        w_hh_step.prepare(static_cast<int>(n), call_rows);
      else if (!(zero_first && t == t_first))  // (n, GH) = h W_hhᵀ, all rows, threaded by BLAS; step_rows splits
        gemm<T>(false, true, static_cast<int>(n), static_cast<int>(GH), static_cast<int>(RW), T(1), h_p,
                static_cast<int>(P), w_hh.data_ptr<T>(), static_cast<int>(RW), T(0), rec_p, static_cast<int>(GH));
      if (proj) w_hr_step.prepare(static_cast<int>(n), call_rows);
      for_row_blocks(n, row_work, [&](int64_t b0, int64_t b1) { step_rows(t, gates_t + b0 * GH, b0, b1); });
      if (keep && n < B) {  // padded rows read as zeros in the trace
        std::memset(gates_t + n * GH, 0, sizeof(T) * (B - n) * GH);
        if (extra_p) std::memset(extra_p + (t * B + n) * EW, 0, sizeof(T) * (B - n) * EW);
      }
    }
  }
  return outputs();
}

template <typename Cell, typename T>
ScanBackwardOut scan_backward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                              const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_hr, bool has_bias,
                              const at::Tensor& y, const at::Tensor& gates, const at::Tensor& c_hist,
                              const at::Tensor& extra, const at::Tensor& dy, const at::Tensor& dh_n,
                              const at::Tensor& dc_n, const std::vector<int64_t>& batch_sizes, bool reverse,
                              bool need_dx, const at::Tensor& aux, const at::Tensor& zoneout,
                              const at::Tensor& rec_mask, const at::Tensor& cand_mask, bool need_dh0 = true) {
  const int64_t T_ = x.size(0), B = x.size(1), I = x.size(2);
  constexpr bool kReadsState = reads_state<Cell>();
  const int64_t GH = w_hh.size(0), H = GH / Cell::kGates, RW = w_hh.size(1), P = RW - rec_state_blocks<Cell>() * H;
  const bool proj = w_hr.defined(), packed = !batch_sizes.empty();
  const auto opts = x.options();
  auto buffer = [&](std::vector<int64_t> shape) { return sequence_buffer(shape, opts, packed); };

  at::Tensor dgate_x = buffer({T_, B, GH});
  at::Tensor dgate_h = Cell::kSplitGrad ? buffer({T_, B, GH}) : dgate_x;
  at::Tensor dgate_first = cpu_zeros({B, GH}, opts);  // dG_h at each row's first step (paired with h0)
  at::Tensor dh = cpu_clone(dh_n);                    // dL/dh carried backwards in time, (B, P)
  at::Tensor dc = Cell::kHasC ? cpu_clone(dc_n) : at::Tensor();  // (B, CH)
  const int64_t CH = state_blocks<Cell>() * H;
  at::Tensor dh_hist = proj ? buffer({T_, B, P}) : cpu_empty({B, P}, opts);  // dL/dh per step (proj) or scratch
  at::Tensor m_hist = proj ? buffer({T_, B, H}) : at::Tensor();
  at::Tensor dm = proj ? cpu_empty({B, H}, opts) : at::Tensor();
  const bool zo = zoneout.defined();
  const int64_t EW = extra_width<Cell>(H, P, zo), ZW = P + (Cell::kHasC ? H : 0);
  // accumulators of dL/daux (kAux*H) [+ dL/db_ih, dL/db_hh (2*GH) for kOwnsBiasGrad], one per thread (rows of a
  // step are split over threads; a thread's rows add into its own), summed at the end. One per batch row was
  // B * DA values (1.2 MB for a LayerNorm LSTM at B = 64, H = 256), which pushed W_hh out of L2 at every step.
  const int64_t DA = Cell::kAux * H + (Cell::kOwnsBiasGrad ? 2 * GH : 0);
  const int64_t slots = std::max({1, at::get_num_threads(), omp_get_max_threads()});  // >= any region's team
  at::Tensor daux_rows = DA ? cpu_zeros({slots, DA}, opts) : at::Tensor();
  // zoneout: the parts of dL/dh_prev, dL/dc_prev that skip the cell (B, P), (B, H); rec_mask: dG W_hh (B, P)
  at::Tensor dh_skip = zo ? cpu_empty({B, P}, opts) : at::Tensor();
  at::Tensor dc_skip = zo && Cell::kHasC ? cpu_empty({B, H}, opts) : at::Tensor();
  // dG W_hh before it is split or masked: (B, P), or (B, RW) = [dh | da′] for kRecState
  at::Tensor dh_rec = rec_mask.defined() || kReadsState ? cpu_empty({B, RW}, opts) : at::Tensor();
  const T* aux_p = aux.defined() ? aux.data_ptr<T>() : nullptr;
  const T* cand_p = cand_mask.defined() ? cand_mask.data_ptr<T>() : nullptr;
  T* daux_p = DA ? daux_rows.data_ptr<T>() : nullptr;
  const T* zo_p = zo ? zoneout.data_ptr<T>() : nullptr;
  const T* rm_p = rec_mask.defined() ? rec_mask.data_ptr<T>() : nullptr;
  T* dh_skip_p = zo ? dh_skip.data_ptr<T>() : nullptr;
  T* dc_skip_p = dc_skip.defined() ? dc_skip.data_ptr<T>() : nullptr;
  T* dh_rec_p = dh_rec.defined() ? dh_rec.data_ptr<T>() : nullptr;
  const T* h0_p = h0.data_ptr<T>();
  const T* c0_p = Cell::kHasC ? c0.data_ptr<T>() : nullptr;
  const T* y_p = y.data_ptr<T>();
  const T* gates_p = gates.defined() ? gates.data_ptr<T>() : nullptr;
  const T* c_hist_p = Cell::kHasC ? c_hist.data_ptr<T>() : nullptr;
  const T* extra_p = extra.defined() ? extra.data_ptr<T>() : nullptr;
  const T* dy_p = dy.data_ptr<T>();  // any strides: the gradient of output.sum() is a stride-0 expand
  const int64_t dy_s0 = dy.stride(0), dy_s1 = dy.stride(1), dy_s2 = dy.stride(2);
  const bool dy_dense = dy.is_contiguous();
  // The first step's dG W_hh is read only by dh0 (FGR's also by dc0): skipped when nothing asks for dh0
  const bool skips_first_product = !need_dh0 && !kReadsState;
  StepWeight<T> w_hh_step(w_hh.data_ptr<T>(), false, RW, GH, B, 0, T_ - skips_first_product);  // dG W_hh
  StepWeight<T> w_hr_step(proj ? w_hr.data_ptr<T>() : nullptr, false, H, P, B, 1, T_);  // dh W_hr
  T* dgx_p = dgate_x.data_ptr<T>();
  T* dgh_p = dgate_h.data_ptr<T>();
  T* dfirst_p = dgate_first.data_ptr<T>();
  T* dh_p = dh.data_ptr<T>();
  T* dc_p = Cell::kHasC ? dc.data_ptr<T>() : nullptr;
  T* dh_hist_p = dh_hist.data_ptr<T>();
  T* m_hist_p = proj ? m_hist.data_ptr<T>() : nullptr;
  T* dm_p = proj ? dm.data_ptr<T>() : nullptr;

  // Step s (t = the step it handles) for rows [b0, b1): row-local, as in the forward.
  auto step_rows = [&](int64_t s, int64_t b0, int64_t b1) {
    const int64_t t = reverse ? s : T_ - 1 - s;
    const int64_t n = packed ? batch_sizes[t] : B;
    const int64_t p = reverse ? t + 1 : t - 1;  // the step that produced h_prev
    const bool has_prev = p >= 0 && p < T_;
    const int64_t n_prev = has_prev ? std::min<int64_t>(n, packed ? batch_sizes[p] : B) : 0;
    T* dh_total = proj ? dh_hist_p + t * B * P : dh_hist_p;  // dL/dh_t = dy_t + carried dh
    const T* dy_t = dy_p + t * dy_s0;
    const T* dh_cell = proj ? dm_p : dh_total;
    const int64_t dh_ld = proj ? H : P;
    T* dgx_t = dgx_p + t * B * GH;
    T* dgh_t = dgh_p + t * B * GH;
    const int r = static_cast<int>(b1 - b0);
    if (dy_dense) {
      for (int64_t k = b0 * P; k < b1 * P; ++k) dh_total[k] = dy_t[k] + dh_p[k];
    } else {
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t j = 0; j < P; ++j) dh_total[b * P + j] = dy_t[b * dy_s1 + j * dy_s2] + dh_p[b * P + j];
    }
    if (zo_p) {  // zoneout: d ⊙ dL/dstate skips the cell to the previous state, (1 − d) ⊙ it enters the cell
      for (int64_t b = b0; b < b1; ++b) {
        const T* d = zo_p + (t * B + b) * ZW;
        for (int64_t j = 0; j < P; ++j) {
          const T g = dh_total[b * P + j];
          dh_skip_p[b * P + j] = d[j] * g, dh_total[b * P + j] = (T(1) - d[j]) * g;
        }
        if constexpr (Cell::kHasC) {
          for (int64_t j = 0; j < H; ++j) {
            const T g = dc_p[b * H + j];
            dc_skip_p[b * H + j] = d[P + j] * g, dc_p[b * H + j] = (T(1) - d[P + j]) * g;
          }
        }
      }
    }
    if (proj) w_hr_step.compute(r, dh_total + b0 * P, P, T(0), dm_p + b0 * H, H);  // dm = dh W_hr
    T* daux_block = daux_p ? daux_p + std::min<int64_t>(at::get_thread_num(), slots - 1) * DA : nullptr;
    for (int64_t b = b0; b < b1; ++b) {
      const bool from_prev = b < n_prev;
      const T* saved = extra_p ? extra_p + (t * B + b) * EW : nullptr;
      // under zoneout the cell's own c_next and h_next are the saved c̃ and h̃
      const T* c_cell = zo && Cell::kHasC ? saved + Cell::kExtra * H : (c_hist_p ? c_hist_p + (t * B + b) * CH : nullptr);
      const T* h_cell = zo && Cell::kReadsHNext ? saved + Cell::kExtra * H + (Cell::kHasC ? H : 0)
                                                : y_p + (t * B + b) * P;
      RowBackward<T> row{
          gates_p ? gates_p + (t * B + b) * GH : nullptr,
          saved,
          c_cell,
          c_hist_p ? (from_prev ? c_hist_p + (p * B + b) * CH : c0_p + b * CH) : nullptr,
          from_prev ? y_p + (p * B + b) * P : h0_p + b * P,
          h_cell,
          dh_cell + b * dh_ld,
          dc_p ? dc_p + b * CH : nullptr,
          dgx_t + b * GH,
          dgh_t + b * GH,
          dh_p + b * P,
          m_hist_p ? m_hist_p + (t * B + b) * H : nullptr,
          aux_p,
          daux_block,
          cand_p ? cand_p + (t * B + b) * H : nullptr};
      Cell::backward(H, row);
    }
    if (dc_skip_p)
      for (int64_t k = b0 * H; k < b1 * H; ++k) dc_p[k] += dc_skip_p[k];
    const int64_t first0 = std::max(b0, n_prev);  // rows whose h_prev is h0: their dG pairs with h0
    if (b1 > first0) std::memcpy(dfirst_p + first0 * GH, dgh_t + first0 * GH, sizeof(T) * (b1 - first0) * GH);
    // dh_prev = dG_h W_hh (⊙ rec_mask) (+ the direct part the cell wrote into dh) (+ zoneout's skip). Where every
    // row's h_prev is h0 it is dh0 alone: skipped when nothing asks for it (a third of a T = 1 backward).
    if (skips_first_product && n_prev == 0) return;
    if constexpr (kReadsState) {  // [dh | da′] = dG_h W_hh: da′ joins the previous step's dc blocks 1..
      w_hh_step.compute(r, dgh_t + b0 * GH, GH, T(0), dh_rec_p + b0 * RW, RW);
      for (int64_t b = b0; b < b1; ++b) {
        const T* row = dh_rec_p + b * RW;
        for (int64_t j = 0; j < P; ++j)
          dh_p[b * P + j] = (Cell::kDirectDh ? dh_p[b * P + j] : T(0)) + (rm_p ? row[j] * rm_p[b * P + j] : row[j]);
        T* dc_rest = dc_p + b * CH + H;
        for (int64_t k = 0; k < CH - H; ++k) dc_rest[k] += row[P + k];
      }
    } else if (rm_p) {
      w_hh_step.compute(r, dgh_t + b0 * GH, GH, T(0), dh_rec_p + b0 * P, P);
      for (int64_t k = b0 * P; k < b1 * P; ++k)
        dh_p[k] = (Cell::kDirectDh ? dh_p[k] : T(0)) + dh_rec_p[k] * rm_p[k];
    } else {
      w_hh_step.compute(r, dgh_t + b0 * GH, GH, Cell::kDirectDh ? T(1) : T(0), dh_p + b0 * P, P);
    }
    if (dh_skip_p)
      for (int64_t k = b0 * P; k < b1 * P; ++k) dh_p[k] += dh_skip_p[k];
  };
  const int64_t row_work = GH * (P + 8);  // a row's multiply-adds in a step, for the thread splits
  if (row_region(packed, B, row_work)) {
    // Rows split over threads for the whole sequence in one parallel region (they never meet: no row reads
    // another's gradients); each thread adds into its own daux slot (at::get_thread_num()).
    const int call_rows = rows_per_call(B, row_work);
    w_hh_step.prepare(static_cast<int>(B), call_rows);
    if (proj) w_hr_step.prepare(static_cast<int>(B), call_rows);
#pragma omp parallel
    {
      const int team = omp_get_num_threads(), k = omp_get_thread_num();
      at::internal::ThreadIdGuard thread_id(k);
      const int64_t b0 = B * k / team, b1 = B * (k + 1) / team;
      for (int64_t s = 0; s < T_; ++s) step_rows(s, b0, b1);
    }
  } else {
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t n = packed ? batch_sizes[reverse ? s : T_ - 1 - s] : B;
      const int call_rows = rows_per_call(n, row_work);
      w_hh_step.prepare(static_cast<int>(n), call_rows);
      if (proj) w_hr_step.prepare(static_cast<int>(n), call_rows);
      for_row_blocks(n, row_work, [&](int64_t b0, int64_t b1) { step_rows(s, b0, b1); });
    }
  }

  ScanBackwardOut out;
  const at::Tensor dgx2 = dgate_x.view({T_ * B, GH}), dgh2 = dgate_h.view({T_ * B, GH});
  // packed: a step's inactive rows have zero gate gradients, which the weight gradients skip
  auto batch_at = [&](int64_t t) { return batch_sizes[t]; };
  const RowRuns step_runs = packed ? active_runs(0, T_, B, batch_at) : RowRuns();
  // dgh_later's row block s is step s + 1 (reverse: s), paired with y of step s (reverse: s + 1)
  const RowRuns later_runs = packed ? active_runs(reverse ? 0 : 1, T_ - 1, B, batch_at) : RowRuns();
  const RowRuns* all_rows = packed ? &step_runs : nullptr;
  if (need_dx) out.dx = sequence_product<T>(dgx2, false, w_ih).view({T_, B, I});
  out.dw_ih = sequence_product<T>(dgx2, true, x.reshape({T_ * B, I}), all_rows);
  // dW_hh = Σ_t dG_h,tᵀ h_{t−1}: h_{t−1} is y of the previous step, or h0 at a row's first step.
  at::Tensor h0_rec = h0;
  if (rec_mask.defined()) h0_rec = h0 * rec_mask;  // W_hh read h ⊙ m
  if constexpr (kReadsState) h0_rec = at::cat({h0_rec, c0.narrow(1, H, CH - H)}, 1);  // (B, RW): [h | a]
  // The rows' first steps pair dG with h0: zeros after a forward without hx, whose product is zero. That GEMM
  // (B x G·H x H, the whole of dW_hh at T = 1) is skipped, unless dG holds a NaN or an infinity (NaN · 0 = NaN).
  h0_rec = h0_rec.contiguous();
  out.dw_hh = all_zero<T>(h0_rec) && all_finite<T>(dgate_first) ? cpu_zeros({GH, RW}, opts)
                                                                 : sequence_product<T>(dgate_first, true, h0_rec);
  if (T_ > 1) {
    const at::Tensor dgh_later = reverse ? dgate_h.narrow(0, 0, T_ - 1) : dgate_h.narrow(0, 1, T_ - 1);
    at::Tensor y_prev = reverse ? y.narrow(0, 1, T_ - 1) : y.narrow(0, 0, T_ - 1);
    if (rec_mask.defined()) y_prev = y_prev * rec_mask;
    if constexpr (kReadsState) {  // the GEMM read [h | state blocks 1..]: the state's part from c_hist
      const at::Tensor c_prev = reverse ? c_hist.narrow(0, 1, T_ - 1) : c_hist.narrow(0, 0, T_ - 1);
      y_prev = at::cat({y_prev, c_prev.narrow(2, H, CH - H)}, 2);  // (T−1, B, RW)
    }
    const at::Tensor dgh_rows = dgh_later.reshape({-1, GH}).contiguous();
    const at::Tensor h_rows = y_prev.reshape({-1, RW}).contiguous();
    sequence_gemm<T>(true, static_cast<int>(GH), static_cast<int>(RW), static_cast<int>(h_rows.size(0)),
                     dgh_rows.data_ptr<T>(), h_rows.data_ptr<T>(), T(1), out.dw_hh.data_ptr<T>(),
                     packed ? &later_runs : nullptr);
  }
  const at::Tensor daux_sum = DA ? daux_rows.sum(0) : at::Tensor();  // (DA,)
  if (has_bias && Cell::kOwnsBiasGrad) {
    out.db_ih = daux_sum.narrow(0, Cell::kAux * H, GH).contiguous();
    out.db_hh = daux_sum.narrow(0, Cell::kAux * H + GH, GH).contiguous();
  } else if (has_bias) {
    out.db_ih = column_sums<T>(dgx2);
    out.db_hh = Cell::kSplitGrad ? column_sums<T>(dgh2) : cpu_clone(out.db_ih);
  }
  if (proj) out.dw_hr = sequence_product<T>(dh_hist.view({T_ * B, P}), true, m_hist.view({T_ * B, H}), all_rows);
  if (Cell::kAux) out.daux = Cell::kOwnsBiasGrad ? daux_sum.narrow(0, 0, Cell::kAux * H).contiguous() : daux_sum;
  if (skips_first_product && dh.numel() > 0) std::memset(dh.data_ptr(), 0, dh.nbytes());  // not computed: zeros
  out.dh0 = dh;
  out.dc0 = dc;
  return out;
}

}  // namespace gatedrnn
