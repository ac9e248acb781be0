"""Shared fixtures of the cross-plugin tests: no test may leave a thread or a process behind."""

from __future__ import annotations

import importlib
import multiprocessing
import os
from collections.abc import Iterator

import pytest
from taskloom.testing.fixtures import check_no_leaked_threads

try:
    import psutil
except ImportError:  # child processes are then not checked
    psutil = None

# Long-lived helpers that multiprocessing starts once per process, and that shared pools keep.
_HELPER_COMMANDS = (
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "loky.backend.resource_tracker",
)
_POOL_PROCESS_PREFIX = "taskloom-"


# Plugins whose module-level ``shutdown()`` stops the pools they share between computes.
_SHARED_POOL_MODULES = ("taskloom_threads", "taskloom_processes")


@pytest.fixture(scope="session", autouse=True)
def _shutdown_shared_pools() -> Iterator[None]:
    """Shut the shared pools (``taskloom_threads.shutdown()``, ...) down once every test has run."""
    yield
    for name in _SHARED_POOL_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.shutdown()


def _children() -> set[psutil.Process]:
    if psutil is None:
        return set()
    return set(psutil.Process().children(recursive=True))


def _exempt(proc: psutil.Process, pool_pids: set[int]) -> bool:
    if proc.pid in pool_pids:
        return True
    try:
        command = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(helper in command for helper in _HELPER_COMMANDS)


def _leaked_processes(before: set[psutil.Process], timeout: float = 5.0) -> list[psutil.Process]:
    if psutil is None:
        return []
    pool_pids = {
        p.pid
        for p in multiprocessing.active_children()
        if p.pid is not None and p.name.startswith(_POOL_PROCESS_PREFIX)
    }
    new = [p for p in _children() - before if not _exempt(p, pool_pids)]
    _, alive = psutil.wait_procs(new, timeout=timeout)
    return alive


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline()[:4]) or proc.name()}"
    except psutil.Error:
        return str(proc.pid)


@pytest.fixture(autouse=True)
def _no_leaked_threads_or_processes() -> Iterator[None]:
    """Fail a test that leaves threads (other than the shared pools') or child processes behind."""
    before = _children()
    with check_no_leaked_threads():
        yield
    leaked = _leaked_processes(before)
    if leaked:
        shown = ", ".join(_describe(p) for p in leaked)
        for p in leaked:  # do not let them spill into the next test
            p.kill()
        psutil.wait_procs(leaked, timeout=5)
        pytest.fail(f"pid {os.getpid()} left child processes running: {shown}", pytrace=False)
