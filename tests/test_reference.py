"""The NumPy reference (gatedrnn.reference): hand-derived BPTT against central finite differences in float64,
and forward values and gradients against torch.nn + autograd (tolerance 1e-9)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gatedrnn.reference import (
    GRUParams, LSTMParams, RNNParams, gru_backward, gru_forward, lstm_backward, lstm_forward,
    rnn_backward, rnn_forward,
)

T, B, I, H = 4, 3, 3, 4
CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
TOL = 1e-9


def _params(cell: str, rng: np.random.Generator, scale: float = 0.6):
    gates = {"lstm": 4, "gru": 3}.get(cell, 1)
    arrays = {
        "w_ih": rng.uniform(-scale, scale, (gates * H, I)),
        "w_hh": rng.uniform(-scale, scale, (gates * H, H)),
        "b_ih": rng.uniform(-scale, scale, gates * H),
        "b_hh": rng.uniform(-scale, scale, gates * H),
    }
    if cell == "lstm":
        return LSTMParams(**arrays)
    if cell == "gru":
        return GRUParams(**arrays)
    return RNNParams(**arrays, nonlinearity=cell[4:])


def _states(cell: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    names = ("h0", "c0") if cell == "lstm" else ("h0",)
    return {name: rng.normal(size=(B, H)) for name in names}


def _run(cell: str, x, states, params):
    """Forward: (y, final states tuple, cache)."""
    if cell == "lstm":
        y, h_T, c_T, cache = lstm_forward(x, states["h0"], states["c0"], params)
        return y, (h_T, c_T), cache
    forward = gru_forward if cell == "gru" else rnn_forward
    y, h_T, cache = forward(x, states["h0"], params)
    return y, (h_T,), cache


def _backward(cell: str, dy, dfinals, cache):
    if cell == "lstm":
        return lstm_backward(dy, *dfinals, cache)
    return (gru_backward if cell == "gru" else rnn_backward)(dy, *dfinals, cache)


class _Problem:
    """A random-weighted scalar loss L = Σ w_y ⊙ y + Σ w_final ⊙ final states, and its inputs."""

    def __init__(self, cell: str, seed: int):
        rng = np.random.default_rng(seed)
        self.cell = cell
        self.params = _params(cell, rng)
        self.x = rng.normal(size=(T, B, I))
        self.states = _states(cell, rng)
        if cell == "rnn_relu":  # keep pre-activations away from the kink, where differences are undefined
            self.x *= 0.5
        y, finals, _ = _run(cell, self.x, self.states, self.params)
        self.dy = rng.normal(size=y.shape)
        self.dfinals = tuple(rng.normal(size=f.shape) for f in finals)

    def loss(self, x, states, params) -> float:
        y, finals, _ = _run(self.cell, x, states, params)
        return float((self.dy * y).sum() + sum((d * f).sum() for d, f in zip(self.dfinals, finals)))

    def analytic(self):
        _, _, cache = _run(self.cell, self.x, self.states, self.params)
        return _backward(self.cell, self.dy, self.dfinals, cache)

    def numeric(self, target: str, eps: float = 1e-6) -> np.ndarray:
        """Central differences of the loss with respect to every entry of one input or parameter."""
        base = {"x": self.x, **self.states, **{f.name: getattr(self.params, f.name)
                                                for f in dataclasses.fields(self.params)
                                                if f.name.startswith(("w_", "b_"))}}
        grad = np.zeros_like(base[target])
        for idx in np.ndindex(grad.shape):
            values = []
            for sign in (1, -1):
                arrays = {k: v.copy() for k, v in base.items()}
                arrays[target][idx] += sign * eps
                states = {k: arrays[k] for k in self.states}
                params = dataclasses.replace(self.params, **{k: arrays[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")})
                values.append(self.loss(arrays["x"], states, params))
            grad[idx] = (values[0] - values[1]) / (2 * eps)
        return grad


@pytest.mark.parametrize("cell", CELLS)
def test_backward_matches_finite_differences(cell):
    problem = _Problem(cell, seed=CELLS.index(cell))
    grads = problem.analytic()
    targets = ["x", *problem.states, "w_ih", "w_hh", "b_ih", "b_hh"]
    for target in targets:
        numeric = problem.numeric(target)
        analytic = getattr(grads, "d" + target)
        assert analytic.shape == numeric.shape
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7, err_msg=f"{cell}: d{target}")


def _torch_module(cell: str, bias: bool):
    kwargs = {"bias": bias, "dtype": torch.float64}
    if cell == "lstm":
        return torch.nn.LSTM(I, H, **kwargs)
    if cell == "gru":
        return torch.nn.GRU(I, H, **kwargs)
    return torch.nn.RNN(I, H, nonlinearity=cell[4:], **kwargs)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_forward_and_gradients_equal_torch(cell, bias):
    torch.manual_seed(10 + CELLS.index(cell))
    module = _torch_module(cell, bias)
    param_cls = {"lstm": LSTMParams, "gru": GRUParams}.get(cell)
    params = (param_cls.from_state_dict(module.state_dict()) if param_cls
              else RNNParams.from_state_dict(module.state_dict(), nonlinearity=cell[4:]))
    rng = np.random.default_rng(7)
    x, states = rng.normal(size=(T, B, I)), _states(cell, rng)

    x_t = torch.tensor(x, requires_grad=True)
    states_t = {k: torch.tensor(v[None], requires_grad=True) for k, v in states.items()}  # (1, B, H)
    hx = (states_t["h0"], states_t["c0"]) if cell == "lstm" else states_t["h0"]
    y_t, finals_t = module(x_t, hx)
    finals_t = finals_t if cell == "lstm" else (finals_t,)

    y, finals, cache = _run(cell, x, states, params)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=0, atol=TOL)
    for ours, theirs in zip(finals, finals_t):
        np.testing.assert_allclose(ours, theirs[0].detach().numpy(), rtol=0, atol=TOL)

    dy = rng.normal(size=y.shape)
    dfinals = tuple(rng.normal(size=f.shape) for f in finals)
    loss = (torch.tensor(dy) * y_t).sum() + sum((torch.tensor(d) * f[0]).sum() for d, f in zip(dfinals, finals_t))
    loss.backward()
    grads = _backward(cell, dy, dfinals, cache)
    np.testing.assert_allclose(grads.dx, x_t.grad.numpy(), rtol=0, atol=TOL)
    for name, state in states_t.items():
        np.testing.assert_allclose(getattr(grads, "d" + name), state.grad[0].numpy(), rtol=0, atol=TOL)
    for ours, theirs in (("dw_ih", "weight_ih_l0"), ("dw_hh", "weight_hh_l0"),
                         ("db_ih", "bias_ih_l0"), ("db_hh", "bias_hh_l0")):
        if hasattr(module, theirs):
            np.testing.assert_allclose(getattr(grads, ours), getattr(module, theirs).grad.numpy(),
                                       rtol=0, atol=TOL, err_msg=ours)


def test_missing_biases_are_zeros_and_shapes_are_checked():
    module = torch.nn.GRU(I, H, bias=False, dtype=torch.float64)
    params = GRUParams.from_state_dict(module.state_dict())
    assert params.b_ih.shape == (3 * H,) and not params.b_ih.any() and not params.b_hh.any()
    with pytest.raises(ValueError, match=r"x should have shape \(T, B, 3\), got \(4, 3, 5\)"):
        gru_forward(np.zeros((T, B, 5)), np.zeros((B, H)), params)
    lstm = LSTMParams.from_state_dict(torch.nn.LSTM(I, H, dtype=torch.float64).state_dict())
    with pytest.raises(ValueError, match=r"c0 should have shape \(3, 4\), got \(2, 4\)"):
        lstm_forward(np.zeros((T, B, I)), np.zeros((B, H)), np.zeros((2, H)), lstm)


def test_reference_modules_do_not_import_torch():
    """The reference is NumPy only: no torch import in its source."""
    import gatedrnn.reference as reference
    from pathlib import Path

    for path in Path(reference.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path.name
