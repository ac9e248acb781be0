"""Dask's ``scheduler=`` side: ``get`` runs a Dask graph on taskloom; ``use`` makes that the default.

``get(dsk, keys, scheduler=None, **kwargs)`` has the signature Dask expects of a scheduler
function, so ``x.compute(scheduler=taskloom_dask.get)`` and
``dask.config.set(scheduler=taskloom_dask.bind("processes"))`` work unchanged.  The graph is
converted once (:mod:`taskloom_dask.convert`), computed with :func:`taskloom.get` -- which fires
taskloom's own diagnostics hooks -- and Dask's active callbacks (``dask.callbacks.Callback``,
``ProgressBar``, ``Profiler``, ...) are bridged onto those hooks (:mod:`taskloom_dask.callbacks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import taskloom
import taskloom.plugins
from taskloom.graph import flatten_keys

Key = Any  # str | bytes | int | float | tuple of these

__all__ = ["Get", "bind", "get", "use"]


def get(
    dsk: Any,
    keys: Any,
    scheduler: Any = None,
    *,
    callbacks: Any = None,
    cache: Mapping[Key, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Compute ``keys`` of the Dask graph ``dsk`` on a taskloom scheduler.

    :param dsk: a Dask graph (classic or task spec, any ``Mapping``, a ``HighLevelGraph``) or
        what Dask hands a scheduler function (an object with ``__dask_graph__``).
    :param keys: a key, or a list of keys nested to any depth.
    :param scheduler: a taskloom scheduler name or alias (``"threads"``, ``"processes"``,
        ``"dask"``, ...), a taskloom ``get`` callable, or ``None`` for taskloom's configured
        default.
    :param callbacks: Dask callbacks (``Callback`` objects or 5-tuples) for this call only;
        ``None`` uses the active ones (``with ProgressBar(): ...``).
    :param cache: values already known, by key; their tasks do not run.
    :param kwargs: passed to the taskloom scheduler (``num_workers=``, ``pool=``, ...).
    :return: the value of ``keys`` in Dask's shape: a list of keys gives a *tuple* of values.
    """
    from dask.callbacks import local_callbacks, normalize_callback  # here: import stays cheap

    from .callbacks import DaskCallbacks
    from .convert import convert

    graph = dsk if isinstance(dsk, Mapping) else dsk.__dask_graph__()
    flat = flatten_keys(keys)
    if callbacks is not None:  # Callback objects or Dask's 5-tuples
        callbacks = [normalize_callback(cb) for cb in callbacks]
    with local_callbacks(callbacks) as active:
        if active:
            with DaskCallbacks(active, graph, flat, cache) as bridge:
                values = taskloom.get(bridge.graph, flat, scheduler=scheduler, **kwargs)
        else:
            values = taskloom.get(convert(graph, cache), flat, scheduler=scheduler, **kwargs)
    if type(keys) is not list:
        return values[0]
    return _pack(keys, iter(values))


def _pack(keys: list[Any], values: Iterator[Any]) -> tuple[Any, ...]:
    """Values shaped like ``keys``, lists becoming tuples (as Dask's own ``get`` returns them)."""
    return tuple([_pack(k, values) if type(k) is list else next(values) for k in keys])


@attrs.frozen
class Get:
    """A Dask scheduler function bound to one taskloom scheduler and its options.

    ``Get("processes", {"num_workers": 4})(dsk, keys)`` is
    ``get(dsk, keys, scheduler="processes", num_workers=4)``; keyword arguments of the call
    override the bound options.  Picklable, and usable wherever Dask takes ``scheduler=``.
    """

    scheduler: Any = None
    options: Mapping[str, Any] = attrs.field(factory=dict)

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return get(dsk, keys, scheduler=self.scheduler, **{**self.options, **kwargs})

    @property
    def __name__(self) -> str:
        return f"taskloom_dask.get[{self.scheduler if self.scheduler is not None else 'default'}]"


def bind(scheduler: Any = None, **options: Any) -> Get:
    """A Dask scheduler function that runs on taskloom's ``scheduler`` with ``options``.

    A scheduler name is checked here, so a typo fails at once with the list of installed
    schedulers (:class:`taskloom.SchedulerNotFoundError`).
    """
    if isinstance(scheduler, str):
        taskloom.plugins.get_scheduler_spec(scheduler)
    return Get(scheduler, dict(options))


@contextlib.contextmanager
def use(scheduler: Any = None, **options: Any) -> Iterator[Get]:
    """Within the block, Dask computes on taskloom's ``scheduler`` (``None``: taskloom's default).

    Sets Dask's ``scheduler`` configuration to :func:`bind` ``(scheduler, **options)`` and
    restores it afterwards; yields the bound scheduler function::

        with taskloom_dask.use("processes", num_workers=4):
            bag.map(parse).compute()
    """
    import dask

    bound = bind(scheduler, **options)
    with dask.config.set(scheduler=bound):
        yield bound
