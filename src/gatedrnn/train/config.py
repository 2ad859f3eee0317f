"""`TrainConfig`: every choice a training run makes, as one frozen dataclass.

A config comes from three layers, later ones winning: the dataclass defaults, a TOML or YAML file
(`load_config_file`), then command-line flags (`merge_config`). `validate` checks every field before
anything is written, so a bad value is a one-line error and never a half-created run directory.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from gatedrnn.layers._checks import REGULARISERS  # the layers' regulariser options, same names

SCHEDULES = ("cosine", "step", "none")
INITS = ("default", "chrono", "forget-bias")  # the recurrent layer's gate-bias init (gatedrnn.layers.init)
DEFAULT_FORGET_BIAS = 1.0  # Jozefowicz et al. 2015


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names the field and what came."""


@dataclass(frozen=True)
class TrainConfig:
    # what to learn
    task: str = "adding"
    task_options: Mapping[str, Any] = field(default_factory=dict)
    # the model
    cell: str = "lstm"
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    init: str = "default"  # "default" (torch's) | "chrono" | "forget-bias"; see gatedrnn.layers.init
    forget_bias: Optional[float] = None  # init="forget-bias": the forget (GRU: z) gate's bias (None: 1.0)
    chrono_max: Optional[int] = None  # init="chrono": T_max (None: the task's seq_len option)
    zoneout: float = 0.0  # the layer's regularisers (gatedrnn.engine.noise): zoneout on h (and c)
    recurrent_dropout: float = 0.0  # variational dropout on the h that W_hh reads, one mask per sequence
    weight_drop: float = 0.0  # DropConnect on W_hh, one mask per forward (AWD-LSTM)
    candidate_dropout: float = 0.0  # dropout on the candidate (LSTM g, GRU n), per step (Semeniuta et al. 2016)
    # the optimisation
    batch_size: int = 32  # the global batch: split evenly over the processes under torchrun
    epochs: int = 10
    max_steps: Optional[int] = None  # stop after this many optimizer steps (None: run all epochs)
    lr: float = 1e-3
    weight_decay: float = 0.01
    clip_norm: Optional[float] = 1.0  # None: no gradient clipping
    schedule: str = "cosine"  # "cosine" | "step" | "none"
    warmup_steps: int = 0
    step_every: int = 1000  # "step" schedule: multiply the lr by step_gamma every step_every steps
    step_gamma: float = 0.5
    patience: Optional[int] = None  # early stopping: epochs without a better val metric (None: off)
    seed: int = 0
    # where and how to record
    out_dir: str = "runs/run"
    checkpoint_every: int = 0  # also save `last/` every N optimizer steps (0: only at epoch ends)
    tensorboard: bool = True
    progress: bool = True  # progress bars (only shown on a terminal)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        return merge_config(cls(), values)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))


