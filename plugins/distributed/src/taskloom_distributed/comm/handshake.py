"""Connection handshake: versions, then mutual authentication -- before anything is unpickled.

The listening side speaks first with a random nonce and its versions; the connecting side
answers with ``HMAC(token, nonce)``, its own nonce and versions; the listener checks the MAC
and answers with ``HMAC(token, their nonce)`` so both sides prove they hold the token.  Only
then does either side accept pickled data on the connection.  With TLS and no token the
certificates authenticate; with neither, ``auth="none"`` must be configured explicitly.

A version mismatch that matters (Python minor version: code objects; cloudpickle and msgpack
major versions: wire formats; taskloom major.minor: protocol) is refused with a message that
says which versions differ.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sys
from importlib.metadata import version
from typing import Any

from .messages import dumps, loads_plain
from .tcp import Comm

logger = logging.getLogger("taskloom.distributed.comm")


class HandshakeError(ConnectionError):
    """The peer failed authentication or runs incompatible versions."""


def local_versions() -> dict[str, str]:
    """The versions that must agree across a cluster."""
    return {
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "taskloom": version("taskloom"),
        "cloudpickle": version("cloudpickle"),
        "msgpack": version("msgpack"),
    }


def _major(v: str, parts: int) -> str:
    return ".".join(v.split(".")[:parts])


def version_mismatch(mine: dict[str, str], theirs: dict[str, str]) -> str | None:
    """A sentence naming the versions that differ in a way that matters, or None."""
    problems = []
    for name, parts in (("python", 2), ("taskloom", 2), ("cloudpickle", 1), ("msgpack", 1)):
        a, b = mine.get(name, "?"), theirs.get(name, "?")
        if _major(a, parts) != _major(b, parts):
            problems.append(f"{name} {a} here, {b} there")
    return "; ".join(problems) or None


def _mac(token: str, nonce: bytes, role: bytes) -> bytes:
    return hmac.new(token.encode(), nonce + role, hashlib.sha256).digest()


async def _send(comm: Comm, msg: dict[str, Any]) -> None:
    await comm.write_frames(dumps(msg))


async def _recv(comm: Comm) -> dict[str, Any]:
    msg = loads_plain(await comm.read_frames())
    if not isinstance(msg, dict):
        raise HandshakeError("malformed handshake message")
    return msg


async def accept(comm: Comm, token: str | None, role: str) -> dict[str, Any]:
    """Listening side; returns the peer's hello.  Raises HandshakeError (and closes) on failure."""
    nonce = os.urandom(32)
    mine = local_versions()
    await _send(comm, {"op": "hello", "nonce": nonce, "versions": mine, "role": role, "auth": bool(token)})
    reply = await _recv(comm)
    try:
        if reply.get("op") != "auth":
            raise HandshakeError(f"expected an auth message, got {reply.get('op')!r}")
        mismatch = version_mismatch(mine, reply.get("versions", {}))
        if mismatch:
            raise HandshakeError(f"incompatible versions: {mismatch}")
        if token and not hmac.compare_digest(reply.get("mac", b""), _mac(token, nonce, b"client")):
            raise HandshakeError("authentication failed: wrong or missing token")
    except HandshakeError as exc:
        logger.warning("refused connection from %s: %s", comm.peer, exc)
        try:
            await _send(comm, {"op": "refused", "reason": str(exc)})
        finally:
            comm.close()
        raise
    theirs = reply.get("nonce", b"")
    await _send(comm, {"op": "welcome", "mac": _mac(token, theirs, b"server") if token else b""})
    comm.unpickle = True
    comm.peer_info = reply
    return reply


async def connect_handshake(comm: Comm, token: str | None, role: str, name: str = "") -> dict[str, Any]:
    """Connecting side; returns the listener's hello.  Raises HandshakeError on failure."""
    hello = await _recv(comm)
    if hello.get("op") != "hello":
        raise HandshakeError(f"expected hello from {comm.peer}, got {hello.get('op')!r}")
    mine = local_versions()
    mismatch = version_mismatch(mine, hello.get("versions", {}))
    if mismatch:
        comm.close()
        raise HandshakeError(f"{comm.peer} runs incompatible versions: {mismatch}")
    if hello.get("auth") and not token:
        comm.close()
        raise HandshakeError(
            f"{comm.peer} requires an authentication token: pass auth_token= or set "
            "TASKLOOM_DISTRIBUTED__COMM__AUTH"
        )
    nonce = os.urandom(32)
    mac = _mac(token, hello["nonce"], b"client") if token else b""
    await _send(
        comm, {"op": "auth", "mac": mac, "nonce": nonce, "versions": mine, "role": role, "name": name}
    )
    reply = await _recv(comm)
    if reply.get("op") == "refused":
        comm.close()
        raise HandshakeError(f"{comm.peer} refused the connection: {reply.get('reason')}")
    if token and not hmac.compare_digest(reply.get("mac", b""), _mac(token, nonce, b"server")):
        comm.close()
        raise HandshakeError(f"{comm.peer} failed to prove it holds the token")
    comm.unpickle = True
    comm.peer_info = hello
    return hello
