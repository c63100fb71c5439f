"""``flannel-reconciler demo``: a whole Flannel VXLAN cluster on one machine, then gone.

The steps, each printed under a short heading:

1. check the prerequisites (root, etcd, the CNI plugins, ip, ping, iptables);
2. start a private etcd on 127.0.0.1 and write the network config;
3. build N node namespaces on a bridged veth underlay (eth0 = 198.18.0.i/24),
   each with the FORWARD policy DROP, as Docker leaves it;
4. start the agent in each node (``python -m reconciler run --netns ... --ip-masq``);
5. attach one pod per node with the real CNI bridge plugin, configured as
   flannel's CNI plugin configures it from that node's ``subnet.env``;
6. show each node's lease, its ``plan`` (in sync: exit 0) and its rules;
7. ping every pod from every other pod and print the matrix, then ping an
   outside host (the underlay's hub, which has no route to the pods) from a
   pod: only a masqueraded ping comes back.

``--ipv6`` runs the same cluster dual stack: fd00:100:64::/48 beside the
IPv4 network, fd00:198:18::i on each node's eth0, pods with an address of
each family, and a second matrix with ``ping -6``.

Everything it made is removed at the end -- agents (SIGTERM), pods (CNI
DEL), namespaces, etcd, the work directory -- also after an error, Ctrl-C
or SIGTERM.  Children run in sessions of their own, so a Ctrl-C at the
terminal reaches only the demo, which then stops them in order.

``AgentProcess`` (one agent as a subprocess, with its log and HTTP
endpoints) is also what the end-to-end tests run.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TextIO

from reconciler.tools.lab import cni as lab_cni
from reconciler.tools.lab import etcd as lab_etcd
from reconciler.tools.lab.netns import DEMO_PREFIX, GATEWAY, Node, delete_netns, enable_ipv6, netns, netns_exists, run, underlay

__all__ = ["AgentFailed", "AgentProcess", "CONFIG", "MAX_NODES", "MIN_NODES", "prerequisite_problems", "run_demo"]

MIN_NODES, MAX_NODES = 2, 20
PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}'
#: ``demo --ipv6``: dual stack, a /64 per node out of a ULA /48.
CONFIG_DUAL = ('{"Network":"100.64.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:100:64::/48",'
               '"Backend":{"Type":"vxlan","VNI":1}}')
READY_TIMEOUT = 30.0
#: How long the plan of a node may take to settle after all agents are ready
#: (the last lease events may still be on their way to the first agents).
SYNC_TIMEOUT = 15.0
#: The directory that holds the ``reconciler`` package: children import it from there,
#: so the demo also works from a source checkout that is not pip-installed.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)


# --------------------------------------------------------------------------------------------
# One agent as a subprocess
# --------------------------------------------------------------------------------------------

class AgentFailed(RuntimeError):
    """An agent exited or did not become ready; the message ends with its log's tail."""


