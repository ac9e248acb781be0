"""Static priorities: one depth-first pass that culls, converts, validates and orders a graph.

``plan(graph, keys)`` walks the graph depth-first from the requested keys, visiting each task's
dependencies in argument order, and numbers the tasks in *post-order*: a task is numbered right
after the last of its dependencies.  That numbering is the static priority every local scheduler
uses (lower runs first).  It is a topological order, and it finishes one subtree before it
starts the next, so a tree reduction holds O(depth) intermediates at a time rather than
O(leaves), and each intermediate can be released as soon as its last dependent has run.

The same pass does the rest of the up-front work, so nothing touches a key twice:

* only tasks the requested keys need are visited (culling);
* each value is converted from the classic tuple spec once (:func:`taskloom.graph.to_task`);
* a reference to a key that is not in the graph raises :class:`MissingDependencyError`, a
  requested key that is not in the graph :class:`KeysNotFoundError`, and a cycle
  :class:`CycleError` naming the keys on it -- all before any task runs;
* each key's *reference count* (its dependents, plus one if it is requested) is counted, so the
  engine knows when a value may be dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

from . import gcpause
from .errors import KeysNotFoundError, MissingDependencyError
from .graph import Key, Task, compile_tuple, raise_cycle, to_task


@attrs.define(slots=True, eq=False)
class Plan:
    """A graph culled to the requested keys, validated and ordered for execution.

    ``order`` lists the keys to compute in priority order; ``tasks`` maps each of them to its
    :class:`Task`; ``literals`` holds the data values the tasks need; ``refcount`` counts, for
    every key in ``order`` or ``literals``, how many tasks still need it (requested keys count
    one extra so they are never released); ``outputs`` are the requested keys.
    """

    order: list[Key]
    tasks: dict[Key, Task]
    literals: dict[Key, Any]
    refcount: dict[Key, int]
    outputs: list[Key]

    def __len__(self) -> int:
        return len(self.order)

    def dependents(self) -> dict[Key, list[Key]]:
        """For each key, the keys in ``order`` that depend on it."""
        out: dict[Key, list[Key]] = {k: [] for k in self.order}
        for k in self.literals:
            out[k] = []
        for k in self.order:
            for d in self.tasks[k].dependencies:
                out[d].append(k)
        return out


def plan(graph: Mapping[Key, Any], outputs: list[Key]) -> Plan:
    """Cull, convert, validate and order ``graph`` for computing ``outputs`` (a flat key list).

    The cyclic garbage collector is paused meanwhile: the pass allocates a few objects per task
    and frees none, so collections would only rescan the (large, live) graph again and again.
    """
    with gcpause.paused():
        return _plan(graph, outputs)


def _plan(graph: Mapping[Key, Any], outputs: list[Key]) -> Plan:
    missing = [k for k in outputs if _missing(k, graph)]
    if missing:
        raise KeysNotFoundError(missing)
    order: list[Key] = []
    seen: dict[Key, Any] = {}  # expanded keys -> Task, or _LITERAL for a data value
    literals: dict[Key, Any] = {}
    done: set[Key] = set()
    edges: list[Key] = []  # every dependency of every task, counted in C at the end
    append, add, get, extend = order.append, done.add, seen.get, edges.extend
    for root in outputs:
        if root in done:
            continue
        stack = [root]
        push = stack.append
        while stack:
            k = stack[-1]
            if get(k) is not None:  # second visit (dependencies done), or a stale duplicate
                stack.pop()
                if k not in done:
                    add(k)
                    append(k)
                continue
            try:
                value = graph[k]
            except KeyError:
                raise MissingDependencyError(k, _referrer(k, seen)) from None
            if type(value) is tuple and value and callable(value[0]):
                task = compile_tuple(value, graph)
            else:
                task = to_task(value, graph)
                if not isinstance(task, Task):
                    stack.pop()
                    add(k)
                    seen[k] = _LITERAL
                    literals[k] = task
                    continue
            seen[k] = task
            deps = task.dependencies
            pushed = False
            if deps:
                extend(deps)
                for d in reversed(deps):
                    if get(d) is None:
                        push(d)
                        pushed = True
                    elif d not in done:  # expanded but not done: d is an ancestor of k
                        raise_cycle(d, seen)
            if not pushed:  # every dependency already done: no second visit needed
                stack.pop()
                add(k)
                append(k)
    for k in literals:
        del seen[k]
    refcount = Counter(edges)
    for root in outputs:
        refcount[root] += 1
    return Plan(order, seen, literals, refcount, list(outputs))


_LITERAL: Any = object()


def _referrer(key: Key, seen: Mapping[Key, Any]) -> Key:
    """A key whose task refers to ``key`` (for the missing-dependency error)."""
    for k, task in seen.items():
        if isinstance(task, Task) and key in task.dependencies:
            return k
    return key


def _missing(key: Any, graph: Mapping[Key, Any]) -> bool:
    try:
        return key not in graph
    except TypeError:
        raise TypeError(f"graph keys must be hashable, got {type(key).__name__}: {key!r}") from None
