"""Timing: warm-up, a block size per implementation, interleaved samples, and their summary.

One sample = the wall time of k back-to-back iterations divided by k, with k chosen so that a sample
lasts at least `min_sample_s` (timer resolution and per-call jitter average out). Implementations are
sampled in turn within each repeat (ours, peer, ours, peer, ...) so that slow drifts of the machine
(frequency, other load) hit all of them alike. Warm-up and calibration runs are not recorded.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from typing import Callable


def time_block(fn: Callable[[], None], iterations: int) -> float:
    """Seconds per iteration over `iterations` back-to-back calls, with the garbage collector paused."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        return (time.perf_counter() - start) / iterations
    finally:
        if was_enabled:
            gc.enable()


def calibrate(fn: Callable[[], None], *, min_sample_s: float, warmup: int, warmup_s: float) -> int:
    """Warm up, then return the block size k whose sample is expected to last >= min_sample_s.

    Warm-up is at least `warmup` calls and at least `warmup_s` seconds: first calls can be slow for a
    while (oneDNN creates its primitives over the first 3 training steps, 100x slower than later ones;
    thread pools start), and those must neither set k nor enter a sample. Then blocks grow until one
    lasts >= min_sample_s / 2 and is no more than 20% faster than the block before it.
    """
    start, calls, previous = time.perf_counter(), 0, None
    while calls < warmup or (time.perf_counter() - start < warmup_s and calls < 10_000):
        previous = time_block(fn, 1)  # the last warm-up call is what the first block must not beat by 20%
        calls += 1
    iterations = 1
    for _ in range(24):  # bounded: on a noisy machine "settled" may take a few blocks, never forever
        per_iteration = time_block(fn, iterations)
        if per_iteration * iterations < min_sample_s / 2 and iterations < 1 << 20:
            iterations *= 4
        elif previous is not None and per_iteration >= 0.8 * previous:
            break
        else:
            iterations = max(1, math.ceil(min_sample_s / max(per_iteration, 1e-9)))
        previous = per_iteration
    return max(1, math.ceil(min_sample_s / max(per_iteration, 1e-9)))


def time_interleaved(
    impls: dict[str, Callable[[], None]], *, repeats: int, min_sample_s: float, warmup: int, warmup_s: float
) -> tuple[dict[str, list[float]], dict[str, int], dict[str, str]]:
    """(samples: name -> `repeats` seconds-per-iteration, block sizes: name -> k, failures: name -> error).

    An implementation that raises is dropped from the rest of the case and reported, not fatal."""
    blocks: dict[str, int] = {}
    failures: dict[str, str] = {}
    for name, fn in impls.items():
        try:
            blocks[name] = calibrate(fn, min_sample_s=min_sample_s, warmup=warmup, warmup_s=warmup_s)
        except Exception as error:
            failures[name] = f"{type(error).__name__}: {error}"
    samples: dict[str, list[float]] = {name: [] for name in blocks}
    for _ in range(repeats):
        for name in list(samples):
            try:
                samples[name].append(time_block(impls[name], blocks[name]))
            except Exception as error:
                failures[name] = f"{type(error).__name__}: {error}"
                del samples[name]
    return samples, blocks, failures


def summarize(times: list[float]) -> dict:
    """median, min and interquartile range (inclusive quartiles) of the samples, in seconds."""
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return {"median_s": statistics.median(times), "min_s": min(times), "iqr_s": q3 - q1}


def sgemm_peak(*, size: int, repeats: int, min_sample_s: float, warmup: int = 3, warmup_s: float = 0.2) -> dict:
    """float32 torch.mm of two (size, size) matrices at torch's current thread count: the machine's
    practical GEMM ceiling, to read every case's GF/s against."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)

    def multiply() -> None:
        torch.mm(a, b, out=out)

    samples, blocks, _ = time_interleaved({"sgemm": multiply}, repeats=repeats, min_sample_s=min_sample_s,
                                       warmup=warmup, warmup_s=warmup_s)
    times = samples["sgemm"]
    summary = summarize(times)
    flops = 2 * size**3
    return {"size": size, "flops": flops, "inner_iterations": blocks["sgemm"], "times_s": times, **summary,
            "gflops": flops / summary["median_s"] / 1e9}
