// The fused engine's entry points: the CPU kernels of the operators gatedrnn::scan, gatedrnn::scan_backward
// and gatedrnn::step (schemas, fake kernels and autograd in gatedrnn/engine/ops.py), registered with the
// dispatcher when this library is loaded. Cell kinds are named as in gatedrnn.cells.spec.CELL_SPECS.
// An operator returns tensors only: what a cell does not have comes back as an empty (0,) tensor.
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/extension.h>

#include <cstdlib>
#include <map>
#include <tuple>
#include <utility>
#include <cstring>
#include <string>
#include <vector>

#include "minimal_scan.h"
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
    if (cell == "lstm_peephole") return fn.template operator()<PeepholeLSTMCell<T, Greff::kVanilla>, T>();
    if (cell == "lstm_np") return fn.template operator()<LSTMCell<T>, T>();
    if (cell == "lstm_nig") return fn.template operator()<PeepholeLSTMCell<T, Greff::kNIG>, T>();
    if (cell == "lstm_nfg") return fn.template operator()<PeepholeLSTMCell<T, Greff::kNFG>, T>();
    if (cell == "lstm_nog") return fn.template operator()<PeepholeLSTMCell<T, Greff::kNOG>, T>();
    if (cell == "lstm_niaf") return fn.template operator()<PeepholeLSTMCell<T, Greff::kNIAF>, T>();
    if (cell == "lstm_noaf") return fn.template operator()<PeepholeLSTMCell<T, Greff::kNOAF>, T>();
    if (cell == "lstm_cifg") return fn.template operator()<PeepholeLSTMCell<T, Greff::kCIFG>, T>();
    if (cell == "lstm_fgr") return fn.template operator()<FGRLSTMCell<T>, T>();
    if (cell == "layernorm_lstm") return fn.template operator()<LayerNormLSTMCell<T>, T>();
    if (cell == "layernorm_gru") return fn.template operator()<LayerNormGRUCell<T>, T>();
    if (cell == "slstm") return fn.template operator()<SLSTMCell<T, false>, T>();
    if (cell == "slstm_exp") return fn.template operator()<SLSTMCell<T, true>, T>();
    TORCH_CHECK(false, "gatedrnn fused engine: unknown cell kind '", cell, "'");
  };
  if (like.scalar_type() == at::kFloat) return by_cell(std::type_identity<float>{});
  TORCH_CHECK(like.scalar_type() == at::kDouble, "gatedrnn fused engine: float32 or float64 only, got ",
              like.scalar_type());
  return by_cell(std::type_identity<double>{});
}

at::Tensor opt(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->contiguous() : at::Tensor(); }

at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : cpu_empty({0}, like.options());
}

// The operators are public (they appear in exported graphs and can be called directly): every shape the
// kernels index with is checked here, so a wrong one raises instead of reading out of bounds.
std::string shape(at::IntArrayRef sizes) { return c10::str(sizes); }

void check_shape(const char* op, const char* name, const at::Tensor& t, std::vector<int64_t> expected,
                 const at::Tensor& like) {
  TORCH_CHECK(t.sizes().vec() == expected, op, ": ", name, " should have shape ", shape(expected), ", got ",
              shape(t.sizes()));
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " should be ", like.scalar_type(), " like x, got ",
              t.scalar_type());
}

// Returns {H, P}.
std::pair<int64_t, int64_t> check_layer(const char* op, const std::string& cell, const at::Tensor& x,
                                        const at::Tensor& h0, const c10::optional<at::Tensor>& c0,
                                        const at::Tensor& w_ih, const at::Tensor& w_hh,
                                        const c10::optional<at::Tensor>& w_hr, at::IntArrayRef batch_sizes) {
  const auto [gates, has_c, c_blocks, rec_blocks] = dispatch(cell, x, [&]<typename Cell, typename T>() {
    return std::tuple<int64_t, bool, int64_t, int64_t>(Cell::kGates, Cell::kHasC, state_blocks<Cell>(),
                                                       rec_state_blocks<Cell>());
  });
  TORCH_CHECK(x.dim() == 3, op, ": x should be 3-D (T, B, I), got shape ", shape(x.sizes()));
  const int64_t T_ = x.size(0), B = x.size(1), I = x.size(2);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) > 0 && w_hh.size(0) % gates == 0, op, ": w_hh should be (",
              gates, "*H, P", rec_blocks ? c10::str(" + ", rec_blocks, "*H") : std::string(), ") for cell '", cell,
              "', got shape ", shape(w_hh.sizes()));
  // a kRecState cell's GEMM reads [h | state blocks 1..]: W_hh has rec_blocks*H columns after h's P (FGR's R)
  const int64_t GH = w_hh.size(0), H = GH / gates, P = w_hh.size(1) - rec_blocks * H;
  TORCH_CHECK(P > 0, op, ": w_hh should be (", GH, ", P + ", rec_blocks, "*", H, ") for cell '", cell, "', got shape ",
              shape(w_hh.sizes()));
  check_shape(op, "w_ih", w_ih, {GH, I}, x);
  check_shape(op, "w_hh", w_hh, {GH, P + rec_blocks * H}, x);
  check_shape(op, "h0", h0, {B, P}, x);
  if (has_c) {
    TORCH_CHECK(c0.has_value(), op, ": cell '", cell, "' needs c0");
    check_shape(op, "c0", *c0, {B, c_blocks * H}, x);
  }
  if (w_hr.has_value()) {  // the projection (LSTMP) exists for torch.nn's LSTM cell alone
    TORCH_CHECK(cell == "lstm", op, ": only cell 'lstm' takes w_hr (a projection), got w_hr for cell '", cell, "'");
    check_shape(op, "w_hr", *w_hr, {P, H}, x);
  } else {
    TORCH_CHECK(P == H, op, ": without w_hr, w_hh should be (", GH, ", ", H + rec_blocks * H, "), got shape ",
                shape(w_hh.sizes()));
  }
  if (!batch_sizes.empty()) {
    TORCH_CHECK((int64_t)batch_sizes.size() == T_, op, ": batch_sizes should hold T = ", T_, " values, got ",
                batch_sizes.size());
    for (size_t t = 0; t < batch_sizes.size(); ++t)
      TORCH_CHECK(batch_sizes[t] >= 1 && batch_sizes[t] <= B && (t == 0 || batch_sizes[t] <= batch_sizes[t - 1]), op,
                  ": batch_sizes should be non-increasing values in [1, B = ", B, "], got ", shape(batch_sizes));
  }
  return {H, P};
}

