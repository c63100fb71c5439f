"""``python3 -m reconciler.tools.soak``: a seeded chaos soak of real agents.

Three real agents (``run``) in node namespaces on the demo's veth underlay,
one CNI pod per node, a few hundred simulated peers as leases in a private
etcd; then, step by step, one random fault, a quiet period until the
cluster converges again, and the invariants:

* every node converged: ``plan`` in its namespace exits 0;
* every pod pings every other pod;
* every agent alive, ``/healthz`` and ``/readyz`` 200, ``etcd_up`` 1 when
  exported (metrics are read leniently, by name), its subnet unchanged;
* foreign objects (a VXLAN device of someone else's with its neighbour, FDB
  entry, address and route; routes on ``eth0`` and in another table; a
  permanent neighbour on ``eth0``; iptables rules and a chain) byte for byte
  as planted;
* nothing deleted while etcd was away: a netlink monitor per node sees no
  peer route, neighbour or FDB entry deleted during an etcd-down window
  (docs/design.md, "Failing static");
* no traceback in any agent's log, each log's growth per step and each
  agent's RSS bounded.

The agent is driven only from outside -- its command line, etcd (through
etcd's own JSON gateway, not the agent's client), iproute2, signals and its
HTTP endpoints -- so the harness does not move when the agent's inside does.

Reproducible: the fault sequence is a function of ``--seed`` and the fault
set alone (``schedule``); each step draws its parameters from a generator
seeded by (seed, step), so ``--seed S --steps K`` replays the first K steps
of any run with seed S.  Timing is not reproduced, only the sequence.

Everything made is removed at the end (agents, pods, namespaces ``frs-<pid>-*``,
etcd), also after an error, Ctrl-C or SIGTERM; the summary (JSON and text)
and, when something failed, the agent and etcd logs are written to ``--out``.
"""
from __future__ import annotations

import argparse
import base64
import ipaddress
import itertools
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from reconciler.tools.bench.cluster import ADD_OFFSET, LEASE_TTL, Remote, layout, mac_for
from reconciler.tools.bench.monitor import NetlinkMonitor
from reconciler.agent.daemon import AgentOptions as _AgentOptions
from reconciler.tools.bench.probe import parse_metrics, rss_mib
from reconciler.tools.bench.report import percentile
from reconciler.tools.demo import (AgentFailed, AgentProcess, _interrupt, _ping, _signals, child_env, delete_pods,
                                   prerequisite_problems, stop_agents, wait_all_ready)
from reconciler.tools.lab import cni as lab_cni
from reconciler.tools.lab import etcd as lab_etcd
from reconciler.tools.lab.netns import CommandFailed, Node, delete_netns, netns, run, underlay

__all__ = ["FAULTS", "SOAK_PREFIX", "SoakOptions", "main", "parse_fault_set", "plant_foreign", "read_foreign", "run_soak",
           "schedule"]

#: Namespaces made by the soak: ``frs-<pid>-<n>-<tag>``.
SOAK_PREFIX = "frs"
PREFIX = "/coreos.com/network"

#: Every fault kind, with what it does.  Each is switchable (``--faults``, ``--skip-faults``).
FAULTS: dict[str, str] = {
    "lease_churn": "1-5 simulated peers added, deleted, expired (etcd lease revoked) or given a new VtepMAC",
    "reput_storm": "every simulated lease re-put unchanged (a rolling restart of the cluster)",
    "etcd_hang": "etcd SIGSTOPped for 3-10 s, then SIGCONT",
    "etcd_kill": "etcd SIGKILLed, down 3-10 s, restarted with its data",
    "etcd_restart": "etcd SIGTERMed, down 3-10 s, restarted with its data",
    "etcd_wipe": "etcd stopped, restarted empty; the config and the simulated leases put back in one transaction",
    "etcd_compaction": "an agent SIGSTOPped; churn; etcd compacted to its revision and restarted; the agent SIGCONTed",
    "drift_while_etcd_down": "etcd SIGSTOPped; a peer route changed by hand; it must be repaired before etcd returns",
    "agent_kill": "an agent SIGKILLed and started again",
    "agent_term": "an agent SIGTERMed (must exit 0) and started again",
    "route_del": "a peer route deleted by hand",
    "route_change": "a peer route re-pointed to a wrong gateway by hand",
    "neigh_del": "a peer neighbour deleted by hand",
    "neigh_change": "a peer neighbour given a wrong MAC by hand",
    "fdb_del": "a peer FDB entry deleted by hand",
    "fdb_change": "a peer FDB entry pointed to a wrong host by hand",
    "vxlan_del": "flannel.1 deleted",
    "vxlan_down": "flannel.1 set down",
    "vxlan_mtu": "flannel.1's MTU changed",
    "cni0_route_flush": "cni0's routes flushed (the pod subnet's connected route gone)",
    "ip_forward_off": "net.ipv4.ip_forward set to 0 in the node",
}

#: Faults the agent leaves alone on purpose (the node's own policy) but must report: the condition
#: its ``/readyz`` names.  The harness checks the report, then undoes the fault itself.
REPORTED_NOT_REPAIRED = {"ip_forward_off": "forwarding"}

#: Faults after which the agent is not ready on purpose for a while, on top of the quiet period:
#: after etcd's history went back it holds deletions (and says so on /readyz) until peers had
#: time to re-assert their keys (``AgentOptions.rollback_settle``).
SETTLE = {"etcd_wipe": _AgentOptions.rollback_settle}

RESYNC_INTERVAL = 5.0
CONVERGE_TIMEOUT = 60.0
MAX_LOG_GROWTH_KIB = 256      # per agent per step
MAX_LOG_LINES = 150           # per agent per step
MAX_RSS_MIB = 200.0
MAX_RSS_GROWTH_MIB = 40.0     # over the same process's first converged sample
FOREIGN_IPTABLES_TAG = "soak-foreign"
#: What ``drift_while_etcd_down`` damages: each is repaired by a create or an update only.
DRIFT_WHILE_DOWN = ("route_change", "route_del", "neigh_change", "neigh_del", "fdb_change", "fdb_del", "vxlan_mtu")
TRACEBACK = "Traceback (most recent call last)"


# --------------------------------------------------------------------------------------------
# Pure parts: the fault set and the schedule
# --------------------------------------------------------------------------------------------

def parse_fault_set(faults: str | None, skip: str | None) -> list[str]:
    """The enabled kinds, in ``FAULTS`` order.  Raises ValueError naming an unknown kind."""
    def names(text: str | None) -> list[str]:
        out = [n.strip() for n in (text or "").split(",") if n.strip()]
        bad = [n for n in out if n not in FAULTS]
        if bad:
            raise ValueError(f"unknown fault kind(s): {', '.join(bad)} (known: {', '.join(FAULTS)})")
        return out

    chosen = set(names(faults)) if faults else set(FAULTS)
    chosen -= set(names(skip))
    if not chosen:
        raise ValueError("no fault kind left to run")
    return [k for k in FAULTS if k in chosen]


