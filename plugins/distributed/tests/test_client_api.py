"""The Client API a dask.distributed user reaches for: as_completed, wait, Future methods,
get_executor, the asyncio API, retries, unpicklable arguments, closing and cluster queries."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import os
import re
import threading
import time
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import taskloom
from taskloom.serialize import SerializationError
from taskloom.testing import live_processes, wait_gone, wait_until
from taskloom_distributed import (
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    Client,
    Future,
    as_completed,
    wait,
)

pytestmark = pytest.mark.timeout(120)

DEADLINE = 60.0


# -- functions the workers run ---------------------------------------------------------------------
def inc(x: int) -> int:
    return x + 1


def boom(x: Any = None) -> Any:
    raise ValueError(f"boom {x}")


def gated(path: str, value: Any = None) -> Any:
    """Hold the task running until the file ``path`` exists (the test creates it)."""
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.002)
    return value


def started_then_gated(started: str, gate: str, value: Any = None) -> Any:
    """Say the task started (creates ``started``), then wait for ``gate``."""
    Path(started).touch()
    return gated(gate, value)


def flaky(counter: str, failures: int) -> int:
    """Fail the first ``failures`` attempts (counted in the file ``counter``), then succeed."""
    path = Path(counter)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} failed")
    return attempt


def scale(x: int, *, by: int) -> int:
    return x * by


def touch(path: str, _: Any = None) -> str:
    Path(path).touch()
    return path


class Inner:
    def __init__(self) -> None:
        self.lock = threading.Lock()


class Outer:
    def __init__(self) -> None:
        self.name = "outer"
        self.inner = Inner()


# -- helpers -----------------------------------------------------------------------------------------


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Any]:
    """``gates(name)`` -> a gate path; every gate is opened at the end so no task stays held."""
    made: list[Path] = []

    def gate(name: str) -> str:
        path = tmp_path / f"gate-{name}"
        made.append(path)
        return str(path)

    yield gate
    for path in made:
        path.touch()


def open_gate(path: str) -> None:
    Path(path).touch()


def known_to_scheduler(client: Client, key: Any) -> bool:
    """Whether the cluster still has the task (after everything sent so far was handled)."""
    client.who_has()  # a round trip on the same stream: earlier messages are handled by now
    return key in client.cluster.scheduler.state.tasks


# -- as_completed --------------------------------------------------------------------------------------
def test_as_completed_yields_futures_in_the_order_they_finish(client: Client, gates: Any) -> None:
    a, b = gates("a"), gates("b")
    fa = client.submit(gated, a, "a", pure=False)
    fb = client.submit(gated, b, "b", pure=False)
    ac = as_completed([fa, fb])
    assert ac.count() == 2 and not ac.is_empty()
    open_gate(b)
    assert next(ac) is fb
    assert ac.count() == 1
    open_gate(a)
    assert next(ac) is fa
    assert ac.is_empty()
    with pytest.raises(StopIteration):
        next(ac)


def test_as_completed_takes_futures_added_while_iterating(client: Client) -> None:
    first = client.submit(inc, 100)
    ac = as_completed([first])
    seen = []
    for future in ac:
        seen.append(future.result())
        if len(seen) == 1:
            ac.update([client.submit(inc, 200), client.submit(inc, 300)])
            ac.add(first)  # added again: yielded again
    assert sorted(seen) == [101, 101, 201, 301]
    assert ac.count() == 0


def test_as_completed_with_results_and_errors(client: Client) -> None:
    futures = client.map(inc, range(10))
    assert sorted(r for _, r in as_completed(futures, with_results=True)) == list(range(1, 11))

    good, bad = client.submit(inc, 1), client.submit(boom, 1)
    with pytest.raises(ValueError, match="boom 1"):
        for _ in as_completed([good, bad], with_results=True):
            pass
    pairs = dict(as_completed([good, bad], with_results=True, raise_errors=False))
    assert pairs[good] == 2
    assert isinstance(pairs[bad], ValueError)


def test_as_completed_batches(client: Client) -> None:
    futures = client.map(inc, range(50))
    batches = list(as_completed(futures).batches())
    assert all(batch for batch in batches)
    assert sorted(f.key for batch in batches for f in batch) == sorted(f.key for f in futures)
    with_results = as_completed(client.map(inc, range(20, 30)), with_results=True).batches()
    assert sorted(r for batch in with_results for _, r in batch) == list(range(21, 31))


def test_as_completed_refuses_what_is_not_a_future() -> None:
    with pytest.raises(TypeError, match=r"taskloom Futures.*int"):
        as_completed([1])  # type: ignore[list-item]


# -- wait ---------------------------------------------------------------------------------------------
def test_wait_for_all(client: Client) -> None:
    futures = client.map(inc, range(20))
    result = wait(futures)
    assert result.done == set(futures) and result.not_done == set()
    assert all(f.done() for f in result[0])


def test_wait_first_completed_and_first_exception(client: Client, gates: Any) -> None:
    held = client.submit(gated, gates("held"), pure=False)
    quick = client.submit(inc, 7)
    done, not_done = wait([held, quick], return_when=FIRST_COMPLETED)
    assert quick in done and held in not_done

    failing = client.submit(boom, "first")
    done, not_done = wait([held, failing], return_when=FIRST_EXCEPTION)
    assert done == {failing} and not_done == {held}


def test_wait_timeout_says_how_many_are_pending(client: Client, gates: Any) -> None:
    held = client.submit(gated, gates("timeout"), pure=False)
    quick = client.submit(inc, 8)
    quick.result()
    with pytest.raises(TimeoutError, match="1 of 2 futures were still pending"):
        wait([held, quick], timeout=0.2)
    with pytest.raises(ValueError, match="return_when must be one of"):
        wait([quick], return_when="SOMETIMES")


# -- Future ---------------------------------------------------------------------------------------------
def test_future_status_done_and_result_timeout(client: Client, gates: Any) -> None:
    gate = gates("status")
    future = client.submit(gated, gate, 5, pure=False)
    assert future.status == "pending" and not future.done()
    with pytest.raises(TimeoutError, match=re.escape(f"{future.key!r} did not finish within 0.1 s")):
        future.result(timeout=0.1)
    with pytest.raises(TimeoutError, match="did not finish"):
        future.exception(timeout=0.1)
    open_gate(gate)
    assert future.result(timeout=DEADLINE) == 5
    assert future.status == "finished" and future.done() and not future.cancelled()
    assert future.exception() is None and future.traceback() is None
    assert future.type == "int"


def test_future_exception_and_remote_traceback(client: Client) -> None:
    future = client.submit(boom, 42)
    exc = future.exception(timeout=DEADLINE)
    assert isinstance(exc, ValueError) and str(exc) == "boom 42"
    assert future.status == "error"
    tb = future.traceback()
    assert isinstance(tb, types.TracebackType)
    frames = traceback.extract_tb(tb)  # the worker's frames, down to the line that raised
    assert frames[-1].name == "boom"
    assert frames[-1].lineno == boom.__code__.co_firstlineno + 1
    assert "in boom" in "".join(traceback.format_tb(tb))


def test_done_callbacks_run_on_a_client_thread_and_errors_are_logged(
    client: Client, gates: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gate = gates("callback")
    future = client.submit(gated, gate, 1, pure=False)
    calls: list[tuple[Future, str]] = []
    finished = threading.Event()

    def record(f: Future) -> None:
        calls.append((f, threading.current_thread().name))

    def broken(f: Future) -> None:
        raise RuntimeError("callback went wrong")

    future.add_done_callback(record)
    future.add_done_callback(broken)
    future.add_done_callback(lambda f: finished.set())
    assert calls == []
    with caplog.at_level(logging.ERROR, logger="taskloom.distributed"):
        open_gate(gate)
        assert finished.wait(DEADLINE)
    [(called_with, thread)] = calls
    assert called_with is future
    assert thread != threading.current_thread().name and thread.startswith("taskloom-client-callback")
    [record_] = [r for r in caplog.records if "callback" in r.getMessage()]
    assert record_.exc_info is not None and "callback went wrong" in str(record_.exc_info[1])

    again = threading.Event()
    future.add_done_callback(lambda f: again.set())  # already done: called all the same
    assert again.wait(DEADLINE)


def test_cancel_releases_a_running_task_and_result_raises(client: Client, gates: Any, tmp_path: Path) -> None:
    gate, started = gates("cancel"), str(tmp_path / "started")
    running = client.submit(started_then_gated, started, gate, pure=False)
    waiting = client.submit(touch, str(tmp_path / "never"), running)  # needs the running one
    wait_until(lambda: os.path.exists(started), what="the task started")

    running.cancel()
    waiting.cancel()
    assert running.cancelled() and running.status == "cancelled" and running.done()
    with pytest.raises(CancelledError, match=re.escape(f"future {running.key!r} was cancelled")):
        running.result()
    with pytest.raises(CancelledError, match=re.escape(repr(waiting.key))):
        client.gather([waiting])
    assert not known_to_scheduler(client, waiting.key)  # forgotten at once: it had not started

    open_gate(gate)  # the running one finishes, and the cluster drops its result
    wait_until(lambda: not known_to_scheduler(client, running.key), what="the cancelled task was released")
    assert not (tmp_path / "never").exists()
    assert client.submit(inc, 1).result() == 2


def test_resubmitting_a_cancelled_key_computes_it_again(client: Client) -> None:
    first = client.submit(inc, 555)
    first.cancel()
    again = client.submit(inc, 555)
    assert again.key == first.key
    assert again.result(timeout=DEADLINE) == 556
    assert first.cancelled()


def test_dropping_the_last_future_releases_the_result(client: Client) -> None:
    future = client.submit(inc, 777)
    future.result()
    key = future.key
    assert key in client.who_has()
    del future
    wait_until(lambda: key not in client.who_has(), what="the dropped result was released")


# -- gather ---------------------------------------------------------------------------------------------
def test_gather_keeps_the_shape_and_can_skip_errors(client: Client) -> None:
    a, b, bad = client.submit(inc, 1), client.submit(inc, 2), client.submit(boom, 3)
    assert client.gather({"a": a, "nested": [b, (a,)]}) == {"a": 2, "nested": [3, (2,)]}
    with pytest.raises(ValueError, match="boom 3"):
        client.gather([a, bad])
    assert client.gather([a, bad, b], errors="skip") == [2, 3]


# -- executor -------------------------------------------------------------------------------------------
def test_executor_is_a_concurrent_futures_executor(client: Client) -> None:
    with client.get_executor() as executor:
        assert isinstance(executor, cf.Executor)
        futures = [executor.submit(inc, i) for i in range(10)]
        assert all(isinstance(f, cf.Future) for f in futures)
        assert not cf.wait(futures).not_done
        assert sorted(f.result() for f in cf.as_completed(futures)) == list(range(1, 11))
        assert list(executor.map(inc, range(30))) == list(range(1, 31))
        failed = executor.submit(boom, "executor")
        assert isinstance(failed.exception(timeout=DEADLINE), ValueError)
        assert executor.submit(scale, 6, by=7).result() == 42
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(inc, 1)
    assert client.status == "running"
    assert client.submit(inc, 41).result() == 42


def test_executor_cancel_and_map_timeout(client: Client, gates: Any, tmp_path: Path) -> None:
    gate, started = gates("executor"), str(tmp_path / "started")
    executor = client.get_executor()
    held = executor.submit(started_then_gated, started, gate)
    wait_until(lambda: os.path.exists(started), what="the task started")
    assert held.cancel()
    assert held.cancelled()
    assert cf.wait([held], timeout=DEADLINE).done == {held}

    results = executor.map(gated, [gates("executor-map")], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(results)
    open_gate(gate)
    executor.shutdown(wait=True)


def test_executor_passes_retries(client: Client, tmp_path: Path) -> None:
    with client.get_executor(retries=2) as executor:
        assert executor.submit(flaky, str(tmp_path / "n"), 2).result(timeout=DEADLINE) == 3
    with pytest.raises(TypeError, match=r"unknown option.*workers"):
        client.get_executor(workers=["x"])


# -- asyncio --------------------------------------------------------------------------------------------
def test_asynchronous_client_on_a_running_cluster(client: Client, gates: Any) -> None:
    gate, never = gates("async"), gates("async-never")

    async def main() -> None:
        c = await Client(client.scheduler_address, asynchronous=True, auth_token=client.auth_token)
        assert c.status == "running"
        future = c.submit(inc, 10)
        assert await future == 11
        assert await c.submit(inc, 11) == 12
        assert await c.gather(c.map(inc, range(5))) == [1, 2, 3, 4, 5]
        [data] = await c.scatter([20])
        assert await c.submit(inc, data) == 21
        assert await future.exception() is None
        with pytest.raises(ValueError, match="boom async"):
            await c.submit(boom, "async")
        info = await c.scheduler_info()
        assert len(info["workers"]) == 2

        # the loop is not blocked while a result is awaited: this coroutine opens the gate
        held = c.submit(gated, gate, "opened", pure=False)

        async def opener() -> None:
            await asyncio.sleep(0)
            open_gate(gate)

        result, _ = await asyncio.wait_for(asyncio.gather(held, opener()), DEADLINE)
        assert result == "opened"

        slow = c.submit(gated, never, pure=False)
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s"):
            await slow.result(timeout=0.05)
        await c.cancel(slow)
        with pytest.raises(CancelledError):
            await slow
        open_gate(never)  # the task still runs on its worker: let it finish

        futures = c.map(inc, range(100, 110))
        assert sorted([await f async for f in as_completed(futures)]) == list(range(101, 111))
        done, not_done = await wait(futures)
        assert len(done) == 10 and not not_done
        pairs = [pair async for pair in as_completed([c.submit(inc, 1)], with_results=True)]
        assert pairs[0][1] == 2
        await c.close()
        assert c.status == "closed"

    asyncio.run(main())
    assert client.submit(inc, 1).result() == 2  # the shared cluster is untouched


def test_asynchronous_client_starts_its_own_cluster_without_blocking_the_loop() -> None:
    async def main() -> tuple[int, list[int], Client]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(ticker())
        async with Client(asynchronous=True, n_workers=1, threads_per_worker=1) as c:
            started_ticks = ticks
            pids = list(c.cluster.worker_pids)
            assert await c.submit(inc, 1) == 2
            assert taskloom.config.get("scheduler") is c
        beat.cancel()
        return started_ticks, pids, c

    ticks, pids, c = asyncio.run(main())
    assert ticks > 2, "the event loop was blocked while the cluster started"
    assert c.status == "closed"
    assert not wait_gone(live_processes(pids), 20)


# -- retries --------------------------------------------------------------------------------------------
def test_retries_rerun_a_failing_task(client: Client, tmp_path: Path) -> None:
    assert client.submit(flaky, str(tmp_path / "a"), 2, retries=2).result(timeout=DEADLINE) == 3
    with pytest.raises(RuntimeError, match="attempt 2 failed"):
        client.submit(flaky, str(tmp_path / "b"), 2, retries=1).result(timeout=DEADLINE)
    counters = [str(tmp_path / f"m{i}") for i in range(3)]
    assert client.gather(client.map(flaky, counters, [1, 1, 1], retries=1)) == [2, 2, 2]


def test_retries_on_compute_get_and_persist(client: Client, tmp_path: Path) -> None:
    task = taskloom.delayed(flaky)(str(tmp_path / "c"), 1)
    assert client.compute(task, retries=1).result(timeout=DEADLINE) == 2
    assert client.get({"x": (flaky, str(tmp_path / "g"), 2)}, "x", retries=2) == 3
    with pytest.raises(RuntimeError, match="attempt 1 failed"):
        client.get({"x": (flaky, str(tmp_path / "g0"), 1)}, "x")
    persisted = client.persist(taskloom.delayed(flaky)(str(tmp_path / "p"), 1), retries=1)
    assert persisted.compute() == 2


# -- pickling -------------------------------------------------------------------------------------------
def test_unpicklable_argument_is_reported_at_submit_with_path_and_key(client: Client) -> None:
    with pytest.raises(SerializationError) as info:
        client.submit(inc, Outer(), key="holds-a-lock")
    message = str(info.value)
    assert "'holds-a-lock'" in message and "args[0].inner.lock" in message and "lock" in message
    assert not known_to_scheduler(client, "holds-a-lock")  # nothing was sent

    with pytest.raises(SerializationError, match=r"kwargs\['obj'\]\.inner\.lock"):
        client.submit(inc, 1, obj=Outer())
    with pytest.raises(SerializationError, match=r"task 'listed-1'.*args\[0\]\.inner\.lock"):
        client.map(inc, [1, Outer()], key=["listed-0", "listed-1"])
    assert not known_to_scheduler(client, "listed-0")  # a bad item stops the whole map


def test_lambdas_and_closures_travel_by_value(client: Client) -> None:
    assert client.submit(lambda x: x * 3, 5).result() == 15
    offset = 4
    assert client.gather(client.map(lambda x: x + offset, range(3))) == [4, 5, 6]


# -- closing and cluster queries -----------------------------------------------------------------------
def _client_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("taskloom-")]


def test_with_client_closes_everything(gates: Any) -> None:
    before = set(_client_threads())
    with Client(n_workers=1, threads_per_worker=1) as c:
        pids = list(c.cluster.worker_pids)
        called = threading.Event()
        f = c.submit(inc, 1)
        f.add_done_callback(lambda _: called.set())
        assert called.wait(DEADLINE)
        assert taskloom.config.get("scheduler") is c
        pending = c.submit(gated, gates("close"), pure=False)
    assert c.status == "closed"
    assert pending.cancelled()  # what was still pending is cancelled, not left hanging
    with pytest.raises(CancelledError):
        pending.result()
    assert taskloom.config.get("scheduler") is not c
    left = wait_gone(live_processes(pids), 20)
    assert not left, f"worker processes outlived the client: {left}"
    assert set(_client_threads()) <= before, "client threads outlived the client"
    with pytest.raises(taskloom.errors.TaskloomError, match="closed"):
        c.submit(inc, 1)


def test_scheduler_info_describes_each_worker(client: Client) -> None:
    wait_until(
        lambda: all(w["memory"] > 0 for w in client.scheduler_info()["workers"].values()),
        what="the workers reported their memory",
    )
    workers = client.scheduler_info()["workers"]
    assert len(workers) == 2
    for address, w in workers.items():
        assert w["address"] == address and address.startswith("tcp://127.0.0.1:")
        assert isinstance(w["name"], str) and w["name"]
        assert w["nthreads"] == 1
        assert w["memory_limit"] > 0
        assert w["memory"] > 0
        assert isinstance(w["tasks"], int) and w["tasks"] >= 0


def test_who_has_and_has_what(client: Client) -> None:
    future = client.submit(inc, 1000)
    future.result()
    [scattered] = client.scatter([list(range(5))])
    who_has = client.who_has([future, scattered])
    assert set(who_has) == {future.key, scattered.key}
    workers = set(client.scheduler_info()["workers"])
    [holder] = who_has[future.key]
    assert holder in workers
    assert client.who_has(future) == {future.key: [holder]}
    has_what = client.has_what()
    assert set(has_what) == workers
    assert future.key in has_what[holder]
    assert client.has_what(workers=[holder]) == {holder: has_what[holder]}


class _ClassicCollection:
    """A collection whose graph is in the classic tuple spec."""

    def __init__(self, graph: dict[Any, Any], keys: list[Any]) -> None:
        self.graph, self.keys = graph, keys

    def __taskloom_graph__(self) -> dict[Any, Any]:
        return self.graph

    def __taskloom_keys__(self) -> list[Any]:
        return self.keys


def test_classic_tuple_graphs_of_functions_sent_by_value_get_their_inputs(client: Client) -> None:
    def inc(x: int) -> int:  # defined here: it travels by value, not by reference
        return x + 1

    graph = {"a": (inc, 1), ("b", 0): (inc, "a"), "c": (sum, ["a", ("b", 0)])}
    assert client.compute(_ClassicCollection(graph, ["c"])).result() == 5
    assert client.get(graph, ["c", ("b", 0)]) == [5, 3]
    [persisted] = client.persist(_ClassicCollection(graph, [("b", 0)]))
    assert persisted.result() == 3


def test_a_gate_lets_every_waiting_thread_through_once_open_and_times_out_while_shut() -> None:
    from taskloom_distributed.client.futures import Gate

    gate = Gate()
    assert gate.wait(0.01) is False and gate.wait(0) is False
    passed: list[bool] = []
    waiters = [threading.Thread(target=lambda: passed.append(gate.wait(30))) for _ in range(5)]
    for t in waiters:
        t.start()
    gate.open()
    gate.open()  # twice: still open, no error
    for t in waiters:
        t.join(30)
    assert passed == [True] * 5
    assert gate.wait(0) is True and gate.wait() is True  # and it stays open


def test_several_threads_blocked_on_one_future_all_get_its_result(client: Client, gates: Any) -> None:
    gate = gates("many-readers")
    future = client.submit(gated, gate, 7, pure=False)
    results: list[int] = []

    def read() -> None:
        results.append(future.result(timeout=DEADLINE))

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    open_gate(gate)
    for t in readers:
        t.join(DEADLINE)
    assert results == [7] * 4
