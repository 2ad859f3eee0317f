"""Greff et al.'s FGR LSTM (full gate recurrence), checked against independent statements:

- the NumPy reference (`gatedrnn.reference.fgr`): its hand-derived BPTT against finite differences, then the
  torch step function (GATEDRNN_BACKEND=reference) and the fused kernel against it;
- the fused kernel against the reference path for every input form (packed, bidirectional, 2 layers,
  batch_first, f32 and f64), all gradients including weight_gate_hh and the state a;
- R_g = 0 gives the peephole variant exactly; gradcheck through the kernel weight hook (R_g into W_hh);
- streaming `.step` equals forward; bad hx and zoneout raise clear errors; tracers refuse it; the CLI trains it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn import engine
from gatedrnn.cells import CELL_SPECS, LayerWeights
from gatedrnn.inspect import trace
from gatedrnn.layers._checks import ArgumentTypeError, ShapeError
from gatedrnn.reference import FGRParams, fgr_backward, fgr_forward
from op_counter import GatedrnnOps

F64 = torch.float64
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-10}


def _random_params(rng: np.random.Generator, inputs: int, hidden: int) -> FGRParams:
    def draw(*shape):
        return rng.normal(0.0, 0.6, shape)

    return FGRParams(draw(4 * hidden, inputs), draw(4 * hidden, hidden), draw(4 * hidden), draw(4 * hidden),
                     draw(3 * hidden), draw(3 * hidden, 3 * hidden))


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_reference_backward_matches_finite_differences(masked):
    rng = np.random.default_rng(0)
    T, B, I, H = 4, 2, 3, 3
    params = _random_params(rng, I, H)
    x, h0, c0 = rng.normal(size=(T, B, I)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    a0 = rng.uniform(size=(B, 3 * H))
    mask = (rng.uniform(size=(B, H)) < 0.7) / 0.7 if masked else None
    w_y, w_h, w_c, w_a = rng.normal(size=(T, B, H)), rng.normal(size=(B, H)), rng.normal(size=(B, H)), \
        rng.normal(size=(B, 3 * H))

    def loss(x, h0, c0, a0, params):
        y, h_T, c_T, a_T, _ = fgr_forward(x, h0, c0, a0, params, mask)
        return (w_y * y).sum() + (w_h * h_T).sum() + (w_c * c_T).sum() + (w_a * a_T).sum()

    *_, cache = fgr_forward(x, h0, c0, a0, params, mask)
    grads = fgr_backward(w_y, w_h, w_c, w_a, cache)
    inputs = {"x": x, "h0": h0, "c0": c0, "a0": a0}
    analytic = {"x": grads.dx, "h0": grads.dh0, "c0": grads.dc0, "a0": grads.da0, "w_ih": grads.dw_ih,
                "w_hh": grads.dw_hh, "b_ih": grads.db_ih, "b_hh": grads.db_hh, "peephole": grads.dpeephole,
                "w_gate": grads.dw_gate}
    eps = 1e-6
    for name, wanted in analytic.items():
        target = inputs[name] if name in inputs else getattr(params, name)
        numeric = np.zeros_like(target)
        for index in np.ndindex(target.shape):
            saved = target[index]
            target[index] = saved + eps
            up = loss(**inputs, params=params)
            target[index] = saved - eps
            down = loss(**inputs, params=params)
            target[index] = saved
            numeric[index] = (up - down) / (2 * eps)
        np.testing.assert_allclose(wanted, numeric, rtol=1e-6, atol=1e-7, err_msg=name)


def _module(dtype=F64, **options) -> gatedrnn.LSTM:
    module = gatedrnn.LSTM(3, 4, variant="fgr", dtype=dtype, **options)
    with torch.no_grad():  # a larger R_g than the init, so the gate recurrence matters in every check
        for name, parameter in module.named_parameters():
            if name.startswith("weight_gate_hh"):
                parameter.normal_(0.0, 0.8)
    return module


@pytest.mark.parametrize("backend", ["", "reference"])
def test_layer_equals_numpy_reference(backend, monkeypatch):
    """Both paths of the layer (fused kernel, torch step function) against the NumPy statement, forward and
    every gradient, from a given (h0, c0, a0)."""
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    torch.manual_seed(1)
    module = _module()
    T, B = 5, 3
    x = torch.randn(T, B, 3, dtype=F64, requires_grad=True)
    hx = (torch.randn(1, B, 4, dtype=F64), torch.randn(1, B, 4, dtype=F64), torch.rand(1, B, 12, dtype=F64))
    hx = tuple(s.requires_grad_() for s in hx)
    w_y, w_h, w_c, w_a = torch.randn(T, B, 4, dtype=F64), torch.randn(B, 4, dtype=F64), \
        torch.randn(B, 4, dtype=F64), torch.randn(B, 12, dtype=F64)
    with GatedrnnOps() as ops:
        y, (h_n, c_n, a_n) = module(x, hx)
        loss = (w_y * y).sum() + (w_h * h_n[0]).sum() + (w_c * c_n[0]).sum() + (w_a * a_n[0]).sum()
        got = torch.autograd.grad(loss, [x, *hx, *module.parameters()])
    assert (ops.counts["scan"], ops.counts["scan_backward"]) == ((1, 1) if backend == "" else (0, 0))

    params = FGRParams.from_state_dict(module.state_dict())
    arrays = [t.detach().numpy() for t in (x, *(s[0] for s in hx))]
    y_ref, h_ref, c_ref, a_ref, cache = fgr_forward(*arrays, params)
    grads = fgr_backward(w_y.numpy(), w_h.numpy(), w_c.numpy(), w_a.numpy(), cache)
    for name, ours, theirs in (("y", y, y_ref), ("h_n", h_n[0], h_ref), ("c_n", c_n[0], c_ref), ("a_n", a_n[0], a_ref)):
        np.testing.assert_allclose(ours.detach().numpy(), theirs, rtol=1e-10, atol=1e-12, err_msg=name)
    wanted = [grads.dx, grads.dh0[None], grads.dc0[None], grads.da0[None], grads.dw_ih, grads.dw_hh, grads.db_ih,
              grads.db_hh, grads.dpeephole, grads.dw_gate]
    names = ["x", "h0", "c0", "a0"] + [name for name, _ in module.named_parameters()]
    for name, ours, theirs in zip(names, got, wanted):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-11, err_msg=name)


def _run(module, x, hx, lengths, loss_weights):
    """Forward, then the gradient of a fixed random-weighted loss w.r.t. x, hx and every parameter."""
    inputs = x if lengths is None else pack_padded_sequence(x, lengths, batch_first=module.batch_first,
                                                            enforce_sorted=False)
    output, hidden = module(inputs, hx)
    out = output.data if lengths is not None else output
    loss = (out * loss_weights[0][: out.numel()].view_as(out)).sum()
    loss = loss + sum((s * loss_weights[1][: s.numel()].view_as(s)).sum() for s in hidden)
    grads = torch.autograd.grad(loss, [x, *hx, *module.parameters()])
    return [out, *hidden], list(grads)


FORMS = [  # (num_layers, bidirectional, batch_first, packed)
    (1, False, False, False),
    (2, True, True, True),
    (2, False, False, True),
    (1, True, False, False),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers,bidirectional,batch_first,packed", FORMS)
def test_fused_equals_reference_path(dtype, layers, bidirectional, batch_first, packed, monkeypatch):
    torch.manual_seed(2)
    module = _module(dtype, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    d, T, B = 2 if bidirectional else 1, 6, 4
    x = torch.randn((B, T, 3) if batch_first else (T, B, 3), dtype=dtype, requires_grad=True)
    hx = tuple(torch.randn(d * layers, B, width, dtype=dtype, requires_grad=True) for width in (4, 4, 12))
    lengths = torch.tensor([6, 3, 5, 1]) if packed else None
    loss_weights = (torch.randn(T * B * d * 4, dtype=dtype), torch.randn(d * layers * B * 12, dtype=dtype))
    with GatedrnnOps() as ops:
        got = _run(module, x, hx, lengths, loss_weights)
    assert ops.counts["scan"] == ops.counts["scan_backward"] == layers * d, "the fused engine did not run"
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    expected = _run(module, x, hx, lengths, loss_weights)
    names = ["output", "h_n", "c_n", "a_n"]
    names += ["dx", "dh0", "dc0", "da0"] + [f"d{name}" for name, _ in module.named_parameters()]
    assert any(name.startswith("dweight_gate_hh") for name in names)
    tol = TOLERANCE[dtype]
    for name, a, b in zip(names, got[0] + got[1], expected[0] + expected[1]):
        scale = max(1.0, float(b.detach().abs().max()))
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


def test_zero_gate_recurrence_is_the_peephole_lstm_exactly():
    """With R_g = 0 the gates read nothing of a′: FGR's outputs, h and c equal the peephole variant's with the
    same W_ih, W_hh, biases and peepholes (fused), and a_n holds the last step's i, f, o of its trace."""
    torch.manual_seed(3)
    fgr = _module(num_layers=2)
    peephole = gatedrnn.LSTM(3, 4, variant="peephole", num_layers=2, dtype=F64)
    with torch.no_grad():
        for name, parameter in fgr.named_parameters():
            if name.startswith("weight_gate_hh"):
                parameter.zero_()
    peephole.load_state_dict({k: v for k, v in fgr.state_dict().items() if "gate_hh" not in k}, strict=True)
    x = torch.randn(7, 2, 3, dtype=F64)
    hx = (torch.randn(2, 2, 4, dtype=F64), torch.randn(2, 2, 4, dtype=F64))
    y, (h_n, c_n, a_n) = fgr(x, (*hx, torch.rand(2, 2, 12, dtype=F64)))
    expected_y, (expected_h, expected_c) = peephole(x, hx)
    for ours, theirs in ((y, expected_y), (h_n, expected_h), (c_n, expected_c)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-14)
    with torch.no_grad():
        theirs = trace(peephole, x, hx).get()
        ours = trace(fgr, x, (*hx, torch.rand(2, 2, 12, dtype=F64))).get()
    assert type(ours) is CELL_SPECS["lstm_fgr"].trace_type and ours._fields == ("i", "f", "g", "o", "a", "c", "h")
    for name in theirs._fields:
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=1e-14)
    gates = torch.cat([theirs.i, theirs.f, theirs.o], dim=2)  # (T, B, 3H): a_t is the step's own [i | f | o]
    torch.testing.assert_close(ours.a, gates, rtol=0, atol=1e-14)
    torch.testing.assert_close(a_n[-1], gates[-1], rtol=0, atol=1e-14)


