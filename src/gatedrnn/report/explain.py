"""`write_explain_report`: one self-contained HTML page that shows what a few recurrent models do inside.

For every model: its cell's equations (from `gatedrnn.cells`), the gradient flow (`gatedrnn.inspect.gradient_flow`),
gate heatmaps and state trajectories of one sample, gate saturation, training curves, each with a reading
computed from the data. Shapes: inputs (B, T, I), a PackedSequence of B sequences, or whatever the models'
`rnn_input` takes (e.g. (B, T) token ids); targets (B, …) one per sequence, or, for a PackedSequence of N frames
in all, (N, …) one per frame in the packed order (frame tagging: the chorales task).
"""
from __future__ import annotations

import os
import pathlib
import uuid
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn.cells import CELL_SPECS
from gatedrnn.engine import backend_info
from gatedrnn.inspect import GradientFlow, LayerTraces, gradient_flow, trace
from gatedrnn.layers import SLSTM, MinimalRNNBase, RecurrentBase
from gatedrnn.report import readings
from gatedrnn.report.equations import equations_html
from gatedrnn.report.page import Figure, escape, figure_html, page_html, table_html
from gatedrnn.viz import (
    figure_to_data_uri, gate_heatmaps, gate_saturation_histograms, gradient_flow_curves, state_trajectories,
    training_curves,
)
from gatedrnn.viz.figures import CELL_NAMES
from gatedrnn.viz.gates import field_style, heatmap_fields

Inputs = Union[Tensor, PackedSequence]
MAX_SAMPLES = 256  # traces and gradient flow use the first MAX_SAMPLES samples: plenty for the statistics
SAMPLE = 0  # the sample shown in the per-sample plots


def _check_arguments(models, inputs, targets, out_path, task_name, loss_fn, history, notes) -> pathlib.Path:
    """Every argument checked before anything is computed or written; returns the resolved output path."""
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models should be a non-empty mapping label -> model, got {models!r:.80}")
    for label, model in models.items():
        if not isinstance(label, str) or not label:
            raise ValueError(f"model labels should be non-empty strings, got {label!r}")
        rnn = getattr(model, "rnn", None)
        if not isinstance(model, nn.Module) or not isinstance(rnn, (RecurrentBase, SLSTM, MinimalRNNBase)) or not callable(
            getattr(model, "readout", None)
        ):
            raise ValueError(
                f"model {label!r} should be an nn.Module with a gatedrnn LSTM/GRU/RNN/SLSTM/MinGRU/MinLSTM as `.rnn` and a `.readout` "
                f"method (the gatedrnn.models convention), got {type(model).__name__}"
            )
        if not rnn.batch_first:
            raise ValueError(f"model {label!r}: its .rnn should have batch_first=True (the models convention)")
    if isinstance(inputs, PackedSequence):
        batch, steps = int(inputs.batch_sizes[0]), len(inputs.batch_sizes)
    else:
        if not isinstance(inputs, Tensor):
            raise ValueError(f"inputs should be a tensor (B, T, I) or a PackedSequence, got {type(inputs).__name__}")
        has_rnn_input = any(callable(getattr(m, "rnn_input", None)) for m in models.values())
        if inputs.dim() != 3 and not (has_rnn_input and inputs.dim() == 2 and not inputs.is_floating_point()):
            raise ValueError(
                f"inputs should be 3-D (B, T, I), got a {inputs.dim()}-D tensor of shape {tuple(inputs.shape)}")
        batch, steps = inputs.shape[0], inputs.shape[1]
    if batch < 1 or steps < 2:
        raise ValueError(f"inputs should hold at least 1 sample of at least 2 steps, got {batch} of {steps}")
    frames = int(inputs.data.shape[0]) if isinstance(inputs, PackedSequence) else None
    if not isinstance(targets, Tensor) or targets.dim() < 1 or targets.shape[0] not in (batch, frames):
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        per_frame = f" or {frames} rows (one per frame of the packed inputs, in the packed order)" if frames else ""
        raise ValueError(f"targets should be a tensor with {batch} rows (one per input){per_frame}, got {shape}")
    if not isinstance(task_name, str) or not task_name:
        raise ValueError(f"task_name should be a non-empty string, got {task_name!r}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn should be callable (prediction, targets) -> scalar, got {type(loss_fn).__name__}")
    if history is not None:
        if not isinstance(history, Mapping) or any(
            not isinstance(records, Sequence) or any(not isinstance(r, Mapping) for r in records)
            for records in history.values()
        ):
            raise ValueError("history should map a model label to a list of dicts like {'step': 1, 'train_loss': 0.2}")
    if notes is not None and (not isinstance(notes, Mapping)
                              or any(not isinstance(k, str) or not isinstance(v, str) for k, v in notes.items())):
        raise ValueError("notes should map strings to strings")
    path = pathlib.Path(out_path)
    if path.is_dir():
        raise ValueError(f"out_path should be a file path like report.html, got the directory {str(path)!r}")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"the parent of out_path is not a directory: {str(path.parent)!r}")
    return path


