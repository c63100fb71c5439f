"""Desired kernel state: a pure function of (config, valid leases, this node).

Total and deterministic: the same inputs in any order give the same state,
and nothing here reads a clock, a socket or a file.  Linear in the number of
leases: one route, one neighbour and one FDB entry per remote node.

What a node needs (docs/flannel-formats.md section 4):

* ``flannel.<VNI>``: vxlan, ``local`` = PublicIP, ``dstport`` = Port,
  learning off, MTU = underlay MTU - 50, MAC = our lease's VtepMAC, up; one
  address ``<subnet network address>/32`` (the next hop our peers route to);
* ``cni0``: bridge, ``<first host of subnet>/<SubnetLen>``, same MTU, up.
  The CNI bridge plugin adopts a ``cni0`` that already carries the gateway
  address, so creating it ourselves means the first pod ADD cannot race us;
* per remote vxlan lease, the three entries below.  The route goes via the
  peer's subnet address *onlink*: the neighbour entry resolves that address
  to the peer's VTEP MAC with no ARP, and the FDB entry sends frames for that
  MAC to the peer's PublicIP::

      route  <subnet> via <subnet addr> dev flannel.1 onlink
      neigh  <subnet addr> lladdr <VtepMAC> dev flannel.1 nud permanent
      fdb    <VtepMAC> dev flannel.1 dst <PublicIP> self permanent

* DirectRouting: for a peer the caller declares on-link (same L2 segment),
  only ``route <subnet> via <PublicIP>``, no neighbour, no FDB entry.
* Dual stack: the same on ``flannel-v6.<VNI>`` for the v6 parts (its MTU is
  underlay - 70, the kernel's cap for VXLAN over IPv6); DirectRouting is
  decided per family, by the peer's PublicIPv6 (docs/dual-stack.md).
* ``route_layout="nexthop"`` (opt-in, for clusters past about 10,000
  nodes): the route goes through a nexthop object with the same onlink
  gateway, neighbour and FDB entry unchanged (docs/route-layouts.md)::

      nexthop id <N> via <subnet addr> dev flannel.1 onlink
      route   <subnet> nhid <N>
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from reconciler.core.config import NetworkConfig
from reconciler.core.errors import ReconcilerError
from reconciler.core.leases import Lease
from reconciler.core.model import Address, Fdb, KernelObject, KernelState, Link, Neigh, Nexthop, Route
from reconciler.core.ownership import BRIDGE_NAME, NEXTHOP_ID_BASE, NEXTHOP_ID_SPAN

__all__ = ["BLACKHOLE_METRIC", "NodeParams", "NoOwnLease", "ROUTE_LAYOUTS", "blackhole_route", "VXLAN6_OVERHEAD",
           "VXLAN_OVERHEAD", "check_route_layout",
           "desired_state", "find_own_lease", "flannel_mtu", "nexthop_id", "node_objects", "peer_objects",
           "underlay_mtu", "wants_v6"]

#: ``onlink``: flanneld's layout, one onlink gateway route per peer (the
#: default, so mixed clusters look the same on every node).  ``nexthop``: the
#: same forwarding through nexthop objects, linear to install past 10,000 peers.
ROUTE_LAYOUTS = ("onlink", "nexthop")

#: Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8) headers.
VXLAN_OVERHEAD = 50
#: The same over an IPv6 underlay (a 40-byte IPv6 header).  flanneld asks for
#: underlay - 50 on ``flannel-v6.<VNI>`` too, but the kernel caps a VXLAN
#: device over IPv6 at underlay - 70 and refuses more (docs/dual-stack.md), so
#: that is what the device really has, and what we want.
VXLAN6_OVERHEAD = 70
#: Kernel metric of an IPv6 route written with priority 0.
IPV6_DEFAULT_METRIC = 1024
#: The metric of our blackhole routes: the largest, so that every other route to
#: our subnet wins over it -- above all the bridge's connected route, which has
#: the same destination at metric 0 (IPv4) or 256 (IPv6).  flanneld writes its
#: blackhole at metric 0, where a bridge address added later lands behind it
#: and pod traffic is dropped, and where the kernel refuses it (EEXIST) once
#: the bridge has its address (docs/flags.md).
BLACKHOLE_METRIC = 0xFFFFFFFF


class NoOwnLease(ReconcilerError):
    """No valid lease carries this node's PublicIP."""


