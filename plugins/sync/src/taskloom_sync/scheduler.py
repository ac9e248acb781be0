"""The ``sync`` scheduler's ``get``: plan the graph, run it on the calling thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskloom.graph import Key
from taskloom.local import execute_inline, task_events
from taskloom.order import plan


def get(graph: Mapping[Key, Any], keys: list[Key], **kwargs: Any) -> list[Any]:
    """Compute ``keys`` of ``graph`` one task at a time in the calling thread.

    A task's exception propagates from the task's own frame: ``pdb.pm()`` or IPython's
    ``%debug`` lands inside the failing task.  Scheduler options such as ``num_workers`` are
    accepted and ignored, so one call works on every scheduler.
    """
    results = execute_inline(plan(graph, keys), task_events())
    return [results[k] for k in keys]
