"""What keeps the per-task cost low: root tasks placed in runs, queued tasks per thread, batched results."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from taskloom_distributed.scheduler.state import SchedulerState
from taskloom_distributed.worker.runner import Outcome, TaskRunner
from taskloom_distributed.worker.state import WorkerState

pytestmark = pytest.mark.timeout(60)

A, B = "tcp://a:1", "tcp://b:1"


def computes(out: Any) -> dict[Any, str]:
    return {m["key"]: r[1] for r, m in out if r[0] == "worker" and m["op"] == "compute-task"}


# -- the scheduler: inputs of one reduction are made on one worker --------------------------------
def test_root_tasks_submitted_together_go_to_workers_in_runs_of_consecutive_priority() -> None:
    st = SchedulerState()
    st.add_worker(A)
    st.add_worker(B)
    leaves = [f"leaf-{i}" for i in range(16)]
    tasks: dict[Any, tuple[Any, list[Any]]] = {k: ("spec", []) for k in leaves}
    tasks["sum"] = ("spec", leaves)
    placed = computes(st.update_graph("c1", tasks, ["sum"], {k: i for i, k in enumerate(tasks)}))
    first, second = placed["leaf-0"], placed["leaf-8"]
    assert first != second
    assert [placed[k] for k in leaves] == [first] * 8 + [second] * 8


def test_a_few_root_tasks_are_still_spread_one_by_one() -> None:
    st = SchedulerState()
    st.add_worker(A)
    st.add_worker(B)
    tasks: dict[Any, tuple[Any, list[Any]]] = {"x": ("spec", []), "y": ("spec", [])}
    placed = computes(st.update_graph("c1", tasks, ["x", "y"], {"x": 0, "y": 1}))
    assert {placed["x"], placed["y"]} == {A, B}


# -- the worker's state machine: tasks queued behind the running one ------------------------------
def _compute(ws: WorkerState, key: str, priority: int) -> list[tuple[Any, ...]]:
    return ws.compute_task({"key": key, "spec": None, "priority": (priority,), "who_has": {}})


def test_prefetch_hands_more_tasks_to_the_threads_in_priority_order() -> None:
    ws = WorkerState(1, A)
    started = [ins[1] for k in range(5) for ins in _compute(ws, f"t{k}", k) if ins[0] == "execute"]
    assert started == ["t0"]  # one thread: one task at a time
    more = [ins[1] for ins in ws.set_prefetch(3) if ins[0] == "execute"]
    assert more == ["t1", "t2", "t3"]
    assert [ins[1] for ins in ws.executed("t0", 1) if ins[0] == "execute"] == ["t4"]


# -- the task threads ------------------------------------------------------------------------------
def test_runner_reports_every_result_on_the_loop_and_its_threads_end() -> None:
    reported: list[Outcome] = []
    report_threads: set[int] = set()

    def run(key: Any, spec: Any) -> tuple[bool, Any]:
        if spec == "fail":
            return False, ("error", "traceback")
        return True, spec * 2

    async def main() -> list[threading.Thread]:
        loop = asyncio.get_running_loop()
        all_done = asyncio.Event()

        def report(batch: list[Outcome]) -> None:
            report_threads.add(threading.get_ident())
            reported.extend(batch)
            if len(reported) == 101:
                all_done.set()

        runner = TaskRunner(2, loop, run, report, name="test-runner")
        for i in range(100):
            runner.submit(f"k{i}", i, epoch=7)
        runner.submit("bad", "fail", epoch=7)
        await asyncio.wait_for(all_done.wait(), 30)
        runner.stop(time.monotonic() + 10)
        return runner.threads

    threads = asyncio.run(main())
    assert report_threads == {threading.get_ident()}  # asyncio.run's loop runs on this thread
    values = {o.key: o.value for o in reported if o.ok}
    assert values == {f"k{i}": 2 * i for i in range(100)}
    [bad] = [o for o in reported if not o.ok]
    assert bad.key == "bad" and bad.value == ("error", "traceback") and bad.epoch == 7
    assert all(o.start <= o.stop for o in reported)
    assert not any(t.is_alive() for t in threads)


# -- the garbage collector's first threshold while a scheduler or worker runs ----------------------
def _thresholds() -> tuple[int, ...]:
    import gc

    return gc.get_threshold()


def test_a_cluster_raises_the_collector_threshold_while_it_runs_and_puts_it_back() -> None:
    import gc

    import taskloom
    from taskloom_distributed import Client

    before = gc.get_threshold()
    with Client(n_workers=1, threads_per_worker=1) as client:
        assert gc.get_threshold()[0] == 10_000 and gc.get_threshold()[1:] == before[1:]
        assert [t[0] for t in client.run(_thresholds).values()] == [10_000]  # the worker process
    assert gc.get_threshold() == before
    with taskloom.config.set({"distributed.admin.gc_threshold": 0}):
        with Client(n_workers=1, threads_per_worker=1, processes=False):
            assert gc.get_threshold() == before  # 0: the collector is left alone
    with taskloom.config.set({"distributed.admin.gc_threshold": 20_000}):
        with Client(n_workers=1, threads_per_worker=1, processes=False):  # scheduler and worker here
            assert gc.get_threshold()[0] == 20_000
            with Client(n_workers=1, threads_per_worker=1, processes=False):
                assert gc.get_threshold()[0] == 20_000
            assert gc.get_threshold()[0] == 20_000  # the first cluster still runs
    assert gc.get_threshold() == before
