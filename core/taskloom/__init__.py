"""taskloom: run Python task graphs, unchanged, on pluggable schedulers."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from . import config as config
from . import plugins as _plugins
from .base import compute as compute
from .base import get as get
from .base import is_collection as is_collection
from .base import persist as persist
from .delayed import Delayed as Delayed
from .delayed import delayed as delayed
from .errors import CycleError as CycleError
from .errors import GraphError as GraphError
from .errors import KeysNotFoundError as KeysNotFoundError
from .errors import MissingDependencyError as MissingDependencyError
from .errors import SchedulerNotFoundError as SchedulerNotFoundError
from .errors import TaskloomError as TaskloomError
from .graph import Ref as Ref
from .graph import Task as Task
from .plugins import SchedulerSpec as SchedulerSpec
from .plugins import hookimpl as hookimpl
from .plugins import schedulers as schedulers
from .serialize import Serializer as Serializer
from .worker import WorkerPlugin as WorkerPlugin
from .worker import get_worker as get_worker
from .worker import register_worker_plugin as register_worker_plugin
from .worker import unregister_worker_plugin as unregister_worker_plugin

config.set_defaults_provider(_plugins.config_defaults)  # wiring only: nothing is loaded yet

try:
    __version__ = _version("taskloom")
except _PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "CycleError",
    "Delayed",
    "GraphError",
    "KeysNotFoundError",
    "MissingDependencyError",
    "Ref",
    "SchedulerNotFoundError",
    "SchedulerSpec",
    "Serializer",
    "Task",
    "TaskloomError",
    "WorkerPlugin",
    "compute",
    "config",
    "delayed",
    "get",
    "get_worker",
    "hookimpl",
    "is_collection",
    "persist",
    "register_worker_plugin",
    "schedulers",
    "unregister_worker_plugin",
]
