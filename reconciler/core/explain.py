"""``explain TARGET``: the path a packet from a local pod to TARGET takes, link by link, and the
first link that is broken.

"Why can't this pod reach that one?" takes an expert with ``ip route``, ``ip neigh``, ``bridge fdb``,
``iptables-save`` and ``etcdctl`` side by side.  Everything needed is already a value here: the
lease table with its skip reasons and conflicts, this node's desired state, the owned and foreign
live state, the rules.  This module is pure: the shell (``cli/diagnose.py``) gathers the facts (a
cycle, the raw dump, the kernel's route to the peer, the rules' status, the lease's TTL) and
``explain`` walks them in the order a packet needs them:

    lease -> device -> neighbour -> FDB entry -> (nexthop) -> route -> underlay route -> rules

A link is ``ok``, or broken: ``missing``, ``differs`` (with the attributes), ``foreign`` (held
by an object that is not ours, named), ``down``, ``mtu``, ``skipped``/``no-lease`` (the lease),
``unreachable`` (the underlay).  ``info`` links are facts that break nothing.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Sequence

from reconciler.core.desired import VXLAN6_OVERHEAD, VXLAN_OVERHEAD, peer_objects, wants_v6
from reconciler.core.leases import Lease, Skipped, parse_lease, parse_subnet_key
from reconciler.core.errors import LeaseError
from reconciler.core.model import KernelObject, KernelState, Route, attr_diff
from reconciler.core.render import describe

__all__ = ["Explanation", "PathLink", "Resolution", "explain", "resolve_target", "OK_STATUSES"]

#: Statuses that do not break the path.
OK_STATUSES = ("ok", "info")


@dataclass(frozen=True, slots=True)
class PathLink:
    """One link of the path: what it is, its status, and the detail an operator acts on."""

    name: str
    status: str
    object: str = ""
    detail: str = ""

    @property
    def broken(self) -> bool:
        return self.status not in OK_STATUSES

    def to_json(self) -> dict:
        return {"link": self.name, "status": self.status, "object": self.object, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Resolution:
    """What TARGET names: a peer's lease, our own subnet, a skipped lease, or nothing."""

    target: str
    kind: str                          # "peer", "local", "skipped", "none", "outside"
    lease: Lease | None = None
    key: str = ""                      # the full etcd key, when a lease (valid or skipped) is found
    reason: str = ""                   # why skipped, or why nothing covers it
    family: int = 4
    address: str | None = None         # the IP the packet goes to, when TARGET is an address


@dataclass(frozen=True)
class Explanation:
    resolution: Resolution
    links: tuple[PathLink, ...] = field(default_factory=tuple)

    @property
    def first_broken(self) -> PathLink | None:
        return next((link for link in self.links if link.broken), None)

    @property
    def complete(self) -> bool:
        return self.first_broken is None

    def verdict(self) -> str:
        broken = self.first_broken
        if broken is None:
            return f"path to {self.resolution.target} is complete"
        what = f": {broken.object}" if broken.object else ""
        return f"{broken.name} {broken.status}{what}" + (f" ({broken.detail})" if broken.detail else "")

    def to_json(self) -> dict:
        r = self.resolution
        out: dict[str, Any] = {"target": r.target, "resolved": r.kind, "key": r.key or None,
                               "complete": self.complete, "verdict": self.verdict(),
                               "links": [link.to_json() for link in self.links]}
        if r.lease is not None:
            out["lease"] = {"subnet": str(r.lease.subnet), "public_ip": r.lease.public_ip,
                            "vtep_mac": r.lease.vtep_mac}
        if r.reason:
            out["reason"] = r.reason
        return out

    def text(self) -> str:
        lines = [f"explain {self.resolution.target}"]
        width = max((len(link.name) for link in self.links), default=0)
        for link in self.links:
            obj = f"  {link.object}" if link.object else ""
            detail = f"  ({link.detail})" if link.detail else ""
            lines.append(f"  {link.name:<{width}}  {link.status:<11}{obj}{detail}")
        lines.append(("ok: " if self.complete else "BROKEN at ") + self.verdict())
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# What TARGET names

