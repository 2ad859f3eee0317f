"""The whole benchmark run: environment, sgemm peak, every timed case, peak memory; ratios against the
targets; the JSON document that `render` reads. Nothing here prints tables.

JSON layout (schema 1), all times in seconds:
    {"schema", "date", "elapsed_s", "config": {...}, "environment": {...}, "sgemm": {...},
     "cases": [{"name", "cell", "kind", "variant", "shape", "flops", "unit",
                "impls": {impl: {"status": "ok", "times_s", "median_s", "min_s", "iqr_s", "inner_iterations",
                                 "gflops"} | {"status": "unavailable", "reason"}},
                "max_abs_diff", "ratios": {peer: peer median / gatedrnn median}, "best_peer", "ratio",
                "target": {...} | None, "met": bool | None}],
     "memory": [{"name", "shape", "impls": {impl: {"peak_delta_bytes", "samples_bytes", ...}},
                 "ratio", "target", "met"}],
     "gemm_decisions": [{"dtype", "N", "K", "rows", "transposed", "blas_us", "own_us", "choice"}]}
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

import gatedrnn
from gatedrnn.bench import cases as case_module
from gatedrnn.bench.cases import BEST_PEER, MEMORY_TARGET, OURS, TORCH, Case, Target
from gatedrnn.bench.environment import environment
from gatedrnn.bench.memory import measure_in_subprocess
from gatedrnn.bench.runner import sgemm_peak, summarize, time_interleaved

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BenchConfig:
    """quick: tiny sizes (a smoke test, numbers mean nothing); only: keep cases whose name contains it."""

    quick: bool = False
    repeats: int = 7
    warmup: int = 3
    warmup_s: float = 0.25
    min_sample_s: float = 0.1
    threads: int = 2
    only: Optional[str] = None
    memory_repeats: int = 3
    sgemm_size: int = 1024


def quick_config(**overrides) -> BenchConfig:
    settings = dict(quick=True, repeats=3, warmup=3, warmup_s=0.02, min_sample_s=0.001, memory_repeats=1, sgemm_size=128)
    settings.update(overrides)
    return BenchConfig(**settings)


def selected_cases(config: BenchConfig) -> tuple[list[Case], list[case_module.Shape]]:
    """(timed cases, memory shapes) after the --only filter."""
    timed = [c for c in case_module.make_cases(quick=config.quick) if not config.only or config.only in c.name]
    shapes = [s for s in case_module.memory_shapes(quick=config.quick)
              if not config.only or config.only in memory_name(s)]
    return timed, shapes


def memory_name(shape: case_module.Shape) -> str:
    return f"lstm/memory/{shape.label()}"


def _target_record(target: Optional[Target]) -> Optional[dict]:
    return None if target is None else {**asdict(target), "description": target.describe()}


def evaluate_case(record: dict, target: Optional[Target]) -> None:
    """Fill ratios, best_peer, ratio and met from the impls' medians (in place)."""
    impls = record["impls"]
    medians = {name: r["median_s"] for name, r in impls.items() if r["status"] == "ok"}
    peers = {name: m for name, m in medians.items() if name != OURS}
    record["best_peer"] = min(peers, key=peers.get) if peers else None
    ours = medians.get(OURS)
    record["ratios"] = {name: m / ours for name, m in peers.items()} if ours else {}
    against = target.against if target is not None else (BEST_PEER if record["kind"] == "infer" else TORCH)
    peer_name = record["best_peer"] if against == BEST_PEER else against
    record["ratio"] = record["ratios"].get(peer_name)
    record["ratio_against"] = peer_name
    record["target"] = _target_record(target)
    if target is None or ours is None:
        record["met"] = None
    elif target.metric == "max_us_per_step":
        record["met"] = ours * 1e6 <= target.value
    else:
        record["met"] = record["ratio"] is not None and record["ratio"] >= target.value


def run_case(case: Case, config: BenchConfig) -> dict:
    built = case_module.build_case(case, threads=config.threads)
    samples, blocks, failures = time_interleaved(built.impls, repeats=config.repeats,
                                                 min_sample_s=config.min_sample_s, warmup=config.warmup,
                                                 warmup_s=config.warmup_s)
    flops = case_module.flop_count(case)
    unavailable = {**built.unavailable, **{name: f"failed while timed: {why}" for name, why in failures.items()}}
    impls: dict[str, dict] = {name: {"status": "unavailable", "reason": why} for name, why in unavailable.items()}
    for name, per_call in samples.items():
        times = [t / built.iterations_per_call for t in per_call]
        summary = summarize(times)
        impls[name] = {"status": "ok", "times_s": times, **summary,
                       "inner_iterations": blocks[name] * built.iterations_per_call,
                       "gflops": flops / summary["median_s"] / 1e9}
    order = [OURS, case_module.PLAIN, case_module.LOOP, TORCH, case_module.ORT]
    record = {
        "name": case.name, "cell": case.cell, "kind": case.kind, "variant": case.variant,
        "shape": asdict(case.shape), "flops": flops,
        "unit": "seconds per step" if case.kind == "stream" else "seconds per iteration",
        "impls": {name: impls[name] for name in sorted(impls, key=order.index)},
        "max_abs_diff": built.max_abs_diff,
    }
    evaluate_case(record, case.target)
    return record


