"""How far back the loss reaches: the norm of dL/dh_t (and dL/dc_t for the LSTM) for every step t.

Method: the layer is re-run by a probe loop built from `gatedrnn.engine.scan.make_step` (the same cell step
functions every backend is checked against) in which every step's new state gets a zero additive probe,
h_t <- h_t + p_t. The probes do not change the forward values, and dL/dp_t = dL/dh_t: the total derivative,
through the output at t and through every later step. Inter-layer dropout is not applied (eval-mode values).

Shape symbols: T time steps, B batch, H hidden_size, P size of h (proj_size or H).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gatedrnn.cells import LayerWeights
from gatedrnn.engine.scan import make_step
from gatedrnn.layers import RecurrentBase
from gatedrnn.layers._packing import packed_to_padded, padded_to_packed


class GradientFlow(NamedTuple):
    """What `gradient_flow` returns.

    cell: "lstm", "gru", "rnn_tanh" or "rnn_relu".
    h: h[layer][direction] is a (T,) float64 array: for each step t (index 0 is t = 1, the first step, in real
        time for both directions), the MEAN OVER THE BATCH OF THE PER-SAMPLE L2 NORM of dL/dh_t over units.
        Padded steps of packed input count as 0.
    c: the same for dL/dc_t (LSTM only), else None.
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


def _probed_scan(
    cell: str, x: Tensor, state0: tuple[Tensor, ...], weights: LayerWeights,
    batch_sizes: Optional[Sequence[int]], reverse: bool, probes: tuple[Tensor, ...],
) -> Tensor:
    """`scan_reference`'s loop with probes[k][t] added to state k after step t; returns y (T, B, P).

    x: (T, B, I); probes: (h probe (T, B, P),) or (h probe (T, B, P), c probe (T, B, H)).
    """
    T, B = x.shape[0], x.shape[1]
    step = make_step(cell, weights)
    x_proj = F.linear(x, weights.w_ih, weights.b_ih)  # (T, B, G*H)
    state = state0
    outputs: list[Optional[Tensor]] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        active = B if batch_sizes is None else int(batch_sizes[t])
        new_rows, _ = step(x_proj[t, :active], tuple(s[:active] for s in state))
        new_rows = tuple(s + p[t, :active] for s, p in zip(new_rows, probes))  # the probe: +0, a gradient tap
        state = tuple(torch.cat([n, s[active:]], dim=0) if active < B else n for n, s in zip(new_rows, state))
        y_t = new_rows[0]
        outputs[t] = y_t if active == B else torch.cat([y_t, y_t.new_zeros((B - active, y_t.shape[1]))])
    return torch.stack(outputs)  # (T, B, P)


def _norms(grad: Tensor) -> np.ndarray:
    """(T, B, F) -> (T,): mean over the batch of the per-sample L2 norm."""
    return grad.detach().double().norm(dim=2).mean(dim=1).cpu().numpy()


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
        model_or_layer: a gatedrnn LSTM/GRU/RNN layer, or a model with attributes `.rnn` (such a layer) and
            `.readout` (rnn output -> prediction), as in `gatedrnn.models`.
        input: what the layer's forward takes (batched, unbatched or packed).
        loss_fn: prediction -> scalar loss, where prediction = readout(output) (output itself without a readout).
            "A loss on the last step" is a readout that reads output[:, -1].
        readout: for a bare layer, the function from its output to the prediction; a model's own is used otherwise.
        hx: the initial state, as the layer's forward takes it.
    Returns:
        GradientFlow; the parameters' .grad are left untouched.
    """
    if isinstance(model_or_layer, RecurrentBase):
        layer = model_or_layer
    elif isinstance(getattr(model_or_layer, "rnn", None), RecurrentBase) and callable(
        getattr(model_or_layer, "readout", None)
    ):
        layer = model_or_layer.rnn
        readout = readout or model_or_layer.readout
    else:
        raise TypeError(
            "gradient_flow expects a gatedrnn LSTM/GRU/RNN layer, or a model with a gatedrnn layer as `.rnn` and "
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
    out_size = layer.proj_size or layer.hidden_size
    probe_sizes = (out_size, layer.hidden_size) if layer.mode == "lstm" else (out_size,)

    with torch.enable_grad():
        layer_input = x
        all_probes: list[list[tuple[Tensor, ...]]] = []
        for index in range(layer.num_layers):
            outputs, layer_probes = [], []
            for direction in range(layer.num_directions):
                k = index * layer.num_directions + direction
                probes = tuple(x.new_zeros(T, B, size, requires_grad=True) for size in probe_sizes)
                y = _probed_scan(
                    layer.mode, layer_input, tuple(s[k] for s in state0_all), layer.layer_weights(index, direction),
                    batch_sizes, direction == 1, probes,
                )
                outputs.append(y)
                layer_probes.append(probes)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (T, B, D*P)
            all_probes.append(layer_probes)
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
        flat = [p for layer_probes in all_probes for probes in layer_probes for p in probes]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    grads = [g if g is not None else p.new_zeros(p.shape) for g, p in zip(grads, flat)]

    per = len(probe_sizes)
    h_curves, c_curves, position = [], [], 0
    for layer_probes in all_probes:
        h_row, c_row = [], []
        for _ in layer_probes:
            h_row.append(_norms(grads[position]))
            if per == 2:
                c_row.append(_norms(grads[position + 1]))
            position += per
        h_curves.append(tuple(h_row))
        c_curves.append(tuple(c_row))
    return GradientFlow(
        layer.mode, tuple(h_curves), tuple(c_curves) if per == 2 else None, float(loss.detach())
    )
