"""``taskloom.distributed``: the Client, LocalCluster and Future of the taskloom-distributed plugin.

The core does not depend on the plugin: importing this module without it installed raises an
ImportError that says what to install.
"""

try:
    from taskloom_distributed import (
        CancelledError,
        Client,
        Future,
        LocalCluster,
        Scheduler,
        Worker,
        default_client,
    )
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "taskloom.distributed needs the distributed scheduler plugin: pip install taskloom-distributed"
    ) from exc

__all__ = ["CancelledError", "Client", "Future", "LocalCluster", "Scheduler", "Worker", "default_client"]
