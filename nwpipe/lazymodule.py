"""A module imported on first attribute access, for start-up time."""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for the module ``name`` until an attribute of it is first read.

    For modules that only some runs use (``sqlite3`` when a queue is opened): the
    import happens at the first ``module.attr``; later reads find it in sys.modules.
    """

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported on first use>"
