r"""One Elman RNN layer in NumPy (tanh or relu): forward and hand-derived backward (BPTT).

Shape symbols: T time steps, B batch, I input features, H hidden size. torch.nn.RNN's layout:
w_ih (H, I), w_hh (H, H), b_ih, b_hh (H,). The baseline the gated cells are contrasted with: its only
path back in time is dh_prev = (da ⊙ φ'(a)) W_hh, repeated T times, which vanishes or explodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from gatedrnn.reference._common import check_inputs, weights_from_state_dict


@dataclass(frozen=True)
class RNNParams:
    """w_ih (H, I), w_hh (H, H), b_ih (H,), b_hh (H,); nonlinearity "tanh" or "relu"."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    nonlinearity: str = "tanh"

    def __post_init__(self) -> None:
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity should be 'tanh' or 'relu', got {self.nonlinearity!r}")

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Any], suffix: str = "_l0", nonlinearity: str = "tanh"
    ) -> "RNNParams":
        """One layer of a torch.nn.RNN state_dict (tensors or arrays)."""
        hidden = state_dict[f"weight_hh{suffix}"].shape[1]
        return cls(**weights_from_state_dict(state_dict, suffix, hidden), nonlinearity=nonlinearity)


@dataclass(frozen=True)
class RNNCache:
    """x (T, B, I); h (T+1, B, H) with h[0] = h0."""

    params: RNNParams
    x: np.ndarray
    h: np.ndarray


@dataclass(frozen=True)
class RNNGrads:
    """dx (T, B, I), dh0 (B, H), and one gradient per parameter."""

    dx: np.ndarray
    dh0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray
    db_hh: np.ndarray


def rnn_forward(x: np.ndarray, h0: np.ndarray, params: RNNParams) -> tuple[np.ndarray, np.ndarray, RNNCache]:
    r"""Run one Elman RNN layer. For t = 0 … T-1, with h = h_{t-1} (h_{-1} = h0):

        a      = W_ih x_t + b_ih + W_hh h + b_hh        (B, H)
        h_t    = tanh(a)   or   relu(a)
        y_t    = h_t

    Args:
        x: (T, B, I). h0: (B, H). params: RNNParams.
    Returns:
        (y (T, B, H), h_T (B, H), cache for `rnn_backward`).
    """
    check_inputs("rnn_forward", x, {"h0": h0}, params.w_ih, gate_count=1)
    T, B = x.shape[0], x.shape[1]
    h = np.zeros((T + 1, B, params.w_hh.shape[1]), dtype=x.dtype)
    h[0] = h0
    for t in range(T):
        a = x[t] @ params.w_ih.T + params.b_ih + h[t] @ params.w_hh.T + params.b_hh  # (B, H)
        h[t + 1] = np.tanh(a) if params.nonlinearity == "tanh" else np.maximum(a, 0)
    return h[1:].copy(), h[T].copy(), RNNCache(params, x, h)


def rnn_backward(dy: np.ndarray, dh_T: np.ndarray, cache: RNNCache) -> RNNGrads:
    """Backpropagation through time for `rnn_forward`; dy (T, B, H), dh_T (B, H)."""
    p, x = cache.params, cache.x
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(p.w_ih), np.zeros_like(p.w_hh)
    db_ih, db_hh = np.zeros_like(p.b_ih), np.zeros_like(p.b_hh)
    dh_next = dh_T.copy()
    for t in range(x.shape[0] - 1, -1, -1):
        h_t, h_prev = cache.h[t + 1], cache.h[t]
        # y_t = h_t: h_t feeds the output and the next step
        dh = dy[t] + dh_next
        # h_t = tanh(a) (tanh' = 1 - h_t²)   or   relu(a) (relu' = 1 where h_t > 0)
        da = dh * (1 - h_t**2) if p.nonlinearity == "tanh" else dh * (h_t > 0)
        # a = W_ih x_t + b_ih + W_hh h + b_hh
        dw_ih += da.T @ x[t]
        dw_hh += da.T @ h_prev
        db_ih += da.sum(axis=0)
        db_hh += da.sum(axis=0)
        dx[t] = da @ p.w_ih
        dh_next = da @ p.w_hh
    # after step 0, what flowed "from the next step" is the gradient of the initial state
    return RNNGrads(dx, dh_next, dw_ih, dw_hh, db_ih, db_hh)
