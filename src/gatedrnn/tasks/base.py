"""The contract every task keeps, so the trainer, the CLI and the report need no task-specific code.

A task owns its data (generated, or read from a file shipped inside an installed package: nothing is
downloaded), how a batch is assembled, the model family that fits it, the loss and the metrics.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from torch import Tensor, nn
from torch.utils.data import Dataset


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    kind: str  # "regression" | "classification" | "forecast" | "language_model" | "sequence_model"
    metric: str  # the headline metric returned by Task.evaluate, e.g. "accuracy", "bpc", "mse"
    higher_is_better: bool
    baseline: str  # the literature or naive baseline to compare with, with its source


class Task(abc.ABC):
    """One learning problem. Options (sequence length, sizes, …) are keyword arguments of __init__,
    stored in `self.options` so a checkpoint can rebuild the same task."""

    info: TaskInfo
    # TrainConfig fields this task trains well with, used by `gatedrnn train` below a config file and flags
    train_defaults: Mapping[str, Any] = {}

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = dict(options)

    @abc.abstractmethod
    def splits(self, seed: int) -> Mapping[str, Dataset]:
        """{"train", "val", "test"} datasets; the same seed gives the same data."""

    @abc.abstractmethod
    def collate(self, items: Sequence[Any]) -> tuple[Any, Tensor]:
        """A list of dataset items -> (inputs, targets); inputs a (B, T, I) tensor or a PackedSequence."""

    @abc.abstractmethod
    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, *,
                    init: dict | None = None) -> nn.Module:
        """A `gatedrnn.models` model for this task with the given recurrent cell ("lstm", "gru", "rnn");
        `init` the layer's gate-bias options (e.g. {"init": "chrono", "chrono_max": 100}), None for torch's init."""

    @abc.abstractmethod
    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Scalar training loss."""

    def baselines(self) -> dict[str, float]:
        """Reference numbers for the test split, named `<strategy>_<metric>` (e.g. "persistence_rmse") in the
        units of `evaluate`; computed ones (naive predictors, ARIMA) and published ones. {} if none."""
        return {}

    @abc.abstractmethod
    def evaluate(self, predictions: Tensor, targets: Tensor) -> dict[str, float]:
        """Metrics over a whole split (predictions and targets concatenated over batches);
        includes `self.info.metric`."""
