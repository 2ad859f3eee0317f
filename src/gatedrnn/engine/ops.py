"""The fused C++ engine as PyTorch operators: what torch.compile, torch.export, torch.func and autograd see.

Three operators in the ``gatedrnn`` namespace (`torch.library`), each with a CPU kernel (the C++ engine of
``csrc/``, built at first use, registers it), a fake kernel (shapes only, for FakeTensor tracing under compile/export)
and, for scan and scan_backward, a vmap rule:

    gatedrnn::scan(cell, x, h0, c0?, w_ih, w_hh, b_ih?, b_hh?, w_hr?, batch_sizes, reverse, keep,
                   aux?, zoneout?, rec_mask?, cand_mask?)
        -> (y, h_n, c_n, gates, c_hist, extra)          one layer, one direction, the whole sequence
    gatedrnn::scan_backward(cell, x, h0, c0?, w_ih, w_hh, w_hr?, has_bias, y, gates?, c_hist?, extra?,
                            dy, dh_n, dc_n?, batch_sizes, reverse, need_dx, aux?, zoneout?, rec_mask?,
                            cand_mask?, need_dh0=True)
        -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, daux)   its hand-written BPTT
           (need_dx=False: dx is empty; need_dh0=False: the first step's dG W_hh, which only dh0 reads, is not
           computed and dh0 is zeros, except for FGR, whose product also feeds dc0)
    gatedrnn::step(cell, x, h, c?, weights) -> (y, h, c)   one step through a stack of layers (streaming)

Shapes: T steps, B batch, I input, H hidden, P size of h (proj_size or H), G gate count, E the cell's
saved extra blocks (`CellSpec.saved_extra`), A the cell's extra-parameter blocks (`CellSpec.aux_blocks`),
L layers.
    aux (A*H,): the cell's extra parameters (peephole weights, ...), flattened in `CellSpec.extra_params` order.
    zoneout (T, B, P [+ H]): the weight of the previous h [and c] per step and unit (0/1 in training, p at eval).
    rec_mask (B, P): variational dropout's mask on the h that W_hh reads, one per sequence.
    cand_mask (T, B, H): candidate dropout's mask per step (cells with a candidate: LSTM g, GRU n).
    scan:  y (T, B, P), h_n (B, P), c_n (B, S*H) (S state blocks: 3 for the sLSTM's [c | n | m], 4 for FGR's
           [c | i′ | f′ | o′], else 1; FGR's w_hh is (G*H, P + 3H), its GEMM reading [h | i′ | f′ | o′]); with
           keep: gates (T, B, G*H), c_hist (T, B, S*H) for cells with a c state, extra (T, B, `saved_width`): the
           cell's E*H, then under zoneout c̃ (H) and h̃ (P). What a cell does not have is an empty tensor of shape
           (0,) (an operator's outputs are always tensors).
    step:  x (B, I), h (L, B, P), c (L, B, H) -> y (B, P), h (L, B, P), c (L, B, H) or (0,).

`gatedrnn::scan` is differentiable (`torch.library.register_autograd`): its backward calls
`gatedrnn::scan_backward`, which is itself not differentiable: a double backward (create_graph=True through
a layer, e.g. a gradient penalty) raises and names GATEDRNN_BACKEND=reference. gates, c_hist and extra are
saved buffers, also read as traces, and carry no gradient. `ScanFunction` is the same formula as an
autograd.Function, which torch.func's transforms accept. The vmap rules run the operator once per
mapped slice (torch.func per-sample gradients).

Eager calls that nothing else needs to see (no dispatch mode, transform, tracer or profiler; plain CPU float
tensors) reach the same C++ kernel through the engine's plain pybind entry `scan_direct` instead of the
dispatcher (`scan_without_autograd`, and ScanFunction's forward): at batch 1 the operator's argument boxing and
Python autograd kernel cost as much as a short sequence's arithmetic. ScanFunction's backward does the same
through `scan_backward_direct` when it builds no graph (create_graph=False, outside torch.func); with a graph it
calls the operator inside an autograd.Function whose own backward raises.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad

from gatedrnn.cells import CELL_SPECS
from gatedrnn.engine import _build

__all__ = ["SCAN", "SCAN_BACKWARD", "STEP", "ScanFunction", "scan_differentiable", "scan_without_autograd"]

_LIB = torch.library.Library("gatedrnn", "DEF")
_LIB.define(
    "scan(str cell, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "Tensor? w_hr, int[] batch_sizes, bool reverse, bool keep, Tensor? aux=None, Tensor? zoneout=None, "
    "Tensor? rec_mask=None, Tensor? cand_mask=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_LIB.define(
    "scan_backward(str cell, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
    "bool has_bias, Tensor y, Tensor? gates, Tensor? c_hist, Tensor? extra, Tensor dy, Tensor dh_n, "
    "Tensor? dc_n, int[] batch_sizes, bool reverse, bool need_dx, Tensor? aux=None, Tensor? zoneout=None, "
    "Tensor? rec_mask=None, Tensor? cand_mask=None, bool need_dh0=True) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_LIB.define("step(str cell, Tensor x, Tensor h, Tensor? c, Tensor?[] weights) -> (Tensor, Tensor, Tensor)")

SCAN = torch.ops.gatedrnn.scan.default
SCAN_BACKWARD = torch.ops.gatedrnn.scan_backward.default
STEP = torch.ops.gatedrnn.step.default


def _present(t: Optional[Tensor]) -> Optional[Tensor]:
    """An optional operand: the operators' empty (0,) placeholder for what a cell does not have means absent."""
    return None if t is None or (t.dim() == 1 and t.numel() == 0) else t


