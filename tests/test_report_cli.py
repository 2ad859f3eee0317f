"""`gatedrnn explain` on saved models: the demo's directory, single checkpoints, and one-line errors."""
from __future__ import annotations

import re

import pytest

from gatedrnn.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--quiet", "--no-report", "--out-dir", str(out)]) == 0
    return out


def test_explain_demo_dir_writes_one_report_with_every_model(demo_dir, capsys):
    assert main(["explain", "--demo-dir", str(demo_dir), "--samples", "8"]) == 0
    path = demo_dir / "explain.html"
    assert f"explain report: {path}" in capsys.readouterr().out
    page = path.read_text(encoding="utf-8")
    for label in ("RNN", "LSTM", "GRU"):
        assert f'id="inside-{label.lower()}"' in page
    assert 'id="training-plot"' in page, "the runs' epochs.csv became training curves"
    assert "8 samples of" in page


def test_explain_checkpoints_to_a_chosen_file(demo_dir, tmp_path):
    out = tmp_path / "mine.html"
    assert main(["explain", "--checkpoint", str(demo_dir / "lstm"), "--checkpoint", str(demo_dir / "gru" / "best"),
                 "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert len(re.findall(r"<img ", page)) == 1 + 2 * 2 + 1 + 1


@pytest.mark.parametrize("argv, message", [
    (["--demo-dir", "{empty}"], "holds no runs"),
    (["--checkpoint", "{empty}/missing"], "does not exist"),
    (["--checkpoint", "{demo}/lstm", "--out", "{empty}"], "directory"),
    (["--checkpoint", "{demo}/lstm", "--samples", "0"], "--samples"),
])
def test_explain_errors_are_one_line(demo_dir, tmp_path, capsys, argv, message):
    argv = [a.format(empty=tmp_path, demo=demo_dir) for a in argv]
    assert main(["explain", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("gatedrnn: error:") and message in error and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
