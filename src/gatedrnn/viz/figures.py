"""Figures without pyplot: built on matplotlib's object API and rendered by Agg, so nothing needs a display
and no global backend state is touched. Shared palette and the PNG/data-URI encoder."""
from __future__ import annotations

import base64
import io

from matplotlib.figure import Figure

from gatedrnn.cells import CELL_SPECS

# One colour per cell kind, the same in every plot: the ungated baseline warm, the gated cells cool.
CELL_COLORS = {name: spec.color for name, spec in CELL_SPECS.items()}
CELL_NAMES = {name: spec.display_name for name, spec in CELL_SPECS.items()}
FALLBACK_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARKER_STYLE = dict(color="#444444", linestyle="--", linewidth=1.0, alpha=0.8)


def mark_steps(axis, steps, *, line_alpha: float = 0.45) -> None:
    """Marker steps: a light dashed line through the data and a solid triangle above the panel."""
    from matplotlib.transforms import blended_transform_factory

    on_top = blended_transform_factory(axis.transData, axis.transAxes)
    for step in steps:
        axis.axvline(step, color="#333333", linestyle="--", linewidth=0.9, alpha=line_alpha)
        axis.plot([step], [1.0], marker="v", markersize=7, color="#d62728", transform=on_top, clip_on=False,
                  zorder=5)


def new_figure(width: float, height: float) -> Figure:
    """A figure (inches) with constrained layout, white background, readable default font sizes."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained", facecolor="white")
    return figure


def color_for(cell: str, index: int) -> str:
    return CELL_COLORS.get(cell, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def figure_to_png(figure: Figure, *, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (Agg)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor=figure.get_facecolor())
    return buffer.getvalue()


def figure_to_data_uri(figure: Figure, *, dpi: int = 110) -> str:
    """The figure as a `data:image/png;base64,…` URI, for embedding in a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(figure_to_png(figure, dpi=dpi)).decode("ascii")
