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
how the test suite checks them on machines without a GPU.
"""
from __future__ import annotations

import triton
import triton.language as tl

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


@triton.jit
def peephole_lstm_forward(pre_x, pre_h, c_prev, peephole, candidate, gates, c_next, h_next, H, n,
                          I_GATE: tl.constexpr, F_GATE: tl.constexpr, O_GATE: tl.constexpr, COUPLED: tl.constexpr,
                          INPUT_ACT: tl.constexpr, OUTPUT_ACT: tl.constexpr, HAS_CANDIDATE: tl.constexpr,
                          UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """`gatedrnn.cells.lstm_variants.greff_lstm_step` after its GEMM (the peephole LSTM and Greff et al.'s NIG, NFG,
    NOG, NIAF, NOAF and CIFG, chosen by the flags), rows (B, ·), pre = pre_x + pre_h with the gate blocks present
    (i if I_GATE, f if F_GATE, g, o if O_GATE; G of them), peephole [p_i | p_f | p_o] for the sigmoid gates present:
        f = σ(pre_f + p_f ⊙ c) or 1;  i = σ(pre_i + p_i ⊙ c), 1 − f (COUPLED) or 1
        g = tanh(pre_g) or pre_g (not INPUT_ACT);  c_next = f ⊙ c + i ⊙ (g ⊙ d)
        o = σ(pre_o + p_o ⊙ c_next) or 1;  h_next = o ⊙ tanh(c_next), or o ⊙ c_next (not OUTPUT_ACT)
    Writes gates (B, G·H) (the blocks present), c_next and h_next (B, H)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    row = e // H
    unit = e - row * H
    G: tl.constexpr = 1 + I_GATE + F_GATE + O_GATE
    BI: tl.constexpr = 0  # block offsets of the gates present, and of their peepholes
    BF: tl.constexpr = I_GATE
    BG: tl.constexpr = I_GATE + F_GATE
    BO: tl.constexpr = I_GATE + F_GATE + 1
    base = row * G * H + unit
    c = _load(c_prev, e, mask, UPCAST)
    out = gates.dtype.element_ty
    f = c * 0.0 + 1.0
    if F_GATE:
        f = tl.sigmoid(_load(pre_x, base + BF * H, mask, UPCAST) + _load(pre_h, base + BF * H, mask, UPCAST)
                       + _load(peephole, unit + BF * H, mask, UPCAST) * c)
        tl.store(gates + base + BF * H, f.to(out), mask=mask)
    if I_GATE:
        i = tl.sigmoid(_load(pre_x, base + BI * H, mask, UPCAST) + _load(pre_h, base + BI * H, mask, UPCAST)
                       + _load(peephole, unit + BI * H, mask, UPCAST) * c)
        tl.store(gates + base + BI * H, i.to(out), mask=mask)
    elif COUPLED:
        i = 1.0 - f
    else:
        i = f * 0.0 + 1.0
    g = _load(pre_x, base + BG * H, mask, UPCAST) + _load(pre_h, base + BG * H, mask, UPCAST)
    if INPUT_ACT:
        g = _tanh(g)
    tl.store(gates + base + BG * H, g.to(out), mask=mask)
    written = g
    if HAS_CANDIDATE:
        written = g * _load(candidate, e, mask, UPCAST)
    c_new = f * c + i * written
    act_c = c_new
    if OUTPUT_ACT:
        act_c = _tanh(c_new)
    h_new = act_c
    if O_GATE:
        o = tl.sigmoid(_load(pre_x, base + BO * H, mask, UPCAST) + _load(pre_h, base + BO * H, mask, UPCAST)
                       + _load(peephole, unit + (BO - 1) * H, mask, UPCAST) * c_new)
        tl.store(gates + base + BO * H, o.to(out), mask=mask)
        h_new = o * act_c
    tl.store(c_next + e, c_new.to(out), mask=mask)
    tl.store(h_next + e, h_new.to(out), mask=mask)


