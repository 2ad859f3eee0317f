r"""Greff et al. 2017's FGR LSTM (full gate recurrence) in NumPy, with a recurrent dropout mask: the forward pass
and its hand-derived backward pass (BPTT).

Shape symbols: T time steps, B batch, I input features, H hidden size.
Weights use gatedrnn.LSTM(variant="fgr")'s layout: W_ih (4H, I), W_hh (4H, H), biases (4H,) (blocks i, f, g, o),
``peephole`` (3H,) = [p_i | p_f | p_o], ``w_gate`` (3H, 3H) = R_g (rows: the target gates i, f, o; columns: the
previous step's i′, f′, o′).

This module restates FGR on its own (no import of `gatedrnn.cells`, no torch), so that the tests can hold the
fused kernel and the torch step function against a second, independent statement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from gatedrnn.reference._common import check_inputs, sigmoid, to_array, weights_from_state_dict


@dataclass(frozen=True)
class FGRParams:
    """w_ih (4H, I), w_hh (4H, H), b_ih, b_hh (4H,), peephole (3H,), w_gate (3H, 3H)."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    peephole: np.ndarray
    w_gate: np.ndarray

    @property
    def hidden_size(self) -> int:
        return self.w_hh.shape[1]

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], suffix: str = "_l0") -> "FGRParams":
        """One layer and direction of a gatedrnn.LSTM(variant="fgr") state_dict (tensors or arrays)."""
        hidden = state_dict[f"weight_hh{suffix}"].shape[1]
        arrays = weights_from_state_dict(state_dict, suffix, 4 * hidden)
        peephole = to_array(state_dict[f"weight_peephole{suffix}"])
        w_gate = to_array(state_dict[f"weight_gate_hh{suffix}"])
        for name, value, shape in (("weight_peephole", peephole, (3 * hidden,)),
                                   ("weight_gate_hh", w_gate, (3 * hidden, 3 * hidden))):
            if value.shape != shape:
                raise ValueError(f"{name}{suffix} should have shape {shape}, got {value.shape}")
        return cls(peephole=peephole, w_gate=w_gate, **arrays)


