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
import json
import os
import tempfile
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams, desired_state, nexthop_id
from reconciler.etcd.store import WatchEvent
from reconciler.core.leases import RawKV, subnet_key, validate_leases
from reconciler.core.model import RTPROT_RECONCILER, Fdb, KernelState, Link, Neigh, Nexthop, Route, attr_diff
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.plan import Change, make_plan
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

    def __init__(self, kernel: ModelKernel, subnet_file: str, layout: str = "onlink", config=CONFIG,
                 public_ipv6: str | None = None) -> None:
        self.kernel = kernel
        self.config = config
        self.node = NodeParams(public_ip=ME, underlay_mtu=1500, underlay="eth0", route_layout=layout,
                               public_ipv6=public_ipv6)
        self.agent = offline_agent(kernel, config, self.node, subnet_file)
        self.table: dict[str, RawKV] = {}
        self.rev = 0
        self.seen = self.dump()
        self.foreign_nh: dict[int, Nexthop] = {}      # what a step added by hand, by id

    def dump(self) -> KernelState:
        return dump_live(self.kernel, self.config)

    def lease(self, op: str, key: str, value: str = "") -> None:
        self.rev += 1
        kv = RawKV(key, value, 7001, self.rev)
        if op == "put":
            self.table[key] = kv
        else:
            self.table.pop(key, None)
        if not self.agent.listed:
            return
        self.agent.queue_lease_event(WatchEvent(op, kv, self.rev))

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
        self.agent.queue_kernel_events(None if silent else events)
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
    leases, _ = validate_leases(h.config, h.table.values(), PREFIX)
    return desired_state(h.config, leases, h.node)


def _assert_converged(h: Harness) -> None:
    a = h.agent
    assert a.desired.state == _full_recompute(h)
    dump = h.dump()
    split = FlannelOwnership(h.config).split(dump)
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


DUAL = parse_network_config('{"Network":"100.64.0.0/16","SubnetLen":24,"EnableIPv6":true,'
                            '"IPv6Network":"fd00:64::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}')
ME6 = "fd00:18::1"


def _dual_kv(sid: int, host: int, mac: str, v6: bool) -> tuple[str, str]:
    """A dual-stack cluster's lease: 100.64.sid.0/24, and fd00:64:0:sid::/64 when ``v6``."""
    sn6 = ipaddress.ip_network(f"fd00:64:0:{sid:x}::/64") if v6 else None
    public6 = (ME6 if host == 1 else f"fd00:18::{host:x}") if v6 else None
    value = lease_value(ME if host == 1 else f"198.18.0.{host}", mac, 1, public_ipv6=public6,
                        mac6=("02:00:00:00:60:" + mac[-2:]) if v6 else None)
    return f"{PREFIX}/subnets/{subnet_key(ipaddress.ip_network(f'100.64.{sid}.0/24'), sn6)}", value


@st.composite
def wide_steps(draw):
    """Everything ``steps`` does, and: peers with and without IPv6, our own lease moving to
    another subnet or flipping IPv6 on and off, a relisting or a resync in the middle, foreign
    nexthops at our ids (appearing and going) and our nexthops deleted by hand."""
    kind = draw(st.sampled_from(["put", "put", "delete", "own", "relist", "resync", "foreign-nh",
                                 "foreign-nh-gone", "del-nh", "fault"]))
    if kind == "put":
        return ("put", draw(st.integers(2, 6)), draw(st.integers(2, 6)), draw(st.sampled_from(MACS)),
                draw(st.booleans()))
    if kind == "delete":
        return ("delete", draw(st.integers(2, 6)))
    if kind == "own":
        return ("own", draw(st.sampled_from([1, 9])), draw(st.booleans()))     # (subnet, a cycle without it)
    if kind in ("foreign-nh", "del-nh"):
        return (kind, draw(st.integers(2, 6)), draw(st.booleans()))
    if kind == "fault":
        return ("fault", draw(st.sampled_from(["del-route", "del-neigh", "del-fdb", "route-gw", "mtu", "down",
                                               "del-link", "foreign-route"])), draw(st.integers(0, 10)))
    return (kind,)


def _key_sid(key: str) -> int:
    return int(key.rsplit("/", 1)[1].split(".")[2])


