"""sLSTM (xLSTM, Beck et al. 2024): the layer against the NumPy reference (values and every gradient), the
reference's hand-derived BPTT against finite differences, gradcheck, the block-diagonal recurrence against
a dense matrix, the normaliser and the stabiliser against closed forms, streaming, traces, bad input, CLI."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn.cells.slstm import SLSTMState, blockdiag_recurrence, dense_recurrent_matrix, slstm_step
from gatedrnn.inspect import trace
from gatedrnn.layers import ArgumentTypeError, DtypeError, ShapeError
from gatedrnn.models import build_rnn
from gatedrnn.reference import SLSTMParams, slstm_backward, slstm_forward
from cli_runner import run_cli

SLSTM = gatedrnn.SLSTM
STATES = ("h", "c", "n", "m")


# ----- the NumPy reference of a whole stack, one sample at a time -----
def _np_params(layer: SLSTM) -> dict[int, SLSTMParams]:
    """Row k = layer * D + direction -> float64 params of that layer and direction."""
    sd = {k: v.detach().double() for k, v in layer.state_dict().items()}
    return {l * layer.num_directions + d: SLSTMParams.from_state_dict(sd, layer._suffix(l, d), layer.forget_gate)
            for l in range(layer.num_layers) for d in range(layer.num_directions)}


def _np_stack_forward(params, x, states0, num_layers, D):
    """x (T, 1, I); states0: 4 arrays (D*L, 1, H). Returns y (T, 1, D*H), finals (4 x (D*L, 1, H)), caches."""
    caches, finals, layer_input = {}, [[None] * (num_layers * D) for _ in range(4)], x
    for l in range(num_layers):
        outs = []
        for d in range(D):
            k = l * D + d
            xin = np.ascontiguousarray(layer_input[::-1] if d else layer_input)  # reverse: time flipped
            y, fin, caches[k] = slstm_forward(xin, *(s[k] for s in states0), params[k])
            outs.append(y[::-1] if d else y)
            for j in range(4):
                finals[j][k] = fin[j]
        layer_input = np.concatenate(outs, axis=2)
    return layer_input, [np.stack(f) for f in finals], caches


def _np_stack_backward(caches, dy, dfinals, num_layers, D, H):
    """dy (T, 1, D*H), dfinals 4 x (D*L, 1, H) -> (dx (T, 1, I), {k: SLSTMGrads})."""
    grads, d_input = {}, dy
    for l in reversed(range(num_layers)):
        dx = 0
        for d in range(D):
            k = l * D + d
            dy_d = d_input[:, :, d * H : (d + 1) * H]
            g = slstm_backward(np.ascontiguousarray(dy_d[::-1] if d else dy_d), tuple(f[k] for f in dfinals),
                               caches[k])
            dx = dx + (g.dx[::-1] if d else g.dx)
            grads[k] = g
        d_input = dx
    return d_input, grads


CONFIGS = [
    dict(heads=1),
    dict(heads=2, hx=True, forget="exp", batch_first=True),
    dict(heads=4, bidirectional=True, packed=True, hx=True),
    dict(heads=2, layers=2, bidirectional=True, hx=True, dtype=torch.float32),
    dict(heads=2, layers=2, unbatched=True, hx=True, forget="exp", dtype=torch.float32),
    dict(heads=1, layers=2, packed=True, batch_first=True, bias=False, dtype=torch.float32),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_layer_matches_numpy_reference(config):
    """Outputs, all four final states and the gradients of x, hx and every parameter, vs NumPy BPTT."""
    dtype = config.get("dtype", torch.float64)
    T, B, I, H, L = 5, 3, 3, 8, config.get("layers", 1)
    D = 2 if config.get("bidirectional") else 1
    unbatched, packed = config.get("unbatched", False), config.get("packed", False)
    B = 1 if unbatched else B
    torch.manual_seed(len(str(config)))
    layer = SLSTM(I, H, num_heads=config["heads"], num_layers=L, bias=config.get("bias", True),
                  batch_first=config.get("batch_first", False), bidirectional=D == 2, dtype=dtype,
                  forget_gate=config.get("forget", "sigmoid"))
    with torch.no_grad():  # weights large enough that the gates saturate and the stabiliser switches
        for p in layer.parameters():
            p.normal_(0, 1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(T, B, I))
    lengths = [T, 2, 4][:B] if packed else [T] * B
    states0 = [rng.normal(size=(D * L, B, H)), rng.normal(size=(D * L, B, H)),
               rng.uniform(0.5, 2.0, size=(D * L, B, H)), rng.normal(size=(D * L, B, H))]
    if not config.get("hx"):
        states0 = [np.zeros((D * L, B, H)) for _ in range(4)]
    w_y = rng.normal(size=(T, B, D * H)) * (np.arange(T)[:, None] < np.array(lengths)[None, :])[..., None]
    w_final = [rng.normal(size=(D * L, B, H)) for _ in range(4)]

    # the layer
    x_t = torch.tensor(x, dtype=dtype, requires_grad=True)
    hx_t = [torch.tensor(s, dtype=dtype, requires_grad=True) for s in states0]
    inp = x_t.transpose(0, 1) if config.get("batch_first") else x_t
    hx = tuple(h[:, 0] for h in hx_t) if unbatched else tuple(hx_t)
    if unbatched:
        inp = x_t[:, 0]
    if packed:
        inp = pack_padded_sequence(inp, torch.tensor(lengths), batch_first=layer.batch_first, enforce_sorted=False)
    out, hidden = layer(inp, hx if config.get("hx") else None)
    if packed:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=layer.batch_first, total_length=T)
    if unbatched:
        out, hidden = out.unsqueeze(1), tuple(h.unsqueeze(1) for h in hidden)
    elif layer.batch_first:
        out = out.transpose(0, 1)  # (T, B, D*H)
    loss = (out * torch.tensor(w_y, dtype=dtype)).sum() + sum(
        (h * torch.tensor(w, dtype=dtype)).sum() for h, w in zip(hidden, w_final))
    loss.backward()

    # the reference, sample by sample over its own length
    params = _np_params(layer)
    y_ref, finals_ref = np.zeros((T, B, D * H)), [np.zeros((D * L, B, H)) for _ in range(4)]
    dx_ref, dstates_ref = np.zeros_like(x), [np.zeros_like(s) for s in states0]
    dparams = {k: {"w_ih": 0, "r": 0, "b": 0} for k in params}
    for b, length in enumerate(lengths):
        y, finals, caches = _np_stack_forward(params, x[:length, b : b + 1], [s[:, b : b + 1] for s in states0], L, D)
        y_ref[:length, b] = y[:, 0]
        for j in range(4):
            finals_ref[j][:, b] = finals[j][:, 0]
        dx, grads = _np_stack_backward(caches, w_y[:length, b : b + 1], [w[:, b : b + 1] for w in w_final], L, D, H)
        dx_ref[:length, b] = dx[:, 0]
        for k, g in grads.items():
            for j, name in enumerate(("dh0", "dc0", "dn0", "dm0")):
                dstates_ref[j][k, b] = getattr(g, name)[0]
            for name in dparams[k]:
                dparams[k][name] = dparams[k][name] + getattr(g, "d" + name)

    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(out.detach().double().numpy(), y_ref, **tol, err_msg="output")
    for j, name in enumerate(STATES):
        np.testing.assert_allclose(hidden[j].detach().double().numpy(), finals_ref[j], **tol, err_msg=f"{name}_n")
    np.testing.assert_allclose(x_t.grad.double().numpy(), dx_ref, **tol, err_msg="dx")
    if config.get("hx"):
        for j, name in enumerate(STATES):
            np.testing.assert_allclose(hx_t[j].grad.double().numpy(), dstates_ref[j], **tol, err_msg=f"d{name}_0")
    for k in params:
        suffix = layer._suffix(k // D, k % D)
        for ours, name in (("w_ih", "weight_ih"), ("r", "weight_hh"), ("b", "bias")):
            param = getattr(layer, name + suffix, None)
            if param is not None:
                np.testing.assert_allclose(param.grad.double().numpy(), dparams[k][ours], **tol,
                                           err_msg=name + suffix)


# ----- the NumPy BPTT against finite differences -----
@pytest.mark.parametrize("fresh", [False, True], ids=["given-state", "zero-state"])
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_numpy_backward_matches_finite_differences(forget_gate, fresh):
    T, B, I, H, K = 4, 2, 3, 4, 2
    rng = np.random.default_rng(3 + fresh)
    params = SLSTMParams(rng.normal(size=(4 * H, I)), rng.normal(size=(K, 4 * H // K, H // K)),
                         rng.normal(size=4 * H), forget_gate)
    x = rng.normal(size=(T, B, I))
    states = {"h0": rng.normal(size=(B, H)), "c0": rng.normal(size=(B, H)),
              "n0": rng.uniform(0.5, 2.0, size=(B, H)), "m0": rng.normal(size=(B, H))}
    if fresh:  # n = 0: the first step's m is i_tilde (a branch that finite differences of n0 would cross)
        states = {k: np.zeros((B, H)) for k in states}
    y, finals, cache = slstm_forward(x, *states.values(), params)
    dy, dfinal = rng.normal(size=y.shape), tuple(rng.normal(size=f.shape) for f in finals)
    grads = slstm_backward(dy, dfinal, cache)

    def loss(arrays):
        p = dataclasses.replace(params, **{k: arrays[k] for k in ("w_ih", "r", "b")})
        y, finals, _ = slstm_forward(arrays["x"], *(arrays[k] for k in states), p)
        return float((dy * y).sum() + sum((d * f).sum() for d, f in zip(dfinal, finals)))

    base = {"x": x, **states, "w_ih": params.w_ih, "r": params.r, "b": params.b}
    targets = ["x", "w_ih", "r", "b"] + ([] if fresh else list(states))
    eps = 1e-6
    for target in targets:
        numeric = np.zeros_like(base[target])
        for idx in np.ndindex(numeric.shape):
            values = []
            for sign in (1, -1):
                arrays = {k: v.copy() for k, v in base.items()}
                arrays[target][idx] += sign * eps
                values.append(loss(arrays))
            numeric[idx] = (values[0] - values[1]) / (2 * eps)
        np.testing.assert_allclose(getattr(grads, "d" + target), numeric, rtol=1e-6, atol=1e-7,
                                   err_msg=f"d{target}")


def test_gradcheck_float64_small_layer():
    """autograd's layer gradients (x, every state, every parameter) against torch's finite differences."""
    torch.manual_seed(1)
    layer = SLSTM(2, 4, num_heads=2, num_layers=2, bidirectional=True, dtype=torch.float64)
    names = [name for name, _ in layer.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    hx = [torch.randn(4, 2, 4, dtype=torch.float64) for _ in range(4)]
    hx[2] = hx[2].abs() + 0.5  # a normaliser is positive
    hx = [h.requires_grad_() for h in hx]
    weights = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(x, *tensors):
        states, params = tensors[:4], dict(zip(names, tensors[4:]))
        out, hidden = torch.func.functional_call(layer, params, (x, tuple(states)))
        return (out, *hidden)

    # fast mode (random projections of the Jacobian): the full Jacobian takes ~15 s here
    assert torch.autograd.gradcheck(run, (x, *hx, *weights), eps=1e-6, atol=1e-6, fast_mode=True)


# ----- the block-diagonal recurrence -----
def test_block_diagonal_recurrence_equals_dense_matrix():
    """blockdiag_recurrence (one bmm over heads) == h @ R^T for R built entry by entry, zeros off the blocks."""
    torch.manual_seed(2)
    K, D, B = 3, 2, 4
    H = K * D
    r_blocks = torch.randn(K, 4 * D, D, dtype=torch.float64)
    dense = torch.zeros(4 * H, H, dtype=torch.float64)
    for k in range(K):
        for g in range(4):
            for row in range(D):
                for col in range(D):
                    dense[g * H + k * D + row, k * D + col] = r_blocks[k, g * D + row, col]
    h = torch.randn(B, H, dtype=torch.float64)
    torch.testing.assert_close(blockdiag_recurrence(h, r_blocks), h @ dense.t(), rtol=0, atol=1e-13)
    torch.testing.assert_close(dense_recurrent_matrix(r_blocks), dense, rtol=0, atol=0)

    # one layer step: the layer's pre-activations are W x + R h + b with that dense R
    layer = SLSTM(3, H, num_heads=K, dtype=torch.float64)
    x = torch.randn(1, B, 3, dtype=torch.float64)
    state0 = [torch.randn(1, B, H, dtype=torch.float64) for _ in range(4)]
    state0[2] = state0[2].abs() + 0.5
    out, (h1, c1, n1, m1) = layer(x, tuple(state0))
    dense = torch.zeros(4 * H, H, dtype=torch.float64)
    for k in range(K):  # R again from weight_hh, through the documented index map
        for g in range(4):
            dense[g * H + k * D : g * H + (k + 1) * D, k * D : (k + 1) * D] = layer.weight_hh_l0[k, g * D : (g + 1) * D]
    pre = x[0] @ layer.weight_ih_l0.t() + state0[0][0] @ dense.t() + layer.bias_l0  # (B, 4H)
    i_t, f_t, z_t, o_t = pre.chunk(4, dim=1)
    log_f_m = torch.nn.functional.logsigmoid(f_t) + state0[3][0]
    m = torch.maximum(log_f_m, i_t)
    c = torch.exp(log_f_m - m) * state0[1][0] + torch.exp(i_t - m) * torch.tanh(z_t)
    n = torch.exp(log_f_m - m) * state0[2][0] + torch.exp(i_t - m)
    torch.testing.assert_close(out[0], torch.sigmoid(o_t) * c / n, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((c1[0], n1[0], m1[0]), (c, n, m), rtol=1e-12, atol=1e-12)


# ----- the normaliser and the stabiliser, against closed forms -----
def _averaging_layer(dtype) -> SLSTM:
    """H = 1, forget gate exp(0) = 1, output gate σ(100) = 1, no recurrence, x = (i_tilde, z_tilde):
    then h_t = Σ_{s≤t} exp(i_tilde_s) tanh(z_tilde_s) / Σ_{s≤t} exp(i_tilde_s), a running weighted average."""
    layer = SLSTM(2, 1, forget_gate="exp", dtype=dtype)
    with torch.no_grad():
        layer.weight_ih_l0.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        layer.weight_hh_l0.zero_()
        layer.bias_l0.copy_(torch.tensor([0.0, 0.0, 0.0, 100.0]))
    return layer


def _running_average(i_tilde: np.ndarray, z_tilde: np.ndarray) -> np.ndarray:
    """(T, B) -> (T, B): the weighted average with weights exp(i_tilde), stabilised by the running max."""
    out = np.zeros_like(i_tilde)
    for t in range(len(i_tilde)):
        w = np.exp(i_tilde[: t + 1] - i_tilde[: t + 1].max(axis=0))  # (t+1, B)
        out[t] = (w * np.tanh(z_tilde[: t + 1])).sum(0) / w.sum(0)
    return out


def test_normaliser_gives_the_running_weighted_average():
    rng = np.random.default_rng(4)
    i_tilde, z_tilde = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    layer = _averaging_layer(torch.float64)
    x = torch.tensor(np.stack([i_tilde, z_tilde], axis=-1))  # (T, B, 2)
    out, (h, c, n, m) = layer(x)
    np.testing.assert_allclose(out[..., 0].detach().numpy(), _running_average(i_tilde, z_tilde), rtol=1e-12)
    # n exp(m) is the unstabilised normaliser Σ exp(i_tilde), m the running max of i_tilde (f = 1)
    np.testing.assert_allclose((n * torch.exp(m))[0, :, 0].detach().numpy(), np.exp(i_tilde).sum(0), rtol=1e-12)
    np.testing.assert_allclose(m[0, :, 0].detach().numpy(), i_tilde.max(0), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stabiliser_keeps_huge_gates_finite_and_exact(dtype):
    """Input-gate pre-activations up to 1000: exp(1000) overflows even float64, the stabilised layer does not."""
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(np.float64(1000.0)))  # what an unstabilised exp(i_tilde) would meet
    i_tilde = np.array([[100.0, -50.0], [300.0, 0.0], [1000.0, 80.0], [-500.0, 200.0], [999.0, 200.0]])
    z_tilde = np.random.default_rng(5).normal(size=i_tilde.shape)
    layer = _averaging_layer(dtype)
    x = torch.tensor(np.stack([i_tilde, z_tilde], axis=-1), dtype=dtype, requires_grad=True)
    out, hidden = layer(x)
    assert torch.isfinite(out).all() and all(torch.isfinite(s).all() for s in hidden)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(out[..., 0].detach().double().numpy(), _running_average(i_tilde, z_tilde),
                               rtol=tol, atol=tol)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # the sigmoid forget gate with a huge f_tilde: log σ(f_tilde) stays finite in both directions
    with torch.no_grad():
        layer.weight_ih_l0[1] = torch.tensor([1.0, 0.0])  # f_tilde = i_tilde
    sig = SLSTM(2, 1, dtype=dtype)
    sig.load_state_dict(layer.state_dict())
    assert all(torch.isfinite(t).all() for t in (sig(x)[0], *sig(x)[1]))


def test_gradients_of_outputs_do_not_depend_on_the_stabiliser():
    """Holding m constant in backward (the official CUDA kernel) gives the same gradients for a loss of the
    outputs h, huge gates included; a loss of c_n (which carries exp(-m)) tells the two apart."""
    torch.manual_seed(6)
    layer = SLSTM(3, 4, num_heads=2, num_layers=2, forget_gate="exp", dtype=torch.float64)
    with torch.no_grad():
        layer.bias_l0[:4] += 100.0  # huge input gates in the first layer
    x = torch.randn(6, 2, 3, dtype=torch.float64) * 3

    def grads(detach: bool, read_c: bool):
        layer.zero_grad()
        out, hidden, _ = layer._run(x, None, trace=False, detach_stabilizer=detach)
        loss = hidden[1].sum() if read_c else (out * torch.linspace(-1, 1, 4, dtype=torch.float64)).sum()
        loss.backward()
        return [p.grad.clone() for p in layer.parameters()]

    for full, held in zip(grads(False, False), grads(True, False)):
        assert torch.isfinite(full).all()
        torch.testing.assert_close(full, held, rtol=1e-9, atol=1e-12)
    assert any(not torch.allclose(a, b) for a, b in zip(grads(False, True), grads(True, True)))


# ----- streaming, traces, construction -----
@pytest.mark.parametrize("batched", [True, False])
def test_step_loop_equals_forward(batched):
    torch.manual_seed(7)
    layer = SLSTM(3, 6, num_heads=3, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64) if batched else torch.randn(5, 3, dtype=torch.float64)
    out, hidden = layer(x)
    state, ys = None, []
    for t in range(5):
        y, state = layer.step(x[t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys), out[..., :6], rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(state, hidden):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_inspect_trace_reads_every_gate_and_state():
    torch.manual_seed(8)
    layer = SLSTM(3, 4, num_heads=2, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 5, 3)
    packed = pack_padded_sequence(x, torch.tensor([3, 5]), batch_first=True, enforce_sorted=False)
    traces = trace(layer, packed)
    last = traces.get(-1, 1)
    assert traces.cell == "slstm" and last._fields == ("i", "f", "z", "o", "m", "n", "c", "h")
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(traces.output, batch_first=True)
    torch.testing.assert_close(last.h, out[..., 4:])  # the reverse direction's h is its output half
    torch.testing.assert_close(last.h[0, :3], last.o[0, :3] * last.c[0, :3] / last.n[0, :3])
    forward = traces.get(-1, 0)
    # stabilised gates are at most 1: f too, also at the first step from n = 0 (the min(·, 0) in its exponent)
    assert (last.i <= 1).all() and (forward.i <= 1).all() and (forward.f <= 1).all()
    assert (traces.series("h", sample=0, direction=1) == last.h[0, :3]).all()  # sample 0 has 3 real steps


def test_parameters_layout_and_init():
    layer = SLSTM(3, 8, num_heads=2, bidirectional=True)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {"weight_ih_l0": (32, 3), "weight_hh_l0": (2, 16, 4), "bias_l0": (32,),
                      "weight_ih_l0_reverse": (32, 3), "weight_hh_l0_reverse": (2, 16, 4), "bias_l0_reverse": (32,)}
    b_f = 5 - 12 * (torch.arange(4) / 3) ** 0.3
    torch.testing.assert_close(layer.bias_l0[8:16], torch.cat([b_f, b_f]))
    assert (layer.bias_l0[:8] == 0).all() and (layer.bias_l0[16:] == 0).all()
    assert layer.weight_hh_l0.abs().max() <= 1 / 8**0.5
    exp = SLSTM(3, 8, num_heads=2, forget_gate="exp")  # the same initial forget gate value
    torch.testing.assert_close(torch.exp(exp.bias_l0[8:16]), torch.sigmoid(layer.bias_l0[8:16]))


BAD = [
    (lambda: SLSTM(3, 6, num_heads=4), ValueError, r"num_heads should divide hidden_size.*6.*4"),
    (lambda: SLSTM(3, 6, forget_gate="tanh"), ValueError, r"forget_gate.*'sigmoid', 'exp'.*'tanh'"),
    (lambda: SLSTM(3, 4)(torch.randn(5, 2, 2)), ShapeError, r"expected 3, got 2"),
    (lambda: SLSTM(3, 4)(torch.randn(5, 2, 3, 1)), ShapeError, r"3-D.*2-D.*got a 4-D"),
    (lambda: SLSTM(3, 4)(torch.randn(0, 2, 3)), ShapeError, r"at least one time step"),
    (lambda: SLSTM(3, 4)(torch.ones(5, 2, 3, dtype=torch.long)), DtypeError, r"floating-point.*torch.int64"),
    (lambda: SLSTM(3, 4)(torch.randn(5, 2, 3, dtype=torch.float64)), DtypeError, r"float64.*float32"),
    (lambda: SLSTM(3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)), ArgumentTypeError, r"\(h_0, c_0, n_0, m_0\).*Tensor"),
    (lambda: SLSTM(3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),) * 2), ArgumentTypeError, r"tuple of 2"),
    (lambda: SLSTM(3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),) * 3 + (torch.zeros(1, 3, 4),)), ShapeError,
     r"m_0 should have shape \(1, 2, 4\), got \(1, 3, 4\)"),
    (lambda: SLSTM(3, 4)(torch.randn(5, 3), (torch.zeros(1, 1, 4),) * 4), ShapeError, r"h_0.*\(1, 4\).*\(1, 1, 4\)"),
    (lambda: SLSTM(3, 4, bidirectional=True).step(torch.randn(2, 3)), ValueError, r"bidirectional"),
    (lambda: SLSTM(3, 4).step(torch.randn(2, 5)), ShapeError, r"expected 3, got 5"),
    (lambda: build_rnn("slstm", 3, 4, init={"init": "chrono", "chrono_max": 10}), ValueError, r"no init options"),
]


@pytest.mark.parametrize("make, error, pattern", BAD, ids=range(len(BAD)))
def test_bad_input_raises_a_clear_error(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_cli_trains_an_slstm_on_the_adding_task(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        code, _, err = run_cli(capsys, "train", "--task", "adding", "--cell", "slstm", "-o", "seq_len=6",
                               "-o", "n_train=64", "-o", "n_val=32", "-o", "n_test=32", "--hidden-size", "8",
                               "--epochs", "1", "--max-steps", "2", "--batch-size", "16", "--quiet",
                               "--no-tensorboard", "--threads", "1", "--out-dir", str(tmp_path))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    assert np.isfinite(results["test"]["mse"])


def test_slstm_step_rejects_an_unknown_forget_gate():
    state = SLSTMState(*(torch.zeros(1, 2) for _ in range(4)))
    with pytest.raises(ValueError, match="forget_gate"):
        slstm_step(torch.zeros(1, 8), state, torch.zeros(1, 8, 2), None, forget_gate="relu")


@pytest.mark.parametrize("forget_gate,i_tilde,f_tilde", [("sigmoid", -100.0, 0.0), ("exp", -50.0, 50.0)])
def test_first_step_from_the_zero_state_stays_finite_with_extreme_gates(forget_gate, i_tilde, f_tilde):
    """From n = 0, f = exp(log_f - i_tilde) would overflow for i_tilde << 0 and inf * c (c = 0) is NaN; the
    clamp min(., 0) of its exponent keeps it finite without changing h: h = o * z (the only history is i z / i)."""
    from gatedrnn.cells.slstm import SLSTMState, slstm_step

    batch, hidden = 2, 4
    x_proj = torch.zeros(batch, 4 * hidden, dtype=torch.float32)
    x_proj[:, :hidden], x_proj[:, hidden:2 * hidden] = i_tilde, f_tilde
    x_proj[:, 2 * hidden:3 * hidden] = 0.7  # z_tilde
    x_proj.requires_grad_(True)
    zeros = torch.zeros(batch, hidden)
    state, _ = slstm_step(x_proj, SLSTMState(zeros, zeros, zeros, zeros), torch.zeros(1, 4 * hidden, hidden), None,
                          forget_gate=forget_gate)
    expected_h = torch.sigmoid(torch.tensor(0.0)) * torch.tanh(torch.tensor(0.7))
    torch.testing.assert_close(state.h, torch.full_like(state.h, expected_h.item()))
    state.h.sum().backward()
    assert torch.isfinite(x_proj.grad).all()


def test_jit_trace_refuses_instead_of_unrolling_one_length():
    """Traced, the sLSTM's Python time loop would be unrolled for the example's length and give a wrong-length
    output at any other: the layer raises under the tracer, naming torch.export / torch.compile."""
    layer = gatedrnn.SLSTM(3, 4).eval()
    with pytest.raises(RuntimeError, match="torch.jit.trace cannot record SLSTM.*torch.export"):
        torch.jit.trace(layer, (torch.randn(5, 2, 3),), check_trace=False)
