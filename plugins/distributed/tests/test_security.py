"""Security: tokens, mutual TLS and versions at the handshake -- nothing unpickled before it.

TLS runs on real sockets on 127.0.0.1 with certificates made here by ``cryptography``: a CA, the
cluster's certificates, and a rogue CA's.  Refused connections must be logged with the peer's
address, and the scheduler must go on serving the clients it has.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import pickle
import socket
import ssl
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import taskloom
from taskloom.errors import ConfigError
from taskloom.testing import wait_until as until
from taskloom_distributed import Client
from taskloom_distributed.comm import HandshakeError, Security, connect, connect_handshake
from taskloom_distributed.comm.handshake import local_versions, version_mismatch

pytestmark = pytest.mark.timeout(120)

COMM_LOGGER = "taskloom.distributed.comm"


def inc(x: int) -> int:
    return x + 1


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- certificates ------------------------------------------------------------------------------
def _write_certificates(directory: Path) -> dict[str, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    paths: dict[str, Path] = {}

    def name(text: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def save(label: str, key: Any, cert: Any) -> None:
        paths[f"{label}.key"] = directory / f"{label}.key"
        paths[f"{label}.pem"] = directory / f"{label}.pem"
        paths[f"{label}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        paths[f"{label}.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def authority(label: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(label))
            .issuer_name(name(label))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**_CA_USAGE), critical=True)
            .sign(key, hashes.SHA256())
        )
        save(label, key, cert)
        return key, cert

    def leaf(label: str, ca_key: Any, ca_cert: Any) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(label))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        save(label, key, cert)

    ca_key, ca_cert = authority("taskloom-test-ca")
    for label in ("scheduler", "worker", "client"):
        leaf(label, ca_key, ca_cert)
    rogue_key, rogue_cert = authority("rogue-ca")
    leaf("rogue-client", rogue_key, rogue_cert)
    return paths


_CA_USAGE = dict.fromkeys(
    (
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "encipher_only",
        "decipher_only",
    ),
    False,
) | {"digital_signature": True, "key_cert_sign": True, "crl_sign": True}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _write_certificates(tmp_path_factory.mktemp("certs"))


def _tls_flags(certs: dict[str, Path], label: str) -> list[str]:
    return [
        "--tls-ca-file", str(certs["taskloom-test-ca.pem"]),
        "--tls-cert", str(certs[f"{label}.pem"]),
        "--tls-key", str(certs[f"{label}.key"]),
    ]  # fmt: skip


def _security(certs: dict[str, Path], label: str | None = "client", ca: str = "taskloom-test-ca") -> Security:
    return Security(
        tls_ca_file=str(certs[f"{ca}.pem"]),
        tls_cert=str(certs[f"{label}.pem"]) if label else None,
        tls_key=str(certs[f"{label}.key"]) if label else None,
    )


@pytest.fixture(scope="module")
def tls_cluster(
    certs: dict[str, Path], cli_processes: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any]]:
    """``taskloom scheduler`` and one ``taskloom worker`` with TLS only (no token): (address, scheduler)."""
    with cli_processes(tmp_path_factory.mktemp("tls-cluster")) as start:
        scheduler = start("scheduler", "--port", "0", *_tls_flags(certs, "scheduler"))
        address = scheduler.wait_for(r"scheduler at (tls://127\.0\.0\.1:\d+)").group(1)
        assert "auth token" not in scheduler.output()  # the certificates authenticate
        worker = start("worker", address, "--nthreads", "2", *_tls_flags(certs, "worker"))
        worker.wait_for(r"worker at tls://")
        yield address, scheduler


# -- TLS ---------------------------------------------------------------------------------------
def test_tls_client_with_the_cluster_certificates_computes(tls_cluster: tuple[str, Any], certs: dict) -> None:
    address, _ = tls_cluster
    with Client(address, security=_security(certs), set_as_default=False) as client:
        assert client.submit(inc, 1).result() == 2
        assert client.gather(client.map(inc, range(10))) == list(range(1, 11))
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1 and all(a.startswith("tls://127.0.0.1:") for a in workers)


def test_tls_settings_come_from_the_configuration(tls_cluster: tuple[str, Any], certs: dict) -> None:
    address, _ = tls_cluster
    settings = {
        "distributed.comm.tls.ca_file": str(certs["taskloom-test-ca.pem"]),
        "distributed.comm.tls.cert": str(certs["client.pem"]),
        "distributed.comm.tls.key": str(certs["client.key"]),
    }
    host_port = address.removeprefix("tls://")  # no scheme: TLS because it is configured
    with taskloom.config.set(settings), Client(host_port, set_as_default=False) as client:
        assert client.submit(inc, 41).result() == 42


def _tls_attempt(address: str, security: Security) -> int:
    """A TLS connection from a known local port that the scheduler should refuse; returns the port."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    context = security.client_context()
    assert context is not None
    with socket.socket() as raw:
        raw.bind(("127.0.0.1", 0))
        local_port = raw.getsockname()[1]
        raw.settimeout(30)
        raw.connect((host, int(port)))
        with context.wrap_socket(raw) as tls:  # the handshake completes on our side (TLS 1.3) ...
            with pytest.raises((ssl.SSLError, ConnectionError)):
                while tls.recv(1024):  # ... and the scheduler's alert or close arrives on reading
                    pass
                raise ConnectionResetError("closed")
    return local_port


