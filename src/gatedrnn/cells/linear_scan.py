r"""The first-order linear recurrence h_t = a_t ⊙ h_{t-1} + b_t in linear space, with a hand-written backward.

The recurrence has no matmul, so each step is one fused multiply-add over the whole batch (`torch.addcmul`
or `torch.lerp` into the output buffer); a T-step loop of those costs less on the CPU than the log-space
parallel scan, whose torch.logcumsumexp is a serial per-element loop there and which needs several exp/log
passes more. (A blocked two-level scan, √T steps inside chunks side by side then √T carries, was measured
too: its large strided ops were slower, and much slower when the cores are shared.)

Exact for any real a, b and h_0 (no logs, no divisions). The backward is the same recurrence run backwards:

    dh_t (total) = dh_t (from the output) + a_{t+1} ⊙ dh_{t+1} (total)
    da_t = dh_t ⊙ h_{t-1},   db_t = dh_t,   dh_0 = a_1 ⊙ dh_1

Shape symbols: T time steps, and any trailing shape (B, H) shared by every step.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import Tensor


def hand_written_backward(backward: Callable) -> Callable:
    """An autograd.Function's backward that has no second derivative (torch's `once_differentiable`, stricter).

    once_differentiable refuses a second derivative only when a grad output requires grad; with sum()'s gradient
    (which does not) its results carry none, and a gradient penalty through them silently misses every term that
    runs through the saved tensors. Here, whenever the backward is asked to build a graph (create_graph=True), its
    results carry a grad_fn that raises, naming the way out."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            results = backward(ctx, *grads)
        if not torch.is_grad_enabled():  # create_graph=False: nothing can differentiate the results
            return results
        single = not isinstance(results, tuple)
        results = (results,) if single else results
        tensors = [t for t in results if isinstance(t, Tensor)]
        if not tensors:
            return results[0] if single else results
        refuse = torch._C._functions.DelayedError(
            b"a second derivative (create_graph=True, e.g. a gradient penalty) through gatedrnn's linear-space scans "
            b"(MinGRU / MinLSTM with scan='linear', the default on the CPU) is not supported: their backward is "
            b"hand-written. Use scan='log', which autograd differentiates to any order", len(tensors))
        wrapped = refuse(*[t.detach().requires_grad_() for t in tensors])
        wrapped = iter(wrapped if isinstance(wrapped, tuple) else (wrapped,))
        results = tuple(next(wrapped) if isinstance(t, Tensor) else t for t in results)
        return results[0] if single else results

    return wrapper


def scan_forward(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """h (T, ...) with h_t = a_t h_{t-1} + b_t from a, b (T, ...) and h0 (...); no autograd."""
    h = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    prev = h0
    for a_t, b_t, h_t in zip(a.unbind(0), b.unbind(0), h.unbind(0)):  # views made once: indexing costs µs
        prev = torch.addcmul(b_t, a_t, prev, out=h_t)
    return h


def lerp_scan_forward(z: Tensor, target: Tensor, h0: Tensor) -> Tensor:
    """h (T, ...) with h_t = h_{t-1} + z_t (target_t − h_{t-1}) = (1 − z_t) h_{t-1} + z_t target_t, one
    torch.lerp per step: the a = 1 − z, b = z ⊙ target form without materialising a and b."""
    h = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    prev = h0
    for z_t, target_t, h_t in zip(z.unbind(0), target.unbind(0), h.unbind(0)):
        prev = torch.lerp(prev, target_t, z_t, out=h_t)
    return h


def scan_backward(a: Tensor, dh_out: Tensor) -> Tensor:
    """dh (T, ...) = dL/dh_t through every later step, from a (T, ...) and dL/dh_t of the outputs alone."""
    dh = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    dh[-1] = dh_out[-1]
    a_steps, dh_out_steps, dh_steps = a.unbind(0), dh_out.unbind(0), dh.unbind(0)
    for t in range(a.shape[0] - 2, -1, -1):
        torch.addcmul(dh_out_steps[t], a_steps[t + 1], dh_steps[t + 1], out=dh_steps[t])
    return dh


def previous_states(h: Tensor, h0: Tensor) -> Tensor:
    """h_{t-1} for every t: (T, ...) = [h0, h_1, …, h_{T-1}]."""
    h_prev = torch.empty_like(h)
    h_prev[0] = h0
    h_prev[1:] = h[:-1]
    return h_prev


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        h = scan_forward(a, b, h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @hand_written_backward
    def backward(ctx, dh_out: Tensor):
        a, h, h0 = ctx.saved_tensors
        dh = scan_backward(a, dh_out)
        # h_t = a_t h_{t-1} + b_t
        da = dh * previous_states(h, h0)
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
    if h0 is None:
        h0 = a.new_zeros(a.shape[1:])
    elif h0.shape != a.shape[1:]:
        raise ValueError(f"h0 should have shape {tuple(a.shape[1:])}, got {tuple(h0.shape)}")
    return _LinearScan.apply(a, b, h0)
