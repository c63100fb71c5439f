"""The command line against a real kernel, inside throwaway namespaces; iproute2 is the oracle.

Each test drives ``flannel-reconciler plan|apply|show --netns NS`` (in
process, through ``reconciler.cli.main``; once through ``python -m
reconciler``) with a leases snapshot written here, in flanneld's exact
bytes, and then reads the kernel back with ``ip -j`` and ``bridge -j`` only:
nothing in the package under test is trusted to say what the kernel holds.

The cluster: network 100.64.0.0/16, node *n* is 198.18.0.*n* on the
underlay with subnet 100.64.*n*.0/24 and VtepMAC 0a:58:64:40:0*n*:00.  The
node under test is node 1 (``underlay_factory(1)``: the namespace's
``eth0`` is 198.18.0.1/24); nodes 2 and 3 exist only as leases.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from reconciler.cli.main import main
from tests.netns import GATEWAY, bridge_json, ip_json, netns_exists, run, unique_name

pytestmark = pytest.mark.root

PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}'
NETWORK = "100.64.0.0/16"
VXLAN_PORT = 8472
MTU = 1450


def mac_of(n: int, last: int = 0) -> str:
    return f"0a:58:64:40:{n:02x}:{last:02x}"


def lease_value(public_ip: str, mac: str, vni: int = 1) -> str:
    """A lease value byte for byte as flanneld writes it (see reconciler/examples/cluster-3-nodes.json)."""
    return json.dumps({"PublicIP": public_ip, "PublicIPv6": None, "BackendType": "vxlan",
                       "BackendData": {"VNI": vni, "VtepMAC": mac}}, separators=(",", ":"))


def snapshot(nodes: dict[int, str], subnets: dict[int, int] | None = None) -> dict:
    """A leases snapshot: ``{n: VtepMAC}`` gives node n (198.18.0.n) the subnet 100.64.n.0/24,
    or 100.64.s.0/24 with ``subnets={n: s}``."""
    kvs = [{"key": f"{PREFIX}/config", "value": CONFIG, "lease": 0}]
    for n, mac in sorted(nodes.items()):
        s = (subnets or {}).get(n, n)
        kvs.append({"key": f"{PREFIX}/subnets/100.64.{s}.0-24", "value": lease_value(f"198.18.0.{n}", mac),
                    "lease": 7587880000000000 + n})
    return {"prefix": PREFIX, "revision": 12, "kvs": kvs}


def write_snapshot(path: Path, nodes: dict[int, str], subnets: dict[int, int] | None = None) -> str:
    path.write_text(json.dumps(snapshot(nodes, subnets), indent=2))
    return str(path)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``flannel-reconciler ARGV`` in process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def node_args(leases: str, ns: str) -> list[str]:
    return ["--leases-file", leases, "--netns", ns, "--iface", "eth0"]


THREE = {1: mac_of(1), 2: mac_of(2), 3: mac_of(3)}


# ------------------------------------------------------------------ the oracle

def observed(ns: str) -> dict:
    """What iproute2 sees in ``ns``, reduced to the facts the agent is responsible for."""
    links = {x["ifname"]: x for x in ip_json(ns, "-d link show")}
    vx = links.get("flannel.1")
    out: dict = {"devices": sorted(links)}
    if vx is not None:
        data = vx["linkinfo"]["info_data"]
        out["flannel.1"] = dict(
            kind=vx["linkinfo"]["info_kind"], id=data["id"], local=data.get("local"), link=data.get("link"),
            port=data["port"], learning=data["learning"], mtu=vx["mtu"], mac=vx["address"],
            up="UP" in vx["flags"], l2miss=bool(data.get("l2miss")), l3miss=bool(data.get("l3miss")),
            proxy=bool(data.get("proxy")), ttl=data.get("ttl"))
        out["flannel.1 addresses"] = _v4_addrs(ns, "flannel.1")
    br = links.get("cni0")
    if br is not None:
        out["cni0"] = dict(kind=br["linkinfo"]["info_kind"], mtu=br["mtu"], up="UP" in br["flags"])
        out["cni0 addresses"] = _v4_addrs(ns, "cni0")
    out["routes"] = sorted(
        (r["dst"], r.get("gateway"), r.get("dev"), r.get("protocol", "boot"), "onlink" in r.get("flags", []))
        for r in ip_json(ns, "-4 route show table main"))
    out["routes elsewhere"] = sorted(r["dst"] for r in ip_json(ns, "-4 route show table all proto 73")
                                     if r.get("table", "main") != "main")
    if vx is not None:
        out["neighbours"] = sorted((n["dst"], n.get("lladdr"), tuple(n["state"]))
                                   for n in ip_json(ns, "neigh show dev flannel.1"))
        out["fdb"] = sorted((f["mac"], f.get("dst"), tuple(f["flags"]), f.get("state"))
                            for f in bridge_json(ns, "fdb show dev flannel.1"))
    return out


def _v4_addrs(ns: str, dev: str) -> list[tuple]:
    [link] = ip_json(ns, f"-4 addr show dev {dev}")
    return sorted((a["local"], a["prefixlen"], a["scope"], "broadcast" in a) for a in link["addr_info"])


def expected(me: int, nodes: dict[int, str], subnets: dict[int, int] | None = None) -> dict:
    """What node ``me`` must hold for the leases ``nodes`` (docs/flannel-formats.md section 4), and nothing more."""
    sub = {n: (subnets or {}).get(n, n) for n in nodes}
    own = sub[me]
    peers = {sub[n]: (mac, f"198.18.0.{n}") for n, mac in nodes.items() if n != me}   # subnet -> (MAC, host)
    return {
        "devices": ["cni0", "eth0", "flannel.1", "lo"],
        "flannel.1": dict(kind="vxlan", id=1, local=f"198.18.0.{me}", link="eth0", port=VXLAN_PORT,
                          learning=False, mtu=MTU, mac=nodes[me], up=True, l2miss=False, l3miss=False,
                          proxy=False, ttl=0),
        "flannel.1 addresses": [(f"100.64.{own}.0", 32, "global", False)],
        "cni0": dict(kind="bridge", mtu=MTU, up=True),
        "cni0 addresses": [(f"100.64.{own}.1", 24, "global", False)],
        "routes": sorted(
            [("default", GATEWAY, "eth0", "boot", False),
             ("198.18.0.0/24", None, "eth0", "kernel", False),
             (f"100.64.{own}.0/24", None, "cni0", "kernel", False)]
            + [(f"100.64.{s}.0/24", f"100.64.{s}.0", "flannel.1", "73", True) for s in peers]),
        "routes elsewhere": [],
        "neighbours": sorted((f"100.64.{s}.0", mac, ("PERMANENT",)) for s, (mac, _) in peers.items()),
        "fdb": sorted((mac, host, ("self",), "permanent") for mac, host in peers.values()),
    }


@pytest.fixture
def node(underlay_factory):
    """Node 1 (198.18.0.1 on ``eth0``), with nothing of flannel's yet."""
    return underlay_factory(1).nodes[0]


