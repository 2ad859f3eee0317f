r"""Never slower than torch.nn: for a plain LSTM where torch's own CPU kernel (oneDNN's LSTM behind
`torch._VF.lstm`) beats the fused engine on this machine, the layer runs torch's kernel, chosen by measurement the
way `torch.backends.cudnn.benchmark` chooses a convolution algorithm.

Shape symbols as in `gatedrnn.layers.recurrent`: N batch, L sequence length, H_in input size, H_cell hidden size.

Eligible (all must hold; otherwise the fused engine runs, as always):
    the plain LSTM cell (torch_mode "LSTM", no Greff variant, no zoneout and no active regulariser, no inter-layer
    dropout while training), proj_size == 0, a Tensor input (not a PackedSequence), `forward` (gate traces and
    the inspect tools always run our engine), CPU tensors of float32 or float64 with the fused engine available,
    eager execution (not torch.compile / torch.export, not inside a torch.func transform).
    torch.jit.trace, ONNX export and autocast already run torch's op (`gatedrnn.layers.aten`).

The choice, per bucket (grad or not, dtype, num_layers, bidirectional, bias, H_in, H_cell, N and L each rounded up
to a power of 2, torch.get_num_threads()): at the first eligible call in a bucket both kernels run on clones of the
call's input and of the parameters (the real parameters, their .grad, the RNG and the module are untouched),
interleaved, forward + backward when the call needs a gradient, forward alone otherwise; torch's kernel is chosen
only if it is more than MARGIN faster by its best time and also faster by its median (`decide`). The result is
kept in memory and in <cache>/kernel-choice-<build key>.json (<cache> and the per-CPU build key as in
`gatedrnn.engine._build`), so a machine measures a bucket once. A measurement is deferred (the engine runs,
nothing is recorded) while a TorchDispatchMode, saved-tensor hooks or the profiler are active: timing inside them
would pollute what they see.

GATEDRNN_TORCH_FLOOR selects the policy: "measure" (default, also unset or empty), "off" (always the fused
engine) or "torch" (torch's kernel wherever eligible, without measuring; for tests and comparisons).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from gatedrnn import engine
from gatedrnn.engine import _build
from gatedrnn.layers import aten
from gatedrnn.layers._checks import active_regularisers
from gatedrnn.layers._weights import read_weight

ENV_VAR = "GATEDRNN_TORCH_FLOOR"
POLICIES = ("measure", "off", "torch")
GATEDRNN, TORCH = "gatedrnn", "torch"
MARGIN = 0.05  # torch's kernel must be > 5% faster: a tie stays on our engine
MIN_REPETITIONS, MAX_REPETITIONS = 5, 15
BUDGET_S = 0.75  # past MIN_REPETITIONS, stop once the measurement has taken this long
FILE_FORMAT = 1
TIMES = ("gatedrnn_s", "torch_s", "gatedrnn_min_s", "torch_min_s")  # seconds recorded per bucket: medians, bests
RULE = ("torch's kernel may run for a plain LSTM (no variant, regulariser, training-mode dropout or proj_size) "
        "called through forward on a CPU float32/float64 Tensor (not packed), eagerly (not under torch.compile, "
        "torch.export or torch.func), when the fused engine is available and torch's kernel was measured more "
        f"than {MARGIN:.0%} faster in the call's bucket; {ENV_VAR}=off turns the choice off")

_clock: Callable[[], float] = time.perf_counter  # the timer of the measurements
_lock = threading.Lock()  # one measurement at a time; a second thread waits and then reads the result
_choices: dict[str, dict] = {}  # bucket key -> record, for the file in _loaded_from
_loaded_from: Optional[Path] = None
_warned: set[str] = set()
_key: Optional[str] = None
_path: Optional[Path] = None
_bucket_names: dict[tuple, str] = {}


class KernelChoice(NamedTuple):
    kernel: str  # GATEDRNN or TORCH
    reason: str


def requested_policy() -> str:
    """GATEDRNN_TORCH_FLOOR, read now: "measure" (also unset or empty), "off" or "torch"; else ValueError."""
    raw = os.environ.get(ENV_VAR, "")
    value = raw.strip().lower() or "measure"
    if value not in POLICIES:
        raise ValueError(f"{ENV_VAR}={raw!r} is not understood; expected one of {', '.join(POLICIES)} (or unset)")
    return value


def _needs_grad(layer, input: Tensor, hx) -> bool:
    if not torch.is_grad_enabled():
        return False
    if input.requires_grad:
        return True
    states = hx if isinstance(hx, (tuple, list)) else (hx,)
    if any(isinstance(s, Tensor) and s.requires_grad for s in states):
        return True
    for name in layer._flat_weights_names:  # one weight at a time: the first usually answers (forward asks per call)
        if read_weight(layer, name).requires_grad:
            return True
    return False


def ineligible(layer, input, hx=None) -> Optional[str]:
    """Why this forward call must run our engine whatever is measured, or None when torch's kernel may run."""
    spec = layer.spec
    if spec.torch_mode != "LSTM" or getattr(layer, "variant", None) is not None:
        return f"{spec.display_name} is not torch.nn's plain LSTM"
    if layer.proj_size:
        return "proj_size > 0"
    differs = layer._torch_op_differs()
    if differs is not None:
        return differs
    if active_regularisers(layer):
        return f"regularisers {active_regularisers(layer)}"
    if layer.dropout and layer.training and layer.num_layers > 1:
        return "dropout between layers while training (torch's op would draw other masks)"
    if isinstance(input, PackedSequence):
        return "PackedSequence input"
    if not isinstance(input, Tensor):
        return f"input is a {type(input).__name__}"
    weight = layer.weight_ih_l0
    if (input.dim() not in (2, 3) or input.shape[-1] != layer.input_size or input.dtype != weight.dtype
            or input.device != weight.device or 0 in input.shape):
        return "the input does not match the layer (the engine's checks say how)"
    if torch.compiler.is_compiling():
        return "torch.compile / torch.export records gatedrnn's own operator"
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "inside a torch.func transform"
    if not (spec.fused and engine.runs_fused(input)):
        return "the fused engine does not run these tensors (see backend_info()['reason'])"
    return None