using Six = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Nine = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                        at::Tensor>;

// The noise and extra-parameter operands of scan and scan_backward (see scan_kernel.h), checked.
struct Extras {
  at::Tensor aux, zoneout, rec_mask, cand_mask;
};

Extras check_extras(const char* op, const std::string& cell, const at::Tensor& x, int64_t H, int64_t P,
                    const c10::optional<at::Tensor>& aux, const c10::optional<at::Tensor>& zoneout,
                    const c10::optional<at::Tensor>& rec_mask, const c10::optional<at::Tensor>& cand_mask) {
  const auto [aux_blocks, has_c, takes_cand, c_blocks] = dispatch(cell, x, [&]<typename Cell, typename T>() {
    return std::tuple<int64_t, bool, bool, int64_t>(Cell::kAux, Cell::kHasC, Cell::kCandidate, state_blocks<Cell>());
  });
  const int64_t T_ = x.size(0), B = x.size(1);
  if (aux_blocks) {
    TORCH_CHECK(aux.has_value(), op, ": cell '", cell, "' needs aux, its extra parameters (", aux_blocks, "*H,)");
    check_shape(op, "aux", *aux, {aux_blocks * H}, x);
  } else {
    TORCH_CHECK(!aux.has_value(), op, ": cell '", cell, "' has no extra parameters, got aux");
  }
  TORCH_CHECK(!zoneout.has_value() || c_blocks == 1, op, ": cell '", cell, "' takes no zoneout (its state has ",
              c_blocks, " blocks besides h), got zoneout");
  if (zoneout.has_value()) check_shape(op, "zoneout", *zoneout, {T_, B, P + (has_c ? H : 0)}, x);
  if (rec_mask.has_value()) check_shape(op, "rec_mask", *rec_mask, {B, P}, x);
  if (cand_mask.has_value()) {
    TORCH_CHECK(takes_cand, op, ": cell '", cell, "' has no candidate to drop out, got cand_mask");
    check_shape(op, "cand_mask", *cand_mask, {T_, B, H}, x);
  }
  return {opt(aux), opt(zoneout), opt(rec_mask), opt(cand_mask)};
}
using Three = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Six scan_op(c10::string_view cell_name, const at::Tensor& x, const at::Tensor& h0,
                                const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                                const c10::optional<at::Tensor>& w_hr, at::IntArrayRef batch_sizes_in,
                                bool reverse, bool keep, const c10::optional<at::Tensor>& aux,
                                const c10::optional<at::Tensor>& zoneout, const c10::optional<at::Tensor>& rec_mask,
                                const c10::optional<at::Tensor>& cand_mask) {
  const std::string cell(cell_name);
  const auto [H, P] = check_layer("gatedrnn::scan", cell, x, h0, c0, w_ih, w_hh, w_hr, batch_sizes_in);
  const Extras ex = check_extras("gatedrnn::scan", cell, x, H, P, aux, zoneout, rec_mask, cand_mask);
  const int64_t GH = w_hh.size(0);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "gatedrnn::scan: b_ih and b_hh should both be given or both None");
  if (b_ih.has_value()) {
    check_shape("gatedrnn::scan", "b_ih", *b_ih, {GH}, x);
    check_shape("gatedrnn::scan", "b_hh", *b_hh, {GH}, x);
  }
  std::vector<int64_t> batch_sizes = batch_sizes_in.vec();
  const at::Tensor xc = x.contiguous(), h0c = h0.contiguous(), c0c = opt(c0), w_ihc = w_ih.contiguous(),
                   w_hhc = w_hh.contiguous(), b_ihc = opt(b_ih), b_hhc = opt(b_hh), w_hrc = opt(w_hr);
  if (!batch_sizes.empty() && batch_sizes[0] == xc.size(1) &&
      batch_sizes[batch_sizes.size() - 1] == xc.size(1))
    batch_sizes.clear();  // every row active at every step: the dense path
  ScanForwardOut out = dispatch(cell, xc, [&]<typename Cell, typename T>() {
    return scan_forward<Cell, T>(xc, h0c, c0c, w_ihc, w_hhc, b_ihc, b_hhc, w_hrc, batch_sizes, reverse, keep, ex.aux,
                                 ex.zoneout, ex.rec_mask, ex.cand_mask);
  });
  return {out.y, out.h_n, or_empty(out.c_n, xc), or_empty(out.gates, xc), or_empty(out.c, xc),
          or_empty(out.extra, xc)};
}

