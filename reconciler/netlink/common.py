"""What every netlink backend shares: namespace handling and iproute2 wording.

Kept apart so that the backends (pyroute2's, the batched one) and the link
event watcher say and do these things the same way.
"""
from __future__ import annotations

import ctypes
import errno as E
import ipaddress
import os
import threading

from ..errors import NamespaceNotFound, NetlinkError
from ..plan import Change
from . import Underlay

__all__ = ["NETNS_RUN_DIR", "DeviceVanished", "UnderlayLookup", "describe", "enter_netns", "in_netns",
           "looks_like_ip", "netns_path", "underlay_of"]

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE, IFA_F_PERMANENT = 0x08, 0x20, 0x40, 0x80
_IFA_F_UNUSABLE = IFA_F_DEPRECATED | IFA_F_TENTATIVE | IFA_F_DADFAILED


def netns_path(name: str) -> str:
    # pyroute2 reads a name containing "/" as a path: "../../proc/1/ns/net"
    # would escape NETNS_RUN_DIR.  `ip netns` names are plain file names.
    if not name or "/" in name or name in (".", ".."):
        raise NamespaceNotFound(E.EINVAL, f"network namespace {name!r}: not a namespace name")
    path = os.path.join(NETNS_RUN_DIR, name)
    if not os.path.exists(path):
        raise NamespaceNotFound(E.ENOENT, f"network namespace {name!r} does not exist ({path})")
    return path



def enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise NetlinkError(code, f"setns({path})")
    finally:
        os.close(fd)



def in_netns(path: str | None, fn):
    """Run ``fn()`` on a short-lived thread that first joins the namespace at ``path``.

    ``setns(2)`` moves only the calling thread; the thread dies afterwards,
    so no other thread ever runs in the wrong namespace.
    """
    if path is None:
        return fn()
    box: dict = {}

    def run() -> None:
        try:
            enter_netns(path)
            box["value"] = fn()
        except BaseException as exc:        # re-raised on the caller's thread
            box["error"] = exc

    t = threading.Thread(target=run, name="setns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]



def looks_like_ip(spec: str) -> bool:
    try:
        ipaddress.ip_address(spec)
    except ValueError:
        return False
    return True



def describe(change: Change) -> str:
    """The change in iproute2 words, for messages: ``route replace 100.64.2.0/24 via ...``."""
    o, op = change.obj, change.op
    if o.KIND == "link":
        if op == "delete":
            return f"link del {o.name}"
        words = ["link add" if op == "create" else "link set", o.name]
        if o.mac:
            words.append(f"address {o.mac}")
        if o.mtu:
            words.append(f"mtu {o.mtu}")
        if op == "create":
            words.append(f"type {o.type}")
            if o.type == "vxlan":
                words.append(f"id {o.vni}")
                words += [f"dev {o.underlay}"] if o.underlay else []
                words += [f"local {o.local}"] if o.local else []
                words += [f"dstport {o.port}"] if o.port is not None else []
                words.append("learning" if o.learning else "nolearning")
                words += ["gbp"] if o.gbp else []
        if o.up is not None:
            words.append("up" if o.up else "down")
        return " ".join(words)
    if o.KIND == "address":
        return f"addr {'del' if op == 'delete' else 'replace'} {o.cidr} dev {o.dev}"
    if o.KIND == "nexthop":
        if op == "delete":
            return f"nexthop del id {o.id}"
        words = [f"nexthop replace id {o.id}"]
        words += [f"via {o.gateway}"] if o.gateway else []
        words += [f"dev {o.dev}"] if o.dev else []
        words += ["onlink"] if o.onlink else []
        return " ".join(words)
    if o.KIND == "route" and o.nhid:
        # A route through a nexthop object is written and deleted by its nhid alone.
        words = [f"route {'del' if op == 'delete' else 'replace'} {o.dst} nhid {o.nhid}"]
        words += [f"metric {o.metric}"] if o.metric else []
        return " ".join(words)
    if o.KIND == "route":
        words = [f"route {'del' if op == 'delete' else 'replace'} {o.dst}"]
        words += [f"via {o.gateway}"] if o.gateway else []
        words += [f"dev {o.dev}"] if o.dev else []
        words += ["onlink"] if o.onlink and op != "delete" else []
        words += [f"metric {o.metric}"] if o.metric else []
        return " ".join(words)
    if o.KIND == "neigh":
        if op == "delete":
            return f"neigh del {o.ip} dev {o.dev}"
        return f"neigh replace {o.ip} lladdr {o.mac} dev {o.dev} nud permanent"
    if op == "delete":
        return f"fdb del {o.mac} dev {o.dev} dst {o.dst} self"
    return f"fdb replace {o.mac} dev {o.dev} dst {o.dst} self permanent"



def underlay_of(name: str, mtu: int, addrs: list[tuple[str, int, int]], given: str | None,
                where: str = "") -> Underlay:
    """The underlay from its IPv4 addresses, ``(local, prefixlen, IFA_F_* flags)`` each.

    ``given`` is the address the operator named (``--iface IP``); otherwise
    flannel's preference picks one: usable (not deprecated, tentative or
    failed DAD), global over link-local, then permanent over dynamic.  The
    prefixes (shorter than /32) feed the DirectRouting on-link test.
    """
    if given is None:
        usable = [a for a in addrs if a[0] and not a[2] & _IFA_F_UNUSABLE]
        usable.sort(key=lambda a: (ipaddress.ip_address(a[0]).is_link_local, not a[2] & IFA_F_PERMANENT))
        given = usable[0][0] if usable else None
    if given is None:
        raise NetlinkError(E.EADDRNOTAVAIL, f"underlay {name} has no usable IPv4 address{where}")
    prefixes: list[str] = []
    for local, plen, _flags in addrs:
        if plen < 32 and local:
            net = str(ipaddress.ip_network(f"{local}/{plen}", strict=False))
            if net not in prefixes:
                prefixes.append(net)
    return Underlay(name=name, address=given, mtu=mtu, prefixes=tuple(prefixes))


class DeviceVanished(Exception):
    """A per-device dump met ENODEV: the device went away mid-dump."""


class UnderlayLookup:
    """``underlay(spec)`` for a backend, in terms of the backend's own hooks:
    ``_refresh_links()``, ``_index``/``_names`` (name <-> ifindex),
    ``_default_route_oif()``, ``_holder_of(ip)``, ``_v4_addresses(idx)``
    (``(local, prefixlen, flags)`` tuples), ``_link_mtu(idx)`` and ``_where()``."""

    def underlay(self, spec: str | None) -> Underlay:
        """The external interface: by name, by an IPv4 address it holds, or
        (``None``) the interface of the main table's IPv4 default route."""
        self._refresh_links()
        given: str | None = None
        try:
            if spec is None:
                idx = self._default_route_oif()
            elif looks_like_ip(spec):
                ip = ipaddress.ip_address(spec)
                if ip.version != 4:
                    raise NetlinkError(E.EAFNOSUPPORT, f"underlay {spec}: only an IPv4 address can name it")
                given = str(ip)
                idx = self._holder_of(given)
            else:
                idx = self._index.get(spec)
                if idx is None:
                    raise NetlinkError(E.ENODEV, f"underlay: no interface named {spec!r}{self._where()}")
            name = self._names[idx]
            addrs = self._v4_addresses(idx)
        except DeviceVanished as exc:
            raise NetlinkError(E.ENODEV, f"underlay {spec}: the interface vanished{self._where()}") from exc
        return underlay_of(name, self._link_mtu(idx), addrs, given, self._where())
