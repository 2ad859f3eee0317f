"""Bad input raises a clear error, before any computation, naming what was expected and what came.

Each case gives the error type and a regex that must find both the expected value and the received one in
the message. Forward-call cases also check that nothing ran (the engine and the step functions are replaced
by tripwires), that no parameter changed or received a gradient, and that the given tensors are untouched.
"""
from __future__ import annotations

import re
import types
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import gatedrnn
from gatedrnn import engine
from gatedrnn.layers import cell_modules


def _packed(data_rows: int, batch_sizes: list, features: int = 3, dtype=torch.float32,
            sizes_dtype=torch.int64, **indices) -> PackedSequence:
    """A hand-built PackedSequence (bypassing pack_padded_sequence's own checks)."""
    index = {k: torch.tensor(v) for k, v in indices.items()}
    return PackedSequence(x(data_rows, features, dtype=dtype), torch.tensor(batch_sizes, dtype=sizes_dtype),
                          index.get("sorted_indices"), index.get("unsorted_indices"))


def x(*shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    if not dtype.is_floating_point:
        return torch.ones(*shape, dtype=dtype, device=device)
    return torch.randn(*shape, dtype=dtype) if device == "cpu" else torch.empty(*shape, dtype=dtype, device=device)


def lstm2():
    return gatedrnn.LSTM(3, 4, num_layers=2)  # h_0, c_0: (2, N, 4)


def lstm_proj():
    return gatedrnn.LSTM(3, 4, proj_size=2)  # h_0: (1, N, 2), c_0: (1, N, 4)


def gru():
    return gatedrnn.GRU(3, 4)  # h_0: (1, N, 4)


def rnn():
    return gatedrnn.RNN(3, 4, bidirectional=True)  # h_0: (2, N, 4)


def gru_batch_first():
    return gatedrnn.GRU(3, 4, batch_first=True)


# each factory's torch.nn twin: the same bad input must raise an exception of torch.nn's type (or a subclass)
TORCH_TWINS = {
    lstm2: lambda: nn.LSTM(3, 4, num_layers=2), lstm_proj: lambda: nn.LSTM(3, 4, proj_size=2),
    gru: lambda: nn.GRU(3, 4), rnn: lambda: nn.RNN(3, 4, bidirectional=True),
    gru_batch_first: lambda: nn.GRU(3, 4, batch_first=True),
}


def _torch_error(call):
    """The exception torch.nn raises for the same call, or None when it accepts it (or returns garbage)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except Exception as error:  # noqa: BLE001 - whatever torch.nn raises is the type to match
        return error
    return None


def _assert_same_kind(ours: BaseException, theirs) -> None:
    if theirs is not None:
        assert isinstance(ours, type(theirs)), (
            f"torch.nn raises {type(theirs).__name__} ({theirs}), gatedrnn {type(ours).__name__} "
            f"(bases {[c.__name__ for c in type(ours).__mro__]})"
        )


# (id, module factory, call arguments (input, hx), error type, regex naming what was expected and what came)
FORWARD_CASES = [
    # wrong input rank
    ("rank-1", lstm2, lambda: (x(3), None), ValueError, r"3-D \(batched\) or 2-D \(unbatched\), got a 1-D"),
    ("rank-4", gru, lambda: (x(2, 2, 2, 3), None),
     ValueError, r"3-D .* or 2-D .*got a 4-D tensor of shape \(2, 2, 2, 3\)"),
    ("rank-0", rnn, lambda: (torch.tensor(1.0), None), ValueError, r"3-D .* or 2-D .*got a 0-D"),
    ("not-a-tensor", lstm2, lambda: ([[1.0, 2.0, 3.0]], None), TypeError, r"torch\.Tensor, got list"),
    ("zero-steps", gru, lambda: (x(0, 2, 3), None), ValueError, r"at least one time step, got shape \(0, 2, 3\)"),
    # feature size != input_size
    ("features", lstm2, lambda: (x(5, 2, 7), None), ValueError, r"expected 3, got 7"),
    ("features-unbatched", gru, lambda: (x(5, 2), None), ValueError, r"expected 3, got 2"),
    # initial state: shape, batch, size, rank
    ("h0-layers", lstm2, lambda: (x(5, 2, 3), (x(1, 2, 4), x(2, 2, 4))), ValueError,
     r"h_0 should have shape \(2, 2, 4\), got \(1, 2, 4\)"),
    ("h0-batch", gru, lambda: (x(5, 2, 3), x(1, 3, 4)),
     ValueError, r"h_0 should have shape \(1, 2, 4\), got \(1, 3, 4\)"),
    ("h0-directions", rnn, lambda: (x(5, 2, 3), x(1, 2, 4)),
     ValueError, r"h_0 should have shape \(2, 2, 4\), got \(1, 2, 4\)"),
    ("c0-size", lstm2, lambda: (x(5, 2, 3), (x(2, 2, 4), x(2, 2, 5))), ValueError,
     r"c_0 should have shape \(2, 2, 4\), got \(2, 2, 5\)"),
    ("h0-proj-size", lstm_proj, lambda: (x(5, 2, 3), (x(1, 2, 4), x(1, 2, 4))), ValueError,
     r"h_0 should have shape \(1, 2, 2\), got \(1, 2, 4\)"),
    ("h0-batch-first", gru_batch_first, lambda: (x(2, 5, 3), x(1, 5, 4)), ValueError,
     r"h_0 should have shape \(1, 2, 4\), got \(1, 5, 4\)"),
    ("h0-unbatched-3d", lstm2, lambda: (x(5, 3), (x(2, 1, 4), x(2, 1, 4))), ValueError,
     r"h_0 should be 2-D of shape \(2, 4\), got a 3-D tensor of shape \(2, 1, 4\)"),
    ("h0-batched-2d", gru, lambda: (x(5, 2, 3), x(1, 4)), ValueError, r"should have shape \(1, 2, 4\), got \(1, 4\)"),
    ("h0-packed-batch", lstm2, lambda: (_packed(5, [3, 2]), (x(2, 2, 4), x(2, 2, 4))), ValueError,
     r"h_0 should have shape \(2, 3, 4\), got \(2, 2, 4\)"),
    # dtypes: integer input or state, float64 against float32 parameters
    ("input-int", lstm2, lambda: (x(5, 2, 3, dtype=torch.int64), None), TypeError,
     r"floating-point tensor of dtype torch\.float32.*got torch\.int64"),
    ("h0-int", gru, lambda: (x(5, 2, 3), x(1, 2, 4, dtype=torch.int32)), TypeError,
     r"h_0 should be a floating-point tensor of dtype torch\.float32.*got torch\.int32"),
    ("input-bool", rnn, lambda: (x(5, 2, 3, dtype=torch.bool), None), TypeError, r"torch\.float32.*got torch\.bool"),
    ("input-float64", lstm2, lambda: (x(5, 2, 3, dtype=torch.float64), None), TypeError,
     r"input dtype \(torch\.float64\) does not match the parameters' dtype \(torch\.float32\)"),
    ("c0-float64", lstm2, lambda: (x(5, 2, 3), (x(2, 2, 4), x(2, 2, 4, dtype=torch.float64))), TypeError,
     r"c_0 dtype \(torch\.float64\) does not match the parameters' dtype \(torch\.float32\)"),
    # device (the 'meta' device stands in for a second device on a CPU-only machine)
    ("input-device", gru, lambda: (x(5, 2, 3, device="meta"), None), ValueError, r"input is on meta, expected .* cpu"),
    ("h0-device", gru, lambda: (x(5, 2, 3), x(1, 2, 4, device="meta")), ValueError, r"h_0 is on meta, expected .* cpu"),
    # wrong hx type
    ("lstm-hx-tensor", lstm2, lambda: (x(5, 2, 3), x(2, 2, 4)), TypeError, r"tuple \(h_0, c_0\), got Tensor"),
    ("lstm-hx-3-tuple", lstm2, lambda: (x(5, 2, 3), (x(2, 2, 4),) * 3),
     TypeError, r"tuple \(h_0, c_0\), got a tuple of 3"),
    ("lstm-hx-none-inside", lstm2, lambda: (x(5, 2, 3), (None, x(2, 2, 4))),
     TypeError, r"h_0 .*torch\.Tensor, got NoneType"),
    ("gru-hx-tuple", gru, lambda: (x(5, 2, 3), (x(1, 2, 4),)), TypeError, r"Tensor h_0, got tuple"),
    # invalid packing
    ("packed-increasing", lstm2, lambda: (_packed(5, [2, 3]), None), ValueError, r"non-increasing, got \[2, 3\]"),
    ("packed-zero-size", gru, lambda: (_packed(2, [2, 0]), None),
     ValueError, r"positive and non-increasing, got \[2, 0\]"),
    ("packed-empty", gru, lambda: (_packed(0, []), None), ValueError, r"positive and non-increasing, got \[\]"),
    ("packed-rows", lstm2, lambda: (_packed(6, [3, 2]), None), ValueError, r"sum\(batch_sizes\) = 5 rows, got 6"),
    ("packed-features", gru, lambda: (_packed(5, [3, 2], features=7), None), ValueError,
     r"shape \(sum of lengths, 3\), got \(5, 7\)"),
    ("packed-int-data", gru, lambda: (_packed(5, [3, 2], dtype=torch.int64), None),
     TypeError, r"torch\.float32.*got torch\.int64"),
    ("packed-float-sizes", gru, lambda: (_packed(5, [3, 2], sizes_dtype=torch.float32), None), ValueError,
     r"1-D integer tensor, got 1-D of dtype torch\.float32"),
    ("packed-sorted-indices", lstm2, lambda: (_packed(5, [3, 2], sorted_indices=[0, 1], unsorted_indices=[0, 1]), None),
     ValueError, r"sorted_indices should be a permutation of range\(3\).*got \[0, 1\]"),
    ("packed-unsorted-not-inverse", gru,
     lambda: (_packed(5, [3, 2], sorted_indices=[1, 2, 0], unsorted_indices=[1, 2, 0]), None),
     ValueError, r"unsorted_indices should invert sorted_indices \[1, 2, 0\], got \[1, 2, 0\]"),
]


@pytest.fixture
def tripwires(monkeypatch):
    """Make any computation fail loudly, so an error raised later than validation is caught."""
    def boom(*args, **kwargs):
        raise AssertionError("computation started before the input was rejected")
    monkeypatch.setattr(engine, "run_layer", boom)
    monkeypatch.setattr(engine, "run_stack_inference", boom)
    for name in ("lstm_step", "gru_step", "rnn_step"):
        monkeypatch.setattr(cell_modules, name, boom)


def _snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _assert_untouched(module, before, given) -> None:
    for name, p in module.named_parameters():
        assert torch.equal(p.detach(), before[name]) and p.grad is None, name
    for tensor, copy in given:
        if tensor.device.type != "meta":
            assert torch.equal(tensor, copy)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])  # no_grad: the one-call stack path's checks
@pytest.mark.parametrize("case_id,factory,make_args,error,pattern", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_forward_rejects(case_id, factory, make_args, error, pattern, grad, tripwires):
    module = factory()
    before = _snapshot(module)
    input, hx = make_args()
    given = [(t, t.clone()) for t in _tensors((input, hx))]
    with pytest.raises(error) as caught, torch.set_grad_enabled(grad):
        module(input, hx)
    assert re.search(pattern, str(caught.value)), f"message {str(caught.value)!r} does not match {pattern!r}"
    _assert_untouched(module, before, given)
    _assert_same_kind(caught.value, _torch_error(lambda: TORCH_TWINS[factory]()(*make_args())))


CELL_CASES = [
    ("cell-rank-3", gatedrnn.LSTMCell, lambda: (x(1, 2, 3), None),
     ValueError, r"1-D or 2-D, got a 3-D tensor of shape \(1, 2, 3\)"),
    ("cell-features", gatedrnn.GRUCell, lambda: (x(2, 5), None), ValueError, r"expected 3, got 5"),
    ("cell-h-batch", gatedrnn.GRUCell, lambda: (x(2, 3), x(3, 4)),
     ValueError, r"h should have shape \(2, 4\), got \(3, 4\)"),
    ("cell-c-size", gatedrnn.LSTMCell, lambda: (x(2, 3), (x(2, 4), x(2, 5))), ValueError,
     r"c should have shape \(2, 4\), got \(2, 5\)"),
    ("cell-h-unbatched", gatedrnn.RNNCell, lambda: (x(3), x(1, 4)),
     ValueError, r"h should have shape \(4,\), got \(1, 4\)"),
    ("cell-input-int", gatedrnn.GRUCell, lambda: (x(2, 3, dtype=torch.int64), None),
     TypeError, r"torch\.float32.*got torch\.int64"),
    ("cell-h-float64", gatedrnn.RNNCell, lambda: (x(2, 3), x(2, 4, dtype=torch.float64)), TypeError,
     r"h dtype \(torch\.float64\) does not match the parameters' dtype \(torch\.float32\)"),
    ("cell-device", gatedrnn.LSTMCell, lambda: (x(2, 3, device="meta"), None),
     ValueError, r"input is on meta, expected .* cpu"),
    ("cell-hx-tensor", gatedrnn.LSTMCell, lambda: (x(2, 3), x(2, 4)), TypeError, r"tuple \(h, c\), got Tensor"),
    ("cell-hx-1-tuple", gatedrnn.LSTMCell, lambda: (x(2, 3), (x(2, 4),)),
     TypeError, r"tuple \(h, c\), got a tuple of 1"),
    ("cell-gru-hx-tuple", gatedrnn.GRUCell, lambda: (x(2, 3), (x(2, 4),)),
     TypeError, r"h should be a torch\.Tensor, got tuple"),
]


@pytest.mark.parametrize("case_id,cls,make_args,error,pattern", CELL_CASES, ids=[c[0] for c in CELL_CASES])
def test_cell_rejects(case_id, cls, make_args, error, pattern, tripwires):
    module = cls(3, 4)
    before = _snapshot(module)
    input, hx = make_args()
    given = [(t, t.clone()) for t in _tensors((input, hx))]
    with pytest.raises(error) as caught:
        module(input, hx)
    assert re.search(pattern, str(caught.value)), f"message {str(caught.value)!r} does not match {pattern!r}"
    _assert_untouched(module, before, given)
    _assert_same_kind(caught.value, _torch_error(lambda: getattr(nn, cls.__name__)(3, 4)(*make_args())))


_NAMES = ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")
OURS = types.SimpleNamespace(**{n: getattr(gatedrnn, n) for n in _NAMES}, RecurrentBase=gatedrnn.layers.RecurrentBase)
TORCH = types.SimpleNamespace(**{n: getattr(nn, n) for n in _NAMES},
                              RecurrentBase=lambda mode, *args, **kwargs: nn.RNNBase(mode.upper(), *args, **kwargs))

CONSTRUCTOR_CASES = [
    ("proj-equal-hidden", lambda lib: lib.LSTM(3, 4, proj_size=4), ValueError, r"proj_size < 4, got 4"),
    ("proj-above-hidden", lambda lib: lib.LSTM(3, 4, proj_size=9), ValueError, r"proj_size < 4, got 9"),
    ("proj-negative", lambda lib: lib.LSTM(3, 4, proj_size=-1), ValueError, r"proj_size should be >= 0, got -1"),
    ("proj-on-gru", lambda lib: lib.RecurrentBase("gru", 3, 4, proj_size=2),
     ValueError, r"only supported for LSTM"),
    ("dropout-negative", lambda lib: lib.LSTM(3, 4, dropout=-0.1), ValueError, r"range \[0, 1\], got -0\.1"),
    ("dropout-above-one", lambda lib: lib.GRU(3, 4, dropout=1.5), ValueError, r"range \[0, 1\], got 1\.5"),
    ("dropout-string", lambda lib: lib.RNN(3, 4, dropout="0.1"), ValueError, r"range \[0, 1\], got '0\.1'"),
    ("dropout-bool", lambda lib: lib.GRU(3, 4, dropout=True), ValueError, r"range \[0, 1\], got True"),
    ("hidden-zero", lambda lib: lib.LSTM(3, 0), ValueError, r"hidden_size should be >= 1, got 0"),
    ("hidden-negative", lambda lib: lib.GRU(3, -2), ValueError, r"hidden_size should be >= 1, got -2"),
    ("input-negative", lambda lib: lib.RNN(-1, 4), ValueError, r"input_size should be >= 1, got -1"),
    ("input-zero", lambda lib: lib.LSTM(0, 4), ValueError, r"input_size should be >= 1, got 0"),
    ("input-float", lambda lib: lib.GRU(3.0, 4), TypeError, r"input_size should be an int, got float"),
    ("layers-float", lambda lib: lib.GRU(3, 4, num_layers=2.0), TypeError, r"num_layers should be an int, got float"),
    ("cell-hidden-negative", lambda lib: lib.RNNCell(3, -1), ValueError, r"hidden_size should be >= 1, got -1"),
    ("layers-zero", lambda lib: lib.LSTM(3, 4, num_layers=0), ValueError, r"num_layers should be >= 1, got 0"),
    ("hidden-float", lambda lib: lib.LSTM(3, 4.0), TypeError, r"hidden_size should be an int, got float \(4\.0\)"),
    ("layers-bool", lambda lib: lib.GRU(3, 4, num_layers=True), TypeError, r"num_layers should be an int, got bool"),
    ("nonlinearity", lambda lib: lib.RNN(3, 4, nonlinearity="sigmoid"),
     ValueError, r"'tanh' or 'relu', got 'sigmoid'"),
    ("cell-hidden-zero", lambda lib: lib.GRUCell(3, 0), ValueError, r"hidden_size should be >= 1, got 0"),
    ("cell-input-negative", lambda lib: lib.LSTMCell(-3, 4), ValueError, r"input_size should be >= 0, got -3"),
    ("cell-nonlinearity", lambda lib: lib.RNNCell(3, 4, nonlinearity="gelu"),
     ValueError, r"'tanh' or 'relu', got 'gelu'"),
]


@pytest.mark.parametrize("case_id,build,error,pattern", CONSTRUCTOR_CASES, ids=[c[0] for c in CONSTRUCTOR_CASES])
def test_constructor_rejects(case_id, build, error, pattern):
    with pytest.raises(error) as caught:
        build(OURS)
    assert re.search(pattern, str(caught.value)), f"message {str(caught.value)!r} does not match {pattern!r}"
    _assert_same_kind(caught.value, _torch_error(lambda: build(TORCH)))


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match=r"dropout=0\.5 and num_layers=1"):
        gatedrnn.LSTM(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gatedrnn.LSTM(3, 4, num_layers=2, dropout=0.5)


def test_valid_edge_cases_are_accepted():
    """Boundaries that torch.nn accepts must not be rejected: dropout 0 and 1, a cell's input_size 0 (a layer's
    is rejected, as torch.nn does), an empty batch, lists for (h_0, c_0), a PackedSequence whose indices are
    consistent."""
    gatedrnn.GRU(3, 4, num_layers=2, dropout=0.0), gatedrnn.GRU(3, 4, num_layers=2, dropout=1.0)
    assert gatedrnn.GRUCell(0, 4)(torch.randn(2, 0)).shape == (2, 4)
    out, (h, c) = gatedrnn.LSTM(3, 4)(torch.randn(5, 0, 3))
    assert out.shape == (5, 0, 4) and h.shape == (1, 0, 4)
    out, _ = gatedrnn.LSTM(3, 4)(torch.randn(5, 2, 3), [torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)])
    assert out.shape == (5, 2, 4)
    packed = _packed(5, [3, 2], sorted_indices=[2, 0, 1], unsorted_indices=[1, 2, 0])
    out, h = gatedrnn.GRU(3, 4)(packed)
    assert torch.equal(out.batch_sizes, packed.batch_sizes) and h.shape == (1, 3, 4)