def schedule(seed: int, kinds: Sequence[str]) -> Iterator[str]:
    """The endless fault sequence of a seed: it depends on nothing but (seed, kinds).

    Rounds of a seeded permutation of the kinds, so that every kind runs once in
    every ``len(kinds)`` steps: a short run still covers the whole fault set."""
    rng = random.Random(f"soak:{seed}:{','.join(kinds)}")
    while True:
        order = list(kinds)
        rng.shuffle(order)
        yield from order


def step_rng(seed: int, step: int) -> random.Random:
    """The generator of one step's parameters (node, peer, durations)."""
    return random.Random(f"soak:{seed}:step:{step}")


def peer_deletions(events: Sequence[tuple], subnets: set[str], gateways: set[str], macs: set[str]) -> list[tuple]:
    """The monitor signals in ``events`` that delete a peer's route, neighbour or FDB entry, or flannel.1."""
    out = []
    for sig in events:
        if sig[1] != "del":
            continue
        if ((sig[0] == "route" and sig[2] in subnets) or (sig[0] == "neigh" and sig[2] in gateways)
                or (sig[0] == "fdb" and sig[2] in macs) or (sig[0] == "link" and sig[2] == "flannel.1")):
            out.append(sig)
    return out


def new_tracebacks(text: str, context: int = 12) -> list[str]:
    """Each traceback in ``text``, with the lines after it."""
    lines = text.splitlines()
    return ["\n".join(lines[i:i + context]) for i, line in enumerate(lines) if TRACEBACK in line]


def stats(values: Sequence[float]) -> dict:
    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "max": max(values) if values else None}


# --------------------------------------------------------------------------------------------
# etcd through its JSON gateway: independent of the agent's own client
# --------------------------------------------------------------------------------------------

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class EtcdHttp:
    """etcd v3 over ``/v3/...`` (grpc-gateway JSON): put, delete, range, leases, txn, compaction."""

    def __init__(self, endpoint: str, timeout: float = 5.0) -> None:
        self.endpoint, self.timeout = endpoint, timeout

    def call(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{self.endpoint}/v3/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read() or b"{}")

    def put(self, key: str, value: str, lease: int = 0) -> None:
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self.call("kv/put", body)

    def delete(self, key: str) -> None:
        self.call("kv/deleterange", {"key": _b64(key)})

    def range_prefix(self, prefix: str) -> dict[str, tuple[str, int]]:
        """key -> (value, etcd lease id)."""
        out = self.call("kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return {base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")).decode(),
                                                       int(kv.get("lease", 0)))
                for kv in out.get("kvs", [])}

    def revision(self) -> int:
        return int(self.call("kv/range", {"key": _b64("/"), "limit": 1})["header"]["revision"])

    def grant(self, ttl: int) -> int:
        return int(self.call("lease/grant", {"TTL": str(ttl)})["ID"])

    def revoke(self, lease: int) -> None:
        self.call("lease/revoke", {"ID": str(lease)})

    def compact(self, revision: int) -> None:
        self.call("kv/compaction", {"revision": str(revision), "physical": True})

    def txn_put(self, items: Sequence[tuple[str, str, int]]) -> None:
        """All puts in one transaction: one revision, seen whole or not at all."""
        ops = [{"request_put": {"key": _b64(k), "value": _b64(v), **({"lease": str(lease)} if lease else {})}}
               for k, v, lease in items]
        self.call("kv/txn", {"success": ops})


# --------------------------------------------------------------------------------------------
# Foreign objects: someone else's, in every node
# --------------------------------------------------------------------------------------------

def plant_foreign(node: Node, i: int) -> dict[str, str]:
    """Someone else's objects in the node, each read back by the command that shows it."""
    ns = node.ns
    for argv in (
        ["ip", "link", "add", "vxfrgn", "type", "vxlan", "id", "99", "local", node.ip, "dev", node.dev,
         "dstport", "4790", "nolearning"],
        ["ip", "link", "set", "vxfrgn", "mtu", "1400", "up"],
        ["ip", "addr", "add", f"100.127.254.{i}/32", "dev", "vxfrgn"],
        ["ip", "neigh", "add", "100.127.250.1", "lladdr", "02:5a:00:00:00:01", "dev", "vxfrgn", "nud", "permanent"],
        ["bridge", "fdb", "append", "02:5a:00:00:00:01", "dev", "vxfrgn", "dst", "198.18.0.250", "self", "permanent"],
        ["ip", "route", "add", "100.127.250.0/24", "via", "100.127.250.1", "dev", "vxfrgn", "onlink"],
        ["ip", "route", "add", "100.127.251.0/24", "via", "198.18.0.254", "dev", node.dev],
        ["ip", "route", "add", "100.127.252.0/24", "via", "198.18.0.254", "dev", node.dev, "table", "100"],
        ["ip", "neigh", "add", "198.18.0.77", "lladdr", "02:5a:00:00:00:77", "dev", node.dev, "nud", "permanent"],
        ["iptables", "-N", "SOAK-FOREIGN"],
        ["iptables", "-A", "SOAK-FOREIGN", "-s", "198.19.0.0/24", "-j", "RETURN"],
        ["iptables", "-I", "FORWARD", "1", "-s", "198.19.1.0/24", "-m", "comment", "--comment",
         FOREIGN_IPTABLES_TAG, "-j", "ACCEPT"],
        ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "198.19.2.0/24", "-m", "comment", "--comment",
         FOREIGN_IPTABLES_TAG, "-j", "RETURN"],
    ):
        run(ns, *argv)
    return read_foreign(node)

def read_foreign(node: Node) -> dict[str, str]:
    """The foreign objects of a node, as text: what ``plant_foreign`` planted must stay byte for byte."""
    ns = node.ns
    shows = {
        "link vxfrgn": ["ip", "-d", "link", "show", "vxfrgn"],
        "addr vxfrgn": ["ip", "-4", "addr", "show", "dev", "vxfrgn"],
        "neigh vxfrgn": ["ip", "neigh", "show", "dev", "vxfrgn"],
        "fdb vxfrgn": ["bridge", "fdb", "show", "dev", "vxfrgn"],
        "route 100.127.250.0/24": ["ip", "route", "show", "100.127.250.0/24"],
        "route 100.127.251.0/24": ["ip", "route", "show", "100.127.251.0/24"],
        "route table 100": ["ip", "route", "show", "table", "100"],
        f"neigh 198.18.0.77 dev {node.dev}": ["ip", "neigh", "show", "198.18.0.77", "dev", node.dev],
    }
    out = {label: run(ns, *argv, check=False).stdout for label, argv in shows.items()}
    for table in ("filter", "nat"):
        text = run(ns, "iptables-save", "-t", table, check=False).stdout
        out[f"iptables -t {table}"] = "\n".join(
            line for line in text.splitlines() if FOREIGN_IPTABLES_TAG in line or "SOAK-FOREIGN" in line)
    return out


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

