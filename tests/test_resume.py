"""A run killed by SIGKILL mid-epoch and resumed ends exactly where an uninterrupted run ends:
the same per-step losses (to the last bit, as written in steps.csv) and torch.equal weights."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gatedrnn.train import ConfigError, TrainConfig, Trainer
from gatedrnn.train.checkpoint import WEIGHTS_FILE, CheckpointError, read_meta, read_weights

# runs only the train sub-command, so this test does not depend on the other commands' modules
TRAIN = ("import argparse, sys; from gatedrnn.cli import train, CLIError; p = argparse.ArgumentParser(); "
         "train.add_arguments(p); a = p.parse_args(sys.argv[1:]);\n"
         "try: sys.exit(train.run(a))\nexcept CLIError as e: print('gatedrnn: error:', e, file=sys.stderr); sys.exit(2)")
# 96 examples / batch 16 = 6 steps per epoch, 3 epochs = 18 steps; two layers with dropout use the RNG
ARGS = ["--task", "adding", "-o", "seq_len=12", "-o", "n_train=96", "-o", "n_val=32", "-o", "n_test=32",
        "--cell", "lstm", "--hidden-size", "8", "--num-layers", "2", "--dropout", "0.3", "--batch-size", "16",
        "--epochs", "3", "--lr", "0.01", "--warmup-steps", "3", "--checkpoint-every", "4", "--threads", "1", "--quiet"]


def train(out_dir: Path, *extra: str, kill_after: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, GATEDRNN_TEST_KILL_AFTER_STEP=str(kill_after), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", TRAIN, *ARGS, "--out-dir", str(out_dir), *extra],
                          env=env, capture_output=True, text=True, timeout=300)


def step_rows(out_dir: Path) -> list[dict[str, str]]:
    with (out_dir / "steps.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return read_weights(directory, read_meta(directory))


def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = train(straight)
    assert done.returncode == 0, done.stderr

    # step 10 is in the middle of epoch 2 (steps 7..12); the last checkpoint before it is step 8
    crashed = train(killed, kill_after=10)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert read_meta(killed / "last")["position"] == {"epoch": 1, "batch_in_epoch": 2, "global_step": 8}
    assert len(step_rows(killed)) == 10  # steps 9 and 10 were logged, then lost with the process

    resumed = train(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr

    rows_straight, rows_resumed = step_rows(straight), step_rows(killed)
    assert len(rows_straight) == 18
    assert rows_resumed == rows_straight  # every step's loss, lr and gradient norm, exactly
    for name in ("last", "best"):
        a, b = weights(straight / name), weights(killed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name}/{WEIGHTS_FILE} differs"
    with (straight / "epochs.csv").open() as f1, (killed / "epochs.csv").open() as f2:
        straight_epochs = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f1)]
        resumed_epochs = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f2)]
    assert resumed_epochs == straight_epochs


def small_config(out_dir: Path, **changes) -> TrainConfig:
    settings = dict(task="adding", task_options={"seq_len": 6, "n_train": 32, "n_val": 16, "n_test": 16},
                    hidden_size=4, batch_size=16, epochs=1, out_dir=str(out_dir), tensorboard=False, progress=False)
    return TrainConfig(**{**settings, **changes})


def test_resume_refuses_a_truncated_checkpoint_and_leaves_it_untouched(tmp_path: Path) -> None:
    Trainer(small_config(tmp_path)).fit()
    state = tmp_path / "last" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=r"state\.pt.*truncated"):
        Trainer(small_config(tmp_path, epochs=2), resume=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("changed", [{"hidden_size": 5}, {"seed": 1}])
def test_resume_with_a_different_model_or_seed_is_refused(tmp_path: Path, changed: dict) -> None:
    Trainer(small_config(tmp_path)).fit()
    with pytest.raises(ConfigError, match=f"cannot resume.*{next(iter(changed))}"):
        Trainer(small_config(tmp_path, **changed), resume=True)


def test_a_new_run_never_overwrites_an_existing_one_unless_asked(tmp_path: Path) -> None:
    Trainer(small_config(tmp_path)).fit()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(small_config(tmp_path))
    assert Trainer(small_config(tmp_path), overwrite=True).fit().steps == 2
