"""ModelKernel: an in-memory kernel with netlink semantics, behind the backend seam.

A stateful fake, not a call recorder (Calico's MockNetlinkDataplane is the
model).  It reproduces the kernel behaviour the reconciler depends on,
checked with iproute2 on Linux 6.18 (docs/kernel-facts.md section 5):

* every device has an ifindex; deleting a device drops its addresses,
  routes, neighbours and FDB entries, and a re-created device gets a new
  ifindex;
* setting a device down drops its routes and neighbour entries (permanent
  ones too) and its IPv6 addresses, but keeps IPv4 addresses and static FDB
  entries;
* changing a device's MAC flushes its neighbour entries, permanent ones too;
* deleting a device's last IPv4 address disables IPv4 on it: its IPv4 routes
  and neighbours are flushed;
* an address with a prefix makes a connected ``proto kernel`` route while
  its device is up;
* ``replace`` creates or overwrites; an exclusive link create of an existing
  name is EEXIST; an op on a missing device is ENODEV; an onlink route on a
  down device is ENETDOWN; a gateway route that is neither onlink nor inside
  a connected prefix is ENETUNREACH; deleting a missing route is ESRCH, a
  missing neighbour or FDB entry ENOENT (both count as done under the
  contract);
* routes live in tables; only the main table is dumped;
* nexthop objects (docs/route-layouts.md): ``replace`` creates or
  overwrites (the routes using it follow), a nexthop on a missing device is
  ENODEV, on a down device ENETDOWN; a route with an ``nhid`` that does not
  exist is EINVAL ("Nexthop id does not exist"), and one with a gateway or
  device beside its ``nhid`` EINVAL too; deleting a missing nexthop is
  ENOENT; deleting a nexthop deletes the routes that use it, and a device
  going down or away takes its nexthops (and so their routes) with it; a
  route through a nexthop is dumped with the nexthop's gateway, device and
  onlink flag (``net.ipv4.nexthop_compat_mode=1``, the default).

Two surfaces, kept apart:

* the backend API (``dump``, ``apply``, ``underlay``, ``close``), exactly
  the ``NetlinkBackend`` contract;
* test-side helpers (``add_link``, ``add_route`` ...) that write state
  directly, the way an administrator or another program would, and
  ``everything()`` to compare whole kernels.

Events (``watch_kernel`` / ``subscribe``): every state change -- through
``apply()`` (one batch per change) or a test-side helper (one batch per
call), side effects included (a deleted device takes its addresses,
routes, neighbours and FDB entries; down drops routes and neighbours; a new
MAC flushes neighbours) -- is delivered to each subscriber as the list of
``KernelEvent`` values that turns its previous view (what ``dump(devices,
networks)`` showed) into the new one: deletions first (route, fdb, neigh,
address, link), then sets (link, address, neigh, fdb, route).  Delivery is
synchronous, on the thread that made the change, under the model's lock, so
a Hypothesis run is deterministic; only real changes are reported (the real
monitor may also repeat an unchanged value: ``set`` is idempotent either
way).  The named fault ``inject("events", errno.ENOBUFS)`` drops the next
batch: its subscribers get ``callback(None)`` instead, as the real monitor
does when the kernel drops notifications.  Writing the dicts directly
(``kernel.routes = ...``) bypasses events, as a test that wants silence may.

Faults are named and injected: ``inject("route", errno.EINVAL)`` fails the
next route write; ``persistent=True`` keeps failing until ``clear_faults``.
``fired`` records every fault that actually triggered, so a test can assert
that its scenario really exercised the failure.
"""
from __future__ import annotations

import errno as E
import functools
import ipaddress
import itertools
import threading
from dataclasses import dataclass, replace
from contextlib import contextmanager
from typing import Callable, Collection, Sequence

from reconciler.core.errors import DumpInterrupted, NetlinkError
from reconciler.core.model import KINDS, RTPROT_RECONCILER, Address, Fdb, KernelState, Link, Neigh, Nexthop, Route
from reconciler.kernel.netlink import Underlay
from reconciler.kernel.netlink.common import UnderlaySpec
from reconciler.kernel.netlink.kernel_events import KernelEvent
from reconciler.core.plan import Change, OpResult

