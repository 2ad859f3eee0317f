"""`gatedrnn bench`: gatedrnn against torch.nn and onnxruntime, timed side by side in one process.

cases (what is measured and the targets) -> runner (timing) -> suite (the run, the JSON) -> render (tables).
`onnx` exports torch.nn modules for onnxruntime; `memory` measures a training step's peak in a fresh process.
"""
from gatedrnn.bench.render import render_markdown, render_terminal
from gatedrnn.bench.suite import BenchConfig, quick_config, run_benchmark, write_results

__all__ = ["BenchConfig", "quick_config", "render_markdown", "render_terminal", "run_benchmark", "write_results"]
