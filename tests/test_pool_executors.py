"""Graphs on user executors: ThreadPoolExecutor, ProcessPoolExecutor (spawn) and loky's reusable one.

Through the ``pool`` scheduler (``pool=executor``) and through ``threads`` with a configured pool:
results, functions by value, errors with their remote tracebacks, unpicklable data, worker
plugins and ``get_worker()``, the executor left usable, and Ctrl-C answered within a second.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import cloudpickle
import pytest
import taskloom
from taskloom import Ref, Task
from taskloom.errors import WorkerPluginError
from taskloom.serialize import SerializationError
from taskloom.testing.conformance import TaskFailure, add, failing_task, inc
from taskloom.worker import Worker, WorkerPlugin, get_worker, register_worker_plugin, unregister_worker_plugin

pytest.importorskip("taskloom_pool")
pytestmark = pytest.mark.timeout(120)

# Tasks and plugins defined here travel to worker processes by value (this module is not importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

KINDS = ["threads", "processes", "loky"]
PREFIX = "taskloom-test-executor"


@pytest.fixture(scope="module")
def _loky_helpers() -> None:
    """loky's resource tracker is a long-lived helper (like multiprocessing's): start it before the
    per-test leak check takes its snapshot of child processes."""
    try:
        from loky.backend import resource_tracker
    except ImportError:
        return
    resource_tracker.ensure_running()


@pytest.fixture(params=KINDS)
def executor(request: pytest.FixtureRequest, _loky_helpers: None) -> Iterator[Executor]:
    kind = request.param
    if kind == "threads":
        with ThreadPoolExecutor(2, thread_name_prefix=PREFIX) as ex:
            yield ex
    elif kind == "processes":
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pex:
            yield pex
    else:
        loky = pytest.importorskip("loky")

        lex = loky.get_reusable_executor(max_workers=2, reuse=False)
        try:
            yield lex
        finally:
            lex.shutdown(wait=True, kill_workers=True)


def worker_pids(ex: Executor) -> set[int]:
    return set(getattr(ex, "_processes", {}))


def in_executor(ex: Executor, where: tuple[str, int]) -> bool:
    """True if a task that reported ``(thread name, pid)`` ran on one of ``ex``'s workers."""
    name, pid = where
    if isinstance(ex, ThreadPoolExecutor):
        return pid == os.getpid() and name.startswith(PREFIX)
    return pid in worker_pids(ex)


def where(*deps: Any) -> tuple[str, int]:
    return threading.current_thread().name, os.getpid()


