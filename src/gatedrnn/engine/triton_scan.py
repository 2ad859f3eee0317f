"""The GPU engine: one layer in one direction, with the pointwise math of each step in a Triton kernel
(`gatedrnn.engine.triton_cells`) and every GEMM in torch (cuBLAS on CUDA), after haste's design:

    forward:  pre_x = W_ih x + b_ih for all steps, one GEMM (autograd differentiates it)   (T, B, G·H)
              per step: pre_h = W_hh (h ⊙ m) (GEMM), the cell kernel, the projection h = W_hr h′ (LSTMP)
    backward: per step, in reverse: the cell's backward kernel, dh = d_pre_h W_hh (GEMM)
              after the loop: dW_hh, dW_hr and db_hh, each one GEMM or sum over all steps; d_pre_x goes back
              to x, W_ih and b_ih through autograd's GEMMs

A step costs two launches where nothing else is asked (the GEMM and the kernel; a recurrent mask, zoneout or the
projection add one or two each): the state lives in the output sequences themselves (h in y, c in the saved c),
every GEMM writes into its buffer (`out=`), b_hh joins pre_x before the loop (but for the GRU, whose b_hn sits
inside r ⊙ (·)), and the backward's carries alternate between two buffers. Inside the loop a packed batch runs
forward in time only, its rows a shrinking prefix; `run_layer_triton` turns a packed reverse direction into a
forward one by reversing each sequence within its length.

`run_layer_triton` keeps the `ScanResult` contract of `gatedrnn.engine.scan.scan_reference` (packed batch sizes,
reverse, traces, zoneout, recurrent and candidate dropout masks). Zoneout mixes and the recurrent mask are torch
ops around the kernels. The backward is hand-written (its gradients are checked against the reference scan) and
is not itself differentiable: double backward raises, naming GATEDRNN_BACKEND=reference.

Shapes: T steps, B batch, I input, H hidden, P size of h (proj_size or H), G gate count.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import triton

from gatedrnn.cells import CELL_SPECS, LayerWeights
from gatedrnn.cells.layernorm import LAYER_NORM_EPS, layer_norm
from gatedrnn.cells.lstm_variants import GREFF_VARIANTS, GreffVariant
from gatedrnn.engine import triton_cells as kernels
from gatedrnn.engine.noise import LayerNoise
from gatedrnn.engine.scan import ScanResult



def _peephole_flags(variant: GreffVariant) -> dict:
    """The constexpr flags of `triton_cells.peephole_lstm_*` for one of Greff et al.'s variants."""
    return {"I_GATE": variant.input_gate, "F_GATE": variant.forget_gate, "O_GATE": variant.output_gate,
            "COUPLED": variant.coupled, "INPUT_ACT": variant.input_activation,
            "OUTPUT_ACT": variant.output_activation}


# The cells with a Triton kernel: name -> (the kernel family, its constexpr flags). Greff et al.'s NP is torch.nn's
# cell.
KERNELS: dict[str, tuple[str, dict]] = {
    "lstm": ("lstm", {}), "lstm_np": ("lstm", {}), "gru": ("gru", {}), "rnn_tanh": ("rnn", {"RELU": False}),
    "rnn_relu": ("rnn", {"RELU": True}), "layernorm_lstm": ("layernorm_lstm", {}),
    "layernorm_gru": ("layernorm_gru", {}),
    **{f"lstm_{name}": ("peephole", _peephole_flags(variant)) for name, variant in GREFF_VARIANTS.items()
       if variant.peepholes and not variant.gate_recurrence},
    # FGR: the vanilla peephole kernels; the loop's GEMM reads [h | a] with W_hh = [W_hh | R] (its kernel_weights)
    "lstm_fgr": ("fgr", _peephole_flags(GREFF_VARIANTS["peephole"])),
    # the sLSTM: its block-diagonal R as the dense W_hh (its kernel_weights), the state [c | n | m]
    "slstm": ("slstm", {"EXP_FORGET": False}), "slstm_exp": ("slstm", {"EXP_FORGET": True}),
}
_WITH_C = ("lstm", "layernorm_lstm", "peephole", "fgr", "slstm")  # the families with a cell state operand
_OWN_PRE_H = ("gru", "layernorm_lstm", "layernorm_gru")  # W_hh h saved per step, its gradient its own buffer
_FGR_GATES = [0, 1, 3]  # FGR's a = [i | f | o]: the gate blocks the next step reads
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class _Config(NamedTuple):
    cell: str
    batch_sizes: tuple[int, ...]  # () for full sequences; else forward in time (see the module docstring)
    reverse: bool  # only for full sequences


