"""No orphan processes: after ``close()``, after the interpreter exits, after the client is killed.

Every check is by PID (psutil), polling with a deadline.  A worker that is running a task that
never returns must go too.  A script that starts a cluster without its ``__main__`` guard gets a
one-line diagnosis, not tracebacks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from taskloom.testing import live_processes, wait_gone
from taskloom_distributed import Client

pytestmark = pytest.mark.timeout(120)

HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    """Children, grandchildren, ... of ``proc`` -- multiprocessing's helper processes excepted."""
    out = []
    for p in proc.children(recursive=True):
        try:
            if not any(h in " ".join(p.cmdline()) for h in HELPERS):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return path


def _start(script: Path, *args: str, directory: Path) -> subprocess.Popen[bytes]:
    """``python script args``: stdout is a pipe we read lines from, stderr goes to a file."""
    with open(directory / "stderr.txt", "wb") as err:
        return subprocess.Popen(
            [sys.executable, str(script), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
        )


def _read_line(proc: subprocess.Popen[bytes], timeout: float = 90) -> str:
    """The first line of ``proc``'s stdout, or fail after ``timeout`` s (the pipe is polled)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            buffer += chunk
            if b"\n" in buffer:
                return buffer.split(b"\n", 1)[0].decode()
        elif chunk == b"" or proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no line from the script within {timeout} s (exit {proc.poll()}): {buffer!r}")


def test_close_leaves_no_worker_process() -> None:
    me = psutil.Process()
    before = {p.pid for p in _descendants(me)}
    client = Client(n_workers=2, threads_per_worker=1, set_as_default=False)
    try:
        assert client.submit(os.getpid).result() in client.cluster.worker_pids
        started = [p for p in _descendants(me) if p.pid not in before]
        assert {p.pid for p in started} >= set(client.cluster.worker_pids)
    finally:
        client.close()
    assert not wait_gone(started), "worker processes outlived client.close()"


EXITS_WITHOUT_CLOSING = """
    import os, psutil
    from taskloom_distributed import Client

    if __name__ == "__main__":
        client = Client(n_workers=2, threads_per_worker=1)
        assert client.submit(sum, [1, 2]).result() == 3
        me = psutil.Process()
        print(" ".join(str(p.pid) for p in me.children(recursive=True)), flush=True)
        # no client.close(): the interpreter exits with the cluster running
"""


def test_no_process_outlives_an_interpreter_that_exits_without_closing(tmp_path: Path) -> None:
    script = _script(tmp_path, EXITS_WITHOUT_CLOSING)
    proc = _start(script, directory=tmp_path)
    try:
        pids = [int(p) for p in _read_line(proc).split()]
        family = live_processes(pids)
        assert proc.wait(60) == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not wait_gone(family), "processes outlived the interpreter that started them"


KILLED_WHILE_A_TASK_RUNS = """
    import os, sys, threading, time, psutil
    from pathlib import Path
    from taskloom_distributed import Client

    def forever(flag):
        Path(flag).write_text(str(os.getpid()))
        threading.Event().wait()  # never returns

    if __name__ == "__main__":
        client = Client(n_workers=2, threads_per_worker=1)
        future = client.submit(forever, sys.argv[1])
        deadline = time.monotonic() + 60
        while not Path(sys.argv[1]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        me = psutil.Process()
        print(" ".join(str(p.pid) for p in me.children(recursive=True)), flush=True)
        sys.stdin.read()  # until killed
"""


def test_no_process_outlives_a_killed_client_even_with_a_task_running(tmp_path: Path) -> None:
    script = _script(tmp_path, KILLED_WHILE_A_TASK_RUNS)
    flag = tmp_path / "running"
    proc = _start(script, str(flag), directory=tmp_path)
    try:
        pids = [int(p) for p in _read_line(proc).split()]
        assert flag.exists(), "the task never started"
        assert int(flag.read_text()) in pids
        family = live_processes(pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert not wait_gone(family), "worker processes outlived the killed client"


NO_MAIN_GUARD = """
    from taskloom_distributed import Client

    client = Client(n_workers=2, threads_per_worker=1)
    print(client.submit(sum, [1, 2]).result())
"""


def test_a_script_without_its_main_guard_gets_one_line(tmp_path: Path) -> None:
    script = _script(tmp_path, NO_MAIN_GUARD)
    me = psutil.Process()
    before = {p.pid for p in _descendants(me)}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=110)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines() == [
        f"taskloom: {script}, line 4, starts a LocalCluster when imported, and worker processes import it: "
        'put that code under `if __name__ == "__main__":`'
    ], result.stderr
    assert result.stdout == ""
    assert not [p for p in _descendants(me) if p.pid not in before]


def test_a_task_the_worker_cannot_unpickle_fails_and_the_worker_lives_on(
    client: Client, tmp_path: Path
) -> None:
    """A function from a module only the client can import: that task fails with the reason."""
    (tmp_path / "only_on_the_client.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_on_the_client  # type: ignore[import-not-found]

        pids = set(client.cluster.worker_pids)
        future = client.submit(only_on_the_client.triple, 2)
        with pytest.raises(Exception, match="No module named 'only_on_the_client'"):
            future.result(timeout=60)
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        assert set(client.cluster.worker_pids) == pids  # no worker died over it
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_on_the_client", None)
