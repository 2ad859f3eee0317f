"""Training-step speed of the fused LayerNorm LSTM against our plain LSTM and against the same cell as a Python loop.

One training step = forward over the whole sequence, then backward of output.sum() into every parameter and x.
Three contenders per shape (B, T, I, H), run interleaved (one of each per round, so a load change on the machine
hits all three alike), median of `rounds` rounds after one warm-up round:

    lstm        gatedrnn.LSTM on the fused engine (the baseline)
    layernorm   gatedrnn.LayerNormLSTM on the fused engine
    python      the same LayerNorm LSTM as a Python loop of torch ops (`gatedrnn.engine.scan_reference`, the
                step function `gatedrnn.cells.layernorm.layernorm_lstm_step` once per time step, autograd)

Printed: the medians and the ratios layernorm / lstm (target <= 1.3) and python / layernorm (target >= 4).
`--json PATH` also writes them. Not part of `make bench`.

    python -m gatedrnn.bench.layernorm_speed [--rounds 7] [--threads N] [--shapes 16,100,64,128 64,100,256,256]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

import gatedrnn
from gatedrnn import engine

SHAPES = ((16, 100, 64, 128), (64, 100, 256, 256))


def _training_step(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, params: list) -> Callable[[], None]:
    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        run(x).sum().backward()

    return step


def contenders(batch: int, steps: int, inputs: int, hidden: int) -> dict[str, Callable[[], None]]:
    """name -> one training step on fresh modules of the shape (x (T, B, I), float32)."""
    torch.manual_seed(0)
    x = torch.randn(steps, batch, inputs, requires_grad=True)
    lstm = gatedrnn.LSTM(inputs, hidden)
    layernorm = gatedrnn.LayerNormLSTM(inputs, hidden)
    weights = layernorm.layer_weights(0)
    zeros = torch.zeros(batch, hidden)

    def python_loop(x: torch.Tensor) -> torch.Tensor:
        return engine.scan_reference("layernorm_lstm", x, (zeros, zeros), weights).y

    return {
        "lstm": _training_step(lambda x: lstm(x)[0], x, list(lstm.parameters())),
        "layernorm": _training_step(lambda x: layernorm(x)[0], x, list(layernorm.parameters())),
        "python": _training_step(python_loop, x, list(layernorm.parameters())),
    }


def measure(shape: tuple[int, int, int, int], rounds: int) -> dict:
    """Median seconds per training step of each contender, and the two ratios."""
    steps_by_name = contenders(*shape)
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for round_index in range(rounds + 1):  # round 0 warms up (thread pools, packed weights, allocator)
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            if round_index:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "B": shape[0], "T": shape[1], "I": shape[2], "H": shape[3], "rounds": rounds,
        "median_s": median,
        "layernorm_over_lstm": median["layernorm"] / median["lstm"],
        "python_over_layernorm": median["python"] / median["layernorm"],
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m gatedrnn.bench.layernorm_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (median), at least 7 for the report")
    parser.add_argument("--shapes", nargs="+", default=[",".join(map(str, s)) for s in SHAPES],
                        help="B,T,I,H per shape")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = engine.backend_info()
    if info["backend"] != "fused":
        raise SystemExit(f"the fused engine is not in use ({info['reason']}); this benchmark compares against it")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, training step = forward + backward")
    results = []
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split(","))
        if len(shape) != 4:
            raise SystemExit(f"--shapes takes B,T,I,H, got {text!r}")
        result = measure(shape, args.rounds)
        results.append(result)
        m = result["median_s"]
        print(f"(B,T,I,H)={shape}: lstm {m['lstm'] * 1e3:.1f} ms, layernorm {m['layernorm'] * 1e3:.1f} ms, "
              f"python loop {m['python'] * 1e3:.1f} ms | layernorm/lstm {result['layernorm_over_lstm']:.2f}x "
              f"(target <= 1.3), python/layernorm {result['python_over_layernorm']:.2f}x (target >= 4)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"threads": torch.get_num_threads(), "results": results}, out, indent=2)
    return results


if __name__ == "__main__":
    main()
