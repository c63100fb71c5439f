"""The incremental property against the real kernel, in a fresh namespace per example.

The agent's own cycle, in process, with the batched backend and its real
netlink monitor (``watch_kernel``) feeding the kernel-event queue, as in
``run``.  A dual-stack cluster, in either route layout.  Random lease events
(peers with and without IPv6, our own lease moving, a relisting or a resync
in the middle) and damage made with iproute2 behind the agent's back (our
nexthops deleted, foreign nexthops at our ids among it); after each step
one incremental cycle (no dump unless the agent asks for one).  When the dust settles: the desired state equals the
full recomputation, the believed view equals the kernel, and a full dump
and plan find nothing to do.  Hypothesis runs fewer examples than on the
model kernel (each is a namespace); ``PROPERTY_EXAMPLES`` deepens it.
"""
from __future__ import annotations

import ipaddress
import json
import os
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams, desired_state, nexthop_id
from reconciler.etcd.store import WatchEvent
from reconciler.core.leases import RawKV, subnet_key, validate_leases
from reconciler.core.model import attr_diff
from reconciler.kernel.netlink.batched import BatchedBackend
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.plan import make_plan
from reconciler.core.reconcile import dump_live, owned_devices
from tests.agent_harness import offline_agent, queue_listing
from tests.conftest_netns import require_root
from tests.netns import run, underlay
from tests.strategies import PREFIX, lease_value

pytestmark = [pytest.mark.root]