Nine scan_backward_op(c10::string_view cell_name, const at::Tensor& x, const at::Tensor& h0,
                                 const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                                 const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr, bool has_bias,
                                 const at::Tensor& y, const c10::optional<at::Tensor>& gates,
                                 const c10::optional<at::Tensor>& c_hist, const c10::optional<at::Tensor>& extra,
                                 const at::Tensor& dy, const at::Tensor& dh_n, const c10::optional<at::Tensor>& dc_n,
                                 at::IntArrayRef batch_sizes_in, bool reverse, bool need_dx,
                                 const c10::optional<at::Tensor>& aux, const c10::optional<at::Tensor>& zoneout,
                                 const c10::optional<at::Tensor>& rec_mask,
                                 const c10::optional<at::Tensor>& cand_mask, bool need_dh0) {
  const std::string cell(cell_name);
  const char* op = "gatedrnn::scan_backward";
  const auto [H, P] = check_layer(op, cell, x, h0, c0, w_ih, w_hh, w_hr, batch_sizes_in);
  const int64_t T_ = x.size(0), B = x.size(1), GH = w_hh.size(0);
  check_shape(op, "y", y, {T_, B, P}, x);
  check_shape(op, "dy", dy, {T_, B, P}, x);
  check_shape(op, "dh_n", dh_n, {B, P}, x);
  const Extras ex = check_extras(op, cell, x, H, P, aux, zoneout, rec_mask, cand_mask);
  const auto [saves_gates, extra_width, has_c, c_blocks] = dispatch(cell, x, [&]<typename Cell, typename T>() {
    return std::tuple<bool, int64_t, bool, int64_t>(
        Cell::kSavesGates, gatedrnn::extra_width<Cell>(H, P, ex.zoneout.defined()), Cell::kHasC, state_blocks<Cell>());
  });
  if (saves_gates) {
    TORCH_CHECK(gates.has_value(), op, ": cell '", cell, "' needs the gates saved by gatedrnn::scan(keep=True)");
    check_shape(op, "gates", *gates, {T_, B, GH}, x);
  }
  if (has_c) {
    TORCH_CHECK(c_hist.has_value() && dc_n.has_value(), op, ": cell '", cell, "' needs c_hist and dc_n");
    check_shape(op, "c_hist", *c_hist, {T_, B, c_blocks * H}, x);
    check_shape(op, "dc_n", *dc_n, {B, c_blocks * H}, x);
  }
  if (extra_width) {
    TORCH_CHECK(extra.has_value(), op, ": cell '", cell, "' needs the extra buffer saved by gatedrnn::scan");
    check_shape(op, "extra", *extra, {T_, B, extra_width}, x);
  }
  std::vector<int64_t> batch_sizes = batch_sizes_in.vec();
  const at::Tensor xc = x.contiguous(), h0c = h0.contiguous(), c0c = opt(c0), w_ihc = w_ih.contiguous(),
                   w_hhc = w_hh.contiguous(), w_hrc = opt(w_hr), yc = y.contiguous(), dyc = dy,
                   dh_nc = dh_n.contiguous(), dc_nc = opt(dc_n);
  if (!batch_sizes.empty() && batch_sizes[0] == xc.size(1) &&
      batch_sizes[batch_sizes.size() - 1] == xc.size(1))
    batch_sizes.clear();
  ScanBackwardOut g = dispatch(cell, xc, [&]<typename Cell, typename T>() {
    return scan_backward<Cell, T>(xc, h0c, c0c, w_ihc, w_hhc, w_hrc, has_bias, yc, opt(gates), opt(c_hist),
                                  opt(extra), dyc, dh_nc, dc_nc, batch_sizes, reverse, need_dx, ex.aux, ex.zoneout,
                                  ex.rec_mask, ex.cand_mask, need_dh0);
  });
  return {or_empty(g.dx, xc), g.dh0, or_empty(g.dc0, xc), g.dw_ih, g.dw_hh, or_empty(g.db_ih, xc),
          or_empty(g.db_hh, xc), or_empty(g.dw_hr, xc), or_empty(g.daux, xc)};
}

// The streaming step: checks every shape it indexes with, then one step through the stack of layers.
Three step_layers(const std::string& cell, const at::Tensor& x, const at::Tensor& h, const c10::optional<at::Tensor>& c,
                  const std::vector<c10::optional<at::Tensor>>& weights) {
  const char* op = "gatedrnn::step";
  const auto [gates, has_c, aux_blocks, c_blocks] = dispatch(cell, x, [&]<typename Cell, typename T>() {
    return std::tuple<int64_t, bool, int64_t, int64_t>(Cell::kGates, Cell::kHasC, Cell::kAux, state_blocks<Cell>());
  });
  TORCH_CHECK(c_blocks == 1, op, ": cell '", cell, "' has a state of ", c_blocks, " blocks besides h, which the "
              "streaming step kernel does not take; gatedrnn's layers step it on the reference path");
  TORCH_CHECK(aux_blocks == 0, op, ": cell '", cell, "' has extra parameters, which the streaming step kernel does "
              "not take; gatedrnn's layers step it on the reference path");
  TORCH_CHECK(x.dim() == 2 && h.dim() == 3 && h.size(1) == x.size(0), op, ": x should be (B, I) and h (L, B, P), got ",
              shape(x.sizes()), " and ", shape(h.sizes()));
  const int64_t L = h.size(0), B = h.size(1), P = h.size(2);
  TORCH_CHECK((int64_t)weights.size() == 5 * L, op, ": expected 5 weight slots per layer (w_ih, w_hh, b_ih, b_hh, "
              "w_hr), ", 5 * L, " for L = ", L, ", got ", weights.size());
  int64_t in_dim = x.size(1), H = P;
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK(weights[5 * l + 1].has_value() && weights[5 * l + 1]->dim() == 2 && weights[5 * l + 1]->size(0) % gates == 0,
                op, ": layer ", l, " needs w_hh of shape (", gates, "*H, P)");
    const int64_t GH = weights[5 * l + 1]->size(0);
    H = GH / gates;
    TORCH_CHECK(weights[5 * l].has_value(), op, ": layer ", l, " needs w_ih");
    check_shape(op, "w_ih", *weights[5 * l], {GH, in_dim}, x);
    check_shape(op, "w_hh", *weights[5 * l + 1], {GH, P}, x);
    for (int k : {2, 3})
      if (weights[5 * l + k].has_value()) check_shape(op, k == 2 ? "b_ih" : "b_hh", *weights[5 * l + k], {GH}, x);
    if (weights[5 * l + 4].has_value()) {
      TORCH_CHECK(cell == "lstm", op, ": only cell 'lstm' takes w_hr (a projection), got w_hr for cell '", cell, "'");
      check_shape(op, "w_hr", *weights[5 * l + 4], {P, H}, x);
    } else TORCH_CHECK(P == H, op, ": layer ", l, " without w_hr needs P = H, got P = ", P, ", H = ", H);
    in_dim = P;
  }
  check_shape(op, "h", h, {L, B, P}, x);
  if (has_c) {
    TORCH_CHECK(c.has_value(), op, ": cell '", cell, "' needs c");
    check_shape(op, "c", *c, {L, B, H}, x);
  }
  std::vector<at::Tensor> out =
      dispatch(cell, x, [&]<typename Cell, typename T>() -> std::vector<at::Tensor> {
        // only the cells checked above get a streaming kernel (fewer instantiations: a shorter first build)
        if constexpr (Cell::kAux == 0 && state_blocks<Cell>() == 1) return stack_step<Cell, T>(x, h, opt(c), weights);
        TORCH_CHECK(false, op, ": no streaming kernel for cell '", cell, "'");
        return {};
      });
  return {out[0], out[1], or_empty(out[2], x)};
}

