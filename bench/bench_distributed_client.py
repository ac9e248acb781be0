"""Client overhead of taskloom-distributed next to dask.distributed, on 2-worker local clusters.

Measures, for each library in the same run on the same machine:

* the median ``client.submit(inc, i).result()`` round trip (one task, one result back), and its
  client-side parts: a ``submit`` call alone, ``result()`` of a future that has finished (one
  fetch from the worker);
* ``client.gather(client.map(inc, range(N)))`` in microseconds per item (best of the repeats).

Run: ``python bench/bench_distributed_client.py [--rounds 300] [--items 10000] [--repeat 3]``
(``--no-dask`` skips the comparison).  Nothing is asserted: it prints a small table.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def inc(x: int) -> int:
    return x + 1


def round_trips(submit: Callable[..., Any], rounds: int) -> list[float]:
    """Seconds per ``submit(inc, i).result()``, after a short warm-up."""
    for i in range(20):
        submit(inc, -i - 1).result()
    out = []
    for i in range(rounds):
        start = time.perf_counter()
        submit(inc, i).result()
        out.append(time.perf_counter() - start)
    return out


def client_side(client: Any, rounds: int, offset: int) -> tuple[float, float]:
    """Median seconds of a ``submit`` call alone, and of ``result()`` of a finished future."""
    submits, futures = [], []
    for i in range(rounds):
        start = time.perf_counter()
        futures.append(client.submit(inc, offset + i))
        submits.append(time.perf_counter() - start)
    client.gather(futures)
    results = []
    for f in futures:
        start = time.perf_counter()
        f.result()
        results.append(time.perf_counter() - start)
    return statistics.median(submits), statistics.median(results)


def map_gather(client: Any, items: int, repeat: int, offset: int) -> list[float]:
    """Seconds per item of ``gather(map(inc, range(items)))``; fresh keys every repeat."""
    out = []
    for r in range(repeat):
        start = time.perf_counter()
        futures = client.map(inc, range(offset + r * items, offset + (r + 1) * items))
        client.gather(futures)
        out.append((time.perf_counter() - start) / items)
        del futures
    return out


def measure_taskloom(rounds: int, items: int, repeat: int) -> dict[str, float]:
    from taskloom_distributed import Client

    start = time.perf_counter()
    with Client(n_workers=2, threads_per_worker=1) as client:
        startup = time.perf_counter() - start
        rt = round_trips(client.submit, rounds)
        submit, result = client_side(client, rounds, 10**7)
        mg = map_gather(client, items, repeat, 10**6)
    return {
        "startup": startup,
        "round trip": statistics.median(rt),
        "submit": submit,
        "result": result,
        "map": min(mg),
    }


def measure_dask(rounds: int, items: int, repeat: int) -> dict[str, float]:
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        startup = time.perf_counter() - start
        rt = round_trips(client.submit, rounds)
        submit, result = client_side(client, rounds, 10**7)
        mg = map_gather(client, items, repeat, 10**6)
    return {
        "startup": startup,
        "round trip": statistics.median(rt),
        "submit": submit,
        "result": result,
        "map": min(mg),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="submit().result() round trips")
    parser.add_argument("--items", type=int, default=10_000, help="items for map + gather")
    parser.add_argument("--repeat", type=int, default=3, help="map + gather repeats (best kept)")
    parser.add_argument("--no-dask", action="store_true", help="skip dask.distributed")
    args = parser.parse_args()

    results = {"taskloom": measure_taskloom(args.rounds, args.items, args.repeat)}
    if not args.no_dask:
        try:
            results["dask.distributed"] = measure_dask(args.rounds, args.items, args.repeat)
        except ImportError:
            print("dask.distributed is not installed: no comparison")
    load = os.getloadavg()[0]
    print(f"\n2-worker LocalCluster, 1 thread each; load average {load:.2f}; {os.cpu_count()} CPUs\n")
    names = list(results)
    print(f"| measurement | {' | '.join(names)} |")
    print(f"|---|{'---:|' * len(names)}")
    rows = [
        ("Client() startup (s)", "startup", 1, "{:.2f}"),
        ("submit().result() median (ms)", "round trip", 1e3, "{:.3f}"),
        ("submit() call alone, median (µs)", "submit", 1e6, "{:.0f}"),
        ("result() of a finished future, median (µs)", "result", 1e6, "{:.0f}"),
        (f"map({args.items}) + gather (µs/item)", "map", 1e6, "{:.1f}"),
    ]
    for label, field, scale, fmt in rows:
        cells = [fmt.format(results[n][field] * scale) for n in names]
        print(f"| {label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
