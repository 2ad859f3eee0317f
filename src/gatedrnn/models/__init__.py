"""Models built from gatedrnn layers; the recurrent cell is one option (`cell="lstm" | "gru" | "rnn"`).

Every model follows the convention in `gatedrnn.models.base` (`.rnn`, `.rnn_input`, `.readout`,
`.config`), so checkpoints and the explain report work with any of them.
"""
import torch
from torch import nn

from gatedrnn.models.base import SequenceModel
from gatedrnn.models.cells import CELLS, build_rnn, register_cell
from gatedrnn.models.charlm import CharLM
from gatedrnn.models.sequence import FrameTagger, SequenceClassifier, SequenceRegressor, SequenceTagger, last_steps

MODELS: dict[str, type[SequenceModel]] = {
    "SequenceRegressor": SequenceRegressor,
    "SequenceClassifier": SequenceClassifier,
    "SequenceTagger": SequenceTagger,
    "CharLM": CharLM,
    "FrameTagger": FrameTagger,
}

# torch.save(model) then torch.load(path) with the default weights_only=True: the model classes and the
# torch.nn modules they hold (their readout Linear, CharLM's Embedding) are allowed to the unpickler.
torch.serialization.add_safe_globals([*MODELS.values(), nn.Embedding, nn.Linear])


def build_model(kind: str, config: dict) -> SequenceModel:
    """Rebuild a model from its class name and `model.config` (what a checkpoint stores)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}: expected one of {sorted(MODELS)}")
    return MODELS[kind](**config)


__all__ = ["CELLS", "MODELS", "CharLM", "FrameTagger", "SequenceClassifier", "SequenceModel", "SequenceRegressor",
           "SequenceTagger", "build_model", "build_rnn", "last_steps", "register_cell"]
