r"""One minGRU or minLSTM layer in NumPy (Feng et al. 2024): the forward pass and its hand-derived backward.

Shape symbols: T time steps, B batch, I input features, H hidden size.
Weights use `gatedrnn.MinGRU` / `gatedrnn.MinLSTM`'s layout: w_ih (G·H, I) with row blocks z, h̃ (G = 2) or
f, i, h̃ (G = 3), and b_ih (G·H,); ``MinimalParams.from_state_dict(layer.state_dict())`` computes what the
layer computes. The forward is the sequential form (one step after another, the paper's Algorithms 1 and 3
with h̃ = g(·)), independent of the layer's scans.

Read each forward and backward side by side: every line of the backward is the chain rule applied to one
line of the forward, named d<var> for dL/d<var>.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from gatedrnn.reference._common import sigmoid, to_array


@dataclass(frozen=True)
class MinimalParams:
    """w_ih (G·H, I), b_ih (G·H,); G = 2 (minGRU: z, h̃) or 3 (minLSTM: f, i, h̃)."""

    w_ih: np.ndarray
    b_ih: np.ndarray

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], suffix: str = "_l0") -> "MinimalParams":
        """One layer and direction of a MinGRU / MinLSTM state_dict (tensors or arrays); bias=False -> zeros."""
        w_ih = to_array(state_dict[f"weight_ih{suffix}"])
        key = f"bias_ih{suffix}"
        b_ih = to_array(state_dict[key]) if key in state_dict else np.zeros(w_ih.shape[0], dtype=w_ih.dtype)
        return cls(w_ih, b_ih)


@dataclass(frozen=True)
class MinimalCache:
    """What the forward saves: x (T, B, I); h (T+1, B, H) with h[0] = h0; k (T, B, G·H) the pre-activations;
    gates: a dict of (T, B, H) arrays (minGRU: z, h_tilde; minLSTM: f, i, f_prime, i_prime, h_tilde)."""

    params: MinimalParams
    x: np.ndarray
    h: np.ndarray
    k: np.ndarray
    gates: dict


@dataclass(frozen=True)
class MinimalGrads:
    """dL/d of every input of the forward: dx (T, B, I), dh0 (B, H), dw_ih, db_ih."""

    dx: np.ndarray
    dh0: np.ndarray
    dw_ih: np.ndarray
    db_ih: np.ndarray


def g(a: np.ndarray) -> np.ndarray:
    """g(a) = a + 0.5 for a >= 0, σ(a) otherwise."""
    return np.where(a >= 0, a + 0.5, sigmoid(a))


def dg(a: np.ndarray) -> np.ndarray:
    """g'(a) = 1 for a >= 0, σ(a)(1 − σ(a)) otherwise."""
    s = sigmoid(a)
    return np.where(a >= 0, 1.0, s * (1 - s))


def _check(name: str, x: np.ndarray, h0: np.ndarray, params: MinimalParams, gate_count: int) -> int:
    rows = params.w_ih.shape[0]
    if rows % gate_count:
        raise ValueError(f"{name}: w_ih should have {gate_count}·H rows, got shape {params.w_ih.shape}")
    hidden = rows // gate_count
    if x.ndim != 3 or x.shape[2] != params.w_ih.shape[1]:
        raise ValueError(f"{name}: x should have shape (T, B, {params.w_ih.shape[1]}), got {x.shape}")
    if h0.shape != (x.shape[1], hidden):
        raise ValueError(f"{name}: h0 should have shape ({x.shape[1]}, {hidden}), got {h0.shape}")
    return hidden


def mingru_forward(x: np.ndarray, h0: np.ndarray, params: MinimalParams):
    r"""minGRU over a sequence. For t = 0 … T-1, with h = h_{t-1} (h_{-1} = h0):

        k       = W_ih x_t + b_ih          (B, 2H), split into k_z, k_h
        z       = σ(k_z)
        h_tilde = g(k_h)
        h_t     = (1 − z) ⊙ h + z ⊙ h_tilde

    Args:
        x: (T, B, I). h0: (B, H). params: MinimalParams with G = 2.
    Returns:
        (y (T, B, H) = every h_t, h_T (B, H), cache for `mingru_backward`).
    """
    hidden = _check("mingru_forward", x, h0, params, 2)
    T, B = x.shape[:2]
    k = x @ params.w_ih.T + params.b_ih  # (T, B, 2H)
    k_z, k_h = k[..., :hidden], k[..., hidden:]
    z = sigmoid(k_z)
    h_tilde = g(k_h)
    h = np.zeros((T + 1, B, hidden), dtype=x.dtype)
    h[0] = h0
    for t in range(T):
        h[t + 1] = (1 - z[t]) * h[t] + z[t] * h_tilde[t]
    cache = MinimalCache(params, x, h, k, {"z": z, "h_tilde": h_tilde})
    return h[1:].copy(), h[T].copy(), cache


