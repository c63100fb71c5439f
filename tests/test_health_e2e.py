"""Health that reflects the data plane: a real agent in a node namespace, the data plane broken
by hand, and /readyz, the condition gauges and ``show`` saying so (README, fault table).

The real program (``python -m reconciler run --netns NODE``, resync every second: the
underlay and ``ip_forward`` send no notification the agent follows, so a change there is
seen at the next resync).  iproute2 breaks things and is the oracle of the repairs.
"""
from __future__ import annotations

import json
import re

import pytest

from reconciler.cli.main import main
from tests.netns import CommandFailed, ip_json, run
from tests.test_agent_e2e import (PREFIX, endpoint_args, has_peer, lab, put_peer, store,  # noqa: F401
                                  wait_for)

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

MACS = ["0a:58:64:40:c8:00", "0a:58:64:40:c9:00", "0a:58:64:40:ca:00"]


@pytest.fixture
def node(store, lab):
    node = lab.nodes(1)[0]
    peers = [put_peer(store, 200 + i, f"198.18.1.{10 + i}", MACS[i]) for i in range(3)]
    agent = lab.agent(node, endpoint_args(store.endpoint_in_use), resync=1.0)
    wait_for(lambda: agent.get("/readyz")[0] == 200, "agent ready", lab)
    for i, (subnet, _) in enumerate(peers):
        wait_for(lambda s=subnet, i=i: has_peer(node.ns, s, MACS[i], f"198.18.1.{10 + i}"), f"peer {subnet}", lab)
    return node, agent, peers


def vxlan_local(ns: str) -> str | None:
    """flannel.1's ``local`` (None while it does not exist: it is re-created)."""
    try:
        return ip_json(ns, "-d link show flannel.1")[0]["linkinfo"]["info_data"].get("local")
    except CommandFailed:
        return None


def readyz(agent) -> tuple[int | None, str]:
    return agent.get("/readyz")


def condition(agent, name: str) -> float | None:
    return agent.metric("flannel_reconciler_condition", condition=name)


def show(capsys, store, ns: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["show", "--etcd-endpoints", store.endpoint_in_use, "--etcd-prefix", PREFIX, "--netns", ns,
               "--iface", "eth0", "--output", "json"])
    out, _ = capsys.readouterr()
    return rc, json.loads(out)


def failing(doc: dict) -> dict[str, str]:
    return {c["condition"]: c["reason"] for c in doc["conditions"] if not c["ok"]}


def test_forwarding_off_is_not_ready_with_its_reason(node, store, lab, capsys):
    n, agent, _ = node
    assert condition(agent, "forwarding") == 1
    run(n.ns, "tee", "/proc/sys/net/ipv4/ip_forward", input="0\n")
    wait_for(lambda: readyz(agent)[0] == 503, "/readyz 503", lab)
    assert "forwarding: net.ipv4.ip_forward is 0" in readyz(agent)[1]
    assert condition(agent, "forwarding") == 0
    assert agent.metric("flannel_reconciler_ready") == 0
    rc, doc = show(capsys, store, n.ns)
    assert rc == 2 and list(failing(doc)) == ["forwarding"]
    run(n.ns, "tee", "/proc/sys/net/ipv4/ip_forward", input="1\n")
    wait_for(lambda: readyz(agent)[0] == 200, "/readyz 200 again", lab)
    assert condition(agent, "forwarding") == 1
    rc, doc = show(capsys, store, n.ns)
    assert rc == 0 and not failing(doc)


def test_a_flushed_main_table_gets_cni0s_route_back(node, store, lab, capsys):
    n, agent, peers = node
    run(n.ns, "ip", "route", "flush", "table", "main")
    # Not ours to repair: the underlay's own routes (put back as the operator would).
    run(n.ns, "ip", "route", "add", "198.18.0.0/24", "dev", "eth0", "src", n.ip)

    def cni0_route() -> bool:
        return any(r["dst"].startswith("100.64.") for r in ip_json(n.ns, "-4 route show dev cni0"))
    wait_for(cni0_route, "cni0's connected route back", lab)
    for i, (subnet, _) in enumerate(peers):
        wait_for(lambda s=subnet, i=i: has_peer(n.ns, s, MACS[i], f"198.18.1.{10 + i}"), f"peer {subnet} back", lab)
    wait_for(lambda: readyz(agent)[0] == 200 and condition(agent, "bridge-route") == 1, "ready", lab)
    rc, doc = show(capsys, store, n.ns)
    assert rc == 0 and not failing(doc), doc