def _layer_input(model: nn.Module, inputs: Inputs) -> Inputs:
    """What the model feeds its recurrent layer: (B, T, I) or a PackedSequence of I features."""
    rnn_input = getattr(model, "rnn_input", None)
    x = rnn_input(inputs) if callable(rnn_input) else inputs
    data = x.data if isinstance(x, PackedSequence) else x
    if not isinstance(data, Tensor) or data.dim() != (2 if isinstance(x, PackedSequence) else 3) \
            or data.shape[-1] != model.rnn.input_size:
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(x).__name__
        raise ValueError(f"the recurrent layer's input should be (B, T, {model.rnn.input_size}), got {shape}")
    return x


def per_frame_targets(inputs: Inputs, targets: Tensor) -> bool:
    """Whether `targets` hold one row per frame of packed `inputs` (N, …) rather than one per sequence (B, …)."""
    return isinstance(inputs, PackedSequence) and targets.shape[0] == inputs.data.shape[0] \
        and targets.shape[0] != int(inputs.batch_sizes[0])


def _first_samples(inputs: Inputs, targets: Tensor, count: int) -> tuple[Inputs, Tensor]:
    """The first `count` samples of the inputs (packed stays packed) and targets (per sequence or per frame)."""
    if not isinstance(inputs, PackedSequence):
        return inputs[:count], targets[:count]
    if int(inputs.batch_sizes[0]) <= count:
        return inputs, targets
    padded, lengths = pad_packed_sequence(inputs, batch_first=True)  # (B, T, I), (B,) in the caller's order
    kept = pack_padded_sequence(padded[:count], lengths[:count], batch_first=True, enforce_sorted=False)
    if not per_frame_targets(inputs, targets):
        return kept, targets[:count]
    # frame targets follow the packed order: unpack them as the inputs, keep the same pieces, repack alike
    frame_targets = PackedSequence(targets.reshape(targets.shape[0], -1), inputs.batch_sizes,
                                   inputs.sorted_indices, inputs.unsorted_indices)
    padded_targets, _ = pad_packed_sequence(frame_targets, batch_first=True)  # (B, T, F)
    repacked = pack_padded_sequence(padded_targets[:count], lengths[:count], batch_first=True, enforce_sorted=False)
    return kept, repacked.data.reshape((-1,) + tuple(targets.shape[1:]))


def _write_atomically(path: pathlib.Path, text: str) -> None:
    """Write to a hidden sibling, then rename: readers see the old file or the new one, never half of one.
    The file gets the usual permissions (0666 minus the umask), not mkstemp's private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if temporary.exists():
            temporary.unlink()
        raise


def _backend(models) -> str:
    """The engine path the models' traces took ("fused" or "reference"; both if they differ)."""
    paths = {backend_info(dtype=m.rnn.weight_ih_l0.dtype, device=m.rnn.weight_ih_l0.device)["backend"]
             if CELL_SPECS[m.rnn.mode].fused else "reference" for m in models.values()}  # no kernel: reference
    return " and ".join(sorted(paths))


def _heatmap_title(label: str, cell: str) -> str:
    if not CELL_SPECS[cell].gated:
        return f"{label}: no gates, only the hidden state, of sample {SAMPLE}"
    return f"{label}: every gate and state of sample {SAMPLE}"


