"""The sLSTM on the fused C++ engine (`SLSTMCell`, engine/csrc/cells.h): equal to the layer's Python loop (outputs,
all four final states, every gradient, the gradient through m included) over packing, direction, stacking, both
forget gates, one and several heads, float32 and float64; gradcheck of the operator itself from a random state and
from the zero state (n = 0: m_next = ĩ); traces; what the kernel refuses (zoneout, candidate dropout)."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn import engine
from gatedrnn.cells import LayerWeights
from gatedrnn.cells.slstm import dense_recurrent_matrix
from gatedrnn.engine import _build
from gatedrnn.engine.noise import LayerNoise
from gatedrnn.engine.ops import SCAN
from op_counter import GatedrnnOps

TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-10}


@pytest.fixture(scope="module", autouse=True)
def built_engine():
    assert _build.load() is not None, f"the fused engine did not build: {_build.error()}"


def _run(layer, inputs, hx, loss_weights):
    """Output, the four final states and the gradients of a loss that reads all of them (m included)."""
    output, hidden = layer(inputs, hx)
    out = output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output
    loss = (out * loss_weights[0][: out.numel()].view_as(out)).sum()
    loss = loss + sum((s * w[: s.numel()].view_as(s)).sum() for s, w in zip(hidden, loss_weights[1:]))
    grads = torch.autograd.grad(loss, [hx_t for hx_t in hx if hx_t.requires_grad] + list(layer.parameters()))
    return [out, *hidden], list(grads)


CONFIGS = [  # (forget_gate, num_heads, num_layers, bidirectional, packed, dtype)
    ("sigmoid", 1, 1, False, False, torch.float64),
    ("exp", 4, 1, False, False, torch.float64),
    ("sigmoid", 4, 2, True, True, torch.float64),
    ("exp", 1, 2, True, True, torch.float64),
    ("sigmoid", 4, 2, True, False, torch.float32),
    ("exp", 4, 1, False, True, torch.float32),
]


@pytest.mark.parametrize("forget_gate,heads,layers,bidirectional,packed,dtype", CONFIGS)
def test_fused_equals_python_loop(forget_gate, heads, layers, bidirectional, packed, dtype, monkeypatch):
    torch.manual_seed(11)
    hidden, batch, steps = 8, 3, 6
    layer = gatedrnn.SLSTM(5, hidden, num_heads=heads, num_layers=layers, bidirectional=bidirectional,
                           dtype=dtype, forget_gate=forget_gate)
    count = layers * (2 if bidirectional else 1)
    x = torch.randn(batch, steps, 5, dtype=dtype, requires_grad=True)
    # a random state (n > 0) for every row but the last, which starts from zero (n = 0: m_next = ĩ)
    hx = [torch.randn(count, batch, hidden, dtype=dtype) for _ in range(4)]
    hx[2] = hx[2].abs() + 0.5
    for s in hx:
        s[:, -1] = 0
    hx = [s.requires_grad_() for s in hx]
    lengths = torch.tensor([4, 6, 2])
    loss_weights = [torch.randn(10_000, dtype=dtype) for _ in range(5)]

    def inputs():
        xt = x.transpose(0, 1)  # (T, B, I)
        return pack_padded_sequence(xt, lengths, enforce_sorted=False) if packed else xt

    with GatedrnnOps() as ops:
        fused = _run(layer, inputs(), hx, loss_weights)
    assert ops.counts["scan"] == count and ops.counts["scan_backward"] == count, "not on the fused engine"
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    with GatedrnnOps() as ops:
        expected = _run(layer, inputs(), hx, loss_weights)
    assert ops.counts["scan"] == 0
    tol = TOLERANCE[dtype]
    for k, (a, b) in enumerate(zip(fused[0], expected[0])):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"output/state {k}: {m}")
    names = [f"d{n}" for n in ("h0", "c0", "n0", "m0")] + [n for n, _ in layer.named_parameters()]
    assert len(fused[1]) == len(names)
    for name, a, b in zip(names, fused[1], expected[1]):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=lambda m: f"gradient {name}: {m}")


def _operator_inputs(heads, zero_state, seed=0):
    torch.manual_seed(seed)
    steps, batch, inputs, hidden = 4, 3, 2, 4
    dd = dict(dtype=torch.float64)
    x = torch.randn(steps, batch, inputs, **dd)
    h0 = torch.randn(batch, hidden, **dd)
    c, n, m = torch.randn(batch, hidden, **dd), torch.rand(batch, hidden, **dd) + 0.5, torch.randn(batch, hidden, **dd)
    state = torch.zeros(batch, 3 * hidden, **dd) if zero_state else torch.cat([c, n, m], dim=1)  # [c | n | m]
    w_ih = torch.randn(4 * hidden, inputs, **dd)
    r_blocks = torch.randn(heads, 4 * hidden // heads, hidden // heads, **dd) * 0.5
    b = torch.randn(4 * hidden, **dd)
    return x, h0, state, w_ih, r_blocks, b


@pytest.mark.parametrize("cell", ["slstm", "slstm_exp"])
@pytest.mark.parametrize("zero_state", [False, True])
@pytest.mark.parametrize("sizes,reverse,masked", [([], False, False), ([3, 3, 2, 1], True, True)])
def test_gradcheck_fused_operator(cell, zero_state, sizes, reverse, masked):
    """The hand-written BPTT (true gradient through m) against finite differences, w.r.t. x, h0, the per-head R
    (through the dense W_hh), the bias and, from a random state, [c | n | m]; from the zero state (n = 0 is a
    branch point of m_next) the state is held fixed."""
    x, h0, state, w_ih, r_blocks, b = _operator_inputs(2, zero_state)
    if sizes:
        for t, n in enumerate(sizes):
            x[t, n:] = 0
    mask = torch.bernoulli(torch.full((3, 4), 0.7, dtype=torch.float64)) / 0.7 if masked else None
    leaves = [t.requires_grad_() for t in (x, h0, w_ih, r_blocks, b)]
    if not zero_state:
        leaves.append(state.requires_grad_())

    def function(x, h0, w_ih, r_blocks, b, *rest):
        c0 = rest[0] if rest else state
        y, h_n, c_n, *_ = SCAN(cell, x, h0, c0, w_ih, dense_recurrent_matrix(r_blocks), b, torch.zeros_like(b),
                               None, sizes, reverse, True, None, None, mask, None)
        return y, h_n, c_n

    assert torch.autograd.gradcheck(function, tuple(leaves), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("packed", [False, True])
def test_trace_equals_python_loop(packed, monkeypatch):
    torch.manual_seed(2)
    layer = gatedrnn.SLSTM(3, 4, num_heads=2, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    inputs = pack_padded_sequence(x, torch.tensor([6, 2, 5, 1]), enforce_sorted=False) if packed else x
    with GatedrnnOps() as ops:
        _, _, traces = layer._run(inputs, None, trace=True)
    assert ops.counts["scan"] == 4
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    _, _, expected = layer._run(inputs, None, trace=True)
    for layer_got, layer_expected in zip(traces, expected):
        for got, want in zip(layer_got, layer_expected):
            assert type(got) is type(want)
            for name, a, b in zip(want._fields, got, want):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_detach_stabilizer_runs_the_python_loop():
    layer = gatedrnn.SLSTM(3, 4, dtype=torch.float64)
    with GatedrnnOps() as ops:
        layer._run(torch.randn(5, 2, 3, dtype=torch.float64), None, trace=False, detach_stabilizer=True)
    assert ops.counts["scan"] == 0


def test_operator_refuses_zoneout_and_candidate_dropout():
    x, h0, state, w_ih, r_blocks, b = _operator_inputs(1, False)
    args = ("slstm", x, h0, state, w_ih, dense_recurrent_matrix(r_blocks), b, b, None, [], False, False)
    with pytest.raises(RuntimeError, match="cell 'slstm' takes no zoneout"):
        SCAN(*args, None, torch.rand(4, 3, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="cell 'slstm' has no candidate to drop out"):
        SCAN(*args, None, None, None, torch.ones(4, 3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"c0 should have shape \[3, 12\]"):
        SCAN("slstm", x, h0, state[:, :4], *args[4:])


def test_run_layer_refuses_zoneout(monkeypatch):
    """engine.run_layer refuses zoneout for the sLSTM (it mixes h and c only) on both paths, naming the states."""
    x, h0, state, w_ih, r_blocks, b = _operator_inputs(2, False)
    weights = LayerWeights(w_ih, r_blocks, b, None)
    noise = LayerNoise(zoneout=torch.rand(4, 3, 8, dtype=torch.float64))
    for backend in ("", "reference"):
        monkeypatch.setenv("GATEDRNN_BACKEND", backend)
        with pytest.raises(ValueError, match=r"cell 'slstm' takes no zoneout.*\('c', 'n', 'm'\)"):
            engine.run_layer("slstm", x, (h0, *state.chunk(3, dim=1)), weights, noise=noise)
