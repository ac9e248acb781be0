"""The graph spec: keys, ``Task``, ``Ref``, the classic tuple spec and how results take the keys' shape.

A graph is a mapping ``key -> value``.  A key is a ``str``, ``bytes``, ``int``, ``float`` or
a tuple of these.  A value is

* a :class:`Task` -- ``Task(func, *args, **kwargs)``; a :class:`Ref` anywhere inside the
  arguments (also nested in lists, tuples, dicts and sets, or inside a nested ``Task``) stands
  for the value of that key;
* a :class:`Ref` -- an alias for another key's value;
* a *classic* task -- a tuple ``(func, *args)``: an argument equal to a key of the graph is that
  key's value, lists are evaluated element-wise, tuples with a callable first are nested tasks
  (this is the spec Dask users know; it is converted once to ``Task``/``Ref``);
* anything else -- literal data (a value that equals another key is an alias, as in the
  classic spec).

``Task`` and ``Ref`` are plain slotted classes rather than attrs classes on purpose: one is
built per task and ``Task.__call__`` is the innermost loop of every scheduler, so each does its
analysis once, in ``__init__``, and keeps a fast path for the common case of top-level
references only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from .errors import CycleError

Key = str | bytes | int | float | tuple[Any, ...]
"""A graph key: ``str``, ``bytes``, ``int``, ``float`` or a tuple of these."""

# plain values: never a key reference nor a task (no need to look inside them)
ATOMIC_TYPES: frozenset[type] = frozenset({int, float, str, bytes, bool, complex, type(None)})
_KEY_TYPES = (str, bytes, int, float, tuple)


class Ref:
    """A reference to the value of another key of the graph."""

    __slots__ = ("key",)

    def __init__(self, key: Key) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"Ref({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is Ref and other.key == self.key

    def __hash__(self) -> int:
        return hash((Ref, self.key))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ref, (self.key,))


def _scan(obj: Any, deps: list[Key]) -> bool:
    """Add the keys that ``obj`` refers to onto ``deps``; True if it holds a Ref or Task."""
    t = type(obj)
    if t is Ref:
        deps.append(obj.key)
        return True
    if t is Task:
        deps.extend(obj.dependencies)
        return True
    if t in ATOMIC_TYPES:
        return False
    found = False
    if t is list or t is tuple or t is set or t is frozenset:
        for item in obj:
            if _scan(item, deps):
                found = True
    elif t is dict:
        for item in obj.values():
            if _scan(item, deps):
                found = True
    return found


def _fill(obj: Any, data: Mapping[Key, Any]) -> Any:
    """``obj`` with every Ref replaced by its value and every nested Task run."""
    t = type(obj)
    if t is Ref:
        return data[obj.key]
    if t is Task:
        return obj(data)
    if t is list:
        return [_fill(x, data) for x in obj]
    if t is tuple:
        return tuple([_fill(x, data) for x in obj])
    if t is dict:
        return {k: _fill(v, data) for k, v in obj.items()}
    if t is set or t is frozenset:
        return t(_fill(x, data) for x in obj)
    return obj


class Task:
    """A call ``func(*args, **kwargs)`` whose arguments may hold :class:`Ref` s and nested tasks.

    ``dependencies`` is the tuple of keys it refers to, without repeats.  Calling the task with
    a mapping of those keys to values runs it.
    """

    __slots__ = ("_refs", "args", "dependencies", "func", "kwargs")

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    dependencies: tuple[Key, ...]
    _refs: tuple[tuple[int, Key], ...] | None  # (position, key) of top-level Refs; None: general

    def __init__(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        if not callable(func):
            raise TypeError(f"Task needs a callable first, got {type(func).__name__}: {func!r}")
        self.func = func
        self.args = args
        self.kwargs = kwargs
        deps: list[Key] = []
        refs = []
        simple = True
        i = 0
        for a in args:
            t = type(a)
            if t is Ref:
                refs.append((i, a.key))
                deps.append(a.key)
            elif t not in ATOMIC_TYPES and _scan(a, deps):
                simple = False
            i += 1
        if kwargs:
            for v in kwargs.values():
                if type(v) not in ATOMIC_TYPES and _scan(v, deps):
                    simple = False
        self.dependencies = tuple(dict.fromkeys(deps)) if len(deps) > 1 else tuple(deps)
        self._refs = tuple(refs) if simple else None

    def __call__(self, data: Mapping[Key, Any]) -> Any:
        refs = self._refs
        if refs is None:  # references nested in containers, kwargs or inner tasks
            args = [_fill(a, data) for a in self.args]
            kwargs = {k: _fill(v, data) for k, v in self.kwargs.items()}
            return self.func(*args, **kwargs)
        if refs:
            args = list(self.args)
            for i, key in refs:
                args[i] = data[key]
            if self.kwargs:
                return self.func(*args, **self.kwargs)
            return self.func(*args)
        if self.kwargs:
            return self.func(*self.args, **self.kwargs)
        return self.func(*self.args)

    def __repr__(self) -> str:
        name = getattr(self.func, "__name__", repr(self.func))
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Task({name}, {', '.join(parts)})" if parts else f"Task({name})"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is Task
            and self.func == other.func
            and self.args == other.args
            and self.kwargs == other.kwargs
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_task, (self.func, self.args, self.kwargs))

    def with_func(self, func: Callable[..., Any]) -> Task:
        """The same task calling ``func`` instead (a stand-in that pickles differently, say)."""
        return Task(func, *self.args, **self.kwargs)

    def renamed(self, names: Mapping[Key, Key]) -> Task:
        """The same task with the keys it refers to renamed by ``names`` (others unchanged)."""
        return _rename_task(self, names)


class _TupleTask(Task):
    """A classic ``(func, *args)`` tuple compiled for execution without building Refs.

    Its ``args`` hold the keys themselves at the positions listed in ``_refs``; it behaves as
    the equivalent :class:`Task` but is cheaper to make.  Only the planner creates these.
    """

    __slots__ = ()

    def _as_task(self) -> Task:
        args = list(self.args)
        for i, key in self._refs or ():
            args[i] = Ref(key)
        return Task(self.func, *args)

    def __repr__(self) -> str:
        return repr(self._as_task())

    def __eq__(self, other: object) -> bool:
        return self._as_task() == other

    __hash__ = None

    def __reduce__(self) -> tuple[Any, ...]:
        # compact: no Ref per key, and no re-analysis of the arguments when it is loaded
        return (_rebuild_tuple_task, (self.func, self.args, self._refs, self.dependencies))

    def with_func(self, func: Callable[..., Any]) -> Task:
        return _rebuild_tuple_task(func, self.args, self._refs or (), self.dependencies)

    def renamed(self, names: Mapping[Key, Key]) -> Task:
        """The same task with the keys it refers to renamed by ``names`` (others unchanged)."""
        args = list(self.args)
        refs = []
        for i, key in self._refs or ():
            args[i] = new = names.get(key, key)
            refs.append((i, new))
        deps = tuple(names.get(k, k) for k in self.dependencies)
        return _rebuild_tuple_task(self.func, tuple(args), tuple(refs), deps)


class _GatherTask(_TupleTask):
    """A classic tuple with flat lists of keys among its arguments, such as ``(sum, [k1, k2, ...])``.

    ``_lists`` holds ``(position, keys)`` for each such list; the call builds each list from the
    values directly, with no :class:`Ref` per element.  Only the planner creates these.
    """

    __slots__ = ("_lists",)

    _lists: tuple[tuple[int, tuple[Key, ...]], ...]

    def __call__(self, data: Mapping[Key, Any]) -> Any:
        args = list(self.args)
        for i, key in self._refs:  # type: ignore[union-attr]
            args[i] = data[key]
        for i, keys in self._lists:
            args[i] = [data[k] for k in keys]
        return self.func(*args)

    def _as_task(self) -> Task:
        args = list(self.args)
        for i, key in self._refs or ():
            args[i] = Ref(key)
        for i, keys in self._lists:
            args[i] = [Ref(k) for k in keys]
        return Task(self.func, *args)

    def __reduce__(self) -> tuple[Any, ...]:
        return self._as_task().__reduce__()

    def with_func(self, func: Callable[..., Any]) -> Task:
        return self._as_task().with_func(func)

    def renamed(self, names: Mapping[Key, Key]) -> Task:
        return _rename_task(self._as_task(), names)


_new = object.__new__
_NO_KWARGS: dict[str, Any] = {}  # shared by every compiled tuple; never mutated


def _key_list(items: list[Any], graph: Mapping[Key, Any]) -> tuple[Key, ...] | None:
    """``items`` as a tuple of keys if every item is a key of ``graph``; else None."""
    for x in items:
        t = type(x)
        if t is tuple:
            if x and callable(x[0]):
                return None
        elif t is not str and t is not int and t not in ATOMIC_TYPES:
            return None
        try:
            if x not in graph:
                return None
        except TypeError:  # an unhashable literal inside a tuple
            return None
    return tuple(items)


def compile_tuple(value: tuple[Any, ...], graph: Mapping[Key, Any]) -> Task:
    """A classic task tuple as an executable task, with fast paths for flat arguments and key lists."""
    args = value[1:]
    deps: list[Key] = []
    refs = []
    lists = None
    i = 0
    for a in args:
        t = type(a)
        if t is str or t is tuple or t is int:
            try:
                if a in graph:
                    refs.append((i, a))
                    deps.append(a)
            except TypeError:  # an unhashable literal inside a tuple
                pass
            if t is tuple and a and callable(a[0]):
                return to_task(value, graph)  # nested task: general path
        elif t is list:
            keys = _key_list(a, graph)
            if keys is None:
                return to_task(value, graph)  # nested tasks, lists or literals: general path
            if lists is None:
                lists = [(i, keys)]
            else:
                lists.append((i, keys))
            deps.extend(keys)
        elif t is dict or t is Ref or t is Task:
            return to_task(value, graph)
        elif t in ATOMIC_TYPES and a in graph:  # bytes, float keys
            refs.append((i, a))
            deps.append(a)
        i += 1
    task: Task
    if lists is None:
        task = _new(_TupleTask)
    else:
        task = _new(_GatherTask)
        task._lists = tuple(lists)
    task.func = value[0]
    task.args = args
    task.kwargs = _NO_KWARGS
    task.dependencies = tuple(dict.fromkeys(deps)) if len(deps) > 1 else tuple(deps)
    task._refs = tuple(refs)
    return task


def to_wire(task: Task) -> tuple[tuple[Any, ...], dict[str, Any], tuple[tuple[int, Key], ...] | None]:
    """``(args, kwargs, refs)`` of a task, for sending it to another process with its function apart.

    Schedulers that send many tasks of few functions send each function once and these parts
    per task; :func:`from_wire` rebuilds an executable task without re-analysing the arguments.
    """
    if type(task) is _GatherTask:
        task = task._as_task()  # the general form; rare (a few reductions per graph)
    return task.args, task.kwargs, task._refs


def from_wire(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    refs: tuple[tuple[int, Key], ...] | None,
) -> Task:
    """An executable task from :func:`to_wire` parts (its ``dependencies`` are not filled in)."""
    if refs is None:
        return Task(func, *args, **kwargs)
    task: Task = _new(_TupleTask)
    task.func = func
    task.args = args
    task.kwargs = kwargs
    task.dependencies = ()
    task._refs = refs
    return task


def _rebuild_task(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Task:
    return Task(func, *args, **kwargs)


def _rebuild_tuple_task(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    refs: tuple[tuple[int, Key], ...],
    dependencies: tuple[Key, ...],
) -> Task:
    task: Task = _new(_TupleTask)
    task.func, task.args, task.kwargs = func, args, _NO_KWARGS
    task.dependencies, task._refs = dependencies, refs
    return task


def _rename_task(task: Task, names: Mapping[Key, Key]) -> Task:
    args = [_rename(a, names) for a in task.args]
    return Task(task.func, *args, **{k: _rename(v, names) for k, v in task.kwargs.items()})


def _rename(obj: Any, names: Mapping[Key, Key]) -> Any:
    t = type(obj)
    if t is Ref:
        return Ref(names.get(obj.key, obj.key))
    if t is Task:
        return _rename_task(obj, names)
    if t is list:
        return [_rename(x, names) for x in obj]
    if t is tuple:
        return tuple(_rename(x, names) for x in obj)
    if t is dict:
        return {k: _rename(v, names) for k, v in obj.items()}
    if t is set or t is frozenset:
        return t(_rename(x, names) for x in obj)
    return obj


def _identity(x: Any) -> Any:
    return x


def istask(value: Any) -> bool:
    """True for a :class:`Task` or a classic ``(callable, *args)`` tuple."""
    return type(value) is Task or (type(value) is tuple and bool(value) and callable(value[0]))


def is_key(value: Any) -> bool:
    """True if ``value`` has the type of a graph key."""
    if type(value) is tuple:
        return all(is_key(v) for v in value)
    return isinstance(value, _KEY_TYPES)


def _convert_arg(arg: Any, graph: Mapping[Key, Any]) -> Any:
    t = type(arg)
    if t is tuple:
        if arg and callable(arg[0]):
            return Task(arg[0], *[_convert_arg(a, graph) for a in arg[1:]])
        return Ref(arg) if _in_graph(arg, graph) else arg
    if t is list:
        return [_convert_arg(a, graph) for a in arg]
    if t is dict:
        return {k: _convert_arg(v, graph) for k, v in arg.items()}
    if t is Task or t is Ref:
        return arg
    if t in ATOMIC_TYPES:
        return Ref(arg) if arg in graph else arg
    return arg


def _in_graph(value: Any, graph: Mapping[Key, Any]) -> bool:
    try:
        return value in graph
    except TypeError:  # an unhashable literal nested in a tuple
        return False


def to_task(value: Any, graph: Mapping[Key, Any]) -> Any:
    """Convert one graph value to the ``Task``/``Ref`` spec; literals come back unchanged.

    A ``Ref`` value (an alias) becomes a task that returns the referenced value.
    """
    t = type(value)
    if t is Task:
        return value
    if t is tuple:
        if value and callable(value[0]):
            return Task(value[0], *[_convert_arg(a, graph) for a in value[1:]])
        if _in_graph(value, graph):
            return Task(_identity, Ref(value))
        return value
    if t is Ref:
        return Task(_identity, value)
    if t is list or t is dict:
        converted = _convert_arg(value, graph)
        deps: list[Key] = []
        return Task(_identity, converted) if _scan(converted, deps) else value
    if t in ATOMIC_TYPES and value in graph:
        return Task(_identity, Ref(value))
    return value


def compile_value(value: Any, graph: Mapping[Key, Any]) -> Any:
    """Like :func:`to_task`, but classic tuples become cheaper :class:`_TupleTask` s (planner only)."""
    if type(value) is tuple and value and callable(value[0]):
        return compile_tuple(value, graph)
    return to_task(value, graph)


def convert_graph(graph: Mapping[Key, Any]) -> dict[Key, Any]:
    """The whole graph in the ``Task``/``Ref`` spec."""
    return {k: to_task(v, graph) for k, v in graph.items()}


def dependencies(graph: Mapping[Key, Any]) -> dict[Key, tuple[Key, ...]]:
    """Each key's direct dependencies (keys it refers to that are in the graph)."""
    out: dict[Key, tuple[Key, ...]] = {}
    for k, v in graph.items():
        task = to_task(v, graph)
        out[k] = task.dependencies if type(task) is Task else ()
    return out


