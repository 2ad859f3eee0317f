"""`python -m gatedrnn.bench.gpu --out DIR`: gatedrnn's layers on CUDA against torch.nn (cuDNN) on one CUDA device.
A plain layer runs torch's cuDNN op itself (so those cases time gatedrnn's dispatch around it); traces, the
LayerNorm LSTM and the "+triton" cases (GATEDRNN_BACKEND=triton) time gatedrnn's GPU engine.

Shape symbols: B batch, T time steps, I input size (= H in every case), H hidden size. Inputs are (T, B, I).

Each case times two zero-argument callables side by side in one process, interleaved (ours, peer, ours, peer, ...)
after `warmup` calls of each, `repeats` samples each; a sample is `inner` back-to-back calls timed with CUDA events
around them (torch.cuda.synchronize before), divided by `inner`. The cases and the issue's targets ("A GPU engine"):

    lstm, gru  train (forward + backward of output.sum()) and infer (no_grad forward), float32, at the three SIZES:
               gatedrnn.LSTM/GRU vs torch.nn.LSTM/GRU with equal weights, target peer / ours >= 0.95
    lstm-bf16  train at the first two SIZES, both modules .to(torch.bfloat16): the same target
    layernorm_lstm  train at B=64, T=128, H=512: gatedrnn.LayerNormLSTM vs torch.nn.LSTM (plain, cuDNN), target
               ours / peer <= 1.5, and the first call (forward + backward) <= 30 s, measured in this process
               ("first_call_s") and in a fresh process with an empty Triton cache ("first_call_cold_cache_s")
    lstm trace gatedrnn.inspect.trace(layer, x) vs layer(x), both under no_grad, target traced / untraced <= 1.5
    lstm stream  B=1: gatedrnn.LSTM.step(x_t, state) vs torch.nn.LSTMCell, no_grad, target peer / ours >= 1.0 per step
    +triton    lstm train and infer, gru train, lstm-bf16 train at the first size on the GPU engine, against cuDNN

The cases are data in `gatedrnn.bench.gpu_cases`; this module times them, writes the JSON and renders tables.
They run in that module's order (the largest size last); once `--budget-s` has passed, the rest are recorded as
skipped, so one run fits a scarce GPU slot.
`--device cpu --quick` runs the same code at tiny sizes with perf_counter timing (for the CPU test of this file);
the numbers then mean nothing. A case that raises records its error and the run goes on.

JSON (schema 1), written to <out>/gpu-<slug of the device name>-<YYYY-MM-DD>-<n>.json, n the first free integer:
    {"schema", "date", "complete" (False while the run goes on: the file is rewritten after each case),
     "elapsed_s", "config": {...},
     "environment": {"date", "device", "gpu_name", "gpu_capability", "gpu_memory_gb", "torch_version",
                     "triton_version", "cuda_version", "cudnn_version", "python_version", "gatedrnn_version",
                     "git": {"commit", "dirty", "modified"}, "cpu_model", "tf32", "settings",
                     "backend_info", "backend_info_bfloat16" (gatedrnn.backend_info(device=, dtype=), or the error's
                     text), "backend_info_after" (the same after the cases)},
     "cases": [{"name", "cell", "kind", "dtype", "sizes": {"B", "T", "I", "H"}, "ours", "peer",
                "ours_ms", "peer_ms" (medians; per step for "stream"), "ours_times_ms", "peer_times_ms", "inner",
                "ratio", "target": {"ratio", "op", "value", "first_call_max_s", "description"}, "met",
                "max_abs_diff" (ours vs peer output; None for LayerNorm vs plain), "error" (None, or what raised),
                ["first_call_s", "first_call_cold_cache_s", "first_call_error"] (LayerNorm only)}]}
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

import gatedrnn
from gatedrnn.bench.environment import git_commit
from gatedrnn.bench.gpu_cases import GpuCase, Target, build, cold_first_call, make_cases
from gatedrnn.bench.render import _markdown_table, _text_table
from gatedrnn.bench.runner import time_block
from gatedrnn.engine._flags import cpu_model

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class GpuBenchConfig:
    """budget_s: cases not started by then are recorded as skipped (the GPU time is scarce); only: keep cases
    whose name contains it; min_sample_s: a sample repeats a call until it lasts about this long."""

    device: str = "cuda"
    quick: bool = False
    repeats: int = 7
    warmup: int = 3
    min_sample_s: float = 0.02
    stream_steps: int = 200
    budget_s: float = 180.0
    cold_first_call: bool = True
    only: Optional[str] = None


def _elapsed_s(fn: Callable[[], None], inner: int, device: torch.device) -> float:
    """Seconds per call over `inner` back-to-back calls: on CUDA the events' clock from the first launch to the last
    kernel's end (the stream idle before, so launch overhead counts as it does for a user), else perf_counter."""
    if device.type != "cuda":
        return time_block(fn, inner)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    time_block(fn, inner)  # the calls, with the garbage collector paused; its CPU clock is not the one read
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / inner


