"""Connection handshake: versions, then mutual authentication -- before anything is unpickled.

The listening side speaks first with a random nonce and its versions; the connecting side
answers with ``HMAC(token, nonce)``, its own nonce and versions; the listener checks the MAC
and answers with ``HMAC(token, their nonce)`` so both sides prove they hold the token.  Only
then does either side accept pickled data (or large messages) on the connection.  With TLS
(:mod:`.security`) the certificates authenticate as well; with neither a token nor TLS anyone
may connect, which only ``taskloom scheduler --no-auth`` asks for.

A version mismatch that matters (Python major.minor: code objects and pickles; cloudpickle
major.minor and msgpack major: wire formats; taskloom major.minor: protocol) is refused with a
message that names the package and both versions.  A refused connection is logged by the
listening side with the peer's address, and closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import sys
from importlib.metadata import version
from typing import Any

from .messages import dumps, loads_plain
from .tcp import Comm, CommClosedError, ProtocolError

logger = logging.getLogger("taskloom.distributed.comm")

HANDSHAKE_TIMEOUT = 10.0

# package -> how many leading version parts must agree
VERSION_RULES = {"python": 2, "taskloom": 2, "cloudpickle": 2, "msgpack": 1}


class HandshakeError(ConnectionError):
    """The peer failed authentication or runs incompatible versions."""


_versions: dict[str, str] | None = None


def local_versions() -> dict[str, str]:
    """The versions that must agree across a cluster (Python, taskloom, cloudpickle, msgpack)."""
    global _versions
    if _versions is None:
        import msgpack
        import taskloom

        cloudpickle = sys.modules.get("cloudpickle")  # not imported by a scheduler otherwise
        _versions = {
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
            "taskloom": taskloom.__version__,
            "cloudpickle": cloudpickle.__version__ if cloudpickle is not None else version("cloudpickle"),
            "msgpack": ".".join(str(part) for part in msgpack.version),
        }
    return dict(_versions)


def _leading(v: str, parts: int) -> str:
    return ".".join(str(v).split(".")[:parts])


def version_mismatch(mine: dict[str, str], theirs: dict[str, str], there: str = "there") -> str | None:
    """A sentence naming each package whose versions differ in a way that matters, or None."""
    problems = []
    for name, parts in VERSION_RULES.items():
        a, b = str(mine.get(name, "?")), str(theirs.get(name, "?"))
        if _leading(a, parts) != _leading(b, parts):
            rule = "major" if parts == 1 else "major.minor"
            problems.append(f"{name} {a} here but {b} {there} ({rule} versions must match)")
    return "; ".join(problems) or None


def _mac(token: str, nonce: bytes, role: bytes) -> bytes:
    return hmac.new(token.encode(), nonce + role, hashlib.sha256).digest()


async def _send(comm: Comm, msg: dict[str, Any]) -> None:
    await comm.write_frames(dumps(msg))


async def _recv(comm: Comm) -> dict[str, Any]:
    frames = await comm.read_frames()
    try:
        msg = loads_plain(frames)
    except Exception as exc:
        raise HandshakeError(f"it does not speak the taskloom protocol ({exc})") from None
    if not isinstance(msg, dict):
        raise HandshakeError("it does not speak the taskloom protocol (a handshake message is not a map)")
    return msg


def _bytes(msg: dict[str, Any], field: str) -> bytes:
    value = msg.get(field, b"")
    if not isinstance(value, bytes):
        raise HandshakeError(f"malformed handshake message (field {field!r})")
    return value


async def accept(
    comm: Comm, token: str | None, role: str, timeout: float = HANDSHAKE_TIMEOUT
) -> dict[str, Any]:
    """Listening side; returns the peer's hello.

    On any failure -- wrong token, incompatible versions, garbage, silence for ``timeout`` s --
    logs a warning naming the peer's address, closes the connection and raises HandshakeError.
    """
    try:
        return await asyncio.wait_for(_accept(comm, token, role), timeout)
    except Exception as exc:
        if isinstance(exc, HandshakeError):
            reason = str(exc)
        elif isinstance(exc, TimeoutError):
            reason = f"no handshake within {timeout:g} s"
        elif isinstance(exc, ProtocolError):
            reason = f"it does not speak the taskloom protocol ({exc})"
        elif isinstance(exc, CommClosedError):
            reason = f"the connection closed during the handshake ({exc})"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        logger.warning("refused connection from %s: %s", comm.peer, reason)
        comm.abort()
        raise HandshakeError(reason) from None


async def _accept(comm: Comm, token: str | None, role: str) -> dict[str, Any]:
    nonce = os.urandom(32)
    mine = local_versions()
    await _send(comm, {"op": "hello", "nonce": nonce, "versions": mine, "role": role, "auth": bool(token)})
    reply = await _recv(comm)
    try:
        if reply.get("op") == "refused":
            raise HandshakeError(f"the peer refused: {reply.get('reason')}")
        if reply.get("op") != "auth":
            raise HandshakeError(f"expected an auth message, got {reply.get('op')!r}")
        theirs = reply.get("versions")
        mismatch = version_mismatch(mine, theirs if isinstance(theirs, dict) else {}, "on the peer")
        if mismatch:
            raise HandshakeError(f"incompatible versions: {mismatch}")
        if token and not hmac.compare_digest(_bytes(reply, "mac"), _mac(token, nonce, b"client")):
            raise HandshakeError("authentication failed: wrong or missing token")
        their_nonce = _bytes(reply, "nonce")
    except HandshakeError as exc:
        try:
            await _send(comm, {"op": "refused", "reason": str(exc)})
        except Exception:
            pass
        raise
    await _send(comm, {"op": "welcome", "mac": _mac(token, their_nonce, b"server") if token else b""})
    comm.set_authenticated()
    comm.unpickle = True
    comm.peer_info = reply
    return reply


async def connect_handshake(
    comm: Comm, token: str | None, role: str, name: str = "", timeout: float = HANDSHAKE_TIMEOUT
) -> dict[str, Any]:
    """Connecting side; returns the listener's hello.  Raises HandshakeError (and closes) on failure."""
    try:
        return await asyncio.wait_for(_connect_handshake(comm, token, role, name), timeout)
    except HandshakeError:
        comm.abort()
        raise
    except TimeoutError:
        comm.abort()
        hint = (
            ""
            if comm.peer.startswith("tls://")
            else " (if it uses TLS, connect to tls://... with certificates)"
        )
        raise HandshakeError(
            f"{comm.peer} did not complete the handshake within {timeout:g} s{hint}"
        ) from None
    except CommClosedError as exc:
        comm.abort()
        hint = (
            " -- it requires a client certificate signed by its CA: check tls_cert, tls_key and tls_ca_file"
            if comm.peer.startswith("tls://")
            else ""
        )
        raise HandshakeError(
            f"{comm.peer} closed the connection during the handshake ({exc}){hint}"
        ) from None


