// minGRU and minLSTM over a whole sequence, forward and BPTT backward, each in one pass over time. The equations
// are gatedrnn/cells/minimal.py's (mingru_step, minlstm_step; same symbols), the backward is
// gatedrnn/cells/minimal_fused.py's. The gates read only x_proj = x W_ihᵀ + b_ih (one GEMM the caller runs over all
// steps), so each hidden unit of each batch row is its own scalar recurrence h_t = a_t h_{t-1} + b_t: no GEMM in the
// loop, and units are split over threads with no barrier between steps.
//
// Memory-bound: the forward reads x_proj (T, B, G*H) and writes h (T, B, H); the backward recomputes the gates from
// x_proj (cheaper than storing them) and reads h and dL/dh, writes dx_proj. Torch's op-per-pass form
// (gatedrnn/cells/minimal_fused.py) makes ~12 passes over (T, B, H) and T small ops per scan: minGRU forward and
// backward at T = 1024, B = 16, H = 256, float32, 2 threads took 38 ms there against 9 ms here (Zen 4).
//
// Shapes: T steps, B batch, H hidden, G gate blocks (2: z, h̃ for minGRU; 3: f, i, h̃ for minLSTM).
#pragma once

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <string>
#include <vector>

#include "fastmath.h"

namespace gatedrnn {
namespace minimal {

// Units of one row a thread walks through time together: 64 floats are 4 AVX-512 registers a gate block.
constexpr int64_t kBlock = 64;

// g(k) = k + 1/2 for k >= 0, σ(k) below (the paper's positive candidate activation), from s = σ(k); max() is the
// branch g takes on each side of 0, since σ(k) <= 1/2 + k/4.
template <typename T>
GATEDRNN_MATH T g(T k, T s) {
  return std::max(k + T(0.5), s);
}

// g'(k): 1 for k >= 0, σ(k)(1 − σ(k)) below.
template <typename T>
GATEDRNN_MATH T dg(T k, T s) {
  return k >= T(0) ? T(1) : s - s * s;
}

// One block of `n` units of one row at one step. kz, kh (minGRU) / kf, ki, kh (minLSTM) point at the row's gate
// blocks, prev at h_{t-1}, out at h_t.
template <typename T>
void mingru_forward(int64_t n, const T* __restrict__ kz, const T* __restrict__ kh, const T* __restrict__ prev,
                    T* __restrict__ out) {
  for (int64_t j = 0; j < n; ++j) {
    const T z = sigmoid(kz[j]);
    const T h_tilde = g(kh[j], sigmoid(kh[j]));
    out[j] = prev[j] + z * (h_tilde - prev[j]);  // (1 − z) ⊙ h + z ⊙ h_tilde
  }
}

template <typename T>
void minlstm_forward(int64_t n, const T* __restrict__ kf, const T* __restrict__ ki, const T* __restrict__ kh,
                     const T* __restrict__ prev, T* __restrict__ out) {
  for (int64_t j = 0; j < n; ++j) {
    const T f = sigmoid(kf[j]), i = sigmoid(ki[j]);
    const T f_prime = f / (f + i), i_prime = i / (f + i);
    out[j] = f_prime * prev[j] + i_prime * g(kh[j], sigmoid(kh[j]));
  }
}

// The backward of one block at one step. dh_out: dL/dh_t from the output (stride kDyStride: 1, or 0 where the
// caller's gradient is one value broadcast along the units, as sum() gives); carry: on entry a_{t+1} ⊙ dL/dh_{t+1}
// (the later steps' part of dL/dh_t), on exit a_t ⊙ dL/dh_t. Writes dL/dk of each gate block.
template <typename T, int kDyStride>
void mingru_backward(int64_t n, const T* __restrict__ kz, const T* __restrict__ kh, const T* __restrict__ prev,
                     const T* __restrict__ dh_out, T* __restrict__ carry, T* __restrict__ dkz,
                     T* __restrict__ dkh) {
  for (int64_t j = 0; j < n; ++j) {
    const T dh = dh_out[j * kDyStride] + carry[j];
    const T z = sigmoid(kz[j]), s = sigmoid(kh[j]);
    const T h_tilde = g(kh[j], s);
    // h_t = (1 − z) ⊙ h_{t-1} + z ⊙ h_tilde: dz = dh ⊙ (h_tilde − h_{t-1}), dh_tilde = dh ⊙ z
    dkz[j] = dh * (h_tilde - prev[j]) * z * (T(1) - z);  // z = σ(k_z)
    dkh[j] = dh * z * dg(kh[j], s);                       // h_tilde = g(k_h)
    carry[j] = (T(1) - z) * dh;
  }
}

template <typename T, int kDyStride>
void minlstm_backward(int64_t n, const T* __restrict__ kf, const T* __restrict__ ki, const T* __restrict__ kh,
                      const T* __restrict__ prev, const T* __restrict__ dh_out, T* __restrict__ carry,
                      T* __restrict__ dkf, T* __restrict__ dki, T* __restrict__ dkh) {
  for (int64_t j = 0; j < n; ++j) {
    const T dh = dh_out[j * kDyStride] + carry[j];
    const T f = sigmoid(kf[j]), i = sigmoid(ki[j]), s = sigmoid(kh[j]);
    const T f_prime = f / (f + i), i_prime = i / (f + i);
    // h_t = f' ⊙ h_{t-1} + i' ⊙ h_tilde; through f' = f / (f + i), i' = i / (f + i) and f = σ(k_f), i = σ(k_i):
    // with c = dh ⊙ (h_tilde − h_{t-1}) ⊙ f' ⊙ i', dk_f = c ⊙ (f − 1), dk_i = c ⊙ (1 − i)
    const T c = dh * (g(kh[j], s) - prev[j]) * f_prime * i_prime;
    dkf[j] = c * (f - T(1));
    dki[j] = c * (T(1) - i);
    dkh[j] = dh * i_prime * dg(kh[j], s);
    carry[j] = f_prime * dh;
  }
}

inline int gate_blocks(const std::string& cell) {
  TORCH_CHECK(cell == "mingru" || cell == "minlstm", "minimal scan: cell should be 'mingru' or 'minlstm', got '",
              cell, "'");
  return cell == "mingru" ? 2 : 3;
}

// Checks the operands and returns G. x_proj (T, B, G*H) and h0 (B, H): contiguous CPU tensors of one float dtype.
inline int check_operands(const std::string& cell, const at::Tensor& x_proj, const at::Tensor& h0) {
  const int G = gate_blocks(cell);
  TORCH_CHECK(x_proj.device().is_cpu() && h0.device().is_cpu(), "minimal scan: CPU tensors expected");
  TORCH_CHECK(x_proj.scalar_type() == at::kFloat || x_proj.scalar_type() == at::kDouble,
              "minimal scan: x_proj should be float32 or float64, got ", x_proj.scalar_type());
  TORCH_CHECK(h0.scalar_type() == x_proj.scalar_type(), "minimal scan: h0 should be ", x_proj.scalar_type(),
              " like x_proj, got ", h0.scalar_type());
  TORCH_CHECK(x_proj.dim() == 3 && x_proj.size(2) % G == 0, "minimal scan: x_proj should be (T, B, ", G,
              "*H), got shape ", x_proj.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == x_proj.size(1) && h0.size(1) == x_proj.size(2) / G,
              "minimal scan: h0 should be (", x_proj.size(1), ", ", x_proj.size(2) / G, "), got shape ", h0.sizes());
  TORCH_CHECK(x_proj.is_contiguous() && h0.is_contiguous(), "minimal scan: x_proj and h0 should be contiguous");
  return G;
}

// Calls body(i, b, j0, n) for the blocks [i0, i1) of the B * ceil(H / kBlock) blocks: block i holds units
// [j0, j0 + n) of row b.
template <typename Body>
void for_blocks(int64_t i0, int64_t i1, int64_t H, Body&& body) {
  const int64_t per_row = (H + kBlock - 1) / kBlock;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t b = i / per_row, j0 = (i % per_row) * kBlock;
    body(i, b, j0, std::min(kBlock, H - j0));
  }
}

// Threads take whole blocks, and each walks its blocks through time step by step, so that what it reads at a step
// is one contiguous stretch of each row and h_{t-1} is still in L1. Grain: >= ~64k unit-steps a thread.
inline int64_t grain(int64_t steps) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(steps * kBlock, 1));
}