def measure(impls: dict[str, Callable[[], None]], config: GpuBenchConfig, device: torch.device
            ) -> tuple[dict[str, list[float]], dict[str, int], dict[str, str]]:
    """(samples: name -> `repeats` seconds per call, inner: name -> calls per sample, errors: name -> message).

    Like `runner.time_interleaved`, with a device clock: warm-up calls (Triton compiles, cuDNN picks its
    algorithms), then interleaved samples. An implementation that raises is dropped and reported."""
    inner: dict[str, int] = {}
    errors: dict[str, str] = {}
    for name, fn in impls.items():
        try:
            last = min(_elapsed_s(fn, 1, device) for _ in range(max(1, config.warmup)))
            inner[name] = max(1, min(64, math.ceil(config.min_sample_s / max(last, 1e-9))))
        except Exception as error:
            errors[name] = f"{type(error).__name__}: {error}"
    samples: dict[str, list[float]] = {name: [] for name in inner}
    for _ in range(config.repeats):
        for name in list(samples):
            try:
                samples[name].append(_elapsed_s(impls[name], inner[name], device))
            except Exception as error:
                errors[name] = f"{type(error).__name__}: {error}"
                del samples[name]
    return samples, inner, errors


def _first_call_s(fn: Callable[[], None], device: torch.device) -> float:
    """Wall seconds of one call, the device synchronized on both sides (compilation included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _verdict(record: dict, target: Target) -> Optional[bool]:
    if record["ratio"] is None:
        return None
    met = record["ratio"] >= target.value if target.op == ">=" else record["ratio"] <= target.value
    if target.first_call_max_s is not None:
        firsts = [record.get(key) for key in ("first_call_s", "first_call_cold_cache_s")]
        measured = [s for s in firsts if s is not None]
        met = met and bool(measured) and max(measured) <= target.first_call_max_s  # the worst of the two counts
    return met


def blank_record(case: GpuCase) -> dict:
    """A case's record before anything is measured: every key present, the measurements None."""
    return {"name": case.name, "cell": case.cell, "kind": case.kind, "dtype": case.dtype,
            "sizes": {"B": case.B, "T": case.T, "I": case.H, "H": case.H}, "ours": None, "peer": None,
            "ours_ms": None, "peer_ms": None, "ours_times_ms": None, "peer_times_ms": None, "inner": None,
            "ratio": None, "target": {**asdict(case.target), "description": case.target.describe()},
            "met": None, "max_abs_diff": None, "error": None}