def test_tls_client_without_a_certificate_is_refused_and_others_keep_computing(
    tls_cluster: tuple[str, Any], certs: dict
) -> None:
    address, scheduler = tls_cluster
    with Client(address, security=_security(certs), set_as_default=False) as client:
        pending = client.submit(inc, 10)  # connected before, served after
        with pytest.raises(HandshakeError, match=r"closed the connection during the handshake.*certificate"):
            Client(address, security=_security(certs, label=None), set_as_default=False)
        port = _tls_attempt(address, _security(certs, label=None))
        scheduler.wait_for(
            rf"refused connection from tls://127\.0\.0\.1:{port}: TLS handshake failed: .*CERTIFICATE"
        )
        assert pending.result() == 11
        assert client.submit(inc, 20).result() == 21


def test_tls_client_with_a_certificate_from_another_ca_is_refused(
    tls_cluster: tuple[str, Any], certs: dict
) -> None:
    address, scheduler = tls_cluster
    port = _tls_attempt(address, _security(certs, label="rogue-client"))
    scheduler.wait_for(rf"refused connection from tls://127\.0\.0\.1:{port}: TLS handshake failed: .*verify")


def test_plain_tcp_to_a_tls_scheduler_is_refused(tls_cluster: tuple[str, Any]) -> None:
    address, scheduler = tls_cluster

    async def attempt() -> tuple[str, HandshakeError]:
        comm = await connect(address.replace("tls://", "tcp://"))
        with pytest.raises(HandshakeError, match=r"did not complete the handshake.*tls://") as info:
            await connect_handshake(comm, "token", "client", timeout=1)
        return comm.local, info.value

    local, _ = run(attempt())
    port = local.rsplit(":", 1)[1]
    scheduler.wait_for(rf"refused connection from tls://127\.0\.0\.1:{port}: TLS handshake failed")


def test_a_tls_address_without_tls_settings_says_what_to_set(tls_cluster: tuple[str, Any]) -> None:
    address, _ = tls_cluster
    with pytest.raises(ValueError, match=r"needs TLS.*tls_ca_file.*distributed\.comm\.tls"):
        Client(address, set_as_default=False)


def test_missing_or_incomplete_tls_files_are_named(tmp_path: Path, certs: dict) -> None:
    with pytest.raises(ConfigError, match=r"tls_ca_file .*no such file '/nonexistent/ca\.pem'"):
        Security(tls_ca_file="/nonexistent/ca.pem", tls_cert=str(certs["client.pem"])).client_context()
    with pytest.raises(ConfigError, match=r"TLS needs tls_cert .*distributed\.comm\.tls\.cert"):
        Security(tls_ca_file=str(certs["taskloom-test-ca.pem"])).server_context()
    assert "secret" not in repr(Security(token="secret"))


# -- tokens: nothing is unpickled, and nothing large is read, before authentication --------------
def _raw_connection(address: str) -> socket.socket:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Read until the peer closes (True) or the deadline passes."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def _frames(*frames: bytes) -> bytes:
    return struct.pack(f"<Q{len(frames)}Q", len(frames), *(len(f) for f in frames)) + b"".join(frames)


def _refusal_logged(caplog: pytest.LogCaptureFixture, sock: socket.socket, reason: str) -> str:
    port = sock.getsockname()[1]
    peer = f"tcp://127.0.0.1:{port}"

    def found() -> str | None:
        for record in caplog.records:
            message = record.getMessage()
            if record.levelno == logging.WARNING and f"refused connection from {peer}:" in message:
                return message
        return None

    message = until(found, what=f"a warning naming {peer}")
    assert reason in message, message
    return message


