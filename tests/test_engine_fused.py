"""The fused C++ engine: equal to the reference scan and to torch.nn, forward and backward; gradcheck on every
fused Function; the layers really dispatch to it; the fallbacks (GATEDRNN_BACKEND=reference, a failed build)
work and warn once; traces equal the reference's; bf16 runs on the reference path.
"""
from __future__ import annotations

import random
import re
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn import engine
from gatedrnn.cells import CELL_SPECS, LayerWeights
from gatedrnn.engine import _build
from gatedrnn.engine.ops import SCAN
from gatedrnn.inspect import trace
from op_counter import GatedrnnOps

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}


@pytest.fixture(scope="module", autouse=True)
def built_engine():
    """Build (or load) the extension once for the module; every test below expects it."""
    assert _build.load() is not None, f"the fused engine did not build: {_build.error()}"


def make_module(cell: str, input_size: int, hidden_size: int, *, dtype, **options):
    """The gatedrnn layer of any cell in the table (LSTM variants and the sLSTM included)."""
    if cell in ("layernorm_lstm", "layernorm_gru"):
        layer_type = gatedrnn.LayerNormLSTM if cell == "layernorm_lstm" else gatedrnn.LayerNormGRU
        return layer_type(input_size, hidden_size, dtype=dtype, **options)
    if cell.startswith("slstm"):
        return gatedrnn.SLSTM(input_size, hidden_size, dtype=dtype, forget_gate=CELL_SPECS[cell].variant, **options)
    if cell.startswith("lstm_"):
        return gatedrnn.LSTM(input_size, hidden_size, dtype=dtype, variant=cell[5:], **options)
    if cell.startswith("layernorm_"):
        layer = {"layernorm_lstm": gatedrnn.LayerNormLSTM, "layernorm_gru": gatedrnn.LayerNormGRU}[cell]
        return layer(input_size, hidden_size, dtype=dtype, **options)
    return make_pair(cell, input_size, hidden_size, dtype=dtype, **options)[0]


def make_pair(cell: str, input_size: int, hidden_size: int, *, dtype, **options):
    """A torch.nn module and the gatedrnn module with the same weights."""
    if cell == "lstm":
        ours, theirs = gatedrnn.LSTM, torch.nn.LSTM
    elif cell == "gru":
        ours, theirs = gatedrnn.GRU, torch.nn.GRU
        options.pop("proj_size", None)
    else:
        options.pop("proj_size", None)
        options["nonlinearity"] = cell[4:]
        ours, theirs = gatedrnn.RNN, torch.nn.RNN
    reference = theirs(input_size, hidden_size, dtype=dtype, **options)
    module = ours(input_size, hidden_size, dtype=dtype, **options)
    module.load_state_dict(reference.state_dict(), strict=True)
    return module, reference


