r"""sLSTM step: the scalar-memory LSTM of xLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory",
arXiv:2405.04517, section 2.2 and appendix), with exponential gating, the normaliser state n, the stabiliser
state m and a block-diagonal (head-wise) recurrence.

Shape symbols: B batch, H hidden size, K number of heads, D = H / K the head size.

Gate blocks are stacked in the official code's order i, f, z, o (NX-AI/xlstm, `xlstm/blocks/slstm`: the
vanilla step unbinds (i, f, z, o) and the CUDA kernel indexes i, f, z, o at offsets 0..3); each block is H
wide with the heads side by side (unit k*D + d is unit d of head k), which is the official code's external
"gates, heads, head dim" layout.

The recurrent weights are stored per head as ``r_blocks`` (K, 4D, D): ``r_blocks[k]`` is head k's own
torch.nn-style recurrent matrix (rows: gate blocks i, f, z, o of D rows each; columns: head k's D units of h).
The dense R (4H, H) it stands for is zero outside the heads' diagonal blocks:
``R[g*H + k*D + r, k*D + s] = r_blocks[k, g*D + r, s]`` (see `dense_recurrent_matrix`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

FORGET_GATES = ("sigmoid", "exp")


class SLSTMState(NamedTuple):
    """h, c, n, m: each (B, H). Hidden state, cell state, normaliser, stabiliser (a log-scale)."""

    h: Tensor
    c: Tensor
    n: Tensor
    m: Tensor


class SLSTMGates(NamedTuple):
    """Gates of one step, each (B, H): the stabilised input gate i (i'), the stabilised forget gate f (f'),
    the candidate z and the output gate o."""

    i: Tensor
    f: Tensor
    z: Tensor
    o: Tensor


class SLSTMTrace(NamedTuple):
    """Every step of one layer and direction, each (T, B, H): the gates (i', f', z, o), then the states in
    reverse order (m, n, c, h), as the other cells' traces list theirs."""

    i: Tensor
    f: Tensor
    z: Tensor
    o: Tensor
    m: Tensor
    n: Tensor
    c: Tensor
    h: Tensor


def blockdiag_recurrence(h: Tensor, r_blocks: Tensor) -> Tensor:
    """R h for the block-diagonal R held as r_blocks, as one batched matmul over the heads.

    Args:
        h: (B, H). r_blocks: (K, 4D, D).
    Returns:
        (B, 4H) in gate-major order (blocks i, f, z, o; heads side by side within each block).
    """
    heads, gate_rows, head_size = r_blocks.shape
    batch = h.shape[0]
    h_heads = h.reshape(batch, heads, head_size).transpose(0, 1)  # (K, B, D)
    per_head = torch.bmm(h_heads, r_blocks.transpose(1, 2))  # (K, B, 4D)
    per_head = per_head.reshape(heads, batch, 4, head_size)  # (K, B, 4, D)
    return per_head.permute(1, 2, 0, 3).reshape(batch, 4 * heads * head_size)  # (B, 4H)


def dense_recurrent_matrix(r_blocks: Tensor) -> Tensor:
    """The dense (4H, H) matrix R that r_blocks (K, 4D, D) stands for: zero outside the heads' blocks."""
    heads, gate_rows, head_size = r_blocks.shape
    per_gate = r_blocks.reshape(heads, 4, head_size, head_size)  # (K, 4, D, D)
    return torch.cat([torch.block_diag(*per_gate[:, g]) for g in range(4)], dim=0)  # (4H, H)


