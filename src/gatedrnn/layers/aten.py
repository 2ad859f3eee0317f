"""The layers on torch's own RNN ops, for the callers that only see those: tracers, exporters and autocast.

The fused engine is a C++ call that torch.jit.trace and the TorchScript ONNX exporter cannot record (they
would keep only the empty output buffers), and autocast does not cast into it. So while
`torch.jit.is_tracing()`, while `torch.onnx.is_in_onnx_export()` (true in both the TorchScript exporter and
the default dynamo exporter, which sets `torch.onnx._internal.exporter._flags._is_onnx_exporting` around
its whole run) and while autocast is enabled for the input's device, `LSTM`, `GRU` and `RNN` run what
torch.nn.LSTM.forward runs: `torch._VF.lstm / gru / rnn_tanh / rnn_relu` with the same parameters in
torch.nn's flat-weight order. The graph then holds the standard op, which the exporters map to ONNX's
LSTM / GRU / RNN nodes, and autocast gives torch.nn's dtypes and numbers.

Shapes as in `gatedrnn.layers.recurrent` (torch.nn's symbols N, L, D, H_in, H_cell, H_out).
"""
from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from gatedrnn.cells import CELL_SPECS
from gatedrnn.engine._build import requested_backend
from gatedrnn.engine.step import torch_cell_op


def in_onnx_export() -> bool:
    """torch.onnx.is_in_onnx_export(), without importing torch.onnx (~60 ms) when no exporter can be running."""
    if torch.compiler.is_compiling():
        return _onnx_export_at_trace_time()
    return _onnx_exporting()


def _onnx_exporting() -> bool:
    if "torch.onnx" not in sys.modules:
        return False
    flags = _onnx_flags()
    if flags is None:
        return torch.onnx.is_in_onnx_export()
    torchscript_globals, dynamo_flags = flags
    return bool(torchscript_globals.in_onnx_export or dynamo_flags._is_onnx_exporting)


_ONNX_FLAGS: list = []  # once found: [(the TorchScript exporter's GLOBALS, the dynamo exporter's _flags module)]


def _onnx_flags():
    """The two objects whose flags torch.onnx.is_in_onnx_export() reads, or None where this torch keeps them
    elsewhere (then the public function is called). It imports both modules at every call (~2 us); forward asks
    at every call, so the objects are found once and their flags read directly."""
    if not _ONNX_FLAGS:
        try:
            from torch.onnx._internal.exporter import _flags
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

            _ONNX_FLAGS.append((GLOBALS, _flags) if hasattr(GLOBALS, "in_onnx_export")
                               and hasattr(_flags, "_is_onnx_exporting") else None)
        except ImportError:
            _ONNX_FLAGS.append(None)
    return _ONNX_FLAGS[0]


@torch.compiler.assume_constant_result
def _onnx_export_at_trace_time() -> bool:
    # Under dynamo (torch.compile, or the strict torch.export an ONNX exporter may fall back to) the flag is
    # read by Python at trace time, not traced: dynamo would fold it to False.
    return _onnx_exporting()


def reason(device_type: str = "cpu") -> Optional[str]:
    """Why a layer must run torch's own op now ("torch.jit.trace", "ONNX export", "autocast"), else None."""
    if torch.compiler.is_compiling():
        return _reason_at_trace_time(device_type)
    return _reason(device_type)


@torch.compiler.assume_constant_result
def _reason_at_trace_time(device_type: str) -> Optional[str]:
    # As for _onnx_export_at_trace_time; autocast is part of dynamo's global-state guard, so a baked
    # "autocast" recompiles when it changes.
    return _reason(device_type)


def _reason(device_type: str) -> Optional[str]:
    # torch.jit.is_tracing() and in_onnx_export() without their compile checks, which reason() has done
    if torch._C._is_tracing():
        return "torch.jit.trace"
    if _onnx_exporting():
        return "ONNX export"
    if torch.is_autocast_enabled(device_type):
        return "autocast"
    return None


def refuse_tracers(layer_name: str) -> None:
    """For layers with no torch op to record: torch.jit.trace would unroll their time loop for the traced length
    (silently wrong at another length) and the ONNX exporters see the same loop; raise instead."""
    why = "torch.jit.trace" if torch.jit.is_tracing() else "ONNX export" if in_onnx_export() else None
    if why is not None:
        raise RuntimeError(f"{why} cannot record {layer_name}: it has no torch RNN op, and its time loop would be "
                           "unrolled for one sequence length; torch.export and torch.compile record it instead")


def runs_torch_op(module, device_type: str) -> bool:
    """Whether `module` on `device_type` runs torch's own op for speed: on CUDA (cuDNN, as torch.nn runs it) where
    that op computes the layer (`_torch_op_differs` is None: a torch.nn cell, no zoneout or noise in training, the
    registered parameters: no replaced `layer_weights`) and GATEDRNN_BACKEND is unset or auto. Not where cuDNN
    would fail what gatedrnn's engine serves: a torch.func transform, or gradients in eval mode (cuDNN's RNN
    backward runs in training mode only). Traces and the other cells run gatedrnn's GPU engine
    (`gatedrnn.engine.triton_scan`)."""
    if device_type != "cuda" or requested_backend() != "auto" or module._torch_op_differs() is not None:
        return False
    if module._own_layer_weights() or torch._C._are_functorch_transforms_active():
        return False
    return module.training or not torch.is_grad_enabled()


