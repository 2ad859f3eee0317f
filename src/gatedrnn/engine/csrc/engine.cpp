// The fused engine's entry points: the CPU kernels of the operators gatedrnn::scan, gatedrnn::scan_backward
// and gatedrnn::step (schemas, fake kernels and autograd in gatedrnn/engine/ops.py), registered with the
// dispatcher when this library is loaded. Cell kinds are named as in gatedrnn.cells.spec.CELL_SPECS.
// An operator returns tensors only: what a cell does not have comes back as an empty (0,) tensor.
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

at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) { return t.defined() ? t : at::empty({0}, like.options()); }

using Six = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Eight = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Three = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Six scan_op(c10::string_view cell_name, const at::Tensor& x, const at::Tensor& h0,
                                const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                const c10::optional<at::Tensor>& w_hr, at::IntArrayRef batch_sizes_in,
                                bool reverse, bool keep) {
  const std::string cell(cell_name);
  std::vector<int64_t> batch_sizes = batch_sizes_in.vec();
  const at::Tensor xc = x.contiguous(), h0c = h0.contiguous(), c0c = opt(c0), w_ihc = w_ih.contiguous(),
                   w_hhc = w_hh.contiguous(), b_ihc = opt(b_ih), b_hhc = opt(b_hh), w_hrc = opt(w_hr);
  if (!batch_sizes.empty() && batch_sizes[0] == xc.size(1) &&
      batch_sizes[batch_sizes.size() - 1] == xc.size(1))
    batch_sizes.clear();  // every row active at every step: the dense path
  ScanForwardOut out = dispatch(cell, xc, [&]<typename Cell, typename T>() {
    return scan_forward<Cell, T>(xc, h0c, c0c, w_ihc, w_hhc, b_ihc, b_hhc, w_hrc, batch_sizes, reverse, keep);
  });
  return {out.y, out.h_n, or_empty(out.c_n, xc), or_empty(out.gates, xc), or_empty(out.c, xc),
          or_empty(out.extra, xc)};
}

Eight scan_backward_op(c10::string_view cell_name, const at::Tensor& x, const at::Tensor& h0,
                                 const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                                 const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr, bool has_bias,
                                 const at::Tensor& y, const c10::optional<at::Tensor>& gates,
                                 const c10::optional<at::Tensor>& c_hist, const c10::optional<at::Tensor>& extra,
                                 const at::Tensor& dy, const at::Tensor& dh_n, const c10::optional<at::Tensor>& dc_n,
                                 at::IntArrayRef batch_sizes_in, bool reverse, bool need_dx) {
  const std::string cell(cell_name);
  std::vector<int64_t> batch_sizes = batch_sizes_in.vec();
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
  return {or_empty(g.dx, xc), g.dh0, or_empty(g.dc0, xc), g.dw_ih, g.dw_hh, or_empty(g.db_ih, xc),
          or_empty(g.db_hh, xc), or_empty(g.dw_hr, xc)};
}

Three step_op(c10::string_view cell_name, const at::Tensor& x, const at::Tensor& h, const c10::optional<at::Tensor>& c,
           const c10::List<c10::optional<at::Tensor>>& weight_list) {
  const std::string cell(cell_name);
  std::vector<c10::optional<at::Tensor>> weights;
  weights.reserve(weight_list.size());
  for (const c10::optional<at::Tensor>& w : weight_list) weights.push_back(w);
  std::vector<at::Tensor> out =
      dispatch(cell, x, [&]<typename Cell, typename T>() { return stack_step<Cell, T>(x, h, opt(c), weights); });
  return {out[0], out[1], or_empty(out[2], x)};
}

}  // namespace
}  // namespace gatedrnn

// The schemas are defined in Python (gatedrnn/engine/ops.py) before this library is loaded.
TORCH_LIBRARY_IMPL(gatedrnn, CPU, m) {
  m.impl("scan", &gatedrnn::scan_op);                    // whole-sequence forward of one layer and direction
  m.impl("scan_backward", &gatedrnn::scan_backward_op);  // its BPTT backward
  m.impl("step", &gatedrnn::step_op);                    // one time step through a stack of layers (streaming)
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gatedrnn fused CPU engine (see engine/csrc/README.md); its kernels are the operators gatedrnn::*";
  m.def("has_blas", &gatedrnn::has_blas, "whether per-step GEMMs call BLAS directly");
}
