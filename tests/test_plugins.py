"""The plugin manager with real installed distributions: loading, blocking, tracing, errors.

A site directory made in ``tmp_path`` holds two third-party distributions, installed the way pip
leaves them (a package next to its ``<name>-<version>.dist-info`` with ``METADATA`` and
``entry_points.txt``): ``taskloom-fake``, which provides a scheduler, config defaults and a
subcommand, and ``taskloom-broken``, whose plugin module fails to import.  Each test runs the
real ``taskloom`` command or ``python -c`` in a subprocess with that directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib.metadata
import operator
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import taskloom
from taskloom import Ref, Task
from taskloom.local import execute_inline
from taskloom.order import plan

FAKE_PLUGIN = '''
"""Hook implementations of taskloom-fake, a third-party scheduler plugin."""

import argparse

import taskloom
from taskloom import config
from taskloom.local import execute_inline, task_events
from taskloom.order import plan

CALLS = []


def get(graph, keys, **kwargs):
    CALLS.append(list(keys))
    results = execute_inline(plan(graph, keys), task_events(), worker="fake-0", scheduler="fake")
    return [results[k] for k in keys]


@taskloom.hookimpl
def taskloom_schedulers():
    return [taskloom.SchedulerSpec("fake", get=get, aliases=("fk",), description="a test scheduler")]


@taskloom.hookimpl
def taskloom_config_defaults():
    return {"fake": {"level": 3}}


def _hello(args: argparse.Namespace) -> int:
    print(f"hello {args.name} from taskloom-fake at level {config.get('fake.level')}")
    return args.status


@taskloom.hookimpl
def taskloom_cli(commands):
    hello = commands.add_parser("fake-hello", help="greet from the fake plugin")
    hello.add_argument("--name", default="world")
    hello.add_argument("--status", type=int, default=0)
    hello.set_defaults(func=_hello)
'''

BROKEN_PLUGIN = """
raise ImportError("taskloom_broken needs libbroken, which is not installed")
"""

COMPUTE = """
import taskloom
x = taskloom.delayed(sum)([1, 2, 3])
print("result", taskloom.compute(x, scheduler={scheduler!r})[0])
"""


def _install(site: Path, dist: str, version: str, package: str, plugin_source: str) -> None:
    """Lay out ``dist`` in ``site`` as an installer would: its package and its dist-info."""
    pkg = site / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f'"""{dist}."""\n')
    (pkg / "plugin.py").write_text(plugin_source)
    info = site / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    entry_name = package.removeprefix("taskloom_")
    (info / "entry_points.txt").write_text(f"[taskloom]\n{entry_name} = {package}.plugin\n")
    (info / "RECORD").write_text("")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site-packages")
    _install(root, "taskloom-fake", "0.3.0", "taskloom_fake", FAKE_PLUGIN)
    _install(root, "taskloom-broken", "1.0.0", "taskloom_broken", BROKEN_PLUGIN)
    return root


def run(
    site: Path, *args: str, code: str | None = None, env: Mapping[str, str] = {}
) -> subprocess.CompletedProcess[str]:
    """``python -m taskloom ARGS`` (or ``python -c CODE``) with ``site`` installed."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TASKLOOM_", "PYTHONWARNINGS"))}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    environ["XDG_CONFIG_HOME"] = str(site.parent / "no-user-config")
    environ.update(env)
    command = (
        [sys.executable, "-c", textwrap.dedent(code)]
        if code is not None
        else [sys.executable, "-m", "taskloom", *args]
    )
    return subprocess.run(command, env=environ, cwd=site.parent, capture_output=True, text=True, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def parse_plugins(text: str) -> dict[str, dict[str, Any]]:
    """``taskloom plugins`` output -> entry point name -> its distribution, version and lists."""
    plugins: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] = {}
    for line in text.splitlines():
        header = re.fullmatch(r"(\S+) (\S*)\s+\(entry point '([^']+)'\)", line)
        if header:
            dist, version, name = header.groups()
            current = plugins[name] = {"distribution": dist, "version": version}
        elif line.startswith(" ") and ":" in line:
            field, _, values = line.strip().partition(":")
            current[field] = [v.strip() for v in values.split(",") if v.strip() not in ("", "-")]
    return plugins


# --- third-party plugins, in subprocesses ----------------------------------------------------