async def _connect_handshake(comm: Comm, token: str | None, role: str, name: str) -> dict[str, Any]:
    hello = await _recv(comm)
    if hello.get("op") != "hello":
        raise HandshakeError(f"expected hello from {comm.peer}, got {hello.get('op')!r}")
    mine = local_versions()
    theirs = hello.get("versions")
    theirs = theirs if isinstance(theirs, dict) else {}
    mismatch = version_mismatch(mine, theirs, f"on the {hello.get('role', 'peer')} at {comm.peer}")
    if mismatch:
        try:  # tell the listener why, so that its log says so too
            reason = f"incompatible versions: {version_mismatch(theirs, mine, f'on the connecting {role}')}"
            await _send(comm, {"op": "refused", "reason": reason})
        except Exception:
            pass
        raise HandshakeError(f"incompatible versions: {mismatch}")
    if hello.get("auth") and not token:
        raise HandshakeError(
            f"{comm.peer} requires an authentication token: pass auth_token= or set "
            "TASKLOOM_DISTRIBUTED__COMM__AUTH (distributed.comm.auth)"
        )
    nonce = os.urandom(32)
    mac = _mac(token, _bytes(hello, "nonce"), b"client") if token else b""
    await _send(
        comm, {"op": "auth", "mac": mac, "nonce": nonce, "versions": mine, "role": role, "name": name}
    )
    reply = await _recv(comm)
    if reply.get("op") == "refused":
        raise HandshakeError(f"{comm.peer} refused the connection: {reply.get('reason')}")
    if token and not hmac.compare_digest(_bytes(reply, "mac"), _mac(token, nonce, b"server")):
        raise HandshakeError(f"{comm.peer} failed to prove it holds the token")
    comm.set_authenticated()
    comm.unpickle = True
    comm.peer_info = hello
    return hello
