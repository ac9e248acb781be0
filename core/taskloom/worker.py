"""Worker plugins and the worker-side hook dispatch every backend with workers shares.

A *worker* is whatever runs tasks: a pool thread, a worker process, a cluster worker.  Each has a
:class:`Worker` object (``taskloom.get_worker()`` returns it inside a task) and a
:class:`WorkerRuntime` that dispatches the worker hooks -- ``taskloom_worker_setup``,
``taskloom_worker_teardown`` and ``taskloom_task_transition`` -- on a plugin manager of its own.
On it are registered every installed plugin that implements a worker hook and, through a small
adapter, each user :class:`WorkerPlugin` registered with :func:`register_worker_plugin`, so one
dispatch serves both.

Plugins are set up in registration order before the worker's first task and torn down in reverse
order when the worker stops.  Registering a plugin under an existing name replaces it (the old
one is torn down where it was set up).  A ``setup`` that raises is reported as
:class:`~taskloom.errors.WorkerPluginError` naming the plugin, and the worker runs no task until
its plugins are all set up.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import WorkerPluginError
from .plugins import generation, get_plugin_manager, hookimpl

_WORKER_HOOKS = ("taskloom_worker_setup", "taskloom_worker_teardown", "taskloom_task_transition")


class WorkerPlugin:
    """Base class for per-worker setup: override any of ``setup``, ``teardown``, ``transition``.

    ``setup(worker)`` runs once in each worker before its first task (open a connection, load a
    model, and attach it: ``worker.db = connect()``; tasks reach it via ``get_worker().db``);
    ``teardown(worker)`` when the worker stops; ``transition(key, start, finish)`` on each task
    state change on that worker (``"ready" -> "executing" -> "memory"`` or ``"error"``).
    Instances travel to worker processes with cloudpickle.
    """

    name: str | None = None

    def setup(self, worker: Worker) -> None:
        """Called once in each worker before its first task."""

    def teardown(self, worker: Worker) -> None:
        """Called when the worker shuts down."""

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        """Called on each task state change on the worker."""


@attrs.define(eq=False, slots=False)
class Worker:
    """A worker as tasks and plugins see it; plugins may attach attributes to it."""

    name: str
    kind: str  # "thread", "process", ...
    pid: int = attrs.field(factory=os.getpid)

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} ({self.kind}, pid {self.pid})>"


# -- the process-wide registry of user worker plugins ------------------------------------------
_registry_lock = threading.Lock()
_registry: dict[str, WorkerPlugin] = {}
_registry_version = 0


def _plugin_name(plugin: WorkerPlugin, name: str | None) -> str:
    return name or getattr(plugin, "name", None) or f"{type(plugin).__qualname__}-{id(plugin):x}"


def register_worker_plugin(plugin: WorkerPlugin, name: str | None = None) -> str:
    """Register ``plugin`` on every worker of every local backend; return its name.

    It is set up on each worker before that worker's next task.  A plugin registered under an
    existing name replaces the old one.
    """
    global _registry_version
    if not callable(getattr(plugin, "setup", None)):
        raise TypeError(f"a worker plugin needs setup/teardown/transition methods, got {plugin!r}")
    key = _plugin_name(plugin, name)
    with _registry_lock:
        _registry.pop(key, None)  # a replacement goes to the end of the order
        _registry[key] = plugin
        _registry_version += 1
    return key


def unregister_worker_plugin(name: str) -> None:
    """Remove a registered worker plugin; it is torn down on each worker where it was set up."""
    global _registry_version
    with _registry_lock:
        if name not in _registry:
            known = ", ".join(_registry) or "none"
            raise KeyError(f"no worker plugin named {name!r}; registered: {known}")
        del _registry[name]
        _registry_version += 1


def registry_version() -> int:
    """A number that changes whenever a worker plugin, or any taskloom plugin, is registered or
    removed (lock-free read): workers compare it to know when to bring their plugins in line."""
    return _registry_version + generation()


def worker_plugins() -> tuple[int, dict[str, WorkerPlugin]]:
    """``(version, {name: plugin})``: the registered plugins, in registration order."""
    with _registry_lock:
        return _registry_version + generation(), dict(_registry)


# -- per-worker dispatch -----------------------------------------------------------------------
class _Adapter:
    """Makes a user WorkerPlugin look like a pluggy plugin with worker hooks."""

    def __init__(self, name: str, plugin: WorkerPlugin) -> None:
        self.name = name
        self.plugin = plugin

    @hookimpl
    def taskloom_worker_setup(self, worker: Worker) -> None:
        self.plugin.setup(worker)

    @hookimpl
    def taskloom_worker_teardown(self, worker: Worker) -> None:
        teardown = getattr(self.plugin, "teardown", None)
        if teardown is not None:
            teardown(worker)

    @hookimpl
    def taskloom_task_transition(self, worker: Worker, key: Any, start: str, finish: str) -> None:
        transition = getattr(self.plugin, "transition", None)
        if transition is not None:
            transition(key, start, finish)


def _overrides_transition(plugin: WorkerPlugin) -> bool:
    method = getattr(type(plugin), "transition", None)
    return method is not None and method is not WorkerPlugin.transition


def _installed_worker_plugins() -> dict[str, object]:
    """The plugins of the process's plugin manager that implement a worker hook, by name."""
    installed = get_plugin_manager()
    out: dict[str, object] = {}
    for name, plugin in installed.list_name_plugin():
        callers = installed.get_hookcallers(plugin) if plugin is not None else None
        if any(h.name in _WORKER_HOOKS for h in callers or ()):
            out[name] = plugin
    return out


