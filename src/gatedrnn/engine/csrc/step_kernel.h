// One time step through a stack of layers, for streaming under no_grad: per layer two GEMVs (x W_ihᵀ,
// h W_hhᵀ; BLAS per gate block for large batches and rows, `step_gemv`), the cell's pointwise pass and, for a
// projected LSTM, m W_hrᵀ. No autograd, no per-layer tensor allocation: scratch lives in a thread-local buffer.
#pragma once

#include <ATen/EmptyTensor.h>
#include <torch/extension.h>

#include <optional>
#include <vector>

#include "blas.h"
#include "cells.h"

namespace gatedrnn {

// Whether a step's GEMMs of batch B and rows of K columns run as gemv_rows (each block of weight rows read once,
// then from L1 for the batch's other rows) rather than a BLAS call per gate block: always at batch 1-2, and while
// a block of rows fits L1 beside the batch (K <= 256 up to batch 64, K <= 512 up to 16). A BLAS call costs ~2-3 µs
// of dispatch and packing, 8 of them a layer; the GEMV ran 1.1-4.3x faster than them at H = 64-256, B = 3-64, and
// slower at H = 512, B = 64 and at H = 1024 (csrc/README.md, "Streaming at batch 3-64").
inline bool step_gemv(int64_t B, int64_t K) { return B <= 2 || (B <= 64 && K <= 256) || (B <= 16 && K <= 512); }

// x (B, I); h (L, B, P); c (L, B, H) or undefined; weights: per layer w_ih, w_hh, b_ih, b_hh, w_hr (None allowed).
// Returns {y (B, P), h_next (L, B, P), c_next (L, B, H) or undefined}.
template <typename Cell, typename T>
std::vector<at::Tensor> stack_step(const at::Tensor& x_in, const at::Tensor& h_in, const at::Tensor& c_in,
                                   const std::vector<c10::optional<at::Tensor>>& weights) {
  const at::Tensor x = x_in.contiguous(), h = h_in.contiguous();
  const int64_t L = h.size(0), B = h.size(1), P = h.size(2);
  TORCH_CHECK((int64_t)weights.size() == 5 * L, "step: expected 5 weight slots per layer");
  // Outputs through at::detail::empty_cpu (no dispatcher): at batch 1 each dispatched allocation or clone
  // costs about as much as a layer's arithmetic.
  auto fresh = [&](at::IntArrayRef sizes) { return at::detail::empty_cpu(sizes, h.scalar_type(), false, std::nullopt); };
  at::Tensor h_next = fresh(h.sizes());
  at::Tensor c_next;
  if constexpr (Cell::kHasC) {
    const at::Tensor c = c_in.contiguous();
    c_next = fresh(c.sizes());
    std::copy_n(c.data_ptr<T>(), c.numel(), c_next.data_ptr<T>());
  }
  static thread_local std::vector<T> scratch;
  static thread_local bool reversed_last = false;  // this thread's previous call read its rows backwards
  const bool backwards = reversed_last = !reversed_last;

  const T* in_p = x.data_ptr<T>();
  int64_t in_dim = x.size(1);
  for (int64_t l = 0; l < L; ++l) {
    auto slot = [&](int k) { return weights[5 * l + k].has_value() ? weights[5 * l + k]->contiguous() : at::Tensor(); };
    const at::Tensor w_ih = slot(0), w_hh = slot(1), b_ih = slot(2), b_hh = slot(3), w_hr = slot(4);
    const int64_t GH = w_hh.size(0), H = GH / Cell::kGates;
    const bool proj = w_hr.defined();
    const bool gemv = step_gemv(B, std::max(in_dim, P));
    const bool descending = backwards && gemv;
    scratch.resize(B * (2 * GH + H) + GH + H);
    T* gates = scratch.data();
    T* rec = gates + B * GH;
    T* m = rec + B * GH;
    const T* h_prev = h.data_ptr<T>() + l * B * P;
    const int64_t folded = GH - Cell::kRecBias * H;
    T* bias = m + B * H;  // b_ih + b_hh folded (GH), then b_hn (kRecBias * H); zeros without bias
    std::fill(bias, bias + GH + Cell::kRecBias * H, T(0));
    if (b_ih.defined()) {
      const T* bi = b_ih.data_ptr<T>();
      const T* bh = b_hh.data_ptr<T>();
      for (int64_t k = 0; k < GH; ++k) bias[k] = bi[k] + (k < folded ? bh[k] : T(0));
      for (int64_t k = 0; k < Cell::kRecBias * H; ++k) bias[GH + k] = bh[folded + k];
    }
    T* h_out_l = h_next.data_ptr<T>() + l * B * P;
    T* c_l = Cell::kHasC ? c_next.data_ptr<T>() + l * B * H : nullptr;
    const T* w_ih_p = w_ih.data_ptr<T>();
    const T* w_hh_p = w_hh.data_ptr<T>();
    // Hidden units [j0, j1): their rows of every gate block (GEMVs read the weights in place), then the
    // pointwise pass. Split over threads, each core streams only its share of the weights. Where the GEMVs run
    // (step_gemv) every other call reads the rows in the opposite order (gates, weights and rows backwards): a
    // share larger than the core's L2 then starts on the rows the last call read last, which are still there,
    // where the same order every call would find each row evicted by the ones after it (the same sums either way).
    auto units_range = [&](int64_t j0, int64_t j1) {
      const int units = static_cast<int>(j1 - j0);
      if (gemv) {  // hand GEMV: the block's rows of W_ih and W_hh, each block for every row of the batch
        for (int i = 0; i < Cell::kGates; ++i) {
          const int64_t row0 = (descending ? Cell::kGates - 1 - i : i) * H + j0;
          for (int pass = 0; pass < 2; ++pass) {  // W_ih then W_hh, or backwards W_hh then W_ih
            const bool recurrent = (pass == 0) == descending;  // one call site: the same code for both orders
            gemv_rows<T>(row0, row0 + units, static_cast<int>(recurrent ? P : in_dim), recurrent ? w_hh_p : w_ih_p,
                         recurrent ? h_prev : in_p, recurrent ? rec : gates, descending, B, recurrent ? P : in_dim,
                         GH);
          }
        }
      }
      for (int g = 0; g < Cell::kGates && !gemv; ++g) {
        const int64_t row0 = g * H + j0;
        gemm<T>(false, true, B, units, in_dim, T(1), in_p, in_dim, w_ih_p + row0 * in_dim, in_dim, T(0), gates + row0, GH);
        gemm<T>(false, true, B, units, P, T(1), h_prev, P, w_hh_p + row0 * P, P, T(0), rec + row0, GH);
      }
      for (int64_t b = 0; b < B; ++b) {
        RowForward<T> row{gates + b * GH + j0, rec + b * GH + j0, bias + j0, bias + GH + j0, h_prev + b * P + j0,
                          c_l ? c_l + b * H + j0 : nullptr, (proj ? m + b * H : h_out_l + b * P) + j0, nullptr, false};
        Cell::forward(H, units, row);
      }
    };
    const int64_t weight_bytes = GH * (in_dim + P) * static_cast<int64_t>(sizeof(T));
    const int threads = at::get_num_threads();
    // split when the GEMVs read (or, from L1, re-read for the batch's rows) more than 512 KB: below that the
    // threads' meeting costs about what it saves
    if (threads > 1 && H >= 32 && weight_bytes * (gemv ? B : 1) > (512 << 10)) {
      const int64_t grain = (H + threads - 1) / threads;
      at::parallel_for(0, H, grain, units_range);
    } else {
      units_range(0, H);
    }
    if (proj) gemm<T>(false, true, B, P, H, T(1), m, H, w_hr.data_ptr<T>(), H, T(0), h_out_l, P);
    in_p = h_out_l;
    in_dim = P;
  }
  at::Tensor y = fresh({B, P});  // its own storage: writing into y must not change the returned state
  std::copy_n(h_next.data_ptr<T>() + (L - 1) * B * P, B * P, y.data_ptr<T>());
  return {y, h_next, c_next};
}

}  // namespace gatedrnn
