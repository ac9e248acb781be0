"""``wait_until``: poll a condition with a deadline, for tests that must not sleep to synchronise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    condition: Callable[[], Any], timeout: float = 60, what: str = "", interval: float = 0.02
) -> Any:
    """Call ``condition`` until it returns something true, and return that value.

    Raises ``AssertionError`` naming ``what`` (else the condition) if ``timeout`` seconds pass
    first.  For conditions that only another process or thread can make true -- a worker has
    registered, a file exists -- where there is no event to wait on.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        time.sleep(interval)
