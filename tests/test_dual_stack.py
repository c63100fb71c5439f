"""Dual stack: flanneld's lease bytes and key, acquisition of both subnets, subnet.env
read-back, the IPv6 underlay address, per-family DirectRouting, and IPv6-only refused.

Pure tests first, then the same against a real etcd.
"""
from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network

import pytest

from reconciler.agent.acquire import LeaseKeeper, OutOfSubnets, acquire_lease, choose_subnet, lease_value
from reconciler.core.config import parse_network_config, require_ipv4
from reconciler.core.desired import NodeParams, desired_state, node_objects
from reconciler.core.errors import ConfigError, NetlinkError
from reconciler.core.leases import encode_lease_value, parse_lease, subnet_key, validate_leases, RawKV
from reconciler.kernel.netlink import Underlay
from reconciler.kernel.netlink.common import IFA_F_DEPRECATED, IFA_F_PERMANENT, IFA_F_TEMPORARY, IFA_F_TENTATIVE, \
    underlay_v6_of
from reconciler.agent.subnet_env import read_previous_ipv6_subnet, read_previous_subnet, render_subnet_env

DUAL_JSON = ('{"Network":"100.64.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:100:64::/48",'
             '"Backend":{"Type":"vxlan"}}')
DUAL = parse_network_config(DUAL_JSON)   # /24s from 100.64.1.0, /64s from fd00:100:64:1::
V4 = parse_network_config('{"Network":"100.64.0.0/16","Backend":{"Type":"vxlan"}}')
ME, ME6 = "198.18.0.1", "fd00:198:18::1"
MAC, MAC6 = "0e:00:00:00:00:01", "0e:00:00:00:60:01"


def n4(text: str) -> IPv4Network:
    return IPv4Network(text)


def n6(text: str) -> IPv6Network:
    return IPv6Network(text)


def dual_lease(i: int, ip: str | None = None, ip6: str | None = None, etcd_lease: int = 7,
               v6: str | None = None):
    """Node i's dual-stack lease: 100.64.i.0/24 & fd00:100:64:i::/64 (or ``v6``)."""
    sn, sn6 = n4(f"100.64.{i}.0/24"), n6(v6 or f"fd00:100:64:{i:x}::/64")
    value = encode_lease_value(ip or f"198.18.1.{i}", f"0e:00:00:00:01:{i:02x}", 1,
                               ip6 or f"fd00:198:18:1::{i:x}", f"0e:00:00:00:61:{i:02x}")
    return parse_lease(subnet_key(sn, sn6), value, etcd_lease)


# --------------------------------------------------------------------------------------------
# The bytes: flanneld's, written out literally (LeaseAttrs field order, json.Marshal, no newline)
# --------------------------------------------------------------------------------------------

FLANNELD_DUAL_VALUE = ('{"PublicIP":"198.18.0.1","PublicIPv6":"fd00:198:18::1","BackendType":"vxlan",'
                       '"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"},'
                       '"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:60:01"}}')


def test_dual_stack_value_and_key_are_flanneld_bytes():
    assert lease_value(DUAL, ME, MAC, ME6, MAC6) == FLANNELD_DUAL_VALUE
    assert subnet_key(n4("100.64.5.0/24"), n6("fd00:100:64:5::/64")) == "100.64.5.0-24&fd00:100:64:5::-64"
    # Go's net.IP.String(): lowercase, the longest zero run compressed, a single zero group kept.
    assert subnet_key(n4("100.64.5.0/24"), n6("FD00:0:64:0:5::/80")) == "100.64.5.0-24&fd00:0:64:0:5::-80"
    # The v4-only value is unchanged by dual stack support: PublicIPv6 null, no BackendV6Data.
    assert lease_value(V4, ME, MAC, ME6, MAC6) == (
        '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}}')


def test_dual_stack_needs_both_ipv6_inputs():
    with pytest.raises(ConfigError, match="--public-ipv6"):
        lease_value(DUAL, ME, MAC, None, MAC6)
    with pytest.raises(ConfigError, match="v6 VTEP MAC"):
        lease_value(DUAL, ME, MAC, ME6, None)


