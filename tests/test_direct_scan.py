"""The layers' short ways into the fused kernel (`gatedrnn.engine.ops`): `scan_direct` (the engine's plain pybind
entry, used where nothing needs a gradient and inside ScanFunction's forward), `scan_backward_direct` (ScanFunction's
backward where it builds no graph), `stack_direct` (a whole stack's
inference in one call, `gatedrnn.engine.run_stack_inference`) and `scan_differentiable`
(ScanFunction.apply without its per-call signature binding). Each must give bit for bit what the operator gives,
and step aside (the operator runs) wherever the dispatcher has work to do: a TorchDispatchMode, torch.func's
transforms, the profiler, half precision, tensors that are not plain CPU float tensors."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gatedrnn
from gatedrnn import engine
from gatedrnn.engine import _build, ops
from gatedrnn.layers import aten

from op_counter import GatedrnnOps

library = _build.load()
pytestmark = pytest.mark.skipif(library is None, reason="the fused engine is not built")

LAYERS = {
    "lstm": lambda: gatedrnn.LSTM(5, 7),
    "lstm-proj-2layers-bi": lambda: gatedrnn.LSTM(5, 7, num_layers=2, proj_size=3, bidirectional=True),
    "gru-bi": lambda: gatedrnn.GRU(5, 7, bidirectional=True),
    "rnn-relu-2layers": lambda: gatedrnn.RNN(5, 7, num_layers=2, nonlinearity="relu"),
    "peephole (aux)": lambda: gatedrnn.LSTM(5, 7, variant="peephole"),
    "zoneout (eval)": lambda: gatedrnn.LSTM(5, 7, zoneout=0.2).eval(),
}


@pytest.fixture
def direct_calls(monkeypatch):
    """Counts the layer-directions the direct entries ran (scan_direct: one a call; stack_direct, a whole stack's
    inference: every layer and direction of the call) and the calls that declined."""
    counts = {"taken": 0, "declined": 0, "backward": 0}
    scan, stack, backward = library.scan_direct, library.stack_direct, library.scan_backward_direct

    def counting_scan(*args):
        out = scan(*args)
        counts["taken" if out is not None else "declined"] += 1
        return out

    def counting_stack(cell, x, h0, c0, has_c, weights, *sizes):
        out = stack(cell, x, h0, c0, has_c, weights, *sizes)
        if out is None:
            counts["declined"] += 1
        else:
            counts["taken"] += len(weights) // 5
        return out

    def counting_backward(*args):
        out = backward(*args)
        counts["backward" if out is not None else "declined"] += 1
        return out

    monkeypatch.setattr(library, "scan_direct", counting_scan)
    monkeypatch.setattr(library, "scan_backward_direct", counting_backward)
    monkeypatch.setattr(library, "stack_direct", counting_stack)
    return counts


def _operator_only(monkeypatch):
    """Force the operator path: the direct entry declines everything."""
    monkeypatch.setattr(ops, "_direct_scan", lambda args: None)


def _run(layer, x, hx=None, *, grad=False):
    """(outputs and final states, parameter gradients) of one forward (and backward with grad)."""
    layer.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grad):
        output, hidden = layer(x, hx)
    flat = [output, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    grads = []
    if grad:
        sum(t.square().sum() for t in flat).backward()
        grads = [p.grad.clone() for p in layer.parameters()]
    return [t.detach().clone() for t in flat], grads


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_direct_path_equals_the_operator_bit_for_bit(name, grad, direct_calls, monkeypatch):
    torch.manual_seed(0)
    layer = LAYERS[name]().double() if name == "gru-bi" else LAYERS[name]()
    x = torch.randn(6, 3, 5, dtype=next(layer.parameters()).dtype)
    hx_shape = (layer.num_layers * layer.num_directions, 3)
    hx = None if name != "lstm" else (torch.randn(*hx_shape, 7), torch.randn(*hx_shape, 7))
    direct = _run(layer, x, hx, grad=grad)
    directions = layer.num_layers * layer.num_directions
    assert direct_calls == {"taken": directions, "declined": 0, "backward": directions if grad else 0}
    _operator_only(monkeypatch)
    with GatedrnnOps() as counted:  # the operator runs now (and the mode alone would also turn the direct path off)
        operator = _run(layer, x, hx, grad=grad)
    assert counted.counts["scan"] == directions and counted.counts["scan_backward"] == (directions if grad else 0)
    for got, want in zip(direct[0] + direct[1], operator[0] + operator[1]):
        assert torch.equal(got, want)


def test_unbatched_input_batch_first_and_packed_take_it_too(direct_calls):
    torch.manual_seed(1)
    layer = gatedrnn.GRU(5, 7, batch_first=True)
    with torch.no_grad():
        layer(torch.randn(4, 5))
        layer(torch.randn(2, 4, 5))
        layer(torch.nn.utils.rnn.pack_sequence([torch.randn(4, 5), torch.randn(2, 5)]))
    assert direct_calls == {"taken": 3, "declined": 0, "backward": 0}


def test_a_dispatch_mode_sees_the_operator(direct_calls):
    """FakeTensorMode, FunctionalTensorMode, op counters: every TorchDispatchMode is a dispatcher feature."""
    class Recording(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(2)
    layer = gatedrnn.LSTM(5, 7)
    x = torch.randn(4, 2, 5)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            want = layer(x)[0]
            with Recording() as mode:
                got = layer(x)[0]
        assert "gatedrnn.scan.default" in mode.names
        assert torch.equal(got, want)
    assert direct_calls["taken"] == 2


def test_torch_func_transforms_take_the_operator(direct_calls):
    torch.manual_seed(3)
    layer = gatedrnn.LSTM(5, 7)
    xs = torch.randn(3, 4, 2, 5)  # (vmap, T, B, I)
    with torch.no_grad():
        mapped = torch.func.vmap(lambda x: layer(x)[0])(xs)
        looped = torch.stack([layer(x)[0] for x in xs])
    assert direct_calls["declined"] == 0 and direct_calls["taken"] == 3  # the loop only: vmap never asked
    torch.testing.assert_close(mapped, looped, rtol=0, atol=1e-6)

    params = dict(layer.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(layer, p, (xs[0],))[0].sum())(params)
    layer.zero_grad(set_to_none=True)
    layer(xs[0])[0].sum().backward()
    for name, p in layer.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)


def test_the_profiler_records_the_operator(direct_calls):
    layer = gatedrnn.GRU(5, 7)
    with torch.no_grad(), torch.profiler.profile() as profile:
        layer(torch.randn(3, 1, 5))
    assert any(event.name == "gatedrnn::scan" for event in profile.events())
    assert direct_calls["taken"] == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_the_reference_and_the_entry_declines_it(dtype, direct_calls):
    torch.manual_seed(4)
    layer = gatedrnn.LSTM(5, 7).to(dtype)
    with torch.no_grad():
        output, _ = layer(torch.randn(3, 2, 5, dtype=dtype))
    assert output.dtype == dtype and direct_calls == {"taken": 0, "declined": 0, "backward": 0}
    # the entry itself: None for what the kernel does not take, where the operator raises or dispatches elsewhere
    w = layer.layer_weights(0)
    x, h = torch.randn(3, 2, 5, dtype=dtype), torch.zeros(2, 7, dtype=dtype)
    assert library.scan_direct("lstm", x, h, h, *w[:5], [], False, False, None, None, None, None) is None


def test_the_entry_declines_what_is_not_a_plain_cpu_float_tensor():
    torch.manual_seed(5)
    w = gatedrnn.LSTM(5, 7).layer_weights(0)
    x, h = torch.randn(3, 2, 5), torch.zeros(2, 7)

    def call(x=x, h=h, c=h, w_ih=w.w_ih):
        return library.scan_direct("lstm", x, h, c, w_ih, *w[1:5], [], False, False, None, None, None, None)

    assert call() is not None
    assert call(x=x.to("meta")) is None  # another device
    assert call(c=h.double()) is None  # mixed dtypes: the operator's check names them
    assert call(w_ih=w.w_ih.detach().to_sparse()) is None  # another layout
    with torch._subclasses.fake_tensor.FakeTensorMode() as fake:
        fake_x = fake.from_tensor(x)
    assert call(x=fake_x) is None  # a Python dispatch key
    with pytest.raises(RuntimeError, match=r"gatedrnn::scan: h0 should have shape \[2, 7\], got \[2, 6\]"):
        call(h=torch.zeros(2, 6), c=torch.zeros(2, 7))  # a plain tensor of a wrong shape: the operator's own check


def test_scan_differentiable_is_scan_function_apply():
    torch.manual_seed(6)
    layer = gatedrnn.LSTM(5, 7)
    w = layer.layer_weights(0)
    x = torch.randn(4, 2, 5, requires_grad=True)
    h, c = torch.randn(2, 7, requires_grad=True), torch.randn(2, 7, requires_grad=True)
    args = ("lstm", x, h, c, *w[:5], [], False, True, None, None, None, None)
    results = []
    for apply in (ops.scan_differentiable, ops.ScanFunction.apply):
        y, h_n, c_n, *_ = apply(*args)
        inputs = (x, h, c, *w[:4])
        results.append([y, h_n, c_n, *torch.autograd.grad((y.sum() + h_n.square().sum() + c_n.sum()), inputs)])
    for got, want in zip(*results):
        assert torch.equal(got, want)


def test_onnx_flags_read_directly_agree_with_torch_onnx(monkeypatch):
    import torch.onnx
    from torch.onnx._internal.exporter import _flags
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    assert aten._onnx_flags() is not None  # this torch keeps them where aten reads them
    assert aten._onnx_exporting() is False is torch.onnx.is_in_onnx_export()
    monkeypatch.setattr(_flags, "_is_onnx_exporting", True)
    assert aten._onnx_exporting() is True is torch.onnx.is_in_onnx_export()
    monkeypatch.setattr(_flags, "_is_onnx_exporting", False)
    monkeypatch.setattr(GLOBALS, "in_onnx_export", True)
    assert aten._onnx_exporting() is True is torch.onnx.is_in_onnx_export()


STACKS = {
    "lstm-proj-2layers-bi, hx": (lambda: gatedrnn.LSTM(5, 7, num_layers=2, proj_size=3, bidirectional=True), True),
    "gru-3layers, batch_first": (lambda: gatedrnn.GRU(5, 7, num_layers=3, batch_first=True), False),
    "rnn-bi, double, hx": (lambda: gatedrnn.RNN(5, 7, bidirectional=True, dtype=torch.float64), True),
    "lstm, training, no regulariser": (lambda: gatedrnn.LSTM(5, 7, num_layers=2).train(), False),
}


@pytest.mark.parametrize("name", STACKS)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_stack_inference_equals_the_layer_by_layer_path(name, batched, direct_calls, monkeypatch):
    """Where nothing needs a gradient, a whole stack runs in one stack_direct call: outputs and final states equal
    the layer-by-layer path bit for bit, and the states are tensors of their own (h_n.detach_() works, as in
    torch.nn), not views."""
    torch.manual_seed(7)
    make, with_hx = STACKS[name]
    layer = make()
    dtype = layer.weight_ih_l0.dtype
    count = layer.num_layers * layer.num_directions
    x = torch.randn(6, 3, 5, dtype=dtype) if batched else torch.randn(6, 5, dtype=dtype)
    rows = (count, 3) if batched else (count,)
    hx = None
    if with_hx:
        h = torch.randn(*rows, layer.proj_size or 7, dtype=dtype)
        hx = (h, torch.randn(*rows, 7, dtype=dtype)) if isinstance(layer, gatedrnn.LSTM) else h
    with torch.no_grad():
        fast = _flat(layer(x, hx))
    assert direct_calls == {"taken": count, "declined": 0, "backward": 0}
    monkeypatch.setattr(engine, "run_stack_inference", lambda *args, **kwargs: None)
    with torch.no_grad():
        slow = _flat(layer(x, hx))
    assert direct_calls["taken"] == 2 * count  # the layer-by-layer path: scan_direct per layer and direction
    for got, want in zip(fast, slow):
        assert torch.equal(got, want)
    if batched:
        for state in fast[1:]:
            state.detach_()  # raises for a view


def test_stack_inference_draws_noise_as_the_reference_does(direct_calls, monkeypatch):
    """A regulariser that draws masks (zoneout while training) keeps the layer-by-layer path and draws each mask
    once: under no_grad the same seed gives the reference scan's output."""
    layer = gatedrnn.LSTM(5, 7, zoneout=0.3, recurrent_dropout=0.2).train()
    x = torch.randn(6, 3, 5)
    runs = []
    for backend in ("", "reference"):
        monkeypatch.setenv("GATEDRNN_BACKEND", backend)
        torch.manual_seed(8)
        with torch.no_grad():
            runs.append(layer(x)[0])
    assert direct_calls == {"taken": 1, "declined": 0, "backward": 0}
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-6)


