"""gatedrnn: LSTM and GRU for PyTorch, fast on the CPU, with every gate visible.

Layout (lower layers never import upper ones):
    cells (math) -> engine (time loop, fused kernels) -> layers (nn.Module API)
    -> inspect / viz (seeing inside) -> data / tasks / train -> cli
"""
from gatedrnn.engine import backend_info
from gatedrnn.layers import (
    GRU, LSTM, RNN, SLSTM, GRUCell, LayerNormGRU, LayerNormLSTM, LSTMCell, MinGRU, MinLSTM, RNNCell, kernel_choice,
)

__version__ = "0.1.0"
__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "LayerNormGRU", "LayerNormLSTM", "MinGRU", "MinLSTM", "RNN",
           "RNNCell", "SLSTM", "backend_info", "kernel_choice",
           "__version__"]
