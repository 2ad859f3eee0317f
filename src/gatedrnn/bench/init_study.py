"""What the gate-bias inits buy, measured: `python -m gatedrnn.bench.init_study [--seeds N] [--steps N]`.

The LSTM on the adding problem at T = 200 (the task of Hochreiter & Schmidhuber 1997; `gatedrnn tasks`),
one run per seed and init (`--init default`, `forget-bias`, `chrono`), each `gatedrnn train` in a fresh
process on one thread. A run counts as solved when its test MSE is below a tenth of the mean predictor's
(the baseline every model starts at). The records go to docs/results/init_study.json with the commands and
the machine; `python -m gatedrnn.bench.readme` renders the README table from it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path("docs/results/init_study.json")
INITS = ("default", "forget-bias", "chrono")
FLAGS = ("--task", "adding", "--cell", "lstm", "-o", "seq_len=200", "-o", "n_train=6400", "--hidden-size", "32",
         "--batch-size", "64", "--lr", "0.01")
SOLVED_FRACTION = 0.1  # solved: test MSE < 0.1 x the mean predictor's


def command(init: str, seed: int, epochs: int) -> list[str]:
    """The `gatedrnn train` arguments of one run (without the output options)."""
    return ["train", *FLAGS, "--epochs", str(epochs), "--seed", str(seed), "--init", init]


def run_one(init: str, seed: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        argv = command(init, seed, epochs)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gatedrnn", *argv, "--threads", "1", "--quiet", "--no-tensorboard",
                        "--out-dir", scratch, "--overwrite"], check=True)
        results = json.loads((Path(scratch) / "results.json").read_text())
    test = results["test"]
    return {"init": init, "seed": seed, "command": "gatedrnn " + " ".join(argv), "test_mse": test["mse"],
            "baseline_mse": test["baseline_mse"], "solved": test["mse"] < SOLVED_FRACTION * test["baseline_mse"],
            "steps": results["steps"], "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gatedrnn.bench.init_study", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per init (default: 5)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of 100 steps per run (default: 30)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default: 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"the record (default: {RESULTS})")
    args = parser.parse_args(argv)
    from gatedrnn.bench.environment import environment

    started = time.time()
    plan = [(init, seed) for seed in range(args.seeds) for init in INITS]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each run is its own process
        runs = list(pool.map(lambda job: run_one(*job, args.epochs), plan))
    record = {"date": time.strftime("%Y-%m-%d", time.gmtime(started)), "task": "adding", "seq_len": 200,
              "solved_fraction": SOLVED_FRACTION, "jobs": args.jobs, "runs": runs,
              "environment": environment(threads=1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    for init in INITS:
        mine = [r for r in runs if r["init"] == init]
        print(f"{init:<12} solved {sum(r['solved'] for r in mine)} of {len(mine)}; test MSE "
              + ", ".join(f"{r['test_mse']:.4f}" for r in mine))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
