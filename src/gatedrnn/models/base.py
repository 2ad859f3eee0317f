"""What every gatedrnn model keeps, so the trainer, checkpoints and the explain report need nothing
model-specific.

Shape symbols: B batch, T time steps, I input features, H_out the recurrent layer's output size,
D = 2 if bidirectional else 1.

The convention:
    model.rnn                  the gatedrnn recurrent layer (batch_first=True)
    model.rnn_input(x)         what is fed to the layer: x itself, or embeddings for token models
    model.readout(rnn_output)  (B, T, D*H_out) -> prediction
    model(x) == model.readout(model.rnn(model.rnn_input(x))[0])
    model.config               the constructor's arguments: type(model)(**model.config) rebuilds it
"""
from __future__ import annotations

from typing import Any, Union

from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gatedrnn.layers._checks import check_size
from gatedrnn.models.cells import build_rnn

Inputs = Union[Tensor, PackedSequence]


class SequenceModel(nn.Module):
    """A recurrent layer followed by a readout; subclasses define `readout` and may define `rnn_input`."""

    def __init__(self, *, cell: str, rnn_input_size: int, hidden_size: int, num_layers: int, dropout: float,
                 config: dict[str, Any], init: dict[str, Any] | None = None) -> None:
        super().__init__()
        check_size("hidden_size", hidden_size, minimum=1)
        check_size("num_layers", num_layers, minimum=1)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout should be in [0, 1), got {dropout}")
        self.config: dict[str, Any] = dict(config)
        # torch.nn applies dropout only between stacked layers; with one layer it would only warn.
        self.rnn = build_rnn(cell, rnn_input_size, hidden_size, num_layers=num_layers,
                             dropout=float(dropout) if num_layers > 1 else 0.0, init=init)

    @property
    def cell(self) -> str:
        return self.config["cell"]

    def rnn_input(self, x: Inputs) -> Inputs:
        """The recurrent layer's input for the model input `x` (identity unless overridden)."""
        return x

    def readout(self, rnn_output: Inputs) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Inputs) -> Tensor:
        output, _ = self.rnn(self.rnn_input(x))
        return self.readout(output)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())
