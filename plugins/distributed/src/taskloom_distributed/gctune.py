"""A larger first threshold of the cyclic garbage collector while a scheduler or worker runs.

A scheduler or worker allocates a few tracked objects per task and keeps most of them for a
while; with Python's default first threshold (700) that makes a full collection -- a scan of
every object in the process -- every ~70,000 allocations, several times per 10,000-task graph:
measured at 40 us per task on the scheduler, a fifth of its time.  A first threshold of
``distributed.admin.gc_threshold`` (10,000) makes full collections over ten times rarer; young
garbage cycles are collected a little later.  Raised when the first scheduler or worker of the
process starts, put back as it was when the last one closes; 0 leaves the collector alone.
"""

from __future__ import annotations

import gc
import threading

from taskloom import config

DEFAULT_THRESHOLD = 10_000

_lock = threading.Lock()
_users = 0
_saved: tuple[int, ...] | None = None  # the thresholds before the first user raised them


def raise_threshold() -> None:
    """A scheduler or worker starts: the first threshold is at least the configured one."""
    global _users, _saved
    first = int(config.get("distributed.admin.gc_threshold", DEFAULT_THRESHOLD) or 0)
    with _lock:
        current = gc.get_threshold()
        if _users == 0:
            _saved = current
        _users += 1
        if first > current[0]:
            gc.set_threshold(first, *current[1:])


def restore_threshold() -> None:
    """A scheduler or worker has closed: the last one puts the thresholds back."""
    global _users, _saved
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            _saved = None
