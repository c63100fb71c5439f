"""The planner: story-named situations, each one kernel state against desired."""
from dataclasses import replace

from reconciler.core.desired import NodeParams, desired_state
from reconciler.core.model import Address, Fdb, KernelState, Link, Neigh, Route
from reconciler.core.plan import make_plan
from tests.fixtures import config, host1, host2, mac2, three_leases


def desired():
    return desired_state(config(), three_leases(), NodeParams(public_ip=host1, underlay="eth0"))


def ops(plan):
    return [(c.op, c.kind, c.obj.key) for c in plan]


def test_empty_kernel_creates_everything_in_dependency_order():
    plan = make_plan(desired(), KernelState())
    kinds = [c.kind for c in plan]
    assert all(c.op == "create" for c in plan)
    assert kinds == sorted(kinds, key=["link", "address", "neigh", "fdb", "route"].index)
    assert plan.summary() == {"create": 10, "update": 0, "delete": 0}


def test_converged_kernel_plans_nothing():
    d = desired()
    live = KernelState(d)
    assert make_plan(d, live).in_sync


def test_dont_care_attributes_are_not_compared():
    d = desired()
    live = KernelState(d)
    live.add(replace(d.get("link", "cni0"), mac="02:11:22:33:44:55"))  # kernel-chosen bridge MAC
    live.add(replace(d.get("route", ("100.64.2.0/24", 0)), protocol=3))  # flanneld's proto boot: adopted
    assert make_plan(d, live).in_sync


def test_mtu_drift_is_an_in_place_update():
    d = desired()
    live = KernelState(d)
    live.add(replace(d.get("link", "flannel.1"), mtu=1500))
    plan = make_plan(d, live)
    assert ops(plan) == [("update", "link", "flannel.1")]
    assert plan.changes[0].changed() == {"mtu": (1450, 1500)}


def test_vni_change_recreates_device_and_everything_on_it():
    d = desired()
    live = KernelState(d)
    live.add(replace(d.get("link", "flannel.1"), vni=2))
    plan = make_plan(d, live)
    assert plan.changes[0] == plan.changes[0].__class__("delete", live.get("link", "flannel.1"))
    assert ("create", "link", "flannel.1") in ops(plan)
    # entries on flannel.1 are re-created (the kernel drops them with the device),
    # not deleted one by one; cni0 is untouched.
    created = {(k, key) for op, k, key in ops(plan) if op == "create"}
    assert ("route", ("100.64.2.0/24", 0)) in created and ("fdb", ("flannel.1", mac2)) in created
    assert ("address", ("flannel.1", "100.64.1.0/32")) in created
    assert ("address", ("cni0", "100.64.1.1/24")) not in created
    assert not [o for o in ops(plan) if o[0] == "delete" and o[1] != "link"]


def test_peer_left_deletes_route_then_neigh_and_fdb_in_reverse_order():
    d = desired()
    live = KernelState(d)
    live.add(Route("100.64.9.0/24", "100.64.9.0", "flannel.1", True))
    live.add(Neigh("flannel.1", "100.64.9.0", "02:00:00:00:09:00"))
    live.add(Fdb("flannel.1", "02:00:00:00:09:00", "198.18.0.9"))
    assert ops(make_plan(d, live)) == [
        ("delete", "route", ("100.64.9.0/24", 0)),
        ("delete", "fdb", ("flannel.1", "02:00:00:00:09:00")),
        ("delete", "neigh", ("flannel.1", "100.64.9.0")),
    ]


def test_peer_rebooted_with_new_mac_updates_neigh_and_replaces_fdb_entry():
    d = desired()
    live = KernelState(d)
    old_mac = "02:00:00:00:99:99"
    live.discard(d.get("fdb", ("flannel.1", mac2)))
    live.add(Fdb("flannel.1", old_mac, host2))
    live.add(Neigh("flannel.1", "100.64.2.0", old_mac))
    plan = make_plan(d, live)
    assert ops(plan) == [
        ("delete", "fdb", ("flannel.1", old_mac)),
        ("update", "neigh", ("flannel.1", "100.64.2.0")),
        ("create", "fdb", ("flannel.1", mac2)),
    ]


