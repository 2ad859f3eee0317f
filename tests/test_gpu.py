"""The GPU engine against torch.nn (cuDNN) on CUDA, and the GPU benchmark's code path on the CPU.

On CUDA (skipped without one), shapes x (T, B, I) or (B, T, I) with batch_first, states (D*L, B, H|P):
    - every gatedrnn layer equals its torch.nn twin (state_dict copied, strict) in output, final states and the
      gradients of x, of the initial state and of every parameter, float32 with TF32 off; bfloat16 within 3e-2 of
      float32 computed on the same rounded weights and input;
    - traces, the LayerNorm LSTM (with its gradients) on CUDA equal the same calls on a CPU copy; streaming `step` on
      CUDA equals `forward`. The CPU side runs with GATEDRNN_BACKEND=reference: torch ops only, so a fresh GPU machine
      builds no C++ engine for it (a minute and a half), and it is the plain math every engine is checked against.
On the CPU: `python -m gatedrnn.bench.gpu --device cpu --quick` writes a complete JSON and its tables; without CUDA
the benchmark refuses, naming CUDA.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from collections import Counter

import pytest
import torch
from torch import nn

import gatedrnn
from gatedrnn.bench import gpu
from gatedrnn.bench.gpu_cases import make_cases
from gatedrnn.inspect import trace

DEVICE = "cuda"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
T, B, I, H = 7, 3, 16, 32  # noqa: E741 (the shape symbols)
ODD = (5, 20)  # (I, H) that fill no power-of-2 block: the kernels' masks
TOL = dict(rtol=1e-4, atol=1e-4)  # float32, TF32 off
BF16_TOL = dict(rtol=3e-2, atol=3e-2)


@pytest.fixture
def no_tf32():
    """float32 matmuls and cuDNN in full float32 (TF32 rounds to 10 mantissa bits: 1e-3 differences)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@contextlib.contextmanager
def cpu_reference():
    """GATEDRNN_BACKEND=reference (read at every call) for the CPU side only: the CUDA call must not see it."""
    before = os.environ.get("GATEDRNN_BACKEND")
    os.environ["GATEDRNN_BACKEND"] = "reference"
    try:
        yield
    finally:
        if before is None:
            del os.environ["GATEDRNN_BACKEND"]
        else:
            os.environ["GATEDRNN_BACKEND"] = before


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def make_pair(cell: str, options: dict, sizes=(I, H)) -> tuple[nn.Module, nn.Module]:
    """(gatedrnn layer, torch.nn layer) with equal weights, on the CPU."""
    torch.manual_seed(0)
    peer = getattr(nn, cell)(*sizes, **options)
    ours = getattr(gatedrnn, cell)(*sizes, **options)
    ours.load_state_dict(peer.state_dict(), strict=True)
    return ours, peer


def make_input(module: nn.Module, batch: int = B) -> torch.Tensor:
    shape = (batch, T, module.input_size) if module.batch_first else (T, batch, module.input_size)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def initial_state(module: nn.Module, batch: int = B) -> tuple[torch.Tensor, ...]:
    """(h0 (D*L, B, P),) plus c0 (D*L, B, H) for an LSTM."""
    generator = torch.Generator().manual_seed(2)
    layers = module.num_layers * (2 if module.bidirectional else 1)
    h0 = torch.randn(layers, batch, getattr(module, "proj_size", 0) or module.hidden_size, generator=generator)
    has_cell_state = module.spec.has_cell_state if hasattr(module, "spec") else module.mode == "LSTM"  # torch.nn
    if not has_cell_state:
        return (h0,)
    return h0, torch.randn(layers, batch, module.hidden_size, generator=generator)


def run_with_grads(module: nn.Module, x: torch.Tensor, state, weights) -> dict:
    """Forward, then backward of sum(output * w_out) + sum(state_k * w_k): outputs and every gradient, on the CPU."""
    x = x.detach().clone().requires_grad_()
    state = None if state is None else tuple(s.detach().clone().requires_grad_() for s in state)
    for p in module.parameters():
        p.grad = None
    hx = None if state is None else (state if len(state) == 2 else state[0])
    output, hidden = module(x, hx)
    loss = (output * weights[0]).sum() + sum((s * w).sum() for s, w in zip(as_tuple(hidden), weights[1:]))
    loss.backward()
    result = {"output": output, "x.grad": x.grad}
    result.update({f"hidden[{k}]": s for k, s in enumerate(as_tuple(hidden))})
    result.update({f"state0[{k}].grad": s.grad for k, s in enumerate(state or ())})
    result.update({f"{name}.grad": p.grad for name, p in module.named_parameters()})
    return {name: value.detach().cpu() for name, value in result.items()}


