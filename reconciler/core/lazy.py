"""A package's public names loaded on first use (PEP 562 module ``__getattr__``).

``reconciler`` and ``reconciler.rules`` export names from modules a command may
never need (the plan pipeline, the iptables and nftables backends); importing
them eagerly was most of what ``--version`` and ``plan --offline`` paid.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, namespace: dict[str, Any], sources: dict[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: a name in ``sources`` is imported from its module on
    first use and kept in ``namespace`` (the package's globals), so the next look-up is an
    ordinary attribute; any other name is an AttributeError, as usual."""

    def __getattr__(name: str) -> Any:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        namespace[name] = value
        return value

    return __getattr__
