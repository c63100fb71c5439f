"""The incremental lease table gives exactly what validating the whole snapshot gives."""
from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.config import parse_network_config
from reconciler.incremental.lease_index import LeaseIndex
from reconciler.core.underlay_guard import UnderlayGuard
from reconciler.core.leases import RawKV, validate_leases
from tests.strategies import PREFIX, lease_value, macs

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "200"))
CONFIG = parse_network_config('{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}')
CONFIG6 = parse_network_config('{"Network":"100.64.0.0/16","SubnetLen":24,"EnableIPv6":true,'
                               '"IPv6Network":"fd00:64::/56","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}')


@st.composite
def events(draw, dual: bool):
    """A put or delete on a small key space, with small pools of MACs and IPs so that conflicts happen."""
    sid = draw(st.integers(1, 6))
    key = f"{PREFIX}/subnets/100.64.{sid}.0-24"
    if draw(st.integers(0, 5)) == 0:
        return ("delete", key)
    host = draw(st.integers(1, 4))
    mac = draw(st.sampled_from(["02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"]))
    shape = draw(st.integers(0, 9))
    if shape == 0:
        value = "{not json"
    elif shape == 1:
        value = lease_value(f"198.18.0.{host}", mac, 2)             # wrong VNI
    elif shape == 2:
        value = lease_value(f"198.18.0.{host}", draw(macs), 1, backend="host-gw")
    elif dual and shape >= 6:
        key += f"&fd00:64:0:{sid:x}::-64"
        value = lease_value(f"198.18.0.{host}", mac, 1, public_ipv6=f"fd00:18::{host:x}",
                            mac6=draw(st.sampled_from(["02:00:00:00:06:01", "02:00:00:00:06:02"])))
    else:
        value = lease_value(f"198.18.0.{host}", mac, 1)
    return ("put", RawKV(key, value, lease=draw(st.sampled_from([0, 7001])), mod_revision=0))


def _check(index: LeaseIndex, table: dict[str, RawKV], config, guard=None) -> None:
    leases, skipped = validate_leases(config, table.values(), PREFIX, guard)
    assert index.leases() == leases
    assert index.skips() == skipped
    for lease in leases:
        assert index.valid[index.key_of_public_ip(lease.public_ip)] == lease


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.booleans().flatmap(lambda dual: st.tuples(st.just(dual), st.lists(events(dual), max_size=30))))
def test_incremental_index_equals_full_validation(case):
    dual, evs = case
    config = CONFIG6 if dual else CONFIG
    index = LeaseIndex(config, PREFIX)
    table: dict[str, RawKV] = {}
    rev = 0
    for op, arg in evs:
        before = {k: index.status(k) for k in set(table) | {getattr(arg, "key", arg)}}
        rev += 1
        if op == "put":
            kv = RawKV(arg.key, arg.value, arg.lease, mod_revision=rev)
            table[kv.key] = kv
            changed = index.put(kv)
        else:
            table.pop(arg, None)
            changed = index.delete(arg)
        _check(index, table, config)
        # What it says changed is exactly what changed.
        after = {k: index.status(k) for k in before}
        assert changed == {k for k in before if before[k] != after[k]}


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(events(False), max_size=20), st.lists(events(False), max_size=20))
def test_replace_all_equals_full_validation(first, second):
    index = LeaseIndex(CONFIG, PREFIX)
    for n, evs in enumerate((first, second)):
        table: dict[str, RawKV] = {}
        for rev, (op, arg) in enumerate(evs, start=1 + 100 * n):
            if op == "put":
                table[arg.key] = RawKV(arg.key, arg.value, arg.lease, mod_revision=rev)
            else:
                table.pop(arg, None)
        index.replace_all(table.values())
        _check(index, table, CONFIG)


