"""Every installed scheduler against the conformance suite.

The schedulers are read from the registry when the tests are collected, so installing a
scheduler plugin adds it here without editing this file; test ids end in ``[<scheduler>]``.
Whether a scheduler's tasks run in this process is asked of the scheduler itself, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import pytest
import taskloom
from taskloom.testing import SchedulerConformance
from taskloom.testing.conformance import tasks_run_in_this_process

_in_process: dict[str, bool] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conformance_scheduler" in metafunc.fixturenames:
        names = list(taskloom.schedulers())
        metafunc.parametrize("conformance_scheduler", names, ids=names, indirect=True)


@pytest.fixture(scope="session")
def conformance_scheduler(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """The scheduler's name and the compute options its ``SchedulerSpec.setup`` provides.

    Session-scoped, so an executor or cluster a scheduler needs is started before the per-test
    leak checks look, and stopped once that scheduler's tests are done.
    """
    name: str = request.param
    spec = taskloom.schedulers()[name]
    with spec.setup() if spec.setup is not None else nullcontext({}) as options:
        if name not in _in_process:
            _in_process[name] = tasks_run_in_this_process(name, **options)
        yield name, options


class TestConformance(SchedulerConformance):
    @pytest.fixture(autouse=True)
    def _use_scheduler(self, conformance_scheduler: tuple[str, dict[str, Any]]) -> None:
        name, options = conformance_scheduler
        self.scheduler = name
        self.compute_kwargs = options
        self.in_process = self.max_live_intermediates_check = _in_process[name]
