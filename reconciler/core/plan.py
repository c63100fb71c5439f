"""The plan: the minimal ordered list of changes that makes live equal desired.

Pure: it compares two ``KernelState`` values and knows nothing of sockets.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.core.model import KINDS, RTPROT_KERNEL, KernelObject, Nexthop, Route, attr_diff

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


#: The order changes are made in, and why.  Deletions of entries come first
#: (route before the neighbour and FDB entry it needs), then devices, then
#: addresses -- new ones *before* stale ones go, because removing a device's
#: last IPv4 address makes the kernel disable IPv4 on it and flush every
#: route and neighbour there -- and finally neighbour and FDB entries before
#: the route that needs them (so the kernel never has to resolve the onlink
#: gateway).
#:
#: Nexthop objects (the ``nexthop`` route layout) are written after the
#: neighbour and FDB entry their gateway needs and before the routes that
#: use them.  They are deleted *last*, after the routes were written: the
#: kernel deletes every route using a nexthop when the nexthop goes, so a
#: route being moved off it (a layout switch) must be re-pointed first or it
#: would vanish until the next write.  Stale routes are deleted first as
#: always, so by the time its nexthop goes nothing forwards through it, and
#: its neighbour and FDB entry going before it is harmless
#: (docs/route-layouts.md has the kernel behaviour, checked with ``ip``).
_STEPS = (
    ("delete", "route"), ("delete", "fdb"), ("delete", "neigh"), ("delete", "link"),
    ("write", "link"), ("write", "address"), ("delete", "address"),
    ("write", "neigh"), ("write", "fdb"), ("write", "nexthop"), ("write", "route"),
    ("delete", "nexthop"),
)


def _dev_of(obj: KernelObject) -> str | None:
    return getattr(obj, "dev", None)


def _sort_key(obj: KernelObject):
    return _sortable(obj.key)


def _sortable(key):
    # Keys mix str and None (a DirectRouting route's dev); make them sortable
    # so the plan's order never depends on the order leases arrived in.
    if isinstance(key, tuple):
        return tuple("" if k is None else k for k in key)
    return key


def _in_order(keys) -> list:
    """``keys`` in the plan's order (``_sortable``'s), each key computed once.

    The keys as they are compare at C speed; a None beside a str makes them raise, and then
    they are sorted through ``_sortable``.  Where the plain sort succeeds its order is
    ``_sortable``'s: the keys are distinct, and None meets only None, as "" would meet ""."""
    keys = list(keys)       # (a generator would be spent by the first try)
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=_sortable)


def _connected_prefix(cidr: str) -> str | None:
    """The prefix of the ``proto kernel`` route an address makes (None for a host address)."""
    iface = ipaddress.ip_interface(cidr)
    net = iface.network
    return None if net.prefixlen == net.max_prefixlen else str(net)


def _kernel_made_routes(desired, live, link_writes, gone_devices) -> set[tuple[str, str]]:
    """(device, prefix) of the connected routes the kernel makes as this plan runs: those of the
    addresses it writes, and of every address on a device it creates, re-creates or sets up.

    A desired connected route (the bridge's subnet on ``cni0``) is written only when it is
    missing while its address stays (``ip route flush``); otherwise the kernel makes it and a
    write of ours would only replace it."""
    touched = {c.obj.name for c in link_writes} | gone_devices
    live_addrs = live.of("address")
    out: set[tuple[str, str]] = set()
    for key, want in desired.of("address").items():
        if want.dev in touched or key not in live_addrs:
            prefix = _connected_prefix(want.cidr)
            if prefix is not None:
                out.add((want.dev, prefix))
    return out


def _shadowed(desired_routes, foreign_routes) -> list["Conflict"]:
    """Peer routes part of which a more specific foreign route takes (``100.64.2.0/25 via ...``
    inside our ``100.64.2.0/24``): longest prefix wins, so that part of the peer's pods goes
    elsewhere.  Reported as a conflict with the foreign route; ours is still written (the
    foreign one holds another key) and the foreign one is left alone."""
    out = []
    for key, foreign in foreign_routes.items():
        if key in desired_routes:
            continue
        try:
            net = ipaddress.ip_network(foreign.dst)
        except ValueError:
            continue
        for plen in range(net.prefixlen - 1, -1, -1):
            sup = str(net.supernet(new_prefix=plen))
            want = desired_routes.get((sup, 0)) or desired_routes.get((sup, 1024))
            if want is not None:
                if want.gateway is not None or want.nhid:   # a peer's, not the bridge's own subnet
                    out.append(Conflict(want, foreign))
                break
    return out


@dataclass(frozen=True, slots=True)
class Conflict:
    """A desired object whose kernel key is held by a foreign object.

    A route of the main table for a peer's subnet that is not ours (an
    administrator's static route, flanneld's DirectRouting route via the
    underlay), or a nexthop id of our range held by a nexthop that is not
    ours (and the route that would go through it).  ``replace`` would silently take it over; the
    ownership promise says we never change what is not ours, so the plan
    leaves it and reports it instead.
    """

    desired: KernelObject
    foreign: Route | Nexthop


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


