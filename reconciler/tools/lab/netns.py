"""Network namespaces for the tests and the demo: make them, look inside, always remove them.

Everything here shells out to iproute2 on purpose (argv lists, never a
shell): ``ip -j`` and ``bridge -j`` are the *independent oracle* of kernel
state, so they must not share code with the backends under test.

Naming: every namespace a process makes is called ``<prefix>-<pid>-<n>``
(the tests use the prefix ``frt``, the demo ``frd``), so parallel runs never
collide and a leftover is easy to attribute.  Addresses stay inside
198.18.0.0/15 (underlay) and 100.64.0.0/10 (pod network), and the namespaces
have no way out: nothing is ever sent beyond them.

::

    with netns() as ns:                       # a bare namespace, lo up
        run(ns, "ip", "link", "add", "br0", "type", "bridge")
        ip_json(ns, "-d link show br0")

    with underlay(2, prefix=DEMO_PREFIX) as net:   # two nodes on one L2 segment
        node1, node2 = net.nodes              # Node(ns, dev="eth0", ip="198.18.0.1")
"""
from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

__all__ = [
    "DEMO_PREFIX",
    "GATEWAY",
    "CommandFailed",
    "Node",
    "TEST_PREFIX",
    "UnderlayNet",
    "bridge_json",
    "delete_netns",
    "enable_ipv6",
    "ip_json",
    "netns",
    "netns_exists",
    "run",
    "underlay",
    "unique_name",
]

NETNS_DIR = "/var/run/netns"
#: Name prefixes: ``frt-<pid>-<n>`` for the tests, ``frd-<pid>-<n>`` for the demo.
TEST_PREFIX = "frt"
DEMO_PREFIX = "frd"
#: The hub's address on the underlay segment: every node's default gateway.
GATEWAY = "198.18.0.254"
UNDERLAY_PREFIXLEN = 24
#: Dual stack (``underlay(..., ipv6=True)``): node *i* also has ``fd00:198:18::i/64``.
UNDERLAY6_PREFIX = "fd00:198:18::"
UNDERLAY6_PREFIXLEN = 64
_counter = itertools.count(1)


class CommandFailed(RuntimeError):
    """A command run by ``run`` exited non-zero; carries the argv, exit status and stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(cmd)} failed ({returncode}): {stderr.strip()}")
        self.cmd, self.returncode, self.stderr = list(cmd), returncode, stderr


def unique_name(tag: str = "", prefix: str = TEST_PREFIX) -> str:
    """``<prefix>-<pid>-<n>[-tag]``: unique to this process."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}{'-' + tag if tag else ''}"


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def _argv(args: str | Sequence[str]) -> list[str]:
    return shlex.split(args) if isinstance(args, str) else list(args)


