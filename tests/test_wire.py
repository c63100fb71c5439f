"""The wire codec proves itself against the reference, with no kernel and no root.

* Encoders: byte for byte against hand-written messages, and against the
  bytes the reference backend (pyroute2) builds for the same change.
* Decoders: value for value against the reference's own parsers
  (pyroute2's marshal + ``PyrouteBackend._parse_*``) on the same bytes,
  built here by an independent little encoder.
* The compiled decoders (``_fastpath``) against the pure ones, on random
  well-formed dumps and on truncated and garbage input: same values, or the
  same ``DecodeError``; never anything else.
* The batch encoder (``wire.encode_batch``, ``match_acks``): a batch is the
  single-message encoders' bytes in chunks; the compiled twin gives the same
  bytes on random ops (IPv4 and IPv6) and the same per-op errors on odd ones.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import struct
from socket import AF_BRIDGE, AF_INET, AF_INET6

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

import _fastpath
from reconciler.core.model import RTPROT_RECONCILER, Address, Fdb, Link, Neigh, Route
from reconciler.kernel.netlink import reference, wire
from reconciler.kernel.netlink.pyroute_msgs import rtnl_marshal
from tests.conftest_fastpath import every_field, require_fastpath
from reconciler.kernel.netlink.reference import PyrouteBackend

SETTINGS = settings(max_examples=int(os.environ.get("WIRE_EXAMPLES", "200")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
NAMES = {1: "lo", 2: "eth0", 3: "flannel.1", 4: "cni0"}
INDEX = {v: k for k, v in NAMES.items()}


@pytest.fixture(params=[False, True], ids=["pure", "accelerated"])
def decoders(request) -> dict:
    if request.param:
        require_fastpath()
        return _fastpath.DECODERS
    return wire.DECODERS


# ------------------------------------------------- an independent encoder

def rta(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (-n & 3)


def nlmsg(mtype: int, body: bytes, flags: int = 0x2, seq: int = 1) -> bytes:
    n = 16 + len(body)
    return struct.pack("=IHHII", n, mtype, flags, seq, 4242) + body + b"\0" * (-n & 3)


DONE = nlmsg(3, struct.pack("=i", 0))


def ip4(text: str) -> bytes:
    return socket.inet_pton(AF_INET, text)


# ------------------------------------------------- the reference's encoding

def reference_backend() -> PyrouteBackend:
    """A PyrouteBackend without a socket: enough for its message builders and parsers."""
    b = object.__new__(PyrouteBackend)
    b._index, b._names, b._links = dict(INDEX), dict(NAMES), {}
    return b


def pyroute_bytes(msg, msg_type: int, flags: int, seq: int) -> bytes:
    msg["header"]["type"], msg["header"]["flags"] = msg_type, flags
    msg["header"]["sequence_number"], msg["header"]["pid"] = seq, 0
    msg.encode()
    return bytes(msg.data)


# ================================================================== encoders

def test_neigh_replace_by_hand():
    got = wire.encode_newneigh(7, "100.64.2.0", "0A:58:64:40:02:00", 3)
    want = bytes.fromhex(
        "30000000" "1c00" "0505" "07000000" "00000000"      # len 48, RTM_NEWNEIGH, REQUEST|ACK|REPLACE|CREATE, seq 7, pid 0
        "02" "00" "0000" "03000000" "8000" "00" "00"         # AF_INET, ifindex 3, NUD_PERMANENT
        "0800" "0100" "64400200"                             # NDA_DST 100.64.2.0
        "0a00" "0200" "0a5864400200" "0000")                 # NDA_LLADDR, padded
    assert got == want


def test_fdb_replace_and_delete_by_hand():
    got = wire.encode_newfdb(1, "0a:58:64:40:02:00", "198.18.0.2", 3)
    want = bytes.fromhex(
        "30000000" "1c00" "0505" "01000000" "00000000"
        "07" "00" "0000" "03000000" "8000" "02" "00"         # AF_BRIDGE, ifindex 3, NUD_PERMANENT, NTF_SELF
        "0a00" "0200" "0a5864400200" "0000"                  # NDA_LLADDR first, as the reference
        "0800" "0100" "c6120002")                            # NDA_DST 198.18.0.2
    assert got == want
    deleted = wire.encode_delfdb(2, "0a:58:64:40:02:00", "198.18.0.2", 3)
    assert deleted[4:8] == bytes.fromhex("1d00" "0500")      # RTM_DELNEIGH, REQUEST|ACK
    assert deleted[24:28] == bytes.fromhex("0000" "02" "00")  # state 0, NTF_SELF


def test_route_replace_and_delete_by_hand():
    r = Route("100.64.2.0/24", "100.64.2.0", "flannel.1", onlink=True, metric=0)
    want = bytes.fromhex(
        "34000000" "1800" "0505" "01000000" "00000000"      # RTM_NEWROUTE, replace
        "02" "18" "00" "00" "fe" "49" "00" "01" "04000000"   # AF_INET /24, table main, proto 73, universe, unicast, onlink
        "0800" "0100" "64400200"                             # RTA_DST
        "0800" "0500" "64400200"                             # RTA_GATEWAY
        "0800" "0400" "03000000")                            # RTA_OIF 3
    assert wire.encode_newroute(1, r, 3) == want
    got = wire.encode_delroute(2, Route("100.64.5.0/24", None, None, metric=50), None)
    assert got == bytes.fromhex(
        "2c000000" "1900" "0500" "02000000" "00000000"
        "02" "18" "00" "00" "fe" "00" "ff" "00" "00000000"   # proto 0, scope NOWHERE, type 0
        "0800" "0100" "64400500" "0800" "0600" "32000000")   # RTA_DST, RTA_PRIORITY 50


def test_neigh_dump_request_by_hand():
    assert wire.encode_getneigh(9, AF_BRIDGE, 3) == bytes.fromhex(
        "24000000" "1e00" "0103" "09000000" "00000000"      # RTM_GETNEIGH, REQUEST|DUMP
        "07" "00" "0000" "00000000" "0000" "00" "00"         # strict: nothing in the header but the family
        "0800" "0800" "03000000")                            # NDA_IFINDEX 3


ROUTES = [
    Route("100.64.2.0/24", "100.64.2.0", "flannel.1", onlink=True),
    Route("100.64.6.0/24", "198.18.0.2", None),
    Route("100.64.1.0/24", None, "cni0", metric=100),
    Route("0.0.0.0/0", "198.18.0.254", "eth0", metric=7),
    Route("fd00:64:2::/64", "fd00:64:2::", "flannel.1", onlink=True, metric=1024),
    Route("fd00:64:3::/64", None, "flannel.1", metric=1024),
    Route("100.64.1.0/24", None, None, metric=2 ** 32 - 1, type="blackhole"),     # -ip-blackhole-route
    Route("fd00:64:1::/64", None, None, metric=2 ** 32 - 1, type="blackhole"),
]


def test_blackhole_route_replace_by_hand():
    r = Route("100.64.1.0/24", None, None, metric=2 ** 32 - 1, type="blackhole")
    assert wire.encode_newroute(1, r, None) == bytes.fromhex(
        "2c000000" "1800" "0505" "01000000" "00000000"      # RTM_NEWROUTE, replace
        "02" "18" "00" "00" "fe" "49" "00" "06" "00000000"   # proto 73, scope universe, type blackhole, no flags
        "0800" "0100" "64400100"                             # RTA_DST
        "0800" "0600" "ffffffff")                            # RTA_PRIORITY
    assert wire.encode_delroute(2, r, None)[16:28] == bytes.fromhex(
        "02" "18" "00" "00" "fe" "00" "ff" "06" "00000000")   # the delete names the type


@pytest.mark.parametrize("route", ROUTES, ids=str)
@pytest.mark.parametrize("delete", [False, True])
def test_routes_are_encoded_as_the_reference_encodes_them(route, delete):
    ref = reference_backend()
    msg_type, flags = (24, 0x505) if not delete else (25, 0x5)
    want = pyroute_bytes(ref._route_msg(route, delete), msg_type, flags, 11)
    oif = INDEX[route.dev] if route.dev else None
    got = (wire.encode_delroute if delete else wire.encode_newroute)(11, route, oif)
    assert got == want


@pytest.mark.parametrize("obj", [
    Neigh("flannel.1", "100.64.2.0", "0a:58:64:40:02:00"), Neigh("flannel.1", "fd00:64:2::", "0a:58:64:40:02:00"),
    Fdb("flannel.1", "0a:58:64:40:02:00", "198.18.0.2"), Fdb("flannel.1", "0a:58:64:40:02:00", "fd00::2"),
    Address("flannel.1", "100.64.1.0/32"), Address("cni0", "100.64.1.1/24"), Address("cni0", "fd00:64:1::1/64"),
], ids=repr)
@pytest.mark.parametrize("delete", [False, True])
def test_entries_are_encoded_as_the_reference_encodes_them(obj, delete):
    ref = reference_backend()
    idx = INDEX[obj.dev]
    if obj.KIND == "neigh":
        want = pyroute_bytes(ref._neigh_msg(obj, delete), 29 if delete else 28, 5 if delete else 0x505, 3)
        got = wire.encode_delneigh(3, obj.ip, idx) if delete else wire.encode_newneigh(3, obj.ip, obj.mac, idx)
    elif obj.KIND == "fdb":
        want = pyroute_bytes(ref._fdb_msg(obj, delete), 29 if delete else 28, 5 if delete else 0x505, 3)
        got = (wire.encode_delfdb if delete else wire.encode_newfdb)(3, obj.mac, obj.dst, idx)
    else:
        want = pyroute_bytes(ref._address_msg(obj), 21 if delete else 20, 5 if delete else 0x505, 3)
        got = (wire.encode_deladdr if delete else wire.encode_newaddr)(3, obj.cidr, idx)
    assert got == want


def _pyroute_newlink(link: Link, lower: int | None) -> bytes:
    """The reference backend's own ``ip link add`` message, as pyroute2 encodes it."""
    from reconciler.kernel.netlink.pyroute_msgs import link_create_msg

    return pyroute_bytes(link_create_msg(link, lambda _name: lower), 16, 0x605, 5)