@pytest.mark.parametrize("batch_sizes,reverse", [(None, False), ([3, 3, 2, 1], True), ([3, 2, 2, 1], False)])
def test_gradcheck_through_the_kernel_weights(batch_sizes, reverse):
    """The fused BPTT against finite differences through `engine.run_layer`, where R_g reaches the kernel inside
    W_hh (`CellSpec.kernel_weights`): x, h0, c0, a0 and every parameter, R_g included, with a recurrent mask."""
    torch.manual_seed(4)
    T, B, I, H = 4, 3, 2, 2
    dd = dict(dtype=F64, requires_grad=True)
    x = torch.randn(T, B, I, dtype=F64)
    if batch_sizes is not None:  # padded rows of a packed batch are zero, as the layers hand them over
        for t, n in enumerate(batch_sizes):
            x[t, n:] = 0
    x.requires_grad_()
    state0 = (torch.randn(B, H, **dd), torch.randn(B, H, **dd), torch.rand(B, 3 * H, **dd))
    weights = [torch.randn(4 * H, I, **dd), torch.randn(4 * H, H, **dd), torch.randn(4 * H, **dd),
               torch.randn(4 * H, **dd), torch.randn(3 * H, **dd), torch.randn(3 * H, 3 * H, **dd)]
    mask = torch.bernoulli(torch.full((B, H), 0.7, dtype=F64)) / 0.7

    def function(x, h0, c0, a0, w_ih, w_hh, b_ih, b_hh, peephole, w_gate):
        layer = LayerWeights(w_ih, w_hh, b_ih, b_hh, None, (peephole, w_gate))
        result = engine.run_layer("lstm_fgr", x, (h0, c0, a0), layer, batch_sizes, reverse,
                                  noise=engine.LayerNoise(None, mask, None))
        return (result.y, *result.state)

    with GatedrnnOps() as ops:
        function(x, *state0, *weights)
    assert ops.counts["scan"] == 1
    assert torch.autograd.gradcheck(function, (x, *state0, *weights), eps=1e-6, atol=1e-7)


