"""The fused C++ engine behind the layers: `run_layer_fused` runs one layer in one direction on the
`gatedrnn::scan` operator (`gatedrnn.engine.ops`), which autograd, torch.compile, torch.export and torch.func see.

The forward and the hand-written BPTT backward are in ``csrc/scan_kernel.h``; the per-cell pointwise math
in ``csrc/cells.h`` follows the docstrings of `gatedrnn.cells` (the single statement of the equations).
`run_layer_fused` keeps the `ScanResult` contract of `gatedrnn.engine.scan.scan_reference` exactly.

Shapes: T steps, B batch, I input, H hidden, P size of h (proj_size or H), G gate count.

Saved for backward (only when a gradient is needed): the inputs, y (the output, which is every h),
the gate activations (T, B, G*H) written over the input projection in place, c (T, B, H) for the LSTM,
and W_hn h + b_hn (T, B, H) for the GRU. Trace tensors are taken from the same buffers; they carry no
gradient (use GATEDRNN_BACKEND=reference to differentiate through a trace). The backward is not itself
differentiable: double backward raises and names GATEDRNN_BACKEND=reference.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from gatedrnn.cells import CELL_SPECS, LayerWeights
from gatedrnn.engine.noise import LayerNoise
from gatedrnn.engine.ops import SCAN, direct_entry, scan_differentiable, scan_without_autograd
from gatedrnn.engine.scan import ScanResult


def _trace(cell: str, y: Tensor, gates: Tensor, c_hist: Tensor) -> tuple:
    """The cell's trace named tuple, each (T, B, ·) and contiguous, from the kernel's saved buffers:
    gates (T, B, G*H), c_hist (T, B, S*H) (the states after h side by side, S = `CellSpec.state_blocks`; empty
    without a cell state), y (T, B, P). A trace lists the states in reverse ((c, h); the sLSTM's (m, n, c, h))."""
    spec = CELL_SPECS[cell]
    blocks = dict(zip(spec.gate_names, gates.chunk(spec.gate_count, dim=2)))  # name -> (T, B, H)
    traced = [blocks[name].contiguous() for name in spec.traced_gates]
    hidden = gates.shape[2] // spec.gate_count
    states = ([s.contiguous() for s in reversed(c_hist.split(spec.state_sizes(hidden), dim=2))]
              if spec.has_cell_state else [])
    return spec.trace_type(*traced, *states, y.clone())


class _TraceHasNoGradient(torch.autograd.Function):
    """A trace tensor of the fused path under autograd: its values, and an error if a loss reaches it
    (the fused backward does not differentiate through its saved buffers: never a silently partial grad)."""

    @staticmethod
    def forward(ctx, anchor: Tensor, value: Tensor) -> Tensor:
        return value.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):
        raise RuntimeError(
            "a loss depends on a gate trace of gatedrnn's fused engine, which carries no gradient; "
            "set GATEDRNN_BACKEND=reference to differentiate through traces"
        )


def _needs_grad(tensors: Sequence[Optional[Tensor]]) -> bool:
    if not torch.is_grad_enabled():
        return False
    for t in tensors:  # a plain loop: cheaper than any() over a generator, once per layer and direction
        if t is not None and t.requires_grad:
            return True
    return False


def run_layer_fused(
    cell: str,
    x: Tensor,
    state0: tuple[Tensor, ...],
    weights: LayerWeights,
    batch_sizes: Optional[Sequence[int]] = None,
    reverse: bool = False,
    trace: bool = False,
    noise: Optional[LayerNoise] = None,
) -> ScanResult:
    """`scan_reference`'s contract on the fused kernels: x (T, B, I) -> ScanResult(y (T, B, P), state, trace)."""
    sizes = [] if batch_sizes is None else [int(b) for b in batch_sizes]
    spec = CELL_SPECS[cell]
    has_c = spec.has_cell_state
    if spec.kernel_weights is not None:  # the sLSTM: its per-head R as the dense W_hh, a zero b_hh; FGR: [W_hh | R]
        weights = spec.kernel_weights(weights)
    # the states after h as one (B, S*H) operand (the sLSTM's [c | n | m], FGR's [c | a]), split again below
    c0 = (state0[1] if len(state0) == 2 else torch.cat(state0[1:], dim=1)) if has_c else None
    # the cell's extra parameters as one flat operand; torch.cat's backward hands each its gradient
    aux = (weights.extra[0] if len(weights.extra) == 1 else torch.cat(weights.extra)) if weights.extra else None
    inputs = (x, state0[0], c0, *weights[:5])
    zoneout, mask, candidate = noise if noise is not None else (None, None, None)
    # The saved buffers (keep=True) are kept only when autograd needs them or a trace reads them.
    if _needs_grad(inputs + (aux,)):
        differentiable = SCAN if torch.compiler.is_compiling() else scan_differentiable  # see ScanFunction
        y, h_n, c_n, gates, c_hist, _ = differentiable(cell, *inputs, sizes, reverse, True, aux, zoneout, mask,
                                                       candidate)
    elif torch.compiler.is_compiling():
        y, h_n, c_n, gates, c_hist, _ = SCAN(cell, *inputs, sizes, reverse, trace, aux, zoneout, mask, candidate)
    else:  # nothing needs a gradient: the kernel without the operator's autograd kernel or (mostly) its boxing
        y, h_n, c_n, gates, c_hist, _ = scan_without_autograd(cell, *inputs, sizes, reverse, trace, aux, zoneout,
                                                              mask, candidate)
    if not has_c:
        state = (h_n,)
    elif spec.state_blocks == 1:
        state = (h_n, c_n)
    else:
        state = (h_n, *c_n.split(spec.state_sizes(weights.w_ih.shape[0] // spec.gate_count), dim=1))
    if not trace:
        return ScanResult(y, state, None)
    traced = _trace(cell, y, gates, c_hist)
    if y.requires_grad:
        traced = type(traced)(*(_TraceHasNoGradient.apply(y, t) if t.grad_fn is None else t for t in traced))
    return ScanResult(y, state, traced)


def run_stack_inference(cell: str, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor],
                        weights: list[Optional[Tensor]], num_layers: int, bidirectional: bool, out_size: int,
                        hidden_size: int) -> Optional[tuple[Tensor, Tensor, Optional[Tensor]]]:
    """A whole stack of a plain cell (no extra parameters, no kernel_weights) on padded x (T, B, I) where nothing
    needs a gradient, nothing is traced and no regulariser draws noise: every layer and direction in one call into
    the engine (`stack_direct`), the same kernel and results as `run_layer_fused` layer by layer. h0, c0: (L * D, B,
    ·) or None for zeros of (B, out_size) and (B, hidden_size) (c0 only for cells with a cell state); weights:
    LayerWeights' five per layer and direction, layer-major. Returns (y (T, B, D * P), h_n (L * D, B, P), c_n
    (L * D, B, H) or None), or None where the call must take the layer-by-layer path (a dispatch mode, a
    transform, the profiler, tensors the engine declines)."""
    args = (x, h0, c0, *weights)
    direct = direct_entry("stack_direct", args)
    if direct is None:
        return None
    return direct(cell, x, h0, c0, CELL_SPECS[cell].has_cell_state, weights, num_layers, bidirectional, out_size,
                  hidden_size)
