"""The agent's packet filter rules: written when our lease appears or changes, checked on a timer.

A pipeline of its own (``reconciler/rules``, docs/traffic-rules.md), kept
out of the reconcile cycle: the rules depend on the config and our own lease
only, and reading them back costs subprocesses, so they are never touched by
a peer's lease event.  ``RuleSync`` is a part of ``daemon.Agent`` with its
own lock and state; what it needs is given to it: the rule reconciler, the
agent's options and metrics at construction, the network config and our own
lease at each call.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from reconciler.core.config import NetworkConfig
from reconciler.core.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.agent.metrics import Metrics

__all__ = ["RuleSync"]

log = logging.getLogger("flannel_reconciler")


class RuleSync:
    """``rules``: a ``RuleReconciler``, or None (rules not managed, as in tests whose backend
    is not a real kernel).  ``opts``: the agent's options (the rule flags, ``iptables_resync``)."""

    def __init__(self, rules: Any, opts: Any, metrics: Metrics) -> None:
        self.rules = rules
        self.opts = opts
        self.metrics = metrics
        # The cycle (the worker) and the rules thread both sync: one at a time.
        self._rules_lock = threading.Lock()
        #: The own lease the rules were last built from (None: not yet).
        self.lease: Any = None
        self._rules_error: str | None = None

    def due(self, own_lease) -> bool:
        """Whether the cycle should sync now: rules are managed and our lease first appeared or
        changed (the rules depend on it and the config only)."""
        return self.rules is not None and own_lease != self.lease

    def sync(self, config: NetworkConfig, own_lease) -> None:
        """Plan and apply our packet filter rules (docs/traffic-rules.md).

        Runs when our lease first appears or changes (from the cycle) and
        every ``iptables_resync`` seconds (``loop``), like flanneld's
        5-second check, so a rule deleted by hand is back within one check.
        A failure is logged and retried; it never stops the netlink side.
        """
        if self.rules is None or own_lease is None:
            return
        from reconciler.rules import RuleFlags

        flags = RuleFlags(forward_rules=self.opts.forward_rules, ip_masq=self.opts.ip_masq,
                          masq_fully_random_disable=self.opts.masq_fully_random_disable)
        with self._rules_lock:
            first = self.lease is None
            self.lease = own_lease
            if first:
                for w in self.rules.startup_warnings(config):
                    log.warning("%s", w)
            try:
                plan = self.rules.plan(self.rules.desired(config, own_lease, flags))
            except ReconcilerError as exc:
                if str(exc) != self._rules_error:  # once per distinct problem, not every 5 s
                    log.error("rules: %s; retrying", exc)
                self._rules_error = str(exc)
                return
            self._rules_error = None
            warning = self.rules.forward_warning(config)
            if warning and first:
                log.warning("%s", warning)
            if plan.in_sync:
                return
            results = self.rules.apply(plan)
        failed = [r for r in results if not r.ok]
        for r in results:
            self.metrics.inc("flannel_reconciler_operations_total", kind="rule", op=r.change.op,
                             result="ok" if r.ok else "error")
            if r.ok:
                log.info("rules: %s %s", {"create": "+", "update": "~", "delete": "-"}[r.change.op],
                         r.change.obj.describe())
        for r in failed:
            log.error("failed: %s", r.message)
        s = plan.summary()
        log.info("rules create=%d update=%d delete=%d failed=%d", s["create"], s["update"], s["delete"],
                 len(failed))

    def loop(self, stop: threading.Event, config: NetworkConfig) -> None:
        """The rules thread: flanneld checks its rules every --iptables-resync seconds."""
        while not stop.wait(max(0.5, self.opts.iptables_resync)):
            try:
                self.sync(config, self.lease)
            except Exception:  # the loop must survive anything one check throws
                log.exception("rules check failed")