@pytest.fixture
def leases(tmp_path):
    return write_snapshot(tmp_path / "leases.json", THREE)


@pytest.fixture
def applied(node, leases, capsys):
    rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns))
    assert rc == 0, out + err
    return node


# ------------------------------------------------------------ a fresh node

def test_apply_on_an_empty_node_builds_exactly_flannels_state(node, leases, capsys):
    assert "flannel.1" not in observed(node.ns)["devices"]
    rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns), "--output", "json")
    assert rc == 0, out + err

    doc = json.loads(out)
    assert set(doc) == {"in_sync", "node", "changes", "summary", "skipped", "conflicts", "failed"}
    assert doc["node"] == {"public_ip": "198.18.0.1", "subnet": "100.64.1.0/24"}
    assert doc["in_sync"] is False and doc["failed"] == 0 and doc["skipped"] == [] and doc["conflicts"] == []
    # Ten kernel objects, then flanneld's default FORWARD accepts (chain, two rules, jump; docs/traffic-rules.md).
    assert doc["summary"] == {"create": 14, "update": 0, "delete": 0}
    assert [c["kind"] for c in doc["changes"]] == ["link"] * 2 + ["address"] * 2 + ["neigh"] * 2 + ["fdb"] * 2 + \
        ["route"] * 2 + ["rule"] * 4
    for c in doc["changes"]:
        assert set(c) == {"op", "kind", "object", "result"} and c["op"] == "create"
        assert c["result"] == {"ok": True, "errno": None, "message": ""}
    [vx] = [c["object"] for c in doc["changes"] if c["kind"] == "link" and c["object"]["type"] == "vxlan"]
    assert vx == {"name": "flannel.1", "type": "vxlan", "mtu": MTU, "mac": mac_of(1), "up": True, "vni": 1,
                  "local": "198.18.0.1", "port": VXLAN_PORT, "learning": False, "underlay": "eth0"}

    assert observed(node.ns) == expected(1, THREE)
    # flanneld's sysctl, inside the node's namespace.
    assert run(node.ns, "cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra").stdout.strip() == "0"

    rc, out, err = cli(capsys, "plan", *node_args(leases, node.ns))
    assert (rc, out.splitlines()[-1]) == (0, "In sync: no changes."), out + err
    rc, out, err = cli(capsys, "show", *node_args(leases, node.ns))
    assert rc == 0, out + err
    assert out.splitlines()[-1] == "15 ok, 0 missing, 0 drift, 0 stale, 0 conflict"
    assert observed(node.ns) == expected(1, THREE)          # plan and show wrote nothing


