r"""The peephole LSTM and Greff et al. 2017's variants in NumPy, with zoneout and a recurrent dropout mask:
the forward pass and its hand-derived backward pass (BPTT).

Shape symbols: T time steps, B batch, I input features, H hidden size, G gate blocks the variant has
(4, or 3 without i, f or o), K peephole blocks (the sigmoid gates it has; 0 for NP).
Weights use gatedrnn.LSTM(variant=...)'s layout: W_ih (G*H, I), W_hh (G*H, H), biases (G*H,), blocks in the
order i, f, g, o over the gates present; ``peephole`` (K*H,) = [p_i | p_f | p_o] over the sigmoid gates present.

This module restates the variants on its own (no import of `gatedrnn.cells`, no torch), so that the tests can
hold the fused kernels and the torch step function against a second, independent statement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from gatedrnn.reference._common import check_inputs, sigmoid, to_array, weights_from_state_dict


@dataclass(frozen=True)
class VariantSpec:
    """Which parts of the peephole LSTM one variant keeps (Greff et al. 2017, section III)."""

    name: str
    input_gate: bool = True         # NIG: i = 1; CIFG: i = 1 − f
    forget_gate: bool = True        # NFG: f = 1
    output_gate: bool = True        # NOG: o = 1
    coupled: bool = False           # CIFG
    input_activation: bool = True   # NIAF: g = a_g
    output_activation: bool = True  # NOAF: h = o ⊙ c
    peepholes: bool = True          # NP: no peepholes

    @property
    def gates(self) -> tuple[str, ...]:
        """The gate blocks stacked in W_ih / W_hh, in order."""
        return tuple(g for g, has in (("i", self.input_gate), ("f", self.forget_gate), ("g", True),
                                      ("o", self.output_gate)) if has)

    @property
    def peephole_gates(self) -> tuple[str, ...]:
        """The blocks of `peephole`, in order."""
        return tuple(g for g in self.gates if g != "g") if self.peepholes else ()


VARIANTS: dict[str, VariantSpec] = {
    "peephole": VariantSpec("peephole"),
    "nig": VariantSpec("nig", input_gate=False),
    "nfg": VariantSpec("nfg", forget_gate=False),
    "nog": VariantSpec("nog", output_gate=False),
    "niaf": VariantSpec("niaf", input_activation=False),
    "noaf": VariantSpec("noaf", output_activation=False),
    "np": VariantSpec("np", peepholes=False),
    "cifg": VariantSpec("cifg", input_gate=False, coupled=True),
}


@dataclass(frozen=True)
class VariantParams:
    """w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,), peephole (K*H,) (shape (0,) for NP)."""

    variant: str
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    peephole: np.ndarray

    @property
    def spec(self) -> VariantSpec:
        return VARIANTS[self.variant]

    @property
    def hidden_size(self) -> int:
        return self.w_hh.shape[1]

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], variant: str, suffix: str = "_l0") -> "VariantParams":
        """One layer and direction of a gatedrnn.LSTM(variant=...) state_dict (tensors or arrays)."""
        spec = VARIANTS[variant]
        hidden = state_dict[f"weight_hh{suffix}"].shape[1]
        arrays = weights_from_state_dict(state_dict, suffix, len(spec.gates) * hidden)
        name = f"weight_peephole{suffix}"
        peephole = to_array(state_dict[name]) if spec.peepholes else np.zeros(0, dtype=arrays["w_ih"].dtype)
        if peephole.shape != (len(spec.peephole_gates) * hidden,):
            raise ValueError(f"{name} should have shape ({len(spec.peephole_gates) * hidden},), "
                             f"got {peephole.shape}")
        return cls(variant, peephole=peephole, **arrays)


@dataclass(frozen=True)
class VariantCache:
    """What the forward saves for the backward. h and c hold T+1 steps: index 0 is h0/c0, index t+1 is step t.

    x (T, B, I); h, c (T+1, B, H); i, f, g, o (T, B, H) (constants where the variant has no such gate);
    c_new (T, B, H) the cell's own c̃_t and act_c its activation (tanh(c̃_t), or c̃_t for NOAF);
    zoneout_h, zoneout_c (T, B, H) and mask (B, H) as given (ones/zeros when absent).
    """

    params: VariantParams
    x: np.ndarray
    h: np.ndarray
    c: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    c_new: np.ndarray
    act_c: np.ndarray
    zoneout_h: np.ndarray
    zoneout_c: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class VariantGrads:
    """dL/d of every input of `variant_forward`: dx (T, B, I), dh0, dc0 (B, H), and one per parameter."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray
    db_hh: np.ndarray
    dpeephole: np.ndarray


