"""How far back the loss reaches: the norm of dL/dh_t (and dL/dc_t for cells with a cell state: the LSTMs and
the sLSTM) for every step t.

Method: the layer is re-run by a tapped loop built from `gatedrnn.engine.scan.make_step` (the same cell step
functions every backend is checked against) that keeps each step's new state tensors h_t, c_t; autograd then
gives dL/dh_t and dL/dc_t with respect to those graph nodes: the TOTAL derivative, through every use of the
node (for h_t: the output at t and every later step; for c_t: h_t = o_t ⊙ tanh(c_t) and every later step).
A zero additive probe after the step (h_t + p_t) gives the same dL/dh_t, but for c_t it would miss the path
through h_t, so the graph nodes themselves are tapped. Eval-mode values: inter-layer dropout, recurrent dropout
and weight drop are not applied, and zoneout mixes as at eval (p ⊙ previous + (1 − p) ⊙ new; the tapped state
is the mixed one, which the next step and the output read).

Shape symbols: T time steps, B batch, H hidden_size, P size of h (proj_size or H).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gatedrnn.cells import CELL_SPECS, LayerWeights
from gatedrnn.engine.noise import draw_zoneout
from gatedrnn.engine.scan import make_step, zone_out
from gatedrnn.layers import SLSTM, MinimalRNNBase, RecurrentBase
from gatedrnn.layers._packing import packed_to_padded, padded_to_packed


class GradientFlow(NamedTuple):
    """What `gradient_flow` returns.

    cell: the layer's mode, a key of `gatedrnn.cells.CELL_SPECS` ("lstm", "gru", "rnn_tanh", "lstm_cifg", "slstm", ...).
    h: h[layer][direction] is a (T,) float64 array: for each step t (index 0 is t = 1, the first step, in real
        time for both directions), the MEAN OVER THE BATCH OF THE PER-SAMPLE L2 NORM of dL/dh_t over units.
        Padded steps of packed input count as 0.
    c: the same for dL/dc_t (cells with a cell state c: the LSTMs and the sLSTM), else None.
    loss: the loss value.
    """

    cell: str
    h: tuple[tuple[np.ndarray, ...], ...]
    c: Optional[tuple[tuple[np.ndarray, ...], ...]]
    loss: float

    def ratio(self, *, layer: int = -1, direction: int = 0) -> float:
        """||dL/dh_1|| / ||dL/dh_T||: how much of the last step's gradient reaches the first step."""
        curve = self.h[layer][direction]
        return float(curve[0] / curve[-1]) if curve[-1] > 0 else float("nan")


def _tapped_scan(
    cell: str, x: Tensor, state0: tuple[Tensor, ...], weights: LayerWeights,
    batch_sizes: Optional[Sequence[int]], reverse: bool, zoneout: Optional[Tensor] = None,
) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
    """`scan_reference`'s loop, keeping every step's new state.

    x: (T, B, I). zoneout: eval-time zoneout weights (T, B, P [+ H]) (`gatedrnn.engine.noise`) or None. Returns y (T, B, P) and taps: taps[t] = the new state tuple step t produced for its b_t active
    rows ((h_t (b_t, P),), (h_t, c_t (b_t, H)), or the sLSTM's (h_t, c_t, n_t, m_t)), as graph nodes.
    """
    T, B = x.shape[0], x.shape[1]
    step = make_step(cell, weights)
    x_proj = F.linear(x, weights.w_ih, weights.b_ih)  # (T, B, G*H)
    state = state0
    outputs: list[Optional[Tensor]] = [None] * T
    taps: list = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        active = B if batch_sizes is None else int(batch_sizes[t])
        old_rows = tuple(s[:active] for s in state)
        new_rows, _ = step(x_proj[t, :active], old_rows)
        if zoneout is not None:
            new_rows = zone_out(old_rows, new_rows, zoneout[t, :active])
        taps[t] = new_rows
        state = tuple(torch.cat([n, s[active:]], dim=0) if active < B else n for n, s in zip(new_rows, state))
        y_t = new_rows[0]
        outputs[t] = y_t if active == B else torch.cat([y_t, y_t.new_zeros((B - active, y_t.shape[1]))])
    return torch.stack(outputs), taps  # (T, B, P)


def _eval_zoneout(layer: nn.Module, x: Tensor) -> Optional[Tensor]:
    """The layer's zoneout weights at eval (T, B, P [+ H]) for its input x (T, B, ·), or None without zoneout."""
    p_h, p_c = getattr(layer, "zoneout", (0.0, 0.0))
    out_size = getattr(layer, "proj_size", 0) or layer.hidden_size
    hidden = layer.hidden_size if CELL_SPECS[layer.mode].has_cell_state else None
    return draw_zoneout(x.shape[0], x.shape[1], out_size, hidden, p_h, p_c, False, x)


def _norms(grads: Sequence[Tensor], batch: int) -> np.ndarray:
    """Per step (active, F) gradients -> (T,): the mean over all `batch` rows of the per-sample L2 norm
    (inactive rows count 0)."""
    sums = [g.detach().double().norm(dim=1).sum() for g in grads]
    return (torch.stack(sums) / batch).cpu().numpy()