def test_a_second_apply_writes_nothing(applied, leases, capsys):
    before = ip_json(applied.ns, "-d link show flannel.1")
    rc, out, err = cli(capsys, "apply", *node_args(leases, applied.ns), "--output", "json")
    assert rc == 0, out + err
    doc = json.loads(out)
    assert doc["in_sync"] is True and doc["changes"] == []
    assert ip_json(applied.ns, "-d link show flannel.1") == before        # same ifindex, same everything


# -------------------------------------------------------------- drift repair

@dataclass(frozen=True)
class Drift:
    """Something done to a converged node 1, what ``show`` must then say, and the leases after."""

    name: str
    damage: Callable[[str], None]
    show: tuple[tuple[str, str], ...]                 # (status, text the line must contain)
    nodes: dict[int, str] = field(default_factory=lambda: dict(THREE))
    #: cni0's connected route, once repaired, is ours (proto 73), no longer the kernel's.
    connected_by_us: bool = False


def _recreate_with_vni(ns: str) -> None:
    run(ns, "ip", "link", "del", "flannel.1")
    run(ns, "ip", "link", "add", "flannel.1", "address", mac_of(1), "mtu", str(MTU), "type", "vxlan", "id", "7",
        "dev", "eth0", "local", "198.18.0.1", "dstport", str(VXLAN_PORT), "nolearning")
    run(ns, "ip", "link", "set", "flannel.1", "up")


def _flush_main_table(ns: str) -> None:
    """``ip route flush table main``, then the underlay's routes put back (they are not ours to repair)."""
    run(ns, "ip", "route", "flush", "table", "main")
    run(ns, "ip", "route", "add", "198.18.0.0/24", "dev", "eth0", "proto", "kernel", "scope", "link",
        "src", "198.18.0.1")
    run(ns, "ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0", "proto", "boot")


ROUTE2 = "route 100.64.2.0/24 via 100.64.2.0 dev flannel.1 onlink"
NEIGH2 = f"neigh 100.64.2.0 lladdr {mac_of(2)} dev flannel.1 nud permanent"
FDB2 = f"fdb {mac_of(2)} dev flannel.1 dst 198.18.0.2 self permanent"
LINK = "link flannel.1 type vxlan id 1"

