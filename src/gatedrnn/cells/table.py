"""The cell table: one `CellSpec` per cell kind, the only place that maps a cell's name to its math and facts.

Adding a cell: its step function (equations in the docstring) in a module of `gatedrnn.cells`, its kernel
struct in `engine/csrc/cells.h` (see the recipe in engine/csrc/README.md), and one entry here.
"""
from __future__ import annotations

from gatedrnn.cells.gru import GRUTrace, gru_step
from gatedrnn.cells.lstm import LSTMState, LSTMTrace, lstm_step
from gatedrnn.cells.rnn import RNNTrace, rnn_step
from gatedrnn.cells.spec import CellSpec, LayerWeights, StepFn


def _lstm_step(weights: LayerWeights) -> StepFn:
    def step(x_proj, state):
        new_state, gates = lstm_step(x_proj, LSTMState(*state), weights.w_hh, weights.b_hh, weights.w_hr)
        return tuple(new_state), tuple(gates)

    return step


def _gru_step(weights: LayerWeights) -> StepFn:
    def step(x_proj, state):
        h_next, gates = gru_step(x_proj, state[0], weights.w_hh, weights.b_hh)
        return (h_next,), tuple(gates)

    return step


def _rnn_step(nonlinearity: str):
    def make(weights: LayerWeights) -> StepFn:
        def step(x_proj, state):
            h_next, _ = rnn_step(x_proj, state[0], weights.w_hh, weights.b_hh, nonlinearity)
            return (h_next,), ()  # the RNN's trace is h alone

        return step

    return make


def _rnn(name: str, display_name: str, nonlinearity: str, color: str) -> CellSpec:
    return CellSpec(name, display_name, rnn_step, _rnn_step(nonlinearity), 1, ("a",), ("h",), RNNTrace, (),
                    torch_mode=name.upper(), color=color)


CELL_SPECS: dict[str, CellSpec] = {
    spec.name: spec
    for spec in (
        CellSpec("lstm", "LSTM", lstm_step, _lstm_step, 4, ("i", "f", "g", "o"), ("h", "c"), LSTMTrace,
                 ("i", "f", "g", "o"), torch_mode="LSTM", supports_projection=True,
                 hold_gate="f", write_gate="i", color="#1f77b4"),
        CellSpec("gru", "GRU", gru_step, _gru_step, 3, ("r", "z", "n"), ("h",), GRUTrace, ("r", "z", "n"),
                 torch_mode="GRU", saved_extra=1, hold_gate="z", write_gate="z", write_gate_inverted=True,
                 color="#2ca02c"),
        _rnn("rnn_tanh", "RNN", "tanh", "#d62728"),
        _rnn("rnn_relu", "RNN (relu)", "relu", "#ff7f0e"),
    )
}


def cell_spec(name: str) -> CellSpec:
    """The table entry of a cell, or a ValueError naming the cells there are."""
    try:
        return CELL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown cell kind {name!r}; expected one of {sorted(CELL_SPECS)}") from None
