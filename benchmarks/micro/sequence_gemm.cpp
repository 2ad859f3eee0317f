// PanelGemm::compute_tn (engine/csrc/blas.h), the weight-gradient GEMM after backward's loop: Cᵀ (M, N) = Xᵀ W for
// X (K, M) (the inputs or h_prev of every step and row) and W (K, N) (their gate gradients), read in place, on all
// threads (OpenMP), split by W's panels or by Cᵀ's rows (csrc/README.md quotes these runs). Standalone, no torch.
//   g++ -O3 -march=native -fno-trapping-math -fopenmp -std=c++20 benchmarks/micro/sequence_gemm.cpp -o /tmp/seq
//   /tmp/seq 64 512 1600           # dW_ih of an LSTM at B = 16, T = 100, I = 64, H = 128; "cold": caches flushed
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../src/gatedrnn/engine/csrc/blas.h"

using PG = gatedrnn::PanelGemm<float>;

int main(int argc, char** argv) {
  if (argc != 4) return std::fprintf(stderr, "usage: %s M N K\n", argv[0]), 2;
  const int M = std::atoi(argv[1]), N = std::atoi(argv[2]), K = std::atoi(argv[3]);
  std::vector<float> X((size_t)K * M), W((size_t)K * N + 64), C((size_t)M * N), flush(size_t(16) << 20);
  std::vector<float> tail((size_t)K * PG::kPanel, 0.f);  // the narrow last panel (zeros: timing only)
  for (float& v : X) v = 0.5f;
  for (float& v : W) v = 0.25f;
  const float* w = gatedrnn::aligned_room(W, (size_t)K * N);
  const int panels = (N + PG::kPanel - 1) / PG::kPanel, tiles = (M + PG::kMR - 1) / PG::kMR;
  for (const bool by_rows : {false, true}) {
    double best[2] = {1e30, 1e30};  // warm, cold
    for (int round = 0; round < 20; ++round) {
      for (int cold = 0; cold < 2; ++cold) {
        if (cold)
          for (float& v : flush) v += 1.f;
        const auto start = std::chrono::steady_clock::now();
#pragma omp parallel
        {
          const int t = omp_get_thread_num(), n = omp_get_num_threads();
          if (by_rows)
            PG::compute_tn(0, panels, M, N, K, X.data(), M, w, N, tail.data(), 0.f, C.data(), N,
                           tiles * t / n * PG::kMR, tiles * (t + 1) / n * PG::kMR);
          else
            PG::compute_tn(panels * t / n, panels * (t + 1) / n, M, N, K, X.data(), M, w, N, tail.data(), 0.f,
                           C.data(), N);
        }
        const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
        best[cold] = std::min(best[cold], us);
      }
    }
    std::printf("%d x %d x %d, %d threads, split by %s: warm %.0f us (%.1f GF/s), cold %.0f us (%.1f GF/s)\n", M, N, K,
                omp_get_max_threads(), by_rows ? "rows" : "panels", best[0], 2.0 * M * N * K / best[0] / 1e3, best[1],
                2.0 * M * N * K / best[1] / 1e3);
  }
}