EXAMPLES = max(5, int(os.environ.get("PROPERTY_EXAMPLES", "200")) // 20)
CONFIG = parse_network_config('{"Network":"100.64.0.0/16","SubnetLen":24,"EnableIPv6":true,'
                              '"IPv6Network":"fd00:64::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}')
ME, ME6 = "198.18.0.1", "fd00:198:18::1"
MACS = ["0a:58:64:40:00:0a", "0a:58:64:40:00:0b", "0a:58:64:40:00:0c"]


def _kv(sid: int, mac: str, v6: bool, own: bool = False) -> tuple[str, str]:
    """100.64.sid.0/24, and fd00:64:0:sid::/64 when ``v6``; ``own``: this node's."""
    sn6 = ipaddress.ip_network(f"fd00:64:0:{sid:x}::/64") if v6 else None
    ip, ip6 = (ME, ME6) if own else (f"198.18.1.{sid}", f"fd00:198:18:1::{sid:x}")
    value = lease_value(ip, mac, 1, public_ipv6=ip6 if v6 else None, mac6=("0a:58:64:60:00:" + mac[-2:]) if v6 else None)
    return f"{PREFIX}/subnets/{subnet_key(ipaddress.ip_network(f'100.64.{sid}.0/24'), sn6)}", value


def _nhid(sid: int, v6: bool) -> int:
    if v6:
        return nexthop_id(CONFIG.ipv6_network, ipaddress.ip_network(f"fd00:64:0:{sid:x}::/64"))
    return nexthop_id(CONFIG.network, ipaddress.ip_network(f"100.64.{sid}.0/24"))


steps = st.one_of(
    st.tuples(st.just("put"), st.integers(2, 5), st.sampled_from(MACS), st.booleans()),
    st.tuples(st.just("delete"), st.integers(2, 5)),
    st.tuples(st.just("own"), st.sampled_from([1, 9]), st.booleans()),
    st.tuples(st.sampled_from(["relist", "resync"])),
    st.tuples(st.just("damage"), st.sampled_from(["route-del", "neigh-del", "neigh-mac", "fdb-del", "mtu",
                                                   "down", "stale-route", "nh-del", "nh-foreign"]),
              st.integers(2, 5), st.booleans()),
)


def _damage(ns: str, what: str, sid: int, v6: bool) -> None:
    gw, subnet = f"100.64.{sid}.0", f"100.64.{sid}.0/24"
    argv = {
        "route-del": ["ip", "route", "del", subnet],
        "neigh-del": ["ip", "neigh", "del", gw, "dev", "flannel.1"],
        "neigh-mac": ["ip", "neigh", "replace", gw, "lladdr", "02:de:ad:00:00:01", "dev", "flannel.1",
                      "nud", "permanent"],
        "fdb-del": ["bridge", "fdb", "del", MACS[sid % 3], "dev", "flannel.1", "self"],
        "mtu": ["ip", "link", "set", "flannel.1", "mtu", "1400"],
        "down": ["ip", "link", "set", "flannel.1", "down"],
        "stale-route": ["ip", "route", "replace", f"100.64.{100 + sid}.0/24", "via", f"100.64.{100 + sid}.0",
                        "dev", "flannel.1", "onlink", "proto", "73"],
        "nh-del": ["ip", "nexthop", "del", "id", str(_nhid(sid, v6))],
        # Someone else's nexthop at one of our ids, over ours if it is there.
        "nh-foreign": ["ip", "nexthop", "replace", "id", str(_nhid(sid, v6)), "via",
                       "fd00:198:18::fe" if v6 else "198.18.0.254", "dev", "eth0", "proto", "4"],
    }[what]
    run(ns, *argv, check=False)   # an entry that is not there is no failure of the test


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["onlink", "nexthop"]), st.lists(steps, min_size=1, max_size=12))
def test_incremental_equals_full_recomputation_on_the_real_kernel(layout, seq):
    require_root()
    with underlay(1, ipv6=True) as net, tempfile.TemporaryDirectory() as tmp, \
            BatchedBackend(net.nodes[0].ns) as backend:
        ns = net.nodes[0].ns
        node = NodeParams(public_ip=ME, underlay_mtu=1500, underlay="eth0", public_ipv6=ME6, route_layout=layout)
        agent = offline_agent(backend, CONFIG, node, os.path.join(tmp, "subnet.env"))
        stop, ready = threading.Event(), threading.Event()
        networks = [str(CONFIG.network), str(CONFIG.ipv6_network)]
        watcher = threading.Thread(target=backend.watch_kernel, daemon=True, args=(
            set(owned_devices(CONFIG)), networks, agent.queue_kernel_events, stop, ready))
        watcher.start()
        try:
            assert ready.wait(10), "the netlink monitor did not subscribe"
            table: dict[str, RawKV] = {}
            rev = 0
            foreign: set[int] = set()       # nexthop ids someone else wrote

            def lease(op, key, value=""):
                nonlocal rev
                rev += 1
                kv = RawKV(key, value, 7001, rev)
                if op == "put":
                    table[key] = kv
                else:
                    table.pop(key, None)
                agent.queue_lease_event(WatchEvent(op, kv, rev))

            key, value = _kv(1, "0a:58:64:40:00:01", True, own=True)
            table[key] = RawKV(key, value, 7001, 0)
            queue_listing(agent, list(table.values()))
            agent.cycle({"relist"})
            for step in seq:
                trigger = "lease"
                if step[0] == "put":
                    lease("put", *_kv(step[1], step[2], step[3]))
                elif step[0] == "delete":
                    for key in [k for k in table if k.split("/")[-1].startswith(f"100.64.{step[1]}.0-")]:
                        lease("delete", key)
                elif step[0] == "own":
                    for key in [k for k, kv in table.items() if json.loads(kv.value)["PublicIP"] == ME]:
                        lease("delete", key)
                    if step[2]:         # a cycle without our lease: the IPv6 overlay flips off and on
                        assert agent.cycle({"lease"}) is None
                    lease("put", *_kv(step[1], "0a:58:64:40:00:01", True, own=True))
                elif step[0] == "relist":
                    queue_listing(agent, list(table.values()), rev)
                    trigger = "relist"
                elif step[0] == "resync":
                    trigger = "resync"
                else:
                    _damage(ns, step[1], step[2], step[3])
                    if step[1] == "nh-foreign":
                        foreign.add(_nhid(step[2], step[3]))
                    elif step[1] == "nh-del":
                        foreign.discard(_nhid(step[2], step[3]))
                agent.cycle({trigger})
            # Settle: cycles until the monitor has been quiet and nothing is dirty.
            quiet_since = time.monotonic()
            deadline = quiet_since + 20
            while time.monotonic() < deadline:
                if any(agent.pending().values()):
                    quiet_since = time.monotonic()
                    agent.cycle({"kernel"})
                elif time.monotonic() - quiet_since > 0.5:
                    break
                time.sleep(0.05)
            assert watcher.is_alive(), "the netlink monitor died"

            leases, _ = validate_leases(CONFIG, table.values(), PREFIX)
            assert agent.desired.state == desired_state(CONFIG, leases, node)
            dump = dump_live(backend, CONFIG)
            # Nexthops someone else wrote are still theirs (the ones on eth0 nothing else removes).
            assert all(dump.get("nexthop", i).dev == "eth0" for i in foreign)
            split = FlannelOwnership(CONFIG).split(dump)
            owned = split.live
            believed = agent.tracker.live
            assert {(o.KIND, o.key) for o in believed} == {(o.KIND, o.key) for o in owned}
            for o in believed:
                assert not attr_diff(o, owned.get(o.KIND, o.key)), (o, owned.get(o.KIND, o.key))
            full = make_plan(agent.desired.state, owned, split.foreign_routes, split.foreign_nexthops)
            assert full.changes == ()
            assert set(full.conflicts) == set(agent.tracker.conflicts.values())
        finally:
            stop.set()
            watcher.join(timeout=5)