def _heatmap_alt(label: str, layer_traces: LayerTraces) -> str:
    """The heatmap's alt text: its panels by name, the cell's own gates and states only."""
    panels = ", ".join(field_style(layer_traces.cell, name)[0] for name in heatmap_fields(layer_traces))
    return f"{label} gate heatmaps, units by time; panels: {panels}"


def _model_section(label: str, cell: str, layer_traces: LayerTraces, markers: list[int]) -> str:
    """Gate heatmaps and state trajectories of one model, each with its reading."""
    anchor = "".join(ch if ch.isalnum() else "-" for ch in label.lower())
    moving = f"{label}: the units of sample {SAMPLE} " + ("that write and hold at the first marker" if markers
                                                          else "that move most")
    heatmaps = gate_heatmaps(layer_traces, sample=SAMPLE, markers=markers, title=_heatmap_title(label, cell))
    trajectories = state_trajectories(layer_traces, sample=SAMPLE, markers=markers, title=moving)
    return "".join((
        f'<h2 id="inside-{anchor}">Inside {escape(readings.named(label, cell))}</h2>',
        figure_html(Figure(f"gates-{anchor}", figure_to_data_uri(heatmaps), _heatmap_alt(label, layer_traces),
                           readings.read_gates(label, layer_traces, sample=SAMPLE, markers=markers))),
        figure_html(Figure(f"states-{anchor}", figure_to_data_uri(trajectories), f"{label} state trajectories",
                           readings.read_trajectories(label, layer_traces, sample=SAMPLE, markers=markers))),
    ))


def _summary(models, flows: Mapping[str, GradientFlow]) -> str:
    rows = []
    for label, model in models.items():
        rnn = model.rnn
        size = f"{rnn.num_layers} × {rnn.hidden_size}" + (" × 2 directions" if rnn.bidirectional else "")
        params = sum(p.numel() for p in model.parameters())
        flow = flows[label]
        rows.append([label, CELL_NAMES.get(rnn.mode, rnn.mode), size, f"{params:,}", f"{flow.loss:.4g}",
                     f"{flow.ratio():.2e}"])
    return table_html(["model", "cell", "layers × units", "parameters", "loss on these inputs",
                       "‖∂L/∂h<sub>1</sub>‖ / ‖∂L/∂h<sub>T</sub>‖"], rows, [False, False, False, True, True, True])


def write_explain_report(
    models: Mapping[str, nn.Module],
    inputs: Inputs,
    targets: Tensor,
    out_path,
    *,
    task_name: str,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    history: Optional[Mapping[str, Sequence[Mapping[str, float]]]] = None,
    notes: Optional[Mapping[str, str]] = None,
) -> pathlib.Path:
    """Write the explain report for `models` on `inputs` to `out_path` (atomically) and return its path.

    Args:
        models: label -> model with `.rnn` (a gatedrnn layer, batch_first=True) and `.readout(rnn_output)`,
            forward(x) == readout(rnn(x)[0]) (the gatedrnn.models convention; `.rnn_input` is honoured).
        inputs: (B, T, I), a PackedSequence, or what the models' `rnn_input` takes; the first MAX_SAMPLES samples
            are used. targets: (B, …), as loss_fn takes them.
        loss_fn: (prediction, targets) -> scalar; its gradient is what the gradient-flow plot follows.
        history: label -> list of per-step/epoch dicts, e.g. {"step": 100, "train_loss": 0.1, "val_mse": 0.1}.
        notes: heading -> text shown near the top (e.g. how the models were trained).
    Raises:
        ValueError before anything is written when an argument is wrong.
    """
    path = _check_arguments(models, inputs, targets, out_path, task_name, loss_fn, history, notes)
    inputs, targets = _first_samples(inputs, targets, MAX_SAMPLES)
    was_training = {label: model.training for label, model in models.items()}
    try:
        for model in models.values():
            model.eval()
        traces: dict[str, LayerTraces] = {}
        flows: dict[str, GradientFlow] = {}
        for label, model in models.items():
            with torch.no_grad():
                traces[label] = trace(model.rnn, _layer_input(model, inputs))
            flows[label] = gradient_flow(model, inputs, lambda prediction: loss_fn(prediction, targets))
        html_text = _render(models, inputs, traces, flows, task_name=task_name, history=history, notes=notes,
                            per_frame=per_frame_targets(inputs, targets))
    finally:
        for label, model in models.items():
            model.train(was_training[label])
    _write_atomically(path, html_text)
    return path


