"""PyrouteBackend against a real kernel, inside throwaway namespaces.

Every write is checked twice: against iproute2's JSON (``ip -j``, ``bridge
-j``: the independent oracle) and against ``backend.dump`` (which must give
back exactly the objects written).  The changes are built by hand: this file
tests the backend, not the planner.

The story: node 1 (198.18.0.1, subnet 100.64.1.0/24) learns of node 2
(198.18.0.2, 100.64.2.0/24) and node 3 (198.18.0.3, 100.64.3.0/24).
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import time

import pytest

from reconciler.core.errors import DumpInterrupted, NamespaceNotFound, NetlinkError
from reconciler.core.model import RTPROT_RECONCILER, Address, Fdb, KernelState, Link, Neigh, Route
from reconciler.kernel.netlink import NetlinkBackend, Underlay
from reconciler.kernel.netlink.reference import NLM_F_DUMP_INTR, PyrouteBackend
from reconciler.core.plan import Change
from tests.netns import bridge_json, ip_json, netns_exists, run, unique_name

pytestmark = pytest.mark.root

DEVICES = ("flannel.1", "cni0")
host1, host2, host3 = "198.18.0.1", "198.18.0.2", "198.18.0.3"
mac1, mac2, mac3 = "0a:58:64:40:01:00", "0a:58:64:40:02:00", "0a:58:64:40:03:00"

FLANNEL1 = Link("flannel.1", "vxlan", mtu=1450, mac=mac1, up=True, vni=1, local=host1, port=8472,
                learning=False, gbp=False, underlay="eth0")
CNI0 = Link("cni0", "bridge", mtu=1450, up=True)


def remote(n: int, host: str, mac: str) -> tuple[Neigh, Fdb, Route]:
    """What node 1 writes for remote node ``n``: neighbour, FDB entry, onlink route (in that order)."""
    gw = f"100.64.{n}.0"
    return (Neigh("flannel.1", gw, mac), Fdb("flannel.1", mac, host),
            Route(f"100.64.{n}.0/24", gw, "flannel.1", onlink=True, metric=0, protocol=RTPROT_RECONCILER))


ADDRESSES = (Address("flannel.1", "100.64.1.0/32"), Address("cni0", "100.64.1.1/24"))
REMOTES = remote(2, host2, mac2) + remote(3, host3, mac3)


def creates(*objs) -> list[Change]:
    return [Change("create", o) for o in objs]


def cold_install() -> list[Change]:
    return creates(FLANNEL1, CNI0, *ADDRESSES, *REMOTES)


@pytest.fixture
def node(underlay_factory):
    """Node 1 of a three-node underlay."""
    return underlay_factory(3).nodes[0]


@pytest.fixture
def backend(node):
    with PyrouteBackend(node.ns) as b:
        yield b


@pytest.fixture
def installed(backend):
    results = backend.apply(cold_install())
    assert [r.message for r in results if not r.ok] == []
    return backend


def ours(state: KernelState) -> KernelState:
    """The dump minus kernel-made routes (``proto kernel`` connected routes of cni0)."""
    return state.filter(lambda o: o.KIND != "route" or o.protocol == RTPROT_RECONCILER)


# --------------------------------------------------------------- writes + oracle

def test_it_is_a_netlink_backend(backend):
    assert isinstance(backend, NetlinkBackend)


def test_cold_install_is_what_iproute2_sees(installed, node):
    ns = node.ns
    [vx] = ip_json(ns, "-d link show flannel.1")
    assert vx["mtu"] == 1450 and vx["address"] == mac1 and "UP" in vx["flags"]
    data = vx["linkinfo"]["info_data"]
    assert vx["linkinfo"]["info_kind"] == "vxlan"
    assert (data["id"], data["local"], data["link"], data["port"], data["learning"], data["ttl"]) == \
        (1, host1, "eth0", 8472, False, 0)
    assert not data.get("l2miss") and not data.get("l3miss") and not data.get("proxy") and "gbp" not in data

    [br] = ip_json(ns, "-d link show cni0")
    assert br["linkinfo"]["info_kind"] == "bridge" and br["mtu"] == 1450 and "UP" in br["flags"]

    [a] = [x for x in ip_json(ns, "addr show dev flannel.1")[0]["addr_info"] if x["family"] == "inet"]
    assert (a["local"], a["prefixlen"], a["scope"]) == ("100.64.1.0", 32, "global") and "broadcast" not in a
    assert {(x["local"], x["prefixlen"]) for x in ip_json(ns, "-4 addr show dev cni0")[0]["addr_info"]} == \
        {("100.64.1.1", 24)}

    routes = {r["dst"]: r for r in ip_json(ns, "route show table main dev flannel.1")}
    for n in (2, 3):
        r = routes[f"100.64.{n}.0/24"]
        assert r["gateway"] == f"100.64.{n}.0" and "onlink" in r["flags"] and r["protocol"] == "73"
        assert "metric" not in r

    neighs = {n["dst"]: n for n in ip_json(ns, "neigh show dev flannel.1")}
    assert {k: (v["lladdr"], v["state"]) for k, v in neighs.items()} == {
        "100.64.2.0": (mac2, ["PERMANENT"]), "100.64.3.0": (mac3, ["PERMANENT"])}

    fdb = {f["mac"]: f for f in bridge_json(ns, "fdb show dev flannel.1")}
    assert {m: (f["dst"], f["flags"], f["state"]) for m, f in fdb.items()} == {
        mac2: (host2, ["self"], "permanent"), mac3: (host3, ["self"], "permanent")}

    # flanneld's sysctl, written inside the node's namespace, not the host's.
    assert run(ns, "cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra").stdout.strip() == "0"


def test_dump_gives_back_exactly_what_was_written(installed):
    state = installed.dump(DEVICES)
    cni0 = state.get("link", "cni0")
    assert cni0.mac and cni0 == Link("cni0", "bridge", mtu=1450, mac=cni0.mac, up=True)
    expected = KernelState([FLANNEL1, cni0, *ADDRESSES, *REMOTES])
    assert ours(state) == expected
    # The connected route of cni0's /24 is the kernel's, and reported as such.
    assert state.get("route", ("100.64.1.0/24", 0)) == Route("100.64.1.0/24", None, "cni0", protocol=2)


def test_replaying_the_same_changes_is_idempotent(installed):
    before = installed.dump(DEVICES)
    results = installed.apply(creates(*ADDRESSES, *REMOTES))
    assert all(r.ok for r in results)
    assert installed.dump(DEVICES) == before


def test_replace_swaps_the_remote_in_place(installed, node):
    new_mac = "0a:58:64:40:02:ff"
    neigh, fdb, route = Neigh("flannel.1", "100.64.2.0", new_mac), Fdb("flannel.1", mac2, "198.18.0.22"), \
        Route("100.64.2.0/24", "100.64.2.0", "flannel.1", onlink=True, metric=0, protocol=RTPROT_RECONCILER)
    assert all(r.ok for r in installed.apply([Change("update", neigh), Change("update", fdb),
                                              Change("update", route)]))
    state = installed.dump(DEVICES)
    assert state.get("neigh", neigh.key) == neigh and state.get("fdb", fdb.key) == fdb
    assert [f["dst"] for f in bridge_json(node.ns, "fdb show dev flannel.1") if f["mac"] == mac2] == ["198.18.0.22"]
    assert len([r for r in ip_json(node.ns, "route show 100.64.2.0/24")]) == 1


def test_link_update_changes_mtu_mac_and_state_in_place(installed, node):
    [before] = ip_json(node.ns, "link show flannel.1")
    want = Link("flannel.1", "vxlan", mtu=1400, mac="0a:58:64:40:01:99", up=False)
    [res] = installed.apply([Change("update", want, live=FLANNEL1)])
    assert res.ok, res.message
    [after] = ip_json(node.ns, "link show flannel.1")
    assert after["ifindex"] == before["ifindex"]                  # same device, not re-created
    assert (after["mtu"], after["address"], "UP" in after["flags"]) == (1400, "0a:58:64:40:01:99", False)
    live = installed.dump(DEVICES).get("link", "flannel.1")
    assert (live.mtu, live.mac, live.up, live.vni, live.underlay) == (1400, "0a:58:64:40:01:99", False, 1, "eth0")

    [res] = installed.apply([Change("update", Link("flannel.1", "vxlan", up=True), live=live)])
    assert res.ok and installed.dump(DEVICES).get("link", "flannel.1").up is True


def test_link_delete_takes_its_entries_along(installed, node):
    [res] = installed.apply([Change("delete", FLANNEL1)])
    assert res.ok
    state = installed.dump(DEVICES)
    assert state.get("link", "flannel.1") is None
    assert [o for o in state if getattr(o, "dev", None) == "flannel.1"] == []
    assert ip_json(node.ns, "route show table main proto 73") == []


def test_deleting_what_is_already_gone_succeeds(installed):
    gone = [Route("100.64.77.0/24", "100.64.77.0", "flannel.1", onlink=True), Fdb("flannel.1", mac3, host2),
            Fdb("flannel.1", "0a:58:64:40:77:00", host2), Neigh("flannel.1", "100.64.77.0", mac2),
            Address("flannel.1", "100.64.77.0/32"), Link("flannel.77", "vxlan"),
            Neigh("nosuch0", "100.64.2.0", mac2), Route("100.64.78.0/24", None, "nosuch0")]
    results = installed.apply([Change("delete", o) for o in gone])
    assert [(r.change.obj, r.ok) for r in results] == [(o, True) for o in gone]
    assert ours(installed.dump(DEVICES)) == KernelState([FLANNEL1, installed.dump(DEVICES).get("link", "cni0"),
                                                         *ADDRESSES, *REMOTES])


def test_a_failing_change_does_not_stop_the_others(installed, node):
    extra = Neigh("flannel.1", "100.64.4.0", "0a:58:64:40:04:00")
    changes = [
        Change("create", Neigh("nosuch0", "100.64.4.0", mac2)),
        Change("create", Route("100.64.4.0/24", "100.64.4.0", "nosuch0", onlink=True)),
        Change("create", Fdb("nosuch0", mac2, host2)),
        Change("create", Address("nosuch0", "100.64.4.1/24")),
        Change("update", Link("nosuch0", "bridge", mtu=1400)),
        Change("create", FLANNEL1),                                               # exists: EEXIST
        Change("create", Route("100.64.9.0/24", "100.64.9.0", "flannel.1")),     # not onlink: unreachable
        Change("create", Neigh("flannel.1", "100.64.4.0", "zz:58")),              # malformed MAC
        Change("create", extra),
    ]
    results = installed.apply(changes)
    assert [r.change for r in results] == changes
    assert [(r.ok, r.errno) for r in results] == [
        (False, errno.ENODEV)] * 5 + [(False, errno.EEXIST), (False, errno.ENETUNREACH), (False, errno.EINVAL),
                                      (True, None)]
    assert results[0].message.startswith("neigh replace 100.64.4.0 lladdr 0a:58:64:40:02:00 dev nosuch0 "
                                         "nud permanent: ") and "nosuch0" in results[0].message
    assert results[6].message.startswith("route replace 100.64.9.0/24 via 100.64.9.0 dev flannel.1: ")
    assert results[5].message.startswith("link add flannel.1 ")
    assert installed.dump(DEVICES).get("neigh", extra.key) == extra
    assert any(n["dst"] == "100.64.4.0" for n in ip_json(node.ns, "neigh show dev flannel.1"))


def test_routes_are_written_with_our_protocol_and_metric(installed, node):
    r = Route("100.64.5.0/24", "100.64.5.0", "flannel.1", onlink=True, metric=50, protocol=RTPROT_RECONCILER)
    assert installed.apply(creates(r))[0].ok
    [j] = ip_json(node.ns, "route show 100.64.5.0/24")
    assert (j["protocol"], j["metric"]) == ("73", 50)
    assert installed.dump(DEVICES).get("route", r.key) == r
    # Deleted by identity (dst, metric): the metric-0 route of the same dst does not stand in.
    assert installed.apply([Change("delete", r)])[0].ok
    assert ip_json(node.ns, "route show 100.64.5.0/24") == []


def test_a_route_without_dev_lets_the_kernel_resolve_it(installed, node):
    """DirectRouting: ``ip route replace 100.64.6.0/24 via 198.18.0.2``."""
    r = Route("100.64.6.0/24", host2, None)
    assert installed.apply(creates(r))[0].ok
    assert installed.dump(DEVICES).get("route", r.key) == Route("100.64.6.0/24", host2, "eth0",
                                                                 protocol=RTPROT_RECONCILER)


# --------------------------------------------------------------------- the dump

def test_foreign_state_is_left_out_of_the_dump(installed, node):
    ns = node.ns
    run(ns, "ip", "route", "add", "100.64.200.0/24", "via", "198.18.0.254", "dev", "eth0", "proto", "static")
    run(ns, "ip", "route", "add", "100.64.201.0/24", "dev", "flannel.1", "table", "100", "proto", "73")
    run(ns, "ip", "neigh", "add", "100.64.7.0", "lladdr", "0a:58:64:40:07:00", "dev", "flannel.1", "nud", "reachable")
    run(ns, "ip", "addr", "add", "198.18.0.201/24", "dev", "eth0")
    # ...but a route of our protocol is reported whatever its device (ownership decides later).
    run(ns, "ip", "route", "add", "100.64.202.0/24", "via", "198.18.0.254", "dev", "eth0", "proto", "73")
    state = installed.dump(DEVICES)
    routes = {r.dst: r for r in state.of("route").values()}
    assert "100.64.200.0/24" not in routes and "100.64.201.0/24" not in routes
    assert routes["100.64.202.0/24"] == Route("100.64.202.0/24", "198.18.0.254", "eth0", protocol=73)
    assert not any(r.dst.startswith("fe80:") for r in routes.values())        # v6 link-local
    assert ("flannel.1", "100.64.7.0") not in state.of("neigh")
    assert not any(a.dev == "eth0" or a.cidr.startswith("fe80") for a in state.of("address").values())


def test_dump_of_missing_devices_is_empty(backend):
    assert len(backend.dump(DEVICES)) == 0


def test_an_interrupted_dump_is_retried_then_refused(installed, monkeypatch):
    real = installed._request
    budget = {"interruptions": 2}

    def flaky(msg, msg_type, flags, callback=None):
        out = real(msg, msg_type, flags, callback)
        if callback is not None and budget["interruptions"] > 0:
            budget["interruptions"] -= 1
            # The flag may come on NLMSG_DONE only, which the callback also sees.
            callback({"header": {"type": 3, "flags": 0x2 | NLM_F_DUMP_INTR}})
        return out

    monkeypatch.setattr(installed, "_request", flaky)
    assert ours(installed.dump(DEVICES)).get("link", "flannel.1") == FLANNEL1
    assert budget["interruptions"] == 0

    budget["interruptions"] = 10 ** 6
    with pytest.raises(DumpInterrupted, match="NLM_F_DUMP_INTR"):
        installed.dump(DEVICES)


def test_names_are_resolved_by_one_link_dump_per_apply(installed, monkeypatch):
    calls = []
    real = installed._refresh_links
    monkeypatch.setattr(installed, "_refresh_links", lambda: calls.append(1) or real())
    neighs = [Neigh("flannel.1", f"100.64.{n}.0", f"0a:58:64:40:{n:02x}:00") for n in range(10, 210)]
    assert all(r.ok for r in installed.apply(creates(*neighs)))
    assert len(calls) == 1


# ---------------------------------------------------------------- namespaces

def test_a_missing_namespace_is_refused_and_not_created():
    name = unique_name("missing")
    with pytest.raises(NamespaceNotFound, match=name):
        PyrouteBackend(name)
    assert not netns_exists(name)
    with pytest.raises(NamespaceNotFound):
        PyrouteBackend("../../proc/1/ns/net")


def test_everything_happens_inside_the_namespace(backend, node):
    name = f"frt{os.getpid() % 100000}"                     # an ifname (<= 15 chars) unique to this run
    assert backend.apply(creates(Link(name, "bridge", up=False)))[0].ok
    assert [x["ifname"] for x in ip_json(node.ns, f"link show {name}")] == [name]
    host = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert name not in {x["ifname"] for x in json.loads(host)}
    with PyrouteBackend(node.ns) as again:                   # a second socket sees the same namespace
        assert again.dump([name]).get("link", name).type == "bridge"


# ------------------------------------------------------------------ underlay

def test_underlay_by_name_by_address_and_by_default_route(backend, node):
    run(node.ns, "ip", "addr", "add", "169.254.3.3/16", "dev", "eth0")     # link-local: never preferred
    expected = Underlay("eth0", host1, 1500, ("198.18.0.0/24", "169.254.0.0/16"))
    got = [backend.underlay(None), backend.underlay("eth0"), backend.underlay(host1)]
    assert [(u.name, u.address, u.mtu) for u in got] == [("eth0", host1, 1500)] * 3
    assert all(set(u.prefixes) == set(expected.prefixes) for u in got)
    # Named by a secondary address: that address is the one used.
    assert backend.underlay("169.254.3.3").address == "169.254.3.3"


def test_underlay_errors_say_what_is_missing(backend, netns):
    with pytest.raises(NetlinkError, match="nosuch0") as exc:
        backend.underlay("nosuch0")
    assert exc.value.errno == errno.ENODEV
    with pytest.raises(NetlinkError, match="198.18.0.99"):
        backend.underlay("198.18.0.99")
    run(netns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    with PyrouteBackend(netns) as bare:
        with pytest.raises(NetlinkError, match="default route"):
            bare.underlay(None)
        with pytest.raises(NetlinkError, match="no usable IPv4") as exc:
            bare.underlay("eth0")
        assert exc.value.errno == errno.EADDRNOTAVAIL


# ---------------------------------------------------------------- end to end

def test_two_nodes_written_by_the_backend_carry_vxlan_traffic(underlay_factory):
    """Real encapsulation: node 1 pings node 2's flannel.1 address through VXLAN over the veth underlay."""
    net = underlay_factory(2)
    n1, n2 = net.nodes
    for me, peer, my_mac, peer_mac, i, j in ((n1, n2, mac1, mac2, 1, 2), (n2, n1, mac2, mac1, 2, 1)):
        link = Link("flannel.1", "vxlan", mtu=1450, mac=my_mac, up=True, vni=1, local=me.ip, port=8472,
                    learning=False, gbp=False, underlay="eth0")
        with PyrouteBackend(me.ns) as b:
            neigh, fdb, route = remote(j, peer.ip, peer_mac)
            results = b.apply(creates(link, Address("flannel.1", f"100.64.{i}.0/32"), neigh, fdb, route))
            assert [r.message for r in results if not r.ok] == []
    deadline = time.monotonic() + 5
    while True:
        proc = run(n1.ns, "ping", "-c", "1", "-W", "1", "-I", "100.64.1.0", "100.64.2.0", check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
    assert proc.returncode == 0, proc.stdout + proc.stderr
