"""The GPU engine's time loop: one layer in one direction over W_ih x (computed before it), the pointwise math of each
step in a Triton kernel (`gatedrnn.engine.triton_cells`) and every GEMM in torch (cuBLAS on CUDA), after haste:

    forward:  per step: pre_h = W_hh (h ⊙ m) (GEMM), the cell kernel, the projection h = W_hr h′ (LSTMP)
    backward: per step, in reverse: the cell's backward kernel, dh = d_pre_h W_hh (GEMM, + the step before's dy)
              after the loop: dW_hh, dW_hr and db_hh, each one GEMM or sum over all steps

Where nothing else is asked, a step is two launches forward (the GEMM, the kernel) and two backward: the state
lives in the output sequences themselves (h in y, c in the saved c), every GEMM writes into its buffer (`out=`),
the backward's carries alternate between two buffers and take the next dy in the GEMM's epilogue. A recurrent
mask, zoneout or the projection add a launch or two. Every step's views are made once per call (`unbind`):
indexing a tensor costs microseconds of Python, which set the pace of a small step.

A packed batch runs forward in time only here (its active rows a shrinking prefix); `gatedrnn.engine.triton_scan`
turns a packed reverse direction into a forward one. y is saved for the backward (each step's h is the next
step's input), so an in-place change to the output before backward raises, as with cuDNN.

Shapes: T steps, B batch, H hidden, P size of h (proj_size or H), G gate count, S the cell-state operand's width
(H; 3H for the sLSTM's [c | n | m]; FGR's state [c | a] is (B, 4H) at the boundary, c (B, H) inside).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import triton
from torch import Tensor

from gatedrnn.cells import CELL_SPECS
from gatedrnn.cells.layernorm import LAYER_NORM_EPS
from gatedrnn.cells.lstm_variants import GREFF_VARIANTS, GreffVariant
from gatedrnn.engine import triton_cells, triton_layernorm, triton_variants

# every step kernel by name
_KERNEL_FUNCTIONS = {name: getattr(module, name) for module in (triton_cells, triton_variants, triton_layernorm)
                     for name in module.__all__}


def _peephole_flags(variant: GreffVariant) -> dict:
    """The constexpr flags of `triton_variants.peephole_lstm_*` for one of Greff et al.'s variants, as 0 or 1 (the
    kernels count gate blocks with them)."""
    return {"I_GATE": int(variant.input_gate), "F_GATE": int(variant.forget_gate),
            "O_GATE": int(variant.output_gate), "COUPLED": int(variant.coupled),
            "INPUT_ACT": int(variant.input_activation), "OUTPUT_ACT": int(variant.output_activation)}


# The cells with a Triton kernel: name -> (the kernel family, its constexpr flags). Greff et al.'s NP is torch.nn's
# cell; FGR runs the vanilla peephole kernels, its gate recurrence R_g a in the step's GEMM over [h | a] (W_hh =
# [W_hh | R], its kernel_weights); the sLSTM's block-diagonal R is the dense W_hh (its kernel_weights).
KERNELS: dict[str, tuple[str, dict]] = {
    "lstm": ("lstm", {}), "lstm_np": ("lstm", {}), "gru": ("gru", {}), "rnn_tanh": ("rnn", {"RELU": False}),
    "rnn_relu": ("rnn", {"RELU": True}), "layernorm_lstm": ("layernorm_lstm", {}),
    "layernorm_gru": ("layernorm_gru", {}),
    **{f"lstm_{name}": ("peephole", _peephole_flags(variant)) for name, variant in GREFF_VARIANTS.items()
       if variant.peepholes and not variant.gate_recurrence},
    "lstm_fgr": ("fgr", _peephole_flags(GREFF_VARIANTS["peephole"])),
    "slstm": ("slstm", {"EXP_FORGET": False}), "slstm_exp": ("slstm", {"EXP_FORGET": True}),
}
_WITH_C = ("lstm", "layernorm_lstm", "peephole", "fgr", "slstm")  # the families with a cell-state operand
_OWN_PRE_H = ("gru", "layernorm_lstm", "layernorm_gru")  # W_hh h saved per step, its gradient its own buffer
_DIRECT_DH = ("gru", "layernorm_gru")  # their kernels give h's gradient through z ⊙ h besides the GEMM's


class LoopConfig(NamedTuple):
    """cell: a key of KERNELS; batch_sizes: () for full sequences, else a packed batch's (forward in time only);
    reverse: t = T-1 … 0 (full sequences only); keep: every step's buffers are kept (for the backward or a trace);
    else each lives two steps (a ring of two: inference needs the step before only)."""

    cell: str
    batch_sizes: tuple[int, ...]
    reverse: bool
    keep: bool = True


def _launch(name: str, elements: int, *args, **flags) -> None:
    """An elementwise kernel over `elements` = rows · H, one program per BLOCK of them."""
    _KERNEL_FUNCTIONS[name][triton_cells.grid(elements)](*args, elements, **flags, BLOCK=triton_cells.BLOCK)


def _launch_rows(name: str, rows: int, hidden: int, *args, **flags) -> None:
    """A kernel with one program per row (row reductions: LayerNorm); more warps for wide rows, which hold several
    (BLOCK_H,) blocks live."""
    block = triton.next_power_of_2(hidden)
    _KERNEL_FUNCTIONS[name][(rows,)](*args, **flags, BLOCK_H=block, num_warps=min(16, max(4, block // 256)))


class TritonScan(torch.autograd.Function):
    """The time loop: (config, pre_x (T, B, G·H), h0 (B, P), c0 (B, S) or None, w_hh (G·H, P) (FGR: (G·H, P + 3H)),
    b_hh (G·H,) or None (the GRU's; the other cells' is in pre_x), w_hr (P, H) or None, zoneout (T, B, P [+ H]),
    mask (B, P), candidate (T, B, H) (each or None), *aux (the cell's vector parameters)) -> y (T, B, P), h_n, c_n,
    gates (T, B, G·H), c_state (T, B, S) (the last two for traces; they carry no gradient)."""

    @staticmethod
    def forward(ctx, config: LoopConfig, pre_x: Tensor, h0: Tensor, c0: Optional[Tensor], w_hh: Tensor,
                b_hh: Optional[Tensor], w_hr: Optional[Tensor], zoneout: Optional[Tensor], mask: Optional[Tensor],
                candidate: Optional[Tensor], *aux: Tensor):
        # the kernels read rows as contiguous (B, ·) blocks; the loop's own buffers are, the caller's may not be
        h0, c0, zoneout, mask, candidate = (None if t is None else t.contiguous()
                                            for t in (h0, c0, zoneout, mask, candidate))
        aux = tuple(a.contiguous() for a in aux)
        y, h_n, c_n, saved = _forward(config, pre_x.contiguous(), h0, c0, w_hh, b_hh, w_hr, zoneout, mask, candidate,
                                      aux)
        ctx.config = config
        ctx.has = (c0 is not None, b_hh is not None, len(aux))
        ctx.save_for_backward(h0, c0, w_hh, w_hr, zoneout, mask, candidate, *aux, y, *saved.values())
        ctx.saved_names = tuple(saved)
        # unused outputs' gradients stay None: no zero (T, B, ·) tensors for gates, c_state or an unused y
        ctx.set_materialize_grads(False)
        # the RNN has no gates (its "gates" buffer may be y itself)
        gates = saved["gates"] if KERNELS[config.cell][0] != "rnn" else y.new_empty(0)
        c_state = saved.get("c_state")
        ctx.mark_non_differentiable(gates, *(() if c_state is None else (c_state,)))
        return y, h_n, c_n, gates, c_state

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, _dgates, _dc_state):
        h0, c0, w_hh, w_hr, zoneout, mask, candidate, *rest = ctx.saved_tensors
        has_c, has_b_hh, aux_count = ctx.has
        aux, y, rest = tuple(rest[:aux_count]), rest[aux_count], rest[aux_count + 1:]
        saved = dict(zip(ctx.saved_names, rest))
        grads = _TritonScanBackward.apply(ctx.config, h0, c0, w_hh, w_hr, zoneout, mask, candidate, aux, y, saved,
                                          dy, dh_n, dc_n if has_c else None, has_b_hh)
        d_pre_x, dh0, dc0, dw_hh, db_hh, dw_hr, *d_aux = grads
        needs = ctx.needs_input_grad
        wanted = lambda grad, k, present=True: grad if present and needs[k] else None  # noqa: E731
        return (None, wanted(d_pre_x, 1), wanted(dh0, 2), wanted(dc0, 3, has_c), wanted(dw_hh, 4),
                wanted(db_hh, 5, has_b_hh), wanted(dw_hr, 6), None, None, None,
                *(wanted(d, 10 + k) for k, d in enumerate(d_aux)))


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


def _order(config: LoopConfig, steps: int, batch: int) -> list[tuple[int, Optional[int], int]]:
    """The forward loop's steps: (t, the step before it or None for the first, the rows active at t)."""
    times = list(range(steps - 1, -1, -1) if config.reverse else range(steps))
    rows = [int(b) for b in config.batch_sizes] if config.batch_sizes else [batch] * steps
    return [(t, times[k - 1] if k else None, rows[t]) for k, t in enumerate(times)]


def _per_step(seq: Optional[Tensor], steps: int = 0) -> Optional[list[Tensor]]:
    """seq (T, B, ·) as T views (B, ·), made in one call; a ring (2, B, ·) as `steps` views, step t in slot t % 2
    (two consecutive steps, in either direction, never share a slot)."""
    if seq is None:
        return None
    views = seq.unbind(0)
    return list(views) if not steps or len(views) == steps else [views[t % 2] for t in range(steps)]


def _whole(view: Tensor) -> Tensor:
    """A step's view as it is (every row active)."""
    return view


def _rows_cut(rows: int, batch: int) -> Callable[[Tensor], Tensor]:
    """The rows active at a step, as a function of a (B, ·) view: the view itself, or its first `rows` rows."""
    return _whole if rows == batch else (lambda view: view[:rows])


def fgr_gates(gates: Tensor) -> Tensor:
    """FGR's a = [i | f | o] from gate activations (..., 4H) -> (..., 3H) (slices: no index tensor to copy)."""
    hidden = gates.shape[-1] // 4
    return torch.cat([gates[..., :2 * hidden], gates[..., 3 * hidden:]], dim=-1)


def _forward(config: LoopConfig, pre_x, h0, c0, w_hh, b_hh, w_hr, zoneout, mask, candidate, aux):
    """The forward loop (arguments as `TritonScan`'s). Returns y (T, B, P), h_n (B, P), c_n (B, S) or None, and
    the saved buffers, each (T, B, ·): gates (G·H) (the RNN's: its h before zoneout), and by cell: c_next (S) (the
    cell's new c; the sLSTM's [c | n | m]), c_state (S) (what the next step reads: c_next, or c after zoneout),
    pre_h (G·H) (the GRU's W_hh h + b_hh; the LayerNorm cells' W_hh h), stats (the LayerNorms' means and 1/σ),
    extra (2H) (the sLSTM's branches), h_raw (H) (LSTMP's o ⊙ tanh(c)). h is read back from y and c from c_state;
    FGR's a from gates."""
    assert not (config.reverse and config.batch_sizes), "a packed reverse direction runs forward (triton_scan)"
    family, flags = KERNELS[config.cell]
    steps, batch, gate_rows = pre_x.shape
    hidden = gate_rows // CELL_SPECS[config.cell].gate_count
    out_size = h0.shape[1]
    width = 3 * hidden if family == "slstm" else hidden
    upcast = pre_x.dtype in (torch.float16, torch.bfloat16)
    packed = bool(config.batch_sizes)
    zeros_or_empty = pre_x.new_zeros if packed else pre_x.new_empty  # packed: inactive rows stay zero
    y = zeros_or_empty(steps, batch, out_size)
    span = steps if config.keep else 2  # inference: every buffer but y a ring of two steps

    def per_step(*shape, **options) -> Tensor:
        """A (T or 2, *shape) buffer of every step's (or the last two steps') values."""
        return zeros_or_empty(span, *shape, **options)

    saved = {"gates": per_step(batch, gate_rows) if family != "rnn" else None}
    fgr = family == "fgr"
    a0 = None
    if fgr:
        c0, a0 = c0[:, :hidden].contiguous(), c0[:, hidden:].contiguous()  # (B, H), (B, 3H)
    if family in _WITH_C:
        saved["c_next"] = per_step(batch, width)
        saved["c_state"] = per_step(batch, width) if zoneout is not None else saved["c_next"]
    if family in _OWN_PRE_H:
        saved["pre_h"] = per_step(batch, gate_rows)
    if family in ("layernorm_lstm", "layernorm_gru"):  # in the compute type
        saved["stats"] = per_step(batch, 4 if family == "layernorm_lstm" else 2,
                                  dtype=torch.float64 if pre_x.dtype == torch.float64 else torch.float32)
    if family == "slstm":
        saved["extra"] = per_step(batch, 2 * hidden)
    if w_hr is not None:
        saved["h_raw"] = per_step(batch, hidden)
    if family == "rnn":  # its "gates" are its h before zoneout, which its backward reads
        saved["gates"] = y if zoneout is None else per_step(batch, hidden)
    scratch_pre_h = pre_x.new_empty(batch, gate_rows) if family not in _OWN_PRE_H else None
    scratch_h = pre_x.new_empty(batch, hidden) if zoneout is not None and family != "rnn" else None
    w_hh_t, w_hr_t = w_hh.t(), None if w_hr is None else w_hr.t()
    y_at, pre_x_at, gates_at = _per_step(y), _per_step(pre_x), _per_step(saved["gates"], steps)
    c_next_at, c_state_at = _per_step(saved.get("c_next"), steps), _per_step(saved.get("c_state"), steps)
    pre_h_at, stats_at = _per_step(saved.get("pre_h"), steps), _per_step(saved.get("stats"), steps)
    extra_at, h_raw_at = _per_step(saved.get("extra"), steps), _per_step(saved.get("h_raw"), steps)
    zoneout_at, candidate_at = _per_step(zoneout), _per_step(candidate)
    has_candidate = candidate is not None
    for t, before, rows in _order(config, steps, batch):
        cut = _rows_cut(rows, batch)
        elements = rows * hidden
        h_prev = cut(h0) if before is None else cut(y_at[before])
        c_prev = None if c0 is None else (cut(c0) if before is None else cut(c_state_at[before]))
        read = h_prev if mask is None else h_prev * cut(mask)
        if fgr:  # the GEMM reads [h ⊙ m | a]: R_g a joins the i, f, o rows
            read = torch.cat([read, cut(a0) if before is None else fgr_gates(cut(gates_at[before]))], dim=1)
        pre_h = cut(pre_h_at[t]) if family in _OWN_PRE_H else cut(scratch_pre_h)
        if b_hh is not None:
            torch.addmm(b_hh, read, w_hh_t, out=pre_h)
        else:
            torch.mm(read, w_hh_t, out=pre_h)
        gates, px = cut(gates_at[t]), cut(pre_x_at[t])
        cand = cut(candidate_at[t]) if has_candidate else pre_x  # pre_x: a pointer the kernel never reads
        c_new = cut(c_next_at[t]) if family in _WITH_C else None
        # where the cell's h goes: y itself, or on to the projection or the zoneout mix
        h_cell = (cut(h_raw_at[t]) if w_hr is not None else gates if family == "rnn"
                  else cut(scratch_h) if zoneout is not None else cut(y_at[t]))
        if family == "lstm":
            _launch("lstm_forward", elements, px, pre_h, c_prev, cand, gates, c_new, h_cell, hidden,
                    HAS_CANDIDATE=has_candidate, UPCAST=upcast)
        elif family in ("peephole", "fgr"):
            _launch("peephole_lstm_forward", elements, px, pre_h, c_prev, *aux, cand, gates, c_new, h_cell, hidden,
                    **flags, HAS_CANDIDATE=has_candidate, UPCAST=upcast)
        elif family == "slstm":
            _launch("slstm_forward", elements, px, pre_h, c_prev, gates, cut(extra_at[t]), c_new, h_cell, hidden,
                    **flags, UPCAST=upcast)
        elif family == "layernorm_lstm":
            _launch_rows("layernorm_lstm_forward", rows, hidden, px, pre_h, c_prev, *aux, gates, c_new, h_cell,
                         cut(stats_at[t]), hidden, LAYER_NORM_EPS, UPCAST=upcast)
        elif family == "layernorm_gru":
            _launch_rows("layernorm_gru_forward", rows, hidden, px, pre_h, h_prev, aux[0], aux[-1], gates, h_cell,
                         cut(stats_at[t]), hidden, LAYER_NORM_EPS, HAS_BIAS=len(aux) == 2, UPCAST=upcast)
        elif family == "gru":
            _launch("gru_forward", elements, px, pre_h, h_prev, cand, gates, h_cell, hidden,
                    HAS_CANDIDATE=has_candidate, UPCAST=upcast)
        else:
            _launch("rnn_forward", elements, px, pre_h, h_cell, **flags, UPCAST=upcast)
        if zoneout is None:
            if w_hr is not None:  # h = W_hr h′
                torch.mm(h_cell, w_hr_t, out=cut(y_at[t]))
        else:  # d ⊙ old + (1 − d) ⊙ new, per state part (`engine.scan.zone_out`)
            weights = cut(zoneout_at[t])
            h_new = h_cell if w_hr is None else h_cell @ w_hr_t
            torch.lerp(h_new, h_prev, weights[:, :out_size], out=cut(y_at[t]))
            if c_new is not None:
                torch.lerp(c_new, c_prev, weights[:, out_size:], out=cut(c_state_at[t]))
    h_n = _final(y_at, config)
    c_n = None if c0 is None else _final(c_state_at, config)
    if fgr:
        c_n = torch.cat([c_n, fgr_gates(_final(gates_at, config))], dim=1)
    return y, h_n, c_n, saved


def _final(views: list[Tensor], config: LoopConfig) -> Tensor:
    """The state after each row's last step, from a buffer's per-step views (B, ·): the last step's, or for a
    packed batch (its rows a shrinking prefix) the rows that end at each step, copied where the active rows shrink
    (no index tensor to move to the device; in a ring, rows that ended are never written again)."""
    steps = len(views)
    if not config.batch_sizes:
        return views[0 if config.reverse else steps - 1].clone()
    sizes = [int(b) for b in config.batch_sizes] + [0]
    final = views[0].new_empty(views[0].shape)
    for t in range(steps):
        if sizes[t + 1] < sizes[t]:  # rows sizes[t+1] .. sizes[t] end at t
            final[sizes[t + 1]:sizes[t]] = views[t][sizes[t + 1]:sizes[t]]
    return final


def _previous(seq: Tensor, first: Tensor, reverse: bool) -> Tensor:
    """What each step read of a state kept in `seq` (T, B, ·): seq shifted by one step, `first` (B, ·) at the first
    step (a packed row starts at step 0: its rows are a shrinking prefix)."""
    if reverse:
        return torch.cat([seq[1:], first[None]])
    return torch.cat([first[None], seq[:-1]])


def _backward(config: LoopConfig, h0, c0, w_hh, w_hr, zoneout, mask, candidate, aux, y, saved, dy, dh_n, dc_n,
              need_db_hh):
    """The backward loop, mirroring `_forward` step by step in reverse; the saved tensors as `TritonScan` saved
    them; dy (T, B, P), dh_n (B, P), dc_n (B, S) or None (no gradient). Returns (d_pre_x (T, B, G·H), dh0 (B, P),
    dc0 (B, S) (FGR's (B, 4H): [dc | da]) or None, dW_hh, db_hh (None unless need_db_hh), dW_hr or None, *d_aux
    (the gradients of aux))."""
    steps, batch, out_size = y.shape
    gate_rows = w_hh.shape[0]
    family, flags = KERNELS[config.cell]
    hidden = gate_rows // CELL_SPECS[config.cell].gate_count
    width = 3 * hidden if family == "slstm" else hidden
    upcast = y.dtype in (torch.float16, torch.bfloat16)
    packed = bool(config.batch_sizes)
    alloc = y.new_zeros if packed else y.new_empty  # packed: zero at inactive rows, which the GEMMs then skip
    d_pre_x = alloc(steps, batch, gate_rows)
    d_pre_h = alloc(steps, batch, gate_rows) if family in _OWN_PRE_H else d_pre_x  # the GRU's h_n, the LayerNorms
    # each step's and row's part of the gradient of each aux parameter, summed after the loop
    aux_parts = tuple(alloc(steps, batch, a.numel()) for a in aux)
    dh_proj = alloc(steps, batch, out_size) if w_hr is not None else None  # the gradient of h = W_hr h′, per step
    fgr = family == "fgr"
    a0 = None
    if fgr:
        c0, a0 = c0[:, :hidden].contiguous(), c0[:, hidden:].contiguous()  # (B, H), (B, 3H): the kernels' rows
    # the carries into each step, alternating between two buffers; both start as the final states' gradients, so a
    # packed row starts from them at its own last step (its rows untouched until then)
    start_h = y.new_zeros(batch, out_size) if dh_n is None else dh_n
    dh_bufs = [start_h.contiguous().clone(), start_h.contiguous().clone()]
    dc_bufs = da_bufs = None
    if family in _WITH_C:
        start_c = y.new_zeros(batch, width) if dc_n is None else dc_n[:, :width]
        dc_bufs = [start_c.contiguous().clone(), start_c.contiguous().clone()]
    if fgr:
        start_a = y.new_zeros(batch, 3 * hidden) if dc_n is None else dc_n[:, hidden:]
        da_bufs = [start_a.contiguous().clone(), start_a.contiguous().clone()]
    scratch_dh = y.new_empty(batch, out_size)
    dh_direct_buf = y.new_empty(batch, hidden) if family in _DIRECT_DH else None
    # dy of the step before joins its carry in this step's GEMM (addmm), where nothing else joins the carry
    fold_dy = (dy is not None and not packed and mask is None and zoneout is None and not fgr
               and family not in _DIRECT_DH)
    y_at, dy_at, gates_at = _per_step(y), _per_step(dy), _per_step(saved["gates"])
    c_next_at, c_state_at = _per_step(saved.get("c_next")), _per_step(saved.get("c_state"))
    pre_h_at, stats_at, extra_at = _per_step(saved.get("pre_h")), _per_step(saved.get("stats")), _per_step(
        saved.get("extra"))
    d_pre_x_at, d_pre_h_at, dh_proj_at = _per_step(d_pre_x), _per_step(d_pre_h), _per_step(dh_proj)
    zoneout_at, candidate_at = _per_step(zoneout), _per_step(candidate)
    parts_at = [_per_step(part) for part in aux_parts]
    has_candidate = candidate is not None
    for j, (t, before, rows) in enumerate(reversed(_order(config, steps, batch))):
        cut = _rows_cut(rows, batch)
        elements = rows * hidden
        dh_in, dh_out = cut(dh_bufs[j % 2]), cut(dh_bufs[(j + 1) % 2])
        if dy is None or (fold_dy and j > 0):  # y[t] = h after t; folded: the previous GEMM added dy[t]
            dh_t = dh_in
        else:
            dh_t = torch.add(dh_in, cut(dy_at[t]), out=cut(scratch_dh))
        h_prev = cut(h0) if before is None else cut(y_at[before])
        c_prev = None if c0 is None else (cut(c0) if before is None else cut(c_state_at[before]))
        dh_old = dc_old = None
        if zoneout is not None:  # h = d ⊙ old + (1 − d) ⊙ new
            weights = cut(zoneout_at[t])
            dh_old, dh_t = weights[:, :out_size] * dh_t, (1 - weights[:, :out_size]) * dh_t
        dc_t = dc_out = None
        if dc_bufs is not None:
            dc_t, dc_out = cut(dc_bufs[j % 2]), cut(dc_bufs[(j + 1) % 2])
            if zoneout is not None:
                dc_old, dc_t = weights[:, out_size:] * dc_t, (1 - weights[:, out_size:]) * dc_t
        if w_hr is not None:  # h = W_hr h′
            cut(dh_proj_at[t]).copy_(dh_t)
            dh_t = dh_t @ w_hr
        dh_t = dh_t.contiguous()
        gates, d_pre_x_t, d_pre_h_t = cut(gates_at[t]), cut(d_pre_x_at[t]), cut(d_pre_h_at[t])
        cand = cut(candidate_at[t]) if has_candidate else d_pre_x  # d_pre_x: a pointer the kernel never reads
        parts = [cut(part[t]) for part in parts_at]
        dh_direct = None if dh_direct_buf is None else cut(dh_direct_buf)  # the GRUs' gradient through z ⊙ h
        if family == "lstm":
            _launch("lstm_backward", elements, dh_t, dc_t, gates, c_prev, cut(c_next_at[t]), cand, d_pre_x_t, dc_out,
                    hidden, HAS_CANDIDATE=has_candidate, UPCAST=upcast)
        elif family in ("peephole", "fgr"):
            _launch("peephole_lstm_backward", elements, dh_t, dc_t, cut(da_bufs[j % 2]) if fgr else dc_t, gates,
                    c_prev, cut(c_next_at[t]), *aux, cand, d_pre_x_t, dc_out, *parts, hidden, **flags,
                    GATE_RECURRENCE=fgr, HAS_CANDIDATE=has_candidate, UPCAST=upcast)
        elif family == "slstm":
            _launch("slstm_backward", elements, dh_t, dc_t, gates, cut(extra_at[t]), cut(c_next_at[t]), c_prev,
                    d_pre_x_t, dc_out, hidden, UPCAST=upcast)
        elif family == "layernorm_lstm":
            _launch_rows("layernorm_lstm_backward", rows, hidden, dh_t, dc_t, gates, c_prev, cut(c_next_at[t]),
                         cut(pre_h_at[t]), cut(stats_at[t]), *aux, d_pre_x_t, d_pre_h_t, dc_out, *parts, hidden,
                         UPCAST=upcast)
        elif family == "layernorm_gru":
            _launch_rows("layernorm_gru_backward", rows, hidden, dh_t, gates, h_prev, cut(pre_h_at[t]),
                         cut(stats_at[t]), aux[0], aux[-1], d_pre_x_t, d_pre_h_t, dh_direct, parts[0], parts[-1],
                         hidden, HAS_BIAS=len(aux) == 2, UPCAST=upcast)
        elif family == "gru":
            _launch("gru_backward", elements, dh_t, gates, cut(pre_h_at[t]), h_prev, cand, d_pre_x_t, d_pre_h_t,
                    dh_direct, hidden, HAS_CANDIDATE=has_candidate, UPCAST=upcast)
        else:
            _launch("rnn_backward", elements, dh_t, gates, d_pre_x_t, **flags, UPCAST=upcast)
        if dc_old is not None:
            dc_out += dc_old
        # pre_h = W_hh (h ⊙ m) (+ b_hh): the carry into the step before
        if fgr:  # FGR's GEMM read [h ⊙ m | a]
            d_read = d_pre_h_t @ w_hh
            dh_out.copy_(d_read[:, :out_size])
            cut(da_bufs[(j + 1) % 2]).copy_(d_read[:, out_size:])
        elif fold_dy and before is not None:
            torch.addmm(cut(dy_at[before]), d_pre_h_t, w_hh, out=dh_out)
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
        h_read = torch.cat([h_read, _previous(fgr_gates(saved["gates"]), a0, config.reverse)], dim=2)  # P + 3H
    dw_hh = d_pre_h.reshape(-1, gate_rows).t() @ h_read.reshape(-1, h_read.shape[2])
    db_hh = d_pre_h.sum((0, 1)) if need_db_hh else None
    dw_hr = None
    if w_hr is not None:
        dw_hr = dh_proj.reshape(-1, out_size).t() @ saved["h_raw"].reshape(-1, hidden)
    dc0 = None if dc_bufs is None else dc_bufs[final]
    if fgr:
        dc0 = torch.cat([dc0, da_bufs[final]], dim=1)
    d_aux = [part.sum((0, 1)) for part in aux_parts]
    return (d_pre_x, dh_bufs[final], dc0, dw_hh, db_hh, dw_hr, *d_aux)
