"""LSTM step (torch.nn.LSTM's form, with the optional projection of LSTMP)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class LSTMState(NamedTuple):
    """h: (B, P), c: (B, H)."""

    h: Tensor
    c: Tensor


class LSTMGates(NamedTuple):
    """Gate activations of one step, each (B, H): input i, forget f, candidate g, output o."""

    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor


class LSTMTrace(NamedTuple):
    """Every step of one layer and direction, each (T, B, ·): gates (T, B, H), c (T, B, H), h (T, B, P)."""

    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor
    c: Tensor
    h: Tensor


def lstm_step(
    x_proj: Tensor,
    state: LSTMState,
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    w_hr: Optional[Tensor] = None,
    recurrent_mask: Optional[Tensor] = None,
    candidate_mask: Optional[Tensor] = None,
) -> tuple[LSTMState, LSTMGates]:
    r"""One LSTM step.

    With ``x_proj = W_ih x + b_ih`` already computed (gate blocks i, f, g, o):

        i      = σ(W_ii x + b_ii + W_hi h + b_hi)
        f      = σ(W_if x + b_if + W_hf h + b_hf)
        g      = tanh(W_ig x + b_ig + W_hg h + b_hg)
        o      = σ(W_io x + b_io + W_ho h + b_ho)
        c_next = f ⊙ c + i ⊙ g
        h_next = o ⊙ tanh(c_next)                 (no projection)
        h_next = W_hr (o ⊙ tanh(c_next))          (with projection, LSTMP)

    With a recurrent_mask m (variational recurrent dropout, Gal & Ghahramani 2016) W_h· reads h ⊙ m; with a
    candidate_mask d (Semeniuta et al. 2016) c_next = f ⊙ c + i ⊙ (g ⊙ d).

    Args:
        x_proj: (B, 4H) input projection of this step, bias b_ih included.
        state: LSTMState with h (B, P) and c (B, H).
        w_hh: (4H, P). b_hh: (4H,) or None. w_hr: (P, H) or None. recurrent_mask: (B, P) or None.
        candidate_mask: (B, H) or None.
    Returns:
        (LSTMState(h_next (B, P), c_next (B, H)), LSTMGates(i, f, g, o) each (B, H)).
    """
    h, c = state
    pre = x_proj + (h if recurrent_mask is None else h * recurrent_mask) @ w_hh.t()  # (B, 4H)
    if b_hh is not None:
        pre = pre + b_hh
    pre_i, pre_f, pre_g, pre_o = pre.chunk(4, dim=1)  # 4 x (B, H)
    i = torch.sigmoid(pre_i)
    f = torch.sigmoid(pre_f)
    g = torch.tanh(pre_g)
    o = torch.sigmoid(pre_o)
    c_next = f * c + i * (g if candidate_mask is None else g * candidate_mask)
    h_next = o * torch.tanh(c_next)
    if w_hr is not None:
        h_next = h_next @ w_hr.t()  # (B, P)
    return LSTMState(h_next, c_next), LSTMGates(i, f, g, o)
