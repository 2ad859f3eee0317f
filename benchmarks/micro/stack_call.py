"""A no-grad forward through the one-call stack path (`engine.run_stack_inference`) against the layer-by-layer
loop it replaces, interleaved in one process (engine/csrc/README.md quotes a run). The loop is timed with the
stack path declining, so it also pays the stack path's checks: a small overstatement of the old cost.

    PYTHONPATH=src python benchmarks/micro/stack_call.py
"""
import statistics
import time

import torch

import gatedrnn
from gatedrnn import engine


def microseconds(call, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    torch.set_grad_enabled(False)
    stack_path = engine.run_stack_inference
    for steps, n in ((1, 2000), (100, 300)):
        layer, x = gatedrnn.LSTM(64, 64, batch_first=True), torch.randn(1, steps, 64)
        runs = {"stack": [], "loop": []}
        for _ in range(3):
            layer(x)
        try:
            for _ in range(11):
                engine.run_stack_inference = stack_path
                runs["stack"].append(microseconds(lambda: layer(x), n))
                engine.run_stack_inference = lambda *args, **kwargs: None
                runs["loop"].append(microseconds(lambda: layer(x), n))
        finally:
            engine.run_stack_inference = stack_path
        print(f"LSTM B=1 T={steps} H=64, no_grad, median of 11 interleaved runs: one call "
              f"{statistics.median(runs['stack']):.1f} us, layer loop {statistics.median(runs['loop']):.1f} us")


if __name__ == "__main__":
    main()
