"""Greff et al.'s LSTM variants (gatedrnn.LSTM(variant=...)) against independent definitions:

- the NumPy reference (gatedrnn.reference.lstm_variants): its hand-derived BPTT against central finite differences
  (float64), with and without zoneout and a recurrent mask;
- the layer on the fused engine (float32, float64) against that reference: outputs, h_n, c_n and every gradient,
  the peephole weights included, under the same zoneout weights and recurrent masks (redrawn from the same seed);
- the fused engine against the reference path (GATEDRNN_BACKEND=reference) for packed input (sorted and not),
  bidirectional, batch_first, unbatched and two layers, in training with zoneout and recurrent dropout;
- onnxruntime's LSTM operator (peepholes P = [p_i, p_o, p_f], gate order i, o, f, c) on a graph built by hand.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn.engine import _build
from gatedrnn.engine.noise import draw_recurrent_mask, draw_zoneout
from gatedrnn.reference import VARIANTS, VariantParams, variant_backward, variant_forward
from op_counter import GatedrnnOps

NAMES = list(VARIANTS)
T, B, I, H = 4, 3, 3, 4


@pytest.fixture(scope="module", autouse=True)
def built_engine():
    assert _build.load() is not None, f"the fused engine did not build: {_build.error()}"


def test_variant_tables_agree():
    """The reference restates the variants; both statements name the same gate blocks and peepholes."""
    from gatedrnn.cells.lstm_variants import GREFF_VARIANTS

    assert set(GREFF_VARIANTS) == set(VARIANTS) | {"fgr"}  # FGR's reference is its own (tests/test_fgr.py)
    for name, ours in VARIANTS.items():
        assert ours.gates == GREFF_VARIANTS[name].gate_names, name
        assert ours.peephole_gates == GREFF_VARIANTS[name].peephole_names, name


# ----- 1. the NumPy reference: BPTT against finite differences -----
def _random_params(name: str, rng: np.random.Generator, scale: float = 0.7) -> VariantParams:
    spec = VARIANTS[name]
    g, k = len(spec.gates), len(spec.peephole_gates)
    return VariantParams(name, rng.uniform(-scale, scale, (g * H, I)), rng.uniform(-scale, scale, (g * H, H)),
                         rng.uniform(-scale, scale, g * H), rng.uniform(-scale, scale, g * H),
                         rng.uniform(-scale, scale, k * H))


def _random_noise(rng: np.random.Generator) -> dict:
    """Zoneout weights mixing exact 0/1 (training) and fractions (eval), and a dropout mask {0, 1/(1-p)}."""
    def weights():
        d = rng.uniform(0, 1, (T, B, H))
        d[rng.uniform(size=d.shape) < 0.5] = 0.0
        d[rng.uniform(size=d.shape) < 0.25] = 1.0
        return d

    return {"zoneout_h": weights(), "zoneout_c": weights(), "mask": (rng.uniform(size=(B, H)) > 0.3) / 0.7}


PARAM_FIELDS = ("w_ih", "w_hh", "b_ih", "b_hh", "peephole")


@pytest.mark.parametrize("noisy", [False, True], ids=["plain", "zoneout+mask"])
@pytest.mark.parametrize("name", NAMES)
def test_reference_backward_matches_finite_differences(name, noisy):
    rng = np.random.default_rng(NAMES.index(name) + 10 * noisy)
    params = _random_params(name, rng)
    inputs = {"x": rng.normal(size=(T, B, I)), "h0": rng.normal(size=(B, H)), "c0": rng.normal(size=(B, H))}
    noise = _random_noise(rng) if noisy else {}
    y, h_T, c_T, cache = variant_forward(inputs["x"], inputs["h0"], inputs["c0"], params, **noise)
    dy, dh_T, dc_T = rng.normal(size=y.shape), rng.normal(size=h_T.shape), rng.normal(size=c_T.shape)
    grads = variant_backward(dy, dh_T, dc_T, cache)

    def loss(arrays: dict) -> float:
        p = dataclasses.replace(params, **{k: arrays[k] for k in PARAM_FIELDS})
        y, h, c, _ = variant_forward(arrays["x"], arrays["h0"], arrays["c0"], p, **noise)
        return float((dy * y).sum() + (dh_T * h).sum() + (dc_T * c).sum())

    base = {**inputs, **{k: getattr(params, k) for k in PARAM_FIELDS}}
    eps = 1e-6
    for target in base:
        numeric = np.zeros_like(base[target])
        for idx in np.ndindex(numeric.shape):
            values = []
            for sign in (1, -1):
                arrays = {k: v.copy() for k, v in base.items()}
                arrays[target][idx] += sign * eps
                values.append(loss(arrays))
            numeric[idx] = (values[0] - values[1]) / (2 * eps)
        analytic = getattr(grads, "d" + target)
        assert analytic.shape == numeric.shape, target
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7, err_msg=f"{name}: d{target}")
    if name == "np":
        assert grads.dpeephole.shape == (0,)


def test_reference_np_equals_plain_lstm_reference_and_checks_shapes():
    """NP is torch.nn's LSTM: the variant reference equals gatedrnn.reference.lstm_forward/backward."""
    from gatedrnn.reference import LSTMParams, lstm_backward, lstm_forward

    rng = np.random.default_rng(0)
    params = _random_params("np", rng)
    x, h0, c0 = rng.normal(size=(T, B, I)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    y, h, c, cache = variant_forward(x, h0, c0, params)
    plain = LSTMParams(params.w_ih, params.w_hh, params.b_ih, params.b_hh)
    y2, h2, c2, cache2 = lstm_forward(x, h0, c0, plain)
    np.testing.assert_allclose(y, y2, rtol=0, atol=1e-14)
    dy = rng.normal(size=y.shape)
    g1, g2 = variant_backward(dy, h * 0, c * 0, cache), lstm_backward(dy, h * 0, c * 0, cache2)
    for field in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih"):
        np.testing.assert_allclose(getattr(g1, field), getattr(g2, field), rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match=r"mask should have shape \(3, 4\), got \(2, 4\)"):
        variant_forward(x, h0, c0, params, mask=np.ones((2, H)))
    with pytest.raises(ValueError, match=r"x should have shape \(T, B, 3\)"):
        variant_forward(np.zeros((T, B, 5)), h0, c0, params)


# ----- 2. the layer (fused) against the NumPy reference, same masks -----
ZONEOUT, RECURRENT_DROPOUT = (0.3, 0.2), 0.25


def _draw_layer_noise(like: torch.Tensor, directions: int, zoneout, recurrent_dropout) -> list:
    """The noise a one-layer module draws in training, in its order (per direction: zoneout, then the mask),
    as NumPy arrays (d_h (T, B, H), d_c (T, B, H), mask (B, H)) or Nones."""
    steps, batch = like.shape[0], like.shape[1]
    drawn = []
    for _ in range(directions):
        z = draw_zoneout(steps, batch, H, H, *zoneout, True, like)
        m = draw_recurrent_mask(batch, H, recurrent_dropout, like)
        drawn.append({"zoneout_h": None if z is None else z[..., :H].double().numpy(),
                      "zoneout_c": None if z is None else z[..., H:].double().numpy(),
                      "mask": None if m is None else m.double().numpy()})
    return drawn


@pytest.mark.parametrize("noisy", [False, True], ids=["plain", "zoneout+recurrent_dropout"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", NAMES)
def test_layer_equals_numpy_reference(name, dtype, noisy):
    torch.manual_seed(100 + NAMES.index(name))
    zoneout, rdrop = (ZONEOUT, RECURRENT_DROPOUT) if noisy else ((0.0, 0.0), 0.0)
    module = gatedrnn.LSTM(I, H, bidirectional=True, variant=name, dtype=dtype, zoneout=zoneout,
                           recurrent_dropout=rdrop)
    with torch.no_grad():  # peepholes large enough to matter
        for pname, p in module.named_parameters():
            if "peephole" in pname:
                p.uniform_(-1.5, 1.5)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(2, B, H, dtype=dtype, requires_grad=True)
    c0 = torch.randn(2, B, H, dtype=dtype, requires_grad=True)
    wy, wh, wc = torch.randn(T, B, 2 * H, dtype=dtype), torch.randn(2, B, H, dtype=dtype), torch.randn(2, B, H,
                                                                                                    dtype=dtype)
    torch.manual_seed(7)
    with GatedrnnOps() as ops:
        y, (h_n, c_n) = module(x, (h0, c0))
        loss = (wy * y).sum() + (wh * h_n).sum() + (wc * c_n).sum()
        leaves = [x, h0, c0, *module.parameters()]
        names = ["x", "h0", "c0", *(n for n, _ in module.named_parameters())]
        grads = dict(zip(names, torch.autograd.grad(loss, leaves)))
    assert ops.counts["scan"] == 2 and ops.counts["scan_backward"] == 2
    torch.manual_seed(7)
    noise = _draw_layer_noise(x.detach(), 2, zoneout, rdrop)

    state = {k: v.detach().double().numpy() for k, v in module.state_dict().items()}
    x64, h064, c064 = (t.detach().double().numpy() for t in (x, h0, c0))
    wy64, wh64, wc64 = (t.double().numpy() for t in (wy, wh, wc))
    expected_y = np.zeros((T, B, 2 * H))
    expected_dx = np.zeros((T, B, I))
    tol = 1e-10 if dtype == torch.float64 else 2e-5

    def close(got, want, what):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got.detach().double().numpy(), want, rtol=tol, atol=tol * scale, err_msg=what)

    for direction, suffix in enumerate(("_l0", "_l0_reverse")):
        params = VariantParams.from_state_dict(state, name, suffix)
        flip = (lambda a: a[::-1].copy()) if direction else (lambda a: a)  # the reverse direction reads x backwards
        n = {k: None if v is None else (flip(v) if k != "mask" else v) for k, v in noise[direction].items()}
        out, h_T, c_T, cache = variant_forward(flip(x64), h064[direction], c064[direction], params, **n)
        expected_y[..., direction * H:(direction + 1) * H] = flip(out)
        close(h_n[direction], h_T, f"h_n {suffix}")
        close(c_n[direction], c_T, f"c_n {suffix}")
        g = variant_backward(flip(wy64[..., direction * H:(direction + 1) * H]), wh64[direction], wc64[direction],
                             cache)
        expected_dx += flip(g.dx)
        close(grads["h0"][direction], g.dh0, f"dh0 {suffix}")
        close(grads["c0"][direction], g.dc0, f"dc0 {suffix}")
        for ours, theirs in (("dw_ih", "weight_ih"), ("dw_hh", "weight_hh"), ("db_ih", "bias_ih"),
                             ("db_hh", "bias_hh"), ("dpeephole", "weight_peephole")):
            if theirs + suffix in grads:
                close(grads[theirs + suffix], getattr(g, ours), f"{theirs}{suffix}")
            else:
                assert name == "np" and theirs == "weight_peephole"
    close(y, expected_y, "output")
    close(grads["x"], expected_dx, "dx")


# ----- 3. fused against the reference path: every input form -----
FORMS = ["packed-sorted", "packed-unsorted", "batch_first", "unbatched", "two-layers-bidirectional"]


def _form_run(module, form: str, x: torch.Tensor, lengths: torch.Tensor):
    """Forward in one input form, then gradients of a fixed weighted loss w.r.t. x and every parameter."""
    if form.startswith("packed"):
        sorted_ = form == "packed-sorted"
        use = lengths.sort(descending=True).values if sorted_ else lengths
        inputs = pack_padded_sequence(x, use, enforce_sorted=sorted_)
    elif form == "batch_first":
        inputs = x.transpose(0, 1)
    elif form == "unbatched":
        inputs = x[:, 0]
    else:
        inputs = x
    output, (h_n, c_n) = module(inputs)
    out = output.data if form.startswith("packed") else output
    weights = torch.linspace(-1, 1, out.numel() + h_n.numel() + c_n.numel(), dtype=x.dtype)
    flat = torch.cat([out.reshape(-1), h_n.reshape(-1), c_n.reshape(-1)])
    loss = (flat * weights).sum()
    return [out, h_n, c_n, *torch.autograd.grad(loss, [x, *module.parameters()])]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", NAMES)
def test_fused_equals_reference_path_for_every_input_form(name, form, monkeypatch):
    torch.manual_seed(NAMES.index(name))
    layers = 2 if form.startswith("two") else 1
    module = gatedrnn.LSTM(I, H, num_layers=layers, bidirectional=form != "unbatched",
                           batch_first=form == "batch_first", variant=name, dtype=torch.float64, zoneout=ZONEOUT,
                           recurrent_dropout=RECURRENT_DROPOUT)
    x = torch.randn(5, 4, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 5, 1, 4])
    results = []
    for backend in ("", "reference"):
        monkeypatch.setenv("GATEDRNN_BACKEND", backend)
        torch.manual_seed(11)
        with GatedrnnOps() as ops:
            results.append(_form_run(module, form, x, lengths))
        assert (ops.counts["scan"] > 0) == (backend == "")
    for k, (a, b) in enumerate(zip(*results)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name} {form} result {k}: {m}")


def test_packed_sequences_equal_each_sequence_alone():
    """Packed (unsorted) input gives each sequence what it gets alone, for a peephole variant on the fused path."""
    torch.manual_seed(3)
    module = gatedrnn.LSTM(I, H, bidirectional=True, variant="cifg", dtype=torch.float64)
    x = torch.randn(5, 3, I, dtype=torch.float64)
    lengths = torch.tensor([2, 5, 3])
    output, (h_n, c_n) = module(pack_padded_sequence(x, lengths, enforce_sorted=False))
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(output)
    for b, n in enumerate(lengths.tolist()):
        alone, (h, c) = module(x[:n, b])
        torch.testing.assert_close(padded[:n, b], alone, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h_n[:, b], h, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c_n[:, b], c, rtol=1e-12, atol=1e-12)


# ----- 4. onnxruntime's LSTM operator with peepholes -----
ONNX_ORDER = ("i", "o", "f", "g")  # ONNX's W/R/B blocks: i, o, f, c
SATURATE = 60.0  # a bias that makes σ = 1 to float precision: a gate the variant removes


def _onnx_blocks(module, name: str, suffix: str):
    """W (4H, I), R (4H, H), B (8H,), P (3H,) in ONNX's layout for one direction of `module`."""
    spec = VARIANTS[name]
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in module.state_dict().items()}
    split = lambda a: dict(zip(spec.gates, np.split(a, len(spec.gates))))  # noqa: E731
    w, r, bw, br = (split(sd[f"{k}{suffix}"]) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    peep = dict(zip(spec.peephole_gates, np.split(sd[f"weight_peephole{suffix}"], len(spec.peephole_gates)))) \
        if spec.peepholes else {}
    zeros_w, zeros_r, zeros_b = np.zeros((H, I), np.float32), np.zeros((H, H), np.float32), np.zeros(H, np.float32)
    if spec.coupled:  # ONNX input_forget=1 computes f = 1 − i: its input gate gets our −(forget pre-activation),
        # σ(−z) = 1 − σ(z); its forget block is left empty (ignored under input_forget, so the attribute matters)
        w["i"], r["i"], bw["i"], br["i"], peep["i"] = (-d.pop("f") for d in (w, r, bw, br, peep))
    W, R, Bw, Br, P = [], [], [], [], []
    for gate in ONNX_ORDER:
        present = gate in w
        W.append(w[gate] if present else zeros_w)
        R.append(r[gate] if present else zeros_r)
        Bw.append(bw[gate] if present else zeros_b + SATURATE)
        Br.append(br[gate] if present else zeros_b)
    for gate in ("i", "o", "f"):  # ONNX's peephole order
        P.append(peep.get(gate, zeros_b))
    return np.concatenate(W), np.concatenate(R), np.concatenate(Bw + Br), np.concatenate(P)


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_lstm_with_peepholes_equals_ours(name):
    """ONNX's LSTM: o = σ(X W_o + H R_o + P_o ⊙ C_t + b), C_t the new cell (as ours, Gers & Schmidhuber).
    The variants map onto its attributes: removed gates saturate (bias 60), NIAF/NOAF use an identity
    activation (Affine, α = 1, β = 0), CIFG uses input_forget=1 (f = 1 − i)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(30 + NAMES.index(name))
    module = gatedrnn.LSTM(I, H, bidirectional=True, variant=name)
    with torch.no_grad():
        for pname, p in module.named_parameters():
            if "peephole" in pname:
                p.uniform_(-1.5, 1.5)
    steps, batch = 6, 3
    x = torch.randn(steps, batch, I)
    h0, c0 = torch.randn(2, batch, H), torch.randn(2, batch, H)
    with torch.no_grad():
        y, (h_n, c_n) = module(x, (h0, c0))

    blocks = [_onnx_blocks(module, name, s) for s in ("_l0", "_l0_reverse")]
    W, R, Bias, P = (np.stack([b[k] for b in blocks]) for k in range(4))  # each (2, ·, ·)
    spec = VARIANTS[name]
    activations = ["Sigmoid", "Tanh" if spec.input_activation else "Affine",
                   "Tanh" if spec.output_activation else "Affine"]
    attributes = dict(hidden_size=H, direction="bidirectional", activations=activations * 2)
    if "Affine" in activations:
        attributes.update(activation_alpha=[1.0] * 2, activation_beta=[0.0] * 2)
    if spec.coupled:
        attributes["input_forget"] = 1
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "initial_h", "initial_c", "P"], ["Y", "Y_h", "Y_c"],
                            **attributes)
    initializers = [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (Bias, "B"), (P, "P"))]
    graph = helper.make_graph(
        [node], "peephole_lstm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
         (("X", [steps, batch, I]), ("initial_h", [2, batch, H]), ("initial_c", [2, batch, H]))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [steps, 2, batch, H]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [2, batch, H]),
         helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [2, batch, H])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    Y, Y_h, Y_c = session.run(None, {"X": x.numpy(), "initial_h": h0.numpy(), "initial_c": c0.numpy()})
    ours_y = y.view(steps, batch, 2, H).permute(0, 2, 1, 3).numpy()  # (T, D, B, H), ONNX's Y layout
    np.testing.assert_allclose(Y, ours_y, rtol=0, atol=2e-6)
    np.testing.assert_allclose(Y_h, h_n.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(Y_c, c_n.numpy(), rtol=0, atol=2e-6)

