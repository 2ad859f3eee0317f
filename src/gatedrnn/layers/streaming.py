"""Streaming: advance a recurrent layer by one time step, carrying its state between calls.

`step(module, x, state)` is what `LSTM.step`, `GRU.step` and `RNN.step` call. Feeding a sequence one step
at a time gives the same outputs and final state as one `forward` over the whole sequence.

Shapes (torch.nn's symbols): N batch, L num_layers, H_in input_size, H_cell hidden_size,
H_out proj_size or hidden_size.
    x:      (N, H_in), or (H_in,) unbatched
    state:  LSTM (h (L, N, H_out), c (L, N, H_cell)); GRU / RNN h (L, N, H_out); unbatched without N; None = zeros
    y:      (N, H_out), or (H_out,) unbatched (the last layer's new h)
Under no_grad (or when nothing requires grad) one fused C++ call runs every layer; otherwise the cell
step functions run and autograd differentiates them.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from gatedrnn import engine
from gatedrnn.cells import CELL_SPECS
from gatedrnn.engine import _build
from gatedrnn.engine.noise import draw_zoneout
from gatedrnn.layers import aten
from gatedrnn.layers._checks import (
    ShapeError, check_floating, check_step_input, refuse_bidirectional_step,
)
from gatedrnn.layers._weights import stream_weights

State = Union[Tensor, tuple[Tensor, Tensor]]


def step(module, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
    """One time step of `module` (an LSTM, GRU or RNN) on the general path, with the layer's checks and messages.
    Returns (y, new_state) in the layer's state format. The layers try `streamed` first."""
    refuse_bidirectional_step(module)
    if torch._C._is_tracing():  # torch.jit.trace records torch's ops only: forward over one time step
        return _step_as_forward(module, x, state)
    params = module._parameters  # direct dict reads: nn.Module.__getattr__ costs ~1 µs per weight
    weight = params["weight_ih_l0"]
    batched = check_step_input(module, x)
    x2 = x if batched else x.unsqueeze(0)  # (N, H_in)
    states = _ready_state(module, state, weight, x2.shape[0]) if batched else None
    if states is None:  # first step, unbatched, or anything to reject: the layer's checks and messages
        states = module._initial_state(state, x2.shape[0], batched, None, x2)  # each (L, N, ·)
    weights = [module.layer_weights(layer) for layer in range(module.num_layers)]
    dropout = module.dropout if module.training and module.num_layers > 1 else 0.0
    y, new_states = engine.step_layers(
        module.mode, x2, states, weights, fused=engine.runs_fused(x2), dropout=dropout,
        zoneout=_zoneout_weights(module, x2),
    )
    if not batched:
        y = y.squeeze(0)
        new_states = tuple(s.squeeze(1) for s in new_states)
    return y, (new_states if module.spec.has_cell_state else new_states[0])


def _stream_kernel(mode: str) -> tuple[bool, bool]:
    """(whether the cell `mode` has the streaming step kernel: fused, no operands of its own; whether its state
    has c), memoised per mode."""
    facts = _STREAM_KERNEL.get(mode)
    if facts is None:
        spec = CELL_SPECS[mode]
        streams = spec.fused and not spec.extra_params and spec.kernel_weights is None
        facts = _STREAM_KERNEL[mode] = (streams, spec.has_cell_state)
    return facts


_STREAM_KERNEL: dict[str, tuple[bool, bool]] = {}
_compiling = torch.compiler.is_compiling  # one lookup fewer each


def streamed(module, x: Tensor, state: Optional[State]) -> Optional[tuple[Tensor, State]]:
    """The streaming loop's own case in one C++ call (the engine's `module_step`), or None for anything else, which
    then takes `step`, the general path, with its checks and messages: under no_grad, eager, no dispatch mode or
    tracer, a cell with a step kernel and no per-step noise, and a state from a previous step (None, the first step,
    goes the general way). The caller checks that the layer reads its weights by name (no own `layer_weights`).
    At batch 1 the whole step costs a few µs, and each line of Python ~50 ns: so the C++ call reads the layer's
    settings itself, and declines grad mode, dispatch modes, the tracer, GATEDRNN_BACKEND=reference, dtypes and
    shapes; only an engine this process has loaded already is asked: the general path (the first step, and any
    step before the engine is loaded) loads it where the fused engine applies, so GATEDRNN_BACKEND=reference, a
    dispatch mode or the tracer never builds it here only for the call to decline."""
    if state is None or _compiling() or engine.forward_ad_active():  # a tangent: the general path's torch ops
        return None
    library = _build.loaded()
    if library is None:
        return None
    out = library.module_step(module, x, state, _stream_kernel)
    if out is NotImplemented:  # parameters other than the weights' names (a parametrized weight): read each by name
        return _streamed_by_name(module, x, state, library)
    return out