def _check_rows(name: str, args: tuple) -> None:
    # the kernels index rows as contiguous (B, ·) blocks: a strided view would be read wrong, silently
    for k, arg in enumerate(args):
        if isinstance(arg, Tensor) and not arg.is_contiguous():
            raise RuntimeError(f"gatedrnn's GPU engine passed a non-contiguous operand (#{k}, shape "
                               f"{tuple(arg.shape)}, strides {arg.stride()}) to {name}: an engine bug, please report")


def _launch(name: str, elements: int, *args, **flags) -> None:
    _check_rows(name, args)
    getattr(kernels, name)[kernels.grid(elements)](*args, elements, **flags, BLOCK=kernels.BLOCK)


def _launch_rows(name: str, rows: int, hidden: int, *args, **flags) -> None:
    """A kernel with one program per row (row reductions: LayerNorm); more warps for wide rows, which hold several
    (BLOCK_H,) blocks live."""
    _check_rows(name, args)
    block = triton.next_power_of_2(hidden)
    getattr(kernels, name)[(rows,)](*args, **flags, BLOCK_H=block, num_warps=min(16, max(4, block // 256)))


class TritonScan(torch.autograd.Function):
    """The time loop; forward saves what the backward kernels read (`_forward`'s buffers)."""

    @staticmethod
    def forward(ctx, config: _Config, pre_x: Tensor, h0: Tensor, c0: Optional[Tensor], w_hh: Tensor,
                b_hh: Optional[Tensor], w_hr: Optional[Tensor], zoneout: Optional[Tensor], mask: Optional[Tensor],
                candidate: Optional[Tensor], *aux: Tensor):
        y, h_n, c_n, saved = _forward(config, pre_x, h0, c0, w_hh, b_hh, w_hr, zoneout, mask, candidate, aux)
        ctx.config = config
        ctx.has = (c0 is not None, b_hh is not None, len(aux))
        ctx.save_for_backward(h0, c0, w_hh, w_hr, zoneout, mask, candidate, *aux, y, *saved.values())
        ctx.saved_names = tuple(saved)
        # what traces read: the gates (the RNN has none: its "gates" buffer may be y itself) and the states after h
        gates = saved["gates"] if KERNELS[config.cell][0] != "rnn" else y.new_empty(0)
        c_trace = saved.get("c_trace", saved.get("c_state"))
        ctx.mark_non_differentiable(gates, *(() if c_trace is None else (c_trace,)))
        return y, h_n, c_n, gates, c_trace

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, _dgates, _dc_trace):
        h0, c0, w_hh, w_hr, zoneout, mask, candidate, *rest = ctx.saved_tensors
        has_c, has_b_hh, aux_count = ctx.has
        aux, y, rest = tuple(rest[:aux_count]), rest[aux_count], rest[aux_count + 1:]
        saved = dict(zip(ctx.saved_names, rest))
        grads = _TritonScanBackward.apply(ctx.config, h0, c0, w_hh, w_hr, zoneout, mask, candidate, aux, y, saved,
                                          dy, dh_n, dc_n if has_c else None)
        d_pre_x, dh0, dc0, dw_hh, db_hh, dw_hr, *d_aux = grads
        needs = ctx.needs_input_grad
        keep = lambda grad, k, present=True: grad if present and needs[k] else None  # noqa: E731
        return (None, keep(d_pre_x, 1), keep(dh0, 2), keep(dc0, 3, has_c), keep(dw_hh, 4), keep(db_hh, 5, has_b_hh),
                keep(dw_hr, 6), None, None, None, *(keep(d, 10 + k) for k, d in enumerate(d_aux)))


class _TritonScanBackward(torch.autograd.Function):
    """`_backward` as TritonScan's backward calls it: an error naming the way out if anything differentiates it
    (double backward, create_graph=True), where the first-order gradients are still given."""

    @staticmethod
    def forward(ctx, *args):
        return _backward(*args)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "double backward (create_graph=True, e.g. a gradient penalty) through gatedrnn's GPU engine is not "
            "supported: its backward is hand-written and not itself differentiable. Set GATEDRNN_BACKEND=reference, "
            "whose time loop autograd differentiates to any order.")


def _sizes(config: _Config, pre_x: Tensor, out_size: int) -> tuple[str, dict, int, int, int, int]:
    """(family, flags, T, B, H, the width of the cell-state operand: H, 3H for the sLSTM's [c | n | m])."""
    family, flags = KERNELS[config.cell]
    steps, batch, gate_rows = pre_x.shape
    hidden = gate_rows // CELL_SPECS[config.cell].gate_count
    return family, flags, steps, batch, hidden, 3 * hidden if family == "slstm" else hidden


def _order(config: _Config, steps: int) -> list[tuple[int, Optional[int], int]]:
    """The forward loop's steps: (t, the step before it or None for the first, the rows active at t)."""
    times = list(range(steps - 1, -1, -1) if config.reverse else range(steps))
    rows = [int(b) for b in config.batch_sizes] if config.batch_sizes else None
    return [(t, times[k - 1] if k else None, rows[t] if rows else -1) for k, t in enumerate(times)]


def _per_step(seq: Optional[Tensor]) -> Optional[tuple[Tensor, ...]]:
    """seq (T, B, ·) as T views (B, ·), made in one call."""
    return None if seq is None else seq.unbind(0)


def _keep(view: Tensor) -> Tensor:
    return view


def _fgr_gates(gates: Tensor) -> Tensor:
    """FGR's a = [i | f | o] from gate activations (..., 4H) -> (..., 3H)."""
    shape = gates.shape
    return gates.view(*shape[:-1], 4, shape[-1] // 4)[..., _FGR_GATES, :].reshape(*shape[:-1], 3 * shape[-1] // 4)


def _forward(config: _Config, pre_x, h0, c0, w_hh, b_hh, w_hr, zoneout, mask, candidate, aux=()):
    """The forward loop over pre_x = W_ih x + b_ih (+ b_hh but for the GRU) (T, B, G·H). Returns y (T, B, P),
    h_n (B, P), c_n (B, S) or None, and the saved buffers, each (T, B, ·): gates (G·H) (the RNN's: its h before
    zoneout), and by cell: c_next (S) (the cell's new c, [c | n | m] for the sLSTM), c_state (S) (the state the next
    step reads: c_next, or c after zoneout), pre_h (G·H) (the GRU's W_hh h + b_hh; the LayerNorm cells' W_hh h),
    stats (the LayerNorm cells' means and 1/σ), extra (2H) (the sLSTM's branches), h_raw (H) (LSTMP's o ⊙ tanh(c)).
    h is read from y (the state after each step) and c from c_state; FGR's a from gates. aux: the cell's vector
    parameters (`run_layer_triton`). FGR's c0 and c_n are [c | a] (B, 4H), as the C++ engine's state operand."""
    out_size = h0.shape[1]
    family, flags, steps, batch, hidden, width = _sizes(config, pre_x, out_size)
    gate_rows = pre_x.shape[2]
    like = pre_x  # every buffer takes its dtype and device
    upcast = like.dtype in (torch.float16, torch.bfloat16)
    packed = bool(config.batch_sizes)
    pre_x = pre_x.contiguous()
    new = like.new_zeros if packed else like.new_empty  # packed: inactive rows stay zero
    y = new(steps, batch, out_size)
    saved = {"gates": new(steps, batch, gate_rows) if family != "rnn" else None}
    fgr = family == "fgr"
    a0 = None
    if fgr:
        c0, a0 = c0[:, :hidden].contiguous(), c0[:, hidden:].contiguous()  # (B, H), (B, 3H)
    if family in _WITH_C:
        saved["c_next"] = new(steps, batch, width)
        saved["c_state"] = new(steps, batch, width) if zoneout is not None else saved["c_next"]
    if family in _OWN_PRE_H:
        saved["pre_h"] = new(steps, batch, gate_rows)
    if family in ("layernorm_lstm", "layernorm_gru"):  # their LayerNorms' means and 1/σ, in the compute type
        saved["stats"] = new(steps, batch, 4 if family == "layernorm_lstm" else 2,
                             dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)
    if family == "slstm":
        saved["extra"] = new(steps, batch, 2 * hidden)
    if w_hr is not None:
        saved["h_raw"] = new(steps, batch, hidden)
    if family == "rnn":  # its "gates" are its h before zoneout, which its backward reads
        saved["gates"] = y if zoneout is None else new(steps, batch, hidden)
    scratch_pre_h = like.new_empty(batch, gate_rows) if family not in _OWN_PRE_H else None
    scratch_h = like.new_empty(batch, hidden) if zoneout is not None and family != "rnn" else None
    w_hh_t, w_hr_t = w_hh.t(), None if w_hr is None else w_hr.t()
    c_state, gates_all = saved.get("c_state"), saved["gates"]
    # every step's views, made once: indexing a tensor costs microseconds of Python, a list index nanoseconds
    Y, PX, GATES = _per_step(y), _per_step(pre_x), _per_step(gates_all)
    C_NEXT, C_STATE, PRE_H = _per_step(saved.get("c_next")), _per_step(c_state), _per_step(saved.get("pre_h"))
    STATS, EXTRA, H_RAW = _per_step(saved.get("stats")), _per_step(saved.get("extra")), _per_step(saved.get("h_raw"))
    ZONEOUT, CAND = _per_step(zoneout), _per_step(candidate)
    for t, before, rows in _order(config, steps):
        rows = batch if rows < 0 else rows
        cut = _keep if rows == batch else (lambda view, rows=rows: view[:rows])  # noqa: E731 (a packed step)
        elements = rows * hidden
        h_prev = cut(h0) if before is None else cut(Y[before])
        c_prev = None if c0 is None else (cut(c0) if before is None else cut(C_STATE[before]))
        read = h_prev if mask is None else h_prev * cut(mask)
        if fgr:  # the GEMM reads [h ⊙ m | a]: R_g a joins the i, f, o rows
            read = torch.cat([read, cut(a0) if before is None else _fgr_gates(cut(GATES[before]))], dim=1)
        pre_h = cut(PRE_H[t]) if family in _OWN_PRE_H else cut(scratch_pre_h)
        if b_hh is not None:
            torch.addmm(b_hh, read, w_hh_t, out=pre_h)
        else:
            torch.mm(read, w_hh_t, out=pre_h)
        gates = cut(GATES[t])
        cand = pre_x if candidate is None else cut(CAND[t]).contiguous()
        c_new = cut(C_NEXT[t]) if family in _WITH_C else None
        # where the cell's h goes: y itself, or on to the projection or the zoneout mix
        h_cell = (cut(H_RAW[t]) if w_hr is not None else gates if family == "rnn"
                  else cut(scratch_h) if zoneout is not None else cut(Y[t]))
        px = cut(PX[t])
        if family == "lstm":
            _launch("lstm_forward", elements, px, pre_h, c_prev, cand, gates, c_new, h_cell, hidden,
                    HAS_CANDIDATE=candidate is not None, UPCAST=upcast)
        elif family in ("peephole", "fgr"):
            _launch("peephole_lstm_forward", elements, px, pre_h, c_prev, *aux, cand, gates, c_new, h_cell, hidden,
                    **flags, HAS_CANDIDATE=candidate is not None, UPCAST=upcast)
        elif family == "slstm":
            _launch("slstm_forward", elements, px, pre_h, c_prev, gates, cut(EXTRA[t]), c_new, h_cell, hidden,
                    **flags, UPCAST=upcast)
        elif family == "layernorm_lstm":
            _launch_rows("layernorm_lstm_forward", rows, hidden, px, pre_h, c_prev, *aux, gates, c_new, h_cell,
                         cut(STATS[t]), hidden, LAYER_NORM_EPS, UPCAST=upcast)
        elif family == "layernorm_gru":
            _launch_rows("layernorm_gru_forward", rows, hidden, px, pre_h, h_prev, aux[0], aux[-1], gates, h_cell,
                         cut(STATS[t]), hidden, LAYER_NORM_EPS, HAS_BIAS=len(aux) == 2, UPCAST=upcast)
        elif family == "gru":
            _launch("gru_forward", elements, px, pre_h, h_prev, cand, gates, h_cell, hidden,
                    HAS_CANDIDATE=candidate is not None, UPCAST=upcast)
        else:
            _launch("rnn_forward", elements, px, pre_h, h_cell, **flags, UPCAST=upcast)
        if zoneout is None:
            if w_hr is not None:  # h = W_hr h′
                torch.mm(h_cell, w_hr_t, out=cut(Y[t]))
        else:  # d ⊙ old + (1 − d) ⊙ new, per state part (`engine.scan.zone_out`)
            keep = cut(ZONEOUT[t])
            h_new = h_cell if w_hr is None else h_cell @ w_hr_t
            torch.lerp(h_new, h_prev, keep[:, :out_size], out=cut(Y[t]))
            if c_new is not None:
                torch.lerp(c_new, c_prev, keep[:, out_size:], out=cut(C_STATE[t]))
    # the final states: the last step's, or for a packed batch each row's own last step
    if packed:
        last = torch.tensor([int(b) for b in config.batch_sizes], device=y.device)
        lengths = (torch.arange(batch, device=y.device)[None, :] < last[:, None]).sum(0)  # (B,)
        rows_of = torch.arange(batch, device=y.device)
        final = lambda seq: seq[lengths - 1, rows_of]  # noqa: E731  (B, ·)
    else:
        final = lambda seq: seq[0 if config.reverse else steps - 1].clone()  # noqa: E731
    h_n = final(y)
    c_n = None if c0 is None else final(c_state)
    if fgr:
        c_n = torch.cat([c_n, _fgr_gates(final(gates_all))], dim=1)
        saved["c_trace"] = torch.cat([c_state, _fgr_gates(gates_all)], dim=2)  # [c | a] after each step
    return y, h_n, c_n, saved


def _previous(seq: Tensor, first: Tensor, reverse: bool) -> Tensor:
    """What each step read of a state kept in `seq` (T, B, ·): seq shifted by one step, `first` (B, ·) at the first
    step (the start of a packed row is step 0: its rows are a shrinking prefix)."""
    if reverse:
        return torch.cat([seq[1:], first[None]])
    return torch.cat([first[None], seq[:-1]])


def _backward(config: _Config, h0, c0, w_hh, w_hr, zoneout, mask, candidate, aux, y, saved, dy, dh_n, dc_n):
    """The backward loop, mirroring `_forward` step by step in reverse. Returns (d_pre_x (T, B, G·H), dh0 (B, P),
    dc0 (B, S) (FGR's (B, 4H): [dc | da]) or None, dW_hh, db_hh, dW_hr or None, *d_aux (the gradients of aux))."""
    steps, batch, out_size = y.shape
    gate_rows = w_hh.shape[0]
    family, flags = KERNELS[config.cell]
    hidden = gate_rows // CELL_SPECS[config.cell].gate_count
    width = 3 * hidden if family == "slstm" else hidden
    like = y  # every buffer takes its dtype and device
    upcast = like.dtype in (torch.float16, torch.bfloat16)
    packed = bool(config.batch_sizes)
    new = like.new_zeros if packed else like.new_empty  # packed: zero at inactive rows, which the GEMMs then skip
    d_pre_x = new(steps, batch, gate_rows)
    d_pre_h = new(steps, batch, gate_rows) if family in _OWN_PRE_H else d_pre_x  # the GRU's h_n, the LayerNorms
    # each step's and row's part of the gradient of each aux parameter, summed after the loop
    aux_parts = tuple(new(steps, batch, a.numel()) for a in aux)
    dh_proj = new(steps, batch, out_size) if w_hr is not None else None  # the gradient of h = W_hr h′, per step
    gates_all, c_state = saved["gates"], saved.get("c_state")
    fgr = family == "fgr"
    a0 = None
    if fgr:
        c0, a0 = c0[:, :hidden].contiguous(), c0[:, hidden:].contiguous()  # (B, H), (B, 3H): the kernels' rows
    # the carries into each step, alternating between two buffers; both start as the final states' gradients, so a
    # packed row starts from them at its own last step (its rows untouched until then)
    start_h = like.new_zeros(batch, out_size) if dh_n is None else dh_n
    dh_bufs = [start_h.contiguous().clone(), start_h.contiguous().clone()]
    dc_bufs = da_bufs = None
    if family in _WITH_C:
        start_c = like.new_zeros(batch, width) if dc_n is None else dc_n[:, :width]
        dc_bufs = [start_c.contiguous().clone(), start_c.contiguous().clone()]
    if fgr:
        start_a = like.new_zeros(batch, 3 * hidden) if dc_n is None else dc_n[:, hidden:]
        da_bufs = [start_a.contiguous().clone(), start_a.contiguous().clone()]
    scratch_dh = like.new_empty(batch, out_size)
    # every step's views, made once (see `_forward`)
    Y, DY, GATES, C_NEXT, C_STATE = (_per_step(seq) for seq in (y, dy, gates_all, saved.get("c_next"), c_state))
    PRE_H, STATS, EXTRA = _per_step(saved.get("pre_h")), _per_step(saved.get("stats")), _per_step(saved.get("extra"))
    D_PRE_X, D_PRE_H, DH_PROJ = _per_step(d_pre_x), _per_step(d_pre_h), _per_step(dh_proj)
    ZONEOUT, CAND, PARTS = _per_step(zoneout), _per_step(candidate), [_per_step(part) for part in aux_parts]
    for j, (t, before, rows) in enumerate(reversed(_order(config, steps))):
        rows = batch if rows < 0 else rows
        cut = _keep if rows == batch else (lambda view, rows=rows: view[:rows])  # noqa: E731 (a packed step)
        elements = rows * hidden
        dh_in, dh_out = cut(dh_bufs[j % 2]), cut(dh_bufs[(j + 1) % 2])
        dh_t = dh_in if dy is None else torch.add(dh_in, cut(DY[t]), out=cut(scratch_dh))  # y[t]: h after t
        h_prev = cut(h0) if before is None else cut(Y[before])
        c_prev = None if c0 is None else (cut(c0) if before is None else cut(C_STATE[before]))
        dh_old = dc_old = None
        if zoneout is not None:  # h = d ⊙ old + (1 − d) ⊙ new
            keep = cut(ZONEOUT[t])
            dh_old, dh_t = keep[:, :out_size] * dh_t, (1 - keep[:, :out_size]) * dh_t
        dc_t = dc_out = None
        if dc_bufs is not None:
            dc_t, dc_out = cut(dc_bufs[j % 2]), cut(dc_bufs[(j + 1) % 2])
            if zoneout is not None:
                dc_old, dc_t = keep[:, out_size:] * dc_t, (1 - keep[:, out_size:]) * dc_t
        if w_hr is not None:  # h = W_hr h′
            cut(DH_PROJ[t]).copy_(dh_t)
            dh_t = dh_t @ w_hr
        dh_t = dh_t.contiguous()
        gates, d_pre_x_t, d_pre_h_t = cut(GATES[t]), cut(D_PRE_X[t]), cut(D_PRE_H[t])
        cand = d_pre_x if candidate is None else cut(CAND[t]).contiguous()
        parts = [cut(part[t]) for part in PARTS]
        dh_direct = None  # the GRUs' gradient through z ⊙ h
        if family == "lstm":
            _launch("lstm_backward", elements, dh_t, dc_t, gates, c_prev, cut(C_NEXT[t]), cand, d_pre_x_t, dc_out,
                    hidden, HAS_CANDIDATE=candidate is not None, UPCAST=upcast)
        elif family in ("peephole", "fgr"):
            _launch("peephole_lstm_backward", elements, dh_t, dc_t, cut(da_bufs[j % 2]) if fgr else dc_t, gates,
                    c_prev, cut(C_NEXT[t]), *aux, cand, d_pre_x_t, dc_out, *parts, hidden, **flags,
                    GATE_RECURRENCE=fgr, HAS_CANDIDATE=candidate is not None, UPCAST=upcast)
        elif family == "slstm":
            _launch("slstm_backward", elements, dh_t, dc_t, gates, cut(EXTRA[t]), cut(C_NEXT[t]), c_prev, d_pre_x_t,
                    dc_out, hidden, UPCAST=upcast)
        elif family == "layernorm_lstm":
            _launch_rows("layernorm_lstm_backward", rows, hidden, dh_t, dc_t, gates, c_prev, cut(C_NEXT[t]),
                         cut(PRE_H[t]), cut(STATS[t]), *aux, d_pre_x_t, d_pre_h_t, dc_out, *parts, hidden,
                         UPCAST=upcast)
        elif family == "layernorm_gru":
            dh_direct = like.new_empty(rows, hidden)
            _launch_rows("layernorm_gru_backward", rows, hidden, dh_t, gates, h_prev, cut(PRE_H[t]), cut(STATS[t]),
                         aux[0], aux[-1], d_pre_x_t, d_pre_h_t, dh_direct, parts[0], parts[-1], hidden,
                         HAS_BIAS=len(aux) == 2, UPCAST=upcast)
        elif family == "gru":
            dh_direct = like.new_empty(rows, hidden)
            _launch("gru_backward", elements, dh_t, gates, cut(PRE_H[t]), h_prev, cand, d_pre_x_t, d_pre_h_t,
                    dh_direct, hidden, HAS_CANDIDATE=candidate is not None, UPCAST=upcast)
        else:
            _launch("rnn_backward", elements, dh_t, gates, d_pre_x_t, **flags, UPCAST=upcast)
        if dc_old is not None:
            dc_out += dc_old
        # pre_h = W_hh (h ⊙ m) (+ b_hh): the carry into the step before
        if fgr:  # FGR's GEMM read [h ⊙ m | a]
            d_read = d_pre_h_t @ w_hh
            dh_out.copy_(d_read[:, :out_size])
            cut(da_bufs[(j + 1) % 2]).copy_(d_read[:, out_size:])
        elif dh_direct is not None and mask is None:
            torch.addmm(dh_direct, d_pre_h_t, w_hh, out=dh_out)
            dh_direct = None
        else:
            torch.mm(d_pre_h_t, w_hh, out=dh_out)
        if mask is not None:
            dh_out *= cut(mask)
        if dh_direct is not None:
            dh_out += dh_direct
        if dh_old is not None:
            dh_out += dh_old
    final = steps % 2  # the buffers the last step wrote
    h_read = _previous(y, h0, config.reverse)  # (T, B, P): what each step's GEMM read
    if mask is not None:
        h_read = h_read * mask
    if fgr:
        h_read = torch.cat([h_read, _previous(_fgr_gates(gates_all), a0, config.reverse)], dim=2)  # (T, B, P + 3H)
    dw_hh = d_pre_h.reshape(-1, gate_rows).t() @ h_read.reshape(-1, h_read.shape[2])
    db_hh = d_pre_h.sum((0, 1))
    dw_hr = None
    if w_hr is not None:
        dw_hr = dh_proj.reshape(-1, out_size).t() @ saved["h_raw"].reshape(-1, hidden)
    dc0 = None if dc_bufs is None else dc_bufs[final]
    if fgr:
        dc0 = torch.cat([dc0, da_bufs[final]], dim=1)
    d_aux = [part.sum((0, 1)) for part in aux_parts]
    return (d_pre_x, dh_bufs[final], dc0, dw_hh, db_hh, dw_hr, *d_aux)


def _reverse_within_lengths(batch_sizes: Sequence[int], device) -> Tensor:
    """For a packed batch (sorted, `batch_sizes` non-increasing): the step index (T, B) that reverses each row's
    sequence within its own length (t -> length − 1 − t; padded steps stay), an involution. A reverse direction
    becomes a forward one on the sequences so permuted."""
    sizes = torch.tensor([int(b) for b in batch_sizes])
    steps, batch = len(batch_sizes), int(sizes[0])
    lengths = (torch.arange(batch)[None, :] < sizes[:, None]).sum(0)  # (B,)
    t = torch.arange(steps)[:, None]
    return torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t).to(device)  # (T, B)


def _permute_steps(seq: Optional[Tensor], index: Optional[Tensor]) -> Optional[Tensor]:
    """seq (T, B, ·) with seq[t, b] taken from seq[index[t, b], b]."""
    if seq is None or index is None:
        return seq
    return seq.gather(0, index[:, :, None].expand(-1, -1, seq.shape[2]))


def run_layer_triton(
    cell: str,
    x: Tensor,
    state0: tuple[Tensor, ...],
    weights: LayerWeights,
    batch_sizes: Optional[Sequence[int]] = None,
    reverse: bool = False,
    trace: bool = False,
    noise: Optional[LayerNoise] = None,
) -> ScanResult:
    """`scan_reference`'s contract on the Triton kernels: x (T, B, I) -> ScanResult(y (T, B, P), state, trace)."""
    if x.is_cuda:  # Triton launches on the current device, which need not be x's
        with torch.cuda.device(x.device):
            return _run_layer(cell, x, state0, weights, batch_sizes, reverse, trace, noise)
    return _run_layer(cell, x, state0, weights, batch_sizes, reverse, trace, noise)


def _run_layer(cell, x, state0, weights, batch_sizes, reverse, trace, noise) -> ScanResult:
    from gatedrnn.engine.fused import _trace, _TraceHasNoGradient

    spec = CELL_SPECS[cell]
    zoneout, mask, candidate = noise if noise is not None else (None, None, None)
    # a packed reverse direction: forward on each row's reversed sequence (`_reverse_within_lengths`)
    flip = _reverse_within_lengths(batch_sizes, x.device) if batch_sizes is not None and reverse else None
    if flip is not None:
        x, zoneout, candidate = (_permute_steps(t, flip) for t in (x, zoneout, candidate))
        reverse = False
    config = _Config(cell, tuple(int(b) for b in batch_sizes) if batch_sizes is not None else (), reverse)
    c0 = state0[1] if spec.has_cell_state else None
    aux = ()
    family = KERNELS[cell][0]
    if spec.kernel_weights is not None:  # autograd takes the kernel's dW_hh back to the cell's own parameters
        weights = spec.kernel_weights(weights)  # FGR: W_hh = [W_hh | R]; the sLSTM: its R dense, b_hh zeros
        c0 = torch.cat(state0[1:], dim=1)  # the state operand: FGR's [c | a] (B, 4H), the sLSTM's [c | n | m]
    w_ih, w_hh, b_ih, b_hh, w_hr = weights[:5]
    if family == "layernorm_lstm":  # pre_x = LN(W_ih x; γ_ih) + b_ih + b_hh (the LN of W_hh h has no bias)
        gamma_ih, *aux = weights.extra
        pre_x = layer_norm(F.linear(x, w_ih), gamma_ih)
        pre_x = pre_x if b_ih is None else pre_x + (b_ih + b_hh)
        b_hh = None
    elif family == "layernorm_gru":  # pre_x = LN(W_ih x; γ_ih) + b_ih; b_hh joins γ_hh in the kernel (after LN)
        gamma_ih, gamma_hh = weights.extra
        pre_x = layer_norm(F.linear(x, w_ih), gamma_ih)
        pre_x = pre_x if b_ih is None else pre_x + b_ih
        aux = (gamma_hh,) if b_hh is None else (gamma_hh, b_hh)
        b_hh = None
    else:
        aux = weights.extra  # the peepholes
        pre_x = F.linear(x, w_ih, b_ih)  # (T, B, G·H): every step's input projection in one GEMM
        if b_hh is not None and family != "gru":  # pre_x + pre_h is all the cell reads: b_hh joins pre_x once
            pre_x = pre_x + b_hh
            b_hh = None
    y, h_n, c_n, gates, c_trace = TritonScan.apply(config, pre_x, state0[0], c0, w_hh, b_hh, w_hr, zoneout, mask,
                                                   candidate, *aux)
    if c_n is None:
        state = (h_n,)
    else:  # FGR's [c | a] and the sLSTM's [c | n | m] split back into their states
        state = (h_n, *c_n.split(spec.state_sizes(w_hh.shape[0] // spec.gate_count), dim=1))
    y_out = _permute_steps(y, flip)
    if not trace:
        return ScanResult(y_out, state, None)
    if family == "rnn":
        traced = spec.trace_type(y_out.clone())
    else:
        gates, c_trace = _permute_steps(gates, flip), _permute_steps(c_trace, flip)
        traced = _trace(cell, y_out, gates, c_trace if c_trace is not None else gates.new_empty(0))
    if y.requires_grad:  # h (y's clone) carries y's gradient; the rest come from saved buffers and carry none
        traced = type(traced)(*(_TraceHasNoGradient.apply(y, t) if t.grad_fn is None else t for t in traced))
    return ScanResult(y_out, state, traced)