@dataclass(frozen=True)
class FGRCache:
    """What the forward saves for the backward. h, c, a hold T+1 steps: index 0 is h0/c0/a0, index t+1 is step t.

    x (T, B, I); h, c (T+1, B, H); a (T+1, B, 3H); i, f, g, o (T, B, H); mask (B, H) (ones when absent).
    """

    params: FGRParams
    x: np.ndarray
    h: np.ndarray
    c: np.ndarray
    a: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class FGRGrads:
    """dL/d of every input of `fgr_forward`: dx (T, B, I), dh0, dc0 (B, H), da0 (B, 3H), and one per parameter."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    da0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray
    db_hh: np.ndarray
    dpeephole: np.ndarray
    dw_gate: np.ndarray


def fgr_forward(
    x: np.ndarray, h0: np.ndarray, c0: np.ndarray, a0: np.ndarray, params: FGRParams,
    mask: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, FGRCache]:
    r"""Run one FGR layer over a sequence.

    For t = 0 … T-1, with h = h_{t-1}, c = c_{t-1}, a = a_{t-1} = [i′ | f′ | o′] (the previous step's gates;
    h_{-1} = h0, c_{-1} = c0, a_{-1} = a0) and m the recurrent mask:

        z      = W_ih x_t + b_ih + W_hh (h ⊙ m) + b_hh    split into z_i, z_f, z_g, z_o
        q      = R_g a                                    split into q_i, q_f, q_o
        i      = σ(z_i + p_i ⊙ c + q_i)
        f      = σ(z_f + p_f ⊙ c + q_f)
        g      = tanh(z_g)
        c_t    = f ⊙ c + i ⊙ g
        o      = σ(z_o + p_o ⊙ c_t + q_o)
        h_t    = o ⊙ tanh(c_t)
        a_t    = [i | f | o]
        y_t    = h_t

    Args:
        x: (T, B, I). h0, c0: (B, H). a0: (B, 3H). params: FGRParams. mask: (B, H) or None (ones).
    Returns:
        (y (T, B, H), h_T (B, H), c_T (B, H), a_T (B, 3H), cache for `fgr_backward`).
    """
    check_inputs("fgr_forward", x, {"h0": h0, "c0": c0}, params.w_ih, gate_count=4)
    T, B = x.shape[0], x.shape[1]
    H = params.hidden_size
    for name, value, shape in (("a0", a0, (B, 3 * H)), ("mask", mask, (B, H))):
        if value is not None and value.shape != shape:
            raise ValueError(f"fgr_forward: {name} should have shape {shape}, got {value.shape}")
    m = np.ones((B, H), dtype=x.dtype) if mask is None else mask
    p_i, p_f, p_o = np.split(params.peephole, 3)  # (H,) each
    h = np.zeros((T + 1, B, H), dtype=x.dtype)
    c = np.zeros((T + 1, B, H), dtype=x.dtype)
    a = np.zeros((T + 1, B, 3 * H), dtype=x.dtype)
    i, f, g, o = (np.zeros((T, B, H), dtype=x.dtype) for _ in range(4))
    h[0], c[0], a[0] = h0, c0, a0
    for t in range(T):
        z = x[t] @ params.w_ih.T + params.b_ih + (h[t] * m) @ params.w_hh.T + params.b_hh  # (B, 4H)
        z_i, z_f, z_g, z_o = np.split(z, 4, axis=1)  # (B, H) each
        q_i, q_f, q_o = np.split(a[t] @ params.w_gate.T, 3, axis=1)  # (B, H) each
        i[t] = sigmoid(z_i + p_i * c[t] + q_i)
        f[t] = sigmoid(z_f + p_f * c[t] + q_f)
        g[t] = np.tanh(z_g)
        c[t + 1] = f[t] * c[t] + i[t] * g[t]
        o[t] = sigmoid(z_o + p_o * c[t + 1] + q_o)
        h[t + 1] = o[t] * np.tanh(c[t + 1])
        a[t + 1] = np.concatenate([i[t], f[t], o[t]], axis=1)
    y = h[1:].copy()  # (T, B, H)
    return y, h[T].copy(), c[T].copy(), a[T].copy(), FGRCache(params, x, h, c, a, i, f, g, o, m)


def fgr_backward(dy: np.ndarray, dh_T: np.ndarray, dc_T: np.ndarray, da_T: np.ndarray, cache: FGRCache) -> FGRGrads:
    r"""Backpropagation through time for `fgr_forward`.

    Walks t = T-1 … 0 with dh_next = dL/dh_t, dc_next = dL/dc_t and da_next = dL/da_t arriving from step t+1
    (through W_hh, f ⊙ c and the peepholes, and R_g). The mask is data: no gradient.

    Args:
        dy: (T, B, H) dL/dy. dh_T, dc_T: (B, H), da_T: (B, 3H) (zeros if the loss ignores them).
        cache: from `fgr_forward`.
    Returns:
        FGRGrads: dx (T, B, I), dh0, dc0 (B, H), da0 (B, 3H), and dw_ih, dw_hh, db_ih, db_hh, dpeephole, dw_gate
        shaped like the params.
    """
    p, x = cache.params, cache.x
    T = x.shape[0]
    m = cache.mask
    p_i, p_f, p_o = np.split(p.peephole, 3)
    dp_i, dp_f, dp_o = (np.zeros_like(p_i) for _ in range(3))
    dx = np.zeros_like(x)
    dw_ih, dw_hh, dw_gate = np.zeros_like(p.w_ih), np.zeros_like(p.w_hh), np.zeros_like(p.w_gate)
    db = np.zeros_like(p.b_ih)
    dh_next, dc_next, da_next = dh_T.copy(), dc_T.copy(), da_T.copy()
    for t in range(T - 1, -1, -1):
        i, f, g, o = cache.i[t], cache.f[t], cache.g[t], cache.o[t]
        c_t, c_prev, h_prev, a_prev = cache.c[t + 1], cache.c[t], cache.h[t], cache.a[t]
        # y_t = h_t: h_t feeds the output and the next step
        dh = dy[t] + dh_next
        # a_t = [i | f | o]: the next step's gates read this step's
        da_i, da_f, da_o = np.split(da_next, 3, axis=1)
        # h_t = o ⊙ tanh(c_t)
        tanh_c = np.tanh(c_t)
        do = dh * tanh_c + da_o
        dc = dc_next + dh * o * (1 - tanh_c**2)
        # o = σ(z_o + p_o ⊙ c_t + q_o)
        dz_o = do * o * (1 - o)
        dc = dc + dz_o * p_o
        dp_o += (dz_o * c_t).sum(axis=0)
        # c_t = f ⊙ c + i ⊙ g
        di = dc * g + da_i
        df = dc * c_prev + da_f
        dg = dc * i
        dc_prev = dc * f
        # g = tanh(z_g); i = σ(z_i + p_i ⊙ c + q_i); f = σ(z_f + p_f ⊙ c + q_f)
        dz_g = dg * (1 - g**2)
        dz_i = di * i * (1 - i)
        dz_f = df * f * (1 - f)
        dc_prev = dc_prev + dz_i * p_i + dz_f * p_f
        dp_i += (dz_i * c_prev).sum(axis=0)
        dp_f += (dz_f * c_prev).sum(axis=0)
        # q = R_g a (targets i, f, o)
        dq = np.concatenate([dz_i, dz_f, dz_o], axis=1)  # (B, 3H)
        dw_gate += dq.T @ a_prev
        da_prev = dq @ p.w_gate
        # z = W_ih x_t + b_ih + W_hh (h ⊙ m) + b_hh
        dz = np.concatenate([dz_i, dz_f, dz_g, dz_o], axis=1)  # (B, 4H)
        dw_ih += dz.T @ x[t]
        dw_hh += dz.T @ (h_prev * m)
        db += dz.sum(axis=0)
        dx[t] = dz @ p.w_ih
        dh_next, dc_next, da_next = (dz @ p.w_hh) * m, dc_prev, da_prev
    dpeephole = np.concatenate([dp_i, dp_f, dp_o])
    return FGRGrads(dx, dh_next, dc_next, da_next, dw_ih, dw_hh, db, db.copy(), dpeephole, dw_gate)