DRIFTS = [
    Drift("route-deleted", lambda ns: run(ns, "ip", "route", "del", "100.64.2.0/24", "dev", "flannel.1"),
          (("missing", ROUTE2),)),
    Drift("vxlan-mtu", lambda ns: run(ns, "ip", "link", "set", "flannel.1", "mtu", "1400"),
          (("drift", "mtu desired 1450, live 1400"),)),
    Drift("vxlan-down", lambda ns: run(ns, "ip", "link", "set", "flannel.1", "down"),
          (("drift", "up desired yes, live no"), ("missing", ROUTE2), ("missing", NEIGH2))),
    Drift("neighbour-mac", lambda ns: run(ns, "ip", "neigh", "replace", "100.64.2.0", "lladdr", mac_of(2, 0xff),
                                          "dev", "flannel.1", "nud", "permanent"),
          (("drift", f"mac desired {mac_of(2)}, live {mac_of(2, 0xff)}"),)),
    Drift("stale-fdb", lambda ns: run(ns, "bridge", "fdb", "add", mac_of(9), "dev", "flannel.1",
                                      "dst", "198.18.0.9", "self", "permanent"),
          (("stale", f"fdb {mac_of(9)} dev flannel.1 dst 198.18.0.9 self permanent"),)),
    # A flood entry sends every broadcast frame (ARP too) to a host that is no peer; flanneld
    # never writes one (learning is off), so it is ours to remove.
    Drift("flood-entry", lambda ns: run(ns, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "flannel.1",
                                        "dst", "198.18.0.9"),
          (("stale", "fdb 00:00:00:00:00:00 dev flannel.1 dst 198.18.0.9 self permanent"),)),
    Drift("device-deleted", lambda ns: run(ns, "ip", "link", "del", "flannel.1"),
          (("missing", LINK), ("missing", "address 100.64.1.0/32 dev flannel.1"), ("missing", ROUTE2),
           ("missing", NEIGH2), ("missing", FDB2))),
    # The kernel does not re-make cni0's connected route while its address stays: the local pods
    # would be cut off (and the peers' routes come back by themselves in the agent).
    Drift("main-table-flushed", lambda ns: _flush_main_table(ns),
          (("missing", "route 100.64.1.0/24 dev cni0"), ("missing", ROUTE2)), connected_by_us=True),
    Drift("vni-changed", _recreate_with_vni,
          (("drift", "vni desired 1, live 7"), ("missing", "address 100.64.1.0/32 dev flannel.1"),
           ("missing", ROUTE2), ("missing", NEIGH2), ("missing", FDB2))),
    Drift("peer-mac-changed", lambda ns: None,
          (("drift", f"mac desired {mac_of(2, 0x99)}, live {mac_of(2)}"),
           ("missing", f"fdb {mac_of(2, 0x99)} dev flannel.1 dst 198.18.0.2"), ("stale", FDB2)),
          nodes={1: mac_of(1), 2: mac_of(2, 0x99), 3: mac_of(3)}),
    Drift("peer-removed", lambda ns: None,
          (("stale", "route 100.64.3.0/24 via 100.64.3.0 dev flannel.1 onlink"),
           ("stale", f"neigh 100.64.3.0 lladdr {mac_of(3)} dev flannel.1"),
           ("stale", f"fdb {mac_of(3)} dev flannel.1 dst 198.18.0.3")),
          nodes={1: mac_of(1), 2: mac_of(2)}),
    # The kernel flushes every neighbour of a device whose MAC changes (permanent ones too),
    # so this damage leaves the neighbours missing as well, and the apply re-creates them.
    Drift("vxlan-mac", lambda ns: run(ns, "ip", "link", "set", "flannel.1", "address", mac_of(1, 0x99)),
          (("drift", f"mac desired {mac_of(1)}, live {mac_of(1, 0x99)}"), ("missing", NEIGH2))),
    # Our own lease's MAC changed: the in-place MAC change flushes the device's neighbours
    # (permanent ones too), so the same plan writes them again.
    Drift("own-lease-mac-changed", lambda ns: None,
          (("drift", f"mac desired {mac_of(1, 0x77)}, live {mac_of(1)}"),),
          nodes={1: mac_of(1, 0x77), 2: mac_of(2), 3: mac_of(3)}),
]


