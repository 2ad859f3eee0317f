"""Which parts of the LSTM matter, measured in the manner of Greff et al. 2017 ("LSTM: A Search Space
Odyssey"): `python -m gatedrnn.bench.greff_study [EXTRA_CELL ...] [--cells ...] [--seeds N] [--epochs N]`.

Each cell (default lstm, gru, rnn, then any extra names given, e.g. the LSTM variants lstm_nig, lstm_nfg,
lstm_nog, lstm_niaf, lstm_noaf, lstm_np, lstm_cifg, lstm_fgr, lstm_peephole once registered) is trained on
the `chorales` task (Bach chorales as piano rolls, frame NLL; `gatedrnn tasks chorales`) for every seed
with the same budget and hyperparameters, each run a `gatedrnn train` in a fresh process on one thread.
Greff et al. searched hyperparameters per variant (random search, 200 trials each); this study fixes
them (FLAGS below: Adam lr 0.01, batch 8, cosine schedule, gradient clipping 1) and varies only the seed,
so it compares the cells at one setting, not at each one's best.

The record goes to docs/results/greff_study.json: per cell and seed the test NLL (nats per frame), the
best epoch's val NLL, best epoch, steps and seconds; per cell the mean, std, min and max test NLL;
the data (pieces, split sizes, skipped scores), the task's baselines, the commands and the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path("docs/results/greff_study.json")
DEFAULT_CELLS = ("lstm", "gru", "rnn")
# Greff et al.'s variants as registered cells (`--variants`): their V (lstm_peephole), NIG, NFG, NOG, NIAF, NOAF,
# NP, CIFG and FGR, in `gatedrnn.cells.lstm_variants.GREFF_VARIANTS` order.
VARIANT_CELLS = ("lstm_peephole", "lstm_nig", "lstm_nfg", "lstm_nog", "lstm_niaf", "lstm_noaf", "lstm_np",
                 "lstm_cifg", "lstm_fgr")
FLAGS = ("--task", "chorales", "--batch-size", "8", "--lr", "0.01")


class StudyError(ValueError):
    """A study that cannot run as asked (an unknown cell, a bad count); the message says what was expected."""


def command(cell: str, seed: int, epochs: int, hidden_size: int) -> list[str]:
    """The `gatedrnn train` arguments of one run (without the output options)."""
    return ["train", *FLAGS, "--cell", cell, "--hidden-size", str(hidden_size), "--epochs", str(epochs),
            "--seed", str(seed)]


def run_one(cell: str, seed: int, epochs: int, hidden_size: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        argv = command(cell, seed, epochs, hidden_size)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gatedrnn", *argv, "--threads", "1", "--quiet", "--no-tensorboard",
                        "--out-dir", scratch, "--overwrite"], check=True)
        results = json.loads((Path(scratch) / "results.json").read_text())
    return {"cell": cell, "seed": seed, "command": "gatedrnn " + " ".join(argv), "test_nll": results["test"]["nll"],
            "test_accuracy": results["test"]["accuracy"], "val_nll": results["val"]["nll"],
            "best_epoch": results["best_epoch"], "steps": results["steps"], "parameters": results["parameters"],
            "seconds": time.perf_counter() - started}


def resolve_cells(cells: list[str], extra: list[str]) -> list[str]:
    """`cells` then `extra`, duplicates dropped; a name no model knows -> StudyError naming the known ones."""
    from gatedrnn.models import CELLS

    names = list(dict.fromkeys([*cells, *extra]))
    unknown = [name for name in names if name not in CELLS]
    if unknown:
        raise StudyError(f"unknown cell(s) {unknown}: expected names registered with gatedrnn.models.register_cell, "
                         f"now {sorted(CELLS)}")
    if not names:
        raise StudyError("no cells to train: give --cells or extra cell names")
    return names


def summary(runs: list[dict], cells: list[str]) -> dict:
    """Per cell: runs, mean, std (0 for one run), min and max of the test NLL."""
    out = {}
    for cell in cells:
        values = [r["test_nll"] for r in runs if r["cell"] == cell]
        out[cell] = {"runs": len(values), "mean_test_nll": statistics.fmean(values),
                     "std_test_nll": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "min_test_nll": min(values), "max_test_nll": max(values)}
    return out


def data_record() -> dict:
    """What the runs train on (read through the task, so the parse is cached before the runs start)."""
    from gatedrnn.tasks import get_task

    task = get_task("chorales")
    chorales = task.chorales
    sizes = {split: len(rows) for split, rows in task.split_indices().items()}
    return {"task_options": dict(task.options), "pieces": len(chorales), "split": sizes,
            "frames": sum(len(r) for r in chorales.rolls), "skipped": [list(s) for s in chorales.skipped],
            "baselines": task.baselines()}


def merge_base(path: Path, seeds: int, epochs: int, hidden_size: int) -> dict:
    """The record that `--add` extends; StudyError when it is missing, unreadable or from other settings (a table
    mixing settings would compare unlike runs)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StudyError(f"--add extends an existing record, and {path} cannot be read: {error}") from error
    wanted = {"seeds": seeds, "epochs": epochs, "hidden_size": hidden_size, "flags": list(FLAGS)}
    differs = {key: (record.get(key), value) for key, value in wanted.items() if record.get(key) != value}
    if differs:
        raise StudyError(f"--add needs the record's settings; {path} differs in (record, asked): {differs}")
    return record


