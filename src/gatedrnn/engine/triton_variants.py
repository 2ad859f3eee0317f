"""The GPU engine's Triton kernels for Greff et al.'s peephole LSTM and its variants (FGR included) and xLSTM's sLSTM:
one step, forward and backward, in the layout of `gatedrnn.engine.triton_cells` (its module docstring: a flat range
of B·H elements, gate k of unit j of row b at b·G·H + k·H + j). The equations are those of
`gatedrnn.cells.lstm_variants`, `gatedrnn.cells.fgr` and `gatedrnn.cells.slstm`, in the same symbols; the backwards
follow the C++ `PeepholeLSTMCell`, `FGRLSTMCell` and `SLSTMCell` (engine/csrc/cells.h) line by line.
"""
from __future__ import annotations

import triton
import triton.language as tl

from gatedrnn.engine.triton_cells import _load, _tanh

__all__ = ["peephole_lstm_backward", "peephole_lstm_forward", "slstm_backward", "slstm_forward"]


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
    G = 1 + I_GATE + F_GATE + O_GATE
    BI = 0  # block offsets of the gates present, and of their peepholes
    BF = I_GATE
    BG = I_GATE + F_GATE
    BO = I_GATE + F_GATE + 1
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
    G = 1 + I_GATE + F_GATE + O_GATE
    K = I_GATE + F_GATE + O_GATE
    BI = 0
    BF = I_GATE
    BG = I_GATE + F_GATE
    BO = I_GATE + F_GATE + 1
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
