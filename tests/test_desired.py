from dataclasses import replace
from ipaddress import IPv6Network

import pytest

from reconciler.core.desired import NodeParams, NoOwnLease, desired_state
from reconciler.core.model import Address, Fdb, Link, Neigh, Route
from tests.fixtures import config, host1, host2, host3, lease, mac1, mac2, mac3, subnet1, subnet2, three_leases


def test_node_one_of_three_gets_devices_and_two_peers():
    state = desired_state(config(), three_leases(), NodeParams(public_ip=host1, underlay="eth0"))
    assert state.get("link", "flannel.1") == Link(
        name="flannel.1", type="vxlan", mtu=1450, mac=mac1, up=True, vni=1, local=host1, port=8472,
        learning=False, gbp=False, underlay="eth0")
    assert state.get("link", "cni0") == Link(name="cni0", type="bridge", mtu=1450, up=True)
    assert set(state.of("address").values()) == {Address("flannel.1", "100.64.1.0/32"),
                                                 Address("cni0", "100.64.1.1/24")}
    assert set(state.of("neigh").values()) == {Neigh("flannel.1", "100.64.2.0", mac2),
                                               Neigh("flannel.1", "100.64.3.0", mac3)}
    assert set(state.of("fdb").values()) == {Fdb("flannel.1", mac2, host2), Fdb("flannel.1", mac3, host3)}
    assert set(state.of("route").values()) == {
        Route("100.64.2.0/24", "100.64.2.0", "flannel.1", True),
        Route("100.64.3.0/24", "100.64.3.0", "flannel.1", True),
        Route("100.64.1.0/24", None, "cni0", False),  # the bridge's connected route
    }


def test_no_route_to_own_subnet_and_none_to_the_whole_network():
    """Our own subnet's only route is the bridge's connected one, never one into the tunnel."""
    state = desired_state(config(), three_leases(), NodeParams(public_ip=host2))
    own = [r for r in state.of("route").values() if r.dst == "100.64.2.0/24"]
    assert own == [Route("100.64.2.0/24", None, "cni0", False)]
    assert "100.64.0.0/16" not in {r.dst for r in state.of("route").values()}


def test_mtu_follows_underlay_and_vni_names_the_device():
    state = desired_state(config(vni=7, port=4789), three_leases(), NodeParams(public_ip=host1, underlay_mtu=9001))
    link = state.get("link", "flannel.7")
    assert link.mtu == 8951 and link.vni == 7 and link.port == 4789
    assert state.get("link", "cni0").mtu == 8951
    assert all(r.dev == "flannel.7" for r in state.of("route").values() if r.gateway is not None)


def test_unknown_node_is_an_error_naming_the_ip():
    with pytest.raises(NoOwnLease, match="198.18.0.77"):
        desired_state(config(), three_leases(), NodeParams(public_ip="198.18.0.77"))


def test_lease_order_does_not_matter():
    a = desired_state(config(), three_leases(), NodeParams(public_ip=host1))
    b = desired_state(config(), list(reversed(three_leases())), NodeParams(public_ip=host1))
    assert a == b


def test_direct_routing_uses_public_ip_and_no_overlay_entries_for_on_link_peers():
    state = desired_state(config(direct_routing=True), three_leases(), NodeParams(public_ip=host1, underlay="eth0"),
                          on_link=lambda ip: ip == host2)
    assert state.get("route", ("100.64.2.0/24", 0)) == Route("100.64.2.0/24", host2, "eth0", False)
    assert state.get("neigh", ("flannel.1", "100.64.2.0")) is None
    assert state.get("fdb", ("flannel.1", mac2)) is None
    # host3 is not on-link: the overlay as usual.
    assert state.get("route", ("100.64.3.0/24", 0)).gateway == "100.64.3.0"


def test_direct_routing_off_ignores_the_predicate():
    state = desired_state(config(), three_leases(), NodeParams(public_ip=host1), on_link=lambda ip: True)
    assert state.get("route", ("100.64.2.0/24", 0)).dev == "flannel.1"


def test_dual_stack_adds_v6_device_and_entries():
    v6net = IPv6Network("fd00:64::/56")
    cfg = config(enable_ipv6=True, ipv6_network=v6net, ipv6_subnet_len=64)
    l1 = replace(lease(subnet1, host1, mac1), ipv6_subnet=IPv6Network("fd00:64:0:1::/64"),
                 public_ipv6="fd00:18::1", v6_vni=1, v6_vtep_mac="0a:58:64:60:01:00")
    l2 = replace(lease(subnet2, host2, mac2), ipv6_subnet=IPv6Network("fd00:64:0:2::/64"),
                 public_ipv6="fd00:18::2", v6_vni=1, v6_vtep_mac="0a:58:64:60:02:00")
    state = desired_state(cfg, [l1, l2], NodeParams(public_ip=host1))
    v6 = state.get("link", "flannel-v6.1")
    assert v6.local == "fd00:18::1" and v6.mac == "0a:58:64:60:01:00"
    assert Address("flannel-v6.1", "fd00:64:0:1::/128") in state.of("address").values()
    assert Address("cni0", "fd00:64:0:1::1/64") in state.of("address").values()
    assert state.get("neigh", ("flannel-v6.1", "fd00:64:0:2::")).mac == "0a:58:64:60:02:00"
    assert state.get("fdb", ("flannel-v6.1", "0a:58:64:60:02:00")).dst == "fd00:18::2"
    assert state.get("route", ("fd00:64:0:2::/64", 1024)) == Route(
        "fd00:64:0:2::/64", "fd00:64:0:2::", "flannel-v6.1", True, 1024)


def test_peer_with_other_backend_type_gets_nothing():
    peers = three_leases()
    peers[1] = replace(peers[1], backend_type="host-gw")
    state = desired_state(config(), peers, NodeParams(public_ip=host1))
    assert state.get("route", ("100.64.2.0/24", 0)) is None


def test_scales_linearly_in_object_count():
    from ipaddress import IPv4Network

    # 2,000 /24s counted up from 100.64.1.0 (desired_state does not validate).
    leases = [lease(IPv4Network((0x64400000 + (i << 8), 24)), f"198.18.{i // 250}.{i % 250 + 1}",
                    "02:00:00:%02x:%02x:00" % (i >> 8, i & 255)) for i in range(1, 2001)]
    state = desired_state(config(), leases, NodeParams(public_ip=leases[0].public_ip))
    # 1,999 peers, and the bridge's connected route.
    assert len(state.of("route")) - 1 == len(state.of("neigh")) == len(state.of("fdb")) == 1999


def test_underlay_mtu_precedence_and_refusal():
    from reconciler.core.desired import underlay_mtu
    from reconciler.core.errors import ReconcilerError

    assert underlay_mtu(None, None, None) == 1500
    assert underlay_mtu(None, None, ("eth0", 9001)) == 9001
    assert underlay_mtu(None, 1400, ("eth0", 9001)) == 1400
    assert underlay_mtu(1300, 1400, ("eth0", 1500)) == 1300
    assert underlay_mtu(9000, None, None) == 9000  # offline: nothing to check against
    with pytest.raises(ReconcilerError, match=r"--underlay-mtu 9000 is larger than the MTU of the underlay eth0 \(1500\)"):
        underlay_mtu(9000, None, ("eth0", 1500))
    with pytest.raises(ReconcilerError, match="Backend.MTU 9001"):
        underlay_mtu(None, 9001, ("eth0", 1500))
