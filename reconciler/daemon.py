"""The node agent: etcd leases in, a level-triggered reconcile loop, kernel out.

Threads, and what each may touch:

* the **watch** thread reads ``<prefix>/subnets/`` from etcd and updates the
  in-memory lease table; it never talks to the kernel;
* the **link** thread (when the backend can watch links) turns netlink link
  events on our devices into a dirty mark;
* the **worker** (the caller's thread) owns the kernel: it waits for a dirty
  mark or the jittered resync timer, coalesces whatever arrived meanwhile,
  recomputes desired state from the lease table, diffs it against a fresh
  dump and applies only the difference.  Level-triggered: an event says
  "look again", never "do this", so a lost or repeated event costs nothing.

Failing static (flannel #636; Felix's "in sync" gate):

* no cycle runs before the first complete lease list has been read;
* while etcd is unreachable the lease table is frozen, and cycles repair
  drift but delete nothing (deletions need a trustworthy lease view);
* our own lease missing from the table (deleted, expired, taken by another
  PublicIP) triggers re-acquisition, never a teardown;
* SIGTERM stops the loop and leaves every kernel object in place.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .acquire import LeaseKeeper, acquire_lease
from .apply import apply_plan
from .config import NetworkConfig, parse_network_config, require_vxlan
from .desired import NodeParams, NoOwnLease, underlay_mtu
from .errors import EtcdAuthError, EtcdCompacted, EtcdError, ReconcilerError
from .leases import RawKV, parse_lease
from .metrics import Metrics, serve_http
from .plan import Plan
from .render import describe
from .reconcile import Cycle, compute_cycle, dump_live, on_link_predicate, owned_devices
from .subnet_env import read_previous_subnet, render_subnet_env, write_subnet_env

__all__ = ["Agent", "AgentOptions", "LeaseTable", "random_vtep_mac"]

log = logging.getLogger("flannel_reconciler")


@dataclass
class AgentOptions:
    public_ip: str | None = None
    iface: str | None = None
    underlay_mtu: int | None = None
    subnet_file: str = "/run/flannel/subnet.env"
    resync_interval: float = 30.0
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    metrics_port: int = 0
    ip_masq: bool = False
    #: ``onlink`` or ``nexthop`` (``desired.ROUTE_LAYOUTS``).
    route_layout: str = "onlink"
    #: Events arriving within this window are folded into one cycle.
    coalesce: float = 0.05
    #: /healthz fails when no cycle finished for this long (default: 3 resyncs, at least 60 s).
    liveness_window: float | None = None


def random_vtep_mac(rng: random.Random) -> str:
    """flanneld's choice: 6 random bytes, locally administered, unicast."""
    b = bytearray(rng.getrandbits(8) for _ in range(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


class LeaseTable:
    """The raw lease kvs under ``<prefix>/subnets/`` as last seen in etcd.

    Raw on purpose: validation happens in every cycle, so a lease that was
    skipped as bad becomes valid the moment it is fixed, and the same code
    path serves snapshots, watch events and the offline file.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kvs: dict[str, RawKV] = {}
        self.revision = 0
        self.complete = False

    def replace_all(self, kvs, revision: int) -> None:
        with self._lock:
            self._kvs = {kv.key: kv for kv in kvs}
            self.revision = revision
            self.complete = True

    def apply(self, ev) -> None:
        with self._lock:
            if ev.type == "put":
                self._kvs[ev.kv.key] = ev.kv
            else:
                self._kvs.pop(ev.kv.key, None)
            self.revision = max(self.revision, ev.revision)

    def kvs(self) -> list[RawKV]:
        with self._lock:
            return list(self._kvs.values())


@dataclass
class _State:
    dirty: threading.Event = field(default_factory=threading.Event)
    triggers: set = field(default_factory=set)
    etcd_ok: bool = True
    ready: bool = False
    last_cycle_end: float = 0.0
    check_own_lease: bool = False


class Agent:
    """One node's agent.  ``run(stop)`` blocks until ``stop`` is set."""

    def __init__(self, store, backend, opts: AgentOptions, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, metrics: Metrics | None = None) -> None:
        self.store = store
        self.backend = backend
        self.opts = opts
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.table = LeaseTable()
        self.state = _State()
        self._lock = threading.Lock()
        self.config: NetworkConfig | None = None
        self.node: NodeParams | None = None
        self.keeper: LeaseKeeper | None = None
        self._on_link = None
        self._servers = []
        self._subnet_env_text: str | None = None
        self.last_cycle: Cycle | None = None

    # ------------------------------------------------------------- start-up
    def start(self, stop: threading.Event) -> None:
        """Read the config, pick the VTEP MAC, acquire our lease, list the leases."""
        self._start_http()
        self.config = self._wait_for_config(stop)
        underlay = self.backend.underlay(self.opts.iface)
        public_ip = self.opts.public_ip or underlay.address
        mtu = underlay_mtu(self.opts.underlay_mtu, self.config.mtu, (underlay.name, underlay.mtu))
        self.node = NodeParams(public_ip=public_ip, underlay_mtu=mtu, underlay=underlay.name,
                               route_layout=self.opts.route_layout)
        self._on_link = on_link_predicate(underlay.prefixes)

        def acquire():
            snap = self.store.snapshot()
            mac = self._choose_vtep_mac(snap.kvs)
            got = acquire_lease(self.store, self.config, public_ip, mac,
                                read_previous_subnet(self.opts.subnet_file), self.rng)
            return mac, got

        mac, acquired = self._retry_etcd("acquire a lease", acquire, stop)
        log.info("lease %s for %s (vtep %s, %s)", acquired.key, public_ip, mac,
                 "reservation" if acquired.reservation else f"etcd lease {acquired.lease_id:x}")
        self.keeper = LeaseKeeper(self.store, self.config, public_ip, mac, acquired, self.rng, now=self.clock())
        self._retry_etcd("list the leases", self._relist, stop)

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
                log.warning("etcd: %s; retrying", exc)
            if raw is not None:
                cfg = parse_network_config(raw)
                require_vxlan(cfg)
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
        dev = self.config.device_name
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
            if lease.public_ip == self.node.public_ip and lease.vtep_mac:
                return lease.vtep_mac
        return random_vtep_mac(self.rng)

    def _relist(self) -> None:
        snap = self.store.snapshot()
        base = self.store.subnets_prefix
        self.table.replace_all([kv for kv in snap.kvs if kv.key.startswith(base)], snap.revision)
        self._set_etcd_ok(True)
        self._mark("relist")

    # ------------------------------------------------------------ the loops
    def run(self, stop: threading.Event) -> None:
        self.start(stop)
        threads = [threading.Thread(target=self._watch_loop, args=(stop,), name="lease-watch", daemon=True)]
        if hasattr(self.backend, "watch_links"):
            threads.append(threading.Thread(target=self._link_loop, args=(stop,), name="link-watch", daemon=True))
        for t in threads:
            t.start()
        try:
            self._work_loop(stop)
        finally:
            stop.set()
            for s in self._servers:
                s.shutdown()
            for t in threads:
                t.join(timeout=5)

    def _mark(self, trigger: str) -> None:
        with self._lock:
            self.state.triggers.add(trigger)
        self.state.dirty.set()

    def _watch_loop(self, stop: threading.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                for ev in self.store.watch(self.table.revision + 1, stop):
                    self.table.apply(ev)
                    if not self.state.etcd_ok:
                        self._set_etcd_ok(True)
                    if self.keeper is not None and ev.kv.key == self.keeper.current.key:
                        self.state.check_own_lease = True
                    self._mark("lease")
                    backoff = 0.1
                return
            except EtcdCompacted as exc:
                # Our resume point is gone from history: re-list and diff the
                # whole state (never flanneld's hot loop, #2470).
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

    def _try_relist(self, stop: threading.Event) -> None:
        try:
            self._relist()
            self._set_etcd_ok(True)
        except ReconcilerError as exc:
            self._set_etcd_ok(False)
            log.warning("re-list failed: %s", exc)

    def _set_etcd_ok(self, ok: bool) -> None:
        if ok != self.state.etcd_ok:  # log transitions only
            log.warning("etcd %s", "reachable again" if ok else "unreachable: failing static (no deletions)")
        self.state.etcd_ok = ok
        self.metrics.set("flannel_reconciler_etcd_up", 1 if ok else 0)

    def _link_loop(self, stop: threading.Event) -> None:
        devices = set(owned_devices(self.config, self.node.bridge))
        try:
            # name None: the kernel dropped events, so something may have changed.
            self.backend.watch_links(devices, lambda name: self._mark("link"), stop)
        except ReconcilerError as exc:  # periodic resync still covers drift
            log.warning("link events unavailable: %s", exc)

    def _work_loop(self, stop: threading.Event) -> None:
        next_resync = self.clock()
        while not stop.is_set():
            timeout = max(0.0, next_resync - self.clock())
            if self.state.dirty.wait(timeout):
                stop.wait(self.opts.coalesce)  # let a burst of events land
            if stop.is_set():
                break
            with self._lock:
                triggers = self.state.triggers or {"resync"}
                self.state.triggers = set()
                self.state.dirty.clear()
            if self.clock() >= next_resync:
                triggers.add("resync")
                jitter = self.rng.uniform(0.9, 1.1)
                next_resync = self.clock() + self.opts.resync_interval * jitter
            self._keep_lease()
            self.cycle(triggers)

    def _keep_lease(self) -> None:
        if self.keeper is None:
            return
        before = self.keeper.current
        try:
            if self.state.check_own_lease:
                self.state.check_own_lease = False
                self.keeper.ensure()
            else:
                self.keeper.tick(self.clock())
        except ReconcilerError as exc:
            log.warning("lease %s: %s", before.key, exc)
            return
        if self.keeper.current.key != before.key:
            log.warning("our lease moved: %s -> %s", before.key, self.keeper.current.key)
            self._try_relist(threading.Event())

    # ------------------------------------------------------------ one cycle
    def cycle(self, triggers: set[str]) -> Cycle | None:
        """Diff and apply once.  Returns the cycle, or None when it could not run."""
        if not self.table.complete:
            return None
        t0 = time.monotonic()
        try:
            dump = dump_live(self.backend, self.config, self.node.bridge)
            cycle = compute_cycle(self.config, self.table.kvs(), self.store.prefix, self.node, dump, self._on_link)
        except NoOwnLease as exc:
            # Checked on the next wake-up (our key's watch event, or the resync
            # timer): never a tight loop while etcd is away.
            log.warning("%s; re-acquiring, kernel left as it is", exc)
            self.state.check_own_lease = True
            self.metrics.inc("flannel_reconciler_cycles_total", trigger=_tr(triggers), outcome="no-lease")
            return None
        except ReconcilerError as exc:
            log.error("cycle aborted, nothing written: %s", exc)
            self.metrics.inc("flannel_reconciler_cycles_total", trigger=_tr(triggers), outcome="error")
            return None

        plan = cycle.plan
        if any(c.op == "delete" and c.kind != "link" for c in plan) and not self._etcd_reachable():
            # Fail static: a deletion needs a lease view we can trust.
            plan = Plan(tuple(c for c in plan if c.op != "delete" or c.kind == "link"), plan.conflicts)
        results = apply_plan(self.backend, plan, cycle.desired)
        failed = [r for r in results if not r.ok]
        for r in results:
            self.metrics.inc("flannel_reconciler_operations_total", kind=r.change.kind, op=r.change.op,
                             result="ok" if r.ok else ("skipped" if r.skipped else "error"))
        if "lease" not in triggers and "relist" not in triggers:
            repaired = sum(1 for r in results if r.ok)
            if repaired:
                self.metrics.inc("flannel_reconciler_drift_repaired_total", repaired)
        self._export_lease_gauges(cycle)
        for r in failed:
            log.error("failed: %s", r.message)
        for s in cycle.skipped:
            log.warning("skipped lease %s: %s", s.key, s.reason)
        for c in plan.conflicts:
            log.warning("conflict: %s is held by a foreign route (%s, proto %s); left alone",
                        describe(c.desired), describe(c.foreign), c.foreign.protocol)

        if not failed:
            self.metrics.set("flannel_reconciler_last_successful_sync_timestamp_seconds", time.time())
        # subnet.env (what the CNI plugin needs) depends on our own devices and
        # addresses only: one peer's failing entry must not keep pods from starting.
        if not any(r.change.kind in ("link", "address") for r in failed):
            self._write_subnet_env(cycle)
            if not self.state.ready:
                self.state.ready = True
                self.metrics.set("flannel_reconciler_ready", 1)
                log.info("ready: first full sync done, %s written", self.opts.subnet_file)
        duration = time.monotonic() - t0
        self.metrics.observe("flannel_reconciler_cycle_duration_seconds", duration)
        self.metrics.inc("flannel_reconciler_cycles_total", trigger=_tr(triggers),
                         outcome="failed" if failed else "ok")
        s = plan.summary()
        log.info("cycle trigger=%s leases=%d skipped=%d create=%d update=%d delete=%d failed=%d "
                 "etcd=%s duration=%.3fs", _tr(triggers), len(cycle.leases), len(cycle.skipped),
                 s["create"], s["update"], s["delete"], len(failed),
                 "up" if self.state.etcd_ok else "DOWN", duration)
        self.state.last_cycle_end = self.clock()
        self.last_cycle = cycle
        return cycle

    def _etcd_reachable(self) -> bool:
        """One cheap read, only before a cycle that would delete entries.

        The watch notices a dead etcd only when it gives up on reconnecting,
        so deletions do not rely on it: they need etcd to answer *now*."""
        try:
            self.store.get_config()
        except ReconcilerError as exc:
            log.warning("etcd unreachable (%s): failing static, deletions held back", exc)
            self._set_etcd_ok(False)
            return False
        self._set_etcd_ok(True)
        return True

    def _export_lease_gauges(self, cycle: Cycle) -> None:
        self.metrics.set("flannel_reconciler_leases", len(cycle.leases))
        self.metrics.reset("flannel_reconciler_leases_skipped")
        counts: dict[str, int] = {}
        for s in cycle.skipped:
            reason = s.reason.split(":", 1)[0][:60]
            counts[reason] = counts.get(reason, 0) + 1
        for reason, n in counts.items():
            self.metrics.set("flannel_reconciler_leases_skipped", n, reason=reason)

    def _write_subnet_env(self, cycle: Cycle) -> None:
        text = render_subnet_env(cycle.config, cycle.own.subnet, self.node.underlay_mtu, self.opts.ip_masq,
                                 cycle.own.ipv6_subnet if cycle.config.enable_ipv6 else None)
        if text != self._subnet_env_text:
            write_subnet_env(self.opts.subnet_file, text)
            self._subnet_env_text = text

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
        age = self.clock() - self.state.last_cycle_end
        if self.state.last_cycle_end and age <= self._liveness_window():
            return 200, "text/plain", f"flannel-reconciler is running (last cycle {age:.1f}s ago)\n"
        if not self.state.last_cycle_end:
            return 200, "text/plain", "flannel-reconciler is starting\n"
        return 503, "text/plain", f"reconcile loop stalled: last cycle {age:.1f}s ago\n"

    def _readyz(self):
        if self.state.ready:
            return 200, "text/plain", "flannel-reconciler is ready\n"
        return 503, "text/plain", "flannel-reconciler is not ready yet\n"

    def _metrics(self):
        return 200, "text/plain; version=0.0.4", self.metrics.render()


def _tr(triggers: set[str]) -> str:
    return "+".join(sorted(triggers))
