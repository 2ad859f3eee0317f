"""Helpers shared by the tasks: stacking batches and checking prediction/target shapes."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor


def stack_pairs(items: Sequence[Any]) -> tuple[Tensor, Tensor]:
    """[(x (T, I), y), ...] -> (x (B, T, I), y (B, ...)): the collate of fixed-length tasks."""
    if len(items) == 0:
        raise ValueError("cannot collate an empty batch")
    xs, ys = zip(*items)
    return torch.stack(xs), torch.stack(ys)


def check_pair(task: str, prediction: Tensor, target: Tensor, prediction_shape: str, target_shape: str,
               same_shape: bool = False) -> None:
    if not isinstance(prediction, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"task {task!r}: prediction and target should be tensors, "
                        f"got {type(prediction).__name__} and {type(target).__name__}")
    if prediction.shape[0] != target.shape[0] or (same_shape and prediction.shape != target.shape):
        raise ValueError(f"task {task!r}: expected prediction {prediction_shape} and target {target_shape}, "
                         f"got {tuple(prediction.shape)} and {tuple(target.shape)}")
