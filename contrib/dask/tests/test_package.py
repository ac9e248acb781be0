"""taskloom-dask as a package: registration, cheap import, ``get``/``bind``/``use`` and key shapes."""

from __future__ import annotations

import pickle
import subprocess
import sys

import dask
import pytest
import taskloom
import taskloom_dask
from dask.utils_test import add, inc


def test_importing_loads_neither_dask_nor_distributed() -> None:
    """The plugin loads with every taskloom session: it must stay cheap."""
    code = (
        "import sys, taskloom, taskloom_dask; names = sorted(taskloom.schedulers()); "
        "assert 'dask' in names, names; "
        "heavy = [m for m in ('dask', 'distributed', 'numpy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plugin_provides_the_dask_scheduler_and_its_defaults() -> None:
    spec = taskloom.schedulers()["dask"]
    assert spec.distribution == "taskloom-dask" and spec.setup is not None
    assert taskloom.plugins.get_scheduler_spec("dask.distributed") is spec
    assert taskloom.config.get("dask.fuse") is True


def test_results_take_dask_shape_lists_become_tuples() -> None:
    dsk = {"x": 1, "y": (inc, "x"), ("z", 0): (add, "x", "y"), "l": [1, 2]}
    assert taskloom_dask.get(dsk, "l") == [1, 2]  # a value that is a list stays a list
    assert taskloom_dask.get(dsk, ("z", 0)) == 3  # a tuple is a key
    assert taskloom_dask.get(dsk, [["x", ("z", 0)], [], "y", ["y"]]) == ((1, 3), (), 2, (2,))
    assert taskloom_dask.get(dsk, []) == ()


def test_missing_keys_raise_key_error() -> None:
    with pytest.raises(KeyError):
        taskloom_dask.get({"x": 1}, [["nowhere"], "x"])


def test_bind_checks_the_name_and_is_picklable() -> None:
    with pytest.raises(taskloom.SchedulerNotFoundError, match="installed schedulers"):
        taskloom_dask.bind("no-such-scheduler")
    bound = taskloom_dask.bind("sync", num_workers=1)
    assert pickle.loads(pickle.dumps(bound)) == bound
    assert bound.__name__ == "taskloom_dask.get[sync]"
    assert bound({"a": (inc, 1)}, "a") == 2


def test_use_sets_and_restores_dask_scheduler() -> None:
    before = dask.config.get("scheduler", None)
    x = dask.delayed(inc)(1)
    with taskloom_dask.use("sync") as bound:
        assert dask.config.get("scheduler") is bound and bound.scheduler == "sync"
        assert x.compute() == 2
    assert dask.config.get("scheduler", None) == before


def test_options_reach_the_taskloom_scheduler() -> None:
    seen: dict[str, object] = {}

    def spy(graph: object, keys: list[object], **kwargs: object) -> list[object]:
        seen.update(kwargs)
        return taskloom.get(graph, keys, scheduler="sync")  # type: ignore[arg-type]

    x = dask.delayed(inc)(1)
    assert x.compute(scheduler=taskloom_dask.bind(spy, num_workers=3)) == 2
    assert seen == {"num_workers": 3}
