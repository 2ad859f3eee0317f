"""The "Works with" table of the README, one test per row: what torch.nn does, and that gatedrnn does the same.

Each test states torch.nn's behaviour for its row (so a torch upgrade that changes it fails here and the
README is updated) and checks gatedrnn against it; the torch.compile, torch.export and torch.func rows
compare with eager gatedrnn on the fused path. ONNX models run in onnxruntime at another batch size
(and sequence length where the exporter keeps it dynamic) than the one exported.
"""
from __future__ import annotations

import io
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch.export import Dim
from torch.func import functional_call, grad, vmap

import gatedrnn
from gatedrnn.engine import _build
from op_counter import GatedrnnOps
from gatedrnn.models import CharLM, SequenceClassifier, SequenceRegressor, SequenceTagger

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

F32_TOL = 1e-5


def _twins(name: str, **options):
    """(gatedrnn module, torch.nn module with the same parameters), in eval mode."""
    ours = getattr(gatedrnn, name)(5, 6, **options).eval()
    return ours, gatedrnn.layers.to_torch(ours).eval()


def _flat(result) -> list[torch.Tensor]:
    """(output, h) or (output, (h, c)) -> [output, h(, c)]."""
    output, hidden = result
    return [output, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def _input(module, batch: int, steps: int) -> torch.Tensor:
    return torch.randn(batch, steps, 5) if module.batch_first else torch.randn(steps, batch, 5)


# ----- torch.jit.trace -----
@pytest.mark.parametrize("name,options", [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("RNN", dict(nonlinearity="relu", batch_first=True)),
])
def test_jit_trace_save_load(name, options, tmp_path):
    ours, theirs = _twins(name, **options)
    x = _input(ours, 3, 7)
    for module, label in ((theirs, "torch.nn"), (ours, "gatedrnn")):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, (x,))
        assert f"aten::{name.lower()}" in str(traced.graph) or "aten::rnn_relu" in str(traced.graph), label
        torch.jit.save(traced, tmp_path / f"{label}.pt")
        loaded = torch.jit.load(tmp_path / f"{label}.pt")
        other = _input(ours, 2, 9)  # another batch and length than traced
        with torch.no_grad():
            for got, want in zip(_flat(loaded(other)), _flat(ours(other))):
                torch.testing.assert_close(got, want, atol=F32_TOL, rtol=0, msg=label)


class _Step(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x, h, c):
        return self.rnn.step(x, (h, c))


class _Packed(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        return self.rnn(nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))[1]


def test_jit_trace_of_a_streaming_step_and_of_packed_input():
    """step() and PackedSequence input trace too (torch.nn has no step; its packed input traces the same way)."""
    step = _Step(gatedrnn.LSTM(5, 6, num_layers=2, proj_size=3, batch_first=True))
    packed = {label: _Packed(rnn) for label, rnn in (("gatedrnn", gatedrnn.GRU(5, 6)), ("torch.nn", nn.GRU(5, 6)))}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced_step = torch.jit.trace(step, (torch.randn(4, 5), torch.randn(2, 4, 3), torch.randn(2, 4, 6)))
        x, h, c = torch.randn(2, 5), torch.randn(2, 2, 3), torch.randn(2, 2, 6)
        for got, want in zip(_flat(traced_step(x, h, c)), _flat(step(x, h, c))):
            torch.testing.assert_close(got, want, atol=F32_TOL, rtol=0)
        for label, module in packed.items():
            traced = torch.jit.trace(module, (torch.randn(7, 3, 5), torch.tensor([7, 5, 2])))
            x, lengths = torch.randn(7, 3, 5), torch.tensor([3, 7, 4])
            torch.testing.assert_close(traced(x, lengths), module(x, lengths), atol=F32_TOL, rtol=0, msg=label)


def test_gate_traces_inside_jit_trace_raise_one_clear_error():
    layer = gatedrnn.LSTM(5, 6)
    with pytest.raises(RuntimeError, match="torch.jit.trace"):
        torch.jit.trace(lambda x: layer._run(x, None, trace=True)[0], (torch.randn(4, 1, 5),))