def bucket_key(layer, input: Tensor, grad: bool) -> str:
    """The measurement bucket of a call: input (L, N, H_in), (N, L, H_in) with batch_first, or (L, H_in)."""
    if input.dim() == 2:
        steps, batch = input.shape[0], 1
    else:
        steps, batch = (input.shape[1], input.shape[0]) if layer.batch_first else (input.shape[0], input.shape[1])
    parts = (grad, input.dtype, layer.num_layers, layer.bidirectional, layer.bias, layer.input_size,
             layer.hidden_size, _pow2(batch), _pow2(steps), torch.get_num_threads())
    name = _bucket_names.get(parts)
    if name is None:  # the string is built once per bucket: forward asks on every call
        name = _bucket_names[parts] = "-".join((
            "train" if grad else "infer", str(input.dtype).replace("torch.", ""), f"layers{layer.num_layers}",
            "bi" if layer.bidirectional else "uni", "bias" if layer.bias else "nobias", f"I{layer.input_size}",
            f"H{layer.hidden_size}", f"N{parts[7]}", f"L{parts[8]}", f"threads{parts[9]}"))
    return name


def _pow2(n: int) -> int:
    """n rounded up to a power of 2 (n >= 1)."""
    return 1 << (n - 1).bit_length()


def choose(layer, input, hx=None) -> KernelChoice:
    """Which kernel this forward call runs, and why; measures the bucket when the policy is "measure" and
    the bucket has not been measured on this machine yet."""
    policy = requested_policy()
    if policy == "off":
        return KernelChoice(GATEDRNN, f"{ENV_VAR}=off")
    why = ineligible(layer, input, hx)
    if why is not None:
        return KernelChoice(GATEDRNN, f"not eligible: {why}")
    if policy == "torch":
        return KernelChoice(TORCH, f"{ENV_VAR}=torch")
    grad = _needs_grad(layer, input, hx)
    key = bucket_key(layer, input, grad)
    record = _lookup(key)
    if record is None:
        busy = _measuring_would_disturb()
        if busy is not None:
            return KernelChoice(GATEDRNN, f"bucket {key} not measured yet, and not measured now: {busy}")
        with _lock:
            record = _lookup(key)
            if record is None:
                record = _measure(layer, input, grad)
                _store(key, record)
    ms = {name: f"{record[name] * 1e3:.3f}" for name in TIMES}
    return KernelChoice(record["kernel"], f"bucket {key}: median (best) gatedrnn {ms['gatedrnn_s']} "
                                          f"({ms['gatedrnn_min_s']}) ms, torch {ms['torch_s']} "
                                          f"({ms['torch_min_s']}) ms")


