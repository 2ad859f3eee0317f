"""gatedrnn's layers and cells against torch.nn's, on >= 200 seeded configurations across every option.

For each configuration: torch.nn's state_dict is loaded into gatedrnn's module (strict=True); outputs, final
states and the gradients of a random-weighted scalar loss with respect to the input, the initial state and
every parameter must agree within 1e-5 (float32) or 1e-9 (float64). Every configuration runs on the default
backend (the fused engine when it applies) and on GATEDRNN_BACKEND=reference. 208 small configurations
cover the options; 32 larger ones (hidden sizes 8 … 64, batches up to 17) exercise a kernel's vector widths.
Also: gatedrnn's state_dict loads strictly into torch.nn, the same seed gives torch.nn's initial weights,
dropout between layers, and the one-step cells.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gatedrnn

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
FORMS = ("batched", "unbatched", "packed_sorted", "packed_unsorted")
DTYPES = (torch.float32, torch.float64)
CONFIG_COUNT = 208
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-9, "atol": 1e-9}}


@dataclass(frozen=True)
class Config:
    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    bidirectional: bool
    proj_size: int
    form: str
    with_state: bool
    dtype: torch.dtype
    steps: int
    batch: int
    seed: int

    def __str__(self) -> str:
        parts = [self.cell, f"I{self.input_size}", f"H{self.hidden_size}", f"L{self.num_layers}",
                 self.form, f"T{self.steps}", f"B{self.batch}", str(self.dtype)[6:]]
        parts += [name for name in ("bias", "batch_first", "bidirectional", "with_state") if getattr(self, name)]
        if self.proj_size:
            parts.append(f"P{self.proj_size}")
        return "-".join(parts)

    def module_kwargs(self) -> dict:
        kwargs = dict(input_size=self.input_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                      bias=self.bias, batch_first=self.batch_first, bidirectional=self.bidirectional,
                      dtype=self.dtype)
        if self.cell == "lstm":
            kwargs["proj_size"] = self.proj_size
        if self.cell.startswith("rnn"):
            kwargs["nonlinearity"] = self.cell[4:]
        return kwargs


def draw_configs(count: int = CONFIG_COUNT, seed: int = 20260, *, large: bool = False) -> list[Config]:
    """Cell, input form and dtype cycle so that every combination appears; the other options are drawn.

    large=True draws hidden sizes around SIMD widths (8, 16, 17, 32, 33, 64) and longer, wider batches,
    the sizes at which a fused kernel's vector loops and their remainders run.
    """
    rng = random.Random(seed)
    configs = []
    for k in range(count):
        cell, form = CELLS[k % 4], FORMS[(k // 4) % 4]
        dtype = DTYPES[(k // 16) % 2]
        hidden = rng.choice([8, 16, 17, 32, 33, 64]) if large else rng.randint(1, 6)
        proj = rng.randint(1, hidden - 1) if cell == "lstm" and hidden > 1 and rng.random() < 0.4 else 0
        configs.append(Config(
            cell=cell, input_size=rng.randint(1, 40 if large else 5), hidden_size=hidden,
            num_layers=rng.randint(1, 3),
            bias=rng.random() < 0.75, batch_first=rng.random() < 0.5, bidirectional=rng.random() < 0.5,
            proj_size=proj, form=form, with_state=rng.random() < 0.5, dtype=dtype,
            steps=rng.randint(1, 12 if large else 6), batch=rng.randint(1, 17 if large else 4),
            seed=rng.randrange(2**31),
        ))
    return configs


CONFIGS = draw_configs() + draw_configs(32, seed=777, large=True)


def make_modules(config: Config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(torch.nn module, gatedrnn module with torch's state_dict loaded strictly)."""
    torch.manual_seed(config.seed)
    cls_name = {"lstm": "LSTM", "gru": "GRU"}.get(config.cell, "RNN")
    theirs = getattr(torch.nn, cls_name)(**config.module_kwargs())
    ours = getattr(gatedrnn, cls_name)(**config.module_kwargs())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


@dataclass
class Inputs:
    """One set of leaf tensors (input and initial state) for one module, and how to call it."""

    x: torch.Tensor  # padded/batched input, the leaf that gradients are taken against
    states: tuple[torch.Tensor, ...]  # h0 (and c0) leaves, or ()
    lengths: Optional[torch.Tensor]
    config: Config

    def call(self, module):
        c = self.config
        if self.lengths is None:
            model_input = self.x
        else:
            model_input = pack_padded_sequence(self.x, self.lengths, batch_first=c.batch_first,
                                               enforce_sorted=c.form == "packed_sorted")
        if not self.states:
            return module(model_input)
        hx = self.states if c.cell == "lstm" else self.states[0]
        return module(model_input, hx)


