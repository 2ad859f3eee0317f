"""Character-level language modelling on the King James Bible (data: `gatedrnn.data.kjv`, 4.1 M characters).

The corpus (optionally its first `max_chars` characters) is split by position: the first 90 % train, the
next 5 % val, the last 5 % test. Each split is cut into non-overlapping windows of seq_len + 1 characters:
the model reads characters 0..seq_len-1 and predicts 1..seq_len. The vocabulary is the sorted set of
characters of the (cut) corpus, so it is the same whenever the task is rebuilt with the same options.
The split is contiguous, as for text8 and enwik8: val and test are the end of the New Testament (Acts to
Revelation), which a model trained on the rest finds harder than its own training text (measured: about
0.2-0.4 bpc above the train windows' bpc early in training), so test bpc measures real generalisation.

Metric: bits per character (cross-entropy / ln 2) on the test split, headline.
Baselines (`baselines()`, printed by `gatedrnn tasks charlm --baselines`): the train split's unigram on the
test split, the train split's unigram entropy and log2(V) for uniform guessing; for scale, BN-LSTM reaches 1.36 bpc on text8 (Cooijmans et al. 2016,
arXiv:1603.09025), a different corpus.

Shapes: inputs (B, T) int64 ids, targets (B, T) int64 ids, predictions (B, T, V) logits.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from gatedrnn.data.kjv import load_kjv_text
from gatedrnn.models import CharLM
from gatedrnn.tasks._common import check_pair
from gatedrnn.tasks._options import Option, resolve_options
from gatedrnn.tasks.base import Task, TaskInfo

FRACTIONS = {"train": 0.90, "val": 0.05, "test": 0.05}
LN2 = math.log(2.0)


class WindowDataset(Dataset):
    """Non-overlapping windows of `size` ids from a 1-D id tensor; item k = ids[k*(size-1) : k*(size-1)+size]."""

    def __init__(self, ids: Tensor, size: int) -> None:
        self.ids, self.size = ids, size
        self.count = max(0, (len(ids) - 1) // (size - 1))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.count:
            raise IndexError(f"window {index} out of range [0, {self.count})")
        start = index * (self.size - 1)
        return self.ids[start : start + self.size]  # (seq_len + 1,)


class CharLMTask(Task):
    info = TaskInfo(
        name="charlm",
        description="character-level language model on the King James Bible (4.1 M characters); sampling",
        kind="language_model",
        metric="bpc",
        higher_is_better=False,
        baseline="the train unigram's test bpc (computed: `gatedrnn tasks charlm --baselines`); BN-LSTM 1.36 bpc "
                 "on text8 (Cooijmans et al. 2016) for scale",
    )
    OPTIONS = {
        "seq_len": Option(100, int, minimum=1, help="characters per training window (truncated BPTT length)"),
        "max_chars": Option(None, int, minimum=100, allow_none=True, help="use only the corpus's first characters"),
        "embedding_size": Option(32, int, minimum=1, help="character embedding size"),
        "path": Option(None, str, allow_none=True, help="read another copy of kjv.jsonl"),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**resolve_options(self.info.name, self.OPTIONS, options))
        self._text: str | None = None
        self._splits: Mapping[str, Dataset] | None = None

    # ----- text and vocabulary -----
    def _load(self) -> None:
        if self._text is None:
            text = load_kjv_text(self.options["path"])
            limit = self.options["max_chars"]
            self._text = text[:limit] if limit is not None else text
            self._vocabulary = "".join(sorted(set(self._text)))
            self._index = {ch: k for k, ch in enumerate(self._vocabulary)}

    @property
    def text(self) -> str:
        """The (cut) corpus, read on first use."""
        self._load()
        return self._text

    @property
    def vocabulary(self) -> str:
        """The characters of the corpus, sorted; character id k is vocabulary[k]."""
        self._load()
        return self._vocabulary

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str) -> Tensor:
        """str -> ids (len,) int64; a character outside the vocabulary -> ValueError naming it."""
        self._load()
        unknown = sorted(set(text) - set(self._index))
        if unknown:
            raise ValueError(f"characters {unknown} are not in the corpus vocabulary {self.vocabulary!r}")
        return torch.tensor([self._index[ch] for ch in text], dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        """ids (len,) -> str."""
        vocabulary = self.vocabulary
        return "".join(vocabulary[int(k)] for k in ids)

    def split_text(self) -> dict[str, str]:
        text = self.text
        train_end = int(len(text) * FRACTIONS["train"])
        val_end = train_end + int(len(text) * FRACTIONS["val"])
        return {"train": text[:train_end], "val": text[train_end:val_end], "test": text[val_end:]}

    # ----- the contract -----
    def splits(self, seed: int) -> Mapping[str, Dataset]:
        """The same windows for every seed (a fixed corpus); the seed only matters to the trainer's shuffling."""
        if self._splits is None:
            size = self.options["seq_len"] + 1
            out = {}
            for split, text in self.split_text().items():
                out[split] = WindowDataset(self.encode(text), size)
                if len(out[split]) == 0:
                    raise ValueError(f"task 'charlm': the {split} split ({len(text)} characters) is shorter than "
                                     f"one window of seq_len + 1 = {size}; raise max_chars or lower seq_len")
            self._splits = out
        return self._splits

    def collate(self, items: Sequence[Any]) -> tuple[Tensor, Tensor]:
        if len(items) == 0:
            raise ValueError("cannot collate an empty batch")
        windows = torch.stack(list(items))  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T)

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, *,
                    init: dict | None = None) -> nn.Module:
        return CharLM(self.vocab_size, hidden_size, self.options["embedding_size"], cell=cell, num_layers=num_layers,
                      dropout=dropout, init=init)

    def _check(self, prediction: Tensor, target: Tensor) -> None:
        check_pair(self.info.name, prediction, target, "(B, T, V)", "(B, T)")
        if prediction.dim() != 3 or prediction.shape[:2] != target.shape or prediction.shape[2] != self.vocab_size:
            raise ValueError(f"task 'charlm': expected prediction (B, T, {self.vocab_size}) and target (B, T), "
                             f"got {tuple(prediction.shape)} and {tuple(target.shape)}")

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        self._check(prediction, target)
        return F.cross_entropy(prediction.flatten(0, 1), target.flatten())  # nats per character

    def evaluate(self, predictions: Tensor, targets: Tensor) -> dict[str, float]:
        self._check(predictions, targets)
        nats = float(F.cross_entropy(predictions.detach().flatten(0, 1).float(), targets.flatten()))
        return {"bpc": nats / LN2, "cross_entropy": nats,
                "accuracy": float((predictions.argmax(-1) == targets).float().mean())}

    def baselines(self) -> dict[str, float]:
        """The train unigram's bpc on test (add-one smoothed), the train split's unigram entropy, log2(V)
        (uniform guessing) and, for scale only, BN-LSTM's published 1.36 bpc on text8 (another corpus)."""
        parts = self.split_text()
        counts = Counter(parts["train"])
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
        smoothed_total = total + self.vocab_size
        test_counts = Counter(parts["test"])
        cross = -sum(n * math.log2((counts.get(ch, 0) + 1) / smoothed_total) for ch, n in test_counts.items())
        return {"unigram_bpc": cross / len(parts["test"]), "unigram_entropy_bpc": entropy,
                "uniform_bpc": math.log2(self.vocab_size), "bn_lstm_text8_bpc": 1.36}
