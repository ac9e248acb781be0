"""Tests for taskloom.config: layers and their precedence, set/restore, threads, errors."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from taskloom import config
from taskloom.errors import ConfigError, TaskloomError


@pytest.fixture(autouse=True)
def clean_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No TASKLOOM_* env, no defaults; system and user config dirs under tmp_path."""
    for name in list(os.environ):
        if name.startswith("TASKLOOM_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(config, "SYSTEM_CONFIG_DIR", tmp_path / "etc")
    provider, set_layer = config._provider, dict(config._set_layer)
    config.set_defaults_provider(None)
    config.refresh()
    yield
    with config._lock:  # whatever a failed test left set, and whoever provides defaults
        config._set_layer.clear()
        config._set_layer.update(set_layer)
    config.set_defaults_provider(provider)
    config.refresh()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def provide(*layers: tuple[str, Mapping[str, Any]]) -> None:
    config.set_defaults_provider(lambda: list(layers))


# --- layers and precedence ---------------------------------------------------------


def test_each_layer_overrides_every_layer_below_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    provide(("taskloom", {"level": "default", "only": {"default": 1}}))
    system = write(tmp_path / "etc" / "a.toml", 'level = "system"\nonly.system = 1\n')
    user = write(tmp_path / "home" / ".config" / "taskloom" / "a.toml", 'level = "user"\n[only]\nuser = 1\n')
    explicit = write(tmp_path / "explicit.toml", 'level = "explicit"\nonly.explicit = 1')
    monkeypatch.setenv("TASKLOOM_CONFIG", str(explicit))
    monkeypatch.setenv("TASKLOOM_LEVEL", "env")
    monkeypatch.setenv("TASKLOOM_ONLY__ENV", "1")

    with config.set(level="set"):
        assert config.get("level") == "set"
        assert config.sources()["level"] == "config.set"
        # lower layers still supply the keys nobody above them sets
        assert config.get("only") == {n: 1 for n in ("default", "system", "user", "explicit", "env")}
        assert config.sources()["only.default"] == "default (taskloom)"
        assert config.sources()["only.system"] == f"file {system}"
        assert config.sources()["only.user"] == f"file {user}"
        assert config.sources()["only.explicit"] == f"file {explicit}"
        assert config.sources()["only.env"] == "env TASKLOOM_ONLY__ENV"

    def level() -> tuple[Any, str]:
        return config.get("level"), config.sources()["level"]

    assert level() == ("env", "env TASKLOOM_LEVEL")
    monkeypatch.delenv("TASKLOOM_LEVEL")
    config.refresh()
    assert level() == ("explicit", f"file {explicit}")
    monkeypatch.delenv("TASKLOOM_CONFIG")
    config.refresh()
    assert level() == ("user", f"file {user}")
    user.unlink()
    config.refresh()
    assert level() == ("system", f"file {system}")
    system.unlink()
    config.refresh()
    assert level() == ("default", "default (taskloom)")


def test_later_default_sources_override_earlier_ones() -> None:
    provide(("taskloom", {"scheduler": "threads", "num_workers": None}), ("plugin", {"scheduler": "sync"}))
    assert config.get("scheduler") == "sync"
    assert config.get("num_workers") is None
    assert config.sources() == {"num_workers": "default (taskloom)", "scheduler": "default (plugin)"}


def test_no_provider_means_no_defaults() -> None:
    assert config.config_snapshot() == {}
    assert config.sources() == {}


def test_nested_tables_deep_merge_across_layers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    memory = {"target": 0.6, "spill": 0.7, "pause": 0.8}
    provide(("taskloom-distributed", {"distributed": {"worker": {"memory": memory}}}))
    write(tmp_path / "etc" / "d.toml", "[distributed.worker.memory]\ntarget = 0.5\n")
    monkeypatch.setenv("TASKLOOM_DISTRIBUTED__WORKER__MEMORY__SPILL", "0.75")
    with config.set({"distributed": {"comm": {"auth": "token"}}}):
        assert config.get("distributed") == {
            "worker": {"memory": {"target": 0.5, "spill": 0.75, "pause": 0.8}},
            "comm": {"auth": "token"},
        }


def test_xdg_config_home_replaces_dot_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "home" / ".config" / "taskloom" / "a.toml", 'where = "home"\nhome = 1\n')
    write(tmp_path / "xdg" / "taskloom" / "a.toml", 'where = "xdg"\n')
    assert config.get("where") == "home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    config.refresh()
    assert config.get("where") == "xdg"
    assert config.get("home", None) is None