def graphs() -> tuple[dict[Any, Any], list[Any], list[Any]]:
    """A chain, a tree reduction and independent tasks in one graph: (graph, keys, expected)."""
    graph: dict[Any, Any] = {("chain", 0): 0}
    graph.update({("chain", i): (inc, ("chain", i - 1)) for i in range(1, 1500)})
    graph.update({("tree", 0, i): (inc, i) for i in range(512)})
    level, width = 0, 512
    while width > 1:
        for i in range(width // 2):
            graph["tree", level + 1, i] = (add, ("tree", level, 2 * i), ("tree", level, 2 * i + 1))
        level, width = level + 1, width // 2
    graph.update({("ind", i): Task(inc, i) for i in range(1000)})
    keys = [("chain", 1499), ("tree", level, 0), [("ind", i) for i in range(0, 1000, 111)]]
    expected = [1499, 512 * 513 // 2, [i + 1 for i in range(0, 1000, 111)]]
    return graph, keys, expected


def test_results_on_chain_tree_and_independent_graphs(executor: Executor) -> None:
    graph, keys, expected = graphs()
    for _ in range(2):  # the second compute batches from its first results on
        assert taskloom.get(graph, keys, scheduler="pool", pool=executor) == expected
    assert executor.submit(pow, 2, 10).result() == 1024  # not shut down


def test_lambdas_and_closures_travel_by_value(executor: Executor) -> None:
    offset = 100

    def shifted(x: int) -> int:
        return x + offset

    graph: dict[Any, Any] = {
        "a": 1,
        "b": (lambda x: x * 3, "a"),
        "c": Task(shifted, Ref("b")),
        "d": Task(lambda: where()),
    }
    b, c, d = taskloom.get(graph, ["b", "c", "d"], scheduler="pool", pool=executor)
    assert (b, c) == (3, 103)
    assert in_executor(executor, d)


def test_task_exception_type_remote_traceback_and_key(executor: Executor) -> None:
    graph: dict[Any, Any] = {"a": (inc, 1), ("boom", 3): Task(failing_task, [], "bad value", Ref("a"))}
    with pytest.raises(TaskFailure) as info:
        taskloom.get(graph, ("boom", 3), scheduler="pool", pool=executor)
    exc = info.value
    assert type(exc) is TaskFailure and exc.args == ("bad value",)
    assert any(repr(("boom", 3)) in note for note in exc.__notes__)
    assert "failing_task" in "".join(traceback.format_exception(exc))
    if not isinstance(executor, ThreadPoolExecutor):
        assert "failing_task" in str(exc.__cause__)  # the worker's traceback, as text
    assert taskloom.get({"x": (inc, 41)}, "x", scheduler="pool", pool=executor) == 42
    assert executor.submit(pow, 3, 2).result() == 9


def length(x: Any) -> int:
    return len(repr(x))


def make_lock() -> threading.Lock:
    return threading.Lock()


@pytest.mark.parametrize("executor", ["processes", "loky"], indirect=True)
def test_unpicklable_argument_and_result_name_the_key_and_type(executor: Executor) -> None:
    graph: dict[Any, Any] = {"free": (inc, 1), ("locked", 1): Task(length, threading.Lock())}
    with pytest.raises(SerializationError) as info:
        taskloom.get(graph, ["free", ("locked", 1)], scheduler="pool", pool=executor)
    assert repr(("locked", 1)) in str(info.value) and "lock" in str(info.value)
    with pytest.raises(SerializationError) as info:
        taskloom.get({"made": Task(make_lock)}, "made", scheduler="pool", pool=executor)
    assert "'made'" in str(info.value) and "lock" in str(info.value)
    assert taskloom.get({"x": (inc, 1)}, "x", scheduler="pool", pool=executor) == 2


class Tagging(WorkerPlugin):
    name = "tagging"

    def setup(self, worker: Worker) -> None:
        worker.tag = ("tagged", os.getpid(), threading.current_thread().name)  # type: ignore[attr-defined]


def tagged(barrier: Any, *deps: Any) -> tuple[Any, str, tuple[str, int]]:
    barrier.wait()  # every worker runs one of these tasks at the same time
    worker = get_worker()
    return worker.tag, worker.name, where()  # type: ignore[attr-defined]


def make_barrier(ex: Executor, stack: Any) -> Any:
    if isinstance(ex, ThreadPoolExecutor):
        return threading.Barrier(2, timeout=30)
    manager = multiprocessing.get_context("spawn").Manager()
    stack.append(manager)
    return manager.Barrier(2, timeout=30)


def test_worker_plugin_setup_runs_in_each_worker(executor: Executor) -> None:
    managers: list[Any] = []
    register_worker_plugin(Tagging())
    try:
        barrier = make_barrier(executor, managers)
        graph: dict[Any, Any] = {i: Task(tagged, barrier) for i in range(2)}
        results = taskloom.get(graph, [0, 1], scheduler="pool", pool=executor)
    finally:
        unregister_worker_plugin("tagging")
        for manager in managers:
            manager.shutdown()
    assert len({place for _, _, place in results}) == 2  # two different workers
    for tag, _name, place in results:
        assert in_executor(executor, place)
        assert tag == ("tagged", place[1], place[0])  # set up in the worker that ran the task


class FailingSetup(WorkerPlugin):
    name = "no-database"

    def setup(self, worker: Worker) -> None:
        raise ConnectionError("database unreachable")


def test_failing_worker_plugin_setup_is_raised_naming_the_plugin(executor: Executor) -> None:
    register_worker_plugin(FailingSetup())
    try:
        with pytest.raises(WorkerPluginError, match="no-database") as info:
            taskloom.get({"a": (inc, 1)}, "a", scheduler="pool", pool=executor)
    finally:
        unregister_worker_plugin("no-database")
    assert "database unreachable" in str(info.value)
    assert taskloom.get({"a": (inc, 1)}, "a", scheduler="pool", pool=executor) == 2


def test_threads_scheduler_runs_on_the_configured_pool(executor: Executor, clean_config: Any) -> None:
    graph: dict[Any, Any] = {i: Task(where) for i in range(8)}
    with clean_config.set(pool=executor):
        places = taskloom.get(graph, list(range(8)), scheduler="threads")
    assert all(in_executor(executor, place) for place in places)
    places = taskloom.get(graph, list(range(8)), scheduler="threads", pool=executor)
    assert all(in_executor(executor, place) for place in places)
    assert taskloom.get({"a": Task(where)}, "a", scheduler="threads")[1] == os.getpid()  # unset again


INTERRUPT_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys, threading
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
    import taskloom
    from taskloom import Task

    def block(release):
        sys.stdout.write("running\\n")  # one write: lines from two workers do not interleave
        sys.stdout.flush()
        release.wait(60)
        return 1

    if __name__ == "__main__":
        kind, manager = sys.argv[1], None
        if kind == "threads":
            ex, release = ThreadPoolExecutor(2), threading.Event()
        else:
            context = multiprocessing.get_context("spawn")
            manager = context.Manager()
            release = manager.Event()
            if kind == "processes":
                ex = ProcessPoolExecutor(2, mp_context=context)
            else:
                import loky
                ex = loky.get_reusable_executor(max_workers=2)
        graph = {i: Task(block, release) for i in range(6)}
        try:
            taskloom.get(graph, list(graph), scheduler="pool", pool=ex)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        release.set()
        ex.shutdown(wait=True)
        if manager is not None:
            manager.shutdown()
    """
)


@pytest.mark.parametrize("kind", KINDS)
def test_keyboard_interrupt_returns_within_a_second(kind: str, tmp_path: Any) -> None:
    if kind == "loky":
        pytest.importorskip("loky")
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPT_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), kind], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert "running" in proc.stdout.readline()
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = "running"
        while line and "interrupted" not in line:  # another task may have started meanwhile
            line = proc.stdout.readline()
        elapsed = time.monotonic() - sent
        assert "interrupted" in line, proc.stderr.read() if proc.stderr else ""
        assert elapsed < 3, f"KeyboardInterrupt took {elapsed:.1f} s"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def first(*deps: Any) -> int:
    return sum(range(3_000_000)) and 1  # long enough (milliseconds) that later tasks go one per batch


@pytest.mark.parametrize("executor", ["processes"], indirect=True)
def test_plugins_reach_a_worker_that_joins_after_the_first_results(executor: Executor) -> None:
    """With ``num_workers=1`` the plugins stop travelling once one worker has them; the second
    worker process, first used by the barrier tasks, asks for them and gets them."""
    managers: list[Any] = []
    register_worker_plugin(Tagging())
    try:
        barrier = make_barrier(executor, managers)
        graph: dict[Any, Any] = {
            "first": Task(first),
            "a": Task(tagged, barrier, Ref("first")),
            "b": Task(tagged, barrier, Ref("first")),
        }
        results = taskloom.get(graph, ["a", "b"], scheduler="pool", pool=executor, num_workers=1)
    finally:
        unregister_worker_plugin("tagging")
        for manager in managers:
            manager.shutdown()
    assert len({place for _, _, place in results}) == 2
    assert all(tag == ("tagged", place[1], place[0]) for tag, _, place in results)
