"""Bounded memories of recent log records and events, kept by schedulers and workers for dumps.

:func:`install` puts one :class:`RecentLogs` handler on the ``taskloom`` logger of this process
(once, however many schedulers and workers it runs): the last ``distributed.admin.log_length``
records that got past the logger's level, as ``(time, level, logger name, message)``.
:func:`event_log` makes the bounded deque a scheduler or worker records its events in.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from taskloom import config

DEFAULT_LENGTH = 1000


def log_length() -> int:
    """``distributed.admin.log_length``: how many log records and events are kept."""
    return max(int(config.get("distributed.admin.log_length", DEFAULT_LENGTH) or 0), 0)


def event_log() -> deque[Any]:
    """A deque that keeps the last ``distributed.admin.log_length`` events."""
    return deque(maxlen=log_length())


class RecentLogs(logging.Handler):
    """Keeps the last ``maxlen`` records it handles, formatted when they are read."""

    def __init__(self, maxlen: int) -> None:
        super().__init__(logging.NOTSET)
        self.records: deque[logging.LogRecord] = deque(maxlen=maxlen)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def recent(self) -> list[tuple[float, str, str, str]]:
        """``(time, level, logger, message)`` for each record kept, oldest first."""
        out = []
        for record in list(self.records):
            try:
                message = record.getMessage()
            except Exception as exc:  # a record whose arguments do not fit its format
                message = f"{record.msg!r} (unformattable: {exc})"
            if record.exc_info and record.exc_info[0] is not None:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            out.append((record.created, record.levelname, record.name, message))
        return out


_handler: list[RecentLogs] = []
_lock = threading.Lock()


def install() -> RecentLogs:
    """The process's :class:`RecentLogs` on the ``taskloom`` logger (added on the first call)."""
    with _lock:
        if not _handler:
            handler = RecentLogs(log_length())
            logging.getLogger("taskloom").addHandler(handler)
            _handler.append(handler)
        return _handler[0]


def recent_logs() -> list[tuple[float, str, str, str]]:
    """The records kept in this process (none before :func:`install`)."""
    return _handler[0].recent() if _handler else []
