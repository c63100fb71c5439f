"""The reference netlink backend: pyroute2, one request per change.

This module and ``pyroute_msgs.py`` (the messages, split off) are the only
modules that import pyroute2.  It speaks rtnetlink directly: each operation
builds one kernel message (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``, ``ndmsg``)
with the ``NLM_F_*`` flags iproute2 would use, sends it over one
``NETLINK_ROUTE`` socket and waits for the ACK.
It is deliberately plain: it is the yardstick the batched backend is held
to, not the fast path (about 1,200 route writes per second, see
``docs/kernel-facts.md`` section 4).

Hazards handled here, each met for real:

* ``IPRoute(netns=NAME)`` silently *creates* a missing namespace.  We check
  ``/var/run/netns/NAME`` ourselves, refuse names that are paths, and open
  the socket with ``flags=0`` so pyroute2 never creates one either.
* pyroute2 0.9.7 never reports ``NLM_F_DUMP_INTR``, and the kernel may set
  it on the final ``NLMSG_DONE`` only, which pyroute2 swallows.  We watch
  the header of every message of a dump through the request callback
  (which sees ``NLMSG_DONE`` too), retry, and raise ``DumpInterrupted``.
* A route dump without a family returns IPv6 link-local routes too; every
  dump here names its family, and uses ``NETLINK_GET_STRICT_CHK`` so the
  kernel filters by table, type and ifindex.  Python filters again, since
  an old kernel ignores filters it does not know.
* An FDB replace is refused ("Operation not supported") unless ``NTF_SELF``
  and ``NUD_PERMANENT`` are set explicitly.
* Names become ifindexes through a cache refreshed by one link dump at the
  start of each ``apply`` and after each link create or delete, never by a
  lookup per operation.

No subprocess is ever started here: lease fields (MACs, addresses) only
ever travel inside netlink attributes, never through a shell.
"""
from __future__ import annotations

import errno as E
import ipaddress
import os
import struct
import threading
from socket import AF_BRIDGE, AF_INET, AF_INET6
from typing import Callable, Collection, Sequence

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
)
from pyroute2.netlink import rtnl
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted
from pyroute2.netlink.exceptions import NetlinkError as _PrNetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.iprsocket import AsyncIPRSocket
from pyroute2.netlink.rtnl.ndmsg import NTF_PROXY, NTF_SELF, NUD_PERMANENT, ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from reconciler.core.errors import DumpInterrupted, NamespaceNotFound, NetlinkError, is_gone
from reconciler.core.model import RTPROT_RECONCILER, Address, Fdb, KernelState, Link, Neigh, Nexthop, Route
from reconciler.core.plan import Change, OpResult
from reconciler.kernel.netlink.common import DeviceVanished as _DeviceVanished
from reconciler.kernel.netlink.common import KernelFacts, UnderlayLookup, describe, disable_accept_ra, netns_path
from reconciler.kernel.netlink.pyroute_msgs import (IFF_UP, ROUTE_TYPE_NAMES, RT_TABLE_MAIN, RTN_UNICAST, RTNH_F_ONLINK,
                           _addr_dump_msg, _addr_flags, _cidr_of,
                           _ip, _local_of, _ndmsg, _route_dump_msg, _route_get_msg, address_msg, fdb_msg,
                           link_create_msg, link_set_msg, link_up_msg, neigh_msg, route_msg)
from reconciler.kernel.netlink.pyroute_msgs import (RTM_DELNEXTHOP, RTM_GETNEXTHOP, RTM_NEWNEXTHOP, _nexthop_dump_msg, nexthop_msg,
                           rtnl_marshal)

__all__ = ["PyrouteBackend"]

# Kernel constants, in rtnetlink.h / if.h / if_addr.h spelling (more in pyroute_msgs).
NLM_F_DUMP_INTR = 0x10
RTM_F_CLONED = 0x200
VXLAN_DEFAULT_PORT = 8472

