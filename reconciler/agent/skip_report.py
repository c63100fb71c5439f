"""Lease-skip reporting: what the log and the metrics say about leases left out.

A lease is skipped when it cannot be used (a value that does not parse, a
subnet outside the network, a second lease for our PublicIP...; see
``core/leases.py`` and ``LeaseIndex``).  Its standing is logged when it
changes, never again while it stays the same; the skip gauges count the
skipped leases by a reason label of a few fixed words.  etcd's content is
anyone's with write access, so it must not flood the log: at most
``SKIP_LINES`` skipped leases are named per ``SKIP_WINDOW`` seconds and the
rest of a burst is one summary line per window.

The worker alone calls it, once per cycle with the keys that changed.
"""
from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Callable

from reconciler.agent.metrics import SKIP_REASONS, skip_reason_label
from reconciler.core.logtext import esc

if TYPE_CHECKING:
    from reconciler.agent.metrics import Metrics
    from reconciler.incremental.lease_index import LeaseIndex

__all__ = ["SKIP_LINES", "SKIP_WINDOW", "SkipReport"]

log = logging.getLogger("flannel_reconciler")

#: Skipped leases logged one by one per window; the rest of a burst is one summary line per window.
SKIP_LINES = 20
SKIP_WINDOW = 10.0


class SkipReport:
    """The skip log's rate limit and the skip gauges' counts (``metrics``: the agent's)."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float]) -> None:
        self.metrics = metrics
        self.clock = clock
        self._skip_labels: dict[str, str] = {}
        self._skip_counts: collections.Counter = collections.Counter()
        self._skips_exported: tuple = ()      # the counts flannel_reconciler_leases_skipped shows
        self._own_ip_dups: set[str] = set()
        self._skip_window = float("-inf")   # skip-log rate limit: window start, lines in it, the rest
        self._skip_logged = 0
        self._skip_suppressed: collections.Counter = collections.Counter()

    def report(self, index: LeaseIndex, changed: set[str], public_ip: str) -> None:
        """Log a lease's standing when it changes (never again while it stays the same), and keep
        the skip gauges, whose reason label is one of a few fixed words.

        At most ``SKIP_LINES`` skipped leases are logged one by one per ``SKIP_WINDOW``
        seconds; the rest of a burst (someone writing thousands of junk keys) is counted and
        said in one summary line per window, so etcd content cannot flood the log."""
        now = self.clock()
        for key in sorted(changed):
            old = self._skip_labels.pop(key, None)
            if old is not None:
                self._skip_counts[old] -= 1
            self._own_ip_dups.discard(key)
            skip = index.skipped.get(key)
            if skip is not None:
                label = skip_reason_label(skip.reason)
                self._skip_labels[key] = label
                self._skip_counts[label] += 1
                parsed = index.parsed(key)
                if parsed is not None and parsed.public_ip == public_ip:
                    # Two leases for one node: ours is the one we keep alive; say so loudly.
                    self._own_ip_dups.add(key)
                    log.error("lease %s also carries our PublicIP %s; this node keeps %s and ignores it "
                              "(delete the one you do not want)", esc(key), public_ip,
                              esc(index.pinned))
                else:
                    if now - self._skip_window >= SKIP_WINDOW:
                        self.flush(now)
                    if self._skip_logged < SKIP_LINES:
                        self._skip_logged += 1
                        log.warning("skipped lease %s: %s", esc(key), esc(skip.reason))
                    else:
                        self._skip_suppressed[label] += 1
            elif old is not None and key in index.valid:
                log.info("lease %s is valid again", esc(key))
        if self._skip_suppressed and now - self._skip_window >= SKIP_WINDOW:
            self.flush(now)
        if changed:
            self.metrics.set("flannel_reconciler_own_public_ip_duplicates", len(self._own_ip_dups))
            self.metrics.set("flannel_reconciler_leases", len(index.valid))
            # Every reason, 0s included, so a scrape never sees one missing or briefly 0; and
            # only when a count moved: ten metric calls would be a tenth of a lease event's cycle.
            skips = tuple(self._skip_counts[label] for label in SKIP_REASONS)
            if skips != self._skips_exported:
                self._skips_exported = skips
                for label, n in zip(SKIP_REASONS, skips):
                    self.metrics.set("flannel_reconciler_leases_skipped", n, reason=label)

    def flush(self, now: float, new_window: bool = True) -> None:
        """Say the rest of the window's burst in one line, and (unless ``new_window`` is False)
        start a new window."""
        if self._skip_suppressed:
            log.warning("skipped %d more leases in the last %.0fs (%s); not named one by one",
                        sum(self._skip_suppressed.values()), now - self._skip_window,
                        ", ".join(f"{k}={v}" for k, v in sorted(self._skip_suppressed.items())))
            self._skip_suppressed.clear()
        if new_window:
            self._skip_window, self._skip_logged = now, 0

    def after_full_cycle(self, index: LeaseIndex) -> None:
        """A full cycle (a resync) says what the rate limit held back, and how many leases are
        skipped for which reasons."""
        if self._skip_suppressed:
            # Said now, but the window goes on: a resync every few seconds must not let another
            # SKIP_LINES names through each time.
            self.flush(self.clock(), new_window=False)
        if index.skipped:
            log.info("%d leases skipped (%s)", len(index.skipped),
                     ", ".join(f"{k}={v}" for k, v in sorted(self._skip_counts.items()) if v))