# The CPU kernels are the C++ engine's: csrc/engine.cpp registers them with the dispatcher when the library
# built by `gatedrnn.engine._build.load()` is loaded. Until then a fallback kernel (a less specific dispatch
# key, so the C++ CPU kernel wins once it exists) loads the library and calls the operator again: a graph
# that holds these operators (torch.export.load in a new process) runs after `import gatedrnn` alone.
def _loading_kernel(name: str, op):
    def kernel(*args):
        devices = {t.device.type for a in args for t in (a if isinstance(a, (list, tuple)) else [a])
                   if isinstance(t, Tensor)}
        if devices - {"cpu"}:
            raise RuntimeError(f"gatedrnn::{name} has a CPU kernel only, got tensors on {sorted(devices)}; "
                               "gatedrnn's layers run the reference path on other devices")
        if _build.load() is None or not torch._C._dispatch_has_kernel_for_dispatch_key(f"gatedrnn::{name}", "CPU"):
            raise RuntimeError(f"gatedrnn::{name} needs the fused C++ engine, which is not available "
                               f"({_build.error()}); run `gatedrnn build` to see why")
        return op(*args)

    return kernel


for _name, _op in (("scan", SCAN), ("scan_backward", SCAN_BACKWARD), ("step", STEP)):
    _LIB.impl(_name, _loading_kernel(_name, _op), "CompositeExplicitAutograd")


def saved_width(cell: str, hidden: int, out_size: int, zoneout: bool) -> int:
    """Columns of scan's saved `extra` buffer: the cell's own blocks, then c̃ (H) and h̃ (P) under zoneout
    (what the fused backward reads in place of the zoned-out state; csrc/scan_kernel.h)."""
    spec = CELL_SPECS[cell]
    width = spec.saved_extra * hidden
    if zoneout:
        width += (hidden if spec.has_cell_state else 0) + (out_size if spec.backward_reads_h else 0)
    return width


# ----- fake kernels: shapes only -----
@torch.library.register_fake("gatedrnn::scan")
def _scan_fake(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, keep, aux=None, zoneout=None,
               rec_mask=None, cand_mask=None):
    spec = CELL_SPECS[cell]
    steps, batch = x.shape[0], x.shape[1]
    gate_rows, read_width = w_hh.shape  # (G*H, P), or (G*H, P + (S−1)*H) when the GEMM reads the state (FGR)
    hidden = gate_rows // spec.gate_count
    out_size = read_width - (spec.state_blocks - 1) * hidden if spec.kernel_reads_state else read_width
    has_c = spec.has_cell_state
    extra = saved_width(cell, hidden, out_size, zoneout is not None)
    return (
        x.new_empty(steps, batch, out_size),
        x.new_empty(batch, out_size),
        x.new_empty(batch, spec.state_blocks * hidden) if has_c else x.new_empty(0),  # LSTM c; sLSTM [c | n | m]
        x.new_empty(steps, batch, gate_rows) if keep else x.new_empty(0),
        x.new_empty(steps, batch, spec.state_blocks * hidden) if keep and has_c else x.new_empty(0),
        x.new_empty(steps, batch, extra) if keep and extra else x.new_empty(0),
    )


@torch.library.register_fake("gatedrnn::scan_backward")
def _scan_backward_fake(cell, x, h0, c0, w_ih, w_hh, w_hr, has_bias, y, gates, c_hist, extra, dy, dh_n, dc_n,
                        batch_sizes, reverse, need_dx, aux=None, zoneout=None, rec_mask=None, cand_mask=None,
                        need_dh0=True):
    def like(t: Optional[Tensor], present: bool = True) -> Tensor:  # the kernel's results are contiguous
        return x.new_empty(t.shape) if t is not None and present else x.new_empty(0)

    return (like(x, need_dx), like(h0), like(c0), like(w_ih), like(w_hh),
            x.new_empty(w_hh.shape[0]) if has_bias else x.new_empty(0),
            x.new_empty(w_hh.shape[0]) if has_bias else x.new_empty(0),
            like(w_hr), like(aux))


