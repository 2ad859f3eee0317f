"""The layer regularisers (zoneout, recurrent_dropout, weight_drop; semantics in gatedrnn.engine.noise) against
definitions written out here with torch ops:

- recurrent_dropout is Keras 3's: the LSTMCell / GRUCell (reset_after=True) step with h_{t-1} ⊙ mask in the
  recurrent matmul only, one mask per call scaled by 1/(1-p), training only;
- zoneout: eval mixes p ⊙ old + (1-p) ⊙ new; training keeps a fraction ~p of units; the extremes; a kept unit
  passes its gradient straight through, skipping the cell;
- weight_drop: W_hh ⊙ mask / (1-p) (one mask per forward), the gradient masked the same way, under 2-process
  gloo DDP too;
- gradcheck (float64) of the fused operator for every cell with zoneout weights and a recurrent mask.
"""
from __future__ import annotations

import copy
import gc
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gatedrnn
from gatedrnn import engine
from gatedrnn.cells import CELL_SPECS, LayerWeights
from gatedrnn.engine import _build
from gatedrnn.engine.noise import LayerNoise
from gatedrnn.engine.ops import SCAN
from gatedrnn.inspect.traces import trace
from op_counter import GatedrnnOps

F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def built_engine():
    assert _build.load() is not None, f"the fused engine did not build: {_build.error()}"


def _grads(loss, module, *inputs):
    return torch.autograd.grad(loss, [*inputs, *module.parameters()])


def _weighted(y, *states):
    """A fixed, asymmetric scalar of the outputs (every element counts differently)."""
    flat = torch.cat([t.reshape(-1) for t in (y, *states)])
    return (flat * torch.linspace(-1.0, 2.0, flat.numel(), dtype=flat.dtype)).sum()


# ----- recurrent_dropout: Keras 3's LSTMCell and GRUCell, written out -----
def keras_lstm(x, h, c, module, masks):
    """Keras 3 LSTMCell (implementation 1, used whenever recurrent_dropout > 0) over a sequence, with torch's
    weights: h_{t-1} ⊙ masks[k] feeds gate k's recurrent kernel (k = i, f, c, o); the carried h is unmasked.
    Keras draws four independent masks; gatedrnn shares one (pass the same mask four times)."""
    W = module.weight_ih_l0.chunk(4)
    U = module.weight_hh_l0.chunk(4)
    b = (module.bias_ih_l0 + module.bias_hh_l0).chunk(4)
    ys = []
    for x_t in x:
        i, f, g, o = (x_t @ W[k].t() + (h * masks[k]) @ U[k].t() + b[k] for k in range(4))
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), h, c


def keras_gru(x, h, module, masks, *, mask_in_mix: bool = False):
    """Keras 3 GRUCell with reset_after=True (torch's form) over a sequence: masks[k] (k = z, r, h) multiplies
    h_{t-1} in gate k's recurrent matmul; the mix z ⊙ h_{t-1} + (1 − z) ⊙ hh reads the unmasked h
    (mask_in_mix=True: the wrong reading, masked there too, to show the test tells them apart)."""
    W_r, W_z, W_n = module.weight_ih_l0.chunk(3)  # torch's order r, z, n
    U_r, U_z, U_n = module.weight_hh_l0.chunk(3)
    bi_r, bi_z, bi_n = module.bias_ih_l0.chunk(3)
    bh_r, bh_z, bh_n = module.bias_hh_l0.chunk(3)
    m_z, m_r, m_h = masks
    ys = []
    for x_t in x:
        z = torch.sigmoid(x_t @ W_z.t() + bi_z + (h * m_z) @ U_z.t() + bh_z)
        r = torch.sigmoid(x_t @ W_r.t() + bi_r + (h * m_r) @ U_r.t() + bh_r)
        hh = torch.tanh(x_t @ W_n.t() + bi_n + r * ((h * m_h) @ U_n.t() + bh_n))
        h = z * (h * m_h if mask_in_mix else h) + (1 - z) * hh
        ys.append(h)
    return torch.stack(ys), h