# ----- torch.onnx.export -----
def _export(module, x, *, dynamo: bool) -> bytes:
    names = ["y", "h_n", "c_n"] if isinstance(module, (nn.LSTM, gatedrnn.LSTM)) else ["y", "h_n"]
    batch_dim = 0 if module.batch_first else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module, (x,), dynamo=True, input_names=["x"], output_names=names,
                                        dynamic_shapes=({batch_dim: torch.export.Dim("batch")},), verbose=False)
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        axes = {batch_dim: "batch", 1 - batch_dim: "time"}
        torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"], output_names=names,
                          dynamic_axes={"x": axes, "y": axes})
        return buffer.getvalue()


def _ort_max_diff(model: bytes, module, x: torch.Tensor) -> float:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = _flat(module(x))
    return max(float(np.abs(got - want.numpy()).max()) for got, want in zip(outputs, expected))


def _rnn_nodes(model: bytes) -> list:
    return [node for node in onnx.load_from_string(model).graph.node if node.op_type in ("LSTM", "GRU", "RNN")]


@pytest.mark.parametrize("name,options", [
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("RNN", dict(nonlinearity="relu")),
])
def test_onnx_torchscript_exporter(name, options):
    ours, theirs = _twins(name, **options)
    x = _input(ours, 2, 7)
    kinds = {}
    for module, label in ((theirs, "torch.nn"), (ours, "gatedrnn")):
        model = _export(module, x, dynamo=False)
        nodes = _rnn_nodes(model)
        assert [n.op_type for n in nodes] == [name] * options.get("num_layers", 1), label
        kinds[label] = [(n.op_type, sorted((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute
                                           if a.name in ("direction", "linear_before_reset", "activations")))
                        for n in nodes]
        assert _ort_max_diff(model, ours, _input(ours, 3, 9)) <= F32_TOL, label  # dynamic batch and length
    assert kinds["gatedrnn"] == kinds["torch.nn"]
    if name == "GRU":
        assert all(("linear_before_reset", 1) in attributes for _, attributes in kinds["gatedrnn"])


def test_onnx_dynamo_exporter():
    """torch.nn's own dynamo export keeps the batch dynamic and fixes the sequence length (torch.export
    specializes it inside aten.lstm); gatedrnn gives the same graph."""
    theirs = nn.GRU(5, 6).eval()
    model = _export(theirs, torch.randn(7, 2, 5), dynamo=True)
    assert [n.op_type for n in _rnn_nodes(model)] == ["GRU"]
    assert _ort_max_diff(model, theirs, torch.randn(7, 3, 5)) <= F32_TOL
    ours = gatedrnn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True).eval()
    model = _export(ours, torch.randn(2, 7, 5), dynamo=True)
    assert [n.op_type for n in _rnn_nodes(model)] == ["LSTM", "LSTM"]
    assert _ort_max_diff(model, ours, torch.randn(4, 7, 5)) <= F32_TOL


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_of_a_projection_raises_one_clear_error(dynamo):
    """ONNX's LSTM has no projection: torch.nn refuses (TorchScript) or writes a model onnxruntime rejects
    (dynamo); gatedrnn refuses in both, naming the way out."""
    ours = gatedrnn.LSTM(5, 6, proj_size=3).eval()
    x = torch.randn(7, 2, 5)
    if not dynamo:
        with pytest.raises(RuntimeError, match="projections"):
            _export(gatedrnn.layers.to_torch(ours), x, dynamo=False)
    with pytest.raises(Exception, match=r"proj_size=3.*torch\.jit\.trace"):
        _export(ours, x, dynamo=dynamo)