def resolve_target(target: str, leases: Sequence[Lease], skipped: Sequence[Skipped], raw: dict[str, str],
                   own: Lease, prefix: str, network_v4: Any = None, network_v6: Any = None) -> Resolution:
    """TARGET is a pod IP, a subnet, a PublicIP or a lease key (with or without the prefix).

    ``raw`` maps every subnet key (full etcd key) to its raw value, so a skipped lease can still be
    recognised by its subnet or PublicIP.
    """
    base = prefix.rstrip("/") + "/subnets/"
    text = target.strip()
    key_text = text[len(base):] if text.startswith(base) else text
    # A lease key.
    if "-" in key_text and "/" not in key_text:
        try:
            subnet, subnet6 = parse_subnet_key(key_text)
        except LeaseError:
            pass
        else:
            return _by_subnet(text, subnet, leases, skipped, raw, own, base, exact_key=key_text)
    # A subnet.
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return Resolution(text, "none", reason="not a pod IP, subnet, PublicIP or lease key")
        return _by_subnet(text, net, leases, skipped, raw, own, base)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return Resolution(text, "none", reason="not a pod IP, subnet, PublicIP or lease key")
    fam = addr.version
    # A PublicIP.
    for lease in leases:
        if (lease.public_ip if fam == 4 else lease.public_ipv6) == str(addr):
            if lease.key == own.key:
                return Resolution(text, "local", lease, base + lease.key, "this node's own PublicIP", fam)
            peer_net = lease.subnet if fam == 4 else lease.ipv6_subnet
            target_ip = str(peer_net.network_address) if peer_net is not None else None
            return Resolution(text, "peer", lease, base + lease.key, family=fam, address=target_ip)
    # A pod IP: the lease whose subnet holds it.
    res = _by_subnet(text, ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}"), leases, skipped, raw, own, base)
    if res.kind == "none":
        network = network_v4 if fam == 4 else network_v6
        if network is None or addr not in network:
            return Resolution(text, "outside", family=fam,
                              reason=f"{addr} is outside the overlay Network {network}: not flannel traffic")
        for key, value in raw.items():         # a PublicIP only a skipped lease carries
            try:
                lease = parse_lease(key[len(base):], value)
            except LeaseError:
                continue
            if lease.public_ip == str(addr):
                return _skipped(text, key, skipped, lease, fam)
    return _with_address(res, str(addr))


def _with_address(res: Resolution, address: str) -> Resolution:
    return Resolution(res.target, res.kind, res.lease, res.key, res.reason, res.family, address)


def _by_subnet(target: str, net: Any, leases, skipped, raw, own, base, exact_key: str | None = None) -> Resolution:
    fam = net.version
    for lease in leases:
        subnet = lease.subnet if fam == 4 else lease.ipv6_subnet
        if subnet is not None and (lease.key == exact_key or (exact_key is None and net.subnet_of(subnet))):
            kind = "local" if lease.key == own.key else "peer"
            return Resolution(target, kind, lease, base + lease.key,
                              "this node's own subnet: served by the pod bridge" if kind == "local" else "",
                              fam, str(subnet.network_address) if kind == "peer" else None)
    for key in sorted(raw):
        k = key[len(base):]
        try:
            subnet, subnet6 = parse_subnet_key(k)
        except LeaseError:
            continue
        mine = subnet if fam == 4 else subnet6
        if mine is None or not (k == exact_key or (exact_key is None and net.version == mine.version
                                                   and net.subnet_of(mine))):
            continue
        try:
            lease = parse_lease(k, raw[key])
        except LeaseError:
            lease = None
        return _skipped(target, key, skipped, lease, fam)
    return Resolution(target, "none", family=fam, reason=f"no lease covers {target}")


def _skipped(target, key, skipped, lease, fam) -> Resolution:
    reason = next((s.reason for s in skipped if s.key == key), "skipped")
    return Resolution(target, "skipped", lease, key, reason, fam)


# --------------------------------------------------------------------------------------------
# The path

@dataclass(frozen=True)
class Facts:
    """What the shell read for one explanation, beside the cycle."""

    underlay_mtu: int
    route_to_peer: tuple[str | None, str | None] | str | None = None   # (dev, src), an error, or not asked
    rules: tuple[tuple[str, str, str], ...] = ()                       # rule_show_rows of the relevant rules
    ttl: int | None = None
    vxlan_devices: tuple[str, ...] = ()