def runs_torch(layer, input, hx=None) -> bool:
    """The layer's forward asks this: whether to run torch's kernel (`gatedrnn.layers.aten.forward`)."""
    policy = requested_policy()
    if policy == "off":
        return False
    record = None
    if (policy == "measure" and type(input) is Tensor and input.dim() in (2, 3) and layer.mode == "lstm"
            and not layer.proj_size):  # what every eligible call is, so `record` is looked up for each of them
        # the common case first: a bucket measured to run our engine needs no eligibility check (~10 µs a call)
        record = _lookup(bucket_key(layer, input, _needs_grad(layer, input, hx)))
        if record is not None and record["kernel"] != TORCH:
            return False
    if ineligible(layer, input, hx) is not None:
        return False
    if policy == "torch":
        return True
    if record is not None:  # without building choose()'s reason
        return record["kernel"] == TORCH
    return choose(layer, input, hx).kernel == TORCH


def kernel_choice(layer, input, hx=None) -> dict:
    """{"kernel": "gatedrnn" | "torch", "reason": str} for `layer(input, hx)` called now (in the current grad
    mode); like that call, it measures the bucket if it was not measured yet."""
    if not hasattr(layer, "_torch_op_differs"):
        raise TypeError(f"kernel_choice takes a gatedrnn recurrent layer (LSTM, GRU, ...), got {type(layer).__name__}")
    why = aten.reason(layer.weight_ih_l0.device.type)
    if why is not None:
        return {"kernel": TORCH, "reason": f"{why} runs torch's own op (gatedrnn.layers.aten)"}
    return choose(layer, input, hx)._asdict()


def _measuring_would_disturb() -> Optional[str]:
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    if _get_current_dispatch_mode() is not None:
        return "a TorchDispatchMode is active"
    if torch._C._autograd._top_saved_tensors_default_hooks(False) is not None:
        return "saved-tensor hooks (e.g. activation checkpointing) are active"
    if torch.autograd.profiler._is_profiler_enabled:
        return "the profiler is running"
    return None


# ----- the measurement -----
def _measure(layer, input: Tensor, grad: bool) -> dict:
    """Median seconds of each kernel on clones of `input` and of the layer's parameters.

    Timed: forward (and, with `grad`, the gradient of output.sum() with respect to every leaf that requires one)
    under the call's grad mode. The kernels alternate which runs first, after one warm-up call each."""
    from gatedrnn.layers.recurrent import LSTM

    shadow = torch.nn.utils.skip_init(  # on the meta device first: no initialisation draws from torch's RNG
        LSTM, layer.input_size, layer.hidden_size, layer.num_layers, layer.bias, layer.batch_first,
        bidirectional=layer.bidirectional, device=input.device, dtype=input.dtype)
    shadow.train(layer.training)
    with torch.no_grad():
        for mine, theirs in zip(shadow._flat_weights, layer._flat_weights):
            mine.copy_(theirs)
            mine.requires_grad_(grad and theirs.requires_grad)
    x = input.detach().clone().requires_grad_(grad and input.requires_grad)
    leaves = [t for t in [x, *shadow._flat_weights] if t.requires_grad]

    def run(kernel: str) -> float:
        start = _clock()
        if kernel == TORCH:
            output, _ = aten.forward(shadow, x, None, any_dtype=False)
        else:
            output, _, _ = shadow._run(x, None, trace=False)
        if leaves:
            torch.autograd.grad(output.sum(), leaves)
        return _clock() - start

    run(GATEDRNN), run(TORCH)
    times: dict[str, list[float]] = {GATEDRNN: [], TORCH: []}
    began = _clock()
    for rep in range(MAX_REPETITIONS):
        for kernel in ((GATEDRNN, TORCH) if rep % 2 == 0 else (TORCH, GATEDRNN)):
            times[kernel].append(run(kernel))
        if rep + 1 >= MIN_REPETITIONS and _clock() - began > BUDGET_S:
            break
    ours, theirs = times[GATEDRNN], times[TORCH]
    record = {"gatedrnn_s": statistics.median(ours), "torch_s": statistics.median(theirs),
              "gatedrnn_min_s": min(ours), "torch_min_s": min(theirs), "repetitions": len(ours)}
    return {"kernel": decide(record), **record}


