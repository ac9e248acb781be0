"""The ``threads`` scheduler's ``get``: plan the graph, run it on the shared thread pool."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskloom import config
from taskloom.graph import Key
from taskloom.local import cpu_count, task_events
from taskloom.order import plan

from .pool import get_pool


def get(graph: Mapping[Key, Any], keys: list[Key], num_workers: int | None = None, **kwargs: Any) -> list[Any]:
    """Compute ``keys`` of ``graph`` on a pool of ``num_workers`` threads (default: the CPU count).

    ``num_workers`` falls back to the ``num_workers`` configuration value.  Pools are kept and
    reused: one per distinct size.
    """
    p = plan(graph, keys)
    size = num_workers or config.get("num_workers", None) or cpu_count()
    results = get_pool(int(size)).run(p, task_events(), "threads")
    return [results[k] for k in keys]
