"""The registry of recurrent cells a model can be built with: a name -> a factory of gatedrnn layers.

Every model takes `cell="lstm" | "gru" | "rnn" | ...`; a future variant plugs in with `register_cell`
and every model and task can use it by name, with no other change.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from torch import nn

from gatedrnn.layers import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM

# factory(input_size, hidden_size, *, num_layers, dropout[, init]) -> a recurrent layer with batch_first=True;
# `init` (the layer's gate-bias keyword options, e.g. {"init": "chrono", "chrono_max": 100}) is passed only
# when a model asks for a non-default init, so factories that do not take it keep working.
CellFactory = Callable[..., nn.Module]

CELLS: dict[str, CellFactory] = {}


def register_cell(name: str, factory: CellFactory) -> None:
    """Make `factory(input_size, hidden_size, *, num_layers, dropout)` available to models as `cell=name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"cell name should be a non-empty string, got {name!r}")
    if name in CELLS:
        raise ValueError(f"cell {name!r} is already registered")
    CELLS[name] = factory


def build_rnn(cell: str, input_size: int, hidden_size: int, *, num_layers: int = 1, dropout: float = 0.0,
              init: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """The recurrent layer named `cell`, always with batch_first=True. `init`: the layer's gate-bias options
    (`forget_bias`, `init`, `chrono_max`; see `gatedrnn.layers.init`), None or {} for torch's init."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}: expected one of {sorted(CELLS)}")
    extra = {"init": dict(init)} if init else {}
    rnn = CELLS[cell](input_size, hidden_size, num_layers=num_layers, dropout=dropout, **extra)
    if not getattr(rnn, "batch_first", False):
        raise ValueError(f"cell {cell!r} built a layer without batch_first=True; models need batch-first layers")
    return rnn


def _lstm(input_size: int, hidden_size: int, *, num_layers: int, dropout: float,
         init: Optional[Mapping[str, Any]] = None) -> nn.Module:
    return LSTM(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True, **(init or {}))


def _gru(input_size: int, hidden_size: int, *, num_layers: int, dropout: float,
         init: Optional[Mapping[str, Any]] = None) -> nn.Module:
    return GRU(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True, **(init or {}))


def _rnn(input_size: int, hidden_size: int, *, num_layers: int, dropout: float,
         init: Optional[Mapping[str, Any]] = None) -> nn.Module:
    if init:
        raise ValueError(f"cell 'rnn' has no gates, so no gate-bias init: expected no init options, got {dict(init)}")
    return RNN(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True)


register_cell("lstm", _lstm)
register_cell("gru", _gru)
register_cell("rnn", _rnn)


def _layernorm_lstm(input_size: int, hidden_size: int, *, num_layers: int, dropout: float,
                    init: Optional[Mapping[str, Any]] = None) -> nn.Module:
    return LayerNormLSTM(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True,
                         **(init or {}))


def _layernorm_gru(input_size: int, hidden_size: int, *, num_layers: int, dropout: float,
                   init: Optional[Mapping[str, Any]] = None) -> nn.Module:
    return LayerNormGRU(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True,
                        **(init or {}))


register_cell("layernorm_lstm", _layernorm_lstm)
register_cell("layernorm_gru", _layernorm_gru)
