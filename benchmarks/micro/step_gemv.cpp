// The batch-1 step GEMV c (N) = W x with the engine's kernels (engine/csrc/blas.h), for the layouts the engine
// weighed; engine/csrc/README.md quotes these runs. Standalone (no torch), one thread; N = 4 H rows, K = H columns
// (or the K given).
//   g++ -O3 -march=native -mprefer-vector-width=512 -std=c++20 benchmarks/micro/step_gemv.cpp -o /tmp/step_gemv
//   /tmp/step_gemv 64          # W_hh of an LSTM at H = 64: N = 256, K = 64
//   /tmp/step_gemv 256 512     # a whole H = 256 streaming step: [W_ih | W_hh], N = 1024, K = 512
//   /tmp/step_gemv 64 64 16    # the weights 16 bytes off a cache line (the engine aligns its copies to 64 bytes)
// Layouts:
//   rows (N, K) in place      gemv_rows: row dot products on W as stored (the streaming step's kernel)
//   rows, a tree per row      the same before 2026-12-07: four rows at a time, a lane tree each, next rows prefetched
//   transposed (K, N)         small_rows_kn on a transposed copy (the sequence kernel before SmallPanels)
//   panels[, alternating]     SmallPanels: column panels of 8 registers, in one order or alternating by step
//   bf16 panels, alternating  the same panels stored as bfloat16, widened to float in registers (a compact copy for
//                             streaming: weighed, not adopted)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../src/gatedrnn/engine/csrc/blas.h"

using gatedrnn::SmallPanels;
using Panels = SmallPanels<float>;
constexpr int kLanes = Panels::kLanes, kWidth = Panels::kWidth;
typedef float Vec __attribute__((vector_size(gatedrnn::kVecBytes), aligned(4)));
typedef uint32_t VecU __attribute__((vector_size(gatedrnn::kVecBytes)));
typedef uint16_t VecH __attribute__((vector_size(gatedrnn::kVecBytes / 2)));

// `count` values from an address `offset` bytes past a 64-byte boundary (never freed: one run per process)
template <typename T>
static T* buffer(size_t count, int offset) {
  char* base = static_cast<char*>(std::aligned_alloc(64, (count * sizeof(T) + offset + 63) / 64 * 64));
  return reinterpret_cast<T*>(base + offset);
}

// SmallPanels::compute's loop over bfloat16 panels (full panels only: N a multiple of kWidth)
static void bf16_panels(int N, int K, const float* x, const uint16_t* packed, float* c, bool reverse) {
  const int count = N / kWidth;
  for (int i = 0; i < count; ++i) {
    const int n0 = (reverse ? count - 1 - i : i) * kWidth;
    const uint16_t* panel = packed + (size_t)n0 * K;
    Vec acc[Panels::kNV] = {};
    for (int k = 0; k < K; ++k) {
      const Vec a = gatedrnn::splat<Vec>(x[k]);
      for (int u = 0; u < Panels::kNV; ++u) {
        VecH h;
        std::memcpy(&h, panel + (size_t)k * kWidth + u * kLanes, sizeof(h));
        acc[u] += a * (Vec)(__builtin_convertvector(h, VecU) << 16);
      }
    }
    std::memcpy(c + n0, acc, sizeof(acc));
  }
}