Three step_op(c10::string_view cell_name, const at::Tensor& x, const at::Tensor& h, const c10::optional<at::Tensor>& c,
           const c10::List<c10::optional<at::Tensor>>& weight_list) {
  std::vector<c10::optional<at::Tensor>> weights;
  weights.reserve(weight_list.size());
  for (const c10::optional<at::Tensor>& w : weight_list) weights.push_back(w);
  return step_layers(std::string(cell_name), x, h, c, weights);
}

// A float32/float64 CPU strided tensor of `dtype` that the dispatcher would hand straight to the CPU kernel:
// no functorch wrapper, no Python dispatch key (a subclass, FakeTensor), not a lazily conjugated/negated view.
bool plain_operand(const at::Tensor& t, at::ScalarType dtype) {
  return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == dtype &&
         !t.is_conj() && !t.is_neg() && !t.key_set().has_any(c10::functorch_transforms_ks) &&
         !t.key_set().has(c10::DispatchKey::Python);
}

// One streaming step as a plain pybind call (`gatedrnn.layers.streaming`): the dispatcher boxes the operator's
// arguments (a string and a list of optional tensors) at every call, which at batch 1 costs more than the step's
// arithmetic. Returns None for anything but plain, same-dtype float32/float64 CPU tensors of the shapes the first
// layer's weights imply (a functorch wrapper, a subclass, half precision), under a dispatch mode or the tracer, or
// with GATEDRNN_BACKEND naming another path; the caller then takes the operator's path, whose checks and messages
// are the layers' own. Holds nothing between calls: torch's swap mode (torch.utils.swap_tensors under
// load_state_dict and .to()) refuses parameters that have other owners.
pybind11::object stream_step(const std::string& cell, const at::Tensor& x, const at::Tensor& h,
                             const c10::optional<at::Tensor>& c, const pybind11::dict& params,
                             const pybind11::tuple& names) {
  // What the operator would see and this call would bypass: a dispatch mode, the tracer, GATEDRNN_BACKEND set to
  // anything but the fused engine (os.environ writes go through putenv, so getenv reads the current value). Only
  // the exact spellings; another that _build.requested_backend accepts (case, spaces) takes the general path.
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0 || torch::jit::tracer::isTracing()) return pybind11::none();
  if (const char* backend = std::getenv("GATEDRNN_BACKEND");
      backend != nullptr && *backend != '\0' && std::strcmp(backend, "auto") != 0 && std::strcmp(backend, "fused") != 0)
    return pybind11::none();
  const at::ScalarType dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return pybind11::none();
  if (!plain_operand(x, dtype) || !plain_operand(h, dtype) || (c.has_value() && !plain_operand(*c, dtype)))
    return pybind11::none();
  // The weights read here from the layer's parameter dict by name (a None name: a weight the layer does not have;
  // a None value: the same), not converted from a list the caller builds at every step (~0.6 µs in Python). A
  // name the dict lacks declines: the layer's general path reads its weights as forward does.
  std::vector<c10::optional<at::Tensor>> weights;
  weights.reserve(names.size());
  for (const pybind11::handle name : names) {
    if (name.is_none()) {
      weights.emplace_back();
      continue;
    }
    PyObject* value = PyDict_GetItemWithError(params.ptr(), name.ptr());  // borrowed
    if (value == nullptr) {
      if (PyErr_Occurred()) throw pybind11::error_already_set();
      return pybind11::none();
    }
    if (value == Py_None) {
      weights.emplace_back();
      continue;
    }
    if (!THPVariable_Check(value)) return pybind11::none();
    const at::Tensor& w = THPVariable_Unpack(value);
    if (!plain_operand(w, dtype)) return pybind11::none();
    weights.emplace_back(w);
  }
  // shapes the first layer implies (step_layers checks every layer): x (B, I), h (L, B, P), c (L, B, H)
  const int64_t L = static_cast<int64_t>(weights.size()) / 5;
  if (L < 1 || static_cast<int64_t>(weights.size()) != 5 * L || !weights[0].has_value() || !weights[1].has_value() ||
      x.dim() != 2 || h.dim() != 3)
    return pybind11::none();
  const int64_t B = x.size(0), P = weights[1]->size(1);
  const int64_t H = weights[4].has_value() ? weights[4]->size(1) : P;
  if (x.size(1) != weights[0]->size(1) || h.size(0) != L || h.size(1) != B || h.size(2) != P) return pybind11::none();
  if (c.has_value() && (c->dim() != 3 || c->size(0) != L || c->size(1) != B || c->size(2) != H))
    return pybind11::none();
  // Released as the operator's Python binding does while its kernel runs, unless the weights are small enough for
  // the step to take ~1-2 µs, where releasing and taking the GIL back costs ~0.15 µs (3% of a step at H = 64).
  int64_t weight_bytes = 0;
  for (const c10::optional<at::Tensor>& w : weights)
    if (w.has_value()) weight_bytes += w->numel() * static_cast<int64_t>(w->element_size());
  Three out;
  {
    std::optional<pybind11::gil_scoped_release> no_gil;
    if (weight_bytes > (256 << 10)) no_gil.emplace();
    out = step_layers(cell, x, h, c, weights);
  }
  // in the layer's format, (y, (h, c)) or (y, h): no tuple to unpack and rebuild in Python
  const auto& [y, h_next, c_next] = out;
  if (c.has_value()) return pybind11::make_tuple(y, pybind11::make_tuple(h_next, c_next));
  return pybind11::make_tuple(y, h_next);
}

