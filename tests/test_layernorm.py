"""LayerNorm LSTM and GRU (gatedrnn.cells.layernorm): the placement is haste's (its equations written out here in
torch ops), the NumPy reference's hand-derived BPTT agrees with finite differences and with the layers, the fused
engine agrees with the reference path (outputs, states, every gradient, gains included) in every layer form,
gradcheck on the fused operator, streaming, traces.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn.cells import CELL_SPECS, LAYER_NORM_EPS
from gatedrnn.engine import _build
from gatedrnn.engine.ops import SCAN
from gatedrnn.reference.layernorm import (
    LayerNormGRUParams, LayerNormLSTMParams, layernorm_gru_backward, layernorm_gru_forward, layernorm_lstm_backward,
    layernorm_lstm_forward,
)
from op_counter import GatedrnnOps

TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-10}
LAYERS = {"layernorm_lstm": gatedrnn.LayerNormLSTM, "layernorm_gru": gatedrnn.LayerNormGRU}


@pytest.fixture(scope="module", autouse=True)
def built_engine():
    assert _build.load() is not None, f"the fused engine did not build: {_build.error()}"


def make_layer(cell: str, input_size: int = 3, hidden_size: int = 5, *, seed: int = 0, dtype=torch.float64,
               **options):
    """A layer whose gains and biases are moved away from their init (ones, zeros) so that they matter."""
    torch.manual_seed(seed)
    layer = LAYERS[cell](input_size, hidden_size, dtype=dtype, **options)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "gamma" in name or "beta" in name else 0.1))
    return layer


def run(layer, x, hx=None, *, leaves=(), backend: str, monkeypatch, seed: int = 1):
    """(output, hidden, {name: grad}) with GATEDRNN_BACKEND=backend, under a fixed seed (noise masks);
    the gradients of every parameter and of `leaves` (the input tensors that require grad)."""
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    layer.zero_grad()
    inputs = list(leaves)
    for t in inputs:
        t.grad = None
    torch.manual_seed(seed)
    with GatedrnnOps() as ops:
        output, hidden = layer(x() if callable(x) else x, hx)  # a callable: built anew (packing is in the graph)
    assert (ops.counts["scan"] > 0) == (backend == "auto")  # the fused path really ran (or really did not)
    data = output.data if hasattr(output, "batch_sizes") else output
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    weights = torch.linspace(-1, 1, data.numel(), dtype=data.dtype).view(data.shape)
    loss = (data * weights).sum() + sum((s * s).sum() for s in states)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    grads.update({f"input{k}": t.grad.clone() for k, t in enumerate(inputs)})
    return data.detach(), tuple(s.detach() for s in states), grads


def assert_paths_agree(layer, x, hx=None, *, leaves=(), monkeypatch):
    fused = run(layer, x, hx, leaves=leaves, backend="auto", monkeypatch=monkeypatch)
    reference = run(layer, x, hx, leaves=leaves, backend="reference", monkeypatch=monkeypatch)
    tol = TOLERANCE[layer.weight_ih_l0.dtype]
    torch.testing.assert_close(fused[0], reference[0], rtol=tol, atol=tol)
    for a, b in zip(fused[1], reference[1]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert fused[2].keys() == reference[2].keys()
    for name in fused[2]:
        torch.testing.assert_close(fused[2][name], reference[2][name], rtol=tol, atol=tol * 10, msg=name)


# ----- the placement is haste's -----
def haste_lstm_step(x, h, c, w_ih, w_hh, b, gamma, gamma_h, beta_h):
    """haste's LayerNormLSTM (frameworks/pytorch/layer_norm_lstm.py, LayerNormLSTMScript) for one step, in its
    own layout: kernel (I, 4H), recurrent_kernel (H, 4H), gates i, g, f, o, one bias, gamma (2, 4H)."""
    hidden = h.shape[1]
    v = (F.layer_norm(h @ w_hh, (4 * hidden,), weight=gamma[1]) + F.layer_norm(x @ w_ih, (4 * hidden,), weight=gamma[0])
         + b)
    i, g, f, o = torch.chunk(v, 4, 1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_next = torch.sigmoid(o) * torch.tanh(F.layer_norm(c_next, (hidden,), weight=gamma_h, bias=beta_h))
    return h_next, c_next


def haste_gru_step(x, h, w_ih, w_hh, b, rb, gamma):
    """haste's LayerNormGRU (LayerNormGRUScript) for one step: gates z, r, g, bias and recurrent_bias."""
    hidden = h.shape[1]
    vx = torch.chunk(F.layer_norm(x @ w_ih, (3 * hidden,), weight=gamma[0]) + b, 3, 1)
    vh = torch.chunk(F.layer_norm(h @ w_hh, (3 * hidden,), weight=gamma[1]) + rb, 3, 1)
    z = torch.sigmoid(vx[0] + vh[0])
    r = torch.sigmoid(vx[1] + vh[1])
    g = torch.tanh(vx[2] + r * vh[2])
    return z * h + (1 - z) * g