def test_files_in_a_directory_are_read_in_sorted_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = tmp_path / "conf.d"
    write(directory / "b.toml", 'order = "b"\nb = 1\n')
    write(directory / "10.toml", 'order = "10"\nten = 1\n')
    write(directory / "a.toml", 'order = "a"\na = 1\n')
    write(directory / "z.txt", "this is [not toml")  # not *.toml: ignored
    monkeypatch.setenv("TASKLOOM_CONFIG", str(directory))
    assert config.get("order") == "b"
    assert {k: config.get(k) for k in ("a", "b", "ten")} == {"a": 1, "b": 1, "ten": 1}


def test_taskloom_config_naming_a_missing_path_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TASKLOOM_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=re.escape("nope.toml")):
        config.get("scheduler")


def test_malformed_toml_raises_config_error_naming_the_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "etc" / "bad.toml", "scheduler = [\n")
    with pytest.raises(tomllib.TOMLDecodeError) as parser:
        tomllib.loads(bad.read_text())
    with pytest.raises(ConfigError) as caught:
        config.get("scheduler")
    assert str(bad) in str(caught.value)
    assert str(parser.value) in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TaskloomError)


# --- environment variables ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("4", 4),
        ("0.6", 0.6),
        ("None", None),
        ("True", True),
        ("sync", "sync"),
        ("[1, 2]", [1, 2]),
        ("{'a': 1}", {"a": 1}),
        ("'quoted'", "quoted"),
        ("tcp://host:8786", "tcp://host:8786"),
        ("", ""),
    ],
)
def test_env_values_are_python_literals_or_strings(
    monkeypatch: pytest.MonkeyPatch, raw: str, value: Any
) -> None:
    monkeypatch.setenv("TASKLOOM_X", raw)
    assert config.get("x") == value
    assert type(config.get("x")) is type(value)


def test_env_double_underscore_nests_and_names_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLOOM_NUM_WORKERS", "4")
    monkeypatch.setenv("TASKLOOM_DISTRIBUTED__COMM__AUTH", "secret")
    monkeypatch.setenv("TASKLOOM_DISTRIBUTED__SCHEDULER__ADDRESS", "tcp://h:1")
    monkeypatch.setenv("TASKLOOM_THREADS-PER-WORKER", "2")
    assert config.get("num_workers") == 4
    assert config.get("Distributed.Comm.Auth") == "secret"
    assert config.get("distributed") == {"comm": {"auth": "secret"}, "scheduler": {"address": "tcp://h:1"}}
    assert config.get("threads-per-worker") == 2
    assert config.sources()["threads_per_worker"] == "env TASKLOOM_THREADS-PER-WORKER"


def test_control_variables_are_not_config_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TASKLOOM_CONFIG", str(write(tmp_path / "empty.toml", "")))
    monkeypatch.setenv("TASKLOOM_DISABLE_PLUGINS", "taskloom-ray")
    monkeypatch.setenv("TASKLOOM_TRACE_HOOKS", "1")
    monkeypatch.setenv("TASKLOOM_SCHEDULER", "sync")
    assert config.config_snapshot() == {"scheduler": "sync"}


# --- set -----------------------------------------------------------------------------


def test_set_accepts_dotted_nested_and_keyword_forms() -> None:
    provide(("taskloom", {"distributed": {"worker": {"memory": {"spill": 0.7}}}}))
    with config.set(
        {"distributed.worker.memory.target": 0.6, "a": {"b": 1, "c.d": 2}},
        num_workers=2,
        distributed__comm__auth="x",
        **{"Threads-Per-Worker": 3},
    ):
        assert config.get("distributed.worker.memory") == {"spill": 0.7, "target": 0.6}
        assert config.get("DISTRIBUTED.worker.memory.target") == 0.6
        assert config.get("a") == {"b": 1, "c": {"d": 2}}
        assert config.get("num_workers") == 2
        assert config.get("distributed.comm.auth") == "x"
        assert config.get("threads_per_worker") == 3


def test_set_without_with_applies_globally_across_threads() -> None:
    provide(("taskloom", {"scheduler": "threads"}))
    ctx = config.set(scheduler="sync")
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(config.get("scheduler")))
    thread.start()
    thread.join()
    assert seen == ["sync"]
    assert config.get("scheduler") == "sync"
    ctx.__exit__(None, None, None)
    assert config.get("scheduler") == "threads"


def test_exit_restores_previous_values_and_removes_new_keys() -> None:
    provide(("taskloom", {"scheduler": "threads", "distributed": {"comm": {"auth": None}}}))
    before = config.config_snapshot()
    with config.set({"scheduler": "sync", "new.deep.key": 1, "distributed.comm.auth": "x"}):
        assert config.get("new.deep.key") == 1
    assert config.config_snapshot() == before
    with pytest.raises(KeyError):
        config.get("new")
    assert "new.deep.key" not in config.sources()


