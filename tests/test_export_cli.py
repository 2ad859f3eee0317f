"""`gatedrnn export RUN_DIR model.onnx`, end to end on a tiny training run: the ONNX file holds ONNX's
recurrent operator, runs in onnxruntime at other batch sizes and lengths equal to PyTorch, and every
mistake is a one-line error with exit code 2 that writes nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gatedrnn.cli import main
from cli_runner import run_cli

ort = pytest.importorskip("onnxruntime")



@pytest.fixture(scope="module")
def copy_run(tmp_path_factory) -> Path:
    """A few steps of a GRU on the copy task: per-step outputs, so the time axis reaches the output."""
    out = tmp_path_factory.mktemp("copy")
    threads = torch.get_num_threads()
    try:
        code = main(["train", "--task", "copy", "-o", "delay=3", "-o", "copy_len=2", "-o", "n_train=64",
                     "-o", "n_val=32", "-o", "n_test=32", "--cell", "gru", "--hidden-size", "8", "--epochs", "1",
                     "--max-steps", "3", "--quiet", "--no-tensorboard", "--batch-size", "32", "--threads", "1",
                     "--out-dir", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out


def test_export_writes_a_checked_onnx_model(copy_run, tmp_path, capsys):
    import onnx

    from gatedrnn.train.checkpoint import load_model

    target = tmp_path / "model.onnx"
    code, out, err = run_cli(capsys, "export", str(copy_run), str(target))
    assert code == 0, err
    difference = float(out.split("max abs difference onnxruntime vs PyTorch: ")[1].split()[0])
    assert difference <= 1e-4
    assert "GRU" in [node.op_type for node in onnx.load(target).graph.node]
    model, _, _ = load_model(copy_run)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 11, model.rnn.input_size)  # another batch size and length than the export's
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], model(x).numpy(), atol=1e-5, rtol=0)

    # an existing file is kept without --force, replaced with it
    target.write_bytes(b"keep")
    code, _, err = run_cli(capsys, "export", str(copy_run), str(target))
    assert code == 2 and "--force" in err and err.count("\n") == 1 and target.read_bytes() == b"keep"
    code, _, err = run_cli(capsys, "export", str(copy_run), str(target), "--force")
    assert code == 0, err
    assert target.read_bytes() != b"keep"


@pytest.mark.parametrize("argv,message", [
    (["export", "{missing}", "{out}"], "does not exist"),
    (["export", "{run}", "{out}", "--tolerance", "0"], "differs from PyTorch by"),
    (["export", "{run}", "{nodir}"], "output directory"),
])
def test_export_mistakes_are_one_line_errors_that_write_nothing(argv, message, copy_run, tmp_path, capsys):
    paths = {"missing": str(tmp_path / "no-run"), "run": str(copy_run), "out": str(tmp_path / "m.onnx"),
             "nodir": str(tmp_path / "no-dir" / "m.onnx")}
    code, _, err = run_cli(capsys, *[a.format(**paths) for a in argv])
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("gatedrnn: error:")
    assert not (tmp_path / "m.onnx").exists()


def test_help_documents_every_option():
    import argparse

    from gatedrnn.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["export"]
    text = sub.format_help()
    for action in sub._actions:
        assert all(option in text for option in action.option_strings)
        assert isinstance(action, argparse._HelpAction) or (action.help and action.help != argparse.SUPPRESS)
