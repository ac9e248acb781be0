"""The plugin manager: entry-point loading, the scheduler registry and errors for missing plugins.

Every plugin -- the core's own built-ins included -- is found through the ``taskloom``
entry-point group and registered on one pluggy ``PluginManager``, built on first use (importing
taskloom loads nothing).  Loading is tolerant: a plugin that fails to import, or whose hooks do
not match the specs, is a :class:`PluginWarning` naming its distribution and the rest keeps
working.  ``TASKLOOM_DISABLE_PLUGINS`` (comma-separated entry-point or distribution names)
blocks plugins; ``TASKLOOM_TRACE_HOOKS=1`` traces every hook call to stderr.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import SchedulerNotFoundError

hookimpl = pluggy.HookimplMarker("taskloom")
"""Marker for hook implementations: ``@taskloom.hookimpl``."""

ENTRY_POINT_GROUP = "taskloom"

# Only for error messages: which distribution to install for a well-known scheduler name.
# The names themselves (and their aliases) come from the plugins' SchedulerSpecs.
_KNOWN_DISTRIBUTIONS = {
    "sync": "taskloom-sync",
    "synchronous": "taskloom-sync",
    "single-threaded": "taskloom-sync",
    "threads": "taskloom-threads",
    "threading": "taskloom-threads",
    "processes": "taskloom-processes",
    "multiprocessing": "taskloom-processes",
    "pool": "taskloom-pool",
    "distributed": "taskloom-distributed",
    "dask": "taskloom-dask",
    "ray": "taskloom-ray",
}


class PluginWarning(UserWarning):
    """A plugin could not be loaded or misbehaved; the others keep working."""


def _to_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class SchedulerSpec:
    """A scheduler a plugin provides.

    ``get(graph, keys, **kwargs)`` computes the flat list ``keys`` of ``graph`` and returns
    their values as a list in the same order.
    """

    name: str
    get: Callable[..., list[Any]]
    aliases: tuple[str, ...] = attrs.field(default=(), converter=_to_tuple)
    description: str = ""
    distribution: str = ""
    setup: Callable[[], AbstractContextManager[dict[str, Any]]] | None = None
    """For tests and benchmarks: a context manager that prepares what the scheduler needs (an
    executor, a cluster) and yields the keyword arguments to compute with; None: nothing."""


@attrs.frozen
class PluginInfo:
    """What ``taskloom plugins`` shows about one registered plugin."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    schedulers: tuple[str, ...]
    serializers: tuple[str, ...]


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_dists: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
_schedulers: dict[str, SchedulerSpec] | None = None
_generation = 0  # bumped whenever the set of registered plugins changes


