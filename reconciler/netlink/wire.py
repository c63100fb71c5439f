"""The rtnetlink wire codec, in kernel vocabulary: stdlib only (``struct``, ``socket``; ``ipaddress``
for IPv6 text and for the exact wording of a refused string), no pyroute2.

Two halves, both pure functions over bytes:

* **Encoders** ``encode_<op>(seq, ...) -> bytes``: one complete netlink
  message (``nlmsghdr`` + fixed header + attributes), byte for byte what the
  reference backend (pyroute2) sends for the same change, with the same
  ``NLM_F_*`` flags.  Device names are resolved by the caller: encoders take
  ifindexes.  Each docstring gives the iproute2 equivalent.
* **Decoders** ``decode_<kind>(buf, ...) -> list``: a dump answer (any
  number of datagrams, concatenated) into exactly the ``reconciler.model``
  values ``PyrouteBackend`` makes of the same bytes, with the same filters.
  ``_fastpath`` has compiled versions of the hot ones (routes, neighbours,
  FDB, ACKs, the dump scan) that must give identical results; the tests hold
  the two against each other and against pyroute2's parser.

Malformed input never crashes a decoder with anything but ``DecodeError``:
a broken *framing* (a header that does not fit, a length that points past
the buffer) raises ``DecodeError``, because nothing after it can be trusted;
a broken *message* (a short fixed header, an attribute longer than its
message, an address of the wrong size) is skipped, as the kernel would skip
an attribute it cannot parse.

Encoding stays pure Python on purpose: about 225,000 messages per second
here (15,000 requests of a 5,000-node cold install in 67 ms, against about
0.9 s of kernel time), so a compiled encoder would buy nothing measurable.

Input strings are validated exactly like the reference does: a fast path
(``inet_pton``) accepts only strings that ``ipaddress`` accepts identically,
and everything else goes through ``ipaddress`` itself, so a malformed lease
field fails with the same ``ValueError`` text in both backends.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from collections import namedtuple
from socket import AF_BRIDGE, AF_INET, AF_INET6
from typing import Collection, Iterable

from ..model import RTPROT_RECONCILER, Fdb, Link, Neigh, Route

__all__ = [
    "AddrMsg",
    "DecodeError",
    "LinkMsg",
    "decode_acks",
    "decode_addrs",
    "decode_default_routes",
    "decode_fdb",
    "decode_links",
    "decode_neighs",
    "decode_routes",
    "encode_deladdr",
    "encode_delfdb",
    "encode_dellink",
    "encode_delneigh",
    "encode_delroute",
    "encode_getaddr",
    "encode_getlink",
    "encode_getneigh",
    "encode_getroute",
    "encode_newaddr",
    "encode_newfdb",
    "encode_newlink",
    "encode_newneigh",
    "encode_newroute",
    "encode_setlink",
    "encode_setlink_up",
    "link_value",
    "scan_dump",
]

# ------------------------------------------------------------------ constants
# linux/netlink.h
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200          # on NLMSG_ERROR answers
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF
SOL_NETLINK = 270
NETLINK_ROUTE = 0
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12

# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 9, 15
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTNH_F_ONLINK = 0x4
RTM_F_CLONED = 0x200

# linux/if_link.h, linux/if.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_TTL = 1, 3, 4, 5
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PROXY, IFLA_VXLAN_L2MISS, IFLA_VXLAN_L3MISS = 7, 11, 13, 14
IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6, IFLA_VXLAN_GBP = 15, 17, 23
IFF_UP = 0x1
VXLAN_DEFAULT_PORT = 8472

# linux/if_addr.h
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8

# linux/neighbour.h
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
NUD_PERMANENT = 0x80
NTF_SELF, NTF_PROXY = 0x02, 0x08

F_DUMP = NLM_F_REQUEST | NLM_F_DUMP
F_ACK = NLM_F_REQUEST | NLM_F_ACK                       # ip ... del / ip link set
F_ADD_EXCL = F_ACK | NLM_F_CREATE | NLM_F_EXCL          # ip link add
F_REPLACE = F_ACK | NLM_F_CREATE | NLM_F_REPLACE        # ip ... replace

NLMSGHDR = struct.Struct("=IHHII")       # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")     # family, (pad), type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")      # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")      # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BBHiHBB")        # family, pad1, pad2, ifindex, state, flags, type
RTATTR = struct.Struct("=HH")            # len, type
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_U16 = struct.Struct("=H")
_RTNEXTHOP = struct.Struct("=HBBi")      # len, flags, hops, ifindex

_ZERO_MAC = "00:00:00:00:00:00"
_FE80_64 = ipaddress.ip_network("fe80::/64")


class DecodeError(ValueError):
    """The framing of a netlink buffer is broken: nothing after this point can be trusted."""


# ================================================================== encoding

def _attr(atype: int, payload: bytes) -> bytes:
    n = RTATTR.size + len(payload)
    return RTATTR.pack(n, atype) + payload + b"\0" * (-n & 3)


def _u32(atype: int, value: int) -> bytes:
    return _attr(atype, _U32.pack(value))


def _asciiz(atype: int, text: str) -> bytes:
    return _attr(atype, text.encode() + b"\0")


def _message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def ip_packed(text: str) -> tuple[int, bytes]:
    """``(family, packed)`` of an address string; ``ValueError`` as ``ipaddress.ip_address`` raises it."""
    if ":" not in text:
        try:
            return AF_INET, socket.inet_pton(AF_INET, text)
        except (OSError, ValueError):
            pass
    ip = ipaddress.ip_address(text)
    return (AF_INET6 if ip.version == 6 else AF_INET), ip.packed


def _prefix_fast(text: str) -> tuple[bytes, int] | None:
    """``a.b.c.d/len`` in the one spelling ``ipaddress`` prints, or None (use ``ipaddress``)."""
    addr, sep, plen = text.partition("/")
    if not sep or ":" in addr or not (plen.isascii() and plen.isdigit()) or str(int(plen)) != plen:
        return None
    try:
        packed = socket.inet_pton(AF_INET, addr)
    except (OSError, ValueError):
        return None
    n = int(plen)
    return (packed, n) if n <= 32 else None


def network_packed(text: str) -> tuple[int, bytes, int]:
    """``(family, packed network address, prefixlen)`` of a strict CIDR (``ipaddress.ip_network``)."""
    fast = _prefix_fast(text)
    if fast is not None:
        packed, n = fast
        if n == 32 or int.from_bytes(packed, "big") & ((1 << (32 - n)) - 1) == 0:
            return AF_INET, packed, n
    net = ipaddress.ip_network(text)
    return (AF_INET6 if net.version == 6 else AF_INET), net.network_address.packed, net.prefixlen


def interface_packed(text: str) -> tuple[int, bytes, int]:
    """``(family, packed address, prefixlen)`` of ``ip/len`` (``ipaddress.ip_interface``: host bits allowed)."""
    fast = _prefix_fast(text)
    if fast is not None:
        return AF_INET, fast[0], fast[1]
    iface = ipaddress.ip_interface(text)
    return (AF_INET6 if iface.version == 6 else AF_INET), iface.ip.packed, iface.network.prefixlen


def mac_packed(text: str) -> bytes:
    """Six bytes of ``aa:bb:cc:dd:ee:ff``; ``ValueError`` worded as the reference words it."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{text!r} is not a MAC address")
    return bytes.fromhex("".join(parts))