@pytest.mark.parametrize("link, lower", [
    (Link("flannel.1", "vxlan", mtu=1450, mac="0a:58:64:40:01:00", up=True, vni=1, local="198.18.0.1",
          port=8472, learning=False, gbp=False, underlay="eth0"), 2),
    (Link("flannel.7", "vxlan", vni=7, local="fd00::1", learning=True, gbp=True), None),
    (Link("cni0", "bridge", mtu=1450, up=True), None),
], ids=lambda x: getattr(x, "name", str(x)))
def test_links_are_encoded_as_the_reference_encodes_them(link, lower):
    assert wire.encode_newlink(5, link, lower) == _pyroute_newlink(link, lower)


def test_link_set_up_and_delete_as_the_reference():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["index"], msg["flags"], msg["change"] = 3, 0, 1
    msg["attrs"] = [["IFLA_MTU", 1400], ["IFLA_ADDRESS", "0a:58:64:40:01:99"]]
    assert wire.encode_setlink(4, 3, 1400, "0a:58:64:40:01:99", False) == pyroute_bytes(msg, 16, 5, 4)
    up = ifinfmsg()
    up["flags"], up["change"] = 1, 1
    up["attrs"] = [["IFLA_IFNAME", "flannel.1"]]
    assert wire.encode_setlink_up(4, "flannel.1") == pyroute_bytes(up, 16, 5, 4)
    gone = ifinfmsg()
    gone["index"] = 3
    assert wire.encode_dellink(4, 3) == pyroute_bytes(gone, 17, 5, 4)


@pytest.mark.parametrize("family", [AF_INET, AF_INET6])
def test_dump_requests_are_the_reference_requests(family):
    assert wire.encode_getroute(1, family) == pyroute_bytes(reference._route_dump_msg(family), 26, 0x301, 1)
    assert wire.encode_getaddr(1, family, 3) == pyroute_bytes(reference._addr_dump_msg(family, 3), 22, 0x301, 1)
    assert wire.encode_getneigh(1, family, 3) == pyroute_bytes(reference._ndmsg(family, 3), 30, 0x301, 1)
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    assert wire.encode_getlink(1) == pyroute_bytes(ifinfmsg(), 18, 0x301, 1)


octet = st.integers(0, 255)
ipv4s = st.tuples(octet, octet, octet, octet).map(lambda t: "%d.%d.%d.%d" % t)
ipv6s = st.binary(min_size=16, max_size=16).map(lambda b: wire.ip_text(b))
macs = st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))


@st.composite
def routes(draw):
    v6 = draw(st.booleans())
    plen = draw(st.integers(0, 128 if v6 else 32))
    import ipaddress

    addr = draw(ipv6s if v6 else ipv4s)
    dst = str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))
    metric = draw(st.sampled_from([0, 1, 100, 1024, 2 ** 32 - 1]))
    if draw(st.integers(0, 3)) == 0:        # a blackhole: no next hop at all
        return Route(dst, None, None, False, metric, RTPROT_RECONCILER, type="blackhole")
    gateway = draw(st.none() | (ipv6s if v6 else ipv4s))
    return Route(dst, gateway, draw(st.sampled_from([None, "eth0", "flannel.1"])), draw(st.booleans()),
                 metric, RTPROT_RECONCILER)


@SETTINGS
@given(route=routes(), delete=st.booleans(), seq=st.integers(0, 2 ** 32 - 1))
def test_random_routes_encode_as_the_reference(route, delete, seq):
    want = pyroute_bytes(reference_backend()._route_msg(route, delete), 25 if delete else 24,
                         5 if delete else 0x505, seq)
    oif = INDEX[route.dev] if route.dev else None
    assert (wire.encode_delroute if delete else wire.encode_newroute)(seq, route, oif) == want


@SETTINGS
@given(ip=ipv4s | ipv6s, mac=macs, dst=ipv4s | ipv6s, delete=st.booleans())
def test_random_entries_encode_as_the_reference(ip, mac, dst, delete):
    ref = reference_backend()
    n, f = Neigh("flannel.1", ip, mac), Fdb("flannel.1", mac, dst)
    t, fl = (29, 5) if delete else (28, 0x505)
    assert (wire.encode_delneigh(1, ip, 3) if delete else wire.encode_newneigh(1, ip, mac, 3)) == \
        pyroute_bytes(ref._neigh_msg(n, delete), t, fl, 1)
    assert (wire.encode_delfdb if delete else wire.encode_newfdb)(1, mac, dst, 3) == \
        pyroute_bytes(ref._fdb_msg(f, delete), t, fl, 1)