def variant_forward(
    x: np.ndarray, h0: np.ndarray, c0: np.ndarray, params: VariantParams,
    zoneout_h: Optional[np.ndarray] = None, zoneout_c: Optional[np.ndarray] = None,
    mask: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, VariantCache]:
    r"""Run one layer of the peephole LSTM or one of its variants over a sequence.

    For t = 0 … T-1, with h = h_{t-1}, c = c_{t-1} (h_{-1} = h0, c_{-1} = c0), m the recurrent mask,
    d_h, d_c the step's zoneout weights:

        a      = W_ih x_t + b_ih + W_hh (h ⊙ m) + b_hh    split into the blocks present (a_i, a_f, a_g, a_o)
        f      = σ(a_f + p_f ⊙ c)                          1 for NFG
        i      = σ(a_i + p_i ⊙ c)                          1 for NIG, 1 − f for CIFG
        g      = tanh(a_g)                                 a_g for NIAF
        c̃      = f ⊙ c + i ⊙ g
        o      = σ(a_o + p_o ⊙ c̃)                          1 for NOG; o peeks at the new cell
        h̃      = o ⊙ tanh(c̃)                               o ⊙ c̃ for NOAF
        c_t    = d_c ⊙ c + (1 − d_c) ⊙ c̃                   zoneout (d = 0: none)
        h_t    = d_h ⊙ h + (1 − d_h) ⊙ h̃
        y_t    = h_t
    NP has no peepholes (p = 0).

    Args:
        x: (T, B, I). h0, c0: (B, H). params: VariantParams.
        zoneout_h, zoneout_c: (T, B, H) or None (zeros). mask: (B, H) or None (ones).
    Returns:
        (y (T, B, H), h_T (B, H), c_T (B, H), cache for `variant_backward`).
    """
    spec = params.spec
    check_inputs(f"variant_forward({spec.name})", x, {"h0": h0, "c0": c0}, params.w_ih, gate_count=len(spec.gates))
    T, B = x.shape[0], x.shape[1]
    H = params.hidden_size
    for name, value, shape in (("zoneout_h", zoneout_h, (T, B, H)), ("zoneout_c", zoneout_c, (T, B, H)),
                               ("mask", mask, (B, H))):
        if value is not None and value.shape != shape:
            raise ValueError(f"variant_forward: {name} should have shape {shape}, got {value.shape}")
    d_h = np.zeros((T, B, H), dtype=x.dtype) if zoneout_h is None else zoneout_h
    d_c = np.zeros((T, B, H), dtype=x.dtype) if zoneout_c is None else zoneout_c
    m = np.ones((B, H), dtype=x.dtype) if mask is None else mask
    peep = dict(zip(spec.peephole_gates, np.split(params.peephole, len(spec.peephole_gates)))) \
        if spec.peepholes else {}
    zero = np.zeros(H, dtype=x.dtype)
    p_i, p_f, p_o = (peep.get(name, zero) for name in "ifo")  # (H,) each; zero where absent
    h = np.zeros((T + 1, B, H), dtype=x.dtype)
    c = np.zeros((T + 1, B, H), dtype=x.dtype)
    i, f, g, o, c_new, act_c = (np.zeros((T, B, H), dtype=x.dtype) for _ in range(6))
    h[0], c[0] = h0, c0
    for t in range(T):
        a = x[t] @ params.w_ih.T + params.b_ih + (h[t] * m) @ params.w_hh.T + params.b_hh  # (B, G*H)
        blocks = dict(zip(spec.gates, np.split(a, len(spec.gates), axis=1)))  # name -> (B, H)
        f[t] = sigmoid(blocks["f"] + p_f * c[t]) if spec.forget_gate else 1.0
        if spec.input_gate:
            i[t] = sigmoid(blocks["i"] + p_i * c[t])
        else:
            i[t] = 1.0 - f[t] if spec.coupled else 1.0
        g[t] = np.tanh(blocks["g"]) if spec.input_activation else blocks["g"]
        c_new[t] = f[t] * c[t] + i[t] * g[t]
        o[t] = sigmoid(blocks["o"] + p_o * c_new[t]) if spec.output_gate else 1.0
        act_c[t] = np.tanh(c_new[t]) if spec.output_activation else c_new[t]
        c[t + 1] = d_c[t] * c[t] + (1 - d_c[t]) * c_new[t]
        h[t + 1] = d_h[t] * h[t] + (1 - d_h[t]) * (o[t] * act_c[t])
    y = h[1:].copy()  # (T, B, H)
    cache = VariantCache(params, x, h, c, i, f, g, o, c_new, act_c, d_h, d_c, m)
    return y, h[T].copy(), c[T].copy(), cache


