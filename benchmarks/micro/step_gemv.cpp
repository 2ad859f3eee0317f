// The batch-1 step GEMV c (N) = W x for the layouts the engine weighed (engine/csrc/README.md quotes these runs).
// Standalone, single thread; N = 4H rows of W_hh, K = H (or the columns given).
//   g++ -O3 -march=native -mprefer-vector-width=512 -std=c++20 benchmarks/micro/step_gemv.cpp -o /tmp/step_gemv
//   /tmp/step_gemv 64          # W_hh of an LSTM at H = 64: N = 256, K = 64
//   /tmp/step_gemv 256 512     # a whole H = 256 streaming step: [W_ih | W_hh], N = 1024, K = 512
// Layouts: "transposed" is W as (K, N) read in blocks of 8 registers (the kernel before SmallPanels); "panels" is
// SmallPanels' (K, 8 registers) column panels, in one order or alternating from step to step; "bf16 panels" stores
// the panels as bfloat16 and widens them to float in registers (a compact copy for streaming, weighed and not
// adopted: see the README).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

constexpr int kLanes = 16, kNV = 8, kWidth = kNV * kLanes;  // 512-bit registers of float
typedef float Vec __attribute__((vector_size(64)));
typedef uint32_t VecU __attribute__((vector_size(64)));
typedef uint16_t VecH __attribute__((vector_size(32)));

static inline Vec splat(float x) { return x - Vec{}; }

static void transposed(int N, int K, const float* x, const float* w_kn, float* c, bool) {
  for (int n0 = 0; n0 < N; n0 += kWidth) {
    Vec acc[kNV] = {};
    for (int k = 0; k < K; ++k) {
      const Vec a = splat(x[k]);
      const Vec* w = reinterpret_cast<const Vec*>(w_kn + (size_t)k * N + n0);
      for (int u = 0; u < kNV; ++u) acc[u] += a * w[u];
    }
    std::memcpy(c + n0, acc, sizeof(acc));
  }
}

template <typename W>
static void panels(int N, int K, const float* x, const W* packed, float* c, bool reverse) {
  const int count = N / kWidth;
  for (int i = 0; i < count; ++i) {
    const int n0 = (reverse ? count - 1 - i : i) * kWidth;
    const W* panel = packed + (size_t)n0 * K;
    Vec acc[kNV] = {};
    for (int k = 0; k < K; ++k) {
      const Vec a = splat(x[k]);
      for (int u = 0; u < kNV; ++u) {
        Vec w;
        if constexpr (sizeof(W) == 4) {
          std::memcpy(&w, panel + (size_t)k * kWidth + u * kLanes, sizeof(w));
        } else {  // bfloat16: the high half of a float
          VecH h;
          std::memcpy(&h, panel + (size_t)k * kWidth + u * kLanes, sizeof(h));
          w = (Vec)(__builtin_convertvector(h, VecU) << 16);
        }
        acc[u] += a * w;
      }
    }
    std::memcpy(c + n0, acc, sizeof(acc));
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
  if (N % kWidth != 0) return std::fprintf(stderr, "4 H should be a multiple of %d\n", kWidth), 1;
  std::vector<float> w((size_t)N * K), w_kn(w.size()), pan(w.size()), x(K, 0.01f), c(N);
  std::vector<uint16_t> pan16(w.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = (float)((i * 7919) % 1000) * 1e-4f;  // W (N, K)
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) {
      const float v = w[(size_t)n * K + k];
      w_kn[(size_t)k * N + n] = v;
      const size_t at = (size_t)(n / kWidth) * kWidth * K + (size_t)k * kWidth + n % kWidth;
      pan[at] = v;
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      pan16[at] = (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);  // round to nearest even
    }
  std::printf("N = %d, K = %d (%zu KB of float weights), best of 30 runs of 500 steps:\n", N, K, w.size() * 4 / 1024);
  const struct { const char* name; int kind; bool alternate; } layouts[] = {
      {"transposed (K, N)", 0, false}, {"panels", 1, false}, {"panels, alternating", 1, true},
      {"bf16 panels, alternating", 2, true}};
  for (const auto& layout : layouts) {
    const double us = us_per_step([&](int s) {
      const bool reverse = layout.alternate && (s & 1);
      if (layout.kind == 0) transposed(N, K, x.data(), w_kn.data(), c.data(), reverse);
      else if (layout.kind == 1) panels(N, K, x.data(), pan.data(), c.data(), reverse);
      else panels(N, K, x.data(), pan16.data(), c.data(), reverse);
    }, x, c);
    std::printf("  %-26s %8.3f us a step\n", layout.name, us);
  }
}
