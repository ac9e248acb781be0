"""The ``processes`` scheduler: what travels, what fails and how, interrupts, orphans, placement.

Needs only the core and taskloom-processes.  Every compute names ``scheduler="processes"``.
Task functions here are module-level and travel to the workers *by value* (see
``register_pickle_by_value`` below), so the tests pass wherever pytest imports this file from --
even where a worker process could not import it.  Side effects of tasks are observed through
files, sockets and returned values, never by sleeping.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest
import taskloom
import taskloom_processes
from taskloom import Ref, Task
from taskloom.errors import TaskloomError
from taskloom.serialize import SerializationError
from taskloom.testing import SchedulerConformance, live_processes, wait_gone
from taskloom.worker import get_worker
from taskloom_processes import RemoteTraceback, WorkerDiedError

try:
    import numpy as np
except ImportError:  # the tests that need it skip
    np = None

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)

PROCESSES = "processes"


def compute(graph: dict[Any, Any], keys: Any, **kwargs: Any) -> Any:
    """``taskloom.get`` on the processes scheduler (two workers unless told otherwise)."""
    kwargs.setdefault("num_workers", 2)
    return taskloom.get(graph, keys, scheduler=PROCESSES, **kwargs)


def run_script(path: Path, *args: str, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout)


# -- task functions ----------------------------------------------------------------------------


def inc(x: int) -> int:
    return x + 1


def add(x: Any, y: Any) -> Any:
    return x + y


def pid_of(*deps: Any) -> int:
    return os.getpid()


def double(a: Any) -> Any:
    return a * 2


def explode_in_task(x: int) -> None:
    raise ValueError(f"bad input {x}")


class GraphProblem(Exception):
    """A user's own exception type, with an attribute of its own."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message, code)
        self.code = code


def raise_graph_problem(code: int) -> None:
    raise GraphProblem("the graph is wrong", code)


class Unrebuildable(Exception):
    """``args`` do not match ``__init__``: pickles, but cannot be unpickled."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a} and {b}")


def raise_unrebuildable() -> None:
    raise Unrebuildable(1, 2)


def use_lock(lock: Any) -> str:
    return "unreachable"


def make_lock() -> Any:
    return threading.Lock()


def exit_hard(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)


def make_array(n: int) -> Any:
    arr = np.arange(n, dtype=np.uint8)
    get_worker().produced = (os.getpid(), id(arr))
    return arr


def consume_array(arr: Any) -> tuple[int, bool, int]:
    """``(pid, whether arr is the very object the producer made here, a checksum)``."""
    produced = getattr(get_worker(), "produced", None)
    return os.getpid(), produced == (os.getpid(), id(arr)), int(arr[-1]) + arr.size


# -- the conformance suite ----------------------------------------------------------------------


class TestProcessesConformance(SchedulerConformance):
    scheduler = PROCESSES
    in_process = False
    max_live_intermediates_check = False


# -- functions that travel by value --------------------------------------------------------------


def test_lambdas_and_closures_run_in_worker_processes() -> None:
    offset = 40

    def add_offset(x: int) -> int:
        return x + offset

    graph = {
        "one": Task(lambda: 1),
        "two": Task(add_offset, Ref("one")),
        "three": Task(lambda a, b: a * b, Ref("two"), 2),
        "pid": Task(pid_of, Ref("three")),
    }
    assert compute(graph, ["one", "two", "three"]) == [1, 41, 82]
    assert compute(graph, "pid") != os.getpid()


SCRIPT_MAIN = """
import os
import sys

import taskloom
from taskloom import Ref, Task


def square(x):
    return x * x


class Scaled:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x


if __name__ == "__main__":
    def shifted(x):
        return x + 1000

    graph = {
        "a": Task(square, 7),
        "b": Task(shifted, Ref("a")),
        "c": Task(Scaled(3), Ref("b")),
        "pid": Task(os.getpid),
    }
    c, pid = taskloom.get(graph, ["c", "pid"], scheduler="processes", num_workers=2)
    assert pid != os.getpid(), "the task ran in the calling process"
    print("result", c)
