"""The node agent: etcd leases in, an incremental reconcile loop, kernel out.

Threads, and what each may touch:

* the **watch** thread reads ``<prefix>/subnets/`` from etcd and queues what
  it sees (single events, or a whole listing after a compaction or an
  outage); it never talks to the kernel;
* the **etcd** thread makes every other etcd call: the lease keeper (keepalives, re-asserting
  or writing back our key), the config check, and the probe a held-back deletion asks for;
  it posts what it learns and never blocks the worker (a hung etcd must not stop drift repair);
* the **kernel events** thread (when the backend has ``watch_kernel``)
  queues netlink notifications about our devices, addresses, routes,
  neighbours and FDB entries, so drift made by someone else is seen as it
  happens (``docs/netlink-events.md``);
* the **worker** (the caller's thread) owns the kernel and all reconcile
  state: it wakes on anything queued, on the jittered resync timer or on the
  retry timer, folds what was queued into the lease index, the desired state
  and the believed kernel view, plans *only the keys that changed*, applies
  them, and records the answers (``docs/incremental.md``).

``Agent`` is the façade that owns the threads and wires its parts, each a
module of its own: ``inbox`` (the typed queues between the threads and the
worker), ``startup`` (config wait, underlay, VTEP MAC), ``etcd_side`` (the
watch and etcd threads), ``skip_report`` (skipped leases in the log and the
metrics), ``endpoints`` (/healthz, /readyz, /metrics), ``rule_sync`` (packet
filter rules, on their own timer), ``conditions`` (data-plane health: what to
read and which repair is due; the agent carries the repairs out) and ``heap``
(heap trims, the collector paused for a full cycle).  The cycle itself stays
here, as a short list of named steps.

Per event, the work is O(that event): a lease is parsed once, only its
objects are recomputed, and the plan covers only their keys.  The periodic
full resync (a dump and a full diff) stays as the backstop that corrects
anything the incremental path missed; after incremental work it finds
nothing to do (``tests/test_incremental.py``).

Failing static (flannel #636; Felix's "in sync" gate):

* no cycle runs before the first complete lease list has been read;
* while etcd is unreachable cycles repair drift but delete nothing
  (deletions need a trustworthy lease view; held-back deletions stay pending),
  and no cycle waits for etcd;
* after etcd's history went back (wiped, restored) nothing is deleted until the
  new listing settled, and our key is re-asserted at once;
* our own lease missing from the table (deleted, expired, overwritten)
  triggers the keeper (re-creation, or writing ours back), never a teardown;
* SIGTERM stops the loop at once and leaves every kernel object in place;
  SIGHUP asks for a resync now (``request_resync``).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from reconciler.agent import heap
from reconciler.agent.acquire import LeaseKeeper, SubnetTable, acquire_lease
from reconciler.agent.coalesce import fold_burst
from reconciler.agent.conditions import DataPlaneHealth
from reconciler.agent.endpoints import Endpoints
from reconciler.agent.etcd_side import EtcdSide
from reconciler.agent.failures import failure_lines
from reconciler.agent.inbox import Inbox, Listing, Pin
from reconciler.agent.rule_sync import RuleSync
from reconciler.agent.skip_report import SkipReport
from reconciler.agent.startup import (choose_v6_vtep_mac, choose_vtep_mac, netns_inode, random_vtep_mac, retry_etcd,
                                      underlay_spec, wait_for_config)
from reconciler.kernel.apply import apply_plan
from reconciler.core.config import NetworkConfig
from reconciler.core.desired import NodeParams, underlay_mtu
from reconciler.incremental.desired_index import DesiredIndex
from reconciler.core.errors import ReconcilerError
from reconciler.incremental.lease_index import LeaseIndex
from reconciler.core.leases import RawKV, Skipped
from reconciler.agent.metrics import (Metrics, build_info_labels, primary_trigger)
from reconciler.core.ownership import BRIDGE_NAME, FlannelOwnership
from reconciler.core.plan import Plan
from reconciler.core.reconcile import dump_live, on_link_predicate, owned_devices
from reconciler.core.render import conflict_words, describe
from reconciler.agent.sdnotify import Notifier
from reconciler.agent.subnet_env import read_previous_ipv6_subnet, read_previous_subnet, render_subnet_env, write_subnet_env
from reconciler.incremental.tracker import Tracker
from reconciler.core.underlay_guard import UnderlayGuard
from reconciler.kernel.netlink import Underlay

if TYPE_CHECKING:
    from reconciler.etcd.rpc import WatchEvent

__all__ = ["Agent", "AgentOptions", "CycleReport", "random_vtep_mac"]

log = logging.getLogger("flannel_reconciler")

#: Start-up: how long the first cycle waits for acquisition's write to come back through the watch.
_ECHO_WAIT = 5.0
#: How long acquisition waits for etcd to register the lease watch (``Agent._start_watch``).
_WATCH_WAIT = 2.0


@dataclass
class AgentOptions:
    public_ip: str | None = None
    #: --iface: one name/IPv4 address, or several tried in order.
    iface: str | list[str] | None = None
    iface_regex: list[str] = field(default_factory=list)
    iface_can_reach: str | None = None
    #: The pod bridge we create and own; None (--no-bridge): the CNI plugin's.
    bridge: str | None = BRIDGE_NAME
    underlay_mtu: int | None = None
    subnet_file: str = "/run/flannel/subnet.env"
    resync_interval: float = 30.0
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    metrics_port: int = 0
    ip_masq: bool = False
    # --- packet filter rules (reconciler/rules, docs/traffic-rules.md) ---
    #: flanneld's --iptables-forward-rules (default true).
    forward_rules: bool = True
    #: flanneld's --ip-masq-fully-random-disable.
    masq_fully_random_disable: bool = False
    #: flanneld's --iptables-resync: seconds between rule checks (besides every cycle).
    iptables_resync: float = 5.0
    #: ``onlink`` or ``nexthop`` (``desired.ROUTE_LAYOUTS``).
    route_layout: str = "onlink"
    #: While events keep arriving (a wake-up within ``burst_window`` of the previous one), wait
    #: this long after a wake-up for more to fold into the same cycle, again and again while more
    #: arrive, for at most ``coalesce_max`` (``coalesce.fold_burst``): a storm of etcd events (a
    #: rolling restart re-puts every lease) then costs a few dozen cycles instead of thousands.
    #: A lone event is not kept waiting: it costs the watch plus one cycle.
    coalesce: float = 0.002
    burst_window: float = 0.05
    coalesce_max: float = 0.05
    #: /healthz fails when no cycle finished for this long (default: 3 resyncs, at least 60 s).
    liveness_window: float | None = None
    #: The network namespace the agent programs (``--netns``), watched for deletion.
    netns: str | None = None
    #: First and longest wait before failed operations are retried.
    retry_min: float = 0.5
    retry_max: float = 10.0
    #: Dual stack: this node's PublicIPv6 (default: the underlay interface's IPv6 address).
    public_ipv6: str | None = None
    #: flanneld's --subnet-lease-renew-margin, in seconds (``LeaseKeeper``).
    renew_margin: float = 3600.0
    #: flanneld's --ip-blackhole-route: a blackhole route for our subnet(s) (``desired.node_objects``).
    blackhole_route: bool = False
    #: After etcd's history went back (wiped, restored): deletions stay held this long after the
    #: new listing, so that peers re-asserting their keys are back before absence means gone.
    rollback_settle: float = 60.0


@dataclass(frozen=True)
class CycleReport:
    """What one cycle did (``Agent.last_cycle``)."""

    triggers: frozenset
    plan: Plan
    results: tuple
    dumped: bool
    duration: float
    index: LeaseIndex = field(repr=False, compare=False)

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """The leases left out, sorted (made on demand: sorting every skipped lease in every
        cycle would cost a lease event the size of the junk in etcd)."""
        return tuple(self.index.skips())


@dataclass
class _State:
    wake: threading.Event = field(default_factory=threading.Event)
    triggers: set = field(default_factory=set)
    etcd_ok: bool = True
    ready: bool = False
    last_cycle_end: float = 0.0
    check_own_lease: bool = False
    #: Why the agent is of no use any more although its loop runs (its namespace was deleted).
    broken: str | None = None


class Agent:
    """One node's agent.  ``run(stop)`` blocks until ``stop`` is set."""

    def __init__(self, store, backend, opts: AgentOptions, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, metrics: Metrics | None = None,
                 notifier: Notifier | None = None, rules=None) -> None:
        self.store = store
        self.backend = backend
        self.opts = opts
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.metrics.set_build_info(**build_info_labels(backend))
        # Mirrors state.etcd_ok, which only turns false when etcd fails to answer.
        self.metrics.set("flannel_reconciler_etcd_up", 1)
        #: systemd's Type=notify protocol (a no-op without $NOTIFY_SOCKET).
        self.notifier = notifier or Notifier()
        self.state = _State()
        self._lock = threading.Lock()
        # Set by ``start`` (through ``prepare``) before any thread reads them: declared, not None.
        self.config: NetworkConfig
        self.node: NodeParams
        self._on_link: Callable[[str], bool]
        #: The data-plane conditions, read after each full cycle.
        self.health = DataPlaneHealth(backend, self.metrics, self.state)
        #: /healthz, /readyz, /metrics.
        self.http = Endpoints(opts, clock, self.state, self.metrics, self.health.failing,
                              self._identity_conditions)
        self._subnet_env_text: str | None = None
        self._subnet_env_error: str | None = None
        self._subnet_env_inputs: tuple | None = None     # what _subnet_env_text was rendered from
        self._trim_next_dump = False     # trim the heap after the next dump (``_trim_after``)
        #: A dump comes before the believed view is used again (a device or address is being
        #: written): what the kernel-event thread delivers meanwhile is dropped (``queue_kernel_events``).
        self._events_superseded = False
        self._superseded_marked = False
        self.last_cycle: CycleReport | None = None
        # Queues filled by the watch and kernel-event threads, drained by the worker.
        self.inbox = Inbox()
        self._last_wake = float("-inf")  # monotonic time of the worker's previous wake-up (coalescing)
        #: The watch thread and the etcd thread (lease keeper, config check, probes).
        self.etcd = EtcdSide(store, opts, clock, self.metrics, self.notifier, self.state, self.inbox, self._mark)
        # Reconcile state: the worker's alone, made by ``prepare``.
        self.index: LeaseIndex
        self.desired: DesiredIndex
        self.tracker: Tracker
        self.skips = SkipReport(self.metrics, clock)
        self._pin_changes: set[str] = set()
        self._folded_revision = 0     # the last etcd revision folded into the index
        self._no_own_lease = False
        self._netns_inode: int | None = None
        self._retry_at: float | None = None
        self._watch_thread: threading.Thread | None = None     # the lease watch, started by ``start``
        self._retry_delay = opts.retry_min
        # Packet filter rules: a pipeline of their own, beside the cycle.
        self.rule_sync = RuleSync(rules, opts, self.metrics)

    @property
    def keeper(self) -> LeaseKeeper | None:
        """Our lease's keeper (None before ``start`` acquired it), run by the etcd thread."""
        return self.etcd.keeper

    # ------------------------------------------------------------- start-up
    def start(self, stop: threading.Event) -> None:
        """Read the config, pick the VTEP MAC, acquire our lease, list the leases."""
        self.http.start()
        self.config = wait_for_config(self.store, stop, self.etcd.set_etcd_ok)
        underlay = self.backend.underlay(underlay_spec(self.opts))
        public_ip = self.opts.public_ip or underlay.address
        public_ipv6 = None
        if self.config.enable_ipv6:  # dual stack: the IPv6 side of the same interface, as flanneld
            underlay = self.backend.underlay_v6(underlay, self.opts.public_ipv6)
            public_ipv6 = self.opts.public_ipv6 or underlay.address6
        mtu = underlay_mtu(self.opts.underlay_mtu, self.config.mtu, (underlay.name, underlay.mtu))
        self.node = NodeParams(public_ip=public_ip, underlay_mtu=mtu, underlay=underlay.name, bridge=self.opts.bridge,
                               public_ipv6=public_ipv6, route_layout=self.opts.route_layout,
                               blackhole=self.opts.blackhole_route)
        log.info("underlay %s (%s), mtu %d; bridge %s", underlay.name, underlay.address, underlay.mtu,
                 self.opts.bridge or "left to the CNI plugin (--no-bridge)")
        self._netns_inode = netns_inode(self.opts.netns)
        self.health.start(public_ip, underlay, bool(self.opts.underlay_mtu or self.config.mtu))
        self.prepare(self.config, self.node, on_link_predicate(underlay.prefixes + underlay.prefixes6),
                     underlay_prefixes=underlay.prefixes)

        # One listing feeds the VTEP MAC choice, acquisition and the first cycle: folded into
        # the lease index at once, each value parsed once (docs/incremental.md, "Start-up").
        retry_etcd("list the leases", self._first_listing, stop, self.etcd.set_etcd_ok)
        self._start_watch(stop)
        tries = 0

        def acquire():
            nonlocal tries
            if tries:       # etcd failed half-way: what was listed may be stale now
                self._first_listing()
            tries += 1
            listing = SubnetTable.of(self.index.kvs(), self.store.subnets_prefix, self.index.parsed_any)
            mac = choose_vtep_mac(self.backend, self.config, public_ip, listing.leases, self.rng)
            mac6 = (choose_v6_vtep_mac(self.backend, self.config, public_ip, listing.leases, self.rng)
                    if public_ipv6 else None)
            got = acquire_lease(self.store, self.config, public_ip, mac,
                                read_previous_subnet(self.opts.subnet_file), self.rng, public_ipv6=public_ipv6,
                                v6_vtep_mac=mac6, previous_ipv6_subnet=read_previous_ipv6_subnet(self.opts.subnet_file),
                                listing=listing)
            return mac, mac6, got, listing

        mac, mac6, acquired, listing = retry_etcd("acquire a lease", acquire, stop, self.etcd.set_etcd_ok)
        log.info("lease %s for %s (vtep %s%s, %s)", acquired.key, public_ip, mac,
                 f"; {public_ipv6} vtep {mac6}" if mac6 else "",
                 "reservation" if acquired.reservation else f"etcd lease {acquired.lease_id:x}")
        # The one rule for "which lease is ours": the one the keeper holds (see LeaseIndex.pin).
        self._pin_changes |= self.index.pin(acquired.key)
        self.etcd.keeper = LeaseKeeper(self.store, self.config, public_ip, mac, acquired, self.rng,
                                       now=self.clock(), public_ipv6=public_ipv6, v6_vtep_mac=mac6,
                                       renew_margin=self.opts.renew_margin)
        self.etcd.await_echo(listing.kvs.get(acquired.key), acquired)

    def _start_watch(self, stop: threading.Event) -> None:
        """The lease watch, from the start-up listing's revision + 1, registered with etcd before
        acquisition writes.  etcd sends a write at once only to a watch registered before it (one
        whose start revision was still ahead of etcd's); a watch that starts at or below etcd's
        revision is caught up by a loop that runs every 100 ms.  Registered after acquisition,
        the watch brought our own lease back 96-100 ms late, and the first cycle waits for that
        echo (docs/incremental.md, "Start-up").  What it brings before the worker runs waits in
        the inbox.  Should etcd be slow to answer, acquisition goes on after ``_WATCH_WAIT``."""
        self._watch_thread = threading.Thread(target=self.etcd.watch_loop, args=(stop,), name="lease-watch",
                                              daemon=True)
        self._watch_thread.start()
        self.etcd.watching.wait(_WATCH_WAIT)

    def _first_listing(self) -> None:
        """The start-up listing (``EtcdSide.first_listing``) folded into the lease index now."""
        snap = self.etcd.first_listing()
        base = self.store.subnets_prefix
        self._folded_revision = snap.revision
        with heap.collector_paused():   # every lease parsed now lives on: nothing to collect
            self._pin_changes |= self.index.replace_all(kv for kv in snap.kvs if kv.key.startswith(base))
        self.inbox.listed = True
        self._mark("relist")

    def prepare(self, config: NetworkConfig, node: NodeParams, on_link: Callable[[str], bool] | None = None,
                underlay_prefixes: tuple[str, ...] = ()) -> None:
        """The reconcile state for ``config`` and this node: an empty lease index, desired state
        and believed kernel view.  ``start`` calls it once it knows both; the tests and the
        per-event benchmark call it to drive cycles without etcd.  ``underlay_prefixes``: the
        underlay's connected prefixes, which no peer lease may capture (``underlay_guard``)."""
        self.config, self.node = config, node
        self.etcd.config = config
        self._on_link = on_link or (lambda _ip: False)
        self.index = LeaseIndex(config, self.store.prefix,
                                UnderlayGuard.of(node.public_ip, config.network, underlay_prefixes))
        self.desired = DesiredIndex(config, node, self._on_link)
        self.tracker = Tracker(FlannelOwnership(config, node.bridge))

    # What the watch and kernel-event threads queue, for callers that drive ``cycle`` themselves
    # (tests, the per-event benchmark), and what is still waiting: a public surface instead of
    # the queues themselves.
    def queue_lease_event(self, event: WatchEvent) -> None:
        """One lease event, as the watch thread queues it."""
        self.inbox.put_event(event, self.clock())

    def queue_listing(self, kvs: Iterable[RawKV], revision: int = 0) -> None:
        """A complete lease listing, as after start-up or a compaction: it replaces the table."""
        self.inbox.put_listing(list(kvs), self.clock(), revision)

    def queue_kernel_events(self, events: list | None) -> None:
        """Kernel notifications as the monitor delivers them (None: some were lost; only a dump
        can tell what).

        While a dump is due before the believed view is used again (a cycle is writing a device
        or an address, whose side effects only a dump shows), what arrives is dropped and one
        ``None`` is queued in its place: that dump shows all of it, since it reads the kernel
        only after ``_dump`` cleared the flag, so after these were received.  A cold start's
        first cycle writes the devices and 15,000 entries; their echoes, decoded and queued,
        were folded in only to be replaced by that dump, and held about 3 MiB of the heap at
        its peak, which CPython's allocator keeps (docs/memory.md)."""
        if self._events_superseded:
            if self._superseded_marked:
                return
            self._superseded_marked = True
            events = None
        self.inbox.put_kernel(events)

    @property
    def listed(self) -> bool:
        """Whether a complete lease listing has been queued (no cycle runs before one)."""
        return self.inbox.listed

    @property
    def retry_at(self) -> float | None:
        """When failed or held-back changes are looked at again (the agent's clock), or None."""
        return self._retry_at

    def pending(self) -> dict[str, int]:
        """What the worker has still to do: queued lease and kernel items, dirty keys, and
        whether a dump or a full plan is due.  All zero: idle."""
        return {**self.inbox.counts(),
                "dirty_keys": len(self.tracker.dirty), "dump": int(self.tracker.needs_dump),
                "full_plan": int(self.tracker.full)}

    # ------------------------------------------------------------ the loops
    def run(self, stop: threading.Event) -> None:
        # A stop wakes the worker at once, whatever the resync interval.
        def waker() -> None:
            stop.wait()
            self.state.wake.set()
            self.etcd.wake.set()
            self.etcd.echo.set()

        threading.Thread(target=waker, name="stop-waker", daemon=True).start()
        self.start(stop)
        threads = []
        subscribed = threading.Event()
        if hasattr(self.backend, "watch_kernel"):
            threads.append(threading.Thread(target=self._kernel_loop, args=(stop, subscribed),
                                            name="kernel-events", daemon=True))
        else:
            subscribed.set()
        threads.append(threading.Thread(target=self.etcd.etcd_loop, args=(stop,), name="etcd", daemon=True))
        if self.rule_sync.rules is not None:
            threads.append(threading.Thread(target=self.rule_sync.loop, args=(stop, self.config), name="rules",
                                            daemon=True))
        for t in threads:
            t.start()
        if self._watch_thread is not None:      # started by ``start``, before acquisition
            threads.append(self._watch_thread)
        # Subscribe before the first dump, so that nothing falls between them.
        subscribed.wait(5.0)
        # Our own write back through the watch (milliseconds); should the watch be slow to come
        # up, the first cycle runs without it and the own-lease check takes over.
        self.etcd.echo.wait(_ECHO_WAIT)
        try:
            self._work_loop(stop)
        finally:
            stop.set()
            self.notifier.stopping()
            self.http.shutdown()
            for t in threads:
                t.join(timeout=0.5)

    def request_resync(self) -> None:
        """A full resync at once, as if the resync timer had fired (SIGHUP: docs/design.md).
        From any thread, never from a signal handler (``_mark`` takes a lock)."""
        self._mark("resync")

    def _mark(self, trigger: str) -> None:
        with self._lock:
            self.state.triggers.add(trigger)
        self.state.wake.set()

    def _kernel_loop(self, stop: threading.Event, subscribed: threading.Event) -> None:
        devices = set(owned_devices(self.config, self.node.bridge))
        networks = [str(n) for n in (self.config.network, self.config.ipv6_network) if n is not None]

        def on_events(events) -> None:
            self.queue_kernel_events(events)
            self._mark("kernel")

        try:
            # The event thread's believed entries are the desired instances where equal: no third
            # copy of every route, neighbour and FDB entry (docs/memory.md).
            self.backend.watch_kernel(devices, networks, on_events, stop, subscribed,
                                      share=lambda obj: self.desired.state.instance_of(obj))
        except ReconcilerError as exc:  # periodic resync still covers drift
            log.warning("kernel events unavailable: %s; drift is repaired at each resync only", exc)
        finally:
            subscribed.set()

    def _work_loop(self, stop: threading.Event) -> None:
        next_resync = self.clock()
        while not stop.is_set():
            now = self.clock()
            due = next_resync if self._retry_at is None else min(next_resync, self._retry_at)
            timeout = max(0.0, due - now)
            if self.notifier.watchdog:  # WatchdogSec=: wake often enough to ping
                timeout = min(timeout, self.notifier.watchdog)
            self.notifier.ping()
            if self.state.wake.wait(timeout) and self.opts.coalesce:
                woke = time.monotonic()
                if woke - self._last_wake < self.opts.burst_window:
                    # Events keep arriving: let the burst land.
                    fold_burst(self.inbox.__len__, stop.wait, time.monotonic,
                               self.opts.coalesce, self.opts.coalesce_max)
                self._last_wake = woke
            if stop.is_set():
                break
            with self._lock:
                triggers = self.state.triggers
                self.state.triggers = set()
                self.state.wake.clear()
            now = self.clock()
            if now >= next_resync:
                triggers.add("resync")
                next_resync = now + self.opts.resync_interval * self.rng.uniform(0.9, 1.1)
            if self._retry_at is not None and now >= self._retry_at:
                triggers.add("retry")
                self._retry_at = None
            if not triggers:
                continue
            if "resync" in triggers:
                self._check_surroundings()
            self.cycle(triggers)

    def _check_surroundings(self) -> None:
        """Once per resync, what the agent read once at start-up and cannot follow by itself.

        * The namespace (``--netns``): deleted, it lives on only through our sockets,
          and nobody uses what we program there; /healthz turns 503 and it is logged
          every resync, so an operator or the kubelet restarts us.

        (The network config is etcd's: the etcd thread checks it, ``EtcdSide._check_config``.)
        """
        if self.opts.netns is not None and netns_inode(self.opts.netns, missing_ok=True) != self._netns_inode:
            self.state.broken = (f"network namespace {self.opts.netns} was deleted or replaced: this agent "
                                 f"programs a namespace nobody uses; restart it")
            log.error("%s", self.state.broken)

    # ------------------------------------------------------------ one cycle
    def _drain_leases(self) -> tuple[set[str], float | None]:
        """Fold queued lease events into the index; return the changed keys and the oldest arrival."""
        changed: set[str] = set()
        oldest = None
        for item in self.inbox.take_leases():
            if isinstance(item, Pin):    # the keeper moved to another key (acquire.py)
                changed |= self.index.pin(item.key)
                continue
            if isinstance(item, Listing):
                changed |= self.index.replace_all(item.kvs)
                revision = item.revision
                self.etcd.listing_folded(item.after_rollback)
            else:
                ev = item.event
                changed |= self.index.put(ev.kv) if ev.type == "put" else self.index.delete(ev.kv.key)
                revision = ev.revision
            oldest = item.at if oldest is None else min(oldest, item.at)
            if revision:
                self._folded_revision = max(self._folded_revision, revision)
        return changed, oldest

    def _drain_kernel(self) -> int:
        changed = 0
        for batch in self.inbox.take_kernel():
            if batch.events is None:
                self.tracker.needs_dump = True
            else:
                changed += self.tracker.observe(batch.events)
        return changed

    def cycle(self, triggers: set[str]) -> CycleReport | None:
        """Fold in what changed, plan the dirty keys, apply.  Returns None when it could not run."""
        if not self.inbox.listed:
            return None
        t0 = time.monotonic()
        primary = primary_trigger(triggers)    # one label value per cycle (docs/metrics.md)
        # A listing, or many events at once (a cold start, a storm), builds objects that live
        # on: no collection walks them while they are made (``heap.collector_paused``).
        with heap.collector_paused("relist" in triggers or len(self.inbox) > 1000):
            changed, oldest = self._fold_in()
        if not self._own_lease_gate(primary):
            return None
        full = "resync" in triggers or self.tracker.needs_dump
        with heap.collector_paused(full):
            if full and not self._dump(primary):
                return None
            plan, held = self._hold_back(self.tracker.plan(self.desired.state))
            if self.tracker.dump_follows(plan):
                # The dump these writes ask for shows their echoes: they need not be kept.
                self._events_superseded, self._superseded_marked = True, False
            # A cold start's 15,000 changes and their results, like a dump; a full cycle keeps
            # the collector paused from its dump on (re-enabled in between, its first collection
            # would walk every change the plan just made).
            with heap.collector_paused(len(plan.changes) > 1000):
                results = apply_plan(self.backend, plan, self.desired.state) if plan.changes else []
        self.tracker.settle(plan, results, held)
        self._rules_step()
        failed = self._say_results(results, changed, plan, full)
        self._retry_or_record_success(failed, held)
        self._after_full_cycle(full, results)
        self._subnet_env_and_readiness(failed)
        duration = time.monotonic() - t0
        self._cycle_metrics(primary, oldest, results, failed, duration)
        self._trim_after(full, results)
        self._log_cycle(triggers, plan, failed, held, full, duration)
        self.state.last_cycle_end = self.clock()
        self.last_cycle = CycleReport(frozenset(triggers), plan, tuple(results), full, duration, self.index)
        return self.last_cycle

    # The cycle's steps, in the order ``cycle`` calls them.
    def _fold_in(self) -> tuple[set[str], float | None]:
        """Drain the queues into the lease index, the desired state and the believed kernel view;
        return the changed lease keys and the oldest arrival among them."""
        changed, oldest = self._drain_leases()
        changed |= self._pin_changes
        self._pin_changes = set()
        self.skips.report(self.index, changed, self.node.public_ip)
        self.tracker.dirty |= self.desired.update(self.index, changed)
        self._drain_kernel()
        return changed, oldest

    def _own_lease_gate(self, primary: str) -> bool:
        """No cycle runs without our own lease in the table: the keeper is asked to check it."""
        if self.desired.own is None:
            # Checked on the next wake-up (our key's watch event, or the resync
            # timer): never a tight loop while etcd is away.
            if not self._no_own_lease:   # said once per absence, not once per lease event meanwhile
                log.warning("no valid lease has PublicIP %s: re-acquiring, kernel left as it is",
                            self.node.public_ip)
                self._no_own_lease = True
            self.etcd.want_own_lease_check()
            self.metrics.inc("flannel_reconciler_cycles_total", trigger=primary, outcome="no-lease")
            return False
        self._no_own_lease = False
        return True

    def _dump(self, primary: str) -> bool:
        """A full cycle's dump of the kernel, the believed view replaced by it; False: it failed
        and the cycle is aborted with nothing written."""
        self._events_superseded = False     # before the dump reads: what arrives from now on is kept
        try:
            self.tracker.replace_live(dump_live(self.backend, self.config, self.node.bridge))
        except ReconcilerError as exc:
            log.error("cycle aborted, nothing written: %s", exc)
            self.metrics.inc("flannel_reconciler_cycles_total", trigger=primary, outcome="error")
            self._schedule_retry()
            return False
        self.metrics.inc("flannel_reconciler_dumps_total")
        # Events queued during the dump are newer than it, or repeat it.
        self._drain_kernel()
        return True

    def _hold_back(self, plan: Plan) -> tuple[Plan, tuple]:
        """The plan to apply, and the deletions held back from it."""
        held: tuple = ()
        if any(c.op == "delete" and c.kind != "link" for c in plan) and not self.etcd.deletions_trusted():
            # Fail static: a deletion needs a lease view we can trust; it stays pending.
            held = tuple(c for c in plan if c.op == "delete" and c.kind != "link")
            plan = Plan(tuple(c for c in plan if c.op != "delete" or c.kind == "link"), plan.conflicts)
        return plan, held

    def _rules_step(self) -> None:
        if self.rule_sync.due(self.desired.own):
            # Rules depend on our own lease and the config only: written here when our lease
            # first appears or changes; checked every --iptables-resync seconds by their own
            # thread.  Not on every lease event: reading them back costs subprocesses.
            self.rule_sync.sync(self.config, self.desired.own)

    def _say_results(self, results: list, changed: set[str], plan: Plan, full: bool) -> list:
        """Count the operations and the drift repaired, log failures and conflicts; return the
        failed results."""
        failed = [r for r in results if not r.ok]
        # One metric call per (kind, op, result), not per object: a cold start has 15,000 results.
        ops = collections.Counter((r.change.kind, r.change.op, "ok" if r.ok else ("skipped" if r.skipped else "error"))
                                  for r in results)
        for (kind, op, result), n in ops.items():
            self.metrics.inc("flannel_reconciler_operations_total", n, kind=kind, op=op, result=result)
        if not changed:
            repaired = sum(1 for r in results if r.ok)
            if repaired:
                self.metrics.inc("flannel_reconciler_drift_repaired_total", repaired)
        lines, device_gone = failure_lines(failed)
        for line in lines:
            log.error("failed: %s", line)
        if device_gone:
            self.tracker.needs_dump = True      # the believed view has a device the kernel lost
        conflicts = plan.conflicts if not full else tuple(self.tracker.conflicts.values())
        for c in conflicts:
            log.warning("conflict: %s is %s a foreign %s (%s, proto %s); left alone",
                        describe(c.desired), conflict_words(c), c.foreign.KIND, describe(c.foreign),
                        c.foreign.protocol)
        return failed

    def _retry_or_record_success(self, failed: list, held: tuple) -> None:
        if failed or held:
            self._schedule_retry()
        else:
            self._retry_delay = self.opts.retry_min
            self.metrics.set("flannel_reconciler_last_successful_sync_timestamp_seconds", time.time())

    def _after_full_cycle(self, full: bool, results: list) -> None:
        """After a dump: the skip summary, and the data-plane facts."""
        if not full:
            return
        self.skips.after_full_cycle(self.index)
        if not any(r.ok and r.change.kind in ("link", "address") for r in results):
            # (After a device or address write the kernel's side effects -- the bridge's connected
            # route -- are known only to the next dump, which that write asks for: check then.)
            self._check_data_plane()

    def _check_data_plane(self) -> None:
        """Read the data-plane facts, follow the underlay where that is ours to do, publish the
        conditions (``conditions.py``)."""
        underlay = self.health.read_underlay(self.node)
        moves = self.health.moves(self.node, underlay, bool(self.opts.public_ip))
        if moves.mtu is not None:
            self._follow_underlay_mtu(moves.mtu)
        if moves.address and underlay is not None:
            self._follow_underlay_address(underlay)
        self.health.publish(self.config, self.node, self.tracker.live, self.desired.state, underlay)

    def _follow_underlay_mtu(self, mtu: int) -> None:
        log.warning("the underlay %s's MTU is now %d (was %d): %s and %s follow it", self.node.underlay, mtu,
                    self.node.underlay_mtu, self.config.device_name, self.opts.subnet_file)
        self.node = dataclasses.replace(self.node, underlay_mtu=mtu)
        self.desired.node = self.node
        if self.desired.own_key is not None:
            # The MTU is in our own lease's objects only (the devices); the next cycle writes them.
            self.tracker.dirty |= self.desired.update(self.index, {self.desired.own_key})
        self._mark("underlay")

    def _follow_underlay_address(self, underlay: Underlay) -> None:
        """Our PublicIP was the underlay's address and that address is gone: the new one becomes
        our PublicIP.  The device is re-created with it as ``local`` (an immutable attribute) once
        our lease, rewritten in place by the keeper through the usual lease check, says so."""
        old, new = self.node.public_ip, underlay.address
        log.warning("the underlay %s's address moved from %s to %s: re-advertising our lease with it and "
                    "re-creating %s with local %s", underlay.name, old, new, self.config.device_name, new)
        self.node = dataclasses.replace(self.node, public_ip=new)
        self.desired.node = self.node
        self.health.local = new
        # The node facts the lease checks use changed too (underlay_guard).
        self._pin_changes |= self.index.set_guard(UnderlayGuard.of(new, self.config.network, underlay.prefixes))
        if self.desired.own_key is not None:
            self._pin_changes.add(self.desired.own_key)
        if self.keeper is not None:
            self.keeper.update_public_ip(new)
            self.state.check_own_lease = True
        self._mark("underlay")

    def _subnet_env_and_readiness(self, failed: list) -> None:
        # subnet.env (what the CNI plugin needs) depends on our own devices and
        # addresses only: one peer's failing entry must not keep pods from starting.
        own = self.desired.own      # never None here: the own-lease gate let the cycle run
        if own is not None and not any(r.change.kind in ("link", "address") for r in failed):
            if self._write_subnet_env() and not self.state.ready:
                self.state.ready = True
                self.metrics.set("flannel_reconciler_ready", 0 if self.health.failing() else 1)
                log.info("ready: first full sync done, %s written", self.opts.subnet_file)
                # Like flanneld: READY=1 once our devices are programmed and subnet.env is written.
                self.notifier.ready(f"ready: subnet {own.subnet}, {len(self.index.valid)} leases, "
                                    f"{self.opts.subnet_file} written")

    def _cycle_metrics(self, primary: str, oldest: float | None, results: list, failed: list,
                       duration: float) -> None:
        if oldest is not None and results:
            self.metrics.observe("flannel_reconciler_etcd_to_kernel_seconds", self.clock() - oldest)
        self.metrics.observe("flannel_reconciler_cycle_duration_seconds", duration)
        # Set last: once it shows a revision, everything that revision caused is done (and counted).
        self.metrics.set("flannel_reconciler_lease_revision", self._folded_revision)
        self.metrics.inc("flannel_reconciler_cycles_total", trigger=primary, outcome="failed" if failed else "ok")

    def _trim_after(self, dumped: bool, results: list) -> None:
        # A cold start or a re-created device; and the first dump of the large state after it,
        # whose fresh objects the split has just let go of (the believed view keeps the desired
        # instances): 2 MiB less at 5,000 nodes (docs/memory.md).  Not every periodic resync:
        # what one resync's dump frees, the next one's reuses, and trimming each time cost about
        # 25 ms a resync at 5,000 nodes (the heap given back, then faulted in again).
        if len(results) > 1000:
            heap.trim()
            self._trim_next_dump = True
        elif dumped and self._trim_next_dump and len(self.tracker.live) > 1000:
            heap.trim()
            self._trim_next_dump = False

    def _log_cycle(self, triggers: set[str], plan: Plan, failed: list, held: tuple, dumped: bool,
                   duration: float) -> None:
        s = plan.summary()
        level = logging.INFO if (plan.changes or failed or dumped) else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "cycle trigger=%s leases=%d skipped=%d create=%d update=%d delete=%d failed=%d "
                    "held=%d dump=%s etcd=%s duration=%.3fs", _tr(triggers), len(self.index.valid),
                    len(self.index.skipped), s["create"], s["update"], s["delete"], len(failed), len(held),
                    "yes" if dumped else "no", "up" if self.state.etcd_ok else "DOWN", duration)

    def _schedule_retry(self) -> None:
        """Failed or held-back changes stay dirty; look at them again after a growing pause."""
        self._retry_at = self.clock() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self.opts.retry_max)

    def _write_subnet_env(self) -> bool:
        """Write subnet.env when it changed.  A file we cannot write (read-only, full disk,
        a directory at the path) is logged once per distinct error and retried; it never
        stops the agent, which keeps the node's kernel state serving traffic."""
        own = self.desired.own
        if own is None:             # called after a cycle that found our lease; never without one
            return False
        # Rendered only when what it depends on changed: formatting it in every cycle was a tenth
        # of a lease event's cycle (ipaddress's str()).
        inputs = (own.subnet, own.ipv6_subnet, self.node.underlay_mtu)
        if inputs == self._subnet_env_inputs and self._subnet_env_text is not None:
            return True
        text = render_subnet_env(self.config, own.subnet, self.node.underlay_mtu, self.opts.ip_masq,
                                 own.ipv6_subnet if self.config.enable_ipv6 else None)
        if text == self._subnet_env_text:
            self._subnet_env_inputs = inputs
            return True
        try:
            write_subnet_env(self.opts.subnet_file, text)
        except OSError as exc:
            why = f"cannot write {self.opts.subnet_file}: {exc.strerror or exc}"
            if why != self._subnet_env_error:
                log.error("%s; retrying (pods cannot start on this node until it is written)", why)
                self._subnet_env_error = why
            self.metrics.inc("flannel_reconciler_subnet_file_errors_total")
            self._schedule_retry()
            return False
        if self._subnet_env_error:
            log.info("%s written", self.opts.subnet_file)
            self._subnet_env_error = None
        self._subnet_env_text = text
        self._subnet_env_inputs = inputs
        return True

    def _identity_conditions(self) -> str:
        """Why this node's identity in etcd is in doubt ("" when it is not): etcd's history
        went back and has not settled, or our key holds something that is not ours."""
        why = []
        if self.etcd.rollback_active():
            why.append(f"etcd went back in time ({self.etcd.rollback}); re-listed, deletions held back")
        if self.keeper is not None and self.keeper.not_ours:
            why.append(self.keeper.not_ours)
        return "; ".join(why)


def _tr(triggers: set[str]) -> str:
    return "+".join(sorted(triggers))