def decide(record: dict) -> str:
    """TORCH only when torch's kernel is more than MARGIN faster by its best time and faster by its median.

    Other processes only ever add time, so the minimum is the kernel's own cost; the median must agree, so that
    one lucky run cannot decide. Anything less clear, a tie included, keeps our engine."""
    faster_best = record["torch_min_s"] < (1 - MARGIN) * record["gatedrnn_min_s"]
    return TORCH if faster_best and record["torch_s"] < record["gatedrnn_s"] else GATEDRNN


# ----- the cache: in memory, and one JSON file per CPU and build -----
def cache_file() -> Path:
    """<cache>/kernel-choice-<build key>.json: the build key changes with the CPU, the flags and the sources."""
    global _key, _path
    if _path is None:  # once per process, as the engine's library is loaded once
        _key = _build.build_key()
        _path = _build.cache_dir() / f"kernel-choice-{_key}.json"
    return _path


def _lookup(key: str) -> Optional[dict]:
    try:
        path = cache_file()
    except Exception:  # no build key (e.g. a bad GATEDRNN_ISA, which the engine's own load reports): nothing known
        return None
    if path is not _loaded_from:
        _reload(path)
    return _choices.get(key)


def _reload(path: Path) -> None:
    global _loaded_from
    _choices.clear()
    _choices.update(_read(path))
    _loaded_from = path


def _read(path: Path) -> dict[str, dict]:
    """The buckets recorded in `path`; a missing file is empty, an unreadable one is ignored with one warning
    (it is rewritten at the next measurement)."""
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        _warn_once(path, f"cannot read it ({type(error).__name__}: {error})")
        return {}
    buckets = content.get("buckets") if isinstance(content, dict) else None
    if not (isinstance(content, dict) and content.get("format") == FILE_FORMAT and isinstance(buckets, dict)
            and all(_valid(record) for record in buckets.values())):
        _warn_once(path, f"it is not a kernel-choice file of format {FILE_FORMAT}")
        return {}
    return buckets


def _valid(record) -> bool:
    return (isinstance(record, dict) and record.get("kernel") in (GATEDRNN, TORCH)
            and all(isinstance(record.get(k), (int, float)) for k in TIMES))


def _warn_once(path: Path, why: str) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        warnings.warn(f"gatedrnn: ignoring the kernel-choice cache {str(path)!r}: {why}; the buckets will be "
                      "measured again and the file rewritten", RuntimeWarning, stacklevel=4)


def _store(key: str, record: dict) -> None:
    """Record in memory, then merge into the file (another process may have added buckets) and replace it whole."""
    _choices[key] = record
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        merged = {**(_read(path) if path.exists() else {}), **_choices}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
            try:
                json.dump({"format": FILE_FORMAT, "build_key": _key, "buckets": merged}, f, indent=1,
                          sort_keys=True)
            except BaseException:
                os.unlink(f.name)
                raise
        try:
            os.replace(f.name, path)
        except OSError:
            os.unlink(f.name)
            raise
    except OSError as error:
        _warn_once(path, f"cannot write it ({error.strerror or error}); choices are kept in memory only")


def info() -> dict:
    """The kernel choice for `gatedrnn.backend_info()`: the policy, the rule, and every bucket measured here."""
    path = cache_file()
    if path is not _loaded_from:
        _reload(path)
    return {"policy": f"{ENV_VAR}={requested_policy()}", "rule": RULE, "cache_file": str(path),
            "buckets": {key: dict(record) for key, record in sorted(_choices.items())}}


def reset() -> None:
    """Forget every in-memory choice (the file stays): the next lookup finds the file again (in $GATEDRNN_CACHE_DIR
    as it is then) and reads it."""
    global _loaded_from, _path
    _choices.clear()
    _loaded_from = _path = None
    _warned.clear()


engine.BACKEND_REPORTS["kernel_choice"] = info