def _keras_mask(batch: int, hidden: int, p: float) -> torch.Tensor:
    """Keras's recurrent mask, dropout(ones, p): Bernoulli(1 − p) / (1 − p), drawn once per call; drawn here by
    gatedrnn's own mask generator (`engine.noise.keep_mask`) from the same seed, to replay the layer's draw."""
    from gatedrnn.engine.noise import keep_mask

    return keep_mask((batch, hidden), [1 - p], 1 / (1 - p), torch.empty(0, dtype=F64))


@pytest.mark.parametrize("backend", ["", "reference"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_dropout_is_keras_recurrent_dropout(cell, backend, monkeypatch):
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    torch.manual_seed(0)
    p, steps, batch, inputs, hidden = 0.4, 7, 5, 3, 6
    module = (gatedrnn.LSTM if cell == "lstm" else gatedrnn.GRU)(inputs, hidden, recurrent_dropout=p, dtype=F64)
    x = torch.randn(steps, batch, inputs, dtype=F64, requires_grad=True)
    h0 = torch.randn(1, batch, hidden, dtype=F64, requires_grad=True)
    c0 = torch.randn(1, batch, hidden, dtype=F64, requires_grad=True)
    hx = (h0, c0) if cell == "lstm" else h0
    starts = (h0, c0) if cell == "lstm" else (h0,)

    torch.manual_seed(5)
    y, hidden_n = module(x, hx)
    states = hidden_n if cell == "lstm" else (hidden_n,)
    got = _grads(_weighted(y, *states), module, x, *starts)
    torch.manual_seed(5)
    mask = _keras_mask(batch, hidden, p)
    assert set(mask.unique().tolist()) == {0.0, 1 / (1 - p)}

    def keras(masks, **kw):
        if cell == "lstm":
            ys, h, c = keras_lstm(x, h0[0], c0[0], module, masks)
            return ys, h[None], c[None]
        ys, h = keras_gru(x, h0[0], module, masks, **kw)
        return ys, h[None]

    gates = 4 if cell == "lstm" else 3
    expected = keras([mask] * gates)
    for a, b in zip((y, *states), expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, _grads(_weighted(*expected), module, x, *starts)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    if cell == "gru":  # the mask is on the matmul only, not on z ⊙ h: the other reading differs
        assert not torch.allclose(y, keras([mask] * 3, mask_in_mix=True)[0], atol=1e-6)

    # a new mask each call (training), none at eval: eval equals the loop without a mask and torch.nn
    second, _ = module(x, hx)
    assert not torch.allclose(second, y)
    module.eval()
    with torch.no_grad():
        evaluated, _ = module(x, hx)
        ones = torch.ones(batch, hidden, dtype=F64)
        torch.testing.assert_close(evaluated, keras([ones] * gates)[0], rtol=1e-12, atol=1e-12)
        theirs = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(inputs, hidden, dtype=F64)
        theirs.load_state_dict(module.state_dict())
        torch.testing.assert_close(evaluated, theirs(x, hx)[0], rtol=1e-12, atol=1e-12)


# ----- zoneout -----
def _cell_loop(module, x, state, p_h, p_c):
    """torch.nn's cell step with zoneout at eval: h = p_h ⊙ h + (1 − p_h) ⊙ h̃ (and c with p_c)."""
    is_lstm = isinstance(state, tuple)
    cell = (torch.nn.LSTMCell if is_lstm else torch.nn.GRUCell)(module.input_size, module.hidden_size, dtype=F64)
    cell.load_state_dict({k[:-3]: v for k, v in module.state_dict().items()})  # weight_ih_l0 -> weight_ih
    ys = []
    for x_t in x:
        if is_lstm:
            h_new, c_new = cell(x_t, state)
            state = (p_h * state[0] + (1 - p_h) * h_new, p_c * state[1] + (1 - p_c) * c_new)
            ys.append(state[0])
        else:
            state = p_h * state + (1 - p_h) * cell(x_t, state)
            ys.append(state)
    return torch.stack(ys), state


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_zoneout_at_eval_mixes_with_the_rate(cell):
    torch.manual_seed(1)
    p_h, p_c = 0.3, 0.7
    module = (gatedrnn.LSTM(3, 5, zoneout=(p_h, p_c), dtype=F64) if cell == "lstm"
              else gatedrnn.GRU(3, 5, zoneout=p_h, dtype=F64)).eval()
    x = torch.randn(6, 2, 3, dtype=F64)
    h0, c0 = torch.randn(1, 2, 5, dtype=F64), torch.randn(1, 2, 5, dtype=F64)
    with torch.no_grad():
        if cell == "lstm":
            y, (h_n, c_n) = module(x, (h0, c0))
            ys, (h, c) = _cell_loop(module, x, (h0[0], c0[0]), p_h, p_c)
            torch.testing.assert_close(c_n[0], c, rtol=1e-12, atol=1e-12)
        else:
            y, h_n = module(x, h0)
            ys, h = _cell_loop(module, x, h0[0], p_h, None)
    torch.testing.assert_close(y, ys, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n[0], h, rtol=1e-12, atol=1e-12)


def test_zoneout_in_training_keeps_a_fraction_p_of_units():
    """Over 400 steps x 4 sequences x 16 units (25,600 draws each), a unit equals its previous value
    (exactly: the kept ones) in a fraction p of the draws; the standard error is 0.003, the tolerance 0.02."""
    torch.manual_seed(2)
    p_h, p_c = 0.25, 0.6
    module = gatedrnn.LSTM(2, 16, zoneout=(p_h, p_c), dtype=F64)
    x = torch.randn(400, 4, 2, dtype=F64)
    with torch.no_grad():
        traced = trace(module, x).layers[0][0]
    h = torch.cat([torch.zeros(1, 4, 16, dtype=F64), traced.h])  # h0 = c0 = 0
    c = torch.cat([torch.zeros(1, 4, 16, dtype=F64), traced.c])
    kept_h = (h[1:] == h[:-1]).double().mean().item()
    kept_c = (c[1:] == c[:-1]).double().mean().item()
    assert abs(kept_h - p_h) < 0.02 and abs(kept_c - p_c) < 0.02, (kept_h, kept_c)
    # and a kept h is not merely a kept c: the two draws are separate
    assert abs(((h[1:] == h[:-1]) & (c[1:] == c[:-1])).double().mean().item() - p_h * p_c) < 0.02


@pytest.mark.parametrize("variant", [None, "peephole", "cifg"])
def test_zoneout_extremes(variant):
    """zoneout=1e-12 is no zoneout (training: every d draws 0, the output equals the layer without the option,
    and torch.nn.LSTM's); zoneout=1-1e-12 keeps every state in training (outputs are h0, h_n = h0, c_n = c0)
    and almost every state at eval."""
    torch.manual_seed(3)
    x = torch.randn(5, 3, 2, dtype=F64)
    hx = (torch.randn(1, 3, 4, dtype=F64), torch.randn(1, 3, 4, dtype=F64))
    plain = gatedrnn.LSTM(2, 4, dtype=F64, variant=variant)
    tiny = gatedrnn.LSTM(2, 4, dtype=F64, variant=variant, zoneout=1e-12)
    full = gatedrnn.LSTM(2, 4, dtype=F64, variant=variant, zoneout=1 - 1e-12)
    tiny.load_state_dict(plain.state_dict())
    full.load_state_dict(plain.state_dict())
    with torch.no_grad():
        expected = plain(x, hx)
        got = tiny.train()(x, hx)
        for a, b in zip((got[0], *got[1]), (expected[0], *expected[1])):
            assert torch.equal(a, b)
        torch.testing.assert_close(tiny.eval()(x, hx)[0], expected[0], rtol=0, atol=1e-10)
        if variant is None:
            theirs = torch.nn.LSTM(2, 4, dtype=F64)
            theirs.load_state_dict(plain.state_dict())
            torch.testing.assert_close(theirs(x, hx)[0], expected[0], rtol=1e-12, atol=1e-12)
        y, (h_n, c_n) = full.train()(x, hx)
        assert torch.equal(y, hx[0].expand_as(y)) and torch.equal(h_n, hx[0]) and torch.equal(c_n, hx[1])
        y, (h_n, c_n) = full.eval()(x, hx)
        torch.testing.assert_close(y, hx[0].expand_as(y), rtol=0, atol=1e-10)
        assert not torch.equal(y, hx[0].expand_as(y))  # eval mixes: 1e-12 of the new state is still there


def _layer_weights(cell: str, inputs: int, hidden: int) -> LayerWeights:
    spec = CELL_SPECS[cell]
    g = spec.gate_count * hidden
    extra = tuple(torch.randn(p.blocks * hidden, dtype=F64, requires_grad=True) for p in spec.extra_params)
    shapes = ((g, inputs), (g, hidden), (g,), (g,))  # w_ih, w_hh, b_ih, b_hh
    return LayerWeights(*(torch.randn(*s, dtype=F64, requires_grad=True) for s in shapes), None, extra)


def _leaves(weights: LayerWeights) -> list:
    return [w for w in (*weights[:4], *weights.extra)]


@pytest.mark.parametrize("backend", ["", "reference"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "lstm_peephole", "lstm_nog"])
def test_zoneout_kept_units_pass_gradients_straight_through(cell, backend, monkeypatch):
    """A step whose every unit is kept (d = 1) is skipped: its input gets no gradient and everything equals a
    run without that step. A unit kept at every step ends at its initial value with dh_n/dh0 = 1 there."""
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    torch.manual_seed(4)
    spec = CELL_SPECS[cell]
    steps, batch, inputs, hidden = 4, 3, 2, 5
    widths = hidden * len(spec.state_names)
    weights = _layer_weights(cell, inputs, hidden)
    x = torch.randn(steps, batch, inputs, dtype=F64, requires_grad=True)
    state0 = tuple(torch.randn(batch, hidden, dtype=F64, requires_grad=True) for _ in spec.state_names)
    zoneout = torch.zeros(steps, batch, widths, dtype=F64)
    zoneout[1] = 1.0  # step 1 kept entirely
    with GatedrnnOps() as ops:
        result = engine.run_layer(cell, x, state0, weights, noise=LayerNoise(zoneout, None))
    assert (ops.counts["scan"] == 1) == (backend == "")
    w = torch.randn(steps, batch, hidden, dtype=F64)
    loss = (w * result.y).sum() + sum(s.sum() for s in result.state)
    got = torch.autograd.grad(loss, [x, *state0, *_leaves(weights)])
    assert torch.equal(result.y[1], result.y[0])
    assert torch.equal(got[0][1], torch.zeros(batch, inputs, dtype=F64))
    # the same without step 1: y_1 = y_0, so the loss weighs y_0 by w_0 + w_1
    skipped = engine.run_layer(cell, x[[0, 2, 3]], state0, weights)
    w_skipped = torch.stack([w[0] + w[1], w[2], w[3]])
    loss = (w_skipped * skipped.y).sum() + sum(s.sum() for s in skipped.state)
    expected = torch.autograd.grad(loss, [x, *state0, *_leaves(weights)])
    torch.testing.assert_close(got[0][[0, 2, 3]], expected[0][[0, 2, 3]], rtol=1e-12, atol=1e-12)
    for a, b in zip(got[1:], expected[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    # unit 2 of every state kept at every step
    zoneout = torch.zeros(steps, batch, widths, dtype=F64)
    zoneout[:, :, 2::hidden] = 1.0
    result = engine.run_layer(cell, x, state0, weights, noise=LayerNoise(zoneout, None))
    assert torch.equal(result.state[0][:, 2], state0[0][:, 2])
    got = torch.autograd.grad(result.state[0][:, 2].sum(), [x, *state0, *_leaves(weights)], allow_unused=True)
    expected_dh0 = torch.zeros(batch, hidden, dtype=F64)
    expected_dh0[:, 2] = 1.0
    assert torch.equal(got[1], expected_dh0)
    for g in (got[0], *got[2:]):
        assert g is None or torch.equal(g, torch.zeros_like(g))


# ----- weight_drop -----
from gatedrnn.engine.noise import drop_weight  # noqa: E402  (the layer's own DropConnect draw, replayed)


def _replay_weight_masks(module, p: float) -> dict:
    """The DropConnect masks (W_hh-shaped, scaled by 1/(1-p)) the module draws in one training forward, in its
    order (layer by layer, direction by direction), from the current torch seed."""
    masks = {}
    for layer in range(module.num_layers):
        for direction in range(2 if module.bidirectional else 1):
            name = f"weight_hh_l{layer}" + ("_reverse" if direction else "")
            masks[name] = drop_weight(torch.ones_like(getattr(module, name)), p)
    return masks


@pytest.mark.parametrize("backend", ["", "reference"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm_peephole"])
def test_weight_drop_is_dropconnect_on_w_hh(kind, backend, monkeypatch):
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    torch.manual_seed(6)
    p = 0.3
    make = {"lstm": lambda **k: gatedrnn.LSTM(**k), "gru": lambda **k: gatedrnn.GRU(**k),
            "lstm_peephole": lambda **k: gatedrnn.LSTM(variant="peephole", **k)}[kind]
    module = make(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, weight_drop=p, dtype=F64)
    x = torch.randn(6, 2, 3, dtype=F64, requires_grad=True)

    torch.manual_seed(8)
    y, hidden_n = module(x)
    states = hidden_n if isinstance(hidden_n, tuple) else (hidden_n,)
    got = dict(zip(["x", *(n for n, _ in module.named_parameters())], _grads(_weighted(y, *states), module, x)))
    torch.manual_seed(8)
    masks = _replay_weight_masks(module, p)
    assert all(set(m.unique().tolist()) == {0.0, 1 / (1 - p)} for m in masks.values())

    dropped = copy.deepcopy(module).eval()  # eval: no drop; W_hh replaced by W_hh ⊙ mask / (1 - p)
    with torch.no_grad():
        for name, mask in masks.items():
            getattr(dropped, name).mul_(mask)
    y2, hidden2 = dropped(x)
    states2 = hidden2 if isinstance(hidden2, tuple) else (hidden2,)
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    names = ["x", *(n for n, _ in dropped.named_parameters())]
    expected = dict(zip(names, _grads(_weighted(y2, *states2), dropped, x)))
    for name, g in got.items():
        want = expected[name] * masks[name] if name in masks else expected[name]  # d(W ⊙ M)/dW = M
        torch.testing.assert_close(g, want, rtol=1e-11, atol=1e-11, msg=lambda m: f"{name}: {m}")

    # eval: no drop at all
    module.eval()
    plain = copy.deepcopy(module)
    plain.weight_drop = 0.0
    with torch.no_grad():
        torch.testing.assert_close(module(x)[0], plain(x)[0], rtol=0, atol=0)


def _ddp_worker(rank: int, directory: str) -> None:
    """One rank of a 2-process gloo DDP step on an LSTM with weight_drop: each rank takes half the batch and its
    own seed for the mask; saves its gradients and its weights after one SGD step."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=2)
    try:
        module, x, target = _ddp_problem()
        model = DistributedDataParallel(module)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(100 + rank)
        half = slice(rank * 4, rank * 4 + 4)
        output, _ = model(x[:, half])
        F.mse_loss(output, target[:, half]).backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters()}
        optimizer.step()
        torch.save({"grads": grads, "weights": module.state_dict()}, f"{directory}/rank{rank}.pt")
        # the wrapper (its reducer) before the group: a reducer dropping the group's last reference with the GIL
        # held can wait forever for a gloo thread that waits for the GIL (gatedrnn.train.trainer.leave_process_group)
        del model
        gc.collect()
    finally:
        dist.destroy_process_group()


def _ddp_problem():
    torch.manual_seed(0)
    module = gatedrnn.LSTM(3, 6, weight_drop=0.4, variant="peephole")
    x, target = torch.randn(5, 8, 3), torch.randn(5, 8, 6)
    return module, x, target


def test_weight_drop_under_two_process_gloo_ddp(tmp_path: Path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path),), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # single-process reference: the mean of the two halves' gradients, each under its rank's mask
    module, x, target = _ddp_problem()
    expected = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
    local = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        output, _ = module(x[:, rank * 4: rank * 4 + 4])
        grads = torch.autograd.grad(F.mse_loss(output, target[:, rank * 4: rank * 4 + 4]), list(module.parameters()))
        local.append(grads)
        for (name, _), g in zip(module.named_parameters(), grads):
            expected[name] += g / 2
    assert not torch.allclose(local[0][1], local[1][1])  # the halves (and masks) differ: syncing is visible
    for name, g in expected.items():
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], g, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    for name, weight in module.state_dict().items():
        stepped = weight - 0.1 * expected[name]
        for rank in ranks:
            torch.testing.assert_close(rank["weights"][name], stepped, rtol=1e-5, atol=1e-6)


# ----- gradcheck of the fused operator with zoneout and a recurrent mask -----
NOISE_CASES = [
    (cell, proj, zoneout_kind, sizes, reverse)
    # the sLSTM's kernel takes no zoneout (its state has three blocks); tests/test_slstm_fused.py checks the refusal
    for cell in CELL_SPECS if CELL_SPECS[cell].fused and CELL_SPECS[cell].state_blocks <= 1
    for proj in ((False, True) if CELL_SPECS[cell].supports_projection else (False,))
    for zoneout_kind, sizes, reverse in (("binary", None, False), ("fractional", [3, 3, 2, 1], True))
]


@pytest.mark.parametrize("cell,proj,zoneout_kind,batch_sizes,reverse", NOISE_CASES)
def test_gradcheck_fused_with_zoneout_and_recurrent_mask(cell, proj, zoneout_kind, batch_sizes, reverse):
    """gatedrnn::scan's hand-written backward under zoneout (0/1 weights as in training, fractions as at eval)
    and a recurrent mask, every cell; its forward equals the reference scan with the same noise."""
    torch.manual_seed(9)
    spec = CELL_SPECS[cell]
    steps, batch, inputs, hidden = 4, 3, 2, 3
    p = 2 if proj else hidden
    g = spec.gate_count * hidden
    dd = dict(dtype=F64, requires_grad=True)
    x = torch.randn(steps, batch, inputs, **dd)
    if batch_sizes is not None:  # padded rows are zero, as the layers hand them over
        with torch.no_grad():
            for t, n in enumerate(batch_sizes):
                x[t, n:] = 0
    h0 = torch.randn(batch, p, **dd)
    c0 = torch.randn(batch, hidden, **dd) if spec.has_cell_state else None
    w_ih, w_hh, b_ih, b_hh = torch.randn(g, inputs, **dd), torch.randn(g, p, **dd), torch.randn(g, **dd), \
        torch.randn(g, **dd)
    w_hr = torch.randn(p, hidden, **dd) if proj else None
    aux = torch.randn(spec.aux_blocks * hidden, **dd) if spec.aux_blocks else None
    width = p + (hidden if spec.has_cell_state else 0)
    if zoneout_kind == "binary":
        zoneout = torch.bernoulli(torch.full((steps, batch, width), 0.4, dtype=F64))
    else:
        zoneout = torch.rand(steps, batch, width, dtype=F64)
    mask = torch.bernoulli(torch.full((batch, p), 0.7, dtype=F64)) / 0.7
    sizes = [] if batch_sizes is None else batch_sizes

    def function(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, aux):
        y, h_n, c_n, *_ = SCAN(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, sizes, reverse, True, aux, zoneout, mask)
        return (y, h_n, c_n) if spec.has_cell_state else (y, h_n)

    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, aux)
    assert torch.autograd.gradcheck(function, args, eps=1e-6, atol=1e-7)
    extra = () if aux is None else tuple(aux.split([param.blocks * hidden for param in spec.extra_params]))
    weights = LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr, extra)  # aux is the cell's extra parameters, in order
    expected = engine.scan_reference(cell, x, (h0,) + ((c0,) if spec.has_cell_state else ()), weights,
                                     batch_sizes, reverse, noise=LayerNoise(zoneout, mask))
    got = function(*args)
    torch.testing.assert_close(got[0], expected.y, rtol=1e-12, atol=1e-12)
    for a, b in zip(got[1:], expected.state):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", [{"zoneout": 0.5}, {"variant": "peephole"}, {"variant": "cifg"}])
def test_tracing_a_step_refuses_what_torch_op_cannot_run(options):
    """torch.jit.trace records torch's own RNN op, which has no zoneout and no Greff variant: step() under the
    tracer raises (it once recorded the plain LSTM silently), and so does to_torch (TorchScript's route)."""
    import gatedrnn
    from gatedrnn.layers import to_torch

    layer = gatedrnn.LSTM(3, 4, **options).eval()

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x, h, c):
            return self.layer.step(x, (h, c))[0]

    with pytest.raises(RuntimeError, match="torch's own RNN op, which has no"):
        torch.jit.trace(Step(), (torch.randn(2, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(TypeError, match="has no torch.nn twin"):
        to_torch(layer)