RTPROT_BOOT = 3
RTPROT_KERNEL = 2
MAIN = 254


@dataclass
class _Fault:
    kind: str              # "link" | "address" | "route" | "neigh" | "fdb" | "dump" | "events"
    errno: int
    op: str | None = None  # restrict to "create" / "update" / "delete"
    persistent: bool = False


@dataclass
class NeighEntry:
    neigh: Neigh
    permanent: bool = True


@dataclass
class FdbEntry:
    fdb: Fdb
    self_permanent: bool = True


@dataclass
class LinkEntry:
    link: Link
    ifindex: int
    master: str | None = None


def _locked(method):
    """The agent's worker writes while a test thread reads: one lock, like RTNL."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._rtnl:
            return method(self, *args, **kwargs)

    return wrapper


def _mutates(method):
    """A test-side change: under the lock, and one event batch for its subscribers."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._rtnl, self._change():
            return method(self, *args, **kwargs)

    return wrapper


@dataclass
class _Subscriber:
    devices: frozenset
    networks: tuple
    callback: Callable


class ModelKernel:
    def __init__(self) -> None:
        self._rtnl = threading.RLock()
        self._next_index = itertools.count(2)  # 1 is lo
        self.links: dict[str, LinkEntry] = {}
        #: ``sysctl`` values the model answers (a namespace's defaults differ: see ``sysctl``).
        self.sysctls: dict[str, str] = {"net.ipv4.ip_forward": "1"}
        self.addresses: set[tuple[str, str]] = set()
        self.routes: dict[tuple[int, str, int], Route] = {}     # (table, dst, metric)
        self.neighs: dict[tuple[str, str], NeighEntry] = {}
        self.fdbs: dict[tuple[str, str], FdbEntry] = {}
        self.nexthops: dict[int, Nexthop] = {}
        self._faults: list[_Fault] = []
        self.fired: list[str] = []
        #: Every write the API carried out: (op, kind, key).  Tests use it to
        #: prove no already-correct object was touched.
        self.writes: list[tuple[str, str, object]] = []
        self.dumps = 0
        self._subscribers: list[_Subscriber] = []
        self._depth = 0                     # nesting of _change(): only the outermost reports

    # ------------------------------------------------------------------ faults
    @_locked
    def inject(self, kind: str, errno: int, op: str | None = None, persistent: bool = False) -> None:
        self._faults.append(_Fault(kind, errno, op, persistent))

    @_locked
    def clear_faults(self) -> None:
        self._faults.clear()

    def _fault(self, kind: str, op: str | None) -> int | None:
        for f in self._faults:
            if f.kind == kind and (f.op is None or f.op == op):
                if not f.persistent:
                    self._faults.remove(f)
                self.fired.append(f"{kind}:{op or ''}:{E.errorcode.get(f.errno, f.errno)}")
                return f.errno
        return None

    # ------------------------------------------------------- test-side helpers
    @_mutates
    def add_link(self, link: Link, master: str | None = None) -> None:
        self.links[link.name] = LinkEntry(link, next(self._next_index), master)

    @_mutates
    def add_address(self, dev: str, cidr: str) -> None:
        self.addresses.add((dev, cidr))

    @_mutates
    def add_route(self, route: Route, table: int = MAIN) -> None:
        self.routes[(table, route.dst, route.metric)] = route

    @_mutates
    def add_neigh(self, neigh: Neigh, permanent: bool = True) -> None:
        self.neighs[neigh.key] = NeighEntry(neigh, permanent)

    @_mutates
    def add_fdb(self, fdb: Fdb, self_permanent: bool = True) -> None:
        self.fdbs[fdb.key] = FdbEntry(fdb, self_permanent)

    @_locked
    def add_nexthop(self, nh: Nexthop) -> None:
        self.nexthops[nh.id] = nh

    def ifindex(self, name: str) -> int | None:
        e = self.links.get(name)
        return e.ifindex if e else None

    @_locked
    def everything(self) -> dict:
        """The whole kernel, for before/after comparisons of foreign state."""
        return {
            "links": {n: (e.link, e.ifindex, e.master) for n, e in self.links.items()},
            "addresses": set(self.addresses),
            "routes": dict(self.routes),
            "connected": set(self._connected_routes()),
            "neighs": {k: (v.neigh, v.permanent) for k, v in self.neighs.items()},
            "fdbs": {k: (v.fdb, v.self_permanent) for k, v in self.fdbs.items()},
            "nexthops": dict(self.nexthops),
        }

    # ------------------------------------------------------------ backend API
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sysctl(self, name: str) -> str | None:
        return self.sysctls.get(name)

    def all_links(self) -> list[Link]:
        return [e.link for e in self.links.values()]

    def close(self) -> None:
        pass

    @_locked
    def underlay(self, spec) -> Underlay:
        if isinstance(spec, UnderlaySpec):  # the model knows names and addresses only: the first one given
            spec = (spec.ifaces or (spec.public_ip,))[0]
        for name, e in self.links.items():
            if spec in (None, name) or any(a.split("/")[0] == spec for d, a in self.addresses if d == name):
                addrs = sorted(a for d, a in self.addresses if d == name and ":" not in a)
                if e.link.type in ("vxlan", "bridge") or not addrs:
                    continue
                prefixes = tuple(str(ipaddress.ip_interface(a).network) for a in addrs)
                return Underlay(name, addrs[0].split("/")[0], e.link.mtu or 1500, prefixes,
                                addresses=tuple(a.split("/")[0] for a in addrs))
        raise NetlinkError(E.ENODEV, f"no underlay interface {spec or '(default route)'}")

    @_locked
    def underlay_v6(self, underlay: Underlay, public_ipv6: str | None = None) -> Underlay:
        """Dual stack: the shared selection rule over this interface's IPv6 addresses
        (all permanent here: the model has no address lifetimes)."""
        from reconciler.kernel.netlink.common import IFA_F_PERMANENT, underlay_v6_of

        if underlay.name not in self.links:
            raise NetlinkError(E.ENODEV, f"no underlay interface {underlay.name}")
        addrs = [(a.split("/")[0], int(a.split("/")[1]), IFA_F_PERMANENT)
                 for d, a in sorted(self.addresses) if d == underlay.name and ":" in a]
        return underlay_v6_of(underlay, addrs, public_ipv6)

    def _connected_routes(self):
        for dev, cidr in self.addresses:
            e = self.links.get(dev)
            iface = ipaddress.ip_interface(cidr)
            if e is None or not e.link.up or iface.network.prefixlen == iface.network.max_prefixlen:
                continue
            yield Route(str(iface.network), None, dev, False, 256 if iface.version == 6 else 0, RTPROT_KERNEL)

    @_locked
    def dump(self, devices: Collection[str], networks: Collection[str] = ()) -> KernelState:
        self.dumps += 1
        code = self._fault("dump", None)
        if code is not None:
            raise DumpInterrupted(code, "dump interrupted (NLM_F_DUMP_INTR) too many times")
        return self._view(devices, networks)

    def _view(self, devices: Collection[str], networks: Collection[str] = ()) -> KernelState:
        """What a dump shows (no counting, no faults): also the subscribers' view."""
        nets = [ipaddress.ip_network(n) for n in networks]
        devices = set(devices)
        state = KernelState()
        for name in devices:
            e = self.links.get(name)
            if e is not None:
                state.add(e.link)
        for dev, cidr in self.addresses:
            if dev in devices and not cidr.startswith("fe80:"):
                state.add(Address(dev, cidr))
        for (table, _dst, _m), r in self.routes.items():
            dst = ipaddress.ip_network(r.dst)
            inside = any(dst.version == n.version and dst.subnet_of(n) for n in nets)
            nh = self.nexthops.get(r.nhid) if r.nhid else None
            if nh is not None:      # nexthop_compat_mode=1: the route repeats its nexthop
                r = replace(r, gateway=nh.gateway, dev=nh.dev, onlink=nh.onlink)
            if table == MAIN and (r.dev in devices or r.protocol == RTPROT_RECONCILER or inside):
                state.add(r)
        for r in self._connected_routes():
            if r.dev in devices:
                state.add(r)
        for n in self.neighs.values():
            if n.permanent and n.neigh.dev in devices:
                state.add(n.neigh)
        for f in self.fdbs.values():
            if f.self_permanent and f.fdb.dev in devices:
                state.add(f.fdb)
        for nh in self.nexthops.values():       # every nexthop, as the backends
            state.add(nh)
        return state

    @_locked
    def apply(self, changes: Sequence[Change]) -> list[OpResult]:
        out = []
        for c in changes:
            code = self._fault(c.kind, c.op)
            if code is None:
                with self._change():
                    code = getattr(self, f"_{c.kind}_{'delete' if c.op == 'delete' else 'write'}")(c)
            if code is None:
                self.writes.append((c.op, c.kind, c.obj.key))
                out.append(OpResult(c, ok=True))
            elif c.op == "delete" and code in (E.ENOENT, E.ESRCH, E.ENODEV, E.EADDRNOTAVAIL):
                out.append(OpResult(c, ok=True, message="already gone"))
            else:
                out.append(OpResult(c, ok=False, errno=code, message=f"{c.op} {c.kind} {c.obj.key}: "
                                                                     f"{E.errorcode.get(code, code)}"))
        return out

    # links
    def _link_write(self, c: Change) -> int | None:
        want: Link = c.obj
        have = self.links.get(want.name)
        if c.op == "create":
            if have is not None:
                return E.EEXIST
            if want.type == "vxlan" and want.underlay is not None and want.underlay not in self.links:
                return E.ENODEV
            self.add_link(want)
            return None
        if have is None:
            return E.ENODEV
        updates = {a: getattr(want, a) for a in Link.MUTABLE if getattr(want, a) is not None}
        new = replace(have.link, **updates)
        if have.link.up and new.up is False:
            self._link_down(want.name)
        if new.mac != have.link.mac:  # NETDEV_CHANGEADDR: neigh_changeaddr() flushes the table
            self.neighs = {k: n for k, n in self.neighs.items() if n.neigh.dev != want.name}
        have.link = new
        return None

    def _drop_nexthops_on(self, dev: str) -> None:
        """A device going down or away takes its nexthops, and their routes, with it."""
        gone = {i for i, nh in self.nexthops.items() if nh.dev == dev}
        self.nexthops = {i: nh for i, nh in self.nexthops.items() if i not in gone}
        self.routes = {k: r for k, r in self.routes.items() if r.nhid not in gone}

    def _link_down(self, name: str) -> None:
        self._drop_nexthops_on(name)
        self.routes = {k: r for k, r in self.routes.items() if r.dev != name}
        self.neighs = {k: n for k, n in self.neighs.items() if n.neigh.dev != name}
        self.addresses = {(d, a) for d, a in self.addresses if d != name or ":" not in a}

    def _link_delete(self, c: Change) -> int | None:
        if c.obj.name not in self.links:
            return E.ENODEV
        self.remove_link(c.obj.name)
        return None

    @_mutates
    def remove_link(self, name: str) -> None:
        """Delete a device the way the kernel does: with everything on it."""
        del self.links[name]
        self._drop_nexthops_on(name)
        self.addresses = {(d, a) for d, a in self.addresses if d != name}
        self.routes = {k: r for k, r in self.routes.items() if r.dev != name}
        self.neighs = {k: n for k, n in self.neighs.items() if n.neigh.dev != name}
        self.fdbs = {k: f for k, f in self.fdbs.items() if f.fdb.dev != name}
        for e in self.links.values():
            if e.master == name:
                e.master = None

    # addresses
    def _address_write(self, c: Change) -> int | None:
        if c.obj.dev not in self.links:
            return E.ENODEV
        self.addresses.add(c.obj.key)
        return None

    def _address_delete(self, c: Change) -> int | None:
        if c.obj.key not in self.addresses:
            return E.EADDRNOTAVAIL
        self.addresses.discard(c.obj.key)
        dev = c.obj.dev
        if ":" not in c.obj.cidr and not any(d == dev and ":" not in a for d, a in self.addresses):
            # The last IPv4 address went: fib_disable_ip() flushes routes and ARP.
            self.routes = {k: r for k, r in self.routes.items() if r.dev != dev or ":" in r.dst}
            self.neighs = {k: n for k, n in self.neighs.items() if n.neigh.dev != dev or ":" in n.neigh.ip}
        return None

    # routes
    def _route_write(self, c: Change) -> int | None:
        r: Route = c.obj
        if r.type == "blackhole":       # the kernel's: a blackhole has no next hop to give
            if r.gateway is not None or r.dev is not None or r.nhid:
                return E.EINVAL
            self.routes[(MAIN, r.dst, r.metric)] = replace(r, onlink=False, protocol=RTPROT_RECONCILER)
            return None
        if r.nhid:
            if r.gateway is not None or r.dev is not None or r.nhid not in self.nexthops:
                return E.EINVAL
            self.routes[(MAIN, r.dst, r.metric)] = replace(r, onlink=False, protocol=RTPROT_RECONCILER)
            return None
        dev = r.dev
        if dev is not None:
            e = self.links.get(dev)
            if e is None:
                return E.ENODEV
            if r.onlink and not e.link.up:
                return E.ENETDOWN
        if r.gateway is not None and not r.onlink:
            gw = ipaddress.ip_address(r.gateway)
            hits = [cr.dev for cr in self._connected_routes()
                    if gw in ipaddress.ip_network(cr.dst) and (dev is None or cr.dev == dev)]
            if not hits:
                return E.ENETUNREACH
            dev = hits[0]
        self.routes[(MAIN, r.dst, r.metric)] = replace(r, dev=dev, protocol=RTPROT_RECONCILER)
        return None

    def _route_delete(self, c: Change) -> int | None:
        if self.routes.pop((MAIN, c.obj.dst, c.obj.metric), None) is None:
            return E.ESRCH
        return None

    # nexthops
    def _nexthop_write(self, c: Change) -> int | None:
        nh: Nexthop = c.obj
        e = self.links.get(nh.dev)
        if e is None:
            return E.ENODEV
        if not e.link.up:
            return E.ENETDOWN
        self.nexthops[nh.id] = replace(nh, protocol=RTPROT_RECONCILER)
        return None

    def _nexthop_delete(self, c: Change) -> int | None:
        if self.nexthops.pop(c.obj.id, None) is None:
            return E.ENOENT
        self.routes = {k: r for k, r in self.routes.items() if r.nhid != c.obj.id}
        return None

    # neighbours
    def _neigh_write(self, c: Change) -> int | None:
        e = self.links.get(c.obj.dev)
        if e is None:
            return E.ENODEV
        self.neighs[c.obj.key] = NeighEntry(c.obj, True)
        return None

    def _neigh_delete(self, c: Change) -> int | None:
        if self.neighs.pop(c.obj.key, None) is None:
            return E.ENOENT
        return None

    # FDB
    def _fdb_write(self, c: Change) -> int | None:
        if c.obj.dev not in self.links:
            return E.ENODEV
        self.fdbs[c.obj.key] = FdbEntry(c.obj, True)
        return None

    def _fdb_delete(self, c: Change) -> int | None:
        if self.fdbs.pop(c.obj.key, None) is None:
            return E.ENOENT
        return None

    # --------------------------------------------------- drift, as iproute2 would
    # Someone else's changes, with the kernel's side effects (and events).
    @_mutates
    def set_link(self, name: str, *, mtu: int | None = None, mac: str | None = None,
                 up: bool | None = None) -> None:
        """``ip link set NAME [mtu N] [address MAC] [up|down]``: down drops routes and
        neighbours, a new MAC flushes neighbours (as ``apply`` does)."""
        have = self.links[name].link
        self._link_write(Change("update", replace(have, mtu=mtu, mac=mac, up=up), have))

    @_mutates
    def del_address(self, dev: str, cidr: str) -> None:
        """``ip addr del CIDR dev DEV``: the last IPv4 address takes IPv4 routes and ARP with it."""
        self._address_delete(Change("delete", Address(dev, cidr)))

    @_mutates
    def del_route(self, dst: str, metric: int = 0, table: int = MAIN) -> None:
        """``ip route del DST metric N table T``."""
        self.routes.pop((table, dst, metric), None)

    @_mutates
    def del_neigh(self, dev: str, ip: str) -> None:
        """``ip neigh del IP dev DEV``."""
        self.neighs.pop((dev, ip), None)

    @_mutates
    def del_fdb(self, dev: str, mac: str) -> None:
        """``bridge fdb del MAC dev DEV self``."""
        self.fdbs.pop((dev, mac), None)

    # ----------------------------------------------------------------- events
    @_locked
    def subscribe(self, devices: Collection[str], networks: Collection[str],
                  callback: Callable[[list[KernelEvent] | None], None]) -> Callable[[], None]:
        """Deliver the events of every later change to ``callback``; returns the unsubscribe function."""
        sub = _Subscriber(frozenset(devices), tuple(networks), callback)
        self._subscribers.append(sub)

        def unsubscribe() -> None:
            with self._rtnl:
                if sub in self._subscribers:
                    self._subscribers.remove(sub)

        return unsubscribe

    def watch_kernel(self, devices: Collection[str], networks: Collection[str],
                     callback: Callable[[list[KernelEvent] | None], None], stop: threading.Event,
                     ready: threading.Event | None = None, poll: float = 0.5, share=None) -> None:
        """The backend method: subscribed until ``stop`` is set (``ready`` once subscribed).
        ``share`` is taken and not needed: the model hands out its own objects, no copies.

        The events themselves are delivered synchronously by the thread that
        makes each change, not by the thread blocked here.
        """
        unsubscribe = self.subscribe(devices, networks, callback)
        try:
            if ready is not None:
                ready.set()
            while not stop.wait(poll):
                pass
        finally:
            unsubscribe()

    @contextmanager
    def _change(self):
        """One state change: its subscribers' views before and after, diffed into one batch."""
        with self._rtnl:
            if self._depth or not self._subscribers:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            subs = list(self._subscribers)
            before = [self._view(s.devices, s.networks) for s in subs]
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                batches = [(s, events_between(old, self._view(s.devices, s.networks)))
                           for s, old in zip(subs, before)]
                batches = [(s, ev) for s, ev in batches if ev]
                dropped = bool(batches) and self._fault("events", None) is not None
                for s, ev in batches:
                    s.callback(None if dropped else ev)


def events_between(old: KernelState, new: KernelState) -> list[KernelEvent]:
    """The events that turn ``old`` into ``new``: deletions (route, fdb, neigh, address, link),
    then sets (link, address, neigh, fdb, route), only where something changed."""
    out: list[KernelEvent] = []
    for kind in reversed(KINDS):
        now = new.of(kind)
        out += [KernelEvent("del", o) for key, o in old.of(kind).items() if key not in now]
    for kind in KINDS:
        was = old.of(kind)
        out += [KernelEvent("set", o) for key, o in new.of(kind).items() if was.get(key) != o]
    return out


def replay(state: KernelState, events: Sequence[KernelEvent]) -> KernelState:
    """``state`` with ``events`` applied in order (a copy): how a consumer keeps its view."""
    out = KernelState(state)
    for ev in events:
        if ev.op == "set":
            out.add(ev.obj)
        else:
            out.discard(ev.obj)
    return out
