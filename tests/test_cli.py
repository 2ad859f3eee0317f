"""The command line: every task trains from `gatedrnn train` to a stated quality, the other commands read
its checkpoints, bad arguments are one-line errors written before anything, --help documents every option."""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from gatedrnn.cli import build_parser
from gatedrnn.train import TrainConfig
from cli_runner import run_cli

COMMON = ["--quiet", "--no-tensorboard", "--batch-size", "32", "--lr", "0.01", "--threads", "1"]
# task -> (flags, check on the test metrics, what the check states). Small configurations, a few hundred
# steps at most; each threshold is a baseline from the task's documentation, beaten by a margin.
TASK_RUNS = {
    "adding": (["-o", "seq_len=10", "-o", "n_train=512", "-o", "n_val=128", "-o", "n_test=256", "--cell", "gru",
                "--hidden-size", "16", "--epochs", "19", "--max-steps", "300"],
               lambda m: m["mse"] < 0.2 * m["baseline_mse"], "test MSE < 0.2 x 0.167 (predicting the mean)"),
    "copy": (["-o", "delay=5", "-o", "copy_len=2", "-o", "n_train=512", "-o", "n_val=128", "-o", "n_test=256",
              "--cell", "gru", "--hidden-size", "32", "--epochs", "25", "--max-steps", "400"],
             lambda m: m["cross_entropy"] < 0.8 * m["baseline_cross_entropy"] and m["accuracy"] > 2 * m["baseline_accuracy"],
             "cross-entropy < 0.8 x memoryless, accuracy > 2 x chance (1/8)"),
    "temporal_order": (["-o", "seq_len=10", "-o", "n_train=512", "-o", "n_val=128", "-o", "n_test=256",
                        "--cell", "lstm", "--hidden-size", "16", "--epochs", "5", "--max-steps", "80"],
                       lambda m: m["accuracy"] > 0.9, "accuracy > 0.9 (chance 0.25)"),
    "sunspots": (["-o", "window=24", "--cell", "lstm", "--hidden-size", "16", "--epochs", "100", "--max-steps", "100"],
                 lambda m: m["rmse"] < 25.0, "test RMSE < 25 (seasonal naive 41.3, persistence 19.8)"),
    "vowels": (["--cell", "gru", "--hidden-size", "32", "--epochs", "100", "--max-steps", "60"],
               lambda m: m["accuracy"] > 0.8, "accuracy > 0.8 (chance 1/9)"),
    "charlm": (["-o", "max_chars=50000", "-o", "seq_len=50", "--cell", "lstm", "--hidden-size", "64",
                "--epochs", "100", "--max-steps", "100"],
               lambda m: m["bpc"] < 3.6, "test bpc < 3.6 (unigram about 4.3, uniform log2 V)"),
}



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """`--threads 1` (in COMMON) sets torch's global thread count in this process: restore it afterwards."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return {}


def trained(task: str, runs: dict, tmp_path_factory, capsys) -> Path:
    if task not in runs:
        out = tmp_path_factory.mktemp(task)
        flags, _, _ = TASK_RUNS[task]
        code, _, err = run_cli(capsys, "train", "--task", task, *flags, *COMMON, "--out-dir", str(out))
        assert code == 0, err
        runs[task] = out
    return runs[task]


@pytest.mark.parametrize("task", list(TASK_RUNS))
def test_each_task_trains_from_the_cli_to_its_threshold(task, runs, tmp_path_factory, capsys) -> None:
    out = trained(task, runs, tmp_path_factory, capsys)
    results = json.loads((out / "results.json").read_text())
    _, check, statement = TASK_RUNS[task]
    assert check(results["test"]), f"{task}: expected {statement}, got {results['test']}"
    assert (out / "best" / "model.safetensors").is_file() and (out / "last" / "state.pt").is_file()
    # `evaluate` reproduces the trainer's test metrics from the checkpoint
    code, stdout, err = run_cli(capsys, "evaluate", str(out), "--json")
    assert code == 0, err
    metric = json.loads(stdout)["metrics"]
    headline = {"adding": "mse", "copy": "accuracy", "temporal_order": "accuracy", "sunspots": "rmse",
                "vowels": "accuracy", "charlm": "bpc"}[task]
    assert metric[headline] == pytest.approx(results["test"][headline], rel=1e-5)


def test_predict_and_generate_read_checkpoints(runs, tmp_path_factory, capsys, tmp_path) -> None:
    adding = trained("adding", runs, tmp_path_factory, capsys)
    code, out, err = run_cli(capsys, "predict", str(adding), "--limit", "3", "--output", str(tmp_path / "p.csv"))
    assert code == 0, err
    rows = (tmp_path / "p.csv").read_text().strip().splitlines()
    assert len(rows) == 4
    predictions = [(float(r.split(",")[1]), float(r.split(",")[2])) for r in rows[1:]]
    assert all(abs(p - t) < 0.3 for p, t in predictions)
    import numpy as np
    import torch

    x = np.zeros((10, 2), dtype=np.float32)
    x[[2, 7], 0], x[[2, 7], 1] = [0.3, 0.4], 1.0
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_cli(capsys, "predict", str(adding), "--input", str(tmp_path / "x.npy"))
    assert code == 0, err
    assert abs(float(out.strip().splitlines()[-1].split()[1]) - 0.7) < 0.3

    charlm = trained("charlm", runs, tmp_path_factory, capsys)
    code, out, err = run_cli(capsys, "generate", str(charlm), "--prompt", "And God said", "--length", "40",
                             "--seed", "1")
    assert code == 0, err
    text = out.rstrip("\n")
    assert text.startswith("And God said") and len(text) == len("And God said") + 40
    again = run_cli(capsys, "generate", str(charlm), "--prompt", "And God said", "--length", "40", "--seed", "1")
    assert again[1] == out  # the same seed samples the same text
    code, _, err = run_cli(capsys, "generate", str(adding))
    assert code == 2 and "not a character-level language model" in err


def test_tasks_lists_every_task(capsys) -> None:
    from gatedrnn.tasks import TASKS

    code, out, _ = run_cli(capsys, "tasks", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [t["name"] for t in listed] == list(TASKS)
    assert all(t["description"] and t["baseline"] and t["metric"] for t in listed)


def test_config_file_and_flags(tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.toml"
    config.write_text('task = "adding"\nhidden_size = 12\nepochs = 1\nbatch_size = 16\n'
                      '[task_options]\nseq_len = 5\nn_train = 32\nn_val = 16\nn_test = 16\n')
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--hidden-size", "6", "--quiet",
                           "--out-dir", str(out))
    assert code == 0, err
    saved = TrainConfig.from_dict(json.loads((out / "best" / "meta.json").read_text())["config"])
    assert (saved.hidden_size, saved.epochs, saved.batch_size, saved.task_options["seq_len"]) == (6, 1, 16, 5)
    assert (out / "tensorboard").is_dir()


@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "nope"], "unknown task 'nope'"),
    (["train", "--cell", "transformer"], "unknown cell 'transformer'"),
    (["train", "--hidden-size", "-4"], "hidden_size should be an integer >= 1, got -4"),
    (["train", "--batch-size", "0"], "batch_size should be an integer >= 1, got 0"),
    (["train", "--epochs", "-1"], "epochs should be an integer >= 1"),
    (["train", "--lr", "-0.1"], "lr should be a number > 0"),
    (["train", "-o", "seq_len=-3"], "option 'seq_len' of task 'adding' should be >= 2"),
    (["train", "-o", "colour=3"], "unknown option 'colour'"),
    (["train", "--out-dir", "/proc/gatedrnn-run"], "is not writable"),
    (["train", "--task", "vowels", "-o", "train_path=/nonexistent/v.ts"], "does not exist"),
    (["train", "--config", "/nonexistent/run.toml"], "does not exist"),
    (["train", "--resume", "--out-dir", "{tmp}/never"], "cannot resume"),
    (["evaluate", "{tmp}/missing"], "does not exist"),
    (["predict", "{tmp}/missing"], "does not exist"),
    (["generate", "{tmp}/missing"], "does not exist"),
    (["demo", "--seq-len", "-5"], "--seq-len should be an integer >= 2"),
    (["demo", "--cells", "lstm,cnn"], "--cells should list some of"),
    (["demo", "--out-dir", "/proc/gatedrnn-demo"], "is not writable"),
    (["tasks", "nope"], "unknown task 'nope'"),
])
def test_bad_arguments_give_one_line_errors_and_write_nothing(argv, message, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a default out_dir (runs/...) would land here
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gatedrnn: error: ") and message in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_argument_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "gatedrnn", "train", "--task", "nope", "--out-dir", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


MINE = ("train", "evaluate", "predict", "generate", "tasks", "demo")


@pytest.mark.parametrize("command", MINE)
def test_help_documents_every_option(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = sub.format_help()
    for action in sub._actions:
        for option in action.option_strings:
            assert option in text
        if not isinstance(action, argparse._HelpAction):
            assert action.help and action.help != argparse.SUPPRESS, f"{command}: {action.dest} has no help"


def test_train_has_a_flag_for_every_config_field() -> None:
    parser = build_parser()
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    dests = {action.dest for action in train._actions}
    via = {"task_options": "task_option", "tensorboard": "no_tensorboard", "progress": "quiet"}
    for field in TrainConfig.__dataclass_fields__:
        assert via.get(field, field) in dests, f"no flag for TrainConfig.{field}"


def test_demo_quick_prints_the_table_and_writes_the_report(tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(capsys, "demo", "--quick", "--out-dir", str(tmp_path / "demo"))
    assert code == 0, err
    for header in ("cell", "parameters", "test MSE", "acc |err|<0.04", "seconds"):
        assert header in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["RNN"], ["LSTM"], ["GRU"])]
    assert [r[0] for r in rows] == ["RNN", "LSTM", "GRU"]
    assert all(0 <= float(r[2]) < 1 and 0 <= float(r[3]) <= 1 for r in rows)
    assert "always 1.0" in out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [r["cell"] for r in results["rows"]] == ["rnn", "lstm", "gru"]
    assert all(math.isfinite(r["test_mse"]) for r in results["rows"])
    assert (tmp_path / "demo" / "lstm" / "best" / "model.safetensors").is_file()
    report = Path(results["report"])
    assert report.is_file() and "explain report: " + str(report) in out
