"""The GPU engine's pointwise kernels in Triton: one step of a cell, forward and backward, for the rows of a batch.

The equations are those of `gatedrnn.cells` (`lstm_step`, `gru_step`, `rnn_step`), in the same symbols; the tests
check every kernel against those functions. The GEMMs around them (W_ih x for all steps, W_hh h per step, the
weight gradients after the loop) are torch's (cuBLAS); `gatedrnn.engine.triton_scan` runs the time loop.

Every kernel works on a flat range of B·H elements (one program per BLOCK of them): element e is unit
j = e mod H of row b = e div H, and gate k of that unit sits at b·G·H + k·H + j in a (B, G·H) operand, as in
torch.nn's gate order (LSTM i, f, g, o; GRU r, z, n). Operands are contiguous; 16-bit floats compute in float32,
float64 in float64. Kernels use only what Triton 3.2 and later have in `tl` (no `tl.extra` libdevice calls):
tanh is written out.

With TRITON_INTERPRET=1 (set before this module is imported) Triton runs these kernels on CPU tensors, which is
how the test suite checks them on machines without a GPU. The cells torch.nn has not have theirs in
`triton_variants` (Greff's peephole LSTMs, FGR, the sLSTM) and `triton_layernorm`.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["gru_backward", "gru_forward", "lstm_backward", "lstm_forward", "rnn_backward", "rnn_forward"]

BLOCK = 512  # elements per program: 4 warps of 128-bit loads for float32


@triton.jit
def _tanh(x):
    # tanh(|x|) = (1 - e^{-2|x|}) / (1 + e^{-2|x|}), sign restored: no overflow for any x
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _load(ptr, offs, mask, UPCAST: tl.constexpr):
    value = tl.load(ptr + offs, mask=mask, other=0.0)
    if UPCAST:
        value = value.to(tl.float32)
    return value


@triton.jit
def lstm_forward(pre_x, pre_h, c_prev, candidate, gates, c_next, h_next, H, n,
                 HAS_CANDIDATE: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """`gatedrnn.cells.lstm.lstm_step` after its GEMM, rows (B, ·):
        i = σ(pre_i), f = σ(pre_f), g = tanh(pre_g), o = σ(pre_o)   (pre = pre_x + pre_h, (B, 4H))
        c_next = f ⊙ c + i ⊙ (g ⊙ d)        (d: candidate mask, else 1)
        h_next = o ⊙ tanh(c_next)            (before the projection W_hr, which the scan applies)
    pre_x, pre_h: (B, 4H) (W_ih x + b_ih; W_hh h + b_hh); c_prev, candidate: (B, H). Writes gates (B, 4H) =
    [i | f | g | o], c_next and h_next (B, H)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    row = e // H
    unit = e - row * H
    base = row * 4 * H + unit
    i = tl.sigmoid(_load(pre_x, base, mask, UPCAST) + _load(pre_h, base, mask, UPCAST))
    f = tl.sigmoid(_load(pre_x, base + H, mask, UPCAST) + _load(pre_h, base + H, mask, UPCAST))
    g = _tanh(_load(pre_x, base + 2 * H, mask, UPCAST) + _load(pre_h, base + 2 * H, mask, UPCAST))
    o = tl.sigmoid(_load(pre_x, base + 3 * H, mask, UPCAST) + _load(pre_h, base + 3 * H, mask, UPCAST))
    c = _load(c_prev, e, mask, UPCAST)
    written = g
    if HAS_CANDIDATE:
        written = g * _load(candidate, e, mask, UPCAST)
    c_new = f * c + i * written
    h_new = o * _tanh(c_new)
    out = gates.dtype.element_ty
    tl.store(gates + base, i.to(out), mask=mask)
    tl.store(gates + base + H, f.to(out), mask=mask)
    tl.store(gates + base + 2 * H, g.to(out), mask=mask)
    tl.store(gates + base + 3 * H, o.to(out), mask=mask)
    tl.store(c_next + e, c_new.to(out), mask=mask)
    tl.store(h_next + e, h_new.to(out), mask=mask)


