"""The ``dask`` scheduler: taskloom graphs on a dask.distributed cluster.

The core conformance suite runs on a cluster whose workers are threads of this process, and on
one of two worker processes.  ``in_process`` is ``False`` for both: even when the workers are
threads here, the graph travels to the scheduler pickled, so tasks see copies of the objects in
it (a task's exception reaches the caller as an equal copy, not the same object) -- exactly what
the suite's out-of-process mode checks.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import pytest
import taskloom
import taskloom_dask
from taskloom import Ref, Task, delayed
from taskloom.testing import SchedulerConformance
from taskloom.testing.conformance import HookRecorder, add, inc, mul

pytestmark = pytest.mark.timeout(600)


def current_thread_name() -> str:
    return threading.current_thread().name


class TestConformanceOnThreadWorkers(SchedulerConformance):
    scheduler = "dask"
    in_process = False
    max_live_intermediates_check = False

    client: Any = None

    @pytest.fixture(autouse=True)
    def _use_client(self, dask_client: Any) -> None:
        self.client = dask_client

    def options(self, **kwargs: Any) -> dict[str, Any]:
        return super().options(client=self.client, **kwargs)


class TestConformanceOnWorkerProcesses(SchedulerConformance):
    scheduler = "dask"
    in_process = False
    max_live_intermediates_check = False

    client: Any = None

    @pytest.fixture(autouse=True)
    def _use_client(self, dask_process_client: Any) -> None:
        self.client = dask_process_client

    def options(self, **kwargs: Any) -> dict[str, Any]:
        return super().options(client=self.client, **kwargs)


def test_registered_with_its_distribution() -> None:
    spec = taskloom.schedulers()["dask"]
    assert spec.distribution == "taskloom-dask"
    assert spec.get is taskloom_dask.distributed.get


def test_without_a_client_the_error_says_what_to_do() -> None:
    with pytest.raises(taskloom_dask.NoClientError, match=r"no distributed\.Client is active"):
        taskloom.get({"a": (inc, 1)}, "a", scheduler="dask")


def test_uses_the_current_client(dask_client: Any) -> None:
    with dask_client.as_current():
        assert taskloom.get({"a": (inc, 1)}, "a", scheduler="dask") == 2
        assert delayed(inc)(delayed(add)(1, 2)).compute(scheduler="dask") == 4


def test_taskloom_config_can_select_it_and_its_client(dask_client: Any, clean_config: Any) -> None:
    with dask_client.as_current(), clean_config.set(scheduler="dask"):
        assert taskloom.get({"a": (inc, 1)}, "a") == 2
    with clean_config.set(scheduler="dask", client=dask_client):
        assert taskloom.get({"a": (inc, 1)}, "a") == 2


def test_same_key_names_in_concurrent_computes_do_not_meet(dask_client: Any) -> None:
    """Each compute's keys are renamed: equal names with different tasks give their own results."""
    results: dict[int, Any] = {}

    def run(n: int) -> None:
        graph: dict[Any, Any] = {"x": n, ("y", 0): (mul, "x", 10), "out": Task(add, Ref(("y", 0)), Ref("x"))}
        results[n] = [
            taskloom.get(graph, ["out", ("y", 0)], scheduler="dask", client=dask_client) for _ in range(3)
        ]

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: [[11 * n, 10 * n]] * 3 for n in range(4)}


def test_unusual_keys_and_literal_dask_nodes(dask_client: Any) -> None:
    from dask._task_spec import DataNode, TaskRef

    node = TaskRef("not-a-reference")  # a Dask object as plain data: Dask must not evaluate it
    graph: dict[Any, Any] = {
        1: 5,
        2.5: (inc, 1),
        b"raw": Task(mul, Ref(1), Ref(2.5)),
        ("t", (1, 2)): Task(lambda *args, **kw: (args, kw), node, [Ref(1), {"n": node}], k={Ref(1)}),
        "data": DataNode(None, 3),
    }
    keys = [b"raw", ("t", (1, 2)), "data"]
    out = taskloom.get(graph, keys, scheduler="dask", client=dask_client)
    assert out[0] == 30
    assert out[1] == ((node, [5, {"n": node}]), {"k": {5}})
    assert isinstance(out[2], DataNode)


def test_linear_chains_are_fused_and_every_task_still_reports(
    dask_client: Any, registered_plugin: Any
) -> None:
    graph: dict[Any, Any] = {("c", 0): 0}
    for i in range(1, 3001):
        graph["c", i] = (inc, ("c", i - 1))
    recorder = HookRecorder()
    with registered_plugin(recorder):
        assert taskloom.get(graph, ("c", 3000), scheduler="dask", client=dask_client) == 3000
    assert len(recorder.of("task_finish")) == 3000
    assert taskloom.get(graph, ("c", 10), scheduler="dask", client=dask_client, fuse=False) == 10


def test_a_failing_hook_fails_the_compute(dask_client: Any, registered_plugin: Any) -> None:
    class Broken:
        @taskloom.hookimpl
        def taskloom_task_finish(self, key: Any, worker: str, duration: float, error: Any) -> None:
            raise RuntimeError("hook failed")

    with registered_plugin(Broken()), pytest.raises(RuntimeError, match="hook failed"):
        taskloom.get({"a": (inc, 1)}, "a", scheduler="dask", client=dask_client)


def test_client_get_options_pass_through(dask_client: Any) -> None:
    workers = list(dask_client.scheduler_info()["workers"])
    graph: dict[Any, Any] = {"a": Task(current_thread_name)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        thread = taskloom.get(graph, "a", scheduler="dask", client=dask_client, workers=workers, retries=1)
    assert "Dask-Default-Threads" in thread
