"""Every installed scheduler against the conformance suite.

The schedulers are read from the registry when the tests are collected, so installing a
scheduler plugin adds it here without editing this file; test ids end in ``[<scheduler>]``.
Whether a scheduler's tasks run in this process is asked of the scheduler itself, once.
"""

from __future__ import annotations

import pytest
import taskloom
from taskloom.testing import SchedulerConformance
from taskloom.testing.conformance import tasks_run_in_this_process

_in_process: dict[str, bool] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conformance_scheduler" in metafunc.fixturenames:
        names = list(taskloom.schedulers())
        metafunc.parametrize("conformance_scheduler", names, ids=names, indirect=True)


@pytest.fixture
def conformance_scheduler(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name not in _in_process:
        _in_process[name] = tasks_run_in_this_process(name)
    return name


class TestConformance(SchedulerConformance):
    @pytest.fixture(autouse=True)
    def _use_scheduler(self, conformance_scheduler: str) -> None:
        self.scheduler = conformance_scheduler
        self.in_process = self.max_live_intermediates_check = _in_process[conformance_scheduler]