def slstm_step(
    x_proj: Tensor,
    state: SLSTMState,
    r_blocks: Tensor,
    b: Optional[Tensor],
    *,
    forget_gate: str = "sigmoid",
    detach_stabilizer: bool = False,
) -> tuple[SLSTMState, SLSTMGates]:
    r"""One sLSTM step (xLSTM, Beck et al. 2024, eqs. 8-17, with the stabiliser of eqs. 15-17).

    With ``x_proj = W x`` already computed (gate blocks i, f, z, o) and R block-diagonal (r_blocks):

        i_tilde, f_tilde, z_tilde, o_tilde = x_proj + R h + b          each (B, H)
        z      = tanh(z_tilde)
        o      = σ(o_tilde)
        log_f  = logsigmoid(f_tilde)                                    forget_gate="sigmoid": f = σ(f_tilde)
        log_f  = f_tilde                                                forget_gate="exp":     f = exp(f_tilde)
        m_next = max(log_f + m, i_tilde)        (m_next = i_tilde where n = 0: no history yet)
        i      = exp(i_tilde - m_next)                                  i' ≤ 1, never overflows
        f      = exp(min(log_f + m - m_next, 0))                        f' ≤ 1
        c_next = f ⊙ c + i ⊙ z
        n_next = f ⊙ n + i
        h_next = o ⊙ c_next / n_next

    m is a free log-scale: c and n both carry the factor exp(-m), so h (and every output) does not depend
    on it; it only keeps exp() finite. "m_next = i_tilde where n = 0" is the official kernel's rule (the
    CUDA kernel tests n == 0 per unit; the vanilla step for the whole batch): from the zero state the
    initial m = 0 is arbitrary, and max(log_f + 0, i_tilde) could make i underflow to 0 and h = 0/0.
    The max takes i_tilde on ties (the subgradient the NumPy reference uses too). So i ≤ 1 always, and the
    exponent of f is ≤ 0 except at a step from n = 0, where f multiplies c = n = 0 (from the zero state): there
    the min(·, 0) keeps exp() finite (exp(log_f − i_tilde) overflows for i_tilde ≪ 0, and inf ⊙ 0 = NaN), as
    the official CUDA kernel's min(1, ·) does; it changes no output and no gradient.

    Gradients: by default autograd differentiates through m (the true derivative of every returned
    tensor). Since h does not depend on m, losses of h get the same gradient with m held constant, which
    is what the official CUDA backward does (`detach_stabilizer=True` does that here); only losses that
    read c, n or m themselves differ.

    Args:
        x_proj: (B, 4H) input projection W x of this step, without bias.
        state: SLSTMState with h, c, n, m each (B, H).
        r_blocks: (K, 4D, D) the block-diagonal recurrent weights (module docstring).
        b: (4H,) bias, or None.
        forget_gate: "sigmoid" (the official sLSTM's) or "exp".
    Returns:
        (SLSTMState(h_next, c_next, n_next, m_next), SLSTMGates(i, f, z, o)), each (B, H).
    """
    h, c, n, m = state
    pre = x_proj + blockdiag_recurrence(h, r_blocks)  # (B, 4H)
    if b is not None:
        pre = pre + b
    i_tilde, f_tilde, z_tilde, o_tilde = pre.chunk(4, dim=1)  # 4 x (B, H)
    z = torch.tanh(z_tilde)
    o = torch.sigmoid(o_tilde)
    if forget_gate == "sigmoid":
        log_f = F.logsigmoid(f_tilde)
    elif forget_gate == "exp":
        log_f = f_tilde
    else:
        raise ValueError(f"forget_gate should be one of {FORGET_GATES}, got {forget_gate!r}")
    log_f_plus_m = log_f + m
    take_input = (n == 0) | (i_tilde >= log_f_plus_m)  # (B, H): where m_next = i_tilde
    m_next = torch.where(take_input, i_tilde, log_f_plus_m)
    if detach_stabilizer:
        m_next = m_next.detach()
    i = torch.exp(i_tilde - m_next)
    f = torch.exp(torch.clamp(log_f_plus_m - m_next, max=0.0))
    c_next = f * c + i * z
    n_next = f * n + i
    h_next = o * c_next / n_next
    return SLSTMState(h_next, c_next, n_next, m_next), SLSTMGates(i, f, z, o)
