"""Hook implementations of taskloom-pool."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import taskloom

from .scheduler import get


@contextmanager
def _setup() -> Iterator[dict[str, Any]]:
    """For the conformance suite and benchmarks: a two-thread executor, shut down afterwards."""
    with ThreadPoolExecutor(2, thread_name_prefix="taskloom-threads-pool-setup") as executor:
        yield {"pool": executor}


@taskloom.hookimpl
def taskloom_schedulers() -> list[taskloom.SchedulerSpec]:
    return [
        taskloom.SchedulerSpec(
            "pool",
            get=get,
            description="any concurrent.futures executor: config.set(pool=executor) or compute(pool=...)",
            setup=_setup,
        )
    ]


@taskloom.hookimpl
def taskloom_config_defaults() -> dict[str, Any]:
    return {"pool": None}  # a concurrent.futures.Executor; the threads scheduler honours it too
