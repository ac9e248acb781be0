"""Dask's callbacks -- ``Callback``, ``ProgressBar``, ``Profiler``, ... -- when taskloom runs the graph.

The bridge must give each callback what Dask's own schedulers give it: the same events for the
same keys, the task results (where the task ran in this process), a ``state`` that evolves as
Dask's does, and ``_finish`` also after a failure.
"""

from __future__ import annotations

import io
import operator
import threading
from typing import Any

import dask
import pytest
import taskloom_dask
from dask.callbacks import Callback
from dask.diagnostics import CacheProfiler, Profiler, ProgressBar
from dask.local import get_sync
from dask.utils_test import add, inc

pytestmark = pytest.mark.usefixtures("no_callback_left_behind")

IN_PROCESS = ("sync", "threads", "pool")
"""Local schedulers whose tasks run in this process: ``_posttask`` gets the results."""


class Recorder(Callback):
    """Records every callback, in order; also checks the state Dask hands over at each step."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[Any, ...]] = []
        self.results: dict[Any, Any] = {}
        self.state: dict[str, Any] | None = None
        self.lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0

    def _start(self, dsk: Any) -> None:
        self.events.append(("start", frozenset(dsk)))

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        self.state = state
        self.events.append(("start_state", frozenset(state["ready"]), frozenset(state["waiting"])))

    def _pretask(self, key: Any, dsk: Any, state: dict[str, Any]) -> None:
        assert key in dsk and key in state["running"]
        assert not state["waiting"].get(key)  # its dependencies are done
        self.events.append(("pretask", key))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker: Any) -> None:
        assert key in state["finished"] and key not in state["running"]
        self.results[key] = result
        self.events.append(("posttask", key))

    def _finish(self, dsk: Any, state: dict[str, Any], errored: bool) -> None:
        self.events.append(("finish", errored))

    def of(self, kind: str) -> list[Any]:
        return [e[1] for e in self.events if e[0] == kind]


GRAPH = {
    "a": 1,
    "b": (inc, "a"),
    "c": (inc, "b"),
    "d": (add, "b", "c"),
    ("e", 0): (add, "d", 10),
    ("e", 1): (add, "d", 20),
    "total": (sum, [("e", 0), ("e", 1)]),
}
TASKS = {"b", "c", "d", ("e", 0), ("e", 1), "total"}


def explode(x: Any) -> Any:
    raise ValueError("boom")


def run_with(recorder: Recorder, get: Any, keys: Any, graph: Any = GRAPH) -> Any:
    with recorder:
        return get(graph, keys)


def test_same_events_as_dask_own_scheduler(local_scheduler: tuple[str, dict[str, Any]]) -> None:
    name, options = local_scheduler
    ours, theirs = Recorder(), Recorder()
    assert run_with(ours, taskloom_dask.bind(name, **options), ["total", "d"]) == (40, 5)
    assert run_with(theirs, get_sync, ["total", "d"]) == (40, 5)
    assert ours.events[0] == theirs.events[0] == ("start", frozenset(GRAPH))
    assert ours.events[1] == theirs.events[1] == ("start_state", frozenset({"b"}), frozenset(TASKS - {"b"}))
    assert sorted(map(str, ours.of("pretask"))) == sorted(map(str, theirs.of("pretask")))
    assert set(ours.of("posttask")) == set(theirs.of("posttask")) == TASKS
    assert ours.events[-1] == theirs.events[-1] == ("finish", False)
    for key in TASKS:  # every task starts before it finishes
        assert ours.events.index(("pretask", key)) < ours.events.index(("posttask", key))
    if name in IN_PROCESS:
        assert ours.results == theirs.results
    state = ours.state
    assert state is not None and state["finished"] == TASKS
    assert not state["waiting"] and not state["ready"] and not state["running"]
    assert state["released"] == {"a", "b", "c", ("e", 0), ("e", 1)}  # not the outputs d, total
    assert state["dependencies"]["d"] == {"b", "c"} and state["dependents"]["b"] == {"c", "d"}


def test_task_failure_calls_finish_with_errored(local_scheduler: tuple[str, dict[str, Any]]) -> None:
    name, options = local_scheduler
    recorder = Recorder()
    graph = {"a": (inc, 1), "bad": (explode, "a"), "after": (inc, "bad")}
    with pytest.raises(ValueError, match="boom"):
        run_with(recorder, taskloom_dask.bind(name, **options), "after", graph)
    assert recorder.events[-1] == ("finish", True)
    assert "bad" in recorder.of("pretask") and "bad" not in recorder.of("posttask")
    assert "after" not in recorder.of("pretask")


def test_progress_bar_reaches_100_percent(local_scheduler: tuple[str, dict[str, Any]]) -> None:
    name, options = local_scheduler
    out = io.StringIO()
    x = dask.delayed(sum)([dask.delayed(inc)(i) for i in range(20)])
    with ProgressBar(out=out, dt=0.01):
        assert x.compute(scheduler=taskloom_dask.bind(name, **options)) == 210
    assert "100% Completed" in out.getvalue()


def test_profiler_records_every_task() -> None:
    x = dask.delayed(sum)([dask.delayed(inc)(i) for i in range(10)])
    with Profiler() as ours:
        x.compute(scheduler=taskloom_dask.bind("threads"))
    with Profiler() as theirs:
        x.compute(scheduler="threads")
    assert sorted(map(str, (r.key for r in ours.results))) == sorted(
        map(str, (r.key for r in theirs.results))
    )
    for record in ours.results:
        assert record.start_time <= record.end_time
        assert isinstance(record.worker_id, str)  # the taskloom worker's name, e.g. taskloom-threads-0


def test_cache_profiler_sees_results_and_releases() -> None:
    x = dask.delayed(sum)([dask.delayed(inc)(i) for i in range(5)])
    with CacheProfiler(metric=lambda value: value) as ours:
        x.compute(scheduler=taskloom_dask.bind("sync"))
    with CacheProfiler(metric=lambda value: value) as theirs:
        x.compute(scheduler="sync")
    assert sorted(r.metric for r in ours.results) == sorted(r.metric for r in theirs.results)


def test_results_are_none_out_of_process() -> None:
    recorder = Recorder()
    run_with(recorder, taskloom_dask.bind("processes", num_workers=2), "total")
    assert set(recorder.results) == TASKS
    assert set(recorder.results.values()) == {None}


def test_callbacks_argument_applies_to_one_call() -> None:
    recorder = Recorder()
    assert taskloom_dask.get(GRAPH, "d", scheduler="sync", callbacks=[recorder]) == 5
    assert set(recorder.of("posttask")) == {"b", "c", "d"}
    assert taskloom_dask.get(GRAPH, "d", scheduler="sync") == 5  # not active afterwards
    assert len(recorder.of("posttask")) == 3


def test_start_may_edit_the_graph() -> None:
    """Like ``dask.cache.Cache``: ``_start`` puts known values into the graph; their tasks don't run."""

    class Known(Recorder):
        def _start(self, dsk: Any) -> None:
            super()._start(dsk)
            dsk["c"] = 100

    recorder = Known()
    assert run_with(recorder, taskloom_dask.bind("threads"), "d") == 102
    assert "c" not in recorder.of("pretask")


