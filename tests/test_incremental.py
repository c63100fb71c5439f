"""The incremental path against the full recomputation (the model kernel).

The agent's own cycle is driven here with its queues fed by hand: lease
events as the watch would queue them, and kernel notifications as the
netlink monitor would (derived by diffing the model kernel before and after
each change, so every change anyone makes is announced, unless a step drops
them the way ENOBUFS does).  After any sequence of lease events, kernel
faults and failing writes:

* the incremental desired state equals ``desired_state`` of all leases;
* the believed kernel view matches the kernel;
* a full dump and plan find nothing left to do.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import tempfile
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams, desired_state, nexthop_id
from reconciler.etcd.store import WatchEvent
from reconciler.core.leases import RawKV, validate_leases
from reconciler.core.model import Fdb, KernelState, Link, Neigh, Nexthop, Route, attr_diff
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.plan import make_plan
from reconciler.core.reconcile import dump_live
from reconciler.kernel.netlink.kernel_events import KernelEvent
from tests.agent_harness import offline_agent, queue_listing
from tests.model_kernel import ModelKernel, events_between
from tests.strategies import PREFIX, lease_value

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "200"))
CONFIG = parse_network_config('{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}')
ME = "198.18.0.1"
OWN_KEY = f"{PREFIX}/subnets/100.64.1.0-24"
MACS = ["02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c", "02:00:00:00:00:0d"]


def _kernel() -> ModelKernel:
    k = ModelKernel()
    k.add_link(Link("eth0", "veth", 1500, "02:00:00:00:ee:01", True))
    k.add_address("eth0", f"{ME}/24")
    return k


class Harness:
    """An Agent whose worker state is set up by hand, driven one cycle at a time."""

    def __init__(self, kernel: ModelKernel, subnet_file: str, layout: str = "onlink") -> None:
        self.kernel = kernel
        self.node = NodeParams(public_ip=ME, underlay_mtu=1500, underlay="eth0", route_layout=layout)
        self.agent = offline_agent(kernel, CONFIG, self.node, subnet_file)
        self.table: dict[str, RawKV] = {}
        self.rev = 0
        self.seen = self.dump()

    def dump(self) -> KernelState:
        return dump_live(self.kernel, CONFIG)

    def lease(self, op: str, key: str, value: str = "") -> None:
        self.rev += 1
        kv = RawKV(key, value, 7001, self.rev)
        if op == "put":
            self.table[key] = kv
        else:
            self.table.pop(key, None)
        if not self.agent._listed:
            return
        self.agent._lease_q.append(("event", WatchEvent(op, kv, self.rev), self.agent.clock()))

    def list_all(self) -> None:
        queue_listing(self.agent, list(self.table.values()))

    def announce(self, silent: bool = False, quiet_v4_routes: bool = False) -> None:
        """Queue the notifications for whatever changed in the kernel since the last call.

        ``quiet_v4_routes``: like the real kernel when a device goes down or away, say
        nothing of the IPv4 routes that went with it (docs/incremental.md shows it)."""
        now = self.dump()
        # The notifications for the difference between two dumps (the model kernel's own diff).
        events = events_between(self.seen, now)
        if quiet_v4_routes:
            events = [e for e in events if not (e.op == "del" and e.obj.KIND == "route" and ":" not in e.obj.dst)]
            link = self.kernel.links.get("flannel.1")
            if link is not None and not any(e.obj.KIND == "link" for e in events):
                events.append(KernelEvent("set", replace(link.link, up=False)))   # the flap's two link events
                events.append(KernelEvent("set", link.link))
        self.agent._kernel_q.append(None if silent else events)
        self.seen = now

    def cycle(self, *triggers: str):
        report = self.agent.cycle(set(triggers) or {"lease"})
        self.announce()
        return report


def _peer(sid: int, host: int, mac: str) -> tuple[str, str]:
    return f"{PREFIX}/subnets/100.64.{sid}.0-24", lease_value(f"198.18.0.{host}", mac, 1)


@st.composite
def steps(draw):
    kind = draw(st.sampled_from(["put", "put", "delete", "fault", "fault", "silent", "oper"]))
    if kind == "put":
        return ("put", draw(st.integers(2, 6)), draw(st.integers(2, 6)), draw(st.sampled_from(MACS)))
    if kind == "delete":
        return ("delete", draw(st.integers(2, 6)))
    if kind == "oper":
        return ("oper", draw(st.sampled_from(["neigh", "fdb", "route"])),
                draw(st.sampled_from(["create", "update", "delete"])))
    fault = draw(st.sampled_from(["del-route", "del-neigh", "del-fdb", "neigh-mac", "fdb-dst", "route-gw",
                                  "mtu", "down", "flap", "link-mac", "del-link", "stale-route", "foreign-route",
                                  "stale-neigh"]))
    return ("silent" if kind == "silent" else "fault", fault, draw(st.integers(0, 10)))


def _damage(k: ModelKernel, fault: str, pick: int) -> bool:
    """Damage the kernel; True when the kernel would not announce the routes it dropped."""
    with k._rtnl:
        ours = [r for r in k.routes.values() if r.dev == "flannel.1"]
        neighs = [n for n in k.neighs.values() if n.neigh.dev == "flannel.1"]
        fdbs = [f for f in k.fdbs.values() if f.fdb.dev == "flannel.1"]
        link = k.links.get("flannel.1")
        if fault == "del-route" and ours:
            r = ours[pick % len(ours)]
            k.routes = {key: v for key, v in k.routes.items() if v is not r}
        elif fault == "del-neigh" and neighs:
            del k.neighs[neighs[pick % len(neighs)].neigh.key]
        elif fault == "del-fdb" and fdbs:
            del k.fdbs[fdbs[pick % len(fdbs)].fdb.key]
        elif fault == "neigh-mac" and neighs:
            n = neighs[pick % len(neighs)].neigh
            k.add_neigh(replace(n, mac="02:de:ad:00:00:01"))
        elif fault == "fdb-dst" and fdbs:
            f = fdbs[pick % len(fdbs)].fdb
            k.add_fdb(replace(f, dst="198.18.0.253"))
        elif fault == "route-gw" and ours:
            r = ours[pick % len(ours)]
            k.add_route(replace(r, gateway="100.64.0.9"))
        elif fault == "mtu" and link is not None:
            link.link = replace(link.link, mtu=1400)
        elif fault == "down" and link is not None:
            link.link = replace(link.link, up=False)
            k._link_down("flannel.1")
        elif fault == "flap" and link is not None:
            # Down and up again before anyone looks: the link ends as it was, its routes gone.
            k._link_down("flannel.1")
        elif fault == "link-mac" and link is not None:
            link.link = replace(link.link, mac="02:de:ad:be:ef:00")
            k.neighs = {key: v for key, v in k.neighs.items() if v.neigh.dev != "flannel.1"}
        elif fault == "del-link" and link is not None:
            k.remove_link("flannel.1")
        elif fault == "stale-route" and link is not None:
            k.add_route(Route(f"100.64.{200 + pick}.0/24", f"100.64.{200 + pick}.0", "flannel.1", True, 0, 73))
        elif fault == "foreign-route":
            k.add_route(Route(f"100.64.{2 + pick % 5}.0/24", "198.18.0.9", "eth0", False, 0, 4))
        elif fault == "stale-neigh" and link is not None:
            k.add_neigh(Neigh("flannel.1", f"100.64.{200 + pick}.0", "02:00:00:00:99:99"))
    return fault in ("down", "flap", "del-link")


def _full_recompute(h: Harness):
    leases, _ = validate_leases(CONFIG, h.table.values(), PREFIX)
    return desired_state(CONFIG, leases, h.node)


def _assert_converged(h: Harness) -> None:
    a = h.agent
    assert a.desired.state == _full_recompute(h)
    dump = h.dump()
    split = FlannelOwnership(CONFIG).split(dump)
    owned = split.live
    # What the agent believes is what the kernel holds.
    believed = a.tracker.live
    assert {(o.KIND, o.key) for o in believed} == {(o.KIND, o.key) for o in owned}
    for o in believed:
        assert not attr_diff(o, owned.get(o.KIND, o.key)), (o, owned.get(o.KIND, o.key))
    # And a full resync has nothing left to do, and the same conflicts to report.
    full = make_plan(a.desired.state, owned, split.foreign_routes, split.foreign_nexthops)
    assert full.changes == ()
    assert set(full.conflicts) == set(a.tracker.conflicts.values())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps(), max_size=25))
def test_incremental_equals_full_recomputation_then_resync_is_empty(seq):
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(_kernel(), os.path.join(tmp, "subnet.env"))
        h.lease("put", OWN_KEY, lease_value(ME, "02:00:00:00:00:01", 1))
        h.lease("put", *_peer(2, 2, MACS[0]))
        h.list_all()
        h.cycle("relist")
        for step in seq:
            op = step[0]
            if op == "put":
                h.lease("put", *_peer(step[1], step[2], step[3]))
            elif op == "delete":
                h.lease("delete", _peer(step[1], 2, MACS[0])[0])
            elif op == "oper":
                h.kernel.inject(step[1], errno.EINVAL, op=step[2])
            else:
                quiet = _damage(h.kernel, step[1], step[2])
                h.announce(silent=op == "silent", quiet_v4_routes=quiet)
            h.cycle("lease")
        # Faults cleared, the pending retries run (the timer would fire them).
        h.kernel.clear_faults()
        for _ in range(4):
            h.cycle("retry")
        _assert_converged(h)


@pytest.fixture
def harness(tmp_path):
    h = Harness(_kernel(), str(tmp_path / "subnet.env"))
    h.lease("put", OWN_KEY, lease_value(ME, "02:00:00:00:00:01", 1))
    for sid in range(2, 30):
        h.lease("put", *_peer(sid, sid, f"02:00:00:00:01:{sid:02x}"))
    h.list_all()
    h.cycle("relist")
    h.cycle("kernel")   # the echoes of the cold start
    return h


def _writes_and_dumps(h: Harness, fn):
    w, d = len(h.kernel.writes), h.kernel.dumps
    fn()
    report = h.agent.cycle({"lease"})
    return h.kernel.writes[w:], h.kernel.dumps - d, report


def test_a_peer_added_is_three_writes_and_no_dump(harness):
    writes, dumps, _ = _writes_and_dumps(harness, lambda: harness.lease("put", *_peer(40, 40, "02:00:00:00:02:40")))
    assert sorted(k for _, k, _ in writes) == ["fdb", "neigh", "route"]
    assert dumps == 0


def test_a_vtep_mac_change_is_three_writes_and_no_dump(harness):
    writes, dumps, _ = _writes_and_dumps(harness, lambda: harness.lease("put", *_peer(5, 5, "02:00:00:00:07:77")))
    assert sorted((op, k) for op, k, _ in writes) == [("delete", "fdb"), ("replace", "fdb"), ("replace", "neigh")] \
        or sorted(k for _, k, _ in writes) == ["fdb", "fdb", "neigh"]
    assert dumps == 0


def test_a_peer_deleted_is_three_writes_and_no_dump(harness):
    writes, dumps, _ = _writes_and_dumps(harness, lambda: harness.lease("delete", _peer(7, 7, "")[0]))
    assert sorted(k for _, k, _ in writes) == ["fdb", "neigh", "route"]
    assert all(op == "delete" for op, _, _ in writes)
    assert dumps == 0


def test_an_unchanged_reput_writes_nothing_and_dumps_nothing(harness):
    def storm():
        for sid in range(2, 30):
            harness.lease("put", *_peer(sid, sid, f"02:00:00:00:01:{sid:02x}"))

    writes, dumps, report = _writes_and_dumps(harness, storm)
    assert writes == [] and dumps == 0
    assert report.plan.changes == ()


def test_drift_announced_by_the_kernel_is_repaired_without_a_dump(harness):
    k = harness.kernel
    with k._rtnl:
        victim = next(r for r in k.routes.values() if r.dst == "100.64.9.0/24")
        k.routes = {key: v for key, v in k.routes.items() if v is not victim}
        del k.fdbs[("flannel.1", "02:00:00:00:01:0a")]
    harness.announce()
    d = k.dumps
    report = harness.agent.cycle({"kernel"})
    assert k.dumps == d
    assert {(c.kind, c.op) for c in report.plan} == {("route", "create"), ("fdb", "create")}
    _assert_converged(harness)


def test_an_mtu_change_is_repaired_in_place_and_a_device_going_down_asks_for_a_dump(harness):
    k = harness.kernel
    k.links["flannel.1"].link = replace(k.links["flannel.1"].link, mtu=1400)
    harness.announce()
    d = k.dumps
    report = harness.agent.cycle({"kernel"})
    assert [(c.kind, c.op) for c in report.plan] == [("link", "update")]
    assert k.dumps == d
    k.links["flannel.1"].link = replace(k.links["flannel.1"].link, up=False)
    k._link_down("flannel.1")
    harness.announce(quiet_v4_routes=True)
    harness.agent.cycle({"kernel"})
    assert k.dumps > d
    harness.cycle("kernel")
    _assert_converged(harness)


def test_a_failed_write_stays_pending_and_is_retried(harness):
    harness.kernel.inject("neigh", errno.EINVAL, op="create")
    harness.lease("put", *_peer(41, 41, "02:00:00:00:02:41"))
    report = harness.cycle("lease")
    assert not all(r.ok for r in report.results)
    assert ("neigh", ("flannel.1", "100.64.41.0")) in harness.agent.tracker.dirty
    assert harness.agent._retry_at is not None
    report = harness.cycle("retry")
    assert {c.kind for c in report.plan} == {"neigh", "route"} and all(r.ok for r in report.results)
    _assert_converged(harness)


def test_a_foreign_route_taking_our_key_is_a_conflict_and_left_alone(harness):
    k = harness.kernel
    k.add_route(Route("100.64.3.0/24", "198.18.0.9", "eth0", False, 0, 4))
    harness.announce()
    report = harness.cycle("kernel")
    assert report.plan.changes == ()
    assert [c.foreign.gateway for c in report.plan.conflicts] == ["198.18.0.9"]
    assert k.routes[(254, "100.64.3.0/24", 0)].gateway == "198.18.0.9"


def test_a_running_agent_leaves_a_foreign_nexthop_at_one_of_our_ids_alone(tmp_path):
    """With --route-layout nexthop, a foreign nexthop at the id a peer's route wants is a conflict
    for the running agent as for ``plan`` and ``apply``: never replaced, reported every cycle."""
    h = Harness(_kernel(), str(tmp_path / "subnet.env"), layout="nexthop")
    nhid = nexthop_id(CONFIG.network, ipaddress.ip_network("100.64.3.0/24"))
    foreign = Nexthop(nhid, "198.18.0.9", "eth0", False, 4)
    h.kernel.add_nexthop(foreign)
    h.seen = h.dump()
    h.lease("put", OWN_KEY, lease_value(ME, "02:00:00:00:00:01", 1))
    for sid in (2, 3, 4):
        h.lease("put", *_peer(sid, sid, f"02:00:00:00:01:{sid:02x}"))
    h.list_all()
    for trigger in ("relist", "kernel", "resync", "lease"):
        report = h.cycle(trigger)
        assert h.kernel.nexthops[nhid] == foreign, trigger
        assert ("route", ("100.64.3.0/24", 0)) not in {(c.kind, c.obj.key) for c in report.plan}
    assert {(c.desired.KIND, c.foreign) for c in h.agent.tracker.conflicts.values()} == \
        {("nexthop", foreign), ("route", foreign)}
    # The other peers are programmed through nexthops of ours.
    assert {i for i, nh in h.kernel.nexthops.items() if nh.protocol == 73} == \
        {nexthop_id(CONFIG.network, ipaddress.ip_network(f"100.64.{s}.0/24")) for s in (2, 4)}
    # The foreign nexthop goes: ours and the route through it are written at the next cycle.
    with h.kernel._rtnl:
        del h.kernel.nexthops[nhid]
    h.announce()
    h.cycle("kernel")
    assert h.kernel.nexthops[nhid].dev == "flannel.1"
    assert h.kernel.routes[(254, "100.64.3.0/24", 0)].nhid == nhid
    assert not h.agent.tracker.conflicts
    _assert_converged(h)


def test_fdb_neigh_of_a_peer_are_keyed_as_the_kernel_keys_them(harness):
    # Two desired objects never share a key: a peer's MAC change replaces its FDB key.
    state = harness.agent.desired.state
    assert len(state.of("fdb")) == len({f.mac for f in state.of("fdb").values()})
    assert all(isinstance(f, Fdb) for f in state.of("fdb").values())