def test_reput_of_the_same_value_changes_nothing_and_parses_nothing(monkeypatch):
    index = LeaseIndex(CONFIG, PREFIX)
    kv = RawKV(f"{PREFIX}/subnets/100.64.1.0-24", lease_value("198.18.0.1", "02:00:00:00:00:01", 1), 7001, 5)
    assert index.put(kv) == {kv.key}
    import reconciler.incremental.lease_index as mod

    def boom(*_a, **_k):
        raise AssertionError("parsed again")

    monkeypatch.setattr(mod, "parse_lease", boom)
    assert index.put(RawKV(kv.key, kv.value, kv.lease, 9)) == set()


def test_an_unrivalled_reput_decides_nothing_again_but_a_rivals_reput_reranks(monkeypatch):
    """A re-put of the same bytes moves only the revision: alone in its claims, a lease keeps its
    standing without its component being decided again (a rolling restart is thousands of these);
    with a rival, the newer revision loses the claim to the older lease."""

    a = RawKV(f"{PREFIX}/subnets/100.64.1.0-24", lease_value("198.18.0.1", "02:00:00:00:00:01", 1), 0, 1)
    b = RawKV(f"{PREFIX}/subnets/100.64.2.0-24", lease_value("198.18.0.2", "02:00:00:00:00:02", 1), 0, 2)
    index = LeaseIndex(CONFIG, PREFIX)
    index.put(a)
    index.put(b)
    resolved = []
    real = index._resolve
    monkeypatch.setattr(index, "_resolve", lambda seeds: resolved.append(seeds) or real(seeds))
    assert index.put(RawKV(a.key, a.value, 0, 3)) == set() and resolved == []
    assert set(index.valid) == {a.key, b.key}
    rival = RawKV(f"{PREFIX}/subnets/100.64.3.0-24", lease_value("198.18.0.3", "02:00:00:00:00:01", 1), 0, 4)
    index.put(rival)
    assert rival.key in index.skipped                 # a (revision 3) is older
    assert index.put(RawKV(a.key, a.value, 0, 5)) == {a.key, rival.key}
    assert rival.key in index.valid and a.key in index.skipped
    assert index.leases() == validate_leases(CONFIG, [RawKV(a.key, a.value, 0, 5), b, rival], PREFIX)[0]


def test_freeing_a_mac_lets_the_older_loser_win():
    a = RawKV(f"{PREFIX}/subnets/100.64.1.0-24", lease_value("198.18.0.1", "02:00:00:00:00:01", 1), 0, 1)
    b = RawKV(f"{PREFIX}/subnets/100.64.2.0-24", lease_value("198.18.0.2", "02:00:00:00:00:01", 1), 0, 2)
    index = LeaseIndex(CONFIG, PREFIX)
    index.put(a)
    index.put(b)
    assert b.key in index.skipped and "conflict: VtepMAC" in index.skipped[b.key].reason
    moved = RawKV(a.key, lease_value("198.18.0.1", "02:00:00:00:00:09", 1), 0, 3)
    assert index.put(moved) == {a.key, b.key}
    assert set(index.valid) == {a.key, b.key}


def test_the_pinned_lease_wins_its_claims_and_the_other_is_reported():
    """An older lease with our PublicIP must not shadow the one we hold."""
    old = RawKV(f"{PREFIX}/subnets/100.64.1.0-24", lease_value("198.18.0.1", "02:00:00:00:00:01", 1), 7001, 1)
    held = RawKV(f"{PREFIX}/subnets/100.64.2.0-24", lease_value("198.18.0.1", "02:00:00:00:00:01", 1), 0, 2)
    index = LeaseIndex(CONFIG, PREFIX)
    index.replace_all([old, held])
    assert index.key_of_public_ip("198.18.0.1") == old.key
    assert index.pin(held.key) == {old.key, held.key}
    assert index.key_of_public_ip("198.18.0.1") == held.key
    assert index.skipped[old.key].reason.startswith("conflict: ")
    assert index.parsed(old.key).public_ip == "198.18.0.1"
    # Unpinning gives validate_leases' answer again.
    index.pin(None)
    leases, _ = validate_leases(CONFIG, [old, held], PREFIX)
    assert index.leases() == leases