def _flat(result) -> list[torch.Tensor]:
    output, hidden = result
    return [output, *(hidden if isinstance(hidden, tuple) else (hidden,))]


PLAIN = {
    "lstm-2layers-bi-proj, batch_first": lambda: gatedrnn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3,
                                                               batch_first=True),
    "gru, double": lambda: gatedrnn.GRU(5, 7, dtype=torch.float64),
    "rnn-relu-2layers, no bias": lambda: gatedrnn.RNN(5, 7, num_layers=2, nonlinearity="relu", bias=False),
    "lstm, parametrized W_hh": lambda: torch.nn.utils.parametrizations.weight_norm(gatedrnn.LSTM(5, 7),
                                                                                   name="weight_hh_l0"),
    "lstm, training, no regulariser": lambda: gatedrnn.LSTM(5, 7).train(),
}


@pytest.mark.parametrize("name", PLAIN)
def test_plain_inference_equals_the_general_path(name, direct_calls, monkeypatch):
    """forward's inline path for inference (no_grad, a batched tensor, no hx: `_plain_inference`) runs the stack in
    one stack_direct call and returns what the general path returns, bit for bit, in the same structure."""
    torch.manual_seed(9)
    layer = PLAIN[name]()
    dtype = layer.weight_ih_l0.dtype
    x = torch.randn(3, 6, 5, dtype=dtype) if layer.batch_first else torch.randn(6, 3, 5, dtype=dtype)
    with torch.no_grad():
        plain = layer._plain_inference(x)
        assert plain is not None
        monkeypatch.setattr(type(layer), "_plain_inference", lambda self, input: None)
        general = layer(x)
    assert direct_calls["declined"] == 0
    assert type(plain[1]) is type(general[1])
    for got, want in zip(_flat(plain), _flat(general)):
        assert got.shape == want.shape and torch.equal(got, want)