"""


@pytest.mark.timeout(90)
def test_functions_defined_in_main_of_a_script_run_in_workers(tmp_path: Path) -> None:
    script = tmp_path / "main_script.py"
    script.write_text(SCRIPT_MAIN)
    done = run_script(script, timeout=80)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["result", str(3 * (49 + 1000))]


# -- data ---------------------------------------------------------------------------------------


def test_numpy_arrays_round_trip() -> None:
    pytest.importorskip("numpy")
    matrix = np.arange(12.0).reshape(3, 4) / 7
    fortran = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    records = np.array([(1, 2.5), (2, -1.0)], dtype=[("id", "i8"), ("w", "f4")])
    graph = {
        "matrix": matrix,
        "fortran": fortran,
        "records": records,
        "m2": Task(double, Ref("matrix")),
        "f2": Task(double, Ref("fortran")),
        "w": Task(lambda r: r["w"] * 2, Ref("records")),
        "big": Task(np.ones, (512, 512)),  # 2 MiB: stays in its worker until asked for
        "big2": Task(double, Ref("big")),
    }
    m2, f2, w, big2, back = compute(graph, ["m2", "f2", "w", "big2", "records"])
    np.testing.assert_array_equal(m2, matrix * 2)
    assert m2.dtype == np.float64 and m2.shape == (3, 4)
    np.testing.assert_array_equal(f2, fortran * 2)
    assert f2.dtype == np.int32
    np.testing.assert_array_equal(w, np.array([5.0, -2.0], dtype=np.float32))
    assert big2.shape == (512, 512) and float(big2.sum()) == 2.0 * 512 * 512
    assert back.dtype == records.dtype and back.tolist() == records.tolist()


def test_large_result_stays_in_its_worker_and_arrives_uncopied() -> None:
    pytest.importorskip("numpy")
    n = 50 * 2**20
    graph = {"array": Task(make_array, n), "use": Task(consume_array, Ref("array"))}
    pid, same_object, checksum = compute(graph, "use")
    assert pid != os.getpid()
    assert same_object, "the consumer did not get the producer's array object in the same worker"
    assert checksum == (n - 1) % 256 + n
    array, (pid2, same2, _) = compute(graph, ["array", "use"])
    assert same2 and pid2 != os.getpid()
    assert array.shape == (n,) and array.dtype == np.uint8
    assert array[:300].tolist() == [i % 256 for i in range(300)] and int(array[-1]) == (n - 1) % 256
    # pickle 5 out-of-band: the array is a view on the buffer it was received into, no extra copy
    assert not array.flags.owndata


# -- task errors ---------------------------------------------------------------------------------


def test_task_exception_comes_back_with_its_type_remote_traceback_and_key() -> None:
    key = ("explode", 3)
    with pytest.raises(ValueError) as info:
        compute({"x": 3, key: Task(explode_in_task, Ref("x"))}, key)
    exc = info.value
    assert type(exc) is ValueError
    assert exc.args == ("bad input 3",)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "explode_in_task" in exc.__cause__.text
    assert "ValueError: bad input 3" in exc.__cause__.text
    assert any(repr(key) in note for note in getattr(exc, "__notes__", ()))


def test_custom_exception_class_round_trips_as_its_own_type() -> None:
    with pytest.raises(GraphProblem) as info:
        compute({"bad": Task(raise_graph_problem, 7)}, "bad")
    exc = info.value
    assert type(exc) is GraphProblem
    assert exc.code == 7
    assert exc.args == ("the graph is wrong", 7)
    assert "raise_graph_problem" in exc.__cause__.text
    assert any("'bad'" in note for note in exc.__notes__)


def test_exception_that_cannot_be_rebuilt_still_names_its_type_and_message() -> None:
    with pytest.raises(TaskloomError) as info:
        compute({"odd": Task(raise_unrebuildable)}, "odd")
    text = str(info.value)
    assert "Unrebuildable" in text and "1 and 2" in text and "'odd'" in text
    assert "raise_unrebuildable" in info.value.__cause__.text


@pytest.mark.parametrize(
    ("graph", "named"),
    [
        pytest.param({("guarded", 1): Task(use_lock, threading.Lock())}, ("guarded", 1), id="task-argument"),
        pytest.param(
            {"mutex": threading.Lock(), ("guarded", 1): Task(use_lock, Ref("mutex"))},
            "mutex",
            id="graph-value",
        ),
    ],
)
def test_unpicklable_argument_is_a_serialization_error_naming_the_task(
    graph: dict[Any, Any], named: Any
) -> None:
    with pytest.raises(SerializationError) as info:
        compute(graph, ("guarded", 1))
    text = str(info.value)
    assert repr(named) in text and "lock" in text, text
    assert compute({"a": 1, "b": Task(inc, Ref("a"))}, "b") == 2


def test_unpicklable_result_is_a_serialization_error_naming_the_task() -> None:
    with pytest.raises(SerializationError) as info:
        compute({"lock-maker": Task(make_lock)}, "lock-maker")
    text = str(info.value)
    assert "'lock-maker'" in text and "lock" in text.replace("lock-maker", "")
    assert compute({"a": 1, "b": Task(inc, Ref("a"))}, "b") == 2


def test_function_the_workers_cannot_import_is_a_serialization_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # a module this process has imported and the workers cannot (made here, in no file)
    name = f"late_module_{uuid.uuid4().hex}"
    module = types.ModuleType(name)
    exec("def late_inc(x):\n    return x + 1\n", module.__dict__)
    monkeypatch.setitem(sys.modules, name, module)
    with pytest.raises(SerializationError) as info:
        compute({("late", 0): Task(module.late_inc, 1)}, ("late", 0))
    text = str(info.value)
    assert repr(("late", 0)) in text and name in text, text
    assert compute({"a": 1, "b": Task(inc, Ref("a"))}, "b") == 2


# -- a worker that dies ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("func", "args", "how"),
    [
        pytest.param(exit_hard, (3,), "exited with code 3", id="os._exit"),
        pytest.param(kill_self, (), "SIGKILL", id="sigkill"),
        pytest.param(segfault, (), "SIGSEGV", id="segfault"),
    ],
)
def test_worker_death_names_the_task_and_how_it_died(func: Any, args: tuple[Any, ...], how: str) -> None:
    key = ("doomed", func.__name__)
    graph = {"a": 1, "b": Task(inc, Ref("a")), key: Task(func, *args)}
    t0 = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        compute(graph, [key, "b"])
    assert time.monotonic() - t0 < 30
    text = str(info.value)
    assert repr(key) in text and how in text, text
    # the pool replaces the dead worker: the next compute on the same scheduler works
    assert compute({"a": 1, "b": Task(inc, Ref("a"))}, "b") == 2
    pids = compute({i: Task(pid_of, i) for i in range(8)}, list(range(8)))
    assert set(pids) <= {w.pid for w in taskloom_processes.live_workers()}


def big_array(*deps: Any) -> Any:
    return np.ones(2**21)  # 16 MiB: stays in the worker that made it


def kill_pid(pid: int, *deps: Any) -> None:
    os.kill(pid, signal.SIGKILL)


def first(value: Any, *deps: Any) -> Any:
    return value


def test_worker_dying_while_it_holds_a_needed_result_is_an_error_not_a_hang() -> None:
    pytest.importorskip("numpy")
    graph = {
        "big": Task(big_array),
        "holder": Task(pid_of, Ref("big")),  # runs where "big" lives
        "killer": Task(kill_pid, Ref("holder")),
        "use": Task(first, Ref("big"), Ref("killer")),
    }
    t0 = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        compute(graph, "use")
    assert time.monotonic() - t0 < 30
    assert "SIGKILL" in str(info.value)
    assert compute({"a": 1, "b": Task(inc, Ref("a"))}, "b") == 2


def report_then_sleep(port: int, name: str) -> None:
    """Tell the test this task runs, then work for a long time."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(name.encode())
    time.sleep(30)


