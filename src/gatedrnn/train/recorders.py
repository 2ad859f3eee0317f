"""Where a run's numbers go: CSV files (one row per step, one per epoch), TensorBoard, a progress bar.

Only rank 0 records; the other ranks get `NullRecorder`. On resume the CSV files are cut back to the
checkpoint's position, so a killed-and-resumed run's files equal an uninterrupted run's.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

STEP_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm")


def _format(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class CSVLog:
    """An append-only CSV file whose header is fixed by the first row; flushed after every row."""

    def __init__(self, path: Path, *, keep: Optional[Callable[[dict[str, str]], bool]] = None) -> None:
        self.path = path
        self.fields: Optional[list[str]] = None
        kept: list[dict[str, str]] = []
        if keep is not None and path.exists():
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                self.fields = list(reader.fieldnames or []) or None
                kept = [row for row in reader if keep(row)]
        self._handle = path.open("w", newline="")
        self._writer: Optional[csv.DictWriter] = None
        if self.fields:
            self._start(self.fields)
            for row in kept:
                self._writer.writerow(row)
            self._handle.flush()

    def _start(self, fields: list[str]) -> None:
        self.fields = fields
        self._writer = csv.DictWriter(self._handle, fieldnames=fields, extrasaction="ignore")
        self._writer.writeheader()

    def write(self, row: Mapping[str, Any]) -> None:
        if self._writer is None:
            self._start(list(row))
        self._writer.writerow({k: _format(v) for k, v in row.items()})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class NullRecorder:
    """What ranks other than 0 (and dry runs) record: nothing."""

    def step(self, row: Mapping[str, Any]) -> None: ...
    def epoch(self, row: Mapping[str, Any]) -> None: ...
    def progress_start(self, description: str, total: int, completed: int) -> None: ...
    def progress_update(self, completed: int, loss: float) -> None: ...
    def progress_stop(self) -> None: ...
    def close(self) -> None: ...


class RunRecorder(NullRecorder):
    """steps.csv, epochs.csv and tensorboard/ under the run directory, plus a rich progress bar."""

    def __init__(self, out_dir: Path, *, resume_step: Optional[int], resume_epoch: Optional[int],
                 tensorboard: bool, progress: bool) -> None:
        resuming = resume_step is not None
        self.steps = CSVLog(out_dir / "steps.csv",
                            keep=(lambda row: int(row["step"]) <= resume_step) if resuming else None)
        self.epochs = CSVLog(out_dir / "epochs.csv",
                             keep=(lambda row: int(row["epoch"]) <= resume_epoch) if resuming else None)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"),
                                        purge_step=(resume_step + 1) if resuming else None)
        self.show_progress = progress and sys.stderr.isatty() and not os.environ.get("GATEDRNN_NO_PROGRESS")
        self._progress = None
        self._bar = None

    def step(self, row: Mapping[str, Any]) -> None:
        self.steps.write(row)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", row["loss"], row["step"])
            self.writer.add_scalar("train/lr", row["lr"], row["step"])
            self.writer.add_scalar("train/grad_norm", row["grad_norm"], row["step"])

    def epoch(self, row: Mapping[str, Any]) -> None:
        self.epochs.write(row)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, row["step"])
            self.writer.flush()

    # ----- progress bar (stderr, only on a terminal) -----
    def progress_start(self, description: str, total: int, completed: int) -> None:
        if not self.show_progress:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("loss {task.fields[loss]}"),
            console=Console(stderr=True), transient=False,
        )
        self._progress.start()
        self._bar = self._progress.add_task(description, total=total, completed=completed, loss="-")

    def progress_update(self, completed: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._bar, completed=completed, loss=f"{loss:.4g}")

    def progress_stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        self.progress_stop()
        self.steps.close()
        self.epochs.close()
        if self.writer is not None:
            self.writer.close()
