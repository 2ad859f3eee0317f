"""Plots of what `gatedrnn.inspect` returns. Every function takes that data and returns a matplotlib Figure
(object API, Agg rendering: headless, no pyplot state); `figure_to_data_uri` embeds one in HTML."""
from gatedrnn.viz.curves import gradient_flow_curves, training_curves
from gatedrnn.viz.figures import figure_to_data_uri, figure_to_png
from gatedrnn.viz.gates import gate_heatmaps, gate_saturation_histograms
from gatedrnn.viz.states import most_active_units, state_trajectories

__all__ = [
    "figure_to_data_uri", "figure_to_png", "gate_heatmaps", "gate_saturation_histograms", "gradient_flow_curves",
    "most_active_units", "state_trajectories", "training_curves",
]
