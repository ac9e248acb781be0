"""Dask's own ``GetFunctionTestMixin`` against ``taskloom_dask.get`` on every taskloom scheduler.

Every test of the mixin runs once per installed local scheduler, and once on the ``dask``
scheduler (a Dask graph through taskloom back onto a dask.distributed cluster).  None is skipped.
"""

from __future__ import annotations

from typing import Any

import pytest
import taskloom_dask
from dask.utils_test import GetFunctionTestMixin


class TestGetFunctionOnLocalSchedulers(GetFunctionTestMixin):
    @pytest.fixture(autouse=True)
    def _bind(self, local_scheduler: tuple[str, dict[str, Any]]) -> None:
        name, options = local_scheduler
        self.get = taskloom_dask.bind(name, **options)


@pytest.mark.timeout(300)
class TestGetFunctionOnDaskCluster(GetFunctionTestMixin):
    @pytest.fixture(autouse=True)
    def _bind(self, dask_client: Any) -> None:
        self.get = taskloom_dask.bind("dask", client=dask_client)