def test_nested_compute_sees_no_outer_callbacks() -> None:
    """As in Dask, active callbacks serve the outermost compute only."""
    inner = dask.delayed(operator.add)(1, 2)

    def nested(x: int) -> int:
        return x + inner.compute(scheduler=taskloom_dask.bind("sync"))

    recorder = Recorder()
    outer = dask.delayed(nested)(dask.delayed(inc)(1))
    with recorder:
        assert outer.compute(scheduler=taskloom_dask.bind("threads")) == 5
    assert inner.key not in recorder.of("pretask")
    assert recorder.of("finish") == [False]


def test_callbacks_are_called_one_at_a_time() -> None:
    class Overlap(Recorder):
        def _pretask(self, key: Any, dsk: Any, state: dict[str, Any]) -> None:
            with self.lock:
                self.concurrent += 1
                self.max_concurrent = max(self.max_concurrent, self.concurrent)
            super()._pretask(key, dsk, state)
            with self.lock:
                self.concurrent -= 1

    x = dask.delayed(sum)([dask.delayed(inc)(i) for i in range(200)])
    with Overlap() as recorder:
        x.compute(scheduler=taskloom_dask.bind("threads", num_workers=4))
    assert recorder.max_concurrent == 1
    assert len(recorder.of("posttask")) == 201


@pytest.mark.timeout(300)
def test_callbacks_on_the_dask_scheduler(dask_client: Any) -> None:
    recorder = Recorder()
    assert run_with(recorder, taskloom_dask.bind("dask", client=dask_client), "total") == 40
    assert set(recorder.of("posttask")) == TASKS
    assert recorder.results["total"] == 40  # the cluster's workers are threads of this process
    assert recorder.events[-1] == ("finish", False)
