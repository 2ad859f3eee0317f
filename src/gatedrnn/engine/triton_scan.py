"""The GPU engine: `run_layer_triton` runs one layer in one direction on Triton kernels for each step's pointwise
math (`gatedrnn.engine.triton_cells`) and torch's GEMMs (cuBLAS on CUDA), in the time loop of
`gatedrnn.engine.triton_loop`, after haste's design:

    pre_x = W_ih x + b_ih (+ b_hh) for all steps, one GEMM that autograd differentiates      (T, B, G·H)
    the loop: per step W_hh (h ⊙ m), the cell kernel; a hand-written backward (`triton_loop.TritonScan`)

It keeps the `ScanResult` contract of `gatedrnn.engine.scan.scan_reference` (packed batch sizes, reverse, traces,
zoneout, recurrent and candidate dropout masks) for every cell in `KERNELS`; the tests check it against that
function in float64. This module prepares each cell's input projection (the LayerNorm cells normalise W_ih x; FGR
and the sLSTM take their kernel weights), turns a packed reverse direction into a forward one, and reads traces
from the loop's buffers. The backward is not itself differentiable: double backward raises, naming
GATEDRNN_BACKEND=reference.

Shapes: T steps, B batch, I input, H hidden, P size of h (proj_size or H), G gate count.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gatedrnn.cells import CELL_SPECS, LayerWeights
from gatedrnn.cells.layernorm import layer_norm
from gatedrnn.engine.fused import _trace, _TraceHasNoGradient
from gatedrnn.engine.noise import LayerNoise
from gatedrnn.engine.scan import ScanResult
from gatedrnn.engine.triton_loop import KERNELS, LoopConfig, TritonScan, fgr_gates

__all__ = ["DTYPES", "KERNELS", "run_layer_triton"]

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _reverse_within_lengths(batch_sizes: Sequence[int], batch: int, device) -> Tensor:
    """For a packed batch of `batch` rows (sorted, `batch_sizes` non-increasing): the step index (T, B) that
    reverses each row's sequence within its own length (t -> length − 1 − t; padded steps stay), an involution. A
    reverse direction becomes a forward one on the sequences so permuted."""
    sizes = torch.tensor([int(b) for b in batch_sizes])
    lengths = (torch.arange(batch)[None, :] < sizes[:, None]).sum(0)  # (B,)
    t = torch.arange(len(batch_sizes))[:, None]
    index = torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # (T, B)
    if device.type == "cuda":  # from pinned memory: the copy does not wait for the GPU's queue
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


class _PermuteSteps(torch.autograd.Function):
    """seq (T, B, ·) with seq[t, b] taken from seq[index[t, b], b], for an involution `index`: its backward is the
    same gather (no zero fill and scatter-add)."""

    @staticmethod
    def forward(ctx, seq: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        return seq.gather(0, index[:, :, None].expand(-1, -1, seq.shape[2]))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        return grad.gather(0, index[:, :, None].expand(-1, -1, grad.shape[2])), None


def _permute_steps(seq: Optional[Tensor], index: Optional[Tensor]) -> Optional[Tensor]:
    if seq is None or index is None or seq.numel() == 0:
        return seq
    return _PermuteSteps.apply(seq, index)


def run_layer_triton(
    cell: str,
    x: Tensor,
    state0: tuple[Tensor, ...],
    weights: LayerWeights,
    batch_sizes: Optional[Sequence[int]] = None,
    reverse: bool = False,
    trace: bool = False,
    noise: Optional[LayerNoise] = None,
) -> ScanResult:
    """`scan_reference`'s contract on the Triton kernels: x (T, B, I) -> ScanResult(y (T, B, P), state, trace)."""
    if x.is_cuda:  # Triton launches on the current device, which need not be x's
        with torch.cuda.device(x.device):
            return _run_layer(cell, x, state0, weights, batch_sizes, reverse, trace, noise)
    return _run_layer(cell, x, state0, weights, batch_sizes, reverse, trace, noise)


