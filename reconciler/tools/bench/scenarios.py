"""The scenarios of one cluster size, in order, each producing ``Figure``s.

``ClusterRun(n, opts, ...).run()`` does, for one cluster of ``n`` nodes:

1. set-up: a private etcd, the config, N-1 leases written as flanneld writes them;
2. cold start baselines: ``ip -batch``/``bridge -batch``, pyroute2 one call per
   object, and ``python -m reconciler apply`` of the same snapshot, each in a
   scratch namespace;
3. cold start of the agent (``run``) in the node namespace: start -> ready ->
   all N-1 routes seen by the netlink monitor, and its CPU for it;
4. the flanneld re-enactment starts in a namespace of its own (its start-up
   adds are not timed against anything);
5. no-op: an unchanged re-put (writes, dumps), and the iproute2 dump floor;
6. lease churn: single changes one at a time (adds, VtepMAC changes,
   deletions), etcd put -> kernel in both namespaces, writes per change;
7. rolling restart: every lease re-put with the same value at once;
8. steady state: idle CPU, the no-op resync cycle (from the agent's log);
9. memory: RSS after convergence and after many changes;
10. drift: a route deleted and the device MTU changed behind the agent's back.

Everything made is registered on the caller's ``ExitStack`` the moment it
exists, so a failure or Ctrl-C anywhere still removes it.
"""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reconciler.tools.demo import AgentFailed, AgentProcess, child_env
from reconciler.tools.lab import etcd as lab_etcd
from reconciler.core.leases import LeaseSnapshot, RawKV, encode_lease_value, snapshot_to_json
from reconciler.tools.bench import baselines
from reconciler.tools.bench.cluster import (ADD_OFFSET, LEASE_TTL, NODE_IP, PREFIX, Cluster, Remote, layout, mac_for, node_namespace,
                      peer_namespace, write_leases)
from reconciler.tools.bench.monitor import NetlinkMonitor
from reconciler.tools.bench.probe import Counters, cpu_seconds, rss_mib, wait_idle
from reconciler.tools.bench.report import Figure, percentile

__all__ = ["ClusterRun", "Options", "churn_plan", "resync_durations"]

#: flanneld's writes per lease event (neigh, fdb, route), as the re-enactment makes them.
FLANNELD_WRITES_PER_EVENT = 3
#: The size the incremental-reconcile issue states most of its targets for.
TARGET_N = 5000
#: The targets, by figure name: a string holds at every size, a dict only at the sizes it
#: names (``target_for``).  A figure with none here has no target.
TARGETS: dict[str, str | dict[int, str]] = {
    "apply, whole process": {1000: "<= 2.5x baseline", TARGET_N: "<= 1.2x baseline"},
    "agent start -> all routes": {TARGET_N: "<= 1.5x baseline"},
    "unchanged re-put: netlink writes": "== 0",
    "unchanged re-put: kernel dumps": "== 0",
    "change latency p50": {TARGET_N: "<= 1.2x baseline", 20000: "<= 1.2x baseline"},
    "change latency p90": {TARGET_N: "<= 1.2x baseline", 20000: "<= 1.2x baseline"},
    "netlink writes per add (max)": {TARGET_N: "<= 3"},
    "netlink writes per VtepMAC change (max)": {TARGET_N: "<= 3"},
    "netlink writes per delete (max)": {TARGET_N: "<= 3"},
    "kernel dumps per change (max)": "== 0",
    "unchanged re-puts: netlink writes": "== 0",
    "agent CPU": {TARGET_N: "<= 0.5"},
    "no-op full resync cycle": {TARGET_N: "<= 1.5x baseline"},
    "RSS after convergence": {TARGET_N: "<= 60", 20000: "<= 110"},
    "RSS after changes": "<= 1.1x baseline",
}


def target_for(name: str, n: int) -> str | None:
    """The target of figure ``name`` at ``n`` nodes (``TARGETS``), or None."""
    target = TARGETS.get(re.sub(r"^[0-9,]+ ", "", name))    # "4,999 unchanged re-puts: ..." at any size
    return target.get(n) if isinstance(target, dict) else target


