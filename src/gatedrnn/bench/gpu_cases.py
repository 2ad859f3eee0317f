"""The GPU benchmark's cases: what is timed, at which sizes, against which peer, and the issue's target for each.

Shape symbols: B batch, T time steps, I input size (= H in every case), H hidden size. Inputs are (T, B, I).
A case is data; `build` turns it into one zero-argument callable per side ("ours", "peer"), each one iteration of
the measured work, on the device given. `gatedrnn.bench.gpu` times them and writes the JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

import gatedrnn
from gatedrnn.bench.cases import under_backend

SIZES = ((64, 100, 256), (64, 512, 512), (16, 1024, 1024))  # (B, T, H) of the issue
QUICK_SIZES = ((2, 4, 8), (2, 5, 8), (3, 4, 12))  # the same cases at tiny sizes: a smoke test of the code paths
LAYERNORM_SIZE, TRACE_SIZE, STREAM_SIZES = (64, 128, 512), (64, 100, 256), (64, 256)
QUICK_LAYERNORM, QUICK_TRACE, QUICK_STREAM = (2, 4, 8), (2, 4, 8), (8, 12)
FIRST_CALL_TIMEOUT_S = 150


@dataclass(frozen=True)
class Target:
    """ratio: "peer/ours" (a speed-up, met when >= value) or "ours/peer" (a slowdown, met when <= value)."""

    ratio: str
    op: str
    value: float
    first_call_max_s: Optional[float] = None

    def describe(self) -> str:
        text = f"{self.ratio} {self.op} {self.value:g}"
        return text + (f"; first call <= {self.first_call_max_s:g} s" if self.first_call_max_s is not None else "")


PLAIN_TARGET = Target("peer/ours", ">=", 0.95)
LAYERNORM_TARGET = Target("ours/peer", "<=", 1.5, first_call_max_s=30.0)
TRACE_TARGET = Target("ours/peer", "<=", 1.5)
STREAM_TARGET = Target("peer/ours", ">=", 1.0)


@dataclass(frozen=True)
class GpuCase:
    """cell: "lstm" | "gru" | "layernorm_lstm"; kind: "train" | "infer" | "trace" | "stream"; backend: the
    GATEDRNN_BACKEND ours runs under ("auto": a plain layer runs torch's cuDNN op; "triton": gatedrnn's GPU engine,
    what traces and gatedrnn's own cells run, measured on the plain cells against cuDNN)."""

    cell: str
    kind: str
    B: int
    T: int
    H: int
    dtype: str
    target: Target
    backend: str = "auto"

    @property
    def name(self) -> str:
        cell = self.cell + ("-bf16" if self.dtype == "bfloat16" else "") + (
            f"+{self.backend}" if self.backend != "auto" else "")
        if self.kind == "stream":
            return f"{cell}/stream/H{self.H}"
        return f"{cell}/{self.kind}/B{self.B}-T{self.T}-I{self.H}-H{self.H}"


def make_cases(*, quick: bool) -> list[GpuCase]:
    """Every case, in the order run: the largest size last, so a spent budget skips the least."""
    sizes = QUICK_SIZES if quick else SIZES
    layernorm, traced, streams = (QUICK_LAYERNORM, QUICK_TRACE, QUICK_STREAM) if quick else (
        LAYERNORM_SIZE, TRACE_SIZE, STREAM_SIZES)
    plain = [[GpuCase(cell, kind, *size, "float32", PLAIN_TARGET) for cell in ("lstm", "gru")
              for kind in ("train", "infer")] for size in sizes]
    # first: its first call is then the first use of the LayerNorm kernels in this process
    cases = [GpuCase("layernorm_lstm", "train", *layernorm, "float32", LAYERNORM_TARGET)]
    cases += plain[0] + plain[1]
    cases += [GpuCase("lstm", "train", *size, "bfloat16", PLAIN_TARGET) for size in sizes[:2]]
    cases.append(GpuCase("lstm", "trace", *traced, "float32", TRACE_TARGET))
    # the GPU engine itself on the plain cells, at the first size: how far the Triton loop is from cuDNN
    cases += [GpuCase(cell, kind, *sizes[0], dtype, PLAIN_TARGET, backend="triton")
              for cell, kind, dtype in (("lstm", "train", "float32"), ("lstm", "infer", "float32"),
                                        ("gru", "train", "float32"), ("lstm", "train", "bfloat16"))]
    cases += [GpuCase("lstm", "stream", 1, 1, H, "float32", STREAM_TARGET) for H in streams]
    return cases + plain[2]


def _train_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    params = list(module.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        module(x)[0].sum().backward()

    return step


def _infer_step(run: Callable[[], object]) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            run()

    return step


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _layer_pair(case: GpuCase, device: torch.device) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(ours, torch.nn peer with our weights where the cells match, x (T, B, H)) on `device` in the case's dtype."""
    dtype = getattr(torch, case.dtype)
    torch.manual_seed(0)
    peer = {"gru": nn.GRU}.get(case.cell, nn.LSTM)(case.H, case.H)
    if case.cell == "layernorm_lstm":  # another cell than cuDNN's: the same constructor, its own weights
        ours = gatedrnn.LayerNormLSTM(case.H, case.H)
    else:
        ours = {"gru": gatedrnn.GRU}.get(case.cell, gatedrnn.LSTM)(case.H, case.H)
        ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(case.T, case.B, case.H, generator=torch.Generator().manual_seed(1))  # (T, B, I)
    training = case.kind == "train"
    return ours.to(device, dtype).train(training), peer.to(device, dtype).train(training), x.to(device, dtype)


def build(case: GpuCase, device: torch.device, *, stream_steps: int = 200
          ) -> tuple[dict[str, Callable[[], None]], dict[str, str], Callable[[], Optional[float]]]:
    """(impls {"ours", "peer"}: one call each, labels {"ours", "peer"}, diff: () -> max |ours - peer| of an output,
    None where the two compute different cells)."""
    impls, labels, diff = _build(case, device, stream_steps)
    if case.backend == "auto":
        return impls, labels, diff
    labels["ours"] += f" (GATEDRNN_BACKEND={case.backend})"
    return ({"ours": under_backend(impls["ours"], case.backend), "peer": impls["peer"]}, labels,
            under_backend(diff, case.backend))


def _build(case: GpuCase, device: torch.device, stream_steps: int):
    if case.kind == "stream":
        return _build_stream(case, device, stream_steps)
    ours, peer, x = _layer_pair(case, device)
    ours_name = f"gatedrnn.{type(ours).__name__}"
    peer_name = f"torch.nn.{type(peer).__name__}" + (" (cuDNN)" if device.type == "cuda" else "")
    if case.kind == "trace":
        from gatedrnn.inspect import trace

        def diff() -> float:
            with torch.no_grad():
                return _max_diff(trace(ours, x).output, ours(x)[0])

        labels = {"ours": f"trace({ours_name})", "peer": f"{ours_name} forward"}
        return {"ours": _infer_step(lambda: trace(ours, x)), "peer": _infer_step(lambda: ours(x))}, labels, diff

    def output_diff() -> Optional[float]:
        if case.cell == "layernorm_lstm":  # a LayerNorm LSTM against a plain one: outputs differ by design
            return None
        with torch.no_grad():
            return _max_diff(ours(x)[0], peer(x)[0])

    labels = {"ours": ours_name, "peer": peer_name}
    if case.kind == "train":
        return {"ours": _train_step(ours, x), "peer": _train_step(peer, x)}, labels, output_diff
    return {"ours": _infer_step(lambda: ours(x)), "peer": _infer_step(lambda: peer(x))}, labels, output_diff


def _build_stream(case: GpuCase, device: torch.device, stream_steps: int):
    """One call = `stream_steps` steps of B=1 under no_grad, the state carried from call to call (None first)."""
    torch.manual_seed(0)
    ours = gatedrnn.LSTM(case.H, case.H).to(device).eval()
    peer = nn.LSTMCell(case.H, case.H).to(device)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(peer, name).copy_(getattr(ours, name + "_l0"))
    xs = torch.randn(stream_steps, 1, case.H, generator=torch.Generator().manual_seed(1)).to(device)
    steps = xs.unbind(0)  # each (1, H); a list read costs less than indexing a tensor per step
    carried: dict[str, object] = {"ours": None, "peer": None}

    def ours_steps() -> None:
        with torch.no_grad():
            state = carried["ours"]
            for x_t in steps:
                state = ours.step(x_t, state)[1]
            carried["ours"] = state

    def peer_steps() -> None:
        with torch.no_grad():
            state = carried["peer"]
            for x_t in steps:
                state = peer(x_t, state)
            carried["peer"] = state

    def diff() -> float:
        ours_state, peer_state, worst = None, None, 0.0
        with torch.no_grad():
            for x_t in steps[:8]:
                y, ours_state = ours.step(x_t, ours_state)
                peer_state = peer(x_t, peer_state)
                worst = max(worst, _max_diff(y, peer_state[0]))
        return worst

    labels = {"ours": "gatedrnn.LSTM.step", "peer": "torch.nn.LSTMCell"}
    return {"ours": ours_steps, "peer": peer_steps}, labels, diff


COLD_FIRST_CALL = """
import json, sys, time
import torch
import gatedrnn
B, T, H, device = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
layer = gatedrnn.LayerNormLSTM(H, H).to(device)
x = torch.randn(T, B, H, device=device)  # (T, B, I)
sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
sync()
start = time.perf_counter()
layer(x)[0].sum().backward()
sync()
print(json.dumps({"first_call_s": time.perf_counter() - start}))
"""


def cold_first_call(case: GpuCase, device: torch.device) -> tuple[Optional[float], Optional[str]]:
    """(seconds, error) of the first forward + backward of a LayerNormLSTM in a fresh process whose Triton and
    inductor caches are empty: what a user's first call on a new machine costs (the tests before this run warm the
    default caches, so the in-process first call may only load kernels)."""
    source_root = str(Path(gatedrnn.__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="gatedrnn-cold-") as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache, TORCHINDUCTOR_CACHE_DIR=cache,
                   PYTHONPATH=os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")])))
        command = [sys.executable, "-c", COLD_FIRST_CALL, str(case.B), str(case.T), str(case.H), str(device)]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=FIRST_CALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None, f"the fresh process took over {FIRST_CALL_TIMEOUT_S} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None, f"exit {done.returncode}: {done.stderr.strip()[-800:]}"
    return float(json.loads(lines[-1])["first_call_s"]), None
