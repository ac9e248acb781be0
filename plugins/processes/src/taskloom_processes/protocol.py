"""Messages between the scheduler and its worker processes: framing, payloads, remote errors.

A message is any picklable tuple.  It travels over a ``multiprocessing`` connection as a header
frame -- the tuple pickled with protocol 5 (cloudpickle where plain pickle cannot: lambdas,
closures, functions from ``__main__``) plus the lengths of its out-of-band buffers -- followed
by each buffer as a frame of its own, so a large array is written once from its own memory and
read into one writable buffer on the other side.

A :class:`Payload` is a value already turned into frames by the serializer registry; the
scheduler forwards payloads between workers without deserializing them.
"""

from __future__ import annotations

import pickle
import traceback
from multiprocessing.connection import Connection
from typing import Any

from taskloom.serialize import Frames, deserialize, frames_nbytes, serialize

OUT_OF_BAND_BYTES = 64 * 1024


class Payload:
    """A serialized value: the serializer's name and its frames."""

    __slots__ = ("frames", "name", "nbytes")

    def __init__(self, name: str, frames: Frames) -> None:
        self.name = name
        self.frames = frames
        self.nbytes = frames_nbytes(frames)

    @classmethod
    def of(cls, value: Any) -> Payload:
        return cls(*serialize(value))

    def load(self) -> Any:
        return deserialize(self.name, self.frames)

    def __reduce__(self) -> tuple[Any, ...]:
        # large frames travel out of band (written from their own memory); small ones in band
        frames = [
            pickle.PickleBuffer(f) if memoryview(f).nbytes > OUT_OF_BAND_BYTES else f for f in self.frames
        ]
        return (Payload, (self.name, frames))


def _dumps(body: Any, by_value: bool) -> tuple[bytes, list[pickle.PickleBuffer]]:
    buffers: list[pickle.PickleBuffer] = []
    if not by_value:
        try:
            return pickle.dumps(body, protocol=5, buffer_callback=buffers.append), buffers
        except Exception:
            buffers = []
    import cloudpickle

    return cloudpickle.dumps(body, protocol=5, buffer_callback=buffers.append), buffers


def send(conn: Connection, kind: str, cid: int = 0, body: Any = None, by_value: bool = False) -> None:
    """Send a message: ``kind`` and ``cid`` readable without decoding ``body``.

    ``by_value``: pickle with cloudpickle, so functions defined in ``__main__``, lambdas and
    closures travel by value (task batches); otherwise plain pickle, falling back to cloudpickle.
    Raises the pickling error if ``body`` cannot be pickled at all.
    """
    header, buffers = _dumps(body, by_value)
    raws = [b.raw() for b in buffers]
    conn.send_bytes(pickle.dumps((kind, cid, header, [r.nbytes for r in raws]), protocol=5))
    for raw in raws:
        conn.send_bytes(raw)


def recv_raw(conn: Connection) -> tuple[str, int, bytes, list[bytearray]]:
    """Receive one message undecoded: ``(kind, cid, header, buffers)``; EOFError when closed."""
    kind, cid, header, sizes = pickle.loads(conn.recv_bytes())
    buffers = []
    for n in sizes:
        buf = bytearray(n)
        if n:
            conn.recv_bytes_into(buf)
        else:
            conn.recv_bytes()
        buffers.append(buf)
    return kind, cid, header, buffers


def decode(header: bytes, buffers: list[bytearray]) -> Any:
    """The body of a message received with :func:`recv_raw`."""
    return pickle.loads(header, buffers=buffers)


def recv(conn: Connection) -> tuple[str, int, Any]:
    """Receive and decode one message: ``(kind, cid, body)``."""
    kind, cid, header, buffers = recv_raw(conn)
    return kind, cid, decode(header, buffers)


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\n" + self.text


def pack_error(exc: BaseException) -> tuple[Any, str, str, str]:
    """An exception as ``(pickled exception or None, type name, message, traceback text)``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob: Any = Payload.of(exc)
    except Exception:
        blob = None
    return blob, f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), text


def unpack_error(packed: tuple[Any, str, str, str], key: Any, worker: str) -> BaseException:
    """The exception ``pack_error`` packed, with the remote traceback as its cause and a note."""
    blob, type_name, message, text = packed
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = blob.load()
        except Exception:
            exc = None
    if exc is None:
        from taskloom.errors import TaskloomError

        exc = TaskloomError(
            f"task {key!r} raised {type_name}: {message} (the exception could not be pickled)"
        )
    exc.__cause__ = RemoteTraceback(text)
    exc.add_note(f"taskloom: raised by task {key!r} in worker process {worker} (scheduler 'processes')")
    return exc
