r"""One LayerNorm LSTM or LayerNorm GRU layer in NumPy (Ba, Kiros & Hinton 2016, haste's placement; the
equations are those of `gatedrnn.cells.layernorm`): the forward pass and its hand-derived backward (BPTT).

Shape symbols: T time steps, B batch, I input features, H hidden size, G gates (LSTM 4, GRU 3).
Weights use torch.nn's layout and gate order (LSTM i, f, g, o; GRU r, z, n) plus the LayerNorm gains:
``LayerNormLSTMParams.from_state_dict(gatedrnn.LayerNormLSTM(...).state_dict())`` computes what the layer
computes.

    LN(a; γ, β) = γ ⊙ â + β,   â = (a − mean(a)) · rstd,   rstd = 1 / sqrt(var(a) + ε)   (over a row)
    its backward: dγ = Σ dy ⊙ â, dβ = Σ dy, da = rstd · (γ⊙dy − mean(γ⊙dy) − â · mean(γ⊙dy ⊙ â))

Read each ``*_forward`` and ``*_backward`` side by side: every line of the backward is the chain rule
applied to one line of the forward, named d<var> for dL/d<var>.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

import numpy as np

from gatedrnn.reference._common import check_inputs, sigmoid, to_array, weights_from_state_dict

LAYER_NORM_EPS = 1e-5  # as gatedrnn.cells.layernorm.LAYER_NORM_EPS (haste's, torch.nn.LayerNorm's)


def layer_norm_forward(a: np.ndarray, gamma: np.ndarray, beta: Optional[np.ndarray] = None):
    """LN over the last axis: a (B, K), gamma and beta (K,) -> (y (B, K), a_hat (B, K), rstd (B, 1))."""
    mean = a.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(((a - mean) ** 2).mean(axis=1, keepdims=True) + LAYER_NORM_EPS)
    a_hat = (a - mean) * rstd
    y = gamma * a_hat + (0.0 if beta is None else beta)
    return y, a_hat, rstd


def layer_norm_backward(dy: np.ndarray, a_hat: np.ndarray, rstd: np.ndarray, gamma: np.ndarray):
    """Backward of `layer_norm_forward`: dy (B, K) -> (da (B, K), dgamma (K,), dbeta (K,))."""
    gdy = gamma * dy
    da = rstd * (gdy - gdy.mean(axis=1, keepdims=True) - a_hat * (gdy * a_hat).mean(axis=1, keepdims=True))
    return da, (dy * a_hat).sum(axis=0), dy.sum(axis=0)


def _params_from_state_dict(cls, state_dict: Mapping[str, Any], suffix: str, gates: int):
    hidden = state_dict[f"weight_hh{suffix}"].shape[1]
    values = weights_from_state_dict(state_dict, suffix, gates * hidden)
    for field in fields(cls):
        if field.name not in values:
            values[field.name] = to_array(state_dict[f"{field.name}{suffix}"])
    return cls(**values)


@dataclass(frozen=True)
class LayerNormLSTMParams:
    """w_ih (4H, I), w_hh (4H, H), b_ih, b_hh, gamma_ih, gamma_hh (4H,), gamma_c, beta_c (H,)."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    gamma_ih: np.ndarray
    gamma_hh: np.ndarray
    gamma_c: np.ndarray
    beta_c: np.ndarray

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], suffix: str = "_l0") -> "LayerNormLSTMParams":
        """One layer and direction of a `gatedrnn.LayerNormLSTM` state_dict (tensors or arrays)."""
        return _params_from_state_dict(cls, state_dict, suffix, 4)


