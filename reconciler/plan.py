"""The plan: the minimal ordered list of changes that makes live equal desired.

Pure: it compares two ``KernelState`` values and knows nothing of sockets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .model import KernelObject, attr_diff

__all__ = ["Change", "OpResult", "Plan", "make_plan"]

Op = Literal["create", "update", "delete"]


@dataclass(frozen=True, slots=True)
class Change:
    """One operation.  ``obj`` is the desired object (create, update) or the
    live object to remove (delete); ``live`` is the live object an update
    replaces."""

    op: Op
    obj: KernelObject
    live: KernelObject | None = None

    @property
    def kind(self) -> str:
        return self.obj.KIND

    def changed(self) -> dict[str, tuple[Any, Any]]:
        """For an update: ``{attribute: (desired, live)}``."""
        if self.op != "update" or self.live is None:
            return {}
        return attr_diff(self.obj, self.live)


@dataclass(frozen=True, slots=True)
class OpResult:
    """What became of one change: ok, or an errno and a message naming the object."""

    change: Change
    ok: bool
    errno: int | None = None
    message: str = ""
    skipped: bool = False   # not attempted because something it needs failed
