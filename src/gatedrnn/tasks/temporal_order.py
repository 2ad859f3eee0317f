"""Temporal order (Hochreiter & Schmidhuber 1997, experiment 6a): classify the order of two symbols.

Each sequence of L steps is one-hot over 8 symbols {a, b, c, d, B, E, X, Y}: as in the paper it starts
with E and ends with B (the trigger); the other steps are random distractors a-d, except two relevant steps: t1 in [0.1L, 0.2L] and
t2 in [0.5L, 0.6L], each X or Y. The class is the order: XX -> 0, XY -> 1, YX -> 2, YY -> 3.
(The paper draws L in 100..110 per sequence; here L is fixed per task so batches are plain tensors.)

Metric: accuracy (headline); cross-entropy. Baseline: chance, accuracy 0.25, cross-entropy log 4 ≈ 1.386.

Shapes: inputs (B, L, 8), targets (B,) int64, predictions (B, 4) logits.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gatedrnn.models import SequenceClassifier
from gatedrnn.tasks._common import GeneratedTask, check_logits
from gatedrnn.tasks._options import Option
from gatedrnn.tasks.base import TaskInfo

SYMBOLS = ("a", "b", "c", "d", "B", "E", "X", "Y")
TRIGGER, START, X, Y = 4, 5, 6, 7  # B, E, X, Y
NUM_CLASSES = 4


def relevant_windows(seq_len: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The inclusive step ranges of t1 and t2 for length L (10-20 and 50-60 for L = 100)."""
    return (seq_len // 10, seq_len // 5), (seq_len // 2, (6 * seq_len) // 10)


def make_temporal_order(count: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(symbol ids (count, L), classes (count,))."""
    (lo1, hi1), (lo2, hi2) = relevant_windows(seq_len)
    ids = torch.randint(0, 4, (count, seq_len), generator=generator)  # (N, L) distractors a-d
    ids[:, 0] = START
    ids[:, -1] = TRIGGER
    t1 = torch.randint(lo1, hi1 + 1, (count,), generator=generator)  # (N,)
    t2 = torch.randint(lo2, hi2 + 1, (count,), generator=generator)  # (N,)
    first_is_y = torch.randint(0, 2, (count,), generator=generator)  # (N,)
    second_is_y = torch.randint(0, 2, (count,), generator=generator)  # (N,)
    rows = torch.arange(count)
    ids[rows, t1] = X + first_is_y
    ids[rows, t2] = X + second_is_y
    return ids, 2 * first_is_y + second_is_y


class TemporalOrderTask(GeneratedTask):
    info = TaskInfo(
        name="temporal_order",
        description="temporal order: classify the order (XX, XY, YX, YY) of two symbols among distractors (H&S 1997)",
        kind="classification",
        metric="accuracy",
        higher_is_better=True,
        baseline="chance: accuracy 0.25, cross-entropy log 4 = 1.386 (Hochreiter & Schmidhuber 1997, exp. 6a)",
    )
    OPTIONS = {
        "seq_len": Option(100, int, minimum=10, help="sequence length L"),
        "n_train": Option(10000, int, minimum=1, help="training sequences"),
        "n_val": Option(1000, int, minimum=1, help="validation sequences"),
        "n_test": Option(1000, int, minimum=1, help="test sequences"),
    }

    def baselines(self) -> dict[str, float]:
        return {"chance_accuracy": 1.0 / NUM_CLASSES, "chance_cross_entropy": math.log(NUM_CLASSES)}

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return make_temporal_order(n, self.options["seq_len"], generator)  # (n, L), (n,)

    def collate(self, items: Sequence[Any]) -> tuple[Tensor, Tensor]:
        if len(items) == 0:
            raise ValueError("cannot collate an empty batch")
        ids, classes = (torch.stack(column) for column in zip(*items))  # (B, L), (B,)
        return F.one_hot(ids, len(SYMBOLS)).float(), classes  # (B, L, 8), (B,)

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, *,
                    init: dict | None = None) -> nn.Module:
        return SequenceClassifier(len(SYMBOLS), hidden_size, NUM_CLASSES, cell=cell, num_layers=num_layers,
                                  dropout=dropout, init=init)

    def _check(self, prediction: Tensor, target: Tensor) -> None:
        check_logits(self.info.name, prediction, target, NUM_CLASSES)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        self._check(prediction, target)
        return F.cross_entropy(prediction, target)

    def evaluate(self, predictions: Tensor, targets: Tensor) -> dict[str, float]:
        self._check(predictions, targets)
        return {
            "accuracy": float((predictions.argmax(-1) == targets).float().mean()),
            "cross_entropy": float(F.cross_entropy(predictions.detach().float(), targets)),
            "baseline_accuracy": 1.0 / NUM_CLASSES,
        }