class _OwnWeights(gatedrnn.LSTM):
    def layer_weights(self, layer, direction=0):  # a subclass that hands the engine other weights
        weights = super().layer_weights(layer, direction)
        return weights._replace(w_hh=2 * weights.w_hh)


@pytest.mark.parametrize("case", ["zoneout", "peephole", "float64 input", "2-D input", "wrong size", "no steps",
                                  "autocast", "GATEDRNN_BACKEND=reference", "floor=torch", "own layer_weights"])
def test_plain_inference_declines_what_the_general_path_must_handle(case, monkeypatch):
    """Anything the inline path does not serve exactly as the general path would returns None before computing:
    the general path then runs (torch's op, the reference loop, the layer-by-layer noise) or raises its message."""
    layer = {"zoneout": lambda: gatedrnn.LSTM(5, 7, zoneout=0.1).eval(),
             "peephole": lambda: gatedrnn.LSTM(5, 7, variant="peephole"),
             "own layer_weights": lambda: _OwnWeights(5, 7)}.get(case, lambda: gatedrnn.LSTM(5, 7))()
    x = {"float64 input": torch.randn(6, 3, 5, dtype=torch.float64), "2-D input": torch.randn(6, 5),
         "wrong size": torch.randn(6, 3, 4), "no steps": torch.randn(0, 3, 5)}.get(case, torch.randn(6, 3, 5))
    if case == "GATEDRNN_BACKEND=reference":
        monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    if case == "floor=torch":
        monkeypatch.setenv("GATEDRNN_TORCH_FLOOR", "torch")
    monkeypatch.setattr(engine, "run_stack_inference", lambda *args: pytest.fail("the engine was called"))
    with torch.no_grad(), torch.autocast("cpu", enabled=case == "autocast"):
        assert layer._plain_inference(x) is None