@pytest.mark.parametrize("bad", [
    Route("100.64.4.1/24", None, "flannel.1"), Route("100.64.4.0/33", None, None), Route("100.64.4/24", None, None),
    Route("100.064.4.0/24", None, None), Route("100.64.4.0/024", None, None), Route("100.64.4.0/24", "fd00::1", None),
    Route("fd00::1/64", None, None), Route("100.64.4.0/24", "100.64.4.256", None),
    Neigh("flannel.1", "100.64.4.0", "zz:58"), Neigh("flannel.1", "100.64.4.0", "0a:58:64:40:04:zz"),
    Neigh("flannel.1", "not-an-ip", "0a:58:64:40:04:00"), Fdb("flannel.1", "0a:58:64:40:04:00", "1.2.3"),
    Address("cni0", "100.64.1.1/33"), Address("cni0", "100.64.1.1"),
], ids=repr)
def test_malformed_fields_fail_with_the_reference_words(bad):
    """Either both encoders refuse with the same ValueError text, or both accept with the same bytes."""
    ref = reference_backend()
    builders = {
        "route": (lambda: pyroute_bytes(ref._route_msg(bad, False), 24, 0x505, 1),
                  lambda: wire.encode_newroute(1, bad, INDEX.get(bad.dev))),
        "neigh": (lambda: pyroute_bytes(ref._neigh_msg(bad, False), 28, 0x505, 1),
                  lambda: wire.encode_newneigh(1, bad.ip, bad.mac, 3)),
        "fdb": (lambda: pyroute_bytes(ref._fdb_msg(bad, False), 28, 0x505, 1),
                lambda: wire.encode_newfdb(1, bad.mac, bad.dst, 3)),
        "address": (lambda: pyroute_bytes(ref._address_msg(bad), 20, 0x505, 1),
                    lambda: wire.encode_newaddr(1, bad.cidr, 4)),
    }
    theirs, ours = builders[bad.KIND]
    try:
        want = theirs()
    except ValueError as exc:
        with pytest.raises(ValueError) as got:
            ours()
        assert str(got.value) == str(exc)
    else:
        assert ours() == want


# ================================================================== decoders

def route_msg(family=AF_INET, dst=None, dst_len=24, gateway=None, oif=None, priority=None, table=254,
              table_attr=None, proto=RTPROT_RECONCILER, scope=0, rtype=1, flags=0, multipath=None,
              extra=b"", nhid=None) -> bytes:
    attrs = b""
    if table_attr is not None:
        attrs += rta(15, struct.pack("=I", table_attr))
    if dst is not None:
        attrs += rta(1, dst)
    if priority is not None:
        attrs += rta(6, struct.pack("=I", priority))
    if gateway is not None:
        attrs += rta(5, gateway)
    if oif is not None:
        attrs += rta(4, struct.pack("=I", oif))
    if multipath is not None:
        attrs += rta(9, multipath)
    if nhid is not None:        # RTA_NH_ID: an int, or raw (malformed) bytes
        attrs += rta(30, struct.pack("=I", nhid) if isinstance(nhid, int) else nhid)
    body = struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, proto, scope, rtype, flags) + attrs + extra
    return nlmsg(24, body)


def neigh_msg(family=AF_INET, ifindex=3, state=0x80, flags=0, dst=None, lladdr=None, extra=b"") -> bytes:
    attrs = b""
    if dst is not None:
        attrs += rta(1, dst)
    if lladdr is not None:
        attrs += rta(2, lladdr)
    return nlmsg(28, struct.pack("=BBHiHBB", family, 0, 0, ifindex, state, flags, 1) + attrs + extra)


def reference_routes(buf: bytes, ours, nets) -> list[Route]:
    ref = reference_backend()
    out = []
    for msg in rtnl_marshal().parse(buf):
        if msg["header"]["type"] == 24:
            r = ref._parse_route(msg, ours, nets)
            if r is not None:
                out.append(r)
    return out


def reference_entries(buf: bytes, kind: str, idx: int, name: str) -> list:
    parse = PyrouteBackend._parse_neigh if kind == "neigh" else PyrouteBackend._parse_fdb
    return [v for m in MarshalRtnl().parse(buf) if m["header"]["type"] == 28
            for v in [parse(m, idx, name)] if v is not None]


NETS = tuple(__import__("ipaddress").ip_network(n) for n in ("100.64.0.0/10", "fd00::/8"))
OURS = {3: "flannel.1", 4: "cni0"}


def test_a_route_dump_decodes_as_the_reference_parses_it(decoders):
    gw = ip4("100.64.2.0")
    buf = b"".join([
        route_msg(dst=ip4("100.64.2.0"), gateway=gw, oif=3, flags=4, table_attr=254),            # ours
        route_msg(dst=ip4("100.64.1.0"), oif=4, proto=2, scope=253, table_attr=254),             # connected
        route_msg(dst=ip4("100.64.5.0"), gateway=ip4("100.64.5.0"), oif=3, priority=50, flags=4),
        route_msg(dst=ip4("100.64.200.0"), gateway=ip4("198.18.0.254"), oif=2, proto=4),          # in nets
        route_msg(dst=ip4("10.9.0.0"), dst_len=16, gateway=ip4("198.18.0.254"), oif=2, proto=3),  # foreign
        route_msg(dst=ip4("100.64.202.0"), gateway=ip4("198.18.0.254"), oif=2, proto=73),         # our proto
        route_msg(dst=None, dst_len=0, gateway=ip4("198.18.0.254"), oif=2, proto=73),            # default
        route_msg(dst=ip4("100.64.7.0"), oif=3, table=100, table_attr=100),                        # table 100
        route_msg(dst=ip4("100.64.8.0"), oif=3, rtype=2),                                          # local
        route_msg(dst=ip4("100.64.9.0"), oif=3, flags=0x200),                                      # cloned
        route_msg(dst=ip4("100.64.10.0"), multipath=struct.pack("=HBBi", 8, 0, 0, 3)),            # multipath
        route_msg(AF_INET6, dst=bytes.fromhex("fd000064000200000000000000000000"), dst_len=64,
                  gateway=bytes.fromhex("fd000064000200000000000000000000"), oif=3, priority=1024, flags=4),
        route_msg(AF_INET6, dst=bytes.fromhex("fe800000000000000000000000000000"), dst_len=64, oif=3,
                  priority=256, proto=2),                                                          # link-local
        route_msg(dst=ip4("100.64.11.0"), gateway=ip4("100.64.11.0"), oif=9, flags=4),             # gone device
        DONE])
    got = decoders["route"](buf, NAMES, OURS, NETS)
    assert got == reference_routes(buf, OURS, NETS)
    assert [r.dst for r in got] == ["100.64.2.0/24", "100.64.1.0/24", "100.64.5.0/24", "100.64.200.0/24",
                                    "100.64.202.0/24", "0.0.0.0/0", "fd00:64:2::/64", "100.64.11.0/24"]
    assert got[0] == Route("100.64.2.0/24", "100.64.2.0", "flannel.1", True, 0, 73)
    assert got[-1].dev is None


def test_blackhole_routes_decode_as_the_reference_parses_them(decoders):
    buf = b"".join([
        route_msg(dst=ip4("100.64.1.0"), priority=2 ** 32 - 1, rtype=6),                     # ours, IPv4
        route_msg(AF_INET6, dst=bytes.fromhex("fd000064000100000000000000000000"), dst_len=64, oif=1,
                  priority=2 ** 32 - 1, rtype=6),                                          # ours, IPv6 (dev lo)
        route_msg(dst=ip4("100.64.2.0"), proto=3, rtype=6),                                # foreign, in nets
        route_msg(dst=ip4("10.9.0.0"), dst_len=16, proto=3, rtype=6),                      # foreign, elsewhere
        route_msg(dst=ip4("100.64.3.0"), proto=73, rtype=7),                               # unreachable: not read
        DONE])
    got = decoders["route"](buf, NAMES, OURS, NETS)
    assert got == reference_routes(buf, OURS, NETS)
    assert got == [Route("100.64.1.0/24", None, None, False, 2 ** 32 - 1, 73, type="blackhole"),
                   Route("fd00:64:1::/64", None, NAMES[1], False, 2 ** 32 - 1, 73, type="blackhole"),
                   Route("100.64.2.0/24", None, None, False, 0, 3, type="blackhole")]