def make_inputs(config: Config) -> tuple[Inputs, Inputs, torch.Generator]:
    """Two identical, independent sets of leaves (for torch and for gatedrnn)."""
    c = config
    gen = torch.Generator().manual_seed(c.seed + 1)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=c.dtype)  # noqa: E731
    d = 2 if c.bidirectional else 1
    out = c.proj_size or c.hidden_size
    if c.form == "unbatched":
        x = randn(c.steps, c.input_size)
        state_shapes = [(d * c.num_layers, out), (d * c.num_layers, c.hidden_size)]
    else:
        x = randn(c.batch, c.steps, c.input_size) if c.batch_first else randn(c.steps, c.batch, c.input_size)
        state_shapes = [(d * c.num_layers, c.batch, out), (d * c.num_layers, c.batch, c.hidden_size)]
    lengths = None
    if c.form.startswith("packed"):
        lengths = torch.randint(1, c.steps + 1, (c.batch,), generator=gen)
        if c.form == "packed_sorted":
            lengths = lengths.sort(descending=True).values
    states = ()
    if c.with_state:
        states = tuple(randn(*shape) for shape in state_shapes[: 2 if c.cell == "lstm" else 1])

    def leaves():
        return x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in states)

    (x_a, s_a), (x_b, s_b) = leaves(), leaves()
    return Inputs(x_a, s_a, lengths, c), Inputs(x_b, s_b, lengths, c), gen


def flatten_output(output, hidden, cell: str) -> list[torch.Tensor]:
    """[output data, h_n] or [output data, h_n, c_n], and the PackedSequence's index tensors."""
    parts = [output.data if isinstance(output, PackedSequence) else output]
    parts += list(hidden) if cell == "lstm" else [hidden]
    return parts


def assert_same_packing(a, b) -> None:
    assert isinstance(a, PackedSequence) and isinstance(b, PackedSequence)
    assert torch.equal(a.batch_sizes, b.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert (ta is None) == (tb is None) and (ta is None or torch.equal(ta, tb)), name


@pytest.fixture(params=["default", "reference"])
def backend(request, monkeypatch):
    """Run each test on the default dispatch and on the forced reference path (read at call time)."""
    if request.param == "reference":
        monkeypatch.setenv("GATEDRNN_BACKEND", "reference")
    else:
        monkeypatch.delenv("GATEDRNN_BACKEND", raising=False)
    return request.param


def test_backend_fixture_selects_the_path(backend, monkeypatch):
    """The "default" half of this suite runs the fused engine whenever it can be built here; the
    "reference" half never does."""
    from gatedrnn import engine

    info = gatedrnn.backend_info(dtype=torch.float64)
    if backend == "default" and info["backend"] != "fused":
        pytest.skip(f"the fused engine is not available here: {info['reason']}")
    calls = []
    fused = engine.run_layer_fused
    monkeypatch.setattr(engine, "run_layer_fused", lambda *a, **k: calls.append(a[0]) or fused(*a, **k))
    gatedrnn.GRU(3, 4, num_layers=2, dtype=torch.float64)(torch.randn(5, 2, 3, dtype=torch.float64))
    assert calls == (["gru", "gru"] if backend == "default" else [])


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_layer_parity(config: Config, backend):
    theirs, ours = make_modules(config)
    inputs_t, inputs_g, gen = make_inputs(config)
    out_t, hid_t = inputs_t.call(theirs)
    out_g, hid_g = inputs_g.call(ours)
    if config.form.startswith("packed"):
        assert_same_packing(out_t, out_g)
    parts_t, parts_g = flatten_output(out_t, hid_t, config.cell), flatten_output(out_g, hid_g, config.cell)
    tol = TOLERANCE[config.dtype]
    for name, a, b in zip(("output", "h_n", "c_n"), parts_t, parts_g):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(b, a, **tol, msg=lambda m: f"{name}: {m}")

    weights = [torch.randn(p.shape, generator=gen, dtype=config.dtype) for p in parts_t]
    for parts, module in ((parts_t, theirs), (parts_g, ours)):
        sum((w * p).sum() for w, p in zip(weights, parts)).backward()
    torch.testing.assert_close(inputs_g.x.grad, inputs_t.x.grad, **tol, msg=lambda m: f"d input: {m}")
    for name, a, b in zip(("h_0", "c_0"), inputs_t.states, inputs_g.states):
        torch.testing.assert_close(b.grad, a.grad, **tol, msg=lambda m: f"d {name}: {m}")
    params_t = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, params_t[name].grad, **tol, msg=lambda m: f"d {name}: {m}")


