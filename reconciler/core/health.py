"""Can this node forward pod traffic?  Conditions decided from observed facts, purely.

The plan says whether the kernel holds what we want; it cannot say that
the node forwards: ``net.ipv4.ip_forward`` is off, our device was renamed
by hand (so ``flannel.1`` cannot be created: the VNI and port are taken),
the underlay's address or MTU is no longer what the device and our lease
say.  Each such fact is a ``Condition``: ``/readyz`` is 503 while one
fails, each has a gauge, and ``show`` prints them (README, fault table).

The facts are read by the shell (the agent, ``show``); this module only
decides, so the tests drive it with plain values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

__all__ = ["CONDITIONS", "Condition", "DataPlaneFacts", "conditions", "failing"]

#: Every condition, in the order they are reported (the gauge's fixed label set).
CONDITIONS = ("vxlan-device", "forwarding", "underlay-address", "underlay-mtu", "bridge-route")


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DataPlaneFacts:
    """What was observed, and what the device and our lease say.  ``None``: not known (not checked)."""

    device: str
    #: Our VXLAN device exists under its name.
    device_present: bool | None = None
    #: Other VXLAN devices carrying our VNI and port (``flannel.1`` renamed by hand).
    twins: tuple[str, ...] = ()
    #: ``net.ipv4.ip_forward`` is 1.
    forwarding: bool | None = None
    underlay: str | None = None
    #: The underlay's IPv4 addresses now, and the one the device's ``local`` and our lease carry.
    underlay_addresses: tuple[str, ...] | None = None
    local: str | None = None
    #: The underlay's MTU now, and the one the device's MTU was derived from.
    underlay_mtu: int | None = None
    planned_mtu: int | None = None
    #: The bridge's connected route: present (ours or the kernel's).
    bridge: str | None = None
    bridge_route: bool | None = None
    bridge_subnet: str | None = None


def conditions(f: DataPlaneFacts) -> tuple[Condition, ...]:
    """One ``Condition`` per name in ``CONDITIONS``; an unknown fact counts as fine."""
    out = []
    if f.device_present is False:
        if f.twins:
            why = (f"{f.device} is missing and cannot be created: {', '.join(f.twins)} holds its VNI and port "
                   f"(renamed by hand?); delete or rename it back to {f.device}")
        else:
            why = f"{f.device} is missing"
        out.append(Condition("vxlan-device", False, why))
    else:
        out.append(Condition("vxlan-device", True))
    if f.forwarding is False:
        out.append(Condition("forwarding", False, "net.ipv4.ip_forward is 0: pod traffic is not forwarded "
                                                  "(sysctl -w net.ipv4.ip_forward=1)"))
    else:
        out.append(Condition("forwarding", True))
    if f.underlay_addresses is not None and f.local is not None and f.local not in f.underlay_addresses:
        now = ", ".join(f.underlay_addresses) or "no IPv4 address"
        out.append(Condition("underlay-address", False,
                             f"the underlay {f.underlay} now has {now}, but {f.device}'s local and our lease "
                             f"say {f.local}: peers send to an address this node no longer has"))
    else:
        out.append(Condition("underlay-address", True))
    if f.underlay_mtu is not None and f.planned_mtu is not None and f.underlay_mtu < f.planned_mtu:
        out.append(Condition("underlay-mtu", False,
                             f"the underlay {f.underlay}'s MTU is {f.underlay_mtu}, below the {f.planned_mtu} "
                             f"{f.device}'s MTU was derived from: large packets are dropped"))
    else:
        out.append(Condition("underlay-mtu", True))
    if f.bridge_route is False:
        out.append(Condition("bridge-route", False,
                             f"{f.bridge} has no route to {f.bridge_subnet}: local pods are cut off"))
    else:
        out.append(Condition("bridge-route", True))
    return tuple(out)


def failing(conds: Iterable[Condition]) -> list[Condition]:
    return [c for c in conds if not c.ok]
