"""Looking after the cluster from a client: retiring workers gracefully, dumping the cluster's state."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..cluster_dump import dump_format, write_cluster_dump

logger = logging.getLogger("taskloom.distributed")


class ClusterAdmin:
    """Cluster administration of :class:`~.client.Client` (a part of it, not used alone)."""

    if TYPE_CHECKING:  # the other parts of the Client

        def _sync(self, coro: Any, timeout: float | None = None) -> Any: ...

        async def _request(self, op: str, **kwargs: Any) -> Any: ...

    def retire_workers(self, workers: str | Iterable[str], timeout: float = 60.0) -> Any:
        """Retire ``workers`` (addresses or names) gracefully: ``{address: info}`` of those retired.

        They take no new task; what they are running finishes there; every result only they hold
        is copied to the remaining workers (worker to worker) -- nothing is recomputed or lost --
        and then they close (their nannies too).  A worker whose results have nowhere to go (no
        other running worker) or that is not drained within ``timeout`` s stays, with a warning
        giving the reason.  A name or address the scheduler does not know is an error.
        """
        names = [workers] if isinstance(workers, str) else list(workers)
        return self._sync(self._retire_workers(names, timeout))

    async def _retire_workers(self, workers: list[str], timeout: float) -> dict[str, Any]:
        reply = await self._request("retire", workers=workers, timeout=timeout)
        for address, why in reply["kept"].items():
            logger.warning("worker %s was not retired: %s", address, why)
        return {address: dict(info) for address, info in reply["retired"].items()}

    def dump_cluster_state(self, filename: str | os.PathLike[str], timeout: float = 10.0) -> Any:
        """Write the scheduler's and every worker's state to ``filename``; the path written.

        The extension picks the format: ``.json`` or ``.msgpack`` (either may end in ``.gz``).
        Read it back with :func:`taskloom_distributed.load_cluster_dump`.  A worker that does
        not answer within ``timeout`` s appears as ``{"error": "no reply"}``.
        """
        dump_format(filename)  # a name we cannot write is an error before asking anyone
        return self._sync(self._dump_cluster_state(os.fspath(filename), timeout))

    async def _dump_cluster_state(self, filename: str, timeout: float) -> str:
        state = await self._request("dump-state", timeout=timeout)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, write_cluster_dump, state, filename)
