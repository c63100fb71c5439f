"""Dual stack against a real kernel: ``apply``/``show``/``plan --netns`` with leases written
the way flanneld writes them, and iproute2 as the oracle.

The cluster: 100.64.0.0/16 and fd00:100:64::/48; node *n* is 198.18.0.*n* and
fd00:198:18::*n* on the underlay (``underlay_factory(1, ipv6=True)``: the
namespace's ``eth0`` holds both), with subnets 100.64.*n*.0/24 and
fd00:100:64:*n*::/64, VtepMAC 0a:58:64:40:0*n*:00 and v6 VtepMAC
0a:58:64:60:0*n*:00.  The node under test is node 1; nodes 2 and 3 exist only
as leases.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.netns import bridge_json, ip_json, run
from tests.test_kernel_e2e import cli

pytestmark = pytest.mark.root

PREFIX = "/coreos.com/network"
CONFIG = ('{"Network":"100.64.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:100:64::/48",'
          '"Backend":{"Type":"vxlan","VNI":1}}')
DEV6 = "flannel-v6.1"


def mac4(n: int, last: int = 0) -> str:
    return f"0a:58:64:40:{n:02x}:{last:02x}"


def mac6(n: int, last: int = 0) -> str:
    return f"0a:58:64:60:{n:02x}:{last:02x}"


def flanneld_value(n: int, v6_mac: str | None = None) -> str:
    """Node n's lease value as flanneld's json.Marshal(LeaseAttrs) writes it, literally."""
    return ('{"PublicIP":"198.18.0.%d","PublicIPv6":"fd00:198:18::%x","BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}'
            % (n, n, mac4(n), v6_mac or mac6(n)))


def write_leases(path: Path, nodes=(1, 2, 3), v6_macs: dict[int, str] | None = None) -> str:
    kvs = [{"key": f"{PREFIX}/config", "value": CONFIG, "lease": 0}]
    for n in nodes:
        kvs.append({"key": f"{PREFIX}/subnets/100.64.{n}.0-24&fd00:100:64:{n:x}::-64",
                    "value": flanneld_value(n, (v6_macs or {}).get(n)), "lease": 7587880000000000 + n})
    path.write_text(json.dumps({"prefix": PREFIX, "revision": 12, "kvs": kvs}, indent=2))
    return str(path)


def args(leases: str, ns: str, *more: str) -> list[str]:
    return ["--leases-file", leases, "--netns", ns, "--iface", "eth0", *more]


# ------------------------------------------------------------------ the oracle

def observed6(ns: str) -> dict:
    """What iproute2 shows of the IPv6 overlay in ``ns``."""
    out: dict = {}
    links = {x["ifname"]: x for x in ip_json(ns, "-d link show")}
    vx = links.get(DEV6)
    if vx is not None:
        data = vx["linkinfo"]["info_data"]
        out["device"] = dict(kind=vx["linkinfo"]["info_kind"], id=data["id"], local=data.get("local6"),
                             link=data.get("link"), port=data["port"], learning=data["learning"], mtu=vx["mtu"],
                             mac=vx["address"], up="UP" in vx["flags"])
        out["device addresses"] = _v6_addrs(ns, DEV6)
        out["neighbours"] = sorted((n["dst"], n.get("lladdr"), tuple(n["state"]))
                                   for n in ip_json(ns, f"-6 neigh show dev {DEV6}") if "lladdr" in n)
        out["fdb"] = sorted((f["mac"], f.get("dst"), tuple(f["flags"]), f.get("state"))
                            for f in bridge_json(ns, f"fdb show dev {DEV6}"))
    if "cni0" in links:
        out["cni0 addresses"] = _v6_addrs(ns, "cni0")
    out["routes"] = sorted(
        (r["dst"], r.get("gateway"), r.get("dev"), r.get("protocol", "boot"), "onlink" in r.get("flags", []),
         r.get("metric"))
        for r in ip_json(ns, "-6 route show table main")
        if r.get("protocol") != "kernel")
    return out


def _v6_addrs(ns: str, dev: str) -> list[tuple]:
    [link] = ip_json(ns, f"-6 addr show dev {dev}")
    return sorted((a["local"], a["prefixlen"]) for a in link["addr_info"] if a["scope"] != "link")


def expected6(me: int = 1, peers=(2, 3), v6_macs: dict[int, str] | None = None) -> dict:
    """flanneld's IPv6 objects on node ``me`` (docs/dual-stack.md), with our route protocol."""
    macs = {n: (v6_macs or {}).get(n, mac6(n)) for n in (me, *peers)}
    return {
        "device": dict(kind="vxlan", id=1, local=f"fd00:198:18::{me:x}", link="eth0", port=8472, learning=False,
                       mtu=1430, mac=macs[me], up=True),
        "device addresses": [(f"fd00:100:64:{me:x}::", 128)],
        "neighbours": sorted((f"fd00:100:64:{p:x}::", macs[p], ("PERMANENT",)) for p in peers),
        "fdb": sorted((macs[p], f"fd00:198:18::{p:x}", ("self",), "permanent") for p in peers),
        "cni0 addresses": [(f"fd00:100:64:{me:x}::1", 64)],
        "routes": sorted((f"fd00:100:64:{p:x}::/64", f"fd00:100:64:{p:x}::", DEV6, "73", True, 1024)
                         for p in peers),
    }


