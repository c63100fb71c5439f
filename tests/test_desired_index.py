"""``DesiredIndex`` on its own: the desired state held per lease, and the dirty keys it returns.

Each case compares against ``desired_state`` of the same leases (the full
recomputation) and checks the exact set of object keys reported dirty: a
key reported is one whose desired value changed, a key not reported did not.
"""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams, desired_state
from reconciler.core.leases import RawKV, subnet_key
from reconciler.core.model import KernelState
from reconciler.incremental.desired_index import DesiredIndex
from reconciler.incremental.lease_index import LeaseIndex
from tests.strategies import PREFIX, lease_value

DUAL = parse_network_config('{"Network":"100.64.0.0/16","SubnetLen":24,"EnableIPv6":true,'
                            '"IPv6Network":"fd00:64::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}')
ME, ME6 = "198.18.0.1", "fd00:18::1"


def kv(sid: int, host: int, mac: str = "", v6: bool = True, rev: int = 1) -> RawKV:
    sn6 = ipaddress.ip_network(f"fd00:64:0:{sid:x}::/64") if v6 else None
    key = f"{PREFIX}/subnets/{subnet_key(ipaddress.ip_network(f'100.64.{sid}.0/24'), sn6)}"
    mac = mac or f"02:00:00:00:00:{host:02x}"
    value = lease_value(f"198.18.0.{host}", mac, 1, public_ipv6=f"fd00:18::{host:x}" if v6 else None,
                        mac6=f"02:00:00:00:60:{host:02x}" if v6 else None)
    return RawKV(key, value, 7001, rev)


class World:
    """A lease index and a desired index, moved together as the agent's cycle moves them."""

    def __init__(self, layout: str = "onlink") -> None:
        self.node = NodeParams(public_ip=ME, underlay_mtu=1500, underlay="eth0", public_ipv6=ME6,
                               route_layout=layout)
        self.index = LeaseIndex(DUAL, PREFIX)
        self.desired = DesiredIndex(DUAL, self.node)

    def put(self, *kvs: RawKV) -> set:
        changed: set[str] = set()
        for item in kvs:
            changed |= self.index.put(item)
        return self.desired.update(self.index, changed)

    def delete(self, key: str) -> set:
        return self.desired.update(self.index, self.index.delete(key))

    def full(self) -> KernelState:
        return desired_state(DUAL, self.index.leases(), self.node)


def keys(state: KernelState, pred=lambda o: True) -> set:
    return {(o.KIND, o.key) for o in state if pred(o)}


def test_before_our_lease_peers_are_held_v4_only_and_our_lease_brings_the_rest():
    w = World()
    early = w.put(kv(2, 2))
    assert w.desired.own is None
    # The agent acts on nothing without our lease; the peer's entries wait, IPv4 only (the IPv6
    # overlay is ours to decide), so our lease's arrival reports only what it adds.
    assert early == keys(w.desired.state) and not any(o.KIND == "link" for o in w.desired.state)
    assert all(":" not in str(o.key) for o in w.desired.state if o.KIND in ("route", "neigh"))
    dirty = w.put(kv(1, 1))
    assert w.desired.own is not None and w.desired.own_key == kv(1, 1).key
    assert w.desired.state == w.full()
    assert dirty == keys(w.full()) - early


def test_a_peer_event_dirties_that_peers_keys_only():
    w = World()
    w.put(kv(1, 1), kv(2, 2), kv(3, 3))
    before = KernelState(w.desired.state)
    dirty = w.put(kv(3, 3, mac="02:00:00:00:07:77", rev=2))
    assert w.desired.state == w.full()
    # The neighbour changes value, the FDB entry changes key (the MAC is its key); the route stays.
    assert dirty == {("neigh", ("flannel.1", "100.64.3.0")), ("fdb", ("flannel.1", "02:00:00:00:00:03")),
                     ("fdb", ("flannel.1", "02:00:00:00:07:77"))}
    assert {k for k in keys(before) ^ keys(w.desired.state)} <= dirty


