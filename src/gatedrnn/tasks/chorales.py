"""Polyphonic music modelling on Bach chorales as piano rolls, in the form of JSB Chorales
(Boulanger-Lewandowski et al. 2012; data: `gatedrnn.data.chorales`, read from music21's corpus).

Each item is one chorale: T frames (quarter notes by default) of 88 binary keys. The model reads frames
0..t-1 and predicts frame t for every t = 0..T-1: its input is the piece shifted right by one frame
behind an all-silent start frame, so every frame of the piece, the first included, is predicted and
the loss is the piece's whole negative log-likelihood. Each key is an independent Bernoulli given the
past (a sigmoid per key), as in the RNN baselines of Boulanger-Lewandowski et al. 2012, Chung et al.
2014 and Greff et al. 2017. Pieces have different lengths: batches are PackedSequences, and the model
returns logits for the real frames only (`FrameTagger`), so padding never enters the loss or a metric.

The split is by piece, fixed by `split_seed` (not by the training seed, so runs with different seeds
see the same pieces), in JSB's proportions 229/76/77; the pieces are not transposed (as JSB).

Metric: frame-level negative log-likelihood in nats per frame (headline), the sum over the 88 keys of
the binary cross-entropy, averaged over all frames of the split (each frame counts once, so long pieces
weigh more); also the frame accuracy of Bay et al. 2009, TP / (TP + FP + FN) over all frames and keys
with a 0.5 threshold. Baselines (`baselines()`): the train split's per-key frequencies as independent
Bernoullis (computed), and GRU 8.54 test NLL on JSB Chorales (Chung et al. 2014; checked). From memory,
unchecked: Chung et al. report LSTM 8.67 and tanh-RNN 9.10 test (8.82 is, as we recall, the tanh-RNN's
train NLL); Greff et al. 2017 report vanilla LSTM about 8.4-8.6 test NLL. Those are on JSB itself, whose
pieces, voicing and split differ from these: compare in scale only.

Shapes: inputs a PackedSequence of (T_b, 88) rows, targets (N, 88) float 0/1 with N = sum of T_b (in the
packed order), predictions (N, 88) logits.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence
from torch.utils.data import Dataset

from gatedrnn.data.chorales import NUM_KEYS, Chorales, load_chorales, split_chorales
from gatedrnn.models import FrameTagger
from gatedrnn.tasks._common import check_pair
from gatedrnn.tasks._options import Option, resolve_options
from gatedrnn.tasks.base import Task, TaskInfo

FRAME_QUARTERS = {"quarter": 1.0, "eighth": 0.5}
PUBLISHED = {"chung2014_gru_jsb_nll": 8.54}  # Chung et al. 2014, Table 2, JSB Chorales test


def frame_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Negative log-likelihood in nats per frame: logits and 0/1 targets (N, K) -> scalar
    sum_k BCE(logits[n, k], targets[n, k]) averaged over the N frames."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


def frame_accuracy(logits: Tensor, targets: Tensor) -> float:
    """Bay et al. 2009: TP / (TP + FP + FN) over all frames and keys, a key predicted on when p > 0.5."""
    predicted, actual = logits > 0, targets > 0.5
    true_positive = int((predicted & actual).sum())
    wrong = int((predicted ^ actual).sum())
    return true_positive / (true_positive + wrong) if true_positive + wrong else 1.0


def shift_right(roll: Tensor) -> Tensor:
    """(T, K) -> (T, K): an all-zero start frame, then frames 0..T-2 (the input that predicts every frame)."""
    return torch.cat([roll.new_zeros(1, roll.shape[1]), roll[:-1]])


class PianoRollDataset(Dataset):
    """Items: one piece's (T_n, 88) float32 piano roll of 0/1."""

    def __init__(self, rolls: list[Tensor], names: list[str]) -> None:
        self.rolls, self.names = rolls, names

    def __len__(self) -> int:
        return len(self.rolls)

    def __getitem__(self, index: int) -> Tensor:
        return self.rolls[index]


