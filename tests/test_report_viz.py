"""The plots and readings read the inspect data faithfully (checked on the figures' own data, not by eye)."""
from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

import gatedrnn
from gatedrnn.inspect import gradient_flow, trace
from gatedrnn.report import readings
from gatedrnn.tasks.adding import make_adding
from gatedrnn.viz import (
    figure_to_data_uri, gate_heatmaps, gradient_flow_curves, most_active_units, state_trajectories, training_curves,
)


def test_gate_heatmaps_show_each_field_of_the_chosen_sample():
    torch.manual_seed(0)
    layer = gatedrnn.LSTM(2, 5, batch_first=True)
    with torch.no_grad():
        traces = trace(layer, torch.randn(3, 7, 2))
    figure = gate_heatmaps(traces, sample=2, max_units=4, markers=[3])
    panels = [axis for axis in figure.axes if axis.images and axis.get_title(loc="left")]
    assert [axis.get_title(loc="left") for axis in panels] == ["input gate i", "forget gate f", "candidate g",
                                                               "output gate o", "cell state c"]
    for axis, name in zip(panels, "ifgoc"):
        shown = np.asarray(axis.images[0].get_array())
        np.testing.assert_allclose(shown, traces.series(name, sample=2)[:, :4].double().numpy().T)


def test_gradient_flow_curves_plot_the_flow_on_a_log_scale():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 3)
    flows = {"GRU": gradient_flow(gatedrnn.GRU(3, 4, batch_first=True), x, lambda y: y[:, -1].sum()),
             "LSTM": gradient_flow(gatedrnn.LSTM(3, 4, batch_first=True), x, lambda y: y[:, -1].sum())}
    axis = gradient_flow_curves(flows).axes[0]
    assert axis.get_yscale() == "log"
    lines = {line.get_label(): line for line in axis.get_lines()}
    np.testing.assert_allclose(lines["GRU: ‖∂L/∂h_t‖"].get_ydata(), flows["GRU"].h[0][0])
    np.testing.assert_allclose(lines["LSTM: ‖∂L/∂c_t‖"].get_ydata(), flows["LSTM"].c[0][0])
    np.testing.assert_array_equal(lines["GRU: ‖∂L/∂h_t‖"].get_xdata(), np.arange(1, 10))


def test_training_curves_one_panel_per_metric_log_only_for_losses():
    history = {"LSTM": [{"step": s, "train_loss": 10.0 ** -s, "val_accuracy": 0.05 * (s + 1)} for s in range(4)]}
    figure = training_curves(history)
    titled = {axis.get_title(): axis for axis in figure.axes if axis.get_title()}
    assert set(titled) == {"train_loss", "val_accuracy"}
    assert titled["train_loss"].get_yscale() == "log" and titled["val_accuracy"].get_yscale() == "linear"
    np.testing.assert_allclose(titled["train_loss"].get_lines()[0].get_ydata(), [1, 0.1, 0.01, 0.001])


def test_figure_encodes_as_a_png_data_uri():
    uri = figure_to_data_uri(training_curves({"A": [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]}))
    assert uri.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).format == "PNG"


def test_state_trajectories_pick_the_units_that_write_and_hold():
    values = np.zeros((10, 3))
    values[3:, 0] = 1.0  # writes 1 at the marker (step 3) and holds it
    values[3, 1], values[4:, 1] = 2.0, 0.0  # writes 2 and forgets at once
    values[:, 2] = np.linspace(0, 5, 10)  # drifts, no jump
    assert list(most_active_units(values, 3, markers=[3, 8])) == [0, 2, 1]
    jump, kept, end = readings.held_jump(values, [3, 8])
    assert end == 7 and jump[0] == 1.0 and kept[0] == 1.0 and kept[1] == 0.0
    torch.manual_seed(0)
    with torch.no_grad():
        traces = trace(gatedrnn.GRU(2, 4, batch_first=True), torch.randn(1, 6, 2))
    figure = state_trajectories(traces, top_k=2)
    assert len(figure.axes[0].get_lines()) == 2 + 1  # two units and the zero line


def test_marker_channel_is_found_only_where_there_is_one():
    x, _ = make_adding(8, 30, torch.Generator().manual_seed(0))
    assert readings.find_marker_channel(x) == 1
    assert readings.marker_steps(x, 1, 0) == x[0, :, 1].nonzero().flatten().tolist()
    assert readings.find_marker_channel(torch.rand(8, 30, 2)) is None
