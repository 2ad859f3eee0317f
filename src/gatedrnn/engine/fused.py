"""The fused C++ engine as autograd Functions: one Function runs one layer in one direction.

The forward and the hand-written BPTT backward are in ``csrc/scan_kernel.h``; the per-cell pointwise math
in ``csrc/cells.h`` follows the docstrings of `gatedrnn.cells` (the single statement of the equations).
`run_layer_fused` keeps the `ScanResult` contract of `gatedrnn.engine.scan.scan_reference` exactly.

Shapes: T steps, B batch, I input, H hidden, P size of h (proj_size or H), G gate count.

Saved for backward (only when a gradient is needed): the inputs, y (the output, which is every h),
the gate activations (T, B, G*H) written over the input projection in place (none for the RNN),
c (T, B, H) for the LSTM, and W_hn h + b_hn (T, B, H) for the GRU. Trace tensors are taken from the same
buffers; they carry no gradient (use GATEDRNN_BACKEND=reference to differentiate through a trace).
The backward is not itself differentiable: double backward (create_graph=True through a layer, e.g. a
gradient penalty) needs GATEDRNN_BACKEND=reference.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from gatedrnn.cells import GRUTrace, LayerWeights, LSTMTrace, RNNTrace
from gatedrnn.engine._build import load
from gatedrnn.engine.scan import ScanResult

calls: Counter = Counter()  # cell kind -> fused run_layer calls in this process (tests assert dispatch)


def _trace(cell: str, y: Tensor, gates: Tensor, c_hist: Optional[Tensor]) -> tuple:
    """The cell's *Trace tuple, each (T, B, ·) and contiguous, from the kernel's saved buffers."""
    if cell == "lstm":
        i, f, g, o = (part.contiguous() for part in gates.chunk(4, dim=2))  # 4 x (T, B, H)
        return LSTMTrace(i, f, g, o, c_hist.clone(), y.clone())
    if cell == "gru":
        r, z, n = (part.contiguous() for part in gates.chunk(3, dim=2))  # 3 x (T, B, H)
        return GRUTrace(r, z, n, y.clone())
    return RNNTrace(y.clone())


class FusedLayer(torch.autograd.Function):
    """(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) -> (y, h_n[, c_n][, *trace]) for one layer and direction."""

    @staticmethod
    def forward(ctx, cell: str, batch_sizes: list, reverse: bool, trace: bool,
                x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        ext = load()
        y, h_n, c_n, gates, c_hist, extra = ext.forward(
            cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, True
        )
        ctx.cell, ctx.batch_sizes, ctx.reverse, ctx.has_bias = cell, batch_sizes, reverse, b_ih is not None
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, y)
        ctx.buffers = (gates if cell in ("lstm", "gru") else None, c_hist, extra)
        outputs = (y, h_n) + ((c_n,) if cell == "lstm" else ())
        if trace:
            traced = tuple(_trace(cell, y, gates, c_hist))
            ctx.mark_non_differentiable(*traced)
            outputs = outputs + traced
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, *rest):
        x, h0, c0, w_ih, w_hh, w_hr, y = ctx.saved_tensors
        gates, c_hist, extra = ctx.buffers
        dc_n = rest[0] if ctx.cell == "lstm" else None
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = load().backward(
            ctx.cell, x, h0, c0, w_ih, w_hh, w_hr, ctx.has_bias, y, gates, c_hist, extra,
            dy, dh_n, dc_n, ctx.batch_sizes, ctx.reverse, ctx.needs_input_grad[4],
        )
        return (None, None, None, None, dx, dh0, dc0, dw_ih, dw_hh,
                db_ih if ctx.has_bias else None, db_hh if ctx.has_bias else None, dw_hr)


def _needs_grad(tensors: Sequence[Optional[Tensor]]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def run_layer_fused(
    cell: str,
    x: Tensor,
    state0: tuple[Tensor, ...],
    weights: LayerWeights,
    batch_sizes: Optional[Sequence[int]] = None,
    reverse: bool = False,
    trace: bool = False,
) -> ScanResult:
    """`scan_reference`'s contract on the fused kernels: x (T, B, I) -> ScanResult(y (T, B, P), state, trace)."""
    calls[cell] += 1
    sizes = [] if batch_sizes is None else [int(b) for b in batch_sizes]
    h0 = state0[0]
    c0 = state0[1] if cell == "lstm" else None
    inputs = (x, h0, c0, weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh, weights.w_hr)
    if not _needs_grad(inputs):
        # No autograd: keep nothing for backward (saved buffers only when a trace is asked for).
        y, h_n, c_n, gates, c_hist, _ = load().forward(cell, *inputs, sizes, reverse, trace)
        state = (h_n, c_n) if cell == "lstm" else (h_n,)
        return ScanResult(y, state, _trace(cell, y, gates, c_hist) if trace else None)
    outputs = FusedLayer.apply(cell, sizes, reverse, trace, *inputs)
    n_state = 2 if cell == "lstm" else 1
    y, state = outputs[0], tuple(outputs[1 : 1 + n_state])
    if not trace:
        return ScanResult(y, state, None)
    trace_type = {"lstm": LSTMTrace, "gru": GRUTrace}.get(cell, RNNTrace)
    return ScanResult(y, state, trace_type(*outputs[1 + n_state :]))
