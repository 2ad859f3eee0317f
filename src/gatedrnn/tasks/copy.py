"""The copy (memory) task (Hochreiter & Schmidhuber 1997; in the form of Arjovsky et al. 2016).

Input, L = T + 2k steps over an alphabet of S symbols (1..S), blank 0 and a delimiter S + 1, one-hot:
    k random symbols | T - 1 blanks | delimiter | k blanks
Target at every step: blank (0), except the last k steps, which must repeat the k symbols in order.
The network must hold k symbols across a delay of T steps.

Metric: accuracy on the k recalled symbols (headline); cross-entropy over all L steps (the loss).
Baseline (memoryless: blanks, then uniform guesses after the delimiter): accuracy 1/S and
cross-entropy k·log(S) / (T + 2k) nats per step.

Shapes: inputs (B, L, S + 2) float one-hot, targets (B, L) int64, predictions (B, L, S + 1) logits.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gatedrnn.models import SequenceTagger
from gatedrnn.tasks._common import GeneratedTask, check_pair
from gatedrnn.tasks._options import Option
from gatedrnn.tasks.base import TaskInfo


def make_copy(count: int, delay: int, copy_len: int, num_symbols: int,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(input ids (count, L), targets (count, L)) with L = delay + 2 * copy_len; blank 0, delimiter S + 1."""
    length = delay + 2 * copy_len
    symbols = torch.randint(1, num_symbols + 1, (count, copy_len), generator=generator)  # (N, k)
    inputs = torch.zeros(count, length, dtype=torch.long)  # (N, L)
    inputs[:, :copy_len] = symbols
    inputs[:, copy_len + delay - 1] = num_symbols + 1
    targets = torch.zeros(count, length, dtype=torch.long)  # (N, L)
    targets[:, -copy_len:] = symbols
    return inputs, targets


class CopyTask(GeneratedTask):
    info = TaskInfo(
        name="copy",
        description="copy/memory task: repeat k symbols after a delay of T blanks (H&S 1997; Arjovsky et al. 2016)",
        kind="classification",
        metric="accuracy",
        higher_is_better=True,
        baseline="memoryless: accuracy 1/8, cross-entropy k·log(8)/(T+2k) (Arjovsky et al. 2016)",
    )
    OPTIONS = {
        "delay": Option(100, int, minimum=1, help="T: steps between the last symbol and the recall"),
        "copy_len": Option(10, int, minimum=1, help="k: symbols to remember"),
        "num_symbols": Option(8, int, minimum=2, help="S: alphabet size"),
        "n_train": Option(10000, int, minimum=1, help="training sequences"),
        "n_val": Option(1000, int, minimum=1, help="validation sequences"),
        "n_test": Option(1000, int, minimum=1, help="test sequences"),
    }

    @property
    def length(self) -> int:
        return self.options["delay"] + 2 * self.options["copy_len"]

    def baselines(self) -> dict[str, float]:
        """The memoryless strategy's accuracy and per-step cross-entropy (nats)."""
        o = self.options
        return {"memoryless_accuracy": 1.0 / o["num_symbols"],
                "memoryless_cross_entropy": o["copy_len"] * math.log(o["num_symbols"]) / self.length}

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        o = self.options
        return make_copy(n, o["delay"], o["copy_len"], o["num_symbols"], generator)  # (n, L), (n, L)

    def collate(self, items: Sequence[Any]) -> tuple[Tensor, Tensor]:
        if len(items) == 0:
            raise ValueError("cannot collate an empty batch")
        ids, targets = (torch.stack(column) for column in zip(*items))  # (B, L) each
        return F.one_hot(ids, self.options["num_symbols"] + 2).float(), targets  # (B, L, S + 2), (B, L)

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, *,
                    init: dict | None = None) -> nn.Module:
        s = self.options["num_symbols"]
        return SequenceTagger(s + 2, hidden_size, s + 1, cell=cell, num_layers=num_layers, dropout=dropout, init=init)

    def _check(self, prediction: Tensor, target: Tensor) -> None:
        s, length = self.options["num_symbols"], self.length
        check_pair(self.info.name, prediction, target, f"(B, {length}, {s + 1})", f"(B, {length})")
        if prediction.shape[1:] != (length, s + 1) or target.shape[1:] != (length,):
            raise ValueError(f"task 'copy': expected prediction (B, {length}, {s + 1}) and target (B, {length}), "
                             f"got {tuple(prediction.shape)} and {tuple(target.shape)}")

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        self._check(prediction, target)
        return F.cross_entropy(prediction.flatten(0, 1), target.flatten())  # mean over B * L steps

    def evaluate(self, predictions: Tensor, targets: Tensor) -> dict[str, float]:
        self._check(predictions, targets)
        k = self.options["copy_len"]
        recalled = predictions[:, -k:].argmax(-1) == targets[:, -k:]  # (N, k)
        baselines = self.baselines()
        return {
            "accuracy": float(recalled.float().mean()),
            "sequence_accuracy": float(recalled.all(dim=1).float().mean()),
            "cross_entropy": float(F.cross_entropy(predictions.detach().flatten(0, 1).float(), targets.flatten())),
            "baseline_accuracy": baselines["memoryless_accuracy"],
            "baseline_cross_entropy": baselines["memoryless_cross_entropy"],
        }
