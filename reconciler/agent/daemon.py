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
import ctypes
import gc
import os
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from reconciler.agent.acquire import LeaseKeeper, acquire_lease
from reconciler.agent.coalesce import fold_burst
from reconciler.agent.conditions import DataPlaneHealth
from reconciler.agent.failures import failure_lines
from reconciler.agent.rule_sync import RuleSync
from reconciler.kernel.apply import apply_plan
from reconciler.core.config import NetworkConfig, parse_network_config, require_ipv4, require_vxlan
from reconciler.core.desired import NodeParams, underlay_mtu
from reconciler.incremental.desired_index import DesiredIndex
from reconciler.core.errors import EtcdAuthError, EtcdCompacted, EtcdError, EtcdRolledBack, ReconcilerError
from reconciler.incremental.lease_index import LeaseIndex
from reconciler.core.logtext import esc
from reconciler.core.leases import RawKV, Skipped, parse_lease
from reconciler.agent.metrics import (CONTENT_TYPE, SKIP_REASONS, Metrics, build_info_labels, primary_trigger,
                                      serve_http, skip_reason_label)
from reconciler.kernel.netlink.common import UnderlaySpec
from reconciler.core.ownership import BRIDGE_NAME, FlannelOwnership
from reconciler.core.plan import Plan
from reconciler.core.reconcile import dump_live, on_link_predicate, owned_devices
from reconciler.core.render import conflict_words, describe
from reconciler.agent.sdnotify import Notifier
from reconciler.agent.subnet_env import read_previous_ipv6_subnet, read_previous_subnet, render_subnet_env, write_subnet_env
from reconciler.incremental.tracker import Tracker
from reconciler.core.underlay_guard import UnderlayGuard

if TYPE_CHECKING:
    from reconciler.etcd.rpc import WatchEvent

__all__ = ["Agent", "AgentOptions", "CycleReport", "random_vtep_mac"]

log = logging.getLogger("flannel_reconciler")

#: Skipped leases logged one by one per window; the rest of a burst is one summary line per window.
_SKIP_LINES = 20
_SKIP_WINDOW = 10.0
#: A deletion needs etcd to have answered within this many seconds (docs/incremental.md).
_FRESH = 1.0


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


