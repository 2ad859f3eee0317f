"""From scratch: one LSTM, GRU, RNN or sLSTM layer in NumPy, forward and hand-derived backward (BPTT).

No torch here: this is the version to read next to the equations. `lstm_variants` holds the peephole LSTM
and Greff et al.'s variants, with zoneout and a recurrent dropout mask; `fgr` their FGR (full gate recurrence).
Each ``*_forward`` docstring states
the equations with the names used in its body; each ``*_backward`` walks the same lines in reverse,
naming dL/d<var> as d<var>. Weights follow torch.nn's layout and gate order, so
``LSTMParams.from_state_dict(torch.nn.LSTM(...).state_dict())`` reproduces torch's numbers
(tests/test_reference.py checks this and finite differences).

    from gatedrnn.reference import LSTMParams, lstm_forward, lstm_backward
    y, h_T, c_T, cache = lstm_forward(x, h0, c0, params)        # x (T, B, I), h0, c0 (B, H)
    grads = lstm_backward(dy, dh_T, dc_T, cache)                 # grads.dx, grads.dw_ih, ...
"""
from gatedrnn.reference.fgr import FGRCache, FGRGrads, FGRParams, fgr_backward, fgr_forward
from gatedrnn.reference.layernorm import (
    LayerNormGRUParams, LayerNormLSTMParams, layernorm_gru_backward, layernorm_gru_forward, layernorm_lstm_backward,
    layernorm_lstm_forward,
)
from gatedrnn.reference.gru import GRUCache, GRUGrads, GRUParams, gru_backward, gru_forward
from gatedrnn.reference.lstm import LSTMCache, LSTMGrads, LSTMParams, lstm_backward, lstm_forward
from gatedrnn.reference.lstm_variants import (
    VARIANTS, VariantCache, VariantGrads, VariantParams, variant_backward, variant_forward,
)
from gatedrnn.reference.minimal import (
    MinimalCache, MinimalGrads, MinimalParams, mingru_backward, mingru_forward, minlstm_backward, minlstm_forward,
)
from gatedrnn.reference.rnn import RNNCache, RNNGrads, RNNParams, rnn_backward, rnn_forward
from gatedrnn.reference.slstm import SLSTMCache, SLSTMGrads, SLSTMParams, slstm_backward, slstm_forward

__all__ = [
    "LSTMParams", "LSTMCache", "LSTMGrads", "lstm_forward", "lstm_backward",
    "GRUParams", "GRUCache", "GRUGrads", "gru_forward", "gru_backward",
    "RNNParams", "RNNCache", "RNNGrads", "rnn_forward", "rnn_backward",
    "SLSTMParams", "SLSTMCache", "SLSTMGrads", "slstm_forward", "slstm_backward",
    "VARIANTS", "VariantParams", "VariantCache", "VariantGrads", "variant_forward", "variant_backward",
    "FGRParams", "FGRCache", "FGRGrads", "fgr_forward", "fgr_backward",
    "MinimalParams", "MinimalCache", "MinimalGrads", "mingru_forward", "mingru_backward",
    "minlstm_forward", "minlstm_backward",
    "LayerNormLSTMParams", "layernorm_lstm_forward", "layernorm_lstm_backward",
    "LayerNormGRUParams", "layernorm_gru_forward", "layernorm_gru_backward",
]