@pytest.mark.parametrize("drift", DRIFTS, ids=lambda d: d.name)
def test_drift_is_shown_then_repaired_by_one_apply(drift, applied, tmp_path, capsys):
    ns = applied.ns
    leases = write_snapshot(tmp_path / "after.json", drift.nodes)
    drift.damage(ns)

    rc, out, err = cli(capsys, "show", *node_args(leases, ns))
    assert rc == 2, out + err
    lines = out.splitlines()
    for status, text in drift.show:
        assert any(line.startswith(f"[{status}]") and text in line for line in lines), (status, text, out)

    rc, out, err = cli(capsys, "apply", *node_args(leases, ns))
    assert rc == 0, out + err
    rc, out, err = cli(capsys, "plan", *node_args(leases, ns))
    assert rc == 0, out + err
    want = expected(1, drift.nodes)
    if drift.connected_by_us:
        want["routes"] = sorted(r[:3] + ("73",) + r[4:] if r[2] == "cni0" else r for r in want["routes"])
    assert observed(ns) == want
    rc, out, err = cli(capsys, "show", *node_args(leases, ns))
    assert rc == 0 and out.splitlines()[-1].endswith(" ok, 0 missing, 0 drift, 0 stale, 0 conflict"), out + err


# ------------------------------------------------------------- foreign state

def test_a_foreign_route_inside_a_peers_subnet_is_reported_and_left_alone(applied, leases, capsys):
    """Longest prefix wins: a foreign /25 inside a peer's /24 sends half its pods elsewhere."""
    ns = applied.ns
    run(ns, "ip", "route", "add", "100.64.2.128/25", "via", GATEWAY, "dev", "eth0", "proto", "static")
    rc, out, err = cli(capsys, "show", *node_args(leases, ns))
    assert rc == 2, out + err
    assert any(line.startswith("[conflict]") and ROUTE2 in line
               and f"partly taken by foreign route 100.64.2.128/25 via {GATEWAY} dev eth0" in line
               for line in out.splitlines()), out
    rc, out, err = cli(capsys, "apply", *node_args(leases, ns))
    assert "partly taken by foreign route 100.64.2.128/25" in out, out + err
    assert ("100.64.2.128/25", GATEWAY, "eth0", "static", False) in observed(ns)["routes"]
    assert ("100.64.2.0/24", "100.64.2.0", "flannel.1", "73", True) in observed(ns)["routes"]


def _wait_until_settled(ns: str, devices: tuple[str, ...]) -> None:
    """Operational state moves asynchronously (linkwatch): wait until every device is UP,
    so before/after comparisons see settled rows.  Never asserts a duration."""
    for _ in range(100):
        if all(x["operstate"] == "UP" for d in devices for x in ip_json(ns, f"link show {d}")):
            return
        time.sleep(0.05)
    raise AssertionError(f"{devices} did not come up: {[ip_json(ns, f'link show {d}') for d in devices]}")


def _without_timers(link: dict) -> dict:
    """A link row minus the bridge port's running timers (``forward_delay_timer`` counts down by itself)."""
    slave = link.get("linkinfo", {}).get("info_slave_data")
    if slave is not None:
        link["linkinfo"]["info_slave_data"] = {k: v for k, v in slave.items() if not k.endswith("_timer")}
    return link


