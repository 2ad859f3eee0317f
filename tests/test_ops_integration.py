"""The fused engine as PyTorch operators: torch.compile (fullgraph, no recompiles), torch.export (dynamic batch
and sequence length, save/load), torch.func (grad, per-sample gradients by vmap), and the paths that cannot
be served raising one clear error (double backward, a gradient through a fused trace).

Every comparison is against eager gatedrnn on the fused path, which the parity suite ties to torch.nn.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch.export import Dim
from torch.func import functional_call, grad, vmap

import gatedrnn
from gatedrnn.engine import _build

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

LAYERS = [
    (gatedrnn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=5)),
    (gatedrnn.GRU, dict(num_layers=2, batch_first=True)),
    (gatedrnn.RNN, dict(nonlinearity="relu", bidirectional=True)),
]
IDS = ["lstm-proj-bi", "gru-batch_first", "rnn_relu-bi"]


@pytest.fixture(scope="module", autouse=True)
def built_engine():
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


def test_compile_inductor_training_step_matches_eager():
    """The default backend (inductor) around the operator: a few optimiser steps equal eager's."""
    torch.manual_seed(1)
    eager = Regressor(gatedrnn.LSTM, dict(num_layers=2))
    compiled_model = Regressor(gatedrnn.LSTM, dict(num_layers=2))
    compiled_model.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(compiled_model, fullgraph=True)
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled_model)]
    for step in range(3):
        x = torch.randn(9, 5, 6, generator=torch.Generator().manual_seed(step))
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


@pytest.mark.parametrize("cls", [gatedrnn.LSTM, gatedrnn.GRU])
def test_func_per_sample_gradients_equal_a_loop(cls):
    """vmap(grad(loss)) over samples equals one autograd backward per sample (Opacus-style DP-SGD)."""
    torch.manual_seed(3)
    model = cls(3, 5, num_layers=2)
    params = {name: p.detach() for name, p in model.named_parameters()}
    xs, targets = torch.randn(4, 6, 3), torch.randn(4, 5)

    def loss(p, x, target):
        output, _ = functional_call(model, p, (x.unsqueeze(1),))  # (L, 1, H)
        return (output[-1, 0] - target).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, targets)
    for k in range(len(xs)):
        model.zero_grad()
        loss(dict(model.named_parameters()), xs[k], targets[k]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][k], p.grad, rtol=1e-5, atol=1e-6, msg=name)
    single = grad(loss)(params, xs[0], targets[0])
    for name in params:
        torch.testing.assert_close(single[name], per_sample[name][0], rtol=1e-6, atol=1e-7)


def test_double_backward_raises_naming_the_reference_backend(monkeypatch):
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
    torch.manual_seed(5)
    model = gatedrnn.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    _, _, traces = model._run(x, None, trace=True)
    forget = traces[0][0].f
    assert forget.requires_grad
    with pytest.raises(RuntimeError, match="GATEDRNN_BACKEND=reference"):
        forget.sum().backward()
