"""Process-wide configuration: plugin defaults, TOML files, env vars and ``config.set``.

Values are merged from these layers, lowest precedence first:

1. plugin defaults, from the callable installed with :func:`set_defaults_provider` (the
   plugin manager installs it, so this module never imports it);
2. TOML files: ``SYSTEM_CONFIG_DIR/*.toml`` (``/etc/taskloom``), then
   ``$XDG_CONFIG_HOME/taskloom/*.toml`` (default ``~/.config/taskloom``), then
   ``$TASKLOOM_CONFIG`` (a file, or a directory of ``*.toml``); a directory's files are
   read in sorted order;
3. ``TASKLOOM_A__B=value`` environment variables set ``a.b``; the value is read with
   :func:`ast.literal_eval`, falling back to the raw string;
4. :func:`set`: applies at once, to every thread, and is undone key by key when its
   context manager exits;
5. :func:`overlay`: values in force on the calling thread only, while its ``with`` block runs
   (a distributed worker runs each client's tasks under that client's ``set`` values).

Nested mappings of every layer are deep-merged (a mapping given to ``set`` sets its leaves,
it does not replace a whole table).  Keys are lower-cased and ``-`` is read as ``_``.
Layers 1-3 are read on first use and cached until :func:`refresh`; the ``set`` layer is
kept apart, so ``refresh`` keeps the values still in force.  The merged view is cached as
well, so :func:`get` is a lock and a dict walk.  Values are never copied, only the dicts
that hold them.  Nothing is read at import time.
"""

from __future__ import annotations

import ast
import difflib
import functools
import os
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from .errors import ConfigError

__all__ = [
    "SYSTEM_CONFIG_DIR",
    "config_snapshot",
    "flatten",
    "format_config",
    "get",
    "get_cached",
    "overlay",
    "refresh",
    "set",
    "set_defaults_provider",
    "set_layer",
    "sources",
]

DefaultsProvider = Callable[[], Iterable[tuple[str, Mapping[str, Any]]]]
"""Returns ``(source_name, nested_defaults)`` pairs, lowest precedence first."""

SYSTEM_CONFIG_DIR: Path = Path("/etc/taskloom")
"""The system-wide directory of ``*.toml`` files, read first."""

ENV_PREFIX: Final = "TASKLOOM_"
CONTROL_VARIABLES: Final = frozenset({"TASKLOOM_CONFIG", "TASKLOOM_DISABLE_PLUGINS", "TASKLOOM_TRACE_HOOKS"})
"""Environment variables that steer taskloom itself and are not configuration keys."""

_NO_DEFAULT: Final = object()
_ABSENT: Final = object()  # get_cached: remembered as "not set"
_SET_SOURCE: Final = "config.set"
_MAX_ALIGN: Final = 60  # format_config: longer lines are not padded

Tree = dict[str, Any]
_View = tuple[Tree, dict[str, str]]  # merged tree, and the source of each dotted key
_Undo = tuple[str, list[tuple[str, Any]]]  # key set, and the entries it replaced

_lock = threading.RLock()
_provider: DefaultsProvider | None = None
_base: _View | None = None  # defaults + files + env
_set_layer: dict[str, Any] = {}  # dotted key -> value, applied in order
_merged: _View | None = None  # _base with _set_layer on top
_generation = 0  # changes whenever _set_layer does
_changes = 0  # changes whenever any value may have (set, undo, refresh, new defaults): get_cached
_cached: dict[str, tuple[int, Any]] = {}  # key -> (_changes when read, value), for get_cached


class _ThreadState(threading.local):
    overlay: _Overlay | None = None  # the calling thread's overlay, if any (a class default:
    # reading it where it was never set is a plain attribute lookup, no AttributeError raised)


_thread = _ThreadState()
_loading_defaults = False


@functools.lru_cache(maxsize=1024)
def _split(key: str) -> tuple[str, ...]:
    """``"Distributed.Comm-Auth"`` -> ``("distributed", "comm_auth")``."""
    parts = tuple(part.strip().lower().replace("-", "_") for part in key.split("."))
    if not all(parts):
        raise ConfigError(f"invalid configuration key {key!r}")
    return parts