def test_streaming_step_equals_forward():
    torch.manual_seed(5)
    module = _module(num_layers=2).eval()
    x = torch.randn(6, 2, 3, dtype=F64)
    hx = (torch.randn(2, 2, 4, dtype=F64), torch.randn(2, 2, 4, dtype=F64), torch.rand(2, 2, 12, dtype=F64))
    with torch.no_grad():
        expected_y, expected_state = module(x, hx)
        state, outputs = hx, []
        for t in range(x.shape[0]):
            y, state = module.step(x[t], state)
            outputs.append(y)
        y0, state0 = module.step(x[0])  # None: zeros, a included
        y0_forward, _ = module(x[:1])
    assert len(state) == 3 and state[2].shape == (2, 2, 12)
    torch.testing.assert_close(torch.stack(outputs), expected_y, rtol=0, atol=1e-13)
    for ours, theirs in zip(state, expected_state):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-13)
    torch.testing.assert_close(y0, y0_forward[0], rtol=0, atol=1e-13)


def test_parameters_and_state_dict_carry_the_gate_recurrence():
    module = gatedrnn.LSTM(3, 4, variant="fgr", num_layers=2, bidirectional=True)
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    for suffix in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        assert shapes[f"weight_gate_hh{suffix}"] == (12, 12) and shapes[f"weight_peephole{suffix}"] == (12,)
    bound = 1 / 4**0.5  # torch.nn's U(-1/sqrt(H), 1/sqrt(H)), as W_hh
    gate_hh = module.weight_gate_hh_l1.detach()
    assert float(gate_hh.abs().max()) <= bound and float(gate_hh.std()) > 0.1
    again = gatedrnn.LSTM(3, 4, variant="fgr", num_layers=2, bidirectional=True)
    again.load_state_dict(module.state_dict(), strict=True)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(module(x)[1], again(x)[1]))