def test_configurations_cover_every_option():
    assert len(CONFIGS) >= 200
    seen = lambda attr: {getattr(c, attr) for c in CONFIGS}  # noqa: E731
    assert seen("cell") == set(CELLS) and seen("form") == set(FORMS) and seen("dtype") == set(DTYPES)
    assert seen("num_layers") == {1, 2, 3}
    for flag in ("bias", "batch_first", "bidirectional", "with_state"):
        assert seen(flag) == {True, False}, flag
    assert any(c.proj_size for c in CONFIGS) and any(c.cell == "lstm" and not c.proj_size for c in CONFIGS)
    packed = [c for c in CONFIGS if c.form.startswith("packed")]
    assert any(c.batch > 1 and c.steps > 1 for c in packed)  # unequal lengths are possible


@pytest.mark.parametrize("config", CONFIGS[::4], ids=str)
def test_reverse_load_into_torch(config: Config):
    """gatedrnn's own (freshly initialised) state_dict loads strictly into torch.nn and computes the same."""
    torch.manual_seed(config.seed + 7)
    cls_name = {"lstm": "LSTM", "gru": "GRU"}.get(config.cell, "RNN")
    ours = getattr(gatedrnn, cls_name)(**config.module_kwargs())
    theirs = getattr(torch.nn, cls_name)(**config.module_kwargs())
    theirs.load_state_dict(ours.state_dict(), strict=True)
    inputs_t, inputs_g, _ = make_inputs(config)
    with torch.no_grad():
        parts_t = flatten_output(*inputs_t.call(theirs), config.cell)
        parts_g = flatten_output(*inputs_g.call(ours), config.cell)
    for a, b in zip(parts_t, parts_g):
        torch.testing.assert_close(b, a, **TOLERANCE[config.dtype])


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_same_seed_same_initial_weights(config: Config):
    cls_name = {"lstm": "LSTM", "gru": "GRU"}.get(config.cell, "RNN")
    torch.manual_seed(config.seed)
    theirs = getattr(torch.nn, cls_name)(**config.module_kwargs())
    torch.manual_seed(config.seed)
    ours = getattr(gatedrnn, cls_name)(**config.module_kwargs())
    sd_t, sd_g = theirs.state_dict(), ours.state_dict()
    assert list(sd_g) == list(sd_t)
    for name in sd_t:
        assert torch.equal(sd_g[name], sd_t[name]), name


# ----- dropout between layers -----
@pytest.mark.parametrize("cell", CELLS)
def test_dropout(cell, backend):
    """p=0 in training, p>0 in eval, and p=1 in training (later layers see zeros) equal torch.nn; p=0.5 in
    training equals torch.nn under the same seed (both draw one mask per layer output) and differs from eval."""
    cls_name = {"lstm": "LSTM", "gru": "GRU"}.get(cell, "RNN")
    extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    for p, training in ((0.0, True), (0.5, False), (1.0, True), (0.5, True)):
        torch.manual_seed(3)
        theirs = getattr(torch.nn, cls_name)(4, 5, num_layers=3, dropout=p, bidirectional=True,
                                             dtype=torch.float64, **extra)
        ours = getattr(gatedrnn, cls_name)(4, 5, num_layers=3, dropout=p, bidirectional=True,
                                           dtype=torch.float64, **extra)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        theirs.train(training), ours.train(training)
        torch.manual_seed(4)
        out_t, _ = theirs(x)
        torch.manual_seed(4)
        out_g, _ = ours(x)
        torch.testing.assert_close(out_g, out_t, rtol=1e-9, atol=1e-9, msg=lambda m: f"p={p}: {m}")
        if p == 0.5 and training:
            assert not torch.allclose(out_g, ours.eval()(x)[0])


# ----- one-step cells -----
CELL_CONFIGS = [
    (cell, batched, with_state, bias, dtype)
    for cell in CELLS for batched in (True, False) for with_state in (True, False)
    for bias in (True, False) for dtype in DTYPES
]


