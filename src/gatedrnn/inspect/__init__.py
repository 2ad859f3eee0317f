"""Seeing inside: every step's gates and states (`trace`) and how far the gradient reaches back (`gradient_flow`).

Both return data (named tuples of tensors/arrays); `gatedrnn.viz` and `gatedrnn.report` only read it.
"""
from gatedrnn.inspect.gradient_flow import GradientFlow, gradient_flow
from gatedrnn.inspect.traces import LayerTraces, trace

__all__ = ["GradientFlow", "LayerTraces", "gradient_flow", "trace"]
