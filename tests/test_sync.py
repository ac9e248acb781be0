"""The ``sync`` scheduler: tasks run on the calling thread; errors leave a post-mortem in the task."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest
import taskloom
from taskloom import Ref, Task

pytest.importorskip("taskloom_sync")


class TaskFailure(Exception):
    pass


def failing_task(x: int) -> int:
    secret = x * 21
    raise TaskFailure(f"failed with {secret}")


def thread_id(*deps: Any) -> int:
    return threading.get_ident()


def test_post_mortem_lands_in_the_failing_task() -> None:
    graph = {"a": 2, "b": Task(failing_task, Ref("a"))}
    try:
        taskloom.get(graph, "b", scheduler="sync")
    except TaskFailure:
        tb = sys.exc_info()[2]
    else:
        pytest.fail("the task's exception did not reach the caller")
    assert tb is not None
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_code.co_name == "failing_task"
    assert tb.tb_frame.f_locals["secret"] == 42  # what pdb.pm() shows


def test_aliases_select_sync() -> None:
    for name in ("sync", "synchronous", "single-threaded"):
        assert taskloom.get({"x": Task(thread_id)}, "x", scheduler=name) == threading.get_ident()


def test_tasks_run_on_the_calling_thread() -> None:
    graph = {i: Task(thread_id, *[Ref(j) for j in range(i)]) for i in range(10)}
    caller = threading.get_ident()
    assert set(taskloom.get(graph, list(graph), scheduler="sync", num_workers=4)) == {caller}

    seen: list[int] = []

    def from_another_thread() -> None:
        seen.extend(taskloom.get(graph, list(graph), scheduler="sync"))
        seen.append(threading.get_ident())

    other = threading.Thread(target=from_another_thread)
    other.start()
    other.join(10)
    assert len(set(seen)) == 1 and seen[-1] != caller
