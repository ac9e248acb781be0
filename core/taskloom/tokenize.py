"""Deterministic tokens for ``pure`` tasks: equal inputs give equal keys, across processes."""

from __future__ import annotations

import hashlib
import pickle
import uuid
from typing import Any

_PLAIN = (int, float, complex, str, bytes, bool, type(None))


def _normalize(obj: Any, depth: int = 0) -> Any:
    if isinstance(obj, _PLAIN):
        return obj
    key = getattr(obj, "__taskloom_tokenize__", None)
    if key is not None:
        return ("__token__", key())
    if depth > 50:
        return ("__deep__", uuid.uuid4().hex)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [_normalize(x, depth + 1) for x in obj])
    if isinstance(obj, (set, frozenset)):
        return (type(obj).__name__, sorted(repr(_normalize(x, depth + 1)) for x in obj))
    if isinstance(obj, dict):
        items = [(repr(_normalize(k, depth + 1)), _normalize(v, depth + 1)) for k, v in obj.items()]
        items.sort(key=lambda kv: kv[0])
        return ("dict", items)
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if callable(obj) and module and qualname and "<" not in qualname:
        return ("callable", module, qualname)
    try:
        return ("pickle", hashlib.sha1(pickle.dumps(obj, protocol=5)).hexdigest())
    except Exception:
        try:
            import cloudpickle

            return ("cloudpickle", hashlib.sha1(cloudpickle.dumps(obj)).hexdigest())
        except Exception:
            return ("unique", uuid.uuid4().hex)  # cannot be hashed stably: never shared


def tokenize(*args: Any, **kwargs: Any) -> str:
    """A hex token that is equal for equal arguments (objects that cannot be hashed get a fresh one)."""
    payload = repr(_normalize((args, kwargs)))
    return hashlib.sha1(payload.encode(), usedforsecurity=False).hexdigest()[:24]
