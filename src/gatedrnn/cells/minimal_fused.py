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
from torch.autograd.function import once_differentiable

from gatedrnn.cells.linear_scan import previous_states, scan_backward, scan_forward


def _g_and_mask(k: Tensor) -> tuple[Tensor, Tensor]:
    """(g(k), k >= 0): g(k) = k + 0.5 for k >= 0 else σ(k); the mask selects g's branch for the backward."""
    linear = k >= 0
    return torch.where(linear, k + 0.5, torch.sigmoid(k)), linear


def _dg(h_tilde: Tensor, linear: Tensor) -> Tensor:
    """g'(k) from g(k) and its branch: 1 where k >= 0, σ(k)(1 − σ(k)) = h̃(1 − h̃) elsewhere."""
    return (h_tilde * (1 - h_tilde)).masked_fill_(linear, 1.0)


class MinGRUScan(torch.autograd.Function):
    """(x_proj (T, B, 2H), h0 (B, H)) -> h (T, B, H)."""

    @staticmethod
    def forward(ctx, x_proj: Tensor, h0: Tensor) -> Tensor:
        k_z, k_h = x_proj.chunk(2, dim=-1)  # 2 x (T, B, H), strided views
        z = torch.sigmoid(k_z)
        h_tilde, linear = _g_and_mask(k_h)
        one_minus_z = 1 - z
        # h_t = (1 − z) ⊙ h_{t-1} + z ⊙ h_tilde
        h = scan_forward(one_minus_z, z * h_tilde, h0)
        ctx.save_for_backward(h0, z, one_minus_z, h_tilde, linear, h)
        return h

    @staticmethod
    @once_differentiable  # the backward is hand-written: no second derivative
    def backward(ctx, dh_out: Tensor):
        h0, z, one_minus_z, h_tilde, linear, h = ctx.saved_tensors
        hidden = z.shape[-1]
        dh = scan_backward(one_minus_z, dh_out)  # (T, B, H): dL/dh_t through every later step
        dh0 = one_minus_z[0] * dh[0]  # h_1 = (1 − z_1) ⊙ h_0 + …
        dx_proj = z.new_empty(z.shape[:-1] + (2 * hidden,))  # (T, B, 2H)
        # h_t = (1 − z) ⊙ h_{t-1} + z ⊙ h_tilde: dz = dh ⊙ (h_tilde − h_{t-1}), dh_tilde = dh ⊙ z
        dz = torch.sub(h_tilde, previous_states(h, h0)).mul_(dh)
        dh_tilde = dh.mul_(z)  # dh is not needed after this
        # z = σ(k_z): dk_z = dz ⊙ z ⊙ (1 − z); h_tilde = g(k_h): dk_h = dh_tilde ⊙ g'(k_h)
        torch.mul(dz.mul_(z), one_minus_z, out=dx_proj[..., :hidden])
        torch.mul(dh_tilde, _dg(h_tilde, linear), out=dx_proj[..., hidden:])
        return dx_proj, dh0


class MinLSTMScan(torch.autograd.Function):
    """(x_proj (T, B, 3H), h0 (B, H)) -> h (T, B, H)."""

    @staticmethod
    def forward(ctx, x_proj: Tensor, h0: Tensor) -> Tensor:
        k_f, k_i, k_h = x_proj.chunk(3, dim=-1)  # 3 x (T, B, H), strided views
        f = torch.sigmoid(k_f)
        i = torch.sigmoid(k_i)
        f_plus_i = f + i
        f_prime = f / f_plus_i
        i_prime = i / f_plus_i
        h_tilde, linear = _g_and_mask(k_h)
        # h_t = f_prime ⊙ h_{t-1} + i_prime ⊙ h_tilde
        h = scan_forward(f_prime, i_prime * h_tilde, h0)
        ctx.save_for_backward(h0, f, i, f_prime, i_prime, h_tilde, linear, h)
        return h

    @staticmethod
    @once_differentiable  # the backward is hand-written: no second derivative
    def backward(ctx, dh_out: Tensor):
        h0, f, i, f_prime, i_prime, h_tilde, linear, h = ctx.saved_tensors
        hidden = f.shape[-1]
        dh = scan_backward(f_prime, dh_out)  # (T, B, H)
        dh0 = f_prime[0] * dh[0]  # h_1 = f_prime_1 ⊙ h_0 + …
        dx_proj = f.new_empty(f.shape[:-1] + (3 * hidden,))  # (T, B, 3H)
        # h_t = f_prime ⊙ h_{t-1} + i_prime ⊙ h_tilde: df_prime − di_prime = dh ⊙ (h_{t-1} − h_tilde)
        # f_prime = f / (f + i), i_prime = i / (f + i): df = i (df_prime − di_prime) / (f + i)²,
        # di = −f (df_prime − di_prime) / (f + i)²; with c = dh ⊙ (h_{t-1} − h_tilde) ⊙ f_prime ⊙ i_prime,
        # f = σ(k_f), i = σ(k_i): dk_f = df ⊙ f (1 − f) = c ⊙ (1 − f), dk_i = −c ⊙ (1 − i)
        c = torch.sub(previous_states(h, h0), h_tilde).mul_(dh).mul_(f_prime).mul_(i_prime)
        torch.mul(c, 1 - f, out=dx_proj[..., :hidden])
        torch.mul(c, i - 1, out=dx_proj[..., hidden:2 * hidden])
        # h_tilde = g(k_h): dk_h = dh ⊙ i_prime ⊙ g'(k_h)
        torch.mul(dh.mul_(i_prime), _dg(h_tilde, linear), out=dx_proj[..., 2 * hidden:])
        return dx_proj, dh0