DEFAULT_RESYNC = 30.0
#: For a figure whose baseline is the kernel doing the same work (``ip -batch``,
#: ``ip -j``): "kernel" when it is within KERNEL_BOUND of it, else the process's own code.
AUTO_AGENT, AUTO_CLIENT = "auto:agent", "auto:client"
KERNEL_BOUND = 1.5


def bound_of(value: float | None, kernel_floor: float | None, otherwise: str) -> str:
    """What a figure with a kernel-floor baseline is bound by, judged from this run's numbers."""
    if value is None or not kernel_floor:
        return otherwise
    return "kernel" if value <= KERNEL_BOUND * kernel_floor else otherwise


@dataclass(frozen=True)
class Options:
    backend: str = "pyroute2"
    quick: bool = False

    @property
    def churn_changes(self) -> int:
        return 30 if self.quick else 60

    @property
    def memory_changes(self) -> int:
        return 100 if self.quick else 1000

    @property
    def idle_window(self) -> float:
        return 5.0 if self.quick else 30.0

    @property
    def resync_interval(self) -> float:
        # Quick mode shortens the resync so that the no-op resync and the
        # drift repair happen within a CI-sized run.
        return 5.0 if self.quick else DEFAULT_RESYNC


def churn_plan(cluster: Cluster, count: int) -> list[tuple[str, Remote, str | None]]:
    """``count`` single changes, cycling add, VtepMAC change, delete.

    Adds are new nodes above the agent's allocation range; VtepMAC changes
    walk the remotes from the front, deletions from the back, so no change
    touches a node an earlier one removed.  Pure: the same plan every run.
    """
    if 2 * (count // 3 + 1) > len(cluster.remotes):
        raise ValueError(f"{count} changes need more than {len(cluster.remotes)} remotes")
    plan: list[tuple[str, Remote, str | None]] = []
    adds = macs = dels = 0
    for i in range(count):
        kind = ("add", "mac", "delete")[i % 3]
        if kind == "add":
            plan.append(("add", cluster.remote(cluster.nodes + ADD_OFFSET + adds), None))
            adds += 1
        elif kind == "mac":
            r = cluster.remotes[macs]
            plan.append(("mac", r, mac_for(r.index, 1)))
            macs += 1
        else:
            dels += 1
            plan.append(("delete", cluster.remotes[-dels], None))
    return plan


_RESYNC_LINE = re.compile(r"cycle trigger=resync \S*.*? create=0 update=0 delete=0 failed=0 .*?duration=([0-9.]+)s")


def resync_durations(log_text: str) -> list[float]:
    """The durations of the agent's no-op periodic resync cycles, from its log lines."""
    return [float(m.group(1)) for m in _RESYNC_LINE.finditer(log_text)]


class Progress:
    def __init__(self, nodes: int, stream=None) -> None:
        self.nodes = nodes
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{self.nodes:,} nodes {time.monotonic() - self.t0:6.1f}s] {text}", file=self.stream, flush=True)