def test_garbage_is_refused_and_logged_and_the_scheduler_keeps_serving(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=COMM_LOGGER)
    pending = client.submit(inc, 1)
    with _raw_connection(client.scheduler_address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: taskloom\r\n\r\n")
        assert _closed_by_peer(sock)
        _refusal_logged(caplog, sock, "malformed message")
    assert pending.result() == 2
    assert client.submit(inc, 2).result() == 3


def test_a_wrong_token_is_refused_and_logged(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=COMM_LOGGER)

    async def attempt() -> tuple[str, HandshakeError]:
        comm = await connect(client.scheduler_address)
        with pytest.raises(HandshakeError, match="authentication failed: wrong or missing token") as info:
            await connect_handshake(comm, "not-the-token", "client")
        return comm.local, info.value

    local, _ = run(attempt())
    port = local.rsplit(":", 1)[1]
    expected = f"refused connection from tcp://127.0.0.1:{port}: authentication failed"
    until(lambda: any(expected in r.getMessage() for r in caplog.records), what="the refusal in the log")
    assert client.submit(inc, 3).result() == 4


def test_no_token_for_a_scheduler_that_requires_one(client: Client) -> None:
    async def attempt() -> None:
        comm = await connect(client.scheduler_address)
        await connect_handshake(comm, None, "client")

    with pytest.raises(
        HandshakeError, match=r"requires an authentication token.*TASKLOOM_DISTRIBUTED__COMM__AUTH"
    ):
        run(attempt())


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_nothing_is_unpickled_before_authentication(
    client: Client, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING, logger=COMM_LOGGER)
    trap = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(str(trap)), protocol=5)
    # an "auth" reply whose version field is a pickled object (extension type 1), in two frames
    pickled = msgpack.ExtType(1, msgpack.packb(["pickle", 1, 1]))
    header = msgpack.packb({"op": "auth", "mac": b"x" * 32, "nonce": b"n" * 32, "versions": pickled})
    with _raw_connection(client.scheduler_address) as sock:
        sock.sendall(_frames(header, payload))
        assert _closed_by_peer(sock)
        _refusal_logged(caplog, sock, "pickled data; refused before authentication")
    assert not trap.exists()
    assert client.submit(inc, 4).result() == 5


def test_a_large_message_before_authentication_is_refused_unread(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=COMM_LOGGER)
    with _raw_connection(client.scheduler_address) as sock:
        sock.sendall(struct.pack("<QQ", 1, 1 << 30))  # one frame of 1 GiB announced
        assert _closed_by_peer(sock)
        _refusal_logged(caplog, sock, "at most 65536")
    assert client.submit(inc, 5).result() == 6


# -- versions ------------------------------------------------------------------------------------
def test_version_rules() -> None:
    mine = {"python": "3.11.7", "taskloom": "0.1.0", "cloudpickle": "3.1.3", "msgpack": "1.2.4"}
    assert version_mismatch(mine, {**mine, "python": "3.11.2", "msgpack": "1.0.0"}) is None
    assert version_mismatch(mine, {**mine, "python": "3.12.1"}) == (
        "python 3.11.7 here but 3.12.1 there (major.minor versions must match)"
    )
    text = version_mismatch(mine, {**mine, "cloudpickle": "3.0.0", "msgpack": "2.0.1"}, "on the worker")
    assert text is not None
    assert "cloudpickle 3.1.3 here but 3.0.0 on the worker" in text
    assert "msgpack 1.2.4 here but 2.0.1 on the worker (major versions must match)" in text


def test_a_scheduler_with_another_msgpack_major_version_is_refused(cli: Any, tmp_path: Path) -> None:
    """A real scheduler process that reports msgpack 0.9.0: the client refuses, the scheduler logs why."""
    script = tmp_path / "old_scheduler.py"
    script.write_text(
        "import sys\n"
        "import taskloom_distributed.comm.handshake as handshake\n"
        "handshake._versions = {**handshake.local_versions(), 'msgpack': '0.9.0'}\n"
        "from taskloom.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    scheduler = cli("scheduler", "--port", "0", "--auth-token", "tok", program=[sys.executable, str(script)])
    address = scheduler.wait_for(r"scheduler at (tcp://\S+)").group(1)
    mine = local_versions()["msgpack"]
    with pytest.raises(HandshakeError) as info:
        Client(address, auth_token="tok", set_as_default=False)
    assert f"msgpack {mine} here but 0.9.0 on the scheduler at {address} (major versions must match)" in str(
        info.value
    )
    scheduler.wait_for(rf"refused connection from .*msgpack 0\.9\.0 here but {mine} on the connecting client")


def test_get_versions_reports_every_process(client: Client) -> None:
    versions = client.get_versions(check=True)
    assert versions["client"] == local_versions()
    assert versions["scheduler"] == local_versions()
    assert len(versions["workers"]) == 2
    assert all(v == local_versions() for v in versions["workers"].values())
    assert set(versions["client"]) == {"python", "taskloom", "cloudpickle", "msgpack"}
    assert versions["client"]["python"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")


def test_environment_token_reaches_the_security_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLOOM_DISTRIBUTED__COMM__AUTH", "12345")  # read as a number: still a token
    taskloom.config.refresh()
    try:
        assert Security.from_config().token == "12345"
    finally:
        monkeypatch.delenv("TASKLOOM_DISTRIBUTED__COMM__AUTH")
        taskloom.config.refresh()
    assert os.environ.get("TASKLOOM_DISTRIBUTED__COMM__AUTH") is None