def test_an_unchanged_reput_dirties_nothing():
    w = World()
    w.put(kv(1, 1), kv(2, 2))
    assert w.put(kv(2, 2, rev=5)) == set()


def test_a_peer_deleted_dirties_exactly_its_objects():
    w = World()
    w.put(kv(1, 1), kv(2, 2), kv(3, 3))
    before = keys(w.desired.state)
    dirty = w.delete(kv(2, 2).key)
    assert w.desired.state == w.full()
    assert dirty == before - keys(w.desired.state)
    # Its route, neighbour and FDB entry in both families; nothing of ours or of the other peer.
    assert len(dirty) == 6 and {k for k, _ in dirty} == {"route", "neigh", "fdb"}


def test_the_ipv6_decision_follows_our_lease_and_recomputes_every_peer():
    w = World()
    w.put(kv(1, 1), kv(2, 2), kv(3, 3))
    assert w.desired.state == w.full()

    def v6_peer_keys() -> set:
        return keys(w.desired.state, lambda o: o.KIND in ("route", "neigh") and ":" in str(o.key)
                    and o.dev != "cni0")

    v6 = v6_peer_keys()
    assert len(v6) == 4                 # a route and a neighbour per peer
    gone = w.delete(kv(1, 1).key)       # no lease of ours: no IPv6 overlay, every peer's v6 entries go
    assert v6 <= gone and v6_peer_keys() == set()
    back = w.put(kv(1, 1))
    assert w.desired.state == w.full()
    assert v6 <= back and v6_peer_keys() == v6


def test_our_lease_moving_keeps_our_devices_and_reports_the_address_change():
    w = World()
    w.put(kv(1, 1), kv(2, 2))
    links = {o for o in w.desired.state if o.KIND == "link"}
    gone = w.delete(kv(1, 1).key)
    assert ("address", ("flannel.1", "100.64.1.0/32")) in gone
    came = w.put(kv(9, 1))
    assert w.desired.own_key == kv(9, 1).key
    assert w.desired.state == w.full()
    assert {o for o in w.desired.state if o.KIND == "link"} == links
    assert ("address", ("flannel.1", "100.64.9.0/32")) in came
    assert ("address", ("flannel.1", "100.64.1.0/32")) not in keys(w.desired.state)


@pytest.mark.parametrize("layout", ["onlink", "nexthop"])
def test_the_nexthop_layout_holds_a_nexthop_per_peer_route(layout):
    w = World(layout)
    w.put(kv(1, 1), kv(2, 2))
    assert w.desired.state == w.full()
    nexthops = w.desired.state.of("nexthop")
    assert len(nexthops) == (2 if layout == "nexthop" else 0)       # one per family
    routes = [o for o in w.desired.state.of("route").values() if o.dev is None or o.nhid]
    assert all(r.nhid in nexthops for r in routes) if layout == "nexthop" else not nexthops


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "delete"]), st.sampled_from([1, 2, 3, 4, 9]),
                          st.integers(2, 4), st.booleans()), max_size=25),
       st.sampled_from(["onlink", "nexthop"]))
def test_any_event_sequence_gives_the_full_recomputation_and_reports_every_change(events, layout):
    w = World(layout)
    rev = 0
    for op, sid, host, v6 in events:
        rev += 1
        before = KernelState(w.desired.state)
        if op == "put":
            dirty = w.put(kv(sid, 1 if sid in (1, 9) else host, v6=v6 or sid in (1, 9), rev=rev))
        else:
            key = next((item.key for item in w.index.kvs() if f"/100.64.{sid}.0-" in item.key), None)
            if key is None:
                continue
            dirty = w.delete(key)
        after = w.desired.state
        if w.desired.own is not None:
            assert after == w.full()
        changed = {(o.KIND, o.key) for o in before if after.get(o.KIND, o.key) != o} | \
                  {(o.KIND, o.key) for o in after if before.get(o.KIND, o.key) != o}
        assert changed <= dirty
