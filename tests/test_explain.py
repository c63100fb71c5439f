"""``explain``'s pure core: target resolution, and the path for each route layout and DirectRouting,
against live states made from the desired state with one object removed or changed."""
from __future__ import annotations

import dataclasses
import json

import pytest

from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams
from reconciler.core.explain import Facts, explain, resolve_target
from reconciler.core.leases import RawKV
from reconciler.core.model import RTPROT_KERNEL, RTPROT_RECONCILER, KernelState, Route
from reconciler.core.reconcile import compute_cycle
from tests.strategies import PREFIX, lease_value

BASE = f"{PREFIX}/subnets/"
KVS = tuple(RawKV(f"{BASE}100.64.{n}.0-24", lease_value(f"198.18.0.{n}", f"02:00:00:00:00:{n:02x}", 1), 5, n)
            for n in (1, 2, 3)) + (RawKV(f"{BASE}100.64.9.0-24", "garbage{", 5, 9),)


def _cycle(layout="onlink", direct=False, live_edit=None):
    config = parse_network_config(json.dumps({"Network": "100.64.0.0/16",
                                              "Backend": {"Type": "vxlan", "DirectRouting": direct}}))
    node = NodeParams(public_ip="198.18.0.1", underlay="eth0", route_layout=layout)
    on_link = (lambda ip: ip == "198.18.0.3") if direct else (lambda ip: False)
    desired = compute_cycle(config, KVS, PREFIX, node, KernelState(), on_link).desired
    live = KernelState(dataclasses.replace(o, protocol=RTPROT_RECONCILER) if isinstance(o, Route) else o
                       for o in desired)
    # The connected route the kernel makes for cni0's address (not ours, never desired).
    live.add(Route(dst="100.64.1.0/24", gateway=None, dev="cni0", onlink=False, protocol=RTPROT_KERNEL))
    if live_edit:
        live_edit(live)
    return compute_cycle(config, KVS, PREFIX, node, live, on_link), live, on_link


def _explain(target, cycle, live, on_link, route=("eth0", "198.18.0.1")):
    raw = {kv.key: kv.value for kv in KVS}
    res = resolve_target(target, cycle.leases, cycle.skipped, raw, cycle.own, PREFIX, cycle.config.network)
    return explain(res, cycle, live, Facts(1500, route, (), None, ("flannel.1",)), on_link)


@pytest.mark.parametrize("layout", ["onlink", "nexthop"])
def test_a_converged_node_has_a_complete_path_in_either_layout(layout):
    cycle, live, on_link = _cycle(layout)
    out = _explain("100.64.2.7", cycle, live, on_link)
    assert out.complete, out.text()
    names = [link.name for link in out.links]
    assert names[:4] == ["lease", "device", "neighbour", "fdb entry"]
    assert ("nexthop" in names) == (layout == "nexthop")


def test_a_missing_nexthop_is_the_first_broken_link():
    def drop(live):
        for nh in list(live.of("nexthop").values()):
            if nh.gateway == "100.64.2.0":
                live.discard(nh)
    cycle, live, on_link = _cycle("nexthop", live_edit=drop)
    out = _explain("100.64.2.7", cycle, live, on_link)
    assert (out.first_broken.name, out.first_broken.status) == ("nexthop", "missing")


def test_a_direct_routing_peer_needs_only_its_route_and_the_underlay():
    cycle, live, on_link = _cycle(direct=True)
    out = _explain("100.64.3.7", cycle, live, on_link)
    assert out.complete and [link.name for link in out.links] == ["lease", "route", "underlay"]


def test_a_changed_neighbour_names_the_attribute():
    def change(live):
        key = next(k for k, n in live.of("neigh").items() if n.ip == "100.64.2.0")
        live.add(dataclasses.replace(live.of("neigh")[key], mac="02:00:00:00:00:99"))
    cycle, live, on_link = _cycle(live_edit=change)
    broken = _explain("100.64.2.7", cycle, live, on_link).first_broken
    assert (broken.name, broken.status) == ("neighbour", "differs") and "02:00:00:00:00:99" in broken.detail


@pytest.mark.parametrize("target, kind, key", [
    ("100.64.2.7", "peer", f"{BASE}100.64.2.0-24"),
    ("198.18.0.3", "peer", f"{BASE}100.64.3.0-24"),
    ("100.64.3.0/24", "peer", f"{BASE}100.64.3.0-24"),
    ("100.64.3.0-24", "peer", f"{BASE}100.64.3.0-24"),
    (f"{BASE}100.64.3.0-24", "peer", f"{BASE}100.64.3.0-24"),
    ("100.64.1.9", "local", f"{BASE}100.64.1.0-24"),
    ("198.18.0.1", "local", f"{BASE}100.64.1.0-24"),
    ("100.64.9.1", "skipped", f"{BASE}100.64.9.0-24"),
    ("100.64.50.1", "none", ""),
    ("10.1.2.3", "outside", ""),
    ("nonsense", "none", ""),
])
def test_targets_resolve(target, kind, key):
    cycle, live, on_link = _cycle()
    assert _explain("100.64.1.9", cycle, KernelState(o for o in live if o.KIND != "route" or o.dev != "cni0"),
                    on_link).first_broken.name == "connected route"
    raw = {kv.key: kv.value for kv in KVS}
    res = resolve_target(target, cycle.leases, cycle.skipped, raw, cycle.own, PREFIX, cycle.config.network)
    assert (res.kind, res.key) == (kind, key)
    out = explain(res, cycle, live, Facts(1500, None, (), None, ("flannel.1",)), on_link)
    assert out.complete == (kind in ("peer", "local", "outside")), out.text()