def loss_weights(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Random weights shaped like the output and each final state (their shapes from a CPU torch.nn-like call)."""
    with torch.no_grad(), cpu_reference():
        output, hidden = copy.deepcopy(module).cpu()(x.cpu())
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(t.shape, generator=generator) for t in (output, *as_tuple(hidden))]


def assert_same(got: dict, expected: dict, tol: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] is not None and expected[name] is not None, f"{name} is missing"
        torch.testing.assert_close(got[name], expected[name], **tol, msg=lambda m: f"{name}: {m}")


PARITY = [  # (cell, options, with an initial state, (I, H))
    ("LSTM", {}, False, (I, H)),
    ("LSTM", {}, True, (I, H)),
    ("LSTM", {}, True, ODD),
    ("LSTM", {"proj_size": 12}, True, (I, H)),
    ("LSTM", {"bidirectional": True}, True, (I, H)),
    ("LSTM", {"num_layers": 2}, True, (I, H)),
    ("LSTM", {"batch_first": True}, True, (I, H)),
    ("GRU", {}, True, (I, H)),
    ("GRU", {}, True, ODD),
    ("GRU", {"num_layers": 2, "bidirectional": True, "batch_first": True}, True, (I, H)),
    ("RNN", {"nonlinearity": "tanh"}, True, (I, H)),
    ("RNN", {"nonlinearity": "relu"}, True, (I, H)),
]


@requires_cuda
@pytest.mark.parametrize("backend", ["auto", "triton"])  # auto: torch's cuDNN op; triton: gatedrnn's GPU engine
@pytest.mark.parametrize("cell,options,with_state,sizes", PARITY, ids=lambda v: str(v).replace(" ", ""))
def test_layer_equals_torch_nn_on_cuda(cell, options, with_state, sizes, backend, no_tf32, monkeypatch):
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    ours, peer = make_pair(cell, options, sizes)
    x = make_input(peer)
    state = initial_state(peer) if with_state else None
    weights = loss_weights(peer, x)
    on_device = lambda tensors: None if tensors is None else tuple(t.to(DEVICE) for t in tensors)  # noqa: E731
    expected = run_with_grads(peer.to(DEVICE), x.to(DEVICE), on_device(state), on_device(weights))
    got = run_with_grads(ours.to(DEVICE), x.to(DEVICE), on_device(state), on_device(weights))
    assert_same(got, expected, TOL)


@requires_cuda
@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("cell,options", [("LSTM", {}), ("LSTM", {"num_layers": 2, "bidirectional": True}),
                                          ("GRU", {}), ("RNN", {"nonlinearity": "tanh"})], ids=str)
def test_bfloat16_forward_on_cuda(cell, options, backend, no_tf32, monkeypatch):
    """bfloat16 in and out; within 3e-2 of float32 on the same bfloat16-rounded weights and input."""
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    ours, reference = make_pair(cell, options)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ours = ours.to(DEVICE, torch.bfloat16)
    x = make_input(reference).to(torch.bfloat16)
    with torch.no_grad():
        output, hidden = ours(x.to(DEVICE))
        expected_output, expected_hidden = reference.to(DEVICE)(x.float().to(DEVICE))
    assert output.dtype == torch.bfloat16 and output.device.type == "cuda"
    torch.testing.assert_close(output.float(), expected_output, **BF16_TOL)
    for got, expected in zip(as_tuple(hidden), as_tuple(expected_hidden)):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), expected, **BF16_TOL)


@requires_cuda
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_bfloat16_training_gradients_on_cuda(backend, no_tf32, monkeypatch):
    """What the bf16 training benchmark times: finite gradients within 5% of their scale of float32's."""
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    ours, reference = make_pair("LSTM", {})
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    x = make_input(reference).to(torch.bfloat16).float()
    weights = [w.to(DEVICE) for w in loss_weights(reference, x)]
    expected = run_with_grads(reference.to(DEVICE), x.to(DEVICE), None, weights)
    got = run_with_grads(ours.to(DEVICE, torch.bfloat16), x.to(DEVICE, torch.bfloat16), None,
                         [w.to(torch.bfloat16) for w in weights])
    for name, value in expected.items():
        assert torch.isfinite(got[name].float()).all(), name
        scale = value.abs().max().item()
        assert (got[name].float() - value).abs().max().item() <= 0.05 * scale + 1e-2, name


TRACED = [("LSTM", {"num_layers": 2, "bidirectional": True}), ("LSTM", {"proj_size": 12, "batch_first": True}),
          ("GRU", {}), ("RNN", {"nonlinearity": "tanh"})]


@requires_cuda
@pytest.mark.parametrize("cell,options", TRACED, ids=str)
def test_traces_on_cuda_equal_the_cpu(cell, options, no_tf32):
    torch.manual_seed(0)
    layer = getattr(gatedrnn, cell)(I, H, **options)
    x = make_input(layer)
    with torch.no_grad():
        with cpu_reference():
            expected = trace(layer, x)
        got = trace(copy.deepcopy(layer).to(DEVICE), x.to(DEVICE))
    assert got.cell == expected.cell and got.batch_first == expected.batch_first
    assert got.output.device.type == "cuda"
    torch.testing.assert_close(got.output.cpu(), expected.output, **TOL)
    for a, b in zip(as_tuple(got.hidden), as_tuple(expected.hidden)):
        torch.testing.assert_close(a.cpu(), b, **TOL)
    assert len(got.layers) == len(expected.layers)
    for got_layer, expected_layer in zip(got.layers, expected.layers):
        assert len(got_layer) == len(expected_layer)
        for got_direction, expected_direction in zip(got_layer, expected_layer):
            assert got_direction._fields == expected_direction._fields
            for name, a, b in zip(expected_direction._fields, got_direction, expected_direction):
                assert a.device == got.output.device, f"trace field {name} is on {a.device}"
                torch.testing.assert_close(a.cpu(), b, **TOL, msg=lambda m: f"trace field {name}: {m}")


@requires_cuda
@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True, "batch_first": True}], ids=str)
def test_layernorm_lstm_on_cuda_equals_the_cpu(options, no_tf32):
    torch.manual_seed(0)
    layer = gatedrnn.LayerNormLSTM(I, H, **options)
    x = make_input(layer)
    state = initial_state(layer)
    weights = loss_weights(layer, x)
    with cpu_reference():
        expected = run_with_grads(layer, x, state, weights)
    got = run_with_grads(copy.deepcopy(layer).to(DEVICE), x.to(DEVICE), tuple(s.to(DEVICE) for s in state),
                         [w.to(DEVICE) for w in weights])
    assert_same(got, expected, TOL)


