"""The ``sync`` scheduler's ``get``: plan the graph, run it on the calling thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskloom import config
from taskloom.graph import Key
from taskloom.local import execute_inline, task_events
from taskloom.order import plan

try:
    from . import _fast
except ImportError:  # installed without a C compiler: the pure-Python path only
    _fast = None  # type: ignore[assignment]

COMPILED: bool = _fast is not None
"""Whether the compiled planner and executor (``taskloom_sync._fast``) is installed and loaded."""


def get(graph: Mapping[Key, Any], keys: list[Key], **kwargs: Any) -> list[Any]:
    """Compute ``keys`` of ``graph`` one task at a time in the calling thread.

    A task's exception propagates from the task's own frame: ``pdb.pm()`` or IPython's
    ``%debug`` lands inside the failing task.  Scheduler options such as ``num_workers`` are
    accepted and ignored, so one call works on every scheduler.

    Classic tuple-spec graphs run on the compiled path when it is installed and the
    ``sync.compiled`` setting is true; it gives the graph back untouched, before running
    anything, for whatever else (``Task``/``Ref`` values, nested tasks, bad graphs, ...), and
    the pure-Python path runs it.  Diagnostics hooks always run on the Python path.
    """
    events = task_events()
    if _fast is not None and not events.active and config.get("sync.compiled", True):
        values = _fast.run(graph, keys)
        if values is not None:
            return values
    results = execute_inline(plan(graph, keys), events)
    return [results[k] for k in keys]
