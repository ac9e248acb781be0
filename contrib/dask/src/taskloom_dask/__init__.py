"""taskloom-dask: Dask collections on taskloom schedulers, taskloom graphs on dask.distributed.

* ``x.compute(scheduler=taskloom_dask.get)`` -- a Dask collection on taskloom's default scheduler;
  ``with taskloom_dask.use("processes"): ...`` -- on any installed taskloom scheduler.
* ``taskloom.compute(x, scheduler="dask")`` -- a taskloom graph on the current
  ``distributed.Client`` (or ``client=``): the ``dask`` scheduler this package registers.

Importing this package imports neither Dask nor distributed (the taskloom plugin loads it in
every taskloom session); they are imported on first use.
"""

from .distributed import NoClientError
from .get import Get, bind, get, use

__all__ = ["Get", "NoClientError", "bind", "get", "use"]
