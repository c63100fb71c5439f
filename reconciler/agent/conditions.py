"""The agent's data-plane health: facts read after each full cycle, conditions, repairs.

A mixin of ``Agent``, so the daemon's loop only calls
``_check_data_plane()``.  What is decided is pure (``core/health.py``);
what is read is in ``kernel/facts.py``.  Here: when to read, what to repair,
what to say.

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

import dataclasses
import errno
import logging

from reconciler.core.errors import ReconcilerError
from reconciler.core.health import Condition, conditions, failing
from reconciler.core.underlay_guard import UnderlayGuard
from reconciler.kernel import facts
from reconciler.kernel.netlink import Underlay
from reconciler.kernel.netlink.common import UnderlaySpec

__all__ = ["DataPlaneHealth"]

log = logging.getLogger("flannel_reconciler")


class DataPlaneHealth:
    """Needs from the agent: ``backend``, ``config``, ``node``, ``desired``, ``tracker``, ``index``,
    ``keeper``, ``metrics``, ``opts``, ``state``, ``_mark``, ``_pin_changes``."""

    #: The underlay address our device's ``local`` and our lease carry, when it is the
    #: underlay's own (not a NAT'd --public-ip); None: not checked.
    _health_local: str | None = None
    #: The device MTU follows the underlay's (no --underlay-mtu, no Backend.MTU).
    _mtu_follows_underlay: bool = False
    conditions_now: tuple[Condition, ...] = ()

    def _init_health(self, underlay) -> None:
        public_ip = self.node.public_ip
        self._health_local = public_ip if public_ip in (underlay.addresses or (underlay.address,)) else None
        self._mtu_follows_underlay = not (self.opts.underlay_mtu or self.config.mtu)

    def _read_underlay(self):
        read = getattr(self.backend, "underlay", None)
        if not self.node.underlay or read is None:
            return None
        try:
            return read(UnderlaySpec(ifaces=(self.node.underlay,)))
        except (ReconcilerError, OSError) as exc:
            if getattr(exc, "errno", None) == errno.EADDRNOTAVAIL:
                # It holds no usable IPv4 address: certainly not ours (MTU: not known, not judged).
                return Underlay(name=self.node.underlay, address="", mtu=self.node.underlay_mtu)
            log.warning("cannot read the underlay %s: %s; retrying at the next resync", self.node.underlay, exc)
            return None

    def _check_data_plane(self) -> None:
        """Read the facts, repair what is ours to repair, and publish the conditions."""
        underlay = self._read_underlay()
        if underlay is not None and self._mtu_follows_underlay and underlay.mtu != self.node.underlay_mtu:
            self._follow_underlay_mtu(underlay.mtu)
        if (underlay is not None and underlay.address and self._health_local is not None
                and not self.opts.public_ip and self._health_local not in (underlay.addresses or (underlay.address,))):
            self._follow_underlay_address(underlay)
        found = facts.observe(self.backend, self.config, self.node, self.tracker.live, self.desired.state,
                              underlay, self._health_local, self.node.underlay_mtu)
        self._set_conditions(conditions(found))

    def _follow_underlay_mtu(self, mtu: int) -> None:
        log.warning("the underlay %s's MTU is now %d (was %d): %s and %s follow it", self.node.underlay, mtu,
                    self.node.underlay_mtu, self.config.device_name, self.opts.subnet_file)
        self.node = dataclasses.replace(self.node, underlay_mtu=mtu)
        self.desired.node = self.node
        if self.desired.own_key is not None:
            # The MTU is in our own lease's objects only (the devices); the next cycle writes them.
            self.tracker.dirty |= self.desired.update(self.index, {self.desired.own_key})
        self._mark("underlay")

    def _follow_underlay_address(self, underlay) -> None:
        """Our PublicIP was the underlay's address and that address is gone: the new one becomes
        our PublicIP.  The device is re-created with it as ``local`` (an immutable attribute) once
        our lease, rewritten in place by the keeper through the usual lease check, says so."""
        old, new = self.node.public_ip, underlay.address
        log.warning("the underlay %s's address moved from %s to %s: re-advertising our lease with it and "
                    "re-creating %s with local %s", underlay.name, old, new, self.config.device_name, new)
        self.node = dataclasses.replace(self.node, public_ip=new)
        self.desired.node = self.node
        self._health_local = new
        # The node facts the lease checks use changed too (underlay_guard).
        self._pin_changes |= self.index.set_guard(UnderlayGuard.of(new, self.config.network, underlay.prefixes))
        if self.desired.own_key is not None:
            self._pin_changes.add(self.desired.own_key)
        if self.keeper is not None:
            self.keeper.update_public_ip(new)
            self.state.check_own_lease = True
        self._mark("underlay")

    def _set_conditions(self, conds: tuple[Condition, ...]) -> None:
        before = {c.name: c for c in self.conditions_now}
        for c in conds:
            old = before.get(c.name)
            if not c.ok and (old is None or old.ok or old.reason != c.reason):
                log.error("not ready: %s: %s", c.name, c.reason)
            elif c.ok and old is not None and not old.ok:
                log.info("%s: fine again", c.name)
            self.metrics.set("flannel_reconciler_condition", 1 if c.ok else 0, condition=c.name)
        self.conditions_now = conds
        self.metrics.set("flannel_reconciler_ready", 1 if self.state.ready and not failing(conds) else 0)

    def _failing_conditions(self) -> list[Condition]:
        return failing(self.conditions_now)

