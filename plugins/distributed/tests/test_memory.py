"""Worker memory: the spill-to-disk store, the memory policy, pausing and terminating workers."""

from __future__ import annotations

import glob
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import taskloom
from taskloom.errors import ConfigError
from taskloom.testing import live_processes, wait_gone
from taskloom.testing import wait_until as wait_for
from taskloom_distributed import Client
from taskloom_distributed.scheduler.state import SchedulerState
from taskloom_distributed.worker.memory import (
    DIRECTORY_PREFIX,
    MEMORY_EXIT_CODE,
    SpillBuffer,
    make_worker_directory,
    parse_memory_limit,
    sizeof,
    to_serialized,
)
from taskloom_distributed.worker.monitor import MemoryLimits, MemoryMonitor, spill_until_below
from taskloom_distributed.worker.server import Worker
from taskloom_distributed.worker.state import WorkerState

pytestmark = pytest.mark.timeout(120)

MB = 1_000_000


# -- the policy, without sockets -----------------------------------------------------------------
def test_limits_come_from_config_and_each_step_can_be_disabled() -> None:
    limits = MemoryLimits.from_config(1000, {})
    assert (limits.target, limits.spill, limits.pause, limits.terminate) == (0.6, 0.7, 0.8, 0.95)
    limits = MemoryLimits.from_config(
        1000, {"target": False, "spill": 0.5, "pause": "False", "terminate": None, "monitor_interval": 0.5}
    )
    assert limits.target is None and limits.pause is None and limits.terminate is None
    assert limits.bytes("spill") == 500 and limits.monitor_interval == 0.5
    assert limits.spills and limits.monitored
    assert not MemoryLimits.from_config(0, {}).spills  # no memory_limit: nothing to enforce
    assert MemoryLimits.from_config(1000, {"pause": 0.9}, pause=0.3).pause == 0.3  # overrides win


def test_the_plugin_declares_the_memory_defaults() -> None:
    assert taskloom.config.get("distributed.worker.memory.target") == 0.6
    assert taskloom.config.get("distributed.worker.memory.spill") == 0.7
    assert taskloom.config.get("distributed.worker.memory.pause") == 0.8
    assert taskloom.config.get("distributed.worker.memory.terminate") == 0.95
    assert taskloom.config.get("distributed.worker.memory.monitor_interval") == 0.1
    with taskloom.config.set({"distributed.worker.memory.pause": False}):
        assert MemoryLimits.from_config(1000).pause is None


@pytest.mark.parametrize("bad", [1.5, 0, -0.1, "lots", True])
def test_a_bad_fraction_is_an_error_naming_the_setting(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"distributed\.worker\.memory\.spill"):
        MemoryLimits.from_config(1000, {"spill": bad})


def test_monitor_spills_past_spill_down_to_target() -> None:
    monitor = MemoryMonitor(MemoryLimits(1000, target=0.6, spill=0.7, pause=None, terminate=None))
    assert monitor.check(650) == []
    assert monitor.check(701) == [("spill", 600)]
    no_target = MemoryMonitor(MemoryLimits(1000, target=None, spill=0.7, pause=None, terminate=None))
    assert no_target.check(701) == [("spill", 700)]


def test_monitor_pauses_past_pause_and_resumes_below() -> None:
    monitor = MemoryMonitor(MemoryLimits(1000, target=None, spill=None, pause=0.8, terminate=None))
    assert monitor.check(700) == []
    [(op, text)] = monitor.check(850)
    assert op == "pause" and "80%" in text and monitor.status == "paused"
    assert monitor.check(900) == []  # already paused
    assert [op for op, _ in monitor.check(790)] == ["resume"]
    assert monitor.status == "running"


def test_monitor_decides_pause_after_spilling() -> None:
    monitor = MemoryMonitor(MemoryLimits(1000, target=0.6, spill=0.7, pause=0.8, terminate=None))
    assert monitor.check(900) == [("spill", 600)]  # spill first ...
    assert [op for op, _ in monitor.spilled(850, exhausted=True)][-1] == "pause"  # ... it did not help
    assert [op for op, _ in monitor.spilled(500, exhausted=False)] == ["resume"]


def test_monitor_warns_once_when_nothing_is_left_to_spill() -> None:
    monitor = MemoryMonitor(MemoryLimits(1000, target=0.6, spill=0.7, pause=None, terminate=None))
    [(op, text)] = monitor.spilled(750, exhausted=True)
    assert op == "warn" and "outside task results" in text
    assert monitor.spilled(760, exhausted=True) == []  # once per episode
    assert monitor.check(500) == []  # back below target: a new episode may warn again
    assert [op for op, _ in monitor.spilled(750, exhausted=True)] == ["warn"]


