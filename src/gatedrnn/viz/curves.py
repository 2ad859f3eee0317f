"""Line plots over time or training: gradient flow (log scale) for several models, and training curves."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from gatedrnn.inspect import GradientFlow
from gatedrnn.viz.figures import CELL_NAMES, color_for, new_figure

X_KEYS = ("step", "epoch", "iteration")


def gradient_flow_curves(
    flows: Mapping[str, GradientFlow], *, layer: int = -1, direction: int = 0, title: str = "",
) -> Figure:
    """||dL/dh_t|| against t on a log scale, one line per model (solid h, dashed c for the LSTM).

    Steps where the gradient is exactly 0 (below float range) are left out of the line.
    """
    figure = new_figure(9.0, 3.8)
    axis = figure.add_subplot()
    for index, (label, flow) in enumerate(flows.items()):
        color = color_for(flow.cell, index)
        curve = np.asarray(flow.h[layer][direction], dtype=float)
        steps = np.arange(1, len(curve) + 1)
        shown = np.where(curve > 0, curve, np.nan)
        axis.plot(steps, shown, color=color, linewidth=2.0, label=f"{label}: ‖∂L/∂h_t‖")
        if flow.c is not None:
            c_curve = np.asarray(flow.c[layer][direction], dtype=float)
            axis.plot(steps, np.where(c_curve > 0, c_curve, np.nan), color=color, linewidth=1.4,
                      linestyle="--", label=f"{label}: ‖∂L/∂c_t‖")
    axis.set_yscale("log")
    axis.set_xlabel("time step t")
    axis.set_ylabel("gradient norm (batch mean)")
    axis.grid(alpha=0.3, which="major")
    axis.legend(fontsize=8, frameon=False, loc="lower right")
    figure.suptitle(title or "How far back the loss reaches: gradient norm per step", fontsize=12)
    return figure


def _x_values(records: Sequence[Mapping[str, float]]) -> tuple[str, list[float]]:
    for key in X_KEYS:
        if records and all(key in record for record in records):
            return key, [float(record[key]) for record in records]
    return "record", [float(k) for k in range(len(records))]


def metric_names(history: Mapping[str, Sequence[Mapping[str, float]]]) -> list[str]:
    """Every numeric key in the history except the x axis keys, in first-seen order."""
    names: list[str] = []
    for records in history.values():
        for record in records:
            for key, value in record.items():
                if key not in X_KEYS and key not in names and isinstance(value, (int, float)):
                    names.append(key)
    return names


def training_curves(
    history: Mapping[str, Sequence[Mapping[str, float]]], *, cells: Mapping[str, str] | None = None,
    title: str = "",
) -> Figure:
    """One panel per metric (train_loss, val_mse, …), one line per model; log scale for positive losses
    that span more than a factor of 10. cells: label -> cell kind, for the shared colours."""
    names = metric_names(history) or ["(no metrics)"]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = new_figure(min(9.5, 3.1 * columns + 0.3), 2.9 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, name in zip(axes, names):
        values_seen: list[float] = []
        for index, (label, records) in enumerate(history.items()):
            kept = [record for record in records if isinstance(record.get(name), (int, float))]
            if not kept:
                continue
            x_key, xs = _x_values(kept)
            ys = [float(record[name]) for record in kept]
            values_seen += ys
            cell = (cells or {}).get(label) or next(
                (key for key, shown in CELL_NAMES.items() if shown.lower() == label.lower()), label)
            axis.plot(xs, ys, color=color_for(cell, index), linewidth=1.8, label=label)
            axis.set_xlabel(x_key)
        finite = [v for v in values_seen if math.isfinite(v)]
        loss_like = any(word in name for word in ("loss", "mse", "bpc", "error", "perplexity"))
        if loss_like and finite and min(finite) > 0 and max(finite) / min(finite) > 10:
            axis.set_yscale("log")
        axis.set_title(name, fontsize=10)
        axis.grid(alpha=0.3)
        if values_seen:
            axis.legend(fontsize=8, frameon=False)
    for axis in axes[len(names):]:
        axis.set_axis_off()
    figure.suptitle(title or "Training", fontsize=12)
    return figure
