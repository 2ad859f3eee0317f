r"""One sLSTM layer (xLSTM, Beck et al. 2024) in NumPy: the forward pass and its hand-derived backward (BPTT).

Shape symbols: T time steps, B batch, I input features, H hidden size, K heads, D = H / K.
Parameters use `gatedrnn.SLSTM`'s layout (gate blocks i, f, z, o; the block-diagonal R held per head as
r (K, 4D, D)), so ``SLSTMParams.from_state_dict(layer.state_dict())`` computes what the layer computes.

The backward is the exact derivative of every returned array, m included: gradient flows through the
stabiliser m (the max takes i_tilde on ties, and m = i_tilde where n = 0, as in `gatedrnn.cells.slstm`).
For losses of h alone it equals the official CUDA kernel's backward, which holds m constant, because h
does not depend on m (tests/test_slstm.py checks both claims).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from gatedrnn.reference._common import sigmoid, to_array


def logsigmoid(a: np.ndarray) -> np.ndarray:
    """log σ(a) = min(a, 0) - log(1 + e^(-|a|)), finite for any a."""
    return np.minimum(a, 0.0) - np.log1p(np.exp(-np.abs(a)))


def blockdiag_matmul(h: np.ndarray, r: np.ndarray) -> np.ndarray:
    """R h with R block-diagonal, one head at a time: h (B, H), r (K, 4D, D) -> (B, 4H) gate-major."""
    K, _, D = r.shape
    out = np.zeros((h.shape[0], 4, K, D), dtype=h.dtype)
    for k in range(K):
        out[:, :, k, :] = (h[:, k * D : (k + 1) * D] @ r[k].T).reshape(-1, 4, D)  # (B, 4, D)
    return out.reshape(h.shape[0], 4 * K * D)


def blockdiag_matmul_backward(da: np.ndarray, h: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a = blockdiag_matmul(h, r): (dh (B, H), dr (K, 4D, D)) from da (B, 4H)."""
    K, _, D = r.shape
    da_heads = da.reshape(da.shape[0], 4, K, D)  # (B, 4, K, D)
    dh = np.zeros_like(h)
    dr = np.zeros_like(r)
    for k in range(K):
        da_k = da_heads[:, :, k, :].reshape(da.shape[0], 4 * D)  # (B, 4D), rows of r[k]
        h_k = h[:, k * D : (k + 1) * D]  # (B, D)
        dr[k] = da_k.T @ h_k
        dh[:, k * D : (k + 1) * D] = da_k @ r[k]
    return dh, dr


@dataclass(frozen=True)
class SLSTMParams:
    """w_ih (4H, I), r (K, 4D, D), b (4H,); forget_gate "sigmoid" or "exp"."""

    w_ih: np.ndarray
    r: np.ndarray
    b: np.ndarray
    forget_gate: str = "sigmoid"

    @property
    def hidden_size(self) -> int:
        return self.w_ih.shape[0] // 4

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], suffix: str = "_l0",
                        forget_gate: str = "sigmoid") -> "SLSTMParams":
        """One layer and direction of a `gatedrnn.SLSTM` state_dict; no bias (bias=False) reads as zeros."""
        w_ih = to_array(state_dict[f"weight_ih{suffix}"])
        b = to_array(state_dict[f"bias{suffix}"]) if f"bias{suffix}" in state_dict else np.zeros(w_ih.shape[0])
        return cls(w_ih, to_array(state_dict[f"weight_hh{suffix}"]), b.astype(w_ih.dtype), forget_gate)


@dataclass(frozen=True)
class SLSTMCache:
    """What the forward saves. h, c, n, m hold T+1 steps (index 0 the initial state, t+1 step t);
    the rest (T, B, H): i, f, z, o, f_tilde (pre-activation), take_input (where m = i_tilde)."""

    params: SLSTMParams
    x: np.ndarray
    h: np.ndarray
    c: np.ndarray
    n: np.ndarray
    m: np.ndarray
    i: np.ndarray
    f: np.ndarray
    z: np.ndarray
    o: np.ndarray
    f_tilde: np.ndarray
    take_input: np.ndarray


