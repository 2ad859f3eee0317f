"""Short readings of each plot, computed from the traces and gradient flows (never written by hand).

Each function returns plain text (one or a few sentences) with the numbers it found; the report escapes it.
Shape symbols: B batch, T time steps, I input features, H units.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
from torch import Tensor

from gatedrnn.cells import CELL_SPECS
from gatedrnn.inspect import GradientFlow, LayerTraces
from gatedrnn.viz.figures import CELL_NAMES
from gatedrnn.viz.gates import HOLD_GATE
from gatedrnn.viz.states import held_jump, most_active_units, state_field

HOLD_THRESHOLD = 0.9


def find_marker_channel(inputs: Tensor) -> Optional[int]:
    """The input feature that looks like a marker: only 0s and 1s, 1 in at most 10% of steps, at least one 1
    per sample (the adding problem's second channel). inputs: (B, T, I). None if there is none."""
    if inputs.dim() != 3 or not inputs.is_floating_point():
        return None
    for channel in range(inputs.shape[2]):
        values = inputs[:, :, channel]  # (B, T)
        ones = values == 1
        if bool(((values == 0) | ones).all()) and bool(ones.any(dim=1).all()) and float(ones.float().mean()) <= 0.1:
            return channel
    return None


def marker_steps(inputs: Tensor, channel: Optional[int], sample: int) -> list[int]:
    """The steps where `sample`'s marker channel is 1 (0-based), or [] without a marker channel."""
    if channel is None:
        return []
    return [int(t) for t in (inputs[sample, :, channel] == 1).nonzero().flatten()]


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def _units(units: Sequence[int]) -> str:
    units = [str(u) for u in units]
    return units[0] if len(units) == 1 else ", ".join(units[:-1]) + " and " + units[-1]


def holding_units(traces: LayerTraces, *, sample: int, start: int, threshold: float = HOLD_THRESHOLD
                  ) -> list[tuple[int, float]]:
    """Units whose holding gate (LSTM f, GRU z) averages above `threshold` from step `start` to the end,
    as (unit, mean), highest first."""
    gate = HOLD_GATE.get(traces.cell)
    if gate is None:
        return []
    values = _numpy(traces.series(gate, sample=sample))[start:]  # (T - start, H)
    if values.shape[0] == 0:
        return []
    means = values.mean(axis=0)
    order = np.argsort(-means, kind="stable")
    return [(int(u), float(means[u])) for u in order if means[u] > threshold]


def _kept(traces: LayerTraces, gate: str, sample: int, start: int, unit: int) -> float:
    """Π over steps after `start` of one unit's holding gate: the share of its state that survives."""
    values = _numpy(traces.series(gate, sample=sample))[start + 1:, unit]
    return float(np.exp(np.log(np.clip(values, 1e-300, 1.0)).sum()))


def named(label: str, cell: str) -> str:
    """"LSTM" for label LSTM of an lstm, "fast (GRU)" for label fast of a gru."""
    shown = CELL_NAMES.get(cell, cell)
    return label if label.lower() == shown.lower() else f"{label} ({shown})"


def read_gates(label: str, traces: LayerTraces, *, sample: int, markers: Sequence[int]) -> str:
    """What the heatmap shows: which units hold their state from the first marker on, and who writes there."""
    steps = traces.series("h", sample=sample).shape[0]
    start = markers[0] if markers else 0
    where = f"from the first marker (step {start}) to the last step ({steps - 1})" if markers else "over the whole sequence"
    gate = HOLD_GATE.get(traces.cell)
    spec = CELL_SPECS[traces.cell]
    if gate is None and spec.gated:  # gates, but none that decays the state (Greff et al.'s NFG: f = 1)
        return _read_without_hold_gate(label, traces, sample=sample, markers=markers)
    if gate is None:
        h = _numpy(traces.series("h", sample=sample))  # (T, H)
        saturated = float((np.abs(h) > 0.95).mean())
        change = np.abs(np.diff(h, axis=0)).mean() if steps > 1 else 0.0
        return (f"{named(label, traces.cell)} has no gate: every step rewrites h from the input and the previous h "
                f"(the equations above), so nothing is held by construction. Its units change by {change:.3f} per step on average and "
                f"{saturated:.0%} of its values are saturated (|h| > 0.95).")
    gate_name = "forget gate f" if gate == "f" else "update gate z"
    held = holding_units(traces, sample=sample, start=start)
    if held:
        shown = held[:3]
        text = (f"In {named(label, traces.cell)} the {gate_name} of unit{'s' if len(shown) > 1 else ''} {_units([u for u, _ in shown])} "
                f"stays near 1 {where}, with mean{'s' if len(shown) > 1 else ''} {', '.join(f'{m:.2f}' for _, m in shown)}: "
                f"{'they hold' if len(shown) > 1 else 'it holds'} the value. "
                f"The product of unit {shown[0][0]}'s gate over those steps is {_kept(traces, gate, sample, start, shown[0][0]):.2f}: "
                f"the share of its state at step {start} still there at the end. "
                f"{len(held)} of {traces.series(gate, sample=sample).shape[1]} units {'average' if len(held) > 1 else 'averages'} "
                f"above {HOLD_THRESHOLD} there.")
    else:
        values = _numpy(traces.series(gate, sample=sample))[start:]  # (T - start, H)
        unit = int(values.mean(axis=0).argmax())
        kept = _kept(traces, gate, sample, start, unit)
        text = (f"In {named(label, traces.cell)} no unit's {gate_name} averages above {HOLD_THRESHOLD} {where}; the most "
                f"holding one is unit {unit} (mean {values[:, unit].mean():.2f}), and the product of its gate over "
                f"those steps is {kept:.1e}: that is the share of its state at step {start} still there at the end.")
    if markers and spec.write_gate is not None:  # NIG writes everything (i = 1): no write gate to read
        writes, shown = _write_values(traces, sample)  # GRU, CIFG: 1 − z, 1 − f is what is let in
        writes = writes[markers[0]]  # (H,) the write gate at the marker
        unit = int(writes.argmax())
        text += f" At the first marker unit {unit} lets the most new content in ({shown} = {writes[unit]:.2f}): it writes there."
    return text


def _write_values(traces: LayerTraces, sample: int) -> tuple[np.ndarray, str]:
    """The write gate of one sample, (T, H), as the share of new content let in (1 − z for the GRU), and its name."""
    spec = CELL_SPECS[traces.cell]
    writes = _numpy(traces.series(spec.write_gate, sample=sample))
    if spec.write_gate_inverted:
        return 1 - writes, f"1 − {spec.write_gate}"
    return writes, spec.write_gate


def _read_without_hold_gate(label: str, traces: LayerTraces, *, sample: int, markers: Sequence[int]) -> str:
    """A gated cell with nothing that decays its state: its memory only grows by what the write gate lets in."""
    spec = CELL_SPECS[traces.cell]
    name = named(label, traces.cell)
    memory = "cell state c" if spec.memory_state == "c" else "hidden state h"
    text = (f"{name} has no gate that decays its {memory} (the equations above): what is written "
            "stays until later writes outweigh it.")
    if spec.write_gate is None:
        return text
    writes, shown = _write_values(traces, sample)  # (T, H)
    text += (f" Its write gate {shown} averages {writes.mean():.2f} over this sample's steps and units; "
             f"{float((writes > HOLD_THRESHOLD).mean()):.0%} of its values are above {HOLD_THRESHOLD}.")
    if markers and markers[0] < writes.shape[0]:
        unit = int(writes[markers[0]].argmax())
        text += (f" At the first marker unit {unit} lets the most new content in ({shown} = "
                 f"{writes[markers[0], unit]:.2f}): it writes there.")
    return text


def read_trajectories(label: str, traces: LayerTraces, *, sample: int, markers: Sequence[int]) -> str:
    """What the top unit of the plot does: its jump at the first marker and how much of it is still there just
    before the next marker (or the end)."""
    name = state_field(traces.cell)
    values = _numpy(traces.series(name, sample=sample))  # (T, H)
    unit = int(most_active_units(values, 1, markers)[0])
    what = "cell state" if name == "c" else "hidden state"
    if markers and 0 < markers[0] < values.shape[0]:
        jumps, kepts, end = held_jump(values, markers)
        jump, kept = float(jumps[unit]), float(kepts[unit]) if math.isfinite(kepts[unit]) else 0.0
        verdict = ("it holds what was written" if kept >= 0.8 else
                   "part of what was written fades" if kept >= 0.3 else "what was written fades")
        return (f"In {label}, the unit that best writes and holds at the first marker (step {markers[0]}) is unit "
                f"{unit}: its {what} jumps by {jump:+.2f} there, and {kept:.0%} of that jump is still there at step "
                f"{end}, {'just before the second marker' if len(markers) > 1 else 'the end'}: {verdict}.")
    series = values[:, unit]
    t = int(np.abs(np.diff(series)).argmax()) + 1 if len(series) > 1 else 0
    return (f"In {label}, unit {unit}'s {what} (the most active) ranges from {series.min():.2f} to "
            f"{series.max():.2f}; it changes most at step {t}.")


def read_saturation(traces_by_label: Mapping[str, LayerTraces]) -> str:
    """The fractions of the holding gate near 1 and near 0, per gated model."""
    parts = []
    for label, traces in traces_by_label.items():
        gate = HOLD_GATE.get(traces.cell)
        if gate is None:
            continue
        values = _numpy(traces.steps(gate)).ravel()
        high, low = float((values > 0.9).mean()), float((values < 0.1).mean())
        name = "forget gate" if gate == "f" else "update gate"
        parts.append(f"{label}'s {name} is above 0.9 in {high:.0%} of (sample, step, unit) and below 0.1 in {low:.0%}")
    if not parts:
        return "No model here has a forget or update gate."
    return "; ".join(parts) + ". Values near 1 keep the state and pass the gradient back unchanged; values near 0 overwrite it."


def _power(value: float) -> str:
    if value <= 0 or not math.isfinite(value):
        return "0 (below floating-point range)"
    return f"{value:.1e}"


def read_gradient_flow(flows: Mapping[str, GradientFlow]) -> str:
    """||dL/dh_1|| / ||dL/dh_T|| per model, its per-step factor, and the gap between the best and the worst."""
    parts, ratios = [], {}
    for label, flow in flows.items():
        steps = len(flow.h[-1][0])
        ratio = ratios[label] = flow.ratio()
        per_step = ratio ** (1.0 / (steps - 1)) if ratio > 0 and steps > 1 else 0.0
        parts.append(f"{_power(ratio)} for {label} (× {per_step:.3f} per step)")
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text = f"From the last step back to the first, ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ is {listed}."
    finite = {k: v for k, v in ratios.items() if math.isfinite(v)}
    if len(finite) >= 2:
        best, worst = max(finite, key=finite.get), min(finite, key=finite.get)
        if finite[worst] > 0:
            text += (f" {best} passes {finite[best] / finite[worst]:.1e} times more of the signal back to step 1 than "
                     f"{worst}: that is how much better it can learn a dependency spanning the whole sequence.")
        elif finite[best] > 0:
            text += f" Nothing of {worst}'s gradient reaches step 1; {best} keeps {_power(finite[best])} of it."
    return text


def read_training(history: Mapping[str, Sequence[Mapping[str, float]]]) -> str:
    """Each model's last and best value of each metric."""
    parts = []
    for label, records in history.items():
        if not records:
            continue
        last = records[-1]
        metrics = [k for k, v in last.items() if k not in ("step", "epoch", "iteration") and isinstance(v, (int, float))]
        shown = []
        for key in metrics[:3]:
            values = [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]
            lower_better = any(word in key for word in ("loss", "mse", "bpc", "error", "perplexity"))
            best = min(values) if lower_better else max(values)
            shown.append(f"{key} {float(last[key]):.4g} (best {best:.4g})")
        parts.append(f"{label}: " + ", ".join(shown) + f" after {len(records)} records")
    return ("Last values: " + "; ".join(parts) + ".") if parts else "The history is empty."