def test_peer_lease_written_by_flanneld_parses_to_both_families():
    lease = parse_lease("100.64.5.0-24&fd00:100:64:5::-64", FLANNELD_DUAL_VALUE, 9)
    assert (lease.subnet, lease.ipv6_subnet) == (n4("100.64.5.0/24"), n6("fd00:100:64:5::/64"))
    assert (lease.public_ip, lease.public_ipv6) == (ME, ME6)
    assert (lease.vtep_mac, lease.v6_vtep_mac, lease.v6_vni) == (MAC, MAC6, 1)


# --------------------------------------------------------------------------------------------
# IPv6-only: refused up front, with the reason
# --------------------------------------------------------------------------------------------

V6ONLY_JSON = '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:100:64::/48","Backend":{"Type":"vxlan"}}'


def test_ipv6_only_is_refused_with_the_reason():
    cfg = parse_network_config(V6ONLY_JSON)
    with pytest.raises(ConfigError) as exc:
        require_ipv4(cfg)
    text = str(exc.value)
    assert "IPv6-only is not supported with etcd" in text
    assert "PublicIP 0.0.0.0" in text and "0.0.0.0-0" in text and "dual stack" in text
    require_ipv4(DUAL)
    require_ipv4(V4)


def test_flanneld_ipv6_only_lease_is_skipped_not_fatal():
    """What a v6-only flanneld writes (key 0.0.0.0-0&..., PublicIP 0.0.0.0, no BackendData)
    cannot name its node: it is skipped with the reason, never crashes a cycle."""
    value = ('{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:198:18::9","BackendType":"vxlan",'
             '"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:60:09"}}')
    prefix = "/coreos.com/network"
    kv = RawKV(f"{prefix}/subnets/0.0.0.0-0&fd00:100:64:9::-64", value, 5)
    leases, skipped = validate_leases(DUAL, [kv], prefix)
    assert leases == [] and len(skipped) == 1 and "0.0.0.0" in skipped[0].reason


# --------------------------------------------------------------------------------------------
# choose_subnet in dual stack (pure)
# --------------------------------------------------------------------------------------------

def test_reuses_our_dual_stack_lease_by_public_ip():
    ours = dual_lease(42, ip=ME, ip6=ME6)
    c = choose_subnet(DUAL, [dual_lease(1), dual_lease(2), ours], ME, None, random.Random(0))
    assert (c.source, c.subnet, c.ipv6_subnet, c.lease) == ("own", n4("100.64.42.0/24"),
                                                              n6("fd00:100:64:2a::/64"), ours)


def test_v4_only_own_lease_does_not_fit_dual_stack_and_vice_versa():
    """flanneld's isIPv6SubnetConfigCompat: the IPv6 half must be there exactly when IPv6 is on."""
    v4_only = parse_lease("100.64.7.0-24", encode_lease_value(ME, MAC, 1), 7)
    c = choose_subnet(DUAL, [v4_only], ME, None, random.Random(0))
    assert c.delete == (v4_only,) and c.source == "random" and c.ipv6_subnet is not None
    dual = dual_lease(7, ip=ME, ip6=ME6)
    c = choose_subnet(V4, [dual], ME, None, random.Random(0))
    assert c.delete == (dual,) and c.source == "random" and c.ipv6_subnet is None


@pytest.mark.parametrize("bad6", ["fd00:100:64::/64",        # below IPv6SubnetMin (the first is skipped)
                                  "fd00:100:65:3::/64",      # outside IPv6Network
                                  "fd00:100:64:3::/80"])     # not IPv6SubnetLen
def test_own_lease_with_incompatible_ipv6_subnet_is_deleted(bad6):
    ours = dual_lease(3, ip=ME, ip6=ME6, v6=bad6)
    c = choose_subnet(DUAL, [ours], ME, None, random.Random(0))
    assert c.delete == (ours,) and c.source == "random"


