"""Argument and input checks shared by the layer modules. Every message names what was expected and what came."""
from __future__ import annotations

import numbers

import torch
from torch import Tensor


def check_size(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} should be >= {minimum}, got {value}")
    return int(value)


def check_dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout should be a number in range [0, 1], got {dropout!r}")
    return float(dropout)


def check_floating(name: str, tensor: Tensor, expected_dtype: torch.dtype, expected_device: torch.device) -> None:
    """A floating-point tensor of the parameters' dtype, on their device."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} should be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name} should be a floating-point tensor of dtype {expected_dtype} (the parameters' dtype), "
            f"got {tensor.dtype}"
        )
    if tensor.dtype != expected_dtype:
        raise TypeError(
            f"{name} dtype ({tensor.dtype}) does not match the parameters' dtype ({expected_dtype}); "
            f"convert with .to({expected_dtype}) or the module with .to({tensor.dtype})"
        )
    if tensor.device != expected_device:
        raise ValueError(f"{name} is on {tensor.device}, expected the parameters' device {expected_device}")


def check_shape(name: str, tensor: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} should have shape {tuple(expected)}, got {tuple(tensor.shape)}")