@dataclass(frozen=True)
class SLSTMGrads:
    """dL/d of every input of `slstm_forward`: dx (T, B, I), dh0, dc0, dn0, dm0 (B, H), dw_ih, dr, db."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dn0: np.ndarray
    dm0: np.ndarray
    dw_ih: np.ndarray
    dr: np.ndarray
    db: np.ndarray


def slstm_forward(x: np.ndarray, h0: np.ndarray, c0: np.ndarray, n0: np.ndarray, m0: np.ndarray,
                  params: SLSTMParams) -> tuple[np.ndarray, tuple[np.ndarray, ...], SLSTMCache]:
    r"""Run one sLSTM layer over a sequence.

    For t = 0 … T-1, with h, c, n, m the previous step's (the initial state at t = 0):

        a          = W_ih x_t + R h + b              (B, 4H), split into i_tilde, f_tilde, z_tilde, o_tilde
        z          = tanh(z_tilde);  o = σ(o_tilde)
        log_f      = logsigmoid(f_tilde)  ("sigmoid")  or  f_tilde  ("exp")
        take_input = (n = 0) or (i_tilde ≥ log_f + m)
        m_t        = i_tilde if take_input else log_f + m
        i          = exp(i_tilde - m_t);  f = exp(min(log_f + m - m_t, 0))
        c_t        = f ⊙ c + i ⊙ z;  n_t = f ⊙ n + i
        h_t        = o ⊙ c_t / n_t;   y_t = h_t

    Args:
        x: (T, B, I). h0, c0, n0, m0: (B, H). params: SLSTMParams.
    Returns:
        (y (T, B, H), (h_T, c_T, n_T, m_T) each (B, H), cache for `slstm_backward`).
    """
    p = params
    T, B = x.shape[0], x.shape[1]
    H = p.hidden_size
    if x.ndim != 3 or x.shape[2] != p.w_ih.shape[1]:
        raise ValueError(f"slstm_forward: x should have shape (T, B, {p.w_ih.shape[1]}), got {x.shape}")
    states = [np.zeros((T + 1, B, H), dtype=x.dtype) for _ in range(4)]
    h, c, n, m = states
    for name, state, init in zip(("h0", "c0", "n0", "m0"), states, (h0, c0, n0, m0)):
        if init.shape != (B, H):
            raise ValueError(f"slstm_forward: {name} should have shape ({B}, {H}), got {init.shape}")
        state[0] = init
    i, f, z, o, f_tilde = (np.zeros((T, B, H), dtype=x.dtype) for _ in range(5))
    take_input = np.zeros((T, B, H), dtype=bool)
    for t in range(T):
        a = x[t] @ p.w_ih.T + blockdiag_matmul(h[t], p.r) + p.b  # (B, 4H)
        i_tilde, f_tilde[t], z_tilde, o_tilde = np.split(a, 4, axis=1)  # 4 x (B, H)
        z[t] = np.tanh(z_tilde)
        o[t] = sigmoid(o_tilde)
        log_f = logsigmoid(f_tilde[t]) if p.forget_gate == "sigmoid" else f_tilde[t]
        log_f_plus_m = log_f + m[t]
        take_input[t] = (n[t] == 0) | (i_tilde >= log_f_plus_m)
        m[t + 1] = np.where(take_input[t], i_tilde, log_f_plus_m)
        i[t] = np.exp(i_tilde - m[t + 1])
        f[t] = np.exp(np.minimum(log_f_plus_m - m[t + 1], 0.0))  # the min acts only from n = 0 (c = n = 0)
        c[t + 1] = f[t] * c[t] + i[t] * z[t]
        n[t + 1] = f[t] * n[t] + i[t]
        h[t + 1] = o[t] * c[t + 1] / n[t + 1]
    cache = SLSTMCache(p, x, h, c, n, m, i, f, z, o, f_tilde, take_input)
    return h[1:].copy(), (h[T].copy(), c[T].copy(), n[T].copy(), m[T].copy()), cache


def slstm_backward(dy: np.ndarray, dfinal: tuple[np.ndarray, ...], cache: SLSTMCache) -> SLSTMGrads:
    r"""Backpropagation through time for `slstm_forward`.

    Walks t = T-1 … 0 carrying dh_next, dc_next, dn_next, dm_next: dL/d of the state step t leaves,
    arriving from step t+1 (and, at t = T-1, from the loss through the final state `dfinal`).

    Args:
        dy: (T, B, H) dL/dy. dfinal: (dh_T, dc_T, dn_T, dm_T), each (B, H) (zeros if the loss ignores them).
        cache: from `slstm_forward`.
    Returns:
        SLSTMGrads, each shaped like what it differentiates.
    """
    p, x = cache.params, cache.x
    T = x.shape[0]
    dx = np.zeros_like(x)
    dw_ih, dr, db = np.zeros_like(p.w_ih), np.zeros_like(p.r), np.zeros_like(p.b)
    dh_next, dc_next, dn_next, dm_next = (d.copy() for d in dfinal)
    for t in range(T - 1, -1, -1):
        i, f, z, o, take = cache.i[t], cache.f[t], cache.z[t], cache.o[t], cache.take_input[t]
        h_prev, c_prev, n_prev = cache.h[t], cache.c[t], cache.n[t]
        c_t, n_t = cache.c[t + 1], cache.n[t + 1]
        # y_t = h_t: h_t feeds the output and the next step
        dh = dy[t] + dh_next
        # h_t = o ⊙ c_t / n_t
        do = dh * c_t / n_t
        dc = dc_next + dh * o / n_t
        dn = dn_next - dh * o * c_t / n_t**2
        # c_t = f ⊙ c + i ⊙ z;  n_t = f ⊙ n + i
        df = dc * c_prev + dn * n_prev
        di = dc * z + dn
        dz = dc * i
        dc_prev = dc * f
        dn_prev = dn * f
        # i = exp(i_tilde - m_t);  f = exp(log_f + m - m_t)   (exp' = exp)
        di_tilde = di * i
        dlog_f_plus_m = df * f
        dm_t = dm_next - di * i - df * f
        # m_t = i_tilde if take_input else log_f + m
        di_tilde = di_tilde + np.where(take, dm_t, 0.0)
        dlog_f_plus_m = dlog_f_plus_m + np.where(take, 0.0, dm_t)
        # log_f + m
        dm_prev = dlog_f_plus_m
        # log_f = logsigmoid(f_tilde): d/da log σ(a) = 1 - σ(a);  or log_f = f_tilde
        df_tilde = dlog_f_plus_m * (1 - sigmoid(cache.f_tilde[t])) if p.forget_gate == "sigmoid" else dlog_f_plus_m
        # z = tanh(z_tilde);  o = σ(o_tilde)
        dz_tilde = dz * (1 - z**2)
        do_tilde = do * o * (1 - o)
        da = np.concatenate([di_tilde, df_tilde, dz_tilde, do_tilde], axis=1)  # (B, 4H)
        # a = W_ih x_t + R h + b
        dw_ih += da.T @ x[t]
        db += da.sum(axis=0)
        dx[t] = da @ p.w_ih
        dh_prev, dr_t = blockdiag_matmul_backward(da, h_prev, p.r)
        dr += dr_t
        dh_next, dc_next, dn_next, dm_next = dh_prev, dc_prev, dn_prev, dm_prev
    # after step 0, what flowed "from the next step" is the gradient of the initial state
    return SLSTMGrads(dx, dh_next, dc_next, dn_next, dm_next, dw_ih, dr, db)
