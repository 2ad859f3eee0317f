"""The sLSTM time loop: `gatedrnn.cells.slstm.slstm_step` once per step, differentiated by autograd.

The layer's reference path (the fused engine's `SLSTMCell` runs CPU float32/float64). What makes it reasonably fast:
the input projection of every step is one GEMM, and the block-diagonal recurrence one batched matmul per
step (`blockdiag_recurrence`).

Shapes: T steps, B batch, I input features, H hidden size, K heads, D = H / K.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gatedrnn.cells.slstm import SLSTMState, SLSTMTrace, slstm_step


class SLSTMWeights(NamedTuple):
    """One layer and direction: w_ih (4H, I), r_blocks (K, 4D, D), b (4H,) or None."""

    w_ih: Tensor
    r_blocks: Tensor
    b: Optional[Tensor]


class SLSTMScanResult(NamedTuple):
    """y: (T, B, H), zero at padded steps; state: the final SLSTMState (each (B, H));
    trace: SLSTMTrace of (T, B, H) tensors, or None when not asked for."""

    y: Tensor
    state: SLSTMState
    trace: Optional[SLSTMTrace]


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """(b, H) -> (rows, H), zero rows appended."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))], dim=0)


def scan_slstm(
    x: Tensor,
    state0: SLSTMState,
    weights: SLSTMWeights,
    *,
    forget_gate: str,
    batch_sizes: Optional[Sequence[int]] = None,
    reverse: bool = False,
    trace: bool = False,
    detach_stabilizer: bool = False,
) -> SLSTMScanResult:
    """Run one sLSTM layer in one direction over a padded, length-sorted batch.

    Args:
        x: (T, B, I). state0: SLSTMState, each (B, H).
        batch_sizes: None for full sequences, else T non-increasing ints: at step t only rows
            [0, batch_sizes[t]) are active (PackedSequence's convention); inactive rows keep their state
            and output zeros. In reverse, a row starts from state0 at its own last step.
        reverse: run t = T-1 … 0.
        trace: also return every step's gates and states.
        detach_stabilizer: hold m constant in backward (see `slstm_step`).
    Returns:
        SLSTMScanResult(y (T, B, H), final state, trace or None).
    """
    T, B = x.shape[0], x.shape[1]
    x_proj = F.linear(x, weights.w_ih)  # (T, B, 4H): all steps in one GEMM
    state = state0
    outputs: list[Optional[Tensor]] = [None] * T
    per_step: list[Optional[tuple[Tensor, ...]]] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        active = B if batch_sizes is None else int(batch_sizes[t])
        rows = state if active == B else SLSTMState(*(s[:active] for s in state))
        new_rows, gates = slstm_step(x_proj[t, :active], rows, weights.r_blocks, weights.b,
                                     forget_gate=forget_gate, detach_stabilizer=detach_stabilizer)
        if active == B:
            state = new_rows
        else:  # rows past their length keep their state
            state = SLSTMState(*(torch.cat([new, old[active:]], dim=0) for new, old in zip(new_rows, state)))
        outputs[t] = _pad_rows(new_rows.h, B)
        if trace:
            h, c, n, m = new_rows
            per_step[t] = tuple(_pad_rows(v, B) for v in (*gates, m, n, c, h))
    y = torch.stack(outputs)  # (T, B, H)
    if not trace:
        return SLSTMScanResult(y, state, None)
    columns = [torch.stack(column) for column in zip(*per_step)]  # each (T, B, H)
    return SLSTMScanResult(y, state, SLSTMTrace(*columns))