@dataclass
class SoakOptions:
    seed: int
    steps: int | None = 20
    duration: float | None = None
    faults: Sequence[str] = tuple(FAULTS)
    nodes: int = 3
    leases: int = 200
    resync_interval: float = RESYNC_INTERVAL
    converge_timeout: float = CONVERGE_TIMEOUT
    max_log_growth_kib: float = MAX_LOG_GROWTH_KIB
    max_log_lines: int = MAX_LOG_LINES
    max_rss_mib: float = MAX_RSS_MIB
    max_rss_growth_mib: float = MAX_RSS_GROWTH_MIB
    fail_fast: bool = False
    out_dir: str | None = "soak-results"


@dataclass
class Violation:
    step: int
    kind: str
    invariant: str
    detail: str

    def to_json(self) -> dict:
        return {"step": self.step, "fault": self.kind, "invariant": self.invariant, "detail": self.detail}


@dataclass(eq=False)
class SoakPod:
    node: Node
    ns: str
    container_id: str
    conf: dict
    ip: str = ""


@dataclass
class SimPeer:
    """A simulated node: a lease in etcd and nothing else."""

    remote: Remote
    variant: int = 0           # which VtepMAC (mac_for's variant)
    lease: int = 0

    @property
    def mac(self) -> str:
        return mac_for(self.remote.index, self.variant)

    def value(self) -> str:
        return self.remote.value(self.mac)


class Aborted(RuntimeError):
    """The cluster could not be brought back: later steps would measure nothing."""


