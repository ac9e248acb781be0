"""``delayed`` and ``Delayed``: build task graphs from ordinary Python calls.

``delayed(func)`` wraps a function so that calling it records a task instead of running it;
``delayed(obj)`` wraps a value.  Attribute access, calls, indexing and arithmetic on a
:class:`Delayed` record further tasks.  Each ``Delayed`` keeps its own task and the ``Delayed``
objects it depends on, so building a graph of *n* calls costs O(n) (no graph dicts are merged
per call) and the graph is materialised once, by walking those links, when it is computed.

Keys: ``name-<token>``.  With ``pure=True`` the token is a hash of the function and its
arguments, so equal calls share one key (and one computation); otherwise it is random.  A call
may fix its key with the ``taskloom_key_name=`` keyword.
"""

from __future__ import annotations

import functools
import operator
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from .graph import Key, Ref, Task, _identity
from .tokenize import tokenize

_CONTAINERS = (list, tuple, dict, set, frozenset)


def _unpack(obj: Any, deps: list[Delayed]) -> Any:
    """``obj`` with each Delayed inside replaced by a Ref to its key; the Delayeds go to ``deps``."""
    t = type(obj)
    if isinstance(obj, Delayed):
        deps.append(obj)
        return Ref(obj._key)
    if t is list:
        return [_unpack(x, deps) for x in obj]
    if t is tuple:
        return tuple([_unpack(x, deps) for x in obj])
    if t is dict:
        return {k: _unpack(v, deps) for k, v in obj.items()}
    if t is set or t is frozenset:
        # sets cannot hold Refs to unhashable values; build them at run time
        return Task(t, [_unpack(x, deps) for x in obj]) if _has_delayed(obj) else obj
    return obj


def _has_delayed(obj: Any) -> bool:
    if isinstance(obj, Delayed):
        return True
    if isinstance(obj, _CONTAINERS):
        items = obj.values() if isinstance(obj, dict) else obj
        return any(_has_delayed(x) for x in items)
    return False


