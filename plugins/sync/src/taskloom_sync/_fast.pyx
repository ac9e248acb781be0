# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, infer_types=False
"""Compiled planner and executor of the ``sync`` scheduler, on integer task indices.

:func:`run` does, for the common shape of graph, what ``taskloom.order.plan`` followed by
``taskloom.local.execute_inline`` do -- the same culling, the same depth-first post-order,
the same releasing of intermediates, the same exceptions -- without a ``Task`` object, a
``dict`` of values or a ``Counter`` per compute:

* each key the requested keys need gets an index the first time it is referred to; the
  per-index state (graph value, key, value, reference count, arguments) lives in C arrays;
* a classic task ``(func, *args)`` is classified once with the rules of
  ``taskloom.graph.compile_tuple``: an argument is a literal, a reference to a key (a ``str``,
  ``int`` or ``tuple`` equal to a key; a ``bytes``, ``float``, ``bool``, ``complex`` or ``None``
  equal to one) or a flat list of keys;
* the tasks run in the planner's post-order with one vectorcall each, their arguments read
  from the value array; a value is dropped as soon as its last dependent has run.

Anything else -- a graph that is not a ``dict``, a ``Task``/``Ref`` value, a nested task, a
dict argument, an alias, a list that is not all keys, a missing requested key, a cycle -- makes
:func:`run` return ``None`` *before any task has run*, and the caller uses the Python path,
which is the reference semantics and raises the usual errors.
"""

from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint8_t
from libc.stdlib cimport free, malloc, realloc

from taskloom.graph import Ref, Task, to_task
from taskloom.local import annotate


cdef extern from *:
    """
    #define TL_TYPE(o) ((PyObject *)Py_TYPE(o))
    #define TL_VECTORCALL_OFFSET PY_VECTORCALL_ARGUMENTS_OFFSET
    """
    PyObject* TL_TYPE(PyObject* o)
    size_t TL_VECTORCALL_OFFSET


cdef extern from "Python.h":
    PyObject* PyObject_Vectorcall(PyObject* callable, PyObject** args, size_t nargsf, PyObject* kwnames)
    PyObject* PyDict_GetItemWithError(PyObject* d, PyObject* key)
    int PyDict_SetItem(PyObject* d, PyObject* key, PyObject* value) except -1
    Py_ssize_t PyDict_Size(PyObject* d)
    int PyCallable_Check(PyObject* o)
    PyObject* PyErr_Occurred()
    int PyErr_ExceptionMatches(PyObject* exc)
    void PyErr_Clear()
    PyObject* PyExc_TypeError
    Py_ssize_t PyLong_AsSsize_t(PyObject* o)
    Py_ssize_t PyTuple_GET_SIZE(PyObject* o)
    PyObject* PyTuple_GET_ITEM(PyObject* o, Py_ssize_t i)
    Py_ssize_t PyList_GET_SIZE(PyObject* o)
    PyObject* PyList_GET_ITEM(PyObject* o, Py_ssize_t i)
    PyObject* PyList_New(Py_ssize_t n)
    void PyList_SET_ITEM(PyObject* o, Py_ssize_t i, PyObject* v)
    void Py_INCREF(PyObject* o)
    void Py_DECREF(PyObject* o)
    void Py_XDECREF(PyObject* o)


cdef enum:
    # argument kinds (>= 0: the index of the key it refers to; <= LIST: list number LIST - kind)
    LITERAL = -1
    LIST = -2
    # _lookup's answers besides an index
    NOT_A_KEY = -1
    UNHASHABLE = -3
    # index states
    UNSEEN = 0
    EXPANDED = 1
    DONE = 2

