"""The GPU engine (gatedrnn.engine.triton_scan): its Triton kernels against the cell step functions (the readable
math) and the layers on it against torch.nn, forward, backward and traces. Without a GPU the kernels run on CPU
tensors in Triton's interpreter (conftest sets TRITON_INTERPRET=1); on a CUDA machine on CUDA tensors."""
from __future__ import annotations

import os

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn import engine
from gatedrnn.cells import LayerWeights, cell_spec
from gatedrnn.engine import step as engine_step
from gatedrnn.engine.noise import LayerNoise
from gatedrnn.engine.scan import make_step, scan_reference
from gatedrnn.layers import aten

pytest.importorskip("triton")
from gatedrnn.engine.triton_scan import KERNELS, run_layer_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="no GPU and TRITON_INTERPRET is not 1")


@pytest.fixture(autouse=True)
def no_tf32():
    """On CUDA, float32 GEMMs and cuDNN (the torch.nn side) in full float32: TF32 differs by ~1e-3."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture
def triton_backend(monkeypatch):
    """GATEDRNN_BACKEND=triton; yields the list of cells `run_layer_triton` ran, so a test can assert that the
    Triton kernels, not the reference loop, computed what it compares."""
    from gatedrnn.engine import triton_scan

    calls: list[str] = []
    original = triton_scan.run_layer_triton

    def counted(cell, *args, **kwargs):
        calls.append(cell)
        return original(cell, *args, **kwargs)

    monkeypatch.setattr(triton_scan, "run_layer_triton", counted)
    monkeypatch.setenv("GATEDRNN_BACKEND", "triton")
    return calls


def _random_layer(cell: str, *, proj: int = 0, dtype=torch.float64, steps=5, batch=3, inputs=4, hidden=6):
    spec = cell_spec(cell)
    rows, out_size = spec.gate_count * hidden, proj or hidden
    make = lambda *shape: torch.randn(*shape, dtype=dtype, device=DEVICE, requires_grad=True)  # noqa: E731
    extra = tuple(make(*p.shape(hidden)) for p in spec.extra_params)  # random gains: any γ, β must be right
    weights = LayerWeights(make(rows, inputs), make(rows, out_size), make(rows), make(rows),
                           make(out_size, hidden) if proj else None, extra)
    if spec.name.startswith("slstm"):  # R as 2 heads' blocks (K, 4D, D); one bias, b_ih
        weights = weights._replace(w_hh=make(2, 4 * hidden // 2, hidden // 2), b_hh=None)
    x = make(steps, batch, inputs)
    state = (make(batch, out_size), *(make(batch, size) for size in spec.state_sizes(hidden)))
    return x, state, weights


def _noise(cell, x, state, *, zoneout, mask, candidate):
    if not (zoneout or mask or candidate):
        return None
    steps, batch = x.shape[:2]
    out_size = state[0].shape[1]
    hidden = state[1].shape[1] if len(state) >= 2 else out_size
    width = out_size + (hidden if cell_spec(cell).has_cell_state else 0)
    options = {"dtype": x.dtype, "device": x.device}
    return LayerNoise(torch.rand(steps, batch, width, **options) if zoneout else None,
                      (torch.rand(batch, out_size, **options) > 0.3).to(x.dtype) / 0.7 if mask else None,
                      (torch.rand(steps, batch, hidden, **options) > 0.3).to(x.dtype) / 0.7 if candidate else None)


def _run_both(cell, x, state, weights, batch_sizes, reverse, noise):
    """Outputs, final states, traces and the gradients of every input of one loss, for the reference scan and the
    Triton kernels."""
    results = []
    for run in (scan_reference, run_layer_triton):
        result = run(cell, x, state, weights, batch_sizes, reverse, True, noise)
        probe = torch.linspace(-1, 1, result.y.numel(), dtype=x.dtype, device=x.device).view_as(result.y)
        loss = (result.y * probe).sum() + sum((s ** 2).sum() for s in result.state)
        inputs = [x, *state, *[w for w in weights[:5] if w is not None], *weights.extra]
        grads = torch.autograd.grad(loss, inputs)
        results.append(([result.y.detach()], [s.detach() for s in result.state],
                        [t.detach() for t in result.trace], list(grads)))
    return results


def _noise_options(cell: str) -> dict:
    """Every noise the cell takes: zoneout (not for states of several blocks), the recurrent mask, candidate
    dropout (cells with a candidate)."""
    spec = cell_spec(cell)
    return {"zoneout": spec.state_blocks <= 1, "mask": True, "candidate": spec.candidate_gate is not None}


CASES = [(cell, options) for cell in KERNELS
         for options in ({}, {"packed": True}, {"packed": True, "reverse": True}, _noise_options(cell),
                         {"packed": True, "reverse": True, **_noise_options(cell)})]
CASES += [("lstm", {"proj": 4}), ("lstm", {"proj": 4, "packed": True, "reverse": True, "zoneout": True,
                                           "mask": True, "candidate": True})]


@pytest.mark.parametrize("cell,options", CASES,
                         ids=lambda v: v if isinstance(v, str) else "-".join(k for k in v if v[k]) or "plain")
def test_kernels_match_the_step_functions(cell, options):
    """Forward, final state, every trace field and the gradients of x, the states and every weight, float64."""
    torch.manual_seed(len(cell) + 7 * len(options))
    x, state, weights = _random_layer(cell, proj=options.get("proj", 0))
    batch_sizes = [3, 3, 2, 2, 1] if options.get("packed") else None
    noise = _noise(cell, x, state, zoneout=options.get("zoneout"), mask=options.get("mask"),
                   candidate=options.get("candidate"))
    reference, ours = _run_both(cell, x, state, weights, batch_sizes, options.get("reverse", False), noise)
    for part, (expected, got) in enumerate(zip(reference, ours)):
        assert len(expected) == len(got)
        for a, b in zip(expected, got):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9, msg=f"part {part} of {cell} {options}")


@pytest.mark.parametrize("cell", sorted(KERNELS))
def test_inference_keeps_two_steps(cell, monkeypatch):
    """Without a gradient or a trace the loop keeps each buffer for two steps only (a ring) and gives the reference's
    outputs and final states, packed and reversed, with noise."""
    from gatedrnn.engine import triton_loop

    spans = []
    forward = triton_loop._forward

    def spy(config, *args):
        result = forward(config, *args)
        spans.extend(buffer.shape[0] for name, buffer in result[3].items() if buffer is not result[0])
        return result

    monkeypatch.setattr(triton_loop, "_forward", spy)
    torch.manual_seed(13)
    x, state, weights = _random_layer(cell)
    noise = _noise(cell, x, state, **_noise_options(cell))
    with torch.no_grad():
        got = run_layer_triton(cell, x, state, weights, [3, 3, 2, 2, 1], True, False, noise)
        expected = scan_reference(cell, x, state, weights, [3, 3, 2, 2, 1], True, False, noise)
    assert spans and set(spans) == {2}
    for a, b in zip((expected.y, *expected.state), (got.y, *got.state)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cell", ["lstm", "lstm_fgr", "slstm"])
def test_strided_initial_states(cell):
    """An initial state that is a view (an expanded learned state, rows of a transposed tensor) gives what the
    reference gives: the engine makes its rows contiguous."""
    torch.manual_seed(12)
    x, state, weights = _random_layer(cell)
    strided = tuple(s[:1].detach().expand_as(s) for s in state[:1]) + tuple(
        s.detach().t().contiguous().t() for s in state[1:])
    assert not any(s.is_contiguous() for s in strided)
    got = run_layer_triton(cell, x.detach(), strided, weights, trace=True)
    expected = scan_reference(cell, x.detach(), strided, weights, trace=True)
    for a, b in zip((expected.y, *expected.state, *expected.trace), (got.y, *got.state, *got.trace)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


def test_gradcheck_lstm_with_projection_and_noise():
    torch.manual_seed(3)
    x, state, weights = _random_layer("lstm", proj=2, steps=3, batch=2, inputs=2, hidden=3)
    noise = _noise("lstm", x, state, zoneout=True, mask=True, candidate=True)

    def run(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        result = run_layer_triton("lstm", x, (h0, c0), LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr), [2, 2, 1],
                                  False, False, noise)
        return result.y, *result.state

    assert torch.autograd.gradcheck(run, (x, *state, *weights[:5]), fast_mode=True)


@pytest.mark.parametrize("kind,options", [
    ("LSTM", {"num_layers": 2, "bidirectional": True}), ("LSTM", {"proj_size": 3, "batch_first": True}),
    ("GRU", {"num_layers": 2, "batch_first": True}), ("GRU", {"bidirectional": True}),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2}), ("RNN", {"bidirectional": True}),
])
def test_layers_match_torch_nn(triton_backend, kind, options):
    """gatedrnn's layers on the GPU engine against torch.nn's, hx given (packed input for the batch_first cases):
    outputs, states, and the gradients of the input and every parameter (float32)."""
    torch.manual_seed(11)
    theirs = getattr(torch.nn, kind)(5, 6, **options).to(DEVICE)
    ours = getattr(gatedrnn, kind)(5, 6, **options).to(DEVICE)
    ours.load_state_dict(theirs.state_dict())
    batch_first = options.get("batch_first", False)
    x = torch.randn(4, 7, 5, device=DEVICE)  # (N, L, ·) or (L, N, ·)
    lengths = torch.tensor([7, 6, 6, 2]) if batch_first else None
    count = theirs.num_layers * (2 if theirs.bidirectional else 1)
    h0 = torch.randn(count, 7 if not batch_first else 4, options.get("proj_size", 0) or 6, device=DEVICE)
    hx = (h0, torch.randn(count, h0.shape[1], 6, device=DEVICE)) if kind == "LSTM" else h0
    inputs = [x] if lengths is None else [pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)]
    for module_input in inputs:
        outputs = []
        for module in (theirs, ours):
            module.zero_grad()
            source = module_input.data if hasattr(module_input, "data") and not isinstance(module_input, torch.Tensor)\
                else module_input
            source.requires_grad_(True)
            if source.grad is not None:
                source.grad = None
            y, hidden = module(module_input, hx)
            y_tensor = y.data if not isinstance(y, torch.Tensor) else y
            states = hidden if isinstance(hidden, tuple) else (hidden,)
            loss = (y_tensor * torch.cos(torch.arange(y_tensor.numel(), device=DEVICE).view_as(y_tensor))).sum()
            loss = loss + sum((s * s).sum() for s in states)
            loss.backward()
            outputs.append([y_tensor.detach(), *[s.detach() for s in states], source.grad.clone(),
                            *[p.grad.clone() for p in module.parameters()]])
        for a, b in zip(*outputs):
            torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5)
    assert len(triton_backend) == len(inputs) * ours.num_layers * ours.num_directions


def test_double_backward_raises_naming_the_reference_path(triton_backend):
    layer = gatedrnn.GRU(3, 4).to(DEVICE)
    x = torch.randn(5, 2, 3, device=DEVICE, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="GATEDRNN_BACKEND=reference"):
        grad.sum().backward()


def test_traces_match_the_reference_and_carry_no_gradient(triton_backend, monkeypatch):
    from gatedrnn.inspect import trace

    torch.manual_seed(5)
    layer = gatedrnn.LSTM(3, 4, num_layers=2).to(DEVICE)
    x = torch.randn(6, 2, 3, device=DEVICE)
    ours = trace(layer, x)
    assert triton_backend == ["lstm", "lstm"]
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    expected = trace(layer, x)
    for name in ("i", "f", "g", "o", "c", "h"):
        torch.testing.assert_close(ours.series(name, layer=0), expected.series(name, layer=0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.series(name, layer=1), expected.series(name, layer=1), rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("GATEDRNN_BACKEND", "triton")
    result = engine.run_layer("gru", x.requires_grad_(True), (torch.zeros(2, 4, device=DEVICE),),
                              gatedrnn.GRU(3, 4).to(DEVICE).layer_weights(0), trace=True)
    with pytest.raises(RuntimeError, match="carries no gradient"):
        result.trace.z.sum().backward()


def test_backend_info_names_the_triton_path(triton_backend, monkeypatch):
    info = gatedrnn.backend_info(device=DEVICE)
    assert info["backend"] == "triton" and "Triton" in info["reason"]
    if DEVICE == "cpu":  # asked about CUDA on a machine without it
        info = gatedrnn.backend_info(device="cuda")
        assert info["backend"] == "reference" and "CUDA is not available" in info["reason"]
    if DEVICE == "cpu":  # on CPU tensors the kernels need the interpreter, and the layer falls back (correctly)
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        info = gatedrnn.backend_info(device="cpu")
        assert info["backend"] == "reference" and "TRITON_INTERPRET=1" in info["reason"]


def test_cells_without_a_kernel_run_the_reference_loop(triton_backend):
    """minGRU has no step kernel (its layer scans all steps at once): run_layer gives it the reference scan."""
    torch.manual_seed(2)
    x, state, weights = _random_layer("mingru")
    weights = weights._replace(w_hh=None, b_hh=None)
    ours = engine.run_layer("mingru", x, state, weights)
    assert triton_backend == []
    torch.testing.assert_close(ours.y, scan_reference("mingru", x, state, weights).y, rtol=0, atol=0)


@pytest.mark.parametrize("kind,options", [
    ("LayerNormLSTM", {"num_layers": 2, "bidirectional": True, "bias": False}),
    ("LayerNormLSTM", {"batch_first": True, "zoneout": 0.2}),
    ("LSTM", {"variant": "peephole", "num_layers": 2, "recurrent_dropout": 0.3}),
    ("LSTM", {"variant": "cifg", "bidirectional": True, "candidate_dropout": 0.2, "zoneout": 0.1}),
    ("LSTM", {"variant": "fgr", "num_layers": 2, "bidirectional": True, "recurrent_dropout": 0.2}),
    ("SLSTM", {"num_layers": 2, "bidirectional": True, "num_heads": 2}),
    ("SLSTM", {"forget_gate": "exp", "batch_first": True}),
    ("LayerNormGRU", {"bias": False, "num_layers": 2}),
    ("LayerNormGRU", {"bidirectional": True, "zoneout": 0.1, "recurrent_dropout": 0.2}),
])
def test_own_cells_match_the_reference_loop(triton_backend, monkeypatch, kind, options):
    """Cells torch.nn has not (LayerNorm LSTM and GRU, Greff's variants, the sLSTM) on the GPU engine against the
    reference loop, float64: outputs, states and every parameter's gradient (gains, biases, peepholes, R_g, the
    heads' R), in training mode (the same noise drawn for both)."""
    torch.manual_seed(9)
    layer = getattr(gatedrnn, kind)(3, 6, **options).to(DEVICE, torch.float64)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            if name.startswith(("gamma", "beta", "weight_peephole", "weight_gate_hh")):
                parameter.uniform_(0.5, 1.5)  # not the ones / zeros of the init: every gain must enter right
    x = torch.randn(6, 4, 3, device=DEVICE, dtype=torch.float64)
    results = []
    for backend in ("triton", "reference"):
        monkeypatch.setenv("GATEDRNN_BACKEND", backend)
        layer.zero_grad()
        torch.manual_seed(1)  # the same zoneout draw
        y, hidden = layer(x)
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        (y.sin().sum() + sum((s * s).sum() for s in states)).backward()
        results.append([y.detach(), *[s.detach() for s in states], *[p.grad.clone() for p in layer.parameters()]])
    for ours, expected in zip(*results):
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    assert set(triton_backend) == {layer.mode}


def test_gradcheck_layernorm_lstm():
    torch.manual_seed(6)
    x, state, weights = _random_layer("layernorm_lstm", steps=3, batch=2, inputs=2, hidden=3)

    def run(x, h0, c0, w_ih, w_hh, b_ih, b_hh, *extra):
        result = run_layer_triton("layernorm_lstm", x, (h0, c0), LayerWeights(w_ih, w_hh, b_ih, b_hh, None, extra))
        return result.y, *result.state

    assert torch.autograd.gradcheck(run, (x, *state, *weights[:4], *weights.extra), fast_mode=True)


def test_half_precision_computes_in_float32():
    """float16 in, float16 out; the gates are computed in float32 (error against float64 near float16's own)."""
    torch.manual_seed(4)
    x, state, weights = _random_layer("lstm", dtype=torch.float64)
    expected = scan_reference("lstm", x, state, weights)
    half = lambda t: None if t is None else t.detach().half()  # noqa: E731
    got = run_layer_triton("lstm", half(x), tuple(map(half, state)), LayerWeights(*map(half, weights[:5])))
    assert got.y.dtype is torch.float16
    torch.testing.assert_close(got.y.double(), expected.y.detach(), rtol=0, atol=2e-2)


def test_cuda_layers_route_plain_cells_to_torch_op(monkeypatch):
    """On CUDA a torch.nn cell without trace or noise runs torch's op (cuDNN); variants, LayerNorm cells, zoneout,
    and GATEDRNN_BACKEND set to another path run gatedrnn's; the CPU never takes this route."""
    plain = [gatedrnn.LSTM(3, 4, proj_size=2), gatedrnn.GRU(3, 4), gatedrnn.RNN(3, 4, nonlinearity="relu"),
             gatedrnn.LSTM(3, 4, variant="np")]
    own = [gatedrnn.LSTM(3, 4, variant="peephole"), gatedrnn.LayerNormLSTM(3, 4), gatedrnn.GRU(3, 4, zoneout=0.1)]
    assert all(aten.runs_torch_op(m, "cuda") for m in plain)
    assert not any(aten.runs_torch_op(m, "cuda") for m in own)
    assert not any(aten.runs_torch_op(m, "cpu") for m in plain)
    plain[1].eval()  # cuDNN's RNN backward needs training mode: eval with gradients runs gatedrnn's engine
    assert not aten.runs_torch_op(plain[1], "cuda")
    with torch.no_grad():
        assert aten.runs_torch_op(plain[1], "cuda")
    replaced = gatedrnn.GRU(3, 4)
    replaced.layer_weights = lambda layer, direction=0: gatedrnn.GRU.layer_weights(replaced, layer, direction)
    assert not aten.runs_torch_op(replaced, "cuda")  # cuDNN would read the registered parameters instead
    monkeypatch.setenv("GATEDRNN_BACKEND", "triton")
    assert not aten.runs_torch_op(plain[0], "cuda")
    before = [p.data_ptr() for p in plain[0].parameters()]
    plain[0].flatten_parameters()  # CPU: a no-op, as torch.nn's
    assert before == [p.data_ptr() for p in plain[0].parameters()]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_torch_cell_step_matches_the_step_function(cell):
    """CUDA streaming steps torch.nn's cells on torch's cell op: the same numbers as the cell's step function."""
    torch.manual_seed(8)
    x, state, weights = _random_layer(cell)
    expected, _ = make_step(cell, weights)(torch.nn.functional.linear(x[0], weights.w_ih, weights.b_ih), state)
    got = engine_step.torch_cell_step(cell, x[0], state, weights)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
