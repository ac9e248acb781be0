"""Fixtures of the taskloom-dask tests: the local schedulers, dask.distributed clusters, clean-up.

* ``local_scheduler`` -- ``(name, options)`` for every installed taskloom scheduler but ``dask``,
  with what its ``SchedulerSpec.setup`` provides (``pool`` an executor, taskloom's own
  ``distributed`` a cluster); tests using it run once per scheduler.
* ``dask_client`` / ``dask_process_client`` -- a ``distributed.Client`` on a ``LocalCluster`` on
  127.0.0.1 without dashboard: worker threads in this process, or two worker processes (the
  ``dask`` scheduler's own setup).  Each is made once per session, warmed up, and closed at the
  end; closing checks that the cluster's threads ended.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import taskloom
from taskloom.testing.fixtures import join_new_threads

PROCESS_WIDE_THREADS = ("Dask-Offload",)
"""distributed's one offload thread per process (``distributed.utils._offload_executor``): it is
started on first use and lives as long as the process, whatever cluster is closed."""

CLUSTER_SCHEDULERS = {"dask"}
"""Schedulers tested against a dask.distributed cluster, not among the local ones."""


def local_scheduler_names() -> list[str]:
    return [name for name in taskloom.schedulers() if name not in CLUSTER_SCHEDULERS]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "local_scheduler" in metafunc.fixturenames:
        names = local_scheduler_names()
        metafunc.parametrize("local_scheduler", names, ids=names, indirect=True, scope="session")


@pytest.fixture(scope="session")
def local_scheduler(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """A scheduler's name and the compute options its ``SchedulerSpec.setup`` provides (an
    executor for ``pool``, a cluster for taskloom's ``distributed``), set up once per session."""
    name: str = request.param
    spec = taskloom.schedulers()[name]
    with spec.setup() if spec.setup is not None else contextlib.nullcontext({}) as options:
        yield name, options


@pytest.fixture(scope="session", autouse=True)
def _shutdown_shared_pools() -> Iterator[None]:
    """Shut the shared taskloom pools down once every test has run."""
    yield
    for module in ("taskloom_threads", "taskloom_processes"):
        try:
            importlib.import_module(module).shutdown()
        except ImportError:
            continue


@contextlib.contextmanager
def _client(processes: bool, n_workers: int, threads_per_worker: int) -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    before = set(threading.enumerate())
    cluster = distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=processes,
        host="127.0.0.1",
        protocol="tcp",
        dashboard_address=None,  # no dashboard; the scheduler's small HTTP server (health,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # metrics) on a free port, not 8787
        worker_dashboard_address=None,
    )
    try:
        client = distributed.Client(cluster, set_as_default=False)
        try:
            assert client.submit(abs, -1).result() == 1  # warm up: every lazy thread starts now
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
    _check_threads_ended(before)


def _check_threads_ended(before: set[threading.Thread]) -> None:
    before = before | {t for t in threading.enumerate() if t.name.startswith(PROCESS_WIDE_THREADS)}
    leaked = join_new_threads(before, timeout=10)
    assert not leaked, f"threads left running by the dask cluster: {[t.name for t in leaked]}"


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A client of a cluster whose workers are threads of this process (quick)."""
    with _client(processes=False, n_workers=1, threads_per_worker=4) as client:
        yield client


@pytest.fixture(scope="session")
def dask_process_client() -> Iterator[Any]:
    """A client of a cluster of two worker processes: the ``dask`` scheduler's own setup."""
    pytest.importorskip("distributed")
    from taskloom_dask.distributed import local_cluster

    before = set(threading.enumerate())
    with local_cluster() as options:
        yield options["client"]
    _check_threads_ended(before)