def test_neighbour_and_fdb_dumps_decode_as_the_reference_parses_them(decoders):
    mac = bytes.fromhex("0a5864400200")
    neighs = b"".join([
        neigh_msg(dst=ip4("100.64.2.0"), lladdr=mac),
        neigh_msg(dst=ip4("100.64.3.0"), lladdr=mac, state=0x02),                 # reachable: not ours
        neigh_msg(dst=ip4("100.64.4.0"), lladdr=mac, flags=0x08),                 # proxy
        neigh_msg(dst=ip4("100.64.5.0"), lladdr=mac, ifindex=4),                  # another device
        neigh_msg(dst=ip4("100.64.6.0")),                                          # no lladdr
        neigh_msg(AF_INET6, dst=bytes.fromhex("fd000064000200000000000000000000"), lladdr=mac),
        DONE])
    got = decoders["neigh"](neighs, 3, "flannel.1")
    assert got == reference_entries(neighs, "neigh", 3, "flannel.1")
    assert got == [Neigh("flannel.1", "100.64.2.0", "0a:58:64:40:02:00"),
                   Neigh("flannel.1", "fd00:64:2::", "0a:58:64:40:02:00")]
    fdb = b"".join([
        neigh_msg(AF_BRIDGE, flags=2, dst=ip4("198.18.0.2"), lladdr=mac),
        neigh_msg(AF_BRIDGE, flags=2, dst=ip4("198.18.0.9"), lladdr=bytes(6)),    # a flood entry: reported
        neigh_msg(AF_BRIDGE, flags=0, dst=ip4("198.18.0.3"), lladdr=mac),         # not NTF_SELF
        neigh_msg(AF_BRIDGE, flags=2, state=0x40, dst=ip4("198.18.0.3"), lladdr=mac),   # NUD_NOARP
        neigh_msg(AF_BRIDGE, flags=2, lladdr=mac),                                # no dst
        neigh_msg(AF_BRIDGE, flags=2, dst=bytes.fromhex("fd000000000000000000000000000002"), lladdr=mac),
        DONE])
    got = decoders["fdb"](fdb, 3, "flannel.1")
    assert got == reference_entries(fdb, "fdb", 3, "flannel.1")
    assert got == [Fdb("flannel.1", "0a:58:64:40:02:00", "198.18.0.2"), Fdb("flannel.1", "00:00:00:00:00:00", "198.18.0.9"),
                   Fdb("flannel.1", "0a:58:64:40:02:00", "fd00::2")]


def test_acks_and_dump_ends(decoders):
    capped = nlmsg(2, struct.pack("=i", -101) + struct.pack("=IHHII", 52, 24, 0x505, 8, 0)
                   + rta(1, b"Nexthop has invalid gateway\0"), flags=0x100 | 0x200, seq=8)
    ok = nlmsg(2, struct.pack("=i", 0) + struct.pack("=IHHII", 48, 28, 0x505, 9, 0), flags=0x100, seq=9)
    uncapped = nlmsg(2, struct.pack("=i", -2) + struct.pack("=IHHII", 20, 29, 5, 10, 0) + b"\xaa" * 4
                     + rta(1, b"no such entry\0"), flags=0x200, seq=10)
    assert decoders["acks"](capped + ok + uncapped + DONE) == [
        (8, 101, "Nexthop has invalid gateway"), (9, 0, None), (10, 2, "no such entry")]
    assert decoders["scan"](route_msg(dst=ip4("1.2.3.0"))) == (False, False, 0, None)
    assert decoders["scan"](route_msg(dst=ip4("1.2.3.0")) + DONE) == (True, False, 0, None)
    assert decoders["scan"](nlmsg(3, struct.pack("=i", 0), flags=0x12)) == (True, True, 0, None)
    assert decoders["scan"](nlmsg(3, struct.pack("=i", -4))) == (True, False, 4, None)
    assert decoders["scan"](capped) == (True, False, 101, "Nexthop has invalid gateway")


def test_broken_framing_is_a_decode_error(decoders):
    good = route_msg(dst=ip4("100.64.2.0"), oif=3) + DONE
    for buf in (good[:10], good[:-4] + b"\x01\x02", struct.pack("=IHHII", 8, 24, 0, 0, 0) + good,
                struct.pack("=IHHII", 4000, 24, 0, 0, 0) + good):
        for kind, ctx in (("route", (NAMES, OURS, NETS)), ("neigh", (3, "x")), ("fdb", (3, "x")), ("acks", ()),
                          ("scan", ())):
            with pytest.raises(wire.DecodeError):
                decoders[kind](buf, *ctx)
    # A broken *message* is skipped, the rest decoded.
    bad_attr = route_msg(dst=ip4("100.64.3.0"), oif=3, extra=struct.pack("=HH", 200, 1))
    assert [r.dst for r in decoders["route"](bad_attr + good, NAMES, OURS, NETS)] == ["100.64.2.0/24"]
    assert decoders["route"](b"", NAMES, OURS, NETS) == []


def test_links_and_addresses_decode_as_the_reference_parses_them():
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    def link(index, name, kind=None, data=None, flags=1, mac="0a:58:64:40:01:00"):
        m = ifinfmsg()
        m["index"], m["flags"] = index, flags
        m["attrs"] = [["IFLA_IFNAME", name], ["IFLA_MTU", 1450], ["IFLA_ADDRESS", mac]]
        if kind:
            info = [["IFLA_INFO_KIND", kind]] + ([["IFLA_INFO_DATA", {"attrs": data}]] if data else [])
            m["attrs"].append(["IFLA_LINKINFO", {"attrs": info}])
        return pyroute_bytes(m, 16, 2, 1)

    vx = [["IFLA_VXLAN_ID", 1], ["IFLA_VXLAN_LINK", 2], ["IFLA_VXLAN_LOCAL", "198.18.0.1"],
          ["IFLA_VXLAN_PORT", 8472], ["IFLA_VXLAN_LEARNING", 0], ["IFLA_VXLAN_GBP", True]]
    vx6 = [["IFLA_VXLAN_ID", 7], ["IFLA_VXLAN_LOCAL6", "fd00::1"], ["IFLA_VXLAN_LEARNING", 1]]
    buf = (link(1, "lo", mac="00:00:00:00:00:00") + link(2, "eth0", "veth") + link(3, "flannel.1", "vxlan", vx)
           + link(4, "cni0", "bridge", flags=0) + link(5, "flannel.7", "vxlan", vx6) + DONE)
    ref = reference_backend()
    msgs = wire.decode_links(buf)
    names = {m.index: m.name for m in msgs}
    assert names == {**NAMES, 5: "flannel.7"}
    assert [wire.link_value(m, names) for m in msgs] == [ref._parse_link(m) for m in MarshalRtnl().parse(buf)
                                                          if m["header"]["type"] == 16]
    assert wire.link_value(msgs[2], names) == Link("flannel.1", "vxlan", 1450, "0a:58:64:40:01:00", True, 1,
                                                   "198.18.0.1", 8472, False, True, "eth0")

    def addr(family, local, plen, index=3, flags=0x80, address=None):
        m = ifaddrmsg()
        m["family"], m["prefixlen"], m["index"], m["flags"] = family, plen, index, flags
        m["attrs"] = ([["IFA_LOCAL", local]] if local else []) + ([["IFA_ADDRESS", address or local]])
        return pyroute_bytes(m, 20, 2, 1)

    buf = (addr(AF_INET, "100.64.1.0", 32) + addr(AF_INET6, None, 64, address="fe80::1")
           + addr(AF_INET6, None, 64, address="fd00:64:1::1") + addr(AF_INET, "10.0.0.1", 8, address="10.0.0.2"))
    got = [wire.cidr_of(m) for m in wire.decode_addrs(buf)]
    want = [reference._cidr_of(m) for m in MarshalRtnl().parse(buf)]
    assert got == want == ["100.64.1.0/32", None, "fd00:64:1::1/64", "10.0.0.1/8"]


