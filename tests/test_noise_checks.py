"""Checks of the regularisers' inputs: a zoneout rate for a cell state the cell lacks, and `engine.run_layer`'s
noise shapes (`gatedrnn.engine.noise`), refused on both paths before any step runs."""
from __future__ import annotations

import re

import pytest
import torch

import gatedrnn
from gatedrnn import engine
from gatedrnn.cells import CELL_SPECS, LayerWeights
from gatedrnn.engine.noise import LayerNoise

F64 = torch.float64
T, B, I, H, P = 3, 2, 5, 4, 3  # P: an LSTM projection, so P and H differ in every shape


@pytest.mark.parametrize("layer_class,name", [(gatedrnn.GRU, "GRU"), (gatedrnn.RNN, "RNN")])
def test_zoneout_rate_for_a_missing_cell_state_is_refused(layer_class, name):
    with pytest.raises(ValueError, match=re.escape(f"{name} has no cell state c")) as error:
        layer_class(3, 4, zoneout=(0.1, 0.5))
    assert "zoneout=(0.1, 0.5)" in str(error.value)
    assert layer_class(3, 4, zoneout=0.3).zoneout == (0.3, 0.0)  # a float p: h's rate (there is no c)
    assert layer_class(3, 4, zoneout=(0.3, 0.0)).zoneout == (0.3, 0.0)
    assert gatedrnn.LSTM(3, 4, zoneout=(0.1, 0.5)).zoneout == (0.1, 0.5)  # an LSTM has c
    assert gatedrnn.LSTM(3, 4, zoneout=0.2).zoneout == (0.2, 0.2)


def _inputs(cell: str, proj: bool):
    torch.manual_seed(0)
    spec = CELL_SPECS[cell]
    out = P if proj else H
    g = spec.gate_count
    weights = LayerWeights(torch.randn(g * H, I, dtype=F64), torch.randn(g * H, out, dtype=F64),
                           torch.randn(g * H, dtype=F64), torch.randn(g * H, dtype=F64),
                           torch.randn(P, H, dtype=F64) if proj else None)
    x = torch.randn(T, B, I, dtype=F64)
    state0 = (torch.randn(B, out, dtype=F64),) + ((torch.randn(B, H, dtype=F64),) if spec.has_cell_state else ())
    return x, state0, weights


WRONG = [  # (cell, projection, noise, expected shape, got shape)
    ("gru", False, LayerNoise(None, torch.ones(H, dtype=F64)), "recurrent_mask", (B, H), (H,)),
    ("lstm", True, LayerNoise(None, torch.ones(B, H, dtype=F64)), "recurrent_mask", (B, P), (B, H)),
    ("lstm", True, LayerNoise(torch.zeros(T, B, P, dtype=F64)), "zoneout", (T, B, P + H), (T, B, P)),
    ("gru", False, LayerNoise(torch.zeros(T, 1, H, dtype=F64)), "zoneout", (T, B, H), (T, 1, H)),
    ("lstm", True, LayerNoise(None, None, torch.ones(T, B, P, dtype=F64)), "candidate_mask", (T, B, H), (T, B, P)),
    ("gru", False, LayerNoise(None, None, torch.ones(B, H, dtype=F64)), "candidate_mask", (T, B, H), (B, H)),
]


@pytest.mark.parametrize("backend", ["", "reference"])
@pytest.mark.parametrize("cell,proj,noise,name,expected,got", WRONG)
def test_run_layer_refuses_wrong_noise_shapes_on_both_paths(cell, proj, noise, name, expected, got, backend,
                                                            monkeypatch):
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    x, state0, weights = _inputs(cell, proj)
    message = f"{cell}: noise.{name} should have shape {expected}, got {got}"
    with pytest.raises(ValueError, match=re.escape(message)):
        engine.run_layer(cell, x, state0, weights, noise=noise)


@pytest.mark.parametrize("backend", ["", "reference"])
def test_run_layer_takes_the_documented_shapes_and_refuses_a_candidate_the_cell_lacks(backend, monkeypatch):
    monkeypatch.setenv("GATEDRNN_BACKEND", backend)
    x, state0, weights = _inputs("lstm", True)
    noise = LayerNoise(torch.full((T, B, P + H), 0.5, dtype=F64), torch.full((B, P), 2.0, dtype=F64),
                       torch.full((T, B, H), 2.0, dtype=F64))
    result = engine.run_layer("lstm", x, state0, weights, noise=noise)
    assert result.y.shape == (T, B, P) and torch.isfinite(result.y).all()
    x, state0, weights = _inputs("rnn_tanh", False)
    with pytest.raises(ValueError, match="rnn_tanh: the cell has no candidate to drop out"):
        engine.run_layer("rnn_tanh", x, state0, weights, noise=LayerNoise(None, None, torch.ones(T, B, H, dtype=F64)))
