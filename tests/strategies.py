"""Hypothesis strategies: random clusters and random live kernels around them.

A cluster is a network config plus raw etcd key-values (some of them bad),
this node's identity, and an on-link predicate for DirectRouting.  A live
kernel starts from the desired state and is then damaged: objects missing,
drifted (mutable and immutable attributes), stale owned entries, and
foreign objects that must survive every apply.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

from hypothesis import strategies as st

from reconciler.core.leases import RawKV
from reconciler.core.model import RTPROT_RECONCILER, Address, Fdb, KernelState, Link, Neigh, Nexthop, Route
from reconciler.core.ownership import NEXTHOP_ID_BASE
from tests.model_kernel import MAIN, RTPROT_BOOT, ModelKernel

PREFIX = "/coreos.com/network"
UNDERLAY = "eth0"
UNDERLAY_PREFIX = "198.18.0.0/24"


@dataclass(frozen=True)
class Cluster:
    config_json: str
    kvs: tuple[RawKV, ...]
    public_ip: str
    direct_routing: bool
    on_link_hosts: frozenset[str]

    def on_link(self, ip: str) -> bool:
        return ip in self.on_link_hosts


def lease_value(public_ip: str, mac: str, vni: int, backend: str = "vxlan",
                public_ipv6: str | None = None, mac6: str | None = None) -> str:
    value = {"PublicIP": public_ip, "PublicIPv6": public_ipv6, "BackendType": backend,
             "BackendData": {"VNI": vni, "VtepMAC": mac}}
    if mac6 is not None:
        value["BackendV6Data"] = {"VNI": vni, "VtepMAC": mac6}
    return json.dumps(value, separators=(",", ":"))


macs = st.binary(min_size=6, max_size=6).map(
    lambda b: ":".join(f"{x:02x}" for x in bytes([(b[0] & 0xFE) | 0x02]) + b[1:])
)


@st.composite
def clusters(draw, ipv6: bool = False) -> Cluster:
    """``ipv6=True`` makes some clusters dual stack (fd00:64::/56, peers' PublicIPv6
    fd00:18::<host>, inside the ULA range the tests may use in their namespaces)."""
    dual = ipv6 and draw(st.booleans())
    vni = draw(st.sampled_from([1, 2, 42]))
    port = draw(st.sampled_from([0, 4789]))
    direct = draw(st.booleans())
    n = draw(st.integers(1, 9))
    # Below 200: 100.64.200-203.0 and .222.0 are the stale and foreign entries live_kernels adds.
    subnet_ids = draw(st.lists(st.integers(1, 199), min_size=n, max_size=n, unique=True))
    hosts = draw(st.lists(st.integers(1, 250), min_size=n, max_size=n, unique=True))
    # A small MAC pool now and then, so VtepMAC conflicts happen.
    pool = draw(st.lists(macs, min_size=1, max_size=n + 2, unique=True))
    node_macs = [draw(st.sampled_from(pool)) for _ in range(n)]
    own = draw(st.integers(0, n - 1))
    kvs = []
    for i, (sid, host, mac) in enumerate(zip(subnet_ids, hosts, node_macs)):
        if i == own:
            # Our own lease must survive validation: give it a MAC nobody has
            # and the lowest revision, so it wins any conflict.
            mac = "02:00:00:00:00:01"
        key = f"{PREFIX}/subnets/100.64.{sid}.0-24"
        value = lease_value(f"198.18.0.{host}", mac, vni)
        if dual:
            key += f"&fd00:64:0:{sid:x}::-64"
            mac6 = "02:00:00:00:00:02" if i == own else mac[:-2] + "66"
            value = lease_value(f"198.18.0.{host}", mac, vni, public_ipv6=f"fd00:18::{host:x}", mac6=mac6)
        kvs.append(RawKV(key, value,
                         lease=draw(st.sampled_from([0, 7001, 7002])),
                         mod_revision=1 if i == own else draw(st.integers(2, 50))))
    # Bad leases: each must be skipped without disturbing the others.
    bad = draw(st.lists(st.sampled_from([
        ("100.64.250.0-24", "{not json"),
        ("100.99.7.0-24", lease_value("198.18.1.7", "02:aa:00:00:00:07", vni)),      # outside Network
        ("100.64.251.0-24", lease_value("198.18.1.8", "02:aa:00:00:00:08", vni + 1)),  # wrong VNI
        ("100.64.252.0-24", lease_value("198.18.1.9", "02:aa:00:00:00:09", vni, "udp")),  # other backend
        ("100.64.253.0-24", lease_value("127.0.0.1", "02:aa:00:00:00:0a", vni)),     # loopback PublicIP
        ("100.64.249.0-24", lease_value("198.18.1.11", "zz:zz", vni)),               # bad MAC
    ]), max_size=3, unique=True))
    for k, v in bad:
        kvs.append(RawKV(f"{PREFIX}/subnets/{k}", v, lease=7003, mod_revision=60))
    config = {"Network": "100.64.0.0/16", "SubnetLen": 24,
              "Backend": {"Type": "vxlan", "VNI": vni, "Port": port, "DirectRouting": direct}}
    if dual:
        config.update(EnableIPv6=True, IPv6Network="fd00:64::/56")
    config_json = json.dumps(config)
    kvs.append(RawKV(f"{PREFIX}/config", config_json))
    on_link = frozenset(f"198.18.0.{h}" for h in hosts if h < 128)
    if dual:  # DirectRouting is decided per family: the same hosts share the IPv6 segment too
        on_link |= frozenset(f"fd00:18::{h:x}" for h in hosts if h < 128)
    order = draw(st.permutations(kvs))
    return Cluster(config_json, tuple(order), f"198.18.0.{hosts[own]}", direct, on_link)


def _v6(text: str | None) -> bool:
    return text is not None and ":" in text


def _drift(draw, obj):
    """A damaged copy of a desired object (same key), or None for 'leave it right'.

    Damage stays in the object's family: the kernel refuses an IPv4 FDB
    destination on a VXLAN device over IPv6, and an IPv4 gateway on an IPv6 route."""
    if isinstance(obj, Link):
        choices = [replace(obj, mtu=(obj.mtu or 1450) + 50), replace(obj, up=False)]
        if obj.mac is not None:
            choices.append(replace(obj, mac="02:de:ad:be:ef:00"))
        if obj.type == "vxlan":
            choices += [replace(obj, vni=(obj.vni or 1) + 100), replace(obj, port=1234),
                        replace(obj, local="fd00:18::fe" if _v6(obj.local) else "198.18.0.254"),
                        replace(obj, learning=True)]
        return draw(st.sampled_from(choices))
    if isinstance(obj, Neigh):
        return replace(obj, mac="02:de:ad:00:00:01")
    if isinstance(obj, Fdb):
        return replace(obj, dst="fd00:18::fd" if _v6(obj.dst) else "198.18.0.253")
    if isinstance(obj, Nexthop):
        return replace(obj, gateway="100.64.0.9")
    if isinstance(obj, Route) and obj.nhid:
        return obj      # its drift is the other layout's route (live_kernels)
    if isinstance(obj, Route) and obj.gateway is None:
        return obj      # the bridge's connected route: the kernel holds it or not (its drift is "missing")
    if isinstance(obj, Route):
        gateway = "fd00:64:0:ff::9" if _v6(obj.dst) else "100.64.0.9"
        return draw(st.sampled_from([replace(obj, gateway=gateway), replace(obj, onlink=not obj.onlink),
                                     replace(obj, protocol=RTPROT_BOOT)]))
    return obj


@st.composite
def live_kernels(draw, desired: KernelState, vxlan_dev: str) -> ModelKernel:
    """A kernel that is some damaged version of ``desired``, plus foreign state."""
    k = ModelKernel()
    k.add_link(Link(UNDERLAY, "veth", mtu=1500, mac="02:00:00:00:ee:01", up=True))
    k.add_address(UNDERLAY, "198.18.0.200/24")
    k.add_address(UNDERLAY, "fd00:18::c8/64")      # the IPv6 segment, for dual-stack DirectRouting

    for link in desired.of("link").values():
        fate = draw(st.sampled_from(["right", "missing", "drift"]))
        if fate == "missing":
            continue
        obj = _drift(draw, link) if fate == "drift" else link
        k.add_link(replace(obj, mac=obj.mac or "02:00:00:00:b0:01", underlay=obj.underlay if obj.type == "vxlan" else None))
    for kind in ("address", "neigh", "fdb", "nexthop", "route"):
        for obj in desired.of(kind).values():
            dev = obj.dev
            if kind == "route" and obj.nhid:
                nh = desired.get("nexthop", obj.nhid)
                dev = nh.dev
                if obj.nhid not in k.nexthops:
                    # The kernel holds no route through a missing nexthop; the
                    # other layout's route (an onlink one) may sit at its key.
                    if dev in k.links and k.links[dev].link.up is not False and draw(st.booleans()):
                        k.add_route(Route(obj.dst, nh.gateway, dev, True, obj.metric, RTPROT_RECONCILER))
                    continue
            if dev is not None and dev not in k.links:
                continue  # the kernel cannot hold entries on a missing device
            fate = draw(st.sampled_from(["right", "right", "missing", "drift"]))
            if fate == "missing":
                continue
            obj = _drift(draw, obj) if fate == "drift" else obj
            _raw_add(k, obj)

    # Stale owned entries: a peer that left, an old MAC, the old bridge address.
    if vxlan_dev in k.links:
        if draw(st.booleans()):
            k.add_route(Route("100.64.200.0/24", "100.64.200.0", vxlan_dev, True, 0, RTPROT_BOOT))
            k.add_neigh(Neigh(vxlan_dev, "100.64.200.0", "02:00:00:00:c8:00"))
            k.add_fdb(Fdb(vxlan_dev, "02:00:00:00:c8:00", "198.18.0.251"))
        if draw(st.booleans()):
            k.add_fdb(Fdb(vxlan_dev, "02:00:00:00:c9:00", "198.18.0.252"))
        if draw(st.booleans()):
            k.add_route(Route("100.64.0.0/16", None, vxlan_dev, False, 0, RTPROT_BOOT))  # pre-0.9 era
        if draw(st.booleans()):
            k.add_address(vxlan_dev, "100.64.222.0/32")     # stale: our old subnet's address
        # Foreign on our device: a route outside the network, another table,
        # a learned (non-permanent) neighbour, a non-self FDB entry.
        # (gateways outside the cluster network, so never one of our own addresses,
        # which the kernel refuses as a next hop)
        k.add_route(Route("198.19.5.0/24", "100.127.0.201", vxlan_dev, True, 0, RTPROT_BOOT))
        k.add_route(Route("100.64.202.0/24", "100.127.0.202", vxlan_dev, True, 0, RTPROT_BOOT), table=100)
        k.add_neigh(Neigh(vxlan_dev, "100.64.203.0", "02:00:00:00:cb:00"), permanent=False)
        k.add_fdb(Fdb(vxlan_dev, "02:00:00:00:cc:00", "198.18.0.250"), self_permanent=False)
        # Nexthops: a stale one of ours (a peer that left, with its route),
        # and a foreign one below our id range, on our device.
        if draw(st.booleans()):
            k.add_nexthop(Nexthop(NEXTHOP_ID_BASE + 201, "100.64.201.0", vxlan_dev, True, RTPROT_RECONCILER))
            k.add_route(Route("100.64.201.0/24", None, None, None, 0, RTPROT_RECONCILER,
                              nhid=NEXTHOP_ID_BASE + 201))
        k.add_nexthop(Nexthop(7, "100.127.0.207", vxlan_dev, True))
    v6_dev = vxlan_dev.replace("flannel.", "flannel-v6.", 1)
    if v6_dev in k.links and k.links[v6_dev].link.up:
        if draw(st.booleans()):   # an IPv6 peer that left
            k.add_route(Route("fd00:64:0:c8::/64", "fd00:64:0:c8::", v6_dev, True, 1024, RTPROT_BOOT))
            k.add_neigh(Neigh(v6_dev, "fd00:64:0:c8::", "02:00:00:00:c8:06"))
            k.add_fdb(Fdb(v6_dev, "02:00:00:00:c8:06", "fd00:18::fb"))
    if "cni0" in k.links:
        if draw(st.booleans()):
            k.add_address("cni0", "100.64.222.1/24")       # stale: our old subnet
        k.add_address("cni0", "198.19.9.1/24")             # foreign: outside the network
        k.add_link(Link("veth-pod1", "veth", mtu=1450, mac="02:00:00:00:dd:01", up=True), master="cni0")
    # A device that is down cannot hold routes or neighbours: the kernel
    # flushed them when it went down.
    for name, entry in list(k.links.items()):
        if entry.link.up is False:
            k._link_down(name)
    # An administrator's static route at the key of a route we want: a conflict.
    # (Not at the bridge's connected route: the kernel makes that one from the address.)
    wanted = sorted((r for r in desired.of("route").values() if r.gateway is not None or r.nhid),
                    key=lambda r: r.dst)
    if wanted and draw(st.integers(0, 3)) == 0:
        r = draw(st.sampled_from(wanted))
        k.add_route(Route(r.dst, "fd00:18::4d" if _v6(r.dst) else "198.18.0.77", UNDERLAY, False, r.metric, 4))
    # A nexthop of somebody else's at an id we want (on the underlay): a conflict.
    free_ids = sorted(i for i in desired.of("nexthop") if i not in k.nexthops)
    if free_ids and draw(st.integers(0, 3)) == 0:
        k.add_nexthop(Nexthop(draw(st.sampled_from(free_ids)), "198.18.0.77", UNDERLAY, False, 4))
    # Foreign elsewhere: a route into the network via the underlay, not ours.
    k.add_route(Route("100.64.230.0/24", "198.18.0.99", UNDERLAY, False, 0, RTPROT_BOOT))
    k.add_route(Route("198.19.0.0/16", "198.18.0.1", UNDERLAY, False, 0, RTPROT_BOOT))
    # One route per key: where an address's connected route holds a key, the
    # kernel cannot also hold another route there.
    connected = {(r.dst, r.metric) for r in k._connected_routes()}
    k.routes = {key: r for key, r in k.routes.items() if not (key[0] == MAIN and key[1:] in connected)}
    return k


def _raw_add(k: ModelKernel, obj) -> None:
    if isinstance(obj, Address):
        k.add_address(obj.dev, obj.cidr)
    elif isinstance(obj, Nexthop):
        k.add_nexthop(obj)
    elif isinstance(obj, Route) and obj.nhid:
        k.add_route(replace(obj, protocol=RTPROT_RECONCILER))
    elif isinstance(obj, Route):
        proto = obj.protocol if obj.protocol is not None else RTPROT_RECONCILER
        dev = obj.dev if obj.dev is not None else UNDERLAY
        k.add_route(replace(obj, protocol=proto, dev=dev))
    elif isinstance(obj, Neigh):
        k.add_neigh(obj)
    elif isinstance(obj, Fdb):
        k.add_fdb(obj)
