"""The ``taskloom`` pytest plugin: fixtures for testing schedulers and plugins.

Loaded through the ``pytest11`` entry point wherever taskloom is installed, so it imports only
the standard library and pytest; taskloom itself is imported when a fixture runs.

* ``taskloom_scheduler_names`` -- the names in the scheduler registry.
* ``no_leaked_threads`` -- fails the test if it leaves a thread running (the shared pools'
  ``taskloom-threads*`` threads excepted).
* ``clean_config`` -- configuration isolated from ``TASKLOOM_*`` variables and config files,
  restored afterwards.
* ``registered_plugin`` -- ``with registered_plugin(obj): ...`` registers a plugin object and
  unregisters it.
* ``worker_plugins`` -- a list: worker-plugin names appended to it are unregistered after the test.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

POOL_THREAD_PREFIXES: tuple[str, ...] = ("taskloom-threads", "Dask-Offload")
"""Name prefixes of the threads that shared, reused pools keep between tests."""


def _pool_thread(thread: threading.Thread) -> bool:
    return thread.name.startswith(POOL_THREAD_PREFIXES)


def join_new_threads(before: set[threading.Thread], timeout: float = 5.0) -> list[threading.Thread]:
    """Join the threads started since ``before`` (pool threads excepted) for up to ``timeout``
    seconds in all; return those still alive."""
    deadline = time.monotonic() + timeout
    new = [t for t in threading.enumerate() if t not in before and not _pool_thread(t)]
    for thread in new:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in new if t.is_alive()]


@contextlib.contextmanager
def check_no_leaked_threads(timeout: float = 5.0) -> Iterator[None]:
    """Fail (``pytest.fail``) if the block leaves a new thread running after ``timeout`` seconds."""
    before = set(threading.enumerate())
    yield
    leaked = join_new_threads(before, timeout)
    if leaked:
        names = ", ".join(f"{t.name} (daemon={t.daemon})" for t in leaked)
        pytest.fail(f"threads left running: {names}", pytrace=False)


@pytest.fixture
def taskloom_scheduler_names() -> list[str]:
    """The canonical names in the scheduler registry, in registration order."""
    import taskloom

    return list(taskloom.schedulers())


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    """Fail the test if it leaves a thread running (waits up to 5 s for them to end)."""
    with check_no_leaked_threads():
        yield


@pytest.fixture
def clean_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``taskloom.config`` with only the plugins' defaults, restored after the test.

    ``TASKLOOM_*`` configuration variables are removed and the system and user config
    directories point at an empty directory; whatever the test sets with ``config.set`` --
    inside a ``with`` block or not -- is undone.  Yields the ``taskloom.config`` module.
    """
    from taskloom import config

    empty: Path = tmp_path_factory.mktemp("taskloom-config")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(config.ENV_PREFIX) and name not in config.CONTROL_VARIABLES:
                patch.delenv(name)
        patch.delenv("TASKLOOM_CONFIG", raising=False)
        patch.setenv("XDG_CONFIG_HOME", str(empty))
        patch.setattr(config, "SYSTEM_CONFIG_DIR", empty)
        with config._lock:  # config has no public snapshot/restore of its config.set layer
            saved = dict(config._set_layer)
            config._set_layer.clear()
        config.refresh()
        try:
            yield config
        finally:
            with config._lock:
                config._set_layer.clear()
                config._set_layer.update(saved)
    config.refresh()


@pytest.fixture
def registered_plugin() -> Iterator[Callable[..., contextlib.AbstractContextManager[Any]]]:
    """A factory: ``with registered_plugin(obj, name=None) as obj:`` registers ``obj`` through
    ``taskloom.plugins.register`` and unregisters it on exit (and at teardown at the latest)."""
    import taskloom.plugins

    active: list[object] = []

    def unregister(plugin: object) -> None:
        for i, p in enumerate(active):
            if p is plugin:
                del active[i]
                taskloom.plugins.unregister(plugin)
                return

    @contextlib.contextmanager
    def register(plugin: object, name: str | None = None) -> Iterator[object]:
        taskloom.plugins.register(plugin, name=name)
        active.append(plugin)
        try:
            yield plugin
        finally:
            unregister(plugin)

    yield register
    for plugin in reversed(list(active)):
        unregister(plugin)


DIAGNOSTICS_HOOKS = (
    "taskloom_compute_start",
    "taskloom_task_start",
    "taskloom_task_finish",
    "taskloom_compute_finish",
)
"""The diagnostics hooks, in the order a compute calls them."""


@pytest.fixture
def no_callback_left_behind() -> Iterator[None]:
    """Fail a test that leaves a diagnostics hook implementation registered."""
    from taskloom.plugins import hook_has_impls

    before = {name: hook_has_impls(name) for name in DIAGNOSTICS_HOOKS}
    yield
    assert {name: hook_has_impls(name) for name in DIAGNOSTICS_HOOKS} == before


@pytest.fixture
def worker_plugins() -> Iterator[list[str]]:
    """Names of worker plugins (``register_worker_plugin``) appended here are unregistered after
    the test, if still registered."""
    from taskloom.worker import unregister_worker_plugin

    names: list[str] = []
    yield names
    for name in names:
        try:
            unregister_worker_plugin(name)
        except KeyError:
            pass
