"""The state trajectories of the most active units of one sample: c for the LSTM, h for the GRU and RNN."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from gatedrnn.inspect import LayerTraces
from gatedrnn.viz.figures import CELL_NAMES, MARKER_STYLE, new_figure


def state_field(cell: str) -> str:
    """The field that carries memory: the LSTM's cell state c, else h."""
    return "c" if cell == "lstm" else "h"


def most_active_units(values: np.ndarray, count: int) -> np.ndarray:
    """values (T, H) -> the `count` unit indices with the largest range over time, largest first."""
    spread = values.max(axis=0) - values.min(axis=0)  # (H,)
    return np.argsort(-spread, kind="stable")[:count]


def state_trajectories(
    traces: LayerTraces, *, sample: int = 0, layer: int = -1, direction: int = 0, top_k: int = 6,
    markers: Sequence[int] = (), title: str = "",
) -> Figure:
    """Lines of the `top_k` units whose state moves most (largest range over time), with marker steps."""
    name = state_field(traces.cell)
    values = traces.series(name, sample=sample, layer=layer, direction=direction).detach().cpu().double().numpy()
    units = most_active_units(values, top_k)
    figure = new_figure(9.0, 3.4)
    axis = figure.add_subplot()
    steps = np.arange(values.shape[0])
    for unit in units:
        axis.plot(steps, values[:, unit], linewidth=1.6, label=f"unit {unit}")
    for step in markers:
        axis.axvline(step, **MARKER_STYLE)
    axis.axhline(0.0, color="#bbbbbb", linewidth=0.8)
    axis.set_xlabel("time step")
    axis.set_ylabel("cell state c" if name == "c" else "hidden state h")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axis.grid(alpha=0.25)
    cell = CELL_NAMES.get(traces.cell, traces.cell)
    figure.suptitle(title or f"{cell}: the {len(units)} most active units of sample {sample}", fontsize=12)
    return figure
