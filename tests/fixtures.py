"""Named fixtures for story-style tests: three nodes of the example cluster."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from reconciler.core.config import NetworkConfig
from reconciler.core.leases import Lease

NETWORK = IPv4Network("100.64.0.0/16")

host1, host2, host3 = "198.18.0.1", "198.18.0.2", "198.18.0.3"
mac1, mac2, mac3 = "0a:58:64:40:01:00", "0a:58:64:40:02:00", "0a:58:64:40:03:00"
subnet1, subnet2, subnet3 = IPv4Network("100.64.1.0/24"), IPv4Network("100.64.2.0/24"), IPv4Network("100.64.3.0/24")


def config(**overrides) -> NetworkConfig:
    base = dict(
        enable_ipv4=True, enable_ipv6=False, network=NETWORK, subnet_len=24,
        subnet_min=IPv4Address("100.64.1.0"), subnet_max=IPv4Address("100.64.255.0"),
        ipv6_network=None, ipv6_subnet_len=None, ipv6_subnet_min=None, ipv6_subnet_max=None,
        backend_type="vxlan", vni=1, port=8472, mtu=None, gbp=False, learning=False,
        direct_routing=False, enable_nftables=False,
    )
    base.update(overrides)
    return NetworkConfig(**base)


def lease(subnet: IPv4Network, public_ip: str, mac: str, vni: int = 1, etcd_lease: int = 7001) -> Lease:
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    return Lease(key=key, subnet=subnet, ipv6_subnet=None, public_ip=public_ip, public_ipv6=None,
                 backend_type="vxlan", vni=vni, vtep_mac=mac, etcd_lease=etcd_lease)


def three_leases() -> list[Lease]:
    return [lease(subnet1, host1, mac1), lease(subnet2, host2, mac2), lease(subnet3, host3, mac3)]
