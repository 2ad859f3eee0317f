"""The GPU engine: one layer in one direction, with the pointwise math of each step in a Triton kernel
(`gatedrnn.engine.triton_cells`) and every GEMM in torch (cuBLAS on CUDA), after haste's design:

    forward:  pre_x = W_ih x + b_ih for all steps, one GEMM (autograd differentiates it)   (T, B, G·H)
              per step: pre_h = W_hh (h ⊙ m) + b_hh (GEMM), the cell kernel, the projection h = W_hr h′ (LSTMP)
    backward: per step, in reverse: the cell's backward kernel, dh = d_pre_h W_hh (GEMM)
              after the loop: dW_hh, dW_hr and db_hh, each one GEMM or sum over all steps; d_pre_x goes back
              to x, W_ih and b_ih through autograd's GEMMs

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
# cell; FGR (gate recurrence) has no GPU kernel yet.
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
_WITH_C = ("lstm", "layernorm_lstm", "peephole", "fgr")  # the families with a cell state
_FGR_GATES = [0, 1, 3]  # FGR's a = [i | f | o]: the gate blocks the next step reads
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class _Config(NamedTuple):
    cell: str
    batch_sizes: tuple[int, ...]  # () for full sequences
    reverse: bool


def _active(config: _Config, t: int, batch: int) -> int:
    return int(config.batch_sizes[t]) if config.batch_sizes else batch


def _launch(name: str, elements: int, *args, **flags) -> None:
    getattr(kernels, name)[kernels.grid(elements)](*args, elements, **flags, BLOCK=kernels.BLOCK)


def _launch_rows(name: str, rows: int, hidden: int, *args, **flags) -> None:
    """A kernel with one program per row (row reductions: LayerNorm); more warps for wide rows, which hold several
    (BLOCK_H,) blocks live."""
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
        ctx.save_for_backward(w_hh, w_hr, zoneout, mask, candidate, *aux, *saved.values())
        ctx.saved_names = tuple(saved)
        gates, c_trace = saved["gates"], saved.get("c_trace", saved.get("c_next"))
        ctx.mark_non_differentiable(gates, *(() if c_trace is None else (c_trace,)))
        return y, h_n, c_n, gates, c_trace

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, _dgates, _dc_trace):
        w_hh, w_hr, zoneout, mask, candidate, *rest = ctx.saved_tensors
        has_c, has_b_hh, aux_count = ctx.has
        aux, rest = tuple(rest[:aux_count]), rest[aux_count:]
        saved = dict(zip(ctx.saved_names, rest))
        grads = _TritonScanBackward.apply(ctx.config, w_hh, w_hr, zoneout, mask, candidate, saved, dy, dh_n,
                                          dc_n if has_c else None, aux)
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


def _forward(config: _Config, pre_x, h0, c0, w_hh, b_hh, w_hr, zoneout, mask, candidate, aux=()):
    """The forward loop over pre_x = W_ih x + b_ih (T, B, G·H). Returns y (T, B, P), h_n (B, P), c_n (B, H) or
    None, and the saved buffers: gates (T, B, G·H) (the RNN's: its h), h_prev (T, B, P) (the h each step read,
    before the recurrent mask), and by cell: c_prev, c_next (T, B, H) (LSTM), pre_h (T, B, 3H) (GRU), h_raw
    (T, B, H) (LSTMP's o ⊙ tanh(c)), h_cell (T, B, P) (the RNN's h before zoneout, for act′), c_trace (T, B, H)
    (c after zoneout, for traces); the LayerNorm LSTM's also wh (T, B, 4H) (W_hh h) and stats (T, B, 4) (its two
    LayerNorms' means and 1/σ); FGR's a_prev (T, B, 3H) (the previous gates each step read) and c_trace
    (T, B, 4H) ([c | a] after each step). aux: the cell's vector parameters (`run_layer_triton`).
    FGR's c0 and c_n are [c | a] (B, 4H), as the C++ engine's state operand."""
    family, flags = KERNELS[config.cell]
    steps, batch, gate_rows = pre_x.shape
    hidden = gate_rows // CELL_SPECS[config.cell].gate_count
    out_size = h0.shape[1]
    like = pre_x  # every buffer takes its dtype and device
    upcast = like.dtype in (torch.float16, torch.bfloat16)
    pre_x = pre_x.contiguous()
    new = like.new_zeros if config.batch_sizes else like.new_empty  # packed: inactive rows stay zero
    y = like.new_zeros(steps, batch, out_size)
    saved = {"gates": new(steps, batch, gate_rows), "h_prev": new(steps, batch, out_size)}
    if family in _WITH_C:
        saved["c_prev"], saved["c_next"] = new(steps, batch, hidden), new(steps, batch, hidden)
        if w_hr is not None:
            saved["h_raw"] = new(steps, batch, hidden)
        if zoneout is not None:
            saved["c_trace"] = new(steps, batch, hidden)
    if family in ("layernorm_lstm", "layernorm_gru"):  # W_hh h and its LayerNorms' means and 1/σ
        saved["wh"] = new(steps, batch, gate_rows)
        saved["stats"] = new(steps, batch, 4 if family == "layernorm_lstm" else 2,
                             dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)
    elif family == "gru":
        saved["pre_h"] = new(steps, batch, gate_rows)
    elif family == "rnn" and zoneout is not None:
        saved["h_cell"] = new(steps, batch, out_size)
    h = h0.contiguous().clone()  # the state, rows updated in place as they run
    c = None if c0 is None else c0.contiguous().clone()
    fgr = family == "fgr"
    if fgr:
        c, a = c[:, :hidden].contiguous(), c[:, hidden:].contiguous()  # (B, H), (B, 3H)
        saved["a_prev"] = new(steps, batch, 3 * hidden)
    if family == "slstm":  # the state [c | n | m] (B, 3H) before and after each step, and the branches m took
        saved["state_prev"], saved["state_next"] = new(steps, batch, 3 * hidden), new(steps, batch, 3 * hidden)
        saved["extra"] = new(steps, batch, 2 * hidden)
        saved["c_trace"] = saved["state_next"]
    for t in (range(steps - 1, -1, -1) if config.reverse else range(steps)):
        rows = _active(config, t, batch)
        elements = rows * hidden
        h_prev = h[:rows]
        saved["h_prev"][t, :rows] = h_prev
        read = h_prev if mask is None else h_prev * mask[:rows]
        if fgr:  # the GEMM reads [h ⊙ m | a]: R_g a joins the i, f, o rows
            saved["a_prev"][t, :rows] = a[:rows]
            read = torch.cat([read, a[:rows]], dim=1)
        pre_h = F.linear(read, w_hh, b_hh)  # (rows, G·H)
        gates = saved["gates"][t, :rows]
        cand = None if candidate is None else candidate[t, :rows].contiguous()
        c_new = None
        if family == "lstm":
            c_prev = c[:rows]
            saved["c_prev"][t, :rows] = c_prev
            c_new = saved["c_next"][t, :rows]
            h_cell = like.new_empty(rows, hidden)
            _launch("lstm_forward", elements, pre_x[t, :rows], pre_h, saved["c_prev"][t, :rows],
                    pre_x if cand is None else cand, gates, c_new, h_cell, hidden,
                    HAS_CANDIDATE=cand is not None, UPCAST=upcast)
            if w_hr is not None:
                saved["h_raw"][t, :rows] = h_cell
                h_cell = h_cell @ w_hr.t()  # (rows, P)
        elif family in ("peephole", "fgr"):
            c_prev = c[:rows]
            saved["c_prev"][t, :rows] = c_prev
            c_new = saved["c_next"][t, :rows]
            h_cell = like.new_empty(rows, hidden)
            _launch("peephole_lstm_forward", elements, pre_x[t, :rows], pre_h, saved["c_prev"][t, :rows], *aux,
                    pre_x if cand is None else cand, gates, c_new, h_cell, hidden, **flags,
                    HAS_CANDIDATE=cand is not None, UPCAST=upcast)
            if fgr:
                a[:rows] = gates.view(rows, 4, hidden)[:, _FGR_GATES].reshape(rows, 3 * hidden)
        elif family == "slstm":
            saved["state_prev"][t, :rows] = c[:rows]
            c_new = saved["state_next"][t, :rows]
            h_cell = like.new_empty(rows, hidden)
            _launch("slstm_forward", elements, pre_x[t, :rows], pre_h, saved["state_prev"][t, :rows], gates,
                    saved["extra"][t, :rows], c_new, h_cell, hidden, **flags, UPCAST=upcast)
        elif family == "layernorm_lstm":
            c_prev = c[:rows]
            saved["c_prev"][t, :rows] = c_prev
            saved["wh"][t, :rows] = pre_h
            c_new = saved["c_next"][t, :rows]
            h_cell = like.new_empty(rows, hidden)
            _launch_rows("layernorm_lstm_forward", rows, hidden, pre_x[t, :rows], saved["wh"][t, :rows],
                         saved["c_prev"][t, :rows], *aux, gates, c_new, h_cell, saved["stats"][t, :rows], hidden,
                         LAYER_NORM_EPS, UPCAST=upcast)
        elif family == "layernorm_gru":
            saved["wh"][t, :rows] = pre_h
            h_cell = like.new_empty(rows, hidden)
            _launch_rows("layernorm_gru_forward", rows, hidden, pre_x[t, :rows], saved["wh"][t, :rows],
                         saved["h_prev"][t, :rows], aux[0], aux[-1], gates, h_cell, saved["stats"][t, :rows], hidden,
                         LAYER_NORM_EPS, HAS_BIAS=len(aux) == 2, UPCAST=upcast)
        elif family == "gru":
            saved["pre_h"][t, :rows] = pre_h
            h_cell = like.new_empty(rows, hidden)
            _launch("gru_forward", elements, pre_x[t, :rows], pre_h, saved["h_prev"][t, :rows],
                    pre_x if cand is None else cand, gates, h_cell, hidden,
                    HAS_CANDIDATE=cand is not None, UPCAST=upcast)
        else:
            h_cell = gates  # the RNN's "gates" buffer holds its h: it saves nothing else
            _launch("rnn_forward", elements, pre_x[t, :rows], pre_h, h_cell, **flags, UPCAST=upcast)
            if zoneout is not None:
                saved["h_cell"][t, :rows] = h_cell
        if zoneout is not None:  # d ⊙ old + (1 − d) ⊙ new, per state part (`engine.scan.zone_out`)
            keep = zoneout[t, :rows]
            h_cell = keep[:, :out_size] * h_prev + (1 - keep[:, :out_size]) * h_cell
            if c_new is not None:
                c_mixed = keep[:, out_size:] * c[:rows] + (1 - keep[:, out_size:]) * c_new
                saved["c_trace"][t, :rows] = c_mixed
                c[:rows] = c_mixed
        elif c_new is not None:
            c[:rows] = c_new
        h[:rows] = h_cell
        y[t, :rows] = h_cell
    if fgr:  # the state [c | a], and for traces every step's
        c = torch.cat([c, a], dim=1)
        gates_ifo = saved["gates"].view(steps, batch, 4, hidden)[:, :, _FGR_GATES].reshape(steps, batch, 3 * hidden)
        saved["c_trace"] = torch.cat([saved["c_next"], gates_ifo], dim=2)
    return y, h, c, saved


def _backward(config: _Config, w_hh, w_hr, zoneout, mask, candidate, saved, dy, dh_n, dc_n, aux=()):
    """The backward loop, mirroring `_forward` step by step in reverse. Returns (d_pre_x (T, B, G·H), dh0 (B, P),
    dc0 (B, H) (FGR's (B, 4H): [dc | da]) or None, dW_hh, db_hh, dW_hr or None, *d_aux (the gradients of aux))."""
    family, flags = KERNELS[config.cell]
    like = saved["gates"]  # every buffer takes its dtype and device
    steps, batch, gate_rows = like.shape
    hidden = gate_rows // CELL_SPECS[config.cell].gate_count
    out_size = saved["h_prev"].shape[2]
    upcast = like.dtype in (torch.float16, torch.bfloat16)
    d_pre_x = like.new_zeros(steps, batch, gate_rows)  # zero at inactive rows, so the GEMMs after the loop skip them
    # the gradient of W_hh h (+ b_hh): the same as d_pre_x but for the GRU (h_n's r) and the LayerNorm LSTM (LN)
    d_pre_h = (like.new_zeros(steps, batch, gate_rows) if family in ("gru", "layernorm_lstm", "layernorm_gru")
               else d_pre_x)
    # each step's and row's part of the gradient of each aux parameter (the LayerNorm LSTM's γ_hh, γ_c, β_c; the
    # peepholes), summed after the loop
    aux_parts = tuple(like.new_zeros(steps, batch, a.numel()) for a in aux)
    dh_proj = like.new_zeros(steps, batch, out_size) if w_hr is not None else None  # gradient of W_hr h′, per step
    dh = like.new_zeros(batch, out_size) if dh_n is None else dh_n.contiguous().clone()
    dc = None
    if family in _WITH_C:
        dc = like.new_zeros(batch, hidden) if dc_n is None else dc_n[:, :hidden].contiguous().clone()
    if family == "slstm":  # the gradient of the state [c | n | m]
        dc = like.new_zeros(batch, 3 * hidden) if dc_n is None else dc_n.contiguous().clone()
    fgr = family == "fgr"
    if fgr:  # the gradient of a = [i | f | o], which the next step's GEMM read
        da = like.new_zeros(batch, 3 * hidden) if dc_n is None else dc_n[:, hidden:].contiguous().clone()
    for t in (range(steps) if config.reverse else range(steps - 1, -1, -1)):
        rows = _active(config, t, batch)
        elements = rows * hidden
        dh_t = dh[:rows] if dy is None else dh[:rows] + dy[t, :rows]  # y[t] = h after step t
        dh_old = None
        if zoneout is not None:  # h = d ⊙ old + (1 − d) ⊙ new
            keep = zoneout[t, :rows]
            dh_old = keep[:, :out_size] * dh_t
            dh_t = (1 - keep[:, :out_size]) * dh_t
        cand = None if candidate is None else candidate[t, :rows].contiguous()
        if family in _WITH_C:
            dc_t = dc[:rows].clone()
            dc_old = None
            if zoneout is not None:
                dc_old = zoneout[t, :rows, out_size:] * dc_t
                dc_t = (1 - zoneout[t, :rows, out_size:]) * dc_t
            if w_hr is not None:  # h = W_hr h′
                dh_proj[t, :rows] = dh_t
                dh_t = dh_t @ w_hr
            dc_prev = like.new_empty(rows, hidden)
            if family == "lstm":
                _launch("lstm_backward", elements, dh_t.contiguous(), dc_t, saved["gates"][t, :rows],
                        saved["c_prev"][t, :rows], saved["c_next"][t, :rows], d_pre_x if cand is None else cand,
                        d_pre_x[t, :rows], dc_prev, hidden, HAS_CANDIDATE=cand is not None, UPCAST=upcast)
            elif family in ("peephole", "fgr"):
                _launch("peephole_lstm_backward", elements, dh_t.contiguous(), dc_t,
                        da[:rows].clone() if fgr else dc_t, saved["gates"][t, :rows], saved["c_prev"][t, :rows],
                        saved["c_next"][t, :rows], *aux, d_pre_x if cand is None else cand, d_pre_x[t, :rows],
                        dc_prev, aux_parts[0][t, :rows], hidden, **flags, GATE_RECURRENCE=fgr,
                        HAS_CANDIDATE=cand is not None, UPCAST=upcast)
            else:
                _launch_rows("layernorm_lstm_backward", rows, hidden, dh_t.contiguous(), dc_t,
                             saved["gates"][t, :rows], saved["c_prev"][t, :rows], saved["c_next"][t, :rows],
                             saved["wh"][t, :rows], saved["stats"][t, :rows], *aux, d_pre_x[t, :rows],
                             d_pre_h[t, :rows], dc_prev, *(part[t, :rows] for part in aux_parts), hidden,
                             UPCAST=upcast)
            dc[:rows] = dc_prev if dc_old is None else dc_prev + dc_old
            dh_direct = None
        elif family == "slstm":
            d_state_prev = like.new_empty(rows, 3 * hidden)
            _launch("slstm_backward", elements, dh_t.contiguous(), dc[:rows].clone(), saved["gates"][t, :rows],
                    saved["extra"][t, :rows], saved["state_next"][t, :rows], saved["state_prev"][t, :rows],
                    d_pre_x[t, :rows], d_state_prev, hidden, UPCAST=upcast)
            dc[:rows] = d_state_prev
            dh_direct = None
        elif family == "layernorm_gru":
            dh_direct = like.new_empty(rows, hidden)
            _launch_rows("layernorm_gru_backward", rows, hidden, dh_t.contiguous(), saved["gates"][t, :rows],
                         saved["h_prev"][t, :rows], saved["wh"][t, :rows], saved["stats"][t, :rows], aux[0], aux[-1],
                         d_pre_x[t, :rows], d_pre_h[t, :rows], dh_direct, aux_parts[0][t, :rows],
                         aux_parts[-1][t, :rows], hidden, HAS_BIAS=len(aux) == 2, UPCAST=upcast)
        elif family == "gru":
            dh_direct = like.new_empty(rows, hidden)
            _launch("gru_backward", elements, dh_t.contiguous(), saved["gates"][t, :rows], saved["pre_h"][t, :rows],
                    saved["h_prev"][t, :rows], d_pre_x if cand is None else cand, d_pre_x[t, :rows],
                    d_pre_h[t, :rows], dh_direct, hidden, HAS_CANDIDATE=cand is not None, UPCAST=upcast)
        else:
            h_cell = saved["gates"] if zoneout is None else saved["h_cell"]
            _launch("rnn_backward", elements, dh_t.contiguous(), h_cell[t, :rows], d_pre_x[t, :rows], **flags,
                    UPCAST=upcast)
            dh_direct = None
        dh_prev = d_pre_h[t, :rows] @ w_hh  # pre_h = W_hh (h ⊙ m) + b_hh
        if fgr:  # FGR's GEMM read [h ⊙ m | a]
            dh_prev, da[:rows] = dh_prev[:, :out_size], dh_prev[:, out_size:]
        if mask is not None:
            dh_prev = dh_prev * mask[:rows]
        if dh_direct is not None:  # the GRU's z ⊙ h
            dh_prev = dh_prev + dh_direct
        if dh_old is not None:
            dh_prev = dh_prev + dh_old
        dh[:rows] = dh_prev
    h_read = saved["h_prev"] if mask is None else saved["h_prev"] * mask  # (T, B, P): what W_hh read
    if fgr:
        h_read = torch.cat([h_read, saved["a_prev"]], dim=2)  # (T, B, P + 3H)
        dc = torch.cat([dc, da], dim=1)
    dw_hh = d_pre_h.reshape(-1, gate_rows).t() @ h_read.reshape(-1, h_read.shape[2])
    db_hh = d_pre_h.sum((0, 1))
    dw_hr = None
    if w_hr is not None:
        dw_hr = dh_proj.reshape(-1, out_size).t() @ saved["h_raw"].reshape(-1, hidden)
    d_aux = [part.sum((0, 1)) for part in aux_parts]
    return (d_pre_x, dh, dc, dw_hh, db_hh, dw_hr, *d_aux)


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
    config = _Config(cell, tuple(int(b) for b in batch_sizes) if batch_sizes is not None else (), reverse)
    zoneout, mask, candidate = noise if noise is not None else (None, None, None)
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
    y, h_n, c_n, gates, c_trace = TritonScan.apply(config, pre_x, state0[0], c0, w_hh, b_hh, w_hr, zoneout, mask,
                                                   candidate, *aux)
    if c_n is None:
        state = (h_n,)
    else:  # FGR's [c | a] split back into its states
        state = (h_n, *c_n.split(spec.state_sizes(w_hh.shape[0] // spec.gate_count), dim=1))
    if not trace:
        return ScanResult(y, state, None)
    if family == "rnn":
        traced = spec.trace_type(y.clone())
    else:
        traced = _trace(cell, y, gates, c_trace if c_trace is not None else gates.new_empty(0))
    if y.requires_grad:  # h (y's clone) carries y's gradient; the rest come from saved buffers and carry none
        traced = type(traced)(*(_TraceHasNoGradient.apply(y, t) if t.grad_fn is None else t for t in traced))
    return ScanResult(y, state, traced)
