r"""The LSTM with peepholes and the eight variants of Greff et al. 2017, "LSTM: A Search Space Odyssey"
(IEEE TNNLS 28(10)), each of which removes or changes one part of the peephole ("vanilla") LSTM.

Vanilla (V), peepholes after Gers & Schmidhuber 2000, with ``x_proj = W_ih x + b_ih`` and the recurrent
input ``r = W_hh h + b_hh`` split into the gate blocks present (i, f, g, o, in that order):

    i      = σ(x_i + r_i + p_i ⊙ c)
    f      = σ(x_f + r_f + p_f ⊙ c)
    g      = tanh(x_g + r_g)
    c_next = f ⊙ c + i ⊙ g
    o      = σ(x_o + r_o + p_o ⊙ c_next)          (o peeks at the new cell)
    h_next = o ⊙ tanh(c_next)

The variants (Greff et al., section III):
    NIG   no input gate:                  i = 1                (blocks f, g, o; peepholes p_f, p_o)
    NFG   no forget gate:                 f = 1                (blocks i, g, o; peepholes p_i, p_o)
    NOG   no output gate:                 o = 1                (blocks i, f, g; peepholes p_i, p_f)
    NIAF  no input activation function:   g = x_g + r_g
    NOAF  no output activation function:  h_next = o ⊙ c_next
    NP    no peepholes:                   p_i = p_f = p_o = 0  (torch.nn.LSTM's cell, `gatedrnn.cells.lstm`)
    CIFG  coupled input and forget gate:  i = 1 − f            (blocks f, g, o; peepholes p_f, p_o; GRU-like)
    FGR   full gate recurrence: i, f, o also read the previous step's i, f, o through nine more matrices
          (one R_g (3H, 3H)), so the state carries the previous gates: (h, c, a = [i′ | f′ | o′]);
          equations in `gatedrnn.cells.fgr.fgr_lstm_step`

Peephole weights are diagonal (one weight per unit), stored as one vector ``peephole`` = [p_i | p_f | p_o]
over the gates present, each (H,).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from gatedrnn.cells.lstm import LSTMState


@dataclass(frozen=True)
class GreffVariant:
    """Which parts of the peephole LSTM a variant keeps (Greff et al. 2017's names)."""

    name: str                     # "peephole" (their V), "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"
    input_gate: bool = True       # False: NIG (i = 1) and CIFG (i = 1 − f)
    forget_gate: bool = True      # False: NFG (f = 1)
    output_gate: bool = True      # False: NOG (o = 1)
    coupled: bool = False         # CIFG: i = 1 − f
    input_activation: bool = True   # False: NIAF (g = its pre-activation)
    output_activation: bool = True  # False: NOAF (h = o ⊙ c)
    peepholes: bool = True        # False: NP
    gate_recurrence: bool = False  # True: FGR (state (h, c, a); step `gatedrnn.cells.fgr.fgr_lstm_step`)

    @property
    def gate_names(self) -> tuple[str, ...]:
        """The gate blocks stacked in W_ih / W_hh, in order."""
        return (("i",) if self.input_gate else ()) + (("f",) if self.forget_gate else ()) + ("g",) + (
            ("o",) if self.output_gate else ())

    @property
    def peephole_names(self) -> tuple[str, ...]:
        """The peephole blocks in `peephole`, in order (one per sigmoid gate present)."""
        return tuple(name for name in self.gate_names if name != "g") if self.peepholes else ()


GREFF_VARIANTS: dict[str, GreffVariant] = {
    v.name: v
    for v in (
        GreffVariant("peephole"),
        GreffVariant("nig", input_gate=False),
        GreffVariant("nfg", forget_gate=False),
        GreffVariant("nog", output_gate=False),
        GreffVariant("niaf", input_activation=False),
        GreffVariant("noaf", output_activation=False),
        GreffVariant("np", peepholes=False),
        GreffVariant("cifg", input_gate=False, coupled=True),
        GreffVariant("fgr", gate_recurrence=True),
    )
}


class PeepholeGates(NamedTuple):
    """The gate activations of one step, each (B, H); a gate a variant removes holds its constant value
    (1, or 1 − f for CIFG's input gate)."""

    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor


def greff_lstm_step(
    x_proj: Tensor,
    state: LSTMState,
    w_hh: Tensor,
    b_hh: Optional[Tensor],
    peephole: Optional[Tensor],
    variant: GreffVariant,
    recurrent_mask: Optional[Tensor] = None,
    candidate_mask: Optional[Tensor] = None,
) -> tuple[LSTMState, PeepholeGates]:
    """One step of the peephole LSTM or one of Greff et al.'s variants (equations in the module docstring).

    Args:
        x_proj: (B, G*H) input projection, b_ih included, blocks `variant.gate_names`.
        state: LSTMState(h (B, H), c (B, H)).
        w_hh: (G*H, H). b_hh: (G*H,) or None. peephole: (K*H,) [p_i | p_f | p_o] for the K gates in
            `variant.peephole_names`, or None for NP.
        recurrent_mask: (B, H) or None: W_hh reads h ⊙ recurrent_mask (variational recurrent dropout).
        candidate_mask: (B, H) or None: c_next = f ⊙ c + i ⊙ (g ⊙ candidate_mask) (Semeniuta et al. 2016).
    Returns:
        (LSTMState(h_next, c_next), PeepholeGates(i, f, g, o)), each (B, H).
    """
    h, c = state
    h_rec = h if recurrent_mask is None else h * recurrent_mask
    pre = x_proj + h_rec @ w_hh.t()
    if b_hh is not None:
        pre = pre + b_hh
    blocks = dict(zip(variant.gate_names, pre.chunk(len(variant.gate_names), dim=1)))  # name -> (B, H)
    peep = dict(zip(variant.peephole_names, peephole.chunk(len(variant.peephole_names)))) if variant.peepholes else {}

    def gate(name: str, cell: Tensor) -> Tensor:
        return torch.sigmoid(blocks[name] + peep[name] * cell if name in peep else blocks[name])

    one = torch.ones_like(c)
    f = gate("f", c) if variant.forget_gate else one
    i = gate("i", c) if variant.input_gate else (1 - f if variant.coupled else one)
    g = torch.tanh(blocks["g"]) if variant.input_activation else blocks["g"]
    c_next = f * c + i * (g if candidate_mask is None else g * candidate_mask)
    o = gate("o", c_next) if variant.output_gate else one
    h_next = o * (torch.tanh(c_next) if variant.output_activation else c_next)
    return LSTMState(h_next, c_next), PeepholeGates(i, f, g, o)


_VARIANT_LINE = re.compile(r"^\s+([A-Z]+)\s+(.+?):\s+(.+)$")


def _vanilla_lines() -> dict[str, str]:
    """The vanilla equations of the module docstring, lhs -> the whole line (one source for every variant)."""
    block = __doc__.split("Vanilla (V)", 1)[1].split("\n\n")[1]  # the indented block after the first paragraph
    return {line.split("=", 1)[0].strip(): line.strip() for line in block.splitlines() if " = " in line}


def _variant_heading(variant: GreffVariant) -> str:
    """The variant's line of the module docstring's list ("CIFG   coupled input and forget gate: i = 1 − f ...")."""
    if variant.name == "peephole":
        return "Greff et al.'s vanilla LSTM (V): peepholes after Gers & Schmidhuber 2000."
    for line in __doc__.splitlines():
        match = _VARIANT_LINE.match(line)
        if match and match.group(1).lower() == variant.name:
            return re.sub(r"\s+", " ", f"Greff et al.'s {match.group(1)}: {match.group(2)}: {match.group(3)}.")
    raise ValueError(f"no line for variant {variant.name!r} in the module docstring")


def variant_equations(variant: GreffVariant) -> str:
    """The equations of one variant, derived from the vanilla lines of the module docstring by the variant's
    own change (a removed gate reads `= 1`, CIFG's i = 1 − f, NIAF's g without tanh, ...), in the step
    docstrings' format: a prose paragraph, then the indented equation lines."""
    lines = _vanilla_lines()
    if not variant.peepholes:  # NP: σ(x_i + r_i + p_i ⊙ c) -> σ(x_i + r_i)
        lines = {lhs: re.sub(r"\s+\(o peeks at the new cell\)$", "",
                             re.sub(r" \+ p_[ifo] ⊙ c(_next)?", "", line)) for lhs, line in lines.items()}
    if not variant.forget_gate:
        lines["f"] = "f      = 1                                  (no forget gate)"
    if not variant.input_gate:
        lines["i"] = ("i      = 1 − f                              (coupled to the forget gate)" if variant.coupled
                      else "i      = 1                                  (no input gate)")
    if not variant.output_gate:
        lines["o"] = "o      = 1                                  (no output gate)"
    if not variant.input_activation:
        lines["g"] = "g      = x_g + r_g                          (no input activation)"
    if not variant.output_activation:
        lines["h_next"] = "h_next = o ⊙ c_next                         (no output activation)"
    order = ["f", "i"] if variant.coupled else ["i", "f"]  # CIFG's i reads f
    order += ["g", "c_next", "o", "h_next"]
    blocks = ", ".join(variant.gate_names)
    prose = (f"{_variant_heading(variant)} With x_proj = W_ih x + b_ih and the recurrent input r = W_hh h + b_hh "
             f"split into the gate blocks present ({blocks}):")
    return prose + "\n\n" + "\n".join("    " + lines[lhs] for lhs in order)
