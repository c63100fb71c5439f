"""flanneld's interface selection (--iface repeatable, --iface-regex, --iface-can-reach, the
interface of --public-ip), and --bridge / --no-bridge.

The kernel tests build one namespace with several veths and ask both
backends (pyroute2's and the batched one) the same questions; iproute2's
``ip route get`` is the oracle for --iface-can-reach.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.core.config import parse_network_config
from reconciler.core.desired import NodeParams, desired_state
from reconciler.core.errors import NetlinkError, ReconcilerError
from reconciler.core.leases import parse_snapshot, validate_leases
from reconciler.core.model import Address, Link, Route
from reconciler.kernel.netlink.common import UnderlaySpec, compile_iface_regex, match_iface_regex
from reconciler.core.ownership import FlannelOwnership
from reconciler.core.reconcile import owned_devices
from tests.netns import ip_json, run

EXAMPLE = Path(__file__).resolve().parent.parent / "reconciler" / "examples" / "cluster-3-nodes.json"
ROOT = str(Path(__file__).resolve().parent.parent)


# ------------------------------------------------------------------ pure parts

IFACES = [(1, "lo", ["127.0.0.1"]), (2, "eth0", ["198.18.0.1"]), (3, "eth1", ["198.18.1.1", "198.18.1.7"]),
          (4, "bond0", [])]


def test_regex_matches_addresses_of_every_interface_before_any_name():
    # "1" is in every name-less match below: addresses win, in ifindex order.
    assert match_iface_regex(r"198\.18\.1\.", IFACES) == (3, "198.18.1.1")
    assert match_iface_regex(r"\.7$", IFACES) == (3, "198.18.1.7")       # the matched address is the one used
    assert match_iface_regex(r"^bond", IFACES) == (4, None)               # a name
    assert match_iface_regex(r"eth1|198\.18\.0\.1", IFACES) == (2, "198.18.0.1")  # an address beats a name
    assert match_iface_regex(r"^wlan", IFACES) is None


def test_a_bad_regex_is_named():
    with pytest.raises(ReconcilerError, match=r"--iface-regex '\[': not a regular expression"):
        compile_iface_regex("[")


def test_spec_from_the_old_single_form():
    assert UnderlaySpec.of("eth0") == UnderlaySpec(ifaces=("eth0",))
    assert UnderlaySpec.of(None) == UnderlaySpec()
    assert not UnderlaySpec(public_ip="198.18.0.1").explicit
    assert UnderlaySpec(can_reach="198.18.0.9").explicit


# ----------------------------------------------------------- --no-bridge, pure

def _cluster():
    snap = parse_snapshot(EXAMPLE.read_text())
    cfg = parse_network_config(next(kv.value for kv in snap.kvs if kv.key.endswith("/config")))
    leases, _ = validate_leases(cfg, snap.kvs, snap.prefix)
    return cfg, leases


def test_no_bridge_leaves_out_the_bridge_and_its_addresses_and_owns_no_bridge():
    cfg, leases = _cluster()
    with_bridge = desired_state(cfg, leases, NodeParams(public_ip="198.18.0.1"))
    without = desired_state(cfg, leases, NodeParams(public_ip="198.18.0.1", bridge=None))
    assert with_bridge.get("link", "cni0") is not None
    assert set(with_bridge) - set(without) == {Link("cni0", "bridge", mtu=1450, up=True),
                                               Address("cni0", "100.64.1.1/24"),
                                               Route("100.64.1.0/24", None, "cni0", False)}
    assert not any(getattr(o, "dev", None) == "cni0" or getattr(o, "name", None) == "cni0" for o in without)
    policy = FlannelOwnership(cfg, None)
    assert not policy.owns(Link("cni0", "bridge")) and not policy.owns(Address("cni0", "100.64.1.1/24"))
    assert owned_devices(cfg, None) == ("flannel-v6.1", "flannel.1")


def test_bridge_name_is_configurable():
    cfg, leases = _cluster()
    state = desired_state(cfg, leases, NodeParams(public_ip="198.18.0.1", bridge="docker0"))
    assert state.get("link", "docker0").type == "bridge" and state.get("link", "cni0") is None
    assert FlannelOwnership(cfg, "docker0").owns(Address("docker0", "100.64.1.1/24"))
    assert not FlannelOwnership(cfg, "docker0").owns(Link("cni0", "bridge"))


def _cli(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "reconciler", *argv], capture_output=True, text=True,
                          env=env, timeout=60)
    if check and proc.returncode not in (0, 2):
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def test_bad_bridge_names_and_regexes_are_one_error_line():
    for args, text in ((["--bridge", "a-very-long-bridge-name"], "error: --bridge 'a-very-long-bridge-name'"),
                       (["--iface-regex", "("], "error: --iface-regex '(': not a regular expression")):
        proc = _cli("plan", "--leases-file", str(EXAMPLE), "--public-ip", "198.18.0.1", "--offline", *args,
                    check=False)
        assert proc.returncode == 1 and proc.stderr.startswith(text) and "Traceback" not in proc.stderr


# ---------------------------------------------------------- the real kernel

@pytest.fixture
def host(netns):
    """eth0 198.18.0.1/24 (default route), eth1 198.18.1.1/24 + 198.18.1.7/24, eth2 198.18.2.1/24
    (route 198.18.99.0/24), eth3 with no IPv4 address: veths whose peers stay in the namespace."""
    for i in range(4):
        run(netns, "ip", "link", "add", f"eth{i}", "type", "veth", "peer", "name", f"peer{i}")
        run(netns, "ip", "link", "set", f"eth{i}", "up")
        run(netns, "ip", "link", "set", f"peer{i}", "up")
        if i < 3:
            run(netns, "ip", "addr", "add", f"198.18.{i}.1/24", "dev", f"eth{i}")
    run(netns, "ip", "addr", "add", "198.18.1.7/24", "dev", "eth1")
    run(netns, "ip", "route", "add", "default", "via", "198.18.0.254")
    run(netns, "ip", "route", "add", "198.18.99.0/24", "dev", "eth2")
    return netns


@pytest.fixture(params=["pyroute2", "batched"])
def backend(request, host):
    if request.param == "pyroute2":
        from reconciler.kernel.netlink.reference import PyrouteBackend as B
    else:
        from reconciler.kernel.netlink.batched import BatchedBackend as B
    with B(host) as b:
        yield b


def _pick(backend, **kw) -> tuple[str, str]:
    u = backend.underlay(UnderlaySpec(**kw))
    return u.name, u.address


def test_ifaces_are_tried_in_order(backend):
    assert _pick(backend, ifaces=("nosuch0", "eth1")) == ("eth1", "198.18.1.1")
    # eth3 has no IPv4 address: flanneld moves on, so do we; named by address, that address is used.
    assert _pick(backend, ifaces=("eth3", "198.18.1.7", "eth0")) == ("eth1", "198.18.1.7")
    assert _pick(backend, ifaces=("eth2", "eth1")) == ("eth2", "198.18.2.1")


def test_regexes_after_ifaces_addresses_before_names(backend):
    assert _pick(backend, regexes=(r"198\.18\.1\.7",)) == ("eth1", "198.18.1.7")
    assert _pick(backend, regexes=(r"^eth2$",)) == ("eth2", "198.18.2.1")
    assert _pick(backend, regexes=(r"^wlan", r"^eth2$")) == ("eth2", "198.18.2.1")
    assert _pick(backend, ifaces=("nosuch0",), regexes=(r"^eth1$",)) == ("eth1", "198.18.1.1")
    assert _pick(backend, ifaces=("eth0",), regexes=(r"^eth1$",)) == ("eth0", "198.18.0.1")


def test_can_reach_is_the_interface_ip_route_get_names(backend, host):
    for target in ("198.18.99.5", "198.18.1.200", "198.19.7.7"):
        oracle = ip_json(host, ["route", "get", target])[0]
        assert _pick(backend, can_reach=target) == (oracle["dev"], oracle["prefsrc"])
    assert _pick(backend, can_reach="198.18.99.5") == ("eth2", "198.18.2.1")
    assert _pick(backend, can_reach="198.19.7.7") == ("eth0", "198.18.0.1")
    # Tried last: a matching --iface wins.
    assert _pick(backend, ifaces=("eth1",), can_reach="198.18.99.5") == ("eth1", "198.18.1.1")


def test_public_ip_alone_names_the_interface_holding_it(backend):
    assert _pick(backend, public_ip="198.18.2.1") == ("eth2", "198.18.2.1")
    # A NAT'd --public-ip that no interface holds: the default route's interface.
    assert _pick(backend, public_ip="198.18.200.1") == ("eth0", "198.18.0.1")
    assert _pick(backend) == ("eth0", "198.18.0.1")


def test_nothing_matches_names_every_try(backend, host):
    # can-reach is the last resort, and here it matches.
    assert _pick(backend, ifaces=("nosuch0", "eth3"), regexes=("^wlan",), can_reach="198.18.99.5")[0] == "eth2"
    run(host, "ip", "route", "del", "default")
    with pytest.raises(NetlinkError) as exc:
        backend.underlay(UnderlaySpec(ifaces=("nosuch0", "eth3"), regexes=("^wlan",), can_reach="198.19.7.7"))
    text = str(exc.value)
    assert exc.value.errno == errno.ENODEV
    for part in ("--iface nosuch0", "--iface eth3", "--iface-regex '^wlan'", "--iface-can-reach 198.19.7.7",
                 "no interface named 'nosuch0'", "eth3 has no usable IPv4 address", "no route to 198.19.7.7"):
        assert part in text, text
    # One try only: its own error, unchanged.
    with pytest.raises(NetlinkError, match="no interface named 'nosuch0'") as exc:
        backend.underlay(UnderlaySpec(ifaces=("nosuch0",)))
    assert exc.value.errno == errno.ENODEV


def test_plan_uses_the_selected_interface_and_the_bridge_options(host):
    """The CLI end to end in the namespace: the VXLAN device's underlay is the
    chosen interface; --no-bridge leaves a Docker-made bridge alone."""
    args = ["plan", "--leases-file", str(EXAMPLE), "--public-ip", "198.18.0.1", "--netns", host, "--output", "json"]
    out = json.loads(_cli(*args, "--iface", "nosuch0", "--iface-regex", "^eth2$").stdout)
    vxlan = [c["object"] for c in out["changes"] if c["kind"] == "link" and c["object"]["name"] == "flannel.1"]
    assert vxlan and vxlan[0]["underlay"] == "eth2"

    # docker0 as Docker --bip=${FLANNEL_SUBNET} makes it: the agent must not touch it.
    run(host, "ip", "link", "add", "cni0", "type", "bridge")
    run(host, "ip", "addr", "add", "100.64.1.1/24", "dev", "cni0")
    run(host, "ip", "addr", "add", "100.64.1.77/24", "dev", "cni0")     # not what we would want
    proc = _cli("apply", "--leases-file", str(EXAMPLE), "--public-ip", "198.18.0.1", "--netns", host,
                "--iface", "eth0", "--no-bridge")
    assert proc.returncode == 0, proc.stderr
    addrs = {a["local"] for x in ip_json(host, "-4 addr show dev cni0") for a in x["addr_info"]}
    assert addrs == {"100.64.1.1", "100.64.1.77"}
    assert ip_json(host, "link show flannel.1")[0]["ifname"] == "flannel.1"
    shown = json.loads(_cli("show", "--leases-file", str(EXAMPLE), "--public-ip", "198.18.0.1", "--netns", host,
                            "--iface", "eth0", "--no-bridge", "--output", "json").stdout)
    assert shown["objects"] and not any("cni0" in o["object"] for o in shown["objects"]), shown

    # And --bridge NAME: that bridge is made and owned, cni0 stays foreign (and untouched).
    proc = _cli("apply", "--leases-file", str(EXAMPLE), "--public-ip", "198.18.0.1", "--netns", host,
                "--iface", "eth0", "--bridge", "flbr0")
    assert proc.returncode == 0, proc.stderr
    assert {a["local"] for x in ip_json(host, "-4 addr show dev flbr0") for a in x["addr_info"]} == {"100.64.1.1"}
    assert {a["local"] for x in ip_json(host, "-4 addr show dev cni0") for a in x["addr_info"]} == addrs
