"""Worker plugins on the ``processes`` scheduler: set-up once per process, transitions, replacement,
failing set-up, teardown at pool shutdown.

Plugins and task functions here travel to the workers *by value* (``register_pickle_by_value``),
so the tests pass wherever pytest imports this file from.  Workers write what they see to a log
file; nothing is observed by sleeping.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import taskloom
import taskloom_processes
from taskloom import Ref, Task
from taskloom.errors import WorkerPluginError
from taskloom.testing.conformance import FileJournal
from taskloom.testing.suite_helpers import add, inc
from taskloom.worker import WorkerPlugin, get_worker, register_worker_plugin, unregister_worker_plugin

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)


def compute(graph: dict[Any, Any], keys: Any, **kwargs: Any) -> Any:
    """``taskloom.get`` on the processes scheduler (two workers unless told otherwise)."""
    kwargs.setdefault("num_workers", 2)
    return taskloom.get(graph, keys, scheduler="processes", **kwargs)


def explode_in_task(x: int) -> None:
    raise ValueError(f"bad input {x}")


# -- worker plugins -------------------------------------------------------------------------------------


class LoggingPlugin(WorkerPlugin):
    """Appends one line per event (``<event> <label> <pid>``) to a log file shared by all workers."""

    def __init__(self, log: Path, label: str, fail: bool = False) -> None:
        self.log = str(log)
        self.label = label
        self.fail = fail
        self.token = uuid.uuid4().hex  # attributes on the worker are per plugin instance

    def _write(self, line: str) -> None:
        with open(self.log, "a") as f:  # one short append per line: atomic between processes
            f.write(f"{line}\n")

    def setup(self, worker: Any) -> None:
        self._write(f"setup {self.label} {os.getpid()}")
        if self.fail:
            raise RuntimeError("the database is unreachable")
        worker.custom_resource = f"{self.label}@{os.getpid()}"
        setups = worker.__dict__.setdefault(f"setups-{self.token}", [])
        setups.append(os.getpid())

    def teardown(self, worker: Any) -> None:
        self._write(f"teardown {self.label} {os.getpid()}")

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        self._write(f"transition {self.label} {os.getpid()} {key} {start} {finish}")


def read_log(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def events_of(log: Path, pid: int) -> list[str]:
    """``"<event> <label>"`` of the setups and teardowns in process ``pid``, in order."""
    return [f"{e[0]} {e[1]}" for e in read_log(log) if e[0] != "transition" and int(e[2]) == pid]


def see_resource(token: str, *deps: Any) -> tuple[int, str, list[int]]:
    worker = get_worker()
    return os.getpid(), worker.custom_resource, list(getattr(worker, f"setups-{token}", []))


def test_worker_plugin_sets_up_once_per_process_before_its_first_task(
    tmp_path: Path, worker_plugins: list[str]
) -> None:
    plugin = LoggingPlugin(tmp_path / "log", "db")
    worker_plugins.append(register_worker_plugin(plugin, name="db"))
    graph = {("see", i): Task(see_resource, plugin.token) for i in range(16)}
    seen = compute(graph, list(graph)) + compute(graph, list(graph))
    assert seen
    for pid, resource, setups in seen:
        assert pid != os.getpid()
        assert resource == f"db@{pid}"  # what setup attached, seen by the task
        assert setups == [pid]  # set up once in this process, however many tasks and computes
    setup_pids = [int(e[2]) for e in read_log(tmp_path / "log") if e[0] == "setup"]
    assert len(setup_pids) == len(set(setup_pids))
    assert {pid for pid, _, _ in seen} <= set(setup_pids)


def test_worker_plugin_sees_each_task_transition(tmp_path: Path, worker_plugins: list[str]) -> None:
    log = tmp_path / "log"
    worker_plugins.append(register_worker_plugin(LoggingPlugin(log, "watch"), name="watch"))
    graph = {"a": Task(inc, 1), "b": Task(inc, Ref("a")), "c": Task(add, Ref("a"), Ref("b"))}
    assert compute(graph, "c", num_workers=1) == 5
    transitions = [e[3:] for e in read_log(log) if e[0] == "transition"]
    assert transitions == [
        [k, *step] for k in ("a", "b", "c") for step in (["ready", "executing"], ["executing", "memory"])
    ]
    with pytest.raises(ValueError):
        compute({"bad": Task(explode_in_task, 1)}, "bad", num_workers=1)
    transitions = [e[3:] for e in read_log(log) if e[0] == "transition"]
    assert transitions[-2:] == [["bad", "ready", "executing"], ["bad", "executing", "error"]]


def test_replacing_a_worker_plugin_by_name_tears_down_the_old_one(
    tmp_path: Path, worker_plugins: list[str]
) -> None:
    log = tmp_path / "log"
    graph = {("see", i): Task(see_resource, "-") for i in range(8)}
    worker_plugins.append(register_worker_plugin(LoggingPlugin(log, "old"), name="db"))
    assert {r for _, r, _ in compute(graph, list(graph))} <= {f"old@{w.pid}" for w in live_pool()}
    register_worker_plugin(LoggingPlugin(log, "new"), name="db")
    seen = compute(graph, list(graph))
    assert all(resource == f"new@{pid}" for pid, resource, _ in seen)
    taskloom_processes.shutdown()  # returns once each worker has torn its plugins down
    pids = logged_pids(log)
    assert {pid for pid, _, _ in seen} <= pids
    for pid in pids:
        assert events_of(log, pid) == ["setup old", "teardown old", "setup new", "teardown new"]


def live_pool() -> list[Any]:
    workers = taskloom_processes.live_workers()
    assert workers
    return workers


def logged_pids(log: Path) -> set[int]:
    return {int(e[2]) for e in read_log(log)}


def test_failing_worker_plugin_setup_runs_no_task(tmp_path: Path, worker_plugins: list[str]) -> None:
    journal = FileJournal(tmp_path / "journal")
    os.mkdir(journal.directory)
    log = tmp_path / "log"
    worker_plugins.append(register_worker_plugin(LoggingPlugin(log, "bad", fail=True), name="bad"))
    graph = {"a": Task(journal.record, "a"), "b": Task(inc, 1)}
    with pytest.raises(WorkerPluginError) as info:
        compute(graph, ["a", "b"])
    assert info.value.name == "bad"
    assert "'bad'" in str(info.value) and "the database is unreachable" in str(info.value)
    assert journal.events() == []
    assert any(e[0] == "setup" for e in read_log(log))
    with pytest.raises(WorkerPluginError):  # still broken: still no task runs
        compute(graph, ["a", "b"])
    assert journal.events() == []
    unregister_worker_plugin("bad")
    assert compute(graph, ["a", "b"]) == [None, 2]
    assert journal.events() == ["a"]


def test_worker_plugins_tear_down_when_the_pool_shuts_down(tmp_path: Path, worker_plugins: list[str]) -> None:
    log = tmp_path / "log"
    worker_plugins.append(register_worker_plugin(LoggingPlugin(log, "db"), name="db"))
    graph = {("see", i): Task(see_resource, "-") for i in range(8)}
    first = {pid for pid, _, _ in compute(graph, list(graph))}
    taskloom_processes.shutdown()
    assert not taskloom_processes.live_workers()
    pids = logged_pids(log)
    assert first <= pids
    for pid in pids:
        assert events_of(log, pid) == ["setup db", "teardown db"]
    # a new pool starts after a shutdown, and its workers set the plugin up again
    seen = compute(graph, list(graph))
    assert all(resource == f"db@{pid}" and pid not in pids for pid, resource, _ in seen)
