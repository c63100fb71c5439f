"""``plan --config FILE``: what every node would do if the network config in etcd became FILE.

Pure, and computed from the leases alone: each node is assumed converged on today's config (its
kernel holds exactly today's desired state, our routes carrying our protocol), and its plan is the
one the agent would make after a restart with the new config: the new desired state against what
the new config's ownership rules let it see of today's.  What they no longer let it see is left
behind, never deleted (a VNI change leaves ``flannel.<old VNI>``; routes outside a narrowed Network
stay): the what-if names it.  Nothing is read from a node and nothing is written.

Cost.  Planning every node in full is O(nodes x leases) objects: 25 million at 5,000 nodes.  But a
node's plan is its own devices' changes plus, for every other lease, that lease's changes, and a
lease's changes are the same on every node that runs the same families and sees it the same way
(its DirectRouting segment).  So one full plan per such class of nodes, attributed lease by lease,
gives every node's plan by subtraction: O(classes x leases).  ``node_whatif_exact`` is the full
computation; the tests hold the two equal on random clusters and config changes.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from reconciler.core.config import NetworkConfig
from reconciler.core.desired import NodeParams, desired_state, node_objects, peer_objects, wants_v6
from reconciler.core.leases import Lease, RawKV, Skipped, _strip_prefix, validate_leases
from reconciler.core.model import RTPROT_RECONCILER, KernelObject, KernelState, Link, Route
from reconciler.core.ownership import BRIDGE_NAME, FlannelOwnership
from reconciler.core.plan import Change, make_plan

__all__ = ["NodeTemplate", "NodeWhatIf", "WhatIf", "cluster_whatif", "node_whatif_exact"]


@dataclass(frozen=True, slots=True)
class NodeTemplate:
    """What a cluster-wide what-if assumes of every node (etcd does not know it).

    ``underlay_mtu``: the underlay's MTU where the config gives no Backend.MTU.  ``segments``: the
    underlay's L2 segments as CIDRs; a peer whose PublicIP shares a segment with the node is routed
    directly when DirectRouting is on (outside any segment, nothing is on-link).
    """

    underlay_mtu: int = 1500
    route_layout: str = "onlink"
    bridge: str | None = BRIDGE_NAME
    segments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeWhatIf:
    """One node's what-if: how many changes of each (op, kind), the devices re-created, what is
    left behind (no longer ours under the new config), or why the node loses its lease."""

    key: str
    public_ip: str
    changes: tuple[tuple[str, str, int], ...] = ()
    recreated: tuple[str, ...] = ()
    updated: tuple[tuple[str, tuple[str, ...]], ...] = ()
    left_behind: tuple[tuple[str, int], ...] = ()
    loses_lease: str = ""

    def summary(self) -> tuple:
        """Everything but the node's identity: nodes with equal summaries are shown together."""
        return (self.changes, self.recreated, self.updated, self.left_behind, self.loses_lease)

    @property
    def total(self) -> int:
        return sum(n for _, _, n in self.changes)

    def to_json(self) -> dict:
        out = {"key": self.key, "public_ip": self.public_ip,
               "changes": [{"op": op, "kind": kind, "count": n} for op, kind, n in self.changes],
               "recreated": list(self.recreated),
               "updated": [{"device": d, "attributes": list(a)} for d, a in self.updated],
               "left_behind": [{"kind": k, "count": n} for k, n in self.left_behind]}
        if self.loses_lease:
            out["loses_lease"] = self.loses_lease
        return out


@dataclass(frozen=True)
class WhatIf:
    nodes: tuple[NodeWhatIf, ...]
    dropped: tuple[Skipped, ...]      # valid today, skipped under the new config
    joining: tuple[str, ...]          # skipped today, valid under the new config
    config_changes: tuple[tuple[str, object, object], ...]

    def totals(self) -> dict[tuple[str, str], int]:
        out: Counter = Counter()
        for n in self.nodes:
            for op, kind, count in n.changes:
                out[(op, kind)] += count
        return dict(out)

    @property
    def in_sync(self) -> bool:
        return not self.dropped and all(n.total == 0 and not n.loses_lease and not n.left_behind
                                        for n in self.nodes)

    def to_json(self) -> dict:
        return {
            "in_sync": self.in_sync,
            "config_changes": [{"field": f, "from": _jsonable(a), "to": _jsonable(b)}
                               for f, a, b in self.config_changes],
            "totals": [{"op": op, "kind": kind, "count": n} for (op, kind), n in sorted(self.totals().items())],
            "dropped": [{"key": s.key, "reason": s.reason} for s in self.dropped],
            "joining": list(self.joining),
            "nodes": [n.to_json() for n in self.nodes],
        }


