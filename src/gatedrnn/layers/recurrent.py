r"""`LSTM`, `GRU` and `RNN`: drop-in replacements for torch.nn's, with the same arguments, parameter names,
state_dict keys, initialisation, input forms and return types.

Shape symbols (torch.nn's): N batch, L sequence length, D = 2 if bidirectional else 1,
H_in input_size, H_cell hidden_size, H_out = proj_size if proj_size > 0 else hidden_size.

    input:  (L, N, H_in), (N, L, H_in) with batch_first, (L, H_in) unbatched, or a PackedSequence
    h_0:    (D * num_layers, N, H_out), or (D * num_layers, H_out) unbatched
    c_0:    (D * num_layers, N, H_cell) (LSTM only)
    output: like input with H_in replaced by D * H_out (a PackedSequence for packed input)

The cell equations are in `gatedrnn.cells`; the time loop runs in `gatedrnn.engine`.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gatedrnn import engine
from gatedrnn.cells import CELL_SPECS, CellSpec, LayerWeights
from gatedrnn.cells.lstm_variants import GREFF_VARIANTS
from gatedrnn.engine.noise import LayerNoise, draw_candidate_mask, draw_recurrent_mask, draw_zoneout, drop_weight
from gatedrnn.layers import aten, streaming, torch_floor
from gatedrnn.layers._checks import (
    ArgumentTypeError, ShapeError, active_regularisers, check_dropout, check_floating, check_packed_data, check_sequence_input, check_shape,
    check_size, warn_dropout_without_stacking,
)
from gatedrnn.layers._weights import read_weight, weight_names
from gatedrnn.layers._packing import check_indices, packed_to_padded, padded_to_packed
from gatedrnn.layers.init import apply_init_, check_init_options

State = Union[Tensor, tuple[Tensor, Tensor]]
_EXTRA_NAMES: dict[str, tuple[str, ...]] = {}  # cell kind -> its extra parameters' name stems (CELL_SPECS)


class RecurrentBase(nn.Module):
    """Stacking, direction, batch_first and packing around `engine.run_layer`; one class for all cells."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        forget_bias: Optional[float] = None,
        init: str = "default",
        chrono_max: Optional[int] = None,
        zoneout: Union[float, tuple[float, float]] = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        candidate_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in CELL_SPECS:
            raise ValueError(f"mode should be one of {sorted(CELL_SPECS)}, got {mode!r}")
        self.mode = mode
        self.input_size = check_size("input_size", input_size, minimum=1)
        self.hidden_size = check_size("hidden_size", hidden_size, minimum=1)
        self.num_layers = check_size("num_layers", num_layers, minimum=1)
        self.proj_size = check_size("proj_size", proj_size, minimum=0)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = check_dropout(dropout)
        self.bidirectional = bool(bidirectional)
        check_init_options(init, forget_bias, chrono_max)
        if (forget_bias is not None or init != "default") and self.spec.hold_gate is None:
            raise ValueError(f"forget_bias and init='chrono' need a gated cell (LSTM or GRU), got {mode!r}")
        if (forget_bias is not None or init != "default") and not self.bias:
            raise ValueError("forget_bias and init='chrono' set gate biases: expected bias=True, got bias=False")
        self.zoneout = _check_zoneout(zoneout, self.spec.has_cell_state, self.spec.display_name)
        self.recurrent_dropout = check_dropout(recurrent_dropout, "recurrent_dropout")
        self.weight_drop = check_dropout(weight_drop, "weight_drop")
        self.candidate_dropout = check_dropout(candidate_dropout, "candidate_dropout")
        if self.candidate_dropout and self.spec.candidate_gate is None:
            raise ValueError(f"candidate_dropout needs a cell with a candidate (LSTM g, GRU n), got "
                             f"{self.spec.display_name}")
        self.forget_bias = None if forget_bias is None else float(forget_bias)
        self.init = init
        self.chrono_max = chrono_max
        if self.proj_size and not self.spec.supports_projection:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size has to be smaller than hidden_size: expected proj_size < {self.hidden_size}, "
                f"got {self.proj_size}"
            )
        warn_dropout_without_stacking(self.dropout, self.num_layers)
        factory = {"device": device, "dtype": dtype}
        gate_rows = CELL_SPECS[mode].gate_count * self.hidden_size
        out_size = self.proj_size or self.hidden_size
        self._flat_weights_names: list[str] = []
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                layer_in = self.input_size if layer == 0 else out_size * self.num_directions
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = {f"weight_ih{suffix}": (gate_rows, layer_in), f"weight_hh{suffix}": (gate_rows, out_size)}
                if self.bias:
                    shapes[f"bias_ih{suffix}"] = (gate_rows,)
                    shapes[f"bias_hh{suffix}"] = (gate_rows,)
                if self.proj_size:
                    shapes[f"weight_hr{suffix}"] = (self.proj_size, self.hidden_size)
                for name, shape in shapes.items():
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name)
                for extra in self.spec.extra_params:  # after torch.nn's, in the cell's order
                    self.register_parameter(f"{extra.name}{suffix}",
                                            nn.Parameter(torch.empty(extra.shape(self.hidden_size), **factory)))
        self.reset_parameters()
        self.flatten_parameters()  # as torch.nn: a layer made on CUDA (device="cuda") starts in cuDNN's layout

    @property
    def spec(self) -> CellSpec:
        """The cell's entry in `gatedrnn.cells.CELL_SPECS` (its math and facts)."""
        return CELL_SPECS[self.mode]

    # ----- torch.nn compatibility -----
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        per = len(self._flat_weights_names) // (self.num_layers * self.num_directions)
        flat = self._flat_weights
        return [flat[k : k + per] for k in range(0, len(flat), per)]

    def flatten_parameters(self) -> None:
        """torch.nn's: on CUDA, for a layer that runs cuDNN's kernel (`aten.runs_torch_op`), the parameters become
        views of one flat buffer in cuDNN's layout, so each call uses them in place instead of copying them
        (and warning). A no-op on the CPU, for cells torch.nn does not have, and where torch.nn's is one."""
        aten.flatten_for_cudnn(self)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self.flatten_parameters()  # as torch.nn does after .cuda(), .to(), .half()
        return result

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), in registration order; then
        the gate-bias options (forget_bias, init="chrono"), formulas in `gatedrnn.layers.init`."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)
        for extra in self.spec.extra_params:
            if extra.init != "uniform":
                for name, weight in self.named_parameters():
                    if name.startswith(extra.name + "_l"):
                        nn.init.constant_(weight, 1.0 if extra.init == "ones" else 0.0)
        apply_init_(self)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if getattr(self, "forget_bias", None) is not None:
            s += f", forget_bias={self.forget_bias}"
        if getattr(self, "init", "default") != "default":
            s += f", init={self.init!r}, chrono_max={self.chrono_max}"
        for name in active_regularisers(self):
            s += f", {name}={getattr(self, name)}"
        return s

    def layer_weights(self, layer: int, direction: int = 0) -> LayerWeights:
        """The parameters of one layer and direction, as the engine takes them (read now: a replaced or
        parametrized weight is what the engine gets)."""
        mode = self.mode
        extra = _EXTRA_NAMES.get(mode)
        if extra is None:
            extra = _EXTRA_NAMES[mode] = tuple(p.name for p in CELL_SPECS[mode].extra_params)
        names, extra_names = weight_names(layer, direction, extra)
        params = self._parameters  # read_weight, inlined for registered parameters (forward reads 5+ per layer)
        w_ih, w_hh, b_ih, b_hh, w_hr = [params[name] if name in params else read_weight(self, name) for name in names]
        extra_weights = tuple([params[name] if name in params else read_weight(self, name) for name in extra_names])
        return LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr, extra_weights)

    def _noisy_weights(self, layer: int, direction: int) -> LayerWeights:
        """`layer_weights`, with W_hh under weight drop while training: DropConnect, one mask per forward
        shared by the batch and every step (Merity et al. 2018, AWD-LSTM), W_hh ⊙ M / (1 − p)."""
        weights = self.layer_weights(layer, direction)
        if self.weight_drop and self.training:
            weights = weights._replace(w_hh=drop_weight(weights.w_hh, self.weight_drop))
        return weights

    def _noise(self, x: Tensor) -> Optional[LayerNoise]:
        """This forward's zoneout weights and recurrent dropout mask for one layer and direction (x (T, B, ·)),
        or None without either (`gatedrnn.engine.noise`)."""
        p_h, p_c = self.zoneout
        if p_h == 0.0 and p_c == 0.0 and not (self.training and (self.recurrent_dropout or self.candidate_dropout)):
            return None  # nothing to draw (the common case: no regulariser)
        steps, batch = x.shape[0], x.shape[1]
        out_size = self.proj_size or self.hidden_size
        zoneout = draw_zoneout(steps, batch, out_size, self.hidden_size if self.spec.has_cell_state else None,
                               p_h, p_c, self.training, x)
        mask = draw_recurrent_mask(batch, out_size, self.recurrent_dropout, x) if self.training else None
        candidate = (draw_candidate_mask(steps, batch, self.hidden_size, self.candidate_dropout, x)
                     if self.training else None)
        if zoneout is None and mask is None and candidate is None:
            return None
        return LayerNoise(zoneout, mask, candidate)

    def _torch_op_differs(self) -> Optional[str]:
        """What of this layer torch's own RNN op (tracing, ONNX export, autocast) cannot run, or None."""
        if not self.spec.torch_mode:
            return f"{self.spec.display_name} cell"
        if self.zoneout != (0.0, 0.0):
            return "zoneout"
        if self.training and (self.recurrent_dropout or self.weight_drop or self.candidate_dropout):
            return "recurrent_dropout / weight_drop / candidate_dropout in training mode"

    # ----- forward -----
    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[State] = None):
        if hx is None and not torch.is_grad_enabled() and type(input) is Tensor:
            plain = self._plain_inference(input)  # inference's common call, its checks inline
            if plain is not None:
                return plain
        weight = read_weight(self, "weight_ih_l0")
        why = aten.reason("cpu" if weight.is_cpu else weight.device.type)
        if why is not None:  # a tracer, an exporter or autocast: torch's own op (see gatedrnn.layers.aten)
            return aten.forward(self, input, hx, any_dtype=why == "autocast")
        if torch_floor.runs_torch(self, input, hx):  # a plain LSTM where torch's kernel measured faster
            return aten.forward(self, input, hx, any_dtype=False)
        if not weight.is_cpu and aten.runs_torch_op(self, weight.device.type):  # CUDA: torch's cuDNN kernel
            return aten.forward(self, input, hx, any_dtype=False)
        output, hidden, _ = self._run_engine(input, hx, trace=False)  # no tracer: aten.reason said so
        return output, hidden

    def _plain_inference(self, input: Tensor):
        """forward(input) under no_grad for a batched tensor and no hx, in one call into the engine
        (`engine.run_stack_inference`), or None, and the general path runs (with its checks and messages). The
        checks of that path, each the same, inline: at batch 1 its function calls cost ~30 us of a ~250 us
        forward (T = 100, H = 64), after the kernel has pushed Python's working set out of the caches. Declines
        (returns None) before anything is computed: a tracer, an exporter, autocast or torch.compile; torch's
        kernel chosen by the floor (`torch_floor`); an input the general path would reject or convert; a cell
        with its own operands, a regulariser drawing noise, or anything the engine declines."""
        if (torch.compiler.is_compiling() or torch._C._is_tracing() or aten._onnx_exporting()
                or torch.is_autocast_enabled("cpu")):
            return None
        spec, params = self.spec, self._parameters
        weight = params.get("weight_ih_l0")
        if (weight is None or input.dim() != 3 or input.dtype is not weight.dtype or not input.is_cpu
                or input.shape[-1] != self.input_size or input.shape[1 if self.batch_first else 0] == 0):
            return None
        if not spec.fused or not self._one_call_serves():
            return None
        if self._own_layer_weights():
            return None  # the general path asks for them
        if torch_floor.runs_torch(self, input, None) or not engine.runs_fused(input):
            return None
        weights: list[Optional[Tensor]] = []
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                weights += [params[name] if name in params else read_weight(self, name)
                            for name in weight_names(layer, direction)[0]]
        x = input.transpose(0, 1) if self.batch_first else input  # (T, B, I)
        out_size = self.proj_size or self.hidden_size
        stack = engine.run_stack_inference(self.mode, x, None, None, weights, self.num_layers, self.bidirectional,
                                           out_size, self.hidden_size)
        if stack is None:
            return None
        y, h_n, c_n = stack
        return (y.transpose(0, 1) if self.batch_first else y), (h_n if c_n is None else (h_n, c_n))

    def __prepare_scriptable__(self) -> nn.Module:
        """torch.jit.script(model) scripts the torch.nn module holding these same parameters (see
        `gatedrnn.layers.convert.to_torch`): TorchScript cannot compile a call into the fused engine."""
        from gatedrnn.layers.convert import to_torch

        return to_torch(self)

    def step(self, x: Tensor, state: Optional[State] = None):
        """One time step for streaming: x (N, H_in) or (H_in,), state in forward's hidden format (None = zeros).
        Returns (y (N, H_out) or (H_out,), new_state). See `gatedrnn.layers.streaming`."""
        # not self._own_layer_weights(), inline (a step at batch 1 takes a few µs): the one-call path reads the
        # weights by name
        if "layer_weights" not in self.__dict__ and type(self).layer_weights is RecurrentBase.layer_weights:
            out = streaming.streamed(self, x, state)
            if out is not None:
                return out
        return streaming.step(self, x, state)

    def _own_layer_weights(self) -> bool:
        """Whether a subclass or this instance replaces `layer_weights`: what forward's general path and the general
        step read then, where the one-call paths (inline inference, streaming) read the parameters by name."""
        return type(self).layer_weights is not RecurrentBase.layer_weights or "layer_weights" in self.__dict__

    def _check_input(self, input: Tensor, *, any_dtype: bool = False) -> bool:
        """Validate a tensor input (L, N, H_in), (N, L, H_in) or (L, H_in); returns whether it is batched."""
        return check_sequence_input(self, input, any_dtype=any_dtype)

    def _check_packed_data(self, data: Tensor, *, any_dtype: bool = False) -> None:
        check_packed_data(self, data, any_dtype=any_dtype)

    def _run(self, input: Union[Tensor, PackedSequence], hx: Optional[State], trace: bool):
        """Returns (output, hidden, traces); traces[layer][direction] is the engine's trace (or None)."""
        if torch.jit.is_tracing() or aten.in_onnx_export():
            raise RuntimeError(
                "gate traces come from gatedrnn's own engine, which torch.jit.trace and torch.onnx.export cannot "
                "record; trace or export the module's forward (it runs torch's RNN op then), and read gate traces "
                "outside the tracer"
            )
        return self._run_engine(input, hx, trace)

    def _run_engine(self, input: Union[Tensor, PackedSequence], hx: Optional[State], trace: bool):
        """`_run` once no tracer or exporter is recording (forward has asked `aten.reason` already)."""
        is_lstm = self.spec.has_cell_state
        packed = isinstance(input, PackedSequence)
        if packed:
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            self._check_packed_data(input.data)
            x, batch_sizes = packed_to_padded(input.data, input.batch_sizes)  # (T, B, I)
            check_indices(sorted_indices, unsorted_indices, x.shape[1])
            batched = True
        else:
            batched = self._check_input(input)
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            batch_sizes, sorted_indices, unsorted_indices = None, None, None

        stack = None if packed or trace else self._stack_inference(x, hx, batched)
        if stack is not None:
            layer_input, h_n, c_n = stack
            hidden, traces = ((h_n,) if c_n is None else (h_n, c_n)), []
        else:
            layer_input, hidden, traces = self._run_layers(x, hx, batched, batch_sizes, sorted_indices, trace)
        if unsorted_indices is not None:
            hidden = tuple(h.index_select(1, unsorted_indices) for h in hidden)
        if packed:
            output = PackedSequence(
                padded_to_packed(layer_input, input.batch_sizes), input.batch_sizes, sorted_indices, unsorted_indices
            )
        elif not batched:
            output = layer_input.squeeze(1)
            hidden = tuple(h.squeeze(1) for h in hidden)
        else:
            output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        return output, (hidden if is_lstm else hidden[0]), traces

    def _run_layers(self, x: Tensor, hx, batched: bool, batch_sizes, sorted_indices, trace: bool):
        """Layer by layer, direction by direction through `engine.run_layer`, for x (T, B, I): (the last layer's
        output (T, B, D * P), the final states as (D * L, B, ·) tensors, traces[layer][direction])."""
        initial = self._initial_rows(hx, x.shape[1], batched, sorted_indices, x)
        # the engine's path for this call, chosen once for every layer (it reads GATEDRNN_BACKEND)
        fused = self.spec.fused and engine.runs_fused(x)
        mode, num_directions = self.mode, self.num_directions
        layer_input = x
        finals: list[tuple[Tensor, ...]] = []
        traces: list[list] = []
        for layer in range(self.num_layers):
            outputs, layer_traces = [], []
            for direction in range(num_directions):
                result = engine.run_layer(
                    mode, layer_input, initial[layer * num_directions + direction],
                    self._noisy_weights(layer, direction),
                    batch_sizes=batch_sizes, reverse=direction == 1, trace=trace, noise=self._noise(layer_input),
                    fused=fused,
                )
                outputs.append(result.y)
                finals.append(result.state)
                layer_traces.append(result.trace)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (T, B, D*P)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
            traces.append(layer_traces)
        # copies, not views, also for one layer: torch.nn's h_n takes h_n.detach_() and in-place updates
        hidden = tuple([torch.stack([f[j] for f in finals]) for j in range(len(finals[0]))])  # (D*L, B, ·)
        return layer_input, hidden, traces

    def _stack_inference(self, x: Tensor, hx, batched: bool) -> Optional[tuple[Tensor, Tensor, Optional[Tensor]]]:
        """The whole stack in one call into the engine (`engine.run_stack_inference`) where nothing needs a
        gradient, no regulariser draws noise and the fused engine runs x (T, B, I): (y (T, B, D * P), h_n, c_n or
        None), or None where the layer-by-layer loop runs. The cheap checks come first: a training step returns
        None before reading a weight (a parametrized weight is computed once per forward, by the loop) or hx."""
        if torch.compiler.is_compiling() or not self._one_call_serves():
            return None  # compiled: the operator, which the graph records
        if torch.is_grad_enabled():
            raw = (hx,) if isinstance(hx, Tensor) else tuple(hx) if isinstance(hx, (tuple, list)) else ()
            for t in (x, *raw, *self.parameters()):
                if isinstance(t, Tensor) and t.requires_grad:
                    return None
        # hx's checks before the engine's first build, in the loop's order
        states = (None, None) if hx is None else self._initial_state(hx, x.shape[1], batched, None, x)
        if not (self.spec.fused and engine.runs_fused(x)):
            return None
        weights: list[Optional[Tensor]] = []
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                weights += self.layer_weights(layer, direction)[:5]
        return engine.run_stack_inference(self.mode, x, states[0], states[1] if len(states) > 1 else None, weights,
                                          self.num_layers, self.bidirectional, self.proj_size or self.hidden_size,
                                          self.hidden_size)

    def _one_call_serves(self) -> bool:
        """Whether the layer's configuration lets one engine call run the whole stack: a cell without operands of
        its own, and no regulariser that draws noise in this mode (`_noise`'s and `_noisy_weights`' conditions,
        without drawing anything: the loop would draw again)."""
        spec = self.spec
        return not (spec.kernel_weights is not None or spec.extra_params or self.zoneout != (0.0, 0.0)
                    or (self.training and (self.recurrent_dropout or self.candidate_dropout or self.weight_drop
                                           or (self.dropout and self.num_layers > 1))))

    def _initial_rows(self, hx, batch: int, batched: bool, sorted_indices, x: Tensor) -> list[tuple[Tensor, ...]]:
        """`_initial_state` by row k = layer * D + direction: D*L tuples of (B, ·) tensors, each the state the
        engine starts that layer and direction from (for hx None fresh zeros: no (D*L, B, ·) tensor to index)."""
        count = self.num_layers * self.num_directions
        if hx is None:
            sizes = (self.proj_size or self.hidden_size, *self.spec.state_sizes(self.hidden_size))
            return [tuple([x.new_zeros(batch, size) for size in sizes]) for _ in range(count)]
        rows = [state.unbind(0) for state in self._initial_state(hx, batch, batched, sorted_indices, x)]
        return list(zip(*rows))

    def _initial_state(self, hx, batch: int, batched: bool, sorted_indices, x: Tensor, *,
                       any_dtype: bool = False) -> tuple[Tensor, ...]:
        """Validate hx and return it as a tuple of (D*L, B, ·) tensors in the engine's row order."""
        out_size = self.proj_size or self.hidden_size
        count = self.num_layers * self.num_directions
        spec = self.spec
        if hx is None:
            return (x.new_zeros(count, batch, out_size),
                    *[x.new_zeros(count, batch, size) for size in spec.state_sizes(self.hidden_size)])
        # h_0, then the states after h in the cell's order (LSTM c_0; FGR c_0 and a_0 (3H), its previous gates)
        expected = [("h_0", out_size)] + [(f"{name}_0", size) for name, size in
                                          zip(spec.state_names[1:], spec.state_sizes(self.hidden_size))]
        if self.spec.has_cell_state:
            if not (isinstance(hx, (tuple, list)) and len(hx) == len(expected)):
                got = f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
                names = ", ".join(name for name, _ in expected)
                raise ArgumentTypeError(f"LSTM hx should be a tuple ({names}), got {got}")
            states = tuple(hx)
        else:
            if not isinstance(hx, Tensor):
                raise ArgumentTypeError(f"{type(self).__name__} hx should be a Tensor h_0, got {type(hx).__name__}")
            states = (hx,)
        weight = self.weight_ih_l0
        result = []
        for (name, size), state in zip(expected, states):
            check_floating(name, state, weight.dtype, weight.device, any_dtype=any_dtype)
            if batched:
                check_shape(name, state, (count, batch, size))
            else:
                if state.dim() != 2:
                    raise ShapeError(
                        f"for unbatched 2-D input, {name} should be 2-D of shape {(count, size)}, "
                        f"got a {state.dim()}-D tensor of shape {tuple(state.shape)}"
                    )
                check_shape(name, state, (count, size))
                state = state.unsqueeze(1)
            if sorted_indices is not None:
                state = state.index_select(1, sorted_indices)
            result.append(state)
        return tuple(result)


