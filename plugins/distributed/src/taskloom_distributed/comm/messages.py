"""Message encoding: msgpack for structure, pickle protocol 5 frames for Python objects.

A message becomes a list of frames: a msgpack header, then the frames of every non-msgpack value
in it (its serializer's header and out-of-band buffers, so arrays travel uncopied).  Messages are
protocol structures: their sequences come back as tuples (so tuple task keys stay hashable), and
user values inside them must be wrapped in :class:`Serialized`, which is forwarded as the frames
it already is: the scheduler relays task specifications and results without ever unpickling
them.  ``loads(..., unpickle=False)`` -- used before a peer has authenticated, and always by the
scheduler -- refuses to unpickle anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import msgpack
from taskloom import gcpause
from taskloom.serialize import Frames, deserialize, frames_nbytes, serialize

_SERIALIZED = 1
_TUPLE = 2
LARGE = 64 * 1024  # a message header this long (a graph, say) is unpacked with the collector paused


class Serialized:
    """A value already turned into frames; it crosses the wire as is."""

    __slots__ = ("frames", "name")

    def __init__(self, name: str, frames: Frames) -> None:
        self.name = name
        self.frames = frames

    @classmethod
    def of(cls, value: Any) -> Serialized:
        return cls(*serialize(value))

    def load(self) -> Any:
        return deserialize(self.name, self.frames)

    @property
    def nbytes(self) -> int:
        return frames_nbytes(self.frames)

    def __repr__(self) -> str:
        return f"<Serialized {self.name} {self.nbytes} bytes>"


class UnpicklingRefused(ValueError):
    """A message carried a pickled value where only plain data is accepted."""


def dumps(msg: Any) -> list[Any]:
    """``msg`` as frames: msgpack header first."""
    frames: list[Any] = [b""]

    def default(obj: Any) -> Any:
        ser = obj if type(obj) is Serialized else Serialized.of(obj)
        start = len(frames)
        frames.extend(ser.frames)
        return msgpack.ExtType(_SERIALIZED, msgpack.packb([ser.name, start, len(ser.frames)]))

    frames[0] = msgpack.packb(msg, default=default)
    return frames


def loads(frames: Sequence[Any], unpickle: bool = True) -> Any:
    """The message ``dumps`` made; with ``unpickle=False`` pickled values stay :class:`Serialized`."""

    def ext_hook(code: int, data: bytes) -> Any:
        if code == _TUPLE:
            return tuple(msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False))
        if code == _SERIALIZED:
            name, start, n = msgpack.unpackb(data)
            ser = Serialized(name, list(frames[start : start + n]))
            return ser.load() if unpickle else ser
        raise ValueError(f"unknown message extension type {code}")

    # a large one: thousands of containers, none garbage -- collections would only rescan them
    with gcpause.paused() if len(frames[0]) >= LARGE else contextlib.nullcontext():
        return msgpack.unpackb(frames[0], ext_hook=ext_hook, raw=False, strict_map_key=False, use_list=False)


def loads_plain(frames: Sequence[Any]) -> Any:
    """A message that must hold plain data only (the handshake): any pickled value is refused."""
    if len(frames) != 1:
        raise UnpicklingRefused("a handshake message carried pickled data; refused before authentication")

    def ext_hook(code: int, data: bytes) -> Any:
        if code == _TUPLE:
            return tuple(msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False))
        raise UnpicklingRefused("a handshake message carried pickled data; refused before authentication")

    return msgpack.unpackb(frames[0], ext_hook=ext_hook, raw=False, strict_map_key=False, use_list=False)