def to_haste(t: torch.Tensor, order: list[int], gates: int) -> torch.Tensor:
    """Our gate blocks (rows, torch.nn's order) reordered into haste's order, along dim 0."""
    return torch.cat([t.chunk(gates, 0)[k] for k in order], 0)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_placement_is_haste(backend, monkeypatch):
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    x, h0 = torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(1, 2, 5, dtype=torch.float64)
    c0 = torch.randn(1, 2, 5, dtype=torch.float64)
    lstm = make_layer("layernorm_lstm", seed=1)
    with torch.no_grad():
        _, (h1, c1) = lstm(x, (h0, c0))
        order = [0, 2, 1, 3]  # haste's i, g, f, o from our i, f, g, o
        w_ih, w_hh = to_haste(lstm.weight_ih_l0, order, 4).t(), to_haste(lstm.weight_hh_l0, order, 4).t()
        b = to_haste(lstm.bias_ih_l0 + lstm.bias_hh_l0, order, 4)
        gamma = torch.stack([to_haste(lstm.gamma_ih_l0, order, 4), to_haste(lstm.gamma_hh_l0, order, 4)])
        h_haste, c_haste = haste_lstm_step(x[0], h0[0], c0[0], w_ih, w_hh, b, gamma, lstm.gamma_c_l0, lstm.beta_c_l0)
    torch.testing.assert_close(h1[0], h_haste, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c1[0], c_haste, rtol=1e-12, atol=1e-12)

    gru = make_layer("layernorm_gru", seed=2)
    with torch.no_grad():
        _, h1 = gru(x, h0)
        order = [1, 0, 2]  # haste's z, r, g from our r, z, n
        gamma = torch.stack([to_haste(gru.gamma_ih_l0, order, 3), to_haste(gru.gamma_hh_l0, order, 3)])
        h_haste = haste_gru_step(x[0], h0[0], to_haste(gru.weight_ih_l0, order, 3).t(),
                                 to_haste(gru.weight_hh_l0, order, 3).t(), to_haste(gru.bias_ih_l0, order, 3),
                                 to_haste(gru.bias_hh_l0, order, 3), gamma)
    torch.testing.assert_close(h1[0], h_haste, rtol=1e-12, atol=1e-12)
    assert LAYER_NORM_EPS == 1e-5


