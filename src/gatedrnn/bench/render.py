"""Benchmark JSON (see `gatedrnn.bench.suite`) -> a markdown table for the README, or a terminal table.

Both show the same rows: per case the median time of each implementation, the ratio (peer time /
gatedrnn time) against the peer the target names, gatedrnn's GF/s and its share of the sgemm peak
measured in the same run, the target and whether it is met; then the peak-memory rows.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from gatedrnn.bench.cases import ORT, OURS, TORCH

README_BEGIN, README_END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"
TIME_HEADERS = ["case", "gatedrnn", "torch.nn", "onnxruntime", "ratio", "vs", "GF/s gatedrnn (% peak)", "target", "met"]
MEMORY_HEADERS = ["case", "gatedrnn peak", "nn.LSTM peak", "ratio", "target", "met"]


def format_time(seconds: float, *, stream: bool) -> str:
    if stream:
        return f"{seconds * 1e6:.2f} us"
    ms = seconds * 1e3
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms" if ms >= 1 else f"{ms:.3f} ms"


def _met(met: Optional[bool], *, markdown: bool) -> str:
    if met is None:
        return "-"
    return "met" if met else ("**not met**" if markdown else "NOT MET")


def time_rows(result: dict, *, markdown: bool) -> list[list[str]]:
    peak = result["sgemm"]["gflops"]
    rows = []
    for case in result["cases"]:
        stream = case["kind"] == "stream"
        cells = [case["name"]]
        for impl in (OURS, TORCH, ORT):
            record = case["impls"].get(impl)
            if record is None:
                cells.append("-")
            elif record["status"] == "ok":
                cells.append(format_time(record["median_s"], stream=stream))
            else:
                cells.append("unavailable")
        ratio = case["ratio"]
        cells.append("-" if ratio is None else f"{ratio:.2f}x")
        cells.append(case["ratio_against"] or "-")
        ours = case["impls"].get(OURS, {})
        cells.append(f"{ours['gflops']:.1f} ({100 * ours['gflops'] / peak:.0f}%)" if ours.get("status") == "ok" else "-")
        cells.append(case["target"]["description"] if case["target"] else "-")
        cells.append(_met(case["met"], markdown=markdown))
        rows.append(cells)
    return rows


def memory_rows(result: dict, *, markdown: bool) -> list[list[str]]:
    rows = []
    for entry in result["memory"]:
        cells = [entry["name"]]
        for impl in (OURS, TORCH):
            record = entry["impls"][impl]
            cells.append(f"{record['peak_delta_bytes'] / 2**20:.1f} MiB" if record["status"] == "ok" else "unavailable")
        cells.append("-" if entry["ratio"] is None else f"{entry['ratio']:.2f}x")
        cells.append(entry["target"]["description"] if entry["target"] else "-")
        cells.append(_met(entry["met"], markdown=markdown))
        rows.append(cells)
    return rows


def header_lines(result: dict) -> list[str]:
    env, config = result["environment"], result["config"]
    modified = env["git"].get("modified") or []
    commit = (env["git"]["commit"] or "unknown")[:10] + (f" + uncommitted changes in {', '.join(modified)}"
                                                          if modified else "")
    backend = env["backend_info"]
    lines = [
        f"date {result['date']}, commit {commit}, {result.get('elapsed_s', 0):.0f} s",
        f"CPU {env['cpu_model']} ({env['cpu_count']} cores), {env['threads']} threads; torch {env['torch_version']}, "
        f"onnxruntime {env['onnxruntime_version']}",
        f"gatedrnn backend: {backend.get('backend')} ({backend.get('reason', '')})",
        f"sgemm peak ({result['sgemm']['size']}^2 float32): {result['sgemm']['gflops']:.1f} GF/s; "
        f"median of {config['repeats']} interleaved samples, each >= {config['min_sample_s'] * 1e3:g} ms",
    ]
    load = env.get("load_average", [0.0])[0]
    group = env.get("autogroup") or ""
    if group and not group.endswith("nice 0"):
        lines.append(f"run with scheduler priority over other sessions ({group}), load average {load:.1f} at the start")
    elif load > 0.5 * max(env["threads"], 1):
        lines.append(f"WARNING: load average {load:.1f} at the start (other work was running): numbers are skewed")
    if config["quick"]:
        lines.append("QUICK run: tiny sizes, a smoke test; the numbers mean nothing")
    return lines


def summary_line(result: dict) -> str:
    verdicts = [c["met"] for c in result["cases"] + result["memory"] if c["target"] is not None]
    missing = sum(v is None for v in verdicts)
    text = f"targets met: {sum(v is True for v in verdicts)} of {len(verdicts)}"
    return text + (f" ({missing} could not be measured)" if missing else "")


def unavailable_notes(result: dict) -> list[str]:
    notes = []
    for entry in result["cases"] + result["memory"]:
        for impl, record in entry["impls"].items():
            if record["status"] != "ok":
                notes.append(f"{entry['name']}: {impl} unavailable: {record['reason']}")
    return notes


def _markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def _text_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[k])) for row in [headers] + rows) for k in range(len(headers))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows]


def render_markdown(result: dict) -> str:
    lines = [f"- {line}" for line in header_lines(result)] + [""]
    lines += _markdown_table(TIME_HEADERS, time_rows(result, markdown=True))
    if result["memory"]:
        lines += ["", "Peak memory of one training step (fresh process per implementation):", ""]
        lines += _markdown_table(MEMORY_HEADERS, memory_rows(result, markdown=True))
    lines += ["", f"**{summary_line(result)}**"]
    notes = unavailable_notes(result)
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def render_terminal(result: dict) -> str:
    lines = header_lines(result) + [""] + _text_table(TIME_HEADERS, time_rows(result, markdown=False))
    if result["memory"]:
        lines += ["", "peak memory of one training step:"]
        lines += _text_table(MEMORY_HEADERS, memory_rows(result, markdown=False))
    lines += ["", summary_line(result)] + unavailable_notes(result)
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, markdown: str, *, source: str) -> bool:
    """Replace the block between the bench-table markers with `markdown`; False if the markers are missing."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        return False
    block = f"{README_BEGIN}\n<!-- generated from {source} by `python -m gatedrnn bench` -->\n\n{markdown}\n{README_END}"
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return True
