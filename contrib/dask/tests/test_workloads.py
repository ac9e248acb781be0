"""The seed's three Dask workloads on every taskloom scheduler; results equal Dask's own.

Sizes are cut down for CI (``contrib/dask/bench/bench_array.py`` keeps the seed's full array):
a (2000, 2000) array in (500, 500) chunks, four small JSON-lines text files, a CSV of 3,000 rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
import taskloom_dask

pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")


@pytest.fixture(scope="module")
def text_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    directory = tmp_path_factory.mktemp("bag")
    files = []
    for f in range(4):
        path = directory / f"part-{f}.jsonl"
        lines = [json.dumps({"file": f, "n": i, "word": f"w{i % 7}"}) for i in range(250)]
        path.write_text("\n".join(lines) + "\n")
        files.append(str(path))
    return files


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    rng = np.random.default_rng(42)
    frame = pd.DataFrame(
        {
            "group": rng.choice(list("abcdefgh"), size=3000),
            "x": rng.normal(size=3000),
            "y": rng.integers(0, 100, size=3000),
        }
    )
    path: Path = tmp_path_factory.mktemp("csv") / "data.csv"
    frame.to_csv(path, index=False)
    return str(path)


def array_workload() -> Any:
    return da.random.random((2000, 2000), chunks=(500, 500)).mean()


def bag_workload(files: list[str]) -> Any:
    return db.read_text(files).map(json.loads)


def frame_workload(path: str) -> Any:
    return dd.read_csv(path, blocksize=20_000).groupby("group").mean()


def assert_frames_equal(ours: Any, theirs: Any) -> None:
    pd.testing.assert_frame_equal(ours.sort_index(), theirs.sort_index())


def test_array_mean(local_scheduler: tuple[str, dict[str, Any]]) -> None:
    name, options = local_scheduler
    x = array_workload()
    expected = x.compute(scheduler="sync")
    assert x.compute(scheduler=taskloom_dask.bind(name, **options)) == expected
    assert 0.49 < expected < 0.51


def test_bag_read_text_map(local_scheduler: tuple[str, dict[str, Any]], text_files: list[str]) -> None:
    name, options = local_scheduler
    bag = bag_workload(text_files)
    with taskloom_dask.use(name, **options):
        ours = bag.compute()
    assert ours == bag.compute(scheduler="sync")
    assert len(ours) == 1000 and ours[-1] == {"file": 3, "n": 249, "word": "w4"}


def test_dataframe_read_csv_groupby_mean(local_scheduler: tuple[str, dict[str, Any]], csv_file: str) -> None:
    name, options = local_scheduler
    frame = frame_workload(csv_file)
    assert dd.read_csv(csv_file, blocksize=20_000).npartitions > 1
    with taskloom_dask.use(name, **options):
        ours = frame.compute()
    assert_frames_equal(ours, frame.compute(scheduler="sync"))
    expected = pd.read_csv(csv_file).groupby("group").mean()  # Dask's strings are Arrow-backed
    pd.testing.assert_frame_equal(ours.sort_index(), expected, check_index_type=False)


def test_default_scheduler_is_taskloom_default() -> None:
    """``scheduler=taskloom_dask.get`` uses taskloom's configured default scheduler."""
    x = array_workload()
    assert x.compute(scheduler=taskloom_dask.get) == x.compute(scheduler="sync")


def test_dask_compute_of_several_collections() -> None:
    x, y = array_workload(), da.ones((100, 100), chunks=10).sum()
    with taskloom_dask.use("threads"):
        ours = dask.compute({"mean": x, "sum": y}, [x])
    assert ours == dask.compute({"mean": x, "sum": y}, [x], scheduler="sync")


def test_persist_then_compute() -> None:
    x = da.arange(100, chunks=10) + 1
    with taskloom_dask.use("threads"):
        persisted = x.persist()
        assert int(persisted.sum().compute()) == 5050
    assert len(persisted.__dask_graph__()) == 10  # one data node per chunk


@pytest.mark.timeout(300)
def test_workloads_on_dask_scheduler(dask_client: Any, text_files: list[str], csv_file: str) -> None:
    """Dask graph -> taskloom -> back to a dask.distributed cluster: same results."""
    x, bag, frame = array_workload(), bag_workload(text_files), frame_workload(csv_file)
    with taskloom_dask.use("dask", client=dask_client):
        ours = x.compute(), bag.compute(), frame.compute()
    assert ours[:2] == (x.compute(scheduler="sync"), bag.compute(scheduler="sync"))
    assert_frames_equal(ours[2], frame.compute(scheduler="sync"))