def run(
    ns: str,
    *argv: str,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess:
    """Run a command inside ``ns``: ``ip``/``bridge`` get ``-n NS``, anything else ``ip netns exec NS``.

    ``input`` goes to standard input; ``env`` replaces the environment.  A
    non-zero exit raises ``CommandFailed`` (unless ``check`` is false).
    """
    if argv and argv[0] in ("ip", "bridge"):
        cmd = [argv[0], "-n", ns, *argv[1:]]
    else:
        cmd = ["ip", "netns", "exec", ns, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                          env=dict(env) if env is not None else None)
    if check and proc.returncode != 0:
        raise CommandFailed(cmd, proc.returncode, proc.stderr)
    return proc


def _json(ns: str, tool: str, args: str | Sequence[str]) -> list:
    out = run(ns, tool, "-j", *_argv(args)).stdout.strip()
    return json.loads(out) if out else []


def ip_json(ns: str, args: str | Sequence[str]) -> list:
    """``ip -n NS -j ARGS``, parsed: e.g. ``ip_json(ns, "-d link show flannel.1")``."""
    return _json(ns, "ip", args)


def bridge_json(ns: str, args: str | Sequence[str]) -> list:
    """``bridge -n NS -j ARGS``, parsed: e.g. ``bridge_json(ns, "fdb show dev flannel.1")``."""
    return _json(ns, "bridge", args)


def delete_netns(name: str) -> None:
    """``ip netns del NAME``; a namespace already gone is fine."""
    if netns_exists(name):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _create(name: str) -> None:
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise CommandFailed(["ip", "netns", "add", name], proc.returncode, proc.stderr)
    # Onlink gateway routes are refused ("Nexthop has invalid gateway")
    # while lo is down in a fresh namespace.
    run(name, "ip", "link", "set", "lo", "up")


@contextmanager
def netns(tag: str = "", prefix: str = TEST_PREFIX) -> Iterator[str]:
    """A fresh namespace with ``lo`` up, deleted afterwards even on failure."""
    name = unique_name(tag, prefix)
    try:
        _create(name)
        yield name
    finally:
        delete_netns(name)


@dataclass(frozen=True)
class Node:
    """One node namespace on the underlay: its namespace, device and address."""

    ns: str
    dev: str
    ip: str
    prefixlen: int = UNDERLAY_PREFIXLEN
    #: The node's IPv6 underlay address (``underlay(..., ipv6=True)``), else None.
    ip6: str | None = None

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"

    @property
    def prefix(self) -> str:
        return f"198.18.0.0/{self.prefixlen}"


@dataclass(frozen=True)
class UnderlayNet:
    """The hub namespace (bridge ``br0``, address ``GATEWAY``) and the nodes hanging off it."""

    hub: str
    nodes: tuple[Node, ...]


def enable_ipv6(ns: str) -> None:
    """IPv6 on, and duplicate address detection off, for every device made in ``ns`` from now on.

    Without it a new address stays "tentative" for a second or two (the
    VXLAN socket cannot bind it, the CNI bridge plugin waits for it).  The
    namespace is private to the test, so no other host can hold the address.
    """
    # Written through /proc (inside the namespace, /proc/sys/net is the namespace's own) with
    # coreutils' tee: procps' sysctl is not on a minimal Debian.
    for key in ("all/disable_ipv6", "default/disable_ipv6", "all/accept_dad", "default/accept_dad"):
        run(ns, "tee", f"/proc/sys/net/ipv6/conf/{key}", input="0\n")


@contextmanager
def underlay(count: int = 2, mtu: int = 1500, dev: str = "eth0",
             prefix: str = TEST_PREFIX, ipv6: bool = False) -> Iterator[UnderlayNet]:
    """``count`` node namespaces joined by veth pairs through a bridge in a hub namespace.

    Node *i* (from 1) has ``dev`` = 198.18.0.i/24, up, with MTU ``mtu`` and a
    default route via the hub (198.18.0.254), which has no further way out.
    With ``ipv6``, also ``fd00:198:18::i/64`` (no DAD; ``Node.ip6``), on the
    same segment; no IPv6 default route: nothing may leave.
    All namespaces are deleted afterwards, even on failure.
    """
    if not 1 <= count <= 200:
        raise ValueError("count must be between 1 and 200")
    with ExitStack() as stack:
        hub = stack.enter_context(netns("hub", prefix))
        if ipv6:
            enable_ipv6(hub)
        run(hub, "ip", "link", "add", "br0", "type", "bridge")
        run(hub, "ip", "addr", "add", f"{GATEWAY}/{UNDERLAY_PREFIXLEN}", "dev", "br0")
        run(hub, "ip", "link", "set", "br0", "up")
        nodes = []
        for i in range(1, count + 1):
            ns = stack.enter_context(netns(f"n{i}", prefix))
            if ipv6:
                enable_ipv6(ns)
            port = f"p{i}"
            run(ns, "ip", "link", "add", dev, "mtu", str(mtu), "type", "veth",
                "peer", "name", port, "mtu", str(mtu), "netns", hub)
            run(hub, "ip", "link", "set", port, "master", "br0", "up")
            ip = f"198.18.0.{i}"
            run(ns, "ip", "addr", "add", f"{ip}/{UNDERLAY_PREFIXLEN}", "dev", dev)
            run(ns, "ip", "link", "set", dev, "up")
            run(ns, "ip", "route", "add", "default", "via", GATEWAY, "dev", dev)
            # A node forwards (kubeadm's preflight insists; a fresh namespace has it off), and
            # the agent is not ready while it does not (core/health.py).
            run(ns, "tee", "/proc/sys/net/ipv4/ip_forward", input="1\n")
            ip6 = None
            if ipv6:
                ip6 = f"{UNDERLAY6_PREFIX}{i:x}"
                run(ns, "ip", "addr", "add", f"{ip6}/{UNDERLAY6_PREFIXLEN}", "dev", dev, "nodad")
            nodes.append(Node(ns=ns, dev=dev, ip=ip, ip6=ip6))
        yield UnderlayNet(hub=hub, nodes=tuple(nodes))
