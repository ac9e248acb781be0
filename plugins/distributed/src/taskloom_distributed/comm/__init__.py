"""The wire: TCP/TLS transport, message encoding and the authenticating handshake."""

from .handshake import HandshakeError, accept, connect_handshake, local_versions
from .messages import Serialized, dumps, loads
from .security import Security, new_token
from .tcp import Comm, CommClosedError, CommTimeoutError, TLSServer, connect, listen, parse_address
from .timeouts import connect_timeout, idle_timeout

__all__ = [
    "Comm",
    "CommClosedError",
    "CommTimeoutError",
    "HandshakeError",
    "Security",
    "new_token",
    "Serialized",
    "TLSServer",
    "accept",
    "connect",
    "connect_handshake",
    "connect_timeout",
    "dumps",
    "idle_timeout",
    "listen",
    "loads",
    "local_versions",
    "parse_address",
]