def test_previous_pair_reused_when_both_free():
    c = choose_subnet(DUAL, [dual_lease(1)], ME, n4("100.64.9.0/24"), random.Random(0),
                      previous_ipv6_subnet=n6("fd00:100:64:9::/64"))
    assert (c.source, c.subnet, c.ipv6_source, c.ipv6_subnet) == (
        "previous", n4("100.64.9.0/24"), "previous", n6("fd00:100:64:9::/64"))


def test_previous_ipv6_subnet_held_by_another_lease_is_not_taken():
    """flanneld only checks the IPv4 half and would create a second key on that IPv6 subnet."""
    other = dual_lease(1, v6="fd00:100:64:9::/64")
    c = choose_subnet(DUAL, [other], ME, n4("100.64.9.0/24"), random.Random(0),
                      previous_ipv6_subnet=n6("fd00:100:64:9::/64"))
    assert (c.source, c.subnet) == ("previous", n4("100.64.9.0/24"))
    assert c.ipv6_source == "random" and c.ipv6_subnet != n6("fd00:100:64:9::/64")
    # An unparsable key holding the IPv6 subnet blocks it too.
    c = choose_subnet(DUAL, [], ME, None, random.Random(0), previous_ipv6_subnet=n6("fd00:100:64:9::/64"),
                      occupied=[(n4("100.64.200.0/24"), n6("fd00:100:64:9::/64"))])
    assert c.ipv6_source == "random" and c.ipv6_subnet != n6("fd00:100:64:9::/64")


def test_previous_ipv6_subnet_missing_after_upgrade_to_dual_stack():
    """A subnet.env from a v4-only run: keep the IPv4 subnet (cni0 keeps its address), pick a v6 one."""
    c = choose_subnet(DUAL, [], ME, n4("100.64.9.0/24"), random.Random(0), previous_ipv6_subnet=None)
    assert (c.source, c.subnet, c.ipv6_source) == ("previous", n4("100.64.9.0/24"), "random")


def test_ipv6_random_pick_among_first_100_free_from_ipv6_subnet_min():
    taken = [dual_lease(i, v6=f"fd00:100:64:{i:x}::/64") for i in range(1, 11)]   # :1:: .. :a:: are taken
    free = [n6(f"fd00:100:64:{i:x}::/64") for i in range(11, 111)]
    for seed in range(30):
        rng = random.Random(seed)
        c = choose_subnet(DUAL, taken, ME, None, rng)
        # flanneld draws the IPv4 pick first, then the IPv6 one, from the same generator.
        expected_rng = random.Random(seed)
        expected_rng.randrange(100)
        assert c.ipv6_subnet == free[expected_rng.randrange(100)]
        assert c.ipv6_source == "random"


def test_out_of_ipv6_subnets():
    small = parse_network_config('{"Network":"100.64.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:100:64::/62",'
                                 '"Backend":{"Type":"vxlan"}}')   # /64s: :1:: :2:: :3::
    held = [dual_lease(i, v6=f"fd00:100:64:{i}::/64") for i in (1, 2, 3)]
    with pytest.raises(OutOfSubnets, match="out of IPv6 subnets"):
        choose_subnet(small, held, ME, None, random.Random(0))
    assert choose_subnet(small, held[:2], ME, None, random.Random(0)).ipv6_subnet == n6("fd00:100:64:3::/64")


# --------------------------------------------------------------------------------------------
# subnet.env: written and read back with both families
# --------------------------------------------------------------------------------------------