def explain(resolution: Resolution, cycle: Any, dump: KernelState, facts: Facts,
            on_link=lambda _ip: False) -> Explanation:
    """The links of the path to ``resolution``'s target on the node of ``cycle``."""
    r = resolution
    links: list[PathLink] = [_lease_link(r, facts)]
    if r.kind in ("none", "outside", "skipped"):
        return Explanation(r, tuple(links))
    config, node = cycle.config, cycle.node
    v6 = r.family == 6
    if r.kind == "local":
        links += _local_links(cycle, dump, r)
        return Explanation(r, tuple(links))
    lease = r.lease
    assert lease is not None            # a peer is always found by its lease
    wanted = [o for o in peer_objects(config, node, lease, wants_v6(config, cycle.own), on_link)
              if _family(o) == r.family]
    dev = config.v6_device_name if v6 else config.device_name
    direct = any(isinstance(o, Route) and o.dev == node.underlay and o.gateway for o in wanted) and not any(
        o.KIND in ("neigh", "fdb") for o in wanted)
    if not direct:
        links.append(_device_link(cycle, dev, facts.underlay_mtu - (VXLAN6_OVERHEAD if v6 else VXLAN_OVERHEAD)))
    conflicts = {(c.desired.KIND, c.desired.key): c.foreign for c in cycle.plan.conflicts}
    order = {k: i for i, k in enumerate(("neigh", "fdb", "nexthop", "route"))}
    for obj in sorted(wanted, key=lambda o: order.get(o.KIND, 9)):
        links.append(_object_link(obj, cycle.live, conflicts))
    links += _covering_foreign_routes(r, lease, dump, cycle)
    links.append(_underlay_link(lease, facts, dev, v6))
    links += _rule_links(facts.rules)
    return Explanation(r, tuple(links))


def _family(obj: KernelObject) -> int:
    for attr in ("dst", "ip", "dest", "gateway"):
        value = getattr(obj, attr, None)
        if value:
            return 6 if ":" in value else 4
    return 4


def _lease_link(r: Resolution, facts: Facts) -> PathLink:
    if r.kind == "none":
        return PathLink("lease", "no-lease", "", r.reason)
    if r.kind == "outside":
        return PathLink("lease", "info", "", r.reason)
    if r.kind == "skipped":
        return PathLink("lease", "skipped", r.key, r.reason)
    lease = r.lease
    assert lease is not None            # "peer" and "local" are always found by their lease
    ttl = "no TTL (reservation)" if lease.is_reservation else (
        f"TTL {facts.ttl} s" if facts.ttl is not None else "TTL unknown (a snapshot)")
    mac = lease.vtep_mac if r.family == 4 else lease.v6_vtep_mac
    pub = lease.public_ip if r.family == 4 else lease.public_ipv6
    detail = f"PublicIP {pub}, VtepMAC {mac}, {ttl}"
    if r.kind == "local":
        detail = f"{r.reason}; {detail}"
    if facts.ttl == 0 and not lease.is_reservation:
        return PathLink("lease", "expired", r.key, detail)
    return PathLink("lease", "ok", r.key, detail)


def _device_link(cycle: Any, dev: str, max_mtu: int) -> PathLink:
    live = cycle.live.get("link", dev)
    want = cycle.desired.get("link", dev)
    if live is None:
        return PathLink("device", "missing", dev, "the VXLAN device does not exist")
    if not live.up:
        return PathLink("device", "down", dev, "the device is administratively down")
    if live.mtu is not None and live.mtu > max_mtu:
        return PathLink("device", "mtu", dev, f"MTU {live.mtu} is above what the underlay carries ({max_mtu}): "
                                              "full-size packets are dropped")
    if want is not None:
        diff = attr_diff(want, live)
        if diff:
            return PathLink("device", "differs", dev, _diff_text(diff))
    return PathLink("device", "ok", dev, f"up, MTU {live.mtu}")


def _object_link(obj: KernelObject, live: KernelState, conflicts: dict) -> PathLink:
    name = {"neigh": "neighbour", "fdb": "fdb entry"}.get(obj.KIND, obj.KIND)
    foreign = conflicts.get((obj.KIND, obj.key))
    if foreign is not None:
        return PathLink(name, "foreign", describe(obj), f"held by {describe(foreign)}"
                                                        + (f" proto {foreign.protocol}" if getattr(foreign, "protocol", None) else ""))
    have = live.get(obj.KIND, obj.key)
    if have is None:
        return PathLink(name, "missing", describe(obj))
    diff = attr_diff(obj, have)
    if diff:
        return PathLink(name, "differs", describe(obj), _diff_text(diff))
    return PathLink(name, "ok", describe(obj))


