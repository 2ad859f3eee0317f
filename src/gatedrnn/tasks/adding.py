"""The adding problem (Hochreiter & Schmidhuber 1997, experiment 4; in the form of Le et al. 2015).

Each input is T steps of two channels: a value ~ U(0, 1) and a marker that is 1 at exactly two steps,
the first in [0, T/2) and the second in [T/2, T), 0 elsewhere. The target is the sum of the two marked
values. The network must carry the first marked value across up to T steps of distractors.

Metric: test MSE (headline); accuracy = fraction with |prediction - target| < 0.04.
Baseline: always predicting 1.0 (the mean of the target) gives MSE = Var(U1 + U2) = 2/12 ≈ 0.167.

Shapes: inputs (B, T, 2), targets (B, 1), predictions (B, 1).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gatedrnn.models import SequenceRegressor
from gatedrnn.tasks._common import GeneratedTask, check_pair, stack_pairs
from gatedrnn.tasks._options import Option
from gatedrnn.tasks.base import TaskInfo

TOLERANCE = 0.04
BASELINE_MSE = 2.0 / 12.0  # predicting the mean 1.0: the variance of a sum of two U(0, 1)
# P(|U1 + U2 - 1| < tol): the sum's density is 1 - |s - 1| around 1
BASELINE_ACCURACY = 2 * TOLERANCE - TOLERANCE**2


def make_adding(count: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """count adding-problem sequences: (inputs (count, T, 2), targets (count, 1))."""
    values = torch.rand(count, seq_len, generator=generator)  # (N, T)
    half = seq_len // 2
    first = torch.randint(0, half, (count,), generator=generator)  # (N,)
    second = torch.randint(half, seq_len, (count,), generator=generator)  # (N,)
    markers = torch.zeros(count, seq_len)  # (N, T)
    rows = torch.arange(count)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = (values[rows, first] + values[rows, second]).unsqueeze(1)  # (N, 1)
    return torch.stack([values, markers], dim=2), targets  # (N, T, 2), (N, 1)


class AddingTask(GeneratedTask):
    info = TaskInfo(
        name="adding",
        description="adding problem: sum the two marked values in a long random sequence (H&S 1997)",
        kind="regression",
        metric="mse",
        higher_is_better=False,
        baseline="predicting 1.0 gives MSE 0.167 (Hochreiter & Schmidhuber 1997; Le et al. 2015)",
    )
    OPTIONS = {
        "seq_len": Option(100, int, minimum=2, help="sequence length T"),
        "n_train": Option(10000, int, minimum=1, help="training sequences"),
        "n_val": Option(1000, int, minimum=1, help="validation sequences"),
        "n_test": Option(1000, int, minimum=1, help="test sequences"),
    }

    def baselines(self) -> dict[str, float]:
        """Always predicting 1.0: MSE 1/6, accuracy 2·0.04 - 0.04² = 0.0784."""
        return {"mean_predictor_mse": BASELINE_MSE, "mean_predictor_accuracy": BASELINE_ACCURACY}

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return make_adding(n, self.options["seq_len"], generator)  # (n, T, 2), (n, 1)

    def collate(self, items: Sequence[Any]) -> tuple[Tensor, Tensor]:
        return stack_pairs(items)  # (B, T, 2), (B, 1)

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, *,
                    init: dict | None = None) -> nn.Module:
        return SequenceRegressor(2, hidden_size, 1, cell=cell, num_layers=num_layers, dropout=dropout, init=init)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        check_pair(self.info.name, prediction, target, "(B, 1)", "(B, 1)", same_shape=True)
        return F.mse_loss(prediction, target)

    def evaluate(self, predictions: Tensor, targets: Tensor) -> dict[str, float]:
        check_pair(self.info.name, predictions, targets, "(N, 1)", "(N, 1)", same_shape=True)
        error = (predictions.detach() - targets).float()
        return {
            "mse": float(error.pow(2).mean()),
            "accuracy": float((error.abs() < TOLERANCE).float().mean()),
            "baseline_mse": BASELINE_MSE,
        }
