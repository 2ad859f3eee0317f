"""Running a model over a whole split: predictions, targets and the task's metrics (plus the loss)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gatedrnn.tasks.base import Task


def forward(model: nn.Module, inputs: Any) -> Tensor:
    """model(inputs), taking the prediction when a model returns (prediction, state)."""
    output = model(inputs)
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def predict_split(model: nn.Module, task: Task, dataset: Dataset, *, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(predictions, targets) over `dataset` in order, concatenated along the batch dimension."""
    was_training = model.training
    model.eval()
    predictions, targets = [], []
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=task.collate)
        for inputs, target in loader:
            predictions.append(forward(model, inputs).detach())
            targets.append(target)
    finally:
        model.train(was_training)
    return torch.cat(predictions), torch.cat(targets)


def evaluate_split(model: nn.Module, task: Task, dataset: Dataset, *, batch_size: int = 256) -> dict[str, float]:
    """task.evaluate over the split, plus "loss" (the training loss on the whole split)."""
    predictions, targets = predict_split(model, task, dataset, batch_size=batch_size)
    metrics = dict(task.evaluate(predictions, targets))
    with torch.no_grad():
        metrics["loss"] = float(task.loss(predictions, targets))
    return metrics
