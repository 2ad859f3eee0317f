"""nn.Module API: torch.nn-compatible recurrent layers and one-step cells."""
import torch

from gatedrnn.layers._checks import ArgumentTypeError, DeviceError, DtypeError, PackingError, ShapeError
from gatedrnn.layers.cell_modules import GRUCell, LSTMCell, RNNCell
from gatedrnn.layers.convert import from_torch, to_torch
from gatedrnn.layers.torch_floor import kernel_choice
from gatedrnn.layers.recurrent import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, RecurrentBase
from gatedrnn.layers.minimal import MinGRU, MinLSTM, MinimalRNNBase
from gatedrnn.layers.slstm import SLSTM
from gatedrnn.layers import quantization  # noqa: E402,F401 - registers the dynamic int8 quantization mapping

# torch.save(layer) then torch.load(path) with torch's default weights_only=True: the unpickler accepts
# these classes (a pickled layer holds only them, parameters, dicts, lists and strings).
torch.serialization.add_safe_globals([GRU, GRUCell, LSTM, LSTMCell, RNN, RNNCell, SLSTM, MinGRU, MinLSTM,
                                      LayerNormGRU, LayerNormLSTM])

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "RecurrentBase", "SLSTM",
           "LayerNormGRU", "LayerNormLSTM", "MinGRU", "MinLSTM", "MinimalRNNBase", "from_torch", "to_torch",
           "kernel_choice",
           "ArgumentTypeError", "DeviceError", "DtypeError", "PackingError", "ShapeError"]
