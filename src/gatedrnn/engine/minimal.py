"""minGRU and minLSTM scans on the fused C++ engine (csrc/minimal_scan.h): the gate math, the recurrence
h_t = a_t ⊙ h_{t-1} + b_t and its BPTT in one pass over time each, forward and backward.

The equations are `gatedrnn.cells.minimal`'s; the readable torch form of the same scans is
`gatedrnn.cells.minimal_fused` (what the layers run where this cannot: traces, dispatch modes, the profiler, other
devices and dtypes; under torch.compile, torch.func and forward-mode AD their scan="auto" is the log-space scan),
and the tests check the two against each other and against the step loop. A backward that finds a profiler, a
dispatch mode or a torch.func transform active (one that came up after the forward) runs the torch form's BPTT.

Shape symbols: T time steps, B batch, H hidden size, G gate blocks (2 for minGRU, 3 for minLSTM).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gatedrnn.cells.linear_scan import hand_written_backward
from gatedrnn.cells.minimal_fused import minimal_bptt
from gatedrnn.engine import runs_fused
from gatedrnn.engine.ops import direct_entry

__all__ = ["minimal_scan"]

CELLS = ("mingru", "minlstm")


class _MinimalScan(torch.autograd.Function):
    """(x_proj (T, B, G*H), h0 (B, H)) -> h (T, B, H) on the engine's kernels."""

    @staticmethod
    def forward(ctx, cell: str, x_proj: Tensor, h0: Tensor, kernel) -> Tensor:
        h = kernel(cell, x_proj, h0)
        ctx.save_for_backward(x_proj, h0, h)
        ctx.cell = cell
        return h

    @staticmethod
    @hand_written_backward
    def backward(ctx, dh: Tensor):
        x_proj, h0, h = ctx.saved_tensors
        kernel = direct_entry("minimal_scan_backward", (x_proj, h0, h, dh))
        if kernel is None:
            # a profiler, dispatch mode or torch.func transform came up for the backward: torch's ops, which it sees
            return None, *minimal_bptt(ctx.cell, x_proj, h0, h, dh), None
        if dh.dim() == 3 and dh.shape[-1] > 1 and dh.stride(-1) not in (0, 1):
            dh = dh.contiguous()
        return None, *kernel(ctx.cell, x_proj, h0, h, dh), None


def minimal_scan(cell: str, x_proj: Tensor, h0: Tensor) -> Optional[Tensor]:
    """h (T, B, H) of `cell` ("mingru" or "minlstm") from x_proj (T, B, G*H) and h0 (B, H) on the C++ engine, or
    None where it does not serve the call (not CPU float32/float64 of one dtype, GATEDRNN_BACKEND set, no engine,
    or anything that must see torch ops: compiling, tracing, a torch.func transform, a forward-AD level, a dispatch
    mode, the profiler); the caller then runs `gatedrnn.cells.minimal`'s torch scan, which computes the same."""
    if cell not in CELLS:
        raise ValueError(f"cell should be one of {CELLS}, got {cell!r}")
    if x_proj.dtype != h0.dtype or not runs_fused(x_proj):
        return None
    kernel = direct_entry("minimal_scan_forward", (x_proj, h0))
    if kernel is None:
        return None
    x_proj, h0 = x_proj.contiguous(), h0.contiguous()
    if torch.is_grad_enabled() and (x_proj.requires_grad or h0.requires_grad):
        return _MinimalScan.apply(cell, x_proj, h0, kernel)
    return kernel(cell, x_proj, h0)
