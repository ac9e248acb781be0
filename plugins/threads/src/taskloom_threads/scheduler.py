"""The ``threads`` scheduler's ``get``: plan the graph, run it on the shared thread pool.

A configured executor overrides the pool: with ``pool=executor`` (argument or configuration,
``taskloom.config.set(pool=executor)``) the plan runs on that ``concurrent.futures`` executor
through :func:`taskloom.executor.execute_on_executor`, as the ``pool`` scheduler would.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from taskloom import config
from taskloom.executor import execute_on_executor
from taskloom.graph import Key
from taskloom.local import cpu_count, task_events
from taskloom.order import plan

from .pool import get_pool


def get(
    graph: Mapping[Key, Any],
    keys: list[Key],
    num_workers: int | None = None,
    pool: Executor | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Compute ``keys`` of ``graph`` on a pool of ``num_workers`` threads (default: the CPU count).

    ``num_workers`` falls back to the ``num_workers`` configuration value.  Pools are kept and
    reused: one per distinct size.  ``pool`` (else the ``pool`` configuration value) is an
    executor to run on instead; ``num_workers`` then bounds the batches in flight.
    """
    p = plan(graph, keys)
    executor = pool if pool is not None else config.get("pool", None)
    if executor is not None:
        results = execute_on_executor(
            p, executor, task_events(), scheduler="threads", max_workers=num_workers
        )
    else:
        size = num_workers or config.get("num_workers", None) or cpu_count()
        results = get_pool(int(size)).run(p, task_events(), "threads")
    return [results[k] for k in keys]