def _check_zoneout(zoneout, has_cell_state: bool, cell: str = "this cell") -> tuple[float, float]:
    """zoneout as (p_h, p_c): a float p for h (and for c where the cell has one), or a pair (h's, c's); each in
    [0, 1). A pair with a nonzero p_c for a cell without a cell state raises (it would be ignored)."""
    pair = tuple(zoneout) if isinstance(zoneout, (tuple, list)) else (zoneout, zoneout)
    if len(pair) != 2:
        raise ValueError(f"zoneout should be a float or a pair (p_h, p_c), got {zoneout!r}")
    p_h, p_c = (check_dropout(p, "zoneout") for p in pair)
    if not has_cell_state:
        if isinstance(zoneout, (tuple, list)) and p_c != 0:
            raise ValueError(f"{cell} has no cell state c, so zoneout's p_c should be 0: expected a float p or "
                             f"(p_h, 0.0), got zoneout={zoneout!r}")
        p_c = 0.0  # no cell state: only h zones out
    return (p_h, p_c)


INIT_OPTIONS_DOC = """
    Gate-bias options (keyword-only; the defaults give torch.nn's init exactly), applied by
    `reset_parameters` after torch's init; formulas and papers in `gatedrnn.layers.init`:
        forget_bias: the effective bias b_ih + b_hh of the hold gate ({gate}), all in b_ih (None: torch's init).
        init: "default" or "chrono" (Tallec & Ollivier 2018: {chrono}, u ~ U(1, chrono_max - 1) per unit).
        chrono_max: T_max for init="chrono", an integer >= 2 (the longest dependency to expect).

    Regularisers (keyword-only, 0 = off; every mask is drawn with torch's generator, so torch.manual_seed
    reproduces it; semantics in `gatedrnn.engine.noise`):
        zoneout: p, or (p_h, p_c): each unit of h (and c) keeps its previous value with probability p at each
            step while training, and mixes p ⊙ previous + (1 - p) ⊙ new at eval (Krueger et al. 2017).
        recurrent_dropout: variational dropout on the h that W_hh reads, one mask per sequence shared by the
            gates, scaled by 1 / (1 - p), training only (Gal & Ghahramani 2016; Keras draws one per gate).
        weight_drop: DropConnect on W_hh, one mask per forward, training only (Merity et al. 2018, AWD-LSTM).
        candidate_dropout: dropout on the candidate where it enters the state (LSTM g, GRU n), a mask per step,
            training only (Semeniuta et al. 2016, "Recurrent Dropout without Memory Loss").
"""

