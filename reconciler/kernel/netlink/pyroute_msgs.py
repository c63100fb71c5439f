"""pyroute2 messages for the reference backend (``reference.py``).

``reference.py`` and this module are the only modules that import pyroute2.
Split off from ``reference.py`` to keep it readable: the kernel message each
operation sends (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``, ``ndmsg``, built as
iproute2 would), the dump requests, and small helpers that read address
messages.  Sending, retrying and parsing stay in ``reference.py``.

The per-operation builders take ``ifindex``, the backend's name -> ifindex
lookup (it raises for an unknown device), called where the message needs it.
"""
from __future__ import annotations

import ipaddress
from socket import AF_BRIDGE, AF_INET, AF_INET6
from typing import Callable

from pyroute2.netlink import nlmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_PERMANENT, ndmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from reconciler.core.model import RTPROT_RECONCILER, Address, Fdb, Link, Neigh, Nexthop, Route

# Kernel constants, in rtnetlink.h / if.h spelling (more, for the dumps, in reference.py).
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
#: ``rtm_type`` -> ``Route.type``: the route types we read and write.
ROUTE_TYPE_NAMES = {RTN_UNICAST: "unicast", RTN_BLACKHOLE: "blackhole"}
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTNH_F_ONLINK = 0x4
IFF_UP = 0x1
# linux/rtnetlink.h, linux/nexthop.h: pyroute2 0.9.7 knows neither nexthop objects nor RTA_NH_ID.
RTM_NEWROUTE, RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 24, 104, 105, 106
RTA_NH_ID = 30


# ------------------------------------------------------- nexthop messages

class nhmsg(nlmsg):
    """``struct nhmsg`` and the ``NHA_*`` attributes we read or write (linux/nexthop.h)."""

    prefix = "NHA_"
    fields = (("family", "B"), ("scope", "B"), ("protocol", "B"), ("resvd", "B"), ("flags", "I"))
    # pyroute2 caches the compiled attribute table on the class, and a subclass
    # inherits its parent's cache once that is built: start each class clean.
    _nlmsg_base__compiled_nla = False
    nla_map = ((0, "NHA_UNSPEC", "none"), (1, "NHA_ID", "uint32"), (2, "NHA_GROUP", "cdata"),
               (3, "NHA_GROUP_TYPE", "uint16"), (4, "NHA_BLACKHOLE", "flag"), (5, "NHA_OIF", "uint32"),
               (6, "NHA_GATEWAY", "cdata"))


class rtmsg_nh(rtmsg):
    """pyroute2's ``rtmsg`` plus ``RTA_NH_ID`` (30): a route through a nexthop object."""

    _nlmsg_base__compiled_nla = False     # see nhmsg

    nla_map = tuple((i, name, kind) for i, (name, kind) in enumerate(rtmsg.nla_map)) + \
        ((RTA_NH_ID, "RTA_NH_ID", "uint32"),)


def rtnl_marshal(marshal: MarshalRtnl | None = None) -> MarshalRtnl:
    """A rtnetlink parser that also reads nexthop messages and ``RTA_NH_ID`` in routes.

    The message map is copied, never changed in place: it is pyroute2's class attribute.
    """
    marshal = marshal or MarshalRtnl()
    msg_map = dict(marshal.msg_map)
    msg_map[RTM_NEWROUTE] = rtmsg_nh
    msg_map[RTM_NEWNEXTHOP] = nhmsg
    marshal.msg_map = msg_map
    return marshal


# --------------------------------------------------------------- operations

def link_create_msg(link: Link, ifindex: Callable[[str], int]) -> ifinfmsg:
    """``ip link add NAME [address MAC] [mtu N] type vxlan|bridge ...``."""
    if link.type == "vxlan":
        data = [["IFLA_VXLAN_ID", link.vni]]
        if link.underlay is not None:
            data.append(["IFLA_VXLAN_LINK", ifindex(link.underlay)])
        if link.local is not None:
            data.append(["IFLA_VXLAN_LOCAL6" if ":" in link.local else "IFLA_VXLAN_LOCAL", link.local])
        if link.port is not None:       # absent: the kernel default (8472), as flanneld
            data.append(["IFLA_VXLAN_PORT", link.port])
        data += [["IFLA_VXLAN_LEARNING", int(bool(link.learning))], ["IFLA_VXLAN_TTL", 0],
                 ["IFLA_VXLAN_PROXY", 0], ["IFLA_VXLAN_L2MISS", 0], ["IFLA_VXLAN_L3MISS", 0]]
        if link.gbp:
            data.append(["IFLA_VXLAN_GBP", True])
        info = {"attrs": [["IFLA_INFO_KIND", "vxlan"], ["IFLA_INFO_DATA", {"attrs": data}]]}
    else:
        info = {"attrs": [["IFLA_INFO_KIND", link.type]]}
    msg = ifinfmsg()
    msg["attrs"] = [["IFLA_IFNAME", link.name]]
    if link.mtu is not None:
        msg["attrs"].append(["IFLA_MTU", link.mtu])
    if link.mac is not None:
        msg["attrs"].append(["IFLA_ADDRESS", _mac(link.mac)])
    msg["attrs"].append(["IFLA_LINKINFO", info])
    return msg