cdef PyObject* T_STR = <PyObject*>str
cdef PyObject* T_INT = <PyObject*>int
cdef PyObject* T_TUPLE = <PyObject*>tuple
cdef PyObject* T_LIST = <PyObject*>list
cdef PyObject* T_DICT = <PyObject*>dict
cdef PyObject* T_BYTES = <PyObject*>bytes
cdef PyObject* T_FLOAT = <PyObject*>float
cdef PyObject* T_BOOL = <PyObject*>bool
cdef PyObject* T_COMPLEX = <PyObject*>complex
_NoneType = type(None)
cdef PyObject* T_NONE = <PyObject*>_NoneType
cdef PyObject* T_REF = <PyObject*>Ref
cdef PyObject* T_TASK = <PyObject*>Task


cdef inline bint _other_atomic(PyObject* t) noexcept:
    """``t`` is one of ``taskloom.graph.ATOMIC_TYPES`` other than ``str`` and ``int``."""
    return t == T_BYTES or t == T_FLOAT or t == T_BOOL or t == T_COMPLEX or t == T_NONE


cdef inline bint _is_task_tuple(PyObject* o) noexcept:
    """``o`` is a classic task: a non-empty tuple with a callable first."""
    return (
        TL_TYPE(o) == T_TUPLE
        and PyTuple_GET_SIZE(o) > 0
        and PyCallable_Check(PyTuple_GET_ITEM(o, 0))
    )


cdef struct IntVec:
    int32_t* data
    Py_ssize_t size
    Py_ssize_t cap


cdef struct PtrVec:
    PyObject** data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _grow(void** data, Py_ssize_t* cap, Py_ssize_t need, size_t item) except -1:
    cdef Py_ssize_t new_cap = cap[0] * 2 if cap[0] else 64
    while new_cap < need:
        new_cap *= 2
    cdef void* p = realloc(data[0], <size_t>new_cap * item)
    if p == NULL:
        raise MemoryError()
    data[0] = p
    cap[0] = new_cap
    return 0


cdef inline int _ipush(IntVec* v, int32_t x) except -1:
    if v.size == v.cap:
        _grow(<void**>&v.data, &v.cap, v.size + 1, sizeof(int32_t))
    v.data[v.size] = x
    v.size += 1
    return 0


cdef inline int _ppush(PtrVec* v, PyObject* x) except -1:
    if v.size == v.cap:
        _grow(<void**>&v.data, &v.cap, v.size + 1, sizeof(PyObject*))
    v.data[v.size] = x
    v.size += 1
    return 0


