"""The compact-state rules (docs/memory.md): value objects without ``__dict__``, one instance shared
by the desired state and the believed kernel view when they agree, and a bound on the bytes a
lease costs in the incremental state, all checked without any clock."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.leases import Lease, RawKV, Skipped
from reconciler.core.model import CLASSES, Fdb, KernelState, Neigh, Route
from reconciler.incremental.lease_index import _Entry
from reconciler.kernel.netlink.kernel_events import KernelEvent
from reconciler.tools.bench import state_memory

VALUE_CLASSES = [*CLASSES.values(), Lease, RawKV, Skipped, _Entry, KernelEvent]


@pytest.mark.parametrize("cls", VALUE_CLASSES, ids=lambda c: c.__name__)
def test_value_classes_have_slots_and_no_instance_dict(cls):
    # A __dict__ per object is ~100 bytes more for each of tens of thousands of objects.
    assert "__slots__" in cls.__dict__
    assert all("__dict__" not in getattr(k, "__slots__", ()) for k in cls.__mro__)
    assert not any("__dict__" in vars(k) for k in cls.__mro__ if k is not object)


def _route(i: int, gw: str | None = None) -> Route:
    return Route(f"100.64.{i}.0/24", gw or f"100.64.{i}.0", "flannel.1", True)


def test_share_equal_takes_the_other_instance_and_key_where_equal_only():
    desired = KernelState([_route(1), _route(2), Neigh("flannel.1", "100.64.1.0", "0a:58:00:00:01:00")])
    third = _route(3)
    live = KernelState([third, _route(2), _route(1, gw="100.64.9.0"),
                        Neigh("flannel.1", "100.64.1.0", "0a:58:00:00:01:00"),
                        Fdb("flannel.1", "0a:58:00:00:01:00", "198.18.0.2")])
    before = list(live)
    live.share_equal(desired)
    assert live == KernelState(before)                     # the same values
    assert [o.key for o in live] == [o.key for o in before]   # in the same order
    assert live.get("route", ("100.64.2.0/24", 0)) is desired.get("route", ("100.64.2.0/24", 0))
    assert live.get("neigh", ("flannel.1", "100.64.1.0")) is desired.get("neigh", ("flannel.1", "100.64.1.0"))
    # Unequal (another gateway) and absent keys keep their own objects.
    assert live.get("route", ("100.64.1.0/24", 0)).gateway == "100.64.9.0"
    assert live.get("route", ("100.64.3.0/24", 0)) is third
    # The key objects are the desired state's too.
    dkeys = {id(k) for k in desired.of("route")}
    assert sum(id(k) in dkeys for k in live.of("route")) == 1
    held = list(live)
    live.share_equal(desired)                              # nothing left to share: no change
    assert all(a is b for a, b in zip(held, live)) and len(held) == len(live)
    # Equal as a whole: the kind's map becomes a copy of the other's (its keys and instances).
    same = KernelState([_route(1), _route(2)])
    same.share_equal(desired)
    assert same.of("route") == desired.of("route") and same.of("route") is not desired.of("route")
    for (k1, v1), (k2, v2) in zip(same.of("route").items(), desired.of("route").items()):
        assert k1 is k2 and v1 is v2


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=30),
       st.lists(st.integers(0, 20), max_size=30))
def test_share_equal_never_changes_a_value(live_spec, desired_spec):
    live = KernelState(_route(i, None if same else f"100.65.{i}.0") for i, same in live_spec)
    desired = KernelState(_route(i) for i in desired_spec)
    before = [(o.key, o) for o in live]
    live.share_equal(desired)
    assert [(o.key, o) for o in live] == before
    for o in live:
        want = desired.get("route", o.key)
        assert (o is want) == (want is not None and want == o)


def test_converged_believed_objects_are_the_desired_instances():
    state = state_memory.build_state(50)
    desired, live = state.desired.state, state.tracker.live
    peers = [o for o in desired if o.KIND in ("route", "neigh", "fdb")]
    assert len(peers) >= 3 * 49
    for o in peers:
        assert live.get(o.KIND, o.key) is o, o
    assert state.tracker.in_sync


def test_a_resync_dump_is_shared_in_the_full_plan_a_converged_kind_as_a_whole():
    """The agent's resync replaces the believed view with a dump; the next full plan holds the
    desired instances where equal (and the dumped value where not).  A kind equal as a whole
    becomes a copy of the desired map, keys included; a kind with one difference is shared
    object by object, and the plan still writes exactly that difference."""
    state = state_memory.build_state(50)
    desired, tracker = state.desired.state, state.tracker
    dump = state_memory._as_dumped(desired)
    changed = next(o for o in dump if o.KIND == "neigh")
    dump.add(dataclasses.replace(changed, mac="02:00:00:00:00:99"))        # one entry differs
    tracker.replace_live(dump)
    assert all(tracker.live.get(o.KIND, o.key) is not o for o in desired if o.KIND in ("route", "fdb"))
    plan = tracker.plan(desired)
    assert [(c.op, c.obj.key) for c in plan.changes] == [("update", changed.key)]
    for o in tracker.live:
        want = desired.get(o.KIND, o.key)
        assert (o is want) == (want is not None and want == o), o
    assert tracker.live.get("neigh", changed.key).mac == "02:00:00:00:00:99"
    # The converged kinds hold the desired keys too, not the dump's.
    for kind in ("route", "fdb"):
        dkeys = {id(k) for k in desired.of(kind)}
        assert all(id(k) in dkeys for k in tracker.live.of(kind)), kind
    assert tracker.live.of("route") is not desired.of("route")   # a copy: the two evolve apart
    # A second dump of a converged kernel: nothing to write, everything shared again.
    tracker.settle(plan, [])
    tracker.replace_live(state_memory._as_dumped(desired))
    assert tracker.plan(desired).changes == ()
    assert all(tracker.live.get(o.KIND, o.key) is o for o in desired)


def test_split_of_a_dump_keeps_its_keys_and_matches_the_object_by_object_split():
    state = state_memory.build_state(30)
    dump = state_memory._as_dumped(state.desired.state)
    foreign = Route("100.64.200.0/24", "198.18.0.9", "eth0", protocol=4)
    elsewhere = Route("192.0.2.0/24", "198.18.0.9", "eth0", protocol=4)
    dump.add(foreign)
    dump.add(elsewhere)
    dump.add(Neigh("eth0", "198.18.0.9", "02:00:00:00:00:09"))
    keyed = state.tracker.policy.split(dump)
    walked = state.tracker.policy.split(list(dump))
    assert keyed.live == walked.live and keyed.foreign_routes == walked.foreign_routes
    assert keyed.foreign_routes == {foreign.key: foreign}
    for kind in ("route", "neigh", "fdb"):
        dkeys = {id(k) for k in dump.of(kind)}
        assert all(id(k) in dkeys for k in keyed.live.of(kind)), kind


def test_the_kernel_confirming_the_believed_instance_changes_nothing_and_a_foreign_key_is_still_checked():
    state = state_memory.build_state(20)
    desired, tracker = state.desired.state, state.tracker
    route = next(o for o in desired if o.KIND == "route" and o.gateway)
    assert tracker.live.get("route", route.key) is route
    # As the event thread delivers them: fresh decoded values, routes with the kernel's protocol.
    confirms = [KernelEvent("set", o)
                for o in state_memory._as_dumped(o for o in desired if o.KIND in ("route", "neigh", "fdb"))]
    assert len(confirms) >= 3 * 19
    assert tracker.observe(confirms) == 0 and not tracker.dirty
    # The same instance at a key a foreign route was last seen at: our write replaced it there,
    # so the foreign entry goes (the full path), and the view is unchanged.
    tracker.foreign_routes[route.key] = dataclasses.replace(route, protocol=4)
    assert tracker.observe([KernelEvent("set", route)]) == 0
    assert route.key not in tracker.foreign_routes
    # A different value at the key is still news.
    moved = dataclasses.replace(route, gateway="100.64.77.0")
    assert tracker.observe([KernelEvent("set", moved)]) == 1 and ("route", route.key) in tracker.dirty


def test_bytes_per_lease_of_the_incremental_state_stay_bounded():
    # tracemalloc counts, not a clock: deterministic for one Python.  2,000 bytes a lease at
    # 2,000 leases was about 4,000 before the state was made compact (docs/memory.md); the
    # bound leaves room for another Python's object sizes, not for a copy of the state.
    got = state_memory.measure(2000)
    assert got["walked_per_lease"] < 2600, got["by_structure"]
    assert got["traced_per_lease"] < 2600, got["by_file"]
    assert got["by_structure"]["tracker: live (believed)"] < 300


def test_the_agents_imports_leave_pyroute2_out():
    # pyroute2 and the reference backend cost about 11 MiB of RSS; the default (batched) backend
    # needs neither, so the agent's import set must not pull them in by the way.
    out = state_memory.import_steps(state_memory.AGENT_IMPORTS)
    assert "reconciler.agent.daemon" in out
    assert out.rstrip().endswith("pyroute2 loaded: False"), out


def _converged_offline_agent(tmp_path, nodes: int):
    """An agent without etcd on a model kernel, after the cold start's cycle of ``nodes`` - 1 peers."""
    from benchmarks.conftest import cluster_kvs
    from reconciler.core.config import parse_network_config
    from reconciler.core.desired import NodeParams
    from reconciler.core.model import Link
    from tests.agent_harness import offline_agent, queue_listing
    from tests.model_kernel import ModelKernel

    kvs = cluster_kvs(nodes)
    k = ModelKernel()
    k.add_link(Link("eth0", "veth", 1500, "02:00:00:00:ee:01", True))
    k.add_address("eth0", "198.18.0.1/15")
    agent = offline_agent(k, parse_network_config(kvs[0].value),
                          NodeParams(public_ip="198.18.0.1", underlay_mtu=1500, underlay="eth0"),
                          str(tmp_path / "subnet.env"))
    queue_listing(agent, kvs[1:])
    agent.cycle({"relist"})
    return agent