// A layer attribute as `module.name` reads it (object's attribute lookup: descriptors, then the instance dict; a
// torch.nn.Module's __getattr__ only serves submodules, parameters and buffers, none of which is read here), or
// null where the module has none. New reference.
PyObject* module_attr(PyObject* module, const char* name) {
  static std::vector<std::pair<const char*, PyObject*>> interned;  // never freed: alive as long as the library
  PyObject* key = nullptr;
  for (const auto& [text, object] : interned)
    if (text == name) key = object;
  if (key == nullptr) {
    key = PyUnicode_InternFromString(name);
    if (key == nullptr) throw pybind11::error_already_set();
    interned.emplace_back(name, key);
  }
  PyObject* value = PyObject_GenericGetAttr(module, key);
  if (value == nullptr) {
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)) throw pybind11::error_already_set();
    PyErr_Clear();
  }
  return value;
}

// The names stream_step reads a unidirectional stack's weights by (flat_weight_names in
// gatedrnn/layers/_weights.py: w_ih, w_hh, b_ih, b_hh, w_hr per layer), None for a weight the layer's settings
// leave out (bias=False, no proj_size), and how many are not None; made once per (layers, bias, projection).
std::pair<PyObject*, Py_ssize_t> weight_names(int64_t num_layers, bool bias, bool projected) {
  static std::map<std::tuple<int64_t, bool, bool>, std::pair<PyObject*, Py_ssize_t>> made;  // never freed
  const auto key = std::make_tuple(num_layers, bias, projected);
  if (auto found = made.find(key); found != made.end()) return found->second;
  static const char* kinds[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"};
  pybind11::tuple names(5 * num_layers);
  Py_ssize_t count = 0;
  for (int64_t l = 0; l < num_layers; ++l)
    for (int k = 0; k < 5; ++k) {
      const bool present = k == 4 ? projected : (k < 2 || bias);
      names[5 * l + k] = present ? pybind11::object(pybind11::str(std::string(kinds[k]) + "_l" + std::to_string(l)))
                                 : pybind11::object(pybind11::none());
      count += present;
    }
  return made[key] = {names.release().ptr(), count};
}

// gatedrnn.layers.streaming.streamed's checks and call in one: a layer's step under no_grad on a state from the
// previous step, read from the module itself (each line of Python there cost ~50 ns of a ~5 us step at H = 64).
// Returns None for what the layer's general path serves (grad mode, bidirectional, zoneout, a regulariser drawing
// noise while training, a cell without a step kernel per `kernel_facts(mode) -> (streams, has_c)`, which the
// caller passes and this call memoises per mode, a state or input that is not an exact Tensor (tuple), and what
// stream_step declines), NotImplemented where the registered parameters are not exactly the weights the settings
// name (a parametrized weight: the caller reads each by name and calls stream_step), else (y, state) in the
// layer's format, unbatched x (I,) and state (L, ·) as well.
pybind11::object module_step(pybind11::handle module, pybind11::handle x_obj, pybind11::handle state,
                             pybind11::handle kernel_facts) {
  if (state.is_none() || at::GradMode::is_enabled()) return pybind11::none();
  auto attr = [&](const char* name) {
    return pybind11::reinterpret_steal<pybind11::object>(module_attr(module.ptr(), name));
  };
  auto truthy = [](const pybind11::object& value) {
    const int truth = PyObject_IsTrue(value.ptr());
    if (truth < 0) throw pybind11::error_already_set();
    return truth == 1;
  };
  const pybind11::object bidirectional = attr("bidirectional"), zoneout = attr("zoneout"), mode = attr("mode"),
                         training = attr("training"), num_layers = attr("num_layers");
  if (!bidirectional || !zoneout || !mode || !training || !num_layers || !PyUnicode_Check(mode.ptr()) ||
      !PyLong_CheckExact(num_layers.ptr()) || truthy(bidirectional))
    return pybind11::none();
  // made under the GIL without a static's initialisation guard, which a thread switch inside Python (a GC run) would
  // leave held: two threads may both make it once, and one copy leaks
  static PyObject* no_zoneout = nullptr;
  if (no_zoneout == nullptr) no_zoneout = pybind11::make_tuple(0.0, 0.0).release().ptr();  // never freed
  const int zoneout_differs = PyObject_RichCompareBool(zoneout.ptr(), no_zoneout, Py_NE);
  if (zoneout_differs < 0) throw pybind11::error_already_set();
  if (zoneout_differs) return pybind11::none();
  const std::string cell = mode.cast<std::string>();
  static std::vector<std::tuple<std::string, bool, bool>> facts;  // (mode, streams, has_c), asked once per mode
  const std::tuple<std::string, bool, bool>* known = nullptr;
  for (const auto& entry : facts)
    if (std::get<0>(entry) == cell) known = &entry;
  if (known == nullptr) {
    const auto [streams, has_c] = kernel_facts(mode).cast<std::pair<bool, bool>>();
    facts.emplace_back(cell, streams, has_c);
    known = &facts.back();
  }
  const bool has_c = std::get<2>(*known);
  const int64_t layers = num_layers.cast<int64_t>();
  if (!std::get<1>(*known) || layers < 1) return pybind11::none();
  // the regularisers that draw noise while training (zoneout is checked above), as the layer's _one_call_serves
  if (truthy(training)) {
    for (const char* name : {"recurrent_dropout", "weight_drop", "candidate_dropout"}) {
      const pybind11::object value = attr(name);
      if (!value || truthy(value)) return pybind11::none();
    }
    const pybind11::object dropout = attr("dropout");
    if (!dropout || (layers > 1 && truthy(dropout))) return pybind11::none();
  }
  // the input and state as the layer returned them, exact tensors (a subclass or a Parameter goes the general way)
  auto exact_tensor = [](PyObject* object) {
    return Py_TYPE(object) == reinterpret_cast<PyTypeObject*>(THPVariableClass);
  };
  if (!exact_tensor(x_obj.ptr())) return pybind11::none();
  PyObject *h_obj = state.ptr(), *c_obj = nullptr;
  if (has_c) {
    if (!PyTuple_CheckExact(h_obj) || PyTuple_GET_SIZE(h_obj) != 2) return pybind11::none();
    c_obj = PyTuple_GET_ITEM(h_obj, 1), h_obj = PyTuple_GET_ITEM(h_obj, 0);
    if (!exact_tensor(c_obj)) return pybind11::none();
  }
  if (!exact_tensor(h_obj)) return pybind11::none();
  const pybind11::object bias = attr("bias"), proj_size = attr("proj_size"), params = attr("_parameters");
  if (!bias || !proj_size || !params || !PyDict_CheckExact(params.ptr())) return pybind11::none();
  const auto [names, count] = weight_names(layers, truthy(bias), truthy(proj_size));
  if (PyDict_GET_SIZE(params.ptr()) != count) return pybind11::reinterpret_borrow<pybind11::object>(Py_NotImplemented);
  const pybind11::tuple name_tuple = pybind11::reinterpret_borrow<pybind11::tuple>(names);
  const pybind11::dict param_dict = pybind11::reinterpret_borrow<pybind11::dict>(params);
  const at::Tensor& x = THPVariable_Unpack(x_obj.ptr());
  const at::Tensor& h = THPVariable_Unpack(h_obj);
  c10::optional<at::Tensor> c;
  if (has_c) c = THPVariable_Unpack(c_obj);
  if (x.dim() != 1) return stream_step(cell, x, h, c, param_dict, name_tuple);
  // unbatched: (I,) and a state without N
  if (h.dim() != 2 || (c.has_value() && c->dim() != 2)) return pybind11::none();
  if (c.has_value()) c = c->unsqueeze(1);
  pybind11::object out = stream_step(cell, x.unsqueeze(0), h.unsqueeze(1), c, param_dict, name_tuple);
  if (out.is_none()) return out;
  const pybind11::tuple pair = out.cast<pybind11::tuple>();
  const at::Tensor y = pair[0].cast<at::Tensor>().squeeze(0);
  if (!has_c) return pybind11::make_tuple(y, pair[1].cast<at::Tensor>().squeeze(1));
  const pybind11::tuple next = pair[1].cast<pybind11::tuple>();
  return pybind11::make_tuple(y, pybind11::make_tuple(next[0].cast<at::Tensor>().squeeze(1),
                                                      next[1].cast<at::Tensor>().squeeze(1)));
}

// gatedrnn::scan's forward without autograd as a plain pybind call (`gatedrnn.engine.fused`, nothing needing a
// gradient): the dispatcher's boxing of 16 arguments costs ~20 us a call, the whole kernel's time at batch 1 and
// one step. Same checks, same kernel (scan_op). Returns None for anything but plain same-dtype float32/float64 CPU
// tensors (see plain_operand), and the caller then calls the operator, whose result this equals bit for bit.
std::optional<Six> scan_direct(const std::string& cell, const at::Tensor& x, const at::Tensor& h0,
                               const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                               const c10::optional<at::Tensor>& w_hr, const std::vector<int64_t>& batch_sizes,
                               bool reverse, bool keep, const c10::optional<at::Tensor>& aux,
                               const c10::optional<at::Tensor>& zoneout, const c10::optional<at::Tensor>& rec_mask,
                               const c10::optional<at::Tensor>& cand_mask) {
  const at::ScalarType dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return std::nullopt;
  if (!plain_operand(x, dtype) || !plain_operand(h0, dtype) || !plain_operand(w_ih, dtype) ||
      !plain_operand(w_hh, dtype))
    return std::nullopt;
  for (const c10::optional<at::Tensor>* t : {&c0, &b_ih, &b_hh, &w_hr, &aux, &zoneout, &rec_mask, &cand_mask})
    if (t->has_value() && !plain_operand(**t, dtype)) return std::nullopt;
  pybind11::gil_scoped_release no_gil;  // as the operator's Python binding does while its kernel runs
  return scan_op(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, keep, aux, zoneout, rec_mask,
                 cand_mask);
}

// gatedrnn::scan_backward as a plain pybind call, for the backward of an eager call that builds no graph
// (`gatedrnn.engine.ops`, ScanFunction.backward): the operator's boxing and the autograd.Function around it cost
// ~100 µs a call, as much as the kernel of an RNN's backward at T = 1, B = 8, H = 512. Same checks and kernel
// (scan_backward_op); None for anything but plain same-dtype float32/float64 CPU tensors.
std::optional<Nine> scan_backward_direct(
    const std::string& cell, const at::Tensor& x, const at::Tensor& h0, const c10::optional<at::Tensor>& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr, bool has_bias,
    const at::Tensor& y, const c10::optional<at::Tensor>& gates, const c10::optional<at::Tensor>& c_hist,
    const c10::optional<at::Tensor>& extra, const at::Tensor& dy, const at::Tensor& dh_n,
    const c10::optional<at::Tensor>& dc_n, const std::vector<int64_t>& batch_sizes, bool reverse, bool need_dx,
    const c10::optional<at::Tensor>& aux, const c10::optional<at::Tensor>& zoneout,
    const c10::optional<at::Tensor>& rec_mask, const c10::optional<at::Tensor>& cand_mask, bool need_dh0) {
  const at::ScalarType dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return std::nullopt;
  for (const at::Tensor* t : {&x, &h0, &w_ih, &w_hh, &y, &dy, &dh_n})
    if (!plain_operand(*t, dtype)) return std::nullopt;
  for (const c10::optional<at::Tensor>* t : {&c0, &w_hr, &gates, &c_hist, &extra, &dc_n, &aux, &zoneout, &rec_mask,
                                             &cand_mask})
    if (t->has_value() && !plain_operand(**t, dtype)) return std::nullopt;
  pybind11::gil_scoped_release no_gil;
  return scan_backward_op(cell, x, h0, c0, w_ih, w_hh, w_hr, has_bias, y, gates, c_hist, extra, dy, dh_n, dc_n,
                          batch_sizes, reverse, need_dx, aux, zoneout, rec_mask, cand_mask, need_dh0);
}

// (L * D, B, ·) from L * D final states of one shape (at::stack without the dispatcher: see cpu_empty)
at::Tensor stacked(const std::vector<at::Tensor>& states) {
  std::vector<int64_t> sizes = states[0].sizes().vec();
  sizes.insert(sizes.begin(), static_cast<int64_t>(states.size()));
  at::Tensor out = cpu_empty(sizes, states[0].options());
  char* dest = static_cast<char*>(out.data_ptr());
  for (const at::Tensor& state : states) {
    TORCH_CHECK(state.sizes() == states[0].sizes(), "stack_direct: final states of different shapes");
    const at::Tensor part = state.contiguous();
    if (part.nbytes() > 0) std::memcpy(dest, part.data_ptr(), part.nbytes());
    dest += part.nbytes();
  }
  return out;
}

// A whole stack's forward where nothing needs a gradient, nothing is traced and no regulariser draws noise, on a
// padded x (T, B, I), as one pybind call (`gatedrnn.engine.fused.run_stack_inference`): per layer and direction
// the kernel of scan_direct, with the layer's Python loop, its state slicing and the stacking of h_n moved here
// (~40 us a forward at batch 1 on a 2-core VM, where a batch-1 step costs ~1 us: benchmarks/micro/stack_call.py). h0, c0: (L * D, B, ·) or None
// for zeros of (B, out_size) and (B, hidden_size); weights: 5 per layer and direction (LayerWeights' order),
// layer-major. Returns y (T, B, D * P), h_n (L * D, B, P) and c_n (L * D, B, H) (undefined, None in Python, for
// cells without a cell state), or None where scan_direct would decline the tensors.
std::optional<Three> stack_direct(const std::string& cell, const at::Tensor& x, const c10::optional<at::Tensor>& h0,
                                  const c10::optional<at::Tensor>& c0, bool has_c,
                                  const std::vector<c10::optional<at::Tensor>>& weights, int64_t num_layers,
                                  bool bidirectional, int64_t out_size, int64_t hidden_size) {
  const at::ScalarType dtype = x.scalar_type();
  const int64_t D = bidirectional ? 2 : 1, count = num_layers * D;
  if ((dtype != at::kFloat && dtype != at::kDouble) || !plain_operand(x, dtype) || x.dim() != 3 || num_layers < 1 ||
      static_cast<int64_t>(weights.size()) != 5 * count)
    return std::nullopt;
  for (const c10::optional<at::Tensor>* t : {&h0, &c0})
    if (t->has_value() && !(plain_operand(**t, dtype) && (*t)->dim() == 3 && (*t)->size(0) == count))
      return std::nullopt;
  for (int64_t k = 0; k < count; ++k)
    if (!weights[5 * k].has_value() || !weights[5 * k + 1].has_value()) return std::nullopt;
  for (const c10::optional<at::Tensor>& w : weights)
    if (w.has_value() && !plain_operand(*w, dtype)) return std::nullopt;
  pybind11::gil_scoped_release no_gil;
  const int64_t B = x.size(1);
  const c10::optional<at::Tensor> none;
  std::vector<at::Tensor> h_finals, c_finals;
  at::Tensor input = x;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    std::vector<at::Tensor> outputs;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = layer * D + d;
      const c10::optional<at::Tensor>* w = &weights[5 * k];
      // zeros of the module's sizes (not the weights'): a replaced weight of a wrong shape gets scan_op's message
      const at::Tensor h_start = h0.has_value() ? (*h0)[k] : cpu_zeros({B, out_size}, x.options());
      const c10::optional<at::Tensor> c_start = !has_c ? none : c10::optional<at::Tensor>(
          c0.has_value() ? (*c0)[k] : cpu_zeros({B, hidden_size}, x.options()));
      auto [y, h_n, c_n, gates, c_hist, extra] = scan_op(cell, input, h_start, c_start, *w[0], *w[1], w[2], w[3],
                                                         w[4], {}, d == 1, false, none, none, none, none);
      outputs.push_back(y);
      h_finals.push_back(h_n);
      if (has_c) c_finals.push_back(c_n);
    }
    input = D == 1 ? outputs[0] : at::cat(outputs, 2);
  }
  return Three{input, stacked(h_finals), has_c ? stacked(c_finals) : at::Tensor()};
}

