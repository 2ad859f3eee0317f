"""A character-level language model: embedding -> recurrent layer -> linear, a prediction at every step.

Shape symbols: B batch, T time steps, V vocabulary size, E embedding size, H hidden size.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from gatedrnn.layers._checks import check_size
from gatedrnn.models.base import SequenceModel


class CharLM(SequenceModel):
    """ids (B, T) int64 -> next-character logits (B, T, V).

    rnn_input(ids) = embedding(ids) (B, T, E); readout: (B, T, H) -> linear at every step (B, T, V).
    """

    def __init__(self, vocab_size: int, hidden_size: int, embedding_size: int = 32, *, cell: str = "lstm",
                 num_layers: int = 1, dropout: float = 0.0, init: dict | None = None) -> None:
        check_size("vocab_size", vocab_size, minimum=2)
        check_size("embedding_size", embedding_size, minimum=1)
        super().__init__(cell=cell, rnn_input_size=embedding_size, hidden_size=hidden_size, num_layers=num_layers,
                         dropout=dropout, init=init,
                         config=dict(vocab_size=vocab_size, hidden_size=hidden_size, embedding_size=embedding_size,
                                     cell=cell, num_layers=num_layers, dropout=dropout,
                                     **({"init": dict(init)} if init else {})))
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.head = nn.Linear(hidden_size, vocab_size)

    def rnn_input(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 2:
            got = f"{ids.dtype} of shape {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"CharLM input should be int64 character ids of shape (B, T), got {got}")
        vocab = self.config["vocab_size"]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"character ids should be in [0, {vocab}), got [{int(ids.min())}, {int(ids.max())}]")
        return self.embedding(ids)  # (B, T, E)

    def readout(self, rnn_output: Tensor) -> Tensor:
        return self.head(rnn_output)  # (B, T, V)

    def _advance(self, x: Tensor, state):
        """Feed embeddings x (B, T, E) from `state`; returns (last logits (B, V), new state).

        Uses the layer's streaming `step(x_t, state) -> (y_t, state)` when it has one, else its forward
        with the carried state; both run each character once.
        """
        step = getattr(self.rnn, "step", None)
        if callable(step):
            for t in range(x.shape[1]):
                y, state = step(x[:, t], state)  # y (B, H)
            return self.head(y), state
        output, state = self.rnn(x, state)  # (B, T, H)
        return self.head(output[:, -1]), state

    @torch.no_grad()
    def generate(self, prompt_ids: Tensor, length: int, temperature: float = 1.0,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """Sample `length` characters after the prompt: prompt (P,) or (B, P) -> ids (P + length,) or (B, P + length).

        temperature 0 takes the most likely character; otherwise softmax(logits / temperature) is sampled
        with `generator` (the same generator state gives the same text).
        """
        check_size("length", length, minimum=0)
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature should be a number >= 0, got {temperature!r}")
        squeeze = isinstance(prompt_ids, Tensor) and prompt_ids.dim() == 1
        ids = prompt_ids.unsqueeze(0) if squeeze else prompt_ids
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[1] < 1:
            raise ValueError(f"prompt_ids should be int64 ids of shape (P,) or (B, P) with P >= 1, got {ids!r}")
        was_training = self.training
        self.eval()
        try:
            logits, state = self._advance(self.rnn_input(ids), None)  # (B, V)
            pieces = [ids]
            for _ in range(length):
                if temperature == 0:
                    next_ids = logits.argmax(-1, keepdim=True)  # (B, 1)
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
                    next_ids = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
                pieces.append(next_ids)
                logits, state = self._advance(self.rnn_input(next_ids), state)
        finally:
            self.train(was_training)
        out = torch.cat(pieces, dim=1)  # (B, P + length)
        return out[0] if squeeze else out