def _leaves(tree: Mapping[Any, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Yield ``(path, value)`` for every non-mapping value, keys split and normalised."""
    for key, value in tree.items():
        path = prefix + _split(str(key))
        if isinstance(value, Mapping):
            yield from _leaves(value, path)
        else:
            yield path, value


def _assign(root: Tree, path: tuple[str, ...], value: Any) -> None:
    node = root
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _merge(root: Tree, labels: dict[str, str], tree: Mapping[Any, Any], src: str) -> None:
    for path, value in _leaves(tree):
        _assign(root, path, value)
        labels[".".join(path)] = src


def _copy_tree(tree: Mapping[str, Any]) -> Tree:
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}


def _toml_files_in(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.glob("*.toml") if path.is_file())


def _config_files() -> list[Path]:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    user = Path(xdg) if xdg else Path.home() / ".config"
    files = _toml_files_in(SYSTEM_CONFIG_DIR) + _toml_files_in(user / "taskloom")
    explicit = os.environ.get("TASKLOOM_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            files += _toml_files_in(path)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"TASKLOOM_CONFIG={explicit!r}: no such file or directory")
    return files


def _read_toml(path: Path) -> Tree:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in config file {path}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def _parse_env(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def _load_base() -> _View:
    """Read defaults, files and env vars; called with ``_lock`` held."""
    global _loading_defaults
    root: Tree = {}
    labels: dict[str, str] = {}
    if _provider is not None:
        if _loading_defaults:
            raise RuntimeError("the config defaults provider must not read the config")
        _loading_defaults = True
        try:
            defaults = list(_provider())
        finally:
            _loading_defaults = False
        for name, tree in defaults:
            _merge(root, labels, tree, f"default ({name})")
    for path in _config_files():
        tree = _read_toml(path)
        try:
            _merge(root, labels, tree, f"file {path}")
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
    for name in sorted(os.environ):
        if not name.startswith(ENV_PREFIX) or name in CONTROL_VARIABLES:
            continue
        parts = name[len(ENV_PREFIX) :].split("__")
        if all(parts):  # TASKLOOM_A____B names no key
            value = _parse_env(os.environ[name])
            try:
                _merge(root, labels, {".".join(parts): value}, f"env {name}")
            except ConfigError as exc:
                raise ConfigError(f"environment variable {name}: {exc}") from exc
    return root, labels


def _view() -> _View:
    """The merged tree and the sources; called with ``_lock`` held."""
    global _base, _merged
    if _merged is None:
        if _base is None:
            _base = _load_base()
        root, labels = _copy_tree(_base[0]), dict(_base[1])
        for key, value in _set_layer.items():
            _assign(root, tuple(key.split(".")), value)
            labels[key] = _SET_SOURCE
        _merged = root, labels
    return _merged


def _missing(key: str, parent: tuple[str, ...], part: str, node: Any) -> KeyError:
    message = f"configuration key {key!r} is not set"
    if isinstance(node, dict):
        prefix = "".join(p + "." for p in parent)
        close = difflib.get_close_matches(part, list(node), n=3)
        if close:
            names = ", ".join(repr(prefix + name) for name in close)
            message += f"; did you mean {names}?"
    return KeyError(message)


def get(key: str, default: Any = _NO_DEFAULT) -> Any:
    """The value of a dotted ``key``; a table comes back as a fresh nested dict.

    Raises ``KeyError`` naming the key (and close matches) if it is not set and no
    ``default`` is given.
    """
    path = _split(key)
    with _lock:
        node: Any = _view()[0]
        over = _thread.overlay
        if over is not None:
            node = over.tree(node)
        for i, part in enumerate(path):
            if not isinstance(node, dict) or part not in node:
                if default is not _NO_DEFAULT:
                    return default
                raise _missing(key, path[:i], part, node)
            node = node[part]
        return _copy_tree(node) if isinstance(node, dict) else node


def get_cached(key: str, default: Any = _NO_DEFAULT) -> Any:
    """:func:`get` for hot paths: a value that is not a table is remembered until the
    configuration changes (``set``, leaving its ``with``, :func:`refresh`), so reading it again
    costs a dictionary lookup.  Inside an :func:`overlay` the value is read afresh."""
    if _thread.overlay is not None:
        return get(key, default)
    changes = _changes  # read first: a change while reading makes this entry stale at once
    entry = _cached.get(key)
    if entry is not None and entry[0] == changes:
        value = entry[1]
    else:
        value = get(key, _ABSENT)
        if not isinstance(value, dict):
            _cached[key] = (changes, value)
    if value is _ABSENT:  # not set: the default, or get's error naming the key
        return default if default is not _NO_DEFAULT else get(key)
    return value


class _SetContext:
    """Returned by :func:`set`; leaving it as a context manager undoes that ``set``."""

    __slots__ = ("_undo",)

    def __init__(self, undo: list[_Undo]) -> None:
        self._undo = undo

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _merged, _generation, _changes
        with _lock:
            undo, self._undo = self._undo, []
            for key, hidden in reversed(undo):
                _set_layer.pop(key, None)
                _set_layer.update(hidden)
            _merged = None
            _generation += 1
            _changes += 1


def set(arg: Mapping[str, Any] | None = None, /, **kwargs: Any) -> _SetContext:
    """Set values process-wide: ``set({"a.b": 1})``, ``set(a__b=1)``, ``set({"a": {"b": 1}})``.

    Applies at once, for every thread; use the result as a context manager to restore
    the previous values on exit (keys that were not set before are removed again).  A
    mapping sets its leaves and leaves the rest of a table as it was.
    """
    global _merged, _generation, _changes
    items = list(_leaves(arg)) if arg is not None else []
    items += _leaves({name.replace("__", "."): value for name, value in kwargs.items()})
    undo: list[_Undo] = []
    with _lock:
        for path, value in items:
            key = ".".join(path)
            hidden = [k for k in _set_layer if k == key or k.startswith(key + ".")]
            undo.append((key, [(k, _set_layer.pop(k)) for k in hidden]))
            _set_layer[key] = value  # last, so it applies after any ancestor
        _merged = None
        _generation += 1
        _changes += 1
    return _SetContext(undo)


def set_layer(since: int | None = None) -> tuple[int, dict[str, Any] | None]:
    """``(generation, {dotted key: value})``: the values :func:`set` has in force, in the order set.

    The generation changes whenever they do; with ``since`` equal to the current generation the
    values are not copied and ``None`` comes back (a cheap "has anything changed?").
    """
    if since is not None and since == _generation:  # an int read: no lock needed
        return since, None
    with _lock:
        return _generation, dict(_set_layer)


class _Overlay:
    """Values on top of the merged view, for one thread; the merged tree is rebuilt lazily."""

    __slots__ = ("_base", "_tree", "items")

    def __init__(self, items: list[tuple[tuple[str, ...], Any]]) -> None:
        self.items = items
        self._base: Tree | None = None
        self._tree: Tree = {}

    def tree(self, base: Tree) -> Tree:
        """``base`` (the merged view, rebuilt whenever ``set`` changes) with the items on top."""
        if base is not self._base:
            tree = _copy_tree(base)
            for path, value in self.items:
                _assign(tree, path, value)
            self._base, self._tree = base, tree
        return self._tree


class _OverlayContext:
    """Returned by :func:`overlay`: the values apply on this thread inside the ``with`` block."""

    __slots__ = ("_items", "_previous")

    def __init__(self, items: list[tuple[tuple[str, ...], Any]]) -> None:
        self._items = items
        self._previous: _Overlay | None = None

    def __enter__(self) -> Self:
        self._previous = _thread.overlay
        outer = self._previous.items if self._previous is not None else []
        _thread.overlay = _Overlay(outer + self._items) if self._items or outer else None
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _thread.overlay = self._previous


def overlay(values: Mapping[str, Any] | None) -> _OverlayContext:
    """A context manager: ``values`` (as for :func:`set`) apply on the calling thread only.

    They take precedence over every other layer, ``set`` included, until the block exits;
    other threads do not see them.  Overlays nest.  A worker running tasks for several clients
    at once runs each task under its client's values this way.
    """
    return _OverlayContext(list(_leaves(values)) if values else [])


def refresh() -> None:
    """Forget the cached defaults, files and env vars; values from :func:`set` stay."""
    global _base, _merged, _changes
    with _lock:
        _base = _merged = None
        _changes += 1


def set_defaults_provider(fn: DefaultsProvider | None) -> None:
    """Install the callable that supplies plugin defaults (``None``: no defaults).

    It is called on first use after this (and after each :func:`refresh`), with the
    config lock held, so it must not read the configuration itself.
    """
    global _provider, _base, _merged, _changes
    with _lock:
        _provider = fn
        _base = _merged = None
        _changes += 1


def config_snapshot() -> Tree:
    """The whole merged configuration as a nested dict (dicts copied, values not)."""
    with _lock:
        root = _view()[0]
        over = _thread.overlay
        return _copy_tree(over.tree(root) if over is not None else root)


def sources() -> dict[str, str]:
    """Dotted key -> origin of its value.

    One of ``default (<source>)``, ``file <path>``, ``env TASKLOOM_X__Y``, ``config.set``.
    """
    with _lock:
        root, labels = _view()
        return {key: labels[key] for key in sorted(flatten(root))}


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; ``prefix`` is prepended with a dot."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def format_config() -> str:
    """One line per key, sorted: ``key = repr(value)  # source``, ``#`` aligned."""
    with _lock:
        root, labels = _view()
        flat = flatten(root)
    rows = [(f"{key} = {value!r}", labels[key]) for key, value in sorted(flat.items())]
    width = min(max((len(text) for text, _ in rows), default=0), _MAX_ALIGN)
    return "\n".join(f"{text:<{width}}  # {source}" for text, source in rows)