# ------------------------------------------- random messages, three parsers

u32s = st.sampled_from([0, 1, 2, 3, 4, 9, 50, 100, 254, 255, 1024, 2 ** 32 - 1])


@st.composite
def random_route(draw) -> bytes:
    family = draw(st.sampled_from([AF_INET, AF_INET6]))
    alen = 4 if family == AF_INET else 16
    dst_len = draw(st.integers(0, alen * 8))
    prefixes = [b"\x64\x40", b"\x64\x7f", b"\x0a\x09", b"\xfd\x00", b"\xfe\x80"]
    dst = draw(st.none() | st.builds(lambda p, r: (p + r)[:alen], st.sampled_from(prefixes),
                                     st.binary(min_size=alen, max_size=alen)))
    if family == AF_INET6 and draw(st.booleans()):
        dst, dst_len = bytes.fromhex("fe80") + bytes(14), 64
    return route_msg(
        family, dst=dst, dst_len=dst_len,
        gateway=draw(st.none() | st.binary(min_size=alen, max_size=alen)),
        oif=draw(st.none() | st.sampled_from([0, 1, 2, 3, 4, 9])),
        priority=draw(st.none() | u32s),
        table=draw(st.sampled_from([254, 254, 254, 255, 100, 0])),
        table_attr=draw(st.sampled_from([None, None, 254, 254, 0, 100])),
        proto=draw(st.sampled_from([2, 3, 4, 73, 186])), scope=draw(st.sampled_from([0, 253])),
        rtype=draw(st.sampled_from([1, 1, 1, 1, 2, 3, 6, 7])), flags=draw(st.sampled_from([0, 4, 4, 0, 0x200, 4 | 0x200])),
        multipath=draw(st.sampled_from([None] * 5 + [struct.pack("=HBBi", 8, 0, 0, 3)])),
        nhid=draw(st.sampled_from([None, None, None, 1, 0x464C0002, 0xFFFFFFFF])))


@st.composite
def random_entry(draw) -> bytes:
    family = draw(st.sampled_from([AF_INET, AF_INET6, AF_BRIDGE, AF_BRIDGE]))
    dst_size = {AF_INET: 4, AF_INET6: 16}.get(family) or draw(st.sampled_from([4, 16]))
    return neigh_msg(family, ifindex=draw(st.sampled_from([3, 4])),
                     state=draw(st.sampled_from([0x80, 0x80, 0x80, 0x02, 0x40, 0xC0, 0x04])),
                     flags=draw(st.sampled_from([0, 2, 2, 2, 8, 2 | 8, 2 | 4])),
                     dst=draw(st.none() | st.binary(min_size=dst_size, max_size=dst_size)),
                     lladdr=draw(st.none() | st.just(bytes(6)) | st.binary(min_size=6, max_size=6)))


nets_st = st.sets(st.sampled_from(["100.64.0.0/10", "100.64.0.0/16", "10.0.0.0/8", "0.0.0.0/0", "fd00::/8",
                                   "fd00::/64"])).map(lambda s: tuple(__import__("ipaddress").ip_network(n)
                                                                      for n in sorted(s)))
ours_st = st.sets(st.sampled_from([1, 2, 3, 4])).map(lambda s: {i: NAMES[i] for i in s})


@SETTINGS
@given(msgs=st.lists(random_route(), max_size=12), ours=ours_st, nets=nets_st)
def test_random_route_dumps_three_parsers_agree(msgs, ours, nets):
    buf = b"".join(msgs) + DONE
    pure = wire.decode_routes(buf, NAMES, ours, nets)
    assert pure == reference_routes(buf, ours, nets)
    if _fastpath.AVAILABLE:
        assert every_field(_fastpath.DECODERS["route"](buf, NAMES, ours, nets)) == every_field(pure)


@SETTINGS
@given(msgs=st.lists(random_entry(), max_size=12), idx=st.sampled_from([3, 4]))
def test_random_neigh_and_fdb_dumps_three_parsers_agree(msgs, idx):
    buf = b"".join(msgs) + DONE
    for kind in ("neigh", "fdb"):
        pure = wire.DECODERS[kind](buf, idx, "flannel.1")
        assert pure == reference_entries(buf, kind, idx, "flannel.1")
        if _fastpath.AVAILABLE:
            assert every_field(_fastpath.DECODERS[kind](buf, idx, "flannel.1")) == every_field(pure)


def test_the_compiled_decoders_build_the_model_classes_directly():
    # A change to a model class (a field added, renamed or moved, a __post_init__) turns this
    # off silently and the decoders call the class instead: correct but slower, so say it.
    require_fastpath()
    from _fastpath import _codec
    assert _codec.BUILT_DIRECTLY == {"neigh": True, "fdb": True, "route": True}
    msg = route_msg(dst=bytes([100, 64, 7, 0]), gateway=bytes([100, 64, 7, 0]), oif=3) + DONE
    route = _fastpath.DECODERS["route"](msg, NAMES, {3: "flannel.1"}, NETS)[0]
    assert type(route) is Route and route.protocol == 73 and hash(route) == hash(dataclasses.replace(route))
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.dev = "eth0"


def _both(kind: str, buf: bytes, *ctx):
    """Pure and compiled on the same bytes: the same value or the same DecodeError, nothing else."""
    outcomes = []
    for decoders in (wire.DECODERS, _fastpath.DECODERS):
        try:
            outcomes.append(("ok", every_field(decoders[kind](buf, *ctx))))
        except wire.DecodeError as exc:
            outcomes.append(("DecodeError", str(exc)))
    assert outcomes[0] == outcomes[1]


@SETTINGS
@given(msgs=st.lists(random_route() | random_entry(), max_size=8), cut=st.integers(0, 4000),
       junk=st.binary(max_size=64), flips=st.lists(st.tuples(st.integers(0, 4000), octet), max_size=6))
def test_truncated_and_garbled_dumps_decode_the_same_or_fail_the_same(msgs, cut, junk, flips):
    require_fastpath()
    buf = bytearray(b"".join(msgs) + DONE)
    for pos, value in flips:
        if buf:
            buf[pos % len(buf)] = value
    buf = bytes(buf[:cut]) + junk
    _both("route", buf, NAMES, {3: "flannel.1"}, NETS)
    _both("neigh", buf, 3, "flannel.1")
    _both("fdb", buf, 3, "flannel.1")
    _both("acks", buf)
    _both("scan", buf)


@SETTINGS
@given(buf=st.binary(max_size=512))
def test_pure_garbage_decodes_the_same_or_fails_the_same(buf):
    require_fastpath()
    for kind, ctx in (("route", (NAMES, OURS, NETS)), ("neigh", (3, "x")), ("fdb", (3, "x")), ("acks", ()),
                      ("scan", ())):
        _both(kind, buf, *ctx)


