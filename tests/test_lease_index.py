"""The incremental lease table gives exactly what validating the whole snapshot gives."""
from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.config import parse_network_config
from reconciler.incremental.lease_index import LeaseIndex
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


def _check(index: LeaseIndex, table: dict[str, RawKV], config) -> None:
    leases, skipped = validate_leases(config, table.values(), PREFIX)
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
