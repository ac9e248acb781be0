"""The ``pool`` scheduler: the shared local engine on a ``concurrent.futures`` executor of the user's.

The executor comes from the ``pool=`` argument of ``compute``/``get``, else the ``pool``
configuration value (``taskloom.config.set(pool=executor)``).  Thread executors share memory
with the caller; any other executor (``ProcessPoolExecutor``, loky's) gets tasks and data
cloudpickled.  The executor is never shut down here: it belongs to whoever made it.

:func:`executor_scheduler` makes a ``get`` bound to one executor (or a factory of one), for a
package that registers a scheduler name of its own through ``taskloom_schedulers``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

from taskloom import config
from taskloom.errors import TaskloomError
from taskloom.executor import execute_on_executor
from taskloom.graph import Key
from taskloom.local import task_events
from taskloom.order import plan

Get = Callable[..., list[Any]]


def get(
    graph: Mapping[Key, Any],
    keys: list[Key],
    pool: Executor | None = None,
    num_workers: int | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Compute ``keys`` of ``graph`` on the executor ``pool`` (default: the ``pool`` configuration).

    ``num_workers`` bounds the batches in flight (twice it) when given; by default the
    executor's own size decides.
    """
    executor = pool if pool is not None else config.get("pool", None)
    if executor is None:
        raise TaskloomError(
            "the 'pool' scheduler runs tasks on a concurrent.futures executor, and none was given: "
            "pass one with taskloom.config.set(pool=executor) or compute(..., pool=executor)"
        )
    return run(graph, keys, _checked(executor), "pool", num_workers)


def executor_scheduler(executor: Executor | Callable[[], Executor], name: str) -> Get:
    """A scheduler ``get`` that runs every compute on ``executor`` and reports itself as ``name``.

    ``executor`` is an executor, or a function returning one (called at each compute, so a
    package can create its executor lazily or use a reusable one).  Register the result in a
    ``taskloom_schedulers`` hook: ``SchedulerSpec(name, get=executor_scheduler(...))``.
    """
    factory = executor if not isinstance(executor, Executor) and callable(executor) else None

    def get(
        graph: Mapping[Key, Any], keys: list[Key], num_workers: int | None = None, **kwargs: Any
    ) -> list[Any]:
        chosen = factory() if factory is not None else executor
        return run(graph, keys, _checked(chosen), name, num_workers)

    get.__qualname__ = get.__name__ = f"{name}_get"
    get.__doc__ = f"Compute ``keys`` of ``graph`` on the {name!r} scheduler's executor."
    return get


def run(graph: Mapping[Key, Any], keys: list[Key], executor: Executor, scheduler: str,
        num_workers: int | None = None) -> list[Any]:  # fmt: skip
    """Plan ``graph`` for ``keys`` and run it on ``executor``; the values in the order of ``keys``."""
    results = execute_on_executor(
        plan(graph, keys), executor, task_events(), scheduler=scheduler, max_workers=num_workers
    )
    return [results[k] for k in keys]


def _checked(executor: Any) -> Executor:
    if not callable(getattr(executor, "submit", None)):
        raise TypeError(
            f"the pool must be a concurrent.futures.Executor (something with submit); "
            f"got {type(executor).__name__}: {executor!r}"
        )
    checked: Executor = executor
    return checked
