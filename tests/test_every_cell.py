"""Every registered cell (`gatedrnn.models.CELLS`) end to end: trained by the CLI, explained, traced, its gradient
flow taken and its checkpoint rebuilt. One tiny CLI run per cell (adding problem, T = 10, H = 4, 2 steps)."""
from __future__ import annotations

import html
import math
import re

import pytest
import torch

from cli_runner import run_cli
from gatedrnn.cells import CELL_SPECS
from gatedrnn.inspect import gradient_flow, trace
from gatedrnn.models import CELLS
from gatedrnn.train.checkpoint import load_model, resolve_checkpoint

# Written out here, independently of the cell table: the gate blocks each cell has, in order (a string of
# one-letter gates, or a tuple of names).
EXPECTED_GATES = {"lstm": "ifgo", "gru": "rzn", "rnn": "", "lstm_peephole": "ifgo", "lstm_nig": "fgo",
                  "lstm_nfg": "igo", "lstm_nog": "ifg", "lstm_niaf": "ifgo", "lstm_noaf": "ifgo", "lstm_np": "ifgo",
                  "lstm_cifg": "fgo", "slstm": "ifzo", "mingru": ("z", "h_tilde"), "minlstm": ("f", "i", "h_tilde"),
                  "layernorm_lstm": "ifgo", "layernorm_gru": "rzn", "lstm_fgr": "ifgo"}
GATE_LABELS = {"i": "input gate i", "f": "forget gate f", "g": "candidate g", "o": "output gate o",
               "r": "reset gate r", "z": "update gate z", "n": "candidate n", "h_tilde": "candidate h̃"}
# A line of each cell's equations as the report shows them (tags stripped), and one it must not show.
OWN_LINE = {"lstm_cifg": ("i = 1 − f", "i = σ("), "lstm_nig": ("i = 1 (no input gate)", "i = σ("),
            "lstm_nfg": ("f = 1 (no forget gate)", "f = σ("), "lstm_nog": ("o = 1 (no output gate)", "o = σ("),
            "lstm_niaf": ("g = x g + r g (no input activation)", "g = tanh("),
            "lstm_noaf": ("h next = o ⊙ c next (no output activation)", "o ⊙ tanh("),
            "lstm_np": ("i = σ(x i + r i )", "p i ⊙ c"), "lstm_peephole": ("i = σ(x i + r i + p i ⊙ c)", "= 1 "),
            "lstm_fgr": ("i = σ(x i + r i + p i ⊙ c + q i )", "= 1 ")}
# gatedrnn.SLSTM has no zoneout, recurrent dropout or weight drop; MinGRU/MinLSTM have no W_hh and no zoneout
NO_REGULARISERS = {"slstm", "mingru", "minlstm"}
# FGR's state carries the previous gates besides h and c, which zoneout does not mix: no zoneout
NO_ZONEOUT = {"lstm_fgr"}
REGULARISERS = ("--zoneout", "0.1", "--recurrent-dropout", "0.1", "--weight-drop", "0.1")
_RUNS: dict[str, object] = {}


@pytest.fixture
def run_dir(request, tmp_path_factory, capsys):
    """The cell's run directory, trained once per cell by `gatedrnn train` (with the regularisers it takes)."""
    cell = request.param
    if cell not in _RUNS:
        out = tmp_path_factory.mktemp(cell)
        extra = () if cell in NO_REGULARISERS else REGULARISERS[2:] if cell in NO_ZONEOUT else REGULARISERS
        code, _, err = run_cli(capsys, "train", "--task", "adding", "--cell", cell, "--max-steps", "2", "-o",
                               "seq_len=10", "-o", "n_train=16", "-o", "n_val=8", "-o", "n_test=8", "--batch-size",
                               "8", "--hidden-size", "4", "--out-dir", str(out), "--overwrite", "--quiet",
                               "--no-tensorboard", *extra)
        assert code == 0, err
        _RUNS[cell] = out
    return cell, _RUNS[cell]


def _mode(model) -> str:
    return model.rnn.mode


def _inputs(task, count=3):
    return task.collate([task.splits(0)["test"][i] for i in range(count)])