@torch.library.register_fake("gatedrnn::step")
def _step_fake(cell, x, h, c, weights):
    return (x.new_empty(h.shape[1], h.shape[2]), x.new_empty(h.shape),
            x.new_empty(c.shape) if c is not None else x.new_empty(0))


# ----- autograd: BPTT by gatedrnn::scan_backward -----
def _scan_setup_context(ctx, inputs, output) -> None:
    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, keep, *noise = inputs
    aux, zoneout, rec_mask, cand_mask = (list(noise) + [None] * 4)[:4]
    y, _, _, gates, c_hist, extra = output
    ctx.cell, ctx.batch_sizes, ctx.reverse, ctx.keep = cell, list(batch_sizes), reverse, keep
    ctx.has_bias, ctx.has_c = b_ih is not None, c0 is not None
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, y, gates, c_hist, extra, aux, zoneout, rec_mask, cand_mask)
    ctx.mark_non_differentiable(gates, c_hist, extra)
    # Not materialised: autograd would otherwise allocate zero gradients as large as the saved buffers
    # (gates alone is (T, B, G*H)) for outputs no loss can reach; the backward fills in what it needs.
    ctx.set_materialize_grads(False)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "double backward (create_graph=True, e.g. a gradient penalty) through gatedrnn's fused engine is not "
        "supported: its BPTT is hand-written and not itself differentiable. Set GATEDRNN_BACKEND=reference, "
        "whose time loop autograd differentiates to any order."
    )


