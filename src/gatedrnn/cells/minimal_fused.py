r"""minGRU and minLSTM over a whole sequence as one autograd function each: the gate math, the linear-space
scan (`gatedrnn.cells.linear_scan`) and a hand-written backward, so training makes a few passes over the
(T, B, H) data instead of autograd's one pass per op and one buffer per intermediate.

The equations are `gatedrnn.cells.minimal.mingru_step` / `minlstm_step`'s (same symbols); the backward is
`gatedrnn.reference.minimal`'s BPTT, vectorised over time once the reverse recurrence has run. Tests check
both against autograd through the step loop.

Shape symbols: T time steps, B batch, H hidden size.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gatedrnn.cells.linear_scan import hand_written_backward, lerp_scan_forward, scan_backward, scan_forward


def _g(k: Tensor) -> Tensor:
    """g(k) = k + 0.5 for k >= 0 else σ(k), written as max(k + 0.5, σ(k)) (the larger branch is the one g
    takes on each side of 0, since σ(k) <= 0.5 + k/4): two passes without a mask (where() on a bool mask
    costs ten times a multiply on the CPU)."""
    h_tilde = torch.sigmoid(k)
    return torch.maximum(k + 0.5, h_tilde, out=h_tilde)


def _dg(k: Tensor, h_tilde: Tensor) -> Tensor:
    """g'(k) from k and g(k): 1 where k >= 0, σ(k)(1 − σ(k)) = h̃ − h̃² elsewhere (<= 1/4, so max() picks)."""
    linear = torch.ge(k, 0, out=torch.empty_like(h_tilde))  # 1.0 / 0.0
    return torch.maximum(torch.addcmul(h_tilde, h_tilde, h_tilde, value=-1), linear, out=linear)


def _minus_previous(v: Tensor, h: Tensor, h0: Tensor) -> Tensor:
    """v_t − h_{t-1} for every t, (T, B, H), without materialising h_{t-1} (h0 for t = 1)."""
    diff = torch.empty_like(v)
    torch.sub(v[0], h0, out=diff[0])
    torch.sub(v[1:], h[:-1], out=diff[1:])
    return diff


def mingru_bptt(x_proj: Tensor, h0: Tensor, z: Tensor, h_tilde: Tensor, h: Tensor,
                dh_out: Tensor) -> tuple[Tensor, Tensor]:
    """minGRU's BPTT: (dx_proj (T, B, 2H), dh0 (B, H)) from the forward's x_proj, h0, gates z, h_tilde and states h
    (T, B, H), and dL/dh_t of the outputs (T, B, H)."""
    hidden = z.shape[-1]
    one_minus_z = 1 - z
    dh = scan_backward(one_minus_z, dh_out)  # (T, B, H): dL/dh_t through every later step
    dh0 = one_minus_z[0] * dh[0]  # h_1 = (1 − z_1) ⊙ h_0 + …
    # h_t = (1 − z) ⊙ h_{t-1} + z ⊙ h_tilde: dz = dh ⊙ (h_tilde − h_{t-1}), dh_tilde = dh ⊙ z
    # (not dh ⊙ (h_t − h_{t-1}) / z: that difference of rounded states loses dk_z where z is tiny)
    dz = _minus_previous(h_tilde, h, h0).mul_(dh)
    # z = σ(k_z): dk_z = dz ⊙ z ⊙ (1 − z)
    dk_z = dz.mul_(z).mul_(one_minus_z)
    # h_tilde = g(k_h): dk_h = dh_tilde ⊙ g'(k_h)
    dh_tilde = dh.mul_(z)  # dh is not needed after this
    dk_h = dh_tilde.mul_(_dg(x_proj[..., hidden:], h_tilde))
    # one concatenation, not out= into strided halves: torch.compile refuses a non-contiguous out=
    return torch.cat((dk_z, dk_h), dim=-1), dh0  # (T, B, 2H)