def test_onnx_export_of_packed_input_raises_one_clear_error():
    """torch.nn fails inside the exporter with an internal message; gatedrnn names the way out."""
    x, lengths = torch.randn(7, 3, 5), torch.tensor([7, 5, 2])
    with pytest.raises(RuntimeError, match="range_check"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Packed(nn.GRU(5, 6)), (x, lengths), io.BytesIO(), dynamo=False)
    with pytest.raises(RuntimeError, match="PackedSequence input.*padded"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Packed(gatedrnn.GRU(5, 6)), (x, lengths), io.BytesIO(), dynamo=False)


# ----- torch.jit.script -----
class _Tagger(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(x)
        return self.head(output)


def test_jit_script():
    torch.jit.script(_Tagger(nn.GRU(5, 6, bidirectional=True, batch_first=True)))  # torch.nn scripts
    model = _Tagger(gatedrnn.GRU(5, 6, bidirectional=True, batch_first=True)).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 7, 5)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=F32_TOL, rtol=0)
        model.rnn.weight_hh_l0.add_(0.5)  # the scripted model holds the same parameters
        torch.testing.assert_close(scripted(x), model(x), atol=F32_TOL, rtol=0)
    cell = gatedrnn.LSTMCell(5, 6)
    h, c = torch.jit.script(cell)(torch.randn(2, 5))
    assert h.shape == c.shape == (2, 6)


# ----- torch.save(model) / torch.load(path) -----
def _round_trip(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer)  # torch's default: weights_only=True


def test_torch_save_whole_model_loads_with_weights_only():
    with pytest.raises(pickle.UnpicklingError, match="nn.modules.rnn.LSTM"):
        _round_trip(nn.LSTM(5, 6))  # torch.nn itself is not on torch's allow-list (torch 2.13)
    modules = [gatedrnn.LSTM(5, 6, proj_size=2, bidirectional=True), gatedrnn.GRU(5, 6),
               gatedrnn.RNN(5, 6, nonlinearity="relu"), gatedrnn.LSTMCell(5, 6), gatedrnn.GRUCell(5, 6),
               gatedrnn.RNNCell(5, 6), SequenceClassifier(5, 6, 3), SequenceRegressor(5, 6, cell="rnn"),
               SequenceTagger(5, 6, 4, cell="gru"), CharLM(10, 6)]
    for module in modules:
        loaded = _round_trip(module)
        assert type(loaded) is type(module)
        assert loaded.state_dict().keys() == module.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), module.state_dict().values()))
    x = torch.randn(7, 2, 5)
    torch.testing.assert_close(_round_trip(modules[0])(x), modules[0](x))


# ----- dynamic int8 quantization -----
def test_quantize_dynamic():
    from torch.ao.nn.quantized import dynamic as nnqd
    from torch.ao.quantization import quantize_dynamic

    from gatedrnn.layers.quantization import qconfig_spec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        assert type(quantize_dynamic(nn.Sequential(nn.LSTM(5, 6)), {nn.LSTM})[0]) is nnqd.LSTM
        x = torch.randn(7, 2, 5)
        for name, target in (("LSTM", nnqd.LSTM), ("GRU", nnqd.GRU)):
            layer = getattr(gatedrnn, name)(5, 6, num_layers=2, bidirectional=True).eval()
            model = nn.Sequential(layer)
            converted = quantize_dynamic(model, {getattr(gatedrnn, name)})[0]
            assert type(converted) is target and type(model[0]) is type(layer)  # a copy, model untouched
            expected = layer(x)[0]
            torch.testing.assert_close(converted(x)[0], expected, atol=0.05, rtol=0)  # int8 weights
            assert not torch.equal(converted(x)[0], expected)
            assert type(quantize_dynamic(model, qconfig_spec({nn.LSTM, nn.GRU}))[0]) is target
        # torch matches modules by exact class: {nn.LSTM} alone leaves gatedrnn layers float (documented)
        assert type(quantize_dynamic(nn.Sequential(gatedrnn.LSTM(5, 6)), {nn.LSTM})[0]) is gatedrnn.LSTM