class LSTM(RecurrentBase):
    __doc__ = ("""torch.nn.LSTM's interface; equations in `gatedrnn.cells.lstm.lstm_step`. Returns output, (h_n, c_n).

    variant (keyword-only): None for torch.nn's LSTM, or one of Greff et al. 2017's: "peephole" (their vanilla
    LSTM, with peephole weights `weight_peephole_l<k>`), "nig", "nfg", "nog", "niaf", "noaf", "np" (torch.nn's
    cell under Greff's name), "cifg"; equations in `gatedrnn.cells.lstm_variants`. "fgr" (full gate recurrence,
    `gatedrnn.cells.fgr`) adds `weight_gate_hh_l<k>` (3H, 3H) and carries the previous gates in its state:
    hx and the returned hidden are (h, c, a) with a (D * num_layers, N, 3 * H_cell) (zeros for hx None).
""" + INIT_OPTIONS_DOC.format(gate="f", chrono="b_f = log(u), b_i = -b_f"))

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, variant: Optional[str] = None,
                 forget_bias: Optional[float] = None, init: str = "default", chrono_max: Optional[int] = None,
                 zoneout: Union[float, tuple[float, float]] = 0.0, recurrent_dropout: float = 0.0,
                 weight_drop: float = 0.0, candidate_dropout: float = 0.0) -> None:
        if variant is not None and variant not in GREFF_VARIANTS:
            raise ValueError(f"variant should be None (torch.nn's LSTM) or one of {list(GREFF_VARIANTS)}, "
                             f"got {variant!r}")
        if variant is not None and proj_size:
            raise ValueError(f"proj_size is supported by torch.nn's LSTM only, got variant={variant!r} with "
                             f"proj_size={proj_size}")
        self.variant = variant
        super().__init__("lstm" if variant is None else f"lstm_{variant}", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, proj_size, device=device, dtype=dtype,
                         forget_bias=forget_bias, init=init, chrono_max=chrono_max, zoneout=zoneout,
                         recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
                         candidate_dropout=candidate_dropout)