def test_the_first_dump_after_a_cold_start_is_followed_by_a_heap_trim_and_later_resyncs_are_not(tmp_path, monkeypatch):
    # The fresh objects of a dump are let go of in the full plan that follows it (the believed
    # view keeps the desired instances); the cycle then gives the freed heap back.
    from reconciler.agent import heap

    trims = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(1))
    agent = _converged_offline_agent(tmp_path, 1200)
    assert trims, "the cold start's 3,600 writes trim"
    trims.clear()
    report = agent.cycle({"resync"})
    assert report.dumped and not report.plan.changes
    assert trims == [1]
    agent.cycle({"lease"})                                  # no dump, nothing written: no trim
    assert trims == [1]
    report = agent.cycle({"resync"})                        # a later resync reuses what the last freed
    assert report.dumped and trims == [1]


def test_the_collector_is_paused_for_a_full_cycles_dump_and_plan_and_only_then():
    import gc

    from reconciler.agent import heap
    assert gc.isenabled()
    with heap.collector_paused():
        assert not gc.isenabled()
        with heap.collector_paused():               # nested: the outer one re-enables
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with heap.collector_paused(False):
        assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with heap.collector_paused():
            raise RuntimeError("a failed dump")
    assert gc.isenabled()


def test_a_resync_cycle_runs_without_collections_and_leaves_the_collector_on(tmp_path):
    import gc

    agent = _converged_offline_agent(tmp_path, 300)
    seen = []
    real_plan = agent.tracker.plan

    def plan(desired):
        seen.append(gc.isenabled())
        return real_plan(desired)

    agent.tracker.plan = plan
    assert agent.cycle({"resync"}).dumped
    agent.cycle({"lease"})
    assert seen == [False, True] and gc.isenabled()