STREAMED = [("LSTM", {}, 1), ("LSTM", {}, B), ("LSTM", {"num_layers": 2, "proj_size": 12}, B), ("GRU", {}, B),
            ("RNN", {"nonlinearity": "relu"}, B)]


@requires_cuda
@pytest.mark.parametrize("cell,options,batch", STREAMED, ids=str)
def test_streaming_step_on_cuda_equals_forward(cell, options, batch, no_tf32):
    """B=1 as in the streaming benchmark, and a batch; state None at the first step."""
    torch.manual_seed(0)
    layer = getattr(gatedrnn, cell)(I, H, **options).to(DEVICE).eval()
    x = make_input(layer, batch).to(DEVICE)  # (T, B, I)
    with torch.no_grad():
        expected, expected_state = layer(x)
        state, outputs = None, []
        for x_t in x:  # (B, I)
            y, state = layer.step(x_t, state)
            outputs.append(y)
    torch.testing.assert_close(torch.stack(outputs), expected, **TOL)
    for a, b in zip(as_tuple(state), as_tuple(expected_state)):
        torch.testing.assert_close(a, b, **TOL)


# The cases the issue lists: (cell, kind, dtype) -> how many sizes.
ISSUE_CASES = {("lstm", "train", "float32"): 3, ("lstm", "infer", "float32"): 3,
               ("gru", "train", "float32"): 3, ("gru", "infer", "float32"): 3,
               ("lstm", "train", "bfloat16"): 2, ("layernorm_lstm", "train", "float32"): 1,
               ("lstm", "trace", "float32"): 1, ("lstm", "stream", "float32"): 2}
# the same plain cells on gatedrnn's Triton engine (GATEDRNN_BACKEND=triton), at the first size
TRITON_CASES = {("lstm", "train", "float32"): 1, ("lstm", "infer", "float32"): 1, ("gru", "train", "float32"): 1,
                ("lstm", "train", "bfloat16"): 1}


@requires_cuda
def test_flatten_parameters_puts_a_plain_layer_in_one_cudnn_buffer(no_tf32):
    """As torch.nn's: after .cuda() every parameter is a view of one buffer, and a forward warns of no copy."""
    import warnings

    layer = gatedrnn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=8).to(DEVICE)
    storages = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    assert len(storages) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "RNN module weights are not part of single contiguous chunk of memory"
        layer(torch.randn(T, B, I, device=DEVICE))


