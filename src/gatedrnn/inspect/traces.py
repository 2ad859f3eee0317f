"""Every step's gates and states of a gatedrnn recurrent layer, as data, in the caller's batch order and layout.

Shape symbols (as in `gatedrnn.layers.recurrent`): T time steps, B batch, H hidden_size,
P = proj_size if the LSTM has a projection else H, D = 2 if bidirectional else 1.

The traces come from whatever path `gatedrnn.engine.run_layer` takes (fused kernel or reference scan);
the gate symbols are those of the step functions in `gatedrnn.cells`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from gatedrnn.layers import SLSTM, MinimalRNNBase, RecurrentBase


class LayerTraces(NamedTuple):
    """What `trace` returns.

    cell: the layer's mode: "lstm", "gru", "rnn_tanh", "rnn_relu", "slstm", "mingru" or "minlstm".
    layers: layers[layer][direction] is the cell's trace named tuple (`gatedrnn.cells.LSTMTrace` (i, f, g, o, c, h),
        `GRUTrace` (r, z, n, h), `RNNTrace` (h,), `SLSTMTrace` (i, f, z, o, m, n, c, h), `MinGRUTrace`
        (z, h_tilde, h) or `MinLSTMTrace` (f, i, h_tilde, h)) with every field laid out like the layer's output:
            (B, T, ·) if the layer is batch_first, else (T, B, ·); (T, ·) for unbatched input.
        The last dimension is H for gates and c, P for h. Direction 1 (reverse) is indexed by real time too.
        Packed input gives padded tensors (zeros after each sequence's end) in the original batch order.
    output, hidden: exactly what the layer's forward returns for the same call.
    lengths: (B,) int64 sequence lengths in the original batch order for packed input, else None.
    batch_first: whether the trace tensors are (B, T, ·).
    """

    cell: str
    layers: tuple[tuple[tuple, ...], ...]
    output: Union[Tensor, PackedSequence]
    hidden: Union[Tensor, tuple[Tensor, Tensor]]
    lengths: Optional[Tensor]
    batch_first: bool

    def get(self, layer: int = -1, direction: int = 0) -> tuple:
        """The trace named tuple of one layer (default the last, the one a readout sees) and direction."""
        return self.layers[layer][direction]

    def series(self, name: str, *, sample: int = 0, layer: int = -1, direction: int = 0) -> Tensor:
        """One field ("f", "c", "h", …) of one sample over its real steps: (T_b, H) or (T_b, P), T_b its length."""
        chosen = self.get(layer, direction)
        if name not in chosen._fields:
            raise ValueError(f"a {self.cell} trace has fields {chosen._fields}, got {name!r}")
        field = getattr(chosen, name)
        if field.dim() == 2:  # unbatched (T, ·)
            if sample != 0:
                raise ValueError(f"unbatched input has one sample, got sample={sample}")
            return field
        batch = field.shape[0] if self.batch_first else field.shape[1]
        if not -batch <= sample < batch:
            raise ValueError(f"sample should be in [0, {batch}), got {sample}")
        rows = field[sample] if self.batch_first else field[:, sample]  # (T, ·)
        return rows if self.lengths is None else rows[: int(self.lengths[sample])]

    def steps(self, name: str, *, layer: int = -1, direction: int = 0) -> Tensor:
        """Every sample's real steps of one field, flattened: (number of real steps, ·)."""
        field = getattr(self.get(layer, direction), name)
        if field.dim() == 2:
            return field
        field = field if self.batch_first else field.transpose(0, 1)  # (B, T, ·)
        if self.lengths is None:
            return field.reshape(-1, field.shape[-1])
        valid = torch.arange(field.shape[1]).unsqueeze(0) < self.lengths.unsqueeze(1)  # (B, T)
        return field[valid]


def _to_user_layout(trace: tuple, *, unbatched: bool, batch_first: bool, unsorted: Optional[Tensor]) -> tuple:
    """Each (T, B_sorted, ·) field -> the caller's layout and batch order."""
    fields = []
    for field in trace:
        if unsorted is not None:
            field = field.index_select(1, unsorted)  # (T, B, ·) in the caller's order
        if unbatched:
            field = field.squeeze(1)  # (T, ·)
        elif batch_first:
            field = field.transpose(0, 1)  # (B, T, ·)
        fields.append(field)
    return type(trace)(*fields)


def trace(layer: RecurrentBase, input: Union[Tensor, PackedSequence], hx=None) -> LayerTraces:
    """Run `layer` on `input` (any form its forward takes) and return every step of every layer and direction.

    Only a trace request differs from `layer(input, hx)`: output and hidden are the same, with their gradients.
    The trace tensors of the fused path are read-outs of the kernel's buffers and carry no gradient; to
    differentiate through a gate, run with GATEDRNN_BACKEND=reference (the reference scan's traces are part of
    the autograd graph). Wrap the call in `torch.no_grad()` to only look.
    """
    if not isinstance(layer, (RecurrentBase, SLSTM, MinimalRNNBase)):  # SLSTM, MinGRU/MinLSTM: own `_run`
        raise TypeError(
            f"trace expects a gatedrnn LSTM, GRU or RNN layer (or SLSTM, MinGRU, MinLSTM), got {type(layer).__name__}; "
            "for a model with an `.rnn` attribute pass model.rnn"
        )
    output, hidden, raw = layer._run(input, hx, trace=True)
    packed = isinstance(input, PackedSequence)
    unbatched = not packed and input.dim() == 2
    unsorted = input.unsorted_indices if packed else None
    lengths = None
    if packed:
        sizes = input.batch_sizes  # (T,) rows active per step, sorted order
        sorted_lengths = (sizes.unsqueeze(1) > torch.arange(int(sizes[0])).unsqueeze(0)).sum(0)  # (B,)
        lengths = sorted_lengths if unsorted is None else sorted_lengths.index_select(0, unsorted.cpu())
    layers = tuple(
        tuple(
            _to_user_layout(direction_trace, unbatched=unbatched, batch_first=layer.batch_first, unsorted=unsorted)
            for direction_trace in layer_traces
        )
        for layer_traces in raw
    )
    return LayerTraces(layer.mode, layers, output, hidden, lengths, layer.batch_first)
