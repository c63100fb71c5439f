"""The rtnetlink dump decoders, in pure Python: routes, neighbours, FDB
entries, links, addresses and default routes (see ``wire.py``'s docstring
for the contract they keep: exactly the ``reconciler.core.model`` values
``PyrouteBackend`` makes of the same bytes, and nothing but ``DecodeError``
on malformed input).  Import them from ``wire``, which re-exports them;
``_fastpath`` has compiled versions of the hot ones.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from collections import namedtuple
from socket import AF_BRIDGE, AF_INET, AF_INET6
from typing import Collection, Iterable

from reconciler.core.model import RTPROT_RECONCILER, Fdb, Link, Neigh, Route
from reconciler.kernel.netlink.wire_base import (IFA_ADDRESS, IFA_FLAGS, IFA_LOCAL, IFADDRMSG, IFF_UP, IFINFOMSG, IFLA_ADDRESS, IFLA_IFNAME,
                        IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MTU, IFLA_VXLAN_GBP, IFLA_VXLAN_ID,
                        IFLA_VXLAN_LEARNING, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LOCAL6, IFLA_VXLAN_PORT,
                        NDA_DST, NDA_LLADDR, NDMSG, NTF_PROXY, NTF_SELF, NUD_PERMANENT, RT_TABLE_MAIN, RTA_DST,
                        RTA_GATEWAY, RTA_MULTIPATH, RTA_OIF, RTA_PRIORITY, RTA_TABLE, RTM_F_CLONED, RTM_NEWADDR,
                        RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE, RTMSG, RTN_UNICAST, ROUTE_TYPE_NAMES, _RTNEXTHOP, RTNH_F_ONLINK, _U32,
                        VXLAN_DEFAULT_PORT, _attrs, _messages)
from reconciler.kernel.netlink.wire_base import RTA_NH_ID

__all__ = [
    "AddrMsg",
    "LinkMsg",
    "cidr_of",
    "decode_addrs",
    "decode_default_routes",
    "decode_fdb",
    "decode_links",
    "decode_neighs",
    "decode_nexthops",
    "decode_routes",
    "ip_text",
    "link_value",
    "net6_text",
    "split_nets",
]

_FE80_64 = ipaddress.ip_network("fe80::/64")


def ip_text(packed: bytes) -> str:
    """Canonical text of a 4- or 16-byte address, as ``str(ipaddress.ip_address(...))``."""
    if len(packed) == 4:
        return socket.inet_ntop(AF_INET, packed)
    return str(ipaddress.IPv6Address(packed))


def net6_text(packed: bytes, plen: int) -> str:
    return str(ipaddress.IPv6Network((packed, plen), strict=False))


def split_nets(nets: Iterable) -> tuple[tuple[tuple[int, int, int], ...], tuple]:
    """``(v4, v6)``: IPv4 networks as ``(address int, mask int, prefixlen)``, IPv6 ones as they are."""
    v4, v6 = [], []
    for n in nets:
        if n.version == 4:
            v4.append((int(n.network_address), int(n.netmask), n.prefixlen))
        else:
            v6.append(n)
    return tuple(v4), tuple(v6)


def decode_routes(buf, names: dict, ours: Collection[int], nets: Iterable = ()) -> list[Route]:
    """Routes of a ``RTM_GETROUTE`` dump, as ``PyrouteBackend._parse_route`` makes them.

    Kept: unicast and blackhole routes of the main table, not cloned, not multipath, that
    leave through a device in ``ours`` (ifindexes), *or* carry protocol 73, *or*
    lie inside one of ``nets`` (``ipaddress`` networks); never fe80::/64.
    ``names`` maps ifindex to name (for ``dev``).
    """
    v4nets, v6nets = split_nets(nets)
    out: list[Route] = []
    u32 = _U32.unpack_from
    for mtype, _f, _s, off, end in _messages(buf):
        if mtype != RTM_NEWROUTE or end - off < 28:
            continue
        family, dst_len, _src, _tos, table, proto, _scope, rtype, flags = RTMSG.unpack_from(buf, off + 16)
        if family == AF_INET:
            alen = 4
        elif family == AF_INET6:
            alen = 16
        else:
            continue
        attrs = _attrs(buf, off + 28, end)
        if attrs is None:
            continue
        span = attrs.get(RTA_TABLE)
        if span is not None:
            if span[1] - span[0] != 4:
                continue
            table = u32(buf, span[0])[0] or table
        rtype_name = ROUTE_TYPE_NAMES.get(rtype)
        if table != RT_TABLE_MAIN or rtype_name is None or flags & RTM_F_CLONED:
            continue
        span = attrs.get(RTA_MULTIPATH)
        if span is not None and span[1] > span[0]:
            continue                            # never written by us; one Route cannot hold it
        oif = None
        span = attrs.get(RTA_OIF)
        if span is not None:
            if span[1] - span[0] != 4:
                continue
            oif = u32(buf, span[0])[0]
        metric = 0
        span = attrs.get(RTA_PRIORITY)
        if span is not None:
            if span[1] - span[0] != 4:
                continue
            metric = u32(buf, span[0])[0]
        span = attrs.get(RTA_DST)
        if span is None:
            dst = bytes(alen)
        elif span[1] - span[0] != alen:
            continue
        else:
            dst = bytes(buf[span[0]:span[1]])
        if dst_len > alen * 8:
            continue
        gateway = None
        span = attrs.get(RTA_GATEWAY)
        if span is not None:
            if span[1] - span[0] != alen:
                continue
            gateway = ip_text(bytes(buf[span[0]:span[1]]))
        if alen == 4:
            mask = (0xFFFFFFFF << (32 - dst_len)) & 0xFFFFFFFF
            value = int.from_bytes(dst, "big") & mask
            if oif not in ours and proto != RTPROT_RECONCILER and not any(
                    dst_len >= plen and value & nmask == naddr for naddr, nmask, plen in v4nets):
                continue
            text = f"{socket.inet_ntop(AF_INET, value.to_bytes(4, 'big'))}/{dst_len}"
        else:
            net = ipaddress.IPv6Network((dst, dst_len), strict=False)
            if oif not in ours and proto != RTPROT_RECONCILER and not any(net.subnet_of(n) for n in v6nets):
                continue
            if net == _FE80_64:
                continue
            text = str(net)
        nhid = 0
        span = attrs.get(RTA_NH_ID)
        if span is not None:
            if span[1] - span[0] != 4:
                continue
            nhid = u32(buf, span[0])[0]
        out.append(Route(dst=text, gateway=gateway, dev=names.get(oif) if oif else None,
                         onlink=bool(flags & RTNH_F_ONLINK), metric=metric, protocol=proto, nhid=nhid,
                         type=rtype_name))
    return out


def _neigh_fields(buf, off: int, end: int):
    """``(family, ifindex, state, flags, dst bytes|None, lladdr bytes|None)`` or None if malformed."""
    if end - off < 28:
        return None
    family, _p1, _p2, ifindex, state, flags, _type = NDMSG.unpack_from(buf, off + 16)
    attrs = _attrs(buf, off + 28, end)
    if attrs is None:
        return None
    dst = lladdr = None
    span = attrs.get(NDA_DST)
    if span is not None:
        if span[1] - span[0] not in (4, 16):
            return None
        dst = bytes(buf[span[0]:span[1]])
    span = attrs.get(NDA_LLADDR)
    if span is not None:
        lladdr = bytes(buf[span[0]:span[1]])
    return family, ifindex, state, flags, dst, lladdr


def decode_neighs(buf, ifindex: int, name: str) -> list[Neigh]:
    """Permanent ARP/NDP entries of device ``ifindex`` in a ``RTM_GETNEIGH`` dump (proxies left out)."""
    out: list[Neigh] = []
    for mtype, _f, _s, off, end in _messages(buf):
        if mtype != RTM_NEWNEIGH:
            continue
        fields = _neigh_fields(buf, off, end)
        if fields is None:
            continue
        family, idx, state, flags, dst, lladdr = fields
        if (idx != ifindex or not state & NUD_PERMANENT or flags & NTF_PROXY
                or family not in (AF_INET, AF_INET6) or not dst or not lladdr):
            continue
        out.append(Neigh(dev=name, ip=ip_text(dst), mac=lladdr.hex(":")))
    return out


def decode_fdb(buf, ifindex: int, name: str) -> list[Fdb]:
    """``NTF_SELF`` permanent FDB entries with a ``dst`` of device ``ifindex`` (AF_BRIDGE dump),
    the all-zeros flood entry included: flanneld never writes one on its device, and one that
    is there sends every broadcast frame to its ``dst`` (docs/kernel-facts.md)."""
    out: list[Fdb] = []
    for mtype, _f, _s, off, end in _messages(buf):
        if mtype != RTM_NEWNEIGH:
            continue
        fields = _neigh_fields(buf, off, end)
        if fields is None:
            continue
        family, idx, state, flags, dst, lladdr = fields
        if (idx != ifindex or family != AF_BRIDGE or not flags & NTF_SELF or not state & NUD_PERMANENT
                or not dst or not lladdr):
            continue
        out.append(Fdb(dev=name, mac=lladdr.hex(":"), dst=ip_text(dst)))
    return out


# ------------------------------------------------------- links and addresses
# Not hot (a handful per dump): pure Python only.

#: One ``RTM_NEWLINK`` answer, before names are resolved.
LinkMsg = namedtuple("LinkMsg", "index name kind mtu mac up vxlan")
#: One ``RTM_NEWADDR`` answer: ``flags`` is IFA_FLAGS when present, else ifa_flags.
AddrMsg = namedtuple("AddrMsg", "family prefixlen flags scope index local")


def _u32_of(buf, span) -> int | None:
    if span is None or span[1] - span[0] != 4:
        return None
    return _U32.unpack_from(buf, span[0])[0]


def decode_links(buf) -> list[LinkMsg]:
    """Every link of a ``RTM_GETLINK`` dump (a message without a name is skipped).

    ``vxlan`` is a dict of the vxlan attributes we read (``id``, ``local``,
    ``link``, ``port``, ``learning``, ``gbp``) for ``kind == "vxlan"``, else None.
    """
    out: list[LinkMsg] = []
    for mtype, _f, _s, off, end in _messages(buf):
        if mtype != RTM_NEWLINK or end - off < 32:
            continue
        _family, _type, index, flags, _change = IFINFOMSG.unpack_from(buf, off + 16)
        attrs = _attrs(buf, off + 32, end)
        if attrs is None or IFLA_IFNAME not in attrs:
            continue
        s, e = attrs[IFLA_IFNAME]
        name = bytes(buf[s:e]).split(b"\0", 1)[0].decode(errors="replace")
        span = attrs.get(IFLA_ADDRESS)
        mac = bytes(buf[span[0]:span[1]]).hex(":") if span else ""
        kind, vxlan = "", None
        span = attrs.get(IFLA_LINKINFO)
        info = _attrs(buf, span[0], span[1]) if span else None
        if info and IFLA_INFO_KIND in info:
            s, e = info[IFLA_INFO_KIND]
            kind = bytes(buf[s:e]).split(b"\0", 1)[0].decode(errors="replace")
        if kind == "vxlan":
            span = info.get(IFLA_INFO_DATA)
            data = (_attrs(buf, span[0], span[1]) if span else None) or {}
            local = None
            for key in (IFLA_VXLAN_LOCAL, IFLA_VXLAN_LOCAL6):
                span = data.get(key)
                if span and span[1] - span[0] in (4, 16):
                    local = ip_text(bytes(buf[span[0]:span[1]]))
                    break
            span = data.get(IFLA_VXLAN_PORT)
            port = struct.unpack_from(">H", buf, span[0])[0] if span and span[1] - span[0] == 2 else None
            span = data.get(IFLA_VXLAN_LEARNING)
            learning = bool(buf[span[0]]) if span and span[1] > span[0] else False
            vxlan = {"id": _u32_of(buf, data.get(IFLA_VXLAN_ID)), "local": local,
                     "link": _u32_of(buf, data.get(IFLA_VXLAN_LINK)), "port": port,
                     "learning": learning, "gbp": IFLA_VXLAN_GBP in data}
        out.append(LinkMsg(index, name, kind, _u32_of(buf, attrs.get(IFLA_MTU)), mac or None,
                           bool(flags & IFF_UP), vxlan))
    return out


def link_value(msg: LinkMsg, names: dict[int, str]) -> Link:
    """The ``Link`` of a decoded link message (``names``: ifindex -> name, for the underlay)."""
    common = dict(name=msg.name, type=msg.kind, mtu=msg.mtu, mac=msg.mac, up=msg.up)
    if msg.kind != "vxlan":
        return Link(**common)
    data = msg.vxlan
    local = data["local"]
    if local in ("0.0.0.0", "::"):
        local = None
    lower = data["link"]
    return Link(**common, vni=data["id"], local=local, port=data["port"] or VXLAN_DEFAULT_PORT,
                learning=data["learning"], gbp=data["gbp"], underlay=names.get(lower) if lower else None)


def decode_addrs(buf) -> list[AddrMsg]:
    """Every address of a ``RTM_GETADDR`` dump; ``local`` is IFA_LOCAL, else IFA_ADDRESS (None if neither)."""
    out: list[AddrMsg] = []
    for mtype, _f, _s, off, end in _messages(buf):
        if mtype != RTM_NEWADDR or end - off < 24:
            continue
        family, plen, flags, scope, index = IFADDRMSG.unpack_from(buf, off + 16)
        attrs = _attrs(buf, off + 24, end)
        if attrs is None:
            continue
        full = _u32_of(buf, attrs.get(IFA_FLAGS))
        local = None
        for key in (IFA_LOCAL, IFA_ADDRESS):
            span = attrs.get(key)
            if span and span[1] - span[0] in (4, 16):
                local = ip_text(bytes(buf[span[0]:span[1]]))
                break
        out.append(AddrMsg(family, plen, full or flags, scope, index, local))
    return out


def cidr_of(msg: AddrMsg) -> str | None:
    """``ip/prefixlen`` of an address; None for IPv6 link-local or no address."""
    if not msg.local:
        return None
    if ":" in msg.local and ipaddress.ip_address(msg.local).is_link_local:
        return None
    return f"{msg.local}/{msg.prefixlen}"


def decode_default_routes(buf) -> list[tuple[int, int]]:
    """``(metric, oif)`` of the IPv4 default routes of the main table (multipath: the first hop)."""
    out = []
    for mtype, _f, _s, off, end in _messages(buf):
        if mtype != RTM_NEWROUTE or end - off < 28:
            continue
        _fam, dst_len, _src, _tos, table, _proto, _scope, rtype, _flags = RTMSG.unpack_from(buf, off + 16)
        attrs = _attrs(buf, off + 28, end)
        if attrs is None:
            continue
        table = _u32_of(buf, attrs.get(RTA_TABLE)) or table
        if table != RT_TABLE_MAIN or dst_len != 0 or rtype != RTN_UNICAST:
            continue
        oif = _u32_of(buf, attrs.get(RTA_OIF))
        span = attrs.get(RTA_MULTIPATH)
        if oif is None and span is not None and span[1] - span[0] >= _RTNEXTHOP.size:
            oif = _RTNEXTHOP.unpack_from(buf, span[0])[3]
        if oif is not None:
            out.append((_u32_of(buf, attrs.get(RTA_PRIORITY)) or 0, oif))
    return out


# ----------------------------------------------------------- nexthop objects

def decode_nexthops(buf, names: dict) -> list:
    """Every nexthop of a ``RTM_GETNEXTHOP`` dump, as ``PyrouteBackend._parse_nexthop`` makes
    them (``names``: ifindex -> name): a group or blackhole, or one whose gateway is malformed,
    as its id alone; a message without an id, or with a malformed attribute list, is skipped."""
    from reconciler.core.model import Nexthop
    from reconciler.kernel.netlink.wire_base import NHA_BLACKHOLE, NHA_GATEWAY, NHA_GROUP, NHA_ID, NHA_OIF, NHMSG, RTM_NEWNEXTHOP

    out = []
    for mtype, _f, _s, off, end in _messages(buf):
        if mtype != RTM_NEWNEXTHOP or end - off < 24:
            continue
        _family, _scope, protocol, _resvd, flags = NHMSG.unpack_from(buf, off + 16)
        attrs = _attrs(buf, off + 24, end)
        if attrs is None:
            continue
        nhid, oif = _u32_of(buf, attrs.get(NHA_ID)), _u32_of(buf, attrs.get(NHA_OIF))
        if not nhid:
            continue
        span = attrs.get(NHA_GATEWAY)
        if NHA_GROUP in attrs or NHA_BLACKHOLE in attrs or (span is not None and span[1] - span[0] not in (4, 16)):
            out.append(Nexthop(id=nhid, gateway=None, dev=None, protocol=protocol))
            continue
        gateway = ip_text(bytes(buf[span[0]:span[1]])) if span is not None else None
        out.append(Nexthop(id=nhid, gateway=gateway, dev=names.get(oif) if oif else None,
                           onlink=bool(flags & RTNH_F_ONLINK), protocol=protocol))
    return out
