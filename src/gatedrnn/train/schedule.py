"""Learning-rate schedules as a pure function of the optimizer step, wrapped in torch's LambdaLR.

Being a function of the step alone, the schedule needs no state beyond the step count to resume.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, *, schedule: str, total_steps: int, warmup_steps: int = 0,
              step_every: int = 1000, step_gamma: float = 0.5) -> float:
    """The multiplier of the base lr for optimizer step `step` (0-based: the factor used by step+1).

    warmup:  linear from 1/(warmup+1) to 1 over the first `warmup_steps` steps, then
    "cosine": 0.5 (1 + cos(pi * progress)), progress = (step - warmup) / (total - warmup), from 1 to 0;
    "step":   step_gamma ** ((step - warmup) // step_every);
    "none":   1.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    after = step - warmup_steps
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(after, span) / span))
    if schedule == "step":
        return step_gamma ** (after // step_every)
    if schedule == "none":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}; expected 'cosine', 'step' or 'none'")


def build_scheduler(optimizer: Optimizer, *, schedule: str, total_steps: int, warmup_steps: int = 0,
                    step_every: int = 1000, step_gamma: float = 0.5) -> LambdaLR:
    def factor(step: int) -> float:
        return lr_factor(step, schedule=schedule, total_steps=total_steps, warmup_steps=warmup_steps,
                         step_every=step_every, step_gamma=step_gamma)

    return LambdaLR(optimizer, factor)