def test_a_renamed_device_is_named_and_not_ready(node, store, lab, capsys):
    n, agent, _ = node
    run(n.ns, "ip", "link", "set", "flannel.1", "down")
    run(n.ns, "ip", "link", "set", "flannel.1", "name", "flx0")
    wait_for(lambda: readyz(agent)[0] == 503, "/readyz 503", lab)
    body = readyz(agent)[1]
    assert "vxlan-device: flannel.1 is missing and cannot be created: flx0 holds its VNI and port" in body, body
    assert condition(agent, "vxlan-device") == 0
    rc, doc = show(capsys, store, n.ns)
    assert rc == 2 and "flx0" in failing(doc)["vxlan-device"]
    # Renamed back by the operator: the agent is ready again, nothing else needed.
    run(n.ns, "ip", "link", "set", "flx0", "name", "flannel.1")
    wait_for(lambda: readyz(agent)[0] == 200, "/readyz 200 again", lab)


def test_a_lowered_underlay_mtu_is_followed(node, lab):
    n, agent, _ = node
    run(n.ns, "ip", "link", "set", "eth0", "mtu", "1400")
    wait_for(lambda: ip_json(n.ns, "link show flannel.1")[0]["mtu"] == 1350, "flannel.1 follows", lab)
    wait_for(lambda: "FLANNEL_MTU=1350\n" in agent.subnet_file.read_text(), "FLANNEL_MTU follows", lab)
    wait_for(lambda: ip_json(n.ns, "link show cni0")[0]["mtu"] == 1350, "cni0 follows", lab)
    wait_for(lambda: readyz(agent)[0] == 200 and condition(agent, "underlay-mtu") == 1, "ready", lab)


def test_a_moved_underlay_address_is_followed_and_re_advertised(node, store, lab):
    n, agent, _ = node
    [key] = [kv.key for kv in store.snapshot().kvs if f'"PublicIP":"{n.ip}"' in kv.value]
    # No address at all: nothing to follow, not ready, and why.
    run(n.ns, "ip", "addr", "del", f"{n.ip}/24", "dev", "eth0")
    wait_for(lambda: readyz(agent)[0] == 503, "/readyz 503", lab)
    body = readyz(agent)[1]
    assert f"underlay-address: the underlay eth0 now has no IPv4 address, but flannel.1's local and our lease " \
           f"say {n.ip}" in body, body
    assert condition(agent, "underlay-address") == 0
    # A new address: the device's local and our lease (same key, same subnet) follow it.
    run(n.ns, "ip", "addr", "add", "198.18.0.51/24", "dev", "eth0")
    wait_for(lambda: vxlan_local(n.ns) == "198.18.0.51", "flannel.1 local 198.18.0.51", lab)
    wait_for(lambda: '"PublicIP":"198.18.0.51"' in (store.get(key).value if store.get(key) else ""),
             "our lease re-advertised", lab)
    wait_for(lambda: readyz(agent)[0] == 200 and condition(agent, "underlay-address") == 1, "ready", lab)
    assert [kv.key for kv in store.snapshot().kvs if "198.18.0.51" in kv.value] == [key]


def test_deleting_the_device_is_one_log_line_not_one_per_peer(node, lab):
    n, agent, peers = node
    before = agent.log_path.read_text()
    run(n.ns, "ip", "link", "del", "flannel.1")
    for i, (subnet, _) in enumerate(peers):
        wait_for(lambda s=subnet, i=i: has_peer(n.ns, s, MACS[i], f"198.18.1.{10 + i}"), f"peer {subnet} back", lab)
    wait_for(lambda: readyz(agent)[0] == 200, "ready", lab)
    new = agent.log_path.read_text()[len(before):]
    enodev = [line for line in new.splitlines() if "ENODEV" in line]
    assert len(enodev) <= 1, enodev
    assert not re.search(r"failed: fdb .*ENODEV", new), new