def test_exit_restores_after_an_exception() -> None:
    with pytest.raises(ZeroDivisionError), config.set(x=1):
        1 / 0  # noqa: B018
    assert config.get("x", None) is None


def test_setting_a_scalar_over_a_table_is_undone() -> None:
    provide(("taskloom", {"distributed": {"comm": {"auth": "a"}, "worker": {"memory": 0.5}}}))
    with config.set({"distributed.comm.auth": "b"}):
        with config.set(distributed="off"):
            assert config.get("distributed") == "off"
            with config.set({"distributed.worker.memory": 0.9}):
                assert config.get("distributed") == {"worker": {"memory": 0.9}}
            assert config.get("distributed") == "off"
        assert config.get("distributed") == {"comm": {"auth": "b"}, "worker": {"memory": 0.5}}
    assert config.get("distributed") == {"comm": {"auth": "a"}, "worker": {"memory": 0.5}}


def test_nested_set_restores_to_the_outer_values() -> None:
    provide(("taskloom", {"scheduler": "threads"}))
    with config.set(scheduler="sync", x=1):
        with config.set(scheduler="processes", x=2, y=3):
            assert [config.get(k) for k in ("scheduler", "x", "y")] == ["processes", 2, 3]
        assert [config.get(k) for k in ("scheduler", "x")] == ["sync", 1]
        assert config.get("y", None) is None
    assert config.get("scheduler") == "threads"
    assert config.get("x", None) is None


def test_out_of_order_exits_on_distinct_keys_restore_each_key() -> None:
    first = config.set({"shared.a": 1})
    second = config.set({"shared.b": 2})
    first.__exit__(None, None, None)
    assert config.get("shared") == {"b": 2}
    second.__exit__(None, None, None)
    assert config.config_snapshot() == {}


def test_set_values_are_not_copied() -> None:
    data = [1, {"nested": "dict inside a list"}]
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        config.set({"pool": pool, "a": {"b": data}}, scheduler=len),
    ):
        assert config.get("pool") is pool
        assert config.get("scheduler") is len
        assert config.get("a.b") is data
        assert config.get("a")["b"] is data
        assert config.config_snapshot()["pool"] is pool


def test_get_returns_a_copy_of_tables() -> None:
    provide(("taskloom", {"distributed": {"comm": {"auth": "a"}}}))
    table = config.get("distributed")
    table["comm"]["auth"] = "changed"
    table["extra"] = 1
    config.config_snapshot()["distributed"]["comm"]["auth"] = "changed"
    assert config.get("distributed") == {"comm": {"auth": "a"}}


def test_invalid_keys_are_rejected_before_anything_is_set() -> None:
    with pytest.raises(ValueError, match=re.escape("a..b")):
        config.set({"ok": 1, "a..b": 2})
    assert config.get("ok", None) is None


def test_concurrent_sets_on_distinct_keys_never_disturb_each_other() -> None:
    provide(("taskloom", {"scheduler": "threads", "shared": {"base": 1}}))
    initial, initial_sources = config.config_snapshot(), config.sources()
    writers, readers, rounds = 8, 4, 300
    barrier = threading.Barrier(writers + readers, timeout=60)

    def writer(i: int) -> None:
        barrier.wait()
        for r in range(rounds):
            with config.set({f"shared.w{i}": r, f"w{i}": {"round": r}}):
                assert config.get(f"shared.w{i}") == r
                assert config.get(f"w{i}.round") == r
            assert config.get(f"w{i}", None) is None
            assert config.get(f"shared.w{i}", None) is None

    def reader() -> None:
        barrier.wait()
        for _ in range(rounds):
            assert config.get("scheduler") == "threads"
            assert config.get("shared.base") == 1
            flat = config.flatten(config.config_snapshot())
            assert all(isinstance(v, int) for k, v in flat.items() if k != "scheduler")

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so the contexts interleave
    try:
        with ThreadPoolExecutor(max_workers=writers + readers) as pool:
            futures = [pool.submit(writer, i) for i in range(writers)]
            futures += [pool.submit(reader) for _ in range(readers)]
            for future in futures:
                future.result()  # re-raises a failed assertion from its thread
    finally:
        sys.setswitchinterval(old_interval)
    assert config.config_snapshot() == initial
    assert config.sources() == initial_sources


# --- get, refresh, caching -----------------------------------------------------------


