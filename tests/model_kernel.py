"""ModelKernel: an in-memory kernel with netlink semantics, behind the backend seam.

A stateful fake, not a call recorder (Calico's MockNetlinkDataplane is the
model).  It reproduces the kernel behaviour the reconciler depends on,
checked with iproute2 on Linux 6.18 (../shared/style-exemplars.md section 4):

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
from typing import Collection, Sequence

from reconciler.errors import DumpInterrupted, NetlinkError
from reconciler.model import RTPROT_RECONCILER, Address, Fdb, KernelState, Link, Neigh, Nexthop, Route
from reconciler.netlink import Underlay
from reconciler.plan import Change, OpResult

RTPROT_BOOT = 3
RTPROT_KERNEL = 2
MAIN = 254


@dataclass
class _Fault:
    kind: str              # "link" | "address" | "route" | "neigh" | "fdb" | "dump"
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


class ModelKernel:
    def __init__(self) -> None:
        self._rtnl = threading.RLock()
        self._next_index = itertools.count(2)  # 1 is lo
        self.links: dict[str, LinkEntry] = {}
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
    @_locked
    def add_link(self, link: Link, master: str | None = None) -> None:
        self.links[link.name] = LinkEntry(link, next(self._next_index), master)

    @_locked
    def add_address(self, dev: str, cidr: str) -> None:
        self.addresses.add((dev, cidr))

    @_locked
    def add_route(self, route: Route, table: int = MAIN) -> None:
        self.routes[(table, route.dst, route.metric)] = route

    @_locked
    def add_neigh(self, neigh: Neigh, permanent: bool = True) -> None:
        self.neighs[neigh.key] = NeighEntry(neigh, permanent)

    @_locked
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

    def close(self) -> None:
        pass

    @_locked
    def underlay(self, spec: str | None) -> Underlay:
        for name, e in self.links.items():
            if spec in (None, name) or any(a.split("/")[0] == spec for d, a in self.addresses if d == name):
                addrs = sorted(a for d, a in self.addresses if d == name and ":" not in a)
                if e.link.type in ("vxlan", "bridge") or not addrs:
                    continue
                prefixes = tuple(str(ipaddress.ip_interface(a).network) for a in addrs)
                return Underlay(name, addrs[0].split("/")[0], e.link.mtu or 1500, prefixes)
        raise NetlinkError(E.ENODEV, f"no underlay interface {spec or '(default route)'}")

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
        nets = [ipaddress.ip_network(n) for n in networks]
        code = self._fault("dump", None)
        if code is not None:
            raise DumpInterrupted(code, "dump interrupted (NLM_F_DUMP_INTR) too many times")
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

    @_locked
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
