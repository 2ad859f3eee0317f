"""The engine runs one layer in one direction over time. It only executes: the math is in `cells`.

`run_layer` dispatches to the fused C++ kernels when they are built and apply, else to the reference
scan (`gatedrnn.engine.scan`). Set GATEDRNN_BACKEND=reference to force the reference path.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from torch import Tensor

from gatedrnn.cells import LayerWeights
from gatedrnn.engine.scan import ScanResult, scan_reference

__all__ = ["ScanResult", "backend_info", "run_layer", "scan_reference"]


def _forced_reference() -> bool:
    return os.environ.get("GATEDRNN_BACKEND", "").lower() == "reference"


def backend_info() -> dict:
    """Which path runs and why: {"backend": "fused" | "reference", "reason": str}."""
    if _forced_reference():
        return {"backend": "reference", "reason": "GATEDRNN_BACKEND=reference is set"}
    return {"backend": "reference", "reason": "the fused engine is not part of this build"}


def run_layer(
    cell: str,
    x: Tensor,
    state0: tuple[Tensor, ...],
    weights: LayerWeights,
    batch_sizes: Optional[Sequence[int]] = None,
    reverse: bool = False,
    trace: bool = False,
) -> ScanResult:
    """One layer, one direction: see `scan_reference` for the contract, which every backend keeps."""
    return scan_reference(cell, x, state0, weights, batch_sizes, reverse, trace)