def run_case(case: GpuCase, config: GpuBenchConfig, device: torch.device) -> dict:
    """One case's record (see the module docstring); an error anywhere is recorded, never raised."""
    record = blank_record(case)
    errors: dict[str, str] = {}
    try:
        if case.cell == "layernorm_lstm" and config.cold_first_call:
            record["first_call_cold_cache_s"], record["first_call_error"] = cold_first_call(case, device)
        impls, labels, diff = build(case, device, stream_steps=config.stream_steps)
        record["ours"], record["peer"] = labels["ours"], labels["peer"]
        if case.cell == "layernorm_lstm":
            try:
                record["first_call_s"] = _first_call_s(impls["ours"], device)
            except Exception as error:
                record["first_call_s"], errors["ours"] = None, f"{type(error).__name__}: {error}"
                impls.pop("ours")
        samples, inner, failed = measure(impls, config, device)
        errors.update(failed)
        per_call = config.stream_steps if case.kind == "stream" else 1  # stream: ms per step
        record["inner"] = inner
        for name, times in samples.items():
            times_ms = [t * 1e3 / per_call for t in times]
            record[f"{name}_times_ms"] = times_ms
            record[f"{name}_ms"] = statistics.median(times_ms)
        if record["ours_ms"] and record["peer_ms"]:
            ours_ms, peer_ms = record["ours_ms"], record["peer_ms"]
            record["ratio"] = peer_ms / ours_ms if case.target.ratio == "peer/ours" else ours_ms / peer_ms
            try:
                record["max_abs_diff"] = diff()
            except Exception as error:
                errors["diff"] = f"{type(error).__name__}: {error}"
    except Exception as error:  # building the case (OOM, an unsupported path): recorded, the run goes on
        errors["case"] = f"{type(error).__name__}: {error}"
    record["error"] = "; ".join(f"{name}: {message}" for name, message in errors.items()) or None
    record["met"] = _verdict(record, case.target)
    return record


def _optional_version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def _backend_info(device: torch.device, dtype: torch.dtype):
    """gatedrnn.backend_info for the device, or the error's text (its signature may change with the GPU engine)."""
    try:
        return gatedrnn.backend_info(device=str(device), dtype=dtype)
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def gpu_environment(device: torch.device) -> dict:
    """What the numbers depend on besides the code: device, library versions, TF32 settings, commit, settings."""
    cuda = device.type == "cuda"
    properties = torch.cuda.get_device_properties(device) if cuda else None
    tf32 = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
    settings = ("GATEDRNN_BACKEND", "GATEDRNN_TORCH_FLOOR", "TRITON_INTERPRET", "TRITON_CACHE_DIR",
                "CUDA_VISIBLE_DEVICES")
    return {
        "date": datetime.date.today().isoformat(),
        "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_capability": list(torch.cuda.get_device_capability(device)) if cuda else None,
        "gpu_memory_gb": round(properties.total_memory / 2**30, 1) if cuda else None,
        "torch_version": torch.__version__,
        "triton_version": _optional_version("triton"),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "python_version": platform.python_version(),
        "gatedrnn_version": gatedrnn.__version__,
        "git": git_commit(Path(gatedrnn.__file__).resolve().parent),
        "cpu_model": cpu_model(),
        "tf32": tf32,  # the defaults a user gets; cuDNN may run float32 RNNs on TF32 tensor cores when allowed
        "settings": {name: os.environ.get(name) for name in settings},
    }