def child_env() -> dict[str, str]:
    """The environment for our children: no ``FLANNELD_*`` setting of the host
    (the CLI reads them as defaults), the package importable, unbuffered logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    return env


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """``python -m reconciler run`` for one node namespace.

    The log goes to ``<workdir>/agent.log``, ``subnet.env`` to
    ``<workdir>/subnet.env``; ``/healthz``, ``/readyz`` and ``/metrics`` are
    served on one free port of 127.0.0.1 (the agent process lives in the
    host's namespace; only its netlink socket is inside the node's).
    ``etcd_args`` are the source flags (``--etcd-endpoints URL`` and any
    TLS/auth flags).
    """

    def __init__(self, ns: str, workdir: str | os.PathLike[str], etcd_args: Sequence[str], *,
                 iface: str = "eth0", resync_interval: float = 5.0, extra_args: Sequence[str] = ()) -> None:
        self.ns = ns
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.subnet_file = self.workdir / "subnet.env"
        self.log_path = self.workdir / "agent.log"
        self.port = free_port()
        self.argv = [sys.executable, "-m", "reconciler", "run", "--netns", ns, "--iface", iface,
                     *etcd_args, "--subnet-file", str(self.subnet_file),
                     "--healthz-ip", "127.0.0.1", "--healthz-port", str(self.port),
                     "--metrics-port", str(self.port), "--resync-interval", f"{resync_interval:g}",
                     *extra_args]
        self.proc: subprocess.Popen | None = None
        self._terminated = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "AgentProcess":
        self._terminated = False
        with open(self.log_path, "ab") as log:
            # A session of its own: a Ctrl-C meant for the demo must not stop the agents
            # behind its back; the demo stops them itself, in order.
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=child_env(), start_new_session=True)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int | None, str]:
        """(HTTP status, body); (None, reason) when nothing answers."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (OSError, urllib.error.URLError) as exc:
            return None, str(exc)

    def samples(self, name: str) -> list[tuple[dict[str, str], float]] | None:
        """Every series named ``name`` in ``/metrics``, read by prometheus_client's parser:
        [(labels, value)]; None when the endpoint does not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.get("/metrics")
        if status != 200:
            return None
        return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name]

    def metric(self, name: str, **labels: str) -> float | None:
        """One series from ``/metrics`` (labels matched exactly); None when absent."""
        for got, value in self.samples(name) or ():
            if got == labels:
                return value
        return None

    def ready(self) -> bool:
        return self.get("/readyz", timeout=1.0)[0] == 200

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        wait_all_ready([self], timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def terminate(self) -> None:
        """SIGTERM, once: the agent stops and leaves the kernel as it is.  No wait."""
        if self.alive and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGCONT)   # a paused agent could not act on SIGTERM
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int | None:
        """``terminate()``, wait, SIGKILL if it lingers; the exit status (None if never started)."""
        proc = self.proc
        if proc is None:
            return None
        self.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        return proc.returncode


def wait_all_ready(agents: Sequence[AgentProcess], timeout: float = READY_TIMEOUT) -> None:
    """Poll every agent's ``/readyz`` until all say 200 (one shared, bounded deadline).

    Raises ``AgentFailed`` naming the first agent that exited or is still not
    ready, with the tail of its log."""
    deadline = time.monotonic() + timeout
    pending = list(agents)
    while pending:
        for agent in list(pending):
            if not agent.alive:
                code = agent.proc.returncode if agent.proc is not None else None
                raise AgentFailed(f"the agent for {agent.ns} exited (status {code}); last lines of "
                                  f"{agent.log_path}:\n{agent.log_tail()}")
            if agent.ready():
                pending.remove(agent)
        if pending and time.monotonic() > deadline:
            agent = pending[0]
            raise AgentFailed(f"the agent for {agent.ns} is not ready after {timeout:g}s; last lines of "
                              f"{agent.log_path}:\n{agent.log_tail()}")
        if pending:
            time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# Prerequisites
# --------------------------------------------------------------------------------------------

def prerequisite_problems() -> list[str]:
    """One line per missing prerequisite, each saying how to get it."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root: it creates network namespaces, veth and VXLAN devices (try sudo)")
    if not os.access(lab_etcd.ETCD_BIN, os.X_OK):
        problems.append(f"{lab_etcd.ETCD_BIN} not found (apt-get install etcd-server)")
    for plugin in ("bridge", "host-local"):
        path = os.path.join(lab_cni.CNI_PATH, plugin)
        if not os.access(path, os.X_OK):
            problems.append(f"CNI plugin {path} not found (apt-get install containernetworking-plugins)")
    # iptables: the bridge plugin masquerades pod traffic (ipMasq) when flanneld runs without --ip-masq.
    for tool, package in (("ip", "iproute2"), ("ping", "iputils-ping"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            problems.append(f"'{tool}' not found (apt-get install {package})")
    return problems


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)  # identity: pods are dict keys of the ping matrix
class Pod:
    index: int
    node: Node
    ns: str
    container_id: str
    conf: dict
    ip: str = ""
    ip6: str = ""


class _Demo:
    """The cluster being built; ``cleanup()`` undoes whatever part of it exists."""

    def __init__(self, nodes: int, out: TextIO, err: TextIO, ipv6: bool = False) -> None:
        self.count = nodes
        self.ipv6 = ipv6
        self.config = CONFIG_DUAL if ipv6 else CONFIG
        self.out, self.err = out, err
        self.workdir = Path(tempfile.mkdtemp(prefix="flannel-demo-"))
        self.etcd: lab_etcd.LocalEtcd | None = None
        self.namespaces = ExitStack()       # the underlay and the pod namespaces
        self.nodes: tuple[Node, ...] = ()
        self.hub = ""
        self.agents: list[AgentProcess] = []
        self.pods: list[Pod] = []
        self.cni_path = lab_cni.CNI_PATH    # read now: the tests point it elsewhere
        self._step = 0

    # ------------------------------------------------------------------ output
    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def heading(self, title: str) -> None:
        self._step += 1
        self.say(f"\n[{self._step}/7] {title}")

    # ------------------------------------------------------------------- steps
    def start_etcd(self) -> None:
        self.heading("A private etcd")
        self.etcd = lab_etcd.LocalEtcd(self.workdir).start()
        self.say(f"  etcd {self.etcd.endpoint} (pid {self.etcd.pid}, data in {self.etcd.dir})")
        from reconciler.etcd.store import EtcdStore

        with EtcdStore([self.etcd.endpoint], prefix=PREFIX) as store:
            store.put_config(self.config)
        self.say(f"  {PREFIX}/config = {self.config}")

    def build_nodes(self) -> None:
        self.heading(f"{self.count} nodes on a veth underlay")
        net = self.namespaces.enter_context(underlay(self.count, prefix=DEMO_PREFIX, ipv6=self.ipv6))
        self.hub, self.nodes = net.hub, net.nodes
        for i, node in enumerate(self.nodes, 1):
            # Docker's FORWARD policy: without the agent's FLANNEL-FWD accepts, pods are cut off.
            run(node.ns, "iptables", "-P", "FORWARD", "DROP")
            self.say(f"  node {i}: netns {node.ns}, {node.dev} {node.cidr}" + (f" {node.ip6}/64" if node.ip6 else "")
                     + ", iptables FORWARD policy DROP")
        self.say(f"  (all on bridge br0 in netns {self.hub}, {GATEWAY}: the outside host, no route to the pods)")

    def start_agents(self) -> None:
        self.heading("The agent on every node")
        for i, node in enumerate(self.nodes, 1):
            agent = AgentProcess(node.ns, self.workdir / f"node-{i}", ["--etcd-endpoints", self.etcd.endpoint],
                                 iface=node.dev, resync_interval=5, extra_args=["--ip-masq"])
            self.agents.append(agent.start())
        self.say(f"  started {len(self.agents)} agents; waiting (at most {READY_TIMEOUT:g}s) until each is ready")
        wait_all_ready(self.agents, READY_TIMEOUT)
        for i, agent in enumerate(self.agents, 1):
            self.say(f"  node {i}: ready (pid {agent.pid}, {agent.url('/metrics')}, log {agent.log_path})")

    def attach_pods(self) -> None:
        self.heading("One pod per node, by the CNI bridge plugin")
        for i, (node, agent) in enumerate(zip(self.nodes, self.agents), 1):
            conf = lab_cni.flannel_delegate_config(agent.subnet_file.read_text(), "cbr0",
                                                   data_dir=str(agent.workdir / "cni"))
            ns = self.namespaces.enter_context(netns(f"pod{i}", DEMO_PREFIX))
            if self.ipv6:
                enable_ipv6(ns)
            pod = Pod(i, node, ns, f"demo-pod-{i}", conf)
            self.pods.append(pod)  # before ADD: a half-done ADD is undone by DEL too
            result = lab_cni.cni_add(node.ns, ns, pod.container_id, conf, cni_path=self.cni_path)
            addrs = [ip["address"] for ip in result["ips"]]
            pod.ip = next(a for a in addrs if ":" not in a).split("/")[0]
            pod.ip6 = next((a for a in addrs if ":" in a), "").split("/")[0]
            self.say(f"  pod {i}: netns {ns}, {', '.join(addrs)} on node {i}'s cni0")

    def show_leases_and_plans(self) -> bool:
        self.heading("Leases in etcd, and each node's plan")
        self._print_leases()
        in_sync = True
        for node in self.nodes:
            rc, output = self._settled_plan(node)
            argv = ["python", "-m", "reconciler", *self._plan_args(node)]
            self.say(f"  $ {' '.join(argv)}")
            for line in output.rstrip().splitlines():
                self.say(f"    {line}")
            verdict = {0: "in sync", 2: "changes pending"}.get(rc, "error")
            self.say(f"    -> exit {rc}: {verdict}")
            in_sync &= rc == 0
            self._print_rules(node)
        return in_sync

    def _print_leases(self) -> None:
        from reconciler.etcd.store import EtcdStore
        from reconciler.core.leases import parse_lease

        with EtcdStore([self.etcd.endpoint], prefix=PREFIX) as store:
            kvs = [kv for kv in store.snapshot().kvs if kv.key.startswith(store.subnets_prefix)]
            base = store.subnets_prefix
        by_ip = {}
        for kv in kvs:
            lease = parse_lease(kv.key[len(base):], kv.value, kv.lease)
            by_ip[lease.public_ip] = lease
        if self.ipv6:  # both families: wider columns, an IPv6 row under each node, the raw leases
            self.say(f"  {'node':<6}{'public IP':<18}{'subnet':<22}{'VtepMAC':<19}pod")
        else:
            self.say(f"  {'node':<6}{'public IP':<14}{'subnet':<17}{'VtepMAC':<19}pod")
        for i, node in enumerate(self.nodes, 1):
            lease = by_ip.get(node.ip)
            subnet, mac = (str(lease.subnet), lease.vtep_mac) if lease else ("(none)", "-")
            if not self.ipv6:
                self.say(f"  {i:<6}{node.ip:<14}{subnet:<17}{mac:<19}{self.pods[i - 1].ip}")
                continue
            self.say(f"  {i:<6}{node.ip:<18}{subnet:<22}{mac:<19}{self.pods[i - 1].ip}")
            if lease is not None and lease.ipv6_subnet is not None:
                self.say(f"  {'':<6}{lease.public_ipv6:<18}{str(lease.ipv6_subnet):<22}"
                         f"{lease.v6_vtep_mac:<19}{self.pods[i - 1].ip6}")
        if self.ipv6:
            self.say("  the leases, byte for byte as flanneld writes them:")
            for kv in sorted(kvs, key=lambda kv: kv.key):
                self.say(f"    {kv.key} = {kv.value}")

    def _plan_args(self, node: Node, command: str = "plan") -> list[str]:
        return [command, "--netns", node.ns, "--iface", node.dev, "--etcd-endpoints", self.etcd.endpoint,
                "--ip-masq"]

    def _print_rules(self, node: Node) -> None:
        """The packet filter rules of the node, as ``show`` lists them (kind ``rule``)."""
        proc = subprocess.run([sys.executable, "-m", "reconciler", *self._plan_args(node, "show")],
                              capture_output=True, text=True, env=child_env(), timeout=60)
        rules = [line for line in proc.stdout.splitlines() if line.startswith("[") and "]" in line
                 and line.split("]", 1)[1].lstrip().startswith("rule ")]
        self.say(f"    rules ({len(rules)}, from: python -m reconciler show ...):")
        for line in rules:
            self.say(f"      {line}")

    def _settled_plan(self, node: Node) -> tuple[int, str]:
        """Run ``plan`` until it says in sync or ``SYNC_TIMEOUT`` passes: the
        agents are ready, but the last peers' lease events may still be in flight."""
        deadline = time.monotonic() + SYNC_TIMEOUT
        while True:
            proc = subprocess.run([sys.executable, "-m", "reconciler", *self._plan_args(node)],
                                  capture_output=True, text=True, env=child_env(), timeout=60)
            output = proc.stdout + proc.stderr
            if proc.returncode != 2 or time.monotonic() > deadline:
                return proc.returncode, output
            time.sleep(0.5)

    def ping_matrix(self) -> bool:
        self.heading("Pod-to-pod pings" + (" (IPv4, then IPv6)" if self.ipv6 else ""))
        if not self.ipv6:
            ok = self._matrix(lambda pod: pod.ip, "")
        else:
            self.say("  IPv4 (ping):")
            ok = self._matrix(lambda pod: pod.ip, "IPv4: ")
            self.say("  IPv6 (ping -6):")
            ok = self._matrix(lambda pod: pod.ip6, "IPv6: ") and ok
        return self._ping_outside() and ok

    def _ping_outside(self) -> bool:
        pod = self.pods[0]
        outside = _ping(pod.ns, GATEWAY)
        self.say(f"  pod 1 -> outside host {GATEWAY} (no route back to the pods): "
                 + ("ok, masqueraded by FLANNEL-POSTRTG" if outside else "FAIL"))
        return outside

    def _matrix(self, address, label: str) -> bool:
        pairs = [(a, b) for a in self.pods for b in self.pods if a is not b]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = dict(zip(pairs, pool.map(lambda p: _ping(p[0].ns, address(p[1])), pairs)))
        width = 7
        self.say("  " + "from \\ to".ljust(11) + "".join(f"pod {p.index}".rjust(width) for p in self.pods))
        for a in self.pods:
            cells = ["-" if a is b else ("ok" if results[(a, b)] else "FAIL") for b in self.pods]
            self.say("  " + f"pod {a.index}".ljust(11) + "".join(c.rjust(width) for c in cells))
        failed = [f"pod {a.index} -> pod {b.index}" for (a, b), ok in results.items() if not ok]
        passed = len(pairs) - len(failed)
        if failed:
            self.say(f"  {label}{passed}/{len(pairs)} pod pairs reachable; FAILED: {', '.join(failed)}")
        else:
            self.say(f"  {label}{passed}/{len(pairs)} pod pairs reachable through VXLAN: the overlay works.")
        return not failed

    def wait_for_ctrl_c(self) -> None:
        node, pod = self.nodes[0], self.pods[0]
        other = self.pods[1]
        self.say("\nThe cluster stays up until you press Ctrl-C. Try, in another shell:")
        for cmd in (f"ip -n {node.ns} route                        # a route via flannel.1 per peer",
                    f"ip -n {node.ns} neigh show dev flannel.1     # a neighbour per peer",
                    f"bridge -n {node.ns} fdb show dev flannel.1   # an FDB entry per peer",
                    f"ip netns exec {pod.ns} ping -c 3 {other.ip}",
                    *([f"ip -n {node.ns} -6 route                     # a route via flannel-v6.1 per peer",
                       f"ip netns exec {pod.ns} ping -6 -c 3 {other.ip6}"] if self.ipv6 else []),
                    f"curl -s {self.agents[0].url('/metrics')}",
                    f"ETCDCTL_API=3 etcdctl --endpoints {self.etcd.endpoint} get --prefix {PREFIX}/subnets",
                    "python -m reconciler " + " ".join(self._plan_args(node))):
            self.say(f"  {cmd}")
        self.say(f"Agent logs: {self.workdir}/node-*/agent.log")
        reported: set[int] = set()
        try:
            while True:
                time.sleep(1)
                for i, agent in enumerate(self.agents, 1):
                    if not agent.alive and i not in reported:
                        reported.add(i)
                        self.say(f"note: the agent of node {i} exited; last lines of its log:\n{agent.log_tail()}")
        except KeyboardInterrupt:
            self.say("")

    # ----------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        """Undo everything, in order, each step even if an earlier one failed."""
        self.say("\nCleaning up: agents, pods, namespaces, etcd, work directory")
        steps = [("stop the agents", self._stop_agents), ("CNI DEL the pods", self._delete_pods),
                 ("delete the namespaces", self.namespaces.close), ("stop etcd", self._stop_etcd),
                 ("remove the work directory", lambda: shutil.rmtree(self.workdir, ignore_errors=True))]
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # keep going: the later steps still have to run
                print(f"warning: cleanup: could not {what}: {exc}", file=self.err, flush=True)
        for name in self._namespace_names():   # if namespaces.close() failed halfway: one by one
            delete_netns(name)
        left = self._leftovers()
        if left:
            print(f"warning: cleanup: left behind: {'; '.join(left)}", file=self.err, flush=True)
        else:
            self.say("  done: nothing left behind")

    def _namespace_names(self) -> list[str]:
        return [n for n in (self.hub, *(n.ns for n in self.nodes), *(p.ns for p in self.pods)) if n]

    def _leftovers(self) -> list[str]:
        """What cleanup could not remove, checked from outside."""
        left = [f"netns {n}" for n in self._namespace_names() if netns_exists(n)]
        left += [f"agent pid {a.pid}" for a in self.agents if a.alive]
        if self.etcd is not None and self.etcd.proc is not None:
            left.append(f"etcd pid {self.etcd.pid}")
        if self.workdir.exists():
            left.append(str(self.workdir))
        return left

    def _stop_agents(self) -> None:
        stop_agents(self.agents)

    def _delete_pods(self) -> None:
        delete_pods(self.pods, self.cni_path, self.err)

    def _stop_etcd(self) -> None:
        if self.etcd is not None:
            self.etcd.stop()


def stop_agents(agents: Sequence[AgentProcess]) -> None:
    """SIGTERM every agent first, so that they stop in parallel, then wait for each."""
    for agent in agents:
        agent.terminate()
    for agent in agents:
        agent.stop()


def delete_pods(pods, cni_path: str, err: TextIO) -> None:
    """CNI DEL every pod, the last attached first; a pod that fails is said and the rest go on
    (deleting the namespaces removes the veths anyway; host-local's files go with the work dir)."""
    for pod in reversed(pods):
        try:
            lab_cni.cni_del(pod.node.ns, pod.ns, pod.container_id, pod.conf, cni_path=cni_path)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on whatever one pod did
            print(f"warning: cleanup: {exc}", file=err, flush=True)


def _ping(pod_ns: str, ip: str) -> bool:
    flag = ["-6"] if ":" in ip else []
    proc = run(pod_ns, "ping", *flag, "-c", "1", "-W", "2", ip, check=False)
    return proc.returncode == 0


@contextmanager
def _signals(handler) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``handler`` (main thread only: elsewhere
    Python cannot set handlers, and the caller owns the signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _interrupt(signum, _frame):
    # SIGTERM ends the demo the way Ctrl-C does: through the cleanup.
    raise KeyboardInterrupt


def run_demo(nodes: int = 3, keep: bool = False, *, out: TextIO | None = None, err: TextIO | None = None,
             ipv6: bool = False) -> int:
    """Run the demo; 0 if every node is in sync and every pod reaches every other, else 1."""
    out, err = out or sys.stdout, err or sys.stderr
    if not MIN_NODES <= nodes <= MAX_NODES:
        print(f"error: --nodes must be between {MIN_NODES} and {MAX_NODES}, not {nodes}", file=err)
        return 1
    problems = prerequisite_problems()
    if problems:
        for line in problems:
            print(f"error: demo prerequisite: {line}", file=err)
        return 1

    rc, demo = 1, None
    with _signals(_interrupt):
        try:
            demo = _Demo(nodes, out, err, ipv6)
            demo.say(f"flannel-reconciler demo: {nodes} nodes{', dual stack' if ipv6 else ''} "
                     f"(work directory {demo.workdir}, removed at the end)")
            demo.heading("Prerequisites")
            demo.say("  root, etcd, CNI bridge + host-local, ip, ping, iptables: all present")
            demo.start_etcd()
            demo.build_nodes()
            demo.start_agents()
            demo.attach_pods()
            in_sync = demo.show_leases_and_plans()
            reachable = demo.ping_matrix()
            rc = 0 if in_sync and reachable else 1
            if not in_sync:
                demo.say("  (some node's plan was not in sync: see above)")
            if keep:
                demo.wait_for_ctrl_c()
        except KeyboardInterrupt:
            print("\ninterrupted", file=err, flush=True)
            rc = 130
        except Exception as exc:  # any failure: say what, then clean up all the same
            print(f"\nerror: demo failed: {exc}", file=err, flush=True)
            rc = 1
        finally:
            # A second Ctrl-C must not cut the cleanup short.
            with _signals(signal.SIG_IGN):
                if demo is not None:
                    demo.cleanup()
    return rc