def test_bad_hx_and_zoneout_raise_naming_what_was_expected():
    module = gatedrnn.LSTM(3, 4, variant="fgr", num_layers=2)
    x = torch.randn(5, 2, 3)
    h, c = torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)
    with pytest.raises(ArgumentTypeError, match=r"hx should be a tuple \(h_0, c_0, a_0\), got a tuple of 2"):
        module(x, (h, c))
    with pytest.raises(ShapeError, match=r"a_0.*\(2, 2, 12\)"):
        module(x, (h, c, torch.zeros(2, 2, 4)))
    with pytest.raises(ShapeError, match=r"a_0"):
        module.step(x[0], (h, c, torch.zeros(2, 2, 13)))
    with pytest.raises(ValueError, match="takes no zoneout"):
        gatedrnn.LSTM(3, 4, variant="fgr", zoneout=0.1)(x)
    from gatedrnn.models import build_rnn

    with pytest.raises(ValueError, match="takes no zoneout"):
        build_rnn("lstm_fgr", 3, 4, init={"zoneout": 0.1})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tracers_refuse_it():
    """torch.jit.trace and the TorchScript ONNX exporter record torch's own RNN op, which has no FGR cell."""
    import io

    module = gatedrnn.LSTM(3, 4, variant="fgr")
    x = torch.randn(5, 2, 3)
    with pytest.raises(RuntimeError, match=r"own RNN op, which has no LSTM \(FGR\) cell"):
        torch.jit.trace(module, (x,))
    with pytest.raises(RuntimeError, match=r"own RNN op, which has no LSTM \(FGR\) cell"):
        torch.onnx.export(module, (x,), io.BytesIO(), dynamo=False)


def test_table_and_study_list_fgr():
    from gatedrnn.bench.greff_study import VARIANT_CELLS
    from gatedrnn.cells.lstm_variants import GREFF_VARIANTS

    spec = CELL_SPECS["lstm_fgr"]
    assert spec.state_names == ("h", "c", "a") and spec.state_sizes(5) == (5, 15) and spec.state_blocks == 4
    assert spec.aux_blocks == 3  # the peepholes; R_g reaches the kernel inside W_hh
    assert VARIANT_CELLS == tuple(f"lstm_{name}" for name in GREFF_VARIANTS)


def test_cli_trains_it(tmp_path, capsys):
    from cli_runner import run_cli

    code, _, err = run_cli(capsys, "train", "--task", "adding", "--cell", "lstm_fgr", "--max-steps", "2", "-o",
                           "seq_len=10", "-o", "n_train=16", "-o", "n_val=8", "-o", "n_test=8", "--batch-size", "8",
                           "--hidden-size", "4", "--out-dir", str(tmp_path), "--overwrite", "--quiet",
                           "--no-tensorboard", "--recurrent-dropout", "0.1", "--weight-drop", "0.1")
    assert code == 0, err
    from gatedrnn.train.checkpoint import load_model, resolve_checkpoint

    model, config, _ = load_model(resolve_checkpoint(tmp_path))
    assert config.cell == "lstm_fgr" and model.rnn.mode == "lstm_fgr"
    assert model.rnn.weight_gate_hh_l0.shape == (12, 12)
