"""The cell table: one `CellSpec` per cell kind, the only place that maps a cell's name to its math and facts.

Adding a cell: its step function (equations in the docstring) in a module of `gatedrnn.cells`, its kernel
struct in `engine/csrc/cells.h` (see the recipe in engine/csrc/README.md), and one entry here.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from gatedrnn.cells.fgr import FGRState, FGRTrace, fgr_lstm_step
from gatedrnn.cells.gru import GRUTrace, gru_step
from gatedrnn.cells.layernorm import layernorm_gru_step, layernorm_lstm_step
from gatedrnn.cells.lstm import LSTMState, LSTMTrace, lstm_step
from gatedrnn.cells.lstm_variants import GREFF_VARIANTS, GreffVariant, greff_lstm_step, variant_equations
from gatedrnn.cells.minimal import MinGRUTrace, MinLSTMTrace, mingru_scan, mingru_step, minlstm_scan, minlstm_step
from gatedrnn.cells.rnn import RNNTrace, rnn_step
from gatedrnn.cells.slstm import SLSTMState, SLSTMTrace, dense_recurrent_matrix, slstm_step
from gatedrnn.cells.spec import CellSpec, ExtraParam, LayerWeights, StepFn


def _lstm_step(weights: LayerWeights, recurrent_mask=None) -> StepFn:
    def step(x_proj, state, candidate_mask=None):
        new_state, gates = lstm_step(x_proj, LSTMState(*state), weights.w_hh, weights.b_hh, weights.w_hr,
                                     recurrent_mask, candidate_mask)
        return tuple(new_state), tuple(gates)

    return step


def _gru_step(weights: LayerWeights, recurrent_mask=None) -> StepFn:
    def step(x_proj, state, candidate_mask=None):
        h_next, gates = gru_step(x_proj, state[0], weights.w_hh, weights.b_hh, recurrent_mask, candidate_mask)
        return (h_next,), tuple(gates)

    return step


def _rnn_step(nonlinearity: str):
    def make(weights: LayerWeights, recurrent_mask=None) -> StepFn:
        def step(x_proj, state, candidate_mask=None):  # no candidate: layers refuse candidate_dropout
            h_next, _ = rnn_step(x_proj, state[0], weights.w_hh, weights.b_hh, nonlinearity, recurrent_mask)
            return (h_next,), ()  # the RNN's trace is h alone

        return step

    return make


def _rnn(name: str, display_name: str, nonlinearity: str, color: str) -> CellSpec:
    return CellSpec(name, display_name, rnn_step, _rnn_step(nonlinearity), 1, ("a",), ("h",), RNNTrace, (),
                    torch_mode=name.upper(), color=color, backward_reads_h=True)


def _greff_step(variant: GreffVariant):
    def make(weights: LayerWeights, recurrent_mask=None) -> StepFn:
        peephole = weights.extra[0] if variant.peepholes else None

        def step(x_proj, state, candidate_mask=None):
            new_state, gates = greff_lstm_step(x_proj, LSTMState(*state), weights.w_hh, weights.b_hh, peephole,
                                               variant, recurrent_mask, candidate_mask)
            by_name = gates._asdict()
            return tuple(new_state), tuple(by_name[name] for name in variant.gate_names)

        return step

    return make


def _greff_trace_type(variant: GreffVariant) -> type:
    """LSTMTrace's layout over the gates the variant has: its gates, then c and h, each (T, B, ·)."""
    if variant.gate_names == LSTMTrace._fields[:4]:
        return LSTMTrace
    name = f"LSTM{variant.name.upper()}Trace"
    trace = NamedTuple(name, [(gate, Tensor) for gate in variant.gate_names] + [("c", Tensor), ("h", Tensor)])
    trace.__module__ = __name__
    globals()[name] = trace  # importable by name, so pickled traces load
    return trace


def _greff(variant: GreffVariant, color: str) -> CellSpec:
    label = "peephole" if variant.name == "peephole" else variant.name.upper()
    return CellSpec(
        f"lstm_{variant.name}", f"LSTM ({label})", greff_lstm_step, _greff_step(variant), len(variant.gate_names),
        variant.gate_names, ("h", "c"), _greff_trace_type(variant), variant.gate_names,
        torch_mode="LSTM" if not variant.peepholes else "",
        hold_gate="f" if variant.forget_gate else None,
        write_gate="i" if variant.input_gate else ("f" if variant.coupled else None),
        write_gate_inverted=variant.coupled, color=color,
        extra_params=(ExtraParam("weight_peephole", len(variant.peephole_names)),) if variant.peepholes else (),
        variant=variant, candidate_gate="g", equations=lambda: variant_equations(variant),
        trace_labels=() if variant.input_activation else (("g", "input g (no activation)"),),
    )