@dataclass(frozen=True, slots=True)
class NodeParams:
    """What the desired state needs to know about this node besides the leases.

    ``underlay`` is the name of the external interface (``IFLA_VXLAN_LINK``);
    ``None`` means unknown (an offline plan) and is then not compared.
    ``local`` is the VXLAN source address; flanneld >= 0.27.4 uses the
    PublicIP, which is the default here.  ``route_layout`` is one of
    ``ROUTE_LAYOUTS``.
    """

    public_ip: str
    underlay_mtu: int = 1500
    underlay: str | None = None
    local: str | None = None
    public_ipv6: str | None = None
    #: The pod bridge we create; None (``--no-bridge``): the CNI plugin's, not ours.
    bridge: str | None = BRIDGE_NAME
    route_layout: str = "onlink"
    #: flanneld's ``-ip-blackhole-route``: a blackhole route for our own subnet(s).
    blackhole: bool = False


def flannel_mtu(underlay_mtu: int) -> int:
    return underlay_mtu - VXLAN_OVERHEAD


def underlay_mtu(flag: int | None, config_mtu: int | None, kernel: tuple[str, int] | None) -> int:
    """The underlay MTU the desired state is computed from.

    Precedence: ``--underlay-mtu``, the config's ``Backend.MTU``, the
    kernel's MTU of the underlay interface, then 1500 (offline).  A value
    above the real interface's MTU is refused here with a clear message:
    the kernel would cap the VXLAN device and refuse every later MTU change,
    failing each cycle with a bare EINVAL.
    """
    mtu = flag or config_mtu or (kernel[1] if kernel else 1500)
    if kernel is not None and mtu > kernel[1]:
        source = "--underlay-mtu" if flag else "the config's Backend.MTU"
        raise ReconcilerError(f"{source} {mtu} is larger than the MTU of the underlay {kernel[0]} ({kernel[1]}): "
                              f"VXLAN packets would not fit; lower it or raise {kernel[0]}'s MTU")
    return mtu


def find_own_lease(leases: Iterable[Lease], public_ip: str) -> Lease:
    """Our lease: the valid lease whose PublicIP is ours (flanneld's identity rule)."""
    for lease in leases:
        if lease.public_ip == public_ip:
            return lease
    raise NoOwnLease(f"no valid lease has PublicIP {public_ip}: this node holds no subnet yet")


def _never(_ip: str) -> bool:
    return False


def _subnet_count(network, subnet_len: int | None) -> int:
    return 1 << ((subnet_len or network.max_prefixlen) - network.prefixlen)


def check_route_layout(config: NetworkConfig, node: NodeParams) -> None:
    """Refuse a route layout this config cannot have, naming why.

    The nexthop layout gives every possible subnet of ``Network`` its own
    nexthop id, ``NEXTHOP_ID_SPAN`` per family; a config with more subnets
    than that (an IPv4 /8 cut into /29s, an IPv6 /32 into /64s) is refused
    rather than given ids that could collide.
    """
    if node.route_layout not in ROUTE_LAYOUTS:
        raise ReconcilerError(f"route layout {node.route_layout!r}: must be one of {', '.join(ROUTE_LAYOUTS)}")
    if node.route_layout != "nexthop":
        return
    for label, net, plen in (("Network", config.network, config.subnet_len),
                             ("IPv6Network", config.ipv6_network, config.ipv6_subnet_len)):
        if net is None:
            continue
        count = _subnet_count(net, plen)
        if count > NEXTHOP_ID_SPAN:
            raise ReconcilerError(
                f"--route-layout nexthop: {label} {net} holds {count:,} subnets of /{plen}, more than the "
                f"{NEXTHOP_ID_SPAN:,} nexthop ids reserved per address family; use --route-layout onlink")


def nexthop_id(network, subnet) -> int:
    """The nexthop id of a peer's subnet: ``NEXTHOP_ID_BASE`` + (``NEXTHOP_ID_SPAN`` for IPv6)
    + the subnet's index inside ``network``.  The same on every node, and across restarts.

    ``subnet`` must lie inside ``network`` (``validate_leases`` guarantees it)
    and the index must fit (``check_route_layout``); ``ReconcilerError`` otherwise.
    """
    if network is None:
        raise ReconcilerError(f"subnet {subnet}: no nexthop id without a cluster network of its family")
    shift = subnet.max_prefixlen - subnet.prefixlen
    index = (int(subnet.network_address) - int(network.network_address)) >> shift
    if not 0 <= index < NEXTHOP_ID_SPAN or not subnet.subnet_of(network):
        raise ReconcilerError(f"subnet {subnet}: no nexthop id inside {network} (index {index})")
    return NEXTHOP_ID_BASE + (NEXTHOP_ID_SPAN if subnet.version == 6 else 0) + index


