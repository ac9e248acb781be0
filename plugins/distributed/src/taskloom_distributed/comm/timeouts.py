"""Time limits on talking to a peer: to connect to it, and to wait on it while it sends nothing.

``distributed.comm.timeouts.connect`` (seconds, default 10) bounds opening a connection: TCP
connect, TLS and the authenticating handshake together.  ``distributed.comm.timeouts.idle``
(seconds, default 30) bounds how long a request waits while *no byte* comes from the peer (or
the peer reads none of ours): a transfer that keeps moving, however large or slow, is never cut
short, while a peer that is frozen (stopped, swapping, its event loop blocked) or gone without a
word is given up on after that long.  ``0``, ``None`` or ``False`` for ``idle`` waits forever.
"""

from __future__ import annotations

from typing import Any

from taskloom import config

CONNECT_DEFAULT = 10.0
IDLE_DEFAULT = 30.0


def _seconds(name: str, value: Any, allow_none: bool) -> float | None:
    if allow_none and (value is None or value is False or value == 0):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        off = " (or 0/False: no limit)" if allow_none else ""
        raise ValueError(f"{name} must be a positive number of seconds{off}, not {value!r}")
    return float(value)


def connect_timeout() -> float:
    """``distributed.comm.timeouts.connect``: seconds to connect and authenticate."""
    name = "distributed.comm.timeouts.connect"
    seconds = _seconds(name, config.get(name, CONNECT_DEFAULT), allow_none=False)
    assert seconds is not None
    return seconds


def idle_timeout() -> float | None:
    """``distributed.comm.timeouts.idle``: seconds without progress before a request is given up
    (None: no limit)."""
    name = "distributed.comm.timeouts.idle"
    return _seconds(name, config.get(name, IDLE_DEFAULT), allow_none=True)