def test_parameters_and_init():
    lstm = gatedrnn.LayerNormLSTM(3, 4, bidirectional=True)
    shapes = {name: tuple(p.shape) for name, p in lstm.named_parameters()}
    assert shapes["gamma_ih_l0"] == shapes["gamma_hh_l0_reverse"] == (16,)
    assert shapes["gamma_c_l0"] == shapes["beta_c_l0_reverse"] == (4,)
    assert torch.equal(lstm.gamma_ih_l0, torch.ones(16)) and torch.equal(lstm.beta_c_l0, torch.zeros(4))
    gru = gatedrnn.LayerNormGRU(3, 4, forget_bias=1.0)
    assert [n for n, _ in gru.named_parameters()] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                                      "gamma_ih_l0", "gamma_hh_l0"]
    assert torch.equal(gru.bias_ih_l0[4:8] + gru.bias_hh_l0[4:8], torch.ones(4))  # z's effective bias
    with pytest.raises(TypeError):
        gatedrnn.LayerNormLSTM(3, 4, proj_size=2)


# ----- the NumPy reference: finite differences, and the layer -----
def _numpy_case(cell: str, seed: int = 0):
    layer = make_layer(cell, 3, 4, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 2, 3))
    h0, c0 = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    dy, dh_T, dc_T = rng.standard_normal((3, 2, 4)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    return layer, x, h0, c0, dy, dh_T, dc_T


def _numpy_loss_and_grads(cell, params, x, h0, c0, dy, dh_T, dc_T):
    if cell == "layernorm_lstm":
        y, h_T, c_T, cache = layernorm_lstm_forward(x, h0, c0, params)
        loss = (y * dy).sum() + (h_T * dh_T).sum() + (c_T * dc_T).sum()
        return loss, layernorm_lstm_backward(dy, dh_T, dc_T, cache)
    y, h_T, cache = layernorm_gru_forward(x, h0, params)
    return (y * dy).sum() + (h_T * dh_T).sum(), layernorm_gru_backward(dy, dh_T, cache)


@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_numpy_backward_matches_finite_differences(cell):
    layer, x, h0, c0, dy, dh_T, dc_T = _numpy_case(cell)
    params_type = LayerNormLSTMParams if cell == "layernorm_lstm" else LayerNormGRUParams
    params = params_type.from_state_dict(layer.state_dict())
    _, grads = _numpy_loss_and_grads(cell, params, x, h0, c0, dy, dh_T, dc_T)
    variables = {"x": x, "h0": h0, **({"c0": c0} if cell == "layernorm_lstm" else {}),
                 **{k: v for k, v in vars(params).items()}}
    eps = 1e-6
    for name, value in variables.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            saved = value[index]
            losses = []
            for delta in (eps, -eps):
                value[index] = saved + delta
                losses.append(_numpy_loss_and_grads(cell, params, x, h0, c0, dy, dh_T, dc_T)[0])
            value[index] = saved
            numeric[index] = (losses[0] - losses[1]) / (2 * eps)
        np.testing.assert_allclose(grads[f"d{name}"], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_layer_matches_numpy_reference(cell, monkeypatch):
    layer, x, h0, c0, dy, dh_T, dc_T = _numpy_case(cell, seed=4)
    params = (LayerNormLSTMParams if cell == "layernorm_lstm" else LayerNormGRUParams).from_state_dict(
        layer.state_dict())
    _, expected = _numpy_loss_and_grads(cell, params, x, h0, c0, dy, dh_T, dc_T)
    is_lstm = cell == "layernorm_lstm"
    for backend in ("auto", "reference"):
        monkeypatch.setenv("GATEDRNN_BACKEND", backend)
        layer.zero_grad()
        xt = torch.tensor(x, requires_grad=True)
        states = [torch.tensor(s[None], requires_grad=True) for s in ((h0, c0) if is_lstm else (h0,))]
        y, hidden = layer(xt, tuple(states) if is_lstm else states[0])
        finals = hidden if is_lstm else (hidden,)
        loss = (y * torch.tensor(dy)).sum() + sum((f[0] * torch.tensor(d)).sum()
                                                  for f, d in zip(finals, (dh_T, dc_T)))
        loss.backward()
        got = {"dx": xt.grad, "dh0": states[0].grad[0], **({"dc0": states[1].grad[0]} if is_lstm else {})}
        mapping = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
        for name in vars(params):
            got[f"d{name}"] = getattr(layer, f"{mapping.get(name, name)}_l0").grad
        for name, value in got.items():
            np.testing.assert_allclose(value.numpy(), expected[name], rtol=1e-9, atol=1e-11,
                                       err_msg=f"{backend} {name}")


# ----- fused vs reference path, every layer form -----
FORMS = [
    dict(dtype=torch.float32),
    dict(dtype=torch.float64, bidirectional=True, num_layers=2),
    dict(dtype=torch.float32, batch_first=True, bias=False),
    dict(dtype=torch.float64, zoneout=0.3, recurrent_dropout=0.25),
    dict(dtype=torch.float32, bidirectional=True, zoneout=(0.2, 0.4), recurrent_dropout=0.3, weight_drop=0.2),
]


@pytest.mark.parametrize("cell", sorted(LAYERS))
@pytest.mark.parametrize("form", range(len(FORMS)))
def test_fused_equals_reference(cell, form, monkeypatch):
    options = dict(FORMS[form])
    dtype = options.pop("dtype")
    if cell == "layernorm_gru" and isinstance(options.get("zoneout"), tuple):
        options["zoneout"] = (options["zoneout"][0], 0.0)  # no cell state: a p_c is refused
    layer = make_layer(cell, 3, 6, seed=form, dtype=dtype, **options)
    batch_first = options.get("batch_first", False)
    torch.manual_seed(10 + form)
    x = torch.randn((4, 5, 3) if batch_first else (5, 4, 3), dtype=dtype, requires_grad=True)
    count = layer.num_layers * layer.num_directions
    states = [torch.randn(count, 4, 6, dtype=dtype, requires_grad=True)
              for _ in range(2 if cell == "layernorm_lstm" else 1)]
    hx = tuple(states) if cell == "layernorm_lstm" else states[0]
    layer.train()  # the noise options act while training
    assert_paths_agree(layer, x, hx, leaves=[x, *states], monkeypatch=monkeypatch)


@pytest.mark.parametrize("cell", sorted(LAYERS))
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_fused_equals_reference_packed(cell, enforce_sorted, monkeypatch):
    layer = make_layer(cell, 3, 5, seed=7, bidirectional=True)
    lengths = [6, 4, 4, 1] if enforce_sorted else [4, 6, 1, 4]
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    assert_paths_agree(layer, lambda: pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), leaves=[x],
                       monkeypatch=monkeypatch)


@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_fused_equals_reference_unbatched(cell, monkeypatch):
    layer = make_layer(cell, 3, 5, seed=8, num_layers=2)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    assert_paths_agree(layer, x, leaves=[x], monkeypatch=monkeypatch)


# ----- gradcheck of the fused operator -----
@pytest.mark.parametrize("cell", sorted(LAYERS))
@pytest.mark.parametrize("batch_sizes,reverse,noise", [(None, False, False), ([3, 3, 2, 1], True, False),
                                                       ([3, 2, 2, 1], False, True)])
def test_gradcheck_fused_operator(cell, batch_sizes, reverse, noise):
    torch.manual_seed(0)
    spec = CELL_SPECS[cell]
    steps, batch, inputs, hidden = 4, 3, 2, 3
    g = spec.gate_count * hidden
    dd = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(steps, batch, inputs, **dd)
    if batch_sizes is not None:  # padded rows are zero, as the layers hand them over
        with torch.no_grad():
            for t, n in enumerate(batch_sizes):
                x[t, n:] = 0
    h0 = torch.randn(batch, hidden, **dd)
    c0 = torch.randn(batch, hidden, **dd) if spec.has_cell_state else None
    w_ih, w_hh = torch.randn(g, inputs, **dd), torch.randn(g, hidden, **dd)
    b_ih, b_hh = torch.randn(g, **dd), torch.randn(g, **dd)
    aux = (1 + 0.3 * torch.randn(spec.aux_blocks * hidden, dtype=torch.float64)).requires_grad_()
    zoneout = rec_mask = None
    if noise:
        width = hidden * (2 if spec.has_cell_state else 1)
        zoneout = torch.bernoulli(torch.full((steps, batch, width), 0.3, dtype=torch.float64))
        rec_mask = torch.bernoulli(torch.full((batch, hidden), 0.7, dtype=torch.float64)) / 0.7
    sizes = [] if batch_sizes is None else batch_sizes

    def function(x, h0, c0, w_ih, w_hh, b_ih, b_hh, aux):
        y, h_n, c_n, *_ = SCAN(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, sizes, reverse, True, aux, zoneout,
                               rec_mask)
        return (y, h_n, c_n) if spec.has_cell_state else (y, h_n)

    assert torch.autograd.gradcheck(function, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, aux), eps=1e-6, atol=1e-7)


