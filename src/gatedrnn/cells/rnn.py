"""Elman RNN step: the ungated baseline that the LSTM and GRU are contrasted with."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class RNNGates(NamedTuple):
    """The pre-activation a (B, H); the RNN has no gates, this is what its nonlinearity sees."""

    a: Tensor


class RNNTrace(NamedTuple):
    """Every step of one layer and direction: h (T, B, H)."""

    h: Tensor


def rnn_step(
    x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], nonlinearity: str = "tanh",
    recurrent_mask: Optional[Tensor] = None,
) -> tuple[Tensor, RNNGates]:
    r"""One Elman RNN step.

        a      = W_ih x + b_ih + W_hh h + b_hh
        h_next = tanh(a)        (nonlinearity="tanh")
        h_next = relu(a)        (nonlinearity="relu")

    Args:
        x_proj: (B, H) input projection of this step, bias b_ih included.
        h: (B, H). w_hh: (H, H). b_hh: (H,) or None.
        recurrent_mask: (B, H) or None: W_hh reads h ⊙ recurrent_mask (variational recurrent dropout).
    Returns:
        (h_next (B, H), RNNGates(a) with a (B, H)).
    """
    a = x_proj + (h if recurrent_mask is None else h * recurrent_mask) @ w_hh.t()  # (B, H)
    if b_hh is not None:
        a = a + b_hh
    h_next = torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)
    return h_next, RNNGates(a)