def flatten_for_cudnn(module) -> None:
    """torch.nn.RNNBase.flatten_parameters for a layer that runs cuDNN (`runs_torch_op`): its parameters, all
    CUDA tensors of one dtype that cuDNN accepts and that share no memory, become views of one buffer in cuDNN's
    layout (`torch._cudnn_rnn_flatten_weight`). Otherwise a no-op, as torch.nn's is."""
    spec = CELL_SPECS[module.mode]
    if not spec.torch_mode or spec.extra_params or getattr(module, "variant", None) not in (None, "np"):
        return
    flat = module._flat_weights
    if len(flat) != len(module._flat_weights_names) or not all(isinstance(w, Tensor) for w in flat):
        return
    first = flat[0]
    if any(w.dtype != first.dtype or not w.is_cuda or not torch.backends.cudnn.is_acceptable(w) for w in flat):
        return
    if len({w.data_ptr() for w in flat}) != len(flat):
        return  # aliased parameters: torch.nn takes the copying path too
    import torch.backends.cudnn.rnn as cudnn_rnn

    with torch.cuda.device_of(first), torch.no_grad():
        if torch._use_cudnn_rnn_flatten_weight():
            count = (4 if module.bias else 2) + (1 if module.proj_size else 0)
            torch._cudnn_rnn_flatten_weight(flat, count, module.input_size, cudnn_rnn.get_cudnn_mode(spec.torch_mode),
                                            module.hidden_size, module.proj_size, module.num_layers,
                                            module.batch_first, bool(module.bidirectional))


def aten_op(mode: str):
    """torch's op for a cell kind: torch._VF.lstm, gru, rnn_tanh or rnn_relu."""
    return getattr(torch._VF, CELL_SPECS[mode].torch_mode.lower())


def forward(module, input, hx, *, any_dtype: bool):
    """module(input, hx) through torch's op: torch.nn's forward, with gatedrnn's checks and messages.

    `any_dtype` (autocast) accepts floating inputs and states of any dtype, which autocast casts.
    Returns (output, h_n) or (output, (h_n, c_n)), like the module.
    """
    missing = module._torch_op_differs()
    if missing is not None:  # every route into torch's op (forward, step under a tracer) refuses here
        raise RuntimeError(
            f"{reason(module.weight_ih_l0.device.type) or 'this call'} runs torch's own RNN op, which has no "
            f"{missing}; torch.export and torch.compile record gatedrnn's own operator instead "
            "(gatedrnn.engine.ops), and outside autocast the layer runs in its parameters' dtype"
        )
    if module.proj_size and in_onnx_export():
        raise RuntimeError(
            f"cannot export {type(module).__name__}(proj_size={module.proj_size}) to ONNX: ONNX's LSTM operator has "
            "no projection, and torch's exporters cannot write one for torch.nn.LSTM either (the TorchScript "
            "exporter refuses, the dynamo exporter writes a model onnxruntime rejects); use proj_size=0, or "
            "torch.jit.trace / torch.export instead of ONNX"
        )
    is_lstm = CELL_SPECS[module.mode].has_cell_state
    count = module.num_layers * module.num_directions
    sizes = [module.proj_size or module.hidden_size] + ([module.hidden_size] if is_lstm else [])  # H_out, H_cell
    op = aten_op(module.mode)
    flat = module._flat_weights
    if isinstance(input, PackedSequence):
        if in_onnx_export():
            raise RuntimeError(
                f"cannot export {type(module).__name__} with PackedSequence input to ONNX: torch's exporters "
                "cannot write packed sequences (torch.nn's layers fail the same way); export the model on a padded "
                "(L, N, H_in) tensor (one sequence per call needs no padding), or use torch.jit.trace, which "
                "records packed input"
            )
        data, batch_sizes, sorted_indices, unsorted_indices = input
        module._check_packed_data(data, any_dtype=any_dtype)
        if hx is None:
            states = tuple(torch.zeros(count, batch_sizes[0], size, dtype=data.dtype, device=data.device)
                           for size in sizes)  # (D*L, N, ·)
        else:
            states = module._initial_state(hx, int(batch_sizes[0]), True, sorted_indices, data, any_dtype=any_dtype)
        result = op(data, batch_sizes, states if is_lstm else states[0], flat, module.bias, module.num_layers,
                    module.dropout, module.training, module.bidirectional)
        output = PackedSequence(result[0], batch_sizes, sorted_indices, unsorted_indices)
        hidden = tuple(result[1:])
        if unsorted_indices is not None:
            hidden = tuple(h.index_select(1, unsorted_indices) for h in hidden)
        return output, (hidden if is_lstm else hidden[0])

    batched = module._check_input(input, any_dtype=any_dtype)
    batch_dim = 0 if module.batch_first else 1
    x = input if batched else input.unsqueeze(batch_dim)  # (L, N, H_in) or (N, L, H_in)
    batch = x.size(batch_dim)
    if hx is None:
        states = tuple(torch.zeros(count, batch, size, dtype=x.dtype, device=x.device) for size in sizes)
    else:
        states = module._initial_state(hx, batch, batched, None, x, any_dtype=any_dtype)
    result = op(x, states if is_lstm else states[0], flat, module.bias, module.num_layers, module.dropout,
                module.training, module.bidirectional, module.batch_first)
    output, hidden = result[0], tuple(result[1:])
    if not batched:
        output = output.squeeze(batch_dim)
        hidden = tuple(h.squeeze(1) for h in hidden)
    return output, (hidden if is_lstm else hidden[0])


def cell_forward(module, x: Tensor, states: tuple[Tensor, ...]):
    """One step of a cell module through torch's op: x (N, H_in), states each (N, H) -> new state(s)."""
    op = torch_cell_op(module.mode)
    if CELL_SPECS[module.mode].has_cell_state:
        return tuple(op(x, states, module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh))
    return op(x, states[0], module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh)