@dataclass(frozen=True)
class LayerNormGRUParams:
    """w_ih (3H, I), w_hh (3H, H), b_ih, b_hh, gamma_ih, gamma_hh (3H,)."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    gamma_ih: np.ndarray
    gamma_hh: np.ndarray

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], suffix: str = "_l0") -> "LayerNormGRUParams":
        """One layer and direction of a `gatedrnn.LayerNormGRU` state_dict (tensors or arrays)."""
        return _params_from_state_dict(cls, state_dict, suffix, 3)


@dataclass(frozen=True)
class LayerNormCache:
    """What a forward saves for its backward: x (T, B, I), h (T+1, B, H) (and c for the LSTM; index 0 is the
    initial state), and per step t the named arrays in `steps[t]` (gates, LN's â and rstd)."""

    params: Any
    x: np.ndarray
    h: np.ndarray
    c: Optional[np.ndarray]
    steps: list


def _grads_like(params) -> dict[str, np.ndarray]:
    return {f"d{field.name}": np.zeros_like(getattr(params, field.name)) for field in fields(params)}


def layernorm_lstm_forward(x: np.ndarray, h0: np.ndarray, c0: np.ndarray, params: LayerNormLSTMParams):
    r"""Run one LayerNorm LSTM layer. For t = 0 … T-1, with h = h_{t-1}, c = c_{t-1}:

        wx     = W_ih x_t,  wh = W_hh h                                   (B, 4H)
        a      = LN(wx; γ_ih) + LN(wh; γ_hh) + b_ih + b_hh                blocks a_i, a_f, a_g, a_o
        i, f, g, o = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)
        c_t    = f ⊙ c + i ⊙ g
        tanh_c = tanh(LN(c_t; γ_c, β_c))
        h_t    = o ⊙ tanh_c

    Args:
        x: (T, B, I). h0, c0: (B, H). params: LayerNormLSTMParams.
    Returns:
        (y (T, B, H), h_T (B, H), c_T (B, H), cache for `layernorm_lstm_backward`).
    """
    p = params
    check_inputs("layernorm_lstm_forward", x, {"h0": h0, "c0": c0}, p.w_ih, gate_count=4)
    T = x.shape[0]
    h = np.concatenate([h0[None], np.zeros((T,) + h0.shape, dtype=x.dtype)])
    c = np.concatenate([c0[None], np.zeros((T,) + c0.shape, dtype=x.dtype)])
    steps = []
    for t in range(T):
        ln_x, x_hat, rstd_x = layer_norm_forward(x[t] @ p.w_ih.T, p.gamma_ih)
        ln_h, h_hat, rstd_h = layer_norm_forward(h[t] @ p.w_hh.T, p.gamma_hh)
        a = ln_x + ln_h + p.b_ih + p.b_hh  # (B, 4H)
        a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
        c[t + 1] = f * c[t] + i * g
        ln_c, c_hat, rstd_c = layer_norm_forward(c[t + 1], p.gamma_c, p.beta_c)
        tanh_c = np.tanh(ln_c)
        h[t + 1] = o * tanh_c
        steps.append(dict(i=i, f=f, g=g, o=o, tanh_c=tanh_c, x_hat=x_hat, rstd_x=rstd_x, h_hat=h_hat,
                          rstd_h=rstd_h, c_hat=c_hat, rstd_c=rstd_c))
    return h[1:].copy(), h[T].copy(), c[T].copy(), LayerNormCache(p, x, h, c, steps)


def layernorm_lstm_backward(dy: np.ndarray, dh_T: np.ndarray, dc_T: np.ndarray, cache: LayerNormCache) -> dict:
    """BPTT for `layernorm_lstm_forward`: dy (T, B, H), dh_T, dc_T (B, H) -> {"dx", "dh0", "dc0", "dw_ih",
    "dw_hh", "db_ih", "db_hh", "dgamma_ih", "dgamma_hh", "dgamma_c", "dbeta_c"}, each shaped like its variable."""
    p, x = cache.params, cache.x
    grads = _grads_like(p)
    dx = np.zeros_like(x)
    dh_next, dc_next = dh_T.copy(), dc_T.copy()
    for t in range(x.shape[0] - 1, -1, -1):
        s = cache.steps[t]
        i, f, g, o, tanh_c = s["i"], s["f"], s["g"], s["o"], s["tanh_c"]
        dh = dy[t] + dh_next
        # h_t = o ⊙ tanh_c, tanh_c = tanh(LN(c_t; γ_c, β_c))
        do = dh * tanh_c
        dln_c = dh * o * (1 - tanh_c**2)
        dc_ln, dgamma_c, dbeta_c = layer_norm_backward(dln_c, s["c_hat"], s["rstd_c"], p.gamma_c)
        grads["dgamma_c"] += dgamma_c
        grads["dbeta_c"] += dbeta_c
        dc = dc_next + dc_ln
        # c_t = f ⊙ c + i ⊙ g
        df, di, dg = dc * cache.c[t], dc * g, dc * i
        dc_prev = dc * f
        # gates of a
        da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], axis=1)
        # a = LN(wx; γ_ih) + LN(wh; γ_hh) + b_ih + b_hh
        grads["db_ih"] += da.sum(axis=0)
        grads["db_hh"] += da.sum(axis=0)
        dwx, dgamma_ih, _ = layer_norm_backward(da, s["x_hat"], s["rstd_x"], p.gamma_ih)
        dwh, dgamma_hh, _ = layer_norm_backward(da, s["h_hat"], s["rstd_h"], p.gamma_hh)
        grads["dgamma_ih"] += dgamma_ih
        grads["dgamma_hh"] += dgamma_hh
        # wx = W_ih x_t, wh = W_hh h
        grads["dw_ih"] += dwx.T @ x[t]
        grads["dw_hh"] += dwh.T @ cache.h[t]
        dx[t] = dwx @ p.w_ih
        dh_next, dc_next = dwh @ p.w_hh, dc_prev
    return dict(grads, dx=dx, dh0=dh_next, dc0=dc_next)


