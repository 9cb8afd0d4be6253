"""Packages whose names import their module on first use (so that importing the package stays
light: no web framework, no torch, until the name is asked for)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` comes from ``modules[name]``, imported
    when first asked for.

    Example:
        >>> __getattr__ = lazy_getattr("pkg", {"dumps": "json"})
        >>> __getattr__("dumps")([1])
        '[1]'
    """

    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(importlib.import_module(modules[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
