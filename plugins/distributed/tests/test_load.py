"""Load: a 20,001-task graph on a 2-worker cluster with the scheduler's memory per task measured,
and 8 clients submitting at once to the same scheduler.

The cluster is ``taskloom scheduler`` and two ``taskloom worker`` processes, so the scheduler's
memory (psutil RSS of its process) is its own.  The 100,000-task figure is measured by
``bench/bench_distributed_load.py``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from taskloom.bench.workloads import inc, neighbour_sums, total
from taskloom.testing import wait_until
from taskloom_distributed import Client

pytestmark = pytest.mark.timeout(180)

TOKEN = "load-test-token"


graph = neighbour_sums


class Sampler:
    """The peak RSS of a process, sampled on a thread every ``interval`` s."""

    def __init__(self, process: psutil.Process, interval: float = 0.05) -> None:
        self.process = process
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.process.memory_info().rss)
        return self.peak


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, cli_processes: Any
) -> Iterator[tuple[str, psutil.Process]]:
    """A scheduler and two single-threaded workers, each a process of its own: (address, scheduler)."""
    directory: Path = tmp_path_factory.mktemp("load")
    with cli_processes(directory) as start:
        scheduler = start("scheduler", "--port", "0", "--auth-token", TOKEN)
        address = scheduler.wait_for(r"scheduler at (tcp://\S+)").group(1)
        workers = [start("worker", address, "--nthreads", "1", "--auth-token", TOKEN) for _ in range(2)]
        for w in workers:
            w.wait_for("worker at")
        yield address, scheduler.psutil


def connect(address: str) -> Client:
    return Client(address, auth_token=TOKEN, set_as_default=False)


def test_a_20000_task_graph_completes_and_the_scheduler_memory_per_task_is_recorded(
    cluster: tuple[str, psutil.Process], record_property: Callable[[str, Any], None]
) -> None:
    address, scheduler = cluster
    width = 10_000
    g, expected = graph(width)
    with connect(address) as client:
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 2)
        assert client.get(graph(100)[0], "total") == graph(100)[1]  # warm: imports, connections
        before = scheduler.memory_info().rss
        sampler = Sampler(scheduler)
        start = time.perf_counter()
        assert client.get(g, "total") == expected
        elapsed = time.perf_counter() - start
        peak = sampler.stop()
        info = wait_until(lambda: (i := client.scheduler_info())["tasks"] == {} and i)  # all released
    tasks = len(g)
    per_task = (peak - before) / tasks
    record_property("scheduler_bytes_per_task", round(per_task))
    record_property("seconds", round(elapsed, 2))
    print(
        f"\n{tasks} tasks in {elapsed:.1f} s ({elapsed / tasks * 1e6:.0f} us/task); scheduler RSS "
        f"{before / 1e6:.1f} MB -> peak {peak / 1e6:.1f} MB: {per_task:.0f} bytes per task"
    )
    assert sum(w["tasks"] for w in info["workers"].values()) == 0
    assert per_task < 20_000, f"the scheduler took {per_task:.0f} bytes per task"


def test_eight_clients_submitting_at_once_all_get_their_own_correct_results(
    cluster: tuple[str, psutil.Process],
) -> None:
    address, _ = cluster
    n_clients, n = 8, 300
    barrier = threading.Barrier(n_clients)
    results: dict[int, Any] = {}

    def one(c: int) -> None:
        try:
            with connect(address) as client:
                barrier.wait(60)
                futures = client.map(inc, range(c * n, (c + 1) * n))  # same function, different data
                summed = client.submit(total, futures)
                shared = client.map(inc, range(50))  # the same keys from every client
                g, expected = graph(200 + c)
                got = client.get(g, "total")
                results[c] = (
                    client.gather(futures) == list(range(c * n + 1, (c + 1) * n + 1)),
                    summed.result(timeout=120) == sum(range(c * n + 1, (c + 1) * n + 1)),
                    client.gather(shared) == list(range(1, 51)),
                    got == expected,
                )
        except BaseException as exc:  # reported by the main thread
            results[c] = exc

    threads = [threading.Thread(target=one, args=(c,), name=f"client-{c}") for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert results == {c: (True, True, True, True) for c in range(n_clients)}
    with connect(address) as client:
        wait_until(lambda: client.scheduler_info()["tasks"] == {}, 30)  # every client's tasks released
    assert not [t for t in threading.enumerate() if re.match(r"client-\d", t.name)]