# ----- isinstance(layer, nn.LSTM) -----
def test_not_an_nn_rnnbase_subclass_because_dynamo_refuses_those():
    """torch._dynamo refuses any nn.RNN/GRU/LSTM instance (torch/_dynamo/variables/builder.py, wrap_module:
    'Attempted to wrap RNN, GRU, or LSTM' unless torch._dynamo.config.allow_rnn), so subclassing would break
    torch.compile(fullgraph=True). `to_torch` gives the nn.LSTM holding the same parameters instead."""
    lstm = nn.LSTM(5, 6)
    with pytest.raises(Exception, match="RNN, GRU, or LSTM"):
        torch.compile(lambda x: lstm(x)[0], fullgraph=True, backend="eager")(torch.randn(3, 1, 5))
    ours = gatedrnn.LSTM(5, 6)
    assert not isinstance(ours, nn.RNNBase)
    twin = gatedrnn.layers.to_torch(ours)
    assert isinstance(twin, nn.LSTM) and twin.weight_ih_l0 is ours.weight_ih_l0


# ----- autocast -----
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_autocast_bfloat16(name):
    """torch.nn under CPU autocast (bfloat16) runs its RNN op in bfloat16: output and states are bfloat16."""
    ours = getattr(gatedrnn, name)(5, 6).eval()
    theirs = gatedrnn.layers.to_torch(ours).eval()
    linear = nn.Linear(3, 5)
    x = torch.randn(4, 2, 3) if "Cell" not in name else torch.randn(2, 3)
    results = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for label, module in (("torch.nn", theirs), ("gatedrnn", ours)):
            result = module(linear(x))
            results[label] = [result] if isinstance(result, torch.Tensor) else _flat(result) if "Cell" not in name \
                else list(result)
    assert [t.dtype for t in results["torch.nn"]] == [torch.bfloat16] * len(results["torch.nn"])
    assert [t.dtype for t in results["gatedrnn"]] == [t.dtype for t in results["torch.nn"]]
    for got, want in zip(results["gatedrnn"], results["torch.nn"]):
        torch.testing.assert_close(got, want)


# ----- bad input: torch.nn's exception types (every case: tests/test_bad_input.py) -----
@pytest.mark.parametrize("case", ["features", "h0-shape", "zero-steps", "h0-dtype", "input-float64"])
def test_bad_input_raises_torch_nn_exception_types(case):
    ours, theirs = _twins("LSTM")
    x, h = torch.randn(7, 2, 5), torch.zeros(1, 2, 6)
    args = {"features": (torch.randn(7, 2, 4),), "h0-shape": (x, (torch.zeros(2, 2, 6), h)),
            "zero-steps": (torch.randn(0, 2, 5),), "h0-dtype": (x, (h.double(), h)),
            "input-float64": (x.double(),)}[case]
    with pytest.raises(Exception) as torch_error:
        theirs(*args)
    with pytest.raises(type(torch_error.value)):
        ours(*args)


# ----- torch.compile, torch.export, torch.func, double backward: the engine as PyTorch operators -----
# (compared with eager gatedrnn on the fused path, which the parity suite ties to torch.nn)
LAYERS = [
    (gatedrnn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=5)),
    (gatedrnn.GRU, dict(num_layers=2, batch_first=True)),
    (gatedrnn.RNN, dict(nonlinearity="relu", bidirectional=True)),
]
IDS = ["lstm-proj-bi", "gru-batch_first", "rnn_relu-bi"]


def _engine_built():
    assert _build.load() is not None, f"the fused engine did not build: {_build.error()}"


class Regressor(torch.nn.Module):
    """A gatedrnn layer and a linear readout of its last output: (L, N, 6) or (N, L, 6) -> (N, 1)."""

    def __init__(self, cls, options):
        super().__init__()
        self.rnn = cls(6, 8, **options)
        self.readout = torch.nn.Linear((2 if self.rnn.bidirectional else 1) * (self.rnn.proj_size or 8), 1)

    def forward(self, x):
        output, _ = self.rnn(x)
        last = output[:, -1] if self.rnn.batch_first else output[-1]
        return self.readout(last)