def layernorm_gru_forward(x: np.ndarray, h0: np.ndarray, params: LayerNormGRUParams):
    r"""Run one LayerNorm GRU layer. For t = 0 … T-1, with h = h_{t-1}:

        wx     = W_ih x_t,  wh = W_hh h                                   (B, 3H)
        ax     = LN(wx; γ_ih) + b_ih                                      blocks ax_r, ax_z, ax_n
        ah     = LN(wh; γ_hh) + b_hh                                      blocks ah_r, ah_z, h_n
        r      = σ(ax_r + ah_r),  z = σ(ax_z + ah_z)
        n      = tanh(ax_n + r ⊙ h_n)
        h_t    = (1 − z) ⊙ n + z ⊙ h

    Args:
        x: (T, B, I). h0: (B, H). params: LayerNormGRUParams.
    Returns:
        (y (T, B, H), h_T (B, H), cache for `layernorm_gru_backward`).
    """
    p = params
    check_inputs("layernorm_gru_forward", x, {"h0": h0}, p.w_ih, gate_count=3)
    T = x.shape[0]
    h = np.concatenate([h0[None], np.zeros((T,) + h0.shape, dtype=x.dtype)])
    steps = []
    for t in range(T):
        ln_x, x_hat, rstd_x = layer_norm_forward(x[t] @ p.w_ih.T, p.gamma_ih)
        ln_h, h_hat, rstd_h = layer_norm_forward(h[t] @ p.w_hh.T, p.gamma_hh)
        ax_r, ax_z, ax_n = np.split(ln_x + p.b_ih, 3, axis=1)
        ah_r, ah_z, h_n = np.split(ln_h + p.b_hh, 3, axis=1)
        r, z = sigmoid(ax_r + ah_r), sigmoid(ax_z + ah_z)
        n = np.tanh(ax_n + r * h_n)
        h[t + 1] = (1 - z) * n + z * h[t]
        steps.append(dict(r=r, z=z, n=n, h_n=h_n, x_hat=x_hat, rstd_x=rstd_x, h_hat=h_hat, rstd_h=rstd_h))
    return h[1:].copy(), h[T].copy(), LayerNormCache(p, x, h, None, steps)


def layernorm_gru_backward(dy: np.ndarray, dh_T: np.ndarray, cache: LayerNormCache) -> dict:
    """BPTT for `layernorm_gru_forward`: dy (T, B, H), dh_T (B, H) -> {"dx", "dh0", "dw_ih", "dw_hh", "db_ih",
    "db_hh", "dgamma_ih", "dgamma_hh"}, each shaped like its variable."""
    p, x = cache.params, cache.x
    grads = _grads_like(p)
    dx = np.zeros_like(x)
    dh_next = dh_T.copy()
    for t in range(x.shape[0] - 1, -1, -1):
        s = cache.steps[t]
        r, z, n, h_n = s["r"], s["z"], s["n"], s["h_n"]
        dh = dy[t] + dh_next
        # h_t = (1 − z) ⊙ n + z ⊙ h
        dz = dh * (cache.h[t] - n)
        dn = dh * (1 - z)
        dh_prev = dh * z
        # n = tanh(ax_n + r ⊙ h_n)
        dax_n = dn * (1 - n**2)
        dh_n = dax_n * r
        dr = dax_n * h_n
        # r = σ(ax_r + ah_r), z = σ(ax_z + ah_z)
        da_r, da_z = dr * r * (1 - r), dz * z * (1 - z)
        dax = np.concatenate([da_r, da_z, dax_n], axis=1)  # (B, 3H)
        dah = np.concatenate([da_r, da_z, dh_n], axis=1)
        # ax = LN(wx; γ_ih) + b_ih, ah = LN(wh; γ_hh) + b_hh
        grads["db_ih"] += dax.sum(axis=0)
        grads["db_hh"] += dah.sum(axis=0)
        dwx, dgamma_ih, _ = layer_norm_backward(dax, s["x_hat"], s["rstd_x"], p.gamma_ih)
        dwh, dgamma_hh, _ = layer_norm_backward(dah, s["h_hat"], s["rstd_h"], p.gamma_hh)
        grads["dgamma_ih"] += dgamma_ih
        grads["dgamma_hh"] += dgamma_hh
        # wx = W_ih x_t, wh = W_hh h
        grads["dw_ih"] += dwx.T @ x[t]
        grads["dw_hh"] += dwh.T @ cache.h[t]
        dx[t] = dwx @ p.w_ih
        dh_next = dh_prev + dwh @ p.w_hh
    return dict(grads, dx=dx, dh0=dh_next)
