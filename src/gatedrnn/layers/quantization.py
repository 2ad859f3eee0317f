"""Dynamic int8 quantization: `quantize_dynamic(model, {gatedrnn.LSTM, gatedrnn.GRU})` gives torch's modules.

Importing gatedrnn adds one entry per gatedrnn class to torch's default dynamic quantization mapping
(`torch.ao.quantization.quantization_mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS`, the dict that
`quantize_dynamic` reads when called without `mapping=`). Each entry converts through the torch.nn twin
(`gatedrnn.layers.convert.to_torch`): gatedrnn.LSTM -> torch.ao.nn.quantized.dynamic.LSTM, GRU -> GRU, and the
cells to the quantized cells. Elman RNN layers have no quantized counterpart in torch and stay float.

`quantize_dynamic(model, {nn.LSTM})` does not reach gatedrnn layers: torch chooses the modules to quantize
by their exact class (`type_before_parametrizations(module)` looked up in the qconfig dict, in
torch/ao/quantization/quantize.py `_propagate_qconfig_helper`), and gatedrnn.LSTM is not an nn.LSTM subclass,
because dynamo refuses to trace nn.RNNBase subclasses (see the README's "Works with" section). Name the gatedrnn
classes, or use `qconfig_spec(...)` below, which adds them to a set of torch.nn classes.
"""
from __future__ import annotations

from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization.quantization_mappings import DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS

from gatedrnn.layers.cell_modules import GRUCell, LSTMCell, RNNCell
from gatedrnn.layers.convert import to_torch
from gatedrnn.layers.recurrent import GRU, LSTM


class ViaTorchNN:
    """A mapping entry: `from_float(m)` is `target.from_float(to_torch(m))`, with m's qconfig."""

    def __init__(self, target: type[nn.Module]) -> None:
        self.target = target

    def from_float(self, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> nn.Module:
        twin = to_torch(mod)
        twin.qconfig = mod.qconfig
        return self.target.from_float(twin)

    def __repr__(self) -> str:
        return f"ViaTorchNN({self.target.__module__}.{self.target.__qualname__})"


MAPPINGS: dict[type[nn.Module], ViaTorchNN] = {
    LSTM: ViaTorchNN(nnqd.LSTM),
    GRU: ViaTorchNN(nnqd.GRU),
    LSTMCell: ViaTorchNN(nnqd.LSTMCell),
    GRUCell: ViaTorchNN(nnqd.GRUCell),
    RNNCell: ViaTorchNN(nnqd.RNNCell),
}
TORCH_EQUIVALENTS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}


def register() -> None:
    """Add gatedrnn's entries to torch's default dynamic quantization mapping (done on import)."""
    DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS.update(MAPPINGS)


def qconfig_spec(types) -> set:
    """A `quantize_dynamic` qconfig_spec set with, for each torch.nn class in `types`, the gatedrnn class too:
    `quantize_dynamic(model, qconfig_spec({nn.LSTM, nn.Linear}))` quantizes nn.LSTM and gatedrnn.LSTM layers."""
    types = set(types)
    return types | {TORCH_EQUIVALENTS[t] for t in types if t in TORCH_EQUIVALENTS}


register()
