"""Worker plugins in order, failures raised to the caller, installed hooks; the client's config on workers.

Plugins record what they do in files (the worker processes are separate), and attach attributes
to the worker that tasks read back with ``get_worker()``.  The installed plugin is a tiny
distribution made at test time -- a module and a ``.dist-info`` with an entry point in group
``taskloom`` -- put on the ``PYTHONPATH`` of ``taskloom worker`` processes only.
"""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import taskloom
from taskloom.errors import WorkerPluginError
from taskloom.worker import WorkerPlugin, get_worker
from taskloom_distributed import Client

pytestmark = pytest.mark.timeout(120)


class Recorder(WorkerPlugin):
    """Appends ``setup <label> <pid>`` / ``teardown <label> <pid>`` to a file; setup may fail."""

    def __init__(self, path: str, label: str, fail: bool = False) -> None:
        self.path = path
        self.label = label
        self.fail = fail

    def _log(self, event: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{event} {self.label} {os.getpid()}\n")

    def setup(self, worker: Any) -> None:
        self._log("setup")
        if self.fail:
            raise ConnectionRefusedError(f"the {self.label} database is down")
        worker.order = [*getattr(worker, "order", []), self.label]

    def teardown(self, worker: Any) -> None:
        self._log("teardown")


def _events(path: Path, pid: int | None = None) -> list[str]:
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [f"{event} {label}" for event, label, p in lines if pid is None or int(p) == pid]


def _order() -> list[str]:
    return list(getattr(get_worker(), "order", []))


def test_plugins_set_up_in_order_on_every_worker_and_tear_down_in_reverse(tmp_path: Path) -> None:
    log = tmp_path / "plugins.log"
    client = Client(n_workers=1, threads_per_worker=1, set_as_default=False)
    try:
        for label in ("db", "cache", "model"):
            assert client.register_worker_plugin(Recorder(str(log), label), name=label) == label
        assert list(client.run(_order).values()) == [["db", "cache", "model"]]
        client.cluster.scale(2)  # a worker started later sets them up too, in the same order
        assert list(client.run(_order).values()) == [["db", "cache", "model"]] * 2
        assert client.submit(_order, pure=False).result() == ["db", "cache", "model"]
        pids = client.cluster.worker_pids
    finally:
        client.close()
    for pid in pids:
        assert _events(log, pid) == [
            "setup db", "setup cache", "setup model", "teardown model", "teardown cache", "teardown db",
        ]  # fmt: skip


def test_a_failing_setup_is_raised_to_the_caller_with_the_plugin_and_worker(tmp_path: Path) -> None:
    log = tmp_path / "plugins.log"
    with Client(n_workers=1, threads_per_worker=1, set_as_default=False) as client:
        client.register_worker_plugin(Recorder(str(log), "db"), name="db")
        [address] = client.scheduler_info()["workers"]
        with pytest.raises(WorkerPluginError) as info:
            client.register_worker_plugin(Recorder(str(log), "warehouse", fail=True), name="warehouse")
        error = info.value
        assert error.name == "warehouse"
        assert error.worker == address
        assert isinstance(error.error, ConnectionRefusedError)
        assert f"worker plugin 'warehouse' failed to set up on worker '{address}'" in str(error)
        assert "the warehouse database is down" in str(error)
        remote = str(error.__cause__.__cause__)  # the worker's traceback
        assert "in setup" in remote and "ConnectionRefusedError: the warehouse database is down" in remote
        # not registered: the worker works on, with the plugins it had
        assert client.submit(_order, pure=False).result() == ["db"]
        assert list(client.run(_order).values()) == [["db"]]
    assert _events(log) == ["setup db", "setup warehouse", "teardown db"]


# -- installed packages' worker hooks ----------------------------------------------------------
HOOKS_MODULE = """
    import os
    import taskloom

    def _log(line):
        with open(os.environ["TESTHOOKS_LOG"], "a") as f:
            f.write(f"{line} {os.getpid()}\\n")

    @taskloom.hookimpl
    def taskloom_worker_setup(worker):
        worker.installed = f"installed hooks on {worker.name}"
        _log("setup installed")

    @taskloom.hookimpl
    def taskloom_worker_teardown(worker):
        _log("teardown installed")

    @taskloom.hookimpl
    def taskloom_task_transition(worker, key, start, finish):
        if isinstance(key, str) and key.startswith("traced"):
            _log(f"{start}->{finish} {key}")
"""


def _install_hooks_package(site: Path) -> None:
    """A distribution ``taskloom-testhooks`` whose module implements the worker hooks."""
    (site / "taskloom_testhooks.py").write_text(textwrap.dedent(HOOKS_MODULE))
    info = site / "taskloom_testhooks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: taskloom-testhooks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[taskloom]\ntesthooks = taskloom_testhooks\n")


def _installed() -> str:
    return str(get_worker().installed)  # type: ignore[attr-defined]


