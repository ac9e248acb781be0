"""taskloom-threads on its own: registration, the conformance suite, the reused pool."""

from __future__ import annotations

import threading

import pytest
import taskloom
import taskloom_threads
from taskloom import Task
from taskloom.testing import SchedulerConformance


class TestThreadsConformance(SchedulerConformance):
    scheduler = "threads"


@pytest.mark.parametrize("alias", ["threads", "threading"])
def test_registered_under_its_name_and_alias(alias: str) -> None:
    assert taskloom.get({"a": (abs, -3)}, "a", scheduler=alias) == 3
    assert taskloom.schedulers()["threads"].distribution == "taskloom-threads"


def test_is_the_default_scheduler() -> None:
    where = taskloom.get({"t": Task(lambda: threading.current_thread().name)}, "t")
    assert where.startswith("taskloom-threads")


def test_pool_threads_are_reused_across_computes() -> None:
    graph = {i: Task(threading.current_thread) for i in range(50)}
    first = set(taskloom.get(graph, list(range(50)), num_workers=2))
    second = set(taskloom.get(graph, list(range(50)), num_workers=2))
    pool = set(taskloom_threads.get_pool(2).threads)
    assert first <= pool and second <= pool and len(pool) == 2