def merged(previous: dict, added: dict) -> dict:
    """`previous` with `added`'s cells (their runs replace any earlier ones); the added runs' date, commit and
    machine are kept under "additions"."""
    cells = added["cells"]
    record = dict(previous)
    record["cells"] = [c for c in previous["cells"] if c not in cells] + cells
    record["runs"] = [r for r in previous["runs"] if r["cell"] not in cells] + added["runs"]
    record["summary"] = {**{c: v for c, v in previous["summary"].items() if c not in cells}, **added["summary"]}
    record["additions"] = [a for a in previous.get("additions", []) if not set(a["cells"]) & set(cells)] + [
        {"cells": cells, "date": added["date"], "environment": added["environment"]}]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gatedrnn.bench.greff_study", description=__doc__.splitlines()[0])
    parser.add_argument("extra", nargs="*", metavar="CELL", help="more cells after --cells (e.g. lstm_nig lstm_cifg)")
    parser.add_argument("--cells", nargs="+", default=list(DEFAULT_CELLS),
                        help=f"the cells to train (default: {' '.join(DEFAULT_CELLS)})")
    parser.add_argument("--variants", action="store_true",
                        help=f"after --cells and CELL, every Greff variant ({' '.join(VARIANT_CELLS)})")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per cell (default: 5)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per run, 31 steps each (default: 40)")
    parser.add_argument("--hidden-size", type=int, default=100, help="hidden units (default: 100)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default: 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"the record (default: {RESULTS})")
    parser.add_argument("--add", action="store_true",
                        help="train only these cells and add them to the existing record (same seeds, epochs, "
                             "hidden size and flags; the record keeps its other cells' runs)")
    args = parser.parse_args(argv)
    for name in ("seeds", "epochs", "hidden_size", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} should be an integer >= 1, got {getattr(args, name)}")
    try:
        cells = resolve_cells(args.cells, [*args.extra, *(VARIANT_CELLS if args.variants else ())])
    except StudyError as error:
        parser.error(str(error))
    from gatedrnn.bench.environment import environment

    previous = None
    if args.add:
        try:
            previous = merge_base(args.out, args.seeds, args.epochs, args.hidden_size)
        except StudyError as error:
            parser.error(str(error))
    started = time.time()
    data = data_record()
    plan = [(cell, seed) for seed in range(args.seeds) for cell in cells]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each run is its own process
        runs = list(pool.map(lambda job: run_one(*job, args.epochs, args.hidden_size), plan))
    record = {"date": time.strftime("%Y-%m-%d", time.gmtime(started)), "task": "chorales", "metric": "test_nll",
              "unit": "nats per frame", "cells": cells, "seeds": args.seeds, "epochs": args.epochs,
              "hidden_size": args.hidden_size, "flags": list(FLAGS), "jobs": args.jobs, "data": data,
              "summary": summary(runs, cells), "runs": runs, "environment": environment(threads=1)}
    if previous is not None:
        record = merged(previous, record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    for cell, row in record["summary"].items():
        print(f"{cell:<14} test NLL {row['mean_test_nll']:.3f} ± {row['std_test_nll']:.3f} "
              f"(min {row['min_test_nll']:.3f}, {row['runs']} runs)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
