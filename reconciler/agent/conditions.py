"""The agent's data-plane health: facts read after each full cycle, conditions, repairs.

A part of ``Agent`` (``agent.health``).  What is decided is pure
(``core/health.py``); what is read is in ``kernel/facts.py``.  Here: what to
read, which repair is due, what to say.  The repairs themselves change the
agent's node parameters and desired state, so the agent carries them out
(``Agent._follow_underlay_mtu`` and ``_follow_underlay_address``).

* Read after every cycle that dumped the kernel (the resync, a device
  change, lost notifications): the underlay's address and MTU and
  ``ip_forward`` send no notification the agent subscribes to, so a change
  there is seen within one ``--resync-interval``.
* Repaired, as desired state: the underlay's MTU, when it is where the
  device's MTU comes from (no ``--underlay-mtu``, no ``Backend.MTU``): the
  devices and ``FLANNEL_MTU`` follow it.  cni0's connected route is desired
  state anyway (``core/desired.py``).
* Repaired too: the underlay's address, when our PublicIP is the underlay's
  own address (no ``--public-ip``) and it moved: the new one becomes our
  PublicIP, our lease is rewritten in place by the keeper (same key, same
  subnet) and the device re-created with the new ``local``.
* Reported only: ``ip_forward`` off (the node's policy, not ours), our device
  renamed by hand (the name is ours, the renamed device is not: we cannot
  know who renamed it and why), an underlay with no IPv4 address at all.
"""
from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler.core.desired import NodeParams
from reconciler.core.errors import ReconcilerError
from reconciler.core.health import Condition, conditions, failing
from reconciler.core.model import KernelState
from reconciler.kernel import facts
from reconciler.kernel.netlink import Underlay
from reconciler.kernel.netlink.common import UnderlaySpec

if TYPE_CHECKING:
    from reconciler.agent.metrics import Metrics
    from reconciler.core.config import NetworkConfig

__all__ = ["DataPlaneHealth", "Moves"]

log = logging.getLogger("flannel_reconciler")


@dataclass(frozen=True)
class Moves:
    """What the underlay did that the agent follows: its MTU (when the device MTU comes from
    it) and its address (when our PublicIP is the underlay's own address)."""

    mtu: int | None = None
    address: bool = False


class DataPlaneHealth:
    """The data-plane conditions of one agent, read after each full cycle."""

    def __init__(self, backend: Any, metrics: "Metrics", ready: Any) -> None:
        self._backend = backend
        self._metrics = metrics
        self._ready = ready     # ``.ready``: the first full sync is done (the agent's state)
        #: The underlay address our device's ``local`` and our lease carry, when it is the
        #: underlay's own (not a NAT'd --public-ip); None: not checked.
        self.local: str | None = None
        #: The device MTU follows the underlay's (no --underlay-mtu, no Backend.MTU).
        self.mtu_follows_underlay = False
        #: The conditions of the last check.
        self.now: tuple[Condition, ...] = ()

    def start(self, public_ip: str, underlay: Underlay, mtu_fixed: bool) -> None:
        """At start-up: what is checked, from the underlay as found (without it, neither the
        underlay's address nor its MTU is followed: an agent driven by the tests)."""
        self.local = public_ip if public_ip in (underlay.addresses or (underlay.address,)) else None
        self.mtu_follows_underlay = not mtu_fixed

    def read_underlay(self, node: NodeParams) -> Underlay | None:
        read = getattr(self._backend, "underlay", None)
        if not node.underlay or read is None:
            return None
        try:
            underlay: Underlay = read(UnderlaySpec(ifaces=(node.underlay,)))
            return underlay
        except (ReconcilerError, OSError) as exc:
            if getattr(exc, "errno", None) == errno.EADDRNOTAVAIL:
                # It holds no usable IPv4 address: certainly not ours (MTU: not known, not judged).
                return Underlay(name=node.underlay, address="", mtu=node.underlay_mtu)
            log.warning("cannot read the underlay %s: %s; retrying at the next resync", node.underlay, exc)
            return None

    def moves(self, node: NodeParams, underlay: Underlay | None, public_ip_given: bool) -> Moves:
        """Which of the underlay's changes the agent must follow now."""
        if underlay is None:
            return Moves()
        mtu = underlay.mtu if self.mtu_follows_underlay and underlay.mtu != node.underlay_mtu else None
        moved = bool(underlay.address and self.local is not None and not public_ip_given
                     and self.local not in (underlay.addresses or (underlay.address,)))
        return Moves(mtu, moved)

    def publish(self, config: "NetworkConfig", node: NodeParams, believed: KernelState, desired: KernelState,
                underlay: Underlay | None) -> None:
        """Read the facts and publish the conditions they give."""
        found = facts.observe(self._backend, config, node, believed, desired, underlay, self.local,
                              node.underlay_mtu)
        self._set(conditions(found))

    def _set(self, conds: tuple[Condition, ...]) -> None:
        before = {c.name: c for c in self.now}
        for c in conds:
            old = before.get(c.name)
            if not c.ok and (old is None or old.ok or old.reason != c.reason):
                log.error("not ready: %s: %s", c.name, c.reason)
            elif c.ok and old is not None and not old.ok:
                log.info("%s: fine again", c.name)
            self._metrics.set("flannel_reconciler_condition", 1 if c.ok else 0, condition=c.name)
        self.now = conds
        self._metrics.set("flannel_reconciler_ready", 1 if self._ready.ready and not failing(conds) else 0)

    def failing(self) -> list[Condition]:
        return failing(self.now)