class ClusterRun:
    """One cluster size, start to finish.  ``figures`` and ``meta`` hold the results."""

    def __init__(self, n: int, opts: Options, workdir: Path, stack: ExitStack,
                 progress: Callable[[str], None] | None = None) -> None:
        self.n = n
        self.opts = opts
        self.workdir = workdir
        self.stack = stack
        self.say = progress or Progress(n)
        self.cluster = layout(n)
        self.figures: list[Figure] = []
        self.meta: dict = {"nodes": n, "config": self.cluster.config, "layout": self.cluster.describe(),
                           "backend": opts.backend, "resync_interval": opts.resync_interval,
                           "quick": opts.quick}
        self.live: dict[str, tuple[Remote, str, int]] = {}   # key -> (remote, current MAC, etcd lease)
        self.agent: AgentProcess | None = None
        self.samples: list[dict] = []

    # ---------------------------------------------------------------- helpers
    def fig(self, scenario: str, name: str, value, unit: str, **kw) -> Figure:
        if "target" not in kw:
            kw["target"] = target_for(name, self.n)
        if kw.get("bound") in (AUTO_AGENT, AUTO_CLIENT):
            kw["bound"] = bound_of(value, kw.get("baseline_value"), kw["bound"].split(":")[1])
        f = Figure(scenario, name, value, unit, **kw)
        self.figures.append(f)
        return f

    def counters(self) -> Counters:
        status, text = self.agent.get("/metrics", timeout=10)
        if status != 200:
            raise AgentFailed(f"the agent's /metrics answered {status}: {text[:200]}")
        return Counters.from_text(text)

    def check_agent(self) -> None:
        if not self.agent.alive:
            raise AgentFailed(f"the agent exited (status {self.agent.proc.returncode}); last lines of "
                              f"{self.agent.log_path}:\n{self.agent.log_tail()}")

    def settle(self, quiet: float = 0.3, timeout: float = 600.0) -> float:
        self.check_agent()
        return wait_idle(self.agent.pid, quiet=quiet, timeout=timeout)

    def put(self, remote: Remote, mac: str, lease: int) -> None:
        self.store.put(self.store.subnets_prefix + remote.key, remote.value(mac), lease)

    # ---------------------------------------------------------------- the run
    def run(self) -> None:
        self.setup()
        self.cold_baselines()
        self.cold_agent()
        self.start_flanneld()
        self.noop()
        self.churn()
        self.stop_flanneld()
        self.storm()
        self.steady()
        self.memory()
        self.drift()
        self.finish()

    # 1 ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        from reconciler.etcd.store import EtcdStore

        self.say(f"set-up: {self.cluster.describe()}; private etcd")
        self.etcd = lab_etcd.LocalEtcd(self.workdir)
        self.stack.callback(self.etcd.stop)
        self.etcd.start()
        self.store = self.stack.enter_context(EtcdStore([self.etcd.endpoint], prefix=PREFIX, timeout=30))
        self.store.put_config(self.cluster.config)
        t0 = time.monotonic()
        leases = write_leases(self.store, self.cluster)
        for r in self.cluster.remotes:
            self.live[r.key] = (r, r.vtep_mac, leases[r.key])
        self.say(f"set-up: {len(leases):,} leases written (grant + put each) in {time.monotonic() - t0:.1f}s")
        # The snapshot `apply` reads: the same leases, plus a lease for the node itself.
        own = self.cluster.remote(self.n)
        kvs = [RawKV(f"{PREFIX}/config", self.cluster.config)]
        kvs += [RawKV(f"{PREFIX}/subnets/{r.key}", r.value(), leases[r.key], i + 2)
                for i, r in enumerate(self.cluster.remotes)]
        kvs.append(RawKV(f"{PREFIX}/subnets/{own.key}", encode_lease_value(NODE_IP, mac_for(0, 2), 1),
                         1, len(kvs) + 2))
        self.snapshot_file = self.workdir / "snapshot.json"
        self.snapshot_file.write_text(snapshot_to_json(LeaseSnapshot(PREFIX, len(kvs) + 2, tuple(kvs))))

    # 2 ------------------------------------------------------ cold baselines
    def cold_baselines(self) -> None:
        remotes, want = self.cluster.remotes, (self.n - 1,) * 3
        with peer_namespace("ipbatch") as ns:
            self.t_iproute2 = baselines.iproute2_install(ns, remotes)
            got = baselines.installed(ns)
        self._expect(got, want, "ip -batch")
        self.say(f"cold start baseline: ip -batch + bridge -batch {self.t_iproute2:.2f}s")
        with peer_namespace("pyroute2") as ns:
            t_pyroute2 = baselines.pyroute2_install(ns, remotes)
            got = baselines.installed(ns)
        self._expect(got, want, "pyroute2")
        self.say(f"cold start baseline: pyroute2 one call per object {t_pyroute2:.2f}s")
        with node_namespace("apply") as ns:
            t_apply = baselines.apply_whole_process(ns, str(self.snapshot_file), self.opts.backend, child_env())
            got = baselines.installed(ns)
        self._expect(got, want, "apply")
        self.say(f"cold start: python -m reconciler apply (whole process) {t_apply:.2f}s")
        base = "ip -batch + bridge -batch"
        self.fig("cold start", "apply, whole process", t_apply, "s", baseline=base, baseline_value=self.t_iproute2,
                 bound=AUTO_AGENT)
        self.fig("cold start", "pyroute2 install", t_pyroute2, "s", baseline=base, baseline_value=self.t_iproute2,
                 bound=AUTO_CLIENT, note="pyroute2, one call per object (in-process, socket open untimed)")

    def _expect(self, got, want, what: str) -> None:
        if got != want:
            raise RuntimeError(f"{what}: installed (routes, neighbours, fdb) = {got}, expected {want}")

    # 3 --------------------------------------------------------- agent cold
    def cold_agent(self) -> None:
        self.ns = self.stack.enter_context(node_namespace("agent"))
        self.mon = self.stack.enter_context(NetlinkMonitor(self.ns))
        self.agent = AgentProcess(self.ns, self.workdir / "agent", ["--etcd-endpoints", self.etcd.endpoint],
                                  iface="eth0", resync_interval=self.opts.resync_interval,
                                  extra_args=["--netlink-backend", self.opts.backend])
        self.stack.callback(self.agent.stop)
        timeout = 120 + self.n * 0.03
        self.say(f"cold start: agent (--netlink-backend {self.opts.backend}) in {self.ns}")
        mark = self.mon.mark()
        t0 = time.monotonic()
        self.agent.start()
        while not self.agent.ready():
            self.check_agent()
            if time.monotonic() - t0 > timeout:
                raise AgentFailed(f"the agent is not ready after {timeout:g}s:\n{self.agent.log_tail()}")
            time.sleep(0.05)
        t_ready = time.monotonic()
        wanted = {("route", "new", str(r.subnet)) for r in self.cluster.remotes}
        t_routes = self.mon.wait_all(wanted, mark, timeout=max(10.0, timeout - (t_ready - t0)))
        cpu = cpu_seconds(self.agent.pid)
        self.settle(quiet=1.0)
        self._expect(baselines.installed(self.ns), (self.n - 1,) * 3, "the agent")
        self.rss_converged = rss_mib(self.agent.pid)
        self.log_mark = len(self.agent.log())
        note = "" if t_routes is not None else f"monitor missed notifications (overruns {self.mon.overruns})"
        routes_s = None if t_routes is None else t_routes - t0
        self.say(f"cold start: ready after {t_ready - t0:.2f}s, all {self.n - 1:,} routes after "
                 f"{routes_s if routes_s is None else round(routes_s, 2)}s, agent CPU {cpu:.2f}s, "
                 f"RSS {self.rss_converged:.1f} MiB")
        base = "ip -batch + bridge -batch"
        self.fig("cold start", "agent start -> all routes", routes_s, "s", baseline=base,
                 baseline_value=self.t_iproute2, bound=AUTO_AGENT,
                 note=note)
        self.fig("cold start", "agent start -> ready", t_ready - t0, "s", baseline=base,
                 baseline_value=self.t_iproute2)
        self.fig("cold start", "agent CPU, start -> all routes", cpu, "s CPU")

    # 4 ----------------------------------------------------- flanneld peer
    def start_flanneld(self) -> None:
        self.peer_ns = self.stack.enter_context(peer_namespace("flanneld"))
        self.peer_mon = self.stack.enter_context(NetlinkMonitor(self.peer_ns))
        self.flanneld_stats = self.workdir / "flanneld-stats.json"
        ready = self.workdir / "flanneld-ready"
        log = open(self.workdir / "flanneld.log", "ab")
        self.stack.callback(log.close)
        self.flanneld = subprocess.Popen(
            [sys.executable, "-m", "reconciler.tools.bench.flanneld", "--etcd-endpoints", self.etcd.endpoint,
             "--netns", self.peer_ns, "--stats", str(self.flanneld_stats), "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env(),
            start_new_session=True)
        self.stack.callback(self._stop_process, self.flanneld)
        deadline = time.monotonic() + 120 + self.n * 0.01
        while not ready.exists():
            if self.flanneld.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the flanneld re-enactment did not start: "
                                   f"{(self.workdir / 'flanneld.log').read_text()[-800:]}")
            time.sleep(0.05)
        self.say(f"flanneld re-enactment: started in {self.peer_ns} (pid {self.flanneld.pid})")

    @staticmethod
    def _stop_process(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def stop_flanneld(self) -> None:
        self._stop_process(self.flanneld)
        try:
            stats = json.loads(self.flanneld_stats.read_text())
        except (OSError, ValueError):
            stats = {}
        self.meta["flanneld_reenactment"] = stats
        install = stats.get("install_seconds")
        if install is not None:
            self.fig("cold start", "flanneld re-enactment start-up adds", install, "s",
                     baseline="ip -batch + bridge -batch", baseline_value=self.t_iproute2, bound=AUTO_CLIENT,
                     note="snapshot, then neigh+fdb+route per lease, one request each")

    # 5 ---------------------------------------------------------------- no-op
    def noop(self) -> None:
        self.t_dumps = baselines.iproute2_dumps(self.ns)
        self.settle(quiet=0.5)
        r, mac, lease = self.live[self.cluster.remotes[0].key]
        c0 = self.counters()
        self.put(r, mac, lease)
        time.sleep(0.2)
        self.settle(quiet=0.5)
        d = self.counters() - c0
        self.say(f"no-op: unchanged re-put -> {d.writes:g} writes, {d.cycles:g} cycles, "
                 f"dumps {'n/a' if d.dumps is None else f'{d.dumps:g}'}; ip -j dumps {self.t_dumps * 1e3:.0f} ms")
        self.fig("no-op", "unchanged re-put: netlink writes", d.writes, "", baseline="flanneld",
                 baseline_value=FLANNELD_WRITES_PER_EVENT)
        self.fig("no-op", "unchanged re-put: kernel dumps", d.dumps, "",
                 note="" if d.dumps is not None else "the agent exports no flannel_reconciler_dumps_total")

    # 6 ---------------------------------------------------------------- churn
    def churn(self) -> None:
        plan = churn_plan(self.cluster, self.opts.churn_changes)
        self.say(f"lease churn: {len(plan)} single changes, one at a time")
        base = self.store.subnets_prefix
        for i, (kind, r, new_mac) in enumerate(plan, 1):
            if kind == "delete":
                _, mac, lease = self.live.pop(r.key)
                want_agent = want_peer = r.removed(mac)
            else:
                lease = self.store.grant(LEASE_TTL)   # flanneld grants, then puts: only the put is an event
                mac = new_mac or r.vtep_mac
                if kind == "add":
                    want_agent = want_peer = r.added()
                else:
                    # An identical ``route replace`` sends no notification, so for
                    # flanneld too the change is done when neighbour and FDB say so.
                    want_agent = want_peer = r.mac_changed(mac)
            self.settle(quiet=0.2)
            c0 = self.counters()
            m1, m2 = self.mon.mark(), self.peer_mon.mark()
            t0 = time.monotonic()
            if kind == "delete":
                self.store.revoke(lease)    # what an expiring lease does: etcd deletes the key
            else:
                self.store.put(base + r.key, r.value(mac), lease)
                self.live[r.key] = (r, mac, lease)
            t_agent = self.mon.wait_all(want_agent, m1, timeout=60)
            t_peer = self.peer_mon.wait_all(want_peer, m2, timeout=30)
            self.settle(quiet=0.3)
            d = self.counters() - c0
            sample = {"kind": kind, "key": r.key,
                      "agent_ms": None if t_agent is None else (t_agent - t0) * 1e3,
                      "flanneld_ms": None if t_peer is None else (t_peer - t0) * 1e3,
                      "writes": d.writes, "writes_by": {f"{k}/{o}": v for (k, o), v in d.writes_by.items()},
                      "cycles": d.cycles, "dumps": d.dumps, "resyncs": d.resyncs,
                      "dumps_not_resync": d.dumps_not_resync}
            self.samples.append(sample)
            if i % 10 == 0 or i == len(plan):
                self.say(f"lease churn: {i}/{len(plan)} (last: {kind} {r.key}, agent "
                         f"{_ms(sample['agent_ms'])}, flanneld {_ms(sample['flanneld_ms'])}, {d.writes:g} writes)")
        self.meta["churn_samples"] = self.samples
        self._churn_figures()

    def _churn_figures(self) -> None:
        ours = [s["agent_ms"] for s in self.samples if s["agent_ms"] is not None]
        theirs = [s["flanneld_ms"] for s in self.samples if s["flanneld_ms"] is not None]
        lost = len(self.samples) - len(ours)
        note = f"{lost} of {len(self.samples)} changes never reached the kernel within 60 s" if lost else ""
        self.meta["churn_timeouts"] = {"agent": lost, "flanneld": len(self.samples) - len(theirs)}
        base = "flanneld re-enactment"
        for q in (50, 90, 99):
            self.fig("lease churn", f"change latency p{q}", percentile(ours, q), "ms", baseline=base,
                     baseline_value=percentile(theirs, q), note=note)
        self.fig("lease churn", "change latency max", max(ours) if ours else None, "ms", baseline=base,
                 baseline_value=max(theirs) if theirs else None)
        for kind, label in (("add", "add"), ("mac", "VtepMAC change"), ("delete", "delete")):
            writes = [s["writes"] for s in self.samples if s["kind"] == kind]
            self.fig("lease churn", f"netlink writes per {label} (max)", max(writes) if writes else None, "",
                     baseline=base, baseline_value=FLANNELD_WRITES_PER_EVENT)
        # The periodic resync dumps by design, and one falls into a change's window now and then
        # (60 changes take longer than a 30 s interval): its dump is not the change's.
        dumps = [s["dumps_not_resync"] for s in self.samples if s["dumps_not_resync"] is not None]
        with_resync = sum(1 for s in self.samples if s["resyncs"])
        note = (f"not counted: the periodic resync's own dump, in the window of {with_resync} change(s)"
                if with_resync else "")
        self.fig("lease churn", "kernel dumps per change (max)", max(dumps) if dumps else None, "",
                 note=note if dumps else "the agent exports no flannel_reconciler_dumps_total")

    # 7 ---------------------------------------------------------------- storm
    def storm(self) -> None:
        live = list(self.live.values())
        self.settle(quiet=1.0)
        c0, cpu0 = self.counters(), cpu_seconds(self.agent.pid)
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda item: self.put(*item), live))
        t_puts = time.monotonic() - t0
        t_idle = self.settle(quiet=1.0) - t0
        cpu = cpu_seconds(self.agent.pid) - cpu0
        d = self.counters() - c0
        self.say(f"rolling restart: {len(live):,} unchanged re-puts in {t_puts:.2f}s -> {d.writes:g} writes, "
                 f"{d.cycles:g} cycles, agent CPU {cpu:.2f}s, idle after {t_idle:.2f}s")
        self.meta["storm"] = {"re_puts": len(live), "puts_seconds": t_puts, "cycles": d.cycles, "dumps": d.dumps}
        self.fig("rolling restart", f"{len(live):,} unchanged re-puts: netlink writes", d.writes, "",
                 baseline="flanneld (3 per event)", baseline_value=FLANNELD_WRITES_PER_EVENT * len(live))
        self.fig("rolling restart", "cycles", d.cycles, "")
        self.fig("rolling restart", "kernel dumps", d.dumps, "",
                 note="" if d.dumps is not None else "the agent exports no flannel_reconciler_dumps_total")
        self.fig("rolling restart", "agent CPU", cpu, "s CPU")
        self.fig("rolling restart", "time until idle", t_idle, "s", baseline="the etcd puts themselves",
                 baseline_value=t_puts)

    # 8 --------------------------------------------------------------- steady
    def steady(self) -> None:
        self.settle(quiet=1.0)
        window = self.opts.idle_window
        cpu0 = cpu_seconds(self.agent.pid)
        time.sleep(window)
        idle = cpu_seconds(self.agent.pid) - cpu0
        # The no-op resync cycles since convergence; wait for one if none came yet.
        deadline = time.monotonic() + self.opts.resync_interval * 1.1 + 5
        durations = resync_durations(self.agent.log()[self.log_mark:])
        while not durations and time.monotonic() < deadline:
            time.sleep(0.5)
            durations = resync_durations(self.agent.log()[self.log_mark:])
        resync = statistics.median(durations) if durations else None
        self.say(f"steady state: idle CPU {idle:.3f}s over {window:g}s (resync every {self.opts.resync_interval:g}s); "
                 f"no-op resync {_ms(None if resync is None else resync * 1e3)} "
                 f"({len(durations)} seen), ip -j dumps {self.t_dumps * 1e3:.0f} ms")
        default = self.opts.resync_interval == DEFAULT_RESYNC and window == 30.0
        self.fig("steady state", f"idle CPU over {window:g} s", idle, "s CPU", target="< 0.3" if default else None,
                 bound="interval", note=f"--resync-interval {self.opts.resync_interval:g}")
        self.fig("steady state", "no-op full resync cycle", resync, "s",
                 baseline="ip -j route + ip -j neigh + bridge -j fdb", baseline_value=self.t_dumps,
                 bound=AUTO_AGENT,
                 note=f"median of {len(durations)} resync cycles from the agent's log" if durations
                 else "no no-op resync cycle in the agent's log")
        self.meta["resync_durations"] = durations

    # 9 --------------------------------------------------------------- memory
    def memory(self) -> None:
        count = self.opts.memory_changes
        live = list(self.live.values())
        self.say(f"memory: RSS {self.rss_converged:.1f} MiB after convergence; {count:,} VtepMAC changes")
        batch = 50
        for start in range(0, count, batch):
            for j in range(start, min(start + batch, count)):
                r, _, lease = live[j % len(live)]
                mac = mac_for(r.index, 2 + (j // len(live)) % 2)
                self.put(r, mac, lease)
                self.live[r.key] = (r, mac, lease)
            time.sleep(0.1)
            self.settle(quiet=0.5)
        rss = rss_mib(self.agent.pid)
        self.say(f"memory: RSS {rss:.1f} MiB after {count:,} changes")
        self.fig("memory", "RSS after convergence", self.rss_converged, "MiB")
        self.fig("memory", "RSS after changes", rss, "MiB", baseline="RSS after convergence",
                 baseline_value=self.rss_converged, note=f"{count:,} VtepMAC changes")
        self._expect(baselines.installed(self.ns), (len(self.live),) * 3, "the agent after the changes")

    # 10 --------------------------------------------------------------- drift
    def drift(self) -> None:
        self.settle(quiet=0.5)
        r = next(iter(self.live.values()))[0]
        wait = self.opts.resync_interval * 1.2 + 15
        m = self.mon.mark()
        subprocess.run(["ip", "-n", self.ns, "route", "del", str(r.subnet), "dev", "flannel.1"], check=True)
        t_del = self.mon.wait_all({("route", "del", str(r.subnet))}, m, 5)
        t_fix = self.mon.wait_all({("route", "new", str(r.subnet))}, m, wait)
        route_s = None if t_del is None or t_fix is None else t_fix - t_del
        self.settle(quiet=0.5)
        link = json.loads(subprocess.run(["ip", "-n", self.ns, "-j", "link", "show", "flannel.1"],
                                         capture_output=True, text=True, check=True).stdout)[0]
        mtu = int(link["mtu"])
        m = self.mon.mark()
        subprocess.run(["ip", "-n", self.ns, "link", "set", "flannel.1", "mtu", str(mtu - 50)], check=True)
        t_chg = self.mon.wait_all({("link", "new", "flannel.1", mtu - 50)}, m, 5)
        t_back = self.mon.wait_all({("link", "new", "flannel.1", mtu)}, m, wait)
        mtu_s = None if t_chg is None or t_back is None else t_back - t_chg
        self.say(f"drift: route deleted -> back after {_s(route_s)}; MTU {mtu}->{mtu - 50} -> back after {_s(mtu_s)}")
        never = "flanneld: never (it has no resync in etcd mode)"
        self.fig("drift", "route deleted: time to repair", route_s, "s", bound="interval",
                 note=f"{never}; resync every {self.opts.resync_interval:g}s")
        self.fig("drift", "device MTU changed: time to repair", mtu_s, "s", bound="agent", note=never)

    # ------------------------------------------------------------- finishing
    def finish(self) -> None:
        self.meta["monitor_overruns"] = {"agent": self.mon.overruns, "flanneld": self.peer_mon.overruns}
        self.meta["agent_exit_status"] = self.agent.stop()
        # In scenario order (the flanneld re-enactment's start-up figure is known only when it stops).
        order = [f.scenario for f in self.figures]
        self.figures.sort(key=lambda f: order.index(f.scenario))
        self.meta["figures"] = self.figures


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


def _s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}s"
