r"""One LSTM layer in NumPy: the forward pass and its hand-derived backward pass (BPTT).

Shape symbols: T time steps, B batch, I input features, H hidden size.
Weights use torch.nn.LSTM's layout and gate order (i, f, g, o stacked by rows), so
``LSTMParams.from_state_dict(torch_lstm.state_dict())`` computes exactly what torch computes.

Read `lstm_forward` and `lstm_backward` side by side: every line of the backward is the chain rule
applied to one line of the forward, named d<var> for dL/d<var>.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from gatedrnn.reference._common import check_inputs, sigmoid, weights_from_state_dict


@dataclass(frozen=True)
class LSTMParams:
    """w_ih (4H, I), w_hh (4H, H), b_ih (4H,), b_hh (4H,); row blocks in the order i, f, g, o."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray

    @property
    def hidden_size(self) -> int:
        return self.w_hh.shape[1]

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], suffix: str = "_l0") -> "LSTMParams":
        """One layer of a torch.nn.LSTM state_dict (tensors or arrays); no projection (proj_size=0)."""
        hidden = state_dict[f"weight_hh{suffix}"].shape[1]
        return cls(**weights_from_state_dict(state_dict, suffix, 4 * hidden))


@dataclass(frozen=True)
class LSTMCache:
    """What the forward saves for the backward. h and c hold T+1 steps: index 0 is h0/c0, index t+1 is step t.

    x (T, B, I); h, c (T+1, B, H); i, f, g, o, tanh_c (T, B, H).
    """

    params: LSTMParams
    x: np.ndarray
    h: np.ndarray
    c: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    tanh_c: np.ndarray


@dataclass(frozen=True)
class LSTMGrads:
    """dL/d of every input of `lstm_forward`: dx (T, B, I), dh0, dc0 (B, H), and one per parameter."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray
    db_hh: np.ndarray


def lstm_forward(
    x: np.ndarray, h0: np.ndarray, c0: np.ndarray, params: LSTMParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, LSTMCache]:
    r"""Run one LSTM layer over a sequence.

    For t = 0 … T-1, with h = h_{t-1}, c = c_{t-1} (h_{-1} = h0, c_{-1} = c0):

        a      = W_ih x_t + b_ih + W_hh h + b_hh        (B, 4H), split into a_i, a_f, a_g, a_o
        i      = σ(a_i)                                 input gate
        f      = σ(a_f)                                 forget gate
        g      = tanh(a_g)                              candidate cell
        o      = σ(a_o)                                 output gate
        c_t    = f ⊙ c + i ⊙ g
        h_t    = o ⊙ tanh(c_t)
        y_t    = h_t

    Args:
        x: (T, B, I). h0, c0: (B, H). params: LSTMParams.
    Returns:
        (y (T, B, H), h_T (B, H), c_T (B, H), cache for `lstm_backward`).
    """
    check_inputs("lstm_forward", x, {"h0": h0, "c0": c0}, params.w_ih, gate_count=4)
    T, B = x.shape[0], x.shape[1]
    H = params.hidden_size
    h = np.zeros((T + 1, B, H), dtype=x.dtype)
    c = np.zeros((T + 1, B, H), dtype=x.dtype)
    i, f, g, o, tanh_c = (np.zeros((T, B, H), dtype=x.dtype) for _ in range(5))
    h[0], c[0] = h0, c0
    for t in range(T):
        a = x[t] @ params.w_ih.T + params.b_ih + h[t] @ params.w_hh.T + params.b_hh  # (B, 4H)
        a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)  # 4 x (B, H)
        i[t] = sigmoid(a_i)
        f[t] = sigmoid(a_f)
        g[t] = np.tanh(a_g)
        o[t] = sigmoid(a_o)
        c[t + 1] = f[t] * c[t] + i[t] * g[t]
        tanh_c[t] = np.tanh(c[t + 1])
        h[t + 1] = o[t] * tanh_c[t]
    y = h[1:].copy()  # (T, B, H)
    cache = LSTMCache(params, x, h, c, i, f, g, o, tanh_c)
    return y, h[T].copy(), c[T].copy(), cache


def lstm_backward(dy: np.ndarray, dh_T: np.ndarray, dc_T: np.ndarray, cache: LSTMCache) -> LSTMGrads:
    r"""Backpropagation through time for `lstm_forward`.

    Walks t = T-1 … 0. Two gradients flow backwards in time: dh_next = dL/dh_t arriving from step t+1
    (through W_hh) and dc_next = dL/dc_t arriving from step t+1 (through f ⊙ c). Each step adds the
    gradient of its own output, dy_t, to dh_next.

    Args:
        dy: (T, B, H) dL/dy. dh_T, dc_T: (B, H) dL/dh_T and dL/dc_T (zeros if the loss ignores them).
        cache: from `lstm_forward`.
    Returns:
        LSTMGrads with dx (T, B, I), dh0 and dc0 (B, H), dw_ih, dw_hh, db_ih, db_hh shaped like the params.
    """
    p, x = cache.params, cache.x
    T = x.shape[0]
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(p.w_ih), np.zeros_like(p.w_hh)
    db_ih, db_hh = np.zeros_like(p.b_ih), np.zeros_like(p.b_hh)
    dh_next, dc_next = dh_T.copy(), dc_T.copy()
    for t in range(T - 1, -1, -1):
        i, f, g, o, tanh_c = cache.i[t], cache.f[t], cache.g[t], cache.o[t], cache.tanh_c[t]
        h_prev, c_prev = cache.h[t], cache.c[t]
        # y_t = h_t: h_t feeds the output and the next step
        dh = dy[t] + dh_next
        # h_t = o ⊙ tanh(c_t)
        do = dh * tanh_c
        dc = dc_next + dh * o * (1 - tanh_c**2)
        # c_t = f ⊙ c + i ⊙ g
        df = dc * c_prev
        dc_prev = dc * f
        di = dc * g
        dg = dc * i
        # i = σ(a_i), f = σ(a_f), g = tanh(a_g), o = σ(a_o); σ' = σ(1-σ), tanh' = 1 - tanh²
        da_i = di * i * (1 - i)
        da_f = df * f * (1 - f)
        da_g = dg * (1 - g**2)
        da_o = do * o * (1 - o)
        da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)  # (B, 4H)
        # a = W_ih x_t + b_ih + W_hh h + b_hh
        dw_ih += da.T @ x[t]
        dw_hh += da.T @ h_prev
        db_ih += da.sum(axis=0)
        db_hh += da.sum(axis=0)
        dx[t] = da @ p.w_ih
        dh_prev = da @ p.w_hh
        dh_next, dc_next = dh_prev, dc_prev
    # after step 0, what flowed "from the next step" is the gradient of the initial state
    return LSTMGrads(dx, dh_next, dc_next, dw_ih, dw_hh, db_ih, db_hh)