def test_monitor_terminates_once_past_terminate() -> None:
    monitor = MemoryMonitor(MemoryLimits(1000, target=0.6, spill=0.7, pause=0.8, terminate=0.95))
    [(op, text)] = monitor.check(960)
    assert op == "terminate" and "95%" in text
    assert monitor.status == "terminating"
    assert monitor.check(990) == []


def test_spill_until_below_evicts_until_the_target() -> None:
    memory = [1000]
    sizes = [100, 0, 100, 100, 100]  # one value had to stay in memory (0)

    def evict() -> int:
        if not sizes:
            return -1
        size = sizes.pop(0)
        memory[0] -= size
        return size

    done = spill_until_below(750, evict, lambda: memory[0], collect=lambda: None)
    assert (done.count, done.nbytes, done.rss, done.done, done.exhausted) == (3, 300, 700, True, False)
    done = spill_until_below(100, evict, lambda: memory[0], collect=lambda: None)
    assert done.exhausted and not done.done and done.rss == 600


def test_spill_until_below_stops_after_its_time_budget() -> None:
    ticks = iter(range(100))
    done = spill_until_below(0, lambda: 10, lambda: 1000, budget=2.5, clock=lambda: next(ticks), collect=list)
    assert done.count == 3 and not done.done and not done.exhausted


# -- the spill buffer ----------------------------------------------------------------------------
@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[SpillBuffer]:
    buf = SpillBuffer(str(tmp_path / "spill"), target=100 * MB)
    yield buf
    buf.close()


def files(buf: SpillBuffer) -> list[str]:
    return os.listdir(buf.directory) if os.path.isdir(buf.directory) else []


def test_least_recently_used_values_go_to_disk_past_the_target(buffer: SpillBuffer) -> None:
    for i in range(4):
        buffer[("x", i)] = np.full(5_000_000, i, dtype=np.float64)  # 40 MB each
    assert set(buffer.fast) == {("x", 2), ("x", 3)} and set(buffer.slow) == {("x", 0), ("x", 1)}
    assert len(files(buffer)) == 2 and buffer.disk > 80 * MB and buffer.memory == 80 * MB
    buffer[("x", 2)]  # recently used: now ("x", 3) is the least recently used
    buffer["y"] = np.zeros(5_000_000)
    assert set(buffer.fast) == {("x", 2), "y"}


def test_spilled_values_read_back_transparently_and_writable(buffer: SpillBuffer) -> None:
    values = {i: np.arange(i, i + 6_000_000, dtype=np.float64) for i in range(4)}  # 48 MB each
    for i, v in values.items():
        buffer[i] = v
    assert 0 in buffer.slow
    back = buffer[0]
    np.testing.assert_array_equal(back, values[0])
    assert back.flags.writeable
    back[0] = -1  # a task may modify its input in place
    assert 0 in buffer.fast and 0 not in buffer.slow
    assert len(buffer) == 4 and set(buffer) == set(values)
    assert buffer.spill_files.reads == 1 and buffer.spill_files.written > 0


def test_released_keys_delete_their_files(buffer: SpillBuffer) -> None:
    for i in range(5):
        buffer[i] = np.ones(5_000_000)
    spilled = list(buffer.slow)
    assert len(files(buffer)) == len(spilled) == 3
    for key in list(buffer):
        del buffer[key]
    assert files(buffer) == [] and len(buffer) == 0 and buffer.disk == 0
    for i in range(5):
        buffer[i] = np.ones(5_000_000)
    buffer.clear()  # what a worker does when its scheduler forgets it: no value read back
    assert files(buffer) == [] and len(buffer) == 0 and buffer.spill_files.reads == 0
    directory = buffer.directory
    buffer.close()
    assert not os.path.exists(directory)


def test_values_larger_than_the_target_go_straight_to_disk(buffer: SpillBuffer) -> None:
    buffer["big"] = np.ones(20_000_000)  # 160 MB > 100 MB target
    assert "big" in buffer.slow and buffer.memory == 0
    assert buffer["big"].sum() == 20_000_000
    assert "big" in buffer.slow  # too big to keep: it stays on disk


