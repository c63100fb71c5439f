"""Kernel notifications as ``reconciler.core.model`` values: the pure half of the event monitor.

``EventTracker.feed(datagram)`` turns the rtnetlink notifications in one
datagram into ``KernelEvent`` values, in kernel order, keeping only what a
``dump(devices, networks)`` of either backend would show, with the same
field values: every message is decoded by the dump decoders themselves
(``wire_decode`` or ``_fastpath``, one message at a time; an ``RTM_DEL*``
is decoded as the ``RTM_NEW*`` it mirrors), so an event's value *is* a dump
value.  No I/O happens here: the socket, the namespace and the dumps are the
shell's (``events.watch_kernel``), and a fresh dump is asked for through the
``recheck`` callable the shell hands in.

Why the tracker keeps state (docs/netlink-events.md has the commands that
show each case):

* **names**: notifications carry ifindexes; the ifindex -> name map is
  learned from the seed dump and from every link notification (a re-created
  or renamed device changes it).
* **what we believe is there** (routes, permanent neighbours, permanent FDB
  entries, by model key): a permanent entry *replaced* by a learned one, or
  one of our routes replaced by a blackhole or multipath route at the same
  (dst, metric), arrives as an ``RTM_NEW*`` the filter drops; it must still
  be reported, as ``del`` of what was there.
* **silent flushes**: the kernel sends no ``RTM_DELROUTE`` for the IPv4
  routes it flushes when a device goes down, is deleted, or loses an IPv4
  address (``fib_flush``).  On those notifications, when a believed IPv4
  route is on that device, the tracker asks ``recheck()`` for a fresh dump
  and reports the believed IPv4 routes it lacks as ``del``.
* **nexthop objects** (the ``nexthop`` route layout): a dump shows every
  nexthop, so every ``RTM_NEWNEXTHOP``/``RTM_DELNEXTHOP`` is an event.
  Deleting a nexthop deletes the routes through it, and for IPv4 the
  kernel says nothing of them: the believed routes with that ``nhid`` are
  reported as ``del``.  (Replacing a nexthop is announced for the routes
  through it too: ``RTM_NEWROUTE`` with their new gateway.)
* a **rename** into or out of our device names (or of a device our routes or
  VXLAN devices point at) changes what a dump shows without a notification
  per object: ``feed`` then says ``resync``, and the shell delivers
  ``None`` (as for lost events) and seeds the tracker again.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, replace
from socket import AF_BRIDGE, AF_INET, AF_INET6
from typing import Callable, Collection, Iterable, Literal

from reconciler.core.model import Address, KernelObject, KernelState
from reconciler.kernel.netlink import wire
from reconciler.kernel.netlink.wire_base import (NDMSG, NTF_PROXY, RT_TABLE_MAIN, RTA_DST, RTA_PRIORITY, RTA_TABLE, RTM_DELADDR,
                        RTM_DELLINK, RTM_DELNEIGH, RTM_DELNEXTHOP, RTM_DELROUTE, RTM_F_CLONED, RTM_NEWADDR,
                        RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWNEXTHOP, RTM_NEWROUTE, RTMSG, _attrs, _messages)
from reconciler.kernel.netlink.wire_decode import ip_text

__all__ = ["KernelEvent", "EventTracker", "RTMGRP_ALL", "RTNLGRP_NEXTHOP", "decoders"]

# linux/rtnetlink.h: the legacy multicast group bits ``bind()`` takes.
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
#: Every group the monitor listens to: what ``ip monitor link address route neigh`` hears.
RTMGRP_ALL = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE
              | RTMGRP_IPV6_ROUTE | RTMGRP_NEIGH)
#: Nexthop objects' group (a group number, joined with ``NETLINK_ADD_MEMBERSHIP``): what
#: ``ip monitor nexthop`` hears.
RTNLGRP_NEXTHOP = 32

#: ``RTM_DEL*`` -> the ``RTM_NEW*`` whose layout it shares.
_AS_NEW = {RTM_DELLINK: RTM_NEWLINK, RTM_DELADDR: RTM_NEWADDR, RTM_DELROUTE: RTM_NEWROUTE,
           RTM_DELNEIGH: RTM_NEWNEIGH, RTM_DELNEXTHOP: RTM_NEWNEXTHOP}
_DELS = frozenset(_AS_NEW)
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")


@dataclass(frozen=True, slots=True)
class KernelEvent:
    """One change of a kernel object we would dump.

    ``set``: the object now has exactly the value ``obj`` (created or
    changed).  ``del``: the object at ``obj.key`` is gone (deleted, or
    replaced by something a dump does not show); ``obj`` is the value it had
    as far as the notification (or the tracker) knows, only its key matters.
    """

    op: Literal["set", "del"]
    obj: KernelObject


def decoders(accelerate: bool = True) -> dict:
    """The dump decoders by name: compiled when asked for and built, pure otherwise."""
    import _fastpath

    return _fastpath.DECODERS if accelerate and _fastpath.DECODERS is not None else wire.DECODERS


def _itself(obj: KernelObject) -> KernelObject:
    return obj


def _as_new(buf, off: int, end: int, mtype: int):
    """One message as a buffer of its own, an ``RTM_DEL*`` turned into its ``RTM_NEW*``."""
    msg = bytearray(buf[off:end])
    if mtype in _AS_NEW:
        _U16.pack_into(msg, 4, _AS_NEW[mtype])
    return msg


class EventTracker:
    """Notifications in, ``KernelEvent`` values out, for one (devices, networks) filter.

    ``seed(state, links)`` loads a dump: its ``KernelState`` (what we
    believe is there) and the ``wire.LinkMsg`` of *every* link (for the
    ifindex map).  Then ``feed(buf, recheck)`` for each datagram.
    """

    def __init__(self, devices: Collection[str], networks: Collection[str] = (), accelerate: bool = True,
                 share: Callable[[KernelObject], KernelObject] | None = None) -> None:
        self.devices = frozenset(devices)
        #: What the believed maps store for a decoded value: an equal instance someone already
        #: holds (the agent hands in its desired state's), so that this thread's view of 15,000
        #: entries is not a third copy of them (docs/memory.md).  The events themselves carry
        #: the decoded values, ``protocol`` included.
        self._share: Callable[[KernelObject], KernelObject] = share or _itself
        self.nets = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        dec = decoders(accelerate)
        self._decode_routes, self._decode_neighs, self._decode_fdb = dec["route"], dec["neigh"], dec["fdb"]
        self.names: dict[int, str] = {}          # ifindex -> name, every link
        self._kinds: dict[int, str] = {}         # ifindex -> IFLA_INFO_KIND
        self._lower: dict[int, int] = {}         # our vxlan ifindex -> its underlay's ifindex
        self.ours: dict[int, str] = {}           # ifindex -> name, links named in devices
        self.routes: dict = {}                   # believed: (dst, metric) -> Route
        self.neighs: dict = {}                   # (dev, ip) -> Neigh
        self.fdbs: dict = {}                     # (dev, mac) -> Fdb

    # ------------------------------------------------------------------ state
    def seed(self, state: KernelState, links: Iterable[wire.LinkMsg]) -> None:
        self.names, self._kinds, self._lower, self.ours = {}, {}, {}, {}
        for msg in links:
            self._learn(msg)
        self.routes = self._shared(state.of("route").values())
        self.neighs = self._shared(state.of("neigh").values())
        self.fdbs = self._shared(state.of("fdb").values())

    def _shared(self, objs: Iterable[KernelObject]) -> dict:
        # Keyed by the shared object's own key: a key made from the decoded value would keep
        # the decoded strings (dst, ip, mac) alive after the object itself was shared.
        share = self._share
        return {o.key: o for o in map(share, objs)}

    def _learn(self, msg: wire.LinkMsg) -> None:
        idx = msg.index
        self.names[idx] = msg.name
        self._kinds[idx] = msg.kind
        if msg.name in self.devices:
            self.ours[idx] = msg.name
            lower = (msg.vxlan or {}).get("link")
            if lower:
                self._lower[idx] = lower
            else:
                self._lower.pop(idx, None)
        else:
            self.ours.pop(idx, None)
            self._lower.pop(idx, None)

    def _forget(self, idx: int) -> None:
        name = self.names.pop(idx, None)
        self._kinds.pop(idx, None)
        self._lower.pop(idx, None)
        if self.ours.pop(idx, None) is not None:
            # The kernel reports these before RTM_DELLINK; never keep a stale one.
            self.neighs = {k: v for k, v in self.neighs.items() if k[0] != name}
            self.fdbs = {k: v for k, v in self.fdbs.items() if k[0] != name}

    def _routes_on(self, name: str | None) -> bool:
        """A believed IPv4 route leaves through ``name`` (a silent flush would take it)."""
        return name is not None and any(r.dev == name and ":" not in r.dst for r in self.routes.values())

    # ------------------------------------------------------------------- feed
    def feed(self, buf, recheck: Callable[[], KernelState] | None = None) -> tuple[list[KernelEvent], bool]:
        """``(events, resync)`` of one datagram.

        ``recheck()`` returns a fresh dump (same devices and networks); it is
        called only when the kernel may have flushed IPv4 routes silently.
        ``resync`` True: something changed that no event describes (a rename),
        the caller should resync and ``seed`` again.  Raises
        ``wire.DecodeError`` on broken framing.
        """
        out: list[KernelEvent] = []
        resync = False
        for mtype, _flags, _seq, off, end in _messages(buf):
            if mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
                self._neigh(buf, off, end, mtype, out)
            elif mtype in (RTM_NEWROUTE, RTM_DELROUTE):
                self._route(buf, off, end, mtype, out)
            elif mtype in (RTM_NEWADDR, RTM_DELADDR):
                if self._addr(buf, off, end, mtype, out) and recheck is not None:
                    self._recheck(recheck, out)
            elif mtype in (RTM_NEWNEXTHOP, RTM_DELNEXTHOP):
                self._nexthop(buf, off, end, mtype, out)
            elif mtype in (RTM_NEWLINK, RTM_DELLINK):
                flush, renamed = self._link(buf, off, end, mtype, out)
                resync = resync or renamed
                if flush and recheck is not None:
                    self._recheck(recheck, out)
        return out, resync

    def _recheck(self, recheck: Callable[[], KernelState], out: list[KernelEvent]) -> None:
        fresh = recheck().of("route")
        for key, route in list(self.routes.items()):
            if ":" not in route.dst and key not in fresh:
                del self.routes[key]
                out.append(KernelEvent("del", route))

    # neighbours and FDB entries: RTM_NEWNEIGH / RTM_DELNEIGH
    def _neigh(self, buf, off: int, end: int, mtype: int, out: list[KernelEvent]) -> None:
        if end - off < 28:
            return
        family, _p1, _p2, idx, _state, flags, _type = NDMSG.unpack_from(buf, off + 16)
        name = self.ours.get(idx)
        if name is None or flags & NTF_PROXY:      # the cheap early exit for cni0's learning churn
            return
        msg = _as_new(buf, off, end, mtype)
        if family == AF_BRIDGE:
            if self._kinds.get(idx) != "vxlan":    # a dump reads FDB entries of VXLAN devices only
                return
            believed, values = self.fdbs, self._decode_fdb(msg, idx, name)
        elif family in (AF_INET, AF_INET6):
            believed, values = self.neighs, self._decode_neighs(msg, idx, name)
        else:
            return
        if values:
            obj = values[0]
            if mtype == RTM_DELNEIGH:
                believed.pop(obj.key, None)
                out.append(KernelEvent("del", obj))
            else:
                kept = self._share(obj)
                believed[kept.key] = kept           # a new key's tuple holds the kept strings
                out.append(KernelEvent("set", obj))
            return
        key = self._neigh_key(msg, family, name)
        if key is not None and key in believed:     # ours was replaced by a learned/foreign entry
            out.append(KernelEvent("del", believed.pop(key)))

    @staticmethod
    def _neigh_key(msg: bytearray, family: int, name: str):
        attrs = _attrs(msg, 28, len(msg))
        if not attrs:
            return None
        span = attrs.get(1 if family != AF_BRIDGE else 2)      # NDA_DST / NDA_LLADDR
        if span is None:
            return None
        raw = bytes(msg[span[0]:span[1]])
        if family == AF_BRIDGE:
            return (name, raw.hex(":"))
        return (name, ip_text(raw)) if len(raw) in (4, 16) else None

    # routes: RTM_NEWROUTE / RTM_DELROUTE
    def _route(self, buf, off: int, end: int, mtype: int, out: list[KernelEvent]) -> None:
        msg = _as_new(buf, off, end, mtype)
        values = self._decode_routes(msg, self.names, self.ours, self.nets)
        if values:
            route = values[0]
            if mtype == RTM_DELROUTE:
                self.routes.pop(route.key, None)
                out.append(KernelEvent("del", route))
            else:
                kept = self._share(route)
                self.routes[kept.key] = kept
                out.append(KernelEvent("set", route))
            return
        if not self.routes:
            return
        key = self._route_key(msg)
        if key is not None and key in self.routes:  # replaced by one a dump leaves out (blackhole, ...)
            out.append(KernelEvent("del", self.routes.pop(key)))

    @staticmethod
    def _route_key(msg: bytearray):
        """``(dst, metric)`` of a main-table, not cloned route message; None otherwise."""
        if len(msg) < 28:
            return None
        family, dst_len, _s, _t, table, _p, _sc, _rt, flags = RTMSG.unpack_from(msg, 16)
        alen = {AF_INET: 4, AF_INET6: 16}.get(family)
        attrs = _attrs(msg, 28, len(msg))
        if alen is None or attrs is None or flags & RTM_F_CLONED or dst_len > alen * 8:
            return None
        span = attrs.get(RTA_TABLE)
        if span is not None and span[1] - span[0] == 4:
            table = _U32.unpack_from(msg, span[0])[0] or table
        if table != RT_TABLE_MAIN:
            return None
        span = attrs.get(RTA_DST)
        dst = bytes(msg[span[0]:span[1]]) if span is not None else bytes(alen)
        if len(dst) != alen:
            return None
        span = attrs.get(RTA_PRIORITY)
        metric = _U32.unpack_from(msg, span[0])[0] if span is not None and span[1] - span[0] == 4 else 0
        net = ipaddress.ip_network((dst, dst_len), strict=False)
        return (str(net), metric)

    # nexthop objects: RTM_NEWNEXTHOP / RTM_DELNEXTHOP
    def _nexthop(self, buf, off: int, end: int, mtype: int, out: list[KernelEvent]) -> None:
        values = wire.decode_nexthops(_as_new(buf, off, end, mtype), self.names)
        if not values:
            return
        nh = values[0]
        if mtype == RTM_NEWNEXTHOP:
            out.append(KernelEvent("set", nh))
            return
        out.append(KernelEvent("del", nh))
        for key in [k for k, r in self.routes.items() if r.nhid == nh.id]:    # gone with it, unannounced for IPv4
            out.append(KernelEvent("del", self.routes.pop(key)))

    # addresses: RTM_NEWADDR / RTM_DELADDR
    def _addr(self, buf, off: int, end: int, mtype: int, out: list[KernelEvent]) -> bool:
        """Emit the address event; True when an IPv4 address left a device our routes use."""
        for a in wire.decode_addrs(_as_new(buf, off, end, mtype)):
            name = self.ours.get(a.index)
            if name is not None:
                cidr = wire.cidr_of(a)
                if cidr is not None:
                    out.append(KernelEvent("del" if mtype == RTM_DELADDR else "set", Address(name, cidr)))
            if mtype == RTM_DELADDR and a.family == AF_INET and self._routes_on(self.names.get(a.index)):
                return True
        return False

    # links: RTM_NEWLINK / RTM_DELLINK
    def _link(self, buf, off: int, end: int, mtype: int, out: list[KernelEvent]) -> tuple[bool, bool]:
        """Emit the link event; ``(flush, renamed)``: IPv4 routes may be gone / names changed."""
        msgs = wire.decode_links(_as_new(buf, off, end, mtype))
        if not msgs:
            return False, False
        msg = msgs[0]
        idx, name = msg.index, msg.name
        old = self.names.get(idx)
        gone = mtype == RTM_DELLINK
        flush = (gone or not msg.up) and self._routes_on(old if old is not None else name)
        renamed = False
        if old is not None and old != name and not gone:
            # A rename moves (or renames) whatever a dump shows on that device.
            renamed = (old in self.devices or name in self.devices or idx in self._lower.values()
                       or self._routes_on(old))
            if old in self.devices:
                out.append(KernelEvent("del", replace(wire.link_value(msg, self.names), name=old)))
        if gone:
            if name in self.devices:
                out.append(KernelEvent("del", wire.link_value(msg, self.names)))
            self._forget(idx)
            return flush, renamed
        self._learn(msg)
        if name in self.devices:
            out.append(KernelEvent("set", wire.link_value(msg, self.names)))
        return flush, renamed