def _streamed_by_name(module, x: Tensor, state: State, library) -> Optional[tuple[Tensor, State]]:
    """`streamed` where the layer's registered parameters are not exactly its weights (its settings, input and
    state passed `module_step`'s checks): the weights read by name (`stream_weights`) for the engine's
    `stream_step`, which returns (y, new_state) in the layer's format, or None for a shape or dtype it does not
    take."""
    h, c = state if type(state) is tuple else (state, None)
    if x.dim() == 1:  # unbatched: (H_in,) and a state without N
        if h.dim() != 2 or (c is not None and c.dim() != 2):
            return None
        out = library.stream_step(module.mode, x.unsqueeze(0), h.unsqueeze(1),
                                  None if c is None else c.unsqueeze(1), *stream_weights(module))
        if out is None:
            return None
        y, new_state = out
        return y.squeeze(0), (new_state.squeeze(1) if c is None else tuple(s.squeeze(1) for s in new_state))
    return library.stream_step(module.mode, x, h, c, *stream_weights(module))


def _zoneout_weights(module, x: Tensor) -> Optional[list[Tensor]]:
    """Per layer, this step's zoneout weights (N, H_out [+ H_cell]), or None without zoneout. Refuses the
    masks that are drawn once per sequence (recurrent_dropout, weight_drop while training): a step does not
    know where a sequence starts."""
    if not module.training and module.zoneout == (0.0, 0.0):  # the streaming case: nothing to draw
        return None
    if module.training and (module.recurrent_dropout or module.weight_drop or module.candidate_dropout):
        raise ValueError(
            "step() cannot apply recurrent_dropout, weight_drop or candidate_dropout while training: their masks "
            "are drawn per forward call; train with forward() over whole sequences, or call module.eval()"
        )
    p_h, p_c = module.zoneout
    hidden = module.hidden_size if module.spec.has_cell_state else None
    out_size = module.proj_size or module.hidden_size
    draws = [draw_zoneout(1, x.shape[0], out_size, hidden, p_h, p_c, module.training, x)
             for _ in range(module.num_layers)]
    return None if draws[0] is None else [d[0] for d in draws]


def _step_as_forward(module, x: Tensor, state: Optional[State]) -> tuple[Tensor, State]:
    """step() through `aten.forward` on a sequence of one step: what torch.jit.trace can record."""
    weight = module._parameters["weight_ih_l0"]
    check_floating("x", x, weight.dtype, weight.device)
    if x.dim() not in (1, 2):
        raise ShapeError(f"step() takes one time step: x should be 2-D or 1-D, got a {x.dim()}-D tensor")
    time_dim = 1 if module.batch_first and x.dim() == 2 else 0
    output, new_state = aten.forward(module, x.unsqueeze(time_dim), state, any_dtype=False)
    return output.squeeze(time_dim), new_state


def _ready_state(module, state, weight: Tensor, batch: int) -> Optional[tuple[Tensor, ...]]:
    """The state as the engine takes it when it is already a valid batched state (the streaming loop feeding
    back what the previous step returned), else None. Only accepts: every rejection is left to
    `_initial_state`, whose full checks cost more than the fused step itself at small sizes."""
    sizes = [(module.num_layers, batch, module.proj_size or module.hidden_size)]  # h (L, N, H_out)
    if module.spec.has_cell_state:
        if type(state) is not tuple or len(state) != 2:
            return None
        sizes.append((module.num_layers, batch, module.hidden_size))  # c (L, N, H_cell)
        parts = state
    else:
        if not isinstance(state, Tensor):
            return None
        parts = (state,)
    dtype, device = weight.dtype, weight.device
    for part, size in zip(parts, sizes):
        if not (isinstance(part, Tensor) and part.dtype == dtype and part.device == device and part.shape == size):
            return None
    return parts
