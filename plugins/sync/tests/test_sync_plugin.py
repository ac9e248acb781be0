"""taskloom-sync on its own: registration, the conformance suite, calling-thread execution."""

from __future__ import annotations

import threading
import traceback

import pytest
import taskloom
from taskloom import Task
from taskloom.testing import SchedulerConformance


class TestSyncConformance(SchedulerConformance):
    scheduler = "sync"


@pytest.mark.parametrize("alias", ["sync", "synchronous", "single-threaded"])
def test_registered_under_its_name_and_aliases(alias: str) -> None:
    assert taskloom.get({"a": (abs, -3)}, "a", scheduler=alias) == 3
    assert taskloom.schedulers()["sync"].distribution == "taskloom-sync"


def test_tasks_run_on_the_calling_thread() -> None:
    graph = {i: Task(threading.get_ident) for i in range(20)}
    assert set(taskloom.get(graph, list(range(20)), scheduler="sync")) == {threading.get_ident()}


def failing_task(x: int) -> int:
    return 1 // x


def test_post_mortem_lands_inside_the_failing_task() -> None:
    with pytest.raises(ZeroDivisionError) as info:
        taskloom.get({"x": 0, "y": (failing_task, "x")}, "y", scheduler="sync")
    innermost = traceback.extract_tb(info.value.__traceback__)[-1]
    assert innermost.name == "failing_task"  # where pdb.pm() would land
    assert "'y'" in "".join(info.value.__notes__)
