"""The reference time loop: the cell step functions of `gatedrnn.cells`, called once per step.

This is the readable path the fused kernels are checked against, and the fallback when the
extension cannot be built. Autograd differentiates it; nothing here is hand-derived.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gatedrnn.cells import (
    GRUTrace, LayerWeights, LSTMState, LSTMTrace, RNNTrace, gru_step, lstm_step, rnn_step,
)

StepFn = Callable[[Tensor, tuple[Tensor, ...]], tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]


class ScanResult(NamedTuple):
    """y: (T, B, P) outputs, zero at padded steps; state: final state tuple ((B, P),) or ((B, P), (B, H));
    trace: the cell's *Trace named tuple of (T, B, ·) tensors, or None when not asked for."""

    y: Tensor
    state: tuple[Tensor, ...]
    trace: Optional[tuple]


def make_step(cell: str, weights: LayerWeights) -> StepFn:
    """Adapt a cell's step function to the uniform form ``(x_proj, state_tuple) -> (state_tuple, gates)``."""
    w_hh, b_hh, w_hr = weights.w_hh, weights.b_hh, weights.w_hr
    if cell == "lstm":
        def step(x_proj, state):
            new_state, gates = lstm_step(x_proj, LSTMState(*state), w_hh, b_hh, w_hr)
            return tuple(new_state), tuple(gates)
    elif cell == "gru":
        def step(x_proj, state):
            h_next, gates = gru_step(x_proj, state[0], w_hh, b_hh)
            return (h_next,), tuple(gates)
    elif cell in ("rnn_tanh", "rnn_relu"):
        nonlinearity = cell[4:]

        def step(x_proj, state):
            h_next, _ = rnn_step(x_proj, state[0], w_hh, b_hh, nonlinearity)
            return (h_next,), ()  # the RNN's trace is h alone
    else:
        raise ValueError(f"unknown cell kind {cell!r}; expected one of 'lstm', 'gru', 'rnn_tanh', 'rnn_relu'")
    return step


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """(b, F) -> (rows, F), zero rows appended."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))], dim=0)


def scan_reference(
    cell: str,
    x: Tensor,
    state0: tuple[Tensor, ...],
    weights: LayerWeights,
    batch_sizes: Optional[Sequence[int]] = None,
    reverse: bool = False,
    trace: bool = False,
) -> ScanResult:
    """Run one layer in one direction over a padded, length-sorted batch.

    Args:
        cell: "lstm", "gru", "rnn_tanh" or "rnn_relu".
        x: (T, B, I). state0: (h0 (B, P),) or (h0 (B, P), c0 (B, H)).
        batch_sizes: None for full sequences, else T non-increasing ints: at step t only rows
            [0, batch_sizes[t]) are active (PackedSequence's convention); inactive rows keep their state
            and output zeros. In reverse, a row starts from state0 at its own last step.
        reverse: run t = T-1 … 0.
        trace: also return every step's gates and states.
    Returns:
        ScanResult(y (T, B, P), final state, trace or None).
    """
    T, B = x.shape[0], x.shape[1]
    step = make_step(cell, weights)
    x_proj = F.linear(x, weights.w_ih, weights.b_ih)  # (T, B, G*H): all steps in one GEMM
    state = state0
    outputs: list[Optional[Tensor]] = [None] * T
    per_step: list[Optional[tuple[Tensor, ...]]] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        active = B if batch_sizes is None else int(batch_sizes[t])
        if active == B:
            state, gates = step(x_proj[t], state)
            outputs[t] = state[0]
        else:
            new_rows, gates = step(x_proj[t, :active], tuple(s[:active] for s in state))
            state = tuple(torch.cat([n, s[active:]], dim=0) for n, s in zip(new_rows, state))
            outputs[t] = _pad_rows(new_rows[0], B)
            gates = tuple(_pad_rows(g, B) for g in gates)
        if trace:
            per_step[t] = tuple(gates) + tuple(
                _pad_rows(s[:active], B) for s in reversed(state)
            )  # gates, then (c, h) or (h,)
    y = torch.stack(outputs)  # (T, B, P)
    if not trace:
        return ScanResult(y, state, None)
    columns = [torch.stack(col) for col in zip(*per_step)]  # each (T, B, ·)
    trace_type = {"lstm": LSTMTrace, "gru": GRUTrace}.get(cell, RNNTrace)
    return ScanResult(y, state, trace_type(*columns))
