"""MinGRU / MinLSTM (gatedrnn.layers.minimal): both scans equal the step loop (values and every gradient) in
every input form; the paper's own code (sequential and log-space) equals the layer; the NumPy reference
agrees with the layer and its BPTT with finite differences; streaming, traces, errors and the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn.cells.linear_scan import linear_scan
from gatedrnn.inspect import trace
from gatedrnn.layers import ArgumentTypeError, DtypeError, MinGRU, MinLSTM, ShapeError
from gatedrnn.models import build_rnn
from gatedrnn.reference import (
    MinimalParams, mingru_backward, mingru_forward, minlstm_backward, minlstm_forward,
)
from cli_runner import run_cli

LAYERS = {"mingru": MinGRU, "minlstm": MinLSTM}
TOL = {torch.float64: 1e-10, torch.float32: 3e-5}

# name -> layer options and input form. Lengths (packed) are in the caller's (unsorted) order.
CONFIGS = {
    "plain": dict(),
    "h0": dict(h0=True),
    "batch_first_2layers": dict(batch_first=True, num_layers=2, h0=True),
    "bidirectional_2layers": dict(bidirectional=True, num_layers=2, h0=True),
    "unbatched": dict(unbatched=True, h0=True),
    "packed_bidirectional": dict(lengths=[4, 7, 1, 5], bidirectional=True, h0=True),
    "packed_2layers_nobias": dict(lengths=[6, 2, 7], num_layers=2, bias=False),
}


def _make(cell: str, config: dict, dtype, scan: str = "auto", seed: int = 0):
    """(layer, input, h0 or None) for one config; h0 has either sign (the scans take any real h0)."""
    torch.manual_seed(seed)
    layer = LAYERS[cell](3, 4, num_layers=config.get("num_layers", 1), bias=config.get("bias", True),
                         batch_first=config.get("batch_first", False), bidirectional=config.get("bidirectional", False),
                         dtype=dtype, scan=scan)
    count = layer.num_layers * layer.num_directions
    lengths = config.get("lengths")
    if lengths is not None:
        padded = torch.randn(max(lengths), len(lengths), 3, dtype=dtype)
        x = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False)
        h0 = torch.randn(count, len(lengths), 4, dtype=dtype)
    elif config.get("unbatched"):
        x, h0 = torch.randn(6, 3, dtype=dtype), torch.randn(count, 4, dtype=dtype)
    else:
        x = torch.randn(3, 6, 3, dtype=dtype) if config.get("batch_first") else torch.randn(6, 3, 3, dtype=dtype)
        h0 = torch.randn(count, 3, 4, dtype=dtype)
    return layer, x, (h0 if config.get("h0") else None)


def _data(x):
    return x.data if hasattr(x, "batch_sizes") else x


def _outputs_and_grads(layer, run, x, h0, seed: int = 1):
    """Output data, h_n, and the gradients of a fixed random loss w.r.t. the input, h0 and every parameter."""
    x_data = _data(x).detach().requires_grad_()
    x_in = x._replace(data=x_data) if hasattr(x, "batch_sizes") else x_data
    h0_in = None if h0 is None else h0.detach().requires_grad_()
    layer.zero_grad()
    output, h_n = run(x_in, h0_in)
    generator = torch.Generator().manual_seed(seed)
    out = _data(output)
    loss = (out * torch.randn(out.shape, generator=generator, dtype=out.dtype)).sum() + \
        (h_n * torch.randn(h_n.shape, generator=generator, dtype=h_n.dtype)).sum()
    loss.backward()
    grads = {"x": x_data.grad, **{name: p.grad.clone() for name, p in layer.named_parameters()}}
    if h0_in is not None:
        grads["h0"] = h0_in.grad
    return out.detach(), h_n.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("scan", ["log", "linear"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("cell", list(LAYERS))
def test_parallel_scan_equals_the_step_loop(cell, config, scan, dtype):
    layer, x, h0 = _make(cell, CONFIGS[config], dtype, scan)
    y, h_n, grads = _outputs_and_grads(layer, layer, x, h0)
    y_ref, h_ref, grads_ref = _outputs_and_grads(layer, layer.forward_sequential, x, h0)
    tol = TOL[dtype]
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(h_n, h_ref, rtol=tol, atol=tol)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=tol, atol=tol, msg=f"d{name}")


@pytest.mark.parametrize("cell", list(LAYERS))
def test_packed_bidirectional_equals_each_sequence_alone(cell):
    """Each packed sequence gives what the layer gives on that sequence alone (reverse within its own length,
    final state at its own last step, zero output past its end)."""
    layer, packed, h0 = _make(cell, CONFIGS["packed_bidirectional"], torch.float64)
    output, h_n = layer(packed, h0)
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(output)
    source, _ = torch.nn.utils.rnn.pad_packed_sequence(packed)
    for b, length in enumerate(lengths.tolist()):
        alone, h_alone = layer(source[:length, b], h0[:, b])  # unbatched
        torch.testing.assert_close(padded[:length, b], alone, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h_n[:, b], h_alone, rtol=1e-12, atol=1e-12)
        assert torch.count_nonzero(padded[length:, b]) == 0


def _paper_g(x):
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def _paper_log_g(x):
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


def _paper_parallel_scan_log(log_coeffs, log_values):
    # the paper's appendix code, verbatim: batch-first (B, T, H), log_values (B, T+1, H) with log h_0 first
    a_star = F.pad(torch.cumsum(log_coeffs, dim=1), (0, 0, 1, 0))
    log_h0_plus_b_star = torch.logcumsumexp(log_values - a_star, dim=1)
    log_h = a_star + log_h0_plus_b_star
    return torch.exp(log_h)[:, 1:]


def _paper_forms(cell, weight, bias, x, h_0):
    """The paper's sequential form (Algorithms 1 / 3 with g, appendix code) and its parallel log-space form
    (Algorithms 2 / 4), written from the paper: x (B, T, I), h_0 (B, 1, H) > 0. Returns both (B, T, H)."""
    linears = [lambda v, w=w, b=b: F.linear(v, w, b) for w, b in zip(weight.chunk(3 if cell == "minlstm" else 2),
                                                                      bias.chunk(3 if cell == "minlstm" else 2))]
    h_prev, sequential = h_0[:, 0], []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        if cell == "mingru":
            linear_z, linear_h = linears
            z_t = torch.sigmoid(linear_z(x_t))
            h_tilde = _paper_g(linear_h(x_t))
            h_t = (1 - z_t) * h_prev + z_t * h_tilde
        else:
            linear_f, linear_i, linear_h = linears
            f_t = torch.sigmoid(linear_f(x_t))
            i_t = torch.sigmoid(linear_i(x_t))
            tilde_h_t = _paper_g(linear_h(x_t))
            f_prime_t = f_t / (f_t + i_t)
            i_prime_t = i_t / (f_t + i_t)
            h_t = f_prime_t * h_prev + i_prime_t * tilde_h_t
        sequential.append(h_t)
        h_prev = h_t
    if cell == "mingru":
        linear_z, linear_h = linears
        k = linear_z(x)
        log_z = -F.softplus(-k)
        log_coeffs = -F.softplus(k)
        log_h_0 = torch.log(h_0)
        log_tilde_h = _paper_log_g(linear_h(x))
        h = _paper_parallel_scan_log(log_coeffs, torch.cat([log_h_0, log_z + log_tilde_h], dim=1))
    else:
        linear_f, linear_i, linear_h = linears
        diff = F.softplus(-linear_f(x)) - F.softplus(-linear_i(x))
        log_f = -F.softplus(diff)
        log_i = -F.softplus(-diff)
        log_h_0 = torch.log(h_0)
        log_tilde_h = _paper_log_g(linear_h(x))
        h = _paper_parallel_scan_log(log_f, torch.cat([log_h_0, log_i + log_tilde_h], dim=1))
    return torch.stack(sequential, dim=1), h


@pytest.mark.parametrize("scan", ["log", "linear"])
@pytest.mark.parametrize("cell", list(LAYERS))
def test_the_papers_sequential_and_log_space_code_equal_the_layer(cell, scan):
    torch.manual_seed(3)
    layer = LAYERS[cell](5, 6, batch_first=True, dtype=torch.float64, scan=scan)
    x = torch.randn(4, 9, 5, dtype=torch.float64) * 2
    h_0 = torch.rand(4, 1, 6, dtype=torch.float64) + 0.1  # the paper's log(h_0) needs h_0 > 0
    sequential, parallel = _paper_forms(cell, layer.weight_ih_l0, layer.bias_ih_l0, x, h_0)
    output, h_n = layer(x, h_0.transpose(0, 1))
    torch.testing.assert_close(sequential, parallel, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(output, sequential, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_n[0], sequential[:, -1], rtol=1e-10, atol=1e-12)


REFERENCE = {"mingru": (mingru_forward, mingru_backward), "minlstm": (minlstm_forward, minlstm_backward)}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", list(LAYERS))
def test_numpy_reference_equals_the_layer_forward_and_gradients(cell, bias):
    torch.manual_seed(5)
    layer = LAYERS[cell](3, 4, bias=bias, dtype=torch.float64)
    rng = np.random.default_rng(5)
    x, h0 = rng.normal(size=(5, 2, 3)) * 2, rng.normal(size=(2, 4))
    dy, dh_T = rng.normal(size=(5, 2, 4)), rng.normal(size=(2, 4))
    forward, backward = REFERENCE[cell]
    y, h_T, cache = forward(x, h0, MinimalParams.from_state_dict(layer.state_dict()))
    grads = backward(dy, dh_T, cache)

    x_t, h0_t = torch.tensor(x, requires_grad=True), torch.tensor(h0[None], requires_grad=True)
    y_t, h_n = layer(x_t, h0_t)
    ((y_t * torch.tensor(dy)).sum() + (h_n[0] * torch.tensor(dh_T)).sum()).backward()
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_T, h_n[0].detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads.dx, x_t.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(grads.dh0, h0_t.grad[0].numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(grads.dw_ih, layer.weight_ih_l0.grad.numpy(), rtol=0, atol=1e-10)
    if bias:
        np.testing.assert_allclose(grads.db_ih, layer.bias_ih_l0.grad.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell", list(LAYERS))
def test_numpy_backward_matches_finite_differences(cell):
    rng = np.random.default_rng(11)
    gates = 3 if cell == "minlstm" else 2
    arrays = {"x": rng.normal(size=(4, 2, 3)) * 2, "h0": rng.normal(size=(2, 3)),
              "w_ih": rng.uniform(-0.8, 0.8, (gates * 3, 3)), "b_ih": rng.uniform(-0.8, 0.8, gates * 3)}
    dy, dh_T = rng.normal(size=(4, 2, 3)), rng.normal(size=(2, 3))
    forward, backward = REFERENCE[cell]

    def loss(a):
        y, h_T, _ = forward(a["x"], a["h0"], MinimalParams(a["w_ih"], a["b_ih"]))
        return float((dy * y).sum() + (dh_T * h_T).sum())

    _, _, cache = forward(arrays["x"], arrays["h0"], MinimalParams(arrays["w_ih"], arrays["b_ih"]))
    grads = backward(dy, dh_T, cache)
    eps = 1e-6
    for target in arrays:
        numeric = np.zeros_like(arrays[target])
        for idx in np.ndindex(numeric.shape):
            values = []
            for sign in (1, -1):
                shifted = {k: v.copy() for k, v in arrays.items()}
                shifted[target][idx] += sign * eps
                values.append(loss(shifted))
            numeric[idx] = (values[0] - values[1]) / (2 * eps)
        np.testing.assert_allclose(getattr(grads, "d" + target), numeric, rtol=1e-6, atol=1e-7,
                                   err_msg=f"{cell}: d{target}")


@pytest.mark.parametrize("scan", ["log", "linear"])
@pytest.mark.parametrize("cell", list(LAYERS))
def test_gradcheck_float64(cell, scan):
    torch.manual_seed(2)
    layer = LAYERS[cell](2, 3, num_layers=2, bidirectional=True, dtype=torch.float64, scan=scan)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())

    def run(x, h0, *weights):
        output, h_n = torch.func.functional_call(layer, dict(zip(dict(layer.named_parameters()), weights)), (x, h0))
        return output, h_n

    assert torch.autograd.gradcheck(run, (x, h0, *params))


def test_linear_scan_any_sign_and_gradcheck():
    """h_t = a_t h_{t-1} + b_t with negative a, b and h0, over lengths that do and do not fill the chunks."""
    torch.manual_seed(4)
    for steps in (1, 5, 16, 17):
        a = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(steps, 2, 3, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        h, expected = h0, []
        for t in range(steps):
            h = a[t] * h + b[t]
            expected.append(h)
        torch.testing.assert_close(linear_scan(a, b, h0), torch.stack(expected), rtol=1e-12, atol=1e-12)
        assert torch.autograd.gradcheck(linear_scan, (a, b, h0))


@pytest.mark.parametrize("cell", list(LAYERS))
def test_float32_scan_over_a_long_sequence_stays_close_to_float64(cell):
    torch.manual_seed(6)
    layer = LAYERS[cell](8, 16, dtype=torch.float64)
    x = torch.randn(2000, 2, 8, dtype=torch.float64)
    expected, _ = layer(x)
    layer32 = LAYERS[cell](8, 16, scan="linear")
    layer32.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    output, _ = layer32(x.float())
    torch.testing.assert_close(output.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("cell", list(LAYERS))
def test_streaming_step_equals_forward(cell, batched):
    torch.manual_seed(7)
    layer = LAYERS[cell](3, 4, num_layers=2, batch_first=True)
    x = torch.randn(2, 6, 3) if batched else torch.randn(6, 3)
    h0 = torch.randn(2, 2, 4) if batched else torch.randn(2, 4)
    output, h_n = layer(x, h0)
    state, ys = h0, []
    for t in range(6):
        y, state = layer.step(x[:, t] if batched else x[t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, dim=1 if batched else 0), output, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, h_n, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", list(LAYERS))
def test_traces_equal_the_step_functions_gates(cell):
    """inspect.trace on a packed, bidirectional, batch_first... input: the scan's gates equal the step loop's,
    h equals the output, zeros past each sequence's end."""
    layer, packed, h0 = _make(cell, CONFIGS["packed_bidirectional"], torch.float64)
    traced = trace(layer, packed, h0)
    output, h_n = layer(packed, h0)
    torch.testing.assert_close(traced.hidden, h_n)
    reference = layer._run(packed, h0, trace=True, sequential=True)[2]
    unsorted = packed.unsorted_indices
    padded_out, lengths = torch.nn.utils.rnn.pad_packed_sequence(output)  # (T, B, 2H), caller's order
    expected_fields = {"mingru": ("z", "h_tilde", "h"), "minlstm": ("f", "i", "h_tilde", "h")}[cell]
    for direction in range(2):
        got = traced.get(0, direction)
        assert got._fields == expected_fields
        for name in got._fields:
            expected = getattr(reference[0][direction], name).index_select(1, unsorted)
            torch.testing.assert_close(getattr(got, name), expected, rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(got.h, padded_out[..., 4 * direction: 4 * direction + 4])
        for b, length in enumerate(lengths.tolist()):
            assert torch.count_nonzero(got.z[length:, b] if cell == "mingru" else got.f[length:, b]) == 0
    if cell == "minlstm":  # the normalised gates sum to one on real steps
        got = traced.get(0, 0)
        valid = got.f != 0
        torch.testing.assert_close((got.f + got.i)[valid], torch.ones_like(got.f[valid]))
    gate_trace = layer.gate_trace(packed, h0)
    torch.testing.assert_close(gate_trace[0][1].h, traced.get(0, 1).h)


def test_parameters_are_named_and_initialised_like_torch():
    layer = MinLSTM(3, 16, num_layers=2, bidirectional=True)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        "weight_ih_l0": (48, 3), "bias_ih_l0": (48,), "weight_ih_l0_reverse": (48, 3), "bias_ih_l0_reverse": (48,),
        "weight_ih_l1": (48, 32), "bias_ih_l1": (48,), "weight_ih_l1_reverse": (48, 32), "bias_ih_l1_reverse": (48,),
    }
    assert dict((n, tuple(p.shape)) for n, p in MinGRU(3, 5, bias=False).named_parameters()) == {"weight_ih_l0": (10, 3)}
    for p in layer.parameters():
        assert p.abs().max() <= 0.25 and p.std() > 0.1  # U(-1/4, 1/4): std 0.144
    assert gatedrnn.MinGRU is MinGRU and gatedrnn.MinLSTM is MinLSTM


