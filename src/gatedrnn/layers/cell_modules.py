"""`LSTMCell`, `GRUCell`, `RNNCell`: torch.nn's one-step modules, computed by the step functions of `gatedrnn.cells`.

Shapes: input (N, H_in) or (H_in,) unbatched; h (N, H) or (H,); c (N, H) (LSTM).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gatedrnn.cells import CELL_SPECS, LSTMState, gru_step, lstm_step, rnn_step
from gatedrnn.layers import aten
from gatedrnn.layers._checks import ArgumentTypeError, ShapeError, check_floating, check_shape, check_size


class CellBase(nn.Module):
    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.mode = mode
        self.input_size = check_size("input_size", input_size, minimum=0)
        self.hidden_size = check_size("hidden_size", hidden_size, minimum=1)
        self.bias = bool(bias)
        factory = {"device": device, "dtype": dtype}
        rows = CELL_SPECS[mode].gate_count * self.hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, self.input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(rows, self.hidden_size, **factory))
        if self.bias:
            self.bias_ih = nn.Parameter(torch.empty(rows, **factory))
            self.bias_hh = nn.Parameter(torch.empty(rows, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s

    def __prepare_scriptable__(self) -> nn.Module:
        """torch.jit.script scripts the torch.nn cell holding these same parameters (`layers.convert.to_torch`)."""
        from gatedrnn.layers.convert import to_torch

        return to_torch(self)

    def _prepare(self, input: Tensor, states: Optional[tuple], names: tuple[str, ...]):
        """Validate; return (x (N, H_in), states as (N, H) tensors, batched flag). Under autocast any floating
        dtype is accepted: autocast casts it, as for torch.nn's cells."""
        any_dtype = torch.is_autocast_enabled(self.weight_ih.device.type)
        check_floating("input", input, self.weight_ih.dtype, self.weight_ih.device, any_dtype=any_dtype)
        if input.dim() not in (1, 2):
            raise ShapeError(
                f"{type(self).__name__}: expected input to be 1-D or 2-D, got a {input.dim()}-D tensor "
                f"of shape {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ShapeError(
                f"input.size(-1) must be equal to input_size: expected {self.input_size}, got {input.shape[-1]}"
            )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if states is None:
            return x, tuple(x.new_zeros(x.shape[0], self.hidden_size) for _ in names), batched
        prepared = []
        for name, state in zip(names, states):
            check_floating(name, state, self.weight_ih.dtype, self.weight_ih.device, any_dtype=any_dtype)
            expected = (x.shape[0], self.hidden_size) if batched else (self.hidden_size,)
            check_shape(name, state, expected)
            prepared.append(state if batched else state.unsqueeze(0))
        return x, tuple(prepared), batched


class LSTMCell(CellBase):
    """torch.nn.LSTMCell: forward(input, (h, c)=None) -> (h', c'). Math: `gatedrnn.cells.lstm.lstm_step`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__("lstm", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        if hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            got = f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
            raise ArgumentTypeError(f"LSTMCell hx should be a tuple (h, c), got {got}")
        x, (h, c), batched = self._prepare(input, hx, ("h", "c"))
        if torch.is_autocast_enabled(x.device.type):  # torch.nn's op, which autocast casts
            h_next, c_next = aten.cell_forward(self, x, (h, c))
            return (h_next, c_next) if batched else (h_next.squeeze(0), c_next.squeeze(0))
        (h_next, c_next), _ = lstm_step(F.linear(x, self.weight_ih, self.bias_ih), LSTMState(h, c),
                                        self.weight_hh, self.bias_hh)
        return (h_next, c_next) if batched else (h_next.squeeze(0), c_next.squeeze(0))


class GRUCell(CellBase):
    """torch.nn.GRUCell: forward(input, h=None) -> h'. Math: `gatedrnn.cells.gru.gru_step`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__("gru", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        x, (h,), batched = self._prepare(input, None if hx is None else (hx,), ("h",))
        if torch.is_autocast_enabled(x.device.type):  # torch.nn's op, which autocast casts
            h_next = aten.cell_forward(self, x, (h,))
            return h_next if batched else h_next.squeeze(0)
        h_next, _ = gru_step(F.linear(x, self.weight_ih, self.bias_ih), h, self.weight_hh, self.bias_hh)
        return h_next if batched else h_next.squeeze(0)


class RNNCell(CellBase):
    """torch.nn.RNNCell (tanh or relu): forward(input, h=None) -> h'. Math: `gatedrnn.cells.rnn.rnn_step`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity should be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        x, (h,), batched = self._prepare(input, None if hx is None else (hx,), ("h",))
        if torch.is_autocast_enabled(x.device.type):  # torch.nn's op, which autocast casts
            h_next = aten.cell_forward(self, x, (h,))
            return h_next if batched else h_next.squeeze(0)
        h_next, _ = rnn_step(F.linear(x, self.weight_ih, self.bias_ih), h, self.weight_hh, self.bias_hh,
                             self.nonlinearity)
        return h_next if batched else h_next.squeeze(0)