def _blocked_names() -> set[str]:
    raw = os.environ.get("TASKLOOM_DISABLE_PLUGINS", "")
    return {n.strip() for n in raw.split(",") if n.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading the installed plugins on first use."""
    global _pm
    pm = _pm
    if pm is not None:
        return pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager("taskloom")
            pm.add_hookspecs(hookspecs)
            _load_entry_points(pm)
            if os.environ.get("TASKLOOM_TRACE_HOOKS", "").lower() not in ("", "0", "false", "no"):
                pm.trace.root.setwriter(sys.stderr.write)
                pm.enable_tracing()
            _pm = pm
        return _pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    blocked = _blocked_names()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
        version = ep.dist.version if ep.dist is not None else "?"
        if ep.name in blocked or dist in blocked:
            pm.set_blocked(ep.name)
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            warnings.warn(
                f"taskloom plugin {ep.name!r} from distribution {dist} {version} could not be "
                f"loaded and is skipped ({type(exc).__name__}: {exc}); the other plugins work",
                PluginWarning,
                stacklevel=2,
            )
            continue
        _dists[ep.name] = (dist, version)


def register(plugin: object, name: str | None = None) -> str | None:
    """Register a plugin object (a module or instance with hookimpls) at run time."""
    global _schedulers, _generation
    pm = get_plugin_manager()
    with _lock:
        registered = pm.register(plugin, name=name)
        _generation += 1
        if hasattr(plugin, "taskloom_schedulers"):
            _schedulers = None
        return registered


def unregister(plugin: object | None = None, name: str | None = None) -> None:
    """Unregister a plugin registered with :func:`register`."""
    global _schedulers, _generation
    pm = get_plugin_manager()
    with _lock:
        removed = pm.unregister(plugin, name=name)
        _generation += 1
        if hasattr(removed, "taskloom_schedulers"):
            _schedulers = None


def reset() -> None:
    """Forget the plugin manager and registries; the next use reloads the entry points."""
    global _pm, _schedulers, _generation
    with _lock:
        _pm = None
        _schedulers = None
        _dists.clear()
        _generation += 1


def generation() -> int:
    """A number that changes whenever a plugin is registered or unregistered (lock-free read)."""
    return _generation


def _distribution_of(pm: pluggy.PluginManager, plugin: object) -> str:
    name = pm.get_name(plugin) or ""
    return _dists.get(name, (name, ""))[0]


def call_each(hook: pluggy.HookCaller, what: str) -> list[tuple[object, Any]]:
    """Call every implementation of a registry hook, warning (not failing) on a broken one."""
    out = []
    pm = get_plugin_manager()
    trace = pm.trace.root.get("hook")
    for impl in reversed(hook.get_hookimpls()):  # registration order
        try:
            trace(hook.name, {"plugin": impl.plugin_name})
            result = impl.function()
            trace("finish", hook.name, "-->", result)
            out.append((impl.plugin, result))
        except Exception as exc:
            warnings.warn(
                f"taskloom plugin {impl.plugin_name!r} ({_distribution_of(pm, impl.plugin)}) "
                f"failed to provide {what}: {type(exc).__name__}: {exc}",
                PluginWarning,
                stacklevel=3,
            )
    return out


def schedulers() -> dict[str, SchedulerSpec]:
    """The scheduler registry: canonical name -> :class:`SchedulerSpec`, in registration order."""
    global _schedulers
    registry = _schedulers
    if registry is not None:
        return dict(registry)
    pm = get_plugin_manager()
    with _lock:
        registry = {}
        for plugin, specs in call_each(pm.hook.taskloom_schedulers, "schedulers"):
            dist = _distribution_of(pm, plugin)
            for spec in specs or ():
                if spec.name in registry:
                    warnings.warn(
                        f"scheduler {spec.name!r} from {dist} is ignored: "
                        f"{registry[spec.name].distribution} already provides it",
                        PluginWarning,
                        stacklevel=2,
                    )
                    continue
                registry[spec.name] = attrs.evolve(spec, distribution=spec.distribution or dist)
        _schedulers = registry
        return dict(registry)


def get_scheduler_spec(name: str) -> SchedulerSpec:
    """The scheduler registered under ``name`` or one of its aliases.

    :raises SchedulerNotFoundError: listing the installed schedulers and, for a well-known name,
        the ``pip install`` line that provides it.
    """
    registry = _schedulers if _schedulers is not None else schedulers()
    spec = registry.get(name)
    if spec is not None:
        return spec
    for spec in registry.values():
        if name in spec.aliases:
            return spec
    installed = ", ".join(sorted(registry)) or "none"
    msg = f"unknown scheduler {name!r}; installed schedulers: {installed}"
    dist = _KNOWN_DISTRIBUTIONS.get(name)
    if dist is not None:
        msg += f". The {name!r} scheduler is provided by {dist}: pip install {dist}"
    raise SchedulerNotFoundError(msg)


def plugin_infos() -> list[PluginInfo]:
    """One :class:`PluginInfo` per registered plugin, in registration order."""
    pm = get_plugin_manager()
    registry = schedulers()
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist, version = _dists.get(name, (name, ""))
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        provided = tuple(s.name for s in registry.values() if s.distribution == dist)
        serializers: tuple[str, ...] = ()
        impl = getattr(plugin, "taskloom_serializers", None)
        if impl is not None:
            try:
                serializers = tuple(s.name for s in impl())
            except Exception as exc:  # reported, not fatal
                serializers = (f"<error: {type(exc).__name__}>",)
        infos.append(PluginInfo(name, dist, version, hooks, provided, serializers))
    return infos


def config_defaults() -> list[tuple[str, Mapping[str, Any]]]:
    """Every plugin's configuration defaults, as (distribution, nested dict) pairs."""
    pm = get_plugin_manager()
    out = []
    for plugin, defaults in call_each(pm.hook.taskloom_config_defaults, "config defaults"):
        if defaults:
            out.append((_distribution_of(pm, plugin), defaults))
    return out


def hook_has_impls(name: str) -> bool:
    """True if any registered plugin implements the hook ``name``."""
    caller: pluggy.HookCaller = getattr(get_plugin_manager().hook, name)
    return bool(caller.get_hookimpls())


def format_plugins(infos: Sequence[PluginInfo]) -> str:
    """The table ``taskloom plugins`` prints."""
    lines = []
    for info in infos:
        lines.append(f"{info.distribution} {info.version}  (entry point {info.name!r})")
        if info.schedulers:
            lines.append(f"    schedulers:  {', '.join(info.schedulers)}")
        if info.serializers:
            lines.append(f"    serializers: {', '.join(info.serializers)}")
        lines.append(f"    hooks:       {', '.join(info.hooks) or '-'}")
    return "\n".join(lines)