def test_installed_worker_hooks_run_on_every_worker(cli: Any, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_hooks_package(site)
    log = tmp_path / "hooks.log"
    scheduler = cli("scheduler", "--port", "0", "--auth-token", "t")
    address = scheduler.wait_for(r"scheduler at (tcp://\S+)").group(1)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "TESTHOOKS_LOG": log}
    workers = [cli("worker", address, "--auth-token", "t", env=env) for _ in range(2)]
    for w in workers:
        w.wait_for("worker at")
    with Client(address, auth_token="t", set_as_default=False) as client:
        installed = client.run(_installed)  # no user plugin was registered
        assert sorted(installed.values()) == sorted(f"installed hooks on {a}" for a in installed)
        assert client.submit(sum, [1, 2], key="traced-sum").result() == 3
        pids = {w["pid"] for w in client.scheduler_info()["workers"].values()}
    for w in workers:
        assert w.stop() == 0
    lines = log.read_text().splitlines()
    for pid in pids:
        mine = [line.rsplit(" ", 1)[0] for line in lines if line.endswith(f" {pid}")]
        assert mine[0] == "setup installed" and mine[-1] == "teardown installed", mine
    assert any(line.startswith("ready->executing traced-sum") for line in lines)
    assert any(line.startswith("executing->memory traced-sum") for line in lines)


# -- the client's configuration reaches its tasks ------------------------------------------------
def test_config_set_on_the_client_is_seen_by_its_tasks(client: Client) -> None:
    with taskloom.config.set({"myapp.x": 3}):
        assert client.submit(lambda: taskloom.config.get("myapp.x")).result() == 3
        with taskloom.config.set({"myapp": {"y": "nested"}}):
            assert client.submit(lambda: taskloom.config.get("myapp")).result() == {"x": 3, "y": "nested"}
    assert client.submit(lambda: taskloom.config.get("myapp.x", "unset"), pure=False).result() == "unset"
    # graphs run through the default scheduler (compute/get) carry it as well
    with taskloom.config.set({"myapp.x": 4}):
        graph = {"x": taskloom.Task(taskloom.config.get, "myapp.x")}
        assert client.get(graph, "x") == 4


def test_the_client_object_and_cluster_settings_are_not_shipped(client: Client) -> None:
    def seen() -> tuple[Any, Any]:
        return taskloom.config.get("scheduler", None), taskloom.config.get("distributed.comm.auth", None)

    with taskloom.config.set({"myapp.flag": True, "distributed.comm.auth": "client-side"}):
        scheduler, auth = client.submit(seen, pure=False).result()
    assert not isinstance(scheduler, Client)
    assert auth != "client-side"


def test_a_value_that_will_not_pickle_stays_on_the_client_with_a_warning(client: Client) -> None:
    with taskloom.config.set({"myapp.lock": threading.Lock(), "myapp.z": 5}):
        with pytest.warns(UserWarning, match=r"config key 'myapp\.lock' is not sent to the workers.*lock"):
            future = client.submit(_z_and_lock)
        assert future.result() == (5, 0)


def _z_and_lock() -> tuple[Any, Any]:
    return taskloom.config.get("myapp.z"), taskloom.config.get("myapp.lock", 0)


OTHER_CLIENT = """
    import sys, taskloom
    from taskloom_distributed import Client

    def rendezvous_then_read(key):
        import builtins
        builtins.__dict__["taskloom_test_barrier"].wait(60)  # both clients' tasks run at once
        return taskloom.config.get(key)

    if __name__ == "__main__":
        address, token = sys.argv[1], sys.argv[2]
        with Client(address, auth_token=token) as client, taskloom.config.set({"myapp.who": "other"}):
            print(client.submit(rendezvous_then_read, "myapp.who", pure=False).result(), flush=True)
"""


def _make_barrier() -> bool:
    builtins.__dict__.setdefault("taskloom_test_barrier", threading.Barrier(2))
    return True


def _rendezvous_then_read(key: str) -> Any:
    builtins.__dict__["taskloom_test_barrier"].wait(60)
    return taskloom.config.get(key)


def test_two_clients_with_different_settings_share_a_worker(tmp_path: Path) -> None:
    """Tasks of two clients run at the same time on one worker, each under its own client's values."""
    with Client(n_workers=1, threads_per_worker=2, set_as_default=False) as client:
        client.run(_make_barrier)
        script = tmp_path / "other_client.py"
        script.write_text(textwrap.dedent(OTHER_CLIENT))
        other = subprocess.Popen(
            [sys.executable, str(script), client.scheduler_address, client.cluster.auth_token],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with taskloom.config.set({"myapp.who": "this"}):
                mine = client.submit(_rendezvous_then_read, "myapp.who", pure=False)
            assert mine.result(timeout=90) == "this"
            out, err = other.communicate(timeout=90)
        finally:
            if other.poll() is None:
                other.kill()
                other.wait(10)
        assert other.returncode == 0, err
        assert out.strip() == "other"


def test_an_overlay_applies_to_its_own_thread_only() -> None:
    seen: list[Any] = []
    ready, done = threading.Event(), threading.Event()

    def other_thread() -> None:
        ready.wait(30)
        seen.append(taskloom.config.get("myapp.overlaid", "absent"))
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with taskloom.config.overlay({"myapp.overlaid": 1}):
        assert taskloom.config.get("myapp.overlaid") == 1
        with taskloom.config.set({"myapp.other": 2}):  # a set meanwhile: both visible here
            assert taskloom.config.get("myapp") == {"overlaid": 1, "other": 2}
        ready.set()
        assert done.wait(30)
    thread.join(30)
    assert seen == ["absent"]
    assert taskloom.config.get("myapp.overlaid", "absent") == "absent"