class Embedded(Regressor):
    """A linear input layer in front, so the recurrent layer's input needs a gradient (its dx is computed)."""

    def __init__(self, cls, options):
        super().__init__(cls, options)
        self.embed = torch.nn.Linear(6, 6)

    def forward(self, x):
        return super().forward(self.embed(x))


def graph_ops(graph_module: torch.fx.GraphModule) -> list[str]:
    return [str(node.target) for node in graph_module.graph.nodes if node.op == "call_function"]


def loss_and_grads(model, x):
    model.zero_grad()
    loss = model(x).square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("cls,options", LAYERS, ids=IDS)
def test_compile_fullgraph_no_break_no_recompile(cls, options):
    """One graph holding gatedrnn::scan, reused across calls of the same shapes; forward and gradients equal
    eager (aot_eager runs the fake kernels and the registered autograd formula through AOTAutograd)."""
    _engine_built()
    torch.manual_seed(0)
    model = Regressor(cls, options)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from torch._dynamo.backends.debugging import aot_eager
        return aot_eager(gm, example_inputs)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    shape = (4, 7, 6) if model.rnn.batch_first else (7, 4, 6)
    for seed in range(3):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        got_loss, got_grads = loss_and_grads(compiled, x)
        want_loss, want_grads = loss_and_grads(model, x)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
        for got, want in zip(got_grads, want_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1, "a call with the same shapes recompiled"
    assert len(graphs) == 1 and "gatedrnn.scan.default" in graph_ops(graphs[0])


@pytest.mark.parametrize("cls,options", LAYERS, ids=IDS)
def test_compile_fullgraph_under_no_grad(cls, options):
    """Inference compiled under no_grad (where eager runs a whole stack in one call into the engine): one graph
    holding gatedrnn::scan, no break, outputs equal eager."""
    _engine_built()
    torch.manual_seed(2)
    model = Regressor(cls, options).eval()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn((4, 7, 6) if model.rnn.batch_first else (7, 4, 6))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)
    assert dict(counters["graph_break"]) == {}
    assert len(graphs) == 1 and "gatedrnn.scan.default" in graph_ops(graphs[0])


