"""The ``taskloom scheduler`` and ``taskloom worker`` commands.

``taskloom scheduler`` listens on ``--host``/``--port`` and authenticates every connection: with
``--auth-token`` (or ``TASKLOOM_DISTRIBUTED__COMM__AUTH``), with TLS certificates
(``--tls-ca-file/--tls-cert/--tls-key`` or ``distributed.comm.tls.*``), or with a token it
generates and prints.  ``taskloom worker HOST:PORT`` joins it with the same settings.  Both stop
on SIGINT/SIGTERM; a worker also stops when its scheduler goes away.  Errors a user can fix (a
wrong token, a missing certificate file, an unreachable scheduler) are one line on stderr and
exit status 1, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from .loop import run as run_loop

_TLS_HELP = {
    "ca_file": "CA certificate (PEM) that signs every certificate of the cluster",
    "cert": "this process's certificate (PEM), signed by the CA",
    "key": "this process's private key (PEM; default: inside --tls-cert)",
}


def _add_security_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auth-token",
        default=None,
        help="shared token (default: $TASKLOOM_DISTRIBUTED__COMM__AUTH, distributed.comm.auth)",
    )
    for name, text in _TLS_HELP.items():
        parser.add_argument(
            f"--tls-{name.replace('_', '-')}", dest=f"tls_{name}", default=None, metavar="PATH",
            help=f"{text} (distributed.comm.tls.{name})",
        )  # fmt: skip


def add_commands(commands: argparse._SubParsersAction) -> None:
    s = commands.add_parser("scheduler", help="run a distributed scheduler")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="default: distributed.scheduler.port (8786)")
    _add_security_options(s)
    s.add_argument(
        "--no-auth", action="store_true", help="accept unauthenticated connections (trusted networks only)"
    )
    s.set_defaults(func=run_scheduler_cmd)
    w = commands.add_parser("worker", help="run a distributed worker")
    w.add_argument("scheduler", help="the scheduler's address, HOST:PORT (tls://HOST:PORT with TLS)")
    w.add_argument(
        "--nthreads", type=int, default=None, help="default: distributed.worker.nthreads, else cores"
    )
    w.add_argument("--memory-limit", default="0", help="e.g. 4GB (0: no limit)")
    w.add_argument("--name", default="")
    w.add_argument("--host", default="127.0.0.1", help="interface this worker listens on for peers")
    w.add_argument(
        "--no-nanny", action="store_true", help="run the worker in this process, with no nanny to restart it"
    )
    w.add_argument("--log-dir", default=None, help="the nanny writes the worker's output to DIR/NAME.log")
    _add_security_options(w)
    w.set_defaults(func=run_worker_cmd)


def _security(args: argparse.Namespace) -> Any:
    from .comm import Security

    return Security.from_config(
        token=args.auth_token, tls_ca_file=args.tls_ca_file, tls_cert=args.tls_cert, tls_key=args.tls_key
    )


def _log_to_stderr() -> None:
    """Servers log what they do (connections refused, workers joining and leaving) to stderr."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def _fail(command: str, exc: BaseException) -> int:
    print(f"taskloom {command}: {exc}", file=sys.stderr, flush=True)
    return 1


def run_scheduler_cmd(args: argparse.Namespace) -> int:
    import attrs
    from taskloom import config
    from taskloom.errors import ConfigError

    from .comm import new_token
    from .scheduler.server import Scheduler

    _log_to_stderr()
    security = _security(args)
    if args.no_auth:
        security = attrs.evolve(security, token=None)
    elif security.token is None and not security.tls:
        security = attrs.evolve(security, token=new_token())
        print(f"auth token: {security.token}", flush=True)
    port = args.port if args.port is not None else int(config.get("distributed.scheduler.port", 8786))

    async def main() -> None:
        scheduler = await Scheduler(args.host, port, security=security).start()
        print(f"scheduler at {scheduler.address}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await scheduler.close()

    try:
        run_loop(main())
    except (ConfigError, OSError) as exc:
        return _fail("scheduler", exc)
    print("scheduler stopped", file=sys.stderr, flush=True)
    return 0


def run_worker_cmd(args: argparse.Namespace) -> int:
    from taskloom import config
    from taskloom.errors import ConfigError
    from taskloom.local import cpu_count

    from .cluster.local import parse_bytes
    from .comm import HandshakeError
    from .worker.server import Worker

    _log_to_stderr()
    if not getattr(args, "no_nanny", True):  # the default: this process becomes the worker's nanny
        from .nanny.command import run_nanny_cmd

        try:
            return run_nanny_cmd(args, _security(args))
        except (ConfigError, HandshakeError, OSError, ValueError) as exc:
            return _fail("worker", exc)
    nthreads = args.nthreads or config.get("distributed.worker.nthreads", None) or cpu_count()

    async def main() -> None:
        worker = await Worker(
            args.scheduler, int(nthreads), parse_bytes(args.memory_limit), args.name, host=args.host,
            security=_security(args), owns_process=True,
        ).start()  # fmt: skip
        print(f"worker at {worker.address}", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: loop.create_task(worker.close("signal")))
        await worker.closed.wait()
        await worker.finished.wait()
        # end the process now: a task that is still running must not keep it alive
        print("worker stopped", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)

    try:
        run_loop(main())
    except (ConfigError, HandshakeError, OSError, ValueError) as exc:
        return _fail("worker", exc)
    return 0
