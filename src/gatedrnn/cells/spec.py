"""What the layers and the engine need to know about a cell, stated once.

Shape symbols used across gatedrnn:
    T: time steps, B: batch, I: input features (H_in), H: hidden size,
    P: size of h (P = proj_size if the LSTM has a projection, else H), G: gate count (LSTM 4, GRU 3, RNN 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

from torch import Tensor


class LayerWeights(NamedTuple):
    """The parameters of one layer and one direction, under torch.nn's names.

    w_ih: (G*H, I); w_hh: (G*H, P); b_ih, b_hh: (G*H,) or None; w_hr: (P, H) or None (LSTM projection).
    Gate blocks are stacked in torch.nn's order: LSTM i,f,g,o; GRU r,z,n.
    """

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Optional[Tensor]
    b_hh: Optional[Tensor]
    w_hr: Optional[Tensor] = None


@dataclass(frozen=True)
class CellSpec:
    """Static facts about a cell kind: how many gate blocks its weights stack and what its state holds."""

    name: str
    gate_count: int
    gate_names: tuple[str, ...]
    state_names: tuple[str, ...]  # "h" always first; LSTM adds "c"
    torch_mode: str  # torch.nn.RNNBase's mode: its aten op is torch._VF.<torch_mode.lower()>, its cell op <...>_cell


CELL_SPECS: dict[str, CellSpec] = {
    "lstm": CellSpec("lstm", 4, ("i", "f", "g", "o"), ("h", "c"), "LSTM"),
    "gru": CellSpec("gru", 3, ("r", "z", "n"), ("h",), "GRU"),
    "rnn_tanh": CellSpec("rnn_tanh", 1, ("a",), ("h",), "RNN_TANH"),
    "rnn_relu": CellSpec("rnn_relu", 1, ("a",), ("h",), "RNN_RELU"),
}
