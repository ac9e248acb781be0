"""The ``threads`` scheduler: a reused pool, its size, concurrency, nesting, interrupts and errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
import taskloom
from taskloom import Ref, Task

taskloom_threads = pytest.importorskip("taskloom_threads")

pytestmark = pytest.mark.timeout(60)


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def current_thread(*deps: Any) -> threading.Thread:
    return threading.current_thread()


def meet(barrier: threading.Barrier) -> threading.Thread:
    """Wait until ``barrier.parties`` tasks run at once (so that many threads exist)."""
    barrier.wait()
    return threading.current_thread()


def record(log: list[Any], lock: threading.Lock, item: Any, *deps: Any) -> Any:
    with lock:
        log.append(item)
    return item


def fail(*deps: Any) -> None:
    raise ValueError("task failed")


def threads_of(graph: dict[Any, Any], **kwargs: Any) -> set[threading.Thread]:
    return set(taskloom.get(graph, list(graph), scheduler="threads", **kwargs))


def chain(start: int, length: int) -> tuple[dict[Any, Any], Any]:
    graph: dict[Any, Any] = {("c", start, 0): start}
    for i in range(1, length + 1):
        graph["c", start, i] = (inc, ("c", start, i - 1))
    return graph, ("c", start, length)


# -- the pool ----------------------------------------------------------------------------------


def test_pool_threads_are_reused_across_computes() -> None:
    graph = {i: Task(current_thread) for i in range(20)}
    first = threads_of(graph, num_workers=2)
    pool_threads = taskloom_threads.get_pool(2).threads
    count = threading.active_count()
    second = threads_of(graph, num_workers=2)
    assert taskloom_threads.get_pool(2).threads == pool_threads  # the same Thread objects
    assert len(pool_threads) == 2 and all(t.is_alive() for t in pool_threads)
    assert first | second <= set(pool_threads)
    assert threading.active_count() == count


def test_pool_size_follows_num_workers() -> None:
    barrier = threading.Barrier(3, timeout=10)
    used = threads_of({i: Task(meet, barrier) for i in range(3)}, num_workers=3)
    pool_threads = taskloom_threads.get_pool(3).threads
    assert len(used) == 3 and used <= set(pool_threads)
    assert len(pool_threads) == 3
    assert all(t.name.startswith("taskloom-threads") for t in pool_threads)


def test_pool_size_follows_the_num_workers_config(clean_config: Any) -> None:
    barrier = threading.Barrier(2, timeout=10)
    with clean_config.set(num_workers=2):
        used = threads_of({i: Task(meet, barrier) for i in range(2)})
    assert len(used) == 2 and used <= set(taskloom_threads.get_pool(2).threads)
    assert len(taskloom_threads.get_pool(2).threads) == 2


def test_num_workers_argument_overrides_config(clean_config: Any) -> None:
    with clean_config.set(num_workers=2):
        used = threads_of({i: Task(current_thread) for i in range(10)}, num_workers=1)
    assert used <= set(taskloom_threads.get_pool(1).threads)


def test_concurrent_computes_from_four_threads() -> None:
    start = threading.Barrier(4, timeout=10)
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            graph, key = chain(n * 1000, 300)
            start.wait()
            for _ in range(5):
                results[n] = taskloom.get(graph, key, scheduler="threads", num_workers=2)
        except BaseException as exc:
            errors.append(exc)

    clients = [threading.Thread(target=client, args=(n,), name=f"client-{n}") for n in range(4)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(30)
    assert not errors
    assert results == {n: n * 1000 + 300 for n in range(4)}


def nested_compute(x: int) -> int:
    inner = {"a": x, "b": (inc, "a"), "c": (add, "a", "b")}
    return int(taskloom.get(inner, "c", scheduler="threads", num_workers=1))


def test_nested_compute_on_a_one_thread_pool_does_not_deadlock() -> None:
    graph = {"x": Task(nested_compute, 1), "y": Task(nested_compute, 2), "z": Task(add, Ref("x"), Ref("y"))}
    assert taskloom.get(graph, "z", scheduler="threads", num_workers=1) == 3 + 5


# -- interrupts and errors -------------------------------------------------------------------


CHILD = textwrap.dedent(
    """
    import time, taskloom
    from taskloom import Task

    def work(i):
        if i == 0:
            print("started", flush=True)
        time.sleep(30)

    try:
        taskloom.get({i: Task(work, i) for i in range(4)}, list(range(4)), scheduler="threads", num_workers=4)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
    """
)


def test_keyboard_interrupt_returns_control_within_a_second() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"  # a task is running
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline() == "interrupted\n"
        interrupted = time.monotonic() - sent
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"KeyboardInterrupt reached the caller after {interrupted:.2f} s, but the "
                "process was still running 10 s after the signal"
            )
        exited = time.monotonic() - sent
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert interrupted < 1, f"KeyboardInterrupt reached the caller after {interrupted:.2f} s"
    assert "KeyboardInterrupt" in stderr
    assert proc.returncode != 0
    assert exited < 3, f"the process exited {exited:.1f} s after the signal"


def test_tasks_after_a_failure_do_not_run() -> None:
    log: list[Any] = []
    lock = threading.Lock()
    graph = {
        "a": Task(record, log, lock, "a"),
        "b": Task(fail, Ref("a")),
        "c": Task(record, log, lock, "c", Ref("b")),
        "d": Task(record, log, lock, "d", Ref("c")),
    }
    with pytest.raises(ValueError, match="task failed"):
        taskloom.get(graph, "d", scheduler="threads", num_workers=4)
    assert log == ["a"]


def test_failure_stops_queued_independent_tasks() -> None:
    log: list[Any] = []
    lock = threading.Lock()
    graph: dict[Any, Any] = {"fail": Task(fail)}
    graph.update({("other", i): Task(record, log, lock, i) for i in range(50)})
    with pytest.raises(ValueError, match="task failed"):
        taskloom.get(graph, list(graph), scheduler="threads", num_workers=1)  # "fail" runs first
    assert len(log) < 5, f"{len(log)} of 50 tasks ran after the failure"


def test_one_worker_reduces_a_tree_depth_first() -> None:
    log: list[Any] = []
    lock = threading.Lock()
    graph: dict[Any, Any] = {("leaf", i): Task(record, log, lock, ("leaf", i)) for i in range(8)}
    level: list[Any] = [("leaf", i) for i in range(8)]
    depth = 0
    while len(level) > 1:
        depth += 1
        upper = [("sum", depth, j) for j in range(len(level) // 2)]
        for j, key in enumerate(upper):
            graph[key] = Task(record, log, lock, key, Ref(level[2 * j]), Ref(level[2 * j + 1]))
        level = upper
    taskloom.get(graph, level[0], scheduler="threads", num_workers=1)
    assert log[:3] == [("leaf", 0), ("leaf", 1), ("sum", 1, 0)]  # leaves pairwise, as planned
