"""Dual stack end to end: real etcd, agents in node namespaces, CNI pods with both families.

The cluster: 100.64.0.0/16 (/24s) and fd00:100:64::/48 (/64s), VNI 1; node
*i* is 198.18.0.*i* and fd00:198:18::*i* on one bridged veth underlay
(``underlay(..., ipv6=True)``).  Each agent is the real program, ``python -m
reconciler run --netns NODE --iface eth0``: it takes its IPv6 underlay address
from ``eth0``, as flanneld does.  Pods are made by the CNI bridge plugin with
host-local ranges for both families (what flannel's CNI plugin builds from a
dual-stack subnet.env), and ping each other with ``ping`` and ``ping -6``.

A fake peer written the way flanneld writes it (a key with both subnets, its
exact bytes) takes 100.64.200.0/24 and fd00:100:64:c8::/64, which the agents
never pick (they choose among the first 100 free subnets).
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest

from reconciler.tools.demo import AgentProcess, wait_all_ready
from reconciler.etcd.store import EtcdStore
from reconciler.tools.lab.cni import cni_add, cni_del, flannel_delegate_config
from reconciler.tools.lab.netns import enable_ipv6
from tests.conftest_etcd import require_etcd
from tests.conftest_netns import require_root
from tests.netns import bridge_json, ip_json, netns, run, underlay
from tests.test_agent_e2e import wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

PREFIX = "/coreos.com/network"
SUBNETS = PREFIX + "/subnets/"
CONFIG = ('{"Network":"100.64.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:100:64::/48",'
          '"Backend":{"Type":"vxlan","VNI":1}}')
DEV6 = "flannel-v6.1"


def flanneld_value(ip: str, ip6: str, mac: str, mac6: str) -> str:
    """flanneld's dual-stack lease bytes (LeaseAttrs field order), spelled out rather than computed."""
    return ('{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"},'
            '"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}' % (ip, ip6, mac, mac6))


def link_mac(ns: str, dev: str) -> str | None:
    return next((x["address"] for x in ip_json(ns, "link show") if x["ifname"] == dev), None)


def v6_peer_state(ns: str) -> dict:
    """What flannel-v6.1 carries: routes {dst: (gateway, onlink)}, neighbours {ip: mac}, FDB {mac: dst}."""
    if link_mac(ns, DEV6) is None:
        return {"routes": {}, "neighs": {}, "fdb": {}}
    return {
        "routes": {r["dst"]: (r.get("gateway"), "onlink" in r.get("flags", []))
                   for r in ip_json(ns, f"-6 route show dev {DEV6}") if r.get("protocol") != "kernel"},
        "neighs": {n["dst"]: n.get("lladdr") for n in ip_json(ns, f"-6 neigh show dev {DEV6}")
                   if "PERMANENT" in n.get("state", [])},
        "fdb": {f["mac"]: f["dst"] for f in bridge_json(ns, f"fdb show dev {DEV6}") if "dst" in f},
    }


def has_v6_peer(ns: str, subnet6: str, mac6: str, ip6: str) -> bool:
    st = v6_peer_state(ns)
    gw = subnet6.split("/")[0]
    return st["routes"].get(subnet6) == (gw, True) and st["neighs"].get(gw) == mac6 and st["fdb"].get(mac6) == ip6


def ping(pod_ns: str, ip: str) -> bool:
    flag = ["-6"] if ":" in ip else []
    return run(pod_ns, "ping", *flag, "-c", "2", "-i", "0.2", "-W", "2", ip, check=False).returncode == 0


class DualLab:
    def __init__(self, stack: ExitStack, tmp: Path) -> None:
        self.stack, self.tmp = stack, tmp
        self.agents: list[AgentProcess] = []
        self._n = 0

    def agent(self, node, endpoint: str) -> AgentProcess:
        agent = AgentProcess(node.ns, self.tmp / node.ns, ["--etcd-endpoints", endpoint], resync_interval=1.0)
        self.agents.append(agent)
        self.stack.callback(agent.stop)
        return agent.start()

    def pod(self, node, agent: AgentProcess) -> tuple[str, str, str]:
        """A pod on ``node`` with one address per family: (netns, IPv4, IPv6)."""
        self._n += 1
        conf = flannel_delegate_config(agent.subnet_file.read_text(), data_dir=str(self.tmp / f"cni-{node.ns}"))
        assert [len(r) for r in conf["ipam"]["ranges"]] == [1, 1], conf     # host-local: both families
        ns = self.stack.enter_context(netns(f"pod{self._n}"))
        enable_ipv6(ns)
        cid = f"pod-{self._n}"
        self.stack.callback(cni_del, node.ns, ns, cid, conf)
        result = cni_add(node.ns, ns, cid, conf)
        ips = [ip["address"].split("/")[0] for ip in result["ips"]]
        v4 = next(ip for ip in ips if ":" not in ip)
        v6 = next(ip for ip in ips if ":" in ip)
        return ns, v4, v6

    def logs(self) -> str:
        return "\n".join(f"--- {a.ns} (pid {a.pid}, {'alive' if a.alive else 'exited'}):\n{a.log_tail(25)}"
                         for a in self.agents)


