"""Stall diagnostics: the watchdog's rules alone, then a real stall -- warned about, dumped, released."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import taskloom
from taskloom.testing import wait_until
from taskloom_distributed import Client, load_cluster_dump
from taskloom_distributed.cluster_dump import dump_format
from taskloom_distributed.scheduler.state import SchedulerState
from taskloom_distributed.scheduler.watchdog import Resumed, Stall, StallDetector

pytestmark = pytest.mark.timeout(180)

A = "tcp://a:1"


# -- tasks (module level: the worker processes import them) --------------------------------------
def wait_for_file(path: str) -> str:
    """Blocks until ``path`` exists: a task stuck on something that does not come."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def shout(text: str) -> str:
    return text.upper()


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path: Path) -> Iterator[None]:
    def children() -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in _cmd(p)]

    before = {p.pid for p in children()}
    with taskloom.config.set({"distributed.nanny.log_directory": str(tmp_path)}):
        yield
    _, alive = psutil.wait_procs([p for p in children() if p.pid not in before], timeout=30)
    left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in left:
        p.kill()
    assert not left, f"processes left running: {left}"


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def stuck_graph() -> SchedulerState:
    """``stuck`` processing on A, ``after`` waiting on it."""
    st = SchedulerState()
    st.add_worker(A)
    st.update_graph(
        "c1", {"stuck": ("spec", []), "after": ("spec", ["stuck"])}, ["after"], {"stuck": 0, "after": 1}
    )
    return st


# -- the rules -------------------------------------------------------------------------------------
def test_a_stall_is_reported_after_the_timeout_with_the_stuck_tasks_and_where_they_are() -> None:
    st = stuck_graph()
    detector = StallDetector(timeout=10)
    assert detector.check(st, 0.0) is None
    assert detector.check(st, 9.0) is None
    stall = detector.check(st, 11.0)
    assert isinstance(stall, Stall) and stall.pending == 2
    assert [(t["key"], t["state"], t["worker"]) for t in stall.tasks] == [
        ("stuck", "processing", A),
        ("after", "waiting", None),
    ]
    message = stall.message()
    assert f"'stuck' processing on {A}" in message
    assert "'after' waiting on ['stuck']" in message
    assert "distributed.scheduler.stall_timeout = 10 s" in message
    assert detector.check(st, 15.0) is None  # once per timeout, not at every check
    again = detector.check(st, 21.5)
    assert isinstance(again, Stall) and again.seconds == 21.5
    st.task_finished(A, "stuck", 8)
    resumed = detector.check(st, 22.0)
    assert isinstance(resumed, Resumed) and resumed.seconds == 22.0
    assert detector.check(st, 31.0) is None  # "after" is processing now: the clock restarted at 22 s


def test_an_idle_cluster_is_not_stalled_and_a_new_graph_restarts_the_clock() -> None:
    st = SchedulerState()
    st.add_worker(A)
    detector = StallDetector(timeout=10)
    assert detector.check(st, 0.0) is None
    assert detector.check(st, 100.0) is None  # nothing pending
    st.update_graph("c1", {"new": ("spec", [])}, ["new"])
    assert detector.check(st, 101.0) is None  # just submitted: not stalled for 100 s
    assert isinstance(detector.check(st, 112.0), Stall)


def test_ready_tasks_with_no_worker_are_named_as_such() -> None:
    st = SchedulerState()
    st.update_graph("c1", {"orphan": ("spec", [])}, ["orphan"])
    detector = StallDetector(timeout=1)
    detector.check(st, 0.0)
    stall = detector.check(st, 2.0)
    assert isinstance(stall, Stall)
    assert "'orphan' ready, but no running worker can take it" in stall.message()


def test_a_long_list_of_stuck_tasks_is_cut_short() -> None:
    st = SchedulerState()
    st.add_worker(A)
    st.update_graph("c1", {f"t{i}": ("spec", []) for i in range(25)}, [f"t{i}" for i in range(25)])
    detector = StallDetector(timeout=1)
    detector.check(st, 0.0)
    stall = detector.check(st, 2.0)
    assert isinstance(stall, Stall) and len(stall.tasks) == 10
    assert stall.message().endswith(
        "and 15 more. client.dump_cluster_state(filename) writes the whole cluster state"
    )


def test_the_dump_format_comes_from_the_file_name() -> None:
    assert dump_format("state.json") == ("json", False)
    assert dump_format("state.msgpack.gz") == ("msgpack", True)
    with pytest.raises(ValueError, match=r"'state.txt'.*\.json or \*\.msgpack"):
        dump_format("state.txt")


# -- a real stall ----------------------------------------------------------------------------------
def test_a_stuck_task_is_warned_about_dumped_and_finishes_once_released(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flag = tmp_path / "flag"
    caplog.set_level(logging.WARNING, logger="taskloom.distributed.scheduler")
    with (
        taskloom.config.set({"distributed.scheduler.stall_timeout": 1}),
        Client(n_workers=2, threads_per_worker=1) as client,
    ):
        stuck = client.submit(wait_for_file, str(flag), key="waits-for-flag")
        after = client.submit(shout, stuck, key="after-flag")
        address = wait_until(
            lambda: next((a for a, w in client.scheduler_info()["workers"].items() if w["tasks"]), None),
            what="the stuck task to be running",
        )

        def stall_warnings() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.getMessage().startswith("stalled")]

        warning = wait_until(stall_warnings, 30, "a stall warning")[0]
        assert f"'waits-for-flag' processing on {address}" in warning
        assert "'after-flag' waiting on ['waits-for-flag']" in warning
        assert "distributed.scheduler.stall_timeout = 1 s" in warning
        pid = client.scheduler_info()["workers"][address]["pid"]
        for name in ("state.json", "state.msgpack.gz"):
            path = client.dump_cluster_state(tmp_path / name)
            dump = load_cluster_dump(path)
            task = dump.task("waits-for-flag")
            assert task is not None and task["state"] == "processing" and task["processing_on"] == address
            assert dump.task("after-flag")["waiting_on"] == [repr("waits-for-flag")]  # type: ignore[index]
            assert dump["scheduler"]["tasks_by_state"]["waiting"] == [repr("after-flag")]
            assert len(dump["workers"]) == 2 and dump.missing_workers() == []
            worker = dump["workers"][address]
            assert worker["pid"] == pid and worker["executing"] == [repr("waits-for-flag")]
            assert list(dump.worker_tasks_in_state("executing")) == [address]
            assert any(e[1] == "compute-task" and e[2] == repr("waits-for-flag") for e in worker["events"])
            assert any(
                m.startswith("stalled") for _, level, _, m in dump["scheduler"]["logs"] if level == "WARNING"
            )
            assert dump["scheduler"]["last_stall"]["tasks"][0]["key"] == "waits-for-flag"
        flag.touch()
        assert after.result(timeout=60) == "RELEASED"
        wait_until(
            lambda: any("progressing again" in r.getMessage() for r in caplog.records), 30, "the all-clear"
        )
