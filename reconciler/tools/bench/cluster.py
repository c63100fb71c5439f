"""The simulated cluster: its layout (pure), its etcd, and the node namespaces.

One node is real: a namespace with ``eth0`` = 198.18.0.1/24 where the agent
runs.  The other N-1 nodes exist only as leases in etcd, written as flanneld
writes them: compact JSON with the fields in flanneld's order
(``encode_lease_value``), each under its own etcd lease (Grant 86400 s, then
Put), so the agent sees exactly what a real cluster would give it.

Layout (``layout(n)``): Network 100.64.0.0/10.  With SubnetLen 24 it holds
16,382 allocatable subnets, so clusters of more than ``MAX_NODES_24`` nodes use
SubnetLen 26 (65,534); the chosen config is printed and recorded.  Remote
node *i* (from 1) has subnet number *i* (the first subnet is never handed
out), PublicIP 198.18.1.0 + *i* and VtepMAC 0a:58:<i as 3 bytes>:00.  The
agent allocates its own subnet above them; the churn adds come from numbers
above ``n + ADD_OFFSET``, away from anything the agent may pick.
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

from reconciler.tools.lab.netns import delete_netns, run, unique_name
from reconciler.core.leases import encode_lease_value

__all__ = ["BENCH_PREFIX", "Cluster", "NODE_IP", "PREFIX", "Remote", "layout", "node_namespace",
           "peer_namespace", "write_leases"]

PREFIX = "/coreos.com/network"
#: Namespaces made by the benchmark: ``frb-<pid>-<n>-<tag>``.
BENCH_PREFIX = "frb"
NETWORK = ipaddress.IPv4Network("100.64.0.0/10")
NODE_IP = "198.18.0.1"
PEER_IP = "198.18.0.2"
MAX_NODES_24 = 16_000
#: Churn adds use subnet numbers from n + ADD_OFFSET on; the agent picks its own
#: among the first 100 free subnets (n .. n+99), well below.
ADD_OFFSET = 1000
LEASE_TTL = 86400   # flanneld's subnetTTL
VNI = 1
_PUBLIC_BASE = int(ipaddress.IPv4Address("198.18.1.0"))


@dataclass(frozen=True)
class Remote:
    """One simulated node: what its lease says and what our kernel gets for it."""

    index: int
    subnet: ipaddress.IPv4Network
    public_ip: str
    vtep_mac: str

    @property
    def key(self) -> str:
        """The subnet key under ``<prefix>/subnets/`` (``100.64.5.0-24``)."""
        return f"{self.subnet.network_address}-{self.subnet.prefixlen}"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address)

    def value(self, vtep_mac: str | None = None) -> str:
        return encode_lease_value(self.public_ip, vtep_mac or self.vtep_mac, VNI)

    # The kernel notifications that say "this node is programmed" (see monitor.py).
    def added(self, vtep_mac: str | None = None) -> set[tuple]:
        mac = vtep_mac or self.vtep_mac
        return {("neigh", "new", self.gateway, mac), ("fdb", "new", mac, self.public_ip),
                ("route", "new", str(self.subnet))}

    def removed(self, vtep_mac: str | None = None) -> set[tuple]:
        return {("neigh", "del", self.gateway), ("fdb", "del", vtep_mac or self.vtep_mac),
                ("route", "del", str(self.subnet))}

    def mac_changed(self, new_mac: str) -> set[tuple]:
        # The route does not change; the neighbour and the FDB entry must carry the new MAC.
        return {("neigh", "new", self.gateway, new_mac), ("fdb", "new", new_mac, self.public_ip)}


def mac_for(index: int, variant: int = 0) -> str:
    """A locally administered unicast MAC unique per (index, variant)."""
    return "0a:%02x:%02x:%02x:%02x:%02x" % (0x58 + variant, (index >> 24) & 255, (index >> 16) & 255,
                                             (index >> 8) & 255, index & 255)


@dataclass(frozen=True)
class Cluster:
    """The layout of an N-node cluster: config and the N-1 remote nodes."""

    nodes: int
    subnet_len: int
    remotes: tuple[Remote, ...]

    @property
    def config(self) -> str:
        return json.dumps({"Network": str(NETWORK), "SubnetLen": self.subnet_len,
                           "Backend": {"Type": "vxlan", "VNI": VNI}}, separators=(",", ":"))

    def remote(self, index: int) -> Remote:
        """Node ``index``: one of the N-1, or a new one (churn adds) beyond them."""
        size = 1 << (32 - self.subnet_len)
        subnet = ipaddress.IPv4Network((int(NETWORK.network_address) + index * size, self.subnet_len))
        return Remote(index, subnet, str(ipaddress.IPv4Address(_PUBLIC_BASE + index)), mac_for(index))

    def describe(self) -> str:
        return (f"Network {NETWORK}, SubnetLen {self.subnet_len} "
                f"({(1 << (self.subnet_len - NETWORK.prefixlen)) - 2:,} subnets), VNI {VNI}")


def layout(n: int) -> Cluster:
    """The cluster of ``n`` nodes (the agent's node plus n-1 remotes)."""
    if n < 2:
        raise ValueError("a cluster needs at least 2 nodes")
    subnet_len = 24 if n <= MAX_NODES_24 else 26
    base = Cluster(n, subnet_len, ())
    return Cluster(n, subnet_len, tuple(base.remote(i) for i in range(1, n)))


# --------------------------------------------------------------------------------------------
# etcd: leases written as flanneld writes them
# --------------------------------------------------------------------------------------------

def write_leases(store, cluster: Cluster, remotes: Sequence[Remote] | None = None,
                 workers: int = 8) -> dict[str, int]:
    """Grant a lease and put the value for every remote (flanneld's create, without
    its version compare: the keys are new).  Returns key -> etcd lease id."""
    remotes = cluster.remotes if remotes is None else remotes
    base = store.subnets_prefix

    def one(r: Remote) -> tuple[str, int]:
        lease = store.grant(LEASE_TTL)
        store.put(base + r.key, r.value(), lease)
        return r.key, lease

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, remotes))


# --------------------------------------------------------------------------------------------
# Namespaces
# --------------------------------------------------------------------------------------------

@contextmanager
def node_namespace(tag: str = "node", ip: str = NODE_IP) -> Iterator[str]:
    """A node: lo up, ``eth0`` (one end of a veth pair whose peer stays inside) = ip/24, up.

    Nothing leaves it: the veth's other end is in the same namespace, and the
    only route is the connected 198.18.0.0/24."""
    name = unique_name(tag, BENCH_PREFIX)
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        run(name, "ip", "link", "set", "lo", "up")
        run(name, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        run(name, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        run(name, "ip", "link", "set", "eth0p", "up")
        run(name, "ip", "link", "set", "eth0", "up")
        yield name
    finally:
        delete_netns(name)


@contextmanager
def peer_namespace(tag: str = "peer", local: str = PEER_IP, mtu: int = 1450) -> Iterator[str]:
    """A node with ``flannel.1`` made up front, as flanneld makes it before its
    first event: the scratch namespace of the baselines and of the flanneld
    re-enactment."""
    with node_namespace(tag, local) as name:
        run(name, "ip", "link", "add", "flannel.1", "type", "vxlan", "id", str(VNI), "local", local,
            "dev", "eth0", "dstport", "8472", "nolearning")
        run(name, "ip", "link", "set", "flannel.1", "mtu", str(mtu), "up")
        run(name, "ip", "addr", "add", "100.64.0.0/32", "dev", "flannel.1")
        yield name

