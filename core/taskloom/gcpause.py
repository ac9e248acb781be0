"""Pausing the cyclic garbage collector while a burst of long-lived objects is built.

Building a graph's plan, unpacking a large message or registering thousands of tasks allocates
a few objects per task and frees none: collections meanwhile would only traverse the young,
growing structure again and again (quadratic in effect on large graphs) to free nothing.

Pauses nest and may overlap across threads: the collector is disabled by the first pause and
enabled again when the last one ends -- and only if it was enabled when the first began (a
program that turned it off itself keeps it off).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_resume = False  # was the collector enabled when the outermost pause began?


def pause() -> None:
    """Stop collecting until the matching :func:`resume`."""
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1


def resume() -> None:
    """End a :func:`pause`; the last one to end lets the collector run again."""
    global _depth
    with _lock:
        if _depth == 0:
            return
        _depth -= 1
        if _depth == 0 and _resume:
            gc.enable()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector paused for the ``with`` block."""
    pause()
    try:
        yield
    finally:
        resume()
