"""The Trainer and its checkpoints: learning, early stopping, schedules, logs, atomic and checked files."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from gatedrnn.train import (CheckpointError, ConfigError, TrainConfig, Trainer, load_config_file, load_model,
                            lr_factor, merge_config, save_checkpoint)
from gatedrnn.train import checkpoint as ckpt
from gatedrnn.train import trainer as trainer_module


def tiny(out_dir: Path, **changes) -> TrainConfig:
    settings = dict(task="adding", task_options={"seq_len": 6, "n_train": 256, "n_val": 64, "n_test": 64},
                    cell="lstm", hidden_size=8, batch_size=32, epochs=4, lr=0.02, out_dir=str(out_dir),
                    progress=False, tensorboard=False)
    return TrainConfig(**{**settings, **changes})


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_loss_decreases_and_beats_the_baseline(tmp_path: Path) -> None:
    options = {"seq_len": 4, "n_train": 1024, "n_val": 64, "n_test": 128}
    result = Trainer(tiny(tmp_path, task_options=options, hidden_size=16, batch_size=16, epochs=6, lr=0.01)).fit()
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.test["mse"] < 0.5 * result.test["baseline_mse"]  # predicting the mean gives 0.167


def test_same_seed_same_run_other_seed_other_run(tmp_path: Path) -> None:
    rows = [read_csv(Trainer(tiny(tmp_path / name, epochs=1, seed=seed)).fit().out_dir / "steps.csv")
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    assert rows[0] == rows[1]
    assert rows[0] != rows[2]


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path: Path, monkeypatch) -> None:
    val_mse = iter([0.5, 0.4, 0.45, 0.41, 0.3, 0.2])
    real = trainer_module.evaluate_split

    def scripted(model, task, dataset, **kw):
        metrics = real(model, task, dataset, **kw)
        return {**metrics, "mse": next(val_mse)} if dataset is task.splits(0)["val"] else metrics

    monkeypatch.setattr(trainer_module, "evaluate_split", scripted)
    result = Trainer(tiny(tmp_path, epochs=6, patience=2)).fit()
    assert result.stopped_early
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.val["mse"] == 0.4
    assert json.loads((tmp_path / "best" / "meta.json").read_text())["metrics"]["epoch"] == 2


def test_lr_schedule_values() -> None:
    cosine = dict(schedule="cosine", total_steps=110, warmup_steps=10)
    assert [lr_factor(s, **cosine) for s in (0, 4, 9)] == pytest.approx([1 / 11, 5 / 11, 10 / 11])
    assert lr_factor(10, **cosine) == pytest.approx(1.0)
    assert lr_factor(60, **cosine) == pytest.approx(0.5)
    assert lr_factor(85, **cosine) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_factor(110, **cosine) == pytest.approx(0.0, abs=1e-12)
    step = dict(schedule="step", total_steps=100, step_every=30, step_gamma=0.1)
    assert [lr_factor(s, **step) for s in (0, 29, 30, 65)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert lr_factor(999, schedule="none", total_steps=10) == 1.0


def test_logged_lr_follows_the_schedule(tmp_path: Path) -> None:
    config = tiny(tmp_path, epochs=2, warmup_steps=3, lr=0.01)
    Trainer(config).fit()
    rows = read_csv(tmp_path / "steps.csv")
    total = 2 * 256 // 32
    # the lr logged after step k is the one step k+1 uses: factor(k)
    expected = [0.01 * lr_factor(int(r["step"]), schedule="cosine", total_steps=total, warmup_steps=3) for r in rows]
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected)


def test_csv_and_tensorboard_files(tmp_path: Path) -> None:
    Trainer(tiny(tmp_path, epochs=2, tensorboard=True)).fit()
    steps, epochs = read_csv(tmp_path / "steps.csv"), read_csv(tmp_path / "epochs.csv")
    assert [int(r["step"]) for r in steps] == list(range(1, 17))
    assert {"step", "epoch", "loss", "lr", "grad_norm"} <= set(steps[0])
    assert [int(r["epoch"]) for r in epochs] == [1, 2]
    assert {"train_loss", "val_mse", "val_accuracy", "val_loss", "lr", "seconds"} <= set(epochs[0])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, 17))
    assert [e.value for e in losses] == pytest.approx([float(r["loss"]) for r in steps])
    assert len(events.Scalars("epoch/val_mse")) == 2
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test"]["mse"] >= 0 and results["steps"] == 16


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    result = Trainer(tiny(tmp_path, epochs=1)).fit()
    model, config, task = load_model(tmp_path)
    assert config == tiny(tmp_path, epochs=1)
    assert task.options == result.task.options
    original = result.model.state_dict()
    loaded = model.state_dict()
    assert original.keys() == loaded.keys() and all(torch.equal(original[k], loaded[k]) for k in original)
    x, _ = task.collate([task.splits(0)["test"][i] for i in range(5)])
    result.model.eval()
    assert torch.equal(model(x), result.model(x))
    meta = json.loads((tmp_path / "best" / "meta.json").read_text())
    assert meta["task"] == {"name": "adding", "options": dict(task.options)}
    assert meta["model"]["class"] == "SequenceRegressor" and meta["model"]["config"]["hidden_size"] == 8
    assert {"gatedrnn", "torch", "python"} <= set(meta["versions"])
    state = torch.load(tmp_path / "last" / "state.pt", weights_only=True)  # only safe types inside
    assert {"optimizer", "scheduler", "rng", "counters"} <= set(state)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_atomic_write_leaves_the_old_checkpoint_whole_and_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    Trainer(tiny(tmp_path, epochs=1)).fit()
    model, config, task = load_model(tmp_path)
    before = snapshot(tmp_path)
    written = []
    real_write = ckpt._write_synced

    def failing_write(path, data):
        written.append(path.name)
        if len(written) == 2:
            real_write(path, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_write_synced", failing_write)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path / "last", model=model, config=config.to_dict(), task_name="adding",
                        task_options=task.options, metrics={}, position={}, state={})
    assert snapshot(tmp_path) == before  # nothing changed, nothing left behind
    assert load_model(tmp_path / "last")[0].state_dict().keys() == model.state_dict().keys()


def test_a_crash_between_the_two_renames_is_recovered(tmp_path: Path) -> None:
    Trainer(tiny(tmp_path, epochs=1)).fit()
    aside = tmp_path / ".last.old-12345"
    (tmp_path / "last").rename(aside)  # what a crash after "move the old copy aside" leaves
    assert ckpt.resolve_checkpoint(tmp_path, prefer="last") == aside
    result = Trainer(tiny(tmp_path, epochs=2), resume=True).fit()
    assert result.steps == 16
    assert (tmp_path / "last").is_dir() and not aside.exists()


@pytest.fixture
def saved_run(tmp_path: Path) -> Path:
    Trainer(tiny(tmp_path, epochs=1)).fit()
    return tmp_path


def resealed(directory: Path, change) -> None:
    """Change meta.json and record its new digest: a consistent checkpoint that describes another model."""
    meta = json.loads((directory / "meta.json").read_text())
    change(meta)
    meta["meta_sha256"] = ckpt.meta_digest(meta)
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:50]), "model.safetensors.*truncated"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\0" * (d / "model.safetensors").stat().st_size), "model.safetensors.*modified"),
    (lambda d: (d / "meta.json").write_text((d / "meta.json").read_text()[:40]), "meta.json.*not valid JSON"),
    (lambda d: (d / "meta.json").write_text('{"format": "someone-else", "config": {}}'), "not a gatedrnn checkpoint"),
    (lambda d: (d / "meta.json").unlink(), "meta.json.*missing"),
    (lambda d: (d / "meta.json").write_text((d / "meta.json").read_text().replace('"hidden_size": 8', '"hidden_size": 9')),
     "meta.json.*was modified"),
    (lambda d: resealed(d, lambda meta: meta["config"].update(hidden_size=9)), "does not fit the model"),
])
def test_damaged_or_foreign_checkpoints_raise_checkpoint_error_and_stay_untouched(saved_run: Path, damage, message):
    best = saved_run / "best"
    damage(best)
    before = snapshot(saved_run)
    with pytest.raises(CheckpointError, match=message) as error:
        load_model(best)
    assert str(best) in str(error.value)
    assert snapshot(saved_run) == before


def test_a_foreign_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="weights.pt.*not a gatedrnn checkpoint"):
        load_model(foreign)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothing")


def test_config_from_toml_and_yaml_with_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('task = "copy"\ncell = "gru"\nlr = 0.003\n[task_options]\ndelay = 20\n')
    yaml = tmp_path / "run.yaml"
    yaml.write_text("task: copy\nhidden_size: 48\ntask_options:\n  delay: 30\n  copy_len: 4\n")
    from_toml = merge_config(TrainConfig(), load_config_file(toml))
    assert (from_toml.task, from_toml.cell, from_toml.lr, from_toml.task_options) == ("copy", "gru", 0.003, {"delay": 20})
    from_yaml = merge_config(merge_config(TrainConfig(), load_config_file(yaml)), {"hidden_size": 16, "lr": None})
    assert from_yaml.hidden_size == 16 and from_yaml.lr == TrainConfig().lr
    assert from_yaml.task_options == {"delay": 30, "copy_len": 4}
    bad = tmp_path / "bad.toml"
    bad.write_text("hiden_size = 3\n")
    with pytest.raises(ConfigError, match="unknown config key.*hiden_size"):
        merge_config(TrainConfig(), load_config_file(bad))
    broken = tmp_path / "broken.toml"
    broken.write_text("lr = = 3\n")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        load_config_file(broken)


@pytest.mark.parametrize("changes, message", [
    ({"hidden_size": -1}, "hidden_size"), ({"cell": "transformer"}, "unknown cell"), ({"lr": 0.0}, "lr"),
    ({"dropout": 1.5}, "dropout"), ({"schedule": "linear"}, "unknown schedule"), ({"batch_size": 0}, "batch_size"),
])
def test_bad_config_values_are_refused_before_anything_is_written(tmp_path: Path, changes, message) -> None:
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny(out, **changes))
    assert not out.exists()
