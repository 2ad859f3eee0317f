"""Helpers shared by the tasks: stacking batches and checking prediction/target shapes."""
from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from gatedrnn.tasks._options import resolve_options, split_seed
from gatedrnn.tasks.base import Task


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



def check_logits(task: str, prediction: Tensor, target: Tensor, num_classes: int) -> None:
    """Class logits (B, C) against class indices (B,)."""
    check_pair(task, prediction, target, f"(B, {num_classes})", "(B,)")
    if prediction.dim() != 2 or prediction.shape[1] != num_classes or target.dim() != 1:
        raise ValueError(f"task {task!r}: expected prediction (B, {num_classes}) and target (B,), "
                         f"got {tuple(prediction.shape)} and {tuple(target.shape)}")

class GeneratedTask(Task):
    """A task whose data is generated: options resolved against `OPTIONS`, splits of sizes n_train, n_val,
    n_test made by `generate` with a generator seeded per (seed, split), built once per seed."""

    OPTIONS: Mapping[str, Any]

    def __init__(self, **options: Any) -> None:
        super().__init__(**resolve_options(self.info.name, self.OPTIONS, options))
        self._cache: dict[int, Mapping[str, Dataset]] = {}

    @abc.abstractmethod
    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """n sequences and their targets, as tensors with a leading dimension n."""

    def splits(self, seed: int) -> Mapping[str, Dataset]:
        if seed not in self._cache:
            self._cache[seed] = {
                split: TensorDataset(*self.generate(
                    self.options[f"n_{split}"], torch.Generator().manual_seed(split_seed(seed, split))))
                for split in ("train", "val", "test")
            }
        return self._cache[seed]
