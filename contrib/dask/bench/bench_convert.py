"""The cost of converting Dask graphs to taskloom graphs, per task, in both of Dask's specs.

Builds a graph of ``--tasks`` tasks (default 100,000) -- each task depends on two others, a third
of them through a list argument -- once in the classic tuple spec and once in the current task
spec, and times ``taskloom_dask.convert.convert`` on each (best of ``--repeat``).  For scale it
also times, on the same graphs, Dask's own ``convert_legacy_graph`` (which Dask's schedulers run
on every graph) and taskloom's planner on the converted graph.  Linearity: the same at a tenth of
the size should cost about the same per task.

    python contrib/dask/bench/bench_convert.py [--tasks 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import operator
import time
from collections.abc import Callable
from typing import Any


def classic_graph(n: int) -> dict[Any, Any]:
    graph: dict[Any, Any] = {("x", 0): 1}
    for i in range(1, n):
        if i % 3:
            graph["x", i] = (operator.add, ("x", i - 1), ("x", i // 2))
        else:
            graph["x", i] = (sum, [("x", i - 1), ("x", i // 2), 1])
    return graph


def spec_graph(n: int) -> dict[Any, Any]:
    from dask._task_spec import DataNode, List, Task, TaskRef

    graph: dict[Any, Any] = {("x", 0): DataNode(("x", 0), 1)}
    for i in range(1, n):
        a, b = TaskRef(("x", i - 1)), TaskRef(("x", i // 2))
        if i % 3:
            graph["x", i] = Task(("x", i), operator.add, a, b)
        else:
            graph["x", i] = Task(("x", i), sum, List(a, b, 1))
    return graph


def best(func: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    from dask._task_spec import convert_legacy_graph
    from taskloom.order import plan
    from taskloom_dask.convert import convert

    n = args.tasks
    out: dict[str, float] = {}
    print(f"converting a {n:,}-task Dask graph (best of {args.repeat}), microseconds per task:")
    for spec, build in (("classic tuple spec", classic_graph), ("task spec", spec_graph)):
        for size in (n // 10, n):
            graph = build(size)
            converted = convert(graph)
            root = ("x", size - 1)
            ours = best(lambda g=graph: convert(g), args.repeat) / size * 1e6  # type: ignore[misc]
            label = f"{spec}, {size:,} tasks"
            if size == n:
                out[spec] = ours
                dask_own = best(lambda g=graph: convert_legacy_graph(g), args.repeat) / size * 1e6  # type: ignore[misc]
                planned = best(lambda c=converted, r=root: plan(c, [r]), args.repeat) / size * 1e6  # type: ignore[misc]
                print(
                    f"  {label:<32} taskloom_dask.convert {ours:6.2f}   "
                    f"(dask convert_legacy_graph {dask_own:6.2f}, taskloom plan {planned:6.2f})"
                )
            else:
                print(f"  {label:<32} taskloom_dask.convert {ours:6.2f}")
    return out


if __name__ == "__main__":
    main()