class ChoralesTask(Task):
    info = TaskInfo(
        name="chorales",
        description="Bach chorales as 88-key piano rolls (JSB-like, music21's corpus): predict the next frame",
        kind="sequence_model",
        metric="nll",
        higher_is_better=False,
        baseline="GRU 8.54 nats/frame test NLL on JSB Chorales (Chung et al. 2014), a related set (scale only); "
                 "the train split's key frequencies (computed: `gatedrnn tasks chorales --baselines`)",
    )
    # 20 epochs of 31 steps: about 10 s on one thread; 40 epochs take the LSTM to the published scale
    train_defaults = {"hidden_size": 100, "batch_size": 8, "lr": 0.01, "epochs": 20}
    OPTIONS = {
        "frame": Option("quarter", str, choices=tuple(FRAME_QUARTERS), help="frame length (JSB: quarter)"),
        "max_pieces": Option(None, int, minimum=3, allow_none=True,
                             help="read only the first score files (quick runs); None: the whole corpus"),
        "split_seed": Option(0, int, minimum=0, help="the seed of the piece-level train/val/test split"),
        "cache": Option(True, bool, help="keep the parsed piano rolls in the user's cache folder"),
        "cache_dir": Option(None, str, allow_none=True, help="another cache folder"),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**resolve_options(self.info.name, self.OPTIONS, options))
        self._chorales: Chorales | None = None
        self._splits: Mapping[str, PianoRollDataset] | None = None
        self._baselines: dict[str, float] | None = None

    @property
    def chorales(self) -> Chorales:
        """The pieces, parsed (or read from the cache) on first use."""
        if self._chorales is None:
            self._chorales = load_chorales(max_pieces=self.options["max_pieces"],
                                           frame_quarters=FRAME_QUARTERS[self.options["frame"]],
                                           cache=self.options["cache"], cache_dir=self.options["cache_dir"])
        return self._chorales

    def split_indices(self) -> dict[str, np.ndarray]:
        """{"train", "val", "test"}: indices into `chorales` (sorted, disjoint)."""
        return split_chorales(len(self.chorales), seed=self.options["split_seed"])

    def splits(self, seed: int) -> Mapping[str, Dataset]:
        """The same pieces for every seed (the split has its own seed); the seed only matters to the trainer."""
        if self._splits is None:
            chorales = self.chorales
            self._splits = {
                split: PianoRollDataset([torch.from_numpy(chorales.rolls[i].astype(np.float32)) for i in rows],
                                        [chorales.names[i] for i in rows])
                for split, rows in self.split_indices().items()
            }
        return self._splits

    def collate(self, items: Sequence[Any]) -> tuple[PackedSequence, Tensor]:
        """Pieces (T_b, 88) -> (packed inputs, targets (sum T_b, 88) in the packed order). The pieces are sorted
        by length (longest first, ties in batch order) and packed sorted, so inputs and targets align row by row."""
        if len(items) == 0:
            raise ValueError("cannot collate an empty batch")
        for item in items:
            if not isinstance(item, Tensor) or item.dim() != 2 or item.shape[1] != NUM_KEYS or item.shape[0] < 1:
                shape = tuple(item.shape) if isinstance(item, Tensor) else type(item).__name__
                raise ValueError(f"task 'chorales': expected piano rolls (T, {NUM_KEYS}) with T >= 1, got {shape}")
        rolls = sorted(items, key=len, reverse=True)  # stable: equal lengths keep their order
        inputs = pack_sequence([shift_right(roll) for roll in rolls], enforce_sorted=True)
        targets = pack_sequence(list(rolls), enforce_sorted=True).data  # (N, 88)
        return inputs, targets

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, *,
                    init: dict | None = None) -> nn.Module:
        return FrameTagger(NUM_KEYS, hidden_size, NUM_KEYS, cell=cell, num_layers=num_layers, dropout=dropout,
                           init=init)

    def _check(self, prediction: Tensor, target: Tensor) -> None:
        check_pair(self.info.name, prediction, target, f"(N, {NUM_KEYS})", f"(N, {NUM_KEYS})", same_shape=True)
        if prediction.dim() != 2 or prediction.shape[1] != NUM_KEYS or prediction.shape[0] < 1:
            raise ValueError(f"task 'chorales': expected prediction and target (N, {NUM_KEYS}) with N >= 1, "
                             f"got {tuple(prediction.shape)}")

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        self._check(prediction, target)
        return frame_nll(prediction, target)  # nats per frame

    def evaluate(self, predictions: Tensor, targets: Tensor) -> dict[str, float]:
        self._check(predictions, targets)
        predictions, targets = predictions.detach().double(), targets.double()
        return {"nll": float(frame_nll(predictions, targets)), "accuracy": frame_accuracy(predictions, targets),
                "frames": float(predictions.shape[0])}

    def baselines(self) -> dict[str, float]:
        """Test NLL (nats per frame) of independent keys with the train split's frequencies, add-one smoothed
        ("key_frequency_nll"), and the published figure for scale (JSB itself, not this split)."""
        if self._baselines is None:
            splits = self.splits(0)
            train = torch.cat(splits["train"].rolls).double()  # (frames, 88)
            test = torch.cat(splits["test"].rolls).double()
            probability = (train.sum(0) + 1.0) / (train.shape[0] + 2.0)  # (88,)
            logits = torch.log(probability) - torch.log1p(-probability)
            self._baselines = {"key_frequency_nll": float(frame_nll(logits.expand_as(test), test)),
                               **{k: float(v) for k, v in PUBLISHED.items()}}
        return dict(self._baselines)