// Fills out (rows, W) with `scale` where a uniform draw in [0, 1) is below keep[w], else 0: the masks of
// gatedrnn/engine/noise.py. Counter-based, so the result depends on the seed alone, not on how rows are split
// over threads: each row gets a 64-bit key (splitmix64 of the seed and the row), and element j of the row is two
// rounds of a 32-bit integer hash (Wellons' lowbias32) of j under that key, 24 bits of which make the uniform.
// 32-bit lanes vectorise (16 per AVX-512 register, 8 per AVX2): ~0.1 ns per element where a 64-bit splitmix per
// element cost ~5 ns, which made the mask draw most of a zoneout step's overhead.
inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// One row; its own function with restrict pointers and values, so that the loop vectorises (inside the
// parallel lambda the captured scale and keep were reloaded after every store).
template <typename T>
void fill_keep_row(T* __restrict__ row, const float* __restrict__ keep, int64_t W, T scale, uint64_t key) {
  const uint32_t key_lo = static_cast<uint32_t>(key), key_hi = static_cast<uint32_t>(key >> 32);
  for (int64_t j = 0; j < W; ++j) {
    const uint32_t bits = lowbias32(lowbias32(static_cast<uint32_t>(j) * 0x9E3779B9U + key_lo) ^ key_hi);
    const float u = static_cast<float>(static_cast<int32_t>(bits >> 8)) * (1.0f / 16777216.0f);
    row[j] = u < keep[j] ? scale : T(0);
  }
}