def foreign_view(ns: str) -> dict:
    """``ip -j`` rows of every foreign object planted by the test, exactly as iproute2 prints them."""
    [cni0] = ip_json(ns, "addr show dev cni0")
    return {
        "routes on eth0": ip_json(ns, "route show table main dev eth0"),
        "table 100": ip_json(ns, "route show table 100"),
        "outside the network on flannel.1": ip_json(ns, "route show table main 198.19.5.0/24"),
        "cni0 routes (connected)": ip_json(ns, "route show table main dev cni0"),
        "non-permanent neighbours": [n for n in ip_json(ns, "neigh show dev flannel.1")
                                     if "PERMANENT" not in n["state"]],
        "non-permanent fdb": [f for f in bridge_json(ns, "fdb show dev flannel.1") if f.get("state") != "permanent"],
        "pod veth": [_without_timers(x) for x in ip_json(ns, "-d link show vethpod0")
                     + ip_json(ns, "-d link show vethpod0p")],
        "cni0 foreign address": [a for a in cni0["addr_info"] if a.get("local") == "198.19.9.1"],
        "cni0 own address (right: never rewritten)": [a for a in cni0["addr_info"] if a.get("local") == "100.64.1.1"],
    }


def test_foreign_state_survives_every_apply(applied, tmp_path, capsys):
    ns = applied.ns
    run(ns, "ip", "route", "add", "100.64.200.0/24", "via", GATEWAY, "dev", "eth0")             # in the network
    run(ns, "ip", "route", "add", "198.19.7.0/24", "via", GATEWAY, "dev", "eth0", "proto", "73")  # our proto
    run(ns, "ip", "route", "add", "100.64.201.0/24", "via", "100.64.201.0", "dev", "flannel.1", "onlink",
        "table", "100", "proto", "73")
    run(ns, "ip", "route", "add", "198.19.5.0/24", "via", "100.64.2.0", "dev", "flannel.1", "onlink")
    run(ns, "ip", "neigh", "add", "100.64.7.0", "lladdr", mac_of(7), "dev", "flannel.1", "nud", "stale")
    run(ns, "bridge", "fdb", "add", mac_of(8), "dev", "flannel.1", "dst", "198.18.0.8", "self", "static")
    run(ns, "ip", "link", "add", "vethpod0", "mtu", str(MTU), "type", "veth", "peer", "name", "vethpod0p")
    run(ns, "ip", "link", "set", "vethpod0", "master", "cni0", "up")
    run(ns, "ip", "link", "set", "vethpod0p", "up")
    run(ns, "ip", "addr", "add", "198.19.9.1/24", "dev", "cni0")
    _wait_until_settled(ns, ("vethpod0", "vethpod0p", "cni0"))
    before = foreign_view(ns)
    assert all(before.values()), before                      # every planted object is really there

    two = {1: mac_of(1), 2: mac_of(2)}
    repairs = [
        ("route deleted", lambda: run(ns, "ip", "route", "del", "100.64.2.0/24", "dev", "flannel.1"), THREE),
        ("vxlan mtu", lambda: run(ns, "ip", "link", "set", "flannel.1", "mtu", "1400"), THREE),
        ("cni0 mtu", lambda: run(ns, "ip", "link", "set", "cni0", "mtu", "1400"), THREE),
        ("neighbour mac", lambda: run(ns, "ip", "neigh", "replace", "100.64.3.0", "lladdr", mac_of(3, 0xff),
                                      "dev", "flannel.1", "nud", "permanent"), THREE),
        ("stale fdb", lambda: run(ns, "bridge", "fdb", "add", mac_of(9), "dev", "flannel.1", "dst", "198.18.0.9",
                                  "self", "permanent"), THREE),
        ("peer mac changed", lambda: None, {1: mac_of(1), 2: mac_of(2), 3: mac_of(3, 0x99)}),
        ("peer removed", lambda: None, two),
    ]
    for what, damage, nodes in repairs:
        leases = write_snapshot(tmp_path / "leases.json", nodes)
        damage()
        rc, out, err = cli(capsys, "apply", *node_args(leases, ns))
        assert rc == 0, (what, out + err)
        assert foreign_view(ns) == before, what
        rc, out, err = cli(capsys, "plan", *node_args(leases, ns))
        assert rc == 0, (what, out + err)
    # The agent's own state is exactly right around the foreign objects.
    view = observed(ns)
    assert view["flannel.1"] == expected(1, two)["flannel.1"]
    assert view["neighbours"] == sorted(expected(1, two)["neighbours"] + [("100.64.7.0", mac_of(7), ("STALE",))])


