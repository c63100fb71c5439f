"""flanneld's -ip-blackhole-route as desired state: a blackhole route for our own subnet(s),
planned, shown, written and repaired like every other object (docs/flags.md).

Pure: the desired objects, per family.  Model kernel: a converged node plans nothing.  Real
kernel (a namespace per test, both netlink backends): ``ip route`` shows it, the bridge's
connected route still wins, a manual delete is repaired, and a foreign blackhole at the same
key is a conflict, never taken over.
"""
from __future__ import annotations

import json

import pytest

from reconciler.core.config import parse_network_config
from reconciler.core.desired import BLACKHOLE_METRIC, NodeParams, desired_state
from reconciler.core.model import KernelState, Route
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.render import describe
from tests.netns import run
from tests.test_dual_stack import DUAL, ME, dual_lease
from tests.test_kernel_e2e import THREE, cli, node_args, write_snapshot

V4_HOLE = Route("100.64.1.0/24", None, None, False, BLACKHOLE_METRIC, type="blackhole")


def _routes(state: KernelState) -> list[Route]:
    return [o for o in state if isinstance(o, Route)]


def test_desired_blackhole_for_each_family_of_our_lease_and_nothing_without_the_flag():
    leases = [dual_lease(1, ip=ME), dual_lease(2)]
    with_flag = desired_state(DUAL, leases, NodeParams(public_ip=ME, public_ipv6="fd00:198:18::1",
                                                       blackhole=True))
    holes = [r for r in _routes(with_flag) if r.type == "blackhole"]
    assert holes == [V4_HOLE, Route("fd00:100:64:1::/64", None, None, False, BLACKHOLE_METRIC,
                                    type="blackhole")]
    assert describe(V4_HOLE) == "route blackhole 100.64.1.0/24 metric 4294967295"
    without = desired_state(DUAL, leases, NodeParams(public_ip=ME, public_ipv6="fd00:198:18::1"))
    assert not [r for r in _routes(without) if r.type == "blackhole"]
    assert len(with_flag) == len(without) + 2


def test_blackhole_round_trips_through_the_json_forms():
    assert V4_HOLE.to_json() == {"dst": "100.64.1.0/24", "gateway": None, "dev": None, "onlink": False,
                                 "metric": BLACKHOLE_METRIC, "type": "blackhole"}
    assert Route.from_json({"dst": "100.64.1.0/24", "metric": BLACKHOLE_METRIC, "type": "blackhole"}) == V4_HOLE
    with pytest.raises(TypeError, match="type must be one of unicast, blackhole"):
        Route.from_json({"dst": "100.64.1.0/24", "gateway": None, "dev": None, "type": "prohibit"})


def test_model_kernel_converges_and_a_unicast_route_at_the_key_is_replaced():
    cfg = parse_network_config('{"Network":"100.64.0.0/16","Backend":{"Type":"vxlan"}}')
    from tests.test_daemon import node_kernel  # a model node with its underlay

    kernel = node_kernel()
    from reconciler.core.leases import parse_snapshot
    from reconciler.core.reconcile import compute_cycle, on_link_predicate
    from reconciler.kernel.apply import apply_plan
    from reconciler.cli.main import EXAMPLE_SNAPSHOT

    snap = parse_snapshot(EXAMPLE_SNAPSHOT.read_text())
    node = NodeParams(public_ip="198.18.0.1", underlay="eth0", blackhole=True)
    own = FlannelOwnership(cfg)

    def cycle():
        live = kernel.dump(own.devices, [str(cfg.network)])
        return compute_cycle(cfg, snap.kvs, snap.prefix, node, live, on_link_predicate(()))

    first = cycle()
    assert any(c.obj == V4_HOLE and c.op == "create" for c in first.plan.changes)
    assert all(r.ok for r in apply_plan(kernel, first.plan, first.desired))
    assert cycle().plan.changes == ()
    kernel.add_route(Route("100.64.1.0/24", "198.18.0.9", "eth0", False, BLACKHOLE_METRIC, 73))
    drift = cycle()
    assert [(c.op, c.obj) for c in drift.plan.changes] == [("update", V4_HOLE)]


# ------------------------------------------------------------------- the real kernel

def _ip_routes(ns: str) -> list[dict]:
    return json.loads(run(ns, "ip", "-j", "route", "show", "table", "main").stdout)


def _holes(ns: str) -> list[dict]:
    return [r for r in _ip_routes(ns) if r.get("type") == "blackhole"]