def _diff_text(diff: dict) -> str:
    return ", ".join(f"{a} desired {d}, live {l}" for a, (d, l) in sorted(diff.items()))


def _covering_foreign_routes(r: Resolution, lease: Lease, dump: KernelState, cycle: Any) -> list[PathLink]:
    """Foreign routes more specific than the peer's subnet that catch the target (a /25 inside a /24)."""
    subnet = lease.subnet if r.family == 4 else lease.ipv6_subnet
    if subnet is None:
        return []
    probe = ipaddress.ip_address(r.address) if r.address else subnet.network_address
    out = []
    ours = cycle.live.of("route")
    for route in dump.of("route").values():
        if not isinstance(route, Route) or route.key in ours or route.dst == str(subnet):
            continue
        try:
            net = ipaddress.ip_network(route.dst, strict=False)
        except ValueError:
            continue
        if net.version == subnet.version and net.prefixlen > subnet.prefixlen and probe in net:
            out.append(PathLink("route", "foreign", describe(route),
                                f"more specific than {subnet}: it catches {probe} first"))
    return out


def _underlay_link(lease: Lease, facts: Facts, dev: str, v6: bool) -> PathLink:
    peer = lease.public_ipv6 if v6 else lease.public_ip
    found = facts.route_to_peer
    if found is None:
        return PathLink("underlay", "info", f"to {peer}", "not looked up")
    if isinstance(found, str):
        return PathLink("underlay", "unreachable", f"to {peer}", found)
    out_dev, src = found
    if out_dev is None:
        return PathLink("underlay", "unreachable", f"to {peer}", "the kernel's route has no device")
    if out_dev in facts.vxlan_devices:
        return PathLink("underlay", "loop", f"to {peer} dev {out_dev}",
                        "the tunnel's own packets would go into the tunnel")
    return PathLink("underlay", "ok", f"to {peer} dev {out_dev}" + (f" src {src}" if src else ""))


def _rule_links(rows: Sequence[tuple[str, str, str]]) -> list[PathLink]:
    out = []
    masq: list[tuple[str, str]] = []
    for status, obj, detail in rows:
        lowered = obj.lower()
        if " -t nat " in obj or "postrtg" in lowered or "postrouting" in lowered:
            masq.append((status, obj))
        else:
            out.append(PathLink("forward rule", "ok" if status == "ok" else status, obj, detail))
    if masq:
        # flanneld's masquerade rules RETURN for pod-to-pod traffic: whatever their state they
        # change nothing on this path, so they are summed up, never blamed.
        bad = [f"{status}: {obj}" for status, obj in masq if status != "ok"]
        out.append(PathLink("masquerade", "info", f"{len(masq)} rules",
                            "all present" if not bad else "; ".join(bad)))
    return out


def _local_links(cycle: Any, dump: KernelState, r: Resolution) -> list[PathLink]:
    """A target inside our own subnet: the pod bridge, its address and its connected route."""
    bridge = cycle.node.bridge
    if bridge is None:
        return [PathLink("bridge", "info", "", "--no-bridge: the CNI plugin's bridge, not checked")]
    out = []
    live = cycle.live.get("link", bridge)
    if live is None:
        out.append(PathLink("bridge", "missing", bridge))
    elif not live.up:
        out.append(PathLink("bridge", "down", bridge))
    else:
        out.append(PathLink("bridge", "ok", bridge, f"up, MTU {live.mtu}"))
    for addr in cycle.desired.of("address").values():
        if addr.dev == bridge and ipaddress.ip_interface(addr.cidr).version == r.family:
            have = cycle.live.get("address", addr.key)
            out.append(PathLink("address", "ok" if have is not None else "missing", describe(addr)))
            net = str(ipaddress.ip_interface(addr.cidr).network)
            connected = [rt for rt in dump.of("route").values()
                         if isinstance(rt, Route) and rt.dst == net and rt.dev == bridge]
            out.append(PathLink("connected route", "ok" if connected else "missing", f"{net} dev {bridge}",
                                "" if connected else "the kernel has no route to the local pods"))
    return out
