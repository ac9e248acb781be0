"""Shut the shared thread pools down when the session ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _shutdown_pools() -> Iterator[None]:
    yield
    import taskloom_threads

    taskloom_threads.shutdown()