def _fgr_step(weights: LayerWeights, recurrent_mask=None) -> StepFn:
    peephole, w_gate_hh = weights.extra

    def step(x_proj, state, candidate_mask=None):
        new_state, gates = fgr_lstm_step(x_proj, FGRState(*state), weights.w_hh, weights.b_hh, peephole, w_gate_hh,
                                         recurrent_mask, candidate_mask)
        return tuple(new_state), tuple(gates)

    return step


def _fgr_kernel_weights(weights: LayerWeights) -> LayerWeights:
    """FGR's LayerWeights (extra = (peephole (3H,), R_g (3H, 3H))) as the fused kernel takes them: the recurrent
    GEMM reads [h | a′] (`CellSpec.kernel_reads_state`), so W_hh becomes (4H, P + 3H) = [W_hh | R], R holding
    R_g's rows in the i, f, o blocks and zeros in the g block; aux is the peephole alone. Autograd takes the
    kernel's dW_hh back to W_hh and R_g (the zero g rows of R pass nothing)."""
    peephole, w_gate_hh = weights.extra
    hidden = w_gate_hh.shape[0] // 3
    rows_i_f, rows_o = w_gate_hh.split([2 * hidden, hidden])  # targets i, f | o, each row over [i′ | f′ | o′]
    gate_rec = torch.cat([rows_i_f, rows_o.new_zeros(hidden, 3 * hidden), rows_o])  # (4H, 3H), rows i, f, g, o
    return weights._replace(w_hh=torch.cat([weights.w_hh, gate_rec], dim=1), extra=(peephole,))


def _fgr(color: str) -> CellSpec:
    """Greff et al.'s FGR (`gatedrnn.cells.fgr`): the peephole LSTM plus the gate recurrence R_g; state (h, c, a);
    fused kernel `FGRLSTMCell` (state operand [c | i′ | f′ | o′], the GEMM reads [h | i′ | f′ | o′])."""
    variant = GREFF_VARIANTS["fgr"]
    return CellSpec(
        "lstm_fgr", "LSTM (FGR)", fgr_lstm_step, _fgr_step, 4, variant.gate_names, ("h", "c", "a"), FGRTrace,
        variant.gate_names, torch_mode="", hold_gate="f", write_gate="i", color=color,
        extra_params=(ExtraParam("weight_peephole", 3), ExtraParam("weight_gate_hh", 3, columns=3)),
        variant=variant, candidate_gate="g", trace_labels=(("a", "previous i′, f′, o′ (a)"),),
        kernel_weights=_fgr_kernel_weights, state_widths=(1, 3), kernel_reads_state=True,
    )


def _slstm_step(forget_gate: str):
    """The sLSTM in the engine's form: LayerWeights(w_ih (4H, I), w_hh = r_blocks (K, 4D, D), b_ih = its one
    bias (4H,), b_hh None); x_proj already holds the bias (scan_reference adds b_ih), so the step adds none.
    With a recurrent_mask (B, H), R reads h ⊙ mask: h enters the step only through R h."""

    def make(weights: LayerWeights, recurrent_mask=None) -> StepFn:
        def step(x_proj, state, candidate_mask=None):  # the sLSTM layer takes no candidate dropout
            h, c, n, m = state
            h_rec = h if recurrent_mask is None else h * recurrent_mask
            new_state, gates = slstm_step(x_proj, SLSTMState(h_rec, c, n, m), weights.w_hh, weights.b_hh,
                                          forget_gate=forget_gate)
            return tuple(new_state), tuple(gates)

        return step

    return make


_SLSTM_LABELS = (("i", "input gate i (stabilised i′)"), ("f", "forget gate f (stabilised f′)"),
                 ("z", "candidate z"), ("n", "normaliser n"), ("m", "stabiliser m"))