def random_configs(count: int, seed: int = 3):
    rng = random.Random(seed)
    configs = []
    for k in range(count):
        cell = ("lstm", "gru", "rnn_tanh", "rnn_relu")[k % 4]
        hidden = rng.choice([1, 3, 8, 17])
        configs.append(dict(
            cell=cell, input_size=rng.choice([1, 4, 9]), hidden_size=hidden, num_layers=rng.choice([1, 2, 3]),
            bias=rng.random() < 0.8, batch_first=rng.random() < 0.5, bidirectional=rng.random() < 0.5,
            proj_size=rng.choice([0, 0, max(hidden // 2, 0)]) if cell == "lstm" and hidden > 1 else 0,
            packed=rng.random() < 0.4, steps=rng.choice([1, 2, 7]), batch=rng.choice([1, 2, 5]),
            dtype=(torch.float32, torch.float64)[k // 4 % 2], seed=rng.randrange(10**6),
        ))
    return configs


def run(module, x, hx, packed_lengths, loss_weights):
    """Forward, then the gradient of a fixed random-weighted loss w.r.t. x, hx and every parameter."""
    inputs = x
    if packed_lengths is not None:
        inputs = pack_padded_sequence(x, packed_lengths, batch_first=module.batch_first, enforce_sorted=False)
    output, hidden = module(inputs, hx)
    out = output.data if packed_lengths is not None else output
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    loss = (out * loss_weights[0][: out.numel()].view_as(out)).sum()
    loss = loss + sum((s * loss_weights[1][: s.numel()].view_as(s)).sum() for s in states)
    leaves = [x] + list(hx if isinstance(hx, tuple) else (hx,)) + list(module.parameters())
    grads = torch.autograd.grad(loss, leaves)
    return [out, *states], list(grads)


def assert_close_scaled(actual, expected, tol, what):
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("config", random_configs(40), ids=lambda c: f"{c['cell']}-{c['seed']}")
def test_fused_equals_reference_and_torch(config, monkeypatch):
    c = dict(config)
    torch.manual_seed(c["seed"])
    dtype, packed, steps, batch = c.pop("dtype"), c.pop("packed"), c.pop("steps"), c.pop("batch")
    c.pop("seed")
    cell = c.pop("cell")
    module, reference = make_pair(cell, dtype=dtype, **c)
    d = 2 if module.bidirectional else 1
    shape = (batch, steps, module.input_size) if module.batch_first else (steps, batch, module.input_size)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    p = module.proj_size or module.hidden_size
    h0 = torch.randn(d * module.num_layers, batch, p, dtype=dtype, requires_grad=True)
    hx = (h0, torch.randn(d * module.num_layers, batch, module.hidden_size, dtype=dtype, requires_grad=True)) \
        if cell == "lstm" else h0
    lengths = torch.randint(1, steps + 1, (batch,)) if packed else None
    if packed:
        lengths[0] = steps
    loss_weights = (torch.randn(steps * batch * d * p, dtype=dtype), torch.randn(d * module.num_layers * batch *
                    max(p, module.hidden_size), dtype=dtype))
    with GatedrnnOps() as ops:
        got = run(module, x, hx, lengths, loss_weights)
    assert ops.counts["scan"] == module.num_layers * d, "the layer did not run on the fused engine"
    assert ops.counts["scan_backward"] == module.num_layers * d, "the backward did not run the fused BPTT"
    expected_torch = run(reference, x, hx, lengths, loss_weights)
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    with GatedrnnOps() as ops:
        expected_ref = run(module, x, hx, lengths, loss_weights)
    assert ops.total == 0, "GATEDRNN_BACKEND=reference was ignored"
    tol = TOLERANCE[dtype]
    for expected, name in ((expected_ref, "reference"), (expected_torch, "torch.nn")):
        for k, (a, b) in enumerate(zip(got[0], expected[0])):
            assert_close_scaled(a, b, tol, f"output/state {k} vs {name}")
        for k, (a, b) in enumerate(zip(got[1], expected[1])):
            assert_close_scaled(a, b, tol, f"gradient {k} vs {name}")


FUSED_CELLS = [cell for cell, spec in CELL_SPECS.items() if spec.fused]


def initial_cell_state(spec, batch: int, hidden: int, **dd):
    """c0 as the kernels take it, (B, S*H) (S = spec.state_blocks; the sLSTM's [c | n | m], whose normaliser n is
    kept away from 0), or None without a cell state."""
    if not spec.has_cell_state:
        return None
    c0 = torch.randn(batch, spec.state_blocks * hidden, dtype=dd["dtype"])
    if spec.state_blocks > 1:
        c0[:, hidden : 2 * hidden] = c0[:, hidden : 2 * hidden].abs() + 0.5
    return c0.requires_grad_(dd.get("requires_grad", False))


def kernel_hh_columns(spec, out_size: int, hidden: int) -> int:
    """Columns of the kernels' w_hh: P, or P + (S−1)*H for a cell whose GEMM also reads its state (FGR's
    [h | i′ | f′ | o′], `CellSpec.kernel_reads_state`)."""
    return out_size + ((spec.state_blocks - 1) * hidden if spec.kernel_reads_state else 0)


def takes_zoneout(cell: str) -> bool:
    return CELL_SPECS[cell].state_blocks <= 1  # the sLSTM's kernel takes none
GRADCHECK_CASES = [  # every cell of the table: a kernel the engine does not know fails here
    (cell, proj, sizes, reverse, noise)
    for cell in FUSED_CELLS
    for proj in ((False, True) if CELL_SPECS[cell].supports_projection else (False,))
    for sizes in (None, [3, 3, 2, 1])
    for reverse in (False, True)
    for noise in ((False, True) if not reverse else (False,))
]
# the sLSTM's gradcheck from the zero state and through the per-head R is in tests/test_slstm_fused.py


@pytest.mark.parametrize("cell,proj,batch_sizes,reverse,noise", GRADCHECK_CASES)
def test_gradcheck_fused_function(cell, proj, batch_sizes, reverse, noise):
    """The hand-written BPTT against finite differences, for every input with a gradient: the cell's extra
    parameters (aux) included; with noise, zoneout weights in (0, 1), a recurrent dropout mask and, for cells
    with a candidate, a candidate dropout mask."""
    torch.manual_seed(0)
    steps, batch, inputs, hidden = 4, 3, 2, 3
    p = 2 if proj else hidden
    g = CELL_SPECS[cell].gate_count * hidden
    dd = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(steps, batch, inputs, **dd)
    if batch_sizes is not None:  # padded rows of a packed batch are zero, as the layers hand them over
        with torch.no_grad():
            for t, n in enumerate(batch_sizes):
                x[t, n:] = 0
    h0 = torch.randn(batch, p, **dd)
    c0 = initial_cell_state(CELL_SPECS[cell], batch, hidden, **dd)
    w_ih, w_hh = torch.randn(g, inputs, **dd), torch.randn(g, kernel_hh_columns(CELL_SPECS[cell], p, hidden), **dd)
    b_ih, b_hh = torch.randn(g, **dd), torch.randn(g, **dd)
    w_hr = torch.randn(p, hidden, **dd) if proj else None
    spec = CELL_SPECS[cell]
    aux = torch.randn(spec.aux_blocks * hidden, **dd) if spec.aux_blocks else None
    sizes = [] if batch_sizes is None else batch_sizes
    zoneout = mask = candidate = None
    if noise:
        if takes_zoneout(cell):
            zoneout = torch.rand(steps, batch, p + (hidden if spec.has_cell_state else 0), dtype=torch.float64)
        mask = torch.bernoulli(torch.full((batch, p), 0.7, dtype=torch.float64)) / 0.7
        if spec.candidate_gate is not None:
            candidate = torch.bernoulli(torch.full((steps, batch, hidden), 0.6, dtype=torch.float64)) / 0.6

    def function(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, aux):
        y, h_n, c_n, *_ = SCAN(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, sizes, reverse, True, aux, zoneout,
                               mask, candidate)
        return (y, h_n, c_n) if spec.has_cell_state else (y, h_n)

    assert torch.autograd.gradcheck(function, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, aux), eps=1e-6, atol=1e-7)


def test_layers_dispatch_to_fused_and_backend_info():
    info = gatedrnn.backend_info()
    assert info["backend"] == "fused", info
    assert "float32" in info["reason"]
    for module in (gatedrnn.LSTM(3, 4, proj_size=2), gatedrnn.GRU(3, 4), gatedrnn.RNN(3, 4, nonlinearity="relu")):
        with GatedrnnOps() as ops:
            module(torch.randn(5, 2, 3))
        assert ops.counts["scan"] == 1
    half = gatedrnn.backend_info(dtype=torch.bfloat16)
    assert half["backend"] == "reference" and "bfloat16" in half["reason"]


def test_bfloat16_runs_on_reference_path():
    torch.manual_seed(5)
    module = gatedrnn.LSTM(3, 4, dtype=torch.bfloat16)
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    with GatedrnnOps() as ops:
        output, _ = module(x)
    assert ops.total == 0
    expected, _ = module.float()(x.float())
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), expected, rtol=0.05, atol=0.05)


def test_environment_variable_forces_reference(monkeypatch):
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    info = gatedrnn.backend_info()
    assert info["backend"] == "reference" and "GATEDRNN_BACKEND" in info["reason"]
    with GatedrnnOps() as ops:
        gatedrnn.GRU(3, 4)(torch.randn(5, 2, 3))
    assert ops.total == 0


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    torch.manual_seed(1)
    module = gatedrnn.LSTM(3, 4, num_layers=2)
    x = torch.randn(6, 2, 3)
    expected, _ = module(x)

    def no_compiler():
        raise RuntimeError("Error building extension 'gatedrnn_fused': c++: command not found")

    monkeypatch.setattr(_build, "_load_or_build", no_compiler)
    monkeypatch.setattr(_build, "_module", None)
    monkeypatch.setattr(_build, "_error", None)
    monkeypatch.setattr(_build, "_attempted", False)
    with warnings.catch_warnings(record=True) as caught, GatedrnnOps() as ops:
        warnings.simplefilter("always")
        first, _ = module(x)
        second, _ = module(x)
        info = gatedrnn.backend_info()
    ours = [w for w in caught if "fused C++ engine" in str(w.message)]
    assert len(ours) == 1 and "command not found" in str(ours[0].message)
    assert info["backend"] == "reference" and "could not be built" in info["reason"]
    assert ops.total == 0
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("packed", [False, True])
def test_trace_equals_reference(cell, packed, monkeypatch):
    torch.manual_seed(2)
    module, _ = make_pair(cell, 3, 5, dtype=torch.float64, num_layers=2, bidirectional=True,
                          proj_size=3 if cell == "lstm" else 0)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    inputs = pack_padded_sequence(x, torch.tensor([6, 2, 5, 1]), enforce_sorted=False) if packed else x
    with GatedrnnOps() as ops:
        _, _, traces = module._run(inputs, None, trace=True)
    assert ops.counts["scan"] == 4
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    _, _, expected = module._run(inputs, None, trace=True)
    for layer, layer_expected in zip(traces, expected):
        for got, want in zip(layer, layer_expected):
            assert type(got) is type(want)
            for name, a, b in zip(want._fields, got, want):
                assert a.shape == b.shape, name
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_no_grad_keeps_no_workspace():
    """Without autograd the run keeps nothing for backward: scan runs with keep=False and outputs hold no graph;
    with autograd it keeps the buffers (keep=True) and the backward is the fused BPTT."""
    module = gatedrnn.LSTM(3, 4)
    with torch.no_grad(), GatedrnnOps() as ops:
        output, (h, c) = module(torch.randn(5, 2, 3))
    assert output.grad_fn is None and h.grad_fn is None
    assert [(name, args[-1]) for name, args in ops.calls] == [("scan", False)]
    with GatedrnnOps() as ops:
        output, _ = module(torch.randn(5, 2, 3))
        output.sum().backward()
    assert [(name, args[-1] if name == "scan" else None) for name, args in ops.calls] == [
        ("scan", True), ("scan_backward", None)]


def test_run_layer_contract_zero_padded_rows():
    torch.manual_seed(4)
    weights = LayerWeights(torch.randn(9, 2), torch.randn(9, 3), torch.randn(9), torch.randn(9))
    x, h0 = torch.randn(4, 3, 2), torch.randn(3, 3)
    sizes = [3, 2, 2, 1]
    result = engine.run_layer("gru", x, (h0,), weights, batch_sizes=sizes, reverse=True, trace=True)
    assert result.y[1, 2:].abs().sum() == 0 and result.y[3, 1:].abs().sum() == 0
    assert result.trace.r[3, 1:].abs().sum() == 0 and result.trace.h[1, 2:].abs().sum() == 0
    expected = engine.scan_reference("gru", x, (h0,), weights, sizes, True, True)
    torch.testing.assert_close(result.y, expected.y)
    torch.testing.assert_close(result.state[0], expected.state[0])
    for a, b in zip(result.trace, expected.trace):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rows_split_over_threads_match_reference(cell, monkeypatch):
    """Batches with enough work per step split their rows over threads (packed, reverse, projection too)."""
    torch.manual_seed(6)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        module, _ = make_pair(cell, 8, 128, dtype=torch.float64, bidirectional=True,
                              proj_size=64 if cell == "lstm" else 0)
        x = torch.randn(5, 16, 8, dtype=torch.float64, requires_grad=True)
        lengths = torch.tensor([5, 5, 4, 4, 3, 5, 2, 5, 5, 1, 5, 3, 5, 5, 4, 5])
        got = []
        for backend in ("", "reference"):
            monkeypatch.setenv("GATEDRNN_BACKEND", backend)
            output, _ = module(pack_padded_sequence(x, lengths, enforce_sorted=False))
            got.append((output.data, *torch.autograd.grad(output.data.sum(), [x, *module.parameters()])))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


SPLIT_CASES = [  # (cell, batch, hidden, layer options, how two threads split the forward's steps)
    ("lstm", 1, 128, {}, "unit_region"),
    ("lstm", 5, 160, {"bidirectional": True}, "unit_region"),  # 160 units: 80 per thread, not whole vectors
    ("gru", 3, 128, {}, "unit_region"),
    ("gru", 1, 130, {}, "unit_region"),                        # 64 and 66 units: a last panel of partial registers
    ("rnn_tanh", 2, 128, {}, "unit_region"),
    ("lstm", 8, 192, {}, "unit_region"),                       # batch 8, W_hh of 147,456 >= 2^17 weights
    ("gru", 8, 209, {}, "in_place_steps"),                     # 131,043 < 2^17: 9 x 8 rows, W_hh in place
    ("lstm", 1, 64, {}, "serial"),                             # too few units to split
    ("lstm", 2, 128, {"proj_size": 32}, "project_ahead"),      # a projection needs every unit: rows only
    ("lstm", 16, 128, {"proj_size": 64}, "row_region"),
    ("gru", 16, 128, {"zoneout": 0.2}, "row_region"),
    ("lstm", 9, 128, {"recurrent_dropout": 0.3, "bidirectional": True}, "row_region"),  # 9 rows: 4 and 5
    ("lstm_peephole", 16, 128, {}, "row_region"),
    ("layernorm_lstm", 1, 128, {}, "serial"),                  # whole-row statistics: never split by units
]


def _make_plain_or_variant(cell: str, input_size: int, hidden: int, dtype, options: dict):
    plain = {"lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "rnn_tanh": gatedrnn.RNN}
    return (plain[cell](input_size, hidden, dtype=dtype, **options) if cell in plain
            else make_module(cell, input_size, hidden, dtype=dtype, **options))


def _runs_on_one_and_two_threads(module, x, grad: bool):
    """The module's forward on x with 1, then 2 threads (the same noise masks in both): ([(output, *states, and with
    grad the gradients of a loss with respect to x and every parameter)] per run, the engine's split per run)."""
    library = _build.load()
    threads = torch.get_num_threads()
    runs, splits = [], []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            torch.manual_seed(12)  # the same zoneout / dropout masks in both runs
            with torch.set_grad_enabled(grad):
                output, state = module(x)
            splits.append(library.last_forward_split())
            states = state if isinstance(state, tuple) else (state,)
            grads = ()
            if grad:
                loss = output.square().sum() + sum(s.sum() for s in states)
                grads = torch.autograd.grad(loss, [x, *module.parameters()])
            runs.append((output, *states, *grads))
    finally:
        torch.set_num_threads(threads)
    return runs, splits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell,batch,hidden,options,split", SPLIT_CASES, ids=lambda v: str(v))
def test_fused_equals_one_thread_under_thread_splits(cell, batch, hidden, options, split, dtype):
    """Two threads split a forward's steps by hidden units (batch < 8, or 8 over >= 2^17 weights of W_hh) or by rows
    in one region (whole sequence); outputs, final state and every gradient equal the one-thread run, and the engine
    reports the split it took."""
    torch.manual_seed(11)
    module = _make_plain_or_variant(cell, 24, hidden, dtype, options).train()
    x = torch.randn(9, batch, 24, dtype=dtype, requires_grad=True)  # 9 x 16 rows: more than steps_in_place takes
    runs, splits = _runs_on_one_and_two_threads(module, x, grad=True)
    # one thread: the serial loop, or BLAS on W_hh in place for a sequence of at most 128 rows
    in_place = 3 <= batch and 9 * batch <= 128 and not (options.get("proj_size") or options.get("recurrent_dropout"))
    assert splits[0] == ("in_place_steps" if in_place else "serial")
    assert splits[1] == split
    # scaled to each tensor's largest value: BLAS may sum in another order with two threads (MKL does on an AMD
    # EPYC: y moves by ~5e-7, a weight gradient of values up to 42 by 4e-5), as torch.nn's results do
    params = [name for name, _ in module.named_parameters()]
    states = len(runs[0]) - 2 - len(params)
    names = ["output", *[f"state {k}" for k in range(states)], "dx", *[f"d{name}" for name in params]]
    for one, two, what in zip(*runs, names):
        assert_close_scaled(two, one, TOLERANCE[dtype], f"{cell}, two threads against one: {what}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell,batch,hidden,options", [
    ("lstm", 1, 64, {}),
    ("gru", 2, 32, {"bidirectional": True}),  # reverse time: the blocks are projected from the last
    ("lstm", 3, 40, {"proj_size": 16}),
    ("layernorm_lstm", 1, 32, {}),
    ("gru", 6, 16, {}),  # blocks of one step
])
@pytest.mark.parametrize("grad", [True, False], ids=["train", "no_grad"])
def test_fused_equals_one_thread_when_projecting_ahead(cell, batch, hidden, options, grad, dtype):
    """Below batch 8, where no split of the steps applies, a second thread computes x W_ihᵀ block by block ahead of
    the steps (37 of them: blocks of 8 / batch steps and a short last one): outputs, final states and, training,
    every gradient equal the one-thread run, and the engine reports the split."""
    torch.manual_seed(batch + hidden)
    module = _make_plain_or_variant(cell, 10, hidden, dtype, options)
    x = torch.randn(37, batch, 10, dtype=dtype, requires_grad=grad)
    runs, splits = _runs_on_one_and_two_threads(module, x, grad=grad)
    assert splits == ["serial", "project_ahead"]
    # The blocks read W_ih's rows in place, where one thread runs one GEMM, so float32 sums round differently. The
    # LayerNorm cell normalises each row of x W_ihᵀ, which magnifies that: over six seeds at this size its float32
    # results were 2e-6 to 2.3e-5 (scaled) off float64 on one thread and on two alike. float64 checks at 1e-9.
    tolerance = 5e-5 if cell == "layernorm_lstm" and dtype == torch.float32 else TOLERANCE[dtype]
    for k, (one, two) in enumerate(zip(*runs)):
        assert_close_scaled(two, one, tolerance, f"{cell}, projected ahead against one thread: tensor {k}")


def test_no_projection_ahead_where_the_sequence_does_not_fit_one_chunk():
    """Without a backward, x W_ihᵀ is kept one chunk at a time (2^18 values: 1024 steps of an LSTM at B = 1, H = 64):
    a longer sequence cannot have every step projected ahead, and runs serially, equal to one thread."""
    torch.manual_seed(3)
    module = gatedrnn.LSTM(4, 64)
    runs, splits = _runs_on_one_and_two_threads(module, torch.randn(1100, 1, 4), grad=False)
    assert splits == ["serial", "serial"]
    for one, two in zip(*runs):
        assert_close_scaled(two, one, TOLERANCE[torch.float32], "a sequence longer than a chunk")


@pytest.mark.parametrize("gemm", ["blas", "own"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_equals_torch_under_each_gemm(gemm, dtype, monkeypatch):
    """GATEDRNN_GEMM forces the step GEMM (BLAS, or the engine's own PanelGemm) for every weight the steps reuse
    (batch >= 3), and the GEMMs after the backward's loop (dW_ih, dW_hh, dW_hr, dx: PanelGemm's compute_tn reads
    the gate gradients in place as panels, the last one padded); each equals torch.nn in outputs, final states
    and every gradient, with full tiles, row remainders
    and a last partial column panel (hidden sizes that are not multiples of a panel); 1-2 rows left after the row
    tiles run on pairs of panels where two full panels remain (AVX2's 6-row tiles: 7 and 8 rows leave 1 and 2;
    AVX-512's and NEON's 8-row tiles: 10 rows leave 2)."""
    library = _build.load()
    monkeypatch.setenv("GATEDRNN_GEMM", gemm)
    cases = (("lstm", 16, 72, {}), ("gru", 5, 40, {"bidirectional": True}), ("lstm", 11, 48, {"proj_size": 20}),
             ("rnn_tanh", 3, 50, {"num_layers": 2}), ("lstm", 7, 36, {"proj_size": 20}), ("lstm", 8, 72, {}),
             ("gru", 10, 40, {}))
    for cell, batch, hidden, options in cases:
        torch.manual_seed(batch)
        module, reference = make_pair(cell, 12, hidden, dtype=dtype, **options)
        # 45 steps: more rows than steps_in_place takes, so the forward's steps run on a StepWeight as well
        x, fresh, weights = _inputs(cell, 45, batch, hidden, options, dtype)
        before = library.gemm_weights()
        got = run(module, x.clone().requires_grad_(), fresh(), None, weights)
        after = library.gemm_weights()
        _assert_runs_close(cell, got, run(reference, x.clone().requires_grad_(), fresh(), None, weights), dtype)
        forced, other = (1, 0) if gemm == "own" else (0, 1)
        assert after[forced] > before[forced] and after[other] == before[other], (gemm, before, after)


@pytest.mark.parametrize("gemm", ["blas", "own"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell,hidden,options", [
    ("lstm", 37, {"bidirectional": True}),  # 148 gate columns: a partial last panel; reverse time
    ("gru", 20, {}),
    ("lstm", 30, {"proj_size": 12}),        # dW_hr over the active rows as well
])
def test_packed_weight_gradients_skip_inactive_rows_and_equal_torch(cell, hidden, options, dtype, gemm, monkeypatch):
    """On a packed batch the weight gradients' GEMMs after the loop sum only each step's active rows (runs of rows:
    the first steps, where every row is active, make one run; then one run a step; a row whose first step in
    reverse time is not the sequence's last pairs with h0), under each forced GEMM: every gradient equals
    torch.nn's."""
    monkeypatch.setenv("GATEDRNN_GEMM", gemm)
    torch.manual_seed(hidden)
    steps, batch = 9, 7
    module, reference = make_pair(cell, 5, hidden, dtype=dtype, **options)
    x, fresh, weights = _inputs(cell, steps, batch, hidden, options, dtype, input_size=5)
    lengths = torch.tensor([9, 9, 7, 4, 4, 2, 1])
    got = run(module, x.clone().requires_grad_(), fresh(), lengths, weights)
    _assert_runs_close(cell, got, run(reference, x.clone().requires_grad_(), fresh(), lengths, weights), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell,steps,batch,input_size,hidden,split", [
    ("lstm", 80, 9, 300, 100, "serial"),  # x W_ihᵀ in 2 chunks, each split over the threads; K = 300: 2 blocks
    ("gru", 6, 16, 20, 260, "row_region"),  # rows split for the sequence (8 a thread: a tile and 2 rows); K = 260
])
def test_own_gemm_in_blocks_and_split_projection_equals_torch(cell, steps, batch, input_size, hidden, split, dtype,
                                                             monkeypatch):
    """PanelGemm (forced) where K spans a full block (kKC = 256 columns) and a short one, with row remainders, and
    where the chunks of x W_ihᵀ are split over two threads by the engine: outputs, final states and every gradient
    equal torch.nn."""
    library = _build.load()
    monkeypatch.setenv("GATEDRNN_GEMM", "own")
    torch.manual_seed(hidden)
    module, reference = make_pair(cell, input_size, hidden, dtype=dtype)
    x, fresh, weights = _inputs(cell, steps, batch, hidden, {}, dtype, input_size=input_size)
    _assert_equals_torch_on_threads(2, module, reference, x, fresh, weights, cell, dtype,
                                    check=lambda: library.last_forward_split() == split)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell,steps,batch,hidden,options", [
    ("lstm", 32, 5, 130, {}),                           # panels of W_hh and W_ih; 5-row tiles; 64 and 66 units
    ("gru", 33, 3, 160, {"bidirectional": True}),       # reverse time
    ("lstm", 32, 5, 512, {}),                           # x W_ihᵀ on the panels in two chunks (25 + 7 steps)
    ("rnn_tanh", 40, 1, 1300, {}),                      # batch 1: a thread's share of W_hh, 644 x 1300 floats, >= 3 MB
    ("lstm", 31, 4, 128, {}),                           # one step short of the panels: rows read in place
    ("gru", 3, 5, 256, {}),                             # 15 rows of x W_ihᵀ, read in place too
    ("lstm", 32, 8, 192, {"bidirectional": True}),      # batch 8 over 2^17 weights of W_hh: panels, reverse time
    ("gru", 3, 8, 512, {}),                             # batch 8: 24 rows of x W_ihᵀ, BLAS per gate block
    ("lstm", 40, 8, 512, {}),                           # no_grad: chunks of 16 steps of x W_ihᵀ (16 + 16 + 8)
])
def test_unit_split_on_panels_equals_torch(cell, steps, batch, hidden, options, dtype):
    """Split by hidden units over two threads, a sequence of 32 or more steps packs each thread's rows of W_hh (at
    batch >= 3 also of W_ih) into PanelGemm's panels once per call; shorter ones read them in place (W_ih too, up to
    16 rows a chunk): on each side of those rules, outputs, final states and every gradient equal torch.nn."""
    library = _build.load()
    torch.manual_seed(steps + batch)
    module, reference = make_pair(cell, 12, hidden, dtype=dtype, **options)
    x, fresh, weights = _inputs(cell, steps, batch, hidden, options, dtype)
    _assert_equals_torch_on_threads(2, module, reference, x, fresh, weights, cell, dtype,
                                    check=lambda: library.last_forward_split() == "unit_region")


@pytest.mark.parametrize("cell,steps,batch,input_size,hidden,dtype", [
    ("lstm", 1, 6, 1024, 128, torch.float32),     # x W_ihᵀ: 6 rows 4 KB apart (4 + 2 at once; alone, one)
    ("gru", 3, 5, 512, 128, torch.float64),       # 15 rows of 512 doubles (4 + 4 + 4 + 2, and 1 alone)
    ("rnn_tanh", 2, 7, 16, 1024, torch.float32),  # h W_hhᵀ: rows of 1024 floats, batch 7 (4 + 2 + 1)
    ("gru", 1, 6, 1024, 130, torch.float32),      # a thread's rows from 64, 194, 324, and 2 past its blocks
])  # at most 16 rows of x W_ihᵀ, so that each sample alone takes the same kernels (AVX-512; AVX2: floats only)
def test_weight_rows_4_kb_apart_give_each_rows_own_sums(cell, steps, batch, input_size, hidden, dtype):
    """Split by hidden units over two threads, the weights' rows read in place: rows a multiple of 4 KB apart take
    the batch's rows several at a time (gemv_rows_batched), with the same sums bit for bit as one row at a time, so
    each sample's output equals its output run alone, exactly, and torch.nn's to tolerance."""
    library = _build.load()
    torch.manual_seed(batch)
    module, reference = make_pair(cell, input_size, hidden, dtype=dtype)
    x = torch.randn(steps, batch, input_size, dtype=dtype)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            output = module(x)[0]
            assert library.last_forward_split() == "unit_region"
            alone = []
            for b in range(batch):
                alone.append(module(x[:, b:b + 1])[0])
                assert library.last_forward_split() == "unit_region"
    finally:
        torch.set_num_threads(before)
    for b, single in enumerate(alone):
        assert torch.equal(output[:, b:b + 1], single), f"sample {b}: in the batch and alone differ"
    with torch.no_grad():
        assert_close_scaled(output, reference(x)[0], TOLERANCE[dtype], f"{cell} output")


@pytest.mark.parametrize("steps,split", [(16, "unit_region"), (17, "rows_per_step"), (31, "rows_per_step"),
                                         (32, "unit_region")])
def test_batch_8_over_the_largest_weights_keeps_rows_over_17_to_31_steps(steps, split):
    """Batch 8 over W_hh of >= 2^21 weights (LSTM H = 725: 2,102,500) splits hidden units up to 16 steps (x W_ihᵀ
    and h W_hhᵀ in place) and from 32 (packed panels), and keeps the rows in between; outputs equal torch.nn."""
    library = _build.load()
    torch.manual_seed(steps)
    module, reference = make_pair("lstm", 8, 725, dtype=torch.float32)
    x = torch.randn(steps, 8, 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            output = module(x)[0]
            assert library.last_forward_split() == split
    finally:
        torch.set_num_threads(before)
    with torch.no_grad():
        assert_close_scaled(output, reference(x)[0], TOLERANCE[torch.float32], "lstm output")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell,steps,batch,hidden,options", [
    ("lstm", 1, 32, 70, {}),                                       # one step
    ("gru", 4, 8, 40, {"bidirectional": True, "num_layers": 2}),  # 32 rows; reverse time; a second layer
    ("rnn_tanh", 2, 64, 50, {}),                                  # 128 rows: the longest sequence taken
    ("lstm", 1, 3, 60, {"bidirectional": True}),                  # batch 3: the least taken (H < 128: no unit split)
])
def test_short_sequences_read_w_hh_in_place_and_equal_torch(cell, steps, batch, hidden, options, dtype, threads,
                                                            monkeypatch):
    """A single step, or a sequence of at most 128 rows at batch >= 3, runs h W_hhᵀ as one BLAS call a step on W_hh
    in place (no packed copy), the pass split by rows: outputs, final states and every gradient equal torch.nn on
    one and two threads, and the engine reports the path. GATEDRNN_GEMM=own keeps the packed panels."""
    library = _build.load()
    monkeypatch.setenv("GATEDRNN_GEMM", "auto")
    torch.manual_seed(steps * batch + hidden)
    module, reference = make_pair(cell, 12, hidden, dtype=dtype, **options)
    x, fresh, weights = _inputs(cell, steps, batch, hidden, options, dtype)
    _assert_equals_torch_on_threads(threads, module, reference, x, fresh, weights, cell, dtype,
                                    check=lambda: library.last_forward_split() == "in_place_steps")
    monkeypatch.setenv("GATEDRNN_GEMM", "own")
    with torch.no_grad():
        module(x, fresh())
    assert library.last_forward_split() != "in_place_steps"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("steps,batch", [(3, 6), (8, 4)])