def test_get_missing_key_names_the_key_and_close_matches() -> None:
    provide(("taskloom", {"scheduler": "threads", "distributed": {"comm": {"auth": None}}}))
    with pytest.raises(KeyError, match="schedular") as caught:
        config.get("schedular")
    assert "'scheduler'" in str(caught.value)
    with pytest.raises(KeyError, match=re.escape("'distributed.comm.auth'")):
        config.get("distributed.comm.auht")
    with pytest.raises(KeyError, match=re.escape("scheduler.address")):
        config.get("scheduler.address")  # through a scalar


def test_get_default_is_returned_only_when_missing() -> None:
    provide(("taskloom", {"num_workers": None}))
    assert config.get("nope", 3) == 3
    assert config.get("nope.deeper", default=None) is None
    assert config.get("num_workers", 3) is None


def test_sources_are_read_once_until_refresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[int] = []

    def provider() -> list[tuple[str, Mapping[str, Any]]]:
        calls.append(1)
        return [("taskloom", {"scheduler": "threads"})]

    config.set_defaults_provider(provider)
    conf = write(tmp_path / "etc" / "a.toml", "num_workers = 1\n")
    assert config.get("num_workers") == 1
    conf.write_text("num_workers = 2\n")
    monkeypatch.setenv("TASKLOOM_SCHEDULER", "sync")
    for _ in range(3):
        with config.set(x=1):
            assert config.get("num_workers") == 1
        assert config.get("scheduler") == "threads"
    assert len(calls) == 1
    config.refresh()
    assert (config.get("num_workers"), config.get("scheduler")) == (2, "sync")
    assert len(calls) == 2
    config.set_defaults_provider(lambda: [("other", {"extra": True})])
    assert config.get("extra") is True


def test_refresh_keeps_values_from_set_in_force(tmp_path: Path) -> None:
    conf = write(tmp_path / "etc" / "a.toml", 'scheduler = "threads"\n')
    with config.set(scheduler="sync"):
        conf.write_text('scheduler = "processes"\n')
        config.refresh()
        assert config.get("scheduler") == "sync"
    assert config.get("scheduler") == "processes"


def test_defaults_provider_may_not_read_the_config() -> None:
    config.set_defaults_provider(lambda: [("taskloom", {"x": config.get("y", 1)})])
    with pytest.raises(RuntimeError, match="provider"):
        config.get("x")


def test_importing_reads_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TASKLOOM_CONFIG", str(write(tmp_path / "bad.toml", "= broken")))
    spec = importlib.util.spec_from_file_location("taskloom._config_copy", config.__file__)
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)  # would raise if the bad file were read at import
    with pytest.raises(ConfigError, match=re.escape("bad.toml")):
        fresh.get("x")


# --- helpers for the CLI -------------------------------------------------------------


def test_flatten() -> None:
    assert config.flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1]}) == {"a.b": 1, "a.c.d": None, "e": [1]}
    assert config.flatten({"b": 1}, prefix="a") == {"a.b": 1}


def test_format_config_is_sorted_and_aligned() -> None:
    provide(("taskloom", {"scheduler": "threads", "distributed": {"comm": {"auth": "tok"}}}))
    with config.set(num_workers=4):
        assert config.format_config().splitlines() == [
            "distributed.comm.auth = 'tok'  # default (taskloom)",
            "num_workers = 4                # config.set",
            "scheduler = 'threads'          # default (taskloom)",
        ]


def test_get_cached_follows_set_undo_refresh_and_overlays(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "cachetest.value"
    with pytest.raises(KeyError, match="cachetest"):
        config.get_cached(key)
    assert config.get_cached(key, 7) == 7  # not set: the default, whichever is passed
    assert config.get_cached(key, 8) == 8
    with config.set({key: 1}):
        assert config.get_cached(key) == 1
        assert config.get_cached(key) == 1  # remembered
        with config.set({key: 2}):
            assert config.get_cached(key) == 2
        assert config.get_cached(key) == 1  # undone
        with config.overlay({key: 3}):
            assert config.get_cached(key) == 3  # this thread only
            seen: list[Any] = []
            other = threading.Thread(target=lambda: seen.append(config.get_cached(key)))
            other.start()
            other.join()
            assert seen == [1]
        assert config.get_cached(key) == 1
    assert config.get_cached(key, None) is None
    monkeypatch.setenv("TASKLOOM_CACHETEST__VALUE", "5")
    assert config.get_cached(key, None) is None  # the environment is read once ...
    config.refresh()  # ... until a refresh
    assert config.get_cached(key) == 5
    monkeypatch.delenv("TASKLOOM_CACHETEST__VALUE")
    config.refresh()
    assert config.get_cached(key, None) is None


def test_get_cached_copies_tables_like_get() -> None:
    with config.set({"cachetest.table.a": 1}):
        table = config.get_cached("cachetest.table")
        table["a"] = 99
        assert config.get_cached("cachetest.table") == {"a": 1}
