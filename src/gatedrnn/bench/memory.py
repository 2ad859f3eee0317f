"""Peak memory of one training step (forward + backward of output.sum()), measured in a fresh process.

Why a fresh process per implementation: freed memory stays mapped in the allocator and would hide the
second implementation's peak; a new process starts with no such reserve.

How: build the module and the input, run one training step at T=2 (loads libraries and the C++ extension,
starts thread pools: one-time costs that are not the step's), give freed heap pages back to the kernel
(malloc_trim), then reset the kernel's resident high-water mark (writing "5" to /proc/self/clear_refs
resets VmHWM to the current RSS), run the full-size step and read VmHWM. The peak is VmHWM - RSS before the step: every byte the step touched at its worst moment,
whoever allocated it (torch's allocator, oneDNN scratch, the extension's own buffers). Without clear_refs
the high-water mark since process start is used (ru_maxrss), which can only under-count the step.

`measure_in_subprocess` runs `main` in a new interpreter with a JSON request such as
'{"impl": "gatedrnn", "threads": 2, "B": 16, "T": 100, "I": 64, "H": 128, "P": 0}'; it prints one JSON line.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import subprocess
import sys

from gatedrnn.bench.cases import OURS, TORCH, Shape


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _return_free_memory() -> None:
    """glibc's malloc_trim(0): give free heap pages back to the kernel, so that memory the warm-up freed
    counts again when the measured step touches it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return True
    except OSError:
        return False


def measure_in_this_process(impl: str, shape: Shape, *, threads: int) -> dict:
    import torch
    from torch import nn

    import gatedrnn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layer_class = {OURS: gatedrnn.LSTM, TORCH: nn.LSTM}[impl]
    module = layer_class(shape.I, shape.H, proj_size=shape.P)
    x = torch.randn(shape.T, shape.B, shape.I)  # (T, B, I)

    def training_step(inputs) -> None:
        for p in module.parameters():
            p.grad = None
        output, _ = module(inputs)
        output.sum().backward()

    training_step(x[:2])
    for p in module.parameters():
        p.grad = None
    gc.collect()
    _return_free_memory()
    reset = _reset_high_water_mark()
    rss_before = _status_kib("VmRSS") * 1024
    training_step(x)
    peak = (_status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return {
        "peak_delta_bytes": peak - rss_before,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak,
        "method": "VmHWM after /proc/self/clear_refs reset" if reset else "ru_maxrss since process start",
    }


def measure_in_subprocess(impl: str, shape: Shape, *, threads: int, timeout_s: float = 600) -> dict:
    """Runs `measure_in_this_process` in a fresh interpreter; {"error": ...} if it fails."""
    request = {"impl": impl, "threads": threads, **vars(shape)}
    entry = "import sys; from gatedrnn.bench.memory import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", entry, json.dumps(request)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:g} s"}
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return {"error": f"exit code {done.returncode}: {last_line}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    impl, threads = request.pop("impl"), request.pop("threads")
    print(json.dumps(measure_in_this_process(impl, Shape(**request), threads=threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