def test_unpicklable_values_stay_in_memory_logged_once_with_the_key(
    buffer: SpillBuffer, caplog: pytest.LogCaptureFixture
) -> None:
    lock = [threading.Lock(), b"x" * 4000]  # large enough for the LRU, and unpicklable
    with caplog.at_level(logging.ERROR, "taskloom.distributed.worker"):
        buffer["the-lock"] = lock
        buffer["a"] = np.ones(7_000_000)  # 56 MB
        buffer["b"] = np.ones(7_000_000)  # the lock is the least recently used: it cannot go
        assert buffer.evict() == 56 * MB
        assert buffer.evict() == -1  # nothing left that could be spilled
    assert buffer["the-lock"] is lock and "the-lock" in buffer and "the-lock" not in buffer.slow
    messages = [r.getMessage() for r in caplog.records if "the-lock" in r.getMessage()]
    assert len(messages) == 1 and "cannot be pickled" in messages[0]
    del buffer["the-lock"]
    assert "the-lock" not in buffer


def test_a_peer_gets_spilled_frames_from_disk_without_unpickling(buffer: SpillBuffer) -> None:
    buffer["a"] = np.arange(15_000_000, dtype=np.float64)  # 120 MB: straight to disk
    reads = buffer.spill_files.reads
    ser = to_serialized(buffer, "a")
    assert "a" in buffer.slow and "a" not in buffer.fast  # not brought back into memory
    np.testing.assert_array_equal(ser.load(), np.arange(15_000_000, dtype=np.float64))
    assert buffer.spill_files.reads == reads + 1
    buffer["small"] = [1, 2, 3]
    assert to_serialized(buffer, "small").load() == [1, 2, 3]


def test_small_values_stay_in_memory_outside_the_lru_and_are_counted(buffer: SpillBuffer) -> None:
    buffer["small"] = 7
    buffer["big"] = np.ones(7_000_000)  # 56 MB
    assert "small" in buffer.pinned and "small" not in buffer.fast and "big" in buffer.fast
    assert buffer.memory == 56 * MB + sizeof(7)
    assert buffer.evict() == 56 * MB and buffer.evict() == -1  # the small one never goes to disk
    assert buffer["small"] == 7 and set(buffer) == {"small", "big"} and len(buffer) == 2
    buffer["small"] = np.ones(1000)  # now large: into the LRU, out of the small ones
    assert "small" in buffer.fast and "small" not in buffer.pinned
    buffer["big"] = "tiny now"  # the spilled value's file goes
    assert "big" not in buffer.slow and buffer["big"] == "tiny now" and files(buffer) == []
    del buffer["small"], buffer["big"]
    assert len(buffer) == 0 and buffer.memory == 0
    with pytest.raises(KeyError):
        del buffer["big"]


def test_threads_reading_while_values_are_spilled(buffer: SpillBuffer) -> None:
    for i in range(8):
        buffer[i] = np.full(500_000, i, dtype=np.float64)  # 4 MB
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(10):
                for i in range(8):
                    assert buffer[i][0] == i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        buffer.evict()
        for t in threads:
            t.join(0.01)
    assert not errors
    assert {i: buffer[i][0] for i in range(8)} == {i: i for i in range(8)}


def test_sizeof_counts_buffers_and_containers() -> None:
    assert sizeof(np.ones(1000)) == 8000
    assert sizeof(b"x" * 10_000) >= 10_000
    assert sizeof([np.ones(1000)] * 100) >= 800_000
    assert sizeof({i: b"y" * 1000 for i in range(100)}) >= 100_000


def test_memory_limit_accepts_the_usual_spellings() -> None:
    assert parse_memory_limit("300MB") == 300 * MB
    assert parse_memory_limit(2**20) == 2**20
    assert parse_memory_limit(0) == parse_memory_limit(None) == 0
    assert 0 < parse_memory_limit("auto") <= psutil.virtual_memory().total
    assert parse_memory_limit(0.5) == pytest.approx(psutil.virtual_memory().total / 2, rel=0.01)


def test_worker_directories_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = psutil.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{DIRECTORY_PREFIX}{dead.pid}-abc"
    (stale / "spill").mkdir(parents=True)
    (stale / "spill" / "1-x").write_bytes(b"old")
    alive = tmp_path / f"{DIRECTORY_PREFIX}{os.getpid()}-def"
    alive.mkdir()
    mine = make_worker_directory(str(tmp_path))
    assert os.path.basename(mine).startswith(f"{DIRECTORY_PREFIX}{os.getpid()}-")
    assert not stale.exists() and alive.exists()