def _wide_step(h: Harness, step: tuple) -> str:
    """Carry out one step; return the cycle trigger that follows it."""
    op, k = step[0], h.kernel
    if op == "put":
        h.lease("put", *_dual_kv(step[1], step[2], step[3], step[4]))
    elif op == "delete":
        for key in [key for key in h.table if _key_sid(key) == step[1]]:
            h.lease("delete", key)
    elif op == "own":
        # Our lease moves (a new subnet) or is re-acquired.  A cycle without it flips the node's
        # IPv6 overlay off and back on: every peer's v6 entries are recomputed.
        for key in [key for key in h.table if json.loads(h.table[key].value)["PublicIP"] == ME]:
            h.lease("delete", key)
        if step[2]:
            assert h.cycle("lease") is None       # no own lease: the kernel is left as it is
        h.lease("put", *_dual_kv(step[1], 1, "02:00:00:00:00:01", True))
    elif op == "relist":
        queue_listing(h.agent, list(h.table.values()), h.rev)
        return "relist"
    elif op == "resync":
        return "resync"
    elif op == "foreign-nh":
        v6 = step[2]
        subnet = ipaddress.ip_network(f"fd00:64:0:{step[1]:x}::/64" if v6 else f"100.64.{step[1]}.0/24")
        nhid = nexthop_id(h.config.ipv6_network if v6 else h.config.network, subnet)
        # ``ip nexthop replace`` by someone else, over ours too; then the peer that wants the id.
        h.foreign_nh[nhid] = Nexthop(nhid, "fd00:18::99" if v6 else "198.18.0.99", "eth0", False, 4)
        k.add_nexthop(h.foreign_nh[nhid])
        if not any(_key_sid(key) == step[1] for key in h.table):
            h.lease("put", *_dual_kv(step[1], step[1], MACS[step[1] % 4], v6))
    elif op == "foreign-nh-gone":
        with k._rtnl:
            k.nexthops = {i: nh for i, nh in k.nexthops.items() if i not in h.foreign_nh}
            h.foreign_nh.clear()
            k.routes = {key: r for key, r in k.routes.items() if not r.nhid or r.nhid in k.nexthops}
    elif op == "del-nh":
        ours = sorted(i for i, nh in k.nexthops.items() if nh.protocol == RTPROT_RECONCILER)
        if ours:
            k._nexthop_delete(Change("delete", k.nexthops[ours[step[1] % len(ours)]]))
    else:
        quiet = _damage(k, step[1], step[2])
        h.announce(quiet_v4_routes=quiet)
        return "kernel"
    h.announce()
    return "lease"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["onlink", "nexthop"]), st.lists(wide_steps(), max_size=20))
def test_incremental_equals_full_recomputation_both_layouts_dual_stack(layout, seq):
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(_kernel(), os.path.join(tmp, "subnet.env"), layout=layout, config=DUAL, public_ipv6=ME6)
        h.kernel.add_address("eth0", f"{ME6}/64")
        h.seen = h.dump()
        h.lease("put", *_dual_kv(1, 1, "02:00:00:00:00:01", True))
        h.lease("put", *_dual_kv(2, 2, MACS[0], True))
        h.lease("put", *_dual_kv(3, 3, MACS[1], False))
        h.list_all()
        h.cycle("relist")
        for step in seq:
            h.cycle(_wide_step(h, step))
            # Foreign nexthops are never replaced (they sit on eth0, which nothing deletes).
            assert {i: h.kernel.nexthops.get(i) for i in h.foreign_nh} == h.foreign_nh
            if set(h.foreign_nh) & set(h.agent.desired.state.of("nexthop")):
                event("a foreign nexthop holds an id we want")
        for _ in range(3):
            h.cycle("retry")
        _assert_converged(h)
        event(f"layout {layout}")


def _listed(tmp_path) -> Harness:
    """Our lease and 28 peers listed, before the first cycle."""
    h = Harness(_kernel(), str(tmp_path / "subnet.env"))
    h.lease("put", OWN_KEY, lease_value(ME, "02:00:00:00:00:01", 1))
    for sid in range(2, 30):
        h.lease("put", *_peer(sid, sid, f"02:00:00:00:01:{sid:02x}"))
    h.list_all()
    return h


@pytest.fixture
def harness(tmp_path):
    h = _listed(tmp_path)
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


def test_echoes_of_device_writes_are_not_queued_the_dump_after_them_reads_the_kernel(tmp_path):
    # A cold start writes the devices and every peer's entries; a dump follows the device
    # writes anyway, so what the kernel echoes meanwhile is one marker, not a queue of objects.
    h = _listed(tmp_path)
    h.agent.cycle({"relist"})
    echoes = events_between(h.seen, h.dump())
    assert len(echoes) > 80          # the devices, an address, 28 routes, neighbours, FDB entries
    h.agent.queue_kernel_events(echoes[:40])
    h.agent.queue_kernel_events(echoes[40:])
    assert [b.events for b in h.agent.inbox.kernel] == [None]     # one marker
    # Someone deletes a route before the dump: the dump reads the kernel after the marker.
    victim = next(r for r in h.kernel.routes.values() if r.dst == "100.64.9.0/24")
    with h.kernel._rtnl:
        h.kernel.routes = {key: v for key, v in h.kernel.routes.items() if v is not victim}
    d = h.kernel.dumps
    report = h.agent.cycle({"kernel"})
    assert h.kernel.dumps == d + 1 and report.dumped
    assert [(c.kind, c.op, c.obj.dst) for c in report.plan] == [("route", "create", "100.64.9.0/24")]
    # After that dump (which wrote no device) notifications are queued as they come again.
    h.seen = h.dump()
    h.agent.queue_kernel_events(echoes[:2])
    assert [b.events for b in h.agent.inbox.kernel] == [echoes[:2]]
    h.agent.inbox.kernel.clear()
    h.announce()
    _assert_converged(h)


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
    assert harness.agent.retry_at is not None
    assert harness.agent.pending()["dirty_keys"] >= 1
    report = harness.cycle("retry")
    assert {c.kind for c in report.plan} == {"neigh", "route"} and all(r.ok for r in report.results)
    _assert_converged(harness)
    harness.agent.cycle({"kernel"})         # the echoes of the retry's writes
    assert harness.agent.pending() == {"lease_items": 0, "kernel_items": 0, "dirty_keys": 0, "dump": 0,
                                       "full_plan": 0}


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
