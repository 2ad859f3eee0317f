"""Streaming: `step` one time step at a time equals `forward` over the sequence, for every cell, num_layers,
proj_size, batched and unbatched, with and without an initial state; it is differentiable; it runs the fused
single-step kernel under no_grad; bad input raises a clear error.
"""
from __future__ import annotations

import pytest
import torch

import gatedrnn
from op_counter import GatedrnnOps

MODULES = [
    (gatedrnn.LSTM, {}),
    (gatedrnn.LSTM, {"proj_size": 3}),
    (gatedrnn.GRU, {}),
    (gatedrnn.RNN, {"nonlinearity": "tanh"}),
    (gatedrnn.RNN, {"nonlinearity": "relu"}),
]
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def initial_state(module, batch, dtype, batched=True):
    p = module.proj_size or module.hidden_size
    shape = (module.num_layers, batch) if batched else (module.num_layers,)
    h = torch.randn(*shape, p, dtype=dtype)
    return (h, torch.randn(*shape, module.hidden_size, dtype=dtype)) if module.mode == "lstm" else h


@pytest.mark.parametrize("cls,options", MODULES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stepping_equals_forward(cls, options, num_layers, dtype):
    torch.manual_seed(num_layers)
    module = cls(4, 6, num_layers=num_layers, dtype=dtype, **options)
    x = torch.randn(7, 3, 4, dtype=dtype)
    tol = TOLERANCE[dtype]
    for state0 in (None, initial_state(module, 3, dtype)):
        with torch.no_grad():
            expected, expected_state = module(x, state0)
            state, outputs = state0, []
            with GatedrnnOps() as ops:
                for t in range(x.shape[0]):
                    y, state = module.step(x[t], state)
                    outputs.append(y)
            assert ops.counts["step"] == x.shape[0], "step did not run fused"
        torch.testing.assert_close(torch.stack(outputs), expected, rtol=tol, atol=tol)
        for a, b in zip(as_tuple(state), as_tuple(expected_state)):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("cls,options", MODULES[:3], ids=lambda v: getattr(v, "__name__", str(v)))
def test_unbatched_step(cls, options):
    torch.manual_seed(0)
    module = cls(4, 5, num_layers=2, dtype=torch.float64, **options)
    x = torch.randn(5, 4, dtype=torch.float64)
    state0 = initial_state(module, 1, torch.float64, batched=False)
    with torch.no_grad():
        expected, expected_state = module(x, state0)
        state = state0
        for t in range(5):
            y, state = module.step(x[t], state)
            assert y.shape == (module.proj_size or 5,)
    torch.testing.assert_close(y, expected[-1], rtol=1e-9, atol=1e-9)
    for a, b in zip(as_tuple(state), as_tuple(expected_state)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cls,options", MODULES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_step_is_differentiable(cls, options):
    torch.manual_seed(1)
    module = cls(3, 4, num_layers=2, dtype=torch.float64, **options)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    output, _ = module(x)
    expected = torch.autograd.grad(output.sum(), [x, *module.parameters()])
    state, total = None, 0
    for t in range(4):
        y, state = module.step(x[t], state)
        total = total + y.sum()
    got = torch.autograd.grad(total, [x, *module.parameters()])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_step_rejects_bad_input():
    module = gatedrnn.LSTM(4, 5, num_layers=2)
    with pytest.raises(ValueError, match="bidirectional"):
        gatedrnn.GRU(4, 5, bidirectional=True).step(torch.randn(2, 4))
    with pytest.raises(ValueError, match="input_size"):
        module.step(torch.randn(2, 3))
    with pytest.raises(ValueError, match="one time step"):
        module.step(torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match=r"h_0 should have shape \(2, 2, 5\)"):
        module.step(torch.randn(2, 4), (torch.zeros(1, 2, 5), torch.zeros(2, 2, 5)))
    with pytest.raises(TypeError, match="tuple"):
        module.step(torch.randn(2, 4), torch.zeros(2, 2, 5))
    with pytest.raises(TypeError, match="dtype"):
        module.step(torch.randn(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("cls,options", [(gatedrnn.LSTM, {"proj_size": 48}), (gatedrnn.GRU, {})],
                         ids=["LSTM-proj", "GRU"])
def test_large_layer_step_split_over_threads(cls, options):
    """Layers with >= 512 KB of weights split their hidden units over threads; results must not change."""
    torch.manual_seed(3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        module = cls(256, 128, num_layers=2, **options)
        x = torch.randn(5, 2, 256)
        with torch.no_grad():
            expected, _ = module(x)
            state, outputs = None, []
            for t in range(5):
                y, state = module.step(x[t], state)
                outputs.append(y)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(torch.stack(outputs), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,options", MODULES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_batch_kernel_equals_forward(cls, options, batch, dtype):
    """Batch 1-2 runs the hand-written GEMV; sizes that are not multiples of its 4-row / 16-lane blocks."""
    torch.manual_seed(batch)
    module = cls(17, 33, num_layers=2, dtype=dtype, **options)
    x = torch.randn(5, batch, 17, dtype=dtype)
    tol = TOLERANCE[dtype]
    state0 = initial_state(module, batch, dtype)
    with torch.no_grad():
        expected, expected_state = module(x, state0)
        state, outputs = state0, []
        for t in range(x.shape[0]):
            y, state = module.step(x[t], state)
            outputs.append(y)
    torch.testing.assert_close(torch.stack(outputs), expected, rtol=tol, atol=tol)
    for a, b in zip(as_tuple(state), as_tuple(expected_state)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
