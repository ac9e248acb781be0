"""``taskloom scheduler`` and ``taskloom worker``: a cluster across "machines", simulated locally.

Every process here is a real ``python -m taskloom ...`` on 127.0.0.1; the ``cli`` fixture stops
what is left at the end and fails the test if any process (or child of one) survives.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import pytest
import taskloom
from taskloom.testing import wait_gone
from taskloom_distributed import Client
from taskloom_distributed.cli import add_commands
from taskloom_distributed.comm import HandshakeError, new_token

pytestmark = pytest.mark.timeout(120)


def inc(x: int) -> int:
    return x + 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_cluster_of_separate_processes_computes_and_leaves_nothing_behind(cli: Any) -> None:
    port, token = free_port(), "a-shared-secret"
    scheduler = cli("scheduler", "--port", str(port), "--auth-token", token)
    scheduler.wait_for(rf"scheduler at tcp://127\.0\.0\.1:{port}")
    env = {"TASKLOOM_DISTRIBUTED__COMM__AUTH": token}
    workers = [
        cli("worker", f"127.0.0.1:{port}", "--nthreads", "2", "--memory-limit", "4GB", env=env)
        for _ in range(2)
    ]
    for w in workers:
        w.wait_for(r"worker at tcp://127\.0\.0\.1:\d+")
    with taskloom.config.set({"distributed.comm.auth": token}):
        client = Client(f"127.0.0.1:{port}", set_as_default=False)
    with client:
        assert client.gather(client.map(inc, range(20))) == list(range(1, 21))
        info = client.scheduler_info()
        assert len(info["workers"]) == 2
        for w in info["workers"].values():
            assert w["nthreads"] == 2
            assert w["memory_limit"] == 4e9
        # each `taskloom worker` process runs its worker itself or under a nanny, in a child process
        family = [scheduler.psutil] + [
            p for w in workers for p in (w.psutil, *w.psutil.children(recursive=True))
        ]
        assert {w["pid"] for w in info["workers"].values()} <= {p.pid for p in family}
    assert scheduler.stop() == 0
    assert not wait_gone(family), "the workers did not stop when their scheduler did"
    assert all(w.proc.wait(10) == 0 for w in workers)
    for w in workers:
        assert "the scheduler went away" in w.output() or "worker stopped" in w.output()


def test_the_scheduler_prints_a_token_that_clients_need(cli: Any) -> None:
    scheduler = cli("scheduler", "--port", "0")
    token = scheduler.wait_for(r"auth token: (\S+)").group(1)
    address = scheduler.wait_for(r"scheduler at (tcp://\S+)").group(1)
    worker = cli("worker", address, "--auth-token", token)
    worker.wait_for("worker at")
    with pytest.raises(HandshakeError, match="requires an authentication token"):
        Client(address, set_as_default=False)
    with pytest.raises(HandshakeError, match="authentication failed: wrong or missing token"):
        Client(address, auth_token="guess", set_as_default=False)
    scheduler.wait_for(r"WARNING: refused connection from tcp://127\.0\.0\.1:\d+: authentication failed")
    with Client(address, auth_token=token, set_as_default=False) as client:
        assert client.submit(inc, 1).result() == 2


def test_generated_tokens_pass_as_the_workers_auth_token_argument() -> None:
    """A generated token is pasted after ``--auth-token``: one starting with "-" would be refused
    by the worker's argument parser (a CI run once drew such a token)."""
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    for _ in range(2000):
        token = new_token()
        args = parser.parse_args(["worker", "tcp://127.0.0.1:8786", "--auth-token", token])
        assert args.auth_token == token


def test_the_token_can_come_from_the_environment(cli: Any) -> None:
    env = {"TASKLOOM_DISTRIBUTED__COMM__AUTH": "from-the-environment"}
    scheduler = cli("scheduler", "--port", "0", env=env)
    address = scheduler.wait_for(r"scheduler at (tcp://\S+)").group(1)
    assert "auth token" not in scheduler.output()  # nothing generated, nothing printed
    cli("worker", address, env=env).wait_for("worker at")
    with Client(address, auth_token="from-the-environment", set_as_default=False) as client:
        assert client.submit(inc, 2).result() == 3


def test_no_auth_must_be_asked_for(cli: Any) -> None:
    scheduler = cli("scheduler", "--port", "0", "--no-auth")
    address = scheduler.wait_for(r"scheduler at (tcp://\S+)").group(1)
    assert "auth token" not in scheduler.output()
    cli("worker", address).wait_for("worker at")
    with Client(address, set_as_default=False) as client:
        assert client.submit(inc, 3).result() == 4


def test_a_worker_with_the_wrong_token_says_so_in_one_line(cli: Any) -> None:
    scheduler = cli("scheduler", "--port", "0", "--auth-token", "right")
    address = scheduler.wait_for(r"scheduler at (tcp://\S+)").group(1)
    worker = cli("worker", address, "--auth-token", "wrong")
    assert worker.proc.wait(60) == 1
    err = worker.stderr_path.read_text()
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("taskloom worker:")] == [
        f"taskloom worker: {address} refused the connection: authentication failed: wrong or missing token"
    ]


def test_a_missing_certificate_file_is_named_in_one_line(cli: Any, tmp_path: Any) -> None:
    missing = tmp_path / "ca.pem"
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    scheduler = cli("scheduler", "--port", "0", "--tls-ca-file", str(missing), "--tls-cert", str(cert))
    assert scheduler.proc.wait(60) == 1
    err = scheduler.stderr_path.read_text()
    assert "Traceback" not in err
    assert f"taskloom scheduler: tls_ca_file (distributed.comm.tls.ca_file): no such file '{missing}'" in err


def test_an_unreachable_scheduler_is_one_line(cli: Any) -> None:
    worker = cli("worker", f"127.0.0.1:{free_port()}", "--auth-token", "t")
    assert worker.proc.wait(60) == 1
    err = worker.stderr_path.read_text()
    assert "Traceback" not in err
    assert "taskloom worker: could not connect to 127.0.0.1:" in err