def _jsonable(v: object) -> object:
    return v if v is None or isinstance(v, (bool, int, str)) else str(v)


def config_changes(old: NetworkConfig, new: NetworkConfig) -> tuple[tuple[str, object, object], ...]:
    return tuple((f.name, getattr(old, f.name), getattr(new, f.name)) for f in dataclasses.fields(old)
                 if getattr(old, f.name) != getattr(new, f.name))


# --------------------------------------------------------------------------------------------
# One node, in full: the specification.

def _node(template: NodeTemplate, config: NetworkConfig, lease: Lease) -> NodeParams:
    return NodeParams(public_ip=lease.public_ip, underlay_mtu=config.mtu or template.underlay_mtu,
                      public_ipv6=lease.public_ipv6 if config.enable_ipv6 else None, bridge=template.bridge,
                      route_layout=template.route_layout)


def _on_link(template: NodeTemplate, public_ip: str) -> Callable[[str], bool]:
    seg = _segment_of(template, public_ip)
    if seg is None:
        return lambda _ip: False
    net = ipaddress.ip_network(template.segments[seg], strict=False)

    def on_link(ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in net
        except ValueError:
            return False
    return on_link


def _segment_of(template: NodeTemplate, ip: str) -> int | None:
    addr = ipaddress.ip_address(ip)
    for i, cidr in enumerate(template.segments):
        if addr in ipaddress.ip_network(cidr, strict=False):
            return i
    return None


def _as_written(objs: Iterable[KernelObject]) -> KernelState:
    """Desired objects as a dump shows them once written: our routes carry our protocol."""
    return KernelState(dataclasses.replace(o, protocol=RTPROT_RECONCILER) if isinstance(o, Route) else o
                       for o in objs)


def _summarise(key: str, public_ip: str, changes: Iterable[Change], left: Iterable[KernelObject]) -> NodeWhatIf:
    counts: Counter = Counter()
    deleted_links, created_links, updated = set(), set(), []
    for c in changes:
        counts[(c.op, c.kind)] += 1
        if isinstance(c.obj, Link):
            if c.op == "delete":
                deleted_links.add(c.obj.name)
            elif c.op == "create":
                created_links.add(c.obj.name)
            else:
                updated.append((c.obj.name, tuple(sorted(c.changed()))))
    behind = Counter(o.KIND for o in left)
    return NodeWhatIf(key, public_ip, tuple((op, kind, n) for (op, kind), n in sorted(counts.items())),
                      tuple(sorted(deleted_links & created_links)), tuple(sorted(updated)),
                      tuple(sorted(behind.items())))


def node_whatif_exact(old: NetworkConfig, new: NetworkConfig, leases_old: Sequence[Lease],
                      leases_new: Sequence[Lease], lease: Lease, template: NodeTemplate = NodeTemplate(),
                      dropped_reason: str = "") -> NodeWhatIf:
    """One node's what-if, computed in full (O(leases)): the definition ``cluster_whatif`` meets."""
    if dropped_reason:
        return NodeWhatIf(lease.key, lease.public_ip, loses_lease=dropped_reason)
    on_link = _on_link(template, lease.public_ip)
    before = _as_written(desired_state(old, leases_old, _node(template, old, lease), on_link))
    after = desired_state(new, leases_new, _node(template, new, lease), on_link)
    policy = FlannelOwnership(new, template.bridge)
    seen = before.filter(policy.owns)
    left = [o for o in before if not policy.owns(o)]
    return _summarise(lease.key, lease.public_ip, make_plan(after, seen).changes, left)


# --------------------------------------------------------------------------------------------
# Every node, by classes

@dataclass
class _Attribution:
    """One representative's full plan, split into its own part and each peer lease's part."""

    own: list[Change]
    own_left: list[KernelObject]
    per_lease: dict[str, list[Change]]
    left_per_lease: dict[str, list[KernelObject]]


def _attribute(old, new, leases_old, leases_new, rep: Lease, template: NodeTemplate) -> _Attribution:
    on_link = _on_link(template, rep.public_ip)
    node_old, node_new = _node(template, old, rep), _node(template, new, rep)
    before = _as_written(desired_state(old, leases_old, node_old, on_link))
    after = desired_state(new, leases_new, node_new, on_link)
    policy = FlannelOwnership(new, template.bridge)
    owner: dict[tuple[str, object], str] = {}
    own_old = next(lease for lease in leases_old if lease.key == rep.key)
    own_new = next(lease for lease in leases_new if lease.key == rep.key)
    v6_old, v6_new = wants_v6(old, own_old), wants_v6(new, own_new)
    for lease in leases_old:
        if lease.key != rep.key:
            for o in peer_objects(old, node_old, lease, v6_old, on_link):
                owner[(o.KIND, o.key)] = lease.key
    for lease in leases_new:
        if lease.key != rep.key:
            for o in peer_objects(new, node_new, lease, v6_new, on_link):
                owner[(o.KIND, o.key)] = lease.key
    att = _Attribution([], [], {}, {})
    for c in make_plan(after, before.filter(policy.owns)).changes:
        who = owner.get((c.kind, c.obj.key))
        (att.own if who is None else att.per_lease.setdefault(who, [])).append(c)
    for o in before:
        if not policy.owns(o):
            who = owner.get((o.KIND, o.key))
            (att.own_left if who is None else att.left_per_lease.setdefault(who, [])).append(o)
    return att


def cluster_whatif(old: NetworkConfig, new: NetworkConfig, kvs: Iterable[RawKV], prefix: str,
                   template: NodeTemplate = NodeTemplate()) -> WhatIf:
    """Every node's what-if (each valid lease of today is a node), the leases the new config drops,
    and the ones it lets in."""
    prefix = _strip_prefix(prefix)
    kvs = list(kvs)
    leases_old, _ = validate_leases(old, kvs, prefix)
    leases_new, skipped_new = validate_leases(new, kvs, prefix)
    new_by_key = {lease.key: lease for lease in leases_new}
    old_keys = {lease.key for lease in leases_old}
    base = prefix + "/subnets/"
    reasons = {s.key[len(base):]: s.reason for s in skipped_new}
    dropped = tuple(s for s in skipped_new if s.key[len(base):] in old_keys)
    joining = tuple(sorted(base + lease.key for lease in leases_new if lease.key not in old_keys))

    def klass(lease: Lease) -> tuple:
        now = new_by_key[lease.key]
        return (wants_v6(old, lease), wants_v6(new, now), _segment_of(template, lease.public_ip))

    staying = [lease for lease in leases_old if lease.key in new_by_key]
    classes: dict[tuple, list[Lease]] = {}
    for lease in staying:
        classes.setdefault(klass(lease), []).append(lease)

    results: dict[str, NodeWhatIf] = {}
    for members in classes.values():
        rep = members[0]
        att = _attribute(old, new, leases_old, leases_new, rep, template)
        # Every peer lease's part, as this class sees it; the representative's own part as a peer
        # comes from a second member's plan.
        per_lease, left_per_lease = dict(att.per_lease), dict(att.left_per_lease)
        if len(members) > 1:
            att2 = _attribute(old, new, leases_old, leases_new, members[1], template)
            per_lease[rep.key] = att2.per_lease.get(rep.key, [])
            left_per_lease[rep.key] = att2.left_per_lease.get(rep.key, [])
        peer_counts = {k: Counter((c.op, c.kind) for c in v) for k, v in per_lease.items()}
        total = sum(peer_counts.values(), Counter())
        left_counts = {k: Counter(o.KIND for o in v) for k, v in left_per_lease.items()}
        left_total = sum(left_counts.values(), Counter())
        for lease in members:
            own = att.own if lease is rep else _own_changes(old, new, lease, new_by_key[lease.key], template)
            own_left = att.own_left if lease is rep else _own_left(old, new, lease, template)
            counts = total - peer_counts.get(lease.key, Counter())
            counts.update(Counter((c.op, c.kind) for c in own))
            behind = left_total - left_counts.get(lease.key, Counter())
            behind.update(Counter(o.KIND for o in own_left))
            summary = _summarise(lease.key, lease.public_ip, own, ())
            results[lease.key] = dataclasses.replace(
                summary,
                changes=tuple((op, kind, n) for (op, kind), n in sorted(counts.items()) if n),
                left_behind=tuple(sorted((k, n) for k, n in behind.items() if n)))
    for lease in leases_old:
        if lease.key not in new_by_key:
            results[lease.key] = NodeWhatIf(lease.key, lease.public_ip, loses_lease=reasons.get(lease.key, ""))
    nodes = tuple(results[lease.key] for lease in leases_old)
    return WhatIf(nodes, dropped, joining, config_changes(old, new))


def _own_changes(old, new, lease_old: Lease, lease_new: Lease, template: NodeTemplate) -> list[Change]:
    """A node's own devices' and addresses' changes: the part of its plan no peer lease causes."""
    before = _as_written(node_objects(old, _node(template, old, lease_old), lease_old))
    after = KernelState(node_objects(new, _node(template, new, lease_new), lease_new))
    return list(make_plan(after, before.filter(FlannelOwnership(new, template.bridge).owns)).changes)


def _own_left(old, new, lease: Lease, template: NodeTemplate) -> list[KernelObject]:
    policy = FlannelOwnership(new, template.bridge)
    return [o for o in _as_written(node_objects(old, _node(template, old, lease), lease)) if not policy.owns(o)]
