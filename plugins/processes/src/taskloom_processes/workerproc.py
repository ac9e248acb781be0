"""The worker process: receives batches of tasks, runs them, keeps results until released.

A reader thread drains the connection into a queue (so the scheduler's sends never block on a
worker busy sending), handles ``reset`` at once (tasks of a cancelled compute are skipped) and
ends the process when the scheduler goes away -- a worker never outlives its parent.  The main
thread runs tasks.  A small result is sent back inline; a large one stays here (the scheduler
sends the next task that needs it here too, or fetches it).  Results are flushed every few
milliseconds, so many short tasks share one message and a long task reports at once.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from taskloom.plugins import hookimpl

from .protocol import Payload, decode, pack_error, recv_raw, send

INLINE_BYTES = 64 * 1024  # results up to this size travel back with the completion message
_PLAIN = frozenset({int, float, bool, complex, type(None)})
FLUSH_SECONDS = 0.002


def _size_hint(value: Any) -> int | None:
    """A size known without serializing (arrays, frames, bytes), else None."""
    n = getattr(value, "nbytes", None)
    if isinstance(n, int):
        return n
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return None


def main(conn: Connection, name: str) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the scheduler handles Ctrl-C and stops us
    from taskloom import config
    from taskloom.errors import WorkerPluginError
    from taskloom.graph import from_wire
    from taskloom.serialize import SerializationError, describe
    from taskloom.worker import Worker, WorkerRuntime

    config.set(scheduler="sync")  # a compute inside a task runs inline: one process, one core
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    cancelled = [0]  # highest cancelled compute id

    def reader() -> None:
        try:
            while True:
                msg = recv_raw(conn)
                if msg[0] == "reset":
                    cancelled[0] = max(cancelled[0], msg[1])
                inbox.put(msg)
        except BaseException:  # EOF: the scheduler has gone; anything else: a broken pipe
            pass
        os._exit(0)  # do not linger

    threading.Thread(target=reader, name="taskloom-worker-reader", daemon=True).start()
    runtime = WorkerRuntime(Worker(name, "process"))
    runtime.bind()
    store: dict[Any, Any] = {}
    funcs: dict[int, Any] = {}  # functions of the current compute, sent once each
    plugin_error: Any = None
    send(conn, "ready", 0, os.getpid())
    while True:
        kind, cid, header, buffers = inbox.get()
        if kind == "reset":
            store.clear()
            funcs.clear()
            continue
        if kind == "run" and cid <= cancelled[0]:
            continue
        try:
            body = decode(header, buffers)
        except BaseException as exc:  # e.g. a function whose module this process cannot import
            send(conn, "undecodable", cid, pack_error(exc))
            continue
        if kind == "run":
            if plugin_error is not None:
                send(conn, "plugin-error", cid, plugin_error)
                continue
            new_funcs, wire_tasks, inputs = body
            try:  # e.g. a function from a module this process cannot import
                for token, blob in new_funcs:
                    funcs[token] = pickle.loads(blob)
                for key, value in inputs:
                    store[key] = value.load() if type(value) is Payload else value
                tasks = [(key, from_wire(funcs[tok], *parts)) for key, tok, *parts in wire_tasks]
            except BaseException as exc:
                send(conn, "undecodable", cid, pack_error(exc))
                continue
            _run_batch(conn, cid, tasks, store, runtime, cancelled, describe, SerializationError)
        elif kind == "fetch":
            out: list[tuple[Any, Payload | None, str | None]] = []
            for key in body:
                try:
                    out.append((key, Payload.of(store[key]), None))
                except SerializationError as exc:
                    out.append((key, None, f"{describe(store[key])}: {exc.__cause__ or exc}"))
            send(conn, "data", cid, out)
        elif kind == "release":
            for key in body:
                store.pop(key, None)
        elif kind == "plugins":
            version, plugins, serializers = body
            _use_serializers(serializers)
            try:
                runtime.sync(version, plugins)
                plugin_error = None
            except WorkerPluginError as exc:
                plugin_error = pack_error(exc)
        elif kind == "close":
            runtime.close()
            send(conn, "closed", 0, os.getpid())
            return


class _ParentSerializers:
    """The scheduler's plugin serializers (including ones registered at run time), here too."""

    def __init__(self, serializers: list[Any]) -> None:
        self.serializers = serializers

    @hookimpl
    def taskloom_serializers(self) -> list[Any]:
        return self.serializers


def _use_serializers(serializers: list[Any]) -> None:
    from taskloom import plugins, serialize

    name = "taskloom-processes:parent-serializers"
    if plugins.get_plugin_manager().has_plugin(name):
        plugins.unregister(name=name)
    if serializers:
        plugins.register(_ParentSerializers(serializers), name=name)
    serialize.reset()


def _run_batch(
    conn: Connection, cid: int, tasks: list[Any], store: dict[Any, Any], runtime: Any,
    cancelled: list[int], describe: Any, serialization_error: type[Exception],
) -> None:  # fmt: skip
    transitions = runtime.observes_transitions
    results: list[Any] = []
    clock = time.time
    last_flush = clock()
    for key, task in tasks:
        if cancelled[0] >= cid:
            return
        if transitions:
            runtime.transition(key, "ready", "executing")
        t0 = clock()
        try:
            value = task(store)
        except BaseException as exc:
            t1 = clock()
            if transitions:
                runtime.transition(key, "executing", "error")
            results.append((key, "error", pack_error(exc), t0, t1))
            break
        t1 = clock()
        store[key] = value
        if transitions:
            runtime.transition(key, "executing", "memory")
        t = type(value)
        hint = None if t in _PLAIN or t is str else _size_hint(value)
        if t in _PLAIN or (t is str and len(value) < INLINE_BYTES):
            results.append((key, "value", value, t0, t1))  # travels in the message itself
        elif hint is not None and hint > INLINE_BYTES:
            results.append((key, "held", hint, t0, t1))
        else:
            try:
                payload = Payload.of(value)
            except serialization_error as exc:
                results.append((key, "unpicklable", f"{describe(value)}: {exc.__cause__ or exc}", t0, t1))
                break
            if payload.nbytes > INLINE_BYTES:
                results.append((key, "held", payload.nbytes, t0, t1))
            else:
                results.append((key, "inline", payload, t0, t1))
        if t1 - last_flush > FLUSH_SECONDS:
            send(conn, "done", cid, results)
            results = []
            last_flush = t1
    if results:
        send(conn, "done", cid, results)
