"""Which gatedrnn operators a block of code dispatched: the tests' way to assert that a layer ran fused.

A TorchDispatchMode sees every operator call below autograd, so counting costs nothing outside the tests.
"""
from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode


class GatedrnnOps(TorchDispatchMode):
    """`with GatedrnnOps() as ops: ...` then ops.counts["scan"] is how many gatedrnn::scan calls ran."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()
        self.calls: list[tuple[str, tuple]] = []  # (name, args) of every gatedrnn operator call, in order

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        namespace, _, name = func._schema.name.partition("::")
        if namespace == "gatedrnn":
            self.counts[name] += 1
            self.calls.append((name, args))
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())
