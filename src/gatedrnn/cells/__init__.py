"""Cell math: one pure function per time step, the single place where each cell's equations live.

Every step function takes the input projection of one step (``x_proj = W_ih x + b_ih``, computed for
all steps at once by the caller) and the previous state, and returns ``(new_state, gates)``.
Layers, the fused engine and the docs point here instead of restating the equations; `CELL_SPECS`
(cells/table.py) is the one table that maps a cell's name to its step function and facts.
The sLSTM (`cells.slstm`) is in the table as "slstm" (and "slstm_exp" for its exponential forget gate) with
four states (h, c, n, m), its per-head recurrent weights as `LayerWeights.w_hh` and its one bias as b_ih; its
fused kernel takes the states after h as one operand [c | n | m] (`CellSpec.state_blocks`) and the dense W_hh
(`CellSpec.kernel_weights`); its layer `gatedrnn.SLSTM` runs the kernel, or its own loop (`layers._slstm_scan`)
on the reference path.
"""
from gatedrnn.cells.gru import GRUGates, GRUTrace, gru_step
from gatedrnn.cells.layernorm import LAYER_NORM_EPS, layernorm_gru_step, layernorm_lstm_step
from gatedrnn.cells.lstm import LSTMGates, LSTMState, LSTMTrace, lstm_step
from gatedrnn.cells.minimal import (
    MinGRUGates, MinGRUTrace, MinLSTMGates, MinLSTMTrace, mingru_step, minlstm_step,
)
from gatedrnn.cells.rnn import RNNGates, RNNTrace, rnn_step
from gatedrnn.cells.slstm import SLSTMGates, SLSTMState, SLSTMTrace, slstm_step
from gatedrnn.cells.spec import CellSpec, LayerWeights, StepFn
from gatedrnn.cells.table import CELL_SPECS, cell_spec

__all__ = [
    "CELL_SPECS", "CellSpec", "LayerWeights", "StepFn", "cell_spec",
    "LSTMGates", "LSTMState", "LSTMTrace", "lstm_step",
    "GRUGates", "GRUTrace", "gru_step",
    "RNNGates", "RNNTrace", "rnn_step",
    "SLSTMGates", "SLSTMState", "SLSTMTrace", "slstm_step",
    "MinGRUGates", "MinGRUTrace", "mingru_step", "MinLSTMGates", "MinLSTMTrace", "minlstm_step",
    "LAYER_NORM_EPS", "layernorm_lstm_step", "layernorm_gru_step",
]
