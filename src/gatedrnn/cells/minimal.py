r"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201).

The gates read only the input, never the previous state, so the recurrence is linear in h:

    h_t = a_t ⊙ h_{t-1} + b_t        with a_t, b_t functions of x_t alone,

and the whole sequence is one scan over time with no matmul inside it (the only matmul, W_ih x, runs over all
steps at once). In the paper's appendix the scan is parallel and in log space; the candidate state goes
through g (positive everywhere), so b_t > 0 and log b_t exists.

Shape symbols: T time steps, B batch, H hidden size. Every tensor here is time-major.

Each step function takes the input projection of one step (``x_proj = W_ih x + b_ih``, computed for all steps
at once by the caller, like `gatedrnn.cells.gru.gru_step`). The scan functions take the projection of every
step (T, B, G·H) and compute exactly what a loop over the step function computes.

The initial state h_0: the log-space scan never takes log(h_0). h_0 enters the recurrence linearly,

    h_t = A_t ⊙ h_0 + h_t|_{h_0=0}       with A_t = a_1 ⊙ … ⊙ a_t = exp(a*_t) > 0,

so any real h_0 (zero, negative or positive) is exact, and the paper's log(h_0) (which needs h_0 > 0) is not
needed: there is no sign restriction and no fallback path.

Two scans compute the same h (tests check both against the step loop):
    "log":    the paper's: cumsum + logcumsumexp in log space (`parallel_scan_log`).
    "linear": the recurrence in linear space, one vectorised op per step over the whole batch (sequential in
              time, not a parallel scan), gate math and backward hand-written in one autograd function
              (`gatedrnn.cells.minimal_fused`); same result, no exp/log round trip (more accurate in float32
              over long sequences), and many times faster on the CPU, where torch's logcumsumexp is a
              serial per-element loop (~100 ms per call at T=1024, B·H=4096) and its extra exp/log passes
              cost more than T small ops. The layers run the same equations in one pass over time on the CPU's
              C++ engine (`gatedrnn.engine.minimal`) where it serves the call, and this torch form elsewhere.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gatedrnn.cells.minimal_fused import MinGRUScan, MinLSTMScan

SCANS = ("log", "linear")  # the paper's log-space scan; the linear-space recurrence (gatedrnn.cells.minimal_fused)


class MinGRUGates(NamedTuple):
    """Gate values of one step, each (B, H): update gate z and candidate state h_tilde."""

    z: Tensor
    h_tilde: Tensor


class MinGRUTrace(NamedTuple):
    """Every step of one layer and direction, each (T, B, H)."""

    z: Tensor
    h_tilde: Tensor
    h: Tensor


class MinLSTMGates(NamedTuple):
    """Gate values of one step, each (B, H): the normalised forget and input gates f' = f / (f + i),
    i' = i / (f + i) (fields f and i), and the candidate state h_tilde."""

    f: Tensor
    i: Tensor
    h_tilde: Tensor


class MinLSTMTrace(NamedTuple):
    """Every step of one layer and direction, each (T, B, H); f and i are the normalised gates f', i'."""

    f: Tensor
    i: Tensor
    h_tilde: Tensor
    h: Tensor


