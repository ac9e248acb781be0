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

from taskloom.graph import from_wire
from taskloom.plugins import hookimpl
from taskloom.serialize import SerializationError, describe

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
            new_funcs, tasks, inputs, releases, timed = body
            for key in releases:
                store.pop(key, None)
            try:  # e.g. a function from a module this process cannot import
                for token, blob in new_funcs:
                    funcs[token] = pickle.loads(blob)
                for key, value in inputs:
                    store[key] = value.load() if type(value) is Payload else value
            except BaseException as exc:
                send(conn, "undecodable", cid, pack_error(exc))
                continue
            _run_batch(conn, cid, tasks, funcs, store, runtime, cancelled, timed)
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
    conn: Connection, cid: int, tasks: list[Any], funcs: dict[int, Any], store: dict[Any, Any],
    runtime: Any, cancelled: list[int], timed: bool,
) -> None:  # fmt: skip
    """Run ``tasks`` in order; report them in ``done`` messages of at most ``FLUSH_SECONDS`` of work.

    A ``done`` body is ``(values, specials, seconds, times)``: ``values`` has one entry per task
    run, in order -- the result itself when it is a plain scalar or a short string, else a
    placeholder; ``specials`` lists ``(position, status, data)`` for the others: ``inline`` (a
    :class:`Payload`), ``held`` (its size; the value stays here), ``error`` (the packed
    exception; the batch stops there) or ``unpicklable``.  ``seconds`` is the time spent since
    the previous report; ``times`` holds each task's ``(start, end)`` when ``timed``.
    """
    transitions = runtime.observes_transitions
    values: list[Any] = []
    specials: list[tuple[int, str, Any]] = []
    times: list[tuple[float, float]] | None = [] if timed else None
    clock = time.perf_counter
    plain = _PLAIN
    last_flush = clock()
    fields = iter(tasks)  # five fields a task: key, function token, args, refs, extra
    for key, token, args, refs, extra in zip(fields, fields, fields, fields, fields):
        if cancelled[0] >= cid:
            return
        if transitions:
            runtime.transition(key, "ready", "executing")
        t0 = clock() if timed else 0.0
        try:
            func = funcs[token]
            if extra is None:  # a classic tuple task: keys in args at the positions in refs
                if refs:
                    call = list(args)
                    for pos, dep in refs:
                        call[pos] = store[dep]
                    value = func(*call)
                else:
                    value = func(*args)
            elif type(extra) is dict:  # a Task: extra is its kwargs
                if refs is None:  # references nested in containers: the general task
                    value = from_wire(func, args, extra, refs)(store)
                else:
                    call = list(args)
                    for pos, dep in refs:
                        call[pos] = store[dep]
                    value = func(*call, **extra)
            else:  # a classic tuple with flat lists of keys: extra holds (position, keys)
                call = list(args)
                for pos, dep in refs:
                    call[pos] = store[dep]
                for pos, deps in extra:
                    call[pos] = [store[d] for d in deps]
                value = func(*call)
        except BaseException as exc:
            if transitions:
                runtime.transition(key, "executing", "error")
            specials.append((len(values), "error", pack_error(exc)))
            values.append(None)
            if times is not None:
                times.append((t0, clock()))
            break
        t1 = clock()
        if times is not None:
            times.append((t0, t1))
        store[key] = value
        if transitions:
            runtime.transition(key, "executing", "memory")
        t = type(value)
        if t in plain or (t is str and len(value) < INLINE_BYTES):
            values.append(value)  # travels in the message itself
        else:
            status, data = _pack_result(value)
            specials.append((len(values), status, data))
            values.append(None)
            if status == "unpicklable":
                break
        if t1 - last_flush > FLUSH_SECONDS:
            send(conn, "done", cid, (values, specials, t1 - last_flush, times))
            values, specials = [], []
            times = [] if timed else None
            last_flush = t1
    if values:
        send(conn, "done", cid, (values, specials, clock() - last_flush, times))


def _pack_result(value: Any) -> tuple[str, Any]:
    """A result that is not a plain scalar: ``("held", size)``, ``("inline", payload)`` or unpicklable."""
    hint = _size_hint(value)
    if hint is not None and hint > INLINE_BYTES:
        return "held", hint
    try:
        payload = Payload.of(value)
    except SerializationError as exc:
        return "unpicklable", f"{describe(value)}: {exc.__cause__ or exc}"
    if payload.nbytes > INLINE_BYTES:
        return "held", payload.nbytes
    return "inline", payload
