"""Streaming: `step` one time step at a time equals `forward` over the sequence, for every cell, num_layers,
proj_size, batched and unbatched, with and without an initial state; it is differentiable; it runs the fused
single-step kernel under no_grad; bad input raises a clear error.
"""
from __future__ import annotations

import pytest
import torch

import gatedrnn
from gatedrnn.layers._checks import REGULARISERS
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
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("threads", [1, 2])
def test_alternating_row_order_changes_no_bit(cls, options, batch, threads):
    """Where the GEMVs run (batch 1-2, and small layers up to batch 64) every other call reads the weight rows
    backwards (cache reuse): the same step, taken twice in a row, gives the same bits either way, at sizes with
    full vectors, blocks of rows and scalar tails, and with the units split over threads (>= 512 KB read)."""
    torch.manual_seed(batch)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for input_size, hidden in [(21, 37), (150, 133)]:
            module = cls(input_size, hidden, num_layers=2, **options).eval()
            x = torch.randn(batch, input_size)
            with torch.no_grad():
                _, state = module.step(x, None)
                first_y, first_state = module.step(x, state)
                second_y, second_state = module.step(x, state)
            assert torch.equal(first_y, second_y)
            for a, b in zip(as_tuple(first_state), as_tuple(second_state)):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cls,options", MODULES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("batch", [1, 2, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_batch_kernel_equals_forward(cls, options, batch, dtype):
    """Small layers step on the hand-written GEMV (every batch here); sizes that are not multiples of its blocks of
    rows or its vector width."""
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


class _CountingStreamer:
    """Stands in for the engine's library in `gatedrnn.layers.streaming`: the real module_step and stream_step,
    counted. asked: steps the C++ call was asked for; steps: those it served (it returns None for what it declines;
    module_step returns NotImplemented for weights read by name, and stream_step is asked then)."""

    def __init__(self, library) -> None:
        self.library, self.asked, self.steps = library, 0, 0

    def module_step(self, *args):
        out = self.library.module_step(*args)
        if out is not NotImplemented:
            self.asked += 1
            self.steps += out is not None
        return out

    def stream_step(self, *args):
        self.asked += 1
        out = self.library.stream_step(*args)
        self.steps += out is not None
        return out


@pytest.fixture
def counted_streamers(monkeypatch):
    from gatedrnn.engine import _build
    from gatedrnn.layers import streaming

    counting = _CountingStreamer(_build.load())
    monkeypatch.setattr(streaming._build, "loaded", lambda: counting)
    return counting


