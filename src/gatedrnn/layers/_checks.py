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

import torch
from torch import Tensor


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
