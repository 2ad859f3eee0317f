"""A model with gatedrnn layers -> ONNX, checked in onnxruntime against PyTorch.

While `torch.onnx.export` runs, the layers run torch's own RNN op (`gatedrnn.layers.aten`), so the ONNX
graph holds ONNX's LSTM / GRU / RNN operators. The TorchScript exporter (`dynamo=False`) is used: it keeps
both the batch and the sequence axes dynamic, where torch's dynamo exporter fixes the sequence length
inside aten.lstm (torch 2.13).

Shapes: the model input x is (B, T, I) float (B, T) int64 ids for token models; the output is whatever the
model returns, its first axis the batch and, for per-step models, its second axis the time.
"""
from __future__ import annotations

import io
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

INPUT_NAME, OUTPUT_NAME = "x", "y"


def to_onnx(model: nn.Module, example: Tensor, *, opset_version: int = 17) -> bytes:
    """The ONNX bytes of `model(example)` (eval mode), input "x" with dynamic batch and time axes, output "y"
    with a dynamic batch axis (and time axis when it has one per step)."""
    model = model.eval()
    with torch.no_grad():
        output = model(example)
    output_axes = {0: "batch", 1: "time"} if output.dim() == 3 else {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset_version,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch", 1: "time"}, OUTPUT_NAME: output_axes})
    return buffer.getvalue()


def onnx_max_abs_diff(onnx_model: bytes, model: nn.Module, inputs: Sequence[Tensor]) -> float:
    """The largest |onnxruntime - PyTorch| over the outputs of every input in `inputs`."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        got = session.run(None, {INPUT_NAME: x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        if got.shape != expected.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got - expected).max(initial=0.0)))
    return worst


def onnx_op_types(onnx_model: bytes) -> list[str]:
    """The operator types of the graph's nodes, in order (e.g. to find its LSTM/GRU/RNN nodes)."""
    import onnx

    return [node.op_type for node in onnx.load_from_string(onnx_model).graph.node]
