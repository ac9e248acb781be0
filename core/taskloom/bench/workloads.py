"""The standard workloads of ``taskloom bench``: graphs in the classic tuple spec, so Dask runs the same dict."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def total(xs: list[int]) -> int:
    return sum(xs)


def combine(*xs: int) -> int:
    return sum(xs) % 1000003


@attrs.frozen
class Workload:
    """A named graph builder; ``tasks`` is the number of tasks ``build()`` makes."""

    name: str
    description: str
    build: Callable[[], tuple[dict[Any, Any], Any]]
    tasks: int
    baseline: Callable[[], Any]  # the same function calls made directly, for the overhead figure


def independent(n: int = 10_000) -> tuple[dict[Any, Any], Any]:
    """``n`` independent ``inc`` tasks and one ``sum`` over them."""
    graph: dict[Any, Any] = {("inc", i): (inc, i) for i in range(n)}
    graph["sum"] = (total, [("inc", i) for i in range(n)])
    return graph, "sum"


def tree(leaves: int = 8_192) -> tuple[dict[Any, Any], Any]:
    """A binary-tree reduction of ``leaves`` leaves (``leaves`` must be a power of two)."""
    graph: dict[Any, Any] = {("tree", 0, i): (inc, i) for i in range(leaves)}
    level, width = 0, leaves
    while width > 1:
        for i in range(width // 2):
            graph[("tree", level + 1, i)] = (add, ("tree", level, 2 * i), ("tree", level, 2 * i + 1))
        level, width = level + 1, width // 2
    return graph, ("tree", level, 0)


def chain(n: int = 5_000) -> tuple[dict[Any, Any], Any]:
    """A chain of ``n`` tasks, each depending on the one before."""
    graph: dict[Any, Any] = {("chain", 0): (inc, 0)}
    for i in range(1, n):
        graph[("chain", i)] = (inc, ("chain", i - 1))
    return graph, ("chain", n - 1)


def random_dag(n: int = 10_000, seed: int = 42, max_deps: int = 3, window: int = 100) -> tuple[dict[Any, Any], Any]:
    """A seeded random DAG: each task depends on up to ``max_deps`` of the ``window`` before it."""
    rng = random.Random(seed)
    graph: dict[Any, Any] = {}
    for i in range(n):
        k = rng.randint(0, min(max_deps, i))
        deps = rng.sample(range(max(0, i - window), i), k) if k else []
        graph[("dag", i)] = (combine, i, *[("dag", d) for d in deps])
    graph["dag-sink"] = (total, [("dag", i) for i in range(n)])
    return graph, "dag-sink"


def _direct(build: Callable[[], tuple[dict[Any, Any], Any]]) -> Callable[[], Any]:
    """Evaluate a tuple graph by plain recursion-free calls in topological order (the baseline)."""

    def run() -> Any:
        graph, out = build()
        values: dict[Any, Any] = {}
        for key, (func, *args) in graph.items():  # builders emit keys in topological order
            values[key] = func(*[_arg(a, values) for a in args])
        return values[out]

    return run


def _arg(a: Any, values: dict[Any, Any]) -> Any:
    if type(a) is list:
        return [values[x] for x in a]
    if type(a) is tuple or type(a) is str:
        return values.get(a, a)
    return a


STANDARD: list[Workload] = [
    Workload("independent", "10,000 independent tasks + sum", independent, 10_001, _direct(independent)),
    Workload("tree", "binary-tree reduction, 8,192 leaves", tree, 16_383, _direct(tree)),
    Workload("chain", "5,000-task chain", chain, 5_000, _direct(chain)),
    Workload("random-dag", "seeded random DAG, 10,000 tasks", random_dag, 10_001, _direct(random_dag)),
]