def make_plan(desired, live, foreign_routes=None, foreign_nexthops=None) -> Plan:
    """The minimal ordered changes turning ``live`` into ``desired``.

    ``live`` must already be filtered by the ownership policy: every live
    object not desired is deleted.  An object that already matches produces
    nothing, so a converged kernel yields an empty plan and correct routes
    are never rewritten.

    ``foreign_routes`` maps route keys to foreign routes found at them.  A
    desired route whose key is held by a foreign route is satisfied if the
    foreign route already forwards the same way, and is a ``Conflict``
    otherwise; either way it is never written.

    ``foreign_nexthops`` maps nexthop ids to foreign nexthops holding them
    (an id of our range on another device, a blackhole, a group).
    ``ip nexthop replace`` would take it over silently, so a desired
    nexthop there is a ``Conflict`` and is never written, and neither is a
    route through it (it would forward through the foreign one).

    Kernel side effects the plan accounts for, each seen on Linux 6.18:

    * deleting a device (or re-creating it, when immutable attributes such as
      VNI, local, port, underlay or type differ) drops its addresses, routes
      and entries: they are not deleted one by one but created again after
      the new device;
    * changing a device's MAC flushes its neighbour table, permanent entries
      included: its neighbours are written again after the change;
    * an address's ``proto kernel`` connected route vanishes with the
      address, so it blocks no route we want when that address is deleted;
    * deleting a device drops the nexthop objects on it, and with them the
      routes that use them; a route whose nexthop is re-created (device
      re-creation) is written again.
    """
    writes: dict[str, list[Change]] = {k: [] for k in KINDS}
    deletes: dict[str, list[Change]] = {k: [] for k in KINDS}

    # Devices first: which ones vanish, and which lose their neighbours?
    gone_devices: set[str] = set()
    neigh_flushed: set[str] = set()
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
            if "mac" in diff:
                neigh_flushed.add(name)
    for name, have in live_links.items():
        if name not in desired_links:
            deletes["link"].append(Change("delete", have))
            gone_devices.add(name)

    def vanishes(kind: str, obj: KernelObject) -> bool:
        dev = _dev_of(obj)
        return dev in gone_devices or (kind == "neigh" and dev in neigh_flushed)

    # Connected routes that go away with the addresses this plan deletes.
    dying_connected: set[tuple[str, str]] = set()
    desired_addrs = desired.of("address")
    for key, have in live.of("address").items():
        if key not in desired_addrs and have.dev not in gone_devices:
            prefix = _connected_prefix(have.cidr)
            if prefix is not None:
                dying_connected.add((have.dev, prefix))

    made_by_kernel = _kernel_made_routes(desired, live, writes["link"], gone_devices)

    conflicts: list[Conflict] = []
    foreign_routes = foreign_routes or {}
    foreign_nexthops = foreign_nexthops or {}
    # Routes through a nexthop on a vanishing device vanish with it (the
    # kernel deletes a nexthop's routes together with the nexthop).
    gone_nhids = {nh.id for nh in live.of("nexthop").values() if nh.dev in gone_devices}

    # Nothing vanishes as a side effect: a kind whose live and desired maps are
    # equal (same keys, equal values) has nothing to write, delete or report.
    # The common case of a resync, checked at C speed before any per-key work.
    untouched = not gone_devices and not neigh_flushed and not gone_nhids
    # Each kind's changes come out sorted by key: the keys are sorted once, rather than the
    # changes by a key computed per change (a cold start's 15,000: a third of the plan's time).
    for kind in ("address", "neigh", "fdb", "nexthop", "route"):
        live_objs = live.of(kind)
        desired_objs = desired.of(kind)
        if untouched and live_objs == desired_objs:
            continue
        for key in _in_order(desired_objs):
            want = desired_objs[key]
            if kind == "nexthop" and key in foreign_nexthops and key not in live_objs:
                conflicts.append(Conflict(want, foreign_nexthops[key]))
                continue
            if kind == "route" and want.nhid in foreign_nexthops and want.nhid not in live.of("nexthop"):
                conflicts.append(Conflict(want, foreign_nexthops[want.nhid]))
                continue
            if kind == "route" and key in foreign_routes and key not in live_objs:
                foreign = foreign_routes[key]
                dying = foreign.protocol == RTPROT_KERNEL and (foreign.dev, foreign.dst) in dying_connected
                if not dying:
                    if attr_diff(want, foreign):
                        conflicts.append(Conflict(want, foreign))
                    continue
            have = live_objs.get(key)
            if have is not None and kind == "route" and have.nhid in gone_nhids:
                have = None
            if have is not None and vanishes(kind, have):
                have = None  # the kernel drops it as a side effect of a change above
            if have is None:
                if kind == "route" and want.gateway is None and (want.dev, want.dst) in made_by_kernel:
                    continue    # the address this plan writes makes it (docs/kernel-facts.md)
                writes[kind].append(Change("create", want))
            elif attr_diff(want, have):
                writes[kind].append(Change("update", want, have))
        for key in _in_order(k for k in live_objs if k not in desired_objs):
            have = live_objs[key]
            if not vanishes(kind, have) and not (kind == "route" and have.nhid in gone_nhids):
                deletes[kind].append(Change("delete", have))

    conflicts += _shadowed(desired.of("route"), foreign_routes)

    ordered: list[Change] = []
    for op, kind in _STEPS:
        batch = deletes[kind] if op == "delete" else writes[kind]
        ordered.extend(sorted(batch, key=lambda c: _sort_key(c.obj)) if kind == "link" else batch)
    conflicts.sort(key=lambda c: (KINDS.index(c.desired.KIND), _sort_key(c.desired)))
    return Plan(tuple(ordered), tuple(conflicts))
