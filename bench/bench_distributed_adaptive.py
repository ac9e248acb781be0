"""Adaptive scale-up latency: from submitting a burst to the second worker running one of its tasks.

A ``LocalCluster`` starts with one worker (1 thread) and ``cluster.adapt(minimum=1, maximum=4,
...)``.  Each repeat submits a burst of ``--tasks`` tasks of ``--duration`` seconds (fresh keys)
on the idle one-worker cluster, and records, from the moment of submission:

* ``decision``: the first "up" decision of the adaptive policy;
* ``joined``: the second worker registered with the scheduler;
* ``latency``: the first task started on a worker other than the first one (the figure asked
  for: queued tasks reach the new worker through work stealing);
* ``burst``: the whole burst done; ``peak``: the most workers seen;
* ``down``: back to one worker after the burst (idle workers retire after ``wait_count``
  decisions, their results copied off first).

Run: ``python bench/bench_distributed_adaptive.py [--interval 1] [--target-duration 5]
[--tasks 100] [--duration 0.2] [--repeat 3]`` (the interval and target duration default to
``distributed.adaptive.*``: 1 s and 5 s).  The results are checked each time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from typing import Any


def job(i: int, seconds: float) -> tuple[int, int, float]:
    start = time.time()
    time.sleep(seconds)
    return i, os.getpid(), start


def one_repeat(client: Any, cluster: Any, adaptive: Any, tasks: int, duration: float) -> dict[str, float]:
    state = cluster.scheduler.state
    first_pid = cluster.worker_pids[0]
    joined = [float("nan")]
    peak = [1]
    stop = threading.Event()

    def watch(t0: float) -> None:  # reads a dict size of the scheduler's state: no lock needed
        while not stop.wait(0.005):
            n = len(state.workers)
            peak[0] = max(peak[0], n)
            if n > 1 and joined[0] != joined[0]:
                joined[0] = time.time() - t0

    t0 = time.time()
    futures = client.map(job, range(tasks), [duration] * tasks, pure=False)
    watcher = threading.Thread(target=watch, args=(t0,), daemon=True)
    watcher.start()
    results = client.gather(futures)
    burst = time.time() - t0
    assert [r[0] for r in results] == list(range(tasks))
    others = [start for _, pid, start in results if pid != first_pid]
    ups = [when for when, d in adaptive.log if d.action == "up" and when >= t0]
    deadline = time.monotonic() + 120
    while len(state.workers) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    down = time.time() - t0 - burst
    stop.set()
    watcher.join()
    assert client.gather(futures) == results  # nothing lost in the scale-down
    del futures
    return {
        "decision": (min(ups) - t0) if ups else float("nan"),
        "joined": joined[0],
        "latency": (min(others) - t0) if others else float("nan"),
        "burst": burst,
        "peak": float(peak[0]),
        "down": down,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=None)
    parser.add_argument("--target-duration", type=float, default=None)
    parser.add_argument("--wait-count", type=int, default=None)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--duration", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from taskloom_distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        client.gather(client.map(job, range(5), [0.01] * 5, pure=False))  # warm up
        adaptive = cluster.adapt(
            minimum=1, maximum=4, interval=args.interval, wait_count=args.wait_count,
            target_duration=args.target_duration,
        )  # fmt: skip
        print(f"{adaptive!r}, burst of {args.tasks} x {args.duration:g} s tasks")
        rows = []
        for r in range(args.repeat):
            row = one_repeat(client, cluster, adaptive, args.tasks, args.duration)
            rows.append(row)
            print(f"repeat {r + 1}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
        adaptive.stop()
    print(f"\nmedian of {args.repeat} (seconds from the submission of the burst):")
    for key in rows[0]:
        print(f"  {key:9} {statistics.median(r[key] for r in rows):7.2f}")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
