"""Worker-to-worker transfers: large arrays arrive intact without extra copies; frozen peers time out."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import ssl
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import taskloom
from taskloom.testing import live_processes, wait_gone, wait_until
from taskloom_distributed import Client
from taskloom_distributed.comm import CommClosedError, CommTimeoutError, connect, idle_timeout, listen
from taskloom_distributed.comm.timeouts import connect_timeout

pytestmark = pytest.mark.timeout(120)

MB = 1_000_000
LOCAL = "127.0.0.1"


# -- tasks and functions run on workers ------------------------------------------------------------
def digest(x: Any, pad: Any) -> dict[str, Any]:
    """What the task sees of ``x``: its checksum, and whether it is a view of a received buffer."""
    return {
        "sha256": hashlib.sha256(x).hexdigest(),
        "owns_data": bool(x.flags.owndata),
        "writeable": bool(x.flags.writeable),
        "worker": taskloom.get_worker().address,  # type: ignore[attr-defined]
    }


def start_tracing() -> None:
    tracemalloc.start()
    tracemalloc.reset_peak()


def traced_peak() -> int:
    """Peak bytes allocated (NumPy buffers included) since :func:`start_tracing`, then stop."""
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def transfers() -> list[dict[str, Any]]:
    return list(taskloom.get_worker().transfer_log)  # type: ignore[attr-defined]


def first(x: Any, pad: Any) -> int:
    return int(x[0])


# -- a large array between two workers (the ``client`` fixture: a 2-worker LocalCluster) ----------
def test_a_large_array_crosses_between_workers_intact_and_without_copies(client: Client) -> None:
    a, b = sorted(client.scheduler_info()["workers"])
    value = np.random.default_rng(7).integers(0, 2**62, 50 * MB // 8, dtype=np.int64)
    x = client.scatter(value, workers=[a])
    # a larger input already on b: moving x is cheaper, so the task runs on b and fetches x from a
    pad = client.scatter(np.zeros(60 * MB, dtype=np.uint8), workers=[b])
    client.run(start_tracing)
    try:
        seen = client.submit(digest, x, pad).result(timeout=60)
    finally:
        peaks = client.run(traced_peak)
    assert seen["worker"] == b and sorted(client.who_has(x)[x.key]) == [a, b]
    assert seen["sha256"] == hashlib.sha256(value).hexdigest()
    # rebuilt as a view of the buffer the socket wrote into: no copy after the wire
    assert not seen["owns_data"] and seen["writeable"]
    # the receiver allocated the array once (a copy would double the peak); the sender allocated
    # nothing of its size (its frames are views of the array, written as they are)
    assert value.nbytes <= peaks[b] < 1.3 * value.nbytes, peaks
    assert peaks[a] < 0.3 * value.nbytes, peaks
    [record] = [t for t in client.run(transfers)[b] if x.key in t["keys"]]
    assert record["peer"] == a and record["seconds"] > 0 and record["error"] is None


# -- comm timeouts, in process -------------------------------------------------------------------
def test_timeouts_come_from_config_and_a_bad_value_names_the_key() -> None:
    assert (connect_timeout(), idle_timeout()) == (10.0, 30.0)
    with taskloom.config.set(
        {"distributed.comm.timeouts.idle": 0, "distributed.comm.timeouts.connect": "2.5"}
    ):
        assert (connect_timeout(), idle_timeout()) == (2.5, None)
    with taskloom.config.set({"distributed.comm.timeouts.idle": "soon"}):
        with pytest.raises(ValueError, match=r"distributed\.comm\.timeouts\.idle .*'soon'"):
            idle_timeout()
    with taskloom.config.set({"distributed.comm.timeouts.connect": 0}):
        with pytest.raises(ValueError, match=r"distributed\.comm\.timeouts\.connect"):
            connect_timeout()


async def _pair(handler: Any) -> tuple[Any, Any]:
    server = await listen("127.0.0.1", 0, handler)
    comm = await connect(f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}", local=False)
    comm.set_authenticated()
    return server, comm


def test_a_silent_peer_times_out_and_the_connection_is_aborted() -> None:
    async def main() -> None:
        silent = asyncio.Event()

        async def handler(comm: Any) -> None:
            comm.set_authenticated()
            await comm.read_frames()  # the request arrives; no reply ever goes back
            silent.set()
            await comm.read_frames()  # until the other side gives up

        server, comm = await _pair(handler)
        await comm.write_frames([b"request"])
        start = time.monotonic()
        with pytest.raises(CommTimeoutError, match=r"no data from tcp://127\.0\.0\.1:\d+ for 0\.3 s"):
            await comm.read_frames(idle_timeout=0.3)
        assert 0.3 <= time.monotonic() - start < 10
        assert silent.is_set() and comm.closed
        with pytest.raises(CommClosedError):
            await comm.write_frames([b"again"])
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_a_peer_that_reads_nothing_times_out_a_large_write() -> None:
    async def main() -> None:
        async def handler(comm: Any) -> None:
            comm.transport.pause_reading()  # a frozen peer: the bytes pile up in the kernel
            await asyncio.Event().wait()  # until the server is closed

        server, comm = await _pair(handler)
        payload = np.zeros(200 * MB, dtype=np.uint8)  # more than the socket buffers hold
        with pytest.raises(CommTimeoutError, match=r"read nothing for 0\.3 s"):
            await comm.write_frames([b"header", payload], idle_timeout=0.3)
        assert comm.closed
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_a_slow_peer_that_keeps_sending_is_not_cut_short() -> None:
    """The idle timeout bounds silence, not the transfer: a frame arriving in pieces, each within
    the timeout but all together well past it, is received whole."""
    pieces, piece = 6, b"x" * 100_000

    async def main() -> None:
        async def handler(comm: Any) -> None:
            comm.set_authenticated()
            await comm.read_frames()
            size = pieces * len(piece)
            comm.transport.write(struct.pack("<QQ", 1, size))  # one frame of `size` bytes, in pieces
            for _ in range(pieces):
                comm.transport.write(piece)
                await asyncio.sleep(0.1)  # the slow peer under test, not synchronisation

        server, comm = await _pair(handler)
        await comm.write_frames([b"request"])
        start = time.monotonic()
        [frame] = await comm.read_frames(idle_timeout=0.3)
        assert time.monotonic() - start > 0.3  # longer than the idle timeout, yet not cut short
        assert bytes(frame) == piece * pieces
        comm.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def _self_signed(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts for 127.0.0.1 with a certificate made here."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "taskloom-transfer-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


def test_large_frames_cross_tls_intact(tmp_path: Path) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path)
    payload = np.random.default_rng(3).integers(0, 256, 20 * MB, dtype=np.uint8)

    async def main() -> None:
        async def handler(comm: Any) -> None:
            comm.set_authenticated()
            frames = await comm.read_frames()
            await comm.write_frames([b"reply", *frames[1:], payload])

        server = await listen("127.0.0.1", 0, handler, server_ctx)
        comm = await connect(f"tls://127.0.0.1:{server.sockets[0].getsockname()[1]}", client_ctx)
        comm.set_authenticated()
        await comm.write_frames([b"request", payload[: 3 * MB], b"small"])
        header, big, small, whole = await comm.read_frames(idle_timeout=30)
        assert bytes(header) == b"reply" and bytes(small) == b"small"
        assert bytes(big) == payload[: 3 * MB].tobytes() and bytes(whole) == payload.tobytes()
        comm.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


# -- a frozen peer in a real cluster ---------------------------------------------------------------
@pytest.mark.parametrize("connected", [True, False], ids=["open-connection", "new-connection"])
def test_a_frozen_peer_does_not_stall_a_fetch(connected: bool) -> None:
    """Worker ``a`` is stopped (SIGSTOP) while it holds ``x``; ``b`` runs a task that needs ``x``.

    ``b`` gives up on ``a`` after the idle timeout (its connection to ``a`` is open, ``a`` just
    never answers) or the connect timeout (``a``'s kernel accepts the connection, ``a`` never
    speaks), tells the scheduler ``a`` failed to deliver ``x``, and the scheduler sends the task
    again with the other holder, ``c``: the result arrives while ``a`` is still frozen and still
    a member of the cluster (its heartbeat deadline is far away).
    """
    settings = {
        "distributed.comm.timeouts.idle": 3,
        "distributed.comm.timeouts.connect": 3,
        "distributed.scheduler.worker_ttl": 600,
    }
    with taskloom.config.set(settings), Client(n_workers=3, threads_per_worker=1) as client:
        procs = live_processes(client.cluster.worker_pids)
        a, b, c = sorted(client.scheduler_info()["workers"])
        pids = client.run(os.getpid)
        value = np.arange(100_000)
        pad = client.scatter(np.zeros(4 * MB, dtype=np.uint8), workers=[b])  # keeps the tasks on b
        if connected:  # b fetches something from a first, so its connection to a is open
            warm = client.scatter(np.ones(1000), workers=[a])
            assert client.submit(first, warm, pad).result(timeout=60) == 1
            assert b in client.who_has(warm)[warm.key]
        x = client.scatter({"x": value}, workers=[a])["x"]
        os.kill(pids[a], signal.SIGSTOP)
        try:
            start = time.monotonic()
            future = client.submit(first, x, pad, pure=False)
            wait_until(lambda: client.scheduler_info()["workers"][b]["tasks"], 30, "the task is sent to b")
            client.scatter({"x": value}, workers=[c])  # now a second holder, which b was not told of
            assert future.result(timeout=60) == 0
            elapsed = time.monotonic() - start
            info = client.scheduler_info()["workers"]
            holders = set(client.who_has(x)["x"])
        finally:
            os.kill(pids[a], signal.SIGCONT)
        [failed] = [t for t in client.run(transfers)[b] if t["error"]]
        setting = "idle" if connected else "connect"
        assert failed["peer"] == a and failed["keys"] == ["x"]
        assert f"distributed.comm.timeouts.{setting}" in failed["error"], failed["error"]
        assert elapsed >= 3  # it waited for a for the timeout (and no longer than the test's limit)
        assert a in info  # not removed by the scheduler: b's timeout, not a heartbeat, got it done
        assert a not in holders and {b, c} <= holders  # the scheduler dropped a's copy as undelivered
    assert not wait_gone(procs, 30)