@triton.jit
def peephole_lstm_backward(dh_next, dc_next, d_gates_out, gates, c_prev, c_next, peephole, candidate, d_pre, dc_prev,
                           d_peephole, H, n, I_GATE: tl.constexpr, F_GATE: tl.constexpr, O_GATE: tl.constexpr,
                           COUPLED: tl.constexpr, INPUT_ACT: tl.constexpr, OUTPUT_ACT: tl.constexpr,
                           GATE_RECURRENCE: tl.constexpr, HAS_CANDIDATE: tl.constexpr, UPCAST: tl.constexpr,
                           BLOCK: tl.constexpr):
    """The chain rule through `peephole_lstm_forward` (the C++ `PeepholeLSTMCell::backward_pass`, line by line):
    dh_next, dc_next (B, H) -> d_pre (B, G·H), dc_prev (B, H) and this row's part of the peepholes' gradient
    d_peephole (B, K·H), summed over rows and steps by the scan. GATE_RECURRENCE (FGR, `gatedrnn.cells.fgr`, whose
    next step reads a = [i | f | o]): d_gates_out (B, 3H), the gradient of a from that step, joins di, df, do
    before σ′ (the C++ `FGRLSTMCell`)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    row = e // H
    unit = e - row * H
    G: tl.constexpr = 1 + I_GATE + F_GATE + O_GATE
    K: tl.constexpr = I_GATE + F_GATE + O_GATE
    BI: tl.constexpr = 0
    BF: tl.constexpr = I_GATE
    BG: tl.constexpr = I_GATE + F_GATE
    BO: tl.constexpr = I_GATE + F_GATE + 1
    base = row * G * H + unit
    peep = row * K * H + unit
    out = d_pre.dtype.element_ty
    c = _load(c_prev, e, mask, UPCAST)
    c_new = _load(c_next, e, mask, UPCAST)
    dh = _load(dh_next, e, mask, UPCAST)
    f = c * 0.0 + 1.0
    if F_GATE:
        f = _load(gates, base + BF * H, mask, UPCAST)
    if I_GATE:
        i = _load(gates, base + BI * H, mask, UPCAST)
    elif COUPLED:
        i = 1.0 - f
    else:
        i = f * 0.0 + 1.0
    g = _load(gates, base + BG * H, mask, UPCAST)
    act_c = c_new
    if OUTPUT_ACT:
        act_c = _tanh(c_new)
    o = f * 0.0 + 1.0
    if O_GATE:
        o = _load(gates, base + BO * H, mask, UPCAST)
    dc = _load(dc_next, e, mask, UPCAST)                                # h_next = o ⊙ act(c_next)
    if OUTPUT_ACT:
        dc += dh * o * (1.0 - act_c * act_c)
    else:
        dc += dh * o
    if O_GATE:
        do = dh * act_c
        if GATE_RECURRENCE:
            do += _load(d_gates_out, row * 3 * H + unit + 2 * H, mask, UPCAST)
        do_pre = do * o * (1.0 - o)
        dc += do_pre * _load(peephole, unit + (BO - 1) * H, mask, UPCAST)  # o peeks at c_next
        tl.store(d_pre + base + BO * H, do_pre.to(out), mask=mask)
        tl.store(d_peephole + peep + (BO - 1) * H, (do_pre * c_new).to(out), mask=mask)
    keep = f * 0.0 + 1.0
    if HAS_CANDIDATE:
        keep = _load(candidate, e, mask, UPCAST)
    di = dc * g * keep                                                  # c_next = f ⊙ c + i ⊙ (g ⊙ d)
    dg = dc * i * keep
    df = dc * c
    if COUPLED:
        df -= di                                                        # i = 1 − f
    if GATE_RECURRENCE:
        di += _load(d_gates_out, row * 3 * H + unit, mask, UPCAST)
        df += _load(d_gates_out, row * 3 * H + unit + H, mask, UPCAST)
    dc_prev_value = dc * f
    if I_GATE:
        di_pre = di * i * (1.0 - i)
        dc_prev_value += di_pre * _load(peephole, unit + BI * H, mask, UPCAST)
        tl.store(d_pre + base + BI * H, di_pre.to(out), mask=mask)
        tl.store(d_peephole + peep + BI * H, (di_pre * c).to(out), mask=mask)
    if F_GATE:
        df_pre = df * f * (1.0 - f)
        dc_prev_value += df_pre * _load(peephole, unit + BF * H, mask, UPCAST)
        tl.store(d_pre + base + BF * H, df_pre.to(out), mask=mask)
        tl.store(d_peephole + peep + BF * H, (df_pre * c).to(out), mask=mask)
    if INPUT_ACT:
        dg = dg * (1.0 - g * g)
    tl.store(d_pre + base + BG * H, dg.to(out), mask=mask)
    tl.store(dc_prev + e, dc_prev_value.to(out), mask=mask)


@triton.jit
def slstm_forward(pre_x, pre_h, state_prev, gates, extra, state_next, h_next, H, n, EXP_FORGET: tl.constexpr,
                  UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """`gatedrnn.cells.slstm.slstm_step` after its GEMM (xLSTM's sLSTM, the C++ `SLSTMCell`), rows (B, ·):
        ĩ, f̃, z̃, õ = pre_x + pre_h;  z = tanh(z̃), o = σ(õ)
        log_f  = logsigmoid(f̃), or f̃ (EXP_FORGET)
        m_next = ĩ where n = 0 or ĩ ≥ log_f + m, else log_f + m
        i = exp(ĩ − m_next);  f = exp(min(log_f + m − m_next, 0))
        c_next = f ⊙ c + i ⊙ z;  n_next = f ⊙ n + i;  h_next = o ⊙ c_next / n_next
    pre_x (W x + b), pre_h (R h): (B, 4H); state_prev [c | n | m] (B, 3H). Writes gates (B, 4H) = [i | f | z | o],
    extra (B, 2H) (which branch m took: 0 log_f + m, 1 ĩ, 2 ĩ with f clamped; and d log_f / d f̃), state_next
    (B, 3H) and h_next (B, H)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    row = e // H
    unit = e - row * H
    base = row * 4 * H + unit
    state = row * 3 * H + unit
    i_tilde = _load(pre_x, base, mask, UPCAST) + _load(pre_h, base, mask, UPCAST)
    f_tilde = _load(pre_x, base + H, mask, UPCAST) + _load(pre_h, base + H, mask, UPCAST)
    z = _tanh(_load(pre_x, base + 2 * H, mask, UPCAST) + _load(pre_h, base + 2 * H, mask, UPCAST))
    o = tl.sigmoid(_load(pre_x, base + 3 * H, mask, UPCAST) + _load(pre_h, base + 3 * H, mask, UPCAST))
    if EXP_FORGET:
        log_f = f_tilde
        dlog_f = f_tilde * 0.0 + 1.0
    else:  # logsigmoid(x) = min(x, 0) − log(1 + e^{−|x|})
        log_f = tl.minimum(f_tilde, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_tilde)))
        dlog_f = tl.sigmoid(-f_tilde)
    c = _load(state_prev, state, mask, UPCAST)
    norm = _load(state_prev, state + H, mask, UPCAST)
    m = _load(state_prev, state + 2 * H, mask, UPCAST)
    log_f_plus_m = log_f + m
    take_input = (norm == 0.0) | (i_tilde >= log_f_plus_m)
    m_next = tl.where(take_input, i_tilde, log_f_plus_m)
    i = tl.exp(i_tilde - m_next)
    f_exponent = log_f_plus_m - m_next
    f = tl.exp(tl.minimum(f_exponent, 0.0))
    c_next = f * c + i * z
    n_next = f * norm + i
    out = gates.dtype.element_ty
    tl.store(gates + base, i.to(out), mask=mask)
    tl.store(gates + base + H, f.to(out), mask=mask)
    tl.store(gates + base + 2 * H, z.to(out), mask=mask)
    tl.store(gates + base + 3 * H, o.to(out), mask=mask)
    branch = tl.where(take_input, tl.where(f_exponent > 0.0, 2.0, 1.0), 0.0)
    tl.store(extra + row * 2 * H + unit, branch.to(out), mask=mask)
    tl.store(extra + row * 2 * H + unit + H, dlog_f.to(out), mask=mask)
    tl.store(state_next + state, c_next.to(out), mask=mask)
    tl.store(state_next + state + H, n_next.to(out), mask=mask)
    tl.store(state_next + state + 2 * H, m_next.to(out), mask=mask)
    tl.store(h_next + e, (o * c_next / n_next).to(out), mask=mask)