@pytest.mark.parametrize("cell,batched,with_state,bias,dtype", CELL_CONFIGS)
def test_cell_parity(cell, batched, with_state, bias, dtype):
    cls_name = {"lstm": "LSTMCell", "gru": "GRUCell"}.get(cell, "RNNCell")
    kwargs = {"bias": bias, "dtype": dtype}
    if cell.startswith("rnn"):
        kwargs["nonlinearity"] = cell[4:]
    seed = CELL_CONFIGS.index((cell, batched, with_state, bias, dtype))
    torch.manual_seed(seed)
    theirs = getattr(torch.nn, cls_name)(3, 5, **kwargs)
    torch.manual_seed(seed)
    ours = getattr(gatedrnn, cls_name)(3, 5, **kwargs)
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), f"initialisation of {name}"
    ours.load_state_dict(theirs.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(seed)
    lead = (4,) if batched else ()
    x = torch.randn(*lead, 3, generator=gen, dtype=dtype)
    states = [torch.randn(*lead, 5, generator=gen, dtype=dtype) for _ in range(2 if cell == "lstm" else 1)]
    tol = TOLERANCE[dtype]
    results = []
    for module in (theirs, ours):
        x_leaf = x.clone().requires_grad_()
        state_leaves = [s.clone().requires_grad_() for s in states]
        hx = None if not with_state else (tuple(state_leaves) if cell == "lstm" else state_leaves[0])
        out = module(x_leaf, hx)
        out = list(out) if cell == "lstm" else [out]
        weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(99), dtype=dtype) for o in out]
        sum((w * o).sum() for w, o in zip(weights, out)).backward()
        grads = [x_leaf.grad] + ([s.grad for s in state_leaves] if with_state else [])
        grads += [p.grad for _, p in sorted(module.named_parameters())]
        results.append((out, grads))
    (out_t, grads_t), (out_g, grads_g) = results
    for a, b in zip(out_t + grads_t, out_g + grads_g):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, **tol)


@pytest.mark.parametrize("cls_name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_reverse_load_into_torch(cls_name):
    torch.manual_seed(5)
    ours = getattr(gatedrnn, cls_name)(3, 5, dtype=torch.float64)
    theirs = getattr(torch.nn, cls_name)(3, 5, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x, h = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    hx = (h, h.flip(0)) if cls_name == "LSTMCell" else h
    out_t, out_g = theirs(x, hx), ours(x, hx)
    for a, b in zip(*(o if isinstance(o, tuple) else (o,) for o in (out_t, out_g))):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


# ----- partial gradients and strided tensors -----
def _pair(cell: str, **kwargs):
    cls_name = {"lstm": "LSTM", "gru": "GRU"}.get(cell, "RNN")
    extra = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    theirs = getattr(torch.nn, cls_name)(dtype=torch.float64, **extra, **kwargs)
    ours = getattr(gatedrnn, cls_name)(dtype=torch.float64, **extra, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


@pytest.mark.parametrize("cell", CELLS)
def test_frozen_parameters_and_inputs_without_grad(cell, backend):
    """Only some leaves require grad (input, h_0 and weight_hh_l0 do not): the others get torch.nn's
    gradients, the frozen ones get none."""
    torch.manual_seed(8)
    theirs, ours = _pair(cell, input_size=3, hidden_size=6, num_layers=2, bidirectional=True)
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, 4, 4, 6, dtype=torch.float64)
    grads = []
    for module in (theirs, ours):
        module.weight_hh_l0.requires_grad_(False)
        c0_leaf = c0.clone().requires_grad_()
        out, _ = module(x, (h0, c0_leaf) if cell == "lstm" else h0)
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)).sum().backward()
        grads.append(c0_leaf.grad)
    if cell == "lstm":
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-9)
    params_t = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        if name == "weight_hh_l0":
            assert param.grad is None
        else:
            torch.testing.assert_close(param.grad, params_t[name].grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cell", CELLS)
def test_strided_input_and_state(cell, backend):
    """Non-contiguous input and initial state (strided slices, transposes) compute what torch.nn computes."""
    torch.manual_seed(9)
    theirs, ours = _pair(cell, input_size=5, hidden_size=7, num_layers=2, batch_first=True)
    base = torch.randn(6, 10, 9, dtype=torch.float64)
    states = [torch.randn(6, 2, 7, dtype=torch.float64) for _ in range(2 if cell == "lstm" else 1)]
    results = []
    for module in (theirs, ours):
        base_leaf = base.clone().requires_grad_()
        state_leaves = [s.clone().requires_grad_() for s in states]
        x = base_leaf[:, ::2, 2:7]  # (N=6, L=5, H_in=5), a strided view
        hx = [s.transpose(0, 1) for s in state_leaves]  # (2, N, 7), non-contiguous
        assert not x.is_contiguous() and not hx[0].is_contiguous()
        out, _ = module(x, tuple(hx) if cell == "lstm" else hx[0])
        out.pow(2).sum().backward()
        results.append([out, base_leaf.grad] + [s.grad for s in state_leaves])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