def _input_projection(family: str, x: Tensor, weights: LayerWeights):
    """(pre_x (T, B, G·H), the b_hh the loop adds per step (the GRU's) or None, the loop's aux parameters)."""
    w_ih, _, b_ih, b_hh, _ = weights[:5]
    if family == "layernorm_lstm":  # pre_x = LN(W_ih x; γ_ih) + b_ih + b_hh (the LN of W_hh h has no bias)
        gamma_ih, *aux = weights.extra
        pre_x = layer_norm(F.linear(x, w_ih), gamma_ih)
        return (pre_x if b_ih is None else pre_x + (b_ih + b_hh)), None, tuple(aux)
    if family == "layernorm_gru":  # pre_x = LN(W_ih x; γ_ih) + b_ih; b_hh joins γ_hh in the kernel (after LN)
        gamma_ih, gamma_hh = weights.extra
        pre_x = layer_norm(F.linear(x, w_ih), gamma_ih)
        return (pre_x if b_ih is None else pre_x + b_ih), None, (gamma_hh,) if b_hh is None else (gamma_hh, b_hh)
    if family == "gru" or b_hh is None:  # the GRU's b_hn sits inside r ⊙ (·): the loop adds b_hh per step
        return F.linear(x, w_ih, b_ih), b_hh, weights.extra
    # pre_x + pre_h is all the cell reads: b_hh joins b_ih in the one GEMM
    return F.linear(x, w_ih, b_ih + b_hh), None, weights.extra  # extra: the peepholes


def _run_layer(cell, x, state0, weights, batch_sizes, reverse, trace, noise) -> ScanResult:
    spec = CELL_SPECS[cell]
    family = KERNELS[cell][0]
    zoneout, mask, candidate = noise if noise is not None else (None, None, None)
    # a packed reverse direction: forward on each row's reversed sequence (`_reverse_within_lengths`)
    flip = (_reverse_within_lengths(batch_sizes, x.shape[1], x.device)
            if batch_sizes is not None and reverse else None)
    if flip is not None:
        x, zoneout, candidate = (_permute_steps(t, flip) for t in (x, zoneout, candidate))
        reverse = False
    config = LoopConfig(cell, tuple(int(b) for b in batch_sizes) if batch_sizes is not None else (), reverse)
    c0 = state0[1] if spec.has_cell_state else None
    if spec.kernel_weights is not None:  # autograd takes the kernel's dW_hh back to the cell's own parameters
        weights = spec.kernel_weights(weights)  # FGR: W_hh = [W_hh | R]; the sLSTM: its R dense, b_hh zeros
        c0 = torch.cat(state0[1:], dim=1)  # the state operand: FGR's [c | a] (B, 4H), the sLSTM's [c | n | m]
    pre_x, b_hh, aux = _input_projection(family, x, weights)
    # every step's buffers only for a backward or a trace; inference keeps two steps' (`LoopConfig.keep`)
    operands = (pre_x, state0[0], c0, weights.w_hh, b_hh, weights.w_hr, *aux)
    keep = trace or (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands))
    config = config._replace(keep=keep)
    y, h_n, c_n, gates, c_state = TritonScan.apply(config, pre_x, state0[0], c0, weights.w_hh, b_hh, weights.w_hr,
                                                   zoneout, mask, candidate, *aux)
    if c_n is None:
        state = (h_n,)
    else:  # FGR's [c | a] and the sLSTM's [c | n | m] split back into their states
        state = (h_n, *c_n.split(spec.state_sizes(weights.w_hh.shape[0] // spec.gate_count), dim=1))
    y_out = _permute_steps(y, flip)
    if not trace:
        return ScanResult(y_out, state, None)
    if family == "rnn":
        traced = spec.trace_type(y_out.clone())
    else:
        if family == "fgr":  # its states after h: [c | a] after each step
            c_state = torch.cat([c_state, fgr_gates(gates)], dim=2)
        gates, c_state = _permute_steps(gates, flip), _permute_steps(c_state, flip)
        traced = _trace(cell, y_out, gates, c_state if c_state is not None else gates.new_empty(0))
    if y.requires_grad:  # h (y's clone) carries y's gradient; the rest come from saved buffers and carry none
        traced = type(traced)(*(_TraceHasNoGradient.apply(y, t) if t.grad_fn is None else t for t in traced))
    return ScanResult(y_out, state, traced)
