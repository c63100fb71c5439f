"""Peer leases that would capture the underlay are skipped with their reason, by `plan` and `show` too."""
from __future__ import annotations

import json

from reconciler.cli.main import main
from reconciler.agent.metrics import SKIP_REASONS, skip_reason_label
from reconciler.core.config import parse_network_config
from reconciler.core.leases import RawKV, validate_leases
from reconciler.core.underlay_guard import UnderlayGuard
from tests.strategies import lease_value

PREFIX = "/coreos.com/network"
OVERLAPPING = '{"Network":"198.18.0.0/15","SubnetLen":25,"Backend":{"Type":"vxlan"}}'


def _snapshot(tmp_path, leases: dict[str, str]) -> str:
    kvs = [{"key": f"{PREFIX}/config", "value": OVERLAPPING}]
    kvs += [{"key": f"{PREFIX}/subnets/{k}", "value": v} for k, v in leases.items()]
    path = tmp_path / "leases.json"
    path.write_text(json.dumps({"prefix": PREFIX, "revision": 1, "kvs": kvs}))
    return str(path)


def test_plan_skips_a_peer_subnet_that_holds_our_public_ip(tmp_path, capsys):
    """The issue's example: Network 198.18.0.0/15 over a 198.18.0.0/24 underlay, a peer leasing
    198.18.0.0/25.  Before, plan wrote '198.18.0.0/25 via 198.18.0.0 dev flannel.1 onlink'."""
    path = _snapshot(tmp_path, {
        "198.19.0.0-25": lease_value("198.18.0.1", "02:00:00:00:00:01", 1),
        "198.18.0.0-25": lease_value("203.0.113.2", "02:00:00:00:00:02", 1),
        "198.19.1.0-25": lease_value("198.18.0.3", "02:00:00:00:00:03", 1),
        "198.19.2.0-25": lease_value("203.0.113.4", "02:00:00:00:00:04", 1),
    })
    code = main(["plan", "--leases-file", path, "--public-ip", "198.18.0.1", "--offline", "--output", "json"])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert code == 2
    routes = sorted(c["object"]["dst"] for c in doc["changes"] if c["kind"] == "route")
    assert routes == ["198.19.2.0/25"]
    fdb = [c["object"]["dst"] for c in doc["changes"] if c["kind"] == "fdb"]
    assert fdb == ["203.0.113.4"]
    skipped = {s["key"].rsplit("/", 1)[1]: s["reason"] for s in doc["skipped"]}
    assert skipped == {
        "198.18.0.0-25": "underlay capture: subnet 198.18.0.0/25 contains our PublicIP 198.18.0.1",
        "198.19.1.0-25": "unusable PublicIP: 198.18.0.3 is inside the overlay Network 198.18.0.0/15",
    }
    assert "warning: skipped lease /coreos.com/network/subnets/198.18.0.0-25: underlay capture" in err


def test_the_skip_reasons_have_their_own_metric_labels():
    config = parse_network_config(OVERLAPPING)
    guard = UnderlayGuard.of("198.18.0.1", config.network, ["198.18.0.1/24", "192.0.2.1/24"])
    kvs = [RawKV(f"{PREFIX}/subnets/198.18.0.128-25", lease_value("203.0.113.2", "02:00:00:00:00:02", 1)),
           RawKV(f"{PREFIX}/subnets/198.19.2.0-25", lease_value("192.0.2.255", "02:00:00:00:00:03", 1))]
    _, skipped = validate_leases(config, kvs, PREFIX, guard)
    labels = [skip_reason_label(s.reason) for s in skipped]
    assert labels == ["underlay-capture", "unusable-public-ip"]
    assert set(labels) <= set(SKIP_REASONS)