def random_vtep_mac(rng: random.Random) -> str:
    """flanneld's choice: 6 random bytes, locally administered, unicast."""
    b = bytearray(rng.getrandbits(8) for _ in range(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


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


class Agent(RuleSync, DataPlaneHealth):
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
        self.keeper: LeaseKeeper | None = None
        self._on_link: Callable[[str], bool]
        self._servers: list = []
        self._subnet_env_text: str | None = None
        self._subnet_env_error: str | None = None
        self._subnet_env_inputs: tuple | None = None     # what _subnet_env_text was rendered from
        self.last_cycle: CycleReport | None = None
        # Queues filled by the watch and kernel-event threads, drained by the worker.
        self._lease_q: collections.deque = collections.deque()
        self._kernel_q: collections.deque = collections.deque()
        self._revision = 0
        self._listed = False          # the first complete lease list has been queued
        self._last_wake = float("-inf")  # monotonic time of the worker's previous wake-up (coalescing)
        self._last_etcd_answer = 0.0  # monotonic time of the last watch event, listing or probe
        # The etcd thread: woken for a probe or an own-lease check, posts "etcd" to the worker.
        self._etcd_wake = threading.Event()
        self._probe_wanted = False
        self._relist_lock = threading.Lock()
        self._cluster_id = 0          # etcd's cluster id as first listed (0: not known)
        self._config_missing = False
        # etcd's history went back (docs/incremental.md, "etcd going back"): why, whether the
        # listing after it was folded in, until when deletions stay held, our key re-asserted.
        self._rollback: str | None = None
        self._rollback_listed = False
        self._rollback_until = 0.0
        self._rollback_reasserted = False
        self._overwrites_seen: collections.Counter = collections.Counter()
        # Reconcile state: the worker's alone, made by ``prepare``.
        self.index: LeaseIndex
        self.desired: DesiredIndex
        self.tracker: Tracker
        self._skip_labels: dict[str, str] = {}
        self._skip_counts: collections.Counter = collections.Counter()
        self._skips_exported: tuple = ()      # the counts flannel_reconciler_leases_skipped shows
        self._own_ip_dups: set[str] = set()
        self._skip_window = float("-inf")   # skip-log rate limit: window start, lines in it, the rest
        self._skip_logged = 0
        self._skip_suppressed: collections.Counter = collections.Counter()
        self._pin_changes: set[str] = set()
        self._folded_revision = 0     # the last etcd revision folded into the index
        self._config_warned: str | None = None
        self._no_own_lease = False
        self._netns_inode: int | None = None
        self._retry_at: float | None = None
        self._retry_delay = opts.retry_min
        # Packet filter rules: a RuleReconciler, or None (rules not managed,
        # as in tests whose backend is not a real kernel).
        self.rules = rules
        self._rules_lock = threading.Lock()
        self._rules_lease = None
        self._rules_error: str | None = None

    # ------------------------------------------------------------- start-up
    def start(self, stop: threading.Event) -> None:
        """Read the config, pick the VTEP MAC, acquire our lease, list the leases."""
        self._start_http()
        self.config = self._wait_for_config(stop)
        underlay = self.backend.underlay(self._underlay_spec())
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
        self._netns_inode = _netns_inode(self.opts.netns)
        self._init_health(underlay)
        self.prepare(self.config, self.node, on_link_predicate(underlay.prefixes + underlay.prefixes6),
                     underlay_prefixes=underlay.prefixes)

        def acquire():
            snap = self.store.snapshot()
            mac = self._choose_vtep_mac(snap.kvs)
            mac6 = self._choose_v6_vtep_mac(snap.kvs) if public_ipv6 else None
            got = acquire_lease(self.store, self.config, public_ip, mac,
                                read_previous_subnet(self.opts.subnet_file), self.rng, public_ipv6=public_ipv6,
                                v6_vtep_mac=mac6, previous_ipv6_subnet=read_previous_ipv6_subnet(self.opts.subnet_file))
            return mac, mac6, got

        mac, mac6, acquired = self._retry_etcd("acquire a lease", acquire, stop)
        log.info("lease %s for %s (vtep %s%s, %s)", acquired.key, public_ip, mac,
                 f"; {public_ipv6} vtep {mac6}" if mac6 else "",
                 "reservation" if acquired.reservation else f"etcd lease {acquired.lease_id:x}")
        # The one rule for "which lease is ours": the one the keeper holds (see LeaseIndex.pin).
        self._pin_changes = self.index.pin(acquired.key)
        self.keeper = LeaseKeeper(self.store, self.config, public_ip, mac, acquired, self.rng, now=self.clock(),
                                  public_ipv6=public_ipv6, v6_vtep_mac=mac6,
                                  renew_margin=self.opts.renew_margin)
        self._retry_etcd("list the leases", self._relist, stop)

    def _underlay_spec(self) -> UnderlaySpec:
        iface = self.opts.iface
        ifaces = (iface,) if isinstance(iface, str) else tuple(iface or ())
        return UnderlaySpec(ifaces=ifaces, regexes=tuple(self.opts.iface_regex),
                            can_reach=self.opts.iface_can_reach, public_ip=self.opts.public_ip)

    def prepare(self, config: NetworkConfig, node: NodeParams, on_link: Callable[[str], bool] | None = None,
                underlay_prefixes: tuple[str, ...] = ()) -> None:
        """The reconcile state for ``config`` and this node: an empty lease index, desired state
        and believed kernel view.  ``start`` calls it once it knows both; the tests and the
        per-event benchmark call it to drive cycles without etcd.  ``underlay_prefixes``: the
        underlay's connected prefixes, which no peer lease may capture (``underlay_guard``)."""
        self.config, self.node = config, node
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
        self._lease_q.append(("event", event, self.clock()))

    def queue_listing(self, kvs: Iterable[RawKV], revision: int = 0) -> None:
        """A complete lease listing, as after start-up or a compaction: it replaces the table."""
        self._lease_q.append(("list", list(kvs), self.clock(), revision))
        self._listed = True

    def queue_kernel_events(self, events: list | None) -> None:
        """Kernel notifications as the monitor delivers them (None: some were lost)."""
        self._kernel_q.append(events)

    @property
    def listed(self) -> bool:
        """Whether a complete lease listing has been queued (no cycle runs before one)."""
        return self._listed

    @property
    def retry_at(self) -> float | None:
        """When failed or held-back changes are looked at again (the agent's clock), or None."""
        return self._retry_at

    def pending(self) -> dict[str, int]:
        """What the worker has still to do: queued lease and kernel items, dirty keys, and
        whether a dump or a full plan is due.  All zero: idle."""
        return {"lease_items": len(self._lease_q), "kernel_items": len(self._kernel_q),
                "dirty_keys": len(self.tracker.dirty), "dump": int(self.tracker.needs_dump),
                "full_plan": int(self.tracker.full)}

    def _retry_etcd(self, what: str, fn, stop: threading.Event):
        """Start-up steps wait for etcd like flanneld does, with a capped backoff,
        instead of exiting: nothing in the kernel is touched meanwhile."""
        delay = 1.0
        while True:
            try:
                return fn()
            except EtcdAuthError:
                raise
            except EtcdError as exc:
                self._set_etcd_ok(False)
                log.warning("cannot %s: %s; retrying in %.0fs", what, exc, delay)
            if stop.wait(delay):
                raise ReconcilerError(f"stopped before we could {what}")
            delay = min(delay * 2, 30.0)

    def _wait_for_config(self, stop: threading.Event) -> NetworkConfig:
        # flanneld retries every second until the config exists.
        warned = False
        while not stop.is_set():
            try:
                raw = self.store.get_config()
            except EtcdAuthError:
                raise  # wrong certificate or password: retrying cannot help, say so and exit
            except EtcdError as exc:
                raw = None
                self._set_etcd_ok(False)
                log.warning("etcd: %s; retrying", exc)
            if raw is not None:
                cfg = parse_network_config(raw)
                require_vxlan(cfg)
                require_ipv4(cfg)
                self._set_etcd_ok(True)
                return cfg
            if not warned:
                log.warning("no network config at %s/config yet; waiting", self.store.prefix)
                warned = True
            stop.wait(1.0)
        raise ReconcilerError("stopped before the network config appeared")

    def _choose_vtep_mac(self, kvs) -> str:
        """Keep the MAC peers already know: the live device's, else our lease's, else a new one.

        flanneld picks a fresh random MAC whenever it creates the device, and
        every peer's permanent neighbour entry goes stale (flannel #1795,
        #1330); reusing the advertised MAC avoids that churn altogether.
        """
        return self._known_mac(kvs, self.config.device_name, lambda lease: lease.vtep_mac)

    def _choose_v6_vtep_mac(self, kvs) -> str:
        """``_choose_vtep_mac`` for ``flannel-v6.<VNI>``: its live MAC, else our
        lease's BackendV6Data.VtepMAC, else a new random one."""
        return self._known_mac(kvs, self.config.v6_device_name, lambda lease: lease.v6_vtep_mac)

    def _known_mac(self, kvs, dev: str, mac_of) -> str:
        live = self.backend.dump([dev]).get("link", dev)
        if live is not None and live.type == "vxlan" and live.mac:
            return live.mac
        base = self.store.subnets_prefix
        for kv in kvs:
            if not kv.key.startswith(base):
                continue
            try:
                lease = parse_lease(kv.key[len(base):], kv.value, kv.lease)
            except ReconcilerError:
                continue
            if lease.public_ip == self.node.public_ip and mac_of(lease):
                return mac_of(lease)
        return random_vtep_mac(self.rng)

    def _relist(self, checked: bool = False) -> None:
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
            self._lease_q.append(("list", kvs, self.clock(), snap.revision, self._rollback is not None))
            self._listed = True
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
            self._want_own_lease_check()
            return      # the same one, seen again before its listing is in: said once
        log.error("etcd went back in time: %s (wiped or restored from a backup?); re-listing, re-asserting "
                  "our lease, deleting nothing for %.0fs; the kernel is left as it is", why,
                  self.opts.rollback_settle)
        self.metrics.inc("flannel_reconciler_etcd_rollbacks_total")
        self.metrics.set("flannel_reconciler_etcd_revision_backwards", 1)
        self._rollback_listed = False
        self._rollback_reasserted = False
        self._rollback = why
        self._want_own_lease_check()

    def _rollback_active(self) -> bool:
        """True while a history gone back is not settled (the readiness condition)."""
        if self._rollback is None:
            return False
        if self._rollback_listed and self._rollback_reasserted and self.clock() >= self._rollback_until:
            log.info("etcd settled after going back (%s): deletions allowed again", self._rollback)
            self._rollback = None
            self.metrics.set("flannel_reconciler_etcd_revision_backwards", 0)
            return False
        return True

    def _want_own_lease_check(self) -> None:
        """Ask the etcd thread to check our key now (a watch event on it, no own lease in the
        table, etcd gone back)."""
        self.state.check_own_lease = True
        self._etcd_wake.set()

    # ------------------------------------------------------------ the loops
    def run(self, stop: threading.Event) -> None:
        # A stop wakes the worker at once, whatever the resync interval.
        def waker() -> None:
            stop.wait()
            self.state.wake.set()
            self._etcd_wake.set()

        threading.Thread(target=waker, name="stop-waker", daemon=True).start()
        self.start(stop)
        threads = [threading.Thread(target=self._watch_loop, args=(stop,), name="lease-watch", daemon=True)]
        subscribed = threading.Event()
        if hasattr(self.backend, "watch_kernel"):
            threads.append(threading.Thread(target=self._kernel_loop, args=(stop, subscribed),
                                            name="kernel-events", daemon=True))
        else:
            subscribed.set()
        threads.append(threading.Thread(target=self._etcd_loop, args=(stop,), name="etcd", daemon=True))
        if self.rules is not None:
            threads.append(threading.Thread(target=self._rules_loop, args=(stop,), name="rules", daemon=True))
        for t in threads:
            t.start()
        # Subscribe before the first dump, so that nothing falls between them.
        subscribed.wait(5.0)
        try:
            self._work_loop(stop)
        finally:
            stop.set()
            self.notifier.stopping()
            for s in self._servers:
                s.shutdown()
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

    def _heard_from_etcd(self) -> None:
        self._last_etcd_answer = self.clock()
        if not self.state.etcd_ok:
            self._set_etcd_ok(True)

    def _watch_loop(self, stop: threading.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                # A progress probe every 5 s of silence: a hung etcd is noticed within
                # ~10 s (probe + timeout), and reported through health at once.
                for ev in self.store.watch(self._revision + 1, stop, progress_interval=5.0,
                                           health=self._on_etcd_health, cluster_id=self._cluster_id):
                    self._lease_q.append(("event", ev, self.clock()))
                    self._revision = max(self._revision, ev.revision)
                    self._heard_from_etcd()
                    if self.keeper is not None and ev.kv.key == self.keeper.current.key:
                        self._want_own_lease_check()
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
                self._set_etcd_ok(False)
                log.warning("lease watch: %s; failing static, retrying in %.1fs", exc, backoff)
                self.metrics.inc("flannel_reconciler_etcd_watch_restarts_total", reason="error")
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                self._try_relist(stop)

    def _on_etcd_health(self, ok: bool) -> None:
        if ok:
            self._heard_from_etcd()
        else:
            self._set_etcd_ok(False)

    def _try_relist(self, stop: threading.Event, checked: bool = False) -> bool:
        try:
            self._relist(checked)
        except ReconcilerError as exc:
            self._set_etcd_ok(False)
            log.warning("re-list failed: %s", exc)
            return False
        return True

    def _set_etcd_ok(self, ok: bool) -> None:
        if ok != self.state.etcd_ok:  # log transitions only
            log.warning("etcd %s", "reachable again" if ok else "unreachable: failing static (no deletions)")
            self.notifier.status("etcd reachable again" if ok else "etcd unreachable: failing static (no deletions)")
        self.state.etcd_ok = ok
        self.metrics.set("flannel_reconciler_etcd_up", 1 if ok else 0)

    def _kernel_loop(self, stop: threading.Event, subscribed: threading.Event) -> None:
        devices = set(owned_devices(self.config, self.node.bridge))
        networks = [str(n) for n in (self.config.network, self.config.ipv6_network) if n is not None]

        def on_events(events) -> None:
            # None: the kernel dropped notifications; only a dump can tell what we missed.
            self._kernel_q.append(events)
            self._mark("kernel")

        try:
            self.backend.watch_kernel(devices, networks, on_events, stop, subscribed)
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
                    fold_burst(lambda: len(self._lease_q) + len(self._kernel_q), stop.wait, time.monotonic,
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

        (The network config is etcd's: the etcd thread checks it, ``_check_config``.)
        """
        if self.opts.netns is not None and _netns_inode(self.opts.netns, missing_ok=True) != self._netns_inode:
            self.state.broken = (f"network namespace {self.opts.netns} was deleted or replaced: this agent "
                                 f"programs a namespace nobody uses; restart it")
            log.error("%s", self.state.broken)

    # ------------------------------------------------------------ the etcd thread
    def _etcd_loop(self, stop: threading.Event) -> None:
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
            self._etcd_wake.wait(min(max(0.0, due - now), 1.0))
            self._etcd_wake.clear()
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
        answer makes the lease view trustworthy again for ``_FRESH`` s, and wakes the worker."""
        try:
            self.store.status()
        except ReconcilerError as exc:
            if self.state.etcd_ok:
                log.warning("etcd probe before a deletion: %s", exc)
            self._set_etcd_ok(False)
            return
        self._heard_from_etcd()
        self._mark("etcd")

    def _keep_lease(self) -> bool:
        """Run the keeper (on the etcd thread); False when etcd did not answer."""
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
                self._set_etcd_ok(False)
            if check:
                self.state.check_own_lease = True
            return False
        self._report_own_key()
        if check and rollback is not None and rollback is self._rollback and not self._rollback_reasserted:
            log.info("our lease %s re-asserted after etcd went back", esc(self.keeper.current.key))
            self._rollback_reasserted = True
        if self.keeper.current.key != before.key:
            log.warning("our lease moved: %s -> %s", esc(before.key), esc(self.keeper.current.key))
            self._lease_q.append(("pin", self.keeper.current.key, self.clock()))
            self._try_relist(threading.Event())
        return True

    def _report_own_key(self) -> None:
        """The keeper's findings about writes over our key: counted, and a gauge while our key
        holds something that is not ours."""
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

    # ------------------------------------------------------------ one cycle
    def _drain_leases(self) -> tuple[set[str], float | None]:
        """Fold queued lease events into the index; return the changed keys and the oldest arrival."""
        changed: set[str] = set()
        oldest = None
        q = self._lease_q
        while q:
            item = q.popleft()
            if item[0] == "pin":    # the keeper moved to another key (acquire.py)
                changed |= self.index.pin(item[1])
                continue
            if item[0] == "list":
                changed |= self.index.replace_all(item[1])
                revision = item[3] if len(item) > 3 else None
                if len(item) > 4 and item[4] and self._rollback is not None and not self._rollback_listed:
                    # The listing after etcd went back: complete, but what it lacks may only be
                    # missing for now; deletions wait rollback_settle s more.
                    self._rollback_listed = True
                    self._rollback_until = self.clock() + self.opts.rollback_settle
            else:
                ev = item[1]
                changed |= self.index.put(ev.kv) if ev.type == "put" else self.index.delete(ev.kv.key)
                revision = ev.revision
            oldest = item[2] if oldest is None else min(oldest, item[2])
            if revision:
                self._folded_revision = max(self._folded_revision, revision)
        return changed, oldest

    def _drain_kernel(self) -> int:
        changed = 0
        q = self._kernel_q
        while q:
            events = q.popleft()
            if events is None:
                self.tracker.needs_dump = True
            else:
                changed += self.tracker.observe(events)
        return changed

    def _report_leases(self, changed: set[str]) -> None:
        """Log a lease's standing when it changes (never again while it stays the same), and keep
        the skip gauges, whose reason label is one of a few fixed words.

        At most ``_SKIP_LINES`` skipped leases are logged one by one per ``_SKIP_WINDOW``
        seconds; the rest of a burst (someone writing thousands of junk keys) is counted and
        said in one summary line per window, so etcd content cannot flood the log."""
        now = self.clock()
        for key in sorted(changed):
            old = self._skip_labels.pop(key, None)
            if old is not None:
                self._skip_counts[old] -= 1
            self._own_ip_dups.discard(key)
            skip = self.index.skipped.get(key)
            if skip is not None:
                label = skip_reason_label(skip.reason)
                self._skip_labels[key] = label
                self._skip_counts[label] += 1
                parsed = self.index.parsed(key)
                if parsed is not None and parsed.public_ip == self.node.public_ip:
                    # Two leases for one node: ours is the one we keep alive; say so loudly.
                    self._own_ip_dups.add(key)
                    log.error("lease %s also carries our PublicIP %s; this node keeps %s and ignores it "
                              "(delete the one you do not want)", esc(key), self.node.public_ip,
                              esc(self.index.pinned))
                else:
                    if now - self._skip_window >= _SKIP_WINDOW:
                        self._flush_skip_summary(now)
                    if self._skip_logged < _SKIP_LINES:
                        self._skip_logged += 1
                        log.warning("skipped lease %s: %s", esc(key), esc(skip.reason))
                    else:
                        self._skip_suppressed[label] += 1
            elif old is not None and key in self.index.valid:
                log.info("lease %s is valid again", esc(key))
        if self._skip_suppressed and now - self._skip_window >= _SKIP_WINDOW:
            self._flush_skip_summary(now)
        if changed:
            self.metrics.set("flannel_reconciler_own_public_ip_duplicates", len(self._own_ip_dups))
            self.metrics.set("flannel_reconciler_leases", len(self.index.valid))
            # Every reason, 0s included, so a scrape never sees one missing or briefly 0; and
            # only when a count moved: ten metric calls would be a tenth of a lease event's cycle.
            skips = tuple(self._skip_counts[label] for label in SKIP_REASONS)
            if skips != self._skips_exported:
                self._skips_exported = skips
                for label, n in zip(SKIP_REASONS, skips):
                    self.metrics.set("flannel_reconciler_leases_skipped", n, reason=label)

    def _flush_skip_summary(self, now: float) -> None:
        if self._skip_suppressed:
            log.warning("skipped %d more leases in the last %.0fs (%s); not named one by one",
                        sum(self._skip_suppressed.values()), now - self._skip_window,
                        ", ".join(f"{k}={v}" for k, v in sorted(self._skip_suppressed.items())))
            self._skip_suppressed.clear()
        self._skip_window, self._skip_logged = now, 0

    def cycle(self, triggers: set[str]) -> CycleReport | None:
        """Fold in what changed, plan the dirty keys, apply.  Returns None when it could not run."""
        if not self._listed:
            return None
        t0 = time.monotonic()
        tr = _tr(triggers)
        primary = primary_trigger(triggers)    # one label value per cycle (docs/metrics.md)
        changed, oldest = self._drain_leases()
        changed |= self._pin_changes
        self._pin_changes = set()
        self._report_leases(changed)
        self.tracker.dirty |= self.desired.update(self.index, changed)
        self._drain_kernel()
        if self.desired.own is None:
            # Checked on the next wake-up (our key's watch event, or the resync
            # timer): never a tight loop while etcd is away.
            if not self._no_own_lease:   # said once per absence, not once per lease event meanwhile
                log.warning("no valid lease has PublicIP %s: re-acquiring, kernel left as it is",
                            self.node.public_ip)
                self._no_own_lease = True
            self._want_own_lease_check()
            self.metrics.inc("flannel_reconciler_cycles_total", trigger=primary, outcome="no-lease")
            return None

        self._no_own_lease = False
        dumped = False
        full = "resync" in triggers or self.tracker.needs_dump
        if full:
            try:
                self.tracker.replace_live(dump_live(self.backend, self.config, self.node.bridge))
            except ReconcilerError as exc:
                log.error("cycle aborted, nothing written: %s", exc)
                self.metrics.inc("flannel_reconciler_cycles_total", trigger=primary, outcome="error")
                self._schedule_retry()
                return None
            dumped = True
            self.metrics.inc("flannel_reconciler_dumps_total")
            # Events queued during the dump are newer than it, or repeat it.
            self._drain_kernel()

        plan = self.tracker.plan(self.desired.state)
        held: tuple = ()
        if any(c.op == "delete" and c.kind != "link" for c in plan) and not self._deletions_trusted():
            # Fail static: a deletion needs a lease view we can trust; it stays pending.
            held = tuple(c for c in plan if c.op == "delete" and c.kind != "link")
            plan = Plan(tuple(c for c in plan if c.op != "delete" or c.kind == "link"), plan.conflicts)
        results = apply_plan(self.backend, plan, self.desired.state) if plan.changes else []
        self.tracker.settle(plan, results, held)
        if self.rules is not None and self.desired.own != self._rules_lease:
            # Rules depend on our own lease and the config only: written here when our lease
            # first appears or changes; checked every --iptables-resync seconds by their own
            # thread.  Not on every lease event: reading them back costs subprocesses.
            self._sync_rules(self.desired.own)
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
        if failed or held:
            self._schedule_retry()
        else:
            self._retry_delay = self.opts.retry_min
            self.metrics.set("flannel_reconciler_last_successful_sync_timestamp_seconds", time.time())
        if full and self._skip_suppressed:
            self._flush_skip_summary(self.clock())
        if full and self.index.skipped:
            log.info("%d leases skipped (%s)", len(self.index.skipped),
                     ", ".join(f"{k}={v}" for k, v in sorted(self._skip_counts.items()) if v))
        if dumped and not any(r.ok and r.change.kind in ("link", "address") for r in results):
            # (After a device or address write the kernel's side effects -- the bridge's connected
            # route -- are known only to the next dump, which that write asks for: check then.)
            self._check_data_plane()
        # subnet.env (what the CNI plugin needs) depends on our own devices and
        # addresses only: one peer's failing entry must not keep pods from starting.
        if not any(r.change.kind in ("link", "address") for r in failed):
            if self._write_subnet_env() and not self.state.ready:
                self.state.ready = True
                self.metrics.set("flannel_reconciler_ready", 0 if self._failing_conditions() else 1)
                log.info("ready: first full sync done, %s written", self.opts.subnet_file)
                # Like flanneld: READY=1 once our devices are programmed and subnet.env is written.
                self.notifier.ready(f"ready: subnet {self.desired.own.subnet}, {len(self.index.valid)} leases, "
                                    f"{self.opts.subnet_file} written")
        duration = time.monotonic() - t0
        if oldest is not None and results:
            self.metrics.observe("flannel_reconciler_etcd_to_kernel_seconds", self.clock() - oldest)
        self.metrics.observe("flannel_reconciler_cycle_duration_seconds", duration)
        if len(results) > 1000:    # a cold start or a re-created device, not every resync
            _trim_heap()
        # Set last: once it shows a revision, everything that revision caused is done (and counted).
        self.metrics.set("flannel_reconciler_lease_revision", self._folded_revision)
        self.metrics.inc("flannel_reconciler_cycles_total", trigger=primary, outcome="failed" if failed else "ok")
        s = plan.summary()
        level = logging.INFO if (plan.changes or failed or full) else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "cycle trigger=%s leases=%d skipped=%d create=%d update=%d delete=%d failed=%d "
                    "held=%d dump=%s etcd=%s duration=%.3fs", tr, len(self.index.valid), len(self.index.skipped),
                    s["create"], s["update"], s["delete"], len(failed), len(held), "yes" if dumped else "no",
                    "up" if self.state.etcd_ok else "DOWN", duration)
        self.state.last_cycle_end = self.clock()
        self.last_cycle = CycleReport(frozenset(triggers), plan, tuple(results), dumped, duration, self.index)
        return self.last_cycle

    def _schedule_retry(self) -> None:
        """Failed or held-back changes stay dirty; look at them again after a growing pause."""
        self._retry_at = self.clock() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self.opts.retry_max)

    def _deletions_trusted(self) -> bool:
        """Before deleting: can we trust the lease view?  Yes when etcd answered within the last
        ``_FRESH`` s (a lease event, a watch progress answer, a probe): a peer's lease deleted is
        acted on without an extra round trip.  Otherwise the etcd thread is asked for one
        probe, and the deletions stay held (their keys dirty) until its answer wakes us: the
        worker never waits for etcd.  Never while etcd's history went back and has not settled."""
        if self._rollback_active():
            return False
        if self.state.etcd_ok and self.clock() - self._last_etcd_answer < _FRESH:
            return True
        self._probe_wanted = True
        self._etcd_wake.set()
        return False

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

    # ----------------------------------------------------------------- HTTP
    def _start_http(self) -> None:
        routes = {"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics}
        ports: dict[int, dict] = {}
        if self.opts.healthz_port:
            ports.setdefault(self.opts.healthz_port, {}).update(
                {"/healthz": routes["/healthz"], "/readyz": routes["/readyz"]})
        if self.opts.metrics_port:
            ports.setdefault(self.opts.metrics_port, {})["/metrics"] = routes["/metrics"]
        for port, r in ports.items():
            self._servers.append(serve_http(self.opts.healthz_ip, port, r))

    def _liveness_window(self) -> float:
        return self.opts.liveness_window or max(60.0, 3 * self.opts.resync_interval)

    def _healthz(self):
        if self.state.broken:
            return 503, "text/plain", f"{self.state.broken}\n"
        age = self.clock() - self.state.last_cycle_end
        if self.state.last_cycle_end and age <= self._liveness_window():
            return 200, "text/plain", f"flannel-reconciler is running (last cycle {age:.1f}s ago)\n"
        if not self.state.last_cycle_end:
            return 200, "text/plain", "flannel-reconciler is starting\n"
        return 503, "text/plain", f"reconcile loop stalled: last cycle {age:.1f}s ago\n"

    def _readyz(self):
        bad = self._failing_conditions()
        if self.state.ready and bad:
            return 503, "text/plain", "".join(f"not ready: {c.name}: {c.reason}\n" for c in bad)
        if self.state.ready:
            why = self._identity_conditions()
            if why:
                return 503, "text/plain", f"flannel-reconciler is not ready: {why}\n"
            return 200, "text/plain", "flannel-reconciler is ready\n"
        return 503, "text/plain", "flannel-reconciler is not ready yet\n"

    def _identity_conditions(self) -> str:
        """Why this node's identity in etcd is in doubt ("" when it is not): etcd's history
        went back and has not settled, or our key holds something that is not ours."""
        why = []
        if self._rollback_active():
            why.append(f"etcd went back in time ({self._rollback}); re-listed, deletions held back")
        if self.keeper is not None and self.keeper.not_ours:
            why.append(self.keeper.not_ours)
        return "; ".join(why)

    def _metrics(self):
        return 200, CONTENT_TYPE, self.metrics.render()


def _netns_inode(name: str | None, missing_ok: bool = False) -> int | None:
    """The inode of ``/var/run/netns/NAME`` (None: no namespace given, or gone when ``missing_ok``)."""
    if name is None:
        return None
    from reconciler.kernel.netlink.common import NETNS_RUN_DIR

    try:
        return os.stat(os.path.join(NETNS_RUN_DIR, name)).st_ino
    except OSError:
        if missing_ok:
            return None
        raise


def _trim_heap() -> None:
    """After a large cycle: give its memory back, and take the long-lived state out of the GC's walks.

    A cold start's 15,000 changes, their results and the dump buffers are
    freed afterwards, but glibc keeps the freed heap mapped, so the agent's
    RSS would stay at the cold start's peak for its whole life:
    ``malloc_trim`` returns it.  ``gc.freeze`` moves what survives (the lease
    index, the desired state: tens of thousands of objects that live as long
    as the agent) out of the cyclic collector's generations, which would
    otherwise walk them all now and then in the middle of a cycle
    (docs/incremental.md).  A few ms, only after big cycles."""
    gc.collect()
    gc.freeze()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to trim this way
        pass


def _tr(triggers: set[str]) -> str:
    return "+".join(sorted(triggers))
