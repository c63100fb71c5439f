"""The facts behind the health conditions (``core/health.py``), read from a backend.

A backend without ``sysctl``/``all_links`` (a test double) leaves those facts
unknown, which ``conditions`` counts as fine.  A failing read is unknown too:
health must never be the thing that stops the agent.
"""
from __future__ import annotations

from reconciler.core.config import NetworkConfig
from reconciler.core.desired import NodeParams
from reconciler.core.errors import ReconcilerError
from reconciler.core.health import DataPlaneFacts
from reconciler.core.model import KernelState

__all__ = ["forwarding", "observe", "twins"]


def forwarding(backend) -> bool | None:
    """``net.ipv4.ip_forward`` is 1 (None: cannot tell)."""
    read = getattr(backend, "sysctl", None)
    if read is None:
        return None
    try:
        value = read("net.ipv4.ip_forward")
    except (OSError, ReconcilerError):
        return None
    return None if value is None else value == "1"


def twins(backend, config: NetworkConfig) -> tuple[str, ...]:
    """VXLAN devices other than ours with our VNI and port: ``flannel.1`` renamed by hand keeps
    both, so the kernel refuses to create another (EEXIST on the VNI and port)."""
    read = getattr(backend, "all_links", None)
    if read is None:
        return ()
    try:
        links = read()
    except (OSError, ReconcilerError):
        return ()
    return tuple(sorted(link.name for link in links
                        if link.type == "vxlan" and link.name != config.device_name
                        and link.vni == config.vni and link.port == config.port))


def observe(backend, config: NetworkConfig, node: NodeParams, live: KernelState, desired: KernelState,
            underlay=None, local: str | None = None, planned_mtu: int | None = None) -> DataPlaneFacts:
    """The facts for ``conditions``: ``live`` is the (believed or dumped) owned kernel state after
    the cycle, ``desired`` what it should be, ``underlay`` the ``Underlay`` read now (or None),
    ``local`` the underlay address the device and our lease carry (None: not one of the
    underlay's, as with a NAT'd ``--public-ip``: not checked)."""
    dev = config.device_name
    present = live.get("link", dev) is not None
    bridge_route = None
    bridge_subnet = None
    if node.bridge is not None:
        want = [r for r in desired.of("route").values() if r.dev == node.bridge and r.gateway is None]
        if want:
            bridge_subnet = want[0].dst
            bridge_route = live.get("route", want[0].key) is not None
    return DataPlaneFacts(
        device=dev, device_present=present, twins=() if present else twins(backend, config),
        forwarding=forwarding(backend),
        underlay=underlay.name if underlay is not None else node.underlay,
        underlay_addresses=_addresses(underlay),
        local=local if underlay is not None else None,
        underlay_mtu=underlay.mtu if underlay is not None else None,
        planned_mtu=planned_mtu,
        bridge=node.bridge, bridge_route=bridge_route, bridge_subnet=bridge_subnet,
    )


def _addresses(underlay) -> tuple[str, ...] | None:
    if underlay is None:
        return None
    return tuple(underlay.addresses) or ((underlay.address,) if underlay.address else ())
