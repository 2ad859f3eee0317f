"""The registry of recurrent cells a model can be built with: a name -> a factory of gatedrnn layers.

Every model takes `cell="lstm" | "gru" | "rnn" | ...`; a future variant plugs in with `register_cell`
and every model and task can use it by name, with no other change.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from torch import nn

from gatedrnn.cells.lstm_variants import GREFF_VARIANTS
from gatedrnn.layers import GRU, LSTM, RNN, SLSTM, LayerNormGRU, LayerNormLSTM, MinGRU, MinLSTM

# factory(input_size, hidden_size, *, num_layers, dropout[, init]) -> a recurrent layer with batch_first=True;
# `init` (the layer's keyword options: gate-bias init, e.g. {"init": "chrono", "chrono_max": 100}, and the
# regularisers zoneout / recurrent_dropout / weight_drop) is passed only when a model asks for any, so
# factories that do not take it keep working.
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


GATE_BIAS_OPTIONS = ("forget_bias", "init", "chrono_max")


def _rnn(input_size: int, hidden_size: int, *, num_layers: int, dropout: float,
         init: Optional[Mapping[str, Any]] = None) -> nn.Module:
    gate_bias = sorted(set(init or {}) & set(GATE_BIAS_OPTIONS))
    if (init or {}).get("candidate_dropout"):
        raise ValueError("cell 'rnn' has no candidate (h = tanh(W x + R h + b)), so no candidate_dropout")
    if gate_bias:
        raise ValueError(f"cell 'rnn' has no gates, so no gate-bias init: expected no init options, got "
                         f"{ {k: init[k] for k in gate_bias} }")
    return RNN(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True, **(init or {}))


def _lstm_variant(variant: str) -> CellFactory:
    def factory(input_size: int, hidden_size: int, *, num_layers: int, dropout: float,
                init: Optional[Mapping[str, Any]] = None) -> nn.Module:
        if GREFF_VARIANTS[variant].gate_recurrence and (init or {}).get("zoneout"):
            raise ValueError(f"cell 'lstm_{variant}' takes no zoneout (its state carries the previous gates besides "
                             f"h and c); expected zoneout 0, got {init['zoneout']!r}")
        return LSTM(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True,
                    variant=variant, **(init or {}))

    return factory


def _slstm(input_size: int, hidden_size: int, *, num_layers: int, dropout: float,
           init: Optional[Mapping[str, Any]] = None) -> nn.Module:
    regularisers = sorted(set(init or {}) - set(GATE_BIAS_OPTIONS))
    if regularisers:
        raise ValueError(
            "cell 'slstm' has no zoneout, recurrent_dropout or weight_drop (gatedrnn.SLSTM takes none of them): "
            f"expected none, got { {k: init[k] for k in regularisers} }"
        )
    if init:
        raise ValueError(
            "cell 'slstm' has its own gate-bias init (the official xLSTM forget-bias init, see gatedrnn.layers.slstm): "
            f"expected no init options, got {dict(init)}"
        )
    return SLSTM(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True)


def _minimal(layer_class: type) -> CellFactory:
    """A factory for MinGRU / MinLSTM. Their gates read only x_t, so torch's gate-bias options (forget_bias,
    chrono, defined through the hidden-to-hidden recurrence of LSTM/GRU) and the regularisers (recurrent dropout
    and weight drop act on W_hh, which they do not have; their scans take no zoneout or candidate dropout) are
    rejected, not silently changed."""
    name = layer_class.__name__.lower()

    def factory(input_size: int, hidden_size: int, *, num_layers: int, dropout: float,
                init: Optional[Mapping[str, Any]] = None) -> nn.Module:
        regularisers = {k: v for k, v in (init or {}).items() if k not in GATE_BIAS_OPTIONS}
        if regularisers:
            raise ValueError(
                f"cell {name!r} takes no regularisers (zoneout, recurrent_dropout, weight_drop, candidate_dropout: "
                f"it has no hidden-to-hidden weights and its scans take no noise): expected none, got {regularisers}"
            )
        if init:
            raise ValueError(f"cell {name!r} supports only the default init (torch's uniform); got gate-bias "
                             f"options {dict(init)}: forget-bias and chrono are defined for lstm and gru")
        return layer_class(input_size, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True)

    return factory


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


for _variant in GREFF_VARIANTS:  # Greff et al. 2017's LSTM variants: lstm_peephole, lstm_nig, ..., lstm_cifg, lstm_fgr
    register_cell(f"lstm_{_variant}", _lstm_variant(_variant))
register_cell("slstm", _slstm)
register_cell("mingru", _minimal(MinGRU))
register_cell("minlstm", _minimal(MinLSTM))
register_cell("layernorm_lstm", _layernorm_lstm)
register_cell("layernorm_gru", _layernorm_gru)
