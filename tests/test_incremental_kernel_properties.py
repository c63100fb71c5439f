"""The incremental property against the real kernel, in a fresh namespace per example.

The agent's own cycle, in process, with the batched backend and its real
netlink monitor (``watch_kernel``) feeding the kernel-event queue, as in
``run``.  Random lease events and damage made with iproute2 behind the
agent's back; after each step one incremental cycle (no dump unless the
agent asks for one).  When the dust settles: the desired state equals the
full recomputation, the believed view equals the kernel, and a full dump
and plan find nothing to do.  Hypothesis runs fewer examples than on the
model kernel (each is a namespace); ``PROPERTY_EXAMPLES`` deepens it.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams, desired_state
from reconciler.etcd.store import WatchEvent
from reconciler.core.leases import RawKV, validate_leases
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
CONFIG = parse_network_config('{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}')
ME = "198.18.0.1"
OWN = f"{PREFIX}/subnets/100.64.1.0-24"
MACS = ["0a:58:64:40:00:0a", "0a:58:64:40:00:0b", "0a:58:64:40:00:0c"]


def _peer(sid: int, mac: str) -> tuple[str, str]:
    return f"{PREFIX}/subnets/100.64.{sid}.0-24", lease_value(f"198.18.1.{sid}", mac, 1)


steps = st.one_of(
    st.tuples(st.just("put"), st.integers(2, 5), st.sampled_from(MACS)),
    st.tuples(st.just("delete"), st.integers(2, 5)),
    st.tuples(st.just("damage"), st.sampled_from(["route-del", "neigh-del", "neigh-mac", "fdb-del", "mtu",
                                                   "down", "stale-route"]), st.integers(2, 5)),
)


def _damage(ns: str, what: str, sid: int) -> None:
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
    }[what]
    run(ns, *argv, check=False)   # an entry that is not there is no failure of the test


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(steps, min_size=1, max_size=12))
def test_incremental_equals_full_recomputation_on_the_real_kernel(seq):
    require_root()
    with underlay(1) as net, tempfile.TemporaryDirectory() as tmp, BatchedBackend(net.nodes[0].ns) as backend:
        ns = net.nodes[0].ns
        node = NodeParams(public_ip=ME, underlay_mtu=1500, underlay="eth0")
        agent = offline_agent(backend, CONFIG, node, os.path.join(tmp, "subnet.env"))
        stop, ready = threading.Event(), threading.Event()
        watcher = threading.Thread(target=backend.watch_kernel, daemon=True, args=(
            set(owned_devices(CONFIG)), ["100.64.0.0/16"], agent._kernel_q.append, stop, ready))
        watcher.start()
        try:
            assert ready.wait(10), "the netlink monitor did not subscribe"
            table: dict[str, RawKV] = {}
            rev = 0

            def lease(op, key, value=""):
                nonlocal rev
                rev += 1
                kv = RawKV(key, value, 7001, rev)
                if op == "put":
                    table[key] = kv
                else:
                    table.pop(key, None)
                agent._lease_q.append(("event", WatchEvent(op, kv, rev), 0.0))

            table[OWN] = RawKV(OWN, lease_value(ME, "0a:58:64:40:00:01", 1), 7001, 0)
            queue_listing(agent, list(table.values()))
            agent.cycle({"relist"})
            for step in seq:
                if step[0] == "put":
                    lease("put", *_peer(step[1], step[2]))
                elif step[0] == "delete":
                    lease("delete", _peer(step[1], MACS[0])[0])
                else:
                    _damage(ns, step[1], step[2])
                agent.cycle({"lease"})
            # Settle: cycles until the monitor has been quiet and nothing is dirty.
            quiet_since = time.monotonic()
            deadline = quiet_since + 20
            while time.monotonic() < deadline:
                busy = bool(agent._kernel_q) or bool(agent.tracker.dirty) or agent.tracker.needs_dump \
                    or agent._retry_at is not None
                if busy:
                    quiet_since = time.monotonic()
                    agent._retry_at = None
                    agent.cycle({"kernel"})
                elif time.monotonic() - quiet_since > 0.5:
                    break
                time.sleep(0.05)
            assert watcher.is_alive(), "the netlink monitor died"

            leases, _ = validate_leases(CONFIG, table.values(), PREFIX)
            assert agent.desired.state == desired_state(CONFIG, leases, node)
            dump = dump_live(backend, CONFIG)
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
