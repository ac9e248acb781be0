"""Pausing the garbage collector around bursts of long-lived objects: nested, across threads."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
from taskloom import gcpause

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    while gcpause._depth:  # a failed test leaves no pause behind
        gcpause.resume()
    (gc.enable if was else gc.disable)()


def test_a_pause_stops_the_collector_until_it_ends() -> None:
    with gcpause.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_nested_pauses_end_with_the_outermost() -> None:
    gcpause.pause()
    with gcpause.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the outer one still runs
    gcpause.resume()
    assert gc.isenabled()


def test_a_collector_the_program_turned_off_stays_off() -> None:
    gc.disable()
    with gcpause.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_a_pause_ends_when_its_block_raises() -> None:
    with pytest.raises(ValueError), gcpause.paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_resume_without_a_pause_changes_nothing() -> None:
    gcpause.resume()
    assert gc.isenabled()
    gc.disable()
    gcpause.resume()
    assert not gc.isenabled()


def test_overlapping_pauses_of_two_threads() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with gcpause.paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with gcpause.paused():
            second_in.set()
            first_out.wait(10)
            seen["after the first ended"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"after the first ended": False}  # the second thread's pause still holds
    assert gc.isenabled()