def run(config: GpuBenchConfig, *, log: Callable[[str], None] = lambda line: None,
        checkpoint: Callable[[dict], None] = lambda partial: None) -> dict:
    """Every selected case, with the environment. `checkpoint` gets the result so far (complete: False) after each
    case, so a run cut short still leaves its numbers. backend_info is read before the cases and once after them
    ("backend_info_after": it may list choices made during the run)."""
    started = time.perf_counter()
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)  # the context and cuBLAS: not a case's cost
        torch.cuda.synchronize(device)
    environment = gpu_environment(device)
    environment["backend_info"] = _backend_info(device, torch.float32)
    environment["backend_info_bfloat16"] = _backend_info(device, torch.bfloat16)
    log(f"{environment['gpu_name'] or 'cpu'}, torch {environment['torch_version']}, "
        f"triton {environment['triton_version']}, CUDA {environment['cuda_version']}")
    for key in ("backend_info", "backend_info_bfloat16"):
        info = environment[key]
        log(f"{key}: " + (f"{info.get('backend')} ({info.get('reason')})" if isinstance(info, dict) else str(info)))
    cases = [case for case in make_cases(quick=config.quick) if not config.only or config.only in case.name]
    result = {"schema": SCHEMA_VERSION, "date": environment["date"], "complete": False, "elapsed_s": 0.0,
              "config": asdict(config), "environment": environment, "cases": []}
    for index, case in enumerate(cases, 1):
        if time.perf_counter() - started > config.budget_s:
            record = {**blank_record(case), "error": f"skipped: the run's budget of {config.budget_s:g} s was spent"}
        else:
            record = run_case(case, config, device)
            if device.type == "cuda":
                with contextlib.suppress(Exception):  # after a device fault this raises too; the cases record it
                    torch.cuda.empty_cache()  # the next case's sizes start from a clean allocator
        result["cases"].append(record)
        result["elapsed_s"] = time.perf_counter() - started
        checkpoint(result)
        log(f"[{index}/{len(cases)}] {progress_line(record)} ({result['elapsed_s']:.0f} s)")
    environment["backend_info_after"] = _backend_info(device, torch.float32)
    result.update(complete=True, elapsed_s=time.perf_counter() - started)
    return result


def _time(ms: Optional[float]) -> str:
    """A median in ms as a reader wants it: "12.3 ms", "0.456 ms", or "25.1 us" below 0.1 ms (a streaming step)."""
    if ms is None:
        return "-"
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.3f} ms" if ms >= 0.1 else f"{ms * 1e3:.1f} us"


def _one_line(text: str, limit: int) -> str:
    """An error message on one line (a markdown bullet or a log line), cut to `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _met(met: Optional[bool], *, markdown: bool) -> str:
    if met is None:
        return "-"
    return "met" if met else ("**not met**" if markdown else "NOT MET")


def progress_line(record: dict) -> str:
    parts = [record["name"], f"ours {_time(record['ours_ms'])}", f"peer {_time(record['peer_ms'])}"]
    if record["ratio"] is not None:
        parts.append(f"{record['target']['ratio']} {record['ratio']:.2f} ({record['target']['description']}) "
                     f"{_met(record['met'], markdown=False)}")
    if record.get("first_call_s") is not None or record.get("first_call_cold_cache_s") is not None:
        parts.append(f"first call {_seconds(record.get('first_call_s'))}, "
                     f"cold cache {_seconds(record.get('first_call_cold_cache_s'))}")
    if record["error"]:
        parts.append(f"error: {_one_line(record['error'], 300)}")
    return ", ".join(parts)


HEADERS = ["case", "dtype", "gatedrnn", "peer", "peer time", "ratio", "target", "met"]


def table_rows(result: dict, *, markdown: bool) -> list[list[str]]:
    """One row per case: the medians (ms; per step for stream), the peer, the ratio the target names, the verdict."""
    rows = []
    for case in result["cases"]:
        ratio = "-" if case["ratio"] is None else f"{case['ratio']:.2f} ({case['target']['ratio']})"
        met = _met(case["met"], markdown=markdown)
        if case["ratio"] is None and case["error"]:
            met = "skipped" if case["error"].startswith("skipped") else "error"
        rows.append([case["name"], case["dtype"], _time(case["ours_ms"]), case.get("peer") or "-",
                     _time(case["peer_ms"]), ratio, case["target"]["description"], met])
    return rows


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _notes(result: dict) -> list[str]:
    """The first call of the LayerNorm LSTM, and each case's error."""
    notes = []
    for case in result["cases"]:
        if "first_call_s" in case or "first_call_cold_cache_s" in case:
            notes.append(f"{case['name']}: first call (forward + backward) {_seconds(case.get('first_call_s'))} in "
                         f"this process, {_seconds(case.get('first_call_cold_cache_s'))} in a fresh one with empty "
                         "Triton and inductor caches" + (f" ({_one_line(case['first_call_error'], 300)})"
                                                         if case.get("first_call_error") else ""))
        if case["error"]:
            notes.append(f"{case['name']}: {_one_line(case['error'], 400)}")
    return notes


