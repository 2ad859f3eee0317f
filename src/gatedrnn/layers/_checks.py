"""Argument and input checks shared by the layer modules. Every message names what was expected and what came.

The exception types are torch.nn's. torch.nn raises different built-in types for one kind of mistake
depending on which internal op trips first (a wrong h_0 shape is a RuntimeError, a wrong input rank a
ValueError, an input of the wrong dtype a ValueError but a state of the wrong dtype a RuntimeError, a list
in place of a tensor an AttributeError), so each kind of mistake here has one class deriving from every
type torch.nn raises for it: `except RuntimeError` written against torch.nn catches ours, and so does
`except ValueError` / `except TypeError` written against earlier gatedrnn versions.
"""
from __future__ import annotations

import numbers
import warnings

import torch
from torch import Tensor

from gatedrnn.layers._weights import read_weight


class ShapeError(ValueError, RuntimeError):
    """A size, shape, rank or length that does not fit (torch.nn: RuntimeError or ValueError)."""


class DtypeError(TypeError, ValueError, RuntimeError):
    """A tensor of the wrong dtype (torch.nn: ValueError for the input, RuntimeError for a state)."""


class DeviceError(ValueError, RuntimeError):
    """A tensor on another device than the parameters (torch.nn: RuntimeError)."""


class ArgumentTypeError(TypeError, RuntimeError, AttributeError):
    """Something else than a tensor, or a state of the wrong structure (torch.nn: TypeError, RuntimeError or
    AttributeError, from whichever of its internal calls meets it first)."""


class PackingError(ValueError, RuntimeError, IndexError, TypeError):
    """A malformed PackedSequence (torch.nn: RuntimeError, IndexError or TypeError, or a wrong result)."""


def check_size(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ShapeError(f"{name} should be >= {minimum}, got {value}")
    return int(value)


def check_dropout(dropout, name: str = "dropout") -> float:
    """torch.nn's check of `dropout` (a number in [0, 1]); gatedrnn's own rates (zoneout, recurrent_dropout,
    weight_drop) must stay below 1: a unit always dropped or always held is a mistake, and 1 / (1 − p) diverges."""
    upper_ok = (lambda p: p <= 1) if name == "dropout" else (lambda p: p < 1)
    if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout
            or not upper_ok(dropout)):
        interval = "[0, 1]" if name == "dropout" else "[0, 1)"
        raise ValueError(f"{name} should be a number in range {interval}, got {dropout!r}")
    return float(dropout)


def check_floating(name: str, tensor: Tensor, expected_dtype: torch.dtype, expected_device: torch.device,
                   *, any_dtype: bool = False) -> None:
    """A floating-point tensor of the parameters' dtype (any floating dtype with `any_dtype`, which autocast
    casts), on their device."""
    if not isinstance(tensor, Tensor):
        raise ArgumentTypeError(f"{name} should be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise DtypeError(
            f"{name} should be a floating-point tensor of dtype {expected_dtype} (the parameters' dtype), "
            f"got {tensor.dtype}"
        )
    if tensor.dtype != expected_dtype and not any_dtype:
        raise DtypeError(
            f"{name} dtype ({tensor.dtype}) does not match the parameters' dtype ({expected_dtype}); "
            f"convert with .to({expected_dtype}) or the module with .to({tensor.dtype})"
        )
    if tensor.device != expected_device:
        raise DeviceError(f"{name} is on {tensor.device}, expected the parameters' device {expected_device}")


def check_shape(name: str, tensor: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ShapeError(f"{name} should have shape {tuple(expected)}, got {tuple(tensor.shape)}")


def check_sequence_input(layer, input: Tensor, *, any_dtype: bool = False) -> bool:
    """A recurrent layer's tensor input: (L, N, H_in), (N, L, H_in) with `layer.batch_first`, or unbatched
    (L, H_in), in the dtype and on the device of `layer.weight_ih_l0`, with at least one step. Returns whether
    it is batched; raises ShapeError / DtypeError naming what was expected and what came."""
    weight = read_weight(layer, "weight_ih_l0")
    check_floating("input", input, weight.dtype, weight.device, any_dtype=any_dtype)
    if input.dim() not in (2, 3):
        raise ShapeError(
            f"input should be 3-D (batched) or 2-D (unbatched), got a {input.dim()}-D tensor "
            f"of shape {tuple(input.shape)}"
        )
    if input.shape[-1] != layer.input_size:
        raise ShapeError(
            f"input.size(-1) must be equal to input_size: expected {layer.input_size}, got {input.shape[-1]}"
        )
    steps = input.shape[1 if layer.batch_first and input.dim() == 3 else 0]
    if steps == 0:
        raise ShapeError(f"input should have at least one time step, got shape {tuple(input.shape)}")
    return input.dim() == 3


def check_packed_data(layer, data: Tensor, *, any_dtype: bool = False) -> None:
    """A PackedSequence's data for a recurrent layer: (sum of lengths, H_in) in the parameters' dtype and device."""
    weight = layer.weight_ih_l0
    check_floating("input", data, weight.dtype, weight.device, any_dtype=any_dtype)
    if data.dim() != 2 or data.shape[-1] != layer.input_size:
        raise ShapeError(
            f"packed input data should have shape (sum of lengths, {layer.input_size}), got {tuple(data.shape)}"
        )


def warn_dropout_without_stacking(dropout: float, num_layers: int) -> None:
    """torch.nn's warning (and like it, no error): dropout acts between stacked layers only."""
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
            f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}"
        )


# The layers' regulariser options (gatedrnn.engine.noise states them); a layer without one reads as 0.
REGULARISERS = ("zoneout", "recurrent_dropout", "weight_drop", "candidate_dropout")


def active_regularisers(layer) -> list[str]:
    """The names of the regularisers `layer` has switched on."""
    return [name for name in REGULARISERS if getattr(layer, name, 0.0) not in (0.0, (0.0, 0.0))]


def refuse_bidirectional_step(layer) -> None:
    """step() runs forward in time: a bidirectional layer's reverse direction needs the whole sequence."""
    if layer.bidirectional:
        raise ValueError(
            "step() runs forward in time one step at a time, so it cannot run a bidirectional layer "
            "(its reverse direction needs the whole sequence); call the module on the full sequence instead"
        )


def check_step_input(layer, x: Tensor) -> bool:
    """One time step's input for `layer.step`: (N, H_in) or unbatched (H_in,), in the parameters' dtype and
    device. Returns whether it is batched."""
    weight = layer.weight_ih_l0
    check_floating("x", x, weight.dtype, weight.device)
    if x.dim() not in (1, 2):
        raise ShapeError(
            f"step() takes one time step: x should be 2-D (batch, {layer.input_size}) or 1-D "
            f"({layer.input_size},), got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    if x.shape[-1] != layer.input_size:
        raise ShapeError(f"x.size(-1) must be equal to input_size: expected {layer.input_size}, got {x.shape[-1]}")
    return x.dim() == 2