# links
def encode_newlink(seq: int, link: Link, underlay_index: int | None = None) -> bytes:
    """``ip link add NAME [mtu N] [address MAC] type vxlan|bridge ...``: RTM_NEWLINK,
    NLM_F_CREATE|NLM_F_EXCL|NLM_F_ACK.  For vxlan: ``id VNI [dev UNDERLAY] [local IP] [dstport P]
    [no]learning ttl 0 noproxy nol2miss nol3miss [gbp]``, as flanneld."""
    if link.type == "vxlan":
        data = _u32(IFLA_VXLAN_ID, link.vni)
        if underlay_index is not None:
            data += _u32(IFLA_VXLAN_LINK, underlay_index)
        if link.local is not None:
            if ":" in link.local:
                data += _attr(IFLA_VXLAN_LOCAL6, socket.inet_pton(AF_INET6, link.local))
            else:
                data += _attr(IFLA_VXLAN_LOCAL, socket.inet_pton(AF_INET, link.local))
        if link.port is not None:       # absent: the kernel default (8472), as flanneld
            data += _attr(IFLA_VXLAN_PORT, struct.pack(">H", link.port))
        data += (_attr(IFLA_VXLAN_LEARNING, bytes([int(bool(link.learning))])) + _attr(IFLA_VXLAN_TTL, b"\0")
                 + _attr(IFLA_VXLAN_PROXY, b"\0") + _attr(IFLA_VXLAN_L2MISS, b"\0")
                 + _attr(IFLA_VXLAN_L3MISS, b"\0"))
        if link.gbp:
            data += _attr(IFLA_VXLAN_GBP, b"")
        info = _asciiz(IFLA_INFO_KIND, "vxlan") + _attr(IFLA_INFO_DATA, data)
    else:
        info = _asciiz(IFLA_INFO_KIND, link.type)
    body = IFINFOMSG.pack(0, 0, 0, 0, 0) + _asciiz(IFLA_IFNAME, link.name)
    if link.mtu is not None:
        body += _u32(IFLA_MTU, link.mtu)
    if link.mac is not None:
        body += _attr(IFLA_ADDRESS, mac_packed(link.mac))
    body += _attr(IFLA_LINKINFO, info)
    return _message(RTM_NEWLINK, F_ADD_EXCL, seq, body)