def report_then_fail(port: int, name: str) -> None:
    """Tell the test this task runs, wait for its word, then fail."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(name.encode())
        conn.settimeout(40)
        conn.recv(16)
    raise ValueError("failing while another task still runs")


def test_a_failed_compute_leaves_no_worker_busy_with_its_abandoned_tasks(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    graph = {"slow": Task(report_then_sleep, port, "slow"), "bad": Task(report_then_fail, port, "bad")}
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        failing = executor.submit(compute, graph, ["slow", "bad"])
        running = {}
        for _ in range(2):  # both tasks run, each in its own worker process
            conn, _ = listener.accept()
            conn.settimeout(30)
            running[conn.recv(16).decode()] = conn
        running["bad"].sendall(b"fail now")
        with pytest.raises(ValueError):
            failing.result(timeout=30)
        for conn in running.values():
            conn.close()
    # "slow" still has 30 s to go: a compute that waits for it would take that long
    t0 = time.monotonic()
    assert compute({i: Task(inc, i) for i in range(16)}, list(range(16))) == list(range(1, 17))
    took = time.monotonic() - t0
    assert took < 10, f"the next compute waited {took:.1f} s for a task of the failed one"


# -- interrupts and orphans -------------------------------------------------------------------------

SCRIPT_INTERRUPT = """
import os
import socket
import sys
import time