def _text(page: str) -> str:
    """The page's text with tags (and embedded images) dropped and whitespace collapsed."""
    page = re.sub(r"<style>.*?</style>", " ", re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


@pytest.mark.parametrize("run_dir", list(CELLS), indirect=True)
def test_explain_shows_the_cells_own_gates_and_equations(run_dir, capsys):
    cell, out = run_dir
    report = out / "report.html"
    code, _, err = run_cli(capsys, "explain", "--checkpoint", str(out / "best"), "--out", str(report),
                           "--samples", "4")
    assert code == 0, err
    page = report.read_text()
    model, _, _ = load_model(resolve_checkpoint(out))
    spec = CELL_SPECS[_mode(model)]
    panels = re.search(r'alt="[^"]*gate heatmaps, units by time; panels: ([^"]*)"', page).group(1)
    shown = html.unescape(panels).split(", ")
    gates = EXPECTED_GATES.get(cell, "".join(spec.gate_names))
    own = dict(spec.trace_labels)
    for gate in gates:  # every gate the cell has, under its own name
        assert any(label == own.get(gate, GATE_LABELS[gate]) for label in shown), (gate, shown)
    for gate, label in GATE_LABELS.items():  # and none it lacks (CIFG: no input gate i)
        if gate not in gates and gate not in own:
            assert label not in shown, (label, shown)
    assert len([s for s in shown if "gate" in s or "candidate" in s or "input g" in s]) == len(gates), shown
    text = _text(page)
    assert spec.display_name in text
    if cell in OWN_LINE:
        present, absent = OWN_LINE[cell]
        equations = text.split("The cells", 1)[1].split("Gradient flow", 1)[0]
        assert present in equations, equations
        assert absent not in equations, equations


@pytest.mark.parametrize("run_dir", list(CELLS), indirect=True)
def test_trace_has_the_cells_trace_type_and_shapes(run_dir):
    _, out = run_dir
    model, _, task = load_model(resolve_checkpoint(out))
    spec = CELL_SPECS[_mode(model)]
    x, _ = _inputs(task)
    with torch.no_grad():
        traces = trace(model.rnn, x)
    chosen = traces.get()
    assert type(chosen) is spec.trace_type
    assert chosen._fields == tuple(spec.gate_names if spec.gated else ()) + tuple(reversed(spec.state_names))
    widths = dict(zip(spec.state_names[1:], spec.state_sizes(4)))  # FGR's a is 3H wide
    for name in chosen._fields:
        assert getattr(chosen, name).shape == (3, 10, widths.get(name, 4)), name
    with torch.no_grad():
        output, _ = model.rnn(x)
    torch.testing.assert_close(chosen.h, output)  # h is the layer's output


@pytest.mark.parametrize("run_dir", list(CELLS), indirect=True)
def test_gradient_flow_is_finite_and_ends_at_the_readouts_gradient(run_dir):
    """Finite curves of T steps (c where the cell has one); the last step's ‖∂L/∂h_T‖ equals the norm of the
    loss's gradient on the layer's last output, by autograd on the model's own forward (eval)."""
    _, out = run_dir
    model, _, task = load_model(resolve_checkpoint(out))
    model.eval()
    spec = CELL_SPECS[_mode(model)]
    x, y = _inputs(task)
    flow = gradient_flow(model, x, lambda prediction: task.loss(prediction, y))
    assert flow.cell == spec.name and len(flow.h) == 1 and flow.h[0][0].shape == (10,)
    assert all(math.isfinite(v) for v in flow.h[0][0])
    assert (flow.c is not None) == spec.has_cell_state
    if flow.c is not None:
        assert flow.c[0][0].shape == (10,) and all(math.isfinite(v) for v in flow.c[0][0])
    output, _ = model.rnn(x)
    output.retain_grad()
    loss = task.loss(model.readout(output), y)
    loss.backward()
    expected = output.grad[:, -1].double().norm(dim=1).mean().item()  # h_T reaches L only through output T
    assert flow.h[0][0][-1] == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert flow.loss == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("run_dir", list(CELLS), indirect=True)
def test_checkpoint_rebuilds_the_same_cell_and_options(run_dir):
    cell, out = run_dir
    model, config, _ = load_model(resolve_checkpoint(out))
    assert config.cell == cell
    model.eval()
    rnn = model.rnn
    zoneout = {} if cell in NO_ZONEOUT else {"zoneout": 0.1}
    wanted = CELLS[cell](2, 4, num_layers=1, dropout=0.0,
                         **({} if cell in NO_REGULARISERS else
                            {"init": {**zoneout, "recurrent_dropout": 0.1, "weight_drop": 0.1}}))
    assert type(rnn) is type(wanted) and rnn.mode == wanted.mode
    assert getattr(rnn, "variant", None) == getattr(wanted, "variant", None)
    for option in ("zoneout", "recurrent_dropout", "weight_drop"):
        assert getattr(rnn, option, None) == getattr(wanted, option, None), option
    if cell not in NO_REGULARISERS:
        assert rnn.zoneout[0] == (0.0 if cell in NO_ZONEOUT else 0.1)
        assert rnn.recurrent_dropout == 0.1 and rnn.weight_drop == 0.1
    again, _, _ = load_model(resolve_checkpoint(out))
    again.eval()
    x, _ = _inputs(load_model(resolve_checkpoint(out))[2])
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x), rtol=0, atol=0)


