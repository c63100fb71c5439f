"""Traffic rules end to end: agents in node namespaces whose FORWARD policy is DROP, CNI pods, pings.

Per interface (iptables on nf_tables, iptables on legacy where the host has
it, nftables), two nodes on a bridged veth underlay run the real agent with
``--ip-masq``; the pods are made by the CNI bridge plugin from each node's
subnet.env exactly as the flannel CNI plugin would configure it (so
``ipMasq`` is false: masquerading is left to our rules).  The "outside
host" is the underlay's hub (198.18.0.254), which has no route to the pod
network: a pod's ping comes back only if it was masqueraded.

Each node also carries foreign rules in the same tables (and, in nftables
mode, a foreign table); they must survive everything.

nftables mode runs with the FORWARD policy left at ACCEPT: an nftables
accept cannot override a DROP policy in another base chain (flanneld's
nftables mode has the same limit; docs/traffic-rules.md).
"""
from __future__ import annotations

import json
import shutil

import pytest

from reconciler.etcd.store import EtcdStore
from tests.netns import ip_json, run, underlay
from tests.test_agent_e2e import Lab, endpoint_args, lab, ping, wait_for  # noqa: F401 (fixture)

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

MODES = [
    "iptables-nft",
    pytest.param("iptables-legacy", marks=pytest.mark.skipif(
        shutil.which("iptables-legacy") is None, reason="this host has no iptables-legacy")),
    "nftables",
]
OUTSIDE = "198.18.0.254"   # the hub: on the underlay, no route to 100.64.0.0/16
FOREIGN_FWD = "-A FORWARD -s 198.19.255.0/24 -j DROP"
FOREIGN_NAT = "-A POSTROUTING -s 198.19.255.0/24 -j RETURN"


def config_for(mode: str) -> str:
    nft = ',"EnableNFTables":true' if mode == "nftables" else ""
    return '{"Network":"100.64.0.0/16","SubnetLen":24%s,"Backend":{"Type":"vxlan","VNI":1}}' % nft


def xt_of(mode: str) -> str:
    return "legacy" if mode == "iptables-legacy" else "nft"


def prepare_node(ns: str, mode: str) -> None:
    """Foreign rules in the tables we write to; FORWARD DROP in the iptables modes."""
    xt = xt_of(mode)
    # In legacy mode this is also what makes the agent pick legacy: it holds more rules.
    run(ns, f"iptables-{xt}-restore", "--noflush",
        input=f"*filter\n{FOREIGN_FWD}\nCOMMIT\n*nat\n{FOREIGN_NAT}\nCOMMIT\n")
    if mode == "nftables":
        run(ns, "nft", "-f", "-", input="table inet fw {\n chain fw_in { type filter hook input priority 0; "
            "ip saddr 198.19.255.0/24 drop; }\n}\n")
    else:
        run(ns, f"iptables-{xt}", "-P", "FORWARD", "DROP")


def saved(ns: str, xt: str) -> list[str]:
    out = run(ns, f"iptables-{xt}-save", "-t", "filter").stdout + run(ns, f"iptables-{xt}-save", "-t", "nat").stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


def foreign_survived(ns: str, mode: str) -> None:
    lines = saved(ns, xt_of(mode))
    assert FOREIGN_FWD in lines and FOREIGN_NAT in lines
    if mode == "nftables":
        assert "ip saddr 198.19.255.0/24 drop" in run(ns, "nft", "list", "table", "inet", "fw").stdout
    else:
        assert ":FORWARD DROP" in run(ns, f"iptables-{xt_of(mode)}-save", "-t", "filter").stdout


def our_rules_present(ns: str, mode: str) -> bool:
    if mode == "nftables":
        proc = run(ns, "nft", "list", "table", "ip", "flannel-ipv4", check=False)
        return proc.returncode == 0 and "masquerade" in proc.stdout and "ip saddr 100.64.0.0/16 accept" in proc.stdout
    lines = saved(ns, xt_of(mode))
    return ('-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD' in lines
            and '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' in lines)


def icmp_counter(ns: str, src: str) -> int:
    """Echo requests from ``src`` seen arriving in ``ns`` (a probe table of the test's own there)."""
    data = json.loads(run(ns, "nft", "-j", "list", "table", "ip", "probe").stdout)
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule and any(e.get("match", {}).get("right") == src for e in rule["expr"]):
            return next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    raise AssertionError(f"no probe rule for {src}")