def _header(result: dict) -> str:
    env = result["environment"]
    commit = (env.get("git") or {}).get("commit") or "unknown"
    return (f"{env['gpu_name'] or env['device']}, torch {env['torch_version']}, triton {env['triton_version']}, "
            f"CUDA {env['cuda_version']}, cuDNN {env['cudnn_version']}, gatedrnn {commit[:10]}, {result['date']}")


def render_markdown(result: dict) -> str:
    """The cases as a markdown table (one row per case), the environment above it and notes below."""
    lines = [f"- {_header(result)}", ""] + _markdown_table(HEADERS, table_rows(result, markdown=True))
    notes = _notes(result)
    return "\n".join(lines + ([""] + [f"- {note}" for note in notes] if notes else [])) + "\n"


def render_terminal(result: dict) -> str:
    lines = [_header(result), ""] + _text_table(HEADERS, table_rows(result, markdown=False))
    return "\n".join(lines + [""] + _notes(result)) + "\n"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def write_result(result: dict, out: Path) -> Path:
    """<out>/gpu-<slug>-<date>-<n>.json with n the first free integer from 1; never overwrites another run's file."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{_slug(result['environment']['gpu_name'] or result['environment']['device'])}-{result['date']}"
    n = 1
    while True:
        path = out / f"{stem}-{n}.json"
        try:
            with open(path, "x") as file:  # "x": a file that appeared meanwhile is not overwritten
                _dump(result, file)
            return path
        except FileExistsError:
            n += 1


def rewrite_result(result: dict, path: Path) -> None:
    """Replace this run's own file (written by `write_result`) in one step: a reader never sees half a JSON."""
    partial = path.with_name(f".{path.name}.tmp")
    with open(partial, "w") as file:
        _dump(result, file)
    os.replace(partial, path)


def _dump(result: dict, file) -> None:
    json.dump(result, file, indent=1)
    file.write("\n")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gatedrnn.bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default), or cpu together with --quick (the code path's test)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no long warm-up: a smoke test")
    parser.add_argument("--repeats", type=int, default=7, help="samples per implementation (>= 7)")
    parser.add_argument("--budget-s", type=float, default=180.0,
                        help="seconds; cases not started by then are recorded as skipped (default 180)")
    parser.add_argument("--only", help="keep cases whose name contains this")
    parser.add_argument("--no-cold-first-call", action="store_true",
                        help="skip the LayerNorm LSTM's first call in a fresh process")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.quick:
        raise SystemExit("--device cpu is only for the code path's test: add --quick (its numbers mean nothing)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gatedrnn.bench.gpu needs a CUDA device: torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                         "run it on a GPU machine, or `--device cpu --quick` to test the code path")
    if args.repeats < 7 and not args.quick:
        raise SystemExit(f"--repeats should be >= 7 (a median of at least 7 samples), got {args.repeats}")
    config = GpuBenchConfig(device=args.device, quick=args.quick, repeats=args.repeats,
                            warmup=1 if args.quick else 3, min_sample_s=0.0 if args.quick else 0.02,
                            stream_steps=20 if args.quick else 200, budget_s=args.budget_s,
                            cold_first_call=not args.no_cold_first_call, only=args.only)
    written: list[Path] = []

    def checkpoint(partial: dict) -> None:
        if written:
            rewrite_result(partial, written[0])
        else:
            written.append(write_result(partial, args.out))

    result = run(config, log=lambda line: print(line, flush=True), checkpoint=checkpoint)
    path = written[0] if written else write_result(result, args.out)
    rewrite_result(result, path)
    print(render_terminal(result), flush=True)
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
