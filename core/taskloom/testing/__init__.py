"""Test support for schedulers and plugins: the conformance suite and pytest fixtures.

A third-party scheduler proves it behaves like the built-in ones with one test class::

    # tests/test_conformance.py of the package that provides scheduler "mine"
    from taskloom.testing import SchedulerConformance


    class TestMine(SchedulerConformance):
        scheduler = "mine"  # a registered name or alias, or a get(graph, keys, **kwargs) callable
        # in_process = False                   # tasks run in other processes
        # max_live_intermediates_check = False # results live outside this process
        # compute_kwargs = {"address": ...}    # passed to every compute

pytest collects every ``test_*`` method of the mixin against ``scheduler``.  The fixtures
``taskloom_scheduler_names``, ``no_leaked_threads``, ``clean_config``, ``registered_plugin`` and
``worker_plugins`` come with the ``taskloom`` pytest plugin, active wherever taskloom is installed, and
``wait_until(condition, timeout)`` polls for what another process makes true::

    def test_my_hooks(registered_plugin, no_leaked_threads):
        with registered_plugin(MyPlugin()):
            ...
"""

import pytest

pytest.register_assert_rewrite("taskloom.testing.conformance")

from .conformance import SchedulerConformance  # noqa: E402
from .fixtures import (  # noqa: E402
    clean_config,
    no_leaked_threads,
    registered_plugin,
    taskloom_scheduler_names,
    worker_plugins,
)
from .polling import wait_until  # noqa: E402
from .processes import live_processes, wait_gone  # noqa: E402

__all__ = [
    "SchedulerConformance",
    "clean_config",
    "live_processes",
    "no_leaked_threads",
    "registered_plugin",
    "taskloom_scheduler_names",
    "wait_gone",
    "wait_until",
    "worker_plugins",
]
