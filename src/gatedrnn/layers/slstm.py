r"""`SLSTM`: the sLSTM of xLSTM (Beck et al. 2024, arXiv:2405.04517) as a layer with gatedrnn.LSTM's interface:
stacking, bidirectional, batch_first, unbatched input, PackedSequence, hx, streaming `.step`, traces.

The equations are in `gatedrnn.cells.slstm.slstm_step`. On CPU float32/float64 each layer and direction runs on
the fused engine (`gatedrnn.engine.run_layer`, the kernel `SLSTMCell` in engine/csrc/cells.h, hand-written BPTT
with the true gradient through m); otherwise (another device or dtype, GATEDRNN_BACKEND=reference,
`detach_stabilizer=True`) on the time loop `gatedrnn.layers._slstm_scan` (torch ops, autograd).

Shape symbols (torch.nn's): N batch, L sequence length, D = 2 if bidirectional else 1, H_in input_size,
H hidden_size, K num_heads, H_head = H / K.

    input:  (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a PackedSequence
    hx:     (h_0, c_0, n_0, m_0), each (D * num_layers, N, H), or (D * num_layers, H) unbatched; None = zeros
    output: like input with H_in replaced by D * H (a PackedSequence for packed input)
    hidden: (h_n, c_n, n_n, m_n) in hx's format

Parameters per layer k and direction (suffix ``_l{k}`` or ``_l{k}_reverse``):
    weight_ih: (4H, H_in, or D*H above layer 0)  W, gate blocks i, f, z, o (the official code's order)
    weight_hh: (K, 4*H_head, H_head)              the block-diagonal R, one torch.nn-style (4 H_head, H_head)
                                                  matrix per head (layout in `gatedrnn.cells.slstm`)
    bias:      (4H,)                              b (one bias, as in the paper), only with bias=True

Initialisation (`reset_parameters`): weight_ih and weight_hh ~ U(-1/sqrt(H), 1/sqrt(H)) as torch.nn (the
official cell's "standard" recurrent init; its default is zeros, and its input weights live in another
module); bias: the official "powerlaw_blockdependent" init of a single block: b_i = b_z = b_o = 0 and,
for unit d of every head, b_f = 5 - 12 (d / (H_head - 1))^0.3 (0 for H_head = 1, giving 5), i.e. forget
gates from σ(5) ≈ 0.993 to σ(-7) ≈ 0.001. With forget_gate="exp", b_f = logsigmoid(that), so that the
initial f = exp(b_f) is the same.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gatedrnn.cells import CELL_SPECS, CellSpec, LayerWeights
from gatedrnn.cells.slstm import FORGET_GATES, SLSTMState, slstm_step
from gatedrnn import engine
from gatedrnn.layers import aten
from gatedrnn.layers._checks import (
    ArgumentTypeError, ShapeError, check_dropout, check_floating, check_sequence_input, check_shape,
    check_size, check_step_input, refuse_bidirectional_step,
    warn_dropout_without_stacking,
)
from gatedrnn.layers._packing import check_indices, packed_to_padded, padded_to_packed
from gatedrnn.layers._slstm_scan import SLSTMWeights, scan_slstm

STATE_NAMES = ("h_0", "c_0", "n_0", "m_0")


class SLSTM(nn.Module):
    """sLSTM layer (module docstring); returns output, (h_n, c_n, n_n, m_n).

    forget_gate (keyword-only): "sigmoid" (default, as NX-AI/xlstm's sLSTM cell: log f = logsigmoid(f̃))
    or "exp" (f = exp(f̃), the paper's other choice).
    """

    @property
    def mode(self) -> str:
        """The cell's key in `gatedrnn.cells.CELL_SPECS`: "slstm", or "slstm_exp" with forget_gate="exp"."""
        return "slstm" if self.forget_gate == "sigmoid" else f"slstm_{self.forget_gate}"

    @property
    def spec(self) -> CellSpec:
        """The cell's entry in `gatedrnn.cells.CELL_SPECS` (its math and facts)."""
        return CELL_SPECS[self.mode]

    def __init__(self, input_size: int, hidden_size: int, num_heads: int = 1, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *, forget_gate: str = "sigmoid") -> None:
        super().__init__()
        self.input_size = check_size("input_size", input_size, minimum=1)
        self.hidden_size = check_size("hidden_size", hidden_size, minimum=1)
        self.num_heads = check_size("num_heads", num_heads, minimum=1)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads should divide hidden_size (the heads split the hidden units evenly): "
                f"got hidden_size={self.hidden_size}, num_heads={self.num_heads}"
            )
        self.num_layers = check_size("num_layers", num_layers, minimum=1)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = check_dropout(dropout)
        self.bidirectional = bool(bidirectional)
        if forget_gate not in FORGET_GATES:
            raise ValueError(f"forget_gate should be one of {FORGET_GATES}, got {forget_gate!r}")
        self.forget_gate = forget_gate
        warn_dropout_without_stacking(self.dropout, self.num_layers)
        factory = {"device": device, "dtype": dtype}
        H, K = self.hidden_size, self.num_heads
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                layer_in = self.input_size if layer == 0 else H * self.num_directions
                suffix = self._suffix(layer, direction)
                shapes = {f"weight_ih{suffix}": (4 * H, layer_in), f"weight_hh{suffix}": (K, 4 * (H // K), H // K)}
                if self.bias:
                    shapes[f"bias{suffix}"] = (4 * H,)
                for name, shape in shapes.items():
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def forget_bias_init(self) -> Tensor:
        """(H,) the initial b_f (module docstring): per head 5 - 12 (d / (H_head - 1))^0.3."""
        D = self.head_size
        ratio = torch.arange(D, dtype=torch.float64) / max(D - 1, 1)
        b_f = (5.0 - 12.0 * ratio**0.3).repeat(self.num_heads)  # (H,)
        return F.logsigmoid(b_f) if self.forget_gate == "exp" else b_f

    def reset_parameters(self) -> None:
        """Weights ~ U(-1/sqrt(H), 1/sqrt(H)); bias zeros but the forget block (module docstring)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        H = self.hidden_size
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name.startswith("bias"):
                    parameter.zero_()
                    parameter[H : 2 * H] = self.forget_bias_init().to(parameter.dtype)
                else:
                    nn.init.uniform_(parameter, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_heads != 1:
            s += f", num_heads={self.num_heads}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                              ("forget_gate", "sigmoid")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    def layer_weights(self, layer: int, direction: int = 0) -> SLSTMWeights:
        """The parameters of one layer and direction, as the scan takes them."""
        suffix = self._suffix(layer, direction)
        return SLSTMWeights(getattr(self, f"weight_ih{suffix}"), getattr(self, f"weight_hh{suffix}"),
                            getattr(self, f"bias{suffix}", None))

    def cell_weights(self, layer: int, direction: int = 0) -> LayerWeights:
        """The same parameters as the engine takes them (`gatedrnn.cells.table`'s sLSTM entry): w_ih, the
        per-head R as w_hh, the one bias as b_ih, no b_hh; `engine.scan.scan_reference` runs on them."""
        weights = self.layer_weights(layer, direction)
        return LayerWeights(weights.w_ih, weights.r_blocks, weights.b, None)

    # ----- forward -----
    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[tuple[Tensor, ...]] = None):
        aten.refuse_tracers("SLSTM")
        output, hidden, _ = self._run(input, hx, trace=False)
        return output, hidden

    def _run(self, input: Union[Tensor, PackedSequence], hx, trace: bool, *, detach_stabilizer: bool = False):
        """Returns (output, hidden, traces); traces[layer][direction] is an SLSTMTrace of (T, B, H) tensors in
        the sorted batch order (or None). What `gatedrnn.inspect.trace` calls."""
        packed = isinstance(input, PackedSequence)
        if packed:
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            self._check_tensor("input", input.data)
            if input.data.dim() != 2 or input.data.shape[-1] != self.input_size:
                raise ShapeError(f"packed input data should have shape (sum of lengths, {self.input_size}), "
                                 f"got {tuple(input.data.shape)}")
            x, batch_sizes = packed_to_padded(input.data, input.batch_sizes)  # (T, B, I)
            check_indices(sorted_indices, unsorted_indices, x.shape[1])
            batched = True
        else:
            batched = self._check_input(input)
            x = input if batched else input.unsqueeze(1)  # (T, B, I) or (B, T, I)
            if batched and self.batch_first:
                x = x.transpose(0, 1)  # (T, B, I)
            batch_sizes, sorted_indices, unsorted_indices = None, None, None

        hidden_in = self._initial_state(hx, x.shape[1], batched, sorted_indices, x)  # 4 x (D*L, B, H)
        # the fused engines compute the true gradient through m; holding m constant needs the Python loop
        fused = (engine.runs_fused(x) or engine.runs_triton(self.mode, x)) and not detach_stabilizer
        layer_input = x
        finals: list[SLSTMState] = []
        traces: list[list] = []
        for layer in range(self.num_layers):
            outputs, layer_traces = [], []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                state0 = SLSTMState(*(s[k] for s in hidden_in))
                if fused:
                    result = engine.run_layer(self.mode, layer_input, tuple(state0),
                                              self.cell_weights(layer, direction), batch_sizes,
                                              reverse=direction == 1, trace=trace)
                else:
                    result = scan_slstm(
                        layer_input, state0, self.layer_weights(layer, direction), forget_gate=self.forget_gate,
                        batch_sizes=batch_sizes, reverse=direction == 1, trace=trace,
                        detach_stabilizer=detach_stabilizer,
                    )
                outputs.append(result.y)
                finals.append(SLSTMState(*result.state))
                layer_traces.append(result.trace)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (T, B, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
            traces.append(layer_traces)

        hidden = tuple(torch.stack([f[j] for f in finals]) for j in range(4))  # 4 x (D*L, B, H)
        if unsorted_indices is not None:
            hidden = tuple(s.index_select(1, unsorted_indices) for s in hidden)
        if packed:
            output = PackedSequence(padded_to_packed(layer_input, input.batch_sizes), input.batch_sizes,
                                    sorted_indices, unsorted_indices)
        elif not batched:
            output = layer_input.squeeze(1)  # (T, D*H)
            hidden = tuple(s.squeeze(1) for s in hidden)
        else:
            output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        return output, hidden, traces

    def step(self, x: Tensor, state: Optional[tuple[Tensor, ...]] = None):
        """One time step for streaming: x (N, H_in) or (H_in,), state in forward's hidden format (None =
        zeros). Returns (y (N, H) or (H,), new state). Stepping through a sequence equals one forward."""
        refuse_bidirectional_step(self)
        batched = check_step_input(self, x)
        layer_input = x if batched else x.unsqueeze(0)  # (N, H_in)
        states = self._initial_state(state, layer_input.shape[0], batched, None, layer_input)  # 4 x (L, N, H)
        new_states = []
        for layer in range(self.num_layers):
            weights = self.layer_weights(layer)
            new_state, _ = slstm_step(F.linear(layer_input, weights.w_ih), SLSTMState(*(s[layer] for s in states)),
                                      weights.r_blocks, weights.b, forget_gate=self.forget_gate)
            new_states.append(new_state)
            layer_input = new_state.h
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        hidden = tuple(torch.stack([s[j] for s in new_states]) for j in range(4))  # 4 x (L, N, H)
        if not batched:
            return layer_input.squeeze(0), tuple(s.squeeze(1) for s in hidden)
        return layer_input, hidden

    # ----- checks -----
    def _check_tensor(self, name: str, tensor: Tensor) -> None:
        weight = self.weight_ih_l0
        check_floating(name, tensor, weight.dtype, weight.device)

    def _check_input(self, input: Tensor) -> bool:
        """Validate a tensor input (L, N, H_in), (N, L, H_in) or (L, H_in); returns whether it is batched."""
        return check_sequence_input(self, input)

    def _initial_state(self, hx, batch: int, batched: bool, sorted_indices, x: Tensor) -> tuple[Tensor, ...]:
        """Validate hx and return it as 4 tensors (D*L, B, H) in the scan's row order (zeros for None)."""
        count = self.num_layers * self.num_directions
        if hx is None:
            return tuple(x.new_zeros(count, batch, self.hidden_size) for _ in STATE_NAMES)
        if not (isinstance(hx, (tuple, list)) and len(hx) == 4):
            got = f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
            raise ArgumentTypeError(f"SLSTM hx should be a tuple (h_0, c_0, n_0, m_0), got {got}")
        result = []
        for name, state in zip(STATE_NAMES, hx):
            self._check_tensor(name, state)
            if batched:
                check_shape(name, state, (count, batch, self.hidden_size))
            else:
                check_shape(name, state, (count, self.hidden_size))
                state = state.unsqueeze(1)  # (D*L, 1, H)
            if sorted_indices is not None:
                state = state.index_select(1, sorted_indices)
            result.append(state)
        return tuple(result)
