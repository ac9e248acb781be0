"""The scheduler decision matrix, measured: CPU-bound pure Python and large arrays per scheduler.

* ``cpu``: 8 independent pure-Python tasks of about 0.25 s each.  Processes should approach the
  core count in speed-up over ``sync``; threads stay near 1x (the GIL).
* ``arrays``: 8 tasks each making a 50 MB NumPy array, each consumed by one task that reduces it.
  The figure is the data volume made and consumed per second of wall time ("effective
  transfer"): a backend that runs the consumer where its input already is moves nothing.
"""

from __future__ import annotations

import time
from typing import Any

import taskloom
from taskloom.graph import Task

CPU_TASKS = 8
ARRAY_TASKS = 8
ARRAY_BYTES = 50_000_000


def spin(n: int) -> int:
    """Pure-Python CPU work (holds the GIL)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def calibrate(seconds: float = 0.25) -> int:
    """The ``spin`` size that takes about ``seconds`` here."""
    n = 200_000
    while True:
        t0 = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - t0
        if elapsed > 0.05:
            return max(1, int(n * seconds / elapsed))
        n *= 2


def cpu_graph(n: int) -> tuple[dict[Any, Any], list[Any]]:
    graph = {("spin", i): Task(spin, n + i) for i in range(CPU_TASKS)}
    return graph, list(graph)


def make_array(i: int, nbytes: int = ARRAY_BYTES) -> Any:
    import numpy as np

    return np.full(nbytes // 8, float(i))


def reduce_array(a: Any) -> float:
    return float(a[::4096].sum())


def array_graph() -> tuple[dict[Any, Any], list[Any]]:
    graph: dict[Any, Any] = {}
    for i in range(ARRAY_TASKS):
        graph[("array", i)] = Task(make_array, i)
        graph[("reduce", i)] = Task(reduce_array, taskloom.Ref(("array", i)))
    return graph, [("reduce", i) for i in range(ARRAY_TASKS)]


def _best(graph: dict[Any, Any], keys: list[Any], name: str, options: dict[str, Any], repeat: int) -> float:
    """Best wall time of ``repeat`` computes of ``keys`` on scheduler ``name``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        taskloom.get(graph, keys, scheduler=name, **options)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(schedulers: dict[str, dict[str, Any]], repeat: int = 2) -> list[dict[str, Any]]:
    """Rows for the matrix: ``schedulers`` maps a name to the compute options it needs."""
    rows: list[dict[str, Any]] = []
    n = calibrate()
    graph, keys = cpu_graph(n)
    times = {}
    for name, options in schedulers.items():
        taskloom.get(graph, keys[:1], scheduler=name, **options)  # warm the pool
        times[name] = _best(graph, keys, name, options, repeat)
    base = times.get("sync")
    for name, t in times.items():
        rows.append(
            {
                "workload": "cpu",
                "scheduler": name,
                "wall_s": t,
                "speedup_vs_sync": (base / t) if base else None,
            }
        )
    try:
        import numpy  # noqa: F401
    except ImportError:
        return rows
    graph, keys = array_graph()
    for name, options in schedulers.items():
        t = _best(graph, keys, name, options, repeat)
        rows.append(
            {
                "workload": "arrays",
                "scheduler": name,
                "wall_s": t,
                "gb_per_s": ARRAY_TASKS * ARRAY_BYTES / t / 1e9,
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["", "decision matrix (8 CPU-bound tasks of ~0.25 s; 8 x 50 MB arrays made and reduced):"]
    for r in rows:
        if r["workload"] == "cpu":
            speed = f"{r['speedup_vs_sync']:.2f}x vs sync" if r["speedup_vs_sync"] else ""
            lines.append(f"  cpu     {r['scheduler']:<12} {r['wall_s']:7.2f} s   {speed}")
        else:
            lines.append(
                f"  arrays  {r['scheduler']:<12} {r['wall_s']:7.2f} s   {r['gb_per_s']:.2f} GB/s effective"
            )
    return "\n".join(lines)