class _ScanBackwardFunction(torch.autograd.Function):
    """`gatedrnn::scan_backward` as the scan's backward calls it: usable under torch.func, and an error
    naming the way out if anything differentiates it (double backward)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return SCAN_BACKWARD(*args)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    backward = staticmethod(_no_double_backward)


def _scan_backward_formula(ctx, dy, dh_n, dc_n, *_saved_buffer_grads, bptt=SCAN_BACKWARD):
    if not ctx.keep:
        raise RuntimeError("gatedrnn::scan was called with keep=False, so it saved nothing to differentiate")
    x, h0, c0, w_ih, w_hh, w_hr, y, gates, c_hist, extra, aux, zoneout, rec_mask, cand_mask = ctx.saved_tensors
    if dy is None:  # a loss of the final state only: a stride-0 zero, which the kernel reads in place
        dy = y.new_zeros(()).expand(y.shape)
    dh_n = torch.zeros_like(h0) if dh_n is None else dh_n
    if ctx.has_c and dc_n is None:
        dc_n = torch.zeros_like(c0)
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, daux = bptt(
        ctx.cell, x, h0, c0, w_ih, w_hh, w_hr, ctx.has_bias, y, _present(gates), _present(c_hist),
        _present(extra), dy, dh_n, dc_n if ctx.has_c else None, ctx.batch_sizes, ctx.reverse,
        ctx.needs_input_grad[1], aux, zoneout, rec_mask, cand_mask, ctx.needs_input_grad[2],
    )
    grads = (None, dx if ctx.needs_input_grad[1] else None, dh0 if ctx.needs_input_grad[2] else None,
             dc0 if ctx.has_c else None, dw_ih, dw_hh,
             db_ih if ctx.has_bias else None, db_hh if ctx.has_bias else None,
             dw_hr if w_hr is not None else None, None, None, None)
    # the noise is drawn data, not a parameter: no gradient
    return grads + (daux if aux is not None else None, None, None, None)[: len(ctx.needs_input_grad) - len(grads)]


torch.library.register_autograd("gatedrnn::scan", _scan_backward_formula, setup_context=_scan_setup_context)
torch.library.register_autograd(
    "gatedrnn::scan_backward", _no_double_backward, setup_context=lambda ctx, inputs, output: None
)


def direct_entry(name: str, args: tuple):
    """The engine's plain pybind entry `name` (csrc/engine.cpp), or None where a call must go through the
    dispatcher: while compiling or tracing, under a TorchDispatchMode (FakeTensor, ...), a __torch_function__ mode or
    subclass among `args`, a torch.func transform, a forward-mode AD level (a tangent would be dropped) or the
    profiler (which records the operator), or without an engine (or a stand-in without the entry)."""
    if torch.compiler.is_compiling():  # first: dynamo folds it, and would trace the checks below
        return None
    if (torch._C._len_torch_dispatch_stack() or torch._C._are_functorch_transforms_active()
            or forward_ad._current_level >= 0 or torch._C._is_tracing() or torch._C._autograd._profiler_enabled()
            or torch._C._has_torch_function(args)):
        return None
    return getattr(_build.load(), name, None)


def _direct_scan(args: tuple):
    """`gatedrnn::scan`'s outputs from `scan_direct`, or None where the call must go through the dispatcher
    (`direct_entry`), or when the C++ side declines the tensors (not plain float32/float64 CPU tensors of one
    dtype)."""
    direct = direct_entry("scan_direct", args)
    return None if direct is None else direct(*args)


def _backward_direct(*args) -> tuple[Tensor, ...]:
    """SCAN_BACKWARD(*args) (all 23 of the schema's arguments) where no graph is built: through the plain pybind
    entry `scan_backward_direct` where `direct_entry` allows (same checks and kernel, without the operator's
    boxing), else the operator."""
    direct = direct_entry("scan_backward_direct", args)
    out = None if direct is None else direct(*args)
    return SCAN_BACKWARD(*args) if out is None else out


def scan_without_autograd(*args) -> tuple[Tensor, ...]:
    """SCAN(*args) (all 16 of the schema's arguments, positionally) where nothing needs a gradient: the C++
    kernel without the operator's autograd kernel (a Python function, ~8 us a call) and, where `_direct_scan`
    allows, without the dispatcher's boxing either (~20 us a call). The same kernel and checks either way, so the
    results are identical."""
    out = _direct_scan(args)
    if out is not None:
        return out
    with torch._C._AutoDispatchBelowAutograd():
        return SCAN(*args)


class ScanFunction(torch.autograd.Function):
    """`gatedrnn::scan` with the same autograd formula, in the form torch.func composes with (setup_context,
    a generated vmap rule): the layers call this in eager mode, so torch.func.grad and vmap(grad) work
    through them (an operator's own register_autograd does not support torch.func transforms). Under
    torch.compile the layers call the operator itself, whose registered autograd AOTAutograd traces."""

    generate_vmap_rule = True

    @staticmethod
    def forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, keep, aux=None, zoneout=None,
                rec_mask=None, cand_mask=None):
        args = (cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, keep, aux, zoneout, rec_mask,
                cand_mask)
        out = _direct_scan(args)  # grad mode is off in here: the operator would only redispatch below autograd
        return SCAN(*args) if out is None else out

    setup_context = staticmethod(_scan_setup_context)

    @staticmethod
    def backward(ctx, *grads):
        # Building no graph (create_graph=False: grad mode is off here) and outside torch.func, nothing can
        # differentiate the result: the kernel is called as directly as `direct_entry` allows
        direct = not torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active()
        return _scan_backward_formula(ctx, *grads, bptt=_backward_direct if direct else _ScanBackwardFunction.apply)


# torch.autograd.Function.apply binds every call's arguments to forward's signature (inspect.signature, ~25 us)
# because ScanFunction defines setup_context; with all 16 given positionally that binding changes nothing.
_apply_unbound = super(torch.autograd.Function, ScanFunction).apply
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


def scan_differentiable(*args) -> tuple[Tensor, ...]:
    """ScanFunction.apply(*args), all 16 of the schema's arguments given positionally. Outside torch.func's
    transforms it skips Function.apply's argument binding and does the rest of what it does (dead functorch
    wrappers unwrapped, then autograd's C++ apply); inside them it is ScanFunction.apply itself."""
    if len(args) != 16 or torch._C._are_functorch_transforms_active():
        return ScanFunction.apply(*args)
    # torch._functorch.utils.unwrap_dead_wrappers (tensors a finished transform left wrapped), as a list comprehension
    return _apply_unbound(*[_unwrap_if_dead(a) if isinstance(a, Tensor) else a for a in args])


# ----- vmap: one call per mapped slice -----
def _vmap_by_slices(op, output_count: int):
    def rule(info, in_dims, *args):
        results = []
        for k in range(info.batch_size):
            # in_dims mirrors args: an int for a mapped tensor, None (or a list of None) for the rest
            sliced = [a.select(d, k) if isinstance(d, int) else a for a, d in zip(args, in_dims)]
            results.append(op(*sliced))
        return tuple(torch.stack([r[j] for r in results]) for j in range(output_count)), (0,) * output_count

    return rule


torch.library.register_vmap("gatedrnn::scan", _vmap_by_slices(SCAN, 6))
torch.library.register_vmap("gatedrnn::scan_backward", _vmap_by_slices(SCAN_BACKWARD, 9))