// h (T, B, H): every step's state.
inline at::Tensor forward(const std::string& cell, const at::Tensor& x_proj, const at::Tensor& h0) {
  const int G = check_operands(cell, x_proj, h0);
  const int64_t T_ = x_proj.size(0), B = x_proj.size(1), H = h0.size(1);
  at::Tensor h = at::empty({T_, B, H}, x_proj.options());
  if (T_ == 0 || B == 0 || H == 0) return h;
  const int64_t blocks = B * ((H + kBlock - 1) / kBlock);
  AT_DISPATCH_FLOATING_TYPES(x_proj.scalar_type(), "minimal_scan_forward", [&] {
    const scalar_t* x = x_proj.data_ptr<scalar_t>();
    const scalar_t* start = h0.data_ptr<scalar_t>();
    scalar_t* out = h.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, grain(T_), [&](int64_t i0, int64_t i1) {
      for (int64_t t = 0; t < T_; ++t) {
        for_blocks(i0, i1, H, [&](int64_t /*i*/, int64_t b, int64_t j0, int64_t n) {
          const scalar_t* k = x + (t * B + b) * G * H + j0;
          const scalar_t* prev = t == 0 ? start + b * H + j0 : out + ((t - 1) * B + b) * H + j0;
          scalar_t* now = out + (t * B + b) * H + j0;
          if (G == 2) mingru_forward<scalar_t>(n, k, k + H, prev, now);
          else minlstm_forward<scalar_t>(n, k, k + H, k + 2 * H, prev, now);
        });
      }
    });
  });
  return h;
}

