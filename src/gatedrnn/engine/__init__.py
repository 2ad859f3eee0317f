"""The engine runs one layer in one direction over time (`run_layer`), or, where nothing needs a gradient, a whole
stack of a plain cell in one call (`run_stack_inference`). It only executes: the math is in `cells`.

`run_layer` dispatches to the fused C++ engine (`gatedrnn.engine.fused`, built at first use) for CPU
tensors of dtype float32 or float64; to the GPU engine (`gatedrnn.engine.triton_scan`: Triton kernels for the
pointwise math, cuBLAS for the GEMMs) for CUDA tensors of the cells it has kernels for; and to the reference
scan (`gatedrnn.engine.scan`) otherwise: bfloat16 and float16 on the CPU run on the reference path (they work,
at Python-loop speed, computing in their own dtype), as do other devices and cells. GATEDRNN_BACKEND (read at
every call) =reference forces the reference path, =triton the Triton kernels (on CPU tensors under
TRITON_INTERPRET=1). If the extension cannot be built, one warning is emitted and the CPU runs the reference
path. `backend_info()` says which path runs and why. Double backward (create_graph=True through a layer) and
gradients through a trace need the reference path (the fused paths raise, saying so).
The fused path is a set of PyTorch operators (`gatedrnn.engine.ops`); under torch.compile/torch.export the
choice of path is made once, at trace time (call `torch._dynamo.reset()` after changing GATEDRNN_BACKEND).
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.autograd import forward_ad

from gatedrnn.cells import LayerWeights, cell_spec
from gatedrnn.engine import _build
from gatedrnn.engine.fused import run_layer_fused, run_stack_inference
from gatedrnn.engine.noise import LayerNoise
from gatedrnn.engine.scan import ScanResult, scan_reference
from gatedrnn.engine.step import step_layers

__all__ = ["LayerNoise", "ScanResult", "backend_info", "run_layer", "run_stack_inference", "runs_fused",
           "runs_triton", "scan_reference", "step_layers"]

FUSED_DTYPES = (torch.float32, torch.float64)
# Reports that upper layers add to backend_info() (the engine never imports them): name -> () -> dict.
# gatedrnn.layers.torch_floor adds "kernel_choice" (when a plain LSTM runs torch's kernel instead).
BACKEND_REPORTS: dict[str, Callable[[], dict]] = {}


def _triton_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why tensors of this device and dtype do not run on the GPU engine (Triton), or None when they do (for the
    cells it has kernels for: `runs_triton`)."""
    backend = _build.requested_backend()
    if backend == "reference":
        return "GATEDRNN_BACKEND=reference is set"
    if device.type == "cpu" and backend == "triton":
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            return ("GATEDRNN_BACKEND=triton on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
                    "before gatedrnn is imported")
    elif device.type != "cuda":
        return f"the Triton kernels run on CUDA tensors, these are on {device.type}"
    elif not torch.cuda.is_available():
        return "CUDA is not available here (torch.cuda.is_available() is False)"
    if torch.compiler.is_compiling():
        return "torch.compile and torch.export record the reference loop (the GPU engine is eager only)"
    if torch._C._are_functorch_transforms_active():
        return "a torch.func transform is active; it differentiates the reference loop"
    try:
        from gatedrnn.engine import triton_scan  # noqa: F401  (imports Triton)
    except ImportError as error:
        return f"Triton is not installed ({error}); torch's CUDA wheels ship it"
    if dtype not in triton_scan.DTYPES:
        return f"the Triton kernels support float32, float64, float16 and bfloat16, got {dtype}"
    return None


def forward_ad_active() -> bool:
    """Whether a forward-mode AD level is open (`torch.autograd.forward_ad.dual_level`). The fused kernels have no
    forward derivative, and a call below the operator's autograd kernel would drop a tangent without a word: such
    calls take the reference path, whose torch ops carry it."""
    return forward_ad._current_level >= 0


def _reference_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why tensors of this device and dtype do not run on the C++ engine, or None when they do."""
    backend = _build.requested_backend()
    if backend != "auto":
        return f"GATEDRNN_BACKEND={backend} is set"
    if forward_ad_active():
        return "a forward-mode AD level is open (the fused kernels have no forward derivative)"
    if device.type != "cpu":
        return f"the fused engine is CPU-only, tensors are on {device.type}"
    if dtype not in FUSED_DTYPES:
        return f"the fused engine supports float32 and float64, got {dtype}"
    if _build.load() is None:
        return f"the fused C++ engine could not be built ({_build.error()})"
    return None


def backend_info(*, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Which path runs for tensors of `device` and `dtype`, and why.

    Returns {"backend": "fused" | "triton" | "reference", "reason": str, "build_dir": str} ("plain_layers" too on
    CUDA: which layers run torch's cuDNN op), with the fused engine "gemm":
    {"setting": GATEDRNN_GEMM, "decisions": [...]} (each step-GEMM shape timed so far in this process: dtype, N, K,
    rows, transposed, blas_us, own_us, choice; see engine/csrc/README.md), plus one entry per report in
    BACKEND_REPORTS ("kernel_choice": which measured buckets of a plain LSTM run torch's kernel, and the rule).
    Building the extension, if not done yet, happens here.
    """
    device = torch.device(device)
    reason = _reference_reason(device, dtype)
    cache = str(_build.cache_dir())
    gpu_reason = None if reason is None else _triton_reason(device, dtype)
    if reason is None:
        info = {"backend": "fused", "reason": f"C++ engine built for CPU {dtype}", "build_dir": cache,
                "gemm": {"setting": os.environ.get("GATEDRNN_GEMM", "") or "auto",
                         "decisions": list(getattr(_build.load(), "gemm_choices", list)())}}
    elif gpu_reason is None:
        info = {"backend": "triton", "reason": f"Triton kernels for the pointwise math of LSTM, GRU, RNN, the "
                f"LayerNorm LSTM and GRU, Greff's LSTM variants and the sLSTM, torch's GEMMs, on {device.type} {dtype}",
                "build_dir": cache}
        if device.type == "cuda":
            info["plain_layers"] = ("LSTM, GRU and RNN layers without a trace, a variant or a noise regulariser run "
                                    "torch's own cuDNN op (torch._VF.lstm / gru / rnn_*), as torch.nn does")
    else:
        asked_gpu = device.type != "cpu" or _build.requested_backend() == "triton"
        info = {"backend": "reference", "reason": gpu_reason if asked_gpu else reason,
                "build_dir": cache}
    return {**info, **{name: report() for name, report in BACKEND_REPORTS.items()}}


