"""The full training runs behind the README's task table: `python -m gatedrnn.bench.task_runs [--only TASK]`.

Each run is `gatedrnn train --task TASK --cell CELL <flags>` in a fresh process, one thread; its
results.json, the task's `baselines()` for the same options, the command and the machine (CPU, versions,
commit) are written to docs/results/tasks/<task>-<cell>.json. `python -m gatedrnn.bench.readme` renders the table from those files.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path("docs/results/tasks")
# task -> (what the README calls it, cells, flags shared by the cells)
RUNS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "adding": ("`adding` (T=100)", ("lstm", "gru", "rnn"),
               ("-o", "seq_len=100", "-o", "n_train=6400", "--hidden-size", "32", "--batch-size", "64", "--lr", "0.01")),
    "copy": ("`copy` (delay 10, 5 symbols)", ("gru",),
             ("-o", "delay=10", "-o", "copy_len=5", "-o", "n_train=6400", "--hidden-size", "64", "--lr", "0.005",
              "--batch-size", "64", "--epochs", "40", "--schedule", "none")),
    "temporal_order": ("`temporal_order` (L=100)", ("gru",),
                       ("-o", "seq_len=100", "-o", "n_train=6400", "--hidden-size", "32", "--lr", "0.005",
                        "--batch-size", "64", "--epochs", "25", "--schedule", "none")),
    "sunspots": ("`sunspots`", ("lstm", "gru", "rnn"),
                 ("-o", "window=60", "--hidden-size", "32", "--lr", "0.003", "--batch-size", "32", "--epochs", "15")),
    "vowels": ("`vowels`", ("lstm", "gru", "rnn"),
               ("--hidden-size", "64", "--lr", "0.005", "--batch-size", "32", "--epochs", "15")),
    "charlm": ("`charlm`", ("lstm",),
               ("-o", "seq_len=100", "--hidden-size", "256", "--lr", "0.003", "--batch-size", "64",
                "--max-steps", "3000")),
}


def command(task: str, cell: str) -> list[str]:
    """The `gatedrnn train` arguments of one run (without the output options)."""
    return ["train", "--task", task, "--cell", cell, *RUNS[task][2]]


def run_one(task: str, cell: str, results_dir: Path) -> Path:
    from gatedrnn.bench.environment import environment

    with tempfile.TemporaryDirectory() as scratch:
        argv = command(task, cell)
        started = time.time()
        subprocess.run([sys.executable, "-m", "gatedrnn", *argv, "--threads", "1", "--quiet", "--no-tensorboard",
                        "--out-dir", scratch, "--overwrite"], check=True)
        results = json.loads((Path(scratch) / "results.json").read_text())
    record = {"task": task, "cell": cell, "command": "gatedrnn " + " ".join(argv), "threads": 1,
              "date": time.strftime("%Y-%m-%d", time.gmtime(started)), "results": results,
              "baselines": baselines(task, results["task_options"]), "environment": environment(threads=1)}
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{task}-{cell}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def baselines(task: str, options: dict) -> dict[str, float]:
    """The task's computed (and published) baselines for these options."""
    from gatedrnn.tasks import get_task

    return get_task(task, **options).baselines()


def add_baselines(path: Path) -> None:
    """Compute the baselines of an existing record again (they depend on the data, not on the run)."""
    record = json.loads(path.read_text())
    record["baselines"] = baselines(record["task"], record["results"]["task_options"])
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gatedrnn.bench.task_runs", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(RUNS), help="run only this task (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"where the records go (default: {RESULTS_DIR})")
    parser.add_argument("--baselines-only", dest="baselines_only", action="store_true",
                        help="only compute the baselines of the existing records again")
    args = parser.parse_args(argv)
    for task in args.only or list(RUNS):
        for cell in RUNS[task][1]:
            if args.baselines_only:
                add_baselines(args.out / f"{task}-{cell}.json")
            else:
                print(f"{task} {cell}: {run_one(task, cell, args.out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