def link_up_msg(name: str) -> ifinfmsg:
    """``ip link set NAME up``, by name."""
    up = ifinfmsg()
    up["flags"], up["change"] = IFF_UP, IFF_UP
    up["attrs"] = [["IFLA_IFNAME", name]]     # by name: exactly the device just made
    return up


def link_set_msg(idx: int, todo: dict) -> ifinfmsg:
    """``ip link set`` on ifindex ``idx``: the attributes in ``todo`` (mtu, mac, up)."""
    msg = ifinfmsg()
    msg["index"] = idx
    if "mtu" in todo:
        msg["attrs"].append(["IFLA_MTU", todo["mtu"]])
    if "mac" in todo:
        msg["attrs"].append(["IFLA_ADDRESS", _mac(todo["mac"])])
    if "up" in todo:
        msg["flags"], msg["change"] = (IFF_UP if todo["up"] else 0), IFF_UP
    return msg


def address_msg(addr: Address, ifindex: Callable[[str], int]) -> ifaddrmsg:
    """``ip addr replace|del CIDR dev DEV``, scope global."""
    iface = ipaddress.ip_interface(addr.cidr)
    ip = str(iface.ip)
    msg = ifaddrmsg()
    msg["family"] = AF_INET6 if iface.version == 6 else AF_INET
    msg["prefixlen"] = iface.network.prefixlen
    msg["scope"] = RT_SCOPE_UNIVERSE
    msg["index"] = ifindex(addr.dev)
    msg["attrs"] = [["IFA_LOCAL", ip], ["IFA_ADDRESS", ip]]   # no IFA_BROADCAST, as `ip addr`
    return msg


def route_msg(route: Route, delete: bool, ifindex: Callable[[str], int]) -> rtmsg:
    """``ip route replace|del DST [via GW] [dev DEV] ...``, table main."""
    if route.nhid:
        return route_nh_msg(route, delete)
    net = ipaddress.ip_network(route.dst)
    msg = rtmsg()
    msg["family"] = AF_INET6 if net.version == 6 else AF_INET
    msg["dst_len"] = net.prefixlen
    msg["table"] = RT_TABLE_MAIN
    attrs = [["RTA_DST", str(net.network_address)]]
    if route.gateway is not None:
        if ipaddress.ip_address(route.gateway).version != net.version:
            raise ValueError(f"gateway {route.gateway} is not of the family of {route.dst}")
        attrs.append(["RTA_GATEWAY", route.gateway])
    if route.dev is not None:
        attrs.append(["RTA_OIF", ifindex(route.dev)])
    if route.metric:
        attrs.append(["RTA_PRIORITY", route.metric])
    blackhole = route.type == "blackhole"
    if delete:
        # iproute2's delete: scope NOWHERE, type and protocol 0, so that
        # the kernel matches on dst, metric and whatever next hop is given
        # (a blackhole's delete names its type: it has no next hop).
        msg["scope"] = RT_SCOPE_NOWHERE
        if blackhole:
            msg["type"] = RTN_BLACKHOLE
    else:
        msg["proto"] = RTPROT_RECONCILER
        msg["type"] = RTN_BLACKHOLE if blackhole else RTN_UNICAST
        msg["scope"] = RT_SCOPE_UNIVERSE if route.gateway or blackhole else RT_SCOPE_LINK
        msg["flags"] = RTNH_F_ONLINK if route.onlink else 0
    msg["attrs"] = attrs
    return msg


def route_nh_msg(route: Route, delete: bool) -> rtmsg_nh:
    """``ip route replace|del DST nhid N [metric M]``, table main.

    Neither gateway nor device: the kernel refuses them beside a nexthop id
    ("Nexthop specification and nexthop id are mutually exclusive"), and a
    delete that names them misses the route (ESRCH, which would pass for
    "already gone") although the dump shows them (docs/route-layouts.md).
    """
    net = ipaddress.ip_network(route.dst)
    msg = rtmsg_nh()
    msg["family"] = AF_INET6 if net.version == 6 else AF_INET
    msg["dst_len"] = net.prefixlen
    msg["table"] = RT_TABLE_MAIN
    attrs = [["RTA_DST", str(net.network_address)]]
    if route.metric:
        attrs.append(["RTA_PRIORITY", route.metric])
    attrs.append(["RTA_NH_ID", route.nhid])
    if delete:
        msg["scope"] = RT_SCOPE_NOWHERE
    else:
        msg["proto"] = RTPROT_RECONCILER
        msg["type"] = RTN_UNICAST
        msg["scope"] = RT_SCOPE_UNIVERSE
    msg["attrs"] = attrs
    return msg


