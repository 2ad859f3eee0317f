"""Golden structure file: the parameter names and shapes, in order, of each module configuration.

tests/golden/parameters.json is a snapshot; a change to a parameter name, shape or registration order in
gatedrnn (which would break loading checkpoints) fails here, and so does any difference from torch.nn's
module of the same configuration.

After an intended change, regenerate the snapshot from gatedrnn's modules and review the diff:

    .venv/bin/python tests/test_golden.py --regenerate
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import gatedrnn

GOLDEN_PATH = Path(__file__).parent / "golden" / "parameters.json"

# (class name, constructor keyword arguments): each layer class and cell class with varied options.
CONFIGURATIONS: list[tuple[str, dict]] = [
    ("LSTM", {"input_size": 3, "hidden_size": 5}),
    ("LSTM", {"input_size": 3, "hidden_size": 5, "num_layers": 2, "bidirectional": True}),
    ("LSTM", {"input_size": 3, "hidden_size": 5, "num_layers": 2, "bias": False}),
    ("LSTM", {"input_size": 3, "hidden_size": 5, "proj_size": 2}),
    ("LSTM", {"input_size": 3, "hidden_size": 5, "num_layers": 3, "bidirectional": True, "proj_size": 4,
              "batch_first": True, "dropout": 0.2}),
    ("LSTM", {"input_size": 4, "hidden_size": 6, "num_layers": 2, "bias": False, "proj_size": 3}),
    ("GRU", {"input_size": 3, "hidden_size": 5}),
    ("GRU", {"input_size": 3, "hidden_size": 5, "num_layers": 3, "bidirectional": True}),
    ("GRU", {"input_size": 2, "hidden_size": 4, "num_layers": 2, "bias": False, "batch_first": True}),
    ("RNN", {"input_size": 3, "hidden_size": 5}),
    ("RNN", {"input_size": 3, "hidden_size": 5, "nonlinearity": "relu", "num_layers": 2, "bidirectional": True}),
    ("RNN", {"input_size": 3, "hidden_size": 5, "bias": False}),
    ("LSTMCell", {"input_size": 3, "hidden_size": 5}),
    ("LSTMCell", {"input_size": 3, "hidden_size": 5, "bias": False}),
    ("GRUCell", {"input_size": 3, "hidden_size": 5}),
    ("GRUCell", {"input_size": 3, "hidden_size": 5, "bias": False}),
    ("RNNCell", {"input_size": 3, "hidden_size": 5, "nonlinearity": "relu"}),
    ("RNNCell", {"input_size": 3, "hidden_size": 5, "bias": False}),
]


def config_id(class_name: str, kwargs: dict) -> str:
    return class_name + "(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def structure(module: torch.nn.Module) -> list[list]:
    """[[name, [shape...]], ...] in registration order."""
    return [[name, list(p.shape)] for name, p in module.named_parameters()]


def load_golden() -> dict:
    return json.loads(GOLDEN_PATH.read_text())


@pytest.mark.parametrize("class_name,kwargs", CONFIGURATIONS, ids=[config_id(*c) for c in CONFIGURATIONS])
def test_structure_matches_golden_and_torch(class_name, kwargs):
    golden = load_golden()[config_id(class_name, kwargs)]
    ours = getattr(gatedrnn, class_name)(**kwargs)
    theirs = getattr(torch.nn, class_name)(**kwargs)
    assert structure(ours) == golden, "gatedrnn's parameters differ from the golden file"
    assert structure(theirs) == golden, "torch.nn's parameters differ from the golden file"
    assert list(ours.state_dict()) == [name for name, _ in golden]  # no buffers, no extra keys


def test_golden_file_lists_exactly_these_configurations():
    assert sorted(load_golden()) == sorted(config_id(*c) for c in CONFIGURATIONS)


def regenerate() -> None:
    snapshot = {config_id(name, kwargs): structure(getattr(gatedrnn, name)(**kwargs))
                for name, kwargs in CONFIGURATIONS}
    GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
    entries = []
    for key, params in snapshot.items():  # one parameter per line, so diffs read well
        rows = ",\n".join(f"    {json.dumps(row)}" for row in params)
        entries.append(f"  {json.dumps(key)}: [\n{rows}\n  ]")
    GOLDEN_PATH.write_text("{\n" + ",\n".join(entries) + "\n}\n")
    print(f"wrote {len(snapshot)} configurations to {GOLDEN_PATH}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: {sys.argv[0]} --regenerate")
    regenerate()