@triton.jit
def lstm_backward(dh_next, dc_next, gates, c_prev, c_next, candidate, d_pre, dc_prev, H, n,
                  HAS_CANDIDATE: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """The chain rule through `lstm_forward`, rows (B, ·): dh_next (B, H) (the gradient of o ⊙ tanh(c_next)),
    dc_next (B, H) (from the next step), gates (B, 4H), c_prev, c_next, candidate (B, H). Writes d_pre (B, 4H)
    (the gradient of pre = pre_x + pre_h, which both GEMMs share) and dc_prev (B, H)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    row = e // H
    unit = e - row * H
    base = row * 4 * H + unit
    i = _load(gates, base, mask, UPCAST)
    f = _load(gates, base + H, mask, UPCAST)
    g = _load(gates, base + 2 * H, mask, UPCAST)
    o = _load(gates, base + 3 * H, mask, UPCAST)
    dh = _load(dh_next, e, mask, UPCAST)
    tanh_c = _tanh(_load(c_next, e, mask, UPCAST))
    do = dh * tanh_c                                                   # h_next = o ⊙ tanh(c_next)
    dc = _load(dc_next, e, mask, UPCAST) + dh * o * (1.0 - tanh_c * tanh_c)
    di = dc * g                                                        # c_next = f ⊙ c + i ⊙ (g ⊙ d)
    dg = dc * i
    if HAS_CANDIDATE:
        d = _load(candidate, e, mask, UPCAST)
        di = di * d
        dg = dg * d
    df = dc * _load(c_prev, e, mask, UPCAST)
    out = d_pre.dtype.element_ty
    tl.store(d_pre + base, (di * i * (1.0 - i)).to(out), mask=mask)   # i = σ(pre_i)
    tl.store(d_pre + base + H, (df * f * (1.0 - f)).to(out), mask=mask)
    tl.store(d_pre + base + 2 * H, (dg * (1.0 - g * g)).to(out), mask=mask)  # g = tanh(pre_g)
    tl.store(d_pre + base + 3 * H, (do * o * (1.0 - o)).to(out), mask=mask)
    tl.store(dc_prev + e, (dc * f).to(out), mask=mask)


@triton.jit
def gru_forward(pre_x, pre_h, h_prev, candidate, gates, h_next, H, n,
                HAS_CANDIDATE: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """`gatedrnn.cells.gru.gru_step` after its GEMM, rows (B, ·):
        r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r ⊙ h_n)   (pre_x = [x_r|x_z|x_n], pre_h = [h_r|h_z|h_n])
        h_next = (1 − z) ⊙ (n ⊙ d) + z ⊙ h                                (d: candidate mask, else 1)
    pre_x, pre_h: (B, 3H) (W_ih x + b_ih; W_hh h + b_hh); h_prev, candidate: (B, H). Writes gates (B, 3H) =
    [r | z | n] and h_next (B, H); h_n (= W_hn h + b_hn) stays in pre_h, which the scan saves for backward."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    row = e // H
    unit = e - row * H
    base = row * 3 * H + unit
    r = tl.sigmoid(_load(pre_x, base, mask, UPCAST) + _load(pre_h, base, mask, UPCAST))
    z = tl.sigmoid(_load(pre_x, base + H, mask, UPCAST) + _load(pre_h, base + H, mask, UPCAST))
    cand = _tanh(_load(pre_x, base + 2 * H, mask, UPCAST) + r * _load(pre_h, base + 2 * H, mask, UPCAST))
    written = cand
    if HAS_CANDIDATE:
        written = cand * _load(candidate, e, mask, UPCAST)
    h = _load(h_prev, e, mask, UPCAST)
    h_new = (1.0 - z) * written + z * h
    out = gates.dtype.element_ty
    tl.store(gates + base, r.to(out), mask=mask)
    tl.store(gates + base + H, z.to(out), mask=mask)
    tl.store(gates + base + 2 * H, cand.to(out), mask=mask)
    tl.store(h_next + e, h_new.to(out), mask=mask)


