r"""The first-order linear recurrence h_t = a_t ⊙ h_{t-1} + b_t, all steps at once, in linear space.

A blocked (two-level) scan: time is cut into chunks of C steps; every chunk runs its C steps side by side
with the others (one vectorised op per step covers all chunks), then the n = T/C chunk carries are chained,
then one pass adds each chunk's carry. 2C + 2n small ops plus two passes over the data, instead of T
dependent steps or the log-space scan's logcumsumexp (which is a slow serial loop on torch's CPU backend).

Exact for any real a, b and h_0 (no logs: a_t ≤ 0, b_t ≤ 0 and h_0 < 0 are fine); the products of a inside
a chunk never divide, so nothing overflows. The backward is the same scan run backwards in time:

    dh_t (total) = dh_t (from the output) + a_{t+1} ⊙ dh_{t+1} (total)
    da_t = dh_t ⊙ h_{t-1},   db_t = dh_t,   dh_0 = a_1 ⊙ dh_1

Shape symbols: T time steps, N everything else (batch × hidden, flattened).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def _blocked_scan(a: Tensor, b: Tensor, h0: Optional[Tensor]) -> Tensor:
    """h (T, N) of h_t = a_t h_{t-1} + b_t from a, b (T, N) and h0 (N,) or None (zeros); no autograd."""
    steps, width = a.shape
    chunk = max(1, math.isqrt(steps))  # C ≈ √T balances the 2C in-chunk ops against the 2n carry ops
    count = -(-steps // chunk)  # n chunks
    pad = count * chunk - steps
    if pad:  # a = 1, b = 0 past the end: the state just carries through
        a = torch.cat([a, a.new_ones(pad, width)])
        b = torch.cat([b, b.new_zeros(pad, width)])
    a3, b3 = a.view(count, chunk, width), b.view(count, chunk, width)  # (n, C, N)
    h_local = torch.empty_like(a3)  # each chunk's states from a zero start, (n, C, N)
    a_prod = torch.empty_like(a3)  # a_{start} ⊙ … ⊙ a_t inside each chunk, (n, C, N)
    h_local[:, 0] = b3[:, 0]
    a_prod[:, 0] = a3[:, 0]
    for j in range(1, chunk):
        torch.addcmul(b3[:, j], a3[:, j], h_local[:, j - 1], out=h_local[:, j])
        torch.mul(a3[:, j], a_prod[:, j - 1], out=a_prod[:, j])
    carry = a.new_empty(count, width)  # the state entering each chunk, (n, N)
    if h0 is None:
        carry[0] = 0
    else:
        carry[0] = h0
    for c in range(1, count):
        torch.addcmul(h_local[c - 1, -1], a_prod[c - 1, -1], carry[c - 1], out=carry[c])
    h = torch.addcmul(h_local, a_prod, carry.unsqueeze(1))  # (n, C, N)
    return h.view(count * chunk, width)[:steps]


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = _blocked_scan(a, b, h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, dh_out: Tensor):
        a, h, h0 = ctx.saved_tensors
        # reverse in time: dh_t = dh_out_t + a_{t+1} dh_{t+1}, i.e. the forward scan over the flipped sequence
        # with coefficients a shifted by one step (the last step has nothing after it)
        a_next = torch.cat([a[1:], a.new_zeros(1, a.shape[1])])  # (T, N): a_{t+1}
        dh = _blocked_scan(a_next.flip(0), dh_out.flip(0).contiguous(), None).flip(0)  # (T, N)
        # h_t = a_t h_{t-1} + b_t
        h_prev = torch.cat([h0.unsqueeze(0), h[:-1]])  # (T, N)
        da = dh * h_prev
        db = dh
        dh0 = a[0] * dh[0]
        return da, db, dh0


def linear_scan(a: Tensor, b: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    r"""Every h_t of h_t = a_t ⊙ h_{t-1} + b_t (t = 1 … T), differentiable in a, b and h_0.

    Args:
        a, b: (T, ...) with time on dim 0, same shape.
        h0: the trailing shape of a (e.g. (B, H)), or None (zeros).
    Returns:
        h: (T, ...), h[t-1] = h_t.
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b should have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    steps, rest = a.shape[0], a.shape[1:]
    if h0 is None:
        h0 = a.new_zeros(rest)
    elif h0.shape != rest:
        raise ValueError(f"h0 should have shape {tuple(rest)}, got {tuple(h0.shape)}")
    flat = (steps, math.prod(rest))
    h = _LinearScan.apply(a.reshape(flat).contiguous(), b.reshape(flat).contiguous(), h0.reshape(-1))
    return h.view(a.shape)