@SETTINGS
@given(seq=st.integers(1, 2 ** 32 - 1), codes=st.lists(st.sampled_from([0, -2, -3, -17, -19, -101]), max_size=5),
       capped=st.booleans(), text=st.text(max_size=40).filter(lambda t: "\0" not in t))
def test_random_acks_agree(seq, codes, capped, text):
    buf = b""
    for code in codes:
        echoed = struct.pack("=IHHII", 16 if capped else 24, 28, 0x505, seq, 0) + (b"" if capped else b"\x01" * 8)
        tlv = rta(1, text.encode() + b"\0") if text else b""
        buf += nlmsg(2, struct.pack("=i", code) + echoed + tlv,
                     flags=(0x100 if capped else 0) | (0x200 if tlv else 0), seq=seq)
    want = [(seq, -c, text or None) for c in codes]
    assert wire.decode_acks(buf) == want
    if _fastpath.AVAILABLE:
        assert _fastpath.DECODERS["acks"](buf) == want


# ============================================================ batch encoding
# wire.encode_batch / match_acks (the specification) and _fastpath's compiled twins.

def _single(seq: int, op: tuple) -> bytes:
    """The message of one op through the single-message encoders held to pyroute2 above."""
    kind, delete, *f = op
    if kind == "route":
        route = Route(f[0], f[1], "x", f[2], f[3])
        return (wire.encode_delroute if delete else wire.encode_newroute)(seq, route, f[4])
    if kind == "neigh":
        return wire.encode_delneigh(seq, f[0], f[2]) if delete else wire.encode_newneigh(seq, f[0], f[1], f[2])
    if kind == "fdb":
        return (wire.encode_delfdb if delete else wire.encode_newfdb)(seq, *f)
    return (wire.encode_deladdr if delete else wire.encode_newaddr)(seq, *f)


def _outcome(encode, ops, seq0, chunk_bytes):
    """An encoder's answer in comparable form: the chunks and, per failed op, (position, class, text)."""
    try:
        chunks, failed = encode(ops, seq0, chunk_bytes)
    except Exception as exc:        # noqa: BLE001 - compared, not swallowed
        return ("raised", type(exc), str(exc))
    return chunks, [(i, type(e), str(e)) for i, e in failed]


def _encoders():
    yield wire.encode_batch
    if _fastpath.AVAILABLE:
        yield _fastpath.encode_batch


@st.composite
def valid_ops(draw) -> tuple:
    kind = draw(st.sampled_from(["route", "neigh", "fdb", "address"]))
    delete = draw(st.booleans())
    v6 = draw(st.booleans())
    index = draw(st.sampled_from([1, 3, 4, 2 ** 31 - 1]))
    if kind == "route":
        route = draw(routes())
        return ("route", delete, route.dst, route.gateway, route.onlink, route.metric,
                draw(st.none() | st.sampled_from([0, 3, 2 ** 32 - 1])))
    ip = draw(ipv6s if v6 else ipv4s)
    if kind == "neigh":
        return ("neigh", delete, ip, draw(macs | macs.map(str.upper)), index)
    if kind == "fdb":
        return ("fdb", delete, draw(macs), ip, index)
    return ("address", delete, f"{ip}/{draw(st.integers(0, 128 if v6 else 32))}", index)


#: Batches of valid ops: the sizes cut them into one message a chunk, a few, or one chunk.
_BATCHES = {"ops": st.lists(valid_ops(), max_size=40), "seq0": st.integers(1, 2 ** 32 - 41),
            "chunk_bytes": st.sampled_from([0, 1, 48, 100, 256, 1024, 32 * 1024])}


@SETTINGS
@given(**_BATCHES)
def test_batches_are_the_single_messages_in_chunks(ops, seq0, chunk_bytes):
    """A batch is exactly the messages of the single encoders, seq0, seq0 + 1, ..., cut at chunk_bytes."""
    for encode in _encoders():
        chunks, failed = encode(ops, seq0, chunk_bytes)
        assert failed == []
        assert [s for _, seqs in chunks for s in seqs] == list(range(seq0, seq0 + len(ops)))
        assert b"".join(data for data, _ in chunks) == b"".join(_single(seq0 + i, op) for i, op in enumerate(ops))
        for data, seqs in chunks:
            assert data == b"".join(_single(s, ops[s - seq0]) for s in seqs)
            assert len(data) <= chunk_bytes or len(seqs) == 1
        for (data, _), (following, _) in zip(chunks, chunks[1:]):   # cut only where the next message won't fit
            assert len(data) + struct.unpack_from("=I", following)[0] > chunk_bytes


def _flags(data: bytes) -> list[int]:
    out, off = [], 0
    while off < len(data):
        length, _, flags = struct.unpack_from("=IHH", data, off)
        out.append(flags)
        off += length
    return out


@SETTINGS
@given(**_BATCHES)
def test_errors_only_batches_ask_one_ack_a_chunk(ops, seq0, chunk_bytes):
    """``ack_each=False``: the same chunks, each request without NLM_F_ACK but the chunk's last."""
    for encode in _encoders():
        acked, _ = encode(ops, seq0, chunk_bytes)
        chunks, failed = encode(ops, seq0, chunk_bytes, False)
        assert failed == [] and [seqs for _, seqs in chunks] == [seqs for _, seqs in acked]
        for (data, _), (want, _) in zip(chunks, acked):
            flags, want_flags = _flags(data), _flags(want)
            assert all(f & wire.NLM_F_ACK for f in want_flags)
            assert flags == [f & ~wire.NLM_F_ACK for f in want_flags[:-1]] + want_flags[-1:]
            # Nothing but that bit differs.
            stripped = bytearray(data)
            off = 0
            for _ in flags:
                stripped[off + 6] |= wire.NLM_F_ACK
                off += struct.unpack_from("=I", data, off)[0]
            assert bytes(stripped) == want


@SETTINGS
@given(ops=st.lists(valid_ops(), max_size=40), seq0=st.integers(1, 2 ** 32 - 41),
       chunk_bytes=st.integers(0, 4096), ack_each=st.booleans())
def test_compiled_batches_are_the_pure_bytes(ops, seq0, chunk_bytes, ack_each):
    require_fastpath()
    assert _fastpath.encode_batch(ops, seq0, chunk_bytes, ack_each) == wire.encode_batch(ops, seq0, chunk_bytes,
                                                                                          ack_each)


# Spellings around the edges of what inet_pton / ipaddress / bytes.fromhex accept.
ODD_TEXT = ["", "/", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.04", "1.2.3.256", " 1.2.3.4", "1.2.3.4 ", "1..3.4",
            "１.2.3.4", "1.2.3.4/", "1.2.3.0/024", "1.2.3.0/00", "1.2.3.0/33", "1.2.3.1/24", "1.2.3.4/32",
            "1.2.3.4/0", "0.0.0.0/0", "1.2.3.4//24", "fd00::1", "fd00::/8", "fd00::1/64", "fd00::1/129",
            "::ffff:1.2.3.4", "fe80::1%eth0", "FD00::1", "fd00:::1", "0a:58:64:40:02:00", "0A:58:64:40:02:0F",
            "0a:58:64:40:02", "0a:58:64:40:02:00:00", "0a-58-64-40-02-00", "0a:58:64:40: 2:0 ", "zz:58:64:40:02:00",
            "0a:58:64:40:02:0", "0a5864400200"]
