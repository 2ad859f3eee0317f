"""Dynamic int8 LSTM: quantize_dynamic of a gatedrnn.LSTM vs of an nn.LSTM with the same weights (and both
float layers). One process, one thread, median of 41 rounds; every round runs each case once, in a new
shuffled order (the call after another kind of call can pay for it). Prints one JSON object (milliseconds).

    python benchmarks/quantized_lstm.py
"""
from __future__ import annotations

import json
import random
import statistics
import time
import warnings

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

import gatedrnn

SHAPES = [(1, 100, 64, 64), (16, 100, 64, 128)]  # (B, T, I, H)
ROUNDS = 41


def measure(batch: int, steps: int, features: int, hidden: int) -> dict[str, float]:
    ours = gatedrnn.LSTM(features, hidden).eval()
    theirs = nn.LSTM(features, hidden).eval()
    theirs.load_state_dict(ours.state_dict())
    q_ours = quantize_dynamic(nn.ModuleDict({"r": ours}), {gatedrnn.LSTM})["r"]
    q_theirs = quantize_dynamic(nn.ModuleDict({"r": theirs}), {nn.LSTM})["r"]
    x = torch.randn(steps, batch, features)  # (T, B, I)
    cases = {"gatedrnn_int8": lambda: q_ours(x), "torch_int8": lambda: q_theirs(x),
             "gatedrnn_float": lambda: ours(x), "torch_float": lambda: theirs(x)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = random.Random(0)
    with torch.no_grad():
        assert torch.equal(q_ours(x)[0], q_theirs(x)[0])
        for run in cases.values():
            run(), run()
        for _ in range(ROUNDS):
            for name, run in order.sample(list(cases.items()), len(cases)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    result["ratio_int8_gatedrnn_over_torch"] = result["gatedrnn_int8"] / result["torch_int8"]
    return result


def main() -> None:
    warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(json.dumps({f"B{b}_T{t}_I{i}_H{h}": measure(b, t, i, h) for b, t, i, h in SHAPES}, indent=1))


if __name__ == "__main__":
    main()
