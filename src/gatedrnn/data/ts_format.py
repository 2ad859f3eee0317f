"""A small reader for the `.ts` format of the UEA/UCR time-series archive (as shipped in sktime).

The format: comment lines start with `#`; header lines start with `@` (`@dimensions 12`,
`@classLabel true 1 2 ...`, `@data`); after `@data`, one series per line: channels separated by `:`,
values inside a channel by `,`, and the class label last. Every channel of a series has the same length;
series may differ in length (`@equalLength false`). Missing values (`?`, `NaN`) are rejected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from gatedrnn.data._locate import CorruptDataError


@dataclass(frozen=True)
class TsDataset:
    series: list[np.ndarray]  # each (T_n, C) float32, time first
    labels: list[str]  # the class label of each series
    class_labels: tuple[str, ...]  # from @classLabel, in the file's order
    problem_name: str
    source: str

    @property
    def num_channels(self) -> int:
        return self.series[0].shape[1]


def read_ts(path: Union[str, Path]) -> TsDataset:
    """Read a classification `.ts` file; any deviation from the format -> CorruptDataError naming the line."""
    path = Path(path)
    header: dict[str, str] = {}
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{line_number}"
            if not in_data:
                if not line.startswith("@"):
                    raise CorruptDataError(f"{where}: expected a header line starting with '@' before @data, got {line[:60]!r}")
                key, _, value = line[1:].partition(" ")
                if key.lower() == "data":
                    in_data = True
                else:
                    header[key.lower()] = value.strip()
                continue
            series.append(_parse_series(line, where, header, labels))
    if not in_data:
        raise CorruptDataError(f"{path}: no '@data' line: not a .ts file, or truncated in its header")
    if not series:
        raise CorruptDataError(f"{path}: no series after '@data'")
    class_labels = _class_labels(path, header)
    unknown = sorted(set(labels) - set(class_labels))
    if unknown:
        raise CorruptDataError(f"{path}: labels {unknown} are not among @classLabel {list(class_labels)}")
    return TsDataset(series, labels, class_labels, header.get("problemname", path.stem), str(path))


def _class_labels(path: Path, header: dict[str, str]) -> tuple[str, ...]:
    words = header.get("classlabel", "").split()
    if not words or words[0].lower() != "true" or len(words) < 2:
        raise CorruptDataError(f"{path}: expected '@classLabel true <labels...>' in the header, got {words}")
    return tuple(words[1:])


def _parse_series(line: str, where: str, header: dict[str, str], labels: list[str]) -> np.ndarray:
    parts = line.split(":")
    if len(parts) < 2:
        raise CorruptDataError(f"{where}: expected channels separated by ':' and a label last, got {line[:60]!r}")
    *channels, label = parts
    expected_channels = header.get("dimensions")
    if expected_channels is not None and len(channels) != int(expected_channels):
        raise CorruptDataError(f"{where}: expected {expected_channels} channels (@dimensions), got {len(channels)}")
    try:
        values = [[float(v) for v in channel.split(",")] for channel in channels]
    except ValueError as error:
        raise CorruptDataError(f"{where}: expected comma-separated numbers in every channel ({error})") from None
    lengths = {len(v) for v in values}
    if len(lengths) != 1:
        raise CorruptDataError(f"{where}: every channel should have the same length, got lengths {sorted(lengths)}")
    array = np.array(values, dtype=np.float32).T  # (T, C)
    if not all(math.isfinite(v) for v in array.flat):
        raise CorruptDataError(f"{where}: missing or non-finite values (NaN, ?) are not supported")
    labels.append(label.strip())
    return array