odd_text = st.sampled_from(ODD_TEXT) | st.text(alphabet="0123456789abcdefABCDEF.:/% ", max_size=20)
odd_int = st.sampled_from([0, 1, 3, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, -1, -2 ** 31, -2 ** 31 - 1, True,
                           None, 3.0, "3"])
odd_field = odd_text | odd_int | st.booleans()


@st.composite
def odd_ops(draw):
    """Ops with any field replaced by something odd: a wrong spelling, type, range, length or kind."""
    op = list(draw(valid_ops()))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(op) - 1))
        op[pos] = draw(odd_field if pos >= 1 else st.sampled_from(["route", "neigh", "fdb", "address", "link", 7]))
    shape = draw(st.sampled_from(["tuple"] * 6 + ["short", "long", "list"]))
    if shape == "short":
        return tuple(op[:-1])
    if shape == "long":
        return tuple(op) + (None,)
    return op if shape == "list" else tuple(op)


@SETTINGS
@given(ops=st.lists(odd_ops() | valid_ops(), max_size=12), seq0=st.integers(1, 2 ** 32 - 13),
       chunk_bytes=st.sampled_from([0, 64, 32 * 1024]))
def test_malformed_ops_fail_the_same_in_both_encoders(ops, seq0, chunk_bytes):
    """Same chunks for the good ops, and for each bad one the same position, error class and words."""
    require_fastpath()
    assert _outcome(_fastpath.encode_batch, ops, seq0, chunk_bytes) == _outcome(wire.encode_batch, ops, seq0,
                                                                                 chunk_bytes)
    errors_only = [lambda *a: f(*a, False) for f in (_fastpath.encode_batch, wire.encode_batch)]
    assert _outcome(errors_only[0], ops, seq0, chunk_bytes) == _outcome(errors_only[1], ops, seq0, chunk_bytes)


BASE_OPS = [("route", False, "100.64.2.0/24", "100.64.2.0", True, 100, 3), ("neigh", False, "100.64.2.0",
                                                                              "0a:58:64:40:02:00", 3),
            ("fdb", False, "0a:58:64:40:02:00", "198.18.0.2", 3), ("address", False, "100.64.1.1/24", 4)]


def test_every_odd_value_in_every_field_fails_or_passes_the_same():
    """Exhaustive over the edge spellings and numbers: each one in each field of each kind, create and delete."""
    require_fastpath()
    ops = []
    for base in BASE_OPS:
        for delete in (False, True):
            for pos in range(2, len(base)):
                for value in ODD_TEXT + [0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, -1, -2 ** 31,
                                         -2 ** 31 - 1, True, False, None, 3.0, "3"]:
                    ops.append(base[:1] + (delete,) + base[2:pos] + (value,) + base[pos + 1:])
    assert len(ops) > 900
    for op in ops:
        assert _outcome(_fastpath.encode_batch, [op], 7, 512) == _outcome(wire.encode_batch, [op], 7, 512), op
    pure = _outcome(wire.encode_batch, ops, 1, 512)
    assert 0 < len(pure[1]) < len(ops)        # some fail, some pass: nothing aborts the batch
    assert _outcome(_fastpath.encode_batch, ops, 1, 512) == pure


@pytest.mark.parametrize("encode", ["pure", "compiled"])
def test_a_bad_op_is_reported_and_the_others_go_on(encode):
    if encode == "compiled":
        require_fastpath()
    batch = wire.encode_batch if encode == "pure" else _fastpath.encode_batch
    ops = [("neigh", False, "100.64.2.0", "0a:58:64:40:02:00", 3),
           ("route", False, "100.64.4.1/24", None, False, 0, 3),
           ("route", False, "100.64.4.0/24", "fd00::1", False, 0, 3),
           ("fdb", False, "0a:58:64:40:02:zz", "198.18.0.2", 3),
           ("neigh", True, "100.64.2.0", None, 2 ** 31),
           ("link", False, "flannel.1"),
           ("address", True, "fd00:64:1::1/64", 4)]
    chunks, failed = batch(ops, 10, 32 * 1024)
    assert [(i, type(e).__name__, str(e)) for i, e in failed] == [
        (1, "ValueError", "100.64.4.1/24 has host bits set"),
        (2, "ValueError", "gateway fd00::1 is not of the family of 100.64.4.0/24"),
        (3, "ValueError", "non-hexadecimal number found in fromhex() arg at position 10"),
        (4, "error", "'i' format requires -2147483648 <= number <= 2147483647"),
        (5, "ValueError", "unknown kind 'link'")]
    assert chunks == [(_single(10, ops[0]) + _single(16, ops[6]), [10, 16])]
    with pytest.raises(ValueError, match="do not fit in nlmsg_seq"):
        batch(ops, 2 ** 32 - 3, 1024)
    with pytest.raises(ValueError, match="do not fit in nlmsg_seq"):
        batch(ops, 0, 1024)


def _ack(seq: int, code: int, text: str = "") -> bytes:
    tlv = rta(1, text.encode() + b"\0") if text else b""
    return nlmsg(2, struct.pack("=i", code) + struct.pack("=IHHII", 16, 28, 0x505, seq, 0) + tlv,
                 flags=0x100 | (0x200 if tlv else 0), seq=seq)


@SETTINGS
@given(seq0=st.integers(1, 2 ** 32 - 100), count=st.integers(0, 50),
       answers=st.lists(st.tuples(st.integers(-5, 60), st.sampled_from([0, -2, -3, -17, -101]),
                                  st.sampled_from(["", "Nexthop has invalid gateway"])), max_size=20))
def test_acks_are_matched_to_positions(seq0, count, answers):
    buf = b"".join(_ack((seq0 + d) & 0xFFFFFFFF, code, text) for d, code, text in answers)
    want = [(d, -code, text or None) for d, code, text in answers if 0 <= d < count]
    assert wire.match_acks(buf, seq0, count) == want
    if _fastpath.AVAILABLE:
        assert _fastpath.match_acks(buf, seq0, count) == want
        for broken in (buf[:-3], buf + b"\x01"):
            outcomes = []
            for match in (wire.match_acks, _fastpath.match_acks):
                try:
                    outcomes.append(match(broken, seq0, count))
                except wire.DecodeError as exc:
                    outcomes.append(str(exc))
            assert outcomes[0] == outcomes[1]