def variant_backward(dy: np.ndarray, dh_T: np.ndarray, dc_T: np.ndarray, cache: VariantCache) -> VariantGrads:
    r"""Backpropagation through time for `variant_forward`.

    Walks t = T-1 … 0 with dh_next = dL/dh_t and dc_next = dL/dc_t arriving from step t+1 (through zoneout's
    d ⊙ h, d ⊙ c, the peepholes, f ⊙ c and W_hh). The zoneout weights and the mask are data: no gradient.

    Args:
        dy: (T, B, H) dL/dy. dh_T, dc_T: (B, H) (zeros if the loss ignores them). cache: from `variant_forward`.
    Returns:
        VariantGrads: dx (T, B, I), dh0, dc0 (B, H), dw_ih, dw_hh, db_ih, db_hh, dpeephole shaped like the params.
    """
    p, x, spec = cache.params, cache.x, cache.params.spec
    T, H = x.shape[0], p.hidden_size
    m = cache.mask
    peep = dict(zip(spec.peephole_gates, np.split(p.peephole, len(spec.peephole_gates)))) if spec.peepholes else {}
    dpeep = {name: np.zeros(H, dtype=x.dtype) for name in spec.peephole_gates}
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(p.w_ih), np.zeros_like(p.w_hh)
    db = np.zeros_like(p.b_ih)
    dh_next, dc_next = dh_T.copy(), dc_T.copy()
    for t in range(T - 1, -1, -1):
        i, f, g, o = cache.i[t], cache.f[t], cache.g[t], cache.o[t]
        c_new, act_c, c_prev, h_prev = cache.c_new[t], cache.act_c[t], cache.c[t], cache.h[t]
        d_h, d_c = cache.zoneout_h[t], cache.zoneout_c[t]
        # y_t = h_t: h_t feeds the output and the next step
        dh = dy[t] + dh_next
        # h_t = d_h ⊙ h + (1 − d_h) ⊙ h̃ ;  c_t = d_c ⊙ c + (1 − d_c) ⊙ c̃
        dh_prev = d_h * dh
        dh_new = (1 - d_h) * dh
        dc_prev = d_c * dc_next
        dc_new = (1 - d_c) * dc_next
        # h̃ = o ⊙ act(c̃)
        do = dh_new * act_c
        dc_new = dc_new + dh_new * o * ((1 - act_c**2) if spec.output_activation else 1.0)
        da = {}
        # o = σ(a_o + p_o ⊙ c̃)
        if spec.output_gate:
            da["o"] = do * o * (1 - o)
            if "o" in peep:
                dc_new = dc_new + da["o"] * peep["o"]
                dpeep["o"] += (da["o"] * c_new).sum(axis=0)
        # c̃ = f ⊙ c + i ⊙ g
        di = dc_new * g
        dg = dc_new * i
        df = dc_new * c_prev
        dc_prev = dc_prev + dc_new * f
        if spec.coupled:  # i = 1 − f
            df = df - di
        # g = tanh(a_g) (or a_g)
        da["g"] = dg * (1 - g**2) if spec.input_activation else dg
        # i = σ(a_i + p_i ⊙ c), f = σ(a_f + p_f ⊙ c)
        for name, gate, dgate in (("i", i, di), ("f", f, df)):
            if name in spec.gates:
                da[name] = dgate * gate * (1 - gate)
                if name in peep:
                    dc_prev = dc_prev + da[name] * peep[name]
                    dpeep[name] += (da[name] * c_prev).sum(axis=0)
        da_all = np.concatenate([da[name] for name in spec.gates], axis=1)  # (B, G*H)
        # a = W_ih x_t + b_ih + W_hh (h ⊙ m) + b_hh
        dw_ih += da_all.T @ x[t]
        dw_hh += da_all.T @ (h_prev * m)
        db += da_all.sum(axis=0)
        dx[t] = da_all @ p.w_ih
        dh_prev = dh_prev + (da_all @ p.w_hh) * m
        dh_next, dc_next = dh_prev, dc_prev
    dpeephole = np.concatenate([dpeep[name] for name in spec.peephole_gates]) if spec.peepholes \
        else np.zeros(0, dtype=x.dtype)
    return VariantGrads(dx, dh_next, dc_next, dw_ih, dw_hh, db, db.copy(), dpeephole)
