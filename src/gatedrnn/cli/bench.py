"""`gatedrnn bench`: time gatedrnn against torch.nn and onnxruntime, write the JSON, print the table.

A full run (about 3 minutes on 2 cores) writes benchmarks/results/<date>.json and refreshes the table
in benchmarks/README.md; `--render FILE` only prints the table of an existing result.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from gatedrnn.cli import CLIError

FULL_MINIMUM_REPEATS = 7
RESULTS_FOLDER = Path("benchmarks") / "results"
README = Path("benchmarks") / "README.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: a smoke test of the harness")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help=f"timed samples per implementation (default {FULL_MINIMUM_REPEATS}, "
                             f"at least {FULL_MINIMUM_REPEATS} unless --quick; --quick defaults to 3)")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help="JSON to write (default benchmarks/results/<YYYY-MM-DD>.json; "
                             "an existing file gets a -2, -3, ... sibling instead of being overwritten)")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON_PATH",
                        help="only render an existing result JSON and exit")
    parser.add_argument("--format", choices=("terminal", "markdown"), default="terminal",
                        help="table format for --render (default terminal)")
    parser.add_argument("--only", default=None, metavar="SUBSTRING",
                        help="run only the cases whose name contains SUBSTRING, e.g. 'gru/train' or 'memory'")
    parser.add_argument("--threads", type=int, default=2, metavar="N",
                        help="threads for torch, gatedrnn and onnxruntime (default 2)")


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from gatedrnn.bench import BenchConfig, quick_config, render_markdown, render_terminal, run_benchmark, write_results
    from gatedrnn.bench.render import update_readme
    from gatedrnn.bench.suite import selected_cases

    if args.render is not None:
        try:
            result = json.loads(args.render.read_text())
        except (OSError, ValueError) as error:
            raise CLIError(f"--render expects a benchmark JSON file, could not read {args.render}: {error}")
        print(render_markdown(result) if args.format == "markdown" else render_terminal(result), end="")
        return 0
    if args.repeats is not None and args.repeats < (1 if args.quick else FULL_MINIMUM_REPEATS):
        raise CLIError(f"--repeats should be >= {FULL_MINIMUM_REPEATS} for a full run (>= 1 with --quick), "
                       f"got {args.repeats}")
    if args.threads < 1:
        raise CLIError(f"--threads should be >= 1, got {args.threads}")
    overrides = {"only": args.only, "threads": args.threads}
    if args.repeats is not None:
        overrides["repeats"] = args.repeats
    config = quick_config(**overrides) if args.quick else BenchConfig(**overrides)
    timed, memory = selected_cases(config)
    if not timed and not memory:
        raise CLIError(f"--only {args.only!r} matches no case name")

    default_out = args.out is None
    today = datetime.date.today().isoformat()
    out = args.out if not default_out else RESULTS_FOLDER / (f"{today}-quick.json" if args.quick else f"{today}.json")
    result = run_benchmark(config, log=_log)
    written = write_results(result, out)
    if written != out:
        _log(f"{out} exists: wrote {written} instead")
    print(render_terminal(result), end="")
    print(f"results: {written}")
    if default_out and not args.quick and not args.only and README.exists():
        if update_readme(README, render_markdown(result), source=str(written)):
            print(f"table updated in {README}")
    return 0
