// PanelGemm (engine/csrc/blas.h), the GEMM of the steps and of the chunks of x W_ihᵀ when it measures faster than
// BLAS, against a variant weighed and not adopted: X copied into tiles of kMR rows first (csrc/README.md quotes these
// runs). Standalone (no torch, no BLAS), one thread, C (rows, N) = X (rows, K) Wᵀ for W (N, K) packed once.
//   g++ -O3 -march=native -fno-trapping-math -std=c++20 benchmarks/micro/panel_gemm.cpp -o /tmp/panel_gemm
//   /tmp/panel_gemm 32 2048 512     # a thread's share of an LSTM step at B = 64, H = 512 (two threads)
//   /tmp/panel_gemm 128 1024 256    # a thread's share of a 4-step chunk of x W_ihᵀ at B = 64, H = 256
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../src/gatedrnn/engine/csrc/blas.h"

using gatedrnn::PanelGemm;
using gatedrnn::kVecBytes;
using PG = PanelGemm<float>;

// The variant weighed: each K block of X first copied into tiles of kMR rows, [k][kMR], so that a tile's kMR
// broadcasts read one stream (as BLAS kernels pack their operand), then k block > panel > tile.
struct PackedX {
  static constexpr int kMR = PG::kMR, kNR = PG::kNR, kLanes = PG::kLanes, kPanel = PG::kPanel;
  typedef float Vec __attribute__((vector_size(kVecBytes), aligned(4)));
  template <int MR>
  static void tile(int K, const float* __restrict__ xp, const float* __restrict__ panel, float beta, float* C,
                   int ldc, int width) {
    Vec acc[MR][kNR] = {};
    for (int k = 0; k < K; ++k) {
      const Vec* b = reinterpret_cast<const Vec*>(panel + (size_t)k * kPanel);
      Vec bk[kNR];
#pragma GCC unroll 4
      for (int u = 0; u < kNR; ++u) bk[u] = b[u];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const Vec a = gatedrnn::splat<Vec>(xp[(size_t)k * kMR + r]);
#pragma GCC unroll 4
        for (int u = 0; u < kNR; ++u) acc[r][u] += a * bk[u];
      }
    }
    for (int r = 0; r < MR; ++r) {
      float* c = C + (size_t)r * ldc;
      if (width == kPanel) {
        for (int u = 0; u < kNR; ++u) {
          Vec* out = reinterpret_cast<Vec*>(c + u * kLanes);
          *out = beta == 0.f ? acc[r][u] : acc[r][u] + beta * *out;
        }
      } else {
        float row[kPanel];
        std::memcpy(row, acc[r], sizeof(row));
        for (int j = 0; j < width; ++j) c[j] = beta == 0.f ? row[j] : row[j] + beta * c[j];
      }
    }
  }
  template <int MR = kMR - 1>
  static void remainder(int rows, int K, const float* xp, const float* panel, float beta, float* C, int ldc,
                        int width) {
    if constexpr (MR >= 1) {
      if (rows == MR) return tile<MR>(K, xp, panel, beta, C, ldc, width);
      remainder<MR - 1>(rows, K, xp, panel, beta, C, ldc, width);
    }
  }
  static void compute(int rows, int N, int K, const float* X, int ldx, const float* packed, float beta, float* C,
                      int ldc) {
    constexpr int kKC = 16384 / (kPanel * sizeof(float)) / 8 * 8;
    static thread_local std::vector<float> xbuf;
    const int tiles = (rows + kMR - 1) / kMR;
    float* xp = gatedrnn::aligned_room(xbuf, (size_t)tiles * kMR * kKC);
    for (int k0 = 0; k0 < K; k0 += kKC) {
      const int kc = std::min(kKC, K - k0);
      for (int t = 0; t < tiles; ++t) {  // pack rows [t*MR, +MR) of the block: [k][MR]
        float* dst = xp + (size_t)t * kMR * kc;
        const int r0 = t * kMR, nr = std::min(kMR, rows - r0);
        for (int r = 0; r < nr; ++r) {
          const float* src = X + (size_t)(r0 + r) * ldx + k0;
          for (int k = 0; k < kc; ++k) dst[(size_t)k * kMR + r] = src[k];
        }
      }
      const float b = k0 == 0 ? beta : 1.f;
      for (int n0 = 0; n0 < N; n0 += kPanel) {
        const int width = std::min(kPanel, N - n0);
        const float* panel = packed + (size_t)(n0 / kPanel) * K * kPanel + (size_t)k0 * kPanel;
        int t = 0;
        for (; (t + 1) * kMR <= rows; ++t)
          tile<kMR>(kc, xp + (size_t)t * kMR * kc, panel, b, C + (size_t)t * kMR * ldc + n0, ldc, width);
        if (t * kMR < rows)
          remainder(rows - t * kMR, kc, xp + (size_t)t * kMR * kc, panel, b, C + (size_t)t * kMR * ldc + n0, ldc,
                    width);
      }
    }
  }
};

template <class F>
double best_us(F&& run, int repeats) {
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    best = std::min(best, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

int main(int argc, char** argv) {
  if (argc != 4) return std::fprintf(stderr, "usage: %s ROWS N K\n", argv[0]), 2;
  const int rows = std::atoi(argv[1]), N = std::atoi(argv[2]), K = std::atoi(argv[3]);
  if (rows < 1 || N < 1 || K < 1) return std::fprintf(stderr, "bad sizes\n"), 2;
  std::vector<float> W((size_t)N * K), X((size_t)rows * K), in_place((size_t)rows * N), packed_x((size_t)rows * N);
  for (float& v : W) v = std::rand() / (float)RAND_MAX - 0.5f;
  for (float& v : X) v = std::rand() / (float)RAND_MAX - 0.5f;
  std::vector<float> panels(PG::packed_size(N, K));
  PG::pack(W.data(), true, N, K, panels.data());
  auto old_kernel = [&] { PG::compute(rows, N, K, X.data(), K, panels.data(), 0.f, in_place.data(), N); };
  auto new_kernel = [&] { PackedX::compute(rows, N, K, X.data(), K, panels.data(), 0.f, packed_x.data(), N); };
  old_kernel(), new_kernel();
  double diff = 0;
  for (size_t i = 0; i < in_place.size(); ++i) diff = std::max(diff, (double)std::fabs(in_place[i] - packed_x[i]));
  double t_old = 1e30, t_new = 1e30;
  for (int round = 0; round < 7; ++round)  // interleaved: a burst of load on a shared machine hits both alike
    t_old = std::min(t_old, best_us(old_kernel, 5)), t_new = std::min(t_new, best_us(new_kernel, 5));
  const double flop = 2.0 * rows * N * K;
  std::printf("rows %d, N %d, K %d: PanelGemm (X rows in place) %.0f us (%.1f GF/s), "
              "X packed first %.0f us (%.1f GF/s): %.2fx; max |difference| %.1e\n",
              rows, N, K, t_old, flop / t_old / 1e3, t_new, flop / t_new / 1e3, t_old / t_new, diff);
}