def gradient_flow(
    model_or_layer: nn.Module,
    input: Union[Tensor, PackedSequence],
    loss_fn: Callable[[Tensor], Tensor],
    *,
    readout: Optional[Callable[[Tensor], Tensor]] = None,
    hx=None,
) -> GradientFlow:
    """dL/dh_t norms for every layer, direction and step.

    Args:
        model_or_layer: a gatedrnn LSTM/GRU/RNN/SLSTM/MinGRU/MinLSTM layer, or a model with attributes `.rnn` (such a layer),
            `.readout` (rnn output -> prediction) and optionally `.rnn_input` (model input -> layer input), as
            in `gatedrnn.models`.
        input: the model's input, or what the layer's forward takes (batched, unbatched or packed).
        loss_fn: prediction -> scalar loss, where prediction = readout(output) (output itself without a readout).
            "A loss on the last step" is a readout that reads output[:, -1].
        readout: for a bare layer, the function from its output to the prediction; a model's own is used otherwise.
        hx: the initial state, as the layer's forward takes it.
    Returns:
        GradientFlow; the parameters' .grad are left untouched.
    """
    layers = (RecurrentBase, SLSTM, MinimalRNNBase)
    if isinstance(model_or_layer, layers):
        layer = model_or_layer
    elif isinstance(getattr(model_or_layer, "rnn", None), layers) and callable(
        getattr(model_or_layer, "readout", None)
    ):
        layer = model_or_layer.rnn
        readout = readout or model_or_layer.readout
        if callable(getattr(model_or_layer, "rnn_input", None)):
            input = model_or_layer.rnn_input(input)  # e.g. embeddings for token models
    else:
        raise TypeError(
            "gradient_flow expects a gatedrnn LSTM/GRU/RNN/SLSTM/MinGRU/MinLSTM layer, or a model with such a layer as `.rnn` and "
            f"a `.readout` method; got {type(model_or_layer).__name__}"
        )
    with torch.no_grad():
        layer._run(input, hx, trace=False)  # validates input and hx with the layer's own messages

    packed = isinstance(input, PackedSequence)
    if packed:
        x, batch_sizes = packed_to_padded(input.data, input.batch_sizes)  # (T, B, I)
        sorted_indices, batched = input.sorted_indices, True
    else:
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and layer.batch_first:
            x = x.transpose(0, 1)  # (T, B, I)
        batch_sizes, sorted_indices = None, None
    T, B = x.shape[0], x.shape[1]
    state0_all = layer._initial_state(hx, B, batched, sorted_indices, x)  # each (D*L, B, ·)
    if isinstance(state0_all, Tensor):  # MinGRU/MinLSTM: h_0 alone, (D*L, B, H)
        state0_all = (state0_all,)
    # the engine's form of one layer's parameters (the sLSTM's and MinGRU/MinLSTM's own `layer_weights` are
    # their scans')
    weights_of = layer.layer_weights if isinstance(layer, RecurrentBase) else layer.cell_weights

    with torch.enable_grad():
        layer_input = x
        all_taps: list[list[list]] = []  # [layer][direction] -> taps
        for index in range(layer.num_layers):
            outputs, layer_taps = [], []
            for direction in range(layer.num_directions):
                k = index * layer.num_directions + direction
                y, taps = _tapped_scan(
                    layer.mode, layer_input, tuple(s[k] for s in state0_all), weights_of(index, direction),
                    batch_sizes, direction == 1, _eval_zoneout(layer, layer_input),
                )
                outputs.append(y)
                layer_taps.append(taps)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (T, B, D*P)
            all_taps.append(layer_taps)
        if packed:
            output = PackedSequence(
                padded_to_packed(layer_input, input.batch_sizes), input.batch_sizes, input.sorted_indices,
                input.unsorted_indices,
            )
        elif not batched:
            output = layer_input.squeeze(1)
        else:
            output = layer_input.transpose(0, 1) if layer.batch_first else layer_input
        loss = loss_fn(readout(output) if readout is not None else output)
        if not (isinstance(loss, Tensor) and loss.numel() == 1):
            raise ValueError(f"loss_fn should return a scalar tensor, got {type(loss).__name__} "
                             f"{tuple(getattr(loss, 'shape', ()))}")
        nodes = [node for layer_taps in all_taps for taps in layer_taps
                 for states in taps for node in states]
        grads = torch.autograd.grad(loss, nodes, allow_unused=True)
    grads = [g if g is not None else n.new_zeros(n.shape) for g, n in zip(grads, nodes)]

    per = len(state0_all)  # states per step: 1 (h), 2 (h, c), 4 (the sLSTM's h, c, n, m)
    names = CELL_SPECS[layer.mode].state_names
    c_index = names.index("c") if "c" in names else None
    h_curves, c_curves, position = [], [], 0
    for layer_taps in all_taps:
        h_row, c_row = [], []
        for taps in layer_taps:
            step_grads = [grads[position + t * per: position + (t + 1) * per] for t in range(T)]
            h_row.append(_norms([g[0] for g in step_grads], B))
            if c_index is not None:
                c_row.append(_norms([g[c_index] for g in step_grads], B))
            position += T * per
        h_curves.append(tuple(h_row))
        c_curves.append(tuple(c_row))
    return GradientFlow(
        layer.mode, tuple(h_curves), tuple(c_curves) if c_index is not None else None, float(loss.detach())
    )