def test_a_backward_that_builds_a_graph_takes_the_operator_and_refuses_a_second_derivative(direct_calls):
    """create_graph=True: the backward goes through the operator's autograd.Function, whose own backward raises
    (a second derivative is never silently partial); the gradients equal the direct backward's bit for bit."""
    torch.manual_seed(7)
    layer = gatedrnn.GRU(5, 7)
    x = torch.randn(4, 2, 5, requires_grad=True)
    (direct,) = torch.autograd.grad(layer(x)[0].sum(), x)
    assert direct_calls["backward"] == 1
    (graphed,) = torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)
    assert direct_calls["backward"] == 1 and direct_calls["declined"] == 0
    assert torch.equal(direct, graphed)
    with pytest.raises(RuntimeError, match="double backward .* GATEDRNN_BACKEND=reference"):
        graphed.square().sum().backward()


@pytest.mark.parametrize("name", ["gru-2layers", "lstm-hx", "lstm-step"])
def test_forward_mode_ad_carries_the_tangent(name, direct_calls):
    """Under a forward-AD level (torch.autograd.forward_ad) the direct entries and the streaming kernel decline (a
    plain C++ call would drop the tangent without a word) and the reference path's torch ops carry it: the jvp
    equals central finite differences in float64."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(11)
    dtype = torch.float64
    if name == "gru-2layers":
        layer = gatedrnn.GRU(3, 4, num_layers=2, dtype=dtype)
        run = lambda x: layer(x)[0]  # noqa: E731
    else:
        layer = gatedrnn.LSTM(3, 4, dtype=dtype)
        hx = (torch.randn(1, 2, 4, dtype=dtype), torch.randn(1, 2, 4, dtype=dtype))
        if name == "lstm-hx":
            run = lambda x: layer(x, hx)[0]  # noqa: E731
        else:  # two streaming steps: the second one, from a state, is the C++ streaming call's case
            run = lambda x: layer.step(x[1], layer.step(x[0], hx)[1])[0]  # noqa: E731
    layer.requires_grad_(False)
    x, direction = torch.randn(5, 2, 3, dtype=dtype), torch.randn(5, 2, 3, dtype=dtype)
    with fwAD.dual_level(), torch.no_grad():  # no_grad: the inference and streaming one-call paths' own case
        tangent = fwAD.unpack_dual(run(fwAD.make_dual(x, direction))).tangent
    assert direct_calls == {"taken": 0, "declined": 0, "backward": 0}
    eps = 1e-6
    numeric = (run(x + eps * direction) - run(x - eps * direction)) / (2 * eps)
    assert tangent is not None
    torch.testing.assert_close(tangent, numeric, rtol=1e-6, atol=1e-8)