template <typename T>
void fill_keep_mask(T* out, int64_t rows, int64_t W, const float* keep, T scale, uint64_t seed) {
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(W, 1)),
                   [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      uint64_t z = seed + static_cast<uint64_t>(r + 1) * 0x9E3779B97F4A7C15ull;  // splitmix64: the row's key
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      fill_keep_row<T>(out + r * W, keep, W, scale, z ^ (z >> 31));
    }
  });
}

void keep_mask(at::Tensor out, const at::Tensor& keep, double scale, int64_t seed) {
  TORCH_CHECK(out.is_contiguous() && out.dim() >= 1 && out.device().is_cpu(), "keep_mask: out should be a contiguous "
              "CPU tensor, got shape ", shape(out.sizes()));
  const int64_t W = out.size(-1);
  TORCH_CHECK(keep.scalar_type() == at::kFloat && keep.is_contiguous() && keep.dim() == 1 && keep.size(0) == W,
              "keep_mask: keep should be float32 of shape (", W, ",), got ", keep.scalar_type(), " ", shape(keep.sizes()));
  const int64_t rows = W ? out.numel() / W : 0;
  const uint64_t s = static_cast<uint64_t>(seed);
  if (out.scalar_type() == at::kFloat) {
    fill_keep_mask<float>(out.data_ptr<float>(), rows, W, keep.data_ptr<float>(), static_cast<float>(scale), s);
  } else {
    TORCH_CHECK(out.scalar_type() == at::kDouble, "keep_mask: out should be float32 or float64, got ", out.scalar_type());
    fill_keep_mask<double>(out.data_ptr<double>(), rows, W, keep.data_ptr<float>(), scale, s);
  }
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
  m.def("gemm_choices", [] {
    pybind11::list out;
    for (const gatedrnn::GemmDecision& d : gatedrnn::GemmChoice::instance().all()) {
      pybind11::dict row;
      row["dtype"] = d.dtype_bytes == 4 ? "float32" : "float64";
      row["op"] = d.op == 0 ? "step" : "sequence";  // a weight every step reuses, or a GEMM after backward's loop
      row["N"] = d.N, row["K"] = d.K, row["rows"] = d.rows, row["transposed"] = d.transposed;
      row["blas_us"] = d.blas_us, row["own_us"] = d.own_us, row["choice"] = d.own ? "own" : "blas";
      out.append(row);
    }
    return out;
  }, "the GEMMs timed so far in this process (op: step weights, or the sequence GEMMs after backward's loop): "
     "shape, BLAS and PanelGemm times (us), the choice");
  m.def("gemm_weights", [] {
    gatedrnn::GemmChoice& choice = gatedrnn::GemmChoice::instance();
    return std::make_pair(choice.blas_weights.load(), choice.own_weights.load());
  }, "(BLAS, PanelGemm): how many step weights ran each since the library was loaded");
  m.def("last_forward_split", [] {
    static const char* names[] = {"serial", "rows_per_step", "row_region", "unit_region", "project_ahead",
                                  "in_place_steps", "row_region_own_rows"};
    return std::string(names[gatedrnn::last_forward_split.load()]);
  }, "how the last forward split its steps over threads (scan_kernel.h ForwardSplit)");
  m.def("keep_mask", &gatedrnn::keep_mask, "fill out (rows, W) with scale where uniform < keep[w], else 0");
  m.def("stream_step", &gatedrnn::stream_step,
        "(cell, x (B, I), h (L, B, P), c (L, B, H) or None, params: {name: tensor or None}, names: 5 per layer, "
        "None for an absent weight) -> (y, (h, c)), or (y, h) without c, or None");
  m.def("module_step", &gatedrnn::module_step,
        "(module, x, state, kernel_facts: mode -> (streams, has_c)) -> (y, state) in the layer's format, None for "
        "what the layer's general path serves, NotImplemented where its weights are not exactly its parameters "
        "(gatedrnn.layers.streaming.streamed)");
  m.def("stack_direct", &gatedrnn::stack_direct,
        "(cell, x (T, B, I), h0, c0 (L*D, B, ·) or None, has_c, weights: 5 per layer and direction, num_layers, "
        "bidirectional, out_size, hidden_size) -> (y, h_n, c_n) or None");
  // the kernels touch no Python object: other Python threads run meanwhile, as during the operators' kernels
  m.def("minimal_scan_forward", &gatedrnn::minimal::forward,
        "(cell 'mingru' | 'minlstm', x_proj (T, B, G*H), h0 (B, H)) -> h (T, B, H) (minimal_scan.h)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("minimal_scan_backward", &gatedrnn::minimal::backward,
        "(cell, x_proj, h0, h (T, B, H), dh (T, B, H)) -> (dx_proj (T, B, G*H), dh0 (B, H))",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("scan_backward_direct", &gatedrnn::scan_backward_direct,
        "gatedrnn::scan_backward's arguments -> its 9 outputs, or None for anything but plain float32/float64 CPU "
        "tensors");
  m.def("scan_direct", &gatedrnn::scan_direct,
        "gatedrnn::scan's arguments -> its 6 outputs, or None for anything but plain float32/float64 CPU tensors");
}