def add_probe(ns: str, *sources: str) -> None:
    rules = "".join(f" add rule ip probe input ip saddr {s} icmp type echo-request counter\n" for s in sources)
    run(ns, "nft", "-f", "-", input="add table ip probe\n add chain ip probe input "
        "{ type filter hook input priority 0; }\n" + rules)


@pytest.fixture
def etcd_for(etcd_server):
    def make(mode: str):
        with EtcdStore([etcd_server.endpoint], timeout=3.0) as s:
            s.put_config(config_for(mode))
        return endpoint_args(etcd_server.endpoint)
    return make


@pytest.mark.parametrize("mode", MODES)
def test_pods_talk_across_forward_drop_and_reach_outside_masqueraded(etcd_for, lab: Lab, mode):
    etcd_args = etcd_for(mode)
    net = lab.stack.enter_context(underlay(2))
    n1, n2 = net.nodes
    hub = net.hub
    for n in (n1, n2):
        prepare_node(n.ns, mode)
    # A netlink resync far away: a rule deleted by hand must come back through the rule check
    # (--iptables-resync 1), not through a full cycle.
    a1 = lab.agent(n1, etcd_args, start=False, resync=300)
    a2 = lab.agent(n2, etcd_args, start=False, resync=300)
    for a in (a1, a2):
        a.argv += ["--ip-masq", "--iptables-resync", "1"]
        a.start()
    for a in (a1, a2):
        a.wait_ready()
    assert "FLANNEL_IPMASQ=true" in a1.subnet_file.read_text()
    p1, p2 = lab.pod(n1, a1), lab.pod(n2, a2)
    for n in (n1, n2):
        wait_for(lambda: our_rules_present(n.ns, mode), f"our rules in {n.ns}", lab)

    # Pod to pod across nodes, through FORWARD DROP, keeping the pod's source address.
    add_probe(p2.ns, p1.ip, n1.ip)
    wait_for(lambda: ping(p1, p2.ip), "pod-to-pod ping", lab)
    assert icmp_counter(p2.ns, p1.ip) > 0 and icmp_counter(p2.ns, n1.ip) == 0

    # Outside: the hub cannot route back to pods, so only a masqueraded ping is answered.
    assert not any(r.get("dst") in ("default", "100.64.0.0/16") for r in ip_json(hub, "route show"))
    add_probe(hub, p1.ip, n1.ip)
    wait_for(lambda: ping(p1, OUTSIDE), "pod-to-outside ping", lab)
    assert icmp_counter(hub, n1.ip) > 0 and icmp_counter(hub, p1.ip) == 0

    if mode != "nftables":
        # Deleted by hand: the FORWARD DROP policy bites, then the resync puts the rule back.
        xt = xt_of(mode)
        run(n2.ns, f"iptables-{xt}", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward",
            "-j", "FLANNEL-FWD")
        wait_for(lambda: our_rules_present(n2.ns, mode), "the agent to restore the FORWARD jump", lab)
        wait_for(lambda: ping(p1, p2.ip), "pod-to-pod ping after the repair", lab)
        assert FOREIGN_FWD in saved(n2.ns, xt) and "-A FORWARD" not in "\n".join(
            line for line in saved(n2.ns, "legacy" if xt == "nft" else "nft") if "FLANNEL" in line)
    else:
        run(n2.ns, "nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg")
        wait_for(lambda: our_rules_present(n2.ns, mode), "the agent to restore the postrtg chain", lab)

    for n in (n1, n2):
        foreign_survived(n.ns, mode)
    assert "Traceback" not in a1.log() + a2.log()


def test_control_without_our_forward_rules_the_drop_policy_cuts_pods_off(etcd_for, lab: Lab):
    """The same bed with --iptables-forward-rules=false: the DROP policy is real, and it is our rules that help."""
    etcd_args = etcd_for("iptables-nft")
    net = lab.stack.enter_context(underlay(2))
    n1, n2 = net.nodes
    for n in net.nodes:
        prepare_node(n.ns, "iptables-nft")
    agents = [lab.agent(n, etcd_args, start=False) for n in net.nodes]
    for a in agents:
        a.argv += ["--iptables-forward-rules=false"]
        a.start()
    for a in agents:
        a.wait_ready()
    p1, p2 = lab.pod(n1, agents[0]), lab.pod(n2, agents[1])
    assert not any("FLANNEL" in line for n in net.nodes for line in saved(n.ns, "nft"))
    assert not ping(p1, p2.ip)
