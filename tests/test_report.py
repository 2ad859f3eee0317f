"""The explain report: builds, is self-contained, holds every plot, the equations from the cells' docstrings and
readings computed from the data; bad arguments raise before anything is written."""
from __future__ import annotations

import base64
import html as html_lib
import io
import os
import re

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gatedrnn.inspect import gradient_flow
from gatedrnn.models import SequenceRegressor
from gatedrnn.report import write_explain_report
from gatedrnn.report.equations import equation_text
from gatedrnn.tasks.adding import make_adding

LENGTH = 24


def small_models(hidden: int = 8) -> dict:
    models = {}
    for seed, (label, cell) in enumerate((("RNN", "rnn"), ("LSTM", "lstm"), ("GRU", "gru"))):
        torch.manual_seed(seed)
        models[label] = SequenceRegressor(2, hidden, 1, cell=cell)
    with torch.no_grad():  # LSTM unit 3 holds: forget gate bias +8 (f ~ 1), so the reading must find it
        H = hidden
        models["LSTM"].rnn.bias_ih_l0[H + 3] = 8.0
    return models


def history() -> dict:
    return {label: [{"step": s, "train_loss": 0.2 / (1 + s * k), "val_mse": 0.25 / (1 + s * k)} for s in range(0, 50, 10)]
            for k, label in enumerate(("RNN", "LSTM", "GRU"), start=1)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    models = small_models()
    x, y = make_adding(16, LENGTH, torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    written = write_explain_report(models, x, y, path, task_name="adding", loss_fn=F.mse_loss, history=history(),
                                   notes={"training": "none: freshly initialised <test> models"})
    return models, x, y, written, written.read_text(encoding="utf-8")


def text_of(html_text: str) -> str:
    return html_lib.unescape(re.sub(r"<[^>]+>", "", html_text))


def test_report_is_one_self_contained_page(built):
    _, _, _, path, page = built
    assert path.name == "report.html" and page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I), "no network references"
    assert not re.search(r"<script|@import|url\(|<link[^>]+stylesheet|<iframe", page, re.I)
    assert [p.name for p in path.parent.iterdir()] == ["report.html"], "no temporary file left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "readable like any file the user writes"
    sources = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert len(sources) == 1 + 2 * 3 + 1 + 1  # gradient flow, gates+states per model, saturation, training
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 150
    for anchor in ("gradient-flow-plot", "gates-rnn", "states-rnn", "gates-lstm", "states-lstm", "gates-gru",
                   "states-gru", "saturation-plot", "training-plot"):
        assert f'id="{anchor}"' in page
    assert "&lt;test&gt;" in page and "<test>" not in page, "notes are escaped"


def test_report_renders_every_cells_equations_from_the_docstrings(built):
    page_text = re.sub(r"\s+", "", text_of(built[4]))
    for cell in ("rnn_tanh", "lstm", "gru"):
        lines = [line.strip() for line in equation_text(cell).split("\n") if line.startswith("    ")]
        assert len(lines) >= 3
        for line in lines:
            formula = re.split(r"\s{3,}", line)[0]  # drop the "(no projection)" note
            assert re.sub(r"[\s_]", "", formula) in page_text, formula
        assert f"gatedrnn.cells.{'rnn' if cell.startswith('rnn') else cell}" in page_text


def test_readings_are_computed_from_the_data(built):
    models, x, y, _, page = built
    captions = [text_of(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", page, re.S)]
    assert len(captions) == 9 and all(re.search(r"\d", c) for c in captions)
    lstm_gates = next(c for c in captions if c.startswith("Reading. In LSTM") and "forget gate" in c)
    assert "unit 3 " in lstm_gates and "stays near 1" in lstm_gates, lstm_gates  # the unit given f ~ 1
    flow_reading = captions[0]
    for label, model in models.items():
        ratio = gradient_flow(model, x[:256], lambda p: F.mse_loss(p, y[:256])).ratio()
        assert f"{ratio:.1e} for {label} (× " in flow_reading, flow_reading
    assert "LSTM: train_loss" in captions[-1]


def test_report_without_history_has_no_training_plot(tmp_path):
    models = dict(list(small_models(hidden=4).items())[1:2])  # the LSTM alone
    x, y = make_adding(4, 12, torch.Generator().manual_seed(1))
    page = write_explain_report(models, x, y, tmp_path / "r.html", task_name="adding", loss_fn=F.mse_loss
                                ).read_text(encoding="utf-8")
    assert 'id="training-plot"' not in page and len(re.findall(r"<img ", page)) == 4
    assert models["LSTM"].training, "the model's mode is restored"


@pytest.mark.parametrize("case", ["no models", "not a model", "wrong input rank", "target rows", "out_path is a dir",
                                  "bad loss_fn", "bad history", "no task name", "loss fails"])
def test_bad_arguments_raise_before_writing(tmp_path, case):
    models = small_models(hidden=4)
    x, y = make_adding(4, 12, torch.Generator().manual_seed(1))
    out = tmp_path / "report.html"
    out.write_text("previous report")
    kwargs = dict(task_name="adding", loss_fn=F.mse_loss)
    args = [models, x, y, out]
    expected = ValueError
    if case == "no models":
        args[0], match = {}, "non-empty mapping"
    elif case == "not a model":
        args[0], match = {"x": torch.nn.Linear(2, 2)}, "gatedrnn LSTM/GRU/RNN/SLSTM/MinGRU/MinLSTM as `.rnn`"
    elif case == "wrong input rank":
        args[1], match = x[:, :, 0], r"3-D \(B, T, I\)"
    elif case == "target rows":
        args[2], match = y[:2], "4 rows"
    elif case == "out_path is a dir":
        args[3], match = tmp_path, "directory"
    elif case == "bad loss_fn":
        kwargs["loss_fn"], match = "mse", "callable"
    elif case == "bad history":
        kwargs["history"], match = {"LSTM": [1, 2]}, "history"
    elif case == "no task name":
        kwargs["task_name"], match = "", "task_name"
    else:
        def failing_loss(prediction, target):
            raise RuntimeError("loss exploded")
        kwargs["loss_fn"], expected, match = failing_loss, RuntimeError, "exploded"
    with pytest.raises(expected, match=match):
        write_explain_report(*args, **kwargs)
    assert out.read_text() == "previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


class BidirectionalProjected(torch.nn.Module):
    """A 2-layer bidirectional LSTMP under the models convention: the report shows the last layer, forward."""

    def __init__(self):
        super().__init__()
        import gatedrnn

        self.rnn = gatedrnn.LSTM(2, 6, num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
        self.head = torch.nn.Linear(6, 1)

    def readout(self, output):
        return self.head(output[:, -1])  # (B, 1)


def test_report_handles_stacked_bidirectional_and_token_models(tmp_path):
    from gatedrnn.models import CharLM

    torch.manual_seed(0)
    x, y = make_adding(4, 10, torch.Generator().manual_seed(2))
    page = write_explain_report({"bi-LSTMP": BidirectionalProjected()}, x, y, tmp_path / "bi.html", task_name="adding",
                                loss_fn=F.mse_loss).read_text(encoding="utf-8")
    assert "Inside bi-LSTMP (LSTM)" in page and "2 × 6 × 2 directions" in page
    ids = torch.randint(0, 12, (3, 10))
    lm_loss = lambda logits, target: F.cross_entropy(logits.reshape(-1, 12), target.reshape(-1))  # noqa: E731
    page = write_explain_report({"char GRU": CharLM(12, 4, 5, cell="gru")}, ids, ids, tmp_path / "lm.html",
                                task_name="chars", loss_fn=lm_loss).read_text(encoding="utf-8")
    assert "Inside char GRU (GRU)" in page and "update gate z" in text_of(page)
    with pytest.raises(ValueError, match=r"3-D \(B, T, I\)"):
        write_explain_report({"char GRU": CharLM(12, 4, 5, cell="gru")}, ids[0], ids[0], tmp_path / "x.html",
                             task_name="chars", loss_fn=lm_loss)


def test_report_takes_packed_variable_length_input(tmp_path):
    """Classification on variable-length sequences (a PackedSequence, as the vowels task collates)."""
    from torch.nn.utils.rnn import pack_sequence

    from gatedrnn.models import SequenceClassifier

    torch.manual_seed(0)
    sequences = [torch.randn(length, 3) for length in (9, 4, 12, 6)]
    inputs = pack_sequence(sequences, enforce_sorted=False)
    targets = torch.tensor([0, 1, 1, 0])
    page = write_explain_report({"LSTM": SequenceClassifier(3, 5, 2, cell="lstm")}, inputs, targets,
                                tmp_path / "packed.html", task_name="toy", loss_fn=F.cross_entropy
                                ).read_text(encoding="utf-8")
    assert "4 samples of up to 12 steps" in page and 'id="gates-lstm"' in page
