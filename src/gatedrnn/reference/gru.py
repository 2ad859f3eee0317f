r"""One GRU layer in NumPy: the forward pass and its hand-derived backward pass (BPTT).

Shape symbols: T time steps, B batch, I input features, H hidden size.
Weights use torch.nn.GRU's layout and gate order (r, z, n stacked by rows) and its form of the
candidate, where the reset gate multiplies (W_hn h + b_hn): ``GRUParams.from_state_dict`` of a
torch.nn.GRU computes exactly what torch computes.

Read `gru_forward` and `gru_backward` side by side: every line of the backward is the chain rule
applied to one line of the forward, named d<var> for dL/d<var>.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from gatedrnn.reference._common import check_inputs, sigmoid, weights_from_state_dict


@dataclass(frozen=True)
class GRUParams:
    """w_ih (3H, I), w_hh (3H, H), b_ih (3H,), b_hh (3H,); row blocks in the order r, z, n."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray

    @property
    def hidden_size(self) -> int:
        return self.w_hh.shape[1]

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], suffix: str = "_l0") -> "GRUParams":
        """One layer of a torch.nn.GRU state_dict (tensors or arrays)."""
        hidden = state_dict[f"weight_hh{suffix}"].shape[1]
        return cls(**weights_from_state_dict(state_dict, suffix, 3 * hidden))


@dataclass(frozen=True)
class GRUCache:
    """What the forward saves for the backward. h holds T+1 steps: index 0 is h0, index t+1 is step t.

    x (T, B, I); h (T+1, B, H); r, z, n, h_n (T, B, H), where h_n = W_hn h + b_hn (what r multiplies).
    """

    params: GRUParams
    x: np.ndarray
    h: np.ndarray
    r: np.ndarray
    z: np.ndarray
    n: np.ndarray
    h_n: np.ndarray


@dataclass(frozen=True)
class GRUGrads:
    """dL/d of every input of `gru_forward`: dx (T, B, I), dh0 (B, H), and one per parameter."""

    dx: np.ndarray
    dh0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray
    db_hh: np.ndarray


def gru_forward(x: np.ndarray, h0: np.ndarray, params: GRUParams) -> tuple[np.ndarray, np.ndarray, GRUCache]:
    r"""Run one GRU layer over a sequence.

    For t = 0 … T-1, with h = h_{t-1} (h_{-1} = h0):

        x_r, x_z, x_n = W_ih x_t + b_ih                 (B, 3H), one (B, H) block per gate
        h_r, h_z, h_n = W_hh h + b_hh                   (B, 3H)
        r      = σ(x_r + h_r)                           reset gate
        z      = σ(x_z + h_z)                           update gate
        n      = tanh(x_n + r ⊙ h_n)                    candidate
        h_t    = (1 − z) ⊙ n + z ⊙ h
        y_t    = h_t

    Args:
        x: (T, B, I). h0: (B, H). params: GRUParams.
    Returns:
        (y (T, B, H), h_T (B, H), cache for `gru_backward`).
    """
    check_inputs("gru_forward", x, {"h0": h0}, params.w_ih, gate_count=3)
    T, B = x.shape[0], x.shape[1]
    H = params.hidden_size
    h = np.zeros((T + 1, B, H), dtype=x.dtype)
    r, z, n, h_n = (np.zeros((T, B, H), dtype=x.dtype) for _ in range(4))
    h[0] = h0
    for t in range(T):
        x_r, x_z, x_n = np.split(x[t] @ params.w_ih.T + params.b_ih, 3, axis=1)  # 3 x (B, H)
        h_r, h_z, h_n[t] = np.split(h[t] @ params.w_hh.T + params.b_hh, 3, axis=1)  # 3 x (B, H)
        r[t] = sigmoid(x_r + h_r)
        z[t] = sigmoid(x_z + h_z)
        n[t] = np.tanh(x_n + r[t] * h_n[t])
        h[t + 1] = (1 - z[t]) * n[t] + z[t] * h[t]
    y = h[1:].copy()  # (T, B, H)
    return y, h[T].copy(), GRUCache(params, x, h, r, z, n, h_n)


def gru_backward(dy: np.ndarray, dh_T: np.ndarray, cache: GRUCache) -> GRUGrads:
    r"""Backpropagation through time for `gru_forward`.

    Walks t = T-1 … 0. dh_next = dL/dh_t arriving from step t+1 (through z ⊙ h and through W_hh);
    each step adds the gradient of its own output, dy_t.

    Args:
        dy: (T, B, H) dL/dy. dh_T: (B, H) dL/dh_T (zeros if the loss ignores it). cache: from `gru_forward`.
    Returns:
        GRUGrads with dx (T, B, I), dh0 (B, H), dw_ih, dw_hh, db_ih, db_hh shaped like the params.
    """
    p, x = cache.params, cache.x
    T = x.shape[0]
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(p.w_ih), np.zeros_like(p.w_hh)
    db_ih, db_hh = np.zeros_like(p.b_ih), np.zeros_like(p.b_hh)
    dh_next = dh_T.copy()
    for t in range(T - 1, -1, -1):
        r, z, n, h_n, h_prev = cache.r[t], cache.z[t], cache.n[t], cache.h_n[t], cache.h[t]
        # y_t = h_t: h_t feeds the output and the next step
        dh = dy[t] + dh_next
        # h_t = (1 − z) ⊙ n + z ⊙ h
        dn = dh * (1 - z)
        dz = dh * (h_prev - n)
        dh_prev = dh * z
        # n = tanh(x_n + r ⊙ h_n); tanh' = 1 - tanh²
        da_n = dn * (1 - n**2)  # gradient of the pre-activation x_n + r ⊙ h_n
        dx_n = da_n
        dr = da_n * h_n
        dh_n = da_n * r
        # z = σ(x_z + h_z), r = σ(x_r + h_r); σ' = σ(1-σ). The sum passes its gradient to both terms.
        dx_z = dh_z = dz * z * (1 - z)
        dx_r = dh_r = dr * r * (1 - r)
        # x_r, x_z, x_n = W_ih x_t + b_ih
        dx_proj = np.concatenate([dx_r, dx_z, dx_n], axis=1)  # (B, 3H)
        dw_ih += dx_proj.T @ x[t]
        db_ih += dx_proj.sum(axis=0)
        dx[t] = dx_proj @ p.w_ih
        # h_r, h_z, h_n = W_hh h + b_hh
        dh_proj = np.concatenate([dh_r, dh_z, dh_n], axis=1)  # (B, 3H)
        dw_hh += dh_proj.T @ h_prev
        db_hh += dh_proj.sum(axis=0)
        dh_prev = dh_prev + dh_proj @ p.w_hh  # h reaches h_t twice: through z ⊙ h and through W_hh h
        dh_next = dh_prev
    # after step 0, what flowed "from the next step" is the gradient of the initial state
    return GRUGrads(dx, dh_next, dw_ih, dw_hh, db_ih, db_hh)