class Soak:
    def __init__(self, opts: SoakOptions, out=sys.stdout) -> None:
        self.opts = opts
        self.out = out
        self.workdir = Path(tempfile.mkdtemp(prefix="flannel-soak-"))
        self.stack = ExitStack()
        self.etcd: lab_etcd.LocalEtcd | None = None
        self.http: EtcdHttp | None = None
        self.cluster = layout(opts.leases + 1)
        self.sim: dict[int, SimPeer] = {}
        self._next_index = itertools.count(opts.leases + ADD_OFFSET)
        self.nodes: tuple[Node, ...] = ()
        self.agents: list[AgentProcess] = []
        self.monitors: list[NetlinkMonitor] = []
        self.pods: list[SoakPod] = []
        self.subnets: list[str] = []          # each node's FLANNEL_SUBNET (network form) at set-up
        self.foreign: list[dict[str, str]] = []
        self.log_sizes: list[int] = []
        self.log_lines: list[int] = []        # lines each agent logged in the last step
        self.rss_base: dict[int, float] = {}  # pid -> first converged RSS
        self.rss_max: list[float] = []
        self.rss_last: list[float] = []
        self.violations: list[Violation] = []
        self.started: float | None = None
        self.step_started = 0                     # the last step begun (an abort may cut it short)
        self._own_deletions: set[tuple] = set()   # what the harness itself deleted in an etcd-down window
        self.records: list[dict] = []
        self.pings = {"sent": 0, "ok": 0}
        self.cni_path = lab_cni.CNI_PATH

    # ------------------------------------------------------------------ output
    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def violate(self, step: int, kind: str, invariant: str, detail: str) -> None:
        v = Violation(step, kind, invariant, detail)
        self.violations.append(v)
        self.say(f"  VIOLATION step {step} ({kind}): {invariant}: {detail.splitlines()[0] if detail else ''}")

    # ------------------------------------------------------------------- set-up
    def setup(self) -> None:
        o = self.opts
        # etcd_wipe puts every lease back in one transaction: more than etcd's default 128 operations.
        self.etcd = lab_etcd.LocalEtcd(self.workdir, extra_args=["--max-txn-ops", str(o.leases + 4096)]).start()
        self.http = EtcdHttp(self.etcd.endpoint)
        self.http.put(f"{PREFIX}/config", self.cluster.config)
        for remote in self.cluster.remotes:
            peer = SimPeer(remote)
            peer.lease = self.http.grant(LEASE_TTL)
            self.http.put(self._key(remote), peer.value(), peer.lease)
            self.sim[remote.index] = peer
        net = self.stack.enter_context(underlay(o.nodes, prefix=SOAK_PREFIX))
        self.nodes = net.nodes
        for i, node in enumerate(self.nodes, 1):
            # Docker's FORWARD policy, and forwarding on, as on a node.
            run(node.ns, "iptables", "-P", "FORWARD", "DROP")
            self._ip_forward(node, 1)
            self.foreign.append(plant_foreign(node, i))
            self.monitors.append(self.stack.enter_context(NetlinkMonitor(node.ns)))
        for i, node in enumerate(self.nodes, 1):
            agent = AgentProcess(node.ns, self.workdir / f"node-{i}", ["--etcd-endpoints", self.etcd.endpoint],
                                 iface=node.dev, resync_interval=o.resync_interval, extra_args=["--ip-masq"])
            self.agents.append(agent.start())
        wait_all_ready(self.agents, 60)
        for i, (node, agent) in enumerate(zip(self.nodes, self.agents), 1):
            text = agent.subnet_file.read_text()
            self.subnets.append(lab_cni.parse_subnet_env(text)["subnet"])
            conf = lab_cni.flannel_delegate_config(text, "cbr0", data_dir=str(agent.workdir / "cni"))
            ns = self.stack.enter_context(netns(f"pod{i}", SOAK_PREFIX))
            pod = SoakPod(node, ns, f"soak-pod-{i}", conf)
            self.pods.append(pod)
            result = lab_cni.cni_add(node.ns, ns, pod.container_id, conf, cni_path=self.cni_path)
            pod.ip = next(ip["address"] for ip in result["ips"] if ":" not in ip["address"]).split("/")[0]
        self.log_sizes = [self._log_size(a) for a in self.agents]
        self.log_lines = [0] * len(self.agents)
        self.rss_max = [0.0] * len(self.agents)
        self.rss_last = [0.0] * len(self.agents)
        self.say(f"soak: seed {o.seed}, {len(self.nodes)} nodes, {len(self.sim)} simulated peers, "
                 f"faults {','.join(o.faults)}; work directory {self.workdir}")
        for i, (node, subnet, pod) in enumerate(zip(self.nodes, self.subnets, self.pods), 1):
            self.say(f"  node {i}: netns {node.ns}, subnet {subnet}, pod {pod.ip}, log {self.agents[i - 1].log_path}")

    def _key(self, remote: Remote) -> str:
        return f"{PREFIX}/subnets/{remote.key}"

    def _ip_forward(self, node: Node, value: int) -> None:
        run(node.ns, "tee", "/proc/sys/net/ipv4/ip_forward", input=f"{value}\n")

    # -------------------------------------------------------------- the peers
    def _peer_sets(self) -> tuple[set[str], set[str], set[str]]:
        """(subnets, gateways, VtepMACs) of every peer in etcd now (real nodes included)."""
        subnets, gateways, macs = set(), set(), set()
        for key, (value, _lease) in self.http.range_prefix(f"{PREFIX}/subnets/").items():
            net = key.rsplit("/", 1)[1].replace("-", "/")
            subnets.add(net)
            gateways.add(net.split("/")[0])
            try:
                macs.add(json.loads(value)["BackendData"]["VtepMAC"])
            except (ValueError, KeyError, TypeError):
                pass
        return subnets, gateways, macs

    def _pick_peer(self, rng: random.Random, node_index: int) -> tuple[str, str]:
        """(subnet, gateway) of a peer of node ``node_index``: another real node half the time."""
        others = [s for j, s in enumerate(self.subnets) if j != node_index]
        if rng.random() < 0.5 or not self.sim:
            subnet = rng.choice(others)
        else:
            peer = self.sim[rng.choice(sorted(self.sim))]
            subnet = str(peer.remote.subnet)
        return subnet, subnet.split("/")[0]

    # ------------------------------------------------------------- the faults
    def fault(self, kind: str, rng: random.Random, step: int) -> dict:
        """Inject one fault; returns its parameters (for the record)."""
        node_index = rng.randrange(len(self.nodes))
        node = self.nodes[node_index]
        ns = node.ns
        params: dict = {"node": node_index + 1}
        if kind == "lease_churn":
            params["ops"] = self._churn(rng, rng.randint(1, 5))
        elif kind == "reput_storm":
            for peer in self.sim.values():
                self.http.put(self._key(peer.remote), peer.value(), peer.lease)
            params["leases"] = len(self.sim)
        elif kind in ("etcd_hang", "etcd_kill", "etcd_restart", "etcd_wipe"):
            params["down_s"] = round(rng.uniform(3, 10), 1)
            self._etcd_down(kind, params["down_s"], step)
        elif kind == "etcd_compaction":
            agent = self.agents[node_index]
            agent.proc.send_signal(signal.SIGSTOP)
            try:
                params["ops"] = self._churn(rng, 3)
                rev = self.http.revision()
                self.http.compact(rev)
                params["compacted_at"] = rev
                self.etcd.restart()
            finally:
                agent.proc.send_signal(signal.SIGCONT)
        elif kind == "drift_while_etcd_down":
            # Long enough for the agent's etcd liveness probe (after 5 s of silence) to be pending,
            # with the drift made before or after that point.
            params["down_s"] = round(rng.uniform(8, 14), 1)
            params["drift_at_s"] = round(rng.uniform(1, params["down_s"] - 4), 1)
            subnet, gw = self._pick_peer(rng, node_index)
            params["drift"] = rng.choice(DRIFT_WHILE_DOWN)
            params["peer"] = subnet
            self._etcd_down("etcd_hang", params["down_s"], step,
                            drift=(node_index, params["drift"], subnet, gw, params["drift_at_s"]))
        elif kind in ("agent_kill", "agent_term"):
            agent = self.agents[node_index]
            if kind == "agent_kill":
                agent.proc.kill()
                agent.proc.wait(10)
            else:
                code = agent.stop(15)
                params["exit"] = code
                if code != 0:
                    self.violate(step, kind, "SIGTERM exits 0", f"node {node_index + 1}'s agent exited {code}; "
                                 f"log tail:\n{agent.log_tail()}")
            agent.start()
        elif kind in ("route_del", "route_change", "neigh_del", "neigh_change", "fdb_del", "fdb_change"):
            subnet, gw = self._pick_peer(rng, node_index)
            params["peer"] = subnet
            self._drift(kind, ns, subnet, gw)
        elif kind == "vxlan_del":
            run(ns, "ip", "link", "del", "flannel.1", check=False)
        elif kind == "vxlan_down":
            run(ns, "ip", "link", "set", "flannel.1", "down", check=False)
        elif kind == "vxlan_mtu":
            params["mtu"] = rng.choice((1280, 1400, 1449, 1500))
            run(ns, "ip", "link", "set", "flannel.1", "mtu", str(params["mtu"]), check=False)
        elif kind == "cni0_route_flush":
            run(ns, "ip", "route", "flush", "dev", "cni0", check=False)
        elif kind == "ip_forward_off":
            self._ip_forward(node, 0)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        return params

    def _drift(self, kind: str, ns: str, subnet: str, gw: str) -> None:
        if kind == "route_del":
            run(ns, "ip", "route", "del", subnet, "dev", "flannel.1", check=False)
        elif kind == "route_change":
            wrong = str(ipaddress.ip_address(gw) + 1)
            run(ns, "ip", "route", "replace", subnet, "via", wrong, "dev", "flannel.1", "onlink", check=False)
        elif kind == "neigh_del":
            run(ns, "ip", "neigh", "del", gw, "dev", "flannel.1", check=False)
        elif kind == "neigh_change":
            run(ns, "ip", "neigh", "replace", gw, "lladdr", "02:5a:de:ad:00:01", "dev", "flannel.1",
                "nud", "permanent", check=False)
        else:
            mac = self._neigh_mac(ns, gw)
            if mac is None:
                return
            if kind == "fdb_del":
                run(ns, "bridge", "fdb", "del", mac, "dev", "flannel.1", "self", check=False)
            else:
                run(ns, "bridge", "fdb", "replace", mac, "dev", "flannel.1", "dst", "198.18.0.250", "self",
                    "permanent", check=False)

    @staticmethod
    def _neigh_mac(ns: str, ip: str) -> str | None:
        out = run(ns, "ip", "-j", "neigh", "show", ip, "dev", "flannel.1", check=False).stdout.strip()
        try:
            entries = json.loads(out) if out else []
        except ValueError:
            return None
        return next((e.get("lladdr") for e in entries if e.get("lladdr")), None)

    def _churn(self, rng: random.Random, count: int) -> list[str]:
        ops = []
        for _ in range(count):
            op = rng.choice(("add", "delete", "expire", "mac")) if self.sim else "add"
            if op == "add":
                index = next(self._next_index)
                peer = SimPeer(self.cluster.remote(index))
                peer.lease = self.http.grant(LEASE_TTL)
                self.http.put(self._key(peer.remote), peer.value(), peer.lease)
                self.sim[index] = peer
            else:
                index = rng.choice(sorted(self.sim))
                peer = self.sim[index]
                if op == "delete":
                    self.http.delete(self._key(peer.remote))
                    del self.sim[index]
                elif op == "expire":
                    self.http.revoke(peer.lease)
                    del self.sim[index]
                else:
                    peer.variant = (peer.variant + 1) % 8
                    self.http.put(self._key(peer.remote), peer.value(), peer.lease)
            ops.append(f"{op} {peer.remote.key}")
        return ops

    def _etcd_down(self, kind: str, seconds: float, step: int, drift: tuple | None = None) -> None:
        """etcd away for ``seconds``; the monitors must see no peer deleted meanwhile."""
        subnets, gateways, macs = self._peer_sets()
        marks = [m.mark() for m in self.monitors]
        start = time.monotonic()
        if kind == "etcd_hang":
            self.etcd.pause()
        else:
            self.etcd.halt(signal.SIGKILL if kind == "etcd_kill" else signal.SIGTERM)
        try:
            if drift is not None:
                self._drift_while_down(step, seconds, *drift)
            time.sleep(max(0.0, seconds - (time.monotonic() - start)))
            ends = [m.mark() for m in self.monitors]
        finally:
            if kind == "etcd_hang":
                self.etcd.resume()
            else:
                self.etcd.restart(wipe=kind == "etcd_wipe")
        if kind == "etcd_wipe":
            # The rest of the cluster puts its leases back (in one transaction: the agents
            # see an empty etcd or all of it); our agents must put back their own.
            self.http.txn_put([(f"{PREFIX}/config", self.cluster.config, 0)] + [
                (self._key(p.remote), p.value(), p.lease) for p in self._regrant()])
        for i, (mon, a, b) in enumerate(zip(self.monitors, marks, ends), 1):
            events = [sig for _t, sig in mon.events(a)[:b - a]]
            deleted = peer_deletions(events, subnets, gateways, macs)
            if drift is not None and drift[0] == i - 1:
                # The harness's own deletion is not the agent's.
                deleted = [s for s in deleted if s[:3] not in self._own_deletions]
            if deleted:
                self.violate(step, kind, "nothing deleted while etcd was away",
                             f"node {i}: {len(deleted)} deletion(s) during the {seconds:g}s window: "
                             + ", ".join(" ".join(map(str, s)) for s in deleted[:10]))

    def _regrant(self) -> list[SimPeer]:
        for peer in self.sim.values():
            peer.lease = self.http.grant(LEASE_TTL)
        return list(self.sim.values())

    def _drift_while_down(self, step: int, seconds: float, node_index: int, drift: str, subnet: str, gw: str,
                          at: float) -> None:
        """Damage a peer's objects while etcd hangs: the agent must repair them before etcd
        returns (docs/design.md, "Failing static": cycles repair drift but delete nothing).
        Every drift here is repaired by a create or an update, never by a deletion."""
        time.sleep(at)
        ns = self.nodes[node_index].ns
        before = self._peer_objects(ns, subnet, gw)
        self._own_deletions = {("route", "del", subnet), ("neigh", "del", gw), ("fdb", "del", before[1])}
        if drift == "vxlan_mtu":
            run(ns, "ip", "link", "set", "flannel.1", "mtu", "1400", check=False)
        else:
            self._drift(drift, ns, subnet, gw)
        allowed = seconds - at - 0.5
        deadline = time.monotonic() + allowed
        now = None
        while time.monotonic() < deadline:
            now = self._peer_objects(ns, subnet, gw)
            if now == before:
                return
            time.sleep(0.2)
        self.violate(step, "drift_while_etcd_down", "drift repaired while etcd is away",
                     f"node {node_index + 1}: {drift} of peer {subnet} made {at:g}s into an etcd hang (SIGSTOP) "
                     f"not repaired {allowed:.1f}s later: was {before}, now {now}")

    @staticmethod
    def _peer_objects(ns: str, subnet: str, gw: str) -> tuple:
        """(route gateway, neighbour MAC, that MAC's FDB destination, flannel.1 MTU) as the kernel says."""
        def js(*argv: str) -> list:
            out = run(ns, *argv, check=False).stdout.strip()
            try:
                return json.loads(out) if out else []
            except ValueError:
                return []

        route = next((r.get("gateway") for r in js("ip", "-j", "route", "show", subnet) if r.get("dev") == "flannel.1"),
                     None)
        mac = next((n.get("lladdr") for n in js("ip", "-j", "neigh", "show", gw, "dev", "flannel.1")), None)
        dst = next((f.get("dst") for f in js("bridge", "-j", "fdb", "show", "dev", "flannel.1")
                    if mac is not None and f.get("mac") == mac), None)
        mtu = next((link.get("mtu") for link in js("ip", "-j", "link", "show", "flannel.1")), None)
        return route, mac, dst, mtu

    # -------------------------------------------------------------- invariants
    def _plan(self, node: Node) -> tuple[int, str]:
        argv = [sys.executable, "-m", "reconciler", "plan", "--netns", node.ns, "--iface", node.dev,
                "--etcd-endpoints", self.etcd.endpoint, "--ip-masq"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=60)
        except Exception as exc:   # a hung plan is a finding, not a harness crash
            return -1, str(exc)
        return proc.returncode, proc.stdout + proc.stderr

    def _ping_all(self) -> list[str]:
        pairs = [(a, b) for a in self.pods for b in self.pods if a is not b]
        with ThreadPoolExecutor(max_workers=6) as pool:
            ok = list(pool.map(lambda p: _ping(p[0].ns, p[1].ip), pairs))
        self.pings["sent"] += len(pairs)
        self.pings["ok"] += sum(ok)
        return [f"pod {self.pods.index(a) + 1} -> pod {self.pods.index(b) + 1}"
                for (a, b), good in zip(pairs, ok) if not good]

    def _unmet(self) -> list[str]:
        """What keeps the cluster from being converged now (empty: converged)."""
        unmet = []
        for i, agent in enumerate(self.agents, 1):
            if not agent.alive:
                unmet.append(f"node {i}: agent exited ({agent.proc.returncode})")
        if unmet:
            return unmet
        failed = self._ping_all()
        if failed:
            unmet.append("ping failed: " + ", ".join(failed))
        for i, agent in enumerate(self.agents, 1):
            for path in ("/healthz", "/readyz"):
                status, body = agent.get(path, timeout=2)
                if status != 200:
                    unmet.append(f"node {i}: {path} {status}: {body.strip()[:200]}")
            status, text = agent.get("/metrics", timeout=2)
            metrics = parse_metrics(text) if status == 200 else {}   # no answer yet: /healthz says why
            up = metrics.get("flannel_reconciler_etcd_up")
            if up and up[0][1] != 1:
                unmet.append(f"node {i}: flannel_reconciler_etcd_up {up[0][1]:g}")
        if unmet:
            return unmet    # plans are the costly part: only once the cheap checks pass
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            plans = list(pool.map(self._plan, self.nodes))
        for i, (rc, output) in enumerate(plans, 1):
            if rc != 0:
                unmet.append(f"node {i}: plan exit {rc}:\n{output.strip()[-1500:]}")
        return unmet

    def _expect_reported(self, step: int, kind: str, params: dict) -> None:
        """A fault the agent must not repair (the node's policy) but must report: the node's
        ``/readyz`` turns 503 naming the condition within the quiet period, or it is a violation."""
        condition = REPORTED_NOT_REPAIRED[kind]
        agent = self.agents[params["node"] - 1]
        deadline = time.monotonic() + self.opts.converge_timeout
        start = time.monotonic()
        body = ""
        while time.monotonic() < deadline:
            status, body = agent.get("/readyz", timeout=2)
            if status == 503 and condition in (body or ""):
                params["reported_s"] = round(time.monotonic() - start, 3)
                return
            time.sleep(0.2)
        self.violate(step, kind, f"/readyz says {condition}",
                     f"node {params['node']}: /readyz never turned 503 naming {condition} "
                     f"(last: {(body or '').strip()[:200]})")

    def converge(self, timeout: float) -> tuple[float | None, list[str]]:
        """Poll until converged: (seconds taken, []) or (None, what is still wrong)."""
        start = time.monotonic()
        pause = 0.2
        while True:
            time.sleep(pause)
            # Counted to the start of the check that passed: the check's own cost
            # (three ``plan`` processes, pings) is not the agent's.
            checked = time.monotonic()
            unmet = self._unmet()
            if not unmet:
                return checked - start, []
            if time.monotonic() - start > timeout:
                return None, unmet
            pause = min(pause * 1.5, 2.0)

    def check_after(self, step: int, kind: str) -> None:
        """The invariants that do not converge: foreign objects, logs, memory, subnets."""
        for i, (node, planted) in enumerate(zip(self.nodes, self.foreign), 1):
            now = read_foreign(node)
            for label, text in planted.items():
                if now.get(label) != text:
                    self.violate(step, kind, "foreign objects untouched",
                                 f"node {i}: {label} was\n{text.strip()}\nnow\n{now.get(label, '').strip()}")
                    planted[label] = now.get(label, "")   # said once: later steps compare with this
        for i, (subnet, agent) in enumerate(zip(self.subnets, self.agents), 1):
            try:
                now = lab_cni.parse_subnet_env(agent.subnet_file.read_text())["subnet"]
            except (OSError, ValueError) as exc:
                now = f"unreadable ({exc})"
            if now != subnet:
                self.violate(step, kind, "subnet kept", f"node {i}: subnet.env says {now}, was {subnet}")
            size = self._log_size(agent)
            grown = size - self.log_sizes[i - 1]
            text = self._log_since(agent, self.log_sizes[i - 1])
            lines = text.count("\n")
            self.log_lines[i - 1] = lines
            # One fault is a bounded number of lines whatever the cluster size: a line per
            # peer (hundreds at scale) is a flood (docs/design.md, the cycle: one line when something changed).
            if grown > self.opts.max_log_growth_kib * 1024 or lines > self.opts.max_log_lines:
                self.violate(step, kind, "bounded log growth",
                             f"node {i}: the log grew {lines} lines, {grown / 1024:.0f} KiB in one step "
                             f"(limits {self.opts.max_log_lines} lines, {self.opts.max_log_growth_kib:g} KiB); "
                             f"{self._frequent_line(text)}")
            for tb in new_tracebacks(text):
                self.violate(step, kind, "no traceback in the log", f"node {i}:\n{tb}")
            self.log_sizes[i - 1] = size
            if agent.alive:
                try:
                    rss = rss_mib(agent.pid)
                except (OSError, ValueError):
                    continue
                base = self.rss_base.setdefault(agent.pid, rss)
                self.rss_last[i - 1] = rss
                self.rss_max[i - 1] = max(self.rss_max[i - 1], rss)
                if rss > self.opts.max_rss_mib or rss - base > self.opts.max_rss_growth_mib:
                    self.violate(step, kind, "bounded RSS",
                                 f"node {i}: RSS {rss:.0f} MiB (this process's first: {base:.0f} MiB; limits "
                                 f"{self.opts.max_rss_mib:g} MiB, +{self.opts.max_rss_growth_mib:g} MiB)")

    @staticmethod
    def _log_size(agent: AgentProcess) -> int:
        try:
            return agent.log_path.stat().st_size
        except OSError:
            return 0

    @staticmethod
    def _log_since(agent: AgentProcess, offset: int) -> str:
        try:
            with open(agent.log_path, "rb") as f:
                f.seek(offset)
                return f.read(8 << 20).decode(errors="replace")
        except OSError:
            return ""

    @staticmethod
    def _frequent_line(text: str) -> str:
        """The most repeated message of the growth (timestamps and the end cut), to say what floods."""
        counts: dict[str, int] = {}
        for line in text.splitlines():
            msg = " ".join(line.split()[2:6])   # level and the first words: the kind of message
            counts[msg] = counts.get(msg, 0) + 1
        if not counts:
            return ""
        msg, n = max(counts.items(), key=lambda kv: kv[1])
        return f"most frequent ({n}x): {msg}"

    # ------------------------------------------------------------------- heal
    def heal(self, kind: str, params: dict) -> None:
        """Undo an unrepaired fault by hand, so the next steps start from a working cluster."""
        node = self.nodes[params["node"] - 1]
        if kind == "ip_forward_off":
            self._ip_forward(node, 1)
        elif kind == "cni0_route_flush":
            subnet = self.subnets[params["node"] - 1]
            gw = str(ipaddress.ip_network(subnet).network_address + 1)
            run(node.ns, "ip", "route", "replace", subnet, "dev", "cni0", "proto", "kernel", "scope", "link",
                "src", gw, check=False)
        if kind in ("etcd_wipe",):
            # the agents' own leases: a restart re-acquires them from subnet.env
            for agent in self.agents:
                agent.stop(15)
                agent.start()
        else:
            for agent in self.agents:
                if not agent.alive:
                    agent.start()
            agent = self.agents[params["node"] - 1]
            if kind not in ("ip_forward_off", "cni0_route_flush"):
                agent.stop(15)
                agent.start()

    # -------------------------------------------------------------------- run
    def run(self) -> None:
        o = self.opts
        took, unmet = self.converge(o.converge_timeout)
        if unmet:
            self.violate(0, "baseline", "converged before any fault", "\n".join(unmet))
            raise Aborted("the cluster did not converge before the first fault")
        self.check_after(0, "baseline")
        self.say(f"baseline: converged in {took:.1f}s")
        started = self.started = time.monotonic()
        kinds = schedule(o.seed, o.faults)
        for step in itertools.count(1):
            if o.steps is not None and step > o.steps:
                break
            if o.duration is not None and time.monotonic() - started > o.duration:
                break
            kind = next(kinds)
            self.step_started = step
            rng = step_rng(o.seed, step)
            before = len(self.violations)
            self.say(f"step {step}: {kind}")
            params = self.fault(kind, rng, step)
            if kind in REPORTED_NOT_REPAIRED:
                self._expect_reported(step, kind, params)
                self.heal(kind, params)
            took, unmet = self.converge(o.converge_timeout + SETTLE.get(kind, 0.0))
            record = {"step": step, "fault": kind, "params": params,
                      "converged_s": None if took is None else round(took, 3)}
            if unmet:
                self.violate(step, kind, "converged after the quiet period",
                             f"not converged after {o.converge_timeout:g}s: " + "\n".join(unmet))
                self.heal(kind, params)
                took2, unmet2 = self.converge(o.converge_timeout)
                record["healed_by_harness"] = unmet2 == []
                if unmet2:
                    self.check_after(step, kind)
                    record["violations"] = [v.to_json() for v in self.violations[before:]]
                    self.records.append(record)
                    raise Aborted(f"step {step} ({kind}): still not converged after the harness healed it: "
                                  + "; ".join(unmet2))
            self.check_after(step, kind)
            record["log_lines"] = list(self.log_lines)
            record["rss_mib"] = [round(r, 1) for r in self.rss_last]
            record["violations"] = [v.to_json() for v in self.violations[before:]]
            self.records.append(record)
            self.say(f"  {json.dumps(params)} -> " + (f"converged in {took:.1f}s" if took is not None else
                                                      "NOT converged") + f", rss {self._rss_text()}")
            if o.fail_fast and self.violations:
                break

    def _rss_text(self) -> str:
        return "/".join(f"{r:.0f}" for r in self.rss_last) + " MiB"

    # -------------------------------------------------------------- summary
    def summary(self, error: str | None = None) -> dict:
        by_kind: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r["fault"]] = counts.get(r["fault"], 0) + 1
            if r["converged_s"] is not None:
                by_kind.setdefault(r["fault"], []).append(r["converged_s"])
        all_times = [t for ts in by_kind.values() for t in ts]
        failing = sorted({v.kind for v in self.violations})
        return {
            "seed": self.opts.seed, "steps_run": len(self.records),
            "duration_s": round(time.monotonic() - self.started, 1) if self.started is not None else 0.0,
            "faults_enabled": list(self.opts.faults), "nodes": len(self.nodes), "simulated_leases": self.opts.leases,
            "resync_interval_s": self.opts.resync_interval, "converge_timeout_s": self.opts.converge_timeout,
            "faults_by_type": counts,
            "convergence_s": {"all": stats(all_times), **{k: stats(v) for k, v in sorted(by_kind.items())}},
            "pings": dict(self.pings),
            "rss_mib": {"max": [round(r, 1) for r in self.rss_max], "last": [round(r, 1) for r in self.rss_last]},
            "violations": [v.to_json() for v in self.violations],
            "failing_fault_kinds": failing,
            "aborted": error,
            "reproduce": (f"python3 -m reconciler.tools.soak --seed {self.opts.seed} --steps {self.step_started} "
                          f"--leases {self.opts.leases} --faults {','.join(self.opts.faults)}"),
            "steps": self.records,
        }

    # ------------------------------------------------------------- cleanup
    def keep_logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for i, agent in enumerate(self.agents, 1):
            if agent.log_path.exists():
                shutil.copy(agent.log_path, dest / f"agent-{i}.log")
        if self.etcd is not None and self.etcd.dir is not None and self.etcd.log_path.exists():
            shutil.copy(self.etcd.log_path, dest / "etcd.log")

    def cleanup(self) -> None:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("resume etcd", lambda: self.etcd and self.etcd.resume()),
            ("stop the agents", self._stop_agents), ("CNI DEL the pods", self._delete_pods),
            ("stop the monitors and delete the namespaces", self.stack.close),
            ("stop etcd", lambda: self.etcd and self.etcd.stop()),
            ("remove the work directory", lambda: shutil.rmtree(self.workdir, ignore_errors=True))]
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # keep going: the later steps still have to run
                print(f"warning: cleanup: could not {what}: {exc}", file=sys.stderr, flush=True)
        for name in [*(n.ns for n in self.nodes), *(p.ns for p in self.pods)]:
            delete_netns(name)

    def _stop_agents(self) -> None:
        stop_agents(self.agents)

    def _delete_pods(self) -> None:
        delete_pods(self.pods, self.cni_path, sys.stderr)