// (dx_proj (T, B, G*H), dh0 (B, H)) from x_proj, h0, forward's h (T, B, H) and dL/dh (T, B, H): any strides over
// T and B, unit stride or 0 (a broadcast value) over H.
inline std::tuple<at::Tensor, at::Tensor> backward(const std::string& cell, const at::Tensor& x_proj,
                                                   const at::Tensor& h0, const at::Tensor& h, const at::Tensor& dh) {
  const int G = check_operands(cell, x_proj, h0);
  const int64_t T_ = x_proj.size(0), B = x_proj.size(1), H = h0.size(1);
  for (const at::Tensor* t : {&h, &dh}) {
    TORCH_CHECK(t->scalar_type() == x_proj.scalar_type() && t->device().is_cpu() && t->dim() == 3 &&
                t->size(0) == T_ && t->size(1) == B && t->size(2) == H, "minimal scan backward: h and dh should be ",
                x_proj.scalar_type(), " (", T_, ", ", B, ", ", H, ") CPU tensors, got ", t->scalar_type(), " ",
                t->sizes());
  }
  TORCH_CHECK(h.is_contiguous(), "minimal scan backward: h should be contiguous");
  TORCH_CHECK(H <= 1 || dh.stride(2) == 1 || dh.stride(2) == 0, "minimal scan backward: dh's stride along H "
              "should be 1 or 0, got ", dh.stride(2));
  at::Tensor dx = at::empty_like(x_proj), dh0 = at::empty_like(h0);
  if (T_ == 0 || B == 0 || H == 0) return {dx, dh0.zero_()};
  const int64_t blocks = B * ((H + kBlock - 1) / kBlock);
  const bool broadcast = H > 1 && dh.stride(2) == 0;
  const int64_t dh_t = dh.stride(0), dh_b = dh.stride(1);
  AT_DISPATCH_FLOATING_TYPES(x_proj.scalar_type(), "minimal_scan_backward", [&] {
    const scalar_t* x = x_proj.data_ptr<scalar_t>();
    const scalar_t* start = h0.data_ptr<scalar_t>();
    const scalar_t* states = h.data_ptr<scalar_t>();
    const scalar_t* grad = dh.data_ptr<scalar_t>();
    scalar_t* dk = dx.data_ptr<scalar_t>();
    scalar_t* grad0 = dh0.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, grain(T_), [&](int64_t i0, int64_t i1) {
      std::vector<scalar_t> carries((i1 - i0) * kBlock, scalar_t(0));  // a_{t+1} ⊙ dL/dh_{t+1} of each block
      for (int64_t t = T_ - 1; t >= 0; --t) {
        for_blocks(i0, i1, H, [&](int64_t i, int64_t b, int64_t j0, int64_t n) {
          const scalar_t* k = x + (t * B + b) * G * H + j0;
          const scalar_t* prev = t == 0 ? start + b * H + j0 : states + ((t - 1) * B + b) * H + j0;
          const scalar_t* dy = grad + t * dh_t + b * dh_b + (broadcast ? 0 : j0);
          scalar_t* carry = carries.data() + (i - i0) * kBlock;
          scalar_t* dkr = dk + (t * B + b) * G * H + j0;
          if (G == 2) {
            if (broadcast) mingru_backward<scalar_t, 0>(n, k, k + H, prev, dy, carry, dkr, dkr + H);
            else mingru_backward<scalar_t, 1>(n, k, k + H, prev, dy, carry, dkr, dkr + H);
          } else if (broadcast) {
            minlstm_backward<scalar_t, 0>(n, k, k + H, k + 2 * H, prev, dy, carry, dkr, dkr + H, dkr + 2 * H);
          } else {
            minlstm_backward<scalar_t, 1>(n, k, k + H, k + 2 * H, prev, dy, carry, dkr, dkr + H, dkr + 2 * H);
          }
        });
      }
      // dL/dh_0 = a_1 ⊙ dL/dh_1: what the first step left in the carries
      for_blocks(i0, i1, H, [&](int64_t i, int64_t b, int64_t j0, int64_t n) {
        const scalar_t* carry = carries.data() + (i - i0) * kBlock;
        std::copy(carry, carry + n, grad0 + b * H + j0);
      });
    });
  });
  return {dx, dh0};
}

}  // namespace minimal
}  // namespace gatedrnn
