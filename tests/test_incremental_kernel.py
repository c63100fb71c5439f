"""The incremental agent against the real kernel: repairs from events, O(1) writes per lease event.

The real program (``python -m reconciler run --netns NODE``) with a resync
interval of an hour, so that everything seen here is the work of lease
events and netlink notifications, never of the periodic backstop.  iproute2
is the oracle; the agent's own /metrics count its writes and dumps.
"""
from __future__ import annotations


import pytest

from tests.test_agent_e2e import (SUBNETS, endpoint_args, has_none_of, has_peer, lab, lease_value,  # noqa: F401
                                  peer_state, put_peer, store, wait_for)
from tests.netns import bridge_json, ip_json, run

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

MACS = ["0a:58:64:40:c8:00", "0a:58:64:40:c9:00", "0a:58:64:40:ca:00"]
HOUR = 3600.0


def _ops(agent, op: str | None = None) -> float:
    """Netlink writes so far (from /metrics), all kinds, of one op or all."""
    return sum(v for labels, v in agent.samples("flannel_reconciler_operations_total") or ()
               if labels["kind"] != "rule" and labels["result"] == "ok" and op in (None, labels["op"]))


def _metric(agent, name: str) -> float:
    return agent.metric(name) or 0.0


def _resyncs(agent) -> float:
    return sum(v for labels, v in agent.samples("flannel_reconciler_cycles_total") or ()
               if labels["trigger"] == "resync")


@pytest.fixture
def node_with_peers(store, lab):
    node = lab.nodes(1)[0]
    peers = [put_peer(store, 200 + i, f"198.18.1.{10 + i}", MACS[i]) for i in range(3)]
    agent = lab.agent(node, endpoint_args(store.endpoint_in_use), resync=HOUR)
    wait_for(lambda: agent.get("/readyz")[0] == 200, "agent ready", lab)
    for i, (subnet, _) in enumerate(peers):
        wait_for(lambda s=subnet, i=i: has_peer(node.ns, s, MACS[i], f"198.18.1.{10 + i}"), f"peer {subnet}", lab)
    # The cold start's own notifications come back as events: let them settle.
    wait_for(lambda: _metric(agent, "flannel_reconciler_dumps_total") >= 1, "first dump", lab)
    return node, agent, peers


def test_drift_behind_the_agents_back_is_repaired_from_events(node_with_peers, lab):
    node, agent, peers = node_with_peers
    ns = node.ns
    resyncs = _resyncs(agent)
    subnet0, subnet1, subnet2 = (p[0] for p in peers)
    gw1 = subnet1.split("/")[0]
    damages = [
        ("route deleted", ["ip", "route", "del", subnet0], lambda: has_peer(ns, subnet0, MACS[0], "198.18.1.10")),
        ("neighbour changed", ["ip", "neigh", "replace", gw1, "lladdr", "02:de:ad:00:00:01", "dev", "flannel.1",
                               "nud", "permanent"], lambda: has_peer(ns, subnet1, MACS[1], "198.18.1.11")),
        ("neighbour deleted", ["ip", "neigh", "del", gw1, "dev", "flannel.1"],
         lambda: has_peer(ns, subnet1, MACS[1], "198.18.1.11")),
        ("fdb deleted", ["bridge", "fdb", "del", MACS[2], "dev", "flannel.1", "self"],
         lambda: has_peer(ns, subnet2, MACS[2], "198.18.1.12")),
        ("fdb re-pointed", ["bridge", "fdb", "replace", MACS[2], "dev", "flannel.1", "dst", "198.18.1.99", "self",
                            "permanent"], lambda: has_peer(ns, subnet2, MACS[2], "198.18.1.12")),
        ("mtu changed", ["ip", "link", "set", "flannel.1", "mtu", "1400"],
         lambda: ip_json(ns, "link show flannel.1")[0]["mtu"] == 1450),
        ("device down", ["ip", "link", "set", "flannel.1", "down"],
         lambda: "UP" in ip_json(ns, "link show flannel.1")[0]["flags"]
         and all(has_peer(ns, p[0], MACS[i], f"198.18.1.{10 + i}") for i, p in enumerate(peers))),
        ("mac changed", ["ip", "link", "set", "flannel.1", "address", "02:de:ad:be:ef:00"],
         lambda: ip_json(ns, "link show flannel.1")[0]["address"] != "02:de:ad:be:ef:00"
         and all(has_peer(ns, p[0], MACS[i], f"198.18.1.{10 + i}") for i, p in enumerate(peers))),
    ]
    for what, argv, repaired in damages:
        run(ns, *argv)
        wait_for(repaired, f"{what}: repaired from events", lab, timeout=10)
    # Nothing of this waited for the hourly resync.
    assert _resyncs(agent) == resyncs
    assert _metric(agent, "flannel_reconciler_drift_repaired_total") >= len(damages)


def test_lease_events_cost_three_writes_and_no_dump(node_with_peers, store, lab):
    node, agent, peers = node_with_peers
    dumps = _metric(agent, "flannel_reconciler_dumps_total")

    def step(action, done, what):
        before = _ops(agent)
        action()
        wait_for(done, what, lab)
        # The writes of this one event (their ACKs are counted before the kernel shows them).
        wait_for(lambda: _ops(agent) - before >= 3, f"{what}: writes counted", lab)
        return _ops(agent) - before

    new_mac = "0a:58:64:40:d0:00"
    assert step(lambda: put_peer(store, 210, "198.18.1.30", new_mac),
                lambda: has_peer(node.ns, "100.64.210.0/24", new_mac, "198.18.1.30"), "peer added") == 3
    subnet0, key0 = peers[0]
    moved = "0a:58:64:40:d1:00"
    assert step(lambda: store.put(key0, lease_value("198.18.1.10", moved), store.grant(600)),
                lambda: has_peer(node.ns, subnet0, moved, "198.18.1.10") and MACS[0] not in
                peer_state(node.ns)["fdb"], "VtepMAC changed") == 3
    subnet1, key1 = peers[1]
    assert step(lambda: store.delete(key1), lambda: has_none_of(node.ns, subnet1, MACS[1]), "peer deleted") == 3
    # A rolling restart: every lease re-put with its value.  No write, no dump.
    before = _ops(agent)
    revision = 0
    for kv in store.snapshot().kvs:
        if kv.key.startswith(SUBNETS):
            revision = store.put(kv.key, kv.value, kv.lease)
    wait_for(lambda: _metric(agent, "flannel_reconciler_lease_revision") >= revision,
             "the agent has folded in every re-put", lab)
    assert _ops(agent) == before
    assert _metric(agent, "flannel_reconciler_dumps_total") == dumps
    # And the kernel is exactly what a full resync would want: nothing stale, nothing missing.
    st = peer_state(node.ns)
    assert set(st["routes"]) == {"100.64.200.0/24", "100.64.202.0/24", "100.64.210.0/24"}
    assert len(bridge_json(node.ns, "fdb show dev flannel.1")) >= 3
