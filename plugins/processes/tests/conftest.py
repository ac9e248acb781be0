"""Fixtures of the taskloom-processes tests: the pools go at the end, no test leaves a process behind.

These tests need only the core and this plugin.  The shared process pools outlive single tests
(that is their point), so their workers -- ``taskloom_processes.live_workers()`` -- are exempt
from the per-test check, as are the helper processes ``multiprocessing`` starts once per process
(its resource tracker); any other child process a test leaves running fails it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psutil
import pytest
import taskloom_processes
from taskloom.testing.fixtures import check_no_leaked_threads

_HELPER_COMMANDS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


@pytest.fixture(scope="session", autouse=True)
def _shutdown_process_pools() -> Iterator[None]:
    """Shut every process pool down once all tests have run (their plugins tear down)."""
    yield
    taskloom_processes.shutdown()


def _is_helper(proc: psutil.Process) -> bool:
    try:
        command = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(helper in command for helper in _HELPER_COMMANDS)


@pytest.fixture(autouse=True)
def no_leaked_child_processes() -> Iterator[None]:
    """Fail a test that leaves a child process (other than a pool worker) or a thread running."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with check_no_leaked_threads():
        yield
    pool_pids = {w.pid for w in taskloom_processes.live_workers()}
    new = [
        p
        for p in me.children(recursive=True)
        if p.pid not in before and p.pid not in pool_pids and not _is_helper(p)
    ]
    _, alive = psutil.wait_procs(new, timeout=5)
    if alive:
        shown = ", ".join(str(p.pid) for p in alive)
        for p in alive:  # do not let them spill into the next test
            p.kill()
        psutil.wait_procs(alive, timeout=5)
        pytest.fail(f"pid {os.getpid()} left child processes running: {shown}", pytrace=False)