def runs_fused(x: Tensor) -> bool:
    """Whether `run_layer` (and streaming steps) on tensors like `x` take the fused path."""
    if torch.compiler.is_compiling():
        return _fused_while_compiling(str(x.device), x.dtype)
    if x.is_cpu and x.dtype in FUSED_DTYPES and not forward_ad_active():  # the common case, no reason string
        return _build.requested_backend() == "auto" and _build.load() is not None
    return _reference_reason(x.device, x.dtype) is None


@torch.compiler.assume_constant_result
def _fused_while_compiling(device: str, dtype: torch.dtype) -> bool:
    # torch.compile/torch.export bake the choice into the graph: the build (file locks, a compiler) and the
    # environment are read once here, at trace time, not traced.
    return _reference_reason(torch.device(device), dtype) is None


def run_layer(
    cell: str,
    x: Tensor,
    state0: tuple[Tensor, ...],
    weights: LayerWeights,
    batch_sizes: Optional[Sequence[int]] = None,
    reverse: bool = False,
    trace: bool = False,
    noise: Optional[LayerNoise] = None,
    *,
    fused: Optional[bool] = None,
) -> ScanResult:
    """One layer, one direction: see `scan_reference` for the contract, which every backend keeps.
    The noise shapes are checked here, once for both paths (the reference scan would broadcast a wrong one).
    `fused`: `runs_fused(x)` when the caller has asked it already for tensors like x (a layer asks once per
    forward for all its layers); None asks here."""
    spec = cell_spec(cell)
    if noise is not None:
        if noise.zoneout is not None and spec.state_blocks > 1:
            raise ValueError(f"cell {cell!r} takes no zoneout: zoneout mixes h and c, and its state has "
                             f"{spec.state_blocks} blocks besides h {spec.state_names[1:]}; got a zoneout operand")
        _check_noise(cell, x, state0, weights, noise)
    # a cell without a kernel (CellSpec.fused) runs the reference scan
    if spec.fused and (runs_fused(x) if fused is None else fused):
        return run_layer_fused(cell, x, state0, weights, batch_sizes, reverse, trace, noise)
    if runs_triton(cell, x):
        from gatedrnn.engine import triton_scan

        return triton_scan.run_layer_triton(cell, x, state0, weights, batch_sizes, reverse, trace, noise)
    return scan_reference(cell, x, state0, weights, batch_sizes, reverse, trace, noise)


def runs_triton(cell: str, x: Tensor) -> bool:
    """Whether `run_layer` runs this cell on tensors like `x` on the GPU engine (its Triton kernels)."""
    if x.is_cpu and _build.requested_backend() != "triton":  # the common case: no Triton import
        return False
    if _triton_reason(x.device, x.dtype) is not None:
        return False
    from gatedrnn.engine import triton_scan

    return cell in triton_scan.KERNELS


def _check_noise(cell: str, x: Tensor, state0: tuple[Tensor, ...], weights: LayerWeights, noise: LayerNoise) -> None:
    """Each given part of `noise` has the shape `gatedrnn.engine.noise` documents, for x (T, B, I), h0 (B, P) and
    H = w_ih rows / G: zoneout (T, B, P [+ H]) (H columns for c where the cell has one), recurrent_mask (B, P),
    candidate_mask (T, B, H) (cells with a candidate only); else a ValueError naming what was expected and got."""
    spec = cell_spec(cell)
    steps, batch = x.shape[0], x.shape[1]
    out_size, hidden = state0[0].shape[-1], weights.w_ih.shape[0] // spec.gate_count
    zoneout, recurrent_mask, candidate_mask = noise
    width = out_size + (hidden if spec.has_cell_state else 0)
    expected = (("zoneout", zoneout, (steps, batch, width)), ("recurrent_mask", recurrent_mask, (batch, out_size)),
                ("candidate_mask", candidate_mask, (steps, batch, hidden)))
    for name, tensor, shape in expected:
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{cell}: noise.{name} should be a Tensor of shape {shape} or None, got "
                             f"{type(tensor).__name__}")
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{cell}: noise.{name} should have shape {shape}, got {tuple(tensor.shape)}")
    if candidate_mask is not None and spec.candidate_gate is None:
        raise ValueError(f"{cell}: the cell has no candidate to drop out (CellSpec.candidate_gate is None): expected "
                         f"noise.candidate_mask None, got a tensor of shape {tuple(candidate_mask.shape)}")