class GRU(RecurrentBase):
    __doc__ = ("""torch.nn.GRU's interface; equations in `gatedrnn.cells.gru.gru_step`. Returns output, h_n.
""" + INIT_OPTIONS_DOC.format(gate="z; h' = (1 - z) * n + z * h, so z near 1 keeps the state",
                              chrono="b_z = +log(u), the paper's -log(u) on its write gate 1 - z"))

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, forget_bias: Optional[float] = None,
                 init: str = "default", chrono_max: Optional[int] = None,
                 zoneout: float = 0.0, recurrent_dropout: float = 0.0, weight_drop: float = 0.0,
                 candidate_dropout: float = 0.0) -> None:
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device=device, dtype=dtype, forget_bias=forget_bias,
                         init=init, chrono_max=chrono_max, zoneout=zoneout, recurrent_dropout=recurrent_dropout,
                         weight_drop=weight_drop, candidate_dropout=candidate_dropout)


class RNN(RecurrentBase):
    """torch.nn.RNN's interface (Elman, tanh or relu); equations in `gatedrnn.cells.rnn.rnn_step`.
    zoneout, recurrent_dropout, weight_drop: as for `LSTM`."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *, zoneout: float = 0.0,
                 recurrent_dropout: float = 0.0, weight_drop: float = 0.0) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity should be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device=device, dtype=dtype, zoneout=zoneout,
                         recurrent_dropout=recurrent_dropout, weight_drop=weight_drop)


class LayerNormLSTM(RecurrentBase):
    __doc__ = ("""torch.nn.LSTM's interface (without proj_size) for the LayerNorm LSTM of Ba, Kiros & Hinton 2016 in
    haste's placement; equations in `gatedrnn.cells.layernorm.layernorm_lstm_step`. Returns output, (h_n, c_n).

    Parameters besides torch.nn.LSTM's, per layer and direction: gamma_ih_l<k>, gamma_hh_l<k> (4*hidden_size,),
    ones (the gains of LN(W_ih x) and LN(W_hh h)); gamma_c_l<k> (ones) and beta_c_l<k> (zeros) (hidden_size,)
    (LN(c) before the output tanh).
