"""`gatedrnn tasks`: the tasks with their descriptions, metrics, baselines and options."""
from __future__ import annotations

import argparse
import json

from gatedrnn.cli import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show only this task")
    parser.add_argument("--json", action="store_true", help="print the list as JSON instead of text")
    parser.add_argument("--baselines", action="store_true",
                        help="also compute each task's baselines with its default options (reads the data sets)")


def describe(name: str, task_class) -> dict:
    info = task_class.info
    options = {
        option_name: {"default": option.default, "help": getattr(option, "help", "")}
        for option_name, option in getattr(task_class, "OPTIONS", {}).items()
    }
    return {"name": name, "description": info.description, "kind": info.kind, "metric": info.metric,
            "higher_is_better": info.higher_is_better, "baseline": info.baseline, "options": options}


def run(args: argparse.Namespace) -> int:
    from gatedrnn.tasks import TASKS

    if args.name is not None and args.name not in TASKS:
        raise CLIError(f"unknown task {args.name!r}; expected one of {sorted(TASKS)}")
    names = [args.name] if args.name else list(TASKS)
    entries = [describe(name, TASKS[name]) for name in names]
    if args.baselines:
        for entry in entries:
            try:
                entry["baselines"] = TASKS[entry["name"]]().baselines()
            except Exception as error:  # a data set whose package is missing: say so, list the others
                entry["baselines"] = {"unavailable": " ".join(str(error).split())}
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
        return 0
    for entry in entries:
        direction = "higher" if entry["higher_is_better"] else "lower"
        print(f"{entry['name']}  ({entry['kind']}; metric {entry['metric']}, {direction} is better)")
        print(f"    {entry['description']}")
        print(f"    baseline: {entry['baseline']}")
        if "baselines" in entry:
            print("    computed: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                                             for k, v in entry["baselines"].items()))
        if entry["options"]:
            options = ", ".join(f"{k}={v['default']!r}" for k, v in entry["options"].items())
            print(f"    options (-o NAME=VALUE): {options}")
    if args.name is None:
        from gatedrnn.models import CELLS

        print(f"cells (gatedrnn train --cell NAME): {', '.join(CELLS)}")
    return 0
