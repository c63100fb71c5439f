"""The ``nexthop`` route layout: desired state, plan, apply, rendering, and
convergence properties against the model kernel (layout switches both ways).

Real-kernel checks are in ``tests/test_nexthop_kernel.py``.
"""
from __future__ import annotations

import errno as E
import ipaddress
import os
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reconciler.kernel.apply import apply_plan
from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams, check_route_layout, desired_state, nexthop_id
from reconciler.core.errors import ReconcilerError
from reconciler.core.leases import validate_leases
from reconciler.core.model import RTPROT_RECONCILER, Fdb, KernelState, Link, Neigh, Nexthop, Route, attr_diff
from reconciler.core.ownership import NEXTHOP_ID_BASE, NEXTHOP_ID_SPAN, FlannelOwnership, owned_nexthop_id
from reconciler.core.plan import Change, make_plan
from reconciler.core.reconcile import compute_cycle, dump_live
from reconciler.core.render import describe, plan_text, show_rows
from tests.contract import already_right, assert_converged, side_effects
from tests.fixtures import NETWORK, config, host1, host2, mac2, mac3, subnet2, three_leases
from tests.model_kernel import ModelKernel
from tests.strategies import PREFIX, UNDERLAY, clusters, live_kernels

SETTINGS = settings(max_examples=max(200, int(os.environ.get("PROPERTY_EXAMPLES", "200"))), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

NH = NodeParams(public_ip=host1, route_layout="nexthop")
ID2 = NEXTHOP_ID_BASE + 2       # 100.64.2.0/24 is subnet 2 of 100.64.0.0/16
ID3 = NEXTHOP_ID_BASE + 3


# ------------------------------------------------------------------- ids

def test_nexthop_ids_are_the_subnet_index_above_the_base():
    assert nexthop_id(NETWORK, subnet2) == ID2
    assert nexthop_id(NETWORK, ipaddress.ip_network("100.64.255.0/24")) == NEXTHOP_ID_BASE + 255
    v6 = ipaddress.ip_network("fd00:64::/56")
    assert nexthop_id(v6, ipaddress.ip_network("fd00:64:0:7::/64")) == NEXTHOP_ID_BASE + NEXTHOP_ID_SPAN + 7
    assert owned_nexthop_id(ID2) and owned_nexthop_id(NEXTHOP_ID_BASE + 2 * NEXTHOP_ID_SPAN - 1)
    assert not owned_nexthop_id(NEXTHOP_ID_BASE - 1) and not owned_nexthop_id(NEXTHOP_ID_BASE + 2 * NEXTHOP_ID_SPAN)


def test_a_subnet_outside_the_network_has_no_id():
    with pytest.raises(ReconcilerError, match="no nexthop id"):
        nexthop_id(NETWORK, ipaddress.ip_network("100.65.2.0/24"))


def test_a_network_with_more_subnets_than_ids_is_refused_up_front():
    big = config(network=ipaddress.ip_network("10.0.0.0/8"), subnet_len=29)
    with pytest.raises(ReconcilerError, match=r"Network 10.0.0.0/8 holds 2,097,152 subnets of /29.*onlink"):
        check_route_layout(big, NH)
    check_route_layout(big, NodeParams(public_ip=host1))           # the onlink layout has no ids to run out of
    check_route_layout(config(network=ipaddress.ip_network("10.0.0.0/8"), subnet_len=28), NH)   # exactly 2**20


def test_an_unknown_layout_is_refused():
    with pytest.raises(ReconcilerError, match="route layout 'ecmp'"):
        desired_state(config(), three_leases(), NodeParams(public_ip=host1, route_layout="ecmp"))


# --------------------------------------------------------------- desired

def _connected(obj) -> bool:
    """The bridge's connected route (desired in both layouts; the kernel makes it)."""
    return obj.KIND == "route" and obj.gateway is None and not obj.nhid


def test_desired_state_routes_every_peer_through_its_nexthop():
    state = desired_state(config(), three_leases(), NH)
    assert set(state.of("nexthop").values()) == {
        Nexthop(ID2, "100.64.2.0", "flannel.1", True), Nexthop(ID3, "100.64.3.0", "flannel.1", True)}
    assert set(state.of("route").values()) == {
        Route("100.64.2.0/24", None, None, None, nhid=ID2), Route("100.64.3.0/24", None, None, None, nhid=ID3),
        Route("100.64.1.0/24", None, "cni0", False)}     # the bridge's connected route, in both layouts
    # Neighbour and FDB entries are those of the onlink layout.
    onlink = desired_state(config(), three_leases(), NodeParams(public_ip=host1))
    assert state.of("neigh") == onlink.of("neigh") and state.of("fdb") == onlink.of("fdb")
    assert not onlink.of("nexthop")
    assert all(r.nhid == 0 and r.onlink for r in onlink.of("route").values() if not _connected(r))


def test_every_node_gives_a_peer_the_same_id():
    a = desired_state(config(), three_leases(), NH)
    b = desired_state(config(), three_leases(), replace(NH, public_ip=host2))
    assert a.get("nexthop", ID3) == b.get("nexthop", ID3)


# ------------------------------------------------------------------ plan

def _onlink_live() -> KernelState:
    desired = desired_state(config(), three_leases(), NodeParams(public_ip=host1))
    return KernelState(o for o in desired)


def test_plan_from_onlink_writes_nexthops_before_repointing_routes():
    desired = desired_state(config(), three_leases(), NH)
    plan = make_plan(desired, _onlink_live())
    assert [(c.op, c.kind, c.obj.key) for c in plan] == [
        ("create", "nexthop", ID2), ("create", "nexthop", ID3),
        ("update", "route", ("100.64.2.0/24", 0)), ("update", "route", ("100.64.3.0/24", 0))]
    assert plan.changes[2].changed() == {"nhid": (ID2, 0)}


def test_plan_back_to_onlink_repoints_routes_before_deleting_nexthops():
    live = desired_state(config(), three_leases(), NH)
    # As dumped: the kernel repeats the nexthop's gateway, device and onlink.
    for r in list(live.of("route").values()):
        if _connected(r):
            continue
        nh = live.get("nexthop", r.nhid)
        live.add(replace(r, gateway=nh.gateway, dev=nh.dev, onlink=True, protocol=RTPROT_RECONCILER))
    desired = desired_state(config(), three_leases(), NodeParams(public_ip=host1))
    plan = make_plan(desired, live)
    assert [(c.op, c.kind) for c in plan] == [("update", "route")] * 2 + [("delete", "nexthop")] * 2
    assert plan.changes[0].changed() == {"nhid": (0, ID2)}


def test_a_departed_peer_loses_route_first_nexthop_last():
    live = desired_state(config(), three_leases(), NH)
    desired = desired_state(config(), three_leases()[:2], NH)
    plan = make_plan(desired, live)
    assert [(c.op, c.kind) for c in plan] == [("delete", "route"), ("delete", "fdb"), ("delete", "neigh"),
                                              ("delete", "nexthop")]


def test_a_recreated_device_takes_nexthops_and_their_routes_with_it():
    live = desired_state(config(), three_leases(), NH)
    vx = live.get("link", "flannel.1")
    live.add(replace(vx, vni=9))            # immutable: re-created
    plan = make_plan(desired_state(config(), three_leases(), NH), live)
    kinds = [(c.op, c.kind) for c in plan]
    assert ("create", "nexthop") in kinds and ("create", "route") in kinds
    assert ("delete", "nexthop") not in kinds and ("delete", "route") not in kinds


def test_a_foreign_nexthop_at_our_id_is_a_conflict_never_taken_over():
    desired = desired_state(config(), three_leases(), NH)
    live = KernelState(o for o in desired if o.KIND in ("link", "address", "neigh", "fdb") or _connected(o))
    foreign = Nexthop(ID2, "198.18.0.254", UNDERLAY, False, 4)        # someone else's, on the underlay
    plan = make_plan(desired, live, foreign_nexthops={ID2: foreign})
    assert [(c.kind, c.obj.key) for c in plan] == [("nexthop", ID3), ("route", ("100.64.3.0/24", 0))]
    assert [(c.desired.KIND, c.foreign) for c in plan.conflicts] == [("nexthop", foreign), ("route", foreign)]
    text = plan_text(plan)
    assert "held by an object that is not ours" in text
    assert f"! nexthop id {ID2} via 100.64.2.0 dev flannel.1 onlink: held by foreign nexthop id {ID2} " \
           f"via 198.18.0.254 dev eth0 proto 4" in text
    rows = show_rows(desired, live, plan)
    assert ("conflict", f"route 100.64.2.0/24 nhid {ID2}",
            f"held by foreign nexthop id {ID2} via 198.18.0.254 dev eth0") in rows


def test_compute_cycle_finds_foreign_nexthops_in_our_range_only():
    from reconciler.core.leases import RawKV
    from tests.strategies import lease_value

    kvs = [RawKV(f"{PREFIX}/config", '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}'),
           RawKV(f"{PREFIX}/subnets/100.64.1.0-24", lease_value(host1, "0a:58:64:40:01:00", 1)),
           RawKV(f"{PREFIX}/subnets/100.64.2.0-24", lease_value(host2, mac2, 1))]
    dump = KernelState([Nexthop(ID2, None, None, False, 0),                   # a blackhole at our id
                        Nexthop(9, "198.18.0.9", UNDERLAY, False, 4)])        # below our range
    cfg = parse_network_config(kvs[0].value)
    cycle = compute_cycle(cfg, kvs, PREFIX, NH, dump)
    assert [(c.desired.KIND, c.foreign.id) for c in cycle.plan.conflicts] == [("nexthop", ID2), ("route", ID2)]
    assert not any(c.kind in ("nexthop", "route") for c in cycle.plan)
    assert not any(c.op == "delete" for c in cycle.plan)


# ----------------------------------------------------------------- apply

def _kernel_with_devices() -> ModelKernel:
    k = ModelKernel()
    k.add_link(Link("flannel.1", "vxlan", mtu=1450, mac="0a:58:64:40:01:00", up=True, vni=1, local=host1,
                    port=8472, learning=False, gbp=False))
    return k


def test_a_route_is_not_written_when_its_nexthop_failed():
    k = _kernel_with_devices()
    desired = desired_state(config(), three_leases(), NH)
    plan = make_plan(desired, KernelState(o for o in desired if o.KIND not in ("nexthop", "route")))
    k.inject("nexthop", E.EINVAL)
    results = apply_plan(k, plan, desired)
    by = {(r.change.kind, r.change.obj.key): r for r in results}
    assert not by[("nexthop", ID2)].ok
    route = by[("route", ("100.64.2.0/24", 0))]
    assert route.skipped and f"nexthop {ID2} failed" in route.message
    assert by[("route", ("100.64.3.0/24", 0))].ok


def test_a_nexthop_is_not_written_when_its_neighbour_failed():
    k = _kernel_with_devices()
    desired = desired_state(config(), three_leases(), NH)
    plan = make_plan(desired, KernelState(o for o in desired if o.KIND in ("link", "address")))
    k.inject("neigh", E.EINVAL)
    results = apply_plan(k, plan, desired)
    failed_neigh = next(r for r in results if r.change.kind == "neigh" and not r.ok).change.obj
    nh = next(r for r in results if r.change.kind == "nexthop" and r.change.obj.gateway == failed_neigh.ip)
    assert nh.skipped and "neighbour" in nh.message
    route = next(r for r in results if r.change.kind == "route" and r.change.obj.nhid == nh.change.obj.id)
    assert route.skipped


def test_a_nexthop_whose_route_did_not_move_is_kept():
    k = _kernel_with_devices()
    nh_desired = desired_state(config(), three_leases(), NH)
    plan = make_plan(nh_desired, KernelState(o for o in nh_desired if o.KIND in ("link", "address") or _connected(o)))
    assert all(r.ok for r in apply_plan(k, plan, nh_desired))
    onlink = desired_state(config(), three_leases(), NodeParams(public_ip=host1))
    cfg = config()
    live = FlannelOwnership(cfg).filter(k.dump(["flannel.1", "cni0"], ["100.64.0.0/16"]))
    plan = make_plan(onlink, live)
    k.inject("route", E.EINVAL, op="update")    # the first route fails to move
    results = apply_plan(k, plan, onlink)
    stuck = next(r for r in results if r.change.kind == "route" and not r.ok).change.live.nhid
    kept = next(r for r in results if r.change.kind == "nexthop" and r.change.obj.id == stuck)
    assert kept.skipped and "could not be moved off it" in kept.message
    assert stuck in k.nexthops                  # and the old route through it still forwards
    assert any(r.nhid == stuck for r in k.routes.values())


# ------------------------------------------------------------ rendering

def test_render_in_iproute2_words():
    assert describe(Nexthop(ID2, "100.64.2.0", "flannel.1", True)) == \
        f"nexthop id {ID2} via 100.64.2.0 dev flannel.1 onlink"
    assert describe(Route("100.64.2.0/24", None, None, None, nhid=ID2)) == f"route 100.64.2.0/24 nhid {ID2}"
    live = Route("100.64.2.0/24", "100.64.2.0", "flannel.1", True, nhid=ID2)
    assert describe(live) == f"route 100.64.2.0/24 nhid {ID2} via 100.64.2.0 dev flannel.1 onlink"
    from reconciler.kernel.netlink.common import describe as op_words
    assert op_words(Change("delete", live)) == f"route del 100.64.2.0/24 nhid {ID2}"
    assert op_words(Change("create", Nexthop(ID2, "100.64.2.0", "flannel.1", True))) == \
        f"nexthop replace id {ID2} via 100.64.2.0 dev flannel.1 onlink"
    assert op_words(Change("delete", Nexthop(ID2, "100.64.2.0", "flannel.1", True))) == f"nexthop del id {ID2}"


def test_plan_text_and_show_list_nexthops():
    desired = desired_state(config(), three_leases(), NH)
    plan = make_plan(desired, _onlink_live())
    text = plan_text(plan)
    assert f"nexthop:\n  + nexthop id {ID2} via 100.64.2.0 dev flannel.1 onlink\n" in text
    assert f"~ route 100.64.2.0/24 via 100.64.2.0 dev flannel.1 onlink: nhid desired {ID2}, live 0" in text
    rows = show_rows(desired, _onlink_live(), plan)
    assert ("missing", f"nexthop id {ID3} via 100.64.3.0 dev flannel.1 onlink", "") in rows
    assert ("drift", f"route 100.64.3.0/24 nhid {ID3}", f"nhid desired {ID3}, live 0") in rows


def test_live_state_json_round_trips_nexthops():
    live = desired_state(config(), three_leases(), NH)
    # A route through a nexthop as dumped with nexthop_compat_mode=0: nhid only.
    for r in list(live.of("route").values()):
        live.add(replace(r, onlink=False, protocol=RTPROT_RECONCILER))
    data = live.to_json()
    assert data["nexthops"] and any(r.get("nhid") == ID2 and "gateway" not in r for r in data["routes"])
    assert KernelState.from_json(data) == live


# ------------------------------------------------------------ ownership

def test_only_nexthops_in_our_range_on_our_vxlan_device_are_ours():
    policy = FlannelOwnership(config())
    assert policy.owns(Nexthop(ID2, "100.64.2.0", "flannel.1", True))
    assert not policy.owns(Nexthop(7, "100.64.2.0", "flannel.1", True))               # below the range
    assert not policy.owns(Nexthop(ID2, "198.18.0.9", UNDERLAY, False))               # another device
    assert not policy.owns(Nexthop(ID2, "100.64.2.0", "cni0", True))                  # not a VXLAN device
    assert not policy.owns(Nexthop(NEXTHOP_ID_BASE + 2 * NEXTHOP_ID_SPAN, "100.64.2.0", "flannel.1", True))
    # A route through a nexthop is ours by our protocol even when the dump
    # does not repeat the device (net.ipv4.nexthop_compat_mode=0).
    assert policy.owns(Route("100.64.2.0/24", None, None, False, 0, RTPROT_RECONCILER, nhid=ID2))


# ------------------------------------------------- model-kernel properties

def _setup(cluster, layout: str):
    cfg = parse_network_config(cluster.config_json)
    return cfg, NodeParams(public_ip=cluster.public_ip, underlay_mtu=1500, underlay=UNDERLAY, route_layout=layout)


def _foreign_nexthops(kernel: ModelKernel, policy, spared=frozenset()) -> dict:
    """Foreign nexthops, but for those on a device the plan re-creates (the kernel drops them, by design)."""
    return {i: nh for i, nh in kernel.nexthops.items() if not policy.owns(nh) and nh.dev not in spared}


def _foreign_routes(kernel: ModelKernel, policy) -> dict:
    return {k: r for k, r in kernel.routes.items() if k[0] != 254 or not policy.owns(r)}


def _assert_converged_around_foreign_nexthops(first, again, dump) -> None:
    """``assert_converged`` when a foreign nexthop holds an id we want: that nexthop and the route
    through it are conflicts, reported every time and never written; a route of ours already at
    that route's key (the onlink layout's) is left as it is, since it still forwards."""
    assert not again.plan.changes, again.plan
    assert again.plan.conflicts == first.plan.conflicts
    event("a foreign nexthop holds an id we want")
    blocked = {(c.desired.KIND, c.desired.key) for c in first.plan.conflicts}
    satisfied_by_foreign = 0
    for obj in first.desired:
        if (obj.KIND, obj.key) in blocked:
            continue
        have = again.live.get(obj.KIND, obj.key)
        if have is None and obj.KIND == "route":       # a foreign route that forwards the same way
            held = dump.get("route", obj.key)
            assert held is not None and not attr_diff(obj, held), obj
            satisfied_by_foreign += 1
            continue
        assert have is not None and not attr_diff(obj, have), (obj, have)
    kept = sum(1 for kind, key in blocked if again.live.get(kind, key) is not None)
    assert all(kind == "route" for kind, key in blocked if again.live.get(kind, key) is not None)
    assert len(again.live) == len(first.desired) - len(blocked) - satisfied_by_foreign + kept


@SETTINGS
@given(cluster=clusters(ipv6=True), data=st.data())
def test_nexthop_layout_converges_safely_and_minimally(cluster, data):
    cfg, node = _setup(cluster, "nexthop")
    leases, _ = validate_leases(cfg, cluster.kvs, PREFIX)
    desired0 = desired_state(cfg, leases, node, cluster.on_link)
    kernel = data.draw(live_kernels(desired0, cfg.device_name))
    policy = FlannelOwnership(cfg)
    cycle = compute_cycle(cfg, cluster.kvs, PREFIX, node, dump_live(kernel, cfg), cluster.on_link)
    for c in cycle.plan:
        event(f"{c.op} {c.kind}")
    recreated, _ = side_effects(cycle)
    foreign_nh, foreign_routes = _foreign_nexthops(kernel, policy, recreated), _foreign_routes(kernel, policy)

    results = apply_plan(kernel, cycle.plan, cycle.desired)
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    touched = {(kind, key) for _op, kind, key in kernel.writes}
    assert not (already_right(cycle) & touched)
    dump = dump_live(kernel, cfg)
    again = compute_cycle(cfg, cluster.kvs, PREFIX, node, dump, cluster.on_link)
    if any(c.foreign.KIND == "nexthop" for c in cycle.plan.conflicts):
        _assert_converged_around_foreign_nexthops(cycle, again, dump)
    else:
        assert_converged(cycle, again, dump)
    assert _foreign_nexthops(kernel, policy, recreated) == foreign_nh
    assert {k: r for k, r in _foreign_routes(kernel, policy).items() if r.dev not in policy.devices} == \
        {k: r for k, r in foreign_routes.items() if r.dev not in policy.devices}


@SETTINGS
@given(cluster=clusters(ipv6=True), first=st.sampled_from(["onlink", "nexthop"]), data=st.data())
def test_switching_layouts_converges_without_losing_a_route(cluster, first, data):
    """Converge in one layout, switch: the plan converges, a second plan is
    empty, foreign nexthops are untouched, and no route that both layouts
    want is ever missing (it is re-pointed, never deleted and re-made)."""
    second = "nexthop" if first == "onlink" else "onlink"
    cfg, node_a = _setup(cluster, first)
    _, node_b = _setup(cluster, second)
    leases, _ = validate_leases(cfg, cluster.kvs, PREFIX)
    kernel = data.draw(live_kernels(desired_state(cfg, leases, node_a, cluster.on_link), cfg.device_name))
    a = compute_cycle(cfg, cluster.kvs, PREFIX, node_a, dump_live(kernel, cfg), cluster.on_link)
    assert all(r.ok for r in apply_plan(kernel, a.plan, a.desired))
    policy = FlannelOwnership(cfg)
    foreign_nh = _foreign_nexthops(kernel, policy)
    routes_before = {(dst, metric) for (table, dst, metric) in kernel.routes if table == 254}

    b = compute_cycle(cfg, cluster.kvs, PREFIX, node_b, dump_live(kernel, cfg), cluster.on_link)
    event(f"{first} -> {second}: {len(b.plan)} changes")
    # Watch the kernel between every batch: a route both layouts want never vanishes.
    wanted_both = {k for k in b.desired.of("route") if k in a.desired.of("route") and k in routes_before}
    real_apply = kernel.apply

    def watched(changes):
        out = real_apply(changes)
        present = {(dst, metric) for (table, dst, metric) in kernel.routes if table == 254}
        assert wanted_both <= present, wanted_both - present
        return out

    kernel.apply = watched
    assert all(r.ok for r in apply_plan(kernel, b.plan, b.desired))
    dump = dump_live(kernel, cfg)
    again = compute_cycle(cfg, cluster.kvs, PREFIX, node_b, dump, cluster.on_link)
    if any(c.foreign.KIND == "nexthop" for c in b.plan.conflicts):
        _assert_converged_around_foreign_nexthops(b, again, dump)
    else:
        assert_converged(b, again, dump)
    assert _foreign_nexthops(kernel, policy) == foreign_nh
    if second == "onlink":
        assert not any(policy.owns(nh) for nh in kernel.nexthops.values())


def test_switch_example_both_ways_on_the_model_kernel():
    """The three-node example, by hand: onlink -> nexthop -> onlink."""
    cfg = config()
    k = _kernel_with_devices()
    k.add_nexthop(Nexthop(7, "100.127.0.7", "flannel.1", True))          # foreign: left alone
    for layout in ("onlink", "nexthop", "onlink"):
        node = NodeParams(public_ip=host1, route_layout=layout)
        desired = desired_state(cfg, three_leases(), node)
        live = FlannelOwnership(cfg).filter(k.dump(["flannel.1", "cni0"], ["100.64.0.0/16"]))
        plan = make_plan(desired, live)
        assert all(r.ok for r in apply_plan(k, plan, desired))
        live = FlannelOwnership(cfg).filter(k.dump(["flannel.1", "cni0"], ["100.64.0.0/16"]))
        assert not make_plan(desired, live).changes
        assert 7 in k.nexthops
        ours = {i for i in k.nexthops if owned_nexthop_id(i)}
        assert ours == ({ID2, ID3} if layout == "nexthop" else set())
    assert {r.nhid for r in k.routes.values()} == {0}
    assert (Neigh("flannel.1", "100.64.2.0", mac2) in [e.neigh for e in k.neighs.values()]
            and Fdb("flannel.1", mac3, "198.18.0.3") in [e.fdb for e in k.fdbs.values()])


# ------------------------------------------------------------------- CLI

def test_offline_plan_with_the_nexthop_layout(capsys):
    from reconciler.cli.main import EXAMPLE_SNAPSHOT, main

    code = main(["plan", "--leases-file", str(EXAMPLE_SNAPSHOT), "--public-ip", "198.18.0.1", "--offline",
                 "--route-layout", "nexthop", "--iptables-forward-rules=false"])
    out, err = capsys.readouterr()
    assert code == 2 and err == ""
    assert out.endswith(
        "nexthop:\n"
        f"  + nexthop id {ID2} via 100.64.2.0 dev flannel.1 onlink\n"
        f"  + nexthop id {ID3} via 100.64.3.0 dev flannel.1 onlink\n"
        "route:\n"
        f"  + route 100.64.2.0/24 nhid {ID2}\n"
        f"  + route 100.64.3.0/24 nhid {ID3}\n"
        "Plan: 12 to create, 0 to update, 0 to delete.\n")


def test_a_bad_layout_from_the_environment_is_one_error_line(capsys, monkeypatch):
    from reconciler.cli.main import EXAMPLE_SNAPSHOT, main

    monkeypatch.setenv("FLANNELD_ROUTE_LAYOUT", "ecmp")
    code = main(["plan", "--leases-file", str(EXAMPLE_SNAPSHOT), "--public-ip", "198.18.0.1", "--offline"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err == "error: FLANNELD_ROUTE_LAYOUT='ecmp': must be one of onlink, nexthop\n"


# ------------------------------------------------------------------ agent

from tests.test_daemon import CONFIG, MAC2, MAC3, node_kernel, put_peer, start_agent, wait_for  # noqa: E402,F401


def test_the_agent_runs_the_nexthop_layout_and_follows_a_peer_leaving(etcd_store, start_agent):  # noqa: F811
    store = etcd_store
    store.put_config(CONFIG)
    key2 = put_peer(store, "100.64.2.0-24", "198.18.0.2", MAC2)
    put_peer(store, "100.64.3.0-24", "198.18.0.3", MAC3)
    kernel = node_kernel()
    start_agent(store, kernel, route_layout="nexthop").ready()
    assert {ID2, ID3} <= set(kernel.nexthops)
    routes = {r.dst: r for r in kernel.routes.values()}
    assert routes["100.64.2.0/24"].nhid == ID2 and routes["100.64.3.0/24"].nhid == ID3

    store.delete(key2)
    wait_for(lambda: ID2 not in kernel.nexthops, what="the nexthop of the peer that left removed")
    assert "100.64.2.0/24" not in {r.dst for r in kernel.routes.values()}
    assert ID3 in kernel.nexthops