F_DUMP = NLM_F_REQUEST | NLM_F_DUMP
F_ACK = NLM_F_REQUEST | NLM_F_ACK                       # ip ... del / ip link set
F_ADD_EXCL = F_ACK | NLM_F_CREATE | NLM_F_EXCL          # ip link add
F_REPLACE = F_ACK | NLM_F_CREATE | NLM_F_REPLACE        # ip ... replace

#: How often an interrupted dump is tried before it is given up.
DUMP_TRIES = 5
_FE80_64 = ipaddress.ip_network("fe80::/64")


class _NoDevice(Exception):
    """A change names a device the name cache does not know."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Partial(Exception):
    """A link was created but a follow-up step (accept_ra, up) failed."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


def _errtext(exc: BaseException) -> tuple[int, str]:
    """(errno, "detail (ENAME)") of a pyroute2 or OS error."""
    code = getattr(exc, "code", None) or getattr(exc, "errno", None) or E.EIO
    detail = exc.args[1] if len(exc.args) > 1 and exc.args[1] else os.strerror(code)
    return code, f"{detail} ({E.errorcode.get(code, code)})"


class PyrouteBackend(UnderlayLookup, KernelFacts):
    """``NetlinkBackend`` over one rtnetlink socket, optionally inside a named namespace.

    pyroute2 keeps its event loop per thread: use a backend only from the
    thread that made it (one backend per thread).
    """

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._netns_file = netns_path(netns) if netns is not None else None
        try:
            # flags=0: never create the namespace.  groups=0: no multicast
            # subscriptions, so no events pile up in the receive queue.
            self._sock = AsyncIPRSocket(netns=netns, flags=0, strict_check=True, ext_ack=True, groups=0)
            self._loop = self._sock.event_loop
            self._loop.run_until_complete(self._sock.setup_endpoint())
            rtnl_marshal(self._sock.marshal)     # nexthop messages, RTA_NH_ID
        except FileNotFoundError as exc:        # removed between the check and the open
            raise NamespaceNotFound(E.ENOENT, f"network namespace {netns!r} does not exist") from exc
        except (OSError, _PrNetlinkError) as exc:
            code, text = _errtext(exc)
            raise NetlinkError(code, f"cannot open an rtnetlink socket{self._where()}: {text}") from exc
        self._index: dict[str, int] | None = None     # name -> ifindex; None = stale
        self._names: dict[int, str] = {}
        self._links: dict[int, object] = {}           # ifindex -> last ifinfmsg

    def _where(self) -> str:
        return f" in netns {self._netns}" if self._netns else ""

    # ---------------------------------------------------------------- plumbing
    def _request(self, msg, msg_type: int, flags: int, callback: Callable | None = None) -> list:
        """Send one request and collect every answer.  Raises pyroute2's errors."""
        if self._sock is None:
            raise OSError(E.EBADF, "backend is closed")

        async def collect():
            answers = await self._sock.nlm_request(msg, msg_type, flags, callback=callback)
            return [m async for m in answers]

        return self._loop.run_until_complete(collect())

    def _dump(self, make: Callable[[], object], msg_type: int, what: str) -> list:
        """A dump (``NLM_F_REQUEST|NLM_F_DUMP``), retried while the kernel flags it ``NLM_F_DUMP_INTR``."""
        for _ in range(DUMP_TRIES):
            interrupted = False

            def watch(msg) -> bool:
                nonlocal interrupted
                if msg["header"]["flags"] & NLM_F_DUMP_INTR:
                    interrupted = True
                return False                    # never swallow the message

            try:
                answers = self._request(make(), msg_type, F_DUMP, watch)
            except NetlinkDumpInterrupted:
                interrupted = True
            except _PrNetlinkError as exc:
                if exc.code == E.EINTR:
                    interrupted = True
                elif exc.code == E.ENODEV:
                    raise _DeviceVanished(what) from exc
                else:
                    code, text = _errtext(exc)
                    raise NetlinkError(code, f"{what} dump{self._where()}: {text}") from exc
            except OSError as exc:
                code, text = _errtext(exc)
                raise NetlinkError(code, f"{what} dump{self._where()}: {text}") from exc
            if not interrupted:
                return answers
        raise DumpInterrupted(E.EINTR, f"{what} dump{self._where()} was interrupted (NLM_F_DUMP_INTR) "
                                       f"{DUMP_TRIES} times in a row; not trusting it")

    def _refresh_links(self) -> list:
        """``ip link show``: one dump of all links, which also refreshes the name cache."""
        msgs = self._dump(ifinfmsg, rtnl.RTM_GETLINK, "link")
        self._links = {m["index"]: m for m in msgs}
        self._names = {m["index"]: m.get("IFLA_IFNAME") for m in msgs}
        self._index = {name: idx for idx, name in self._names.items()}
        return msgs

    def _link_value(self, msg) -> Link:
        return self._parse_link(msg)

    def _ifindex(self, name: str) -> int:
        if self._index is None:
            self._refresh_links()
        idx = self._index.get(name)
        if idx is None:
            raise _NoDevice(name)
        return idx

    # -------------------------------------------------------------------- dump
    def dump(self, devices: Collection[str], networks: Collection[str] = ()) -> KernelState:
        """Links, addresses, routes, neighbours and FDB entries of ``devices`` (see the contract)."""
        nets = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        for _ in range(DUMP_TRIES):
            try:
                return self._dump_once(set(devices), nets)
            except _DeviceVanished:
                continue                        # a device was re-created mid-dump: start again
        raise DumpInterrupted(E.ENODEV, f"devices kept changing during the dump{self._where()}")

    def _dump_once(self, devices: set[str], nets: tuple = ()) -> KernelState:
        state = KernelState()
        ours: dict[int, str] = {}
        for msg in self._refresh_links():
            name = msg.get("IFLA_IFNAME")
            if name in devices:
                link = self._parse_link(msg)
                state.add(link)
                ours[msg["index"]] = name
        for idx, name in ours.items():
            for obj in self._addresses(idx):
                state.add(Address(name, obj))
            for fam in (AF_INET, AF_INET6):
                for n in self._dump(lambda: _ndmsg(fam, idx), rtnl.RTM_GETNEIGH, f"neigh {name}"):
                    neigh = self._parse_neigh(n, idx, name)
                    if neigh is not None:
                        state.add(neigh)
            if state.get("link", name).type == "vxlan":
                for n in self._dump(lambda: _ndmsg(AF_BRIDGE, idx), rtnl.RTM_GETNEIGH, f"fdb {name}"):
                    fdb = self._parse_fdb(n, idx, name)
                    if fdb is not None:
                        state.add(fdb)
        for fam in (AF_INET, AF_INET6):
            for r in self._dump(lambda: _route_dump_msg(fam), rtnl.RTM_GETROUTE, "route"):
                route = self._parse_route(r, ours, nets)
                if route is not None:
                    state.add(route)
        for m in self._dump(_nexthop_dump_msg, RTM_GETNEXTHOP, "nexthop"):
            nh = self._parse_nexthop(m, self._names)
            if nh is not None:
                state.add(nh)
        return state

    @staticmethod
    def _parse_nexthop(msg, names: dict[int, str]) -> Nexthop | None:
        """``ip nexthop show``: every nexthop; a group or blackhole (or one whose gateway does
        not parse) as its id alone, so that a foreign one at an id we want is still seen."""
        nhid, oif, gw = msg.get("NHA_ID"), msg.get("NHA_OIF"), msg.get("NHA_GATEWAY")
        if not nhid:
            return None
        if msg.get("NHA_GROUP") or msg.get("NHA_BLACKHOLE") or (gw is not None and len(gw) not in (4, 16)):
            return Nexthop(id=nhid, gateway=None, dev=None, protocol=msg["protocol"])
        return Nexthop(id=nhid, gateway=str(ipaddress.ip_address(gw)) if gw is not None else None,
                       dev=names.get(oif) if oif else None, onlink=bool(msg["flags"] & RTNH_F_ONLINK),
                       protocol=msg["protocol"])

    def _parse_link(self, msg) -> Link:
        info = msg.get("IFLA_LINKINFO")
        kind = (info.get("IFLA_INFO_KIND") if info else None) or ""   # "" for lo and real NICs
        mac = msg.get("IFLA_ADDRESS")
        common = dict(name=msg.get("IFLA_IFNAME"), type=kind, mtu=msg.get("IFLA_MTU"),
                      mac=mac.lower() if mac else None, up=bool(msg["flags"] & IFF_UP))
        if kind != "vxlan":
            return Link(**common)
        data = info.get("IFLA_INFO_DATA")
        local = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
        if local in ("0.0.0.0", "::"):
            local = None
        lower = data.get("IFLA_VXLAN_LINK")
        return Link(**common, vni=data.get("IFLA_VXLAN_ID"), local=_ip(local) if local else None,
                    port=data.get("IFLA_VXLAN_PORT") or VXLAN_DEFAULT_PORT,
                    learning=bool(data.get("IFLA_VXLAN_LEARNING")), gbp=bool(data.get("IFLA_VXLAN_GBP")),
                    underlay=self._names.get(lower) if lower else None)

    def _addresses(self, idx: int, families=(AF_INET, AF_INET6)) -> list[str]:
        """``ip addr show dev X``: "ip/prefixlen" strings, IPv6 link-local left out."""
        out = []
        for msg in self._address_msgs(idx, families):
            cidr = _cidr_of(msg)
            if cidr is not None:
                out.append(cidr)
        return out

    def _address_msgs(self, idx: int, families=(AF_INET, AF_INET6)) -> list:
        out = []
        for fam in families:
            for msg in self._dump(lambda: _addr_dump_msg(fam, idx), rtnl.RTM_GETADDR, f"addr {idx}"):
                if msg["index"] == idx and msg["family"] == fam:
                    out.append(msg)
        return out

    def _parse_route(self, msg, ours: dict[int, str], nets: tuple = ()) -> Route | None:
        table = msg.get("RTA_TABLE") or msg["table"]
        if table != RT_TABLE_MAIN or msg["type"] not in ROUTE_TYPE_NAMES or msg["flags"] & RTM_F_CLONED:
            return None
        if msg.get("RTA_MULTIPATH"):
            return None                         # never written by us; one Route cannot hold it
        oif = msg.get("RTA_OIF")
        fam = msg["family"]
        dst = msg.get("RTA_DST") or ("0.0.0.0" if fam == AF_INET else "::")
        net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)
        if oif not in ours and msg["proto"] != RTPROT_RECONCILER and not any(
                net.version == n.version and net.subnet_of(n) for n in nets):
            return None
        if net == _FE80_64:
            return None
        gw = msg.get("RTA_GATEWAY")
        return Route(dst=str(net), gateway=_ip(gw) if gw else None,
                     dev=self._names.get(oif) if oif else None,
                     onlink=bool(msg["flags"] & RTNH_F_ONLINK),
                     metric=msg.get("RTA_PRIORITY") or 0, protocol=msg["proto"], nhid=msg.get("RTA_NH_ID") or 0,
                     type=ROUTE_TYPE_NAMES[msg["type"]])

    @staticmethod
    def _parse_neigh(msg, idx: int, name: str) -> Neigh | None:
        ip, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
        if (msg["ifindex"] != idx or not msg["state"] & NUD_PERMANENT or msg["flags"] & NTF_PROXY
                or msg["family"] not in (AF_INET, AF_INET6) or not ip or not mac):
            return None
        return Neigh(dev=name, ip=_ip(ip), mac=mac.lower())

    @staticmethod
    def _parse_fdb(msg, idx: int, name: str) -> Fdb | None:
        dst, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
        if (msg["ifindex"] != idx or msg["family"] != AF_BRIDGE or not msg["flags"] & NTF_SELF
                or not msg["state"] & NUD_PERMANENT or not dst or not mac):
            return None
        return Fdb(dev=name, mac=mac.lower(), dst=_ip(dst))

    # ------------------------------------------------------------------- apply
    def apply(self, changes: Sequence[Change]) -> list[OpResult]:
        """Carry out ``changes`` in order, one request each; one ``OpResult`` per change."""
        self._index = None          # devices may have come and gone since the last call
        return [self._apply_one(c) for c in changes]

    def _apply_one(self, change: Change) -> OpResult:
        handler = getattr(self, f"_{change.kind}_{'delete' if change.op == 'delete' else 'write'}")
        try:
            handler(change)
        except _NoDevice as exc:
            if change.op == "delete":
                return OpResult(change, ok=True, message="already gone")
            return OpResult(change, ok=False, errno=E.ENODEV,
                            message=f"{describe(change)}: Cannot find device \"{exc.name}\" (ENODEV)")
        except (_PrNetlinkError, OSError) as exc:
            code, text = _errtext(exc)
            if change.op == "delete" and is_gone(code):
                return OpResult(change, ok=True, message="already gone")
            return OpResult(change, ok=False, errno=code, message=f"{describe(change)}: {text}")
        except NetlinkError as exc:  # the link dump behind the name cache failed
            return OpResult(change, ok=False, errno=exc.errno, message=f"{describe(change)}: {exc}")
        except _Partial as exc:     # the object exists, but a follow-up step failed
            return OpResult(change, ok=False, errno=exc.code, message=exc.text)
        except (ValueError, TypeError, struct.error) as exc:   # malformed address, MAC, ...
            return OpResult(change, ok=False, errno=E.EINVAL, message=f"{describe(change)}: {exc} (EINVAL)")
        return OpResult(change, ok=True)

    # links
    def _link_write(self, change: Change) -> None:
        if change.op == "create":
            self._link_create(change.obj)
        else:
            self._link_set(change)

    def _link_create(self, link: Link) -> None:
        """``ip link add NAME [address MAC] [mtu N] type vxlan|bridge ...``: RTM_NEWLINK, NLM_F_CREATE|NLM_F_EXCL.

        An existing device of that name is EEXIST: the planner deletes first.
        Then, for vxlan, ``net.ipv6.conf.NAME.accept_ra=0`` (as flanneld),
        and ``ip link set NAME up`` if asked.
        """
        msg = link_create_msg(link, self._ifindex)
        self._request(msg, rtnl.RTM_NEWLINK, F_ADD_EXCL)
        self._index = None
        if link.type == "vxlan":
            self._disable_accept_ra(link.name)
        if link.up:
            up = link_up_msg(link.name)     # by name: exactly the device just made
            try:
                self._request(up, rtnl.RTM_NEWLINK, F_ACK)
            except (_PrNetlinkError, OSError) as exc:
                code, text = _errtext(exc)
                raise _Partial(code, f"link set {link.name} up (after link add): {text}") from exc

    def watch_links(self, devices: Collection[str], callback: Callable[[str | None], None],
                    stop: threading.Event) -> None:
        """Link events on ``devices`` in this backend's namespace, until ``stop`` is set.

        Blocks: run it on a thread of its own (it joins the namespace, which
        moves only the calling thread).  See ``events.watch_links``.
        """
        from reconciler.kernel.netlink.events import watch_links

        watch_links(self._netns_file, devices, callback, stop)

    def _disable_accept_ra(self, name: str) -> None:
        """``accept_ra=0`` inside the backend's namespace (``common.disable_accept_ra``: a read-only
        /proc/sys is warned about once, not a failure)."""
        try:
            disable_accept_ra(self._netns_file, name)
        except OSError as exc:
            code, text = _errtext(exc)
            raise _Partial(code, f"sysctl net.ipv6.conf.{name}.accept_ra=0 (after link add): {text}") from exc

    def _link_set(self, change: Change) -> None:
        """``ip link set NAME [mtu N] [address MAC] [up|down]``: RTM_NEWLINK on the ifindex, no create flags.

        Only the mutable attributes that are wanted (not ``None``) and differ
        from ``change.live`` (all of them when there is no live object).
        """
        want, live = change.obj, change.live
        todo = {a: getattr(want, a) for a in Link.MUTABLE
                if getattr(want, a) is not None and (live is None or getattr(live, a) != getattr(want, a))}
        idx = self._ifindex(want.name)
        if not todo:
            return
        msg = link_set_msg(idx, todo)
        self._request(msg, rtnl.RTM_NEWLINK, F_ACK)

    def _link_delete(self, change: Change) -> None:
        """``ip link del NAME``: RTM_DELLINK.  Takes the device's addresses, routes and entries with it."""
        msg = ifinfmsg()
        msg["index"] = self._ifindex(change.obj.name)
        try:
            self._request(msg, rtnl.RTM_DELLINK, F_ACK)
        finally:
            self._index = None

    # addresses
    def _address_msg(self, addr: Address) -> ifaddrmsg:
        return address_msg(addr, self._ifindex)

    def _address_write(self, change: Change) -> None:
        """``ip addr replace CIDR dev DEV``: RTM_NEWADDR, NLM_F_CREATE|NLM_F_REPLACE, scope global."""
        self._request(self._address_msg(change.obj), rtnl.RTM_NEWADDR, F_REPLACE)

    def _address_delete(self, change: Change) -> None:
        """``ip addr del CIDR dev DEV``: RTM_DELADDR (EADDRNOTAVAIL when already gone)."""
        self._request(self._address_msg(change.obj), rtnl.RTM_DELADDR, F_ACK)

    # routes
    def _route_msg(self, route: Route, delete: bool) -> rtmsg:
        return route_msg(route, delete, self._ifindex)

    def _route_write(self, change: Change) -> None:
        """``ip route replace DST [via GW] [dev DEV] [onlink] [metric N] proto 73``:
        RTM_NEWROUTE, NLM_F_CREATE|NLM_F_REPLACE, table main."""
        self._request(self._route_msg(change.obj, delete=False), rtnl.RTM_NEWROUTE, F_REPLACE)

    def _route_delete(self, change: Change) -> None:
        """``ip route del DST [via GW] [dev DEV] [metric N]``: RTM_DELROUTE (ESRCH when already gone)."""
        self._request(self._route_msg(change.obj, delete=True), rtnl.RTM_DELROUTE, F_ACK)

    # nexthops
    def _nexthop_write(self, change: Change) -> None:
        """``ip nexthop replace id N via GW dev DEV onlink proto 73``: RTM_NEWNEXTHOP,
        NLM_F_CREATE|NLM_F_REPLACE (the routes through it follow a replace)."""
        self._request(nexthop_msg(change.obj, False, self._ifindex), RTM_NEWNEXTHOP, F_REPLACE)

    def _nexthop_delete(self, change: Change) -> None:
        """``ip nexthop del id N``: RTM_DELNEXTHOP (ENOENT when already gone).  The kernel deletes
        the routes through it too: the plan moves or deletes them first."""
        self._request(nexthop_msg(change.obj, True, self._ifindex), RTM_DELNEXTHOP, F_ACK)

    # neighbours
    def _neigh_msg(self, neigh: Neigh, delete: bool) -> ndmsg:
        return neigh_msg(neigh, delete, self._ifindex)

    def _neigh_write(self, change: Change) -> None:
        """``ip neigh replace IP lladdr MAC dev DEV nud permanent``: RTM_NEWNEIGH, NLM_F_CREATE|NLM_F_REPLACE."""
        self._request(self._neigh_msg(change.obj, delete=False), rtnl.RTM_NEWNEIGH, F_REPLACE)

    def _neigh_delete(self, change: Change) -> None:
        """``ip neigh del IP dev DEV``: RTM_DELNEIGH (ENOENT when already gone)."""
        self._request(self._neigh_msg(change.obj, delete=True), rtnl.RTM_DELNEIGH, F_ACK)

    # FDB
    def _fdb_msg(self, fdb: Fdb, delete: bool) -> ndmsg:
        return fdb_msg(fdb, delete, self._ifindex)

    def _fdb_write(self, change: Change) -> None:
        """``bridge fdb replace MAC dev DEV dst IP self permanent``: RTM_NEWNEIGH (AF_BRIDGE),
        NLM_F_CREATE|NLM_F_REPLACE, NTF_SELF, NUD_PERMANENT."""
        self._request(self._fdb_msg(change.obj, delete=False), rtnl.RTM_NEWNEIGH, F_REPLACE)

    def _fdb_delete(self, change: Change) -> None:
        """``bridge fdb del MAC dev DEV dst IP self``: RTM_DELNEIGH (ENOENT when already gone)."""
        self._request(self._fdb_msg(change.obj, delete=True), rtnl.RTM_DELNEIGH, F_ACK)

    # ---------------------------------------------------------------- underlay
    # underlay() itself is UnderlayLookup's; these are its hooks.
    def _v4_addresses(self, idx: int) -> list[tuple[str, int, int]]:
        return [(_local_of(m), m["prefixlen"], _addr_flags(m)) for m in self._address_msgs(idx, (AF_INET,))]

    def _v6_addresses(self, idx: int) -> list[tuple[str, int, int]]:
        return [(_local_of(m), m["prefixlen"], _addr_flags(m)) for m in self._address_msgs(idx, (AF_INET6,))]

    def _link_mtu(self, idx: int) -> int:
        return self._links[idx].get("IFLA_MTU")

    def _default_route_oif(self) -> int:
        best = None
        for r in self._dump(lambda: _route_dump_msg(AF_INET), rtnl.RTM_GETROUTE, "route"):
            table = r.get("RTA_TABLE") or r["table"]
            if table != RT_TABLE_MAIN or r["dst_len"] != 0 or r["type"] != RTN_UNICAST:
                continue
            oif = r.get("RTA_OIF")
            if oif is None and r.get("RTA_MULTIPATH"):
                oif = r.get("RTA_MULTIPATH")[0].get("oif")
            if oif in self._names and (best is None or (r.get("RTA_PRIORITY") or 0) < best[0]):
                best = (r.get("RTA_PRIORITY") or 0, oif)
        if best is None:
            raise NetlinkError(E.ENETUNREACH, f"underlay: no IPv4 default route in the main table{self._where()}")
        return best[1]

    def _holder_of(self, ip: str) -> int:
        # One unfiltered dump (ifa_index 0) rather than one per interface.
        for m in self._dump(lambda: _addr_dump_msg(AF_INET, 0), rtnl.RTM_GETADDR, "addr"):
            if m["family"] == AF_INET and _local_of(m) == ip and m["index"] in self._names:
                return m["index"]
        raise NetlinkError(E.EADDRNOTAVAIL, f"underlay: no interface holds {ip}{self._where()}")

    def _route_get(self, ip: str) -> tuple[int, str | None]:
        """``ip route get IP``: one RTM_GETROUTE request (not a dump)."""
        try:
            answers = self._request(_route_get_msg(ip), rtnl.RTM_GETROUTE, NLM_F_REQUEST)
        except (_PrNetlinkError, OSError) as exc:
            code, _text = _errtext(exc)
            raise NetlinkError(code, f"underlay: no route to {ip} (--iface-can-reach){self._where()}") from exc
        for m in answers:
            if m.get("RTA_OIF") is not None:
                return m.get("RTA_OIF"), m.get("RTA_PREFSRC")
        raise NetlinkError(E.ENETUNREACH, f"underlay: no route to {ip} (--iface-can-reach){self._where()}")

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the rtnetlink socket (and pyroute2's event loop)."""
        sock, self._sock = getattr(self, "_sock", None), None
        if sock is not None:
            sock.close()

    def __enter__(self) -> "PyrouteBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PyrouteBackend(netns={self._netns!r})"

    def watch_kernel(self, devices, networks, callback, stop, ready=None, share=None) -> None:
        """Kernel events on what ``dump(devices, networks)`` shows, in this backend's namespace,
        until ``stop`` is set: see ``events.watch_kernel`` (the one implementation).

        Blocks: run it on a thread of its own (it joins the namespace, which
        moves only the calling thread).
        """
        from reconciler.kernel.netlink.batched import BatchedBackend
        from reconciler.kernel.netlink.events import watch_kernel

        watch_kernel(self._netns_file, devices, networks, callback, stop, ready, accelerate=True,
                     open_dumper=lambda: BatchedBackend(None), share=share)
