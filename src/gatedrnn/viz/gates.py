"""Gate heatmaps (time x units) for one sample, and forget/update-gate saturation histograms.

Both read `gatedrnn.inspect.LayerTraces`; gate names and meanings are those of `gatedrnn.cells`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from gatedrnn.cells import CELL_SPECS
from gatedrnn.inspect import LayerTraces
from gatedrnn.viz.figures import CELL_NAMES, MARKER_STYLE, color_for, mark_steps, new_figure

# field -> (panel title, colour map, value range or None for symmetric around 0)
FIELD_STYLE = {
    "i": ("input gate i", "viridis", (0.0, 1.0)),
    "f": ("forget gate f", "viridis", (0.0, 1.0)),
    "g": ("candidate g", "RdBu_r", (-1.0, 1.0)),
    "o": ("output gate o", "viridis", (0.0, 1.0)),
    "c": ("cell state c", "RdBu_r", None),
    "r": ("reset gate r", "viridis", (0.0, 1.0)),
    "z": ("update gate z", "viridis", (0.0, 1.0)),
    "n": ("candidate n", "RdBu_r", (-1.0, 1.0)),
    "h": ("hidden state h", "RdBu_r", (-1.0, 1.0)),
}
# The gate whose value near 1 means "keep the state": LSTM c' = f c + …, GRU h' = … + z h.
HOLD_GATE = {name: spec.hold_gate for name, spec in CELL_SPECS.items() if spec.hold_gate}
# A field a cell names its own way (`CellSpec.trace_labels`) is styled by what it is: a gate in (0, 1), a
# candidate or h in (-1, 1), anything else (a state, a normaliser, a log-scale) symmetric around 0.
_GATE_STYLE, _BOUNDED_STYLE, _FREE_STYLE = ("viridis", (0.0, 1.0)), ("RdBu_r", (-1.0, 1.0)), ("RdBu_r", None)


def field_style(cell: str, name: str) -> tuple[str, str, tuple[float, float] | None]:
    """(panel title, colour map, value range or None) of one trace field of `cell`."""
    own = dict(CELL_SPECS[cell].trace_labels).get(name)
    if own is None:
        return FIELD_STYLE[name]
    kind = _GATE_STYLE if " gate " in f" {own} " else _BOUNDED_STYLE if own.startswith("candidate") else _FREE_STYLE
    return (own, *kind)


def heatmap_fields(traces: LayerTraces, *, layer: int = -1, direction: int = 0) -> tuple[str, ...]:
    """The trace fields `gate_heatmaps` draws, one panel each: the cell's own gates and states (a gate the cell
    does not have is not in its trace), without h where a cell state is drawn (h is read from c there)."""
    fields = traces.get(layer, direction)._fields
    if CELL_SPECS[traces.cell].has_cell_state:
        fields = tuple(name for name in fields if name != "h")  # LSTM h = o ⊙ tanh(c): shown by o and c
    return fields


def gate_heatmaps(
    traces: LayerTraces, *, sample: int = 0, layer: int = -1, direction: int = 0,
    max_units: int = 32, markers: Sequence[int] = (), title: str = "",
) -> Figure:
    """One panel per trace field (`heatmap_fields`: LSTM i, f, g, o, c; CIFG f, g, o, c; GRU r, z, n, h; RNN h;
    sLSTM i, f, z, o, m, n, c), units on y, time on x.

    markers: steps (0-based) to draw as dashed vertical lines, e.g. where the input marks a value.
    Shows at most `max_units` units (the first ones).
    """
    fields = heatmap_fields(traces, layer=layer, direction=direction)
    figure = new_figure(9.0, 0.9 + 1.3 * len(fields))
    axes = figure.subplots(len(fields), 1, sharex=True, squeeze=False)[:, 0]
    for axis, name in zip(axes, fields):
        values = traces.series(name, sample=sample, layer=layer, direction=direction)[:, :max_units]
        values = values.detach().cpu().double().numpy().T  # (units, T)
        label, cmap, value_range = field_style(traces.cell, name)
        if value_range is None:  # symmetric, robust: one runaway unit should not wash out the rest
            bound = float(np.percentile(np.abs(values), 98)) or float(np.abs(values).max()) or 1.0
            value_range = (-bound, bound)
        image = axis.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap,
                            vmin=value_range[0], vmax=value_range[1], origin="lower")
        axis.set_ylabel("unit")
        axis.set_title(label, loc="left", fontsize=10)
        figure.colorbar(image, ax=axis, pad=0.01, fraction=0.03)
        mark_steps(axis, markers)
    axes[-1].set_xlabel("time step" + ("   (▼ marker steps)" if markers else ""))
    heading = title or f"{CELL_NAMES.get(traces.cell, traces.cell)}: every gate of sample {sample}"
    figure.suptitle(heading, fontsize=12)
    return figure


def gate_saturation_histograms(
    traces_by_label: Mapping[str, LayerTraces], *, layer: int = -1, direction: int = 0,
    low: float = 0.1, high: float = 0.9,
) -> Figure:
    """Histogram of the holding gate (LSTM forget f, GRU update z) over every sample, real step and unit.

    A gate near 1 keeps the state (and passes the gradient back); near 0 it overwrites. The title of each
    panel gives the fractions below `low` and above `high`. Models without such a gate (RNN) are left out.
    """
    gated = [label for label, traces in traces_by_label.items() if traces.cell in HOLD_GATE]
    figure = new_figure(max(4.5, 4.2 * len(gated)), 3.3)
    if not gated:
        axis = figure.add_subplot()
        axis.text(0.5, 0.5, "no model here has a forget or update gate:\nan RNN overwrites its state every step",
                  ha="center", va="center", fontsize=11, transform=axis.transAxes)
        axis.set_axis_off()
        return figure
    axes = figure.subplots(1, len(gated), squeeze=False)[0]
    for index, (axis, label) in enumerate(zip(axes, gated)):
        traces = traces_by_label[label]
        gate = HOLD_GATE[traces.cell]
        values = traces.steps(gate, layer=layer, direction=direction).detach().cpu().double().numpy().ravel()
        weights = np.full(values.shape, 100.0 / max(1, values.size))  # bars in percent of all values
        axis.hist(values, bins=40, range=(0.0, 1.0), weights=weights, color=color_for(traces.cell, index), alpha=0.85)
        for edge in (low, high):
            axis.axvline(edge, **MARKER_STYLE)
        below, above = float((values < low).mean()), float((values > high).mean())
        axis.set_title(f"{label}: {field_style(traces.cell, gate)[0]}\n{below:.0%} below {low}, {above:.0%} above {high}",
                       fontsize=10)
        axis.set_xlabel("gate value")
        axis.set_ylabel("% of (sample, step, unit)")
        axis.grid(alpha=0.25)
    figure.suptitle("How often the gate holds (near 1) or overwrites (near 0)", fontsize=12)
    return figure