def minlstm_gates(x_proj: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(f, i, f_prime, i_prime, h_tilde), each (T, B, H), from x_proj (T, B, 3H)."""
    k_f, k_i, k_h = x_proj.chunk(3, dim=-1)  # 3 x (T, B, H), strided views
    f = torch.sigmoid(k_f)
    i = torch.sigmoid(k_i)
    f_plus_i = f + i
    return f, i, f / f_plus_i, i / f_plus_i, _g(k_h)


def minlstm_bptt(x_proj: Tensor, h0: Tensor, f: Tensor, i: Tensor, f_prime: Tensor, i_prime: Tensor,
                 h_tilde: Tensor, h: Tensor, dh_out: Tensor) -> tuple[Tensor, Tensor]:
    """minLSTM's BPTT: (dx_proj (T, B, 3H), dh0 (B, H)) from the forward's x_proj, h0, gates (`minlstm_gates`),
    states h (T, B, H) and dL/dh_t of the outputs (T, B, H)."""
    hidden = f.shape[-1]
    dh = scan_backward(f_prime, dh_out)  # (T, B, H)
    dh0 = f_prime[0] * dh[0]  # h_1 = f_prime_1 ⊙ h_0 + …
    # h_t = f_prime ⊙ h_{t-1} + i_prime ⊙ h_tilde: di_prime − df_prime = dh ⊙ (h_tilde − h_{t-1})
    # f_prime = f / (f + i), i_prime = i / (f + i): df = −i (di_prime − df_prime) / (f + i)²,
    # di = f (di_prime − df_prime) / (f + i)²; with c = dh ⊙ (h_tilde − h_{t-1}) ⊙ f_prime ⊙ i_prime,
    # f = σ(k_f), i = σ(k_i): dk_f = df ⊙ f (1 − f) = c ⊙ (f − 1), dk_i = di ⊙ i (1 − i) = c ⊙ (1 − i)
    c = _minus_previous(h_tilde, h, h0).mul_(dh).mul_(f_prime).mul_(i_prime)
    # h_tilde = g(k_h): dk_h = dh ⊙ i_prime ⊙ g'(k_h)
    dk_h = dh.mul_(i_prime).mul_(_dg(x_proj[..., 2 * hidden:], h_tilde))
    return torch.cat((c * (f - 1), c * (1 - i), dk_h), dim=-1), dh0  # (T, B, 3H)


def minimal_bptt(cell: str, x_proj: Tensor, h0: Tensor, h: Tensor, dh_out: Tensor) -> tuple[Tensor, Tensor]:
    """`mingru_bptt` or `minlstm_bptt` ("mingru" / "minlstm") with the gates recomputed from x_proj: what a caller
    that kept only x_proj, h0 and h runs (the C++ engine's scan, where its own backward kernel cannot run)."""
    if cell == "mingru":
        k_z, k_h = x_proj.chunk(2, dim=-1)
        return mingru_bptt(x_proj, h0, torch.sigmoid(k_z), _g(k_h), h, dh_out)
    return minlstm_bptt(x_proj, h0, *minlstm_gates(x_proj), h, dh_out)


class MinGRUScan(torch.autograd.Function):
    """(x_proj (T, B, 2H), h0 (B, H)) -> h (T, B, H)."""

    @staticmethod
    def forward(ctx, x_proj: Tensor, h0: Tensor) -> Tensor:
        k_z, k_h = x_proj.chunk(2, dim=-1)  # 2 x (T, B, H), strided views
        z = torch.sigmoid(k_z)
        h_tilde = _g(k_h)
        # h_t = (1 − z) ⊙ h_{t-1} + z ⊙ h_tilde, as one lerp per step
        h = lerp_scan_forward(z, h_tilde, h0)
        ctx.save_for_backward(x_proj, h0, z, h_tilde, h)
        return h

    @staticmethod
    @hand_written_backward
    def backward(ctx, dh_out: Tensor):
        return mingru_bptt(*ctx.saved_tensors, dh_out)


class MinLSTMScan(torch.autograd.Function):
    """(x_proj (T, B, 3H), h0 (B, H)) -> h (T, B, H)."""

    @staticmethod
    def forward(ctx, x_proj: Tensor, h0: Tensor) -> Tensor:
        f, i, f_prime, i_prime, h_tilde = minlstm_gates(x_proj)
        # h_t = f_prime ⊙ h_{t-1} + i_prime ⊙ h_tilde
        h = scan_forward(f_prime, i_prime * h_tilde, h0)
        ctx.save_for_backward(x_proj, h0, f, i, f_prime, i_prime, h_tilde, h)
        return h

    @staticmethod
    @hand_written_backward
    def backward(ctx, dh_out: Tensor):
        return minlstm_bptt(*ctx.saved_tensors, dh_out)
