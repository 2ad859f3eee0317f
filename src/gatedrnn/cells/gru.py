"""GRU step (torch.nn.GRU's form: the reset gate multiplies W_hn h + b_hn)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class GRUGates(NamedTuple):
    """Gate activations of one step, each (B, H): reset r, update z, candidate n."""

    r: Tensor
    z: Tensor
    n: Tensor


class GRUTrace(NamedTuple):
    """Every step of one layer and direction, each (T, B, H)."""

    r: Tensor
    z: Tensor
    n: Tensor
    h: Tensor


def gru_step(
    x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], recurrent_mask: Optional[Tensor] = None,
    candidate_mask: Optional[Tensor] = None,
) -> tuple[Tensor, GRUGates]:
    r"""One GRU step.

    With ``x_proj = W_ih x + b_ih`` already computed (gate blocks r, z, n):

        r      = σ(W_ir x + b_ir + W_hr h + b_hr)
        z      = σ(W_iz x + b_iz + W_hz h + b_hz)
        n      = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        h_next = (1 − z) ⊙ n + z ⊙ h

    With a recurrent_mask m (variational recurrent dropout) the W_h· products read h ⊙ m; z ⊙ h keeps h.
    With a candidate_mask d (Semeniuta et al. 2016) h_next = (1 − z) ⊙ (n ⊙ d) + z ⊙ h.

    Args:
        x_proj: (B, 3H) input projection of this step, bias b_ih included.
        h: (B, H). w_hh: (3H, H). b_hh: (3H,) or None. recurrent_mask, candidate_mask: (B, H) or None.
    Returns:
        (h_next (B, H), GRUGates(r, z, n) each (B, H)).
    """
    h_proj = (h if recurrent_mask is None else h * recurrent_mask) @ w_hh.t()  # (B, 3H)
    if b_hh is not None:
        h_proj = h_proj + b_hh
    x_r, x_z, x_n = x_proj.chunk(3, dim=1)  # 3 x (B, H)
    h_r, h_z, h_n = h_proj.chunk(3, dim=1)  # 3 x (B, H)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    h_next = (1 - z) * (n if candidate_mask is None else n * candidate_mask) + z * h
    return h_next, GRUGates(r, z, n)