def test_only_a_worker_that_owns_its_process_exits_past_terminate(tmp_path: Path) -> None:
    embedded = Worker("tcp://127.0.0.1:1", memory_limit="1GB", local_directory=str(tmp_path))
    own = Worker("tcp://127.0.0.1:1", memory_limit="1GB", local_directory=str(tmp_path), owns_process=True)
    try:
        assert embedded.memory_limits.terminate is None  # it cannot be restarted: it must not exit
        assert own.memory_limits.terminate == 0.95
        assert isinstance(own.data, SpillBuffer) and own.data.fast.n == 600 * MB
        assert own.local_directory.startswith(str(tmp_path))
        plain = Worker("tcp://127.0.0.1:1", memory_limit=0)
        assert isinstance(plain.data, dict) and not plain.memory_limits.monitored
        plain._teardown()
    finally:
        for w in (embedded, own):
            w._teardown()
    assert os.listdir(tmp_path) == []


# -- the worker state machine: pausing --------------------------------------------------------------
def compute(key: str, deps: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {"key": key, "spec": None, "priority": (0,), "who_has": deps or {}}


def test_a_paused_worker_starts_no_task_until_resumed() -> None:
    state = WorkerState(nthreads=1, address="tcp://me:1")
    assert state.compute_task(compute("a")) == [("execute", "a")]
    assert state.set_paused(True) == []
    assert state.compute_task(compute("b")) == []
    assert state.executed("a", 1) == []  # a thread is free, but the worker is paused
    assert state.tasks["b"].state == "ready"
    assert state.set_paused(False) == [("execute", "b")]


def test_a_paused_worker_fetches_nothing_until_resumed() -> None:
    state = WorkerState(nthreads=1, address="tcp://me:1")
    state.set_paused(True)
    assert state.compute_task(compute("c", {"dep": ["tcp://peer:1"]})) == []
    assert state.tasks["dep"].state == "fetch"
    assert state.set_paused(False) == [("fetch", "tcp://peer:1", ["dep"])]
    out = state.fetched("tcp://peer:1", {"dep": 5})
    assert ("execute", "c") in out


def test_freeing_a_spilled_key_does_not_read_it_back(buffer: SpillBuffer) -> None:
    state = WorkerState(nthreads=1, data=buffer)
    state.compute_task(compute("a"))
    state.executed("a", np.ones(20_000_000))  # 160 MB: on disk
    assert "a" in buffer.slow
    state.free(["a"])
    assert buffer.spill_files.reads == 0 and "a" not in buffer and files(buffer) == []


def test_the_scheduler_sends_no_new_work_to_a_paused_worker() -> None:
    state = SchedulerState()
    state.add_worker("tcp://a:1")
    state.add_worker("tcp://b:1")
    state.worker_status("tcp://a:1", "paused")
    msgs = state.update_graph("c", {f"t{i}": (None, []) for i in range(6)}, [f"t{i}" for i in range(6)])
    assert {recipient for recipient, _ in msgs} == {("worker", "tcp://b:1")}
    state.worker_status("tcp://b:1", "paused")  # every worker paused: the task waits ...
    assert state.update_graph("c", {"u": (None, [])}, ["u"]) == []
    msgs = state.worker_status("tcp://a:1", "running")  # ... for one to resume
    assert [(r, m["key"]) for r, m in msgs] == [(("worker", "tcp://a:1"), "u")]


# -- end to end: worker processes on a LocalCluster ----------------------------------------------------
@pytest.fixture
def memory_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Path]:
    """Set worker memory settings through the environment (worker processes inherit it)."""
    local = tmp_path / "workers"

    def setup(**settings: Any) -> Path:
        monkeypatch.setenv("TASKLOOM_DISTRIBUTED__WORKER__LOCAL_DIRECTORY", str(local))
        for name, value in settings.items():
            monkeypatch.setenv(f"TASKLOOM_DISTRIBUTED__WORKER__MEMORY__{name.upper()}", repr(value))
        taskloom.config.refresh()
        return local

    yield setup
    monkeypatch.undo()
    taskloom.config.refresh()


def assert_no_worker_left(client: Client) -> None:
    pids = list(client.cluster.worker_pids)
    client.close()
    assert not wait_gone(live_processes(pids), 20)


def make_array(i: int) -> np.ndarray:
    return np.full(5_000_000, i, dtype=np.float64)  # 40 MB


def checksum(x: np.ndarray) -> float:
    return float(x.sum())


def spill_files_under(local: Path) -> list[str]:
    return glob.glob(str(local / "*" / "spill" / "*"))