#: Underlay facts that make the event pool hit every guard reason: 198.18.0.1 is us, 100.64.3.0/24
#: overlaps an underlay prefix, 198.18.0.3 is the broadcast address of 198.18.0.0/30.
GUARD = UnderlayGuard.of("198.18.0.1", CONFIG.network, ["100.64.3.5/24", "198.18.0.1/30"])


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(events(False), max_size=30), st.integers(0, 30))
def test_index_with_underlay_guard_equals_full_validation(evs, switch_at):
    """With node facts, and when they change half-way (the underlay moved), the index still gives
    exactly validate_leases' answer."""
    index = LeaseIndex(CONFIG, PREFIX)
    table: dict[str, RawKV] = {}
    guard = None
    for rev, (op, arg) in enumerate(evs, start=1):
        if rev == switch_at:
            before = {k: index.status(k) for k in table}
            guard = GUARD
            changed = index.set_guard(guard)
            assert changed == {k for k in before if before[k] != index.status(k)}
        if op == "put":
            table[arg.key] = RawKV(arg.key, arg.value, arg.lease, mod_revision=rev)
            index.put(table[arg.key])
        else:
            table.pop(arg, None)
            index.delete(arg)
        _check(index, table, CONFIG, guard)


def test_underlay_guard_skips_leases_that_would_capture_the_underlay():
    """A Network overlapping the underlay: a peer subnet holding our PublicIP or overlapping the
    underlay's prefix, and PublicIPs that cannot be a peer, are skipped with their reason."""
    config = parse_network_config('{"Network":"198.18.0.0/15","SubnetLen":25,"Backend":{"Type":"vxlan"}}')
    guard = UnderlayGuard.of("198.18.0.1", config.network, ["198.18.0.1/24"])
    ours = RawKV(f"{PREFIX}/subnets/198.19.0.0-25", lease_value("198.18.0.1", "02:00:00:00:00:01", 1))
    capture = RawKV(f"{PREFIX}/subnets/198.18.0.0-25", lease_value("192.0.2.7", "02:00:00:00:00:02", 1))
    upper = RawKV(f"{PREFIX}/subnets/198.18.0.128-25", lease_value("192.0.2.8", "02:00:00:00:00:03", 1))
    inside = RawKV(f"{PREFIX}/subnets/198.19.1.0-25", lease_value("198.18.0.2", "02:00:00:00:00:04", 1))
    bcast = RawKV(f"{PREFIX}/subnets/198.19.2.0-25", lease_value("192.0.2.255", "02:00:00:00:00:05", 1))
    fine = RawKV(f"{PREFIX}/subnets/198.19.3.0-25", lease_value("192.0.2.9", "02:00:00:00:00:06", 1))
    guard2 = UnderlayGuard.of("198.18.0.1", config.network, ["198.18.0.1/24", "192.0.2.1/24"])
    leases, skipped = validate_leases(config, [ours, capture, upper, inside, bcast, fine], PREFIX, guard2)
    assert [lease.key for lease in leases] == ["198.19.0.0-25", "198.19.3.0-25"]
    reasons = {s.key.rsplit("/", 1)[1]: s.reason for s in skipped}
    assert reasons["198.18.0.0-25"] == "underlay capture: subnet 198.18.0.0/25 contains our PublicIP 198.18.0.1"
    assert reasons["198.18.0.128-25"] == ("underlay capture: subnet 198.18.0.128/25 overlaps the underlay "
                                          "prefix 198.18.0.0/24")
    assert reasons["198.19.1.0-25"] == "unusable PublicIP: 198.18.0.2 is inside the overlay Network 198.18.0.0/15"
    assert reasons["198.19.2.0-25"] == ("unusable PublicIP: 192.0.2.255 is the broadcast address of the underlay "
                                        "prefix 192.0.2.0/24")
    # Without node facts (plain validation) all of them are valid: the check is the guard's.
    assert len(validate_leases(config, [ours, capture, upper, inside, bcast, fine], PREFIX)[0]) == 6
    index = LeaseIndex(config, PREFIX, guard)
    index.replace_all([ours, capture, fine])
    assert set(index.valid) == {ours.key, fine.key}
