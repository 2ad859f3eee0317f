"""The state trajectories of the most active units of one sample: c for the LSTM, h for the GRU and RNN."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from gatedrnn.cells import CELL_SPECS
from gatedrnn.inspect import LayerTraces
from gatedrnn.viz.figures import CELL_NAMES, mark_steps, new_figure


def state_field(cell: str) -> str:
    """The field that carries memory: the LSTM's cell state c, else h."""
    return CELL_SPECS[cell].memory_state


def held_jump(values: np.ndarray, markers: Sequence[int]) -> tuple[np.ndarray, np.ndarray, int]:
    """How each unit's state responds to the first marker m: (jump (H,) = s[m] - s[m-1], kept (H,) = the share of
    the jump still there at `end`, end) where end is the step before the next marker, or the last step."""
    first = markers[0]
    end = (markers[1] if len(markers) > 1 else values.shape[0]) - 1
    jump = values[first] - values[first - 1]  # (H,)
    safe = np.where(np.abs(jump) > 1e-12, jump, np.inf)
    kept = (values[end] - values[first - 1]) / safe  # (H,)
    return jump, kept, end


def most_active_units(values: np.ndarray, count: int, markers: Sequence[int] = ()) -> np.ndarray:
    """values (T, H) -> `count` unit indices, most active first. With a marker at step m > 0: the units whose
    jump at m is largest AND still there before the next marker (score |jump| * clip(kept, 0, 1), the units that
    write and hold what is marked); otherwise the largest range over time."""
    if markers and 0 < markers[0] < values.shape[0]:
        jump, kept, _ = held_jump(values, markers)
        score = np.abs(jump) * np.clip(kept, 0.0, 1.0)  # (H,)
    else:
        score = values.max(axis=0) - values.min(axis=0)  # (H,)
    return np.argsort(-score, kind="stable")[:count]


def state_trajectories(
    traces: LayerTraces, *, sample: int = 0, layer: int = -1, direction: int = 0, top_k: int = 6,
    markers: Sequence[int] = (), title: str = "",
) -> Figure:
    """Lines of the `top_k` most active units (see `most_active_units`), with the marker steps dashed."""
    name = state_field(traces.cell)
    values = traces.series(name, sample=sample, layer=layer, direction=direction).detach().cpu().double().numpy()
    units = most_active_units(values, top_k, markers)
    figure = new_figure(9.0, 3.4)
    axis = figure.add_subplot()
    steps = np.arange(values.shape[0])
    for unit in units:
        axis.plot(steps, values[:, unit], linewidth=1.6, label=f"unit {unit}")
    mark_steps(axis, markers, line_alpha=0.7)
    axis.axhline(0.0, color="#bbbbbb", linewidth=0.8)
    axis.set_xlabel("time step" + ("   (▼ marker steps)" if markers else ""))
    axis.set_ylabel("cell state c" if name == "c" else "hidden state h")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axis.grid(alpha=0.25)
    cell = CELL_NAMES.get(traces.cell, traces.cell)
    chosen = "that write and hold at the first marker" if markers else "that move most"
    figure.suptitle(title or f"{cell}: the {len(units)} units of sample {sample} {chosen}", fontsize=12)
    return figure
