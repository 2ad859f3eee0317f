"""JapaneseVowels speaker classification (data: `gatedrnn.data.japanese_vowels`, UEA split 270/370).

Each item is one utterance: 7-29 frames of 12 LPC channels, class = the speaker (9 classes). Batches are
PackedSequences (variable lengths, nothing padded reaches the model). Channels are standardised with the
mean and std of the train split's frames. The UEA archive has no validation split: `val_per_class`
utterances per speaker are held out of the 270 train utterances (chosen by the seed); the test split is
the UEA test set (370).

Metric: test accuracy (headline); cross-entropy. Published on this split: LSTM-FCN 0.99, MLSTM-FCN 1.00
(Karim et al. 2019, arXiv:1801.04503); the majority class of the test set (speaker 3) gives 88/370 = 0.238.

Shapes: inputs a PackedSequence of (T_b, 12) rows, targets (B,) int64, predictions (B, 9) logits.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence
from torch.utils.data import Dataset

from gatedrnn.data.japanese_vowels import NUM_CHANNELS, NUM_CLASSES, load_japanese_vowels
from gatedrnn.models import SequenceClassifier
from gatedrnn.tasks._common import check_logits
from gatedrnn.tasks._options import Option, resolve_options, split_seed
from gatedrnn.tasks.base import Task, TaskInfo


class VariableLengthDataset(Dataset):
    """Items (series (T_n, C) float32 tensor, class int64 scalar tensor)."""

    def __init__(self, series: list[Tensor], classes: Tensor) -> None:
        self.series, self.classes = series, classes

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.series[index], self.classes[index]


class VowelsTask(Task):
    info = TaskInfo(
        name="vowels",
        description="JapaneseVowels: identify the speaker from 12-channel LPC frames of variable length (UEA)",
        kind="classification",
        metric="accuracy",
        higher_is_better=True,
        baseline="LSTM-FCN 0.99, MLSTM-FCN 1.00 test accuracy (Karim et al. 2019, arXiv:1801.04503)",
    )
    OPTIONS = {
        "val_per_class": Option(3, int, minimum=1, maximum=29, help="train utterances per speaker held out for val"),
        "train_path": Option(None, str, allow_none=True, help="another JapaneseVowels_TRAIN.ts"),
        "test_path": Option(None, str, allow_none=True, help="another JapaneseVowels_TEST.ts"),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**resolve_options(self.info.name, self.OPTIONS, options))
        self._cache: dict[int, Mapping[str, Dataset]] = {}

    def baselines(self) -> dict[str, float]:
        """Chance (1/9), always answering the largest test class (88/370), and the published results."""
        return {"chance_accuracy": 1.0 / NUM_CLASSES, "majority_accuracy": 88.0 / 370.0,
                "lstm_fcn_accuracy": 0.99, "mlstm_fcn_accuracy": 1.00}

    def splits(self, seed: int) -> Mapping[str, Dataset]:
        if seed not in self._cache:
            train = load_japanese_vowels("train", self.options["train_path"])
            test = load_japanese_vowels("test", self.options["test_path"])
            index = {label: k for k, label in enumerate(train.class_labels)}
            train_classes = np.array([index[label] for label in train.labels])
            generator = np.random.default_rng(split_seed(seed, "val"))
            val_rows = np.concatenate([
                generator.choice(np.flatnonzero(train_classes == c), self.options["val_per_class"], replace=False)
                for c in range(NUM_CLASSES)
            ])
            train_rows = np.setdiff1d(np.arange(len(train.series)), val_rows)
            frames = np.concatenate([train.series[i] for i in train_rows])  # (sum T, 12)
            mean, std = frames.mean(axis=0), frames.std(axis=0)

            def build(series: list[np.ndarray], classes: np.ndarray, rows: np.ndarray) -> VariableLengthDataset:
                return VariableLengthDataset([torch.from_numpy((series[i] - mean) / std).float() for i in rows],
                                             torch.as_tensor(classes[rows], dtype=torch.long))

            test_classes = np.array([index[label] for label in test.labels])
            self._cache[seed] = {"train": build(train.series, train_classes, train_rows),
                                 "val": build(train.series, train_classes, np.sort(val_rows)),
                                 "test": build(test.series, test_classes, np.arange(len(test.series)))}
        return self._cache[seed]

    def collate(self, items: Sequence[Any]) -> tuple[PackedSequence, Tensor]:
        if len(items) == 0:
            raise ValueError("cannot collate an empty batch")
        series, classes = zip(*items)
        return pack_sequence(list(series), enforce_sorted=False), torch.stack(classes)  # packed (T_b, 12), (B,)

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, *,
                    init: dict | None = None) -> nn.Module:
        return SequenceClassifier(NUM_CHANNELS, hidden_size, NUM_CLASSES, cell=cell, num_layers=num_layers,
                                  dropout=dropout, init=init)

    def _check(self, prediction: Tensor, target: Tensor) -> None:
        check_logits(self.info.name, prediction, target, NUM_CLASSES)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        self._check(prediction, target)
        return F.cross_entropy(prediction, target)

    def evaluate(self, predictions: Tensor, targets: Tensor) -> dict[str, float]:
        self._check(predictions, targets)
        return {"accuracy": float((predictions.argmax(-1) == targets).float().mean()),
                "cross_entropy": float(F.cross_entropy(predictions.detach().float(), targets))}