def test_the_fast_path_can_be_switched_off():
    """FLANNEL_RECONCILER_NO_CYTHON=1: no compiled code is used, and the pure path does the work."""
    import subprocess
    import sys

    code = ("import _fastpath\n"
            "from reconciler.kernel.netlink import wire\n"
            "assert (_fastpath.AVAILABLE, _fastpath.encode_batch, _fastpath.DECODERS) == (False, None, None)\n"
            "print(len(wire.encode_batch([('neigh', False, '100.64.2.0', '0a:58:64:40:02:00', 3)], 1, 64)[0]))\n")
    env = {**os.environ, "FLANNEL_RECONCILER_NO_CYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == "1\n"


# ============================================ nexthop objects (route layout)

NH_IDS = st.sampled_from([1, 0x464C0002, 0x464C0000 + (1 << 20) + 5, 2 ** 32 - 1])


@SETTINGS
@given(nhid=NH_IDS, gw=ipv4s | ipv6s, dev=st.sampled_from(["eth0", "flannel.1"]), onlink=st.booleans(),
       delete=st.booleans(), seq=st.integers(0, 2 ** 32 - 1))
def test_nexthops_encode_as_the_reference(nhid, gw, dev, onlink, delete, seq):
    from reconciler.core.model import Nexthop
    from reconciler.kernel.netlink.pyroute_msgs import nexthop_msg

    nh = Nexthop(nhid, gw, dev, onlink)
    want = pyroute_bytes(nexthop_msg(nh, delete, INDEX.__getitem__), 105 if delete else 104,
                         5 if delete else 0x505, seq)
    got = wire.encode_delnexthop(seq, nhid) if delete else wire.encode_newnexthop(seq, nhid, gw, INDEX[dev], onlink)
    assert got == want


def test_nexthop_replace_by_hand():
    got = wire.encode_newnexthop(9, 0x464C0002, "100.64.2.0", 3, True)
    assert got == bytes.fromhex(
        "30000000" "6800" "0505" "09000000" "00000000"       # len 48, RTM_NEWNEXTHOP, replace, seq 9
        "02" "00" "49" "00" "04000000"                       # AF_INET, scope 0, proto 73, RTNH_F_ONLINK
        "0800" "0100" "02004c46"                             # NHA_ID
        "0800" "0500" "03000000"                             # NHA_OIF 3
        "0800" "0600" "64400200")                            # NHA_GATEWAY 100.64.2.0
    assert wire.encode_delnexthop(1, 5) == bytes.fromhex(
        "20000000" "6900" "0500" "01000000" "00000000" "00000000" "00000000" "0800" "0100" "05000000")


@SETTINGS
@given(route=routes(), nhid=NH_IDS, delete=st.booleans(), seq=st.integers(0, 2 ** 32 - 1))
def test_routes_through_a_nexthop_encode_as_the_reference(route, nhid, delete, seq):
    from dataclasses import replace

    route = replace(route, nhid=nhid)
    want = pyroute_bytes(reference_backend()._route_msg(route, delete), 25 if delete else 24,
                         5 if delete else 0x505, seq)
    got = (wire.encode_delroute_nh if delete else wire.encode_newroute_nh)(seq, route)
    assert got == want
    from reconciler.kernel.netlink.wire_base import _attrs

    attrs = _attrs(got, 28, len(got))
    assert got[attrs[30][0]:attrs[30][1]] == struct.pack("=I", nhid)    # RTA_NH_ID
    assert set(attrs) <= {1, 6, 30}     # RTA_DST, RTA_PRIORITY: never a gateway or device beside it


def test_the_nexthop_dump_request_is_the_reference_request():
    from reconciler.kernel.netlink.pyroute_msgs import _nexthop_dump_msg

    assert wire.encode_getnexthop(1) == pyroute_bytes(_nexthop_dump_msg(), 106, 0x301, 1)


def nexthop_msg(nhid=None, oif=None, gateway=None, family=AF_INET, flags=4, proto=73, group=None,
                blackhole=False, extra=b"") -> bytes:
    attrs = b""
    if nhid is not None:
        attrs += rta(1, struct.pack("=I", nhid))
    if group is not None:
        attrs += rta(2, group)
    if blackhole:
        attrs += rta(4, b"")
    if oif is not None:
        attrs += rta(5, struct.pack("=I", oif))
    if gateway is not None:
        attrs += rta(6, gateway)
    return nlmsg(104, struct.pack("=BBBBI", family, 0, proto, 0, flags) + attrs + extra)


def reference_nexthops(buf: bytes, names) -> list:
    return [v for m in rtnl_marshal().parse(buf) if m["header"]["type"] == 104
            for v in [PyrouteBackend._parse_nexthop(m, names)] if v is not None]


def test_a_nexthop_dump_decodes_as_the_reference_parses_it():
    from reconciler.core.model import Nexthop

    buf = b"".join([
        nexthop_msg(0x464C0002, 3, ip4("100.64.2.0")),                                  # ours
        nexthop_msg(7, 3, ip4("100.127.0.7"), flags=0, proto=3),                        # foreign id, same device
        nexthop_msg(9, 3, socket.inet_pton(AF_INET6, "fd00::9"), family=AF_INET6),      # v6
        nexthop_msg(10, 2, ip4("198.18.0.254")),                                        # another device
        nexthop_msg(11, group=struct.pack("=IHH", 7, 1, 0), proto=0),                   # a group: its id alone
        nexthop_msg(12, blackhole=True, flags=0, proto=0),                              # a blackhole: its id alone
        nexthop_msg(13, 3, b"\x01\x02\x03"),                                            # malformed gateway: id alone
        nexthop_msg(None, 3, ip4("100.64.3.0")),                                        # no id: skipped
    ]) + DONE
    got = wire.decode_nexthops(buf, NAMES)
    assert got == reference_nexthops(buf, NAMES)
    assert got == [Nexthop(0x464C0002, "100.64.2.0", "flannel.1", True, 73),
                   Nexthop(7, "100.127.0.7", "flannel.1", False, 3),
                   Nexthop(9, "fd00::9", "flannel.1", True, 73),
                   Nexthop(10, "198.18.0.254", "eth0", True, 73),
                   Nexthop(11, None, None, False, 0), Nexthop(12, None, None, False, 0),
                   Nexthop(13, None, None, False, 73)]
    # An attribute that overruns its message: skipped, as the route decoder skips such a route.
    broken = nexthop_msg(14, 3, ip4("100.64.4.0"), extra=b"\x28\x00\x01\x00") + DONE
    assert wire.decode_nexthops(broken, NAMES) == []


def test_a_route_through_a_nexthop_decodes_its_nhid(decoders):
    buf = b"".join([
        route_msg(dst=ip4("100.64.2.0"), gateway=ip4("100.64.2.0"), oif=3, flags=4, nhid=0x464C0002),  # compat mode
        route_msg(dst=ip4("100.64.3.0"), nhid=0x464C0003),                     # compat mode off: nhid alone
        route_msg(dst=ip4("100.64.4.0"), oif=3, nhid=b"\x01\x02"),             # malformed RTA_NH_ID: skipped
    ]) + DONE
    got = decoders["route"](buf, NAMES, OURS, NETS)
    assert got == reference_routes(buf, OURS, NETS)[:2]
    assert [(r.dst, r.nhid, r.gateway, r.dev) for r in got] == [
        ("100.64.2.0/24", 0x464C0002, "100.64.2.0", "flannel.1"), ("100.64.3.0/24", 0x464C0003, None, None)]


def test_the_compiled_successes_of_a_chunk_are_the_pure_ones():
    """``_fastpath.fill_ok`` builds ``OpResult(change, ok=True)`` from C: the same values, every
    field, as ``batched._fill_ok``; a result already there (an error) is kept."""
    require_fastpath()
    from _fastpath import _encode

    from reconciler.core.model import Neigh
    from reconciler.core.plan import Change, OpResult
    from reconciler.kernel.netlink.batched import _fill_ok

    assert _encode.RESULTS_BUILT_DIRECTLY
    changes = [Change("create", Neigh("flannel.1", f"100.64.{n}.0", f"0a:58:64:40:{n:02x}:00")) for n in range(6)]
    failed = OpResult(changes[2], ok=False, errno=101, message="unreachable")
    where, ks = [5, 0, 2, 3, 1, 4], [0, 2, 3]        # positions 5, 2, 3 of changes; 2 already failed
    pure, fast = [None, None, failed, None, None, None], [None, None, failed, None, None, None]
    _fill_ok(pure, changes, where, ks)
    _fastpath.fill_ok(fast, changes, where, ks)
    assert every_field(fast) == every_field(pure)
    assert fast[2] is failed and fast[0] is None and fast[5] == OpResult(changes[5], ok=True)