def encode_setlink(seq: int, index: int, mtu: int | None = None, mac: str | None = None,
                   up: bool | None = None) -> bytes:
    """``ip link set dev X [mtu N] [address MAC] [up|down]``: RTM_NEWLINK on the ifindex, NLM_F_ACK only."""
    flags, change = (0, 0) if up is None else ((IFF_UP if up else 0), IFF_UP)
    body = IFINFOMSG.pack(0, 0, index, flags, change)
    if mtu is not None:
        body += _u32(IFLA_MTU, mtu)
    if mac is not None:
        body += _attr(IFLA_ADDRESS, mac_packed(mac))
    return _message(RTM_NEWLINK, F_ACK, seq, body)


def encode_setlink_up(seq: int, name: str) -> bytes:
    """``ip link set NAME up``, by name (exactly the device just made): RTM_NEWLINK, NLM_F_ACK."""
    return _message(RTM_NEWLINK, F_ACK, seq, IFINFOMSG.pack(0, 0, 0, IFF_UP, IFF_UP) + _asciiz(IFLA_IFNAME, name))


def encode_dellink(seq: int, index: int) -> bytes:
    """``ip link del dev X``: RTM_DELLINK, NLM_F_ACK."""
    return _message(RTM_DELLINK, F_ACK, seq, IFINFOMSG.pack(0, 0, index, 0, 0))


# addresses
def _addr_body(cidr: str, index: int) -> bytes:
    family, packed, plen = interface_packed(cidr)
    # IFA_LOCAL and IFA_ADDRESS, no IFA_BROADCAST: as `ip addr` (and the reference).
    return IFADDRMSG.pack(family, plen, 0, RT_SCOPE_UNIVERSE, index) + _attr(IFA_LOCAL, packed) + \
        _attr(IFA_ADDRESS, packed)


def encode_newaddr(seq: int, cidr: str, index: int) -> bytes:
    """``ip addr replace CIDR dev X``: RTM_NEWADDR, NLM_F_CREATE|NLM_F_REPLACE, scope global."""
    return _message(RTM_NEWADDR, F_REPLACE, seq, _addr_body(cidr, index))


def encode_deladdr(seq: int, cidr: str, index: int) -> bytes:
    """``ip addr del CIDR dev X``: RTM_DELADDR, NLM_F_ACK (EADDRNOTAVAIL when already gone)."""
    return _message(RTM_DELADDR, F_ACK, seq, _addr_body(cidr, index))


# routes
def _route_body(route: Route, oif: int | None, delete: bool) -> bytes:
    family, packed, plen = network_packed(route.dst)
    attrs = _attr(RTA_DST, packed)
    if route.gateway is not None:
        gfam, gw = ip_packed(route.gateway)
        if gfam != family:
            raise ValueError(f"gateway {route.gateway} is not of the family of {route.dst}")
        attrs += _attr(RTA_GATEWAY, gw)
    if oif is not None:
        attrs += _u32(RTA_OIF, oif)
    if route.metric:
        attrs += _u32(RTA_PRIORITY, route.metric)
    if delete:
        # iproute2's delete: scope NOWHERE, type and protocol 0, so that the
        # kernel matches on dst, metric and whatever next hop is given.
        head = RTMSG.pack(family, plen, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0, 0)
    else:
        head = RTMSG.pack(family, plen, 0, 0, RT_TABLE_MAIN, RTPROT_RECONCILER,
                          RT_SCOPE_UNIVERSE if route.gateway else RT_SCOPE_LINK, RTN_UNICAST,
                          RTNH_F_ONLINK if route.onlink else 0)
    return head + attrs


def encode_newroute(seq: int, route: Route, oif: int | None) -> bytes:
    """``ip route replace DST [via GW] [dev X] [onlink] [metric N] proto 73 table main``:
    RTM_NEWROUTE, NLM_F_CREATE|NLM_F_REPLACE."""
    return _message(RTM_NEWROUTE, F_REPLACE, seq, _route_body(route, oif, False))


