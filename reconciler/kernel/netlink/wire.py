"""The rtnetlink wire codec, in kernel vocabulary: stdlib only (``struct``, ``socket``; ``ipaddress``
for IPv6 text and for the exact wording of a refused string), no pyroute2.

Two halves, both pure functions over bytes:

* **Encoders** ``encode_<op>(seq, ...) -> bytes``: one complete netlink
  message (``nlmsghdr`` + fixed header + attributes), byte for byte what the
  reference backend (pyroute2) sends for the same change, with the same
  ``NLM_F_*`` flags.  Device names are resolved by the caller: encoders take
  ifindexes.  Each docstring gives the iproute2 equivalent.
* **Decoders** ``decode_<kind>(buf, ...) -> list``: a dump answer (any
  number of datagrams, concatenated) into exactly the ``reconciler.core.model``
  values ``PyrouteBackend`` makes of the same bytes, with the same filters.
  ``_fastpath`` has compiled versions of the hot ones (routes, neighbours,
  FDB, ACKs, the dump scan) that must give identical results; the tests hold
  the two against each other and against pyroute2's parser.

The code lives in three modules: this one (the encoders, ``decode_acks``,
``scan_dump`` and the ``DECODERS`` table), ``wire_decode.py`` (the dump
decoders) and ``wire_base.py`` (the constants and framing both share).
Everything is imported from here: ``wire`` re-exports the other two.

Malformed input never crashes a decoder with anything but ``DecodeError``:
a broken *framing* (a header that does not fit, a length that points past
the buffer) raises ``DecodeError``, because nothing after it can be trusted;
a broken *message* (a short fixed header, an attribute longer than its
message, an address of the wrong size) is skipped, as the kernel would skip
an attribute it cannot parse.

Batches: ``encode_batch(ops, seq0, chunk_bytes)`` encodes a whole list of
address/neighbour/FDB/route requests, given as plain tuples (``OP_FIELDS``),
into ``sendmsg``-sized chunks with consecutive sequence numbers, and
``match_acks`` maps the answers back to positions in that list.
``_fastpath`` has a compiled twin of both that must give identical bytes and
identical errors (``tests/test_wire.py``); this module is the specification.

Input strings are validated exactly like the reference does: a fast path
(``inet_pton``) accepts only strings that ``ipaddress`` accepts identically,
and everything else goes through ``ipaddress`` itself, so a malformed lease
field fails with the same ``ValueError`` text in both backends.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from socket import AF_BRIDGE, AF_INET, AF_INET6

from reconciler.core.model import RTPROT_RECONCILER, Link, Route
from reconciler.kernel.netlink.wire_base import (F_ACK, F_ADD_EXCL, F_DUMP, F_REPLACE, _I32, IFA_ADDRESS, IFA_FLAGS, IFA_LOCAL, IFADDRMSG,
                        IFF_UP, IFINFOMSG, IFLA_ADDRESS, IFLA_IFNAME, IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINKINFO,
                        IFLA_MTU, IFLA_VXLAN_GBP, IFLA_VXLAN_ID, IFLA_VXLAN_L2MISS, IFLA_VXLAN_L3MISS,
                        IFLA_VXLAN_LEARNING, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LOCAL6, IFLA_VXLAN_PORT,
                        IFLA_VXLAN_PROXY, IFLA_VXLAN_TTL, NDA_DST, NDA_IFINDEX, NDA_LLADDR, NDMSG, NETLINK_CAP_ACK,
                        NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK, NETLINK_ROUTE, NLA_TYPE_MASK, NLM_F_ACK,
                        NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL,
                        NLM_F_MATCH, NLM_F_MULTI, NLM_F_REPLACE, NLM_F_REQUEST, NLM_F_ROOT, NLMSG_DONE, NLMSG_ERROR,
                        NLMSG_NOOP, NLMSGERR_ATTR_MSG, NLMSGHDR, NTF_PROXY, NTF_SELF, NUD_PERMANENT, RT_SCOPE_LINK,
                        RT_SCOPE_NOWHERE, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTA_DST, RTA_GATEWAY, RTA_MULTIPATH,
                        RTA_OIF, RTA_PRIORITY, RTA_TABLE, RTATTR, RTM_DELADDR, RTM_DELLINK, RTM_DELNEIGH, RTM_DELROUTE,
                        RTM_F_CLONED, RTM_GETADDR, RTM_GETLINK, RTM_GETNEIGH, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK,
                        RTM_NEWNEIGH, RTM_NEWROUTE, RTMSG, RTN_UNICAST, ROUTE_TYPE_CODES, RTNH_F_ONLINK, SOL_NETLINK, _U32,
                        VXLAN_DEFAULT_PORT, DecodeError, _attrs, _messages)
from reconciler.kernel.netlink.wire_decode import (_FE80_64, AddrMsg, LinkMsg, cidr_of, decode_addrs, decode_default_routes, decode_fdb,
                          decode_links, decode_neighs, decode_routes, ip_text, link_value, net6_text, split_nets)

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
    "decode_nexthops",
    "decode_routes",
    "encode_deladdr",
    "encode_delfdb",
    "encode_dellink",
    "encode_delneigh",
    "encode_delnexthop",
    "encode_delroute",
    "encode_delroute_nh",
    "encode_getaddr",
    "encode_getlink",
    "encode_getneigh",
    "encode_getnexthop",
    "encode_getroute",
    "encode_newaddr",
    "encode_newfdb",
    "encode_newlink",
    "encode_newneigh",
    "encode_newnexthop",
    "encode_newroute",
    "encode_newroute_nh",
    "encode_setlink",
    "encode_setlink_up",
    "ENCODE_ERRORS",
    "check_seq_range",
    "OP_FIELDS",
    "encode_batch",
    "encode_op",
    "link_value",
    "match_acks",
    "scan_dump",
]

# Defined in wire_base / wire_decode and used here only by those who read them as
# ``wire.<name>`` (batched.py, _fastpath, the tests): named so they count as used.
_REEXPORTED = (
    _FE80_64, IFA_FLAGS, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK, NETLINK_ROUTE,
    NLA_TYPE_MASK, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_MATCH, NLM_F_MULTI, NLM_F_REPLACE,
    NLM_F_REQUEST, NLM_F_ROOT, NLMSG_NOOP, NTF_PROXY, RTA_MULTIPATH, RTA_TABLE, RTM_F_CLONED, SOL_NETLINK,
    VXLAN_DEFAULT_PORT, cidr_of, ip_text, net6_text, split_nets)


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
    return _route_fields(route.dst, route.gateway, route.onlink, route.metric, oif, delete,
                         ROUTE_TYPE_CODES[route.type])


def _route_fields(dst: str, gateway: str | None, onlink: bool, metric: int, oif: int | None,
                  delete: bool, rtype: int = RTN_UNICAST) -> bytes:
    """A unicast route's fields, or (``rtype`` RTN_BLACKHOLE) a blackhole's: no gateway, no device,
    scope universe, as ``ip route replace blackhole DST`` sends it."""
    family, packed, plen = network_packed(dst)
    attrs = _attr(RTA_DST, packed)
    if gateway is not None:
        gfam, gw = ip_packed(gateway)
        if gfam != family:
            raise ValueError(f"gateway {gateway} is not of the family of {dst}")
        attrs += _attr(RTA_GATEWAY, gw)
    if oif is not None:
        attrs += _u32(RTA_OIF, oif)
    if metric:
        attrs += _u32(RTA_PRIORITY, metric)
    if delete:
        # iproute2's delete: scope NOWHERE, type and protocol 0, so that the
        # kernel matches on dst, metric and whatever next hop is given.
        # A blackhole's delete names its type, which is all it has beside dst and metric.
        head = RTMSG.pack(family, plen, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE,
                          rtype if rtype != RTN_UNICAST else 0, 0)
    else:
        head = RTMSG.pack(family, plen, 0, 0, RT_TABLE_MAIN, RTPROT_RECONCILER,
                          RT_SCOPE_UNIVERSE if gateway or rtype != RTN_UNICAST else RT_SCOPE_LINK, rtype,
                          RTNH_F_ONLINK if onlink else 0)
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


# batches
#: The fields of each kind of op ``encode_batch`` takes, after ``(kind, delete)``.  Device names
#: are already resolved to ifindexes (``oif`` None: no RTA_OIF); ``mac`` of a neigh delete is unused.
OP_FIELDS = {
    "route": ("dst", "gateway", "onlink", "metric", "oif"),
    "neigh": ("ip", "mac", "ifindex"),
    "fdb": ("mac", "dst", "ifindex"),
    "address": ("cidr", "ifindex"),
}
#: What a malformed field of one op raises (AttributeError: a field of the wrong type, such as a None
#: MAC); ``encode_batch`` reports these per op and goes on.
ENCODE_ERRORS = (ValueError, TypeError, AttributeError, struct.error, OSError)


def encode_op(seq: int, op: tuple) -> bytes:
    """One request of a batch: ``op`` is ``(kind, delete, *OP_FIELDS[kind])``; the ``encode_*`` above."""
    kind, delete = op[0], op[1]
    if kind == "route":
        _, _, dst, gateway, onlink, metric, oif = op
        if delete:
            return _message(RTM_DELROUTE, F_ACK, seq, _route_fields(dst, gateway, onlink, metric, oif, True))
        return _message(RTM_NEWROUTE, F_REPLACE, seq, _route_fields(dst, gateway, onlink, metric, oif, False))
    if kind == "neigh":
        _, _, ip, mac, index = op
        return encode_delneigh(seq, ip, index) if delete else encode_newneigh(seq, ip, mac, index)
    if kind == "fdb":
        _, _, mac, dst, index = op
        return (encode_delfdb if delete else encode_newfdb)(seq, mac, dst, index)
    if kind == "address":
        _, _, cidr, index = op
        return (encode_deladdr if delete else encode_newaddr)(seq, cidr, index)
    raise ValueError(f"unknown kind {kind!r}")


def check_seq_range(seq0: int, count: int) -> None:
    """``seq0 .. seq0 + count - 1`` must be valid, non-zero ``nlmsg_seq`` values (no wrap-around)."""
    if not 1 <= seq0 <= 0xFFFFFFFF or seq0 + count - 1 > 0xFFFFFFFF:
        raise ValueError(f"sequence numbers {seq0}..{seq0 + count - 1} do not fit in nlmsg_seq (1..2**32-1)")


Chunks = list[tuple[bytes, list[int]]]


def encode_batch(ops, seq0: int, chunk_bytes: int, ack_each: bool = True) -> tuple[Chunks, list[tuple[int, Exception]]]:
    """``(chunks, failed)`` of a list of requests (``encode_op``), op ``i`` with ``nlmsg_seq`` ``seq0 + i``.

    ``chunks``: ``(bytes, [seq, ...])``, each at most ``chunk_bytes`` long
    unless a single message is longer, to be sent with one ``sendmsg`` each,
    in order.  ``failed``: ``(i, exception)`` of each op whose fields are
    malformed (one of ``ENCODE_ERRORS``, worded as ``ipaddress``/``struct``
    word it); it is left out of the chunks and the others go on.

    ``ack_each`` False: only the last message of each chunk asks for an ACK
    (``NLM_F_ACK`` cleared in the others).  The kernel answers a request
    without it only when it fails, and answers a chunk's requests in order, so
    the last one's ACK says that every request before it that drew no error
    succeeded (docs/kernel-facts.md, "Errors only"): one answer a chunk to read
    instead of one a request.
    """
    check_seq_range(seq0, len(ops))
    chunks: Chunks = []
    failed: list[tuple[int, Exception]] = []
    parts: list[bytes] = []
    seqs: list[int] = []
    size = 0
    for i, op in enumerate(ops):
        seq = seq0 + i
        try:
            msg = encode_op(seq, op)
        except ENCODE_ERRORS as exc:
            failed.append((i, exc))
            continue
        if not ack_each:
            msg = _with_ack(msg, False)
        if seqs and size + len(msg) > chunk_bytes:
            chunks.append(_chunk(parts, seqs, ack_each))
            parts, seqs, size = [], [], 0
        parts.append(msg)
        seqs.append(seq)
        size += len(msg)
    if seqs:
        chunks.append(_chunk(parts, seqs, ack_each))
    return chunks, failed


def _with_ack(msg: bytes, ack: bool) -> bytes:
    """``msg`` with ``NLM_F_ACK`` set or cleared (``nlmsg_flags`` is at offset 6, little-endian)."""
    flags = msg[6] | NLM_F_ACK if ack else msg[6] & ~NLM_F_ACK
    return msg[:6] + bytes((flags,)) + msg[7:]


def _chunk(parts: list[bytes], seqs: list[int], ack_each: bool) -> tuple[bytes, list[int]]:
    if not ack_each:
        parts[-1] = _with_ack(parts[-1], True)
    return b"".join(parts), seqs


# dump requests.  Strict checking (NETLINK_GET_STRICT_CHK) rejects dump
# headers with stray fields, so each sets only what the kernel takes as a filter.
def encode_getlink(seq: int) -> bytes:
    """``ip link show``: RTM_GETLINK, NLM_F_DUMP."""
    return _message(RTM_GETLINK, F_DUMP, seq, IFINFOMSG.pack(0, 0, 0, 0, 0))


def encode_getaddr(seq: int, family: int, index: int) -> bytes:
    """``ip -4|-6 addr show [dev X]``: RTM_GETADDR, NLM_F_DUMP; ifa_index filters in the kernel (0: all)."""
    return _message(RTM_GETADDR, F_DUMP, seq, IFADDRMSG.pack(family, 0, 0, 0, index))


def encode_getroute(seq: int, family: int) -> bytes:
    """``ip -4|-6 route show table main``: RTM_GETROUTE, NLM_F_DUMP; rtm_table filters in the kernel.
    Every type comes back (the decoder keeps unicast and blackhole routes): a blackhole at one of
    our keys is ours (``-ip-blackhole-route``) or a foreign route holding it, never nothing."""
    return _message(RTM_GETROUTE, F_DUMP, seq, RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0))


def encode_getneigh(seq: int, family: int, index: int) -> bytes:
    """``ip neigh show dev X`` (AF_INET, AF_INET6) / ``bridge fdb show dev X`` (AF_BRIDGE): RTM_GETNEIGH,
    NLM_F_DUMP; NDA_IFINDEX filters in the kernel (strict checking refuses ndm_ifindex in a dump)."""
    return _message(RTM_GETNEIGH, F_DUMP, seq, NDMSG.pack(family, 0, 0, 0, 0, 0, 0) + _u32(NDA_IFINDEX, index))


# ============================================================ ACKs, dump scan
# The dump decoders are in wire_decode.py (re-exported here).

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


def match_acks(buf, seq0: int, count: int) -> list[tuple[int, int, str | None]]:
    """``(position, errno, extack message)`` of each answer to a batch from ``encode_batch(ops, seq0, ...)``:
    the position is ``seq - seq0``; answers to anything else (``seq`` outside the ``count`` ops) are dropped."""
    return [(seq - seq0, code, text) for seq, code, text in decode_acks(buf) if 0 <= seq - seq0 < count]


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


# ============================================================== route lookup
RTA_PREFSRC = 7


def encode_route_get(seq: int, ip: str) -> bytes:
    """``ip route get IP`` (IPv4): RTM_GETROUTE without NLM_F_DUMP, NLM_F_ACK so an ACK ends the answer.

    Strict checking accepts only a /32 ``rtm_dst_len`` and zero table,
    protocol, scope and type in a route-get header."""
    body = RTMSG.pack(AF_INET, 32, 0, 0, 0, 0, 0, 0, 0) + _attr(RTA_DST, socket.inet_pton(AF_INET, ip))
    return _message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def decode_route_get(buf) -> tuple[int, str | None] | None:
    """``(oif, prefsrc)`` of the first RTM_NEWROUTE in an ``ip route get`` answer, or None."""
    for mtype, _f, _s, off, end in _messages(buf):
        if mtype != RTM_NEWROUTE or end - off < 28:
            continue
        attrs = _attrs(buf, off + 28, end)
        if attrs is None:
            continue
        oif = _U32.unpack_from(buf, attrs[RTA_OIF][0])[0] if RTA_OIF in attrs else None
        span = attrs.get(RTA_PREFSRC)
        src = socket.inet_ntop(AF_INET, bytes(buf[span[0]:span[0] + 4])) if span and span[1] - span[0] >= 4 else None
        if oif is not None:
            return oif, src
    return None


# ========================================================== nexthop objects
# The ``nexthop`` route layout (docs/route-layouts.md): byte for byte what the
# reference sends (``pyroute_msgs.nexthop_msg``, ``route_nh_msg``).

from reconciler.kernel.netlink.wire_base import NHA_GATEWAY, NHA_ID, NHA_OIF, NHMSG, RTA_NH_ID, RTM_DELNEXTHOP, RTM_GETNEXTHOP, \
    RTM_NEWNEXTHOP  # noqa: E402
from reconciler.kernel.netlink.wire_decode import decode_nexthops  # noqa: E402,F401


def _route_nh_body(route: Route, delete: bool) -> bytes:
    family, packed, plen = network_packed(route.dst)
    attrs = _attr(RTA_DST, packed)
    if route.metric:
        attrs += _u32(RTA_PRIORITY, route.metric)
    attrs += _u32(RTA_NH_ID, route.nhid)
    if delete:
        head = RTMSG.pack(family, plen, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0, 0)
    else:
        head = RTMSG.pack(family, plen, 0, 0, RT_TABLE_MAIN, RTPROT_RECONCILER, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    return head + attrs


def encode_newroute_nh(seq: int, route: Route) -> bytes:
    """``ip route replace DST nhid N [metric M] proto 73 table main``: RTM_NEWROUTE,
    NLM_F_CREATE|NLM_F_REPLACE.  No gateway, no device: the kernel refuses them beside a nexthop id."""
    return _message(RTM_NEWROUTE, F_REPLACE, seq, _route_nh_body(route, False))


def encode_delroute_nh(seq: int, route: Route) -> bytes:
    """``ip route del DST nhid N [metric M] table main``: RTM_DELROUTE, NLM_F_ACK.  By nhid: naming
    the gateway and device the dump shows would miss the route (ESRCH, taken for "already gone")."""
    return _message(RTM_DELROUTE, F_ACK, seq, _route_nh_body(route, True))


def encode_newnexthop(seq: int, nhid: int, gateway: str, oif: int, onlink: bool) -> bytes:
    """``ip nexthop replace id N via GW dev X [onlink] proto 73``: RTM_NEWNEXTHOP, NLM_F_CREATE|NLM_F_REPLACE."""
    family, gw = ip_packed(gateway)
    body = NHMSG.pack(family, 0, RTPROT_RECONCILER, 0, RTNH_F_ONLINK if onlink else 0) + _u32(NHA_ID, nhid) + \
        _u32(NHA_OIF, oif) + _attr(NHA_GATEWAY, gw)
    return _message(RTM_NEWNEXTHOP, F_REPLACE, seq, body)


def encode_delnexthop(seq: int, nhid: int) -> bytes:
    """``ip nexthop del id N``: RTM_DELNEXTHOP, NLM_F_ACK (ENOENT when already gone; the routes through it go too)."""
    return _message(RTM_DELNEXTHOP, F_ACK, seq, NHMSG.pack(0, 0, 0, 0, 0) + _u32(NHA_ID, nhid))


def encode_getnexthop(seq: int) -> bytes:
    """``ip nexthop show``: RTM_GETNEXTHOP, NLM_F_DUMP, every family (the header must be all zeros)."""
    return _message(RTM_GETNEXTHOP, F_DUMP, seq, NHMSG.pack(0, 0, 0, 0, 0))