def merge_config(base: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """`base` with the non-None values of `overrides`; task_options are merged key by key."""
    unknown = sorted(set(overrides) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; expected some of {list(FIELD_NAMES)}")
    changes = {name: value for name, value in overrides.items() if value is not None}
    if "task_options" in changes:
        options = changes["task_options"]
        if not isinstance(options, Mapping):
            raise ConfigError(f"task_options should be a table of name = value, got {type(options).__name__}")
        changes["task_options"] = {**base.task_options, **options}
    return dataclasses.replace(base, **changes)


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) file of TrainConfig fields (task options in a
    `task_options` table). Returns the raw mapping; `merge_config` checks the keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib  # Python >= 3.11

            with path.open("rb") as handle:
                values = tomllib.load(handle)
        elif suffix in (".yaml", ".yml"):
            import yaml  # optional dependency (the `train` extra)

            with path.open("r", encoding="utf-8") as handle:
                values = yaml.safe_load(handle) or {}
        else:
            raise ConfigError(f"config file {str(path)!r} should end in .toml, .yaml or .yml, got {suffix!r}")
    except ConfigError:
        raise
    except Exception as error:  # a syntax error in the file: name the file and the parser's message
        raise ConfigError(f"cannot parse config file {str(path)!r}: {error}".replace("\n", " ")) from None
    if not isinstance(values, Mapping):
        raise ConfigError(f"config file {str(path)!r} should hold a table of settings, got {type(values).__name__}")
    return dict(values)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} should be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, minimum: float, maximum: float = float("inf"), *,
                 open_low: bool = False, open_high: bool = False) -> None:
    """A finite number in the range (inf and NaN are refused: AdamW would turn every weight into NaN)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if open_low else value >= minimum)
    ok = ok and (value < maximum if open_high else value <= maximum)
    if not ok:
        low = "> " if open_low else ">= "
        high = f" and {'<' if open_high else '<='} {maximum}" if maximum != float("inf") else ""
        raise ConfigError(f"{name} should be a number {low}{minimum}{high}, and finite, got {value!r}")


def layer_init(config: TrainConfig, task_options: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The recurrent layer's keyword options: the gate-bias ones for `config.init` and the regularisers that are
    on (None when all are torch's defaults); `task_options` are the task's resolved options, whose `seq_len` is
    chrono's default T_max."""
    options: dict[str, Any] = {}
    if config.init == "forget-bias":
        options["forget_bias"] = DEFAULT_FORGET_BIAS if config.forget_bias is None else float(config.forget_bias)
    elif config.init == "chrono":
        chrono_max = config.chrono_max if config.chrono_max is not None else task_options.get("seq_len")
        if chrono_max is None:
            raise ConfigError(f"init 'chrono' needs chrono_max (--chrono-max): task {config.task!r} has no seq_len "
                              f"option to default to")
        _check_int("chrono_max", chrono_max, 2)
        options.update(init="chrono", chrono_max=chrono_max)
    for name in REGULARISERS:
        if getattr(config, name):
            options[name] = float(getattr(config, name))
    return options or None




def validate(config: TrainConfig) -> TrainConfig:
    """Check every field's type and range (not the task name: the task registry does that)."""
    from gatedrnn.models import CELLS as registered_cells  # includes variants registered later

    if config.cell not in registered_cells:
        raise ConfigError(f"unknown cell {config.cell!r}; expected one of {sorted(registered_cells)}")
    if config.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {config.schedule!r}; expected one of {list(SCHEDULES)}")
    for name in ("hidden_size", "num_layers", "batch_size", "epochs", "step_every"):
        _check_int(name, getattr(config, name), 1)
    for name in ("warmup_steps", "checkpoint_every", "seed"):
        _check_int(name, getattr(config, name), 0)
    if config.max_steps is not None:
        _check_int("max_steps", config.max_steps, 1)
    if config.patience is not None:
        _check_int("patience", config.patience, 1)
    _check_float("lr", config.lr, 0.0, open_low=True)
    _check_float("weight_decay", config.weight_decay, 0.0)
    _check_float("dropout", config.dropout, 0.0, 1.0, open_high=True)
    for name in REGULARISERS:
        _check_float(name, getattr(config, name), 0.0, 1.0, open_high=True)
    _check_float("step_gamma", config.step_gamma, 0.0, 1.0, open_low=True)
    if config.clip_norm is not None:
        _check_float("clip_norm", config.clip_norm, 0.0, open_low=True)
    if config.init not in INITS:
        raise ConfigError(f"unknown init {config.init!r}; expected one of {list(INITS)}")
    if config.forget_bias is not None:
        value = config.forget_bias
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"forget_bias should be a finite number, got {value!r}")
        if config.init != "forget-bias":
            raise ConfigError(f"forget_bias is only used with init 'forget-bias', got init {config.init!r}")
    if config.chrono_max is not None:
        _check_int("chrono_max", config.chrono_max, 2)
        if config.init != "chrono":
            raise ConfigError(f"chrono_max is only used with init 'chrono', got init {config.init!r}")
    if not isinstance(config.task_options, Mapping):
        raise ConfigError(f"task_options should be a mapping, got {type(config.task_options).__name__}")
    if not config.out_dir:
        raise ConfigError("out_dir should be a directory path, got an empty string")
    return config