def test_slstm_refuses_the_regularisers_by_name(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--task", "adding", "--cell", "slstm", "--max-steps", "1", "-o",
                           "seq_len=4", "--zoneout", "0.1", "--out-dir", str(tmp_path / "s"), "--quiet")
    assert code != 0 and "no zoneout, recurrent_dropout or weight_drop" in err and "'zoneout': 0.1" in err


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("reverse", [False, True])
def test_engine_runs_the_slstm_table_entry_as_the_layers_own_scan(forget_gate, reverse):
    """`engine.run_layer` on the table's sLSTM entry (no kernel: the reference scan) equals the layer's own loop:
    output, final state and every trace field, packed rows included."""
    from gatedrnn import SLSTM
    from gatedrnn.cells.slstm import SLSTMState
    from gatedrnn.engine import run_layer
    from gatedrnn.layers._slstm_scan import scan_slstm

    torch.manual_seed(3)
    layer = SLSTM(3, 4, num_heads=2, forget_gate=forget_gate, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    state0 = tuple(torch.rand(2, 4, dtype=torch.float64) for _ in range(4))
    sizes = [2, 2, 2, 1, 1]
    own = scan_slstm(x, SLSTMState(*state0), layer.layer_weights(0), forget_gate=forget_gate, batch_sizes=sizes,
                     reverse=reverse, trace=True)
    table = run_layer(layer.mode, x, state0, layer.cell_weights(0), batch_sizes=sizes, reverse=reverse, trace=True)
    assert type(table.trace) is type(own.trace)
    for got, wanted in zip((table.y, *table.state, *table.trace), (own.y, *own.state, *own.trace)):
        torch.testing.assert_close(got, wanted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_minimal_cells_refuse_the_regularisers_by_name(cell, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--task", "adding", "--cell", cell, "--max-steps", "1", "-o",
                           "seq_len=4", "--recurrent-dropout", "0.2", "--out-dir", str(tmp_path / "m"), "--quiet")
    assert code != 0 and f"cell {cell!r} takes no regularisers" in err and "'recurrent_dropout': 0.2" in err


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_engine_runs_the_minimal_table_entries_as_the_layers_own_scan(cell, reverse, packed):
    """`engine.run_layer` on the table's minGRU/minLSTM entry (no kernel: the reference scan over the step) equals
    the layer's own scan (the paper's log-space one): output, final state and every trace field, packed rows
    included."""
    from gatedrnn import MinGRU, MinLSTM
    from gatedrnn.engine import run_layer

    torch.manual_seed(4)
    layer = (MinGRU if cell == "mingru" else MinLSTM)(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    h0 = torch.randn(2, 4, dtype=torch.float64)
    sizes = [2, 2, 2, 1, 1] if packed else None
    lengths = torch.tensor([5, 3]) if packed else None
    y, h_n, own = layer._run_direction(x, h0, *layer.layer_weights(0), lengths=lengths, reverse=reverse, trace=True,
                                       sequential=False, scan="log")
    table = run_layer(cell, x, (h0,), layer.cell_weights(0), batch_sizes=sizes, reverse=reverse, trace=True)
    assert type(table.trace) is type(own) is CELL_SPECS[cell].trace_type
    for got, wanted in zip((table.y, *table.state, *table.trace), (y, h_n, *own)):
        torch.testing.assert_close(got, wanted, rtol=1e-10, atol=1e-12)


def test_report_takes_frame_targets_of_packed_pieces(tmp_path, monkeypatch):
    """A frame tagger (the chorales task's model): targets hold one row per frame in the packed order; the report
    keeps the first pieces' frames, row for row, and explains the model."""
    from torch.nn.utils.rnn import pack_sequence

    from gatedrnn.models.sequence import FrameTagger
    from gatedrnn.report import explain
    from gatedrnn.tasks.chorales import frame_nll

    torch.manual_seed(5)
    lengths = [4, 7, 3, 6]
    pieces = [torch.rand(n, 5) for n in lengths]
    labels = [torch.rand(n, 5).round() for n in lengths]
    inputs = pack_sequence(pieces, enforce_sorted=False)
    targets = pack_sequence(labels, enforce_sorted=False).data  # (sum of lengths, 5), the packed order
    kept_inputs, kept_targets = explain._first_samples(inputs, targets, 2)
    torch.testing.assert_close(kept_inputs.data, pack_sequence(pieces[:2], enforce_sorted=False).data)
    torch.testing.assert_close(kept_targets, pack_sequence(labels[:2], enforce_sorted=False).data)

    model = FrameTagger(5, 4, 5, cell="lstm_cifg")
    monkeypatch.setattr(explain, "MAX_SAMPLES", 2)
    path = explain.write_explain_report({"CIFG": model}, inputs, targets, tmp_path / "r.html", task_name="frames",
                                        loss_fn=frame_nll)
    text = _text(path.read_text())
    with torch.no_grad():
        loss = frame_nll(model(kept_inputs), kept_targets).item()  # the first 2 pieces' frames
    assert f"{loss:.4g}" in text and "every frame has a target" in text
    with pytest.raises(ValueError, match=r"4 rows \(one per input\) or 20 rows \(one per frame"):
        explain.write_explain_report({"CIFG": model}, inputs, targets[:5], tmp_path / "s.html", task_name="frames",
                                     loss_fn=frame_nll)