def test_operator_needs_the_gains():
    x, h0 = torch.randn(2, 1, 2), torch.randn(1, 3)
    with pytest.raises(RuntimeError, match=r"needs aux.*\(6\*H,\)"):
        SCAN("layernorm_gru", x, h0, None, torch.randn(9, 2), torch.randn(9, 3), None, None, None, [], False, False)


# ----- streaming and traces -----
@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_streaming_step_equals_forward(cell):
    layer = make_layer(cell, 3, 5, seed=3, dtype=torch.float32, num_layers=2)
    x = torch.randn(6, 2, 3)
    with torch.no_grad():
        output, hidden = layer(x)
        state, steps = None, []
        for t in range(x.shape[0]):
            y, state = layer.step(x[t], state)
            steps.append(y)
    torch.testing.assert_close(torch.stack(steps), output, rtol=1e-5, atol=1e-5)
    for a, b in zip(state if isinstance(state, tuple) else (state,), hidden if isinstance(hidden, tuple) else (hidden,)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_traces_equal_on_both_paths(cell, monkeypatch):
    from gatedrnn.inspect import trace

    layer = make_layer(cell, 3, 5, seed=5, bidirectional=True)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    traces = {}
    for backend in ("auto", "reference"):
        monkeypatch.setenv("GATEDRNN_BACKEND", backend)
        with torch.no_grad():
            traces[backend] = trace(layer, x)
    assert type(traces["auto"].layers[0][0]) is CELL_SPECS[cell].trace_type
    for fused, reference in zip(traces["auto"].layers[0], traces["reference"].layers[0]):
        for name, a, b in zip(fused._fields, fused, reference):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
    torch.testing.assert_close(traces["auto"].output, traces["reference"].output)


@pytest.mark.parametrize("cell", sorted(LAYERS))
@pytest.mark.parametrize("zoneout", [False, True])
def test_fake_kernel_saved_widths_match_the_kernel(cell, zoneout):
    """torch.compile / torch.export read the saved buffers' shapes from the fake kernel (CellSpec.saved_extra)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    spec = CELL_SPECS[cell]
    steps, batch, hidden = 3, 2, 4
    g = spec.gate_count * hidden

    def operands():
        has_c = spec.has_cell_state
        return ("cell", torch.randn(steps, batch, 2), torch.randn(batch, hidden),
                torch.randn(batch, hidden) if has_c else None, torch.randn(g, 2), torch.randn(g, hidden),
                torch.randn(g), torch.randn(g), None, [], False, True, torch.ones(spec.aux_blocks * hidden),
                torch.rand(steps, batch, hidden * (2 if has_c else 1)) if zoneout else None, None)

    real = SCAN(cell, *operands()[1:])
    with FakeTensorMode():
        fake = SCAN(cell, *operands()[1:])
    assert [tuple(t.shape) for t in fake] == [tuple(t.shape) for t in real]
    assert real[5].shape[2] == (spec.saved_extra + (zoneout and spec.has_cell_state)) * hidden