def test_bad_inputs_raise_the_layers_errors():
    layer = MinGRU(3, 4, num_layers=2)
    with pytest.raises(ShapeError, match="input_size: expected 3, got 5"):
        layer(torch.randn(6, 2, 5))
    with pytest.raises(ShapeError, match="3-D .batched. or 2-D"):
        layer(torch.randn(6, 2, 3, 1))
    with pytest.raises(ShapeError, match="at least one time step"):
        layer(torch.randn(0, 2, 3))
    with pytest.raises(DtypeError, match="does not match the parameters' dtype"):
        layer(torch.randn(6, 2, 3, dtype=torch.float64))
    with pytest.raises(ArgumentTypeError, match="hx should be a Tensor"):
        layer(torch.randn(6, 2, 3), (torch.zeros(2, 2, 4),))
    with pytest.raises(ShapeError, match=r"h_0 should have shape \(2, 2, 4\)"):
        layer(torch.randn(6, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ShapeError, match="h_0 should be 2-D"):
        layer(torch.randn(6, 3), torch.zeros(2, 1, 4))
    with pytest.raises(ShapeError, match="step.. takes one time step"):
        layer.step(torch.randn(6, 2, 3))
    with pytest.raises(ValueError, match="bidirectional"):
        MinLSTM(3, 4, bidirectional=True).step(torch.randn(2, 3))
    with pytest.raises(ValueError, match="scan should be 'auto' or one of"):
        MinGRU(3, 4, scan="fast")
    with pytest.raises(TypeError, match="hidden_size should be an int"):
        MinGRU(3, 4.0)
    with pytest.raises(ValueError, match="supports only the default init"):
        build_rnn("mingru", 3, 4, init={"init": "chrono", "chrono_max": 10})


def test_train_cli_runs_mingru_on_the_adding_task(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        code, _, err = run_cli(capsys, "train", "--task", "adding", "--cell", "mingru", "-o", "seq_len=6",
                               "-o", "n_train=32", "-o", "n_val=16", "-o", "n_test=16", "--hidden-size", "8",
                               "--epochs", "1", "--max-steps", "2", "--batch-size", "16", "--quiet",
                               "--no-tensorboard", "--threads", "1", "--out-dir", str(tmp_path / "run"))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert (tmp_path / "run" / "results.json").is_file()


@pytest.mark.parametrize("layer_class", [gatedrnn.MinGRU, gatedrnn.MinLSTM])
def test_jit_trace_refuses_with_a_clear_error(layer_class):
    """No torch RNN op to record: the tracer is refused by name, pointing at torch.export / torch.compile."""
    layer = layer_class(3, 4).eval()
    with pytest.raises(RuntimeError, match=f"torch.jit.trace cannot record {layer_class.__name__}.*torch.export"):
        torch.jit.trace(layer, (torch.randn(5, 2, 3),), check_trace=False)


# ----- the C++ engine's scans (gatedrnn.engine.minimal, csrc/minimal_scan.h) -----
MINIMAL_SCANS = {"mingru": (2, "MinGRUScan"), "minlstm": (3, "MinLSTMScan")}


def _engine_or_skip():
    from gatedrnn.engine import runs_fused

    if not runs_fused(torch.zeros(1)):
        pytest.skip("the fused C++ engine is not available here")


def _torch_scan(cell: str):
    from gatedrnn.cells import minimal_fused

    return getattr(minimal_fused, MINIMAL_SCANS[cell][1]).apply


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(37, 5, 130), (1, 1, 1), (3, 2, 64), (9, 1, 200), (64, 5, 500)], ids=str)
@pytest.mark.parametrize("cell", list(MINIMAL_SCANS))
def test_engine_scan_equals_the_torch_scan_values_and_gradients(cell, shape, dtype):
    """Blocks of 64 units, a remainder block, one unit, one step, and (64, 5, 500) where two threads split a row's
    blocks between them; dL/dh given as a full tensor, as sum()'s broadcast value (stride 0 along H), broadcast over
    T and B only, and as a strided view; h0 of either sign."""
    from gatedrnn.engine.minimal import minimal_scan

    _engine_or_skip()
    steps, batch, hidden = shape
    torch.manual_seed(sum(shape))
    x_proj = (2 * torch.randn(steps, batch, MINIMAL_SCANS[cell][0] * hidden, dtype=dtype)).requires_grad_()
    h0 = torch.randn(batch, hidden, dtype=dtype, requires_grad=True)
    tol = TOL[dtype]
    h = minimal_scan(cell, x_proj, h0)
    assert h is not None and h.grad_fn is not None and "_MinimalScan" in type(h.grad_fn).__name__
    expected = _torch_scan(cell)(x_proj, h0)
    torch.testing.assert_close(h, expected, rtol=tol, atol=tol)
    weights = torch.randn(steps, batch, 2 * hidden, dtype=dtype)[..., ::2]  # a strided dL/dh
    per_unit = torch.randn(hidden, dtype=dtype)
    for name, loss in (("full", lambda out: (out * weights.contiguous()).sum()), ("sum", lambda out: out.sum()),
                       ("over T and B", lambda out: (out.sum((0, 1)) * per_unit).sum()),
                       ("strided", lambda out: (out * weights).sum())):
        got = torch.autograd.grad(loss(minimal_scan(cell, x_proj, h0)), (x_proj, h0))
        wanted = torch.autograd.grad(loss(_torch_scan(cell)(x_proj, h0)), (x_proj, h0))
        for g, w, what in zip(got, wanted, ("dx_proj", "dh0")):
            torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=f"{name}: {what}")