def nexthop_msg(nh: Nexthop, delete: bool, ifindex: Callable[[str], int]) -> nhmsg:
    """``ip nexthop replace id N via GW dev DEV [onlink] proto 73`` / ``ip nexthop del id N``."""
    msg = nhmsg()
    if delete:
        msg["attrs"] = [["NHA_ID", nh.id]]     # family, scope, protocol, flags 0: as iproute2
        return msg
    gw = ipaddress.ip_address(nh.gateway)
    msg["family"] = AF_INET6 if gw.version == 6 else AF_INET
    msg["protocol"] = RTPROT_RECONCILER
    msg["flags"] = RTNH_F_ONLINK if nh.onlink else 0
    msg["attrs"] = [["NHA_ID", nh.id], ["NHA_OIF", ifindex(nh.dev)], ["NHA_GATEWAY", gw.packed]]
    return msg


def neigh_msg(neigh: Neigh, delete: bool, ifindex: Callable[[str], int]) -> ndmsg:
    """``ip neigh replace|del IP [lladdr MAC] dev DEV [nud permanent]``."""
    ip = ipaddress.ip_address(neigh.ip)
    msg = ndmsg()
    msg["family"] = AF_INET6 if ip.version == 6 else AF_INET
    msg["ifindex"] = ifindex(neigh.dev)
    msg["attrs"] = [["NDA_DST", str(ip)]]
    if not delete:
        msg["state"] = NUD_PERMANENT
        msg["attrs"].append(["NDA_LLADDR", _mac(neigh.mac)])
    return msg


def fdb_msg(fdb: Fdb, delete: bool, ifindex: Callable[[str], int]) -> ndmsg:
    """``bridge fdb replace|del MAC dev DEV dst IP self [permanent]``."""
    msg = ndmsg()
    msg["family"] = AF_BRIDGE
    msg["ifindex"] = ifindex(fdb.dev)
    msg["flags"] = NTF_SELF                 # the VXLAN device's own table, not a bridge's
    msg["state"] = 0 if delete else NUD_PERMANENT
    msg["attrs"] = [["NDA_LLADDR", _mac(fdb.mac)], ["NDA_DST", str(ipaddress.ip_address(fdb.dst))]]
    return msg


# ------------------------------------------------------------ dump requests
# Strict checking (NETLINK_GET_STRICT_CHK) rejects dump headers with stray
# fields, so each request sets only what the kernel accepts as a filter.

def _route_get_msg(ip: str) -> rtmsg:
    """``ip route get IP`` (IPv4): a /32 destination, nothing else (strict checking refuses more)."""
    msg = rtmsg()
    msg["family"] = AF_INET
    msg["dst_len"] = 32
    msg["attrs"] = [("RTA_DST", ip)]
    return msg


def _route_dump_msg(family: int) -> rtmsg:
    """``ip -4|-6 route show table main``: rtm_table filters in the kernel; every type comes back
    (``wire.encode_getroute`` says why)."""
    msg = rtmsg()
    msg["family"] = family
    msg["table"] = RT_TABLE_MAIN
    return msg


def _nexthop_dump_msg() -> nhmsg:
    """``ip nexthop show``: every nexthop of every family (the header must be all zeros)."""
    return nhmsg()


def _addr_dump_msg(family: int, idx: int) -> ifaddrmsg:
    """``ip -4|-6 addr show dev X``: ifa_index filters in the kernel."""
    msg = ifaddrmsg()
    msg["family"] = family
    msg["index"] = idx
    return msg


def _ndmsg(family: int, idx: int) -> ndmsg:
    """``ip neigh show dev X`` / ``bridge fdb show dev X``: NDA_IFINDEX filters in the kernel
    (strict checking refuses ndm_ifindex in a dump header)."""
    msg = ndmsg()
    msg["family"] = family
    msg["attrs"] = [["NDA_IFINDEX", idx]]
    return msg


# ------------------------------------------------------------------ helpers

def _ip(text: str) -> str:
    """Canonical (``ipaddress``) form of an address string from the kernel."""
    return text if ":" not in text else str(ipaddress.ip_address(text))


def _mac(text: str) -> str:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{text!r} is not a MAC address")
    bytes.fromhex("".join(parts))       # ValueError on non-hex
    return text.lower()


def _addr_flags(msg) -> int:
    return msg.get("IFA_FLAGS") or msg["flags"]


def _local_of(msg) -> str:
    return _ip(msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS"))


def _cidr_of(msg) -> str | None:
    """"ip/prefixlen" of an address message; None for IPv6 link-local.

    IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on a
    point-to-point link); IPv6 sends IFA_ADDRESS only.
    """
    local = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    if not local:
        return None
    ip = ipaddress.ip_address(local)
    if ip.version == 6 and ip.is_link_local:
        return None
    return f"{ip}/{msg['prefixlen']}"
