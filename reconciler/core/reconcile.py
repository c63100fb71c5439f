"""One reconcile cycle, as pure steps around two edges (lease source, kernel).

    leases (raw kvs) --validate--> valid leases --desired_state--> desired
    kernel dump --ownership filter--> live (owned)
    (desired, live) --make_plan--> plan --apply_plan--> results

Hazards this design exists to avoid (each has bitten flannel users):

1. Deleting state on a partial view.  The planner deletes every owned live
   object that is not desired, so it must only ever see a *complete* lease
   set.  The daemon gates on the first full snapshot and fails static while
   etcd is unreachable (flannel #636, Calico's "in sync" gate).
2. Touching what is not ours.  Ownership is applied at the read boundary
   (``ownership.py``); the planner never sees foreign objects.
3. Rewriting what is right.  Thousands of identical gateway routes cost
   real kernel time (docs/kernel-facts.md section 1): equal objects plan nothing.
4. Trusting a torn dump.  Backends retry NLM_F_DUMP_INTR and raise rather
   than return a partial dump, which would plan spurious creates.
5. One bad lease breaking the node.  A bad lease is skipped with its key and
   reason; everything else is still programmed.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from reconciler.core.config import NetworkConfig
from reconciler.core.desired import NodeParams, desired_state, find_own_lease
from reconciler.core.leases import Lease, RawKV, Skipped, validate_leases
from reconciler.core.model import KernelState
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.plan import Plan, make_plan
from reconciler.core.underlay_guard import UnderlayGuard

__all__ = ["Cycle", "compute_cycle", "dump_live", "on_link_predicate", "owned_devices"]


@dataclass(frozen=True)
class Cycle:
    """Everything one cycle computed, for rendering or applying."""

    config: NetworkConfig
    node: NodeParams
    own: Lease
    leases: tuple[Lease, ...]
    skipped: tuple[Skipped, ...]
    desired: KernelState
    live: KernelState
    plan: Plan

    def node_json(self) -> dict:
        out = {"public_ip": self.node.public_ip, "subnet": str(self.own.subnet)}
        if self.own.ipv6_subnet is not None:
            out["ipv6_subnet"] = str(self.own.ipv6_subnet)
        return out


def owned_devices(config: NetworkConfig, bridge: str | None = "cni0") -> tuple[str, ...]:
    """The device names a backend must dump for this config."""
    return tuple(sorted(FlannelOwnership(config, bridge).devices))


def dump_live(backend, config: NetworkConfig, bridge: str | None = "cni0") -> KernelState:
    """Dump what the ownership rules need: our devices, and every route into the network
    (so that foreign routes at the keys we want are seen and left alone)."""
    networks = [str(n) for n in (config.network, config.ipv6_network) if n is not None]
    return backend.dump(owned_devices(config, bridge), networks)


def on_link_predicate(prefixes: Sequence[str]) -> Callable[[str], bool]:
    """DirectRouting's "same L2 segment" test from the underlay's connected prefixes.

    flanneld asks the kernel for the route to each peer (``ip route get``)
    on every event; a peer inside one of the underlay interface's own
    prefixes is exactly the case where that answer has no gateway, and this
    costs nothing per peer.
    """
    nets = [ipaddress.ip_network(p, strict=False) for p in prefixes]

    def on_link(ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in nets)

    return on_link


def compute_cycle(
    config: NetworkConfig,
    kvs: Iterable[RawKV],
    prefix: str,
    node: NodeParams,
    live_dump: KernelState,
    on_link: Callable[[str], bool] | None = None,
    underlay_prefixes: Sequence[str] | None = None,
) -> Cycle:
    """Validate leases, build desired state, filter the live dump, and plan.

    ``underlay_prefixes`` (the underlay's connected prefixes, when known) and
    our PublicIP make the node facts that refuse a peer lease able to capture
    the underlay (``underlay_guard``); offline only our PublicIP is known.

    Raises ``NoOwnLease`` when no valid lease carries our PublicIP.
    """
    guard = UnderlayGuard.of(node.public_ip, config.network, underlay_prefixes or ())
    leases, skipped = validate_leases(config, kvs, prefix, guard)
    own = find_own_lease(leases, node.public_ip)
    desired = desired_state(config, leases, node, on_link or (lambda _ip: False))
    split = FlannelOwnership(config, node.bridge).split(live_dump)
    return Cycle(
        config=config,
        node=node,
        own=own,
        leases=tuple(leases),
        skipped=tuple(skipped),
        desired=desired,
        live=split.live,
        plan=make_plan(desired, split.live, split.foreign_routes, split.foreign_nexthops),
    )