# ------------------------------------------------------------ subnet changes

def test_a_new_own_subnet_keeps_the_peers_entries(node, tmp_path, capsys):
    """Node 1 held 100.64.4.0/24 and now holds 100.64.1.0/24 (its lease expired; it got another)."""
    old = write_snapshot(tmp_path / "old.json", THREE, subnets={1: 4})
    rc, out, err = cli(capsys, "apply", *node_args(old, node.ns))
    assert rc == 0 and observed(node.ns) == expected(1, THREE, subnets={1: 4}), out + err

    new = write_snapshot(tmp_path / "new.json", THREE)
    rc, out, err = cli(capsys, "apply", *node_args(new, node.ns))
    assert rc == 0, out + err
    rc, out, err = cli(capsys, "plan", *node_args(new, node.ns))
    assert rc == 0, out + err
    assert observed(node.ns) == expected(1, THREE)


def test_a_stale_bridge_address_does_not_block_a_peers_route(applied, tmp_path, capsys):
    ns = applied.ns
    run(ns, "ip", "addr", "add", "100.64.4.1/24", "dev", "cni0")
    four = {**THREE, 4: mac_of(4)}
    leases = write_snapshot(tmp_path / "four.json", four)
    rc, out, err = cli(capsys, "apply", *node_args(leases, ns))
    assert rc == 0, out + err
    rc, out, err = cli(capsys, "plan", *node_args(leases, ns))
    assert rc == 0, out + err
    assert observed(ns) == expected(1, four)


def test_an_administrators_route_at_a_peers_key_is_a_conflict_never_overwritten(node, leases, capsys):
    """A static route for node 2's subnet via the underlay: apply leaves it and says so."""
    run(node.ns, "ip", "route", "add", "100.64.2.0/24", "via", "198.18.0.77", "dev", "eth0", "proto", "static")
    before = [r for r in ip_json(node.ns, "-4 route show 100.64.2.0/24")]
    rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns))
    assert rc == 1
    assert "error: conflict: route 100.64.2.0/24 via 100.64.2.0 dev flannel.1 onlink is held by foreign " \
           "route 100.64.2.0/24 via 198.18.0.77 dev eth0 (proto 4); left alone" in err
    assert ip_json(node.ns, "-4 route show 100.64.2.0/24") == before
    # Everything else converged; the conflict stays visible in plan and show.
    rc, out, _ = cli(capsys, "plan", *node_args(leases, node.ns))
    assert rc == 2 and "Plan: no changes; 1 conflict(s) need an operator." in out
    rc, out, _ = cli(capsys, "show", *node_args(leases, node.ns))
    assert rc == 2 and "[conflict] route 100.64.2.0/24 via 100.64.2.0 dev flannel.1 onlink" in out


# ------------------------------------------------------------ bad namespace

@pytest.mark.parametrize("command", ["plan", "show", "apply"])
def test_a_missing_namespace_is_an_error_and_is_not_created(command, leases, capsys):
    name = unique_name("missing")
    rc, out, err = cli(capsys, command, "--leases-file", leases, "--netns", name, "--iface", "eth0")
    assert rc == 1
    assert err.startswith("error: ") and name in err and "does not exist" in err, err
    assert not netns_exists(name)