def test_subnet_env_round_trip(tmp_path):
    text = render_subnet_env(DUAL, n4("100.64.9.0/24"), 1500, False, n6("fd00:100:64:9::/64"))
    assert text == ("FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.9.1/24\n"
                    "FLANNEL_IPV6_NETWORK=fd00:100:64::/48\nFLANNEL_IPV6_SUBNET=fd00:100:64:9::1/64\n"
                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    path = tmp_path / "subnet.env"
    path.write_text(text)
    assert read_previous_subnet(path) == n4("100.64.9.0/24")
    assert read_previous_ipv6_subnet(path) == n6("fd00:100:64:9::/64")
    for bad in ("FLANNEL_IPV6_SUBNET=garbage\n", "FLANNEL_IPV6_SUBNET=100.64.9.1/24\n",
                "FLANNEL_IPV6_SUBNET=fd00::1/64,fd01::1/64\n", ""):
        path.write_text(bad)
        assert read_previous_ipv6_subnet(path) is None


# --------------------------------------------------------------------------------------------
# The underlay's IPv6 address, chosen as flanneld chooses it
# --------------------------------------------------------------------------------------------

BASE = Underlay(name="eth0", address="198.18.0.1", mtu=1500, prefixes=("198.18.0.0/24",))


def test_ipv6_underlay_address_preference():
    addrs = [("fe80::1", 64, IFA_F_PERMANENT),                           # link-local: last resort
             ("fd00:198:18::9", 64, IFA_F_TEMPORARY),                    # temporary, dynamic
             ("fd00:198:18::8", 64, 0),                                  # dynamic
             ("fd00:198:18::7", 64, IFA_F_PERMANENT | IFA_F_DEPRECATED),  # deprecated: never
             ("fd00:198:18::6", 64, IFA_F_PERMANENT | IFA_F_TENTATIVE),   # tentative: cannot bind
             ("fd00:198:19::5", 64, IFA_F_PERMANENT)]                    # global, permanent: chosen
    u = underlay_v6_of(BASE, addrs, None)
    assert u.address6 == "fd00:198:19::5" and u.address == BASE.address
    assert set(u.prefixes6) == {"fd00:198:18::/64", "fd00:198:19::/64"}    # no link-local prefix
    assert underlay_v6_of(BASE, addrs[:3], None).address6 == "fd00:198:18::8"
    assert underlay_v6_of(BASE, addrs[:2], None).address6 == "fd00:198:18::9"
    assert underlay_v6_of(BASE, addrs[:1], None).address6 == "fe80::1"


def test_ipv6_underlay_without_an_address_needs_public_ipv6():
    with pytest.raises(NetlinkError, match="eth0 has no usable IPv6 address.*--public-ipv6"):
        underlay_v6_of(BASE, [("fd00:198:18::7", 64, IFA_F_DEPRECATED)], None)
    assert underlay_v6_of(BASE, [], "fd00:198:18::1").address6 is None


# --------------------------------------------------------------------------------------------
# Desired state: the v6 device's MTU and DirectRouting per family
# --------------------------------------------------------------------------------------------

def test_v6_device_mtu_is_the_kernels_cap():
    ours = dual_lease(1, ip=ME, ip6=ME6)
    objs = {(o.KIND, getattr(o, "name", None)): o for o in node_objects(DUAL, NodeParams(ME, 1500), ours)}
    assert objs[("link", "flannel.1")].mtu == 1450
    assert objs[("link", "flannel-v6.1")].mtu == 1430      # VXLAN over IPv6: underlay - 70
    assert objs[("link", "cni0")].mtu == 1450             # FLANNEL_MTU, as flanneld


def test_direct_routing_is_decided_per_family():
    cfg = replace(DUAL, direct_routing=True)
    ours = dual_lease(1, ip=ME, ip6=ME6)
    peer = dual_lease(2, ip="198.18.0.2", ip6="fd00:198:18::2")
    node = NodeParams(ME, 1500, underlay="eth0", public_ipv6=ME6)

    def routes(on_link):
        state = desired_state(cfg, [ours, peer], node, on_link)
        return {r.dst: r for r in state.of("route").values()}, state

    # Only the IPv6 underlay is shared: v4 goes through the overlay, v6 straight to the peer.
    r, state = routes(lambda ip: ip == "fd00:198:18::2")
    assert (r["100.64.2.0/24"].gateway, r["100.64.2.0/24"].dev) == ("100.64.2.0", "flannel.1")
    v6 = r["fd00:100:64:2::/64"]
    assert (v6.gateway, v6.dev, v6.onlink, v6.metric) == ("fd00:198:18::2", "eth0", False, 1024)
    assert state.get("fdb", ("flannel-v6.1", "0e:00:00:00:61:02")) is None
    assert state.get("fdb", ("flannel.1", "0e:00:00:00:01:02")) is not None
    # And the other way round.
    r, state = routes(lambda ip: ip == "198.18.0.2")
    assert (r["100.64.2.0/24"].gateway, r["100.64.2.0/24"].dev) == ("198.18.0.2", "eth0")
    assert (r["fd00:100:64:2::/64"].gateway, r["fd00:100:64:2::/64"].dev) == ("fd00:100:64:2::", "flannel-v6.1")


# --------------------------------------------------------------------------------------------
# Against a real etcd
# --------------------------------------------------------------------------------------------

@pytest.fixture
def store(etcd_store):
    etcd_store.put_config(DUAL_JSON)
    return etcd_store


@pytest.mark.etcd
def test_acquire_writes_flanneld_key_and_bytes(store):
    got = acquire_lease(store, DUAL, ME, MAC, None, random.Random(3), public_ipv6=ME6, v6_vtep_mac=MAC6)
    assert got.key == store.subnets_prefix + subnet_key(got.subnet, got.ipv6_subnet)
    assert "&fd00:100:64:" in got.key and got.key.endswith("::-64")
    kv = store.get(got.key)
    assert kv.value == got.value == FLANNELD_DUAL_VALUE
    assert 86390 <= store.time_to_live(got.lease_id) <= 86400
    # A second start (same PublicIP) reuses it: same key, same bytes, no new subnet.
    again = acquire_lease(store, DUAL, ME, MAC, None, random.Random(99), public_ipv6=ME6, v6_vtep_mac=MAC6)
    assert (again.key, again.subnet, again.ipv6_subnet) == (got.key, got.subnet, got.ipv6_subnet)
    # A new v6 VTEP MAC (the device was re-created) rewrites the value in place.
    moved = acquire_lease(store, DUAL, ME, MAC, None, random.Random(5), public_ipv6=ME6,
                          v6_vtep_mac="0e:00:00:00:60:77")
    assert moved.key == got.key and store.get(got.key).value == FLANNELD_DUAL_VALUE.replace(MAC6, "0e:00:00:00:60:77")


@pytest.mark.etcd
def test_acquire_takes_previous_pair_from_subnet_env(store, tmp_path):
    env = tmp_path / "subnet.env"
    env.write_text(render_subnet_env(DUAL, n4("100.64.77.0/24"), 1500, False, n6("fd00:100:64:4d::/64")))
    got = acquire_lease(store, DUAL, ME, MAC, read_previous_subnet(env), random.Random(0), public_ipv6=ME6,
                        v6_vtep_mac=MAC6, previous_ipv6_subnet=read_previous_ipv6_subnet(env))
    assert got.key == store.subnets_prefix + "100.64.77.0-24&fd00:100:64:4d::-64"


@pytest.mark.etcd
def test_keeper_reacquires_both_subnets_after_the_key_is_deleted(store):
    got = acquire_lease(store, DUAL, ME, MAC, None, random.Random(1), public_ipv6=ME6, v6_vtep_mac=MAC6)
    keeper = LeaseKeeper(store, DUAL, ME, MAC, got, random.Random(2), now=0.0, public_ipv6=ME6, v6_vtep_mac=MAC6)
    store.delete(got.key)
    back = keeper.ensure()
    assert (back.key, back.subnet, back.ipv6_subnet) == (got.key, got.subnet, got.ipv6_subnet)
    assert store.get(got.key).value == FLANNELD_DUAL_VALUE
    keeper.update_vtep_mac(MAC, "0e:00:00:00:60:42")
    keeper.tick(1.0)
    assert store.get(got.key).value == FLANNELD_DUAL_VALUE.replace(MAC6, "0e:00:00:00:60:42")