def test_subnet_change_swaps_addresses():
    d = desired()
    live = KernelState(d)
    live.discard(Address("cni0", "100.64.1.1/24"))
    live.add(Address("cni0", "100.64.77.1/24"))
    # The new address goes on first: a device left without IPv4 would lose every route on it.
    assert ops(make_plan(d, live)) == [("create", "address", ("cni0", "100.64.1.1/24")),
                                       ("delete", "address", ("cni0", "100.64.77.1/24"))]


def test_stale_device_is_deleted_without_deleting_its_entries_one_by_one():
    d = desired()
    live = KernelState(d)
    live.add(Link("flannel-v6.1", "vxlan", 1450, "02:00:00:00:00:06", True, 1, "fd00::1", 8472, False))
    live.add(Route("fd00:64:0:2::/64", "fd00:64:0:2::", "flannel-v6.1", True, 1024))
    assert ops(make_plan(d, live)) == [("delete", "link", "flannel-v6.1")]


def test_foreign_route_at_a_desired_key_is_a_conflict_never_overwritten():
    d = desired()
    live = KernelState(o for o in d if o.KIND != "route" or o.dst != "100.64.2.0/24")
    admin = Route("100.64.2.0/24", "198.18.0.200", "eth0", False, 0, 4)  # proto static
    plan = make_plan(d, live, {admin.key: admin})
    assert not plan.changes and not plan.in_sync
    assert [(c.desired.dst, c.foreign) for c in plan.conflicts] == [("100.64.2.0/24", admin)]


def test_foreign_route_that_already_forwards_the_same_way_satisfies():
    d = desired()
    want = d.get("route", ("100.64.2.0/24", 0))
    live = KernelState(o for o in d if o != want)
    leftover = replace(want, protocol=3)  # e.g. flanneld's route, seen as foreign
    assert make_plan(d, live, {leftover.key: leftover}).in_sync


def test_own_mac_change_rewrites_the_neighbours_the_kernel_flushes():
    d = desired()
    live = KernelState(d)
    live.add(replace(d.get("link", "flannel.1"), mac="02:00:00:00:00:77"))
    assert ops(make_plan(d, live)) == [
        ("update", "link", "flannel.1"),
        ("create", "neigh", ("flannel.1", "100.64.2.0")),
        ("create", "neigh", ("flannel.1", "100.64.3.0")),
    ]


def test_kernel_route_of_a_stale_bridge_address_is_no_conflict():
    """cni0 still holds an old gateway address (flannel #1850) whose subnet a peer now has."""
    d = desired()
    live = KernelState(d)
    live.add(Address("cni0", "100.64.2.1/24"))
    connected = Route("100.64.2.0/24", None, "cni0", False, 0, 2)
    live.discard(d.get("route", ("100.64.2.0/24", 0)))
    plan = make_plan(d, live, {connected.key: connected})
    assert not plan.conflicts
    assert ops(plan) == [("delete", "address", ("cni0", "100.64.2.1/24")),
                         ("create", "route", ("100.64.2.0/24", 0))]


def test_keys_are_ordered_as_their_sortable_forms_even_with_none_beside_str():
    """``_in_order`` sorts keys as they are when they compare, else through ``_sortable``
    (None as ""), so a key holding None sorts where "" would, and ties keep their order."""
    import random

    from reconciler.core.plan import _in_order, _sortable
    keys = [("b", 1), ("a", 2), (None, "x"), ("", "y"), ("a", 1), (None, "a")]
    for seed in range(20):
        shuffled = list(keys)
        random.Random(seed).shuffle(shuffled)
        assert _in_order(shuffled) == sorted(shuffled, key=_sortable)
    assert _in_order([("b", 1), ("a", 2)]) == [("a", 2), ("b", 1)]
    assert _in_order(k for k in [3, 1, 2]) == [1, 2, 3]
    assert _in_order(k for k in keys) == sorted(keys, key=_sortable)     # a generator, the fallback too
