r"""`MinGRU` and `MinLSTM` (Feng et al. 2024, arXiv:2410.01201): torch.nn.GRU's interface where the math allows.

Shape symbols (torch.nn's): N batch, L sequence length, D = 2 if bidirectional else 1, H_in input_size,
H hidden_size.

    input:  (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a PackedSequence
    h_0:    (D * num_layers, N, H), or (D * num_layers, H) unbatched; any real values (None = zeros)
    output: like input with H_in replaced by D * H (a PackedSequence for packed input)
    h_n:    (D * num_layers, N, H)

The gates read only x_t, so each layer is one matmul over all steps and one scan over time (the equations and
both scans are in `gatedrnn.cells.minimal`). Parameters per layer and direction, torch's names:
    weight_ih_l{k}[_reverse]: (2H, layer input) rows z, h̃ (minGRU) or (3H, ·) rows f, i, h̃ (minLSTM)
    bias_ih_l{k}[_reverse]:   (2H,) or (3H,)     (no weight_hh / bias_hh: nothing reads h_{t-1} but the scan)
Packed input: every sequence's final state is its own last step's, outputs are zero past its end, and the
reverse direction runs each sequence backwards within its own length, like torch.nn.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gatedrnn.cells import CELL_SPECS, CellSpec, LayerWeights, cell_spec
from gatedrnn import engine
from gatedrnn.cells.minimal import SCANS
from gatedrnn.engine.minimal import minimal_scan
from gatedrnn.layers import aten
from gatedrnn.layers._checks import (
    ArgumentTypeError, ShapeError, check_dropout, check_floating, check_packed_data, check_sequence_input, check_shape,
    check_size, check_step_input, refuse_bidirectional_step,
    warn_dropout_without_stacking,
)
from gatedrnn.layers._packing import check_indices, packed_to_padded, padded_to_packed


class MinimalRNNBase(nn.Module):
    """Stacking, direction, batch_first and packing around the scans of `gatedrnn.cells.minimal`."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, scan: str = "auto") -> None:
        super().__init__()
        # the cell's facts (gate count, step, scan, trace type) come from the cell table
        scanned = sorted(name for name, spec in CELL_SPECS.items() if spec.sequence_scan is not None)
        if mode not in scanned:
            raise ValueError(f"mode should be one of {scanned} (the cells whose gates read only x_t), got {mode!r}")
        if scan != "auto" and scan not in SCANS:
            raise ValueError(f"scan should be 'auto' or one of {SCANS}, got {scan!r}")
        self.mode = mode
        self.scan = scan
        self.input_size = check_size("input_size", input_size, minimum=1)
        self.hidden_size = check_size("hidden_size", hidden_size, minimum=1)
        self.num_layers = check_size("num_layers", num_layers, minimum=1)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = check_dropout(dropout)
        self.bidirectional = bool(bidirectional)
        warn_dropout_without_stacking(self.dropout, self.num_layers)
        factory = {"device": device, "dtype": dtype}
        gate_rows = self.gate_count * self.hidden_size
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                layer_in = self.input_size if layer == 0 else self.hidden_size * self.num_directions
                suffix = self._suffix(layer, direction)
                self.register_parameter(f"weight_ih{suffix}", nn.Parameter(torch.empty(gate_rows, layer_in, **factory)))
                if self.bias:
                    self.register_parameter(f"bias_ih{suffix}", nn.Parameter(torch.empty(gate_rows, **factory)))
        self.reset_parameters()

    @property
    def spec(self) -> CellSpec:
        """The cell's entry in `gatedrnn.cells.CELL_SPECS` (its math and facts)."""
        return cell_spec(self.mode)

    @property
    def gate_count(self) -> int:
        return self.spec.gate_count

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                              ("scan", "auto")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    def layer_weights(self, layer: int, direction: int = 0) -> tuple[Tensor, Optional[Tensor]]:
        """(weight_ih (G*H, layer input), bias_ih (G*H,) or None) of one layer and direction."""
        suffix = self._suffix(layer, direction)
        return getattr(self, "weight_ih" + suffix), getattr(self, "bias_ih" + suffix, None)

    def cell_weights(self, layer: int, direction: int = 0) -> LayerWeights:
        """The same parameters as the engine takes them (the cell table's minGRU / minLSTM entry): w_ih
        (G*H, layer input), b_ih (G*H,) or None, no w_hh or b_hh; `engine.scan.scan_reference` runs on them."""
        weight, bias = self.layer_weights(layer, direction)
        return LayerWeights(weight, None, bias, None)

    def resolved_scan(self, device: torch.device) -> str:
        """The scan `forward` runs: scan="auto" is "linear" on the CPU (torch's logcumsumexp is a serial loop
        there), the paper's "log" elsewhere; also under torch.compile / torch.export, which would unroll the linear
        scan's loop over time into the graph (a first call of 60 s against 8 s at T = 100), and under torch.func's
        transforms and forward-mode AD, which need every op to be torch's (the linear scan's backward is
        hand-written)."""
        if self.scan != "auto":
            return self.scan
        if (device.type != "cpu" or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
                or engine.forward_ad_active()):
            return "log"
        return "linear"

    # ----- forward -----
    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None):
        """Returns (output, h_n) like torch.nn.GRU: one matmul and one scan per layer and direction."""
        aten.refuse_tracers(type(self).__name__)
        output, hidden, _ = self._run(input, hx, trace=False)
        return output, hidden

    def forward_sequential(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None):
        """The same as `forward`, computed by a loop over the cell's step function (the reference path)."""
        output, hidden, _ = self._run(input, hx, trace=False, sequential=True)
        return output, hidden

    def gate_trace(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None) -> list[list[tuple]]:
        """Every step's gates and state: result[layer][direction] is a `MinGRUTrace` (z, h_tilde, h) or
        `MinLSTMTrace` (f, i, h_tilde, h; f and i normalised) with fields (T, N, H) time-major in the caller's
        batch order, zero past each packed sequence's end. `gatedrnn.inspect.trace(layer, input)` gives the
        same in the input's layout, with the output and h_n."""
        _, _, traces = self._run(input, hx, trace=True)
        unsorted = input.unsorted_indices if isinstance(input, PackedSequence) else None
        if unsorted is None:
            return traces
        return [[type(t)(*(f.index_select(1, unsorted) for f in t)) for t in layer] for layer in traces]

    def step(self, x: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """One time step for streaming: x (N, H_in) or (H_in,), state h (num_layers, N, H) or (num_layers, H)
        (None = zeros). Returns (y (N, H) or (H,), new state). Feeding a sequence step by step gives
        forward's outputs and h_n."""
        refuse_bidirectional_step(self)
        batched = check_step_input(self, x)
        layer_input = x if batched else x.unsqueeze(0)  # (N, H_in)
        states = self._initial_state(state, layer_input.shape[0], batched, None, layer_input)  # (L, N, H)
        step_fn = self.spec.step
        new_states = []
        for layer in range(self.num_layers):
            weight, bias = self.layer_weights(layer)
            h_next, _ = step_fn(F.linear(layer_input, weight, bias), states[layer])  # (N, H)
            new_states.append(h_next)
            layer_input = h_next
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        new_state = torch.stack(new_states)  # (L, N, H)
        if not batched:
            return layer_input.squeeze(0), new_state.squeeze(1)
        return layer_input, new_state

    def _run(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor], trace: bool, *,
             sequential: bool = False):
        """Returns (output, h_n, traces); traces[layer][direction] is the cell's trace (T, B, ·) in the sorted
        batch order of packed input (as `gatedrnn.inspect.trace` reads it), or None."""
        packed = isinstance(input, PackedSequence)
        if packed:
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            self._check_packed_data(input.data)
            x, batch_sizes = packed_to_padded(input.data, input.batch_sizes)  # (T, B, H_in)
            check_indices(sorted_indices, unsorted_indices, x.shape[1])
            sizes = torch.tensor(batch_sizes, device=x.device)  # (T,)
            lengths = (sizes.unsqueeze(1) > torch.arange(x.shape[1], device=x.device)).sum(0)  # (B,) sorted order
            batched = True
        else:
            batched = self._check_input(input)
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            sorted_indices, unsorted_indices, lengths = None, None, None
        hidden_in = self._initial_state(hx, x.shape[1], batched, sorted_indices, x)  # (D*L, B, H)
        scan = self.resolved_scan(x.device)
        layer_input = x
        finals, traces = [], []
        for layer in range(self.num_layers):
            outputs, layer_traces = [], []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                y, h_n, cell_trace = self._run_direction(
                    layer_input, hidden_in[k], *self.layer_weights(layer, direction), lengths=lengths,
                    reverse=direction == 1, trace=trace, sequential=sequential, scan=scan,
                )
                outputs.append(y)
                finals.append(h_n)
                layer_traces.append(cell_trace)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (T, B, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
            traces.append(layer_traces)
        hidden = torch.stack(finals)  # (D*L, B, H)
        if unsorted_indices is not None:
            hidden = hidden.index_select(1, unsorted_indices)
        if packed:
            output = PackedSequence(padded_to_packed(layer_input, input.batch_sizes), input.batch_sizes,
                                    sorted_indices, unsorted_indices)
        elif not batched:
            output, hidden = layer_input.squeeze(1), hidden.squeeze(1)
        else:
            output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        return output, hidden, traces

    def _run_direction(self, x: Tensor, h0: Tensor, weight: Tensor, bias: Optional[Tensor], *,
                       lengths: Optional[Tensor], reverse: bool, trace: bool, sequential: bool, scan: str):
        """One layer and direction: x (T, B, I), h0 (B, H) -> (y (T, B, H) zero past each length,
        h_n (B, H) at each sequence's own last step, trace or None)."""
        steps, batch, _ = x.shape
        if reverse:
            x = _reverse_within(x, lengths)
        if sequential:
            h, cell_trace = self._loop(x, h0, weight, bias, lengths, trace)
        else:
            x_proj = F.linear(x.reshape(steps * batch, -1), weight, bias).view(steps, batch, -1)  # (T, B, G*H)
            # the C++ engine's one-pass scan where it serves the call; torch's (and every trace) otherwise
            h = None if trace or scan != "linear" else minimal_scan(self.mode, x_proj, h0)  # (T, B, H)
            if h is None:
                h, cell_trace = self.spec.sequence_scan(x_proj, h0, scan=scan, trace=trace)  # (T, B, H)
            else:
                cell_trace = None
        if lengths is None:
            h_n = h[-1]
        else:
            h_n = h[lengths - 1, torch.arange(batch, device=h.device)]  # (B, H): each row's own last step
            valid = (torch.arange(steps, device=h.device).unsqueeze(1) < lengths).unsqueeze(2)  # (T, B, 1)
            h = h * valid
            if cell_trace is not None:
                cell_trace = type(cell_trace)(*(field * valid for field in cell_trace))
        if reverse:
            h = _reverse_within(h, lengths)
            if cell_trace is not None:
                cell_trace = type(cell_trace)(*(_reverse_within(field, lengths) for field in cell_trace))
        return h, h_n, cell_trace

    def _loop(self, x: Tensor, h0: Tensor, weight: Tensor, bias: Optional[Tensor], lengths: Optional[Tensor],
              trace: bool):
        """The step function over time: x (T, B, I) -> (h (T, B, H), trace or None); padded rows keep h."""
        step_fn = self.spec.step
        h, hs, gates = h0, [], []
        for t in range(x.shape[0]):
            h_next, step_gates = step_fn(F.linear(x[t], weight, bias), h)  # (B, H)
            if lengths is not None:
                h_next = torch.where((t < lengths).unsqueeze(1), h_next, h)
            h = h_next
            hs.append(h)
            gates.append(step_gates)
        h_all = torch.stack(hs)  # (T, B, H)
        if not trace:
            return h_all, None
        fields = [torch.stack(field) for field in zip(*gates)]  # each (T, B, H)
        return h_all, self.spec.trace_type(*fields, h_all)

    # ----- checks -----
    def _check_input(self, input: Tensor) -> bool:
        """Validate a tensor input (L, N, H_in), (N, L, H_in) or (L, H_in); returns whether it is batched."""
        return check_sequence_input(self, input)

    def _check_packed_data(self, data: Tensor) -> None:
        check_packed_data(self, data)

    def _initial_state(self, hx, batch: int, batched: bool, sorted_indices, x: Tensor) -> Tensor:
        """Validate hx and return it as (D*L, B, H) in the scan's row order (zeros for None). Used by `step` with
        D = 1."""
        count = self.num_layers * self.num_directions
        if hx is None:
            return x.new_zeros(count, batch, self.hidden_size)
        if not isinstance(hx, Tensor):
            raise ArgumentTypeError(f"{type(self).__name__} hx should be a Tensor h_0, got {type(hx).__name__}")
        weight = self.weight_ih_l0
        check_floating("h_0", hx, weight.dtype, weight.device)
        if batched:
            check_shape("h_0", hx, (count, batch, self.hidden_size))
        else:
            if hx.dim() != 2:
                raise ShapeError(
                    f"for unbatched 2-D input, h_0 should be 2-D of shape {(count, self.hidden_size)}, "
                    f"got a {hx.dim()}-D tensor of shape {tuple(hx.shape)}"
                )
            check_shape("h_0", hx, (count, self.hidden_size))
            hx = hx.unsqueeze(1)
        if sorted_indices is not None:
            hx = hx.index_select(1, sorted_indices)
        return hx


def _reverse_within(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """x (T, B, ·) with each row's first lengths[b] steps in reverse order (all T steps if lengths is None);
    steps past a row's length stay where they are."""
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (T, 1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (T, B)
    return x.gather(0, index.unsqueeze(2).expand_as(x))


SCAN_DOC = """
    scan (keyword-only): "auto" (default: "linear" on the CPU, "log" elsewhere and under torch.compile,
        torch.export, torch.func and forward-mode AD), "log" (the paper's log-space parallel scan, differentiable
        to any order) or "linear" (the recurrence in linear space, same result, one pass over time on the CPU's C++
        engine; no second derivative; a compiler unrolls its loop); see `gatedrnn.cells.minimal`.
"""


class MinGRU(MinimalRNNBase):
    __doc__ = ("""minGRU layer (torch.nn.GRU's interface, no hidden-to-hidden weights); equations in
    `gatedrnn.cells.minimal.mingru_step`. Returns output, h_n. weight_ih_l{k}: (2H, ·), rows z, h̃.
""" + SCAN_DOC)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, scan: str = "auto") -> None:
        super().__init__("mingru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype, scan=scan)


class MinLSTM(MinimalRNNBase):
    __doc__ = ("""minLSTM layer (torch.nn.GRU's interface: one state h, no cell state, no hidden-to-hidden
    weights); equations in `gatedrnn.cells.minimal.minlstm_step`. Returns output, h_n. weight_ih_l{k}: (3H, ·),
    rows f, i, h̃.
""" + SCAN_DOC)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, scan: str = "auto") -> None:
        super().__init__("minlstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype, scan=scan)
