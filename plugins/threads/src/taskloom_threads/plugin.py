"""Hook implementations of taskloom-threads."""

from __future__ import annotations

import taskloom

from .scheduler import get


@taskloom.hookimpl
def taskloom_schedulers() -> list[taskloom.SchedulerSpec]:
    return [
        taskloom.SchedulerSpec(
            "threads",
            get=get,
            aliases=("threading",),
            description="a reusable pool of threads; the default (NumPy, pandas, I/O)",
        )
    ]