@pytest.fixture
def node(underlay_factory):
    """Node 1 on a dual-stack underlay, nothing of flannel's yet."""
    return underlay_factory(1, ipv6=True).nodes[0]


@pytest.fixture
def leases(tmp_path):
    return write_leases(tmp_path / "leases.json")


@pytest.fixture(params=["pyroute2", "batched"])
def backend(request) -> str:
    return request.param


# ------------------------------------------------------------------ a fresh node

def test_apply_builds_flanneld_ipv6_objects_exactly(node, leases, backend, capsys):
    # The packet filter rules have tests of their own (test_rules_*): the kernel objects alone here.
    rc, out, err = cli(capsys, "apply", *args(leases, node.ns, "--netlink-backend", backend, "--output", "json",
                                              "--iptables-forward-rules=false"))
    assert rc == 0, out + err
    doc = json.loads(out)
    assert doc["node"] == {"public_ip": "198.18.0.1", "subnet": "100.64.1.0/24",
                           "ipv6_subnet": "fd00:100:64:1::/64"}
    assert doc["summary"] == {"create": 19, "update": 0, "delete": 0} and doc["failed"] == 0
    assert observed6(node.ns) == expected6()
    # The IPv4 side is there as well, untouched by dual stack.
    assert [a["local"] for a in ip_json(node.ns, "-4 addr show dev flannel.1")[0]["addr_info"]] == ["100.64.1.0"]
    assert run(node.ns, "cat", f"/proc/sys/net/ipv6/conf/{DEV6}/accept_ra").stdout.strip() == "0"

    rc, out, err = cli(capsys, "show", *args(leases, node.ns, "--netlink-backend", backend,
                                             "--iptables-forward-rules=false"))
    assert rc == 0 and out.splitlines()[-1] == "20 ok, 0 missing, 0 drift, 0 stale, 0 conflict", out + err
    rc, out, err = cli(capsys, "plan", *args(leases, node.ns, "--netlink-backend", backend,
                                             "--iptables-forward-rules=false"))
    assert (rc, out.splitlines()[-1]) == (0, "In sync: no changes."), out + err


# ------------------------------------------------------------------ drift repair

ROUTE2 = f"route fd00:100:64:2::/64 via fd00:100:64:2:: dev {DEV6} onlink metric 1024"
NEIGH2 = f"neigh fd00:100:64:2:: lladdr {mac6(2)} dev {DEV6} nud permanent"
FDB2 = f"fdb {mac6(2)} dev {DEV6} dst fd00:198:18::2 self permanent"

DRIFTS = {
    "route-deleted": (lambda ns: run(ns, "ip", "-6", "route", "del", "fd00:100:64:2::/64", "dev", DEV6),
                      [("missing", "route fd00:100:64:2::/64 via fd00:100:64:2:: dev flannel-v6.1")]),
    "neighbour-mac": (lambda ns: run(ns, "ip", "-6", "neigh", "replace", "fd00:100:64:2::", "lladdr", mac6(2, 0xff),
                                     "dev", DEV6, "nud", "permanent"),
                      [("drift", f"mac desired {mac6(2)}, live {mac6(2, 0xff)}")]),
    "fdb-dst": (lambda ns: run(ns, "bridge", "fdb", "replace", mac6(2), "dev", DEV6, "dst", "fd00:198:18::99",
                               "self", "permanent"),
                [("drift", "dst desired fd00:198:18::2, live fd00:198:18::99")]),
    "stale-fdb": (lambda ns: run(ns, "bridge", "fdb", "add", mac6(9), "dev", DEV6, "dst", "fd00:198:18::9",
                                 "self", "permanent"),
                  [("stale", f"fdb {mac6(9)} dev {DEV6} dst fd00:198:18::9 self permanent")]),
    "address-deleted": (lambda ns: run(ns, "ip", "-6", "addr", "del", "fd00:100:64:1::/128", "dev", DEV6),
                        [("missing", f"address fd00:100:64:1::/128 dev {DEV6}")]),
    "device-deleted": (lambda ns: run(ns, "ip", "link", "del", DEV6),
                       [("missing", f"link {DEV6} type vxlan"), ("missing", "route fd00:100:64:2::/64"),
                        ("missing", NEIGH2), ("missing", FDB2)]),
    "device-down": (lambda ns: run(ns, "ip", "link", "set", DEV6, "down"),
                    [("drift", "up desired yes, live no")]),
}


