"""Hook implementations of taskloom-sync."""

from __future__ import annotations

from typing import Any

import taskloom

from .scheduler import get


@taskloom.hookimpl
def taskloom_schedulers() -> list[taskloom.SchedulerSpec]:
    return [
        taskloom.SchedulerSpec(
            "sync",
            get=get,
            aliases=("synchronous", "single-threaded"),
            description="every task in the calling thread; for debugging and profiling",
        )
    ]


@taskloom.hookimpl
def taskloom_config_defaults() -> dict[str, Any]:
    return {"sync": {"compiled": True}}
