"""The plan: the minimal ordered list of changes that makes live equal desired.

Pure: it compares two ``KernelState`` values and knows nothing of sockets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .model import KernelObject, attr_diff

__all__ = ["Change", "Conflict", "OpResult", "Plan", "make_plan"]

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


#: Creation order: a device before its address, neighbour and FDB entries
#: before the route that needs them (so the kernel never has to resolve the
#: onlink gateway).  Deletions run first, in the reverse order.
_CREATE_ORDER = ("link", "address", "neigh", "fdb", "route")
_DELETE_ORDER = tuple(reversed(_CREATE_ORDER))


def _dev_of(obj: KernelObject) -> str | None:
    return getattr(obj, "dev", None)


def _sort_key(obj: KernelObject):
    # Keys mix str and None (a DirectRouting route's dev); make them sortable
    # so the plan's order never depends on the order leases arrived in.
    key = obj.key
    if isinstance(key, tuple):
        return tuple("" if k is None else k for k in key)
    return key


@dataclass(frozen=True, slots=True)
class Conflict:
    """A desired object whose kernel key is held by a foreign object.

    Today only routes: a route of the main table for a peer's subnet that is
    not ours (an administrator's static route, flanneld's DirectRouting
    route via the underlay).  ``replace`` would silently take it over; the
    ownership promise says we never change what is not ours, so the plan
    leaves it and reports it instead.
    """

    desired: KernelObject
    foreign: KernelObject


@dataclass(frozen=True, slots=True)
class Plan:
    """An ordered tuple of changes, and the conflicts that block the rest.

    In sync means nothing to change and nothing blocked.
    """

    changes: tuple[Change, ...] = ()
    conflicts: tuple[Conflict, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not self.changes and not self.conflicts

    def summary(self) -> dict[str, int]:
        out = {"create": 0, "update": 0, "delete": 0}
        for c in self.changes:
            out[c.op] += 1
        return out

    def __len__(self) -> int:
        return len(self.changes)

    def __iter__(self):
        return iter(self.changes)


def make_plan(desired, live, foreign_routes=None) -> Plan:
    """The minimal ordered changes turning ``live`` into ``desired``.

    ``live`` must already be filtered by the ownership policy: every live
    object not desired is deleted.  An object that already matches produces
    nothing, so a converged kernel yields an empty plan and correct routes
    are never rewritten.

    ``foreign_routes`` maps route keys to foreign routes found at them.  A
    desired route whose key is held by a foreign route is satisfied if the
    foreign route already forwards the same way, and is a ``Conflict``
    otherwise; either way it is never written.

    A link whose immutable attributes differ (VNI, local, port, underlay,
    type, ...) is deleted and created again.  The kernel drops every
    address, route and entry of a deleted device, so those are not deleted
    one by one but are (re)created after the new device.
    """
    deletes: dict[str, list[Change]] = {k: [] for k in _CREATE_ORDER}
    writes: dict[str, list[Change]] = {k: [] for k in _CREATE_ORDER}

    # Devices first: which ones vanish (and take their entries with them)?
    gone_devices: set[str] = set()
    live_links = live.of("link")
    desired_links = desired.of("link")
    for name, want in desired_links.items():
        have = live_links.get(name)
        if have is None:
            writes["link"].append(Change("create", want))
            continue
        diff = attr_diff(want, have)
        if not diff:
            continue
        if any(attr in want.IMMUTABLE for attr in diff):
            deletes["link"].append(Change("delete", have))
            writes["link"].append(Change("create", want))
            gone_devices.add(name)
        else:
            writes["link"].append(Change("update", want, have))
    for name, have in live_links.items():
        if name not in desired_links:
            deletes["link"].append(Change("delete", have))
            gone_devices.add(name)

    conflicts: list[Conflict] = []
    foreign_routes = foreign_routes or {}
    for kind in ("address", "neigh", "fdb", "route"):
        live_objs = live.of(kind)
        desired_objs = desired.of(kind)
        for key, want in desired_objs.items():
            if kind == "route" and key in foreign_routes and key not in live_objs:
                if attr_diff(want, foreign_routes[key]):
                    conflicts.append(Conflict(want, foreign_routes[key]))
                continue
            have = live_objs.get(key)
            if have is not None and _dev_of(have) in gone_devices:
                have = None  # the kernel drops it with its device
            if have is None:
                writes[kind].append(Change("create", want))
            elif attr_diff(want, have):
                writes[kind].append(Change("update", want, have))
        for key, have in live_objs.items():
            if key not in desired_objs and _dev_of(have) not in gone_devices:
                deletes[kind].append(Change("delete", have))

    ordered: list[Change] = []
    for kind in _DELETE_ORDER:
        ordered.extend(sorted(deletes[kind], key=lambda c: _sort_key(c.obj)))
    for kind in _CREATE_ORDER:
        ordered.extend(sorted(writes[kind], key=lambda c: _sort_key(c.obj)))
    conflicts.sort(key=lambda c: _sort_key(c.desired))
    return Plan(tuple(ordered), tuple(conflicts))
