"""Time to recover from a worker kill in a 10,000-task graph, on a 2-worker LocalCluster.

The graph: ``depth`` layers of ``width`` tasks, each task adding two results of the layer before
(so results sit on both workers and move between them), summed at the end: 10,001 tasks by
default.  Each repeat computes it once undisturbed, then once more with fresh keys and
``SIGKILL``s the worker holding the most results halfway through (once half the tasks are
done).  Printed per repeat, and the median:

* ``clean``: seconds for the undisturbed compute;
* ``killed``: seconds for the compute with the kill; ``extra`` = killed - clean, the cost of the
  recovery (rescheduling, recomputing the lost results and their released inputs, running on
  one worker until the replacement is up);
* ``removed``: seconds from the kill until the scheduler had removed the worker (its nanny's
  report) and rescheduled its work; ``back``: until the nanny's replacement had registered;
* ``lost``: results held by the killed worker.

Run: ``python bench/bench_distributed_recovery.py [--width 2000] [--depth 5] [--repeat 3]``.
The answer is checked each time; nothing else is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import psutil


def first(i: int) -> int:
    return i


def combine(a: int, b: int) -> int:
    return a + b


def total(xs: list[int]) -> int:
    return sum(xs)


def build(width: int, depth: int) -> Any:
    from taskloom import delayed  # keys are fresh on every call (delayed is not pure)

    layer = [delayed(first)(i) for i in range(width)]
    for _ in range(depth - 1):
        layer = [delayed(combine)(layer[i], layer[(i + 1) % width]) for i in range(width)]
    return delayed(total)(layer)


def expected(width: int, depth: int) -> int:
    layer = list(range(width))
    for _ in range(depth - 1):
        layer = [layer[i] + layer[(i + 1) % width] for i in range(width)]
    return sum(layer)


async def _workers(scheduler: Any) -> dict[str, tuple[int, int]]:
    """address -> (pid, results held), read on the scheduler's own loop."""
    return {a: (ws.pid, len(ws.has_what)) for a, ws in scheduler.state.workers.items()}


async def _known(scheduler: Any) -> int:
    return len(scheduler.state.tasks)


async def _done(scheduler: Any) -> int:
    """Tasks computed (held, or released after use), read on the scheduler's own loop."""
    return sum(ts.state in ("memory", "released") for ts in scheduler.state.tasks.values())


def one_repeat(client: Any, width: int, depth: int) -> dict[str, float]:
    cluster = client.cluster

    def workers() -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = cluster._loop.run(_workers(cluster.scheduler))
        return out

    start = time.perf_counter()
    assert client.compute(build(width, depth)).result() == expected(width, depth)
    clean = time.perf_counter() - start

    while cluster._loop.run(_known(cluster.scheduler)):  # the clean run's tasks are forgotten
        time.sleep(0.01)
    graph = build(width, depth)
    start = time.perf_counter()
    future = client.compute(graph)
    half = (width * depth + 1) // 2
    while cluster._loop.run(_done(cluster.scheduler)) < half:
        time.sleep(0.02)
    address, (pid, lost) = max(workers().items(), key=lambda item: item[1][1])
    psutil.Process(pid).kill()
    killed_at = time.perf_counter()
    removed = back = float("nan")
    while True:
        now = time.perf_counter() - killed_at
        current = workers()
        if removed != removed and address not in current:
            removed = now
        if back != back and removed == removed and len(current) == 2:
            back = now
        if back == back:
            break
        time.sleep(0.002)
    assert future.result() == expected(width, depth)
    killed = time.perf_counter() - start
    return {
        "clean": clean,
        "killed": killed,
        "extra": killed - clean,
        "removed": removed,
        "back": back,
        "lost": float(lost),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from taskloom_distributed import Client

    rows = []
    with Client(n_workers=2, threads_per_worker=1, set_as_default=False) as client:
        client.compute(build(200, 2)).result()  # warm up
        for r in range(args.repeat):
            row = one_repeat(client, args.width, args.depth)
            rows.append(row)
            print(f"repeat {r + 1}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    tasks = args.width * args.depth + 1
    print(f"\n{tasks:,} tasks, 2 workers x 1 thread, {args.repeat} repeats (median):")
    for key in rows[0]:
        unit = "" if key == "lost" else " s"
        print(f"  {key:8} {statistics.median(r[key] for r in rows):8.3f}{unit}")


if __name__ == "__main__":
    main()
