"""What every netlink backend shares: namespace handling and iproute2 wording.

Kept apart so that the backends (pyroute2's, the batched one) and the link
event watcher say and do these things the same way.
"""
from __future__ import annotations

import ctypes
import errno as E
import ipaddress
import logging
import os
import re
import threading
from dataclasses import dataclass, replace
from typing import Sequence

from reconciler.core.errors import NamespaceNotFound, NetlinkError, ReconcilerError
from reconciler.core.plan import Change
from reconciler.kernel.netlink import Underlay

__all__ = ["NETNS_RUN_DIR", "DeviceVanished", "UnderlayLookup", "UnderlaySpec", "compile_iface_regex", "describe",
           "disable_accept_ra", "enter_netns", "in_netns", "looks_like_ip", "match_iface_regex", "netns_path",
           "underlay_of", "underlay_v6_of"]

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE, IFA_F_PERMANENT = 0x08, 0x20, 0x40, 0x80
IFA_F_TEMPORARY = 0x01
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



log = logging.getLogger("flannel_reconciler")

#: What a write to /proc/sys fails with where /proc/sys is not ours to write: read-only in a
#: container that is not privileged (EROFS), or refused by a security module (EACCES, EPERM).
#: docs/container.md shows it.
SYSCTL_DENIED = frozenset({E.EROFS, E.EACCES, E.EPERM})
# (namespace file, device) pairs already warned about: the warning is said once per device.
_accept_ra_warned: set[tuple[str | None, str]] = set()
_accept_ra_lock = threading.Lock()


def disable_accept_ra(netns_file: str | None, name: str) -> None:
    """``sysctl -w net.ipv6.conf.NAME.accept_ra=0`` inside the namespace, as flanneld does.

    /proc/sys/net shows the namespace of the *calling thread*, so the write
    runs on a short-lived thread that first joins the namespace.  No conf
    directory means IPv6 is disabled there: nothing to do.  A /proc/sys that
    cannot be written (``SYSCTL_DENIED``) is a normal condition in a
    container: no netlink message sets accept_ra (docs/container.md), so the
    device stays as created, and one warning per device says what was not
    set and why.  Any other error is raised (``OSError``).
    """
    path = f"/proc/sys/net/ipv6/conf/{name}/accept_ra"

    def write() -> None:
        try:
            with open(path, "w") as f:
                f.write("0")
        except FileNotFoundError:
            pass

    try:
        in_netns(netns_file, write)
    except OSError as exc:
        if exc.errno not in SYSCTL_DENIED:
            raise
        with _accept_ra_lock:
            if (netns_file, name) in _accept_ra_warned:
                return
            _accept_ra_warned.add((netns_file, name))
        log.warning("%s was created, but net.ipv6.conf.%s.accept_ra=0 could not be set: %s (%s) writing %s "
                    "(a container's /proc/sys is read-only unless privileged); the device works without it, "
                    "set it on the host to drop IPv6 router advertisements on it (docs/container.md)",
                    name, name, exc.strerror or os.strerror(exc.errno), E.errorcode.get(exc.errno, exc.errno), path)


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
    return Underlay(name=name, address=given, mtu=mtu, prefixes=tuple(prefixes),
                    addresses=tuple(a[0] for a in addrs if a[0]))


def underlay_v6_of(underlay: Underlay, addrs: list[tuple[str, int, int]], public_ipv6: str | None,
                   where: str = "") -> Underlay:
    """``underlay`` with its IPv6 side, from the interface's IPv6 addresses
    (``(address, prefixlen, IFA_F_* flags)`` each).

    flanneld's ``GetInterfaceIP6Addrs`` order: global unicast (ULAs included)
    before link-local, permanent before dynamic, non-temporary before
    temporary; deprecated ones skipped (tentative and failed-DAD ones too: a
    VXLAN socket cannot bind them).  With ``public_ipv6`` given, an interface
    without a usable IPv6 address is fine: the operator named the address.
    """
    usable = []
    for local, _plen, flags in addrs:
        if not local or flags & _IFA_F_UNUSABLE:
            continue
        ip = ipaddress.ip_address(local)
        if ip.version != 6 or ip.is_loopback or ip.is_multicast or ip.is_unspecified:
            continue
        usable.append((ip.is_link_local, not flags & IFA_F_PERMANENT, bool(flags & IFA_F_TEMPORARY), local))
    usable.sort(key=lambda a: a[:3])
    address6 = usable[0][3] if usable else None
    if address6 is None and public_ipv6 is None:
        raise NetlinkError(E.EADDRNOTAVAIL, f"underlay {underlay.name} has no usable IPv6 address{where}: "
                                            f"dual stack needs one there, or --public-ipv6")
    prefixes: list[str] = []
    for local, plen, _flags in addrs:
        if local and plen < 128 and not ipaddress.ip_address(local).is_link_local:
            net = str(ipaddress.ip_network(f"{local}/{plen}", strict=False))
            if net not in prefixes:
                prefixes.append(net)
    return replace(underlay, address6=address6, prefixes6=tuple(prefixes))


