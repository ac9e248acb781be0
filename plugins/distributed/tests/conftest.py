"""One LocalCluster client per module; every test leaves no process behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from taskloom_distributed import Client


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(n_workers=2, threads_per_worker=1) as c:
        yield c