@pytest.mark.timeout(60)
def test_plugins_command_lists_core_builtins_and_third_party_plugins(site: Path) -> None:
    plugins = parse_plugins(ok(run(site, "plugins")))
    version = importlib.metadata.version
    assert plugins["core"]["distribution"] == "taskloom"
    assert plugins["core"]["version"] == version("taskloom")
    assert {"taskloom_cli", "taskloom_config_defaults"} <= set(plugins["core"]["hooks"])
    for name in ("sync", "threads"):
        assert plugins[name]["distribution"] == f"taskloom-{name}"
        assert plugins[name]["version"] == version(f"taskloom-{name}")
        assert plugins[name]["schedulers"] == [name]
        assert "taskloom_schedulers" in plugins[name]["hooks"]
    assert plugins["fake"] == {
        "distribution": "taskloom-fake",
        "version": "0.3.0",
        "schedulers": ["fake"],
        "hooks": ["taskloom_cli", "taskloom_config_defaults", "taskloom_schedulers"],
    }
    assert "broken" not in plugins


@pytest.mark.timeout(60)
def test_broken_plugin_is_a_warning_naming_its_distribution_and_the_rest_works(site: Path) -> None:
    result = run(site, code=COMPUTE.format(scheduler="sync"))
    assert ok(result).splitlines() == ["result 6"]
    assert "taskloom-broken" in result.stderr
    assert "libbroken" in result.stderr  # the reason is shown
    assert "Traceback" not in result.stderr
    default = run(site, code=COMPUTE.format(scheduler=None))
    assert ok(default).splitlines() == ["result 6"]
    assert "taskloom-broken" in default.stderr


@pytest.mark.timeout(60)
def test_broken_plugin_disabled_gives_no_warning(site: Path) -> None:
    result = run(site, code=COMPUTE.format(scheduler="fake"), env={"TASKLOOM_DISABLE_PLUGINS": "broken"})
    assert ok(result).splitlines() == ["result 6"]
    assert "taskloom-broken" not in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocked", ["taskloom-fake", "fake", "taskloom-broken, fake"])
def test_disable_plugins_by_distribution_or_entry_point_name(site: Path, blocked: str) -> None:
    env = {"TASKLOOM_DISABLE_PLUGINS": blocked}
    plugins = parse_plugins(ok(run(site, "plugins", env=env)))
    assert "fake" not in plugins
    assert {"core", "sync", "threads"} <= set(plugins)
    assert "fake.level" not in ok(run(site, "config", env=env))
    assert "fake-hello" not in ok(run(site, "--help", env=env))
    code = """
        import taskloom
        try:
            taskloom.compute(taskloom.delayed(sum)([1]), scheduler="fk")
        except taskloom.SchedulerNotFoundError as exc:
            print("not found:", exc)
    """
    out = ok(run(site, code=code, env=env))
    assert out.startswith("not found: unknown scheduler 'fk'")
    assert "sync" in out and "threads" in out


@pytest.mark.timeout(60)
def test_trace_hooks_prints_hook_calls_on_stderr(site: Path) -> None:
    result = run(site, code=COMPUTE.format(scheduler="fake"), env={"TASKLOOM_TRACE_HOOKS": "1"})
    assert ok(result).splitlines() == ["result 6"]
    assert "taskloom_schedulers" in result.stderr
    quiet = run(site, code=COMPUTE.format(scheduler="fake"))
    assert "taskloom_schedulers" not in quiet.stderr


@pytest.mark.timeout(60)
def test_trace_hooks_traces_diagnostics_hooks_with_their_arguments(site: Path) -> None:
    code = """
        import taskloom
        from taskloom.diagnostics import Callback
        with Callback(finish=lambda keys, error: None):
            print("result", taskloom.get({"x": (sum, [1, 2])}, "x", scheduler="sync"))
    """
    result = run(site, code=code, env={"TASKLOOM_TRACE_HOOKS": "1"})
    assert ok(result).splitlines() == ["result 3"]
    assert "taskloom_compute_finish" in result.stderr
    assert "'x'" in result.stderr  # the keys argument


@pytest.mark.timeout(60)
def test_compute_through_a_plugin_scheduler_alias(site: Path) -> None:
    code = """
        import taskloom
        import taskloom_fake.plugin as fake
        from taskloom.diagnostics import Callback
        x = taskloom.delayed(sum)([1, 2, 3])
        workers = set()
        with Callback(task_start=lambda key, worker: workers.add(worker)):
            print(taskloom.compute(x, scheduler="fk")[0], len(fake.CALLS), sorted(workers))
        spec = taskloom.plugins.get_scheduler_spec("fk")
        print(spec.name, spec.distribution, spec.aliases)
    """
    assert ok(run(site, code=code)).splitlines() == ["6 1 ['fake-0']", "fake taskloom-fake ('fk',)"]


