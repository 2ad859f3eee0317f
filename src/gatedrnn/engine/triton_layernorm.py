"""The GPU engine's Triton kernels for the LayerNorm LSTM and GRU (`gatedrnn.cells.layernorm`): one step, forward
and backward, one program per row, whose LayerNorms' row reductions (over the G·H values of W_hh h, and the LSTM's
over the H of c_next) stay in the program. Operands as in `gatedrnn.engine.triton_cells`; the equations in the
symbols of `gatedrnn.cells.layernorm`.
"""
from __future__ import annotations

import triton
import triton.language as tl

from gatedrnn.engine.triton_cells import _load, _tanh

__all__ = ["layernorm_gru_backward", "layernorm_gru_forward", "layernorm_lstm_backward", "layernorm_lstm_forward"]


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
