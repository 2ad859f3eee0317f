"""JapaneseVowels (UEA archive; Kudo, Toyama & Shimbo 1999): nine speakers say the vowels /ae/; each
utterance is 12 LPC cepstrum channels over 7-29 frames; the class is the speaker (1-9).
UEA split: 270 train (30 per speaker), 370 test. Read from the files sktime ships:
`sktime/datasets/data/JapaneseVowels/JapaneseVowels_{TRAIN,TEST}.ts`. Nothing is downloaded.

Published accuracy on this split: LSTM-FCN 0.99, MLSTM-FCN 1.00 (Karim et al. 2019, arXiv:1801.04503).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from gatedrnn.data._locate import CorruptDataError, resolve_path
from gatedrnn.data.ts_format import TsDataset, read_ts

EXPECTED_COUNTS = {"train": 270, "test": 370}
NUM_CHANNELS = 12
NUM_CLASSES = 9
MAX_LENGTH = 29


def load_japanese_vowels(split: str, path: Optional[Union[str, Path]] = None) -> TsDataset:
    """The "train" or "test" split, checked: the UEA counts, 12 channels, 9 classes, lengths <= 29."""
    if split not in EXPECTED_COUNTS:
        raise ValueError(f"split should be one of {sorted(EXPECTED_COUNTS)}, got {split!r}")
    relative = f"datasets/data/JapaneseVowels/JapaneseVowels_{split.upper()}.ts"
    data = read_ts(resolve_path(path, "sktime", relative, pip_name="sktime", extra="data"))
    where = data.source
    if len(data.series) != EXPECTED_COUNTS[split]:
        raise CorruptDataError(f"{where}: expected {EXPECTED_COUNTS[split]} {split} series, got {len(data.series)}")
    if len(data.class_labels) != NUM_CLASSES:
        raise CorruptDataError(f"{where}: expected {NUM_CLASSES} classes, got {list(data.class_labels)}")
    for index, series in enumerate(data.series):
        if series.shape[1] != NUM_CHANNELS:
            raise CorruptDataError(f"{where}: series {index} has {series.shape[1]} channels, expected {NUM_CHANNELS}")
        if not 1 <= series.shape[0] <= MAX_LENGTH:
            raise CorruptDataError(f"{where}: series {index} has length {series.shape[0]}, expected 1..{MAX_LENGTH}")
    return data