def _render(models, inputs, traces, flows, *, task_name, history, notes, per_frame=False) -> str:
    packed = isinstance(inputs, PackedSequence)
    marker_channel = None if packed else readings.find_marker_channel(inputs)
    markers = readings.marker_steps(inputs, marker_channel, SAMPLE)
    batch, steps_max = (int(inputs.batch_sizes[0]), len(inputs.batch_sizes)) if packed else inputs.shape[:2]
    body = [f'<section class="card">{_summary(models, flows)}'
            f"<p>{batch} samples of {'up to ' if packed else ''}{steps_max} steps; per-sample plots show sample {SAMPLE}. "
            + ("Stacked or bidirectional models are shown at their last layer, forward direction. "
               if any(m.rnn.num_layers > 1 or m.rnn.bidirectional for m in models.values()) else "")
            + (f"▼ marks the steps where input feature {marker_channel} is 1 (the markers). " if markers else "")
            + f"Traces came from the <code>{escape(_backend(models))}</code> engine path.</p></section>"]
    if notes:
        items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in notes.items())
        body.append(f'<section class="card"><dl class="notes">{items}</dl></section>')

    cells = list(dict.fromkeys(model.rnn.mode for model in models.values()))
    cards = "".join(f'<section class="card eqcard"><h3>{escape(CELL_NAMES.get(c, c))}</h3>'
                    f'<div class="eqbody">{equations_html(c)}</div></section>' for c in cells)
    body.append(f'<h2 id="equations">The cells</h2>{cards}')

    body.append('<h2 id="gradient-flow">Gradient flow</h2><p>For each step t, how strongly the loss responds to the '
                'state h<sub>t</sub>: ‖∂L/∂h<sub>t</sub>‖, averaged over the samples. Where it is tiny, training '
                'cannot learn what happened at step t.'
                + (' Here every frame has a target and the loss sums over all of them, so ∂L/∂h<sub>t</sub> '
                   'holds frame t\'s own prediction error as well as what reaches back from later frames; padded '
                   'steps past a sequence\'s end count 0 in the average.' if per_frame else '') + '</p>')
    body.append(figure_html(Figure(
        "gradient-flow-plot", figure_to_data_uri(gradient_flow_curves(flows)),
        "gradient norm per time step, log scale, one line per model", readings.read_gradient_flow(flows))))

    for label, model in models.items():
        body.append(_model_section(label, model.rnn.mode, traces[label], markers))

    body.append('<h2 id="saturation">Gate saturation</h2><p>Every value the holding gate took (the LSTM\'s forget '
                'gate, the GRU\'s update gate), over all samples, steps and units.</p>')
    body.append(figure_html(Figure(
        "saturation-plot", figure_to_data_uri(gate_saturation_histograms(traces)),
        "histograms of forget and update gate values", readings.read_saturation(traces))))

    if history:
        cells_by_label = {label: model.rnn.mode for label, model in models.items()}
        body.append('<h2 id="training">Training</h2>')
        body.append(figure_html(Figure(
            "training-plot", figure_to_data_uri(training_curves(history, cells=cells_by_label)),
            "training curves per metric", readings.read_training(history))))

    labels = ", ".join(models)
    return page_html(
        f"Inside the cells: {task_name}",
        f"{labels} on the {task_name} task, {'up to ' if packed else ''}{steps_max} steps: what every gate does and "
        "how far back the gradient reaches.",
        "\n".join(body),
        f"Written by gatedrnn {gatedrnn.__version__} (gatedrnn.report.write_explain_report). "
        "Every number and sentence under a plot is computed from the traces and gradients of these models.",
    )
