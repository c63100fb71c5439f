"""``explain`` against a real kernel: a node namespace converged by ``apply``, then one link of the
path to a peer's pod broken at a time with iproute2/iptables; ``explain`` must name exactly that
link (exit 2) and say the path is complete again once it is repaired (exit 0)."""
from __future__ import annotations

import json

import pytest

from reconciler.rules import IptablesBackend
from tests.netns import run
from tests.test_kernel_e2e import PREFIX, THREE, cli, lease_value, node_args, snapshot

pytestmark = pytest.mark.root

POD = "100.64.2.5"          # a pod of node 2 (198.18.0.2, VtepMAC 0a:58:64:40:02:00)


def _leases(tmp_path) -> str:
    snap = snapshot(THREE)
    # A lease every node skips: another VNI.
    snap["kvs"].append({"key": f"{PREFIX}/subnets/100.64.9.0-24", "lease": 0,
                        "value": lease_value("198.18.0.9", "0a:58:64:40:09:00", vni=2)})
    path = tmp_path / "leases.json"
    path.write_text(json.dumps(snap))
    return str(path)


def explain(capsys, args, target=POD) -> tuple[int, dict]:
    rc, out, err = cli(capsys, "explain", target, *args, "--output", "json")
    assert rc in (0, 2), err
    return rc, json.loads(out)


def first_broken(doc: dict) -> tuple[str, str] | None:
    return next(((link["link"], link["status"]) for link in doc["links"] if link["status"] not in ("ok", "info")),
                None)


@pytest.fixture
def node(underlay_factory, tmp_path, capsys):
    ns = underlay_factory(1).nodes[0].ns
    args = node_args(_leases(tmp_path), ns)
    rc, out, err = cli(capsys, "apply", *args)
    assert rc == 0, out + err
    rc, doc = explain(capsys, args)
    assert (rc, first_broken(doc), doc["complete"]) == (0, None, True), doc
    return ns, args


def _fwd_rule(ns: str, op: str) -> None:
    xt = IptablesBackend(ns).detect()
    run(ns, f"iptables-{xt}", op, "FLANNEL-FWD", "-d", "100.64.0.0/16", "-m", "comment", "--comment",
        "flanneld forward", "-j", "ACCEPT")


# Each break: (what is done, the link explain must name, its status, how it is repaired).
BREAKS = {
    "route": (["ip", "route", "del", "100.64.2.0/24", "dev", "flannel.1"], ("route", "missing"), "apply"),
    "neighbour": (["ip", "neigh", "del", "100.64.2.0", "dev", "flannel.1"], ("neighbour", "missing"), "apply"),
    "fdb": (["bridge", "fdb", "del", "0a:58:64:40:02:00", "dev", "flannel.1"], ("fdb entry", "missing"), "apply"),
    "device down": (["ip", "link", "set", "flannel.1", "down"], ("device", "down"), "apply"),
    # The underlay's MTU lowered under the device: full-size packets no longer fit; apply lowers
    # the device's MTU to match.
    "mtu": (["ip", "link", "set", "eth0", "mtu", "1400"], ("device", "mtu"), "apply"),
    "underlay route": (["ip", "route", "add", "unreachable", "198.18.0.2/32"], ("underlay", "unreachable"),
                       ["ip", "route", "del", "unreachable", "198.18.0.2/32"]),
    "underlay into the tunnel": (["ip", "route", "add", "198.18.0.2/32", "dev", "flannel.1"], ("underlay", "loop"),
                                 ["ip", "route", "del", "198.18.0.2/32", "dev", "flannel.1"]),
    "forward rule": ("-D", ("forward rule", "missing"), "apply"),
    "foreign route": ([["ip", "route", "del", "100.64.2.0/24", "dev", "flannel.1"],
                       ["ip", "route", "add", "100.64.2.0/24", "via", "198.18.0.2", "dev", "eth0"]],
                      ("route", "foreign"), ["ip", "route", "del", "100.64.2.0/24", "via", "198.18.0.2"]),
}


def _do(ns, capsys, args, step):
    if step == "apply":
        rc, out, err = cli(capsys, "apply", *args)
        assert rc == 0, out + err
    elif step in ("-D", "-A"):
        _fwd_rule(ns, step)
    elif isinstance(step[0], list):
        for cmd in step:
            run(ns, *cmd)
    else:
        run(ns, *step)


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_explain_names_exactly_the_broken_link_and_clears_once_repaired(node, capsys, name):
    ns, args = node
    breaker, want, repair = BREAKS[name]
    _do(ns, capsys, args, breaker)
    rc, doc = explain(capsys, args)
    assert (rc, first_broken(doc)) == (2, want), doc
    assert doc["verdict"].startswith(f"{want[0]} {want[1]}")
    _do(ns, capsys, args, repair)
    if name == "foreign route":
        _do(ns, capsys, args, "apply")       # the foreign route gone, ours is written again
    rc, doc = explain(capsys, args)
    assert (rc, first_broken(doc)) == (0, None), doc


def test_a_target_no_lease_covers_and_a_skipped_lease(node, capsys):
    ns, args = node
    rc, doc = explain(capsys, args, "100.64.7.5")
    assert (rc, first_broken(doc)) == (2, ("lease", "no-lease")) and doc["resolved"] == "none"
    rc, doc = explain(capsys, args, "100.64.9.5")
    assert (rc, first_broken(doc)) == (2, ("lease", "skipped"))
    assert doc["key"] == f"{PREFIX}/subnets/100.64.9.0-24" and "VNI 2 differs" in doc["reason"]


def test_targets_by_publicip_subnet_and_key_resolve_to_the_same_lease(node, capsys):
    ns, args = node
    for target in ("198.18.0.3", "100.64.3.0/24", "100.64.3.0-24", f"{PREFIX}/subnets/100.64.3.0-24"):
        rc, doc = explain(capsys, args, target)
        assert (rc, doc["resolved"], doc["key"]) == (0, "peer", f"{PREFIX}/subnets/100.64.3.0-24"), target
    rc, doc = explain(capsys, args, "100.64.1.7")     # our own subnet: the pod bridge
    assert (rc, doc["resolved"]) == (0, "local") and [l["link"] for l in doc["links"]][:2] == ["lease", "bridge"]
    rc, out, err = cli(capsys, "explain", POD, *args)
    assert rc == 0 and out.endswith("ok: path to 100.64.2.5 is complete\n") and "fdb entry" in out


def test_a_target_that_is_not_an_address_is_one_error_line(node, capsys):
    ns, args = node
    rc, out, err = cli(capsys, "explain", "not-a-target", *args, "--output", "json")
    assert rc == 2 and json.loads(out)["resolved"] == "none"