def encode_delroute(seq: int, route: Route, oif: int | None) -> bytes:
    """``ip route del DST [via GW] [dev X] [metric N] table main``: RTM_DELROUTE, NLM_F_ACK (ESRCH when gone)."""
    return _message(RTM_DELROUTE, F_ACK, seq, _route_body(route, oif, True))


# neighbours
def encode_newneigh(seq: int, ip: str, mac: str, index: int) -> bytes:
    """``ip neigh replace IP lladdr MAC dev X nud permanent``: RTM_NEWNEIGH, NLM_F_CREATE|NLM_F_REPLACE."""
    family, packed = ip_packed(ip)
    body = NDMSG.pack(family, 0, 0, index, NUD_PERMANENT, 0, 0) + _attr(NDA_DST, packed) + \
        _attr(NDA_LLADDR, mac_packed(mac))
    return _message(RTM_NEWNEIGH, F_REPLACE, seq, body)


def encode_delneigh(seq: int, ip: str, index: int) -> bytes:
    """``ip neigh del IP dev X``: RTM_DELNEIGH, NLM_F_ACK (ENOENT when already gone)."""
    family, packed = ip_packed(ip)
    return _message(RTM_DELNEIGH, F_ACK, seq, NDMSG.pack(family, 0, 0, index, 0, 0, 0) + _attr(NDA_DST, packed))


# FDB
def _fdb_body(mac: str, dst: str, index: int, state: int) -> bytes:
    # NTF_SELF: the VXLAN device's own table, not a bridge's.  Replace is refused
    # ("Operation not supported") without NTF_SELF and NUD_PERMANENT spelled out.
    return NDMSG.pack(AF_BRIDGE, 0, 0, index, state, NTF_SELF, 0) + _attr(NDA_LLADDR, mac_packed(mac)) + \
        _attr(NDA_DST, ip_packed(dst)[1])


def encode_newfdb(seq: int, mac: str, dst: str, index: int) -> bytes:
    """``bridge fdb replace MAC dev X dst IP self permanent``: RTM_NEWNEIGH (AF_BRIDGE),
    NLM_F_CREATE|NLM_F_REPLACE, NTF_SELF, NUD_PERMANENT."""
    return _message(RTM_NEWNEIGH, F_REPLACE, seq, _fdb_body(mac, dst, index, NUD_PERMANENT))


def encode_delfdb(seq: int, mac: str, dst: str, index: int) -> bytes:
    """``bridge fdb del MAC dev X dst IP self``: RTM_DELNEIGH (AF_BRIDGE), NLM_F_ACK (ENOENT when gone)."""
    return _message(RTM_DELNEIGH, F_ACK, seq, _fdb_body(mac, dst, index, 0))


# dump requests.  Strict checking (NETLINK_GET_STRICT_CHK) rejects dump
# headers with stray fields, so each sets only what the kernel takes as a filter.
def encode_getlink(seq: int) -> bytes:
    """``ip link show``: RTM_GETLINK, NLM_F_DUMP."""
    return _message(RTM_GETLINK, F_DUMP, seq, IFINFOMSG.pack(0, 0, 0, 0, 0))


def encode_getaddr(seq: int, family: int, index: int) -> bytes:
    """``ip -4|-6 addr show [dev X]``: RTM_GETADDR, NLM_F_DUMP; ifa_index filters in the kernel (0: all)."""
    return _message(RTM_GETADDR, F_DUMP, seq, IFADDRMSG.pack(family, 0, 0, 0, index))


def encode_getroute(seq: int, family: int) -> bytes:
    """``ip -4|-6 route show table main type unicast``: RTM_GETROUTE, NLM_F_DUMP; rtm_table and
    rtm_type filter in the kernel."""
    return _message(RTM_GETROUTE, F_DUMP, seq, RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, RTN_UNICAST, 0))


def encode_getneigh(seq: int, family: int, index: int) -> bytes:
    """``ip neigh show dev X`` (AF_INET, AF_INET6) / ``bridge fdb show dev X`` (AF_BRIDGE): RTM_GETNEIGH,
    NLM_F_DUMP; NDA_IFINDEX filters in the kernel (strict checking refuses ndm_ifindex in a dump)."""
    return _message(RTM_GETNEIGH, F_DUMP, seq, NDMSG.pack(family, 0, 0, 0, 0, 0, 0) + _u32(NDA_IFINDEX, index))


# ================================================================== decoding