@triton.jit
def slstm_backward(dh_next, d_state_next, gates, extra, state_next, state_prev, d_pre, d_state_prev, H, n,
                   UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """The chain rule through `slstm_forward` (the C++ `SLSTMCell::backward`, line by line): dh_next (B, H),
    d_state_next (B, 3H) = [dc | dn | dm] from the next step -> d_pre (B, 4H) and d_state_prev (B, 3H)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < n
    row = e // H
    unit = e - row * H
    base = row * 4 * H + unit
    state = row * 3 * H + unit
    i, f = _load(gates, base, mask, UPCAST), _load(gates, base + H, mask, UPCAST)
    z, o = _load(gates, base + 2 * H, mask, UPCAST), _load(gates, base + 3 * H, mask, UPCAST)
    take = _load(extra, row * 2 * H + unit, mask, UPCAST)
    dlog_f = _load(extra, row * 2 * H + unit + H, mask, UPCAST)
    c_t = _load(state_next, state, mask, UPCAST)
    n_t = tl.where(mask, _load(state_next, state + H, mask, UPCAST), 1.0)
    dh = _load(dh_next, e, mask, UPCAST)
    do = dh * c_t / n_t                                                 # h_t = o ⊙ c_t / n_t
    dc = _load(d_state_next, state, mask, UPCAST) + dh * o / n_t
    dn = _load(d_state_next, state + H, mask, UPCAST) - dh * o * c_t / (n_t * n_t)
    df = dc * _load(state_prev, state, mask, UPCAST) + dn * _load(state_prev, state + H, mask, UPCAST)
    di = dc * z + dn                                                    # c_t = f ⊙ c + i ⊙ z;  n_t = f ⊙ n + i
    dz = dc * i
    # i = exp(ĩ − m_t);  f = exp(min(log_f + m − m_t, 0)) (the min passes nothing where it clamps)
    df_exponent = tl.where(take == 2.0, 0.0, df * f)
    dm_t = _load(d_state_next, state + 2 * H, mask, UPCAST) - di * i - df_exponent
    # m_t = ĩ if the input branch was taken, else log_f + m
    di_tilde = di * i + tl.where(take != 0.0, dm_t, 0.0)
    dlog_f_plus_m = df_exponent + tl.where(take != 0.0, 0.0, dm_t)
    out = d_pre.dtype.element_ty
    tl.store(d_state_prev + state, (dc * f).to(out), mask=mask)
    tl.store(d_state_prev + state + H, (dn * f).to(out), mask=mask)
    tl.store(d_state_prev + state + 2 * H, dlog_f_plus_m.to(out), mask=mask)
    tl.store(d_pre + base, di_tilde.to(out), mask=mask)
    tl.store(d_pre + base + H, (dlog_f_plus_m * dlog_f).to(out), mask=mask)  # log_f = logsigmoid(f̃) or f̃
    tl.store(d_pre + base + 2 * H, (dz * (1.0 - z * z)).to(out), mask=mask)
    tl.store(d_pre + base + 3 * H, (do * o * (1.0 - o)).to(out), mask=mask)


@triton.jit
def _row_stats(a_i, a_f, a_g, a_o, mask, count, eps):
    """Mean and 1/sqrt(var + ε) over one row's four (BLOCK_H,) blocks (count = 4H valid values, var biased)."""
    mean = (tl.sum(a_i, 0) + tl.sum(a_f, 0) + tl.sum(a_g, 0) + tl.sum(a_o, 0)) / count
    d_i, d_f = tl.where(mask, a_i - mean, 0.0), tl.where(mask, a_f - mean, 0.0)
    d_g, d_o = tl.where(mask, a_g - mean, 0.0), tl.where(mask, a_o - mean, 0.0)
    var = (tl.sum(d_i * d_i, 0) + tl.sum(d_f * d_f, 0) + tl.sum(d_g * d_g, 0) + tl.sum(d_o * d_o, 0)) / count
    return mean, 1.0 / tl.sqrt(var + eps)


@triton.jit
def layernorm_lstm_forward(pre_x, wh, c_prev, gamma_hh, gamma_c, beta_c, gates, c_next, h_next, stats, H, eps,
                           UPCAST: tl.constexpr, BLOCK_H: tl.constexpr):
    """`gatedrnn.cells.layernorm.layernorm_lstm_step` after its GEMM, one program per row b:
        pre    = pre_x + LN(wh; γ_hh)            (pre_x = LN(W_ih x; γ_ih) + b_ih + b_hh, from the scan)
        i, f, g, o = σ(pre_i), σ(pre_f), tanh(pre_g), σ(pre_o)
        c_next = f ⊙ c + i ⊙ g
        h_next = o ⊙ tanh(LN(c_next; γ_c, β_c))
    pre_x, wh (= W_hh h): (B, 4H); c_prev: (B, H); gamma_hh (4H,), gamma_c, beta_c (H,). Writes gates (B, 4H),
    c_next, h_next (B, H) and stats (B, 4): mean and 1/σ of wh, then of c_next, which the backward reads."""
    row = tl.program_id(0)
    unit = tl.arange(0, BLOCK_H)
    mask = unit < H
    base = row * 4 * H + unit
    a_i, a_f = _load(wh, base, mask, UPCAST), _load(wh, base + H, mask, UPCAST)
    a_g, a_o = _load(wh, base + 2 * H, mask, UPCAST), _load(wh, base + 3 * H, mask, UPCAST)
    mean, rstd = _row_stats(a_i, a_f, a_g, a_o, mask, 4 * H, eps)
    i = tl.sigmoid(_load(pre_x, base, mask, UPCAST) + _load(gamma_hh, unit, mask, UPCAST) * (a_i - mean) * rstd)
    f = tl.sigmoid(_load(pre_x, base + H, mask, UPCAST)
                   + _load(gamma_hh, unit + H, mask, UPCAST) * (a_f - mean) * rstd)
    g = _tanh(_load(pre_x, base + 2 * H, mask, UPCAST)
              + _load(gamma_hh, unit + 2 * H, mask, UPCAST) * (a_g - mean) * rstd)
    o = tl.sigmoid(_load(pre_x, base + 3 * H, mask, UPCAST)
                   + _load(gamma_hh, unit + 3 * H, mask, UPCAST) * (a_o - mean) * rstd)
    c_new = tl.where(mask, f * _load(c_prev, row * H + unit, mask, UPCAST) + i * g, 0.0)
    mean_c = tl.sum(c_new, 0) / H
    d_c = tl.where(mask, c_new - mean_c, 0.0)
    rstd_c = 1.0 / tl.sqrt(tl.sum(d_c * d_c, 0) / H + eps)
    h_new = o * _tanh(_load(gamma_c, unit, mask, UPCAST) * d_c * rstd_c + _load(beta_c, unit, mask, UPCAST))
    out = gates.dtype.element_ty
    tl.store(gates + base, i.to(out), mask=mask)
    tl.store(gates + base + H, f.to(out), mask=mask)
    tl.store(gates + base + 2 * H, g.to(out), mask=mask)
    tl.store(gates + base + 3 * H, o.to(out), mask=mask)
    tl.store(c_next + row * H + unit, c_new.to(out), mask=mask)
    tl.store(h_next + row * H + unit, h_new.to(out), mask=mask)
    tl.store(stats + row * 4, mean)  # float32 (float64 for float64 tensors): the compute type
    tl.store(stats + row * 4 + 1, rstd)
    tl.store(stats + row * 4 + 2, mean_c)
    tl.store(stats + row * 4 + 3, rstd_c)


@triton.jit
def _layer_norm_backward(dn, n, mask, count):
    """d(input) of LN's normalisation n = (a − mean) / σ, from dn (= d(LN) ⊙ γ), up to the factor 1/σ:
    dn − mean(dn) − n ⊙ mean(dn ⊙ n), the means over one row's `count` values (one (BLOCK_H,) block)."""
    return tl.where(mask, dn - tl.sum(dn, 0) / count - n * (tl.sum(dn * n, 0) / count), 0.0)


@triton.jit
def layernorm_lstm_backward(dh_next, dc_next, gates, c_prev, c_next, wh, stats, gamma_hh, gamma_c, beta_c, d_pre,
                            d_wh, dc_prev, d_gamma_hh, d_gamma_c, d_beta_c, H, UPCAST: tl.constexpr,
                            BLOCK_H: tl.constexpr):
    """The chain rule through `layernorm_lstm_forward`, one program per row: dh_next, dc_next (B, H) -> d_pre
    (B, 4H) (the gradient of pre, which pre_x receives), d_wh (B, 4H) (of W_hh h), dc_prev (B, H), and this row's
    parts of the gains' gradients, summed over rows and steps by the scan: d_gamma_hh (B, 4H), d_gamma_c,
    d_beta_c (B, H)."""
    row = tl.program_id(0)
    unit = tl.arange(0, BLOCK_H)
    mask = unit < H
    base = row * 4 * H + unit
    mean = tl.load(stats + row * 4)  # stats are float32, or float64 for float64 tensors
    rstd = tl.load(stats + row * 4 + 1)
    mean_c = tl.load(stats + row * 4 + 2)
    rstd_c = tl.load(stats + row * 4 + 3)
    i, f = _load(gates, base, mask, UPCAST), _load(gates, base + H, mask, UPCAST)
    g, o = _load(gates, base + 2 * H, mask, UPCAST), _load(gates, base + 3 * H, mask, UPCAST)
    n_c = tl.where(mask, (_load(c_next, row * H + unit, mask, UPCAST) - mean_c) * rstd_c, 0.0)
    gain_c = _load(gamma_c, unit, mask, UPCAST)
    tanh_ln = _tanh(gain_c * n_c + _load(beta_c, unit, mask, UPCAST))
    dh = _load(dh_next, row * H + unit, mask, UPCAST)
    do = dh * tanh_ln                                                  # h_next = o ⊙ tanh(LN(c_next))
    d_ln = tl.where(mask, dh * o * (1.0 - tanh_ln * tanh_ln), 0.0)
    dc = _load(dc_next, row * H + unit, mask, UPCAST) + rstd_c * _layer_norm_backward(d_ln * gain_c, n_c, mask, H)
    di, dg = dc * g, dc * i                                             # c_next = f ⊙ c + i ⊙ g
    df = dc * _load(c_prev, row * H + unit, mask, UPCAST)
    dp_i, dp_f = di * i * (1.0 - i), df * f * (1.0 - f)
    dp_g, dp_o = dg * (1.0 - g * g), do * o * (1.0 - o)
    # pre = pre_x + γ_hh ⊙ n_h, n_h = (wh − mean) / σ over the row's 4H values
    n_i = tl.where(mask, (_load(wh, base, mask, UPCAST) - mean) * rstd, 0.0)
    n_f = tl.where(mask, (_load(wh, base + H, mask, UPCAST) - mean) * rstd, 0.0)
    n_g = tl.where(mask, (_load(wh, base + 2 * H, mask, UPCAST) - mean) * rstd, 0.0)
    n_o = tl.where(mask, (_load(wh, base + 3 * H, mask, UPCAST) - mean) * rstd, 0.0)
    dn_i = tl.where(mask, dp_i * _load(gamma_hh, unit, mask, UPCAST), 0.0)
    dn_f = tl.where(mask, dp_f * _load(gamma_hh, unit + H, mask, UPCAST), 0.0)
    dn_g = tl.where(mask, dp_g * _load(gamma_hh, unit + 2 * H, mask, UPCAST), 0.0)
    dn_o = tl.where(mask, dp_o * _load(gamma_hh, unit + 3 * H, mask, UPCAST), 0.0)
    count = 4 * H
    mean_dn = (tl.sum(dn_i, 0) + tl.sum(dn_f, 0) + tl.sum(dn_g, 0) + tl.sum(dn_o, 0)) / count
    mean_dn_n = (tl.sum(dn_i * n_i, 0) + tl.sum(dn_f * n_f, 0) + tl.sum(dn_g * n_g, 0)
                 + tl.sum(dn_o * n_o, 0)) / count
    out = d_pre.dtype.element_ty
    tl.store(d_pre + base, dp_i.to(out), mask=mask)
    tl.store(d_pre + base + H, dp_f.to(out), mask=mask)
    tl.store(d_pre + base + 2 * H, dp_g.to(out), mask=mask)
    tl.store(d_pre + base + 3 * H, dp_o.to(out), mask=mask)
    tl.store(d_wh + base, (rstd * (dn_i - mean_dn - n_i * mean_dn_n)).to(out), mask=mask)
    tl.store(d_wh + base + H, (rstd * (dn_f - mean_dn - n_f * mean_dn_n)).to(out), mask=mask)
    tl.store(d_wh + base + 2 * H, (rstd * (dn_g - mean_dn - n_g * mean_dn_n)).to(out), mask=mask)
    tl.store(d_wh + base + 3 * H, (rstd * (dn_o - mean_dn - n_o * mean_dn_n)).to(out), mask=mask)
    tl.store(d_gamma_hh + base, (dp_i * n_i).to(out), mask=mask)
    tl.store(d_gamma_hh + base + H, (dp_f * n_f).to(out), mask=mask)
    tl.store(d_gamma_hh + base + 2 * H, (dp_g * n_g).to(out), mask=mask)
    tl.store(d_gamma_hh + base + 3 * H, (dp_o * n_o).to(out), mask=mask)
    tl.store(dc_prev + row * H + unit, (dc * f).to(out), mask=mask)
    tl.store(d_gamma_c + row * H + unit, (d_ln * n_c).to(out), mask=mask)
    tl.store(d_beta_c + row * H + unit, d_ln.to(out), mask=mask)


@triton.jit
def layernorm_gru_forward(pre_x, wh, h_prev, gamma_hh, b_hh, gates, h_next, stats, H, eps, HAS_BIAS: tl.constexpr,
                          UPCAST: tl.constexpr, BLOCK_H: tl.constexpr):
    """`gatedrnn.cells.layernorm.layernorm_gru_step` after its GEMM, one program per row b:
        pre_h  = LN(wh; γ_hh) + b_hh             blocks h_r, h_z, h_n (pre_x = LN(W_ih x; γ_ih) + b_ih, from the scan)
        r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r ⊙ h_n)
        h_next = (1 − z) ⊙ n + z ⊙ h
    pre_x, wh (= W_hh h): (B, 3H); h_prev: (B, H); gamma_hh, b_hh (3H,). Writes gates (B, 3H) = [r | z | n],
    h_next (B, H) and stats (B, 2): the mean and 1/σ of wh, which the backward reads."""
    row = tl.program_id(0)
    unit = tl.arange(0, BLOCK_H)
    mask = unit < H
    base = row * 3 * H + unit
    a_r, a_z, a_n = _load(wh, base, mask, UPCAST), _load(wh, base + H, mask, UPCAST), _load(wh, base + 2 * H, mask,
                                                                                             UPCAST)
    mean = (tl.sum(a_r, 0) + tl.sum(a_z, 0) + tl.sum(a_n, 0)) / (3 * H)
    d_r, d_z, d_n = tl.where(mask, a_r - mean, 0.0), tl.where(mask, a_z - mean, 0.0), tl.where(mask, a_n - mean, 0.0)
    rstd = 1.0 / tl.sqrt((tl.sum(d_r * d_r, 0) + tl.sum(d_z * d_z, 0) + tl.sum(d_n * d_n, 0)) / (3 * H) + eps)
    h_r = _load(gamma_hh, unit, mask, UPCAST) * d_r * rstd
    h_z = _load(gamma_hh, unit + H, mask, UPCAST) * d_z * rstd
    h_n = _load(gamma_hh, unit + 2 * H, mask, UPCAST) * d_n * rstd
    if HAS_BIAS:
        h_r += _load(b_hh, unit, mask, UPCAST)
        h_z += _load(b_hh, unit + H, mask, UPCAST)
        h_n += _load(b_hh, unit + 2 * H, mask, UPCAST)
    r = tl.sigmoid(_load(pre_x, base, mask, UPCAST) + h_r)
    z = tl.sigmoid(_load(pre_x, base + H, mask, UPCAST) + h_z)
    cand = _tanh(_load(pre_x, base + 2 * H, mask, UPCAST) + r * h_n)
    h_new = (1.0 - z) * cand + z * _load(h_prev, row * H + unit, mask, UPCAST)
    out = gates.dtype.element_ty
    tl.store(gates + base, r.to(out), mask=mask)
    tl.store(gates + base + H, z.to(out), mask=mask)
    tl.store(gates + base + 2 * H, cand.to(out), mask=mask)
    tl.store(h_next + row * H + unit, h_new.to(out), mask=mask)
    tl.store(stats + row * 2, mean)  # the compute type, as the LayerNorm LSTM's
    tl.store(stats + row * 2 + 1, rstd)


@triton.jit
def layernorm_gru_backward(dh_next, gates, h_prev, wh, stats, gamma_hh, b_hh, d_pre_x, d_wh, dh_prev, d_gamma_hh,
                           d_b_hh, H, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, BLOCK_H: tl.constexpr):
    """The chain rule through `layernorm_gru_forward`, one program per row: dh_next (B, H) -> d_pre_x (B, 3H),
    d_wh (B, 3H) (of W_hh h, through LN), dh_prev (B, H) (through z ⊙ h only), and this row's parts of dγ_hh and
    db_hh (B, 3H), summed over rows and steps by the scan."""
    row = tl.program_id(0)
    unit = tl.arange(0, BLOCK_H)
    mask = unit < H
    base = row * 3 * H + unit
    mean = tl.load(stats + row * 2)
    rstd = tl.load(stats + row * 2 + 1)
    r, z = _load(gates, base, mask, UPCAST), _load(gates, base + H, mask, UPCAST)
    cand = _load(gates, base + 2 * H, mask, UPCAST)
    n_r = tl.where(mask, (_load(wh, base, mask, UPCAST) - mean) * rstd, 0.0)
    n_z = tl.where(mask, (_load(wh, base + H, mask, UPCAST) - mean) * rstd, 0.0)
    n_n = tl.where(mask, (_load(wh, base + 2 * H, mask, UPCAST) - mean) * rstd, 0.0)
    gain_n = _load(gamma_hh, unit + 2 * H, mask, UPCAST)
    h_n = gain_n * n_n
    if HAS_BIAS:
        h_n += _load(b_hh, unit + 2 * H, mask, UPCAST)
    dh = _load(dh_next, row * H + unit, mask, UPCAST)
    dn = dh * (1.0 - z)                                                # h_next = (1 − z) ⊙ n + z ⊙ h
    dz = dh * (_load(h_prev, row * H + unit, mask, UPCAST) - cand)
    dn_pre = dn * (1.0 - cand * cand)                                  # n = tanh(x_n + r ⊙ h_n)
    dr_pre = dn_pre * h_n * r * (1.0 - r)
    dz_pre = dz * z * (1.0 - z)
    dh_n = dn_pre * r
    out = d_pre_x.dtype.element_ty
    tl.store(d_pre_x + base, dr_pre.to(out), mask=mask)
    tl.store(d_pre_x + base + H, dz_pre.to(out), mask=mask)
    tl.store(d_pre_x + base + 2 * H, dn_pre.to(out), mask=mask)
    # pre_h = γ_hh ⊙ n_h + b_hh, n_h = (wh − mean) / σ over the row's 3H values
    dp_r, dp_z, dp_n = tl.where(mask, dr_pre, 0.0), tl.where(mask, dz_pre, 0.0), tl.where(mask, dh_n, 0.0)
    dn_r = dp_r * _load(gamma_hh, unit, mask, UPCAST)
    dn_z = dp_z * _load(gamma_hh, unit + H, mask, UPCAST)
    dn_n = dp_n * gain_n
    mean_dn = (tl.sum(dn_r, 0) + tl.sum(dn_z, 0) + tl.sum(dn_n, 0)) / (3 * H)
    mean_dn_n = (tl.sum(dn_r * n_r, 0) + tl.sum(dn_z * n_z, 0) + tl.sum(dn_n * n_n, 0)) / (3 * H)
    tl.store(d_wh + base, (rstd * (dn_r - mean_dn - n_r * mean_dn_n)).to(out), mask=mask)
    tl.store(d_wh + base + H, (rstd * (dn_z - mean_dn - n_z * mean_dn_n)).to(out), mask=mask)
    tl.store(d_wh + base + 2 * H, (rstd * (dn_n - mean_dn - n_n * mean_dn_n)).to(out), mask=mask)
    tl.store(d_gamma_hh + base, (dp_r * n_r).to(out), mask=mask)
    tl.store(d_gamma_hh + base + H, (dp_z * n_z).to(out), mask=mask)
    tl.store(d_gamma_hh + base + 2 * H, (dp_n * n_n).to(out), mask=mask)
    if HAS_BIAS:
        tl.store(d_b_hh + base, dp_r.to(out), mask=mask)
        tl.store(d_b_hh + base + H, dp_z.to(out), mask=mask)
        tl.store(d_b_hh + base + 2 * H, dp_n.to(out), mask=mask)
    tl.store(dh_prev + row * H + unit, (dh * z).to(out), mask=mask)


def grid(elements: int) -> tuple[int]:
    """Programs for `elements` = B·H."""
    return (triton.cdiv(elements, BLOCK),)