def _slstm_kernel_weights(weights: LayerWeights) -> LayerWeights:
    """The sLSTM's LayerWeights (w_hh = r_blocks (K, 4D, D), b_ih = b, b_hh None) as the fused kernel takes them:
    the dense block-diagonal W_hh (4H, H) and b_hh zeros. The kernel's per-step GEMM then does K times the
    recurrent multiply-adds the heads need (the zeros off the diagonal blocks); autograd takes dW_hh back to
    r_blocks through `dense_recurrent_matrix`."""
    b_hh = None if weights.b_ih is None else torch.zeros_like(weights.b_ih)
    return LayerWeights(weights.w_ih, dense_recurrent_matrix(weights.w_hh), weights.b_ih, b_hh)


def _slstm(forget_gate: str, color: str) -> CellSpec:
    """xLSTM's sLSTM (`gatedrnn.cells.slstm`); fused kernel `SLSTMCell` (state operand [c | n | m]); the layer
    `gatedrnn.SLSTM` and `engine.scan.scan_reference` run the same step function on the reference path."""
    name = "slstm" if forget_gate == "sigmoid" else f"slstm_{forget_gate}"
    display = "sLSTM" if forget_gate == "sigmoid" else f"sLSTM ({forget_gate} forget gate)"
    return CellSpec(name, display, slstm_step, _slstm_step(forget_gate), 4, ("i", "f", "z", "o"),
                    ("h", "c", "n", "m"), SLSTMTrace, ("i", "f", "z", "o"), torch_mode="", hold_gate="f",
                    write_gate="i", color=color, variant=forget_gate, saved_extra=2, trace_labels=_SLSTM_LABELS,
                    kernel_weights=_slstm_kernel_weights)


def _layernorm_lstm_step(weights: LayerWeights, recurrent_mask=None) -> StepFn:
    gamma_ih, gamma_hh, gamma_c, beta_c = weights.extra

    def step(x_proj, state, candidate_mask=None):  # no candidate dropout for the LayerNorm cells
        new_state, gates = layernorm_lstm_step(x_proj, LSTMState(*state), weights.w_hh, weights.b_ih, weights.b_hh,
                                               gamma_ih, gamma_hh, gamma_c, beta_c, recurrent_mask)
        return tuple(new_state), tuple(gates)

    return step


def _layernorm_gru_step(weights: LayerWeights, recurrent_mask=None) -> StepFn:
    gamma_ih, gamma_hh = weights.extra

    def step(x_proj, state, candidate_mask=None):
        h_next, gates = layernorm_gru_step(x_proj, state[0], weights.w_hh, weights.b_ih, weights.b_hh, gamma_ih,
                                           gamma_hh, recurrent_mask)
        return (h_next,), tuple(gates)

    return step


# LayerNorm cells (gatedrnn.cells.layernorm): the gains of LN(W_ih x) and LN(W_hh h), G*H each, and the LSTM's
# LN(c_next) gain and bias; the fused kernel saves W_ih x and W_hh h (2G blocks), the GRU also LN(W_hn h) + b_hn.
_LAYERNORM = (
    CellSpec("layernorm_lstm", "LayerNorm LSTM", layernorm_lstm_step, _layernorm_lstm_step, 4, ("i", "f", "g", "o"),
             ("h", "c"), LSTMTrace, ("i", "f", "g", "o"), torch_mode="", saved_extra=8, hold_gate="f",
             write_gate="i", color="#393b79",
             extra_params=(ExtraParam("gamma_ih", 4, "ones"), ExtraParam("gamma_hh", 4, "ones"),
                           ExtraParam("gamma_c", 1, "ones"), ExtraParam("beta_c", 1, "zeros"))),
    CellSpec("layernorm_gru", "LayerNorm GRU", layernorm_gru_step, _layernorm_gru_step, 3, ("r", "z", "n"), ("h",),
             GRUTrace, ("r", "z", "n"), torch_mode="", saved_extra=7, hold_gate="z", write_gate="z",
             write_gate_inverted=True, color="#637939",
             extra_params=(ExtraParam("gamma_ih", 3, "ones"), ExtraParam("gamma_hh", 3, "ones"))),
)