class DeviceVanished(Exception):
    """A per-device dump met ENODEV: the device went away mid-dump."""


@dataclass(frozen=True, slots=True)
class UnderlaySpec:
    """How the operator names the underlay: flanneld's interface flags.

    Tried in flanneld's order: every ``--iface`` (a name or an IPv4 address
    it holds), then every ``--iface-regex`` (matched against the IPv4
    addresses of all interfaces first, then their names), then
    ``--iface-can-reach`` (the interface of the route to that address, as
    ``ip route get`` shows it).  The first that yields an interface with a
    usable IPv4 address wins.  With none of these, the interface that holds
    ``--public-ip``, else the interface of the IPv4 default route
    (``docs/decisions.md``, "Interface selection").
    """

    ifaces: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()
    can_reach: str | None = None
    public_ip: str | None = None

    @classmethod
    def of(cls, spec: "UnderlaySpec | str | None") -> "UnderlaySpec":
        """A spec from the old single form: a name or address, or None (default route)."""
        if isinstance(spec, UnderlaySpec):
            return spec
        return cls(ifaces=(spec,) if spec else ())

    @property
    def explicit(self) -> bool:
        return bool(self.ifaces or self.regexes or self.can_reach)

    def describe(self) -> str:
        words = [f"--iface {i}" for i in self.ifaces] + [f"--iface-regex {r!r}" for r in self.regexes]
        words += [f"--iface-can-reach {self.can_reach}"] if self.can_reach else []
        return ", ".join(words) or "the default route"