def test_the_full_run_has_the_issue_sizes():
    cases = [c for c in make_cases(quick=False) if c.backend == "auto"]
    assert Counter((c.cell, c.kind, c.dtype) for c in cases) == ISSUE_CASES
    triton_cases = [c for c in make_cases(quick=False) if c.backend == "triton"]
    assert Counter((c.cell, c.kind, c.dtype) for c in triton_cases) == TRITON_CASES
    assert {(c.B, c.T, c.H) for c in triton_cases} == {(64, 100, 256)}
    plain = {(c.B, c.T, c.H) for c in cases if c.cell in ("lstm", "gru") and c.kind in ("train", "infer")}
    assert plain == {(64, 100, 256), (64, 512, 512), (16, 1024, 1024)}
    sizes = lambda cell, kind, dtype="float32": [(c.B, c.T, c.H) for c in cases  # noqa: E731
                                                 if (c.cell, c.kind, c.dtype) == (cell, kind, dtype)]
    assert sizes("lstm", "train", "bfloat16") == [(64, 100, 256), (64, 512, 512)]
    assert sizes("layernorm_lstm", "train") == [(64, 128, 512)]
    assert sizes("lstm", "trace") == [(64, 100, 256)]
    assert sizes("lstm", "stream") == [(1, 1, 64), (1, 1, 256)]
    assert len({c.name for c in cases + triton_cases}) == len(cases) + len(triton_cases)


def test_gpu_bench_quick_on_the_cpu(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():  # on the GPU machine: the CPU's C++ engine is not built for a smoke test
        monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and re.fullmatch(r"gpu-cpu-\d{4}-\d{2}-\d{2}-1\.json", files[0].name), files
    assert f"wrote {files[0]}" in capsys.readouterr().out
    result = json.loads(files[0].read_text())
    assert result["schema"] == 1 and result["complete"] is True
    cases = result["cases"]
    assert [c["name"] for c in cases] == [c.name for c in make_cases(quick=True)]
    assert Counter((c["cell"], c["kind"], c["dtype"]) for c in cases if "+triton" not in c["name"]) == ISSUE_CASES
    for case in cases:
        assert set(case["target"]) >= {"ratio", "op", "value", "description"}
        assert case["error"] is None, (case["name"], case["error"])
        assert case["ours_ms"] > 0 and case["peer_ms"] > 0, case["name"]
        assert len(case["ours_times_ms"]) == len(case["peer_times_ms"]) == 7
        expected = (case["peer_ms"] / case["ours_ms"] if case["target"]["ratio"] == "peer/ours"
                    else case["ours_ms"] / case["peer_ms"])
        assert case["ratio"] == pytest.approx(expected)
        assert isinstance(case["met"], bool)
    layernorm = next(c for c in cases if c["cell"] == "layernorm_lstm")
    assert layernorm["first_call_s"] > 0
    assert layernorm["first_call_cold_cache_s"] > 0 or isinstance(layernorm["first_call_error"], str)
    environment = result["environment"]
    assert set(environment) >= {"date", "gpu_name", "torch_version", "triton_version", "cuda_version", "git",
                                "backend_info", "backend_info_bfloat16", "backend_info_after"}
    assert environment["torch_version"] == torch.__version__ and "commit" in environment["git"]
    assert isinstance(environment["backend_info"], (dict, str))
    table = [line for line in gpu.render_markdown(result).splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(cases)  # the header, then one row per case
    for case, row in zip(cases, table[1:]):
        assert row.startswith(f"| {case['name']} |")
    # the README's gpu block shows a committed run the same way, naming its file
    from gatedrnn.bench import readme

    monkeypatch.setattr(readme, "GPU_RUNS", (files[0].relative_to(tmp_path),))
    block = readme.render_gpu(tmp_path)
    assert block.startswith(f"`{files[0].name}`:") and gpu.render_markdown(result) in block


def test_results_never_overwrite(tmp_path):
    result = {"date": "2030-01-02", "environment": {"gpu_name": "NVIDIA H200", "device": "cuda"}, "cases": []}
    first, second = gpu.write_result(result, tmp_path), gpu.write_result(result, tmp_path)
    assert (first.name, second.name) == ("gpu-nvidia-h200-2030-01-02-1.json", "gpu-nvidia-h200-2030-01-02-2.json")
    gpu.rewrite_result({**result, "complete": True}, first)
    assert json.loads(first.read_text())["complete"] is True and sorted(tmp_path.iterdir()) == [first, second]


def test_gpu_bench_refuses_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA"):
        gpu.main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--quick"):
        gpu.main(["--device", "cpu", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
