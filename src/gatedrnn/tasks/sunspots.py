"""Forecasting monthly sunspot numbers one month ahead (data: `gatedrnn.data.sunspots`, 1749-01..2009-06).

Fixed chronological split by target month: train 1749-1949, val 1950-1979, test 1980-2009/06.
Train targets start at month 132, so the train split is the same for every window up to 132 months.
An input is the `window` months before the target (they may reach back into the previous split: the past
is known at forecast time). Values are standardised with the train split's mean and std; the model
predicts the standardised next value.

Metric: RMSE on the test split in original units (sunspot number), headline; also MAE.
Baselines on the same targets (`baselines()`): persistence (next = last month), seasonal naive
(next = the value 132 months, one 11-year cycle, earlier) and ARIMA(p, d, q) fitted by statsmodels on the
train months only, then run one step ahead over val/test with its parameters fixed.

Shapes: inputs (B, window, 1), targets (B, 1) standardised, predictions (B, 1) standardised.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from gatedrnn.data.sunspots import MonthlySeries, load_monthly_sunspots
from gatedrnn.models import SequenceRegressor
from gatedrnn.tasks._common import check_pair, stack_pairs
from gatedrnn.tasks._options import Option, resolve_options
from gatedrnn.tasks.base import Task, TaskInfo

SEASON = 132  # months in an 11-year solar cycle
VAL_START_YEAR, TEST_START_YEAR = 1950, 1980


def _rmse(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(np.mean((prediction - target) ** 2)))


class SunspotsTask(Task):
    info = TaskInfo(
        name="sunspots",
        description="forecast next month's sunspot number from the previous months (monthly, 1749-2009)",
        kind="forecast",
        metric="rmse",
        higher_is_better=False,
        baseline="test RMSE of persistence, seasonal naive (132 months) and ARIMA(2,1,2) (statsmodels), computed "
                 "on the same months: `gatedrnn tasks sunspots --baselines`",
    )
    OPTIONS = {
        "window": Option(60, int, minimum=1, maximum=SEASON * 5, help="input months per forecast"),
        "arima_order": Option("2,1,2", str, help="ARIMA (p,d,q) of the baseline, e.g. '2,1,2'"),
        "path": Option(None, str, allow_none=True, help="read another copy of sunspots_monthly.dat"),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**resolve_options(self.info.name, self.OPTIONS, options))
        self._order = self._parse_order(self.options["arima_order"])
        self._series: MonthlySeries | None = None
        self._splits: Mapping[str, Dataset] | None = None
        self._baselines: dict[str, float] | None = None

    @staticmethod
    def _parse_order(text: str) -> tuple[int, int, int]:
        try:
            order = tuple(int(v) for v in text.split(","))
        except ValueError:
            order = ()
        if len(order) != 3 or min(order) < 0:
            raise ValueError(f"option 'arima_order' of task 'sunspots' should be 'p,d,q' (3 ints >= 0), got {text!r}")
        return order  # type: ignore[return-value]

    # ----- data -----
    @property
    def series(self) -> MonthlySeries:
        if self._series is None:
            self._series = load_monthly_sunspots(self.options["path"])
        return self._series

    def target_ranges(self) -> dict[str, range]:
        """The indices (months since 1749-01) of each split's targets."""
        n, window = len(self.series.values), self.options["window"]
        val_start = (VAL_START_YEAR - self.series.start_year) * 12
        test_start = (TEST_START_YEAR - self.series.start_year) * 12
        return {"train": range(max(window, SEASON), val_start), "val": range(val_start, test_start),
                "test": range(test_start, n)}

    @property
    def scale(self) -> tuple[float, float]:
        """(mean, std) of the train split's values, used to standardise inputs and targets."""
        train = self.series.values[: self.target_ranges()["val"].start]
        return float(train.mean()), float(train.std())

    def splits(self, seed: int) -> Mapping[str, Dataset]:
        """The same data for every seed (a real series); the seed only matters to the trainer."""
        if self._splits is None:
            mean, std = self.scale
            z = torch.tensor((self.series.values - mean) / std, dtype=torch.float32)  # (N,)
            window, out = self.options["window"], {}
            for split, targets in self.target_ranges().items():
                index = torch.tensor(list(targets))
                steps = index.unsqueeze(1) + torch.arange(-window, 0)  # (M, window)
                out[split] = TensorDataset(z[steps].unsqueeze(-1), z[index].unsqueeze(-1))  # (M, W, 1), (M, 1)
            self._splits = out
        return self._splits

    def collate(self, items: Sequence[Any]) -> tuple[Tensor, Tensor]:
        return stack_pairs(items)  # (B, window, 1), (B, 1)

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, *,
                    init: dict | None = None) -> nn.Module:
        return SequenceRegressor(1, hidden_size, 1, cell=cell, num_layers=num_layers, dropout=dropout, init=init)

    # ----- loss and metrics -----
    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        check_pair(self.info.name, prediction, target, "(B, 1)", "(B, 1)", same_shape=True)
        return F.mse_loss(prediction, target)

    def to_original_units(self, standardised: Tensor) -> Tensor:
        mean, std = self.scale
        return standardised * std + mean

    def evaluate(self, predictions: Tensor, targets: Tensor) -> dict[str, float]:
        """RMSE and MAE in sunspot numbers; predictions and targets are standardised (B, 1)."""
        check_pair(self.info.name, predictions, targets, "(N, 1)", "(N, 1)", same_shape=True)
        error = self.to_original_units(predictions.detach().double()) - self.to_original_units(targets.double())
        return {"rmse": float(error.pow(2).mean().sqrt()), "mae": float(error.abs().mean()),
                "mse_standardised": float(F.mse_loss(predictions.detach().double(), targets.double()))}

    # ----- baselines -----
    def baselines(self) -> dict[str, float]:
        """Test RMSE ("persistence_rmse", "seasonal_naive_rmse", "arima_rmse") and the same on val
        ("persistence_val_rmse", ...), in sunspot numbers, over exactly the targets of those splits."""
        if self._baselines is None:
            x, ranges = self.series.values, self.target_ranges()
            arima = self._arima_one_step(x, ranges["val"].start)
            out: dict[str, float] = {}
            for name, forecast in (("persistence", lambda t: x[t - 1]), ("seasonal_naive", lambda t: x[t - SEASON]),
                                   ("arima", lambda t: arima[t])):
                for split, suffix in (("test", "rmse"), ("val", "val_rmse")):
                    targets = np.array(ranges[split])
                    out[f"{name}_{suffix}"] = _rmse(forecast(targets), x[targets])
            self._baselines = out
        return dict(self._baselines)

    def _arima_one_step(self, x: np.ndarray, train_end: int) -> np.ndarray:
        """One-step-ahead ARIMA forecasts for every month, parameters fitted on x[:train_end] only."""
        try:
            from statsmodels.tsa.arima.model import ARIMA
        except ImportError:
            raise ImportError("the ARIMA baseline needs statsmodels: pip install 'gatedrnn[train]'") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; the fitted model is checked below
            fitted = ARIMA(x[:train_end], order=self._order).fit()
            forecasts = np.asarray(fitted.apply(x).fittedvalues)  # forecasts[t] uses x[:t]
        if not np.all(np.isfinite(forecasts[train_end:])):
            raise RuntimeError(f"ARIMA{self._order} produced non-finite forecasts on the sunspot series")
        return forecasts