@pytest.mark.timeout(60)
def test_config_shows_plugin_defaults_and_env_overrides_with_their_source(site: Path) -> None:
    shown = ok(run(site, "config"))
    assert re.search(r"^fake\.level = 3\s+# default \(taskloom-fake\)$", shown, re.M), shown
    assert re.search(r"^scheduler = None\s+# default \(taskloom\)$", shown, re.M), shown
    overridden = ok(run(site, "config", env={"TASKLOOM_FAKE__LEVEL": "5"}))
    assert re.search(r"^fake\.level = 5\s+# env TASKLOOM_FAKE__LEVEL$", overridden, re.M), overridden


@pytest.mark.timeout(60)
def test_plugin_subcommand_runs(site: Path) -> None:
    assert ok(run(site, "fake-hello")) == "hello world from taskloom-fake at level 3\n"
    env = {"TASKLOOM_FAKE__LEVEL": "5"}
    assert (
        ok(run(site, "fake-hello", "--name", "you", env=env)) == "hello you from taskloom-fake at level 5\n"
    )
    assert run(site, "fake-hello", "--status", "3").returncode == 3


@pytest.mark.timeout(60)
def test_help_lists_core_and_plugin_commands(site: Path) -> None:
    result = run(site, "--help")
    text = ok(result)
    for command in ("bench", "config", "plugins", "fake-hello"):
        assert re.search(rf"^\s+{command}\s+\S", text, re.M), f"{command!r} missing from:\n{text}"
    assert "failed to add its commands" not in result.stderr


# --- choosing a scheduler, in process --------------------------------------------------------


GRAPH: dict[Any, Any] = {"a": 1, "b": Task(operator.add, Ref("a"), 1)}


def test_unknown_scheduler_error_lists_installed_schedulers() -> None:
    with pytest.raises(taskloom.SchedulerNotFoundError) as raised:
        taskloom.get(GRAPH, "b", scheduler="no-such-scheduler")
    message = str(raised.value)
    assert "'no-such-scheduler'" in message
    for name in taskloom.schedulers():
        assert name in message
    assert "pip install" not in message
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    ("name", "dist"),
    [
        ("processes", "taskloom-processes"),
        ("multiprocessing", "taskloom-processes"),
        ("distributed", "taskloom-distributed"),
        ("pool", "taskloom-pool"),
    ],
)
def test_unknown_well_known_scheduler_names_the_distribution_to_install(name: str, dist: str) -> None:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        pytest.skip(f"{dist} is installed")
    with pytest.raises(taskloom.SchedulerNotFoundError) as raised:
        taskloom.compute(taskloom.delayed(sum)([1]), scheduler=name)
    message = str(raised.value)
    assert f"pip install {dist}" in message
    assert f"installed schedulers: {', '.join(sorted(taskloom.schedulers()))}" in message


def test_scheduler_given_as_a_get_callable() -> None:
    calls: list[list[Any]] = []

    def my_get(graph: Mapping[Any, Any], keys: list[Any], **kwargs: Any) -> list[Any]:
        calls.append(list(keys))
        results = execute_inline(plan(graph, keys))
        return [results[k] for k in keys]

    assert taskloom.get(GRAPH, ["b", ["a"]], scheduler=my_get) == [2, [1]]
    assert calls == [["b", "a"]]
    with taskloom.config.set(scheduler=my_get):
        assert taskloom.compute(taskloom.delayed(operator.neg)(4)) == (-4,)
    assert len(calls) == 2


def test_scheduler_given_as_a_client_like_object() -> None:
    class Client:
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def get(self, graph: Mapping[Any, Any], keys: list[Any], **kwargs: Any) -> list[Any]:
            self.calls.append(kwargs)
            results = execute_inline(plan(graph, keys))
            return [results[k] for k in keys]

    client = Client()
    x = taskloom.delayed(operator.add)(1, 2)
    assert taskloom.compute(x, scheduler=client, num_workers=2) == (3,)
    assert client.calls == [{"num_workers": 2}]


def test_scheduler_of_a_wrong_type_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="scheduler must be"):
        taskloom.get(GRAPH, "b", scheduler=42)
