"""The random parts of a layer's forward, drawn once per call and handed to both paths: the reference scan
applies them around the cell step, the fused kernels inside their time loop.

Every mask is `keep_mask`: for CPU float32/float64 tensors the engine's counter-based generator fills it from one
seed drawn from torch's generator (so `torch.manual_seed` reproduces it, and both paths get the same tensor;
torch's bernoulli_ costs ~16 ns per element on CPU, more than a small zoneout step itself); elsewhere, or while
torch.compile traces, `torch.rand(...) < keep`. Either way each element is kept with its probability exactly
(to 2^-24).

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

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from gatedrnn.engine import _build


class LayerNoise(NamedTuple):
    """The noise of one layer and direction for one forward call (either may be None)."""

    zoneout: Optional[Tensor] = None         # (T, B, P [+ H])
    recurrent_mask: Optional[Tensor] = None  # (B, P)
    candidate_mask: Optional[Tensor] = None  # (T, B, H)


def keep_mask(shape: Sequence[int], keep: Sequence[float], scale: float, like: Tensor) -> Tensor:
    """A tensor of `shape` (last dimension W, `keep` one probability per column, or one for all) holding
    `scale` where its element is kept and 0 elsewhere, in like's dtype and device."""
    width = shape[-1]
    keep = list(keep) * width if len(keep) == 1 else list(keep)
    library = None
    if like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling():
        library = _build.load()
    if library is None:
        thresholds = torch.tensor(keep, dtype=torch.float32, device=like.device)
        kept = torch.rand(tuple(shape), dtype=torch.float32, device=like.device) < thresholds
        return kept.to(like.dtype) * scale  # scale in like's precision (a where() of floats would be float32)
    seed = int(torch.randint(-(2 ** 63), 2 ** 63 - 1, (), dtype=torch.int64))  # torch's generator: manual_seed
    out = torch.empty(tuple(shape), dtype=like.dtype)
    library.keep_mask(out, torch.tensor(keep, dtype=torch.float32), float(scale), seed)
    return out


def draw_zoneout(steps: int, batch: int, out_size: int, hidden: Optional[int], p_h: float, p_c: float,
                 training: bool, like: Tensor) -> Optional[Tensor]:
    """Zoneout weights (T, B, P [+ H]) (c columns when `hidden` is given), or None when both rates are 0:
    1 with probability p (keep the previous value) while training, p at eval."""
    if p_h == 0 and p_c == 0:
        return None
    rates = [p_h] * out_size + ([p_c] * hidden if hidden is not None else [])
    if not training:
        return torch.tensor(rates, dtype=like.dtype, device=like.device).expand(steps, batch, len(rates)).contiguous()
    return keep_mask((steps, batch, len(rates)), rates, 1.0, like)


def draw_candidate_mask(steps: int, batch: int, hidden: int, p: float, like: Tensor) -> Optional[Tensor]:
    """Candidate dropout's masks (T, B, H), scaled by 1 / (1 − p), or None when p is 0."""
    if p == 0:
        return None
    return keep_mask((steps, batch, hidden), [1 - p], 1 / (1 - p), like)


def draw_recurrent_mask(batch: int, out_size: int, p: float, like: Tensor) -> Optional[Tensor]:
    """Variational dropout's mask (B, P), scaled by 1 / (1 − p), or None when p is 0."""
    if p == 0:
        return None
    return keep_mask((batch, out_size), [1 - p], 1 / (1 - p), like)


def drop_weight(weight: Tensor, p: float) -> Tensor:
    """DropConnect (weight drop): weight ⊙ M / (1 − p), M one 0/1 mask of weight's shape; differentiable in weight."""
    return weight * keep_mask(tuple(weight.shape), [1 - p], 1 / (1 - p), weight)
