"""`torchrun --nproc_per_node=2 -m gatedrnn train ...` on CPU with gloo: the ranks end with identical weights,
and with the same global batch the run equals the single-process run within float tolerance."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gatedrnn
from gatedrnn.train import TrainConfig, Trainer
from gatedrnn.train.checkpoint import read_meta, read_weights

# 64 examples, global batch 16: 4 steps per epoch; under torchrun each rank takes 8 of every 16
ARGS = ["--task", "adding", "-o", "seq_len=10", "-o", "n_train=64", "-o", "n_val=32", "-o", "n_test=32",
        "--cell", "gru", "--hidden-size", "8", "--batch-size", "16", "--epochs", "3", "--lr", "0.02",
        "--checkpoint-every", "2", "--no-tensorboard", "--quiet"]


def environment(kill_after: int = 0) -> dict[str, str]:
    # gloo on the loopback interface: no guessing an interface from the host name; tracebacks on SIGABRT
    return dict(os.environ, OMP_NUM_THREADS="1", GATEDRNN_TEST_KILL_AFTER_STEP=str(kill_after),
                GLOO_SOCKET_IFNAME="lo", PYTHONFAULTHANDLER="1")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (torchrun starts each rank in a session of its own)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def torchrun(out_dir: Path, *extra: str, kill_after: int = 0, timeout: float = 150) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m gatedrnn train ARGS` (about 10 s here). A run that hangs past
    `timeout` (seen once in CI) gets its ranks' Python stacks printed (SIGABRT, faulthandler), is stopped, and is
    tried once more from the same `out_dir` contents; a second hang fails the test with those stacks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "gatedrnn", "train", *ARGS, "--out-dir", str(out_dir), *extra]
    before = out_dir.with_name(out_dir.name + ".before")
    shutil.rmtree(before, ignore_errors=True)
    if out_dir.exists():
        shutil.copytree(out_dir, before)
    hang = ""
    for _ in range(2):
        process = subprocess.Popen(command, env=environment(kill_after), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
            shutil.rmtree(before, ignore_errors=True)
            return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            ranks = children(process.pid)
            for pid in ranks:
                os.kill(pid, signal.SIGABRT)
            time.sleep(3)
            process.terminate()  # torchrun stops whatever rank is left
            try:
                _, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in [*ranks, process.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _, stderr = process.communicate()
            hang = stderr[-8000:]
            shutil.rmtree(out_dir, ignore_errors=True)
            if before.exists():
                shutil.copytree(before, out_dir)
    pytest.fail(f"torchrun hung twice past {timeout} s; its stderr, with the ranks' stacks, at the second:\n{hang}")


@pytest.fixture(scope="module", autouse=True)
def warm_engine() -> None:
    """Build (or load) the fused extension once here, so the two ranks do not both compile it."""
    gatedrnn.GRU(2, 4, batch_first=True)(torch.zeros(1, 3, 2))


def losses(out_dir: Path) -> list[float]:
    with (out_dir / "steps.csv").open(newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return read_weights(directory, read_meta(directory))


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    single, double = tmp_path / "single", tmp_path / "ddp"
    config = TrainConfig(task="adding", task_options={"seq_len": 10, "n_train": 64, "n_val": 32, "n_test": 32},
                         cell="gru", hidden_size=8, batch_size=16, epochs=3, lr=0.02, checkpoint_every=2,
                         tensorboard=False, progress=False, out_dir=str(single))
    Trainer(config).fit()  # the same settings as ARGS, in this process
    two = torchrun(double)
    assert two.returncode == 0, two.stderr[-3000:]

    results = json.loads((double / "results.json").read_text())
    assert results["world_size"] == 2
    digests = results["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # identical weights on both ranks

    assert len(losses(double)) == len(losses(single)) == 12
    assert losses(double) == pytest.approx(losses(single), rel=1e-4, abs=1e-6)
    a, b = weights(single / "last"), weights(double / "last")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    # only rank 0 wrote: one set of files, no stray temporary directories
    assert sorted(p.name for p in double.iterdir()) == sorted(p.name for p in single.iterdir())


def test_two_processes_killed_mid_epoch_resume_exactly(tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert torchrun(straight).returncode == 0
    assert torchrun(killed, kill_after=7).returncode != 0  # both ranks die at step 7 (epoch 2, after step 6's save)
    assert read_meta(killed / "last")["position"]["global_step"] == 6
    resumed = torchrun(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (killed / "steps.csv").read_text() == (straight / "steps.csv").read_text()
    a, b = weights(straight / "last"), weights(killed / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _caller_owned_group_worker(rank: int, directory: str) -> None:
    """One rank of a script that makes its own gloo group, trains with Trainer, then uses the group again."""
    import torch.distributed as dist

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=2)
    try:
        config = TrainConfig(task="adding", task_options={"seq_len": 5, "n_train": 32, "n_val": 16, "n_test": 16},
                             cell="gru", hidden_size=4, batch_size=8, epochs=1, lr=0.02, tensorboard=False,
                             progress=False, out_dir=f"{directory}/run")
        trainer = Trainer(config)
        trainer.fit()
        still_there = dist.is_initialized()
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)  # the caller's group still works after fit
        torch.save({"owns": trainer.owns_group, "initialized": still_there,
                    "unwrapped": trainer.model is trainer.module, "sum": float(total)}, f"{directory}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fit_leaves_a_group_the_caller_made_and_drops_its_wrapper(tmp_path: Path) -> None:
    """Trainer.leave_group at the end of fit: the DDP wrapper is dropped on every rank (before any group could go),
    and a process group the caller created stays initialised and usable; only one fit created is destroyed."""
    import torch.multiprocessing as mp

    mp.spawn(_caller_owned_group_worker, args=(str(tmp_path),), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == {"owns": False, "initialized": True, "unwrapped": True,
                                                             "sum": 3.0}
