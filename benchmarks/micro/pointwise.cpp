// An LSTM's forward pointwise pass (the loop of LSTMCell::pass in engine/csrc/cells.h: i, f, o = σ, g = tanh,
// c = f c + i g, h = o tanh(c)) with the two reciprocals of engine/csrc/fastmath.h: `reciprocal_newton` (a bit-level
// guess and three Newton steps) and a divide. fastmath.h's `reciprocal` divides on x86 without AVX-512; this
// program times both on the CPU at hand. Standalone (no torch), one thread, rows of one step at H units each.
//   g++ -O3 -fno-trapping-math -march=native -std=c++20 benchmarks/micro/pointwise.cpp -o /tmp/pointwise
//   /tmp/pointwise          # H = 128, 8 rows (a thread's share of an LSTM step at B = 16)
//   /tmp/pointwise 64 1     # batch 1, H = 64
// Prints ns per hidden unit (best of 30 repetitions) and each variant's largest |h - h_double| over the run.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../../src/gatedrnn/engine/csrc/fastmath.h"

using gatedrnn::exp_approx;
using gatedrnn::reciprocal_newton;

#define INLINE inline __attribute__((always_inline))
template <bool kDivide>
INLINE float inverse(float d) { return kDivide ? 1.0f / d : reciprocal_newton(d); }
template <bool kDivide>
INLINE float sigmoid(float x) { return x < -88.0f ? 0.0f : inverse<kDivide>(1.0f + exp_approx(-x)); }
template <bool kDivide>
INLINE float tanh_(float x) {  // fastmath.h's tanh_, with the reciprocal chosen
  const float ax = std::fabs(x), z = x * x;
  float small = -5.70498872745e-3f;
  small = small * z + 2.06390887954e-2f;
  small = small * z - 5.37397155531e-2f;
  small = small * z + 1.33314422036e-1f;
  small = small * z - 3.33332819422e-1f;
  small = small * z * x + x;
  const float large = 1.0f - 2.0f * inverse<kDivide>(exp_approx(2.0f * ax) + 1.0f);
  return ax < 0.625f ? small : std::copysign(large, x);
}

template <bool kDivide>
__attribute__((noinline)) void pass(int H, const float* __restrict__ pre, const float* __restrict__ rec,
                                    const float* __restrict__ bias, float* __restrict__ c, float* __restrict__ h) {
  for (int j = 0; j < H; ++j) {
    const float i = sigmoid<kDivide>(pre[j] + rec[j] + bias[j]);
    const float f = sigmoid<kDivide>(pre[H + j] + rec[H + j] + bias[H + j]);
    const float g = tanh_<kDivide>(pre[2 * H + j] + rec[2 * H + j] + bias[2 * H + j]);
    const float o = sigmoid<kDivide>(pre[3 * H + j] + rec[3 * H + j] + bias[3 * H + j]);
    const float c_next = f * c[j] + i * g;
    c[j] = c_next;
    h[j] = o * tanh_<kDivide>(c_next);
  }
}

int main(int argc, char** argv) {
  const int H = argc > 1 ? std::atoi(argv[1]) : 128, rows = argc > 2 ? std::atoi(argv[2]) : 8;
  const int steps = std::max(1, (1 << 21) / (rows * H));
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> pre(rows * 4 * H), rec(rows * 4 * H), bias(4 * H), c(rows * H), h(rows * H);
  for (auto* v : {&pre, &rec, &bias})
    for (float& e : *v) e = normal(rng);
  auto run = [&](auto kernel) {
    double best = 1e30;
    for (int rep = 0; rep < 30; ++rep) {
      std::fill(c.begin(), c.end(), 0.1f);
      const auto start = std::chrono::steady_clock::now();
      for (int s = 0; s < steps; ++s)
        for (int r = 0; r < rows; ++r)
          kernel(H, pre.data() + r * 4 * H, rec.data() + r * 4 * H, bias.data(), c.data() + r * H, h.data() + r * H);
      const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
      best = std::min(best, ns / (double(steps) * rows * H));
    }
    return best;
  };
  auto error = [&](auto kernel) {  // one step from c = 0.1 against the same pass in double
    double worst = 0;
    for (int r = 0; r < rows; ++r) {
      float cf[4096], hf[4096];
      std::fill(cf, cf + H, 0.1f);
      kernel(H, pre.data() + r * 4 * H, rec.data() + r * 4 * H, bias.data(), cf, hf);
      for (int j = 0; j < H; ++j) {
        auto z = [&](int g) { return double(pre[r * 4 * H + g * H + j]) + rec[r * 4 * H + g * H + j] + bias[g * H + j]; };
        auto sg = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
        const double cd = sg(z(1)) * 0.1 + sg(z(0)) * std::tanh(z(2));
        worst = std::max(worst, std::fabs(hf[j] - sg(z(3)) * std::tanh(cd)));
      }
    }
    return worst;
  };
  if (H > 4096) return std::fprintf(stderr, "H <= 4096\n"), 1;
  std::printf("H = %d, %d rows: ns per unit (max |h error|)\n", H, rows);
  std::printf("  Newton reciprocal  %.2f (%.2g)\n", run(pass<false>), error(pass<false>));
  std::printf("  divide             %.2f (%.2g)\n", run(pass<true>), error(pass<true>));
}
