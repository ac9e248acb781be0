"""Dask graph -> taskloom graph: both of Dask's specs, in one linear pass, with Dask's meaning.

:func:`convert` turns a Dask graph -- a ``dict``, any ``Mapping`` or a ``HighLevelGraph`` -- into a
taskloom graph (``key -> taskloom.Task | taskloom.Ref | literal``) that computes the same values.
Every graph value is converted on its own, looking other keys up only by hashing, so the cost is
linear in the size of the graph (nested arguments included) and no value is visited twice.

The current task spec (``dask._task_spec``), as Dask itself evaluates it:

=====================================  ========================================================
Dask node                              taskloom
=====================================  ========================================================
``Task(key, func, *args, **kwargs)``   ``Task(func, *args, **kwargs)``, arguments converted
``TaskRef(k)`` (and ``Future``)        ``Ref(k)``
``Alias(key, target)``                 ``Ref(target)`` (a self-alias is dropped, as Dask does)
``DataNode(key, value)``               ``value``, quoted if taskloom would read it as a task
``List`` / ``Tuple`` / ``Dict``        a ``list`` / ``tuple`` / ``dict`` of converted items
``Set`` and other ``Task`` subclasses  ``Task(node.func, *args, **kwargs)``, converted
any other ``GraphNode``                a task that calls the node with its dependencies' values
=====================================  ========================================================

Only these nodes are evaluated inside a task's arguments: plain lists, tuples and dicts in a
``Task``'s arguments are data to Dask, and stay data.

The classic tuple spec follows ``dask._task_spec.convert_legacy_task``, i.e. what current Dask
runs: ``(func, *args)`` is a task; an ``int``/``float``/``str``/``tuple`` argument equal to a key
is that key's value; lists, tuples and sets that hold keys or tasks are evaluated element-wise;
a ``dict`` argument evaluates only task-spec nodes among its values (its plain values are data,
even strings that are keys); a ``Future`` is its key's value.

Literal data is *quoted* -- wrapped in a task that returns it -- where the taskloom graph spec
would otherwise read it as a task or an alias (tuples, lists, dicts, and atoms equal to a key),
so a literal always stays a literal.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any, cast

from dask._task_spec import Alias, DataNode, Dict, GraphNode, List, TaskRef, Tuple
from dask._task_spec import Task as DaskTask
from dask.utils import ensure_dict, is_namedtuple_instance
from taskloom import Ref, Task, gcpause
from taskloom.graph import ATOMIC_TYPES

__all__ = ["convert", "convert_node"]

Key = Any  # str | bytes | int | float | tuple of these (taskloom.graph.Key)

_MAYBE_KEY = (int, float, str, tuple)  # what Dask compares with the keys
_SEQUENCES: tuple[type, ...] = (list, tuple, set, frozenset)
_DASK_CALL = DaskTask.__call__


# -- functions the converted graphs call; module level so that every scheduler can ship them ---


def quote(value: Any) -> Any:
    """Return ``value``: the task that holds a literal the graph spec would otherwise interpret."""
    return value


def rebuild(typ: type, items: list[Any]) -> Any:
    """``typ(items)``: a set, frozenset or sequence subclass rebuilt from its evaluated items."""
    return typ(items)


def make_namedtuple(typ: type, items: list[Any]) -> Any:
    """The named tuple ``typ`` rebuilt from its evaluated fields."""
    return typ(*items)


def dict_from_items(flat: list[Any]) -> dict[Any, Any]:
    """A dict from ``[k0, v0, k1, v1, ...]`` (a Dask ``Dict`` whose keys are themselves computed)."""
    return dict(zip(flat[::2], flat[1::2]))


def call_node(node: GraphNode, keys: tuple[Key, ...], *values: Any) -> Any:
    """Run a Dask ``GraphNode`` of a kind this module has no direct translation for."""
    return node(dict(zip(keys, values)))


# -- the current task spec -----------------------------------------------------------------------


def _node_arg(node: Any) -> Any:
    """A task-spec node inside arguments, as the taskloom object that evaluates to its value."""
    t = type(node)
    if t is TaskRef:
        return Ref(node.key)
    if t is DaskTask:
        return _task(node)
    if t is Alias:
        return Ref(node.target)
    if t is DataNode:
        return node.value
    if t is List:
        return [_node_arg(a) if isinstance(a, (GraphNode, TaskRef)) else a for a in node.args]
    if t is Tuple:
        return tuple([_node_arg(a) if isinstance(a, (GraphNode, TaskRef)) else a for a in node.args])
    if t is Dict:
        return _dict(node.args)
    if isinstance(node, TaskRef):  # distributed.Future and other TaskRef subclasses
        return Ref(node.key)
    if isinstance(node, DaskTask) and type(node).__call__ is _DASK_CALL:
        return _task(node)  # Set, other containers, subclasses that run like a Task
    return _opaque(node)


def _dict(flat: tuple[Any, ...]) -> Any:
    items = [_node_arg(a) if isinstance(a, (GraphNode, TaskRef)) else a for a in flat]
    keys = items[::2]
    if any(type(k) is Ref or type(k) is Task for k in keys):
        return Task(dict_from_items, items)
    return dict(zip(keys, items[1::2]))


def _task(node: DaskTask) -> Task:
    """A Dask ``Task`` (or a subclass that runs like one) as a taskloom ``Task``."""
    args: tuple[Any, ...] | list[Any] = node.args
    new: list[Any] | None = None
    i = 0
    for a in args:
        t = type(a)
        if t is TaskRef:
            c: Any = Ref(a.key)
        elif t in ATOMIC_TYPES or not isinstance(a, (GraphNode, TaskRef)):
            i += 1
            continue
        else:
            c = _node_arg(a)
        if new is None:
            new = list(args)
        new[i] = c
        i += 1
    kwargs = node.kwargs
    if kwargs:
        kwargs = {k: (_node_arg(v) if isinstance(v, (GraphNode, TaskRef)) else v) for k, v in kwargs.items()}
        return Task(node.func, *(args if new is None else new), **kwargs)
    return Task(node.func, *(args if new is None else new))


def _opaque(node: GraphNode) -> Task:
    keys = tuple(node.dependencies)
    return Task(call_node, node, keys, *[Ref(k) for k in keys])


def convert_node(node: GraphNode) -> Any:
    """One top-level task-spec node as a taskloom graph value (a ``Task``, a ``Ref`` or data)."""
    t = type(node)
    if t is DaskTask:
        return _task(cast(DaskTask, node))
    if t is Alias:
        return Ref(cast(Alias, node).target)
    if t is DataNode:
        return _literal(cast(DataNode, node).value, ())
    value = _node_arg(node)
    if type(value) is Task:
        return value
    return Task(quote, value)  # List, Tuple, Dict at the top: a task that builds the container


# -- the classic tuple spec ----------------------------------------------------------------------


def _classic_task(task: tuple[Any, ...], keys: Container[Key]) -> Task:
    args = []
    for a in task[1:]:
        if isinstance(a, dict):  # Dask: Dict(a) -- only task-spec values are evaluated
            args.append(
                {k: (_node_arg(v) if isinstance(v, (GraphNode, TaskRef)) else v) for k, v in a.items()}
            )
        else:
            args.append(_classic(a, keys))
    return Task(task[0], *args)


def _classic(a: Any, keys: Container[Key]) -> Any:
    """One classic-spec argument (or nested item) as a taskloom argument; ``a`` itself if literal."""
    t = type(a)
    if t is str:
        return Ref(a) if a in keys else a
    if t is tuple:
        if a and callable(a[0]):
            return _classic_task(a, keys)
        try:
            if a in keys:
                return Ref(a)
        except TypeError:  # holds something unhashable
            pass
        return _sequence(a, keys)
    if t is int or t is float:
        return Ref(a) if a in keys else a
    if t is list:
        return _sequence(a, keys)
    if isinstance(a, GraphNode):
        return _node_arg(a)
    if isinstance(a, TaskRef) or getattr(a, "__dask_future__", False):
        return Ref(a.key)
    if isinstance(a, _MAYBE_KEY):  # subclasses: bool, str and tuple subclasses, named tuples
        try:
            if a in keys:
                return Ref(a)
        except TypeError:
            pass
    if isinstance(a, _SEQUENCES):
        return _sequence(a, keys)
    return a


def _sequence(seq: Any, keys: Container[Key]) -> Any:
    """A list, tuple or set whose items are evaluated; ``seq`` itself if none needs evaluating."""
    items = [_classic(x, keys) for x in seq]
    changed = False
    for x, y in zip(items, seq):
        if x is not y:
            changed = True
            break
    t = type(seq)
    if t is not tuple and is_namedtuple_instance(seq):
        return Task(make_namedtuple, t, items) if changed else seq
    if not changed:
        return seq
    if t is list:
        return items
    if t is tuple:
        return tuple(items)
    return Task(rebuild, t, items)


def _classic_value(key: Key, value: Any, keys: Container[Key]) -> Any:
    """One top-level classic value as a taskloom graph value; ``_SKIP`` for a self-alias."""
    t = type(value)
    if t is tuple and value and callable(value[0]):
        return _classic_task(value, keys)
    if isinstance(value, GraphNode):
        return convert_node(value)
    if isinstance(value, _MAYBE_KEY):
        try:
            if value in keys:
                return _SKIP if value == key else Ref(value)
        except TypeError:
            pass
    if isinstance(value, _SEQUENCES):
        converted = _sequence(value, keys)
        if converted is not value:
            return converted if type(converted) is Task else Task(quote, converted)
        return _literal(value, keys)
    if isinstance(value, TaskRef) or getattr(value, "__dask_future__", False):
        return Ref(value.key)
    return _literal(value, keys)


_SKIP: Any = object()


def _literal(value: Any, keys: Container[Key]) -> Any:
    """``value`` as graph data: quoted where the taskloom spec would read it as a task or alias."""
    t = type(value)
    if t is tuple or t is list or t is dict or t is Ref or t is Task:
        return Task(quote, value)
    if t in ATOMIC_TYPES:
        try:
            if value in keys:
                return Task(quote, value)
        except TypeError:
            pass
    return value


# -- a whole graph -------------------------------------------------------------------------------


class _Keys(Container[Key]):
    """The keys of the graph and of a cache of precomputed values, for membership tests."""

    __slots__ = ("cache", "graph")

    def __init__(self, graph: Mapping[Key, Any], cache: Mapping[Key, Any]) -> None:
        self.graph = graph
        self.cache = cache

    def __contains__(self, key: object) -> bool:
        return key in self.graph or key in self.cache


def convert(dsk: Mapping[Key, Any], cache: Mapping[Key, Any] | None = None) -> dict[Key, Any]:
    """The taskloom graph that computes what the Dask graph ``dsk`` computes.

    :param dsk: a Dask graph in the classic tuple spec, the current task spec, or both mixed; a
        ``dict``, another ``Mapping`` or a ``HighLevelGraph``.
    :param cache: values already known, by key (Dask's ``cache=``): they are data in the result
        and their keys' tasks are not run.
    :return: a new ``dict`` with the same keys (a key aliasing itself is dropped, as in Dask).

    The cyclic garbage collector is paused meanwhile, as in :func:`taskloom.order.plan`: the pass
    allocates a few objects per task and frees none, so collections would only rescan the growing
    graph again and again (quadratic in effect on large graphs).
    """
    with gcpause.paused():
        return _convert(dsk, cache)


def _convert(dsk: Mapping[Key, Any], cache: Mapping[Key, Any] | None) -> dict[Key, Any]:
    graph = ensure_dict(dsk)
    keys: Container[Key] = graph if not cache else _Keys(graph, cache)
    out: dict[Key, Any] = {}
    task_type, alias_type, data_type = DaskTask, Alias, DataNode
    for k, v in graph.items():
        t = type(v)
        if t is task_type:
            out[k] = _task(v)
        elif t is tuple and v and callable(v[0]):
            out[k] = _classic_task(v, keys)
        elif t is alias_type:
            if v.target != k:
                out[k] = Ref(v.target)
        elif t is data_type:
            out[k] = _literal(v.value, keys)
        else:
            value = _classic_value(k, v, keys)
            if value is not _SKIP:
                out[k] = value
    if cache:
        for k, v in cache.items():
            out[k] = _literal(v, keys)
    return out