_current = threading.local()


class WorkerRuntime:
    """The worker hooks of one worker: set-up state, dispatch and the ``get_worker`` binding."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.pm = pluggy.PluginManager("taskloom")
        self.pm.add_hookspecs(hookspecs)
        self.installed: dict[str, object] = _installed_worker_plugins()  # name -> plugin object
        for name, plugin in self.installed.items():
            self.pm.register(plugin, name=name)
        self.version = -1
        self.active: dict[str, _Adapter] = {}
        self.installed_set_up = False
        self._transitions = bool(self.pm.hook.taskloom_task_transition.get_hookimpls())

    @property
    def observes_transitions(self) -> bool:
        """True if any plugin on this worker wants ``transition`` calls."""
        return self._transitions

    def sync(self, version: int, plugins: dict[str, WorkerPlugin]) -> None:
        """Bring this worker's plugins in line with the registry (before running tasks).

        :raises WorkerPluginError: a plugin's ``setup`` raised; it stays pending, so the next
            call tries it again (after the user has fixed or replaced it).
        """
        if version == self.version and self.installed_set_up:
            return
        if not self.installed_set_up:
            self._call_installed_setup()
        elif version != self.version:
            self._follow_installed()
        for name in [n for n, a in self.active.items() if plugins.get(n) is not a.plugin][::-1]:
            self._teardown(name)
        for name, plugin in plugins.items():
            if name in self.active:
                continue
            adapter = _Adapter(name, plugin)
            try:
                plugin.setup(self.worker)
            except BaseException as exc:
                raise WorkerPluginError(name, self.worker.name, exc) from exc
            self.pm.register(adapter, name=f"worker-plugin:{name}")
            self.active[name] = adapter
        self.version = version
        self._transitions = any(_overrides_transition(a.plugin) for a in self.active.values()) or any(
            not isinstance(impl.plugin, _Adapter)
            for impl in self.pm.hook.taskloom_task_transition.get_hookimpls()
        )

    def _call_installed_setup(self) -> None:
        for impl in reversed(self.pm.hook.taskloom_worker_setup.get_hookimpls()):
            if isinstance(impl.plugin, _Adapter):
                continue
            try:
                impl.function(worker=self.worker)
            except BaseException as exc:
                raise WorkerPluginError(impl.plugin_name, self.worker.name, exc) from exc
        self.installed_set_up = True

    def _follow_installed(self) -> None:
        """Plugins registered or unregistered at run time (``taskloom.plugins.register``) since
        this worker set up: tear down and drop the ones gone, add and set up the new ones."""
        now = _installed_worker_plugins()
        for name in [n for n, p in self.installed.items() if now.get(n) is not p][::-1]:
            plugin = self.installed.pop(name)
            for impl in self._impls("taskloom_worker_teardown", plugin):
                impl.function(worker=self.worker)
            self.pm.unregister(plugin)
        for name, plugin in now.items():
            if name in self.installed:
                continue
            self.pm.register(plugin, name=name)
            self.installed[name] = plugin
            for impl in self._impls("taskloom_worker_setup", plugin):
                try:
                    impl.function(worker=self.worker)
                except BaseException as exc:
                    raise WorkerPluginError(name, self.worker.name, exc) from exc

    def _impls(self, hook: str, plugin: object) -> list[Any]:
        return [impl for impl in getattr(self.pm.hook, hook).get_hookimpls() if impl.plugin is plugin]

    def _teardown(self, name: str) -> None:
        adapter = self.active.pop(name)
        self.pm.unregister(adapter)
        adapter.taskloom_worker_teardown(self.worker)

    def transition(self, key: Any, start: str, finish: str) -> None:
        """Dispatch a task state change (call only when :attr:`observes_transitions`)."""
        self.pm.hook.taskloom_task_transition(worker=self.worker, key=key, start=start, finish=finish)

    def close(self) -> None:
        """Tear down every plugin in reverse registration order, then the installed ones."""
        for name in list(self.active)[::-1]:
            self._teardown(name)
        if self.installed_set_up:
            self.pm.hook.taskloom_worker_teardown(worker=self.worker)
            self.installed_set_up = False

    def bind(self) -> None:
        """Make :func:`get_worker` return this worker on the calling thread."""
        _current.worker = self.worker


def get_worker() -> Worker:
    """The worker running the current task.

    :raises ValueError: when called outside a task run by a backend with workers.
    """
    worker = getattr(_current, "worker", None)
    if worker is None:
        raise ValueError("get_worker() was called outside a task running on a taskloom worker")
    return worker
