"""The random parts of a layer's forward, drawn in Python (so `torch.manual_seed` reproduces them) and handed to
both paths: the reference scan applies them around the cell step, the fused kernels inside their time loop.

Shapes: T steps, B batch, H hidden, P size of h.
    zoneout (T, B, P [+ H]): per step and unit, the weight d of the previous state (Krueger et al. 2017,
        "Zoneout: Regularizing RNNs by Randomly Preserving Hidden Activations"):
            h_t = d_h ⊙ h_{t−1} + (1 − d_h) ⊙ h̃_t,   c_t = d_c ⊙ c_{t−1} + (1 − d_c) ⊙ c̃_t
        where h̃, c̃ are the cell's own new state. Training: d ~ Bernoulli(p) per step and unit; eval: d = p
        (the expectation, as the paper does). Columns [0, P) weight h, [P, P + H) weight c.
    recurrent_mask (B, P): variational recurrent dropout (Gal & Ghahramani 2016): one mask per sequence,
        m ~ Bernoulli(1 − p) / (1 − p), shared by the gates, and W_hh reads h ⊙ m at every step. Keras's
        `recurrent_dropout` is the same with one mask per gate block (Keras 3 draws 4 for an LSTM, 3 for a GRU).
    candidate_mask (T, B, H): candidate dropout (Semeniuta, Severyn & Barth 2016, "Recurrent Dropout without
        Memory Loss"): per step, the candidate (LSTM g, GRU n) is multiplied by m ~ Bernoulli(1 − p) / (1 − p)
        where it enters the state (c = f ⊙ c + i ⊙ (g ⊙ m); h = (1 − z) ⊙ (n ⊙ m) + z ⊙ h); the memory itself is
        never dropped.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class LayerNoise(NamedTuple):
    """The noise of one layer and direction for one forward call (either may be None)."""

    zoneout: Optional[Tensor] = None         # (T, B, P [+ H])
    recurrent_mask: Optional[Tensor] = None  # (B, P)
    candidate_mask: Optional[Tensor] = None  # (T, B, H)


def draw_zoneout(steps: int, batch: int, out_size: int, hidden: Optional[int], p_h: float, p_c: float,
                 training: bool, like: Tensor) -> Optional[Tensor]:
    """Zoneout weights (T, B, P [+ H]) (c columns when `hidden` is given), or None when both rates are 0."""
    if p_h == 0 and p_c == 0:
        return None
    rates = [(out_size, p_h)] + ([(hidden, p_c)] if hidden is not None else [])
    columns = []
    for width, p in rates:
        if training:
            columns.append(torch.bernoulli(like.new_full((steps, batch, width), p)))
        else:
            columns.append(like.new_full((steps, batch, width), p))
    return torch.cat(columns, dim=2)


def draw_candidate_mask(steps: int, batch: int, hidden: int, p: float, like: Tensor) -> Optional[Tensor]:
    """Candidate dropout's masks (T, B, H), scaled by 1 / (1 − p), or None when p is 0."""
    if p == 0:
        return None
    return torch.bernoulli(like.new_full((steps, batch, hidden), 1 - p)) / (1 - p)


def draw_recurrent_mask(batch: int, out_size: int, p: float, like: Tensor) -> Optional[Tensor]:
    """Variational dropout's mask (B, P), scaled by 1 / (1 − p), or None when p is 0."""
    if p == 0:
        return None
    return torch.bernoulli(like.new_full((batch, out_size), 1 - p)) / (1 - p)