@pytest.mark.parametrize("cell", list(MINIMAL_SCANS))
def test_engine_scan_gradcheck_nan_and_no_double_backward(cell):
    from gatedrnn.engine.minimal import minimal_scan

    _engine_or_skip()
    torch.manual_seed(3)
    x_proj = torch.randn(4, 2, MINIMAL_SCANS[cell][0] * 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: minimal_scan(cell, x, h), (x_proj, h0))
    poisoned = x_proj.detach().clone()
    poisoned[1, 0, 0] = float("nan")  # a gate of row 0, unit 0 at step 2: that unit is NaN from then on
    h = minimal_scan(cell, poisoned, h0.detach())
    assert torch.isnan(h[1:, 0, 0]).all() and not torch.isnan(h[0]).any() and not torch.isnan(h[:, 1]).any()



@pytest.mark.parametrize("engine", [True, False], ids=["engine", "torch"])
@pytest.mark.parametrize("cell", list(MINIMAL_SCANS))
def test_a_second_derivative_through_the_linear_scan_raises_and_the_log_scan_gives_it(cell, engine, monkeypatch):
    """A gradient penalty (create_graph=True, sum()'s gradient, which does not itself require grad) must not
    silently lose the terms through the hand-written backward's saved tensors: it raises, naming scan='log',
    which gives the second derivative (checked by gradgradcheck)."""
    if engine:
        _engine_or_skip()
    else:
        monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    torch.manual_seed(5)
    layer = LAYERS[cell](2, 3, dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(layer(x)[0].sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative .* through gatedrnn's linear-space scans.*scan='log'"):
        (dx ** 2).sum().backward()
    layer.scan = "log"
    assert torch.autograd.gradgradcheck(lambda inp: layer(inp)[0], (x,))


@pytest.mark.parametrize("cell", list(MINIMAL_SCANS))
def test_layer_runs_the_engine_scan_only_where_it_serves_the_call(cell, monkeypatch):
    """Eager CPU float: the engine (no torch ops over time); the profiler, GATEDRNN_BACKEND=reference, bfloat16 and
    traces: torch's scan; both give the same result."""
    from gatedrnn.engine.minimal import minimal_scan

    _engine_or_skip()
    layer = LAYERS[cell](3, 4)
    x = torch.randn(6, 2, 3)
    x_proj = torch.randn(6, 2, MINIMAL_SCANS[cell][0] * 4)
    h0 = torch.zeros(2, 4)
    assert minimal_scan(cell, x_proj, h0) is not None
    with torch.profiler.profile() as prof:
        profiled, _ = layer(x)
    names = {event.name for event in prof.events()}
    assert "aten::lerp" in names or "aten::addcmul" in names  # the profiler sees torch's scan, op by op
    assert minimal_scan(cell, x_proj.bfloat16(), h0.bfloat16()) is None
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    assert minimal_scan(cell, x_proj, h0) is None
    reference, _ = layer(x)
    monkeypatch.delenv("GATEDRNN_BACKEND")
    fused, _ = layer(x)
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(profiled, reference, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"cell should be one of \('mingru', 'minlstm'\), got 'gru'"):
        minimal_scan("gru", x_proj, h0)


@pytest.mark.parametrize("scan", ["auto", "linear"])
@pytest.mark.parametrize("cell", list(LAYERS))
def test_torch_compile_fullgraph_trains_like_eager(cell, scan):
    """A compiled training step (fullgraph: no graph break) gives eager's output and gradients; scan="auto" compiles
    the log-space scan (the linear one's loop over time would be unrolled into the graph)."""
    torch.manual_seed(8)
    layer = LAYERS[cell](3, 4, num_layers=2, scan=scan)
    x = torch.randn(5, 2, 3)
    eager, _ = layer(x)
    eager_grads = torch.autograd.grad(eager.square().sum(), list(layer.parameters()))
    torch._dynamo.reset()
    compiled, _ = torch.compile(layer, fullgraph=True)(x)
    compiled_grads = torch.autograd.grad(compiled.square().sum(), list(layer.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", list(MINIMAL_SCANS))
def test_a_backward_under_a_profiler_started_after_the_forward_runs_torchs_bptt(cell):
    """The profiler (or a dispatch mode) must see the backward's work: the engine scan's backward then runs the torch
    form's BPTT (gates recomputed from x_proj), with the same gradients."""
    from gatedrnn.engine.minimal import minimal_scan

    _engine_or_skip()
    torch.manual_seed(9)
    x_proj = torch.randn(7, 3, MINIMAL_SCANS[cell][0] * 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(7, 3, 5, dtype=torch.float64)
    wanted = torch.autograd.grad((minimal_scan(cell, x_proj, h0) * weights).sum(), (x_proj, h0))
    loss = (minimal_scan(cell, x_proj, h0) * weights).sum()
    with torch.profiler.profile() as prof:
        got = torch.autograd.grad(loss, (x_proj, h0))
    assert "aten::addcmul" in {event.name for event in prof.events()}  # scan_backward's steps, op by op
    for g, w in zip(got, wanted):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", list(LAYERS))
def test_torch_func_grad_and_forward_mode_ad_give_the_derivatives(cell):
    """scan="auto" under torch.func and under a forward-AD level is the log-space scan (torch's ops throughout):
    torch.func.grad equals autograd's gradients, and a jvp through the layer (frozen weights, no_grad-free) equals
    central finite differences in float64."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(10)
    layer = LAYERS[cell](3, 4, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    params = dict(layer.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,))[0].square().sum())(params)
    layer.zero_grad()
    layer(x)[0].square().sum().backward()
    for name, p in layer.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12)
    layer.requires_grad_(False)
    direction = torch.randn_like(x)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(layer(fwAD.make_dual(x, direction))[0]).tangent
    eps = 1e-6
    numeric = (layer(x + eps * direction)[0] - layer(x - eps * direction)[0]) / (2 * eps)
    assert tangent is not None
    torch.testing.assert_close(tangent, numeric, rtol=1e-6, atol=1e-8)