def test_weights_of_few_steps_are_read_by_blas_in_place_and_equal_torch(steps, batch, dtype, monkeypatch):
    """A step weight serving at most 4 steps (8 below batch 9) is not packed: BLAS reads it in place at each step
    (here W_hh and W_hr of a projected LSTM, forward and backward, on the general loop): outputs, final states and
    every gradient equal torch.nn, and no step weight is timed or packed (the engine's weight counters stand
    still)."""
    library = _build.load()
    monkeypatch.setenv("GATEDRNN_GEMM", "auto")
    torch.manual_seed(steps * batch)
    options = {"proj_size": 24}
    module, reference = make_pair("lstm", 12, 40, dtype=dtype, **options)
    x, fresh, weights = _inputs("lstm", steps, batch, 40, options, dtype)
    before = library.gemm_weights()
    got = run(module, x.clone().requires_grad_(), fresh(), None, weights)
    assert library.gemm_weights() == before
    _assert_runs_close("lstm", got, run(reference, x.clone().requires_grad_(), fresh(), None, weights), dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_short_sequence_with_zoneout_reads_w_hh_in_place_and_equals_the_reference(cell, monkeypatch):
    """Zoneout mixes each row's new state with its previous one after the pass, so a short sequence with it reads
    W_hh in place as well: outputs, final states and every gradient equal the reference backend's (the same masks,
    drawn in Python from the same seed)."""
    library = _build.load()
    torch.manual_seed(3)
    module = _make_plain_or_variant(cell, 12, 24, torch.float64, {"zoneout": 0.3}).train()
    x = torch.randn(3, 6, 12, dtype=torch.float64, requires_grad=True)
    got = []
    for backend in ("", "reference"):
        monkeypatch.setenv("GATEDRNN_BACKEND", backend)
        torch.manual_seed(12)
        output, state = module(x)
        if not backend:
            assert library.last_forward_split() == "in_place_steps"
        states = state if isinstance(state, tuple) else (state,)
        loss = output.square().sum() + sum(s.sum() for s in states)
        got.append((output, *states, *torch.autograd.grad(loss, [x, *module.parameters()])))
    for ours, reference in zip(*got):
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_own_gemm_gives_the_same_bits_however_rows_are_tiled(dtype, monkeypatch):
    """PanelGemm sums each column over k in order whatever tile its row falls in: a forward on one thread (16 rows:
    6 + 6 + 4 on AVX2) and on two (8 rows each: 6 + 2 rows on pairs of panels) gives the same bits."""
    monkeypatch.setenv("GATEDRNN_GEMM", "own")
    torch.manual_seed(13)
    module = gatedrnn.GRU(20, 260, dtype=dtype).eval()
    x = torch.randn(30, 16, 20, dtype=dtype)  # 30 steps: x W_ihᵀ in two chunks, on PanelGemm as well
    runs, splits = _runs_on_one_and_two_threads(module, x, grad=False)
    assert splits == ["serial", "row_region_own_rows"]
    for one, two in zip(*runs):
        assert torch.equal(one, two)


@pytest.mark.parametrize("gemm", ["own", "blas"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell,steps,batch,hidden,options", [
    ("lstm", 37, 16, 128, {}),                           # chunks of 7 steps (float32) and a last one of 2
    ("gru", 23, 9, 160, {"bidirectional": True}),        # 4 and 5 rows a thread, reverse time
    ("rnn_tanh", 30, 16, 256, {"num_layers": 2}),        # the second layer projects the first one's output
    ("lstm", 7, 32, 64, {}),                             # one chunk (float32): x W_ihᵀ by BLAS in place
])
def test_inference_projects_each_threads_own_rows(cell, steps, batch, hidden, options, dtype, gemm, monkeypatch):
    """Without a backward, two threads splitting the rows for the whole sequence each compute x W_ihᵀ for their
    own rows, a chunk of steps at a time (from a gathered copy of those rows of x): the output and final states
    equal torch.nn's, on PanelGemm and on BLAS, with partial chunks, a single chunk and reverse time."""
    library = _build.load()
    monkeypatch.setenv("GATEDRNN_GEMM", gemm)
    torch.manual_seed(steps + batch)
    module, reference = make_pair(cell, 12, hidden, dtype=dtype, **options)
    x, fresh, _ = _inputs(cell, steps, batch, hidden, options, dtype)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            output, state = module(x, fresh())
        assert library.last_forward_split() == "row_region_own_rows"
    finally:
        torch.set_num_threads(before)
    with torch.no_grad():
        expected_output, expected_state = reference(x, fresh())
    assert_close_scaled(output, expected_output, TOLERANCE[dtype], f"{cell} no_grad output")
    states = zip(state, expected_state) if cell == "lstm" else [(state, expected_state)]
    for ours, theirs in states:
        assert_close_scaled(ours, theirs, TOLERANCE[dtype], f"{cell} final state")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell,hidden,options", [
    ("lstm", 37, {}),                     # 148 columns: a full panel and a partial one (whole registers, zeros past N)
    ("gru", 50, {"bidirectional": True}),  # 150 columns, and reverse time
    ("rnn_tanh", 130, {}),                # 130 columns: a full panel and 2 columns
    ("lstm", 70, {"proj_size": 40}),      # W_hr (40, 70) as well, 2-3 panels of W_hh
])
@pytest.mark.parametrize("batch", [1, 2])
def test_batch_one_two_step_kernel_equals_torch(cell, hidden, options, batch, dtype):
    """At batch 1-2 one thread runs h W_hhᵀ from W packed in column panels, read in alternating order from step to
    step (SmallPanels): outputs, final states and every gradient equal torch.nn over 9 steps (both orders, several
    panels, partial last panels)."""
    torch.manual_seed(hidden + batch)
    module, reference = make_pair(cell, 12, hidden, dtype=dtype, **options)
    x, fresh, weights = _inputs(cell, 9, batch, hidden, options, dtype)
    # one thread: the serial path (two threads would split units at hidden >= 128)
    _assert_equals_torch_on_threads(1, module, reference, x, fresh, weights, cell, dtype)