@pytest.mark.root
@pytest.mark.parametrize("backend", ["batched", "pyroute2"])
def test_real_kernel_blackhole_written_repaired_and_never_taken_over(underlay_factory, tmp_path, capsys, backend):
    ns = underlay_factory(1).nodes[0].ns
    leases = write_snapshot(tmp_path / "leases.json", THREE)
    args = [*node_args(leases, ns), "--netlink-backend", backend, "-ip-blackhole-route"]

    rc, out, err = cli(capsys, "plan", *args)
    assert rc == 2 and "+ route blackhole 100.64.1.0/24 metric 4294967295\n" in out, out + err
    rc, out, err = cli(capsys, "apply", *args)
    assert rc == 0, out + err
    assert _holes(ns) == [{"type": "blackhole", "dst": "100.64.1.0/24", "protocol": "73",
                           "metric": BLACKHOLE_METRIC, "flags": []}]
    # The bridge's connected route still wins for the pods; the blackhole only backs it.
    assert "dev cni0" in run(ns, "ip", "route", "get", "100.64.1.9").stdout
    assert cli(capsys, "plan", *args)[0] == 0
    assert cli(capsys, "plan", *node_args(leases, ns), "--netlink-backend", backend)[1].count(
        "- route blackhole 100.64.1.0/24") == 1          # without the flag it is ours to remove

    # A manual delete is drift like any other.
    run(ns, "ip", "route", "del", "blackhole", "100.64.1.0/24", "metric", str(BLACKHOLE_METRIC))
    rc, out, _ = cli(capsys, "plan", *args)
    assert rc == 2 and "+ route blackhole 100.64.1.0/24" in out
    assert cli(capsys, "apply", *args)[0] == 0 and len(_holes(ns)) == 1

    # Someone else's blackhole at the same key does what ours would: it satisfies ours and is left
    # as it is (the foreign-route rule of every route, README "Conflicts"), never rewritten as ours.
    run(ns, "ip", "route", "del", "blackhole", "100.64.1.0/24", "metric", str(BLACKHOLE_METRIC))
    run(ns, "ip", "route", "add", "blackhole", "100.64.1.0/24", "metric", str(BLACKHOLE_METRIC), "proto", "static")
    assert cli(capsys, "plan", *args)[0] == 0
    assert cli(capsys, "apply", *args)[0] == 0
    assert [h["protocol"] for h in _holes(ns)] == ["static"]
    # A foreign route at the key that forwards instead: a conflict, reported and left alone.
    run(ns, "ip", "route", "del", "blackhole", "100.64.1.0/24", "metric", str(BLACKHOLE_METRIC))
    run(ns, "ip", "route", "add", "100.64.1.0/24", "via", "198.18.0.254", "dev", "eth0",
        "metric", str(BLACKHOLE_METRIC), "proto", "static")
    rc, out, err = cli(capsys, "plan", *args)
    assert rc == 2 and "conflict" in out and "blackhole 100.64.1.0/24" in out, out + err
    rc, out, err = cli(capsys, "apply", *args)
    assert rc == 1 and "error: conflict: route blackhole 100.64.1.0/24" in err, out + err
    assert not _holes(ns)
    assert "via 198.18.0.254 dev eth0 proto static metric 4294967295" in run(
        ns, "ip", "route", "show", "100.64.1.0/24").stdout


@pytest.mark.root
@pytest.mark.parametrize("backend", ["batched", "pyroute2"])
def test_real_kernel_dual_stack_gets_both_blackholes(underlay_factory, tmp_path, capsys, backend):
    from tests.test_dual_stack_kernel import args as dual_args, write_leases

    ns = underlay_factory(1, ipv6=True).nodes[0].ns
    argv = dual_args(write_leases(tmp_path / "leases.json"), ns, "--netlink-backend", backend, "-ip-blackhole-route")
    rc, out, err = cli(capsys, "apply", *argv)
    assert rc == 0 and "+ route blackhole fd00:100:64:1::/64 metric 4294967295" in out, out + err
    holes6 = [r for r in json.loads(run(ns, "ip", "-6", "-j", "route", "show", "table", "main").stdout)
              if r.get("type") == "blackhole"]
    assert [(r["dst"], r["protocol"], r["metric"]) for r in holes6] == [("fd00:100:64:1::/64", "73", BLACKHOLE_METRIC)]
    assert [r["dst"] for r in _holes(ns)] == ["100.64.1.0/24"]
    assert "dev cni0" in run(ns, "ip", "-6", "route", "get", "fd00:100:64:1::9").stdout   # the bridge's wins
    assert cli(capsys, "plan", *argv)[0] == 0
