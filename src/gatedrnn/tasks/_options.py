"""Typed task options: defaults, checks and one clear error per bad option, shared by every task."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class Option:
    default: Any
    kind: type  # int, float, str or bool
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[tuple] = None
    allow_none: bool = False
    help: str = ""


def resolve_options(task: str, spec: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """The task's full option dict: defaults overridden by `given`; an unknown or invalid option -> ValueError."""
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for task {task!r}: expected some of {sorted(spec)}")
    resolved = {}
    for name, option in spec.items():
        value = given.get(name, option.default)
        resolved[name] = _check(task, name, option, value)
    return resolved


def _check(task: str, name: str, option: Option, value: Any) -> Any:
    where = f"option {name!r} of task {task!r}"
    if value is None:
        if option.allow_none:
            return None
        raise ValueError(f"{where} should be a {option.kind.__name__}, got None")
    if option.kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{where} should be an int, got {type(value).__name__} ({value!r})")
        value = int(value)
    elif option.kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{where} should be a number, got {type(value).__name__} ({value!r})")
        value = float(value)
    elif option.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} should be True or False, got {value!r}")
    elif option.kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} should be a string, got {type(value).__name__} ({value!r})")
    if option.minimum is not None and value < option.minimum:
        raise ValueError(f"{where} should be >= {option.minimum}, got {value}")
    if option.maximum is not None and value > option.maximum:
        raise ValueError(f"{where} should be <= {option.maximum}, got {value}")
    if option.choices is not None and value not in option.choices:
        raise ValueError(f"{where} should be one of {list(option.choices)}, got {value!r}")
    return value


def split_seed(seed: int, split: str) -> int:
    """A separate, fixed generator seed per split, so changing one split's size never changes another's data."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed should be an int >= 0, got {seed!r}")
    return int(seed) * 7919 + {"train": 1, "val": 2, "test": 3}[split]
