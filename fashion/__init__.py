"""fashion: tag product photos with their catalogue attributes in one forward pass."""

from __future__ import annotations

import importlib
from collections.abc import Callable

__version__ = "0.1.0"


def lazy_exports(package: str, modules: dict[str, list[str]]) -> tuple[Callable[[str], object], list[str]]:
    """A stage package's `__getattr__` and `__all__`: each name is imported from its module on first use.

    Why: `fashion-predict`, `fashion-serve` and every Spark worker import a few inference modules; eager
    re-exports in the package `__init__`s pulled Lightning and timm into all of them (10 s of start-up on
    2 cores), although onnxruntime scoring needs neither.
    """
    owner = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in owner:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(owner[name]), name)

    return __getattr__, list(owner)
