"""Which tasks a worker process is executing, readable by its nanny after the process has died.

A worker started by a nanny maps a small file from the nanny's directory; each task it hands
to its executor takes one 8-byte slot, holding the task key's digest until the task returns.
The writes are plain memory stores into a shared file mapping, so they cost no system call and
survive ``SIGKILL``, ``os._exit`` or a segfault: after the process has gone the nanny reads the
slots and tells the scheduler which tasks were running, and only those are blamed for the death
(``distributed.scheduler.allowed_failures``).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from typing import Any

SLOT = 8
IDLE = bytes(SLOT)


def key_digest(key: Any) -> bytes:
    """A stable 8-byte digest of a task key (the same in every process)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=SLOT).digest()
    return digest if digest != IDLE else b"\x00" * (SLOT - 1) + b"\x01"


def create(path: str, nthreads: int) -> None:
    """Create (or clear) the slot file for a worker with ``nthreads`` threads."""
    with open(path, "wb") as f:
        f.write(bytes(SLOT * (2 * max(nthreads, 1) + 2)))  # room for tasks queued behind them


def read(path: str) -> list[bytes]:
    """The digests of the tasks that were executing (idle slots left out)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    slots = (data[i : i + SLOT] for i in range(0, len(data) - SLOT + 1, SLOT))
    return [s for s in slots if s != IDLE]


class Slots:
    """The worker's side: :meth:`acquire` a slot for a task about to run, :meth:`release` it after.

    Used from the worker's event loop only (no locking); when every slot is taken (more tasks in
    the executor than it was sized for) a task simply goes unmarked.
    """

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self._free = list(range(len(self._map) // SLOT - 1, -1, -1))

    def acquire(self, key: Any) -> int | None:
        if not self._free:
            return None
        slot = self._free.pop()
        self._map[slot * SLOT : (slot + 1) * SLOT] = key_digest(key)
        return slot

    def release(self, slot: int | None) -> None:
        if slot is not None:
            self._map[slot * SLOT : (slot + 1) * SLOT] = IDLE
            self._free.append(slot)
