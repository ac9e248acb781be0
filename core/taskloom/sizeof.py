"""``sizeof``: an estimate of the bytes a value holds in memory, cheap enough to call per task."""

from __future__ import annotations

import sys
from typing import Any

_SAMPLE = 10  # items of a long container measured; the rest are assumed alike


def sizeof(value: Any, _depth: int = 0) -> int:
    """Bytes ``value`` holds in memory.

    ``nbytes`` for NumPy arrays and buffers, pandas' ``memory_usage(deep=True)`` for frames and
    series, the sum of the items for lists, tuples, sets and dicts (a sample of ten for long
    ones, scaled), else ``sys.getsizeof``.
    """
    t = type(value)
    if t is int or t is float or t is bool or value is None:
        return sys.getsizeof(value)
    if t is bytes or t is bytearray or t is str:
        return sys.getsizeof(value)
    if t is memoryview:
        return value.nbytes
    if isinstance(value, type):
        return sys.getsizeof(value)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    usage = getattr(value, "memory_usage", None)
    if callable(usage):
        try:
            total = usage(deep=True)
            return int(total.sum() if hasattr(total, "sum") else total)
        except Exception:
            pass
    try:
        own = sys.getsizeof(value)
    except Exception:
        own = 64
    if _depth > 3:
        return own
    items: list[Any]
    if isinstance(value, list | tuple | set | frozenset):
        n = len(value)
        items = list(value) if n <= _SAMPLE else list(value)[:: n // _SAMPLE][:_SAMPLE]
    elif isinstance(value, dict):
        pairs = list(value.items())
        n = 2 * len(pairs)
        if len(pairs) > _SAMPLE:
            pairs = pairs[:: len(pairs) // _SAMPLE][:_SAMPLE]
        items = [x for pair in pairs for x in pair]
    else:
        return own
    if not items:
        return own
    sample = sum(sizeof(x, _depth + 1) for x in items)
    return own + int(sample * n / len(items))
