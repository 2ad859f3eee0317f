"""The tasks gatedrnn trains on, by name. Each implements `gatedrnn.tasks.base.Task`.

    get_task("adding", seq_len=200) -> an AddingTask
"""
from __future__ import annotations

from typing import Any

from gatedrnn.tasks.adding import AddingTask
from gatedrnn.tasks.charlm import CharLMTask
from gatedrnn.tasks.chorales import ChoralesTask
from gatedrnn.tasks.copy import CopyTask
from gatedrnn.tasks.sunspots import SunspotsTask
from gatedrnn.tasks.temporal_order import TemporalOrderTask
from gatedrnn.tasks.vowels import VowelsTask
from gatedrnn.tasks.base import Task, TaskInfo

TASKS: dict[str, type[Task]] = {
    "adding": AddingTask,
    "copy": CopyTask,
    "temporal_order": TemporalOrderTask,
    "sunspots": SunspotsTask,
    "vowels": VowelsTask,
    "charlm": CharLMTask,
    "chorales": ChoralesTask,
}


def get_task(name: str, **options: Any) -> Task:
    """The task `name` built with `options`; unknown name or option -> ValueError naming it."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: expected one of {sorted(TASKS)}")
    return TASKS[name](**options)


__all__ = ["TASKS", "Task", "TaskInfo", "get_task"]
