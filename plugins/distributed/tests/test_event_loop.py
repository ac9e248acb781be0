"""Which event loop the distributed plugin runs on: ``distributed.admin.event_loop``."""

from __future__ import annotations

import asyncio

import pytest
import taskloom
import uvloop
from taskloom.errors import ConfigError
from taskloom_distributed import Client
from taskloom_distributed.loop import LoopThread, loop_factory, run

pytestmark = pytest.mark.timeout(60)


async def _loop_kind() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


CHOICES = [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]


@pytest.mark.parametrize(("choice", "kind"), CHOICES)
def test_the_configured_loop_runs_coroutines_and_the_loop_thread(choice: str, kind: str) -> None:
    with taskloom.config.set({"distributed.admin.event_loop": choice}):
        assert run(_loop_kind()) == kind
        thread = LoopThread()
        try:
            assert thread.run(_loop_kind()) == kind
        finally:
            thread.stop()
        assert not thread.thread.is_alive()


def test_an_unknown_event_loop_is_refused_naming_the_setting_and_the_choices() -> None:
    with taskloom.config.set({"distributed.admin.event_loop": "trio"}):
        expected = r"distributed\.admin\.event_loop is 'trio'.*'auto', 'uvloop', 'asyncio'"
        with pytest.raises(ConfigError, match=expected):
            loop_factory()


def test_auto_and_asyncio_pick_the_loops_they_name() -> None:
    with taskloom.config.set({"distributed.admin.event_loop": "asyncio"}):
        assert loop_factory() is asyncio.new_event_loop
    assert loop_factory() is uvloop.new_event_loop


def test_a_cluster_started_under_asyncio_runs_its_scheduler_and_worker_processes_on_it() -> None:
    with taskloom.config.set({"distributed.admin.event_loop": "asyncio"}):
        with Client(n_workers=1, threads_per_worker=1) as client:
            assert client.run_on_scheduler(_loop_kind) == "asyncio"
            assert set(client.run(_loop_kind).values()) == {"asyncio"}
            assert client.submit(sum, [1, 2, 3]).result() == 6