def _overlay_entries(node: NodeParams, network, subnet, gw: str, dev: str, mac: str, public_ip: str,
                     metric: int = 0) -> tuple[KernelObject, ...]:
    """A peer's entries through the VXLAN device ``dev``: the neighbour (its gateway's inner MAC),
    the FDB entry (that MAC's outer address) and its route(s).

    The compiled ``_fastpath.peer_entries`` makes the onlink layout's three at C speed (values
    built without their dataclass ``__init__``, a third of a cold start's desired state); this
    function is their specification (``tests/test_properties.py`` holds the two equal)."""
    if node.route_layout != "nexthop":
        fast = _fast_entries()
        if fast is not None:
            return fast(dev, gw, mac, public_ip, f"{gw}/{subnet.prefixlen}", metric)
    return (Neigh(dev, gw, mac), Fdb(dev, mac, public_ip)) + _gateway_route(node, network, subnet, gw, dev, metric)


#: ``_fastpath.peer_entries`` once looked up (False: not yet; None: not built, or turned off).
_FAST_ENTRIES: Any = False


def _fast_entries() -> Callable[..., tuple[KernelObject, ...]] | None:
    global _FAST_ENTRIES
    if _FAST_ENTRIES is False:
        try:
            import _fastpath
            _FAST_ENTRIES = _fastpath.peer_entries
        except ImportError:  # pragma: no cover - the package ships with the project
            _FAST_ENTRIES = None
    return _FAST_ENTRIES


def _gateway_route(node: NodeParams, network, subnet, gw: str, dev: str, metric: int = 0
                   ) -> tuple[KernelObject, ...]:
    """The route of one peer subnet through its onlink gateway, in the node's route layout.

    ``gw`` is the subnet's network address as text (flannel's gateway), so the
    route's destination is made from it rather than formatting the address again."""
    dst = f"{gw}/{subnet.prefixlen}"
    if node.route_layout == "nexthop":
        nhid = nexthop_id(network, subnet)
        return (Nexthop(id=nhid, gateway=gw, dev=dev, onlink=True),
                # No gateway or device of its own (the kernel refuses both beside
                # nhid); onlink None: the dump repeats the nexthop's flags or not,
                # depending on net.ipv4.nexthop_compat_mode.
                Route(dst=dst, gateway=None, dev=None, onlink=None, metric=metric, nhid=nhid))
    return (Route(dst=dst, gateway=gw, dev=dev, onlink=True, metric=metric),)


def node_objects(config: NetworkConfig, node: NodeParams, own: Lease) -> tuple[KernelObject, ...]:
    """This node's own devices and addresses, from our lease."""
    mtu = flannel_mtu(node.underlay_mtu)
    dev = config.device_name
    out: list[KernelObject] = [
        Link(name=dev, type="vxlan", mtu=mtu, mac=own.vtep_mac, up=True, vni=config.vni,
             local=node.local or node.public_ip, port=config.port, learning=config.learning,
             gbp=config.gbp, underlay=node.underlay),
        Address(dev, f"{own.subnet.network_address}/32"),
    ]
    if node.bridge is not None:
        out += [
            Link(name=node.bridge, type="bridge", mtu=mtu, up=True),
            Address(node.bridge, f"{own.subnet.network_address + 1}/{own.subnet.prefixlen}"),
            # The bridge's connected route: the kernel makes it from the address, but
            # ``ip route flush`` removes it and leaves the address, cutting the local pods off.
            # Desired, so that it is repaired; the planner leaves it to the kernel whenever
            # the address or the device is written (plan._kernel_made_routes).
            Route(dst=str(own.subnet), gateway=None, dev=node.bridge, onlink=False),
        ]
    if wants_v6(config, own):
        dev6 = config.v6_device_name
        out += [
            Link(name=dev6, type="vxlan", mtu=node.underlay_mtu - VXLAN6_OVERHEAD, mac=own.v6_vtep_mac, up=True, vni=config.vni,
                 local=node.public_ipv6 or own.public_ipv6, port=config.port, learning=config.learning,
                 gbp=config.gbp, underlay=node.underlay),
            Address(dev6, f"{own.ipv6_subnet.network_address}/128"),
        ]
        if node.bridge is not None:
            out.append(Address(node.bridge, f"{own.ipv6_subnet.network_address + 1}/{own.ipv6_subnet.prefixlen}"))
    if node.blackhole:
        # flanneld does it for each family it runs: traffic to an unused address of
        # our subnet is dropped here instead of following the default route out.
        out.append(blackhole_route(own.subnet))
        if wants_v6(config, own):
            out.append(blackhole_route(own.ipv6_subnet))
    return tuple(out)


