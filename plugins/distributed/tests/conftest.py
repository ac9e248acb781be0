"""One LocalCluster client per module; every test leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from taskloom.testing import wait_gone
from taskloom_distributed import Client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Make the test modules importable by worker processes, under the names pytest gave them.

    With ``--import-mode=importlib`` pytest names a test module after its path from the rootdir
    (``tests.test_cli`` when the rootdir is this plugin) without putting that directory on
    ``sys.path``; a task function defined in a test module is pickled by reference to that name,
    so a worker could not unpickle it where the tests run from another directory (the isolation
    tox env).  The directory goes on ``sys.path`` (which ``multiprocessing`` hands to the worker
    processes it spawns) and on ``PYTHONPATH`` (for ``taskloom worker`` and script subprocesses).
    """
    bases = []
    for module in {getattr(item, "module", None) for item in items} - {None}:
        depth = module.__name__.count(".")
        base = Path(module.__file__).resolve().parents[depth]
        if str(base) not in sys.path and str(base) not in bases:
            bases.append(str(base))
    if bases:
        sys.path.extend(bases)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), *bases]))


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(n_workers=2, threads_per_worker=1) as c:
        yield c


# -- `taskloom scheduler` / `taskloom worker` processes ------------------------------------------
class CLIProcess:
    """A ``python -m taskloom ...`` process whose stdout and stderr go to files we can poll."""

    def __init__(
        self, args: list[str], directory: Path, env: dict[str, str] | None, program: list[str] | None
    ) -> None:
        self.args = args
        name = f"{args[0]}-{time.monotonic_ns()}"
        self.stdout_path = directory / f"{name}.out"
        self.stderr_path = directory / f"{name}.err"
        command = [*(program or [sys.executable, "-m", "taskloom"]), *args]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        self.psutil = psutil.Process(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first match of ``pattern`` in the output, polled until ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.output())
            if m is not None:
                return m
            if self.proc.poll() is not None:
                m = re.search(pattern, self.output())
                if m is not None:
                    return m
                raise AssertionError(
                    f"{self.args} exited ({self.proc.returncode}) before {pattern!r}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.args}: no {pattern!r} within {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; SIGKILL what is left after ``timeout``.  Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@contextlib.contextmanager
def cli_session(directory: Path) -> Iterator[Callable[..., CLIProcess]]:
    """Start ``taskloom`` commands; at the end each is stopped and none (nor a child) may be left."""
    started: list[CLIProcess] = []

    def start(*args: str, env: dict[str, Any] | None = None, program: list[str] | None = None) -> CLIProcess:
        """``program`` (default ``python -m taskloom``) with ``args``; ``env`` adds variables."""
        full_env = {**os.environ, **{k: str(v) for k, v in (env or {}).items()}}
        process = CLIProcess(list(args), directory, full_env, program)
        started.append(process)
        return process

    try:
        yield start
    finally:
        family: list[psutil.Process] = []
        for process in started:
            try:
                family += [process.psutil, *process.psutil.children(recursive=True)]
            except psutil.Error:
                pass
        for process in reversed(started):  # workers first, then the scheduler
            process.stop()
        left = wait_gone(family, 30)
        for p in left:
            p.kill()
        assert not left, f"processes left running: {left}"


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Callable[..., CLIProcess]]:
    """``cli("scheduler", "--port", "0")``: a ``taskloom`` command, stopped after the test."""
    with cli_session(tmp_path) as start:
        yield start


@pytest.fixture(scope="session")
def cli_processes() -> Callable[[Path], Any]:
    """:func:`cli_session` for module-scoped fixtures: ``with cli_processes(directory) as start:``."""
    return cli_session
