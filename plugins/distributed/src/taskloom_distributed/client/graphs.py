"""Futures inside arguments and graphs: found, turned into references, and values put back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taskloom.graph import ATOMIC_TYPES, Key, Ref, Task
from taskloom.serialize import cloudpickle_dumps

from ..comm import Serialized
from .futures import Future

if TYPE_CHECKING:
    from .client import Client


def identity(x: Any) -> Any:
    return x


def by_value(obj: Any) -> Serialized:
    """``obj`` pickled with cloudpickle: functions from ``__main__`` and lambdas travel by value."""
    return Serialized("cloudpickle", cloudpickle_dumps(obj))


def _own(future: Future, client: Client | None) -> None:
    if client is not None and future.client is not client:
        raise ValueError(
            f"future {future.key!r} belongs to another client ({future.client!r}); "
            "a task can only use futures of the client it is submitted to"
        )


def replace_futures(obj: Any, deps: set[Key], client: Client | None = None) -> Any:
    """``obj`` with every Future (also inside lists, tuples, dicts) replaced by a Ref to its key."""
    t = type(obj)
    if t is Future:
        _own(obj, client)
        deps.add(obj.key)
        return Ref(obj.key)
    if t is list:
        return [replace_futures(x, deps, client) for x in obj]
    if t is tuple:
        return tuple(replace_futures(x, deps, client) for x in obj)
    if t is dict:
        return {k: replace_futures(v, deps, client) for k, v in obj.items()}
    return obj


def holds_future(obj: Any) -> bool:
    """Is there a Future in ``obj`` (looking into lists, tuples and dict values)?"""
    t = type(obj)
    if t in ATOMIC_TYPES:
        return False
    if t is list or t is tuple:
        for x in obj:
            tx = type(x)
            if tx not in ATOMIC_TYPES and (tx is Future or holds_future(x)):
                return True
        return False
    if t is dict:
        return holds_future(list(obj.values()))
    return isinstance(obj, Future)


def rewrite(obj: Any, names: Mapping[Key, Key], deps: set[Key]) -> Any:
    """``obj`` with Refs renamed by ``names`` and Futures turned into Refs; keys go to ``deps``."""
    t = type(obj)
    if t is Ref:
        key = names.get(obj.key, obj.key)
        deps.add(key)
        return Ref(key)
    if isinstance(obj, Future):
        deps.add(obj.key)
        return Ref(obj.key)
    if t is Task:
        return rewrite_task(obj, names, deps)
    if t is list:
        return [rewrite(x, names, deps) for x in obj]
    if t is tuple:
        return tuple(rewrite(x, names, deps) for x in obj)
    if t is dict:
        return {k: rewrite(v, names, deps) for k, v in obj.items()}
    return obj


def rewrite_task(task: Task, names: Mapping[Key, Key], deps: set[Key]) -> Task:
    full = task if type(task) is Task else task._as_task()  # type: ignore[attr-defined]
    args = [rewrite(a, names, deps) for a in full.args]
    kwargs = {k: rewrite(v, names, deps) for k, v in full.kwargs.items()}
    return Task(full.func, *args, **kwargs)


def collect_futures(obj: Any, out: list[Future]) -> None:
    """Append every Future in ``obj`` (a Future, or lists/tuples/sets/dicts of them) to ``out``."""
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for x in obj:
            collect_futures(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            collect_futures(x, out)


_SKIPPED = object()


def rebuild(obj: Any, values: Mapping[Key, Any], skip: bool = False) -> Any:
    """``obj`` with each Future replaced by its value; with ``skip``, futures without a value
    (failed ones, under ``errors="skip"``) are left out of their container."""
    if isinstance(obj, Future):
        return values.get(obj.key, _SKIPPED) if skip else values[obj.key]
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = (rebuild(x, values, skip) for x in obj)
        return type(obj)(x for x in items if x is not _SKIPPED)
    if isinstance(obj, dict):
        pairs = ((k, rebuild(v, values, skip)) for k, v in obj.items())
        return {k: v for k, v in pairs if v is not _SKIPPED}
    return obj
