"""Scheduler memory per task at 100,000 tasks, on a 2-worker cluster of separate processes.

The cluster: ``taskloom scheduler`` and two ``taskloom worker --nthreads 1`` processes on
127.0.0.1 (so the scheduler's process holds the scheduler only).  The graph: ``width`` leaves,
``width`` pairwise sums of neighbours, one total over those: ``2 * width + 1`` tasks (100,001 by
default), submitted in one ``client.get``.  Every task stays known to the scheduler until the
total is computed (released inputs are kept while something downstream is pending), so the
peak is the scheduler holding the whole graph.  Printed per repeat:

* ``seconds`` for the compute and ``us/task``;
* ``rss before``, ``rss peak`` (sampled every 20 ms) and ``rss after`` (once everything is
  released) of the scheduler process; ``bytes/task`` = (peak - before) / tasks;
* with ``--tracemalloc``: ``traced/task``, the scheduler's peak Python allocations
  (``tracemalloc`` started in its process just before the submission) per task -- the
  scheduler runs slower while tracing, so this is a separate run.

Run: ``python bench/bench_distributed_load.py [--width 50000] [--repeat 2] [--tracemalloc]``.
The answer is checked each time.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
from taskloom.bench.workloads import neighbour_sums

graph = neighbour_sums


def _start_tracing() -> None:
    import tracemalloc

    tracemalloc.stop()
    tracemalloc.start()


def _traced_peak() -> int:
    import tracemalloc

    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


class Cluster:
    """A scheduler and two workers, each ``python -m taskloom ...``; stopped on exit."""

    def __init__(self) -> None:
        self.token = secrets.token_urlsafe(16)
        env = {**os.environ, "TASKLOOM_DISTRIBUTED__COMM__AUTH": self.token}
        here = os.path.dirname(os.path.abspath(__file__))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "taskloom"]
        self.scheduler = subprocess.Popen(
            [*command, "scheduler", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert self.scheduler.stdout is not None
        line = self.scheduler.stdout.readline()
        m = re.search(r"scheduler at (\S+)", line)
        if m is None:
            raise RuntimeError(f"the scheduler did not start: {line!r}")
        self.address = m.group(1)
        self.workers = [
            subprocess.Popen(
                [*command, "worker", self.address, "--nthreads", "1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            for _ in range(2)
        ]

    def close(self) -> None:
        procs = [psutil.Process(p.pid) for p in (*self.workers, self.scheduler)]
        family = procs + [c for p in procs for c in p.children(recursive=True)]
        for p in (*self.workers, self.scheduler):
            p.terminate()
        _, alive = psutil.wait_procs(family, timeout=30)
        for p in alive:
            p.kill()


def one_repeat(client: Any, scheduler: psutil.Process, width: int, trace: bool) -> dict[str, float]:
    g, expected = graph(width)
    if trace:
        client.run_on_scheduler(_start_tracing)
    before = scheduler.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], scheduler.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    assert client.get(g, "total") == expected
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    traced = client.run_on_scheduler(_traced_peak) if trace else 0
    deadline = time.monotonic() + 60
    while client.scheduler_info()["tasks"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = scheduler.memory_info().rss
    tasks = len(g)
    row = {
        "seconds": seconds,
        "us/task": seconds / tasks * 1e6,
        "rss before MB": before / 1e6,
        "rss peak MB": peak[0] / 1e6,
        "rss after MB": after / 1e6,
        "bytes/task": (peak[0] - before) / tasks,
    }
    if trace:
        row["traced/task"] = traced / tasks
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=50_000, help="tasks = 2 * width + 1")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace the scheduler's allocations")
    args = parser.parse_args()

    from taskloom_distributed import Client

    cluster = Cluster()
    try:
        with Client(cluster.address, auth_token=cluster.token, set_as_default=False) as client:
            deadline = time.monotonic() + 120
            while len(client.scheduler_info()["workers"]) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not register")
                time.sleep(0.1)
            small, answer = graph(500)
            assert client.get(small, "total") == answer  # warm up
            scheduler = psutil.Process(cluster.scheduler.pid)
            print(f"{2 * args.width + 1:,} tasks, scheduler pid {scheduler.pid}, 2 workers x 1 thread")
            for r in range(args.repeat):
                row = one_repeat(client, scheduler, args.width, trace=False)
                print(f"repeat {r + 1}: " + "  ".join(f"{k} {v:,.1f}" for k, v in row.items()), flush=True)
            if args.tracemalloc:
                row = one_repeat(client, scheduler, args.width, trace=True)
                print("tracemalloc: " + "  ".join(f"{k} {v:,.1f}" for k, v in row.items()), flush=True)
    finally:
        cluster.close()
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
