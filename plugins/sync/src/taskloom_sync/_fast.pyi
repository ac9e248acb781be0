"""Type stub of the compiled planner and executor of the ``sync`` scheduler (``_fast.pyx``)."""

from collections.abc import Mapping
from typing import Any

def run(graph: Mapping[Any, Any], keys: list[Any]) -> list[Any] | None: ...