cdef class _Run:
    """One compute: the plan in C arrays, then its execution.  Holds a reference to every object it stores."""

    cdef dict graph
    cdef dict ids  # key -> index, for every key referred to so far
    # per index
    cdef Py_ssize_t n, cap
    cdef PyObject** spec  # the graph's value (owned)
    cdef PyObject** key  # the key as the planner reached it (owned; NULL until expanded)
    cdef PyObject** val  # the value: a literal, or a task's result once run (owned)
    cdef uint8_t* state
    cdef int32_t* refcount  # dependents still to run, plus one per time it is requested
    cdef int32_t* mark  # the last task that listed it as a dependency (dependencies without repeats)
    cdef int32_t* arg_start  # into kinds
    cdef int32_t* dep_start  # into deps
    cdef int32_t* dep_count
    # flat arrays
    cdef IntVec kinds  # one per argument of each expanded task
    cdef IntVec deps  # each task's dependencies without repeats, in argument order
    cdef PtrVec dep_keys  # the key objects of ``deps`` (borrowed; planning only)
    cdef IntVec list_start  # into members, per list argument, plus a final end marker
    cdef IntVec members  # the indices of each list argument's keys
    cdef IntVec order  # task indices in post-order
    cdef IntVec outputs  # the index of each requested key
    cdef IntVec stack
    cdef PtrVec stack_keys  # borrowed
    cdef Py_ssize_t max_args
    cdef int32_t failed

    def __cinit__(self, dict graph):
        self.graph = graph
        self.ids = {}
        self.failed = -1

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.n):
            Py_XDECREF(self.spec[i])
            Py_XDECREF(self.key[i])
            Py_XDECREF(self.val[i])
        free(self.spec)
        free(self.key)
        free(self.val)
        free(self.state)
        free(self.refcount)
        free(self.mark)
        free(self.arg_start)
        free(self.dep_start)
        free(self.dep_count)
        free(self.kinds.data)
        free(self.deps.data)
        free(self.dep_keys.data)
        free(self.list_start.data)
        free(self.members.data)
        free(self.order.data)
        free(self.outputs.data)
        free(self.stack.data)
        free(self.stack_keys.data)

    cdef int _reserve(self) except -1:
        """Room for one more index."""
        if self.n < self.cap:
            return 0
        cdef Py_ssize_t cap = self.cap * 2 if self.cap else 256
        cdef Py_ssize_t limit = PyDict_Size(<PyObject*>self.graph)
        if cap > limit:
            cap = limit if limit > self.n else self.n + 1
        self.spec = <PyObject**>_realloc(self.spec, cap * sizeof(PyObject*))
        self.key = <PyObject**>_realloc(self.key, cap * sizeof(PyObject*))
        self.val = <PyObject**>_realloc(self.val, cap * sizeof(PyObject*))
        self.state = <uint8_t*>_realloc(self.state, cap * sizeof(uint8_t))
        self.refcount = <int32_t*>_realloc(self.refcount, cap * sizeof(int32_t))
        self.mark = <int32_t*>_realloc(self.mark, cap * sizeof(int32_t))
        self.arg_start = <int32_t*>_realloc(self.arg_start, cap * sizeof(int32_t))
        self.dep_start = <int32_t*>_realloc(self.dep_start, cap * sizeof(int32_t))
        self.dep_count = <int32_t*>_realloc(self.dep_count, cap * sizeof(int32_t))
        self.cap = cap
        return 0

    cdef int32_t _lookup(self, PyObject* k) except -2:
        """The index of key ``k``, or NOT_A_KEY, or UNHASHABLE (the TypeError is cleared)."""
        cdef PyObject* found = PyDict_GetItemWithError(<PyObject*>self.ids, k)
        if found != NULL:
            return <int32_t>PyLong_AsSsize_t(found)
        if PyErr_Occurred() == NULL:
            found = PyDict_GetItemWithError(<PyObject*>self.graph, k)
            if found != NULL:
                return self._new_index(k, found)
            if PyErr_Occurred() == NULL:
                return NOT_A_KEY
        if PyErr_ExceptionMatches(PyExc_TypeError):  # an unhashable literal inside a tuple
            PyErr_Clear()
            return UNHASHABLE
        return -2  # another error: propagate (the caller falls back to the Python path)

    cdef int32_t _new_index(self, PyObject* k, PyObject* value) except -2:
        self._reserve()
        cdef int32_t i = <int32_t>self.n
        cdef object number = i
        PyDict_SetItem(<PyObject*>self.ids, k, <PyObject*>number)
        Py_INCREF(value)
        self.spec[i] = value
        self.key[i] = NULL
        self.val[i] = NULL
        self.state[i] = UNSEEN
        self.refcount[i] = 0
        self.mark[i] = -1
        self.n += 1
        return i

    cdef inline int _add_dep(self, int32_t task, int32_t d, PyObject* k) except -1:
        if self.mark[d] != task:
            self.mark[d] = task
            _ipush(&self.deps, d)
            _ppush(&self.dep_keys, k)
            self.refcount[d] += 1
        return 0

    cdef inline int _flat_arg(self, int32_t j, PyObject* a) except -1:
        """An argument that may be a key: a reference to it if it is one, else a literal."""
        cdef int32_t r = self._lookup(a)
        if r >= 0:
            _ipush(&self.kinds, r)
            self._add_dep(j, r, a)
        else:
            _ipush(&self.kinds, LITERAL)
        return 0

    cdef int _compile(self, int32_t j) except -2:
        """Classify task ``j``'s arguments as ``compile_tuple`` does; 1 if done, 0 to give up."""
        cdef PyObject* value = self.spec[j]
        cdef Py_ssize_t nargs = PyTuple_GET_SIZE(value) - 1
        cdef Py_ssize_t p, q, size
        cdef PyObject* a
        cdef PyObject* x
        cdef PyObject* t
        cdef int32_t r
        self.arg_start[j] = <int32_t>self.kinds.size
        self.dep_start[j] = <int32_t>self.deps.size
        if nargs > self.max_args:
            self.max_args = nargs
        for p in range(1, nargs + 1):
            a = PyTuple_GET_ITEM(value, p)
            t = TL_TYPE(a)
            if t == T_STR or t == T_INT or t == T_TUPLE:
                if t == T_TUPLE and PyTuple_GET_SIZE(a) > 0 and PyCallable_Check(PyTuple_GET_ITEM(a, 0)):
                    return 0  # a nested task
                self._flat_arg(j, a)
            elif t == T_LIST:
                size = PyList_GET_SIZE(a)
                _ipush(&self.kinds, LIST - <int32_t>self.list_start.size)
                _ipush(&self.list_start, <int32_t>self.members.size)
                for q in range(size):
                    x = PyList_GET_ITEM(a, q)
                    t = TL_TYPE(x)
                    if t == T_TUPLE:
                        if PyTuple_GET_SIZE(x) > 0 and PyCallable_Check(PyTuple_GET_ITEM(x, 0)):
                            return 0
                    elif t != T_STR and t != T_INT and not _other_atomic(t):
                        return 0
                    r = self._lookup(x)
                    if r < 0:
                        return 0  # not all keys: the general path
                    _ipush(&self.members, r)
                    self._add_dep(j, r, x)
            elif t == T_DICT or t == T_REF or t == T_TASK:
                return 0
            elif _other_atomic(t):
                self._flat_arg(j, a)
            else:
                _ipush(&self.kinds, LITERAL)
        self.dep_count[j] = <int32_t>(self.deps.size - self.dep_start[j])
        return 1

    cdef int _plan(self, list outputs) except -2:
        """Cull, validate and order, as ``taskloom.order.plan``; 1 if done, 0 to give up."""
        cdef Py_ssize_t i, q
        cdef int32_t root, j, d
        cdef PyObject* k
        cdef bint pushed
        for o in outputs:  # KeysNotFoundError / TypeError: the Python path raises them
            try:
                if o not in self.graph:
                    return 0
            except TypeError:
                return 0
        for i in range(len(outputs)):
            k = <PyObject*>outputs[i]
            root = self._lookup(k)
            _ipush(&self.outputs, root)
            self.refcount[root] += 1
            if self.state[root] == DONE:
                continue
            _ipush(&self.stack, root)
            _ppush(&self.stack_keys, k)
            while self.stack.size:
                j = self.stack.data[self.stack.size - 1]
                if self.state[j] != UNSEEN:  # second visit, or a stale duplicate
                    self.stack.size -= 1
                    self.stack_keys.size -= 1
                    if self.state[j] != DONE:
                        self.state[j] = DONE
                        _ipush(&self.order, j)
                    continue
                k = self.stack_keys.data[self.stack_keys.size - 1]
                Py_INCREF(k)
                self.key[j] = k
                if not _is_task_tuple(self.spec[j]):
                    literal = to_task(<object>self.spec[j], self.graph)
                    if isinstance(literal, Task):  # an alias, a Task or references in a container
                        return 0
                    Py_INCREF(<PyObject*>literal)
                    self.val[j] = <PyObject*>literal
                    self.state[j] = DONE
                    self.stack.size -= 1
                    self.stack_keys.size -= 1
                    continue
                if not self._compile(j):
                    return 0
                self.state[j] = EXPANDED
                pushed = False
                q = self.deps.size - 1
                while q >= self.dep_start[j]:
                    d = self.deps.data[q]
                    if self.state[d] == UNSEEN:
                        _ipush(&self.stack, d)
                        _ppush(&self.stack_keys, self.dep_keys.data[q])
                        pushed = True
                    elif self.state[d] == EXPANDED:  # a cycle: the Python path names its keys
                        return 0
                    q -= 1
                if not pushed:
                    self.stack.size -= 1
                    self.stack_keys.size -= 1
                    self.state[j] = DONE
                    _ipush(&self.order, j)
        _ipush(&self.list_start, <int32_t>self.members.size)  # end of the last list
        return 1

    cdef int _execute(self) except -1:
        """Run the tasks in order; on an exception, set ``failed`` and leave it raised."""
        cdef PyObject** buffer = <PyObject**>malloc((self.max_args + 1) * sizeof(PyObject*))
        if buffer == NULL:
            raise MemoryError()
        cdef PyObject** argv = buffer + 1  # argv[-1] is ours: PY_VECTORCALL_ARGUMENTS_OFFSET
        cdef PyObject** val = self.val
        cdef int32_t* kinds = self.kinds.data
        cdef int32_t* deps = self.deps.data
        cdef int32_t* list_start = self.list_start.data
        cdef int32_t* members = self.members.data
        cdef int32_t* refcount = self.refcount
        cdef Py_ssize_t step, p, q, nargs, start, lists
        cdef int32_t j, kind, d, m
        cdef PyObject* value
        cdef PyObject* result
        cdef PyObject* items
        for step in range(self.order.size):
            j = self.order.data[step]
            value = self.spec[j]
            nargs = PyTuple_GET_SIZE(value) - 1
            start = self.arg_start[j]
            lists = 0
            for p in range(nargs):
                kind = kinds[start + p]
                if kind >= 0:
                    argv[p] = val[kind]
                elif kind == LITERAL:
                    argv[p] = PyTuple_GET_ITEM(value, p + 1)
                else:
                    m = LIST - kind
                    items = PyList_New(list_start[m + 1] - list_start[m])
                    if items == NULL:
                        _release_lists(argv, kinds + start, p)
                        self.failed = j
                        free(buffer)
                        return -1
                    for q in range(list_start[m], list_start[m + 1]):
                        Py_INCREF(val[members[q]])
                        PyList_SET_ITEM(items, q - list_start[m], val[members[q]])
                    argv[p] = items
                    lists += 1
            result = PyObject_Vectorcall(
                PyTuple_GET_ITEM(value, 0), argv, <size_t>nargs | TL_VECTORCALL_OFFSET, NULL
            )
            if lists:
                _release_lists(argv, kinds + start, nargs)
            if result == NULL:
                self.failed = j
                free(buffer)
                return -1
            val[j] = result
            for q in range(self.dep_start[j], self.dep_start[j] + self.dep_count[j]):
                d = deps[q]
                refcount[d] -= 1
                if refcount[d] == 0:
                    result = val[d]
                    val[d] = NULL
                    Py_XDECREF(result)
        free(buffer)
        return 0

    cdef list _results(self):
        return [<object>self.val[self.outputs.data[i]] for i in range(self.outputs.size)]


cdef inline void _release_lists(PyObject** argv, int32_t* kinds, Py_ssize_t nargs) noexcept:
    cdef Py_ssize_t p
    for p in range(nargs):
        if kinds[p] <= LIST:
            Py_DECREF(argv[p])


cdef void* _realloc(void* p, size_t size) except NULL:
    cdef void* q = realloc(p, size)
    if q == NULL:
        raise MemoryError()
    return q


def run(graph, keys):
    """The values of ``keys`` (a list of keys of ``graph``), or ``None`` if the Python path must run.

    ``None`` comes back before any task has run.  A task's exception propagates unchanged, with
    the note :func:`taskloom.local.annotate` adds.
    """
    if type(graph) is not dict or type(keys) is not list:
        return None
    cdef _Run state = _Run(graph)
    try:
        if not state._plan(keys):
            return None
    except Exception:  # an error while planning: the Python path raises it as usual
        return None
    try:
        state._execute()
    except BaseException as exc:
        if state.failed >= 0:
            annotate(exc, <object>state.key[state.failed], "sync")
        raise
    return state._results()