def g(x: Tensor) -> Tensor:
    r"""The paper's positive activation for the candidate state: g(x) = x + 0.5 if x >= 0 else σ(x).

    Continuous at 0 (both sides 0.5), always > 0, so log g(x) exists. Any shape in, same shape out."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    r"""log g(x) without forming g: log(x + 0.5) for x >= 0, log σ(x) = -softplus(-x) otherwise.

    relu(x) inside the log keeps the unused branch finite (torch.where differentiates both)."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def parallel_scan_log(log_a: Tensor, log_b: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    r"""Every h_t of h_t = a_t ⊙ h_{t-1} + b_t (t = 1 … T) from log a_t and log b_t, in one pass over time.

        a*_t = Σ_{s<=t} log a_s                                   (cumsum)
        h_t  = exp(a*_t + logcumsumexp_{s<=t}(log b_s − a*_s))     (the paper's form, h_0 = 0)
             + exp(a*_t) ⊙ h_0                                   (h_0 enters linearly: any sign)

    Needs a_t > 0 and b_t > 0 (given as logs; log b_t = -inf is b_t = 0); h_0 is any real tensor.

    Args:
        log_a, log_b: (T, B, H), time on dim 0.
        h0: (B, H) or None (zeros).
    Returns:
        h: (T, B, H), h[t-1] = h_t.
    """
    a_star = torch.cumsum(log_a, dim=0)  # (T, B, H)
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=0))  # (T, B, H)
    if h0 is not None:
        h = h + torch.exp(a_star) * h0
    return h


def mingru_step(x_proj: Tensor, h: Tensor) -> tuple[Tensor, MinGRUGates]:
    r"""One minGRU step (the paper's Algorithm 1, with h̃ through g as in its log-space Algorithm 2).

    With ``x_proj = W_ih x + b_ih`` already computed (row blocks z, h̃):

        k_z     = W_iz x + b_iz,   k_h = W_ih̃ x + b_ih̃
        z       = σ(k_z)
        h_tilde = g(k_h)
        h_next  = (1 − z) ⊙ h + z ⊙ h_tilde

    Args:
        x_proj: (B, 2H). h: (B, H).
    Returns:
        (h_next (B, H), MinGRUGates(z, h_tilde) each (B, H)).
    """
    k_z, k_h = x_proj.chunk(2, dim=-1)  # 2 x (B, H)
    z = torch.sigmoid(k_z)
    h_tilde = g(k_h)
    h_next = (1 - z) * h + z * h_tilde
    return h_next, MinGRUGates(z, h_tilde)


def minlstm_step(x_proj: Tensor, h: Tensor) -> tuple[Tensor, MinLSTMGates]:
    r"""One minLSTM step (the paper's Algorithm 3 with length-independent scaling, h̃ through g as in its
    log-space Algorithm 4).

    With ``x_proj = W_ih x + b_ih`` already computed (row blocks f, i, h̃):

        k_f, k_i, k_h = W_if x + b_if, W_ii x + b_ii, W_ih̃ x + b_ih̃
        f       = σ(k_f)
        i       = σ(k_i)
        f_prime = f / (f + i)
        i_prime = i / (f + i)
        h_tilde = g(k_h)
        h_next  = f_prime ⊙ h + i_prime ⊙ h_tilde

    Args:
        x_proj: (B, 3H). h: (B, H).
    Returns:
        (h_next (B, H), MinLSTMGates(f_prime, i_prime, h_tilde) each (B, H)).
    """
    k_f, k_i, k_h = x_proj.chunk(3, dim=-1)  # 3 x (B, H)
    f = torch.sigmoid(k_f)
    i = torch.sigmoid(k_i)
    f_prime = f / (f + i)
    i_prime = i / (f + i)
    h_tilde = g(k_h)
    h_next = f_prime * h + i_prime * h_tilde
    return h_next, MinLSTMGates(f_prime, i_prime, h_tilde)


def mingru_scan_log(x_proj: Tensor, h0: Optional[Tensor] = None,
                    trace: bool = False) -> tuple[Tensor, Optional[MinGRUTrace]]:
    r"""Every step of `mingru_step` at once, in log space (the paper's Algorithm 2 / its appendix code):

        log z       = −softplus(−k_z)            (log σ(k_z))
        log (1 − z) = −softplus(k_z)             (log σ(−k_z))
        h_t         = scan(a = 1 − z, b = z ⊙ g(k_h), h_0)    via `parallel_scan_log`

    Args:
        x_proj: (T, B, 2H). h0: (B, H) or None (zeros). trace: also return the per-step gates.
    Returns:
        (h (T, B, H), MinGRUTrace(z, h_tilde, h) each (T, B, H) if trace else None).
    """
    k_z, k_h = x_proj.chunk(2, dim=-1)  # 2 x (T, B, H)
    log_z = -F.softplus(-k_z)
    log_one_minus_z = -F.softplus(k_z)
    log_h_tilde = log_g(k_h)
    h = parallel_scan_log(log_one_minus_z, log_z + log_h_tilde, h0)  # (T, B, H)
    if not trace:
        return h, None
    return h, MinGRUTrace(torch.sigmoid(k_z), g(k_h), h)


def minlstm_scan_log(x_proj: Tensor, h0: Optional[Tensor] = None,
                     trace: bool = False) -> tuple[Tensor, Optional[MinLSTMTrace]]:
    r"""Every step of `minlstm_step` at once, in log space (the paper's Algorithm 4 / its appendix code):

        diff        = softplus(−k_f) − softplus(−k_i)     (log i − log f)
        log f_prime = −softplus(diff)                     (log f/(f+i) = −log(1 + i/f))
        log i_prime = −softplus(−diff)
        h_t         = scan(a = f_prime, b = i_prime ⊙ g(k_h), h_0)    via `parallel_scan_log`

    Args:
        x_proj: (T, B, 3H). h0: (B, H) or None (zeros). trace: also return the per-step gates.
    Returns:
        (h (T, B, H), MinLSTMTrace(f_prime, i_prime, h_tilde, h) each (T, B, H) if trace else None).
    """
    k_f, k_i, k_h = x_proj.chunk(3, dim=-1)  # 3 x (T, B, H)
    diff = F.softplus(-k_f) - F.softplus(-k_i)
    log_f_prime = -F.softplus(diff)
    log_i_prime = -F.softplus(-diff)
    h = parallel_scan_log(log_f_prime, log_i_prime + log_g(k_h), h0)  # (T, B, H)
    if not trace:
        return h, None
    return h, MinLSTMTrace(torch.exp(log_f_prime), torch.exp(log_i_prime), g(k_h), h)


def mingru_scan(x_proj: Tensor, h0: Optional[Tensor] = None, *, scan: str = "linear",
                trace: bool = False) -> tuple[Tensor, Optional[MinGRUTrace]]:
    r"""Every step of `mingru_step` at once: scan="log" is `mingru_scan_log`; scan="linear" runs
    `mingru_step`'s equations over all steps with the linear-space recurrence (`MinGRUScan`).

    Args:
        x_proj: (T, B, 2H). h0: (B, H) or None (zeros). trace: also return the per-step gates.
    Returns:
        (h (T, B, H), MinGRUTrace(z, h_tilde, h) each (T, B, H) if trace else None).
    """
    if scan == "log":
        return mingru_scan_log(x_proj, h0, trace)
    _check_scan(scan)
    h = MinGRUScan.apply(x_proj, _zeros_if_none(h0, x_proj, 2))  # (T, B, H)
    if not trace:
        return h, None
    k_z, k_h = x_proj.chunk(2, dim=-1)  # 2 x (T, B, H)
    return h, MinGRUTrace(torch.sigmoid(k_z), g(k_h), h)


def minlstm_scan(x_proj: Tensor, h0: Optional[Tensor] = None, *, scan: str = "linear",
                 trace: bool = False) -> tuple[Tensor, Optional[MinLSTMTrace]]:
    r"""Every step of `minlstm_step` at once: scan="log" is `minlstm_scan_log`; scan="linear" runs
    `minlstm_step`'s equations over all steps with the linear-space recurrence (`MinLSTMScan`).

    Args:
        x_proj: (T, B, 3H). h0: (B, H) or None (zeros). trace: also return the per-step gates.
    Returns:
        (h (T, B, H), MinLSTMTrace(f_prime, i_prime, h_tilde, h) each (T, B, H) if trace else None).
    """
    if scan == "log":
        return minlstm_scan_log(x_proj, h0, trace)
    _check_scan(scan)
    h = MinLSTMScan.apply(x_proj, _zeros_if_none(h0, x_proj, 3))  # (T, B, H)
    if not trace:
        return h, None
    k_f, k_i, k_h = x_proj.chunk(3, dim=-1)  # 3 x (T, B, H)
    f = torch.sigmoid(k_f)
    i = torch.sigmoid(k_i)
    return h, MinLSTMTrace(f / (f + i), i / (f + i), g(k_h), h)


def _zeros_if_none(h0: Optional[Tensor], x_proj: Tensor, gate_count: int) -> Tensor:
    """h0, or zeros (B, H) for x_proj (T, B, G·H)."""
    if h0 is not None:
        return h0
    return x_proj.new_zeros(x_proj.shape[1], x_proj.shape[2] // gate_count)


def _check_scan(scan: str) -> None:
    if scan not in SCANS:
        raise ValueError(f"scan should be one of {SCANS}, got {scan!r}")
