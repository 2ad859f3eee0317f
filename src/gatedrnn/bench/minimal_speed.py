"""minGRU training speed against torch.nn.GRU: `python -m gatedrnn.bench.minimal_speed [--json PATH]`.

One training step (forward + backward of a sum over the outputs) at T = 1024, B = 16, H = 256, input 256 by
default, for `gatedrnn.MinGRU` (its default scan on the device) and `torch.nn.GRU`, interleaved (one run of
each per round, so load changes hit both), after a warm-up; the median of the rounds and the ratio
GRU / MinGRU are printed (and written as JSON with --json). The issue's target is a ratio >= 5.

Run it on an otherwise idle machine: torch.nn.GRU's per-step small GEMMs synchronise the thread pool 2T
times, so on cores shared with other work its time (and the ratio) inflates far more than MinGRU's;
`--threads 1` is the measurement least sensitive to that. MinGRU does a third of GRU's matmul FLOPs, so its
GEMMs alone bound the ratio near 6x at one thread.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from gatedrnn.layers import MinGRU, MinLSTM


def _train_step(layer: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        output, _ = layer(x)
        output.sum().backward()

    return step


def measure(*, steps: int, batch: int, hidden: int, input_size: int, rounds: int, threads: int,
            cell: str = "mingru", scan: str = "auto") -> dict:
    """Median seconds per training step of MinGRU (or MinLSTM) and torch.nn.GRU, and their ratio."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(steps, batch, input_size, requires_grad=True)
    minimal = (MinGRU if cell == "mingru" else MinLSTM)(input_size, hidden, scan=scan)
    gru = torch.nn.GRU(input_size, hidden)
    runs = {"minimal": _train_step(minimal, x), "torch_gru": _train_step(gru, x)}
    for run in runs.values():  # warm-up: allocator, thread pool, MKL
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "cell": cell, "scan": minimal.resolved_scan(x.device), "steps": steps, "batch": batch, "hidden": hidden,
        "input_size": input_size, "rounds": rounds, "threads": torch.get_num_threads(),
        "median_seconds": medians, "all_seconds": times,
        "speedup": medians["torch_gru"] / medians["minimal"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gatedrnn.bench.minimal_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1024, help="sequence length T (default: 1024)")
    parser.add_argument("--batch", type=int, default=16, help="batch B (default: 16)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size H (default: 256)")
    parser.add_argument("--input-size", type=int, default=256, help="input size (default: 256)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds, >= 1 (default: 7)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: 0, torch's default)")
    parser.add_argument("--cell", choices=("mingru", "minlstm"), default="mingru")
    parser.add_argument("--scan", choices=("auto", "log", "linear"), default="auto")
    parser.add_argument("--json", type=Path, help="also write the record here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds should be >= 1, got {args.rounds}")
    record = measure(steps=args.steps, batch=args.batch, hidden=args.hidden, input_size=args.input_size,
                     rounds=args.rounds, threads=args.threads, cell=args.cell, scan=args.scan)
    med = record["median_seconds"]
    print(f"{args.cell} ({record['scan']} scan) vs torch.nn.GRU, forward+backward, T={args.steps} B={args.batch} "
          f"H={args.hidden} input={args.input_size}, {record['threads']} threads, median of {args.rounds}:")
    print(f"  {args.cell}: {med['minimal'] * 1e3:8.1f} ms")
    print(f"  torch.nn.GRU: {med['torch_gru'] * 1e3:8.1f} ms")
    print(f"  speedup: {record['speedup']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
