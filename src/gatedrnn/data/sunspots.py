"""Monthly mean sunspot numbers, January 1749 - June 2009 (3,126 values), from the file statsmodels ships:
`statsmodels/datasets/sunspots/src/sunspots_monthly.dat` (fixed-width: a year, then 12 monthly means;
the last year may be partial). Nothing is downloaded.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from gatedrnn.data._locate import CorruptDataError, resolve_path

RELATIVE_PATH = "datasets/sunspots/src/sunspots_monthly.dat"
FIRST_YEAR = 1749
MIN_VALUES = 3000  # the 2009 release has 3,126; fewer means a truncated file

_YEAR_LINE = re.compile(r"^(\d{4})\s")


@dataclass(frozen=True)
class MonthlySeries:
    values: np.ndarray  # (N,) float64, chronological
    start_year: int  # values[0] is January of start_year
    source: str

    def date_of(self, index: int) -> str:
        year, month = divmod(index, 12)
        return f"{self.start_year + year}-{month + 1:02d}"


def load_monthly_sunspots(path: Optional[Union[str, Path]] = None) -> MonthlySeries:
    """The monthly sunspot series; `path` reads another copy of the file (tests point it at broken copies)."""
    path = resolve_path(path, "statsmodels", RELATIVE_PATH, pip_name="statsmodels", extra="train")
    text = path.read_text(encoding="ascii", errors="replace")
    years: list[tuple[int, list[float], int]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        match = _YEAR_LINE.match(line)
        if not match:
            continue
        fields = line.split()[1:]
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise CorruptDataError(f"{path}:{line_number}: expected a year and up to 12 numbers, got {line!r}") from None
        if not 1 <= len(values) <= 12:
            raise CorruptDataError(f"{path}:{line_number}: expected 12 monthly values, got {len(values)}")
        years.append((int(match.group(1)), values, line_number))
    if not years:
        raise CorruptDataError(f"{path}: no lines of the form '<year> <12 monthly values>' found")
    if years[0][0] != FIRST_YEAR:
        raise CorruptDataError(f"{path}: the series should start in {FIRST_YEAR}, got {years[0][0]}")
    for (year, values, line_number), (next_year, _, _) in zip(years, years[1:]):
        if next_year != year + 1:
            raise CorruptDataError(f"{path}:{line_number}: year {year} is followed by {next_year}, expected {year + 1}")
        if len(values) != 12:
            raise CorruptDataError(f"{path}:{line_number}: year {year} has {len(values)} values, expected 12 "
                                   "(only the last year may be partial)")
    series = np.array([v for _, values, _ in years for v in values], dtype=np.float64)
    bad = [i for i, v in enumerate(series) if not math.isfinite(v) or v < 0]
    if bad:
        raise CorruptDataError(f"{path}: sunspot numbers should be finite and >= 0, got {series[bad[0]]} "
                               f"at {FIRST_YEAR + bad[0] // 12}-{bad[0] % 12 + 1:02d}")
    if len(series) < MIN_VALUES:
        raise CorruptDataError(f"{path}: expected at least {MIN_VALUES} monthly values, got {len(series)} "
                               "(truncated file?)")
    return MonthlySeries(series, FIRST_YEAR, str(path))