def mingru_backward(dy: np.ndarray, dh_T: np.ndarray, cache: MinimalCache) -> MinimalGrads:
    r"""BPTT for `mingru_forward`: walks t = T-1 … 0 carrying dh_next = dL/dh_t from step t+1.

    Args:
        dy: (T, B, H) dL/dy. dh_T: (B, H) dL/dh_T. cache: from `mingru_forward`.
    """
    z, h_tilde, h = cache.gates["z"], cache.gates["h_tilde"], cache.h
    hidden = z.shape[2]
    dk = np.zeros_like(cache.k)  # (T, B, 2H)
    dh_next = dh_T.copy()
    for t in range(z.shape[0] - 1, -1, -1):
        dh = dy[t] + dh_next
        # h_t = (1 − z) ⊙ h + z ⊙ h_tilde
        dz = dh * (h_tilde[t] - h[t])
        dh_tilde = dh * z[t]
        dh_next = dh * (1 - z[t])
        # z = σ(k_z), h_tilde = g(k_h)
        dk[t, :, :hidden] = dz * z[t] * (1 - z[t])
        dk[t, :, hidden:] = dh_tilde * dg(cache.k[t, :, hidden:])
    return _linear_backward(dk, dh_next, cache)


def minlstm_forward(x: np.ndarray, h0: np.ndarray, params: MinimalParams):
    r"""minLSTM over a sequence. For t = 0 … T-1, with h = h_{t-1} (h_{-1} = h0):

        k       = W_ih x_t + b_ih          (B, 3H), split into k_f, k_i, k_h
        f       = σ(k_f)
        i       = σ(k_i)
        f_prime = f / (f + i)
        i_prime = i / (f + i)
        h_tilde = g(k_h)
        h_t     = f_prime ⊙ h + i_prime ⊙ h_tilde

    Args:
        x: (T, B, I). h0: (B, H). params: MinimalParams with G = 3.
    Returns:
        (y (T, B, H) = every h_t, h_T (B, H), cache for `minlstm_backward`).
    """
    hidden = _check("minlstm_forward", x, h0, params, 3)
    T, B = x.shape[:2]
    k = x @ params.w_ih.T + params.b_ih  # (T, B, 3H)
    f = sigmoid(k[..., :hidden])
    i = sigmoid(k[..., hidden:2 * hidden])
    f_prime = f / (f + i)
    i_prime = i / (f + i)
    h_tilde = g(k[..., 2 * hidden:])
    h = np.zeros((T + 1, B, hidden), dtype=x.dtype)
    h[0] = h0
    for t in range(T):
        h[t + 1] = f_prime[t] * h[t] + i_prime[t] * h_tilde[t]
    gates = {"f": f, "i": i, "f_prime": f_prime, "i_prime": i_prime, "h_tilde": h_tilde}
    return h[1:].copy(), h[T].copy(), MinimalCache(params, x, h, k, gates)


def minlstm_backward(dy: np.ndarray, dh_T: np.ndarray, cache: MinimalCache) -> MinimalGrads:
    r"""BPTT for `minlstm_forward`: walks t = T-1 … 0 carrying dh_next = dL/dh_t from step t+1.

    Args:
        dy: (T, B, H) dL/dy. dh_T: (B, H) dL/dh_T. cache: from `minlstm_forward`.
    """
    gates, h = cache.gates, cache.h
    f, i, f_prime, i_prime, h_tilde = (gates[name] for name in ("f", "i", "f_prime", "i_prime", "h_tilde"))
    hidden = f.shape[2]
    dk = np.zeros_like(cache.k)  # (T, B, 3H)
    dh_next = dh_T.copy()
    for t in range(f.shape[0] - 1, -1, -1):
        dh = dy[t] + dh_next
        # h_t = f_prime ⊙ h + i_prime ⊙ h_tilde
        df_prime = dh * h[t]
        di_prime = dh * h_tilde[t]
        dh_tilde = dh * i_prime[t]
        dh_next = dh * f_prime[t]
        # f_prime = f / s, i_prime = i / s with s = f + i: ∂f_prime/∂f = i/s², ∂f_prime/∂i = −f/s²,
        # ∂i_prime/∂f = −i/s², ∂i_prime/∂i = f/s²
        s2 = (f[t] + i[t]) ** 2
        df = i[t] * (df_prime - di_prime) / s2
        di = f[t] * (di_prime - df_prime) / s2
        # f = σ(k_f), i = σ(k_i), h_tilde = g(k_h)
        dk[t, :, :hidden] = df * f[t] * (1 - f[t])
        dk[t, :, hidden:2 * hidden] = di * i[t] * (1 - i[t])
        dk[t, :, 2 * hidden:] = dh_tilde * dg(cache.k[t, :, 2 * hidden:])
    return _linear_backward(dk, dh_next, cache)


def _linear_backward(dk: np.ndarray, dh0: np.ndarray, cache: MinimalCache) -> MinimalGrads:
    """k = W_ih x_t + b_ih for every t: dk (T, B, G·H) -> the gradients of x, W_ih, b_ih."""
    x = cache.x
    dw_ih = np.einsum("tbg,tbi->gi", dk, x)
    db_ih = dk.sum(axis=(0, 1))
    dx = dk @ cache.params.w_ih
    return MinimalGrads(dx, dh0, dw_ih, db_ih)