import taskloom
import taskloom_processes
from taskloom import Task


def hold(port):
    conn = socket.create_connection(("127.0.0.1", port))  # the test accepts: this task runs
    conn.sendall(str(os.getpid()).encode())
    time.sleep(60)


if __name__ == "__main__":
    port, then = int(sys.argv[1]), sys.argv[2]
    taskloom.get({"warm": Task(int, 1)}, "warm", scheduler="processes", num_workers=2)
    print("started", flush=True)
    try:
        taskloom.get({i: Task(hold, port) for i in range(2)}, [0, 1], scheduler="processes",
                     num_workers=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        if then == "raise":
            raise
    print("alive", *[w.pid for w in taskloom_processes.live_workers()], flush=True)
    print("again", taskloom.get({"a": Task(abs, -2)}, "a", scheduler="processes", num_workers=2))
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(40)
    with server:
        yield server


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes a test starts; killed at its end if still running, pipes closed."""
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.communicate()


def start_and_interrupt(
    script: Path, listener: socket.socket, then: str, spawned: list[subprocess.Popen[str]]
) -> tuple[subprocess.Popen[str], int, list[psutil.Process], float]:
    """Start ``script``, wait until a long task runs in a worker, press Ctrl-C.

    Returns the child, the pid of the busy worker, the child's descendants before the signal and
    the ``time.monotonic()`` of the signal, once the compute has raised ``KeyboardInterrupt``.
    """
    script.write_text(SCRIPT_INTERRUPT)
    port = listener.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, str(script), str(port), then],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    spawned.append(child)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    conn, _ = listener.accept()  # a long task is running in a worker process now
    with conn:
        conn.settimeout(30)
        busy = int(conn.recv(64))
    descendants = psutil.Process(child.pid).children(recursive=True)
    assert busy in {p.pid for p in descendants}
    child.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    line = child.stdout.readline().strip()
    returned = time.monotonic() - signalled
    assert line == "interrupted"
    assert returned < 1.0, f"control came back {returned:.2f} s after Ctrl-C"
    return child, busy, descendants, signalled


@pytest.mark.timeout(90)
def test_keyboard_interrupt_returns_at_once_and_leaves_no_busy_worker(
    tmp_path: Path, listener: socket.socket, spawned: list[subprocess.Popen[str]]
) -> None:
    child, _, workers, signalled = start_and_interrupt(tmp_path / "interrupt.py", listener, "raise", spawned)
    child.wait(timeout=10)
    exited = time.monotonic() - signalled
    assert child.stderr is not None
    stderr = child.stderr.read()
    assert exited < 3, f"the process exited {exited:.1f} s after the signal"
    assert "KeyboardInterrupt" in stderr
    survivors = wait_gone(workers, timeout=10)
    assert not survivors, f"worker processes still running: {[p.pid for p in survivors]}"


@pytest.mark.timeout(90)
def test_after_keyboard_interrupt_the_busy_worker_is_gone_and_computes_work(
    tmp_path: Path, listener: socket.socket, spawned: list[subprocess.Popen[str]]
) -> None:
    child, busy, _, _ = start_and_interrupt(tmp_path / "interrupt.py", listener, "continue", spawned)
    child.wait(timeout=40)
    assert child.stdout is not None and child.stderr is not None
    out, err = child.stdout.read(), child.stderr.read()  # read() gets what readline() buffered
    assert child.returncode == 0, err
    alive, again = out.splitlines()
    assert alive.split()[0] == "alive" and str(busy) not in alive.split()[1:]
    assert again == "again 2"


SCRIPT_ORPHANS = """
import sys
import threading

import taskloom
import taskloom_processes
from taskloom import Task

if __name__ == "__main__":
    assert taskloom.get({i: Task(abs, -i) for i in range(8)}, list(range(8)), scheduler="processes",
                        num_workers=2) == list(range(8))
    print(" ".join(str(w.pid) for w in taskloom_processes.live_workers()), flush=True)
    if sys.argv[1] == "block":
        threading.Event().wait()  # until the test kills this process
"""


@pytest.mark.timeout(90)
def test_no_worker_outlives_a_script_that_exits_normally(tmp_path: Path) -> None:
    script = tmp_path / "orphans.py"
    script.write_text(SCRIPT_ORPHANS)
    done = run_script(script, "exit", timeout=60)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    procs = live_processes(pids)
    survivors = wait_gone(procs, timeout=10)
    assert not survivors, f"worker processes still running: {[p.pid for p in survivors]}"


@pytest.mark.timeout(90)
def test_workers_of_a_killed_script_exit_by_themselves(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    script = tmp_path / "orphans.py"
    script.write_text(SCRIPT_ORPHANS)
    child = subprocess.Popen(
        [sys.executable, str(script), "block"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    spawned.append(child)
    assert child.stdout is not None
    pids = [int(p) for p in child.stdout.readline().split()]
    assert len(pids) == 2
    procs = [psutil.Process(pid) for pid in pids]
    assert len(wait_gone(procs, timeout=0)) == 2, "a worker had ended already"
    child.kill()  # SIGKILL: no atexit, no cleanup of any kind in the parent
    child.wait(timeout=10)
    survivors = wait_gone(procs, timeout=10)
    assert not survivors, f"worker processes still running: {[p.pid for p in survivors]}"


# -- concurrency -------------------------------------------------------------------------------------


def test_concurrent_computes_from_two_threads() -> None:
    def tree(n: int) -> tuple[dict[Any, Any], Any]:
        graph: dict[Any, Any] = {("leaf", n, i): Task(inc, i) for i in range(n)}
        level = [("leaf", n, i) for i in range(n)]
        depth = 0
        while len(level) > 1:
            depth += 1
            upper = [("sum", n, depth, j) for j in range(len(level) // 2)]
            for j, key in enumerate(upper):
                graph[key] = Task(add, Ref(level[2 * j]), Ref(level[2 * j + 1]))
            level = upper
        return graph, level[0]

    barrier = threading.Barrier(2, timeout=30)

    def run(n: int) -> list[int]:
        graph, root = tree(n)
        barrier.wait()
        return [compute(graph, root) for _ in range(3)]

    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        first, second = executor.submit(run, 64), executor.submit(run, 128)
        assert first.result(timeout=50) == [64 * 65 // 2] * 3
        assert second.result(timeout=50) == [128 * 129 // 2] * 3


# -- batching and placement ------------------------------------------------------------------------


def _sent() -> tuple[int, int]:
    """Messages of work, and tasks, sent so far to the live workers."""
    workers = taskloom_processes.live_workers()
    return sum(w.batches_sent for w in workers), sum(w.tasks_sent for w in workers)


def _sent_by(run: Any) -> tuple[Any, int, int]:
    """``run()``'s result, and the messages of work and tasks it sent (the pool already up)."""
    compute({"warm": Task(inc, 1)}, "warm")
    batches, tasks = _sent()
    result = run()
    after = _sent()
    return result, after[0] - batches, after[1] - tasks


def test_a_chain_of_tiny_tasks_travels_in_a_few_messages() -> None:
    n = 3000
    graph: dict[Any, Any] = {0: Task(inc, 0), **{i: Task(inc, Ref(i - 1)) for i in range(1, n)}}
    result, batches, tasks = _sent_by(lambda: compute(graph, n - 1))
    assert result == n
    assert tasks == n
    assert batches <= n // 20, f"{n} chained tasks took {batches} messages"
    assert gc.isenabled()  # paused only while the plan was built


def test_a_tree_reduction_travels_in_subtrees() -> None:
    leaves = 1024
    graph: dict[Any, Any] = {("leaf", i): Task(inc, i) for i in range(leaves)}
    level = [("leaf", i) for i in range(leaves)]
    while len(level) > 1:
        upper = [("sum", len(level), j) for j in range(len(level) // 2)]
        for j, key in enumerate(upper):
            graph[key] = Task(add, Ref(level[2 * j]), Ref(level[2 * j + 1]))
        level = upper
    result, batches, tasks = _sent_by(lambda: compute(graph, level[0]))
    assert result == leaves * (leaves + 1) // 2
    assert tasks == len(graph)
    assert batches <= len(graph) // 10, f"{len(graph)} tasks took {batches} messages"


def report_and_wait(port: int, name: str) -> int:
    """Tell the test this task runs, and in which process; then wait for its word."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(f"{name} {os.getpid()}\n".encode())
        conn.settimeout(40)
        conn.recv(16)
    return os.getpid()


def _started(listener: socket.socket) -> tuple[str, int, socket.socket]:
    """The next task that reports it runs: its name, its process and its connection."""
    conn, _ = listener.accept()
    conn.settimeout(30)
    line = b""
    while not line.endswith(b"\n"):
        chunk = conn.recv(64)
        assert chunk, "a task closed its connection before it said where it runs"
        line += chunk
    name, pid = line.decode().split()
    return name, int(pid), conn


def test_a_long_task_goes_to_the_free_worker_not_behind_a_busy_one(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    graph = {name: Task(report_and_wait, port, name) for name in ("a", "b", "c")}
    conns: list[socket.socket] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            future = executor.submit(compute, graph, ["a", "b", "c"])
            busy, freed = sorted([_started(listener), _started(listener)])
            conns += [busy[2], freed[2]]
            assert busy[1] != freed[1], "two long tasks started in the same worker"
            # free the worker of the later task: a scheduler that queued two tasks on one
            # worker queued "a" and "b" there, and "c" would now wait behind "a"
            freed[2].sendall(b"go")
            third = _started(listener)
            conns.append(third[2])
            assert third[1] == freed[1], "the third task did not start in the worker that was free"
            for conn in (busy[2], third[2]):
                conn.sendall(b"go")
            pids = future.result(timeout=30)
    finally:
        for conn in conns:
            conn.close()
    assert sorted(pids) == sorted([busy[1], freed[1], third[1]])


def test_garbage_collection_pauses_for_a_short_compute_only(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskloom_processes import scheduler

    port = listener.getsockname()[1]
    for pause, collecting in ((60.0, False), (0.2, True)):
        monkeypatch.setattr(scheduler, "GC_PAUSE_SECONDS", pause)
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            future = executor.submit(compute, {"t": Task(report_and_wait, port, "t")}, "t")
            _, pid, conn = _started(listener)
            with conn:
                deadline = time.monotonic() + 20
                while gc.isenabled() != collecting and time.monotonic() < deadline:
                    time.sleep(0.01)  # polling a state that changes by itself, with a deadline
                assert gc.isenabled() == collecting, f"collector enabled: {gc.isenabled()} after {pause} s"
                conn.sendall(b"go")
                assert future.result(timeout=30) == pid
        assert gc.isenabled()


def test_a_task_whose_large_inputs_live_in_two_workers_gets_both() -> None:
    pytest.importorskip("numpy")
    n = 2**18  # 2 MiB of float64: each result stays in the worker that made it
    graph = {
        "a": Task(np.full, n, 1.0),
        "b": Task(np.full, n, 2.0),
        "where_a": Task(pid_of, Ref("a")),  # runs where "a" lives
        "where_b": Task(pid_of, Ref("b")),
        "sum": Task(add, Ref("a"), Ref("b")),  # runs where one lives; the other is fetched
    }
    where_a, where_b, total = compute(graph, ["where_a", "where_b", "sum"])
    assert where_a != where_b and os.getpid() not in (where_a, where_b)
    assert total.shape == (n,) and float(total.min()) == float(total.max()) == 3.0
