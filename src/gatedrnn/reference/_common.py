"""Small helpers shared by the NumPy reference cells (no torch import here)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def sigmoid(a: np.ndarray) -> np.ndarray:
    """σ(a) = 1 / (1 + e^(-a)), written so that neither branch overflows."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def to_array(value: Any) -> np.ndarray:
    """A NumPy array from an array or a torch tensor (duck-typed, so this module never imports torch)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def weights_from_state_dict(state_dict: Mapping[str, Any], suffix: str, gate_rows: int) -> dict[str, np.ndarray]:
    """w_ih, w_hh, b_ih, b_hh of one layer and direction (e.g. suffix "_l0" or "_l1_reverse") from a
    torch.nn state_dict; missing biases (bias=False) become zeros, which computes the same function."""
    w_ih = to_array(state_dict[f"weight_ih{suffix}"])
    w_hh = to_array(state_dict[f"weight_hh{suffix}"])
    if w_ih.shape[0] != gate_rows:
        raise ValueError(f"weight_ih{suffix} should have {gate_rows} rows, got shape {w_ih.shape}")
    zeros = np.zeros(gate_rows, dtype=w_ih.dtype)
    b_ih = to_array(state_dict[f"bias_ih{suffix}"]) if f"bias_ih{suffix}" in state_dict else zeros
    b_hh = to_array(state_dict[f"bias_hh{suffix}"]) if f"bias_hh{suffix}" in state_dict else zeros.copy()
    return {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}


def check_inputs(name: str, x: np.ndarray, states: dict[str, np.ndarray], w_ih: np.ndarray, gate_count: int) -> None:
    """x (T, B, I) and every state (B, H) consistent with w_ih (G*H, I); a clear error otherwise."""
    hidden = w_ih.shape[0] // gate_count
    if x.ndim != 3 or x.shape[2] != w_ih.shape[1]:
        raise ValueError(f"{name}: x should have shape (T, B, {w_ih.shape[1]}), got {x.shape}")
    for state_name, state in states.items():
        if state.shape != (x.shape[1], hidden):
            raise ValueError(f"{name}: {state_name} should have shape ({x.shape[1]}, {hidden}), got {state.shape}")
