"""nn.Module API: torch.nn-compatible recurrent layers and one-step cells."""
from gatedrnn.layers.cell_modules import GRUCell, LSTMCell, RNNCell
from gatedrnn.layers.recurrent import GRU, LSTM, RNN, RecurrentBase

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "RecurrentBase"]
