"""The contract every backend is held to, as properties over random clusters.

For any cluster (with bad and conflicting leases) and any damaged live
kernel (missing, drifted, stale and foreign objects), one plan applied
through the backend:

1. converges: the owned live state equals the desired state;
2. is complete: a second plan is empty;
3. is safe: every foreign object is untouched;
4. is minimal: no operation touches an object that was already right;
5. is deterministic: the plan does not depend on the order of the leases.
"""
from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reconciler.kernel.apply import apply_plan
from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams
from reconciler.core.model import attr_diff
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.reconcile import compute_cycle, dump_live
from tests.contract import already_right, assert_converged, side_effects
from tests.strategies import PREFIX, UNDERLAY, Cluster, clusters, live_kernels

# PROPERTY_EXAMPLES=5000 for a deeper search; at least 200 in every run.
SETTINGS = settings(max_examples=max(200, int(os.environ.get("PROPERTY_EXAMPLES", "200"))), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _setup(cluster: Cluster):
    config = parse_network_config(cluster.config_json)
    node = NodeParams(public_ip=cluster.public_ip, underlay_mtu=1500, underlay=UNDERLAY)
    return config, node


def _cycle(cluster, config, node, kernel):
    return compute_cycle(config, cluster.kvs, PREFIX, node, dump_live(kernel, config), cluster.on_link)


def _foreign(kernel, policy, spared_devices, neigh_flushed=frozenset(), desired_neighs=frozenset()):
    """Everything not owned, except what lives on a device the plan re-creates
    (the kernel drops those with the device, by design), and the neighbours of
    a device whose MAC the plan changes (the kernel flushes them).  A learned
    (non-permanent) neighbour at the key of a neighbour we want is the
    kernel's cache, not somebody's state: ``replace`` makes it ours."""
    from reconciler.core.model import Address

    everything = kernel.everything()
    out = {}
    out["links"] = {n: v for n, v in everything["links"].items() if n not in policy.devices}
    out["masters"] = {n: v[2] for n, v in everything["links"].items() if n not in policy.devices}
    out["addresses"] = {a for a in everything["addresses"]
                        if not policy.owns(Address(*a)) and a[0] not in spared_devices}
    out["routes"] = {k: r for k, r in everything["routes"].items()
                     if (k[0] != 254 or not policy.owns(r)) and r.dev not in spared_devices}
    out["neighs"] = {k: v for k, v in everything["neighs"].items()
                     if (not v[1] or not policy.owns(v[0])) and k[0] not in spared_devices
                     and k[0] not in neigh_flushed and k not in desired_neighs}
    out["fdbs"] = {k: v for k, v in everything["fdbs"].items()
                   if (not v[1] or not policy.owns(v[0])) and k[0] not in spared_devices}
    return out


@SETTINGS
@given(cluster=clusters(ipv6=True), data=st.data())
def test_plan_converges_safely_and_minimally(cluster, data):
    config, node = _setup(cluster)
    from reconciler.core.desired import desired_state
    from reconciler.core.leases import validate_leases

    leases, _ = validate_leases(config, cluster.kvs, PREFIX)
    desired0 = desired_state(config, leases, node, cluster.on_link)
    kernel = data.draw(live_kernels(desired0, config.device_name))
    policy = FlannelOwnership(config)

    cycle = _cycle(cluster, config, node, kernel)
    recreated, mac_changed = side_effects(cycle)
    for c in cycle.plan:
        event(f"{c.op} {c.kind}")
    if cycle.plan.conflicts:
        event("conflict with a foreign route")
    if cycle.skipped:
        event("bad or conflicting lease skipped")
    if config.enable_ipv6:
        event("dual stack")
    wanted_neighs = frozenset(cycle.desired.of("neigh"))
    foreign_before = _foreign(kernel, policy, recreated, mac_changed, wanted_neighs)

    # Minimal: every change targets something missing, different or stale.
    for c in cycle.plan:
        have = cycle.live.get(c.kind, c.obj.key)
        if c.op == "create":
            flushed = c.kind == "neigh" and have is not None and have.dev in mac_changed
            assert have is None or getattr(have, "dev", None) in recreated or c.kind == "link" or flushed, c
        elif c.op == "update":
            assert have is not None and attr_diff(c.obj, have), c
        else:
            want = cycle.desired.get(c.kind, c.obj.key)
            assert want is None or (c.kind == "link" and attr_diff(want, have)), c

    results = apply_plan(kernel, cycle.plan, cycle.desired)
    assert all(r.ok for r in results), [r for r in results if not r.ok]

    # No write touched an object that was already right.
    touched = {(kind, key) for _op, kind, key in kernel.writes}
    assert not (already_right(cycle) & touched)

    # Converged and complete.
    dump = dump_live(kernel, config)
    assert_converged(cycle, compute_cycle(config, cluster.kvs, PREFIX, node, dump, cluster.on_link), dump)

    # Safe: foreign state survives, object for object.
    after = _foreign(kernel, policy, recreated, mac_changed, wanted_neighs)
    for section, before in foreign_before.items():
        now = after[section]
        if isinstance(before, dict):
            changed = {k: (before.get(k), now.get(k)) for k in before.keys() | now.keys() if before.get(k) != now.get(k)}
        else:
            changed = before ^ now
        assert not changed, (section, changed)


@SETTINGS
@given(cluster=clusters(ipv6=True), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_plan_does_not_depend_on_lease_order(cluster, seed, data):
    config, node = _setup(cluster)
    from reconciler.core.desired import desired_state
    from reconciler.core.leases import validate_leases

    leases, _ = validate_leases(config, cluster.kvs, PREFIX)
    kernel = data.draw(live_kernels(desired_state(config, leases, node, cluster.on_link), config.device_name))
    dump = dump_live(kernel, config)
    shuffled = list(cluster.kvs)
    random.Random(seed).shuffle(shuffled)
    a = compute_cycle(config, cluster.kvs, PREFIX, node, dump, cluster.on_link)
    b = compute_cycle(config, shuffled, PREFIX, node, dump, cluster.on_link)
    assert a.plan == b.plan
    assert a.skipped == b.skipped
    assert a.desired == b.desired
    # Within each step, the changes are in key order (plan._sort_key's, None as "").
    from itertools import groupby

    from reconciler.core.plan import _sort_key
    for _, group in groupby(a.plan.changes, key=lambda c: (c.op == "delete", c.kind)):
        run = list(group)
        assert run == sorted(run, key=lambda c: _sort_key(c.obj))


# ------------------------------------------------------------------ ownership's IPv4 arithmetic

def _inside_by_ipaddress(policy: FlannelOwnership, prefix: str) -> bool:
    import ipaddress
    try:
        net = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        return False
    return any(net.version == n.version and net.subnet_of(n) for n in policy._networks)


_prefixes = st.one_of(
    st.tuples(*[st.integers(0, 255)] * 4, st.integers(0, 33)).map(lambda t: "{}.{}.{}.{}/{}".format(*t)),
    st.from_regex(r"\A[0-9]{1,4}(\.[0-9]{1,4}){2,4}(/[0-9]{0,3})?\Z"),
    st.text(alphabet="0123456789./:abcdef\u0661 ", max_size=24),
)


@settings(max_examples=400, deadline=None)
@given(prefix=_prefixes, network=st.sampled_from(["100.64.0.0/10", "100.64.0.0/16", "64.0.0.0/2", "100.64.7.0/24"]))
def test_inside_network_in_integers_agrees_with_ipaddress(prefix, network):
    """The IPv4 test in integers (ownership.py ``_inside_v4``) is a shortcut, never another answer:
    for well-formed and malformed text alike it says what ``ipaddress`` says."""
    policy = FlannelOwnership(parse_network_config(
        f'{{"Network": "{network}", "IPv6Network": "fd00::/8", "Backend": {{"Type": "vxlan"}}}}'))
    assert policy.inside_network(prefix) == _inside_by_ipaddress(policy, prefix), prefix


# ------------------------------------------------------------------ the compiled peer entries

@SETTINGS
@given(cluster=clusters(ipv6=True))
def test_the_compiled_peer_entries_are_the_pure_ones_field_by_field(cluster):
    """``_fastpath.peer_entries`` builds a peer's neighbour, FDB entry and onlink route without
    their ``__init__``: the desired state is the same, every field and its type, either way."""
    import pytest

    import reconciler.core.desired as desired
    from reconciler.core.leases import validate_leases
    from tests.conftest_fastpath import every_field, require_fastpath

    require_fastpath()
    config, node = _setup(cluster)
    leases, _ = validate_leases(config, cluster.kvs, PREFIX)
    saved = desired._FAST_ENTRIES
    try:
        desired._FAST_ENTRIES = None
        try:
            pure = desired.desired_state(config, leases, node, cluster.on_link)
        except desired.NoOwnLease:
            with pytest.raises(desired.NoOwnLease):
                desired._FAST_ENTRIES = False
                desired.desired_state(config, leases, node, cluster.on_link)
            return
        desired._FAST_ENTRIES = False
        fast = desired.desired_state(config, leases, node, cluster.on_link)
        assert desired._FAST_ENTRIES is not None          # the compiled one was used
    finally:
        desired._FAST_ENTRIES = saved
    assert every_field(list(fast)) == every_field(list(pure))
