"""The agent's packet filter rules: written when our lease appears or changes, checked on a timer.

A pipeline of its own (``reconciler/rules``, docs/traffic-rules.md), kept
out of the reconcile cycle: the rules depend on the config and our own lease
only, and reading them back costs subprocesses, so they are never touched by
a peer's lease event.  ``RuleSync`` is mixed into ``daemon.Agent``, which
provides ``rules``, ``config``, ``opts``, ``metrics`` and the three
``_rules_*`` attributes.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from reconciler.core.config import NetworkConfig
from reconciler.core.errors import ReconcilerError

__all__ = ["RuleSync"]

log = logging.getLogger("flannel_reconciler")


class RuleSync:
    # Provided by ``daemon.Agent`` (see above).
    rules: Any
    config: NetworkConfig
    opts: Any
    metrics: Any
    _rules_lock: threading.Lock
    _rules_lease: Any
    _rules_error: str | None

    def _sync_rules(self, own_lease) -> None:
        """Plan and apply our packet filter rules (docs/traffic-rules.md).

        Runs when our lease first appears or changes (from the cycle) and
        every ``iptables_resync`` seconds (``_rules_loop``), like flanneld's
        5-second check, so a rule deleted by hand is back within one check.
        A failure is logged and retried; it never stops the netlink side.
        """
        if self.rules is None or own_lease is None:
            return
        from reconciler.rules import RuleFlags

        flags = RuleFlags(forward_rules=self.opts.forward_rules, ip_masq=self.opts.ip_masq,
                          masq_fully_random_disable=self.opts.masq_fully_random_disable)
        with self._rules_lock:
            first = self._rules_lease is None
            self._rules_lease = own_lease
            if first:
                for w in self.rules.startup_warnings(self.config):
                    log.warning("%s", w)
            try:
                plan = self.rules.plan(self.rules.desired(self.config, own_lease, flags))
            except ReconcilerError as exc:
                if str(exc) != self._rules_error:  # once per distinct problem, not every 5 s
                    log.error("rules: %s; retrying", exc)
                self._rules_error = str(exc)
                return
            self._rules_error = None
            warning = self.rules.forward_warning(self.config)
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

    def _rules_loop(self, stop: threading.Event) -> None:
        # flanneld checks its rules every --iptables-resync seconds.
        while not stop.wait(max(0.5, self.opts.iptables_resync)):
            try:
                self._sync_rules(self._rules_lease)
            except Exception:  # the loop must survive anything one check throws
                log.exception("rules check failed")