def test_a_graph_three_times_the_memory_limit_completes_by_spilling(
    memory_config: Callable[..., Path],
) -> None:
    local = memory_config(target=0.3, spill=0.5, pause=0.8, terminate=0.95)
    n = 48  # 48 x 40 MB = 1.92 GB of results, 3.2 x the 2 x 300 MB of the workers' limits
    client = Client(n_workers=2, threads_per_worker=1, memory_limit="300MB", set_as_default=False)
    try:
        arrays = client.map(make_array, range(n))
        sums = client.map(checksum, arrays)  # reads every array back while all are still held
        total = client.submit(sum, sums)
        assert total.result(timeout=100) == 5_000_000 * sum(range(n))
        info = client.scheduler_info()["workers"]
        assert sum(w["spilled"] for w in info.values()) >= n * 40 * MB - 2 * 300 * MB
        assert all(w["memory"] < 0.95 * 300 * MB for w in info.values())
        assert len(spill_files_under(local)) >= n - 4
        np.testing.assert_array_equal(arrays[7].result(), make_array(7))  # gathered from disk
        del arrays, sums, total
        wait_for(lambda: spill_files_under(local) == [], 30, "the spill files to be deleted")
    finally:
        assert_no_worker_left(client)
    assert os.listdir(local) == []  # each worker removed its directory


hog: list[Any] = []


def hold_memory(nbytes: int) -> int:
    hog.append(np.ones(nbytes // 8))  # held outside task results: the monitor cannot spill it
    return os.getpid()


def drop_memory() -> None:
    hog.clear()


def ready_keys() -> list[Any]:
    state = taskloom.get_worker().state  # type: ignore[attr-defined]
    return [ts.key for ts in state.tasks.values() if ts.state == "ready"]


def inc(x: int) -> int:
    return x + 1


def test_a_worker_above_pause_starts_no_task_until_its_memory_drops(
    memory_config: Callable[..., Path],
) -> None:
    memory_config(target=False, spill=False, pause=0.5, terminate=False)
    client = Client(n_workers=1, threads_per_worker=1, memory_limit="400MB", set_as_default=False)
    try:
        client.submit(hold_memory, 250 * MB).result()
        status = lambda: next(iter(client.scheduler_info()["workers"].values()))["status"]  # noqa: E731
        wait_for(lambda: status() == "paused", 30, "the worker to report itself paused")
        future = client.submit(inc, 1)
        # the scheduler holds it back: its only worker is paused
        wait_for(lambda: client.scheduler_info()["tasks"].get("waiting"), 30, "the task to wait")
        assert not future.done()
        assert next(iter(client.run(ready_keys).values())) == []
        client.run(drop_memory)
        assert future.result(timeout=60) == 2
        wait_for(lambda: status() == "running", 30, "the worker to report itself running")
    finally:
        assert_no_worker_left(client)


def leak_once(marker: str) -> int:
    """The first run leaks memory until the worker stops; any later run returns its PID."""
    if os.path.exists(marker):
        return os.getpid()
    Path(marker).write_text(str(os.getpid()))
    held = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        held.append(np.ones(2_500_000))  # 20 MB more, every few milliseconds
        time.sleep(0.005)
    raise RuntimeError("the memory monitor did not stop this worker")


def test_a_task_leaking_past_terminate_restarts_its_worker_not_a_hung_cluster(
    memory_config: Callable[..., Path], tmp_path: Path
) -> None:
    memory_config(target=False, spill=False, pause=False, terminate=0.6)
    client = Client(n_workers=2, threads_per_worker=1, memory_limit="300MB", set_as_default=False)
    try:
        pids = set(client.cluster.worker_pids)
        marker = tmp_path / "leaked"
        survivor = client.submit(leak_once, str(marker)).result(timeout=90)
        leaker = int(marker.read_text())
        assert leaker in pids and survivor != leaker
        nannies = client.cluster.nannies
        death = wait_for(
            lambda: next((d for n in nannies for d in n.deaths if d["pid"] == leaker), None),
            30,
            "the nanny to record the worker's death",
        )
        assert death["exitcode"] == MEMORY_EXIT_CODE and "memory" in death["how"]
        wait_for(
            lambda: (
                len(client.scheduler_info()["workers"]) == 2
                and len(client.cluster.worker_pids) == 2
                and leaker not in client.cluster.worker_pids
            ),
            60,
            "the nanny to restart the worker",
        )
        assert client.submit(inc, 41).result(timeout=60) == 42  # the cluster goes on
    finally:
        assert_no_worker_left(client)


def test_memory_exit_code_is_documented() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert str(MEMORY_EXIT_CODE) in readme and "distributed.worker.memory.terminate" in readme
    assert math.isclose(MemoryLimits().terminate or 0, 0.95)