@pytest.mark.parametrize("name", sorted(DRIFTS))
def test_ipv6_drift_is_shown_then_repaired(name, node, leases, backend, capsys):
    damage, lines = DRIFTS[name]
    rc, out, err = cli(capsys, "apply", *args(leases, node.ns, "--netlink-backend", backend))
    assert rc == 0, out + err
    damage(node.ns)
    rc, out, err = cli(capsys, "show", *args(leases, node.ns, "--netlink-backend", backend))
    assert rc == 2, out + err
    for status, text in lines:
        assert any(line.startswith(f"[{status}]") and text in line for line in out.splitlines()), (status, text, out)
    rc, out, err = cli(capsys, "apply", *args(leases, node.ns, "--netlink-backend", backend))
    assert rc == 0, out + err
    assert observed6(node.ns) == expected6()
    rc, out, err = cli(capsys, "plan", *args(leases, node.ns, "--netlink-backend", backend))
    assert rc == 0, out + err


def test_peer_changes_reach_the_ipv6_entries(node, leases, tmp_path, capsys):
    """A peer's new v6 VtepMAC replaces its neighbour and FDB entry (the old MAC's FDB entry
    goes too: flanneld leaves it); a peer that left is cleaned from the v6 device."""
    assert cli(capsys, "apply", *args(leases, node.ns))[0] == 0
    changed = write_leases(tmp_path / "changed.json", nodes=(1, 2), v6_macs={2: mac6(2, 0x99)})
    rc, out, err = cli(capsys, "apply", *args(changed, node.ns))
    assert rc == 0, out + err
    assert observed6(node.ns) == expected6(peers=(2,), v6_macs={2: mac6(2, 0x99)})


def test_a_foreign_ipv6_route_at_a_peers_key_is_a_conflict(node, leases, capsys):
    run(node.ns, "ip", "-6", "route", "add", "fd00:100:64:2::/64", "via", "fd00:198:18::77", "dev", "eth0",
        "metric", "1024", "proto", "static")
    rc, out, err = cli(capsys, "apply", *args(leases, node.ns))
    assert rc == 1 and "conflict" in err and "fd00:100:64:2::/64" in err, out + err
    [route] = ip_json(node.ns, "-6 route show fd00:100:64:2::/64")
    assert (route["gateway"], route["dev"], route["protocol"]) == ("fd00:198:18::77", "eth0", "static")
    rc, out, err = cli(capsys, "plan", *args(leases, node.ns))
    assert rc == 2 and "conflict" in out, out + err


# ------------------------------------------------------------------ flags and refusals

def test_public_ipv6_flag_sets_the_v6_device_local(tmp_path, capsys):
    leases = write_leases(tmp_path / "leases.json")
    # Node 1's lease says fd00:198:18::1; an offline plan shows what --public-ipv6 does to the device.
    rc, out, err = cli(capsys, "plan", "--leases-file", leases, "--public-ip", "198.18.0.1",
                       "--public-ipv6", "FD00:198:18:0::1", "--offline")
    assert rc == 2, out + err
    assert f"link {DEV6} type vxlan id 1 local fd00:198:18::1 " in out
    rc, out, err = cli(capsys, "plan", "--leases-file", leases, "--public-ip", "198.18.0.1",
                       "--public-ipv6", "198.18.0.1", "--offline")
    assert rc == 1 and err.startswith("error: --public-ipv6") and "Traceback" not in err, err


def test_ipv6_only_config_is_refused_by_every_command(tmp_path, capsys):
    path = tmp_path / "v6only.json"
    path.write_text(json.dumps({"prefix": PREFIX, "revision": 1, "kvs": [
        {"key": f"{PREFIX}/config", "value": '{"EnableIPv4":false,"EnableIPv6":true,'
                                              '"IPv6Network":"fd00:100:64::/48","Backend":{"Type":"vxlan"}}'}]}))
    for command in ("plan", "show"):
        rc, out, err = cli(capsys, command, "--leases-file", str(path), "--public-ip", "198.18.0.1",
                           *(["--offline"] if command == "plan" else ["--live-file", str(_empty(tmp_path))]))
        assert rc == 1 and err.count("\n") == 1, err
        assert err.startswith("error: network config: EnableIPv4: IPv6-only is not supported with etcd"), err


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "live.json"
    p.write_text('{"links": [], "addresses": [], "routes": [], "neighs": [], "fdb": []}')
    return p