@triton.jit
def gru_backward(dh_next, gates, pre_h, h_prev, candidate, d_pre_x, d_pre_h, dh_prev, H, n,
                 HAS_CANDIDATE: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """The chain rule through `gru_forward`, rows (B, ·): dh_next (B, H), gates (B, 3H), pre_h (B, 3H) (its h_n
    block), h_prev, candidate (B, H). Writes d_pre_x, d_pre_h (B, 3H) (they differ in the n block: h_n is scaled
    by r) and dh_prev (B, H), the gradient through z ⊙ h only (the GEMM's part is added by the scan)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    row = e // H
    unit = e - row * H
    base = row * 3 * H + unit
    r = _load(gates, base, mask, UPCAST)
    z = _load(gates, base + H, mask, UPCAST)
    cand = _load(gates, base + 2 * H, mask, UPCAST)
    dh = _load(dh_next, e, mask, UPCAST)
    h = _load(h_prev, e, mask, UPCAST)
    dn = dh * (1.0 - z)                                              # h_next = (1 − z) ⊙ (n ⊙ d) + z ⊙ h
    dz = dh * (h - cand)
    if HAS_CANDIDATE:
        d = _load(candidate, e, mask, UPCAST)
        dn = dn * d
        dz = dh * (h - cand * d)
    dn_pre = dn * (1.0 - cand * cand)                                # n = tanh(x_n + r ⊙ h_n)
    dr = dn_pre * _load(pre_h, base + 2 * H, mask, UPCAST)
    dr_pre = dr * r * (1.0 - r)
    dz_pre = dz * z * (1.0 - z)
    out = d_pre_x.dtype.element_ty
    tl.store(d_pre_x + base, dr_pre.to(out), mask=mask)
    tl.store(d_pre_x + base + H, dz_pre.to(out), mask=mask)
    tl.store(d_pre_x + base + 2 * H, dn_pre.to(out), mask=mask)
    tl.store(d_pre_h + base, dr_pre.to(out), mask=mask)
    tl.store(d_pre_h + base + H, dz_pre.to(out), mask=mask)
    tl.store(d_pre_h + base + 2 * H, (dn_pre * r).to(out), mask=mask)
    tl.store(dh_prev + e, (dh * z).to(out), mask=mask)


@triton.jit
def rnn_forward(pre_x, pre_h, h_next, n, RELU: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """`gatedrnn.cells.rnn.rnn_step` after its GEMM: h_next = act(pre_x + pre_h), act tanh or relu; all (B, H)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    a = _load(pre_x, e, mask, UPCAST) + _load(pre_h, e, mask, UPCAST)
    if RELU:
        h = tl.maximum(a, 0.0)
    else:
        h = _tanh(a)
    tl.store(h_next + e, h.to(h_next.dtype.element_ty), mask=mask)


@triton.jit
def rnn_backward(dh_next, h_next, d_pre, n, RELU: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """The chain rule through `rnn_forward`: d_pre = dh_next ⊙ act′, read from h_next (tanh: 1 − h², relu:
    [h > 0]); all (B, H)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    dh = _load(dh_next, e, mask, UPCAST)
    h = _load(h_next, e, mask, UPCAST)
    if RELU:
        d = tl.where(h > 0, dh, 0.0)
    else:
        d = dh * (1.0 - h * h)
    tl.store(d_pre + e, d.to(d_pre.dtype.element_ty), mask=mask)


def grid(elements: int) -> tuple[int]:
    """Programs for `elements` = B·H."""
    return (triton.cdiv(elements, BLOCK),)
