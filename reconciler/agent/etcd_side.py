"""The agent's etcd side: the watch thread and the etcd thread.

* The **watch** thread (``watch_loop``) reads ``<prefix>/subnets/`` and queues
  what it sees on the agent's ``Inbox``: single events, or a whole listing
  (``relist``) after a compaction or an outage.  It never talks to the kernel.
* The **etcd** thread (``etcd_loop``) makes every other etcd call: the lease
  keeper (keepalives, re-asserting or writing back our key), the config check
  and the probe a held-back deletion asks for.  It posts what it learns and
  never blocks the worker: a hung etcd must not stop drift repair.

Both keep what the worker needs to know about etcd: whether it is up and
when it last answered (``deletions_trusted``), and whether its history went
back (a wiped data dir, a restored backup, another cluster) and has not
settled (``rollback_active``; docs/incremental.md, "etcd going back").  The
worker is woken through ``mark``, the agent's trigger.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable

from reconciler.core.config import NetworkConfig, parse_network_config
from reconciler.core.errors import EtcdCompacted, EtcdError, EtcdRolledBack, ReconcilerError
from reconciler.core.logtext import esc

if TYPE_CHECKING:
    from reconciler.agent.acquire import Acquired, LeaseKeeper
    from reconciler.core.leases import RawKV
    from reconciler.agent.inbox import Inbox
    from reconciler.agent.metrics import Metrics
    from reconciler.agent.sdnotify import Notifier

__all__ = ["EtcdSide", "FRESH"]

log = logging.getLogger("flannel_reconciler")

#: A deletion needs etcd to have answered within this many seconds (docs/incremental.md).
FRESH = 1.0


class EtcdSide:
    """``state``: the agent's shared state (``etcd_ok`` and ``check_own_lease`` are written
    here); ``mark``: wakes the worker with a trigger.  ``config`` and ``keeper`` are set by the
    agent's start-up, before either thread runs."""

    def __init__(self, store, opts: Any, clock: Callable[[], float], metrics: Metrics, notifier: Notifier,
                 state: Any, inbox: Inbox, mark: Callable[[str], None]) -> None:
        self.store = store
        self.opts = opts
        self.clock = clock
        self.metrics = metrics
        self.notifier = notifier
        self.state = state
        self.inbox = inbox
        self._mark = mark
        self.config: NetworkConfig
        self.keeper: LeaseKeeper | None = None
        self._revision = 0
        self._last_etcd_answer = 0.0  # monotonic time of the last watch event, listing or probe
        # The etcd thread: woken for a probe or an own-lease check, posts "etcd" to the worker.
        self.wake = threading.Event()
        self._probe_wanted = False
        self._relist_lock = threading.Lock()
        self._cluster_id = 0          # etcd's cluster id as first listed (0: not known)
        self._config_missing = False
        self._config_warned: str | None = None
        # etcd's history went back (docs/incremental.md, "etcd going back"): why, whether the
        # listing after it was folded in, until when deletions stay held, our key re-asserted.
        self._rollback: str | None = None
        self._rollback_listed = False
        self._rollback_until = 0.0
        self._rollback_reasserted = False
        self._overwrites_seen: collections.Counter = collections.Counter()
        # Start-up: the keys acquisition wrote, until the watch brings each write back
        # (``await_echo``; None until acquisition said which), and the keys the watch brought
        # before that (it runs from the start-up listing on, before acquisition writes).
        self._echo_keys: set[str] | None = None
        self._early_keys: set[str] = set()
        self._echo_lock = threading.Lock()
        self.echo = threading.Event()
        #: Set once etcd has registered the watch (its "created" answer).
        self.watching = threading.Event()

    def first_listing(self):
        """The start-up listing, returned for the agent to fold into its lease index at once
        (rather than queued), so that the VTEP MAC choice and acquisition read it already
        parsed; the watch starts from its revision + 1, so every change after it
        (acquisition's own writes included) arrives (docs/incremental.md, "Start-up")."""
        with self._relist_lock:
            snap = self.store.snapshot()
            self._cluster_id = snap.cluster_id or self._cluster_id
            self._revision = snap.revision
        self._heard_from_etcd()
        return snap

    def await_echo(self, listed: RawKV | None, acquired: Acquired) -> None:
        """Acquisition wrote after the start-up listing: our key (unless it found it as it wants
        it) and the deletion of our leases that no longer fit.  The first cycle waits for the
        watch to bring those writes back (``echo``), so it sees what a listing taken after
        acquisition would show, without a second listing."""
        keys = set(acquired.deleted)
        if listed is None or listed.value != acquired.value or listed.lease != acquired.lease_id:
            keys.add(acquired.key)
        with self._echo_lock:
            # The watch may have brought them already: it started before acquisition wrote.
            keys -= self._early_keys
            self._echo_keys, self._early_keys = keys, set()
        if not keys:
            self.echo.set()

    def _echo_of(self, key: str) -> None:
        """The watch brought a put or delete of ``key`` while the start-up still waits for echoes."""
        with self._echo_lock:
            if self._echo_keys is None:
                self._early_keys.add(key)
            elif key in self._echo_keys:
                self._echo_keys.discard(key)
                if not self._echo_keys:
                    self.echo.set()

    def _is_echo(self, ev) -> bool:
        """A put of exactly the lease the keeper holds (our own write coming back): nothing to check."""
        cur = self.keeper.current if self.keeper is not None else None
        return (cur is not None and ev.type == "put" and ev.kv.value == cur.value
                and ev.kv.lease == cur.lease_id)

    def relist(self, checked: bool = False) -> None:
        """A complete listing, queued for the worker as one item (it replaces the table).

        A listing below a revision already seen, or from another cluster, is etcd's history
        gone back (unless the caller ``checked`` that already): said, and the table it gives
        is not trusted for deletions until it settled (``_etcd_went_back``)."""
        with self._relist_lock:
            seen = self._revision   # read first: a linearizable listing is never below what was seen before it
            snap = self.store.snapshot()
            if not checked:
                if self._cluster_id and snap.cluster_id and snap.cluster_id != self._cluster_id:
                    self._etcd_went_back(f"etcd is another cluster now (cluster id {snap.cluster_id:x}, "
                                         f"was {self._cluster_id:x})")
                elif snap.revision < seen:
                    self._etcd_went_back(f"etcd is at revision {snap.revision}, below revision {seen} already seen")
            self._cluster_id = snap.cluster_id or self._cluster_id
            base = self.store.subnets_prefix
            kvs = [kv for kv in snap.kvs if kv.key.startswith(base)]
            self._revision = snap.revision
            self.inbox.put_listing(kvs, self.clock(), snap.revision, self._rollback is not None)
            with self._echo_lock:
                if self._echo_keys is not None:
                    self.echo.set()     # a listing after acquisition shows its writes: nothing left to wait for
        self._heard_from_etcd()
        self._mark("relist")

    def _etcd_went_back(self, why: str) -> None:
        """etcd lost history (a wiped data dir, a restored backup, another cluster): a watch
        waiting for our old revision would wait forever, our key may be gone, and what is
        missing from the new listing may only be missing for now.  Said once, counted and
        shown (/readyz, a gauge); the caller re-lists; our key is re-asserted at once; and
        deletions wait until the new listing is folded in, our key is back and
        ``rollback_settle`` has passed (docs/incremental.md, "etcd going back")."""
        if self._rollback is not None and not self._rollback_listed:
            self.want_own_lease_check()
            return      # the same one, seen again before its listing is in: said once
        log.error("etcd went back in time: %s (wiped or restored from a backup?); re-listing, re-asserting "
                  "our lease, deleting nothing for %.0fs; the kernel is left as it is", why,
                  self.opts.rollback_settle)
        self.metrics.inc("flannel_reconciler_etcd_rollbacks_total")
        self.metrics.set("flannel_reconciler_etcd_revision_backwards", 1)
        self._rollback_listed = False
        self._rollback_reasserted = False
        self._rollback = why
        self.want_own_lease_check()

    def rollback_active(self) -> bool:
        """True while a history gone back is not settled (the readiness condition)."""
        if self._rollback is None:
            return False
        if self._rollback_listed and self._rollback_reasserted and self.clock() >= self._rollback_until:
            log.info("etcd settled after going back (%s): deletions allowed again", self._rollback)
            self._rollback = None
            self.metrics.set("flannel_reconciler_etcd_revision_backwards", 0)
            return False
        return True

    def want_own_lease_check(self) -> None:
        """Ask the etcd thread to check our key now (a watch event on it, no own lease in the
        table, etcd gone back)."""
        self.state.check_own_lease = True
        self.wake.set()

    def _heard_from_etcd(self) -> None:
        self._last_etcd_answer = self.clock()
        if not self.state.etcd_ok:
            self.set_etcd_ok(True)

    def watch_loop(self, stop: threading.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                # A liveness read every 5 s of silence: a hung etcd is noticed within
                # ~10 s (probe + timeout), and reported through health at once.
                for ev in self.store.watch(self._revision + 1, stop, progress_interval=5.0,
                                           health=self._on_etcd_health, cluster_id=self._cluster_id,
                                           created=self.watching.set):
                    self.inbox.put_event(ev, self.clock())
                    self._revision = max(self._revision, ev.revision)
                    self._heard_from_etcd()
                    if self.keeper is not None and ev.kv.key == self.keeper.current.key and not self._is_echo(ev):
                        self.want_own_lease_check()
                    if not self.echo.is_set():
                        self._echo_of(ev.kv.key)
                    # In a storm the worker is mostly already woken for "lease": the lock and the
                    # Event's condition per event were a fifth of this thread's CPU.  Safe without
                    # the lock: the worker swaps the trigger set before it drains the queue, so an
                    # event appended above is folded in by the cycle that "lease" is pending for.
                    if "lease" not in self.state.triggers or not self.state.wake.is_set():
                        self._mark("lease")
                    backoff = 0.1
                return
            except EtcdRolledBack as exc:
                if exc.seen > self._revision:
                    continue    # a listing already went back below what this watch saw: resume from it
                self._etcd_went_back(str(exc))
                self.metrics.inc("flannel_reconciler_etcd_watch_restarts_total", reason="rolled-back")
                if not self._try_relist(stop, checked=True):
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
            except EtcdCompacted as exc:
                # Our resume point is gone from history: re-list and diff the
                # whole state (never flanneld's hot loop, flannel #2470).
                log.warning("lease watch: %s; re-listing", exc)
                self.metrics.inc("flannel_reconciler_etcd_watch_restarts_total", reason="compacted")
                self._try_relist(stop)
            except ReconcilerError as exc:
                self.set_etcd_ok(False)
                log.warning("lease watch: %s; failing static, retrying in %.1fs", exc, backoff)
                self.metrics.inc("flannel_reconciler_etcd_watch_restarts_total", reason="error")
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                self._try_relist(stop)

    def _on_etcd_health(self, ok: bool) -> None:
        if ok:
            self._heard_from_etcd()
        else:
            self.set_etcd_ok(False)

    def _try_relist(self, stop: threading.Event, checked: bool = False) -> bool:
        try:
            self.relist(checked)
        except ReconcilerError as exc:
            self.set_etcd_ok(False)
            log.warning("re-list failed: %s", exc)
            return False
        return True

    def set_etcd_ok(self, ok: bool) -> None:
        if ok != self.state.etcd_ok:  # log transitions only
            log.warning("etcd %s", "reachable again" if ok else "unreachable: failing static (no deletions)")
            self.notifier.status("etcd reachable again" if ok else "etcd unreachable: failing static (no deletions)")
        self.state.etcd_ok = ok
        self.metrics.set("flannel_reconciler_etcd_up", 1 if ok else 0)

    def etcd_loop(self, stop: threading.Event) -> None:
        """Every etcd call but the watch and the listings, off the worker: a hung etcd blocks
        this thread for up to the store's timeout per call, never the kernel side.  It runs
        the lease keeper (when due, or at once when asked), checks the config every resync
        interval, and answers a held-back deletion's request for a probe."""
        next_config = self.clock() + self.opts.resync_interval
        own_retry_at, own_backoff = 0.0, 1.0
        while not stop.is_set():
            now = self.clock()
            due = min(next_config, self.keeper.next_due if self.keeper is not None else next_config)
            if self.state.check_own_lease:
                due = min(due, own_retry_at)
            if self._probe_wanted:
                due = now
            # Real seconds for the wait; capped so that a fake clock in a test still moves things along.
            self.wake.wait(min(max(0.0, due - now), 1.0))
            self.wake.clear()
            if stop.is_set():
                return
            now = self.clock()
            try:
                if self._probe_wanted:
                    self._probe_wanted = False
                    self._probe()
                if self.keeper is not None and ((self.state.check_own_lease and now >= own_retry_at)
                                                or now >= self.keeper.next_due):
                    if self._keep_lease():
                        own_backoff = 1.0
                    else:       # never a tight loop while etcd is away
                        own_retry_at, own_backoff = now + own_backoff, min(own_backoff * 2, 30.0)
                if now >= next_config:
                    next_config = now + self.opts.resync_interval
                    self._check_config()
            except Exception:   # a bug here must not end the keepalives for good: said, retried
                log.exception("etcd thread: unexpected error; retrying in 1s")
                stop.wait(1.0)

    def _probe(self) -> None:
        """One cheap linearizable read, asked for by a cycle that holds deletions back: an
        answer makes the lease view trustworthy again for ``FRESH`` s, and wakes the worker."""
        try:
            self.store.status()
        except ReconcilerError as exc:
            if self.state.etcd_ok:
                log.warning("etcd probe before a deletion: %s", exc)
            self.set_etcd_ok(False)
            return
        self._heard_from_etcd()
        self._mark("etcd")

    def _keep_lease(self) -> bool:
        """Run the keeper (on the etcd thread); False when etcd did not answer."""
        assert self.keeper is not None    # called only once start-up made it
        before = self.keeper.current
        check = self.state.check_own_lease
        rollback = self._rollback     # read before the check: only a check begun after it re-asserts
        self.state.check_own_lease = False
        try:
            if check:
                self.keeper.ensure()
            else:
                self.keeper.tick(self.clock())
        except ReconcilerError as exc:
            log.warning("lease %s: %s", esc(before.key), exc)
            if isinstance(exc, EtcdError):
                self.set_etcd_ok(False)
            if check:
                self.state.check_own_lease = True
            return False
        self._report_own_key()
        if check and rollback is not None and rollback is self._rollback and not self._rollback_reasserted:
            log.info("our lease %s re-asserted after etcd went back", esc(self.keeper.current.key))
            self._rollback_reasserted = True
        if self.keeper.current.key != before.key:
            log.warning("our lease moved: %s -> %s", esc(before.key), esc(self.keeper.current.key))
            self.inbox.put_pin(self.keeper.current.key, self.clock())
            self._try_relist(threading.Event())
        return True

    def _report_own_key(self) -> None:
        """The keeper's findings about writes over our key: counted, and a gauge while our key
        holds something that is not ours."""
        assert self.keeper is not None
        for kind, n in self.keeper.overwritten.items():
            if n > self._overwrites_seen[kind]:
                self.metrics.inc("flannel_reconciler_own_lease_overwritten_total", n - self._overwrites_seen[kind],
                                 reason=kind)
                self._overwrites_seen[kind] = n
        self.metrics.set("flannel_reconciler_own_lease_not_ours", 1 if self.keeper.not_ours else 0)

    def _check_config(self) -> None:
        """The network config: flanneld and this agent read it at start-up only (a new Network or
        VNI means new devices and leases); a change is said once, and
        ``flannel_reconciler_config_changed`` turns 1, until the agent is restarted.  A deleted
        config is said too (an error): this node runs on, but any agent or flanneld started now
        waits for it."""
        try:
            raw = self.store.get_config()
        except ReconcilerError:
            return      # the outage is reported by the etcd health signal
        if raw is None:
            if not self._config_missing:
                log.error("the network config %s was deleted from etcd; this node keeps running with the one "
                          "it read at start-up, but any agent or flanneld (re)started now waits for it: put it "
                          "back", esc(self.store.config_key))
                self._config_missing = True
            self.metrics.set("flannel_reconciler_config_missing", 1)
            self.metrics.set("flannel_reconciler_config_changed", 1)
            return
        if self._config_missing:
            log.info("the network config %s is back", esc(self.store.config_key))
            self._config_missing = False
            self._config_warned = None
        self.metrics.set("flannel_reconciler_config_missing", 0)
        try:
            changed = parse_network_config(raw) != self.config
        except ReconcilerError as exc:
            changed, raw = True, f"(unusable: {exc})"
        if changed and raw != self._config_warned:
            log.warning("the network config in etcd changed (now %s); it is read at start-up only, as "
                        "flanneld does: restart the agent to apply it", esc(raw))
            self._config_warned = raw
        self.metrics.set("flannel_reconciler_config_changed", 1 if changed else 0)

    def deletions_trusted(self) -> bool:
        """Before deleting: can we trust the lease view?  Yes when etcd answered within the last
        ``FRESH`` s (a lease event, the watch's liveness read, a probe): a peer's lease deleted is
        acted on without an extra round trip.  Otherwise the etcd thread is asked for one
        probe, and the deletions stay held (their keys dirty) until its answer wakes us: the
        worker never waits for etcd.  Never while etcd's history went back and has not settled."""
        if self.rollback_active():
            return False
        if self.state.etcd_ok and self.clock() - self._last_etcd_answer < FRESH:
            return True
        self._probe_wanted = True
        self.wake.set()
        return False

    def listing_folded(self, after_rollback: bool) -> None:
        """The worker folded a listing in: the one after etcd went back starts the settle time."""
        if after_rollback and self._rollback is not None and not self._rollback_listed:
            # The listing after etcd went back: complete, but what it lacks may only be
            # missing for now; deletions wait rollback_settle s more.
            self._rollback_listed = True
            self._rollback_until = self.clock() + self.opts.rollback_settle

    @property
    def rollback(self) -> str | None:
        """Why etcd's history went back, while that is not settled (None: it did not)."""
        return self._rollback
