"""One time step through a stack of layers (streaming): the fused single-step kernel when no gradient is
needed, else the cell step functions of `gatedrnn.cells`, which autograd differentiates.

Shapes: L layers, B batch, I input, H hidden, P size of h (proj_size or H).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gatedrnn.cells import LayerWeights, cell_spec
from gatedrnn.engine import _build
from gatedrnn.engine.fused import _needs_grad
from gatedrnn.engine.ops import STEP
from gatedrnn.engine.scan import make_step, zone_out


def step_layers(
    cell: str,
    x: Tensor,
    state: tuple[Tensor, ...],
    weights: Sequence[LayerWeights],
    *,
    fused: bool,
    dropout: float = 0.0,
    zoneout: Optional[Sequence[Tensor]] = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Advance every layer by one step.

    Args:
        cell: a key of `gatedrnn.cells.CELL_SPECS`.
        x: (B, I). state: (h (L, B, P),) or (h (L, B, P), c (L, B, H)). weights: one LayerWeights per layer.
        fused: the caller's dispatch decision (`engine.run_layer`'s rule); the fused kernel is still
            skipped when a gradient is needed or dropout applies, because it has no backward.
        dropout: probability applied to each layer's output except the last (training only).
        zoneout: per layer, this step's zoneout weights (B, P [+ H]) (`gatedrnn.engine.noise`), or None.
    Returns:
        (y (B, P), new state tuple in the same layout).
    """
    flat = [t for layer in weights for t in layer[:5]]  # torch.nn's five slots per layer (extra: Python path)
    # under no_grad (the streaming case) skip building the tensor list that _needs_grad scans
    # the single-step kernel takes neither extra parameters nor zoneout: those step on the cell functions
    # (nor a state of several blocks with a weight transform: the sLSTM)
    spec = cell_spec(cell)
    fused = fused and zoneout is None and not spec.extra_params and spec.kernel_weights is None
    if fused and not dropout and not (torch.is_grad_enabled() and _needs_grad([x, *state, *flat])):
        has_c = len(state) == 2
        if torch.compiler.is_compiling():
            y, h, c = STEP(cell, x, state[0], state[1] if has_c else None, flat)
        else:  # no gradient: below the operator's autograd kernel (see engine.fused)
            with torch._C._AutoDispatchBelowAutograd():
                y, h, c = STEP(cell, x, state[0], state[1] if has_c else None, flat)
        return y, ((h, c) if has_c else (h,))
    # On CUDA a torch.nn cell steps on torch's fused cell op (two GEMMs and one pointwise kernel, as
    # nn.LSTMCell), where the step function would launch a kernel per operation
    torch_cell = (not x.is_cpu and spec.torch_mode and not spec.extra_params and spec.kernel_weights is None
                  and zoneout is None and weights[0].w_hr is None and _build.requested_backend() == "auto")
    layer_input = x
    new_states: list[tuple[Tensor, ...]] = []
    for k, layer in enumerate(weights):
        old_state = tuple(s[k] for s in state)
        if torch_cell:
            new_state = torch_cell_step(cell, layer_input, old_state, layer)
        else:
            x_proj = F.linear(layer_input, layer.w_ih, layer.b_ih)  # (B, G*H)
            new_state, _ = make_step(cell, layer)(x_proj, old_state)
        if zoneout is not None:
            new_state = zone_out(old_state, new_state, zoneout[k])
        new_states.append(new_state)
        layer_input = new_state[0]
        if dropout and k < len(weights) - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    stacked = tuple(torch.stack([s[j] for s in new_states]) for j in range(len(state)))  # (L, B, ·)
    return new_states[-1][0], stacked


def torch_cell_op(cell: str):
    """torch's one-step op for a torch.nn cell: torch._VF.lstm_cell, gru_cell, rnn_tanh_cell or rnn_relu_cell."""
    return getattr(torch._VF, cell_spec(cell).torch_mode.lower() + "_cell")


def torch_cell_step(cell: str, x: Tensor, state: tuple[Tensor, ...], weights: LayerWeights) -> tuple[Tensor, ...]:
    """One step of a torch.nn cell (no projection) on torch's op: x (B, I), state ((B, H),) or ((B, H), (B, H))
    -> the new state in the same layout; the same equations as the cell's step function."""
    op = torch_cell_op(cell)
    if len(state) == 2:
        return tuple(op(x, state, weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh))
    return (op(x, state[0], weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh),)