def _attrs(buf, a: int, end: int) -> dict[int, tuple[int, int]] | None:
    """``{type: (start, stop)}`` of the attributes in ``buf[a:end]``; None if one overruns.

    Fewer than 4 bytes left over are ignored (the kernel's ``nla_for_each_attr``
    does the same); a later attribute of the same type wins.
    """
    out: dict[int, tuple[int, int]] = {}
    unpack = RTATTR.unpack_from
    while end - a >= 4:
        alen, atype = unpack(buf, a)
        if alen < 4 or alen > end - a:
            return None
        out[atype & NLA_TYPE_MASK] = (a + 4, a + alen)
        a += (alen + 3) & ~3
    return out


def _messages(buf):
    """``(type, flags, seq, start, end)`` of each message; ``DecodeError`` on broken framing."""
    n = len(buf)
    off = 0
    unpack = NLMSGHDR.unpack_from
    while off < n:
        if n - off < 16:
            raise DecodeError(f"truncated netlink header at offset {off} ({n - off} bytes left)")
        mlen, mtype, mflags, seq, _pid = unpack(buf, off)
        if mlen < 16 or mlen > n - off:
            raise DecodeError(f"netlink message at offset {off} claims {mlen} bytes, {n - off} left")
        yield mtype, mflags, seq, off, off + mlen
        off += (mlen + 3) & ~3


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

    Kept: unicast routes of the main table, not cloned, not multipath, that
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
        if table != RT_TABLE_MAIN or rtype != RTN_UNICAST or flags & RTM_F_CLONED:
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
        out.append(Route(dst=text, gateway=gateway, dev=names.get(oif) if oif else None,
                         onlink=bool(flags & RTNH_F_ONLINK), metric=metric, protocol=proto))
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
    """``NTF_SELF`` permanent FDB entries with a ``dst`` of device ``ifindex`` (AF_BRIDGE dump);
    the all-zeros default entry is left out."""
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
        mac = lladdr.hex(":")
        if mac == _ZERO_MAC:
            continue
        out.append(Fdb(dev=name, mac=mac, dst=ip_text(dst)))
    return out


def _extack(buf, off: int, end: int, mflags: int) -> str | None:
    """NLMSGERR_ATTR_MSG of an NLMSG_ERROR (or NLMSG_DONE) message at ``off``, if any."""
    if not mflags & NLM_F_ACK_TLVS or end - off < 36:
        return None
    if mflags & NLM_F_CAPPED:
        a = off + 36
    else:
        a = off + 20 + ((NLMSGHDR.unpack_from(buf, off + 20)[0] + 3) & ~3)
    if a > end:
        return None
    attrs = _attrs(buf, a, end)
    span = (attrs or {}).get(NLMSGERR_ATTR_MSG)
    if span is None:
        return None
    text = bytes(buf[span[0]:span[1]]).split(b"\0", 1)[0].decode(errors="replace")
    return text or None


def decode_acks(buf) -> list[tuple[int, int, str | None]]:
    """``(seq, errno, extack message)`` of every NLMSG_ERROR message (errno 0: an ACK)."""
    out = []
    for mtype, mflags, seq, off, end in _messages(buf):
        if mtype != NLMSG_ERROR or end - off < 20:
            continue
        out.append((seq, -_I32.unpack_from(buf, off + 16)[0], _extack(buf, off, end, mflags)))
    return out


def scan_dump(buf) -> tuple[bool, bool, int, str | None]:
    """``(done, interrupted, errno, message)`` of one datagram of a dump answer.

    ``done``: NLMSG_DONE or NLMSG_ERROR was seen.  ``interrupted``: some
    message carries NLM_F_DUMP_INTR (the kernel may set it on NLMSG_DONE
    only).  ``errno``: of an NLMSG_ERROR, or the negative status an
    NLMSG_DONE carries; 0 when none.
    """
    done = intr = False
    code, text = 0, None
    for mtype, mflags, _seq, off, end in _messages(buf):
        if mflags & NLM_F_DUMP_INTR:
            intr = True
        if mtype == NLMSG_DONE:
            done = True
            if end - off >= 20:
                status = _I32.unpack_from(buf, off + 16)[0]
                if status < 0:
                    code = -status
        elif mtype == NLMSG_ERROR:
            done = True
            if end - off >= 20:
                code = -_I32.unpack_from(buf, off + 16)[0]
                text = _extack(buf, off, end, mflags)
    return done, intr, code, text


#: The decoders the compiled module replaces, by name (``_fastpath.DECODERS`` has the same keys).
DECODERS = {"route": decode_routes, "neigh": decode_neighs, "fdb": decode_fdb, "acks": decode_acks,
            "scan": scan_dump}


def decode_dump(kind: str, buf, *context):
    """``DECODERS[kind](buf, *context)``: the same entry point as ``_fastpath.decode_dump``."""
    return DECODERS[kind](buf, *context)


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
