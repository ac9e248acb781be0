"""The core's own plugin: configuration defaults and the ``bench``/``config``/``plugins`` commands."""

from __future__ import annotations

import argparse
from typing import Any

from .plugins import hookimpl
from .serialize import CLOUDPICKLE, PICKLE, Serializer


@hookimpl
def taskloom_config_defaults() -> dict[str, Any]:
    return {
        "scheduler": None,  # None: "threads" where installed, else the first installed scheduler
        "num_workers": None,  # None: the number of CPUs this process may use
    }


@hookimpl
def taskloom_serializers() -> list[Serializer]:
    return [PICKLE, CLOUDPICKLE]


def _run_config(args: argparse.Namespace) -> int:
    from . import config

    print(config.format_config())
    return 0


def _run_plugins(args: argparse.Namespace) -> int:
    from .plugins import format_plugins, plugin_infos

    print(format_plugins(plugin_infos()))
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from .bench.runner import run_cli

    return run_cli(args)


@hookimpl
def taskloom_cli(commands: argparse._SubParsersAction) -> None:
    cfg = commands.add_parser("config", help="print the merged configuration and each value's source")
    cfg.set_defaults(func=_run_config)
    plugins = commands.add_parser("plugins", help="list installed plugins and what they provide")
    plugins.set_defaults(func=_run_plugins)
    from .bench.runner import add_arguments

    bench = commands.add_parser("bench", help="run the standard workloads on every installed scheduler")
    add_arguments(bench)
    bench.set_defaults(func=_run_bench)
