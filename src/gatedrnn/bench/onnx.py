"""torch.nn module -> ONNX (exported in the benchmark itself) -> an onnxruntime session, for inference peers.

The session runs on the CPU provider with a fixed number of intra-op threads and sequential execution,
so that it uses the same cores as torch and gatedrnn and nothing more.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from typing import Callable

import numpy as np
from torch import Tensor, nn

from gatedrnn.bench.cases import Unavailable


def export_onnx(module: nn.Module, example: Tensor) -> bytes:
    """The ONNX bytes of `module(example)`; input named "x" of shape (T, B, I).

    The TorchScript exporter maps nn.LSTM/GRU/RNN to ONNX's LSTM/GRU/RNN operators (onnxruntime's native
    kernels) in ~0.1 s; the dynamo exporter gives the same operators in seconds, so it is the fallback.
    """
    import torch

    module = module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            buffer = io.BytesIO()
            torch.onnx.export(module, (example,), buffer, input_names=["x"], dynamo=False, opset_version=17)
            return buffer.getvalue()
    except Exception as legacy_error:  # the legacy exporter is deprecated; newer torch may drop it
        try:
            with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
                warnings.simplefilter("ignore")
                path = os.path.join(folder, "model.onnx")
                torch.onnx.export(module, (example,), path, input_names=["x"], dynamo=True, verbose=False)
                with open(path, "rb") as file:
                    return file.read()
        except Exception as dynamo_error:
            raise Unavailable(
                f"ONNX export failed: legacy exporter {type(legacy_error).__name__}: {legacy_error}; "
                f"dynamo exporter {type(dynamo_error).__name__}: {dynamo_error}"
            ) from dynamo_error


def make_session(model: bytes, *, threads: int):
    """An onnxruntime CPU session: `threads` intra-op threads, one inter-op thread, sequential execution,
    no spinning of idle workers."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise Unavailable("onnxruntime is not installed (pip install -e '.[bench]')") from error
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # Idle onnxruntime workers otherwise spin on a core after each run: interleaved with torch (whose
    # OpenMP threads need both cores) that made the next nn.LSTM call ~1000x slower here (0.1 ms -> 190 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_inference(module: nn.Module, x: Tensor, *, threads: int) -> tuple[Callable[[], None], np.ndarray]:
    """(one inference run, its first output (T, B, D*P)) for `module` exported to ONNX at x's shape."""
    if not isinstance(x, Tensor):
        raise Unavailable("onnxruntime is only benchmarked on padded tensors")
    session = make_session(export_onnx(module, x), threads=threads)
    feed = {"x": np.ascontiguousarray(x.detach().numpy())}  # (T, B, I)
    output = session.run(None, feed)[0]

    def run() -> None:
        session.run(None, feed)

    return run, output