def render_text(s: dict) -> str:
    """The human-readable summary."""
    def num(v):
        return "-" if v is None else f"{v:.2f}"

    lines = [f"chaos soak: seed {s['seed']}, {s['steps_run']} steps in {s['duration_s']:g}s, {s['nodes']} nodes, "
             f"{s['simulated_leases']} simulated leases, resync {s['resync_interval_s']:g}s"]
    if s.get("aborted"):
        lines.append(f"ABORTED: {s['aborted']}")
    lines.append(f"{'fault':<24}{'count':>6}{'conv p50':>10}{'p90':>8}{'max':>8}")
    conv = s["convergence_s"]
    for kind, n in sorted(s["faults_by_type"].items()):
        c = conv.get(kind, {"p50": None, "p90": None, "max": None})
        lines.append(f"{kind:<24}{n:>6}{num(c['p50']):>10}{num(c['p90']):>8}{num(c['max']):>8}")
    a = conv["all"]
    lines.append(f"{'all':<24}{s['steps_run']:>6}{num(a['p50']):>10}{num(a['p90']):>8}{num(a['max']):>8}")
    lines.append(f"pings: {s['pings']['ok']}/{s['pings']['sent']} answered (failures before convergence included)")
    lines.append(f"RSS (MiB) per node: max {s['rss_mib']['max']}, last {s['rss_mib']['last']}")
    lines.append(f"violations: {len(s['violations'])}"
                 + (f" (fault kinds: {', '.join(s['failing_fault_kinds'])})" if s["violations"] else ""))
    for v in s["violations"]:
        first, _, rest = v["detail"].partition("\n")
        lines.append(f"  step {v['step']} {v['fault']}: {v['invariant']}: {first}")
        lines.extend(f"      {line}" for line in rest.splitlines()[:8])
    lines.append(f"reproduce: {s['reproduce']}")
    return "\n".join(lines)