@pytest.mark.parametrize("cls,options", MODULES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_call_steps_equal_the_operator(cls, options, batched, dtype, counted_streamers):
    """The one-call streaming path (a state fed back under no_grad) gives the operator path's numbers exactly."""
    torch.manual_seed(1)
    module = cls(4, 6, num_layers=2, dtype=dtype, **options)
    xs = torch.randn(5, 3, 4, dtype=dtype) if batched else torch.randn(5, 4, dtype=dtype)
    state0 = initial_state(module, 3, dtype, batched)
    with torch.no_grad():
        fast_state, slow_state = state0, state0
        for x in xs:
            fast_y, fast_state = module.step(x, fast_state)
            with GatedrnnOps() as ops:  # a dispatch mode: the operator's path, counted
                slow_y, slow_state = module.step(x, slow_state)
            assert ops.counts["step"] == 1
            assert torch.equal(fast_y, slow_y)
            for a, b in zip(as_tuple(fast_state), as_tuple(slow_state)):
                assert torch.equal(a, b)
    assert counted_streamers.steps == len(xs)


def test_streaming_sees_weight_updates_and_replacements(counted_streamers):
    torch.manual_seed(2)
    module = gatedrnn.LSTM(4, 6)
    reference = gatedrnn.LSTM(4, 6)
    x, state = torch.randn(2, 4), initial_state(module, 2, torch.float32)
    with torch.no_grad():
        module.step(x, state)
        module.weight_hh_l0.mul_(0.5)  # in place, like an optimiser step
        module.bias_ih_l0.add_(1.0)
        reference.load_state_dict(module.state_dict())
        for a, b in zip(as_tuple(module.step(x, state)[1]), as_tuple(reference(x.unsqueeze(0), state)[1])):
            torch.testing.assert_close(a, b)
        module.weight_ih_l0 = torch.nn.Parameter(torch.randn(24, 4))  # replaced
        reference.load_state_dict(module.state_dict())
        for a, b in zip(as_tuple(module.step(x, state)[1]), as_tuple(reference(x.unsqueeze(0), state)[1])):
            torch.testing.assert_close(a, b)
        module.double()  # parameters' storage swapped in place
        state64 = tuple(s.double() for s in state)
        reference.double()
        for a, b in zip(as_tuple(module.step(x.double(), state64)[1]),
                        as_tuple(reference(x.double().unsqueeze(0), state64)[1])):
            torch.testing.assert_close(a, b)
    assert counted_streamers.steps == 4


def test_one_call_steps_leave_other_cases_to_the_general_path(counted_streamers):
    """Gradients, a first step without state, bad input, dropout between layers in training: the general path,
    whose errors are the layers' own; the module stays copyable and picklable after streaming."""
    import copy
    import io

    torch.manual_seed(3)
    module = gatedrnn.LSTM(4, 6, num_layers=2, dropout=0.5)
    x, state = torch.randn(2, 4), initial_state(module, 2, torch.float32)
    y, _ = module.step(x, state)  # grad enabled
    assert y.requires_grad and counted_streamers.steps == 0
    with torch.no_grad():
        module.step(x, None)
        assert counted_streamers.steps == 0
        module.step(x, state)  # training, dropout between layers
        assert counted_streamers.steps == 0
        module.eval()
        module.step(x, state)
        assert counted_streamers.steps == 1
        with pytest.raises(ValueError, match="input_size"):
            module.step(torch.randn(2, 5), state)
        with pytest.raises(TypeError):
            module.step(x.double(), state)
        with pytest.raises(RuntimeError, match=r"h_0 should have shape \(2, 2, 6\)"):
            module.step(x, (state[0][:, :1], state[1]))
    copy.deepcopy(module)
    torch.save(module, io.BytesIO())


@pytest.mark.parametrize("regulariser", REGULARISERS)
def test_training_steps_with_a_regulariser_take_the_general_path(regulariser, counted_streamers):
    """In training, every regulariser that draws noise (each of REGULARISERS, so a new one is covered) keeps the
    step off the one-call path: it either steps with its noise or refuses, as the general path does; the same
    module without it, still in training, is stepped in one call."""
    torch.manual_seed(5)
    x = torch.randn(2, 4)
    module = gatedrnn.LSTM(4, 6, **{regulariser: 0.25})
    state = initial_state(module, 2, torch.float32)
    with torch.no_grad():
        try:
            module.step(x, state)
        except ValueError as error:  # the masks drawn once per sequence refuse a step while training
            assert "while training" in str(error)
        assert counted_streamers.steps == 0
        plain = gatedrnn.LSTM(4, 6)
        assert plain.training
        plain.step(x, initial_state(plain, 2, torch.float32))
    assert counted_streamers.steps == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_steps_on_the_reference_path(dtype, counted_streamers):
    """The engine takes float32/float64 only: a half-precision step under no_grad runs the cell functions."""
    torch.manual_seed(4)
    module = gatedrnn.LSTM(4, 6).to(dtype)
    x = torch.randn(3, 2, 4, dtype=dtype)
    with torch.no_grad():
        _, state = module.step(x[0])
        for t in range(1, 3):
            y, state = module.step(x[t], state)
        expected, _ = module(x)
    torch.testing.assert_close(y, expected[-1], rtol=1e-2, atol=1e-2)
    assert (counted_streamers.asked, counted_streamers.steps) == (2, 0)  # asked, and it declined


def test_streaming_holds_no_parameter(counted_streamers):
    """torch's swap mode (load_state_dict and .to() through torch.utils.swap_tensors) refuses tensors with other
    owners: after streaming, both still work, and the next step reads the new weights."""
    torch.manual_seed(5)
    module, other = gatedrnn.LSTM(4, 6), gatedrnn.LSTM(4, 6)
    x, state = torch.randn(2, 4), initial_state(module, 2, torch.float32)
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with torch.no_grad():
            module.step(x, state)
            module.load_state_dict(other.state_dict())
            y, _ = module.step(x, state)
            torch.testing.assert_close(y, other(x.unsqueeze(0), state)[0][0])
            module.double()
            y64, _ = module.step(x.double(), tuple(s.double() for s in state))
            torch.testing.assert_close(y64, y.double(), rtol=1e-6, atol=1e-6)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    assert counted_streamers.steps == 3


@pytest.mark.parametrize("cell", ["lstm", "lstm-proj", "gru", "rnn"])
@pytest.mark.parametrize("sizes", [(23, 37), (64, 48), (5, 3), (300, 40)], ids=lambda s: f"I{s[0]}-H{s[1]}")
@pytest.mark.parametrize("batch", [1, 2, 5, 20])
def test_one_call_steps_equal_torch_nn(cell, sizes, batch, counted_streamers):
    """The one-call step against torch.nn's own module on the same weights, at sizes whose gate rows are not a
    multiple of the GEMV's block of rows (37 = 2 x 16 + 5) nor their columns of its vector width; at I = 300 and
    batch 20 the first layer's GEMMs go to BLAS and the second layer's to the GEMV (`step_gemv`)."""
    input_size, hidden = sizes
    torch.manual_seed(hidden)
    extra = {"proj_size": min(7, hidden - 1)} if cell == "lstm-proj" else {}
    kind = {"lstm": "LSTM", "lstm-proj": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    ours = getattr(gatedrnn, kind)(input_size, hidden, num_layers=2, **extra).eval()
    peer = getattr(torch.nn, kind)(input_size, hidden, num_layers=2, **extra).eval()
    peer.load_state_dict(ours.state_dict())
    x = torch.randn(6, batch, input_size)
    state = initial_state(ours, batch, torch.float32)
    with torch.no_grad():
        expected, expected_state = peer(x, state)
        outputs = []
        for t in range(x.shape[0]):
            y, state = ours.step(x[t], state)
            outputs.append(y)
    assert counted_streamers.steps == x.shape[0]
    torch.testing.assert_close(torch.stack(outputs), expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(as_tuple(state), as_tuple(expected_state)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_one_call_steps_read_settings_changed_after_construction(counted_streamers):
    """The C++ call reads the layer's settings at every step: zoneout set on a live module, or training with a
    regulariser, send the step to the general path (whose zoneout draws noise while training, and which refuses
    recurrent_dropout while training), and eval() returns it to the one call."""
    torch.manual_seed(11)
    module = gatedrnn.LSTM(4, 6).eval()
    x, state = torch.randn(2, 4), initial_state(module, 2, torch.float32)
    with torch.no_grad():
        expected = module.step(x, state)[0]
        assert counted_streamers.steps == 1
        module.zoneout = (0.5, 0.0)
        module.train()
        first, second = module.step(x, state)[0], module.step(x, state)[0]
        assert counted_streamers.steps == 1 and not torch.equal(first, second)  # zoneout drew noise
        module.zoneout = (0.0, 0.0)
        module.recurrent_dropout = 0.25
        with pytest.raises(ValueError, match="recurrent_dropout"):  # the general path's refusal
            module.step(x, state)
        assert counted_streamers.steps == 1
        module.eval()
        assert torch.equal(module.step(x, state)[0], expected)
        assert counted_streamers.steps == 2


def test_one_call_steps_take_exact_tensors_only(counted_streamers):
    """An input or state that is a Parameter or another Tensor subclass takes the general path (as torch.nn's own
    functions would see it), with the same numbers."""
    torch.manual_seed(12)
    module = gatedrnn.GRU(4, 6).eval()
    x, state = torch.randn(2, 4), torch.randn(1, 2, 6)

    class Marked(torch.Tensor):
        pass

    with torch.no_grad():
        expected = module.step(x, state)[0]
        assert counted_streamers.steps == 1
        for other_x, other_state in [(torch.nn.Parameter(x), state), (x, torch.nn.Parameter(state)),
                                     (x.as_subclass(Marked), state)]:
            torch.testing.assert_close(module.step(other_x, other_state)[0].as_subclass(torch.Tensor), expected)
        assert counted_streamers.steps == 1


def test_one_layer_final_state_is_its_own_tensor():
    """h_n and c_n of a one-layer forward are not views: truncated BPTT's h_n.detach_() works, as in torch.nn."""
    module = gatedrnn.LSTM(3, 4)
    output, (h_n, c_n) = module(torch.randn(5, 2, 3))
    h_n.detach_(), c_n.detach_()
    assert not h_n.requires_grad and h_n._base is None and c_n._base is None


def test_one_call_steps_read_parametrized_weights(counted_streamers):
    """A parametrized weight (torch.nn.utils.parametrize) is not in _parameters: the step reads its value."""
    from torch.nn.utils import parametrize

    class Scaled(torch.nn.Module):
        def forward(self, weight):
            return 3.0 * weight

    torch.manual_seed(6)
    module = gatedrnn.GRU(4, 6)
    parametrize.register_parametrization(module, "bias_hh_l0", Scaled())
    x, state = torch.randn(2, 4), torch.randn(1, 2, 6)
    with torch.no_grad():
        fast, _ = module.step(x, state)
        with GatedrnnOps():
            slow, _ = module.step(x, state)
        expected, _ = module(x.unsqueeze(0), state)
    assert counted_streamers.steps == 1
    assert torch.equal(fast, slow)
    torch.testing.assert_close(fast, expected[0])


@pytest.mark.parametrize("cls,options", [(gatedrnn.LSTM, {"bias": False}), (gatedrnn.GRU, {"bias": False}),
                                         (gatedrnn.LSTM, {"bias": False, "proj_size": 3})],
                         ids=["lstm", "gru", "lstm-proj"])
def test_one_call_steps_without_bias(cls, options, counted_streamers, monkeypatch):
    """bias=False: the step kernel gets no bias slots, and the names of absent weights come from the settings
    (no lookup by name: `read_weight` is not called while stepping)."""
    from gatedrnn.layers import _weights

    torch.manual_seed(7)
    module = cls(4, 6, num_layers=2, **options).eval()
    x = torch.randn(4, 3, 4)
    state = initial_state(module, 3, torch.float32)
    with torch.no_grad():
        expected, expected_state = module(x, state)
        outputs = []
        with monkeypatch.context() as patch:
            patch.setattr(_weights, "read_weight", lambda *args: pytest.fail("the names were looked up"))
            params, names = _weights.stream_weights(module)
            for t in range(x.shape[0]):
                y, state = module.step(x[t], state)
                outputs.append(y)
    assert params is module._parameters  # the layer's own dict, read by the kernel
    assert [name is None for name in names[:5]] == [False, False, True, True, "proj_size" not in options]
    assert counted_streamers.steps == x.shape[0]
    torch.testing.assert_close(torch.stack(outputs), expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(as_tuple(state), as_tuple(expected_state)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_one_call_steps_decline_the_reference_backend(monkeypatch, counted_streamers):
    """GATEDRNN_BACKEND=reference, set while streaming, reaches the C++ call (it reads the variable at every call):
    the step then runs the cell functions, as forward does."""
    torch.manual_seed(8)
    module = gatedrnn.GRU(4, 6).eval()
    x, state = torch.randn(2, 4), torch.randn(1, 2, 6)
    with torch.no_grad():
        fast, _ = module.step(x, state)
        monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
        reference, _ = module.step(x, state)
        monkeypatch.setenv("GATEDRNN_BACKEND", "fused")
        again, _ = module.step(x, state)
    assert (counted_streamers.asked, counted_streamers.steps) == (3, 2)
    torch.testing.assert_close(reference, fast, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, fast)


@pytest.mark.parametrize("where", ["subclass", "instance"])
def test_one_call_paths_decline_an_own_layer_weights(where):
    """A subclass, or an instance, that replaces layer_weights runs and steps with what it returns: forward and
    step agree, and differ from the parameters as registered."""

    def halved(weights):
        return weights._replace(w_hh=0.5 * weights.w_hh)

    class HalvedRecurrent(gatedrnn.LSTM):
        def layer_weights(self, layer, direction=0):
            return halved(super().layer_weights(layer, direction))

    torch.manual_seed(9)
    module = HalvedRecurrent(4, 6).eval() if where == "subclass" else gatedrnn.LSTM(4, 6).eval()
    if where == "instance":
        registered = module.layer_weights
        module.layer_weights = lambda layer, direction=0: halved(registered(layer, direction))
    plain = gatedrnn.LSTM(4, 6).eval()
    plain.load_state_dict(module.state_dict())
    x = torch.randn(3, 2, 4)
    state0 = initial_state(module, 2, torch.float32)
    with torch.no_grad():
        expected, _ = module(x, state0)
        state = state0
        for t in range(x.shape[0]):
            y, state = module.step(x[t], state)
        registered_output, _ = plain(x, state0)
    torch.testing.assert_close(y, expected[-1], rtol=1e-5, atol=1e-5)
    assert (expected - registered_output).abs().max() > 1e-3


def test_a_bias_registered_later_is_stepped_as_forward_reads_it(counted_streamers):
    """A layer made with bias=False that gets a bias parameter later: forward reads it by name, and so does the
    step (the settings no longer tell which weights exist, so every name is read)."""
    torch.manual_seed(10)
    module = gatedrnn.GRU(4, 6, bias=False).eval()
    module.bias_ih_l0, module.bias_hh_l0 = torch.nn.Parameter(torch.randn(18)), torch.nn.Parameter(torch.randn(18))
    x, state = torch.randn(3, 2, 4), torch.randn(1, 2, 6)
    with torch.no_grad():
        expected, _ = module(x, state)
        for t in range(x.shape[0]):
            y, state = module.step(x[t], state)
    assert counted_streamers.steps == x.shape[0]
    torch.testing.assert_close(y, expected[-1], rtol=1e-5, atol=1e-5)


def test_a_reference_backend_never_builds_the_engine_for_a_step(tmp_path):
    """GATEDRNN_BACKEND=reference in a fresh process with an empty engine cache: stepping under no_grad runs the
    cell functions and neither loads nor builds the engine (the one-call path only uses an engine loaded before)."""
    import os
    import subprocess
    import sys

    script = (
        "import torch, gatedrnn\n"
        "from gatedrnn.engine import _build\n"
        "module = gatedrnn.LSTM(3, 4).eval()\n"
        "state = None\n"
        "with torch.no_grad():\n"
        "    for t in range(3):\n"
        "        y, state = module.step(torch.randn(2, 3), state)\n"
        "print(_build.loaded() is None, y.shape)\n"
    )
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    env = {**os.environ, "GATEDRNN_BACKEND": "reference", "GATEDRNN_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "True" and "compiling" not in done.stderr
    assert list(cache.iterdir()) == []
