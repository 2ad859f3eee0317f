"""The Bach chorales: piano rolls against music21's own notes, the split, the cache (reused, rebuilt when
damaged), the frame NLL against a hand computation, padding kept out of the loss, and a CLI run.

Only a few scores are parsed here (`max_pieces`); the whole corpus is parsed by
`python -m gatedrnn.data.chorales` (about 45 s, then cached)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence, pack_sequence

pytest.importorskip("music21", reason="the chorales need the 'music' extra: pip install 'gatedrnn[music]'")

from gatedrnn.data import DataUnavailableError  # noqa: E402
from gatedrnn.data import chorales as chorale_data  # noqa: E402
from gatedrnn.data.chorales import (NUM_KEYS, SkippedPiece, chorale_files, corpus_dir, load_chorales,  # noqa: E402
                                    piano_roll, split_chorales)
from gatedrnn.models import FrameTagger, build_model  # noqa: E402
from gatedrnn.tasks import get_task  # noqa: E402
from gatedrnn.tasks.chorales import frame_accuracy, frame_nll, shift_right  # noqa: E402
from cli_runner import run_cli  # noqa: E402

SUBSET = 6  # the first six score files: bwv1.6 (horn + SATB), bwv10.7, bwv101.7, bwv102.7, bwv103.6, bwv104.6


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chorale-cache")


@pytest.fixture(scope="module")
def subset(cache_dir):
    return load_chorales(max_pieces=SUBSET, cache_dir=cache_dir)


# ----- piano rolls -----
def _midi(frame: np.ndarray) -> list[int]:
    return (np.flatnonzero(frame) + 21).tolist()


def test_bwv66_6_against_music21_notes():
    from music21 import converter

    score = converter.parse(str(corpus_dir() / "bwv66.6.mxl"))
    roll = piano_roll(score)
    assert roll.dtype == np.uint8 and roll.shape == (36, NUM_KEYS)  # 36 quarter notes long
    assert set(np.unique(roll)) == {0, 1}
    # read off the score: S C#5, A E4, T A3, B A3 (T and B in unison); then S A4, A F#4, T C#4, B F#3
    assert _midi(roll[0]) == [57, 64, 73]
    assert _midi(roll[1]) == [54, 61, 66, 69]
    # every frame: the pitches music21 lists as sounding at that quarter, from its own note list
    expected = [set() for _ in range(len(roll))]
    for part in score.parts:
        for note in part.recurse().notes:
            onset = float(note.getOffsetInHierarchy(score))
            for t in range(len(roll)):
                if onset <= t < onset + float(note.quarterLength):
                    expected[t].update(p.midi for p in note.pitches)
    assert [set(_midi(frame)) for frame in roll] == expected
    eighths = piano_roll(score, 0.5)
    assert eighths.shape == (72, NUM_KEYS)
    assert _midi(eighths[1]) == [56, 59, 64, 71]  # the second eighth: S B4, T B3, B G#3 move; A holds E4
    np.testing.assert_array_equal(eighths[::2], roll)  # every other eighth frame is a quarter frame


def _score(parts: list[tuple[str, list[tuple[str, float]]]]):
    from music21 import note, stream

    score = stream.Score()
    for name, notes in parts:
        part = stream.Part()
        part.partName = name
        for pitch, length in notes:
            part.append(note.Rest(quarterLength=length) if pitch == "r" else note.Note(pitch, quarterLength=length))
        score.insert(0, part)
    return score


def test_sampling_voices_and_skips():
    satb = [("Soprano", [("C5", 0.5), ("D5", 0.5), ("E5", 2.0)]), ("Alto", [("r", 1.0), ("G4", 2.0)]),
            ("Tenor", [("E4", 3.0)]), ("Bass", [("C3", 1.5), ("G2", 1.5)])]
    roll = piano_roll(_score(satb))
    # frames at quarters 0, 1, 2: the D5 eighth (0.5..1.0) falls between frame times and is lost
    assert [_midi(f) for f in roll] == [[48, 64, 72], [48, 64, 67, 76], [43, 64, 67, 76]]
    with_horn = piano_roll(_score([("Horn", [("C6", 3.0)]), *satb]))
    np.testing.assert_array_equal(with_horn, roll)  # the four named voices are kept, the instrument dropped
    with pytest.raises(SkippedPiece, match=r"has 3 parts .* not four nor one each named Soprano"):
        piano_roll(_score(satb[:3]))
    with pytest.raises(SkippedPiece, match=r"pitch C0 \(MIDI 12\) is outside the 88 keys"):
        piano_roll(_score([*satb[:3], ("Bass", [("C0", 3.0)])]))


# ----- the corpus, the cache, the split -----
def test_subset_loads_with_reasons(subset, cache_dir):
    files = chorale_files(max_pieces=SUBSET)
    assert [f.name for f in files][:2] == ["bwv1.6.mxl", "bwv10.7.mxl"]
    assert len(subset.names) + len(subset.skipped) == SUBSET
    assert set(subset.names) | {name for name, _ in subset.skipped} == {f.name for f in files}
    assert subset.cache_file is not None and subset.cache_file.parent == cache_dir and subset.cache_file.is_file()
    for roll in subset.rolls:
        assert roll.ndim == 2 and roll.shape[1] == NUM_KEYS and len(roll) >= 8 and roll.dtype == np.uint8
        assert set(np.unique(roll)) <= {0, 1} and 2 <= roll.sum(1).max() <= 4  # four voices, unisons merged


def _same(a, b) -> None:
    assert a.names == b.names and a.skipped == b.skipped and len(a.rolls) == len(b.rolls)
    for x, y in zip(a.rolls, b.rolls):
        np.testing.assert_array_equal(x, y)


def test_cache_is_reused_and_rebuilt_when_damaged(subset, cache_dir, monkeypatch):
    parsed: list[str] = []
    real_parse = chorale_data.parse_chorale

    def counting_parse(path, frame_quarters=1.0):
        parsed.append(Path(path).name)
        return real_parse(path, frame_quarters)

    monkeypatch.setattr(chorale_data, "parse_chorale", counting_parse)
    _same(load_chorales(max_pieces=SUBSET, cache_dir=cache_dir), subset)
    assert parsed == []  # read from the cache
    path = subset.cache_file
    good = path.read_bytes()
    damages = {"a flipped payload byte": good[:-100] + bytes([good[-100] ^ 0xFF]) + good[-99:],
               "a truncated file": good[: len(good) // 2], "another file": b"not a cache\n", "an empty file": b""}
    for what, blob in damages.items():
        path.write_bytes(blob)
        parsed.clear()
        with pytest.warns(RuntimeWarning, match="rebuilding the chorale cache"):
            rebuilt = load_chorales(max_pieces=SUBSET, cache_dir=cache_dir)
        assert len(parsed) == SUBSET, what
        _same(rebuilt, subset)
        assert path.read_bytes() == good, what  # rewritten whole
    # a sound file made from other scores, under this key's name (a renamed file): not trusted
    other = load_chorales(max_pieces=SUBSET - 1, cache_dir=cache_dir)
    path.write_bytes(other.cache_file.read_bytes())
    parsed.clear()
    with pytest.warns(RuntimeWarning, match="made from other files or options"):
        _same(load_chorales(max_pieces=SUBSET, cache_dir=cache_dir), subset)
    assert len(parsed) == SUBSET
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([path.name, other.cache_file.name])  # no temp left


def test_missing_music21_names_the_extra(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "music21" else
                        real_find_spec(name, *a))
    with pytest.raises(DataUnavailableError, match=r"pip install 'gatedrnn\[music\]'"):
        load_chorales(max_pieces=3)


def test_split_is_deterministic_disjoint_and_jsb_sized():
    split = split_chorales(405, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 242, "val": 81, "test": 82}
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(405))  # disjoint and complete
    again = split_chorales(405, seed=0)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split_chorales(405, seed=1)["test"], split["test"])
    assert {k: len(v) for k, v in split_chorales(382).items()} == {"train": 229, "val": 76, "test": 77}  # JSB's
    with pytest.raises(ValueError, match="use at least 3 pieces"):
        split_chorales(2)


# ----- the metric and the batches -----
def test_frame_nll_and_accuracy_by_hand():
    ln3 = math.log(3.0)
    logits = torch.tensor([[0.0, ln3], [-ln3, 0.0]], dtype=torch.float64)  # (2 frames, 2 keys)
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    # -log σ(0) = ln 2; -log(1 - σ(ln 3)) = -log(1/4) = ln 4; -log σ(-ln 3) = ln 4; ln 2: 6 ln 2 over 2 frames
    assert float(frame_nll(logits, targets)) == pytest.approx(3 * math.log(2.0), rel=1e-12)
    # predicted on: (0, 1) only (p = 3/4); actual on: (0, 0), (1, 0), (1, 1): TP 0, FP 1, FN 3
    assert frame_accuracy(logits, targets) == 0.0
    assert frame_accuracy(torch.tensor([[1.0, -1.0], [1.0, 1.0]]), targets) == pytest.approx(3 / 3)
    assert frame_accuracy(torch.tensor([[1.0, 1.0], [-1.0, 1.0]]), targets) == pytest.approx(2 / 4)
    task = get_task("chorales", max_pieces=3)
    zeros, keys = torch.zeros(5, NUM_KEYS), (torch.rand(5, NUM_KEYS) > 0.9).float()
    assert task.evaluate(zeros, keys)["nll"] == pytest.approx(NUM_KEYS * math.log(2.0))  # p = 1/2 everywhere
    with pytest.raises(ValueError, match=r"expected prediction \(N, 88\) and target \(N, 88\)"):
        task.loss(torch.zeros(5, NUM_KEYS), torch.zeros(4, NUM_KEYS))


def test_padding_never_enters_the_loss():
    torch.manual_seed(0)
    task = get_task("chorales", max_pieces=3)
    rolls = [(torch.rand(t, NUM_KEYS) > 0.93).float() for t in (5, 9, 3, 9)]
    inputs, targets = task.collate(rolls)
    assert isinstance(inputs, PackedSequence) and targets.shape == (26, NUM_KEYS)  # 5 + 9 + 3 + 9 real frames
    # targets in packed order are the pieces sorted by length (ties in batch order); inputs are them shifted
    padded_targets, lengths = pad_packed_sequence(PackedSequence(targets, inputs.batch_sizes), batch_first=True)
    padded_inputs, _ = pad_packed_sequence(inputs, batch_first=True)
    order = [1, 3, 0, 2]
    assert lengths.tolist() == [9, 9, 5, 3]
    for row, index in enumerate(order):
        t = len(rolls[index])
        torch.testing.assert_close(padded_targets[row, :t], rolls[index], rtol=0, atol=0)
        torch.testing.assert_close(padded_inputs[row, :t], shift_right(rolls[index]), rtol=0, atol=0)
    model = task.build_model("lstm", 8)
    with torch.no_grad():
        batch_loss = float(task.loss(model(inputs), targets)) * len(targets)  # total nats of the batch
        one_by_one = sum(float(task.loss(*_alone(task, model, r))) * len(r) for r in rolls)
        # the same pieces zero-padded to one (B, T, 88) tensor: only the real frames' logits count
        padded = torch.stack([torch.cat([shift_right(r), torch.full((9 - len(r), NUM_KEYS), 7.0)]) for r in rolls])
        logits = model(padded)  # (4, 9, 88)
        mask = torch.arange(9)[None, :] < torch.tensor([len(r) for r in rolls])[:, None]  # (4, 9)
        padded_targets = torch.stack([torch.cat([r, torch.ones(9 - len(r), NUM_KEYS)]) for r in rolls])
        masked = float(frame_nll(logits[mask], padded_targets[mask])) * int(mask.sum())
    assert batch_loss == pytest.approx(one_by_one, rel=1e-5)
    assert batch_loss == pytest.approx(masked, rel=1e-5)


def _alone(task, model, roll):
    inputs, targets = task.collate([roll])
    return model(inputs), targets


def test_frame_tagger_keeps_the_convention():
    torch.manual_seed(0)
    model = FrameTagger(NUM_KEYS, 6, NUM_KEYS, cell="gru")
    x = pack_sequence([torch.rand(4, NUM_KEYS), torch.rand(2, NUM_KEYS)])
    out = model(x)
    assert out.shape == (6, NUM_KEYS)
    torch.testing.assert_close(out, model.head(model.rnn(x)[0].data), rtol=0, atol=0)
    rebuilt = build_model("FrameTagger", model.config)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x), out)
    assert model(torch.rand(2, 3, NUM_KEYS)).shape == (2, 3, NUM_KEYS)


# ----- the command line -----
def test_train_chorales_from_the_cli(tmp_path, cache_dir, capsys):
    torch_threads = torch.get_num_threads()
    try:
        out = tmp_path / "run"
        code, _, err = run_cli(capsys, "train", "--task", "chorales", "--cell", "lstm", "-o", f"max_pieces={SUBSET}",
                               "-o", f"cache_dir={cache_dir}", "--hidden-size", "16", "--epochs", "1",
                               "--batch-size", "2", "--lr", "0.01", "--threads", "1", "--quiet", "--no-tensorboard",
                               "--out-dir", str(out))
        assert code == 0, err
        results = json.loads((out / "results.json").read_text())
        test = results["test"]
        # some learning in 2 steps: below p = 1/2 per key (88 ln 2 = 61 nats), above 0
        assert results["steps"] == 2 and 0 < test["nll"] < NUM_KEYS * math.log(2.0) and test["frames"] > 0
        code, _, err = run_cli(capsys, "train", "--task", "chorales", "-o", "frame=sixteenth", "--out-dir",
                               str(tmp_path / "bad"))
        assert code != 0 and "option 'frame' of task 'chorales' should be one of ['quarter', 'eighth']" in err
    finally:
        torch.set_num_threads(torch_threads)


# ----- the study runner -----
def test_greff_study_records_every_run(tmp_path, monkeypatch, capsys):
    from gatedrnn.bench import greff_study

    with pytest.raises(greff_study.StudyError, match=r"unknown cell\(s\) \['lstm_xyz'\]: .* now \['gru', .*'lstm'"):
        greff_study.resolve_cells(["lstm", "gru"], ["lstm_xyz"])
    assert greff_study.resolve_cells(["lstm", "gru", "rnn"], ["gru", "lstm"]) == ["lstm", "gru", "rnn"]
    assert main_exit(greff_study, ["lstm_xyz", "--seeds", "1"]) == 2  # refused before any run
    assert "unknown cell(s) ['lstm_xyz']" in capsys.readouterr().err

    def fake_run(cell, seed, epochs, hidden_size):  # the run itself is `gatedrnn train`, tested above
        return {"cell": cell, "seed": seed, "test_nll": {"lstm": 8.0, "gru": 9.0}[cell] + seed, "val_nll": 0.0,
                "best_epoch": epochs, "steps": 31 * epochs, "seconds": 1.0,
                "command": " ".join(greff_study.command(cell, seed, epochs, hidden_size))}

    monkeypatch.setattr(greff_study, "run_one", fake_run)
    monkeypatch.setattr(greff_study, "data_record", lambda: {"pieces": 405})
    out = tmp_path / "study.json"
    assert greff_study.main(["--cells", "lstm", "gru", "--seeds", "3", "--epochs", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [(r["cell"], r["seed"]) for r in record["runs"]] == [(c, s) for s in range(3) for c in ("lstm", "gru")]
    assert record["summary"]["lstm"] == {"runs": 3, "mean_test_nll": 9.0, "std_test_nll": 1.0, "min_test_nll": 8.0,
                                         "max_test_nll": 10.0}
    assert record["runs"][0]["command"] == ("train --task chorales --batch-size 8 --lr 0.01 --cell lstm "
                                            "--hidden-size 100 --epochs 2 --seed 0")
    assert record["environment"]["cpu"]["model"] and record["data"] == {"pieces": 405}

    # --add trains only the named cells into the same record, which keeps the others' runs
    fake_nll = {"lstm": 8.0, "gru": 9.0, "rnn": 7.0}
    monkeypatch.setattr(greff_study, "run_one", lambda cell, seed, epochs, hidden_size: {
        "cell": cell, "seed": seed, "test_nll": fake_nll[cell] + seed})
    before = out.read_text()
    assert main_exit(greff_study, ["--cells", "rnn", "--seeds", "2", "--epochs", "2", "--add", "--out", str(out)]) == 2
    assert "differs in (record, asked): {'seeds': (3, 2)}" in capsys.readouterr().err
    assert out.read_text() == before  # a refused --add leaves the record alone
    assert greff_study.main(["--cells", "rnn", "gru", "--seeds", "3", "--epochs", "2", "--add", "--out", str(out)]) == 0
    added = json.loads(out.read_text())
    assert added["cells"] == ["lstm", "rnn", "gru"]
    assert [(r["cell"], r["seed"]) for r in added["runs"]] == [(c, s) for s in range(3) for c in ("lstm",)] + [
        (c, s) for s in range(3) for c in ("rnn", "gru")]
    assert added["summary"]["lstm"] == record["summary"]["lstm"] and added["summary"]["rnn"]["mean_test_nll"] == 8.0
    assert added["additions"][0]["cells"] == ["rnn", "gru"] and added["environment"] == record["environment"]


def main_exit(module, argv) -> int:
    try:
        return module.main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_the_task_s_train_defaults_sit_below_file_and_flags(tmp_path):
    from gatedrnn.cli import build_parser
    from gatedrnn.cli.train import build_config

    def config(*argv):
        return build_config(build_parser().parse_args(["train", *argv]))

    chosen = config("--task", "chorales")
    assert (chosen.hidden_size, chosen.batch_size, chosen.lr, chosen.epochs) == (100, 8, 0.01, 20)
    assert config("--task", "chorales", "--hidden-size", "7", "--lr", "0.5").hidden_size == 7
    file = tmp_path / "run.toml"
    file.write_text('task = "chorales"\nbatch_size = 4\n')
    from_file = config("--config", str(file))
    assert (from_file.batch_size, from_file.hidden_size) == (4, 100)
    plain = config("--task", "adding")
    assert (plain.hidden_size, plain.batch_size, plain.lr) == (64, 32, 0.001)  # TrainConfig's own defaults