def _assert_equals_torch_on_threads(threads: int, module, reference, x, fresh, weights, cell: str, dtype, *,
                                    check=lambda: True) -> None:
    """`run` and a no_grad forward of `module` on `threads` threads (then `check()` holds) equal `run` of the
    torch.nn `reference`."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = run(module, x.clone().requires_grad_(), fresh(), None, weights)
        assert check(), "the forward did not take the path this test is for"
        with torch.no_grad():
            inference = module(x, fresh())
    finally:
        torch.set_num_threads(before)
    expected = run(reference, x.clone().requires_grad_(), fresh(), None, weights)
    _assert_runs_close(cell, got, expected, dtype)
    assert_close_scaled(inference[0], expected[0][0], TOLERANCE[dtype], f"{cell} no_grad output")


def _inputs(cell: str, steps: int, batch: int, hidden: int, options: dict, dtype, input_size: int = 12):
    """x (steps, batch, input_size), a function making fresh leaf copies of one random hx, and `run`'s loss
    weights."""
    x = torch.randn(steps, batch, input_size, dtype=dtype)
    count = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    h0 = torch.randn(count, batch, options.get("proj_size") or hidden, dtype=dtype)
    c0 = torch.randn(count, batch, hidden, dtype=dtype)

    def fresh():
        return (h0.clone().requires_grad_(), c0.clone().requires_grad_()) if cell == "lstm" \
            else h0.clone().requires_grad_()

    weights = (torch.randn(steps * batch * 2 * hidden, dtype=dtype), torch.randn(4 * batch * 2 * hidden, dtype=dtype))
    return x, fresh, weights


def _assert_runs_close(cell: str, got, expected, dtype) -> None:
    """`run`'s outputs and gradients of ours equal torch.nn's, each within TOLERANCE scaled to its magnitude."""
    for what, a, b in zip(("outputs", "gradients"), got, expected):
        for k, (actual, wanted) in enumerate(zip(a, b)):
            assert_close_scaled(actual, wanted, TOLERANCE[dtype], f"{cell} {what}[{k}]")


def test_gemm_choice_by_measurement_is_reported_and_a_bad_setting_refused(monkeypatch):
    """Unforced (auto), each step weight's shape is timed once on BLAS and PanelGemm and the faster kept; the
    engine reports each decision with its timings. A value other than auto/blas/own is refused by name."""
    library = _build.load()
    monkeypatch.setenv("GATEDRNN_GEMM", "auto")
    torch.manual_seed(1)
    # batch 6 < 8 and H < 128: the step GEMM runs by rows, on a StepWeight (decided once per process); 30 steps of
    # 6 rows, more than steps_in_place takes
    hidden = 37
    module = gatedrnn.GRU(5, hidden)
    module(torch.randn(30, 6, 5))
    decisions = [d for d in library.gemm_choices() if d["N"] == 3 * hidden and d["K"] == hidden and d["rows"] == 6]
    assert len(decisions) == 1, library.gemm_choices()
    decision = decisions[0]
    assert decision["blas_us"] > 0 and decision["own_us"] > 0 and decision["transposed"]
    assert decision["choice"] == ("own" if decision["own_us"] < decision["blas_us"] else "blas")
    assert decision in gatedrnn.backend_info()["gemm"]["decisions"]
    monkeypatch.setenv("GATEDRNN_GEMM", "fast")
    with pytest.raises(ValueError, match="GATEDRNN_GEMM should be auto, blas or own, got 'fast'"):
        module(torch.randn(30, 6, 5))


def test_sequence_gemms_after_backward_are_chosen_by_measurement(monkeypatch):
    """The GEMMs after the backward's loop (dW_ih = Σ dGᵀ x, dW_hh = Σ dGᵀ h_prev, dx = dG W_ih) are timed once per
    shape on BLAS and PanelGemm, reported as op "sequence" with the shapes of C = op(A) B (rows M = G H for the
    weight gradients, K = the steps' rows), and the faster kept; forcing either gives gradients equal to torch.nn's
    (test_fused_equals_torch_under_each_gemm)."""
    library = _build.load()
    monkeypatch.setenv("GATEDRNN_GEMM", "auto")
    torch.manual_seed(2)
    steps, batch, input_size, hidden = 7, 5, 11, 29  # shapes no other test times: decided here
    module = gatedrnn.LSTM(input_size, hidden)
    x = torch.randn(steps, batch, input_size, requires_grad=True)
    state = (torch.randn(1, batch, hidden), torch.randn(1, batch, hidden))  # (an h0 of zeros skips its product)
    module(x, state)[0].sum().backward()
    sequence = {(d["rows"], d["N"], d["K"], d["transposed"]): d for d in library.gemm_choices()
                if d.get("op") == "sequence"}
    gates = 4 * hidden
    expected = {(gates, input_size, steps * batch, True),   # dW_ih
                (gates, hidden, batch, True),               # dW_hh: the rows' first steps, with h0
                (gates, hidden, (steps - 1) * batch, True),  # dW_hh: the later steps, with y
                (steps * batch, input_size, gates, False)}  # dx
    assert expected <= set(sequence), sorted(sequence)
    for key in expected:
        decision = sequence[key]
        assert decision["blas_us"] > 0 and decision["own_us"] > 0, decision
        assert decision["choice"] == ("own" if decision["own_us"] < decision["blas_us"] else "blas")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_gradient_of_output_sum(cell, monkeypatch):
    """output.sum() hands backward a stride-0 gradient, read in place (no copy)."""
    torch.manual_seed(7)
    module, _ = make_pair(cell, 3, 5, dtype=torch.float64, proj_size=2 if cell == "lstm" else 0)
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(module(x)[0].sum(), [x, *module.parameters()])
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    expected = torch.autograd.grad(module(x)[0].sum(), [x, *module.parameters()])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_operators_reject_bad_shapes_before_reading_memory():
    """The operators are public (exported graphs hold them): wrong shapes raise, naming what was expected."""
    x, h0, c0 = torch.randn(4, 2, 3), torch.randn(2, 5), torch.randn(2, 5)
    w_ih, w_hh, b = torch.randn(20, 3), torch.randn(20, 5), torch.randn(20)
    SCAN("lstm", x, h0, c0, w_ih, w_hh, b, b, None, [], False, False)  # the valid call runs
    bad = {
        "w_ih should have shape [20, 3]": ("lstm", x, h0, c0, torch.randn(20, 4), w_hh, b, b, None, [], False, False),
        "h0 should have shape [2, 5]": ("lstm", x, torch.randn(3, 5), c0, w_ih, w_hh, b, b, None, [], False, False),
        "needs c0": ("lstm", x, h0, None, w_ih, w_hh, b, b, None, [], False, False),
        "batch_sizes should hold T = 4": ("lstm", x, h0, c0, w_ih, w_hh, b, b, None, [2, 1], False, False),
        "non-increasing": ("lstm", x, h0, c0, w_ih, w_hh, b, b, None, [1, 2, 2, 1], False, False),
        "b_hh should have shape [20]": ("lstm", x, h0, c0, w_ih, w_hh, b, b[:8], None, [], False, False),
        "unknown cell kind": ("lstm2", x, h0, c0, w_ih, w_hh, b, b, None, [], False, False),
        "should be Float like x": ("lstm", x, h0.double(), c0, w_ih, w_hh, b, b, None, [], False, False),
        # a projection only exists for the LSTM: another cell's kernel would read P-wide rows H wide
        "only cell 'lstm' takes w_hr": ("gru", x, torch.randn(2, 3), None, torch.randn(15, 3), torch.randn(15, 3),
                                       torch.randn(15), torch.randn(15), torch.randn(3, 5), [], False, False),
    }
    for message, args in bad.items():
        with pytest.raises(RuntimeError, match=re.escape(message)):
            SCAN(*args)
    from gatedrnn.engine.ops import STEP
    with pytest.raises(RuntimeError, match="5 weight slots per layer"):
        STEP("gru", torch.randn(2, 3), torch.randn(1, 2, 4), None, [torch.randn(12, 3)])
    with pytest.raises(RuntimeError, match="only cell 'lstm' takes w_hr"):
        STEP("gru", torch.randn(2, 3), torch.randn(1, 2, 3), None,
             [torch.randn(15, 3), torch.randn(15, 3), None, None, torch.randn(3, 5)])


@pytest.mark.parametrize("cell,zoneout", [(cell, zoneout) for cell in FUSED_CELLS
                                           for zoneout in ((False, True) if takes_zoneout(cell) else (False,))])
def test_fake_kernels_match_the_real_shapes_and_strides(cell, zoneout):
    """What torch.compile/torch.export plan with (the fake kernels) is what the C++ kernels return, for a
    non-contiguous x (a batch_first layer's transpose), with and without keep."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from gatedrnn.engine.ops import SCAN_BACKWARD

    spec = CELL_SPECS[cell]
    hidden, proj = 4, 3 if spec.supports_projection else 0
    out = proj or hidden
    g = spec.gate_count * hidden
    real = dict(x=torch.randn(2, 5, 3).transpose(0, 1), h0=torch.randn(2, out),
                c0=initial_cell_state(spec, 2, hidden, dtype=torch.float32), w_ih=torch.randn(g, 3),
                w_hh=torch.randn(g, kernel_hh_columns(spec, out, hidden)), b=torch.randn(g), w_hr=torch.randn(proj, hidden) if proj else None,
                aux=torch.randn(spec.aux_blocks * hidden) if spec.aux_blocks else None,
                zoneout=torch.rand(5, 2, out + (hidden if spec.has_cell_state else 0)) if zoneout else None)

    def run(t, keep):
        outputs = SCAN(cell, t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b"], t["b"], t["w_hr"], [], False, keep,
                       t["aux"], t["zoneout"])
        y, h_n, c_n, gates, c_hist, extra = outputs
        if not keep:
            return outputs
        none_if_empty = lambda v: None if v.dim() == 1 and v.numel() == 0 else v  # noqa: E731
        grads = SCAN_BACKWARD(cell, t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["w_hr"], True, y,
                              gates, none_if_empty(c_hist), none_if_empty(extra), torch.ones_like(y),
                              torch.ones_like(h_n), c_n if spec.has_cell_state else None, [], False, True,
                              t["aux"], t["zoneout"])
        return outputs + grads

    for keep in (False, True):
        wanted = [(tuple(t.shape), t.stride()) for t in run(real, keep)]
        with FakeTensorMode() as mode:
            fake = {k: None if v is None else mode.from_tensor(v) for k, v in real.items()}
            got = [(tuple(t.shape), t.stride()) for t in run(fake, keep)]
        assert got == wanted, (cell, keep, zoneout)


@pytest.mark.parametrize("cell,used", [(cell, used) for cell, spec in CELL_SPECS.items() if spec.fused
                                       for used in ("output", "h_n", "c_n") if used != "c_n" or spec.has_cell_state])
def test_gradients_when_the_loss_uses_one_output(cell, used, monkeypatch):
    """The backward fills in the gradients of outputs the loss does not use (they arrive as None, not as
    zero buffers): each alone gives the reference path's gradients."""
    torch.manual_seed(7)
    module = make_module(cell, 3, 4, dtype=torch.float64, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)

    def grads():
        output, hidden = module(x)
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        chosen = {"output": output, "h_n": states[0], "c_n": states[-1]}[used]
        return torch.autograd.grad((chosen * torch.linspace(-1, 1, chosen.numel()).view_as(chosen)).sum(),
                                   [x, *module.parameters()])

    with GatedrnnOps() as ops:
        fused = grads()
    assert ops.counts["scan_backward"] == 2
    monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    for a, b in zip(fused, grads()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layer_class", [gatedrnn.LSTM, gatedrnn.LayerNormLSTM])
def test_sequence_long_buffers_from_the_block_cache_match_reference(layer_class, monkeypatch):
    """Saved buffers and gate gradients of 4 MB and more come from the engine's block cache (reused between calls,
    zeroed for packed input): the same numbers as the reference path, call after call, and a readable trace."""
    torch.manual_seed(8)
    module = layer_class(4, 160, dtype=torch.float64)  # (T*B, 4H) float64 saved gates: 40*16*640*8 B = 3.3 MB
    x = torch.randn(40, 24, 4, dtype=torch.float64, requires_grad=True)  # 4.9 MB with B = 24
    lengths = torch.tensor([40, 39, 12, 40, 1, 33, 40, 40, 7, 40, 25, 40, 40, 3, 40, 40, 18, 40, 40, 40, 29, 40, 40, 2])
    got = []
    for backend in ("", "reference"):
        monkeypatch.setenv("GATEDRNN_BACKEND", backend)
        for inputs in (x, pack_padded_sequence(x, lengths, enforce_sorted=False)):
            output, _ = module(inputs)
            output = output.data if not isinstance(output, torch.Tensor) else output
            got.append((output, *torch.autograd.grad(output.sum(), [x, *module.parameters()])))
    for a, b in zip(got[0] + got[1], got[2] + got[3]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)
    traces = []
    for backend in ("", "reference"):
        monkeypatch.setenv("GATEDRNN_BACKEND", backend)
        with torch.no_grad():
            traces.append(trace(module, x).steps("f"))
    torch.testing.assert_close(*traces, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "lstm_peephole", "slstm", "layernorm_gru", "lstm_fgr"])
def test_backward_skips_what_a_zero_h0_and_no_dh0_make_zero_and_equals_computing_it(cell):
    """Two products of a backward are skipped where nothing can read them: the first step's dG W_hh when nothing asks
    for dh0 (need_dh0=False; dh0 is then zeros, not a partial sum), and dW_hh's part dG_firstᵀ h0 when h0 is zeros
    (unless dG holds a NaN, which the product must carry: NaN · 0 = NaN). Every other gradient is the same bit for
    bit. FGR's GEMM also reads the state blocks, whose gradient dc0 needs that product: it keeps it."""
    from gatedrnn.engine.ops import SCAN_BACKWARD

    spec = CELL_SPECS[cell]
    torch.manual_seed(5)
    T, B, I, H = 3, 4, 5, 6
    g = spec.gate_count * H
    x, w_ih = torch.randn(T, B, I, dtype=torch.float64), torch.randn(g, I, dtype=torch.float64) / 3
    w_hh = torch.randn(g, kernel_hh_columns(spec, H, H), dtype=torch.float64) / 3
    b = torch.randn(g, dtype=torch.float64)
    c0 = initial_cell_state(spec, B, H, dtype=torch.float64)
    aux = torch.randn(spec.aux_blocks * H, dtype=torch.float64) if spec.aux_blocks else None
    h0 = torch.zeros(B, H, dtype=torch.float64)
    y, h_n, c_n, gates, c_hist, extra = SCAN(cell, x, h0, c0, w_ih, w_hh, b, b, None, [], False, True, aux)
    none_if_empty = lambda v: None if v.dim() == 1 and v.numel() == 0 else v  # noqa: E731
    dy = torch.randn_like(y)

    def backward(need_dh0: bool, upstream=dy):
        return SCAN_BACKWARD(cell, x, h0, c0, w_ih, w_hh, None, True, y, gates, none_if_empty(c_hist),
                             none_if_empty(extra), upstream, torch.ones_like(h_n),
                             c_n if spec.has_cell_state else None, [], False, True, aux, None, None, None, need_dh0)

    full, skipped = backward(True), backward(False)
    names = ["dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr", "daux"]
    for name, a, b_ in zip(names, full, skipped):
        if name == "dh0" and not spec.kernel_reads_state:
            assert torch.count_nonzero(a) > 0 and torch.count_nonzero(b_) == 0
        else:
            assert torch.equal(a, b_), f"{cell}: {name} changed when dh0 was not asked for"
    # (dW_hh's values with h0 = 0 against torch.nn: test_short_training_without_or_with_hx_equals_torch.) A NaN in
    # the upstream gradient of the first step reaches dW_hh only through h0 = 0, as the GEMM gives it: NaN · 0 = NaN
    poisoned = dy.clone()
    poisoned[0, 1, 2] = float("nan")
    assert torch.isnan(backward(False, poisoned)[4]).any()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("hx", [False, True])
def test_short_training_without_or_with_hx_equals_torch(cell, steps, hx):
    """A training step of one or two steps at batch 8, with no hx (h0 zeros: the first step's h0 W_hhᵀ, dW_hh's
    first-step product and dh0 are skipped) or an hx that needs a gradient (all computed): the output without a
    gradient and every gradient, dh0 included, equal torch.nn's; a NaN in W_hh makes the output NaN as in torch.nn."""
    torch.manual_seed(9 + steps)
    ours_cls = {"lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "rnn_tanh": gatedrnn.RNN}[cell]
    ours = ours_cls(7, 16, dtype=torch.float64)
    peer = getattr(torch.nn, type(ours).__name__)(7, 16, dtype=torch.float64)
    peer.load_state_dict(ours.state_dict())
    x = torch.randn(steps, 8, 7, dtype=torch.float64, requires_grad=True)
    state = None
    if hx:
        h0 = torch.randn(1, 8, 16, dtype=torch.float64, requires_grad=True)
        state = (h0, torch.randn(1, 8, 16, dtype=torch.float64, requires_grad=True)) if cell == "lstm" else h0
    with torch.no_grad():
        torch.testing.assert_close(ours(x, state)[0], peer(x, state)[0], rtol=1e-12, atol=1e-12)
        weight = ours.weight_hh_l0.clone()
        for module in (ours, peer):
            module.weight_hh_l0[3, 2] = float("nan")
        nan_ours, nan_peer = ours(x, state)[0], peer(x, state)[0]
        assert torch.equal(nan_ours.isnan(), nan_peer.isnan()) and nan_ours.isnan().any()
        for module in (ours, peer):
            module.weight_hh_l0.copy_(weight)
    results = []
    for module in (ours, peer):
        output, _ = module(x, state)
        inputs = [x, *module.parameters(), *([] if state is None else state if isinstance(state, tuple) else [state])]
        results.append(torch.autograd.grad((output * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum(), inputs))
    for got, wanted in zip(*results):
        torch.testing.assert_close(got, wanted, rtol=1e-9, atol=1e-9)