def test_compile_inductor_training_step_matches_eager():
    """The default backend (inductor) around the operator, with a batch_first layer behind an input that needs
    a gradient (a non-contiguous x, and dx computed): optimiser steps equal eager's."""
    _engine_built()
    torch.manual_seed(1)
    eager = Embedded(gatedrnn.LSTM, dict(num_layers=2, batch_first=True))
    compiled_model = Embedded(gatedrnn.LSTM, dict(num_layers=2, batch_first=True))
    compiled_model.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(compiled_model, fullgraph=True)
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled_model)]
    for step in range(3):
        x = torch.randn(5, 9, 6, generator=torch.Generator().manual_seed(step))
        for model, optimiser in zip((eager, compiled), optimisers):
            optimiser.zero_grad()
            model(x).square().mean().backward()
            optimiser.step()
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("cls,options", LAYERS, ids=IDS)
def test_export_dynamic_batch_and_steps_save_load(cls, options, tmp_path):
    _engine_built()
    torch.manual_seed(2)
    model = Regressor(cls, options).eval()
    batch_first = model.rnn.batch_first
    x = torch.randn((3, 5, 6) if batch_first else (5, 3, 6))
    batch, steps = Dim("batch", min=1, max=4096), Dim("steps", min=2, max=100_000)
    dims = {0: batch, 1: steps} if batch_first else {0: steps, 1: batch}
    program = torch.export.export(model, (x,), dynamic_shapes=({k: v for k, v in dims.items()},))
    assert "gatedrnn.scan.default" in graph_ops(program.graph_module)
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    for n, t in ((1, 2), (7, 11), (2, 40)):
        other = torch.randn((n, t, 6) if batch_first else (t, n, 6))
        with torch.no_grad():
            want = model(other)
            torch.testing.assert_close(program.module()(other), want, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(loaded(other), want, rtol=1e-6, atol=1e-6)


def test_export_torch_nn_keeps_only_the_batch_dynamic():
    """torch.nn's row: nn.LSTM exports with a dynamic batch; a dynamic length is specialised away inside
    aten.lstm (gatedrnn's operator keeps it, above)."""
    twin = gatedrnn.layers.to_torch(gatedrnn.LSTM(6, 8)).eval()
    x = torch.randn(5, 3, 6)
    program = torch.export.export(twin, (x,), dynamic_shapes=({1: Dim("batch", min=2, max=64)},))
    other = torch.randn(5, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(other)[0], twin(other)[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="specialized it to be a constant"):
        torch.export.export(twin, (x,), dynamic_shapes=({0: Dim("steps", min=2, max=64), 1: Dim("batch")},))


def test_exported_program_runs_in_a_fresh_process(tmp_path):
    """A .pt2 holding gatedrnn::scan runs where only `import gatedrnn` happened: the operators' kernels load
    the engine at their first call."""
    _engine_built()
    torch.manual_seed(6)
    model = Regressor(gatedrnn.GRU, dict(num_layers=2, batch_first=True)).eval()
    x, other = torch.randn(3, 5, 6), torch.randn(4, 9, 6)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: Dim("batch"), 1: Dim("steps")},))
    torch.export.save(program, tmp_path / "model.pt2")
    torch.save(other, tmp_path / "input.pt")
    script = ("import sys, torch, gatedrnn; x = torch.load(sys.argv[2]); "
              "torch.save(torch.export.load(sys.argv[1]).module()(x), sys.argv[3])")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.pt2"), str(tmp_path / "input.pt"),
                           str(tmp_path / "output.pt")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "output.pt"), model(other), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", [gatedrnn.LSTM, gatedrnn.GRU])
def test_func_per_sample_gradients_equal_a_loop(cls):
    """vmap(grad(loss)) over samples equals one autograd backward per sample (Opacus-style DP-SGD)."""
    _engine_built()
    torch.manual_seed(3)
    model = cls(3, 5, num_layers=2)
    params = {name: p.detach() for name, p in model.named_parameters()}
    xs, targets = torch.randn(4, 6, 3), torch.randn(4, 5)

    def loss(p, x, target):
        output, _ = functional_call(model, p, (x.unsqueeze(1),))  # (L, 1, H)
        return (output[-1, 0] - target).square().sum()

    with GatedrnnOps() as ops:
        per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, targets)
    assert ops.counts["scan"] and ops.counts["scan_backward"], "torch.func did not run the fused engine"
    for k in range(len(xs)):
        model.zero_grad()
        loss(dict(model.named_parameters()), xs[k], targets[k]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][k], p.grad, rtol=1e-5, atol=1e-6, msg=name)
    single = grad(loss)(params, xs[0], targets[0])
    for name in params:
        torch.testing.assert_close(single[name], per_sample[name][0], rtol=1e-6, atol=1e-7)


def test_double_backward_raises_naming_the_reference_backend(monkeypatch):
    _engine_built()
    torch.manual_seed(4)
    model = gatedrnn.LSTM(3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float32, requires_grad=True)
    output, _ = model(x)
    (dx,) = torch.autograd.grad(output.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="GATEDRNN_BACKEND=reference"):
        dx.square().sum().backward()
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")  # the way out the message names works
    model64 = gatedrnn.GRU(2, 3, dtype=torch.float64)
    x64 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: model64(v)[0], (x64,))


def test_gradient_through_a_fused_trace_raises():
    _engine_built()
    torch.manual_seed(5)
    model = gatedrnn.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    _, _, traces = model._run(x, None, trace=True)
    forget = traces[0][0].f
    assert forget.requires_grad
    with pytest.raises(RuntimeError, match="GATEDRNN_BACKEND=reference"):
        forget.sum().backward()
