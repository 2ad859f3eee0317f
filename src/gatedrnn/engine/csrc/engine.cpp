// Python bindings of the fused engine: whole-sequence forward/backward (scan_kernel.h) and the
// single-step streaming entry point. Cell kinds are named as in gatedrnn.cells.spec.CELL_SPECS.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "scan_kernel.h"
#include "step_kernel.h"

namespace gatedrnn {
namespace {

// Calls fn.template operator()<Cell, T>() for the named cell and the tensor's dtype.
template <typename Fn>
auto dispatch(const std::string& cell, const at::Tensor& like, Fn&& fn) {
  auto by_cell = [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (cell == "lstm") return fn.template operator()<LSTMCell<T>, T>();
    if (cell == "gru") return fn.template operator()<GRUCell<T>, T>();
    if (cell == "rnn_tanh") return fn.template operator()<RNNCell<T, false>, T>();
    if (cell == "rnn_relu") return fn.template operator()<RNNCell<T, true>, T>();
    TORCH_CHECK(false, "gatedrnn fused engine: unknown cell kind '", cell, "'");
  };
  if (like.scalar_type() == at::kFloat) return by_cell(std::type_identity<float>{});
  TORCH_CHECK(like.scalar_type() == at::kDouble, "gatedrnn fused engine: float32 or float64 only, got ",
              like.scalar_type());
  return by_cell(std::type_identity<double>{});
}

at::Tensor opt(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->contiguous() : at::Tensor(); }

std::vector<at::Tensor> forward(const std::string& cell, const at::Tensor& x, const at::Tensor& h0,
                                const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                const c10::optional<at::Tensor>& w_hr, std::vector<int64_t> batch_sizes,
                                bool reverse, bool keep) {
  const at::Tensor xc = x.contiguous(), h0c = h0.contiguous(), c0c = opt(c0), w_ihc = w_ih.contiguous(),
                   w_hhc = w_hh.contiguous(), b_ihc = opt(b_ih), b_hhc = opt(b_hh), w_hrc = opt(w_hr);
  if (!batch_sizes.empty() && batch_sizes[0] == xc.size(1) &&
      batch_sizes[batch_sizes.size() - 1] == xc.size(1))
    batch_sizes.clear();  // every row active at every step: the dense path
  ScanForwardOut out = dispatch(cell, xc, [&]<typename Cell, typename T>() {
    return scan_forward<Cell, T>(xc, h0c, c0c, w_ihc, w_hhc, b_ihc, b_hhc, w_hrc, batch_sizes, reverse, keep);
  });
  return {out.y, out.h_n, out.c_n, out.gates, out.c, out.extra};
}

std::vector<at::Tensor> backward(const std::string& cell, const at::Tensor& x, const at::Tensor& h0,
                                 const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                                 const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr, bool has_bias,
                                 const at::Tensor& y, const c10::optional<at::Tensor>& gates,
                                 const c10::optional<at::Tensor>& c_hist, const c10::optional<at::Tensor>& extra,
                                 const at::Tensor& dy, const at::Tensor& dh_n, const c10::optional<at::Tensor>& dc_n,
                                 std::vector<int64_t> batch_sizes, bool reverse, bool need_dx) {
  const at::Tensor xc = x.contiguous(), h0c = h0.contiguous(), c0c = opt(c0), w_ihc = w_ih.contiguous(),
                   w_hhc = w_hh.contiguous(), w_hrc = opt(w_hr), yc = y.contiguous(), dyc = dy,
                   dh_nc = dh_n.contiguous(), dc_nc = opt(dc_n);
  if (!batch_sizes.empty() && batch_sizes[0] == xc.size(1) &&
      batch_sizes[batch_sizes.size() - 1] == xc.size(1))
    batch_sizes.clear();
  ScanBackwardOut g = dispatch(cell, xc, [&]<typename Cell, typename T>() {
    return scan_backward<Cell, T>(xc, h0c, c0c, w_ihc, w_hhc, w_hrc, has_bias, yc, opt(gates), opt(c_hist),
                                  opt(extra), dyc, dh_nc, dc_nc, batch_sizes, reverse, need_dx);
  });
  return {g.dx, g.dh0, g.dc0, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh, g.dw_hr};
}

std::vector<at::Tensor> step(const std::string& cell, const at::Tensor& x, const at::Tensor& h,
                             const c10::optional<at::Tensor>& c, const std::vector<c10::optional<at::Tensor>>& weights) {
  return dispatch(cell, x, [&]<typename Cell, typename T>() { return stack_step<Cell, T>(x, h, opt(c), weights); });
}

}  // namespace
}  // namespace gatedrnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gatedrnn fused CPU engine (see engine/csrc/README.md)";
  m.def("forward", &gatedrnn::forward, "whole-sequence forward of one layer and direction");
  m.def("backward", &gatedrnn::backward, "BPTT backward of one layer and direction");
  m.def("step", &gatedrnn::step, "one time step through a stack of layers (streaming, no autograd)");
  m.def("has_blas", &gatedrnn::has_blas, "whether per-step GEMMs call BLAS directly");
}