def find_cycle(start: Key, deps: Callable[[Key], Iterable[Key]]) -> list[Key]:
    """A cycle through ``start``, as the list of keys on it (empty if there is none)."""
    parent: dict[Key, Key] = {}
    stack = [start]
    seen = {start}
    while stack:
        k = stack.pop()
        for d in deps(k):
            if d == start:
                path = [k]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1]
            if d not in seen:
                seen.add(d)
                parent[d] = k
                stack.append(d)
    return []


def raise_cycle(start: Key, tasks: Mapping[Key, Any]) -> None:
    """Raise :class:`CycleError` for the cycle through ``start`` among ``tasks``."""

    def deps(k: Key) -> Iterable[Key]:
        t = tasks.get(k)
        return [d for d in t.dependencies if d in tasks] if isinstance(t, Task) else ()

    raise CycleError(find_cycle(start, deps) or [start])


def flatten_keys(keys: Any) -> list[Key]:
    """The flat list of keys in a key, or an arbitrarily nested list of keys."""
    if type(keys) is not list:
        return [keys]
    out: list[Key] = []
    stack = [iter(keys)]
    while stack:
        for k in stack[-1]:
            if type(k) is list:
                stack.append(iter(k))
                break
            out.append(k)
        else:
            stack.pop()
    return out


def pack_results(keys: Any, results: Mapping[Key, Any]) -> Any:
    """Results shaped like ``keys``: a key gives its value, a (nested) list gives a list."""
    if type(keys) is not list:
        return results[keys]
    return [pack_results(k, results) for k in keys]


def check_key(key: Any) -> None:
    """Raise a TypeError naming ``key`` if it cannot be a graph key."""
    if not isinstance(key, Hashable):
        raise TypeError(f"graph keys must be hashable, got {type(key).__name__}: {key!r}")
