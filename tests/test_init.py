"""Gate-bias init options (`gatedrnn.layers.init`): forget-gate bias and chrono init on LSTM and GRU.

The biases equal the formulas, the rest stays torch.nn's init, the default is torch.nn's exactly,
reset_parameters re-applies, bad options raise, the CLI flag reaches the checkpoint, and a chrono LSTM's
forget gates start open.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gatedrnn.cells import CELL_SPECS
from gatedrnn.inspect import trace
from gatedrnn.layers import GRU, LSTM, RNN
from gatedrnn.models import build_rnn

H = 8
LAYERS = {"lstm": LSTM, "gru": GRU}
TORCH = {"lstm": nn.LSTM, "gru": nn.GRU}


def block(mode: str, gate: str, hidden: int = H) -> slice:
    k = CELL_SPECS[mode].gate_names.index(gate)
    return slice(k * hidden, (k + 1) * hidden)


def pairs(layer):
    """(name suffix, b_ih, b_hh) of every layer and direction."""
    out = []
    for k in range(layer.num_layers):
        for suffix in (f"_l{k}", f"_l{k}_reverse")[: layer.num_directions]:
            out.append((suffix, getattr(layer, "bias_ih" + suffix), getattr(layer, "bias_hh" + suffix)))
    return out


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_default_equals_torch_for_the_same_seed(mode):
    torch.manual_seed(3)
    ours = LAYERS[mode](5, H, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    theirs = TORCH[mode](5, H, num_layers=2, bidirectional=True)
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("value", [1.0, -2.5])
def test_forget_bias_sets_the_effective_hold_gate_bias(mode, value):
    torch.manual_seed(0)
    reference = TORCH[mode](5, H, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    layer = LAYERS[mode](5, H, num_layers=2, bidirectional=True, forget_bias=value)
    hold = block(mode, CELL_SPECS[mode].hold_gate)
    for suffix, b_ih, b_hh in pairs(layer):
        torch.testing.assert_close(b_ih[hold] + b_hh[hold], torch.full((H,), value), rtol=0, atol=0)
        assert torch.all(b_hh[hold] == 0)
        others = torch.ones(CELL_SPECS[mode].gate_count * H, dtype=torch.bool)
        others[hold] = False
        torch.testing.assert_close(b_ih[others], getattr(reference, "bias_ih" + suffix)[others], rtol=0, atol=0)
        torch.testing.assert_close(b_hh[others], getattr(reference, "bias_hh" + suffix)[others], rtol=0, atol=0)
    for name, value in reference.state_dict().items():  # weights untouched, same keys and shapes
        assert layer.state_dict()[name].shape == value.shape
        if name.startswith("weight"):
            torch.testing.assert_close(layer.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_chrono_biases_follow_the_formula(mode):
    T_max = 50
    torch.manual_seed(0)
    reference = TORCH[mode](5, H, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    layer = LAYERS[mode](5, H, num_layers=2, bidirectional=True, init="chrono", chrono_max=T_max)
    spec = CELL_SPECS[mode]
    hold = block(mode, spec.hold_gate)
    changed = torch.zeros(spec.gate_count * H, dtype=torch.bool)
    changed[hold] = True
    drawn = []
    for suffix, b_ih, b_hh in pairs(layer):
        b_hold = b_ih[hold] + b_hh[hold]
        assert torch.all(b_hh[hold] == 0)
        assert torch.all(b_hold >= 0) and torch.all(b_hold <= math.log(T_max - 1) + 1e-6), b_hold
        assert len(set(b_hold.tolist())) == H  # every unit draws its own timescale
        if mode == "lstm":  # b_i = -b_f
            write = block(mode, "i")
            torch.testing.assert_close(b_ih[write] + b_hh[write], -b_hold, rtol=0, atol=0)
            assert torch.all(b_hh[write] == 0)
            changed[write] = True
        # GRU: only z changes (r and n keep torch's init); LSTM: g and o keep it
        torch.testing.assert_close(b_ih[~changed], getattr(reference, "bias_ih" + suffix)[~changed], rtol=0, atol=0)
        torch.testing.assert_close(b_hh[~changed], getattr(reference, "bias_hh" + suffix)[~changed], rtol=0, atol=0)
        drawn.append(b_hold)
    assert not torch.equal(drawn[0], drawn[1])  # each layer and direction draws anew
    torch.manual_seed(0)
    again = LAYERS[mode](5, H, num_layers=2, bidirectional=True, init="chrono", chrono_max=T_max)
    for name, value in layer.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value, rtol=0, atol=0)


def test_gru_chrono_keeps_the_state_at_init():
    """torch's GRU is h' = (1 - z) * n + z * h: b_z = +log(u) >= 0 puts z above 1/2 (holding), never below."""
    torch.manual_seed(0)
    layer = GRU(3, H, init="chrono", chrono_max=200)
    with torch.no_grad():
        z = trace(layer, torch.randn(20, 4, 3)).steps("z")  # (steps, H)
    assert z.mean() > 0.7, z.mean()


def test_chrono_lstm_forget_gates_start_open_default_ones_do_not():
    x = torch.randn(50, 16, 4)  # (L, N, H_in)
    torch.manual_seed(1)
    default = LSTM(4, 32)
    torch.manual_seed(1)
    chrono = LSTM(4, 32, init="chrono", chrono_max=100)
    with torch.no_grad():
        f_default = trace(default, x).steps("f").mean().item()
        f_chrono = trace(chrono, x).steps("f").mean().item()
    assert abs(f_default - 0.5) < 0.1, f_default
    assert f_chrono > 0.7, f_chrono


@pytest.mark.parametrize("options", [{"forget_bias": 1.0}, {"init": "chrono", "chrono_max": 10}])
def test_reset_parameters_reapplies_the_options(options):
    layer = LSTM(3, H, **options)
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(7.0)
    layer.reset_parameters()
    f = block("lstm", "f")
    b = layer.bias_ih_l0[f] + layer.bias_hh_l0[f]
    if "forget_bias" in options:
        torch.testing.assert_close(b, torch.ones(H), rtol=0, atol=0)
    else:
        assert torch.all((b >= 0) & (b <= math.log(9) + 1e-6))
    assert torch.all(layer.weight_ih_l0.abs() <= 1 / math.sqrt(H))


def test_extra_repr_shows_non_default_options():
    assert repr(LSTM(3, 4)) == "LSTM(3, 4)"
    assert "forget_bias=1.0" in repr(GRU(3, 4, forget_bias=1.0))
    assert "init='chrono', chrono_max=20" in repr(LSTM(3, 4, init="chrono", chrono_max=20))


@pytest.mark.parametrize("kwargs, error, expected", [
    ({"init": "glorot"}, ValueError, "init should be one of ['default', 'chrono']"),
    ({"init": "chrono"}, ValueError, "expected an integer >= 2, got None"),
    ({"init": "chrono", "chrono_max": 1}, ValueError, "chrono_max should be an integer >= 2, got 1"),
    ({"init": "chrono", "chrono_max": 10.0}, TypeError, "chrono_max should be an integer >= 2, got float"),
    ({"chrono_max": 10}, ValueError, "only used with init='chrono'"),
    ({"forget_bias": "1"}, TypeError, "forget_bias should be a float or None, got str"),
    ({"forget_bias": float("nan")}, ValueError, "forget_bias should be a finite number"),
    ({"forget_bias": 1.0, "init": "chrono", "chrono_max": 5}, ValueError, "expected one of them"),
    ({"forget_bias": 1.0, "bias": False}, ValueError, "expected bias=True, got bias=False"),
])
def test_invalid_options_raise(kwargs, error, expected):
    with pytest.raises(error) as raised:
        LSTM(3, 4, **kwargs)
    assert expected in str(raised.value)


def test_rnn_has_no_options_and_build_rnn_refuses_them_for_it():
    with pytest.raises(TypeError):
        RNN(3, 4, forget_bias=1.0)
    with pytest.raises(ValueError, match="no gates"):
        build_rnn("rnn", 3, 4, init={"forget_bias": 1.0})
    layer = build_rnn("gru", 3, 4, init={"init": "chrono", "chrono_max": 30})
    assert layer.init == "chrono" and layer.chrono_max == 30 and layer.batch_first


def test_old_config_without_the_fields_loads_with_the_default():
    from gatedrnn.train import TrainConfig

    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("init", "forget_bias", "chrono_max")}
    config = TrainConfig.from_dict(old)
    assert (config.init, config.forget_bias, config.chrono_max) == ("default", None, None)


SMALL = ["--task", "adding", "-o", "seq_len=12", "-o", "n_train=32", "-o", "n_val=16", "-o", "n_test=16",
         "--hidden-size", "4", "--batch-size", "16", "--epochs", "1", "--max-steps", "1", "--lr", "1e-9",
         "--quiet", "--no-tensorboard", "--threads", "1"]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    from gatedrnn.cli import main

    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_cli_chrono_reaches_the_checkpoint(tmp_path, capsys):
    from gatedrnn.train.checkpoint import load_model

    code, err = run_cli(capsys, "train", *SMALL, "--init", "chrono", "--out-dir", str(tmp_path / "run"))
    assert code == 0, err
    model, config, _ = load_model(tmp_path / "run")
    assert (config.init, config.chrono_max) == ("chrono", None)
    assert model.rnn.init == "chrono" and model.rnn.chrono_max == 12  # the task's seq_len
    f, i = block("lstm", "f", 4), block("lstm", "i", 4)
    b_f = model.rnn.bias_ih_l0[f] + model.rnn.bias_hh_l0[f]
    b_i = model.rnn.bias_ih_l0[i] + model.rnn.bias_hh_l0[i]
    # one step at lr 1e-9 moves the biases by ~1e-9: still the formula's values
    assert torch.all(b_f > -1e-6) and torch.all(b_f < math.log(11) + 1e-6), b_f
    torch.testing.assert_close(b_i, -b_f, rtol=0, atol=1e-6)


def test_cli_forget_bias_value_reaches_the_checkpoint(tmp_path, capsys):
    from gatedrnn.train.checkpoint import load_model

    code, err = run_cli(capsys, "train", *SMALL, "--cell", "gru", "--init", "forget-bias", "--forget-bias", "2",
                        "--out-dir", str(tmp_path / "run"))
    assert code == 0, err
    model, config, _ = load_model(tmp_path / "run")
    z = block("gru", "z", 4)
    torch.testing.assert_close(model.rnn.bias_ih_l0[z] + model.rnn.bias_hh_l0[z], torch.full((4,), 2.0),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("argv, expected", [
    (["--init", "glorot"], "unknown init 'glorot'; expected one of ['default', 'chrono', 'forget-bias']"),
    (["--init", "chrono", "--chrono-max", "1"], "chrono_max should be an integer >= 2, got 1"),
    (["--chrono-max", "10"], "chrono_max is only used with init 'chrono'"),
    (["--forget-bias", "2"], "forget_bias is only used with init 'forget-bias'"),
    (["--init", "forget-bias", "--forget-bias", "inf"], "forget_bias should be a finite number, got inf"),
    (["--init", "chrono", "--cell", "rnn"], "no gates"),
])
def test_cli_bad_init_is_a_one_line_error(tmp_path, capsys, argv, expected):
    code, err = run_cli(capsys, "train", *SMALL, *argv, "--out-dir", str(tmp_path / "run"))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gatedrnn: error: ") and expected in lines[0], err
    assert not (tmp_path / "run").exists()


def test_a_model_with_init_rebuilds_from_its_config():
    from gatedrnn.models import SequenceRegressor, build_model

    model = SequenceRegressor(2, 4, cell="gru", init={"init": "chrono", "chrono_max": 30})
    assert model.config["init"] == {"init": "chrono", "chrono_max": 30}
    again = build_model("SequenceRegressor", model.config)
    assert (again.rnn.init, again.rnn.chrono_max) == ("chrono", 30)
    assert "init" not in SequenceRegressor(2, 4).config  # default models keep their old config