// the engine's gemv_rows before 2026-12-07: four rows at a time, each row's lanes summed by its own tree
template <typename T>
static void gemv_rows_each(int64_t r0, int64_t r1, int K, const T* __restrict__ W, const T* __restrict__ x,
                       T* __restrict__ y, bool descending = false) {
  typedef T Vec __attribute__((vector_size(gatedrnn::kVecBytes), aligned(sizeof(T))));
  constexpr int kLanes = gatedrnn::kVecBytes / sizeof(T);
  constexpr int kStep = gatedrnn::kVecBytes == 64 ? kLanes : 2 * kLanes;
  auto load = [](const T* p) { return *reinterpret_cast<const Vec*>(p); };
  const int64_t blocks = (r1 - r0) / 4, blocked = r0 + 4 * blocks;  // rows [blocked, r1) one at a time
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t r = descending ? blocked - 4 * (i + 1) : r0 + 4 * i;
    const T* w = W + r * K;
    // the four rows read next, fetched while these are summed (past the weight: a prefetch never faults)
    const T* next = W + (descending ? std::max<int64_t>(r - 4, r0) : r + 4) * K;
    Vec a0{}, a1{}, a2{}, a3{}, b0{}, b1{}, b2{}, b3{};
    int k = 0;
    for (; k + kStep <= K; k += kStep) {
      __builtin_prefetch(next + k), __builtin_prefetch(next + K + k), __builtin_prefetch(next + 2 * K + k);
      __builtin_prefetch(next + 3 * K + k);
      const Vec xv = load(x + k);
      a0 += load(w + k) * xv, a1 += load(w + K + k) * xv, a2 += load(w + 2 * K + k) * xv;
      a3 += load(w + 3 * K + k) * xv;
      if constexpr (kStep > kLanes) {
        const int k2 = k + kLanes;
        const Vec xv2 = load(x + k2);
        b0 += load(w + k2) * xv2, b1 += load(w + K + k2) * xv2, b2 += load(w + 2 * K + k2) * xv2;
        b3 += load(w + 3 * K + k2) * xv2;
      }
    }
    for (; k + kLanes <= K; k += kLanes) {
      const Vec xv = load(x + k);
      a0 += load(w + k) * xv, a1 += load(w + K + k) * xv, a2 += load(w + 2 * K + k) * xv;
      a3 += load(w + 3 * K + k) * xv;
    }
    T s0 = gatedrnn::lane_sum<T>(a0 + b0), s1 = gatedrnn::lane_sum<T>(a1 + b1);
    T s2 = gatedrnn::lane_sum<T>(a2 + b2), s3 = gatedrnn::lane_sum<T>(a3 + b3);
    for (; k < K; ++k) s0 += w[k] * x[k], s1 += w[K + k] * x[k], s2 += w[2 * K + k] * x[k], s3 += w[3 * K + k] * x[k];
    y[r] = s0, y[r + 1] = s1, y[r + 2] = s2, y[r + 3] = s3;
  }
  for (int64_t i = 0; i < r1 - blocked; ++i) {
    const int64_t r = descending ? r1 - 1 - i : blocked + i;
    y[r] = gatedrnn::dot_row(W + r * K, x, K);
  }
}

template <typename F>
static double us_per_step(F&& step, std::vector<float>& x, const std::vector<float>& c) {
  double best = 1e300;
  for (int run = 0; run < 30; ++run) {
    const auto start = std::chrono::steady_clock::now();
    for (int s = 0; s < 500; ++s) {
      step(s);
      x[0] = c[0] * 1e-6f;  // the next step depends on this one, as in a recurrence
    }
    best = std::min(best, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / 500);
  }
  return best;
}

int main(int argc, char** argv) {
  const int H = argc > 1 ? std::atoi(argv[1]) : 64, N = 4 * H, K = argc > 2 ? std::atoi(argv[2]) : H;
  const int offset = argc > 3 ? std::atoi(argv[3]) : 0;
  if (N % kWidth != 0) return std::fprintf(stderr, "4 H should be a multiple of %d\n", kWidth), 1;
  const size_t size = (size_t)N * K;
  std::vector<float> x(K, 0.01f), c(N);
  float* w = buffer<float>(size, offset);      // (N, K), as a parameter is stored
  float* w_kn = buffer<float>(size, offset);   // (K, N)
  float* panels = buffer<float>(size, offset);
  uint16_t* panels16 = buffer<uint16_t>(size, offset);
  for (size_t i = 0; i < size; ++i) w[i] = (float)((i * 7919) % 1000) * 1e-4f;
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) w_kn[(size_t)k * N + n] = w[(size_t)n * K + k];
  Panels::pack(w, N, K, panels);
  for (size_t i = 0; i < size; ++i) {  // round to nearest even
    uint32_t bits;
    std::memcpy(&bits, &panels[i], 4);
    panels16[i] = (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
  }
  std::printf("N = %d, K = %d (%zu KB of float weights, %d bytes off a cache line), best of 30 runs of 500 steps:\n",
              N, K, size * 4 / 1024, offset);
  const struct { const char* name; int kind; bool alternate; } layouts[] = {
      {"rows (N, K) in place", 0, false}, {"rows, a tree per row (before)", 4, false},
      {"transposed (K, N)", 1, false}, {"panels", 2, false},
      {"panels, alternating", 2, true}, {"bf16 panels, alternating", 3, true}};
  for (const auto& layout : layouts) {
    const double us = us_per_step([&](int s) {
      const bool reverse = layout.alternate && (s & 1);
      if (layout.kind == 0) gatedrnn::gemv_rows<float>(0, N, K, w, x.data(), c.data());
      else if (layout.kind == 1) gatedrnn::small_rows_kn<float>(1, N, K, x.data(), K, w_kn, 0.0f, c.data(), N);
      else if (layout.kind == 2) Panels::compute(1, N, K, x.data(), K, panels, 0.0f, c.data(), N, reverse);
      else if (layout.kind == 4) gemv_rows_each<float>(0, N, K, w, x.data(), c.data());
      else bf16_panels(N, K, x.data(), panels16, c.data(), reverse);
    }, x, c);
    std::printf("  %-26s %8.3f us a step\n", layout.name, us);
  }
}