def run_memory(shape: case_module.Shape, config: BenchConfig) -> dict:
    impls: dict[str, dict] = {}
    for impl in (OURS, TORCH):
        runs = [measure_in_subprocess(impl, shape, threads=config.threads) for _ in range(config.memory_repeats)]
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            impls[impl] = {"status": "unavailable", "reason": errors[0]}
            continue
        samples = [r["peak_delta_bytes"] for r in runs]
        impls[impl] = {"status": "ok", "peak_delta_bytes": int(statistics.median(samples)),
                       "samples_bytes": samples, "method": runs[0]["method"],
                       "rss_before_bytes": runs[0]["rss_before_bytes"]}
    ok = all(impls[i]["status"] == "ok" for i in (OURS, TORCH))
    ratio = impls[TORCH]["peak_delta_bytes"] / max(impls[OURS]["peak_delta_bytes"], 1) if ok else None
    return {"name": memory_name(shape), "shape": asdict(shape), "impls": impls, "ratio": ratio,
            "ratio_against": TORCH, "target": _target_record(MEMORY_TARGET),
            "met": None if ratio is None else ratio >= MEMORY_TARGET.value}


def run_benchmark(config: BenchConfig, *, log: Callable[[str], None] = lambda line: None) -> dict:
    """Run every selected case and the memory measurements; returns the JSON document (see module doc)."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    # The "gatedrnn" column times gatedrnn's engine: the torch floor (`gatedrnn.layers.torch_floor`) would run
    # torch's own kernel where that measured faster, and the comparison would be torch against itself.
    floor_before = os.environ.get("GATEDRNN_TORCH_FLOOR")
    os.environ["GATEDRNN_TORCH_FLOOR"] = "off"
    try:
        return _run(config, log)
    finally:
        torch.set_num_threads(threads_before)
        if floor_before is None:
            del os.environ["GATEDRNN_TORCH_FLOOR"]
        else:
            os.environ["GATEDRNN_TORCH_FLOOR"] = floor_before


def _run(config: BenchConfig, log: Callable[[str], None]) -> dict:
    started = time.perf_counter()
    timed, shapes = selected_cases(config)
    result = {
        "schema": SCHEMA_VERSION,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(config),
        "environment": environment(threads=config.threads),
    }
    log(f"sgemm peak ({config.sgemm_size}x{config.sgemm_size} float32, {config.threads} threads) ...")
    result["sgemm"] = sgemm_peak(size=config.sgemm_size, repeats=config.repeats, min_sample_s=config.min_sample_s,
                                 warmup=config.warmup, warmup_s=config.warmup_s)
    log(f"  {result['sgemm']['gflops']:.1f} GF/s")
    result["cases"] = []
    for index, case in enumerate(timed, 1):
        with warnings.catch_warnings():  # torch says once per process that proj_size LSTM has no oneDNN path
            warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
            record = run_case(case, config)
        result["cases"].append(record)
        log(f"[{index:2d}/{len(timed)} {time.perf_counter() - started:4.0f} s] {case.name}: " + _progress_line(record))
    result["memory"] = []
    for shape in shapes:
        record = run_memory(shape, config)
        result["memory"].append(record)
        ratio = "n/a" if record["ratio"] is None else f"{record['ratio']:.2f}"
        log(f"[memory {time.perf_counter() - started:4.0f} s] {record['name']}: nn.LSTM / gatedrnn peak = {ratio}")
    result["elapsed_s"] = time.perf_counter() - started
    result["load_average_end"] = list(os.getloadavg())
    # the GEMMs the engine chose while the cases ran, with their timings (the environment's copy was taken before)
    result["gemm_decisions"] = gatedrnn.backend_info()["gemm"]["decisions"]
    return result


def _progress_line(record: dict) -> str:
    parts = []
    for name, impl in record["impls"].items():
        parts.append(f"{name} {impl['median_s'] * 1e3:.3f} ms" if impl["status"] == "ok" else f"{name} unavailable")
    if record["ratio"] is not None:
        parts.append(f"ratio {record['ratio']:.2f} vs {record['ratio_against']}")
    return ", ".join(parts)


def free_path(path: Path) -> Path:
    """`path` if nothing is there, else the first of path-2, path-3, ... that is free."""
    if not path.exists():
        return path
    counter = 2
    while (candidate := path.with_name(f"{path.stem}-{counter}{path.suffix}")).exists():
        counter += 1
    return candidate


def write_results(result: dict, path: Path) -> Path:
    """Write the JSON to `path`, or beside it with a suffix if it exists; never overwrites. Returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        target = free_path(path)
        try:
            with open(target, "x") as file:  # "x": fail rather than overwrite if it appeared meanwhile
                json.dump(result, file, indent=1)
                file.write("\n")
            return target
        except FileExistsError:
            continue
