"""Tasks and models: the registry, generated data with known structure, baselines, metrics on known
predictions, the model convention, and a tiny training run per task that beats the task's baseline."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from gatedrnn.models import (CELLS, CharLM, SequenceClassifier, SequenceRegressor, SequenceTagger, build_model,
                             register_cell)
from gatedrnn.tasks import TASKS, get_task
from gatedrnn.tasks.temporal_order import START, TRIGGER, X, Y, relevant_windows

torch.set_num_threads(1)


# ----- registry and options -----
def test_registry_and_option_errors():
    assert set(TASKS) == {"adding", "copy", "temporal_order", "sunspots", "vowels", "charlm", "chorales"}
    with pytest.raises(ValueError, match=r"unknown task 'nope': expected one of \['adding', 'charlm'"):
        get_task("nope")
    with pytest.raises(ValueError, match="unknown option 'seqlen' for task 'adding'"):
        get_task("adding", seqlen=10)
    with pytest.raises(ValueError, match="option 'seq_len' of task 'adding' should be >= 2, got -1"):
        get_task("adding", seq_len=-1)
    with pytest.raises(ValueError, match="option 'n_train' of task 'adding' should be an int, got str"):
        get_task("adding", n_train="10")
    with pytest.raises(ValueError, match="option 'arima_order' of task 'sunspots' should be 'p,d,q'"):
        get_task("sunspots", arima_order="2,1")
    task = get_task("adding", seq_len=20)
    assert task.options == {"seq_len": 20, "n_train": 10000, "n_val": 1000, "n_test": 1000}
    assert type(task)(**task.options).options == task.options  # a checkpoint can rebuild it
    for name, cls in TASKS.items():
        assert cls.info.name == name and cls.info.metric and cls.info.baseline


def test_cheap_baselines_are_named_floats():
    expected = {"adding": {"mean_predictor_mse", "mean_predictor_accuracy"},
                "copy": {"memoryless_accuracy", "memoryless_cross_entropy"},
                "temporal_order": {"chance_accuracy", "chance_cross_entropy"},
                "vowels": {"chance_accuracy", "majority_accuracy", "lstm_fcn_accuracy", "mlstm_fcn_accuracy"}}
    for name, keys in expected.items():
        baselines = get_task(name).baselines()
        assert set(baselines) == keys and all(isinstance(v, float) for v in baselines.values())
    assert get_task("copy", delay=100, copy_len=10).baselines()["memoryless_cross_entropy"] == pytest.approx(
        10 * math.log(8) / 120)


# ----- models -----
def _model_inputs():
    torch.manual_seed(0)
    return [
        (SequenceRegressor(3, 8, 2), torch.randn(4, 6, 3)),
        (SequenceClassifier(3, 8, 5, num_layers=2), torch.randn(4, 6, 3)),
        (SequenceTagger(3, 8, 4), torch.randn(4, 6, 3)),
        (CharLM(11, 8, 5), torch.randint(0, 11, (4, 6))),
    ]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "slstm", "mingru", "minlstm"])
def test_models_keep_the_convention(cell):
    for model, x in _model_inputs():
        model = type(model)(**{**model.config, "cell": cell})
        assert model.rnn.batch_first and model.cell == cell
        assert type(model.rnn).__name__ == {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN", "slstm": "SLSTM",
                                         "mingru": "MinGRU", "minlstm": "MinLSTM"}[cell]
        out = model(x)
        torch.testing.assert_close(out, model.readout(model.rnn(model.rnn_input(x))[0]), rtol=0, atol=0)
        rebuilt = build_model(type(model).__name__, model.config)
        rebuilt.load_state_dict(model.state_dict())  # strict: same names and shapes
        torch.testing.assert_close(rebuilt(x), out)


def test_cell_registry():
    with pytest.raises(ValueError, match=r"unknown cell 'lstmx': expected one of \[.*'lstm', .*'mingru'.*\]"):
        SequenceRegressor(2, 4, cell="lstmx")
    from gatedrnn import RNN
    register_cell("rnn_relu_test", lambda i, h, *, num_layers, dropout: RNN(
        i, h, num_layers=num_layers, dropout=dropout, nonlinearity="relu", batch_first=True))
    try:
        model = SequenceRegressor(2, 4, cell="rnn_relu_test")
        assert model.rnn.nonlinearity == "relu" and model(torch.randn(3, 5, 2)).shape == (3, 1)
    finally:
        del CELLS["rnn_relu_test"]


def test_classifier_packed_readout_is_the_final_hidden_state():
    torch.manual_seed(1)
    for cell in ("lstm", "gru"):
        model = SequenceClassifier(3, 6, 4, cell=cell, num_layers=2)
        series = [torch.randn(n, 3) for n in (5, 2, 7, 3)]
        packed = pack_sequence(series, enforce_sorted=False)
        logits = model(packed)
        _, hidden = model.rnn(packed)
        h_n = hidden[0] if cell == "lstm" else hidden
        torch.testing.assert_close(logits, model.head(h_n[-1]))
        torch.testing.assert_close(logits, model.readout(model.rnn(packed)[0]))
        alone = torch.cat([model(s.unsqueeze(0)) for s in series])  # each sequence unpadded
        torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)


def test_charlm_generate_is_reproducible_and_consistent_with_forward(monkeypatch):
    torch.manual_seed(2)
    model = CharLM(7, 12, 4, cell="lstm")
    prompt = torch.tensor([1, 2, 3])
    a = model.generate(prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert a.shape == (23,) and torch.equal(a, b) and torch.equal(a[:3], prompt)
    greedy = model.generate(prompt.unsqueeze(0), 15, temperature=0)  # (1, 18)
    with torch.no_grad():
        expected_next = model(greedy[:, :-1]).argmax(-1)  # (1, 17)
    assert torch.equal(greedy[0, 3:], expected_next[0, 2:])
    # the streaming path (the layer's step(), used when it exists) gives the text of the forward path
    assert callable(getattr(model.rnn, "step", None))
    monkeypatch.setattr(model.rnn, "step", None, raising=False)
    c = model.generate(prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, c)
    with pytest.raises(ValueError, match="character ids should be in"):
        model(torch.tensor([[0, 7]]))


# ----- adding -----
def test_adding_data_structure_and_baseline():
    task = get_task("adding", seq_len=30, n_train=20000, n_val=10, n_test=10)
    x, y = task.collate([task.splits(0)["train"][i] for i in range(20000)])
    assert x.shape == (20000, 30, 2) and y.shape == (20000, 1)
    markers = x[:, :, 1]
    assert torch.equal(markers.sum(1), torch.full((20000,), 2.0))
    assert bool(((markers == 0) | (markers == 1)).all())
    positions = markers.nonzero()[:, 1].view(-1, 2)
    assert bool((positions[:, 0] < 15).all()) and bool((positions[:, 1] >= 15).all())
    torch.testing.assert_close(y[:, 0], (x[:, :, 0] * markers).sum(1))
    mean_predictor = task.evaluate(torch.ones_like(y), y)
    assert mean_predictor["mse"] == pytest.approx(1 / 6, abs=0.005) and mean_predictor["baseline_mse"] == 1 / 6
    assert mean_predictor["accuracy"] == pytest.approx(task.baselines()["mean_predictor_accuracy"], abs=0.008)
    assert task.baselines() == {"mean_predictor_mse": 1 / 6, "mean_predictor_accuracy": pytest.approx(0.0784)}
    metrics = task.evaluate(y + 0.03, y)
    assert metrics["mse"] == pytest.approx(0.0009, rel=1e-4) and metrics["accuracy"] == 1.0
    assert task.evaluate(y - 0.05, y)["accuracy"] == 0.0
    assert task.loss(y + 0.1, y).item() == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(ValueError, match=r"expected prediction \(B, 1\) and target \(B, 1\)"):
        task.loss(y[:, 0], y)
    again = get_task("adding", seq_len=30, n_train=20000, n_val=10, n_test=10).splits(0)["train"].tensors[0]
    assert torch.equal(again, task.splits(0)["train"].tensors[0])
    assert not torch.equal(task.splits(1)["train"].tensors[0], again)


# ----- copy -----
def test_copy_data_and_memoryless_baseline():
    task = get_task("copy", delay=6, copy_len=3, n_train=50, n_val=5, n_test=5)
    ids, targets = task.splits(0)["train"].tensors  # (50, 12)
    assert ids.shape == (50, 12)
    assert torch.equal(targets[:, -3:], ids[:, :3]) and bool((targets[:, :-3] == 0).all())
    assert bool((ids[:, :3] >= 1).all() and (ids[:, :3] <= 8).all())
    assert bool((ids[:, 8] == 9).all()) and int((ids == 9).sum()) == 50  # one delimiter, after T - 1 blanks
    x, y = task.collate([task.splits(0)["train"][i] for i in range(50)])
    assert x.shape == (50, 12, 10) and torch.equal(x.argmax(-1), ids)
    memoryless = torch.full((50, 12, 9), -1e4)
    memoryless[:, :-3, 0] = 0.0  # certain blank before the recall
    memoryless[:, -3:, 1:] = 0.0  # uniform over the 8 symbols during the recall
    metrics = task.evaluate(memoryless, y)
    assert metrics["cross_entropy"] == pytest.approx(3 * math.log(8) / 12, rel=1e-5)
    assert metrics["cross_entropy"] == pytest.approx(task.baselines()["memoryless_cross_entropy"], rel=1e-5)
    perfect = torch.nn.functional.one_hot(y, 9).float() * 1e4
    assert task.evaluate(perfect, y)["accuracy"] == 1.0 and task.evaluate(perfect, y)["sequence_accuracy"] == 1.0


# ----- temporal order -----
def test_temporal_order_data_and_chance():
    task = get_task("temporal_order", seq_len=100, n_train=500, n_val=5, n_test=5)
    ids, classes = task.splits(0)["train"].tensors
    assert bool((ids[:, 0] == START).all() and (ids[:, -1] == TRIGGER).all())
    relevant = (ids == X) | (ids == Y)
    assert bool((relevant.sum(1) == 2).all())
    steps = relevant.nonzero()[:, 1].view(-1, 2)
    (lo1, hi1), (lo2, hi2) = relevant_windows(100)
    assert (lo1, hi1, lo2, hi2) == (10, 20, 50, 60)
    assert bool(((steps[:, 0] >= lo1) & (steps[:, 0] <= hi1) & (steps[:, 1] >= lo2) & (steps[:, 1] <= hi2)).all())
    symbols = ids.gather(1, steps)  # (N, 2)
    assert torch.equal(classes, 2 * (symbols[:, 0] == Y).long() + (symbols[:, 1] == Y).long())
    assert set(classes.tolist()) == {0, 1, 2, 3}
    metrics = task.evaluate(torch.zeros(500, 4), classes)
    assert metrics["cross_entropy"] == pytest.approx(math.log(4), rel=1e-6)


# ----- sunspots -----
def test_sunspots_splits_and_baselines():
    task = get_task("sunspots", window=24, arima_order="2,0,0")  # AR(2): a fast fit
    splits, values = task.splits(0), task.series.values
    assert {k: len(v) for k, v in splits.items()} == {"train": 2280, "val": 360, "test": 354}
    mean, std = task.scale
    assert mean == pytest.approx(values[:2412].mean()) and std == pytest.approx(values[:2412].std())
    x, y = splits["test"][0]
    np.testing.assert_allclose(task.to_original_units(x[:, 0]).numpy(), values[2772 - 24:2772], rtol=1e-5)
    assert float(task.to_original_units(y)) == pytest.approx(values[2772], rel=1e-5)  # 1980-01
    test = values[2772:]
    baselines = task.baselines()
    assert baselines["persistence_rmse"] == pytest.approx(np.sqrt(np.mean((values[2771:-1] - test) ** 2)))
    assert baselines["seasonal_naive_rmse"] == pytest.approx(
        np.sqrt(np.mean((values[2772 - 132:-132] - test) ** 2)))
    assert baselines["persistence_rmse"] == pytest.approx(19.84, abs=0.01)
    assert baselines["arima_rmse"] < baselines["persistence_rmse"]
    inputs, targets = task.collate([splits["test"][i] for i in range(len(splits["test"]))])
    assert task.evaluate(targets, targets)["rmse"] == 0.0
    shifted = task.evaluate(targets + 2.0 / std, targets)
    assert shifted["rmse"] == pytest.approx(2.0, rel=1e-5) and shifted["mae"] == pytest.approx(2.0, rel=1e-5)


# ----- vowels -----
def test_vowels_splits_normalisation_and_packing():
    task = get_task("vowels", val_per_class=3)
    splits = task.splits(0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 243, "val": 27, "test": 370}
    assert torch.bincount(splits["val"].classes).tolist() == [3] * 9
    frames = torch.cat(splits["train"].series)  # (sum T, 12)
    torch.testing.assert_close(frames.mean(0), torch.zeros(12), atol=1e-5, rtol=0)
    torch.testing.assert_close(frames.std(0, unbiased=False), torch.ones(12), atol=1e-5, rtol=0)
    items = [splits["test"][i] for i in range(5)]
    packed, classes = task.collate(items)
    assert classes.tolist() == [int(c) for _, c in items]
    assert sorted(packed.batch_sizes.tolist(), reverse=True) == packed.batch_sizes.tolist()
    assert int(packed.batch_sizes.sum()) == sum(len(s) for s, _ in items)
    logits = torch.full((5, 9), -10.0)
    logits[torch.arange(5), classes] = 10.0
    assert task.evaluate(logits, classes)["accuracy"] == 1.0
    assert task.splits(1)["val"].classes.shape == (27,)


# ----- charlm -----
def test_charlm_splits_vocabulary_and_baselines():
    task = get_task("charlm", max_chars=10000, seq_len=20)
    parts = task.split_text()
    assert [len(parts[k]) for k in ("train", "val", "test")] == [9000, 500, 500]
    assert task.decode(task.encode(parts["train"][:300])) == parts["train"][:300]
    x, y = task.collate([task.splits(0)["train"][i] for i in range(3)])
    assert x.shape == y.shape == (3, 20)
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1:, 0], y[:-1, -1])  # windows chain
    assert task.decode(x[0]) == parts["train"][:20]
    uniform = task.evaluate(torch.zeros(3, 20, task.vocab_size), y)
    assert uniform["bpc"] == pytest.approx(math.log2(task.vocab_size), rel=1e-6)
    baselines = task.baselines()
    counts = np.array([parts["train"].count(ch) for ch in set(parts["train"])], dtype=float)
    p = counts / counts.sum()
    assert baselines["unigram_entropy_bpc"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert 3.5 < baselines["unigram_entropy_bpc"] < baselines["unigram_bpc"] < baselines["uniform_bpc"]
    with pytest.raises(ValueError, match=r"characters \['€'\] are not in the corpus vocabulary"):
        task.encode("€")


# ----- a tiny training run per task beats the baseline -----
def _train(task, cell, hidden, steps, lr, batch, seed=0):
    torch.manual_seed(seed)
    splits = task.splits(seed)
    model = task.build_model(cell, hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, len(splits["train"]), (batch,), generator=generator)
        x, y = task.collate([splits["train"][int(i)] for i in rows])
        loss = task.loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    val = splits["val"]
    with torch.no_grad():
        x, y = task.collate([val[i] for i in range(len(val))])
        metrics = task.evaluate(model(x), y)
    return losses, metrics


def test_tiny_training_adding():
    task = get_task("adding", seq_len=10, n_train=500, n_val=200)
    losses, metrics = _train(task, "gru", 16, 300, 0.01, 32)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    assert metrics["mse"] < 0.2 * metrics["baseline_mse"]


def test_tiny_training_copy():
    task = get_task("copy", delay=5, copy_len=2, n_train=500, n_val=200)
    losses, metrics = _train(task, "gru", 32, 300, 0.01, 32)
    assert np.mean(losses[-20:]) < task.baselines()["memoryless_cross_entropy"]
    assert metrics["cross_entropy"] < task.baselines()["memoryless_cross_entropy"] and metrics["accuracy"] > 0.3


def test_tiny_training_temporal_order():
    task = get_task("temporal_order", seq_len=10, n_train=500, n_val=200)
    losses, metrics = _train(task, "lstm", 16, 80, 0.01, 32)
    assert np.mean(losses[-10:]) < 0.5 * math.log(4)
    assert metrics["accuracy"] > 0.9


def test_tiny_training_sunspots():
    task = get_task("sunspots", window=24)
    losses, metrics = _train(task, "lstm", 16, 100, 0.01, 32)
    mean_predictor_rmse = float(np.sqrt(np.mean((task.series.values[2412:2772] - task.scale[0]) ** 2)))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert metrics["rmse"] < 0.5 * mean_predictor_rmse


def test_tiny_training_vowels():
    task = get_task("vowels")
    losses, metrics = _train(task, "gru", 32, 60, 0.01, 32)
    assert np.mean(losses[-10:]) < 0.5 * math.log(9)
    assert metrics["accuracy"] > 0.8


def test_tiny_training_charlm():
    task = get_task("charlm", max_chars=50000, seq_len=50)
    losses, metrics = _train(task, "lstm", 64, 100, 0.01, 32)
    unigram_nats = task.baselines()["unigram_entropy_bpc"] * math.log(2)
    assert np.mean(losses[-10:]) < 0.8 * unigram_nats
    assert metrics["bpc"] < task.baselines()["unigram_entropy_bpc"] - 0.5