def blackhole_route(subnet) -> Route:
    """``ip route replace blackhole <subnet> metric 4294967295 proto 73``: no gateway, no device
    (an IPv6 blackhole shows ``dev lo``, which is the kernel's, not a choice: None is don't care)."""
    return Route(dst=str(subnet), gateway=None, dev=None, onlink=False, metric=BLACKHOLE_METRIC, type="blackhole")


def wants_v6(config: NetworkConfig, own: Lease) -> bool:
    """Does this node run the IPv6 overlay?  Only with a v6 subnet and v6 VTEP MAC of its own."""
    return bool(config.enable_ipv6 and own.ipv6_subnet is not None and own.v6_vtep_mac is not None)


def peer_objects(
    config: NetworkConfig,
    node: NodeParams,
    lease: Lease,
    v6: bool,
    on_link: Callable[[str], bool] = _never,
) -> tuple[KernelObject, ...]:
    """The entries one remote lease needs on this node (at most three per family).

    ``v6`` is ``wants_v6(config, own)``: whether this node runs the IPv6
    overlay at all.  A pure function of one lease, so that a lease event
    recomputes only that lease's objects.
    """
    if lease.backend_type != "vxlan":
        return ()
    out: list[KernelObject] = []
    dev = config.device_name
    gw = str(lease.subnet.network_address)
    if config.direct_routing and on_link(lease.public_ip):
        # Same L2 segment: skip the overlay entirely (docs/flannel-formats.md section 4, DirectRouting).
        out.append(Route(dst=str(lease.subnet), gateway=lease.public_ip, dev=node.underlay, onlink=False))
    elif lease.vtep_mac is not None:
        out.extend(_overlay_entries(node, config.network, lease.subnet, gw, dev, lease.vtep_mac, lease.public_ip))
    if not v6 or lease.ipv6_subnet is None or not lease.public_ipv6:
        return tuple(out)
    if config.direct_routing and on_link(lease.public_ipv6):
        # flanneld decides DirectRouting per family: the peer's PublicIPv6 on our segment.
        out.append(Route(dst=str(lease.ipv6_subnet), gateway=lease.public_ipv6, dev=node.underlay, onlink=False,
                         metric=IPV6_DEFAULT_METRIC))
    elif lease.v6_vtep_mac:
        dev6 = config.v6_device_name
        gw6 = str(lease.ipv6_subnet.network_address)
        out.extend(_overlay_entries(node, config.ipv6_network, lease.ipv6_subnet, gw6, dev6, lease.v6_vtep_mac,
                                    lease.public_ipv6, IPV6_DEFAULT_METRIC))
    return tuple(out)


def desired_state(
    config: NetworkConfig,
    leases: Iterable[Lease],
    node: NodeParams,
    on_link: Callable[[str], bool] = _never,
) -> KernelState:
    """The kernel objects this node must have.

    ``leases`` are the *valid* leases (``validate_leases`` output), ours
    included.  ``on_link(public_ip)`` says whether a peer shares our L2
    segment; it matters only with ``DirectRouting``.  Raises ``NoOwnLease``.

    The union of ``node_objects`` for our lease and ``peer_objects`` for
    every other lease: the incremental path builds the same state one lease
    at a time.
    """
    check_route_layout(config, node)
    leases = list(leases)
    own = find_own_lease(leases, node.public_ip)
    state = KernelState(node_objects(config, node, own))
    v6 = wants_v6(config, own)
    for lease in leases:
        if lease.key == own.key:
            continue
        for obj in peer_objects(config, node, lease, v6, on_link):
            state.add(obj)
    return state