""" + INIT_OPTIONS_DOC.format(gate="f", chrono="b_f = log(u), b_i = -b_f"))

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, forget_bias: Optional[float] = None, init: str = "default",
                 chrono_max: Optional[int] = None, zoneout: Union[float, tuple[float, float]] = 0.0,
                 recurrent_dropout: float = 0.0, weight_drop: float = 0.0) -> None:
        super().__init__("layernorm_lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device=device, dtype=dtype, forget_bias=forget_bias, init=init,
                         chrono_max=chrono_max, zoneout=zoneout, recurrent_dropout=recurrent_dropout,
                         weight_drop=weight_drop)


class LayerNormGRU(RecurrentBase):
    __doc__ = ("""torch.nn.GRU's interface for the LayerNorm GRU of Ba, Kiros & Hinton 2016 in haste's placement;
    equations in `gatedrnn.cells.layernorm.layernorm_gru_step`. Returns output, h_n.

    Parameters besides torch.nn.GRU's, per layer and direction: gamma_ih_l<k>, gamma_hh_l<k> (3*hidden_size,),
    ones (the gains of LN(W_ih x) and LN(W_hh h)).
""" + INIT_OPTIONS_DOC.format(gate="z; h' = (1 - z) * n + z * h, so z near 1 keeps the state",
                              chrono="b_z = +log(u), the paper's -log(u) on its write gate 1 - z"))

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, forget_bias: Optional[float] = None, init: str = "default",
                 chrono_max: Optional[int] = None, zoneout: float = 0.0, recurrent_dropout: float = 0.0,
                 weight_drop: float = 0.0) -> None:
        super().__init__("layernorm_gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device=device, dtype=dtype, forget_bias=forget_bias, init=init,
                         chrono_max=chrono_max, zoneout=zoneout, recurrent_dropout=recurrent_dropout,
                         weight_drop=weight_drop)
