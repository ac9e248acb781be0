"""The standard workloads of ``taskloom bench``: classic tuple-spec graphs, so Dask runs the same dict."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs

Graph = dict[Any, Any]


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def total(xs: list[int]) -> int:
    return sum(xs)


def combine(*xs: int) -> int:
    return sum(xs) % 1000003


def independent(n: int = 10_000) -> tuple[Graph, Any]:
    """``n`` independent ``inc`` tasks and one ``sum`` over them."""
    graph: Graph = {("inc", i): (inc, i) for i in range(n)}
    graph["sum"] = (total, [("inc", i) for i in range(n)])
    return graph, "sum"


def tree(leaves: int = 8_192) -> tuple[Graph, Any]:
    """A binary-tree reduction of ``leaves`` leaves (``leaves`` must be a power of two)."""
    graph: Graph = {("tree", 0, i): (inc, i) for i in range(leaves)}
    level, width = 0, leaves
    while width > 1:
        for i in range(width // 2):
            graph[("tree", level + 1, i)] = (add, ("tree", level, 2 * i), ("tree", level, 2 * i + 1))
        level, width = level + 1, width // 2
    return graph, ("tree", level, 0)


def chain(n: int = 5_000) -> tuple[Graph, Any]:
    """A chain of ``n`` tasks, each depending on the one before."""
    graph: Graph = {("chain", 0): (inc, 0)}
    for i in range(1, n):
        graph[("chain", i)] = (inc, ("chain", i - 1))
    return graph, ("chain", n - 1)


def random_dag(n: int = 10_000, seed: int = 42, max_deps: int = 3, window: int = 100) -> tuple[Graph, Any]:
    """A seeded random DAG: each task depends on up to ``max_deps`` of the ``window`` before it."""
    rng = random.Random(seed)
    graph: Graph = {}
    for i in range(n):
        k = rng.randint(0, min(max_deps, i))
        deps = rng.sample(range(max(0, i - window), i), k) if k else []
        graph[("dag", i)] = (combine, i, *[("dag", d) for d in deps])
    graph["dag-sink"] = (total, [("dag", i) for i in range(n)])
    return graph, "dag-sink"


def neighbour_sums(width: int) -> tuple[Graph, int]:
    """``2 * width + 1`` tasks in the ``Task``/``Ref`` spec: ``width`` leaves, the sum of each leaf
    and its neighbour, one total over those sums; and the total's value."""
    from ..graph import Ref, Task

    graph: Graph = {("x", i): Task(inc, i) for i in range(width)}
    for i in range(width):
        graph["y", i] = Task(add, Ref(("x", i)), Ref(("x", (i + 1) % width)))
    graph["total"] = Task(total, [Ref(("y", i)) for i in range(width)])
    return graph, 2 * sum(range(1, width + 1))


def independent_tree(n: int = 1_000_000, fan_in: int = 100) -> tuple[Graph, Any]:
    """``n`` independent ``inc`` tasks summed by a tree of partial sums (no task has over ``fan_in`` deps)."""
    graph: Graph = {("inc", i): (inc, i) for i in range(n)}
    keys: list[Any] = [("inc", i) for i in range(n)]
    level = 0
    while len(keys) > 1:
        level += 1
        parents: list[Any] = []
        for j in range(0, len(keys), fan_in):
            key = ("partial", level, j // fan_in)
            graph[key] = (total, keys[j : j + fan_in])
            parents.append(key)
        keys = parents
    return graph, keys[0]


@attrs.frozen
class Workload:
    """A named graph builder: ``build(size)`` makes the graph and its output key.

    ``size`` is the builder's size argument (``default``, or ``quick`` for smoke runs);
    ``description`` is a template formatted with ``n=size``.
    """

    name: str
    description: str
    factory: Callable[[int], tuple[Graph, Any]]
    default: int
    quick: int

    def build(self, size: int | None = None) -> tuple[Graph, Any]:
        """The graph (classic tuple spec) and its output key, at ``size`` (default: ``default``)."""
        return self.factory(self.default if size is None else size)

    def describe(self, size: int | None = None) -> str:
        return self.description.format(n=self.default if size is None else size)

    @property
    def tasks(self) -> int:
        """The number of tasks at the default size."""
        return len(self.build()[0])

    @staticmethod
    def baseline(graph: Graph, out: Any) -> Callable[[], Any]:
        """The direct-call baseline of ``graph``: see :func:`direct`."""
        return direct(graph, out)


def direct(graph: Graph, out: Any) -> Callable[[], Any]:
    """A function that makes ``graph``'s calls directly, in topological order, and returns ``out``'s value.

    Everything that can be done before timing is done here: the order is found and each task's
    arguments are classified (literal, key, list of keys) once.  The returned function only
    looks up argument values and calls the functions -- the least any scheduler has to do --
    so ``scheduler time - this time`` is the scheduler's overhead.
    """
    steps: list[tuple[Any, Callable[..., Any], tuple[Any, ...], tuple[tuple[int, Any, bool], ...]]] = []
    for key in _topological(graph, out):
        func, *args = graph[key]
        refs = []
        for i, a in enumerate(args):
            if type(a) is list:
                refs.append((i, tuple(a), True))
            elif _is_key(a, graph):
                refs.append((i, a, False))
        steps.append((key, func, tuple(args), tuple(refs)))

    def run() -> Any:
        values: dict[Any, Any] = {}
        for key, func, args, refs in steps:
            if refs:
                call = list(args)
                for i, k, many in refs:
                    call[i] = [values[x] for x in k] if many else values[k]
                values[key] = func(*call)
            else:
                values[key] = func(*args)
        return values[out]

    return run


def _is_key(a: Any, graph: Graph) -> bool:
    try:
        return (type(a) is tuple or type(a) is str) and a in graph
    except TypeError:
        return False


def _topological(graph: Graph, out: Any) -> list[Any]:
    """The keys ``out`` needs, dependencies first (iterative depth-first post-order)."""
    order: list[Any] = []
    done: set[Any] = set()
    stack: list[tuple[Any, bool]] = [(out, False)]
    while stack:
        key, expanded = stack.pop()
        if key in done:
            continue
        if expanded:
            done.add(key)
            order.append(key)
            continue
        stack.append((key, True))
        for a in graph[key][1:]:
            for d in a if type(a) is list else (a,):
                if d not in done and _is_key(d, graph):
                    stack.append((d, False))
    return order


STANDARD: list[Workload] = [
    Workload("independent", "{n:,} independent tasks + sum", independent, 10_000, 500),
    Workload("tree", "binary-tree reduction, {n:,} leaves", tree, 8_192, 256),
    Workload("chain", "{n:,}-task chain", chain, 5_000, 500),
    Workload("random-dag", "seeded random DAG, {n:,} tasks + sink", random_dag, 10_000, 500),
]
"""The workloads every ``taskloom bench`` run measures."""

MILLION = Workload(
    "million", "{n:,} independent tasks + tree of partial sums", independent_tree, 1_000_000, 20_000
)
"""The large-graph workload of ``taskloom bench --million`` (memory per task)."""
