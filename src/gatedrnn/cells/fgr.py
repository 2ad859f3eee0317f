r"""Greff et al. 2017's FGR ("full gate recurrence") LSTM: the peephole (vanilla) LSTM of
`gatedrnn.cells.lstm_variants` whose input, forget and output gates also read the previous step's gate
activations i′, f′, o′ through nine more (H, H) matrices, stored as one R_g (3H, 3H).

The previous gates are part of the state: (h, c, a) with a = [i′ | f′ | o′] (B, 3H), zeros at t = 0 unless
given. Shape symbols: B batch, H hidden size.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from gatedrnn.cells.lstm_variants import PeepholeGates


class FGRState(NamedTuple):
    """h (B, H), c (B, H), a (B, 3H) = [i′ | f′ | o′]: the gate activations of the step that made h and c."""

    h: Tensor
    c: Tensor
    a: Tensor


class FGRTrace(NamedTuple):
    """Every step of one layer and direction, each (T, B, ·): gates i, f, g, o (T, B, H), then the states in
    reverse: a (T, B, 3H) (the step's own [i | f | o], which the next step reads), c (T, B, H), h (T, B, H)."""

    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor
    a: Tensor
    c: Tensor
    h: Tensor


def fgr_lstm_step(
    x_proj: Tensor,
    state: FGRState,
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    peephole: Tensor,
    w_gate_hh: Tensor,
    recurrent_mask: Optional[Tensor] = None,
    candidate_mask: Optional[Tensor] = None,
) -> tuple[FGRState, PeepholeGates]:
    r"""One step of Greff et al.'s FGR LSTM: the vanilla peephole LSTM plus recurrent connections between all gates.

    With x_proj = W_ih x + b_ih and the recurrent input r = W_hh h + b_hh split into the gate blocks i, f, g, o,
    peepholes p = [p_i | p_f | p_o], and the gate recurrence q = a R_gᵀ of the previous step's gates
    a = [i′ | f′ | o′] (R_g (3H, 3H): rows the target gates i, f, o, columns the sources i′, f′, o′; so
    q_i = R_ii i′ + R_fi f′ + R_oi o′, and likewise q_f, q_o):

        q      = a R_gᵀ                            split into q_i, q_f, q_o
        i      = σ(x_i + r_i + p_i ⊙ c + q_i)
        f      = σ(x_f + r_f + p_f ⊙ c + q_f)
        g      = tanh(x_g + r_g)
        c_next = f ⊙ c + i ⊙ g
        o      = σ(x_o + r_o + p_o ⊙ c_next + q_o)   (o peeks at the new cell)
        h_next = o ⊙ tanh(c_next)
        a_next = [i | f | o]                       (what the next step reads as a)

    With R_g = 0 this is the vanilla peephole LSTM exactly. A recurrent_mask m (variational dropout) makes W_hh
    read h ⊙ m (R_g reads a unmasked); a candidate_mask d gives c_next = f ⊙ c + i ⊙ (g ⊙ d).

    Args:
        x_proj: (B, 4H) input projection, b_ih included, blocks i, f, g, o.
        state: FGRState(h (B, H), c (B, H), a (B, 3H)).
        w_hh: (4H, H). b_hh: (4H,) or None. peephole: (3H,) [p_i | p_f | p_o]. w_gate_hh: (3H, 3H) R_g.
        recurrent_mask: (B, H) or None. candidate_mask: (B, H) or None.
    Returns:
        (FGRState(h_next (B, H), c_next (B, H), a_next (B, 3H)), PeepholeGates(i, f, g, o) each (B, H)).
    """
    h, c, a = state
    h_rec = h if recurrent_mask is None else h * recurrent_mask
    pre = x_proj + h_rec @ w_hh.t()  # (B, 4H)
    if b_hh is not None:
        pre = pre + b_hh
    pre_i, pre_f, pre_g, pre_o = pre.chunk(4, dim=1)  # 4 x (B, H)
    q = a @ w_gate_hh.t()  # (B, 3H)
    q_i, q_f, q_o = q.chunk(3, dim=1)  # 3 x (B, H)
    p_i, p_f, p_o = peephole.chunk(3)  # 3 x (H,)
    i = torch.sigmoid(pre_i + p_i * c + q_i)
    f = torch.sigmoid(pre_f + p_f * c + q_f)
    g = torch.tanh(pre_g)
    c_next = f * c + i * (g if candidate_mask is None else g * candidate_mask)
    o = torch.sigmoid(pre_o + p_o * c_next + q_o)
    h_next = o * torch.tanh(c_next)
    a_next = torch.cat([i, f, o], dim=1)  # (B, 3H)
    return FGRState(h_next, c_next, a_next), PeepholeGates(i, f, g, o)
