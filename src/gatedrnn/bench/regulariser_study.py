"""What the recurrent regularisers buy, measured: `python -m gatedrnn.bench.regulariser_study [--seeds N]`.

The character-level LSTM language model on the King James Bible (`gatedrnn tasks charlm`), cut to its first
`MAX_CHARS` characters so that a 256-unit LSTM overfits within the budget, trained for the same number of
steps with each regulariser setting of `SETTINGS`: none, weight drop on W_hh (Merity et al. 2018), variational
recurrent dropout (Gal & Ghahramani 2016), both together (AWD-LSTM's pair), and zoneout (Krueger et al. 2017).
Each run is `gatedrnn train` in a fresh process on one thread; the record keeps the test bits per character
(of the best-validation checkpoint), the commands and the machine, in docs/results/regulariser_study.json;
`python -m gatedrnn.bench.readme` renders the README table from it.
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

RESULTS = Path("docs/results/regulariser_study.json")
MAX_CHARS = 60_000  # small enough that the unregularised LSTM overfits within the budget
FLAGS = ("--task", "charlm", "--cell", "lstm", "-o", "seq_len=64", "--hidden-size", "256", "--batch-size", "32",
         "--lr", "0.003")
SETTINGS: dict[str, tuple[str, ...]] = {
    "none": (),
    "weight drop 0.5": ("--weight-drop", "0.5"),
    "recurrent dropout 0.25": ("--recurrent-dropout", "0.25"),
    "weight drop 0.5 + recurrent dropout 0.25": ("--weight-drop", "0.5", "--recurrent-dropout", "0.25"),
    "zoneout 0.1": ("--zoneout", "0.1"),
}


def command(setting: str, seed: int, epochs: int, max_chars: int = MAX_CHARS) -> list[str]:
    """The `gatedrnn train` arguments of one run (without the output options)."""
    return ["train", *FLAGS, "-o", f"max_chars={max_chars}", *SETTINGS[setting], "--epochs", str(epochs),
            "--seed", str(seed)]


def run_one(setting: str, seed: int, epochs: int, max_chars: int = MAX_CHARS) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        argv = command(setting, seed, epochs, max_chars)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gatedrnn", *argv, "--threads", "1", "--quiet", "--no-tensorboard",
                        "--out-dir", scratch, "--overwrite"], check=True)
        results = json.loads((Path(scratch) / "results.json").read_text())
    return {"setting": setting, "seed": seed, "command": "gatedrnn " + " ".join(argv),
            "test_bpc": results["test"]["bpc"], "val_bpc": results.get("val", {}).get("bpc"),
            "best_epoch": results.get("best_epoch"), "steps": results["steps"],
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gatedrnn.bench.regulariser_study",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per setting (default: 2)")
    parser.add_argument("--epochs", type=int, default=60, help="epochs per run (default: 60)")
    parser.add_argument("--max-chars", type=int, default=MAX_CHARS,
                        help=f"the corpus's first characters to use (default: {MAX_CHARS:,})")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default: 2)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                        help="which settings to run (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"the record (default: {RESULTS})")
    args = parser.parse_args(argv)
    from gatedrnn.bench.environment import environment

    started = time.time()
    plan = [(setting, seed) for seed in range(args.seeds) for setting in args.settings]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each run is its own process
        runs = list(pool.map(lambda job: run_one(*job, args.epochs, args.max_chars), plan))
    record = {"date": time.strftime("%Y-%m-%d", time.gmtime(started)), "task": "charlm", "max_chars": args.max_chars,
              "epochs": args.epochs, "jobs": args.jobs, "runs": runs, "environment": environment(threads=1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    for setting in args.settings:
        mine = [r for r in runs if r["setting"] == setting]
        print(f"{setting:<42} test bpc " + ", ".join(f"{r['test_bpc']:.3f}" for r in mine))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
