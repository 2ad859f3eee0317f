"""Converters between gatedrnn modules and torch.nn's: the same parameter names, shapes and gate order.

`to_torch(m)` gives the torch.nn module (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, ...) that holds m's own
Parameter objects (not copies): it computes what m computes, and a change to one is a change to both.
TorchScript (`__prepare_scriptable__`) and dynamic quantization (`gatedrnn.layers.quantization`) use it.
`from_torch(m)` goes the other way, with copies.
"""
from __future__ import annotations

from torch import nn

from gatedrnn.cells import CELL_SPECS
from gatedrnn.layers._checks import active_regularisers


def _torch_class(module: nn.Module) -> type[nn.Module]:
    from gatedrnn.layers.cell_modules import CellBase

    spec = CELL_SPECS[module.mode]
    regularisers = active_regularisers(module)
    if not spec.torch_mode or regularisers:
        what = f"{spec.display_name} cell" if not spec.torch_mode else " and ".join(regularisers)
        raise TypeError(f"{type(module).__name__} has no torch.nn twin: torch.nn has no {what}; torch.export and "
                        "torch.compile record gatedrnn's own operator instead")
    kind = spec.torch_mode.split("_")[0]  # "LSTM", "GRU" or "RNN"
    return getattr(nn, kind + ("Cell" if isinstance(module, CellBase) else ""))


def to_torch(module: nn.Module) -> nn.Module:
    """The torch.nn twin of a gatedrnn layer or cell, sharing its parameters; training mode copied."""
    from gatedrnn.layers.cell_modules import CellBase

    cls = _torch_class(module)
    weight = module.weight_ih_l0 if hasattr(module, "weight_ih_l0") else module.weight_ih
    factory = {"device": "meta", "dtype": weight.dtype}  # no memory for parameters that are replaced below
    options = {"bias": module.bias}
    if CELL_SPECS[module.mode].torch_mode.startswith("RNN_"):
        options["nonlinearity"] = module.nonlinearity
    if isinstance(module, CellBase):
        twin = cls(module.input_size, module.hidden_size, **options, **factory)
    else:
        if CELL_SPECS[module.mode].supports_projection:
            options["proj_size"] = module.proj_size
        twin = cls(module.input_size, module.hidden_size, num_layers=module.num_layers,
                   batch_first=module.batch_first, dropout=module.dropout, bidirectional=module.bidirectional,
                   **options, **factory)
    for name, parameter in module.named_parameters(recurse=False):
        setattr(twin, name, parameter)  # RNNBase.__setattr__ keeps its _flat_weights in step
    if isinstance(twin, nn.RNNBase):
        twin._init_flat_weights()
    return twin.train(module.training)


def from_torch(module: nn.Module) -> nn.Module:
    """The gatedrnn module equal to a torch.nn LSTM, GRU, RNN or cell (a copy of its parameters)."""
    import gatedrnn.layers as layers

    name = type(module).__name__
    if not isinstance(module, (nn.RNNBase, nn.RNNCellBase)) or not hasattr(layers, name):
        raise TypeError(f"from_torch takes a torch.nn LSTM, GRU, RNN, LSTMCell, GRUCell or RNNCell, got {name}")
    weight = module.weight_ih_l0 if isinstance(module, nn.RNNBase) else module.weight_ih
    options = {"bias": module.bias, "device": weight.device, "dtype": weight.dtype}
    if name.startswith("RNN"):
        options["nonlinearity"] = module.nonlinearity
    if isinstance(module, nn.RNNBase):
        options.update(num_layers=module.num_layers, batch_first=module.batch_first, dropout=module.dropout,
                       bidirectional=module.bidirectional)
        if name == "LSTM":
            options["proj_size"] = module.proj_size
    ours = getattr(layers, name)(module.input_size, module.hidden_size, **options)
    ours.load_state_dict(module.state_dict(), strict=True)
    return ours.train(module.training)