def render_markdown(summaries: Sequence[dict]) -> str:
    """The README's table from one or more JSON summaries (runs merged, per fault kind)."""
    def num(v):
        return "-" if v is None else f"{v:.1f}"

    times: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    failed: dict[str, int] = {}
    for s in summaries:
        for r in s["steps"]:
            counts[r["fault"]] = counts.get(r["fault"], 0) + 1
            if r["converged_s"] is not None:
                times.setdefault(r["fault"], []).append(r["converged_s"])
        for v in s["violations"]:
            failed[v["fault"]] = failed.get(v["fault"], 0) + 1
    lines = ["| fault | injected | converged | convergence p50 / p90 / max (s) | violations |", "|---|---|---|---|---|"]
    for kind in [k for k in FAULTS if k in counts]:
        st = stats(times.get(kind, []))
        lines.append(f"| `{kind}` | {counts[kind]} | {st['n']} | {num(st['p50'])} / {num(st['p90'])} / {num(st['max'])} "
                     f"| {failed.get(kind, 0) or ''} |")
    st = stats([t for ts in times.values() for t in ts])
    lines.append(f"| **all** | {sum(counts.values())} | {st['n']} | {num(st['p50'])} / {num(st['p90'])} / "
                 f"{num(st['max'])} | {sum(failed.values()) or ''} |")
    sent = sum(s["pings"]["sent"] for s in summaries)
    ok = sum(s["pings"]["ok"] for s in summaries)
    rss = max((r for s in summaries for r in s["rss_mib"]["max"]), default=0.0)
    runs = "; ".join(f"seed {s['seed']}: {s['steps_run']} steps, {s['duration_s'] / 60:.1f} min" for s in summaries)
    lines.append("")
    lines.append(f"Runs: {runs}. Pings: {ok}/{sent} answered (those sent while a fault was still being repaired "
                 f"included). Agent RSS: at most {rss:.0f} MiB.")
    return "\n".join(lines)