@pytest.fixture
def store(etcd_server):
    with EtcdStore([etcd_server.endpoint], timeout=3.0) as s:
        s.put_config(CONFIG)
        yield s


@pytest.fixture
def lab(tmp_path):
    require_root()
    require_etcd()
    with ExitStack() as stack:
        lab = DualLab(stack, tmp_path)
        yield lab
        for agent in lab.agents:
            agent.terminate()


def test_dual_stack_cluster_leases_pods_and_pings_both_families(store, etcd_server, lab):
    nodes = lab.stack.enter_context(underlay(3, ipv6=True)).nodes
    agents = [lab.agent(node, etcd_server.endpoint) for node in nodes]
    wait_all_ready(agents)

    # 1. Each lease: flanneld's key with both subnets and its exact bytes, carrying the MACs
    #    the kernel really has on flannel.1 and flannel-v6.1.
    kvs = {kv.key[len(SUBNETS):]: kv for kv in store.snapshot().kvs if kv.key.startswith(SUBNETS)}
    assert len(kvs) == 3, kvs
    by_ip = {}
    for key, kv in kvs.items():
        by_ip[json.loads(kv.value)["PublicIP"]] = (key, kv)
    for node, agent in zip(nodes, agents):
        key, kv = by_ip[node.ip]
        v4, v6 = key.split("&")
        assert v4.startswith("100.64.") and v4.endswith(".0-24") and v6.startswith("fd00:100:64:") \
            and v6.endswith("::-64"), key
        assert kv.value == flanneld_value(node.ip, node.ip6, link_mac(node.ns, "flannel.1"),
                                          link_mac(node.ns, DEV6)), kv.value
        assert kv.lease != 0
        env = agent.subnet_file.read_text()
        sub6 = v6.replace("::-64", "::1/64")
        assert f"FLANNEL_IPV6_NETWORK=fd00:100:64::/48\nFLANNEL_IPV6_SUBNET={sub6}\n" in env, env
        # The v6 device: local = the underlay's IPv6 address, the kernel's MTU for VXLAN over IPv6.
        [dev] = ip_json(node.ns, f"-d link show {DEV6}")
        assert dev["linkinfo"]["info_data"]["local6"] == node.ip6 and dev["mtu"] == 1430

    # 2. Pods of both families reach each other across nodes, through both overlays.
    pods = [lab.pod(node, agent) for node, agent in zip(nodes, agents)]
    for a_ns, _, _ in pods:
        for b_ns, b4, b6 in pods:
            if a_ns != b_ns:
                wait_for(lambda: ping(a_ns, b4), f"{a_ns} reaches {b4}", timeout=20)
                wait_for(lambda: ping(a_ns, b6), f"{a_ns} reaches {b6} (ping -6)", timeout=20)

    # 3. A peer lease written the way flanneld writes it: exactly its v6 objects on every node;
    #    gone again when the key is deleted.
    value = flanneld_value("198.18.0.200", "fd00:198:18::c8", "0a:58:64:40:c8:00", "0a:58:64:60:c8:00")
    key = SUBNETS + "100.64.200.0-24&fd00:100:64:c8::-64"
    store.put(key, value, store.grant(86400))
    for node in nodes:
        wait_for(lambda: has_v6_peer(node.ns, "fd00:100:64:c8::/64", "0a:58:64:60:c8:00", "fd00:198:18::c8"),
                 f"{node.ns} programs the flanneld peer's IPv6 entries", timeout=20)
    assert store.delete(key)
    for node in nodes:
        wait_for(lambda: "fd00:100:64:c8::/64" not in v6_peer_state(node.ns)["routes"]
                 and "0a:58:64:60:c8:00" not in v6_peer_state(node.ns)["fdb"],
                 f"{node.ns} forgets the flanneld peer", timeout=20)

    # 4. Drift: node 1's v6 device deleted; the agent re-creates it with the MAC its lease
    #    advertises, and the v6 pods talk again.
    mac6 = link_mac(nodes[0].ns, DEV6)
    run(nodes[0].ns, "ip", "link", "del", DEV6)
    wait_for(lambda: link_mac(nodes[0].ns, DEV6) == mac6 and len(v6_peer_state(nodes[0].ns)["routes"]) == 2,
             "node 1's flannel-v6.1 back with its MAC and both peers", timeout=20)
    wait_for(lambda: ping(pods[0][0], pods[1][2]), "pod 1 reaches pod 2 over IPv6 again", timeout=20)

    # 5. A restart keeps the same lease: same key, same bytes.
    before = {kv.key: kv.value for kv in store.snapshot().kvs if kv.key.startswith(SUBNETS)}
    assert agents[1].stop() == 0
    restarted = lab.agent(nodes[1], etcd_server.endpoint)
    restarted.wait_ready()
    after = {kv.key: kv.value for kv in store.snapshot().kvs if kv.key.startswith(SUBNETS)}
    assert after == before
    for a in agents[:1] + agents[2:] + [restarted]:
        assert a.alive, lab.logs()
