"""The reference time loop: the cell step functions of `gatedrnn.cells`, called once per step.

This is the readable path the fused kernels are checked against, and the fallback when the
extension cannot be built. Autograd differentiates it; nothing here is hand-derived.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gatedrnn.cells import LayerWeights, StepFn, cell_spec
from gatedrnn.engine.noise import LayerNoise

class ScanResult(NamedTuple):
    """y: (T, B, P) outputs, zero at padded steps; state: final state tuple ((B, P),) or ((B, P), (B, H));
    trace: the cell's *Trace named tuple of (T, B, ·) tensors, or None when not asked for."""

    y: Tensor
    state: tuple[Tensor, ...]
    trace: Optional[tuple]


def make_step(cell: str, weights: LayerWeights, recurrent_mask: Optional[Tensor] = None) -> StepFn:
    """The cell's step function in the uniform form ``(x_proj, state_tuple) -> (state_tuple, traced gates)``;
    with a recurrent_mask (B, P), W_hh reads h ⊙ recurrent_mask."""
    return cell_spec(cell).make_step(weights, recurrent_mask)


def zone_out(old: tuple[Tensor, ...], new: tuple[Tensor, ...], weights: Tensor) -> tuple[Tensor, ...]:
    """Zoneout: each state part d ⊙ old + (1 − d) ⊙ new, d read from `weights` (B, P [+ H]) (h's columns,
    then c's; see `gatedrnn.engine.noise`)."""
    mixed, start = [], 0
    for old_part, new_part in zip(old, new):
        d = weights[:, start : start + new_part.shape[1]]
        start += new_part.shape[1]
        mixed.append(d * old_part + (1 - d) * new_part)
    return tuple(mixed)


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
    noise: Optional[LayerNoise] = None,
) -> ScanResult:
    """Run one layer in one direction over a padded, length-sorted batch.

    Args:
        cell: a key of `gatedrnn.cells.CELL_SPECS` ("lstm", "gru", "rnn_tanh", "rnn_relu").
        x: (T, B, I). state0: (h0 (B, P),) or (h0 (B, P), c0 (B, H)).
        batch_sizes: None for full sequences, else T non-increasing ints: at step t only rows
            [0, batch_sizes[t]) are active (PackedSequence's convention); inactive rows keep their state
            and output zeros. In reverse, a row starts from state0 at its own last step.
        reverse: run t = T-1 … 0.
        trace: also return every step's gates and states.
        noise: zoneout weights and a recurrent dropout mask (`gatedrnn.engine.noise`), or None.
    Returns:
        ScanResult(y (T, B, P), final state, trace or None).
    """
    T, B = x.shape[0], x.shape[1]
    zoneout, mask, candidate = noise if noise is not None else (None, None, None)
    step = make_step(cell, weights, mask)
    x_proj = F.linear(x, weights.w_ih, weights.b_ih)  # (T, B, G*H): all steps in one GEMM
    state = state0
    outputs: list[Optional[Tensor]] = [None] * T
    per_step: list[Optional[tuple[Tensor, ...]]] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        active = B if batch_sizes is None else int(batch_sizes[t])
        if active == B:
            new_state, gates = step(x_proj[t], state, None if candidate is None else candidate[t])
            state = new_state if zoneout is None else zone_out(state, new_state, zoneout[t])
            outputs[t] = state[0]
        else:
            rows_step = step if mask is None else make_step(cell, weights, mask[:active])
            old_rows = tuple(s[:active] for s in state)
            new_rows, gates = rows_step(x_proj[t, :active], old_rows,
                                        None if candidate is None else candidate[t, :active])
            if zoneout is not None:
                new_rows = zone_out(old_rows, new_rows, zoneout[t, :active])
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
    return ScanResult(y, state, cell_spec(cell).trace_type(*columns))