def run_soak(opts: SoakOptions, out=None) -> dict:
    """Set up, run, summarize, clean up.  Returns the summary (also written to ``opts.out_dir``)."""
    out = out or sys.stdout
    problems = prerequisite_problems()
    if problems:
        raise RuntimeError("soak prerequisites: " + "; ".join(problems))
    soak, error = None, None
    with _signals(_interrupt):
        try:
            soak = Soak(opts, out)
            soak.setup()
            soak.run()
        except Aborted as exc:
            error = str(exc)
        except KeyboardInterrupt:
            error = "interrupted"
        except (AgentFailed, CommandFailed, lab_etcd.EtcdNotInstalled, OSError, RuntimeError,
                urllib.error.URLError) as exc:
            error = f"harness error: {type(exc).__name__}: {exc}"
        finally:
            with _signals(signal.SIG_IGN):
                summary = soak.summary(error) if soak is not None else {"aborted": error}
                if soak is not None:
                    if opts.out_dir and (soak.violations or error):
                        soak.keep_logs(Path(opts.out_dir) / f"logs-seed{opts.seed}")
                    soak.cleanup()
    if opts.out_dir and soak is not None:
        dest = Path(opts.out_dir)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / f"soak-seed{opts.seed}.json").write_text(json.dumps(summary, indent=2) + "\n")
        (dest / f"soak-seed{opts.seed}.txt").write_text(render_text(summary) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m reconciler.tools.soak",
                                description="Seeded chaos soak: real agents, random faults, invariants (root).")
    p.add_argument("--seed", type=int, default=None, help="the seed (default: random, printed)")
    p.add_argument("--steps", type=int, default=None, help="faults to inject (default 20 without --duration)")
    p.add_argument("--duration", type=float, default=None, help="stop starting faults after this many seconds")
    p.add_argument("--faults", default=None, help="comma-separated fault kinds to use (default: all)")
    p.add_argument("--skip-faults", default=None, help="comma-separated fault kinds to leave out")
    p.add_argument("--list-faults", action="store_true", help="list the fault kinds and exit")
    p.add_argument("--report", nargs="+", metavar="JSON",
                   help="print the README's markdown table from these summaries and exit (runs nothing)")
    p.add_argument("--leases", type=int, default=200, help="simulated peers (default %(default)s)")
    p.add_argument("--resync-interval", type=float, default=RESYNC_INTERVAL)
    p.add_argument("--converge-timeout", type=float, default=CONVERGE_TIMEOUT)
    p.add_argument("--max-log-growth-kib", type=float, default=MAX_LOG_GROWTH_KIB)
    p.add_argument("--max-log-lines", type=int, default=MAX_LOG_LINES, help="per agent per step")
    p.add_argument("--max-rss-mib", type=float, default=MAX_RSS_MIB)
    p.add_argument("--fail-fast", action="store_true", help="stop at the first violation")
    p.add_argument("--out", default="soak-results", help="directory for the JSON and text summaries")
    args = p.parse_args(argv)
    if args.report:
        try:
            summaries = [json.loads(Path(f).read_text()) for f in args.report]
        except (OSError, ValueError) as exc:
            print(f"error: --report: {exc}", file=sys.stderr)
            return 1
        print(render_markdown(summaries))
        return 0
    if args.list_faults:
        for kind, what in FAULTS.items():
            print(f"{kind:<24}{what}")
        return 0
    try:
        kinds = parse_fault_set(args.faults, args.skip_faults)
    except ValueError as exc:
        print(f"error: --faults/--skip-faults: {exc}", file=sys.stderr)
        return 1
    if args.leases < 1 or args.leases > 2000:
        print("error: --leases must be between 1 and 2000", file=sys.stderr)
        return 1
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1 << 31)
    steps = args.steps if args.steps is not None or args.duration is not None else 20
    opts = SoakOptions(seed=seed, steps=steps, duration=args.duration, faults=kinds, leases=args.leases,
                       resync_interval=args.resync_interval, converge_timeout=args.converge_timeout,
                       max_log_growth_kib=args.max_log_growth_kib, max_log_lines=args.max_log_lines, max_rss_mib=args.max_rss_mib,
                       fail_fast=args.fail_fast, out_dir=args.out)
    try:
        summary = run_soak(opts)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render_text(summary))
    print(f"(written to {args.out}/soak-seed{seed}.json and .txt)")
    return 0 if not summary.get("violations") and not summary.get("aborted") else 1


if __name__ == "__main__":
    sys.exit(main())
