"""Models that read a whole sequence and predict one thing: a regressor/forecaster and a classifier.

Shape symbols: B batch, T time steps, I input features, H hidden size, O outputs, C classes.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from gatedrnn.layers._checks import check_size
from gatedrnn.models.base import Inputs, SequenceModel


def last_steps(rnn_output: Union[Tensor, PackedSequence], lengths: Optional[Tensor] = None) -> Tensor:
    """The output at each sequence's last real step: (B, T, F) or packed -> (B, F).

    For a PackedSequence (or a padded batch with `lengths`) row b takes step lengths[b] - 1, which for a
    one-directional layer is the final hidden state of the last layer (h_n[-1]); for a padded tensor
    without lengths every row takes step T - 1.
    """
    if isinstance(rnn_output, PackedSequence):
        rnn_output, lengths = pad_packed_sequence(rnn_output, batch_first=True)  # (B, T, F), (B,)
    if rnn_output.dim() != 3:
        raise ValueError(f"rnn_output should be (B, T, F), got shape {tuple(rnn_output.shape)}")
    if lengths is None:
        return rnn_output[:, -1]  # (B, F)
    lengths = torch.as_tensor(lengths, device=rnn_output.device)
    if lengths.shape != (rnn_output.shape[0],) or int(lengths.min()) < 1 or int(lengths.max()) > rnn_output.shape[1]:
        raise ValueError(
            f"lengths should be {rnn_output.shape[0]} values in [1, {rnn_output.shape[1]}], got {lengths.tolist()}"
        )
    index = (lengths - 1).long().view(-1, 1, 1).expand(-1, 1, rnn_output.shape[2])  # (B, 1, F)
    return rnn_output.gather(1, index).squeeze(1)  # (B, F)


class _LinearReadout(SequenceModel):
    """A recurrent layer and a linear head on its output; `out_name` is the head's size in `config`."""

    def __init__(self, input_size: int, hidden_size: int, out_name: str, out_features: int, *, cell: str,
                 num_layers: int, dropout: float, min_out: int, init: dict | None = None) -> None:
        check_size("input_size", input_size, minimum=1)
        check_size(out_name, out_features, minimum=min_out)
        super().__init__(cell=cell, rnn_input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                         dropout=dropout, init=init,
                         config={"input_size": input_size, "hidden_size": hidden_size, out_name: out_features,
                                 "cell": cell, "num_layers": num_layers, "dropout": dropout,
                                 **({"init": dict(init)} if init else {})})
        self.head = nn.Linear(hidden_size, out_features)


class SequenceRegressor(_LinearReadout):
    """Sequence (B, T, I) -> real values (B, O), read from the last step's output by a linear layer.

    Used by the adding problem (O = 1) and by forecasting (the next value of a window).
    readout: (B, T, H) -> linear(rnn_output[:, -1]) of shape (B, O).
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int = 1, *, cell: str = "lstm",
                 num_layers: int = 1, dropout: float = 0.0, init: dict | None = None) -> None:
        super().__init__(input_size, hidden_size, "output_size", output_size, cell=cell, num_layers=num_layers,
                         dropout=dropout, min_out=1, init=init)

    def readout(self, rnn_output: Inputs) -> Tensor:
        return self.head(last_steps(rnn_output))  # (B, O)


class SequenceClassifier(_LinearReadout):
    """Sequence -> class logits (B, C), from the output at each sequence's last real step.

    Input: a (B, T, I) tensor (every row has length T) or a PackedSequence of variable-length rows.
    readout: a (B, T, H) tensor -> linear(rnn_output[:, -1]); a PackedSequence output (what the layer
    returns for packed input) -> linear of each row's last real step, which equals the final hidden state
    of the last layer, h_n[-1]. So padding never reaches the logits.
    """

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, *, cell: str = "lstm",
                 num_layers: int = 1, dropout: float = 0.0, init: dict | None = None) -> None:
        super().__init__(input_size, hidden_size, "num_classes", num_classes, cell=cell, num_layers=num_layers,
                         dropout=dropout, min_out=2, init=init)

    def readout(self, rnn_output: Inputs, lengths: Optional[Tensor] = None) -> Tensor:
        return self.head(last_steps(rnn_output, lengths))  # (B, C)


class SequenceTagger(_LinearReadout):
    """Sequence (B, T, I) -> a prediction at every step (B, T, C) (e.g. the copy task's recalled symbols).

    readout: (B, T, H) -> linear at every step, (B, T, C).
    """

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, *, cell: str = "lstm",
                 num_layers: int = 1, dropout: float = 0.0, init: dict | None = None) -> None:
        super().__init__(input_size, hidden_size, "num_classes", num_classes, cell=cell, num_layers=num_layers,
                         dropout=dropout, min_out=2, init=init)

    def readout(self, rnn_output: Tensor) -> Tensor:
        if not isinstance(rnn_output, Tensor) or rnn_output.dim() != 3:
            raise ValueError("SequenceTagger.readout expects a (B, T, H) tensor")
        return self.head(rnn_output)  # (B, T, C)


class FrameTagger(_LinearReadout):
    """Sequence -> independent logits per step for O outputs (multi-label: e.g. the 88 keys of a piano roll,
    each sounding or not), for a sigmoid per output and binary cross-entropy.

    readout: a (B, T, H) tensor -> linear at every step, (B, T, O); a PackedSequence output (what the layer
    returns for packed input) -> the logits of its real steps only, (N, O) with N the total length, in the
    packed order (time-major over the rows sorted by length, `PackedSequence.data`'s order). So padding
    never reaches the logits or a loss computed on them.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, *, cell: str = "lstm",
                 num_layers: int = 1, dropout: float = 0.0, init: dict | None = None) -> None:
        super().__init__(input_size, hidden_size, "output_size", output_size, cell=cell, num_layers=num_layers,
                         dropout=dropout, min_out=1, init=init)

    def readout(self, rnn_output: Inputs) -> Tensor:
        if isinstance(rnn_output, PackedSequence):
            return self.head(rnn_output.data)  # (N, O)
        if not isinstance(rnn_output, Tensor) or rnn_output.dim() != 3:
            raise ValueError("FrameTagger.readout expects a (B, T, H) tensor or a PackedSequence")
        return self.head(rnn_output)  # (B, T, O)
