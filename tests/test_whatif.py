"""``plan --config``: every node's plan under a new network config, checked against the full
computation per node (``node_whatif_exact``: the new desired state against what the new ownership
rules see of today's converged state) on random clusters and config changes."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.config import parse_network_config
from reconciler.core.leases import validate_leases
from reconciler.core.whatif import NodeTemplate, cluster_whatif, node_whatif_exact
from tests.strategies import PREFIX, clusters

SEGMENT = NodeTemplate(segments=("198.18.0.0/25",))


def _mutations(draw, config: dict) -> dict:
    new = json.loads(json.dumps(config))
    backend = new["Backend"]
    for change in draw(st.lists(st.sampled_from(
            ["mtu", "vni", "port", "direct", "network", "narrow", "ipv6-off", "learning"]),
            min_size=0, max_size=3, unique=True)):
        if change == "mtu":
            backend["MTU"] = draw(st.sampled_from([1400, 1500, 9000]))
        elif change == "vni":
            backend["VNI"] = draw(st.sampled_from([1, 2, 42, 7]))
        elif change == "port":
            backend["Port"] = draw(st.sampled_from([0, 4789, 8472]))
        elif change == "direct":
            backend["DirectRouting"] = not backend.get("DirectRouting", False)
        elif change == "network":
            new["Network"] = "100.64.0.0/15"
        elif change == "narrow":
            new["Network"] = "100.64.0.0/17"       # subnets 128-199 fall outside
        elif change == "ipv6-off" and new.get("EnableIPv6"):
            new["EnableIPv6"] = False
            new.pop("IPv6Network")
        elif change == "learning":
            backend["Learning"] = True
    return new


@st.composite
def whatif_cases(draw):
    cluster = draw(clusters(ipv6=True))
    old = json.loads(cluster.config_json)
    new = _mutations(draw, old)
    template = draw(st.sampled_from([NodeTemplate(), SEGMENT, NodeTemplate(route_layout="nexthop"),
                                     NodeTemplate(bridge=None)]))
    return cluster, old, new, template


@settings(max_examples=200, deadline=None)
@given(whatif_cases())
def test_every_node_equals_its_full_computation(case):
    cluster, old_json, new_json, template = case
    old, new = parse_network_config(json.dumps(old_json)), parse_network_config(json.dumps(new_json))
    result = cluster_whatif(old, new, cluster.kvs, PREFIX, template)
    leases_old, _ = validate_leases(old, cluster.kvs, PREFIX)
    leases_new, skipped_new = validate_leases(new, cluster.kvs, PREFIX)
    new_keys = {lease.key for lease in leases_new}
    reasons = {s.key.rsplit("/", 1)[1]: s.reason for s in skipped_new}
    assert [n.key for n in result.nodes] == [lease.key for lease in leases_old]
    for lease, got in zip(leases_old, result.nodes):
        want = node_whatif_exact(old, new, leases_old, leases_new, lease, template,
                                 "" if lease.key in new_keys else reasons[lease.key])
        assert got == want, lease.key


def test_unchanged_config_plans_nothing_anywhere():
    cfg = parse_network_config(json.dumps({"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}))
    kvs = _kvs(3)
    result = cluster_whatif(cfg, cfg, kvs, PREFIX)
    assert result.in_sync and result.totals() == {} and not result.dropped


def test_mtu_change_updates_both_devices_on_every_node_and_nothing_else():
    old = parse_network_config(json.dumps({"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}))
    new = parse_network_config(json.dumps({"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan", "MTU": 1400}}))
    result = cluster_whatif(old, new, _kvs(4), PREFIX)
    assert result.totals() == {("update", "link"): 8}
    assert all(n.updated == (("cni0", ("mtu",)), ("flannel.1", ("mtu",))) for n in result.nodes)


def test_vni_change_creates_a_new_device_with_every_entry_and_leaves_the_old_one():
    old = parse_network_config(json.dumps({"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}))
    new = parse_network_config(json.dumps({"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan", "VNI": 2}}))
    result = cluster_whatif(old, new, _kvs(3, vni_in_lease=1), PREFIX)
    # Today's leases carry VNI 1: under VNI 2 every node skips every lease, its own included, until
    # the nodes re-acquire; the what-if says so rather than pretending.
    assert all(n.loses_lease.startswith("VNI 1 differs") for n in result.nodes)
    assert len(result.dropped) == 3


def test_narrowed_network_drops_the_leases_outside_and_leaves_their_routes():
    old = parse_network_config(json.dumps({"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}))
    new = parse_network_config(json.dumps({"Network": "100.64.0.0/17", "Backend": {"Type": "vxlan"}}))
    kvs = _kvs(3, subnets=(1, 2, 200))
    result = cluster_whatif(old, new, kvs, PREFIX)
    assert [s.key.rsplit("/", 1)[1] for s in result.dropped] == ["100.64.200.0-24"]
    first = result.nodes[0]
    # The peer's neighbour and FDB entry go; its route is outside the new Network, so it is no
    # longer ours to delete and stays behind.
    assert dict(((op, kind), n) for op, kind, n in first.changes) == {("delete", "fdb"): 1, ("delete", "neigh"): 1}
    assert first.left_behind == (("route", 1),)
    assert result.nodes[2].loses_lease.startswith("subnet 100.64.200.0/24 is outside Network")


def _kvs(n, vni_in_lease=1, subnets=None):
    from reconciler.core.leases import RawKV
    from tests.strategies import lease_value

    subnets = subnets or tuple(range(1, n + 1))
    return tuple(RawKV(f"{PREFIX}/subnets/100.64.{s}.0-24",
                       lease_value(f"198.18.0.{i + 1}", f"02:00:00:00:01:{i + 1:02x}", vni_in_lease),
                       lease=5, mod_revision=i + 1) for i, s in enumerate(subnets))


def test_plan_config_command_text_json_exit_codes_and_a_bad_file(tmp_path, capsys):
    from reconciler.cli.main import main

    example = "reconciler/examples/cluster-3-nodes.json"
    same = tmp_path / "same.json"
    same.write_text(json.dumps({"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}))
    assert main(["plan", "--leases-file", example, "--config", str(same)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Cluster: 3 nodes, no changes."
    mtu = tmp_path / "mtu.json"
    mtu.write_text(json.dumps({"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "MTU": 1400}}))
    assert main(["plan", "--leases-file", example, "--config", str(mtu)]) == 2
    out = capsys.readouterr().out
    assert out.startswith("config: mtu None -> 1400\n") and "3 nodes (198.18.0.1, 198.18.0.2, 198.18.0.3): 2 update link" in out
    assert main(["plan", "--leases-file", example, "--config", str(mtu), "--output", "json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"] == [{"op": "update", "kind": "link", "count": 6}] and len(doc["nodes"]) == 3
    bad = tmp_path / "bad.json"
    bad.write_text('{"Network": "100.64.0.0/16", "Backend": {"Type": "host-gw"}}')
    assert main(["plan", "--leases-file", example, "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --config {bad}: ") and err.count("\n") == 1
