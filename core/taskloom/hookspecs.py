"""Every hook the taskloom core calls, typed and documented in one place.

Plugins implement these with the :data:`taskloom.hookimpl` marker and register through the
``taskloom`` entry-point group -- the built-in schedulers exactly like third-party ones::

    # pyproject.toml
    [project.entry-points.taskloom]
    myscheduler = "my_package.plugin"

    # my_package/plugin.py
    import taskloom

    @taskloom.hookimpl
    def taskloom_schedulers():
        return [taskloom.SchedulerSpec("mine", get=my_get, aliases=("my",))]
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .bench.cases import BenchCase
    from .plugins import SchedulerSpec
    from .serialize import Serializer

hookspec = pluggy.HookspecMarker("taskloom")

# ---------------------------------------------------------------------------------------------
# Registries: what a plugin provides
# ---------------------------------------------------------------------------------------------


@hookspec
def taskloom_schedulers() -> Sequence[SchedulerSpec]:
    """Return the schedulers this plugin provides.

    Called once, when the scheduler registry is first built.

    :return: :class:`taskloom.SchedulerSpec` objects.  A spec's ``get(graph, keys, **kwargs)``
        computes the flat list of keys ``keys`` of ``graph`` and returns their values in the same
        order; the core shapes the results, fires the compute hooks and resolves the name.
    """
    raise NotImplementedError


@hookspec
def taskloom_serializers() -> Sequence[Serializer]:
    """Return the serializers this plugin provides.

    Called once, when the serializer registry is first built.

    :return: :class:`taskloom.Serializer` objects; a serializer whose ``types`` match a value is
        preferred for it over the default.
    """
    raise NotImplementedError


@hookspec
def taskloom_config_defaults() -> Mapping[str, Any]:
    """Return this plugin's configuration defaults as a nested dict.

    Called when the configuration is first read and after :func:`taskloom.config.refresh`.
    Defaults are the lowest layer: files, ``TASKLOOM_*`` variables and ``config.set`` override
    them.

    :return: a nested dict of configuration keys and their default values.
    """
    raise NotImplementedError


@hookspec
def taskloom_cli(commands: argparse._SubParsersAction) -> None:
    """Add subcommands to the ``taskloom`` command.

    :param commands: the ``argparse`` sub-parser collection; call
        ``commands.add_parser(name, help=...)`` and ``set_defaults(func=run)`` on the result,
        where ``run(args: argparse.Namespace) -> int | None`` is called with the parsed arguments.
    """


@hookspec
def taskloom_bench_cases() -> Sequence[BenchCase]:
    """Return benchmarks to run in ``taskloom bench`` after the standard workloads.

    Called once per ``taskloom bench`` run (not with ``--no-cases``).

    :return: :class:`taskloom.bench.cases.BenchCase` objects; each case's ``run(context)``
        measures what it likes on ``context.schedulers`` (and on Dask's own scheduler when
        ``context.compare == "dask"``) and returns :class:`~taskloom.bench.cases.BenchFigure` rows.
    """
    raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Diagnostics: called by every scheduler
# ---------------------------------------------------------------------------------------------


@hookspec
def taskloom_compute_start(graph: Mapping[Any, Any], keys: Sequence[Any], scheduler: str) -> None:
    """A computation is about to start.

    :param graph: the graph as given (not yet culled or converted); do not modify it.
    :param keys: the flat list of requested keys.
    :param scheduler: the scheduler's name (or the ``get`` callable's qualified name).
    """


@hookspec
def taskloom_task_start(key: Any, worker: str) -> None:
    """A task is about to run.

    Called on the thread that runs the task (local schedulers) or on the thread that learns
    about it (schedulers whose workers are other processes).

    :param key: the task's key.
    :param worker: the worker's identifier, e.g. ``"taskloom-threads-0"``.
    """


@hookspec
def taskloom_task_finish(
    key: Any, worker: str, duration: float, error: BaseException | None, nbytes: int | None
) -> None:
    """A task has finished, successfully or not.

    :param key: the task's key.
    :param worker: the worker's identifier.
    :param duration: seconds the task ran.
    :param error: the exception it raised, or ``None``.
    :param nbytes: the size of the result in bytes (:func:`taskloom.sizeof.sizeof` of the value,
        or its serialized size where the result lives in another process), or ``None`` after an
        error.  Schedulers measure it only when some implementation of this hook names
        ``nbytes`` among its arguments (see :attr:`taskloom.local.TaskEvents.sizes`), so
        listeners that leave it out cost nothing extra.
    """


@hookspec
def taskloom_compute_finish(keys: Sequence[Any], error: BaseException | None) -> None:
    """A computation has ended.

    :param keys: the flat list of requested keys.
    :param error: the exception it ends with, or ``None`` on success.
    """


# ---------------------------------------------------------------------------------------------
# Workers: called on every worker of every backend that has workers
# ---------------------------------------------------------------------------------------------


@hookspec
def taskloom_worker_setup(worker: Any) -> None:
    """A worker is starting: set up per-worker resources before its first task.

    :param worker: the worker object (:func:`taskloom.get_worker` returns it inside tasks);
        attributes set on it are visible to tasks that run there.
    """


@hookspec
def taskloom_worker_teardown(worker: Any) -> None:
    """A worker is shutting down: release what ``taskloom_worker_setup`` acquired.

    :param worker: the worker object given to ``taskloom_worker_setup``.
    """


@hookspec
def taskloom_task_transition(worker: Any, key: Any, start: str, finish: str) -> None:
    """A task changed state on a worker (for example ``"ready"`` to ``"executing"``).

    :param worker: the worker object.
    :param key: the task's key.
    :param start: the state it left.
    :param finish: the state it entered.
    """
