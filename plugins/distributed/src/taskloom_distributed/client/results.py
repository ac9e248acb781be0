"""Results back from the cluster: waiting on futures, fetching values from the workers that hold
them (all of a worker's keys in one request), and the tasks' exceptions.

A small result of a key the client holds comes inline with the scheduler's news that it is done
(``distributed.worker.inline_result_bytes``): the first ``result()`` or ``gather`` of it unpickles
it with no request to the worker (later ones fetch it, so a result lost with its worker since is
recomputed as before).  At most ``INLINE_BUDGET`` bytes of such results wait in the client at a
time (beyond that they are fetched)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taskloom.errors import TaskloomError
from taskloom.graph import Key
from taskloom.serialize import deserialize

from .futures import CancelledError, Future, FutureState, wait_states
from .graphs import collect_futures, rebuild
from .pickling import unpack_exception

INLINE_BUDGET = 64 * 2**20  # bytes of inline results a client keeps waiting, at most


class Results:
    """Gathering results, for :class:`~.client.Client` (a part of it, not used alone)."""

    # set up by Client.__init__
    asynchronous: bool
    _inline_bytes: int
    inline_results_used = 0  # results taken from the news rather than fetched (counted per client)
    _states: dict[Key, FutureState]
    _errors: dict[Key, BaseException]
    _aliases: dict[Key, Key]

    if TYPE_CHECKING:  # the other parts of the Client

        def _sync(self, coro: Any, timeout: float | None = None) -> Any: ...

        async def _request(self, op: str, **kwargs: Any) -> Any: ...

        async def _get_data(self, address: str, keys: list[Key]) -> dict[Key, Any]: ...

    def gather(self, futures: Any, errors: str = "raise") -> Any:
        """Values of futures (a Future, or a list/tuple/set/dict nesting of them), same shape.

        ``errors="raise"`` raises the first failure as soon as it is known; ``"skip"`` leaves
        failed and cancelled futures out of their containers.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"gather errors= must be 'raise' or 'skip', not {errors!r}")
        return self._sync(self._gather(futures, errors))

    async def _gather(self, futures: Any, errors: str) -> Any:
        flat: list[Future] = []
        collect_futures(futures, flat)
        if isinstance(futures, Future):
            errors = "raise"
        values = await self._gather_values(flat, errors)
        return rebuild(futures, values, skip=errors == "skip")

    def _result(self, future: Future, timeout: float | None) -> Any:
        if self.asynchronous:
            return self._result_async(future, timeout)
        st = future._state
        if st.status == "pending" and st.value is None:  # wait on this thread, not the loop's
            if not st.wait(timeout):
                raise TimeoutError(f"future {future.key!r} did not finish within {timeout} s")
        if st.status == "cancelled":  # known here: raised even once the client is closed
            raise CancelledError(future.key)
        if st.status == "error":
            raise self._exception_of(st)
        value = self._take_inline(st) if st.status == "finished" else None
        if value is not None:  # it came with the news: no fetch
            try:
                result = deserialize(*value)
            except Exception:  # fetched instead: the fetch reports what is wrong
                pass
            else:
                self.inline_results_used += 1
                return result
        return self._sync(self._result_async(future, timeout))

    async def _result_async(self, future: Future, timeout: float | None = None) -> Any:
        st = future._state
        if st.status == "pending" and timeout is not None:
            try:
                await asyncio.wait_for(st.wait_async(), timeout)
            except TimeoutError:
                raise TimeoutError(f"future {future.key!r} did not finish within {timeout} s") from None
        values = await self._gather_values([future])
        return values[future.key]

    async def _gather_values(self, futures: list[Future], errors: str = "raise") -> dict[Key, Any]:
        """``{key: value}`` of the futures that finished; raises the first failure (``"raise"``)."""
        states = [f._state for f in futures]
        await wait_states(states, stop_on_error=errors == "raise")
        wanted: dict[Key, FutureState] = {}
        for f, st in zip(futures, states):
            if st.status == "finished":
                wanted[f.key] = st
            elif errors == "raise" and st.status in ("error", "cancelled"):
                if st.status == "cancelled":
                    raise CancelledError(f.key)
                raise self._exception_of(st)
        return await self._fetch(wanted)

    def _keep_inline(self, value: Any) -> tuple[str, list[bytes]] | None:
        """An inline result (serializer name, frames) to keep, within ``INLINE_BUDGET``."""
        if value is None:
            return None
        size = sum(len(f) for f in value[1])
        if self._inline_bytes + size > INLINE_BUDGET:
            return None
        self._inline_bytes += size
        return value[0], list(value[1])

    def _drop_inline(self, st: FutureState) -> None:
        self._take_inline(st)

    def _take_inline(self, st: FutureState) -> tuple[str, list[bytes]] | None:
        """The inline result of ``st``, once (None: none, or taken already)."""
        value, st.value = st.value, None
        if value is not None:
            self._inline_bytes -= sum(len(f) for f in value[1])
        return value

    async def _fetch(self, states: Mapping[Key, FutureState]) -> dict[Key, Any]:
        """The values of finished keys: inline ones at once, the rest straight from the workers
        that hold them."""
        by_worker: dict[str, list[Key]] = defaultdict(list)
        unknown = []
        data: dict[Key, Any] = {}
        for key, st in states.items():
            value = self._take_inline(st)
            if value is not None:
                try:
                    data[key] = deserialize(*value)
                    self.inline_results_used += 1
                    continue
                except Exception:  # e.g. a module missing here: a fetch reports it properly
                    pass
            if st.who_has:
                by_worker[st.who_has[0]].append(key)
            else:
                unknown.append(key)
        if unknown:
            await self._locate(unknown, by_worker)
        for attempt in range(2):
            if not by_worker:
                break
            jobs = list(by_worker.items())
            results: list[Any]
            if len(jobs) == 1:  # the common case of one result: no task to create
                try:
                    results = [await self._get_data(*jobs[0])]
                except Exception as exc:
                    results = [exc]
            else:
                results = await asyncio.gather(
                    *(self._get_data(address, keys) for address, keys in jobs), return_exceptions=True
                )
            by_worker = defaultdict(list)
            retry = []
            failed = []
            for (address, keys), result in zip(jobs, results):
                if isinstance(result, dict):
                    data.update(result)
                elif attempt == 0 and isinstance(result, (KeyError, OSError)):
                    retry.extend(keys)  # moved or freed there since: ask where it is now
                    failed.append(address)
                else:
                    raise result
            if retry:  # the scheduler answers once they are elsewhere (recomputed if lost)
                await self._locate(retry, by_worker, failed)
        return data

    async def _locate(self, keys: list[Key], by_worker: dict[str, list[Key]], failed: Any = ()) -> None:
        who_has = await self._request("who-has", keys=keys, wait=True, exclude=list(failed))
        for k in keys:
            holders = who_has.get(k)
            st = self._states.get(k)
            if not holders and st is not None and st.status == "pending":  # lost: being recomputed
                await st.wait_async()
                if st.status == "error":
                    raise self._exception_of(st)
                holders = st.who_has
            if not holders:
                raise TaskloomError(f"no worker holds {k!r} any more")
            by_worker[holders[0]].append(k)

    def _exception_of(self, st: FutureState) -> BaseException:
        """The task's exception; the same object for every key that failed with it."""
        cause = st.cause if st.cause is not None else st.key
        exc = self._errors.get(cause)
        if exc is None:
            key = self._aliases.get(cause, cause)
            exc = self._errors[cause] = unpack_exception(st.exception, st.traceback, key)
        return exc
