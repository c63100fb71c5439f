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


def _reference_reason(guard, lease):
    """The guard's rules in ipaddress's own terms: what the integer arithmetic must equal."""
    from ipaddress import IPv4Address

    if guard.public_ip is not None and lease.public_ip == guard.public_ip:
        return None
    if guard.public_ip is not None and IPv4Address(guard.public_ip) in lease.subnet:
        return f"underlay capture: subnet {lease.subnet} contains our PublicIP {guard.public_ip}"
    for prefix in guard.prefixes:
        if lease.subnet.overlaps(prefix):
            return f"underlay capture: subnet {lease.subnet} overlaps the underlay prefix {prefix}"
    peer = IPv4Address(lease.public_ip)
    if guard.network is not None and peer in guard.network:
        return f"unusable PublicIP: {peer} is inside the overlay Network {guard.network}"
    for prefix in guard.prefixes:
        if prefix.prefixlen < 31 and peer == prefix.broadcast_address:
            return f"unusable PublicIP: {peer} is the broadcast address of the underlay prefix {prefix}"
    return None


def test_the_guards_integer_checks_equal_the_ipaddress_rules():
    from ipaddress import IPv4Network
    from types import SimpleNamespace

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from reconciler.core.underlay_guard import UnderlayGuard

    octets = st.tuples(st.sampled_from([100, 198, 10]), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
    ips = octets.map(lambda o: ".".join(map(str, o)))
    nets = st.tuples(ips, st.integers(0, 32)).map(lambda t: IPv4Network(f"{t[0]}/{t[1]}", strict=False))

    @settings(max_examples=500, deadline=None)
    @given(st.one_of(st.none(), ips), st.one_of(st.none(), nets), st.lists(st.tuples(ips, st.integers(8, 32)), max_size=3),
           nets, ips)
    def check(me, network, prefixes, subnet, public_ip):
        guard = UnderlayGuard.of(me, network, [f"{ip}/{plen}" for ip, plen in prefixes])
        lease = SimpleNamespace(subnet=subnet, public_ip=public_ip)
        assert guard.peer_reason(lease) == _reference_reason(guard, lease)

    check()
