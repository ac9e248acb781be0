"""``compute``, ``persist`` and ``get``, the collection protocol and choosing a scheduler.

A *collection* is any object whose type has

* ``__taskloom_graph__()`` -- a mapping ``key -> task`` that computes it,
* ``__taskloom_keys__()`` -- a key or a (nested) list of keys, the outputs,
* ``__taskloom_postcompute__()`` -- ``(func, extra_args)``: the computed value is
  ``func(results, *extra_args)`` where ``results`` is shaped like the keys,
* optionally ``__taskloom_postpersist__()`` -- ``(func, extra_args)``: the persisted collection is
  ``func({key: value}, *extra_args)``.

The scheduler is chosen, highest precedence first, by the ``scheduler=`` argument, the
``scheduler`` configuration value, and the default: ``threads`` where it is installed.  It may be
a registered name or alias, a ``get(graph, keys, **kwargs)`` callable, or an object with such a
``get`` method (a client).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import config
from .graph import Key, flatten_keys, pack_results
from .plugins import get_plugin_manager, get_scheduler_spec, hook_has_impls, schedulers

DEFAULT_SCHEDULER = "threads"


def is_collection(obj: Any) -> bool:
    """True if ``obj`` follows the collection protocol."""
    return hasattr(type(obj), "__taskloom_graph__")


def resolve_scheduler(scheduler: Any = None) -> tuple[Callable[..., Any], str]:
    """The ``get`` function and display name of the scheduler to use."""
    if scheduler is None:
        scheduler = config.get("scheduler", None)
    if scheduler is None:
        registry = schedulers()
        if DEFAULT_SCHEDULER in registry or not registry:
            scheduler = DEFAULT_SCHEDULER
        else:
            scheduler = next(iter(registry))
    if isinstance(scheduler, str):
        spec = get_scheduler_spec(scheduler)
        return spec.get, spec.name
    if callable(scheduler):
        return scheduler, getattr(scheduler, "__qualname__", type(scheduler).__qualname__)
    get = getattr(scheduler, "get", None)
    if callable(get):
        return get, type(scheduler).__qualname__
    raise TypeError(
        f"scheduler must be a name, a get(graph, keys) callable or an object with a get "
        f"method; got {type(scheduler).__name__}: {scheduler!r}"
    )


def _run(graph: Mapping[Key, Any], keys: list[Key], scheduler: Any, kwargs: dict[str, Any]) -> list[Any]:
    get, name = resolve_scheduler(scheduler)
    observed = hook_has_impls("taskloom_compute_start") or hook_has_impls("taskloom_compute_finish")
    if not observed:
        return list(get(graph, keys, **kwargs))
    hook = get_plugin_manager().hook
    try:
        hook.taskloom_compute_start(graph=graph, keys=keys, scheduler=name)
        results = list(get(graph, keys, **kwargs))
    except BaseException as exc:
        hook.taskloom_compute_finish(keys=keys, error=exc)
        raise
    hook.taskloom_compute_finish(keys=keys, error=None)
    return results


def get(graph: Mapping[Key, Any], keys: Any, scheduler: Any = None, **kwargs: Any) -> Any:
    """Compute ``keys`` of ``graph``; results take the shape of ``keys``.

    ``keys`` is a key (a tuple is a key) or a list, possibly nested, of keys.  Extra keyword
    arguments (``num_workers=``, ...) go to the scheduler.
    """
    flat = flatten_keys(keys)
    results = _run(graph, flat, scheduler, kwargs)
    if type(keys) is not list:
        return results[0]
    return pack_results(keys, dict(zip(flat, results)))


def _collections_of(args: tuple[Any, ...], traverse: bool) -> list[Any]:
    """Each argument as a collection (containers of collections become one), or as itself."""
    from .delayed import _has_delayed, delayed

    out = []
    for a in args:
        if not is_collection(a) and traverse and _has_delayed(a):
            a = delayed(a)
        out.append(a)
    return out


def _compute_all(colls: list[Any], scheduler: Any, kwargs: dict[str, Any]) -> dict[Key, Any]:
    graph: dict[Key, Any] = {}
    flat: list[Key] = []
    for c in colls:
        if is_collection(c):
            graph.update(c.__taskloom_graph__())
            flat.extend(flatten_keys(c.__taskloom_keys__()))
    if not flat:
        return {}
    return dict(zip(flat, _run(graph, flat, scheduler, kwargs)))


def compute(*args: Any, scheduler: Any = None, traverse: bool = True, **kwargs: Any) -> tuple[Any, ...]:
    """Compute several collections at once, sharing their common tasks; return a tuple of values.

    Arguments that are not collections come back unchanged; with ``traverse=True`` lists,
    tuples, dicts and sets holding collections are computed too.
    """
    colls = _collections_of(args, traverse)
    values = _compute_all(colls, scheduler, kwargs)
    out = []
    for c in colls:
        if is_collection(c):
            func, extra = c.__taskloom_postcompute__()
            out.append(func(pack_results(c.__taskloom_keys__(), values), *extra))
        else:
            out.append(c)
    return tuple(out)


def persist(*args: Any, scheduler: Any = None, traverse: bool = True, **kwargs: Any) -> tuple[Any, ...]:
    """Compute collections and return new ones that hold their values (same keys)."""
    colls = _collections_of(args, traverse)
    values = _compute_all(colls, scheduler, kwargs)
    out = []
    for c in colls:
        rebuild = getattr(c, "__taskloom_postpersist__", None)
        if is_collection(c) and rebuild is not None:
            func, extra = rebuild()
            mine = {k: values[k] for k in flatten_keys(c.__taskloom_keys__())}
            out.append(func(mine, *extra))
        else:
            out.append(c)
    return tuple(out)
