"""The ``nexthop`` route layout against the real kernel, both backends, in throwaway namespaces.

Oracle: iproute2's JSON (``ip -j nexthop``, ``ip -j route``).  Then a
two-node ping over real VXLAN with the nexthop layout, driven by the CLI.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from reconciler.kernel.apply import apply_plan
from reconciler.core.desired import NodeParams, desired_state
from reconciler.core.model import RTPROT_RECONCILER, Link, Nexthop, Route
from reconciler.core.ownership import NEXTHOP_ID_BASE, FlannelOwnership
from reconciler.core.plan import Change, make_plan
from tests.fixtures import config, host1, three_leases
from tests.netns import ip_json, run

pytestmark = pytest.mark.root

ID2, ID3 = NEXTHOP_ID_BASE + 2, NEXTHOP_ID_BASE + 3
DEVICES = ("flannel.1", "cni0")
NETWORKS = ("100.64.0.0/16",)


def _open(kind: str, ns: str):
    if kind == "pyroute2":
        from reconciler.kernel.netlink.reference import PyrouteBackend

        return PyrouteBackend(ns)
    from reconciler.kernel.netlink.batched import BatchedBackend

    return BatchedBackend(ns, accelerate=(kind == "batched"))


@pytest.fixture(params=["pyroute2", "batched", "batched-pure"])
def backend(request, underlay_factory):
    node = underlay_factory(3).nodes[0]
    with _open(request.param, node.ns) as b:
        yield node.ns, b


def _node(layout: str) -> NodeParams:
    return NodeParams(public_ip=host1, underlay_mtu=1500, underlay="eth0", route_layout=layout)


def _converge(b, layout: str) -> None:
    cfg = config()
    desired = desired_state(cfg, three_leases(), _node(layout))
    live = FlannelOwnership(cfg).filter(b.dump(DEVICES, NETWORKS))
    plan = make_plan(desired, live)
    results = apply_plan(b, plan, desired)
    assert [r.message for r in results if not r.ok] == []
    live = FlannelOwnership(cfg).filter(b.dump(DEVICES, NETWORKS))
    assert not make_plan(desired, live).changes, make_plan(desired, live)


def _nexthops(ns: str) -> dict[int, dict]:
    return {n["id"]: n for n in ip_json(ns, "nexthop show")}


def _routes(ns: str) -> dict[str, dict]:
    return {r["dst"]: r for r in ip_json(ns, "route show proto 73")}


def test_apply_nexthop_layout_then_ip_shows_nexthops_and_nhid_routes(backend):
    ns, b = backend
    _converge(b, "nexthop")
    nhs = _nexthops(ns)
    assert set(nhs) == {ID2, ID3}
    assert nhs[ID2]["gateway"] == "100.64.2.0" and nhs[ID2]["dev"] == "flannel.1"
    assert "onlink" in nhs[ID2]["flags"] and nhs[ID2]["protocol"] == "73"
    routes = _routes(ns)
    assert set(routes) == {"100.64.2.0/24", "100.64.3.0/24"}
    assert routes["100.64.3.0/24"]["nhid"] == ID3
    # The backend's own dump gives back what was written (compat mode repeats the next hop).
    dump = b.dump(DEVICES, NETWORKS)
    assert dump.get("nexthop", ID2) == Nexthop(ID2, "100.64.2.0", "flannel.1", True, RTPROT_RECONCILER)
    assert dump.get("route", ("100.64.2.0/24", 0)) == Route("100.64.2.0/24", "100.64.2.0", "flannel.1", True,
                                                            0, RTPROT_RECONCILER, nhid=ID2)


def test_switching_layouts_both_ways_on_the_real_kernel(backend):
    ns, b = backend
    run(ns, "ip", "nexthop", "add", "id", "7", "blackhole")          # foreign: never touched
    _converge(b, "onlink")
    assert all("nhid" not in r for r in _routes(ns).values())
    _converge(b, "nexthop")
    assert {r["nhid"] for r in _routes(ns).values()} == {ID2, ID3}
    _converge(b, "onlink")
    routes = _routes(ns)
    assert set(routes) == {"100.64.2.0/24", "100.64.3.0/24"}
    assert all("nhid" not in r and r["gateway"] == r["dst"].split("/")[0] for r in routes.values())
    assert set(_nexthops(ns)) == {7}


def test_nexthop_writes_and_deletes_have_kernel_semantics(backend):
    ns, b = backend
    _converge(b, "onlink")
    nh = Nexthop(ID2, "100.64.2.0", "flannel.1", True)
    # A route through a nexthop that does not exist is refused, with the kernel's words.
    bad = b.apply([Change("update", Route("100.64.2.0/24", None, None, None, nhid=ID2))])[0]
    assert not bad.ok and bad.errno == errno.EINVAL and "Nexthop id does not exist" in bad.message
    assert [r.ok for r in b.apply([Change("create", nh)])] == [True]
    assert [r.ok for r in b.apply([Change("update", Route("100.64.2.0/24", None, None, None, nhid=ID2))])] == [True]
    # Deleting a route through a nexthop goes by nhid, not by the gateway the dump shows.
    live = b.dump(DEVICES, NETWORKS).get("route", ("100.64.2.0/24", 0))
    assert live.nhid == ID2 and live.gateway == "100.64.2.0"
    assert [r.ok for r in b.apply([Change("delete", live)])] == [True]
    assert "100.64.2.0/24" not in _routes(ns)
    # Deleting the nexthop takes the routes through it along.
    b.apply([Change("update", Route("100.64.2.0/24", None, None, None, nhid=ID2))])
    assert [r.ok for r in b.apply([Change("delete", nh)])] == [True]
    assert "100.64.2.0/24" not in _routes(ns) and ID2 not in _nexthops(ns)
    again = b.apply([Change("delete", nh)])[0]          # already gone: done
    assert again.ok and again.message == "already gone"


# ------------------------------------------------ two nodes, real VXLAN, ping

def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _leases_file(tmp_path, a_ip: str, b_ip: str):
    leases = {
        "prefix": "/coreos.com/network",
        "revision": 3,
        "kvs": [
            {"key": "/coreos.com/network/config",
             "value": json.dumps({"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}})},
            {"key": "/coreos.com/network/subnets/100.64.1.0-24",
             "value": json.dumps({"PublicIP": a_ip, "BackendType": "vxlan",
                                  "BackendData": {"VNI": 1, "VtepMAC": "0a:58:64:40:01:00"}})},
            {"key": "/coreos.com/network/subnets/100.64.2.0-24",
             "value": json.dumps({"PublicIP": b_ip, "BackendType": "vxlan",
                                  "BackendData": {"VNI": 1, "VtepMAC": "0a:58:64:40:02:00"}})},
        ],
    }
    path = tmp_path / "leases.json"
    path.write_text(json.dumps(leases))
    return path


@pytest.mark.parametrize("backend_name", ["pyroute2", "batched"])
def test_a_foreign_nexthop_at_our_id_is_left_alone(underlay_factory, tmp_path, backend_name):
    a, b = underlay_factory(2).nodes
    path = _leases_file(tmp_path, a.ip, b.ip)
    run(a.ns, "ip", "nexthop", "add", "id", str(NEXTHOP_ID_BASE + 2), "blackhole")
    out = _cli("apply", "--leases-file", str(path), "--netns", a.ns, "--public-ip", a.ip, "--iface", "eth0",
               "--route-layout", "nexthop", "--netlink-backend", backend_name)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"error: conflict: nexthop id {NEXTHOP_ID_BASE + 2} via 100.64.2.0 dev flannel.1 onlink is held by " \
           f"foreign nexthop id {NEXTHOP_ID_BASE + 2}" in out.stderr
    nhs = _nexthops(a.ns)
    assert nhs[NEXTHOP_ID_BASE + 2].get("blackhole") is not None or "gateway" not in nhs[NEXTHOP_ID_BASE + 2]
    assert "100.64.2.0/24" not in _routes(a.ns)


@pytest.mark.parametrize("backend_name", ["pyroute2", "batched"])
def test_two_nodes_ping_over_vxlan_with_the_nexthop_layout(underlay_factory, tmp_path, backend_name):
    net = underlay_factory(2)
    a, b = net.nodes
    path = _leases_file(tmp_path, a.ip, b.ip)
    for node in (a, b):
        out = _cli("apply", "--leases-file", str(path), "--netns", node.ns, "--public-ip", node.ip,
                   "--iface", "eth0", "--route-layout", "nexthop", "--netlink-backend", backend_name)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "+ nexthop id" in out.stdout
        shown = _cli("show", "--leases-file", str(path), "--netns", node.ns, "--public-ip", node.ip,
                     "--iface", "eth0", "--route-layout", "nexthop", "--netlink-backend", backend_name)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "[ok]       nexthop id" in shown.stdout
        # The onlink layout sees drift on the same kernel (exit 2): the layouts really differ.
        other = _cli("plan", "--leases-file", str(path), "--netns", node.ns, "--public-ip", node.ip,
                     "--iface", "eth0")
        assert other.returncode == 2 and "- nexthop id" in other.stdout, other.stdout + other.stderr
    assert _routes(a.ns)["100.64.2.0/24"]["nhid"] == NEXTHOP_ID_BASE + 2
    assert _routes(b.ns)["100.64.1.0/24"]["nhid"] == NEXTHOP_ID_BASE + 1
    # Overlay to overlay: a's flannel.1 address to b's, through VXLAN on the underlay.
    ping = run(a.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", "100.64.1.0",
               "100.64.2.0", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_ipv6_routes_through_onlink_nexthops(backend):
    """IPv6 needs nothing special: ``ip -6 nexthop`` takes an onlink gateway as IPv4 does."""
    ns, b = backend
    vx6 = Link("flannel-v6.1", "vxlan", mtu=1450, mac="0a:58:64:40:01:06", up=True, vni=1, local="fd00:18::1",
               port=8472, learning=False, gbp=False)
    nhid = NEXTHOP_ID_BASE + (1 << 20) + 2
    changes = [Change("create", vx6),
               Change("create", Nexthop(nhid, "fd00:64:0:2::", "flannel-v6.1", True)),
               Change("create", Route("fd00:64:0:2::/64", None, None, None, metric=1024, nhid=nhid))]
    assert [r.message for r in b.apply(changes) if not r.ok] == []
    routes = {r["dst"]: r for r in ip_json(ns, "-6 route show proto 73")}
    assert routes["fd00:64:0:2::/64"]["nhid"] == nhid and routes["fd00:64:0:2::/64"]["metric"] == 1024
    dump = b.dump(("flannel-v6.1",), ("fd00:64::/56",))
    assert dump.get("nexthop", nhid) == Nexthop(nhid, "fd00:64:0:2::", "flannel-v6.1", True, RTPROT_RECONCILER)
    assert dump.get("route", ("fd00:64:0:2::/64", 1024)).nhid == nhid
    live = dump.get("route", ("fd00:64:0:2::/64", 1024))
    assert [r.ok for r in b.apply([Change("delete", live), Change("delete", dump.get("nexthop", nhid))])] == [True] * 2
    assert ip_json(ns, "-6 route show proto 73") == [] and ip_json(ns, "nexthop show") == []
