"""Worker plugins on the ``threads`` scheduler: user ``WorkerPlugin``s and installed plugins' worker hooks.

The processes scheduler's side of the same promises is in ``plugins/processes/tests``.  Here every
worker is a thread of this process, so plugins record into a shared, locked list.  Pool threads
are forced to run a task each with a barrier, and ``taskloom_threads.shutdown()`` is the point at
which every worker has torn its plugins down (it joins the threads).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import taskloom
from taskloom import Ref, Task
from taskloom.errors import WorkerPluginError
from taskloom.worker import WorkerPlugin, get_worker, register_worker_plugin, unregister_worker_plugin

taskloom_threads = pytest.importorskip("taskloom_threads")

pytestmark = pytest.mark.timeout(60)

WORKERS = 3


class Log:
    """Events from every worker thread, in the order they happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[Any, ...]] = []

    def add(self, *event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [e for e in self.events if e[0] == kind]


class RecordingPlugin(WorkerPlugin):
    """Records ``(event, label, worker thread, ...)``; its setup attaches ``worker.<label>``."""

    def __init__(self, log: Log, label: str, fail: bool = False) -> None:
        self.log = log
        self.label = label
        self.fail = fail

    def setup(self, worker: Any) -> None:
        # what plugins registered earlier attached is already there when this one sets up
        self.log.add("setup", self.label, threading.current_thread(), sorted(vars(worker)))
        if self.fail:
            raise RuntimeError("the database is unreachable")
        setattr(worker, self.label, f"{self.label} on {worker.name}")
        worker.custom_resource = self.label

    def teardown(self, worker: Any) -> None:
        self.log.add("teardown", self.label, threading.current_thread())

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        self.log.add("transition", self.label, threading.current_thread(), key, start, finish)


class InstalledWorkerHooks:
    """A plugin object implementing the worker hooks, as an installed package would."""

    def __init__(self, log: Log) -> None:
        self.log = log

    @taskloom.hookimpl
    def taskloom_worker_setup(self, worker: Any) -> None:
        self.log.add("setup", "installed", threading.current_thread(), worker)
        worker.installed_resource = f"installed on {worker.name}"

    @taskloom.hookimpl
    def taskloom_task_transition(self, worker: Any, key: Any, start: str, finish: str) -> None:
        self.log.add("transition", "installed", threading.current_thread(), key, start, finish, worker)

    @taskloom.hookimpl
    def taskloom_worker_teardown(self, worker: Any) -> None:
        self.log.add("teardown", "installed", threading.current_thread(), worker)


def meet(barrier: threading.Barrier, *attributes: str) -> tuple[threading.Thread, dict[str, Any]]:
    """Wait until ``barrier.parties`` tasks run at once; report the thread and worker attributes."""
    barrier.wait()
    worker = get_worker()
    return threading.current_thread(), {a: getattr(worker, a, None) for a in attributes}


def on_every_thread(*attributes: str) -> list[tuple[threading.Thread, dict[str, Any]]]:
    """Run one task on each of the ``WORKERS`` pool threads at once."""
    barrier = threading.Barrier(WORKERS, timeout=30)
    graph = {("meet", i): Task(meet, barrier, *attributes) for i in range(WORKERS)}
    seen = taskloom.get(graph, list(graph), scheduler="threads", num_workers=WORKERS)
    assert len({thread for thread, _ in seen}) == WORKERS
    return seen


def inc(x: int) -> int:
    return x + 1


def fail(*deps: Any) -> None:
    raise ValueError("task failed")


@pytest.fixture
def fresh_thread_pools() -> Iterator[None]:
    """Thread pools started in this test, shut down at its end (their plugins tear down)."""
    taskloom_threads.shutdown()
    yield
    taskloom_threads.shutdown()


# -- user WorkerPlugins -------------------------------------------------------------------------


def test_setup_runs_once_per_worker_thread_in_registration_order(
    worker_plugins: list[str], fresh_thread_pools: None
) -> None:
    log = Log()
    worker_plugins.append(register_worker_plugin(RecordingPlugin(log, "first"), name="first"))
    worker_plugins.append(register_worker_plugin(RecordingPlugin(log, "second"), name="second"))
    seen = on_every_thread("first", "second") + on_every_thread("first", "second")
    pool_threads = set(taskloom_threads.get_pool(WORKERS).threads)
    for thread, attrs in seen:
        assert thread in pool_threads
        assert attrs == {"first": f"first on {thread.name}", "second": f"second on {thread.name}"}
    setups = log.of("setup")
    assert len(setups) == 2 * WORKERS  # once per thread and plugin, however many computes
    for thread in pool_threads:
        mine = [e for e in setups if e[2] is thread]
        assert [e[1] for e in mine] == ["first", "second"]
        assert "first" in mine[1][3]  # "second" set up after "first" had attached its resource


def test_teardown_runs_in_reverse_order_at_pool_shutdown_and_new_pools_set_up_again(
    worker_plugins: list[str], fresh_thread_pools: None
) -> None:
    log = Log()
    worker_plugins.append(register_worker_plugin(RecordingPlugin(log, "first"), name="first"))
    worker_plugins.append(register_worker_plugin(RecordingPlugin(log, "second"), name="second"))
    old_threads = {thread for thread, _ in on_every_thread()}
    assert log.of("teardown") == []
    taskloom_threads.shutdown()
    assert not any(t.is_alive() for t in old_threads)
    for thread in old_threads:
        mine = [e[:2] for e in log.events if e[0] in ("setup", "teardown") and e[2] is thread]
        assert mine == [
            ("setup", "first"),
            ("setup", "second"),
            ("teardown", "second"),
            ("teardown", "first"),
        ]
    new_threads = {thread for thread, _ in on_every_thread("second")}
    assert not new_threads & old_threads
    new_setups = [e for e in log.of("setup") if e[2] in new_threads]
    assert len(new_setups) == 2 * WORKERS


def test_tasks_see_the_resource_setup_attached(worker_plugins: list[str]) -> None:
    log = Log()
    worker_plugins.append(register_worker_plugin(RecordingPlugin(log, "db"), name="db"))
    for thread, attrs in on_every_thread("custom_resource", "db"):
        assert attrs == {"custom_resource": "db", "db": f"db on {thread.name}"}


def test_transition_is_called_for_each_task(worker_plugins: list[str]) -> None:
    log = Log()
    worker_plugins.append(register_worker_plugin(RecordingPlugin(log, "watch"), name="watch"))
    graph = {"a": Task(inc, 1), "b": Task(inc, Ref("a")), "c": (inc, "b")}
    assert taskloom.get(graph, "c", scheduler="threads", num_workers=2) == 4
    for key in graph:
        steps = [e for e in log.of("transition") if e[3] == key]
        assert [e[4:] for e in steps] == [("ready", "executing"), ("executing", "memory")]
        assert steps[0][2] is steps[1][2]  # both on the thread that ran it
    with pytest.raises(ValueError):
        taskloom.get({"bad": Task(fail)}, "bad", scheduler="threads", num_workers=2)
    assert [e[3:] for e in log.of("transition") if e[3] == "bad"] == [
        ("bad", "ready", "executing"),
        ("bad", "executing", "error"),
    ]


def test_replacing_a_plugin_by_name_tears_down_the_old_one(worker_plugins: list[str]) -> None:
    log = Log()
    worker_plugins.append(register_worker_plugin(RecordingPlugin(log, "old"), name="db"))
    threads = {thread for thread, _ in on_every_thread()}
    register_worker_plugin(RecordingPlugin(log, "new"), name="db")
    for thread, attrs in on_every_thread("custom_resource"):
        assert attrs == {"custom_resource": "new"}
        assert thread in threads
    for thread in threads:
        mine = [e[:2] for e in log.events if e[0] in ("setup", "teardown") and e[2] is thread]
        assert mine == [("setup", "old"), ("teardown", "old"), ("setup", "new")]


def test_failing_setup_raises_and_no_task_runs_until_the_plugin_is_removed(
    worker_plugins: list[str],
) -> None:
    log = Log()
    ran: list[str] = []
    worker_plugins.append(register_worker_plugin(RecordingPlugin(log, "bad", fail=True), name="bad"))
    graph = {"a": Task(ran.append, "a"), "b": Task(ran.append, "b")}
    with pytest.raises(WorkerPluginError) as info:
        taskloom.get(graph, ["a", "b"], scheduler="threads", num_workers=2)
    assert info.value.name == "bad"
    assert "'bad'" in str(info.value) and "the database is unreachable" in str(info.value)
    assert ran == []
    with pytest.raises(WorkerPluginError):
        taskloom.get(graph, ["a", "b"], scheduler="threads", num_workers=2)
    assert ran == []
    unregister_worker_plugin("bad")
    assert taskloom.get(graph, ["a", "b"], scheduler="threads", num_workers=2) == [None, None]
    assert sorted(ran) == ["a", "b"]


# -- installed plugins' worker hooks ------------------------------------------------------------


def test_installed_worker_hooks_run_on_workers_started_after_registration(
    registered_plugin: Any, fresh_thread_pools: None
) -> None:
    log = Log()
    with registered_plugin(InstalledWorkerHooks(log)):
        seen = on_every_thread("installed_resource")
        for thread, attrs in seen:
            assert attrs == {"installed_resource": f"installed on {thread.name}"}
        threads = {thread for thread, _ in seen}
        setups = log.of("setup")
        assert sorted(e[2].name for e in setups) == sorted(t.name for t in threads)
        assert len({id(e[3]) for e in setups}) == WORKERS  # one Worker object per thread
        graph = {"a": Task(inc, 1), "b": Task(inc, Ref("a"))}
        assert taskloom.get(graph, "b", scheduler="threads", num_workers=WORKERS) == 3
        for key in graph:
            steps = [e for e in log.of("transition") if e[3] == key]
            assert [e[4:6] for e in steps] == [("ready", "executing"), ("executing", "memory")]
            assert steps[0][6] is steps[1][6] and steps[0][6].kind == "thread"
        taskloom_threads.shutdown()
        teardowns = log.of("teardown")
        assert {id(e[3]) for e in teardowns} == {id(e[3]) for e in setups}


def test_user_plugins_tear_down_before_installed_ones(
    registered_plugin: Any, worker_plugins: list[str], fresh_thread_pools: None
) -> None:
    log = Log()
    with registered_plugin(InstalledWorkerHooks(log)):
        worker_plugins.append(register_worker_plugin(RecordingPlugin(log, "user"), name="user"))
        threads = {thread for thread, _ in on_every_thread()}
        taskloom_threads.shutdown()
    for thread in threads:
        mine = [e[:2] for e in log.events if e[0] in ("setup", "teardown") and e[2] is thread]
        assert mine == [
            ("setup", "installed"),
            ("setup", "user"),
            ("teardown", "user"),
            ("teardown", "installed"),
        ]


def test_unregistered_installed_plugin_gets_no_more_worker_hooks(
    registered_plugin: Any, fresh_thread_pools: None
) -> None:
    log = Log()
    plugin = InstalledWorkerHooks(log)
    with registered_plugin(plugin):
        on_every_thread()
    count = len(log.of("transition"))
    assert taskloom.get({"a": Task(inc, 1)}, "a", scheduler="threads", num_workers=WORKERS) == 2
    assert len(log.of("transition")) == count
    assert len(log.of("teardown")) >= 1, "the worker that ran 'a' tore it down first"
    taskloom_threads.shutdown()  # the others tear it down as they stop, once each
    setups, teardowns = log.of("setup"), log.of("teardown")
    assert len(setups) == WORKERS
    assert sorted(id(e[3]) for e in teardowns) == sorted(id(e[3]) for e in setups)


def test_a_plugin_registered_at_run_time_reaches_workers_that_already_run(
    registered_plugin: Any, fresh_thread_pools: None
) -> None:
    before = {thread for thread, _ in on_every_thread()}  # the pool's workers are up and set up
    log = Log()
    with registered_plugin(InstalledWorkerHooks(log)):
        seen = on_every_thread("installed_resource")
        assert {thread for thread, _ in seen} == before, "the same workers, not a new pool"
        for thread, attributes in seen:
            assert attributes == {"installed_resource": f"installed on {thread.name}"}
        assert len(log.of("setup")) == WORKERS
