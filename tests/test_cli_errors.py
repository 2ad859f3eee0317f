"""The command line attacked by a careless or hostile user: every error is one line with exit code 2 and no
traceback (--debug prints it), training refuses non-finite settings and stops on a NaN loss keeping its
last good checkpoint, checkpoints notice an edited meta.json and clean up after killed writers, and
`predict --output` never overwrites a checkpoint (nor anything else without --force)."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gatedrnn.train import checkpoint as ckpt
from cli_runner import run_cli

SMALL = ["--task", "adding", "-o", "seq_len=6", "-o", "n_train=32", "-o", "n_val=16", "-o", "n_test=16",
         "--hidden-size", "4", "--batch-size", "16", "--epochs", "1", "--quiet", "--no-tensorboard", "--threads", "1"]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)



def one_line_error(code: int, err: str, *expected: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gatedrnn: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def files(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def run_dir(tmp_path: Path, capsys) -> Path:
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *SMALL, "--out-dir", str(out))
    assert code == 0, err
    return out


def test_resume_with_a_corrupt_best_checkpoint_is_one_line(run_dir: Path, capsys) -> None:
    weights = run_dir / "best" / ckpt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-10])
    before = files(run_dir)
    code, _, err = run_cli(capsys, "train", *SMALL, "--epochs", "2", "--out-dir", str(run_dir), "--resume")
    one_line_error(code, err, "cannot resume", str(weights), "truncated or modified", "last/ is fine")
    assert files(run_dir) == before


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_old_one(run_dir: Path, capsys,
                                                                           monkeypatch) -> None:
    before = files(run_dir / "last")
    write = ckpt._write_synced

    def disk_full(path: Path, data: bytes) -> None:
        if ".last.tmp-" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    monkeypatch.setattr(ckpt, "_write_synced", disk_full)
    code, _, err = run_cli(capsys, "train", *SMALL, "--epochs", "2", "--out-dir", str(run_dir), "--resume")
    one_line_error(code, err, "No space left on device", "previous checkpoint", "intact")
    assert files(run_dir / "last") == before
    assert not list(run_dir.glob(".last.*")), "the half-written checkpoint was left behind"
    ckpt.read_state(run_dir / "last", ckpt.read_meta(run_dir / "last"))


@pytest.mark.parametrize("flags, message", [
    (["--dropout", "1.0", "--num-layers", "2"], "dropout should be a number >= 0.0 and < 1.0"),
    (["--lr", "inf"], "lr should be a number > 0.0, and finite, got inf"),
    (["--lr", "nan"], "lr should be a number > 0.0, and finite, got nan"),
    (["--weight-decay", "inf"], "weight_decay should be a number >= 0.0, and finite, got inf"),
    (["--clip-norm", "inf"], "clip_norm should be a number > 0.0, and finite, got inf"),
])
def test_bad_hyperparameters_are_one_line_and_write_nothing(flags: list, message: str, tmp_path: Path,
                                                            capsys) -> None:
    code, _, err = run_cli(capsys, "train", *SMALL, *flags, "--out-dir", str(tmp_path / "run"))
    one_line_error(code, err, message)
    assert list(tmp_path.iterdir()) == []


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path: Path, capsys, monkeypatch) -> None:
    from gatedrnn.train import trainer

    calls, forward = [], trainer.forward

    def poisoned(model, inputs):  # the third training step's output is NaN
        calls.append(1)
        output = forward(model, inputs)
        return output * float("nan") if len(calls) == 3 else output

    monkeypatch.setattr(trainer, "forward", poisoned)
    out = tmp_path / "run"  # 32 examples / batch 16: steps 1, 2 in epoch 1; the third step's loss is NaN
    code, _, err = run_cli(capsys, "train", *SMALL, "--epochs", "3", "--checkpoint-every", "1", "--out-dir", str(out))
    line = one_line_error(code, err, "the training loss became nan at step 3", str(out / "last"), "(step 2)")
    assert "lower lr" in line
    meta = ckpt.read_meta(out / "last")
    assert meta["position"]["global_step"] == 2
    weights = ckpt.read_weights(out / "last", meta)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "results.json").exists()


def test_predict_reads_an_integer_npy(run_dir: Path, tmp_path: Path, capsys) -> None:
    values = np.arange(12).reshape(6, 2) % 2  # (T, I) integers: 0/1 values and markers
    np.save(tmp_path / "ints.npy", values.astype(np.int64))
    np.save(tmp_path / "floats.npy", values.astype(np.float32))
    code, from_ints, err = run_cli(capsys, "predict", str(run_dir), "--input", str(tmp_path / "ints.npy"))
    assert code == 0, err
    code, from_floats, err = run_cli(capsys, "predict", str(run_dir), "--input", str(tmp_path / "floats.npy"))
    assert code == 0 and from_ints == from_floats
    np.save(tmp_path / "bools.npy", values.astype(bool))
    code, _, err = run_cli(capsys, "predict", str(run_dir), "--input", str(tmp_path / "bools.npy"))
    one_line_error(code, err, "should hold real numbers, got dtype torch.bool")


@pytest.mark.parametrize("target", ["best/model.safetensors", "best/meta.json", "last/predictions.csv"])
def test_predict_output_never_writes_into_a_checkpoint(run_dir: Path, capsys, target: str) -> None:
    before = files(run_dir)
    code, _, err = run_cli(capsys, "predict", str(run_dir), "--output", str(run_dir / target), "--force")
    one_line_error(code, err, "inside the checkpoint folder")
    assert files(run_dir) == before


def test_predict_output_replaces_a_file_only_with_force(run_dir: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "mine.csv"
    output.write_text("precious")
    code, _, err = run_cli(capsys, "predict", str(run_dir), "--output", str(output))
    one_line_error(code, err, "exists; pass --force")
    assert output.read_text() == "precious"
    code, _, err = run_cli(capsys, "predict", str(run_dir), "--output", str(output), "--force")
    assert code == 0, err
    assert output.read_text().startswith("index,prediction,target")


@pytest.mark.parametrize("edit", ["lr", "digest"])
def test_an_edited_meta_json_is_refused(run_dir: Path, capsys, edit: str) -> None:
    meta_path = run_dir / "last" / ckpt.META_FILE
    meta = json.loads(meta_path.read_text())
    if edit == "lr":
        meta["config"]["lr"] = 0.5
    else:
        meta["files"][ckpt.STATE_FILE]["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    code, _, err = run_cli(capsys, "train", *SMALL, "--epochs", "2", "--out-dir", str(run_dir), "--resume")
    line = one_line_error(code, err, str(meta_path), "was modified")
    assert ckpt.STATE_FILE not in line


def test_a_reformatted_meta_json_still_loads(run_dir: Path) -> None:
    meta_path = run_dir / "best" / ckpt.META_FILE
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text())))  # whitespace only
    ckpt.load_model(run_dir)


def test_leftover_temporary_folders_are_removed_at_the_next_save(run_dir: Path, capsys) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)  # a process that has exited: its pid is free
    stale = run_dir / f".last.tmp-{dead}"
    stale.mkdir()
    (stale / ckpt.WEIGHTS_FILE).write_bytes(b"half")
    code, _, err = run_cli(capsys, "train", *SMALL, "--epochs", "2", "--out-dir", str(run_dir), "--resume")
    assert code == 0, err
    assert not stale.exists()


def test_debug_prints_the_traceback(tmp_path: Path, capsys) -> None:
    argv = ["train", *SMALL, "--lr", "inf", "--out-dir", str(tmp_path / "run")]
    code, _, err = run_cli(capsys, "--debug", *argv)
    assert code == 2 and "Traceback (most recent call last)" in err and err.strip().endswith("finite, got inf")
    code, _, err = run_cli(capsys, *argv, "--debug")
    assert code == 2 and "Traceback (most recent call last)" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["train", "--colour", "red"], "unrecognized arguments: --colour red"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_argument_errors_are_one_line(argv: list, message: str, capsys) -> None:
    code, _, err = run_cli(capsys, *argv)
    one_line_error(code, err, message, "--help")


def test_an_unexpected_exception_is_one_line(capsys, monkeypatch) -> None:
    from gatedrnn.cli import tasks

    def broken(args):
        raise KeyError("surprise")

    monkeypatch.setattr(tasks, "run", broken)
    code, _, err = run_cli(capsys, "tasks")
    one_line_error(code, err, "KeyError: 'surprise'", "--debug")
