"""The wire: TCP/TLS transport, message encoding and the authenticating handshake."""

from .handshake import HandshakeError, accept, connect_handshake, local_versions
from .messages import Serialized, dumps, loads
from .security import Security
from .tcp import Comm, CommClosedError, connect, listen, parse_address

__all__ = [
    "Comm",
    "CommClosedError",
    "HandshakeError",
    "Security",
    "Serialized",
    "accept",
    "connect",
    "connect_handshake",
    "dumps",
    "listen",
    "loads",
    "local_versions",
    "parse_address",
]
