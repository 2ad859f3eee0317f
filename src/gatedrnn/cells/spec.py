"""What the layers and the engine need to know about a cell, stated once.

Shape symbols used across gatedrnn:
    T: time steps, B: batch, I: input features (H_in), H: hidden size,
    P: size of h (P = proj_size if the LSTM has a projection, else H), G: gate count (LSTM 4, GRU 3, RNN 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

from torch import Tensor


class LayerWeights(NamedTuple):
    """The parameters of one layer and one direction, under torch.nn's names.

    w_ih: (G*H, I); w_hh: (G*H, P); b_ih, b_hh: (G*H,) or None; w_hr: (P, H) or None (LSTM projection).
    Gate blocks are stacked in torch.nn's order: LSTM i,f,g,o; GRU r,z,n.
    extra: the cell's extra parameters in `CellSpec.extra_params` order, each (blocks*H,) (peepholes, ...).
    """

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Optional[Tensor]
    b_hh: Optional[Tensor]
    w_hr: Optional[Tensor] = None
    extra: tuple[Tensor, ...] = ()


class ExtraParam(NamedTuple):
    """A parameter a cell has besides torch.nn's, per layer and direction: `<name>_l<k>[_reverse]` of shape
    (blocks*H,), or (blocks*H, columns*H) for a matrix (FGR's gate recurrence R_g), initialised by `init`
    ("uniform": torch.nn's U(-1/sqrt(H), 1/sqrt(H)); "ones"; "zeros")."""

    name: str
    blocks: int
    init: str = "uniform"
    columns: int = 0  # 0: a vector (blocks*H,); else a matrix (blocks*H, columns*H), never part of `aux`

    def shape(self, hidden: int) -> tuple[int, ...]:
        """The parameter's shape for hidden size H."""
        return (self.blocks * hidden,) if not self.columns else (self.blocks * hidden, self.columns * hidden)


# A cell's step in the engine's uniform form: (x_proj (B, G*H), state tuple[, candidate_mask (B, H)]) ->
# (state tuple, traced gates).
StepFn = Callable[[Tensor, tuple[Tensor, ...]], tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]
# make_step(weights, recurrent_mask (B, P) or None) -> StepFn; W_hh reads h ⊙ recurrent_mask.
MakeStep = Callable[[LayerWeights, Optional[Tensor]], StepFn]


@dataclass(frozen=True)
class CellSpec:
    """Everything gatedrnn knows about one cell kind, stated once (the table is `gatedrnn.cells.CELL_SPECS`).

    The engine, the layers, streaming, traces, the report and the CLI read these fields; no other module
    branches on a cell's name.

    name: the key ("lstm", "gru", "rnn_tanh", "rnn_relu"); the fused kernels know the cell by it.
    display_name: how people read it ("LSTM").
    step: the pure step function of `gatedrnn.cells` whose docstring states the equations.
    make_step: (LayerWeights, recurrent_mask or None) -> the step in the uniform form `StepFn`.
    gate_count: G, the gate blocks stacked in W_ih / W_hh (rows = G*H); gate_names their order (torch.nn's).
    state_names: the state tuple: "h" first, then "c" for cells with a cell state, then any others (the
        sLSTM's normaliser n and stabiliser m).
    trace_type: the named tuple of a layer's trace: the traced gates, then the states in reverse ((c, h), (h,),
        or the sLSTM's (m, n, c, h)).
    traced_gates: the gate blocks a trace holds (the RNN's pre-activation is not traced).
    torch_mode: torch.nn's name of the cell ("LSTM", "GRU", "RNN_TANH"), for torch's own RNN ops (tracing,
        ONNX export, autocast), or "" for a cell torch.nn does not have.
    supports_projection: whether layers take proj_size (LSTMP's h = W_hr(o ⊙ tanh(c))).
    saved_extra: (H)-wide blocks the fused kernel saves per step besides the gates (GRU: W_hn h + b_hn).
    hold_gate: the gate whose value near 1 keeps the memory (LSTM f, GRU z), None without gates.
    write_gate: the gate that lets new content in (LSTM i; GRU z, read as 1 − z: write_gate_inverted).
    color: the cell's colour in every plot.
    extra_params: parameters besides torch.nn's (`ExtraParam`), passed to the kernels flattened as `aux`.
    backward_reads_h: the fused backward reads the step's own h (the RNN's tanh'), so zoneout saves h̃.
    variant: what distinguishes the cell within its family (e.g. `GreffVariant`), for the layers and docs.
    candidate_gate: the gate whose value candidate dropout masks (LSTM g, GRU n), None if the cell has none.
    fused: whether the fused C++ engine has a kernel for the cell; False: `engine.run_layer` runs the
        reference scan (`engine.scan.scan_reference`) on every device and dtype (the sLSTM).
    trace_labels: (field, label) pairs naming trace fields in plots where they differ from the LSTM's and
        GRU's names ("input gate i", "candidate n", ...), e.g. the sLSTM's ("n", "normaliser n").
    equations: () -> the cell's own equations, as text in the step docstrings' format, for a step function
        that serves several cells (Greff et al.'s variants); None: the step function's docstring.
    sequence_scan: for a cell whose gates read only x_t (minGRU, minLSTM: h_t = a_t ⊙ h_{t-1} + b_t), its scan
        over every step at once, (x_proj (T, B, G*H), h0 (B, H), *, scan, trace) -> (h (T, B, H), trace or
        None), computing what a loop over `step` computes; None for the other cells.
    kernel_weights: LayerWeights in the table's form -> LayerWeights as the fused kernels take them (w_hh dense
        (G*H, P), or (G*H, P + (S−1)*H) with `kernel_reads_state`; b_ih and b_hh both given or both None; extra:
        the vector parameters only, which become `aux`), differentiable so autograd carries the gradient back;
        None: the same (every cell but the sLSTM, whose per-head R becomes the dense block-diagonal W_hh, and
        FGR, whose gate recurrence R_g joins W_hh).
    state_widths: the (H)-wide blocks of each state after h, in `state_names` order; () means 1 each (FGR's
        a = [i′ | f′ | o′] is 3 blocks wide).
    kernel_reads_state: the fused kernel's recurrent GEMM reads [h | the state blocks after c] instead of h
        (csrc `kRecState`; FGR: its gate recurrence R_g a′ is part of the GEMM), so its W_hh has
        (S−1)*H more columns than P.
    """

    name: str
    display_name: str
    step: Callable
    make_step: MakeStep
    gate_count: int
    gate_names: tuple[str, ...]
    state_names: tuple[str, ...]
    trace_type: type
    traced_gates: tuple[str, ...]
    torch_mode: str  # torch.nn.RNNBase's mode: its aten op is torch._VF.<torch_mode.lower()>, its cell op <...>_cell
    supports_projection: bool = False
    saved_extra: int = 0
    hold_gate: Optional[str] = None
    write_gate: Optional[str] = None
    write_gate_inverted: bool = False
    color: str = "#7f7f7f"
    extra_params: tuple[ExtraParam, ...] = ()
    backward_reads_h: bool = False
    variant: object = None
    candidate_gate: Optional[str] = None
    fused: bool = True
    trace_labels: tuple[tuple[str, str], ...] = ()
    equations: Optional[Callable[[], str]] = None
    sequence_scan: Optional[Callable] = None
    kernel_weights: Optional[Callable[[LayerWeights], LayerWeights]] = None
    state_widths: tuple[int, ...] = ()
    kernel_reads_state: bool = False

    @property
    def aux_blocks(self) -> int:
        """A: the (H)-wide blocks of extra parameters the kernels take as `aux` (the vectors; a matrix parameter
        reaches the kernel through `kernel_weights`)."""
        return sum(p.blocks for p in self.extra_params if not p.columns)

    @property
    def has_cell_state(self) -> bool:
        """Whether the state carries a cell state c besides h (and the layer's hx is a tuple (h_0, c_0))."""
        return "c" in self.state_names

    @property
    def state_blocks(self) -> int:
        """(H)-wide blocks of the fused kernels' cell-state operand c: the states after h, side by side (LSTM 1:
        c; sLSTM 3: [c | n | m]; FGR 4: [c | i′ | f′ | o′]); 0 without a cell state."""
        return sum(self.state_widths) if self.state_widths else len(self.state_names) - 1

    def state_sizes(self, hidden: int) -> tuple[int, ...]:
        """The width of each state after h for hidden size H, in `state_names` order (how the kernels' (·, S*H)
        cell-state operand splits into the layer's states)."""
        widths = self.state_widths or (1,) * (len(self.state_names) - 1)
        return tuple(w * hidden for w in widths)

    @property
    def memory_state(self) -> str:
        """The state field that carries memory: c where the cell has one, else h."""
        return "c" if self.has_cell_state else "h"

    @property
    def gated(self) -> bool:
        return bool(self.traced_gates)
