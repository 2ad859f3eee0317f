r"""LayerNorm LSTM and LayerNorm GRU (Ba, Kiros & Hinton 2016, "Layer Normalization", arXiv:1607.06450, §3.1
and §6.4), with haste's placement (lmnt-com/haste, `LayerNormLSTM` / `LayerNormGRU`; haste issue #1):

* the input product W_ih x and the recurrent product W_hh h are normalised separately, each over its whole
  row of G*H values (all gates together), each with its own gain γ and no bias of its own; the gate biases
  are added after the normalisation;
* the LSTM also normalises the new cell state, with a gain and a bias, before the output tanh:
  h = o ⊙ tanh(LN(c_next)). The cell state itself (what the next step reads) is not normalised.

    LN(a; γ, β) = γ ⊙ (a − mean(a)) / sqrt(var(a) + ε) + β,   mean and var over a's last axis (var biased),
    ε = LAYER_NORM_EPS = 1e-5 (haste's and torch.nn.LayerNorm's default).

Differences from haste, all in layout only: torch.nn's gate order (LSTM i,f,g,o; GRU r,z,n) instead of
haste's (i,g,f,o; z,r,g), and torch.nn's two bias vectors b_ih, b_hh (the LSTM's gates see their sum, as
haste's single bias; the GRU's n gate keeps b_hn inside r ⊙ (·), as haste's recurrent_bias).

Parameters per layer and direction (besides torch.nn's): gamma_ih, gamma_hh (G*H,) (haste's gamma[0],
gamma[1]), and for the LSTM gamma_c, beta_c (H,) (haste's gamma_h, beta_h). The fused kernels are
`LayerNormLSTMCell` / `LayerNormGRUCell` in engine/csrc/cells.h.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gatedrnn.cells.gru import GRUGates
from gatedrnn.cells.lstm import LSTMGates, LSTMState

LAYER_NORM_EPS = 1e-5


def layer_norm(a: Tensor, gain: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """LN(a; γ, β) over the last axis (module docstring): a (B, K), gain and bias (K,) -> (B, K)."""
    return F.layer_norm(a, (a.shape[-1],), gain, bias, eps=LAYER_NORM_EPS)


def layernorm_lstm_step(
    x_proj: Tensor,
    state: LSTMState,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    gamma_ih: Tensor,
    gamma_hh: Tensor,
    gamma_c: Tensor,
    beta_c: Tensor,
    recurrent_mask: Optional[Tensor] = None,
) -> tuple[LSTMState, LSTMGates]:
    r"""One LayerNorm LSTM step (haste's placement; LN and ε in the module docstring).

    With ``x_proj = W_ih x + b_ih`` (the uniform form every cell gets; LN needs W_ih x alone, so b_ih is
    taken back off: wx = x_proj − b_ih), and W_hh reading h ⊙ recurrent_mask when one is given:

        wx     = x_proj − b_ih                                   (W_ih x)
        wh     = W_hh h
        pre    = LN(wx; γ_ih) + LN(wh; γ_hh) + b_ih + b_hh       blocks pre_i, pre_f, pre_g, pre_o
        i      = σ(pre_i)
        f      = σ(pre_f)
        g      = tanh(pre_g)
        o      = σ(pre_o)
        c_next = f ⊙ c + i ⊙ g
        h_next = o ⊙ tanh(LN(c_next; γ_c, β_c))

    Args:
        x_proj: (B, 4H) W_ih x + b_ih of this step.
        state: LSTMState(h (B, H), c (B, H)).
        w_hh: (4H, H). b_ih, b_hh: (4H,) or None. gamma_ih, gamma_hh: (4H,). gamma_c, beta_c: (H,).
        recurrent_mask: (B, H) or None.
    Returns:
        (LSTMState(h_next (B, H), c_next (B, H)), LSTMGates(i, f, g, o) each (B, H)).
    """
    h, c = state
    wx = x_proj if b_ih is None else x_proj - b_ih  # (B, 4H)
    wh = (h if recurrent_mask is None else h * recurrent_mask) @ w_hh.t()  # (B, 4H)
    pre = layer_norm(wx, gamma_ih) + layer_norm(wh, gamma_hh)
    if b_ih is not None:
        pre = pre + b_ih
    if b_hh is not None:
        pre = pre + b_hh
    pre_i, pre_f, pre_g, pre_o = pre.chunk(4, dim=1)  # 4 x (B, H)
    i = torch.sigmoid(pre_i)
    f = torch.sigmoid(pre_f)
    g = torch.tanh(pre_g)
    o = torch.sigmoid(pre_o)
    c_next = f * c + i * g
    h_next = o * torch.tanh(layer_norm(c_next, gamma_c, beta_c))
    return LSTMState(h_next, c_next), LSTMGates(i, f, g, o)


def layernorm_gru_step(
    x_proj: Tensor,
    h: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    gamma_ih: Tensor,
    gamma_hh: Tensor,
    recurrent_mask: Optional[Tensor] = None,
) -> tuple[Tensor, GRUGates]:
    r"""One LayerNorm GRU step (haste's placement; LN and ε in the module docstring).

    With ``x_proj = W_ih x + b_ih`` (b_ih taken back off for the LN, as in `layernorm_lstm_step`), and
    W_hh reading h ⊙ recurrent_mask when one is given (z ⊙ h keeps h):

        wx     = x_proj − b_ih                                   (W_ih x)
        wh     = W_hh h
        pre_x  = LN(wx; γ_ih) + b_ih                             blocks x_r, x_z, x_n
        pre_h  = LN(wh; γ_hh) + b_hh                             blocks h_r, h_z, h_n
        r      = σ(x_r + h_r)
        z      = σ(x_z + h_z)
        n      = tanh(x_n + r ⊙ h_n)
        h_next = (1 − z) ⊙ n + z ⊙ h

    Args:
        x_proj: (B, 3H) W_ih x + b_ih of this step. h: (B, H). w_hh: (3H, H). b_ih, b_hh: (3H,) or None.
        gamma_ih, gamma_hh: (3H,). recurrent_mask: (B, H) or None.
    Returns:
        (h_next (B, H), GRUGates(r, z, n) each (B, H)).
    """
    wx = x_proj if b_ih is None else x_proj - b_ih  # (B, 3H)
    wh = (h if recurrent_mask is None else h * recurrent_mask) @ w_hh.t()  # (B, 3H)
    pre_x = layer_norm(wx, gamma_ih)
    pre_h = layer_norm(wh, gamma_hh)
    if b_ih is not None:
        pre_x = pre_x + b_ih
    if b_hh is not None:
        pre_h = pre_h + b_hh
    x_r, x_z, x_n = pre_x.chunk(3, dim=1)  # 3 x (B, H)
    h_r, h_z, h_n = pre_h.chunk(3, dim=1)  # 3 x (B, H)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    h_next = (1 - z) * n + z * h
    return h_next, GRUGates(r, z, n)
