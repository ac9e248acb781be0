"""Hook implementations of taskloom-processes."""

from __future__ import annotations

from typing import Any

import taskloom

from .scheduler import get


@taskloom.hookimpl
def taskloom_schedulers() -> list[taskloom.SchedulerSpec]:
    return [
        taskloom.SchedulerSpec(
            "processes",
            get=get,
            aliases=("multiprocessing",),
            description="a reusable pool of worker processes; pure-Python, GIL-bound code",
        )
    ]


@taskloom.hookimpl
def taskloom_config_defaults() -> dict[str, Any]:
    return {"processes": {"context": "spawn"}}