def _apply(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return func(*args, **kwargs)


def _funcname(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    return str(name).lower().replace("<", "").replace(">", "") or "call"


class Delayed:
    """A value that will exist once its task graph is computed."""

    __slots__ = ("__weakref__", "_deps", "_key", "_length", "_task")

    def __init__(self, key: Key, task: Any, deps: tuple[Delayed, ...] = (), length: int | None = None):
        self._key = key
        self._task = task
        self._deps = deps
        self._length = length

    @property
    def key(self) -> Key:
        """This value's key in the graph."""
        return self._key

    # -- the collection protocol ----------------------------------------------------------
    def __taskloom_graph__(self) -> dict[Key, Any]:
        graph: dict[Key, Any] = {}
        stack = [self]
        while stack:
            d = stack.pop()
            if d._key not in graph:
                graph[d._key] = d._task
                stack.extend(d._deps)
        return graph

    def __taskloom_keys__(self) -> Key:
        return self._key

    def __taskloom_postcompute__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _identity, ()

    def __taskloom_postpersist__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _persisted, (self._key, self._length)

    def __taskloom_tokenize__(self) -> Key:
        return self._key

    def compute(self, **kwargs: Any) -> Any:
        """Compute this value (``scheduler=`` and other options as for :func:`taskloom.compute`)."""
        from .base import compute

        return compute(self, **kwargs)[0]

    def persist(self, **kwargs: Any) -> Delayed:
        """Compute this value and return a ``Delayed`` that holds it."""
        from .base import persist

        result: Delayed = persist(self, **kwargs)[0]
        return result

    def dependencies(self) -> tuple[Delayed, ...]:
        """The ``Delayed`` objects this one's task refers to directly."""
        return self._deps

    # -- recording further tasks -----------------------------------------------------------
    def __repr__(self) -> str:
        return f"Delayed({self._key!r})"

    def __hash__(self) -> int:
        return hash(self._key)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))))

    def __getattr__(self, attr: str) -> Delayed:
        if attr.startswith("_"):  # private and dunder names are probed by tools; never tasks
            raise AttributeError(attr)
        return _call(getattr, (self, attr), {}, name="getattr", pure=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Delayed:
        name = kwargs.pop("taskloom_key_name", None)
        pure = kwargs.pop("pure", False)
        return _call(_apply, (self, *args), kwargs, name="call", pure=pure, key=name)

    def __getitem__(self, index: Any) -> Delayed:
        return _call(operator.getitem, (self, index), {}, name="getitem", pure=True)

    def __iter__(self) -> Iterator[Delayed]:
        if self._length is None:
            raise TypeError(
                f"{self!r} has no known length, so it cannot be iterated or unpacked; "
                "pass nout= to delayed() for functions that return a fixed number of values"
            )
        return (self[i] for i in range(self._length))

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError(f"{self!r} has no known length; pass nout= to delayed()")
        return self._length

    def __bool__(self) -> bool:
        raise TypeError(f"the truth value of {self!r} is not known until it is computed")

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in Delayed.__slots__:
            object.__setattr__(self, attr, value)
        else:
            raise TypeError(f"Delayed objects are immutable; cannot set attribute {attr!r}")


def _persisted(values: dict[Key, Any], key: Key, length: int | None) -> Delayed:
    return Delayed(key, Task(_identity, values[key]), (), length)


def _bind_operator(op: Callable[..., Any], reflected: bool = False) -> Callable[..., Delayed]:
    name = op.__name__.strip("_")

    def method(self: Delayed, *others: Any) -> Delayed:
        args = (others[0], self) if reflected else (self, *others)
        return _call(op, args, {}, name=name, pure=True)

    method.__name__ = f"__r{name}__" if reflected else f"__{name}__"
    return method


_op: Callable[..., Any]
for _op in (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
    operator.pow, operator.matmul, operator.and_, operator.or_, operator.xor, operator.lshift,
    operator.rshift,
):  # fmt: skip
    _n = _op.__name__.strip("_")
    setattr(Delayed, f"__{_n}__", _bind_operator(_op))
    setattr(Delayed, f"__r{_n}__", _bind_operator(_op, reflected=True))
for _op in (operator.lt, operator.le, operator.gt, operator.ge, operator.neg, operator.pos,
            operator.abs, operator.invert):  # fmt: skip
    setattr(Delayed, f"__{_op.__name__.strip('_')}__", _bind_operator(_op))


def _call(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    name: str,
    pure: bool,
    key: Key | None = None,
    nout: int | None = None,
) -> Delayed:
    deps: list[Delayed] = []
    targs = [_unpack(a, deps) for a in args]
    tkwargs = {k: _unpack(v, deps) for k, v in kwargs.items()}
    if key is None:
        token = tokenize(func, args, kwargs) if pure else uuid.uuid4().hex
        key = f"{name}-{token}"
    unique = tuple({id(d): d for d in deps}.values())
    return Delayed(key, Task(func, *targs, **tkwargs), unique, nout)


class DelayedFunction:
    """A function whose calls record tasks: ``delayed(func)``."""

    __slots__ = ("__dict__", "func", "name", "nout", "pure")

    def __init__(self, func: Callable[..., Any], pure: bool, name: str | None, nout: int | None):
        self.func = func
        self.pure = pure
        self.name = name
        self.nout = nout
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Delayed:
        key = kwargs.pop("taskloom_key_name", None)
        pure = kwargs.pop("pure", self.pure)
        return _call(
            self.func, args, kwargs, name=self.name or _funcname(self.func), pure=pure, key=key,
            nout=self.nout,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"delayed({self.func!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (DelayedFunction, (self.func, self.pure, self.name, self.nout))


_NO_OBJECT: Any = object()


def delayed(
    obj: Any = _NO_OBJECT, *, pure: bool = False, name: str | None = None, nout: int | None = None
) -> Any:
    """Wrap a function so calls record tasks, or a value so it becomes part of a graph.

    * ``delayed(func)`` / ``@delayed`` / ``@delayed(pure=True)``: calls return :class:`Delayed`.
      ``pure=True`` gives equal calls equal keys; ``name=`` sets the key prefix; ``nout=n`` makes
      the result iterable as ``n`` values (``a, b = f(x)``).
    * ``delayed(value, name="k")``: a ``Delayed`` holding ``value`` (under key ``k`` if given);
      Delayed objects inside lists, tuples, dicts and sets are computed first.
    """
    if obj is _NO_OBJECT:  # @delayed(pure=True): options first, the function next
        return functools.partial(delayed, pure=pure, name=name, nout=nout)
    if isinstance(obj, Delayed):
        return obj
    if isinstance(obj, DelayedFunction):
        if (pure, name, nout) == (False, None, None):
            return obj
        return DelayedFunction(obj.func, pure, name, nout)
    if callable(obj):
        return DelayedFunction(obj, pure, name, nout)
    deps: list[Delayed] = []
    value = _unpack(obj, deps)
    token = tokenize(obj) if pure else uuid.uuid4().hex
    key = name if name is not None else f"{type(obj).__name__.lower()}-{token}"
    unique = tuple({id(d): d for d in deps}.values())
    return Delayed(key, Task(_identity, value), unique, nout)