def test_the_installed_entry_point_refuses_a_missing_namespace(leases):
    name = unique_name("missing")
    proc = subprocess.run([sys.executable, "-m", "reconciler", "plan", "--leases-file", leases, "--netns", name],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"network namespace {name!r} does not exist" in proc.stderr
    assert proc.stdout == ""
    assert not netns_exists(name)


@pytest.mark.parametrize("writer, reader", [("batched", "pyroute2"), ("pyroute2", "batched")])
def test_each_backend_builds_the_same_node_through_the_cli(node, leases, capsys, writer, reader):
    """batched (the default) and pyroute2 (the reference): what one writes, the other reads as in sync."""
    rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns), "--netlink-backend", writer)
    assert rc == 0, out + err
    assert observed(node.ns) == expected(1, THREE)
    rc, out, err = cli(capsys, "plan", *node_args(leases, node.ns), "--netlink-backend", reader)
    assert rc == 0, out + err


def test_the_default_backend_is_batched_and_the_environment_can_choose(node, leases, capsys, monkeypatch):
    from reconciler.cli.main import open_backend, parse_args
    from reconciler.kernel.netlink.batched import BatchedBackend
    from reconciler.kernel.netlink.reference import PyrouteBackend

    for env, want in ((None, BatchedBackend), ("pyroute2", PyrouteBackend), ("batched", BatchedBackend)):
        if env is None:
            monkeypatch.delenv("FLANNELD_NETLINK_BACKEND", raising=False)
        else:
            monkeypatch.setenv("FLANNELD_NETLINK_BACKEND", env)
        args = parse_args(["apply", *node_args(leases, node.ns)])
        with open_backend(args) as backend:
            assert type(backend) is want
    monkeypatch.setenv("FLANNELD_NETLINK_BACKEND", "netlink2")
    rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns))
    assert (rc, out) == (1, "")
    assert err == "error: FLANNELD_NETLINK_BACKEND='netlink2': must be one of batched, pyroute2\n"
    assert "flannel.1" not in observed(node.ns)["devices"]      # nothing written


def test_an_underlay_mtu_larger_than_the_interface_is_refused_up_front(node, leases, capsys):
    rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns), "--underlay-mtu", "9000")
    assert rc == 1 and out == ""
    assert "--underlay-mtu 9000 is larger than the MTU of the underlay eth0 (1500)" in err
    assert "flannel.1" not in observed(node.ns)["devices"]  # nothing written


# ------------------------------------------------- apply: rules read meanwhile

def test_apply_reads_the_rules_while_the_netlink_writes_go(node, leases, capsys, monkeypatch):
    import threading

    import reconciler.cli.main as cli_main
    import reconciler.kernel.apply as kernel_apply

    reading, seen = threading.Event(), []
    real_rules, real_apply = cli_main.cli_rule_plan, kernel_apply.apply_plan

    def rules(*a, **kw):
        reading.set()
        return real_rules(*a, **kw)

    def apply(*a, **kw):
        # Never set if the rules were read only after the writes; the timeout only ends the wait.
        seen.append(reading.wait(timeout=60))
        return real_apply(*a, **kw)

    monkeypatch.setattr(cli_main, "cli_rule_plan", rules)
    monkeypatch.setattr(kernel_apply, "apply_plan", apply)
    rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns), "--output", "json")
    assert seen == [True] and rc == 0, out + err
    doc = json.loads(out)
    assert doc["summary"] == {"create": 14, "update": 0, "delete": 0} and doc["failed"] == 0
    assert observed(node.ns) == expected(1, THREE)


def test_apply_whose_rules_read_fails_still_writes_the_kernel_and_says_the_error(node, leases, capsys,
                                                                                  monkeypatch):
    import errno

    import reconciler.cli.main as cli_main

    def rules(*a, **kw):
        raise OSError(errno.EACCES, "Permission denied", "/run/xtables.lock")

    monkeypatch.setattr(cli_main, "cli_rule_plan", rules)
    rc, out, err = cli(capsys, "apply", *node_args(leases, node.ns))
    assert (rc, out, err) == (1, "", "error: /run/xtables.lock: Permission denied\n")
    assert observed(node.ns) == expected(1, THREE)      # the netlink writes went, as before the read
