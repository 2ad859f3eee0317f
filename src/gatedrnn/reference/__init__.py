"""From scratch: one LSTM, GRU or RNN layer in NumPy, forward and hand-derived backward (BPTT).

No torch here: this is the version to read next to the equations. Each ``*_forward`` docstring states
the equations with the names used in its body; each ``*_backward`` walks the same lines in reverse,
naming dL/d<var> as d<var>. Weights follow torch.nn's layout and gate order, so
``LSTMParams.from_state_dict(torch.nn.LSTM(...).state_dict())`` reproduces torch's numbers
(tests/test_reference.py checks this and finite differences).

    from gatedrnn.reference import LSTMParams, lstm_forward, lstm_backward
    y, h_T, c_T, cache = lstm_forward(x, h0, c0, params)        # x (T, B, I), h0, c0 (B, H)
    grads = lstm_backward(dy, dh_T, dc_T, cache)                 # grads.dx, grads.dw_ih, ...
"""
from gatedrnn.reference.layernorm import (
    LayerNormGRUParams, LayerNormLSTMParams, layernorm_gru_backward, layernorm_gru_forward, layernorm_lstm_backward,
    layernorm_lstm_forward,
)
from gatedrnn.reference.gru import GRUCache, GRUGrads, GRUParams, gru_backward, gru_forward
from gatedrnn.reference.lstm import LSTMCache, LSTMGrads, LSTMParams, lstm_backward, lstm_forward
from gatedrnn.reference.rnn import RNNCache, RNNGrads, RNNParams, rnn_backward, rnn_forward

__all__ = [
    "LSTMParams", "LSTMCache", "LSTMGrads", "lstm_forward", "lstm_backward",
    "GRUParams", "GRUCache", "GRUGrads", "gru_forward", "gru_backward",
    "RNNParams", "RNNCache", "RNNGrads", "rnn_forward", "rnn_backward",
    "LayerNormLSTMParams", "layernorm_lstm_forward", "layernorm_lstm_backward",
    "LayerNormGRUParams", "layernorm_gru_forward", "layernorm_gru_backward",
]