def compile_iface_regex(pattern: str) -> re.Pattern:
    """``--iface-regex`` as a Python pattern; a bad one is the operator's mistake, named."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ReconcilerError(f"--iface-regex {pattern!r}: not a regular expression: {exc}") from None


def match_iface_regex(pattern: str, interfaces: Sequence[tuple[int, str, Sequence[str]]]
                      ) -> tuple[int, str | None] | None:
    """flanneld's regex rule over ``(ifindex, name, IPv4 addresses)`` in ifindex order.

    Addresses first, over every interface (the matched address becomes the
    underlay address), then names.  Unanchored, like Go's ``MatchString``.
    Returns ``(ifindex, matched address or None)``, or None.
    """
    rx = compile_iface_regex(pattern)
    for idx, _name, addrs in interfaces:
        for addr in addrs:
            if rx.search(addr):
                return idx, addr
    for idx, name, _addrs in interfaces:
        if rx.search(name):
            return idx, None
    return None


class KernelFacts:
    """What the health conditions read besides the dump (``core/health.py``), for a backend with
    ``_netns_file``, ``_refresh_links()`` and ``_link_value(msg)``."""

    def sysctl(self, name: str) -> str | None:
        """``sysctl NAME`` inside the backend's namespace (``net.ipv4.ip_forward``); None if absent.

        /proc/sys/net shows the namespace of the calling thread, hence ``in_netns``."""
        path = "/proc/sys/" + name.replace(".", "/")

        def read() -> str | None:
            try:
                with open(path) as f:
                    return f.read().strip()
            except OSError:
                return None

        return in_netns(self._netns_file, read)

    def all_links(self) -> list:
        """Every link of the namespace (``ip -d link show``), as ``Link`` values."""
        return [self._link_value(m) for m in self._refresh_links()]


class UnderlayLookup:
    """``underlay(spec)`` for a backend, in terms of the backend's own hooks:
    ``_refresh_links()``, ``_index``/``_names`` (name <-> ifindex),
    ``_default_route_oif()``, ``_holder_of(ip)``, ``_v4_addresses(idx)``
    (``(local, prefixlen, flags)`` tuples), ``_link_mtu(idx)``, ``_where()``,
    and ``_route_get(ip)`` (``(oif, prefsrc)`` of ``ip route get IP``)."""

    def route_get(self, ip: str) -> tuple[str | None, str | None]:
        """``ip route get IP`` (IPv4): the device the kernel sends a packet for ``ip`` out of, and its
        source address.  Raises ``NetlinkError`` when the kernel has no route (``explain`` reports it)."""
        self._refresh_links()
        oif, src = self._route_get(ip)
        return self._names.get(oif), src

    def underlay(self, spec: "UnderlaySpec | str | None") -> Underlay:
        """The external interface, chosen by ``spec`` (see ``UnderlaySpec``; a
        plain string is one ``--iface``, ``None`` the default route)."""
        spec = UnderlaySpec.of(spec)
        self._refresh_links()
        if not spec.explicit:
            if spec.public_ip:
                try:
                    return self._one(spec.public_ip)
                except NetlinkError as exc:
                    if exc.errno != E.EADDRNOTAVAIL:
                        raise
                    # A NAT'd --public-ip no interface holds: the default route's interface.
            return self._one(None)
        failures: list[NetlinkError] = []
        for name in spec.ifaces:
            try:
                return self._one(name)
            except NetlinkError as exc:
                failures.append(exc)
        for pattern in spec.regexes:
            try:
                found = self._by_regex(pattern)
            except NetlinkError as exc:
                failures.append(exc)
                continue
            if found is not None:
                return found
            failures.append(NetlinkError(E.ENODEV, f"underlay: --iface-regex {pattern!r} matches no interface "
                                                   f"name and no IPv4 address{self._where()}"))
        if spec.can_reach:
            try:
                return self._reaching(spec.can_reach)
            except NetlinkError as exc:
                failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        raise NetlinkError(E.ENODEV, f"underlay: no interface matches {spec.describe()}{self._where()}: "
                                     + "; ".join(str(f) for f in failures))

    def _one(self, spec: str | None) -> Underlay:
        """By name, by an IPv4 address it holds, or (``None``) the interface of
        the main table's IPv4 default route."""
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
            return self._at(idx, given, spec)
        except DeviceVanished as exc:
            raise NetlinkError(E.ENODEV, f"underlay {spec}: the interface vanished{self._where()}") from exc

    def _at(self, idx: int, given: str | None, spec: str | None) -> Underlay:
        name = self._names[idx]
        addrs = self._v4_addresses(idx)
        return underlay_of(name, self._link_mtu(idx), addrs, given, self._where())

    def _by_regex(self, pattern: str) -> Underlay | None:
        interfaces = []
        for idx in sorted(self._names):
            try:
                addrs = [a[0] for a in self._v4_addresses(idx) if a[0] and not a[2] & _IFA_F_UNUSABLE]
            except DeviceVanished:
                continue
            interfaces.append((idx, self._names[idx], addrs))
        hit = match_iface_regex(pattern, interfaces)
        if hit is None:
            return None
        try:
            return self._at(hit[0], hit[1], pattern)
        except DeviceVanished as exc:
            raise NetlinkError(E.ENODEV, f"underlay {pattern!r}: the interface vanished{self._where()}") from exc

    def _reaching(self, target: str) -> Underlay:
        try:
            ip = ipaddress.ip_address(target)
        except ValueError:
            raise NetlinkError(E.EINVAL, f"underlay: --iface-can-reach {target!r} is not an IP address") from None
        if ip.version != 4:
            raise NetlinkError(E.EAFNOSUPPORT, f"underlay: --iface-can-reach {target}: only IPv4 is supported")
        oif, src = self._route_get(str(ip))
        if oif not in self._names:
            raise NetlinkError(E.ENODEV, f"underlay: the route to {target} has no interface{self._where()}")
        try:
            return self._at(oif, src, target)
        except DeviceVanished as exc:
            raise NetlinkError(E.ENODEV, f"underlay {target}: the interface vanished{self._where()}") from exc
    def underlay_v6(self, underlay: Underlay, public_ipv6: str | None = None) -> Underlay:
        """Dual stack: the IPv6 side of ``underlay`` (flanneld takes both
        families from the one external interface).  Needs the backend hook
        ``_v6_addresses(idx)``, shaped like ``_v4_addresses``."""
        self._refresh_links()
        idx = self._index.get(underlay.name)
        if idx is None:
            raise NetlinkError(E.ENODEV, f"underlay: no interface named {underlay.name!r}{self._where()}")
        try:
            addrs = self._v6_addresses(idx)
        except DeviceVanished as exc:
            raise NetlinkError(E.ENODEV, f"underlay {underlay.name}: the interface vanished{self._where()}") from exc
        return underlay_v6_of(underlay, addrs, public_ipv6, self._where())
