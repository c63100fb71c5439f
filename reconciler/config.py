"""flanneld's network config (``<prefix>/config``): parse, default, validate.

Mirrors ``pkg/subnet/config.go`` (see ../shared/flannel-interop.md section 2):
keys are matched case-insensitively like Go's ``encoding/json``, unknown keys
are ignored, and every derived default (SubnetLen, SubnetMin, SubnetMax, the
IPv6 equivalents) is computed here so the rest of the agent sees one complete,
valid value.  An invalid config raises ``ConfigError`` naming the key.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from .errors import ConfigError

__all__ = ["NetworkConfig", "parse_network_config", "DEFAULT_VXLAN_PORT"]

#: The Linux kernel's VXLAN default port; flanneld's Port 0 means "don't send
#: the attribute", so the kernel applies this.
DEFAULT_VXLAN_PORT = 8472


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    enable_ipv4: bool
    enable_ipv6: bool
    network: IPv4Network | None
    subnet_len: int | None
    subnet_min: IPv4Address | None
    subnet_max: IPv4Address | None
    ipv6_network: IPv6Network | None
    ipv6_subnet_len: int | None
    ipv6_subnet_min: IPv6Address | None
    ipv6_subnet_max: IPv6Address | None
    backend_type: str           # "vxlan", or "udp" when Backend is absent (flannel's code default)
    vni: int                    # default 1
    port: int                   # 0 in the config means the kernel default: stored as 8472
    mtu: int | None             # Backend.MTU: the *underlay* MTU; None = ask the kernel / --underlay-mtu
    gbp: bool
    learning: bool
    direct_routing: bool
    enable_nftables: bool

    @property
    def device_name(self) -> str:
        return f"flannel.{self.vni}"

    @property
    def v6_device_name(self) -> str:
        return f"flannel-v6.{self.vni}"


def parse_network_config(raw: str | bytes) -> NetworkConfig:
    """Parse the config JSON exactly as flanneld would.  Raises ``ConfigError``."""
    raise NotImplementedError  # filled in below by the parser implementation
