"""The ``pool`` scheduler on a ThreadPoolExecutor: the conformance suite, configuration, plugins, errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import taskloom
from taskloom import Ref, Task, TaskloomError
from taskloom.errors import WorkerPluginError
from taskloom.testing import SchedulerConformance
from taskloom.worker import Worker, WorkerPlugin, get_worker, register_worker_plugin, unregister_worker_plugin
from taskloom_pool import executor_scheduler

pytestmark = pytest.mark.timeout(60)

PREFIX = "taskloom-test-pool"


@pytest.fixture
def executor(no_leaked_threads: None) -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2, thread_name_prefix=PREFIX) as ex:
        yield ex


class TestPoolConformance(SchedulerConformance):
    """Every conformance test, with the executor passed per call: ``compute(pool=executor)``."""

    scheduler = "pool"
    executor: ThreadPoolExecutor | None = None

    @pytest.fixture(autouse=True)
    def _pool(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor

    def options(self, **kwargs: Any) -> dict[str, Any]:
        return super().options(pool=self.executor, **kwargs)


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def thread_name(*deps: Any) -> str:
    return threading.current_thread().name


def chain_graph(n: int) -> dict[Any, Any]:
    graph: dict[Any, Any] = {("c", 0): 0}
    graph.update({("c", i): (inc, ("c", i - 1)) for i in range(1, n)})
    return graph


def test_configured_pool_is_used(clean_config: Any, executor: ThreadPoolExecutor) -> None:
    clean_config.set(pool=executor)
    graph: dict[Any, Any] = {i: Task(thread_name) for i in range(8)}
    names = taskloom.get(graph, list(range(8)), scheduler="pool")
    assert all(name.startswith(PREFIX) for name in names)


def test_missing_pool_says_how_to_supply_one(clean_config: Any) -> None:
    with pytest.raises(TaskloomError) as info:
        taskloom.get({"a": (inc, 1)}, "a", scheduler="pool")
    message = str(info.value)
    assert "config.set(pool=executor)" in message and "pool=executor" in message


def test_pool_that_is_not_an_executor_is_a_clear_error(clean_config: Any) -> None:
    with pytest.raises(TypeError, match=r"concurrent\.futures\.Executor"):
        taskloom.get({"a": (inc, 1)}, "a", scheduler="pool", pool="not an executor")


def test_executor_is_not_shut_down(executor: ThreadPoolExecutor) -> None:
    graph = chain_graph(500)
    assert taskloom.get(graph, ("c", 499), scheduler="pool", pool=executor) == 499
    with pytest.raises(ZeroDivisionError):
        taskloom.get({"x": Task(divmod, 1, 0)}, "x", scheduler="pool", pool=executor)
    assert executor.submit(pow, 2, 5).result() == 32


def test_results_of_larger_graphs(executor: ThreadPoolExecutor) -> None:
    graph: dict[Any, Any] = {("leaf", i): (inc, i) for i in range(1024)}
    level: list[Any] = [("leaf", i) for i in range(1024)]
    depth = 0
    while len(level) > 1:
        depth += 1
        upper = [("node", depth, j) for j in range(len(level) // 2)]
        graph.update({k: (add, level[2 * j], level[2 * j + 1]) for j, k in enumerate(upper)})
        level = upper
    graph.update(chain_graph(3000))
    keys = [level[0], ("c", 2999), [("leaf", i) for i in range(0, 1024, 100)]]
    expected = [1024 * 1025 // 2, 2999, [i + 1 for i in range(0, 1024, 100)]]
    for _ in range(2):  # the second run batches from the start of the measured durations
        assert taskloom.get(graph, keys, scheduler="pool", pool=executor) == expected


def test_executor_scheduler_registers_a_name_of_its_own(
    executor: ThreadPoolExecutor, registered_plugin: Any
) -> None:
    class MyExecutorPlugin:
        @taskloom.hookimpl
        def taskloom_schedulers(self) -> list[taskloom.SchedulerSpec]:
            return [
                taskloom.SchedulerSpec("my-executor", get=executor_scheduler(lambda: executor, "my-executor"))
            ]

    with registered_plugin(MyExecutorPlugin()):
        names = taskloom.get(
            {i: Task(thread_name) for i in range(4)}, list(range(4)), scheduler="my-executor"
        )
    assert all(name.startswith(PREFIX) for name in names)
    get = executor_scheduler(executor, "mine")
    assert get({"a": 1, "b": (inc, "a")}, ["b", "a"]) == [2, 1]


class Tagging(WorkerPlugin):
    name = "tagging"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.setups: list[str] = []

    def setup(self, worker: Worker) -> None:
        worker.tag = f"tagged {worker.name}"  # type: ignore[attr-defined]
        with self.lock:
            self.setups.append(worker.name)


def tag_and_meet(barrier: threading.Barrier) -> tuple[str, str]:
    barrier.wait()
    worker = get_worker()
    return worker.name, worker.tag  # type: ignore[attr-defined]


def test_worker_plugins_are_set_up_on_each_executor_thread(executor: ThreadPoolExecutor) -> None:
    plugin = Tagging()
    register_worker_plugin(plugin)
    try:
        barrier = threading.Barrier(2, timeout=10)
        graph: dict[Any, Any] = {i: Task(tag_and_meet, barrier) for i in range(2)}
        seen = taskloom.get(graph, [0, 1], scheduler="pool", pool=executor)
    finally:
        unregister_worker_plugin("tagging")
    assert {name for name, _ in seen} == set(plugin.setups) and len(plugin.setups) == 2
    assert all(tag == f"tagged {name}" for name, tag in seen)


class FailingSetup(WorkerPlugin):
    name = "no-database"

    def setup(self, worker: Worker) -> None:
        raise ConnectionError("database unreachable")


def test_failing_worker_plugin_setup_names_the_plugin(executor: ThreadPoolExecutor) -> None:
    ran: list[int] = []
    register_worker_plugin(FailingSetup())
    try:
        with pytest.raises(WorkerPluginError, match="no-database") as info:
            taskloom.get({"a": Task(ran.append, 1)}, "a", scheduler="pool", pool=executor)
    finally:
        unregister_worker_plugin("no-database")
    assert "database unreachable" in str(info.value) and ran == []
    assert taskloom.get({"a": (inc, 1)}, "a", scheduler="pool", pool=executor) == 2


def nested(executor: ThreadPoolExecutor, x: int) -> int:
    return int(taskloom.get({"y": (inc, x)}, "y", scheduler="pool", pool=executor))


def test_nested_compute_on_the_same_executor_does_not_deadlock() -> None:
    with ThreadPoolExecutor(1) as ex:
        graph: dict[Any, Any] = {i: Task(nested, ex, i) for i in range(4)}
        assert taskloom.get(graph, list(range(4)), scheduler="pool", pool=ex) == [1, 2, 3, 4]


class HookThreads:
    def __init__(self) -> None:
        self.threads: set[str] = set()

    @taskloom.hookimpl
    def taskloom_task_finish(
        self, key: Any, worker: str, duration: float, error: BaseException | None
    ) -> None:
        self.threads.add(threading.current_thread().name)


def test_diagnostics_hooks_fire_in_the_calling_thread(
    executor: ThreadPoolExecutor, registered_plugin: Any
) -> None:
    hooks = HookThreads()
    graph: dict[Any, Any] = {"a": Task(inc, 1), "b": Task(add, Ref("a"), 2)}
    with registered_plugin(hooks):
        assert taskloom.get(graph, "b", scheduler="pool", pool=executor) == 4
    assert hooks.threads == {threading.current_thread().name}
