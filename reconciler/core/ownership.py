"""What the agent owns in the kernel, as a policy object.

Ownership is decided once, at the read boundary: live state is filtered
through the policy before it reaches the planner, so an object that is not
ours never enters the diff and can never be planned for deletion.

The agent owns, and only owns:

* links: ``flannel.<VNI>``, ``flannel-v6.<VNI>`` and ``cni0`` (by name; the
  bridge is ``--bridge NAME``, and with ``--no-bridge`` no bridge is ours:
  the CNI plugin or Docker owns it);
* addresses on those links that lie inside the cluster network (IPv4
  ``Network`` or ``IPv6Network``); link-local and other addresses are foreign;
* routes of the main table whose destination lies inside the cluster network
  *and* that either sit on a VXLAN device or carry our route protocol
  (``RTPROT_RECONCILER``).  Routes flanneld left (``proto boot`` on
  ``flannel.<VNI>``) therefore count as ours and are adopted or removed.
  Routes the kernel made (``proto kernel``) are not ours, with one
  exception: the IPv4 connected route of our bridge (``100.64.1.0/24 dev
  cni0``), which is desired state so that it comes back after ``ip route
  flush`` (the kernel does not re-make it while the address stays);
* permanent neighbour entries and ``self`` permanent FDB entries on the
  VXLAN devices (the backend only reports permanent ones; the kernel's own
  reachable/stale entries are not ours and never enter the dump);
* nexthop objects whose id lies in our range (``NEXTHOP_ID_BASE`` and the
  ``2 * NEXTHOP_ID_SPAN`` ids after it) *and* that sit on a VXLAN device.
  The ids are a pure function of a peer's subnet (``desired.nexthop_id``),
  the same on every node and across restarts; docs/route-layouts.md says
  which ids they are.  They are owned whatever the route layout in use, so
  switching back to ``onlink`` removes them.

A learned (reachable, stale, ...) neighbour entry that sits at the key of
a neighbour we want is the kernel's ARP cache, not anybody's state: writing
ours replaces it, as flanneld does.

Everything else -- pod veths enslaved to ``cni0``, the underlay, other
devices, other tables, routes outside the network -- is foreign.  A known
consequence, kept deliberately: after the cluster ``Network`` changes, old
routes outside the new network are no longer ours and are left in place
(flannel #1604); neighbour and FDB entries on the VXLAN device are cleaned
whatever their address.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from reconciler.core.config import NetworkConfig
from reconciler.core.model import (KINDS, RTPROT_KERNEL, RTPROT_RECONCILER, Address, Fdb, KernelObject, KernelState, Link, Neigh, Nexthop,
                    Route)

__all__ = ["BRIDGE_NAME", "DumpSplit", "FlannelOwnership", "NEXTHOP_ID_BASE", "NEXTHOP_ID_SPAN",
           "OwnershipPolicy", "RTPROT_KERNEL", "owned_nexthop_id"]

BRIDGE_NAME = "cni0"

#: First nexthop id of ours: 0x464C0000 ("FL" in ASCII, then two zero bytes),
#: far above the small ids iproute2 users and FRR's zebra hand out.
NEXTHOP_ID_BASE = 0x464C0000
#: Ids per address family: IPv4 peers take ``BASE + index``, IPv6 peers
#: ``BASE + SPAN + index``, where index is the peer subnet's position inside
#: ``Network`` (``IPv6Network``).  2**20 subnets is far past any flannel
#: cluster (a /8 with /28 leases); a config with more is refused up front.
NEXTHOP_ID_SPAN = 1 << 20


def owned_nexthop_id(nhid: int) -> bool:
    """Is ``nhid`` inside the range our nexthop ids come from?"""
    return NEXTHOP_ID_BASE <= nhid < NEXTHOP_ID_BASE + 2 * NEXTHOP_ID_SPAN


@dataclass
class DumpSplit:
    """A dump split by ownership: what is ours (``live``, the planner's input) and the foreign
    objects that hold a key we may want -- routes into the network by route key, nexthops at an
    id of our range by id -- which the planner must see to leave them alone and report them."""

    live: KernelState = field(default_factory=KernelState)
    foreign_routes: dict[Any, Route] = field(default_factory=dict)
    foreign_nexthops: dict[int, Nexthop] = field(default_factory=dict)


class OwnershipPolicy(Protocol):
    def owns(self, obj: KernelObject) -> bool: ...

    def filter(self, live: KernelState) -> KernelState: ...


class FlannelOwnership:
    """The ownership rules above for one network config."""

    __slots__ = ("vxlan_devices", "devices", "bridge", "_networks", "_v4_networks", "_prefix_cache")

    def __init__(self, config: NetworkConfig, bridge: str | None = BRIDGE_NAME) -> None:
        self.vxlan_devices = frozenset({config.device_name, config.v6_device_name})
        # bridge None (--no-bridge): the CNI plugin owns the bridge, we own none.
        self.devices = self.vxlan_devices | ({bridge} if bridge else set())
        self.bridge = bridge
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        if config.network is not None:
            nets.append(config.network)
        if config.ipv6_network is not None:
            nets.append(config.ipv6_network)
        self._networks = tuple(nets)
        # (network, its address shifted right, the shift): the IPv4 test of ``_inside_v4``.
        self._v4_networks = tuple((n, int(n.network_address) >> (32 - n.prefixlen), 32 - n.prefixlen)
                                  for n in nets if n.version == 4)
        # Many routes share nothing, but the cache keeps repeated resyncs of
        # the same 5,000 prefixes from re-parsing them every cycle.
        self._prefix_cache: dict[str, bool] = {}

    def inside_network(self, prefix: str) -> bool:
        """Is the address or prefix (``a.b.c.d/len`` or a bare address) inside the cluster network?"""
        hit = self._prefix_cache.get(prefix)
        if hit is None:
            hit = self._inside_v4(prefix) if ":" not in prefix else None
            if hit is None:
                try:
                    net = ipaddress.ip_network(prefix, strict=False)
                except ValueError:
                    hit = False
                else:
                    hit = any(net.version == n.version and net.subnet_of(n) for n in self._networks)  # type: ignore[arg-type]
            if len(self._prefix_cache) > 200_000:
                self._prefix_cache.clear()
            self._prefix_cache[prefix] = hit
        return hit

    def _inside_v4(self, prefix: str) -> bool | None:
        """``inside_network`` for a well-formed IPv4 prefix, in integers (None: ``ipaddress``
        decides anything else).  A cold start sees each of 5,000 route prefixes once, in the
        kernel's notifications of our own writes, and ``ip_network`` cost about 10 us each."""
        addr, slash, plen_text = prefix.partition("/")
        plen = 32
        if slash:
            if not (plen_text.isascii() and plen_text.isdigit() and len(plen_text) <= 2):
                return None
            plen = int(plen_text)
            if plen > 32:
                return None
        parts = addr.split(".")
        if len(parts) != 4:
            return None
        value = 0
        for part in parts:
            # ipaddress's rules: ASCII digits only, at most 3, no leading zero, at most 255.
            if not (part.isascii() and part.isdigit() and len(part) <= 3) or (len(part) > 1 and part[0] == "0"):
                return None
            octet = int(part)
            if octet > 255:
                return None
            value = value << 8 | octet
        for net, base, shift in self._v4_networks:
            if plen >= net.prefixlen and value >> shift == base:
                return True
        return False

    def owns(self, obj: KernelObject) -> bool:
        if isinstance(obj, Link):
            return obj.name in self.devices
        if isinstance(obj, Address):
            # An address's own network is irrelevant: ``10.244.1.1/24`` is ours
            # because 10.244.1.1 is inside 10.244.0.0/16.
            return obj.dev in self.devices and self.inside_network(obj.cidr.split("/", 1)[0])
        if isinstance(obj, Route):
            if obj.protocol == RTPROT_KERNEL:
                # Only the bridge's IPv4 connected route (metric 0; IPv6 ones have 256).
                return (obj.dev is not None and obj.dev == self.bridge and obj.gateway is None
                        and obj.metric == 0 and ":" not in obj.dst and self.inside_network(obj.dst))
            on_ours = obj.dev in self.vxlan_devices or obj.protocol == RTPROT_RECONCILER
            return on_ours and self.inside_network(obj.dst)
        if isinstance(obj, (Neigh, Fdb)):
            return obj.dev in self.vxlan_devices
        if isinstance(obj, Nexthop):
            return obj.dev in self.vxlan_devices and owned_nexthop_id(obj.id)
        return False

    def holds_our_key(self, obj: KernelObject) -> bool:
        """Could this object, when not ours, sit at a key we may want?  A route into the network,
        or a nexthop at an id of our range; the other kinds' keys never collide with a foreign one."""
        if isinstance(obj, Route):
            return self.inside_network(obj.dst)
        if isinstance(obj, Nexthop):
            return owned_nexthop_id(obj.id)
        return False

    def split(self, dump: Iterable[KernelObject]) -> DumpSplit:
        """The one place a dump is split into ours and foreign (full cycle, tracker, test oracles)."""
        out = DumpSplit()
        live = out.live
        if not isinstance(dump, KernelState):
            for obj in dump:
                if self.owns(obj):
                    live.add(obj)
                elif self.holds_our_key(obj):
                    self._foreign(out, obj)
            return out
        # A dump is already keyed: walk each kind's dict and keep its keys (a resync at 5,000
        # nodes is 15,000 objects, and a key is a tuple built by a property).  A neighbour or
        # FDB entry is ours by its device alone, and never foreign at a key we want.
        vxlan = self.vxlan_devices
        for kind in KINDS:
            src, dst = dump.of(kind), live.of(kind)
            if kind in ("neigh", "fdb"):
                for key, obj in src.items():
                    if obj.dev in vxlan:    # type: ignore[union-attr,operator]  # a Neigh or an Fdb
                        dst[key] = obj
                continue
            for key, obj in src.items():
                if self.owns(obj):
                    dst[key] = obj
                elif self.holds_our_key(obj):
                    self._foreign(out, obj)
        return out

    @staticmethod
    def _foreign(out: DumpSplit, obj: KernelObject) -> None:
        if isinstance(obj, Route):
            out.foreign_routes[obj.key] = obj
        elif isinstance(obj, Nexthop):
            out.foreign_nexthops[obj.id] = obj

    def filter(self, live: KernelState) -> KernelState:
        """The owned part of a live dump."""
        return live.filter(self.owns)