def _minimal_step(step_fn, display_name: str):
    """minGRU / minLSTM in the engine's form: LayerWeights(w_ih (G*H, I), w_hh None, b_ih (G*H,) or None,
    b_hh None); x_proj = W_ih x + b_ih (scan_reference's) is all the step reads besides h. With no W_hh there is
    nothing for a recurrent mask to drop, and the layers take no candidate dropout: either raises."""

    def make(weights: LayerWeights, recurrent_mask=None) -> StepFn:
        if recurrent_mask is not None:
            raise ValueError(f"{display_name} has no hidden-to-hidden weights, so no recurrent dropout mask: "
                             f"expected recurrent_mask None, got a tensor of shape {tuple(recurrent_mask.shape)}")

        def step(x_proj, state, candidate_mask=None):
            if candidate_mask is not None:
                raise ValueError(f"{display_name} takes no candidate dropout: expected candidate_mask None, got "
                                 f"a tensor of shape {tuple(candidate_mask.shape)}")
            h_next, gates = step_fn(x_proj, state[0])
            return (h_next,), tuple(gates)

        return step

    return make


# minGRU and minLSTM (gatedrnn.cells.minimal): gates from x_t alone, one state h; no fused kernel: the layers
# (`gatedrnn.MinGRU`, `gatedrnn.MinLSTM`) run `sequence_scan`, and `engine.scan.scan_reference` runs the step for
# the tools. h̃ = g(k_h) > 0 is no gate and not bounded by 1, so its label names it a candidate without
# starting with "candidate" (plots then scale it freely). minGRU's z writes (h = (1 − z) ⊙ h + z ⊙ h̃): its
# hold is 1 − z, which no field holds, so hold_gate is None; minLSTM's normalised f′ holds (f′ + i′ = 1).
_MINIMAL = (
    CellSpec("mingru", "minGRU", mingru_step, _minimal_step(mingru_step, "minGRU"), 2, ("z", "h_tilde"), ("h",),
             MinGRUTrace, ("z", "h_tilde"), torch_mode="", write_gate="z", color="#c49c94", fused=False,
             trace_labels=(("h_tilde", "positive candidate h̃ = g(k_h)"),), sequence_scan=mingru_scan),
    CellSpec("minlstm", "minLSTM", minlstm_step, _minimal_step(minlstm_step, "minLSTM"), 3, ("f", "i", "h_tilde"),
             ("h",), MinLSTMTrace, ("f", "i", "h_tilde"), torch_mode="", hold_gate="f", write_gate="i",
             color="#f7b6d2", fused=False,
             trace_labels=(("f", "forget gate f′ = f / (f + i)"), ("i", "input gate i′ = i / (f + i)"),
                           ("h_tilde", "positive candidate h̃ = g(k_h)")),
             sequence_scan=minlstm_scan),
)


_GREFF_COLORS = {"peephole": "#9467bd", "nig": "#8c564b", "nfg": "#e377c2", "nog": "#bcbd22", "niaf": "#17becf",
                 "noaf": "#aec7e8", "np": "#ffbb78", "cifg": "#98df8a", "fgr": "#c5b0d5"}


CELL_SPECS: dict[str, CellSpec] = {
    spec.name: spec
    for spec in (
        CellSpec("lstm", "LSTM", lstm_step, _lstm_step, 4, ("i", "f", "g", "o"), ("h", "c"), LSTMTrace,
                 ("i", "f", "g", "o"), torch_mode="LSTM", supports_projection=True, candidate_gate="g",
                 hold_gate="f", write_gate="i", color="#1f77b4"),
        CellSpec("gru", "GRU", gru_step, _gru_step, 3, ("r", "z", "n"), ("h",), GRUTrace, ("r", "z", "n"),
                 torch_mode="GRU", saved_extra=1, candidate_gate="n", hold_gate="z", write_gate="z", write_gate_inverted=True,
                 color="#2ca02c"),
        _rnn("rnn_tanh", "RNN", "tanh", "#d62728"),
        _rnn("rnn_relu", "RNN (relu)", "relu", "#ff7f0e"),
        *(_greff(variant, _GREFF_COLORS[name]) if not variant.gate_recurrence else _fgr(_GREFF_COLORS[name])
          for name, variant in GREFF_VARIANTS.items()),
        _slstm("sigmoid", "#393b79"),
        _slstm("exp", "#5254a3"),
        *_LAYERNORM,
        *_MINIMAL,
    )
}


def cell_spec(name: str) -> CellSpec:
    """The table entry of a cell, or a ValueError naming the cells there are."""
    try:
        return CELL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown cell kind {name!r}; expected one of {sorted(CELL_SPECS)}") from None
